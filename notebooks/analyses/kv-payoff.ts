/**
 * Analysis: when does KV injection pay off, and which kind?
 *
 * Mean TTFT of each way to inject a request's knowledge — text (recompute it), kvcache (load the
 * KV of its leading document: prefix reuse), hybrid (the best sequential load-then-compute
 * split), blend (CacheBlend: every document's KV, 17 % recomputed) and overlap (Cake: compute the
 * head while the tail's KV loads, split where they meet) — each forced on every request by the
 * least-load router, and `kvlab` choosing among them per request, against documents per request,
 * document length and KDN link bandwidth, on the multi-document RAG workload (`rag`) with
 * instances that declare blend and overlap. One command regenerates everything:
 *
 *   node dist/notebooks/analyses/kv-payoff.js --out runs/kv-payoff [--seeds 2] [--quick]
 *
 * Writes OUT/sweep.json (every run: strategy = the intent, or kvlab), OUT/winners.{json,md}
 * (per cell the intent with the lowest mean TTFT, its margin and kvlab's TTFT),
 * OUT/figures/kv-payoff-winner.{svg,png} (the map: which mode wins where),
 * OUT/figures/ttft-vs-docs.{svg,png} (TTFT p50/p99 against documents per request), and a report
 * in OUT/report/. Cluster: 4 × rtx5090x8-llama3-70b (context raised to 16,384 tokens so eight
 * long documents fit), capabilities blend + overlap, KDN compression 3.41.
 */
import { Command } from 'commander';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { aggregateSweep } from '../data.js';
import { buildSpec, renderSvg, svgToPng } from '../render.js';
import { parseSeeds, runSweep, sweepJsonText } from '../sweep.js';
import { progressPrinter } from '../cli.js';
import type { SweepEntry } from '../types.js';
import { writeSweepFigure } from './figures.js';

/** Margin (%) under which the winner of a cell is called a tie with the runner-up. */
export const TIE_PCT = 3;

/** The injection modes compared (forced by the least-load router's `intent` parameter). */
export const PAYOFF_INTENTS = ['text', 'kvcache', 'hybrid', 'blend', 'overlap'] as const;

const program = new Command('kv-payoff')
  .description('TTFT of text vs kvcache vs hybrid vs blend vs overlap injection against documents per request, document length and link bandwidth')
  .requiredOption('-o, --out <dir>', 'output directory')
  .option('--seeds <k|list>', 'seeds', '2')
  .option('--docs <list>', 'documents per request', '1,2,4,6')
  .option('--lengths <list>', 'median document lengths, tokens', '256,512,1024')
  .option('--gbps <list>', 'KDN link bandwidths, Gbit/s', '1,10,100')
  .option('--requests <n>', 'requests per run', '250')
  .option('--rate <r>', 'arrival rate, req/s', '0.25')
  .option('--quick', 'a small grid for a smoke run (docs 1,4; length 512; 1 and 100 Gbit/s; 1 seed; 80 requests)')
  .option('--jobs <n>', 'parallel runs (default: all cores)');

/** Cluster file of the analysis, with the least-load router forced to `intent` (none: kvlab's run). */
function clusterFile(intent: string | null): Record<string, unknown> {
  return {
    instances: 4,
    engine: { maxModelLen: 16384 },
    capabilities: { blend: true, overlap: true },
    ...(intent ? { strategyParams: { 'least-load': { intent } } } : {}),
  };
}

/** One cell of the winner map. */
export interface PayoffCell {
  bandwidth: number;
  docs: number;
  length: number;
  /** the intent with the lowest mean TTFT (ms), and that TTFT. */
  winner: string;
  ttft: number;
  second: string;
  /** how much lower the winner's mean TTFT is than the runner-up's, % */
  margin: number;
  /** kvlab's mean TTFT in that cell (ms), and its intent mix. */
  kvlab: number | null;
  kvlabMix: Record<string, number>;
  /** mean TTFT of every intent (ms). */
  byIntent: Record<string, number>;
}

/**
 * Per (bandwidth, documents, length), the intent with the lowest mean TTFT (mean across seeds of
 * each run's mean), with kvlab's result beside it.
 */
export function payoffCells(entries: readonly SweepEntry[]): PayoffCell[] {
  const pts = aggregateSweep(entries, ['ttft_ms.mean']);
  const cells = new Map<string, PayoffCell>();
  for (const p of pts) {
    const bw = Number(p.params['kdn_gbps']);
    const docs = Number(p.params['workload.docsPerRequest']);
    const len = Number(p.params['workload.docMedianTokens']);
    const key = `${bw}/${docs}/${len}`;
    let c = cells.get(key);
    if (!c) {
      c = { bandwidth: bw, docs, length: len, winner: '', ttft: Infinity, second: '', margin: 0, kvlab: null, kvlabMix: {}, byIntent: {} };
      cells.set(key, c);
    }
    if (!(p.ci.n > 0)) continue;
    if (p.strategy === 'kvlab') c.kvlab = p.ci.mean;
    else c.byIntent[p.strategy] = p.ci.mean;
  }
  for (const e of entries) {
    if (e.strategy !== 'kvlab' || !e.summary) continue;
    const c = cells.get(`${Number(e.params['kdn_gbps'])}/${Number(e.params['workload.docsPerRequest'])}/${Number(e.params['workload.docMedianTokens'])}`);
    if (!c) continue;
    for (const [k, v] of Object.entries(e.summary.intent_mix ?? {})) if (v) c.kvlabMix[k] = (c.kvlabMix[k] ?? 0) + v;
  }
  for (const c of cells.values()) {
    const ranked = Object.entries(c.byIntent).sort((a, b) => a[1] - b[1]);
    if (ranked.length === 0) continue;
    c.winner = ranked[0]![0];
    c.ttft = ranked[0]![1];
    c.second = ranked[1]?.[0] ?? '';
    c.margin = ranked[1] ? (100 * (ranked[1][1] - ranked[0]![1])) / ranked[1][1] : 0;
  }
  return [...cells.values()].filter((c) => c.winner).sort((a, b) => a.bandwidth - b.bandwidth || a.length - b.length || a.docs - b.docs);
}

