/**
 * The measured RTX 5090 profile (rtx5090x8-llama3-70b): the CacheRoute rig's constants, its fit from
 * the logs (`kvlab profile fit`), and the old scaled H100 profile derived from it
 * (h100x8-llama3-70b-from-rtx5090, kept for comparison; the measured H100 profiles come from
 * sim/profile/build.ts).
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { EngineSettings, HardwareSpec, KvLoadModel, ModelSpec, Profile, StepModel } from '../../engine/types.js';
import { parseProfile, repoRoot } from '../profiles.js';
import { checkBursts, type CheckReport } from './check.js';
import { anchorErrors, crossValidateByPl, DEFAULT_FIT_CONFIG, fitStepModel, tpotMape, type CrossValidation, type FitConfig, type FitData, type StepFit } from './fit.js';
import { CHAT_TEMPLATE_TOKENS, DEFAULT_KNOTS, FRONTEND_MS_PER_REQUEST, listTtftLogs, readBursts, readTpotTable, SHORT_PROMPT_ANCHORS, type Anchor } from './logs.js';

export { CHAT_TEMPLATE_TOKENS, DEFAULT_KNOTS, FRONTEND_MS_PER_REQUEST, SHORT_PROMPT_ANCHORS, type Anchor };


/**
 * Llama-3-70B(-Instruct) as profiled: 80 layers, d_model 8192, 8 KV heads × 128, bf16.
 * KV bytes per token = 80 × 2 × 8 × 128 × 2 = 327,680 B (DESIGN.md). 70.6 B parameters.
 */
export const LLAMA3_70B: ModelSpec = {
  name: 'Llama-3-70B-Instruct',
  layers: 80,
  kvHeads: 8,
  headDim: 128,
  dtypeBytes: 2,
  kvBytesPerToken: 327_680,
  paramsB: 70.6,
};
/** Hidden size of Llama-3-70B (config.json `hidden_size`). */
export const LLAMA3_70B_D_MODEL = 8192;

/**
 * 8× GeForce RTX 5090, the rig of the CacheRoute logs (SOURCE.md). Peak dense BF16 tensor
 * throughput with FP32 accumulate 209.5 TFLOP/s per GPU: NVIDIA lists 838 TFLOP/s FP16 tensor
 * *with sparsity and FP16 accumulate*; dense halves it (419), and GeForce parts run FP16/BF16
 * with FP32 accumulate at half the FP16-accumulate rate (as on Ada; confirmed on sm_120 by
 * public cuBLAS measurements: BF16/FP32-acc ≈ ½ FP16/FP16-acc) → 209.5. vLLM accumulates in FP32.
 * Memory: 32 GiB GDDR7, 1,792 GB/s (512-bit × 28 Gbps).
 */
export const RTX5090_X8: HardwareSpec = { gpu: 'NVIDIA GeForce RTX 5090', gpus: 8, peakTflops: 209.5, memBandwidthGBs: 1792, memGiB: 32 };

/** 8× H100 SXM5 80 GB: 989.4 dense BF16 TFLOP/s and 3,350 GB/s HBM3 per GPU (NVIDIA datasheet). */
export const H100_SXM_X8: HardwareSpec = { gpu: 'NVIDIA H100 SXM5 80GB', gpus: 8, peakTflops: 989.4, memBandwidthGBs: 3350, memGiB: 80 };

/**
 * KV load into the engine (LMCache retrieve from Redis): CacheRoute's fit 12.46 ms + 2764.34 ms/GB,
 * GB = tokens × 40,960 B / 2^30 (one TP rank's shard of Llama-3-70B KV; cacheroute.md §5.3–5.4).
 */
export const CACHEROUTE_KV_LOAD: KvLoadModel = { fixedMs: 12.46, msPerGB: 2764.34, bytesPerToken: 40_960 };


// ---------------------------------------------------------------------------------------------
// Derived (not fitted) model constants

/**
 * Context length (tokens) at which attention FLOPs per token equal the linear-layer FLOPs:
 * attention at context s ≈ 4·layers·d_model·s FLOPs/token (QKᵀ and PV, 2 FLOPs per MAC), linear
 * layers ≈ 2·params FLOPs/token ⇒ attnTokens = 2·params / (4·layers·d_model).
 * Llama-3-70B: 2·70.6e9 / (4·80·8192) = 53,864 tokens.
 */
export function attnTokensFromFlops(paramsB: number, layers: number, dModel: number): number {
  return (2 * paramsB * 1e9) / (4 * layers * dModel);
}

