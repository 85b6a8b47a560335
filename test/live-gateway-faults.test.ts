/**
 * Gateway faults on loopback with real processes: an emulator SIGKILLed mid-stream (in-band
 * error + failed record, other requests unaffected), an emulator SIGSTOPped (taken out by /health,
 * its in-flight attempts aborted or retried, booked load back to zero), a dead backend (retried elsewhere, taken
 * out, 503 when nothing is left), KDN or instance Redis down (fallback to text, reason
 * recorded), and SIGTERM of a `kvlab gateway` process (every record flushed, summary written).
 * Child processes run the built CLI (dist/bin/kvlab.js, built by `npm ci` / `npm run build`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backendSpecs } from '../live/backends.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { startKdn, type KdnHandle } from '../live/kdn.js';
import { freePort } from '../live/redis-launcher.js';
import { resolveCluster, type ResolvedCluster } from '../sim/cluster.js';
import type { Profile } from '../engine/types.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { postJson, postSse, sleep, testProfile } from './helpers/live.js';
import { describeRedis } from './helpers/system.js';

const KVLAB = resolve('dist/bin/kvlab.js');
const MODEL = 'test-llama';
/** ~20 ms per output token (model = wall): a 60-token stream lasts > 1 s. */
const SLOW: Profile = testProfile({}, { fixedMs: 20 });
const DOC = `Rivers shape valleys over millions of years. ${'Water carries sand, gravel and stones downstream and cuts into the rock of the riverbed. '.repeat(25)}`;

const children: ChildProcess[] = [];
const cleanups: Array<() => Promise<unknown>> = [];
let tmp: string;
let profileFile: string;

/** Spawns `node dist/bin/kvlab.js ARGS` and resolves its URL from the `ready` line. */
async function spawnKvlab(args: string[]): Promise<{ url: string; child: ChildProcess; exited: Promise<number | null> }> {
  if (!existsSync(KVLAB)) throw new Error(`${KVLAB} is missing: run npm run build first`);
  const child = spawn(process.execPath, [KVLAB, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += String(d)));
  const url = await new Promise<string>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`no ready line from kvlab ${args[0]}: ${err}`)), 20_000);
    child.stdout!.on('data', (d) => {
      out += String(d);
      const m = /ready (\S+)/.exec(out);
      if (m) {
        clearTimeout(t);
        res(m[1]!);
      }
    });
    void exited.then(() => rej(new Error(`kvlab ${args[0]} exited early: ${err}`)));
  });
  return { url, child, exited };
}

function cluster(n: number, profile: Profile): ResolvedCluster {
  const rc = resolveCluster({ instances: n, kdns: [{ id: 'kdn0', compression: 1 }], links: { default: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 } } }, {}, 'rtx5090x8-llama3-70b');
  for (const s of rc.spec.instances) {
    s.profile = profile;
    s.engine = { ...profile.engine };
  }
  return rc;
}

const records = (dir: string): any[] =>
  readFileSync(join(dir, 'records.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'kvlab-faults-'));
  profileFile = join(tmp, 'slow.json');
  writeFileSync(profileFile, JSON.stringify(SLOW));
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(tmp, { recursive: true, force: true });
});

