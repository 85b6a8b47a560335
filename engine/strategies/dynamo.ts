/**
 * `dynamo-kv`: NVIDIA Dynamo's KV router cost (reference/routers.md §1.2, classic form):
 *   logit(w) = overlap_score_weight × prefill_blocks(w) + decode_blocks(w)
 *   prefill_blocks(w) = (ISL − tokens cached on w + uncached prompt tokens of w's requests
 *                        without a first token) / block_size
 *   decode_blocks(w)  = projected active KV blocks on w including this request
 * argmin; exact ties uniform random; router_temperature > 0 samples
 * p(w) ∝ exp(−(c_w − c_min) / ((c_max − c_min)·T)). Load comes from the engine's booked
 * "predictive active blocks"; cache state from KV events (+ predict-on-route).
 */
import { argminUp, type DecideContext, type Strategy, type StrategyChoice } from '../engine.js';
import type { Alternative, Intent } from '../types.js';

/** Parameters of `dynamo-kv` (Dynamo KvRouterConfig names). */
export interface DynamoParams {
  overlapScoreWeight: number;
  routerTemperature: number;
  /** engine KV block size used to express costs in blocks (tokens). */
  blockSize: number;
  intent: Intent;
}

/** Dynamo's defaults: overlap_score_weight 1, router_temperature 0; costs in 16-token blocks. */
export const DYNAMO_DEFAULTS: DynamoParams = { overlapScoreWeight: 1, routerTemperature: 0, blockSize: 16, intent: 'text' };

/** The `dynamo-kv` strategy (module doc); stateless beyond the engine's booked load and index. */
export class DynamoKvStrategy implements Strategy {
  readonly name = 'dynamo-kv';
  private readonly p: DynamoParams;
  constructor(params: Partial<DynamoParams> = {}) {
    this.p = { ...DYNAMO_DEFAULTS, ...params };
  }
  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    const req = ctx.req;
    const bs = p.blockSize;
    const cost = new Float64Array(ctx.n);
    const alternatives: Alternative[] = [];
    let cmin = Infinity;
    let cmax = -Infinity;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const l = ctx.load(i);
      const prefill = (req.inputTokens - ctx.cachedTokens(i) + l.prefillTokens) / bs;
      const decode = (l.kvTokens + req.inputTokens) / bs;
      const c = p.overlapScoreWeight * prefill + decode;
      cost[i] = c;
      if (c < cmin) cmin = c;
      if (c > cmax) cmax = c;
      alternatives.push({ instance: i, intent: p.intent, score: c });
    }
    let chosen: number;
    if (p.routerTemperature > 0 && cmax > cmin) {
      let total = 0;
      const w = new Float64Array(ctx.n);
      for (let i = 0; i < ctx.n; i++) {
        if (!ctx.isUp(i)) continue;
        w[i] = Math.exp(-(cost[i]! - cmin) / ((cmax - cmin) * p.routerTemperature));
        total += w[i]!;
      }
      let r = ctx.rng() * total;
      chosen = -1;
      for (let i = 0; i < ctx.n; i++) {
        if (!ctx.isUp(i)) continue;
        chosen = i;
        r -= w[i]!;
        if (r <= 0) break;
      }
    } else chosen = argminUp(ctx, (i) => cost[i]!);
    return { instance: chosen, intent: p.intent, alternatives, reason: 'dynamo-cost' };
  }
}
