/**
 * The policy engine: one object per cluster, used unchanged by the simulator and the live
 * gateway. `decide()` is pure with respect to the engine state (it only reads it, plus the
 * seeded RNG); the bookkeeping hooks (`onDispatch`, `onKvTransferDone`, `onFirstToken`,
 * `onComplete`, `onAbort`, `onKvEvent`, `onInstanceUp/Down`) mutate it and must be called by
 * both drivers in the same order. Time is always passed in (ms); the engine has no clock.
 */
import seedrandom from 'seedrandom';
import { LinkBook } from './links.js';
import { LoadBook, type InstanceLoad } from './load.js';
import { emptyPrediction, predictInto, type PredictInput, type Prediction } from './predict.js';
import { PrefixIndex } from './prefix-index.js';
import type { Alternative, ClusterSpec, Decision, EngineRequest, Intent, KvEvent } from './types.js';

/** The KDN chosen to serve a request's knowledge on one instance. */
export interface KdnChoice {
  kdn: number;
  /** prompt-prefix tokens whose KV that KDN can provide (chunk-aligned, < prompt). */
  reuseTokens: number;
  linkWaitMs: number;
}

/** Read-only view of the engine state for one decision. */
export interface DecideContext {
  readonly now: number;
  readonly req: EngineRequest;
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
  load(i: number): InstanceLoad;
  /** predicted prefill backlog of instance i now (ms). */
  backlogMs(i: number): number;
  isUp(i: number): boolean;
  /** seeded uniform [0, 1). */
  rng(): number;
  /** best KDN for instance i (max coverage, then least link wait); null when none or no knowledge. */
  kdnFor(i: number): KdnChoice | null;
  /** predicted breakdown of an option; reuse defaults to the KDN's full coverage. */
  predict(i: number, intent: Intent, reuseTokens?: number): Prediction;
  /** `predict` writing into `out` (no allocation). */
  predictInto(out: Prediction, i: number, intent: Intent, reuseTokens?: number): Prediction;
}

/** What a strategy returns; the engine completes it into a Decision. */
export interface StrategyChoice {
  instance: number;
  intent: Intent;
  /** KV tokens to take from the KDN (kvcache/hybrid); default: full coverage for kvcache. */
  reuseTokens?: number;
  alternatives: Alternative[];
  reason: string;
  /** the strategy's own prediction of the chosen option, when it computed one. */
  prediction?: Prediction;
}

/** A named router + intent policy. Strategies may keep private state (affinity, trees). */
export interface Strategy {
  readonly name: string;
  decide(ctx: DecideContext): StrategyChoice;
  onDispatch?(ctx: DecideContext, d: Decision): void;
  onComplete?(id: string, now: number): void;
  onInstanceDown?(i: number): void;
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
}

interface Dispatched {
  instance: number;
  kdn: number;
  transferTokens: number;
}

/** The policy engine. */
export class Engine {
  readonly index: PrefixIndex;
  readonly loads: LoadBook;
  readonly links: LinkBook;
  readonly up: boolean[];
  private readonly rngFn: () => number;
  private readonly matchBuf: Int32Array;
  private readonly predictOnRoute: boolean;
  private readonly dispatched = new Map<string, Dispatched>();
  /** reusable predictor input (decisions are not re-entrant). */
  private readonly scratch: PredictInput;
  /** the last decision's context and prediction, reused by onDispatch when it matches. */
  private last: { req: EngineRequest; now: number; ctx: DecideContext; d: Decision; pred: Prediction } | null = null;
  /** decisions made, per intent. */
  readonly intentCounts: Record<Intent, number> = { none: 0, text: 0, kvcache: 0, hybrid: 0 };

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
    this.loads = new LoadBook(n);
    this.links = new LinkBook(cluster.kdns.length, n);
    this.up = new Array<boolean>(n).fill(true);
    this.rngFn = seedrandom(String(opts.seed ?? 1));
    this.matchBuf = new Int32Array(n);
    this.predictOnRoute = opts.predictOnRoute ?? true;
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
   * Decides instance, KDN, intent and reuse for a request at time `now` (ms). Does not book
   * anything: call `onDispatch` with the result when the request is actually sent.
   * @throws Error when no instance is up.
   */
  decide(req: EngineRequest, now: number): Decision {
    const ctx = this.context(req, now);
    if (!this.up.some(Boolean)) throw new Error('no instance is up');
    const c = this.strategy.decide(ctx);
    let intent = c.intent;
    if (req.knowledgeTokens <= 0) intent = 'none';
    const kc = intent === 'kvcache' || intent === 'hybrid' ? ctx.kdnFor(c.instance) : null;
    let reuse = 0;
    let reason = c.reason;
    if (intent === 'kvcache' || intent === 'hybrid') {
      if (!kc || kc.reuseTokens <= 0) {
        intent = 'text';
        reason += ';no-kdn-kv';
      } else reuse = Math.min(c.reuseTokens ?? kc.reuseTokens, kc.reuseTokens);
      if (intent === 'hybrid' && reuse >= (kc?.reuseTokens ?? 0)) intent = 'kvcache';
      if (intent !== 'text' && reuse <= 0) intent = 'text';
    }
    const pred = c.prediction !== undefined && intent === c.intent ? c.prediction : ctx.predict(c.instance, intent, reuse);
    const d: Decision = {
      requestId: req.id,
      strategy: this.strategy.name,
      instance: c.instance,
      kdn: kc && intent !== 'text' && intent !== 'none' ? kc.kdn : -1,
      intent,
      reusedTokens: intent === 'kvcache' || intent === 'hybrid' ? reuse : 0,
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
    };
    this.last = { req, now, ctx, d, pred };
    return d;
  }

