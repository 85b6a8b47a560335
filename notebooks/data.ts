/**
 * Chart data: reduces loaded runs, ab results, sweeps and diffs to the small datasets the charts
 * embed (so a report of runs with thousands of requests stays fast to open):
 * CDFs at <= 200 quantile points per strategy, time series re-bucketed to <= 150 buckets,
 * scatters downsampled to <= 2,000 points, histograms pre-binned.
 *
 * Every builder returns null when its data is absent (the report then skips the chart with a note).
 */
import { basename } from 'node:path';
import type { ReportInputs, RunData } from './load.js';
import { cdfPoints, downsample, histogram, meanCI95, quantile, type MeanCI } from './stats.js';
import { INTENTS, type IntentName, type RecordJson, type SummaryJson, type SweepEntry, type TimeseriesJson } from './types.js';

/** Largest number of points a scatter chart embeds. */
export const MAX_SCATTER_POINTS = 2000;
/** Largest number of time buckets a time-series chart embeds. */
export const MAX_TIME_BUCKETS = 150;
/** Quantile points per strategy in a CDF. */
export const CDF_POINTS = 200;

/** Metric keys of the A/B tables: `FAMILY.STAT` for latency families, or a scalar name. */
export const LATENCY_FAMILIES = ['ttft_ms', 'tpot_ms', 'e2e_ms'] as const;
export const LATENCY_STATS = ['mean', 'p50', 'p90', 'p99'] as const;
export const SCALAR_METRICS = ['throughput_rps', 'prefix_hit_ratio'] as const;

/** Per strategy, per seed, metric key -> value (e.g. 'ttft_ms.p99' -> 1234.5). */
export type SeedTable = Map<string, Map<number, Record<string, number>>>;

/** The metric values of one summary, keyed as in SeedTable. */
export function summaryMetrics(s: SummaryJson): Record<string, number> {
  const m: Record<string, number> = {};
  for (const f of LATENCY_FAMILIES) for (const st of LATENCY_STATS) m[`${f}.${st}`] = s[f][st];
  for (const k of SCALAR_METRICS) m[k] = s[k];
  if (typeof s.load_cov === 'number') m['load_cov'] = s.load_cov;
  return m;
}

/**
 * Strategies in display order: ab.json order (baseline first), then the order runs were given.
 */
export function strategyOrder(inputs: ReportInputs): string[] {
  const out: string[] = [];
  const add = (s: string): void => {
    if (!out.includes(s)) out.push(s);
  };
  for (const { ab } of inputs.abs) {
    if (ab.baseline) add(ab.baseline);
    for (const s of Object.keys(ab.strategies)) add(s);
  }
  for (const r of inputs.runs) add(r.strategy);
  return out;
}

/** The baseline strategy: ab.json's `baseline`, else the first strategy. */
export function baselineOf(inputs: ReportInputs): string | undefined {
  for (const { ab } of inputs.abs) if (ab.baseline && ab.strategies[ab.baseline]) return ab.baseline;
  return strategyOrder(inputs)[0];
}

/**
 * Per-seed metric values per strategy. Run summaries come first; ab.json `values` fill in the
 * (strategy, seed) pairs no loaded run covers (e.g. an ab.json whose run directories are gone).
 */
export function seedTable(inputs: ReportInputs): SeedTable {
  const t: SeedTable = new Map();
  const put = (strategy: string, seed: number, m: Record<string, number>): void => {
    if (!t.has(strategy)) t.set(strategy, new Map());
    const bySeed = t.get(strategy)!;
    if (!bySeed.has(seed)) bySeed.set(seed, m);
  };
  for (const r of inputs.runs) if (r.summary) put(r.strategy, r.seed, summaryMetrics(r.summary));
  for (const { ab } of inputs.abs) {
    for (const [name, s] of Object.entries(ab.strategies)) {
      ab.seeds.forEach((seed, i) => {
        if (t.get(name)?.has(seed)) return;
        const m: Record<string, number> = {};
        for (const f of LATENCY_FAMILIES) {
          for (const st of LATENCY_STATS) {
            const v = s[f]?.[st]?.values?.[i];
            if (typeof v === 'number') m[`${f}.${st}`] = v;
          }
        }
        for (const k of SCALAR_METRICS) {
          const v = s[k]?.values?.[i];
          if (typeof v === 'number') m[k] = v;
        }
        if (Object.keys(m).length > 0) put(name, seed, m);
      });
    }
  }
  const order = strategyOrder(inputs);
  return new Map([...t.entries()].sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0])));
}

/** Values of one metric across seeds of one strategy, keyed by seed. */
export function metricBySeed(t: SeedTable, strategy: string, key: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const [seed, m] of t.get(strategy) ?? []) if (typeof m[key] === 'number') out.set(seed, m[key]!);
  return out;
}

/** Runs grouped by strategy in display order, each group sorted by seed. */
export function runsByStrategy(inputs: ReportInputs): Map<string, RunData[]> {
  const m = new Map<string, RunData[]>();
  for (const s of strategyOrder(inputs)) {
    const rs = inputs.runs.filter((r) => r.strategy === s).sort((a, b) => a.seed - b.seed);
    if (rs.length) m.set(s, rs);
  }
  return m;
}

