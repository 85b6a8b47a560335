/**
 * `kvlab sweep`: runs strategies x seeds over a parameter grid (e.g. rate x kdn_gbps) in
 * parallel on all cores (piscina worker pool), reports progress on stderr and writes
 * DIR/sweep.json = [{params, strategy, seed, summary, error?, run_dir?}] in grid order, and
 * DIR/sweep-timing.json with what depends on the machine (wall times, memory).
 *
 * sweep.json is a function of the grid alone: the summaries lose their machine-dependent fields
 * (`VOLATILE_SUMMARY_FIELDS`, moved to sweep-timing.json), `summary.trace` is the trace path as
 * given, and `run_dir` is relative to DIR. So a local sweep and the same grid run on a job queue
 * (notebooks/queue/) write the same bytes.
 *
 * Parameter mapping (`toSimOptions`):
 * - `rate`: a generated workload's arrival rate (workloadOptions.rate, req/s); for a trace, a
 *   rate multiplier (timeScale = 1 / rate: rate 2 replays the trace twice as fast);
 * - `kdn_gbps`: overrides.kdn_gbps (KDN link bandwidth, Gbit/s);
 * - `instances`: the instance count;
 * - `router_replicas`, `replica_sync_ms`: router replicas and their sync delay (ms or `none`);
 * - `workload.NAME`: workloadOptions.NAME (e.g. workload.docMedianTokens; NAME must be an option
 *   of the workload, `kvlab trace defaults` lists them);
 * - anything else is an error naming the known parameters (a typo would give identical points).
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { checkWorkloadOptions } from '../traces/load.js';
import { loadSimulator, type SimOptions, type SimResult, type SimRunner } from './sim-api.js';
import type { SummaryJson, SweepEntry, SweepParams } from './types.js';

/** What to sweep. */
export interface SweepSpec {
  /** trace file; exclusive with `workload`. */
  trace?: string;
  workload?: 'synthetic' | 'rag' | 'nq';
  workloadOptions?: Record<string, unknown>;
  strategies: string[];
  /** parameter name -> values, in grid order (first key varies slowest). */
  vary: Record<string, (number | string)[]>;
  seeds: number[];
  instances?: number;
  cluster?: string;
  overrides?: Record<string, unknown>;
  /** output directory (sweep.json; runs/ with --keep-runs). */
  out: string;
  /** keep every run's directory under out/runs/ (default false: summaries only). */
  keepRuns?: boolean;
}

/** One simulation of the grid. */
export interface SweepJob {
  /** position in grid order (sweep.json keeps this order). */
  index: number;
  params: SweepParams;
  strategy: string;
  seed: number;
  sim: SimOptions;
  /** the trace path as given in the spec (summary.trace in sweep.json); undefined for workloads. */
  traceLabel?: string;
  /** the sweep's output directory, resolved (run_dir in sweep.json is relative to it). */
  outDir: string;
}

/** Progress after each finished job. */
export interface SweepProgress {
  done: number;
  total: number;
  failed: number;
  elapsedMs: number;
  /** estimated time to finish, ms (NaN before the first job finishes). */
  etaMs: number;
  last: { job: SweepJob; wallMs: number; error?: string };
}

/**
 * Summary fields that depend on the machine or its load, not on the grid: they go to
 * sweep-timing.json instead of sweep.json.
 */
export const VOLATILE_SUMMARY_FIELDS = ['wall_ms', 'sim_requests_per_s', 'peak_rss_mib'] as const;

/** Machine-dependent facts of one finished cell (one element of sweep-timing.json). */
export interface CellTiming {
  params: SweepParams;
  strategy: string;
  seed: number;
  /** wall time of the cell as its runner saw it (load + simulate + write), ms. */
  wall_ms: number;
  /** summary.wall_ms, sim_requests_per_s, peak_rss_mib of the run (absent for a failed cell). */
  sim?: Partial<Record<(typeof VOLATILE_SUMMARY_FIELDS)[number], unknown>>;
  /** queue runs: the worker that ran the cell ("host:pid") and how many times a worker started it. */
  worker?: string;
  attempts_started?: number;
}

/**
 * The sweep.json entry of a finished cell, identical whoever ran it: the summary without its
 * machine-dependent fields, `summary.trace` = the trace path as given in the spec (a queue worker
 * may read a local copy), `run_dir` relative to the sweep's output directory.
 * @param outDir the sweep's output directory (resolved), for `run_dir`.
 */
