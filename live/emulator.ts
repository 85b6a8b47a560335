/**
 * vLLM-compatible emulator: an OpenAI API server (fastify) that behaves like vLLM 0.13 +
 * LMCache 0.3.11 for the live controller, without a GPU.
 *
 * - API: `POST /v1/completions`, `POST /v1/chat/completions` (SSE and not), `GET /v1/models`,
 *   `POST /tokenize`, `POST /detokenize`, `GET /health`, `GET /version`, `GET /metrics`
 *   (vLLM names), and `GET /emulator/status` (its own). Shapes follow
 *   reference/live-protocols.md §1 and §2.
 * - Tokens: prompt ids from the Llama-3 tokenizer (chat: Llama-3-Instruct template); output is
 *   deterministic filler text, exactly `max_tokens` tokens (`finish_reason: "length"`). Without
 *   `max_tokens` a chat request stops after `defaultMaxTokens` tokens with `"stop"`, as if the
 *   model had emitted EOS.
 * - Timing: the simulator's instance model (sim/instance.ts) on the wall clock
 *   (live/wall-engine.ts), with the prefix cache keyed by chained 52-bit block ids.
 * - LMCache (when a Redis URL is given): before prefill the prompt's chunk keys are looked up
 *   in prefix order and the hit is really read from Redis; after the first token the computed
 *   chunks are stored. `usage.prompt_tokens_details.cached_tokens` = local prefix-cache hit +
 *   LMCache load, omitted when 0 (vLLM 0.13 with `--enable-prompt-tokens-details`).
 * - KV events (optional): vLLM's ZMQ + msgpack BlockStored / BlockRemoved / AllBlocksCleared,
 *   one batch per engine step, hashes = vLLM sha256_cbor block hashes (live/kv-events.ts).
 */
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { connectRedis } from './redis-connect.js';
import { BLEND_DEFAULTS, type BlendSpec, type EngineSettings, type InstanceSpec, type KvMedium, type LinkSpec, type Profile } from '../engine/types.js';
import { DEFAULT_PROFILE, instanceSpecFromProfile, loadProfile } from '../sim/profiles.js';
import type { CoreRequest, ReqState } from '../sim/instance.js';
import { fastBlockIds, kvEventHash, vllmBlockHashes } from './block-hash.js';
import { EmulatorMetrics } from './emulator-metrics.js';
import { KvEventPublisher, type KvCacheEvent, type KvEventPublisherOptions } from './kv-events.js';
import { lmcacheChunks, lmcacheConfig, lmcacheSegments, type LmcacheChunk, type LmcacheConfig } from './lmcache.js';
import { BLEND_SEPARATOR } from './blend-layout.js';
import { LmcacheRedis } from './lmcache-redis.js';
import { OutputText, type OutputSpec, type OutputStep } from './emulator-output.js';
import { EMULATOR_ROLES, parsePdRequest, PdHandoff, type EmulatorRole, type PdLoaded, type PdRequest, type PdWindow } from './emulator-pd.js';
import {
  acceptAnyJson,
  ApiError,
  badRequest,
  chatRequestSchema,
  completionRequestSchema,
  detokenizeRequestSchema,
  internalError,
  modelNotFound,
  openAiClientErrorHandler,
  refuseUnreadBody,
  parseBody,
  tokenizeChatSchema,
  tokenizeCompletionSchema,
  toApiError,
  type UsageInfo,
} from './openai.js';
import { decodeTokens, encodeText, fillerToken, tokenString, VOCAB_SIZE, type ChatMessage } from './tokenizer.js';
import { encodeChatAsync, encodePromptAsync, holdTokenizePool } from './tokenize-pool.js';
import { WallClockEngine } from './wall-engine.js';

/** Options of {@link startEmulator}. */
export interface EmulatorOptions {
  /** listen address (default 127.0.0.1). */
  host?: string;
  /** listen port (default 0 = any free port). */
  port?: number;
  /** instance profile, by name/path or as an object (default `rtx5090x8-llama3-70b`). */
  profile?: Profile | string;
  /** overrides of the profile's engine settings (e.g. a smaller kvCapacityTokens). */
  engine?: Partial<EngineSettings>;
  /** served model name (`model` field, metric label); default the profile's model name. */
  model?: string;
  /** model path: LMCache key `model_name` and the `/v1/models` `root`; default = `model`. */
  modelPath?: string;
  /** LMCache Redis URL (`redis://127.0.0.1:6379/0`); no LMCache when absent. */
  redisUrl?: string;
  /** synthesised LMCache KV bytes per token (summed over ranks); default 64. */
  bytesPerToken?: number;
  /** LMCache key/hash settings (variant, worldSize, chunkSize, dtype, hashSeed). */
  lmcache?: Partial<Omit<LmcacheConfig, 'model'>>;
  /**
   * CacheBlend (LMCache `enable_blending: true`): the LMCache keys are per segment between
   * separators (`blend_special_str`, default live/blend-layout.ts `BLEND_SEPARATOR`), the leading
   * run of segments present is loaded wherever it sits, and `blend_recompute_ratios` ×
   * (layers after `blend_check_layers`) of it is computed again (engine/knowledge.ts; LMCache
   * defaults of its example: 0.15, layer 1). Absent: prefix chunks (CacheBlend off).
   */
  blend?: Partial<BlendSpec> & { separator?: string };
  /** publish vLLM KV events on ZMQ (endpoint, replay endpoint, topic). */
  kvEvents?: KvEventPublisherOptions;
  /** model ms per wall ms (default 1; 10 = ten times faster). */
  timeScale?: number;
  /** report `prompt_tokens_details.cached_tokens` (vLLM `--enable-prompt-tokens-details`); default true. */
  enablePromptTokensDetails?: boolean;
  /** output tokens of a chat request without max_tokens (then finish_reason "stop"); default 256. */
  defaultMaxTokens?: number;
  /** apply the profile's cold-start delay to the first request; default true. */
  coldStart?: boolean;
  /** sequences (n × prompts) one request may ask for (default max(max_num_seqs, 256)). */
  maxRequestSeqs?: number;
  /** largest `logprobs` / `top_logprobs` (vLLM `--max-logprobs`, default 20). */
  maxLogprobs?: number;
  /** request body limit, bytes (default 64 MiB; 413 above). */
  maxBodyBytes?: number;
  /** JSON nesting limit of request bodies (default 64). */
  maxJsonDepth?: number;
  /** pino logging (fastify `logger` option); default false. */
  logger?: boolean | object;
  /**
   * role in disaggregated serving (live/emulator-pd.ts): `prefill` refuses decode hand-offs
   * (`kv_transfer_params.do_remote_prefill`), `decode` refuses to prefill for another instance
   * (`do_remote_decode`), `mixed` (default) serves both; every role serves ordinary requests.
   * `prefill` needs `redisUrl` (the KV is handed over through it).
   */
  role?: EmulatorRole;
  /** engine id in the hand-offs it answers (`remote_engine_id`); default a random UUID. */
  engineId?: string;
  /** P -> D link model a decode instance charges a hand-off on (default engine/pd.ts PD_LINK_DEFAULT). */
  pdLink?: LinkSpec;
}

