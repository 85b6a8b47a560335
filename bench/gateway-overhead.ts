/**
 * Gateway overhead: latency added by `kvlab gateway` over calling the backend directly, the
 * gateway's non-streaming throughput, and its CPU time per request.
 *
 *   node dist/bench/gateway-overhead.js [--backend stub|emulator|both] [--requests N]
 *        [--seconds S] [--concurrency C] [--upstream stream|direct]
 *
 * Every server is its own process (`kvlab emulate` with a zero-cost profile at time scale
 * 1000, or a minimal node:http stub that answers with a canned vLLM response), the gateway is
 * `kvlab gateway --out DIR` (records on, engine `least-load`), and the load generator is this
 * script re-spawned with `--loadgen` (undici Pool, keep-alive). Phases, per backend kind:
 *  1. latency: N sequential non-streaming completions (1 in flight) after 300 warm-up requests,
 *     straight to the backend and through the gateway; p50/p90/p99 and the added p50;
 *  2. throughput: C requests in flight for S seconds through the gateway; req/s and the
 *     gateway's CPU ms per request (from /proc/PID/stat utime+stime over the phase).
 * Results print as a table and as one JSON line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';

const HERE = dirname(fileURLToPath(import.meta.url));
const KVLAB = resolve(HERE, '../bin/kvlab.js');
const SELF = fileURLToPath(import.meta.url);

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : dflt;
}

const BODY = JSON.stringify({ prompt: 'Hello, how are you today?', max_tokens: 1 });

// ------------------------------------------------------------------------------------------
// load generator mode (child process)

interface LoadResult {
  n: number;
  p50: number;
  p90: number;
  p99: number;
  rps: number;
  errors: number;
}

async function loadgen(url: string, mode: 'latency' | 'throughput', n: number, seconds: number, concurrency: number): Promise<LoadResult> {
  const u = new URL(url);
  const pool = new Pool(`${u.protocol}//${u.host}`, { connections: Math.max(1, concurrency), pipelining: 1, keepAliveTimeout: 30_000 });
  const lat: number[] = [];
  let errors = 0;
  const one = async (): Promise<void> => {
    const t0 = performance.now();
    try {
      const r = await pool.request({ path: '/v1/completions', method: 'POST', headers: { 'content-type': 'application/json' }, body: BODY });
      await r.body.text();
      if (r.statusCode !== 200) errors++;
    } catch {
      errors++;
    }
    lat.push(performance.now() - t0);
  };
  for (let i = 0; i < 300; i++) await one(); // warm-up (JIT, connections)
  lat.length = 0;
  errors = 0;
  const t0 = performance.now();
  if (mode === 'latency') for (let i = 0; i < n; i++) await one();
  else {
    const end = t0 + seconds * 1000;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < end) await one();
      }),
    );
  }
  const wall = performance.now() - t0;
  await pool.close();
  lat.sort((a, b) => a - b);
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))]!;
  return { n: lat.length, p50: q(0.5), p90: q(0.9), p99: q(0.99), rps: (lat.length / wall) * 1000, errors };
}

// ------------------------------------------------------------------------------------------
// stub backend mode (child process): a canned vLLM 0.13 answer, as cheap as a server gets

function stub(port: number): void {
  const created = Math.floor(Date.now() / 1000);
  const chunk = (id: string) => `data: {"id":"${id}","object":"text_completion","created":${created},"model":"stub","choices":[{"index":0,"text":" Hi","logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":null}\n\n`;
  const usage = (id: string) => `data: {"id":"${id}","object":"text_completion","created":${created},"model":"stub","choices":[],"usage":{"prompt_tokens":8,"total_tokens":9,"completion_tokens":1}}\n\n`;
  let n = 0;
  const srv = createServer((req: IncomingMessage, res: ServerResponse) => {
    if (req.method === 'GET') {
      if (req.url === '/v1/models') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ object: 'list', data: [{ id: 'stub', object: 'model', created, owned_by: 'vllm', root: 'stub', parent: null, max_model_len: 8192 }] }));
      } else {
        res.writeHead(200);
        res.end();
      }
      return;
    }
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const id = `cmpl-${n++}`;
      if (body.includes('"stream":true')) {
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8' });
        res.end(chunk(id) + (body.includes('"include_usage":true') ? usage(id) : '') + 'data: [DONE]\n\n');
      } else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(`{"id":"${id}","object":"text_completion","created":${created},"model":"stub","choices":[{"index":0,"text":" Hi","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_logprobs":null}],"usage":{"prompt_tokens":8,"total_tokens":9,"completion_tokens":1,"prompt_tokens_details":null},"system_fingerprint":null,"kv_transfer_params":null}`);
      }
    });
  });
  srv.keepAliveTimeout = 30_000;
  srv.listen(port, '127.0.0.1', () => {
    const a = srv.address();
    process.stdout.write(`ready http://127.0.0.1:${typeof a === 'object' && a ? a.port : port}\n`);
  });
  process.on('SIGTERM', () => srv.close(() => process.exit(0)));
}

// ------------------------------------------------------------------------------------------
// orchestrator

const children: ChildProcess[] = [];

function start(args: string[], label: string): Promise<{ url: string; child: ChildProcess }> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stderr!.on('data', (d) => (err += String(d)));
  return new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`${label}: no ready line\n${err}`)), 30_000);
    child.stdout!.on('data', (d) => {
      out += String(d);
      const m = /ready (\S+)/.exec(out);
      if (m) {
        clearTimeout(t);
        res({ url: m[1]!, child });
      }
    });
    child.once('exit', (c) => rej(new Error(`${label} exited (${c}): ${err}`)));
  });
}

function runLoad(url: string, mode: 'latency' | 'throughput', n: number, seconds: number, c: number): Promise<LoadResult> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [SELF, '--loadgen', url, '--mode', mode, '--requests', String(n), '--seconds', String(seconds), '--concurrency', String(c)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout!.on('data', (d) => (out += String(d)));
    child.once('exit', (code) => (code === 0 ? res(JSON.parse(out) as LoadResult) : rej(new Error(`load generator exited ${code}`))));
  });
}

/** utime + stime of a process, ms (Linux /proc; CLK_TCK = 100). */
function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function bench(kind: 'stub' | 'emulator', tmp: string, n: number, seconds: number, conc: number, upstream: string): Promise<Record<string, unknown>> {
  const profile = join(tmp, 'instant.json');
  writeFileSync(
    profile,
    JSON.stringify({
      name: 'instant',
      derived: true,
      description: 'zero-cost steps for overhead benchmarks',
      source: 'bench/gateway-overhead.ts',
      model: { name: 'bench', layers: 1, kvHeads: 1, headDim: 8, dtypeBytes: 2, kvBytesPerToken: 32, paramsB: 0.001 },
      hardware: { gpu: 'none', gpus: 1, peakTflops: 1, memBandwidthGBs: 1, memGiB: 1 },
      engine: { maxNumBatchedTokens: 8192, maxNumSeqs: 256, maxModelLen: 8192, kvCapacityTokens: 1_000_000, blockSizeTokens: 16, longPrefillTokenThreshold: 0 },
      step: { fixedMs: 0, prefillSeqMs: 0, decodeSeqMs: 0, knots: [0, 8192], values: [0, 0], attnTokens: 1e9, kvReadMsPerToken: 0, apiMs: 0, frontendMsPerRequest: 0 },
      kvLoad: { fixedMs: 0, msPerGB: 0, bytesPerToken: 32 },
      coldStartMs: 0,
    }),
  );
  const be = kind === 'stub' ? await start([SELF, '--stub', '0'], 'stub backend') : await start([KVLAB, 'emulate', '--port', '0', '--profile', profile, '--model', 'bench', '--time-scale', '1000', '--no-cold-start'], 'emulator');
  const gw = await start([KVLAB, 'gateway', '--backends', be.url, '--port', '0', '--strategy', 'least-load', '--profile', profile, '--out', join(tmp, `gw-${kind}`), '--health-ms', '0', '--upstream', upstream], 'gateway');
  const direct = await runLoad(be.url, 'latency', n, seconds, 1);
  const via = await runLoad(gw.url, 'latency', n, seconds, 1);
  const c0 = cpuMs(gw.child.pid!);
  const tput = await runLoad(gw.url, 'throughput', n, seconds, conc);
  const c1 = cpuMs(gw.child.pid!);
  const tputDirect = await runLoad(be.url, 'throughput', n, seconds, conc);
  for (const c of [gw.child, be.child]) c.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  return {
    backend: kind,
    upstream,
    direct_p50_ms: direct.p50,
    direct_p90_ms: direct.p90,
    direct_p99_ms: direct.p99,
    gateway_p50_ms: via.p50,
    gateway_p90_ms: via.p90,
    gateway_p99_ms: via.p99,
    added_p50_ms: via.p50 - direct.p50,
    gateway_rps: tput.rps,
    direct_rps: tputDirect.rps,
    gateway_cpu_ms_per_request: (c1 - c0) / Math.max(1, tput.n + 300),
    errors: direct.errors + via.errors + tput.errors,
    concurrency: conc,
  };
}

