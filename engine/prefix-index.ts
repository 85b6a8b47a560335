/**
 * Prefix index: chained block hash -> set of instances caching it, with a hard per-instance
 * bound. One lookup walk returns, for every instance, how many leading blocks of a request it
 * holds (contiguous prefix match, like Dynamo's radix tree / llm-d's index).
 *
 * Representation: per block id a bitmask of instances (30 bits per word, so every word is a V8
 * small integer) — membership is a bit test. Per instance, an insertion-ordered array of the
 * ids added (stale entries of removed blocks are skipped and compacted away) enforces the
 * bound: when an instance holds more than its capacity, its oldest-inserted blocks are dropped
 * (FIFO; re-adding a present block does not reorder it, which keeps the hot path
 * allocation-free).
 * Complexity: match O(depth × words); add/remove O(blocks); memory O(entries).
 */
export class PrefixIndex {
  private readonly words: number;
  /** block id -> mask word(s). words === 1: number; otherwise number[]. */
  private readonly masks1 = new Map<number, number>();
  private readonly masksN = new Map<number, number[]>();
  /** per-instance ids in insertion order (may contain stale ids) and the read head. */
  private readonly order: number[][];
  private readonly heads: number[];
  /** live blocks per instance. */
  private readonly counts: number[];
  private readonly caps: number[];
  /** scratch mask words of `match` (no allocation per lookup). */
  private readonly curBuf: Int32Array;

  /**
   * @param instances number of instances (any count; 30 per mask word)
   * @param capacityBlocks per-instance bound in blocks (Infinity = unbounded); a number applies to all
   */
  constructor(
    readonly instances: number,
    capacityBlocks: number | number[],
  ) {
    this.words = Math.max(1, Math.ceil(instances / 30));
    this.order = Array.from({ length: instances }, () => []);
    this.heads = new Array<number>(instances).fill(0);
    this.counts = new Array<number>(instances).fill(0);
    this.caps = Array.isArray(capacityBlocks) ? capacityBlocks.slice() : new Array<number>(instances).fill(capacityBlocks);
    this.curBuf = new Int32Array(this.words);
  }

  /** Blocks indexed for `instance`. */
  size(instance: number): number {
    return this.counts[instance]!;
  }

  /** Total (block, instance) entries. */
  totalEntries(): number {
    let s = 0;
    for (const c of this.counts) s += c;
    return s;
  }

  /** Per-instance bound in blocks. */
  capacity(instance: number): number {
    return this.caps[instance]!;
  }

  /** true when `instance` holds block `id`. */
  has(instance: number, id: number): boolean {
    const w = (instance / 30) | 0;
    const bit = 1 << instance % 30;
    if (this.words === 1) return ((this.masks1.get(id) ?? 0) & bit) !== 0;
    const m = this.masksN.get(id);
    return m !== undefined && (m[w]! & bit) !== 0;
  }

  /** Marks `blocks` as cached on `instance`; enforces the bound (drops the oldest inserted). */
  add(instance: number, blocks: readonly number[]): void {
    const w = (instance / 30) | 0;
    const bit = 1 << instance % 30;
    const order = this.order[instance]!;
    let added = 0;
    if (this.words === 1) {
      const masks = this.masks1;
      for (let i = 0; i < blocks.length; i++) {
        const id = blocks[i]!;
        const m = masks.get(id);
        if (m === undefined) masks.set(id, bit);
        else if ((m & bit) === 0) masks.set(id, m | bit);
        else continue;
        order.push(id);
        added++;
      }
    } else {
      for (let i = 0; i < blocks.length; i++) {
        const id = blocks[i]!;
        let m = this.masksN.get(id);
        if (m === undefined) {
          m = new Array<number>(this.words).fill(0);
          this.masksN.set(id, m);
        } else if ((m[w]! & bit) !== 0) continue;
        m[w] = m[w]! | bit;
        order.push(id);
        added++;
      }
    }
    this.counts[instance]! += added;
    if (this.counts[instance]! > this.caps[instance]!) this.evictOldest(instance);
  }

  /** Removes `blocks` from `instance` (KV event BlockRemoved). Unknown ids are ignored. */
  remove(instance: number, blocks: readonly number[]): void {
    const w = (instance / 30) | 0;
    const bit = 1 << instance % 30;
    let removed = 0;
    for (let i = 0; i < blocks.length; i++) if (this.clearBit(blocks[i]!, w, bit)) removed++;
    this.counts[instance]! -= removed;
    this.maybeCompact(instance);
  }

  /** Removes every block of `instance` (AllBlocksCleared, or instance down). */
  clear(instance: number): void {
    const w = (instance / 30) | 0;
    const bit = 1 << instance % 30;
    const order = this.order[instance]!;
    for (let i = this.heads[instance]!; i < order.length; i++) this.clearBit(order[i]!, w, bit);
    this.order[instance] = [];
    this.heads[instance] = 0;
    this.counts[instance] = 0;
  }

