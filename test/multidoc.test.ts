/**
 * Multi-document RAG requests: prefix reuse along the document sequence, document-order
 * canonicalisation (knowledge tree), blend (CacheBlend) and overlapped hybrid (Cake), in the
 * engine's predictor and in the simulated instance.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { KnowledgeTree } from '../engine/doc-order.js';
import { Engine, type Strategy } from '../engine/engine.js';
import { blendRecomputeTokens, blendSpans, kdnCoverage, spanTokensFrom } from '../engine/knowledge.js';
import { emptyPrediction, overlapMeetSplit, predictInto, type PredictInput } from '../engine/predict.js';
import { LoadBook } from '../engine/load.js';
import { createStrategy } from '../engine/strategies/index.js';
import { BLEND_DEFAULTS, type ClusterSpec, type InstanceSpec, type Intent, type KdnSpec, type KnowledgeRef, type LinkSpec, type Profile, type TraceRequest } from '../engine/types.js';
import { instanceSpecFromProfile } from '../sim/profiles.js';
import { observed, summarize } from '../sim/metrics.js';
import { simulate } from '../sim/simulator.js';
import { ragRequest, reorderRequest } from '../traces/blocks.js';
import { retrieveDocuments, contentWords } from '../traces/nq.js';
import { RAG_DEFAULTS, generateSynthetic } from '../traces/synthetic.js';
import { testCluster, testProfile } from './helpers/sim.js';
import { payoffCells, winnersMarkdown } from '../notebooks/analyses/kv-payoff.js';
import type { SweepEntry } from '../notebooks/types.js';

const kid = (s: string): string => createHash('sha256').update(s).digest('hex');
const doc = (name: string, tokens: number): KnowledgeRef => ({ kid: kid(name), tokens });

/** A RAG request: 25 template tokens, the documents, then `question` tokens. */
function rag(index: number, docs: KnowledgeRef[], question: number, arrivalMs = 0, outputTokens = 1): TraceRequest {
  const input = 25 + docs.reduce((a, d) => a + d.tokens, 0) + question;
  return ragRequest({ index, arrivalMs, timeScale: 1, inputTokens: input, outputTokens, blockSize: 256, chatTemplateTokens: 25, knowledge: docs, requestSalt: `t/${index}` });
}

/** Predictor input of `req` on an idle instance with no local hit. */
function idleInput(inst: InstanceSpec, req: TraceRequest, intent: Intent, reuseTokens: number, kdn: KdnSpec, link: LinkSpec): PredictInput {
  return { inst, load: new LoadBook(1).loads[0]!, backlogMs: 0, promptTokens: req.inputTokens, outputTokens: 1, knowledgeTokens: req.knowledgeTokens, cachedTokens: 0, intent, reuseTokens, kdn, link, linkWaitMs: 0 };
}

const A = doc('A', 600);
const B = doc('B', 600);
const C = doc('C', 600);
const D = doc('D', 600);

describe('prefix reuse follows the document sequence', () => {
  it('stops at the first differing document: [A,B,C] then [A,D,C] reuses A only, not C', () => {
    const r1 = rag(0, [A, B, C], 40, 0);
    const r2 = rag(1, [A, D, C], 40, 60_000);
    const r3 = rag(2, [A, B, C], 30, 120_000);
    const o = simulate([r1, r2, r3], { cluster: testCluster(1), strategy: createStrategy('round-robin') });
    // 25 + 600 tokens: blocks 0 and 1 lie wholly inside template + A
    expect(o.hitTokens[1]).toBe(512);
    // the same sequence shares every block wholly inside 25 + 1800 tokens
    expect(o.hitTokens[2]).toBe(Math.floor(1825 / 256) * 256);
  });

  it('KDN prefix coverage: the first document only, unless the KDN holds sequences', () => {
    const c = testCluster(1);
    const r = rag(0, [A, B, C], 40);
    expect(kdnCoverage(c, r)).toEqual([512]); // floor(600/256)·256
    c.kdns[0] = { ...c.kdns[0]!, sequences: true };
    expect(kdnCoverage(c, r)).toEqual([1792]); // floor(1800/256)·256
    // a KDN missing the second document stops there even with sequences
    c.kdns[0] = { ...c.kdns[0]!, knowledge: new Set([A.kid, C.kid]) };
    expect(kdnCoverage(c, r)).toEqual([512]);
  });

  it('blend spans: every document the KDN holds, whole (one LMCache segment each), wherever it sits', () => {
    const r = rag(0, [A, B, C], 40);
    const kd = { id: 'k', compression: 1, knowledge: new Set([A.kid, C.kid]), textFetchMs: 0 };
    expect(blendSpans(kd, r, 256)).toEqual([
      [25, 625],
      [1225, 1825],
    ]);
    expect(spanTokensFrom(blendSpans(kd, r, 256), 512)).toBe(625 - 512 + 600);
  });

  it('reorderRequest rebuilds the block ids of the new order', () => {
    const r = rag(7, [B, A], 40);
    const same = rag(7, [A, B], 40);
    const x = reorderRequest(r, [A, B]);
    expect(x.knowledge.map((d) => d.kid)).toEqual([A.kid, B.kid]);
    expect(x.blocks).toEqual(same.blocks);
    expect(reorderRequest(r, r.knowledge)).toBe(r);
    expect(() => reorderRequest(r, [A, C])).toThrow(RangeError);
  });
});

