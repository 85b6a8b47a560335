/**
 * vLLM API features of the emulator over real HTTP, and through the gateway: stop strings
 * (vLLM v1 detokenizer rules: cut before the string, `stop_reason`, the streaming hold-back,
 * `include_stop_str_in_output`, `min_tokens`), logprobs in vLLM's shapes, the per-request
 * sequence bound (`n`), and a client that disconnects aborting the request in the instance model.
 * The emulator's output is the filler sentence " The quick brown fox jumps over the lazy dog while
 * the emulator keeps producing deterministic tokens for testing." token by token.
 */
import { connect } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backendSpecs } from '../live/backends.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { postJson, postSse, sleep, testProfile } from './helpers/live.js';
import { testCluster } from './helpers/stack.js';

const MODEL = 'test-llama';
let em: EmulatorHandle;
let slow: EmulatorHandle;
let gw: GatewayHandle;

beforeAll(async () => {
  em = await startEmulator({ profile: testProfile(), model: MODEL, coldStart: false });
  slow = await startEmulator({ profile: testProfile({}, { fixedMs: 10 }), model: MODEL, coldStart: false, maxRequestSeqs: 64 });
  gw = await startGateway({ port: 0, backends: backendSpecs([em.url]), strategy: 'kvlab', cluster: testCluster(1) });
});
afterAll(async () => {
  await gw?.close();
  await em?.close();
  await slow?.close();
});

const textOf = (sse: { data: string[] }): string =>
  sse.data
    .filter((d) => d !== '[DONE]')
    .map((d) => JSON.parse(d))
    .flatMap((c) => c.choices)
    .map((c: { text?: string; delta?: { content?: string } }) => c.text ?? c.delta?.content ?? '')
    .join('');

describe('stop strings', () => {
  it('cut before the stop string, finish_reason stop, stop_reason = the string; the request leaves the engine', async () => {
    const r = await postJson(`${em.url}/v1/completions`, { model: MODEL, prompt: 'go', max_tokens: 50, stop: ['fox', 'never'] });
    expect(r.json.choices[0]).toMatchObject({ text: ' The quick brown ', finish_reason: 'stop', stop_reason: 'fox' });
    expect(r.json.usage.completion_tokens).toBe(4);
    expect(em.engine.inflight).toBe(0);
    await sleep(30);
    expect(em.engine.load).toEqual({ waiting: 0, running: 0 });
    const inc = await postJson(`${em.url}/v1/completions`, { model: MODEL, prompt: 'go', max_tokens: 50, stop: 'fox', include_stop_str_in_output: true });
    expect(inc.json.choices[0]).toMatchObject({ text: ' The quick brown fox', stop_reason: 'fox' });
    const chat = await postJson(`${em.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'go' }], max_tokens: 50, stop: ['lazy'] });
    expect(chat.json.choices[0]).toMatchObject({ message: { content: ' The quick brown fox jumps over the ' }, finish_reason: 'stop', stop_reason: 'lazy' });
  });

  it('streaming holds back what could start a stop string: no chunk shows part of it, the text equals the non-streaming one', async () => {
    const body = { model: MODEL, prompt: 'go', max_tokens: 50, stop: ['lazy dog'] };
    const plain = await postJson(`${em.url}/v1/completions`, body);
    const sse = await postSse(`${em.url}/v1/completions`, { ...body, stream: true });
    const chunks = sse.data.filter((d) => d !== '[DONE]').map((d) => JSON.parse(d));
    expect(textOf(sse)).toBe(plain.json.choices[0].text);
    expect(textOf(sse)).toBe(' The quick brown fox jumps over the ');
    expect(chunks.some((c) => /lazy/.test(c.choices[0].text))).toBe(false);
    expect(chunks.at(-1).choices[0]).toMatchObject({ finish_reason: 'stop', stop_reason: 'lazy dog' });
  });

  it('stop strings are not checked before min_tokens', async () => {
    const r = await postJson(`${em.url}/v1/completions`, { model: MODEL, prompt: 'go', max_tokens: 10, stop: ['quick'], min_tokens: 5 });
    expect(r.json.choices[0].finish_reason).toBe('length');
    expect(r.json.choices[0].text).toContain('quick');
  });

  it('the gateway forwards stop (streaming and not) and reports stop_reason', async () => {
    const r = await postJson(`${gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'go' }], max_tokens: 50, stop: 'fox' });
    expect(r.json.choices[0]).toMatchObject({ message: { content: ' The quick brown ' }, finish_reason: 'stop', stop_reason: 'fox' });
    const sse = await postSse(`${gw.url}/v1/completions`, { model: MODEL, prompt: 'go', max_tokens: 50, stop: ['over'], stream: true });
    expect(textOf(sse)).toBe(' The quick brown fox jumps ');
  });
});

