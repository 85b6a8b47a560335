/**
 * The live gateway: an OpenAI-compatible front door (fastify) that runs the policy engine on
 * the wall clock and routes every request to a vLLM-compatible backend, injecting knowledge as
 * text or as KV (through the KDN) as the engine decides.
 *
 * Routes: `POST /v1/completions`, `POST /v1/chat/completions` (SSE and not), `GET /v1/models`,
 * `GET /health`, `GET /metrics` (Prometheus), `GET /debug/status`, `GET|PUT /debug/strategy`.
 *
 * This module wires the stages together; each lives in live/gateway/ with one job:
 *
 * | module | job |
 * |---|---|
 * | context.ts | the per-request context passed through every stage; unique run ids |
 * | request.ts | OpenAI body validation, the gateway's fields (knowledge_ids, RAG, Injection_type) |
 * | limits.ts | body size, JSON depth, n, prompts, max_tokens, prompt length vs max_model_len |
 * | knowledge.ts | knowledge lookup from the KDN (bounded cache), RAG retrieval |
 * | prompt.ts | text injection: the prompt with the documents in front, its token ids |
 * | booking.ts | engine decide/forced intent and the one book/unbook per attempt |
 * | kv-inject.ts | KV injection through the KDN, fallback to text |
 * | upstream.ts | backend calls (streamed, abortable), retry errors, relay to the client |
 * | records.ts | one record and one metric count per request; Prometheus; decision header |
 * | pipeline.ts | the OpenAI routes: the stages in order, the error handler |
 * | ops.ts | models, health, metrics, debug status/strategy |
| peers.ts | gateway replicas: the engine's bookkeeping on a shared Redis Stream op-log |
 *
 * Times are model ms = wall ms since start × `timeScale` (plus, with `append`, the end of the
 * run directory's earlier records, so an appended run continues its clock). Decisions travel
 * back in the `x-kvlab-decision` response header; records go to `out/records.jsonl`.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { Engine } from '../engine/engine.js';
import { createStrategy } from '../engine/strategies/index.js';
import { MetricsScraper } from './metrics-scraper.js';
import type { ClusterSpec, TraceRequest } from '../engine/types.js';
import { readClusterFile, resolveCluster, type ResolvedCluster } from '../sim/cluster.js';
import { hasRoles, PD_DEFAULTS } from '../engine/pd.js';
import { DEFAULT_PROFILE } from '../sim/profiles.js';
import { Backend, BlockHashMap, HealthMonitor, KvEventSubscriber, loadKvEventModules, type BackendOptions, type BackendSpec, type HealthOptions, type KvEventSource } from './backends.js';
import { acceptAnyJson, ApiError, badRequest, openAiClientErrorHandler } from './openai.js';
import { Recorder, writeConfig } from './recorder.js';
import { holdTokenizePool } from './tokenize-pool.js';
import { EngineBooking } from './gateway/booking.js';
import { RunIds, type RequestContext } from './gateway/context.js';
import { KnowledgeStore, sysIds } from './gateway/knowledge.js';
import { KvInjector } from './gateway/kv-inject.js';
import { resolveLimits, type GatewayLimits } from './gateway/limits.js';
import { registerOps } from './gateway/ops.js';
import { registerPipeline } from './gateway/pipeline.js';
import { GatewayRecords } from './gateway/records.js';
import { Upstream } from './gateway/upstream.js';
import { defaultReplicaId, PeerSync } from './gateway/peers.js';
import { BLEND_SEPARATOR } from './blend-layout.js';

export { forceIntent } from './gateway/booking.js';
export { KdnUnavailable, KnowledgeStore, words, type KnowledgeItem } from './gateway/knowledge.js';
export { DEFAULT_LIMITS, type GatewayLimits } from './gateway/limits.js';
export { buildChat, buildCompletion, questionOf, type BuiltPrompt } from './gateway/prompt.js';
export type { DecisionHeader } from './gateway/records.js';
export { normaliseInjectionType } from './gateway/request.js';

/** Options of {@link startGateway}. */
export interface GatewayOptions {
  /** listen address (default 127.0.0.1). */
  host?: string;
  /** listen port (default 7001, CacheRoute's scheduler port; 0 = any free port). */
  port?: number;
  /** the instances, in cluster order. */
  backends: BackendSpec[];
  /** KDN base URL (live/kdn.ts or CacheRoute's KDN); null/undefined = no knowledge service. */
  kdnUrl?: string | null;
  /** strategy name (engine/strategies) and parameters (checked by engine/strategies/params.ts). */
  strategy: string;
  strategyParams?: Record<string, unknown>;
  /** the engine's cluster model: a resolved cluster, or a cluster file path; default: `profile` × backends. */
  cluster?: ResolvedCluster | string;
  /** instance profile when no cluster is given (default rtx5090x8-llama3-70b). */
  profile?: string;
  /**
   * P/D roles of the instances in backend order, e.g. `1P1D` (engine/pd.ts `parseRoles`; overrides
   * a cluster file's). With roles the engine may disaggregate a request: prefill on a `prefill`
   * instance, decode on a `decode` one, driven as vLLM's disaggregated-serving proxy does
   * (gateway/pipeline.ts); the hand-off is modelled after the prefill, first token from D.
   */
  roles?: string;
  /** model ms per wall ms (match the emulators' --time-scale); default 1. */
  timeScale?: number;
  /** run directory for records.jsonl / summary.json / config.json; none when absent. */
  out?: string;
  /** append to the records of an existing run directory (default false: an existing one is refused). */
  append?: boolean;
  /** served model name; default: asked from the first backend's /v1/models. */
  model?: string;
  /** engine seed (default 1). */
  seed?: number;
  /** insert routed prefixes into the engine index at dispatch (default true). */
  predictOnRoute?: boolean;
  /**
   * online calibration of the engine's step model from the observed first-token and completion
   * times (engine/calibration.ts; default true: it is what makes predictions track real GPUs).
   */
  calibrate?: boolean;
  /** force the body's `Injection_type` (default true); false ignores it. */
  honorInjectionType?: boolean;
  /**
   * the application allows reordering a request's documents: they are sent in the engine's
   * canonical order (popular / already-dispatched sequences first, engine/doc-order.ts) unless the
   * body says `reorder_documents: false`. Default false.
   */
  reorderDocuments?: boolean;
  /**
   * LMCache `blend_special_str` of the instances the cluster file declares `blend` on (they run
   * LMCache with `enable_blending`; default live/blend-layout.ts `BLEND_SEPARATOR`). On them every
   * KV reuse is a blend: the documents go between separators and the KDN injects each one's
   * CacheBlend KV.
   */
  blendSeparator?: string;
  /** non-streaming client requests: `stream` (default: stream upstream, assemble, observe TTFT) or `direct`. */
  upstreamMode?: 'stream' | 'direct';
  /** output tokens assumed for a chat request without max_tokens (default 256, the emulator's default). */
  defaultChatMaxTokens?: number;
  /** send the `x-kvlab-decision` header (default true). */
  decisionHeader?: boolean;
  /** retry a request that failed before its first byte once elsewhere (default true). */
  retry?: boolean;
  /** request limits (gateway/limits.ts; defaults there). */
  limits?: Partial<GatewayLimits>;
  health?: HealthOptions;
  pool?: BackendOptions;
  /** catalogue refresh period for RAG retrieval, ms (default 30,000). */
  catalogueRefreshMs?: number;
  /**
   * vLLM KV-event sources, one per backend (same order; null = none): the engine's prefix index
   * then follows what the instances really store and evict (BlockStored / BlockRemoved /
   * AllBlocksCleared), on top of predict-on-route. Events of prefixes this gateway routed are
   * mapped to engine block ids through their vLLM hashes (sha256_cbor, `hashSeed`).
   */
  kvEvents?: Array<KvEventSource | null>;
  /** PYTHONHASHSEED of the instances (vLLM NONE_HASH seed), default "0". */
  hashSeed?: string;
  /** keep every routed engine request for `requests()` (default false; the demo re-simulates them). */
  keepRequests?: boolean;
  /** pino logging (fastify `logger`), default false. */
  logger?: boolean | object;
  /**
   * Gateway replicas: share engine bookkeeping with the other gateways on this Redis
   * (live/gateway/peers.ts): url redis://HOST:PORT/DB, this replica's id, heartbeat and the
   * silence after which a replica's bookings expire (wall ms).
   */
  peers?: { url: string; replicaId?: string; heartbeatMs?: number; timeoutMs?: number };
}

