/**
 * LMCache chunk hashing and key layout: golden vectors from reference/live-protocols.md §3.4,
 * §4.3 and the appendix (computed independently by a Python canonical-CBOR encoder).
 */
import { describe, expect, it } from 'vitest';
import {
  cborEncode,
  chunkHashes,
  decodeMetadata,
  encodeMetadata,
  first8,
  kvBytesKey,
  lmcacheChunks,
  lmcacheConfig,
  metadataKey,
  noneHash,
  rankChunkBytes,
  sha256Cbor,
  syntheticMetadata,
} from '../live/lmcache.js';
import { fastBlockIds, kvEventHash, vllmBlockHashes } from '../live/block-hash.js';

const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, i) => a + i);

describe('canonical CBOR', () => {
  it('encodes the hash inputs with shortest heads', () => {
    expect(cborEncode('0').toString('hex')).toBe('6130');
    expect(cborEncode(null).toString('hex')).toBe('f6');
    expect(cborEncode([23, 24, 255, 256, 65535, 65536]).toString('hex')).toBe('86' + '17' + '1818' + '18ff' + '190100' + '19ffff' + '1a00010000');
    expect(cborEncode(2n ** 63n).toString('hex')).toBe('1b8000000000000000');
    // (parent32, tuple(16 tokens), None) head layout from §3.4
    const enc = cborEncode([Buffer.alloc(32), range(0, 16), null]);
    expect(enc.subarray(0, 3).toString('hex')).toBe('835820');
    expect(enc[35]).toBe(0x90);
    expect(enc[enc.length - 1]).toBe(0xf6);
    // 256-element array head: 0x99 0x01 0x00
    expect(cborEncode(range(0, 256)).subarray(0, 3).toString('hex')).toBe('990100');
  });
  it('rejects negative and unsafe integers', () => {
    expect(() => cborEncode(-1)).toThrow(/non-negative/);
    expect(() => cborEncode(2 ** 60)).toThrow(/safe/);
  });
});

describe('vLLM / LMCache hash vectors (PYTHONHASHSEED=0, sha256_cbor)', () => {
  it('NONE_HASH', () => {
    expect(noneHash('0').toString('hex')).toBe('4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e');
    expect(first8(noneHash('0'))).toBe(5625442194607170974n);
    expect(noneHash('1').equals(noneHash('0'))).toBe(false);
  });

  it('vLLM block hashes (block 16) and KV-event ints', () => {
    const h = vllmBlockHashes(range(0, 32), 16);
    expect(h).toHaveLength(2);
    expect(h[0]!.toString('hex')).toBe('d830de3d42c00f25a2949b5d12d98642664a44872c1614c5b0147556276afc9c');
    expect(h[1]!.toString('hex')).toBe('fedd9e4abebebbe6f6cf96b682f08d316063fe2f22a5c552192dd62904fcccac');
    expect(kvEventHash(h[0]!)).toBe(12687895063098490012n);
    expect(kvEventHash(h[1]!)).toBe(1814341696565857452n);
    // a partial trailing block is not hashed
    expect(vllmBlockHashes(range(0, 47), 16)).toHaveLength(2);
  });

  it('LMCache 0.3.11 + CacheRoute patch: first-8-bytes int chain', () => {
    const cfg = { chunkSize: 256, variant: 'cacheroute' as const, saveUnfullChunk: false, hashSeed: '0' };
    expect(chunkHashes(range(0, 512), cfg)).toEqual(['6492fa547b20b3ff', '97b9bb55fd59e881']);
    expect(BigInt('0x6492fa547b20b3ff')).toBe(7247129991142487039n);
    expect(BigInt('0x97b9bb55fd59e881')).toBe(10932975548415731841n);
    // the recipe spelled out: h0 = first8(sha256(cbor([none_int, tokens, null])))
    expect(first8(sha256Cbor([5625442194607170974n, range(0, 256), null])).toString(16)).toBe('6492fa547b20b3ff');
  });

  it('LMCache >= 0.3.12 upstream: 32-byte digest chain, .hex() keys', () => {
    const cfg = { chunkSize: 256, variant: 'upstream' as const, saveUnfullChunk: false, hashSeed: '0' };
    const h = chunkHashes(range(0, 512), cfg);
    expect(h[0]).toBe('f3de83132fabc7fa86835e24f2a2008df215e9d03ba998de8e1aaa1431327685');
    expect(h[1]).toHaveLength(64);
    expect(h[1]).toBe(sha256Cbor([Buffer.from(h[0]!, 'hex'), range(256, 512), null]).toString('hex'));
  });

  it('only full chunks are keyed unless saveUnfullChunk; chunks chain on the prefix', () => {
    const base = { chunkSize: 256, variant: 'cacheroute' as const, hashSeed: '0' };
    expect(chunkHashes(range(0, 511), { ...base, saveUnfullChunk: false })).toHaveLength(1);
    const unfull = chunkHashes(range(0, 511), { ...base, saveUnfullChunk: true });
    expect(unfull).toHaveLength(2);
    expect(unfull[1]).not.toBe('97b9bb55fd59e881');
    // changing one token in chunk 0 changes every later hash
    const t = range(0, 512);
    t[3] = 99999;
    const h = chunkHashes(t, { ...base, saveUnfullChunk: false });
    expect(h[0]).not.toBe('6492fa547b20b3ff');
    expect(h[1]).not.toBe('97b9bb55fd59e881');
  });
});

