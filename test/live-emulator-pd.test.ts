/**
 * Emulator roles and vLLM's disaggregated-serving protocol (`kv_transfer_params`) against a real
 * redis-server: P prefills with do_remote_decode and answers with the parameters, its KV in its
 * LMCache Redis; D, given them, loads that KV (reported as cached, charged on the P -> D link)
 * and streams every output token; bad parameters are a 400 naming the field.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { transferMs } from '../engine/costmodel.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { lmcacheChunks } from '../live/lmcache.js';
import { freePort } from '../live/redis-launcher.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { getText, postJson, postSse, testProfile } from './helpers/live.js';
import { describeRedis } from './helpers/system.js';

const MODEL_PATH = '/models/Meta-Llama-3-70B-Instruct';
/** a slow P -> D link so the hand-off is visible in wall time: 0.002 Gbit/s × 0.8, 3 ms. */
const LINK = { bandwidthGbps: 0.002, latencyMs: 3, efficiency: 0.8 };
const PREFILL_PARAMS = { do_remote_decode: true, do_remote_prefill: false, remote_engine_id: null, remote_block_ids: null, remote_host: null, remote_port: null };

let redisSrv: RedisServerHandle;
let redis1: Redis;
let P: EmulatorHandle;
let D: EmulatorHandle;
const others: EmulatorHandle[] = [];

beforeAll(async () => {
  redisSrv = await startTestRedis();
  redis1 = new Redis(`${redisSrv.url}/1`);
  const common = { profile: testProfile(), model: 'llama3-70b', modelPath: MODEL_PATH, bytesPerToken: 32, coldStart: false };
  P = await startEmulator({ ...common, role: 'prefill', redisUrl: `${redisSrv.url}/1`, engineId: 'engine-P' });
  // D has an LMCache Redis of its own (db 2): the hand-off must come from P's (db 1)
  D = await startEmulator({ ...common, role: 'decode', redisUrl: `${redisSrv.url}/2`, pdLink: LINK });
});
afterAll(async () => {
  for (const e of [P, D, ...others]) await e?.close();
  await redis1?.quit();
  await redisSrv?.stop();
});

const prompt = (topic: string): string => `A long report on ${topic}. `.repeat(60);

