/**
 * CSV trace loader (csv-parse, streaming). Two column layouts, recognised from the header:
 *
 *   Vidur / Splitwise:  arrived_at (s since trace start), num_prefill_tokens, num_decode_tokens
 *   Azure LLM traces:   TIMESTAMP (date-time string, UTC unless it has an offset),
 *                       ContextTokens, GeneratedTokens
 *
 * Other columns are ignored. A column `request_id` (or `id`), when present, gives the ids.
 * CSV traces carry no prefix information: `blocks: []`, blockSize 16, no knowledge.
 */
import { createReadStream } from 'node:fs';
import { parse } from 'csv-parse';
import { BadLines, TraceError, showValue } from './errors.js';
import { assertFile, baseName, resolveLoadOptions, sortByArrival } from './common.js';
import type { LoadOptions, LoadedTrace, TraceRequest } from './schema.js';

/** Nominal block size reported for CSV traces (they have no block ids), tokens. */
export const CSV_BLOCK_SIZE = 16;

interface Layout {
  kind: 'vidur' | 'azure';
  time: string;
  input: string;
  output: string;
}

const LAYOUTS: Layout[] = [
  { kind: 'vidur', time: 'arrived_at', input: 'num_prefill_tokens', output: 'num_decode_tokens' },
  { kind: 'azure', time: 'TIMESTAMP', input: 'ContextTokens', output: 'GeneratedTokens' },
];

const DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?\s*(Z|[+-]\d{2}:?\d{2})?$/i;

/**
 * Parses an Azure-trace date-time ("2023-11-16 18:15:46.6805900", ISO "T" and a zone offset
 * also accepted; no zone = UTC) into ms since the Unix epoch, keeping sub-ms digits.
 * Returns NaN when the string is not such a date-time.
 */
export function parseDateTimeMs(s: string): number {
  const m = DATE_TIME.exec(s.trim());
  if (m === null) return NaN;
  const [, y, mo, d, h, mi, sec, frac, zone] = m;
  const month = Number(mo);
  const day = Number(d);
  const hour = Number(h);
  const min = Number(mi);
  const second = Number(sec);
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || second > 60) return NaN;
  let ms = Date.UTC(Number(y), month - 1, day, hour, min, second);
  if (frac !== undefined) ms += Number(`0.${frac}`) * 1000;
  if (zone !== undefined && zone.toUpperCase() !== 'Z') {
    const sign = zone[0] === '-' ? -1 : 1;
    const digits = zone.slice(1).replace(':', '');
    ms -= sign * (Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2))) * 60_000;
  }
  return ms;
}

function positiveInt(name: string, s: string): number | string {
  const v = s.trim() === '' ? NaN : Number(s);
  if (!Number.isSafeInteger(v) || v < 1) return `column ${name} must be a positive integer, got ${showValue(s)}`;
  return v;
}

/**
 * Loads a Vidur/Splitwise or Azure CSV trace.
 *
 * Arrival: `arrived_at` seconds × 1000 (rounded to µs), or for Azure the TIMESTAMP minus the
 * first data row's TIMESTAMP in ms (if some row is earlier than the first, all arrivals are
 * shifted so the earliest is 0); then × timeScale. Ids: `request_id`/`id` column or `r<i>` with
 * i the 0-based index among the file's parsed data records (bad values included, CSV syntax
 * errors not). Result is stably sorted by arrival.
 *
 * @throws TraceError (`FILE:LINE: reason`, LINE = 1-based CSV line: the record's last line; for an
 *   unclosed quote, the line where it opened) for an unrecognised header, a CSV syntax error, a
 *   wrong column count or a bad value, unless `skipBadLines` (header errors always throw). When
 *   skipping, parsing resumes on the line after a syntax error.
 * @throws Error when the file does not exist; RangeError for invalid options.
 */