describe('LMCache Redis key layout (0.3.9–0.3.12)', () => {
  it('builds vllm@model@ws@rank@hex@dtype keys per rank, with kv_bytes / metadata suffixes', () => {
    const cfg = lmcacheConfig({ model: '/workspace/llm-stack/models/LLM-Research/Meta-Llama-3-70B-Instruct', worldSize: 8 });
    const chunks = lmcacheChunks(range(0, 600), cfg);
    expect(chunks).toHaveLength(2);
    expect(chunks[0]!.keys).toHaveLength(8);
    expect(chunks[0]!.keys[3]).toBe('vllm@/workspace/llm-stack/models/LLM-Research/Meta-Llama-3-70B-Instruct@8@3@6492fa547b20b3ff@bfloat16');
    expect(chunks[1]).toMatchObject({ index: 1, start: 256, tokens: 256, hashHex: '97b9bb55fd59e881' });
    expect(kvBytesKey('k@')).toBe('k@kv_bytes');
    expect(metadataKey('k@')).toBe('k@metadata');
  });

  it('hex is not zero-padded (format(h, "x"))', () => {
    // find a chunk whose first-8-bytes int has a leading zero nibble among some prompts
    const cfg = { chunkSize: 4, variant: 'cacheroute' as const, saveUnfullChunk: false, hashSeed: '0' };
    const lens = new Set<number>();
    for (let s = 0; s < 200; s++) for (const h of chunkHashes([s, s + 1, s + 2, s + 3], cfg)) lens.add(h.length);
    expect([...lens].some((l) => l < 16)).toBe(true);
    expect(Math.max(...lens)).toBe(16);
  });

  it('validates config fields by name', () => {
    expect(() => lmcacheConfig({ model: '' })).toThrow(/lmcache.model/);
    expect(() => lmcacheConfig({ model: 'a@b' })).toThrow(/lmcache.model/);
    expect(() => lmcacheConfig({ model: 'm', worldSize: 0 })).toThrow(/worldSize/);
    expect(() => lmcacheConfig({ model: 'm', variant: 'x' as never })).toThrow(/variant/);
  });

  it('metadata is 28 bytes of little-endian int32 and round-trips', () => {
    const m = { length: 10485760, fmt: 1, dtype: 3, shape: [2, 80, 256, 128] as [number, number, number, number] };
    const b = encodeMetadata(m);
    expect(b).toHaveLength(28);
    expect(b.readInt32LE(0)).toBe(10485760);
    expect(b.subarray(4, 12).toString('hex')).toBe('0100000003000000');
    expect(decodeMetadata(b)).toEqual(m);
    expect(decodeMetadata(syntheticMetadata(4096))).toEqual({ length: 4096, fmt: 5, dtype: 0, shape: [4096, 0, 0, 0] });
    expect(() => decodeMetadata(Buffer.alloc(27))).toThrow(/28 bytes/);
    expect(rankChunkBytes(256, 64, 8)).toBe(2048);
    expect(rankChunkBytes(3, 10, 4)).toBe(8);
  });
});

describe('fast 52-bit block ids', () => {
  it('are chained, < 2^53, deterministic, and differ on any token change', () => {
    const t = range(1000, 1000 + 16 * 40);
    const a = fastBlockIds(t, 16);
    expect(a).toHaveLength(40);
    expect(a.every((x) => Number.isSafeInteger(x) && x >= 0 && x < 2 ** 53)).toBe(true);
    expect(new Set(a).size).toBe(40);
    expect(fastBlockIds(t, 16)).toEqual(a);
    const u = [...t];
    u[5] = 7;
    const b = fastBlockIds(u, 16);
    expect(b.every((x, i) => x !== a[i])).toBe(true); // block 0 changed -> all later ids change
    const v = [...t];
    v[16 * 20] = 7;
    const c = fastBlockIds(v, 16);
    expect(c.slice(0, 20)).toEqual(a.slice(0, 20));
    expect(c.slice(20).every((x, i) => x !== a[20 + i])).toBe(true);
    // tail nonce adds a unique partial-block id
    expect(fastBlockIds([...t, 1, 2], 16, 1)).toHaveLength(41);
    expect(fastBlockIds([...t, 1, 2], 16, 1)[40]).not.toBe(fastBlockIds([...t, 1, 2], 16, 2)[40]);
    expect(() => fastBlockIds(t, 0)).toThrow(/blockSize/);
  });
});
