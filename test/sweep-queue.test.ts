/**
 * Distributed sweeps on BullMQ against a real redis-server: `kvlab sweep --queue` + `kvlab worker`
 * processes (the built CLI, dist/bin/kvlab.js) give the same sweep.json bytes as a local sweep,
 * survive a SIGKILLed worker, and re-submitting a finished sweep runs nothing.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalJson, cellId, type CellData } from '../notebooks/queue/cell.js';
import { parseQueueUrl, RESULTS_KEY, TIMING_KEY } from '../notebooks/queue/connection.js';
import { runQueueSweep } from '../notebooks/queue/submit.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { describeRedis, HAVE_REDIS } from './helpers/system.js';

const KVLAB = resolve('dist/bin/kvlab.js');
const FAKE_SIM = pathToFileURL(resolve('test/fixtures/notebooks/fake-sim.mjs')).href;
let redis: RedisServerHandle;
let root: string;
const children: ChildProcess[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'kvlab-sweep-queue-'));
  if (!HAVE_REDIS) return;
  redis = await startTestRedis({ noEviction: true });
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await redis?.stop();
  rmSync(root, { recursive: true, force: true });
});

/** Runs the CLI to the end; returns exit code, stdout, stderr. */
function kvlab(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [KVLAB, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Starts `kvlab worker`; resolves once it is ready. `lines` collects its stderr lines. */
async function startWorker(args: string[], env: Record<string, string> = {}): Promise<{ child: ChildProcess; lines: string[]; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [KVLAB, 'worker', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children.push(child);
  const lines: string[] = [];
  let buf = '';
  const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code))); // after stderr is drained
  await new Promise<void>((ok, fail) => {
    child.stderr!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const l = buf.slice(0, i);
        buf = buf.slice(i + 1);
        lines.push(l);
        if (/: ready on /.test(l)) ok();
      }
    });
    void exited.then((c) => fail(new Error(`worker exited (${c}) before ready: ${lines.join('\n')}`)));
  });
  return { child, lines, exited };
}

async function waitFor(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A deterministic Mooncake-format trace: sessions sharing 512-token prefixes. */
function writeTrace(file: string, n: number): void {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const session = i % 17;
    const turns = 1 + (i % 5);
    const hashIds = [1000 + session, ...Array.from({ length: turns }, (_, k) => session * 100 + k)];
    lines.push(JSON.stringify({ timestamp: i * 40, input_length: hashIds.length * 512 - 37, output_length: 20 + (i % 7) * 11, hash_ids: hashIds }));
  }
  writeFileSync(file, lines.join('\n') + '\n');
}

const db = (n: number): string => `${redis.url}/${n}`;

describe('cell ids', () => {
  it('hash the full input: any change of options, trace digest, cluster or version changes the id; key order does not', () => {
    const base: CellData = { kvlab_version: '0.1.0', params: { rate: 2 }, strategy: 'kvlab', seed: 1, sim: { strategy: 'kvlab', seed: 1, trace: '/t.jsonl', timeScale: 0.5 }, traceLabel: '/t.jsonl', outDir: '/o', trace: { path: '/t.jsonl', digest: 'a'.repeat(64), ext: '.jsonl', kind: 'file', stored: true } };
    const id = cellId(base);
    expect(id).toMatch(/^cell-[0-9a-f]{64}$/);
    expect(cellId({ ...base, sim: { timeScale: 0.5, trace: '/t.jsonl', seed: 1, strategy: 'kvlab' } })).toBe(id);
    expect(cellId({ ...base, params: { 'workload.x': 1 } })).toBe(id); // params are labels: the sim options are the input
    expect(cellId({ ...base, outDir: '/elsewhere' })).toBe(id); // no run directory kept: output place is not an input
    for (const other of [
      { ...base, sim: { ...base.sim, seed: 2 } },
      { ...base, sim: { ...base.sim, timeScale: 0.25 } },
      { ...base, kvlab_version: '0.2.0' },
      { ...base, trace: { ...base.trace!, digest: 'b'.repeat(64) } },
      { ...base, cluster: { path: '/c.yaml', digest: 'c'.repeat(64), ext: '.yaml', kind: 'file' as const, stored: true } },
      { ...base, sim: { ...base.sim, out: '/o/runs/x' } },
    ]) expect(cellId(other)).not.toBe(id);
    expect(canonicalJson({ b: 1, a: { d: 2, c: [3, { f: 1, e: 2 }] } })).toBe('{"a":{"c":[3,{"e":2,"f":1}],"d":2},"b":1}');
  });

  it('parses queue URLs and names the option on errors', () => {
    expect(parseQueueUrl('redis://h:7000/3')).toMatchObject({ host: 'h', port: 7000, db: 3 });
    expect(parseQueueUrl('redis://:pw@h')).toMatchObject({ host: 'h', port: 6379, db: 0, password: 'pw' });
    expect(() => parseQueueUrl('http://h/1')).toThrow(/--queue "http:\/\/h\/1": expected a redis:\/\/ URL/);
    expect(() => parseQueueUrl('redis://h/x')).toThrow(/database "x"/);
  });
});

