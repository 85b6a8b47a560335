/**
 * `cacheroute`: CacheRoute's scheduler + proxy + IWS injection rule (BJTU-ANT/CacheRoute @ 966be95;
 * reference/cacheroute.md §3, §4.8), with each kvlab instance playing one CacheRoute proxy.
 *
 * Scheduler (scheduler/strategy/cacheroute.py): KDN by knowledge coverage (usable = holds every
 * kid and not overloaded; max KV coverage, then id); instance by (1) load-safety window
 * load_ratio <= min + 0.1 with load_ratio = in-flight / PROXY_MAX_CAPACITY (8), (2) knowledge
 * history affinity (decay 0.9 per decision, +1 per kid, top 256, weighted by document length),
 * (3) lexicographic (-bandwidth, latency, load_ratio, inflight), ties by a round-robin cursor.
 * Proxy (proxy/queue/manager.py `_ready_worker_loop`, core/config.py READY_CONCURRENCY = 8):
 * at most 8 requests per instance are forwarded to vLLM at once (a ready worker holds its slot
 * until the response stream ends); the rest wait FIFO in the proxy's ready queue — modelled by
 * the engine's per-instance proxy queue (`maxForwardPerInstance`, honoured by both drivers).
 * Prediction (manager.py `_reserve_ready_task`, `_predict_prefill_service_s`): a per-instance
 * prefill reservation timeline whose service times come from CacheRoute's fitted four-term TTFT
 * regressor (`queue_predictor`, engine/peer-models.ts), not from kvlab's step model; it ignores
 * the local prefix-cache hit, as upstream. The engine books these service times, so
 * `ctx.backlogMs` is CacheRoute's own `ready_wait`.
 * IWS at the chosen instance (proxy/proxy.py `proxy_chat_completions`, manager.py
 * `estimate_iws_costs`; all ms): text_total = max(text_prepare_wait, ready_wait) + TTFT(P+K+36);
 * kvcache_total = max(ready_wait, kv_queue_wait + kv_transfer(eff)) + redis_load(eff) +
 * TTFT(P+K-eff+36), eff = floor(K/256)·256; kvcache iff kvcache_total + 0.5·kv_queue_wait + 100
 * < text_total.
 */
import { kvLoadMs, kvWireBytes, transferMs } from '../costmodel.js';
import type { DecideContext, Strategy, StrategyChoice } from '../engine.js';
import { cacherouteFit, cacherouteTtftMs } from '../peer-models.js';
import { predictionOf, type Prediction } from '../predict.js';
import type { Alternative, Decision } from '../types.js';

/** CacheRoute parameters (defaults from core/config.py as summarised in the reference). */
export interface CacheRouteParams {
  /** PROXY_MAX_CAPACITY: the scheduler's load ratio is in-flight / this. */
  maxCapacity: number;
  /** READY_CONCURRENCY: requests forwarded to one instance at once (the rest wait in the proxy). */
  readyConcurrency: number;
  loadRatioDelta: number;
  affinityDecay: number;
  affinityTopK: number;
  iwsAlpha: number;
  iwsMarginMs: number;
  headerTokens: number;
  /** KDN overload thresholds on pending link reservations (0 = off). */
  kdnPendingOverload: number;
}

/** CacheRoute's defaults (core/config.py, reference/cacheroute.md §3.5, §4.8). */
export const CACHEROUTE_DEFAULTS: CacheRouteParams = {
  maxCapacity: 8,
  readyConcurrency: 8,
  loadRatioDelta: 0.1,
  affinityDecay: 0.9,
  affinityTopK: 256,
  iwsAlpha: 0.5,
  iwsMarginMs: 100,
  headerTokens: 36,
  kdnPendingOverload: 0,
};

/** The `cacheroute` strategy (module doc); keeps per-instance knowledge affinity tables. */
export class CacheRouteStrategy implements Strategy {
  readonly name = 'cacheroute';
  private readonly p: CacheRouteParams;
  private readonly affinity: Map<string, number>[] = [];
  private cursor = 0;
  readonly maxForwardPerInstance: number;

