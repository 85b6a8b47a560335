/**
 * Chained prefix-block ids for RAG workloads (NQ, synthetic).
 *
 * The prompt is [chat template + knowledge documents in order] + question, cut into
 * `blockSize`-token blocks. Block i's id is a 52-bit hash of (id of block i-1, what is inside
 * block i): for a block lying wholly in the template + knowledge prefix, "inside" is the kids of
 * the documents it overlaps and its index (document lengths are fixed per kid, so this pins the
 * content); any block holding question tokens (including the one mixing the end of the knowledge
 * with the question) hashes a per-request salt instead, so it is unique to its request.
 * Consequently two requests with the same leading documents share exactly their leading
 * knowledge-only block ids.
 */
import type { KnowledgeRef, TraceRequest } from './schema.js';

const TWO_32 = 4294967296;

/**
 * Incremental 52-bit hash (two 32-bit FNV-1a-style lanes with different multipliers and a final
 * avalanche). Digest is an integer in [0, 2^52), so it is exact as a JS number.
 */
export class Hash52 {
  private a = 0x811c9dc5;
  private b = 0x3c6ef372;

  /** Feeds one unsigned 32-bit word. */
  word(x: number): this {
    this.a = Math.imul(this.a ^ (x & 0xffff), 0x01000193);
    this.a = Math.imul(this.a ^ (x >>> 16), 0x01000193);
    this.b = Math.imul(this.b ^ x, 0x5bd1e995);
    this.b ^= this.b >>> 15;
    return this;
  }

  /** Feeds a non-negative integer < 2^53 (as two words). */
  num(n: number): this {
    return this.word(n >>> 0).word(Math.floor(n / TWO_32) >>> 0);
  }

  /** Feeds a string (UTF-16 code units, then its length, so concatenations do not collide). */
  str(s: string): this {
    for (let i = 0; i < s.length; i++) this.word(s.charCodeAt(i));
    return this.word(s.length);
  }

  /** The hash: an integer in [0, 2^52). */
  digest(): number {
    const lo = avalanche(this.a ^ Math.imul(this.b, 0x9e3779b1));
    const hi = avalanche((this.b + Math.imul(this.a, 0x85ebca77)) | 0);
    return (hi & 0xfffff) * TWO_32 + lo;
  }
}

