import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseCsvSync } from 'csv-parse/sync';
import { Hash52, ragBlockIds } from '../traces/blocks.js';
import { SYNTHETIC_DEFAULTS, generateSynthetic, syntheticCatalog } from '../traces/synthetic.js';
import { NQ_DEFAULTS, loadNq, readNqQuestions } from '../traces/nq.js';
import { loadWorkload } from '../traces/load.js';
import type { KnowledgeRef, TraceRequest } from '../traces/schema.js';
import { fixtures, haveShared, nqDir } from './fixtures/traces/helpers.js';

const nqMini = join(fixtures, 'nq-mini');
const kid = (s: string) => createHash('sha256').update(s).digest('hex');

/** Number of equal leading entries. */
function commonPrefix(a: number[], b: number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

function checkBlocksInvariant(r: TraceRequest): void {
  expect(r.blocks).toHaveLength(Math.ceil(r.inputTokens / r.blockSize));
  for (const b of r.blocks) {
    expect(Number.isSafeInteger(b) && b >= 0).toBe(true);
  }
}

describe('ragBlockIds', () => {
  const A = { kid: kid('A'), tokens: 600 };
  const B = { kid: kid('B'), tokens: 300 };
  const C = { kid: kid('C'), tokens: 300 };
  const ids = (knowledge: KnowledgeRef[], question: number, salt: string, tmpl = 25, bs = 256) =>
    ragBlockIds({
      chatTemplateTokens: tmpl,
      knowledge,
      inputTokens: tmpl + knowledge.reduce((a, k) => a + k.tokens, 0) + question,
      blockSize: bs,
      requestSalt: salt,
    });

  it('has ceil(input/blockSize) ids below 2^53', () => {
    const x = ids([A, B], 40, 's'); // 25 + 900 + 40 = 965 → 4 blocks
    expect(x).toHaveLength(4);
    for (const b of x) expect(Number.isSafeInteger(b) && b >= 0 && b < 2 ** 52).toBe(true);
  });

  it('shares the knowledge-only leading blocks of the same document and not the question blocks', () => {
    const x = ids([A], 40, 'r1'); // prefix 625: blocks [0,256) [256,512) are knowledge; [512,665) mixes
    const y = ids([A], 40, 'r2');
    expect(commonPrefix(x, y)).toBe(2);
    expect(x[2]).not.toBe(y[2]);
    // deterministic
    expect(ids([A], 40, 'r1')).toEqual(x);
  });

  it('diverges at the first block touching a different second document', () => {
    const x = ids([A, B], 10, 'r1'); // prefix 925: block 2 [512,768) spans A's end and B
    const y = ids([A, C], 10, 'r2');
    expect(commonPrefix(x, y)).toBe(2);
    const z = ids([A], 10, 'r3'); // request with only A: block 2 mixes A's end + question
    expect(commonPrefix(x, z)).toBe(2);
    // same two docs, different questions: share the 3 blocks wholly inside 25 + 900 tokens
    expect(commonPrefix(x, ids([A, B], 500, 'r4'))).toBe(3);
  });

  it('a block ending exactly at the end of the knowledge is shared', () => {
    const D = { kid: kid('D'), tokens: 512 - 25 };
    expect(commonPrefix(ids([D], 5, 'a'), ids([D], 300, 'b'))).toBe(2);
  });

  it('depends on template length, block size and document order', () => {
    expect(commonPrefix(ids([A], 40, 'a', 25), ids([A], 40, 'b', 26))).toBe(0);
    expect(commonPrefix(ids([A], 40, 'a', 25, 256), ids([A], 40, 'b', 25, 128))).toBe(0);
    const E = { kid: kid('E'), tokens: 600 };
    expect(commonPrefix(ids([A, E], 40, 'a'), ids([E, A], 40, 'b'))).toBe(0);
  });

  it('property: shared leading ids = blocks wholly inside the common document prefix', () => {
    const doc = fc.record({ name: fc.integer({ min: 0, max: 5 }), tokens: fc.integer({ min: 1, max: 700 }) });
    fc.assert(
      fc.property(
        fc.array(doc, { maxLength: 4 }),
        fc.array(doc, { maxLength: 3 }),
        fc.array(doc, { maxLength: 3 }),
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 1, max: 300 }),
        fc.constantFrom(16, 64, 256),
        (common, restX, restY, qx, qy, bs) => {
          // document lengths are fixed per kid: derive tokens from the name
          const mk = (d: { name: number }) => ({ kid: kid(`doc${d.name}`), tokens: 37 + 101 * d.name });
          const cx = common.map(mk);
          const xs = [...cx, ...restX.map(mk)];
          const ys = [...cx, ...restY.map(mk)];
          let c = 0;
          while (c < xs.length && c < ys.length && xs[c]!.kid === ys[c]!.kid) c++;
          const prefix = 25 + xs.slice(0, c).reduce((a, k) => a + k.tokens, 0);
          const x = ids(xs, qx, 'x', 25, bs);
          const y = ids(ys, qy, 'y', 25, bs);
          const shared = commonPrefix(x, y);
          // both prompts run past the common prefix (each has >= 1 question token)
          expect(shared).toBe(Math.floor(prefix / bs));
          // chained: nothing after the divergence is shared
          const setY = new Set(y.slice(shared));
          expect(x.slice(shared).some((b) => setY.has(b))).toBe(false);
          const inputX = 25 + xs.reduce((a, k) => a + k.tokens, 0) + qx;
          expect(x).toHaveLength(Math.ceil(inputX / bs));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('Hash52: no collisions over 300k distinct inputs, all below 2^52', () => {
    const seen = new Set<number>();
    for (let i = 0; i < 100_000; i++) {
      seen.add(new Hash52().num(i).digest());
      seen.add(new Hash52().num(i).num(1).digest());
      seen.add(new Hash52().str(`k${i}`).digest());
    }
    expect(seen.size).toBe(300_000);
    for (const v of seen) if (!(v >= 0 && v < 2 ** 52 && Number.isInteger(v))) throw new Error(`bad id ${v}`);
  });
});

describe('synthetic workload', () => {
  it('defaults: 1000 requests with consistent lengths, blocks and arrivals', () => {
    const t = generateSynthetic();
    expect(t.meta).toMatchObject({ name: 'synthetic', format: 'synthetic', blockSize: 256, lines: 1000, skipped: 0, reordered: 0 });
    expect(t.requests).toHaveLength(1000);
    let prev = 0;
    t.requests.forEach((r, i) => {
      expect(r.id).toBe(`r${i}`);
      expect(r.blockSize).toBe(256);
      expect(r.knowledge).toHaveLength(1);
      expect(r.knowledgeTokens).toBe(r.knowledge[0]!.tokens);
      expect(r.knowledgeTokens).toBeGreaterThanOrEqual(128);
      expect(r.knowledgeTokens).toBeLessThanOrEqual(3500);
      const q = r.inputTokens - 25 - r.knowledgeTokens;
      expect(q).toBeGreaterThanOrEqual(4);
      expect(q).toBeLessThanOrEqual(200);
      expect(r.outputTokens).toBeGreaterThanOrEqual(1);
      expect(r.outputTokens).toBeLessThanOrEqual(512);
      expect(r.inputTokens + r.outputTokens).toBeLessThanOrEqual(4096);
      expect(r.arrivalMs).toBeGreaterThanOrEqual(prev);
      prev = r.arrivalMs;
      checkBlocksInvariant(r);
    });
    expect(t.requests[0]!.arrivalMs).toBe(0);
    // rate 1.5 req/s: 999 gaps of mean 666.7 ms
    const meanGap = t.requests.at(-1)!.arrivalMs / 999;
    expect(meanGap).toBeGreaterThan(600);
    expect(meanGap).toBeLessThan(740);
  });

  it('same seed → deep-equal; different seed → different', () => {
    const a = generateSynthetic({ requests: 300, seed: 7 });
    expect(generateSynthetic({ requests: 300, seed: 7 })).toEqual(a);
    expect(generateSynthetic({ requests: 300, seed: '7' })).toEqual(a);
    const b = generateSynthetic({ requests: 300, seed: 8 });
    expect(b.requests.map((r) => r.inputTokens)).not.toEqual(a.requests.map((r) => r.inputTokens));
    expect(b.requests.map((r) => r.arrivalMs)).not.toEqual(a.requests.map((r) => r.arrivalMs));
    expect(b.requests[0]!.knowledge[0]!.kid).not.toBe(a.requests[0]!.knowledge[0]!.kid);
  });

  it('catalog: kid = sha256 of the doc name, lognormal lengths around the median', () => {
    const cat = syntheticCatalog({ seed: 3 });
    expect(cat).toHaveLength(200);
    for (const d of cat) expect(d.kid).toBe(kid(d.name));
    expect(new Set(cat.map((d) => d.kid)).size).toBe(200);
    const sorted = cat.map((d) => d.tokens).sort((x, y) => x - y);
    const median = (sorted[99]! + sorted[100]!) / 2;
    expect(median).toBeGreaterThan(1000);
    expect(median).toBeLessThan(1450);
  });

  it('Zipf popularity: the top-ranked doc is the most frequent, with about its Zipf share', () => {
    const n = 5000;
    const t = generateSynthetic({ requests: n, seed: 11 });
    const cat = syntheticCatalog({ seed: 11 });
    const counts = new Map<string, number>();
    for (const r of t.requests) counts.set(r.knowledge[0]!.kid, (counts.get(r.knowledge[0]!.kid) ?? 0) + 1);
    const top = [...counts.entries()].sort((x, y) => y[1] - x[1])[0]!;
    expect(top[0]).toBe(cat[0]!.kid);
    let h = 0;
    for (let r = 1; r <= 200; r++) h += 1 / r;
    const expected = n / h; // ≈ 851
    expect(top[1]).toBeGreaterThan(expected * 0.85);
    expect(top[1]).toBeLessThan(expected * 1.15);
    expect(counts.get(cat[0]!.kid)!).toBeGreaterThan(1.5 * (counts.get(cat[1]!.kid) ?? 0));
    // zipfS = 0 is uniform: no doc gets anywhere near that share
    const u = generateSynthetic({ requests: n, seed: 11, zipfS: 0 });
    const uc = new Map<string, number>();
    for (const r of u.requests) uc.set(r.knowledge[0]!.kid, (uc.get(r.knowledge[0]!.kid) ?? 0) + 1);
    expect(Math.max(...uc.values())).toBeLessThan(3 * (n / 200));
  });

  it('requests with the same doc share leading blocks; question blocks are unique', () => {
    const t = generateSynthetic({ requests: 2000, seed: 5 });
    const byKid = new Map<string, TraceRequest[]>();
    for (const r of t.requests) byKid.set(r.knowledge[0]!.kid, [...(byKid.get(r.knowledge[0]!.kid) ?? []), r]);
    let pairs = 0;
    for (const rs of byKid.values()) {
      for (let i = 1; i < rs.length; i++) {
        const a = rs[0]!;
        const b = rs[i]!;
        const shared = Math.floor((25 + a.knowledgeTokens) / 256);
        expect(commonPrefix(a.blocks, b.blocks)).toBe(shared);
        pairs++;
      }
    }
    expect(pairs).toBeGreaterThan(1000);
    // every block holding question tokens appears in exactly one request
    const questionBlocks = new Map<number, number>();
    for (const r of t.requests) {
      const firstQ = Math.floor((25 + r.knowledgeTokens) / 256);
      for (const b of r.blocks.slice(firstQ)) questionBlocks.set(b, (questionBlocks.get(b) ?? 0) + 1);
    }
    expect(Math.max(...questionBlocks.values())).toBe(1);
  });

  it('different docs share no block (only the template lies before the knowledge)', () => {
    const t = generateSynthetic({ requests: 500, seed: 5 });
    const a = t.requests.find((r) => r.knowledgeTokens > 600)!;
    const b = t.requests.find((r) => r.knowledge[0]!.kid !== a.knowledge[0]!.kid)!;
    expect(commonPrefix(a.blocks, b.blocks)).toBe(0);
  });

  it('changing rate or arrival keeps the same requests, only arrivals change', () => {
    const a = generateSynthetic({ requests: 200, seed: 2 });
    const b = generateSynthetic({ requests: 200, seed: 2, rate: 10, arrival: 'bursty' });
    const strip = (r: TraceRequest) => ({ ...r, arrivalMs: 0 });
    expect(b.requests.map(strip)).toEqual(a.requests.map(strip));
    expect(b.requests.at(-1)!.arrivalMs).toBeLessThan(a.requests.at(-1)!.arrivalMs / 3);
  });

  it('bursty arrivals have the requested coefficient of variation; poisson has ~1', () => {
    const cv = (t: { requests: TraceRequest[] }) => {
      const g = t.requests.slice(1).map((r, i) => r.arrivalMs - t.requests[i]!.arrivalMs);
      const m = g.reduce((x, y) => x + y, 0) / g.length;
      const v = g.reduce((x, y) => x + (y - m) ** 2, 0) / g.length;
      return { mean: m, cv: Math.sqrt(v) / m };
    };
    const p = cv(generateSynthetic({ requests: 20000, seed: 9, rate: 2 }));
    expect(p.cv).toBeGreaterThan(0.93);
    expect(p.cv).toBeLessThan(1.07);
    expect(p.mean).toBeGreaterThan(475);
    expect(p.mean).toBeLessThan(525);
    const b = cv(generateSynthetic({ requests: 20000, seed: 9, rate: 2, arrival: 'bursty' }));
    expect(b.cv).toBeGreaterThan(2.4);
    expect(b.cv).toBeLessThan(3.6);
    expect(b.mean).toBeGreaterThan(400);
    expect(b.mean).toBeLessThan(600);
  });

  it('docsPerRequest > 1: distinct docs in the prefix, invariants hold', () => {
    const t = generateSynthetic({ requests: 300, docsPerRequest: 3, seed: 4, maxModelLen: 0 });
    for (const r of t.requests) {
      expect(r.knowledge).toHaveLength(3);
      expect(new Set(r.knowledge.map((k) => k.kid)).size).toBe(3);
      expect(r.knowledgeTokens).toBe(r.knowledge.reduce((a, k) => a + k.tokens, 0));
      checkBlocksInvariant(r);
    }
  });

  it('timeScale multiplies arrivals; bad options throw RangeError', () => {
    const a = generateSynthetic({ requests: 50 });
    const b = generateSynthetic({ requests: 50, timeScale: 2 });
    b.requests.forEach((r, i) => expect(r.arrivalMs).toBeCloseTo(2 * a.requests[i]!.arrivalMs, 2));
    expect(() => generateSynthetic({ requests: 0 })).toThrow(RangeError);
    expect(() => generateSynthetic({ rate: -1 })).toThrow(RangeError);
    expect(() => generateSynthetic({ docsPerRequest: 201 })).toThrow(RangeError);
    expect(() => generateSynthetic({ arrival: 'weird' as 'poisson' })).toThrow(RangeError);
  });

  it('exports its defaults', () => {
    expect(SYNTHETIC_DEFAULTS).toMatchObject({ docs: 200, zipfS: 1, docMedianTokens: 1200, docSigma: 0.6, docMinTokens: 128, docMaxTokens: 3500, requests: 1000, rate: 1.5, burstCv: 3, chatTemplateTokens: 25, blockSize: 256 });
    expect(Object.isFrozen(SYNTHETIC_DEFAULTS)).toBe(true);
  });
});

describe('NQ workload (fixture nq-mini)', () => {
  it('tokenizes questions and documents and matches dataset rows (q2 by position)', async () => {
    const qs = await readNqQuestions(nqMini);
    expect(qs.map((q) => q.name)).toEqual(['q1', 'q2', 'q3']);
    const rows = parseCsvSync(readFileSync(join(nqMini, 'dataset.csv')), { columns: true }) as Record<string, string>[];
    expect(qs.map((q) => q.kid)).toEqual(rows.slice(0, 3).map((r) => r.kdn_reference_document_id));
    expect(qs[1]!.question).toBe('In which league season was the national champion record set?');
    // Llama-3 token counts of the fixture texts (measured once with llama3-tokenizer-js)
    expect(qs.map((q) => [q.questionTokens, q.docTokens])).toEqual([
      [10, 474],
      [11, 178],
      [7, 1002],
    ]);
  });

  it('builds requests: knowledge, input = 25 + doc + question, fixed output, blocks', async () => {
    const t = await loadNq(nqMini, { requests: 60, seed: 3 });
    const qs = await readNqQuestions(nqMini);
    expect(t.meta).toMatchObject({ name: 'nq-mini', format: 'nq', blockSize: 256, lines: 3, skipped: 0, reordered: 0 });
    expect(t.requests).toHaveLength(60);
    for (const r of t.requests) {
      const q = qs.find((x) => x.question === r.question)!;
      expect(r.knowledge).toEqual([{ kid: q.kid, tokens: q.docTokens }]);
      expect(r.knowledgeTokens).toBe(q.docTokens);
      expect(r.inputTokens).toBe(25 + q.docTokens + q.questionTokens);
      expect(r.outputTokens).toBe(64);
      checkBlocksInvariant(r);
    }
    // q3 (1002-token doc): 4 leading blocks wholly inside 25 + 1002 tokens are shared
    const q3 = t.requests.filter((r) => r.knowledge[0]!.kid === qs[2]!.kid);
    expect(q3.length).toBeGreaterThan(2);
    expect(commonPrefix(q3[0]!.blocks, q3[1]!.blocks)).toBe(4);
    expect(new Set(q3.map((r) => r.blocks[4])).size).toBe(q3.length);
  });

  it('same seed → deep-equal; different seed → different', async () => {
    const a = await loadNq(nqMini, { requests: 40, seed: 1 });
    expect(await loadNq(nqMini, { requests: 40, seed: 1 })).toEqual(a);
    const b = await loadNq(nqMini, { requests: 40, seed: 2 });
    expect(b.requests.map((r) => r.question)).not.toEqual(a.requests.map((r) => r.question));
  });

  it('uniform arrivals are evenly spaced at 1000/rate ms; timeScale multiplies', async () => {
    const t = await loadNq(nqMini, { requests: 5, rate: 4, arrival: 'uniform', timeScale: 2 });
    expect(t.requests.map((r) => r.arrivalMs)).toEqual([0, 500, 1000, 1500, 2000]);
  });

  it('Zipf over questions makes q1 the most frequent', async () => {
    const t = await loadNq(nqMini, { requests: 600, zipfS: 2, seed: 4 });
    const c = [0, 0, 0];
    const qs = await readNqQuestions(nqMini);
    for (const r of t.requests) c[qs.findIndex((q) => q.question === r.question)]!++;
    // P = 1, 1/4, 1/9 normalised: 0.735, 0.184, 0.082
    expect(c[0]!).toBeGreaterThan(c[1]!);
    expect(c[1]!).toBeGreaterThan(c[2]!);
    expect(c[0]! / 600).toBeGreaterThan(0.65);
  });

  it('names the missing directory or document', async () => {
    await expect(loadNq('/nonexistent/nq')).rejects.toThrow('NQ workload directory not found: /nonexistent/nq');
    const dir = mkdtempSync(join(tmpdir(), 'kvlab-nq-'));
    cpSync(nqMini, dir, { recursive: true });
    const qs = await readNqQuestions(nqMini);
    const doc = join(dir, 'knowledge', `${qs[2]!.kid}.txt`);
    rmSync(doc);
    await expect(loadNq(dir)).rejects.toThrow(`NQ workload: document of q3 not found: ${doc}`);
    rmSync(dir, { recursive: true });
  });

  it('loadWorkload("nq") takes dir and the NQ options', async () => {
    const t = await loadWorkload('nq', { dir: nqMini, requests: 7, seed: 9 });
    expect(t.requests).toHaveLength(7);
    expect(NQ_DEFAULTS).toMatchObject({ requests: 200, rate: 1, arrival: 'poisson', zipfS: 0, outputTokens: 64 });
  });
});

describe.skipIf(!haveShared('the real CacheRoute NQ workload tests', nqDir))('NQ workload (real data)', () => {
  it('99 questions, 99 distinct documents, doc tokens within 1% of the dataset actual_doc_len', async () => {
    const qs = await readNqQuestions(nqDir);
    expect(qs).toHaveLength(99);
    expect(new Set(qs.map((q) => q.kid)).size).toBe(99);
    const rows = parseCsvSync(readFileSync(join(nqDir, 'dataset.csv')), { columns: true }) as Record<string, string>[];
    const byKid = new Map(rows.map((r) => [r.kdn_reference_document_id, r]));
    for (const q of qs) {
      const want = Number(byKid.get(q.kid)!.actual_doc_len);
      expect(Math.abs(q.docTokens - want) / want).toBeLessThan(0.01);
    }
  });

  it('default workload: 200 requests, deterministic', async () => {
    const a = await loadWorkload('nq', { dir: nqDir });
    expect(a.requests).toHaveLength(200);
    for (const r of a.requests) checkBlocksInvariant(r);
    expect(await loadWorkload('nq', { dir: nqDir })).toEqual(a);
  });
});
