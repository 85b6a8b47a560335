/**
 * Live-mode controller sub-commands of `kvlab` (registered by bin/kvlab.ts):
 *
 *   kvlab gateway --backends URL,URL [--lmcache-redis URL,URL] --kdn URL --strategy NAME
 *                 [--cluster FILE] [--profile NAME] [--port 7001] [--out DIR] [--time-scale X] ...
 *   kvlab replay --target URL (--trace FILE | --workload synthetic|nq) [--workload-opt k=v]...
 *                [--speed X] [--time-scale X] --out DIR [--concurrency-limit N]
 *   kvlab diff RUN_A RUN_B [--json] [--out FILE]
 *   kvlab live demo --out DIR [--requests N] [--strategy S] [--instances N] [--time-scale X]
 *
 * Servers print one `ready <url>` line on stdout once listening and close gracefully on
 * SIGINT/SIGTERM (the gateway then fails in-flight requests, and flushes every record and
 * summary.json before exiting).
 */
import { InvalidArgumentError, type Command } from 'commander';
import { parseRoles } from '../engine/pd.js';
import { backendSpecs, type KvEventSource } from './backends.js';
import { choiceArg, intArg, keyValueArg, numberArg, outDirArg, outFileArg, seedArg } from '../bin/options.js';
import { checkStrategyParams } from '../engine/strategies/index.js';
import { checkWorkloadOptions } from '../traces/load.js';
import { untilSignal } from './cli.js';
import { diffRuns, formatDiff, overlapWarning } from './diff.js';
import { DEFAULT_LIMITS } from './gateway/limits.js';

/** Registers gateway, replay, diff and `live demo` on the root program. */
export function registerLiveRunCommands(program: Command): void {
  registerGateway(program);
  registerReplay(program);
  registerDiff(program);
  registerDemo(program);
}

const list = (v: string): string[] =>
  v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

/** Parses `--strategy-params` JSON. @throws Error naming the option. */
function parseJsonObject(v: string | undefined, flag: string): Record<string, unknown> {
  if (!v) return {};
  let j: unknown;
  try {
    j = JSON.parse(v);
  } catch (e) {
    throw new Error(`${flag} must be a JSON object: ${(e as Error).message}`);
  }
  if (j === null || typeof j !== 'object' || Array.isArray(j)) throw new Error(`${flag} must be a JSON object (got ${v})`);
  return j as Record<string, unknown>;
}

interface GatewayFlags {
  host: string;
  peers?: string;
  replicaId?: string;
  peerHeartbeatMs: number;
  peerTimeoutMs: number;
  port: number;
  backends: string[];
  lmcacheRedis: string[];
  kdn?: string;
  strategy: string;
  strategyParams?: string;
  cluster?: string;
  roles?: string;
  profile?: string;
  out?: string;
  timeScale: number;
  model?: string;
  seed: number;
  injectionType: boolean;
  calibrate: boolean;
  upstream: 'stream' | 'direct';
  healthMs: number;
  decisionHeader: boolean;
  kvEvents: string[];
  kvEventsReplay: string[];
  kvEventsTopic: string;
  hashSeed: string;
  append: boolean;
  maxBodyBytes: number;
  maxJsonDepth: number;
  maxN: number;
  maxPrompts: number;
  maxTokens?: number;
  maxModelLen?: number;
  maxCharsPerToken: number;
  reorderDocuments?: boolean;
  blendSeparator?: string;
  log: boolean;
}

