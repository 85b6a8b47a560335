/**
 * Errors raised by the trace loaders, and the bookkeeping of skipped bad lines.
 */

/**
 * A bad record in a trace file. `message` is `FILE:LINE: what is wrong`, e.g.
 * `conv.jsonl:17: hash_ids has 3 ids but ceil(input_length/512) = 4`.
 */
export class TraceError extends Error {
  /** Path of the trace file, as given to the loader. */
  readonly file: string;
  /** 1-based line number of the bad record (its last line for a multi-line CSV record). */
  readonly line: number;
  /** The reason alone, without the `FILE:LINE: ` prefix. */
  readonly reason: string;

  constructor(file: string, line: number, reason: string) {
    super(`${file}:${line}: ${reason}`);
    this.name = 'TraceError';
    this.file = file;
    this.line = line;
    this.reason = reason;
  }
}

/** How many skip reasons a loader keeps in `meta.skippedReasons`. */
export const MAX_SKIPPED_REASONS = 10;

/**
 * Collects bad records for one file: throws a TraceError on the first one unless `skip` is set,
 * in which case it counts them and keeps the first MAX_SKIPPED_REASONS messages.
 */
export class BadLines {
  skipped = 0;
  readonly reasons: string[] = [];

  constructor(
    readonly file: string,
    readonly skip: boolean,
  ) {}

  /** Reports a bad record at 1-based `line`. Throws TraceError when not skipping. */
  report(line: number, reason: string): void {
    const err = new TraceError(this.file, line, reason);
    if (!this.skip) throw err;
    this.skipped++;
    if (this.reasons.length < MAX_SKIPPED_REASONS) this.reasons.push(err.message);
  }
}

/** Short printable form of a JSON/CSV value for error messages (at most ~40 chars). */
export function showValue(v: unknown): string {
  let s: string;
  if (typeof v === 'number' || typeof v === 'bigint' || v === undefined) s = String(v);
  else {
    try {
      s = JSON.stringify(v) ?? String(v);
    } catch {
      s = String(v);
    }
  }
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

/** JSON type name of a value: null, array, object, string, number, boolean. */
export function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}