export async function loadCsv(file: string, opts: LoadOptions = {}): Promise<LoadedTrace> {
  const { timeScale, skipBadLines, limit } = resolveLoadOptions(opts);
  await assertFile(file);
  const bad = new BadLines(file, skipBadLines);
  let syntaxSkipped = 0;
  const requests: TraceRequest[] = [];
  let layout: Layout | null = null;
  let width = 0;
  let tIdx = -1;
  let inIdx = -1;
  let outIdx = -1;
  let idIdx = -1;
  let idName = '';
  let records = 0;
  let azureOrigin = NaN;
  const seenIds = new Set<string>();

  // One csv-parse pass from byte `fromByte` (line `lineBase` + 1). A CSV syntax error ends the
  // pass; when skipping, the next pass starts after the bad record (csv-parse cannot resync by
  // itself: after a quote error it would swallow the rest of the file).
  let fromByte = 0;
  let lineBase = 0;
  let lastLine = 0; // last line of the last record parsed
  const handle = (item: { record: string[]; info: { lines: number } }): boolean => {
    const { record, info } = item;
    const line = lineBase + info.lines;
    lastLine = line;
    if (record.length === 1 && record[0]!.trim() === '') return true; // whitespace-only line
    if (layout === null) {
      const cols = record.map((c) => c.trim());
      layout = LAYOUTS.find((l) => cols.includes(l.time) && cols.includes(l.input) && cols.includes(l.output)) ?? null;
      if (layout === null) {
        throw new TraceError(
          file,
          line,
          `unrecognised CSV header ${showValue(cols.join(','))}: expected columns ` +
            LAYOUTS.map((l) => `${l.time},${l.input},${l.output}`).join(' or '),
        );
      }
      width = cols.length;
      tIdx = cols.indexOf(layout.time);
      inIdx = cols.indexOf(layout.input);
      outIdx = cols.indexOf(layout.output);
      idName = cols.includes('request_id') ? 'request_id' : 'id';
      idIdx = cols.indexOf(idName);
      return true;
    }
    const index = records++;
    const r = toRequest(record, line, index);
    if (typeof r === 'string') bad.report(line, r);
    else requests.push(r);
    return requests.length < limit;
  };

  for (;;) {
    const syntax = await parsePass(file, fromByte, handle);
    if (syntax === null) break;
    const at = await locateBadRecord(file, syntax.code, Math.max(lastLine, lineBase), lineBase + (syntax.lines ?? 1));
    const reason = `CSV syntax error: ${syntax.message.replace(/ at line \d+/g, '')}`;
    if (layout === null) throw new TraceError(file, at.line, reason);
    bad.report(at.line, reason); // throws unless skipping
    syntaxSkipped++;
    if (at.nextByte === null) break;
    fromByte = at.nextByte;
    lineBase = at.line;
  }
  if (layout === null) throw new TraceError(file, 1, 'empty CSV: no header row');

  function toRequest(rec: string[], line: number, index: number): TraceRequest | string {
    if (rec.length !== width) return `expected ${width} columns as in the header, got ${rec.length}`;
    const l = layout!;
    const ts = rec[tIdx]!;
    let arrivalMs: number;
    if (l.kind === 'vidur') {
      const s = ts.trim() === '' ? NaN : Number(ts);
      if (!Number.isFinite(s) || s < 0) return `column ${l.time} must be a number of seconds >= 0, got ${showValue(ts)}`;
      arrivalMs = Math.round(s * 1e6) / 1e3;
    } else {
      const abs = parseDateTimeMs(ts);
      if (!Number.isFinite(abs)) return `column ${l.time} must be a date-time like 2023-11-16 18:15:46.68, got ${showValue(ts)}`;
      if (Number.isNaN(azureOrigin)) azureOrigin = abs;
      arrivalMs = Math.round((abs - azureOrigin) * 1e3) / 1e3;
    }
    const input = positiveInt(l.input, rec[inIdx]!);
    if (typeof input === 'string') return input;
    const output = positiveInt(l.output, rec[outIdx]!);
    if (typeof output === 'string') return output;
    let id = `r${index}`;
    if (idIdx >= 0) {
      id = rec[idIdx]!.trim();
      if (id === '') return `column ${idName} is empty`;
      if (seenIds.has(id)) return `duplicate id ${JSON.stringify(id)}`;
      seenIds.add(id);
    }
    return {
      id,
      arrivalMs,
      inputTokens: input,
      outputTokens: output,
      blockSize: CSV_BLOCK_SIZE,
      blocks: [],
      knowledge: [],
      knowledgeTokens: 0,
      source: { file, line },
    };
  }

  let min = Infinity;
  for (const r of requests) if (r.arrivalMs < min) min = r.arrivalMs;
  const shift = min < 0 ? -min : 0;
  if (shift !== 0 || timeScale !== 1) {
    for (const r of requests) r.arrivalMs = (r.arrivalMs + shift) * timeScale;
  }
  const reordered = sortByArrival(requests);
  return {
    requests,
    meta: {
      name: baseName(file),
      file,
      format: 'csv',
      blockSize: CSV_BLOCK_SIZE,
      lines: records + syntaxSkipped,
      skipped: bad.skipped,
      skippedReasons: bad.reasons,
      reordered,
    },
  };
}

