/**
 * Records and metrics of the gateway with real servers: exactly one record and one metric count
 * per request (completed, refused by the gateway, refused by the backend, aborted by the client),
 * unique ids per run (a reused x-request-id gets a suffix, the client's id kept), a client that
 * disconnects aborts the upstream request (streaming or not) and is recorded as aborted, the
 * engine's booked load returns to zero, and a used run directory is never overwritten:
 * refused without --append, appended to with it.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { GatewayHandle } from '../live/gateway.js';
import { getText, parseProm, postJson, promSum, sleep, testProfile } from './helpers/live.js';
import { MODEL, startStack, type Stack } from './helpers/stack.js';
import { describeRedis } from './helpers/system.js';

let s: Stack;
let root: string;
let dir: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvlab-records-'));
  dir = join(root, 'run');
  // ~10 ms per output token: a 400-token answer takes seconds, long enough to disconnect
  s = await startStack({ profile: testProfile({}, { fixedMs: 10 }), gateway: { out: dir } });
}, 60_000);

afterAll(async () => {
  await s?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

const readRecs = (): any[] =>
  readFileSync(join(dir, 'records.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
const chat = (content: string, extra: Record<string, unknown> = {}) => ({ model: MODEL, messages: [{ role: 'user', content }], max_tokens: 3, ...extra });
const counted = async (gw: GatewayHandle, label = '') => promSum(parseProm((await getText(`${gw.url}/metrics`)).text), 'kvlab_gateway_requests_total', label);

/** Starts a request and disconnects the client after `ms`. */
async function disconnectAfter(gw: GatewayHandle, body: unknown, id: string, ms: number): Promise<void> {
  const ac = new AbortController();
  const p = request(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': id }, body: JSON.stringify(body), signal: ac.signal }).then(
    async (r) => {
      for await (const _ of r.body) void _; // read until aborted
    },
    () => undefined,
  );
  await sleep(ms);
  ac.abort();
  await p.catch(() => undefined);
}

/** Waits until `cond` holds (polling), or fails after `ms`. */
async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await sleep(20);
  }
}

