/**
 * Live-mode sub-commands of `kvlab`:
 *
 *   kvlab emulate --port P [--profile NAME] [--redis URL] [--model NAME] [--bytes-per-token N]
 *                 [--kv-events tcp://127.0.0.1:PORT] [--time-scale X] ...
 *   kvlab kdn --port 9101 --redis URL --model PATH (--builder URL | --synthetic-kv) [--link HOST:PORT=GBPS,LAT_MS,EFF] ...
 *
 * Each command lives in its own `register*` function; add gateway / replay / diff / live demo
 * the same way (server modules are imported inside the actions, so registering the commands
 * stays cheap). Servers print one `ready <url>` line on stdout once listening (for scripts that
 * spawn them) and close gracefully on SIGINT/SIGTERM.
 */
import type { Command } from 'commander';
import { choiceArg, intArg, numberArg } from '../bin/options.js';
import { PD_LINK_DEFAULT } from '../engine/pd.js';
import type { LinkSpec } from '../engine/types.js';
import { DEFAULT_PROFILE } from '../sim/profiles.js';
import type { KnowledgeFormat } from './kdn.js';
import type { ChunkHashVariant } from './lmcache.js';

/** Registers this area's kvlab sub-commands on the root program. */
export function registerLiveCommands(program: Command): void {
  registerEmulate(program);
  registerKdn(program);
}

// ------------------------------------------------------------------------------------------
// option parsing helpers (errors name the option)

/** Collects a repeatable string option. */
const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** Parses `HOST:PORT[/DB]=GBPS,LATENCY_MS,EFFICIENCY` (a `--link` value). */
export function parseLinkOverride(v: string): [string, LinkSpec] {
  const m = /^([^=\s]+:\d+(?:\/\d+)?)=([^,]+),([^,]+),([^,]+)$/.exec(v.trim());
  if (!m) throw new Error(`--link must look like HOST:PORT[/DB]=GBPS,LATENCY_MS,EFFICIENCY (got "${v}")`);
  return [m[1]!, { bandwidthGbps: numberArg('--link bandwidth', { min: 0, minExclusive: true })(m[2]!), latencyMs: numberArg('--link latency', { min: 0 })(m[3]!), efficiency: numberArg('--link efficiency', { min: 0, max: 1, minExclusive: true })(m[4]!) }];
}

/**
 * Runs until SIGINT/SIGTERM, then calls `close` once (a second signal exits at once).
 * Resolves after `close` finished.
 */