describeRedis('kvlab sweep --queue with kvlab worker processes', () => {
  it('40 cells over 3 workers: sweep.json byte-identical to the local sweep; the trace reaches workers through Redis; re-submitting runs nothing', async () => {
    const trace = join(root, 'trace.jsonl');
    writeTrace(trace, 240);
    const grid = ['--trace', trace, '--instances', '4', '--strategies', 'round-robin,least-load,cacheroute,kvlab', '--vary', 'rate=1,2,4,8,16', '--seeds', '2'];
    const local = kvlab(['sweep', ...grid, '--out', join(root, 'local')]);
    expect(local.code, local.err).toBe(0);
    const localBytes = readFileSync(join(root, 'local', 'sweep.json'));
    const localEntries = JSON.parse(localBytes.toString()) as { summary: { trace: string } | null }[];
    expect(localEntries).toHaveLength(40);
    expect(localEntries.every((e) => e.summary && e.summary.trace === trace)).toBe(true);
    // a second local run writes the same bytes (no wall times inside)
    expect(kvlab(['sweep', ...grid, '--out', join(root, 'local2')]).code).toBe(0);
    expect(readFileSync(join(root, 'local2', 'sweep.json')).equals(localBytes)).toBe(true);

    // enqueue only; then the trace disappears from its path, so workers must fetch it from Redis
    const sub = kvlab(['sweep', ...grid, '--queue', db(1), '--no-wait', '--out', join(root, 'queued')]);
    expect(sub.code, sub.err).toBe(0);
    expect(sub.err).toMatch(/40 cells .*0 already done, 40 enqueued/);
    const traceText = readFileSync(trace);
    unlinkSync(trace);
    const blobs = join(root, 'blobs');
    const workers = await Promise.all([0, 1, 2].map(() => startWorker(['--queue', db(1)], { TMPDIR: blobs })));
    const r = new Redis(db(1));
    try {
      await waitFor(async () => (await r.hlen(RESULTS_KEY)) === 40, 90_000, '40 results');
      const doneLines = (): number[] => workers.map((w) => w.lines.filter((l) => /: done /.test(l)).length);
      await waitFor(() => doneLines().reduce((a, b) => a + b, 0) >= 40, 10_000, 'the workers to log 40 finished cells');
      await new Promise((res) => setTimeout(res, 300)); // and no more than 40
      const ran = doneLines();
      expect(ran.reduce((a, b) => a + b, 0)).toBe(40);
      expect(ran.filter((n) => n > 0).length).toBeGreaterThanOrEqual(2); // spread over processes
      expect(workers.some((w) => w.lines.some((l) => /trace .*trace\.jsonl fetched from Redis/.test(l))), workers[0]!.lines.slice(0, 4).join('\n')).toBe(true);
      writeFileSync(trace, traceText); // same bytes, same digest: --collect computes the same ids
      const col = kvlab(['sweep', ...grid, '--queue', db(1), '--collect', '--out', join(root, 'collected')]);
      expect(col.code, col.err).toBe(0);
      expect(readFileSync(join(root, 'collected', 'sweep.json')).equals(localBytes)).toBe(true);
      const timing = JSON.parse(readFileSync(join(root, 'collected', 'sweep-timing.json'), 'utf8')) as { worker: string; wall_ms: number }[];
      expect(timing).toHaveLength(40);
      expect(timing.every((t) => t.wall_ms >= 0 && /:\d+$/.test(t.worker))).toBe(true);

      // re-submitting the finished sweep (workers stopped) enqueues and runs nothing
      await Promise.all(workers.map((w) => (w.child.kill('SIGTERM'), w.exited)));
      const again = kvlab(['sweep', ...grid, '--queue', db(1), '--out', join(root, 'again')]);
      expect(again.code, again.err).toBe(0);
      expect(again.err).toMatch(/40 already done, 0 enqueued, 0 already queued/);
      expect(readFileSync(join(root, 'again', 'sweep.json')).equals(localBytes)).toBe(true);
      expect(await r.hlen(RESULTS_KEY)).toBe(40);
    } finally {
      r.disconnect();
    }
  });

  it('a worker SIGKILLed mid-cell: the cell runs again on another worker; nothing lost, nothing counted twice', async () => {
    const grid = ['--workload', 'synthetic', '--workload-opt', 'requests=6000', '--strategies', 'kvlab', '--vary', 'rate=5,6,7,8', '--seeds', '1'];
    const lock = ['--lock-ms', '1500', '--stalled-interval-ms', '500'];
    const sub = kvlab(['sweep', ...grid, '--queue', db(2), '--no-wait', '--out', join(root, 'kill-q')]);
    expect(sub.code, sub.err).toBe(0);
    const a = await startWorker(['--queue', db(2), ...lock]);
    await waitFor(() => a.lines.some((l) => /: start /.test(l)), 30_000, 'worker A to start a cell');
    // a cell takes ~1 s: killing as soon as it started is mid-cell
    const killedCell = /start (.*) \((cell-[0-9a-f]+),/.exec(a.lines.find((l) => /: start /.test(l))!)!;
    a.child.kill('SIGKILL');
    await a.exited;
    expect(a.lines.some((l) => /: done /.test(l)), a.lines.join('\n')).toBe(false);
    const b = await startWorker(['--queue', db(2), ...lock]);
    const col = kvlab(['sweep', ...grid, '--queue', db(2), '--collect', '--out', join(root, 'kill-c')]);
    expect(col.code, col.err).toBe(0);
    b.child.kill('SIGTERM');
    await b.exited;
    const local = kvlab(['sweep', ...grid, '--out', join(root, 'kill-local')]);
    expect(local.code, local.err).toBe(0);
    expect(readFileSync(join(root, 'kill-c', 'sweep.json')).equals(readFileSync(join(root, 'kill-local', 'sweep.json')))).toBe(true);
    const r = new Redis(db(2));
    try {
      expect(await r.hlen(RESULTS_KEY)).toBe(4);
      const t = JSON.parse((await r.hget(TIMING_KEY, killedCell[2]!))!) as { attempts_started: number; worker: string };
      expect(t.attempts_started).toBe(2); // started by A, then again by B
      expect(t.worker).toMatch(new RegExp(`:${b.child.pid}$`));
      expect(b.lines.filter((l) => l.includes(`start ${killedCell[1]} (`)).length).toBe(1);
      expect(b.lines.filter((l) => /: done /.test(l))).toHaveLength(4);
    } finally {
      r.disconnect();
    }
  });

  it('a failed cell reports its error in sweep.json and the others go on', async () => {
    // the fake simulator fails strategy "boom" (the CLI would refuse unknown names up front, so the API is used)
    const w = await startWorker(['--queue', db(3), '--sim-module', FAKE_SIM, '--concurrency', '2']);
    const lines: string[] = [];
    const progress: number[] = [];
    const res = await runQueueSweep(
      { workload: 'synthetic', strategies: ['ok', 'boom'], vary: { rate: [1, 2] }, seeds: [1], out: join(root, 'fail') },
      { queue: db(3), pollMs: 200, log: (l) => lines.push(l), onProgress: (p) => progress.push(p.done) },
    );
    w.child.kill('SIGTERM');
    await w.exited;
    expect(res).toMatchObject({ cells: 4, enqueued: 4, failed: 2 });
    expect(progress.sort()).toEqual([1, 2, 3, 4]);
    const entries = JSON.parse(readFileSync(join(root, 'fail', 'sweep.json'), 'utf8')) as { strategy: string; summary: unknown; error?: string }[];
    expect(entries.map((e) => e.strategy)).toEqual(['ok', 'boom', 'ok', 'boom']);
    expect(entries.filter((e) => e.strategy === 'ok').every((e) => e.summary !== null && e.error === undefined)).toBe(true);
    expect(entries.filter((e) => e.strategy === 'boom').every((e) => e.summary === null && e.error === 'boom: strategy exploded')).toBe(true);
    // --collect for a grid never submitted names the problem in one line
    const never = kvlab(['sweep', '--workload', 'synthetic', '--strategies', 'kvlab', '--seeds', '9', '--queue', db(3), '--collect', '--out', join(root, 'never')]);
    expect(never.code).toBe(1);
    expect(never.err).toMatch(/^kvlab: --collect: 9 of 9 cells were never submitted .*run the same sweep without --collect first\n/);
  });
});
