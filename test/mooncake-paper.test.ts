import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { curveMs } from '../engine/costmodel.js';
import { a800Profile, paperCluster, prefillOnly, relDiff, sameOrder, A100_PROFILE, NODE_DRAM_TOKENS } from '../notebooks/analyses/mooncake-paper.js';
import { loadProfile } from '../sim/profiles.js';
import { generateMooncakeSynthetic, MOONCAKE_SYNTHETIC_TABLE2, mooncakeSyntheticStats } from '../traces/mooncake-synthetic.js';
import { REPO } from './helpers/sim.js';

describe('Mooncake-like synthetic trace (traces/mooncake-synthetic.ts)', () => {
  it('is deterministic and has the statistics of the paper Table 2 (within 10 %)', () => {
    const a = generateMooncakeSynthetic({ seed: 1 });
    expect(generateMooncakeSynthetic({ seed: 1 })).toEqual(a);
    const s = mooncakeSyntheticStats(a);
    expect(s.requests).toBe(MOONCAKE_SYNTHETIC_TABLE2.requests);
    expect(Math.abs(s.avgInput / MOONCAKE_SYNTHETIC_TABLE2.avgInput - 1)).toBeLessThan(0.1);
    expect(Math.abs(s.avgOutput / MOONCAKE_SYNTHETIC_TABLE2.avgOutput - 1)).toBeLessThan(0.1);
    expect(Math.abs(s.cacheRatio - MOONCAKE_SYNTHETIC_TABLE2.cacheRatio)).toBeLessThan(0.05);
    // arrivals sorted, Poisson at the rate: mean gap 1000 / rate ms
    for (let i = 1; i < a.length; i++) expect(a[i]!.arrivalMs).toBeGreaterThanOrEqual(a[i - 1]!.arrivalMs);
    const b = generateMooncakeSynthetic({ seed: 1, rate: 4 });
    expect(b[b.length - 1]!.arrivalMs / (b.length - 1)).toBeCloseTo(250, -1.5);
  });

  it('blocks are chained 512-token ids: ceil(input / 512) per request, shared prefixes share leading ids', () => {
    const reqs = generateMooncakeSynthetic({ seed: 2, requests: 400 });
    for (const r of reqs) expect(r.blocks.length).toBe(Math.ceil(r.inputTokens / 512));
    // a prompt's partial last block is its own (no other prompt has it)
    const owners = new Map<number, number>();
    for (const r of reqs) for (const b of r.blocks) owners.set(b, (owners.get(b) ?? 0) + 1);
    for (const r of reqs) if (r.inputTokens % 512) expect(owners.get(r.blocks[r.blocks.length - 1]!)).toBe(1);
    let shared = 0;
    const seen = new Set<number>();
    for (const r of reqs) {
      if (r.blocks.length && seen.has(r.blocks[0]!)) shared++;
      r.blocks.forEach((b) => seen.add(b));
    }
    expect(shared).toBeGreaterThan(100);
  });

  it('refuses a non-positive rate or request count', () => {
    expect(() => generateMooncakeSynthetic({ rate: 0 })).toThrow(/rate/);
    expect(() => generateMooncakeSynthetic({ requests: 0 })).toThrow(/requests/);
  });
});

describe('Mooncake paper setup (notebooks/analyses/mooncake-paper.ts)', () => {
  it('the A800 profile is the A100 one plus a slower all-reduce: same model, memory and KV; longer steps, more so for big ones', () => {
    const a100 = loadProfile(A100_PROFILE);
    const a800 = a800Profile();
    expect(a800.model).toEqual(a100.model);
    expect(a800.engine).toEqual(a100.engine);
    const d = (T: number) => curveMs(a800.step, T) - curveMs(a100.step, T);
    expect(d(2048)).toBeGreaterThan(0);
    expect(d(8192)).toBeGreaterThan(d(512));
    // the all-reduce share stays a minor part of a step (A800 and A100 have the same compute)
    expect(d(2048) / curveMs(a100.step, 2048)).toBeLessThan(0.25);
  });

  it('paper cluster: 3 M tokens of DRAM prefix cache per node, the link of the NICs, roles', () => {
    const c = paperCluster({ nodes: 4, peerGbps: 24 });
    expect(c.instances).toHaveLength(4);
    expect(c.instances[0]!.tiers!.cpuTokens).toBeGreaterThanOrEqual(NODE_DRAM_TOKENS - 1);
    expect(c.instances[0]!.tiers!.cpuTokens).toBeLessThanOrEqual(NODE_DRAM_TOKENS + 1);
    expect(c.peerLink!.bandwidthGbps).toBe(24);
    const pd = paperCluster({ roles: '2P3D' });
    expect(pd.instances.map((s) => s.role)).toEqual(['prefill', 'prefill', 'decode', 'decode', 'decode']);
    expect(pd.pd!.link.bandwidthGbps).toBe(800);
    expect(prefillOnly([{ id: 'a', arrivalMs: 0, inputTokens: 9, outputTokens: 7, blockSize: 512, blocks: [1], knowledge: [], knowledgeTokens: 0 }])[0]!.outputTokens).toBe(1);
  });

  it('ordering and difference helpers', () => {
    expect(sameOrder({ a: 3, b: 1, c: 2 }, { a: 30, b: 5, c: 6 })).toBe(true);
    expect(sameOrder({ a: 3, b: 1, c: 2 }, { a: 1, b: 5, c: 6 })).toBe(false);
    expect(relDiff(1.2, 1)).toBe('+20 %');
    expect(relDiff(0.5, 2)).toBe('-75 %');
  });

  it.skipIf(!existsSync(resolve(REPO, 'dist/notebooks/analyses/mooncake-fig15.js')))('fig15 prints the paper beside ours for each P:D ratio (small run)', () => {
    const out = execFileSync(process.execPath, [resolve(REPO, 'dist/notebooks/analyses/mooncake-fig15.js'), '--requests', '200', '--nodes', '16', '--ratios', '5,8', '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const j = JSON.parse(out) as { paper_capacity: Record<string, number>; runs: Array<{ p: number; run: { capacity: number; meanTbtMs: number } }> };
    expect(j.paper_capacity['5']).toBe(0.775);
    expect(j.runs.map((r) => r.p)).toEqual([5, 8]);
    for (const r of j.runs) {
      expect(r.run.capacity).toBeGreaterThan(0);
      expect(r.run.capacity).toBeLessThanOrEqual(1);
      expect(r.run.meanTbtMs).toBeGreaterThan(0);
    }
  });
});
