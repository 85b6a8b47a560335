import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadCsv, parseDateTimeMs } from '../traces/csv.js';
import { TraceError } from '../traces/errors.js';
import { fixtures, tempFile } from './fixtures/traces/helpers.js';

const HEADER = 'arrived_at,num_prefill_tokens,num_decode_tokens';

async function failure(text: string, line: number): Promise<TraceError> {
  const file = tempFile('bad.csv', text);
  const err = await loadCsv(file).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TraceError);
  const te = err as TraceError;
  expect(te.file).toBe(file);
  expect(te.line).toBe(line);
  expect(te.message.startsWith(`${file}:${line}: `)).toBe(true);
  return te;
}

describe('loadCsv: malformed rows', () => {
  const rows: [string, string, string][] = [
    ['too few columns', '1.0,200', 'expected 3 columns as in the header, got 2'],
    ['too many columns', '1.0,200,5,9', 'expected 3 columns as in the header, got 4'],
    ['time not a number', 'abc,200,5', 'column arrived_at must be a number of seconds >= 0, got "abc"'],
    ['time empty', ',200,5', 'column arrived_at must be a number of seconds >= 0, got ""'],
    ['time negative', '-1,200,5', 'column arrived_at must be a number of seconds >= 0, got "-1"'],
    ['time NaN', 'NaN,200,5', 'column arrived_at must be a number of seconds >= 0, got "NaN"'],
    ['time Infinity', 'Infinity,200,5', 'column arrived_at must be a number of seconds >= 0, got "Infinity"'],
    ['prefill non-integer', '1.0,200.5,5', 'column num_prefill_tokens must be a positive integer, got "200.5"'],
    ['prefill zero', '1.0,0,5', 'column num_prefill_tokens must be a positive integer, got "0"'],
    ['prefill empty', '1.0,,5', 'column num_prefill_tokens must be a positive integer, got ""'],
    ['decode negative', '1.0,200,-5', 'column num_decode_tokens must be a positive integer, got "-5"'],
    ['decode text', '1.0,200,five', 'column num_decode_tokens must be a positive integer, got "five"'],
  ];
  it.each(rows)('%s', async (_name, row, reason) => {
    const err = await failure(`${HEADER}\n0.5,100,4\n${row}\n2.0,300,6\n`, 3);
    expect(err.reason).toBe(reason);
  });

  it('CSV syntax error (bad closing quote) names the line', async () => {
    const err = await failure(`${HEADER}\n0.5,100,4\n"1.0"x,200,5\n`, 3);
    expect(err.reason).toMatch(/^CSV syntax error: Invalid Closing Quote: got "x" instead of delimiter/);
  });

  it('CSV syntax error (unclosed quote) names the line', async () => {
    const err = await failure(`${HEADER}\n0.5,100,4\n\n"1.0,200,5\n2.0,300,6\n`, 4);
    expect(err.reason).toBe('CSV syntax error: Quote Not Closed: the parsing is finished with an opening quote');
  });

  it('unrecognised header', async () => {
    const err = await failure('time,in,out\n1,2,3\n', 1);
    expect(err.reason).toBe(
      'unrecognised CSV header "time,in,out": expected columns arrived_at,num_prefill_tokens,num_decode_tokens or TIMESTAMP,ContextTokens,GeneratedTokens',
    );
  });

  it('empty file', async () => {
    const err = await failure('', 1);
    expect(err.reason).toBe('empty CSV: no header row');
  });

  it('bad Azure TIMESTAMP', async () => {
    const err = await failure('TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,2\nyesterday,10,2\n', 3);
    expect(err.reason).toBe('column TIMESTAMP must be a date-time like 2023-11-16 18:15:46.68, got "yesterday"');
  });

  it('line numbers count blank lines, CRLF and multi-line quoted fields', async () => {
    const text = `${HEADER},note\r\n0.5,100,4,"two\nlines"\r\n\r\n1.0,200,0,x\r\n`;
    const err = await failure(text, 5);
    expect(err.reason).toBe('column num_decode_tokens must be a positive integer, got "0"');
  });
});

