/**
 * Paged KV memory of one instance with prefix caching and LRU eviction (vLLM V1 semantics,
 * token-granular accounting).
 *
 * - Memory is counted in tokens against `capacityTokens` (Infinity = unlimited).
 * - Eviction takes engine blocks (`evictBlockTokens`, vLLM's block size) from the end of the least
 *   recently freed block, only as many as an allocation needs, so a trace block can stay partly
 *   resident (`BlockEntry.resident`); a partly resident block counts as removed for KV events.
 * - Prompt blocks (trace block ids, chained hashes) become cached once fully computed; a cached
 *   block is shared by reference count. Blocks with no reference stay resident and reusable
 *   until evicted, least recently freed first (vLLM's free-block queue).
 * - KV events are buffered and delivered in batches by `flushEvents` (once per step).
 * - Private tokens (a partial block being computed, decode output, prompts without block ids)
 *   are counted but never shared.
 * - Negative ids are private to one request (the output blocks a preempted request leaves in the
 *   cache, sim/instance.ts): they are cached and evicted like others but raise no KV events.
 * - Tiers (`TierCache`, `lower`): with a CPU tier below the GPU (LMCache `local_cpu`, vLLM's
 *   OffloadingConnector), a block the GPU starts to evict is demoted whole to it (policy
 *   `demote`), or every block the GPU computes is stored to it (`write-through`); the CPU tier
 *   demotes its own LRU evictions to a remote tier (LMCache's Redis backend) when there is one.
 *   Tier events carry their medium ("CPU", "REMOTE"); GPU events have none.
 */
import type { KvMedium } from '../engine/types.js';

/** One cached prompt block. Intrusive LRU links keep eviction O(1). */
export class BlockEntry {
  refs = 0;
  prev: BlockEntry | null = null;
  next: BlockEntry | null = null;
  /**
   * Leading tokens of the block still resident (= tokens unless eviction took engine blocks from
   * its end: vLLM evicts 16-token blocks, so a trace block of 512 tokens can be partly cached).
   */
  resident: number;
  constructor(
    readonly id: number,
    readonly tokens: number,
  ) {
    this.resident = tokens;
  }
}

/** Receives KV events (block ids stored into / removed from the prefix cache); `medium` absent = GPU. */
export type KvEventSink = (kind: 'stored' | 'removed' | 'cleared', blocks: number[], medium?: KvMedium) => void;

/** One block of a tier below the GPU; intrusive LRU links. */
class TierNode {
  prev: TierNode | null = null;
  next: TierNode | null = null;
  constructor(
    readonly id: number,
    readonly tokens: number,
  ) {}
}

/**
 * A KV tier below the GPU (CPU memory, or a remote store): whole blocks by id, LRU eviction at a
 * token capacity (Infinity = unbounded), an optional lower tier its evictions are demoted to, and
 * buffered KV events with its medium. Lookups (`has`) do not touch LRU order; hits do (`touch`).
 */
export class TierCache {
  /** tokens held. */
  used = 0;
  /** blocks evicted (dropped or demoted) so far. */
  evictions = 0;
  private readonly nodes = new Map<number, TierNode>();
  private head: TierNode | null = null; // least recently used
  private tail: TierNode | null = null;
  private storedBuf: number[] = [];
  private removedBuf: number[] = [];

  /**
   * @param capacityTokens capacity in tokens (Infinity = unbounded; must be > 0)
   * @param medium medium of this tier's KV events
   * @param sink KV event receiver (optional)
   * @param lower tier that receives this tier's evictions (optional)
   */
  constructor(
    readonly capacityTokens: number,
    readonly medium: KvMedium,
    private readonly sink?: KvEventSink,
    readonly lower?: TierCache,
  ) {}

  /** true when block `id` is held. */
  has(id: number): boolean {
    return this.nodes.has(id);
  }

  /** Blocks held. */
  get size(): number {
    return this.nodes.size;
  }

  /** Marks block `id` as most recently used (a hit). No-op when absent. */
  touch(id: number): void {
    const e = this.nodes.get(id);
    if (!e || e === this.tail) return;
    this.unlink(e);
    this.append(e);
  }

  /**
   * Stores block `id` of `tokens` tokens (or refreshes it), evicting least recently used blocks
   * down to the capacity; a block larger than the capacity is not stored.
   */
  insert(id: number, tokens: number): void {
    const have = this.nodes.get(id);
    if (have) {
      this.touch(id);
      return;
    }
    if (tokens > this.capacityTokens || tokens <= 0) return;
    while (this.used + tokens > this.capacityTokens && this.head) this.evictHead();
    const e = new TierNode(id, tokens);
    this.nodes.set(id, e);
    this.append(e);
    this.used += tokens;
    if (this.sink) this.storedBuf.push(id);
  }

  /** Drops every block (no demotion); emits `cleared` with this tier's medium. */
  clear(): void {
    this.nodes.clear();
    this.head = this.tail = null;
    this.used = 0;
    this.storedBuf = [];
    this.removedBuf = [];
    if (this.sink) this.sink('cleared', [], this.medium);
  }

  /** Delivers buffered events (removed, then stored), then the lower tier's. */
  flushEvents(): void {
    if (this.sink) {
      if (this.removedBuf.length) {
        const b = this.removedBuf;
        this.removedBuf = [];
        this.sink('removed', b, this.medium);
      }
      if (this.storedBuf.length) {
        const b = this.storedBuf;
        this.storedBuf = [];
        this.sink('stored', b, this.medium);
      }
    }
    this.lower?.flushEvents();
  }

