/**
 * Gateway limits on loopback with real servers (redis-server, emulators, KDN, gateway): every
 * limit is answered in OpenAI's error shape with the client's-fault status, before any expensive
 * work, nothing is forwarded, each refused request has one record and one metric count, and the
 * engine's booked load stays right. Driven with plain HTTP and with the official `openai` SDK
 * (its retries on 5xx are why these must be 4xx).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import llama3Tokenizer from 'llama3-tokenizer-js';
import OpenAI from 'openai';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { getText, healthStalls, parseProm, postBigWhilePolling, postJson, promSum, sleep } from './helpers/live.js';
import { MODEL, startStack, type Stack } from './helpers/stack.js';
import { describeRedis } from './helpers/system.js';

let s: Stack;
let out: string;

beforeAll(async () => {
  out = mkdtempSync(join(tmpdir(), 'kvlab-limits-'));
  s = await startStack({ gateway: { out: join(out, 'run') } });
}, 60_000);

afterAll(async () => {
  await s?.close();
  if (out) rmSync(out, { recursive: true, force: true });
});

const records = (): any[] =>
  readFileSync(join(out, 'run', 'records.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
const sent = (): number => s.gw.backends.reduce((a, b) => a + b.sent, 0);
const metrics = async () => parseProm((await getText(`${s.gw.url}/metrics`)).text);

/** Expects an OpenAI-shaped error with `status` and optional `param`. */
function expectError(r: { status: number; json: any }, status: number, param?: string | null): void {
  expect(r.status).toBe(status);
  expect(r.json?.error).toMatchObject({ code: status });
  expect(typeof r.json.error.message).toBe('string');
  expect(typeof r.json.error.type).toBe('string');
  if (param !== undefined) expect(r.json.error.param).toBe(param);
}

