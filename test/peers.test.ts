/**
 * Each peer strategy's documented upstream behaviour, pinned on hand-computed cases: cost
 * formula, defaults, miss branch, tie-break, table size (docstrings of engine/strategies/*).
 */
import { describe, expect, it } from 'vitest';
import { Engine } from '../engine/engine.js';
import { cacherouteFit, cacherouteTtftMs, mooncakeFit, mooncakePrefillMs } from '../engine/peer-models.js';
import { prefillAloneMs } from '../engine/costmodel.js';
import { AIBRIX_DEFAULTS, AibrixPrefixTable } from '../engine/strategies/aibrix.js';
import { CACHEROUTE_DEFAULTS } from '../engine/strategies/cacheroute.js';
import { DYNAMO_DEFAULTS } from '../engine/strategies/dynamo.js';
import { createStrategy } from '../engine/strategies/index.js';
import { LLMD_DEFAULTS } from '../engine/strategies/llmd.js';
import { ApproxPrefixIndex } from '../engine/strategies/llmd-prefix.js';
import type { Strategy } from '../engine/engine.js';
import { MOONCAKE_DEFAULTS } from '../engine/strategies/mooncake.js';
import { SGLANG_DEFAULTS } from '../engine/strategies/sglang.js';
import type { TraceRequest } from '../engine/types.js';
import { simulate } from '../sim/simulator.js';
import { mkReq, testCluster, testProfile } from './helpers/sim.js';

const range = (a: number, n: number) => Array.from({ length: n }, (_, j) => a + j);
/** decide + dispatch, returns the decision. */
function route(e: Engine, r: TraceRequest, t = 0) {
  const d = e.decide(r, t);
  e.onDispatch(r, d, t);
  return d;
}
const scoreOf = (d: { alternatives: { instance: number; score: number }[] }, i: number) => d.alternatives.find((a) => a.instance === i)!.score;

describe('dynamo-kv (selector.rs worker_logit, assume_kv_reuse)', () => {
  it('keeps Dynamo defaults', () => {
    expect(DYNAMO_DEFAULTS).toMatchObject({ overlapScoreWeight: 1, routerTemperature: 0, blockSize: 16, assumeKvReuse: true });
  });

  it('logit = max(0, (active prefill + ISL)/bs − overlap) + distinct active prompt blocks (hand-computed)', () => {
    const e = new Engine(testCluster(2), createStrategy('dynamo-kv'), { seed: 1 });
    const a = mkReq({ id: 'a', blocks: [1, 2, 3, 9], inputTokens: 64, outputTokens: 500 });
    const da = route(e, a);
    const h = da.instance;
    const o = 1 - h;
    e.onKvEvent({ instance: h, kind: 'stored', blocks: [1, 2, 3, 9] });
    const r = mkReq({ id: 'r', blocks: [1, 2, 3, 4], inputTokens: 64 });
    let d = e.decide(r, 1);
    // on h: prefill (64 active + 64)/16 − 3 cached = 5; decode {1,2,3,9} ∪ {4} = 5 → 10 (no dedup: 4 + 4 = 8 → 13)
    expect(scoreOf(d, h)).toBe(10);
    // on the empty one: 64/16 + 4 = 8
    expect(scoreOf(d, o)).toBe(8);
    expect(d.instance).toBe(o);
    // after a's first token its prefill is released: h = 64/16 − 3 + 5 = 6 < 8
    e.onFirstToken('a', 2);
    d = e.decide(r, 3);
    expect(scoreOf(d, h)).toBe(6);
    expect(d.instance).toBe(h);
    // a's completion frees its blocks
    e.onComplete('a', 4, 500);
    expect(scoreOf(e.decide(r, 5), h)).toBe(1 + 4);
  });

  it('without assume_kv_reuse every active prompt counts in full', () => {
    const e = new Engine(testCluster(2), createStrategy('dynamo-kv', { assumeKvReuse: false }), { seed: 1 });
    const h = route(e, mkReq({ id: 'a', blocks: [1, 2, 3, 9], inputTokens: 64 })).instance;
    e.onKvEvent({ instance: h, kind: 'stored', blocks: [1, 2, 3, 9] });
    expect(scoreOf(e.decide(mkReq({ id: 'r', blocks: [1, 2, 3, 4], inputTokens: 64 }), 1), h)).toBe(5 + 8);
  });

  it('breaks exact ties uniformly at random (reservoir sampling)', () => {
    const seen = new Set<number>();
    for (let s = 1; s <= 40; s++) seen.add(new Engine(testCluster(4), createStrategy('dynamo-kv'), { seed: s }).decide(mkReq({ id: 'x', inputTokens: 64 }), 0).instance);
    expect(seen.size).toBe(4);
  });
});

