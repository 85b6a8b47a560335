import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tierLoadMs } from '../engine/costmodel.js';
import { Engine } from '../engine/engine.js';
import { createStrategy } from '../engine/strategies/index.js';
import type { ClusterSpec, InstanceSpec, KvMedium, Profile, TierSpec } from '../engine/types.js';
import { readClusterFile, resolveCluster, tierTokens } from '../sim/cluster.js';
import { InstanceCore, type CoreRequest } from '../sim/instance.js';
import { TierCache } from '../sim/kvcache.js';
import { observed, recordsJsonl, summarize } from '../sim/metrics.js';
import { instanceSpecFromProfile } from '../sim/profiles.js';
import { simulate } from '../sim/simulator.js';
import { mkReq, testProfile } from './helpers/sim.js';

/** Step time 10 ms + 1 ms per new token; 125,000 KV bytes per token; no API/frontend cost. */
function handProfile(kvCapacityTokens: number): Profile {
  const p = testProfile();
  return {
    ...p,
    name: 'hand',
    model: { ...p.model, kvBytesPerToken: 125_000 },
    engine: { maxNumBatchedTokens: 8192, maxNumSeqs: 8, maxModelLen: 100_000, kvCapacityTokens, blockSizeTokens: 16, longPrefillTokenThreshold: 0, asyncScheduling: false },
    step: { fixedMs: 10, prefillSeqMs: 0, decodeSeqMs: 0, knots: [0, 1000], values: [0, 1000], attnTokens: 1e15, kvReadMsPerToken: 0, apiMs: 0, frontendMsPerRequest: 0 },
    kvLoad: { fixedMs: 5, msPerGB: 1000, bytesPerToken: 125_000 },
  };
}

/** 12.5 GB/s host link: 1000 tokens × 125,000 B = 125 MB load in 10 ms. */
const TIERS: TierSpec = { cpuTokens: 10_000, hostLinkGBps: 12.5, hostLoadFixedMs: 0, cpuPolicy: 'demote', remoteTokens: 0 };

function spec(kv: number, tiers?: TierSpec): InstanceSpec {
  const s = instanceSpecFromProfile(handProfile(kv), 0);
  if (tiers) s.tiers = tiers;
  return s;
}

function req(id: string, blocks: number[], output = 1): CoreRequest {
  return { id, promptTokens: blocks.length * 1000, outputTokens: output, blocks, blockSize: 1000, loadedTokens: 0 };
}

/** Runs one request to its first token on an idle core; returns the step times. */
function serve(c: InstanceCore, r: CoreRequest, t: number): { ms: number[]; t: number } {
  c.add(r, t);
  const ms: number[] = [];
  for (;;) {
    const d = c.startStep(t);
    if (d < 0) break;
    ms.push(d);
    t += d;
    c.finishStep(t);
  }
  return { ms, t };
}

