/**
 * Gateway integration: real redis-servers, emulators, a KDN and the gateway on loopback.
 * OpenAI shapes (stream and not), knowledge as text / KV through the KDN, retrieval, the
 * decision header, records, metrics, strategy switching and error shapes.
 */
import { readFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type DecisionHeader, type GatewayHandle } from '../live/gateway.js';
import { backendSpecs } from '../live/backends.js';
import { startKdn, type KdnHandle } from '../live/kdn.js';
import { resolveCluster } from '../sim/cluster.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { getText, parseProm, postJson, postSse, promSum, testProfile } from './helpers/live.js';
import { request } from 'undici';
import { describeRedis } from './helpers/system.js';

const MODEL = 'test-llama';
const redis: RedisServerHandle[] = [];
const ems: EmulatorHandle[] = [];
let kdn: KdnHandle;
let gw: GatewayHandle;
let out: string;
const kids: string[] = [];

const DOCS = [
  `Paris is the capital of France. ${'The city has museums, bridges, cafes and long avenues along the Seine river. '.repeat(30)}`,
  `Photosynthesis converts light into chemical energy. ${'Plants, algae and bacteria use chlorophyll to capture sunlight in their leaves and cells. '.repeat(30)}`,
];

beforeAll(async () => {
  for (let i = 0; i < 3; i++) redis.push(await startTestRedis());
  const profile = testProfile();
  for (let i = 0; i < 2; i++) ems.push(await startEmulator({ profile, model: MODEL, modelPath: MODEL, redisUrl: `${redis[i]!.url}/0`, bytesPerToken: 16, coldStart: false }));
  kdn = await startKdn({ port: 0, syntheticKv: true, redisUrl: redis[2]!.url, model: MODEL, bytesPerToken: 16, link: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 } });
  for (const d of DOCS) kids.push((await postJson(`${kdn.url}/knowledge/register_text`, { content: d })).json.kid);
  out = mkdtempSync(join(tmpdir(), 'kvlab-gw-'));
  const cluster = resolveCluster({ instances: 2, kdns: [{ id: 'kdn0', compression: 1 }], links: { default: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 } } }, {}, 'rtx5090x8-llama3-70b');
  for (const s of cluster.spec.instances) s.profile = profile;
  for (const s of cluster.spec.instances) s.engine = { ...profile.engine };
  gw = await startGateway({
    port: 0,
    backends: backendSpecs(ems.map((e) => e.url), redis.slice(0, 2).map((r) => `${r.url}/0`)),
    kdnUrl: kdn.url,
    strategy: 'kvlab',
    cluster,
    out,
    health: { intervalMs: 200 },
  });
}, 60_000);

afterAll(async () => {
  await gw?.close();
  for (const e of ems) await e.close();
  await kdn?.close();
  for (const r of redis) await r.stop();
  if (out) rmSync(out, { recursive: true, force: true });
});

const chat = (content: string, extra: Record<string, unknown> = {}) => ({ model: MODEL, messages: [{ role: 'user', content }], max_tokens: 4, ...extra });

