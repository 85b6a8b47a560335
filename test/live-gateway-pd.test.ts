/**
 * The gateway drives P/D disaggregation against two real emulators (role prefill and role
 * decode, real redis-server, real HTTP): prefill on P with kv_transfer_params, decode on D with
 * P's returned parameters, D's tokens streamed to the client; records carry P, D and the hand-off
 * times; the engine's bookings are all released. A dead D (connection refused, HTTP 503 before
 * the first byte) falls back to colocated execution on P with the reason in the record.
 */
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { transferMs } from '../engine/costmodel.js';
import { backendSpecs } from '../live/backends.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { readRecords, type TimingRecord } from '../live/recorder.js';
import { freePort } from '../live/redis-launcher.js';
import type { ResolvedCluster } from '../sim/cluster.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { getText, parseProm, postJson, postSse, promSum, testProfile } from './helpers/live.js';
import { MODEL, testCluster } from './helpers/stack.js';
import { describeRedis } from './helpers/system.js';

const LINK = { bandwidthGbps: 0.01, latencyMs: 2, efficiency: 0.8 };
let redis: RedisServerHandle;
let P: EmulatorHandle;
let D: EmulatorHandle;
let root: string;
let http503: Server;
let url503 = '';
const gws: GatewayHandle[] = [];

/** 1P1D cluster of the test profile; the P -> D link as the decode emulator charges it. */
function pdCluster(): ResolvedCluster {
  const rc = testCluster(2);
  rc.spec.instances[0]!.role = 'prefill';
  rc.spec.instances[1]!.role = 'decode';
  rc.spec.pd = { link: LINK, layerwise: false, firstToken: 'prefill' }; // the gateway makes it 'decode'
  return rc;
}

async function gateway(name: string, decodeUrl: string, health = true): Promise<GatewayHandle> {
  const g = await startGateway({
    port: 0,
    backends: backendSpecs([P.url, decodeUrl], [`${redis.url}/1`, `${redis.url}/2`]),
    strategy: 'round-robin',
    cluster: pdCluster(),
    out: join(root, name),
    model: MODEL,
    calibrate: false,
    health: { intervalMs: health ? 200 : 0 },
  });
  gws.push(g);
  return g;
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvlab-gw-pd-'));
  redis = await startTestRedis();
  const common = { profile: testProfile(), model: MODEL, modelPath: MODEL, bytesPerToken: 16, coldStart: false };
  P = await startEmulator({ ...common, role: 'prefill', redisUrl: `${redis.url}/1`, engineId: 'P0' });
  D = await startEmulator({ ...common, role: 'decode', redisUrl: `${redis.url}/2`, pdLink: LINK });
  http503 = createServer((req, res) => {
    if (req.url === '/health') return void res.writeHead(200).end('');
    req.resume();
    req.on('end', () => res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":{"message":"overloaded"}}'));
  });
  await new Promise<void>((r) => http503.listen(0, '127.0.0.1', r));
  const a = http503.address();
  url503 = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
});
afterAll(async () => {
  for (const g of gws) await g.close();
  await P?.close();
  await D?.close();
  await new Promise((r) => http503?.close(r));
  await redis?.stop();
  rmSync(root, { recursive: true, force: true });
});

const prompt = (topic: string): string => `Field notes about ${topic}, continued at length. `.repeat(40);
const status = async (e: EmulatorHandle) => JSON.parse((await getText(`${e.url}/emulator/status`)).text).pd;
const recordOf = (dir: string, id: string): TimingRecord => readRecords(join(root, dir)).find((r) => r.id === id)!;
const idle = (g: GatewayHandle) => g.engine.loads.loads.every((l) => l.inflight === 0 && l.prefillTokens === 0 && l.decodeReqs === 0 && l.kvTokens === 0);

