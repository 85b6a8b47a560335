/**
 * Calibration of the instance timing model (`StepModel`, engine/types.ts) from measured logs,
 * and the `kvlab profile fit|check` commands.
 *
 * Data (reference/cacheroute.md §5–§6, ../shared/data/profiles/rtx5090x8-llama3-70b/SOURCE.md):
 * - TTFT logs `log-bs{1..8}.txt`: bursts of B simultaneous chat requests of PL prompt tokens
 *   (+25 chat-template tokens), `max_tokens` 1, 3 repeats, client-side TTFT per request;
 * - `tpot_benchmark_table.json`: time per output token by batch size 1–8 and length 33–1024;
 * - short-prompt anchors (cacheroute.md §5.1): bs = 1 TTFT means at L = PL + 25 = 35..115 tokens,
 *   measured in CacheRoute's supplementary logs (not shipped here, so the means are copied).
 *
 * Method. Each logged burst is replayed through the simulator's own instance model
 * (sim/instance.ts `InstanceCore`, vLLM V1 scheduling): request k reaches the engine core at
 * (k+1)·frontendMsPerRequest, the core starts a step whenever it is idle and has work, and a
 * request's TTFT is apiMs + end of the step that completes its prefill. The step compositions
 * of a burst do not depend on the coefficients (only on B, PL, the token budget, max_num_seqs and
 * the small frontend stagger), so every TTFT is linear in the unknowns
 *   θ = [fixedMs, prefillSeqMs, decodeSeqMs, s_1..s_n (curve slope per knot segment), apiMs]
 * (curve(T) = Σ_j s_j·overlap(T, segment j)), with two derived terms moved to the target as
 * known offsets: attention (slopeLast·attnUnits/attnTokens, iterated to a fixed point on
 * slopeLast = s_n) and decode KV reads (kvReadMsPerToken·decodeCtxTokens). The rows (relative
 * error weights 1/measured) are solved by non-negative least squares (Lawson–Hanson; each
 * passive-set solve is an ml-regression MultivariateLinearRegression without intercept), so the
 * curve is non-decreasing (all s_j ≥ 0) and every coefficient is ≥ 0. A small ridge penalty on
 * s_{j+1} − s_j damps wiggles where data are thin. Compositions are re-derived with the new
 * coefficients and the fit repeated until nothing changes.
 *
 * Rows: every request of every *conforming* burst (all repeats), i.e. a burst whose measured
 * completion grouping (clusters of equal TTFTs) matches the simulated one (1 request alone,
 * then B−1 together); ~9% of the logged bursts had their requests reach the engine in another
 * grouping (2+B−2, 3+B−3, all at once) — a frontend timing race no deterministic model
 * reproduces — and would pull a least-squares fit by up to 50% per request. Each file's first
 * burst is left out (it may carry the server's cold start). Plus the 9 short-prompt anchors
 * (weight 3: each is the mean of 3 requests) and the TPOT table every 32nd length
 * (31 lengths × 8 batch sizes; cells above 2× their row median — the bs 3, L 839 spike — dropped).
 */
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { EngineSettings, HardwareSpec, KvLoadModel, ModelSpec, Profile, StepModel } from '../engine/types.js';
import { slopeLast, stepMs, type StepComposition } from '../engine/costmodel.js';
import { InstanceCore, type CoreRequest } from './instance.js';
import { instanceSpecFromProfile, loadProfile, parseProfile, repoRoot } from './profiles.js';
import { listTtftLogs, readBursts, readTpotTable, type Burst, type TpotTable } from './profile-logs.js';

// ---------------------------------------------------------------------------------------------
// ml-regression (CommonJS, no type declarations): loaded through createRequire and typed here.

interface MlrModel {
  /** one row per input column, one column per output. */
  weights: number[][];
}
type MlrCtor = new (x: number[][], y: number[][], opts: { intercept: boolean; statistics: boolean }) => MlrModel;
const { MultivariateLinearRegression } = createRequire(import.meta.url)('ml-regression') as {
  MultivariateLinearRegression: MlrCtor;
};

// ---------------------------------------------------------------------------------------------
// Constants (units in names; sources in the docstrings)

/** Chat-template overhead added to the synthetic prompt of the logs, tokens (cacheroute.md §5.1: L = PL + 25). */
export const CHAT_TEMPLATE_TOKENS = 25;

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

/**
 * Short-prompt bs = 1 anchors (L = PL + 25 tokens, mean TTFT ms) from CacheRoute's supplementary
 * measured logs (cacheroute.md §5.1 and §6.2, "small lengths" file, PL 10..90).
 */
export const SHORT_PROMPT_ANCHORS: readonly Anchor[] = [
  [35, 47],
  [45, 53.26],
  [55, 65.97],
  [65, 70.71],
  [75, 76.63],
  [89, 88.38],
  [95, 90.35],
  [105, 93.01],
  [115, 95.67],
].map(([promptTokens, ttftMs]) => ({ promptTokens: promptTokens!, ttftMs: ttftMs! }));

/** Default curve knots, tokens per step (knots[0] = 0 where the curve is 0). */
export const DEFAULT_KNOTS: readonly number[] = [0, 32, 64, 96, 128, 256, 384, 512, 1024, 2048, 4096, 8192, 16384];

/**
 * Frontend stagger, ms between simultaneous requests reaching the engine core. vLLM's API server
 * applies the chat template, tokenizes (≈1–3 ms for ≤4k tokens with the fast tokenizer) and hands
 * each request to the core over IPC one after the other on one event loop, so a burst trickles in
 * a few ms apart. 3 ms keeps a burst of 8 (24 ms) inside the shortest first step of the data
 * (~30 ms at 35 tokens), which gives the dominant logged pattern: one request alone, then B−1.
 */
export const FRONTEND_MS_PER_REQUEST = 3;

/** A bs = 1 TTFT measurement at `promptTokens` (template included), ms. */
export interface Anchor {
  promptTokens: number;
  ttftMs: number;
}

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

