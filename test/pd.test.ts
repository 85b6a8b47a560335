import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LoadBook } from '../engine/load.js';
import { parseRoles, pdExposedMs, pdTransferWindow } from '../engine/pd.js';
import { createStrategy } from '../engine/strategies/index.js';
import type { ClusterSpec, InstanceRole, PdSpec } from '../engine/types.js';
import { readClusterFile, resolveCluster } from '../sim/cluster.js';
import { observed, recordsJsonl, summarize } from '../sim/metrics.js';
import { instanceSpecFromProfile } from '../sim/profiles.js';
import { simulate } from '../sim/simulator.js';
import { generateSynthetic } from '../traces/synthetic.js';
import { mkReq, pdHandProfile, testCluster } from './helpers/sim.js';


/** 1 prefill + 1 decode instance of the hand profile, P -> D link of `gbps` (efficiency 1, 1 ms). */
function pdCluster(gbps = 10, pd: Partial<PdSpec> = {}, roles: InstanceRole[] = ['prefill', 'decode']): ClusterSpec {
  const prof = pdHandProfile();
  const instances = roles.map((role, i) => {
    const s = instanceSpecFromProfile(prof, i);
    if (role !== 'mixed') s.role = role;
    return s;
  });
  return {
    instances,
    kdns: [],
    links: [],
    kvEventDelayMs: 0,
    chunkTokens: 256,
    pd: { link: { bandwidthGbps: gbps, latencyMs: 1, efficiency: 1 }, layerwise: false, firstToken: 'prefill', ...pd },
  };
}

function run(cluster: ClusterSpec, reqs = [mkReq({ id: 'a', inputTokens: 1000, outputTokens: 4 })]) {
  const o = simulate(reqs, { cluster, strategy: createStrategy('round-robin'), seed: 1 });
  const obs = observed(o);
  const recs = recordsJsonl(o, obs, []).trim().split('\n').map((l) => JSON.parse(l));
  return { o, obs, recs, summary: summarize(o, obs) };
}

