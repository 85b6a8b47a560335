/**
 * Emulator + LMCache against a real redis-server: chunk keys stored after prefill, hits
 * loaded from Redis and reported as cached_tokens, a fresh instance sharing the Redis.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { decodeMetadata, lmcacheChunks } from '../live/lmcache.js';
import { LmcacheRedis } from '../live/lmcache-redis.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { getText, parseProm, postJson, postSse, promSum, sleep, testProfile } from './helpers/live.js';
import { describeRedis } from './helpers/system.js';

let redisSrv: RedisServerHandle;
let redis: Redis;
const emus: EmulatorHandle[] = [];
const MODEL_PATH = '/models/Meta-Llama-3-70B-Instruct';

beforeAll(async () => {
  redisSrv = await startTestRedis();
  redis = new Redis(redisSrv.url);
});
afterAll(async () => {
  for (const e of emus) await e.close();
  await redis?.quit();
  await redisSrv?.stop();
});

async function emu(opts: Parameters<typeof startEmulator>[0] = {}): Promise<EmulatorHandle> {
  const e = await startEmulator({ profile: testProfile(), model: 'llama3-70b', modelPath: MODEL_PATH, redisUrl: redisSrv.url, bytesPerToken: 32, ...opts });
  emus.push(e);
  return e;
}

async function waitForKeys(pattern: string, n: number, ms = 5000): Promise<string[]> {
  const end = Date.now() + ms;
  for (;;) {
    const keys = await redis.keys(pattern);
    if (keys.length >= n || Date.now() > end) return keys;
    await sleep(20);
  }
}

describeRedis('emulator LMCache behaviour', () => {
  it('stores the prompt chunks after prefill with the LMCache key layout, kv_bytes + 28-byte metadata', async () => {
    const a = await emu();
    const prompt = 'The history of the printing press. '.repeat(80); // ~ 560+ tokens -> 2 full chunks
    const tok = await postJson(`${a.url}/tokenize`, { prompt });
    const ids: number[] = tok.json.tokens;
    expect(ids.length).toBeGreaterThan(512);
    expect(ids.length).toBeLessThan(768);
    const r = await postJson(`${a.url}/v1/completions`, { prompt, max_tokens: 2 });
    expect(r.status).toBe(200);
    expect(r.json.usage.prompt_tokens_details).toBeNull(); // first time: nothing cached
    const chunks = lmcacheChunks(ids, a.lmcache);
    expect(chunks).toHaveLength(2);
    const keys = await waitForKeys(`vllm@${MODEL_PATH}@1@0@*`, 4);
    expect(keys.sort()).toEqual([
      `${chunks[0]!.keys[0]}kv_bytes`,
      `${chunks[0]!.keys[0]}metadata`,
      `${chunks[1]!.keys[0]}kv_bytes`,
      `${chunks[1]!.keys[0]}metadata`,
    ].sort());
    expect(keys[0]).toMatch(/^vllm@\/models\/Meta-Llama-3-70B-Instruct@1@0@[0-9a-f]{1,16}@bfloat16(kv_bytes|metadata)$/);
    const meta = decodeMetadata((await redis.getBuffer(`${chunks[0]!.keys[0]}metadata`))!);
    const kv = (await redis.getBuffer(`${chunks[0]!.keys[0]}kv_bytes`))!;
    expect(kv.length).toBe(256 * 32);
    expect(meta).toEqual({ length: 256 * 32, fmt: 5, dtype: 0, shape: [256 * 32, 0, 0, 0] });
  });

  it('a second identical prompt reports cached_tokens; on a fresh instance the hit comes from Redis', async () => {
    const a = await emu();
    const prompt = 'Chapter one of a long story about caches. '.repeat(70);
    const ids: number[] = (await postJson(`${a.url}/tokenize`, { prompt })).json.tokens;
    const fullChunks = Math.floor(ids.length / 256);
    expect(fullChunks).toBeGreaterThanOrEqual(2);
    await postJson(`${a.url}/v1/completions`, { prompt, max_tokens: 1 });
    const chunks = lmcacheChunks(ids, a.lmcache);
    await waitForKeys(`${chunks.at(-1)!.keys[0]}*`, 2);
    // same instance: local prefix cache (16-token blocks) covers at least the LMCache chunks
    const again = await postSse(`${a.url}/v1/completions`, { prompt, max_tokens: 2, stream: true, stream_options: { include_usage: true } });
    const usage = JSON.parse(again.data.at(-2)!).usage;
    expect(usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(fullChunks * 256);
    expect(usage.prompt_tokens_details.cached_tokens).toBeLessThan(ids.length);

    // fresh instance, same LMCache Redis: no local cache, hit = full chunks loaded from Redis
    const b = await emu();
    const m0 = parseProm((await getText(`${b.url}/metrics`)).text);
    const r = await postJson(`${b.url}/v1/completions`, { prompt, max_tokens: 2 });
    expect(r.json.usage.prompt_tokens_details).toEqual({ cached_tokens: fullChunks * 256 });
    const m1 = parseProm((await getText(`${b.url}/metrics`)).text);
    expect(promSum(m1, 'lmcache:num_hit_tokens_total') - promSum(m0, 'lmcache:num_hit_tokens_total')).toBe(fullChunks * 256);
    expect(promSum(m1, 'vllm:external_prefix_cache_hits_total') - promSum(m0, 'vllm:external_prefix_cache_hits_total')).toBe(fullChunks * 256);
    expect(promSum(m1, 'vllm:prefix_cache_hits_total') - promSum(m0, 'vllm:prefix_cache_hits_total')).toBe(0);
  });

  it('a different prefix misses; a missing kv_bytes truncates the hit and removes the orphan metadata', async () => {
    const b = await emu();
    const prompt = 'Unrelated document about rivers and lakes. '.repeat(70);
    const ids: number[] = (await postJson(`${b.url}/tokenize`, { prompt })).json.tokens;
    await postJson(`${b.url}/v1/completions`, { prompt, max_tokens: 1 });
    const chunks = lmcacheChunks(ids, b.lmcache);
    await waitForKeys(`${chunks.at(-1)!.keys[0]}*`, 2);
    await redis.del(`${chunks[1]!.keys[0]}kv_bytes`); // as if evicted by allkeys-lru
    // LMCache-level: the orphan metadata is deleted and the load stops before that chunk
    const lm = new LmcacheRedis(redis, b.lmcache, 32);
    expect(await lm.lookup(chunks)).toBe(chunks.length);
    expect(await lm.retrieve(chunks, 0, chunks.length)).toEqual({ chunks: 1, bytes: 256 * 32 });
    expect(await redis.exists(`${chunks[1]!.keys[0]}metadata`)).toBe(0);
    expect(await lm.lookup(chunks)).toBe(1);
    // a fresh instance gets the one-chunk hit, recomputes the rest and stores it again
    const c = await emu();
    const r = await postJson(`${c.url}/v1/completions`, { prompt, max_tokens: 1 });
    expect(r.json.usage.prompt_tokens_details).toEqual({ cached_tokens: 256 });
    expect(await waitForKeys(`${chunks[1]!.keys[0]}*`, 2)).toHaveLength(2);
    const other = await postJson(`${c.url}/v1/completions`, { prompt: 'Something else entirely. '.repeat(80), max_tokens: 1 });
    expect(other.json.usage.prompt_tokens_details).toBeNull();
  });

  it('TP world size: one key pair per rank; the upstream variant uses 64-hex keys', async () => {
    const d = await emu({ modelPath: '/models/tp4', lmcache: { worldSize: 4, variant: 'upstream' } });
    const prompt = 'Tensor parallel ranks each store a shard. '.repeat(40);
    await postJson(`${d.url}/v1/completions`, { prompt, max_tokens: 1 });
    const keys = await waitForKeys('vllm@/models/tp4@4@*', 8);
    expect(keys).toHaveLength(8);
    const ranks = new Set(keys.map((k) => k.split('@')[3]));
    expect([...ranks].sort()).toEqual(['0', '1', '2', '3']);
    expect(keys.every((k) => /@[0-9a-f]{64}@bfloat16(kv_bytes|metadata)$/.test(k))).toBe(true);
    expect((await redis.getBuffer(keys.find((k) => k.endsWith('kv_bytes'))!))!.length).toBe((256 * 32) / 4);
  });
});

describeRedis('LMCache Redis unavailable', () => {
  it('serves requests as misses when its Redis goes away (as LMCache does)', async () => {
    const own = await startTestRedis();
    const e = await startEmulator({ profile: testProfile(), redisUrl: own.url });
    emus.push(e);
    const prompt = 'Resilience matters for a cache backend. '.repeat(40);
    expect((await postJson(`${e.url}/v1/completions`, { prompt, max_tokens: 1 })).status).toBe(200);
    await own.stop();
    const r = await postJson(`${e.url}/v1/completions`, { prompt: `Other ${prompt}`, max_tokens: 2 });
    expect(r.status).toBe(200);
    expect(r.json.usage.completion_tokens).toBe(2);
    const st = JSON.parse((await getText(`${e.url}/emulator/status`)).text);
    expect(st.lmcache.errors).toBeGreaterThan(0);
  });
});