/** A running emulator. */
export interface EmulatorHandle {
  /** `http://host:port` */
  url: string;
  host: string;
  port: number;
  app: FastifyInstance;
  engine: WallClockEngine;
  /** served model name. */
  model: string;
  /** resolved LMCache config (also when no Redis is used). */
  lmcache: LmcacheConfig;
  kvEvents?: KvEventPublisher;
  /** the P/D hand-off side (role, engine id, counters). */
  pd: PdHandoff;
  /**
   * Graceful shutdown: stops accepting connections, lets running requests finish for up to
   * `graceMs` (default 5,000 ms), then fails the rest (streams get an in-band error and
   * `[DONE]`), flushes KV events and quits Redis. Idempotent.
   */
  close(graceMs?: number): Promise<void>;
}

/** Per-block info kept for KV events (vLLM hash, parent, token ids). */
interface BlockInfo {
  hash: bigint;
  parent: number | null;
  parentHash: bigint | null;
  tokens: number[];
}

/** Converts the core's block-id KV events to vLLM events, batched per engine step. */
class KvEventBridge {
  private readonly info = new Map<number, BlockInfo>();
  private pending: KvCacheEvent[] = [];
  private lastStoredId: number | null = null;
  constructor(
    private readonly pub: KvEventPublisher,
    private readonly blockSize: number,
    private readonly seed: string,
    private readonly maxInfo = 2_000_000,
  ) {}

  /** Remembers the vLLM hashes of a prompt's full blocks (`ids` = fast block ids). */
  register(promptIds: readonly number[], ids: readonly number[]): void {
    const hashes = vllmBlockHashes(promptIds.slice(0, ids.length * this.blockSize), this.blockSize, this.seed);
    for (let i = 0; i < ids.length; i++) {
      if (this.info.has(ids[i]!)) continue;
      this.info.set(ids[i]!, {
        hash: kvEventHash(hashes[i]!),
        parent: i > 0 ? ids[i - 1]! : null,
        parentHash: i > 0 ? kvEventHash(hashes[i - 1]!) : null,
        tokens: promptIds.slice(i * this.blockSize, (i + 1) * this.blockSize) as number[],
      });
    }
    if (this.info.size > this.maxInfo) {
      // drop the oldest entries (insertion order); only blocks long gone from the cache
      let drop = this.info.size - this.maxInfo;
      for (const k of this.info.keys()) {
        if (drop-- <= 0) break;
        this.info.delete(k);
      }
    }
  }

  onCoreEvent(kind: 'stored' | 'removed' | 'cleared', blocks: number[], medium: KvMedium = 'GPU'): void {
    if (kind === 'cleared') {
      if (medium !== 'GPU') return; // vLLM's AllBlocksCleared is the device cache's
      this.pending.push({ type: 'AllBlocksCleared' });
      this.lastStoredId = null;
      return;
    }
    if (kind === 'removed') {
      const hashes = blocks.map((b) => this.info.get(b)?.hash).filter((h): h is bigint => h !== undefined);
      if (hashes.length) this.pending.push({ type: 'BlockRemoved', blockHashes: hashes, medium });
      this.lastStoredId = null;
      return;
    }
    for (const b of blocks) {
      const inf = this.info.get(b);
      if (!inf) continue;
      const last = this.pending[this.pending.length - 1];
      if (last && last.type === 'BlockStored' && last.medium === medium && this.lastStoredId !== null && inf.parent === this.lastStoredId) {
        last.blockHashes.push(inf.hash);
        last.tokenIds.push(...inf.tokens);
      } else {
        this.pending.push({
          type: 'BlockStored',
          blockHashes: [inf.hash],
          parentBlockHash: inf.parentHash,
          tokenIds: [...inf.tokens],
          blockSize: this.blockSize,
          loraId: null,
          medium,
          loraName: null,
        });
      }
      this.lastStoredId = b;
    }
  }

  /** Publishes the events of the step just finished as one batch. */
  flush(): void {
    if (this.pending.length) this.pub.publish(this.pending);
    this.pending = [];
    this.lastStoredId = null;
  }
}

/** One generation (a prompt × one of its n samples) as the API layer sees it. */
interface ChoiceSpec extends OutputSpec {
  index: number;
  promptIndex: number;
  promptIds: number[];
  maxTokens: number;
  /** finish reason when the output limit is reached. */
  finishReason: 'length' | 'stop';
}

/** Progress callbacks of one choice. */
interface ChoiceCallbacks {
  token(choice: ChoiceSpec, step: OutputStep): void;
}