describe('P/D disaggregation in the simulator', () => {
  it('a disaggregated request prefills on P, moves its KV to D, then decodes there (hand-computed timeline)', () => {
    const { obs, recs, summary } = run(pdCluster(10));
    const r = recs[0]!;
    expect(r.instance).toBe('i0');
    expect(r.decode_instance).toBe('i1');
    // prefill: one step of 10 + 1000 ms; first token from P at 1010
    expect(r.observed.ttft_ms).toBeCloseTo(1010, 6);
    // 1000 tokens × 125,000 B = 125 MB at 10 Gbit/s = 100 ms + 1 ms latency, after the prefill
    expect(r.observed.pd).toMatchObject({ decode_instance: 'i1', transfer_bytes: 125_000_000, prefill_done_ms: 1010, link_wait_ms: 0, transfer_start_ms: 1010, transfer_end_ms: 1111, transfer_ms: 101 });
    // D: one 1-token step (the first token's KV) gives token 2 at 1122, then 1133 and 1144
    expect(r.observed.e2e_ms).toBeCloseTo(1144, 6);
    // token gaps 112, 11, 11: Mooncake's TBT (longest 10% = 1 gap) is the first one, transfer included
    expect(obs.tbt[0]).toBeCloseTo(112, 6);
    expect(summary.pd).toMatchObject({ first_token: 'prefill', disaggregated: 1, colocated: 0, transfer_bytes: 125_000_000 });
    expect(summary.pd!.transfer_ms.mean).toBeCloseTo(101, 6);
    expect(summary.pd!.exposed_ms.mean).toBeCloseTo(101, 6);
  });

  it("with firstToken 'decode' (vLLM's proxy) the client's first token comes from D after the transfer", () => {
    const { obs, recs } = run(pdCluster(10, { firstToken: 'decode' }));
    const r = recs[0]!;
    // P's token is dropped; D recomputes the last prompt token: 1010 + 101 + 11
    expect(r.observed.ttft_ms).toBeCloseTo(1122, 6);
    // the engine's decision-time prediction on the idle cluster: the same timeline
    expect(r.predicted.ttft_ms).toBeCloseTo(r.observed.ttft_ms, 3);
    expect(r.observed.prefill_ms).toBeCloseTo(1010, 6);
    expect(r.observed.e2e_ms).toBeCloseTo(1155, 6);
    expect(obs.tbt[0]).toBeCloseTo(11, 6);
  });

  it("firstToken 'decode': the engine predicts the client's TTFT with both API delays and D's frontend", () => {
    const c = pdCluster(10, { firstToken: 'decode' });
    for (const s of c.instances) s.profile = { ...s.profile, step: { ...s.profile.step, apiMs: 5, frontendMsPerRequest: 2 } };
    const r = run(c).recs[0]!;
    // P: frontend 2 + prefill 1010 + API 5; D: frontend 2 + transfer 101 + one step 11 + API 5
    expect(r.observed.ttft_ms).toBeCloseTo(1136, 6);
    expect(r.predicted.ttft_ms).toBeCloseTo(1136, 3);
  });

  it('layer-wise transfer overlaps the prefill: only the last layer waits', () => {
    const { recs } = run(pdCluster(10, { layerwise: true }));
    const pd = recs[0]!.observed.pd;
    // streams from the prefill start (0): ends at max(0 + 100, 1010 + 100/80) + 1 = 1012.25
    expect(pd.transfer_start_ms).toBeCloseTo(0, 6);
    expect(pd.transfer_end_ms).toBeCloseTo(1012.25, 6);
    expect(recs[0]!.observed.e2e_ms).toBeCloseTo(1012.25 + 33, 6);
    // a slow link is not hidden by the prefill
    const slow = run(pdCluster(0.5, { layerwise: true })).recs[0]!.observed.pd;
    // 125 MB at 0.5 Gbit/s = 2000 ms of data, started at 0: ends at 2000 + 1
    expect(slow.transfer_end_ms).toBeCloseTo(2001, 6);
    expect(pdExposedMs(125_000_000, { link: { bandwidthGbps: 0.5, latencyMs: 1, efficiency: 1 }, layerwise: true, firstToken: 'prefill' }, 1010, 80)).toBeCloseTo(2001 - 1010, 6);
  });

  it('transfer time falls with bandwidth: bytes / bandwidth + latency, and the first token gap with it', () => {
    for (const gbps of [1, 10, 40, 100]) {
      const { recs, obs } = run(pdCluster(gbps));
      const ms = 125_000_000 / ((gbps * 1e9) / 8 / 1000) + 1;
      expect(recs[0]!.observed.pd.transfer_ms).toBeCloseTo(ms, 6);
      expect(obs.tbt[0]).toBeCloseTo(ms + 11, 6);
    }
  });

  it('hand-offs on one P -> D link are FIFO; the link is busy for the data, the latency overlaps', () => {
    const reqs = [mkReq({ id: 'a', inputTokens: 1000, outputTokens: 2 }), mkReq({ id: 'b', inputTokens: 100, outputTokens: 2 })];
    const { recs } = run(pdCluster(1), reqs);
    // a prefills alone (10 + 1000 ms), b in the next step (10 + 100): ready at 1010 and 1120
    const [a, b] = recs.map((r) => r.observed.pd);
    // a: 125 MB at 1 Gbit/s = 1000 ms of data + 1 ms latency
    expect(a.transfer_start_ms).toBeCloseTo(1010, 6);
    expect(a.transfer_end_ms).toBeCloseTo(2011, 6);
    // b waits for a's data (until 2010), then 12.5 MB = 100 ms + 1 ms
    expect(b.prefill_done_ms).toBeCloseTo(1120, 6);
    expect(b.link_wait_ms).toBeCloseTo(890, 6);
    expect(b.transfer_start_ms).toBeCloseTo(2010, 6);
    expect(b.transfer_end_ms).toBeCloseTo(2111, 6);
  });

  it('a one-token request in prefill mode completes on P without a transfer', () => {
    const { recs, summary } = run(pdCluster(10), [mkReq({ id: 'a', inputTokens: 1000, outputTokens: 1 })]);
    expect(recs[0]!.observed.e2e_ms).toBeCloseTo(1010, 6);
    expect(recs[0]!.observed.pd).toBeUndefined();
    expect(summary.pd!.transfer_bytes).toBe(0);
  });

  it('booked load: prefill on P until the first token, decode on D until completion', () => {
    const b = new LoadBook(2);
    b.book('x', 0, 0, 900, 1100, 1000, 50, 1);
    expect(b.loads[0]).toMatchObject({ inflight: 1, prefillReqs: 1, prefillTokens: 900, kvTokens: 1000 });
    expect(b.loads[1]).toMatchObject({ inflight: 1, prefillReqs: 0, kvTokens: 1100, decodeReqs: 0 });
    b.firstToken('x', 10);
    expect(b.loads[0]).toMatchObject({ inflight: 0, prefillReqs: 0, prefillTokens: 0, kvTokens: 0, decodeReqs: 0 });
    expect(b.loads[1]).toMatchObject({ inflight: 1, kvTokens: 1100, decodeReqs: 1, decodeCtxTokens: 1000 });
    b.release('x', 20);
    expect(b.loads[1]).toMatchObject({ inflight: 0, kvTokens: 0, decodeReqs: 0, decodeCtxTokens: 0 });
    // fallback to colocated after the first token: the decode booking moves to P
    b.book('y', 0, 30, 900, 1100, 1000, 50, 1);
    b.firstToken('y', 40);
    b.colocate('y', 41);
    expect(b.loads[0]).toMatchObject({ inflight: 1, kvTokens: 1100, decodeReqs: 1, decodeKvTokens: 1100 });
    expect(b.loads[1]).toMatchObject({ inflight: 0, kvTokens: 0, decodeReqs: 0, decodeKvTokens: 0 });
    b.release('y', 50);
    expect(b.loads[0]).toMatchObject({ inflight: 0, kvTokens: 0, decodeReqs: 0, decodeKvTokens: 0 });
  });

  it('the transfer window helper: after the prefill, or layer-wise from its start', () => {
    const pd: PdSpec = { link: { bandwidthGbps: 8, latencyMs: 2, efficiency: 1 }, layerwise: false, firstToken: 'prefill' };
    // 1 GB at 8 Gbit/s = 1000 ms
    expect(pdTransferWindow(1e9, pd, 10, 0, 500, 700)).toEqual([700, 1702]);
    expect(pdTransferWindow(1e9, { ...pd, layerwise: true }, 10, 0, 500, -Infinity)).toEqual([0, 1002]);
    expect(pdTransferWindow(1e9, { ...pd, layerwise: true }, 10, 0, 5000, -Infinity)).toEqual([0, 5102]);
  });
});

