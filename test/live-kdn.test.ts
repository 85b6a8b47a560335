/**
 * KDN service against real redis-servers and a real emulator on loopback: registration and
 * identity, text/snapshot APIs, KV injection into an instance's LMCache Redis that the
 * emulator then hits, and FIFO link pacing.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { startKdn, knowledgeId, normaliseKnowledge, type KdnHandle } from '../live/kdn.js';
import { sequenceId, sequencePrefixIds } from '../live/kdn-sequences.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { lmcacheChunks } from '../live/lmcache.js';
import { encodeSystemPrefix } from '../live/tokenizer.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { postJson, testProfile } from './helpers/live.js';
import { describeRedis } from './helpers/system.js';

const MODEL_PATH = '/models/Meta-Llama-3-70B-Instruct';
let kdnRedis: RedisServerHandle;
let instRedis: RedisServerHandle;
let kdn: KdnHandle;
const closers: Array<() => Promise<unknown>> = [];

const DOC = `Paris is the capital and most populous city of France. ${'It hosts museums, monuments, bridges and cafes along the Seine river. '.repeat(40)}`;

beforeAll(async () => {
  [kdnRedis, instRedis] = await Promise.all([startTestRedis(), startTestRedis()]);
  kdn = await startKdn({ port: 0, syntheticKv: true, redisUrl: kdnRedis.url, model: MODEL_PATH, modelAliases: ['llama3-70b'], bytesPerToken: 32, link: { bandwidthGbps: 100, latencyMs: 0, efficiency: 1 } });
});
afterAll(async () => {
  for (const c of closers.reverse()) await c();
  await kdn?.close();
  await kdnRedis?.stop();
  await instRedis?.stop();
});

async function emulator(redisUrl: string): Promise<EmulatorHandle> {
  const e = await startEmulator({ profile: testProfile(), model: 'llama3-70b', modelPath: MODEL_PATH, redisUrl, bytesPerToken: 32 });
  closers.push(() => e.close());
  return e;
}

describeRedis('register and read knowledge', () => {
  it('kid = sha256 of the normalised text; registration is idempotent', async () => {
    const r = await postJson(`${kdn.url}/knowledge/register_text`, { content: `\r\n  ${DOC.replace(/\. /g, '.\r\n')}  \r\n`, meta: { source: 'test' } });
    expect(r.status).toBe(200);
    const norm = normaliseKnowledge(DOC.replace(/\. /g, '.\r\n'));
    expect(norm.includes('\r')).toBe(false);
    expect(r.json.kid).toBe(createHash('sha256').update(norm).digest('hex'));
    expect(r.json.kid).toBe(knowledgeId(DOC.replace(/\. /g, '.\n')));
    expect(r.json).toMatchObject({ status: 'created', length: norm.length, tokens: encodeSystemPrefix(norm).length, kv_ready: 1 });
    const chunks = Math.floor(encodeSystemPrefix(norm).length / 256);
    expect(r.json.kv_keys).toBe(2 * chunks);
    expect(r.json.kv_bytes).toBe(chunks * (256 * 32 + 28));
    const again = await postJson(`${kdn.url}/knowledge/register_text`, { content: norm });
    expect(again.json).toMatchObject({ kid: r.json.kid, status: 'exists' });
  });

  it('search/text returns the text (and miss), snapshot pages without bodies', async () => {
    const a = await postJson(`${kdn.url}/knowledge/register_text`, { content: 'Short note A.', build_kv: false });
    const b = await postJson(`${kdn.url}/knowledge/register_text`, { content: 'Short note B.' });
    const s = await postJson(`${kdn.url}/knowledge/search/text`, { knowledge_ids: [a.json.kid, 'f'.repeat(64)] });
    expect(s.json.items).toHaveLength(1);
    expect(s.json.items[0]).toMatchObject({ id: a.json.kid, kid: a.json.kid, content: 'Short note A.', kv_ready: 0 });
    expect(s.json.miss).toEqual(['f'.repeat(64)]);
    const nf = await postJson(`${kdn.url}/knowledge/search/text`, { knowledge_ids: [b.json.kid], need_fields: ['length'] });
    expect(nf.json.items[0]).toEqual({ id: b.json.kid, length: 'Short note B.'.length });
    const snap = await postJson(`${kdn.url}/knowledge/snapshot`, { need_fields: ['length', 'kv_ready'] });
    expect(snap.json.count).toBeGreaterThanOrEqual(3);
    expect(snap.json.items.every((i: Record<string, unknown>) => Object.keys(i).sort().join() === 'kid,kv_ready,length')).toBe(true);
    const page = await postJson(`${kdn.url}/knowledge/snapshot`, { limit: 1, offset: 1 });
    expect(page.json).toMatchObject({ count: snap.json.count, limit: 1, offset: 1 });
    expect(page.json.items).toHaveLength(1);
    expect('content' in page.json.items[0]).toBe(false);
    // build_kv later turns a text-only item into... still text-only when shorter than a chunk
    const built = await postJson(`${kdn.url}/knowledge/build_kv`, { kid: a.json.kid });
    expect(built.json).toMatchObject({ kid: a.json.kid, kv_ready: 0, kv_keys: 0 });
  });

  it('bad input names the field', async () => {
    const cases: Array<[string, unknown, RegExp]> = [
      ['register_text', {}, /content: field required/],
      ['register_text', { content: '  \r\n ' }, /content: must not be empty/],
      ['register_text', { content: 5 }, /content/],
      ['search/text', { knowledge_ids: [] }, /knowledge_ids/],
      ['inject_ready_kv', { redis_port: 1 }, /knowledge_ids: field required/],
      ['inject_ready_kv', { knowledge_ids: ['x'], redis_port: 'six' }, /redis_port/],
      ['inject_ready_kv', { knowledge_ids: ['x'], model: 'other-model' }, /model/],
      ['build_kv', { kid: 'nope' }, /unknown knowledge id/],
    ];
    for (const [route, body, re] of cases) {
      const r = await postJson(`${kdn.url}/knowledge/${route}`, body);
      expect(r.status, `${route} ${JSON.stringify(body)}`).toBe(route === 'build_kv' ? 404 : 400);
      expect(r.json.detail, route).toMatch(re);
    }
    const bad = await postJson(`${kdn.url}/knowledge/register_text`, '{oops');
    expect(bad.status).toBe(400);
    expect(bad.json.detail).toMatch(/JSON/);
  });
});

describeRedis('inject_ready_kv into an instance LMCache Redis', () => {
  it('copies the chunks with the LMCache layout; the emulator then reports them as cached_tokens', async () => {
    const reg = await postJson(`${kdn.url}/knowledge/register_text`, { content: DOC });
    const kid = reg.json.kid;
    const ids = encodeSystemPrefix(normaliseKnowledge(DOC));
    const chunkTokens = Math.floor(ids.length / 256) * 256;
    expect(chunkTokens).toBeGreaterThanOrEqual(512);
    const missing = 'e'.repeat(64);
    const textOnly = (await postJson(`${kdn.url}/knowledge/register_text`, { content: 'Tiny text-only doc.', build_kv: false })).json.kid;

    const em = await emulator(instRedis.url);
    const ack = await postJson(`${kdn.url}/knowledge/inject_ready_kv`, {
      request_id: 'r1',
      model: 'llama3-70b',
      knowledge_ids: [kid, missing, textOnly],
      redis_host: '127.0.0.1',
      redis_port: instRedis.port,
      redis_db: 0,
    });
    expect(ack.status).toBe(200);
    expect(ack.json).toMatchObject({
      ok: true,
      request_id: 'r1',
      injected_kids: [kid],
      miss_kids: [missing],
      text_only_kids: [textOnly],
      keys_injected: 2 * (chunkTokens / 256),
      payload_files: 2 * (chunkTokens / 256),
      payload_bytes: (chunkTokens / 256) * (256 * 32 + 28),
      tokens_injected: chunkTokens,
      network_sim_enabled: true,
    });
    for (const f of ['queue_ms', 'transfer_ms', 'total_ms']) expect(ack.json[f]).toBeGreaterThanOrEqual(0);
    // exactly the LMCache keys of the knowledge prefix are in the instance's Redis
    const r = new Redis(instRedis.url);
    closers.push(() => r.quit());
    const expected = lmcacheChunks(ids, em.lmcache).flatMap((c) => [`${c.keys[0]}kv_bytes`, `${c.keys[0]}metadata`]);
    expect((await r.keys('vllm@*')).sort()).toEqual(expected.sort());

    // the emulator's next request with that knowledge as the system prefix hits the injected chunks
    const res = await postJson(`${em.url}/v1/chat/completions`, {
      model: 'llama3-70b',
      messages: [
        { role: 'system', content: DOC },
        { role: 'user', content: 'What is the capital of France?' },
      ],
      max_tokens: 3,
    });
    expect(res.status).toBe(200);
    expect(res.json.usage.prompt_tokens_details).toEqual({ cached_tokens: chunkTokens });
    // without the knowledge prefix: no hit
    const cold = await postJson(`${em.url}/v1/chat/completions`, { messages: [{ role: 'user', content: `Q: ${DOC}` }], max_tokens: 1 });
    expect(cold.json.usage.prompt_tokens_details).toBeNull();
  });

  it('tokens limits the injected prefix to whole chunks; completion format keys BOS + text', async () => {
    const other = await startTestRedis();
    closers.push(() => other.stop());
    const reg = await postJson(`${kdn.url}/knowledge/register_text`, { content: `Completion-format knowledge. ${DOC}`, format: 'completion' });
    const ack = await postJson(`${kdn.url}/knowledge/inject_ready_kv`, { knowledge_ids: [reg.json.kid], redis_port: other.port, tokens: 300 });
    expect(ack.json).toMatchObject({ ok: true, tokens_injected: 256, keys_injected: 2 });
    const em = await emulator(other.url);
    const res = await postJson(`${em.url}/v1/completions`, { prompt: `Completion-format knowledge. ${DOC.trim()}\n\nQuestion: why?`, max_tokens: 1 });
    expect(res.json.usage.prompt_tokens_details).toEqual({ cached_tokens: 256 });
  });

  it('sequence: the first document\'s chunks, then the chained chunks of the exact sequence (synthesised), up to tokens', async () => {
    const other = await startTestRedis();
    closers.push(() => other.stop());
    const A = `Rome was founded on seven hills. ${'Its forum, temples and aqueducts shaped the ancient city and its long history. '.repeat(16)}`;
    const B = `Lisbon lies on the Tagus estuary. ${'Trams climb its steep streets between tiled houses and old viewpoints above the river. '.repeat(16)}`;
    const [ka, kb] = [(await postJson(`${kdn.url}/knowledge/register_text`, { content: A })).json.kid, (await postJson(`${kdn.url}/knowledge/register_text`, { content: B })).json.kid];
    const seq = lmcacheChunks(await sequencePrefixIds([A.trim(), B.trim()]), kdn.lmcache);
    const firstA = lmcacheChunks(encodeSystemPrefix(A.trim()), kdn.lmcache);
    expect(seq.slice(0, firstA.length).map((c) => c.hashHex)).toEqual(firstA.map((c) => c.hashHex)); // same head
    const inject = (body: Record<string, unknown>) => postJson(`${kdn.url}/knowledge/inject_ready_kv`, { redis_port: other.port, ...body });
    const full = await inject({ knowledge_ids: [ka, kb], sequence: true });
    expect(full.json).toMatchObject({ ok: true, injected_kids: [ka, kb], tokens_injected: seq.length * 256, sequence_id: sequenceId([ka, kb]) });
    const r = new Redis(other.url);
    closers.push(() => r.quit());
    expect((await r.keys('vllm@*metadata')).sort()).toEqual(seq.map((c) => `${c.keys[0]}metadata`).sort());
    // held now: the second time builds nothing; tokens caps it (inside the first document: A only)
    const capped = await inject({ knowledge_ids: [ka, kb], sequence: true, tokens: 300 });
    expect(capped.json).toMatchObject({ ok: true, injected_kids: [ka], text_only_kids: [kb], tokens_injected: 256, build_ms: 0 });
    // without `sequence` (CacheRoute's semantics) each kid's own chunks, B's keyed as if it came first
    const own = await inject({ knowledge_ids: [ka, kb] });
    expect(own.json.tokens_injected).toBe((firstA.length + lmcacheChunks(encodeSystemPrefix(B.trim()), kdn.lmcache).length) * 256);
    // an unknown later document: the first document only
    const unknown = await inject({ knowledge_ids: [ka, 'f'.repeat(64)], sequence: true });
    expect(unknown.json).toMatchObject({ ok: true, injected_kids: [ka], miss_kids: ['f'.repeat(64)], tokens_injected: firstA.length * 256 });
    const tooMany = await inject({ knowledge_ids: Array.from({ length: 65 }, () => ka), sequence: true });
    expect(tooMany.status).toBe(400);
    expect(tooMany.json.detail).toMatch(/knowledge_ids: a sequence holds at most 64/);
  });

  it('an unreachable target gives ok:false and text_only_kids', async () => {
    const reg = await postJson(`${kdn.url}/knowledge/register_text`, { content: DOC });
    const ack = await postJson(`${kdn.url}/knowledge/inject_ready_kv`, { knowledge_ids: [reg.json.kid], redis_port: 1 });
    expect(ack.status).toBe(200);
    expect(ack.json.ok).toBe(false);
    expect(ack.json.text_only_kids).toEqual([reg.json.kid]);
    expect(ack.json.detail).toMatch(/127\.0\.0\.1:1\/0/);
  });
});

describeRedis('link pacing', () => {
  it('transfers on one link serialise FIFO; another link does not wait', async () => {
    // 256 KB charged per 256-token chunk at 0.02 Gbit/s (2.5 MB/s) -> ~100 ms per chunk
    const paced = await startKdn({
      port: 0,
      syntheticKv: true,
      redisUrl: kdnRedis.url,
      model: MODEL_PATH,
      bytesPerToken: 32,
      wireBytesPerToken: 1000,
      link: { bandwidthGbps: 0.02, latencyMs: 5, efficiency: 1 },
    });
    closers.push(() => paced.close());
    const reg = await postJson(`${paced.url}/knowledge/register_text`, { content: DOC });
    const kid = reg.json.kid;
    const body = (db: number): unknown => ({ knowledge_ids: [kid], redis_port: instRedis.port, redis_db: db, tokens: 256 });
    const [a, b, c] = await Promise.all([
      postJson(`${paced.url}/knowledge/inject_ready_kv`, body(1)),
      postJson(`${paced.url}/knowledge/inject_ready_kv`, body(1)),
      postJson(`${paced.url}/knowledge/inject_ready_kv`, body(2)),
    ]);
    for (const x of [a, b, c]) {
      expect(x.json.ok).toBe(true);
      expect(x.json.wire_bytes).toBe(256_000);
      // the link model: 256,000 B * 8 / 0.02e9 b/s = 102.4 ms + 5 ms latency
      expect(x.json.model_transfer_ms).toBeCloseTo(107.4, 1);
      expect(x.json.transfer_ms).toBeGreaterThanOrEqual(x.json.model_transfer_ms - 1);
    }
    const [first, second] = a.json.queue_ms <= b.json.queue_ms ? [a.json, b.json] : [b.json, a.json];
    // the second transfer on db 1's link waited for the first one
    expect(second.queue_ms).toBeGreaterThanOrEqual(first.transfer_ms * 0.9);
    expect(second.transfer_start_ts).toBeGreaterThanOrEqual(first.transfer_end_ts - 1);
    expect(second.total_ms).toBeGreaterThan(first.total_ms + first.model_transfer_ms * 0.5);
    // db 2 is a different link: it started without waiting for db 1's transfers
    expect(c.json.queue_ms).toBeLessThan(first.model_transfer_ms * 0.5);
    expect(c.json.link.key).toBe(`127.0.0.1:${instRedis.port}/2`);
  });
});

describeRedis('tokenisation through an instance and housekeeping', () => {
  it('tokenizeUrl uses the instance /tokenize (same ids as the local tokenizer)', async () => {
    const em = await emulator(instRedis.url);
    const viaInst = await startKdn({ port: 0, syntheticKv: true, redisUrl: kdnRedis.url, model: MODEL_PATH, tokenizeUrl: em.url });
    closers.push(() => viaInst.close());
    await postJson(`${viaInst.url}/knowledge/purge_all`, {});
    const r = await postJson(`${viaInst.url}/knowledge/register_text`, { content: DOC });
    expect(r.json.tokens).toBe(encodeSystemPrefix(normaliseKnowledge(DOC)).length);
    const ps = await postJson(`${viaInst.url}/knowledge/pool_status`, {});
    expect(ps.json).toMatchObject({ total: 1, kv_ready: 1, text_only: 0 });
    const del = await postJson(`${viaInst.url}/knowledge/delete`, { knowledge_ids: [r.json.kid, 'nope'] });
    expect(del.json).toEqual({ deleted: [r.json.kid], miss: ['nope'] });
    expect(await viaInst.redis.keys('kdn:kv:*')).toEqual([]);
  });
});