function okRecords(r: RunData): RecordJson[] {
  return (r.records ?? []).filter((x) => x.status === 'ok' && x.observed);
}

function fmtInt(n: number): string {
  return n.toLocaleString('en-US');
}

/** A chart's datasets and placeholder values, or the reason it cannot be drawn. */
export type ChartData = { datasets: Record<string, object[]>; vars: Record<string, string> } | null;

/**
 * The quantile function averaged over runs (Vincentisation) from summary.json `ttft_quantiles_ms`
 * (n levels k/(n-1)); [] when no run has them or their lengths differ.
 */
export function averagedQuantiles(runs: readonly RunData[]): { value: number; p: number }[] {
  const qs = runs.map((r) => r.summary?.ttft_quantiles_ms).filter((q): q is number[] => Array.isArray(q) && q.length >= 2);
  if (qs.length === 0 || qs.some((q) => q.length !== qs[0]!.length)) return [];
  const n = qs[0]!.length;
  return Array.from({ length: n }, (_, k) => ({ value: qs.reduce((a, q) => a + q[k]!, 0) / qs.length, p: k / (n - 1) }));
}

/**
 * TTFT CDF per strategy: 'cdf' = [{strategy, ttft_ms, p}]. From records.jsonl (completed requests
 * pooled over seeds, <= 200 quantile points), else from summary.json `ttft_quantiles_ms`
 * averaged over seeds.
 */
export function cdfData(inputs: ReportInputs): ChartData {
  const rows: object[] = [];
  const notes: string[] = [];
  for (const [s, runs] of runsByStrategy(inputs)) {
    const v = runs.flatMap((r) => okRecords(r).map((x) => Math.max(x.observed!.ttft_ms, 1e-3)));
    if (v.length > 0) {
      for (const p of cdfPoints(v, CDF_POINTS)) rows.push({ strategy: s, ttft_ms: p.value, p: p.p });
      notes.push(`${s}: ${fmtInt(v.length)} requests`);
      continue;
    }
    const q = averagedQuantiles(runs);
    if (q.length === 0) continue;
    for (const p of q) rows.push({ strategy: s, ttft_ms: Math.max(p.value, 1e-3), p: p.p });
    notes.push(`${s}: percentiles of ${runs.length} run(s)`);
  }
  if (rows.length === 0) return null;
  // one short subtitle: a long one widens the whole image (vega-lite sizes the title to fit)
  const distinct = [...new Set(notes.map((n) => n.slice(n.indexOf(': ') + 2)))];
  const detail = distinct.length === 1 ? `${distinct[0]} per strategy` : notes.length <= 3 ? notes.join(', ') : `${notes.length} strategies`;
  return { datasets: { cdf: rows }, vars: { subtitle: `completed requests pooled over seeds (${detail})` } };
}

/** TTFT p50/p90/p99, mean across seeds with 95 % CI: 'pct' = [{strategy, stat, mean, lo, hi, n}]. */
export function percentileData(inputs: ReportInputs): ChartData {
  const t = seedTable(inputs);
  const rows: object[] = [];
  let maxN = 0;
  for (const s of t.keys()) {
    for (const st of ['p50', 'p90', 'p99']) {
      const ci = meanCI95([...metricBySeed(t, s, `ttft_ms.${st}`).values()]);
      if (ci.n === 0) continue;
      maxN = Math.max(maxN, ci.n);
      rows.push({ strategy: s, stat: st, mean: ci.mean, lo: ci.lo, hi: ci.hi, n: ci.n });
    }
  }
  if (rows.length === 0) return null;
  const sub = maxN > 1 ? `each run's percentile, averaged over up to ${maxN} seeds; whiskers: 95% Student-t CI` : 'one seed per strategy: no confidence interval';
  return { datasets: { pct: rows }, vars: { subtitle: sub } };
}

/** Sweep entries that finished, from every sweep input. */
function sweepEntries(inputs: ReportInputs): (SweepEntry & { summary: SummaryJson })[] {
  return inputs.sweeps.flatMap((s) => s.entries).filter((e): e is SweepEntry & { summary: SummaryJson } => e.summary !== null);
}

