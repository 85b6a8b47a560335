/**
 * `kvlab import FILE --out DIR`: turns a real serving benchmark into an observed run that
 * `kvlab sim` can replay and `kvlab diff` can compare (docs/FORMATS.md "Imported runs").
 *
 * Inputs (traces/observed.ts): `vllm bench serve --save-result [--save-detailed]` JSON
 * (traces/vllm-bench.ts) and LLMServingSim's per-request JSONL runs (traces/llmservingsim.ts).
 *
 * DIR gets:
 * - records.jsonl, summary.json, config.json — the observed run (records carry `observed` only;
 *   config.json has `kind: "observed"`, the arrival kind and everything the source stated);
 * - trace.jsonl (exact arrivals) or trace-seed-K.jsonl for K = 1..seeds (only the arrival process
 *   is known: vLLM's gamma process, traces/arrivals.ts) — Mooncake JSONL with the source's request
 *   ids and lengths, unique block ids (no prefix sharing is known);
 * - profile.json — the instance profile with the run's engine settings (max_num_seqs,
 *   max_num_batched_tokens, max_model_len, KV capacity, block size) and the entry point's API
 *   overhead; cluster.yaml — instances (one per data-parallel rank), that profile, no step noise,
 *   the client's max concurrency.
 * Profile choice: --profile, else a shipped measured profile of the same model, GPU and TP, else
 * `profile derive` for the run's GPU and model (both must be known: from the file or --gpu/--model).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { EngineSettings, Profile } from '../engine/types.js';
import { KVLAB_VERSION } from '../engine/version.js';
import { vllmBenchArrivalsMs } from '../traces/arrivals.js';
import { isLlmServingSimRecord, readLlmServingSimRun } from '../traces/llmservingsim.js';
import { ImportError, type ObservedDist, type ObservedRequest, type ObservedRun } from '../traces/observed.js';
import { readVllmBenchResult } from '../traces/vllm-bench.js';
import { dist, r3 } from './metrics.js';
import { loadProfile, parseProfile, repoRoot } from './profiles.js';
import { deriveProfileFromSpecs, vllmBatchDefaults, type EntryPoint } from './profile/derive.js';
import { kvCapacityFromMemory } from './profile/memory.js';
import { loadRoofline } from './profile/roofline.js';
import { findGpu, findModel, loadGpu, loadModel, normModel, shapeKey, type GpuSpec, type ModelShape } from './profile/specs.js';
import { intArg, outDirArg } from '../bin/options.js';

/** Which reader a path needs. */
export function detectImportFormat(path: string): ObservedRun['format'] {
  if (!existsSync(path)) throw new ImportError(`${path}: not found`);
  if (statSync(path).isDirectory()) {
    if (existsSync(join(path, 'requests.jsonl'))) return 'llmservingsim';
    throw new ImportError(`${path}: a directory without requests.jsonl (expected an LLMServingSim run)`);
  }
  if (path.endsWith('.jsonl')) {
    const first = readFileSync(path, 'utf8').split('\n').find((l) => l.trim());
    let o: unknown = null;
    try {
      o = first ? JSON.parse(first) : null;
    } catch {
      throw new ImportError(`${path}:1: not valid JSON`);
    }
    if (isLlmServingSimRecord(o)) return 'llmservingsim';
    throw new ImportError(`${path}:1: not an LLMServingSim request line (needs request_id, input_toks, output_toks, queued_ts, first_token_ts)`);
  }
  return 'vllm-bench';
}

/** Reads any supported benchmark file. */
export function readObservedRun(path: string): ObservedRun {
  return detectImportFormat(path) === 'llmservingsim' ? readLlmServingSimRun(path) : readVllmBenchResult(path);
}

/** Options of importRun. */
export interface ImportOptions {
  out: string;
  /** profile name or file; default: matched or derived. */
  profile?: string;
  /** GPU (name or spec .json) when the file does not state it, or to override it. */
  gpu?: string;
  /** model (name, HF id or config.json) when the file does not state it, or to override it. */
  model?: string;
  /** GPUs per instance (tensor parallel) override. */
  tp?: number;
  /** seeds of the arrival process when only the process is known (default 5). */
  seeds?: number;
  /** engine overrides (flags win over the file). */
  engine?: Partial<Pick<EngineSettings, 'maxNumSeqs' | 'maxNumBatchedTokens' | 'maxModelLen' | 'kvCapacityTokens' | 'blockSizeTokens'>>;
  /** fixed lengths for an aggregates-only file (default: the file's means). */
  inputLen?: number;
  outputLen?: number;
}