export function cellEntry(job: Pick<SweepJob, 'params' | 'strategy' | 'seed'>, result: { summary: SummaryJson; outDir?: string } | { error: string }, traceLabel: string | undefined, outDir: string): SweepEntry {
  if ('error' in result) return { params: job.params, strategy: job.strategy, seed: job.seed, summary: null, error: result.error };
  const summary = { ...result.summary } as Record<string, unknown>;
  for (const k of VOLATILE_SUMMARY_FIELDS) delete summary[k];
  if (traceLabel !== undefined && 'trace' in summary) summary['trace'] = traceLabel;
  const entry: SweepEntry = { params: job.params, strategy: job.strategy, seed: job.seed, summary: summary as unknown as SummaryJson };
  if (result.outDir) entry.run_dir = relative(outDir, result.outDir).split('\\').join('/');
  return entry;
}

/** The machine-dependent part of a summary (see VOLATILE_SUMMARY_FIELDS). */
export function volatileFields(summary: SummaryJson): CellTiming['sim'] {
  const s = summary as unknown as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const k of VOLATILE_SUMMARY_FIELDS) if (k in s) out[k] = s[k];
  return out;
}

/** Serialises sweep.json (1-space indent, trailing newline): the bytes local and queue runs share. */
export function sweepJsonText(entries: readonly SweepEntry[]): string {
  return JSON.stringify(entries, null, 1) + '\n';
}

/** Writes DIR/sweep.json and DIR/sweep-timing.json; returns the sweep.json path. */
export function writeSweepFiles(outDir: string, entries: readonly SweepEntry[], timings: readonly (CellTiming | undefined)[]): string {
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, 'sweep.json');
  writeFileSync(file, sweepJsonText(entries));
  writeFileSync(join(outDir, 'sweep-timing.json'), JSON.stringify(timings.map((t) => t ?? null), null, 1) + '\n');
  return file;
}

/**
 * Parses `--vary NAME=V1,V2,...` options into {NAME: [values]} (numbers where they parse).
 * @throws Error naming the malformed option, or a name given twice.
 */
export function parseVary(specs: readonly string[]): Record<string, (number | string)[]> {
  const out: Record<string, (number | string)[]> = {};
  for (const s of specs) {
    const m = /^\s*([A-Za-z_][\w.]*)\s*=\s*(.+)$/.exec(s);
    if (!m) throw new Error(`--vary "${s}": expected NAME=V1,V2,... (e.g. rate=1,2,4,8)`);
    const name = m[1]!;
    if (name in out) throw new Error(`--vary ${name} given twice`);
    const values = m[2]!.split(',').map((v) => v.trim());
    if (values.some((v) => v === '')) throw new Error(`--vary "${s}": empty value`);
    out[name] = values.map((v) => (/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(v) ? Number(v) : v));
    if (new Set(out[name]).size !== out[name]!.length) throw new Error(`--vary "${s}": repeated value`);
  }
  return out;
}

/**
 * Parses `--seeds`: a count K (seeds 1..K) or a comma-separated list ("1,5,9").
 * @throws Error for anything else.
 */
export function parseSeeds(s: string): number[] {
  const t = s.trim();
  if (/^\d+$/.test(t)) {
    const k = Number(t);
    if (k < 1) throw new Error(`--seeds ${s}: need at least one seed`);
    if (k > 1000) throw new Error(`--seeds ${s}: at most 1000 seeds`);
    return Array.from({ length: k }, (_, i) => i + 1);
  }
  if (/^\d+(\s*,\s*\d+)+$/.test(t)) return t.split(',').map((x) => Number(x.trim()));
  throw new Error(`--seeds "${s}": expected a count (3 = seeds 1,2,3) or a list (1,5,9)`);
}

/** Cartesian product of the varied values, first key varying slowest; [{}] when nothing varies. */
export function expandGrid(vary: Readonly<Record<string, readonly (number | string)[]>>): SweepParams[] {
  let grid: SweepParams[] = [{}];
  for (const [k, values] of Object.entries(vary)) {
    if (values.length === 0) throw new Error(`--vary ${k}: no values`);
    grid = grid.flatMap((g) => values.map((v) => ({ ...g, [k]: v })));
  }
  return grid;
}

/** Directory name of a grid point, e.g. "kdn_gbps=10,rate=4". */
export function paramSlug(p: SweepParams): string {
  const s = Object.entries(p)
    .map(([k, v]) => `${k}=${v}`)
    .join(',')
    .replace(/[^\w.=,+-]/g, '_');
  return s || 'base';
}

/** The parameters `--vary` accepts (besides `workload.NAME`). */
export const SWEEP_AXES = ['rate', 'kdn_gbps', 'instances', 'router_replicas', 'replica_sync_ms'] as const;

/**
 * The simulator options of one grid point (see the file comment for the mapping).
 * @throws Error naming the parameter: unknown name, `rate`/`kdn_gbps` not a positive number,
 *   `instances` not an integer in 1..4096, `workload.NAME` not an option of the workload.
 */
