import { BlockTable } from './block-table.js';

/**
 * Prefix index: chained block hash -> set of instances caching it, with a hard per-instance
 * bound. One lookup walk returns, for every instance, how many leading blocks of a request it
 * holds (contiguous prefix match, like Dynamo's radix tree / llm-d's index).
 *
 * Representation: per block id a bitmask of instances (32 bits per word) in an open-addressing
 * typed-array table (engine/block-table.ts) — membership is a bit test. Per instance, an insertion-ordered array of the
 * ids added (stale entries of removed blocks are skipped and compacted away) enforces the
 * bound: when an instance holds more than its capacity, its oldest-inserted blocks are dropped
 * (FIFO; re-adding a present block does not reorder it, which keeps the hot path
 * allocation-free).
 * Complexity: match O(depth × words); add/remove O(blocks); memory O(entries).
 */
export class PrefixIndex {
  private readonly words: number;
  /** block id -> mask words. */
  private readonly table: BlockTable;
  /** per-instance ids in insertion order (may contain stale ids) and the read head. */
  private readonly order: number[][];
  private readonly heads: number[];
  /** live blocks per instance. */
  private readonly counts: number[];
  private readonly caps: number[];
  /** scratch mask words of `match` (no allocation per lookup). */
  private readonly curBuf: Int32Array;

  /**
   * @param instances number of instances (any count; 32 per mask word)
   * @param capacityBlocks per-instance bound in blocks (Infinity = unbounded); a number applies to all
   */
  constructor(
    readonly instances: number,
    capacityBlocks: number | number[],
  ) {
    this.words = Math.max(1, Math.ceil(instances / 32));
    this.table = new BlockTable(this.words);
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
    return this.bitSet(id, instance >>> 5, 1 << (instance & 31));
  }

  /** Marks `blocks` as cached on `instance`; enforces the bound (drops the oldest inserted). */
  add(instance: number, blocks: readonly number[]): void {
    const w = instance >>> 5;
    const bit = 1 << (instance & 31);
    const order = this.order[instance]!;
    const t = this.table;
    let added = 0;
    for (let i = 0; i < blocks.length; i++) {
      const id = blocks[i]!;
      const slot = t.insert(id);
      const m = t.word(slot, w);
      if ((m & bit) !== 0) continue;
      t.setWord(slot, w, m | bit);
      order.push(id);
      added++;
    }
    this.counts[instance]! += added;
    if (this.counts[instance]! > this.caps[instance]!) this.evictOldest(instance);
  }

  /** Removes `blocks` from `instance` (KV event BlockRemoved). Unknown ids are ignored. */
  remove(instance: number, blocks: readonly number[]): void {
    const w = instance >>> 5;
    const bit = 1 << (instance & 31);
    let removed = 0;
    for (let i = 0; i < blocks.length; i++) if (this.clearBit(blocks[i]!, w, bit)) removed++;
    this.counts[instance]! -= removed;
    this.maybeCompact(instance);
  }

  /** Removes every block of `instance` (AllBlocksCleared, or instance down). */
  clear(instance: number): void {
    const w = instance >>> 5;
    const bit = 1 << (instance & 31);
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
    const t = this.table;
    const W = this.words;
    const cur = this.curBuf;
    for (let w = 0; w < W; w++) {
      const bits = Math.min(32, n - w * 32);
      cur[w] = bits >= 32 ? -1 : (1 << bits) - 1;
    }
    let alive = true;
    let pos = 0;
    for (; pos < depth && alive; pos++) {
      const slot = t.find(blocks[pos]!);
      alive = false;
      for (let w = 0; w < W; w++) {
        const c = cur[w]!;
        if (c === 0) continue;
        const mw = slot < 0 ? 0 : t.word(slot, w);
        let dropped = c & ~mw;
        while (dropped !== 0) {
          const b = 31 - Math.clz32(dropped);
          out[(w << 5) + b] = pos;
          dropped &= ~(1 << b);
        }
        const nc = c & mw;
        cur[w] = nc;
        if (nc !== 0) alive = true;
      }
    }
    for (let w = 0; w < W; w++) {
      let c = cur[w]!;
      while (c !== 0) {
        const b = 31 - Math.clz32(c);
        out[(w << 5) + b] = pos;
        c &= ~(1 << b);
      }
    }
    let best = 0;
    for (let i = 0; i < n; i++) if (out[i]! > best) best = out[i]!;
    return best;
  }

  /** Drops the oldest-inserted live blocks of `instance` until it is within its bound. */
  private evictOldest(instance: number): void {
    const w = instance >>> 5;
    const bit = 1 << (instance & 31);
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
    const w = instance >>> 5;
    const bit = 1 << (instance & 31);
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
    const slot = this.table.find(id);
    return slot >= 0 && (this.table.word(slot, w) & bit) !== 0;
  }

  /** Clears the bit; returns true when it was set (drops the entry when no bit is left). */
  private clearBit(id: number, w: number, bit: number): boolean {
    const t = this.table;
    const slot = t.find(id);
    if (slot < 0) return false;
    const m = t.word(slot, w);
    if ((m & bit) === 0) return false;
    t.setWord(slot, w, m & ~bit);
    if (t.isZero(slot)) t.removeSlot(slot);
    return true;
  }
}
