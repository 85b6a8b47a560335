/**
 * LMCache 0.3.x chunk hashing and Redis key layout, reimplemented from the description in
 * reference/live-protocols.md §4.2–§4.4 (LMCache `token_database.py`, `utils.py`
 * `CacheEngineKey.to_string()`, `redis_connector.py`, `protocol.py` `RemoteMetadata`).
 *
 * - Tokens are cut into `chunkSize` (256) token chunks; only full chunks are keyed unless
 *   `saveUnfullChunk`.
 * - Chunk hashes are prefix-chained: `h_k = sha256(canonicalCBOR([h_{k-1}, [tokens…], null]))`,
 *   starting from vLLM's `NONE_HASH = sha256(canonicalCBOR(PYTHONHASHSEED string))`.
 * - Two variants (config switch `variant`):
 *   - `cacheroute`: LMCache 0.3.11 with CacheRoute's `token_database.py` patch: every digest is
 *     reduced to an int = its FIRST 8 bytes big-endian, the int is fed into the next hash
 *     (CBOR uint), and the key shows it as unpadded lowercase hex (`format(h, 'x')`).
 *   - `upstream`: LMCache ≥ 0.3.12 with vLLM ≥ 0.11: the full 32-byte digest is chained
 *     (CBOR byte string) and the key shows `digest.hex()` (64 hex chars).
 * - Key string: `{fmt}@{model_name}@{world_size}@{worker_id}@{hash_hex}@{dtype}` (fmt `vllm`),
 *   one per TP rank; Redis entries are that string + `kv_bytes` and + `metadata`.
 * - Metadata value: 7 little-endian int32 `[length, fmt, dtype, shape0..3]` = 28 bytes.
 */
import { createHash } from 'node:crypto';

/** Which LMCache chunk-hash recipe to reproduce (see module doc). */
export type ChunkHashVariant = 'cacheroute' | 'upstream';

/** Parameters that decide LMCache keys. All must match the serving instance for a hit. */
export interface LmcacheConfig {
  /** LMCache `model_name` = vLLM `--model` path/name (not the served-model-name). */
  model: string;
  /** TP × PP world size; one key per rank (worker_id 0..worldSize-1). */
  worldSize: number;
  /** LMCache `chunk_size`, tokens (256). */
  chunkSize: number;
  /** key dtype string (`bfloat16`, `half`, `float`, …). */
  dtype: string;
  /** key format prefix (`vllm`). */
  fmt: string;
  variant: ChunkHashVariant;
  /** key the trailing partial chunk too (`save_unfull_chunk`); default false. */
  saveUnfullChunk: boolean;
  /** PYTHONHASHSEED of the vLLM process (the NONE_HASH seed string); default "0". */
  hashSeed: string;
}

/** Defaults: CacheRoute deployment (chunk 256, bfloat16, fmt vllm, patched hash, seed "0", TP 1). */
export const DEFAULT_LMCACHE: Omit<LmcacheConfig, 'model'> = {
  worldSize: 1,
  chunkSize: 256,
  dtype: 'bfloat16',
  fmt: 'vllm',
  variant: 'cacheroute',
  saveUnfullChunk: false,
  hashSeed: '0',
};

