/**
 * `kvlab worker`: takes sweep cells from the BullMQ queue and simulates them in a piscina thread
 * pool (the same worker file as the local sweep), so the process's event loop stays free to
 * renew job locks while a simulation runs. Results go to the results hash keyed by job id
 * (HSETNX: a cell that ran twice — its first worker was killed after writing — keeps one result).
 *
 * A worker killed mid-cell (SIGKILL, host lost) stops renewing its lock; after `lockMs` another
 * worker's stalled-job check (every `stalledIntervalMs`) moves the cell back to the wait list and
 * it runs again elsewhere (BullMQ stalled jobs, maxStalledCount 1: a cell that stalls twice
 * fails with BullMQ's "job stalled more than allowable limit").
 */
import { hostname } from 'node:os';
import { Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { Piscina } from 'piscina';
import { KVLAB_VERSION } from '../../engine/version.js';
import type { SimResult } from '../sim-api.js';
import { cellEntry, defaultWorkerFile, volatileFields, type CellTiming } from '../sweep.js';
import { materialize, type CellData } from './cell.js';
import { connectionOf, parseQueueUrl, QUEUE_NAME, RESULTS_KEY, TIMING_KEY } from './connection.js';

/** Options of {@link startQueueWorker}. */
export interface QueueWorkerOptions {
  /** redis://HOST:PORT/DB of the queue. */
  queue: string;
  /** cells run at once (threads), default 1. */
  concurrency?: number;
  /** job lock duration, ms (BullMQ lockDuration; default 30,000): how long a dead worker holds a cell. */
  lockMs?: number;
  /** stalled-job check period, ms (BullMQ stalledInterval; default 30,000). */
  stalledIntervalMs?: number;
  /** piscina worker file (default: notebooks/sweep-worker.js, compiled). */
  workerFile?: string;
  /** simulator module the threads import (default sim/run.js; tests pass a fake). */
  simModule?: string;
  /** where files fetched from Redis are kept (default $TMPDIR/kvlab-blobs). */
  cacheDir?: string;
  /** one line per started / finished / failed cell. */
  log?: (line: string) => void;
}

/** A running queue worker. */
export interface QueueWorkerHandle {
  /** "host:pid" (also the BullMQ worker name). */
  readonly name: string;
  /** cells finished / failed by this worker so far. */
  readonly stats: { done: number; failed: number };
  /** Stops taking cells, waits for the running ones, closes connections and threads. Idempotent. */
  close(): Promise<void>;
}

/** A cell's label for logs: "kvlab rate=2 seed 1". */
export function cellLabel(d: Pick<CellData, 'strategy' | 'params' | 'seed'>): string {
  const p = Object.entries(d.params).map(([k, v]) => `${k}=${v}`).join(' ');
  return `${d.strategy}${p ? ` ${p}` : ''} seed ${d.seed}`;
}

/**
 * Connects to the queue and starts processing cells.
 * @throws Error for a bad URL, an unreachable Redis, or when no compiled sweep worker file exists (run `npm run build`).
 */
export async function startQueueWorker(o: QueueWorkerOptions): Promise<QueueWorkerHandle> {
  const target = parseQueueUrl(o.queue);
  const workerFile = o.workerFile ?? defaultWorkerFile();
  if (!workerFile) throw new Error('kvlab worker: dist/notebooks/sweep-worker.js not found (run `npm run build`)');
  const concurrency = Math.max(1, o.concurrency ?? 1);
  const name = `${hostname()}:${process.pid}`;
  const log = o.log ?? (() => {});
  const redis = new Redis({ host: target.host, port: target.port, db: target.db, username: target.username, password: target.password, maxRetriesPerRequest: null, lazyConnect: true });
  // outages after start: ioredis reconnects by itself; say so in one line instead of a stack trace
  let connected = false;
  redis.on('error', (e: Error) => connected && log(`worker: Redis: ${e.message} (reconnecting)`));
  try {
    await redis.connect();
    connected = true;
  } catch (e) {
    redis.disconnect();
    throw new Error(`--queue ${target.url}: cannot connect to Redis: ${(e as Error).message}`);
  }
  const pool = new Piscina({ filename: workerFile, minThreads: 1, maxThreads: concurrency, idleTimeout: 60_000 });
  const stats = { done: 0, failed: 0 };

  const process1 = async (job: Job<CellData>): Promise<{ wall_ms: number }> => {
    const d = job.data;
    if (d.kvlab_version !== KVLAB_VERSION) throw new Error(`cell made by kvlab ${d.kvlab_version}, this worker is ${KVLAB_VERSION}`);
    const label = cellLabel(d);
    log(`worker ${name}: start ${label} (${job.id}, start #${job.attemptsStarted})`);
    const t0 = Date.now();
    const sim = { ...d.sim };
    const note = (l: string): void => log(`worker ${name}: ${l}`);
    if (d.trace) sim.trace = await materialize(d.trace, 'trace', redis, o.cacheDir, note);
    if (d.cluster) sim.cluster = await materialize(d.cluster, 'cluster file', redis, o.cacheDir, note);
    const r = (await pool.run({ opts: sim, simModule: o.simModule })) as SimResult;
    const entry = cellEntry(d, r, d.traceLabel, d.outDir);
    const wall = Date.now() - t0;
    const timing: CellTiming = { params: d.params, strategy: d.strategy, seed: d.seed, wall_ms: wall, sim: volatileFields(r.summary), worker: name, attempts_started: job.attemptsStarted };
    const result: { summary: unknown; run_dir?: string } = { summary: entry.summary };
    if (entry.run_dir !== undefined) result.run_dir = entry.run_dir;
    await redis.multi().hsetnx(RESULTS_KEY, job.id!, JSON.stringify(result)).hset(TIMING_KEY, job.id!, JSON.stringify(timing)).exec();
    return { wall_ms: wall };
  };

  const worker = new Worker<CellData>(QUEUE_NAME, process1, {
    connection: connectionOf(target),
    concurrency,
    name,
    lockDuration: o.lockMs ?? 30_000,
    stalledInterval: o.stalledIntervalMs ?? 30_000,
    maxStalledCount: 1,
    autorun: false,
  });
  worker.on('completed', (job, rv: { wall_ms: number }) => {
    stats.done++;
    log(`worker ${name}: done ${cellLabel(job.data)} in ${(rv.wall_ms / 1000).toFixed(2)} s`);
  });
  worker.on('failed', (job, err) => {
    stats.failed++;
    log(`worker ${name}: FAILED ${job ? cellLabel(job.data) : '?'}: ${err.message}`);
  });
  worker.on('error', (err) => log(`worker ${name}: queue error: ${err.message}`));
  await worker.waitUntilReady();
  void worker.run();

  let closing: Promise<void> | undefined;
  return {
    name,
    stats,
    close() {
      closing ??= (async () => {
        await worker.close();
        await pool.destroy();
        redis.disconnect();
      })();
      return closing;
    },
  };
}
