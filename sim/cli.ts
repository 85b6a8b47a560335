/**
 * `kvlab sim`, `kvlab ab`, `kvlab capacity`, `kvlab strategies` (and `kvlab profile ...` from sim/calibrate.ts).
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { intArg, keyValueArg, numberArg, outDirArg, seedArg } from '../bin/options.js';
import { checkStrategyParams, STRATEGY_NAMES } from '../engine/strategies/index.js';
import { parseRoles } from '../engine/pd.js';
import { checkWorkloadOptions, WORKLOAD_NAMES, type WorkloadName } from '../traces/load.js';
import type { StepFactors } from '../engine/calibration.js';
import { DEFAULT_SLO, type Slo } from './metrics.js';
import { capacityTable, runCapacity } from './capacity.js';
import { runAb, runSim, type RunOptions, type Summary } from './run.js';

/** Parses a positive number option (bin/options.ts `numberArg`, > 0). */
export function positive(name: string): (v: string) => number {
  return numberArg(name, { min: 0, minExclusive: true });
}

/** Parses a positive integer option (bin/options.ts `intArg`, >= 1). */
export function positiveInt(name: string): (v: string) => number {
  return intArg(name, { min: 1 });
}

/** Parses --kv-capacity-tokens N|inf. */
export const capacityArg = intArg('--kv-capacity-tokens', { min: 1, allowInfinity: true });

/**
 * Largest `--instances`: a resource bound (each instance carries its own KV-cache model, queues and
 * prefix index), far above any cluster the bundled profiles describe.
 */
export const MAX_INSTANCES = 4096;
/** Largest `--seeds`: every seed is a full run of every strategy. */
export const MAX_SEEDS = 1000;

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

/**
 * Checks the input flags before any work: --trace and --workload are exclusive, workload
 * options must be known names of that workload (traces/load.ts `checkWorkloadOptions`).
 * @throws Error naming the flag
 */
function checkInputs(o: Record<string, any>): void {
  if (o.trace && o.workload) throw new Error('give --trace or --workload, not both');
  if (o.workloadOpt && o.trace) throw new Error('--workload-opt applies to --workload, not to --trace');
  if (o.workloadOpt) checkWorkloadOptions(o.workload ?? 'synthetic', o.workloadOpt, '--workload-opt');
}

/** Warns on stderr about what the loader changed (arrivals out of order, sorted). */
export function inputWarnings(s: Pick<Summary, 'reordered_arrivals' | 'trace'>): void {
  if (s.reordered_arrivals > 0) process.stderr.write(`warning: ${s.trace}: ${s.reordered_arrivals} request(s) arrived before an earlier line's timestamp; sorted by arrival (summary.json reordered_arrivals)\n`);
}

/**
 * Parses `--slo ttft=MS,tbt=MS` (either key may be omitted: default DEFAULT_SLO's value).
 * @throws InvalidArgumentError naming the key for an unknown key or a non-positive value
 */
export function sloArg(v: string): Slo {
  const out: Slo = { ...DEFAULT_SLO };
  for (const part of v.split(',').map((x) => x.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    const k = i > 0 ? part.slice(0, i).trim() : part;
    const n = i > 0 ? Number(part.slice(i + 1)) : NaN;
    if (k !== 'ttft' && k !== 'tbt') throw new InvalidArgumentError(`--slo: unknown key "${k}" (use ttft=MS,tbt=MS)`);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`--slo ${k} must be a positive number of ms (got "${part.slice(i + 1)}")`);
    if (k === 'ttft') out.ttftMs = n;
    else out.tbtMs = n;
  }
  return out;
}

/**
 * Parses `--engine-scale prefill=X,decode=Y` (an omitted key is 1).
 * @throws InvalidArgumentError naming the key for an unknown key or a non-positive factor
 */
export function factorsArg(v: string): StepFactors {
  const out: StepFactors = { prefill: 1, decode: 1 };
  for (const part of v.split(',').map((x) => x.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    const k = i > 0 ? part.slice(0, i).trim() : part;
    const n = i > 0 ? Number(part.slice(i + 1)) : NaN;
    if (k !== 'prefill' && k !== 'decode') throw new InvalidArgumentError(`--engine-scale: unknown key "${k}" (use prefill=X,decode=Y)`);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`--engine-scale ${k} must be a positive factor (got "${part.slice(i + 1)}")`);
    out[k] = n;
  }
  return out;
}

