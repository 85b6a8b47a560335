/**
 * The policy engine: one object per cluster, used unchanged by the simulator and the live
 * gateway. `decide()` is pure with respect to the engine state (it only reads it, plus the
 * seeded RNG); the bookkeeping hooks (`onDispatch`, `onKvTransferDone`, `onFirstToken`,
 * `onComplete`, `onAbort`, `onKvEvent`, `onInstanceUp/Down`) mutate it and must be called by
 * both drivers in the same order. Time is always passed in (ms); the engine has no clock.
 */
import seedrandom from 'seedrandom';
import { KnowledgeTree } from './doc-order.js';
import { LinkBook } from './links.js';
import { LoadBook, type InstanceLoad } from './load.js';
import { ActiveBlocks } from './active-blocks.js';
import { Calibrator, scaleProfile, type CalibrationOptions, type StepFactors } from './calibration.js';
import { curveMs } from './costmodel.js';
import { OutputLengthPredictor, type OutputLengthOptions } from './output-length.js';
import { emptyPrediction, overlapMeetSplit, predictInto, type PredictInput, type Prediction } from './predict.js';
import { hasRoles, leastLoadedDecode, PD_DEFAULTS, pdBytes, pdExposedMs, pdTransferMs, prefillCapable, roleOf } from './pd.js';
import { tbtEstimateMs } from './predict.js';
import { PrefixIndex } from './prefix-index.js';
import { blendRecomputeTokens, blendSpans, kdnCoverage, spanTokensFrom } from './knowledge.js';
import { intentRecord, type Alternative, type CausalRequest, type ClusterSpec, type Decision, type EngineRequest, type InstanceMetrics, type InstanceRole, type InstanceSpec, type Intent, type KvEvent, type LinkSpec, type PdSpec, type Profile } from './types.js';

export { kdnCoverage } from './knowledge.js';

/** The KDN chosen to serve a request's knowledge on one instance. */
export interface KdnChoice {
  kdn: number;
  /** prompt-prefix tokens whose KV that KDN can provide (chunk-aligned, < prompt). */
  reuseTokens: number;
  linkWaitMs: number;
}

/** The KDN chosen to serve a blended (CacheBlend) reuse on one instance. */
export interface BlendChoice {
  kdn: number;
  /** prompt spans [start, end) whose KV that KDN provides (every document it holds, full chunks). */
  spans: ReadonlyArray<readonly [number, number]>;
  /** tokens of `spans` beyond the instance's local prefix hit: what is transferred and loaded. */
  tokens: number;
  linkWaitMs: number;
}

/** Read-only view of the engine state for one decision. */
export interface DecideContext {
  readonly now: number;
  /** the request, without its true output length (a router does not know it). */
  readonly req: CausalRequest;
  /**
   * Output tokens the engine books for this request: the client's `max_tokens` when given,
   * else the engine's output-length predictor (engine/output-length.ts).
   */
  readonly expectedOutputTokens: number;
  readonly cluster: ClusterSpec;
  /** number of instances. */
  readonly n: number;
  /** leading blocks of the request each instance holds (engine prefix index). */
  readonly match: Int32Array;
  /** longest match over instances (blocks). */
  readonly bestMatch: number;
  readonly index: PrefixIndex;
  /** local prefix-cache hit tokens of instance i (capped at prompt - 1). */
  cachedTokens(i: number): number;
  /**
   * KV tiers: prompt tokens right after instance i's local (GPU) hit that its CPU tier holds, as
   * the engine's tier-tagged index knows them (KV events with medium "CPU"); 0 without tiers.
   */
  cpuTokens(i: number): number;
  /** … and then its remote tier (LMCache's Redis; medium "REMOTE"); 0 without one. */
  remoteTokens(i: number): number;
  /**
   * The engine's current model of instance i: its profile as the engine believes it, with the
   * online calibration applied (the predictor's view). `cluster.instances[i]` is the belief
   * before calibration (what a peer's offline fit is built from).
   */
  spec(i: number): InstanceSpec;
  load(i: number): InstanceLoad;
  /** predicted prefill backlog of instance i now (ms). */
  backlogMs(i: number): number;
  /**
   * Instance i is up and takes prefills (role prefill or mixed). Strategies that route only the
   * prefill pick among these; on a `prefill` instance the engine then picks the decode instance.
   */
  isUp(i: number): boolean;
  /** instance i is up, whatever its role (P/D-aware strategies read `role` too). */
  alive(i: number): boolean;
  /** P/D role of instance i (mixed when the cluster has none). */
  role(i: number): InstanceRole;
  /** the cluster's P -> D hand-off settings (defaults when it has no roles). */
  readonly pd: PdSpec;
  /** the cluster has instances with a P/D role (prefill or decode): decisions may disaggregate. */
  readonly hasRoles: boolean;
  /** predicted wait (ms) for the P -> D link from -> to for a transfer ready at `at` (ms). */
  pdLinkWaitMs(from: number, to: number, at: number): number;
  /** seeded uniform [0, 1). */
  rng(): number;
  /** best KDN for instance i (max coverage, then least link wait); null when none or no knowledge. */
  kdnFor(i: number): KdnChoice | null;
  /** the last scraped engine metrics of instance i (drivers feed them for strategies that ask); null before the first scrape. */
  metrics(i: number): InstanceMetrics | null;
  /** predicted wait (ms) for the instance->instance KV link from -> to. */
  peerLinkWaitMs(from: number, to: number): number;
  /**
   * best KDN for a blended reuse on instance i (most span tokens beyond the local hit, then least
   * link wait); null when the request has no knowledge, the instance does not blend or no KDN
   * holds any of its documents.
   */
  blendFor(i: number): BlendChoice | null;
  /**
   * predicted breakdown of an option; reuse defaults to the KDN's full coverage. For `overlap`,
   * `reuseTokens` is the split point (default: where head compute meets tail load); for `blend`
   * it is ignored (every document span the KDN holds).
   */
  predict(i: number, intent: Intent, reuseTokens?: number): Prediction;
  /**
   * `predict` writing into `out` (no allocation). `peer` = a prefix moved from another instance
   * first (Mooncake): its tokens are not recomputed, its raw KV crosses the peer link.
   */
  predictInto(out: Prediction, i: number, intent: Intent, reuseTokens?: number, peer?: { from: number; tokens: number }): Prediction;
}

