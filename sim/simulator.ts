/**
 * The discrete-event simulator: replays requests through the policy engine and one
 * InstanceCore per instance on a virtual clock (ms).
 *
 * Per request: arrival -> engine.decide + onDispatch -> knowledge preparation (text fetch, or
 * KV transfer on the FIFO link KDN->instance) -> API frontend (FIFO, `frontendMsPerRequest`) ->
 * engine core (vLLM V1 scheduling) -> first token / completion, fed back to the engine.
 * KV events (stored/removed) reach the engine after `kvEventDelayMs`.
 *
 * Disaggregated requests (the decision names a decode instance D, engine/pd.ts): the prefill
 * runs on P as a request of one output token; when it ends, the prompt's KV moves P -> D on the
 * P/D link (FIFO per pair; after the prefill, or layer-wise during it: `ClusterSpec.pd`), then
 * the request joins D's engine core with the transferred prompt as loaded KV (no LMCache load: it
 * lands in GPU memory) and decodes there. With `pd.firstToken` = `prefill` the client sees P's
 * token first and D generates the rest (D's first step computes the first token's KV, so the
 * first token gap = hand-off + D's queue + one step); with `decode` (vLLM's proxy) P's token is
 * dropped, the request reaches D through its API frontend after P's response, and D recomputes
 * the last prompt token and streams every token (TTFT includes the hand-off).
 * Output is a function of (cluster, requests, strategy, seed): no wall clock is read.
 */
import { Engine, PEER_LINK_DEFAULT, type DispatchOp, type Strategy } from '../engine/engine.js';
import { kvLoadMs, kvWireBytes, transferMs } from '../engine/costmodel.js';
import { BLEND_DEFAULTS, INTENTS, type ClusterSpec, type Intent, type KvMedium, type TraceRequest } from '../engine/types.js';
import { reorderRequest } from '../traces/blocks.js';
import { blendSpans, spanTokensFrom } from '../engine/knowledge.js';
import { hasRoles, PD_DEFAULTS, pdBytes, pdTransferWindow } from '../engine/pd.js';
import { DecisionStore } from './decision-store.js';
import { EventQueue } from './events.js';
import { InstanceCore, type CoreRequest } from './instance.js';
import { TokenGaps } from './tbt.js';

const EV_READY = 0; // knowledge prepared: go through the frontend (a = request)
const EV_CORE = 1; // request reaches the engine core (a = request)
const EV_STEP = 2; // step/run end (a = instance, b = generation)
const EV_KV = 3; // KV events delivered to the engine (a = batch id)
const EV_XFER = 4; // KV transfer ACK (a = request)
const EV_SCRAPE = 5; // engine metrics scrape of every instance (for strategies that read metrics)
const EV_SEND = 6; // the client has seen a request end: its concurrency slot frees (maxConcurrency)
const EV_OP = 7; // a router replica's op-log entry reaches the other replicas (a = op id)
const EV_PD = 9; // P -> D hand-off done: the request joins its decode instance (a = request)

// op-log entry kinds (router replicas)
const OP_DISPATCH = 0;
const OP_XFER = 1;
const OP_FIRST = 2;
const OP_DONE = 3;
const OP_ABORT = 4;
const EV_TAIL = 8; // overlap: the tail's KV is retrieved into the instance (a = request)
const OP_PD = 5;

/** Status codes of a simulated request. */
export const ST_PENDING = 0;
/** Completed. */
export const ST_OK = 1;
/** Rejected: by the instance (longer than max_model_len or than its KV memory) or by the strategy's admission control. */
export const ST_REJECTED = 2;

/** Simulator options. */
export interface SimOptions {
  cluster: ClusterSpec;
  strategy: Strategy;
  seed?: number;
  /** coefficient of variation of multiplicative step-time noise (0 = none). */
  stepNoiseCv?: number;
  /** called about every `progressEvery` requests dispatched. */
  onProgress?: (dispatched: number, total: number) => void;
  progressEvery?: number;
  /** timeseries bucket (ms); default: span / 120 rounded up to a second. */
  bucketMs?: number;
  /** engine predict-on-route (default true). */
  predictOnRoute?: boolean;
  /**
   * Client-side cap on requests in flight (vllm bench serve --max-concurrency): a request that
   * arrives while this many are unfinished waits (FIFO) and is sent, and timed, when one
   * completes or is rejected. Default: no cap.
   */
  maxConcurrency?: number;
  /**
   * The engine's model of the cluster when it differs from the truth the instances run on
   * (`--engine-profile`, `--engine-scale`): same instances, links and KDNs, other profiles.
   */
  engineCluster?: ClusterSpec;
  /** online calibration of the engine's step model (engine/calibration.ts). */
  calibrate?: boolean;
  /**
   * The application allows reordering a request's documents: each multi-document request is
   * rebuilt in the engine's canonical order (`Engine.documentOrder`) before it is decided (with
   * replicas: the deciding replica's tree). The outcome's `requests` hold the requests as sent.
   * Default false.
   */
  reorderDocuments?: boolean;
  /** several router replicas behind a load balancer (default: one router). */
  replicas?: ReplicaOptions;
}