/** Builds a full config from a partial one; throws on bad fields (naming them). */
export function lmcacheConfig(c: Partial<LmcacheConfig> & { model: string }): LmcacheConfig {
  const cfg: LmcacheConfig = { ...DEFAULT_LMCACHE, ...stripUndefined(c) } as LmcacheConfig;
  if (!cfg.model || cfg.model.includes('@')) throw new Error(`lmcache.model must be a non-empty string without '@' (got ${JSON.stringify(cfg.model)})`);
  if (!Number.isInteger(cfg.worldSize) || cfg.worldSize < 1) throw new Error(`lmcache.worldSize must be an integer >= 1 (got ${cfg.worldSize})`);
  if (!Number.isInteger(cfg.chunkSize) || cfg.chunkSize < 1) throw new Error(`lmcache.chunkSize must be an integer >= 1 (got ${cfg.chunkSize})`);
  if (cfg.variant !== 'cacheroute' && cfg.variant !== 'upstream') throw new Error(`lmcache.variant must be "cacheroute" or "upstream" (got ${JSON.stringify(cfg.variant)})`);
  return cfg;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

// ------------------------------------------------------------------------------------------
// Canonical CBOR (RFC 8949 §4.2.1 "core deterministic": shortest heads, definite lengths),
// just the types the hash inputs use.

/** A value {@link cborEncode} can encode. Integers must be non-negative. */
export type CborValue = null | number | bigint | string | Uint8Array | CborValue[];

function cborHead(major: number, n: number | bigint, out: number[]): void {
  const v = BigInt(n);
  const m = major << 5;
  if (v < 24n) out.push(m | Number(v));
  else if (v < 0x100n) out.push(m | 24, Number(v));
  else if (v < 0x10000n) out.push(m | 25, Number(v >> 8n), Number(v & 0xffn));
  else if (v < 0x100000000n) {
    const x = Number(v);
    out.push(m | 26, (x >>> 24) & 0xff, (x >>> 16) & 0xff, (x >>> 8) & 0xff, x & 0xff);
  } else if (v < 0x10000000000000000n) {
    out.push(m | 27);
    for (let s = 56n; s >= 0n; s -= 8n) out.push(Number((v >> s) & 0xffn));
  } else throw new Error(`CBOR integer out of range: ${v}`);
}

function cborInto(x: CborValue, out: number[]): void {
  if (x === null) out.push(0xf6);
  else if (typeof x === 'number' || typeof x === 'bigint') {
    if (typeof x === 'number' && (!Number.isSafeInteger(x) || x < 0)) throw new Error(`CBOR: only non-negative safe integers supported (got ${x})`);
    if (typeof x === 'bigint' && x < 0n) throw new Error(`CBOR: negative bigint ${x}`);
    // fast path for small numbers (token ids)
    if (typeof x === 'number' && x < 0x100000000) {
      if (x < 24) out.push(x);
      else if (x < 0x100) out.push(24, x);
      else if (x < 0x10000) out.push(25, x >>> 8, x & 0xff);
      else out.push(26, (x >>> 24) & 0xff, (x >>> 16) & 0xff, (x >>> 8) & 0xff, x & 0xff);
    } else cborHead(0, x, out);
  } else if (typeof x === 'string') {
    const b = Buffer.from(x, 'utf8');
    cborHead(3, b.length, out);
    for (const c of b) out.push(c);
  } else if (x instanceof Uint8Array) {
    cborHead(2, x.length, out);
    for (const c of x) out.push(c);
  } else if (Array.isArray(x)) {
    cborHead(4, x.length, out);
    for (const e of x) cborInto(e, out);
  } else throw new Error(`CBOR: unsupported value ${String(x)}`);
}

/** Canonical CBOR encoding (shortest-form heads, definite lengths) of `x`. */
export function cborEncode(x: CborValue): Buffer {
  const out: number[] = [];
  cborInto(x, out);
  return Buffer.from(out);
}

/** vLLM `sha256_cbor(x)`: SHA-256 of the canonical CBOR encoding, 32 bytes. */
export function sha256Cbor(x: CborValue): Buffer {
  return createHash('sha256').update(cborEncode(x)).digest();
}

/** vLLM `NONE_HASH` with `PYTHONHASHSEED=seed` and the sha256_cbor algorithm (32 bytes). */
export function noneHash(seed = '0'): Buffer {
  return sha256Cbor(seed);
}

/** First 8 bytes of a digest as an unsigned big-endian integer (CacheRoute's normalisation). */
export function first8(d: Uint8Array): bigint {
  return Buffer.from(d.buffer, d.byteOffset, d.byteLength).readBigUInt64BE(0);
}

/** Last 8 bytes of a digest as unsigned big-endian (vLLM KV-event int block hashes). */
export function last8(d: Uint8Array): bigint {
  return Buffer.from(d.buffer, d.byteOffset, d.byteLength).readBigUInt64BE(d.byteLength - 8);
}

// ------------------------------------------------------------------------------------------

/** One LMCache chunk of a token sequence. */
export interface LmcacheChunk {
  /** chunk index from 0. */
  index: number;
  /** first token position of the chunk. */
  start: number;
  /** tokens in the chunk (chunkSize, or fewer for an unfull tail chunk). */
  tokens: number;
  /** hash as shown in keys: unpadded hex (cacheroute) or 64-char digest hex (upstream). */
  hashHex: string;
  /** LMCache key string per rank (index = worker_id), without the kv_bytes/metadata suffix. */
  keys: string[];
}

/**
 * Prefix-chained LMCache chunk hashes of `tokens` (see module doc for the recipe; golden
 * vectors in test/live-lmcache.test.ts). Returns one hex string per keyed chunk.
 */
export function chunkHashes(tokens: readonly number[], cfg: Pick<LmcacheConfig, 'chunkSize' | 'variant' | 'saveUnfullChunk' | 'hashSeed'>): string[] {
  const cs = cfg.chunkSize;
  const end = cfg.saveUnfullChunk ? tokens.length : tokens.length - (tokens.length % cs);
  const out: string[] = [];
  const none = noneHash(cfg.hashSeed);
  if (cfg.variant === 'cacheroute') {
    let prefix: bigint = first8(none);
    for (let i = 0; i < end; i += cs) {
      prefix = first8(sha256Cbor([prefix, tokens.slice(i, Math.min(i + cs, end)) as number[], null]));
      out.push(prefix.toString(16));
    }
  } else {
    let prefix: Buffer = none;
    for (let i = 0; i < end; i += cs) {
      prefix = sha256Cbor([prefix, tokens.slice(i, Math.min(i + cs, end)) as number[], null]);
      out.push(prefix.toString('hex'));
    }
  }
  return out;
}

/** `CacheEngineKey.to_string()` for LMCache 0.3.9–0.3.12 (no tags). */
export function lmcacheKey(cfg: Pick<LmcacheConfig, 'fmt' | 'model' | 'worldSize' | 'dtype'>, workerId: number, hashHex: string): string {
  return `${cfg.fmt}@${cfg.model}@${cfg.worldSize}@${workerId}@${hashHex}@${cfg.dtype}`;
}

/** The chunks (with per-rank keys) LMCache would look up / store for a request's token ids. */
export function lmcacheChunks(tokens: readonly number[], cfg: LmcacheConfig): LmcacheChunk[] {
  return chunkHashes(tokens, cfg).map((hashHex, index) => {
    const start = index * cfg.chunkSize;
    const keys: string[] = [];
    for (let w = 0; w < cfg.worldSize; w++) keys.push(lmcacheKey(cfg, w, hashHex));
    return { index, start, tokens: Math.min(cfg.chunkSize, tokens.length - start), hashHex, keys };
  });
}

/** Redis key of a chunk's KV bytes (LMCache RedisConnector: key string + `kv_bytes`). */
export const kvBytesKey = (key: string): string => `${key}kv_bytes`;
/** Redis key of a chunk's metadata (key string + `metadata`); LMCache's `exists` checks this one. */
export const metadataKey = (key: string): string => `${key}metadata`;

/** LMCache `MemoryFormat` values (0.3.11). */
export const MemoryFormat = { UNDEFINED: 0, KV_2LTD: 1, KV_T2D: 2, KV_2TD: 3, BINARY: 4, BINARY_BUFFER: 5, KV_MLA_FMT: 6 } as const;
/** LMCache `DTYPE_TO_INT` values (0.3.11). */
export const DtypeInt = { none: 0, float16: 2, bfloat16: 3, float32: 4, float64: 5, uint8: 6, float8_e4m3fn: 7, float8_e5m2: 8 } as const;

/** LMCache `RemoteMetadata`: what the `metadata` entry holds. */
export interface RemoteMetadata {
  /** bytes of the kv_bytes value. */
  length: number;
  /** {@link MemoryFormat} value. */
  fmt: number;
  /** {@link DtypeInt} value. */
  dtype: number;
  shape: [number, number, number, number];
}

/** `struct.pack("iiiiiii", …)` on x86: 28 bytes of little-endian int32. */
export function encodeMetadata(m: RemoteMetadata): Buffer {
  const b = Buffer.alloc(28);
  [m.length, m.fmt, m.dtype, ...m.shape].forEach((v, i) => b.writeInt32LE(v, i * 4));
  return b;
}

/** Inverse of {@link encodeMetadata}; throws when the value is not 28 bytes. */
export function decodeMetadata(b: Buffer): RemoteMetadata {
  if (b.length !== 28) throw new Error(`LMCache metadata must be 28 bytes (got ${b.length})`);
  const v = [0, 1, 2, 3, 4, 5, 6].map((i) => b.readInt32LE(i * 4));
  return { length: v[0]!, fmt: v[1]!, dtype: v[2]!, shape: [v[3]!, v[4]!, v[5]!, v[6]!] };
}

/**
 * Metadata for a synthesised chunk: cachegen-serde layout (BINARY_BUFFER, dtype 0,
 * shape `[length,0,0,0]`), the opaque byte-buffer form LMCache uses for serialised chunks.
 */
export function syntheticMetadata(length: number): Buffer {
  return encodeMetadata({ length, fmt: MemoryFormat.BINARY_BUFFER, dtype: DtypeInt.none, shape: [length, 0, 0, 0] });
}

/**
 * Bytes of one rank's value for a chunk of `tokens` tokens when the whole model stores
 * `bytesPerToken` bytes per token summed over ranks: ceil(tokens × bytesPerToken / worldSize).
 */
export function rankChunkBytes(tokens: number, bytesPerToken: number, worldSize: number): number {
  return Math.ceil((tokens * bytesPerToken) / worldSize);
}

/**
 * Deterministic synthetic KV bytes for a key (a repeating pattern seeded by the key, so a
 * corrupted copy is detectable). Size in bytes.
 */
export function syntheticKvBytes(key: string, size: number): Buffer {
  const seed = createHash('sha256').update(key).digest();
  const b = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i += seed.length) seed.copy(b, i, 0, Math.min(seed.length, size - i));
  return b;
}