export function toSimOptions(spec: SweepSpec, params: SweepParams, strategy: string, seed: number): SimOptions {
  const o: SimOptions = { strategy, seed };
  if (spec.trace) o.trace = spec.trace;
  else o.workload = spec.workload ?? 'synthetic';
  const wl: Record<string, unknown> = { ...(spec.workloadOptions ?? {}) };
  const ov: Record<string, unknown> = { ...(spec.overrides ?? {}) };
  if (spec.instances !== undefined) o.instances = spec.instances;
  if (spec.cluster) o.cluster = spec.cluster;
  for (const [k, v] of Object.entries(params)) {
    if (k === 'rate') {
      if (typeof v !== 'number' || !(v > 0)) throw new Error(`rate must be a positive number, got ${JSON.stringify(v)}`);
      if (spec.trace) o.timeScale = 1 / v;
      else wl['rate'] = v;
    } else if (k === 'kdn_gbps') {
      if (typeof v !== 'number' || !(v > 0)) throw new Error(`--vary kdn_gbps must be positive numbers, got ${JSON.stringify(v)}`);
      ov['kdn_gbps'] = v;
    } else if (k === 'instances') {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > 4096) throw new Error(`--vary instances must be integers in 1..4096, got ${JSON.stringify(v)}`);
      o.instances = v;
    } else if (k === 'router_replicas') {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > 64) throw new Error(`--vary router_replicas must be integers in 1..64, got ${JSON.stringify(v)}`);
      o.routerReplicas = v;
    } else if (k === 'replica_sync_ms') {
      if (v !== 'none' && (typeof v !== 'number' || !(v >= 0))) throw new Error(`--vary replica_sync_ms must be numbers >= 0 or none, got ${JSON.stringify(v)}`);
      o.replicaSyncMs = v === 'none' ? null : v;
    } else if (k.startsWith('workload.')) {
      if (spec.trace) throw new Error(`--vary ${k}: workload options apply to --workload runs, not to --trace`);
      const name = k.slice('workload.'.length);
      checkWorkloadOptions(spec.workload ?? 'synthetic', { [name]: v }, '--vary workload.');
      wl[name] = v;
    } else throw new Error(`--vary ${k}: unknown parameter (known: ${SWEEP_AXES.join(', ')}, workload.<option>)`);
  }
  if (!spec.trace && Object.keys(wl).length) o.workloadOptions = wl;
  if (Object.keys(ov).length) o.overrides = ov;
  if (spec.keepRuns) o.out = join(resolve(spec.out), 'runs', paramSlug(params), strategy, `seed-${seed}`);
  return o;
}

/**
 * Every job of a sweep, in grid order: grid point (slowest), then strategy, then seed.
 * @throws Error when there is no strategy or seed, or both/neither of trace and workload... (a
 *   trace wins over a workload when both are set).
 */
export function planJobs(spec: SweepSpec): SweepJob[] {
  if (spec.strategies.length === 0) throw new Error('sweep: no strategy (--strategies a,b,c)');
  if (spec.seeds.length === 0) throw new Error('sweep: no seed (--seeds K)');
  const points = Object.values(spec.vary).reduce((a, v) => a * Math.max(1, v.length), 1);
  const total = points * spec.strategies.length * spec.seeds.length;
  if (total > 100_000) throw new Error(`sweep: ${total} runs (${points} grid points × ${spec.strategies.length} strategies × ${spec.seeds.length} seeds); at most 100,000 per sweep`);
  const jobs: SweepJob[] = [];
  for (const params of expandGrid(spec.vary)) {
    for (const strategy of spec.strategies) {
      for (const seed of spec.seeds) jobs.push({ index: jobs.length, params, strategy, seed, sim: toSimOptions(spec, params, strategy, seed), traceLabel: spec.trace, outDir: resolve(spec.out) });
    }
  }
  return jobs;
}

/** Formats milliseconds as m:ss or h:mm:ss. */
export function fmtDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '--:--';
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** One progress line, e.g. "sweep 12/108 (11%) · 0 failed · 0:42 elapsed · ~5:10 left · last: kvlab rate=4 seed 2 (3.1 s)". */
export function formatProgress(p: SweepProgress): string {
  const pct = Math.floor((p.done / Math.max(1, p.total)) * 100);
  const j = p.last.job;
  const params = Object.entries(j.params).map(([k, v]) => `${k}=${v}`).join(' ');
  const last = `${j.strategy}${params ? ` ${params}` : ''} seed ${j.seed} (${(p.last.wallMs / 1000).toFixed(1)} s${p.last.error ? `, FAILED: ${p.last.error}` : ''})`;
  return `sweep ${p.done}/${p.total} (${pct}%) · ${p.failed} failed · ${fmtDuration(p.elapsedMs)} elapsed · ~${fmtDuration(p.etaMs)} left · last: ${last}`;
}

