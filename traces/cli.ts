/**
 * `kvlab trace ...` sub-commands.
 */
import { Command, Option } from 'commander';
import { intArg, numberArg, seedArg } from '../bin/options.js';
import { WORKLOAD_NAMES, loadTrace, loadWorkload, workloadDefaults, type WorkloadName } from './load.js';
import { formatStatsTable, traceStats } from './stats.js';
import type { LoadedTrace } from './schema.js';

interface StatsFlags {
  workload?: WorkloadName;
  json?: boolean;
  skipBadLines?: boolean;
  timeScale?: number;
  limit?: number;
  seed?: number;
  requests?: number;
  rate?: number;
  zipfS?: number;
  arrival?: string;
  dir?: string;
}

/** Loads what `trace stats` was asked for: a FILE, or a built-in --workload. */
async function loadFor(file: string | undefined, f: StatsFlags): Promise<LoadedTrace> {
  if ((file === undefined) === (f.workload === undefined)) {
    throw new Error('trace stats: give either FILE or --workload synthetic|nq');
  }
  const gen = {
    seed: f.seed,
    requests: f.requests,
    rate: f.rate,
    zipfS: f.zipfS,
    arrival: f.arrival as 'poisson',
    timeScale: f.timeScale,
  };
  if (file !== undefined) {
    return loadTrace(file, { ...gen, skipBadLines: f.skipBadLines, limit: f.limit });
  }
  return loadWorkload(f.workload!, { ...gen, dir: f.dir });
}

/** Registers this area's kvlab sub-commands (`trace stats`, `trace defaults`) on the root program. */
export function registerTraceCommands(program: Command): void {
  const trace = program.command('trace').description('inspect request traces and built-in workloads');

  trace
    .command('stats')
    .description(
      'summary of a trace (Mooncake .jsonl, Vidur/Azure .csv, NQ workload directory) or a built-in workload: ' +
        'requests, token means, block reuse and the infinite-cache prefix hit ratio',
    )
    .argument('[file]', 'trace file or NQ workload directory')
    .addOption(new Option('--workload <name>', 'built-in workload instead of FILE').choices([...WORKLOAD_NAMES]))
    .option('--json', 'print one JSON object')
    .option('--skip-bad-lines', 'skip and count malformed lines instead of failing')
    .option('--time-scale <x>', 'multiply arrival times by X', numberArg('--time-scale', { min: 0, minExclusive: true }))
    .option('--limit <n>', 'read at most N requests of FILE', intArg('--limit'))
    .option('--seed <n>', 'seed of a generated workload (integer >= 0)', seedArg)
    .option('--requests <n>', 'requests of a generated workload', intArg('--requests'))
    .option('--rate <rps>', 'arrival rate of a generated workload, req/s', numberArg('--rate', { min: 0, minExclusive: true }))
    .option('--zipf-s <s>', 'Zipf popularity exponent of a generated workload', numberArg('--zipf-s', { min: 0 }))
    .option('--arrival <kind>', 'arrival process: poisson, bursty (synthetic), uniform (nq)')
    .option('--dir <path>', 'NQ workload directory for --workload nq')
    .action(async (file: string | undefined, flags: StatsFlags) => {
      const t = await loadFor(file, flags);
      const stats = traceStats(t.requests, t.meta);
      if (t.meta.reordered > 0) process.stderr.write(`warning: ${t.meta.file || t.meta.name}: ${t.meta.reordered} request(s) arrived before an earlier line's timestamp; sorted by arrival\n`);
      if (flags.json) {
        process.stdout.write(`${JSON.stringify({ name: t.meta.name, format: t.meta.format, ...stats })}\n`);
      } else {
        process.stdout.write(`# ${t.meta.name} (${t.meta.format})\n${formatStatsTable(stats)}`);
        if (t.meta.skipped > 0) {
          process.stderr.write(`skipped ${t.meta.skipped} bad lines, first: ${t.meta.skippedReasons.join('; ')}\n`);
        }
      }
    });

  trace
    .command('defaults')
    .description('print the default options of a built-in workload as JSON')
    .addOption(new Option('--workload <name>', 'workload').choices([...WORKLOAD_NAMES]).default('synthetic'))
    .action((flags: { workload: WorkloadName }) => {
      process.stdout.write(`${JSON.stringify(workloadDefaults(flags.workload), null, 2)}\n`);
    });
}