describe('logprobs', () => {
  it('completions: tokens, token_logprobs, top_logprobs, text_offset (vLLM shape), same streamed', async () => {
    const r = await postJson(`${em.url}/v1/completions`, { model: MODEL, prompt: 'go', max_tokens: 5, logprobs: 2 });
    const c = r.json.choices[0];
    expect(c.logprobs.tokens).toEqual([' The', ' quick', ' brown', ' fox', ' jumps']);
    expect(c.logprobs.tokens.join('')).toBe(c.text);
    expect(c.logprobs.token_logprobs.every((x: number) => x < 0 && x > -4)).toBe(true);
    expect(c.logprobs.text_offset).toEqual([0, 4, 10, 16, 20]);
    for (let i = 0; i < 5; i++) {
      const top = c.logprobs.top_logprobs[i];
      expect(top[c.logprobs.tokens[i]]).toBe(c.logprobs.token_logprobs[i]);
      expect(Object.keys(top).length).toBeGreaterThanOrEqual(2);
      expect(Object.keys(top).length).toBeLessThanOrEqual(3);
    }
    const sse = await postSse(`${em.url}/v1/completions`, { model: MODEL, prompt: 'go', max_tokens: 5, logprobs: 2, stream: true });
    const chunks = sse.data.filter((d) => d !== '[DONE]').map((d) => JSON.parse(d).choices[0]);
    expect(chunks.flatMap((x) => x.logprobs.token_logprobs)).toEqual(c.logprobs.token_logprobs);
  });

  it('chat: logprobs + top_logprobs give content entries; the gateway assembles them for a non-streaming client', async () => {
    const body = { model: MODEL, messages: [{ role: 'user', content: 'go' }], max_tokens: 4, logprobs: true, top_logprobs: 2 };
    const r = await postJson(`${em.url}/v1/chat/completions`, body);
    const content = r.json.choices[0].logprobs.content;
    expect(content).toHaveLength(4);
    expect(content[0]).toMatchObject({ token: ' The', bytes: [32, 84, 104, 101] });
    expect(content[0].top_logprobs).toHaveLength(2);
    expect(content[0].top_logprobs[0]).toHaveProperty('bytes');
    const viaGw = await postJson(`${gw.url}/v1/chat/completions`, body);
    expect(viaGw.json.choices[0].logprobs).toEqual(r.json.choices[0].logprobs);
    expect(viaGw.json.choices[0].message.content).toBe(r.json.choices[0].message.content);
  });

  it('vLLM limits: logprobs above --max-logprobs (20), top_logprobs without logprobs', async () => {
    const a = await postJson(`${em.url}/v1/completions`, { model: MODEL, prompt: 'go', max_tokens: 2, logprobs: 21 });
    expect(a.status).toBe(400);
    expect(a.json.error.message).toBe('Requested sample logprobs of 21, which is greater than max allowed: 20');
    const b = await postJson(`${em.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'go' }], top_logprobs: 2 });
    expect(b.status).toBe(400);
    expect(b.json.error.param).toBe('top_logprobs');
  });
});

describe('bounded requests and aborts', () => {
  it('n × prompts above --max-request-seqs is a 400 before anything is allocated', async () => {
    const t0 = performance.now();
    const r = await postJson(`${slow.url}/v1/completions`, { model: MODEL, prompt: 'go', max_tokens: 2, n: 1_000_000 });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ param: 'n', code: 400 });
    expect(r.json.error.message).toMatch(/at most 64 sequences per request/);
    expect(performance.now() - t0).toBeLessThan(500);
    const list = await postJson(`${slow.url}/v1/completions`, { model: MODEL, prompt: Array.from({ length: 9 }, () => 'x'), max_tokens: 1, n: 8 });
    expect(list.status).toBe(400);
    expect(slow.engine.inflight).toBe(0);
    expect((await postJson(`${slow.url}/v1/completions`, { model: MODEL, prompt: 'go', max_tokens: 1, n: 64 })).json.choices).toHaveLength(64);
  });

  it('a client that disconnects aborts its request in the instance model (streaming and not)', async () => {
    for (const stream of [false, true]) {
      const ac = new AbortController();
      const p = request(`${slow.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: 'go', max_tokens: 2000, n: 3, stream }), signal: ac.signal }).then(
        async (res) => {
          for await (const _ of res.body) void _;
        },
        () => undefined,
      );
      await sleep(150);
      expect(slow.engine.inflight).toBe(3);
      ac.abort();
      await p.catch(() => undefined);
      const end = Date.now() + 2000;
      while (slow.engine.inflight > 0 && Date.now() < end) await sleep(10);
      expect(slow.engine.inflight).toBe(0);
      await sleep(50);
      expect(slow.engine.load).toEqual({ waiting: 0, running: 0 });
    }
  });

  it('431 for headers too large, in the OpenAI error shape', async () => {
    const raw = await new Promise<string>((resolve) => {
      const sock = connect(em.port, '127.0.0.1', () => sock.write(`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(40_000)}\r\n\r\n`));
      let buf = '';
      sock.on('data', (d) => (buf += String(d)));
      sock.on('close', () => resolve(buf));
      sock.on('error', () => resolve(buf));
    });
    expect(raw).toMatch(/^HTTP\/1\.1 431 /);
    expect(JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4)).error.code).toBe(431);
  });
});
