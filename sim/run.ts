/**
 * Run orchestration: load a trace or workload, resolve the cluster, simulate one strategy
 * (`runSim`) or several strategies × seeds on the same schedule (`runAb`), and write run
 * directories (docs/FORMATS.md).
 */
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createStrategy } from '../engine/strategies/index.js';
import type { Strategy } from '../engine/engine.js';
import type { TraceRequest } from '../engine/types.js';
import { KVLAB_VERSION } from '../engine/version.js';
import { KVLAB_PARAMS_VERSION } from '../engine/strategies/kvlab-params.js';
import { meanCI95, relativeChange } from '../notebooks/stats.js';
import { loadTrace, loadWorkload, type WorkloadName } from '../traces/load.js';
import type { LoadedTrace } from '../traces/schema.js';
import { readClusterFile, resolveCluster, type ClusterOptions, type ResolvedCluster } from './cluster.js';
import { DEFAULT_SLO, observed, r3, summarize, timeseries, writeRecords, type Slo, type SummaryCore } from './metrics.js';
import { DEFAULT_LONG_CONTEXT_PROFILE, DEFAULT_PROFILE, loadProfile } from './profiles.js';
import { scaleProfile, type StepFactors } from '../engine/calibration.js';
import type { ClusterSpec, Profile } from '../engine/types.js';
import { simulate, type ReplicaOptions } from './simulator.js';

/** Where requests come from. */
export interface InputSpec {
  /** trace file (.jsonl Mooncake, .csv) or NQ directory. */
  trace?: string;
  /** built-in workload (default synthetic when no trace). */
  workload?: WorkloadName;
  workloadOptions?: Record<string, unknown>;
  timeScale?: number;
  skipBadLines?: boolean;
  limit?: number;
}

/** Options of one simulated run. */
export interface RunOptions extends InputSpec, ClusterOptions {
  strategy: string;
  strategyParams?: Record<string, unknown>;
  seed?: number;
  /** cluster file (YAML/JSON). */
  cluster?: string;
  /** overrides from sweeps: kdn_gbps, rate, ... */
  overrides?: Record<string, unknown>;
  /** router replicas behind a load balancer (default 1: one router). */
  routerReplicas?: number;
  /** ms until a replica's bookkeeping reaches the others; null = no sync (default 0 when replicas > 1). */
  replicaSyncMs?: number | null;
  /** how the load balancer picks a replica (default round-robin). */
  replicaPick?: 'round-robin' | 'hash';
  /** run directory to write; nothing written when absent. */
  out?: string;
  /** write records.jsonl (default true). */
  records?: boolean;
  /** step-time noise CV (default from cluster file, else 0.02). */
  stepNoiseCv?: number;
  /** SLO of `goodput` in summary.json (default DEFAULT_SLO: TTFT 10 s, TBT 300 ms). */
  slo?: Slo;
  /** client cap on requests in flight (default from the cluster file `sim.maxConcurrency`, else none). */
  maxConcurrency?: number;
  /** the engine predicts with this profile (name or file; default: the cluster's own). */
  engineProfile?: string;
  /** multiplies the engine profile's prefill-group and decode-group step terms (mismatch experiments). */
  engineScale?: StepFactors;
  /** online calibration of the engine's step model (engine/calibration.ts). */
  calibrate?: boolean;
  /**
   * Reorder each request's documents into the engine's canonical order (engine/doc-order.ts);
   * also `overrides.reorder_documents` (sweeps). Default false.
   */
  reorderDocuments?: boolean;
  onProgress?: (done: number, total: number) => void;
}

/** Full summary.json content. */
export interface Summary extends SummaryCore {
  kvlab_version: string;
  source: 'sim';
  strategy: string;
  seed: number;
  trace: string;
  instances: number;
  profile: string;
  ttft_quantiles_ms: number[];
  wall_ms: number;
  sim_requests_per_s: number;
  /** the engine's calibrated step factors at the end of the run (1, 1 without calibration). */
  engine_step_factors: StepFactors;
  /** version of kvlab's tuned parameters (engine/strategies/kvlab-params.ts). */
  kvlab_params_version: string;
  /** peak resident set size of the process so far, MiB. */
  peak_rss_mib: number;
  /** router replicas, their sync delay (ms, null = none) and op-log entries exchanged: only when more than one. */
  router_replicas?: number;
  replica_sync_ms?: number | null;
  replica_ops?: number;
  /** malformed trace lines skipped (--skip-bad-lines) and the first reasons. */
  skipped_lines: number;
  skipped_reasons: string[];
  /** requests whose arrival was earlier than a previous line's (the loader sorted them). */
  reordered_arrivals: number;
}