function avalanche(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

/** Input of {@link ragBlockIds}. */
export interface RagPrompt {
  /** Chat-template tokens before the knowledge (tokens). */
  chatTemplateTokens: number;
  /** Knowledge documents in prompt order. */
  knowledge: KnowledgeRef[];
  /** Whole prompt: template + knowledge + question (tokens, >= template + knowledge). */
  inputTokens: number;
  /** Tokens per block. */
  blockSize: number;
  /** Makes question blocks unique: e.g. `${traceSalt}/${requestIndex}`. */
  requestSalt: string;
}

/**
 * Chained block ids of a RAG prompt; length ceil(inputTokens / blockSize), each an integer
 * in [0, 2^52). Deterministic: same prompt structure + salt → same ids.
 * @throws RangeError when inputTokens < chatTemplateTokens + knowledge tokens.
 */
export function ragBlockIds(p: RagPrompt): number[] {
  const { blockSize: B, inputTokens, knowledge } = p;
  const starts: number[] = [];
  let prefix = p.chatTemplateTokens;
  for (const k of knowledge) {
    starts.push(prefix);
    prefix += k.tokens;
  }
  if (inputTokens < prefix) {
    throw new RangeError(`inputTokens ${inputTokens} < template + knowledge ${prefix}`);
  }
  const n = Math.ceil(inputTokens / B);
  const ids = new Array<number>(n);
  let prev = new Hash52().str('kvlab-rag').num(p.chatTemplateTokens).num(B).digest();
  let doc = 0; // first document that may overlap the current block
  for (let i = 0; i < n; i++) {
    const s = i * B;
    const e = Math.min(s + B, inputTokens);
    const h = new Hash52().num(prev).num(i);
    if (e <= prefix) {
      while (doc < knowledge.length && starts[doc]! + knowledge[doc]!.tokens <= s) doc++;
      for (let j = doc; j < knowledge.length && starts[j]! < e; j++) h.str(knowledge[j]!.kid);
      h.num(e - s);
    } else {
      h.str('question').str(p.requestSalt);
    }
    prev = h.digest();
    ids[i] = prev;
  }
  return ids;
}

/** Input of {@link ragRequest}: one generated RAG request. */
export interface RagRequestInput extends RagPrompt {
  /** request index in the trace (id `r<index>`). */
  index: number;
  /** arrival time in ms before time scaling. */
  arrivalMs: number;
  timeScale: number;
  outputTokens: number;
  question?: string;
}

/**
 * Builds a TraceRequest of a generated RAG workload (NQ, synthetic): id `r<index>`, arrival
 * scaled and rounded to 0.001 ms, chained block ids from {@link ragBlockIds}.
 * @throws RangeError as ragBlockIds does.
 */
export function ragRequest(p: RagRequestInput): TraceRequest {
  const knowledgeTokens = p.knowledge.reduce((a, k) => a + k.tokens, 0);
  const r: TraceRequest = {
    id: `r${p.index}`,
    arrivalMs: Math.round(p.arrivalMs * p.timeScale * 1000) / 1000,
    inputTokens: p.inputTokens,
    outputTokens: p.outputTokens,
    blockSize: p.blockSize,
    blocks: ragBlockIds(p),
    knowledge: p.knowledge,
    knowledgeTokens,
    layout: { headTokens: p.chatTemplateTokens, salt: p.requestSalt },
  };
  if (p.question !== undefined) r.question = p.question;
  return r;
}

/**
 * The same request with its documents in another prompt order: `knowledge` permuted and the
 * block ids rebuilt with {@link ragBlockIds} (same template, same question salt), so the new
 * order shares exactly the leading blocks a request built in that order would. Requests without
 * a `layout` (file traces) cannot be rebuilt and are returned unchanged, as is an identical order.
 * @param order the documents in their new order: a permutation of `req.knowledge` (by kid)
 * @throws RangeError when `order` is not a permutation of the request's documents
 */
export function reorderRequest(req: TraceRequest, order: readonly KnowledgeRef[]): TraceRequest {
  const k = req.knowledge;
  if (order.length !== k.length) throw new RangeError(`reorderRequest ${req.id}: ${order.length} documents given, the request has ${k.length}`);
  let same = true;
  for (let i = 0; i < k.length; i++) if (order[i]!.kid !== k[i]!.kid) same = false;
  if (same || !req.layout) return req;
  const left = new Map<string, number>();
  for (const d of k) left.set(d.kid, (left.get(d.kid) ?? 0) + 1);
  for (const d of order) {
    const n = left.get(d.kid) ?? 0;
    if (n <= 0) throw new RangeError(`reorderRequest ${req.id}: document ${d.kid.slice(0, 12)}… is not one of the request's documents`);
    left.set(d.kid, n - 1);
  }
  const knowledge = order.map((d) => k.find((x) => x.kid === d.kid)!);
  const blocks = ragBlockIds({ chatTemplateTokens: req.layout.headTokens, knowledge, inputTokens: req.inputTokens, blockSize: req.blockSize, requestSalt: req.layout.salt });
  return { ...req, knowledge, blocks };
}

/**
 * Prompt span [start, end) of each knowledge document of a request, in prompt order (tokens):
 * documents follow one another after `layout.headTokens` (0 without a layout: file traces put
 * their knowledge, if any, at the very start).
 */
export function documentSpans(req: Pick<TraceRequest, 'knowledge' | 'layout'>): Array<[number, number]> {
  let s = req.layout?.headTokens ?? 0;
  const out: Array<[number, number]> = [];
  for (const d of req.knowledge) {
    out.push([s, s + d.tokens]);
    s += d.tokens;
  }
  return out;
}
