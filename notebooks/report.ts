/**
 * `kvlab report`: builds DIR/report.html (one self-contained file, vega + vega-lite + vega-embed
 * inlined, works offline), DIR/report.md (the tables, with links to the PNGs) and every chart as
 * DIR/charts/ID.svg, ID.png and ID.vl.json (the spec with its data, to re-use elsewhere).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  cdfData,
  diffErrorData,
  diffScatterData,
  goodputLoadData,
  instanceHeatData,
  intentInstanceData,
  intentTimeData,
  linkData,
  percentileData,
  predictionErrorData,
  predictionScatterData,
  strategyOrder,
  sweepData,
  replicaData,
  timelineData,
  type ChartData,
  type TimelineChoice,
} from './data.js';
import { loadInputs, type ReportInputs } from './load.js';
import { buildSpec, renderSvg, svgToPng } from './render.js';
import { abTables, abWideTables, diffTables, esc, predictionTable, runsTable, sweepTable, tableToHtml, tableToMarkdown, type Table } from './tables.js';
import { KVLAB_VERSION } from '../engine/version.js';

/** One chart the report knows how to draw. */
export interface ChartDef {
  /** file stem of the outputs (charts/ID.svg ...) and HTML anchor. */
  id: string;
  /** spec file notebooks/charts/SPEC.vl.json. */
  spec: string;
  title: string;
  section: string;
  /** what input the chart needs, shown when it is skipped. */
  needs: string;
  data: (inputs: ReportInputs, opts: ReportOptions) => ChartData;
}

/** Every chart, in report order. */
export const CHARTS: readonly ChartDef[] = [
  { id: 'ttft-cdf', spec: 'ttft-cdf', title: 'TTFT distribution per strategy', section: 'Latency', needs: 'records.jsonl, or summary.json with ttft_quantiles_ms', data: (i) => cdfData(i) },
  { id: 'ttft-percentiles', spec: 'ttft-percentiles', title: 'TTFT percentiles with 95% CI across seeds', section: 'Latency', needs: 'summary.json in run directories, or ab.json', data: (i) => percentileData(i) },
  { id: 'sweep-ttft-load', spec: 'sweep-ttft-load', title: 'TTFT against offered load', section: 'Load and bandwidth (sweep)', needs: 'a sweep.json that varies rate', data: (i) => sweepData(i, 'rate', 'ttft') },
  { id: 'sweep-throughput-load', spec: 'sweep-throughput-load', title: 'Throughput against offered load', section: 'Load and bandwidth (sweep)', needs: 'a sweep.json that varies rate', data: (i) => sweepData(i, 'rate', 'throughput') },
  { id: 'sweep-ttft-bandwidth', spec: 'sweep-ttft-bandwidth', title: 'TTFT against KDN link bandwidth', section: 'Load and bandwidth (sweep)', needs: 'a sweep.json that varies kdn_gbps', data: (i) => sweepData(i, 'kdn_gbps', 'ttft') },
  { id: 'sweep-replicas', spec: 'sweep-replicas', title: 'Router replicas: prefix hit ratio, TTFT and load balance', section: 'Load and bandwidth (sweep)', needs: 'a sweep.json that varies router_replicas', data: (i) => replicaData(i) },
  { id: 'goodput-load', spec: 'goodput-load', title: 'SLO goodput against offered load', section: 'Load and bandwidth (sweep)', needs: 'a capacity.json (kvlab capacity)', data: (i) => goodputLoadData(i) },
  { id: 'intent-mix-time', spec: 'intent-mix-time', title: 'Injection intent mix over time', section: 'Injection intents', needs: 'timeseries.json with "intent" series', data: (i) => intentTimeData(i) },
  { id: 'intent-mix-instance', spec: 'intent-mix-instance', title: 'Injection intents per instance', section: 'Injection intents', needs: 'records.jsonl, or timeseries.json with per-instance intent series', data: (i) => intentInstanceData(i) },
  { id: 'instance-hit-ratio', spec: 'instance-hit-ratio', title: 'Prefix hit ratio per instance over time', section: 'Instances', needs: 'timeseries.json with instances.*.hit_ratio', data: (i) => instanceHeatData(i, 'hit_ratio') },
  { id: 'instance-booked-load', spec: 'instance-booked-load', title: 'Booked load per instance over time', section: 'Instances', needs: 'timeseries.json with instances.*.booked_prefill_tokens', data: (i) => instanceHeatData(i, 'booked_prefill_tokens') },
  { id: 'link-utilisation', spec: 'link-utilisation', title: 'KDN link utilisation over time', section: 'KDN links', needs: 'timeseries.json with links.*.busy_frac (non-zero)', data: (i) => linkData(i, 'busy_frac') },
  { id: 'link-wait', spec: 'link-wait', title: 'KDN link queue wait over time', section: 'KDN links', needs: 'timeseries.json with links.*.mean_wait_ms (non-zero)', data: (i) => linkData(i, 'mean_wait_ms') },
  { id: 'prediction-scatter', spec: 'pred-vs-obs', title: 'Predicted vs observed TTFT (engine)', section: 'Predicted vs observed', needs: 'records.jsonl with predicted and observed TTFT', data: (i) => predictionScatterData(i) },
  { id: 'prediction-error', spec: 'error-hist', title: 'Prediction error histogram (engine)', section: 'Predicted vs observed', needs: 'records.jsonl with predicted and observed TTFT', data: (i) => predictionErrorData(i) },
  { id: 'diff-scatter', spec: 'pred-vs-obs', title: 'kvlab diff: A vs B TTFT', section: 'Predicted vs observed', needs: 'a diff.json with "pairs"', data: (i) => diffScatterData(i) },
  { id: 'diff-error', spec: 'error-hist', title: 'kvlab diff: error histogram', section: 'Predicted vs observed', needs: 'a diff.json with "pairs"', data: (i) => diffErrorData(i) },
  { id: 'request-timeline', spec: 'request-timeline', title: "One request's time line", section: 'One request', needs: 'records.jsonl', data: (i, o) => timelineData(i, o.timeline) },
];

