/**
 * `kvlab sweep --queue URL`: plans the grid exactly as the local sweep does, enqueues one BullMQ
 * job per cell with jobId = cellId (a hash of the cell's full input), follows progress from the
 * queue's events (QueueEvents, with a periodic re-scan so a missed event only delays a line), and
 * assembles DIR/sweep.json from the results hash in grid order — the same bytes as a local run.
 *
 * Submitting is idempotent: a cell whose result exists is not enqueued, a cell already in the
 * queue (waiting, active, failed) is not added again (BullMQ ignores a duplicate jobId).
 * `--collect` enqueues nothing: it waits for the cells of the grid and writes sweep.json.
 */
import { Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import type { SweepEntry } from '../types.js';
import { planJobs, writeSweepFiles, type CellTiming, type SweepJob, type SweepOutcome, type SweepProgress, type SweepSpec } from '../sweep.js';
import { cellData, cellId, fileRef, type CellData, type FileRef } from './cell.js';
import { connectionOf, parseQueueUrl, QUEUE_NAME, RESULTS_KEY, TIMING_KEY } from './connection.js';

/** Options of {@link runQueueSweep}. */
export interface QueueSweepOptions {
  /** redis://HOST:PORT/DB. */
  queue: string;
  /** enqueue nothing; wait for the grid's cells and assemble sweep.json. */
  collect?: boolean;
  /** wait for every cell and write sweep.json (default true); false: return after enqueueing. */
  wait?: boolean;
  /** put failed cells of the grid back in the queue (otherwise their error is final). */
  retryFailed?: boolean;
  /** re-scan period while waiting, ms (default 1,000). */
  pollMs?: number;
  onProgress?: (p: SweepProgress) => void;
  /** status lines (counts, workers). */
  log?: (line: string) => void;
}

/** What {@link runQueueSweep} did. */
export interface QueueSweepOutcome extends Partial<SweepOutcome> {
  cells: number;
  /** cells added to the queue by this call. */
  enqueued: number;
  /** cells whose result already existed when this call started. */
  alreadyDone: number;
  /** cells already waiting, running or failed in the queue. */
  alreadyQueued: number;
  /** failed cells put back by `retryFailed`. */
  retried: number;
  /** job ids in grid order. */
  ids: string[];
}

type Outcome = { summary: unknown; run_dir?: string } | { error: string };

/**
 * Submits (unless `collect`) and, unless `wait` is false, waits for a sweep on the queue and
 * writes DIR/sweep.json and DIR/sweep-timing.json.
 * @throws Error for a bad URL, a missing trace/cluster file, an unreachable Redis, or (collect)
 *   cells that are neither finished nor in the queue.
 */
export async function runQueueSweep(spec: SweepSpec, o: QueueSweepOptions): Promise<QueueSweepOutcome> {
  const target = parseQueueUrl(o.queue);
  const jobs = planJobs(spec);
  const log = o.log ?? (() => {});
  const redis = new Redis({ host: target.host, port: target.port, db: target.db, username: target.username, password: target.password, maxRetriesPerRequest: 2, lazyConnect: true });
  try {
    await redis.connect();
  } catch (e) {
    redis.disconnect();
    throw new Error(`--queue ${target.url}: cannot connect to Redis: ${(e as Error).message}`);
  }
  const queue = new Queue<CellData>(QUEUE_NAME, { connection: connectionOf(target) });
  let events: QueueEvents | undefined;
  try {
    const store = o.collect ? undefined : redis;
    const refs: { trace?: FileRef; cluster?: FileRef } = {};
    if (spec.trace) refs.trace = await fileRef(spec.trace, 'trace', store);
    if (spec.cluster) refs.cluster = await fileRef(spec.cluster, 'cluster file', store);
    const datas = jobs.map((j) => cellData(j, refs));
    const ids = datas.map(cellId);
    const wait = o.wait ?? true;
    if (wait) {
      events = new QueueEvents(QUEUE_NAME, { connection: connectionOf(target) });
      await events.waitUntilReady();
    }
    const outcomes = new Map<string, Outcome>();
    const unique = [...new Set(ids)];
    await readResults(redis, unique, outcomes);
    const alreadyDone = unique.filter((id) => outcomes.has(id)).length;
    const toAdd: { name: string; data: CellData; opts: { jobId: string; attempts: number; removeOnComplete: boolean; removeOnFail: boolean } }[] = [];
    let alreadyQueued = 0;
    let retried = 0;
    const missing: string[] = [];
    for (const id of unique) {
      if (outcomes.has(id)) continue;
      let state = await queue.getJobState(id);
      if (state === 'completed') {
        // finished but its result is gone (results hash deleted): run it again
        await (await queue.getJob(id))?.remove();
        state = 'unknown';
      }
      if (state === 'unknown') {
        if (o.collect) missing.push(id);
        else toAdd.push({ name: 'cell', data: datas[ids.indexOf(id)]!, opts: { jobId: id, attempts: 1, removeOnComplete: true, removeOnFail: false } });
      } else if (state === 'failed' && o.retryFailed) {
        await (await queue.getJob(id))?.retry('failed');
        retried++;
      } else alreadyQueued++;
    }
    if (missing.length) {
      const j = jobs[ids.indexOf(missing[0]!)]!;
      throw new Error(`--collect: ${missing.length} of ${unique.length} cells were never submitted (e.g. ${j.strategy} ${JSON.stringify(j.params)} seed ${j.seed}): run the same sweep without --collect first`);
    }
    for (let i = 0; i < toAdd.length; i += 500) await queue.addBulk(toAdd.slice(i, i + 500));
    log(`sweep: ${unique.length} cells on ${target.url} (queue ${QUEUE_NAME}): ${alreadyDone} already done, ${toAdd.length} enqueued, ${alreadyQueued} already queued${retried ? `, ${retried} failed cells retried` : ''}`);
    const base: QueueSweepOutcome = { cells: unique.length, enqueued: toAdd.length, alreadyDone, alreadyQueued, retried, ids };
    if (!wait) return base;
    if (outcomes.size < unique.length && (await queue.getWorkersCount()) === 0) log(`sweep: no worker is connected yet; start some with: kvlab worker --queue ${target.url}`);
    await waitForCells(jobs, ids, outcomes, queue, events!, redis, o);
    const timings = await readTimings(redis, ids, jobs);
    const entries = jobs.map((j, k) => entryOf(j, outcomes.get(ids[k]!)!));
    const file = writeSweepFiles(jobs[0]?.outDir ?? spec.out, entries, timings);
    return { ...base, file, entries, failed: entries.filter((e) => e.summary === null).length };
  } finally {
    await events?.close();
    await queue.close();
    redis.disconnect();
  }
}

/** The sweep.json entry of a cell from its stored outcome (same keys, same order as cellEntry). */
function entryOf(j: SweepJob, out: Outcome): SweepEntry {
  if ('error' in out) return { params: j.params, strategy: j.strategy, seed: j.seed, summary: null, error: out.error };
  const e: SweepEntry = { params: j.params, strategy: j.strategy, seed: j.seed, summary: out.summary as SweepEntry['summary'] };
  if (out.run_dir !== undefined) e.run_dir = out.run_dir;
  return e;
}

async function readResults(redis: Redis, ids: readonly string[], into: Map<string, Outcome>): Promise<void> {
  for (let i = 0; i < ids.length; i += 1000) {
    const part = ids.slice(i, i + 1000);
    const vals = await redis.hmget(RESULTS_KEY, ...part);
    vals.forEach((v, k) => {
      if (v !== null) into.set(part[k]!, JSON.parse(v) as Outcome);
    });
  }
}

async function readTimings(redis: Redis, ids: readonly string[], jobs: readonly SweepJob[]): Promise<(CellTiming | undefined)[]> {
  const out: (CellTiming | undefined)[] = [];
  for (let i = 0; i < ids.length; i += 1000) {
    const vals = await redis.hmget(TIMING_KEY, ...ids.slice(i, i + 1000));
    for (const v of vals) out.push(v === null ? undefined : (JSON.parse(v) as CellTiming));
  }
  // a cell listed twice in the grid (same input) shares its timing; label it as planned
  return out.map((t, k) => (t ? { ...t, params: jobs[k]!.params, strategy: jobs[k]!.strategy, seed: jobs[k]!.seed } : undefined));
}

/**
 * Waits until every cell has an outcome: a result in the results hash or a final failure in
 * the queue. Progress per newly finished cell; QueueEvents wake the loop, a poll every `pollMs`
 * catches anything an event did not say.
 */
async function waitForCells(jobs: readonly SweepJob[], ids: readonly string[], outcomes: Map<string, Outcome>, queue: Queue<CellData>, events: QueueEvents, redis: Redis, o: QueueSweepOptions): Promise<void> {
  const byId = new Map<string, SweepJob>();
  ids.forEach((id, k) => byId.has(id) || byId.set(id, jobs[k]!));
  const total = byId.size;
  const pending = new Set([...byId.keys()].filter((id) => !outcomes.has(id)));
  const t0 = Date.now();
  const startDone = total - pending.size;
  let failed = [...outcomes.values()].filter((x) => 'error' in x).length;
  let wake: (() => void) | undefined;
  const kick = (): void => wake?.();
  const settle = (id: string, out: Outcome, wallMs: number): void => {
    if (!pending.delete(id)) return;
    outcomes.set(id, out);
    if ('error' in out) failed++;
    const done = total - pending.size;
    const elapsedMs = Date.now() - t0;
    const rate = (done - startDone) / Math.max(1, elapsedMs);
    o.onProgress?.({ done, total, failed, elapsedMs, etaMs: rate > 0 ? pending.size / rate : NaN, last: { job: byId.get(id)!, wallMs, error: 'error' in out ? out.error : undefined } });
  };
  const onCompleted = ({ jobId, returnvalue }: { jobId: string; returnvalue: unknown }): void => {
    if (!pending.has(jobId)) return;
    void redis.hget(RESULTS_KEY, jobId).then((v) => {
      if (v !== null) settle(jobId, JSON.parse(v) as Outcome, wallOf(returnvalue));
      kick();
    });
  };
  const onFailed = ({ jobId, failedReason }: { jobId: string; failedReason: string }): void => {
    if (!pending.has(jobId)) return;
    settle(jobId, { error: failedReason }, 0);
    kick();
  };
  events.on('completed', onCompleted);
  events.on('failed', onFailed);
  try {
    while (pending.size > 0) {
      // re-scan: results that arrived without an event, failures
      const ps = [...pending];
      const found = new Map<string, Outcome>();
      await readResults(redis, ps, found);
      for (const [id, out] of found) settle(id, out, 0);
      for (const id of ps) {
        if (!pending.has(id)) continue;
        const st = await queue.getJobState(id);
        if (st === 'failed') settle(id, { error: (await queue.getJob(id))?.failedReason ?? 'failed' }, 0);
      }
      if (pending.size === 0) break;
      // sleep until the next re-scan, or until the events have settled every cell
      await new Promise<void>((r) => {
        const t = setTimeout(r, o.pollMs ?? 1000);
        wake = () => {
          if (pending.size > 0) return;
          clearTimeout(t);
          r();
        };
      });
      wake = undefined;
    }
  } finally {
    events.off('completed', onCompleted);
    events.off('failed', onFailed);
  }
}

function wallOf(rv: unknown): number {
  const x = typeof rv === 'string' ? (JSON.parse(rv) as unknown) : rv;
  return x && typeof x === 'object' && typeof (x as { wall_ms?: unknown }).wall_ms === 'number' ? (x as { wall_ms: number }).wall_ms : 0;
}