describe('an emulator killed mid-stream', () => {
  it('gives that client an in-band error and a failed record; other requests are unaffected', async () => {
    const ems = [];
    for (let i = 0; i < 2; i++) ems.push(await spawnKvlab(['emulate', '--port', '0', '--profile', profileFile, '--model', MODEL, '--no-cold-start']));
    const out = join(tmp, 'kill');
    const gw = await startGateway({ port: 0, backends: backendSpecs(ems.map((e) => e.url)), strategy: 'round-robin', cluster: cluster(2, SLOW), out, health: { intervalMs: 100 } });
    cleanups.push(() => gw.close());
    // two long streams, one per instance (round robin)
    const body = (id: string) => ({ model: MODEL, prompt: `story ${id}`, max_tokens: 60, stream: true });
    const a = postSse(`${gw.url}/v1/completions`, body('a'));
    await sleep(50);
    const b = postSse(`${gw.url}/v1/completions`, body('b'));
    await sleep(400);
    ems[0]!.child.kill('SIGKILL');
    const [ra, rb] = await Promise.all([a, b]);
    const victim = [ra, rb].find((r) => JSON.parse(String(r.headers['x-kvlab-decision'])).instance === 'i0')!;
    const other = victim === ra ? rb : ra;
    expect(victim.status).toBe(200);
    const err = victim.data.map((d) => (d === '[DONE]' ? null : JSON.parse(d))).find((j) => j && j.error);
    expect(err.error).toMatchObject({ code: 502, type: 'BadGatewayError' });
    expect(victim.data.at(-1)).toBe('[DONE]');
    expect(other.data.at(-1)).toBe('[DONE]');
    expect(other.data.slice(0, -1).map((d) => JSON.parse(d)).filter((j) => j.choices?.length)).toHaveLength(60);
    // later requests avoid the dead instance
    await sleep(300);
    for (let i = 0; i < 3; i++) {
      const r = await postJson(`${gw.url}/v1/completions`, { model: MODEL, prompt: `after ${i}`, max_tokens: 2 });
      expect(r.status).toBe(200);
      expect(JSON.parse(String(r.headers['x-kvlab-decision'])).instance).toBe('i1');
    }
    await gw.close();
    const recs = records(out);
    const failed = recs.filter((r) => r.status === 'failed');
    expect(failed).toHaveLength(1);
    expect(failed[0].instance).toBe('i0');
    expect(failed[0].error).toMatch(/i0/);
    expect(recs.filter((r) => r.status === 'ok')).toHaveLength(4);
    await ems[1]!.child.kill('SIGTERM');
  });
});

describe('an instance that stops answering', () => {
  it('is taken out by /health: its stream fails, a request waiting for its first byte is retried elsewhere, the booked load stays right', async () => {
    const ems = [];
    for (let i = 0; i < 2; i++) ems.push(await spawnKvlab(['emulate', '--port', '0', '--profile', profileFile, '--model', MODEL, '--no-cold-start']));
    const out = join(tmp, 'stopped');
    const gw = await startGateway({ port: 0, backends: backendSpecs(ems.map((e) => e.url)), strategy: 'round-robin', cluster: cluster(2, SLOW), out, health: { intervalMs: 100, failuresToDown: 2, timeoutMs: 200 } });
    cleanups.push(() => gw.close());
    const a = postSse(`${gw.url}/v1/completions`, { model: MODEL, prompt: 'story a', max_tokens: 80, stream: true }); // i0
    await sleep(300);
    ems[0]!.child.kill('SIGSTOP');
    const b = postJson(`${gw.url}/v1/completions`, { model: MODEL, prompt: 'b', max_tokens: 2 }, { 'x-request-id': 'on-i1' }); // i1
    await sleep(20);
    const c = postJson(`${gw.url}/v1/completions`, { model: MODEL, prompt: 'c', max_tokens: 2 }, { 'x-request-id': 'waits-on-i0' }); // i0, no answer
    const [ra, rb, rc] = await Promise.all([a, b, c]);
    expect(gw.engine.up).toEqual([false, true]);
    expect(ra.data.at(-1)).toBe('[DONE]');
    expect(ra.data.map((d) => (d === '[DONE]' ? null : JSON.parse(d))).find((j) => j?.error).error.message).toMatch(/i0 went down/);
    expect(rb.status).toBe(200);
    expect(rc.status).toBe(200);
    expect(JSON.parse(String(rc.headers['x-kvlab-decision']))).toMatchObject({ instance: 'i1', retries: 1 });
    expect(gw.engine.loads.size).toBe(0);
    expect(gw.engine.loads.loads.every((l) => l.inflight === 0 && l.prefillTokens === 0)).toBe(true);
    // back: routable again with nothing booked, and the emulator dropped the aborted requests
    ems[0]!.child.kill('SIGCONT');
    for (let i = 0; i < 50 && !gw.engine.up[0]; i++) await sleep(50);
    expect(gw.engine.up[0]).toBe(true);
    let st: { inflight: number } = { inflight: -1 };
    for (let i = 0; i < 50; i++) {
      st = (await (await fetch(`${ems[0]!.url}/emulator/status`)).json()) as { inflight: number };
      if (st.inflight === 0) break;
      await sleep(50);
    }
    expect(st.inflight).toBe(0);
    await gw.close();
    const recs = records(out);
    expect(recs).toHaveLength(3);
    expect(recs.find((r) => r.id === 'waits-on-i0')).toMatchObject({ status: 'ok', instance: 'i1' });
    expect(recs.filter((r) => r.status === 'failed')).toHaveLength(1);
    for (const e of ems) e.child.kill('SIGTERM');
  });
});