// ---------------------------------------------------------------------------------------------
// Burst replay through the simulator's instance model

/** One engine step of a replayed burst. */
export interface ReplayStep {
  comp: StepComposition;
  /** start time, ms after the burst was sent. */
  startMs: number;
  /** duration including any cold start, ms. */
  durMs: number;
  /** start of the busy period (steps back to back) this step belongs to, ms. */
  busyStartMs: number;
  /** cold-start ms added to this step (first step of a cold instance). */
  coldMs: number;
}

/** A replayed burst: per request (index = arrival order) its TTFT and completing step. */
export interface BurstReplay {
  /** simulated TTFT per request, ms (apiMs + end of its prefill step − send time 0). */
  ttftMs: number[];
  /** index into `steps` of the step that completed each request's prefill. */
  doneStep: number[];
  steps: ReplayStep[];
}

/**
 * Replays one burst — `bs` simultaneous requests of `promptTokens` tokens (template included),
 * 1 output token each, unique block ids (no prefix-cache hits) — through a fresh InstanceCore.
 * Request k reaches the core at (k+1)·frontendMsPerRequest; the core starts a step whenever it
 * is idle and has work. `coldStartMs` is added to the first step (a cold instance).
 * @throws Error when the instance rejects a request (prompt + 1 > max_model_len or KV capacity)
 */
export function replayBurst(profile: Profile, bs: number, promptTokens: number, opts: { coldStartMs?: number } = {}): BurstReplay {
  const spec = instanceSpecFromProfile(profile, 0);
  const core = new InstanceCore(spec, { keepDone: true });
  const f = profile.step.frontendMsPerRequest;
  const api = profile.step.apiMs;
  const blockSize = spec.engine.blockSizeTokens;
  const nBlocks = Math.ceil(promptTokens / blockSize);
  const arrivals: number[] = [];
  const reqs: CoreRequest[] = [];
  for (let k = 0; k < bs; k++) {
    arrivals.push((k + 1) * f);
    // unique ids per request: prefix caching is defeated, as in the logs (uuid-prefixed prompts)
    const blocks = Array.from({ length: nBlocks }, (_, j) => (k + 1) * 1_000_000 + j);
    reqs.push({ id: String(k), promptTokens, outputTokens: 1, blocks, blockSize, loadedTokens: 0, kvLoadMs: 0 });
  }
  const ttftMs = new Array<number>(bs).fill(NaN);
  const doneStep = new Array<number>(bs).fill(-1);
  const steps: ReplayStep[] = [];
  let t = 0;
  let next = 0;
  let done = 0;
  let idle = true;
  let busyStart = 0;
  let cold = opts.coldStartMs ?? 0;
  const admit = (upTo: number, inclusive: boolean): void => {
    while (next < bs && (inclusive ? arrivals[next]! <= upTo : arrivals[next]! < upTo)) {
      if (!core.add(reqs[next]!, arrivals[next]!)) {
        throw new Error(
          `replay: request of ${promptTokens} prompt tokens rejected by ${profile.name} (max_model_len ${spec.engine.maxModelLen}, KV ${spec.engine.kvCapacityTokens} tokens)`,
        );
      }
      next++;
    }
  };
  let guard = 0;
  while (done < bs) {
    if (++guard > 100_000) throw new Error('replay: no progress');
    admit(t, true);
    let d = core.startStep(t);
    if (d < 0) {
      if (next >= bs) throw new Error('replay: instance idle with requests outstanding');
      t = arrivals[next]!;
      idle = true;
      continue;
    }
    if (idle) {
      busyStart = t;
      idle = false;
    }
    const coldMs = cold;
    d += coldMs;
    cold = 0;
    const comp = { ...core.lastStep };
    const end = t + d;
    admit(end, false);
    const ev = core.finishStep(end);
    steps.push({ comp, startMs: t, durMs: d, busyStartMs: busyStart, coldMs });
    for (const id of ev.firstToken) {
      const k = Number(id);
      ttftMs[k] = api + end;
      doneStep[k] = steps.length - 1;
      done++;
    }
    t = end;
  }
  return { ttftMs, doneStep, steps };
}

/**
 * Sizes of the groups of requests that complete in the same step, in completion order
 * (e.g. [1, 7] for a burst of 8: one alone, then seven together).
 */
export function simulatedGroups(r: BurstReplay): number[] {
  const count = new Map<number, number>();
  for (const s of r.doneStep) count.set(s, (count.get(s) ?? 0) + 1);
  return [...count.entries()].sort((a, b) => a[0] - b[0]).map(([, n]) => n);
}

/**
 * Clusters sorted measured TTFTs: a new group starts where the gap to the previous value exceeds
 * `gapMs`. Returns the group sizes in order.
 */
export function measuredGroups(sortedMs: readonly number[], gapMs: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < sortedMs.length; i++) {
    if (i === 0 || sortedMs[i]! - sortedMs[i - 1]! > gapMs) out.push(1);
    else out[out.length - 1]!++;
  }
  return out;
}

/**
 * Gap threshold for measuredGroups given a replay: half the smallest gap between consecutive
 * simulated groups, or a quarter of the fastest TTFT when the simulation has a single group.
 */
export function groupGapMs(r: BurstReplay): number {
  const byStep = new Map<number, number>();
  r.doneStep.forEach((s, k) => byStep.set(s, r.ttftMs[k]!));
  const times = [...byStep.values()].sort((a, b) => a - b);
  let minGap = Infinity;
  for (let i = 1; i < times.length; i++) minGap = Math.min(minGap, times[i]! - times[i - 1]!);
  return Number.isFinite(minGap) ? minGap / 2 : Math.min(...r.ttftMs) / 4;
}