/**
 * Router replicas: R engines, each request decided and booked by one of them (picked by the load
 * balancer in front of them); each replica's bookkeeping (dispatch with what it booked, KV
 * transfer done, first token, completion, abort) reaches the others as an op-log entry after
 * `syncMs`, in order (RadixMesh's replicated op-log; SGLang gateway replicas with a shared index).
 * KV events go to every replica directly (each router subscribes to the instances' event stream,
 * as Dynamo's and SGLang's routers do), after the cluster's `kvEventDelayMs`.
 */
export interface ReplicaOptions {
  /** strategy instances of replicas 1..R-1 (replica 0 uses `SimOptions.strategy`): R = 1 + length. */
  strategies: Strategy[];
  /** ms until one replica's entries reach the others; null = never (independent replicas, no sync). */
  syncMs: number | null;
  /** load balancer: round-robin over arrivals, or a seeded hash of the request id. Default round-robin. */
  pick?: 'round-robin' | 'hash';
}

/** Per-request results, in request order (typed arrays; -1 = did not happen). */
export interface SimOutcome {
  /** the requests as sent (documents in their canonical order with `reorderDocuments`). */
  requests: TraceRequest[];
  /** the engine's decision per request (compact; `decisions.get(r)` rebuilds one). */
  decisions: DecisionStore;
  status: Uint8Array;
  /** times (ms, absolute virtual): */
  readyAt: Float64Array;
  coreAt: Float64Array;
  firstSchedAt: Float64Array;
  firstTokenAt: Float64Array;
  doneAt: Float64Array;
  /** durations (ms): */
  prepareMs: Float64Array;
  linkWaitMs: Float64Array;
  transferMs: Float64Array;
  kvLoadMs: Float64Array;
  /** tokens: */
  hitTokens: Float64Array;
  loadTokens: Float64Array;
  transferTokens: Float64Array;
  preemptions: Uint16Array;
  /** Mooncake TBT per request (ms): mean of its longest 10% token gaps; -1 = no gap / not completed. */
  tbtMs: Float64Array;
  /** bytes moved on KDN links, total. */
  kvBytesMoved: number;
  /** bytes moved instance -> instance (peer transfers, Mooncake), total. */
  peerBytesMoved: number;
  /** requests rejected by the strategy's admission control (status ST_REJECTED, decision.rejected set). */
  admissionRejected: number;
  /** per instance: busy ms, steps, evicted blocks, preemptions (and tier evictions, with tiers). */
  instances: { id: string; busyMs: number; steps: number; evictions: number; preemptions: number; cpuEvictions?: number; remoteEvictions?: number }[];
  /** link busy intervals for utilisation charts: [kdn, instance, start, end, waitMs]. */
  transfers: Float64Array[];
  /** engine load samples at arrivals: per request, booked prefill tokens and running count of its instance. */
  bookedPrefillAtArrival: Float64Array;
  runningAtArrival: Float64Array;
  endMs: number;
  events: number;
  /** router replicas (absent with one router): count, sync delay (ms, null = none), op-log entries sent. */
  replicas?: { count: number; syncMs: number | null; ops: number };
  apiMs: number[];
  /** the engine's calibrated step factors at the end (1, 1 without calibration). */
  stepFactors: { prefill: number; decode: number };
  /** P/D hand-offs (only when the cluster has instance roles). */
  pd?: PdOutcome;
  /** instance roles (only when the cluster has some). */
  roles?: string[];
  /** KV tier hits per request (only when some instance has a tier below the GPU): tokens loaded from CPU / remote at first admission. */
  tiers?: { cpuTokens: Float64Array; remoteTokens: Float64Array };
}

/**
 * Per-request P/D hand-off results (request order; decode -1 = colocated). Times are absolute
 * virtual ms; `prefillDoneAt` is P's first token.
 */
export interface PdOutcome {
  firstToken: 'prefill' | 'decode';
  decode: Int32Array;
  prefillDoneAt: Float64Array;
  /** the transfer could start (prefill end, or layer-wise prefill start; + P's response and D's frontend with firstToken decode). */
  readyAt: Float64Array;
  start: Float64Array;
  end: Float64Array;
  bytes: Float64Array;
  /** P -> D bytes in total. */
  bytesMoved: number;
}

/**
 * Runs the simulation to completion.
 * @param input requests sorted by arrivalMs (ties keep order); ids must be unique
 * @throws Error when ids repeat or arrivals are not sorted
 */