/** Shared input/cluster flags of sim and ab. */
function addCommon(c: Command): Command {
  return c
    .option('--trace <file>', 'trace file: Mooncake .jsonl, Azure/Splitwise .csv, or a CacheRoute NQ directory')
    .addOption(new Option('--workload <name>', `built-in workload when no --trace (${WORKLOAD_NAMES.join('|')})`).argParser(workloadArg))
    .option('--workload-opt <key=value>', 'workload generator option, repeatable (e.g. rate=2 requests=500; kvlab trace defaults lists them)', keyValueArg('--workload-opt'))
    .option('--instances <n>', `number of instances (default 16 for Mooncake traces, else 4; at most ${MAX_INSTANCES})`, intArg('--instances', { min: 1, max: MAX_INSTANCES, maxWhy: 'a resource bound: every instance keeps its own KV-cache model and prefix index' }))
    .option('--cpu-tier-gb <GiB>', 'KV tier in CPU memory on every instance, GiB per GPU (LMCache max_local_cpu_size; GPU evictions demote to it, hits load over the host link)', numberArg('--cpu-tier-gb', { min: 0 }))
    .option('--remote-tier-gb <GiB|inf>', "remote KV tier of every instance (its LMCache Redis), GiB per GPU: CPU evictions demote to it", numberArg('--remote-tier-gb', { min: 0, minExclusive: true, allowInfinity: true }))
    .option('--roles <PxDy>', 'P/D roles, e.g. 6P10D = 6 prefill then 10 decode instances (optionally then a mixed count: 4P4D8M); sets the instance count', rolesArg)
    .option('--profile <name|file>', 'instance profile (default h100x8-llama3-70b for Mooncake, else rtx5090x8-llama3-70b)')
    .option('--kv-capacity-tokens <n|inf>', 'KV capacity per instance in tokens (default: from the profile)', capacityArg)
    .option('--kdn-gbps <x>', 'KDN->instance link bandwidth, Gbit/s (default 10)', positive('--kdn-gbps'))
    .option('--kv-event-delay-ms <ms>', 'delay of KV events back to the engine, ms (default 500: see sim/cluster.ts DEFAULT_KV_EVENT_DELAY_MS)', numberArg('--kv-event-delay-ms', { min: 0 }))
    .option('--time-scale <x>', 'multiply arrival times by x (1000 spreads arrivals out)', positive('--time-scale'))
    .option('--cluster <file>', 'cluster file (YAML or JSON): instances, KDNs, links, strategy parameters')
    .option('--skip-bad-lines', 'skip and count malformed trace lines instead of stopping')
    .option('--limit <n>', 'only the first n requests of the trace', positiveInt('--limit'))
    .option('--noise-cv <x>', 'step-time noise coefficient of variation (default 0.02)', numberArg('--noise-cv', { min: 0 }))
    .option('--engine-profile <name|file>', "profile the engine predicts with (default: the cluster's); instances still run on the cluster's")
    .option('--engine-scale <prefill=X,decode=Y>', "multiply the engine profile's prefill-group / decode-group step terms (mismatched predictor)", factorsArg)
    .option('--calibrate', "online calibration of the engine's step model from observed first-token and completion times")
    .option('--slo <ttft=MS,tbt=MS>', `SLO of the goodput in summary.json (default ttft=${DEFAULT_SLO.ttftMs},tbt=${DEFAULT_SLO.tbtMs})`, sloArg)
    .option('--max-concurrency <n>', 'client cap on requests in flight (like vllm bench serve --max-concurrency; default none)', positiveInt('--max-concurrency'))
    .option('--router-replicas <r>', 'router replicas behind a load balancer, each with its own engine (default 1)', intArg('--router-replicas', { min: 1, max: 64 }))
    .option('--replica-sync-ms <ms|none>', "with --router-replicas: ms until a replica's bookkeeping reaches the others, or none (default 0)", replicaSyncArg)
    .addOption(new Option('--replica-pick <how>', 'with --router-replicas: how the load balancer picks a replica (default round-robin)').choices(['round-robin', 'hash']))
    .option('--blend', 'every instance supports blend (CacheBlend, LMCache recompute ratio 0.15, check layer 1)')
    .option('--blend-recompute-ratio <r>', 'CacheBlend recompute ratio of every instance, 0..1 (implies --blend)', numberArg('--blend-recompute-ratio', { min: 0, max: 1 }))
    .option('--overlap', 'every instance supports overlapped hybrid (computes the head while the tail loads)')
    .option('--reorder-documents', "the application allows reordering a request's documents: send them in the engine's canonical order (popular / already-cached sequences first)")
    .option('--quiet', 'no progress on stderr');
}