/** A readable label of parameters, e.g. "kdn_gbps = 10". */
export function paramLabel(params: Record<string, number | string>, skip: string): string {
  const parts = Object.entries(params)
    .filter(([k]) => k !== skip)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k} = ${v}`);
  return parts.length ? parts.join(', ') : 'all runs';
}

/** One aggregated sweep point: mean across seeds (and 95 % CI) of a metric for a strategy and grid point. */
export interface SweepPoint {
  strategy: string;
  params: Record<string, number | string>;
  metric: string;
  ci: MeanCI;
}

/**
 * Aggregates a sweep: groups finished entries by (strategy, params) and computes, for each metric
 * key (as in SeedTable, e.g. 'ttft_ms.p99', 'throughput_rps'), the mean and 95 % CI across seeds.
 * Failed entries (summary null) are ignored. Order: strategy, then params as first seen.
 */
export function aggregateSweep(entries: readonly SweepEntry[], metrics: readonly string[]): SweepPoint[] {
  const groups = new Map<string, { strategy: string; params: Record<string, number | string>; summaries: SummaryJson[] }>();
  for (const e of entries) {
    if (!e.summary) continue;
    const key = JSON.stringify([e.strategy, Object.entries(e.params).sort(([a], [b]) => a.localeCompare(b))]);
    if (!groups.has(key)) groups.set(key, { strategy: e.strategy, params: e.params, summaries: [] });
    groups.get(key)!.summaries.push(e.summary);
  }
  const out: SweepPoint[] = [];
  for (const g of groups.values()) {
    const ms = g.summaries.map(summaryMetrics);
    for (const metric of metrics) out.push({ strategy: g.strategy, params: g.params, metric, ci: meanCI95(ms.map((m) => m[metric] ?? NaN)) });
  }
  return out;
}

const SWEEP_AXES: Record<string, { title: string }> = {
  rate: { title: 'offered load (rate)' },
  kdn_gbps: { title: 'KDN link bandwidth (Gbit/s)' },
};

/**
 * Sweep chart data with x = parameter `xParam`: 'sweep' = [{strategy, x, group, stat, mean, lo, hi, n}].
 * @param metric 'ttft' (p50, p90 and p99 lines) or 'throughput'.
 * Returns null when no finished sweep entry varies `xParam` numerically.
 */
export function sweepData(inputs: ReportInputs, xParam: string, metric: 'ttft' | 'throughput'): ChartData {
  const entries = sweepEntries(inputs).filter((e) => typeof e.params[xParam] === 'number');
  const xs = new Set(entries.map((e) => e.params[xParam]));
  if (xs.size < 2) return null;
  const keys = metric === 'ttft' ? ['ttft_ms.p50', 'ttft_ms.p99'] : ['throughput_rps'];
  const rows = aggregateSweep(entries, keys)
    .filter((p) => p.ci.n > 0)
    .map((p) => ({
      strategy: p.strategy,
      x: p.params[xParam],
      group: paramLabel(p.params, xParam),
      stat: p.metric.split('.')[1] ?? p.metric,
      mean: p.ci.mean,
      lo: p.ci.lo,
      hi: p.ci.hi,
      n: p.ci.n,
    }));
  if (metric === 'ttft') {
    // the y axis is logarithmic: keep CI lower bounds positive (a 2-seed interval can cross zero)
    const floor = Math.min(...rows.map((r) => r.mean).filter((m) => m > 0)) / 2;
    for (const r of rows) r.lo = Math.max(r.lo, floor);
  }
  const values = [...xs] as number[];
  const logX = values.every((v) => v > 0) && Math.max(...values) / Math.min(...values) >= 8;
  const seeds = Math.max(...rows.map((r) => r.n));
  const title = SWEEP_AXES[xParam]?.title ?? xParam;
  const what = metric === 'ttft' ? "each run's TTFT p50 (solid) and p99 (dashed)" : 'completed requests per second';
  return {
    datasets: { sweep: rows },
    vars: {
      x_title: logX ? `${title}, log scale` : title,
      x_scale: logX ? 'log' : 'linear',
      subtitle: seeds > 1 ? `${what}; mean over ${seeds} seeds, bars: 95% CI` : `${what}; one seed (no confidence interval)`,
    },
  };
}

/** Metrics of the replica chart: summary key -> facet title. */
const REPLICA_METRICS: [string, string][] = [
  ['prefix_hit_ratio', 'prefix hit ratio'],
  ['ttft_ms.mean', 'TTFT mean (ms)'],
  ['load_cov', 'load CoV'],
];

/** "no sync", "sync 50 ms" for a sweep entry's replica_sync_ms (absent = the default 0 ms). */
export function syncLabel(v: number | string | undefined): string {
  return v === undefined ? 'sync 0 ms' : v === 'none' ? 'no sync' : `sync ${v} ms`;
}

/**
 * Router-replica chart data: 'replicas' = [{strategy, x = router_replicas, sync, metric, mean,
 * lo, hi, n}], means across seeds (and any other varied parameter) of prefix hit ratio, TTFT
 * mean and load CoV. Returns null unless finished sweep entries vary router_replicas.
 */
export function replicaData(inputs: ReportInputs): ChartData {
  const entries = sweepEntries(inputs).filter((e) => typeof e.params['router_replicas'] === 'number');
  if (new Set(entries.map((e) => e.params['router_replicas'])).size < 2) return null;
  const relabelled = entries.map((e) => ({ ...e, params: { router_replicas: e.params['router_replicas']!, sync: syncLabel(e.params['replica_sync_ms']) } }));
  const rows = aggregateSweep(relabelled, REPLICA_METRICS.map(([k]) => k))
    .filter((p) => p.ci.n > 0)
    .map((p) => ({ strategy: p.strategy, x: p.params['router_replicas'], sync: p.params['sync'], metric: REPLICA_METRICS.find(([k]) => k === p.metric)![1], mean: p.ci.mean, lo: p.ci.lo, hi: p.ci.hi, n: p.ci.n }));
  const seeds = Math.max(...rows.map((r) => r.n));
  return {
    datasets: { replicas: rows },
    vars: { subtitle: `each request decided by one of R engines that learn each other's bookkeeping after the sync delay; ${seeds > 1 ? `mean over ${seeds} runs, bars: 95% CI` : 'one run per point'}` },
  };
}