/**
 * Loads the requests of an input spec. Synthetic/NQ workloads take `seed` unless their options
 * set one. Returns the loaded trace (sorted by arrival).
 */
export async function loadInput(spec: InputSpec, seed = 1): Promise<LoadedTrace> {
  const lo = { timeScale: spec.timeScale, skipBadLines: spec.skipBadLines, limit: spec.limit };
  if (spec.trace) return loadTrace(spec.trace, lo);
  const name = spec.workload ?? 'synthetic';
  return loadWorkload(name, { seed, ...(spec.workloadOptions ?? {}), ...(spec.timeScale !== undefined ? { timeScale: spec.timeScale } : {}) } as never);
}

/** Default profile and instance count for a loaded trace: Mooncake → 16 × H100, else 4 × RTX 5090. */
export function defaultsFor(t: LoadedTrace): { profile: string; instances: number } {
  return t.meta.format === 'mooncake' ? { profile: DEFAULT_LONG_CONTEXT_PROFILE, instances: 16 } : { profile: DEFAULT_PROFILE, instances: 4 };
}

/** Resolves the cluster of a run (file + CLI options + trace-dependent defaults). */
export function clusterFor(t: LoadedTrace, opts: RunOptions): ResolvedCluster {
  const file = opts.cluster ? readClusterFile(opts.cluster) : null;
  const def = defaultsFor(t);
  const o: ClusterOptions = {
    profile: opts.profile,
    instances: opts.instances ?? (file?.instances === undefined && opts.roles === undefined && file?.roles === undefined ? def.instances : undefined),
    roles: opts.roles,
    cpuTierGB: opts.cpuTierGB,
    remoteTierGB: opts.remoteTierGB,
    kvCapacityTokens: opts.kvCapacityTokens,
    kdnGbps: opts.kdnGbps ?? (typeof opts.overrides?.kdn_gbps === 'number' ? (opts.overrides.kdn_gbps as number) : undefined),
    kvEventDelayMs: opts.kvEventDelayMs,
    blend: opts.blend,
    overlap: opts.overlap,
  };
  // sweeps: blend=0|1, blend_recompute_ratio=r, overlap=0|1
  const ov = opts.overrides ?? {};
  const flag = (v: unknown): boolean | undefined => (v === undefined ? undefined : v === true || v === 1 || v === '1' || v === 'true');
  if (ov.blend !== undefined) o.blend = flag(ov.blend);
  if (typeof ov.blend_recompute_ratio === 'number') o.blend = { recomputeRatio: ov.blend_recompute_ratio };
  if (ov.overlap !== undefined) o.overlap = flag(ov.overlap);
  return resolveCluster(file, o, def.profile);
}

/** Result of one run. */
export interface RunResult {
  summary: Summary;
  outDir?: string;
}

/**
 * Simulates one strategy on already-loaded requests and writes the run directory if `out`.
 * @throws Error for an unknown strategy / bad parameters / cluster errors.
 */
