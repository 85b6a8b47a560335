/**
 * kvlab sub-commands of notebooks/: `report` (HTML/Markdown/SVG/PNG reports of runs, A/B
 * comparisons, sweeps and diffs), `sweep` (parameter grids over the simulator, in parallel
 * locally or on a BullMQ queue) and `worker` (runs queued sweep cells).
 */
import { Command, Option } from 'commander';
import { intArg, keyValueArg, outDirArg } from '../bin/options.js';
import { checkWorkloadOptions } from '../traces/load.js';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { formatProgress, parseSeeds, parseVary, runSweep, type SweepProgress } from './sweep.js';
import type { SweepEntry } from './types.js';

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/**
 * Parses KEY=VALUE options into an object (numbers and true/false parsed, bin/options.ts
 * `keyValueArg`).
 * @throws Error naming the option for an entry without "=" or a key given twice.
 */
export function parseKeyValues(list: readonly string[], option: string): Record<string, unknown> | undefined {
  if (list.length === 0) return undefined;
  const parse = keyValueArg(option);
  let out: Record<string, unknown> = {};
  for (const kv of list) out = parse(kv, out);
  return out;
}

/** Writes progress lines to stderr: rewritten in place on a terminal, one per job otherwise. */
export function progressPrinter(stream: NodeJS.WriteStream = process.stderr): (p: SweepProgress) => void {
  return (p) => {
    const line = formatProgress(p);
    if (stream.isTTY) stream.write(`\r\x1b[2K${line.slice(0, (stream.columns ?? 120) - 1)}${p.done === p.total ? '\n' : ''}`);
    else stream.write(line + '\n');
  };
}

