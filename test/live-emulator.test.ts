/**
 * The vLLM-compatible emulator over real HTTP on loopback: SSE framing and chunk shapes,
 * non-streaming shapes, tokenizer endpoints, metrics, errors, concurrency, time scale.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import llama3Tokenizer from 'llama3-tokenizer-js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { getText, parseProm, postJson, postSse, promSum, testProfile } from './helpers/live.js';

let em: EmulatorHandle;
beforeAll(async () => {
  em = await startEmulator({ profile: testProfile(), model: 'llama3-70b', modelPath: '/models/Meta-Llama-3-70B-Instruct' });
});
afterAll(async () => {
  await em?.close();
});

const SSE_FRAMING = /^(data: [^\n]+\n\n)+$/;

describe('streaming /v1/completions', () => {
  it('frames every event as "data: <json>\\n\\n", one chunk per token, then [DONE]', async () => {
    const r = await postSse(`${em.url}/v1/completions`, { model: 'llama3-70b', prompt: 'The capital of France is', max_tokens: 7, stream: true });
    expect(r.status).toBe(200);
    expect(String(r.headers['content-type'])).toMatch(/^text\/event-stream/);
    expect(r.raw).toMatch(SSE_FRAMING);
    expect(r.raw.endsWith('data: [DONE]\n\n')).toBe(true);
    expect(r.named).toEqual([]);
    expect(r.data.at(-1)).toBe('[DONE]');
    const chunks = r.data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks).toHaveLength(7);
    const ids = new Set(chunks.map((c) => c.id));
    expect(ids.size).toBe(1);
    expect([...ids][0]).toMatch(/^cmpl-[0-9a-f]+$/);
    for (const [i, c] of chunks.entries()) {
      expect(Object.keys(c)).toEqual(['id', 'object', 'created', 'model', 'choices', 'usage']);
      expect(c).toMatchObject({ object: 'text_completion', model: 'llama3-70b', usage: null });
      expect(Number.isInteger(c.created)).toBe(true);
      expect(c.choices).toHaveLength(1);
      expect(c.choices[0]).toEqual({ index: 0, text: expect.any(String), logprobs: null, finish_reason: i === 6 ? 'length' : null, stop_reason: null });
      expect(c.choices[0].text.length).toBeGreaterThan(0);
    }
    // the streamed text re-tokenises to max_tokens tokens (deterministic filler)
    const text = chunks.map((c) => c.choices[0].text).join('');
    expect(llama3Tokenizer.encode(text, { bos: false, eos: false })).toHaveLength(7);
  });

  it('adds a final usage chunk (choices: []) before [DONE] with include_usage', async () => {
    const r = await postSse(`${em.url}/v1/completions`, { prompt: 'Hello there', max_tokens: 3, stream: true, stream_options: { include_usage: true } });
    expect(r.raw).toMatch(SSE_FRAMING);
    const chunks = r.data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks).toHaveLength(4);
    const u = chunks[3];
    expect(u.choices).toEqual([]);
    const promptTokens = llama3Tokenizer.encode('Hello there', { bos: true, eos: false }).length;
    expect(u.usage).toEqual({ prompt_tokens: promptTokens, total_tokens: promptTokens + 3, completion_tokens: 3 });
    // absent prompt_tokens_details are omitted in the stream, not null
    expect('prompt_tokens_details' in u.usage).toBe(false);
    expect(chunks.slice(0, 3).every((c) => c.usage === null)).toBe(true);
  });

  it('continuous_usage_stats puts usage on every chunk', async () => {
    const r = await postSse(`${em.url}/v1/completions`, { prompt: 'Hi', max_tokens: 3, stream: true, stream_options: { include_usage: false, continuous_usage_stats: true } });
    const chunks = r.data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks).toHaveLength(3);
    expect(chunks.map((c) => c.usage.completion_tokens)).toEqual([1, 2, 3]);
  });

  it('n > 1 and a list of prompts give one choice index per generation', async () => {
    const r = await postSse(`${em.url}/v1/completions`, { prompt: ['a b c', 'd e f'], n: 2, max_tokens: 2, stream: true });
    const chunks = r.data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks).toHaveLength(8);
    const per = new Map<number, number>();
    for (const c of chunks) per.set(c.choices[0].index, (per.get(c.choices[0].index) ?? 0) + 1);
    expect([...per.entries()].sort()).toEqual([
      [0, 2],
      [1, 2],
      [2, 2],
      [3, 2],
    ]);
  });
});

describe('streaming /v1/chat/completions', () => {
  it('sends a role chunk, one content chunk per token, the last with finish_reason, usage, [DONE]', async () => {
    const messages = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Name a colour.' },
    ];
    const r = await postSse(`${em.url}/v1/chat/completions`, { messages, max_tokens: 4, stream: true, stream_options: { include_usage: true } });
    expect(r.status).toBe(200);
    expect(r.raw).toMatch(SSE_FRAMING);
    expect(r.data.at(-1)).toBe('[DONE]');
    const chunks = r.data.slice(0, -1).map((d) => JSON.parse(d));
    expect(chunks).toHaveLength(1 + 4 + 1);
    expect(chunks[0].id).toMatch(/^chatcmpl-/);
    expect(chunks[0]).toMatchObject({ object: 'chat.completion.chunk', model: 'llama3-70b' });
    expect(chunks[0].choices).toEqual([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
    expect('usage' in chunks[0]).toBe(false);
    for (let i = 1; i <= 3; i++) expect(chunks[i].choices).toEqual([{ index: 0, delta: { content: expect.any(String) }, logprobs: null, finish_reason: null }]);
    expect(chunks[4].choices).toEqual([{ index: 0, delta: { content: expect.any(String) }, logprobs: null, finish_reason: 'length', stop_reason: null }]);
    const templ = '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n';
    const P = llama3Tokenizer.encode(templ, { bos: false, eos: false }).length;
    expect(chunks[5]).toMatchObject({ object: 'chat.completion.chunk', choices: [], usage: { prompt_tokens: P, completion_tokens: 4, total_tokens: P + 4 } });
  });

  it('without max_tokens stops after the default output with finish_reason "stop"', async () => {
    const small = await startEmulator({ profile: testProfile(), defaultMaxTokens: 5 });
    try {
      const r = await postJson(`${small.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'go' }] });
      expect(r.status).toBe(200);
      expect(r.json.usage.completion_tokens).toBe(5);
      expect(r.json.choices[0].finish_reason).toBe('stop');
    } finally {
      await small.close();
    }
  });
});

describe('non-streaming shapes', () => {
  it('completion response', async () => {
    const r = await postJson(`${em.url}/v1/completions`, { prompt: 'One two three', max_tokens: 4 }, { 'x-request-id': 'req-abc' });
    expect(r.status).toBe(200);
    expect(r.headers['x-request-id']).toBe('req-abc');
    const P = llama3Tokenizer.encode('One two three', { bos: true, eos: false }).length;
    expect(r.json).toEqual({
      id: 'cmpl-req-abc',
      object: 'text_completion',
      created: expect.any(Number),
      model: 'llama3-70b',
      choices: [{ index: 0, text: expect.any(String), logprobs: null, finish_reason: 'length', stop_reason: null, prompt_logprobs: null }],
      usage: { prompt_tokens: P, total_tokens: P + 4, completion_tokens: 4, prompt_tokens_details: null },
      system_fingerprint: null,
      kv_transfer_params: null,
    });
  });

  it('token-id prompts skip tokenisation; echo prepends the prompt', async () => {
    const r = await postJson(`${em.url}/v1/completions`, { prompt: [128000, 9906, 1917, 0], max_tokens: 1 });
    expect(r.json.usage.prompt_tokens).toBe(4);
    const e = await postJson(`${em.url}/v1/completions`, { prompt: 'Echo me', max_tokens: 2, echo: true });
    expect(e.json.choices[0].text.startsWith('Echo me')).toBe(true);
  });

  it('chat response', async () => {
    const r = await postJson(`${em.url}/v1/chat/completions`, { model: 'llama3-70b', messages: [{ role: 'user', content: [{ type: 'text', text: 'Hi' }] }], max_completion_tokens: 2 });
    expect(r.status).toBe(200);
    expect(r.json).toEqual({
      id: expect.stringMatching(/^chatcmpl-/),
      object: 'chat.completion',
      created: expect.any(Number),
      model: 'llama3-70b',
      choices: [{ index: 0, message: { role: 'assistant', content: expect.any(String), reasoning_content: null, tool_calls: [] }, logprobs: null, finish_reason: 'length', stop_reason: null }],
      usage: { prompt_tokens: expect.any(Number), total_tokens: expect.any(Number), completion_tokens: 2, prompt_tokens_details: null },
      prompt_logprobs: null,
      kv_transfer_params: null,
    });
  });
});

describe('tokenizer endpoints and models', () => {
  it('/tokenize counts match llama3-tokenizer-js (prompt and chat forms)', async () => {
    const text = 'Knowledge-intensive serving: recompute or load the KV cache? ünïcødé ✓ 12345';
    const r = await postJson(`${em.url}/tokenize`, { model: 'llama3-70b', prompt: text });
    const expected = llama3Tokenizer.encode(text, { bos: true, eos: false });
    expect(r.json).toEqual({ count: expected.length, max_model_len: 8192, tokens: expected, token_strs: null });
    const noBos = await postJson(`${em.url}/tokenize`, { prompt: text, add_special_tokens: false, return_token_strs: true });
    expect(noBos.json.tokens).toEqual(expected.slice(1));
    expect(noBos.json.token_strs).toHaveLength(expected.length - 1);
    const chat = await postJson(`${em.url}/tokenize`, { messages: [{ role: 'system', content: 'Hello world!' }], add_generation_prompt: false });
    expect(chat.json.tokens).toEqual([128000, 128006, 9125, 128007, 271, 9906, 1917, 0, 128009]);
    const chatGen = await postJson(`${em.url}/tokenize`, { messages: [{ role: 'user', content: 'Hi' }] });
    expect(chatGen.json.tokens.slice(-4)).toEqual([128006, 78191, 128007, 271]);
  });

  it('/detokenize inverts /tokenize', async () => {
    const r = await postJson(`${em.url}/detokenize`, { tokens: [9906, 1917, 0] });
    expect(r.json).toEqual({ prompt: 'Hello world!' });
    const bad = await postJson(`${em.url}/detokenize`, { tokens: [999999] });
    expect(bad.status).toBe(400);
    expect(bad.json.error.param).toBe('tokens');
  });

  it('/v1/models, /health, /version, unknown routes', async () => {
    const m = JSON.parse((await getText(`${em.url}/v1/models`)).text);
    expect(m.object).toBe('list');
    expect(m.data).toHaveLength(1);
    expect(m.data[0]).toMatchObject({ id: 'llama3-70b', object: 'model', owned_by: 'vllm', root: '/models/Meta-Llama-3-70B-Instruct', parent: null, max_model_len: 8192 });
    expect(m.data[0].permission[0].object).toBe('model_permission');
    const h = await getText(`${em.url}/health`);
    expect(h.status).toBe(200);
    expect(h.text).toBe('');
    expect(JSON.parse((await getText(`${em.url}/version`)).text).version).toMatch(/^0\.13\.0/);
    const nf = await getText(`${em.url}/v1/nope`);
    expect(nf.status).toBe(404);
    expect(JSON.parse(nf.text)).toEqual({ detail: 'Not Found' });
  });
});

describe('errors (vLLM 0.13 ErrorResponse, code = HTTP status)', () => {
  const shape = { error: { message: expect.any(String), type: 'BadRequestError', param: expect.anything(), code: 400 } };
  it('malformed JSON -> 400', async () => {
    const r = await postJson(`${em.url}/v1/chat/completions`, '{"messages": [');
    expect(r.status).toBe(400);
    expect(r.json).toEqual({ error: { message: expect.stringMatching(/JSON/), type: 'BadRequestError', param: null, code: 400 } });
  });
  it('empty body and non-object body -> 400', async () => {
    expect((await postJson(`${em.url}/v1/completions`, '')).status).toBe(400);
    const arr = await postJson(`${em.url}/v1/completions`, '[1,2]');
    expect(arr.status).toBe(400);
    expect(arr.json.error.message).toMatch(/JSON object/);
  });
  it('missing messages -> 400 naming the field', async () => {
    const r = await postJson(`${em.url}/v1/chat/completions`, { model: 'llama3-70b' });
    expect(r.status).toBe(400);
    expect(r.json).toEqual(shape);
    expect(r.json.error.param).toBe('messages');
    expect(r.json.error.message).toMatch(/messages/);
  });
  it('missing prompt -> 400 naming the field', async () => {
    const r = await postJson(`${em.url}/v1/completions`, { max_tokens: 3 });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe('prompt');
  });
  it('bad max_tokens -> 400 naming the field', async () => {
    for (const bad of ['ten', 2.5, 0, -3]) {
      const r = await postJson(`${em.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'x' }], max_tokens: bad });
      expect(r.status, `max_tokens=${JSON.stringify(bad)}`).toBe(400);
      expect(r.json).toEqual(shape);
      expect(r.json.error.param).toBe('max_tokens');
      expect(r.json.error.message).toMatch(/max_tokens/);
    }
  });
  it('context length exceeded -> 400', async () => {
    const r = await postJson(`${em.url}/v1/completions`, { prompt: 'x', max_tokens: 9000 });
    expect(r.status).toBe(400);
    expect(r.json.error.message).toMatch(/maximum context length is 8192/);
  });
  it('stream_options without stream -> 400', async () => {
    const r = await postJson(`${em.url}/v1/completions`, { prompt: 'x', stream_options: { include_usage: true } });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe('stream_options');
  });
  it('unknown model -> 404 NotFoundError', async () => {
    const r = await postJson(`${em.url}/v1/completions`, { model: 'gpt-5', prompt: 'x' });
    expect(r.status).toBe(404);
    expect(r.json).toEqual({ error: { message: 'The model `gpt-5` does not exist.', type: 'NotFoundError', param: 'model', code: 404 } });
  });
});

describe('/metrics', () => {
  it('exposes vLLM names, labels and types, and counters move', async () => {
    const before = await getText(`${em.url}/metrics`);
    expect(before.status).toBe(200);
    const t = before.text;
    for (const [name, type] of [
      ['vllm:num_requests_running', 'gauge'],
      ['vllm:num_requests_waiting', 'gauge'],
      ['vllm:kv_cache_usage_perc', 'gauge'],
      ['vllm:prompt_tokens_total', 'counter'],
      ['vllm:generation_tokens_total', 'counter'],
      ['vllm:request_success_total', 'counter'],
      ['vllm:prefix_cache_queries_total', 'counter'],
      ['vllm:prefix_cache_hits_total', 'counter'],
      ['vllm:num_preemptions_total', 'counter'],
      ['vllm:time_to_first_token_seconds', 'histogram'],
      ['vllm:inter_token_latency_seconds', 'histogram'],
      ['vllm:e2e_request_latency_seconds', 'histogram'],
      ['vllm:request_prompt_tokens', 'histogram'],
      ['vllm:iteration_tokens_total', 'histogram'],
      ['vllm:cache_config_info', 'gauge'],
    ]) {
      expect(t, name).toContain(`# TYPE ${name} ${type}\n`);
    }
    expect(t).toContain('vllm:num_requests_running{model_name="llama3-70b",engine="0"}');
    expect(t).toContain('vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="llama3-70b",engine="0"}');
    expect(t).not.toContain('vllm:gpu_cache_usage_perc');
    const m0 = parseProm(t);
    await postJson(`${em.url}/v1/completions`, { prompt: 'count me please', max_tokens: 3 });
    const m1 = parseProm((await getText(`${em.url}/metrics`)).text);
    const P = llama3Tokenizer.encode('count me please', { bos: true, eos: false }).length;
    expect(promSum(m1, 'vllm:generation_tokens_total') - promSum(m0, 'vllm:generation_tokens_total')).toBe(3);
    expect(promSum(m1, 'vllm:prompt_tokens_total') - promSum(m0, 'vllm:prompt_tokens_total')).toBe(P);
    expect(promSum(m1, 'vllm:request_success_total', 'finished_reason="length"') - promSum(m0, 'vllm:request_success_total', 'finished_reason="length"')).toBe(1);
    expect(promSum(m1, 'vllm:time_to_first_token_seconds_count') - promSum(m0, 'vllm:time_to_first_token_seconds_count')).toBe(1);
    expect(promSum(m1, 'vllm:inter_token_latency_seconds_count') - promSum(m0, 'vllm:inter_token_latency_seconds_count')).toBe(2);
  });
});

describe('concurrency and timing', () => {
  it('several simultaneous streaming requests all complete, batched by the instance model', async () => {
    const status0 = JSON.parse((await getText(`${em.url}/emulator/status`)).text);
    const N = 8;
    const maxTokens = 12;
    const rs = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        postSse(`${em.url}/v1/chat/completions`, { messages: [{ role: 'user', content: `request number ${i}: ${'lorem ipsum '.repeat(20 + i)}` }], max_tokens: maxTokens, stream: true }),
      ),
    );
    for (const r of rs) {
      expect(r.status).toBe(200);
      expect(r.data.at(-1)).toBe('[DONE]');
      const chunks = r.data.slice(0, -1).map((d) => JSON.parse(d));
      expect(chunks).toHaveLength(1 + maxTokens);
      expect(chunks.at(-1).choices[0].finish_reason).toBe('length');
    }
    const status1 = JSON.parse((await getText(`${em.url}/emulator/status`)).text);
    // sequential service would need >= N * maxTokens steps; continuous batching needs far fewer
    expect(status1.steps - status0.steps).toBeLessThan((N * maxTokens) / 2);
    expect(status1.inflight).toBe(0);
  });

  it('apiMs delays every token delivery but keeps order and per-request state (apiMs > step time)', async () => {
    const e = await startEmulator({ profile: testProfile({}, { fixedMs: 1, apiMs: 40, decodeSeqMs: 0 }) });
    try {
      const prompt = 'Delivery lags the engine by the API overhead. '.repeat(30);
      await postJson(`${e.url}/v1/completions`, { prompt, max_tokens: 2 });
      const r = await postSse(`${e.url}/v1/completions`, { prompt, max_tokens: 6, stream: true, stream_options: { include_usage: true } });
      const chunks = r.data.slice(0, -1).map((d) => JSON.parse(d));
      expect(chunks).toHaveLength(7);
      expect(chunks.slice(0, 6).map((c) => c.choices[0].finish_reason)).toEqual([null, null, null, null, null, 'length']);
      // the state captured at the engine step survives the request finishing before delivery
      expect(chunks[6].usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(0);
      expect(r.at[0]!).toBeGreaterThanOrEqual(38);
    } finally {
      await e.close();
    }
  });

  it('TTFT follows the profile; --time-scale divides it', async () => {
    const slow = testProfile({}, { fixedMs: 150 });
    const a = await startEmulator({ profile: slow });
    const b = await startEmulator({ profile: slow, timeScale: 20 });
    try {
      const ra = await postSse(`${a.url}/v1/completions`, { prompt: 'time me', max_tokens: 2, stream: true });
      const rb = await postSse(`${b.url}/v1/completions`, { prompt: 'time me', max_tokens: 2, stream: true });
      // one prefill step (>= 150 ms of fixed cost) before the first token; the second token one
      // more step. Both counted from the send: a late delivery of the first token (a loaded
      // machine) shortens the gap to the second, whose step is timed from the first's scheduled end.
      expect(ra.at[0]!).toBeGreaterThanOrEqual(145);
      expect(ra.at[1]!).toBeGreaterThanOrEqual(2 * 145);
      // 20x faster: two steps of 7.5 ms; half of the unscaled ones (>= 150 ms) leaves room for host stalls
      expect(rb.at[1]!).toBeLessThan(ra.at[1]! / 2);
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('graceful shutdown', () => {
  /** Resolves once the emulator's instance model holds a request (the stream is running), at most 10 s. */
  const untilRunning = async (e: EmulatorHandle): Promise<void> => {
    const end = Date.now() + 10_000;
    while (e.engine.inflight === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
    expect(e.engine.inflight).toBeGreaterThan(0);
  };

  it('lets running streams finish, then refuses new connections', async () => {
    const e = await startEmulator({ profile: testProfile() });
    const p = postSse(`${e.url}/v1/completions`, { prompt: 'long answer please', max_tokens: 40, stream: true });
    await untilRunning(e); // a fixed sleep was not enough on a loaded machine: the close came before the request
    await e.close();
    const r = await p;
    expect(r.data.at(-1)).toBe('[DONE]');
    expect(r.data.slice(0, -1).map((d) => JSON.parse(d))).toHaveLength(40);
    await expect(getText(`${e.url}/health`)).rejects.toThrow();
  });

  it('after the grace period, unfinished streams end with an in-band error and [DONE]', async () => {
    const e = await startEmulator({ profile: testProfile() });
    const p = postSse(`${e.url}/v1/completions`, { prompt: 'never ending', max_tokens: 2000, stream: true });
    await untilRunning(e);
    await e.close(50);
    const r = await p;
    expect(r.raw).toMatch(/^(data: [^\n]+\n\n)+$/);
    expect(r.data.at(-1)).toBe('[DONE]');
    const err = JSON.parse(r.data.at(-2)!);
    expect(err.error).toMatchObject({ type: 'InternalServerError', code: 500 });
    expect(err.error.message).toMatch(/shutting down/);
  });
});
