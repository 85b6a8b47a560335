/**
 * Simulated vs observed for imported runs (`kvlab diff OBSERVED SIM [SIM ...]`, OBSERVED written by
 * `kvlab import`): how far the simulator is from a real serving run.
 *
 * - Aggregate errors, for TTFT, TPOT and E2E and each of mean / p50 / p90 / p99:
 *   relative error (sim − observed) / observed of every simulated run (one per seed), then their
 *   mean with a Student-t 95 % CI across the runs (notebooks/stats.ts meanCI95; half-width 0 with
 *   one run). Observed statistics come from its records (or the source's aggregates when the file
 *   had only those; a statistic the source did not report is null).
 * - Per-request errors (only when the observed arrivals are exact and one simulated run is given):
 *   live/diff.ts `diffRecords` (MAPE, median/p90 |error|, bias) of TTFT, TPOT and E2E, joined by id.
 * Output: fidelity.json (docs/FORMATS.md) and a table.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { diffRecords, type FieldStats } from '../live/diff.js';
import { readRecords } from '../live/recorder.js';
import { meanCI95 } from '../notebooks/stats.js';
import { r3 } from './metrics.js';

/** A run directory written by `kvlab import` (config.json kind "observed"). */
export function isObservedRun(dir: string): boolean {
  const f = join(dir, 'config.json');
  if (!existsSync(f)) return false;
  try {
    return (JSON.parse(readFileSync(f, 'utf8')) as { kind?: string }).kind === 'observed';
  } catch {
    return false;
  }
}

const METRICS = ['ttft_ms', 'tpot_ms', 'e2e_ms'] as const;
const STATS = ['mean', 'p50', 'p90', 'p99'] as const;

/** One statistic's comparison. */
export interface StatError {
  observed: number | null;
  /** simulated value per run, and their mean. */
  simulated: (number | null)[];
  simulatedMean: number | null;
  /** mean relative error over runs, and its 95 % CI across runs. */
  relErr: number | null;
  ci95: [number | null, number | null];
}

/** fidelity.json content. */
export interface FidelityResult {
  observed: string;
  simulated: string[];
  arrivals: 'exact' | 'process';
  /** observed run facts: format, model, GPU, rate, requests. */
  run: Record<string, unknown>;
  aggregate: Record<(typeof METRICS)[number], Record<(typeof STATS)[number], StatError>>;
  /** per-request statistics (exact arrivals, one simulated run), else null. */
  perRequest: Record<(typeof METRICS)[number], FieldStats> | null;
  /** completed requests per run. */
  completed: { observed: number; simulated: number[] };
}

function readJson(file: string): Record<string, any> {
  if (!existsSync(file)) throw new Error(`${file}: not found`);
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as Record<string, any>;
  } catch (e) {
    throw new Error(`${file}: not valid JSON: ${(e as Error).message}`);
  }
}

/**
 * Compares an observed (imported) run with one or more simulated runs (see the module docstring).
 * @throws Error naming the directory when a run is missing or not the right kind.
 */
