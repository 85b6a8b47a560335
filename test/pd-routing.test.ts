import { describe, expect, it } from 'vitest';
import { Engine } from '../engine/engine.js';
import { priceDecode } from '../engine/pd.js';
import { createStrategy } from '../engine/strategies/index.js';
import type { ClusterSpec, InstanceRole, TraceRequest } from '../engine/types.js';
import { instanceSpecFromProfile } from '../sim/profiles.js';
import { mkReq, pdHandProfile } from './helpers/sim.js';


/** Instances of the hand profile with these roles; P -> D link 10 Gbit/s, efficiency 1, 1 ms. */
function cluster(roles: InstanceRole[]): ClusterSpec {
  const prof = pdHandProfile();
  const instances = roles.map((role, i) => {
    const s = instanceSpecFromProfile(prof, i);
    if (role !== 'mixed') s.role = role;
    return s;
  });
  return { instances, kdns: [], links: [], kvEventDelayMs: 0, chunkTokens: 256, pd: { link: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 }, layerwise: false, firstToken: 'prefill' } };
}

/** `n` 16-token blocks starting at id `from`. */
const blocks = (from: number, n: number) => Array.from({ length: n }, (_, k) => from + k);
const req = (id: string, b: number[], o: Partial<TraceRequest> = {}): TraceRequest => ({ ...mkReq({ id, blocks: b, blockSize: 16, ...o }), ...(o.maxTokens !== undefined ? { maxTokens: o.maxTokens } : {}) });

function dispatch(e: Engine, r: TraceRequest, now = 0) {
  const d = e.decide(r, now);
  if (!d.rejected) e.onDispatch(r, d, now);
  return d;
}

describe('P/D routing: dynamo-kv (Dynamo disaggregated router)', () => {
  it('plain disaggregation: prefill by the prefill logit (no active blocks), decode by active blocks without dedup', () => {
    const e = new Engine(cluster(['prefill', 'prefill', 'decode', 'decode']), createStrategy('dynamo-kv'), { seed: 3 });
    const d0 = dispatch(e, req('r0', blocks(1000, 5)));
    expect([0, 1]).toContain(d0.instance);
    expect([2, 3]).toContain(d0.decode);
    // r: 10 blocks, 8 of them cached on instance 1
    e.onKvEvent({ instance: 1, kind: 'stored', blocks: blocks(1, 8) });
    const d = dispatch(e, req('r', blocks(1, 10)));
    // prefill logit: (booked prefill tokens + 160) / 16 − overlap; r0's 80 tokens are booked on its P
    const expected = d0.instance === 0 ? [15, 2] : [10, 7];
    expect(d.alternatives.map((a) => a.score)).toEqual(expected);
    expect(d.instance).toBe(1);
    // decode logit: r0's 5 blocks + 10 on its D, 10 on the other one
    expect(d.decode).toBe(d0.decode === 2 ? 3 : 2);
  });

  it('conditional disaggregation (isl_bounding 2048, 0.7): a mostly cached prompt runs on the decode worker', () => {
    const mk = () => new Engine(cluster(['prefill', 'decode', 'decode']), createStrategy('dynamo-kv', { conditionalDisagg: true }), { seed: 1 });
    // 7 of 10 blocks cached on D1: eff_isl = 160 − 112 = 48 < 2048, ratio 0.3 < 0.7 -> bypass
    let e = mk();
    e.onKvEvent({ instance: 1, kind: 'stored', blocks: blocks(1, 7) });
    let d = dispatch(e, req('a', blocks(1, 10)));
    expect(d.instance).toBe(1);
    expect(d.decode).toBeUndefined();
    expect(d.reason).toContain('bypass eff_isl=48');
    // 3 of 10 cached: eff_isl 112, ratio 0.7 is not < 0.7 -> prefill on P0, decode on the cache-hot D1
    e = mk();
    e.onKvEvent({ instance: 1, kind: 'stored', blocks: blocks(1, 3) });
    d = dispatch(e, req('b', blocks(1, 10)));
    expect([d.instance, d.decode]).toEqual([0, 1]);
    // 3000-token prompt, 1000 cached: ratio 0.67 but eff_isl 2000 < 2048 -> bypass; 3200 tokens (eff 2200) -> not
    for (const [n, bypass] of [[3000, true], [3200, false]] as const) {
      e = mk();
      e.onKvEvent({ instance: 2, kind: 'stored', blocks: [7] });
      d = dispatch(e, req(`c${n}`, [7, 8], { blockSize: 1000, inputTokens: n }));
      expect(d.decode === undefined, `${n}`).toBe(bypass);
      expect(d.instance).toBe(bypass ? 2 : 0);
    }
  });

  it('a cluster without roles is unchanged (aggregated logit)', () => {
    const c = cluster(['mixed', 'mixed']);
    const e = new Engine(c, createStrategy('dynamo-kv', { conditionalDisagg: true }), { seed: 1 });
    const d = dispatch(e, req('x', blocks(1, 10)));
    expect(d.decode).toBeUndefined();
    expect(d.alternatives.map((a) => a.score)).toEqual([20, 20]);
  });
});