/** Result of one finished choice. */
interface ChoiceResult {
  /** P of a hand-off: the `kv_transfer_params` of the answer. */
  kvTransferParams?: Record<string, unknown>;
  text: string;
  tokens: number;
  cachedTokens: number;
  finishReason: string;
  stopReason: string | null;
  logprobs: Record<string, unknown[]> | null;
}

/** A request's part in a P/D hand-off (live/emulator-pd.ts). */
interface Handoff {
  req: PdRequest;
  /** D: the prefill instance's engine id (its P -> D link). */
  from: string;
  /** D: the prompt KV read from P's LMCache Redis. */
  received?: PdLoaded;
  /** D: the link window, once the request left the frontend. */
  window?: PdWindow;
  /** model time the request arrived (ms). */
  arrivalModelMs: number;
}

/** The `x-kvlab-kv-transfer` header of a decode instance's answer (durations in model ms). */
function handoffHeader(h: Handoff): string {
  const w = h.window;
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return JSON.stringify({
    tokens: h.received?.tokens ?? 0,
    bytes: w?.bytes ?? 0,
    link_wait_ms: w ? r(w.startMs - w.readyMs) : 0,
    transfer_ms: w ? r(w.endMs - w.startMs) : 0,
    start_after_ms: w ? r(w.startMs - h.arrivalModelMs) : 0,
    miss: h.received?.miss ?? null,
  }).replace(/[^\x20-\x7e]/g, '?');
}

/** The client went away: the choice was aborted. */
class ClientGone extends Error {
  constructor() {
    super('client disconnected');
  }
}

const nowSec = (): number => Math.floor(Date.now() / 1000);
const hex = (): string => randomUUID().replace(/-/g, '');

