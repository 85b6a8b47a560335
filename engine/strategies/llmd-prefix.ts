/**
 * The approximate prefix index of the `llm-d` peer (llm-d/llm-d-inference-scheduler @ 520af478,
 * pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix/indexer.go and
 * plugin.go `matchLongestPrefix`):
 *
 * - per pod, an LRU of block hashes (hashicorp/golang-lru `Add`: a present key moves to the most
 *   recent end, so a hot prefix such as a shared system prompt is never evicted from a pod that
 *   keeps receiving it), bounded in blocks; evicting a hash removes the pod from its lookup;
 * - match: walk the request's hashes in order, stop at the first hash no pod holds, and credit
 *   every pod that holds the current hash (upstream does not require each pod's match to be
 *   contiguous; with chained hashes it nearly always is).
 *
 * Units: blocks (trace block ids, chained hashes). Pods are 0..n-1.
 */
export class ApproxPrefixIndex {
  /** per pod: hash -> true in recency order (Map keeps insertion order; re-insert = most recent). */
  private readonly lru: Map<number, true>[];
  private readonly caps: number[];

  /**
   * @param pods number of pods
   * @param capacityBlocks per-pod bound in blocks (Infinity = unbounded)
   * @throws Error when a bound is not a positive number
   */
  constructor(
    readonly pods: number,
    capacityBlocks: number[],
  ) {
    if (capacityBlocks.length !== pods || capacityBlocks.some((c) => !(c >= 1))) throw new Error(`ApproxPrefixIndex: need ${pods} capacities >= 1 (got ${capacityBlocks.join(',')})`);
    this.lru = Array.from({ length: pods }, () => new Map<number, true>());
    this.caps = capacityBlocks.slice();
  }

  /** Blocks indexed for `pod`. */
  size(pod: number): number {
    return this.lru[pod]!.size;
  }

  /** `pod` holds `hash`. */
  has(pod: number, hash: number): boolean {
    return this.lru[pod]!.has(hash);
  }

  /** Records `hashes` on `pod` (upstream `indexer.Add`): each becomes its most recent entry; the least recent beyond the bound are evicted. */
  add(pod: number, hashes: readonly number[]): void {
    const m = this.lru[pod]!;
    const cap = this.caps[pod]!;
    for (const h of hashes) {
      m.delete(h);
      m.set(h, true);
      if (m.size > cap) m.delete(m.keys().next().value!);
    }
  }

  /**
   * Matched blocks per pod (upstream `matchLongestPrefix`, module doc).
   * @param out receives, per pod, the number of matched blocks (length >= pods)
   */
  match(hashes: readonly number[], out: Int32Array): void {
    out.fill(0, 0, this.pods);
    for (const h of hashes) {
      let any = false;
      for (let i = 0; i < this.pods; i++) {
        if (this.lru[i]!.has(h)) {
          out[i] = out[i]! + 1;
          any = true;
        }
      }
      if (!any) break;
    }
  }

  /** Forgets every block of `pod` (upstream `RemovePod`). */
  clear(pod: number): void {
    this.lru[pod]!.clear();
  }
}