function registerGateway(program: Command): void {
  program
    .command('gateway')
    .description('Run the OpenAI-compatible gateway: the policy engine routes each request to a vLLM/emulator backend and injects knowledge as text or KV (via the KDN).')
    .requiredOption('--backends <urls>', 'comma-separated backend base URLs, one per instance (http://127.0.0.1:8000,...)', list)
    .option('--lmcache-redis <urls>', "comma-separated LMCache Redis URL of each backend, same order (redis://host:port/db), for KV injection", list, [])
    .option('--kdn <url>', 'KDN base URL (kvlab kdn or CacheRoute KDN)')
    .option('--strategy <name>', 'strategy (kvlab strategies lists them)', 'kvlab')
    .option('--strategy-params <json>', 'strategy parameters as a JSON object')
    .option('--cluster <file>', "the engine's cluster file (YAML/JSON); its instance count must equal the backends'")
    .option('--profile <name>', 'instance profile when no cluster file is given')
    .option('--roles <PxDy>', 'P/D roles of the backends in order, e.g. 1P1D (prefill instances first; overrides the cluster file\'s): the gateway then drives disaggregated serving with kv_transfer_params as vLLM\'s proxy does', rolesArg)
    .option('--host <addr>', 'listen address', '127.0.0.1')
    .option('--port <n>', 'listen port (0 = any)', intArg('--port', { min: 0, max: 65535 }), 7001)
    .option('--out <dir>', 'write records.jsonl / summary.json / config.json here (a directory with records is refused unless --append)', outDirArg('--out'))
    .option('--append', 'add to the records of an existing --out directory (its clock continues after them)', false)
    .option('--time-scale <x>', 'model ms per wall ms (the emulators\' --time-scale); records and engine use model ms', numberArg('--time-scale', { min: 1e-6 }), 1)
    .option('--model <name>', 'served model name (default: asked from the first backend)')
    .option('--seed <n>', 'engine seed', seedArg, 1)
    .option('--no-injection-type', "ignore the body's Injection_type instead of forcing it")
    .option('--blend-separator <s>', 'LMCache blend_special_str of the instances the cluster file declares blend on (default " # #\\n")')
    .option('--reorder-documents', "the application allows reordering a request's documents: send them in the engine's canonical order (popular / already-dispatched sequences first) unless the body says reorder_documents: false")
    .option('--no-calibrate', "keep the engine's step model as the profile gives it (default: calibrate it online from observed first-token and completion times)")
    .option('--upstream <mode>', 'non-streaming client requests: stream (observe TTFT, assemble) | direct', choiceArg('--upstream', ['stream', 'direct'] as const), 'stream')
    .option('--health-ms <ms>', 'backend /health poll period (0 = off)', numberArg('--health-ms', { min: 0 }), 1000)
    .option('--no-decision-header', 'do not send the x-kvlab-decision response header')
    .option('--kv-events <endpoints>', "comma-separated vLLM KV-event PUB endpoint of each backend, same order ('-' for none), e.g. tcp://10.0.0.11:5557", list, [])
    .option('--kv-events-replay <endpoints>', 'comma-separated KV-event replay (ROUTER) endpoints, same order (fills sequence gaps)', list, [])
    .option('--kv-events-topic <topic>', 'KV-event topic prefix (vLLM kv-events-config topic)', '')
    .option('--hash-seed <s>', "the instances' PYTHONHASHSEED (vLLM NONE_HASH seed)", '0')
    .option('--max-body-bytes <n>', 'request body limit, bytes (413 above)', intArg('--max-body-bytes', { min: 1 }), DEFAULT_LIMITS.maxBodyBytes)
    .option('--max-json-depth <n>', 'JSON nesting limit of request bodies (400 above, checked before parsing)', intArg('--max-json-depth', { min: 1, max: 10_000 }), DEFAULT_LIMITS.maxJsonDepth)
    .option('--max-n <n>', 'largest n per request (OpenAI\'s API maximum by default)', intArg('--max-n', { min: 1 }), DEFAULT_LIMITS.maxN)
    .option('--max-prompts <n>', 'largest prompt list of /v1/completions', intArg('--max-prompts', { min: 1 }), DEFAULT_LIMITS.maxPrompts)
    .option('--max-tokens <n>', 'largest max_tokens / max_completion_tokens (default: max_model_len)', intArg('--max-tokens', { min: 1 }))
    .option('--max-model-len <n>', "context length the gateway enforces (default: the backends' /v1/models max_model_len, else the cluster profile's)", intArg('--max-model-len', { min: 1 }))
    .option('--max-chars-per-token <n>', 'prompts longer than this × max_model_len characters are refused without tokenising', intArg('--max-chars-per-token', { min: 1 }), DEFAULT_LIMITS.maxCharsPerToken)
    .option('--peers <url>', 'gateway replicas: share engine bookkeeping with every gateway on this Redis (redis://HOST:PORT/DB) through an op-log stream')
    .option('--replica-id <id>', 'with --peers: this replica\'s name on the op-log (default host:pid:random)')
    .option('--peer-heartbeat-ms <ms>', 'with --peers: heartbeat period (wall ms)', intArg('--peer-heartbeat-ms', { min: 10 }), 1000)
    .option('--peer-timeout-ms <ms>', "with --peers: a replica silent this long has its bookings released (wall ms)", intArg('--peer-timeout-ms', { min: 20 }), 5000)
    .option('--log', 'log requests (pino)', false)
    .action(async (f: GatewayFlags) => {
      const strategyParams = parseJsonObject(f.strategyParams, '--strategy-params');
      checkStrategyParams(f.strategy, strategyParams);
      const { startGateway } = await import('./gateway.js');
      const gw = await startGateway({
        host: f.host,
        port: f.port,
        backends: backendSpecs(f.backends, f.lmcacheRedis),
        kdnUrl: f.kdn ?? null,
        strategy: f.strategy,
        strategyParams,
        cluster: f.cluster,
        roles: f.roles,
        profile: f.profile,
        out: f.out,
        timeScale: f.timeScale,
        model: f.model,
        seed: f.seed,
        honorInjectionType: f.injectionType,
        calibrate: f.calibrate,
        reorderDocuments: !!f.reorderDocuments,
        ...(f.blendSeparator !== undefined ? { blendSeparator: f.blendSeparator.replace(/\\n/g, '\n') } : {}),
        upstreamMode: f.upstream,
        health: { intervalMs: f.healthMs },
        decisionHeader: f.decisionHeader,
        kvEvents: f.kvEvents.length ? kvEventSources(f.kvEvents, f.kvEventsReplay, f.kvEventsTopic, f.backends.length) : undefined,
        hashSeed: f.hashSeed,
        append: f.append,
        limits: { maxBodyBytes: f.maxBodyBytes, maxJsonDepth: f.maxJsonDepth, maxN: f.maxN, maxPrompts: f.maxPrompts, maxTokens: f.maxTokens ?? null, maxModelLen: f.maxModelLen ?? null, maxCharsPerToken: f.maxCharsPerToken },
        logger: f.log,
        ...(f.peers ? { peers: { url: f.peers, replicaId: f.replicaId, heartbeatMs: f.peerHeartbeatMs, timeoutMs: f.peerTimeoutMs } } : {}),
      });
      process.stderr.write(`gateway: ${f.backends.length} backends, strategy ${f.strategy}, KDN ${f.kdn ?? 'none'}${f.out ? `, records in ${f.out}` : ''}\n`);
      (await import('./tokenize-pool.js')).warmTokenizePool();
      process.stdout.write(`ready ${gw.url}\n`);
      await untilSignal('gateway', () => gw.close());
    });
}