/** What importRun wrote. */
export interface ImportResult {
  outDir: string;
  run: ObservedRun;
  profile: Profile;
  /** how the profile was chosen. */
  profileChoice: string;
  traces: string[];
  instances: number;
  strategy: string;
  maxConcurrency: number | null;
  /** the commands that replay and compare it. */
  commands: string[];
  warnings: string[];
}

/** Requests to replay: the source's completed requests, or fixed-length ones rebuilt from totals. */
function replayRequests(run: ObservedRun, opts: ImportOptions, warnings: string[]): ObservedRequest[] {
  if (run.requests.length) {
    const failed = run.requests.filter((r) => !r.ok).length;
    if (failed) warnings.push(`${failed} failed request(s) of the source are left out of the trace and the comparison`);
    return run.requests.filter((r) => r.ok);
  }
  const t = run.totals!;
  const inLen = opts.inputLen ?? Math.max(1, Math.round(t.inputTokens / t.completed));
  const outLen = opts.outputLen ?? Math.max(1, Math.round(t.outputTokens / t.completed));
  warnings.push(`aggregates only: ${t.completed} requests of fixed length ${inLen} in / ${outLen} out (the file's means; --input-len/--output-len override)`);
  return Array.from({ length: t.completed }, (_, i) => ({
    id: `r${i}`,
    arrivalMs: run.requestRate === Infinity ? 0 : null,
    inputTokens: inLen,
    outputTokens: outLen,
    ok: true,
    error: null,
    ttftMs: null,
    tpotMs: null,
    e2eMs: null,
    queueMs: null,
    where: `${run.files[0]}: request ${i}`,
  }));
}

/** Mooncake JSONL of requests at `arrivals` (ms), unique block ids per request. */
function traceJsonl(reqs: readonly ObservedRequest[], arrivals: readonly number[]): string {
  return (
    reqs
      .map((r, i) => {
        const n = Math.ceil(r.inputTokens / 512);
        const base = (i + 1) * 100_000;
        const ids = Array.from({ length: n }, (_, j) => base + j);
        return JSON.stringify({ id: r.id, timestamp: r3(arrivals[i]!), input_length: r.inputTokens, output_length: r.outputTokens, hash_ids: ids });
      })
      .join('\n') + '\n'
  );
}

/** The parallel layout of the run: instances (DP ranks), TP per instance, EP for MoE. */
function layout(run: ObservedRun, opts: ImportOptions, model: ModelShape | null): { instances: number; tp: number; ep: number; dp: number } {
  const tp = opts.tp ?? run.engine.tensorParallel ?? run.gpus ?? 1;
  const dp = run.engine.dataParallel ?? 1;
  // MoE with expert parallelism across the DP ranks: the ranks step in lockstep = one instance
  if (model?.moe && run.engine.expertParallel && dp > 1) return { instances: 1, tp, ep: dp * tp, dp };
  return { instances: dp, tp, ep: 1, dp: 1 };
}

function sameGpu(p: Profile, gpu: GpuSpec): boolean {
  const g = findGpu(p.hardware.gpu);
  return g !== null && g.id === gpu.id;
}

/**
 * Chooses the profile (see the module docstring) and applies the run's engine settings and entry
 * point. @throws ImportError when neither a profile nor (GPU, model) is known.
 */
