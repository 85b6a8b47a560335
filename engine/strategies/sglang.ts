/**
 * SGLang's `cache_aware` policy in its two live variants (reference/routers.md §2.2):
 *
 * - `sglang-router`: sgl-project/sglang sgl-router/src/policies/cache_aware.rs @ b6f20641
 *   (also @ 026f853b), `CacheAwarePolicy::select_worker`: a cache miss goes to the worker with
 *   the **smallest tree** (`Tree::get_smallest_tenant`, sgl-router/src/policies/tree.rs).
 * - `sglang-gateway`: sgl-model-gateway/src/policies/cache_aware.rs @ 053b63ff: a cache miss goes
 *   to the **least-loaded** worker (`select_worker_min_load`).
 *
 * Both: load = the router's own in-flight counter per worker (incremented at dispatch,
 * decremented at stream end). Imbalanced iff max − min > balance_abs_threshold and
 * max > balance_rel_threshold × min → `min_by_key(load)` (the first worker among equal loads).
 * Otherwise the request is matched in the router's own approximate tree (inserted on routing,
 * never told about engine evictions): match_rate = matched / prompt tokens (characters upstream);
 * match_rate > cache_threshold → the tenant at the deepest matched node, else the miss branch.
 * The prompt is inserted under the chosen worker in every branch.
 * Tie-breaks as upstream: among several tenants at the deepest node `prefix_match` returns the
 * first one the DashMap iterates, and `get_smallest_tenant` the first minimum it iterates —
 * DashMap's iteration order is a hash order fixed for the life of the process, which we model
 * as a seeded random permutation of the workers drawn at the first decision.
 * Defaults: Python `RouterArgs` (bindings/python/.../router_args.py): cache_threshold 0.3,
 * balance_abs_threshold 64, balance_rel_threshold 1.5, max_tree_size 2^26 characters per tenant
 * (≈ 2^24 tokens at ~4 characters per token; LRU eviction, here a FIFO bound in blocks).
 */
import type { DecideContext, Strategy, StrategyChoice } from '../engine.js';
import { PrefixIndex } from '../prefix-index.js';
import type { Alternative, Decision, Intent } from '../types.js';

/** Parameters of the SGLang strategies (RouterArgs names). */
export interface SglangParams {
  cacheThreshold: number;
  balanceAbsThreshold: number;
  balanceRelThreshold: number;
  /** approximate tree bound per worker, tokens (max_tree_size 2^26 characters ≈ 2^24 tokens; Infinity = unbounded). */
  maxTreeTokens: number;
  intent: Intent;
}

/** SGLang's Python RouterArgs defaults (cache_threshold 0.3, balance 64 / 1.5, max_tree_size 2^26 characters). */
export const SGLANG_DEFAULTS: SglangParams = { cacheThreshold: 0.3, balanceAbsThreshold: 64, balanceRelThreshold: 1.5, maxTreeTokens: 2 ** 24, intent: 'text' };

/** Which miss branch: `router` = smallest tree (sgl-router), `gateway` = least load (sgl-model-gateway). */
export type SglangVariant = 'router' | 'gateway';

/** SGLang cache_aware (module doc); keeps its own approximate tree. */
export class SglangCacheAwareStrategy implements Strategy {
  readonly name: string;
  private readonly p: SglangParams;
  private tree: PrefixIndex | null = null;
  private buf = new Int32Array(0);
  /** DashMap iteration rank of each worker (lower = iterated first). */
  private rank = new Int32Array(0);

  constructor(
    readonly variant: SglangVariant,
    params: Partial<SglangParams> = {},
  ) {
    this.name = variant === 'router' ? 'sglang-router' : 'sglang-gateway';
    this.p = { ...SGLANG_DEFAULTS, ...params };
  }

  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    const req = ctx.req;
    if (!this.tree) this.init(ctx, req.blockSize);
    const load = (i: number) => ctx.load(i).inflight;
    let maxL = -Infinity;
    let minL = Infinity;
    let minIdx = -1;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const l = load(i);
      if (l > maxL) maxL = l;
      if (l < minL) {
        minL = l;
        minIdx = i; // min_by_key: the first index among equal loads
      }
    }
    this.buf.fill(0);
    if (req.blocks.length) this.tree!.match(req.blocks, this.buf);
    const rate = (i: number) => Math.min(this.buf[i]! * req.blockSize, req.inputTokens) / req.inputTokens;
    const alternatives: Alternative[] = [];
    for (let i = 0; i < ctx.n; i++) if (ctx.isUp(i)) alternatives.push({ instance: i, intent: p.intent, score: -rate(i) });
    if (maxL - minL > p.balanceAbsThreshold && maxL > p.balanceRelThreshold * minL) {
      return { instance: minIdx, intent: p.intent, alternatives, reason: 'imbalance-least-load' };
    }
    // tenant at the deepest matched node: the deepest match, first in DashMap order among equals
    let best = -1;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i) || this.buf[i]! === 0) continue;
      if (best < 0 || this.buf[i]! > this.buf[best]! || (this.buf[i] === this.buf[best] && this.rank[i]! < this.rank[best]!)) best = i;
    }
    if (best >= 0 && rate(best) > p.cacheThreshold) return { instance: best, intent: p.intent, alternatives, reason: 'cache-hit' };
    if (this.variant === 'gateway') return { instance: minIdx, intent: p.intent, alternatives, reason: 'miss-least-load' };
    // get_smallest_tenant: smallest tree (characters; here tokens), first minimum in DashMap order
    let small = -1;
    let smallSize = Infinity;
    for (const i of this.order) {
      if (!ctx.isUp(i)) continue;
      const s = this.tree!.size(i);
      if (s < smallSize) {
        small = i;
        smallSize = s;
      }
    }
    return { instance: small, intent: p.intent, alternatives, reason: 'miss-smallest-tree' };
  }

  onDispatch(ctx: DecideContext, d: Decision): void {
    if (this.tree && ctx.req.blocks.length) this.tree.add(d.instance, ctx.req.blocks);
  }

  onInstanceDown(i: number): void {
    this.tree?.clear(i);
  }

  /** Workers in DashMap iteration order. */
  private order: number[] = [];

  private init(ctx: DecideContext, blockSize: number): void {
    const n = ctx.n;
    this.tree = new PrefixIndex(n, Number.isFinite(this.p.maxTreeTokens) ? Math.max(1, Math.ceil(this.p.maxTreeTokens / blockSize)) : Infinity);
    this.buf = new Int32Array(n);
    // a seeded permutation stands for the process's fixed DashMap hash order
    const order = Array.from({ length: n }, (_, i) => i);
    for (let j = n - 1; j > 0; j--) {
      const r = Math.floor(ctx.rng() * (j + 1));
      [order[j], order[r]] = [order[r]!, order[j]!];
    }
    this.order = order;
    this.rank = new Int32Array(n);
    order.forEach((i, k) => (this.rank[i] = k));
  }
}