describe('loadCsv: skipBadLines', () => {
  it('skips and counts bad rows, keeping the good ones', async () => {
    const text = [HEADER, '0.5,100,4', '1.0,200', 'x,1,1', '2.0,300,6', '3.0,400,7,8'].join('\n');
    const file = tempFile('skip.csv', text);
    const t = await loadCsv(file, { skipBadLines: true });
    expect(t.meta.skipped).toBe(3);
    expect(t.meta.lines).toBe(5);
    expect(t.requests.map((r) => [r.id, r.inputTokens, r.source?.line])).toEqual([
      ['r0', 100, 2],
      ['r3', 300, 5],
    ]);
    expect(t.meta.skippedReasons).toEqual([
      `${file}:3: expected 3 columns as in the header, got 2`,
      `${file}:4: column arrived_at must be a number of seconds >= 0, got "x"`,
      `${file}:6: expected 3 columns as in the header, got 4`,
    ]);
  });

  it('skips CSV syntax errors and resumes on the next line', async () => {
    const text = [HEADER, '0.5,100,4', '"1.0"x,1,1', '1.0,200,5', '', '2.0,"x,1', '3.0,300,6', '4.0,400,7'].join('\n');
    const file = tempFile('q.csv', text);
    const t = await loadCsv(file, { skipBadLines: true });
    // the unclosed quote on line 6 would make csv-parse swallow lines 7-8: they must survive
    expect(t.requests.map((r) => [r.id, r.inputTokens, r.source?.line])).toEqual([
      ['r0', 100, 2],
      ['r1', 200, 4],
      ['r2', 300, 7],
      ['r3', 400, 8],
    ]);
    expect(t.meta.skipped).toBe(2);
    expect(t.meta.lines).toBe(6);
    expect(t.meta.skippedReasons.map((m) => m.slice(file.length))).toEqual([
      ':3: CSV syntax error: Invalid Closing Quote: got "x" instead of delimiter, record delimiter, trimable character (if activated) or comment',
      ':6: CSV syntax error: Quote Not Closed: the parsing is finished with an opening quote',
    ]);
  });
});

describe('loadCsv: conversion', () => {
  it('converts the Vidur layout: seconds → ms, stable sort, reordered, timeScale', async () => {
    const file = join(fixtures, 'tiny.csv');
    const t = await loadCsv(file);
    expect(t.meta).toMatchObject({ name: 'tiny', format: 'csv', blockSize: 16, lines: 4, skipped: 0, reordered: 1 });
    expect(t.requests.map((r) => [r.id, r.arrivalMs])).toEqual([
      ['r0', 0],
      ['r2', 1250],
      ['r1', 1500],
      ['r3', 2000],
    ]);
    expect(t.requests[0]).toEqual({
      id: 'r0',
      arrivalMs: 0,
      inputTokens: 100,
      outputTokens: 5,
      blockSize: 16,
      blocks: [],
      knowledge: [],
      knowledgeTokens: 0,
      source: { file, line: 2 },
    });
    const s = await loadCsv(file, { timeScale: 2 });
    expect(s.requests.map((r) => r.arrivalMs)).toEqual([0, 2500, 3000, 4000]);
  });

  it('converts the Azure layout relative to the first row', async () => {
    const t = await loadCsv(join(fixtures, 'azure.csv'));
    expect(t.requests.map((r) => [r.arrivalMs, r.inputTokens, r.outputTokens])).toEqual([
      [0, 4808, 10],
      [52, 3180, 8],
      [1319.41, 110, 27],
    ]);
  });

  it('shifts Azure arrivals when a row precedes the first one', async () => {
    const file = tempFile(
      'az.csv',
      'TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 00:00:01,10,1\n2023-11-16 00:00:00.5,20,2\n2023-11-16 00:00:03,30,3\n',
    );
    const t = await loadCsv(file);
    expect(t.meta.reordered).toBe(1);
    expect(t.requests.map((r) => [r.id, r.arrivalMs])).toEqual([
      ['r1', 0],
      ['r0', 500],
      ['r2', 2500],
    ]);
  });

  it('takes ids from a request_id column and rejects duplicates', async () => {
    const file = tempFile('ids.csv', `request_id,${HEADER}\nabc,0,1,1\ndef,1,2,2\n`);
    expect((await loadCsv(file)).requests.map((r) => r.id)).toEqual(['abc', 'def']);
    const dup = tempFile('dup.csv', `request_id,${HEADER}\nabc,0,1,1\nabc,1,2,2\n`);
    await expect(loadCsv(dup)).rejects.toThrow(`${dup}:3: duplicate id "abc"`);
  });

  it('stops after limit requests', async () => {
    const t = await loadCsv(join(fixtures, 'tiny.csv'), { limit: 2 });
    expect(t.requests.map((r) => r.id)).toEqual(['r0', 'r1']);
  });

  it('parses date-times with fractions and offsets', () => {
    expect(parseDateTimeMs('1970-01-01 00:00:01.5')).toBe(1500);
    expect(parseDateTimeMs('1970-01-01T00:00:00.0001234Z')).toBeCloseTo(0.1234, 9);
    expect(parseDateTimeMs('1970-01-01 01:00:00+01:00')).toBe(0);
    expect(parseDateTimeMs('1970-13-01 00:00:00')).toBeNaN();
    expect(parseDateTimeMs('nope')).toBeNaN();
  });

  it('names the path of a missing file', async () => {
    await expect(loadCsv('/nonexistent/x.csv')).rejects.toThrow('trace file not found: /nonexistent/x.csv');
  });
});