/** What a strategy returns; the engine completes it into a Decision. */
export interface StrategyChoice {
  instance: number;
  intent: Intent;
  /**
   * KV tokens to take from the KDN (kvcache/hybrid); default: full coverage for kvcache.
   * overlap: the split point (default: where compute meets load); blend: ignored.
   */
  reuseTokens?: number;
  alternatives: Alternative[];
  reason: string;
  /**
   * the strategy's own prediction of the chosen option, when it computed one. The engine books
   * its `workMs` as the instance's prefill backlog, so `backlogMs` follows the strategy's own
   * estimates (CacheRoute's reservation timeline, Mooncake's queue time).
   */
  prediction?: Prediction;
  /** admission control: reject the request (not dispatched, counted as rejected), with the reason. */
  reject?: string;
  /** move `tokens` of prefix KV from instance `from` to the chosen instance before prefill. */
  peer?: { from: number; tokens: number };
  /**
   * Disaggregate: decode on this instance (role decode or mixed, not `instance`). Undefined: the
   * request is colocated on `instance`, unless `instance` has role prefill, in which case the
   * engine picks the decode instance (`leastLoadedDecode`, engine/pd.ts).
   */
  decode?: number;
}

/** A named router + intent policy. Strategies may keep private state (affinity, trees). */
export interface Strategy {
  readonly name: string;
  decide(ctx: DecideContext): StrategyChoice;
  onDispatch?(ctx: DecideContext, d: Decision): void;
  /** first token of `id` observed at `now` (ms). */
  onFirstToken?(id: string, now: number): void;
  /** `id` completed or aborted at `now` (ms). */
  onComplete?(id: string, now: number): void;
  onInstanceDown?(i: number): void;
  /**
   * A proxy in front of every instance forwards at most this many requests to it at once; the
   * rest wait, FIFO, in the engine's per-instance queue (CacheRoute's READY_CONCURRENCY). Both
   * drivers honour it through `Engine.forward` / `takeReleased`. Undefined = no cap.
   */
  readonly maxForwardPerInstance?: number;
  /**
   * The strategy scores on scraped engine metrics (`ctx.metrics`), refreshed every this many
   * ms by the driver (llm-d: 50 ms). Undefined = it does not read them.
   */
  readonly metricsIntervalMs?: number;
}

/**
 * Op-log entry of one dispatch, as replicas of a router exchange it: the request, the origin's
 * decision and what it booked (tokens, ms), so every replica books the same.
 */
export interface DispatchOp {
  req: EngineRequest;
  decision: Decision;
  /** uncached prompt tokens the instance computes (booked prefill). */
  computeTokens: number;
  /** predicted prefill work added to the instance's lane, ms. */
  workMs: number;
  /** tokens moved on the KDN or peer link (0 = no transfer). */
  transferTokens: number;
  /** predicted transfer time, ms. */
  transferMs: number;
}

/** Engine options. */
export interface EngineOptions {
  seed?: number;
  /**
   * Insert a request's blocks into the index for the chosen instance at dispatch, before the
   * instance's KV events confirm them (Dynamo predict-on-route / llm-d speculative indexing).
   * Default true.
   */
  predictOnRoute?: boolean;
  /** output-length predictor options (engine/output-length.ts defaults). */
  outputLength?: Partial<OutputLengthOptions>;
  /**
   * Online calibration of the step model from observed first-token and completion times
   * (engine/calibration.ts): true or options = on. Default off.
   */
  calibrate?: boolean | Partial<CalibrationOptions>;
  /**
   * The application allows a request's documents to be reordered: `documentOrder()` gives the
   * canonical order (engine/doc-order.ts, RAGCache's knowledge tree) and every dispatched order
   * is recorded in the tree. Default false.
   */
  reorderDocuments?: boolean;
}

/** Default instance->instance KV link: one 200 Gbit/s RDMA NIC (Mooncake's nodes have four), 0.01 ms, CacheRoute's 0.825 efficiency. */
export const PEER_LINK_DEFAULT: LinkSpec = { bandwidthGbps: 200, latencyMs: 0.01, efficiency: 0.825 };

interface Dispatched {
  instance: number;
  /** decode instance (= instance when colocated). */
  decode: number;
  kdn: number;
  transferTokens: number;
  inputTokens: number;
  /** 0 = not yet asked to forward, 1 = forwarded to the instance, 2 = waiting in the proxy queue. */
  fwd: 0 | 1 | 2;
  /** its prompt blocks (held on `decode` from its first token until it finishes). */
  blocks: readonly number[];
  /** calibration: predicted prefill-group and decode-group work at factor 1 (-1 = not the engine's prediction), KV load, times. */
  pBase: number;
  dBase: number;
  kvLoadMs: number;
  readyAt: number;
  firstAt: number;
  /** at the first token: the instance's cumulative prefill-group work, decoding batch and context. */
  cumPAtFirst: number;
  batch: number;
  batchCtx: number;
  /** when it became ready, its instance ran max_num_seqs requests: it may wait for a slot, not for prefill. */
  slotBound: boolean;
}

/** The policy engine. */
export class Engine {
  readonly index: PrefixIndex;
  /** the tier-tagged parts of the prefix index (KV events with medium CPU / REMOTE); null when no instance has that tier. */
  readonly cpuIndex: PrefixIndex | null;
  readonly remoteIndex: PrefixIndex | null;
  readonly loads: LoadBook;
  readonly links: LinkBook;
  /** instance -> instance KV link reservations (links[from][to]). */
  readonly peers: LinkBook;
  /** P -> D hand-off link reservations of disaggregated requests (links[P][D]). */
  readonly pdLinks: LinkBook;
  /** decisions that disaggregated / colocated a request on a cluster with P/D roles. */
  readonly pdCounts = { disaggregated: 0, colocated: 0 };
  readonly up: boolean[];
  /** learns output lengths from completions (used when a request has no max_tokens). */
  readonly outputs: OutputLengthPredictor;
  /** last scraped metrics per instance (null before the first). */
  readonly metrics: (InstanceMetrics | null)[];
  /** prompt blocks of the requests decoding on each instance (the KV they hold). */
  readonly holding: ActiveBlocks;
  private readonly rngFn: () => number;
  private readonly matchBuf: Int32Array;
  private readonly predictOnRoute: boolean;
  /** the cluster has instances with a P/D role (prefill or decode). */
  private readonly roles: boolean;
  private readonly dispatched = new Map<string, Dispatched>();
  /** requests forwarded to each instance and not finished (proxy slots in use). */
  private readonly forwarded: Int32Array;
  /** per instance, FIFO of ids waiting for a proxy slot, and its read head. */
  private readonly held: string[][];
  private readonly heldHead: number[];
  private released: string[] = [];
  /** reusable predictor input (decisions are not re-entrant). */
  private readonly scratch: PredictInput;
  /** the last decision's context and prediction, reused by onDispatch when it matches. */
  private last: { req: EngineRequest; now: number; ctx: DecideContext; d: Decision; pred: Prediction } | null = null;
  /** what the last onDispatch booked (for `dispatchOp`). */
  private readonly booked = { computeTokens: 0, workMs: 0, transferTokens: 0, transferMs: 0 };
  /** document-sequence tree when documents may be reordered (null otherwise). */
  readonly knowledgeTree: KnowledgeTree | null;
  /** decisions made, per intent. */
  readonly intentCounts: Record<Intent, number> = intentRecord();
  /** requests the strategy rejected (admission control). */
  rejections = 0;
  /** online calibration (null = off) and the calibrated view of every instance. */
  readonly calibrator: Calibrator | null;
  readonly view: InstanceSpec[];
  /** per instance: last first token (ms) and cumulative prefill-group work at factor 1. */
  private readonly lastFirst: Float64Array;
  private readonly cumP: Float64Array;

