/**
 * A stand-in for the Mooncake FAST'25 synthetic trace (kvcache-ai/Mooncake
 * FAST25-release/traces/synthetic_trace.jsonl, not shipped in ../shared): "ShareGPT, Leval and
 * LooGLE mixed 1:1:1, multi-turn order preserved, Poisson arrivals" (Qin et al., FAST'25 §5.1,
 * Table 2: 3,993 requests, average input 15,325 tokens, average output 149, cache ratio 66 %).
 *
 * Three request kinds, one third of the requests each:
 * - chat (ShareGPT-like): sessions of 1 + geometric(turnsMean − 1) turns; turn k's prompt is the
 *   previous prompt + its answer + a new user message (lognormal), so it shares every complete
 *   512-token block of the previous prompt;
 * - long-document QA (LEval-like, LooGLE-like): a document (lognormal length) asked
 *   1 + geometric(questionsMean − 1) questions; every request is document + question, sharing the
 *   document's complete blocks.
 * Block ids are chained as in Mooncake traces (one id per block and everything before it; the
 * partial last block is unique). Sessions are interleaved in a seeded random order that keeps each
 * session's turns in order, then Poisson arrival times at `rate` are laid on that order.
 * The default lengths were set so that the generated statistics match Table 2 (printed by
 * `mooncakeSyntheticStats`); no simulator output was used.
 */
import { exponential, lognormalInt, makeRng, type Rng } from './random.js';
import type { TraceRequest } from './schema.js';

/** Options of the Mooncake-like synthetic trace (tokens, requests/s). */
export interface MooncakeSyntheticOptions {
  requests: number;
  /** Poisson arrival rate, requests/s. */
  rate: number;
  seed: number | string;
  /** mean turns of a chat session. */
  turnsMean: number;
  /** first chat prompt (system + first message): lognormal median (tokens). */
  chatFirstMedian: number;
  /** a later user message: lognormal median (tokens). */
  chatTurnMedian: number;
  /** LEval-like document length, lognormal median (tokens). */
  levalMedian: number;
  /** LooGLE-like document length, lognormal median (tokens). */
  loogleMedian: number;
  /** log-sigma of document lengths. */
  docSigma: number;
  /** mean questions per document. */
  questionsMean: number;
  /** output length: lognormal median (tokens), log-sigma. */
  outputMedian: number;
  outputSigma: number;
  /** longest prompt (tokens): LLaMA3-70B's 128 K context minus the longest output. */
  maxInput: number;
}

/** Defaults chosen to match Table 2 of the paper (see `mooncakeSyntheticStats`). */
export const MOONCAKE_SYNTHETIC_DEFAULTS: Readonly<MooncakeSyntheticOptions> = Object.freeze({
  requests: 3993,
  rate: 1,
  seed: 1,
  turnsMean: 4,
  chatFirstMedian: 1200,
  chatTurnMedian: 250,
  levalMedian: 14000,
  loogleMedian: 24000,
  docSigma: 0.6,
  questionsMean: 3,
  outputMedian: 110,
  outputSigma: 0.8,
  maxInput: 120_000,
});

/** Table 2 of the paper, synthetic workload. */
export const MOONCAKE_SYNTHETIC_TABLE2 = { requests: 3993, avgInput: 15325, avgOutput: 149, cacheRatio: 0.66 } as const;

const BLOCK = 512;

/** 1 + geometric with mean `mean` (>= 1). */
function countWithMean(rng: Rng, mean: number): number {
  const p = 1 / Math.max(1, mean);
  let k = 1;
  while (rng() > p && k < 64) k++;
  return k;
}

/**
 * Generates the trace (module doc). Deterministic for the options.
 * @returns requests sorted by arrival, 512-token chained blocks, no knowledge
 * @throws RangeError for a non-positive request count or rate
 */
