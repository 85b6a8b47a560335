/**
 * Open-addressing hash table from block id (a non-negative integer < 2^53) to a fixed number of
 * 32-bit mask words, stored in typed arrays (no object per entry). Linear probing with
 * backward-shift deletion (no tombstones); grows at load factor 0.5.
 *
 * Used by the prefix index: with 1,000,000 entries a lookup is one or two cache lines instead of
 * a JS Map's bucket chain and boxed values, which matters because a routing decision walks up to
 * hundreds of blocks.
 */
const EMPTY = -1;

/** Block id -> `stride` 32-bit mask words (see module doc); ids are non-negative integers < 2^53. */
export class BlockTable {
  private keys: Float64Array;
  private words: Int32Array;
  private mask: number;
  private shift: number;
  /** entries in the table. */
  size = 0;

  /**
   * @param stride mask words per entry (>= 1)
   * @param initialCapacity slots (rounded up to a power of two >= 16)
   */
  constructor(
    readonly stride: number,
    initialCapacity = 1024,
  ) {
    let cap = 16;
    while (cap < initialCapacity) cap *= 2;
    this.keys = new Float64Array(cap).fill(EMPTY);
    this.words = new Int32Array(cap * stride);
    this.mask = cap - 1;
    this.shift = 32 - Math.log2(cap);
  }

  private slotOf(id: number): number {
    const lo = id >>> 0;
    const hi = (id / 4294967296) >>> 0;
    return Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b) >>> this.shift;
  }

  /** Slot of `id`, or -1 when absent. */
  find(id: number): number {
    const keys = this.keys;
    let i = this.slotOf(id);
    for (;;) {
      const k = keys[i]!;
      if (k === id) return i;
      if (k === EMPTY) return -1;
      i = (i + 1) & this.mask;
    }
  }

  /** Mask word `w` of the entry in `slot` (from find / insert). */
  word(slot: number, w: number): number {
    return this.words[slot * this.stride + w]!;
  }

  /** Sets mask word `w` of the entry in `slot`. */
  setWord(slot: number, w: number, v: number): void {
    this.words[slot * this.stride + w] = v;
  }

  /** True when every mask word of `slot` is zero. */
  isZero(slot: number): boolean {
    const o = slot * this.stride;
    for (let w = 0; w < this.stride; w++) if (this.words[o + w] !== 0) return false;
    return true;
  }

  /** Slot of `id`, inserting it with all-zero words when absent. */
  insert(id: number): number {
    if ((this.size + 1) * 2 > this.keys.length) this.grow();
    const keys = this.keys;
    let i = this.slotOf(id);
    for (;;) {
      const k = keys[i]!;
      if (k === id) return i;
      if (k === EMPTY) {
        keys[i] = id;
        this.size++;
        return i;
      }
      i = (i + 1) & this.mask;
    }
  }

  /** Removes the entry in `slot` (backward-shift deletion keeps probe chains intact). */
  removeSlot(slot: number): void {
    const keys = this.keys;
    const words = this.words;
    const st = this.stride;
    let hole = slot;
    let j = slot;
    for (;;) {
      j = (j + 1) & this.mask;
      const k = keys[j]!;
      if (k === EMPTY) break;
      const home = this.slotOf(k);
      // move k into the hole when its home is not cyclically within (hole, j]
      const inRange = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (!inRange) {
        keys[hole] = k;
        for (let w = 0; w < st; w++) words[hole * st + w] = words[j * st + w]!;
        hole = j;
      }
    }
    keys[hole] = EMPTY;
    for (let w = 0; w < st; w++) words[hole * st + w] = 0;
    this.size--;
  }

  private grow(): void {
    const oldKeys = this.keys;
    const oldWords = this.words;
    const st = this.stride;
    const cap = oldKeys.length * 2;
    this.keys = new Float64Array(cap).fill(EMPTY);
    this.words = new Int32Array(cap * st);
    this.mask = cap - 1;
    this.shift = 32 - Math.log2(cap);
    this.size = 0;
    for (let s = 0; s < oldKeys.length; s++) {
      const k = oldKeys[s]!;
      if (k === EMPTY) continue;
      const n = this.insert(k);
      for (let w = 0; w < st; w++) this.words[n * st + w] = oldWords[s * st + w]!;
    }
  }
}