/** Options of `buildReport`. */
export interface ReportOptions {
  /** output directory (created). */
  out: string;
  /** report title (default "kvlab report"). */
  title?: string;
  /** which request the time line shows (default: the slowest). */
  timeline?: TimelineChoice;
  /** also rasterise every chart to PNG (default true). */
  png?: boolean;
  /** PNG zoom factor (default 2). */
  pngScale?: number;
  /** progress messages (default: none). */
  log?: (msg: string) => void;
}

/** One chart's outcome. */
export interface ChartOutcome {
  id: string;
  title: string;
  section: string;
  /** set when the chart was skipped (its data is absent). */
  skipped?: string;
  /** written files, relative to the output directory. */
  svg?: string;
  png?: string;
  specFile?: string;
  /** the full vega-lite spec with data. */
  spec?: Record<string, unknown>;
  /** the same compiled to vega (what the HTML embeds, so the browser need not compile). */
  vega?: Record<string, unknown>;
  /** renderer warnings. */
  warnings: string[];
  /** rows embedded across datasets (what keeps the report small). */
  rows: number;
}

/** What `buildReport` wrote. */
export interface ReportResult {
  html: string;
  md: string;
  charts: ChartOutcome[];
  tables: Table[];
  warnings: string[];
  /** size of report.html, bytes. */
  htmlBytes: number;
}

/** Walks up from this module and the working directory to find node_modules/PKG/build/FILE. */
function findLib(pkg: string, file: string): string {
  const starts = [dirname(fileURLToPath(import.meta.url)), process.cwd()];
  for (const s of starts) {
    let d = s;
    for (;;) {
      const p = join(d, 'node_modules', pkg, 'build', file);
      if (existsSync(p)) return p;
      const up = dirname(d);
      if (up === d) break;
      d = up;
    }
  }
  throw new Error(`cannot find ${pkg}/build/${file} in node_modules (is ${pkg} installed?)`);
}