describe('document-order canonicalisation (knowledge tree)', () => {
  it('follows the most-travelled dispatched path, then popularity, then kid', () => {
    const t = new KnowledgeTree();
    t.observe([A, B]);
    t.observe([A, B, C]);
    t.observe([C]);
    // path A → B exists; D is unknown, C popular (2)
    expect(t.order([D, C, B, A]).map((d) => d.kid)).toEqual([A, B, C, D].map((d) => d.kid));
    expect(t.pathCount([A.kid, B.kid])).toBe(2);
    // off the tree from the root: by popularity (C 2 = A 2 > D 0; A/C tie by kid)
    const byPop = t.order([D, C]).map((d) => d.kid);
    expect(byPop).toEqual([C.kid, D.kid]);
    // bounded
    const small = new KnowledgeTree({ maxNodes: 10 });
    for (let i = 0; i < 50; i++) small.observe([doc(`x${i}`, 10), doc(`y${i}`, 10)]);
    expect(small.size).toBeLessThanOrEqual(10);
  });

  it('raises the prefix hit ratio on a workload built to show it (shuffled top-3 of 8 documents)', () => {
    const t = generateSynthetic({ requests: 300, rate: 0.5, docs: 8, zipfS: 1.2, docsPerRequest: 3, docOrder: 'shuffled', docMedianTokens: 600, docSigma: 0.2, seed: 3 });
    const run = (reorderDocuments: boolean) => {
      const o = simulate(t.requests, { cluster: testCluster(2), strategy: createStrategy('kvlab'), reorderDocuments });
      return { s: summarize(o, observed(o)), o };
    };
    const off = run(false);
    const on = run(true);
    expect(on.s.prefix_hit_ratio).toBeGreaterThan(off.s.prefix_hit_ratio + 0.1);
    expect(on.s.ttft_ms.mean!).toBeLessThan(off.s.ttft_ms.mean!);
    // the outcome records the order sent; the input is untouched
    expect(on.o.requests.some((r, i) => r.knowledge[0]!.kid !== t.requests[i]!.knowledge[0]!.kid)).toBe(true);
    expect(off.o.requests).toBe(t.requests);
  });
});

