/**
 * Non-negative least squares for the step-model fit (sim/profile/fit.ts).
 */
import { createRequire } from 'node:module';

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

