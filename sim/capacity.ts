/**
 * `kvlab capacity`: for each strategy, the highest arrival-rate multiplier at which the share of
 * requests completed within the SLO (goodput, sim/metrics.ts) stays >= the target, found by
 * bisection over the trace's time scale, once per seed; the mean and a 95 % CI across seeds.
 *
 * For one (strategy, seed): g(m) = goodput with every arrival time divided by m. Starting at
 * m = 1 the bracket doubles (or halves) until g changes side, between 1/64 and 64; then
 * geometric bisection until hi / lo <= 1 + tol. The capacity is the largest m evaluated with
 * g(m) >= target (0 when even 1/64 misses it). Goodput need not be monotone in load; the
 * bisection finds one crossing, and every evaluated point is kept (capacity.json `points`) for
 * the goodput-vs-load chart. The requests are loaded once and rescaled in memory.
 *
 * Load is also reported as offered prefill work over cluster capacity: Σ over requests of the
 * prefill time of the whole prompt alone on an idle instance (no cache hit) / (trace span ×
 * instances), at multiplier 1 (`offered_load_1x`), so a multiplier m offers m × that.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { prefillAloneMs } from '../engine/costmodel.js';
import { STRATEGY_PARAMS } from '../engine/strategies/index.js';
import type { TraceRequest } from '../engine/types.js';
import { KVLAB_VERSION } from '../engine/version.js';
import { meanCI95 } from '../notebooks/stats.js';
import type { LoadedTrace } from '../traces/schema.js';
import type { ResolvedCluster } from './cluster.js';
import { r3, type Slo } from './metrics.js';
import { clusterFor, loadInput, runLoaded, type RunOptions, type Summary } from './run.js';

/** Options of a capacity search. */
export interface CapacityOptions extends Omit<RunOptions, 'strategy' | 'seed' | 'out' | 'timeScale' | 'slo'> {
  strategies: string[];
  seeds: number[];
  slo: Slo;
  /** goodput to keep (0..1), e.g. 0.9. */
  target: number;
  /** relative precision of the bisection (default 0.02 = 2 %). */
  tol?: number;
  /** give strategies with admission control (ttftSloMs/tbtSloMs parameters) the SLO. */
  admission?: boolean;
  /** output directory for capacity.json. */
  out: string;
  onEval?: (strategy: string, seed: number, multiplier: number, s: Summary) => void;
}

/** One evaluated point. */
export interface CapacityPoint {
  seed: number;
  multiplier: number;
  offered_load: number;
  goodput: number;
  goodput_rps: number;
  ttft_mean_ms: number | null;
  tbt_p90_ms: number | null;
  rejected: number;
}

/** Per strategy result. */
export interface CapacityEntry {
  /** capacity multiplier per seed (seed order). */
  values: number[];
  mean: number;
  ci95: [number, number];
  /** offered prefill work / cluster capacity at the mean capacity. */
  offered_load: number;
  params: Record<string, unknown>;
  points: CapacityPoint[];
}

/** capacity.json. */
export interface CapacityResult {
  kvlab_version: string;
  trace: string;
  instances: number;
  profile: string;
  slo: { ttft_ms: number; tbt_ms: number };
  target: number;
  tol: number;
  seeds: number[];
  admission: boolean;
  /** offered prefill work / cluster capacity at the trace's own rate. */
  offered_load_1x: number;
  strategies: Record<string, CapacityEntry>;
}

/** 5 significant digits (multipliers span 1/64..64: fixed decimals would lose the small ones). */
function sig(x: number): number {
  return Number(x.toPrecision(5));
}

const MIN_M = 1 / 64;
const MAX_M = 64;

/** Offered prefill work / cluster prefill capacity of `reqs` at their own rate (module doc). */
export function offeredLoad(reqs: readonly TraceRequest[], rc: ResolvedCluster): number {
  if (reqs.length < 2) return 0;
  const span = reqs[reqs.length - 1]!.arrivalMs - reqs[0]!.arrivalMs;
  if (!(span > 0)) return 0;
  const prof = rc.spec.instances[0]!.profile;
  let work = 0;
  for (const r of reqs) work += prefillAloneMs(prof, 0, r.inputTokens);
  return work / (span * rc.spec.instances.length);
}

/** The requests with arrivals divided by `m` (same objects' other fields). */
function scaled(t: LoadedTrace, m: number): LoadedTrace {
  return { meta: t.meta, requests: t.requests.map((r) => ({ ...r, arrivalMs: r.arrivalMs / m })) };
}

/**
 * Runs the capacity search (module doc) and writes OUT/capacity.json.
 * @throws Error for bad options (target outside (0, 1], tol <= 0, unknown strategy/params)
 */
