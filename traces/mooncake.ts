/**
 * Mooncake JSONL trace loader (FAST'25 release format).
 *
 * One JSON object per line:
 *   timestamp      arrival, ms since trace start (alias created_time), finite, >= 0
 *   input_length   prompt tokens (alias input_tokens), positive integer
 *   output_length  output tokens (alias output_tokens), positive integer
 *   hash_ids       chained prefix-block ids, one per blockSize-token block (last may be partial):
 *                  length === ceil(input_length / blockSize), each a safe integer >= 0
 *   id             optional request id (string or number); default r<record index>
 * Blank lines are skipped silently.
 */
import { BadLines, showValue, typeName } from './errors.js';
import { assertFile, baseName, forEachLine, resolveLoadOptions, sortByArrival } from './common.js';
import type { LoadOptions, LoadedTrace, TraceRequest } from './schema.js';

/** Block size of the Mooncake traces' hash_ids, tokens. */
export const MOONCAKE_BLOCK_SIZE = 512;

/** Options of {@link loadMooncake}. */
export interface MooncakeOptions extends LoadOptions {
  /** Tokens per hash_ids block (default 512). */
  blockSize?: number;
}

function pick(o: Record<string, unknown>, name: string, alias: string): [string, unknown] {
  if (o[name] !== undefined) return [name, o[name]];
  if (o[alias] !== undefined) return [alias, o[alias]];
  return [name, undefined];
}

function checkNumber(key: string, alias: string, v: unknown): string | null {
  if (v === undefined) return `missing field "${key}" (or "${alias}")`;
  if (typeof v !== 'number') return `"${key}" must be a number, got ${typeName(v)} ${showValue(v)}`;
  if (!Number.isFinite(v)) return `"${key}" must be finite, got ${showValue(v)}`;
  return null;
}

function checkLength(key: string, alias: string, v: unknown): string | null {
  const bad = checkNumber(key, alias, v);
  if (bad !== null) return bad;
  if (!Number.isSafeInteger(v) || (v as number) < 1) {
    return `"${key}" must be a positive integer, got ${showValue(v)}`;
  }
  return null;
}

/**
 * Loads a Mooncake JSONL trace, streaming it line by line.
 *
 * Returns requests with `blocks = hash_ids`, `blockSize` 512 (or `opts.blockSize`),
 * `arrivalMs = timestamp × timeScale`, no knowledge, stably sorted by arrival. Ids are the
 * record's `id` when present, else `r<i>` with i the 0-based index of the non-blank line in the
 * file (bad lines included, so skipping one does not shift the others' ids).
 *
 * @throws TraceError (`FILE:LINE: reason`) on the first bad line unless `skipBadLines`.
 * @throws Error when the file does not exist; RangeError for invalid options.
 */
export async function loadMooncake(file: string, opts: MooncakeOptions = {}): Promise<LoadedTrace> {
  const { timeScale, skipBadLines, limit } = resolveLoadOptions(opts);
  const blockSize = opts.blockSize ?? MOONCAKE_BLOCK_SIZE;
  if (!Number.isSafeInteger(blockSize) || blockSize < 1) {
    throw new RangeError(`blockSize must be a positive integer, got ${String(opts.blockSize)}`);
  }
  await assertFile(file);
  const bad = new BadLines(file, skipBadLines);
  const requests: TraceRequest[] = [];
  const seenIds = new Set<string>();
  let records = 0;

  const parse = (text: string, line: number, index: number): TraceRequest | string => {
    let obj: unknown;
    try {
      obj = JSON.parse(text);
    } catch (e) {
      return `invalid JSON (${(e as Error).message})`;
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
      return `expected a JSON object, got ${typeName(obj)}`;
    }
    const o = obj as Record<string, unknown>;
    const [tsKey, ts] = pick(o, 'timestamp', 'created_time');
    let why = checkNumber(tsKey, 'created_time', ts);
    if (why !== null) return why;
    if ((ts as number) < 0) return `"${tsKey}" must be >= 0, got ${showValue(ts)}`;
    const [inKey, input] = pick(o, 'input_length', 'input_tokens');
    why = checkLength(inKey, 'input_tokens', input);
    if (why !== null) return why;
    const [outKey, output] = pick(o, 'output_length', 'output_tokens');
    why = checkLength(outKey, 'output_tokens', output);
    if (why !== null) return why;
    const ids = o.hash_ids;
    if (ids === undefined) return 'missing field "hash_ids"';
    if (!Array.isArray(ids)) return `"hash_ids" must be an array, got ${typeName(ids)}`;
    const inputTokens = input as number;
    const want = Math.ceil(inputTokens / blockSize);
    if (ids.length !== want) {
      return `hash_ids has ${ids.length} ids but ceil(${inKey}/${blockSize}) = ${want}`;
    }
    for (let i = 0; i < ids.length; i++) {
      const h: unknown = ids[i];
      if (!Number.isSafeInteger(h) || (h as number) < 0) {
        return `hash_ids[${i}] must be a non-negative integer < 2^53, got ${showValue(h)}`;
      }
    }
    let id = `r${index}`;
    if (o.id !== undefined) {
      if (typeof o.id !== 'string' && typeof o.id !== 'number') {
        return `"id" must be a string or number, got ${typeName(o.id)}`;
      }
      id = String(o.id);
      if (seenIds.has(id)) return `duplicate id ${JSON.stringify(id)}`;
      seenIds.add(id);
    }
    return {
      id,
      arrivalMs: (ts as number) * timeScale,
      inputTokens,
      outputTokens: output as number,
      blockSize,
      blocks: ids as number[],
      knowledge: [],
      knowledgeTokens: 0,
      source: { file, line },
    };
  };

  await forEachLine(file, (text, line) => {
    if (text.length === 0 || (text.charCodeAt(0) !== 123 && text.trim().length === 0)) return true;
    const index = records++;
    const r = parse(text, line, index);
    if (typeof r === 'string') bad.report(line, r);
    else requests.push(r);
    return requests.length < limit;
  });

  const reordered = sortByArrival(requests);
  return {
    requests,
    meta: {
      name: baseName(file),
      file,
      format: 'mooncake',
      blockSize,
      lines: records,
      skipped: bad.skipped,
      skippedReasons: bad.reasons,
      reordered,
    },
  };
}
