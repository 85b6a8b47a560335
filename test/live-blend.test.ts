/**
 * CacheBlend in live mode, end to end with real Redis, real emulators and the real gateway:
 * an instance running LMCache with enable_blending (emulator `blend`) keys KV per segment
 * between separators; the KDN keeps each document's segment KV computed by a CacheBlend builder;
 * the gateway sends blend requests in the blend layout and injects every document's KV, so the
 * documents hit in any order. Also: the separator survives the Llama-3 tokenizer (LMCache's
 * default does not), and builders with the wrong CacheBlend setting are refused naming the field.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { BLEND_DEFAULTS } from '../engine/types.js';
import { backendSpecs } from '../live/backends.js';
import { BLEND_SEPARATOR, blendSystemContent } from '../live/blend-layout.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { blendSegments } from '../live/kdn-blend.js';
import { startKdn, type KdnHandle } from '../live/kdn.js';
import { BuilderMismatch } from '../live/kv-builder.js';
import { kvBytesKey, lmcacheConfig, lmcacheSegments } from '../live/lmcache.js';
import { encodeText, renderLlama3Chat } from '../live/tokenizer.js';
import { postJson, testProfile } from './helpers/live.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { MODEL, testCluster } from './helpers/stack.js';
import { describeRedis } from './helpers/system.js';

const A = `The Danube flows through ten countries before it reaches the Black Sea. ${'Its valley links old trading towns, vineyards, fortresses and river ports. '.repeat(24)}`;
const B = `(Alps) 42 peaks above 4,000 m; "glaciers" shrink every year. ${'High passes, alpine meadows and ski villages shape the landscape there. '.repeat(24)}`;
const cfg = lmcacheConfig({ model: MODEL });

let redis: RedisServerHandle;
let kdn: KdnHandle;
let gw: GatewayHandle;
let target: EmulatorHandle;
const closers: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  redis = await startTestRedis();
  const profile = testProfile();
  const em = (db: number, blend: boolean, ts = 1) => startEmulator({ profile, model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/${db}`, bytesPerToken: 16, coldStart: false, timeScale: ts, ...(blend ? { blend: {} } : {}) });
  // db 0: the KDN's store = both builders' LMCache remote; db 1: the CacheBlend instance's LMCache
  const prefixBuilder = await em(0, false, 20);
  const blendBuilder = await em(0, true, 20);
  target = await em(1, true);
  kdn = await startKdn({ port: 0, redisUrl: `${redis.url}/0`, model: MODEL, builder: { url: prefixBuilder.url, timeoutMs: 10_000 }, blend: { builder: { url: blendBuilder.url, timeoutMs: 10_000 } }, link: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 } });
  const rc = testCluster(1, profile);
  rc.spec.instances[0]!.blend = { ...BLEND_DEFAULTS };
  gw = await startGateway({ port: 0, backends: backendSpecs([target.url], [`${redis.url}/1`]), kdnUrl: kdn.url, strategy: 'kv-only', cluster: rc, health: { intervalMs: 200 } });
  closers.push(() => gw.close(), () => kdn.close(), () => target.close(), () => blendBuilder.close(), () => prefixBuilder.close());
}, 60_000);

afterAll(async () => {
  for (const c of closers) await c().catch(() => undefined);
  await redis?.stop();
});

it('each document is one segment of its own tokens; LMCache\'s default separator " # # " splits nothing mid-prompt', async () => {
  for (const d of [A.trim(), B.trim(), 'Short.', '3 items: x, y.']) {
    const s = await blendSegments(d, cfg);
    expect(typeof s).toBe('object');
    if (typeof s === 'object') expect(s.doc.tokens).toBe(encodeText(d).length);
  }
  const text = (sep: string) => renderLlama3Chat([{ role: 'system', content: blendSystemContent([A.trim(), B.trim()], sep) }, { role: 'user', content: 'Q?' }], { addGenerationPrompt: true });
  expect(lmcacheSegments(encodeText(text(BLEND_SEPARATOR)), encodeText(BLEND_SEPARATOR), cfg)).toHaveLength(4);
  // " # # " -> [" #", " #", " "]: the space merges into the next word (" The"), so only a trailing one could match
  expect(lmcacheSegments(encodeText(text(' # # ')), encodeText(' # # '), cfg).length).toBeLessThan(4);
  expect(await blendSegments('a # #\nb', cfg)).toMatch(/must not contain/);
});

describeRedis('CacheBlend through the gateway', () => {
  it('blend: every document\'s KV from the KDN is hit, in either order; the bytes are the CacheBlend builder\'s', async () => {
    const kids: string[] = [];
    for (const d of [A, B]) {
      const r = await postJson(`${kdn.url}/knowledge/register_text`, { content: d });
      expect(r.json).toMatchObject({ kv_ready: 1, kv_source: 'builder' });
      kids.push(r.json.kid);
    }
    const items = (await postJson(`${kdn.url}/knowledge/search/text`, { knowledge_ids: kids })).json.items;
    for (const it of items) expect(it).toMatchObject({ blend_ready: 1 });
    const ask = (order: string[], q: string) => postJson(`${gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: q }], knowledge_ids: order, max_tokens: 2 });
    // what LMCache with enable_blending finds for the prompt the gateway sends: head + both documents
    const expected = (docs: string[], q: string) => {
      const ids = encodeText(renderLlama3Chat([{ role: 'system', content: blendSystemContent(docs) }, { role: 'user', content: q }], { addGenerationPrompt: true }));
      return lmcacheSegments(ids, encodeText(BLEND_SEPARATOR), cfg).slice(0, 3).reduce((a, s) => a + s.tokens, 0);
    };
    const r1 = await ask(kids, 'Which river?');
    expect(r1.status).toBe(200);
    const d1 = JSON.parse(r1.headers['x-kvlab-decision'] as string);
    expect(d1.intent).toBe('blend');
    expect(d1.reason).toContain('lmcache-blend'); // kv-only said kvcache: on a CacheBlend instance that is a blend
    expect(r1.json.usage.prompt_tokens_details.cached_tokens).toBe(expected([A.trim(), B.trim()], 'Which river?'));
    // the other order: a prefix cache would miss the second document; CacheBlend's keys do not depend on it
    const r2 = await ask([kids[1]!, kids[0]!], 'Which peaks?');
    expect(r2.json.usage.prompt_tokens_details.cached_tokens).toBe(expected([B.trim(), A.trim()], 'Which peaks?'));
    // the instance's entries are the CacheBlend builder's bytes, copied verbatim
    const db0 = new Redis(`${redis.url}/0`);
    const db1 = new Redis(`${redis.url}/1`);
    closers.push(async () => {
      db0.disconnect();
      db1.disconnect();
    });
    const keys = await db0.lrange(`kdn:bkeys:${kids[0]}`, 0, -1);
    expect(keys).toHaveLength(2); // head + the document
    for (const k of keys) expect((await db1.getBuffer(kvBytesKey(k)))!.equals((await db0.getBuffer(kvBytesKey(k)))!)).toBe(true);
  });

  it('refuses a builder whose CacheBlend setting is wrong, naming the field', async () => {
    const plain = await startEmulator({ profile: testProfile(), model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/2`, bytesPerToken: 16, coldStart: false });
    const blending = await startEmulator({ profile: testProfile(), model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/2`, bytesPerToken: 16, coldStart: false, blend: { separator: ' # # ' } });
    closers.push(() => plain.close(), () => blending.close());
    const e1 = await startKdn({ port: 0, redisUrl: `${redis.url}/2`, model: MODEL, syntheticKv: true, blend: { builder: { url: plain.url } } }).catch((e: BuilderMismatch) => e);
    expect(e1).toBeInstanceOf(BuilderMismatch);
    expect((e1 as BuilderMismatch).field).toBe('enable_blending');
    const e2 = await startKdn({ port: 0, redisUrl: `${redis.url}/2`, model: MODEL, syntheticKv: true, blend: { builder: { url: blending.url } } }).catch((e: BuilderMismatch) => e);
    expect((e2 as BuilderMismatch).field).toBe('blend_special_str');
    const e3 = await startKdn({ port: 0, redisUrl: `${redis.url}/2`, model: MODEL, builder: { url: blending.url } }).catch((e: BuilderMismatch) => e);
    expect((e3 as BuilderMismatch).field).toBe('enable_blending');
    await expect(startKdn({ port: 0, redisUrl: `${redis.url}/2`, model: MODEL, blend: {} })).rejects.toThrow(/--blend needs --blend-builder URL/);
  });
});
