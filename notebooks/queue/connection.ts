/**
 * Where a distributed sweep lives in Redis: the BullMQ queue (one per kvlab version, so workers
 * of another version never take its cells) and kvlab's own keys beside it.
 *
 * Keys (all in the URL's database):
 * - `bull:kvlab-sweep-<version>:*`  BullMQ's queue (jobs, wait/active/failed lists, event stream);
 * - `kvlab:sweep:results`           hash jobId -> JSON {summary, run_dir?} of every finished cell
 *                                   (written with HSETNX: a cell run twice keeps one result);
 * - `kvlab:sweep:timing`            hash jobId -> JSON CellTiming (wall ms, worker, attempts);
 * - `kvlab:blob:<sha256>`           a trace or cluster file stored once by digest.
 */
import type { ConnectionOptions } from 'bullmq';
import { KVLAB_VERSION } from '../../engine/version.js';

/** BullMQ queue name of this kvlab version's sweeps (no ":" allowed by BullMQ). */
export const QUEUE_NAME = `kvlab-sweep-${KVLAB_VERSION}`;
/** Hash of finished cells' results, keyed by job id. */
export const RESULTS_KEY = 'kvlab:sweep:results';
/** Hash of finished cells' timings, keyed by job id. */
export const TIMING_KEY = 'kvlab:sweep:timing';
/** Key of a stored file (trace, cluster) by its sha256 hex digest. */
export const blobKey = (digest: string): string => `kvlab:blob:${digest}`;

/** A parsed `--queue` URL. */
export interface QueueTarget {
  /** the URL as given (for messages). */
  url: string;
  host: string;
  port: number;
  db: number;
  username?: string;
  password?: string;
}

/**
 * Parses `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (port 6379 and db 0 by default).
 * @throws Error naming `--queue` for another scheme, a bad port or db.
 */
export function parseQueueUrl(url: string): QueueTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`--queue "${url}": expected redis://HOST:PORT/DB`);
  }
  if (u.protocol !== 'redis:') throw new Error(`--queue "${url}": expected a redis:// URL (redis://HOST:PORT/DB)`);
  if (!u.hostname) throw new Error(`--queue "${url}": no host`);
  const port = u.port ? Number(u.port) : 6379;
  const dbText = u.pathname.replace(/^\//, '');
  const db = dbText === '' ? 0 : Number(dbText);
  if (!Number.isInteger(db) || db < 0) throw new Error(`--queue "${url}": database "${dbText}" is not a non-negative integer`);
  const t: QueueTarget = { url, host: u.hostname.replace(/^\[|\]$/g, ''), port, db };
  if (u.username) t.username = decodeURIComponent(u.username);
  if (u.password) t.password = decodeURIComponent(u.password);
  return t;
}

/**
 * BullMQ connection options for a target. Workers and QueueEvents block on Redis, so requests
 * are retried forever (`maxRetriesPerRequest: null`, as BullMQ requires for them).
 */
export function connectionOf(t: QueueTarget): ConnectionOptions {
  return { host: t.host, port: t.port, db: t.db, username: t.username, password: t.password, maxRetriesPerRequest: null };
}
