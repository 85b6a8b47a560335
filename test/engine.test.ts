import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Engine } from '../engine/engine.js';
import { LinkBook } from '../engine/links.js';
import { LoadBook } from '../engine/load.js';
import { PrefixIndex } from '../engine/prefix-index.js';
import { STRATEGY_NAMES, createStrategy } from '../engine/strategies/index.js';
import { mkReq, testCluster } from './helpers/sim.js';

describe('PrefixIndex', () => {
  it('matches the brute-force contiguous prefix per instance (property, 1 and 2 mask words)', () => {
    for (const n of [5, 40]) {
      fc.assert(
        fc.property(
          fc.array(fc.tuple(fc.constantFrom('add', 'remove', 'clear'), fc.integer({ min: 0, max: n - 1 }), fc.array(fc.integer({ min: 0, max: 30 }), { maxLength: 8 })), { maxLength: 60 }),
          fc.array(fc.integer({ min: 0, max: 30 }), { maxLength: 10 }),
          (ops, query) => {
            const idx = new PrefixIndex(n, Infinity);
            const truth = Array.from({ length: n }, () => new Set<number>());
            for (const [op, i, blocks] of ops) {
              if (op === 'add') {
                idx.add(i, blocks);
                for (const b of blocks) truth[i]!.add(b);
              } else if (op === 'remove') {
                idx.remove(i, blocks);
                for (const b of blocks) truth[i]!.delete(b);
              } else {
                idx.clear(i);
                truth[i]!.clear();
              }
            }
            const out = new Int32Array(n);
            const best = idx.match(query, out);
            let bestTruth = 0;
            for (let i = 0; i < n; i++) {
              let m = 0;
              while (m < query.length && truth[i]!.has(query[m]!)) m++;
              expect(out[i]).toBe(m);
              bestTruth = Math.max(bestTruth, m);
            }
            expect(best).toBe(bestTruth);
          },
        ),
        { numRuns: 200 },
      );
    }
  });

  it('stays within its per-instance bound', () => {
    const idx = new PrefixIndex(3, 100);
    for (let k = 0; k < 50; k++) idx.add(k % 3, Array.from({ length: 40 }, (_, j) => k * 40 + j));
    for (let i = 0; i < 3; i++) expect(idx.size(i)).toBeLessThanOrEqual(100);
    expect(idx.totalEntries()).toBeLessThanOrEqual(300);
    // the newest blocks survive, the oldest were dropped
    expect(idx.has(49 % 3, 49 * 40 + 39)).toBe(true);
    expect(idx.has(0, 0)).toBe(false);
  });
});

describe('LoadBook', () => {
  it('books at dispatch, moves prefill at first token, releases at completion', () => {
    const lb = new LoadBook(2);
    lb.book('a', 0, 0, 1000, 1200, 1000, 500);
    lb.book('b', 0, 0, 200, 300, 200, 100);
    expect(lb.loads[0]!.inflight).toBe(2);
    expect(lb.loads[0]!.prefillTokens).toBe(1200);
    expect(lb.backlogMs(0, 0)).toBe(600);
    expect(lb.backlogMs(0, 250)).toBeCloseTo(350); // drains FIFO at 1 ms/ms
    lb.firstToken('a', 300);
    expect(lb.loads[0]!.prefillTokens).toBe(200);
    expect(lb.loads[0]!.decodeReqs).toBe(1);
    expect(lb.backlogMs(0, 300)).toBeCloseTo(100);
    lb.release('a', 400);
    lb.release('b', 400);
    expect(lb.loads[0]).toMatchObject({ inflight: 0, prefillTokens: 0, decodeReqs: 0, kvTokens: 0, workMs: 0 });
    expect(lb.release('a', 500)).toBe(false);
  });
});

describe('LinkBook', () => {
  it('serialises transfers FIFO per link and re-chains on completion', () => {
    const l = new LinkBook(1, 2);
    expect(l.reserve('a', 0, 0, 0, 100)).toBe(0);
    expect(l.reserve('b', 0, 0, 10, 50)).toBe(100);
    expect(l.reserve('c', 0, 1, 10, 50)).toBe(10); // other link independent
    expect(l.waitMs(0, 0, 20)).toBe(130);
    l.done('a', 80); // finished early: b now predicted 80..130
    expect(l.freeAt(0, 0)).toBe(130);
    l.done('b', 120);
    expect(l.freeAt(0, 0)).toBe(120);
  });
});

