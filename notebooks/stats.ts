/**
 * Statistics for reports: confidence intervals across seeds, paired relative changes, CDF
 * quantiles, histograms and downsampling. Built on simple-statistics; everything here is pure.
 */
import { gammaln, mean as ssMean, quantileSorted, sampleStandardDeviation } from 'simple-statistics';

/**
 * Two-sided 95 % critical values of Student's t distribution, t(0.975; df), for the degrees of
 * freedom in `T_DF`. These are the standard table values (e.g. NIST/SEMATECH e-Handbook of
 * Statistical Methods, section 1.3.6.7.2, "Critical values of the Student's t distribution"),
 * to 4 decimals; test/notebooks-stats.test.ts checks them against an independent numerical
 * integration of the t density.
 */
const T_DF = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 40, 50, 60, 80, 100, 120];
const T_975 = [
  12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.306, 2.2622, 2.2281, 2.201, 2.1788, 2.1604, 2.1448, 2.1314,
  2.1199, 2.1098, 2.1009, 2.093, 2.086, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
  2.0211, 2.0086, 2.0003, 1.9901, 1.984, 1.9799,
];
/** t(0.975; infinity) = z(0.975). */
const Z_975 = 1.95996;

/**
 * P(|T| <= t) for Student's t with `df` degrees of freedom: Simpson's rule on the density
 * Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · (1 + x²/ν)^(-(ν+1)/2) over [0, t] (2,000 intervals; the density is
 * smooth, so the error is far below 1e-6 for t < 50).
 */
export function tCoverage(t: number, df: number): number {
  const logC = gammaln((df + 1) / 2) - gammaln(df / 2) - 0.5 * Math.log(df * Math.PI);
  const pdf = (x: number): number => Math.exp(logC - ((df + 1) / 2) * Math.log1p((x * x) / df));
  const n = 2000;
  const h = t / n;
  let sum = pdf(0) + pdf(t);
  for (let i = 1; i < n; i++) sum += (i % 2 ? 4 : 2) * pdf(i * h);
  return (2 * sum * h) / 3;
}

const fractionalCache = new Map<number, number>();

/**
 * Student-t quantile t(0.975; df): the multiplier of the standard error for a two-sided 95 %
 * confidence interval.
 * - integer df <= 30 and df in {40, 50, 60, 80, 100, 120}: the table values above;
 * - df > 30: linear interpolation in 1/df between table entries, and towards the normal 1.96
 *   above 120 (error < 1e-4);
 * - fractional df < 30 (Welch's intervals): solved numerically, bisection on `tCoverage` (cached).
 * @param df degrees of freedom, > 0 (may be fractional).
 * @throws RangeError when df is not a positive finite number.
 */
export function tCritical95(df: number): number {
  if (!(df > 0) || !Number.isFinite(df)) throw new RangeError(`tCritical95: degrees of freedom must be > 0, got ${df}`);
  const last = T_DF.length - 1;
  if (df >= T_DF[last]!) {
    const x0 = 1 / T_DF[last]!;
    return Z_975 + ((T_975[last]! - Z_975) * (1 / df)) / x0;
  }
  const exact = T_DF.indexOf(df);
  if (exact >= 0) return T_975[exact]!;
  if (df < 30) {
    const cached = fractionalCache.get(df);
    if (cached !== undefined) return cached;
    // bracket: t(df) lies between the values of the neighbouring integer df (or [12.7, 1000] below 1)
    let lo = df < 1 ? T_975[0]! : T_975[Math.ceil(df) - 1]!;
    let hi = df < 1 ? 1000 : T_975[Math.floor(df) - 1]!;
    for (let i = 0; i < 60 && hi - lo > 1e-7; i++) {
      const mid = (lo + hi) / 2;
      if (tCoverage(mid, df) < 0.95) lo = mid;
      else hi = mid;
    }
    const t = (lo + hi) / 2;
    fractionalCache.set(df, t);
    return t;
  }
  let i = 0;
  while (T_DF[i + 1]! < df) i++;
  const d0 = T_DF[i]!;
  const d1 = T_DF[i + 1]!;
  const w = (1 / df - 1 / d1) / (1 / d0 - 1 / d1);
  return T_975[i + 1]! + w * (T_975[i]! - T_975[i + 1]!);
}

