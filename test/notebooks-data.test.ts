import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  aggregateSweep,
  bucketGroups,
  cdfData,
  chooseRequest,
  intentTimeData,
  MAX_SCATTER_POINTS,
  MAX_TIME_BUCKETS,
  predictionScatterData,
  seedTable,
  sweepData,
  timelineData,
} from '../notebooks/data.js';
import { loadInputs, type ReportInputs, type RunData } from '../notebooks/load.js';
import { abTables, abWideTables, tableToMarkdown } from '../notebooks/tables.js';
import type { SummaryJson, SweepEntry } from '../notebooks/types.js';
import { makeFixtures, type FixturePaths } from './fixtures/notebooks/make-fixtures.js';

let root: string;
let fx: FixturePaths;
let inputs: ReportInputs;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'kvlab-nb-data-'));
  fx = makeFixtures(join(root, 'fx'), { requests: 2500 });
  inputs = loadInputs([fx.abDir, fx.sweepDir, fx.diffFile]);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A summary whose every metric is `v` (ttft p50 = v, p99 = 4v ...). */
function summary(strategy: string, seed: number, v: number): SummaryJson {
  const st = { mean: v, p50: v, p90: 2 * v, p99: 4 * v };
  return { strategy, seed, requests: 10, completed: 10, rejected: 0, failed: 0, prefix_hit_ratio: 0.5, ttft_ms: st, tpot_ms: st, e2e_ms: st, throughput_rps: 1, duration_ms: 1 };
}

function runOf(strategy: string, seed: number, v: number): RunData {
  return { dir: `/x/${strategy}/${seed}`, strategy, seed, summary: summary(strategy, seed, v), config: null, timeseries: null, records: null };
}

