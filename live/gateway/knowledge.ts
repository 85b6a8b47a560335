/**
 * Gateway stage "knowledge lookup": the knowledge documents a request names (`knowledge_ids`) or
 * retrieves (`RAG: true`), fetched from the KDN (live/kdn.ts or CacheRoute's KDN API) and cached.
 *
 * - {@link KnowledgeStore.get}: kids → items, from the cache or `POST /knowledge/search/text`;
 *   unknown kids are a 404 naming them.
 * - {@link KnowledgeStore.retrieve}: CacheRoute-style retrieval for `RAG: true` (best word
 *   overlap of the question with each document's first line and first 300 characters; ties →
 *   earliest registered).
 * - The cache is bounded (`maxCachedChars`, least recently used first), so a long-running gateway
 *   does not keep every document it ever saw, nor their token ids.
 */
import { request as undiciRequest } from 'undici';
import { ApiError } from '../openai.js';
import { encodeSystemPrefixAsync, encodeTextAsync } from '../tokenize-pool.js';

/** A knowledge document as the gateway keeps it (immutable: kid = sha256 of the text). */
export interface KnowledgeItem {
  kid: string;
  content: string;
  /** KDN prefix format of its KV. */
  format: 'chat-system' | 'completion';
  kvReady: boolean;
  /** cached token ids: chat-system → the whole system block incl. BOS (= KDN `tokens`). */
  sysIds?: number[];
  /** the system block without BOS, for a 2nd..nth document. */
  sysTailIds?: number[];
}

/** Thrown when the KDN cannot be reached (connection / 5xx), or none is configured. */
export class KdnUnavailable extends Error {
  constructor(
    message: string,
    /** true when the gateway has no KDN at all (`--kdn` not given). */
    readonly notConfigured = false,
  ) {
    super(message);
  }
}

const STOP = new Set('the and for are was were with that this from what which who whom whose when where why how did does has have had its into onto than then them they their there these those about after before over under between also been being not but can could should would will shall may might must you your our ours his her hers she him'.split(' '));

/** Lower-case words of >= 3 letters/digits, stop words removed (retrieval features). */
export function words(text: string): Set<string> {
  const out = new Set<string>();
  for (const w of text.toLowerCase().normalize('NFKC').split(/[^\p{L}\p{N}]+/u)) if (w.length >= 3 && !STOP.has(w)) out.add(w);
  return out;
}

/** Options of a {@link KnowledgeStore}. */
export interface KnowledgeStoreOptions {
  /** catalogue refresh period for RAG retrieval, ms (default 30,000). */
  refreshMs?: number;
  /** bound of the cached document text, characters (default 64 Mi); least recently used go first. */
  maxCachedChars?: number;
}

/** Knowledge cache in front of the KDN (text by kid, catalogue for retrieval). */
export class KnowledgeStore {
  private readonly items = new Map<string, KnowledgeItem>();
  private cachedChars = 0;
  private catalogue: Array<{ kid: string; sig: Set<string> }> = [];
  private catalogueAt = -Infinity;
  private readonly refreshMs: number;
  private readonly maxCachedChars: number;
  /** KDN requests that failed (connection/5xx). */
  failures = 0;

  constructor(
    readonly kdnUrl: string | null,
    opts: KnowledgeStoreOptions | number = {},
  ) {
    const o = typeof opts === 'number' ? { refreshMs: opts } : opts;
    this.refreshMs = o.refreshMs ?? 30_000;
    this.maxCachedChars = o.maxCachedChars ?? 64 * 1024 * 1024;
  }

  /** Items cached now. */
  get size(): number {
    return this.items.size;
  }