/**
 * Goodput against offered load from capacity.json files: every point `kvlab capacity`
 * evaluated (per seed), one line per strategy, and the target as a rule.
 */
export function goodputLoadData(inputs: ReportInputs): ChartData {
  const caps = inputs.capacities ?? [];
  if (caps.length === 0) return null;
  const rows: { strategy: string; x: number; goodput: number; seed: number; multiplier: number }[] = [];
  for (const c of caps) for (const [s, e] of Object.entries(c.strategies)) for (const p of e.points) rows.push({ strategy: s, x: p.offered_load, goodput: p.goodput, seed: p.seed, multiplier: p.multiplier });
  if (rows.length === 0) return null;
  rows.sort((a, b) => a.strategy.localeCompare(b.strategy) || a.seed - b.seed || a.x - b.x);
  const c = caps[0]!;
  return {
    datasets: { points: rows, target: [{ target: c.target }] },
    vars: { subtitle: `share of requests within TTFT <= ${c.slo.ttft_ms} ms and TBT <= ${c.slo.tbt_ms} ms; every point kvlab capacity evaluated (bisection), per seed; rule: target ${c.target}` },
  };
}

/** One run per strategy for time-series charts: the lowest seed that has timeseries.json. */
function seriesRuns(inputs: ReportInputs): { strategy: string; run: RunData; ts: TimeseriesJson }[] {
  const out: { strategy: string; run: RunData; ts: TimeseriesJson }[] = [];
  for (const [s, runs] of runsByStrategy(inputs)) {
    const r = runs.find((x) => x.timeseries && x.timeseries.t_ms.length > 0);
    if (r) out.push({ strategy: s, run: r, ts: r.timeseries! });
  }
  return out;
}

/** Time axis unit for a span: minutes from 20 min on, else seconds. */
export function timeUnit(spanMs: number): { unit: 's' | 'min'; div: number } {
  return spanMs >= 20 * 60_000 ? { unit: 'min', div: 60_000 } : { unit: 's', div: 1000 };
}

/**
 * Merges adjacent buckets so that at most `max` remain: returns groups of original indices.
 */
export function bucketGroups(n: number, max = MAX_TIME_BUCKETS): number[][] {
  const k = Math.max(1, Math.ceil(n / max));
  const out: number[][] = [];
  for (let i = 0; i < n; i += k) out.push(Array.from({ length: Math.min(k, n - i) }, (_, j) => i + j));
  return out;
}

const sumAt = (a: readonly number[] | undefined, idx: readonly number[]): number => idx.reduce((s, i) => s + (a?.[i] ?? 0), 0);
const meanAt = (a: readonly number[] | undefined, idx: readonly number[]): number => sumAt(a, idx) / idx.length;

function seriesSubtitle(runs: { strategy: string; run: RunData; ts: TimeseriesJson }[], extra: string): string {
  const seeds = [...new Set(runs.map((r) => r.run.seed))];
  const bucket = runs[0]!.ts.bucket_ms;
  const k = Math.max(...runs.map((r) => bucketGroups(r.ts.t_ms.length).at(0)!.length));
  const b = (bucket * k) / 1000;
  return `${extra}${extra ? '; ' : ''}seed ${seeds.join(', ')}; ${b >= 1 ? b.toLocaleString('en-US') : b} s buckets`;
}

function spanOf(runs: { ts: TimeseriesJson }[]): number {
  return Math.max(...runs.map((r) => (r.ts.t_ms.at(-1) ?? 0) + r.ts.bucket_ms));
}

/** Intent mix over time: 'mix' = [{strategy, t, intent, intent_order, count}] (buckets with requests only). */
export function intentTimeData(inputs: ReportInputs): ChartData {
  const runs = seriesRuns(inputs).filter((r) => r.ts.intent);
  if (runs.length === 0) return null;
  const { unit, div } = timeUnit(spanOf(runs));
  const rows: object[] = [];
  const used = new Set<IntentName>();
  for (const { strategy, ts } of runs) {
    for (const g of bucketGroups(ts.t_ms.length)) {
      const total = INTENTS.reduce((a, it) => a + sumAt(ts.intent![it], g), 0);
      if (total <= 0) continue;
      for (const it of INTENTS) {
        const c = sumAt(ts.intent![it], g);
        if (c > 0) used.add(it);
        rows.push({ strategy, t: ts.t_ms[g[0]!]! / div, intent: it, intent_order: INTENTS.indexOf(it), count: c });
      }
    }
  }
  if (used.size === 0) return null;
  return { datasets: { mix: rows.filter((r) => used.has((r as { intent: IntentName }).intent)) }, vars: { time_unit: unit, subtitle: seriesSubtitle(runs, 'share of arriving requests per bucket') } };
}

