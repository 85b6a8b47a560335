/**
 * SLO goodput: Mooncake TBT (mean of the longest 10% token gaps), goodput / goodput_rps in
 * summary.json, admission control counted as rejected, and `kvlab capacity` (bisection on the
 * arrival-rate multiplier).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeStepMs } from '../engine/costmodel.js';
import { createStrategy } from '../engine/strategies/index.js';
import { buildReport } from '../notebooks/report.js';
import { capacityTable, runCapacity } from '../sim/capacity.js';
import { sloArg } from '../sim/cli.js';
import { observed, summarize } from '../sim/metrics.js';
import { simulate } from '../sim/simulator.js';
import { TokenGaps } from '../sim/tbt.js';
import { generateSynthetic } from '../traces/synthetic.js';
import { mkReq, testCluster } from './helpers/sim.js';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('TBT (Mooncake: mean of the longest 10% token gaps)', () => {
  it('keeps ceil(10%) of the gaps and averages them (hand-computed)', () => {
    // 21 tokens = 20 gaps -> the longest 2
    const g = new TokenGaps([21, 1]);
    const times = [0, 10, 20, 30, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 210, 220, 230, 300];
    for (const t of times) g.token(0, t);
    expect(g.tbt(0)).toBe((70 + 50) / 2);
    g.token(1, 5);
    expect(g.tbt(1)).toBe(-1); // one token: no gap
    // a coalesced run reports its iteration ends relative to its start
    const h = new TokenGaps([11]);
    h.token(0, 100);
    h.tokens(0, 100, Float64Array.from([10, 20, 30, 45, 55, 65, 75, 85, 95, 105]), 10);
    expect(h.tbt(0)).toBe(15);
  });

  it('a lone decoding request: TBT = its decode step; a prefill landing mid-decode shows up', () => {
    const c = testCluster(1);
    const alone = simulate([mkReq({ id: 'a', inputTokens: 64, outputTokens: 41 })], { cluster: c, strategy: createStrategy('round-robin') });
    const step = decodeStepMs(c.instances[0]!.profile, 1, 64 + 40);
    expect(alone.tbtMs[0]).toBeGreaterThan(decodeStepMs(c.instances[0]!.profile, 1, 64) - 1e-9);
    expect(alone.tbtMs[0]).toBeLessThanOrEqual(step + 1e-9);
    const mixed = simulate([mkReq({ id: 'a', inputTokens: 64, outputTokens: 41 }), mkReq({ id: 'b', arrivalMs: 200, inputTokens: 3000, outputTokens: 2 })], { cluster: c, strategy: createStrategy('round-robin') });
    expect(mixed.tbtMs[0]).toBeGreaterThan(5 * step); // a 3,000-token prefill chunk shares a step
  });
});

describe('goodput in summary.json', () => {
  it('counts completed requests within both SLOs over all requests; admission rejections count against it', () => {
    const t = generateSynthetic({ requests: 200, seed: 3, rate: 2 });
    const o = simulate(t.requests, { cluster: testCluster(2), strategy: createStrategy('kvlab'), seed: 1 });
    const obs = observed(o);
    const slo = { ttftMs: 1500, tbtMs: 200 };
    const s = summarize(o, obs, slo);
    let good = 0;
    for (let r = 0; r < 200; r++) if (o.status[r] === 1 && obs.ttft[r]! <= 1500 && obs.tbt[r]! <= 200) good++;
    expect(s.goodput).toBeCloseTo(good / 200, 3);
    expect(s.goodput).toBeGreaterThan(0);
    expect(s.goodput).toBeLessThan(1);
    expect(s.goodput_rps).toBeCloseTo((good / s.duration_ms) * 1000, 2);
    expect(summarize(o, obs, { ttftMs: 1e9, tbtMs: 1e9 }).goodput).toBe(1);
    // admission control: kvlab rejects what it predicts above a tiny TTFT SLO
    const rej = simulate(t.requests, { cluster: testCluster(2), strategy: createStrategy('kvlab', { ttftSloMs: 50 }), seed: 1 });
    const sr = summarize(rej, observed(rej), slo);
    expect(sr.rejected_admission).toBeGreaterThan(0);
    expect(sr.rejected).toBeGreaterThanOrEqual(sr.rejected_admission);
    expect(sr.completed + sr.rejected + sr.failed).toBe(200);
  });

  it('parses --slo ttft=MS,tbt=MS and refuses bad keys and values', () => {
    expect(sloArg('ttft=10000,tbt=100')).toEqual({ ttftMs: 10000, tbtMs: 100 });
    expect(sloArg('tbt=250').tbtMs).toBe(250);
    expect(() => sloArg('ttft=0')).toThrow(/ttft must be a positive number/);
    expect(() => sloArg('latency=3')).toThrow(/unknown key "latency"/);
  });
});

describe('kvlab capacity', () => {
  it('finds, per seed, the largest multiplier meeting the target within the tolerance', async () => {
    const out = mkdtempSync(join(tmpdir(), 'kvlab-cap-'));
    dirs.push(out);
    const res = await runCapacity({ workload: 'synthetic', workloadOptions: { requests: 150, rate: 2 }, instances: 2, strategies: ['kvlab', 'round-robin'], seeds: [1, 2], slo: { ttftMs: 4000, tbtMs: 400 }, target: 0.8, tol: 0.1, out });
    for (const [name, e] of Object.entries(res.strategies)) {
      expect(e.values, name).toHaveLength(2);
      for (const seed of [1, 2]) {
        const pts = e.points.filter((p) => p.seed === seed);
        const cap = e.values[[1, 2].indexOf(seed)]!;
        const at = pts.find((p) => Math.abs(p.multiplier - cap) < 1e-3)!;
        expect(at.goodput, name).toBeGreaterThanOrEqual(0.8);
        // the next point above it within (1 + tol) misses the target
        const above = pts.filter((p) => p.multiplier > cap + 1e-3).sort((a, b) => a.multiplier - b.multiplier)[0];
        if (above) {
          expect(above.goodput, name).toBeLessThan(0.8);
          expect(above.multiplier / cap, name).toBeLessThanOrEqual(1.1 + 1e-3);
        }
      }
    }
    expect(res.strategies.kvlab!.mean).toBeGreaterThan(res.strategies['round-robin']!.mean);
    const file = JSON.parse(readFileSync(join(out, 'capacity.json'), 'utf8'));
    expect(file.target).toBe(0.8);
    expect(capacityTable(res)).toMatch(/kvlab\s+\d/);
    // the report draws goodput against offered load from capacity.json
    const rep = await buildReport([out], { out: join(out, 'report'), png: false });
    const svg = readFileSync(join(out, 'report', 'charts', 'goodput-load.svg'), 'utf8');
    expect(svg).toContain('<svg');
    expect(rep.charts.find((c) => c.id === 'goodput-load')?.skipped).toBeFalsy();
  });
});