describe('sglang-router / sglang-gateway (cache_aware.rs, two miss branches)', () => {
  it('keeps RouterArgs defaults', () => {
    expect(SGLANG_DEFAULTS).toMatchObject({ cacheThreshold: 0.3, balanceAbsThreshold: 64, balanceRelThreshold: 1.5, maxTreeTokens: 2 ** 24 });
  });

  it('a miss goes to the smallest tree (sgl-router) or the least-loaded first index (sgl-model-gateway)', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const router = new Engine(testCluster(3), createStrategy('sglang-router'), { seed });
      const gw = new Engine(testCluster(3), createStrategy('sglang-gateway'), { seed });
      const a = mkReq({ id: 'a', blocks: range(100, 10), inputTokens: 160 });
      const xr = route(router, a).instance;
      const xg = route(gw, a).instance;
      expect(xg).toBe(0); // all loads 0: min_by_key takes index 0
      router.onComplete('a', 1);
      gw.onComplete('a', 1);
      // loads are 0 again; a new prompt misses: the router avoids the tree that holds a's 10 blocks,
      // the gateway takes the first least-loaded index even though its tree is the biggest
      const b = mkReq({ id: 'b', blocks: range(900, 10), inputTokens: 160 });
      const db = router.decide(b, 2);
      expect(db.instance).not.toBe(xr);
      expect(db.reason).toBe('miss-smallest-tree');
      const dg = gw.decide(b, 2);
      expect(dg.instance).toBe(0);
      expect(dg.reason).toBe('miss-least-load');
    }
  });

  it('routes to the matching worker above the 0.3 match rate, misses at or below it', () => {
    for (const name of ['sglang-router', 'sglang-gateway']) {
      const e = new Engine(testCluster(3), createStrategy(name), { seed: 7 });
      const x = route(e, mkReq({ id: 'a', blocks: range(100, 10), inputTokens: 160 })).instance;
      e.onComplete('a', 1);
      const hit = e.decide(mkReq({ id: 'h', blocks: [...range(100, 4), 555, 556, 557, 558, 559, 560], inputTokens: 160 }), 2);
      expect(hit.reason, name).toBe('cache-hit'); // 4/10 = 0.4 > 0.3
      expect(hit.instance, name).toBe(x);
      const miss = e.decide(mkReq({ id: 'm', blocks: [...range(100, 3), ...range(700, 7)], inputTokens: 160 }), 2);
      expect(miss.reason, name).not.toBe('cache-hit'); // 3/10 = 0.3 is not > 0.3
    }
  });

  it('switches to the least-loaded worker when imbalanced (max − min > 64 and max > 1.5 × min)', () => {
    const e = new Engine(testCluster(2), createStrategy('sglang-gateway'), { seed: 1 });
    // 65 requests sharing a prefix pile on one worker (cache hits), none finish
    let x = -1;
    for (let k = 0; k < 65; k++) {
      const d = route(e, mkReq({ id: `p${k}`, blocks: [...range(1, 10), 10_000 + k], inputTokens: 176 }));
      if (k > 0) expect(d.instance).toBe(x);
      x = d.instance;
    }
    const d = e.decide(mkReq({ id: 'z', blocks: [...range(1, 10), 99_999], inputTokens: 176 }), 1);
    expect(d.reason).toBe('imbalance-least-load');
    expect(d.instance).toBe(1 - x);
  });
});

