/**
 * Document-sequence KV in the KDN: the KV of several documents placed one after the other at the
 * prompt head, as the gateway places them (chat-system format: one system message per document,
 * live/gateway/prompt.ts). LMCache chains every chunk hash over all tokens before it
 * (reference/live-protocols.md §4.3, live/lmcache.ts), so the KV of a second document built
 * alone is never valid behind a first one: a KDN can serve the leading run of documents only if
 * it holds the KV of that exact sequence (RAGCache's knowledge tree, Jin et al. 2024, caches
 * such document paths; the engine models it as `KdnSpec.sequences`, engine/knowledge.ts).
 *
 * A sequence is built on first use (its chunks beyond those of its first document, which are the
 * first document's own KV): by the builder (the documents sent as system messages in order,
 * `max_tokens` 1, exactly as the gateway sends them; live/kv-builder.ts), or synthesised with
 * `--synthetic-kv`. Concurrent requests for one new sequence share one build.
 *
 * Redis layout (next to live/kdn.ts's): `kdn:seq:<sid>` hash (kids JSON, chunks, tokens,
 * built_at, build_ms, source), `kdn:seqkeys:<sid>` list of the LMCache key strings beyond the
 * first document's chunks, `kdn:seqkv:<sid>:<key><suffix>` their values (per sequence: two
 * sequences sharing leading documents do not share entries, so deleting one never breaks the
 * other), `kdn:docseqs:<kid>` set of the sequences a document is part of (deleting a document
 * deletes them), `kdn:seqs` set of every sid. sid = sha256 hex of the kids joined by ",".
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { BuildPrompt } from './kv-builder.js';
import { kvBytesKey, lmcacheChunks, metadataKey, rankChunkBytes, syntheticKvBytes, syntheticMetadata, type LmcacheChunk, type LmcacheConfig } from './lmcache.js';
import { renderLlama3Chat } from './tokenizer.js';
import { encodeSystemPrefixAsync, encodeTextAsync } from './tokenize-pool.js';

/** Most documents one sequence may hold (a longer `knowledge_ids` list is a 400). */
export const MAX_SEQUENCE_DOCS = 64;

/** Identity of a document sequence: sha256 hex of the kids in prompt order joined by ",". */
export function sequenceId(kids: readonly string[]): string {
  return createHash('sha256').update(kids.join(','), 'utf8').digest('hex');
}

/**
 * Token ids of documents placed as consecutive system messages of the Llama-3-Instruct template,
 * BOS first: what the gateway's chat prompt starts with (live/gateway/prompt.ts `buildChat`).
 */
export async function sequencePrefixIds(texts: readonly string[]): Promise<number[]> {
  const ids = [...(await encodeSystemPrefixAsync(texts[0]!))];
  for (let i = 1; i < texts.length; i++) {
    const block = renderLlama3Chat([{ role: 'system', content: texts[i]! }], { addGenerationPrompt: false }).slice('<|begin_of_text|>'.length);
    for (const t of await encodeTextAsync(block)) ids.push(t);
  }
  return ids;
}

/** Redis key of a sequence entry's value. */
export const SEQKV = (sid: string, key: string): string => `kdn:seqkv:${sid}:${key}`;
const SEQ = (sid: string): string => `kdn:seq:${sid}`;
const SEQKEYS = (sid: string): string => `kdn:seqkeys:${sid}`;
const DOCSEQS = (kid: string): string => `kdn:docseqs:${kid}`;
const SEQS = 'kdn:seqs';

/** A held sequence: its LMCache keys beyond the first document's chunks (per rank, chunk order). */
export interface HeldSequence {
  sid: string;
  keys: string[];
  /** ms the build took (0 when it was held already). */
  buildMs: number;
}

