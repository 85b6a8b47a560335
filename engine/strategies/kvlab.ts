/**
 * `kvlab` (ours): one continuous cost in milliseconds. For every up instance and every intent
 * (text, kvcache, hybrid split points in 256-token chunks, and where the instance declares them
 * blend — every document's KV, CacheBlend — and overlap — the head computed while the tail's KV
 * loads, split where the two meet) the engine's predictor gives the
 * request's TTFT from the booked load (prefill backlog, decoding requests, KV footprint), the
 * prefix hits on that instance and the KDN link state; the option with the lowest cost wins.
 *
 * cost = predicted TTFT + (workWeight + queueWeight · q_i + arrivalWeight · λ_i · W / 2) · W
 *   W   = prefill work (ms) the option adds to instance i (compute + KV load),
 *   q_i = requests booked on i that have not had their first token yet,
 *   λ_i = arrival rate per instance (EWMA of inter-arrival gaps / up instances): the requests
 *         that will arrive at i while W runs (λ_i·W of them) wait W/2 on average.
 * The second term prices the externality of a routing decision: by Little's law the requests
 * that will queue behind this work on i are about as many as are queued there now, and each of
 * them waits W longer. At low load q_i ≈ 0 and the cost is the request's own TTFT; near
 * saturation it makes cache hits (small W) and short queues worth more than a few ms of one
 * request's TTFT, which keeps prefix affinity instead of spreading every request onto the
 * momentarily shortest queue (the collapse of pure greedy TTFT routing under overload).
 * Both weights are 1, the first-order M/G/1 (Little's law) values; the evaluation protocol's
 * tuning set (docs/EVALUATION.md; first half of the Mooncake conversation trace and two generated
 * agent traces) chose them over {1, 2, 3}² (engine/strategies/kvlab-params.ts, versioned). Ties
 * (exactly equal cost by default) go to the smaller booked KV footprint, then a seeded uniform
 * choice.
 *
 * Options also priced (same cost): moving the longest cached prefix from another instance over
 * the instance-to-instance link (`peer`, as Mooncake's cache load balancing), and admission
 * control (`ttftSloMs` / `tbtSloMs`: reject what is predicted to miss the SLO).
 *
 * Hybrid split: with link wait w, transfer t(X) and the instance's backlog b, loading X tokens
 * costs max(w + t(X), b) + load(X) + prefill(rest). Past the point where the transfer stops
 * being hidden behind the backlog, each extra chunk costs transfer time instead of saving
 * prefill, so the optimum is either that point, its neighbour chunk, or an end. We evaluate
 * exactly those candidates (plus 0 and full) with the predictor.
 *
 * P/D (a cluster with roles): the prefill instance is the option above (over instances that take
 * prefills); then colocated vs disaggregated and the decode instance are priced in ms by
 * engine/pd.ts `priceDecode`: expected output tokens × predicted TBT on the decode instance, plus
 * for a hand-off the P -> D link wait and the transfer time the client sees; the cheapest wins.
 */
import { kvWireBytes, prefillAloneMs, transferMs } from '../costmodel.js';
import { PEER_LINK_DEFAULT, type DecideContext, type Strategy, type StrategyChoice } from '../engine.js';
import { priceDecode } from '../pd.js';
import { copyPrediction, emptyPrediction, tbtEstimateMs, type Prediction } from '../predict.js';
import type { Alternative, Intent } from '../types.js';
import { KVLAB_COST } from './kvlab-params.js';