export function runLoaded(t: LoadedTrace, opts: RunOptions, rc: ResolvedCluster = clusterFor(t, opts)): RunResult {
  const seed = opts.seed ?? 1;
  const params = { ...(rc.strategyParams[opts.strategy] ?? {}), ...(opts.strategyParams ?? {}) };
  const strategy = createStrategy(opts.strategy, params);
  const noise = opts.stepNoiseCv ?? rc.stepNoiseCv;
  const replicas = replicaOptions(opts, () => createStrategy(opts.strategy, params));
  const t0 = performance.now();
  const maxConcurrency = opts.maxConcurrency ?? rc.maxConcurrency;
  const engineCluster = engineClusterFor(rc.spec, opts.engineProfile, opts.engineScale);
  const reorder = opts.reorderDocuments ?? (opts.overrides?.reorder_documents === true || opts.overrides?.reorder_documents === 1);
  const o = simulate(t.requests, { cluster: rc.spec, engineCluster, calibrate: opts.calibrate, strategy, seed, stepNoiseCv: noise, onProgress: opts.onProgress, maxConcurrency, reorderDocuments: reorder, ...(replicas ? { replicas } : {}) });
  const obs = observed(o);
  const core = summarize(o, obs, opts.slo ?? DEFAULT_SLO);
  const kdnIds = rc.spec.kdns.map((k) => k.id);
  const ttfts: number[] = [];
  for (let i = 0; i < obs.ttft.length; i++) if (obs.ttft[i]! >= 0) ttfts.push(obs.ttft[i]!);
  ttfts.sort((a, b) => a - b);
  const quant = ttfts.length ? Array.from({ length: 101 }, (_, k) => r3(ttfts[Math.min(ttfts.length - 1, Math.round((k / 100) * (ttfts.length - 1)))]!)) : [];
  let outDir: string | undefined;
  if (opts.out) {
    outDir = resolve(opts.out);
    mkdirSync(outDir, { recursive: true });
    if (opts.records !== false) {
      const fd = openSync(join(outDir, 'records.jsonl'), 'w');
      try {
        writeRecords(o, obs, kdnIds, (chunk) => writeSync(fd, chunk));
      } finally {
        closeSync(fd);
      }
    }
  }
  const wall = performance.now() - t0;
  const summary: Summary = {
    kvlab_version: KVLAB_VERSION,
    source: 'sim',
    strategy: opts.strategy,
    seed,
    trace: t.meta.file ?? t.meta.name,
    instances: rc.spec.instances.length,
    profile: rc.spec.instances[0]!.profile.name,
    ...core,
    ttft_quantiles_ms: quant,
    engine_step_factors: { prefill: r3(o.stepFactors.prefill), decode: r3(o.stepFactors.decode) },
    kvlab_params_version: KVLAB_PARAMS_VERSION,
    wall_ms: Math.round(wall),
    sim_requests_per_s: wall > 0 ? Math.round((t.requests.length / wall) * 1000) : 0,
    peak_rss_mib: Math.round(process.resourceUsage().maxRSS / 1024),
    skipped_lines: t.meta.skipped ?? 0,
    skipped_reasons: t.meta.skippedReasons ?? [],
    reordered_arrivals: t.meta.reordered ?? 0,
  };
  if (o.replicas) {
    summary.router_replicas = o.replicas.count;
    summary.replica_sync_ms = o.replicas.syncMs;
    summary.replica_ops = o.replicas.ops;
  }
  if (outDir) {
    writeFileSync(join(outDir, 'summary.json'), JSON.stringify(summary, null, 1) + '\n');
    writeFileSync(join(outDir, 'timeseries.json'), JSON.stringify(timeseries(o, kdnIds)) + '\n');
    writeFileSync(join(outDir, 'config.json'), JSON.stringify(configJson(t, opts, rc, params, seed, noise, reorder), null, 1) + '\n');
  }
  return { summary, outDir };
}

/**
 * The engine's model of the cluster: the same instances, KDNs and links with the engine's
 * profile (`engineProfile`, default each instance's own) scaled by `scale`; undefined when it
 * equals the cluster (no profile, no scale).
 * @throws Error for an unknown profile or a non-positive scale
 */
export function engineClusterFor(spec: ClusterSpec, engineProfile?: string, scale?: StepFactors): ClusterSpec | undefined {
  if (engineProfile === undefined && scale === undefined) return undefined;
  if (scale && !(scale.prefill > 0 && scale.decode > 0 && Number.isFinite(scale.prefill) && Number.isFinite(scale.decode))) throw new Error(`engine scale must be positive (got prefill=${scale.prefill}, decode=${scale.decode})`);
  const base = engineProfile !== undefined ? loadProfile(engineProfile) : null;
  const cache = new Map<Profile, Profile>();
  return {
    ...spec,
    instances: spec.instances.map((s) => {
      const p0 = base ?? s.profile;
      let p = cache.get(p0);
      if (!p) {
        p = scale ? scaleProfile(p0, scale) : p0;
        cache.set(p0, p);
      }
      return { ...s, profile: p };
    }),
  };
}