describe('aibrix-prefix (prefix_cache.go, prefixcacheindexer/hash.go)', () => {
  it('keeps the code defaults: imbalance 8, σ factor 1, ≈200,000-token table, 20 min idle expiry', () => {
    expect(AIBRIX_DEFAULTS).toMatchObject({ imbalanceAbsCount: 8, stdDevFactor: 1, tableCapacityTokens: 200_000, tableIdleMs: 1_200_000 });
  });

  it('holds ⌊200,000 / block size⌋ blocks in one LRU shared by all pods, refreshed by puts only', () => {
    const e = new Engine(testCluster(4), createStrategy('aibrix-prefix'), { seed: 1 });
    // 512-token blocks: 390 entries for the whole cluster
    const first = mkReq({ id: 'f', blocks: range(1, 10), blockSize: 512, inputTokens: 5120 });
    const x = route(e, first).instance;
    e.onComplete('f', 1);
    expect(e.decide(mkReq({ id: 'q', blocks: range(1, 10), blockSize: 512, inputTokens: 5120 }), 2).instance).toBe(x);
    // 381 more distinct blocks (on any pod) push the oldest ones out of the global table
    for (let k = 0; k < 381; k++) {
      route(e, mkReq({ id: `u${k}`, blocks: [100_000 + k], blockSize: 512, inputTokens: 512 }), 3);
      e.onComplete(`u${k}`, 3);
    }
    const d = e.decide(mkReq({ id: 'q2', blocks: range(1, 10), blockSize: 512, inputTokens: 5120 }), 4);
    expect(d.alternatives.every((a) => a.score === 0)).toBe(true); // no match anywhere
    const t = new AibrixPrefixTable(390, AIBRIX_DEFAULTS.tableIdleMs);
    t.put(range(1, 391), 0, 0);
    expect(t.entries.size).toBe(390);
    expect(t.entries.has(1)).toBe(false);
  });

  it('integer match percentage, idle expiry after 20 minutes', () => {
    const t = new AibrixPrefixTable(1000, 20 * 60_000);
    t.put([1, 2, 3], 2, 0);
    const out = new Int32Array(4);
    t.match([1, 9, 9], [0, 1, 2, 3], out);
    expect(Array.from(out)).toEqual([0, 0, 33, 0]);
    t.expire(20 * 60_000);
    expect(t.entries.size).toBe(3);
    t.expire(20 * 60_000 + 1);
    expect(t.entries.size).toBe(0);
  });

  it('takes a matched pod only while running <= mean + 1 σ (sample σ over all ready pods), else least request', () => {
    for (const seed of [1, 2, 3]) {
      const e = new Engine(testCluster(3), createStrategy('aibrix-prefix'), { seed });
      const A = range(1, 8);
      const x = route(e, mkReq({ id: 'w1', blocks: A, inputTokens: 128 })).instance;
      // running x = 1, others 0: mean 1/3, σ 0.577 → cutoff 0.91 < 1: the match is skipped
      const d2 = route(e, mkReq({ id: 'w2', blocks: range(500, 8), inputTokens: 128 }));
      expect(d2.instance).not.toBe(x);
      // x = 1, y = 1, z = 0: cutoff 2/3 + 0.577 >= 1 → x
      expect(route(e, mkReq({ id: 'w3', blocks: A, inputTokens: 128 })).instance).toBe(x);
      // x = 2, y = 1, z = 0: mean 1, sample σ 1 → cutoff 2 → x (population σ 0.816 would skip it)
      const d4 = e.decide(mkReq({ id: 'w4', blocks: A, inputTokens: 128 }), 1);
      expect(d4.instance).toBe(x);
      expect(d4.reason).toBe('prefix');
      route(e, mkReq({ id: 'w4', blocks: A, inputTokens: 128 }));
      // x = 3: mean 4/3, σ 1.53 → cutoff 2.86 < 3: least request
      expect(e.decide(mkReq({ id: 'w5', blocks: A, inputTokens: 128 }), 1).reason).toContain('least-request');
    }
  });
});