function instanceOrder(id: string): number {
  const m = /(\d+)$/.exec(id);
  return m ? Number(m[1]) : 0;
}

/** Requests per instance split by intent: 'mix' = [{strategy, instance, instance_order, intent, intent_order, count}]. */
export function intentInstanceData(inputs: ReportInputs): ChartData {
  const rows: object[] = [];
  const seeds = new Set<number>();
  for (const [s, runs] of runsByStrategy(inputs)) {
    const counts = new Map<string, Map<IntentName, number>>();
    const add = (inst: string, it: IntentName, c: number): void => {
      if (!counts.has(inst)) counts.set(inst, new Map());
      const m = counts.get(inst)!;
      m.set(it, (m.get(it) ?? 0) + c);
    };
    const withRecords = runs.find((r) => r.records && r.records.length > 0);
    const withSeries = runs.find((r) => r.timeseries?.instances);
    if (withRecords) {
      for (const r of okRecords(withRecords)) if (r.instance) add(r.instance, INTENTS.includes(r.intent) ? r.intent : 'none', 1);
      seeds.add(withRecords.seed);
    } else if (withSeries) {
      for (const [id, inst] of Object.entries(withSeries.timeseries!.instances!)) {
        for (const it of INTENTS) add(id, it, (inst.intent?.[it] ?? []).reduce((a, b) => a + b, 0));
      }
      seeds.add(withSeries.seed);
    } else continue;
    for (const [inst, m] of counts) {
      for (const it of INTENTS) {
        const c = m.get(it) ?? 0;
        if (c > 0) rows.push({ strategy: s, instance: inst, instance_order: instanceOrder(inst), intent: it, intent_order: INTENTS.indexOf(it), count: c });
      }
    }
  }
  if (rows.length === 0) return null;
  return { datasets: { mix: rows }, vars: { subtitle: `completed requests; seed ${[...seeds].join(', ')}` } };
}

/**
 * Per-instance heat map over time of `field` ('hit_ratio' or 'booked_prefill_tokens'):
 * 'cells' = [{strategy, instance, instance_order, t, t2, value}] (value = mean over merged buckets).
 */
export function instanceHeatData(inputs: ReportInputs, field: 'hit_ratio' | 'booked_prefill_tokens'): ChartData {
  const runs = seriesRuns(inputs).filter((r) => r.ts.instances && Object.values(r.ts.instances).some((i) => Array.isArray(i[field])));
  if (runs.length === 0) return null;
  const { unit, div } = timeUnit(spanOf(runs));
  const rows: object[] = [];
  for (const { strategy, ts } of runs) {
    const groups = bucketGroups(ts.t_ms.length);
    for (const [id, inst] of Object.entries(ts.instances!)) {
      const a = inst[field];
      if (!a) continue;
      for (const g of groups) {
        let value: number;
        if (field === 'hit_ratio' && inst.requests) {
          // weight by requests so that idle buckets (ratio 0) do not dilute the merged value
          const w = sumAt(inst.requests, g);
          value = w > 0 ? g.reduce((s, i) => s + (a[i] ?? 0) * (inst.requests![i] ?? 0), 0) / w : 0;
        } else value = meanAt(a, g);
        const t0 = ts.t_ms[g[0]!]!;
        rows.push({ strategy, instance: id, instance_order: instanceOrder(id), t: t0 / div, t2: (t0 + ts.bucket_ms * g.length) / div, value });
      }
    }
  }
  const what = field === 'hit_ratio' ? 'prompt tokens served from the instance prefix cache' : 'prefill tokens booked by the engine and not yet computed';
  return { datasets: { cells: rows }, vars: { time_unit: unit, subtitle: seriesSubtitle(runs, what) } };
}

/**
 * KDN link series: 'links' = [{strategy, t, stat, value}] with stat 'mean over links' and
 * 'busiest link' (utilisation) or 'worst link' (wait). Mean wait averages only links that carried
 * traffic in the bucket. Null when no run has link series or every value is 0.
 */
export function linkData(inputs: ReportInputs, field: 'busy_frac' | 'mean_wait_ms'): ChartData {
  const runs = seriesRuns(inputs).filter((r) => r.ts.links && Object.keys(r.ts.links).length > 0);
  if (runs.length === 0) return null;
  const { unit, div } = timeUnit(spanOf(runs));
  const rows: object[] = [];
  let any = false;
  const maxLabel = field === 'busy_frac' ? 'busiest link' : 'worst link';
  for (const { strategy, ts } of runs) {
    const links = Object.values(ts.links!);
    for (const g of bucketGroups(ts.t_ms.length)) {
      const per = links.map((l) => ({ v: meanAt(l[field], g), busy: meanAt(l.busy_frac, g) }));
      const active = field === 'busy_frac' ? per : per.filter((p) => p.busy > 0 || p.v > 0);
      const mean = active.length ? active.reduce((s, p) => s + p.v, 0) / active.length : 0;
      const max = per.reduce((m, p) => Math.max(m, p.v), 0);
      if (max > 0) any = true;
      const t = ts.t_ms[g[0]!]! / div;
      rows.push({ strategy, t, stat: 'mean over links', value: mean }, { strategy, t, stat: maxLabel, value: max });
    }
  }
  if (!any) return null;
  const n = Math.max(...runs.map((r) => Object.keys(r.ts.links!).length));
  return { datasets: { links: rows }, vars: { time_unit: unit, subtitle: seriesSubtitle(runs, `${n} KDN→instance links`) } };
}