export function generateMooncakeSynthetic(opts: Partial<MooncakeSyntheticOptions> = {}): TraceRequest[] {
  const o = { ...MOONCAKE_SYNTHETIC_DEFAULTS, ...opts };
  if (!(o.requests >= 1) || !(o.rate > 0)) throw new RangeError(`mooncake synthetic: requests must be >= 1 and rate > 0, got ${o.requests}, ${o.rate}`);
  const rng = makeRng(o.seed, 'mooncake-synthetic');
  let nextId = 1;
  const fresh = () => nextId++;
  /** one session = its prompts in order, as [input, output, blocks]. */
  const sessions: Array<Array<{ input: number; output: number; blocks: number[] }>> = [];
  let total = 0;
  let kind = 0;
  const out = () => lognormalInt(rng, o.outputMedian, o.outputSigma, 1, 2048);
  while (total < o.requests) {
    const s: Array<{ input: number; output: number; blocks: number[] }> = [];
    const k = kind++ % 3;
    if (k === 0) {
      // chat: each turn extends the previous prompt by its answer and a new message
      const turns = countWithMean(rng, o.turnsMean);
      let input = lognormalInt(rng, o.chatFirstMedian, 0.7, 32, o.maxInput);
      let blocks: number[] = [];
      for (let t = 0; t < turns && total + s.length < o.requests; t++) {
        if (t > 0) {
          const prev = s[t - 1]!;
          input = Math.min(o.maxInput, prev.input + prev.output + lognormalInt(rng, o.chatTurnMedian, 0.8, 8, 8192));
        }
        const keep = t > 0 ? Math.floor(s[t - 1]!.input / BLOCK) : 0;
        blocks = blocks.slice(0, keep);
        while (blocks.length < Math.ceil(input / BLOCK)) blocks.push(fresh());
        s.push({ input, output: out(), blocks: [...blocks] });
      }
    } else {
      // long-document QA: the document's complete blocks are shared by its questions
      const doc = lognormalInt(rng, k === 1 ? o.levalMedian : o.loogleMedian, o.docSigma, 1024, o.maxInput - 512);
      const docBlocks = Array.from({ length: Math.floor(doc / BLOCK) }, fresh);
      const qs = countWithMean(rng, o.questionsMean);
      for (let q = 0; q < qs && total + s.length < o.requests; q++) {
        const input = doc + lognormalInt(rng, 60, 0.6, 8, 500);
        const blocks = [...docBlocks];
        while (blocks.length < Math.ceil(input / BLOCK)) blocks.push(fresh());
        s.push({ input, output: out(), blocks });
      }
    }
    sessions.push(s);
    total += s.length;
  }
  // interleave: repeatedly take the next request of a uniformly chosen open session
  const open = sessions.map((s) => ({ s, i: 0 }));
  const order: Array<{ input: number; output: number; blocks: number[] }> = [];
  while (open.length) {
    const j = Math.floor(rng() * open.length);
    const x = open[j]!;
    order.push(x.s[x.i++]!);
    if (x.i >= x.s.length) open.splice(j, 1);
  }
  let t = 0;
  return order.map((r, i) => {
    if (i > 0) t += exponential(rng, 1000 / o.rate);
    return { id: `s${i}`, arrivalMs: t, inputTokens: r.input, outputTokens: r.output, blockSize: BLOCK, blocks: r.blocks, knowledge: [], knowledgeTokens: 0 };
  });
}

/**
 * Table-2 statistics of a trace: requests, average input and output (tokens), cache ratio =
 * tokens of leading blocks seen in an earlier request / input tokens (an unbounded cache).
 */
export function mooncakeSyntheticStats(reqs: readonly TraceRequest[]): { requests: number; avgInput: number; avgOutput: number; cacheRatio: number } {
  const seen = new Set<number>();
  let input = 0;
  let output = 0;
  let hit = 0;
  for (const r of reqs) {
    input += r.inputTokens;
    output += r.outputTokens;
    let j = 0;
    while (j < r.blocks.length && seen.has(r.blocks[j]!)) j++;
    hit += Math.min(r.inputTokens, j * r.blockSize);
    for (const b of r.blocks) seen.add(b);
  }
  const n = reqs.length;
  return { requests: n, avgInput: n ? input / n : 0, avgOutput: n ? output / n : 0, cacheRatio: input ? hit / input : 0 };
}
