/**
 * `radixmesh`: RadixMesh's router (zzt93/RadixMesh @ c31c7b9, python/src/router/
 * cache_aware_router.py `CacheAwareRouter.cache_aware_route`, `ConsistentHash`; reference/routers.md §6):
 * longest prefix match on the replicated radix tree (here: the engine's index fed by KV events
 * and predict-on-route) → the node owning the deepest matched segment (RadixMesh's tree keeps
 * the rank of the node that inserted a segment: here the first instance a block was routed to,
 * among those with the longest match; else the lowest index); when nobody matches, a
 * consistent-hash ring of 3 virtual nodes per instance (`replicas=3`, keys "node#i") keyed by
 * the **whole request key** (`get_node(key)`: upstream hashes the token list; we hash the
 * request's full chain of block ids, which identifies the same prompt), the first ring point
 * strictly after the key's hash (`bisect`), wrapping around. No load term. Warm-up mode (hash
 * only, before `finish_warm_up`) is not modelled. RadixMesh hashes with MD5 (first 4 bytes);
 * any well-mixed 32-bit hash behaves the same, we use FNV-1a.
 */
import type { DecideContext, Strategy, StrategyChoice } from '../engine.js';
import type { Alternative, Decision, Intent } from '../types.js';

/** Parameters of `radixmesh`. */
export interface RadixMeshParams {
  virtualNodes: number;
  intent: Intent;
}

/** RadixMesh's ring: 3 virtual nodes per instance. */
export const RADIXMESH_DEFAULTS: RadixMeshParams = { virtualNodes: 3, intent: 'text' };

/** 32-bit FNV-1a of a string. */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** The `radixmesh` strategy (module doc). */
export class RadixMeshStrategy implements Strategy {
  readonly name = 'radixmesh';
  private readonly p: RadixMeshParams;
  private ring: { h: number; i: number }[] = [];
  private ringFor = -1;
  /** block id -> the first instance it was routed to (the segment's owner rank). */
  private readonly owner = new Map<number, number>();
  constructor(params: Partial<RadixMeshParams> = {}) {
    this.p = { ...RADIXMESH_DEFAULTS, ...params };
  }
  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    const alternatives: Alternative[] = [];
    for (let i = 0; i < ctx.n; i++) if (ctx.isUp(i)) alternatives.push({ instance: i, intent: p.intent, score: -ctx.match[i]! });
    if (ctx.bestMatch > 0) {
      let best = -1;
      for (let i = 0; i < ctx.n; i++) if (ctx.isUp(i) && (best < 0 || ctx.match[i]! > ctx.match[best]!)) best = i;
      if (best >= 0 && ctx.match[best]! > 0) {
        const deepest = ctx.req.blocks[ctx.match[best]! - 1]!;
        const o = this.owner.get(deepest);
        if (o !== undefined && ctx.isUp(o) && ctx.match[o] === ctx.match[best]) best = o;
        return { instance: best, intent: p.intent, alternatives, reason: 'longest-prefix' };
      }
    }
    const key = ctx.req.blocks.length ? ctx.req.blocks.join(',') : (ctx.req.session ?? ctx.req.id);
    return { instance: this.lookup(ctx, fnv1a32(key)), intent: p.intent, alternatives, reason: 'consistent-hash' };
  }
  onDispatch(ctx: DecideContext, d: Decision): void {
    for (const b of ctx.req.blocks) if (!this.owner.has(b)) this.owner.set(b, d.instance);
  }
  onInstanceDown(i: number): void {
    for (const [b, o] of this.owner) if (o === i) this.owner.delete(b);
  }
  /** The ring point strictly after `h` (Python's `bisect`), wrapping around. */
  private lookup(ctx: DecideContext, h: number): number {
    const upMask = Array.from({ length: ctx.n }, (_, i) => (ctx.isUp(i) ? 1 : 0)).join('');
    const sig = fnv1a32(upMask);
    if (sig !== this.ringFor) {
      this.ring = [];
      for (let i = 0; i < ctx.n; i++) {
        if (!ctx.isUp(i)) continue;
        for (let v = 0; v < this.p.virtualNodes; v++) this.ring.push({ h: fnv1a32(`node-${i}#${v}`), i });
      }
      this.ring.sort((a, b) => a.h - b.h || a.i - b.i);
      this.ringFor = sig;
    }
    for (const e of this.ring) if (e.h > h) return e.i;
    return this.ring[0]!.i;
  }
}