function configJson(t: LoadedTrace, opts: RunOptions, rc: ResolvedCluster, params: Record<string, unknown>, seed: number, noise: number, reorder: boolean): Record<string, unknown> {
  return {
    kvlab_version: KVLAB_VERSION,
    trace: t.meta,
    input: { trace: opts.trace ?? null, workload: opts.trace ? null : (opts.workload ?? 'synthetic'), workload_options: opts.workloadOptions ?? {}, time_scale: opts.timeScale ?? 1 },
    strategy: opts.strategy,
    strategy_params: params,
    seed,
    sim: { step_noise_cv: noise, max_concurrency: opts.maxConcurrency ?? rc.maxConcurrency ?? null, reorder_documents: reorder, ...((opts.routerReplicas ?? 1) > 1 ? { router_replicas: opts.routerReplicas, replica_sync_ms: opts.replicaSyncMs ?? 0, replica_pick: opts.replicaPick ?? 'round-robin' } : {}) },
    engine: {
      profile: opts.engineProfile ?? null,
      scale: opts.engineScale ?? null,
      calibrate: !!opts.calibrate,
    },
    cluster: {
      instances: rc.spec.instances.map((s) => ({
        id: s.id,
        profile: s.profile.name,
        ...(s.role ? { role: s.role } : {}),
        ...(s.tiers ? { tiers: { ...s.tiers, remoteTokens: Number.isFinite(s.tiers.remoteTokens) ? s.tiers.remoteTokens : 'inf' } } : {}),
        engine: { ...s.engine, kvCapacityTokens: Number.isFinite(s.engine.kvCapacityTokens) ? s.engine.kvCapacityTokens : 'inf' },
        capabilities: { blend: s.blend ?? false, overlap: s.overlap ?? false },
      })),
      kdns: rc.spec.kdns.map((k) => ({ id: k.id, compression: k.compression, text_fetch_ms: k.textFetchMs, knowledge: k.knowledge ? [...k.knowledge] : 'all', sequences: k.sequences ?? false })),
      links: rc.spec.links,
      peer_link: rc.spec.peerLink ?? null,
      ...(rc.spec.pd ? { pd: rc.spec.pd } : {}),
      kv_event_delay_ms: rc.spec.kvEventDelayMs,
      chunk_tokens: rc.spec.chunkTokens,
    },
  };
}

/**
 * The simulator's replica options for a run, or undefined for one router.
 * @throws Error naming the option: replicas not an integer in 1..64, a negative sync delay.
 */
export function replicaOptions(opts: Pick<RunOptions, 'routerReplicas' | 'replicaSyncMs' | 'replicaPick'>, makeStrategy: () => Strategy): ReplicaOptions | undefined {
  const R = opts.routerReplicas ?? 1;
  if (!Number.isInteger(R) || R < 1 || R > 64) throw new Error(`router replicas must be an integer in 1..64, got ${R}`);
  const syncMs = opts.replicaSyncMs === undefined ? 0 : opts.replicaSyncMs;
  if (syncMs !== null && !(Number.isFinite(syncMs) && syncMs >= 0)) throw new Error(`replica sync delay must be >= 0 ms or none, got ${syncMs}`);
  if (R === 1) return undefined;
  return { strategies: Array.from({ length: R - 1 }, makeStrategy), syncMs, pick: opts.replicaPick ?? 'round-robin' };
}

/**
 * One-call API (used by `kvlab sweep` and notebooks): load, simulate, write.
 */
export async function runSim(opts: RunOptions): Promise<RunResult> {
  const t = await loadInput(opts, opts.seed ?? 1);
  return runLoaded(t, opts);
}

/** Options of an A/B comparison. */
export interface AbOptions extends Omit<RunOptions, 'strategy' | 'seed' | 'out'> {
  strategies: string[];
  /** number of seeds (1..K) or explicit list. */
  seeds: number[];
  out: string;
  onRun?: (strategy: string, seed: number, s: Summary) => void;
}

/** ab.json metric with mean, 95% CI and per-seed values. */
export interface AbMetric {
  mean: number | null;
  ci95: [number | null, number | null];
  values: (number | null)[];
}

const LAT = ['mean', 'p50', 'p90', 'p99'] as const;
const FAMILIES = ['ttft_ms', 'tpot_ms', 'e2e_ms', 'tbt_ms'] as const;

/**
 * Runs every strategy on the same schedule for every seed and writes DIR/ab.json plus one run
 * directory per (strategy, seed) (records.jsonl only when `records` is true).
 * For trace inputs the schedule is the same for every seed; for generated workloads the seed
 * also generates the workload (the same one for every strategy).
 */