/** A running gateway. */
export interface GatewayHandle {
  url: string;
  host: string;
  port: number;
  app: FastifyInstance;
  engine: Engine;
  backends: Backend[];
  recorder: Recorder | null;
  /** op-log replication (null without `peers`). */
  peers: PeerSync | null;
  cluster: ResolvedCluster;
  timeScale: number;
  /** the limits in force (max_model_len resolved). */
  limits: GatewayLimits & { maxModelLen: number };
  /** Engine clock: model ms since the gateway started (plus the appended run's offset). */
  now(): number;
  /**
   * The engine requests routed so far (in arrival order; arrival in model ms since start), for
   * re-simulating exactly the same workload (live/demo.ts). Empty unless `keepRequests`.
   */
  requests(): TraceRequest[];
  /**
   * Fetches knowledge items from the KDN and tokenises their prefixes now (cold-start warm-up,
   * so the first requests do not pay for it). @throws like a request naming unknown kids.
   */
  prefetchKnowledge(kids: string[]): Promise<void>;
  /** Switches the strategy (as PUT /debug/strategy). @throws Error for unknown names/params (routing unchanged). */
  setStrategy(name: string, params?: Record<string, unknown>): void;
  /** Stops accepting, fails in-flight requests ("gateway shutting down"), writes summary.json. */
  close(): Promise<void>;
}

