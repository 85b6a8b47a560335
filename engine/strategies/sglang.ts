/**
 * `sglang-cache-aware`: SGLang router's cache_aware policy (reference/routers.md §2.2).
 * Load = the router's own in-flight counter. Imbalanced iff max − min > balance_abs_threshold
 * and max > balance_rel_threshold × min → least-loaded worker. Otherwise prefix match in the
 * router's own approximate tree (updated from routing decisions only, no engine feedback,
 * LRU-bounded): match_rate = matched / prompt tokens > cache_threshold → the best-matching
 * worker (ties: least loaded), else the least-loaded worker. The prompt is inserted under the
 * chosen worker. Defaults: cache_threshold 0.3, balance_abs 64, balance_rel 1.5 (Python RouterArgs).
 */
import { argminUp, type DecideContext, type Strategy, type StrategyChoice } from '../engine.js';
import { PrefixIndex } from '../prefix-index.js';
import type { Alternative, Decision, Intent } from '../types.js';

/** Parameters of `sglang-cache-aware` (SGLang RouterArgs names). */
export interface SglangParams {
  cacheThreshold: number;
  balanceAbsThreshold: number;
  balanceRelThreshold: number;
  /** approximate tree bound per worker, blocks (Infinity = unbounded). */
  maxTreeBlocks: number;
  intent: Intent;
}

/** SGLang's Python RouterArgs defaults (cache_threshold 0.3, balance 64 / 1.5). */
export const SGLANG_DEFAULTS: SglangParams = { cacheThreshold: 0.3, balanceAbsThreshold: 64, balanceRelThreshold: 1.5, maxTreeBlocks: Infinity, intent: 'text' };

/** The `sglang-cache-aware` strategy (module doc); keeps its own approximate tree. */
export class SglangCacheAwareStrategy implements Strategy {
  readonly name = 'sglang-cache-aware';
  private readonly p: SglangParams;
  private tree: PrefixIndex | null = null;
  private buf = new Int32Array(0);
  constructor(params: Partial<SglangParams> = {}) {
    this.p = { ...SGLANG_DEFAULTS, ...params };
  }
  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    if (!this.tree) {
      this.tree = new PrefixIndex(ctx.n, p.maxTreeBlocks);
      this.buf = new Int32Array(ctx.n);
    }
    const req = ctx.req;
    let maxL = -Infinity;
    let minL = Infinity;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const l = ctx.load(i).inflight;
      maxL = Math.max(maxL, l);
      minL = Math.min(minL, l);
    }
    const load = (i: number) => ctx.load(i).inflight;
    this.buf.fill(0);
    if (req.blocks.length) this.tree.match(req.blocks, this.buf);
    const rate = (i: number) => Math.min(this.buf[i]! * req.blockSize, req.inputTokens) / req.inputTokens;
    const alternatives: Alternative[] = [];
    for (let i = 0; i < ctx.n; i++) if (ctx.isUp(i)) alternatives.push({ instance: i, intent: p.intent, score: -rate(i) });
    if (maxL - minL > p.balanceAbsThreshold && maxL > p.balanceRelThreshold * minL) {
      return { instance: argminUp(ctx, load), intent: p.intent, alternatives, reason: 'imbalance-least-load' };
    }
    let best = -1;
    let bestRate = -1;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const r = rate(i);
      if (r > bestRate || (r === bestRate && load(i) < load(best))) {
        best = i;
        bestRate = r;
      }
    }
    if (bestRate > p.cacheThreshold) return { instance: best, intent: p.intent, alternatives, reason: 'cache-hit' };
    return { instance: argminUp(ctx, load), intent: p.intent, alternatives, reason: 'miss-least-load' };
  }
  onDispatch(ctx: DecideContext, d: Decision): void {
    if (this.tree && ctx.req.blocks.length) this.tree.add(d.instance, ctx.req.blocks);
  }
  onInstanceDown(i: number): void {
    this.tree?.clear(i);
  }
}
