/**
 * `aibrix-prefix`: AIBrix gateway prefix-cache policy (reference/routers.md §3.2).
 * 1. Imbalance gate: if max − min running requests > 8, candidates = the least-loaded pods.
 * 2. Prefix match on the gateway's own approximate block table (inserted after routing,
 *    LRU-bounded, no engine feedback): match% = matched blocks / total blocks.
 * 3. Matched pods sorted by match% desc, running asc (shuffled first); take the first with
 *    running <= mean + 1·σ; else (or with no match) least-request.
 * Defaults (code, not README): imbalance 8, σ factor 1, table capacity 200,000 blocks.
 */
import type { DecideContext, Strategy, StrategyChoice } from '../engine.js';
import { PrefixIndex } from '../prefix-index.js';
import type { Alternative, Decision, Intent } from '../types.js';

/** Parameters of `aibrix-prefix` (AIBrix gateway code defaults). */
export interface AibrixParams {
  imbalanceAbsCount: number;
  stdDevFactor: number;
  tableCapacityBlocks: number;
  intent: Intent;
}

/** AIBrix's code defaults (imbalance 8 running requests, σ factor 1, 200,000-block table). */
export const AIBRIX_DEFAULTS: AibrixParams = { imbalanceAbsCount: 8, stdDevFactor: 1, tableCapacityBlocks: 200_000, intent: 'text' };

/** The `aibrix-prefix` strategy (module doc); keeps its own approximate block table. */
export class AibrixPrefixStrategy implements Strategy {
  readonly name = 'aibrix-prefix';
  private readonly p: AibrixParams;
  private table: PrefixIndex | null = null;
  private buf = new Int32Array(0);
  constructor(params: Partial<AibrixParams> = {}) {
    this.p = { ...AIBRIX_DEFAULTS, ...params };
  }
  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    if (!this.table) {
      this.table = new PrefixIndex(ctx.n, Math.ceil(p.tableCapacityBlocks / ctx.n));
      this.buf = new Int32Array(ctx.n);
    }
    const req = ctx.req;
    const running = (i: number) => ctx.load(i).inflight;
    let cands: number[] = [];
    for (let i = 0; i < ctx.n; i++) if (ctx.isUp(i)) cands.push(i);
    const minR = Math.min(...cands.map(running));
    const maxR = Math.max(...cands.map(running));
    let reason = 'prefix';
    if (maxR - minR > p.imbalanceAbsCount) {
      cands = cands.filter((i) => running(i) === minR);
      reason = 'imbalance';
    }
    this.buf.fill(0);
    if (req.blocks.length) this.table.match(req.blocks, this.buf);
    const total = Math.max(1, req.blocks.length);
    const pct = (i: number) => (this.buf[i]! * 100) / total;
    const alternatives: Alternative[] = cands.map((i) => ({ instance: i, intent: p.intent, score: -pct(i) }));
    // shuffle (seeded), then stable sort by match desc, running asc
    const order = cands.slice();
    for (let j = order.length - 1; j > 0; j--) {
      const r = Math.floor(ctx.rng() * (j + 1));
      [order[j], order[r]] = [order[r]!, order[j]!];
    }
    const matched = order.filter((i) => pct(i) > 0).sort((a, b) => pct(b) - pct(a) || running(a) - running(b));
    const rs = cands.map(running);
    const mean = rs.reduce((a, b) => a + b, 0) / rs.length;
    const sd = Math.sqrt(rs.reduce((a, b) => a + (b - mean) * (b - mean), 0) / rs.length);
    for (const i of matched) {
      if (running(i) <= mean + p.stdDevFactor * sd) return { instance: i, intent: p.intent, alternatives, reason };
    }
    let best = order[0]!;
    for (const i of order) if (running(i) < running(best)) best = i;
    return { instance: best, intent: p.intent, alternatives, reason: `${reason};least-request` };
  }
  onDispatch(ctx: DecideContext, d: Decision): void {
    if (this.table && ctx.req.blocks.length) this.table.add(d.instance, ctx.req.blocks);
  }
  onInstanceDown(i: number): void {
    this.table?.clear(i);
  }
}
