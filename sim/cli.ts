/**
 * `kvlab sim`, `kvlab ab`, `kvlab strategies` (and `kvlab profile ...` from sim/calibrate.ts).
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { STRATEGY_NAMES } from '../engine/strategies/index.js';
import { WORKLOAD_NAMES, type WorkloadName } from '../traces/load.js';
import { runAb, runSim, type RunOptions, type Summary } from './run.js';

/** Parses a positive number option. */
export function positive(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number (got "${v}")`);
    return n;
  };
}

/** Parses a positive integer option. */
export function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive integer (got "${v}")`);
    return n;
  };
}

/** Parses --kv-capacity-tokens N|inf. */
export function capacityArg(v: string): number {
  if (v === 'inf' || v === 'infinity' || v === 'Infinity') return Infinity;
  return positive('--kv-capacity-tokens')(v);
}

/** Parses repeated --workload-opt key=value into an object (numbers parsed). */
function kvPairs(v: string, prev: Record<string, unknown> = {}): Record<string, unknown> {
  const i = v.indexOf('=');
  if (i <= 0) throw new InvalidArgumentError(`expected key=value (got "${v}")`);
  const k = v.slice(0, i);
  const raw = v.slice(i + 1);
  const n = Number(raw);
  return { ...prev, [k]: raw !== '' && Number.isFinite(n) ? n : raw === 'true' ? true : raw === 'false' ? false : raw };
}

function workloadArg(v: string): WorkloadName {
  if (!(WORKLOAD_NAMES as readonly string[]).includes(v)) throw new InvalidArgumentError(`--workload must be one of ${WORKLOAD_NAMES.join(', ')}`);
  return v as WorkloadName;
}

function strategyArg(v: string): string {
  if (!STRATEGY_NAMES.includes(v)) throw new InvalidArgumentError(`unknown strategy "${v}"; known: ${STRATEGY_NAMES.join(', ')}`);
  return v;
}

function strategiesArg(v: string): string[] {
  const list = v === 'all' ? STRATEGY_NAMES : v.split(',').map((s) => s.trim()).filter(Boolean);
  for (const s of list) strategyArg(s);
  return list;
}

/** Shared input/cluster flags of sim and ab. */
function addCommon(c: Command): Command {
  return c
    .option('--trace <file>', 'trace file: Mooncake .jsonl, Azure/Splitwise .csv, or a CacheRoute NQ directory')
    .addOption(new Option('--workload <name>', `built-in workload when no --trace (${WORKLOAD_NAMES.join('|')})`).argParser(workloadArg))
    .option('--workload-opt <key=value>', 'workload generator option, repeatable (e.g. rate=2 requests=500)', kvPairs)
    .option('--instances <n>', 'number of instances (default 16 for Mooncake traces, else 4)', positiveInt('--instances'))
    .option('--profile <name|file>', 'instance profile (default h100x8-llama3-70b for Mooncake, else rtx5090x8-llama3-70b)')
    .option('--kv-capacity-tokens <n|inf>', 'KV capacity per instance in tokens (default: from the profile)', capacityArg)
    .option('--kdn-gbps <x>', 'KDN->instance link bandwidth, Gbit/s (default 10)', positive('--kdn-gbps'))
    .option('--kv-event-delay-ms <ms>', 'delay of KV events back to the engine (default 0)', (v) => Number(v))
    .option('--time-scale <x>', 'multiply arrival times by x (1000 spreads arrivals out)', positive('--time-scale'))
    .option('--cluster <file>', 'cluster file (YAML or JSON): instances, KDNs, links, strategy parameters')
    .option('--skip-bad-lines', 'skip and count malformed trace lines instead of stopping')
    .option('--limit <n>', 'only the first n requests of the trace', positiveInt('--limit'))
    .option('--noise-cv <x>', 'step-time noise coefficient of variation (default 0.02)', (v) => Number(v))
    .option('--quiet', 'no progress on stderr');
}

/** Maps the shared flags of addCommon() to RunOptions fields. */
function inputAndCluster(o: Record<string, any>): Omit<RunOptions, 'strategy'> {
  return {
    trace: o.trace,
    workload: o.workload,
    workloadOptions: o.workloadOpt,
    instances: o.instances,
    profile: o.profile,
    kvCapacityTokens: o.kvCapacityTokens,
    kdnGbps: o.kdnGbps,
    kvEventDelayMs: o.kvEventDelayMs,
    timeScale: o.timeScale,
    cluster: o.cluster,
    skipBadLines: o.skipBadLines,
    limit: o.limit,
    stepNoiseCv: o.noiseCv,
  };
}