describeRedis('emulator P/D roles (kv_transfer_params)', () => {
  it('P prefills one token, stores every prompt token in its LMCache Redis and answers with the hand-off parameters', async () => {
    const text = prompt('tidal power');
    const ids: number[] = (await postJson(`${P.url}/tokenize`, { prompt: text })).json.tokens;
    expect(ids.length % 256).not.toBe(0); // a trailing partial chunk is handed over too
    const r = await postJson(`${P.url}/v1/completions`, { prompt: text, max_tokens: 1, stream: false, kv_transfer_params: PREFILL_PARAMS });
    expect(r.status).toBe(200);
    expect(r.json.usage.completion_tokens).toBe(1);
    const k = r.json.kv_transfer_params;
    expect(k).toMatchObject({ do_remote_prefill: true, do_remote_decode: false, remote_engine_id: 'engine-P', remote_host: '127.0.0.1', remote_port: Number(new URL(redisSrv.url).port), remote_db: 1, remote_num_tokens: ids.length, tp_size: 1 });
    expect(k.remote_block_ids).toHaveLength(Math.ceil(ids.length / 16));
    // stored before the answer: every chunk (the partial last one included) is in db 1 now
    const chunks = lmcacheChunks(ids, { ...P.lmcache, saveUnfullChunk: true });
    expect(chunks.length).toBe(Math.ceil(ids.length / 256));
    for (const c of chunks) expect(await redis1.exists(`${c.keys[0]}metadata`, `${c.keys[0]}kv_bytes`)).toBe(2);
    // an ordinary request carries kv_transfer_params: null, as vLLM without a hand-off
    const plain = await postJson(`${P.url}/v1/completions`, { prompt: 'hello there', max_tokens: 2 });
    expect(plain.json.kv_transfer_params).toBeNull();
  });

  it('D loads the handed-over KV (cached, not recomputed), charges it on the P -> D link and streams every token', async () => {
    const text = prompt('glacier retreat');
    const ids: number[] = (await postJson(`${P.url}/tokenize`, { prompt: text })).json.tokens;
    const p = await postJson(`${P.url}/v1/completions`, { prompt: text, max_tokens: 1, stream: false, kv_transfer_params: PREFILL_PARAMS });
    const before = JSON.parse((await getText(`${D.url}/emulator/status`)).text).pd;
    const d = await postSse(`${D.url}/v1/completions`, { prompt: text, max_tokens: 8, stream: true, stream_options: { include_usage: true }, kv_transfer_params: p.json.kv_transfer_params });
    expect(d.status).toBe(200);
    const chunks = d.data.filter((x) => x !== '[DONE]').map((x) => JSON.parse(x));
    const usage = chunks.at(-1).usage;
    expect(usage.completion_tokens).toBe(8);
    // every prompt token but the last (whose logits D needs) came from P
    expect(usage.prompt_tokens_details.cached_tokens).toBe(ids.length - 1);
    // the hand-off on the link: prompt tokens × the profile's 64 B, at 0.002 Gbit/s × 0.8 + 3 ms
    const bytes = ids.length * 64;
    const T = (bytes * 8) / (0.002e9 * 0.8) * 1000 + 3;
    expect(transferMs(bytes, LINK)).toBeCloseTo(T, 6);
    const h = JSON.parse(String(d.headers['x-kvlab-kv-transfer']));
    expect(h).toMatchObject({ tokens: ids.length, bytes, link_wait_ms: 0, miss: null });
    expect(h.transfer_ms).toBeCloseTo(T, 2);
    // the first token cannot come before the KV has crossed the link (time scale 1)
    expect(d.at[0]!).toBeGreaterThanOrEqual(T - 2);
    const after = JSON.parse((await getText(`${D.url}/emulator/status`)).text).pd;
    expect(after.decodes_received - before.decodes_received).toBe(1);
    expect(after.tokens_received - before.tokens_received).toBe(ids.length);
    expect(after.tokens_recomputed - before.tokens_recomputed).toBe(0);
    expect(after.role).toBe('decode');
  });

  it('two hand-offs from one P queue FIFO on the P -> D link', async () => {
    const texts = [prompt('river deltas'), prompt('coral reefs')];
    const ps = await Promise.all(texts.map((t) => postJson(`${P.url}/v1/completions`, { prompt: t, max_tokens: 1, kv_transfer_params: PREFILL_PARAMS })));
    const ds = await Promise.all(texts.map((t, i) => postJson(`${D.url}/v1/completions`, { prompt: t, max_tokens: 2, kv_transfer_params: ps[i]!.json.kv_transfer_params })));
    const hs = ds.map((d) => JSON.parse(String(d.headers['x-kvlab-kv-transfer'])));
    // the one that came second waited (at least most of) the first one's transfer
    const [first, second] = hs[0].start_after_ms <= hs[1].start_after_ms ? [hs[0], hs[1]] : [hs[1], hs[0]];
    expect(second.link_wait_ms).toBeGreaterThan(first.transfer_ms * 0.5);
  });

  it('D recomputes what it cannot find (P unreachable), counted as a load miss', async () => {
    const text = prompt('dune migration');
    const ids: number[] = (await postJson(`${D.url}/tokenize`, { prompt: text })).json.tokens;
    const dead = await freePort();
    const before = JSON.parse((await getText(`${D.url}/emulator/status`)).text).pd;
    const d = await postJson(`${D.url}/v1/completions`, { prompt: text, max_tokens: 2, kv_transfer_params: { do_remote_prefill: true, remote_engine_id: 'gone', remote_host: '127.0.0.1', remote_port: dead } });
    expect(d.status).toBe(200);
    expect(d.json.usage.prompt_tokens_details).toBeNull();
    const h = JSON.parse(String(d.headers['x-kvlab-kv-transfer']));
    expect(h.tokens).toBe(0);
    expect(h.miss).toMatch(/unreachable/);
    const after = JSON.parse((await getText(`${D.url}/emulator/status`)).text).pd;
    expect(after.load_misses - before.load_misses).toBe(1);
    expect(after.tokens_recomputed - before.tokens_recomputed).toBe(ids.length);
  });

  it('bad kv_transfer_params and role mismatches are a 400 naming the field', async () => {
    const bad = async (url: string, body: Record<string, unknown>, re: RegExp) => {
      const r = await postJson(`${url}/v1/completions`, { prompt: 'a short prompt', max_tokens: 1, ...body });
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe('kv_transfer_params');
      expect(r.json.error.message).toMatch(re);
    };
    await bad(D.url, { kv_transfer_params: { do_remote_prefill: true, remote_host: '127.0.0.1' } }, /kv_transfer_params\.remote_port: required/);
    await bad(D.url, { kv_transfer_params: { do_remote_prefill: true, remote_host: '127.0.0.1', remote_port: 'x' } }, /kv_transfer_params\.remote_port/);
    await bad(D.url, { kv_transfer_params: { do_remote_prefill: true, remote_port: 1 } }, /kv_transfer_params\.remote_host: required/);
    await bad(D.url, { kv_transfer_params: 'yes' }, /kv_transfer_params: must be an object/);
    await bad(P.url, { kv_transfer_params: { do_remote_decode: true, do_remote_prefill: true } }, /cannot both be true/);
    await bad(P.url, { kv_transfer_params: { do_remote_prefill: true, remote_host: '127.0.0.1', remote_port: 6379 } }, /role prefill/);
    await bad(D.url, { kv_transfer_params: { do_remote_decode: true } }, /role decode/);
    await bad(P.url, { stream: true, kv_transfer_params: { do_remote_decode: true } }, /needs stream=false/);
    const n2 = await postJson(`${P.url}/v1/completions`, { prompt: 'x y z', max_tokens: 1, n: 2, kv_transfer_params: { do_remote_decode: true } });
    expect(n2.status).toBe(400);
    expect(n2.json.error.param).toBe('n');
    // a mixed instance without LMCache Redis cannot hand KV over
    const m = await startEmulator({ profile: testProfile(), model: 'llama3-70b' });
    others.push(m);
    await bad(m.url, { kv_transfer_params: { do_remote_decode: true } }, /no LMCache Redis/);
    // every role serves ordinary requests (the gateway's fallback colocates on P)
    expect((await postJson(`${D.url}/v1/completions`, { prompt: 'plain', max_tokens: 2 })).status).toBe(200);
    expect((await postJson(`${P.url}/v1/completions`, { prompt: 'plain', max_tokens: 2 })).status).toBe(200);
  });

  it('a prefill role without --redis is refused at start', async () => {
    await expect(startEmulator({ profile: testProfile(), role: 'prefill' })).rejects.toThrow(/--role prefill needs --redis/);
    await expect(startEmulator({ profile: testProfile(), role: 'both' as never })).rejects.toThrow(/role must be one of prefill, decode, mixed/);
  });
});
