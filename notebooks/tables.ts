/**
 * Report tables: A/B comparison (mean and percentiles with 95 % CI across seeds and the relative
 * change against the baseline), the runs included, prediction accuracy and `kvlab diff` results.
 * Tables are plain data (`Table`) rendered to Markdown or HTML.
 */
import type { ReportInputs } from './load.js';
import {
  aggregateSweep,
  baselineOf,
  errorStats,
  LATENCY_FAMILIES,
  LATENCY_STATS,
  metricBySeed,
  paramLabel,
  predictionPairs,
  runsByStrategy,
  seedTable,
  type SeedTable,
} from './data.js';
import { meanCI95, relativeChange, type RelativeChange } from './stats.js';

/** One table cell. `tone` marks a significant change: 'good' (improvement) or 'bad' (regression). */
export interface Cell {
  text: string;
  /** bold: a difference whose 95 % CI excludes zero. */
  strong?: boolean;
  tone?: 'good' | 'bad';
  /** right-align (numbers). */
  num?: boolean;
  /** a second line under the text (HTML only), e.g. the change against the baseline. */
  sub?: Cell;
}

/** A table: title, optional note under it, column headers and rows of cells. */
export interface Table {
  id: string;
  title: string;
  note?: string;
  columns: string[];
  rows: Cell[][];
}

/** Formats a number with a precision suited to its size. */
export function fmt(x: number, unit = ''): string {
  if (!Number.isFinite(x)) return '–';
  const a = Math.abs(x);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3;
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) + unit;
}

function fmtCount(x: number): string {
  return Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–';
}

function fmtPct(x: number, digits = 1): string {
  if (!Number.isFinite(x)) return '–';
  const s = (x * 100).toFixed(digits);
  return `${x > 0 ? '+' : x < 0 ? '−' : ''}${s.replace('-', '')}%`;
}

const METRIC_INFO: Record<string, { label: string; unit: string; lowerIsBetter: boolean; scale?: number }> = {
  ttft_ms: { label: 'TTFT', unit: 'ms', lowerIsBetter: true },
  tpot_ms: { label: 'TPOT', unit: 'ms', lowerIsBetter: true },
  e2e_ms: { label: 'E2E latency', unit: 'ms', lowerIsBetter: true },
  throughput_rps: { label: 'Throughput', unit: 'req/s', lowerIsBetter: false },
  prefix_hit_ratio: { label: 'Prefix hit ratio', unit: '%', lowerIsBetter: false, scale: 100 },
};

/** "810.2 [800.1, 820.3]" (or "810.2" with one seed). */
function valueCell(values: number[], scale = 1): Cell {
  const ci = meanCI95(values.map((v) => v * scale));
  if (ci.n === 0) return { text: '–', num: true };
  if (ci.n === 1) return { text: fmt(ci.mean), num: true };
  return { text: `${fmt(ci.mean)} [${fmt(ci.lo)}, ${fmt(ci.hi)}]`, num: true };
}

/** "−31.0% [−33.0, −29.0]", bold when significant, toned by direction. */
function changeCell(rc: RelativeChange | null, lowerIsBetter: boolean): Cell {
  if (!rc) return { text: '–', num: true };
  const ci = rc.n >= 2 ? ` [${fmtPct(rc.lo).replace('%', '')}, ${fmtPct(rc.hi)}]` : ' (1 seed)';
  const cell: Cell = { text: `${fmtPct(rc.change)}${ci}`, num: true };
  if (rc.significant) {
    cell.strong = true;
    cell.tone = (rc.change < 0) === lowerIsBetter ? 'good' : 'bad';
  }
  return cell;
}

/** The A/B change of one metric, for tests and callers that want numbers rather than cells. */
export function abChange(t: SeedTable, strategy: string, baseline: string, key: string): RelativeChange | null {
  return relativeChange(metricBySeed(t, strategy, key), metricBySeed(t, baseline, key));
}

