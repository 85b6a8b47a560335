/**
 * Seeded random variates for the workload generators (seedrandom underneath).
 * Every function takes the generator explicitly; nothing here touches Math.random.
 */
import seedrandom from 'seedrandom';

/** A uniform generator on [0, 1). */
export type Rng = () => number;

/** A seeded uniform generator; the same seed (and stream name) gives the same sequence. */
export function makeRng(seed: number | string, stream = ''): Rng {
  const g = seedrandom(`kvlab/${String(seed)}/${stream}`);
  return () => g();
}

/** Standard normal variate (Box–Muller). */
export function normal(rng: Rng): number {
  const u = 1 - rng(); // (0, 1]
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

/** Lognormal variate with the given median and log-space sigma, rounded and clamped to [min, max]. */
export function lognormalInt(rng: Rng, median: number, sigma: number, min: number, max: number): number {
  const x = Math.round(median * Math.exp(sigma * normal(rng)));
  return Math.min(max, Math.max(min, x));
}

/** Exponential variate with the given mean. */
export function exponential(rng: Rng, mean: number): number {
  return -mean * Math.log(1 - rng());
}

/** Gamma variate (shape k > 0, scale theta), Marsaglia–Tsang; shape < 1 via the U^(1/k) boost. */
export function gamma(rng: Rng, shape: number, scale: number): number {
  if (shape < 1) return gamma(rng, shape + 1, scale) * Math.pow(1 - rng(), 1 / shape);
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let x: number;
    let v: number;
    do {
      x = normal(rng);
      v = 1 + c * x;
    } while (v <= 0);
    v = v * v * v;
    const u = 1 - rng();
    if (Math.log(u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return d * v * scale;
  }
}

/**
 * Gamma inter-arrival time with the given mean (ms) and coefficient of variation
 * (cv = 1 is Poisson; larger is burstier): shape 1/cv², scale mean·cv².
 */
export function gammaGap(rng: Rng, mean: number, cv: number): number {
  const shape = 1 / (cv * cv);
  return gamma(rng, shape, mean / shape);
}

/**
 * Samples ranks 0..n-1 with P(rank r) ∝ 1/(r+1)^s (s = 0: uniform), by binary search on the CDF.
 */
export class ZipfSampler {
  private readonly cdf: Float64Array;

  constructor(
    readonly n: number,
    readonly s: number,
  ) {
    if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`Zipf needs n >= 1, got ${n}`);
    if (!Number.isFinite(s) || s < 0) throw new RangeError(`Zipf exponent must be >= 0, got ${s}`);
    this.cdf = new Float64Array(n);
    let acc = 0;
    for (let r = 0; r < n; r++) {
      acc += 1 / Math.pow(r + 1, s);
      this.cdf[r] = acc;
    }
    for (let r = 0; r < n; r++) this.cdf[r]! /= acc;
  }

  /** Probability of rank r. */
  p(r: number): number {
    return this.cdf[r]! - (r > 0 ? this.cdf[r - 1]! : 0);
  }

  /** One rank in [0, n). */
  sample(rng: Rng): number {
    const u = rng();
    let lo = 0;
    let hi = this.n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.cdf[mid]! > u) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
}