export function importProfile(run: ObservedRun, opts: ImportOptions, warnings: string[]): { profile: Profile; choice: string; instances: number } {
  const modelName = opts.model ?? run.model;
  const model = modelName ? (opts.model?.endsWith('.json') ? loadModel(opts.model) : findModel(modelName)) : null;
  const gpuName = opts.gpu ?? run.gpu;
  const gpu = gpuName ? (opts.gpu?.endsWith('.json') ? loadGpu(opts.gpu) : findGpu(gpuName)) : null;
  const lay = layout(run, opts, model);
  const entry: EntryPoint = run.entry === 'engine' ? 'engine' : 'openai-server';
  let base: Profile;
  let choice: string;
  if (opts.profile) {
    base = loadProfile(opts.profile);
    choice = `--profile ${opts.profile}`;
  } else {
    if (!gpu) throw new ImportError(`${run.files[0]}: the run ${gpuName ? `names GPU "${gpuName}", which kvlab does not know` : 'does not name its GPU'}: pass --gpu NAME (kvlab profile derive --help lists them) or --profile`);
    if (!model) throw new ImportError(`${run.files[0]}: ${modelName ? `model "${modelName}" is not shipped` : 'the run does not name its model'}: pass --model NAME|config.json or --profile`);
    const key = shapeKey(model);
    const shipped = listShippedProfiles().find((p) => {
      if (p.derived || !sameGpu(p, gpu) || p.hardware.gpus !== lay.tp) return false;
      const pm = findModel(p.model.name);
      return pm !== null ? shapeKey(pm) === key : normModel(p.model.name) === normModel(model.name);
    });
    if (shipped) {
      base = shipped;
      choice = `measured profile ${shipped.name} (same model shapes, GPU and TP)`;
    } else {
      base = deriveProfileFromSpecs({ gpu, model, tp: lay.tp, ep: lay.ep, dp: lay.dp, entry, engine: { maxModelLen: run.engine.maxModelLen ?? undefined } });
      choice = `derived: kvlab profile derive --gpu ${gpu.id} --model ${model.hfId ?? model.name} --tp ${lay.tp}${lay.ep > 1 ? ` --ep ${lay.ep}` : ''}${lay.dp > 1 ? ` --dp ${lay.dp}` : ''}`;
    }
  }
  // engine settings: flags > the run's statement > (when the GPU is known) vLLM's defaults for it > the profile's
  const e = run.engine;
  const def = gpu ? vllmBatchDefaults(gpu, entry) : null;
  const engine: EngineSettings = { ...base.engine };
  const pick = <K extends keyof EngineSettings>(k: K, fromRun: EngineSettings[K] | null, fromDefault: EngineSettings[K] | undefined): void => {
    const v = opts.engine?.[k as keyof NonNullable<ImportOptions['engine']>] as EngineSettings[K] | undefined;
    if (v !== undefined) engine[k] = v;
    else if (fromRun !== null && fromRun !== undefined) engine[k] = fromRun;
    else if (fromDefault !== undefined && !opts.profile) engine[k] = fromDefault;
  };
  // a lockstep DP group (one instance for dp ranks): per-rank settings × dp, chunks within one rank's budget
  const g = lay.dp;
  const times = (x: number | null | undefined): number | undefined => (x === null || x === undefined ? undefined : x * g);
  pick('maxNumSeqs', times(e.maxNumSeqs) ?? null, times(def?.maxNumSeqs));
  pick('maxNumBatchedTokens', times(e.maxNumBatchedTokens) ?? null, times(def?.maxNumBatchedTokens));
  if (g > 1) engine.longPrefillTokenThreshold = engine.maxNumBatchedTokens / g;
  pick('maxModelLen', e.maxModelLen, model?.maxPositionEmbeddings);
  pick('blockSizeTokens', e.blockSize, undefined);
  if (opts.engine?.kvCapacityTokens !== undefined) engine.kvCapacityTokens = opts.engine.kvCapacityTokens;
  else if (e.kvCapacityTokens !== null) engine.kvCapacityTokens = e.kvCapacityTokens * g;
  else if (gpu && model) {
    // re-derive from memory with the run's batch settings and utilisation
    const cap = kvCapacityFromMemory(model, gpu, { tp: lay.tp, ep: lay.ep }, { maxNumBatchedTokens: engine.maxNumBatchedTokens / g, maxNumSeqs: engine.maxNumSeqs / g, blockSizeTokens: engine.blockSizeTokens }, e.gpuMemoryUtilization ?? 0.9);
    if (cap.tokens > 0) engine.kvCapacityTokens = cap.tokens * g;
  }
  if (e.enablePrefixCaching === false) warnings.push('the run disabled prefix caching; the imported trace has no shared prefixes, so the replay has no hits either');
  if (engine.asyncScheduling === undefined) engine.asyncScheduling = true;
  const c = loadRoofline();
  const api = c.api[entry];
  const profile: Profile = {
    ...base,
    name: `${base.name}@import`,
    description: `${base.description} | kvlab import: engine settings of ${basename(run.files[0]!)}; ${entry === 'engine' ? 'in-process engine (engine-side timestamps): no API overhead' : 'OpenAI server: client-side TTFT'}.`,
    engine,
    step: entry === 'engine' ? { ...base.step, apiMs: api.apiMs, frontendMsPerRequest: api.frontendMsPerRequest } : base.step,
  };
  return { profile: parseProfile(profile, 'imported profile'), choice, instances: lay.instances };
}