describe('radixmesh (cache_aware_router.py)', () => {
  it('hashes the whole key on a miss: prompts sharing only a first block spread over the ring', () => {
    const seen = new Set<number>();
    const e = new Engine(testCluster(4), createStrategy('radixmesh'), { seed: 1 });
    for (let k = 0; k < 40; k++) seen.add(e.decide(mkReq({ id: `m${k}`, blocks: [7, 1000 + k, 2000 + k], inputTokens: 48 }), 0).instance);
    expect(seen.size).toBeGreaterThan(1);
    // deterministic: the same key maps to the same node
    const a = e.decide(mkReq({ id: 'a', blocks: [7, 1003, 2003], inputTokens: 48 }), 0).instance;
    expect(e.decide(mkReq({ id: 'b', blocks: [7, 1003, 2003], inputTokens: 48 }), 0).instance).toBe(a);
  });

  it('longest prefix wins and ties go to the block owner (first routed), with no load term', () => {
    const e = new Engine(testCluster(3), createStrategy('radixmesh'), { seed: 1 });
    const d0 = route(e, mkReq({ id: 'a', blocks: range(50, 6), inputTokens: 96 }));
    for (let k = 0; k < 30; k++) expect(route(e, mkReq({ id: `s${k}`, blocks: [...range(50, 6), 900 + k], inputTokens: 112 })).instance).toBe(d0.instance);
  });
});

describe('cacheroute (scheduler + proxy READY_CONCURRENCY + four-term regressor)', () => {
  it('keeps CacheRoute defaults', () => {
    expect(CACHEROUTE_DEFAULTS).toMatchObject({ maxCapacity: 8, readyConcurrency: 8, loadRatioDelta: 0.1, affinityDecay: 0.9, affinityTopK: 256, iwsAlpha: 0.5, iwsMarginMs: 100, headerTokens: 36 });
  });

  it('forwards at most 8 requests per instance; the rest wait FIFO and are released at completions', () => {
    const e = new Engine(testCluster(1), createStrategy('cacheroute'), { seed: 1 });
    const sent: boolean[] = [];
    for (let k = 0; k < 11; k++) {
      route(e, mkReq({ id: `c${k}`, inputTokens: 100 }));
      sent.push(e.forward(`c${k}`, 0));
    }
    expect(sent).toEqual([...new Array(8).fill(true), false, false, false]);
    expect(e.heldCount(0)).toBe(3);
    e.onComplete('c3', 10, 5);
    expect(e.takeReleased()).toEqual(['c8']);
    e.onAbort('c9', 11); // aborted while waiting: never released
    e.onComplete('c0', 12, 5);
    expect(e.takeReleased()).toEqual(['c10']);
    expect(e.heldCount(0)).toBe(0);
  });

  it('fits ttft = a·B·L + b·L + c·B + d on the benchmark grid and uses it (not the step model) in IWS', () => {
    const p = testProfile();
    const f = cacherouteFit(p);
    // a linear model of a piecewise-linear + quadratic truth: close on the grid, not exact
    const errs: number[] = [];
    for (const L of [601, 1881, 3161]) {
      const truth = prefillAloneMs(p, 0, L) + p.step.apiMs;
      errs.push(Math.abs(cacherouteTtftMs(f, L) - truth) / truth);
      expect(cacherouteTtftMs(f, L)).toBeCloseTo(Math.max(0, f.a * L + f.b * L + f.c + f.d), 6);
    }
    expect(Math.max(...errs)).toBeLessThan(0.25);
    expect(Math.max(...errs)).toBeGreaterThan(0);
    // short prompts: the RTX 5090 anchors (exact up to 115 tokens)
    expect(cacherouteTtftMs(f, 50)).toBeCloseTo(53.26 + (65.97 - 53.26) * 0.5, 6);
    const e = new Engine(testCluster(2), createStrategy('cacheroute'), { seed: 1 });
    const d = e.decide(mkReq({ id: 'q', inputTokens: 3300, knowledge: [{ kid: 'doc', tokens: 3200 }], knowledgeTokens: 3200 }), 0);
    const text = d.alternatives.find((a) => a.intent === 'text' && a.ttftMs !== undefined)!;
    // text_total = max(text_prepare_wait = trunc(0 + 0.5 ms latency + 3), ready_wait 0) + TTFT(P + K + 36)
    expect(text.ttftMs).toBe(3 + Math.trunc(cacherouteTtftMs(f, 100 + 3200 + 36)));
  });
});

