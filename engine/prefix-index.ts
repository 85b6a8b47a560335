/**
 * Prefix index: chained block hash -> set of instances caching it, with a hard per-instance
 * bound (LRU). One lookup walk returns, for every instance, how many leading blocks of a
 * request it holds (contiguous prefix match, like Dynamo's radix tree / llm-d's index).
 *
 * Representation: per block id a bitmask of instances (30 bits per word, so every word is a V8
 * small integer); per instance an insertion-ordered Set: when the bound is exceeded the
 * oldest-inserted block is dropped (FIFO; re-adding a present block does not reorder it, which
 * keeps the hot path allocation-free).
 * Complexity: match O(depth × words); add/remove O(blocks).
 */
export class PrefixIndex {
  private readonly words: number;
  /** block id -> mask word(s). words === 1: number; otherwise number[]. */
  private readonly masks1 = new Map<number, number>();
  private readonly masksN = new Map<number, number[]>();
  /** per-instance membership in insertion order (oldest first). */
  private readonly lru: Set<number>[];
  private readonly caps: number[];

  /**
   * @param instances number of instances (any count; 30 per mask word)
   * @param capacityBlocks per-instance bound in blocks (Infinity = unbounded); a number applies to all
   */
  constructor(
    readonly instances: number,
    capacityBlocks: number | number[],
  ) {
    this.words = Math.max(1, Math.ceil(instances / 30));
    this.lru = Array.from({ length: instances }, () => new Set<number>());
    this.caps = Array.isArray(capacityBlocks) ? capacityBlocks.slice() : new Array<number>(instances).fill(capacityBlocks);
  }

  /** Blocks indexed for `instance`. */
  size(instance: number): number {
    return this.lru[instance]!.size;
  }

  /** Total (block, instance) entries. */
  totalEntries(): number {
    let s = 0;
    for (const m of this.lru) s += m.size;
    return s;
  }

  /** Per-instance bound in blocks. */
  capacity(instance: number): number {
    return this.caps[instance]!;
  }

  /** Marks `blocks` as cached on `instance`; enforces the bound (drops the oldest inserted). */
  add(instance: number, blocks: readonly number[]): void {
    const lru = this.lru[instance]!;
    const cap = this.caps[instance]!;
    const w = (instance / 30) | 0;
    const bit = 1 << instance % 30;
    for (let i = 0; i < blocks.length; i++) {
      const id = blocks[i]!;
      if (lru.has(id)) continue;
      lru.add(id);
      this.setBit(id, w, bit);
      if (lru.size > cap) {
        const oldest = lru.keys().next().value as number;
        lru.delete(oldest);
        this.clearBit(oldest, w, bit);
      }
    }
  }

  /** Removes `blocks` from `instance` (KV event BlockRemoved). Unknown ids are ignored. */
  remove(instance: number, blocks: readonly number[]): void {
    const lru = this.lru[instance]!;
    const w = (instance / 30) | 0;
    const bit = 1 << instance % 30;
    for (let i = 0; i < blocks.length; i++) {
      const id = blocks[i]!;
      if (lru.delete(id)) this.clearBit(id, w, bit);
    }
  }

  /** Removes every block of `instance` (AllBlocksCleared, or instance down). */
  clear(instance: number): void {
    const lru = this.lru[instance]!;
    const w = (instance / 30) | 0;
    const bit = 1 << instance % 30;
    for (const id of lru.keys()) this.clearBit(id, w, bit);
    lru.clear();
  }

  /** true when `instance` holds block `id`. */
  has(instance: number, id: number): boolean {
    return this.lru[instance]!.has(id);
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
    const cur = new Array<number>(W);
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

  private setBit(id: number, w: number, bit: number): void {
    if (this.words === 1) {
      this.masks1.set(id, (this.masks1.get(id) ?? 0) | bit);
      return;
    }
    let m = this.masksN.get(id);
    if (!m) {
      m = new Array<number>(this.words).fill(0);
      this.masksN.set(id, m);
    }
    m[w] = m[w]! | bit;
  }

  private clearBit(id: number, w: number, bit: number): void {
    if (this.words === 1) {
      const v = (this.masks1.get(id) ?? 0) & ~bit;
      if (v === 0) this.masks1.delete(id);
      else this.masks1.set(id, v);
      return;
    }
    const m = this.masksN.get(id);
    if (!m) return;
    m[w] = m[w]! & ~bit;
    if (m.every((x) => x === 0)) this.masksN.delete(id);
  }
}
