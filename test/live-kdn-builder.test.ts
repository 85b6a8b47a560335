/**
 * Real KV in the KDN, end to end with real Redis, real emulators and the real gateway: a builder
 * emulator whose LMCache stores into the KDN's Redis computes a registered document's chunks
 * (sent in the gateway's prefix format, max_tokens 1); the KDN records exactly those keys and
 * copies the builder's bytes into the chosen instance's LMCache Redis; the next request through
 * the gateway reports them as `cached_tokens`. A builder keyed for another model (or world size,
 * dtype, chunk hashing) is refused naming the field.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { backendSpecs } from '../live/backends.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { startKdn, type KdnHandle } from '../live/kdn.js';
import { BuilderMismatch, KvBuilder } from '../live/kv-builder.js';
import { sequenceId, sequencePrefixIds } from '../live/kdn-sequences.js';
import { kvBytesKey, lmcacheChunks, lmcacheConfig, metadataKey, syntheticKvBytes } from '../live/lmcache.js';
import { encodeSystemPrefix } from '../live/tokenizer.js';
import { postJson } from './helpers/live.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { MODEL, testCluster } from './helpers/stack.js';
import { describeRedis } from './helpers/system.js';
import { testProfile } from './helpers/live.js';

const DOC2 = `The Danube flows through ten countries before it reaches the Black Sea. ${'Its valley links old trading towns, vineyards, fortresses and busy river ports. '.repeat(22)}`;
const DOC3 = `The Alps form an arc of mountains across eight countries. ${'Glaciers, high passes, alpine meadows and ski villages shape the landscape there. '.repeat(22)}`;
const DOC = `The Arjuna Award is presented at a national ceremony that celebrates sporting achievement. ${'Athletes from many regions and disciplines have received it over the decades, and the recognition often opens doors to better training and support. '.repeat(24)}`;

let redis: RedisServerHandle;
let builderEm: EmulatorHandle;
let target: EmulatorHandle;
let kdn: KdnHandle;
let gw: GatewayHandle;
const closers: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  redis = await startTestRedis();
  const profile = testProfile();
  // db 0: the KDN's store = the builder's LMCache remote; db 1: the serving instance's LMCache
  builderEm = await startEmulator({ profile, model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/0`, bytesPerToken: 16, coldStart: false, timeScale: 20 });
  target = await startEmulator({ profile, model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/1`, bytesPerToken: 16, coldStart: false });
  kdn = await startKdn({ port: 0, redisUrl: `${redis.url}/0`, model: MODEL, builder: { url: builderEm.url, timeoutMs: 10_000 }, link: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 } });
  gw = await startGateway({ port: 0, backends: backendSpecs([target.url], [`${redis.url}/1`]), kdnUrl: kdn.url, strategy: 'kv-only', cluster: testCluster(1, profile), health: { intervalMs: 200 } });
  closers.push(() => gw.close(), () => kdn.close(), () => target.close(), () => builderEm.close());
});

afterAll(async () => {
  for (const c of closers) await c().catch(() => undefined);
  await redis?.stop();
});

describeRedis('KDN with a builder', () => {
  it('build -> record the exact chunk keys -> inject -> cached_tokens on the next request through the gateway', async () => {
    expect(kdn.kvSource).toBe('builder');
    const reg = await postJson(`${kdn.url}/knowledge/register_text`, { content: DOC });
    expect(reg.status).toBe(200);
    const ids = encodeSystemPrefix(DOC.trim());
    const chunks = lmcacheChunks(ids, lmcacheConfig({ model: MODEL }));
    expect(chunks.length).toBeGreaterThanOrEqual(2);
    expect(reg.json).toMatchObject({ status: 'created', kv_ready: 1, kv_source: 'builder', kv_keys: 2 * chunks.length });
    // the keys the KDN recorded are the builder's own LMCache entries, bytes copied verbatim
    const db0 = new Redis(`${redis.url}/0`);
    const db1 = new Redis(`${redis.url}/1`);
    closers.push(async () => {
      db0.disconnect();
      db1.disconnect();
    });
    const recorded = await db0.lrange(`kdn:kvkeys:${reg.json.kid}`, 0, -1);
    expect(recorded).toEqual(chunks.map((c) => c.keys[0]));
    for (const k of recorded) {
      const raw = await db0.getBuffer(kvBytesKey(k)); // written by the builder's LMCache
      expect(raw).not.toBeNull();
      expect((await db0.getBuffer(`kdn:kv:${kvBytesKey(k)}`))!.equals(raw!)).toBe(true);
      expect((await db0.getBuffer(`kdn:kv:${metadataKey(k)}`))!.equals((await db0.getBuffer(metadataKey(k)))!)).toBe(true);
    }
    expect(await db1.dbsize()).toBe(0);
    // a kvcache request through the gateway: the KDN copies those chunks into db 1, the instance loads them
    const r = await postJson(`${gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'Who receives the award?' }], knowledge_ids: [reg.json.kid], Injection_type: 'kvcache', max_tokens: 2 });
    expect(r.status).toBe(200);
    expect(r.json.usage.prompt_tokens_details.cached_tokens).toBe(chunks.length * 256);
    for (const k of recorded) expect((await db1.getBuffer(kvBytesKey(k)))!.equals((await db0.getBuffer(kvBytesKey(k)))!)).toBe(true);
    // the bytes are the builder's (its emulator's LMCache store), not a KDN synthesis of its own
    expect((await db1.getBuffer(kvBytesKey(recorded[0]!)))!.equals(syntheticKvBytes(recorded[0]!, 256 * 16))).toBe(true);
  });

  it('several documents: the KDN builds the sequence on first use and the next request hits every leading document', async () => {
    // a cluster whose KDN holds document sequences: the engine counts on every leading document
    const rc = testCluster(1, testProfile());
    rc.spec.kdns[0]!.sequences = true;
    const gs = await startGateway({ port: 0, backends: backendSpecs([target.url], [`${redis.url}/1`]), kdnUrl: kdn.url, strategy: 'kv-only', cluster: rc, health: { intervalMs: 200 } });
    closers.unshift(() => gs.close());
    const kids: string[] = [];
    for (const d of [DOC2, DOC3]) kids.push((await postJson(`${kdn.url}/knowledge/register_text`, { content: d })).json.kid);
    const seqIds = await sequencePrefixIds([DOC2.trim(), DOC3.trim()]);
    const cfg = lmcacheConfig({ model: MODEL });
    const all = lmcacheChunks(seqIds, cfg);
    const first = lmcacheChunks(encodeSystemPrefix(DOC2.trim()), cfg).length;
    expect(all.length).toBeGreaterThan(first + 1); // the sequence reaches well into the second document
    const r = await postJson(`${gs.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'Which rivers and which mountains?' }], knowledge_ids: kids, Injection_type: 'kvcache', max_tokens: 2 });
    expect(r.status).toBe(200);
    // every chunk of the two-document head came from the KDN (the first document's own, then the sequence's)
    expect(r.json.usage.prompt_tokens_details.cached_tokens).toBe(all.length * 256);
    const db0 = new Redis(`${redis.url}/0`);
    const db1 = new Redis(`${redis.url}/1`);
    closers.push(async () => {
      db0.disconnect();
      db1.disconnect();
    });
    // the sequence's chunks are the builder's own entries (it computed the two documents in order)
    const sid = sequenceId(kids);
    const seqKeys = await db0.lrange(`kdn:seqkeys:${sid}`, 0, -1);
    expect(seqKeys).toEqual(all.slice(first).map((c) => c.keys[0]));
    for (const k of seqKeys) {
      const raw = (await db0.getBuffer(kvBytesKey(k)))!;
      expect((await db0.getBuffer(`kdn:seqkv:${sid}:${kvBytesKey(k)}`))!.equals(raw)).toBe(true);
      expect((await db1.getBuffer(kvBytesKey(k)))!.equals(raw)).toBe(true);
    }
    // without sequences the engine counts on the first document only: so does the injection
    const plainCluster = testCluster(1, testProfile());
    const other = await startEmulator({ profile: testProfile(), model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/6`, bytesPerToken: 16, coldStart: false });
    const gp = await startGateway({ port: 0, backends: backendSpecs([other.url], [`${redis.url}/6`]), kdnUrl: kdn.url, strategy: 'kv-only', cluster: plainCluster, health: { intervalMs: 200 } });
    closers.unshift(() => gp.close(), () => other.close());
    const p = await postJson(`${gp.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'Which rivers?' }], knowledge_ids: kids, Injection_type: 'kvcache', max_tokens: 2 });
    expect(p.json.usage.prompt_tokens_details.cached_tokens).toBe(first * 256);
    // deleting a document drops every sequence it is part of
    expect((await postJson(`${kdn.url}/knowledge/pool_status`, {})).json.sequences).toBe(1);
    await postJson(`${kdn.url}/knowledge/delete`, { knowledge_ids: [kids[1]] });
    expect((await postJson(`${kdn.url}/knowledge/pool_status`, {})).json.sequences).toBe(0);
    expect(await db0.exists(`kdn:seqkv:${sid}:${kvBytesKey(seqKeys[0]!)}`)).toBe(0);
  });

  it('refuses to inject into an instance of another model (model_path): the request goes as text and says why', async () => {
    const reg = await postJson(`${kdn.url}/knowledge/register_text`, { content: DOC });
    const other = await startEmulator({ profile: testProfile(), model: MODEL, modelPath: '/models/other-model', redisUrl: `${redis.url}/7`, bytesPerToken: 16, coldStart: false });
    const g = await startGateway({ port: 0, backends: backendSpecs([other.url], [`${redis.url}/7`]), kdnUrl: kdn.url, strategy: 'kv-only', cluster: testCluster(1, testProfile()), health: { intervalMs: 200 } });
    closers.unshift(() => g.close(), () => other.close());
    const r = await postJson(`${g.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'Who?' }], knowledge_ids: [reg.json.kid], Injection_type: 'kvcache', max_tokens: 2 });
    expect(r.status).toBe(200);
    const d = JSON.parse(r.headers['x-kvlab-decision'] as string);
    expect(d.intent).toBe('text');
    expect(d.reason).toMatch(/fallback-text:kdn-http-409: .*model_path: the target instance runs "\/models\/other-model"/);
    const db7 = new Redis(`${redis.url}/7`);
    closers.push(async () => db7.disconnect());
    expect(await db7.keys(`vllm@${MODEL}@*`)).toHaveLength(0); // nothing copied (the instance stored its own computed chunks only)
    expect((await db7.keys('vllm@/models/other-model@*')).length).toBeGreaterThan(0);
  });

  it('refuses a builder keyed for another model, naming the field', async () => {
    const other = await startEmulator({ profile: testProfile(), model: MODEL, modelPath: '/models/other-model', redisUrl: `${redis.url}/2`, bytesPerToken: 16, coldStart: false });
    closers.push(() => other.close());
    const p = startKdn({ port: 0, redisUrl: `${redis.url}/2`, model: MODEL, builder: { url: other.url } });
    await expect(p).rejects.toThrow(BuilderMismatch);
    await expect(startKdn({ port: 0, redisUrl: `${redis.url}/2`, model: MODEL, builder: { url: other.url } })).rejects.toThrow(/model: it runs "\/models\/other-model".*this KDN keys KV for "test-llama"/);
    // another world size / hash seed: refused too (the emulator reports its LMCache settings)
    const ws = await startEmulator({ profile: testProfile(), model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/2`, bytesPerToken: 16, coldStart: false, lmcache: { worldSize: 2 } });
    closers.push(() => ws.close());
    await expect(startKdn({ port: 0, redisUrl: `${redis.url}/2`, model: MODEL, builder: { url: ws.url } })).rejects.toThrow(/world_size: it uses 2, this KDN 1/);
    // no builder and no --synthetic-kv: text only, and build_kv says why
    const plain = await startKdn({ port: 0, redisUrl: `${redis.url}/3`, model: MODEL });
    closers.push(() => plain.close());
    const reg = await postJson(`${plain.url}/knowledge/register_text`, { content: DOC });
    expect(reg.json).toMatchObject({ kv_ready: 0, kv_source: 'none' });
    const b = await postJson(`${plain.url}/knowledge/build_kv`, { kid: reg.json.kid });
    expect(b.status).toBe(409);
    expect(b.json.detail).toMatch(/--builder URL/);
  });

  it('after a build, keys of another dtype or hashing are diagnosed from what the builder wrote', async () => {
    // a vLLM says nothing about its LMCache settings: the mismatch shows only after a build
    const half = await startEmulator({ profile: testProfile(), model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/4`, bytesPerToken: 16, coldStart: false, lmcache: { dtype: 'half' } });
    const seed = await startEmulator({ profile: testProfile(), model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/5`, bytesPerToken: 16, coldStart: false, lmcache: { hashSeed: '42' } });
    closers.push(() => half.close(), () => seed.close());
    const cfg = lmcacheConfig({ model: MODEL });
    const chunks = lmcacheChunks(encodeSystemPrefix(DOC.trim()), cfg);
    const probe = async (url: string, db: number): Promise<BuilderMismatch> => {
      const r = new Redis(`${redis.url}/${db}`);
      closers.push(async () => r.disconnect());
      // a vLLM builder: no /emulator/status, so connect() passes and the build tells
      const b = await KvBuilder.connect({ url, timeoutMs: 1500, statusCheck: false }, r, cfg);
      return b.build({ kind: 'chat', messages: [{ role: 'system', content: DOC.trim() }] }, chunks).then(
        () => {
          throw new Error('the build should have been refused');
        },
        (e: BuilderMismatch) => e,
      );
    };
    const e1 = await probe(half.url, 4);
    expect(e1).toBeInstanceOf(BuilderMismatch);
    expect(e1.field).toBe('dtype');
    expect(e1.message).toMatch(/dtype: its chunks are keyed "half", this KDN's "bfloat16"/);
    const e2 = await probe(seed.url, 5);
    expect(e2.field).toBe('chunk hashing');
    expect(e2.message).toMatch(/PYTHONHASHSEED/);
  });
});