export async function runCapacity(o: CapacityOptions): Promise<CapacityResult> {
  if (!(o.target > 0 && o.target <= 1)) throw new Error(`capacity: --target must be in (0, 1] (got ${o.target})`);
  const tol = o.tol ?? 0.02;
  if (!(tol > 0)) throw new Error(`capacity: --tol must be > 0 (got ${tol})`);
  if (o.strategies.length === 0) throw new Error('capacity: --strategies is empty');
  const outDir = resolve(o.out);
  mkdirSync(outDir, { recursive: true });
  const traces = new Map<number, LoadedTrace>();
  const load = async (seed: number) => {
    let t = traces.get(seed);
    if (!t) {
      t = o.trace && traces.size ? traces.values().next().value! : await loadInput(o, seed);
      traces.set(seed, t);
    }
    return t;
  };
  const first = await load(o.seeds[0]!);
  const rc = clusterFor(first, { ...o, strategy: o.strategies[0]! });
  const base = offeredLoad(first.requests, rc);
  const res: CapacityResult = {
    kvlab_version: KVLAB_VERSION,
    trace: first.meta.file || first.meta.name,
    instances: rc.spec.instances.length,
    profile: rc.spec.instances[0]!.profile.name,
    slo: { ttft_ms: o.slo.ttftMs, tbt_ms: o.slo.tbtMs },
    target: o.target,
    tol,
    seeds: o.seeds,
    admission: !!o.admission,
    offered_load_1x: r3(base),
    strategies: {},
  };
  for (const s of o.strategies) {
    const schema = STRATEGY_PARAMS[s] ?? {};
    // --strategy-opt applies to the strategies that have the parameter
    const params: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(o.strategyParams ?? {})) if (k in schema) params[k] = v;
    if (o.admission && 'ttftSloMs' in schema) Object.assign(params, { ttftSloMs: o.slo.ttftMs, tbtSloMs: o.slo.tbtMs });
    const points: CapacityPoint[] = [];
    const values: number[] = [];
    for (const seed of o.seeds) {
      const t = await load(seed);
      const cache = new Map<number, number>();
      const g = (m: number): number => {
        const hit = cache.get(m);
        if (hit !== undefined) return hit;
        const sum = runLoaded(scaled(t, m), { ...o, strategy: s, strategyParams: params, seed, slo: o.slo, records: false }, rc).summary;
        points.push({ seed, multiplier: sig(m), offered_load: r3(m * base), goodput: sum.goodput, goodput_rps: sum.goodput_rps, ttft_mean_ms: sum.ttft_ms.mean, tbt_p90_ms: sum.tbt_ms.p90, rejected: sum.rejected });
        o.onEval?.(s, seed, m, sum);
        cache.set(m, sum.goodput);
        return sum.goodput;
      };
      let lo: number;
      let hi: number;
      if (g(1) >= o.target) {
        lo = 1;
        hi = 2;
        while (hi <= MAX_M && g(hi) >= o.target) {
          lo = hi;
          hi *= 2;
        }
        if (hi > MAX_M) hi = lo; // meets the target even at 64×
      } else {
        hi = 1;
        lo = 0.5;
        while (lo >= MIN_M && g(lo) < o.target) {
          hi = lo;
          lo /= 2;
        }
        if (lo < MIN_M) lo = 0;
      }
      while (lo > 0 && hi / lo > 1 + tol) {
        const mid = Math.sqrt(lo * hi);
        if (g(mid) >= o.target) lo = mid;
        else hi = mid;
      }
      values.push(sig(lo));
    }
    const ci = meanCI95(values);
    const mean = Number.isFinite(ci.mean) ? ci.mean : 0;
    res.strategies[s] = {
      values,
      mean: sig(mean),
      ci95: [sig(Number.isFinite(ci.lo) ? Math.max(0, ci.lo) : mean), sig(Number.isFinite(ci.hi) ? ci.hi : mean)],
      offered_load: r3(mean * base)!,
      params,
      points: points.sort((a, b) => a.multiplier - b.multiplier || a.seed - b.seed),
    };
  }
  writeFileSync(join(outDir, 'capacity.json'), JSON.stringify(res, null, 1) + '\n');
  return res;
}

/** The capacity table: one row per strategy, sorted by capacity. */
export function capacityTable(c: CapacityResult): string {
  const names = Object.keys(c.strategies).sort((a, b) => c.strategies[b]!.mean - c.strategies[a]!.mean);
  const header = ['strategy', 'capacity (× rate)', '95 % CI', 'offered load', 'per seed'];
  const rows = names.map((s) => {
    const e = c.strategies[s]!;
    return [s, e.mean.toFixed(3), `${e.ci95[0].toFixed(3)}–${e.ci95[1].toFixed(3)}`, e.offered_load.toFixed(2), e.values.map((v) => v.toFixed(3)).join(' ')];
  });
  const w = header.map((h, j) => Math.max(h.length, ...rows.map((r) => r[j]!.length)));
  const line = (r: string[]) => r.map((x, j) => (j === 0 ? x.padEnd(w[j]!) : x.padStart(w[j]!))).join('  ');
  return [
    line(header),
    line(w.map((x) => '-'.repeat(x))),
    ...rows.map(line),
    '',
    `(highest arrival-rate multiplier with goodput >= ${c.target} within TTFT <= ${c.slo.ttft_ms} ms and TBT <= ${c.slo.tbt_ms} ms; offered load = prefill work / cluster capacity, ${c.offered_load_1x} at 1×; ${c.instances} × ${c.profile}${c.admission ? '; admission control on where the strategy has it' : ''})`,
  ].join('\n');
}
