import { describe, expect, it } from 'vitest';
import { loadMooncake } from '../traces/mooncake.js';
import { TraceError } from '../traces/errors.js';
import { fixtures, tempFile } from './fixtures/traces/helpers.js';
import { join } from 'node:path';

const good = (o: Record<string, unknown> = {}) =>
  JSON.stringify({ timestamp: 0, input_length: 600, output_length: 5, hash_ids: [0, 1], ...o });

/** Loads `lines` (line 1 good, line 2 the case) and returns the thrown TraceError. */
async function failure(line2: string): Promise<TraceError> {
  const file = tempFile('bad.jsonl', `${good()}\n${line2}\n${good()}\n`);
  const err = await loadMooncake(file).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TraceError);
  const te = err as TraceError;
  expect(te.file).toBe(file);
  expect(te.line).toBe(2);
  expect(te.message.startsWith(`${file}:2: `)).toBe(true);
  return te;
}

describe('loadMooncake: malformed lines', () => {
  const cases: [string, string, string][] = [
    ['bad JSON', '{"timestamp": 0, "input_length": 6', 'invalid JSON'],
    ['trailing garbage', `${good()} x`, 'invalid JSON'],
    ['not an object (array)', '[1, 2, 3]', 'expected a JSON object, got array'],
    ['not an object (number)', '42', 'expected a JSON object, got number'],
    ['not an object (null)', 'null', 'expected a JSON object, got null'],
    ['not an object (string)', '"hello"', 'expected a JSON object, got string'],
    ['missing timestamp', '{"input_length": 600, "output_length": 5, "hash_ids": [0, 1]}', 'missing field "timestamp" (or "created_time")'],
    ['missing input_length', '{"timestamp": 0, "output_length": 5, "hash_ids": [0, 1]}', 'missing field "input_length" (or "input_tokens")'],
    ['missing output_length', '{"timestamp": 0, "input_length": 600, "hash_ids": [0, 1]}', 'missing field "output_length" (or "output_tokens")'],
    ['missing hash_ids', '{"timestamp": 0, "input_length": 600, "output_length": 5}', 'missing field "hash_ids"'],
    ['timestamp wrong type', good({ timestamp: '12' }), '"timestamp" must be a number, got string "12"'],
    ['timestamp NaN as string', good({ timestamp: 'NaN' }), '"timestamp" must be a number, got string "NaN"'],
    ['timestamp null', good({ timestamp: null }), '"timestamp" must be a number, got null null'],
    ['timestamp overflow to Infinity', good().replace('"timestamp":0', '"timestamp":1e400'), '"timestamp" must be finite, got Infinity'],
    ['timestamp negative', good({ timestamp: -5 }), '"timestamp" must be >= 0, got -5'],
    ['input_length non-integer', good({ input_length: 600.5 }), '"input_length" must be a positive integer, got 600.5'],
    ['input_length zero', good({ input_length: 0, hash_ids: [] }), '"input_length" must be a positive integer, got 0'],
    ['input_length negative', good({ input_length: -3 }), '"input_length" must be a positive integer, got -3'],
    ['input_length boolean', good({ input_length: true }), '"input_length" must be a number, got boolean true'],
    ['output_length zero', good({ output_length: 0 }), '"output_length" must be a positive integer, got 0'],
    ['output_length non-integer', good({ output_length: 1.5 }), '"output_length" must be a positive integer, got 1.5'],
    ['alias wrong type', '{"created_time": 0, "input_tokens": "600", "output_tokens": 5, "hash_ids": [0, 1]}', '"input_tokens" must be a number, got string "600"'],
    ['hash_ids not an array', good({ hash_ids: '0,1' }), '"hash_ids" must be an array, got string'],
    ['hash_ids too short', good({ input_length: 2000, hash_ids: [0, 1, 2] }), 'hash_ids has 3 ids but ceil(input_length/512) = 4'],
    ['hash_ids too long', good({ input_length: 512, hash_ids: [0, 1] }), 'hash_ids has 2 ids but ceil(input_length/512) = 1'],
    ['hash_ids negative', good({ hash_ids: [0, -1] }), 'hash_ids[1] must be a non-negative integer < 2^53, got -1'],
    ['hash_ids non-integer', good({ hash_ids: [0.5, 1] }), 'hash_ids[0] must be a non-negative integer < 2^53, got 0.5'],
    ['hash_ids string element', good({ hash_ids: [0, '1'] }), 'hash_ids[1] must be a non-negative integer < 2^53, got "1"'],
    ['hash_ids unsafe integer', good({ hash_ids: [0, 2 ** 53] }), 'hash_ids[1] must be a non-negative integer < 2^53, got 9007199254740992'],
    ['id of a wrong type', good({ id: [1] }), '"id" must be a string or number, got array'],
  ];

  it.each(cases)('%s', async (_name, line2, reason) => {
    const err = await failure(line2);
    if (reason === 'invalid JSON') expect(err.reason).toMatch(/^invalid JSON \(.+\)$/);
    else expect(err.reason).toBe(reason);
  });

  it('rejects a duplicate source id', async () => {
    const file = tempFile('dup.jsonl', `${good({ id: 'a' })}\n${good({ id: 'a' })}\n`);
    await expect(loadMooncake(file)).rejects.toThrow(`${file}:2: duplicate id "a"`);
  });

  it('uses the given blockSize for the hash_ids length check', async () => {
    const file = tempFile('bs.jsonl', `${good({ input_length: 600, hash_ids: [0, 1] })}\n`);
    await expect(loadMooncake(file, { blockSize: 256 })).rejects.toThrow(
      `${file}:1: hash_ids has 2 ids but ceil(input_length/256) = 3`,
    );
    const t = await loadMooncake(file, { blockSize: 300 });
    expect(t.requests[0]!.blockSize).toBe(300);
    expect(t.meta.blockSize).toBe(300);
  });

  it('counts the line numbers of blank lines and CRLF files', async () => {
    const file = tempFile('crlf.jsonl', `${good()}\r\n\r\n   \r\n${good({ hash_ids: [0] })}\r\n`);
    await expect(loadMooncake(file)).rejects.toThrow(`${file}:4: hash_ids has 1 ids but ceil(input_length/512) = 2`);
  });
});