/** A mean with its two-sided 95 % Student-t confidence interval. */
export interface MeanCI {
  /** number of values (seeds). */
  n: number;
  mean: number;
  /** lower and upper bound; equal to the mean when n = 1 (half-width 0), NaN when n = 0. */
  lo: number;
  hi: number;
  halfWidth: number;
}

/**
 * Mean and 95 % CI (Student t, n-1 degrees of freedom) of values, typically one per seed.
 * Non-finite values are ignored. n = 1 gives half-width 0 (as docs/FORMATS.md specifies for ab.json);
 * n = 0 gives NaN everywhere.
 */
export function meanCI95(values: readonly number[]): MeanCI {
  const v = values.filter((x) => Number.isFinite(x));
  const n = v.length;
  if (n === 0) return { n, mean: NaN, lo: NaN, hi: NaN, halfWidth: NaN };
  const m = ssMean(v);
  if (n === 1) return { n, mean: m, lo: m, hi: m, halfWidth: 0 };
  const hw = (tCritical95(n - 1) * sampleStandardDeviation(v)) / Math.sqrt(n);
  return { n, mean: m, lo: m - hw, hi: m + hw, halfWidth: hw };
}

/** Relative change of a strategy's metric against the baseline's. */
export interface RelativeChange {
  /** (mean(x) - mean(base)) / mean(base); e.g. -0.31 = 31 % lower than the baseline. */
  change: number;
  /** 95 % CI of the change (same scaling), [lo, hi]. */
  lo: number;
  hi: number;
  /** true when n >= 2 and the CI excludes zero. */
  significant: boolean;
  /** number of paired seeds (or min group size when unpaired). */
  n: number;
  /** true when computed from per-seed paired differences, false for a Welch (unpaired) interval. */
  paired: boolean;
}

/**
 * Relative change of `x` against `base`, both keyed by seed. When at least one seed is common,
 * uses the paired per-seed differences d = x - base over the common seeds: change = mean(d) /
 * mean(base), CI = t-interval of mean(d) / mean(base) (the baseline mean is treated as fixed,
 * which is what docs/FORMATS.md describes for ab.json's vs_baseline). With no common seed it falls back
 * to Welch's unpaired interval of the difference of means. Returns null when either side has no
 * finite value or the baseline mean is 0.
 */
export function relativeChange(x: ReadonlyMap<number, number>, base: ReadonlyMap<number, number>): RelativeChange | null {
  const common = [...x.keys()].filter((s) => base.has(s) && Number.isFinite(x.get(s)!) && Number.isFinite(base.get(s)!));
  if (common.length > 0) {
    const bVals = common.map((s) => base.get(s)!);
    const bMean = ssMean(bVals);
    if (bMean === 0) return null;
    const ci = meanCI95(common.map((s) => x.get(s)! - base.get(s)!));
    const scale = Math.abs(bMean);
    const r = { change: ci.mean / scale, lo: ci.lo / scale, hi: ci.hi / scale };
    return { ...r, n: ci.n, paired: true, significant: ci.n >= 2 && (r.lo > 0 || r.hi < 0) };
  }
  const xv = [...x.values()].filter(Number.isFinite);
  const bv = [...base.values()].filter(Number.isFinite);
  if (xv.length === 0 || bv.length === 0) return null;
  const bMean = ssMean(bv);
  if (bMean === 0) return null;
  const diff = ssMean(xv) - bMean;
  const n = Math.min(xv.length, bv.length);
  let hw = 0;
  if (xv.length >= 2 && bv.length >= 2) {
    const sx = sampleStandardDeviation(xv) ** 2 / xv.length;
    const sb = sampleStandardDeviation(bv) ** 2 / bv.length;
    const se = Math.sqrt(sx + sb);
    const df = se === 0 ? xv.length + bv.length - 2 : (sx + sb) ** 2 / (sx ** 2 / (xv.length - 1) + sb ** 2 / (bv.length - 1));
    hw = tCritical95(df) * se;
  }
  const scale = Math.abs(bMean);
  const r = { change: diff / scale, lo: (diff - hw) / scale, hi: (diff + hw) / scale };
  return { ...r, n, paired: false, significant: xv.length >= 2 && bv.length >= 2 && (r.lo > 0 || r.hi < 0) };
}