/**
 * A/B tables, one per metric family (TTFT, TPOT, E2E; throughput and hit ratio together): rows =
 * strategy x statistic, columns = mean across seeds [95 % CI] and the relative change against the
 * baseline [95 % CI of the paired per-seed difference]. Changes whose CI excludes zero are strong.
 * Empty when there are no summaries (and no ab.json values).
 */
export function abTables(inputs: ReportInputs): Table[] {
  const t = seedTable(inputs);
  if (t.size === 0) return [];
  const baseline = baselineOf(inputs) ?? [...t.keys()][0]!;
  const seeds = [...new Set([...t.values()].flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
  const note =
    `Mean across seeds ${seeds.join(', ')} with the 95% Student-t confidence interval in brackets. ` +
    `Change: relative to ${baseline}, from paired per-seed differences; **bold** = its 95% CI excludes zero.`;
  const tables: Table[] = [];
  const cols = ['strategy', 'statistic', 'value [95% CI]', `change vs ${baseline} [95% CI]`];
  for (const fam of LATENCY_FAMILIES) {
    const info = METRIC_INFO[fam]!;
    const rows: Cell[][] = [];
    for (const s of t.keys()) {
      for (const st of LATENCY_STATS) {
        const key = `${fam}.${st}`;
        const vals = [...metricBySeed(t, s, key).values()];
        if (vals.length === 0) continue;
        rows.push([{ text: s }, { text: st }, valueCell(vals), s === baseline ? { text: 'baseline' } : changeCell(abChange(t, s, baseline, key), info.lowerIsBetter)]);
      }
    }
    if (rows.length) tables.push({ id: `ab-${fam}`, title: `${info.label} (${info.unit})`, note, columns: cols, rows });
  }
  const rows: Cell[][] = [];
  for (const s of t.keys()) {
    for (const key of ['throughput_rps', 'prefix_hit_ratio'] as const) {
      const info = METRIC_INFO[key]!;
      const vals = [...metricBySeed(t, s, key).values()];
      if (vals.length === 0) continue;
      rows.push([{ text: s }, { text: `${info.label} (${info.unit})` }, valueCell(vals, info.scale ?? 1), s === baseline ? { text: 'baseline' } : changeCell(abChange(t, s, baseline, key), info.lowerIsBetter)]);
    }
  }
  if (rows.length) tables.push({ id: 'ab-throughput', title: 'Throughput and prefix-cache hit ratio', note, columns: ['strategy', 'metric', 'value [95% CI]', `change vs ${baseline} [95% CI]`], rows });
  return tables;
}

/**
 * The A/B comparison in wide form for HTML: one row per strategy, one column per statistic, each
 * cell the value [95% CI] with the change against the baseline [95% CI] as a second line.
 * Families as in `abTables`; empty when there are no summaries.
 */
export function abWideTables(inputs: ReportInputs): Table[] {
  const t = seedTable(inputs);
  if (t.size === 0) return [];
  const baseline = baselineOf(inputs) ?? [...t.keys()][0]!;
  const seeds = [...new Set([...t.values()].flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
  const note =
    `Mean across seeds ${seeds.join(', ')} [95% Student-t CI]; second line: change against ${baseline} ` +
    `[95% CI of the paired per-seed difference], **bold** when that CI excludes zero (green: better, red: worse).`;
  const cell = (s: string, key: string, lowerIsBetter: boolean, scale = 1): Cell => {
    const vals = [...metricBySeed(t, s, key).values()];
    const c = valueCell(vals, scale);
    if (vals.length && s !== baseline) c.sub = changeCell(abChange(t, s, baseline, key), lowerIsBetter);
    return c;
  };
  const tables: Table[] = [];
  for (const fam of LATENCY_FAMILIES) {
    const info = METRIC_INFO[fam]!;
    const rows = [...t.keys()]
      .filter((s) => LATENCY_STATS.some((st) => metricBySeed(t, s, `${fam}.${st}`).size > 0))
      .map((s) => [{ text: s + (s === baseline ? ' (baseline)' : '') }, ...LATENCY_STATS.map((st) => cell(s, `${fam}.${st}`, info.lowerIsBetter))]);
    if (rows.length) tables.push({ id: `ab-${fam}`, title: `${info.label} (${info.unit})`, note: tables.length === 0 ? note : undefined, columns: ['strategy', ...LATENCY_STATS], rows });
  }
  const rows = [...t.keys()].map((s) => [
    { text: s + (s === baseline ? ' (baseline)' : '') },
    cell(s, 'throughput_rps', false),
    cell(s, 'prefix_hit_ratio', false, 100),
  ]);
  tables.push({ id: 'ab-throughput', title: 'Throughput and prefix-cache hit ratio', note: tables.length === 0 ? note : undefined, columns: ['strategy', 'throughput (req/s)', 'prefix hit ratio (%)'], rows });
  return tables;
}

/** The runs a report was built from. */
export function runsTable(inputs: ReportInputs): Table | null {
  const groups = runsByStrategy(inputs);
  if (groups.size === 0) return null;
  const rows: Cell[][] = [];
  for (const [s, runs] of groups) {
    for (const r of runs) {
      const sm = r.summary;
      const recs = r.records;
      const n = (st: string): number => recs?.filter((x) => x.status === st).length ?? NaN;
      rows.push([
        { text: s },
        { text: String(r.seed), num: true },
        { text: sm?.source ?? recs?.[0]?.source ?? '–' },
        { text: fmtCount(sm?.requests ?? recs?.length ?? NaN), num: true },
        { text: fmtCount(sm?.completed ?? n('ok')), num: true },
        { text: fmtCount(sm?.rejected ?? n('rejected')), num: true },
        { text: fmtCount(sm?.failed ?? n('failed')), num: true },
        { text: [sm ? 'summary' : '', recs ? 'records' : '', r.timeseries ? 'timeseries' : '', r.config ? 'config' : ''].filter(Boolean).join(', ') },
        { text: r.dir },
      ]);
    }
  }
  return { id: 'runs', title: 'Runs', columns: ['strategy', 'seed', 'source', 'requests', 'completed', 'rejected', 'failed', 'files', 'directory'], rows };
}

/** Accuracy of the engine's decision-time TTFT prediction per strategy (from records). */
export function predictionTable(inputs: ReportInputs): Table | null {
  const groups = predictionPairs(inputs);
  if (groups.size === 0) return null;
  const rows: Cell[][] = [];
  for (const [s, pairs] of groups) {
    const e = errorStats(pairs);
    if (!e) continue;
    rows.push([{ text: s }, { text: fmtCount(e.n), num: true }, { text: fmtPct(e.mape).replace('+', ''), num: true }, { text: fmt(e.medianAbsErrMs), num: true }, { text: fmt(e.p90AbsErrMs), num: true }, { text: fmt(e.biasMs), num: true }]);
  }
  return {
    id: 'prediction',
    title: "Engine's TTFT prediction against observation",
    note: 'All completed requests of all seeds. Bias = mean(observed − predicted): positive means the engine was optimistic.',
    columns: ['strategy', 'requests', 'MAPE', 'median |error| (ms)', 'p90 |error| (ms)', 'bias (ms)'],
    rows,
  };
}

/** One table per diff.json: its `fields` and `engine_prediction` statistics. */
export function diffTables(inputs: ReportInputs): Table[] {
  return inputs.diffs.map(({ file, diff }, i) => {
    const rows: Cell[][] = [];
    const add = (what: string, stats: Record<string, { mape: number; median_abs_err_ms: number; p90_abs_err_ms: number; bias_ms: number; n: number }> | undefined): void => {
      for (const [f, s] of Object.entries(stats ?? {})) {
        rows.push([{ text: what }, { text: f }, { text: fmtCount(s.n), num: true }, { text: fmtPct(s.mape).replace('+', ''), num: true }, { text: fmt(s.median_abs_err_ms), num: true }, { text: fmt(s.p90_abs_err_ms), num: true }, { text: fmt(s.bias_ms), num: true }]);
      }
    };
    add('B vs A', diff.fields);
    add('B vs engine prediction', diff.engine_prediction);
    return {
      id: `diff-${i}`,
      title: `kvlab diff: ${diff.joined ?? '?'} joined requests`,
      note: `A = ${diff.a}; B = ${diff.b}; from ${file}. Bias = mean(B − A).`,
      columns: ['comparison', 'field', 'n', 'MAPE', 'median |error| (ms)', 'p90 |error| (ms)', 'bias (ms)'],
      rows,
    };
  });
}

/** Sweep results: TTFT p50/p99 and throughput per strategy and grid point (mean [95% CI] over seeds). */
export function sweepTable(inputs: ReportInputs): Table | null {
  const entries = inputs.sweeps.flatMap((s) => s.entries);
  if (entries.length === 0) return null;
  const metrics = ['ttft_ms.p50', 'ttft_ms.p99', 'throughput_rps'];
  const pts = aggregateSweep(entries, metrics);
  const rows: Cell[][] = [];
  for (let i = 0; i < pts.length; i += metrics.length) {
    const g = pts.slice(i, i + metrics.length);
    const cell = (k: number): Cell => {
      const ci = g[k]!.ci;
      return { text: ci.n > 1 ? `${fmt(ci.mean)} [${fmt(ci.lo)}, ${fmt(ci.hi)}]` : fmt(ci.mean), num: true };
    };
    rows.push([{ text: g[0]!.strategy }, { text: paramLabel(g[0]!.params, '') }, { text: String(g[0]!.ci.n), num: true }, cell(0), cell(1), cell(2)]);
  }
  const failed = entries.filter((e) => !e.summary);
  return {
    id: 'sweep',
    title: 'Sweep',
    note: `Mean over seeds [95% CI].${failed.length ? ` ${failed.length} run(s) failed and are left out: ${failed.slice(0, 3).map((e) => `${e.strategy} ${paramLabel(e.params, '')} seed ${e.seed}: ${e.error ?? 'no summary'}`).join('; ')}${failed.length > 3 ? '; …' : ''}.` : ''}`,
    columns: ['strategy', 'parameters', 'seeds', 'TTFT p50 (ms)', 'TTFT p99 (ms)', 'throughput (req/s)'],
    rows,
  };
}

function mdEscape(s: string): string {
  return s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

/** Renders a table as GitHub-flavoured Markdown (strong cells in bold). */
export function tableToMarkdown(t: Table): string {
  const head = `| ${t.columns.map(mdEscape).join(' | ')} |`;
  const sep = `| ${t.columns.map((_, i) => (t.rows.some((r) => r[i]?.num) ? '---:' : '---')).join(' | ')} |`;
  const body = t.rows.map((r) => `| ${r.map((c) => (c.strong ? `**${mdEscape(c.text)}**` : mdEscape(c.text))).join(' | ')} |`);
  return [`### ${t.title}`, '', ...(t.note ? [t.note, ''] : []), head, sep, ...body, ''].join('\n');
}

/** Escapes text for HTML. */
export function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function cls(c: Cell): string {
  return [c.num ? 'num' : '', c.strong ? 'strong' : '', c.tone ?? ''].filter(Boolean).join(' ');
}

/** Renders a table as an HTML <table> (classes: num, strong, good, bad; `sub` lines in div.sub). */
export function tableToHtml(t: Table): string {
  const note = t.note ? `<p class="note">${esc(t.note).replace(/\*\*(.+?)\*\*/g, '<strong>$1</strong>')}</p>` : '';
  const head = `<tr>${t.columns.map((c) => `<th>${esc(c)}</th>`).join('')}</tr>`;
  const body = t.rows
    .map((r) => `<tr>${r.map((c) => `<td class="${cls(c)}">${esc(c.text)}${c.sub ? `<div class="sub ${cls(c.sub)}">${esc(c.sub.text)}</div>` : ''}</td>`).join('')}</tr>`)
    .join('\n');
  return `<section class="table" id="${esc(t.id)}"><h3>${esc(t.title)}</h3>${note}<div class="scroll"><table>\n<thead>${head}</thead>\n<tbody>\n${body}\n</tbody></table></div></section>`;
}