describe('blend (CacheBlend)', () => {
  it('recomputes (checkLayer + 1)/layers of the reused tokens plus the ratio of the rest', () => {
    // 1024 × (2/80 + 0.15 × 78/80) = 175.36 → 176
    expect(blendRecomputeTokens(1024, BLEND_DEFAULTS, 80)).toBe(176);
    expect(blendRecomputeTokens(1024, { recomputeRatio: 0, checkLayer: 1 }, 80)).toBe(Math.ceil(1024 * 0.025));
    expect(blendRecomputeTokens(100, { recomputeRatio: 1, checkLayer: 0 }, 80)).toBe(100);
    expect(blendRecomputeTokens(0, BLEND_DEFAULTS, 80)).toBe(0);
  });

  it('prices a hand-computable case: transfer + hidden load + recompute + the rest', () => {
    const prof = testProfile();
    const inst = { ...instanceSpecFromProfile(prof, 0), blend: { ...BLEND_DEFAULTS } };
    const r = rag(0, [A, B], 75); // P = 25 + 1200 + 75 = 1300; spans [25,625) [625,1225) → 1200 tokens
    const spans = blendSpans({ id: 'k', compression: 3.41, knowledge: null, textFetchMs: 4 }, r, 256);
    const loaded = spanTokensFrom(spans, 0);
    expect(loaded).toBe(1200);
    const p: PredictInput = {
      ...idleInput(inst, r, 'blend', 0, { id: 'k', compression: 3.41, knowledge: null, textFetchMs: 4 }, { bandwidthGbps: 10, latencyMs: 0.5, efficiency: 0.825 }),
      blendTokens: loaded,
      blendRecompute: blendRecomputeTokens(loaded, inst.blend, 80),
    };
    const out = predictInto(emptyPrediction(), p);
    // recompute: ceil(1200 × (2/80 + 0.15 × 78/80)) = ceil(205.5) = 206
    expect(p.blendRecompute).toBe(206);
    expect(out.transferTokens).toBe(1200);
    expect(out.computeTokens).toBe(1300 - 1200 + 206);
    // wire 1200 × 327,680 / 3.41 B at 10 Gbit/s × 0.825 = 1,031,250 B/ms, + 0.5 ms
    expect(out.transferMs).toBeCloseTo((1200 * 327680) / 3.41 / 1_031_250 + 0.5, 6);
    // load 12.46 + 2764.34 × 1200 × 40,960 / 2^30 = 139.0 ms < recompute of 206 tokens: hidden
    expect(out.kvLoadMs).toBe(0);
    // the 306 computed tokens in one chunk from position 994:
    // 23.5 + 8 + curve(306) = 200 + 1200·50/768 + attention 1.456705729 · 306·(994 + 153)/53,800
    const slope = 17900 / 12288;
    const prefill = 23.5 + 8 + 200 + (1200 * 50) / 768 + (slope * 306 * (994 + 153)) / 53800;
    expect(out.prefillMs).toBeCloseTo(prefill + 15, 6);
    // every knowledge token comes as KV: no text fetch from the KDN (prepare 0)
    expect(out.prepareMs).toBe(0);
    expect(out.ttftMs).toBeCloseTo(out.transferMs + 3 + prefill + 15, 6);
    // and the simulated instance charges the same
    const c: ClusterSpec = { ...testCluster(1), instances: [inst] };
    const o = simulate([r], { cluster: c, strategy: createStrategy('round-robin', { intent: 'blend' }) });
    expect(o.decisions.intent(0)).toBe('blend');
    expect(o.loadTokens[0]).toBe(1200);
    expect(observed(o).ttft[0]).toBeCloseTo(out.ttftMs, 6);
  });

  it('needs the capability: blend on an instance that does not declare it falls back to kvcache', () => {
    const e = new Engine(testCluster(1), createStrategy('round-robin', { intent: 'blend' }));
    const d = e.decide(rag(0, [A, B], 40), 0);
    expect(d.intent).toBe('kvcache');
    expect(d.reason).toContain('no-blend-capability');
    expect(d.reusedTokens).toBe(512);
  });

  it('kvlab blends multi-document requests on blending instances (first document only otherwise)', () => {
    const c = testCluster(2);
    c.instances = c.instances.map((s) => ({ ...s, blend: { ...BLEND_DEFAULTS } }));
    const e = new Engine(c, createStrategy('kvlab'));
    const d = e.decide(rag(0, [A, B, C], 40), 0);
    expect(d.intent).toBe('blend');
    expect(d.reusedTokens).toBe(3 * 600);
    expect(d.alternatives.some((a) => a.intent === 'blend')).toBe(true);
    const plain = new Engine(testCluster(2), createStrategy('kvlab')).decide(rag(0, [A, B, C], 40), 0);
    expect(plain.alternatives.some((a) => a.intent === 'blend')).toBe(false);
  });
});

/** 1 ms per computed token, no fixed costs or attention; I/O 0.5 + 0.5 ms per token. */
function linearProfile(): Profile {
  const p = testProfile();
  return {
    ...p,
    model: { ...p.model, kvBytesPerToken: 1_000_000 },
    step: { ...p.step, fixedMs: 0, prefillSeqMs: 0, decodeSeqMs: 0, knots: [0, 16384], values: [0, 16384], attnTokens: 1e15, kvReadMsPerToken: 0, apiMs: 0, frontendMsPerRequest: 0 },
    kvLoad: { fixedMs: 0, msPerGB: 0.5 * 1073741824 / 1_000_000, bytesPerToken: 1_000_000 },
  };
}

