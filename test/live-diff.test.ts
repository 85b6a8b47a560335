/**
 * `kvlab diff`: hand-computed statistics, joining by id, null handling, the engine's prediction,
 * the pairs cap, diff.json on disk and the CLI.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { quantileSorted } from 'simple-statistics';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { registerLiveRunCommands } from '../live/cli-run.js';
import { diffRecords, diffRuns, errorStats, formatDiff } from '../live/diff.js';
import type { TimingRecord } from '../live/recorder.js';

const tmp = mkdtempSync(join(tmpdir(), 'kvlab-diff-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function rec(id: string, ttft: number | null, extra: Partial<TimingRecord['observed'] & object> = {}, status: TimingRecord['status'] = 'ok', pred = 100): TimingRecord {
  return {
    id,
    arrival_ms: 0,
    status,
    error: null,
    input_tokens: 10,
    output_tokens: 2,
    knowledge_tokens: 0,
    instance: 'i0',
    kdn: null,
    intent: 'none',
    decision: { strategy: 's', reason: 'r', reused_tokens: 0, cached_tokens: 0, alternatives: { instance: [], intent: [], score: [] } },
    predicted: { prepare_ms: 0, link_wait_ms: 0, transfer_ms: 0, kv_load_ms: 0, queue_ms: 0, prefill_ms: pred, ttft_ms: pred },
    observed:
      status === 'ok'
        ? { prepare_ms: 0, link_wait_ms: 0, transfer_ms: 0, kv_load_ms: null, queue_ms: 0, prefill_ms: ttft, ttft_ms: ttft, tpot_ms: null, e2e_ms: ttft === null ? null : ttft + 10, cached_tokens: 0, preemptions: null, first_token_at_ms: null, done_at_ms: null, ...extra }
        : null,
    source: 'live',
  };
}

describe('error statistics', () => {
  it('MAPE, median/p90 absolute error and bias (b − a), by hand', () => {
    const s = errorStats([
      [100, 110],
      [200, 180],
      [50, 50],
      [400, 500],
    ]);
    // |err| = 10, 20, 0, 100 → sorted 0, 10, 20, 100; APE = .1, .1, 0, .25
    expect(s.n).toBe(4);
    expect(s.mape).toBeCloseTo(0.1125, 6);
    expect(s.median_abs_err_ms).toBe(15);
    expect(s.p90_abs_err_ms).toBeCloseTo(quantileSorted([0, 10, 20, 100], 0.9), 3); // the 0.9 quantile of |err| (simple-statistics, as sim/metrics.ts)
    expect(s.bias_ms).toBe(22.5);
    expect(errorStats([])).toEqual({ mape: null, median_abs_err_ms: null, p90_abs_err_ms: null, bias_ms: null, n: 0 });
    expect(errorStats([[0, 5]]).mape).toBeNull(); // no relative error against 0
  });
});

describe('joining runs', () => {
  it('joins by id, skips non-ok pairs and nulls, reports prediction and agreement', () => {
    const a = [rec('x', 100), rec('y', 200, {}, 'ok', 150), rec('z', null), rec('f', null, {}, 'failed'), rec('only-a', 1)];
    const b = [rec('y', 220), rec('x', 90), rec('z', 40), rec('f', 10), rec('only-b', 1)];
    b[1]!.instance = 'i1';
    const d = diffRecords(a, b, 'A', 'B');
    expect(d).toMatchObject({ joined: 4, a_only: 1, b_only: 1, status_mismatch: 1 });
    expect(d.fields.ttft_ms!.n).toBe(2);
    expect(d.fields.ttft_ms!.bias_ms).toBe(5); // (-10 + 20) / 2
    expect(d.fields.e2e_ms!.n).toBe(2);
    expect(d.fields.kv_load_ms!.n).toBe(0); // null on the live side
    expect(d.fields.queue_prefill_ms!.n).toBe(2);
    expect(d.same_instance).toBe(0.667); // x moved to i1; y and z (ok, null TTFT) agree
    // A's own prediction: x predicted 100 observed 100, y predicted 150 observed 200
    expect(d.engine_prediction.ttft_ms).toMatchObject({ n: 2, bias_ms: -25, mape: 0.125 });
    expect(d.pairs).toEqual([
      { id: 'x', a: { ttft_ms: 100 }, b: { ttft_ms: 90 }, predicted_ttft_ms: 100 },
      { id: 'y', a: { ttft_ms: 200 }, b: { ttft_ms: 220 }, predicted_ttft_ms: 150 },
      { id: 'z', a: { ttft_ms: null }, b: { ttft_ms: 40 }, predicted_ttft_ms: 100 },
    ]);
    expect(formatDiff(d)).toMatch(/ttft_ms\s+2\s+10\.0%/);
  });

  it('keeps at most maxPairs pairs, evenly spaced', () => {
    const a = Array.from({ length: 100 }, (_, i) => rec(`r${i}`, 100 + i));
    const d = diffRecords(a, a, 'A', 'B', 10);
    expect(d.pairs).toHaveLength(10);
    expect(d.pairs[1]!.id).toBe('r10');
    expect(d.fields.ttft_ms).toMatchObject({ n: 100, mape: 0, bias_ms: 0 });
  });
});

describe('files and CLI', () => {
  const write = (dir: string, recs: TimingRecord[]) => {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'records.jsonl'), recs.map((r) => JSON.stringify(r)).join('\n') + '\n');
  };

  it('diffRuns reads run directories and writes diff.json; bad input names the file', () => {
    write(join(tmp, 'a'), [rec('x', 100), rec('y', 200)]);
    write(join(tmp, 'b'), [rec('x', 110), rec('y', 190)]);
    const out = join(tmp, 'out', 'diff.json');
    const d = diffRuns(join(tmp, 'a'), join(tmp, 'b'), out);
    const j = JSON.parse(readFileSync(out, 'utf8'));
    expect(j.fields.ttft_ms).toEqual(d.fields.ttft_ms);
    expect(Object.keys(j)).toEqual(expect.arrayContaining(['a', 'b', 'joined', 'fields', 'engine_prediction', 'pairs']));
    expect(() => diffRuns(join(tmp, 'nope'), join(tmp, 'b'))).toThrow(/run not found: .*nope/);
    writeFileSync(join(tmp, 'bad.jsonl'), '{"id":"x"}\nnot json\n');
    expect(() => diffRuns(join(tmp, 'bad.jsonl'), join(tmp, 'b'))).toThrow(/bad\.jsonl:2: not valid JSON/);
  });

  it('kvlab diff A B --json --out FILE', async () => {
    const p = new Command();
    p.exitOverride();
    registerLiveRunCommands(p);
    const chunks: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((c: unknown) => {
      chunks.push(String(c));
      return true;
    });
    try {
      await p.parseAsync(['node', 'kvlab', 'diff', join(tmp, 'a'), join(tmp, 'b'), '--json', '--out', join(tmp, 'cli.json')]);
    } finally {
      spy.mockRestore();
    }
    const j = JSON.parse(chunks.join(''));
    expect(j.joined).toBe(2);
    expect(j.fields.ttft_ms.mape).toBeCloseTo(0.075, 6);
    expect(JSON.parse(readFileSync(join(tmp, 'cli.json'), 'utf8')).joined).toBe(2);
  });
});