describe('A/B tables', () => {
  const handInputs = (): ReportInputs => ({
    runs: [
      runOf('base', 1, 100), runOf('base', 2, 300), runOf('base', 3, 500),
      runOf('better', 1, 72), runOf('better', 2, 269), runOf('better', 3, 469), // -28, -31, -31: consistently lower
      runOf('noisy', 1, 130), runOf('noisy', 2, 250), runOf('noisy', 3, 520), // +30, -50, +20
      runOf('worse', 1, 150), runOf('worse', 2, 352), runOf('worse', 3, 548), // +50, +52, +48
    ],
    abs: [], sweeps: [], diffs: [], warnings: [],
  });

  it('marks only changes whose CI excludes zero, with the right direction', () => {
    const tables = abTables(handInputs());
    const ttft = tables.find((t) => t.id === 'ab-ttft_ms')!;
    const row = (s: string, stat: string) => ttft.rows.find((r) => r[0]!.text === s && r[1]!.text === stat)!;
    expect(row('base', 'mean')[3]!.text).toBe('baseline');
    expect(row('better', 'mean')[3]).toMatchObject({ strong: true, tone: 'good' });
    expect(row('better', 'mean')[3]!.text).toMatch(/^−10\.0% \[/);
    expect(row('noisy', 'mean')[3]!.strong).toBeUndefined();
    expect(row('worse', 'mean')[3]).toMatchObject({ strong: true, tone: 'bad' });
    // value column: mean [CI] of the per-seed values
    expect(row('base', 'mean')[2]!.text).toMatch(/^300 \[/);
    // throughput is identical everywhere: no significant change
    const thr = tables.find((t) => t.id === 'ab-throughput')!;
    expect(thr.rows.every((r) => !r[3]!.strong)).toBe(true);
    const md = tableToMarkdown(ttft);
    expect(md).toContain('| strategy | statistic | value [95% CI] | change vs base [95% CI] |');
    expect(md).toMatch(/\*\*−10\.0% \[[^\]]+\]\*\*/);
  });

  it('the wide HTML form carries the same change as a second line', () => {
    const wide = abWideTables(handInputs()).find((t) => t.id === 'ab-ttft_ms')!;
    const better = wide.rows.find((r) => r[0]!.text === 'better')!;
    expect(better[1]!.sub).toMatchObject({ strong: true, tone: 'good' });
    expect(wide.rows.find((r) => r[0]!.text === 'base (baseline)')![1]!.sub).toBeUndefined();
  });

  it('falls back to ab.json values for seeds without a loaded run', () => {
    const inp: ReportInputs = {
      runs: [runOf('a', 1, 100)],
      abs: [{ dir: '/ab', ab: { seeds: [1, 2], baseline: 'a', strategies: { a: { runs: [], ttft_ms: { p50: { mean: 0, ci95: [0, 0], values: [999, 200] } } }, b: { runs: [], throughput_rps: { mean: 2, ci95: [2, 2], values: [2, 2] } } } } }],
      sweeps: [], diffs: [], warnings: [],
    };
    const t = seedTable(inp);
    expect(t.get('a')!.get(1)!['ttft_ms.p50']).toBe(100); // the run wins over ab.json
    expect(t.get('a')!.get(2)!['ttft_ms.p50']).toBe(200);
    expect(t.get('b')!.get(2)!['throughput_rps']).toBe(2);
  });
});

describe('chart data stays small', () => {
  it('CDF: <= 200 points per strategy from thousands of records', () => {
    const d = cdfData(inputs)!;
    const rows = d.datasets['cdf'] as { strategy: string }[];
    for (const s of ['round-robin', 'cacheroute', 'kvlab']) {
      const n = rows.filter((r) => r.strategy === s).length;
      expect(n).toBeGreaterThan(100);
      expect(n).toBeLessThanOrEqual(200);
    }
  });

  it('scatter: <= 2,000 points and a y = x line spanning them', () => {
    const d = predictionScatterData(inputs)!;
    const pts = d.datasets['points'] as { x: number; y: number }[];
    expect(pts.length).toBeLessThanOrEqual(MAX_SCATTER_POINTS);
    expect(pts.length).toBeGreaterThan(1500);
    const [lo, hi] = d.datasets['diagonal'] as { x: number; y: number }[];
    expect(lo!.x).toBe(lo!.y);
    expect(Math.min(...pts.map((p) => Math.min(p.x, p.y)))).toBe(lo!.x);
    expect(Math.max(...pts.map((p) => Math.max(p.x, p.y)))).toBe(hi!.x);
  });

  it('time series: merged to <= 150 buckets, counts preserved', () => {
    expect(bucketGroups(3600).length).toBeLessThanOrEqual(MAX_TIME_BUCKETS);
    expect(bucketGroups(3600).flat()).toEqual(Array.from({ length: 3600 }, (_, i) => i));
    const run = inputs.runs[0]!;
    const ts = run.timeseries!;
    const n = 1000;
    const long: ReportInputs = {
      ...inputs,
      runs: [{ ...run, timeseries: { bucket_ms: 1000, t_ms: Array.from({ length: n }, (_, i) => i * 1000), intent: { text: Array(n).fill(2), kvcache: Array(n).fill(1), hybrid: Array(n).fill(0), none: Array(n).fill(0) } } }],
    };
    const d = intentTimeData(long)!;
    const rows = d.datasets['mix'] as { t: number; intent: string; count: number }[];
    expect(new Set(rows.map((r) => r.t)).size).toBeLessThanOrEqual(MAX_TIME_BUCKETS);
    expect(rows.filter((r) => r.intent === 'text').reduce((a, r) => a + r.count, 0)).toBe(2 * n);
    expect(rows.some((r) => r.intent === 'hybrid')).toBe(false); // never used: left out
    expect(ts.t_ms.length).toBeGreaterThan(0);
  });
});

describe('request time line', () => {
  it('defaults to the slowest request; its segments add up to the observed TTFT', () => {
    const c = chooseRequest(inputs)!;
    const all = inputs.runs.flatMap((r) => r.records!.filter((x) => x.status === 'ok').map((x) => x.observed!.ttft_ms));
    expect(c.record.observed!.ttft_ms).toBe(Math.max(...all));
    const d = timelineData(inputs)!;
    const segs = d.datasets['segments'] as { panel: string; row: string; phase: string; start: number; end: number }[];
    const obs = segs.filter((s) => s.panel === 'ttft' && s.row.startsWith('observed'));
    expect(obs.at(-1)!.end).toBeCloseTo(c.record.observed!.ttft_ms, 2);
    for (let i = 1; i < obs.length; i++) expect(obs[i]!.start).toBeCloseTo(obs[i - 1]!.end, 6);
    const e2e = segs.filter((s) => s.panel === 'e2e');
    expect(e2e.at(-1)).toMatchObject({ phase: 'decode' });
    expect(e2e.at(-1)!.end).toBeCloseTo(c.record.observed!.e2e_ms, 2);
    // the chosen option is not listed among the rejected ones
    const rejected = [...new Set(segs.filter((s) => s.row.startsWith('rejected')).map((s) => s.row))];
    expect(rejected.length).toBe(c.record.decision!.alternatives.length - 1);
    expect(rejected).not.toContain(`rejected: ${c.record.instance} · ${c.record.intent}`);
  });

  it('--request picks that request, optionally within one strategy; an unknown id is an error', () => {
    const c = chooseRequest(inputs, { requestId: 'r42', strategy: 'kvlab' })!;
    expect(c.record.id).toBe('r42');
    expect(c.run.strategy).toBe('kvlab');
    expect((timelineData(inputs, { requestId: 'r42' })!.vars['title'])).toContain('r42');
    expect(() => chooseRequest(inputs, { requestId: 'nope' })).toThrow(/request nope not found/);
    expect(() => chooseRequest(inputs, { strategy: 'nope' })).toThrow(/no run of that strategy/);
  });
});

describe('sweep aggregation', () => {
  const e = (rate: number, gbps: number, strategy: string, seed: number, p50: number | null): SweepEntry => ({
    params: { rate, kdn_gbps: gbps }, strategy, seed, summary: p50 === null ? null : summary(strategy, seed, p50),
  });
  const entries = [e(1, 10, 'a', 1, 100), e(1, 10, 'a', 2, 120), e(2, 10, 'a', 1, 200), e(2, 10, 'a', 2, 220), e(2, 10, 'a', 3, null), e(1, 10, 'b', 1, 50), e(2, 10, 'b', 1, 60)];

  it('means and CIs across seeds per (strategy, params), ignoring failed runs', () => {
    const pts = aggregateSweep(entries, ['ttft_ms.p50']);
    expect(pts).toHaveLength(4);
    const a2 = pts.find((p) => p.strategy === 'a' && p.params['rate'] === 2)!;
    expect(a2.ci.n).toBe(2);
    expect(a2.ci.mean).toBe(210);
    expect(a2.ci.halfWidth).toBeCloseTo((12.7062 * Math.SQRT2 * 10) / Math.SQRT2, 3);
  });

  it('chart rows use the varied parameter as x and the others as the panel', () => {
    const inp: ReportInputs = { runs: [], abs: [], diffs: [], warnings: [], sweeps: [{ file: 'x', entries }] };
    const d = sweepData(inp, 'rate', 'ttft')!;
    const rows = d.datasets['sweep'] as { strategy: string; x: number; group: string; stat: string; lo: number }[];
    expect(new Set(rows.map((r) => r.group))).toEqual(new Set(['kdn_gbps = 10']));
    expect(rows.filter((r) => r.strategy === 'a' && r.stat === 'p50').map((r) => r.x).sort()).toEqual([1, 2]);
    expect(rows.every((r) => r.lo > 0)).toBe(true); // log axis: lower bounds kept positive
    expect(sweepData(inp, 'kdn_gbps', 'ttft')).toBeNull(); // only one bandwidth: nothing to plot
    expect(sweepData(inputs, 'kdn_gbps', 'throughput')).not.toBeNull();
  });
});