/**
 * Decode attention KV read time per context token, ms: kvBytesPerToken / (gpus × bandwidth).
 * Llama-3-70B on 8× RTX 5090: 327,680 B / (8 × 1,792e9 B/s) = 2.286e-5 ms/token.
 */
export function kvReadMsPerTokenFromBandwidth(model: ModelSpec, hw: HardwareSpec): number {
  return (model.kvBytesPerToken / (hw.gpus * hw.memBandwidthGBs * 1e9)) * 1e3;
}

/** vLLM's default `gpu_memory_utilization`. */
export const GPU_MEMORY_UTILIZATION = 0.9;
/** Per-GPU memory vLLM cannot give to the KV cache besides activations (NCCL/cuBLAS workspaces, CUDA graphs), bytes. */
export const NON_TORCH_RESERVE_BYTES = 2 ** 30;
/**
 * Peak activation bytes per batched token on one TP-8 rank of Llama-3-70B during vLLM's memory
 * profiling forward pass: hidden + residual 2×8192×2 B (32 KiB), all-reduce output 16 KiB, MLP
 * gate_up 2×28672/8×2 B (14 KiB) and its activation (7 KiB), QKV/attention outputs (~4.5 KiB)
 * ≈ 74 KiB, rounded up to 80 KiB.
 */
export const ACTIVATION_BYTES_PER_TOKEN = 80 * 1024;

/** KV capacity and the arithmetic that produced it. */
export interface KvCapacity {
  tokens: number;
  /** human-readable derivation (goes into the profile description). */
  text: string;
}

/**
 * KV capacity in tokens of one instance: gpus × memGiB × 2^30 × gpu_memory_utilization − weights
 * (params × dtype bytes) − reserve (per GPU: 1 GiB non-torch + 80 KiB × max_num_batched_tokens of
 * activations), divided by kvBytesPerToken, rounded down to whole blocks.
 */
export function kvCapacity(model: ModelSpec, hw: HardwareSpec, maxNumBatchedTokens: number, blockSizeTokens: number): KvCapacity {
  const total = hw.gpus * hw.memGiB * 2 ** 30;
  const usable = total * GPU_MEMORY_UTILIZATION;
  const weights = model.paramsB * 1e9 * model.dtypeBytes;
  const reservePerGpu = NON_TORCH_RESERVE_BYTES + ACTIVATION_BYTES_PER_TOKEN * maxNumBatchedTokens;
  const reserve = hw.gpus * reservePerGpu;
  const kvBytes = usable - weights - reserve;
  const tokens = Math.max(0, Math.floor(kvBytes / model.kvBytesPerToken / blockSizeTokens) * blockSizeTokens);
  const gb = (x: number): string => `${(x / 1e9).toFixed(2)} GB`;
  const text =
    `KV capacity = (${hw.gpus} × ${hw.memGiB} GiB = ${gb(total)}) × gpu_memory_utilization ${GPU_MEMORY_UTILIZATION} = ${gb(usable)}` +
    ` − weights ${model.paramsB}e9 × ${model.dtypeBytes} B = ${gb(weights)}` +
    ` − reserve ${hw.gpus} × (1 GiB non-torch + 80 KiB × ${maxNumBatchedTokens} batched tokens of activations = ${gb(reservePerGpu)}) = ${gb(reserve)}` +
    ` → ${gb(kvBytes)} / ${model.kvBytesPerToken.toLocaleString('en-US')} B per token = ${tokens.toLocaleString('en-US')} tokens (whole ${blockSizeTokens}-token blocks).`;
  return { tokens, text };
}


/** Rounds to `digits` significant digits (keeps profile JSON readable and stable). */
function sig(x: number, digits = 6): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  return Number(x.toPrecision(digits));
}

function roundStep(s: StepModel): StepModel {
  return {
    fixedMs: sig(s.fixedMs),
    prefillSeqMs: sig(s.prefillSeqMs),
    decodeSeqMs: sig(s.decodeSeqMs),
    knots: [...s.knots],
    values: s.values.map((v) => sig(v)),
    attnTokens: sig(s.attnTokens),
    kvReadMsPerToken: sig(s.kvReadMsPerToken),
    apiMs: sig(s.apiMs),
    frontendMsPerRequest: s.frontendMsPerRequest,
  };
}

