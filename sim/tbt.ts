/**
 * Per-request TBT as Mooncake defines it (Qin et al., FAST'25 §5.1 "Metric"): "the average of the
 * longest 10% of the token arrival intervals" — the gaps between consecutive output tokens
 * after the first one. The instance model reports token times (`InstanceCore` `onTokens`,
 * every iteration of a coalesced decode run included); for each request a bounded min-heap
 * keeps only its ceil(10% × gaps) longest gaps, so memory is 10% of the tokens and each token
 * costs one comparison once the heap is full (decode gaps are short and mostly skipped).
 */

/** Streams token times of N requests into their longest-10% gap heaps. */
export class TokenGaps {
  private readonly last: Float64Array;
  private readonly off: Int32Array;
  private readonly cap: Int32Array;
  private readonly size: Int32Array;
  private readonly heap: Float64Array;

  /**
   * @param outputTokens per request, the tokens it will generate (the simulator knows them;
   *   sizes the heaps: ceil(0.1 × (outputTokens − 1)), none for a single token)
   */
  constructor(outputTokens: ArrayLike<number>) {
    const n = outputTokens.length;
    this.last = new Float64Array(n).fill(-1);
    this.off = new Int32Array(n);
    this.cap = new Int32Array(n);
    this.size = new Int32Array(n);
    let total = 0;
    for (let r = 0; r < n; r++) {
      const gaps = Math.max(0, Math.round(outputTokens[r]!) - 1);
      const c = gaps > 0 ? Math.ceil(gaps * 0.1) : 0;
      this.off[r] = total;
      this.cap[r] = c;
      total += c;
    }
    this.heap = new Float64Array(total);
  }

  /** Request r produced k tokens at t0 + ends[j] (or one at t0 when `ends` is null), ms. */
  tokens(r: number, t0: number, ends: Float64Array | null, k: number): void {
    if (r < 0) return;
    if (ends === null) {
      this.token(r, t0);
      return;
    }
    for (let j = 0; j < k; j++) this.token(r, t0 + ends[j]!);
  }

  /** One token of request r at time t (ms). */
  token(r: number, t: number): void {
    const prev = this.last[r]!;
    this.last[r] = t;
    if (prev < 0) return; // the first token: TTFT, not a gap
    this.push(r, t - prev);
  }

  /** Mooncake TBT of request r (ms): mean of its longest 10% gaps; -1 when it had no gap. */
  tbt(r: number): number {
    const n = this.size[r]!;
    if (n === 0) return -1;
    const o = this.off[r]!;
    let s = 0;
    for (let j = 0; j < n; j++) s += this.heap[o + j]!;
    return s / n;
  }

  private push(r: number, g: number): void {
    const cap = this.cap[r]!;
    if (cap === 0) return;
    const h = this.heap;
    const o = this.off[r]!;
    let n = this.size[r]!;
    if (n < cap) {
      // sift up
      let i = n++;
      this.size[r] = n;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (h[o + p]! <= g) break;
        h[o + i] = h[o + p]!;
        i = p;
      }
      h[o + i] = g;
      return;
    }
    if (g <= h[o]!) return;
    // replace the minimum, sift down
    let i = 0;
    for (;;) {
      const a = 2 * i + 1;
      if (a >= n) break;
      const b = a + 1;
      const c = b < n && h[o + b]! < h[o + a]! ? b : a;
      if (h[o + c]! >= g) break;
      h[o + i] = h[o + c]!;
      i = c;
    }
    h[o + i] = g;
  }
}
