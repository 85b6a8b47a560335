/**
 * Helpers shared by the trace loaders: streaming line reader, option checks, final sort.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { LoadOptions, TraceRequest } from './schema.js';

/** Validated loader options with defaults applied. */
export interface ResolvedLoadOptions {
  timeScale: number;
  skipBadLines: boolean;
  /** Infinity when no limit. */
  limit: number;
}

/**
 * Applies defaults and validates loader options.
 * @throws RangeError when timeScale is negative/non-finite or limit is not a positive integer.
 */
export function resolveLoadOptions(opts: LoadOptions = {}): ResolvedLoadOptions {
  const timeScale = opts.timeScale ?? 1;
  if (typeof timeScale !== 'number' || !Number.isFinite(timeScale) || timeScale < 0) {
    throw new RangeError(`timeScale must be a finite number >= 0, got ${String(opts.timeScale)}`);
  }
  let limit = Infinity;
  if (opts.limit !== undefined) {
    if (!Number.isSafeInteger(opts.limit) || opts.limit < 1) {
      throw new RangeError(`limit must be a positive integer, got ${String(opts.limit)}`);
    }
    limit = opts.limit;
  }
  return { timeScale, skipBadLines: opts.skipBadLines ?? false, limit };
}

/**
 * Throws a plain Error naming `path` when it does not exist or is not a regular file.
 */
export async function assertFile(path: string): Promise<void> {
  let isFile: boolean;
  try {
    isFile = (await stat(path)).isFile();
  } catch {
    throw new Error(`trace file not found: ${path}`);
  }
  if (!isFile) throw new Error(`not a file: ${path}`);
}

/**
 * Streams a UTF-8 text file line by line (1 MiB chunks, no whole-file read), calling
 * `onLine(text, lineNo)` with 1-based line numbers; a trailing "\r" and a leading BOM are
 * removed. Returning `false` from `onLine` stops reading early.
 * @throws whatever `onLine` throws, and I/O errors of the read stream.
 */
export async function forEachLine(
  path: string,
  onLine: (text: string, lineNo: number) => boolean | void,
): Promise<void> {
  const stream = createReadStream(path, { encoding: 'utf8', highWaterMark: 1 << 20 });
  let rest = '';
  let lineNo = 0;
  let first = true;
  try {
    for await (const chunk of stream as AsyncIterable<string>) {
      let buf = rest.length > 0 ? rest + chunk : chunk;
      if (first) {
        if (buf.charCodeAt(0) === 0xfeff) buf = buf.slice(1);
        first = false;
      }
      let start = 0;
      let nl: number;
      while ((nl = buf.indexOf('\n', start)) !== -1) {
        const end = nl > start && buf.charCodeAt(nl - 1) === 13 ? nl - 1 : nl;
        lineNo++;
        if (onLine(buf.slice(start, end), lineNo) === false) return;
        start = nl + 1;
      }
      rest = buf.slice(start);
    }
    if (rest.length > 0) {
      lineNo++;
      const end = rest.charCodeAt(rest.length - 1) === 13 ? rest.length - 1 : rest.length;
      onLine(rest.slice(0, end), lineNo);
    }
  } finally {
    stream.destroy();
  }
}

/**
 * Stably sorts requests by `arrivalMs` in place (ties keep file order) and returns how many
 * arrived earlier than some request before them in the input order (0 = already sorted).
 */
export function sortByArrival(requests: TraceRequest[]): number {
  let reordered = 0;
  let maxSeen = -Infinity;
  for (const r of requests) {
    if (r.arrivalMs < maxSeen) reordered++;
    else maxSeen = r.arrivalMs;
  }
  // Array.prototype.sort is stable (ES2019), so ties keep their input order.
  if (reordered > 0) requests.sort((a, b) => a.arrivalMs - b.arrivalMs);
  return reordered;
}

/** File name without directory and (last) extension. */
export function baseName(path: string): string {
  const b = path.replace(/[\\/]+$/, '').split(/[\\/]/).pop() ?? path;
  const dot = b.lastIndexOf('.');
  return dot > 0 ? b.slice(0, dot) : b;
}
