import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { STRATEGY_NAMES, createStrategy } from '../engine/strategies/index.js';
import type { ClusterSpec } from '../engine/types.js';
import { abTable } from '../sim/cli.js';
import fc from 'fast-check';
import { j3, observed, recordsJsonl, summarize } from '../sim/metrics.js';
import { instanceSpecFromProfile, loadProfile } from '../sim/profiles.js';
import { runAb, runSim } from '../sim/run.js';
import { simulate } from '../sim/simulator.js';
import { loadMooncake } from '../traces/mooncake.js';
import { generateSynthetic } from '../traces/synthetic.js';
import { traceStats } from '../traces/stats.js';
import { HAVE_SHARED, MOONCAKE, REPO, testCluster, testProfile } from './helpers/sim.js';

const TEST_PROFILE = resolve(REPO, 'test/fixtures/profile-test.json');
const H100 = resolve(REPO, 'engine/profiles/h100x8-llama3-70b.json');

function oneInstanceUnlimited(): ClusterSpec {
  const c = testCluster(1, { kvCapacityTokens: Infinity, maxModelLen: 1_000_000 });
  return c;
}

describe('simulator', () => {
  it('is deterministic: same inputs and seed give byte-identical records.jsonl', () => {
    const t = generateSynthetic({ requests: 300, seed: 5 });
    const run = (seed: number) => {
      const o = simulate(t.requests, { cluster: testCluster(3), strategy: createStrategy('kvlab'), seed, stepNoiseCv: 0.05 });
      return recordsJsonl(o, observed(o), ['kdn0']);
    };
    const a = run(7);
    expect(run(7)).toBe(a);
    expect(run(8)).not.toBe(a);
    expect(a.trim().split('\n')).toHaveLength(300);
  });

  it('with one instance, unlimited KV and spread arrivals, prefix_hit_ratio equals the infinite-cache ratio (fixture)', async () => {
    const t = await loadMooncake(resolve(REPO, 'test/fixtures/traces/tiny.jsonl'), { timeScale: 1000 });
    const o = simulate(t.requests, { cluster: oneInstanceUnlimited(), strategy: createStrategy('round-robin') });
    const s = summarize(o);
    expect(s.completed).toBe(t.requests.length);
    expect(Math.abs(s.prefix_hit_ratio - traceStats(t.requests).infinite_cache_hit_ratio)).toBeLessThan(0.01);
  });

  it.skipIf(!HAVE_SHARED)('matches the Mooncake conversation trace infinite-cache ratio within 0.01', async () => {
    const t = await loadMooncake(MOONCAKE, { timeScale: 1000 });
    const o = simulate(t.requests, { cluster: oneInstanceUnlimited(), strategy: createStrategy('round-robin') });
    const s = summarize(o);
    const inf = traceStats(t.requests).infinite_cache_hit_ratio;
    expect(s.completed).toBe(12031);
    expect(Math.abs(s.prefix_hit_ratio - inf)).toBeLessThan(0.01);
  });

  it('rejects requests longer than max_model_len and counts them, never truncating', () => {
    const t = generateSynthetic({ requests: 50, seed: 2 });
    const small = testCluster(2, { maxModelLen: 1200 });
    const o = simulate(t.requests, { cluster: small, strategy: createStrategy('least-load') });
    const s = summarize(o);
    const tooLong = t.requests.filter((r) => r.inputTokens + r.outputTokens > 1200).length;
    expect(tooLong).toBeGreaterThan(0);
    expect(s.rejected).toBe(tooLong);
    expect(s.completed).toBe(50 - tooLong);
  });

  it('KV events reach the engine after the configured delay', () => {
    const t = generateSynthetic({ requests: 120, seed: 4, rate: 4 });
    const seen = (delayMs: number) => {
      const sizes: [number, number][] = [];
      const inner = createStrategy('least-load');
      const spy = { name: 'spy', decide: (ctx: any) => (sizes.push([ctx.now, ctx.index.totalEntries()]), inner.decide(ctx)) };
      simulate(t.requests, { cluster: { ...testCluster(2), kvEventDelayMs: delayMs }, strategy: spy, predictOnRoute: false });
      return sizes;
    };
    const now = seen(0);
    const late = seen(20_000);
    // without delay the index fills as soon as prefills finish; with 20 s delay it stays empty until then
    expect(now.filter(([t, n]) => t < 19_000 && n > 0).length).toBeGreaterThan(0);
    expect(late.filter(([t, n]) => t < 19_000 && n > 0)).toEqual([]);
    expect(late.filter(([t, n]) => t > 25_000 && n > 0).length).toBeGreaterThan(0);
  });
});