export function untilSignal(name: string, close: () => Promise<void>): Promise<void> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (sig: NodeJS.Signals): void => {
      if (stopping) process.exit(130);
      stopping = true;
      process.stderr.write(`${name}: ${sig}, shutting down\n`);
      close()
        .catch((e: unknown) => process.stderr.write(`${name}: error while closing: ${(e as Error).message}\n`))
        .finally(() => {
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
          resolve();
        });
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

// ------------------------------------------------------------------------------------------

interface EmulateFlags {
  host: string;
  port: number;
  profile: string;
  redis?: string;
  model?: string;
  modelPath?: string;
  bytesPerToken: number;
  kvEvents?: string;
  kvEventsReplay?: string;
  kvEventsTopic: string;
  timeScale: number;
  worldSize: number;
  hashVariant: ChunkHashVariant;
  hashSeed: string;
  promptTokensDetails: boolean;
  defaultMaxTokens: number;
  maxModelLen?: number;
  kvCapacityTokens?: number;
  maxRequestSeqs?: number;
  maxLogprobs: number;
  maxBodyBytes: number;
  coldStart: boolean;
  log: boolean;
  role: 'prefill' | 'decode' | 'mixed';
  engineId?: string;
  pdBandwidthGbps: number;
  pdLatencyMs: number;
  pdEfficiency: number;
  blend: boolean;
  blendRecomputeRatio?: number;
  blendCheckLayer?: number;
  blendSeparator?: string;
}

function registerEmulate(program: Command): void {
  program
    .command('emulate')
    .description('Run a vLLM-compatible server (OpenAI API, /tokenize, /metrics, LMCache Redis, KV events) timed by the instance model, no GPU needed.')
    .option('--host <addr>', 'listen address', '127.0.0.1')
    .option('--port <n>', 'listen port (0 = any)', intArg('--port', { min: 0, max: 65535 }), 8000)
    .option('--profile <name|path>', 'instance profile (engine/profiles/<name>.json or a file)', DEFAULT_PROFILE)
    .option('--redis <url>', 'LMCache Redis URL (enables LMCache lookups/stores), e.g. redis://127.0.0.1:6379/0')
    .option('--model <name>', 'served model name (default: the profile model name)')
    .option('--model-path <path>', 'vLLM --model path, used in LMCache keys and /v1/models root (default: --model)')
    .option('--bytes-per-token <n>', 'synthesised LMCache KV bytes per token', intArg('--bytes-per-token', { min: 1 }), 64)
    .option('--kv-events <endpoint>', 'publish vLLM KV events on this ZMQ PUB endpoint (bound), e.g. tcp://127.0.0.1:5557')
    .option('--kv-events-replay <endpoint>', 'ZMQ ROUTER endpoint for KV-event replay (bound)')
    .option('--kv-events-topic <topic>', 'ZMQ topic frame of KV events', '')
    .option('--time-scale <x>', 'run the model clock x times faster than the wall clock', numberArg('--time-scale', { min: 1e-6 }), 1)
    .option('--world-size <n>', 'TP world size in LMCache keys (one key per rank)', intArg('--world-size', { min: 1, max: 1024 }), 1)
    .option('--hash-variant <v>', 'LMCache chunk-hash recipe: cacheroute (0.3.11 + CacheRoute patch) | upstream (>= 0.3.12)', choiceArg('--hash-variant', ['cacheroute', 'upstream'] as const), 'cacheroute')
    .option('--hash-seed <s>', 'PYTHONHASHSEED of the emulated vLLM (NONE_HASH seed)', '0')
    .option('--no-prompt-tokens-details', 'do not report usage.prompt_tokens_details (vLLM without --enable-prompt-tokens-details)')
    .option('--default-max-tokens <n>', 'output tokens of a chat request without max_tokens', intArg('--default-max-tokens', { min: 1 }), 256)
    .option('--max-model-len <n>', 'override the profile max_model_len', intArg('--max-model-len', { min: 1 }))
    .option('--kv-capacity-tokens <n>', 'override the profile KV capacity (tokens)', intArg('--kv-capacity-tokens', { min: 1 }))
    .option('--max-request-seqs <n>', 'sequences (n × prompts) one request may ask for; more is a 400 (default: max(max_num_seqs, 256))', intArg('--max-request-seqs', { min: 1 }))
    .option('--max-logprobs <n>', 'largest logprobs / top_logprobs (vLLM --max-logprobs)', intArg('--max-logprobs', { min: 0 }), 20)
    .option('--max-body-bytes <n>', 'request body limit in bytes (413 above)', intArg('--max-body-bytes', { min: 1 }), 64 * 1024 * 1024)
    .option('--no-cold-start', "skip the profile's cold-start delay on the first request")
    .option('--role <r>', 'role in disaggregated serving (kv_transfer_params): prefill | decode | mixed (prefill needs --redis: the KV is handed over through it)', choiceArg('--role', ['prefill', 'decode', 'mixed'] as const), 'mixed')
    .option('--engine-id <id>', 'engine id this instance puts in its hand-offs (remote_engine_id; default a random UUID)')
    .option('--pd-bandwidth-gbps <g>', 'P -> D link bandwidth a decode instance charges a hand-off on, Gbit/s', numberArg('--pd-bandwidth-gbps', { min: 1e-9 }), PD_LINK_DEFAULT.bandwidthGbps)
    .option('--pd-latency-ms <ms>', 'P -> D link latency, ms', numberArg('--pd-latency-ms', { min: 0 }), PD_LINK_DEFAULT.latencyMs)
    .option('--pd-efficiency <e>', 'P -> D link efficiency (0, 1]', numberArg('--pd-efficiency', { min: 1e-9, max: 1 }), PD_LINK_DEFAULT.efficiency)
    .option('--blend', 'CacheBlend on (LMCache enable_blending): per-segment LMCache keys between separators, loaded segments blended in wherever they sit', false)
    .option('--blend-recompute-ratio <r>', 'share of the reused tokens recomputed (LMCache blend_recompute_ratios; default 0.15)', numberArg('--blend-recompute-ratio', { min: 0, max: 1 }))
    .option('--blend-check-layer <n>', 'layer where the deviating tokens are selected (LMCache blend_check_layers; default 1)', intArg('--blend-check-layer', { min: 0 }))
    .option('--blend-separator <s>', 'LMCache blend_special_str (default " # #\\n": LMCache\'s " # # " does not survive the Llama-3 tokenizer mid-prompt)')
    .option('--log', 'log requests (pino)', false)
    .action(async (f: EmulateFlags) => {
      if (!f.blend && (f.blendRecomputeRatio !== undefined || f.blendCheckLayer !== undefined || f.blendSeparator !== undefined)) throw new Error('--blend-recompute-ratio / --blend-check-layer / --blend-separator need --blend');
      const engine: Record<string, number> = {};
      if (f.maxModelLen !== undefined) engine.maxModelLen = f.maxModelLen;
      if (f.kvCapacityTokens !== undefined) engine.kvCapacityTokens = f.kvCapacityTokens;
      if (f.kvEventsReplay && !f.kvEvents) throw new Error('--kv-events-replay needs --kv-events');
      const { startEmulator } = await import('./emulator.js'); // loaded on demand: CLI start-up
      const em = await startEmulator({
        host: f.host,
        port: f.port,
        profile: f.profile,
        engine,
        model: f.model,
        modelPath: f.modelPath,
        redisUrl: f.redis,
        bytesPerToken: f.bytesPerToken,
        lmcache: { worldSize: f.worldSize, variant: f.hashVariant, hashSeed: f.hashSeed },
        kvEvents: f.kvEvents ? { endpoint: f.kvEvents, replayEndpoint: f.kvEventsReplay, topic: f.kvEventsTopic } : undefined,
        timeScale: f.timeScale,
        enablePromptTokensDetails: f.promptTokensDetails,
        defaultMaxTokens: f.defaultMaxTokens,
        coldStart: f.coldStart,
        maxRequestSeqs: f.maxRequestSeqs,
        maxLogprobs: f.maxLogprobs,
        maxBodyBytes: f.maxBodyBytes,
        logger: f.log,
        role: f.role,
        engineId: f.engineId,
        pdLink: { bandwidthGbps: f.pdBandwidthGbps, latencyMs: f.pdLatencyMs, efficiency: f.pdEfficiency },
        ...(f.blend ? { blend: { recomputeRatio: f.blendRecomputeRatio, checkLayer: f.blendCheckLayer, separator: f.blendSeparator?.replace(/\\n/g, '\n') } } : {}),
      });
      process.stderr.write(
        `emulate: model ${em.model} (profile ${f.profile}, time scale ${f.timeScale}, role ${f.role})` +
          `${f.redis ? `, LMCache Redis ${f.redis}` : ''}${em.kvEvents ? `, KV events ${em.kvEvents.endpoint}${em.kvEvents.replayEndpoint ? ` (replay ${em.kvEvents.replayEndpoint})` : ''}` : ''}\n`,
      );
      (await import('./tokenize-pool.js')).warmTokenizePool();
      process.stdout.write(`ready ${em.url}\n`);
      await untilSignal('emulate', () => em.close());
    });
}

interface KdnFlags {
  host: string;
  port: number;
  redis: string;
  model: string;
  modelAlias: string[];
  bytesPerToken: number;
  wireBytesPerToken?: number;
  format: KnowledgeFormat;
  tokenizeUrl?: string;
  bandwidthGbps: number;
  latencyMs: number;
  efficiency: number;
  link: string[];
  worldSize: number;
  hashVariant: ChunkHashVariant;
  hashSeed: string;
  timeScale: number;
  maxDocumentBytes: number;
  maxDocumentTokens: number;
  builder?: string;
  builderModel?: string;
  builderTimeoutMs: number;
  syntheticKv?: boolean;
  dtype: string;
  log: boolean;
  blend: boolean;
  blendBuilder?: string;
  blendSeparator?: string;
}

function registerKdn(program: Command): void {
  program
    .command('kdn')
    .description('Run a KDN (knowledge delivery node): knowledge text + KV chunks in Redis, injected into instances\' LMCache Redis over paced links (CacheRoute KDN API).')
    .option('--host <addr>', 'listen address', '127.0.0.1')
    .option('--port <n>', 'listen port (0 = any)', intArg('--port', { min: 0, max: 65535 }), 9101)
    .requiredOption('--redis <url>', "the KDN's own Redis URL, e.g. redis://127.0.0.1:6390/0")
    .requiredOption('--model <path>', 'LMCache model_name of the target instances (their vLLM --model path)')
    .option('--model-alias <name>', 'another accepted inject_ready_kv model name (repeatable)', collect, [])
    .option('--builder <url>', "compute each registered document's KV on this vLLM / emulator (OpenAI API) whose LMCache stores into this KDN's Redis; its model path, world size, dtype and chunk hashing must match (refused naming the field)")
    .option('--builder-model <name>', 'served model name for the build requests (default: the builder\'s first /v1/models entry)')
    .option('--builder-timeout-ms <ms>', 'wait this long for LMCache to store a document\'s chunks', intArg('--builder-timeout-ms', { min: 1 }), 30_000)
    .option('--synthetic-kv', 'synthesise KV bytes (valid keys and metadata, garbage values): GPU-less tests with emulators only')
    .option('--bytes-per-token <n>', 'synthesised KV bytes per token, summed over ranks (--synthetic-kv)', intArg('--bytes-per-token', { min: 1 }), 64)
    .option('--wire-bytes-per-token <n>', 'bytes per token charged by the link model (default: --bytes-per-token)', numberArg('--wire-bytes-per-token', { min: 0 }))
    .option('--format <f>', 'knowledge prefix layout: chat-system | completion', choiceArg('--format', ['chat-system', 'completion'] as const), 'chat-system')
    .option('--tokenize-url <url>', 'tokenise via this instance /tokenize instead of the local Llama-3 tokenizer')
    .option('--bandwidth-gbps <g>', 'default link bandwidth, Gbit/s', numberArg('--bandwidth-gbps', { min: 1e-9 }), 1)
    .option('--latency-ms <ms>', 'default link latency, ms', numberArg('--latency-ms', { min: 0 }), 10)
    .option('--efficiency <e>', 'default link efficiency (0, 1]', numberArg('--efficiency', { min: 1e-9, max: 1 }), 0.8)
    .option('--link <spec>', 'per-target link HOST:PORT[/DB]=GBPS,LATENCY_MS,EFFICIENCY (repeatable)', collect, [])
    .option('--world-size <n>', 'target TP world size (one key per rank)', intArg('--world-size', { min: 1, max: 1024 }), 1)
    .option('--hash-variant <v>', 'LMCache chunk-hash recipe: cacheroute | upstream', choiceArg('--hash-variant', ['cacheroute', 'upstream'] as const), 'cacheroute')
    .option('--hash-seed <s>', 'PYTHONHASHSEED of the target vLLM', '0')
    .option('--dtype <d>', 'KV dtype in the LMCache keys (bfloat16, half, float, ...)', 'bfloat16')
    .option('--time-scale <x>', 'divide link durations by x', numberArg('--time-scale', { min: 1e-6 }), 1)
    .option('--max-document-bytes <n>', 'largest document (UTF-8 bytes of its text); larger ones are refused with 413 before tokenising', intArg('--max-document-bytes', { min: 1 }), 2 * 1024 * 1024)
    .option('--max-document-tokens <n>', 'largest document in tokens (422 above)', intArg('--max-document-tokens', { min: 1 }), 131_072)
    .option('--blend', "also keep each document's CacheBlend KV (per-segment LMCache keys) for instances running LMCache with enable_blending (needs --blend-builder or --synthetic-kv)", false)
    .option('--blend-builder <url>', "a CacheBlend instance (LMCache enable_blending, same blend_special_str) whose LMCache stores into this KDN's Redis: computes the CacheBlend KV")
    .option('--blend-separator <s>', 'the instances\' LMCache blend_special_str (default " # #\\n")')
    .option('--log', 'log requests (pino)', false)
    .action(async (f: KdnFlags) => {
      if (!f.blend && (f.blendBuilder || f.blendSeparator !== undefined)) throw new Error('--blend-builder / --blend-separator need --blend');
      const { startKdn } = await import('./kdn.js');
      const kdn = await startKdn({
        host: f.host,
        port: f.port,
        redisUrl: f.redis,
        model: f.model,
        modelAliases: f.modelAlias,
        bytesPerToken: f.bytesPerToken,
        wireBytesPerToken: f.wireBytesPerToken,
        format: f.format,
        tokenizeUrl: f.tokenizeUrl,
        link: { bandwidthGbps: f.bandwidthGbps, latencyMs: f.latencyMs, efficiency: f.efficiency },
        links: Object.fromEntries(f.link.map(parseLinkOverride)),
        lmcache: { worldSize: f.worldSize, variant: f.hashVariant, hashSeed: f.hashSeed, dtype: f.dtype },
        ...(f.builder ? { builder: { url: f.builder, model: f.builderModel, timeoutMs: f.builderTimeoutMs } } : {}),
        syntheticKv: !!f.syntheticKv,
        timeScale: f.timeScale,
        maxDocumentBytes: f.maxDocumentBytes,
        maxDocumentTokens: f.maxDocumentTokens,
        logger: f.log,
        ...(f.blend ? { blend: { separator: f.blendSeparator?.replace(/\\n/g, '\n'), ...(f.blendBuilder ? { builder: { url: f.blendBuilder, model: f.builderModel, timeoutMs: f.builderTimeoutMs } } : {}) } } : {}),
      });
      process.stderr.write(`kdn: model ${f.model}, store ${f.redis}, link ${f.bandwidthGbps} Gbit/s ${f.latencyMs} ms x${f.efficiency}, KV ${kdn.kvSource === 'builder' ? `built on ${f.builder}` : kdn.kvSource === 'synthetic' ? 'synthesised (--synthetic-kv: emulators only)' : 'none: text only (give --builder URL for real KV)'}\n`);
      (await import('./tokenize-pool.js')).warmTokenizePool();
      process.stdout.write(`ready ${kdn.url}\n`);
      await untilSignal('kdn', () => kdn.close());
    });
}
