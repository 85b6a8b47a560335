/**
 * Shared helpers for the live/ integration tests: a small fast instance profile, an SSE reader
 * (eventsource-parser, chunk by chunk), and JSON POST via undici.
 */
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { request } from 'undici';
import type { Profile } from '../../engine/types.js';

/**
 * A tiny, fast profile for tests: ~5 ms fixed step, 0.05 ms per prefill token, 16-token blocks,
 * 8k context, 64k-token KV. Times are small but not zero so concurrency is real.
 */
export function testProfile(over: Partial<Profile['engine']> = {}, step: Partial<Profile['step']> = {}): Profile {
  return {
    name: 'test-tiny',
    derived: true,
    description: 'unit-test profile',
    source: 'test/helpers/live.ts',
    model: { name: 'test-llama', layers: 2, kvHeads: 1, headDim: 8, dtypeBytes: 2, kvBytesPerToken: 64, paramsB: 0.001 },
    hardware: { gpu: 'none', gpus: 1, peakTflops: 1, memBandwidthGBs: 1, memGiB: 1 },
    engine: { maxNumBatchedTokens: 2048, maxNumSeqs: 16, maxModelLen: 8192, kvCapacityTokens: 65536, blockSizeTokens: 16, longPrefillTokenThreshold: 0, ...over },
    step: { fixedMs: 4, prefillSeqMs: 0, decodeSeqMs: 0.2, knots: [0, 8192], values: [0, 400], attnTokens: 1e9, kvReadMsPerToken: 0, apiMs: 1, frontendMsPerRequest: 0, ...step },
    kvLoad: { fixedMs: 1, msPerGB: 100, bytesPerToken: 64 },
    coldStartMs: 0,
  };
}

/** POSTs JSON (or a raw string body) and returns status, headers and parsed JSON (or text). */
export async function postJson(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; json: any; text: string }> {
  const res = await request(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.body.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers: res.headers, json, text };
}

/** GETs a URL; returns status and text. */
export async function getText(url: string): Promise<{ status: number; text: string; headers: Record<string, unknown> }> {
  const res = await request(url);
  return { status: res.statusCode, text: await res.body.text(), headers: res.headers };
}

/** One SSE stream read to the end. */
export interface SseResult {
  status: number;
  headers: Record<string, unknown>;
  /** raw `data` strings in order (including "[DONE]"). */
  data: string[];
  /** events that had an `event:` or `id:` field (vLLM sends none). */
  named: EventSourceMessage[];
  /** raw bytes received, for framing checks. */
  raw: string;
  /** wall ms at which each data event was parsed, relative to the request start. */
  at: number[];
}

/** POSTs and reads an SSE response chunk by chunk with eventsource-parser. */
export async function postSse(url: string, body: unknown): Promise<SseResult> {
  const t0 = performance.now();
  const res = await request(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const out: SseResult = { status: res.statusCode, headers: res.headers, data: [], named: [], raw: '', at: [] };
  const parser = createParser({
    onEvent(ev) {
      out.data.push(ev.data);
      out.at.push(performance.now() - t0);
      if (ev.event !== undefined || ev.id !== undefined) out.named.push(ev);
    },
  });
  const dec = new TextDecoder();
  for await (const chunk of res.body) {
    const s = dec.decode(chunk as Buffer, { stream: true });
    out.raw += s;
    parser.feed(s);
  }
  return out;
}

/** Parses Prometheus text into `name{labels}` -> value (samples only). */
export function parseProm(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}

/** Sum of all samples whose name (before `{`) equals `name`, optionally filtered by a label substring. */
export function promSum(m: Map<string, number>, name: string, labelFilter = ''): number {
  let s = 0;
  for (const [k, v] of m) {
    const n = k.includes('{') ? k.slice(0, k.indexOf('{')) : k;
    if (n === name && k.includes(labelFilter)) s += v;
  }
  return s;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Outcome of {@link postBigWhilePolling}. */
export interface BigPost {
  status: number;
  /** ms from the first byte sent to the whole answer, measured by the sender. */
  ms: number;
  body: string;
  /** latency of every `GET health` answered while the request was in flight, ms. */
  healthMs: number[];
}

/**
 * POSTs a large body from a child process (building and writing it would stall this process's
 * event loop, which also runs the servers under test) and polls `healthUrl` every 5 ms from here
 * while it is in flight.
 * @param build JavaScript source evaluating to the body string (run in the child)
 */
export async function postBigWhilePolling(url: string, build: string, healthUrl: string, chunked = false): Promise<BigPost> {
  const { spawn } = await import('node:child_process');
  const script = `
    const bytes = new TextEncoder().encode(${build});
    const body = ${chunked} ? new ReadableStream({ start(c) { for (let i = 0; i < bytes.length; i += 1 << 20) c.enqueue(bytes.subarray(i, i + (1 << 20))); c.close(); } }) : bytes;
    process.stdout.write('ready\\n');
    await new Promise((r) => setTimeout(r, 200));
    const t0 = performance.now();
    const r = await fetch(${JSON.stringify(url)}, { method: 'POST', headers: { 'content-type': 'application/json' }, body, duplex: 'half' });
    const text = await r.text();
    process.stdout.write(JSON.stringify({ status: r.status, ms: performance.now() - t0, body: text }) + '\\n');`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += String(d)));
  const exited = new Promise((r) => child.once('exit', r));
  while (!out.includes('ready')) await Promise.race([sleep(5), exited]);
  const healthMs: number[] = [];
  let stop = false;
  const poll = (async () => {
    while (!stop) {
      const t = performance.now();
      const h = await getText(healthUrl);
      healthMs.push(performance.now() - t);
      if (h.status !== 200) throw new Error(`${healthUrl} answered ${h.status}`);
      await sleep(5);
    }
  })();
  await exited;
  stop = true;
  await poll;
  const line = out.split('\n').filter((l) => l.startsWith('{')).pop();
  if (!line) throw new Error(`the sender failed: ${out}`);
  return { ...(JSON.parse(line) as Omit<BigPost, 'healthMs'>), healthMs };
}