/** Parameters of the `kvlab` strategy (all costs in ms). */
export interface KvlabParams {
  /** weight of the option's own prefill work (ms per ms) added to the cost. */
  workWeight: number;
  /**
   * weight of the queueing externality: the option's prefill work × the requests already
   * waiting for prefill on that instance (they and the ones that will join behind them).
   */
  queueWeight: number;
  /**
   * weight of the arrival externality: requests that will arrive at the instance while the
   * option's work runs (rate per instance × W / 2 on average) also wait W.
   */
  arrivalWeight: number;
  /** smoothing of the arrival-rate estimate (EWMA weight of each new inter-arrival gap). */
  rateAlpha: number;
  /** consider hybrid splits. */
  hybrid: boolean;
  /**
   * consider moving the longest cached prefix from the instance that holds it over the
   * instance-to-instance KV link (as Mooncake's cache load balancing does), priced like every
   * other option: link wait + transfer, then prefill of the rest.
   */
  peer: boolean;
  /** consider `blend` (every document's KV, a share recomputed) on instances that support it. */
  blend: boolean;
  /** consider `overlap` (head computed while the tail's KV loads, split where they meet) on instances that support it. */
  overlap: boolean;
  /** costs within min(tieMaxMs, max(tieMs, tieFrac × cost)) of each other count as ties (ms, fraction, ms). */
  tieMs: number;
  tieFrac: number;
  tieMaxMs: number;
  /**
   * admission control (Mooncake-style early rejection, counted as rejected): reject when the
   * best option's predicted TTFT exceeds this (ms; 0 = off)
   */
  ttftSloMs: number;
  /** … or when the chosen instance's predicted TBT (engine/predict.ts `tbtEstimateMs`) exceeds this (ms; 0 = off). */
  tbtSloMs: number;
  /**
   * form of the externality: `linear` = the first-order (queueWeight·q_i + arrivalWeight·λ_i·W/2)·W
   * (default); `busy` = the M/G/1 busy-period marginal delay λ_i·(D_i + W/2)·W / (1 − ρ) ×
   * externalityWeight (module doc; measured worse on the tuning set, docs/EVALUATION.md).
   */
  externality: 'busy' | 'linear';
  /** weight of the busy-period externality (theory: 1). */
  externalityWeight: number;
  /** cap of the utilisation estimate in 1/(1 − ρ) (the busy period of an overloaded queue is unbounded). */
  rhoMax: number;
  /** time constant of the utilisation estimate (EWMA of the booked work per ms), ms. */
  workTauMs: number;
}

/**
 * Defaults: the cost parameters of engine/strategies/kvlab-params.ts (`KVLAB_COST`, the one
 * versioned place; its version is in every summary), hybrid splits, peer moves, blend and overlap
 * on (where instances declare them), no admission control.
 */
export const KVLAB_DEFAULTS: KvlabParams = { ...KVLAB_COST, hybrid: true, peer: true, blend: true, overlap: true, ttftSloMs: 0, tbtSloMs: 0 };

/** The `kvlab` strategy (module doc): minimum predicted cost over instances × intents × splits. */
export class KvlabStrategy implements Strategy {
  readonly name = 'kvlab';
  private readonly p: KvlabParams;
  private readonly scratch: Prediction = emptyPrediction();
  /** EWMA of the inter-arrival gap (ms) and the last arrival time seen. */
  private gapMs = -1;
  private lastArrival = -1;
  /** booked work (ms) decayed with time constant workTauMs, and when it was last updated. */
  private workAcc = 0;
  private workAt = -1;
  constructor(params: Partial<KvlabParams> = {}) {
    this.p = { ...KVLAB_DEFAULTS, ...params };
  }

