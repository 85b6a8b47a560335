/**
 * Online calibration of the engine's step model from what a router observes: first-token and
 * completion times. A wrong profile (another GPU, another vLLM version, a derived profile) then
 * converges: in live mode this is what makes the engine's predictions track the real GPUs.
 *
 * The step model's terms form two groups (types.ts `StepModel`): the *prefill group* (fixedMs,
 * prefillSeqMs, the token curve and the attention term derived from it) and the *decode group*
 * (decodeSeqMs, kvReadMsPerToken). The engine keeps one factor per group, αp and αd, and
 * predicts with the profile's terms multiplied by them. Two kinds of equations, each linear in
 * (αp, αd), are collected on a sliding window:
 * - prefill lane, at every first token on an instance: the time the instance spent on this
 *   request's prefill, t_first − max(t_ready, previous first token there), equals
 *   αp·P + αd·D + kvLoad, where P and D are the request's predicted prefill work split by group
 *   (Prediction.workMs / workDecodeMs; the KV load is LMCache's, not the step model's). Over a
 *   busy period these lane times add up to the busy time, whatever the interleaving of chunks.
 *   Skipped when the instance already ran max_num_seqs requests as it became ready (it may
 *   have waited for a running slot, which is not prefill);
 * - decode, at every completion: t_done − t_first equals αp·Pd + αd·Dd, with Dd = (tokens − 1)
 *   decode-group step costs at the batch it joined, and Pd = (tokens − 1) prefill-group step
 *   costs plus the predicted prefill-group work of the requests whose prefill ran on that
 *   instance meanwhile (chunked prefill shares their steps).
 * Every `refreshEvery` equations the factors are refitted (`Calibrator.fit`: ratio-of-sums, the
 * prefill factor from the lane window, the decode factor from the decode window, each over its
 * last `window` equations), clamped to [minFactor, maxFactor]; with too few equations a factor
 * stays at 1. Decode equations are only taken when no prefill shared the request's decode steps
 * (the prefill and decode groups are otherwise too entangled to separate from end-to-end times).
 */
import type { Profile, StepModel } from './types.js';

/** Options of the online calibration. */
export interface CalibrationOptions {
  /** sliding window, equations (both kinds together). */
  window: number;
  /** refit every this many new equations. */
  refreshEvery: number;
  /** equations needed before the first fit. */
  minEquations: number;
  minFactor: number;
  maxFactor: number;
  /**
   * the decode factor is refitted only when the decode group is at least this share of the
   * decode window's predicted time, ΣD / (ΣP + ΣD): its estimate (Σobs − αp·ΣP) / ΣD carries the
   * prefill factor's error × ΣP/ΣD, so where the decode group is a sliver of every step (70B on
   * 8 × H100: the weights read, in the prefill group's fixed and curve terms, is ~97 % of a decode
   * step) it is not identifiable from end-to-end times, and it does not matter for predictions.
   */
  minDecodeShare: number;
}

/**
 * Defaults: a window of 512 equations, refit every 32, first fit after 32, factors in [0.2, 5],
 * the decode factor refitted when the decode group is >= 10 % of the decode window's time (a
 * lane-fit error of 2 % in αp then moves αd by <= 18 %).
 */
export const CALIBRATION_DEFAULTS: CalibrationOptions = { window: 512, refreshEvery: 32, minEquations: 32, minFactor: 0.2, maxFactor: 5, minDecodeShare: 0.1 };

/** The calibrated factors of the step model's prefill and decode groups. */
export interface StepFactors {
  prefill: number;
  decode: number;
}

/** Two sliding windows of equations and the factors fitted from them (module doc). */
export class Calibrator {
  readonly opts: CalibrationOptions;
  readonly factors: StepFactors = { prefill: 1, decode: 1 };
  private readonly lane: Window;
  private readonly decode: Window;
  private sinceFit = 0;
  /** refits so far (a new profile view is due after each). */
  fits = 0;

  constructor(opts: Partial<CalibrationOptions> = {}) {
    this.opts = { ...CALIBRATION_DEFAULTS, ...opts };
    if (!(this.opts.window >= 2) || !(this.opts.refreshEvery >= 1)) throw new Error('calibration: window must be >= 2 and refreshEvery >= 1');
    this.lane = new Window(this.opts.window);
    this.decode = new Window(this.opts.window);
  }

