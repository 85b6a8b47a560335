/**
 * Summary statistics of a trace, including the infinite-cache prefix hit ratio.
 */
import type { TraceMeta, TraceRequest } from './schema.js';

/**
 * Trace summary (keys are the names printed by `kvlab trace stats`). Times in s, lengths in
 * tokens. Empty traces give zeros.
 */
export interface TraceStats {
  requests: number;
  /** last arrival − first arrival, s. */
  span_s: number;
  /** (requests − 1) / span_s, requests/s (0 when span is 0). */
  rate_rps: number;
  mean_input_tokens: number;
  p50_input_tokens: number;
  p99_input_tokens: number;
  max_input_tokens: number;
  mean_output_tokens: number;
  max_output_tokens: number;
  /** mean of knowledgeTokens over requests. */
  mean_knowledge_tokens: number;
  /** distinct kids referenced. */
  knowledge_docs: number;
  /** block size of the trace (meta, else the first request's), tokens. */
  block_size: number;
  /** distinct block ids over the trace. */
  unique_blocks: number;
  /** total block ids over the trace (Σ len(blocks)). */
  block_refs: number;
  /** see {@link infiniteCacheHits}: Σ hit tokens / Σ input tokens, in [0, 1]. */
  infinite_cache_hit_ratio: number;
  /** bad lines skipped by the loader (0 without meta). */
  skipped: number;
  /** requests the loader moved when sorting by arrival (0 without meta). */
  reordered: number;
}

/**
 * Contiguous-prefix reuse with an infinite cache, in trace order: for each request, hit blocks =
 * the longest leading run of its block ids already seen in earlier requests, hit tokens =
 * min(hitBlocks × blockSize, inputTokens); then all its blocks become seen. Requests without
 * blocks hit nothing. Returns token totals and their ratio (0 for an empty trace).
 */
export function infiniteCacheHits(requests: readonly TraceRequest[]): {
  hitTokens: number;
  inputTokens: number;
  ratio: number;
} {
  const seen = new Set<number>();
  let hitTokens = 0;
  let inputTokens = 0;
  for (const r of requests) {
    const b = r.blocks;
    let hit = 0;
    while (hit < b.length && seen.has(b[hit]!)) hit++;
    hitTokens += Math.min(hit * r.blockSize, r.inputTokens);
    inputTokens += r.inputTokens;
    for (let i = hit; i < b.length; i++) seen.add(b[i]!);
  }
  return { hitTokens, inputTokens, ratio: inputTokens > 0 ? hitTokens / inputTokens : 0 };
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/**
 * Computes {@link TraceStats} for requests in the given (arrival) order.
 */
export function traceStats(requests: readonly TraceRequest[], meta?: Partial<TraceMeta>): TraceStats {
  const n = requests.length;
  let sumIn = 0;
  let sumOut = 0;
  let maxOut = 0;
  let sumKnow = 0;
  let refs = 0;
  let first = Infinity;
  let last = -Infinity;
  const blocks = new Set<number>();
  const kids = new Set<string>();
  const inputs: number[] = new Array(n);
  for (let i = 0; i < n; i++) {
    const r = requests[i]!;
    inputs[i] = r.inputTokens;
    sumIn += r.inputTokens;
    sumOut += r.outputTokens;
    if (r.outputTokens > maxOut) maxOut = r.outputTokens;
    sumKnow += r.knowledgeTokens;
    refs += r.blocks.length;
    for (const b of r.blocks) blocks.add(b);
    for (const k of r.knowledge) kids.add(k.kid);
    if (r.arrivalMs < first) first = r.arrivalMs;
    if (r.arrivalMs > last) last = r.arrivalMs;
  }
  inputs.sort((a, b) => a - b);
  const span = n > 0 ? (last - first) / 1000 : 0;
  return {
    requests: n,
    span_s: span,
    rate_rps: span > 0 ? (n - 1) / span : 0,
    mean_input_tokens: n > 0 ? sumIn / n : 0,
    p50_input_tokens: quantile(inputs, 0.5),
    p99_input_tokens: quantile(inputs, 0.99),
    max_input_tokens: n > 0 ? inputs[n - 1]! : 0,
    mean_output_tokens: n > 0 ? sumOut / n : 0,
    max_output_tokens: maxOut,
    mean_knowledge_tokens: n > 0 ? sumKnow / n : 0,
    knowledge_docs: kids.size,
    block_size: meta?.blockSize ?? requests[0]?.blockSize ?? 0,
    unique_blocks: blocks.size,
    block_refs: refs,
    infinite_cache_hit_ratio: infiniteCacheHits(requests).ratio,
    skipped: meta?.skipped ?? 0,
    reordered: meta?.reordered ?? 0,
  };
}

/** Plain-text table of stats: one `name  value` row per field, names left-aligned, values right-aligned. */
export function formatStatsTable(stats: TraceStats): string {
  const rows = Object.entries(stats).map(([k, v]) => [k, fmt(v as number)] as const);
  const kw = Math.max(...rows.map(([k]) => k.length));
  const vw = Math.max(...rows.map(([, v]) => v.length));
  return rows.map(([k, v]) => `${k.padEnd(kw)}  ${v.padStart(vw)}`).join('\n') + '\n';
}

function fmt(v: number): string {
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) < 1 ? v.toFixed(4) : v.toFixed(2);
}