/** true when the measured grouping of a burst equals the simulated one. */
export function burstConforms(r: BurstReplay, measuredSortedMs: readonly number[]): boolean {
  const a = simulatedGroups(r);
  const b = measuredGroups(measuredSortedMs, groupGapMs(r));
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Indices 0..n−1 sorted by value (stable). */
function argsort(v: readonly number[]): number[] {
  return v.map((_, i) => i).sort((a, b) => v[a]! - v[b]! || a - b);
}

// ---------------------------------------------------------------------------------------------
// Linear algebra: NNLS with ml-regression least squares on the passive set

/**
 * Least squares min ‖A[:,cols]·z − b‖ with ml-regression's MultivariateLinearRegression
 * (no intercept), columns scaled to unit norm for conditioning. Returns z for `cols`.
 */
function leastSquares(A: readonly number[][], b: readonly number[], cols: readonly number[]): number[] {
  const scale = cols.map((j) => Math.sqrt(A.reduce((s, r) => s + r[j]! * r[j]!, 0)) || 1);
  const X = A.map((r) => cols.map((j, k) => r[j]! / scale[k]!));
  const Y = b.map((v) => [v]);
  const m = new MultivariateLinearRegression(X, Y, { intercept: false, statistics: false });
  return m.weights.map((w, k) => w[0]! / scale[k]!);
}

/**
 * Non-negative least squares min ‖A·x − b‖, x ≥ 0 (Lawson & Hanson 1974, active-set method).
 * Each passive-set solve is a `leastSquares` call.
 */
export function nnls(A: readonly number[][], b: readonly number[], maxIter = 200): number[] {
  const n = A[0]?.length ?? 0;
  const x = new Array<number>(n).fill(0);
  const passive = new Array<boolean>(n).fill(false);
  const blocked = new Array<boolean>(n).fill(false);
  const colNorm = Array.from({ length: n }, (_, j) => Math.sqrt(A.reduce((s, r) => s + r[j]! * r[j]!, 0)));
  const bNorm = Math.sqrt(b.reduce((s, v) => s + v * v, 0));
  const gradient = (): number[] => {
    const r = b.map((bi, i) => bi - A[i]!.reduce((s, a, j) => s + a * x[j]!, 0));
    return Array.from({ length: n }, (_, j) => A.reduce((s, row, i) => s + row[j]! * r[i]!, 0));
  };
  for (let it = 0; it < maxIter; it++) {
    const w = gradient();
    let j = -1;
    let best = 0;
    for (let k = 0; k < n; k++) {
      const tol = 1e-10 * (colNorm[k]! * bNorm + 1e-300);
      if (!passive[k] && !blocked[k] && w[k]! > tol && w[k]! > best) {
        best = w[k]!;
        j = k;
      }
    }
    if (j < 0) break;
    passive[j] = true;
    let entered = false;
    for (let inner = 0; inner < 3 * n + 3; inner++) {
      const cols = passive.map((p, k) => (p ? k : -1)).filter((k) => k >= 0);
      const zc = leastSquares(A, b, cols);
      const z = new Array<number>(n).fill(0);
      cols.forEach((k, i) => (z[k] = zc[i]!));
      if (cols.every((k) => z[k]! > 0)) {
        for (let k = 0; k < n; k++) x[k] = z[k]!;
        entered = true;
        break;
      }
      let alpha = Infinity;
      for (const k of cols) {
        if (z[k]! <= 0) alpha = Math.min(alpha, x[k]! / (x[k]! - z[k]!));
      }
      for (let k = 0; k < n; k++) x[k] = x[k]! + alpha * (z[k]! - x[k]!);
      for (const k of cols) {
        if (x[k]! <= 1e-14 || (z[k]! <= 0 && x[k]! <= 1e-12)) {
          passive[k] = false;
          x[k] = 0;
        }
      }
      if (!passive[j]) break; // the entering column could not stay: block it until x changes
    }
    if (entered) blocked.fill(false);
    else blocked[j] = true;
  }
  return x;
}

// ---------------------------------------------------------------------------------------------
// The fit

/** Tunables of the fit (defaults in DEFAULT_FIT_CONFIG). */
export interface FitConfig {
  /** curve knots, tokens; knots[0] must be 0. */
  knots: readonly number[];
  /** template tokens added to each logged PL. */
  templateTokens: number;
  /** weight of each short-prompt anchor row relative to one request row (each anchor is a mean of 3). */
  anchorWeight: number;
  /** use every n-th length of the TPOT table. */
  tpotStride: number;
  /** TPOT cells above this multiple of their row median are outliers and dropped. */
  tpotOutlierFactor: number;
  /** ridge weight on consecutive slope differences s_{j+1} − s_j (relative-error units per ms/token). */
  smoothing: number;
  /** outer iterations (compositions / conformance / attention slope) at most. */
  maxIter: number;
}

/** Defaults; see the module docstring for the reasons. */
export const DEFAULT_FIT_CONFIG: FitConfig = {
  knots: DEFAULT_KNOTS,
  templateTokens: CHAT_TEMPLATE_TOKENS,
  anchorWeight: 3,
  tpotStride: 32,
  tpotOutlierFactor: 2,
  smoothing: 0.1,
  maxIter: 30,
};

/** Measurements a fit uses. */
export interface FitData {
  bursts: readonly Burst[];
  tpot: TpotTable | null;
  anchors: readonly Anchor[];
}

/** Result of fitStepModel. */
export interface StepFit {
  step: StepModel;
  /** mean cold-start excess of the files whose first request shows one, ms (0 when none). */
  coldStartMs: number;
  coldStart: { file: string; excessMs: number }[];
  rows: { ttft: number; anchors: number; tpot: number };
  excluded: { firstBursts: number; incompleteBursts: number; nonconformingBursts: number; tpotOutliers: number };
  iterations: number;
  converged: boolean;
}

const COL_FIXED = 0;
const COL_PREFILL = 1;
const COL_DECODE = 2;
const COL_SLOPE0 = 3;

/** Amount of T inside knot segment j (1-based); the last segment extends past its knot. */
function segmentBasis(knots: readonly number[], tokens: number, out: number[], offset: number, scale = 1): void {
  const n = knots.length - 1;
  for (let j = 1; j <= n; j++) {
    const lo = knots[j - 1]!;
    const hi = knots[j]!;
    let o = tokens - lo;
    if (o <= 0) break;
    if (j < n && o > hi - lo) o = hi - lo;
    out[offset + j - 1]! += o * scale;
  }
}

/** Adds one step composition's basis (everything but the derived offsets) to a feature row. */
function addCompositionFeatures(knots: readonly number[], c: StepComposition, row: number[]): void {
  if (c.tokens === 0) return;
  row[COL_FIXED]! += 1;
  row[COL_PREFILL]! += c.prefillSeqs;
  row[COL_DECODE]! += c.decodeSeqs;
  segmentBasis(knots, c.tokens, row, COL_SLOPE0);
}

/** Derived (not fitted) part of a step's duration: attention at the current slopeLast + decode KV reads, ms. */
function derivedStepMs(step: StepModel, c: StepComposition): number {
  if (c.tokens === 0) return 0;
  return (slopeLast(step) * c.attnUnits) / step.attnTokens + step.kvReadMsPerToken * c.decodeCtxTokens;
}

/** StepModel from a coefficient vector θ (curve values = cumulative slopes × segment widths). */
function stepFromTheta(theta: readonly number[], knots: readonly number[], base: StepModel): StepModel {
  const nSeg = knots.length - 1;
  const values = [0];
  for (let j = 1; j <= nSeg; j++) values.push(values[j - 1]! + theta[COL_SLOPE0 + j - 1]! * (knots[j]! - knots[j - 1]!));
  return {
    ...base,
    fixedMs: theta[COL_FIXED]!,
    prefillSeqMs: theta[COL_PREFILL]!,
    decodeSeqMs: theta[COL_DECODE]!,
    knots: [...knots],
    values,
    apiMs: theta[COL_SLOPE0 + nSeg]!,
  };
}

/** Feature row and offset of one simulated request (steps of its busy period up to completion). */
function requestFeatures(r: BurstReplay, k: number, step: StepModel, knots: readonly number[], nCols: number): { x: number[]; offsetMs: number } {
  const x = new Array<number>(nCols).fill(0);
  const last = r.doneStep[k]!;
  const busyStart = r.steps[last]!.busyStartMs;
  let offsetMs = busyStart;
  for (let j = 0; j <= last; j++) {
    const s = r.steps[j]!;
    if (s.busyStartMs !== busyStart) continue;
    addCompositionFeatures(knots, s.comp, x);
    offsetMs += s.coldMs + derivedStepMs(step, s.comp);
  }
  x[nCols - 1] = 1; // apiMs
  return { x, offsetMs };
}

/** Key of a burst for bookkeeping. */
function burstKey(b: Burst): string {
  return `${b.file}|${b.bs}|${b.pl}|${b.repeat}`;
}

/** Indices of each file's first burst. */
function firstBurstKeys(bursts: readonly Burst[]): Set<string> {
  const seen = new Set<string>();
  const out = new Set<string>();
  for (const b of bursts) {
    if (!seen.has(b.file)) {
      seen.add(b.file);
      out.add(burstKey(b));
    }
  }
  return out;
}

/** A profile with `step` swapped in. */
function withStep(p: Profile, step: StepModel): Profile {
  return { ...p, step };
}

/**
 * Fits the step model of `base` (whose engine settings, model, hardware and derived constants
 * attnTokens / kvReadMsPerToken / frontendMsPerRequest are kept) to the data. See the module
 * docstring for the method.
 */
export function fitStepModel(base: Profile, data: FitData, cfg: FitConfig = DEFAULT_FIT_CONFIG): StepFit {
  const knots = cfg.knots;
  if (knots[0] !== 0) throw new Error('fit: knots[0] must be 0');
  const nSeg = knots.length - 1;
  const nCols = COL_SLOPE0 + nSeg + 1;
  // initial guess: 20 ms per step, 1.4 ms per token, 10 ms API
  let theta = new Array<number>(nCols).fill(0);
  theta[COL_FIXED] = 20;
  for (let j = 0; j < nSeg; j++) theta[COL_SLOPE0 + j] = 1.4;
  theta[nCols - 1] = 10;
  let step = stepFromTheta(theta, knots, base.step);
  const first = firstBurstKeys(data.bursts);
  let prevConforming = '';
  let iterations = 0;
  let converged = false;
  let counts = { ttft: 0, anchors: 0, tpot: 0 };
  let excluded = { firstBursts: 0, incompleteBursts: 0, nonconformingBursts: 0, tpotOutliers: 0 };
  const replayCache = new Map<string, BurstReplay>();
  for (let it = 0; it < cfg.maxIter; it++) {
    iterations = it + 1;
    replayCache.clear();
    const prof = withStep(base, step);
    const replay = (bs: number, p: number): BurstReplay => {
      const key = `${bs}|${p}`;
      let r = replayCache.get(key);
      if (!r) {
        r = replayBurst(prof, bs, p);
        replayCache.set(key, r);
      }
      return r;
    };
    const A: number[][] = [];
    const y: number[] = [];
    const conforming: string[] = [];
    counts = { ttft: 0, anchors: 0, tpot: 0 };
    excluded = { firstBursts: 0, incompleteBursts: 0, nonconformingBursts: 0, tpotOutliers: 0 };
    for (const b of data.bursts) {
      if (first.has(burstKey(b))) {
        excluded.firstBursts++;
        continue;
      }
      if (!b.complete) {
        excluded.incompleteBursts++;
        continue;
      }
      const r = replay(b.bs, b.pl + cfg.templateTokens);
      const measured = b.requests.map((q) => q.ttftMs);
      const mOrder = argsort(measured);
      const sorted = mOrder.map((i) => measured[i]!);
      if (!burstConforms(r, sorted)) {
        excluded.nonconformingBursts++;
        continue;
      }
      conforming.push(burstKey(b));
      const sOrder = argsort(r.ttftMs);
      for (let rank = 0; rank < b.bs; rank++) {
        const q = b.requests[mOrder[rank]!]!;
        if (q.fileFirst) continue;
        const { x, offsetMs } = requestFeatures(r, sOrder[rank]!, step, knots, nCols);
        const w = 1 / q.ttftMs;
        A.push(x.map((v) => v * w));
        y.push((q.ttftMs - offsetMs) * w);
        counts.ttft++;
      }
    }
    for (const a of data.anchors) {
      const r = replay(1, a.promptTokens);
      const { x, offsetMs } = requestFeatures(r, 0, step, knots, nCols);
      const w = cfg.anchorWeight / a.ttftMs;
      A.push(x.map((v) => v * w));
      y.push((a.ttftMs - offsetMs) * w);
      counts.anchors++;
    }
    if (data.tpot) {
      for (const row of data.tpot.rows) {
        const med = median(row.tpotMs);
        for (let i = 0; i < data.tpot.lengths.length; i += cfg.tpotStride) {
          const v = row.tpotMs[i]!;
          if (v > cfg.tpotOutlierFactor * med) {
            excluded.tpotOutliers++;
            continue;
          }
          const L = data.tpot.lengths[i]!;
          const bs = row.batchSize;
          const c: StepComposition = { tokens: bs, prefillSeqs: 0, decodeSeqs: bs, attnUnits: 0, decodeCtxTokens: bs * L };
          const x = new Array<number>(nCols).fill(0);
          addCompositionFeatures(knots, c, x);
          const w = 1 / v;
          A.push(x.map((u) => u * w));
          y.push((v - derivedStepMs(step, c)) * w);
          counts.tpot++;
        }
      }
    }
    if (cfg.smoothing > 0) {
      for (let j = 0; j + 1 < nSeg; j++) {
        const row = new Array<number>(nCols).fill(0);
        row[COL_SLOPE0 + j] = -cfg.smoothing;
        row[COL_SLOPE0 + j + 1] = cfg.smoothing;
        A.push(row);
        y.push(0);
      }
    }
    if (A.length < nCols) throw new Error(`fit: ${A.length} rows for ${nCols} unknowns`);
    const next = nnls(A, y);
    const change = Math.max(...next.map((v, i) => Math.abs(v - theta[i]!) / Math.max(1, Math.abs(v))));
    const conf = conforming.join(',');
    theta = next;
    step = stepFromTheta(theta, knots, base.step);
    if (change < 1e-9 && conf === prevConforming) {
      converged = true;
      break;
    }
    prevConforming = conf;
  }
  // cold start: excess of each file's first request over its warm simulation
  const prof = withStep(base, step);
  const coldStart: { file: string; excessMs: number }[] = [];
  for (const b of data.bursts) {
    if (!first.has(burstKey(b)) || !b.complete) continue;
    const e = coldExcess(prof, b, cfg.templateTokens);
    if (e !== null && e.cold) coldStart.push({ file: basename(b.file), excessMs: e.excessMs });
  }
  const coldStartMs = coldStart.length ? coldStart.reduce((s, c) => s + c.excessMs, 0) / coldStart.length : 0;
  return { step, coldStartMs, coldStart, rows: counts, excluded, iterations, converged };
}

/**
 * Cold-start excess of the burst holding a file's first request: measured TTFT of that request
 * minus the warm simulated TTFT of the same rank. `cold` when it exceeds max(200 ms, the simulated
 * value) — a warm server measures within a few % of the model, a cold one ~0.7–0.9 s slower.
 */
function coldExcess(profile: Profile, b: Burst, templateTokens: number): { excessMs: number; cold: boolean } | null {
  const idx = b.requests.findIndex((q) => q.fileFirst);
  if (idx < 0) return null;
  const r = replayBurst(profile, b.bs, b.pl + templateTokens);
  const measured = b.requests.map((q) => q.ttftMs);
  const rank = argsort(measured).indexOf(idx);
  const sim = [...r.ttftMs].sort((a, c) => a - c)[rank]!;
  const excessMs = measured[idx]! - sim;
  return { excessMs, cold: excessMs > Math.max(200, sim) };
}

/** argmin_c Σ w_i·|c − y_i| (a weighted median; the smallest minimiser). */
function weightedMedian(y: readonly number[], w: readonly number[]): number {
  const idx = argsort(y);
  const half = w.reduce((s, x) => s + x, 0) / 2;
  let acc = 0;
  for (const i of idx) {
    acc += w[i]!;
    if (acc >= half) return y[i]!;
  }
  return y[idx[idx.length - 1]!]!;
}

function median(v: readonly number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

// ---------------------------------------------------------------------------------------------
// Check: replay logged bursts and compare TTFTs

/** How a file's first burst is replayed. auto: cold when its first request shows a cold start. */
export type ColdStartMode = 'auto' | 'on' | 'off';

/** One scored (or skipped) request of a check. */
export interface CheckedRequest {
  file: string;
  line: number;
  bs: number;
  pl: number;
  repeat: number;
  measuredMs: number;
  simulatedMs: number;
  /** |sim − measured| / measured. */
  relErr: number;
  /** the file's first request (cold start): not scored. */
  skipped: boolean;
  /** its burst's measured grouping matches the simulated one. */
  conforming: boolean;
  /** rank of the request in its burst (0 = fastest). */
  rank: number;
  /** its burst was replayed on a cold instance. */
  cold: boolean;
}

/** Per batch size statistics of a check. */
export interface BsCheck {
  bursts: number;
  nonconformingBursts: number;
  requests: number;
  /** mean |sim − measured| / measured over scored requests, %. */
  mape: number;
  conformingRequests: number;
  /** the same over requests of conforming bursts, %. */
  conformingMape: number;
  /**
   * Lower bound of `mape` for any deterministic replay, %: every repeat of a (file, BS, PL) gets the
   * same simulated sorted TTFTs, so the best possible value at each rank is the 1/measured-weighted
   * median of the repeats' measured values at that rank. Frontend races between repeats keep it > 0.
   */
  floorMape: number;
}

/** Result of checkBursts / checkProfile. */
export interface CheckReport {
  profile: string;
  files: string[];
  bursts: number;
  incompleteBursts: number;
  coldBursts: number;
  requests: number;
  skippedRequests: number;
  /** all scored requests, %. */
  ttftMape: number;
  /** requests of conforming bursts, %. */
  conformingMape: number;
  nonconformingBursts: number;
  byBs: Record<string, BsCheck>;
  detail: CheckedRequest[];
}

/**
 * Replays every complete burst through the instance model and pairs simulated and measured
 * per-request TTFTs, both sorted within the burst; each file's first request is skipped. A file's
 * first burst is replayed on a cold instance (coldStartMs on its first step) per `coldStart`.
 */
export function checkBursts(profile: Profile, bursts: readonly Burst[], opts: { coldStart?: ColdStartMode; templateTokens?: number } = {}): CheckReport {
  const mode = opts.coldStart ?? 'auto';
  const tpl = opts.templateTokens ?? CHAT_TEMPLATE_TOKENS;
  const detail: CheckedRequest[] = [];
  const files: string[] = [];
  let incomplete = 0;
  let coldBursts = 0;
  let nonconf = 0;
  const perBs = new Map<number, { bursts: number; nonconf: number }>();
  const cache = new Map<string, BurstReplay>();
  for (const b of bursts) {
    if (!files.includes(b.file)) files.push(b.file);
    if (!b.complete) {
      incomplete++;
      continue;
    }
    const p = b.pl + tpl;
    let cold = false;
    if (b.requests.some((q) => q.fileFirst) && mode !== 'off') {
      cold = mode === 'on' || (coldExcess(profile, b, tpl)?.excessMs ?? 0) > profile.coldStartMs / 2;
    }
    let r: BurstReplay;
    if (cold) {
      r = replayBurst(profile, b.bs, p, { coldStartMs: profile.coldStartMs });
      coldBursts++;
    } else {
      const key = `${b.bs}|${p}`;
      r = cache.get(key) ?? replayBurst(profile, b.bs, p);
      cache.set(key, r);
    }
    const measured = b.requests.map((q) => q.ttftMs);
    const mOrder = argsort(measured);
    const sim = [...r.ttftMs].sort((a, c) => a - c);
    const conforming = burstConforms(
      r,
      mOrder.map((i) => measured[i]!),
    );
    const s = perBs.get(b.bs) ?? { bursts: 0, nonconf: 0 };
    s.bursts++;
    if (!conforming) {
      s.nonconf++;
      nonconf++;
    }
    perBs.set(b.bs, s);
    mOrder.forEach((i, rank) => {
      const q = b.requests[i]!;
      detail.push({
        file: q.file,
        line: q.line,
        bs: b.bs,
        pl: b.pl,
        repeat: b.repeat,
        measuredMs: q.ttftMs,
        simulatedMs: sim[rank]!,
        relErr: Math.abs(sim[rank]! - q.ttftMs) / q.ttftMs,
        skipped: q.fileFirst,
        conforming,
        rank,
        cold,
      });
    });
  }
  const mape = (rows: CheckedRequest[]): number => (rows.length ? (100 * rows.reduce((s, d) => s + d.relErr, 0)) / rows.length : NaN);
  const scored = detail.filter((d) => !d.skipped);
  // best deterministic prediction per (file, BS, PL, cold, rank): weighted median of the repeats
  const groups = new Map<string, number[]>();
  for (const d of scored) {
    const k = `${d.file}|${d.bs}|${d.pl}|${d.cold}|${d.rank}`;
    const g = groups.get(k) ?? [];
    g.push(d.measuredMs);
    groups.set(k, g);
  }
  const floorErr = new Map<number, { sum: number; n: number }>();
  for (const [k, ys] of groups) {
    const bs = Number(k.split('|')[1]);
    const c = weightedMedian(ys, ys.map((y) => 1 / y));
    const f = floorErr.get(bs) ?? { sum: 0, n: 0 };
    for (const y of ys) f.sum += Math.abs(c - y) / y;
    f.n += ys.length;
    floorErr.set(bs, f);
  }
  const byBs: Record<string, BsCheck> = {};
  for (const bs of [...perBs.keys()].sort((a, b) => a - b)) {
    const rows = scored.filter((d) => d.bs === bs);
    const conf = rows.filter((d) => d.conforming);
    byBs[String(bs)] = {
      bursts: perBs.get(bs)!.bursts,
      nonconformingBursts: perBs.get(bs)!.nonconf,
      requests: rows.length,
      mape: mape(rows),
      conformingRequests: conf.length,
      conformingMape: mape(conf),
      floorMape: floorErr.has(bs) ? (100 * floorErr.get(bs)!.sum) / floorErr.get(bs)!.n : NaN,
    };
  }
  return {
    profile: profile.name,
    files,
    bursts: bursts.length,
    incompleteBursts: incomplete,
    coldBursts,
    requests: scored.length,
    skippedRequests: detail.length - scored.length,
    ttftMape: mape(scored),
    conformingMape: mape(scored.filter((d) => d.conforming)),
    nonconformingBursts: nonconf,
    byBs,
    detail,
  };
}

/** checkBursts over log files. */
export function checkProfile(profile: Profile, logFiles: readonly string[], opts: { coldStart?: ColdStartMode } = {}): CheckReport {
  return checkBursts(profile, readBursts(logFiles), opts);
}

// ---------------------------------------------------------------------------------------------
// Cross-validation and anchors

/** Leave-one-PL-out cross-validation result (MAPE %, held-out bursts of each PL scored by a fit without that PL). */
export interface CrossValidation {
  scheme: string;
  folds: number;
  ttftMape: number;
  conformingMape: number;
  byBs: Record<string, { mape: number; conformingMape: number; requests: number }>;
}

/** Refits without each distinct PL in turn and scores the held-out bursts (anchors and TPOT rows stay in). */
export function crossValidateByPl(base: Profile, data: FitData, cfg: FitConfig = DEFAULT_FIT_CONFIG): CrossValidation {
  const pls = [...new Set(data.bursts.map((b) => b.pl))].sort((a, b) => a - b);
  const all: CheckedRequest[] = [];
  for (const pl of pls) {
    const train = data.bursts.filter((b) => b.pl !== pl);
    const test = data.bursts.filter((b) => b.pl === pl);
    const fit = fitStepModel(base, { ...data, bursts: train }, cfg);
    const prof: Profile = { ...withStep(base, fit.step), coldStartMs: fit.coldStartMs };
    all.push(...checkBursts(prof, test, { templateTokens: cfg.templateTokens }).detail.filter((d) => !d.skipped));
  }
  const mape = (rows: CheckedRequest[]): number => (rows.length ? (100 * rows.reduce((s, d) => s + d.relErr, 0)) / rows.length : NaN);
  const byBs: CrossValidation['byBs'] = {};
  for (const bs of [...new Set(all.map((d) => d.bs))].sort((a, b) => a - b)) {
    const rows = all.filter((d) => d.bs === bs);
    byBs[String(bs)] = { mape: mape(rows), conformingMape: mape(rows.filter((d) => d.conforming)), requests: rows.length };
  }
  return {
    scheme: `leave-one-PL-out (${pls.length} folds; anchors and TPOT rows kept in every fold)`,
    folds: pls.length,
    ttftMape: mape(all),
    conformingMape: mape(all.filter((d) => d.conforming)),
    byBs,
  };
}

/** Simulated vs measured TTFT of each anchor (bs = 1). */
export function anchorErrors(profile: Profile, anchors: readonly Anchor[] = SHORT_PROMPT_ANCHORS): { promptTokens: number; measuredMs: number; simulatedMs: number; errPct: number }[] {
  return anchors.map((a) => {
    const sim = replayBurst(profile, 1, a.promptTokens).ttftMs[0]!;
    return { promptTokens: a.promptTokens, measuredMs: a.ttftMs, simulatedMs: sim, errPct: (100 * (sim - a.ttftMs)) / a.ttftMs };
  });
}

/** MAPE (%) of the step model on the TPOT table (pure decode steps, outliers dropped as in the fit). */
export function tpotMape(step: StepModel, t: TpotTable, outlierFactor = DEFAULT_FIT_CONFIG.tpotOutlierFactor): number {
  let s = 0;
  let n = 0;
  for (const row of t.rows) {
    const med = median(row.tpotMs);
    row.tpotMs.forEach((v, i) => {
      if (v > outlierFactor * med) return;
      const bs = row.batchSize;
      const pred = stepMs(step, { tokens: bs, prefillSeqs: 0, decodeSeqs: bs, attnUnits: 0, decodeCtxTokens: bs * t.lengths[i]! });
      s += Math.abs(pred - v) / v;
      n++;
    });
  }
  return (100 * s) / n;
}

// ---------------------------------------------------------------------------------------------
// Profiles

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
 * 8× H100 SXM Llama-3-70B, derived from the 5090 profile. Engine: max_model_len 131072 (the
 * model's context); vLLM V1 defaults of the OpenAI server on GPUs with ≥ 70 GiB that are not A100
 * (vllm/engine/arg_utils.py EngineArgs.get_batch_defaults, vLLM ≥ 0.9): max_num_batched_tokens
 * 8192 and max_num_seqs 1024.
 */
export function deriveH100Profile(src: Profile): Profile {
  return deriveProfile(src, {
    name: 'h100x8-llama3-70b',
    hardware: H100_SXM_X8,
    maxModelLen: 131072,
    maxNumBatchedTokens: 8192,
    maxNumSeqs: 1024,
    note:
      'Engine: max_model_len 131072; vLLM V1 OpenAI-server defaults for GPUs with >= 70 GiB other than A100 ' +
      '(vllm/engine/arg_utils.py get_batch_defaults): max_num_batched_tokens 8192, max_num_seqs 1024.',
  });
}

// ---------------------------------------------------------------------------------------------
// Output formatting and CLI

/** Writes a profile as pretty JSON (2-space indent, trailing newline), creating the directory. */
export function writeProfile(path: string, p: Profile): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(p, null, 2) + '\n');
}

/** Plain-text table of a check report. */
export function formatCheck(r: CheckReport): string {
  const lines: string[] = [];
  lines.push(
    `profile ${r.profile}: ${r.files.length} file(s), ${r.bursts} bursts (${r.incompleteBursts} incomplete, ${r.coldBursts} replayed cold), ` +
      `${r.requests} requests scored, ${r.skippedRequests} skipped (each file's first request)`,
  );
  lines.push(`ttft_mape ${r.ttftMape.toFixed(2)}%   conforming bursts: ${r.conformingMape.toFixed(2)}% (${r.nonconformingBursts} non-conforming bursts)`);
  lines.push('bs  bursts  nonconf  requests  ttft_mape  conforming_mape  floor_mape');
  for (const [bs, v] of Object.entries(r.byBs)) {
    lines.push(
      `${bs.padEnd(3)} ${String(v.bursts).padStart(6)}  ${String(v.nonconformingBursts).padStart(7)}  ${String(v.requests).padStart(8)}  ` +
        `${(v.mape.toFixed(2) + '%').padStart(9)}  ${(v.conformingMape.toFixed(2) + '%').padStart(15)}  ${(v.floorMape.toFixed(2) + '%').padStart(10)}`,
    );
  }
  lines.push('floor_mape: the lowest ttft_mape any deterministic replay can reach on these logs (repeats of a burst differ)');
  return lines.join('\n');
}

function fmtStep(s: StepModel): string {
  const v = s.knots.map((k, i) => `${k}:${s.values[i]!.toFixed(1)}`).join(' ');
  return (
    `fixedMs ${s.fixedMs.toFixed(3)}  prefillSeqMs ${s.prefillSeqMs.toFixed(3)}  decodeSeqMs ${s.decodeSeqMs.toFixed(3)}  apiMs ${s.apiMs.toFixed(3)}\n` +
    `curve (tokens:ms) ${v}  slopeLast ${slopeLast(s).toFixed(4)} ms/token\n` +
    `attnTokens ${s.attnTokens.toFixed(0)}  kvReadMsPerToken ${s.kvReadMsPerToken.toExponential(4)}  frontendMsPerRequest ${s.frontendMsPerRequest}`
  );
}

/** Registers `kvlab profile fit` and `kvlab profile check` on the root program (wired by sim/cli.ts). */
export function registerProfileCommands(program: Command): void {
  const profile = program.command('profile').description('calibrate and check instance timing profiles (engine/profiles/*.json)');

  profile
    .command('fit')
    .description(
      'fit the RTX 5090 step model from the CacheRoute logs (log-*.txt + tpot_benchmark_table.json) and write the measured ' +
        'profile and the derived H100 profile',
    )
    .option('--logs <dir>', 'profiling data directory (default ../shared/data/profiles/rtx5090x8-llama3-70b)')
    .option('--out <file>', 'measured profile output (default engine/profiles/rtx5090x8-llama3-70b.json)')
    .option('--derived-out <file>', 'derived H100 profile output (default: h100x8-llama3-70b.json next to --out)')
    .option('--no-derived', 'do not write the derived H100 profile')
    .option('--no-cv', 'skip the leave-one-PL-out cross-validation (faster)')
    .option('--json', 'print the fit summary as JSON')
    .action((flags: { logs?: string; out?: string; derivedOut?: string; derived: boolean; cv: boolean; json?: boolean }) => {
      const logsDir = resolve(flags.logs ?? defaultLogsDir());
      const out = resolve(flags.out ?? join(repoRoot(), 'engine', 'profiles', 'rtx5090x8-llama3-70b.json'));
      const r = fitRtx5090Profile(logsDir, { cv: flags.cv });
      writeProfile(out, r.profile);
      let derivedPath: string | null = null;
      if (flags.derived) {
        derivedPath = resolve(flags.derivedOut ?? join(dirname(out), 'h100x8-llama3-70b.json'));
        writeProfile(derivedPath, deriveH100Profile(r.profile));
      }
      if (flags.json) {
        process.stdout.write(JSON.stringify({ out, derivedOut: derivedPath, step: r.profile.step, coldStartMs: r.profile.coldStartMs, fit: r.profile.fit }, null, 2) + '\n');
        return;
      }
      const lines = [
        `wrote ${out}${derivedPath ? ` and ${derivedPath}` : ''}`,
        fmtStep(r.profile.step),
        `coldStartMs ${r.profile.coldStartMs}  rows: ${r.fit.rows.ttft} TTFT + ${r.fit.rows.anchors} anchors + ${r.fit.rows.tpot} TPOT; ` +
          `excluded bursts: ${r.fit.excluded.firstBursts} first, ${r.fit.excluded.nonconformingBursts} non-conforming, ${r.fit.excluded.incompleteBursts} incomplete; ` +
          `${r.fit.iterations} iterations${r.fit.converged ? '' : ' (not converged)'}`,
        formatCheck(r.check),
      ];
      if (r.cv) {
        lines.push(`cross-validation ${r.cv.scheme}: ttft_mape ${r.cv.ttftMape.toFixed(2)}%, conforming ${r.cv.conformingMape.toFixed(2)}%`);
        lines.push('  ' + Object.entries(r.cv.byBs).map(([bs, v]) => `bs${bs} ${v.mape.toFixed(2)}%/${v.conformingMape.toFixed(2)}%`).join('  '));
      }
      lines.push('short-prompt anchors (tokens: measured/simulated ms, err): ' + r.anchors.map((a) => `${a.promptTokens}: ${a.measuredMs}/${a.simulatedMs.toFixed(1)} (${a.errPct >= 0 ? '+' : ''}${a.errPct.toFixed(1)}%)`).join(', '));
      if (r.tpotMape !== null) lines.push(`tpot_mape ${r.tpotMape.toFixed(2)}%`);
      process.stdout.write(lines.join('\n') + '\n');
    });

  profile
    .command('check')
    .description(
      'replay logged bursts (B simultaneous requests of PL + 25 tokens) through the instance model and report the TTFT MAPE ' +
        '(simulated and measured sorted within each burst; each file\'s first request skipped)',
    )
    .requiredOption('--profile <p>', 'profile name (engine/profiles/<p>.json) or path')
    .requiredOption('--logs <file...>', 'TTFT log files ([TTFT] BS=b, PL=p, repeat=r, task=i/b, ttft=X.XXms lines)')
    .option('--cold-start <mode>', 'replay each file\'s first burst cold: auto (when its first request shows it), on, off', 'auto')
    .option('--json', 'print the report as JSON (without per-request detail)')
    .option('--detail', 'with --json: include every request')
    .action((flags: { profile: string; logs: string[]; coldStart: string; json?: boolean; detail?: boolean }) => {
      if (!['auto', 'on', 'off'].includes(flags.coldStart)) throw new Error(`--cold-start must be auto, on or off (got ${flags.coldStart})`);
      const p = loadProfile(flags.profile);
      const r = checkProfile(p, flags.logs, { coldStart: flags.coldStart as ColdStartMode });
      if (flags.json) {
        const { detail, ...rest } = r;
        const byBs = Object.fromEntries(Object.entries(r.byBs).map(([bs, v]) => [bs, { ...v, ttft_mape: v.mape }]));
        process.stdout.write(JSON.stringify({ ...rest, ttft_mape: r.ttftMape, byBs, ...(flags.detail ? { detail } : {}) }, null, 2) + '\n');
        return;
      }
      process.stdout.write(formatCheck(r) + '\n');
    });
}