  constructor(
    readonly cluster: ClusterSpec,
    public strategy: Strategy,
    opts: EngineOptions = {},
  ) {
    const n = cluster.instances.length;
    if (n === 0) throw new Error('Engine: the cluster has no instance');
    const caps = cluster.instances.map((s) => s.engine.kvCapacityTokens);
    // bound in blocks of the smallest block size we may see (trace blocks are >= 16 tokens)
    this.index = new PrefixIndex(
      n,
      caps.map((c) => (Number.isFinite(c) ? Math.ceil(c / 16) : Infinity)),
    );
    const tierCaps = (tokens: (s: InstanceSpec) => number) => (cluster.instances.some((s) => tokens(s) > 0) ? new PrefixIndex(n, cluster.instances.map((s) => (Number.isFinite(tokens(s)) ? Math.ceil(tokens(s) / 16) : Infinity))) : null);
    this.cpuIndex = tierCaps((s) => s.tiers?.cpuTokens ?? 0);
    this.remoteIndex = tierCaps((s) => s.tiers?.remoteTokens ?? 0);
    this.loads = new LoadBook(n);
    this.links = new LinkBook(cluster.kdns.length, n);
    this.peers = new LinkBook(n, n);
    this.pdLinks = new LinkBook(n, n);
    this.roles = hasRoles(cluster.instances);
    this.up = new Array<boolean>(n).fill(true);
    this.outputs = new OutputLengthPredictor(opts.outputLength);
    this.metrics = new Array<InstanceMetrics | null>(n).fill(null);
    this.holding = new ActiveBlocks(n);
    this.rngFn = seedrandom(String(opts.seed ?? 1));
    this.matchBuf = new Int32Array(n);
    this.predictOnRoute = opts.predictOnRoute ?? true;
    this.forwarded = new Int32Array(n);
    this.calibrator = opts.calibrate ? new Calibrator(opts.calibrate === true ? {} : opts.calibrate) : null;
    this.view = cluster.instances.slice();
    this.lastFirst = new Float64Array(n).fill(-Infinity);
    this.cumP = new Float64Array(n);
    this.held = Array.from({ length: n }, () => []);
    this.heldHead = new Array<number>(n).fill(0);
    this.knowledgeTree = opts.reorderDocuments ? new KnowledgeTree() : null;
    this.scratch = {
      inst: cluster.instances[0]!,
      load: this.loads.loads[0]!,
      backlogMs: 0,
      promptTokens: 1,
      outputTokens: 1,
      knowledgeTokens: 0,
      cachedTokens: 0,
      intent: 'none',
      reuseTokens: 0,
      linkWaitMs: 0,
    };
  }

  /**
   * The canonical prompt order of a request's documents when reordering is on
   * (`reorderDocuments`) and the request has two or more: popular / already-dispatched
   * sequences first (engine/doc-order.ts). null = keep the order. The driver rebuilds the
   * request in that order (sim: traces/blocks.ts `reorderRequest`; live: the prompt text) before
   * `decide`.
   */
  documentOrder(req: EngineRequest): EngineRequest['knowledge'] | null {
    if (!this.knowledgeTree || req.knowledge.length < 2) return null;
    const o = this.knowledgeTree.order(req.knowledge);
    return o.every((d, i) => d.kid === req.knowledge[i]!.kid) ? null : o;
  }

  /**
   * Decides instance, KDN, intent and reuse for a request at time `now` (ms). Does not book
   * anything: call `onDispatch` with the result when the request is actually sent. A decision
   * with `rejected` set (admission control) must not be dispatched.
   * @throws Error when no instance is up.
   */
  decide(req: EngineRequest, now: number): Decision {
    const ctx = this.context(req, now);
    if (!this.up.some(Boolean)) throw new Error('no instance is up');
    const c = this.strategy.decide(ctx);
    if (c.instance < 0 || c.instance >= ctx.n || !this.up[c.instance]) throw new Error(c.instance < 0 ? 'no instance is up to take the prefill' : `strategy ${this.strategy.name} chose instance ${c.instance}, which is not up`);
    const peer = c.peer && c.peer.from !== c.instance && c.peer.tokens > ctx.cachedTokens(c.instance) ? c.peer : undefined;
    const wanted: Intent = req.knowledgeTokens <= 0 ? 'none' : c.intent;
    const o = resolveOption(ctx, c.instance, wanted, c.reuseTokens, wanted === c.intent ? c.prediction : undefined, peer);
    const { intent, kdn, reuse, pred } = o;
    let reason = c.reason + o.reason;
    const usedPeer = peer && (intent === 'none' || intent === 'text') ? peer : undefined;
    const decode = this.decodeFor(ctx, c);
    if (decode === -2) reason += ';no-decode-up';
    const d: Decision = {
      requestId: req.id,
      strategy: this.strategy.name,
      instance: c.instance,
      kdn,
      intent,
      reusedTokens: reuse,
      cachedTokens: ctx.cachedTokens(c.instance),
      predicted: {
        prepareMs: pred.prepareMs,
        linkWaitMs: pred.linkWaitMs,
        transferMs: pred.transferMs,
        kvLoadMs: pred.kvLoadMs,
        queueMs: pred.queueMs,
        prefillMs: pred.prefillMs,
        ttftMs: pred.ttftMs,
      },
      alternatives: c.alternatives,
      reason,
      expectedOutputTokens: ctx.expectedOutputTokens,
    };
    if (usedPeer) d.peer = { from: usedPeer.from, tokens: Math.min(usedPeer.tokens, req.inputTokens - 1) };
    if (decode >= 0) {
      // the hand-off: the prompt's KV P -> D after (or, layer-wise, during) the prefill
      const pd = ctx.pd;
      const bytes = pdBytes(ctx.spec(c.instance), req.inputTokens);
      const exposed = pdExposedMs(bytes, pd, pred.prefillMs, ctx.spec(c.instance).profile.model.layers);
      const wait = ctx.pdLinkWaitMs(c.instance, decode, now + pred.ttftMs);
      const tbt = tbtEstimateMs(ctx.spec(decode), ctx.load(decode));
      d.decode = decode;
      d.pdPredicted = { linkWaitMs: wait, transferMs: exposed, tbtMs: tbt };
      // vLLM's proxy streams D's tokens: the first one comes after the hand-off, D's API
      // frontend, a step on D and D's API delay (sim/simulator.ts times it so)
      if (pd.firstToken === 'decode') {
        const ds = ctx.spec(decode).profile.step;
        d.predicted.ttftMs += wait + exposed + tbt + ds.frontendMsPerRequest + ds.apiMs;
      }
    }
    if (c.reject) {
      d.rejected = c.reject;
      this.rejections++;
    }
    if (intent === 'overlap') d.overlapSplit = o.split;
    this.last = { req, now, ctx, d, pred };
    return d;
  }

