/**
 * `radixmesh`: RadixMesh's router (reference/routers.md §6): longest prefix match on the
 * replicated radix tree (here: the engine's event-fed index); when no instance holds any
 * prefix, a consistent-hash ring (3 virtual nodes per instance) keyed by the request's first
 * block. No load term. (RadixMesh hashes with MD5; any well-mixed hash gives the same
 * behaviour, we use 32-bit FNV-1a.)
 */
import type { DecideContext, Strategy, StrategyChoice } from '../engine.js';
import type { Alternative, Intent } from '../types.js';

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
      if (best >= 0 && ctx.match[best]! > 0) return { instance: best, intent: p.intent, alternatives, reason: 'longest-prefix' };
    }
    const key = ctx.req.blocks.length ? `b${ctx.req.blocks[0]}` : (ctx.req.session ?? ctx.req.id);
    return { instance: this.lookup(ctx, fnv1a32(key)), intent: p.intent, alternatives, reason: 'consistent-hash' };
  }
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
    for (const e of this.ring) if (e.h >= h) return e.i;
    return this.ring[0]!.i;
  }
}