  /**
   * Contiguous prefix match of `blocks` on every instance.
   * @param out receives, per instance, the number of leading blocks it holds (length >= instances)
   * @returns the longest match over all instances (blocks)
   */
  match(blocks: readonly number[], out: Int32Array): number {
    const n = this.instances;
    const depth = blocks.length;
    if (this.words === 1) {
      let cur = n >= 30 ? 0x3fffffff : (1 << n) - 1;
      const masks = this.masks1;
      let pos = 0;
      for (; pos < depth && cur !== 0; pos++) {
        const m = masks.get(blocks[pos]!) ?? 0;
        let dropped = cur & ~m;
        while (dropped !== 0) {
          const b = 31 - Math.clz32(dropped);
          out[b] = pos;
          dropped &= ~(1 << b);
        }
        cur &= m;
      }
      let best = 0;
      if (cur !== 0) {
        best = pos;
        while (cur !== 0) {
          const b = 31 - Math.clz32(cur);
          out[b] = pos;
          cur &= ~(1 << b);
        }
      } else {
        for (let i = 0; i < n; i++) if (out[i]! > best) best = out[i]!;
      }
      return best;
    }
    const W = this.words;
    const cur = this.curBuf;
    for (let w = 0; w < W; w++) {
      const bits = Math.min(30, n - w * 30);
      cur[w] = bits >= 30 ? 0x3fffffff : (1 << bits) - 1;
    }
    const masks = this.masksN;
    let alive = true;
    let pos = 0;
    for (; pos < depth && alive; pos++) {
      const m = masks.get(blocks[pos]!);
      alive = false;
      for (let w = 0; w < W; w++) {
        const mw = m ? m[w]! : 0;
        let dropped = cur[w]! & ~mw;
        while (dropped !== 0) {
          const b = 31 - Math.clz32(dropped);
          out[w * 30 + b] = pos;
          dropped &= ~(1 << b);
        }
        cur[w] = cur[w]! & mw;
        if (cur[w] !== 0) alive = true;
      }
    }
    let best = 0;
    for (let w = 0; w < W; w++) {
      let c = cur[w]!;
      while (c !== 0) {
        const b = 31 - Math.clz32(c);
        out[w * 30 + b] = pos;
        c &= ~(1 << b);
      }
    }
    for (let i = 0; i < n; i++) if (out[i]! > best) best = out[i]!;
    return best;
  }

  /** Drops the oldest-inserted live blocks of `instance` until it is within its bound. */
  private evictOldest(instance: number): void {
    const w = (instance / 30) | 0;
    const bit = 1 << instance % 30;
    const order = this.order[instance]!;
    let h = this.heads[instance]!;
    while (this.counts[instance]! > this.caps[instance]! && h < order.length) {
      if (this.clearBit(order[h]!, w, bit)) this.counts[instance]!--;
      h++;
    }
    this.heads[instance] = h;
    this.maybeCompact(instance);
  }

  /** Rebuilds the order array when stale entries dominate (keeps memory O(live entries)). */
  private maybeCompact(instance: number): void {
    const order = this.order[instance]!;
    const live = this.counts[instance]!;
    if (order.length < 1024 || order.length < 3 * live) return;
    const w = (instance / 30) | 0;
    const bit = 1 << instance % 30;
    const next: number[] = [];
    const seen = new Set<number>();
    for (let i = this.heads[instance]!; i < order.length; i++) {
      const id = order[i]!;
      if (!seen.has(id) && this.bitSet(id, w, bit)) {
        next.push(id);
        seen.add(id);
      }
    }
    this.order[instance] = next;
    this.heads[instance] = 0;
  }

  private bitSet(id: number, w: number, bit: number): boolean {
    if (this.words === 1) return ((this.masks1.get(id) ?? 0) & bit) !== 0;
    const m = this.masksN.get(id);
    return m !== undefined && (m[w]! & bit) !== 0;
  }

  /** Clears the bit; returns true when it was set. */
  private clearBit(id: number, w: number, bit: number): boolean {
    if (this.words === 1) {
      const m = this.masks1.get(id);
      if (m === undefined || (m & bit) === 0) return false;
      const v = m & ~bit;
      if (v === 0) this.masks1.delete(id);
      else this.masks1.set(id, v);
      return true;
    }
    const m = this.masksN.get(id);
    if (!m || (m[w]! & bit) === 0) return false;
    m[w] = m[w]! & ~bit;
    if (m.every((x) => x === 0)) this.masksN.delete(id);
    return true;
  }
}