/** Engine settings of the CacheRoute rig (SOURCE.md: --max-num-seqs 8 --max-num-batched-tokens 16384 --max-model-len 4096). */
export function rtx5090Engine(): { engine: EngineSettings; capacity: KvCapacity } {
  const blockSizeTokens = 16; // vLLM default block size
  const capacity = kvCapacity(LLAMA3_70B, RTX5090_X8, 16384, blockSizeTokens);
  return {
    engine: { maxNumBatchedTokens: 16384, maxNumSeqs: 8, maxModelLen: 4096, kvCapacityTokens: capacity.tokens, blockSizeTokens, longPrefillTokenThreshold: 0 },
    capacity,
  };
}

/**
 * The 5090 profile skeleton before fitting: model, hardware, engine, derived step constants
 * (attnTokens from FLOPs, kvReadMsPerToken from bandwidth), CacheRoute's KV load fit.
 */
export function rtx5090BaseProfile(): Profile {
  const { engine } = rtx5090Engine();
  return {
    name: 'rtx5090x8-llama3-70b',
    derived: false,
    description: '',
    source: '',
    model: LLAMA3_70B,
    hardware: RTX5090_X8,
    engine,
    step: {
      fixedMs: 20,
      prefillSeqMs: 0,
      decodeSeqMs: 0,
      knots: [...DEFAULT_KNOTS],
      values: DEFAULT_KNOTS.map((k) => 1.4 * k),
      attnTokens: attnTokensFromFlops(LLAMA3_70B.paramsB, LLAMA3_70B.layers, LLAMA3_70B_D_MODEL),
      kvReadMsPerToken: kvReadMsPerTokenFromBandwidth(LLAMA3_70B, RTX5090_X8),
      apiMs: 10,
      frontendMsPerRequest: FRONTEND_MS_PER_REQUEST,
    },
    kvLoad: { ...CACHEROUTE_KV_LOAD },
    coldStartMs: 0,
  };
}

/** Everything `profile fit` produces. */
export interface FitOutput {
  profile: Profile;
  fit: StepFit;
  check: CheckReport;
  cv: CrossValidation | null;
  anchors: ReturnType<typeof anchorErrors>;
  tpotMape: number | null;
}

/** Default logs directory: ../shared/data/profiles/rtx5090x8-llama3-70b relative to the repo. */
export function defaultLogsDir(): string {
  return resolve(repoRoot(), '..', 'shared', 'data', 'profiles', 'rtx5090x8-llama3-70b');
}

const pct = (x: number): number => Number(x.toFixed(2));

/**
 * Fits the RTX 5090 profile from a logs directory (log-*.txt and tpot_benchmark_table.json) and
 * assembles the full Profile with description, source and fit quality.
 */