  /**
   * The decode instance of a strategy's choice: the strategy's own (checked), the default
   * selection when it chose a prefill-only instance, or -1 (colocated). -2: the chosen instance is
   * prefill-only and no decode instance is up (the request then runs colocated on it).
   * @throws Error when the strategy's decode instance cannot decode or is not up
   */
  private decodeFor(ctx: DecideContext, c: StrategyChoice): number {
    if (!this.roles) return -1;
    const P = c.instance;
    if (c.decode !== undefined && c.decode !== P) {
      const D = c.decode;
      if (D < 0 || D >= ctx.n || !this.up[D]) throw new Error(`strategy ${this.strategy.name} chose decode instance ${D}, which is not up`);
      if (roleOf(this.cluster.instances[D]!) === 'prefill') throw new Error(`strategy ${this.strategy.name} chose decode instance ${this.cluster.instances[D]!.id}, which has role prefill`);
      if (!prefillCapable(this.cluster.instances[P]!)) throw new Error(`strategy ${this.strategy.name} disaggregated a request with instance ${this.cluster.instances[P]!.id} (role decode) as its prefill instance`);
      return D;
    }
    if (roleOf(this.cluster.instances[P]!) !== 'prefill') return -1;
    const D = leastLoadedDecode(ctx.n, P, (i) => this.cluster.instances[i]!, (i) => this.up[i]!, (i) => this.loads.loads[i]!, this.rngFn);
    return D < 0 ? -2 : D;
  }

  /**
   * Books a decided request at `now`: load on its instance, a link reservation for its KV
   * transfer (KDN or peer), and (predict-on-route) its blocks in the index.
   * @returns the predicted link start time (ms) when a transfer was reserved, else -1.
   * @throws Error for a rejected decision (admission control: nothing to book)
   */
  onDispatch(req: EngineRequest, d: Decision, now: number): number {
    if (d.rejected) throw new Error(`request ${req.id} was rejected (${d.rejected}): it cannot be dispatched`);
    const last = this.last;
    this.last = null;
    const reuse = last !== null && last.req === req && last.now === now && last.d === d;
    const ctx = reuse ? last.ctx : this.context(req, now);
    const pred = reuse ? last.pred : ctx.predictInto(emptyPrediction(), d.instance, d.intent, d.intent === 'overlap' ? d.overlapSplit : d.reusedTokens, d.peer);
    const D = d.decode ?? d.instance;
    this.loads.book(req.id, d.instance, now, pred.computeTokens, req.inputTokens + d.expectedOutputTokens, req.inputTokens, pred.workMs, D);
    if (D !== d.instance) {
      this.pdLinks.reserve(req.id, d.instance, D, now + pred.ttftMs, pdTransferMs(pdBytes(this.cluster.instances[d.instance]!, req.inputTokens), ctx.pd));
      this.pdCounts.disaggregated++;
    } else if (this.roles) this.pdCounts.colocated++;
    let start = -1;
    if (d.kdn >= 0 && pred.transferTokens > 0) {
      start = this.links.reserve(req.id, d.kdn, d.instance, now, pred.transferMs);
    } else if (d.peer && pred.transferTokens > 0) {
      start = this.peers.reserve(req.id, d.peer.from, d.instance, now, pred.transferMs);
    }
    const f = this.calibrator?.factors;
    const engineMade = pred.engineMade && f !== undefined;
    this.dispatched.set(req.id, {
      instance: d.instance,
      decode: D,
      kdn: d.kdn,
      transferTokens: pred.transferTokens,
      inputTokens: req.inputTokens,
      fwd: 0,
      blocks: req.blocks,
      pBase: engineMade ? (pred.workMs - pred.workDecodeMs - pred.kvLoadMs) / f.prefill : -1,
      dBase: engineMade ? pred.workDecodeMs / f.decode : -1,
      kvLoadMs: pred.kvLoadMs,
      readyAt: now,
      firstAt: -1,
      cumPAtFirst: 0,
      batch: 0,
      batchCtx: 0,
      slotBound: this.loads.loads[d.instance]!.inflight > this.cluster.instances[d.instance]!.engine.maxNumSeqs,
    });
    this.intentCounts[d.intent]++;
    if (this.predictOnRoute && req.blocks.length) {
      this.index.add(d.instance, req.blocks);
      // D caches the prompt blocks it receives
      if (D !== d.instance) this.index.add(D, req.blocks);
    }
    this.knowledgeTree?.observe(req.knowledge);
    this.strategy.onDispatch?.(ctx, d);
    const b = this.booked;
    b.computeTokens = pred.computeTokens;
    b.workMs = pred.workMs;
    b.transferTokens = pred.transferTokens;
    b.transferMs = pred.transferMs;
    return start;
  }

  /**
   * The op-log entry of the dispatch just booked by `onDispatch(req, d, now)` (call it right
   * after), for the other replicas of a replicated router to book the same (`applyRemoteDispatch`).
   */
  dispatchOp(req: EngineRequest, d: Decision): DispatchOp {
    const b = this.booked;
    return { req, decision: d, computeTokens: b.computeTokens, workMs: b.workMs, transferTokens: b.transferTokens, transferMs: b.transferMs };
  }

