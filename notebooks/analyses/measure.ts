/**
 * The measurement behind the evaluation protocol, shared by notebooks/analyses/evaluate.ts (the
 * README tables) and notebooks/analyses/tune.ts (the tuning set): for one scenario and cluster
 * size, every arm's mean TTFT, p99, goodput and hit ratio at each load and seed, and its capacity
 * under the SLO (the highest offered load with goodput >= the target: bisection per arm and seed,
 * all bisections advancing together in rounds of parallel runs on the sweep's worker pool). A run
 * is a function of (arm, input, load) — the simulator is deterministic — so a bisection point that
 * the TTFT table already ran (load 1, the bisection's start) is not run again.
 */
import { offeredLoad } from '../../sim/capacity.js';
import { clusterFor, loadInput } from '../../sim/run.js';
import { meanCI95 } from '../stats.js';
import { fmtDuration, runJobs, type SweepJob } from '../sweep.js';
import { CAPACITY_TOL, SLO, TARGET, type Input, type Scenario } from './protocol.js';

/** A strategy as the tables name it (label), with its parameters. */
export interface Arm {
  label: string;
  strategy: string;
  params: Record<string, unknown>;
  /** extra run options (sim/run.ts RunOptions), e.g. engineScale, calibrate. */
  run?: Record<string, unknown>;
}

/** Mean, 95 % CI half-width and per-seed values of one metric. */
export interface Stat {
  mean: number;
  half: number;
  values: number[];
}

/** The metrics of one arm at one load. */
export interface LoadPoint {
  load: number;
  ttft_mean: Stat;
  ttft_p99: Stat;
  goodput: Stat;
  hit: Stat;
}

/** Everything measured for one scenario and cluster size. */
export interface SizeResult {
  instances: number;
  /** offered load at the trace's own rate. */
  base: number;
  /** label -> one point per load, in load order. */
  ttft: Record<string, LoadPoint[]>;
  /** label -> capacity (offered load) per seed. */
  capacity: Record<string, Stat>;
}

/** Mean and 95 % CI half-width of `values` (half 0 for one value). */
export function stat(values: number[]): Stat {
  const ci = meanCI95(values);
  return { mean: ci.mean, half: Number.isFinite(ci.hi - ci.lo) ? (ci.hi - ci.lo) / 2 : 0, values };
}

/** The run options (sim/run.ts RunOptions) of one simulation at offered load `load`. */
export function simOptions(s: Scenario, input: Input, n: number, arm: Arm, load: number, base: number): Record<string, unknown> {
  return {
    ...(input.trace ? { trace: input.trace } : { workload: input.workload, workloadOptions: input.workloadOptions }),
    strategy: arm.strategy,
    strategyParams: arm.params,
    instances: n,
    profile: s.profile,
    seed: input.seed,
    timeScale: base / load,
    slo: SLO,
    records: false,
    ...(arm.run ?? {}),
  };
}

/** Options of `measureSize`. */
export interface MeasureOptions {
  /** loads of the TTFT table (empty: capacity only). */
  loads: number[];
  /** measure the capacity too (default true). */
  capacity?: boolean;
  concurrency?: number;
  /** output directory (the runs write nothing there; the sweep job format needs one). */
  out: string;
  log?: (msg: string) => void;
}