describe('KV tiers in the instance model', () => {
  it('a CPU-tier hit after a GPU eviction costs the host-link load, not a recompute', () => {
    const events: [string, number[], KvMedium | undefined][] = [];
    const run = (tiers?: TierSpec) => {
      // GPU memory for 4,500 tokens
      const c = new InstanceCore(spec(4500, tiers), { onKvEvent: (k, b, m) => events.push([k, b.slice(), m]) });
      let t = serve(c, req('a', [1, 2]), 0).t; // 2000 tokens: 10 + 2000 ms
      t = serve(c, req('b', [3, 4, 6, 7]), t).t; // 4000 tokens: evicts a's block 2 and half of block 1
      const third = serve(c, req('a2', [1, 2, 5]), t);
      return { c, third };
    };
    const plain = run();
    // no tier: a2 reuses the 488 still resident tokens of block 1 (eviction takes 16-token engine
    // blocks: 1000 + 512 tokens) and recomputes 2512
    expect(plain.third.ms).toHaveLength(1);
    expect(plain.third.ms[0]).toBeCloseTo(10 + 2512, 6);
    events.length = 0;
    const tiered = run(TIERS);
    // demoted to CPU when the GPU evicted them; a2 loads 2000 tokens at 12.5 GB/s (20 ms) and computes 1000
    expect(tiered.third.ms[0]).toBeCloseTo(10 + 1000 + tierLoadMs(2000, 125_000, 12.5, 0), 6);
    expect(tierLoadMs(2000, 125_000, 12.5, 0)).toBeCloseTo(20, 9);
    const st = tiered.c.get('a2')!;
    expect(st.cpuTokens).toBe(2000);
    expect(st.hitTokens).toBe(0);
    expect(st.kvLoadMs).toBeCloseTo(20, 9);
    // tier-tagged events: the CPU tier reported the demotion with medium CPU, the GPU its removal
    expect(events).toContainEqual(['stored', [2, 1], 'CPU']);
    expect(events.some(([k, b, m]) => k === 'removed' && m === undefined && b.includes(1))).toBe(true);
    // the loaded blocks are back in GPU memory: a GPU 'stored' for 1 and 2 after the load
    expect(events.filter(([k, , m]) => k === 'stored' && m === undefined).some(([, b]) => b.includes(1) && b.includes(2))).toBe(true);
  });

  it('the CPU tier is LRU at its capacity and demotes its own evictions to the remote tier', () => {
    const ev: [string, number[], KvMedium | undefined][] = [];
    const remote = new TierCache(Infinity, 'REMOTE', (k, b, m) => ev.push([k, b.slice(), m]));
    const cpu = new TierCache(2000, 'CPU', (k, b, m) => ev.push([k, b.slice(), m]), remote);
    cpu.insert(1, 1000);
    cpu.insert(2, 1000);
    cpu.touch(1);
    cpu.insert(3, 1000); // evicts 2 (least recently used), which goes to the remote tier
    cpu.flushEvents();
    expect([cpu.has(1), cpu.has(2), cpu.has(3), remote.has(2)]).toEqual([true, false, true, true]);
    expect(ev).toEqual([
      ['removed', [2], 'CPU'],
      ['stored', [1, 2, 3], 'CPU'],
      ['stored', [2], 'REMOTE'],
    ]);
  });

  it('a remote-tier hit loads with the profile KV load model', () => {
    const tiers: TierSpec = { ...TIERS, cpuTokens: 1000, remoteTokens: Infinity };
    const c = new InstanceCore(spec(4500, tiers));
    let t = serve(c, req('a', [1, 2]), 0).t;
    t = serve(c, req('b', [3, 4, 6, 7]), t).t; // a's blocks -> CPU (room for one): 2 goes on to remote
    const r = serve(c, req('a2', [1, 2, 5]), t);
    const st = c.get('a2')!;
    expect(st.cpuTokens + st.remoteTokens).toBe(2000);
    expect(st.remoteTokens).toBeGreaterThan(0);
    // remote: 5 ms + 1000 ms/GB × tokens × 125,000 B / 2^30
    const rem = 5 + (1000 * st.remoteTokens * 125_000) / 2 ** 30;
    const cpu = st.cpuTokens > 0 ? tierLoadMs(st.cpuTokens, 125_000, 12.5, 0) : 0;
    expect(r.ms[0]).toBeCloseTo(1010 + rem + cpu, 6);
  });

  it('write-through stores every computed block to CPU at once', () => {
    const c = new InstanceCore(spec(100_000, { ...TIERS, cpuPolicy: 'write-through' }));
    serve(c, req('a', [1, 2]), 0);
    expect([c.cpu!.has(1), c.cpu!.has(2)]).toEqual([true, true]);
  });
});

function tierCluster(n = 2): ClusterSpec {
  const prof = handProfile(100_000);
  const instances = Array.from({ length: n }, (_, i) => {
    const s = instanceSpecFromProfile(prof, i);
    s.tiers = { ...TIERS, remoteTokens: Infinity };
    return s;
  });
  return { instances, kdns: [], links: [], kvEventDelayMs: 0, chunkTokens: 256 };
}

describe('KV tiers in the engine', () => {
  it('tier-tagged KV events update the prefix index; the cost model charges the tier load', () => {
    const e = new Engine(tierCluster(), createStrategy('round-robin'));
    const r = mkReq({ id: 'x', blocks: [11, 12, 13, 14], blockSize: 1000, inputTokens: 4000 });
    e.onKvEvent({ instance: 0, kind: 'stored', blocks: [11] });
    e.onKvEvent({ instance: 0, kind: 'stored', blocks: [12, 13], medium: 'CPU' });
    e.onKvEvent({ instance: 1, kind: 'stored', blocks: [11, 12], medium: 'CPU' });
    e.onKvEvent({ instance: 1, kind: 'stored', blocks: [13], medium: 'REMOTE' });
    let ctx = e.context(r, 0);
    expect([ctx.cachedTokens(0), ctx.cpuTokens(0), ctx.remoteTokens(0)]).toEqual([1000, 2000, 0]);
    expect([ctx.cachedTokens(1), ctx.cpuTokens(1), ctx.remoteTokens(1)]).toEqual([0, 2000, 1000]);
    // prediction on instance 0: 1000 hit, 2000 from CPU (20 ms), 1000 computed (10 + 1000 ms)
    const p = ctx.predict(0, 'none');
    expect(p.kvLoadMs).toBeCloseTo(20, 9);
    expect(p.computeTokens).toBe(1000);
    expect(p.ttftMs).toBeCloseTo(20 + 1010, 6);
    // on instance 1: 2000 from CPU (20 ms) + 1000 from remote (5 ms + 1000 ms/GB)
    expect(ctx.predict(1, 'none').kvLoadMs).toBeCloseTo(20 + 5 + (1000 * 1000 * 125_000) / 2 ** 30, 6);
    // removals per tier; a GPU removal does not touch the CPU tier
    e.onKvEvent({ instance: 0, kind: 'removed', blocks: [13], medium: 'CPU' });
    e.onKvEvent({ instance: 1, kind: 'removed', blocks: [12] });
    ctx = e.context(r, 0);
    expect([ctx.cpuTokens(0), ctx.cpuTokens(1)]).toEqual([1000, 2000]);
    e.onKvEvent({ instance: 1, kind: 'cleared', blocks: [], medium: 'CPU' });
    ctx = e.context(r, 0);
    expect([ctx.cpuTokens(1), ctx.remoteTokens(1)]).toEqual([0, 0]);
    e.onKvEvent({ instance: 0, kind: 'cleared', blocks: [] });
    ctx = e.context(r, 0);
    expect([ctx.cachedTokens(0), ctx.cpuTokens(0)]).toEqual([0, 0]);
  });

  it("dynamo-kv credits host and remote extension blocks with Dynamo's tier weights (0.75, 0.25)", () => {
    const e = new Engine(tierCluster(), createStrategy('dynamo-kv'));
    // 10 blocks of 16 tokens; instance 0 holds 8 of them in CPU
    const blocks = Array.from({ length: 10 }, (_, k) => 100 + k);
    const r = mkReq({ id: 'y', blocks, blockSize: 16, inputTokens: 160 });
    e.onKvEvent({ instance: 0, kind: 'stored', blocks: blocks.slice(0, 8), medium: 'CPU' });
    e.onKvEvent({ instance: 1, kind: 'stored', blocks: blocks.slice(0, 4), medium: 'REMOTE' });
    const d = e.decide(r, 0);
    // logit = max(0, 160/16 − credit) + new active blocks (10): 10 − 0.75·8 + 10 = 14; 10 − 0.25·4 + 10 = 19
    expect(d.alternatives.map((a) => a.score)).toEqual([14, 19]);
    expect(d.instance).toBe(0);
  });
});