describe('mooncake / mooncake-local (FAST\'25 Algorithm 1)', () => {
  it('keeps its defaults (threshold 1, transfer, no early rejection) and fits a prefill polynomial', () => {
    expect(MOONCAKE_DEFAULTS).toMatchObject({ balancingThreshold: 1, transfer: true, ttftSloMs: 0, tbtSloMs: 0 });
    const p = testProfile();
    const c = mooncakeFit(p);
    const truth = prefillAloneMs(p, 1024, 2048);
    expect(Math.abs(mooncakePrefillMs(c, 3072, 1024) - truth) / truth).toBeLessThan(0.15);
  });

  it('TTFT = transfer + queue + prefill(len, prefix): moves the best remote prefix to an idle instance', () => {
    for (const name of ['mooncake', 'mooncake-local']) {
      const e = new Engine(testCluster(2), createStrategy(name), { seed: 1 });
      const prefix = range(1, 100); // 1,600 tokens
      const h = route(e, mkReq({ id: 'w', blocks: prefix, inputTokens: 1600 })).instance;
      e.onKvEvent({ instance: h, kind: 'stored', blocks: prefix });
      // keep h busy: a long prefill pinned behind it
      const mc = e.strategy;
      e.strategy = { name: 'pin', decide: () => ({ instance: h, intent: 'none', alternatives: [], reason: 'pin' }) };
      route(e, mkReq({ id: 'busy', blocks: range(5000, 200), inputTokens: 3200 }));
      e.strategy = mc;
      const r = mkReq({ id: 'r', blocks: [...prefix, 7777], inputTokens: 1616 });
      const d = e.decide(r, 0);
      const fit = mooncakeFit(testProfile());
      const alt = (i: number) => d.alternatives.find((a) => a.instance === i)!.score;
      // the holder: its queue + prefill of 16 new tokens over a 1,600-token prefix
      expect(alt(h)).toBeCloseTo(e.loads.backlogMs(h, 0) + mooncakePrefillMs(fit, 1616, 1600), 6);
      if (name === 'mooncake') {
        // elsewhere: peer transfer of the whole prefix, then the same short prefill
        expect(d.instance).toBe(1 - h);
        expect(d.peer).toEqual({ from: h, tokens: 1600 });
        expect(alt(1 - h)).toBeCloseTo(d.predicted.linkWaitMs + d.predicted.transferMs + mooncakePrefillMs(fit, 1616, 1600), 6);
      } else {
        expect(d.peer).toBeUndefined();
        expect(alt(1 - h)).toBeCloseTo(mooncakePrefillMs(fit, 1616, 0), 6);
      }
    }
  });

  it('rejects early when the best predicted TTFT exceeds its SLO (Algorithm 1 line 18)', () => {
    const e = new Engine(testCluster(1), createStrategy('mooncake', { ttftSloMs: 50 }), { seed: 1 });
    const d = e.decide(mkReq({ id: 'big', inputTokens: 4000 }), 0);
    expect(d.rejected).toMatch(/predicted TTFT .* > SLO 50 ms/);
    expect(() => e.onDispatch(mkReq({ id: 'big', inputTokens: 4000 }), d, 0)).toThrow(/rejected/);
  });

  it('the simulator moves the KV instance to instance over the peer link and the target then holds it', () => {
    const c = testCluster(2);
    const prefix = range(1, 100);
    const reqs: TraceRequest[] = [
      mkReq({ id: 'w', blocks: prefix, inputTokens: 1600, outputTokens: 4, arrivalMs: 0 }),
      // shares the prefix: stays on the holder (no transfer needed), keeping it busy ~3 s
      mkReq({ id: 'busy', blocks: [...prefix, ...range(5000, 150)], inputTokens: 4000, outputTokens: 4, arrivalMs: 3000 }),
      mkReq({ id: 'r', blocks: [...prefix, 7777], inputTokens: 1616, outputTokens: 4, arrivalMs: 3001 }),
      mkReq({ id: 'r2', blocks: [...prefix, 8888], inputTokens: 1616, outputTokens: 4, arrivalMs: 9000 }),
    ];
    const o = simulate(reqs, { cluster: c, strategy: createStrategy('mooncake'), seed: 1 });
    const w = o.decisions.instance[0]!;
    expect(o.decisions.instance[1]).toBe(w);
    const r = o.decisions.get(2);
    expect(r.instance).toBe(1 - w);
    expect(r.peer?.from).toBe(w);
    expect(o.transferTokens[2]).toBe(1600);
    expect(o.transferMs[2]).toBeGreaterThan(0);
    expect(o.loadTokens[2]).toBe(1600);
    expect(o.peerBytesMoved).toBe(1600 * c.instances[0]!.profile.model.kvBytesPerToken);
    // the next request with that prefix hits it in the target's own cache (or the holder's)
    expect(o.hitTokens[3]).toBeGreaterThanOrEqual(1600);
  });
});

