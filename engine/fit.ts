/**
 * Small ordinary least squares for the peers' fitted latency models (CacheRoute's four-term TTFT
 * regressor, Mooncake's polynomial prefill model). Pure, no dependency: the engine stays free of
 * numeric libraries; k (features) is at most a handful, so normal equations with partial
 * pivoting are exact enough (the features are rescaled per column first).
 */

/**
 * Least-squares coefficients c minimising Σ (x_i · c − y_i)².
 * @param rows feature vectors, all of the same length k >= 1
 * @param y targets, one per row
 * @returns k coefficients
 * @throws Error when there are fewer rows than features, lengths differ, a value is not finite,
 *   or the system is singular
 */
export function leastSquares(rows: readonly (readonly number[])[], y: readonly number[]): number[] {
  const n = rows.length;
  if (n === 0) throw new Error('leastSquares: no rows');
  const k = rows[0]!.length;
  if (k === 0) throw new Error('leastSquares: no features');
  if (n < k) throw new Error(`leastSquares: ${n} rows for ${k} features`);
  if (y.length !== n) throw new Error(`leastSquares: ${y.length} targets for ${n} rows`);
  // column scales keep the normal matrix well conditioned (features span ~10 orders of magnitude)
  const scale = new Array<number>(k).fill(0);
  for (const r of rows) {
    if (r.length !== k) throw new Error('leastSquares: rows of different lengths');
    for (let j = 0; j < k; j++) {
      if (!Number.isFinite(r[j]!)) throw new Error('leastSquares: non-finite feature');
      scale[j] = Math.max(scale[j]!, Math.abs(r[j]!));
    }
  }
  for (let j = 0; j < k; j++) if (scale[j] === 0) scale[j] = 1;
  const a = Array.from({ length: k }, () => new Array<number>(k + 1).fill(0));
  for (let i = 0; i < n; i++) {
    const r = rows[i]!;
    const yi = y[i]!;
    if (!Number.isFinite(yi)) throw new Error('leastSquares: non-finite target');
    for (let p = 0; p < k; p++) {
      const xp = r[p]! / scale[p]!;
      for (let q = 0; q < k; q++) a[p]![q]! += xp * (r[q]! / scale[q]!);
      a[p]![k]! += xp * yi;
    }
  }
  for (let c = 0; c < k; c++) {
    let piv = c;
    for (let r = c + 1; r < k; r++) if (Math.abs(a[r]![c]!) > Math.abs(a[piv]![c]!)) piv = r;
    if (Math.abs(a[piv]![c]!) < 1e-12) throw new Error('leastSquares: singular system');
    [a[c], a[piv]] = [a[piv]!, a[c]!];
    for (let r = 0; r < k; r++) {
      if (r === c) continue;
      const f = a[r]![c]! / a[c]![c]!;
      if (f === 0) continue;
      for (let q = c; q <= k; q++) a[r]![q]! -= f * a[c]![q]!;
    }
  }
  return a.map((row, j) => row[k]! / row[j]! / scale[j]!);
}