  /**
   * Replicated routers (RadixMesh's op-log, SGLang gateway replicas): books, at `now` (ms, when
   * this replica learns of it), a dispatch another replica decided — the same load, KV footprint,
   * link reservation and predict-on-route index entry as its origin booked, and the strategy's
   * own dispatch hook (its trees, affinity) — without deciding, counting an intent or taking a
   * proxy slot (the origin's proxy forwards it). The request's later entries are applied with
   * the ordinary hooks (`onKvTransferDone`, `onFirstToken`, `onComplete`, `onAbort`), which are
   * keyed by request id. Applying an id that is already booked here is a no-op (exactly once).
   */
  applyRemoteDispatch(op: DispatchOp, now: number): void {
    const { req, decision: d } = op;
    if (this.dispatched.has(req.id) || d.instance < 0 || d.instance >= this.up.length) return;
    const D = d.decode !== undefined && d.decode >= 0 && d.decode < this.up.length ? d.decode : d.instance;
    this.loads.book(req.id, d.instance, now, op.computeTokens, req.inputTokens + d.expectedOutputTokens, req.inputTokens, op.workMs, D);
    if (D !== d.instance) this.pdLinks.reserve(req.id, d.instance, D, now + d.predicted.ttftMs, pdTransferMs(pdBytes(this.cluster.instances[d.instance]!, req.inputTokens), this.cluster.pd ?? PD_DEFAULTS));
    if (d.kdn >= 0 && op.transferTokens > 0) this.links.reserve(req.id, d.kdn, d.instance, now, op.transferMs);
    else if (d.peer && op.transferTokens > 0) this.peers.reserve(req.id, d.peer.from, d.instance, now, op.transferMs);
    // another replica's request: booked alike, but this replica does not calibrate on it
    this.dispatched.set(req.id, { instance: d.instance, decode: D, kdn: d.kdn, transferTokens: op.transferTokens, inputTokens: req.inputTokens, fwd: 0, blocks: req.blocks, pBase: -1, dBase: -1, kvLoadMs: 0, readyAt: now, firstAt: -1, cumPAtFirst: 0, batch: 0, batchCtx: 0, slotBound: false });
    if (this.predictOnRoute && req.blocks.length) {
      this.index.add(d.instance, req.blocks);
      if (D !== d.instance) this.index.add(D, req.blocks);
    }
    if (this.strategy.onDispatch) this.strategy.onDispatch(this.context(req, now), d);
  }

  /**
   * The dispatched request `id` is ready to be forwarded to its instance at `now` (knowledge
   * prepared). With a strategy proxy cap (`maxForwardPerInstance`) it may have to wait.
   * @returns true = send it now; false = it waits in the instance's proxy queue and comes back,
   *   in FIFO order, from `takeReleased()` after a forwarded request on that instance finishes.
   *   Unknown ids return true.
   */
  forward(id: string, now: number): boolean {
    const e = this.dispatched.get(id);
    if (!e) return true;
    if (e.fwd === 1) return true;
    if (e.fwd === 0) {
      e.readyAt = now;
      e.slotBound = this.loads.loads[e.instance]!.inflight > this.cluster.instances[e.instance]!.engine.maxNumSeqs;
    }
    const cap = this.strategy.maxForwardPerInstance ?? Infinity;
    const q = this.held[e.instance]!;
    if (this.forwarded[e.instance]! < cap && this.heldHead[e.instance]! >= q.length) {
      e.fwd = 1;
      this.forwarded[e.instance]!++;
      return true;
    }
    if (e.fwd === 0) {
      e.fwd = 2;
      q.push(id);
    }
    return false;
  }

  /** Ids released from proxy queues since the last call (send them now), in release order. */
  takeReleased(): string[] {
    if (this.released.length === 0) return EMPTY;
    const r = this.released;
    this.released = [];
    return r;
  }

  /** Requests waiting in instance i's proxy queue. */
  heldCount(i: number): number {
    let c = 0;
    const q = this.held[i]!;
    for (let j = this.heldHead[i]!; j < q.length; j++) if (this.dispatched.get(q[j]!)?.fwd === 2) c++;
    return c;
  }

  /** The KV transfer of request `id` finished at `now` (ACK): the link chain is corrected. */
  onKvTransferDone(id: string, now: number): void {
    if (!this.links.done(id, now)) this.peers.done(id, now);
  }

  /** The P -> D hand-off of disaggregated request `id` finished at `now`: the P -> D link chain is corrected. */
  onPdTransferDone(id: string, now: number): void {
    this.pdLinks.done(id, now);
  }

  /**
   * Disaggregated request `id` falls back to colocated execution on its prefill instance (its
   * decode instance died or refused it, the gateway's fallback): its decode booking moves to P
   * and its P -> D reservation is dropped. No-op for unknown or colocated requests.
   */
  colocate(id: string, now: number): void {
    const e = this.dispatched.get(id);
    if (!e || e.decode === e.instance) return;
    this.loads.colocate(id, now);
    this.pdLinks.done(id, now);
    if (e.blocks.length && e.firstAt >= 0) {
      this.holding.remove(e.decode, e.blocks);
      this.holding.add(e.instance, e.blocks);
    }
    e.decode = e.instance;
  }

  /** First token of `id` observed at `now`: its prefill load is released. */
  onFirstToken(id: string, now: number): void {
    this.loads.firstToken(id, now);
    const e = this.dispatched.get(id);
    if (e && e.firstAt < 0) {
      e.firstAt = now;
      const i = e.instance;
      if (this.calibrator && e.pBase >= 0) {
        // prefill lane: the time the instance spent on this prefill (module doc of calibration.ts);
        // not when it may have waited for a running slot (max_num_seqs) instead of prefill
        const lane = now - Math.max(e.readyAt, this.lastFirst[i]!) - e.kvLoadMs;
        if (!e.slotBound && this.calibrator.addLane(e.pBase, e.dBase, lane)) this.refreshView();
        this.cumP[i]! += e.pBase;
      }
      this.lastFirst[i] = now;
      if (e.blocks.length) this.holding.add(e.decode, e.blocks);
      e.cumPAtFirst = this.cumP[i]!;
      const l = this.loads.loads[i]!;
      e.batch = l.decodeReqs;
      e.batchCtx = l.decodeCtxTokens;
    }
    this.strategy.onFirstToken?.(id, now);
  }

  /**
   * `id` completed at `now`: everything it booked is released (and its proxy slot, which may
   * release a waiting request: see `takeReleased`).
   * @param outputTokens tokens it generated, as observed (teaches the output-length predictor)
   */
  onComplete(id: string, now: number, outputTokens?: number): void {
    const e = this.dispatched.get(id);
    this.loads.release(id, now);
    if (!this.links.done(id, now)) this.peers.done(id, now);
    if (e && e.decode !== e.instance) this.pdLinks.done(id, now);
    this.dispatched.delete(id);
    if (e) {
      if (e.blocks.length && e.firstAt >= 0) this.holding.remove(e.decode, e.blocks);
      if (outputTokens !== undefined) this.outputs.observe(e.inputTokens, outputTokens, now);
      if (this.calibrator && outputTokens !== undefined && outputTokens > 1 && e.firstAt >= 0 && e.pBase >= 0 && this.cumP[e.instance] === e.cumPAtFirst) {
        // decode, when no prefill shared its steps (module doc of calibration.ts): k steps at the
        // mean of the batch it joined and the batch it leaves, contexts growing by one per step
        const m = this.cluster.instances[e.instance]!.profile.step;
        const k = outputTokens - 1;
        const l = this.loads.loads[e.instance]!;
        const n = Math.max(1, (e.batch + l.decodeReqs + 1) / 2);
        const ctx = e.batchCtx + (n * k) / 2;
        const Dd = k * (m.decodeSeqMs * n + m.kvReadMsPerToken * ctx);
        const Pd = k * (m.fixedMs + curveMs(m, n));
        if (this.calibrator.addDecode(Pd, Dd, now - e.firstAt)) this.refreshView();
      }
      if (e.fwd === 1) {
        this.forwarded[e.instance]!--;
        this.releaseHeld(e.instance);
      }
    }
    this.strategy.onComplete?.(id, now);
  }