/** Measures one scenario at one cluster size for every arm (module doc). */
export async function measureSize(s: Scenario, inputs: Input[], n: number, arms: Arm[], o: MeasureOptions): Promise<SizeResult> {
  const t0 = Date.now();
  const log = o.log ?? (() => {});
  const label = `${s.id} n=${n}`;
  const first = await loadInput({ trace: inputs[0]!.trace, workload: inputs[0]!.workload, workloadOptions: inputs[0]!.workloadOptions }, inputs[0]!.seed);
  const base = offeredLoad(first.requests, clusterFor(first, { strategy: 'kvlab', instances: n, profile: s.profile }));
  const sr: SizeResult = { instances: n, base, ttft: {}, capacity: {} };
  /** goodput of the runs done so far, by (arm, input, load). */
  const goodputOf = new Map<string, number>();
  const runKey = (arm: Arm, input: Input, load: number): string => `${arm.label}|${input.seed}|${input.trace ?? JSON.stringify(input.workloadOptions)}|${load}`;
  const job = (index: number, arm: Arm, input: Input, load: number): SweepJob => ({ index, params: { load }, strategy: arm.label, seed: input.seed, sim: simOptions(s, input, n, arm, load, base) as never, outDir: o.out });
  // TTFT tables: every arm x load x seed
  const keys: { arm: Arm; load: number; input: Input }[] = [];
  const jobs: SweepJob[] = [];
  for (const arm of arms) for (const L of o.loads) for (const input of inputs) {
    keys.push({ arm, load: L, input });
    jobs.push(job(jobs.length, arm, input, L));
  }
  if (jobs.length) {
    const run = await runJobs(jobs, { concurrency: o.concurrency, onProgress: (p) => p.done % 25 === 0 && log(`${label}: ${p.done}/${p.total} runs (${fmtDuration(p.elapsedMs)}, ~${fmtDuration(p.etaMs)} left)`) });
    const acc = new Map<string, { ttft_ms: { mean: number; p99: number }; goodput: number; prefix_hit_ratio: number }[]>();
    run.entries.forEach((e, k) => {
      if (!e.summary) throw new Error(`${label}: ${jobs[k]!.strategy} at load ${keys[k]!.load}: ${e.error}`);
      const key = `${keys[k]!.arm.label}|${keys[k]!.load}`;
      acc.set(key, [...(acc.get(key) ?? []), e.summary as never]);
      goodputOf.set(runKey(keys[k]!.arm, keys[k]!.input, keys[k]!.load), (e.summary as unknown as { goodput: number }).goodput);
    });
    for (const arm of arms) {
      sr.ttft[arm.label] = o.loads.map((L) => {
        const ss = acc.get(`${arm.label}|${L}`)!;
        return { load: L, ttft_mean: stat(ss.map((x) => x.ttft_ms.mean)), ttft_p99: stat(ss.map((x) => x.ttft_ms.p99)), goodput: stat(ss.map((x) => x.goodput)), hit: stat(ss.map((x) => x.prefix_hit_ratio)) };
      });
    }
  }
  if (o.capacity === false) return sr;
  // capacity: bisection on the load per (arm, seed), all advancing in parallel rounds
  type Cell = { arm: Arm; input: Input; lo: number; hi: number; phase: 'start' | 'up' | 'down' | 'bisect' | 'done' };
  const cells: Cell[] = [];
  for (const arm of arms) for (const input of inputs) cells.push({ arm, input, lo: 0, hi: 0, phase: 'start' });
  const next = (c: Cell): number | null => (c.phase === 'done' ? null : c.phase === 'start' ? 1 : c.phase === 'up' ? c.hi : c.phase === 'down' ? c.lo : Math.sqrt(c.lo * c.hi));
  const update = (c: Cell, L: number, ok: boolean): void => {
    if (c.phase === 'start') {
      [c.lo, c.hi, c.phase] = ok ? [1, 2, 'up'] : [0.5, 1, 'down'];
      return;
    }
    if (c.phase === 'up') {
      if (ok) {
        [c.lo, c.hi] = [L, L * 2];
        if (c.hi > 64) c.phase = 'done';
        return;
      }
      c.phase = 'bisect';
    } else if (c.phase === 'down') {
      if (!ok) {
        [c.hi, c.lo] = [L, L / 2];
        if (c.lo < 1 / 64) [c.lo, c.phase] = [0, 'done'];
        return;
      }
      c.phase = 'bisect';
    } else if (ok) c.lo = L;
    else c.hi = L;
    if (c.hi / c.lo <= 1 + CAPACITY_TOL) c.phase = 'done';
  };
  // points already run (by the TTFT table or an earlier round) advance a bisection without a run
  const advanceCached = (): void => {
    for (let moved = true; moved; ) {
      moved = false;
      for (const c of cells) {
        const L = next(c);
        const g = L === null ? undefined : goodputOf.get(runKey(c.arm, c.input, L));
        if (g === undefined) continue;
        update(c, L!, g >= TARGET);
        moved = true;
      }
    }
  };
  for (let round = 1; ; round++) {
    advanceCached();
    const todo = cells.map((c) => ({ c, L: next(c) })).filter((x): x is { c: Cell; L: number } => x.L !== null);
    if (todo.length === 0) break;
    const rjobs = todo.map((x, k) => job(k, x.c.arm, x.c.input, x.L));
    const r = await runJobs(rjobs, { concurrency: o.concurrency });
    r.entries.forEach((e, k) => {
      if (!e.summary) throw new Error(`${label}: capacity ${rjobs[k]!.strategy}: ${e.error}`);
      const g = (e.summary as unknown as { goodput: number }).goodput;
      goodputOf.set(runKey(todo[k]!.c.arm, todo[k]!.c.input, todo[k]!.L), g);
      update(todo[k]!.c, todo[k]!.L, g >= TARGET);
    });
    log(`${label}: capacity round ${round}: ${todo.length} runs (${fmtDuration(Date.now() - t0)})`);
  }
  for (const arm of arms) sr.capacity[arm.label] = stat(cells.filter((c) => c.arm === arm).map((c) => c.lo));
  return sr;
}