export async function runAb(opts: AbOptions): Promise<Record<string, unknown>> {
  if (opts.strategies.length === 0) throw new Error('ab: --strategies is empty');
  const outDir = resolve(opts.out);
  mkdirSync(outDir, { recursive: true });
  const perSeed = new Map<number, LoadedTrace>();
  const summaries = new Map<string, Map<number, Summary>>();
  let traceName = '';
  let instances = 0;
  for (const seed of opts.seeds) {
    let t = perSeed.get(seed);
    if (!t) {
      t = opts.trace && perSeed.size ? perSeed.values().next().value! : await loadInput(opts, seed);
      perSeed.set(seed, t);
    }
    traceName = t.meta.file ?? t.meta.name;
    const rc = clusterFor(t, { ...opts, strategy: opts.strategies[0]! });
    instances = rc.spec.instances.length;
    for (const s of opts.strategies) {
      const res = runLoaded(t, { ...opts, strategy: s, seed, out: join(outDir, s, `seed-${seed}`), records: opts.records ?? false }, rc);
      if (!summaries.has(s)) summaries.set(s, new Map());
      summaries.get(s)!.set(seed, res.summary);
      opts.onRun?.(s, seed, res.summary);
    }
  }
  const base = opts.strategies[0]!;
  const strategies: Record<string, unknown> = {};
  const metricMap = (s: string, get: (x: Summary) => number | null) => {
    const m = new Map<number, number>();
    for (const [seed, sum] of summaries.get(s)!) {
      const v = get(sum);
      if (v !== null && Number.isFinite(v)) m.set(seed, v);
    }
    return m;
  };
  const metric = (s: string, get: (x: Summary) => number | null): AbMetric => {
    const vals = opts.seeds.map((seed) => get(summaries.get(s)!.get(seed)!));
    const ci = meanCI95(vals.filter((v): v is number => v !== null));
    return { mean: nz(ci.mean), ci95: [nz(ci.lo), nz(ci.hi)], values: vals.map((v) => (v === null ? null : r3(v))) };
  };
  for (const s of opts.strategies) {
    const e: Record<string, unknown> = { runs: opts.seeds.map((seed) => join(outDir, s, `seed-${seed}`)) };
    const vs: Record<string, unknown> = {};
    for (const f of FAMILIES) {
      const fam: Record<string, AbMetric> = {};
      for (const st of LAT) {
        const get = (x: Summary) => x[f][st];
        fam[st] = metric(s, get);
        if (s !== base) {
          const rc = relativeChange(metricMap(s, get), metricMap(base, get));
          if (rc) vs[`${f}.${st}`] = { change: r3(rc.change * 1000) / 1000, ci95: [r3(rc.lo * 1000) / 1000, r3(rc.hi * 1000) / 1000], significant: rc.significant };
        }
      }
      e[f] = fam;
    }
    for (const k of ['throughput_rps', 'goodput', 'goodput_rps', 'prefix_hit_ratio', 'kv_reuse_ratio', 'load_cov'] as const) {
      const get = (x: Summary) => x[k];
      e[k] = metric(s, get);
      if (s !== base) {
        const rc = relativeChange(metricMap(s, get), metricMap(base, get));
        if (rc) vs[k] = { change: r3(rc.change * 1000) / 1000, ci95: [r3(rc.lo * 1000) / 1000, r3(rc.hi * 1000) / 1000], significant: rc.significant };
      }
    }
    e.intent_mix = summaries.get(s)!.get(opts.seeds[0]!)!.intent_mix;
    e.completed = metric(s, (x) => x.completed);
    e.rejected = metric(s, (x) => x.rejected);
    e.vs_baseline = vs;
    strategies[s] = e;
  }
  const ab = { kvlab_version: KVLAB_VERSION, trace: traceName, seeds: opts.seeds, baseline: base, instances, strategies };
  writeFileSync(join(outDir, 'ab.json'), JSON.stringify(ab, null, 1) + '\n');
  return ab;
}

function nz(x: number): number | null {
  return Number.isFinite(x) ? r3(x) : null;
}

/** Requests of a loaded trace (helper for tests). */
export function requestsOf(t: LoadedTrace): TraceRequest[] {
  return t.requests;
}