describe('overlapped hybrid (Cake)', () => {
  const symmetric = () => {
    const inst = { ...instanceSpecFromProfile(linearProfile(), 0), overlap: true };
    const cluster: ClusterSpec = {
      instances: [inst],
      kdns: [{ id: 'kdn0', compression: 1, knowledge: null, textFetchMs: 0 }],
      // 16 Gbit/s × 1 = 2e6 B/ms: 0.5 ms per 1 MB token, no latency
      links: [[{ bandwidthGbps: 16, latencyMs: 0, efficiency: 1 }]],
      kvEventDelayMs: 0,
      chunkTokens: 256,
    };
    const req: TraceRequest = { id: 'q', arrivalMs: 0, inputTokens: 2148, outputTokens: 1, blockSize: 256, blocks: [], knowledge: [doc('K', 2048)], knowledgeTokens: 2048 };
    return { inst, cluster, req };
  };

  it('splits in the middle on a symmetric case (compute per token = load per token)', () => {
    const { inst, req } = symmetric();
    const p = idleInput(inst, req, 'overlap', 2048, { id: 'kdn0', compression: 1, knowledge: null, textFetchMs: 0 }, { bandwidthGbps: 16, latencyMs: 0, efficiency: 1 });
    expect(overlapMeetSplit(p, 256)).toBe(1024);
    const out = predictInto(emptyPrediction(), p);
    // head 1024 ms ‖ tail transfer 512 + load 512 ms, then the 100 question tokens
    expect(out.transferTokens).toBe(1024);
    expect(out.ttftMs).toBeCloseTo(1024 + 100, 6);
    // kvcache (load everything, then compute) and text both take 2148 ms here
    expect(predictInto(emptyPrediction(), { ...p, intent: 'kvcache' }).ttftMs).toBeCloseTo(2048 + 100, 6);
    expect(predictInto(emptyPrediction(), { ...p, intent: 'text' }).ttftMs).toBeCloseTo(2148, 6);
    // a link twice as slow moves the split towards the end (more computed): 2048·(1.5/2.5) ≈ 1228.8 → 1280
    expect(overlapMeetSplit({ ...p, link: { bandwidthGbps: 8, latencyMs: 0, efficiency: 1 } }, 256)).toBe(1280);
  });

  it('the simulated instance really overlaps: head computed while the tail loads', () => {
    const { cluster, req } = symmetric();
    const o = simulate([req], { cluster, strategy: createStrategy('kvlab') });
    const d = o.decisions.get(0);
    expect(d.intent).toBe('overlap');
    expect(d.overlapSplit).toBe(1024);
    expect(o.transferTokens[0]).toBe(1024);
    expect(o.loadTokens[0]).toBe(1024);
    expect(observed(o).ttft[0]).toBeCloseTo(1124, 6);
    // without the capability kvlab cannot overlap: 2148 ms whatever it picks
    const plain = { ...cluster, instances: [{ ...cluster.instances[0]!, overlap: false }] };
    const o2 = simulate([req], { cluster: plain, strategy: createStrategy('kvlab') });
    expect(o2.decisions.intent(0)).not.toBe('overlap');
    expect(observed(o2).ttft[0]).toBeCloseTo(2148, 6);
  });

  it('a tail slower than the head stalls the request until it has arrived', () => {
    const { cluster, req } = symmetric();
    // a fixed split at 1024 on a slow link: 0.25 Gbit/s = 31,250 B/ms → 32 ms per 1 MB token
    const slow = { ...cluster, links: [[{ bandwidthGbps: 0.25, latencyMs: 0, efficiency: 1 }]] };
    const fixed: Strategy = { name: 'fixed-split', decide: () => ({ instance: 0, intent: 'overlap', reuseTokens: 1024, alternatives: [], reason: 'test' }) };
    const o = simulate([req], { cluster: slow, strategy: fixed });
    const d = o.decisions.get(0);
    expect(d.intent).toBe('overlap');
    expect(d.overlapSplit).toBe(1024);
    // head done at 1024 ms; the tail arrives at 1024 × (32 + 0.5) ms; then the 100 question tokens
    expect(observed(o).ttft[0]).toBeCloseTo(1024 * 32.5 + 100, 6);
    expect(d.predicted.ttftMs).toBeCloseTo(1024 * 32.5 + 100, 6);
    // kvlab on that link computes everything instead (2148 ms)
    expect(observed(simulate([req], { cluster: slow, strategy: createStrategy('kvlab') })).ttft[0]).toBeCloseTo(2148, 6);
  });
});