export function simulate(input: TraceRequest[], opts: SimOptions): SimOutcome {
  const cluster = opts.cluster;
  const maxConc = opts.maxConcurrency ?? Infinity;
  if (!(maxConc >= 1)) throw new RangeError(`simulate: maxConcurrency must be >= 1 (got ${maxConc})`);
  // with a client concurrency cap, deferred requests are re-timed to their send time: work on a copy
  // (reordering documents rebuilds requests too)
  const requests = maxConc < Infinity || opts.reorderDocuments ? input.slice() : input;
  let inflight = 0;
  const deferred: number[] = [];
  let dHead = 0;
  const N = requests.length;
  const nI = cluster.instances.length;
  const engineCluster = opts.engineCluster ?? cluster;
  if (engineCluster.instances.length !== cluster.instances.length) throw new Error(`engine cluster has ${engineCluster.instances.length} instances, the cluster ${cluster.instances.length}`);
  const engine = new Engine(engineCluster, opts.strategy, { seed: opts.seed ?? 1, predictOnRoute: opts.predictOnRoute, calibrate: opts.calibrate, reorderDocuments: opts.reorderDocuments });
  // router replicas: engines[0] is `engine`; the others get their own strategy object and seed
  const reps = opts.replicas;
  const engines = [engine, ...(reps?.strategies ?? []).map((st, k) => new Engine(engineCluster, st, { seed: replicaSeed(opts.seed ?? 1, k + 1), predictOnRoute: opts.predictOnRoute, calibrate: opts.calibrate, reorderDocuments: opts.reorderDocuments }))];
  const R = engines.length;
  const syncMs = reps?.syncMs ?? null;
  if (syncMs !== null && !(syncMs >= 0)) throw new Error(`replica sync delay must be >= 0 ms or none, got ${syncMs}`);
  const pickHash = reps?.pick === 'hash';
  /** replica that decided request r (its proxy streams the answer, so it learns at once). */
  const ownerOf = R > 1 ? new Uint16Array(requests.length) : null;
  const opKind: number[] = [];
  const opReq: number[] = [];
  const opDispatch: (DispatchOp | undefined)[] = [];
  let replicaOps = 0;
  const q = new EventQueue();
  const seed = (opts.seed ?? 1) >>> 0;
  const cv = opts.stepNoiseCv ?? 0;
  const idToIdx = new Map<string, number>();
  for (let r = 0; r < N; r++) {
    const req = requests[r]!;
    if (idToIdx.has(req.id)) throw new Error(`duplicate request id "${req.id}"`);
    idToIdx.set(req.id, r);
    if (r > 0 && req.arrivalMs < requests[r - 1]!.arrivalMs) throw new Error(`requests must be sorted by arrival (request ${req.id})`);
  }
  const applyOp = (j: number, kind: number, r: number, op: DispatchOp | undefined, t: number) => {
    const e = engines[j]!;
    const id = requests[r]!.id;
    if (kind === OP_DISPATCH) e.applyRemoteDispatch(op!, t);
    else if (kind === OP_XFER) e.onKvTransferDone(id, t);
    else if (kind === OP_FIRST) e.onFirstToken(id, t);
    else if (kind === OP_DONE) e.onComplete(id, t, requests[r]!.outputTokens);
    else if (kind === OP_PD) e.onPdTransferDone(id, t);
    else e.onAbort(id, t);
  };
  /** Replica bookkeeping of request r: its owner at once, the others after syncMs (or never). */
  const book = (kind: number, r: number, t: number, op?: DispatchOp) => {
    if (R === 1 || syncMs === null) return;
    const origin = ownerOf![r]!;
    replicaOps++;
    if (syncMs === 0) {
      for (let j = 0; j < R; j++) if (j !== origin) applyOp(j, kind, r, op, t);
      return;
    }
    opKind.push(kind);
    opReq.push(r);
    opDispatch.push(op);
    q.push(t + syncMs, EV_OP, opKind.length - 1, 0);
  };
  const ownerEngine = (r: number): Engine => (ownerOf === null ? engine : engines[ownerOf[r]!]!);
  // KV event plumbing: per-instance buffers flushed after each step start/finish
  const kvBuf: { kind: 'stored' | 'removed' | 'cleared'; blocks: number[]; medium?: KvMedium }[][] = Array.from({ length: nI }, () => []);
  const kvBatches: { instance: number; items: { kind: 'stored' | 'removed' | 'cleared'; blocks: number[]; medium?: KvMedium }[] }[] = [];
  const gaps = new TokenGaps(requests.map((r) => r.outputTokens));
  const onTokens = (tag: number, t0: number, ends: Float64Array | null, k: number) => gaps.tokens(tag, t0, ends, k);
  const cores = cluster.instances.map(
    (spec, i) =>
      new InstanceCore(spec, {
        keepDone: true,
        reportTokens: false,
        reuseEvents: true,
        onTokens,
        onKvEvent: (kind, blocks, medium) => {
          const buf = kvBuf[i]!;
          const last = buf[buf.length - 1];
          if (last && last.kind === kind && last.medium === medium && kind !== 'cleared') for (const b of blocks) last.blocks.push(b);
          else buf.push(medium === undefined ? { kind, blocks: blocks.slice() } : { kind, blocks: blocks.slice(), medium });
        },
        noise: cv > 0 ? (step) => noiseFactor(seed, i, step, cv) : undefined,
      }),
  );
  const delay = cluster.kvEventDelayMs;
  const flushKv = (i: number, t: number) => {
    const buf = kvBuf[i]!;
    if (buf.length === 0) return;
    kvBuf[i] = [];
    if (delay <= 0) {
      for (const e of buf) for (let j = 0; j < R; j++) engines[j]!.onKvEvent({ instance: i, kind: e.kind, blocks: e.blocks, medium: e.medium });
    } else {
      kvBatches.push({ instance: i, items: buf });
      q.push(t + delay, EV_KV, kvBatches.length - 1, 0);
    }
  };
  const gen = new Float64Array(nI);
  const frontendFree = new Float64Array(nI);
  const linkFree = cluster.kdns.map(() => new Float64Array(nI));
  const transfers = cluster.kdns.map(() => [] as number[]);

  const out: SimOutcome = {
    requests,
    decisions: new DecisionStore(N),
    status: new Uint8Array(N),
    readyAt: new Float64Array(N).fill(-1),
    coreAt: new Float64Array(N).fill(-1),
    firstSchedAt: new Float64Array(N).fill(-1),
    firstTokenAt: new Float64Array(N).fill(-1),
    doneAt: new Float64Array(N).fill(-1),
    prepareMs: new Float64Array(N),
    linkWaitMs: new Float64Array(N),
    transferMs: new Float64Array(N),
    kvLoadMs: new Float64Array(N),
    hitTokens: new Float64Array(N),
    loadTokens: new Float64Array(N),
    transferTokens: new Float64Array(N),
    preemptions: new Uint16Array(N),
    tbtMs: new Float64Array(N).fill(-1),
    kvBytesMoved: 0,
    peerBytesMoved: 0,
    admissionRejected: 0,
    instances: [],
    transfers: [],
    bookedPrefillAtArrival: new Float64Array(N),
    runningAtArrival: new Float64Array(N),
    endMs: 0,
    events: 0,
    apiMs: cluster.instances.map((s) => s.profile.step.apiMs),
    stepFactors: { prefill: 1, decode: 1 },
  };
  const instOf = new Int32Array(N).fill(-1);
  /** overlap tail per request: 0 none, 1 on the link, 2 arrived. */
  const tailState = new Uint8Array(N);
  // P/D: decode instance per request (-1 colocated), hand-off times; P -> D link FIFO per pair
  const roles = hasRoles(cluster.instances);
  const pdSpec = cluster.pd ?? PD_DEFAULTS;
  const decOf = new Int32Array(roles ? N : 0).fill(-1);
  const pdFree = new Map<number, number>();
  if (roles) {
    out.roles = cluster.instances.map((s) => s.role ?? 'mixed');
    out.pd = {
      firstToken: pdSpec.firstToken,
      decode: decOf,
      prefillDoneAt: new Float64Array(N).fill(-1),
      readyAt: new Float64Array(N).fill(-1),
      start: new Float64Array(N).fill(-1),
      end: new Float64Array(N).fill(-1),
      bytes: new Float64Array(N),
      bytesMoved: 0,
    };
  }
  const pdOut = out.pd;
  if (cluster.instances.some((s) => s.tiers && (s.tiers.cpuTokens > 0 || s.tiers.remoteTokens > 0))) out.tiers = { cpuTokens: new Float64Array(N), remoteTokens: new Float64Array(N) };
  const tierOut = out.tiers;
  /** true when request r is disaggregated and `i` is its prefill instance. */
  const onPrefill = (r: number, i: number) => roles && decOf[r]! >= 0 && instOf[r] === i;
  /** P finished the prefill of disaggregated request r at t: reserve the P -> D link, schedule the hand-off. */
  const handOff = (r: number, t: number, prefillStart: number) => {
    const req = requests[r]!;
    const P = instOf[r]!;
    const D = decOf[r]!;
    const pi = cluster.instances[P]!;
    const bytes = pdBytes(pi, req.inputTokens);
    // vLLM's proxy: P answers the gateway, which sends the request to D's API server; D pulls the KV
    const ready = pdSpec.firstToken === 'decode' ? t + pi.profile.step.apiMs + cluster.instances[D]!.profile.step.frontendMsPerRequest : t;
    const key = P * nI + D;
    const free = pdFree.get(key) ?? -Infinity;
    const [start, end] = pdSpec.firstToken === 'decode' ? pdTransferWindow(bytes, { ...pdSpec, layerwise: false }, pi.profile.model.layers, ready, ready, free) : pdTransferWindow(bytes, pdSpec, pi.profile.model.layers, prefillStart, t, free);
    pdFree.set(key, end - (bytes > 0 ? pdSpec.link.latencyMs : 0));
    pdOut!.prefillDoneAt[r] = t;
    pdOut!.readyAt[r] = pdSpec.layerwise && pdSpec.firstToken === 'prefill' ? prefillStart : ready;
    pdOut!.start[r] = start;
    pdOut!.end[r] = end;
    pdOut!.bytes[r] = bytes;
    pdOut!.bytesMoved += bytes;
    q.push(end, EV_PD, r, 0);
  };

  const startRun = (i: number, t: number) => {
    const core = cores[i]!;
    const d = core.startRun(t, Infinity);
    flushKv(i, t);
    if (d < 0) return;
    gen[i]!++;
    q.push(t + d, EV_STEP, i, gen[i]!);
  };

  const peerLink = cluster.peerLink ?? PEER_LINK_DEFAULT;
  const peerFree = Array.from({ length: nI }, () => new Float64Array(nI));
  const loadOverride = new Float64Array(N).fill(-1);
  /** peer-transfer tokens the source really held at dispatch (-1 = no peer transfer). */
  const peerHeld = new Float64Array(N).fill(-1);

  const sendToFrontend = (r: number, t: number) => {
    const i = instOf[r]!;
    const fe = cluster.instances[i]!.profile.step.frontendMsPerRequest;
    const at = Math.max(t, frontendFree[i]!) + fe;
    frontendFree[i] = at;
    q.push(at, EV_CORE, r, 0);
  };
  // knowledge prepared: forward to the instance, unless the strategy's proxy queue holds it
  const toFrontend = (r: number, t: number) => {
    out.readyAt[r] = t;
    if (ownerEngine(r).forward(requests[r]!.id, t)) sendToFrontend(r, t);
  };
  const sendReleased = (t: number) => {
    for (let j = 0; j < R; j++) for (const id of engines[j]!.takeReleased()) sendToFrontend(idToIdx.get(id)!, t);
  };
  /**
   * Hands request `r` (as `cr`) to instance `i`'s core at `t` (ms). A core that refuses it (KV or
   * context too small) rejects the request: the engine unbooks it and any request its proxy queue
   * held is released. Otherwise an idle core starts a run and a busy one truncates its current run
   * so the newcomer joins at the next step.
   */
  const admit = (i: number, r: number, cr: CoreRequest, t: number) => {
    const core = cores[i]!;
    if (!core.add(cr, t)) {
      out.status[r] = ST_REJECTED;
      ownerEngine(r).onAbort(requests[r]!.id, t);
      if (ownerOf !== null) book(OP_ABORT, r, t);
      sendReleased(t);
      if (maxConc < Infinity) q.push(t, EV_SEND, r, 0);
      return;
    }
    if (!core.busy) startRun(i, t);
    else {
      const end = core.truncateRun(t);
      if (end >= 0) {
        gen[i]!++;
        q.push(end, EV_STEP, i, gen[i]!);
      }
    }
  };
  const scrapeMs = opts.strategy.metricsIntervalMs;
  const scrape = (t: number) => {
    for (let i = 0; i < nI; i++) {
      const c = cores[i]!;
      const l = c.load;
      const m = { waiting: l.waiting, running: l.running, kvUsage: c.kv.usage(), at: t };
      for (let j = 0; j < R; j++) engines[j]!.onInstanceMetrics(i, m);
    }
  };
  if (scrapeMs !== undefined && scrapeMs > 0 && N > 0) {
    scrape(requests[0]!.arrivalMs);
    q.push(requests[0]!.arrivalMs + scrapeMs, EV_SCRAPE, 0, 0);
  }

  const progressEvery = opts.progressEvery ?? 2000;
  /** Decides and dispatches request r at time t (its arrival, or when a client slot frees). */
  const dispatch = (r: number, t: number): void => {
    let req = requests[r]!;
    let eng = engine;
    if (ownerOf !== null) {
      const k = pickHash ? hashPick(req.id, seed, R) : r % R;
      ownerOf[r] = k;
      eng = engines[k]!;
    }
    const order = eng.documentOrder(req);
    if (order) requests[r] = req = reorderRequest(req, order);
    const d = eng.decide(req, t);
    out.decisions.set(r, d);
    const i = d.instance;
    instOf[r] = i;
    if (roles && d.decode !== undefined && !d.rejected) decOf[r] = d.decode;
    if (d.rejected) {
      // admission control (Mooncake-style early rejection): never dispatched
      out.status[r] = ST_REJECTED;
      out.admissionRejected++;
      if (opts.onProgress && r % progressEvery === 0) opts.onProgress(r, N);
      if (maxConc < Infinity) q.push(t, EV_SEND, r, 0);
      return;
    }
    eng.onDispatch(req, d, t);
    if (ownerOf !== null) book(OP_DISPATCH, r, t, eng.dispatchOp(req, d));
    const l = eng.loads.loads[i]!;
    out.bookedPrefillAtArrival[r] = l.prefillTokens;
    out.runningAtArrival[r] = cores[i]!.load.running;
    if (opts.onProgress && r % progressEvery === 0) opts.onProgress(r, N);
    if (d.peer) {
      // KV moved from another instance over the peer link (FIFO per pair), raw bytes, no LMCache
      // load; only what the source really holds now moves (the index may run ahead of it)
      const held = Math.min(d.peer.tokens, cores[d.peer.from]!.heldPrefixBlocks(req.blocks) * req.blockSize, req.inputTokens - 1);
      peerHeld[r] = held;
      const xt = Math.max(0, held - d.cachedTokens);
      if (xt > 0) {
        const bytes = xt * cluster.instances[i]!.profile.model.kvBytesPerToken;
        const start = Math.max(t, peerFree[d.peer.from]![i]!);
        const dur = transferMs(bytes, peerLink);
        peerFree[d.peer.from]![i] = start + dur;
        out.transferTokens[r] = xt;
        out.linkWaitMs[r] = start - t;
        out.transferMs[r] = dur;
        out.peerBytesMoved += bytes;
        loadOverride[r] = 0;
        q.push(start + dur, EV_XFER, r, 0);
        return;
      }
    }
    if ((d.intent === 'kvcache' || d.intent === 'hybrid' || d.intent === 'blend' || d.intent === 'overlap') && d.kdn >= 0) {
      const overlap = d.intent === 'overlap';
      const xt =
        d.intent === 'blend'
          ? spanTokensFrom(blendSpans(cluster.kdns[d.kdn]!, req, cluster.chunkTokens), d.cachedTokens)
          : Math.max(0, d.reusedTokens - Math.max(d.cachedTokens, overlap ? (d.overlapSplit ?? 0) : 0));
      out.transferTokens[r] = xt;
      if (req.knowledgeTokens > d.reusedTokens) out.prepareMs[r] = cluster.kdns[d.kdn]!.textFetchMs;
      if (xt > 0) {
        const k = d.kdn;
        const bytes = kvWireBytes(xt, cluster.instances[i]!.profile.model.kvBytesPerToken, cluster.kdns[k]!);
        const link = cluster.links[k]![i]!;
        // overlap: the tail crosses the link while the head is computed
        const ready = t + out.prepareMs[r]!;
        const start = Math.max(ready, linkFree[k]![i]!);
        const dur = transferMs(bytes, link);
        const end = start + dur;
        linkFree[k]![i] = end;
        out.linkWaitMs[r] = start - ready;
        out.transferMs[r] = dur;
        out.kvBytesMoved += bytes;
        transfers[k]!.push(i, start, end, start - ready);
        q.push(end, EV_XFER, r, 0);
        if (!overlap) return;
        tailState[r] = 1;
      }
    } else if (d.intent === 'text' && req.knowledgeTokens > 0) {
      const k = d.kdn >= 0 ? d.kdn : 0;
      out.prepareMs[r] = cluster.kdns[k]?.textFetchMs ?? 0;
    }
    if (out.prepareMs[r]! > 0) q.push(t + out.prepareMs[r]!, EV_READY, r, 0);
    else toFrontend(r, t);
  };
  /** A request left the client's view (done or rejected): its slot goes to the next deferred one. */
  const release = (t: number): void => {
    inflight--;
    if (dHead < deferred.length) {
      const r = deferred[dHead++]!;
      requests[r] = { ...requests[r]!, arrivalMs: t };
      inflight++;
      dispatch(r, t);
    }
  };

  let next = 0;
  let events = 0;
  for (;;) {
    const tq = q.peekTime();
    const ta = next < N ? requests[next]!.arrivalMs : Infinity;
    if (tq === Infinity && ta === Infinity) break;
    events++;
    if (ta < tq) {
      // ---- arrival: decide and dispatch (or wait for a client slot)
      const r = next++;
      if (inflight >= maxConc) deferred.push(r);
      else {
        inflight++;
        dispatch(r, ta);
      }
      continue;
    }
    q.pop();
    const t = q.time;
    switch (q.type) {
      case EV_READY:
        toFrontend(q.argA, t);
        break;
      case EV_XFER: {
        const r = q.argA;
        ownerEngine(r).onKvTransferDone(requests[r]!.id, t);
        if (ownerOf !== null) book(OP_XFER, r, t);
        if (tailState[r] === 0) {
          toFrontend(r, t);
          break;
        }
        // overlap: the tail is on the instance; LMCache retrieves it beside the head's compute
        const i = instOf[r]!;
        q.push(t + kvLoadMs(cluster.instances[i]!.profile.kvLoad, out.transferTokens[r]!), EV_TAIL, r, 0);
        break;
      }
      case EV_TAIL: {
        const r = q.argA;
        tailState[r] = 2;
        const i = instOf[r]!;
        const core = cores[i]!;
        if (core.tailArrived(requests[r]!.id) && !core.busy && out.coreAt[r]! >= 0) startRun(i, t);
        break;
      }
      case EV_CORE: {
        const r = q.argA;
        const req = requests[r]!;
        const i = instOf[r]!;
        const ds = out.decisions;
        out.coreAt[r] = t;
        const code = ds.intentCode[r]!;
        const pdP = roles && decOf[r]! >= 0;
        const cr: CoreRequest = {
          id: req.id,
          promptTokens: req.inputTokens,
          // a disaggregated request's prefill: one token (vLLM's P gets max_tokens 1)
          outputTokens: pdP ? 1 : req.outputTokens,
          blocks: req.blocks,
          blockSize: req.blockSize,
          // P's token is the client's first only when P streams it
          tag: pdP && pdSpec.firstToken === 'decode' ? -1 : r,
          loadedTokens: code === 2 || code === 3 ? ds.reused[r]! : peerHeld[r]! >= 0 ? peerHeld[r]! : 0,
        };
        if (loadOverride[r]! >= 0) cr.kvLoadMs = loadOverride[r]!;
        if (code === 4 && ds.kdn[r]! >= 0) {
          cr.blend = { spans: blendSpans(cluster.kdns[ds.kdn[r]!]!, req, cluster.chunkTokens), spec: cluster.instances[i]!.blend ?? BLEND_DEFAULTS };
        } else if (code === 5 && tailState[r]! > 0) {
          cr.tail = { start: ds.split[r]!, end: ds.reused[r]!, ready: tailState[r] === 2 };
        }
        admit(i, r, cr, t);
        break;
      }
      case EV_STEP: {
        const i = q.argA;
        if (q.argB !== gen[i]) break; // superseded by a truncated run
        const core = cores[i]!;
        const ev = core.finishStep(t);
        for (const id of ev.firstToken) {
          const r = idToIdx.get(id)!;
          if (roles && decOf[r]! >= 0 && instOf[r] !== i) {
            // the decode instance's first token: the client's first only with vLLM's proxy
            if (pdSpec.firstToken === 'decode') out.firstTokenAt[r] = t;
            continue;
          }
          if (!roles || decOf[r]! < 0 || pdSpec.firstToken === 'prefill') out.firstTokenAt[r] = t;
          const s = core.get(id);
          if (s) {
            out.firstSchedAt[r] = s.firstScheduledAt;
            out.hitTokens[r] = s.hitTokens;
            out.loadTokens[r] = s.loadTokens;
            out.kvLoadMs[r] = s.kvLoadMs;
            if (tierOut) {
              tierOut.cpuTokens[r] = s.cpuTokens;
              tierOut.remoteTokens[r] = s.remoteTokens;
            }
          }
          ownerEngine(r).onFirstToken(id, t);
          if (ownerOf !== null) book(OP_FIRST, r, t);
        }
        for (const id of ev.done) {
          const r = idToIdx.get(id)!;
          if (onPrefill(r, i) && (pdSpec.firstToken === 'decode' || requests[r]!.outputTokens > 1)) {
            // the prefill is done on P: hand the KV off to D
            const s = core.get(id);
            handOff(r, t, s ? s.firstScheduledAt : t);
            core.forget(id);
            continue;
          }
          out.doneAt[r] = t;
          out.status[r] = ST_OK;
          if (out.firstTokenAt[r]! < 0) out.firstTokenAt[r] = t;
          core.forget(id);
          ownerEngine(r).onComplete(id, t, requests[r]!.outputTokens);
          if (ownerOf !== null) book(OP_DONE, r, t);
          // the client sees the end after the API overhead, then sends its next request
          if (maxConc < Infinity) q.push(t + cluster.instances[i]!.profile.step.apiMs, EV_SEND, r, 0);
        }
        if (ev.done.length) sendReleased(t);
        for (const id of ev.preempted) {
          const r = idToIdx.get(id)!;
          out.preemptions[r]!++;
        }
        flushKv(i, t);
        startRun(i, t);
        break;
      }
      case EV_PD: {
        // the hand-off is done: the request joins D's engine core with its prompt's KV loaded
        const r = q.argA;
        const req = requests[r]!;
        const D = decOf[r]!;
        ownerEngine(r).onPdTransferDone(req.id, t);
        if (ownerOf !== null) book(OP_PD, r, t);
        const cr: CoreRequest = {
          id: req.id,
          promptTokens: req.inputTokens,
          // first token from P: D computes the first token's KV and generates the others
          outputTokens: pdSpec.firstToken === 'prefill' ? req.outputTokens - 1 : req.outputTokens,
          blocks: req.blocks,
          blockSize: req.blockSize,
          tag: r,
          loadedTokens: req.inputTokens,
          kvLoadMs: 0,
        };
        admit(D, r, cr, t);
        break;
      }
      case EV_SEND:
        release(t);
        break;
      case EV_SCRAPE: {
        scrape(t);
        if (next < N || q.size > 0) q.push(t + scrapeMs!, EV_SCRAPE, 0, 0);
        break;
      }
      case EV_KV: {
        const b = kvBatches[q.argA]!;
        for (const e of b.items) for (let j = 0; j < R; j++) engines[j]!.onKvEvent({ instance: b.instance, kind: e.kind, blocks: e.blocks, medium: e.medium });
        kvBatches[q.argA] = { instance: b.instance, items: [] };
        break;
      }
      case EV_OP: {
        const o = q.argA;
        const r = opReq[o]!;
        const origin = ownerOf![r]!;
        for (let j = 0; j < R; j++) if (j !== origin) applyOp(j, opKind[o]!, r, opDispatch[o], t);
        opDispatch[o] = undefined;
        break;
      }
      default:
        throw new Error(`unknown event type ${q.type}`);
    }
    out.endMs = t;
  }
  out.events = events;
  if (R > 1) out.replicas = { count: R, syncMs, ops: replicaOps };
  for (let r = 0; r < N; r++) if (out.status[r] === ST_OK) out.tbtMs[r] = gaps.tbt(r);
  out.instances = cores.map((c, i) => ({
    id: cluster.instances[i]!.id,
    busyMs: c.busyMs,
    steps: c.steps,
    evictions: c.kv.evictions,
    preemptions: c.preemptions,
    ...(tierOut ? { cpuEvictions: c.cpu?.evictions ?? 0, remoteEvictions: c.remote?.evictions ?? 0 } : {}),
  }));
  out.transfers = transfers.map((x) => Float64Array.from(x));
  out.stepFactors = engine.stepFactors();
  return out;
}

