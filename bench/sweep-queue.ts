/**
 * Distributed sweep benchmark (issue 10): wall time of one grid run locally (`kvlab sweep
 * --jobs 1|2`) and on the BullMQ queue with 1 and 2 `kvlab worker` processes (concurrency 1
 * each), and the queue's overhead per cell on a grid of tiny cells.
 *
 * Every figure is the whole `kvlab sweep` process, from start to sweep.json written (workers are
 * started and ready before the clock starts; the queue's Redis is emptied between runs, so no
 * result is reused). Overhead per cell = (queue wall − local wall, 1 worker vs --jobs 1) / cells,
 * and, from sweep-timing.json, the part of the queue wall not spent inside cells.
 *
 * Usage: node dist/bench/sweep-queue.js [--cells-requests N] [--runs K]
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Redis } from 'ioredis';
import { launchRedis } from '../live/redis-launcher.js';

const args = process.argv.slice(2);
const opt = (name: string, def: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
};
const root = resolve(import.meta.dirname, '../..');
const cli = resolve(root, 'dist/bin/kvlab.js');
const runs = Number(opt('runs', '2'));
const work = mkdtempSync(join(tmpdir(), 'kvlab-bench-sweepq-'));

/** The real grid: 4 strategies x 3 rates x 2 seeds = 24 cells of N synthetic requests. */
const realGrid = ['--workload', 'synthetic', '--workload-opt', `requests=${opt('cells-requests', '3000')}`, '--strategies', 'round-robin,least-load,cacheroute,kvlab', '--vary', 'rate=1,2,3', '--seeds', '2'];
/** Tiny cells (20 requests each) where the queue's own cost dominates: 60 cells. */
const tinyGrid = ['--workload', 'synthetic', '--workload-opt', 'requests=20', '--strategies', 'round-robin,kvlab', '--vary', 'rate=1,2,3,4,5,6,7,8,9,10', '--seeds', '3'];

function sweep(extra: string[], out: string): number {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [cli, 'sweep', ...extra, '--out', out], { encoding: 'utf8' });
  const wall = performance.now() - t0;
  if (r.status !== 0) throw new Error(`kvlab sweep failed: ${r.stderr}`);
  return wall;
}

async function startWorker(url: string): Promise<ChildProcess> {
  const c = spawn(process.execPath, [cli, 'worker', '--queue', url], { stdio: ['ignore', 'ignore', 'pipe'] });
  await new Promise<void>((ok, fail) => {
    let buf = '';
    c.stderr!.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes(': ready on ')) ok();
    });
    c.on('exit', (code) => fail(new Error(`worker exited ${code}: ${buf}`)));
  });
  c.stderr!.resume();
  return c;
}

async function stop(ws: ChildProcess[]): Promise<void> {
  await Promise.all(ws.map((w) => new Promise<void>((r) => (w.once('exit', () => r()), w.kill('SIGTERM')))));
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const redis = await launchRedis({ extraArgs: ['--maxmemory-policy', 'noeviction'] });
  const url = `${redis.url}/0`;
  const r = new Redis(url);
  try {
    const results: Record<string, number[]> = {};
    const note = (k: string, v: number): void => {
      (results[k] ??= []).push(v);
      process.stderr.write(`${k}: ${(v / 1000).toFixed(2)} s\n`);
    };
    let inCellsMs = 0;
    for (let k = 0; k < runs; k++) {
      for (const jobs of [1, 2]) note(`real local --jobs ${jobs}`, sweep([...realGrid, '--jobs', String(jobs)], join(work, `l${jobs}-${k}`)));
      for (const n of [1, 2]) {
        await r.flushdb();
        const ws = await Promise.all(Array.from({ length: n }, () => startWorker(url)));
        note(`real queue ${n} worker${n > 1 ? 's' : ''}`, sweep([...realGrid, '--queue', url], join(work, `q${n}-${k}`)));
        await stop(ws);
      }
      note('tiny local --jobs 1', sweep([...tinyGrid, '--jobs', '1'], join(work, `tl-${k}`)));
      await r.flushdb();
      const ws = await Promise.all([startWorker(url)]);
      const out = join(work, `tq-${k}`);
      note('tiny queue 1 worker', sweep([...tinyGrid, '--queue', url], out));
      await stop(ws);
      const timing = JSON.parse(readFileSync(join(out, 'sweep-timing.json'), 'utf8')) as { wall_ms: number }[];
      inCellsMs = timing.reduce((s, t) => s + t.wall_ms, 0);
      note('tiny queue: time not inside cells', results['tiny queue 1 worker']!.at(-1)! - inCellsMs);
    }
    const realCells = 24;
    const tinyCells = 60;
    const m = (k: string): number => median(results[k]!);
    console.log(`date: ${new Date().toISOString()}; ${runs} runs, medians`);
    console.log('| grid | local --jobs 1 | local --jobs 2 | queue, 1 worker | queue, 2 workers |');
    console.log('|---|---|---|---|---|');
    console.log(`| ${realCells} cells × ${realGrid[3]} | ${(m('real local --jobs 1') / 1000).toFixed(2)} s | ${(m('real local --jobs 2') / 1000).toFixed(2)} s | ${(m('real queue 1 worker') / 1000).toFixed(2)} s | ${(m('real queue 2 workers') / 1000).toFixed(2)} s |`);
    const over = (m('tiny queue 1 worker') - m('tiny local --jobs 1')) / tinyCells;
    console.log(`queue overhead per cell (${tinyCells} cells of 20 requests, 1 worker vs --jobs 1): ${over.toFixed(1)} ms; queue wall not inside cells: ${(m('tiny queue: time not inside cells') / tinyCells).toFixed(1)} ms per cell`);
    console.log(JSON.stringify(Object.fromEntries(Object.entries(results).map(([k, v]) => [k, v.map((x) => Math.round(x))]))));
  } finally {
    r.disconnect();
    await redis.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

await main();
