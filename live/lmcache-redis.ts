/**
 * LMCache's Redis remote backend as the emulator uses it (reference/live-protocols.md §4.4,
 * §4.6): prefix-ordered `EXISTS <key>metadata` lookup that stops at the first missing chunk
 * (a chunk counts only when every TP rank's key exists), `GET metadata` then `GET kv_bytes`
 * to load (a missing kv_bytes deletes the metadata and ends the hit), and `SET kv_bytes` before
 * `SET metadata` to store.
 */
import type { Redis } from 'ioredis';
import { kvBytesKey, metadataKey, decodeMetadata, rankChunkBytes, syntheticKvBytes, syntheticMetadata, type LmcacheChunk, type LmcacheConfig } from './lmcache.js';

/** Outcome of loading a chunk range. */
export interface RetrieveResult {
  /** chunks loaded (a prefix of the requested range). */
  chunks: number;
  /** bytes read (kv_bytes values, all ranks). */
  bytes: number;
}

/** LMCache-style access to one Redis. */
export class LmcacheRedis {
  constructor(
    readonly redis: Redis,
    readonly cfg: LmcacheConfig,
    /** synthesised KV bytes per token (summed over ranks). */
    readonly bytesPerToken: number,
  ) {}

  /**
   * Number of leading chunks whose metadata exists on every rank (one pipelined round trip).
   * Throws on a Redis error (connection lost).
   */
  async lookup(chunks: readonly LmcacheChunk[]): Promise<number> {
    if (chunks.length === 0) return 0;
    const p = this.redis.pipeline();
    for (const c of chunks) for (const k of c.keys) p.exists(metadataKey(k));
    const res = (await p.exec()) ?? [];
    const failed = res.find(([e]) => e);
    if (failed) throw failed[0];
    const ws = this.cfg.worldSize;
    let hit = 0;
    for (let i = 0; i < chunks.length; i++) {
      let all = true;
      for (let w = 0; w < ws; w++) {
        const [err, v] = res[i * ws + w] ?? [new Error('missing reply'), 0];
        if (err || Number(v) !== 1) all = false;
      }
      if (!all) break;
      hit++;
    }
    return hit;
  }

  /**
   * Loads chunks `[from, to)`: GET metadata, then GET kv_bytes, for every rank. Stops at the
   * first chunk whose metadata or kv_bytes is missing or whose kv_bytes length disagrees with
   * its metadata (a missing kv_bytes deletes the orphan metadata, as LMCache does).
   * Throws on a Redis error (connection lost).
   */
  async retrieve(chunks: readonly LmcacheChunk[], from: number, to: number): Promise<RetrieveResult> {
    if (to <= from) return { chunks: 0, bytes: 0 };
    const range = chunks.slice(from, to);
    const pm = this.redis.pipeline();
    for (const c of range) for (const k of c.keys) pm.getBuffer(metadataKey(k));
    const metas = (await pm.exec()) ?? [];
    const pk = this.redis.pipeline();
    for (const c of range) for (const k of c.keys) pk.getBuffer(kvBytesKey(k));
    const kvs = (await pk.exec()) ?? [];
    const failed = [...metas, ...kvs].find(([e]) => e);
    if (failed) throw failed[0];
    const ws = this.cfg.worldSize;
    let n = 0;
    let bytes = 0;
    for (let i = 0; i < range.length; i++) {
      let ok = true;
      for (let w = 0; w < ws; w++) {
        const j = i * ws + w;
        const meta = metas[j]?.[1] as Buffer | null | undefined;
        const kv = kvs[j]?.[1] as Buffer | null | undefined;
        if (!meta) {
          ok = false;
          break;
        }
        if (!kv) {
          await this.redis.del(metadataKey(range[i]!.keys[w]!));
          ok = false;
          break;
        }
        let len = -1;
        try {
          len = decodeMetadata(meta).length;
        } catch {
          ok = false;
          break;
        }
        if (len !== kv.length) {
          ok = false;
          break;
        }
        bytes += kv.length;
      }
      if (!ok) break;
      n++;
    }
    return { chunks: n, bytes };
  }

  /** Stores chunks `[from, end)` with synthesised bytes (kv_bytes first). Returns bytes written. */
  async store(chunks: readonly LmcacheChunk[], from: number): Promise<number> {
    if (from >= chunks.length) return 0;
    const p = this.redis.pipeline();
    let bytes = 0;
    for (const c of chunks.slice(from)) {
      const size = rankChunkBytes(c.tokens, this.bytesPerToken, this.cfg.worldSize);
      for (const k of c.keys) {
        p.set(kvBytesKey(k), syntheticKvBytes(k, size));
        p.set(metadataKey(k), syntheticMetadata(size));
        bytes += size;
      }
    }
    const res = (await p.exec()) ?? [];
    const err = res.find(([e]) => e);
    if (err) throw err[0];
    return bytes;
  }
}