describe("P/D routing: llm-d (disagg-profile-handler + prefix-based-pd-decider, nonCachedTokens 16)", () => {
  it('decode pod first; disaggregate only when its non-cached suffix is >= nonCachedTokens', () => {
    const e = new Engine(cluster(['prefill', 'prefill', 'decode', 'decode']), createStrategy('llm-d'), { seed: 5 });
    const d0 = dispatch(e, req('r0', blocks(1, 10)));
    // nothing cached anywhere: 160 uncached tokens -> prefill + decode
    expect([0, 1]).toContain(d0.instance);
    expect([2, 3]).toContain(d0.decode);
    // same prompt: its decode pod holds all 10 blocks (2·1 + 1 beats 1): 0 uncached -> decode only
    const d1 = dispatch(e, req('r1', blocks(1, 10)));
    expect(d1.instance).toBe(d0.decode);
    expect(d1.decode).toBeUndefined();
    expect(d1.reason).toContain('decode-only non-cached=0');
    // one more block: 16 uncached = threshold -> disaggregated, prefill on r0's prefill pod (10/11 of the prefix)
    const d2 = dispatch(e, req('r2', blocks(1, 11)));
    expect(d2.decode).toBe(d0.decode);
    expect(d2.instance).toBe(d0.instance);
    expect(d2.reason).toContain('prefill-decode non-cached=16');
  });

  it('nonCachedTokens 0 never disaggregates (the plugin default)', () => {
    const e = new Engine(cluster(['prefill', 'decode', 'decode']), createStrategy('llm-d', { nonCachedTokens: 0 }), { seed: 5 });
    const d = dispatch(e, req('r', blocks(1, 10)));
    expect([1, 2]).toContain(d.instance);
    expect(d.decode).toBeUndefined();
  });
});

describe("P/D routing: mooncake (Algorithm 1 SelectDecodingInstance, TBT early rejection)", () => {
  it('the decode instance with the smallest predicted TBT; rejection when even that exceeds the TBT SLO', () => {
    const e = new Engine(cluster(['prefill', 'decode', 'decode']), createStrategy('mooncake', { tbtSloMs: 11.5 }), { seed: 1 });
    // idle: TBT = 10 + 1 ms (this request) on both; the first one wins
    const a = dispatch(e, req('a', blocks(1, 4), { outputTokens: 50 }));
    expect([a.instance, a.decode]).toEqual([0, 1]);
    // D1 decodes a: 10 + 2 = 12 ms > D2's 11 ms
    const b = dispatch(e, req('b', blocks(100, 4), { outputTokens: 50 }));
    expect(b.decode).toBe(2);
    // both at 12 ms > 11.5 ms: rejected
    const c = dispatch(e, req('c', blocks(200, 4), { outputTokens: 50 }));
    expect(c.rejected).toBe('predicted TBT 12 ms > SLO 11.5 ms');
  });
});

describe('P/D routing: kvlab prices colocated vs disaggregated and the pair in ms', () => {
  it('hand-off (link wait + transfer) + expected output × TBT on the decode instance', () => {
    const c = cluster(['prefill', 'decode', 'decode']);
    const e = new Engine(c, createStrategy('kvlab'), { seed: 1 });
    // 1000 tokens × 125,000 B = 125 MB over 10 Gbit/s = 100 ms + 1 ms latency; 10 output tokens at 11 ms
    const r1 = req('p1', [], { inputTokens: 1000, maxTokens: 10 });
    const ctx = e.context(r1, 0);
    const pr = priceDecode(ctx, 0, 1010, 1010);
    expect(pr.options).toEqual([
      { instance: 1, costMs: 101 + 110 },
      { instance: 2, costMs: 101 + 110 },
    ]);
    const d1 = dispatch(e, r1);
    expect(d1.decode).toBe(1);
    // a second one at once: the P0 -> D1 link is busy with p1's 100 ms: D2 wins (101 + 110 < 100 + 101 + 120)
    const r2 = req('p2', [], { inputTokens: 1000, maxTokens: 10 });
    const pr2 = priceDecode(e.context(r2, 0), 0, 2020, 1010);
    expect(pr2.decode).toBe(2);
    expect(pr2.costMs).toBeCloseTo(211, 6);
    expect(dispatch(e, r2).decode).toBe(2);
  });

  it('an idle mixed prefill instance keeps the request: colocation saves the hand-off', () => {
    const e = new Engine(cluster(['mixed', 'decode']), createStrategy('kvlab'), { seed: 1 });
    const r = req('m', [], { inputTokens: 1000, maxTokens: 10 });
    const pr = priceDecode(e.context(r, 0), 0, 1010, 1010);
    expect(pr.options).toEqual([
      { instance: 0, costMs: 110 },
      { instance: 1, costMs: 211 },
    ]);
    const d = dispatch(e, r);
    expect([d.instance, d.decode]).toEqual([0, undefined]);
  });
});