/** KV-event sources from the CLI lists ('-' or '' = none). @throws Error naming the option. */
export function kvEventSources(endpoints: string[], replay: string[], topic: string, n: number): Array<KvEventSource | null> {
  if (endpoints.length !== n) throw new Error(`--kv-events: ${endpoints.length} endpoints for ${n} backends (one per backend, '-' for none)`);
  if (replay.length && replay.length !== n) throw new Error(`--kv-events-replay: ${replay.length} endpoints for ${n} backends`);
  return endpoints.map((e, i) => {
    if (e === '-' || e === '') return null;
    if (!/^(tcp|ipc):\/\//.test(e)) throw new Error(`--kv-events: entry ${i + 1} must be a ZMQ endpoint like tcp://host:5557 (got "${e}")`);
    const r = replay[i];
    return { endpoint: e, ...(r && r !== '-' ? { replayEndpoint: r } : {}), topic };
  });
}

interface ReplayFlags {
  target: string;
  trace?: string;
  workload?: 'synthetic' | 'nq';
  workloadOpt?: Record<string, unknown>;
  limit?: number;
  speed: number;
  timeScale: number;
  out: string;
  concurrencyLimit?: number;
  model?: string;
  registerKdn?: string;
  quiet: boolean;
}

function registerReplay(program: Command): void {
  program
    .command('replay')
    .description('Replay a trace or workload open-loop against an OpenAI-compatible target (the gateway, vLLM or an emulator) and record observed timings.')
    .requiredOption('--target <url>', 'target base URL, e.g. http://127.0.0.1:7001')
    .option('--trace <file>', 'trace file (.jsonl Mooncake, .csv) or NQ directory')
    .option('--workload <name>', 'built-in workload: synthetic | nq', choiceArg('--workload', ['synthetic', 'nq'] as const))
    .option('--workload-opt <k=v>', 'workload option (repeatable), e.g. requests=50 rate=2', keyValueArg('--workload-opt'))
    .option('--limit <n>', 'only the first N requests', intArg('--limit', { min: 1 }))
    .option('--speed <x>', 'send arrivals x times faster than the trace', numberArg('--speed', { min: 1e-6 }), 1)
    .option('--time-scale <x>', 'model ms per wall ms of observed durations (the emulators\' --time-scale)', numberArg('--time-scale', { min: 1e-6 }), 1)
    .requiredOption('--out <dir>', 'run directory to write (refused when it already has records)', outDirArg('--out'))
    .option('--concurrency-limit <n>', 'at most N requests in flight', intArg('--concurrency-limit', { min: 1 }))
    .option('--model <name>', 'model field of every request')
    .option('--register-kdn <url>', "register the workload's documents in this KDN first (NQ files, or synthesised synthetic documents) and send its kids")
    .option('--quiet', 'no progress', false)
    .action(async (f: ReplayFlags) => {
      if (f.trace && f.workload) throw new Error('give --trace or --workload, not both');
      if (!f.trace && !f.workload) throw new Error('give --trace FILE or --workload synthetic|nq');
      if (f.workloadOpt && f.trace) throw new Error('--workload-opt applies to --workload, not to --trace');
      if (f.workloadOpt) checkWorkloadOptions(f.workload!, f.workloadOpt, '--workload-opt');
      const { runReplay } = await import('./replay.js');
      let last = 0;
      const res = await runReplay({
        target: f.target,
        trace: f.trace,
        workload: f.workload,
        workloadOptions: f.workloadOpt ?? {},
        limit: f.limit,
        speed: f.speed,
        timeScale: f.timeScale,
        out: f.out,
        concurrencyLimit: f.concurrencyLimit,
        model: f.model,
        registerKdn: f.registerKdn,
        onProgress: f.quiet
          ? undefined
          : (d, n) => {
              const now = Date.now();
              if (d === n || now - last > 1000) {
                last = now;
                process.stderr.write(`replay: ${d}/${n} done\r`);
              }
            },
      });
      const s = res.summary!;
      process.stderr.write(`\nreplay: ${s.completed}/${s.requests} ok, ${s.failed} failed, ${s.rejected} rejected in ${(res.wallMs / 1000).toFixed(1)} s; TTFT p50 ${s.ttft_ms.p50} ms p90 ${s.ttft_ms.p90} ms; records in ${res.outDir}\n`);
    });
}

function registerDiff(program: Command): void {
  program
    .command('diff')
    .description('Compare two runs request by request (A = reference, e.g. the live run; B = e.g. the simulated run): MAPE, median/p90 absolute error and bias per timing field, and the engine\'s decision-time prediction vs observed.')
    .argument('<runA>', 'run directory (or records.jsonl); an imported real run (kvlab import) compares against simulated runs')
    .argument('<runB...>', 'run directory (or records.jsonl); after an imported run, one simulated run per seed')
    .option('--json', 'print diff.json to stdout instead of a table', false)
    .option('--out <file>', 'where to write diff.json (fidelity.json for an imported run)', outFileArg('--out'))
    .action(async (a: string, bs: string[], f: { json: boolean; out?: string }) => {
      const fid = await import('../sim/fidelity.js');
      if (fid.isObservedRun(a)) {
        const r = fid.fidelityDiff(a, bs, f.out ?? 'fidelity.json');
        if (f.json) process.stdout.write(JSON.stringify(r, null, 1) + '\n');
        else process.stdout.write(fid.formatFidelity(r) + `(written to ${f.out ?? 'fidelity.json'})\n`);
        return;
      }
      if (bs.length !== 1) throw new Error('diff: give exactly two runs (several simulated runs only after an imported run)');
      const b = bs[0]!;
      f.out ??= 'diff.json';
      const d = diffRuns(a, b, f.out);
      const warn = overlapWarning(d);
      if (warn) process.stderr.write(`${warn}\n`);
      if (f.json) process.stdout.write(JSON.stringify(d, null, 1) + '\n');
      else process.stdout.write(formatDiff(d) + `(written to ${f.out})\n`);
    });
}

interface DemoFlags {
  out: string;
  requests: number;
  strategy: string;
  instances: number;
  timeScale: number;
  workload?: 'nq' | 'synthetic';
  rate: number;
  outputTokens: number;
  profile?: string;
  seed: number;
  kvEvents: boolean;
  pd: boolean;
  blend: boolean;
}

function registerDemo(program: Command): void {
  let live = program.commands.find((c) => c.name() === 'live');
  live ??= program.command('live').description('Live mode helpers.');
  live
    .command('demo')
    .description('One command: Redis + emulators + KDN + gateway on loopback, replay a short workload, simulate the same requests, and compare simulated / predicted / observed TTFT (DIR/diff.json).')
    .requiredOption('--out <dir>', 'output directory (live/, replay/, sim/, diff.json); refused when it holds an earlier demo', outDirArg('--out'))
    .option('--requests <n>', 'requests to replay', intArg('--requests', { min: 1, max: 5000 }), 40)
    .option('--strategy <name>', 'strategy', 'kvlab')
    .option('--instances <n>', 'emulated instances', intArg('--instances', { min: 1, max: 16 }), 2)
    .option('--time-scale <x>', 'run the emulators, links and clocks x times faster than real time', numberArg('--time-scale', { min: 0.01, max: 100 }), 1)
    .option('--workload <name>', 'nq (default when ../shared/data/workloads/cacheroute-nq exists) | synthetic', choiceArg('--workload', ['nq', 'synthetic'] as const))
    .option('--rate <rps>', 'mean arrival rate, requests per model second', numberArg('--rate', { min: 1e-3 }), 0.5)
    .option('--output-tokens <n>', 'output tokens per request', intArg('--output-tokens', { min: 1, max: 4096 }), 32)
    .option('--profile <name>', 'instance profile')
    .option('--seed <n>', 'workload and engine seed', seedArg, 1)
    .option('--kv-events', 'emulators publish vLLM KV events and the gateway follows them (sim: events without delay)', false)
    .option('--pd', 'P/D disaggregation: 1 prefill + 1 decode emulator (roles 1P1D), the gateway drives kv_transfer_params as vLLM\'s proxy does, the sim hands the KV off on the same link model', false)
    .option('--blend', 'multi-document RAG (3–5 documents per request, synthetic workload) on instances running CacheBlend: a CacheBlend builder computes every document\'s segment KV, the gateway blends them in (the sim likewise)', false)
    .action(async (f: DemoFlags, cmd: Command) => {
      const { runDemo } = await import('./demo.js');
      const instances = f.pd && cmd.getOptionValueSource('instances') === 'default' ? undefined : f.instances;
      const r = await runDemo({ out: f.out, requests: f.requests, strategy: f.strategy, instances, timeScale: f.timeScale, workload: f.workload, rate: f.rate, outputTokens: f.outputTokens, profile: f.profile, seed: f.seed, kvEvents: f.kvEvents, pd: f.pd, blend: f.blend });
      process.stdout.write(`${r.text}\nlive demo: done in ${(r.wallMs / 1000).toFixed(1)} s; outputs in ${r.out}\n`);
      // everything started was stopped; do not wait for stray timers of closed servers
      process.exit(0);
    });
}

/** `--roles 1P1D`: checked with engine/pd.ts `parseRoles`, kept as the string. */
function rolesArg(v: string): string {
  try {
    parseRoles(v, '--roles');
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  return v;
}