/** Resolves the engine's cluster: given, from a file, or `profile` × backends with KDN defaults. */
export function gatewayCluster(opts: Pick<GatewayOptions, 'cluster' | 'profile' | 'backends' | 'roles'>): ResolvedCluster {
  let rc: ResolvedCluster;
  if (opts.cluster && typeof opts.cluster === 'object') {
    if (opts.roles !== undefined) throw new Error('roles: give them in the resolved cluster, not beside it');
    rc = opts.cluster;
  } else {
    const file = typeof opts.cluster === 'string' ? readClusterFile(opts.cluster) : null;
    rc = resolveCluster(file, { profile: opts.profile, instances: file?.instances === undefined && opts.roles === undefined ? opts.backends.length : undefined, roles: opts.roles }, DEFAULT_PROFILE);
  }
  if (rc.spec.instances.length !== opts.backends.length) {
    throw new Error(`cluster: ${rc.spec.instances.length} instances but ${opts.backends.length} backends (--backends): they must match one to one`);
  }
  const ov = rc.spec.instances.find((s) => s.overlap);
  if (ov) throw new Error(`cluster: instance ${ov.id}: capabilities.overlap: no serving engine (vLLM + LMCache, kvlab's emulator) computes the head of a prompt while loading the KV of its tail; overlap is a simulator capability`);
  return { ...rc, spec: livePd(rc.spec) };
}

/**
 * The P/D hand-off as the gateway drives it: after the prefill (not layer-wise), the client's
 * first token from D (vLLM's disaggregated-serving proxy discards P's one token), so the engine
 * predicts what the gateway observes. `pd.firstToken` is therefore always `decode` live.
 * @throws Error for `pd.layerwise: true`, which the gateway cannot drive
 */
export function livePd(spec: ClusterSpec): ClusterSpec {
  if (!hasRoles(spec.instances)) return spec;
  const pd = spec.pd ?? PD_DEFAULTS;
  if (pd.layerwise) throw new Error("cluster: pd.layerwise: the live gateway hands the KV off after the prefill (vLLM's disaggregated serving); set pd.layerwise: false");
  return { ...spec, pd: { ...pd, layerwise: false, firstToken: 'decode' } };
}

