/**
 * One sweep cell as a queue job: its data (the simulator options plus digests of the files it
 * reads), its job id (a hash of that full input, so submitting the same cell twice is a no-op),
 * and the files it needs, stored once in Redis by digest so workers on other hosts can read them.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { extname, join, relative, resolve } from 'node:path';
import type { Redis } from 'ioredis';
import { KVLAB_VERSION } from '../../engine/version.js';
import type { SweepJob } from '../sweep.js';
import { blobKey } from './connection.js';

/** Files above this size are not stored in Redis (its values are limited to 512 MB); workers must then see the same path. */
export const MAX_BLOB_BYTES = 256 * 1024 * 1024;

/** A file (or NQ directory) a cell reads, identified by content. */
export interface FileRef {
  /** the path as the submitter gave it (resolved on the submitting host). */
  path: string;
  /** sha256 hex of the file bytes (directory: of its sorted file list and their digests). */
  digest: string;
  /** file extension including the dot (format detection uses it); '' for a directory. */
  ext: string;
  kind: 'file' | 'dir';
  /** stored in Redis under kvlab:blob:<digest>. */
  stored: boolean;
}

/**
 * The data of one cell's job: the planned job's fields (params/strategy/seed are labels for logs:
 * sweep.json takes them from the submitter's plan; `sim.trace` / `sim.cluster` are the
 * submitter's paths, see `trace` / `cluster`; `outDir` is on the submitting host).
 */
export interface CellData extends Pick<SweepJob, 'params' | 'strategy' | 'seed' | 'sim' | 'traceLabel' | 'outDir'> {
  kvlab_version: string;
  trace?: FileRef;
  cluster?: FileRef;
}

/** JSON with object keys sorted at every level (stable input for hashing). */
export function canonicalJson(x: unknown): string {
  return JSON.stringify(x, (_k, v: unknown) => {
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      return Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    }
    return v;
  });
}

/**
 * The job id of a cell: "cell-" + sha256 of its full input — kvlab version, simulator options
 * (strategy, seed, workload options, overrides, instances, time scale, the run directory when
 * runs are kept), the trace's path as given and its content digest, the cluster file's digest.
 * Two cells with equal ids produce equal sweep.json entries.
 */
export function cellId(d: CellData): string {
  const input = {
    kvlab_version: d.kvlab_version,
    sim: d.sim,
    trace_label: d.traceLabel ?? null,
    trace_digest: d.trace?.digest ?? null,
    cluster_digest: d.cluster?.digest ?? null,
    out_dir: d.sim.out ? d.outDir : null,
  };
  return `cell-${createHash('sha256').update(canonicalJson(input)).digest('hex')}`;
}

/** sha256 hex of a file, streamed. */
export function fileDigest(path: string): Promise<string> {
  return new Promise((ok, fail) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (c) => h.update(c))
      .on('error', fail)
      .on('end', () => ok(h.digest('hex')));
  });
}

/** sha256 hex of a directory: its regular files (recursively, sorted relative paths) with their digests. */
export async function dirDigest(dir: string): Promise<string> {
  const files: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) files.push(p);
    }
  };
  walk(dir);
  files.sort();
  const h = createHash('sha256');
  for (const f of files) h.update(`${relative(dir, f).split('\\').join('/')}\0${await fileDigest(f)}\n`);
  return h.digest('hex');
}

const digestMemo = new Map<string, { size: number; mtimeMs: number; digest: string }>();

/** Digest of a file or directory, memoised per path while its size and mtime stay the same. */
export async function pathDigest(path: string): Promise<{ digest: string; kind: 'file' | 'dir'; size: number }> {
  const st = statSync(path);
  const kind = st.isDirectory() ? 'dir' : 'file';
  const m = digestMemo.get(path);
  if (m && m.size === st.size && m.mtimeMs === st.mtimeMs) return { digest: m.digest, kind, size: st.size };
  const digest = kind === 'dir' ? await dirDigest(path) : await fileDigest(path);
  digestMemo.set(path, { size: st.size, mtimeMs: st.mtimeMs, digest });
  return { digest, kind, size: st.size };
}

/**
 * Describes a file a cell reads and, when `redis` is given and the file is at most
 * MAX_BLOB_BYTES, stores it once under kvlab:blob:<digest> (SET NX: a second submit sends nothing).
 * @throws Error naming `what` and the path when it does not exist.
 */
export async function fileRef(path: string, what: string, redis?: Redis): Promise<FileRef> {
  const abs = resolve(path);
  if (!existsSync(abs)) throw new Error(`${what} not found: ${path}`);
  const { digest, kind, size } = await pathDigest(abs);
  let stored = false;
  if (redis && kind === 'file' && size <= MAX_BLOB_BYTES) {
    if ((await redis.exists(blobKey(digest))) === 0) {
      await redis.set(blobKey(digest), readFileSync(abs), 'NX');
    }
    stored = true;
  }
  return { path: abs, digest, ext: kind === 'file' ? extname(abs) : '', kind, stored };
}

/** The queue data of a planned sweep job (trace and cluster described by `refs`). */
export function cellData(job: SweepJob, refs: { trace?: FileRef; cluster?: FileRef }): CellData {
  const d: CellData = { kvlab_version: KVLAB_VERSION, params: job.params, strategy: job.strategy, seed: job.seed, sim: job.sim, outDir: job.outDir };
  if (job.traceLabel !== undefined) d.traceLabel = job.traceLabel;
  if (refs.trace) d.trace = refs.trace;
  if (refs.cluster) d.cluster = refs.cluster;
  return d;
}

/** Where workers keep files fetched from Redis: $TMPDIR/kvlab-blobs/<digest><ext>. */
export function blobCacheDir(): string {
  return join(tmpdir(), 'kvlab-blobs');
}

/**
 * A local path holding the content of `ref`, for a worker: the submitter's path when it exists
 * here with the same digest (a shared filesystem), else the copy fetched from Redis into
 * `cacheDir` (verified, written atomically, reused by later cells; `log` hears of each fetch).
 * @throws Error naming the file, its digest and this host when neither is available.
 */
export async function materialize(ref: FileRef, what: string, redis: Redis, cacheDir = blobCacheDir(), log?: (line: string) => void): Promise<string> {
  if (existsSync(ref.path)) {
    const local = await pathDigest(ref.path);
    if (local.digest === ref.digest) return ref.path;
  }
  const cached = join(cacheDir, `${ref.digest}${ref.ext}`);
  if (existsSync(cached)) return cached;
  if (!ref.stored) {
    throw new Error(`${what} ${ref.path} (sha256 ${ref.digest.slice(0, 12)}…) is not on ${hostname()} and was too large to store in Redis: put it on a path every worker can read`);
  }
  const buf = await redis.getBuffer(blobKey(ref.digest));
  if (!buf) throw new Error(`${what} ${ref.path} (sha256 ${ref.digest.slice(0, 12)}…) is neither on ${hostname()} nor in Redis (key ${blobKey(ref.digest)} missing)`);
  const got = createHash('sha256').update(buf).digest('hex');
  if (got !== ref.digest) throw new Error(`${what} ${ref.path}: the copy in Redis has sha256 ${got.slice(0, 12)}…, expected ${ref.digest.slice(0, 12)}…`);
  mkdirSync(cacheDir, { recursive: true });
  const tmp = `${cached}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, buf);
  renameSync(tmp, cached);
  log?.(`${what} ${ref.path} fetched from Redis (sha256 ${ref.digest.slice(0, 12)}…, ${buf.length} bytes) into ${cached}`);
  return cached;
}