/** How jobs are executed. */
export interface SweepExecution {
  /** run jobs in-process with this function (tests inject a fake); default: the worker pool. */
  runner?: SimRunner;
  /** parallel jobs (default: all cores). */
  concurrency?: number;
  /** worker module for the pool (default: notebooks/sweep-worker.js, compiled). */
  workerFile?: string;
  /** simulator module the workers import (default: sim/run.js). */
  simModule?: string;
  onProgress?: (p: SweepProgress) => void;
}

/**
 * The compiled worker file: sweep-worker.js beside this module, or dist/notebooks/sweep-worker.js
 * when running from TypeScript sources. Undefined when neither exists.
 */
export function defaultWorkerFile(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url));
  return [join(here, 'sweep-worker.js'), join(here, '..', 'dist', 'notebooks', 'sweep-worker.js')].find((f) => existsSync(f));
}

/** Entries (sweep.json, grid order) and timings (sweep-timing.json, same order) of a run. */
export interface SweepRun {
  entries: SweepEntry[];
  timings: CellTiming[];
}

/**
 * Runs jobs with bounded concurrency and returns one entry and one timing per job, in job order
 * (whatever the completion order). A failing job becomes an entry with summary null and `error`;
 * the others go on.
 */
export async function runJobs(jobs: readonly SweepJob[], exec: SweepExecution = {}): Promise<SweepRun> {
  const concurrency = Math.max(1, exec.concurrency ?? availableParallelism());
  let pool: Piscina | undefined;
  let run: (job: SweepJob) => Promise<SimResult>;
  if (exec.runner) {
    const runner = exec.runner;
    run = (job) => runner(job.sim);
  } else {
    const workerFile = exec.workerFile ?? defaultWorkerFile();
    if (!workerFile) {
      // sources without a build: no worker file to start threads from; run in this thread
      const runner = await loadSimulator(exec.simModule);
      run = (job) => runner(job.sim);
    } else {
      pool = new Piscina({ filename: workerFile, minThreads: Math.min(concurrency, jobs.length || 1), maxThreads: concurrency, idleTimeout: 1000 });
      const p = pool;
      run = (job) => p.run({ opts: job.sim, simModule: exec.simModule }) as Promise<SimResult>;
    }
  }
  const entries: SweepEntry[] = new Array(jobs.length);
  const timings: CellTiming[] = new Array(jobs.length);
  const t0 = Date.now();
  let done = 0;
  let failed = 0;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < jobs.length) {
      const job = jobs[next++]!;
      const start = Date.now();
      let error: string | undefined;
      let sim: CellTiming['sim'];
      try {
        const r = await run(job);
        entries[job.index] = cellEntry(job, r, job.traceLabel, job.outDir);
        sim = volatileFields(r.summary);
      } catch (e) {
        error = e instanceof Error ? e.message : String(e);
        entries[job.index] = cellEntry(job, { error }, job.traceLabel, job.outDir);
        failed++;
      }
      const wallMs = Date.now() - start;
      timings[job.index] = { params: job.params, strategy: job.strategy, seed: job.seed, wall_ms: wallMs, ...(sim ? { sim } : {}) };
      done++;
      const elapsedMs = Date.now() - t0;
      exec.onProgress?.({ done, total: jobs.length, failed, elapsedMs, etaMs: (elapsedMs / done) * (jobs.length - done), last: { job, wallMs, error } });
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, jobs.length) }, worker));
  } finally {
    await pool?.destroy();
  }
  return { entries, timings };
}

/** What `runSweep` did. */
export interface SweepOutcome {
  file: string;
  entries: SweepEntry[];
  failed: number;
}

/**
 * Plans, runs and writes a sweep (DIR/sweep.json, DIR/sweep-timing.json). Without an injected runner it first loads the
 * simulator in this thread, so a missing sim/run fails at once.
 * @throws SimulatorUnavailableError ("simulator not available: ...") when sim/run.ts does not exist yet.
 */
export async function runSweep(spec: SweepSpec, exec: SweepExecution = {}): Promise<SweepOutcome> {
  const jobs = planJobs(spec);
  if (!exec.runner) await loadSimulator(exec.simModule);
  const out = resolve(spec.out);
  mkdirSync(out, { recursive: true });
  const { entries, timings } = await runJobs(jobs, exec);
  const file = writeSweepFiles(out, entries, timings);
  return { file, entries, failed: entries.filter((e) => e.summary === null).length };
}