/** `--roles 6P10D`: checked here (engine/pd.ts `parseRoles`), kept as the string. */
function rolesArg(v: string): string {
  try {
    const r = parseRoles(v, '--roles');
    if (r.length > MAX_INSTANCES) throw new Error(`--roles ${v} names ${r.length} instances (at most ${MAX_INSTANCES})`);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  return v;
}

/** `--replica-sync-ms`: a delay >= 0 ms, or "none" (kept as the string: replicas never sync). */
function replicaSyncArg(v: string): number | 'none' {
  if (v.trim().toLowerCase() === 'none') return 'none';
  return numberArg('--replica-sync-ms', { min: 0 })(v);
}

/** Maps the shared flags of addCommon() to RunOptions fields. */
function inputAndCluster(o: Record<string, any>): Omit<RunOptions, 'strategy'> {
  return {
    trace: o.trace,
    workload: o.workload,
    workloadOptions: o.workloadOpt,
    instances: o.instances,
    roles: o.roles,
    cpuTierGB: o.cpuTierGb,
    remoteTierGB: o.remoteTierGb,
    profile: o.profile,
    kvCapacityTokens: o.kvCapacityTokens,
    kdnGbps: o.kdnGbps,
    kvEventDelayMs: o.kvEventDelayMs,
    timeScale: o.timeScale,
    cluster: o.cluster,
    skipBadLines: o.skipBadLines,
    limit: o.limit,
    stepNoiseCv: o.noiseCv,
    slo: o.slo,
    maxConcurrency: o.maxConcurrency,
    routerReplicas: o.routerReplicas,
    replicaSyncMs: o.replicaSyncMs === 'none' ? null : o.replicaSyncMs,
    replicaPick: o.replicaPick,
    engineProfile: o.engineProfile,
    engineScale: o.engineScale,
    calibrate: !!o.calibrate,
    reorderDocuments: o.reorderDocuments,
    blend: o.blendRecomputeRatio !== undefined ? { recomputeRatio: o.blendRecomputeRatio } : o.blend ? true : undefined,
    overlap: o.overlap ? true : undefined,
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
    `TBT ms    mean ${fmt(s.tbt_ms.mean)}  p50 ${fmt(s.tbt_ms.p50)}  p90 ${fmt(s.tbt_ms.p90)}  p99 ${fmt(s.tbt_ms.p99)}  (Mooncake: mean of each request's longest 10% token gaps)`,
    `goodput ${fmt(s.goodput, 3)} (${fmt(s.goodput_rps, 3)} req/s) within TTFT <= ${s.slo.ttft_ms} ms and TBT <= ${s.slo.tbt_ms} ms${s.rejected_admission ? `; ${s.rejected_admission} rejected by admission control` : ''}`,
    `prefix_hit_ratio ${fmt(s.prefix_hit_ratio, 4)}  kv_reuse_ratio ${fmt(s.kv_reuse_ratio, 4)}  throughput ${fmt(s.throughput_rps, 3)} req/s  load CoV ${fmt(s.load_cov, 3)}`,
    `intents ${Object.entries(s.intent_mix).map(([k, v]) => `${k}=${v}`).join(' ')}  KV bytes moved ${s.kv_bytes_moved}`,
    `simulated ${s.requests} requests in ${s.wall_ms} ms (${s.sim_requests_per_s} req/s)`,
  ];
  if (s.reordered_arrivals > 0) lines.push(`reordered ${s.reordered_arrivals} request(s) whose timestamp was earlier than a previous line's (sorted by arrival)`);
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
      .option('--strategy-opt <key=value>', "strategy parameter, repeatable (checked against the strategy's schema)", keyValueArg('--strategy-opt'))
      .option('--seed <n>', 'seed (integer >= 0)', seedArg, 1)
      .option('--out <dir>', 'run directory', outDirArg('--out'), 'runs/sim')
      .option('--json', 'print summary.json to stdout instead of the text summary'),
  ).action(async (o) => {
    checkStrategyParams(o.strategy, o.strategyOpt ?? {});
    checkInputs(o);
    const res = await runSim({
      ...inputAndCluster(o),
      strategy: o.strategy,
      strategyParams: o.strategyOpt,
      seed: o.seed,
      out: o.out,
      onProgress: progress(`sim ${o.strategy}`, !!o.quiet),
    });
    if (!o.quiet && process.stderr.isTTY) process.stderr.write('\n');
    inputWarnings(res.summary);
    if (o.json) process.stdout.write(JSON.stringify(res.summary, null, 1) + '\n');
    else process.stdout.write(summaryText(res.summary) + `\nwrote ${res.outDir}\n`);
  });

  addCommon(
    program
      .command('ab')
      .description('Run several strategies on the same schedule over K seeds; writes DIR/ab.json and prints a comparison table')
      .option('--strategies <list>', 'comma-separated strategies, first = baseline, or "all"', strategiesArg, ['round-robin', 'least-load', 'cacheroute', 'dynamo-kv', 'sglang-router', 'mooncake', 'kvlab'])
      .option('--seeds <k>', `number of seeds (1..k, at most ${MAX_SEEDS})`, intArg('--seeds', { min: 1, max: MAX_SEEDS }), 3)
      .option('--out <dir>', 'output directory', outDirArg('--out'), 'runs/ab')
      .option('--records', 'also write records.jsonl for every run')
      .option('--json', 'print ab.json to stdout instead of the table'),
  ).action(async (o) => {
    checkInputs(o);
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
        if (done === 0) inputWarnings(sum);
        done++;
        if (!o.quiet) process.stderr.write(`[${done}/${total}] ${s} seed ${seed}: TTFT mean ${fmt(sum.ttft_ms.mean)} ms, ${sum.completed}/${sum.requests} completed (${sum.wall_ms} ms)\n`);
      },
    });
    if (o.json) process.stdout.write(JSON.stringify(ab, null, 1) + '\n');
    else process.stdout.write(`${abTable(ab)}\n\nwrote ${o.out}/ab.json (${Math.round(performance.now() - t0)} ms)\n`);
  });

  addCommon(
    program
      .command('capacity')
      .description('Per strategy, the highest arrival-rate multiplier keeping SLO goodput >= target (bisection, CIs across seeds); writes DIR/capacity.json and prints a table')
      .option('--strategies <list>', 'comma-separated strategies, or "all"', strategiesArg, ['dynamo-kv', 'sglang-router', 'mooncake', 'kvlab'])
      .option('--target <x>', 'goodput to keep, 0..1', numberArg('--target', { min: 0, max: 1, minExclusive: true }), 0.9)
      .option('--seeds <k>', `number of seeds (1..k, at most ${MAX_SEEDS})`, intArg('--seeds', { min: 1, max: MAX_SEEDS }), 3)
      .option('--tol <x>', 'relative precision of the bisection', numberArg('--tol', { min: 0, minExclusive: true }), 0.02)
      .option('--admission', 'give strategies with admission control (ttftSloMs/tbtSloMs) the SLO: they reject what they predict cannot meet it')
      .option('--strategy-opt <key=value>', 'parameter for every strategy that has it, repeatable', keyValueArg('--strategy-opt'))
      .option('--out <dir>', 'output directory', outDirArg('--out'), 'runs/capacity')
      .option('--json', 'print capacity.json to stdout instead of the table'),
  ).action(async (o) => {
    checkInputs(o);
    const seeds = Array.from({ length: o.seeds }, (_, i) => i + 1);
    const t0 = performance.now();
    let evals = 0;
    const res = await runCapacity({
      ...inputAndCluster(o),
      strategies: o.strategies,
      strategyParams: o.strategyOpt,
      seeds,
      slo: o.slo ?? DEFAULT_SLO,
      target: o.target,
      tol: o.tol,
      admission: !!o.admission,
      out: o.out,
      onEval: (s, seed, m, sum) => {
        evals++;
        if (!o.quiet) process.stderr.write(`[${evals}] ${s} seed ${seed} ×${m.toFixed(3)}: goodput ${fmt(sum.goodput, 3)} (${sum.wall_ms} ms)\n`);
      },
    });
    if (o.json) process.stdout.write(JSON.stringify(res, null, 1) + '\n');
    else process.stdout.write(`${capacityTable(res)}\n\nwrote ${o.out}/capacity.json (${evals} runs, ${Math.round(performance.now() - t0)} ms)\n`);
  });

  program
    .command('strategies')
    .description('List the strategies')
    .action(() => {
      process.stdout.write(STRATEGY_NAMES.join('\n') + '\n');
    });
}
