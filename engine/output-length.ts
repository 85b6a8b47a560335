/**
 * Output-length predictor: what the engine assumes a request will generate when the client did
 * not send `max_tokens`. A real router never knows the true output length at decision time, so
 * nothing in the engine reads `TraceRequest.outputTokens`; this predictor learns from requests
 * that finished (their observed completion tokens, fed by the driver at `onComplete`).
 *
 * Follows AIBrix's `SimpleOutputPredictor` (vllm-project/aibrix @ e3e10f9e,
 * pkg/cache/output_predictor.go; window from pkg/cache/cache_init.go `movingWindow` = 240 s,
 * rotated in `MovingInterval` = 10 s slots): a moving window of finished requests grouped by
 * input length in log2 buckets. Differences, on purpose:
 * - buckets of log2 precision 0.1 (AIBrix's request-trace precision, pkg/cache/trace.go
 *   `RequestTracePrecision`) instead of whole log2 units;
 * - a deterministic, recency-weighted mean (slot weight 2^(−age / halfLife)) instead of
 *   AIBrix's weighted random draw over power-of-two output buckets (a point estimate booked as
 *   load must not add sampling noise);
 * - an empty bucket widens to its neighbours (up to ±1 octave), then to the whole window,
 *   before AIBrix's cold prediction (`OptimisticColdPrediction` = 1 token).
 *
 * Pure and allocation-free on `predict`; memory O(buckets × slots).
 */

/** Options of {@link OutputLengthPredictor} (ms, tokens). */
export interface OutputLengthOptions {
  /** sliding window, ms (AIBrix movingWindow 240 s). */
  windowMs: number;
  /** slot width of the window, ms (AIBrix MovingInterval 10 s). */
  slotMs: number;
  /** log2 bucket width (0.1 = buckets of ×1.072 in input length). */
  precision: number;
  /** recency half-life of a slot's weight, ms. */
  halfLifeMs: number;
  /** prediction with no history at all, tokens (AIBrix OptimisticColdPrediction = 1). */
  coldTokens: number;
}

/** Defaults: AIBrix's 240 s window in 10 s slots, log2 precision 0.1, half-life 120 s, cold 1 token. */
export const OUTPUT_LENGTH_DEFAULTS: OutputLengthOptions = { windowMs: 240_000, slotMs: 10_000, precision: 0.1, halfLifeMs: 120_000, coldTokens: 1 };

/** Log2 buckets up to 2^24 input tokens. */
const MAX_LOG2 = 24;

/** Sliding-window, recency-weighted output-length predictor (module doc). */
export class OutputLengthPredictor {
  readonly opts: OutputLengthOptions;
  private readonly nSlots: number;
  private readonly nBuckets: number;
  /** per (bucket, slot): Σ output tokens, count, and the slot's absolute number (-1 = empty). */
  private readonly sum: Float64Array;
  private readonly cnt: Float64Array;
  private readonly stamp: Float64Array;
  /** whole-window totals per slot (all buckets), same layout with one bucket. */
  private readonly allSum: Float64Array;
  private readonly allCnt: Float64Array;
  private readonly allStamp: Float64Array;
  /** per bucket, the newest slot number observed (-1 = never): empty buckets are skipped in O(1). */
  private readonly latest: Float64Array;
  /** weight of a slot by age (2^(−age · slot / halfLife)), precomputed. */
  private readonly weights: Float64Array;
  /** observations so far. */
  observed = 0;

  /** @throws Error when an option is not a positive finite number (coldTokens >= 1). */
  constructor(opts: Partial<OutputLengthOptions> = {}) {
    const o = { ...OUTPUT_LENGTH_DEFAULTS, ...opts };
    for (const k of ['windowMs', 'slotMs', 'precision', 'halfLifeMs'] as const) {
      if (!(o[k] > 0) || !Number.isFinite(o[k])) throw new Error(`output-length predictor: ${k} must be a positive number (got ${o[k]})`);
    }
    if (!(o.coldTokens >= 1) || !Number.isFinite(o.coldTokens)) throw new Error(`output-length predictor: coldTokens must be >= 1 (got ${o.coldTokens})`);
    this.opts = o;
    this.nSlots = Math.ceil(o.windowMs / o.slotMs) + 1;
    this.nBuckets = Math.ceil(MAX_LOG2 / o.precision) + 1;
    const n = this.nBuckets * this.nSlots;
    this.sum = new Float64Array(n);
    this.cnt = new Float64Array(n);
    this.stamp = new Float64Array(n).fill(-1);
    this.allSum = new Float64Array(this.nSlots);
    this.allCnt = new Float64Array(this.nSlots);
    this.allStamp = new Float64Array(this.nSlots).fill(-1);
    this.latest = new Float64Array(this.nBuckets).fill(-1);
    this.weights = new Float64Array(this.nSlots);
    for (let a = 0; a < this.nSlots; a++) this.weights[a] = Math.pow(2, (-a * o.slotMs) / o.halfLifeMs);
  }

