/**
 * Figure helpers shared by the analysis scripts: render a sweep metric against any varied
 * parameter with the report's chart specs, to OUT/ID.svg, ID.png and ID.vl.json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sweepData } from '../data.js';
import { buildSpec, renderSvg, svgToPng } from '../render.js';
import type { SweepEntry } from '../types.js';

/** Options of `writeSweepFigure`. */
export interface SweepFigure {
  /** output directory (created). */
  out: string;
  /** file stem. */
  id: string;
  /** the varied parameter on the x axis (e.g. 'workload.docMedianTokens'); the others become panels. */
  xParam: string;
  title: string;
  /** x axis title, with units. */
  xTitle: string;
  /** 'ttft' (p50 and p99 lines, default) or 'throughput'. */
  metric?: 'ttft' | 'throughput';
}

/**
 * Renders one sweep figure; returns the written SVG path, or null (with nothing written) when the
 * sweep does not vary `xParam` over at least two values or no run finished.
 */
export async function writeSweepFigure(entries: readonly SweepEntry[], f: SweepFigure): Promise<string | null> {
  const inputs = { runs: [], abs: [], diffs: [], capacities: [], warnings: [], sweeps: [{ file: '', entries: [...entries] }] };
  const metric = f.metric ?? 'ttft';
  const d = sweepData(inputs, f.xParam, metric);
  if (!d) return null;
  const strategies = [...new Set(entries.map((e) => e.strategy))];
  const specName = metric === 'ttft' ? 'sweep-ttft-load' : 'sweep-throughput-load';
  const spec = buildSpec(specName, d.datasets, { ...d.vars, x_title: d.vars['x_scale'] === 'log' ? `${f.xTitle}, log scale` : f.xTitle }, { strategy: strategies });
  (spec['title'] as Record<string, unknown>)['text'] = f.title;
  const { svg } = await renderSvg(spec);
  mkdirSync(f.out, { recursive: true });
  const file = join(f.out, `${f.id}.svg`);
  writeFileSync(file, svg);
  writeFileSync(join(f.out, `${f.id}.png`), svgToPng(svg));
  writeFileSync(join(f.out, `${f.id}.vl.json`), JSON.stringify(spec, null, 1));
  return file;
}