  /**
   * Books a decided request at `now`: load on its instance, a link reservation for its KV
   * transfer, and (predict-on-route) its blocks in the index.
   * @returns the predicted link start time (ms) when a transfer was reserved, else -1.
   */
  onDispatch(req: EngineRequest, d: Decision, now: number): number {
    const last = this.last;
    this.last = null;
    const reuse = last !== null && last.req === req && last.now === now && last.d === d;
    const ctx = reuse ? last.ctx : this.context(req, now);
    const pred = reuse ? last.pred : ctx.predict(d.instance, d.intent, d.reusedTokens);
    this.loads.book(req.id, d.instance, now, pred.computeTokens, req.inputTokens + req.outputTokens, req.inputTokens, pred.workMs);
    let start = -1;
    if (d.kdn >= 0 && pred.transferTokens > 0) {
      start = this.links.reserve(req.id, d.kdn, d.instance, now, pred.transferMs);
    }
    this.dispatched.set(req.id, { instance: d.instance, kdn: d.kdn, transferTokens: pred.transferTokens });
    this.intentCounts[d.intent]++;
    if (this.predictOnRoute && req.blocks.length) this.index.add(d.instance, req.blocks);
    this.strategy.onDispatch?.(ctx, d);
    return start;
  }

  /** The KV transfer of request `id` finished at `now` (ACK): the link chain is corrected. */
  onKvTransferDone(id: string, now: number): void {
    this.links.done(id, now);
  }

  /** First token of `id` observed at `now`: its prefill load is released. */
  onFirstToken(id: string, now: number): void {
    this.loads.firstToken(id, now);
  }

  /** `id` completed at `now`: everything it booked is released. */
  onComplete(id: string, now: number): void {
    this.loads.release(id, now);
    this.links.done(id, now);
    this.dispatched.delete(id);
    this.strategy.onComplete?.(id, now);
  }

  /** `id` failed or was rejected at `now`: same release as completion. */
  onAbort(id: string, now: number): void {
    this.onComplete(id, now);
  }

  /** A KV event from an instance (stored / removed / cleared blocks). */
  onKvEvent(ev: KvEvent): void {
    if (ev.instance < 0 || ev.instance >= this.up.length) return;
    if (ev.kind === 'stored') this.index.add(ev.instance, ev.blocks);
    else if (ev.kind === 'removed') this.index.remove(ev.instance, ev.blocks);
    else this.index.clear(ev.instance);
  }

  /** Instance i is back (healthy). Its cache starts empty. */
  onInstanceUp(i: number): void {
    this.up[i] = true;
  }

  /**
   * Instance i is down: it gets no more requests, its index entries and link reservations are
   * dropped and its booked load released. Returns the ids that were in flight on it.
   */
  onInstanceDown(i: number, now: number): string[] {
    this.up[i] = false;
    this.index.clear(i);
    this.links.dropInstance(i, now);
    const ids = this.loads.releaseInstance(i, now);
    for (const id of ids) this.dispatched.delete(id);
    this.strategy.onInstanceDown?.(i);
    return ids;
  }