  decide(ctx: DecideContext): StrategyChoice {
    const req = ctx.req;
    const alternatives: Alternative[] = [];
    // arrival rate per up instance (requests per ms), from an EWMA of inter-arrival gaps
    let ups = 0;
    for (let i = 0; i < ctx.n; i++) if (ctx.isUp(i)) ups++;
    const perInstanceRate = this.gapMs > 0 ? 1 / (this.gapMs * Math.max(1, ups)) : 0;
    const aw = this.p.arrivalWeight * perInstanceRate * 0.5;
    // busy-period externality: utilisation = booked work per ms per instance (EWMA)
    const p = this.p;
    const busy = p.externality === 'busy';
    const decay = this.workAt >= 0 && ctx.now > this.workAt ? Math.exp(-(ctx.now - this.workAt) / p.workTauMs) : 1;
    const rho = Math.min(p.rhoMax, (this.workAcc * decay) / p.workTauMs / Math.max(1, ups));
    const kBusy = (p.externalityWeight * perInstanceRate) / (1 - rho);
    /** the externality of adding work W (ms) to instance i whose prefill backlog is D (ms). */
    const ext = (i: number, W: number, D: number): number => (busy ? kBusy * (D + W / 2) * W : (p.workWeight + p.queueWeight * ctx.load(i).prefillReqs + aw * W) * W);
    const scratch = this.scratch;
    const bestPred = emptyPrediction();
    let bestI = -1;
    let bestIntent: Intent = 'none';
    let bestReuse = 0;
    let bestCost = Infinity;
    let ties = 1;
    let bestPeer: { from: number; tokens: number } | undefined;
    let peerPick: { from: number; tokens: number } | undefined;
    const consider = (i: number, intent: Intent, reuse: number | undefined, peer?: { from: number; tokens: number }) => {
      const pred = ctx.predictInto(scratch, i, intent, reuse, peer);
      if (intent === 'overlap') {
        reuse = (ctx.kdnFor(i)?.reuseTokens ?? 0) - pred.transferTokens; // the split
        // the meet point loads nothing (that is text) or everything (that is kvcache)
        if (pred.transferTokens <= 0 || reuse <= ctx.cachedTokens(i)) return;
      }
      const cost = pred.ttftMs + ext(i, pred.workMs, ctx.backlogMs(i));
      const a: Alternative = { instance: i, intent, score: round3(cost), ttftMs: round3(pred.ttftMs) };
      if (intent === 'hybrid' || intent === 'overlap') a.reusedTokens = reuse;
      alternatives.push(a);
      // costs closer than the tolerance are ties (prediction noise, wall-clock jitter in live mode):
      // the smaller booked KV footprint wins (like Dynamo's smallest-tree tie-break), then a seeded
      // uniform choice — a fixed order (lowest index) piles every cold prefix onto the first
      // instances, which then keep their sessions through prefix affinity
      const tol = Math.min(this.p.tieMaxMs, Math.max(this.p.tieMs, this.p.tieFrac * Math.min(cost, bestCost)));
      let take = bestI < 0 || cost < bestCost - tol;
      if (!take && Math.abs(cost - bestCost) <= tol) {
        const kv = ctx.load(i).kvTokens;
        const kvBest = ctx.load(bestI).kvTokens;
        if (kv < kvBest) {
          take = true;
          ties = 1;
        } else if (kv === kvBest) take = ctx.rng() * ++ties < 1;
      } else if (take) ties = 1;
      if (take) {
        bestI = i;
        bestIntent = intent;
        bestReuse = reuse ?? 0;
        bestCost = cost;
        peerPick = peer;
        copyPrediction(bestPred, pred);
      }
    };
    if (this.p.peer && ctx.bestMatch > 0) {
      // the instance holding the longest cached prefix (first one among equals)
      for (let i = 0; i < ctx.n; i++) {
        if (!ctx.isUp(i) || ctx.match[i] !== ctx.bestMatch) continue;
        bestPeer = { from: i, tokens: ctx.cachedTokens(i) };
        break;
      }
    }
    const chunk = ctx.cluster.chunkTokens;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      if (req.knowledgeTokens <= 0) {
        consider(i, 'none', 0);
        continue;
      }
      consider(i, 'text', 0);
      const inst = ctx.spec(i);
      if (this.p.blend && inst.blend && ctx.blendFor(i)) consider(i, 'blend', 0);
      const kc = ctx.kdnFor(i);
      if (!kc || kc.reuseTokens <= 0) continue;
      const hit = ctx.cachedTokens(i);
      if (kc.reuseTokens <= hit) continue; // nothing to transfer: text already reuses the local cache
      consider(i, 'kvcache', kc.reuseTokens);
      if (this.p.overlap && inst.overlap) consider(i, 'overlap', undefined);
      if (!this.p.hybrid) continue;
      // hybrid candidates around the point where the transfer stops being hidden
      const kdn = ctx.cluster.kdns[kc.kdn]!;
      const link = ctx.cluster.links[kc.kdn]![i]!;
      const perToken = transferMs(kvWireBytes(1e6, inst.profile.model.kvBytesPerToken, kdn), { ...link, latencyMs: 0 }) / 1e6;
      const slack = ctx.backlogMs(i) - kc.linkWaitMs - link.latencyMs;
      const hidden = perToken > 0 ? hit + Math.max(0, slack) / perToken : kc.reuseTokens;
      const x0 = Math.floor(hidden / chunk) * chunk;
      const cands = new Set<number>([x0, x0 + chunk, Math.floor(kc.reuseTokens / 2 / chunk) * chunk]);
      for (const x of cands) if (x > hit && x < kc.reuseTokens) consider(i, 'hybrid', x);
    }
    if (bestPeer !== undefined) {
      // peer moves, after every local option: an exact lower bound (transfer and queue overlap at
      // best, the rest prefills alone, no decode interference) skips the ones that cannot win
      const peer = bestPeer;
      const intent: Intent = req.knowledgeTokens > 0 ? 'text' : 'none';
      const link = ctx.cluster.peerLink ?? PEER_LINK_DEFAULT;
      for (let i = 0; i < ctx.n; i++) {
        if (!ctx.isUp(i) || i === peer.from || peer.tokens <= ctx.cachedTokens(i)) continue;
        const prof = ctx.spec(i).profile;
        const w = prefillAloneMs(prof, peer.tokens, req.inputTokens - peer.tokens);
        const ready = ctx.peerLinkWaitMs(peer.from, i) + transferMs((peer.tokens - ctx.cachedTokens(i)) * prof.model.kvBytesPerToken, link);
        const lb = Math.max(ready, ctx.backlogMs(i)) + prof.step.frontendMsPerRequest + prof.step.apiMs + w + ext(i, w, ctx.backlogMs(i));
        const tol = Math.min(this.p.tieMaxMs, Math.max(this.p.tieMs, this.p.tieFrac * bestCost));
        if (lb > bestCost + tol) continue;
        consider(i, intent, 0, peer);
      }
    }
    if (bestI < 0) throw new Error('no instance is up');
    if (this.lastArrival >= 0 && ctx.now >= this.lastArrival) {
      const gap = ctx.now - this.lastArrival;
      this.gapMs = this.gapMs < 0 ? gap : this.gapMs + this.p.rateAlpha * (gap - this.gapMs);
    }
    this.lastArrival = ctx.now;
    this.workAcc = this.workAcc * decay + bestPred.workMs;
    this.workAt = ctx.now;
    const choice: StrategyChoice = { instance: bestI, intent: bestIntent, reuseTokens: bestReuse, alternatives, reason: peerPick ? 'min-ttft;peer' : 'min-ttft', prediction: bestPred };
    if (peerPick) choice.peer = peerPick;
    let decodeAt = bestI;
    if (ctx.hasRoles) {
      const dp = priceDecode(ctx, bestI, bestPred.ttftMs, bestPred.prefillMs);
      if (dp.decode >= 0) {
        choice.decode = dp.decode;
        decodeAt = dp.decode;
        choice.reason += ';disagg';
      }
    }
    if (this.p.ttftSloMs > 0 && bestPred.ttftMs > this.p.ttftSloMs) choice.reject = `predicted TTFT ${Math.round(bestPred.ttftMs)} ms > SLO ${this.p.ttftSloMs} ms`;
    else if (this.p.tbtSloMs > 0) {
      const tbt = tbtEstimateMs(ctx.spec(decodeAt), ctx.load(decodeAt));
      if (tbt > this.p.tbtSloMs) choice.reject = `predicted TBT ${Math.round(tbt)} ms > SLO ${this.p.tbtSloMs} ms`;
    }
    return choice;
  }
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