  /**
   * A prefill-lane equation obs ≈ αp·P + αd·D (ms). Ignored when not finite, obs < 0 or P <= 0.
   * @returns true when the factors were refitted (the engine then rebuilds its profile view)
   */
  addLane(P: number, D: number, obs: number): boolean {
    if (!valid(P, D, obs) || P <= 0) return false;
    this.lane.push(P, D, obs);
    return this.maybeFit();
  }

  /** A decode equation obs ≈ αp·P + αd·D (ms), D > 0. Same contract as `addLane`. */
  addDecode(P: number, D: number, obs: number): boolean {
    if (!valid(P, D, obs) || D <= 0) return false;
    this.decode.push(P, D, obs);
    return this.maybeFit();
  }

  private maybeFit(): boolean {
    if (++this.sinceFit < this.opts.refreshEvery) return false;
    if (this.lane.n + this.decode.n < this.opts.minEquations) return false;
    this.sinceFit = 0;
    this.fit();
    return true;
  }

  /**
   * Ratio-of-sums estimates, each group from its own window with the other factor fixed
   * (robust to the interleaving of chunks: over a busy period the lane times add up):
   * αp = Σ(obs − αd·D) / ΣP over the lane window, αd = Σ(obs − αp·P) / ΣD over the decode
   * window; two rounds, clamped. A window with fewer than `minEquations` keeps its factor, and
   * the decode factor stays while the decode group is under `minDecodeShare` of its window.
   */
  private fit(): void {
    const { minFactor: lo, maxFactor: hi, minEquations, minDecodeShare } = this.opts;
    const clamp = (x: number) => (x < lo ? lo : x > hi ? hi : x);
    let ap = this.factors.prefill;
    let ad = this.factors.decode;
    for (let round = 0; round < 2; round++) {
      if (this.lane.n >= minEquations) {
        const [sp, sd, so] = this.lane.sums();
        if (sp > 0) ap = clamp((so - ad * sd) / sp);
      }
      if (this.decode.n >= minEquations) {
        const [sp, sd, so] = this.decode.sums();
        if (sd > 0 && sd >= minDecodeShare * (sp + sd)) ad = clamp((so - ap * sp) / sd);
      }
    }
    this.factors.prefill = ap;
    this.factors.decode = ad;
    this.fits++;
  }
}

function valid(P: number, D: number, obs: number): boolean {
  return Number.isFinite(P) && Number.isFinite(D) && Number.isFinite(obs) && obs >= 0 && P >= 0 && D >= 0;
}

/** A ring of [P, D, obs] rows with running sums. */
class Window {
  private readonly rows: Float64Array;
  n = 0;
  private head = 0;
  constructor(readonly size: number) {
    this.rows = new Float64Array(size * 3);
  }
  push(P: number, D: number, obs: number): void {
    const o = this.head * 3;
    this.rows[o] = P;
    this.rows[o + 1] = D;
    this.rows[o + 2] = obs;
    this.head = (this.head + 1) % this.size;
    if (this.n < this.size) this.n++;
  }
  /** [ΣP, ΣD, Σobs] over the window. */
  sums(): [number, number, number] {
    let p = 0;
    let d = 0;
    let o = 0;
    for (let k = 0; k < this.n; k++) {
      p += this.rows[k * 3]!;
      d += this.rows[k * 3 + 1]!;
      o += this.rows[k * 3 + 2]!;
    }
    return [p, d, o];
  }
}

/**
 * The profile with its step model's prefill-group terms × `f.prefill` and decode-group terms
 * × `f.decode` (a new object; the API and frontend overheads and the KV load stay). Used for
 * the calibrated view and for the mismatched-predictor experiments (`--engine-scale`).
 */
export function scaleProfile(p: Profile, f: StepFactors): Profile {
  const s: StepModel = p.step;
  return {
    ...p,
    step: {
      ...s,
      fixedMs: s.fixedMs * f.prefill,
      prefillSeqMs: s.prefillSeqMs * f.prefill,
      values: s.values.map((v) => v * f.prefill),
      decodeSeqMs: s.decodeSeqMs * f.decode,
      kvReadMsPerToken: s.kvReadMsPerToken * f.decode,
    },
  };
}
