/**
 * Router replicas: the engine's op-log apply (applyRemoteDispatch + the ordinary hooks keyed by
 * request id) and the simulator's `--router-replicas R --replica-sync-ms D|none`.
 */
import { describe, expect, it } from 'vitest';
import { Engine } from '../engine/engine.js';
import { createStrategy } from '../engine/strategies/index.js';
import { runLoaded, replicaOptions } from '../sim/run.js';
import { hashPick, simulate } from '../sim/simulator.js';
import { observed, writeRecords } from '../sim/metrics.js';
import { generateSynthetic } from '../traces/synthetic.js';
import { mkReq, testCluster } from './helpers/sim.js';

describe('engine op-log apply', () => {
  it('a remote dispatch books what its origin booked; applying it twice books once; remote completion releases it', () => {
    const c = testCluster(3);
    const a = new Engine(c, createStrategy('least-load'), { seed: 1 });
    const b = new Engine(c, createStrategy('least-load'), { seed: 2 });
    const req = mkReq({ id: 'x', blocks: [1, 2, 3, 4], outputTokens: 20 });
    const d = a.decide(req, 10);
    a.onDispatch(req, d, 10);
    const op = a.dispatchOp(req, d);
    expect(op.computeTokens).toBeGreaterThan(0);
    b.applyRemoteDispatch(op, 12);
    b.applyRemoteDispatch(op, 13); // duplicate delivery: no second booking
    const la = a.loads.loads[d.instance]!;
    const lb = b.loads.loads[d.instance]!;
    expect([lb.inflight, lb.prefillReqs, lb.prefillTokens, lb.kvTokens]).toEqual([la.inflight, la.prefillReqs, la.prefillTokens, la.kvTokens]);
    expect(lb.inflight).toBe(1);
    // predict-on-route: the other replica's index also expects the prefix on that instance
    const m = new Int32Array(3);
    b.index.match([1, 2, 3, 4], m);
    expect(m[d.instance]).toBe(4);
    // the next decision on b sees the booked load: least-load avoids that instance
    const d2 = b.decide(mkReq({ id: 'y', blocks: [9], outputTokens: 20 }), 14);
    expect(d2.instance).not.toBe(d.instance);
    b.onFirstToken('x', 20);
    expect(lb.prefillReqs).toBe(0);
    expect(lb.decodeReqs).toBe(1);
    b.onComplete('x', 30, 20);
    expect(lb.inflight).toBe(0);
    expect(b.intentCounts.none + b.intentCounts.text).toBe(0); // remote dispatches are not this replica's decisions
  });
});