type CsvSyntaxError = Error & { code: string; lines?: number };

/**
 * Runs csv-parse over `file` from byte `fromByte`, calling `onRecord` for each record in order
 * (return false to stop). Resolves with the CSV syntax error that ended the pass, or null at the
 * end (or stop). Rejects with what `onRecord` throws and with I/O errors. Records parsed before
 * a syntax error are all delivered (events, not the async iterator, which drops buffered ones).
 */
function parsePass(
  file: string,
  fromByte: number,
  onRecord: (item: { record: string[]; info: { lines: number } }) => boolean,
): Promise<CsvSyntaxError | null> {
  return new Promise((resolve, reject) => {
    const input = createReadStream(file, { start: fromByte });
    const parser = parse({
      info: true,
      bom: fromByte === 0,
      relax_column_count: true,
      skip_empty_lines: true,
      record_delimiter: ['\r\n', '\n'],
    });
    let finished = false;
    const finish = (settle: () => void) => {
      if (finished) return;
      finished = true;
      input.destroy();
      parser.destroy();
      settle();
    };
    parser.on('data', (item: { record: string[]; info: { lines: number } }) => {
      if (finished) return;
      try {
        if (!onRecord(item)) finish(() => resolve(null));
      } catch (e) {
        finish(() => reject(e));
      }
    });
    parser.on('error', (e: Error & { code?: unknown }) => {
      const isCsv = typeof e.code === 'string' && e.code.startsWith('CSV_');
      finish(() => (isCsv ? resolve(e as CsvSyntaxError) : reject(e)));
    });
    parser.on('end', () => finish(() => resolve(null)));
    input.on('error', (e) => finish(() => reject(e)));
    input.pipe(parser);
  });
}

/**
 * Finds the bad record of a CSV syntax error: the error's line, except for an unclosed quote,
 * where it is the first line after `after` holding a double quote (where the field opened).
 * Returns that 1-based line and the byte offset of the line following it (null at EOF).
 */
async function locateBadRecord(
  file: string,
  code: string,
  after: number,
  errLine: number,
): Promise<{ line: number; nextByte: number | null }> {
  // target < 0: still looking for the line that opened an unclosed quote
  let target = code === 'CSV_QUOTE_NOT_CLOSED' ? -1 : Math.max(errLine, after + 1);
  let line = 1;
  let pos = 0;
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i]!;
      if (target < 0 && c === 34 /* " */ && line > after) target = line;
      if (c === 10 /* \n */) {
        if (target < 0 && line >= errLine) target = line;
        if (line === target) return { line, nextByte: pos + i + 1 };
        line++;
      }
    }
    pos += chunk.length;
  }
  return { line: target < 0 ? line : target, nextByte: null };
}