/** The winner map as a Markdown table: one row per (bandwidth, length), one column per document count. */
export function winnersMarkdown(cells: readonly PayoffCell[]): string {
  const docs = [...new Set(cells.map((c) => c.docs))].sort((a, b) => a - b);
  const rows = [...new Set(cells.map((c) => `${c.bandwidth}|${c.length}`))];
  const out = [`| Gbit/s | doc tokens | ${docs.map((d) => `${d} doc${d > 1 ? 's' : ''}`).join(' | ')} |`, `|---|---|${docs.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const [bw, len] = r.split('|').map(Number);
    const cols = docs.map((d) => {
      const c = cells.find((x) => x.bandwidth === bw && x.length === len && x.docs === d);
      if (!c) return '-';
      const k = c.kvlab === null ? '' : `; kvlab ${Math.round(c.kvlab)}`;
      return c.margin < TIE_PCT ? `**${c.winner}** ≈ ${c.second} ${Math.round(c.ttft)} ms${k ? ` (${k.slice(2)})` : ''}` : `**${c.winner}** ${Math.round(c.ttft)} ms (−${c.margin.toFixed(0)} % vs ${c.second}${k})`;
    });
    out.push(`| ${bw} | ${len} | ${cols.join(' | ')} |`);
  }
  return out.join('\n') + '\n';
}

async function main(): Promise<void> {
  const o = program.parse().opts<{ out: string; seeds: string; docs: string; lengths: string; gbps: string; requests: string; rate: string; quick?: boolean; jobs?: string }>();
  const nums = (s: string): number[] => s.split(',').map(Number);
  const quick = !!o.quick;
  mkdirSync(join(o.out, 'clusters'), { recursive: true });
  const vary = {
    kdn_gbps: quick ? [1, 100] : nums(o.gbps),
    'workload.docMedianTokens': quick ? [512] : nums(o.lengths),
    'workload.docsPerRequest': quick ? [1, 4] : nums(o.docs),
  };
  const workloadOptions = { requests: quick ? 80 : Number(o.requests), rate: Number(o.rate), docsPerRequestMax: 0, docSigma: 0.2, docMinTokens: 64, docMaxTokens: 4096, maxModelLen: 16384 };
  const seeds = quick ? [1] : parseSeeds(o.seeds);
  const all: SweepEntry[] = [];
  for (const intent of [...PAYOFF_INTENTS, null]) {
    const label = intent ?? 'kvlab';
    const cluster = join(o.out, 'clusters', `${label}.json`);
    writeFileSync(cluster, JSON.stringify(clusterFile(intent), null, 1) + '\n');
    process.stderr.write(`kv-payoff: ${label}\n`);
    const r = await runSweep(
      { workload: 'rag', workloadOptions, strategies: [intent ? 'least-load' : 'kvlab'], vary, seeds, cluster, out: join(o.out, 'sweeps', label) },
      { concurrency: o.jobs ? Number(o.jobs) : undefined, onProgress: progressPrinter() },
    );
    for (const e of r.entries) all.push({ ...e, strategy: label });
  }
  writeFileSync(join(o.out, 'sweep.json'), sweepJsonText(all));
  const cells = payoffCells(all);
  writeFileSync(join(o.out, 'winners.json'), JSON.stringify(cells, null, 1) + '\n');
  writeFileSync(join(o.out, 'winners.md'), winnersMarkdown(cells));
  const figs = join(o.out, 'figures');
  mkdirSync(figs, { recursive: true });
  // within 3 % of the runner-up: a tie, said so on the map
  const rows = cells.map((c) => ({ ...c, label: `${c.margin < TIE_PCT ? `${c.winner} ≈ ${c.second}` : c.winner}\n${Math.round(c.ttft)} ms` }));
  const spec = buildSpec('kv-payoff-winner', { cells: rows }, { title: 'Which injection wins: lowest mean TTFT', subtitle: `rag workload, ${workloadOptions.requests} requests at ${o.rate} req/s, 4 × rtx5090x8-llama3-70b with blend + overlap, ${seeds.length} seed(s); a ≈ b: within ${TIE_PCT} %` });
  const { svg } = await renderSvg(spec);
  writeFileSync(join(figs, 'kv-payoff-winner.svg'), svg);
  writeFileSync(join(figs, 'kv-payoff-winner.png'), svgToPng(svg));
  writeFileSync(join(figs, 'kv-payoff-winner.vl.json'), JSON.stringify(spec, null, 1));
  await writeSweepFigure(all, { out: figs, id: 'ttft-vs-docs', xParam: 'workload.docsPerRequest', title: 'TTFT against documents per request, per injection mode', xTitle: 'documents per request' });
  const { buildReport } = await import('../report.js');
  const rep = await buildReport([o.out], { out: join(o.out, 'report'), title: 'When does KV injection pay off, and which kind?' });
  process.stdout.write(winnersMarkdown(cells));
  process.stderr.write(`kv-payoff: ${all.length} runs (${all.filter((e) => !e.summary).length} failed); ${join(o.out, 'winners.md')}, figures in ${figs}, report ${rep.html}\n`);
}

// run as a program, not when a test imports the helpers
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`kv-payoff: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
