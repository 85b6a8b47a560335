/**
 * Chart specs and headless rendering.
 *
 * Each chart is a vega-lite spec in notebooks/charts/NAME.vl.json that reads its data from named
 * datasets (`"data": {"name": "cdf"}`) and may hold `{{var}}` placeholders in strings (titles,
 * axis titles, scale types). `buildSpec` fills both in and merges the shared style
 * (charts/theme.json); `renderSvg` renders with vega's SVG renderer in Node and `svgToPng`
 * rasterises with resvg. No browser and no network are involved.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

const HERE = dirname(fileURLToPath(import.meta.url));

/**
 * Directory holding the *.vl.json chart specs: notebooks/charts beside this module, or, when
 * running the compiled code from dist/notebooks, the source tree's notebooks/charts.
 * @throws Error when neither exists.
 */
export function chartsDir(): string {
  const tries = [join(HERE, 'charts'), join(HERE, '..', '..', 'notebooks', 'charts')];
  const found = tries.find((d) => existsSync(join(d, 'theme.json')));
  if (!found) throw new Error(`chart specs not found (looked in ${tries.join(', ')})`);
  return found;
}

const specCache = new Map<string, unknown>();

/**
 * The raw vega-lite spec notebooks/charts/NAME.vl.json (parsed, cached; callers get a deep copy).
 * @throws Error naming the file when it is missing or not JSON.
 */
export function loadSpec(name: string): Record<string, unknown> {
  if (!specCache.has(name)) {
    const file = join(chartsDir(), name === 'theme' ? 'theme.json' : `${name}.vl.json`);
    if (!existsSync(file)) throw new Error(`chart spec not found: ${file}`);
    try {
      specCache.set(name, JSON.parse(readFileSync(file, 'utf8')));
    } catch (e) {
      throw new Error(`${file}: invalid JSON (${(e as Error).message})`);
    }
  }
  return structuredClone(specCache.get(name)) as Record<string, unknown>;
}

/** Replaces `{{name}}` in every string of a JSON value; unknown names become ''. */
function substitute(x: unknown, vars: Readonly<Record<string, string>>): unknown {
  if (typeof x === 'string') return x.replace(/\{\{(\w+)\}\}/g, (_, k: string) => vars[k] ?? '');
  if (Array.isArray(x)) return x.map((v) => substitute(v, vars));
  if (x && typeof x === 'object') {
    const o: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(x)) o[k] = substitute(v, vars);
    return o;
  }
  return x;
}

/** Drops empty subtitles (vega-lite would reserve space for them) and `zero` on log scales. */
function tidyTitles(x: unknown): void {
  if (!x || typeof x !== 'object') return;
  if (Array.isArray(x)) {
    x.forEach(tidyTitles);
    return;
  }
  const o = x as Record<string, unknown>;
  // `zero` does not apply to log scales (a placeholder may have made a scale logarithmic)
  if (o['type'] === 'log' && 'zero' in o) delete o['zero'];
  const t = o['title'];
  if (t && typeof t === 'object' && !Array.isArray(t) && (t as Record<string, unknown>)['subtitle'] === '') {
    delete (t as Record<string, unknown>)['subtitle'];
  }
  for (const v of Object.values(o)) tidyTitles(v);
}

const ORDERED_CHANNELS = new Set(['x', 'y', 'color', 'fill', 'stroke', 'strokeDash', 'shape', 'row', 'column', 'facet', 'xOffset', 'yOffset']);

/** Sets `sort` to the given order on channels (see buildSpec) whose field is in `order`. */
function applyOrder(x: unknown, order: Readonly<Record<string, readonly string[]>>): void {
  if (!x || typeof x !== 'object') return;
  if (Array.isArray(x)) {
    x.forEach((v) => applyOrder(v, order));
    return;
  }
  for (const [k, v] of Object.entries(x as Record<string, unknown>)) {
    if (ORDERED_CHANNELS.has(k) && v && typeof v === 'object' && !Array.isArray(v)) {
      const ch = v as Record<string, unknown>;
      const f = ch['field'];
      const hasDomain = typeof ch['scale'] === 'object' && ch['scale'] !== null && 'domain' in (ch['scale'] as object);
      if (typeof f === 'string' && order[f] && ch['sort'] === undefined && !hasDomain) ch['sort'] = [...order[f]!];
    }
    applyOrder(v, order);
  }
}

