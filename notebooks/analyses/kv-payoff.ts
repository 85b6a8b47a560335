/**
 * Analysis: when does KV injection pay off?
 *
 * TTFT of text injection (recompute the knowledge), KV injection (load its KV over the KDN link)
 * and kvlab's hybrid split, against knowledge length and KDN link bandwidth, on the synthetic RAG
 * workload. One command regenerates everything:
 *
 *   node dist/notebooks/analyses/kv-payoff.js --out runs/kv-payoff [--seeds 3] [--quick]
 *
 * Writes OUT/sweep.json (via the sweep machinery: all cores), OUT/figures/ttft-vs-knowledge.{svg,png}
 * (TTFT p50/p99 against the median knowledge length, one panel per bandwidth) and a full report
 * in OUT/report/. Needs sim/run (runSim); the strategy names and the `workload.docMedianTokens`
 * option are the simulator's (engine/strategies, traces/synthetic.ts).
 */
import { Command } from 'commander';
import { join } from 'node:path';
import { parseSeeds, runSweep } from '../sweep.js';
import { progressPrinter } from '../cli.js';
import { writeSweepFigure } from './figures.js';

const program = new Command('kv-payoff')
  .description('TTFT of text vs kvcache vs hybrid injection against knowledge length and link bandwidth')
  .requiredOption('-o, --out <dir>', 'output directory')
  .option('--seeds <k|list>', 'seeds', '3')
  .option('--strategies <list>', 'text-only, kv-only and the hybrid policy', 'text-only,kv-only,kvlab')
  .option('--knowledge <list>', 'median knowledge lengths, tokens', '256,512,1024,2048,3000')
  .option('--gbps <list>', 'KDN link bandwidths, Gbit/s', '1,10,100')
  .option('--requests <n>', 'requests per run', '1500')
  .option('--rate <r>', 'arrival rate, req/s', '2')
  .option('--quick', 'a small grid for a smoke run (2 lengths, 2 bandwidths, 1 seed, 300 requests)')
  .option('--jobs <n>', 'parallel runs (default: all cores)');

async function main(): Promise<void> {
  const o = program.parse().opts<{ out: string; seeds: string; strategies: string; knowledge: string; gbps: string; requests: string; rate: string; quick?: boolean; jobs?: string }>();
  const nums = (s: string): number[] => s.split(',').map(Number);
  const quick = !!o.quick;
  const r = await runSweep(
    {
      workload: 'synthetic',
      workloadOptions: { requests: quick ? 300 : Number(o.requests), rate: Number(o.rate), docMaxTokens: 8192, maxModelLen: 16384 },
      strategies: o.strategies.split(','),
      vary: { 'workload.docMedianTokens': quick ? [512, 2048] : nums(o.knowledge), kdn_gbps: quick ? [1, 100] : nums(o.gbps) },
      seeds: quick ? [1] : parseSeeds(o.seeds),
      out: o.out,
    },
    { concurrency: o.jobs ? Number(o.jobs) : undefined, onProgress: progressPrinter() },
  );
  await writeSweepFigure(r.entries, {
    out: join(o.out, 'figures'),
    id: 'ttft-vs-knowledge',
    xParam: 'workload.docMedianTokens',
    title: 'When does KV injection pay off? TTFT against knowledge length',
    xTitle: 'median knowledge length (tokens)',
  });
  const { buildReport } = await import('../report.js');
  const rep = await buildReport([o.out], { out: join(o.out, 'report'), title: 'When does KV injection pay off?' });
  process.stderr.write(`kv-payoff: ${r.entries.length} runs (${r.failed} failed); figures in ${join(o.out, 'figures')}; report ${rep.html}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`kv-payoff: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