/** The shipped profiles (engine/profiles/*.json), parsed. */
export function listShippedProfiles(): Profile[] {
  const dir = join(repoRoot(), 'engine', 'profiles');
  return readdirJson(dir).map((f) => loadProfile(join(dir, f)));
}

function readdirJson(dir: string): string[] {
  // top-level profile files only (gpus/, models/, roofline/ hold specs and coefficients)
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort();
}

function obsDist(d: ObservedDist | null | undefined): Record<string, number | null> | null {
  if (!d) return null;
  return { mean: d.mean, p50: d.p50, p90: d.p90, p99: d.p99, n: d.n };
}

/**
 * Imports a benchmark file into `opts.out` (see the module docstring).
 * @throws ImportError naming the file and line/field for malformed input.
 */
export function importRun(path: string, opts: ImportOptions): ImportResult {
  const run = readObservedRun(path);
  const warnings: string[] = [];
  const { profile, choice, instances } = importProfile(run, opts, warnings);
  const reqs = replayRequests(run, opts, warnings);
  const outDir = resolve(opts.out);
  mkdirSync(outDir, { recursive: true });
  // observed records
  const lines: string[] = [];
  for (const r of run.requests) {
    const o = r.ok
      ? {
          prepare_ms: 0,
          link_wait_ms: 0,
          transfer_ms: 0,
          kv_load_ms: null,
          queue_ms: r.queueMs,
          prefill_ms: r.queueMs !== null && r.ttftMs !== null ? r.ttftMs - r.queueMs : null,
          ttft_ms: r.ttftMs,
          tpot_ms: r.tpotMs,
          e2e_ms: r.e2eMs,
          cached_tokens: null,
          preemptions: null,
          first_token_at_ms: r.arrivalMs !== null && r.ttftMs !== null ? r.arrivalMs + r.ttftMs : null,
          done_at_ms: r.arrivalMs !== null && r.e2eMs !== null ? r.arrivalMs + r.e2eMs : null,
        }
      : null;
    const rec = {
      id: r.id,
      arrival_ms: r.arrivalMs,
      status: r.ok ? 'ok' : 'failed',
      error: r.error,
      input_tokens: r.inputTokens,
      output_tokens: r.outputTokens,
      knowledge_tokens: 0,
      instance: null,
      kdn: null,
      intent: 'none',
      decision: null,
      predicted: null,
      observed: o,
      source: 'live',
    };
    lines.push(JSON.stringify(rec, (_k, v) => (typeof v === 'number' ? r3(v) : v)));
  }
  writeFileSync(join(outDir, 'records.jsonl'), lines.join('\n') + (lines.length ? '\n' : ''));
  // traces
  const exact = run.arrivals === 'exact';
  const traces: string[] = [];
  const seeds = exact ? [] : Array.from({ length: opts.seeds ?? 5 }, (_, i) => i + 1);
  if (exact) {
    // trace lines in arrival order (engine queue times need not follow the source's line order)
    const sorted = [...reqs].sort((a, b) => (a.arrivalMs ?? 0) - (b.arrivalMs ?? 0));
    writeFileSync(join(outDir, 'trace.jsonl'), traceJsonl(sorted, sorted.map((r) => r.arrivalMs ?? 0)));
    traces.push('trace.jsonl');
  } else {
    for (const s of seeds) {
      const arr = vllmBenchArrivalsMs(reqs.length, run.requestRate!, run.burstiness, s);
      writeFileSync(join(outDir, `trace-seed-${s}.jsonl`), traceJsonl(reqs, arr));
      traces.push(`trace-seed-${s}.jsonl`);
    }
  }
  // client concurrency: applied by the simulator unless the send times are the source's own
  const maxConcurrency = run.maxConcurrency !== null && !(run.format === 'vllm-bench' && run.extra.per_request_start_times) ? run.maxConcurrency : null;
  writeFileSync(join(outDir, 'profile.json'), JSON.stringify(profile, null, 2) + '\n');
  const strategy = instances > 1 ? 'least-inflight' : 'round-robin';
  const cluster = [
    `# written by kvlab import from ${run.files[0]}`,
    `profile: profile.json`,
    `instances: ${instances}`,
    `sim:`,
    `  stepNoiseCv: 0`,
    ...(maxConcurrency !== null ? [`  maxConcurrency: ${maxConcurrency}`] : []),
    '',
  ].join('\n');
  writeFileSync(join(outDir, 'cluster.yaml'), cluster);
  // summary
  const ok = run.requests.filter((r) => r.ok);
  const pickNum = (f: (r: ObservedRequest) => number | null) => ok.map(f).filter((x): x is number => x !== null);
  const src = run.aggregates;
  const perReq = ok.length > 0;
  const summary: Record<string, unknown> = {
    kvlab_version: KVLAB_VERSION,
    source: 'live',
    imported_from: run.files[0],
    format: run.format,
    requests: run.numRequests,
    completed: perReq ? ok.length : (run.totals?.completed ?? 0),
    rejected: 0,
    failed: perReq ? run.requests.length - ok.length : (run.totals?.failed ?? 0),
    ttft_ms: perReq ? dist(pickNum((r) => r.ttftMs)) : obsDist(src?.ttft),
    tpot_ms: perReq ? dist(pickNum((r) => r.tpotMs)) : obsDist(src?.tpot),
    e2e_ms: perReq ? dist(pickNum((r) => r.e2eMs)) : obsDist(src?.e2e),
    source_aggregates: src ? { ttft_ms: obsDist(src.ttft), tpot_ms: obsDist(src.tpot), e2e_ms: obsDist(src.e2e), itl_ms: obsDist(src.itl) } : null,
  };
  writeFileSync(join(outDir, 'summary.json'), JSON.stringify(summary, null, 1) + '\n');
  const outRel = opts.out;
  const commands = exact
    ? [`kvlab sim --trace ${outRel}/trace.jsonl --cluster ${outRel}/cluster.yaml --strategy ${strategy} --out ${outRel}/sim`, `kvlab diff ${outRel} ${outRel}/sim`]
    : [
        `for s in ${seeds.join(' ')}; do kvlab sim --trace ${outRel}/trace-seed-$s.jsonl --cluster ${outRel}/cluster.yaml --strategy ${strategy} --seed $s --out ${outRel}/sim-$s --quiet; done`,
        `kvlab diff ${outRel} ${seeds.map((s) => `${outRel}/sim-${s}`).join(' ')}`,
      ];
  const config = {
    kvlab_version: KVLAB_VERSION,
    kind: 'observed',
    format: run.format,
    files: run.files,
    model: run.model,
    gpu: run.gpu,
    gpus_per_instance: profile.hardware.gpus,
    instances,
    vllm_version: run.vllmVersion,
    date: run.date,
    entry: run.entry,
    arrivals: run.arrivals,
    request_rate: run.requestRate === Infinity ? 'inf' : run.requestRate,
    burstiness: run.burstiness,
    max_concurrency: run.maxConcurrency,
    seeds,
    traces,
    profile: { file: 'profile.json', base: profile.name.replace(/@import$/, ''), choice, engine: profile.engine },
    source_engine: run.engine,
    extra: run.extra,
    warnings,
    commands,
  };
  writeFileSync(join(outDir, 'config.json'), JSON.stringify(config, (_k, v) => (v === Infinity ? 'inf' : v), 1) + '\n');
  return { outDir, run, profile, profileChoice: choice, traces, instances, strategy, maxConcurrency, commands, warnings };
}

