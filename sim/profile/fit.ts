/**
 * Calibration of the instance timing model (`StepModel`, engine/types.ts) from measured logs,
 * (`kvlab profile fit`; the check is sim/profile/check.ts).
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
import type { Profile, StepModel } from '../../engine/types.js';
import { curveMs, slopeLast, stepMs, type StepComposition } from '../../engine/costmodel.js';
import { argsort, coldExcess, replayBurst, burstConforms, type BurstReplay } from './burst.js';
import { checkBursts, type CheckedRequest } from './check.js';
import { nnls } from './nnls.js';
import { CHAT_TEMPLATE_TOKENS, DEFAULT_KNOTS, SHORT_PROMPT_ANCHORS, type Anchor, type Burst, type TpotTable } from './logs.js';
import { basename } from 'node:path';


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
  /**
   * the server was warmed up before the logs (kvlab profile collect): every file's first burst is
   * a fit row and no cold start is estimated (default false: the first burst may carry it).
   */
  warm?: boolean;
  /**
   * start the iterations from the base profile's step model (projected on the knots) instead of
   * the generic guess: the first conformance pass then groups the bursts as the base would.
   */
  startFromBase?: boolean;
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
export function withStep(p: Profile, step: StepModel): Profile {
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
  if (cfg.startFromBase) {
    const b = base.step;
    theta[COL_FIXED] = b.fixedMs;
    theta[COL_PREFILL] = b.prefillSeqMs;
    theta[COL_DECODE] = b.decodeSeqMs;
    for (let j = 0; j < nSeg; j++) theta[COL_SLOPE0 + j] = Math.max(0, (curveMs(b, knots[j + 1]!) - curveMs(b, knots[j]!)) / (knots[j + 1]! - knots[j]!));
    theta[nCols - 1] = b.apiMs;
  }
  let step = stepFromTheta(theta, knots, base.step);
  const first = cfg.warm ? new Set<string>() : firstBurstKeys(data.bursts);
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
        if (q.fileFirst && !cfg.warm) continue;
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
    if (A.length < nCols) throw new Error(`fit: ${A.length} rows for ${nCols} unknowns (${counts.ttft} TTFT, ${counts.anchors} anchor, ${counts.tpot} TPOT rows; excluded ${JSON.stringify(excluded)}): measure more batch sizes or prompt lengths`);
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

/** argmin_c Σ w_i·|c − y_i| (a weighted median; the smallest minimiser). */
export function weightedMedian(y: readonly number[], w: readonly number[]): number {
  const idx = argsort(y);
  const half = w.reduce((s, x) => s + x, 0) / 2;
  let acc = 0;
  for (const i of idx) {
    acc += w[i]!;
    if (acc >= half) return y[i]!;
  }
  return y[idx[idx.length - 1]!]!;
}

/** Median of `v` (mean of the two middle values for an even length); NaN-free input expected, `v` is not modified. */
export function median(v: readonly number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}



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