  /** Bucket of an input length: round(log2(tokens) / precision), clamped. */
  bucket(inputTokens: number): number {
    const b = inputTokens > 1 ? Math.round(Math.log2(inputTokens) / this.opts.precision) : 0;
    return b < 0 ? 0 : b >= this.nBuckets ? this.nBuckets - 1 : b;
  }

  /**
   * A request with `inputTokens` finished at `now` (ms) after generating `outputTokens`.
   * Non-finite or non-positive values are ignored (never reach a prediction).
   */
  observe(inputTokens: number, outputTokens: number, now: number): void {
    if (!(outputTokens > 0) || !Number.isFinite(outputTokens) || !(inputTokens > 0) || !Number.isFinite(now)) return;
    const slotNo = Math.floor(now / this.opts.slotMs);
    const s = slotNo % this.nSlots;
    const b = this.bucket(inputTokens);
    if (slotNo > this.latest[b]!) this.latest[b] = slotNo;
    const k = b * this.nSlots + s;
    if (this.stamp[k] !== slotNo) {
      this.stamp[k] = slotNo;
      this.sum[k] = 0;
      this.cnt[k] = 0;
    }
    this.sum[k]! += outputTokens;
    this.cnt[k]!++;
    if (this.allStamp[s] !== slotNo) {
      this.allStamp[s] = slotNo;
      this.allSum[s] = 0;
      this.allCnt[s] = 0;
    }
    this.allSum[s]! += outputTokens;
    this.allCnt[s]!++;
    this.observed++;
  }

  /**
   * Predicted output tokens (>= 1, rounded) of a request with `inputTokens` arriving at `now`:
   * the recency-weighted mean of its bucket over the window; neighbours up to ±1 octave, then
   * the whole window, then `coldTokens` when empty.
   */
  predict(inputTokens: number, now: number): number {
    const b = this.bucket(inputTokens);
    const slotNo = Math.floor(now / this.opts.slotMs);
    let m = this.bucketMean(b, slotNo);
    if (m < 0) {
      const reach = Math.round(1 / this.opts.precision);
      for (let d = 1; d <= reach && m < 0; d++) {
        const lo = b - d >= 0 ? this.bucketMean(b - d, slotNo) : -1;
        const hi = b + d < this.nBuckets ? this.bucketMean(b + d, slotNo) : -1;
        if (lo >= 0 && hi >= 0) m = (lo + hi) / 2;
        else m = lo >= 0 ? lo : hi;
      }
    }
    if (m < 0) m = this.mean(this.allSum, this.allCnt, this.allStamp, 0, slotNo);
    if (m < 0) return this.opts.coldTokens;
    return Math.max(1, Math.round(m));
  }

  private bucketMean(b: number, slotNo: number): number {
    const age = slotNo - this.latest[b]!;
    if (this.latest[b]! < 0 || age >= this.nSlots - 1) return -1;
    return this.mean(this.sum, this.cnt, this.stamp, b * this.nSlots, slotNo);
  }

  /** Recency-weighted mean of one bucket's slots within the window; -1 when empty. */
  private mean(sum: Float64Array, cnt: Float64Array, stamp: Float64Array, off: number, slotNo: number): number {
    const n = this.nSlots;
    const maxAge = n - 1;
    const w = this.weights;
    let ws = 0;
    let wc = 0;
    for (let s = 0; s < n; s++) {
      const st = stamp[off + s]!;
      if (st < 0) continue;
      const age = slotNo - st;
      if (age < 0 || age >= maxAge) continue;
      ws += w[age]! * sum[off + s]!;
      wc += w[age]! * cnt[off + s]!;
    }
    return wc > 0 ? ws / wc : -1;
  }
}