const NOISE_TABLE_BITS = 12;
const noiseTables = new Map<number, Float64Array>();

/** 4,096 standard normal variates (Box-Muller over a counter hash) for a seed, cached. */
function normalTable(seed: number): Float64Array {
  let t = noiseTables.get(seed);
  if (t) return t;
  t = new Float64Array(1 << NOISE_TABLE_BITS);
  for (let j = 0; j < t.length; j++) {
    const u1 = (mix32(seed, 2 * j + 1) + 0.5) / 4294967296;
    const u2 = (mix32(seed ^ 0x5bd1e995, 2 * j + 2) + 0.5) / 4294967296;
    t[j] = Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
  if (noiseTables.size > 64) noiseTables.clear();
  noiseTables.set(seed, t);
  return t;
}

/**
 * Deterministic step-time noise factor for (seed, instance, step): 1 + cv·z with z ~ N(0, 1)
 * picked from a per-seed table by a counter hash of (instance, step), so coalesced runs equal
 * single stepping. Clamped to [0.5, 1.5].
 */
export function noiseFactor(seed: number, instance: number, step: number, cv: number): number {
  const z = normalTable(seed)[mix32(Math.imul(instance + 1, 0x9e3779b1), step) & ((1 << NOISE_TABLE_BITS) - 1)]!;
  const f = 1 + cv * z;
  return f < 0.5 ? 0.5 : f > 1.5 ? 1.5 : f;
}

/** Seed of router replica k (replica 0 keeps the run's seed, so one replica is today's run). */
export function replicaSeed(seed: number, k: number): number {
  return k === 0 ? seed : mix32(seed >>> 0, 0x7f4a7c15 + k);
}

/** The replica a hashing load balancer sends request `id` to: FNV-1a of the id mixed with the seed, mod R. */
export function hashPick(id: string, seed: number, R: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
  return mix32(h >>> 0, seed) % R;
}

function mix32(a: number, b: number): number {
  let h = (a ^ Math.imul(b, 0x27d4eb2d)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** Intent of a decision as a small integer (for typed-array bookkeeping). */
export function intentCode(i: Intent): number {
  return INTENTS.indexOf(i);
}