/** What the sequence store needs from the KDN. */
export interface SequenceDeps {
  redis: Redis;
  lm: LmcacheConfig;
  /** synthesised bytes per token (summed over ranks), for `synthetic`. */
  bytesPerToken: number;
  /** where KV comes from; `none` = sequences cannot be built. */
  source: 'builder' | 'synthetic' | 'none';
  /** builds chunks on the builder (live/kv-builder.ts `KvBuilder.build`). */
  build?: (prompt: BuildPrompt, expected: readonly LmcacheChunk[]) => Promise<{ values: Map<string, [Buffer, Buffer]>; ms: number }>;
  /** token ids of the documents as a sequence (default {@link sequencePrefixIds}). */
  tokenize?: (texts: readonly string[]) => Promise<number[]>;
}

/** Document-sequence KV of one KDN (module doc). */
export class SequenceStore {
  private readonly building = new Map<string, Promise<HeldSequence>>();

  constructor(private readonly d: SequenceDeps) {}

  /** Sequences held now. */
  count(): Promise<number> {
    return this.d.redis.scard(SEQS);
  }

  /**
   * The KV of the sequence `kids` (texts in the same order), built first when not held.
   * `firstChunks` = chunks of the first document's own KV (those are not stored again).
   * @throws Error from the builder (the caller answers with the first document only)
   */
  async ensure(kids: readonly string[], texts: readonly string[], firstChunks: number): Promise<HeldSequence> {
    const sid = sequenceId(kids);
    const held = await this.d.redis.lrange(SEQKEYS(sid), 0, -1);
    if (held.length > 0 || (await this.d.redis.exists(SEQ(sid))) === 1) return { sid, keys: held, buildMs: 0 };
    let p = this.building.get(sid);
    if (!p) {
      p = this.buildSequence(sid, kids, texts, firstChunks).finally(() => this.building.delete(sid));
      this.building.set(sid, p);
    }
    return p;
  }

  private async buildSequence(sid: string, kids: readonly string[], texts: readonly string[], firstChunks: number): Promise<HeldSequence> {
    const { redis, lm } = this.d;
    if (this.d.source === 'none') throw new Error('this KDN has no KV source (--builder URL or --synthetic-kv)');
    const ids = await (this.d.tokenize ?? sequencePrefixIds)(texts);
    const chunks = lmcacheChunks(ids, lm).slice(firstChunks);
    let built: Map<string, [Buffer, Buffer]> | null = null;
    let ms = 0;
    if (this.d.source === 'builder' && chunks.length > 0) {
      const r = await this.d.build!({ kind: 'chat', messages: texts.map((content) => ({ role: 'system' as const, content })) }, chunks);
      built = r.values;
      ms = r.ms;
    }
    const m = redis.multi();
    const keys: string[] = [];
    for (const c of chunks) {
      const size = rankChunkBytes(c.tokens, this.d.bytesPerToken, lm.worldSize);
      for (const k of c.keys) {
        const [kv, md] = built ? built.get(k)! : [syntheticKvBytes(k, size), syntheticMetadata(size)];
        m.set(SEQKV(sid, kvBytesKey(k)), kv);
        m.set(SEQKV(sid, metadataKey(k)), md);
        m.rpush(SEQKEYS(sid), k);
        keys.push(k);
      }
    }
    m.hset(SEQ(sid), { kids: JSON.stringify(kids), chunks: chunks.length, tokens: ids.length, built_at: Date.now(), build_ms: Math.round(ms), source: this.d.source });
    m.sadd(SEQS, sid);
    for (const kid of new Set(kids)) m.sadd(DOCSEQS(kid), sid);
    await m.exec();
    return { sid, keys, buildMs: ms };
  }

  /** Deletes every sequence `kid` is part of (their KV entries too). */
  async deleteFor(kid: string): Promise<number> {
    const { redis } = this.d;
    const sids = await redis.smembers(DOCSEQS(kid));
    for (const sid of sids) {
      const keys = await redis.lrange(SEQKEYS(sid), 0, -1);
      const m = redis.multi();
      for (const k of keys) m.del(SEQKV(sid, kvBytesKey(k)), SEQKV(sid, metadataKey(k)));
      m.del(SEQKEYS(sid), SEQ(sid)).srem(SEQS, sid);
      await m.exec();
    }
    await redis.del(DOCSEQS(kid));
    return sids.length;
  }
}