/** The three browser bundles the HTML inlines, in load order, with their versions. */
export function browserLibs(): { name: string; code: string }[] {
  return [
    ['vega', 'vega.min.js'],
    ['vega-lite', 'vega-lite.min.js'],
    ['vega-embed', 'vega-embed.min.js'],
  ].map(([pkg, file]) => ({ name: pkg!, code: readFileSync(findLib(pkg!, file!), 'utf8') }));
}

/** JSON for a <script type="application/json"> block (no "</script" can close it early). */
function scriptJson(x: unknown): string {
  return JSON.stringify(x).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

/** JavaScript source safe to inline in a <script> element. */
function scriptCode(code: string): string {
  return code.replace(/<\/script/gi, '<\\/script').replace(/<!--/g, '<\\!--');
}

const CSS = `
:root { --fg:#1d1d1f; --muted:#5f6368; --line:#e3e3e3; --good:#0b6e4f; --bad:#b3261e; }
* { box-sizing: border-box; }
body { font: 15px/1.5 "DejaVu Sans", system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg); margin: 0; background: #fafafa; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 20px 32px 12px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header .meta { color: var(--muted); font-size: 13px; }
nav { font-size: 13px; margin-top: 8px; }
nav a { margin-right: 14px; color: #0b57d0; text-decoration: none; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 32px 48px; }
h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 4px; }
.note { color: var(--muted); font-size: 13px; margin: 2px 0 8px; }
.warnings { background: #fff8e1; border: 1px solid #f3d37a; padding: 8px 14px; border-radius: 6px; font-size: 13px; }
figure { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 14px 0; padding: 12px 16px; overflow-x: auto; }
figure .vis { min-height: 60px; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; }
figcaption a { color: #0b57d0; margin-right: 8px; }
.skipped { color: var(--muted); font-size: 13px; }
.skipped li { margin: 2px 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; background: #fff; margin: 4px 0 12px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; white-space: nowrap; }
th { background: #f1f3f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.strong { font-weight: 700; }
td.good { color: var(--good); }
td.bad, .sub.bad { color: var(--bad); }
.sub { font-size: 11.5px; color: var(--muted); margin-top: 1px; }
.sub.good { color: var(--good); }
.sub.strong { font-weight: 700; }
`;

/**
 * The script that embeds every chart (vega-embed, SVG renderer; specs are pre-compiled to vega in
 * Node so the browser does not compile vega-lite) and records the outcome in window.__kvlabReport:
 * {expected, rendered, failed: ["id: message"], done, ms (performance.now() when all finished)}.
 */
const EMBED_JS = `
(function () {
  var figs = Array.prototype.slice.call(document.querySelectorAll('figure[data-chart]'));
  var state = (window.__kvlabReport = { expected: figs.length, rendered: 0, failed: [], done: false, ms: null });
  Promise.all(figs.map(function (fig) {
    var id = fig.getAttribute('data-chart');
    var el = fig.querySelector('.vis');
    var spec = JSON.parse(document.getElementById('spec-' + id).textContent);
    return vegaEmbed(el, spec, { mode: 'vega', renderer: 'svg', actions: { export: true, source: false, compiled: false, editor: false } })
      .then(function () { state.rendered++; })
      .catch(function (e) { state.failed.push(id + ': ' + (e && e.message)); el.textContent = 'This chart failed to render: ' + (e && e.message); console.error(e); });
  })).then(function () { state.done = true; state.ms = performance.now(); document.body.setAttribute('data-ready', '1'); });
})();
`;

function slug(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

function renderHtml(title: string, inputs: ReportInputs, inputPaths: readonly string[], charts: ChartOutcome[], abHtml: Table[], otherTables: Table[], warnings: string[]): string {
  const sections = [...new Set(charts.filter((c) => !c.skipped).map((c) => c.section))];
  // the latency charts first, then the A/B tables, then the other charts, then the other tables
  const order: string[] = [];
  if (sections.includes('Latency')) order.push('Latency');
  if (abHtml.length) order.push('A/B comparison');
  order.push(...sections.filter((s) => s !== 'Latency'));
  if (otherTables.length) order.push('More tables');
  if (charts.some((c) => c.skipped)) order.push('Skipped charts');
  const nav = order.map((s) => `<a href="#${slug(s)}">${esc(s)}</a>`).join('');
  const parts: string[] = [];
  if (warnings.length) parts.push(`<div class="warnings"><strong>Warnings</strong><ul>${warnings.map((w) => `<li>${esc(w)}</li>`).join('')}</ul></div>`);
  for (const sec of order) {
    parts.push(`<h2 id="${slug(sec)}">${esc(sec)}</h2>`);
    if (sec === 'A/B comparison') {
      parts.push(abHtml.map(tableToHtml).join('\n'));
    } else if (sec === 'More tables') {
      parts.push(otherTables.map(tableToHtml).join('\n'));
    } else if (sec === 'Skipped charts') {
      parts.push(`<ul class="skipped">${charts.filter((c) => c.skipped).map((c) => `<li><strong>${esc(c.title)}</strong>: ${esc(c.skipped!)}</li>`).join('')}</ul>`);
    } else {
      for (const c of charts.filter((x) => x.section === sec && !x.skipped)) {
        const links = [c.svg && `<a href="${esc(c.svg)}">SVG</a>`, c.png && `<a href="${esc(c.png)}">PNG</a>`, c.specFile && `<a href="${esc(c.specFile)}">vega-lite spec</a>`].filter(Boolean).join('');
        parts.push(
          `<figure id="chart-${c.id}" data-chart="${c.id}"><div class="vis"></div><figcaption>${links}<span>${c.rows.toLocaleString('en-US')} data rows embedded</span></figcaption></figure>` +
            `<script type="application/json" id="spec-${c.id}">${scriptJson(c.vega)}</script>`,
        );
      }
    }
  }
  const libs = browserLibs();
  const meta = `kvlab ${esc(KVLAB_VERSION)} · ${inputs.runs.length} run(s), ${inputs.abs.length} ab, ${inputs.sweeps.length} sweep, ${inputs.diffs.length} diff · inputs: ${inputPaths.map(esc).join(', ')}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${CSS}</style>
${libs.map((l) => `<script data-lib="${l.name}">${scriptCode(l.code)}</script>`).join('\n')}
</head>
<body>
<header><h1>${esc(title)}</h1><div class="meta">${meta}</div><nav>${nav}</nav></header>
<main>
${parts.join('\n')}
</main>
<script>${EMBED_JS}</script>
</body>
</html>
`;
}

function renderMarkdown(title: string, inputPaths: readonly string[], charts: ChartOutcome[], tables: Table[], warnings: string[]): string {
  const out: string[] = [`# ${title}`, '', `kvlab ${KVLAB_VERSION}. Inputs: ${inputPaths.map((p) => `\`${p}\``).join(', ')}. Interactive version: [report.html](report.html).`, ''];
  if (warnings.length) out.push('**Warnings**', '', ...warnings.map((w) => `- ${w}`), '');
  out.push('## Tables', '');
  if (tables.length === 0) out.push('No tables: the inputs hold no summaries.', '');
  for (const t of tables) out.push(tableToMarkdown(t));
  out.push('## Charts', '');
  for (const c of charts.filter((x) => !x.skipped)) out.push(`### ${c.title}`, '', `![${c.title}](${c.png ?? c.svg})`, '', `[SVG](${c.svg}) · [vega-lite spec](${c.specFile})`, '');
  const skipped = charts.filter((c) => c.skipped);
  if (skipped.length) out.push('## Skipped charts', '', ...skipped.map((c) => `- **${c.title}**: ${c.skipped}`), '');
  return out.join('\n');
}

function countRows(spec: Record<string, unknown>): number {
  const ds = spec['datasets'] as Record<string, unknown[]> | undefined;
  return Object.values(ds ?? {}).reduce((a, v) => a + v.length, 0);
}

/**
 * Builds the report of already loaded inputs into `opts.out`.
 * @throws Error when a chart fails to render (a bug, not missing data), or the timeline's
 *   `--request` id is not found.
 */
export async function buildReportFromInputs(inputs: ReportInputs, inputPaths: readonly string[], opts: ReportOptions): Promise<ReportResult> {
  const out = resolve(opts.out);
  const chartDir = join(out, 'charts');
  mkdirSync(chartDir, { recursive: true });
  const log = opts.log ?? (() => {});
  const title = opts.title ?? 'kvlab report';
  const warnings = [...inputs.warnings];
  const charts: ChartOutcome[] = [];
  for (const def of CHARTS) {
    const d = def.data(inputs, opts);
    if (!d) {
      charts.push({ id: def.id, title: def.title, section: def.section, skipped: `no data: needs ${def.needs}`, warnings: [], rows: 0 });
      continue;
    }
    const order = strategyOrder(inputs);
    const spec = buildSpec(def.spec, d.datasets, d.vars, { strategy: order, group: order });
    let svg: string;
    let w: string[];
    let vg: Record<string, unknown>;
    try {
      ({ svg, vega: vg, warnings: w } = await renderSvg(spec));
    } catch (e) {
      throw new Error(`chart ${def.id} (notebooks/charts/${def.spec}.vl.json) failed to render: ${(e as Error).message}`);
    }
    const c: ChartOutcome = { id: def.id, title: def.title, section: def.section, spec, vega: vg, warnings: w, rows: countRows(spec) };
    writeFileSync(join(chartDir, `${def.id}.svg`), svg);
    c.svg = `charts/${def.id}.svg`;
    writeFileSync(join(chartDir, `${def.id}.vl.json`), JSON.stringify(spec, null, 1));
    c.specFile = `charts/${def.id}.vl.json`;
    if (opts.png !== false) {
      writeFileSync(join(chartDir, `${def.id}.png`), svgToPng(svg, opts.pngScale ?? 2));
      c.png = `charts/${def.id}.png`;
    }
    for (const x of w) warnings.push(`chart ${def.id}: ${x}`);
    log(`chart ${def.id}: ${c.rows} rows`);
    charts.push(c);
  }
  const ab = abTables(inputs);
  const others: Table[] = [];
  const pt = predictionTable(inputs);
  if (pt) others.push(pt);
  others.push(...diffTables(inputs));
  const st = sweepTable(inputs);
  if (st) others.push(st);
  const rt = runsTable(inputs);
  if (rt) others.push(rt);
  const tables = [...ab, ...others];
  const shownPaths = inputPaths.map((p) => relative(process.cwd(), resolve(p)) || '.');
  const html = join(out, 'report.html');
  const htmlText = renderHtml(title, inputs, shownPaths, charts, abWideTables(inputs), others, warnings);
  writeFileSync(html, htmlText);
  const md = join(out, 'report.md');
  writeFileSync(md, renderMarkdown(title, shownPaths, charts, tables, warnings));
  return { html, md, charts, tables, warnings, htmlBytes: Buffer.byteLength(htmlText) };
}

/**
 * `kvlab report`: loads the inputs (see `loadInputs`) and writes the report into `opts.out`.
 * @throws InputError naming the missing file/field; Error for rendering failures.
 */
export async function buildReport(inputPaths: readonly string[], opts: ReportOptions): Promise<ReportResult> {
  const inputs = loadInputs(inputPaths);
  return buildReportFromInputs(inputs, inputPaths, opts);
}