export function fitRtx5090Profile(logsDir: string, opts: { cv?: boolean; cfg?: FitConfig } = {}): FitOutput {
  const cfg = opts.cfg ?? DEFAULT_FIT_CONFIG;
  const logs = listTtftLogs(logsDir);
  if (logs.length === 0) throw new Error(`profile fit: no log-*.txt files in ${logsDir}`);
  const bursts = readBursts(logs);
  const tpotPath = join(logsDir, 'tpot_benchmark_table.json');
  const tpot = existsSync(tpotPath) ? readTpotTable(tpotPath) : null;
  const data: FitData = { bursts, tpot, anchors: SHORT_PROMPT_ANCHORS };
  const base = rtx5090BaseProfile();
  const fit = fitStepModel(base, data, cfg);
  const coldStartMs = Math.round(fit.coldStartMs);
  let profile: Profile = { ...base, step: roundStep(fit.step), coldStartMs };
  const check = checkBursts(profile, bursts, { templateTokens: cfg.templateTokens });
  const cv = opts.cv === false ? null : crossValidateByPl(base, data, cfg);
  const anchors = anchorErrors(profile);
  const tm = tpot ? tpotMape(profile.step, tpot, cfg.tpotOutlierFactor) : null;
  const { capacity } = rtx5090Engine();
  const s = profile.step;
  profile = {
    ...profile,
    description:
      `Llama-3-70B-Instruct bf16 on 8× RTX 5090 (TP 8, PCIe), vLLM 0.13 + LMCache 0.3.11, max_model_len 4096, ` +
      `max_num_batched_tokens 16384, max_num_seqs 8 (SOURCE.md). Step model fitted by \`kvlab profile fit\` (sim/calibrate.ts) ` +
      `from the measured TTFT logs, the TPOT table and CacheRoute's short-prompt anchors; every TTFT replayed through ` +
      `sim/instance.ts. Derived, not fitted: attnTokens = 2·params/(4·layers·d_model) = 2·70.6e9/(4·80·8192) = ` +
      `${Math.round(s.attnTokens)} tokens (attention vs linear FLOPs per token); kvReadMsPerToken = 327,680 B / (8 × 1,792e9 B/s) ` +
      `= ${s.kvReadMsPerToken.toExponential(4)} ms; frontendMsPerRequest ${s.frontendMsPerRequest} ms (API server hands a burst to ` +
      `the engine core a few ms apart: template + tokenization + IPC); coldStartMs = mean excess of the logs' cold first ` +
      `requests over the warm model. Hardware: 209.5 dense BF16 TFLOP/s (FP32 accumulate; NVIDIA's 838 sparse FP16-accumulate ` +
      `figure / 2 for density / 2 for FP32 accumulate on GeForce), 1,792 GB/s, 32 GiB per GPU. ${capacity.text} ` +
      `KV load: CacheRoute's LMCache/Redis fit 12.46 ms + 2764.34 ms/GB at 40,960 B/token (cacheroute.md §5.3).`,
    source:
      'BJTU-ANT/CacheRoute @966be95 proxy/metrics/data/log-bs{1..8}-rtx5090-8-llama3-70b.txt and tpot_benchmark_table.json ' +
      '(../shared/data/profiles/rtx5090x8-llama3-70b/, Apache-2.0); short-prompt anchors from reference/cacheroute.md §5.1',
    fit: {
      generatedBy: 'kvlab profile fit',
      method:
        'weighted non-negative least squares (Lawson–Hanson; passive-set solves with ml-regression MultivariateLinearRegression, ' +
        'intercept false) on θ = [fixedMs, prefillSeqMs, decodeSeqMs, curve slope per knot segment, apiMs]; rows weighted 1/measured ' +
        '(relative error); attention and decode KV reads are derived offsets; compositions from replaying each burst through ' +
        'InstanceCore, iterated to a fixed point',
      config: { ...cfg, knots: [...cfg.knots] },
      logs: logs.map((l) => basename(l)),
      tpotTable: tpot ? 'tpot_benchmark_table.json' : null,
      rows: fit.rows,
      excluded: fit.excluded,
      iterations: fit.iterations,
      converged: fit.converged,
      ttftMape: {
        metric: 'mean |sim − measured| / measured over requests, simulated and measured sorted within each burst, each file\'s first request skipped, %',
        all: pct(check.ttftMape),
        conforming: pct(check.conformingMape),
        nonconformingBursts: check.nonconformingBursts,
        floorNote: 'floor = lowest all-requests MAPE any deterministic replay can reach (1/y-weighted median of the repeats per rank)',
        byBs: Object.fromEntries(
          Object.entries(check.byBs).map(([bs, v]) => [
            bs,
            { all: pct(v.mape), conforming: pct(v.conformingMape), floor: pct(v.floorMape), requests: v.requests, nonconformingBursts: v.nonconformingBursts },
          ]),
        ),
      },
      crossValidation: cv
        ? {
            scheme: cv.scheme,
            all: pct(cv.ttftMape),
            conforming: pct(cv.conformingMape),
            byBs: Object.fromEntries(Object.entries(cv.byBs).map(([bs, v]) => [bs, { all: pct(v.mape), conforming: pct(v.conformingMape) }])),
          }
        : null,
      shortPromptAnchors: anchors.map((a) => ({ promptTokens: a.promptTokens, measuredMs: a.measuredMs, simulatedMs: sig(a.simulatedMs, 4), errPct: pct(a.errPct) })),
      tpotMape: tm === null ? null : pct(tm),
      coldStart: fit.coldStart.map((c) => ({ file: c.file, excessMs: Math.round(c.excessMs) })),
    },
  };
  profile = parseProfile(profile, 'fitted profile');
  return { profile, fit, check, cv, anchors, tpotMape: tm };
}

/**
 * Derives a profile for other hardware by scaling a measured one: the token curve (compute-bound)
 * by the peak-compute ratio, fixedMs / decodeSeqMs / prefillSeqMs (memory-bound: weight and
 * per-sequence state reads) by the bandwidth ratio, kvReadMsPerToken recomputed from the new
 * bandwidth; apiMs, frontendMsPerRequest, coldStartMs, attnTokens (a FLOP ratio) and the KV load
 * model (LMCache/Redis, not GPU-bound) unchanged.
 */