  private ctxObj: EngineContext | null = null;

  /**
   * The read-only decision context for `req` at `now`. One object is reused for every decision
   * (decisions are not re-entrant): a strategy must not keep it past decide / onDispatch.
   */
  context(req: EngineRequest, now: number): DecideContext {
    const c = (this.ctxObj ??= new EngineContext(this.cluster, this.index, this.loads, this.links, this.up, this.rngFn, this.scratch, this.matchBuf));
    c.reset(req, now);
    return c;
  }
}

/** The engine's DecideContext: plain fields and methods, reset per decision (no closures). */
class EngineContext implements DecideContext {
  now = 0;
  req!: EngineRequest;
  bestMatch = 0;
  readonly n: number;
  private coverage: number[] | null = null;

  constructor(
    readonly cluster: ClusterSpec,
    readonly index: PrefixIndex,
    private readonly loads: LoadBook,
    private readonly links: LinkBook,
    private readonly up: boolean[],
    readonly rng: () => number,
    private readonly scratch: PredictInput,
    readonly match: Int32Array,
  ) {
    this.n = cluster.instances.length;
  }

  reset(req: EngineRequest, now: number): void {
    this.req = req;
    this.now = now;
    this.match.fill(0);
    this.bestMatch = req.blocks.length ? this.index.match(req.blocks, this.match) : 0;
    this.coverage = kdnCoverage(this.cluster, req);
  }

  cachedTokens(i: number): number {
    return Math.min(this.match[i]! * this.req.blockSize, this.req.inputTokens - 1);
  }

  load(i: number): InstanceLoad {
    return this.loads.loads[i]!;
  }

  backlogMs(i: number): number {
    return this.loads.backlogMs(i, this.now);
  }

  isUp(i: number): boolean {
    return this.up[i]!;
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

  predictInto(out: Prediction, i: number, intent: Intent, reuseTokens?: number): Prediction {
    const req = this.req;
    const cluster = this.cluster;
    const kc = intent === 'kvcache' || intent === 'hybrid' || req.knowledgeTokens > 0 ? this.kdnFor(i) : null;
    const reuse = kc ? Math.min(reuseTokens ?? kc.reuseTokens, kc.reuseTokens) : 0;
    const pi = this.scratch;
    pi.inst = cluster.instances[i]!;
    pi.load = this.loads.loads[i]!;
    pi.backlogMs = this.loads.backlogMs(i, this.now);
    pi.promptTokens = req.inputTokens;
    pi.outputTokens = req.outputTokens;
    pi.knowledgeTokens = req.knowledgeTokens;
    pi.cachedTokens = this.cachedTokens(i);
    pi.intent = intent;
    pi.reuseTokens = reuse;
    pi.kdn = kc ? cluster.kdns[kc.kdn] : cluster.kdns[0];
    pi.link = kc ? cluster.links[kc.kdn]![i] : undefined;
    pi.linkWaitMs = kc ? kc.linkWaitMs : 0;
    return predictInto(out, pi);
  }
}

/**
 * Per KDN, the prompt-prefix tokens whose KV it can provide for `req`: the leading knowledge
 * documents it holds, chunk-aligned down (CacheRoute's eff = floor(K/256)·256), capped at
 * prompt - 1. null when the request has no knowledge or the cluster no KDN.
 */
export function kdnCoverage(cluster: ClusterSpec, req: EngineRequest): number[] | null {
  if (req.knowledgeTokens <= 0 || cluster.kdns.length === 0) return null;
  const chunk = cluster.chunkTokens;
  const out = new Array<number>(cluster.kdns.length);
  for (let k = 0; k < cluster.kdns.length; k++) {
    const kd = cluster.kdns[k]!;
    let cov = 0;
    for (const ref of req.knowledge) {
      if (kd.knowledge !== null && !kd.knowledge.has(ref.kid)) break;
      cov += ref.tokens;
    }
    if (req.knowledge.length === 0) cov = kd.knowledge === null ? req.knowledgeTokens : 0;
    cov = Math.floor(cov / chunk) * chunk;
    out[k] = Math.min(cov, req.inputTokens - 1);
  }
  return out;
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