describe('dead backends', () => {
  it('a request failing before its first byte is retried once elsewhere; the dead one is taken out; none left → 503', async () => {
    const em = await startEmulator({ profile: testProfile(), model: MODEL, coldStart: false });
    cleanups.push(() => em.close());
    const dead = `http://127.0.0.1:${await freePort()}`;
    const out = join(tmp, 'dead');
    const gw = await startGateway({ port: 0, backends: backendSpecs([dead, em.url]), strategy: 'round-robin', cluster: cluster(2, testProfile()), out, model: MODEL, health: { intervalMs: 0 } });
    cleanups.push(() => gw.close());
    const r1 = await postJson(`${gw.url}/v1/completions`, { prompt: 'first', max_tokens: 2 }, { 'x-request-id': 'retry-1' });
    expect(r1.status).toBe(200);
    const h = JSON.parse(String(r1.headers['x-kvlab-decision']));
    expect(h.instance).toBe('i1');
    expect(h.retries).toBe(1);
    expect(gw.engine.up).toEqual([false, true]);
    const r2 = await postJson(`${gw.url}/v1/completions`, { prompt: 'second', max_tokens: 2 });
    expect(JSON.parse(String(r2.headers['x-kvlab-decision'])).retries).toBe(0);
    await gw.close();
    const rec = records(out).find((r) => r.id === 'retry-1');
    expect(rec).toMatchObject({ status: 'ok', instance: 'i1' });
    expect(rec.observed.retries).toBe(1);

    const gw2 = await startGateway({ port: 0, backends: backendSpecs([dead]), strategy: 'least-load', cluster: cluster(1, testProfile()), model: MODEL, health: { intervalMs: 0 } });
    cleanups.push(() => gw2.close());
    const bad = await postJson(`${gw2.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'hi' }] });
    expect(bad.status).toBe(502);
    expect(bad.json.error).toMatchObject({ type: 'BadGatewayError', code: 502 });
    const none = await postJson(`${gw2.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'hi' }] });
    expect(none.status).toBe(503);
    expect(none.json.error).toMatchObject({ code: 503 });
    expect(none.json.error.message).toMatch(/no instance is up/);
    expect((await fetch(`${gw2.url}/health`)).status).toBe(503);
  });
});