  /** `id` failed or was rejected at `now`: same release as completion (nothing learnt). */
  onAbort(id: string, now: number): void {
    this.onComplete(id, now);
  }

  /** A KV event from an instance (stored / removed / cleared blocks). */
  onKvEvent(ev: KvEvent): void {
    if (ev.instance < 0 || ev.instance >= this.up.length) return;
    // the tier it is about (vLLM `medium`); an unknown tier's events are ignored
    const idx = ev.medium === undefined || ev.medium === 'GPU' ? this.index : ev.medium === 'CPU' ? this.cpuIndex : ev.medium === 'REMOTE' ? this.remoteIndex : null;
    if (ev.kind === 'cleared' && ev.medium === undefined) {
      this.index.clear(ev.instance);
      this.cpuIndex?.clear(ev.instance);
      this.remoteIndex?.clear(ev.instance);
      return;
    }
    if (!idx) return;
    if (ev.kind === 'stored') idx.add(ev.instance, ev.blocks);
    else if (ev.kind === 'removed') idx.remove(ev.instance, ev.blocks);
    else idx.clear(ev.instance);
  }

  /** Scraped engine metrics of instance i (for strategies with `metricsIntervalMs`). Non-finite values are ignored. */
  onInstanceMetrics(i: number, m: InstanceMetrics): void {
    if (i < 0 || i >= this.metrics.length) return;
    if (![m.waiting, m.running, m.kvUsage, m.at].every(Number.isFinite)) return;
    this.metrics[i] = { waiting: m.waiting, running: m.running, kvUsage: m.kvUsage, at: m.at };
  }

  /** Instance i is back (healthy). Its cache starts empty. */
  onInstanceUp(i: number): void {
    this.up[i] = true;
  }

  /**
   * Instance i is down: it gets no more requests, its index entries and link reservations are
   * dropped and its booked load released (including requests waiting in its proxy queue).
   * Returns the ids that were in flight on it.
   */
  onInstanceDown(i: number, now: number): string[] {
    this.up[i] = false;
    this.index.clear(i);
    this.cpuIndex?.clear(i);
    this.remoteIndex?.clear(i);
    this.links.dropInstance(i, now);
    if (this.roles) this.pdLinks.dropInstance(i, now);
    const ids = this.loads.releaseInstance(i, now);
    for (const id of ids) {
      const e = this.dispatched.get(id);
      if (e && e.blocks.length && e.firstAt >= 0 && e.decode !== i) this.holding.remove(e.decode, e.blocks);
      this.dispatched.delete(id);
    }
    this.holding.clear(i);
    this.forwarded[i] = 0;
    this.held[i] = [];
    this.heldHead[i] = 0;
    this.metrics[i] = null;
    this.strategy.onInstanceDown?.(i);
    return ids;
  }

  /** The calibrated step factors (1, 1 when calibration is off). */
  stepFactors(): StepFactors {
    return this.calibrator ? { ...this.calibrator.factors } : { prefill: 1, decode: 1 };
  }

  /** Rebuilds the predictor's view of every instance from the calibrated factors. */
  private refreshView(): void {
    const f = this.calibrator!.factors;
    const byProfile = new Map<Profile, Profile>();
    this.cluster.instances.forEach((s, i) => {
      let p = byProfile.get(s.profile);
      if (!p) {
        p = scaleProfile(s.profile, f);
        byProfile.set(s.profile, p);
      }
      this.view[i] = { ...s, profile: p };
    });
  }

  /** Moves waiting requests of instance i into `released` while it has free proxy slots. */
  private releaseHeld(i: number): void {
    const cap = this.strategy.maxForwardPerInstance ?? Infinity;
    const q = this.held[i]!;
    let h = this.heldHead[i]!;
    while (h < q.length && this.forwarded[i]! < cap) {
      const id = q[h++]!;
      const e = this.dispatched.get(id);
      if (!e || e.fwd !== 2) continue; // aborted while waiting
      e.fwd = 1;
      this.forwarded[i]!++;
      this.released.push(id);
    }
    if (h >= q.length) {
      this.held[i] = [];
      h = 0;
    } else if (h > 1024 && h * 2 > q.length) {
      this.held[i] = q.slice(h);
      h = 0;
    }
    this.heldHead[i] = h;
  }

  private ctxObj: EngineContext | null = null;

  /**
   * The read-only decision context for `req` at `now`. One object is reused for every decision
   * (decisions are not re-entrant): a strategy must not keep it past decide / onDispatch.
   */
  context(req: EngineRequest, now: number): DecideContext {
    const c = (this.ctxObj ??= new EngineContext(this.cluster, this.view, this.holding, this.index, this.loads, this.links, this.peers, this.pdLinks, this.up, this.metrics, this.rngFn, this.scratch, this.matchBuf, this.cpuIndex, this.remoteIndex));
    c.reset(req, now, req.maxTokens !== undefined && req.maxTokens > 0 ? req.maxTokens : this.outputs.predict(req.inputTokens, now));
    return c;
  }
}

const EMPTY: string[] = [];

/** The engine's DecideContext: plain fields and methods, reset per decision (no closures). */
class EngineContext implements DecideContext {
  now = 0;
  req!: CausalRequest;
  expectedOutputTokens = 1;
  bestMatch = 0;
  readonly n: number;
  private coverage: number[] | null = null;
  private readonly peerLink: LinkSpec;
  /** blend spans per KDN for the current request (computed on first use). */
  private spans: Array<Array<[number, number]>> | null = null;
  private readonly meetScratch = emptyPrediction();
  readonly pd: PdSpec;
  readonly hasRoles: boolean;
  /** per instance: may take a prefill (role prefill or mixed). */
  private readonly prefillOk: boolean[];
  /** per instance, CPU-tier and remote-tier blocks after the GPU match (valid when `tierReady`). */
  private readonly tierCpu: Int32Array;
  private readonly tierRemote: Int32Array;
  private tierReady = false;