  constructor(params: Partial<CacheRouteParams> = {}) {
    this.p = { ...CACHEROUTE_DEFAULTS, ...params };
    this.maxForwardPerInstance = this.p.readyConcurrency;
  }

  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    const n = ctx.n;
    while (this.affinity.length < n) this.affinity.push(new Map());
    const req = ctx.req;
    // load-safety window
    let minRatio = Infinity;
    for (let i = 0; i < n; i++) if (ctx.isUp(i)) minRatio = Math.min(minRatio, ctx.load(i).inflight / p.maxCapacity);
    const safe: number[] = [];
    for (let i = 0; i < n; i++) if (ctx.isUp(i) && ctx.load(i).inflight / p.maxCapacity <= minRatio + p.loadRatioDelta + 1e-12) safe.push(i);
    // knowledge affinity
    const score = (i: number) => {
      let s = 0;
      const a = this.affinity[i]!;
      for (const k of req.knowledge) s += (a.get(k.kid) ?? 0) * (k.tokens > 0 ? k.tokens : 1);
      return s;
    };
    let maxS = 0;
    for (const i of safe) maxS = Math.max(maxS, score(i));
    const kept = safe.filter((i) => score(i) >= maxS - 1e-12);
    // lexicographic (-bw, lat, load_ratio, inflight), ties round-robin
    const kc0 = req.knowledgeTokens > 0 ? ctx.kdnFor(kept[0]!) : null;
    const key = (i: number): number[] => {
      const l = kc0 ? ctx.cluster.links[kc0.kdn]![i]! : null;
      const inflight = ctx.load(i).inflight;
      return [l ? -l.bandwidthGbps : 0, l ? l.latencyMs : 1e9, inflight / p.maxCapacity, inflight];
    };
    let tied: number[] = [];
    let bestKey: number[] | null = null;
    for (const i of kept) {
      const k = key(i);
      const c = bestKey === null ? -1 : cmp(k, bestKey);
      if (c < 0) {
        bestKey = k;
        tied = [i];
      } else if (c === 0) tied.push(i);
    }
    // the round-robin cursor only moves when several proxies tie (scheduler/strategy/cacheroute.py)
    let chosen = tied[0]!;
    if (tied.length > 1) {
      chosen = tied[this.cursor % tied.length]!;
      this.cursor++;
    }
    const alternatives: Alternative[] = [];
    for (let i = 0; i < n; i++) {
      if (!ctx.isUp(i)) continue;
      alternatives.push({ instance: i, intent: 'text', score: ctx.load(i).inflight / p.maxCapacity - (kept.includes(i) ? 1 : 0) });
    }
    const iws = this.iws(ctx, chosen);
    if (req.knowledgeTokens <= 0) return { instance: chosen, intent: 'none', alternatives, reason: 'cacheroute', prediction: iws.textPred };
    for (const a of alternatives) if (a.instance === chosen) a.intent = iws.intent;
    alternatives.push({ instance: chosen, intent: 'text', score: iws.textScore, ttftMs: iws.textScore });
    alternatives.push({ instance: chosen, intent: 'kvcache', score: iws.kvScore, ttftMs: iws.kvTotal });
    return { instance: chosen, intent: iws.intent, alternatives, reason: `cacheroute;iws:${iws.reason}`, prediction: iws.intent === 'kvcache' ? iws.kvPred! : iws.textPred };
  }

  /**
   * CacheRoute IWS costs at instance i (ms, truncated like the original's int()), with the
   * predicted breakdown of each option (service times from the four-term regressor).
   */
  iws(ctx: DecideContext, i: number): { intent: 'text' | 'kvcache'; textScore: number; kvScore: number; kvTotal: number; reason: string; textPred: Prediction; kvPred: Prediction | null } {
    const p = this.p;
    const req = ctx.req;
    const inst = ctx.cluster.instances[i]!;
    const prof = inst.profile;
    const fit = cacherouteFit(prof);
    const P = req.inputTokens - req.knowledgeTokens;
    const K = req.knowledgeTokens;
    const ttft = (L: number) => Math.trunc(cacherouteTtftMs(fit, Math.max(1, L)));
    const readyWait = Math.trunc(ctx.backlogMs(i));
    const kc = K > 0 ? ctx.kdnFor(i) : null;
    const kdn = kc ? ctx.cluster.kdns[kc.kdn]! : K > 0 ? ctx.cluster.kdns[0] : undefined;
    const link = kc ? ctx.cluster.links[kc.kdn]![i]! : null;
    const textPrepareWait = kdn ? Math.trunc((kc ? kc.linkWaitMs : 0) + (link ? link.latencyMs : 0) + 3) : 0;
    const textService = ttft(P + K + p.headerTokens);
    const textTotal = Math.max(textPrepareWait, readyWait) + textService;
    const textPred = breakdown(textPrepareWait, 0, 0, 0, Math.max(0, readyWait - textPrepareWait), textService, ctx.cachedTokens(i), req.inputTokens, 0);
    if (!kc || !link || !kdn) return { intent: 'text', textScore: textTotal, kvScore: Infinity, kvTotal: Infinity, reason: 'no_kv_ready', textPred, kvPred: null };
    const eff = Math.floor(K / 256) * 256;
    const kvTransfer = Math.trunc(transferMs(kvWireBytes(eff, prof.model.kvBytesPerToken, kdn), link) - link.latencyMs);
    const kvQueueWait = Math.trunc(kc.linkWaitMs);
    const kvPrepare = kvQueueWait + kvTransfer;
    const redisLoad = Math.trunc(kvLoadMs(prof.kvLoad, eff));
    const residual = ttft(P + (K - eff) + p.headerTokens);
    const kvTotal = Math.max(readyWait, kvPrepare) + redisLoad + residual;
    const kvScore = kvTotal + p.iwsAlpha * kvQueueWait;
    const transferTokens = Math.max(0, Math.min(eff, req.inputTokens - 1) - ctx.cachedTokens(i));
    const kvPred = breakdown(0, kvQueueWait, kvTransfer, redisLoad, Math.max(0, readyWait - kvPrepare), residual, Math.max(ctx.cachedTokens(i), eff), req.inputTokens, transferTokens);
    if (kvScore + p.iwsMarginMs < textTotal) {
      return { intent: 'kvcache', textScore: textTotal, kvScore, kvTotal, reason: kvPrepare <= readyWait ? 'kvcache_hidden_and_score_better' : 'kvcache_score_better', textPred, kvPred };
    }
    return { intent: 'text', textScore: textTotal, kvScore, kvTotal, reason: kvQueueWait > 0 ? 'text_due_to_kdn_congestion' : 'text_score_better', textPred, kvPred };
  }

  /** Affinity update after every selection: decay all, +1 per kid on the chosen, top-K. */
  onDispatch(ctx: DecideContext, d: Decision): void {
    const p = this.p;
    for (const a of this.affinity) {
      if (a.size === 0) continue;
      for (const [k, v] of a) {
        const nv = v * p.affinityDecay;
        if (nv < 1e-6) a.delete(k);
        else a.set(k, nv);
      }
    }
    if (ctx.req.knowledge.length === 0) return;
    const a = this.affinity[d.instance]!;
    for (const k of ctx.req.knowledge) a.set(k.kid, (a.get(k.kid) ?? 0) + 1);
    if (a.size > p.affinityTopK) {
      const top = [...a.entries()].sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1)).slice(0, p.affinityTopK);
      a.clear();
      for (const [k, v] of top) a.set(k, v);
    }
  }
}

/** A Prediction from CacheRoute's own estimates; the booked work is the service time (load + prefill). */
function breakdown(prepare: number, linkWait: number, transfer: number, kvLoad: number, queue: number, service: number, startTokens: number, prompt: number, transferTokens: number): Prediction {
  return predictionOf({ prepareMs: prepare, linkWaitMs: linkWait, transferMs: transfer, kvLoadMs: kvLoad, queueMs: queue, prefillMs: service, transferTokens, computeTokens: Math.max(1, prompt - startTokens), workMs: kvLoad + service });
}

function cmp(a: number[], b: number[]): number {
  for (let i = 0; i < a.length; i++) {
    if (a[i]! < b[i]! - 1e-12) return -1;
    if (a[i]! > b[i]! + 1e-12) return 1;
  }
  return 0;
}