/** Starts the emulator and resolves once it listens. Throws on bad options (naming them). */
export async function startEmulator(opts: EmulatorOptions = {}): Promise<EmulatorHandle> {
  const profile = typeof opts.profile === 'object' ? opts.profile : loadProfile(opts.profile ?? DEFAULT_PROFILE);
  const spec: InstanceSpec = instanceSpecFromProfile(profile, 0, opts.engine ?? {}, 'emulator');
  const served = opts.model ?? profile.model.name;
  const modelPath = opts.modelPath ?? served;
  const bytesPerToken = opts.bytesPerToken ?? 64;
  if (!(bytesPerToken > 0)) throw new Error(`bytesPerToken must be > 0 (got ${bytesPerToken})`);
  const lmcfg = lmcacheConfig({ ...opts.lmcache, model: modelPath });
  const blend = opts.blend ? { spec: { ...BLEND_DEFAULTS, ...(opts.blend.recomputeRatio !== undefined ? { recomputeRatio: opts.blend.recomputeRatio } : {}), ...(opts.blend.checkLayer !== undefined ? { checkLayer: opts.blend.checkLayer } : {}) }, separator: opts.blend.separator ?? BLEND_SEPARATOR } : null;
  if (blend && (!(blend.spec.recomputeRatio >= 0 && blend.spec.recomputeRatio <= 1) || !Number.isInteger(blend.spec.checkLayer) || blend.spec.checkLayer < 0)) throw new Error(`emulator: blend: recomputeRatio must be in [0, 1] and checkLayer an integer >= 0 (got ${blend.spec.recomputeRatio}, ${blend.spec.checkLayer})`);
  if (blend && !blend.separator) throw new Error('emulator: blend: the separator must not be empty');
  const blendSep = blend ? encodeText(blend.separator) : [];
  const details = opts.enablePromptTokensDetails ?? true;
  const defaultMaxTokens = opts.defaultMaxTokens ?? 256;
  const blockSize = spec.engine.blockSizeTokens;
  const maxModelLen = spec.engine.maxModelLen;
  const maxRequestSeqs = opts.maxRequestSeqs ?? Math.max(spec.engine.maxNumSeqs, 256);
  const maxLogprobs = opts.maxLogprobs ?? 20;
  const bodyLimit = opts.maxBodyBytes ?? 64 * 1024 * 1024;
  for (const [k, v] of Object.entries({ maxRequestSeqs, maxLogprobs, bodyLimit })) if (!Number.isSafeInteger(v) || v < (k === 'maxLogprobs' ? 0 : 1)) throw new Error(`emulator: ${k} must be a positive integer (got ${v})`);
  const created = nowSec();
  const role = opts.role ?? 'mixed';
  if (!(EMULATOR_ROLES as readonly string[]).includes(role)) throw new Error(`emulator: role must be one of ${EMULATOR_ROLES.join(', ')} (got ${JSON.stringify(role)})`);
  if (role === 'prefill' && !opts.redisUrl) throw new Error('emulator: --role prefill needs --redis URL (the prompt KV is handed to the decode instance through its LMCache Redis)');

  let redis: Redis | undefined;
  let lmcache: LmcacheRedis | undefined;
  if (opts.redisUrl) {
    redis = await connectRedis(opts.redisUrl, 'emulator', 'its LMCache Redis', { maxRetriesPerRequest: 2, enableOfflineQueue: true });
    // connection errors surface on the commands that fail (lookups then count as misses)
    redis.on('error', () => undefined);
    lmcache = new LmcacheRedis(redis, lmcfg, bytesPerToken);
  }

  const pd = new PdHandoff({
    role,
    engineId: opts.engineId,
    link: opts.pdLink,
    own: redis && lmcache ? { url: opts.redisUrl!, redis, lmcache } : null,
    lmcache: lmcfg,
    bytesPerToken,
    kvBytesPerToken: profile.model.kvBytesPerToken,
    layers: profile.model.layers,
    blockSize,
    log: (m) => app.log.warn(m),
  });

  let kvPub: KvEventPublisher | undefined;
  let bridge: KvEventBridge | undefined;
  if (opts.kvEvents) {
    kvPub = await KvEventPublisher.start(opts.kvEvents);
    bridge = new KvEventBridge(kvPub, blockSize, lmcfg.hashSeed);
  }

  let metrics: EmulatorMetrics;
  const engine = new WallClockEngine(spec, {
    timeScale: opts.timeScale,
    coldStart: opts.coldStart,
    onKvEvent: bridge ? (k, b, m) => bridge!.onCoreEvent(k, b, m) : undefined,
    onStep: (tokens) => metrics?.observe(metrics.iterationTokens, tokens),
    onStepFinished: bridge ? () => bridge!.flush() : undefined,
  });
  let preemptionsSeen = 0;
  let lmcacheErrors = 0;
  metrics = new EmulatorMetrics(
    served,
    maxModelLen,
    { block_size: blockSize, cache_dtype: 'auto', enable_prefix_caching: 'True', num_gpu_blocks: Math.floor(spec.engine.kvCapacityTokens / blockSize), prefix_caching_hash_algo: 'sha256_cbor' },
    {
      running: () => engine.load.running,
      waiting: () => engine.load.waiting + Math.max(0, engine.inflight - engine.load.running - engine.load.waiting),
      kvUsage: () => engine.core.kv.usage(),
    },
  );

  const app = Fastify({ logger: opts.logger ?? false, bodyLimit, forceCloseConnections: 'idle', clientErrorHandler: openAiClientErrorHandler() });
  acceptAnyJson(app, (msg) => badRequest(msg, null), { maxDepth: opts.maxJsonDepth ?? 64 });
  app.setErrorHandler((err, req, reply) => {
    const e = err instanceof ClientGone ? new ApiError(499, err.message, 'ClientClosedRequestError') : toApiError(err, { bytes: bodyLimit, flag: 'the emulator\'s --max-body-bytes' });
    if (reply.sent || refuseUnreadBody(req, reply, e.status, e.body())) return;
    void reply.status(e.status).type('application/json').send(e.body());
  });
  app.setNotFoundHandler((_req, reply) => {
    void reply.status(404).type('application/json').send({ detail: 'Not Found' });
  });

  const checkModel = (model: string | null | undefined): void => {
    if (model !== undefined && model !== null && model !== served) throw modelNotFound(model);
  };

  /** Runs one choice through LMCache lookup, the engine, and LMCache store. */
  const runChoice = async (reqId: string, ch: ChoiceSpec, cb: ChoiceCallbacks, arrivalWall: number, signal: AbortSignal, hand?: Handoff): Promise<ChoiceResult> => {
    const ids = ch.promptIds;
    const P = ids.length;
    const blocks = fastBlockIds(ids, blockSize);
    bridge?.register(ids, blocks);
    let chunks: LmcacheChunk[] = [];
    let lmHitChunks = 0;
    let loadedTokens = 0;
    // D of a hand-off: the prompt's KV read from P (no LMCache lookup of its own, no store)
    const received = hand?.received;
    if (received) loadedTokens = received.tokens;
    // P of a hand-off: its KV goes to its LMCache Redis before it answers
    let handOff: Promise<Record<string, unknown>> | null = null;
    let blended: CoreRequest['blend'];
    if (lmcache && !received) {
      // CacheBlend: one key per segment between separators; else prefix-chained chunks
      chunks = blend ? lmcacheSegments(ids, blendSep, lmcfg) : lmcacheChunks(ids, lmcfg);
      try {
        lmHitChunks = await lmcache.lookup(chunks);
        metrics.inc(metrics.lmcacheRequested, P);
        const local = blend ? 0 : engine.localHitTokens(blocks, blockSize);
        const from = Math.min(lmHitChunks, Math.floor(local / lmcfg.chunkSize));
        if (lmHitChunks > from) {
          const r = await lmcache.retrieve(chunks, from, lmHitChunks);
          lmHitChunks = from + r.chunks;
        }
        metrics.inc(metrics.lmcacheHit, chunks.slice(0, lmHitChunks).reduce((a, c) => a + c.tokens, 0));
      } catch (e) {
        // like LMCache with an unreachable remote backend: log and serve as a miss
        lmcacheErrors++;
        app.log.warn(`LMCache Redis lookup failed (${(e as Error).message}); treating as a miss`);
        lmHitChunks = 0;
      }
      if (blend) {
        // the loaded segments are blended in wherever they sit (the core charges load + recompute)
        const spans = chunks
          .slice(0, lmHitChunks)
          .filter((c) => c.tokens > 0 && c.start < P - 1)
          .map((c) => [c.start, Math.min(c.start + c.tokens, P - 1)] as const);
        if (spans.length) blended = { spans, spec: blend.spec };
      } else loadedTokens = Math.min(lmHitChunks * lmcfg.chunkSize, P);
    }
    if (signal.aborted) throw new ClientGone();
    const coreId = `${reqId}-${ch.index}`;
    const hold = received && received.tokens > 0 ? (ready: number): number => (hand!.window = pd.reserve(hand!.from, ready, received.tokens)).endMs : undefined;
    const result = await new Promise<ChoiceResult>((resolve, reject) => {
      const out = new OutputText(ch);
      let lastWall = 0;
      let firstWall = 0;
      let cached = 0;
      let emitted = 0;
      let settled = false;
      const finished = (reason: string): void => {
        const now = performance.now();
        metrics.inc(metrics.promptTokens, P);
        metrics.inc(metrics.requestSuccess, 1, { finished_reason: reason });
        metrics.observe(metrics.e2e, (now - arrivalWall) / 1000);
        metrics.observe(metrics.reqPromptTokens, P);
        metrics.observe(metrics.reqGenTokens, emitted);
        metrics.observe(metrics.reqMaxTokens, ch.maxTokens);
        if (emitted > 1) metrics.observe(metrics.tpot, (now - firstWall) / 1000 / (emitted - 1));
      };
      const settle = (r: ChoiceResult): void => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        resolve(r);
      };
      const onAbort = (): void => {
        if (settled) return;
        settled = true;
        engine.abort(coreId); // vLLM aborts a request whose client went away
        metrics.inc(metrics.requestSuccess, 1, { finished_reason: 'abort' });
        reject(new ClientGone());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const err = engine.submit(
        // a hand-off's KV lands in GPU memory over the P -> D link (the hold): no LMCache load time
        { id: coreId, promptTokens: P, outputTokens: ch.maxTokens, blocks, blockSize, loadedTokens, ...(received ? { kvLoadMs: 0 } : {}), ...(blended ? { blend: blended } : {}) },
        {
          token: (i, st) => {
            if (settled) return;
            const t = fillerToken(i, ch.seedOffset);
            const now = performance.now();
            if (i === 0) {
              firstWall = now;
              cached = st ? Math.max(0, st.hitTokens) + st.loadTokens : 0;
              metrics.observe(metrics.ttft, (now - arrivalWall) / 1000);
              metrics.inc(metrics.prefixQueries, P);
              metrics.inc(metrics.prefixHits, Math.max(0, st?.hitTokens ?? 0));
              if (lmcache) {
                metrics.inc(metrics.externalQueries, Math.max(0, P - Math.max(0, st?.hitTokens ?? 0)));
                metrics.inc(metrics.externalHits, st?.loadTokens ?? 0);
                const storeFrom = lmHitChunks;
                if (hand?.req.kind === 'remote-decode') handOff = pd.handOff(ids, reqId, storeFrom);
                else if (storeFrom < chunks.length)
                  void lmcache.store(chunks, storeFrom).catch((e: Error) => {
                    lmcacheErrors++;
                    app.log.warn(`LMCache Redis store failed: ${e.message}`);
                  });
              }
            } else metrics.observe(metrics.itl, (now - lastWall) / 1000);
            lastWall = now;
            metrics.inc(metrics.generationTokens, 1);
            emitted = i + 1;
            const step = out.push(t.id, t.text, i + 1 >= ch.maxTokens);
            cb.token(ch, step);
            if (step.last) {
              // a stop string ends the request before max_tokens: it leaves the engine now
              if (i + 1 < ch.maxTokens) engine.abort(coreId);
              finished(step.finishReason ?? ch.finishReason);
              settle({ text: out.text, tokens: emitted, cachedTokens: cached, finishReason: step.finishReason ?? ch.finishReason, stopReason: step.stopReason, logprobs: out.logprobs });
            }
          },
          preempted: () => {
            preemptionsSeen++;
            metrics.inc(metrics.preemptions, 1);
          },
          done: (st?: ReqState) => {
            if (st && st.firstScheduledAt >= 0) {
              const s = engine.timeScale * 1000;
              metrics.observe(metrics.queueTime, (st.firstScheduledAt - st.arrivedAt) / s);
              metrics.observe(metrics.prefillTime, (st.firstTokenAt - st.firstScheduledAt) / s);
              metrics.observe(metrics.decodeTime, (st.doneAt - st.firstTokenAt) / s);
              metrics.observe(metrics.inferenceTime, (st.doneAt - st.firstScheduledAt) / s);
            }
            if (!settled) {
              finished(ch.finishReason);
              settle({ text: out.text, tokens: emitted, cachedTokens: cached, finishReason: ch.finishReason, stopReason: null, logprobs: out.logprobs });
            }
          },
          failed: (reason) => {
            if (settled) return;
            settled = true;
            reject(internalError(`request ${coreId} failed: ${reason}`));
          },
        },
        hold,
      );
      if (err) {
        settled = true;
        reject(badRequest(`This model's maximum context length is ${maxModelLen} tokens: ${err}. Please reduce the length of the prompt or completion.`, 'max_tokens'));
      }
    });
    if (handOff) result.kvTransferParams = await handOff;
    return result;
  };

  /** Validates max_tokens / context length for a prompt; returns the output token count. */
  const outputTokens = (P: number, maxTokens: number | null | undefined, field: string, dflt: number | 'chat'): { n: number; finish: 'length' | 'stop' } => {
    if (P === 0) throw badRequest('The prompt must not be empty.', 'prompt');
    if (maxTokens !== null && maxTokens !== undefined) {
      if (maxTokens < 1) throw badRequest(`${field} must be at least 1, got ${maxTokens}.`, field);
      const bad = engine.admissible(P, maxTokens);
      if (bad) throw badRequest(`This model's maximum context length is ${maxModelLen} tokens. However, you requested ${P + maxTokens} tokens (${P} in the messages, ${maxTokens} in the completion). Please reduce the length of the messages or completion.`, field);
      return { n: maxTokens, finish: 'length' };
    }
    if (P >= maxModelLen) throw badRequest(`This model's maximum context length is ${maxModelLen} tokens. However, your prompt has ${P} tokens. Please reduce the length of the messages.`, 'messages');
    if (dflt === 'chat') {
      const n = Math.min(defaultMaxTokens, maxModelLen - P);
      const bad = engine.admissible(P, n);
      if (bad) throw badRequest(bad, 'messages');
      return { n, finish: n === defaultMaxTokens ? 'stop' : 'length' };
    }
    const n = dflt;
    const bad = engine.admissible(P, n);
    if (bad) throw badRequest(bad, field);
    return { n, finish: 'length' };
  };

  const usageOf = (prompt: number, completion: number, cached: number, forStream: boolean): UsageInfo => {
    const u: UsageInfo = { prompt_tokens: prompt, total_tokens: prompt + completion, completion_tokens: completion };
    if (details && cached > 0) u.prompt_tokens_details = { cached_tokens: cached };
    else if (!forStream) u.prompt_tokens_details = null;
    return u;
  };

  /** Shared driver of both generation endpoints. */
  const generate = async (
    kind: 'completion' | 'chat',
    req: FastifyRequest,
    reply: FastifyReply,
    choices: ChoiceSpec[],
    prompts: number[][],
    stream: boolean,
    includeUsage: boolean,
    continuousUsage: boolean,
    echoTexts: string[] | null,
    hand?: Handoff,
  ): Promise<void> => {
    const arrival = performance.now();
    const rid = headerRequestId(req) ?? hex();
    const id = kind === 'completion' ? `cmpl-${rid}` : `chatcmpl-${rid}`;
    const createdAt = nowSec();
    const promptTokens = prompts.reduce((a, p) => a + p.length, 0);
    metrics.observe(metrics.reqN, choices.length / prompts.length);
    const completionTokens = (): number => counts.reduce((a, b) => a + b, 0);
    const counts = choices.map(() => 0);
    const cachedPerPrompt = prompts.map(() => 0);
    // the client going away aborts every choice in the engine (as vLLM does)
    const gone = new AbortController();
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) gone.abort();
    });

    if (!stream) {
      let results: ChoiceResult[];
      try {
        results = await Promise.all(choices.map((c) => runChoice(rid, c, { token: () => undefined }, arrival, gone.signal, hand)));
      } catch (e) {
        gone.abort(); // one choice failed: the others stop too
        throw e;
      }
      results.forEach((r, i) => {
        counts[i] = r.tokens;
        const pi = choices[i]!.promptIndex;
        cachedPerPrompt[pi] = Math.max(cachedPerPrompt[pi]!, r.cachedTokens);
      });
      const usage = usageOf(promptTokens, completionTokens(), cachedPerPrompt.reduce((a, b) => a + b, 0), false);
      void reply.header('x-request-id', rid);
      if (hand?.received) void reply.header('x-kvlab-kv-transfer', handoffHeader(hand));
      const kvTransferParams = results[0]?.kvTransferParams ?? null;
      if (kind === 'completion') {
        return reply.send({
          id,
          object: 'text_completion',
          created: createdAt,
          model: served,
          choices: results.map((r, i) => ({
            index: i,
            text: (echoTexts ? echoTexts[choices[i]!.promptIndex]! : '') + r.text,
            logprobs: r.logprobs,
            finish_reason: r.finishReason,
            stop_reason: r.stopReason,
            prompt_logprobs: null,
          })),
          usage,
          system_fingerprint: null,
          kv_transfer_params: kvTransferParams,
        });
      }
      return reply.send({
        id,
        object: 'chat.completion',
        created: createdAt,
        model: served,
        choices: results.map((r, i) => ({
          index: i,
          message: { role: 'assistant', content: r.text, reasoning_content: null, tool_calls: [] },
          logprobs: r.logprobs,
          finish_reason: r.finishReason,
          stop_reason: r.stopReason,
        })),
        usage,
        prompt_logprobs: null,
        kv_transfer_params: kvTransferParams,
      });
    }

    // ---- streaming
    reply.hijack();
    const raw = reply.raw;
    let open = true;
    raw.on('close', () => {
      open = false;
    });
    const send = (obj: unknown): void => {
      if (open) raw.write(`data: ${JSON.stringify(obj)}\n\n`);
    };
    const started = choices.map(() => false);
    const tokensSeen = choices.map(() => 0);
    const cb: ChoiceCallbacks = {
      token: (ch, step) => {
        counts[ch.index] = ++tokensSeen[ch.index]!;
        if (!step.delta && !step.last) return; // held back (a stop string may be starting)
        const usage = continuousUsage ? { prompt_tokens: promptTokens, completion_tokens: completionTokens(), total_tokens: promptTokens + completionTokens() } : undefined;
        const finish = step.last ? (step.finishReason ?? ch.finishReason) : null;
        if (kind === 'completion') {
          const echo = !started[ch.index] && echoTexts ? echoTexts[ch.promptIndex]! : '';
          started[ch.index] = true;
          send({
            id,
            object: 'text_completion',
            created: createdAt,
            model: served,
            choices: [{ index: ch.index, text: echo + step.delta, logprobs: step.logprobs, finish_reason: finish, stop_reason: step.last ? step.stopReason : null }],
            usage: usage ?? null,
          });
        } else {
          const base = { id, object: 'chat.completion.chunk', created: createdAt, model: served };
          if (!started[ch.index]) {
            started[ch.index] = true;
            send({ ...base, choices: [{ index: ch.index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }], ...(usage ? { usage } : {}) });
          }
          const choice: Record<string, unknown> = { index: ch.index, delta: { content: step.delta }, logprobs: step.logprobs, finish_reason: finish };
          if (step.last) choice.stop_reason = step.stopReason;
          send({ ...base, choices: [choice], ...(usage ? { usage } : {}) });
        }
      },
    };
    // the choices start first (tokens only ever arrive from timers): a hand-off's link window is
    // booked synchronously at submit, so its header can go with the response head
    const running = Promise.all(choices.map((c) => runChoice(rid, c, cb, arrival, gone.signal, hand)));
    running.catch(() => undefined);
    raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'x-request-id': rid, ...(hand?.received ? { 'x-kvlab-kv-transfer': handoffHeader(hand) } : {}) });
    try {
      const results = await running;
      results.forEach((r, i) => {
        counts[i] = r.tokens;
        const pi = choices[i]!.promptIndex;
        cachedPerPrompt[pi] = Math.max(cachedPerPrompt[pi]!, r.cachedTokens);
      });
      if (includeUsage) {
        send({
          id,
          object: kind === 'completion' ? 'text_completion' : 'chat.completion.chunk',
          created: createdAt,
          model: served,
          choices: [],
          usage: usageOf(promptTokens, completionTokens(), cachedPerPrompt.reduce((a, b) => a + b, 0), true),
        });
      }
    } catch (e) {
      gone.abort();
      send(toApiError(e).body());
    }
    if (open) raw.end('data: [DONE]\n\n');
    open = false;
  };

  // ---------------------------------------------------------------------------------------
  app.get('/health', async (_req, reply) => reply.status(200).send(''));
  app.get('/version', async () => ({ version: '0.13.0+kvlab.emulator' }));
  app.get('/metrics', async (_req, reply) => reply.type('text/plain; version=0.0.4; charset=utf-8').send(await metrics.text()));
  app.get('/v1/models', async () => ({
    object: 'list',
    data: [
      {
        id: served,
        object: 'model',
        created,
        owned_by: 'vllm',
        root: modelPath,
        parent: null,
        max_model_len: maxModelLen,
        permission: [
          {
            id: `modelperm-${hex()}`,
            object: 'model_permission',
            created,
            allow_create_engine: false,
            allow_sampling: true,
            allow_logprobs: true,
            allow_search_indices: false,
            allow_view: true,
            allow_fine_tuning: false,
            organization: '*',
            group: null,
            is_blocking: false,
          },
        ],
      },
    ],
  }));
  app.get('/emulator/status', async () => ({
    model: served,
    model_path: modelPath,
    profile: profile.name,
    time_scale: engine.timeScale,
    running: engine.load.running,
    waiting: engine.load.waiting,
    inflight: engine.inflight,
    kv_used_tokens: engine.core.kv.used,
    kv_capacity_tokens: engine.core.kv.capacityTokens,
    cached_blocks: engine.core.kv.blocks.size,
    steps: engine.core.steps,
    busy_ms: engine.core.busyMs,
    preemptions: preemptionsSeen,
    lmcache: lmcache ? { redis: opts.redisUrl, ...lmcfg, bytes_per_token: bytesPerToken, errors: lmcacheErrors, blend: blend ? { enable_blending: true, blend_special_str: blend.separator, blend_recompute_ratios: [blend.spec.recomputeRatio], blend_check_layers: [blend.spec.checkLayer] } : null } : null,
    kv_events: kvPub ? { endpoint: kvPub.endpoint, replay_endpoint: kvPub.replayEndpoint ?? null, next_seq: Number(kvPub.nextSeq) } : null,
    role,
    pd: pd.status(),
  }));

  app.post('/tokenize', async (req) => {
    const isChat = req.body !== null && typeof req.body === 'object' && 'messages' in req.body;
    let tokens: number[];
    let strs: boolean;
    if (isChat) {
      const body = parseBody(tokenizeChatSchema, req.body, 'tokenize');
      checkModel(body.model);
      tokens = await encodeChatAsync(body.messages as ChatMessage[], { addGenerationPrompt: body.add_generation_prompt ?? true, continueFinalMessage: body.continue_final_message ?? false });
      if (body.add_special_tokens) tokens = [128000, ...tokens];
      strs = body.return_token_strs ?? false;
    } else {
      const body = parseBody(tokenizeCompletionSchema, req.body, 'tokenize');
      checkModel(body.model);
      tokens = await encodePromptAsync(body.prompt, body.add_special_tokens ?? true);
      strs = body.return_token_strs ?? false;
    }
    return { count: tokens.length, max_model_len: maxModelLen, tokens, token_strs: strs ? tokens.map(tokenString) : null };
  });

  app.post('/detokenize', async (req) => {
    const body = parseBody(detokenizeRequestSchema, req.body, 'detokenize');
    checkModel(body.model);
    const bad = body.tokens.findIndex((t) => t >= VOCAB_SIZE);
    if (bad >= 0) throw badRequest(`tokens.${bad}: token id ${body.tokens[bad]} is out of vocabulary (size ${VOCAB_SIZE})`, 'tokens');
    return { prompt: decodeTokens(body.tokens) };
  });

  /**
   * Checks `n` × prompts against `maxRequestSeqs` before anything is tokenised or allocated
   * (vLLM has no hard cap, but it never runs more than max_num_seqs sequences at once; the
   * emulator keeps per-sequence state, so a request of a million sequences is refused).
   */
  const checkSeqs = (n: number, prompts: number): void => {
    if (n * prompts > maxRequestSeqs) throw badRequest(`n: this server accepts at most ${maxRequestSeqs} sequences per request (n = ${n} × ${prompts} prompt${prompts > 1 ? 's' : ''}; emulator --max-request-seqs)`, 'n');
  };
  /** The output options shared by every choice of a request (stop strings, logprobs). */
  const outputSpec = (body: { stop?: string | string[] | null; include_stop_str_in_output?: boolean | null; min_tokens?: number | null; seed?: number | null }, logprobs: number | null, chat: boolean, j: number): OutputSpec => ({
    seedOffset: (body.seed ?? 0) + j,
    stop: body.stop === undefined || body.stop === null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop,
    includeStopStr: body.include_stop_str_in_output ?? false,
    minTokens: body.min_tokens ?? 0,
    logprobs,
    chat,
  });

  /**
   * The request's part in a P/D hand-off (`kv_transfer_params`, live/emulator-pd.ts), checked: one
   * prompt and one sample; a prefill for another instance answers without streaming (its answer
   * carries the parameters). A decode reads the prompt's KV from P here, before it is scheduled.
   * @throws ApiError 400 naming the field
   */
  const prepareHandoff = async (body: Record<string, unknown>, prompts: number[][], nChoices: number, stream: boolean, arrivalModelMs: number): Promise<Handoff | undefined> => {
    const req = parsePdRequest(body.kv_transfer_params, role, lmcache !== undefined);
    if (!req) return undefined;
    if (prompts.length !== 1) throw badRequest('prompt: a request with kv_transfer_params takes one prompt', 'prompt');
    if (nChoices !== 1) throw badRequest('n: a request with kv_transfer_params takes n = 1', 'n');
    if (req.kind === 'remote-decode') {
      if (stream) throw badRequest('kv_transfer_params.do_remote_decode: needs stream=false (the answer carries the kv_transfer_params for the decode instance)', 'kv_transfer_params');
      return { req, from: '', arrivalModelMs };
    }
    return { req, from: req.engineId, received: await pd.receive(prompts[0]!, req), arrivalModelMs };
  };

  app.post('/v1/completions', async (req, reply) => {
    const arrivalModelMs = engine.nowModel();
    const body = parseBody(completionRequestSchema, req.body, 'completions');
    checkModel(body.model);
    if (body.stream_options && !body.stream) throw badRequest('Stream options can only be defined when `stream=True`.', 'stream_options');
    const lp = body.logprobs ?? null;
    if (lp !== null && lp > maxLogprobs) throw badRequest(`Requested sample logprobs of ${lp}, which is greater than max allowed: ${maxLogprobs}`, 'logprobs');
    const addSpecial = body.add_special_tokens ?? true;
    const raw = body.prompt;
    const list: Array<string | number[]> = typeof raw === 'string' ? [raw] : typeof raw[0] === 'number' ? [raw as number[]] : (raw as Array<string | number[]>);
    const n = body.n ?? 1;
    checkSeqs(n, list.length);
    const prompts: number[][] = [];
    for (let i = 0; i < list.length; i++) {
      const p = list[i]!;
      if (typeof p === 'string') {
        prompts.push(await encodePromptAsync(p, addSpecial));
        continue;
      }
      const bad = p.findIndex((t) => t >= VOCAB_SIZE);
      if (bad >= 0) throw badRequest(`prompt: token id ${p[bad]} at ${list.length > 1 ? `${i}.` : ''}${bad} is out of vocabulary (size ${VOCAB_SIZE})`, 'prompt');
      prompts.push(p);
    }
    const choices: ChoiceSpec[] = [];
    prompts.forEach((ids, pi) => {
      const out = outputTokens(ids.length, body.max_tokens, 'max_tokens', 16);
      for (let j = 0; j < n; j++) choices.push({ index: choices.length, promptIndex: pi, promptIds: ids, maxTokens: out.n, finishReason: out.finish, ...outputSpec(body, lp, false, j) });
    });
    const echoTexts = body.echo ? list.map((p) => (typeof p === 'string' ? p : decodeTokens(p))) : null;
    const so = body.stream_options;
    const hand = await prepareHandoff(body, prompts, choices.length, body.stream ?? false, arrivalModelMs);
    await generate('completion', req, reply, choices, prompts, body.stream ?? false, !!so && (so.include_usage ?? true), !!so?.continuous_usage_stats, echoTexts, hand);
  });

  app.post('/v1/chat/completions', async (req, reply) => {
    const arrivalModelMs = engine.nowModel();
    const body = parseBody(chatRequestSchema, req.body, 'chat/completions');
    checkModel(body.model);
    if (body.stream_options && !body.stream) throw badRequest('Stream options can only be defined when `stream=True`.', 'stream_options');
    const top = body.top_logprobs ?? null;
    if (top !== null && !body.logprobs) throw badRequest('when using `top_logprobs`, `logprobs` must be set to true.', 'top_logprobs');
    if (top !== null && (top < 0 || top > maxLogprobs)) throw badRequest(`top_logprobs must be between 0 and ${maxLogprobs} (got ${top})`, 'top_logprobs');
    const n = body.n ?? 1;
    checkSeqs(n, 1);
    let ids = await encodeChatAsync(body.messages as ChatMessage[], { addGenerationPrompt: body.add_generation_prompt ?? true, continueFinalMessage: body.continue_final_message ?? false });
    if (body.add_special_tokens) ids = [128000, ...ids];
    const field = body.max_completion_tokens !== undefined && body.max_completion_tokens !== null ? 'max_completion_tokens' : 'max_tokens';
    const out = outputTokens(ids.length, body.max_completion_tokens ?? body.max_tokens, field, 'chat');
    const choices: ChoiceSpec[] = [];
    for (let j = 0; j < n; j++) choices.push({ index: j, promptIndex: 0, promptIds: ids, maxTokens: out.n, finishReason: out.finish, ...outputSpec(body, body.logprobs ? (top ?? 0) : null, true, j) });
    const so = body.stream_options;
    const hand = await prepareHandoff(body, [ids], choices.length, body.stream ?? false, arrivalModelMs);
    await generate('chat', req, reply, choices, [ids], body.stream ?? false, !!so && (so.include_usage ?? true), !!so?.continuous_usage_stats, null, hand);
  });

  const releasePool = holdTokenizePool();
  await app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 0 });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : (opts.port ?? 0);
  const host = opts.host ?? '127.0.0.1';

  let closing: Promise<void> | undefined;
  const close = (graceMs = 5000): Promise<void> => {
    closing ??= (async () => {
      const closed = app.close(); // stop listening; resolves when in-flight responses ended
      let timer: NodeJS.Timeout | undefined;
      const drained = new Promise<void>((resolve) => {
        const poll = (): void => {
          if (engine.inflight === 0) return resolve();
          timer = setTimeout(poll, 10);
        };
        poll();
      });
      await Promise.race([drained, new Promise((r) => setTimeout(r, graceMs))]);
      if (timer) clearTimeout(timer);
      engine.close('emulator shutting down');
      await Promise.race([closed, new Promise((r) => setTimeout(r, 1000))]);
      app.server.closeAllConnections();
      await closed;
      await kvPub?.close();
      await pd.close();
      if (redis) await redis.quit().catch(() => redis!.disconnect());
      await releasePool();
    })();
    return closing;
  };
  return { url: `http://${host}:${port}`, host, port, app, engine, model: served, lmcache: lmcfg, kvEvents: kvPub, pd, close };
}

function headerRequestId(req: FastifyRequest): string | undefined {
  const h = req.headers['x-request-id'];
  const v = Array.isArray(h) ? h[0] : h;
  return v && /^[\w.:-]{1,128}$/.test(v) ? v : undefined;
}