  constructor(
    readonly cluster: ClusterSpec,
    private readonly view: InstanceSpec[],
    private readonly holding: ActiveBlocks,
    readonly index: PrefixIndex,
    private readonly loads: LoadBook,
    private readonly links: LinkBook,
    private readonly peers: LinkBook,
    private readonly pdLinks: LinkBook,
    private readonly up: boolean[],
    private readonly scraped: (InstanceMetrics | null)[],
    readonly rng: () => number,
    private readonly scratch: PredictInput,
    readonly match: Int32Array,
    private readonly cpuIndex: PrefixIndex | null = null,
    private readonly remoteIndex: PrefixIndex | null = null,
  ) {
    this.n = cluster.instances.length;
    this.tierCpu = new Int32Array(this.n);
    this.tierRemote = new Int32Array(this.n);
    this.peerLink = cluster.peerLink ?? PEER_LINK_DEFAULT;
    this.pd = cluster.pd ?? PD_DEFAULTS;
    this.prefillOk = cluster.instances.map(prefillCapable);
    this.hasRoles = hasRoles(cluster.instances);
  }

  reset(req: CausalRequest, now: number, expectedOut: number): void {
    this.req = req;
    this.now = now;
    this.expectedOutputTokens = expectedOut;
    this.match.fill(0);
    this.bestMatch = req.blocks.length ? this.index.match(req.blocks, this.match) : 0;
    this.coverage = kdnCoverage(this.cluster, req);
    this.spans = null;
    this.tierReady = false;
  }

  /** Walks, per instance, the blocks after its GPU match through its CPU then remote tier index. */
  private walkTiers(): void {
    this.tierReady = true;
    const blocks = this.req.blocks;
    const cpu = this.cpuIndex;
    const rem = this.remoteIndex;
    for (let i = 0; i < this.n; i++) {
      let c = 0;
      let r = 0;
      if (cpu || rem) {
        for (let k = this.match[i]!; k < blocks.length; k++) {
          const b = blocks[k]!;
          if (cpu && cpu.has(i, b)) c++;
          else if (rem && rem.has(i, b)) r++;
          else break;
        }
      }
      this.tierCpu[i] = c;
      this.tierRemote[i] = r;
    }
  }

  cpuTokens(i: number): number {
    if (!this.cpuIndex) return 0;
    if (!this.tierReady) this.walkTiers();
    return Math.max(0, Math.min(this.tierCpu[i]! * this.req.blockSize, this.req.inputTokens - 1 - this.cachedTokens(i)));
  }

  remoteTokens(i: number): number {
    if (!this.remoteIndex) return 0;
    if (!this.tierReady) this.walkTiers();
    return Math.max(0, Math.min(this.tierRemote[i]! * this.req.blockSize, this.req.inputTokens - 1 - this.cachedTokens(i) - this.cpuTokens(i)));
  }

  blendFor(i: number): BlendChoice | null {
    const req = this.req;
    if (req.knowledgeTokens <= 0 || req.knowledge.length === 0 || !this.cluster.instances[i]!.blend) return null;
    this.spans ??= this.cluster.kdns.map((k) => blendSpans(k, req, this.cluster.chunkTokens));
    const hit = this.cachedTokens(i);
    let best: BlendChoice | null = null;
    for (let k = 0; k < this.spans.length; k++) {
      const t = spanTokensFrom(this.spans[k]!, hit);
      if (t <= 0) continue;
      const w = this.links.waitMs(k, i, this.now);
      if (!best || t > best.tokens || (t === best.tokens && w < best.linkWaitMs)) best = { kdn: k, spans: this.spans[k]!, tokens: t, linkWaitMs: w };
    }
    return best;
  }

  cachedTokens(i: number): number {
    return Math.min(this.match[i]! * this.req.blockSize, this.req.inputTokens - 1);
  }

  load(i: number): InstanceLoad {
    return this.loads.loads[i]!;
  }

  spec(i: number): InstanceSpec {
    return this.view[i]!;
  }

  backlogMs(i: number): number {
    return this.loads.backlogMs(i, this.now);
  }

  isUp(i: number): boolean {
    return this.up[i]! && this.prefillOk[i]!;
  }

  alive(i: number): boolean {
    return this.up[i]!;
  }

  role(i: number): InstanceRole {
    return roleOf(this.cluster.instances[i]!);
  }

  pdLinkWaitMs(from: number, to: number, at: number): number {
    return this.pdLinks.waitMs(from, to, at);
  }

  metrics(i: number): InstanceMetrics | null {
    return this.scraped[i] ?? null;
  }

  peerLinkWaitMs(from: number, to: number): number {
    return this.peers.waitMs(from, to, this.now);
  }

  kdnFor(i: number): KdnChoice | null {
    const coverage = this.coverage;
    if (coverage === null) return null;
    let bestK = -1;
    let bestCov = 0;
    let bestWait = Infinity;
    for (let k = 0; k < coverage.length; k++) {
      const cov = coverage[k]!;
      if (cov <= 0) continue;
      const w = this.links.waitMs(k, i, this.now);
      if (cov > bestCov || (cov === bestCov && w < bestWait)) {
        bestK = k;
        bestCov = cov;
        bestWait = w;
      }
    }
    return bestK < 0 ? null : { kdn: bestK, reuseTokens: bestCov, linkWaitMs: bestWait };
  }

  predict(i: number, intent: Intent, reuseTokens?: number): Prediction {
    return this.predictInto(emptyPrediction(), i, intent, reuseTokens);
  }

  predictInto(out: Prediction, i: number, intent: Intent, reuseTokens?: number, peer?: { from: number; tokens: number }): Prediction {
    const req = this.req;
    const cluster = this.cluster;
    const inst = this.view[i]!;
    const pi = this.scratch;
    pi.inst = inst;
    pi.load = this.loads.loads[i]!;
    pi.backlogMs = this.loads.backlogMs(i, this.now);
    pi.promptTokens = req.inputTokens;
    pi.outputTokens = this.expectedOutputTokens;
    pi.knowledgeTokens = req.knowledgeTokens;
    pi.cachedTokens = this.cachedTokens(i);
    pi.cpuTokens = this.cpuTokens(i);
    pi.remoteTokens = this.remoteTokens(i);
    pi.heldKvTokens = req.blocks.length ? this.holding.distinct[i]! * req.blockSize : undefined;
    pi.intent = intent;
    pi.blendTokens = 0;
    pi.blendRecompute = 0;
    pi.overlapSplit = undefined;
    pi.peerTokens = 0;
    if (intent === 'blend') {
      const bc = this.blendFor(i);
      pi.reuseTokens = 0;
      pi.blendTokens = bc ? bc.tokens : 0;
      pi.blendRecompute = bc && inst.blend ? blendRecomputeTokens(bc.tokens, inst.blend, inst.profile.model.layers) : 0;
      pi.kdn = bc ? cluster.kdns[bc.kdn] : cluster.kdns[0];
      pi.link = bc ? cluster.links[bc.kdn]![i] : undefined;
      pi.linkWaitMs = bc ? bc.linkWaitMs : 0;
      return predictInto(out, pi);
    }
    const kc = intent === 'kvcache' || intent === 'hybrid' || intent === 'overlap' || req.knowledgeTokens > 0 ? this.kdnFor(i) : null;
    pi.reuseTokens = kc ? (intent === 'overlap' ? kc.reuseTokens : Math.min(reuseTokens ?? kc.reuseTokens, kc.reuseTokens)) : 0;
    pi.kdn = kc ? cluster.kdns[kc.kdn] : cluster.kdns[0];
    pi.link = kc ? cluster.links[kc.kdn]![i] : undefined;
    pi.linkWaitMs = kc ? kc.linkWaitMs : 0;
    if (peer && peer.from !== i) {
      pi.peerTokens = peer.tokens;
      pi.peerLink = this.peerLink;
      pi.peerLinkWaitMs = this.peers.waitMs(peer.from, i, this.now);
    }
    if (intent === 'overlap') {
      if (reuseTokens === undefined) overlapMeetSplit(pi, cluster.chunkTokens, this.meetScratch);
      else pi.overlapSplit = reuseTokens;
    }
    return predictInto(out, pi);
  }
}