// ------------------------------------------------------------------------------------------
// CacheBlend keys (LMCache `enable_blending: true`): LMCache then uses its SegmentTokenDatabase
// instead of the chunked one (LMCache/LMCache @6b96072, lmcache/v1/token_database.py): the
// tokens are split at every occurrence of the separator's tokens (`blend_special_str`
// tokenised, BOS dropped; sliding-window match), and each segment gets ONE key whose hash covers
// that segment's tokens alone — `hash_func((None, tokens, None))`, no prefix — so a document's
// KV has the same key wherever it sits. Here the hash follows the chunk recipe of `variant`
// with a CBOR null prefix (cacheroute: first 8 bytes as unpadded hex; upstream: digest hex).
// Retrieval still takes the leading run of segments present (LMCache's cache engine breaks at
// the first missing key), then the blender repairs cross-attention (engine/knowledge.ts).

/** Hash of one CacheBlend segment (see above). */
export function segmentHash(tokens: readonly number[], cfg: Pick<LmcacheConfig, 'variant'>): string {
  const d = sha256Cbor([null, tokens as number[], null]);
  return cfg.variant === 'cacheroute' ? first8(d).toString(16) : d.toString('hex');
}

/**
 * The CacheBlend segments of `tokens` split at `sep` (separator token ids), as LMCache's
 * SegmentTokenDatabase yields them: `[0, m1)`, `[m1 + |sep|, m2)`, …, the rest after the last
 * separator; each with its per-rank keys. Shaped like {@link LmcacheChunk} so the Redis backend
 * code serves both (`tokens` = segment length, may be 0).
 */
export function lmcacheSegments(tokens: readonly number[], sep: readonly number[], cfg: LmcacheConfig): LmcacheChunk[] {
  const bounds: Array<[number, number]> = [];
  let start = 0;
  if (sep.length > 0) {
    for (let i = 0; i + sep.length <= tokens.length; i++) {
      let match = true;
      for (let j = 0; j < sep.length; j++) {
        if (tokens[i + j] !== sep[j]) {
          match = false;
          break;
        }
      }
      if (!match) continue;
      bounds.push([start, i]);
      start = i + sep.length;
      i = start - 1;
    }
  }
  bounds.push([start, tokens.length]);
  return bounds.map(([s, e], index) => {
    const hashHex = segmentHash(tokens.slice(s, e), cfg);
    const keys: string[] = [];
    for (let w = 0; w < cfg.worldSize; w++) keys.push(lmcacheKey(cfg, w, hashHex));
    return { index, start: s, tokens: e - s, hashHex, keys };
  });
}