export function fidelityDiff(observedDir: string, simDirs: readonly string[], out?: string): FidelityResult {
  if (!isObservedRun(observedDir)) throw new Error(`${observedDir}: not an imported run (config.json kind "observed"; run kvlab import first)`);
  if (simDirs.length === 0) throw new Error('diff: give at least one simulated run after the observed one');
  const cfg = readJson(join(observedDir, 'config.json'));
  const obs = readJson(join(observedDir, 'summary.json'));
  const sims = simDirs.map((d) => {
    const s = readJson(join(d, 'summary.json'));
    if (s.source !== 'sim') throw new Error(`${join(d, 'summary.json')}: not a simulated run (source "${s.source}")`);
    return s;
  });
  const aggregate = {} as FidelityResult['aggregate'];
  for (const m of METRICS) {
    aggregate[m] = {} as Record<(typeof STATS)[number], StatError>;
    for (const st of STATS) {
      const o = obs[m]?.[st];
      const ov = typeof o === 'number' && Number.isFinite(o) ? o : null;
      const sv = sims.map((s) => (typeof s[m]?.[st] === 'number' ? (s[m][st] as number) : null));
      const rel = ov !== null && ov !== 0 ? sv.filter((x): x is number => x !== null).map((x) => (x - ov) / ov) : [];
      const ci = rel.length ? meanCI95(rel) : null;
      const nums = sv.filter((x): x is number => x !== null);
      aggregate[m][st] = {
        observed: ov,
        simulated: sv,
        simulatedMean: nums.length ? r3(nums.reduce((a, b) => a + b, 0) / nums.length) : null,
        relErr: ci ? Number(ci.mean.toFixed(5)) : null,
        ci95: ci && Number.isFinite(ci.lo) ? [Number(ci.lo.toFixed(5)), Number(ci.hi.toFixed(5))] : [null, null],
      };
    }
  }
  let perRequest: FidelityResult['perRequest'] = null;
  if (cfg.arrivals === 'exact' && simDirs.length === 1) {
    const a = readRecords(observedDir);
    if (a.length) {
      const d = diffRecords(a, readRecords(simDirs[0]!), resolve(observedDir), resolve(simDirs[0]!), 0);
      perRequest = { ttft_ms: d.fields.ttft_ms!, tpot_ms: d.fields.tpot_ms!, e2e_ms: d.fields.e2e_ms! };
    }
  }
  const res: FidelityResult = {
    observed: resolve(observedDir),
    simulated: simDirs.map((d) => resolve(d)),
    arrivals: cfg.arrivals,
    run: { format: cfg.format, model: cfg.model, gpu: cfg.gpu, instances: cfg.instances, request_rate: cfg.request_rate, burstiness: cfg.burstiness, max_concurrency: cfg.max_concurrency, profile: cfg.profile?.base, profile_choice: cfg.profile?.choice },
    aggregate,
    perRequest,
    completed: { observed: obs.completed ?? 0, simulated: sims.map((s) => s.completed ?? 0) },
  };
  if (out) {
    mkdirSync(dirname(resolve(out)), { recursive: true });
    writeFileSync(out, JSON.stringify(res, null, 1) + '\n');
  }
  return res;
}

const pct = (x: number | null): string => (x === null ? '—' : `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)}%`);
const num = (x: number | null): string => (x === null ? '—' : x >= 100 ? x.toFixed(0) : x.toFixed(2));

/** A plain-text table of a fidelity comparison. */
export function formatFidelity(f: FidelityResult): string {
  const rows: string[][] = [['metric', 'stat', 'observed', 'simulated', 'error', 'CI95']];
  for (const m of METRICS) {
    for (const st of STATS) {
      const e = f.aggregate[m][st];
      const ci = e.ci95[0] !== null && e.ci95[1] !== null && e.ci95[1] - e.ci95[0] > 0 ? `[${pct(e.ci95[0])}, ${pct(e.ci95[1])}]` : '';
      rows.push([m.replace('_ms', ''), st, num(e.observed), num(e.simulatedMean), pct(e.relErr), ci]);
    }
  }
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const lines = rows.map((r) => r.map((x, c) => (c < 2 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join('  '));
  lines.splice(1, 0, w.map((n) => '-'.repeat(n)).join('  '));
  const head =
    `observed ${f.observed} (${f.run.format}, ${f.run.model ?? '?'} on ${f.run.gpu ?? '?'}, arrivals ${f.arrivals}); ` +
    `simulated ${f.simulated.length} run(s); completed ${f.completed.observed} vs ${f.completed.simulated.join('/')}`;
  const out = [head, 'aggregate (error = (sim − observed) / observed' + (f.simulated.length > 1 ? '; mean and 95% CI across seeds)' : ')'), ...lines];
  if (f.perRequest) {
    out.push('per request (joined by id):');
    for (const m of METRICS) {
      const s = f.perRequest[m];
      if (s.n) out.push(`  ${m.replace('_ms', '').padEnd(5)} n ${s.n}  MAPE ${s.mape === null ? '—' : `${(s.mape * 100).toFixed(1)}%`}  median |err| ${num(s.median_abs_err_ms)} ms  p90 |err| ${num(s.p90_abs_err_ms)} ms  bias ${num(s.bias_ms)} ms`);
    }
  }
  return out.join('\n') + '\n';
}