describeRedis('KDN or Redis down', () => {
  let redis: RedisServerHandle[] = [];
  let kdn: KdnHandle;
  let em: EmulatorHandle;
  let kid: string;
  beforeAll(async () => {
    redis = [await startTestRedis(), await startTestRedis()];
    em = await startEmulator({ profile: testProfile(), model: MODEL, redisUrl: `${redis[1]!.url}/0`, bytesPerToken: 16, coldStart: false });
    kdn = await startKdn({ port: 0, syntheticKv: true, redisUrl: redis[0]!.url, model: MODEL, bytesPerToken: 16, link: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 } });
    kid = (await postJson(`${kdn.url}/knowledge/register_text`, { content: DOC })).json.kid;
  });
  afterAll(async () => {
    await em?.close();
    await kdn?.close();
    for (const r of redis) await r.stop();
  });

  it('instance Redis down: the KV injection fails, the request is served as text and the record says why', async () => {
    const out = join(tmp, 'redis-down');
    const deadRedis = `redis://127.0.0.1:${await freePort()}/0`;
    const gw = await startGateway({ port: 0, backends: backendSpecs([em.url], [deadRedis]), kdnUrl: kdn.url, strategy: 'kv-only', cluster: cluster(1, testProfile()), out });
    const r = await postJson(`${gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'How do rivers shape valleys?' }], knowledge_ids: [kid], max_tokens: 3 }, { 'x-request-id': 'redis-down-1' });
    expect(r.status).toBe(200);
    const h = JSON.parse(String(r.headers['x-kvlab-decision']));
    expect(h).toMatchObject({ intent: 'text', planned_intent: 'kvcache' });
    expect(h.fallback).toMatch(/^kv-inject-failed/);
    await gw.close();
    const rec = records(out)[0];
    expect(rec).toMatchObject({ id: 'redis-down-1', status: 'ok', intent: 'text' });
    expect(rec.decision.planned_intent).toBe('kvcache');
    expect(rec.decision.fallback).toMatch(/kv-inject-failed/);
    expect(rec.decision.reason).toMatch(/fallback-text/);
  });

  it('KDN down: cached knowledge is still served, as text, with the reason recorded; uncached knowledge is a 503', async () => {
    const out = join(tmp, 'kdn-down');
    const kdn2 = await startKdn({ port: 0, syntheticKv: true, redisUrl: `${redis[0]!.url}/0`, model: MODEL, bytesPerToken: 16 });
    const gw = await startGateway({ port: 0, backends: backendSpecs([em.url], [`${redis[1]!.url}/0`]), kdnUrl: kdn2.url, strategy: 'kv-only', cluster: cluster(1, testProfile()), out });
    await gw.prefetchKnowledge([kid]);
    await kdn2.close();
    const r = await postJson(`${gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'What does water carry?' }], knowledge_ids: kid, max_tokens: 3 });
    expect(r.status).toBe(200);
    const h = JSON.parse(String(r.headers['x-kvlab-decision']));
    expect(h).toMatchObject({ intent: 'text', planned_intent: 'kvcache' });
    expect(h.fallback).toMatch(/^kdn-unreachable/);
    const miss = await postJson(`${gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'x' }], knowledge_ids: ['a'.repeat(64)] });
    expect(miss.status).toBe(503);
    expect(miss.json.error.param).toBe('knowledge_ids');
    await gw.close();
    const recs = records(out);
    expect(recs.find((x) => x.status === 'ok').decision.fallback).toMatch(/kdn-unreachable/);
  });
});

describe('SIGTERM', () => {
  it('a kvlab gateway process flushes every record (in-flight ones as failed) and summary.json', async () => {
    const em = await spawnKvlab(['emulate', '--port', '0', '--profile', profileFile, '--model', MODEL, '--no-cold-start']);
    const out = join(tmp, 'sigterm');
    const gw = await spawnKvlab(['gateway', '--backends', em.url, '--port', '0', '--strategy', 'least-load', '--profile', profileFile, '--out', out, '--model', MODEL]);
    for (let i = 0; i < 5; i++) expect((await postJson(`${gw.url}/v1/completions`, { prompt: `done ${i}`, max_tokens: 2 }, { 'x-request-id': `ok-${i}` })).status).toBe(200);
    const long = postSse(`${gw.url}/v1/completions`, { prompt: 'a long one', max_tokens: 200, stream: true }).catch((e: Error) => e);
    await sleep(300);
    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
    await long;
    const recs = records(out);
    expect(recs.filter((r) => r.status === 'ok').map((r) => r.id).sort()).toEqual(['ok-0', 'ok-1', 'ok-2', 'ok-3', 'ok-4']);
    const failed = recs.filter((r) => r.status === 'failed');
    expect(failed).toHaveLength(1);
    expect(failed[0].error).toMatch(/shutting down/);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(summary).toMatchObject({ source: 'live', requests: 6, completed: 5, failed: 1 });
    em.child.kill('SIGKILL'); // not under test; its graceful shutdown would wait for the aborted stream
    await em.exited;
  });
});