  private evictHead(): void {
    const e = this.head!;
    this.unlink(e);
    this.nodes.delete(e.id);
    this.used -= e.tokens;
    this.evictions++;
    if (this.sink) this.removedBuf.push(e.id);
    this.lower?.insert(e.id, e.tokens);
  }

  private unlink(e: TierNode): void {
    if (e.prev) e.prev.next = e.next;
    else this.head = e.next;
    if (e.next) e.next.prev = e.prev;
    else this.tail = e.prev;
    e.prev = e.next = null;
  }

  private append(e: TierNode): void {
    e.prev = this.tail;
    e.next = null;
    if (this.tail) this.tail.next = e;
    else this.head = e;
    this.tail = e;
  }
}

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
    /** eviction granularity, tokens (vLLM block size; Infinity = whole entries). */
    readonly evictBlockTokens = 16,
    /** the tier below the GPU (CPU), if any: GPU evictions demote to it (module doc). */
    readonly lower?: TierCache,
    /** `write-through`: every block registered is also stored to `lower`. */
    private readonly writeThrough = false,
  ) {}

  /** Tokens that could be allocated now (free + reclaimable). */
  available(): number {
    return this.capacityTokens - this.used + this.evictable;
  }

  /**
   * KV cache usage as vLLM reports it (`vllm:kv_cache_usage_perc`, 0..1): the share of the
   * capacity held by referenced blocks and private tokens. Cached blocks no request references
   * count as free, as in vLLM V1 (vllm-project/vllm vllm/v1/core/block_pool.py @ 002f3491
   * `get_usage` = 1 − free-queue blocks / GPU blocks, and `free_blocks` puts a block with no
   * reference on the free queue while it stays cached). 0 for an unlimited cache.
   */
  usage(): number {
    if (!Number.isFinite(this.capacityTokens) || this.capacityTokens <= 0) return 0;
    return Math.max(0, Math.min(1, (this.used - this.evictable) / this.capacityTokens));
  }

  /**
   * Number of leading block ids of `ids` present in the cache (contiguous prefix match).
   * Does not touch LRU order.
   */
  matchPrefix(ids: readonly number[]): number {
    const m = this.blocks;
    let i = 0;
    const n = ids.length;
    for (; i < n; i++) {
      const e = m.get(ids[i]!);
      if (e === undefined || e.resident < e.tokens) break;
    }
    return i;
  }

  /** Takes a reference on a resident block (removing it from the LRU when it was free). */
  ref(e: BlockEntry): void {
    if (e.refs === 0) {
      this.unlink(e);
      this.evictable -= e.resident;
    }
    e.refs++;
  }

  /** Drops a reference; a block with no reference becomes the most recently freed. */
  unref(e: BlockEntry): void {
    e.refs--;
    if (e.refs === 0) {
      this.append(e);
      this.evictable += e.resident;
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
    while (this.capacityTokens - this.used < n) this.evictOne(n - (this.capacityTokens - this.used));
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
      this.ref(have);
      // the private copy is released; it completes the block when part of it was evicted
      this.used -= tokens;
      this.restore(have);
      return have;
    }
    const e = new BlockEntry(id, tokens);
    e.refs = 1;
    this.blocks.set(id, e);
    if (this.sink && id >= 0) this.storedBuf.push(id);
    if (this.writeThrough && id >= 0) this.lower!.insert(id, tokens);
    return e;
  }

  /**
   * Completes a partly resident block that a referencing request has recomputed (its missing
   * tokens were the request's private tokens, which the caller releases): emits `stored` again.
   */
  restore(e: BlockEntry): void {
    if (e.resident === e.tokens) return;
    this.used += e.tokens - e.resident;
    e.resident = e.tokens;
    if (this.sink && e.id >= 0) this.storedBuf.push(e.id);
  }

  /** Drops every unreferenced block (vLLM reset_prefix_cache, no demotion); emits `cleared`. */
  clear(): void {
    this.flushEvents();
    while (this.head) this.evictOne(Infinity, false);
    this.removedBuf = [];
    if (this.sink) this.sink('cleared', []);
  }

  /** Delivers buffered KV events to the sink: removed blocks first, then stored ones (then the tiers'). */
  flushEvents(): void {
    this.lower?.flushEvents();
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

  /** Evicts engine blocks from the end of the least recently freed entry: at least `need` tokens or the whole entry. */
  private evictOne(need: number, demote = true): void {
    const e = this.head!;
    const g = this.evictBlockTokens;
    const cut = need === Infinity || g === Infinity ? e.resident : Math.min(e.resident, Math.ceil(need / g) * g);
    const wasFull = e.resident === e.tokens;
    // the block is complete until its first engine block goes: offload it whole to the CPU tier
    if (wasFull && demote && this.lower && !this.writeThrough && e.id >= 0) this.lower.insert(e.id, e.tokens);
    e.resident -= cut;
    this.used -= cut;
    this.evictable -= cut;
    if (e.resident <= 0) {
      this.unlink(e);
      this.blocks.delete(e.id);
      this.evictions++;
    }
    if (this.sink && e.id >= 0 && wasFull) this.removedBuf.push(e.id);
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