/** Progress reporter on stderr (TTY: one updating line; otherwise every 25%). */
export function progress(label: string, quiet: boolean): (done: number, total: number) => void {
  if (quiet) return () => {};
  const tty = process.stderr.isTTY;
  let lastQ = -1;
  return (done, total) => {
    const pct = total ? Math.floor((done / total) * 100) : 100;
    if (tty) process.stderr.write(`\r${label}: ${done}/${total} requests (${pct}%)   `);
    else if (Math.floor(pct / 25) > lastQ) {
      lastQ = Math.floor(pct / 25);
      process.stderr.write(`${label}: ${done}/${total} requests (${pct}%)\n`);
    }
  };
}

function fmt(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits);
}

/** One-run summary as an aligned text block. */
export function summaryText(s: Summary): string {
  const lines = [
    `strategy ${s.strategy}  seed ${s.seed}  instances ${s.instances} x ${s.profile}`,
    `requests ${s.requests}  completed ${s.completed}  rejected ${s.rejected}  preemptions ${s.preemptions}`,
    `TTFT ms   mean ${fmt(s.ttft_ms.mean)}  p50 ${fmt(s.ttft_ms.p50)}  p90 ${fmt(s.ttft_ms.p90)}  p99 ${fmt(s.ttft_ms.p99)}`,
    `TPOT ms   mean ${fmt(s.tpot_ms.mean, 2)}  p50 ${fmt(s.tpot_ms.p50, 2)}  p90 ${fmt(s.tpot_ms.p90, 2)}  p99 ${fmt(s.tpot_ms.p99, 2)}`,
    `E2E ms    mean ${fmt(s.e2e_ms.mean)}  p50 ${fmt(s.e2e_ms.p50)}  p90 ${fmt(s.e2e_ms.p90)}  p99 ${fmt(s.e2e_ms.p99)}`,
    `prefix_hit_ratio ${fmt(s.prefix_hit_ratio, 4)}  kv_reuse_ratio ${fmt(s.kv_reuse_ratio, 4)}  throughput ${fmt(s.throughput_rps, 3)} req/s  load CoV ${fmt(s.load_cov, 3)}`,
    `intents ${Object.entries(s.intent_mix).map(([k, v]) => `${k}=${v}`).join(' ')}  KV bytes moved ${s.kv_bytes_moved}`,
    `simulated ${s.requests} requests in ${s.wall_ms} ms (${s.sim_requests_per_s} req/s)`,
  ];
  if (s.skipped_lines > 0) lines.push(`skipped ${s.skipped_lines} malformed trace line(s): ${s.skipped_reasons.slice(0, 3).join('; ')}${s.skipped_lines > 3 ? '; …' : ''}`);
  return lines.join('\n');
}

/** The A/B comparison table: one row per strategy, change of mean TTFT against the first. */
export function abTable(ab: Record<string, unknown>): string {
  const strategies = ab.strategies as Record<string, Record<string, unknown>>;
  const names = Object.keys(strategies);
  const base = ab.baseline as string;
  const get = (s: string, path: string): { mean: number | null; ci95: [number | null, number | null] } => {
    const [f, st] = path.split('.');
    const v = st ? (strategies[s]![f!] as Record<string, unknown>)[st] : strategies[s]![f!];
    return v as { mean: number | null; ci95: [number | null, number | null] };
  };
  const ci = (m: { mean: number | null; ci95: [number | null, number | null] }, d = 0) =>
    m.mean === null ? '-' : m.ci95[0] !== null && m.ci95[1] !== null && m.ci95[1] - m.ci95[0] > 0 ? `${m.mean.toFixed(d)}±${((m.ci95[1] - m.ci95[0]) / 2).toFixed(d)}` : m.mean.toFixed(d);
  const header = ['strategy', 'TTFT mean ms', 'p50', 'p90', 'p99', 'TPOT ms', 'E2E mean ms', 'hit ratio', 'req/s', 'ΔTTFT vs ' + base];
  const rows = names.map((s) => {
    const vs = (strategies[s]!.vs_baseline as Record<string, { change: number; significant: boolean }>)['ttft_ms.mean'];
    const change = s === base ? 'baseline' : vs ? `${(vs.change * 100).toFixed(1)}%${vs.significant ? ' *' : ''}` : '-';
    return [
      s,
      ci(get(s, 'ttft_ms.mean')),
      ci(get(s, 'ttft_ms.p50')),
      ci(get(s, 'ttft_ms.p90')),
      ci(get(s, 'ttft_ms.p99')),
      ci(get(s, 'tpot_ms.mean'), 2),
      ci(get(s, 'e2e_ms.mean')),
      ci(get(s, 'prefix_hit_ratio'), 3),
      ci(get(s, 'throughput_rps'), 3),
      change,
    ];
  });
  const w = header.map((h, j) => Math.max(h.length, ...rows.map((r) => r[j]!.length)));
  const line = (r: string[]) => r.map((c, j) => (j === 0 ? c.padEnd(w[j]!) : c.padStart(w[j]!))).join('  ');
  return [line(header), line(w.map((x) => '-'.repeat(x))), ...rows.map(line), '', `(± = 95% CI half-width across ${(ab.seeds as number[]).length} seed(s); * = CI of the change excludes 0)`].join('\n');
}