async function main(): Promise<void> {
  if (process.argv.includes('--loadgen')) {
    const r = await loadgen(arg('--loadgen', ''), arg('--mode', 'latency') as 'latency' | 'throughput', Number(arg('--requests', '3000')), Number(arg('--seconds', '5')), Number(arg('--concurrency', '64')));
    process.stdout.write(JSON.stringify(r));
    return;
  }
  if (process.argv.includes('--stub')) return stub(Number(arg('--stub', '0')));
  const which = arg('--backend', 'both');
  const n = Number(arg('--requests', '3000'));
  const seconds = Number(arg('--seconds', '5'));
  const conc = Number(arg('--concurrency', '64'));
  const upstream = arg('--upstream', 'stream');
  const tmp = mkdtempSync(join(tmpdir(), 'kvlab-gwbench-'));
  const rows: Record<string, unknown>[] = [];
  try {
    for (const kind of which === 'both' ? (['stub', 'emulator'] as const) : [which as 'stub' | 'emulator']) rows.push(await bench(kind, tmp, n, seconds, conc, upstream));
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    rmSync(tmp, { recursive: true, force: true });
  }
  const f = (x: unknown) => (typeof x === 'number' ? x.toFixed(x >= 100 ? 0 : 3) : String(x));
  console.log('backend   upstream  direct p50  gateway p50  added p50  gateway p99  gateway req/s  direct req/s  gateway CPU ms/req');
  for (const r of rows) console.log(`${f(r.backend).padEnd(9)} ${f(r.upstream).padEnd(9)} ${f(r.direct_p50_ms).padStart(10)}  ${f(r.gateway_p50_ms).padStart(11)}  ${f(r.added_p50_ms).padStart(9)}  ${f(r.gateway_p99_ms).padStart(11)}  ${f(r.gateway_rps).padStart(13)}  ${f(r.direct_rps).padStart(12)}  ${f(r.gateway_cpu_ms_per_request).padStart(18)}`);
  console.log(JSON.stringify({ date: new Date().toISOString(), node: process.version, requests: n, seconds, concurrency: conc, rows }));
}

main().catch((e: unknown) => {
  console.error(e);
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  process.exit(1);
});
