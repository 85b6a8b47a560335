/**
 * The evaluation protocol's data handling: the Mooncake trace split in time (first half tunes,
 * second half evaluates), and scenarios whose shared data is absent are skipped, not faked.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { mooncakeHalf, SCENARIOS, scenarioInputs } from '../notebooks/analyses/protocol.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('evaluation protocol', () => {
  it('splits a Mooncake trace at the midpoint of its timestamps; the second half starts at 0', () => {
    const lines = [0, 100, 400, 500, 1000].map((t, k) => JSON.stringify({ timestamp: t, input_length: 10 + k, output_length: 2, hash_ids: [k] }));
    const text = lines.join('\n') + '\n';
    const a = mooncakeHalf(text, 0).trim().split('\n').map((l) => JSON.parse(l));
    const b = mooncakeHalf(text, 1).trim().split('\n').map((l) => JSON.parse(l));
    expect(a.map((r) => r.timestamp)).toEqual([0, 100, 400]);
    expect(b.map((r) => r.timestamp)).toEqual([0, 500]);
    expect(b[1].input_length).toBe(14);
    expect(a.length + b.length).toBe(5);
  });

  it('tuning and evaluation sets do not share a trace', () => {
    const key = (s: (typeof SCENARIOS)[number]) => JSON.stringify(s.source);
    const tune = new Set(SCENARIOS.filter((s) => s.set === 'tuning').map(key));
    for (const s of SCENARIOS.filter((x) => x.set === 'evaluation')) expect(tune.has(key(s)), s.id).toBe(false);
    const seeds = (set: string) => SCENARIOS.filter((s) => s.set === set && s.source.kind === 'agent').flatMap((s) => (s.source as { traceSeeds: number[] }).traceSeeds);
    expect(seeds('tuning').filter((x) => seeds('evaluation').includes(x))).toEqual([]);
  });

  it('skips a scenario whose shared data is absent, and generates agent traces deterministically', () => {
    const out = mkdtempSync(join(tmpdir(), 'kvlab-proto-'));
    dirs.push(out);
    const mc = SCENARIOS.find((s) => s.id === 'mooncake-eval')!;
    expect(scenarioInputs(mc, out, join(out, 'no-shared-here'))).toBeNull();
    const ag = { ...SCENARIOS.find((s) => s.id === 'agent-tune')! };
    const inputs = scenarioInputs(ag, out, join(out, 'no-shared-here'))!;
    expect(inputs.map((i) => i.seed)).toEqual([1, 2]);
    expect(inputs[0]!.trace).toMatch(/agent-1-2600\.jsonl$/);
  });
});