/** An option made executable on one instance (see {@link resolveOption}). */
export interface ResolvedOption {
  intent: Intent;
  /** KDN index, -1 when none serves the option. */
  kdn: number;
  /** Decision.reusedTokens of the option. */
  reuse: number;
  /** overlap: the split point; -1 otherwise. */
  split: number;
  pred: Prediction;
  /** what was changed and why, to append to the decision reason (e.g. ";no-kdn-kv"). */
  reason: string;
}

/**
 * Turns a strategy's (or a client's) intent for instance i into what can run there: blend and
 * overlap only where the instance declares them (else kvcache); KV intents without KV beyond
 * the local hit become text; a fixed hybrid without a split gets the best sequential split; an
 * overlap takes the split where compute meets load (kvcache when nothing is computed first,
 * text when nothing is loaded). `prediction` (the strategy's, of `wanted`) is reused when the
 * intent stays `wanted`.
 */
export function resolveOption(ctx: DecideContext, i: number, wanted: Intent, reuseTokens: number | undefined, prediction?: Prediction, peer?: { from: number; tokens: number }): ResolvedOption {
  let intent = wanted;
  const inst = ctx.cluster.instances[i]!;
  let reason = '';
  // capabilities: blend / overlap only where the instance declares them
  if ((intent === 'blend' && !inst.blend) || (intent === 'overlap' && !inst.overlap)) {
    reason += `;no-${intent}-capability`;
    intent = 'kvcache';
  }
  let reuse = 0;
  let kdn = -1;
  if (intent === 'blend') {
    const bc = ctx.blendFor(i);
    if (!bc || bc.tokens <= 0) {
      intent = 'text';
      reason += ';no-kdn-kv';
    } else {
      kdn = bc.kdn;
      for (const [s, e] of bc.spans) reuse += e - s;
    }
  }
  const kc = intent === 'kvcache' || intent === 'hybrid' || intent === 'overlap' ? ctx.kdnFor(i) : null;
  if (intent === 'kvcache' || intent === 'hybrid' || intent === 'overlap') {
    if (!kc || kc.reuseTokens <= ctx.cachedTokens(i)) {
      // nothing beyond the local hit to load (or no KDN): the knowledge goes as text
      if (!kc || kc.reuseTokens <= 0) reason += ';no-kdn-kv';
      if (!kc || intent === 'overlap') intent = 'text';
    }
    if (kc && intent !== 'text') {
      kdn = kc.kdn;
      if (intent === 'overlap') reuse = kc.reuseTokens;
      else if (intent === 'hybrid' && reuseTokens === undefined) reuse = bestHybridSplit(ctx, i, kc.reuseTokens, ctx.cluster.chunkTokens);
      else reuse = Math.min(reuseTokens ?? kc.reuseTokens, kc.reuseTokens);
    }
    if (intent === 'hybrid' && reuse >= (kc?.reuseTokens ?? 0)) intent = 'kvcache';
    if (intent !== 'text' && reuse <= 0) intent = 'text';
  }
  const usedPeer = peer && (intent === 'none' || intent === 'text') ? peer : undefined;
  let pred: Prediction;
  if (prediction !== undefined && intent === wanted) pred = prediction;
  else pred = ctx.predictInto(emptyPrediction(), i, intent, intent === 'overlap' ? reuseTokens : reuse, usedPeer);
  let split = -1;
  if (intent === 'overlap') {
    if (pred.transferTokens <= 0) {
      // the split reached the end of the KV: everything is computed
      intent = 'text';
      pred = ctx.predict(i, 'text', 0);
    } else if (reuse - pred.transferTokens <= ctx.cachedTokens(i)) {
      intent = 'kvcache'; // nothing computed before the tail: that is loading it all
      pred = ctx.predict(i, 'kvcache', reuse);
    } else split = reuse - pred.transferTokens;
  }
  if (intent === 'text' || intent === 'none') {
    kdn = -1;
    reuse = 0;
  }
  return { intent, kdn, reuse, split, pred, reason };
}

/**
 * The sequential hybrid split (load [0, x), compute the rest) with the smallest predicted TTFT
 * on instance i, over the chunk multiples strictly between the local hit and the KDN coverage;
 * `coverage` (i.e. kvcache) when there is none. Used when a fixed-intent strategy asks for
 * `hybrid` without a split.
 */
export function bestHybridSplit(ctx: DecideContext, i: number, coverage: number, chunk: number): number {
  const hit = ctx.cachedTokens(i);
  let best = coverage;
  let bestT = Infinity;
  const scratch = emptyPrediction();
  for (let x = (Math.floor(hit / chunk) + 1) * chunk; x < coverage; x += chunk) {
    const t = ctx.predictInto(scratch, i, 'hybrid', x).ttftMs;
    if (t < bestT - 1e-9) {
      bestT = t;
      best = x;
    }
  }
  return best;
}

/** Picks the index of the minimum of `score` over up instances; ties by lower load then rng. */
export function argminUp(ctx: DecideContext, score: (i: number) => number): number {
  let best = -1;
  let bestS = Infinity;
  let ties = 0;
  for (let i = 0; i < ctx.n; i++) {
    if (!ctx.isUp(i)) continue;
    const s = score(i);
    if (s < bestS - 1e-9) {
      best = i;
      bestS = s;
      ties = 1;
    } else if (Math.abs(s - bestS) <= 1e-9) {
      // reservoir sampling among exact ties keeps the choice uniform and seeded
      ties++;
      if (ctx.rng() * ties < 1) best = i;
    }
  }
  return best;
}
