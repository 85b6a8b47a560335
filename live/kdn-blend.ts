/**
 * CacheBlend KV in the KDN: per document, the LMCache entries a CacheBlend instance
 * (`enable_blending`, live/lmcache.ts `lmcacheSegments`) looks up for it — one key per segment,
 * independent of where the document sits — so a blend request can carry every document's KV in
 * any order (CacheBlend, Yao et al., EuroSys'25; LMCache/LMCache @6b96072 SegmentTokenDatabase).
 *
 * A document is built in the gateway's blend layout (live/blend-layout.ts) with the document
 * alone: the segments are [head: BOS + system header + "Documents:"], [the document], [the rest];
 * the KDN keeps the first two (the head is the same for every chat prompt; an instance that has
 * not served one yet needs it, because LMCache loads the leading run of segments present). The
 * bytes come from a CacheBlend builder (an instance with `enable_blending` whose LMCache stores
 * into the KDN's Redis, the prompt sent with `max_tokens` 1) or are synthesised with
 * `--synthetic-kv`. A document whose tokens change next to the separators (or that contains the
 * separator) is refused (`blend_error`): its segment would never match.
 *
 * Redis layout: `kdn:bkeys:<kid>` list of LMCache key strings (head first), values in
 * `kdn:bkv:<kid>:<key><suffix>` (per document: the shared head key is stored once per document,
 * so deleting one never breaks another); item fields `blend_ready`, `blend_keys`, `blend_tokens`
 * (document tokens), `blend_error`.
 */
import type { Redis } from 'ioredis';
import { BLEND_SEPARATOR, blendBuildText, blendSystemContent } from './blend-layout.js';
import type { BuildPrompt } from './kv-builder.js';
import { kvBytesKey, lmcacheSegments, metadataKey, rankChunkBytes, syntheticKvBytes, syntheticMetadata, type LmcacheChunk, type LmcacheConfig } from './lmcache.js';
import { encodeTextAsync } from './tokenize-pool.js';

/** Redis key of a document's blend entry value. */
export const BKV = (kid: string, key: string): string => `kdn:bkv:${kid}:${key}`;
/** Redis list of a document's blend keys. */
export const BKEYS = (kid: string): string => `kdn:bkeys:${kid}`;

/** What the blend store needs from the KDN. */
export interface BlendDeps {
  redis: Redis;
  lm: LmcacheConfig;
  /** LMCache `blend_special_str` of the instances (default {@link BLEND_SEPARATOR}). */
  separator?: string;
  bytesPerToken: number;
  /** `builder`: a CacheBlend builder computes the KV; `synthetic`: synthesised bytes. */
  source: 'builder' | 'synthetic';
  build?: (prompt: BuildPrompt, expected: readonly LmcacheChunk[]) => Promise<{ values: Map<string, [Buffer, Buffer]>; ms: number }>;
}

/** The segments a document contributes in the blend layout: [head, document]. */
export async function blendSegments(doc: string, lm: LmcacheConfig, separator = BLEND_SEPARATOR): Promise<{ head: LmcacheChunk; doc: LmcacheChunk } | string> {
  const [ids, own, sep] = await Promise.all([encodeTextAsync(blendBuildText(doc, separator)), encodeTextAsync(doc), encodeTextAsync(separator)]);
  const segs = lmcacheSegments(ids, sep, lm);
  if (segs.length !== 3) return `the document splits into ${segs.length - 1} segments at the blend separator ${JSON.stringify(separator)} (it must not contain it)`;
  const d = segs[1]!;
  const same = d.tokens === own.length && own.every((t, i) => ids[d.start + i] === t);
  if (!same) return `the document's tokens change next to the blend separator ${JSON.stringify(separator)} (its segment would never match)`;
  return { head: segs[0]!, doc: d };
}

/** CacheBlend KV of one KDN (module doc). */
export class BlendStore {
  readonly separator: string;

  constructor(private readonly d: BlendDeps) {
    this.separator = d.separator ?? BLEND_SEPARATOR;
  }

  /**
   * Builds and stores `kid`'s blend KV (replacing any earlier one).
   * @returns item fields to set; `blend_error` when the document cannot be blended
   * @throws the builder's errors (BuilderMismatch naming the field, unreachable builder)
   */
  async build(kid: string, text: string): Promise<Record<string, string | number>> {
    const { redis, lm } = this.d;
    const segs = await blendSegments(text, lm, this.separator);
    await this.delete(kid);
    if (typeof segs === 'string') return { blend_ready: 0, blend_error: segs };
    const chunks = [segs.head, segs.doc];
    let built: Map<string, [Buffer, Buffer]> | null = null;
    if (this.d.source === 'builder') built = (await this.d.build!({ kind: 'chat', messages: [{ role: 'system', content: blendSystemContent([text], this.separator) }] }, chunks)).values;
    const m = redis.multi();
    let keys = 0;
    for (const c of chunks) {
      const size = rankChunkBytes(c.tokens, this.d.bytesPerToken, lm.worldSize);
      for (const k of c.keys) {
        const [kv, md] = built ? built.get(k)! : [syntheticKvBytes(k, size), syntheticMetadata(size)];
        m.set(BKV(kid, kvBytesKey(k)), kv);
        m.set(BKV(kid, metadataKey(k)), md);
        m.rpush(BKEYS(kid), k);
        keys += 2;
      }
    }
    await m.exec();
    return { blend_ready: 1, blend_keys: keys, blend_tokens: segs.doc.tokens, blend_head_tokens: segs.head.tokens };
  }

  /** The LMCache keys of `kid`'s blend KV (head first; empty when none). */
  keys(kid: string): Promise<string[]> {
    return this.d.redis.lrange(BKEYS(kid), 0, -1);
  }

  /** Deletes `kid`'s blend KV. */
  async delete(kid: string): Promise<void> {
    const { redis } = this.d;
    const keys = await this.keys(kid);
    const m = redis.multi();
    for (const k of keys) m.del(BKV(kid, kvBytesKey(k)), BKV(kid, metadataKey(k)));
    m.del(BKEYS(kid));
    await m.exec();
  }
}
