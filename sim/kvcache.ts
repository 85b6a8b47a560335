/**
 * Paged KV memory of one instance with prefix caching and LRU eviction (vLLM V1 semantics,
 * token-granular accounting).
 *
 * - Memory is counted in tokens against `capacityTokens` (Infinity = unlimited).
 * - Prompt blocks (trace block ids, chained hashes) become cached once fully computed; a cached
 *   block is shared by reference count. Blocks with no reference stay resident and reusable
 *   until evicted, least recently freed first (vLLM's free-block queue).
 * - KV events are buffered and delivered in batches by `flushEvents` (once per step).
 * - Private tokens (a partial block being computed, decode output, prompts without block ids)
 *   are counted but never shared.
 */

/** One cached prompt block. Intrusive LRU links keep eviction O(1). */
export class BlockEntry {
  refs = 0;
  prev: BlockEntry | null = null;
  next: BlockEntry | null = null;
  constructor(
    readonly id: number,
    readonly tokens: number,
  ) {}
}

/** Receives KV events (block ids stored into / removed from the prefix cache). */
export type KvEventSink = (kind: 'stored' | 'removed' | 'cleared', blocks: number[]) => void;

/** KV memory of one instance (module doc). Token counts; ids are trace block ids. */
export class KvCache {
  /** tokens in use: every resident block (referenced or not) + private tokens. */
  used = 0;
  /** tokens of resident blocks with no reference (reclaimable). */
  evictable = 0;
  /** blocks evicted so far. */
  evictions = 0;
  readonly blocks = new Map<number, BlockEntry>();
  private head: BlockEntry | null = null; // least recently freed (evicted first)
  private tail: BlockEntry | null = null;
  /** block ids stored / removed since the last `flushEvents` (only when a sink is set). */
  private storedBuf: number[] = [];
  private removedBuf: number[] = [];

  /**
   * @param capacityTokens KV capacity in tokens (Infinity for unlimited)
   * @param sink optional KV event receiver (called synchronously)
   */
  constructor(
    readonly capacityTokens: number,
    private readonly sink?: KvEventSink,
  ) {}

  /** Tokens that could be allocated now (free + reclaimable). */
  available(): number {
    return this.capacityTokens - this.used + this.evictable;
  }

  /**
   * Number of leading block ids of `ids` present in the cache (contiguous prefix match).
   * Does not touch LRU order.
   */
  matchPrefix(ids: readonly number[]): number {
    const m = this.blocks;
    let i = 0;
    const n = ids.length;
    while (i < n && m.has(ids[i]!)) i++;
    return i;
  }

  /** Takes a reference on a resident block (removing it from the LRU when it was free). */
  ref(e: BlockEntry): void {
    if (e.refs === 0) {
      this.unlink(e);
      this.evictable -= e.tokens;
    }
    e.refs++;
  }

  /** Drops a reference; a block with no reference becomes the most recently freed. */
  unref(e: BlockEntry): void {
    e.refs--;
    if (e.refs === 0) {
      this.append(e);
      this.evictable += e.tokens;
    }
  }

  /**
   * Allocates `n` private tokens, evicting least recently freed blocks when needed.
   * @returns false (and allocates nothing) when even full eviction cannot make room.
   */
  allocate(n: number): boolean {
    if (n <= 0) return true;
    const free = this.capacityTokens - this.used;
    if (free >= n) {
      this.used += n;
      return true;
    }
    if (free + this.evictable < n) return false;
    while (this.capacityTokens - this.used < n) this.evictOne();
    this.used += n;
    return true;
  }

  /** Releases `n` private tokens. */
  release(n: number): void {
    this.used -= n;
  }

  /**
   * Turns `tokens` private tokens of a just-computed prompt block into the cached block `id`
   * (one reference held by the caller). When the block is already cached (computed
   * concurrently elsewhere) the private copy is released and the existing block is referenced.
   */
  register(id: number, tokens: number): BlockEntry {
    const have = this.blocks.get(id);
    if (have !== undefined) {
      this.used -= tokens;
      this.ref(have);
      return have;
    }
    const e = new BlockEntry(id, tokens);
    e.refs = 1;
    this.blocks.set(id, e);
    if (this.sink) this.storedBuf.push(id);
    return e;
  }

  /** Drops every unreferenced block (vLLM reset_prefix_cache); emits `cleared`. */
  clear(): void {
    this.flushEvents();
    while (this.head) this.evictOne();
    this.removedBuf = [];
    if (this.sink) this.sink('cleared', []);
  }

  /** Delivers buffered KV events to the sink: removed blocks first, then stored ones. */
  flushEvents(): void {
    if (!this.sink) return;
    if (this.removedBuf.length) {
      const b = this.removedBuf;
      this.removedBuf = [];
      this.sink('removed', b);
    }
    if (this.storedBuf.length) {
      const b = this.storedBuf;
      this.storedBuf = [];
      this.sink('stored', b);
    }
  }

  private evictOne(): void {
    const e = this.head!;
    this.unlink(e);
    this.blocks.delete(e.id);
    this.used -= e.tokens;
    this.evictable -= e.tokens;
    this.evictions++;
    if (this.sink) this.removedBuf.push(e.id);
  }

  private unlink(e: BlockEntry): void {
    if (e.prev) e.prev.next = e.next;
    else this.head = e.next;
    if (e.next) e.next.prev = e.prev;
    else this.tail = e.prev;
    e.prev = e.next = null;
  }

  private append(e: BlockEntry): void {
    e.prev = this.tail;
    e.next = null;
    if (this.tail) this.tail.next = e;
    else this.head = e;
    this.tail = e;
  }
}