describe('KV tiers in the simulator and cluster files', () => {
  it('GiB per GPU to tokens: gib · 2^30 · gpus / KV bytes per token (LMCache one worker per TP rank)', () => {
    expect(tierTokens(80, 327_680, 8)).toBe(Math.floor((80 * 2 ** 30 * 8) / 327_680));
    expect(tierTokens(Infinity, 327_680, 8)).toBe(Infinity);
    const dir = mkdtempSync(join(tmpdir(), 'kvlab-tiers-'));
    const f = join(dir, 't.yaml');
    writeFileSync(f, 'instances:\n  - { id: a }\n  - { id: b, cpuTierGB: 10 }\ntiers: { cpu: { capacityGB: 80, policy: write-through }, remote: {} }\n');
    const rc = resolveCluster(readClusterFile(f), {}, 'test/fixtures/profile-test.json');
    const [a, b] = rc.spec.instances;
    expect(a!.tiers).toMatchObject({ cpuTokens: tierTokens(80, 327_680, 8), hostLinkGBps: 128, cpuPolicy: 'write-through', remoteTokens: Infinity });
    expect(b!.tiers!.cpuTokens).toBe(tierTokens(10, 327_680, 8));
    writeFileSync(f, 'tiers: { cpu: { capacityGB: -1 } }\n');
    expect(() => readClusterFile(f)).toThrow(/t\.yaml: tiers\.cpu\.capacityGB/);
  });

  it('a simulated replay with a CPU tier records tier hits and recovers reuse a small GPU cache loses', () => {
    // 40 conversations of 6 turns, each turn extending the previous prompt by one 1000-token block
    const reqs = [];
    let id = 0;
    for (let turn = 0; turn < 6; turn++) {
      for (let s = 0; s < 40; s++) {
        const blocks = Array.from({ length: turn + 2 }, (_, k) => s * 100 + k + 1);
        reqs.push(mkReq({ id: `r${id++}`, arrivalMs: (turn * 40 + s) * 500, blocks, blockSize: 1000, inputTokens: blocks.length * 1000, outputTokens: 4 }));
      }
    }
    const run = (tiers?: TierSpec) => {
      const c = tierCluster(1);
      c.instances[0]!.engine.kvCapacityTokens = 12_000;
      if (tiers) c.instances[0]!.tiers = tiers;
      else delete c.instances[0]!.tiers;
      const o = simulate(reqs, { cluster: c, strategy: createStrategy('round-robin'), seed: 1 });
      return { o, s: summarize(o), recs: recordsJsonl(o, observed(o), []).trim().split('\n').map((l) => JSON.parse(l)) };
    };
    const gpu = run();
    const cpu = run({ ...TIERS, cpuTokens: 1_000_000 });
    expect(gpu.s.tiers).toBeUndefined();
    expect(gpu.recs[0].observed.cpu_tokens).toBeUndefined();
    expect(cpu.s.tiers!.cpu_hit_tokens).toBeGreaterThan(0);
    expect(cpu.s.kv_reuse_ratio).toBeGreaterThan(gpu.s.kv_reuse_ratio + 0.2);
    expect(cpu.s.ttft_ms.mean!).toBeLessThan(gpu.s.ttft_ms.mean!);
    expect(cpu.recs.reduce((a, r) => a + r.observed.cpu_tokens, 0)).toBe(cpu.s.tiers!.cpu_hit_tokens);
  });
});