/** Error statistics of predictions against observations (ms). */
export interface ErrorStats {
  n: number;
  /** mean |obs - pred| / obs, fraction. */
  mape: number;
  medianAbsErrMs: number;
  p90AbsErrMs: number;
  /** mean (obs - pred), ms: > 0 means the prediction is optimistic. */
  biasMs: number;
}

/** Error statistics of (predicted, observed) pairs; null for no pairs. */
export function errorStats(pairs: readonly { x: number; y: number }[]): ErrorStats | null {
  if (pairs.length === 0) return null;
  const abs = pairs.map((p) => Math.abs(p.y - p.x));
  const ape = pairs.filter((p) => p.y > 0).map((p) => Math.abs(p.y - p.x) / p.y);
  return {
    n: pairs.length,
    mape: ape.length ? ape.reduce((a, b) => a + b, 0) / ape.length : NaN,
    medianAbsErrMs: quantile(abs, 0.5),
    p90AbsErrMs: quantile(abs, 0.9),
    biasMs: pairs.reduce((a, p) => a + (p.y - p.x), 0) / pairs.length,
  };
}

/** (engine-predicted, observed) TTFT pairs per strategy from records, all seeds. */
export function predictionPairs(inputs: ReportInputs): Map<string, { id: string; x: number; y: number }[]> {
  const out = new Map<string, { id: string; x: number; y: number }[]>();
  for (const [s, runs] of runsByStrategy(inputs)) {
    const pairs = runs.flatMap((r) =>
      okRecords(r)
        .filter((x) => x.predicted && typeof x.predicted.ttft_ms === 'number')
        .map((x) => ({ id: runs.length > 1 ? `${x.id} (seed ${r.seed})` : x.id, x: x.predicted!.ttft_ms, y: x.observed!.ttft_ms })),
    );
    if (pairs.length) out.set(s, pairs);
  }
  return out;
}

/** Scatter data: 'points' (<= MAX_SCATTER_POINTS, split evenly between groups) and 'diagonal'. */
function scatterDatasets(groups: Map<string, { id: string; x: number; y: number }[]>): { points: object[]; diagonal: object[]; shown: number; total: number } {
  const per = Math.floor(MAX_SCATTER_POINTS / Math.max(1, groups.size));
  const points: { group: string; id: string; x: number; y: number }[] = [];
  let total = 0;
  for (const [g, pairs] of groups) {
    const pos = pairs.filter((p) => p.x > 0 && p.y > 0);
    total += pos.length;
    for (const p of downsample(pos, per)) points.push({ group: g, id: p.id, x: p.x, y: p.y });
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const p of points) {
    lo = Math.min(lo, p.x, p.y);
    hi = Math.max(hi, p.x, p.y);
  }
  const diagonal = points.length ? [{ x: lo, y: lo, label: null }, { x: hi, y: hi, label: 'y = x' }] : [];
  return { points, diagonal, shown: points.length, total };
}

function histDatasets(groups: Map<string, { x: number; y: number }[]>): object[] {
  const rows: object[] = [];
  for (const [g, pairs] of groups) {
    const errs = pairs.map((p) => p.y - p.x);
    for (const b of histogram(errs, 40)) rows.push({ group: g, start: b.start, end: b.end, count: b.count, share: b.count / errs.length });
  }
  return rows;
}

/** Engine-predicted vs observed TTFT scatter (per strategy, from records). */
export function predictionScatterData(inputs: ReportInputs): ChartData {
  const groups = predictionPairs(inputs);
  if (groups.size === 0) return null;
  const d = scatterDatasets(groups);
  if (d.shown === 0) return null;
  return {
    datasets: { points: d.points, diagonal: d.diagonal },
    vars: {
      title: "Engine's predicted TTFT against observed TTFT",
      subtitle: `decision-time prediction per request; ${fmtInt(d.shown)} of ${fmtInt(d.total)} requests shown; points above the line took longer than predicted`,
      x_title: 'predicted TTFT (ms, log scale)',
      y_title: 'observed TTFT (ms, log scale)',
      group_title: 'strategy',
    },
  };
}