describeRedis('limits before any expensive work', () => {
  it('a 50 MB body is refused with 413 before it is read while /health keeps answering', async () => {
    // the sender is another process (building and writing 50 MB would stall this one's event
    // loop, which also runs the gateway and the /health poller)
    const before = sent();
    for (const chunked of [false, true]) {
      const r = await postBigWhilePolling(`${s.gw.url}/v1/chat/completions`, `JSON.stringify({ model: ${JSON.stringify(MODEL)}, messages: [{ role: 'user', content: 'x'.repeat(50 * 1024 * 1024) }] })`, `${s.gw.url}/health`, chunked);
      expect(r.status).toBe(413);
      expect(JSON.parse(r.body).error).toMatchObject({ code: 413, type: 'BadRequestError' });
      expect(JSON.parse(r.body).error.message).toMatch(/8388608 bytes .*--max-body-bytes/);
      // refused from the header (Content-Length) or at the 8 MiB limit (chunked), not after
      // reading the body: the answer came while the sender still had most of it to write
      expect(r.writtenAtAnswer).toBeLessThan(r.totalBytes / 2);
      expect(healthStalls(r.healthMs, r.baselineMs).join('; ')).toBe('');
    }
    expect(sent()).toBe(before);
  });

  it('deep JSON is a 400 before parsing (100k and 1M deep), never 500/502, never sent upstream', async () => {
    const before = sent();
    for (const depth of [100_000, 1_000_000]) {
      const body = `{"model":"${MODEL}","messages":[{"role":"user","content":${'['.repeat(depth)}${']'.repeat(depth)}}]}`;
      const r = await postJson(`${s.gw.url}/v1/chat/completions`, body);
      expectError(r, 400, null);
      expect(r.json.error.message).toMatch(/nested deeper than 64 levels/);
    }
    expect(sent()).toBe(before);
  });

  it('n above --max-n, too many prompts, max_tokens above the context: 400 naming the field, nothing booked', async () => {
    const before = sent();
    expectError(await postJson(`${s.gw.url}/v1/completions`, { model: MODEL, prompt: 'hi', max_tokens: 1, n: 1_000_000 }), 400, 'n');
    expectError(await postJson(`${s.gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'hi' }], n: 129 }), 400, 'n');
    expectError(await postJson(`${s.gw.url}/v1/completions`, { model: MODEL, prompt: 'hi', max_tokens: 1e9 }), 400, 'max_tokens');
    expectError(await postJson(`${s.gw.url}/v1/completions`, { model: MODEL, prompt: 'hi', max_tokens: 0 }), 400, 'max_tokens');
    expectError(await postJson(`${s.gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_completion_tokens: 9000 }), 400, 'max_completion_tokens');
    expect(sent()).toBe(before);
    expect(s.gw.engine.loads.size).toBe(0);
  });

  it('prompt + max_tokens over max_model_len is refused at the gateway (vLLM message), never forwarded; huge prompts without tokenising', async () => {
    expect(s.gw.limits.maxModelLen).toBe(8192); // from the emulators' /v1/models
    const before = sent();
    const words = ' hello'.repeat(8000); // ~8k tokens
    const r = await postJson(`${s.gw.url}/v1/completions`, { model: MODEL, prompt: words, max_tokens: 500 });
    expectError(r, 400, 'prompt');
    expect(r.json.error.message).toMatch(/maximum context length is 8192 tokens\. However, you requested \d+ tokens/);
    const chat = await postJson(`${s.gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: ' hello'.repeat(9000) }] });
    expectError(chat, 400, 'messages');
    // 8 characters per token of the context: refused from the character count alone, fast
    const content = 'a'.repeat(8 * 8192 + 1);
    const t0 = performance.now();
    const huge = await postJson(`${s.gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content }] });
    const refuseMs = performance.now() - t0;
    expectError(huge, 400, 'messages');
    expect(huge.json.error.message).toMatch(/refused without tokenising/);
    // faster than tokenising the content alone, measured here under the same load (~1 s idle)
    const t1 = performance.now();
    llama3Tokenizer.encode(content, { bos: false, eos: false });
    expect(refuseMs).toBeLessThan(performance.now() - t1);
    expect(sent()).toBe(before);
  });

  it('431 for headers too large, in the OpenAI error shape', async () => {
    const raw = await new Promise<string>((resolve, reject) => {
      const sock = connect(s.gw.port, '127.0.0.1', () => {
        sock.write(`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(40_000)}\r\n\r\n`);
      });
      let buf = '';
      sock.on('data', (d) => (buf += String(d)));
      sock.on('close', () => resolve(buf));
      sock.on('error', (e) => (buf ? resolve(buf) : reject(e)));
    });
    expect(raw).toMatch(/^HTTP\/1\.1 431 /);
    const body = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4));
    expect(body.error).toMatchObject({ code: 431, type: 'RequestHeaderFieldsTooLargeError' });
    expect(promSum(await metrics(), 'kvlab_gateway_http_client_errors_total', 'status="431"')).toBe(1);
  });

  it('every request that reached a generation route has exactly one record and one metric count', async () => {
    await sleep(50);
    const recs = records();
    const prom = await metrics();
    const counted = promSum(prom, 'kvlab_gateway_requests_total');
    expect(recs.length).toBe(counted);
    // 2 x 413, 2 x deep JSON, 5 limits, 3 context: 12 requests, all rejected
    expect(recs.length).toBe(12);
    expect(recs.every((r) => r.status === 'rejected' && /^HTTP 4\d\d: /.test(r.error))).toBe(true);
    expect(recs.filter((r) => r.error.startsWith('HTTP 413')).length).toBe(2);
    expect(new Set(recs.map((r) => r.id)).size).toBe(recs.length);
    expect(promSum(prom, 'kvlab_gateway_rejections_total', 'reason="400:n"')).toBe(2);
  });
});

describeRedis('the openai SDK sees 4xx errors and does not retry them', () => {
  it('BadRequestError / NotFoundError, one request at the gateway each, with maxRetries 3', async () => {
    const sdk = new OpenAI({ baseURL: `${s.gw.url}/v1`, apiKey: 'none', maxRetries: 3 });
    const before = promSum(await metrics(), 'kvlab_gateway_requests_total');
    await expect(sdk.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], n: 500 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    await expect(sdk.completions.create({ model: MODEL, prompt: ' hello'.repeat(8000), max_tokens: 500 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    await expect(sdk.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], knowledge_ids: ['f'.repeat(64)] } as never)).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    const ok = await sdk.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, stop: ['quick'] });
    expect(ok.choices[0]!.finish_reason).toBe('stop');
    expect(promSum(await metrics(), 'kvlab_gateway_requests_total') - before).toBe(4);
  });

  it('a knowledge id without a KDN is a 404 (not a 503 the SDK would retry)', async () => {
    const noKdn = await s.gateway({ kdnUrl: null, out: undefined });
    const sdk = new OpenAI({ baseURL: `${noKdn.url}/v1`, apiKey: 'none', maxRetries: 3 });
    const err = await sdk.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], knowledge_ids: ['abc'] } as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    expect((err as InstanceType<typeof OpenAI.NotFoundError>).message).toMatch(/unknown knowledge id: abc \(this gateway has no KDN/);
    const rag = await postJson(`${noKdn.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: 'hi' }], RAG: true });
    expectError(rag, 400, 'RAG');
    expect(promSum(parseProm((await getText(`${noKdn.url}/metrics`)).text), 'kvlab_gateway_requests_total', 'status="rejected"')).toBe(2);
  });
});