/** Registers `kvlab import` on the root program. */
export function registerImportCommand(program: Command): void {
  program
    .command('import')
    .description(
      'turn a real benchmark (vllm bench serve --save-result JSON, or an LLMServingSim run directory / requests.jsonl) into an ' +
        'observed run (records.jsonl, summary.json, config.json) plus the trace(s), profile.json and cluster.yaml that kvlab sim replays',
    )
    .argument('<file>', 'benchmark file or run directory')
    .requiredOption('--out <dir>', 'output directory', outDirArg('--out'))
    .option('--profile <name|file>', 'instance profile (default: a measured profile of the same model/GPU/TP, else profile derive)')
    .option('--gpu <name|spec.json>', 'GPU, when the file does not say (see engine/profiles/gpus/)')
    .option('--model <name|config.json>', 'model, when the file does not say (shipped name, HF id or a Hugging Face config.json)')
    .option('--tp <n>', 'GPUs per instance (tensor parallel)', intArg('--tp'))
    .option('--seeds <k>', 'arrival-process seeds when the file has no send times (default 5)', intArg('--seeds'))
    .option('--max-num-seqs <n>', 'engine max_num_seqs (default: the file, else vLLM\'s default for the GPU)', intArg('--max-num-seqs'))
    .option('--max-num-batched-tokens <n>', 'engine max_num_batched_tokens', intArg('--max-num-batched-tokens'))
    .option('--max-model-len <n>', 'engine max_model_len', intArg('--max-model-len'))
    .option('--kv-capacity-tokens <n>', 'KV capacity in tokens (default: the file, else memory arithmetic)', intArg('--kv-capacity-tokens'))
    .option('--input-len <n>', 'prompt tokens of every request of an aggregates-only file', intArg('--input-len'))
    .option('--output-len <n>', 'output tokens of every request of an aggregates-only file', intArg('--output-len'))
    .option('--json', 'print what was written as JSON')
    .action((file: string, f: Record<string, any>) => {
      const r = importRun(file, {
        out: f.out,
        profile: f.profile,
        gpu: f.gpu,
        model: f.model,
        tp: f.tp,
        seeds: f.seeds,
        inputLen: f.inputLen,
        outputLen: f.outputLen,
        engine: { maxNumSeqs: f.maxNumSeqs, maxNumBatchedTokens: f.maxNumBatchedTokens, maxModelLen: f.maxModelLen, kvCapacityTokens: f.kvCapacityTokens },
      });
      if (f.json) {
        process.stdout.write(JSON.stringify({ out: r.outDir, format: r.run.format, requests: r.run.numRequests, arrivals: r.run.arrivals, profile: r.profile.name, profile_choice: r.profileChoice, engine: r.profile.engine, traces: r.traces, commands: r.commands, warnings: r.warnings }, (_k, v) => (v === Infinity ? 'inf' : v), 1) + '\n');
        return;
      }
      const e = r.profile.engine;
      const lines = [
        `imported ${r.run.format} run: ${r.run.numRequests} requests (${r.run.requests.filter((q) => q.ok).length || r.run.totals?.completed || 0} completed), arrivals ${r.run.arrivals}` +
          (r.run.requestRate !== null ? `, rate ${r.run.requestRate === Infinity ? 'inf' : r.run.requestRate} req/s, burstiness ${r.run.burstiness}` : '') +
          (r.run.maxConcurrency !== null ? `, max concurrency ${r.run.maxConcurrency}` : ''),
        `profile: ${r.profileChoice}`,
        `engine: max_num_seqs ${e.maxNumSeqs}, max_num_batched_tokens ${e.maxNumBatchedTokens}, max_model_len ${e.maxModelLen}, KV ${e.kvCapacityTokens} tokens, ${r.instances} instance(s)`,
        ...r.warnings.map((w) => `warning: ${w}`),
        `wrote ${r.outDir}: records.jsonl summary.json config.json ${r.traces.join(' ')} profile.json cluster.yaml`,
        'next:',
        ...r.commands.map((c) => `  ${c}`),
      ];
      process.stdout.write(lines.join('\n') + '\n');
    });
}

