/**
 * Hostile-input benchmark of the live servers (issue 12): how fast each limit answers, whether
 * `/health` keeps answering meanwhile, and what memory it costs.
 *
 *   node dist/bench/limits.js [--json]
 *
 * Every server is its own process: `kvlab emulate` (rtx5090x8-llama3-70b profile, time scale
 * 100), `kvlab gateway --out DIR` in front of it, `kvlab kdn` on a redis-server started here
 * (Debian's redis-server is needed). Senders of large bodies are child processes too, so building
 * and writing 50 MB never stalls the process that polls `/health` (every 5 ms, 2 s timeout).
 * Phases:
 *  1. a 50 MB chat body to the gateway, with content-length and chunked: time to the 413, the
 *     slowest /health answer meanwhile, the gateway's peak RSS (/proc VmHWM) before and after;
 *  2. `n: 1000000` to the gateway and to the emulator directly (400 times);
 *  3. a prompt of 1 M characters (refused from its length, without tokenising) and one of 30 k
 *     characters (5 k tokens, tokenised in the worker thread, then refused against the profile's
 *     max_model_len 4096 at the gateway): time to the 400 and the slowest /health meanwhile;
 *  4. 100k-deep JSON (400 before parsing);
 *  5. the KDN (run with --expose-gc): a 50 MB document (413), then 4 documents of 100k tokens
 *     registered and deleted: its heap after a collection (GET /debug/memory?gc=1) before,
 *     after registering and after deleting (RSS stays near its peak: V8 and malloc keep pages).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { launchRedis } from '../live/redis-launcher.js';
import { synthesizeDocument } from '../live/replay.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const KVLAB = resolve(HERE, '../bin/kvlab.js');
const json = process.argv.includes('--json');
const log = (s: string): void => void process.stderr.write(`${s}\n`);

/** Starts a kvlab server command; resolves its URL from the `ready` line. */
async function server(args: string[], children: ChildProcess[], nodeFlags: string[] = []): Promise<{ url: string; pid: number }> {
  const child = spawn(process.execPath, [...nodeFlags, KVLAB, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += String(d)));
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`kvlab ${args[0]} did not start: ${err}`)), 30_000);
    child.stdout!.on('data', (d) => {
      out += String(d);
      const m = /ready (\S+)/.exec(out);
      if (m) {
        clearTimeout(t);
        res({ url: m[1]!, pid: child.pid! });
      }
    });
    child.once('exit', (c) => rej(new Error(`kvlab ${args[0]} exited (${c}): ${err}`)));
  });
}

/** VmRSS and VmHWM (peak) of a process, MiB. */
function mem(pid: number): { rss: number; peak: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1] ?? 0) / 1024;
  return { rss: Math.round(kb('VmRSS')), peak: Math.round(kb('VmHWM')) };
}

/** Polls `url`/health every 5 ms while `work` runs; returns work's result and the slowest answer (ms). */
async function underPoll<T>(url: string, work: () => Promise<T>): Promise<{ result: T; healthMaxMs: number; polls: number }> {
  let stop = false;
  let max = 0;
  let n = 0;
  const poll = (async () => {
    while (!stop) {
      const t = performance.now();
      const r = await request(`${url}/health`, { headersTimeout: 2000, bodyTimeout: 2000 });
      await r.body.text();
      max = Math.max(max, performance.now() - t);
      n++;
      await new Promise((r2) => setTimeout(r2, 5));
    }
  })();
  const result = await work();
  stop = true;
  await poll;
  return { result, healthMaxMs: Math.round(max * 10) / 10, polls: n };
}

/**
 * POSTs a body built in a child process (`build` is JS source evaluating to a string); resolves
 * once the child has built it and sent it: status and ms from the first byte sent to the answer.
 */
function sendFromChild(url: string, build: string, chunked: boolean): { ready: Promise<void>; done: Promise<{ status: number; ms: number }> } {
  const script = `
    const text = ${build};
    const bytes = new TextEncoder().encode(text);
    const body = ${chunked} ? new ReadableStream({ start(c) { for (let i = 0; i < bytes.length; i += 1 << 20) c.enqueue(bytes.subarray(i, i + (1 << 20))); c.close(); } }) : bytes;
    process.stdout.write('ready\\n');
    await new Promise((r) => setTimeout(r, 100));
    const t0 = performance.now();
    const r = await fetch(${JSON.stringify(url)}, { method: 'POST', headers: { 'content-type': 'application/json' }, body, duplex: 'half' });
    await r.text();
    process.stdout.write(JSON.stringify({ status: r.status, ms: performance.now() - t0 }) + '\\n');`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let readyFn: () => void = () => undefined;
  const ready = new Promise<void>((r) => (readyFn = r));
  child.stdout!.on('data', (d) => {
    out += String(d);
    if (out.includes('ready')) readyFn();
  });
  const done = new Promise<{ status: number; ms: number }>((res, rej) =>
    child.once('exit', () => {
      const line = out.split('\n').filter((l) => l.startsWith('{')).pop();
      if (line) res(JSON.parse(line));
      else rej(new Error(`sender failed: ${out}`));
    }),
  );
  return { ready, done };
}

