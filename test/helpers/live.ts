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

/**
 * Checks that a server's event loop kept answering `/health` while a big body was refused (see
 * {@link postBigWhilePolling}), robustly on a loaded 2-core machine:
 * - the median latency stays within 2 × the median measured just before (same load, no body) + 10 ms;
 * - no single answer took 250 ms or more. Reading and JSON-parsing a 50 MB body on the event loop
 *   blocks it ~700 ms on such a machine (Buffer.concat + toString ~300 ms, JSON.parse ~400 ms,
 *   measured 2026-12-01), while a machine at load average 9-11 delays one answer by tens of ms
 *   (67 ms seen): the bound tells the two apart.
 * @returns a list of violations (empty when the loop stayed responsive)
 */
export function healthStalls(duringMs: readonly number[], baselineMs: readonly number[]): string[] {
  const med = (xs: readonly number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length ? s[s.length >> 1]! : NaN;
  };
  const bad: string[] = [];
  if (duringMs.length < 3) bad.push(`only ${duringMs.length} /health answers while the body was in flight`);
  if (!(med(duringMs) <= 2 * med(baselineMs) + 10)) bad.push(`median /health ${med(duringMs).toFixed(1)} ms vs ${med(baselineMs).toFixed(1)} ms before the body`);
  const worst = Math.max(...duringMs);
  if (!(worst < 250)) bad.push(`one /health took ${worst.toFixed(0)} ms`);
  return bad;
}

/** Outcome of {@link postBigWhilePolling}. */
export interface BigPost {
  status: number;
  /** ms from the first byte sent to the whole answer, measured by the sender. */
  ms: number;
  body: string;
  /** bytes of the body the sender had handed to its socket when the answer's headers arrived. */
  writtenAtAnswer: number;
  /** bytes of the whole body. */
  totalBytes: number;
  /** latency of every `GET health` answered while the request was in flight, ms. */
  healthMs: number[];
  /** latency of every `GET health` answered in the 200 ms before it was sent (same machine load, no big body), ms. */
  baselineMs: number[];
}

/**
 * POSTs a large body from a child process (building and writing it would stall this process's
 * event loop, which also runs the servers under test) in 1 MiB writes that wait for the socket
 * to drain (so `writtenAtAnswer` tells how much the server had taken when it answered), and polls
 * `healthUrl` every 5 ms from here: for 200 ms before the body is sent (`baselineMs`) and while it
 * is in flight (`healthMs`).
 * @param build JavaScript source evaluating to the body string (run in the child)
 * @param chunked Transfer-Encoding: chunked instead of a Content-Length
 */
export async function postBigWhilePolling(url: string, build: string, healthUrl: string, chunked = false): Promise<BigPost> {
  const { spawn } = await import('node:child_process');
  const script = `
    import { request } from 'node:http';
    const bytes = Buffer.from(${build});
    process.stdout.write('ready\\n');
    await new Promise((r) => setTimeout(r, 200));
    process.stdout.write('sending\\n');
    const u = new URL(${JSON.stringify(url)});
    const headers = { 'content-type': 'application/json', ...(${chunked} ? {} : { 'content-length': bytes.length }) };
    const t0 = performance.now();
    let written = 0;
    let answered = false;
    const req = request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers });
    const done = new Promise((resolve, reject) => {
      req.on('response', (res) => {
        answered = true;
        const writtenAtAnswer = written;
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, ms: performance.now() - t0, body, writtenAtAnswer, totalBytes: bytes.length }));
      });
      req.on('error', (e) => (answered ? undefined : reject(e)));
    });
    for (let i = 0; i < bytes.length && !answered && !req.destroyed; i += 1 << 20) {
      const chunk = bytes.subarray(i, i + (1 << 20));
      written += chunk.length;
      if (!req.write(chunk)) await Promise.race([new Promise((r) => req.once('drain', r)), done.catch(() => undefined), new Promise((r) => req.once('close', r))]);
    }
    if (!answered && !req.destroyed) req.end();
    const result = await done;
    req.destroy(); // the server may hold the connection open for the body it will never read
    process.stdout.write(JSON.stringify(result) + '\\n', () => process.exit(0));`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => (out += String(d)));
  const exited = new Promise((r) => child.once('exit', r));
  while (!out.includes('ready')) await Promise.race([sleep(5), exited]);
  const baselineMs: number[] = [];
  const healthMs: number[] = [];
  let stop = false;
  const poll = (async () => {
    while (!stop) {
      const sending = out.includes('sending');
      const t = performance.now();
      const h = await getText(healthUrl);
      (sending ? healthMs : baselineMs).push(performance.now() - t);
      if (h.status !== 200) throw new Error(`${healthUrl} answered ${h.status}`);
      await sleep(5);
    }
  })();
  await exited;
  stop = true;
  await poll;
  const line = out.split('\n').filter((l) => l.startsWith('{')).pop();
  if (!line) throw new Error(`the sender failed: ${out}`);
  return { ...(JSON.parse(line) as Omit<BigPost, 'healthMs' | 'baselineMs'>), healthMs, baselineMs };
}