/** Histogram of engine prediction errors per strategy. */
export function predictionErrorData(inputs: ReportInputs): ChartData {
  const groups = predictionPairs(inputs);
  if (groups.size === 0) return null;
  return {
    datasets: { bins: histDatasets(groups) },
    vars: {
      title: "Engine's TTFT prediction error",
      subtitle: 'observed − predicted, all completed requests; > 0: slower than predicted; 0.5% tails folded into the edge bins',
      x_title: 'observed − predicted TTFT (ms)',
    },
  };
}

/** A short label of a diff input: "A vs B" from the run directory names. */
export function diffLabel(a: string, b: string): string {
  const name = (p: string): string => {
    const parts = p.split(/[\\/]+/).filter(Boolean);
    return parts.slice(-2).join('/') || basename(p);
  };
  return `${name(a)} → ${name(b)}`;
}

function diffPairs(inputs: ReportInputs, field = 'ttft_ms'): Map<string, { id: string; x: number; y: number }[]> {
  const out = new Map<string, { id: string; x: number; y: number }[]>();
  for (const { diff } of inputs.diffs) {
    const pairs = (diff.pairs ?? [])
      .filter((p) => typeof p.a[field] === 'number' && typeof p.b[field] === 'number')
      .map((p) => ({ id: p.id, x: p.a[field] as number, y: p.b[field] as number }));
    if (pairs.length) out.set(diffLabel(diff.a, diff.b), pairs);
  }
  return out;
}

/** `kvlab diff` scatter: run A's TTFT (x) against run B's (y), per diff.json. */
export function diffScatterData(inputs: ReportInputs): ChartData {
  const groups = diffPairs(inputs);
  if (groups.size === 0) return null;
  const d = scatterDatasets(groups);
  if (d.shown === 0) return null;
  const one = inputs.diffs.length === 1 ? inputs.diffs[0]!.diff : null;
  return {
    datasets: { points: d.points, diagonal: d.diagonal },
    vars: {
      title: 'kvlab diff: run A (prediction) against run B (observation), TTFT',
      subtitle: `${one ? `A = ${one.a}, B = ${one.b}; ` : ''}${fmtInt(d.shown)} of ${fmtInt(d.total)} joined requests shown`,
      x_title: 'A: TTFT (ms, log scale)',
      y_title: 'B: TTFT (ms, log scale)',
      group_title: 'diff (A → B)',
    },
  };
}

/** `kvlab diff` error histogram (B − A). */
export function diffErrorData(inputs: ReportInputs): ChartData {
  const groups = diffPairs(inputs);
  if (groups.size === 0) return null;
  return {
    datasets: { bins: histDatasets(groups) },
    vars: { title: 'kvlab diff: TTFT error B − A', subtitle: 'all joined requests; 0.5% tails folded into the edge bins', x_title: 'B − A TTFT (ms)' },
  };
}

/** Which request the timeline shows. */
export interface TimelineChoice {
  /** a request id (`--request`); default: the slowest request (highest observed TTFT). */
  requestId?: string;
  /** restrict to runs of this strategy (`--request-strategy`). */
  strategy?: string;
}

/** The request chosen for the timeline, with the run it came from. */
export interface ChosenRequest {
  run: RunData;
  record: RecordJson;
}

/**
 * Picks the request for the timeline chart: `choice.requestId` in the first matching run
 * (strategy order, then seed), or the request with the highest observed TTFT among the runs whose
 * decisions carry predicted TTFTs for their alternatives (all runs when none does).
 * @returns null when no run has records; throws an Error naming the id when `requestId` is given but found nowhere.
 */
export function chooseRequest(inputs: ReportInputs, choice: TimelineChoice = {}): ChosenRequest | null {
  const runs = [...runsByStrategy(inputs).values()].flat().filter((r) => r.records && (!choice.strategy || r.strategy === choice.strategy));
  if (choice.strategy && runs.length === 0) {
    throw new Error(`--request-strategy ${choice.strategy}: no run of that strategy has records.jsonl`);
  }
  if (choice.requestId !== undefined) {
    for (const run of runs) {
      const record = run.records!.find((r) => r.id === choice.requestId);
      if (record) {
        if (record.status !== 'ok' || !record.observed) throw new Error(`request ${choice.requestId} in ${run.dir} has status "${record.status}": no timeline to draw`);
        return { run, record };
      }
    }
    throw new Error(`request ${choice.requestId} not found in the records.jsonl of any run${choice.strategy ? ` of strategy ${choice.strategy}` : ''}`);
  }
  // by default, prefer strategies whose decisions carry predicted TTFTs for the alternatives
  // (the chart compares them); fall back to every run
  const hasAltTtft = (r: RunData): boolean => r.records!.some((x) => x.decision?.alternatives?.some((a) => typeof a.ttft_ms === 'number'));
  const preferred = runs.filter(hasAltTtft);
  let best: ChosenRequest | null = null;
  for (const run of preferred.length ? preferred : runs) {
    for (const record of okRecords(run)) {
      if (!best || record.observed!.ttft_ms > best.record.observed!.ttft_ms) best = { run, record };
    }
  }
  return best;
}

type Phase = 'prepare' | 'link wait' | 'transfer' | 'queue' | 'KV load' | 'prefill' | 'decode' | 'rejected option (predicted TTFT)';