describe('P/D roles in cluster files and the CLI', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-pd-'));
  const file = (name: string, text: string) => {
    const p = join(dir, name);
    writeFileSync(p, text);
    return p;
  };

  it('parses 6P10D, 4P4D8M; refuses malformed specs', () => {
    expect(parseRoles('2P1D')).toEqual(['prefill', 'prefill', 'decode']);
    expect(parseRoles('1p1d2m')).toEqual(['prefill', 'decode', 'mixed', 'mixed']);
    expect(() => parseRoles('6P')).toThrow(/must look like 6P10D/);
    expect(() => parseRoles('0P0D')).toThrow(/no instance/);
  });

  it('roles: in a cluster file and role: per instance; the pd section; schema errors name the field', () => {
    const rc = resolveCluster(readClusterFile(file('a.yaml', 'instances: 3\nroles: 1P2D\npd: { link: { bandwidthGbps: 400 }, layerwise: true }\n')), {}, 'test/fixtures/profile-test.json');
    expect(rc.spec.instances.map((s) => s.role ?? 'mixed')).toEqual(['prefill', 'decode', 'decode']);
    expect(rc.spec.pd).toMatchObject({ layerwise: true, firstToken: 'prefill', link: { bandwidthGbps: 400, latencyMs: 0.01, efficiency: 0.825 } });
    const rc2 = resolveCluster(readClusterFile(file('b.yaml', 'instances:\n  - { id: p, role: prefill }\n  - { id: d, role: decode }\n  - { id: m }\n')), {}, 'test/fixtures/profile-test.json');
    expect(rc2.spec.instances.map((s) => s.role ?? 'mixed')).toEqual(['prefill', 'decode', 'mixed']);
    expect(() => readClusterFile(file('c.yaml', 'roles: 6X\n'))).toThrow(/c\.yaml: roles: must look like 6P10D/);
    expect(() => readClusterFile(file('d.yaml', 'instances: [ { role: both } ]\n'))).toThrow(/d\.yaml: instances/);
    expect(() => readClusterFile(file('e.yaml', 'pd: { firstToken: later }\n'))).toThrow(/e\.yaml: pd\.firstToken/);
    expect(() => resolveCluster(readClusterFile(file('f.yaml', 'instances: 4\nroles: 1P2D\n')), {}, 'test/fixtures/profile-test.json')).toThrow(/roles 1P2D names 3 instances, the cluster has 4/);
    expect(() => resolveCluster(null, { roles: '2P0D' }, 'test/fixtures/profile-test.json')).toThrow(/no instance can decode/);
    expect(() => resolveCluster(null, { roles: '2P2D', instances: 3 }, 'test/fixtures/profile-test.json')).toThrow(/--instances 3 disagrees with roles 2P2D/);
  });

  it('a cluster whose instances are all mixed gives byte-identical records to one without roles', () => {
    const t = generateSynthetic({ requests: 200, seed: 3 });
    const recs = (c: ClusterSpec) => {
      const o = simulate(t.requests, { cluster: c, strategy: createStrategy('kvlab'), seed: 2, stepNoiseCv: 0.02 });
      return recordsJsonl(o, observed(o), ['kdn0']);
    };
    const plain = testCluster(3);
    const mixed = testCluster(3);
    mixed.instances.forEach((s) => (s.role = 'mixed'));
    expect(recs(mixed)).toBe(recs(plain));
  });

  it('every strategy places each request on a valid P/D pair or colocated on a decode-capable instance; every request completes', () => {
    const t = generateSynthetic({ requests: 150, seed: 4 });
    const c = testCluster(4);
    c.instances[0]!.role = 'prefill';
    c.instances[1]!.role = 'prefill';
    c.instances[2]!.role = 'decode';
    c.instances[3]!.role = 'decode';
    for (const name of ['round-robin', 'least-load', 'cacheroute', 'dynamo-kv', 'sglang-router', 'llm-d', 'mooncake', 'kvlab']) {
      const o = simulate(t.requests, { cluster: c, strategy: createStrategy(name), seed: 1 });
      const s = summarize(o);
      expect(s.completed + s.rejected, name).toBe(150);
      for (let r = 0; r < 150; r++) {
        if (o.decisions.rejectedReason(r)) continue;
        if (o.decisions.decode[r]! < 0) {
          // colocated (Dynamo's conditional disaggregation, llm-d's decider): on a decode instance
          expect([2, 3], name).toContain(o.decisions.instance[r]);
          continue;
        }
        expect([0, 1], name).toContain(o.decisions.instance[r]);
        expect([2, 3], name).toContain(o.decisions.decode[r]);
      }
    }
  });
});