describe('loadMooncake: skipBadLines', () => {
  it('skips and counts bad lines, keeping every good one and the first reasons', async () => {
    const lines = [
      good({ timestamp: 10 }), // r0 line 1
      'not json', // line 2
      good({ timestamp: 20 }), // r2 line 3
      '',
      good({ output_length: -1 }), // line 5
      good({ timestamp: 30, hash_ids: [7, 8] }), // r4 line 6
    ];
    const file = tempFile('skip.jsonl', lines.join('\n'));
    const t = await loadMooncake(file, { skipBadLines: true });
    expect(t.meta.skipped).toBe(2);
    expect(t.meta.lines).toBe(5);
    expect(t.requests.map((r) => r.id)).toEqual(['r0', 'r2', 'r4']);
    expect(t.requests.map((r) => r.source)).toEqual([
      { file, line: 1 },
      { file, line: 3 },
      { file, line: 6 },
    ]);
    expect(t.meta.skippedReasons).toHaveLength(2);
    expect(t.meta.skippedReasons[0]).toMatch(new RegExp(`^${escape(file)}:2: invalid JSON`));
    expect(t.meta.skippedReasons[1]).toBe(`${file}:5: "output_length" must be a positive integer, got -1`);
    // without the option the first bad line stops the load
    await expect(loadMooncake(file)).rejects.toThrow(`${file}:2: invalid JSON`);
  });

  it('keeps at most 10 reasons but counts every skipped line', async () => {
    const lines = [good()];
    for (let i = 0; i < 25; i++) lines.push('{}');
    lines.push(good({ timestamp: 1 }));
    const file = tempFile('many.jsonl', lines.join('\n'));
    const t = await loadMooncake(file, { skipBadLines: true });
    expect(t.meta.skipped).toBe(25);
    expect(t.meta.skippedReasons).toHaveLength(10);
    expect(t.requests).toHaveLength(2);
    expect(t.requests[1]!.id).toBe('r26');
  });
});

describe('loadMooncake: conversion, order and options', () => {
  it('reads the tiny fixture: aliases, blank line, fields', async () => {
    const file = join(fixtures, 'tiny.jsonl');
    const t = await loadMooncake(file);
    expect(t.meta).toEqual({
      name: 'tiny',
      file,
      format: 'mooncake',
      blockSize: 512,
      lines: 6,
      skipped: 0,
      skippedReasons: [],
      reordered: 0,
    });
    expect(t.requests[2]).toEqual({
      id: 'r2',
      arrivalMs: 2000,
      inputTokens: 700,
      outputTokens: 30,
      blockSize: 512,
      blocks: [1, 4],
      knowledge: [],
      knowledgeTokens: 0,
      source: { file, line: 4 },
    });
    expect(t.requests.map((r) => r.arrivalMs)).toEqual([0, 1000, 2000, 3000, 4000, 5000]);
  });

  it('multiplies arrivals by timeScale', async () => {
    const file = join(fixtures, 'tiny.jsonl');
    const t = await loadMooncake(file, { timeScale: 0.5 });
    expect(t.requests.map((r) => r.arrivalMs)).toEqual([0, 500, 1000, 1500, 2000, 2500]);
    const z = await loadMooncake(file, { timeScale: 0 });
    expect(z.requests.every((r) => r.arrivalMs === 0)).toBe(true);
    await expect(loadMooncake(file, { timeScale: -1 })).rejects.toThrow(RangeError);
  });

  it('sorts stably by arrival and counts the out-of-order requests', async () => {
    const ts = [100, 50, 100, 0, 200, 100, 150];
    const file = tempFile('order.jsonl', ts.map((t) => good({ timestamp: t })).join('\n'));
    const t = await loadMooncake(file);
    // out of order: 50 (after 100), 0 (after 100), 100 (after 200), 150 (after 200)
    expect(t.meta.reordered).toBe(4);
    expect(t.requests.map((r) => `${r.arrivalMs}:${r.id}`)).toEqual([
      '0:r3',
      '50:r1',
      '100:r0',
      '100:r2',
      '100:r5',
      '150:r6',
      '200:r4',
    ]);
  });

  it('uses source ids when present', async () => {
    const file = tempFile('ids.jsonl', [good({ id: 'a' }), good({ id: 7 })].join('\n'));
    const t = await loadMooncake(file);
    expect(t.requests.map((r) => r.id)).toEqual(['a', '7']);
  });

  it('stops after limit accepted requests', async () => {
    const file = join(fixtures, 'tiny.jsonl');
    const t = await loadMooncake(file, { limit: 2 });
    expect(t.requests.map((r) => r.id)).toEqual(['r0', 'r1']);
    await expect(loadMooncake(file, { limit: 0 })).rejects.toThrow(RangeError);
  });

  it('names the path of a missing file', async () => {
    await expect(loadMooncake('/nonexistent/x.jsonl')).rejects.toThrow('trace file not found: /nonexistent/x.jsonl');
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