/**
 * Sequential phases of a TTFT breakdown, ms since arrival:
 * prepare, link wait, transfer, queue, KV load, prefill (docs/FORMATS.md: ttft is their sum).
 */
function phases(b: { prepare_ms: number; link_wait_ms: number; transfer_ms: number; queue_ms: number; kv_load_ms: number; prefill_ms: number }): { phase: Phase; start: number; end: number }[] {
  const out: { phase: Phase; start: number; end: number }[] = [];
  let t = 0;
  const push = (phase: Phase, d: number): void => {
    if (d > 0) out.push({ phase, start: t, end: t + d });
    t += Math.max(0, d);
  };
  push('prepare', b.prepare_ms);
  push('link wait', b.link_wait_ms);
  push('transfer', b.transfer_ms);
  push('queue', b.queue_ms);
  push('KV load', b.kv_load_ms);
  push('prefill', b.prefill_ms);
  return out;
}

const fmtMs = (x: number): string => `${x.toLocaleString('en-US', { maximumFractionDigits: x < 10 ? 1 : 0 })} ms`;

/** Largest number of rejected alternatives drawn (lowest predicted TTFT first). */
export const MAX_ALTERNATIVES = 8;

/**
 * One request's timeline: 'segments' = [{panel, row, row_order, phase, start, end}] and
 * 'totals' = [{panel, row, row_order, end, label}], ms since the request's arrival.
 */
export function timelineData(inputs: ReportInputs, choice: TimelineChoice = {}): ChartData {
  const chosen = chooseRequest(inputs, choice);
  if (!chosen) return null;
  const { run, record: r } = chosen;
  const o = r.observed!;
  const segments: object[] = [];
  const totals: object[] = [];
  const where = `${r.instance ?? '?'} · ${r.intent}`;
  let order = 0;
  const row = (panel: 'ttft' | 'e2e', name: string, segs: { phase: Phase; start: number; end: number }[], end: number, label: string): void => {
    const ro = order++;
    for (const s of segs) segments.push({ panel, row: name, row_order: ro, ...s });
    totals.push({ panel, row: name, row_order: ro, end, label });
  };
  row('ttft', `observed (${where})`, phases(o), o.ttft_ms, fmtMs(o.ttft_ms));
  if (r.predicted) row('ttft', `predicted (${where})`, phases(r.predicted), r.predicted.ttft_ms, fmtMs(r.predicted.ttft_ms));
  const alts = (r.decision?.alternatives ?? [])
    .filter((a) => !(a.instance === r.instance && a.intent === r.intent))
    .sort((a, b) => (a.ttft_ms ?? Infinity) - (b.ttft_ms ?? Infinity) || (a.score ?? 0) - (b.score ?? 0));
  const names = new Set<string>();
  for (const a of alts.slice(0, MAX_ALTERNATIVES)) {
    // hybrid options differ by their split point; keep every row name unique
    let name = `rejected: ${a.instance} · ${a.intent}${typeof a.reused_tokens === 'number' && a.intent === 'hybrid' ? ` (${fmtInt(a.reused_tokens)} KV)` : ''}`;
    for (let k = 2; names.has(name); k++) name = `${name.replace(/ #\d+$/, '')} #${k}`;
    names.add(name);
    if (typeof a.ttft_ms === 'number' && Number.isFinite(a.ttft_ms)) {
      row('ttft', name, [{ phase: 'rejected option (predicted TTFT)', start: 0, end: a.ttft_ms }], a.ttft_ms, fmtMs(a.ttft_ms));
    } else {
      // no TTFT prediction for this option: show the strategy's score as text, no bar in ms
      const sc = Number.isFinite(a.score) ? a.score.toLocaleString('en-US', { maximumFractionDigits: 2 }) : String(a.score ?? '–');
      row('ttft', name, [], 0, `score ${sc} (no TTFT prediction)`);
    }
  }
  const whole = phases(o);
  if (o.e2e_ms > o.ttft_ms) whole.push({ phase: 'decode', start: o.ttft_ms, end: o.e2e_ms });
  row('e2e', 'observed', whole, o.e2e_ms, `TTFT ${fmtMs(o.ttft_ms)} · E2E ${fmtMs(o.e2e_ms)}`);
  const how = choice.requestId !== undefined ? 'chosen request' : 'slowest request (highest observed TTFT)';
  const more = alts.length > MAX_ALTERNATIVES ? ` (${MAX_ALTERNATIVES} of ${alts.length} rejected options shown)` : '';
  return {
    datasets: { segments, totals },
    vars: {
      title: `Request ${r.id}: where its time went`,
      subtitle:
        `${how}; strategy ${run.strategy}, seed ${run.seed}; ${fmtInt(r.input_tokens)} prompt tokens (${fmtInt(r.knowledge_tokens)} knowledge), ` +
        `${fmtInt(r.output_tokens)} output tokens${r.decision ? `; reason: ${r.decision.reason}` : ''}${more}`,
    },
  };
}