describeRedis('OpenAI API through the gateway', () => {
  it('non-streaming chat without knowledge: OpenAI shape, decision header, usage', async () => {
    const r = await postJson(`${gw.url}/v1/chat/completions`, chat('Hello there, how are you?'), { 'x-request-id': 'plain-1' });
    expect(r.status).toBe(200);
    expect(r.json.object).toBe('chat.completion');
    expect(r.json.choices[0].message.role).toBe('assistant');
    expect(r.json.choices[0].message.content.length).toBeGreaterThan(0);
    expect(r.json.choices[0].finish_reason).toBe('length');
    expect(r.json.usage.completion_tokens).toBe(4);
    const h = JSON.parse(String(r.headers['x-kvlab-decision'])) as DecisionHeader;
    expect(h.id).toBe('plain-1');
    expect(h.intent).toBe('none');
    expect(h.strategy).toBe('kvlab');
    expect(['i0', 'i1']).toContain(h.instance);
    expect(h.predicted!.ttft_ms).toBeGreaterThan(0);
    expect(h.input_tokens).toBe(r.json.usage.prompt_tokens);
  });

  it('streaming completion passes SSE through chunk by chunk; usage only when asked', async () => {
    const a = await postSse(`${gw.url}/v1/completions`, { model: MODEL, prompt: 'Once upon a time', max_tokens: 5, stream: true });
    expect(a.status).toBe(200);
    expect(a.data.at(-1)).toBe('[DONE]');
    const chunks = a.data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks).toHaveLength(5);
    expect(chunks.every((c) => c.object === 'text_completion' && c.choices.length === 1)).toBe(true);
    expect(a.raw.startsWith('data: {')).toBe(true);
    const b = await postSse(`${gw.url}/v1/completions`, { model: MODEL, prompt: 'Once upon a time', max_tokens: 5, stream: true, stream_options: { include_usage: true } });
    const last = JSON.parse(b.data.at(-2)!);
    expect(last.choices).toEqual([]);
    expect(last.usage.completion_tokens).toBe(5);
  });

  it('knowledge as KV: the KDN injects into the chosen instance, which then hits it', async () => {
    const body = chat('What is the capital of France?', { knowledge_ids: [kids[0]], Injection_type: 'kvcache', stream: true, stream_options: { include_usage: true } });
    const r = await postSse(`${gw.url}/v1/chat/completions`, body);
    expect(r.status).toBe(200);
    const h = JSON.parse(String(r.headers['x-kvlab-decision'])) as DecisionHeader;
    expect(h.intent).toBe('kvcache');
    expect(h.reused_tokens).toBeGreaterThanOrEqual(256);
    expect(h.observed.transfer_tokens).toBe(h.reused_tokens);
    const usage = JSON.parse(r.data.at(-2)!).usage;
    expect(usage.prompt_tokens).toBe(h.input_tokens);
    expect(usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(h.reused_tokens);
  });

  it('knowledge as text: same prompt tokens, no transfer; a second request on the same instance hits its prefix cache', async () => {
    const body = chat('Where do plants capture sunlight?', { knowledge_ids: kids[1], Injection_type: 'text' });
    const r1 = await postJson(`${gw.url}/v1/chat/completions`, body);
    const h1 = JSON.parse(String(r1.headers['x-kvlab-decision'])) as DecisionHeader;
    expect(h1.intent).toBe('text');
    expect(h1.observed.transfer_tokens).toBe(0);
    expect(r1.json.usage.prompt_tokens).toBe(h1.input_tokens);
    expect(h1.knowledge_tokens).toBeGreaterThan(256);
    const r2 = await postJson(`${gw.url}/v1/chat/completions`, { ...body, messages: [{ role: 'user', content: 'What pigment do plants use?' }] });
    const h2 = JSON.parse(String(r2.headers['x-kvlab-decision'])) as DecisionHeader;
    if (h2.instance === h1.instance) expect(r2.json.usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(256);
    expect(h2.cached_tokens).toBeGreaterThanOrEqual(h2.instance === h1.instance ? 256 : 0);
  });

  it('RAG: true retrieves the best-overlapping document from the KDN catalogue', async () => {
    const r = await postJson(`${gw.url}/v1/chat/completions`, chat('Tell me about photosynthesis and chemical energy', { RAG: true }));
    expect(r.status).toBe(200);
    const h = JSON.parse(String(r.headers['x-kvlab-decision'])) as DecisionHeader;
    expect(h.knowledge_tokens).toBeGreaterThan(256);
    const recs = readFileSync(join(out, 'records.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(recs.find((x) => x.id === h.id)).toBeTruthy();
    const none = await postJson(`${gw.url}/v1/chat/completions`, chat('zzzz qqqq xxxx', { RAG: 'yes' }));
    expect(JSON.parse(String(none.headers['x-kvlab-decision'])).intent).toBe('none');
  });
});

describeRedis('errors in the OpenAI shape', () => {
  it('400 malformed body naming the field, 404 model / knowledge id', async () => {
    const bad = await postJson(`${gw.url}/v1/chat/completions`, '{"messages": [', {});
    expect(bad.status).toBe(400);
    expect(bad.json.error).toMatchObject({ type: 'BadRequestError', code: 400 });
    const noMsg = await postJson(`${gw.url}/v1/chat/completions`, { model: MODEL });
    expect(noMsg.status).toBe(400);
    expect(noMsg.json.error.param).toBe('messages');
    expect(noMsg.json.error.message).toMatch(/messages/);
    const badKid = await postJson(`${gw.url}/v1/chat/completions`, chat('x', { knowledge_ids: [42] }));
    expect(badKid.status).toBe(400);
    expect(badKid.json.error.param).toBe('knowledge_ids');
    const badInj = await postJson(`${gw.url}/v1/chat/completions`, chat('x', { Injection_type: 'teleport' }));
    expect(badInj.status).toBe(400);
    expect(badInj.json.error.param).toBe('Injection_type');
    const model = await postJson(`${gw.url}/v1/chat/completions`, { ...chat('x'), model: 'nope' });
    expect(model.status).toBe(404);
    expect(model.json.error).toMatchObject({ type: 'NotFoundError', param: 'model', code: 404 });
    const kid = await postJson(`${gw.url}/v1/chat/completions`, chat('x', { knowledge_ids: ['f'.repeat(64)] }));
    expect(kid.status).toBe(404);
    expect(kid.json.error.param).toBe('knowledge_ids');
    const tooMany = await postJson(`${gw.url}/v1/completions`, { model: MODEL, prompt: Array.from({ length: 65 }, (_, i) => `p${i}`) });
    expect(tooMany.status).toBe(400);
    expect(tooMany.json.error.param).toBe('prompt');
  });
});

describeRedis('operations endpoints', () => {
  it('models, health, metrics, status', async () => {
    const m = await getText(`${gw.url}/v1/models`);
    expect(JSON.parse(m.text).data[0].id).toBe(MODEL);
    expect((await getText(`${gw.url}/health`)).status).toBe(200);
    const prom = parseProm((await getText(`${gw.url}/metrics`)).text);
    expect(promSum(prom, 'kvlab_gateway_requests_total')).toBeGreaterThan(3);
    expect(promSum(prom, 'kvlab_gateway_ttft_seconds_count')).toBeGreaterThan(3);
    expect(promSum(prom, 'kvlab_gateway_intents_total', 'intent="kvcache"')).toBeGreaterThanOrEqual(1);
    expect([...prom.keys()].some((k) => k.startsWith('kvlab_gateway_instance_booked_prefill_tokens{instance="i1"}'))).toBe(true);
    expect(promSum(prom, 'kvlab_gateway_kdn_link_busy_seconds_total')).toBeGreaterThan(0);
    const st = JSON.parse((await getText(`${gw.url}/debug/status`)).text);
    expect(st.instances).toHaveLength(2);
    expect(st.instances[0]).toMatchObject({ id: 'i0', up: true });
  });

  it('GET/PUT /debug/strategy switches at run time; bad names and params are 400', async () => {
    const g = JSON.parse((await getText(`${gw.url}/debug/strategy`)).text);
    expect(g.strategy).toBe('kvlab');
    const put = async (b: unknown) => {
      const r = await request(`${gw.url}/debug/strategy`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(b) });
      return { status: r.statusCode, json: (await r.body.json()) as any };
    };
    const ok = await put({ strategy: 'round-robin', params: { intent: 'text' } });
    expect(ok.status).toBe(200);
    expect(ok.json).toMatchObject({ strategy: 'round-robin', previous: 'kvlab' });
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const r = await postJson(`${gw.url}/v1/completions`, { prompt: `round robin ${i}`, max_tokens: 1 });
      seen.add(JSON.parse(String(r.headers['x-kvlab-decision'])).instance);
    }
    expect(seen.size).toBe(2);
    const bad = await put({ strategy: 'nope' });
    expect(bad.status).toBe(400);
    expect(bad.json.error.param).toBe('strategy');
    const badP = await put({ strategy: 'kvlab', params: { bogus: 1 } });
    expect(badP.status).toBe(400);
    expect(badP.json.error.param).toBe('params');
    // a bad value (no NaN scores): 400 naming it, and routing stays with the previous strategy
    const badV = await put({ strategy: 'kvlab', params: { workWeight: 'abc' } });
    expect(badV.status).toBe(400);
    expect(badV.json.error).toMatchObject({ type: 'BadRequestError', param: 'params', code: 400 });
    expect(badV.json.error.message).toMatch(/strategy kvlab: .*workWeight/);
    const still = JSON.parse((await getText(`${gw.url}/debug/strategy`)).text);
    expect(still).toMatchObject({ strategy: 'round-robin', params: { intent: 'text' } });
    const after = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const r = await postJson(`${gw.url}/v1/completions`, { prompt: `still round robin ${i}`, max_tokens: 1 });
      const h = JSON.parse(String(r.headers['x-kvlab-decision']));
      expect(h.strategy).toBe('round-robin');
      after.add(h.instance);
    }
    expect(after.size).toBe(2);
    expect((await put({ strategy: 'kvlab' })).status).toBe(200);
  });
});
