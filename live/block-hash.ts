/**
 * Block ids for the emulator's prefix cache.
 *
 * - {@link fastBlockIds}: a fast non-cryptographic chained 52-bit hash (ids < 2^53, so they are
 *   exact JS numbers, like trace block ids), used to key the instance model's prefix cache.
 *   `ids[i]` covers tokens `[0, (i+1)·blockSize)`: equal ids mean equal prefixes (up to
 *   hash collisions, ~2^-52 per pair).
 * - {@link vllmBlockHashes}: vLLM's own `sha256_cbor` block hashes (reference/live-protocols.md
 *   §3.4), used for the KV events the emulator publishes, so subscribers see what a real
 *   vLLM 0.13 with `--prefix-caching-hash-algo sha256_cbor` and `PYTHONHASHSEED` would send.
 */
import { last8, noneHash, sha256Cbor } from './lmcache.js';

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Chained 52-bit ids of the full blocks of `tokens` (`floor(n / blockSize)` ids). When
 * `tailNonce` is given and the last block is partial, one more id is appended for it, mixed
 * with the nonce so it never matches another request's tail (vLLM never caches partial
 * blocks).
 */
export function fastBlockIds(tokens: readonly number[], blockSize: number, tailNonce?: number): number[] {
  if (!Number.isInteger(blockSize) || blockSize < 1) throw new Error(`blockSize must be an integer >= 1 (got ${blockSize})`);
  const ids: number[] = [];
  let a = 0x243f6a88 | 0;
  let b = 0x85a308d3 | 0;
  const full = tokens.length - (tokens.length % blockSize);
  const mixBlock = (from: number, to: number, extra: number): void => {
    for (let i = from; i < to; i++) {
      const k = tokens[i]! | 0;
      a = Math.imul(a ^ k, 0xcc9e2d51);
      a = (a << 15) | (a >>> 17);
      b = (Math.imul(b ^ k, 0x1b873593) + a) | 0;
      b = (b << 13) | (b >>> 19);
    }
    a = fmix32(a ^ (to - from) ^ extra);
    b = fmix32(b ^ a ^ Math.imul(extra, 0x9e3779b1));
    ids.push((b >>> 12) * 0x100000000 + (a >>> 0));
  };
  for (let s = 0; s < full; s += blockSize) mixBlock(s, s + blockSize, 0);
  if (tailNonce !== undefined && full < tokens.length) mixBlock(full, tokens.length, (tailNonce | 0) ^ 0x5bd1e995);
  return ids;
}

/** vLLM block hashes (32-byte digests, chained from NONE_HASH(seed)) of the full blocks of `tokens`. */
export function vllmBlockHashes(tokens: readonly number[], blockSize: number, seed = '0', parent?: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let p = parent ?? noneHash(seed);
  for (let s = 0; s + blockSize <= tokens.length; s += blockSize) {
    p = sha256Cbor([p, tokens.slice(s, s + blockSize) as number[], null]);
    out.push(p);
  }
  return out;
}

/** A vLLM block digest as the KV-event int (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`): last 8 bytes. */
export const kvEventHash = last8;
