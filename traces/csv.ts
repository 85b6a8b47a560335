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
 * @throws TraceError (`FILE:LINE: reason`, LINE = 1-based CSV line, the record's last line) for an
 *   unrecognised header, a CSV syntax error, a wrong column count or a bad value, unless
 *   `skipBadLines` (header errors always throw).
 * @throws Error when the file does not exist; RangeError for invalid options.
 */
export async function loadCsv(file: string, opts: LoadOptions = {}): Promise<LoadedTrace> {
  const { timeScale, skipBadLines, limit } = resolveLoadOptions(opts);
  await assertFile(file);
  const bad = new BadLines(file, skipBadLines);
  const parser = createReadStream(file).pipe(
    parse({
      info: true,
      bom: true,
      relax_column_count: true,
      skip_empty_lines: true,
      record_delimiter: ['\r\n', '\n'],
      skip_records_with_error: skipBadLines,
    }),
  );
  let syntaxSkipped = 0;
  parser.on('skip', (err: Error & { lines?: number }) => {
    syntaxSkipped++;
    bad.report(err.lines ?? 0, `CSV syntax error: ${err.message}`);
  });

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

  try {
    for await (const item of parser as AsyncIterable<{ record: string[]; info: { lines: number } }>) {
      const { record, info } = item;
      const line = info.lines;
      if (record.length === 1 && record[0]!.trim() === '') continue; // whitespace-only line
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
        continue;
      }
      const index = records++;
      const r = toRequest(record, line, index);
      if (typeof r === 'string') bad.report(line, r);
      else requests.push(r);
      if (requests.length >= limit) break;
    }
  } catch (e) {
    if (e instanceof TraceError) throw e;
    const ce = e as Error & { lines?: number; code?: string };
    if (typeof ce.code === 'string' && ce.code.startsWith('CSV_')) {
      throw new TraceError(file, ce.lines ?? 0, `CSV syntax error: ${ce.message}`);
    }
    throw e;
  } finally {
    parser.destroy();
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