export function deriveProfile(
  src: Profile,
  target: { name: string; hardware: HardwareSpec; maxModelLen: number; maxNumBatchedTokens: number; maxNumSeqs: number; note: string },
): Profile {
  const rc = src.hardware.peakTflops / target.hardware.peakTflops;
  const rb = src.hardware.memBandwidthGBs / target.hardware.memBandwidthGBs;
  const blockSizeTokens = src.engine.blockSizeTokens;
  const capacity = kvCapacity(src.model, target.hardware, target.maxNumBatchedTokens, blockSizeTokens);
  const s = src.step;
  const step: StepModel = roundStep({
    ...s,
    fixedMs: s.fixedMs * rb,
    prefillSeqMs: s.prefillSeqMs * rb,
    decodeSeqMs: s.decodeSeqMs * rb,
    values: s.values.map((v) => v * rc),
    kvReadMsPerToken: kvReadMsPerTokenFromBandwidth(src.model, target.hardware),
  });
  const p: Profile = {
    name: target.name,
    derived: true,
    description:
      `DERIVED, not measured: ${src.model.name} bf16 on ${target.hardware.gpus}× ${target.hardware.gpu} (TP ${target.hardware.gpus}), scaled from the ` +
      `measured profile ${src.name}. Compute-bound terms (the token curve, hence prefill throughput and attention) × peak-compute ratio ` +
      `${src.hardware.peakTflops}/${target.hardware.peakTflops} = ${rc.toFixed(4)}; memory-bound terms (fixedMs, decodeSeqMs, prefillSeqMs) × ` +
      `bandwidth ratio ${src.hardware.memBandwidthGBs}/${target.hardware.memBandwidthGBs} = ${rb.toFixed(4)}; kvReadMsPerToken = ` +
      `${src.model.kvBytesPerToken.toLocaleString('en-US')} B / (${target.hardware.gpus} × ${target.hardware.memBandwidthGBs}e9 B/s); apiMs, ` +
      `frontendMsPerRequest, coldStartMs, attnTokens and the KV load model unchanged. ${target.note} ${capacity.text} ` +
      `Caveat: the source rig is PCIe-only (no NVLink), where the tensor-parallel all-reduce makes prefill ~17× slower than peak FLOPs; ` +
      `scaling by peak compute keeps that inefficiency, so prefill here is likely pessimistic for NVLink H100s.`,
    source: `derived from engine/profiles/${src.name}.json by kvlab profile fit (sim/calibrate.ts deriveProfile)`,
    model: src.model,
    hardware: target.hardware,
    engine: {
      maxNumBatchedTokens: target.maxNumBatchedTokens,
      maxNumSeqs: target.maxNumSeqs,
      maxModelLen: target.maxModelLen,
      kvCapacityTokens: capacity.tokens,
      blockSizeTokens,
      longPrefillTokenThreshold: 0,
    },
    step,
    kvLoad: { ...src.kvLoad },
    coldStartMs: src.coldStartMs,
    fit: { derivedFrom: src.name, computeScale: sig(rc), bandwidthScale: sig(rb), measured: false },
  };
  return parseProfile(p, 'derived profile');
}

/**
 * 8× H100 SXM Llama-3-70B scaled from the 5090 profile (h100x8-llama3-70b-from-rtx5090; kept
 * for comparison with the measured h100x8-llama3-70b built from op-level H100 data). Engine: max_model_len 131072 (the
 * model's context); vLLM V1 defaults of the OpenAI server on GPUs with ≥ 70 GiB that are not A100
 * (vllm/engine/arg_utils.py EngineArgs.get_batch_defaults, vLLM ≥ 0.9): max_num_batched_tokens
 * 8192 and max_num_seqs 1024.
 */
export function deriveH100Profile(src: Profile): Profile {
  return deriveProfile(src, {
    name: 'h100x8-llama3-70b-from-rtx5090',
    hardware: H100_SXM_X8,
    maxModelLen: 131072,
    maxNumBatchedTokens: 8192,
    maxNumSeqs: 1024,
    note:
      'Engine: max_model_len 131072; vLLM V1 OpenAI-server defaults for GPUs with >= 70 GiB other than A100 ' +
      '(vllm/engine/arg_utils.py get_batch_defaults): max_num_batched_tokens 8192, max_num_seqs 1024.',
  });
}


/** Writes a profile as pretty JSON (2-space indent, trailing newline), creating the directory. */
export function writeProfile(path: string, p: Profile): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(p, null, 2) + '\n');
}