describe('j3 (record number formatting)', () => {
  it('prints the same text as String(Math.round(x * 1000) / 1000), null for non-finite', () => {
    fc.assert(fc.property(fc.double({ noNaN: true, min: -1e10, max: 1e10 }), (x) => j3(x) === String(Math.round(x * 1000) / 1000)), { numRuns: 5000 });
    for (const x of [0, 0.0005, -0.0005, 12.05, 99.999, 1234.5625, 3e9 + 0.25]) expect(j3(x)).toBe(String(Math.round(x * 1000) / 1000));
    expect(j3(Infinity)).toBe('null');
    expect(j3(NaN)).toBe('null');
  });
});

describe('runSim / runAb', () => {
  it('writes a run directory with records, summary, timeseries and config', async () => {
    const out = mkdtempSync(join(tmpdir(), 'kvlab-run-'));
    const res = await runSim({ workload: 'synthetic', workloadOptions: { requests: 150 }, profile: TEST_PROFILE, strategy: 'kvlab', out });
    for (const f of ['records.jsonl', 'summary.json', 'timeseries.json', 'config.json']) expect(existsSync(join(out, f))).toBe(true);
    const s = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(s.requests).toBe(150);
    expect(s.ttft_ms.p99).toBeGreaterThanOrEqual(s.ttft_ms.p50);
    expect(res.summary.completed).toBe(150);
    const rec = JSON.parse(readFileSync(join(out, 'records.jsonl'), 'utf8').split('\n')[0]!);
    expect(rec.decision.alternatives.instance.length).toBeGreaterThan(0);
    expect(rec.decision.alternatives.score).toHaveLength(rec.decision.alternatives.instance.length);
    expect(rec.observed.ttft_ms).toBeGreaterThan(0);
  });

  it('ab: same schedule for every strategy, CI across seeds, change vs the first strategy', async () => {
    const out = mkdtempSync(join(tmpdir(), 'kvlab-ab-'));
    const ab = (await runAb({ workload: 'synthetic', workloadOptions: { requests: 120 }, profile: TEST_PROFILE, strategies: ['round-robin', 'kvlab'], seeds: [1, 2, 3], out })) as any;
    expect(ab.baseline).toBe('round-robin');
    const m = ab.strategies.kvlab.ttft_ms.mean;
    expect(m.values).toHaveLength(3);
    expect(m.ci95[0]).toBeLessThanOrEqual(m.mean);
    expect(m.ci95[1]).toBeGreaterThanOrEqual(m.mean);
    expect(ab.strategies.kvlab.vs_baseline['ttft_ms.mean']).toBeDefined();
    expect(ab.strategies['round-robin'].completed.mean).toBe(120);
    const table = abTable(ab);
    expect(table).toContain('kvlab');
    expect(table).toContain('baseline');
    expect(JSON.parse(readFileSync(join(out, 'ab.json'), 'utf8')).seeds).toEqual([1, 2, 3]);
  });
});

describe.skipIf(!HAVE_SHARED || !existsSync(H100))('Mooncake conversation trace, 16 instances', () => {
  it('runSim twice with the same seed writes byte-identical records.jsonl', async () => {
    const a = mkdtempSync(join(tmpdir(), 'kvlab-det-a-'));
    const b = mkdtempSync(join(tmpdir(), 'kvlab-det-b-'));
    const c = mkdtempSync(join(tmpdir(), 'kvlab-det-c-'));
    const opts = { trace: MOONCAKE, limit: 3000, strategy: 'kvlab', seed: 4 };
    await runSim({ ...opts, out: a });
    await runSim({ ...opts, out: b });
    await runSim({ ...opts, seed: 5, out: c });
    const ra = readFileSync(join(a, 'records.jsonl'));
    expect(ra.length).toBeGreaterThan(100_000);
    expect(readFileSync(join(b, 'records.jsonl')).equals(ra)).toBe(true);
    expect(readFileSync(join(c, 'records.jsonl')).equals(ra)).toBe(false);
  }, 120_000);

  it('every strategy completes the full trace', async () => {
    const t = await loadMooncake(MOONCAKE);
    const p = loadProfile(H100);
    const cluster = testCluster(16);
    cluster.instances = Array.from({ length: 16 }, (_, i) => instanceSpecFromProfile(p, i));
    cluster.links = [cluster.instances.map(() => ({ bandwidthGbps: 10, latencyMs: 0.5, efficiency: 0.825 }))];
    for (const name of STRATEGY_NAMES) {
      const o = simulate(t.requests, { cluster, strategy: createStrategy(name), seed: 1, stepNoiseCv: 0.02 });
      const s = summarize(o);
      expect(s.completed + s.rejected, name).toBe(12031);
      expect(s.completed, name).toBeGreaterThan(12000);
    }
  }, 300_000);
});

void testProfile;