  private async post(path: string, body: unknown): Promise<any> {
    if (!this.kdnUrl) throw new KdnUnavailable('no KDN configured (start the gateway with --kdn URL)', true);
    let res;
    try {
      res = await undiciRequest(`${this.kdnUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), headersTimeout: 10_000, bodyTimeout: 60_000 });
    } catch (e) {
      this.failures++;
      throw new KdnUnavailable(`KDN ${this.kdnUrl} unreachable: ${(e as Error).message}`);
    }
    const text = await res.body.text();
    if (res.statusCode >= 500) {
      this.failures++;
      throw new KdnUnavailable(`KDN ${path} answered ${res.statusCode}: ${text.slice(0, 200)}`);
    }
    let j: unknown;
    try {
      j = JSON.parse(text);
    } catch {
      throw new KdnUnavailable(`KDN ${path} answered non-JSON (${res.statusCode})`);
    }
    if (res.statusCode !== 200) throw new ApiError(res.statusCode === 404 ? 404 : 400, `KDN ${path}: ${(j as { detail?: string }).detail ?? text}`, res.statusCode === 404 ? 'NotFoundError' : 'BadRequestError', 'knowledge_ids');
    return j;
  }

  private remember(it: KnowledgeItem): void {
    const old = this.items.get(it.kid);
    if (old) {
      this.items.delete(it.kid);
      this.cachedChars -= old.content.length;
    }
    this.items.set(it.kid, it);
    this.cachedChars += it.content.length;
    // least recently used first (Map order = insertion order; hits re-insert), keep the newest
    for (const [kid, x] of this.items) {
      if (this.cachedChars <= this.maxCachedChars || this.items.size <= 1) break;
      this.items.delete(kid);
      this.cachedChars -= x.content.length;
    }
  }

  /**
   * The items of `kids`, in order, from the cache or the KDN.
   * @throws ApiError 404 naming unknown kids; KdnUnavailable when uncached ones cannot be fetched
   *   (or no KDN is configured).
   */
  async get(kids: string[]): Promise<KnowledgeItem[]> {
    const found = new Map<string, KnowledgeItem>();
    for (const k of kids) {
      const it = this.items.get(k);
      if (it) {
        found.set(k, it);
        this.items.delete(k); // LRU touch
        this.items.set(k, it);
      }
    }
    const missing = [...new Set(kids.filter((k) => !found.has(k)))];
    if (missing.length) {
      const j = (await this.post('/knowledge/search/text', { knowledge_ids: missing, need_fields: ['content', 'kv_ready', 'format', 'tokens'] })) as { items: Array<{ id: string; content: string; kv_ready?: number; format?: string }>; miss: string[] };
      for (const it of j.items ?? []) {
        if (typeof it.content !== 'string') continue;
        const item: KnowledgeItem = { kid: it.id, content: it.content, format: it.format === 'completion' ? 'completion' : 'chat-system', kvReady: Number(it.kv_ready ?? 0) === 1 };
        found.set(item.kid, item);
        this.remember(item);
      }
      const unknown = missing.filter((k) => !found.has(k));
      if (unknown.length) throw new ApiError(404, `unknown knowledge id${unknown.length > 1 ? 's' : ''}: ${unknown.join(', ')}`, 'NotFoundError', 'knowledge_ids');
    }
    return kids.map((k) => found.get(k)!);
  }

  /** Adds an item directly (tests, demo pre-warming). */
  put(item: KnowledgeItem): void {
    this.remember(item);
  }

  /**
   * Deterministic retrieval for `RAG: true`: the catalogue document whose signature (words of
   * its first line and first 300 characters) shares the most distinct words with `query`; ties
   * go to the earliest registered. Returns null when nothing overlaps. The catalogue comes from
   * the KDN (`/knowledge/snapshot` then `/knowledge/search/text`) and is refreshed every
   * `refreshMs` (and when empty).
   * @throws KdnUnavailable when the KDN cannot be reached (or none is configured).
   */
  async retrieve(query: string, nowWall = performance.now()): Promise<string | null> {
    if (this.catalogue.length === 0 || nowWall - this.catalogueAt > this.refreshMs) await this.refresh(nowWall);
    const q = words(query);
    let best: string | null = null;
    let bestScore = 0;
    for (const c of this.catalogue) {
      let s = 0;
      for (const w of q) if (c.sig.has(w)) s++;
      if (s > bestScore) {
        bestScore = s;
        best = c.kid;
      }
    }
    return best;
  }

  private async refresh(nowWall: number): Promise<void> {
    const snap = (await this.post('/knowledge/snapshot', { need_fields: ['kid'] })) as { items: Array<{ kid: string }> };
    const kids = snap.items.map((i) => i.kid);
    const sigs = new Map<string, Set<string>>();
    for (let i = 0; i < kids.length; i += 200) {
      const part = kids.slice(i, i + 200);
      const got = await this.get(part).catch((e) => {
        if (!(e instanceof ApiError)) throw e; // deleted meanwhile: fetch one by one below
        return null;
      });
      const list = got ?? (await Promise.all(part.map((k) => this.get([k]).then((x) => x[0]!, () => null))));
      for (const it of list) {
        if (!it) continue;
        const firstLine = it.content.split('\n', 1)[0]!;
        sigs.set(it.kid, words(`${firstLine} ${it.content.slice(0, 300)}`));
      }
    }
    this.catalogue = kids.filter((k) => sigs.has(k)).map((kid) => ({ kid, sig: sigs.get(kid)! }));
    this.catalogueAt = nowWall;
  }
}

/** Token ids of a document's system block incl. BOS (cached on the item; tokenised off the event loop when long). */
export async function sysIds(it: KnowledgeItem): Promise<number[]> {
  it.sysIds ??= await encodeSystemPrefixAsync(it.content);
  return it.sysIds;
}

/** Token ids of a document's system block without BOS, for a 2nd..nth document (cached on the item). */
export async function sysTailIds(it: KnowledgeItem): Promise<number[]> {
  it.sysTailIds ??= await encodeTextAsync(`<|start_header_id|>system<|end_header_id|>\n\n${it.content}<|eot_id|>`);
  return it.sysTailIds;
}
