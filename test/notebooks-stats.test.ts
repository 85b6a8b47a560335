import { gammaln } from 'simple-statistics';
import { describe, expect, it } from 'vitest';
import { cdfLevels, cdfPoints, downsample, histogram, meanCI95, relativeChange, tCritical95 } from '../notebooks/stats.js';

/** P(|T| <= t) for Student's t with df degrees of freedom, by Simpson integration of the density. */
function tCoverage(t: number, df: number): number {
  const logC = gammaln((df + 1) / 2) - gammaln(df / 2) - 0.5 * Math.log(df * Math.PI);
  const pdf = (x: number): number => Math.exp(logC - ((df + 1) / 2) * Math.log(1 + (x * x) / df));
  const n = 20_000;
  const h = t / n;
  let s = pdf(0) + pdf(t);
  for (let i = 1; i < n; i++) s += (i % 2 ? 4 : 2) * pdf(i * h);
  return 2 * (s * h) / 3;
}

describe('tCritical95', () => {
  it('gives 95% two-sided coverage for table and interpolated degrees of freedom', () => {
    for (const df of [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 29, 30, 40, 60, 120]) {
      expect(tCoverage(tCritical95(df), df)).toBeCloseTo(0.95, 4);
    }
    // between table entries and fractional (Welch) df: interpolation in 1/df
    for (const df of [0.8, 1.2, 1.5, 2.5, 7.3, 29.5, 35, 45, 70, 90, 200, 1000]) {
      expect(Math.abs(tCoverage(tCritical95(df), df) - 0.95)).toBeLessThan(5e-4);
    }
  });

  it('decreases towards the normal quantile and rejects bad input', () => {
    expect(tCritical95(2)).toBeGreaterThan(tCritical95(3));
    expect(tCritical95(1e9)).toBeCloseTo(1.96, 2);
    expect(() => tCritical95(0)).toThrow(RangeError);
    expect(() => tCritical95(Number.NaN)).toThrow(RangeError);
  });
});

describe('meanCI95', () => {
  it('matches a hand computation', () => {
    // mean 2, sample sd 1, n 3: half-width = 4.3027 / sqrt(3)
    const ci = meanCI95([1, 2, 3]);
    expect(ci.mean).toBe(2);
    expect(ci.halfWidth).toBeCloseTo(4.3027 / Math.sqrt(3), 4);
    expect(ci.lo).toBeCloseTo(2 - ci.halfWidth, 10);
  });

  it('has half-width 0 for one value and NaN for none; ignores non-finite values', () => {
    expect(meanCI95([5])).toMatchObject({ n: 1, mean: 5, lo: 5, hi: 5, halfWidth: 0 });
    expect(Number.isNaN(meanCI95([]).mean)).toBe(true);
    expect(meanCI95([1, Number.NaN, 3]).n).toBe(2);
  });
});

describe('relativeChange', () => {
  const m = (...v: number[]) => new Map(v.map((x, i) => [i + 1, x]));

  it('pairs seeds: a consistent 20% drop is significant even with large between-seed spread', () => {
    const base = m(100, 300, 500);
    const x = m(80, 282, 478); // differences -20, -18, -22
    const r = relativeChange(x, base)!;
    expect(r.paired).toBe(true);
    expect(r.change).toBeCloseTo(-20 / 300, 10);
    expect(r.hi).toBeLessThan(0);
    expect(r.significant).toBe(true);
    // the same numbers without pairing (different seeds) are lost in the between-seed spread
    const unpaired = relativeChange(new Map([[7, 80], [8, 282], [9, 478]]), base)!;
    expect(unpaired.paired).toBe(false);
    expect(unpaired.significant).toBe(false);
  });

  it('is not significant when the per-seed differences change sign', () => {
    const r = relativeChange(m(110, 90, 105), m(100, 100, 100))!;
    expect(r.change).toBeCloseTo(0.05 / 3 * 1, 10);
    expect(r.lo).toBeLessThan(0);
    expect(r.hi).toBeGreaterThan(0);
    expect(r.significant).toBe(false);
  });

  it('never calls one seed significant, and falls back to Welch without common seeds', () => {
    expect(relativeChange(m(50), m(100))!.significant).toBe(false);
    const x = new Map([[4, 50], [5, 52], [6, 51]]);
    const r = relativeChange(x, m(100, 101, 99))!;
    expect(r.paired).toBe(false);
    expect(r.change).toBeCloseTo(-0.49, 10);
    expect(r.significant).toBe(true);
    expect(relativeChange(m(1), m(0))).toBeNull();
    expect(relativeChange(new Map(), m(1))).toBeNull();
  });
});

describe('cdf, histogram and downsampling', () => {
  it('samples a CDF at <= 200 levels including the tail and the maximum', () => {
    const levels = cdfLevels(200);
    expect(levels.length).toBeLessThanOrEqual(200);
    expect(levels[0]).toBe(0);
    expect(levels.at(-1)).toBe(1);
    expect(levels).toContain(0.999);
    const values = Array.from({ length: 10_000 }, (_, i) => i + 1);
    const pts = cdfPoints(values);
    expect(pts.length).toBeLessThanOrEqual(200);
    expect(pts.at(-1)!.value).toBe(10_000);
    expect(pts.find((p) => p.p === 0.5)!.value).toBeCloseTo(5000, -1);
    for (let i = 1; i < pts.length; i++) expect(pts[i]!.value).toBeGreaterThanOrEqual(pts[i - 1]!.value);
  });

  it('histogram keeps every value (outliers in the edge bins)', () => {
    const v = [...Array.from({ length: 1000 }, (_, i) => i % 100), 1e6, -1e6];
    const bins = histogram(v, 20);
    expect(bins).toHaveLength(20);
    expect(bins.reduce((a, b) => a + b.count, 0)).toBe(v.length);
    expect(bins[19]!.end).toBeLessThan(1000);
    expect(histogram([3, 3, 3])).toEqual([{ start: 2.5, end: 3.5, count: 3 }]);
    expect(histogram([])).toEqual([]);
  });

  it('downsample keeps ends, order and the limit', () => {
    const a = Array.from({ length: 10_001 }, (_, i) => i);
    const d = downsample(a, 2000);
    expect(d).toHaveLength(2000);
    expect(d[0]).toBe(0);
    expect(d.at(-1)).toBe(10_000);
    for (let i = 1; i < d.length; i++) expect(d[i]!).toBeGreaterThan(d[i - 1]!);
    expect(downsample([1, 2, 3], 10)).toEqual([1, 2, 3]);
  });
});