describeRedis('one record and one count per request', () => {
  it('completed, refused by the gateway, refused by the backend: one record each, counted once', async () => {
    const gw = s.gw;
    expect((await postJson(`${gw.url}/v1/chat/completions`, chat('hello there'), { 'x-request-id': 'dup' })).status).toBe(200);
    expect((await postJson(`${gw.url}/v1/chat/completions`, chat('hello again'), { 'x-request-id': 'dup' })).status).toBe(200);
    expect((await postJson(`${gw.url}/v1/chat/completions`, { model: MODEL })).status).toBe(400); // gateway: messages missing
    expect((await postJson(`${gw.url}/v1/chat/completions`, '{"messages": [')).status).toBe(400); // gateway: bad JSON
    // the gateway forwards logprobs; the backend (vLLM's --max-logprobs 20) refuses 50
    const be = await postJson(`${gw.url}/v1/completions`, { model: MODEL, prompt: 'hi', max_tokens: 2, logprobs: 50 }, { 'x-request-id': 'backend-400' });
    expect(be.status).toBe(400);
    expect(be.json.error.message).toMatch(/greater than max allowed: 20/);
    const recs = readRecs();
    expect(recs).toHaveLength(5);
    expect(recs.map((r) => r.id).slice(0, 2)).toEqual(['dup', 'dup~1']);
    expect(recs[1]).toMatchObject({ client_id: 'dup', status: 'ok' });
    expect(recs[0].client_id).toBeUndefined();
    expect(recs[2]).toMatchObject({ status: 'rejected', instance: null, decision: null });
    expect(recs[2].error).toMatch(/^HTTP 400: chat\/completions: messages: field required/);
    expect(recs[3].error).toMatch(/^HTTP 400: Invalid JSON body/);
    expect(recs[4]).toMatchObject({ id: 'backend-400', status: 'rejected' });
    expect(recs[4].error).toMatch(/^backend HTTP 400/);
    expect(await counted(gw)).toBe(5);
    expect(await counted(gw, 'status="rejected"')).toBe(3);
    expect(gw.engine.loads.size).toBe(0);
  });

  it('a non-streaming client that disconnects aborts the upstream request; recorded as aborted; booked load released', async () => {
    const gw = s.gw;
    await disconnectAfter(gw, chat('tell me a long story', { max_tokens: 400 }), 'gone-1', 300);
    await until(() => readRecs().some((r) => r.id === 'gone-1'));
    const rec = readRecs().find((r) => r.id === 'gone-1');
    expect(rec).toMatchObject({ status: 'aborted', error: 'client disconnected' });
    // the emulator stopped generating for it (vLLM aborts a request whose client went away)
    await until(() => s.ems.every((e) => e.engine.inflight === 0));
    expect(gw.engine.loads.size).toBe(0);
    expect(gw.engine.loads.loads.every((l) => l.inflight === 0 && l.prefillTokens === 0)).toBe(true);
  });

  it('a streaming client that disconnects: the same', async () => {
    const gw = s.gw;
    await disconnectAfter(gw, chat('tell me another long story', { max_tokens: 400, stream: true }), 'gone-2', 300);
    await until(() => readRecs().some((r) => r.id === 'gone-2'));
    expect(readRecs().find((r) => r.id === 'gone-2')).toMatchObject({ status: 'aborted' });
    await until(() => s.ems.every((e) => e.engine.inflight === 0));
    expect(gw.engine.loads.size).toBe(0);
    expect(await counted(gw, 'status="aborted"')).toBe(2);
    expect(await counted(gw)).toBe(readRecs().length);
  });

  it('a prompt list is one engine request (and record) per prompt, ids <id>-<i>, choices in vLLM order', async () => {
    const gw = s.gw;
    const r = await postJson(`${gw.url}/v1/completions`, { model: MODEL, prompt: ['first prompt', 'second prompt here'], max_tokens: 2, n: 2 }, { 'x-request-id': 'list' });
    expect(r.status).toBe(200);
    expect(r.json.choices.map((c: { index: number }) => c.index)).toEqual([0, 1, 2, 3]);
    expect(r.json.usage.completion_tokens).toBe(8);
    const recs = readRecs().filter((x) => x.client_id === 'list');
    expect(recs.map((x) => x.id)).toEqual(['list-0', 'list-1']);
    expect(recs.every((x) => x.status === 'ok')).toBe(true);
    expect(recs[0].input_tokens).toBeLessThan(recs[1].input_tokens);
  });
});

describeRedis('a used run directory', () => {
  it('is refused without --append (nothing overwritten) and appended to with it: every earlier record kept, ids unique, clock continues', async () => {
    await s.gw.close();
    const before = readFileSync(join(dir, 'records.jsonl'), 'utf8');
    const old = readRecs();
    expect(old.length).toBeGreaterThanOrEqual(9);
    await expect(s.gateway({ out: dir })).rejects.toThrow(/already has records .*--append/);
    expect(readFileSync(join(dir, 'records.jsonl'), 'utf8')).toBe(before);
    const gw2 = await s.gateway({ out: dir, append: true });
    expect(gw2.now()).toBeGreaterThan(Math.max(...old.map((r) => r.arrival_ms)));
    expect((await postJson(`${gw2.url}/v1/chat/completions`, chat('after restart'), { 'x-request-id': 'dup' })).status).toBe(200);
    expect((await postJson(`${gw2.url}/v1/chat/completions`, chat('after restart 2'))).status).toBe(200);
    await gw2.close();
    const all = readRecs();
    expect(all).toHaveLength(old.length + 2);
    for (const r of old) expect(all.find((x) => x.id === r.id)).toEqual(r);
    expect(new Set(all.map((r) => r.id)).size).toBe(all.length);
    const dup = all.filter((r) => r.client_id === 'dup' || r.id === 'dup');
    expect(dup.map((r) => r.id)).toEqual(['dup', 'dup~1', 'dup~2']);
    const summary = JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8'));
    expect(summary).toMatchObject({ requests: all.length, aborted: 2 });
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    expect(config.previous_config.strategy).toBe('kvlab');
  });
});