describe('llm-d (default profile: prefix 3, queue 2, KV utilisation 2)', () => {
  it('keeps the built-in default weights and 50 ms scrapes', () => {
    expect(LLMD_DEFAULTS).toMatchObject({ prefixWeight: 3, queueWeight: 2, kvUtilWeight: 2, scrapeMs: 50 });
    expect(createStrategy('llm-d').metricsIntervalMs).toBe(50);
  });

  it('score = 3·matched/total + 2·(max_q − q)/(max_q − min_q) + 2·(1 − kv usage), max wins (hand-computed)', () => {
    const e = new Engine(testCluster(2), createStrategy('llm-d'), { seed: 1 });
    const x = route(e, mkReq({ id: 'a', blocks: range(1, 4), inputTokens: 64 })).instance;
    const y = 1 - x;
    e.onInstanceMetrics(x, { waiting: 4, running: 2, kvUsage: 0.5, at: 1 });
    e.onInstanceMetrics(y, { waiting: 0, running: 0, kvUsage: 0.1, at: 1 });
    const d = e.decide(mkReq({ id: 'r', blocks: [1, 2, 77, 78], inputTokens: 64 }), 2);
    expect(-scoreOf(d, x)).toBeCloseTo(3 * 0.5 + 2 * 0 + 2 * 0.5, 9);
    expect(-scoreOf(d, y)).toBeCloseTo(0 + 2 * 1 + 2 * 0.9, 9);
    expect(d.instance).toBe(y);
  });

  it('hashes only the first 4,096 prompt tokens (defaultMaxPrefixBlocks 256 × 16 tokens): total = 4096 / block size', () => {
    expect(LLMD_DEFAULTS.maxPrefixTokens).toBe(4096);
    const e = new Engine(testCluster(2), createStrategy('llm-d'), { seed: 1 });
    // 512-token trace blocks: 8 are hashed; a 20-block prompt whose first 8 blocks pod x holds
    const x = route(e, mkReq({ id: 'a', blocks: range(1, 20), blockSize: 512, inputTokens: 20 * 512 })).instance;
    const d = e.decide(mkReq({ id: 'b', blocks: [...range(1, 8), ...range(500, 12)], blockSize: 512, inputTokens: 20 * 512 }), 1);
    expect(-scoreOf(d, x)).toBeCloseTo(3 * 1 + 2 + 2, 9); // 8/8 matched, not 8/20
    expect(-scoreOf(d, 1 - x)).toBeCloseTo(0 + 2 + 2, 9);
    // without the cut (maxPrefixTokens = Infinity) the same request scores 8/20
    const f = new Engine(testCluster(2), createStrategy('llm-d', { maxPrefixTokens: Infinity }), { seed: 1 });
    const y = route(f, mkReq({ id: 'a', blocks: range(1, 20), blockSize: 512, inputTokens: 20 * 512 })).instance;
    expect(-scoreOf(f.decide(mkReq({ id: 'b', blocks: [...range(1, 8), ...range(500, 12)], blockSize: 512, inputTokens: 20 * 512 }), 1), y)).toBeCloseTo(3 * 0.4 + 4, 9);
  });

  it('approximate index: per-pod LRU (re-adding refreshes, golang-lru Add) and upstream matchLongestPrefix', () => {
    const ix = new ApproxPrefixIndex(2, [3, 3]);
    ix.add(0, [1, 2, 3]);
    ix.add(0, [1]); // 1 becomes most recent: 2 is now the least recent
    ix.add(0, [9]);
    expect([ix.has(0, 1), ix.has(0, 2), ix.has(0, 3), ix.has(0, 9)]).toEqual([true, false, true, true]);
    expect(ix.size(0)).toBe(3);
    // match walks the hashes and stops at the first one no pod holds; a pod is credited for every
    // hash it holds before that point (pod 0 lacks 2 but pod 1 holds it)
    ix.add(1, [1, 2]);
    const out = new Int32Array(2);
    ix.match([1, 2, 3, 4], out);
    expect([...out]).toEqual([2, 2]);
    ix.clear(0);
    ix.match([1, 2, 3], out);
    expect([...out]).toEqual([0, 2]);
    expect(() => new ApproxPrefixIndex(2, [1])).toThrow(/2 capacities/);
  });

  it('keeps a hot shared first block on a pod that keeps receiving it (LRU, not insertion order)', () => {
    // pod bound 4 blocks; every request = shared block 0 + 3 unique blocks: with FIFO the shared
    // block would be evicted by the second request, with LRU it stays matched
    const c = testCluster(1, { kvCapacityTokens: 4 * 16 });
    const e = new Engine(c, createStrategy('llm-d'), { seed: 1 });
    for (let k = 0; k < 5; k++) route(e, mkReq({ id: `h${k}`, blocks: [0, 100 + 3 * k, 101 + 3 * k, 102 + 3 * k], inputTokens: 64 }), k);
    const d = e.decide(mkReq({ id: 'q', blocks: [0, 7777], inputTokens: 32 }), 9);
    expect(-scoreOf(d, 0)).toBeCloseTo(3 * 0.5 + 2 + 2, 9);
  });

  it("the simulator feeds vLLM's KV usage: a finished request's cached blocks do not count as used", () => {
    const inner = createStrategy('round-robin');
    const seen: number[] = [];
    const probe: Strategy = {
      name: 'probe',
      metricsIntervalMs: 50,
      decide(ctx) {
        const m = ctx.metrics(0);
        if (m) seen.push(m.kvUsage);
        return inner.decide(ctx);
      },
    };
    const c = testCluster(1);
    const reqs = [
      mkReq({ id: 'a', blocks: range(1, 32), inputTokens: 512, outputTokens: 4, arrivalMs: 0 }),
      mkReq({ id: 'b', blocks: range(1, 32), inputTokens: 512, outputTokens: 4, arrivalMs: 60_000 }),
    ];
    const o = simulate(reqs, { cluster: c, strategy: probe, seed: 1 });
    expect(o.hitTokens[1]).toBeGreaterThan(0); // a's blocks are still cached when b arrives
    expect(seen).toHaveLength(2);
    expect(seen[1]).toBe(0);
  });

  it('herds a burst onto one pod between scrapes (no booked load: upstream GIE #1700)', () => {
    const e = new Engine(testCluster(4), createStrategy('llm-d'), { seed: 1 });
    const counts = [0, 0, 0, 0];
    for (let k = 0; k < 50; k++) counts[route(e, mkReq({ id: `b${k}`, blocks: [1, 2, 3, 1000 + k], inputTokens: 64 })).instance]!++;
    expect(Math.max(...counts)).toBe(50);
  });
});
