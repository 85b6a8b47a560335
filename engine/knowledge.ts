/**
 * What KV a KDN can provide for a request's knowledge documents, per reuse mode:
 *
 * - prefix reuse (`kvcache`, `hybrid`, `overlap`): LMCache keys a chunk by a hash chained over
 *   every token before it (reference/live-protocols.md §4.3), so a document's KV is valid only
 *   behind the exact sequence it was built after. A KDN that builds each document alone (right
 *   after the chat template) covers the first document only; one that holds document sequences
 *   (`KdnSpec.sequences`) covers the leading run of documents it holds. Chunk-aligned as
 *   CacheRoute's eff = floor(K/256)·256 (reference/cacheroute.md §4.8, template offset ignored).
 * - blended reuse (`blend`, CacheBlend): every document's KV is reused wherever it sits in the
 *   prompt, the whole document: LMCache with `enable_blending` keys one segment per document,
 *   whatever its length (SegmentTokenDatabase, LMCache/LMCache @6b96072
 *   lmcache/v1/token_database.py; live/lmcache.ts `lmcacheSegments`), not 256-token chunks.
 *
 * Pure functions; tokens throughout.
 */
import { documentSpans } from '../traces/blocks.js';
import type { BlendSpec, CausalRequest, ClusterSpec, KdnSpec } from './types.js';

/**
 * Per KDN, the prompt-prefix tokens whose KV it can provide for `req` (module doc: prefix
 * reuse), chunk-aligned down, capped at prompt - 1. null when the request has no knowledge or
 * the cluster no KDN.
 */
export function kdnCoverage(cluster: ClusterSpec, req: CausalRequest): number[] | null {
  if (req.knowledgeTokens <= 0 || cluster.kdns.length === 0) return null;
  const chunk = cluster.chunkTokens;
  const out = new Array<number>(cluster.kdns.length);
  for (let k = 0; k < cluster.kdns.length; k++) {
    const kd = cluster.kdns[k]!;
    let cov = 0;
    for (let j = 0; j < req.knowledge.length; j++) {
      const ref = req.knowledge[j]!;
      if (kd.knowledge !== null && !kd.knowledge.has(ref.kid)) break;
      cov += ref.tokens;
      if (!kd.sequences) break; // built alone: valid at the head only
    }
    if (req.knowledge.length === 0) cov = kd.knowledge === null ? req.knowledgeTokens : 0;
    cov = Math.floor(cov / chunk) * chunk;
    out[k] = Math.min(cov, req.inputTokens - 1);
  }
  return out;
}

/**
 * The prompt spans [start, end) whose KV `kdn` can provide to a blending instance: every
 * document it holds, whole, wherever it sits (module doc), capped at prompt - 1. Empty when it
 * holds none (or the request has no per-document knowledge). `_chunk` is unused (kept for the
 * callers' signature: prefix reuse is chunk-aligned, blended reuse is not).
 */
export function blendSpans(kdn: KdnSpec, req: CausalRequest, _chunk: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const spans = documentSpans(req);
  const cap = req.inputTokens - 1;
  for (let j = 0; j < req.knowledge.length; j++) {
    if (kdn.knowledge !== null && !kdn.knowledge.has(req.knowledge[j]!.kid)) continue;
    const [s] = spans[j]!;
    const e = Math.min(s + req.knowledge[j]!.tokens, cap);
    if (e > s) out.push([s, e]);
  }
  return out;
}

/** Tokens of `spans` at or beyond prompt position `from` (the part a local prefix hit does not cover). */
export function spanTokensFrom(spans: ReadonlyArray<readonly [number, number]>, from: number): number {
  let t = 0;
  for (const [s, e] of spans) if (e > from) t += e - Math.max(s, from);
  return t;
}

/**
 * Prompt tokens a blending instance computes again for `reused` tokens of loaded KV, in
 * token-equivalents of a full prefill: the layers up to and including the check layer run on
 * every reused token (selection of the tokens whose KV deviates most), then `recomputeRatio` of
 * them run through the remaining layers:
 *   reused × [ (checkLayer + 1)/layers + recomputeRatio × (1 − (checkLayer + 1)/layers) ],
 * rounded up (CacheBlend §4, LMCache `LMCBlender.process_qkv`: top-k of the check layer's
 * K deviation, k = ratio × tokens). Llama-3-70B (80 layers), LMCache's example settings
 * (0.15, check layer 1): 17.1 % of the reused tokens.
 * @param layers transformer layers of the model (>= 1)
 */
export function blendRecomputeTokens(reused: number, spec: BlendSpec, layers: number): number {
  if (reused <= 0) return 0;
  const f = Math.min(1, (spec.checkLayer + 1) / Math.max(1, layers));
  return Math.min(reused, Math.ceil(reused * (f + spec.recomputeRatio * (1 - f))));
}