describeRedis('gateway P/D flow (kv_transfer_params) against a prefill and a decode emulator', () => {
  it('prefills on P, decodes on D with the returned parameters, streams D tokens; records P, D and the hand-off', async () => {
    const g = await gateway('pd', D.url);
    const p0 = await status(P);
    const d0 = await status(D);
    const text = prompt('salt marshes');
    const ids: number[] = (await postJson(`${P.url}/tokenize`, { prompt: text })).json.tokens;
    const s = await postSse(`${g.url}/v1/completions`, { prompt: text, max_tokens: 6, stream: true, stream_options: { include_usage: true } });
    expect(s.status).toBe(200);
    expect(s.data.at(-1)).toBe('[DONE]');
    const chunks = s.data.slice(0, -1).map((x) => JSON.parse(x));
    expect(chunks.filter((c) => c.choices.length && c.choices[0].text).length).toBe(6);
    // D computed only the last prompt token: the rest came from P
    expect(chunks.at(-1).usage.prompt_tokens_details.cached_tokens).toBe(ids.length - 1);
    const dec = JSON.parse(String(s.headers['x-kvlab-decision']));
    expect(dec).toMatchObject({ instance: 'i0', decode: 'i1' });
    // one prefill handed off by P, one decode received by D, the whole prompt moved
    expect((await status(P)).prefills_handed_off - p0.prefills_handed_off).toBe(1);
    const d1 = await status(D);
    expect(d1.decodes_received - d0.decodes_received).toBe(1);
    expect(d1.tokens_received - d0.tokens_received).toBe(ids.length);

    // a non-streaming client: D's stream assembled
    const ns = await postJson(`${g.url}/v1/chat/completions`, { messages: [{ role: 'user', content: prompt('kelp forests') }], max_tokens: 4 });
    expect(ns.status).toBe(200);
    expect(ns.json.usage.completion_tokens).toBe(4);
    expect(ns.json.usage.prompt_tokens_details.cached_tokens).toBe(ns.json.usage.prompt_tokens - 1);

    const id = String(s.headers['x-request-id']);
    const r = recordOf('pd', id);
    expect(r.status).toBe('ok');
    expect(r.instance).toBe('i0');
    expect(r.decode_instance).toBe('i1');
    expect(r.decision!.decode).toBe('i1');
    expect(r.output_tokens).toBe(6);
    expect(r.predicted!.pd).toBeDefined();
    const pd = r.observed!.pd!;
    const bytes = ids.length * 64; // the test profile's KV bytes per token
    expect(pd).toMatchObject({ decode_instance: 'i1', kv_transfer_params: true, transfer_tokens: ids.length, transfer_bytes: bytes, fallback: null, miss: null });
    expect(pd.transfer_ms!).toBeCloseTo(transferMs(bytes, LINK), 2);
    // the hand-off in order: P sent, P done, D sent, transfer, D's first token
    expect(pd.prefill_sent_ms!).toBeGreaterThanOrEqual(r.arrival_ms);
    expect(pd.prefill_done_ms!).toBeGreaterThan(pd.prefill_sent_ms!);
    expect(pd.decode_sent_ms!).toBeGreaterThanOrEqual(pd.prefill_done_ms!);
    expect(pd.transfer_start_ms!).toBeGreaterThanOrEqual(pd.decode_sent_ms!);
    expect(r.observed!.first_token_at_ms!).toBeGreaterThanOrEqual(pd.transfer_end_ms! - 1);
    // every booking released, both instances
    expect(idle(g)).toBe(true);
    expect(promSum(parseProm((await getText(`${g.url}/metrics`)).text), 'kvlab_gateway_pd_prefills_total')).toBe(2);
  });

  it('a dead D (connection refused) falls back to colocated on P, the reason in the record; D is then taken out', async () => {
    const dead = `http://127.0.0.1:${await freePort()}`;
    const g = await gateway('dead-d', dead, false); // no health polling: the engine still thinks D is up
    const r1 = await postJson(`${g.url}/v1/completions`, { prompt: prompt('peat bogs'), max_tokens: 3 }, { 'x-request-id': 'dead-1' });
    expect(r1.status).toBe(200);
    expect(r1.json.usage.completion_tokens).toBe(3);
    const rec = recordOf('dead-d', 'dead-1');
    expect(rec.status).toBe('ok');
    expect(rec.instance).toBe('i0');
    expect(rec.decode_instance).toBeUndefined();
    expect(rec.decision!.decode).toBe('i1');
    expect(rec.observed!.pd!.decode_instance).toBeNull();
    expect(rec.observed!.pd!.fallback).toMatch(/decode instance i1 failed before the first byte: .*(ECONNREFUSED|connect)/i);
    expect(promSum(parseProm((await getText(`${g.url}/metrics`)).text), 'kvlab_gateway_pd_fallbacks_total')).toBe(1);
    expect(g.engine.up[1]).toBe(false);
    expect(idle(g)).toBe(true);
    // the next request stays on P (no decode instance is up)
    const r2 = await postJson(`${g.url}/v1/completions`, { prompt: prompt('fens'), max_tokens: 2 }, { 'x-request-id': 'dead-2' });
    expect(r2.status).toBe(200);
    const rec2 = recordOf('dead-d', 'dead-2');
    expect(rec2.instance).toBe('i0');
    expect(rec2.decision!.decode).toBeUndefined();
    expect(rec2.decision!.reason).toMatch(/no-decode-up/);
  });

  it('a D answering HTTP 503 before the first byte also falls back to P', async () => {
    const g = await gateway('d-503', url503, false);
    const r = await postSse(`${g.url}/v1/chat/completions`, { messages: [{ role: 'user', content: prompt('mangroves') }], max_tokens: 3, stream: true });
    expect(r.status).toBe(200);
    expect(r.data.at(-1)).toBe('[DONE]');
    const rec = readRecords(join(root, 'd-503'))[0]!;
    expect(rec.status).toBe('ok');
    expect(rec.output_tokens).toBe(3);
    expect(rec.observed!.pd!.fallback).toMatch(/decode instance i1 failed before the first byte: instance i1 answered HTTP 503/);
    expect(idle(g)).toBe(true);
  });
});

describeRedis('gateway replicas and P/D', () => {
  it('a replica books a peer\'s disaggregated request as decoding on D, and nothing stays booked', async () => {
    const mk = async (id: string) =>
      startGateway({ port: 0, backends: backendSpecs([P.url, D.url], [`${redis.url}/1`, `${redis.url}/2`]), strategy: 'round-robin', cluster: pdCluster(), model: MODEL, calibrate: false, health: { intervalMs: 0 }, peers: { url: `${redis.url}/6`, replicaId: id } });
    const a = await mk('pd-a');
    gws.push(a);
    const b = await mk('pd-b');
    gws.push(b);
    let onD = 0;
    let onP = 0;
    let polling = true;
    const watch = (async () => {
      while (polling) {
        onD = Math.max(onD, b.engine.loads.loads[1]!.decodeReqs);
        onP = Math.max(onP, b.engine.loads.loads[0]!.decodeReqs);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    const r = await postJson(`${a.url}/v1/completions`, { prompt: prompt('estuaries'), max_tokens: 60 });
    expect(r.status).toBe(200);
    await new Promise((res) => setTimeout(res, 100)); // the completion entry reaches b
    polling = false;
    await watch;
    expect(onD).toBe(1);
    expect(onP).toBe(0);
    expect(idle(a)).toBe(true);
    expect(idle(b)).toBe(true);
  });
});
