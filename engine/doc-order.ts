/**
 * Document-order canonicalisation for multi-document (RAG) requests: a knowledge tree over the
 * document sequences the engine has dispatched, after RAGCache's knowledge tree (Jin et al.,
 * "RAGCache: Efficient Knowledge Caching for Retrieval-Augmented Generation", arXiv 2404.12457,
 * §4: KV of documents is cached per position in a prefix tree, so a sequence is reusable only
 * along a path of the tree).
 *
 * With prefix caching a request reuses KV only for its leading run of documents shared with an
 * earlier prompt, so the order of its documents decides what it can reuse. Where the application
 * allows reordering (retrieved passages whose order does not matter to it), `order()` puts the
 * documents along the most-travelled existing path of the tree first (sequences already
 * dispatched, hence likely cached on some instance), then the remaining ones by popularity
 * (requests that referenced them), most popular first, ties by kid — the frequency order that
 * maximises shared prefixes between different document sets, as an FP-tree does.
 *
 * Pure bookkeeping (no clock, no I/O): `observe()` is called with the order actually dispatched.
 */
import type { KnowledgeRef } from './types.js';

/** Options of a {@link KnowledgeTree}. */
export interface KnowledgeTreeOptions {
  /**
   * Tree nodes (document-sequence prefixes) kept; past it the oldest-created 10 % are dropped.
   * Popularity counts are bounded the same way. Default 100,000.
   */
  maxNodes: number;
}

/** A document's key in the tree: 16 hex digits of its kid (64 bits: collisions negligible). */
const kidKey = (kid: string): string => kid.slice(0, 16);

/** The knowledge tree (module doc). */
export class KnowledgeTree {
  private readonly popularity = new Map<string, number>();
  private readonly nodes = new Map<string, number>();
  private readonly maxNodes: number;

  /** @throws RangeError when maxNodes is not a positive integer */
  constructor(opts: Partial<KnowledgeTreeOptions> = {}) {
    this.maxNodes = opts.maxNodes ?? 100_000;
    if (!Number.isSafeInteger(this.maxNodes) || this.maxNodes < 1) throw new RangeError(`KnowledgeTree: maxNodes must be a positive integer (got ${opts.maxNodes})`);
  }

  /** Requests that referenced `kid` (as observed). */
  popularityOf(kid: string): number {
    return this.popularity.get(kid) ?? 0;
  }

  /** Dispatched requests whose document sequence started with `kids`, in that order. */
  pathCount(kids: readonly string[]): number {
    return this.nodes.get(kids.map((k) => '/' + kidKey(k)).join('')) ?? 0;
  }

  /** Number of tree nodes held. */
  get size(): number {
    return this.nodes.size;
  }

  /**
   * The canonical order of a request's documents (module doc): a new array holding the same
   * objects. Deterministic given the observed history. Fewer than two documents: a copy.
   */
  order(docs: readonly KnowledgeRef[]): KnowledgeRef[] {
    const rest = docs.slice();
    const out: KnowledgeRef[] = [];
    if (rest.length < 2) return rest;
    let key = '';
    while (rest.length > 0) {
      let best = -1;
      let bestCount = 0;
      for (let j = 0; j < rest.length; j++) {
        const c = this.nodes.get(key + '/' + kidKey(rest[j]!.kid)) ?? 0;
        if (c > bestCount || (c === bestCount && c > 0 && this.before(rest[j]!, rest[best]!))) {
          best = j;
          bestCount = c;
        }
      }
      if (best < 0) break; // off the tree: the rest by popularity
      const d = rest.splice(best, 1)[0]!;
      out.push(d);
      key += '/' + kidKey(d.kid);
    }
    rest.sort((a, b) => (this.before(a, b) ? -1 : this.before(b, a) ? 1 : 0));
    for (const d of rest) out.push(d);
    return out;
  }

  /** Records a dispatched request's documents in the order it was sent. */
  observe(docs: readonly KnowledgeRef[]): void {
    if (docs.length === 0) return;
    let key = '';
    for (const d of docs) {
      key += '/' + kidKey(d.kid);
      this.nodes.set(key, (this.nodes.get(key) ?? 0) + 1);
      this.popularity.set(d.kid, (this.popularity.get(d.kid) ?? 0) + 1);
    }
    trim(this.nodes, this.maxNodes);
    trim(this.popularity, this.maxNodes);
  }

  /** a sorts before b: more popular, then the smaller kid. */
  private before(a: KnowledgeRef, b: KnowledgeRef): boolean {
    const pa = this.popularity.get(a.kid) ?? 0;
    const pb = this.popularity.get(b.kid) ?? 0;
    return pa > pb || (pa === pb && a.kid < b.kid);
  }
}

/** Drops the oldest-inserted 10 % of a map that grew past `max` entries. */
function trim(m: Map<string, number>, max: number): void {
  if (m.size <= max) return;
  let drop = m.size - Math.floor(max * 0.9);
  for (const k of m.keys()) {
    if (drop-- <= 0) break;
    m.delete(k);
  }
}
