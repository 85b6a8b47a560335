/**
 * Analysis: KV-cache-aware routers on the Mooncake conversation trace.
 *
 * Replays the trace (12,031 requests, one hour) with the classic baselines and the published
 * KV-aware routers, at the trace's own rate and faster (rate multipliers), and compares TTFT,
 * throughput and prefix hit ratio. One command regenerates everything:
 *
 *   node dist/notebooks/analyses/mooncake-routers.js --out runs/mooncake [--rates 1,2] [--seeds 1]
 *
 * Writes OUT/sweep.json, OUT/figures/ttft-vs-load.{svg,png} and a report in OUT/report/
 * (A/B tables per rate come from the sweep table). The trace path defaults to
 * ../shared/data/traces/mooncake/conversation_trace.jsonl beside the checkout.
 * A trace replay is deterministic for a given schedule; extra seeds only vary the simulator's
 * step-time noise.
 */
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { progressPrinter } from '../cli.js';
import { parseSeeds, runSweep } from '../sweep.js';
import { writeSweepFigure } from './figures.js';

const ROUTERS = 'round-robin,least-load,cacheroute,dynamo-kv,sglang-router,sglang-gateway,aibrix-prefix,llm-d,mooncake,mooncake-local,kvlab';

const program = new Command('mooncake-routers')
  .description('compare routers on the Mooncake conversation trace')
  .requiredOption('-o, --out <dir>', 'output directory')
  .option('--trace <file>', 'Mooncake JSONL trace', resolve('..', 'shared', 'data', 'traces', 'mooncake', 'conversation_trace.jsonl'))
  .option('--strategies <list>', 'routers to compare (first = baseline)', ROUTERS)
  .option('--rates <list>', 'rate multipliers (1 = the trace as recorded)', '1,2')
  .option('--seeds <k|list>', 'seeds', '1')
  .option('--jobs <n>', 'parallel runs (default: all cores)')
  .option('--keep-runs', 'keep run directories (records for the time-line and CDF charts)');

async function main(): Promise<void> {
  const o = program.parse().opts<{ out: string; trace: string; strategies: string; rates: string; seeds: string; jobs?: string; keepRuns?: boolean }>();
  if (!existsSync(o.trace)) throw new Error(`trace not found: ${o.trace} (pass --trace)`);
  const r = await runSweep(
    {
      trace: o.trace,
      strategies: o.strategies.split(','),
      vary: { rate: o.rates.split(',').map(Number) },
      seeds: parseSeeds(o.seeds),
      out: o.out,
      keepRuns: o.keepRuns,
    },
    { concurrency: o.jobs ? Number(o.jobs) : undefined, onProgress: progressPrinter() },
  );
  await writeSweepFigure(r.entries, { out: join(o.out, 'figures'), id: 'ttft-vs-load', xParam: 'rate', title: 'Routers on the Mooncake trace: TTFT against load', xTitle: 'rate multiplier (x trace rate)' });
  await writeSweepFigure(r.entries, { out: join(o.out, 'figures'), id: 'throughput-vs-load', xParam: 'rate', title: 'Routers on the Mooncake trace: throughput against load', xTitle: 'rate multiplier (x trace rate)', metric: 'throughput' });
  const { buildReport } = await import('../report.js');
  const inputs = [o.out, ...(o.keepRuns ? [join(o.out, 'runs')] : [])];
  const rep = await buildReport(inputs, { out: join(o.out, 'report'), title: 'Routers on the Mooncake trace' });
  process.stderr.write(`mooncake-routers: ${r.entries.length} runs (${r.failed} failed); report ${rep.html}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`mooncake-routers: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