describe('multi-document workloads', () => {
  it('synthetic: k uniform on [docsPerRequest, docsPerRequestMax], shuffled order, trimmed to the window', () => {
    const t = generateSynthetic({ requests: 2000, docsPerRequest: 3, docsPerRequestMax: 5, docOrder: 'shuffled', seed: 2 }, RAG_DEFAULTS, 'rag');
    const counts = [0, 0, 0, 0, 0, 0];
    for (const r of t.requests) {
      counts[r.knowledge.length]!++;
      expect(new Set(r.knowledge.map((d) => d.kid)).size).toBe(r.knowledge.length);
      expect(r.inputTokens + 1).toBeLessThanOrEqual(4096);
      expect(r.layout).toEqual({ headTokens: 25, salt: `synthetic/2/${r.id.slice(1)}` });
    }
    for (const k of [3, 4, 5]) expect(counts[k]! / 2000).toBeGreaterThan(0.25);
    // shuffled: the most popular document is not always first
    const first = t.requests.filter((r) => r.knowledge.some((d) => d.kid === t.requests[0]!.knowledge[0]!.kid));
    expect(first.length).toBeGreaterThan(10);
    // a tight window drops trailing documents, never the first
    const w = generateSynthetic({ requests: 200, docsPerRequest: 5, maxModelLen: 1200, seed: 2 }, RAG_DEFAULTS);
    for (const r of w.requests) {
      expect(r.knowledge.length).toBeGreaterThanOrEqual(1);
      if (r.knowledge.length > 1) expect(r.inputTokens + 1).toBeLessThanOrEqual(1200);
    }
    expect(() => generateSynthetic({ docsPerRequest: 3, docsPerRequestMax: 2 })).toThrow('docsPerRequestMax');
    expect(() => generateSynthetic({ docOrder: 'random' as 'shuffled' })).toThrow('docOrder');
  });

  it('NQ retrieval: word overlap, best first, ties by kid, deterministic', () => {
    const docs = [
      { kid: 'c', words: contentWords('The Arjuna Award is given to athletes in India') },
      { kid: 'a', words: contentWords('Basketball scoring leaders of the NBA') },
      { kid: 'b', words: contentWords('The Arjuna award ceremony') },
    ];
    expect([...contentWords('What is the Arjuna Award?')]).toEqual(['arjuna', 'award']);
    expect(retrieveDocuments('What is the Arjuna Award given to athletes?', docs, 2)).toEqual([0, 2]);
    // a tie (both share "arjuna award") goes to the smaller kid
    expect(retrieveDocuments('Arjuna award', docs, 3)).toEqual([2, 0, 1]);
  });
});

describe('fixed hybrid and the kv-payoff winner map', () => {
  it('a fixed hybrid intent gets the sequential split with the smallest predicted TTFT', () => {
    const c = testCluster(1);
    const long = doc('L', 2048);
    const r = rag(0, [long], 40);
    const e = new Engine(c, createStrategy('round-robin', { intent: 'hybrid' }));
    const d = e.decide(r, 0);
    // an interior chunk multiple strictly below the KDN's 2048-token coverage
    expect(d.intent).toBe('hybrid');
    expect(d.reusedTokens % 256).toBe(0);
    expect(d.reusedTokens).toBeGreaterThan(0);
    expect(d.reusedTokens).toBeLessThan(2048);
    const ctx = e.context(r, 0);
    for (let x = 256; x < 2048; x += 256) expect(ctx.predict(0, 'hybrid', x).ttftMs).toBeGreaterThanOrEqual(d.predicted.ttftMs - 1e-9);
  });

  it('payoffCells: the lowest mean TTFT per cell, its margin, kvlab beside it', () => {
    const entry = (strategy: string, seed: number, ttft: number, mix: Record<string, number> = {}): SweepEntry => ({
      params: { kdn_gbps: 10, 'workload.docsPerRequest': 4, 'workload.docMedianTokens': 512 },
      strategy,
      seed,
      summary: { strategy, seed, requests: 10, completed: 10, rejected: 0, failed: 0, prefix_hit_ratio: 0, ttft_ms: { mean: ttft, p50: ttft, p90: ttft, p99: ttft }, tpot_ms: { mean: 1, p50: 1, p90: 1, p99: 1 }, e2e_ms: { mean: 1, p50: 1, p90: 1, p99: 1 }, throughput_rps: 1, duration_ms: 1, intent_mix: mix },
    });
    const cells = payoffCells([entry('text', 1, 3000), entry('text', 2, 3200), entry('blend', 1, 1000), entry('blend', 2, 1200), entry('kvcache', 1, 2000), entry('kvcache', 2, 2400), entry('kvlab', 1, 900, { blend: 8, text: 2 }), entry('kvlab', 2, 950, { blend: 9, text: 1 })]);
    expect(cells).toHaveLength(1);
    const c = cells[0]!;
    expect(c).toMatchObject({ bandwidth: 10, docs: 4, length: 512, winner: 'blend', ttft: 1100, second: 'kvcache', kvlab: 925 });
    expect(c.margin).toBeCloseTo((100 * (2200 - 1100)) / 2200, 9);
    expect(c.kvlabMix).toEqual({ blend: 17, text: 3 });
    expect(winnersMarkdown(cells)).toContain('**blend** 1100 ms (−50 % vs kvcache; kvlab 925)');
  });
});