/**
 * A complete vega-lite spec ready to render: the named chart with `datasets` injected as
 * top-level `datasets` (each array referenced by `{"data": {"name": KEY}}` in the spec),
 * `{{var}}` placeholders substituted and the theme merged into `config` (spec config wins).
 * `order` fixes the order of nominal values per field (e.g. {strategy: ['round-robin', 'kvlab']})
 * on every positional, colour, dash and facet channel that does not set its own `sort`, so that a
 * strategy keeps its colour and place across charts.
 * @param name chart file name without `.vl.json`, e.g. 'ttft-cdf'.
 * @param datasets arrays of plain records, keyed by dataset name.
 * @param vars placeholder values (title, subtitle, x_title, time_unit, ...).
 */
export function buildSpec(
  name: string,
  datasets: Readonly<Record<string, readonly object[]>>,
  vars: Readonly<Record<string, string>> = {},
  order: Readonly<Record<string, readonly string[]>> = {},
): Record<string, unknown> {
  const spec = substitute(loadSpec(name), vars) as Record<string, unknown>;
  tidyTitles(spec);
  applyOrder(spec, order);
  const theme = loadSpec('theme');
  delete theme['$comment'];
  spec['config'] = { ...theme, ...((spec['config'] as object | undefined) ?? {}) };
  spec['datasets'] = { ...((spec['datasets'] as object | undefined) ?? {}), ...datasets };
  return spec;
}

/** A vega / vega-lite logger that collects messages instead of printing them. */
interface CollectingLogger {
  warnings: string[];
  errors: string[];
  level(l?: number): number | CollectingLogger;
  error(...args: unknown[]): CollectingLogger;
  warn(...args: unknown[]): CollectingLogger;
  info(...args: unknown[]): CollectingLogger;
  debug(...args: unknown[]): CollectingLogger;
}

function collectingLogger(): CollectingLogger {
  let lvl: number = vega.Warn;
  const text = (args: unknown[]): string => args.map((a) => (a instanceof Error ? a.message : String(a))).join(' ');
  const lg: CollectingLogger = {
    warnings: [],
    errors: [],
    level: (l?: number) => {
      if (l === undefined) return lvl;
      lvl = l;
      return lg;
    },
    error: (...args) => (lg.errors.push(text(args)), lg),
    warn: (...args) => (lg.warnings.push(text(args)), lg),
    info: () => lg,
    debug: () => lg,
  };
  return lg;
}

/** An SVG rendering and what vega-lite/vega complained about while producing it. */
export interface SvgResult {
  svg: string;
  /** the vega spec compiled from the vega-lite spec (what the HTML report embeds). */
  vega: Record<string, unknown>;
  /** compiler and runtime warnings (e.g. an infinite value on a log scale). */
  warnings: string[];
}

/**
 * Renders a vega-lite spec to SVG with vega's headless SVG renderer (text widths are estimated,
 * no canvas needed).
 * @throws Error when compiling or running the spec fails.
 */
export async function renderSvg(spec: Record<string, unknown>): Promise<SvgResult> {
  const logger = collectingLogger();
  const compiled = compile(spec as unknown as TopLevelSpec, { logger: logger as never }).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none', logger: logger as never });
  try {
    const svg = await view.toSVG();
    if (logger.errors.length) throw new Error(logger.errors.join('; '));
    return { svg, vega: compiled as unknown as Record<string, unknown>, warnings: logger.warnings };
  } finally {
    view.finalize();
  }
}

/**
 * Rasterises an SVG to PNG with resvg, at `scale` times its size (2 = print/retina quality),
 * on a white background with the system fonts (DejaVu Sans is the fallback family).
 */
export function svgToPng(svg: string, scale = 2): Buffer {
  const r = new Resvg(svg, {
    background: 'white',
    fitTo: { mode: 'zoom', value: scale },
    font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans', sansSerifFamily: 'DejaVu Sans' },
  });
  return Buffer.from(r.render().asPng());
}