describe('Engine', () => {
  it('a burst of 1,000 simultaneous requests spreads across instances (load booked at dispatch)', () => {
    for (const name of ['kvlab', 'dynamo-kv', 'least-load', 'least-inflight', 'round-robin', 'cacheroute', 'sglang-router', 'sglang-gateway', 'aibrix-prefix', 'mooncake', 'mooncake-local']) {
      const e = new Engine(testCluster(8), createStrategy(name), { seed: 3 });
      const counts = new Array(8).fill(0);
      for (let k = 0; k < 1000; k++) {
        // every prompt shares a 4-block prefix, then unique blocks
        const r = mkReq({ id: `b${k}`, blocks: [1, 2, 3, 4, 1000 + k * 3, 1001 + k * 3, 1002 + k * 3], inputTokens: 112, outputTokens: 20 });
        const d = e.decide(r, 0);
        e.onDispatch(r, d, 0);
        counts[d.instance]++;
      }
      const max = Math.max(...counts);
      expect(max, `${name}: ${counts.join(',')}`).toBeLessThanOrEqual(250);
      expect(Math.min(...counts), `${name}: ${counts.join(',')}`).toBeGreaterThan(0);
    }
  });

  it('every decision carries a predicted breakdown and the scored alternatives', () => {
    for (const name of STRATEGY_NAMES) {
      const e = new Engine(testCluster(4), createStrategy(name), { seed: 1 });
      const r = mkReq({ id: 'x', blocks: [5, 6, 7], inputTokens: 1400, outputTokens: 10, knowledge: [{ kid: 'k1', tokens: 1200 }], knowledgeTokens: 1200 });
      const d = e.decide(r, 0);
      expect(d.alternatives.length, name).toBeGreaterThan(0);
      expect(d.predicted.ttftMs, name).toBeGreaterThan(0);
      const p = d.predicted;
      expect(p.ttftMs).toBeCloseTo(p.prepareMs + p.linkWaitMs + p.transferMs + p.queueMs + p.kvLoadMs + p.prefillMs, 6);
      expect(['text', 'kvcache', 'hybrid']).toContain(d.intent);
    }
  });

  it('prefers the instance that holds the prefix when loads are equal (kvlab, dynamo-kv, sglang, radixmesh)', () => {
    for (const name of ['kvlab', 'dynamo-kv', 'sglang-router', 'sglang-gateway', 'radixmesh', 'mooncake', 'mooncake-local']) {
      const e = new Engine(testCluster(4), createStrategy(name), { seed: 1 });
      const blocks = Array.from({ length: 40 }, (_, j) => 500 + j);
      const warm = mkReq({ id: 'w', blocks, inputTokens: 640 });
      const d0 = e.decide(warm, 0);
      e.onDispatch(warm, d0, 0);
      e.onKvEvent({ instance: d0.instance, kind: 'stored', blocks });
      e.onComplete('w', 1000);
      const r = mkReq({ id: 'r', blocks: [...blocks, 9999], inputTokens: 650 });
      expect(e.decide(r, 2000).instance, name).toBe(d0.instance);
    }
  });

  it('kvlab picks kvcache on a fast link and text on a slow one for a long document', () => {
    const req = () => mkReq({ id: 'q', blocks: [], inputTokens: 3300, outputTokens: 10, knowledge: [{ kid: 'doc', tokens: 3200 }], knowledgeTokens: 3200 });
    const fast = new Engine(testCluster(2, {}, 100), createStrategy('kvlab'));
    expect(fast.decide(req(), 0).intent).toBe('kvcache');
    const slow = new Engine(testCluster(2, {}, 0.1), createStrategy('kvlab'));
    expect(slow.decide(req(), 0).intent).toBe('text');
  });

  it('kvlab splits (hybrid) when the link would otherwise delay the request past the queue', () => {
    // a busy instance (backlog) and a moderate link: part of the document hides behind the queue
    const c = testCluster(1, {}, 2);
    const e = new Engine(c, createStrategy('kvlab'));
    const filler = mkReq({ id: 'f', blocks: [], inputTokens: 2000, outputTokens: 10 });
    e.onDispatch(filler, e.decide(filler, 0), 0);
    const r = mkReq({ id: 'q', blocks: [], inputTokens: 3400, outputTokens: 10, knowledge: [{ kid: 'doc', tokens: 3300 }], knowledgeTokens: 3300 });
    const d = e.decide(r, 0);
    const byIntent = new Map<string, number>();
    for (const a of d.alternatives) byIntent.set(a.intent, Math.min(byIntent.get(a.intent) ?? Infinity, a.ttftMs ?? Infinity));
    // the chosen option is the cheapest one considered
    expect(d.predicted.ttftMs).toBeCloseTo(Math.min(...byIntent.values()), 3);
    expect(byIntent.has('hybrid')).toBe(true);
  });

  it('cacheroute IWS follows its rule: kvcache iff kv_score + 100 < text_score', () => {
    const req = () => mkReq({ id: 'q', inputTokens: 3300, outputTokens: 10, knowledge: [{ kid: 'doc', tokens: 3200 }], knowledgeTokens: 3200 });
    expect(new Engine(testCluster(2, {}, 100), createStrategy('cacheroute')).decide(req(), 0).intent).toBe('kvcache');
    expect(new Engine(testCluster(2, {}, 0.1), createStrategy('cacheroute')).decide(req(), 0).intent).toBe('text');
  });

  it('an instance taken down gets no requests and its booked load is released', () => {
    const e = new Engine(testCluster(3), createStrategy('least-load'));
    const a = mkReq({ id: 'a', inputTokens: 100 });
    const d = e.decide(a, 0);
    e.onDispatch(a, d, 0);
    const released = e.onInstanceDown(d.instance, 1);
    expect(released).toEqual(['a']);
    expect(e.loads.loads[d.instance]!.inflight).toBe(0);
    for (let k = 0; k < 20; k++) expect(e.decide(mkReq({ id: `z${k}` }), 2).instance).not.toBe(d.instance);
  });

  it('rejects unknown strategies and parameters with a clear message', () => {
    expect(() => createStrategy('nope')).toThrow(/unknown strategy "nope"/);
    expect(() => createStrategy('dynamo-kv', { overlap: 2 })).toThrow(/unknown parameter "overlap"/);
    expect(() => createStrategy('round-robin', { intent: 'pigeon' })).toThrow(/intent must be/);
  });
});