/** Registers sim, ab and strategies on the root program (profile: sim/calibrate.ts). */
export function registerSimCommands(program: Command): void {
  addCommon(
    program
      .command('sim')
      .description('Simulate one strategy on a trace or workload; writes records.jsonl, summary.json, timeseries.json, config.json')
      .addOption(new Option('--strategy <name>', `strategy (${STRATEGY_NAMES.join(', ')})`).argParser(strategyArg).default('kvlab'))
      .option('--strategy-opt <key=value>', 'strategy parameter, repeatable', kvPairs)
      .option('--seed <n>', 'seed', (v) => Number(v), 1)
      .option('--out <dir>', 'run directory', 'runs/sim')
      .option('--json', 'print summary.json to stdout instead of the text summary'),
  ).action(async (o) => {
    const res = await runSim({
      ...inputAndCluster(o),
      strategy: o.strategy,
      strategyParams: o.strategyOpt,
      seed: o.seed,
      out: o.out,
      onProgress: progress(`sim ${o.strategy}`, !!o.quiet),
    });
    if (!o.quiet && process.stderr.isTTY) process.stderr.write('\n');
    if (o.json) process.stdout.write(JSON.stringify(res.summary, null, 1) + '\n');
    else process.stdout.write(summaryText(res.summary) + `\nwrote ${res.outDir}\n`);
  });

  addCommon(
    program
      .command('ab')
      .description('Run several strategies on the same schedule over K seeds; writes DIR/ab.json and prints a comparison table')
      .option('--strategies <list>', 'comma-separated strategies, first = baseline, or "all"', strategiesArg, ['round-robin', 'least-load', 'cacheroute', 'dynamo-kv', 'sglang-cache-aware', 'kvlab'])
      .option('--seeds <k>', 'number of seeds (1..k)', positiveInt('--seeds'), 3)
      .option('--out <dir>', 'output directory', 'runs/ab')
      .option('--records', 'also write records.jsonl for every run')
      .option('--json', 'print ab.json to stdout instead of the table'),
  ).action(async (o) => {
    const seeds = Array.from({ length: o.seeds }, (_, i) => i + 1);
    const total = seeds.length * o.strategies.length;
    let done = 0;
    const t0 = performance.now();
    const ab = await runAb({
      ...inputAndCluster(o),
      strategies: o.strategies,
      seeds,
      out: o.out,
      records: !!o.records,
      onRun: (s, seed, sum) => {
        done++;
        if (!o.quiet) process.stderr.write(`[${done}/${total}] ${s} seed ${seed}: TTFT mean ${fmt(sum.ttft_ms.mean)} ms, ${sum.completed}/${sum.requests} completed (${sum.wall_ms} ms)\n`);
      },
    });
    if (o.json) process.stdout.write(JSON.stringify(ab, null, 1) + '\n');
    else process.stdout.write(`${abTable(ab)}\n\nwrote ${o.out}/ab.json (${Math.round(performance.now() - t0)} ms)\n`);
  });

  program
    .command('strategies')
    .description('List the strategies')
    .action(() => {
      process.stdout.write(STRATEGY_NAMES.join('\n') + '\n');
    });
}