/** Registers `kvlab report`, `kvlab sweep` and `kvlab worker` on the root program. */
export function registerReportCommands(program: Command): void {
  program
    .command('report')
    .summary('build an HTML + Markdown report with charts from runs, A/B, sweep or diff outputs')
    .description(
      [
        'Build a report from one or more inputs. Each INPUT may be:',
        '  - a run directory (summary.json, records.jsonl, timeseries.json, ...),',
        '  - an A/B directory (ab.json; its per-strategy/seed runs are loaded too),',
        '  - a sweep directory (sweep.json from `kvlab sweep`), or the sweep.json,',
        '  - a diff.json from `kvlab diff`, or a directory containing one,',
        '  - a directory with run directories below it.',
        'Writes OUT/report.html (self-contained: vega, vega-lite and vega-embed',
        'inlined; works offline), OUT/report.md (the tables, with PNG links) and',
        'OUT/charts/ID.svg, ID.png and ID.vl.json (the spec with its data).',
        'Charts whose data is absent are skipped with a note in the report.',
      ].join('\n'),
    )
    .argument('<inputs...>', 'run, ab or sweep directories, or diff.json files')
    .requiredOption('-o, --out <dir>', 'output directory (created)', outDirArg('--out'))
    .option('--title <text>', 'report title', 'kvlab report')
    .option('--request <id>', "request shown in the time-line chart (default: the slowest request's id)")
    .option('--request-strategy <name>', 'take the time-line request from runs of this strategy')
    .option('--no-png', 'skip PNG rendering (SVG only; faster)')
    .addHelpText('after', '\nExamples:\n  kvlab report runs/ab --out runs/ab/report\n  kvlab report runs/ab runs/sweep runs/diff/diff.json --out report --request r42')
    .action(async (inputs: string[], o: { out: string; title: string; request?: string; requestStrategy?: string; png: boolean }) => {
      const t0 = Date.now();
      const { buildReport } = await import('./report.js');
      const r = await buildReport(inputs, {
        out: o.out,
        title: o.title,
        png: o.png,
        timeline: { requestId: o.request, strategy: o.requestStrategy },
      });
      const drawn = r.charts.filter((c) => !c.skipped);
      const skipped = r.charts.filter((c) => c.skipped);
      process.stderr.write(`report: ${drawn.length} charts, ${r.tables.length} tables in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
      for (const c of skipped) process.stderr.write(`report: skipped ${c.id}: ${c.skipped}\n`);
      for (const w of r.warnings) process.stderr.write(`report: warning: ${w}\n`);
      process.stdout.write(`${r.html}\n${r.md}\n`);
    });

  program
    .command('sweep')
    .summary('run strategies x seeds over a parameter grid in parallel; writes sweep.json')
    .description(
      [
        'Run every strategy and seed at every point of a parameter grid, in',
        'parallel on all cores, and write OUT/sweep.json = [{params, strategy,',
        'seed, summary}] in grid order. Progress goes to stderr.',
        'Parameters (--vary NAME=V1,V2,...):',
        '  rate           --workload: arrival rate, req/s (workloadOptions.rate);',
        '                 --trace: rate multiplier (timeScale = 1/rate)',
        '  kdn_gbps       KDN link bandwidth, Gbit/s (overrides.kdn_gbps)',
        '  instances      number of instances',
        '  router_replicas, replica_sync_ms   router replicas, and ms until one',
        '                 replica\'s bookkeeping reaches the others (or none)',
        '  workload.NAME  a workload generator option (workloadOptions.NAME;',
        '                 kvlab trace defaults lists them)',
        'Any other name is an error.',
        'A failed run is recorded with its error and the sweep goes on; the exit',
        'code is then 1. sweep.json depends on the grid only; wall times and memory',
        'go to OUT/sweep-timing.json.',
        '',
        'Distributed (--queue redis://HOST:PORT/DB): one BullMQ job per cell, its id a',
        'hash of the cell\'s full input (config, trace digest, seed, kvlab version), so',
        'submitting again runs nothing already done or queued. Start workers anywhere',
        'with `kvlab worker --queue URL`; the trace is stored once in Redis by digest',
        'for workers that cannot read its path. The command waits, shows progress',
        'from queue events and writes the same sweep.json as a local run;',
        '--no-wait only enqueues, --collect only waits and writes.',
      ].join('\n'),
    )
    .addOption(new Option('--trace <file>', 'trace file to replay').conflicts('workload'))
    .addOption(new Option('--workload <name>', 'built-in workload instead of a trace').choices(['synthetic', 'rag', 'nq']))
    .requiredOption('--strategies <list>', 'comma-separated strategy names (the first is the baseline)')
    .option('--vary <name=values>', 'a grid dimension, repeatable: --vary rate=1,2,4,8 --vary kdn_gbps=1,10,100', collect, [])
    .option('--seeds <k|list>', 'number of seeds (1..K) or a list', '3')
    .option('--workload-opt <key=value>', 'a workload generator option, repeatable (e.g. requests=2000)', collect, [])
    .option('--instances <n>', 'instances per run (at most 4096)', intArg('--instances', { min: 1, max: 4096, maxWhy: 'a resource bound: every instance keeps its own KV-cache model and prefix index' }))
    .option('--cluster <file>', 'cluster config file')
    .option('--jobs <n>', `parallel runs (default: all cores, here ${availableParallelism()})`, intArg('--jobs', { min: 1, max: 256 }))
    .option('--keep-runs', 'keep every run directory under OUT/runs/ (records, timeseries)')
    .option('--report', 'build a report of the sweep into OUT/report afterwards')
    .option('--queue <url>', 'run the cells on a BullMQ job queue in this Redis (redis://HOST:PORT/DB) instead of locally')
    .option('--collect', 'with --queue: enqueue nothing, wait for the cells and write sweep.json')
    .option('--no-wait', 'with --queue: return once the cells are enqueued')
    .option('--retry-failed', 'with --queue: put failed cells of this grid back in the queue')
    .requiredOption('-o, --out <dir>', 'output directory (created)', outDirArg('--out'))
    .addHelpText(
      'after',
      [
        '',
        'Examples:',
        '  kvlab sweep --trace trace.jsonl --strategies round-robin,kvlab --vary rate=1,2,4,8 --vary kdn_gbps=1,10,100 --seeds 3 --out runs/sweep',
        '  kvlab worker --queue redis://10.0.0.5:6379/2 --concurrency 2        # on each machine',
        '  kvlab sweep --trace trace.jsonl --strategies round-robin,kvlab --vary rate=1,2,4,8 --seeds 3 --queue redis://10.0.0.5:6379/2 --out runs/sweep',
      ].join('\n'),
    )
    .action(
      async (o: { trace?: string; workload?: 'synthetic' | 'rag' | 'nq'; workloadOpt: string[]; strategies: string; vary: string[]; seeds: string; instances?: number; cluster?: string; jobs?: number; keepRuns?: boolean; report?: boolean; out: string; queue?: string; collect?: boolean; wait: boolean; retryFailed?: boolean }) => {
        const strategies = o.strategies.split(',').map((s) => s.trim()).filter(Boolean);
        const { STRATEGY_NAMES } = await import('../engine/strategies/index.js');
        for (const st of strategies) if (!STRATEGY_NAMES.includes(st)) throw new Error(`--strategies: unknown strategy "${st}"; known: ${STRATEGY_NAMES.join(', ')}`);
        const workloadOptions = parseKeyValues(o.workloadOpt, '--workload-opt');
        if (workloadOptions && o.trace) throw new Error('--workload-opt applies to --workload, not to --trace');
        if (workloadOptions) checkWorkloadOptions(o.workload ?? 'synthetic', workloadOptions, '--workload-opt');
        const spec = {
          trace: o.trace,
          workload: o.trace ? undefined : (o.workload ?? 'synthetic'),
          workloadOptions,
          strategies,
          vary: parseVary(o.vary),
          seeds: parseSeeds(o.seeds),
          instances: o.instances,
          cluster: o.cluster,
          out: o.out,
          keepRuns: o.keepRuns,
        };
        const finish = async (r: { file: string; entries: SweepEntry[]; failed: number }): Promise<void> => {
          process.stderr.write(`sweep: wrote ${r.file} (${r.entries.length} runs, ${r.failed} failed)\n`);
          for (const e of r.entries.filter((x) => x.error).slice(0, 5)) process.stderr.write(`sweep: failed ${e.strategy} ${JSON.stringify(e.params)} seed ${e.seed}: ${e.error}\n`);
          if (o.report) {
            const { buildReport } = await import('./report.js');
            const rep = await buildReport([o.out], { out: join(o.out, 'report'), title: 'kvlab sweep' });
            process.stderr.write(`sweep: report ${rep.html}\n`);
          }
          process.stdout.write(`${r.file}\n`);
          if (r.failed > 0) process.exitCode = 1;
        };
        if (!o.queue && (o.collect || !o.wait || o.retryFailed)) throw new Error(`${o.collect ? '--collect' : o.retryFailed ? '--retry-failed' : '--no-wait'} needs --queue URL`);
        if (o.queue && o.jobs !== undefined) throw new Error('--jobs is for local sweeps; with --queue, start workers with kvlab worker --concurrency N');
        if (o.queue) {
          const { runQueueSweep } = await import('./queue/submit.js');
          const q = await runQueueSweep(spec, { queue: o.queue, collect: o.collect, wait: o.wait, retryFailed: o.retryFailed, onProgress: progressPrinter(), log: (l) => process.stderr.write(l + '\n') });
          if (!q.file) {
            process.stdout.write(`${q.enqueued} enqueued, ${q.alreadyDone} done, ${q.alreadyQueued} already queued\n`);
            return;
          }
          await finish({ file: q.file, entries: q.entries!, failed: q.failed! });
          return;
        }
        await finish(await runSweep(spec, { concurrency: o.jobs, onProgress: progressPrinter() }));
      },
    );

  program
    .command('worker')
    .summary('run sweep cells from a BullMQ queue (kvlab sweep --queue)')
    .description(
      [
        'Take the cells of `kvlab sweep --queue URL` from the queue in that Redis and',
        'simulate them, N at a time in worker threads, until stopped (SIGINT or SIGTERM:',
        'finishes the running cells first). Start one per machine; each must have this',
        'kvlab version (the queue is per version). A worker that dies mid-cell loses',
        'nothing: after --lock-ms another worker takes the cell again.',
        'Traces are read from the submitter\'s path when it exists here with the same',
        'sha256, else fetched once from Redis into $TMPDIR/kvlab-blobs/.',
      ].join('\n'),
    )
    .requiredOption('--queue <url>', 'Redis of the queue: redis://HOST:PORT/DB')
    .option('--concurrency <n>', 'cells at once (default 1)', intArg('--concurrency', { min: 1, max: 256 }), 1)
    .option('--lock-ms <ms>', 'job lock: how long a dead worker holds its cell (ms)', intArg('--lock-ms', { min: 100 }), 30_000)
    .option('--stalled-interval-ms <ms>', 'how often to look for cells of dead workers (ms)', intArg('--stalled-interval-ms', { min: 100 }), 30_000)
    .addOption(new Option('--sim-module <url>', 'simulator module (tests)').hideHelp())
    .option('--json', 'print {"worker", "done", "failed"} on exit')
    .addHelpText('after', '\nExample:\n  kvlab worker --queue redis://10.0.0.5:6379/2 --concurrency 2')
    .action(async (o: { queue: string; concurrency: number; lockMs: number; stalledIntervalMs: number; simModule?: string; json?: boolean }) => {
      const { startQueueWorker } = await import('./queue/worker.js');
      const w = await startQueueWorker({ queue: o.queue, concurrency: o.concurrency, lockMs: o.lockMs, stalledIntervalMs: o.stalledIntervalMs, simModule: o.simModule, log: (l) => process.stderr.write(l + '\n') });
      process.stderr.write(`worker ${w.name}: ready on ${o.queue} (concurrency ${o.concurrency})\n`);
      await new Promise<void>((resolve) => {
        const stop = (): void => {
          process.stderr.write(`worker ${w.name}: stopping after the running cells\n`);
          void w.close().then(resolve);
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      if (o.json) process.stdout.write(JSON.stringify({ worker: w.name, ...w.stats }) + '\n');
      else process.stdout.write(`worker ${w.name}: ${w.stats.done} done, ${w.stats.failed} failed\n`);
    });
}