describe('simulator router replicas', () => {
  const t = generateSynthetic({ requests: 1500, rate: 4, seed: 1 });
  const cluster = testCluster(4);
  const run = (strategy: string, R: number, syncMs: number | null, seed = 1) => {
    const replicas = replicaOptions({ routerReplicas: R, replicaSyncMs: syncMs }, () => createStrategy(strategy));
    return simulate(t.requests, { cluster, strategy: createStrategy(strategy), seed, stepNoiseCv: 0.02, ...(replicas ? { replicas } : {}) });
  };
  const bytes = (o: ReturnType<typeof simulate>): string => {
    let s = '';
    writeRecords(o, observed(o), cluster.kdns.map((k) => k.id), (chunk) => (s += chunk));
    return s;
  };

  it('one replica is today\'s simulator, byte for byte; R replicas are deterministic', () => {
    const base = bytes(simulate(t.requests, { cluster, strategy: createStrategy('kvlab'), seed: 1, stepNoiseCv: 0.02 }));
    expect(bytes(run('kvlab', 1, 0))).toBe(base);
    expect(bytes(run('kvlab', 1, null))).toBe(base);
    const a = bytes(run('kvlab', 4, 50));
    expect(bytes(run('kvlab', 4, 50))).toBe(a);
    expect(a).not.toBe(base);
    const o = run('kvlab', 4, 50);
    expect(o.replicas).toEqual({ count: 4, syncMs: 50, ops: expect.any(Number) });
    // every request sends dispatch, first token and completion (+ transfer ACKs) to the others
    expect(o.replicas!.ops).toBeGreaterThanOrEqual(3 * t.requests.length);
    expect(run('kvlab', 4, null).replicas!.ops).toBe(0);
  });

  it('SGLang cache-aware replicas: the prefix hit ratio falls with R without sync and stays with sync (the reported loss)', () => {
    const hit = (R: number, syncMs: number | null): number => runLoaded(t, { strategy: 'sglang-router', seed: 1, instances: 4, routerReplicas: R, replicaSyncMs: syncMs }).summary.prefix_hit_ratio;
    const one = hit(1, 0);
    const none4 = hit(4, null);
    const none8 = hit(8, null);
    expect(none4).toBeLessThan(one - 0.05);
    expect(none8).toBeLessThan(none4);
    for (const d of [0, 50, 500]) expect(hit(4, d)).toBeGreaterThan(one - 0.01);
  });

  it('the load balancer: round-robin spreads arrivals evenly; hashing is seeded, in range and sticky per id', () => {
    const counts = [0, 0, 0];
    for (let i = 0; i < 3000; i++) counts[hashPick(`r${i}`, 7, 3)]!++;
    expect(Math.min(...counts)).toBeGreaterThan(900);
    expect(hashPick('abc', 7, 5)).toBe(hashPick('abc', 7, 5));
    expect(new Set(Array.from({ length: 50 }, (_, i) => hashPick('abc', i, 5))).size).toBeGreaterThan(1);
    expect(() => replicaOptions({ routerReplicas: 0 }, () => createStrategy('kvlab'))).toThrow(/router replicas must be an integer in 1\.\.64/);
    expect(() => replicaOptions({ routerReplicas: 2, replicaSyncMs: -1 }, () => createStrategy('kvlab'))).toThrow(/replica sync delay must be >= 0 ms or none/);
  });
});

describe('replica chart data', () => {
  it('groups a sweep by strategy, replicas and sync label, with hit ratio, TTFT mean and load CoV', async () => {
    const { replicaData, syncLabel } = await import('../notebooks/data.js');
    const sum = (hit: number, ttft: number, cov: number) => ({ strategy: 's', seed: 1, requests: 1, completed: 1, rejected: 0, failed: 0, prefix_hit_ratio: hit, ttft_ms: { mean: ttft, p50: ttft, p90: ttft, p99: ttft }, tpot_ms: { mean: 1, p50: 1, p90: 1, p99: 1 }, e2e_ms: { mean: 1, p50: 1, p90: 1, p99: 1 }, throughput_rps: 1, duration_ms: 1, load_cov: cov });
    const entries = [
      { params: { router_replicas: 1, replica_sync_ms: 'none' }, strategy: 'a', seed: 1, summary: sum(0.4, 100, 0.1) },
      { params: { router_replicas: 4, replica_sync_ms: 'none' }, strategy: 'a', seed: 1, summary: sum(0.2, 300, 0.3) },
      { params: { router_replicas: 4, replica_sync_ms: 'none' }, strategy: 'a', seed: 2, summary: sum(0.3, 500, 0.5) },
      { params: { router_replicas: 4, replica_sync_ms: 50 }, strategy: 'a', seed: 1, summary: sum(0.4, 110, 0.1) },
      { params: { router_replicas: 4 }, strategy: 'a', seed: 1, summary: null },
    ];
    const d = replicaData({ runs: [], abs: [], sweeps: [{ file: 'x', entries }], diffs: [], capacities: [] } as never);
    const rows = d!.datasets['replicas'] as { x: number; sync: string; metric: string; mean: number; n: number }[];
    const pick = (x: number, sync: string, metric: string) => rows.find((r) => r.x === x && r.sync === sync && r.metric === metric)!;
    expect(pick(4, 'no sync', 'prefix hit ratio')).toMatchObject({ mean: 0.25, n: 2 });
    expect(pick(4, 'no sync', 'TTFT mean (ms)').mean).toBe(400);
    expect(pick(4, 'sync 50 ms', 'load CoV').mean).toBeCloseTo(0.1);
    expect(syncLabel(undefined)).toBe('sync 0 ms');
    expect(replicaData({ runs: [], abs: [], sweeps: [{ file: 'x', entries: entries.slice(1, 2) }], diffs: [], capacities: [] } as never)).toBeNull();
  });
});
