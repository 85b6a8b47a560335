/**
 * The latency models peers fit offline, rebuilt here from the engine's profile the way each
 * project builds its own: a peer's router never uses kvlab's step model itself, only its fitted
 * regressor, so its predictions carry the same structural error they carry upstream.
 *
 * - CacheRoute (BJTU-ANT/CacheRoute @ 966be95, proxy/metrics/ttft_four_term_regressor.py
 *   `TTFTFourTermRegressor`, proxy/metrics/queue_predictor.py `queue_predictor`):
 *   ttft(B, L) = a·(B·L) + b·L + c·B + d, least squares over a benchmark table of batch sizes
 *   1..4 × prompt lengths 89..3801 (step 128; the grid of proxy/metrics/ttft_benchmark_table.json),
 *   clipped at 0, then the short-prompt anchors of `_SHORT_CALIB_ANCHORS_MS` (measured on the
 *   RTX 5090 rig: exact for L <= 115, a lower bound up to 345). The table's TTFT of B
 *   simultaneous prompts of L tokens is taken from the profile as the prefill of B·L tokens
 *   plus the API overhead.
 * - Mooncake (FAST'25 §4.1: "a polynomial regression model fitted with offline data" of the
 *   request length and the prefix-cache hit length): prefill(L, p) = c0 + c1·n + c2·n·p + c3·n²
 *   with n = L − p new tokens (the attention work n·(p + n/2) is in that span), least squares
 *   of the relative error over L (16 tokens to the context length, ×1.25 steps) and p / L in
 *   {0, 0.25, 0.5, 0.75, 0.9}.
 * Fits are cached per Profile object (a profile is immutable once loaded).
 */
import { prefillAloneMs } from './costmodel.js';
import { leastSquares } from './fit.js';
import type { Profile } from './types.js';

/** CacheRoute's four coefficients (ms). */
export interface FourTerm {
  a: number;
  b: number;
  c: number;
  d: number;
}

/** CacheRoute's short-prompt anchors (length tokens, TTFT ms), queue_predictor.py `_SHORT_CALIB_ANCHORS_MS`. */
export const CACHEROUTE_SHORT_ANCHORS: readonly (readonly [number, number])[] = [
  [0, 60.0],
  [10, 60.0],
  [35, 47.0],
  [45, 53.26],
  [55, 65.97],
  [65, 70.71],
  [75, 76.63],
  [89, 88.38],
  [95, 90.35],
  [105, 93.01],
  [115, 95.67],
  [303, 396.0],
  [345, 472.0],
];

const fourTermCache = new WeakMap<Profile, FourTerm>();

/** Fits (once per profile) CacheRoute's four-term TTFT regressor on the benchmark grid (module doc). */
export function cacherouteFit(p: Profile): FourTerm {
  let f = fourTermCache.get(p);
  if (f) return f;
  const rows: number[][] = [];
  const y: number[] = [];
  for (let B = 1; B <= 4; B++) {
    for (let L = 89; L <= 3801; L += 128) {
      rows.push([B * L, L, B, 1]);
      y.push(prefillAloneMs(p, 0, B * L) + p.step.apiMs);
    }
  }
  const [a, b, c, d] = leastSquares(rows, y) as [number, number, number, number];
  f = { a, b, c, d };
  fourTermCache.set(p, f);
  return f;
}

/**
 * CacheRoute's `queue_predictor(length, bs)` in ms: the clipped four-term estimate, with the
 * short-prompt anchors (exact for bs 1 and L <= 115, a lower bound up to 345).
 * @param length prompt tokens (>= 1)
 */
export function cacherouteTtftMs(f: FourTerm, length: number, bs = 1): number {
  const L = Math.max(1, Math.round(length));
  const base = Math.max(0, f.a * bs * L + f.b * L + f.c * bs + f.d);
  if (bs !== 1) return base;
  const anchor = interpAnchors(L);
  if (L <= 115 && anchor > 0) return anchor;
  return Math.max(base, anchor);
}

function interpAnchors(L: number): number {
  const a = CACHEROUTE_SHORT_ANCHORS;
  if (L <= a[0]![0]) return a[0]![1];
  if (L > a[a.length - 1]![0]) return 0;
  for (let i = 1; i < a.length; i++) {
    const [x1, y1] = a[i]!;
    if (L <= x1) {
      const [x0, y0] = a[i - 1]!;
      return y0 + ((L - x0) / (x1 - x0)) * (y1 - y0);
    }
  }
  return 0;
}

/** Mooncake's prefill polynomial coefficients (ms): c0 + c1·n + c2·n·p + c3·n². */
export type Poly4 = [number, number, number, number];

const polyCache = new WeakMap<Profile, Poly4>();

/** Fits (once per profile) Mooncake's prefill-time polynomial on an offline grid of the profile. */
export function mooncakeFit(p: Profile): Poly4 {
  let c = polyCache.get(p);
  if (c) return c;
  const maxL = Math.min(p.engine.maxModelLen, 131_072);
  const rows: number[][] = [];
  const y: number[] = [];
  for (let L = 16; L <= maxL; L = Math.ceil(L * 1.25)) {
    for (const f of [0, 0.25, 0.5, 0.75, 0.9]) {
      const pre = Math.floor(L * f);
      const n = L - pre;
      // relative least squares (rows and target divided by the target): a request of 100 tokens
      // must be estimated as well as one of 100k
      const t = prefillAloneMs(p, pre, n);
      rows.push([1 / t, n / t, (n * pre) / t, (n * n) / t]);
      y.push(1);
    }
  }
  c = leastSquares(rows, y) as Poly4;
  polyCache.set(p, c);
  return c;
}

/** Mooncake's `EstimatePrefillExecutionTime(len, prefix_len)` in ms (>= 0). */
export function mooncakePrefillMs(c: Poly4, length: number, prefix: number): number {
  const n = Math.max(1, length - prefix);
  return Math.max(0, c[0] + c[1] * n + c[2] * n * prefix + c[3] * n * n);
}