describe('KV memory in the predictor', () => {
  it('ActiveBlocks counts shared prefix blocks once per instance', async () => {
    const { ActiveBlocks } = await import('../engine/active-blocks.js');
    const a = new ActiveBlocks(2);
    a.add(0, [1, 2, 3]);
    a.add(0, [1, 2, 9]);
    a.add(1, [1]);
    expect(Array.from(a.distinct)).toEqual([4, 1]);
    a.remove(0, [1, 2, 3]);
    expect(Array.from(a.distinct)).toEqual([3, 1]);
    expect(a.counts(1)).toEqual(Int32Array.from([1, 1]));
    a.clear(0);
    expect(a.distinct[0]).toBe(0);
    expect(a.counts(9)).toBeUndefined();
  });

  it('a request that does not fit beside the decoding requests waits for their KV, less when its prefix is shared', () => {
    // 300k-token KV; 20 decoding requests of 14.5k tokens (+200 output each) hold 294k
    const e = new Engine(testCluster(1), createStrategy('least-load'), { seed: 1 });
    for (let k = 0; k < 20; k++) {
      const r = mkReq({ id: `d${k}`, blocks: Array.from({ length: 907 }, (_, j) => 100_000 * (k + 1) + j), inputTokens: 14_500 });
      r.maxTokens = 200;
      e.onDispatch(r, e.decide(r, 0), 0);
      e.onFirstToken(`d${k}`, 1);
    }
    const big = mkReq({ id: 'big', blocks: Array.from({ length: 1000 }, (_, j) => 5_000_000 + j), inputTokens: 16_000 });
    big.maxTokens = 100;
    const small = mkReq({ id: 'small', blocks: Array.from({ length: 10 }, (_, j) => 6_000_000 + j), inputTokens: 160 });
    small.maxTokens = 100;
    const pBig = e.context(big, 2).predict(0, 'none');
    const pSmall = e.context(small, 2).predict(0, 'none');
    expect(pBig.queueMs).toBeGreaterThan(100);
    expect(pSmall.queueMs).toBeLessThan(10);
    // sharing the decoders' prompt blocks: the shared part needs no new KV
    const shared = mkReq({ id: "shared", blocks: [...Array.from({ length: 907 }, (_, j) => 100_000 + j), ...Array.from({ length: 93 }, (_, j) => 7_000_000 + j)], inputTokens: 16_000 });
    shared.maxTokens = 100;
    e.onKvEvent({ instance: 0, kind: 'stored', blocks: shared.blocks.slice(0, 907) });
    expect(e.context(shared, 2).predict(0, 'none').queueMs).toBeLessThan(pBig.queueMs / 2);
  });
});