/**
 * The probability levels at which a CDF is sampled: 0..1 in 160 even steps plus a denser tail
 * (0.991 ... 0.999, 0.9995), so that p99 and beyond stay visible. At most 200 points.
 */
export function cdfLevels(maxPoints = 200): number[] {
  const tail = [0.991, 0.992, 0.993, 0.994, 0.995, 0.996, 0.997, 0.998, 0.999, 0.9995];
  const even = Math.max(2, maxPoints - tail.length - 1);
  const levels = new Set<number>();
  for (let i = 0; i < even; i++) levels.add(Math.round((i / (even - 1)) * 1e6) / 1e6);
  for (const t of tail) levels.add(t);
  levels.add(1);
  return [...levels].sort((a, b) => a - b).slice(0, maxPoints);
}

/**
 * Empirical CDF of `values` reduced to at most `maxPoints` points [{value, p}]: the value at each
 * level of `cdfLevels` (p = fraction of values <= value). Non-finite values are dropped. Returns []
 * for no values.
 */
export function cdfPoints(values: readonly number[], maxPoints = 200): { value: number; p: number }[] {
  const v = values.filter(Number.isFinite).slice().sort((a, b) => a - b);
  if (v.length === 0) return [];
  return cdfLevels(maxPoints).map((p) => ({ value: quantileSorted(v, p), p }));
}

/** The p-quantile (0..1) of unsorted values, NaN when there are none. */
export function quantile(values: readonly number[], p: number): number {
  const v = values.filter(Number.isFinite).slice().sort((a, b) => a - b);
  return v.length === 0 ? NaN : quantileSorted(v, p);
}

/** One histogram bin: [start, end) and its count. */
export interface Bin {
  start: number;
  end: number;
  count: number;
}

/**
 * Histogram of `values` with `bins` equal bins over [q(clip), q(1-clip)] (quantiles, so a few
 * extreme outliers do not squash the chart); values outside are counted in the first/last bin.
 * Returns [] for no finite values; a single bin of width 1 when all values are equal.
 */
export function histogram(values: readonly number[], bins = 40, clip = 0.005): Bin[] {
  const v = values.filter(Number.isFinite).slice().sort((a, b) => a - b);
  if (v.length === 0) return [];
  let lo = quantileSorted(v, clip);
  let hi = quantileSorted(v, 1 - clip);
  if (!(hi > lo)) {
    lo = v[0]!;
    hi = v[v.length - 1]!;
  }
  if (!(hi > lo)) return [{ start: lo - 0.5, end: lo + 0.5, count: v.length }];
  const width = (hi - lo) / bins;
  const out: Bin[] = [];
  for (let i = 0; i < bins; i++) out.push({ start: lo + i * width, end: lo + (i + 1) * width, count: 0 });
  for (const x of v) {
    const i = Math.min(bins - 1, Math.max(0, Math.floor((x - lo) / width)));
    out[i]!.count++;
  }
  return out;
}

/**
 * At most `max` items of `items`, evenly spaced by index (deterministic: the same input gives the
 * same output). The first and last item are always kept when max >= 2.
 */
export function downsample<T>(items: readonly T[], max: number): T[] {
  if (items.length <= max) return items.slice();
  if (max <= 0) return [];
  if (max === 1) return [items[0]!];
  const out: T[] = [];
  const step = (items.length - 1) / (max - 1);
  for (let i = 0; i < max; i++) out.push(items[Math.round(i * step)]!);
  return out;
}

/** Rounds to 3 decimals (the precision of kvlab's files), keeping non-finite values as null. */
export function r3(x: number): number | null {
  return Number.isFinite(x) ? Math.round(x * 1000) / 1000 : null;
}