/** Starts the gateway; resolves once it listens. @throws Error for bad options (named). */
export async function startGateway(opts: GatewayOptions): Promise<GatewayHandle> {
  const ts = opts.timeScale ?? 1;
  if (!(ts > 0) || !Number.isFinite(ts)) throw new Error(`timeScale must be a finite number > 0 (got ${opts.timeScale})`);
  const limits = resolveLimits(opts.limits);
  const rc = gatewayCluster(opts);
  const cluster: ClusterSpec = rc.spec;
  const ids = cluster.instances.map((s) => s.id);
  const kdnIds = cluster.kdns.map((k) => k.id);
  const blockSize = cluster.instances[0]!.engine.blockSizeTokens;
  let strategyName = opts.strategy;
  let strategyParams = { ...(rc.strategyParams[opts.strategy] ?? {}), ...(opts.strategyParams ?? {}) };
  const engine = new Engine(cluster, createStrategy(strategyName, strategyParams), { seed: opts.seed ?? 1, predictOnRoute: opts.predictOnRoute, calibrate: opts.calibrate ?? true, reorderDocuments: !!opts.reorderDocuments });
  const backends = opts.backends.map((s, i) => new Backend({ ...s, id: ids[i]! }, i, opts.pool));
  const kdnUrl = opts.kdnUrl ? opts.kdnUrl.replace(/\/+$/, '') : null;
  const store = new KnowledgeStore(kdnUrl, { refreshMs: opts.catalogueRefreshMs });
  // gateway replicas number their requests under their own replica id (ids unique at the backends)
  const replicaId = opts.peers ? (opts.peers.replicaId ?? defaultReplicaId()) : null;
  const runIds = new RunIds(replicaId ? `gw-${replicaId.replace(/[^\w.-]/g, '_')}` : 'gw');

  // records (not kept in memory: a gateway runs long; close() reads the file back for the summary)
  const recorder = opts.out
    ? new Recorder(opts.out, { keep: false, append: opts.append ?? false, meta: { strategy: strategyName, instances: ids.length, profile: cluster.instances[0]!.profile.name, time_scale: ts, backends: backends.map((b) => b.url), kdn: kdnUrl } })
    : null;
  if (recorder) runIds.reserve(recorder.existingIds);
  const t0 = performance.now();
  const offset = recorder?.resumeAtMs ?? 0;
  const now = (): number => offset + (performance.now() - t0) * ts;
  if (opts.out) {
    writeConfig(
      opts.out,
      {
        source: 'live',
        strategy: strategyName,
        strategy_params: strategyParams,
        seed: opts.seed ?? 1,
        time_scale: ts,
        kdn: kdnUrl,
        limits,
        backends: backends.map((b) => ({ id: b.spec.id, url: b.url, lmcache_redis: b.spec.lmcacheRedis ? { ...b.spec.lmcacheRedis, password: undefined } : null })),
        cluster: {
          instances: cluster.instances.map((s) => ({ id: s.id, profile: s.profile.name, ...(s.role ? { role: s.role } : {}), engine: { ...s.engine, kvCapacityTokens: Number.isFinite(s.engine.kvCapacityTokens) ? s.engine.kvCapacityTokens : 'inf' } })),
          ...(cluster.pd ? { pd: cluster.pd } : {}),
          kdns: cluster.kdns.map((k) => ({ id: k.id, compression: k.compression, text_fetch_ms: k.textFetchMs })),
          links: cluster.links,
          chunk_tokens: cluster.chunkTokens,
        },
        ...(offset > 0 ? { appended_at_ms: offset } : {}),
      },
      { keepPrevious: opts.append ?? false },
    );
  }

  const booking = new EngineBooking(engine, now, opts.honorInjectionType ?? true);
  const records = new GatewayRecords(recorder, booking, ids, kdnIds, now);
  records.engineGauges(engine);
  // gateway replicas: catch up on the op-log before serving
  const peers = opts.peers ? new PeerSync({ ...opts.peers, replicaId: replicaId!, engine, now, registry: records.registry, log: (m) => process.stderr.write(m + '\n') }) : null;
  if (peers) {
    await peers.start();
    booking.peers = peers;
  }
  const inflight = new Map<string, RequestContext>();
  let closing = false;

  // ---- served model and context length
  let served: string | null = opts.model ?? null;
  let modelsBody: unknown = null;
  let backendMaxLen: number | null = null;
  const fetchModels = async (): Promise<void> => {
    for (const b of backends) {
      try {
        const r = await b.get('/v1/models', 2000);
        if (r.status !== 200) continue;
        const j = JSON.parse(r.text) as { data?: Array<{ id: string; max_model_len?: number }> };
        modelsBody = j;
        served ??= j.data?.[0]?.id ?? null;
        const m = j.data?.[0]?.max_model_len;
        if (typeof m === 'number' && Number.isSafeInteger(m) && m > 0) backendMaxLen = m;
        return;
      } catch {
        /* try the next one */
      }
    }
  };
  const clusterMaxLen = Math.min(...cluster.instances.map((s) => s.engine.maxModelLen));
  const maxModelLen = (): number => limits.maxModelLen ?? backendMaxLen ?? clusterMaxLen;

  // ---- health: an instance that goes down takes its in-flight attempts with it
  const health = new HealthMonitor(
    backends,
    (b, reason) => {
      for (const c of inflight.values()) {
        // the instance the attempt is talking to (P during a prefill, D while D streams), else its prefill instance
        if (c.booked && c.d && (c.upstreamAt >= 0 ? c.upstreamAt : c.d.instance) === b.index) {
          c.instanceLost = reason;
          c.attempt?.abort(new Error(`instance down: ${reason}`));
        }
      }
      const lost = engine.onInstanceDown(b.index, now());
      app.log.warn(`instance ${b.spec.id} (${b.url}) down: ${reason}; released ${lost.length} booked requests`);
    },
    (b) => {
      engine.onInstanceUp(b.index);
      app.log.info(`instance ${b.spec.id} (${b.url}) up again`);
    },
    opts.health,
  );

  // ---- KV events
  const kvSources = opts.kvEvents ?? [];
  if (kvSources.length && kvSources.length !== backends.length) throw new Error(`kvEvents: ${kvSources.length} sources for ${backends.length} backends (one per backend, null for none)`);
  let hashMap: BlockHashMap | null = null;
  const subscribers: KvEventSubscriber[] = [];
  if (kvSources.some(Boolean)) {
    await loadKvEventModules();
    hashMap = new BlockHashMap(blockSize, opts.hashSeed ?? '0');
    const hm = hashMap;
    kvSources.forEach((src, i) => {
      if (!src) return;
      subscribers.push(
        new KvEventSubscriber(
          i,
          src,
          (batch) => {
            for (const ev of batch.events) {
              if (ev.type === 'AllBlocksCleared') {
                engine.onKvEvent({ instance: i, kind: 'cleared', blocks: [] });
                peers?.kvEvent({ instance: i, kind: 'cleared', blocks: [] });
              } else {
                const blocks = hm.lookup(ev.blockHashes);
                if (blocks.length) {
                  const medium = engineMedium(ev.medium);
                  const e = { instance: i, kind: ev.type === 'BlockStored' ? ('stored' as const) : ('removed' as const), blocks, ...(medium ? { medium } : {}) };
                  engine.onKvEvent(e);
                  peers?.kvEvent(e);
                }
              }
            }
          },
          (lost) => {
            // lost batches: this instance's index can no longer be trusted
            engine.onKvEvent({ instance: i, kind: 'cleared', blocks: [] });
            app.log.warn(`instance ${ids[i]}: ${lost} KV-event batches lost; its prefix index was cleared`);
          },
        ),
      );
    });
  }
  records.kvEventGauge(subscribers);

  // ---- app
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: limits.maxBodyBytes,
    forceCloseConnections: true,
    clientErrorHandler: openAiClientErrorHandler((status) => records.clientErrors.inc({ status: String(status) })),
  });
  acceptAnyJson(app, (message) => badRequest(message, null), { maxDepth: limits.maxJsonDepth });
  app.setNotFoundHandler((_req, reply) => void reply.status(404).type('application/json').send(new ApiError(404, 'Not Found', 'NotFoundError').body()));

  const keepRequests = opts.keepRequests ?? false;
  const routed: TraceRequest[] = [];
  registerPipeline(app, {
    engine,
    backends,
    booking,
    records,
    store,
    injector: new KvInjector(kdnUrl, backends, booking, records, ids, kdnIds, now, ts, () => served),
    upstream: new Upstream(backends, health, records, ids, now, opts.decisionHeader ?? true),
    health,
    ids: runIds,
    limits,
    inflight,
    now,
    maxModelLen,
    servedModel: async () => {
      if (served === null) await fetchModels();
      return served;
    },
    blockSize,
    upstreamMode: opts.upstreamMode ?? 'stream',
    chatDefaultMaxTokens: opts.defaultChatMaxTokens ?? 256,
    reorderDocuments: !!opts.reorderDocuments,
    blendSeparator: rc.spec.instances.some((s) => s.blend) ? (opts.blendSeparator ?? BLEND_SEPARATOR) : null,
    retry: opts.retry ?? true,
    routed: keepRequests ? routed : null,
    hashMap,
    closing: () => closing,
  });

  const setStrategy = (name: string, params: Record<string, unknown> = {}): void => {
    const s = createStrategy(name, params); // throws before anything changes
    engine.strategy = s;
    strategyName = name;
    strategyParams = params;
    if (recorder) recorder.meta.strategy = name;
  };
  registerOps(app, {
    engine,
    backends,
    records,
    recorder,
    store,
    subscribers,
    kdnUrl,
    timeScale: ts,
    now,
    inflight: () => inflight.size,
    routed: () => runIds.count,
    closing: () => closing,
    model: () => served,
    models: async () => {
      if (modelsBody === null) await fetchModels();
      return modelsBody;
    },
    strategy: () => ({ name: strategyName, params: strategyParams }),
    setStrategy,
    peers: () => peers?.status() ?? null,
    log: (m) => app.log.info(m),
  });

  const releasePool = holdTokenizePool();
  const host = opts.host ?? '127.0.0.1';
  try {
    await app.listen({ host, port: opts.port ?? 7001 });
  } catch (e) {
    await releasePool();
    await peers?.close();
    recorder?.close({ strategy: strategyName });
    throw e;
  }
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : (opts.port ?? 7001);
  if (served === null || modelsBody === null) await fetchModels();
  health.start();
  // engine metrics for strategies that score on them (llm-d); idle otherwise
  const scraper = new MetricsScraper(backends, () => engine.strategy.metricsIntervalMs, (i, m) => engine.onInstanceMetrics(i, { ...m, at: now() }), ts);
  scraper.start();
  for (const sub of subscribers) await sub.start();

  let closed: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closed ??= (async () => {
      closing = true;
      health.stop();
      scraper.stop();
      await peers?.close();
      for (const sub of subscribers) sub.close();
      for (const f of inflight.values()) {
        f.killed = 'gateway shutting down';
        f.abort.abort(new Error('gateway shutting down'));
      }
      // let the aborted handlers write their failed records
      for (let i = 0; i < 50 && inflight.size > 0; i++) await new Promise((r) => setTimeout(r, 10));
      for (const f of [...inflight.values()]) {
        records.finish(f, 'failed', 'gateway shutting down');
        inflight.delete(f.id);
      }
      recorder?.close({ strategy: strategyName, wall_ms: Math.round(performance.now() - t0) });
      await app.close();
      await Promise.all(backends.map((b) => b.close()));
      await releasePool();
    })());

  return {
    url: `http://${host}:${port}`,
    host,
    port,
    app,
    engine,
    backends,
    recorder,
    peers,
    cluster: rc,
    timeScale: ts,
    get limits() {
      return { ...limits, maxModelLen: maxModelLen() };
    },
    now,
    requests: () => routed.slice(),
    prefetchKnowledge: async (kids: string[]) => {
      for (const it of await store.get(kids)) if (it.format === 'chat-system') await sysIds(it);
    },
    setStrategy,
    close,
  };
}

/**
 * The engine's tier of a vLLM KV event `medium` ("GPU" or nil: the device cache; "CPU": vLLM's
 * offloading connector's host tier; anything else, e.g. a disk or remote store: the remote tier).
 * @returns undefined for the GPU (the engine's default)
 */
function engineMedium(medium: string | null | undefined): 'CPU' | 'REMOTE' | undefined {
  if (medium === null || medium === undefined) return undefined;
  const m = medium.toUpperCase();
  if (m === 'GPU' || m === 'CUDA' || m === 'DEVICE') return undefined;
  return m === 'CPU' || m === 'HOST' || m === 'HOST_PINNED' ? 'CPU' : 'REMOTE';
}