async function post(url: string, body: unknown): Promise<{ status: number; ms: number }> {
  const t0 = performance.now();
  const r = await request(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  await r.body.text();
  return { status: r.statusCode, ms: Math.round((performance.now() - t0) * 10) / 10 };
}

async function main(): Promise<void> {
  const children: ChildProcess[] = [];
  const tmp = mkdtempSync(join(tmpdir(), 'kvlab-bench-limits-'));
  const redis = await launchRedis({ maxmemory: '2gb' });
  const rows: Array<{ what: string; status: number; ms: number; health_max_ms?: number; note?: string }> = [];
  const result: Record<string, unknown> = { date: new Date().toISOString(), rows };
  try {
    const em = await server(['emulate', '--port', '0', '--time-scale', '100', '--no-cold-start'], children);
    const gw = await server(['gateway', '--port', '0', '--backends', em.url, '--out', join(tmp, 'run'), '--health-ms', '0'], children);
    const kdn = await server(['kdn', '--port', '0', '--redis', `${redis.url}/0`, '--model', 'Llama-3-70B-Instruct'], children, ['--expose-gc']);
    const kdnMem = async (): Promise<unknown> => (await request(`${kdn.url}/debug/memory?gc=1`)).body.json();
    const chat = `${gw.url}/v1/chat/completions`;
    const memBefore = mem(gw.pid);
    log('limits: 50 MB bodies to the gateway');
    for (const chunked of [false, true]) {
      const s = sendFromChild(chat, `JSON.stringify({ model: 'Llama-3-70B-Instruct', messages: [{ role: 'user', content: 'x'.repeat(50 * 1024 * 1024) }] })`, chunked);
      await s.ready;
      const { result: r, healthMaxMs } = await underPoll(gw.url, () => s.done);
      rows.push({ what: `gateway: 50 MB chat body${chunked ? ' (chunked)' : ' (content-length)'}`, status: r.status, ms: Math.round(r.ms), health_max_ms: healthMaxMs });
    }
    const memAfter = mem(gw.pid);
    result.gateway_memory_mib = { before: memBefore, after_50mb_bodies: memAfter };
    log('limits: n, long prompts, deep JSON');
    rows.push({ what: 'gateway: n = 1,000,000', ...(await post(chat, { messages: [{ role: 'user', content: 'hi' }], n: 1_000_000 })) });
    rows.push({ what: 'emulator: n = 1,000,000', ...(await post(`${em.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'hi' }], n: 1_000_000 })) });
    for (const [what, build] of [
      ['gateway: 1 M-character prompt (refused from its length)', `JSON.stringify({ messages: [{ role: 'user', content: 'a'.repeat(1_000_000) }] })`],
      ['gateway: 30k-character prompt (tokenised in the worker, 5k tokens > max_model_len 4096)', `JSON.stringify({ messages: [{ role: 'user', content: ' hello'.repeat(5000) }] })`],
    ] as const) {
      const s = sendFromChild(chat, build, false);
      await s.ready;
      const { result: r, healthMaxMs } = await underPoll(gw.url, () => s.done);
      rows.push({ what, status: r.status, ms: Math.round(r.ms), health_max_ms: healthMaxMs });
    }
    rows.push({ what: 'gateway: 100k-deep JSON', ...(await post(chat, `{"messages":[{"role":"user","content":${'['.repeat(100_000)}${']'.repeat(100_000)}}]}`)) });
    log('limits: KDN');
    {
      const s = sendFromChild(`${kdn.url}/knowledge/register_text`, `JSON.stringify({ content: 'x'.repeat(50 * 1024 * 1024) })`, false);
      await s.ready;
      const { result: r, healthMaxMs } = await underPoll(kdn.url, () => s.done);
      rows.push({ what: 'KDN: 50 MB document', status: r.status, ms: Math.round(r.ms), health_max_ms: healthMaxMs });
    }
    const kBefore = await kdnMem();
    const kids: string[] = [];
    let regMs = 0;
    const docs = Array.from({ length: 4 }, (_, i) => synthesizeDocument(`bench-${i}`, 100_000));
    for (let i = 0; i < 4; i++) {
      const t0 = performance.now();
      const r = await request(`${kdn.url}/knowledge/register_text`, { method: 'POST', body: JSON.stringify({ content: docs[i] }) });
      kids.push(((await r.body.json()) as { kid: string }).kid);
      regMs += performance.now() - t0;
    }
    const kFull = await kdnMem();
    await post(`${kdn.url}/knowledge/delete`, { knowledge_ids: kids });
    const kAfter = await kdnMem();
    result.kdn_memory = { before: kBefore, after_4x100k_token_documents: kFull, after_deleting_them: kAfter, peak_rss_mib: mem(kdn.pid).peak, register_ms_per_document: Math.round(regMs / 4) };
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await redis.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
  if (json) {
    process.stdout.write(JSON.stringify(result) + '\n');
    return;
  }
  const w = Math.max(...rows.map((r) => r.what.length));
  process.stdout.write(`${'case'.padEnd(w)}  status  answer ms  /health max ms\n`);
  for (const r of rows) process.stdout.write(`${r.what.padEnd(w)}  ${String(r.status).padStart(6)}  ${String(r.ms).padStart(9)}  ${r.health_max_ms === undefined ? '' : String(r.health_max_ms).padStart(14)}\n`);
  process.stdout.write(`gateway memory (MiB): ${JSON.stringify(result.gateway_memory_mib)}\nKDN memory (after gc): ${JSON.stringify(result.kdn_memory)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`limits bench: ${(e as Error).message}\n`);
  process.exit(1);
});
