/**
 * Cost model: iteration (step) time of an instance, TTFT/TPOT predictions, KV transfer on a link
 * and KV load into the engine. Pure functions of a `Profile` / `LinkSpec`; all times in ms.
 */
import type { KdnSpec, KvLoadModel, LinkSpec, Profile, StepModel } from './types.js';

/** What one engine iteration computes; the input of `stepMs`. */
export interface StepComposition {
  /** new tokens in the step: prefill chunk tokens + 1 per decoding request. */
  tokens: number;
  /** requests with a prefill chunk in this step. */
  prefillSeqs: number;
  /** requests decoding one token in this step. */
  decodeSeqs: number;
  /** Σ over prefill chunks of c·(s + c/2) (token², c = chunk tokens, s = start position). */
  attnUnits: number;
  /** Σ context tokens of the decoding requests (KV read by decode attention). */
  decodeCtxTokens: number;
}

/** An empty composition (all zero), for accumulating. */
export function emptyComposition(): StepComposition {
  return { tokens: 0, prefillSeqs: 0, decodeSeqs: 0, attnUnits: 0, decodeCtxTokens: 0 };
}

/** Slope of the last curve segment (ms per token), used for extrapolation and attention. */
export function slopeLast(m: StepModel): number {
  const n = m.knots.length;
  if (n < 2) return 0;
  return (m.values[n - 1]! - m.values[n - 2]!) / (m.knots[n - 1]! - m.knots[n - 2]!);
}

/**
 * The fitted token curve: piecewise-linear through (knots[i], values[i]), linear extrapolation
 * past the last knot with the last slope; 0 at and below knots[0] (= 0 tokens).
 * @param tokens new tokens in the step (>= 0)
 * @returns ms
 */
export function curveMs(m: StepModel, tokens: number): number {
  const k = m.knots;
  const v = m.values;
  const n = k.length;
  if (tokens <= k[0]!) return v[0]!;
  // knots are few (~12): a linear scan beats a binary search here.
  for (let i = 1; i < n; i++) {
    if (tokens <= k[i]!) {
      const k0 = k[i - 1]!;
      return v[i - 1]! + ((v[i]! - v[i - 1]!) * (tokens - k0)) / (k[i]! - k0);
    }
  }
  return v[n - 1]! + slopeLast(m) * (tokens - k[n - 1]!);
}

/**
 * Duration of one engine iteration (ms), the step model of `StepModel`:
 *   fixedMs + prefillSeqMs·nPrefill + decodeSeqMs·nDecode + curve(T)
 *   + slopeLast·attnUnits/attnTokens + kvReadMsPerToken·decodeCtxTokens.
 * Returns 0 for an empty composition.
 */
export function stepMs(m: StepModel, c: StepComposition): number {
  if (c.tokens === 0) return 0;
  return (
    m.fixedMs +
    m.prefillSeqMs * c.prefillSeqs +
    m.decodeSeqMs * c.decodeSeqs +
    curveMs(m, c.tokens) +
    (slopeLast(m) * c.attnUnits) / m.attnTokens +
    m.kvReadMsPerToken * c.decodeCtxTokens
  );
}

/** Attention units of one prefill chunk of `c` tokens starting at position `s` (token²). */
export function chunkAttnUnits(s: number, c: number): number {
  return c * (s + c / 2);
}

/**
 * Predicted compute time (ms) to prefill `newTokens` tokens of a request whose first
 * `startTokens` are already cached, running alone on an idle instance, in chunks of the
 * token budget. Excludes apiMs and queueing.
 */
export function prefillAloneMs(p: Profile, startTokens: number, newTokens: number): number {
  // one-entry memo: a decision evaluates the same (profile, start, tokens) on many instances
  if (memo.p === p && memo.start === startTokens && memo.tokens === newTokens) return memo.ms;
  const ms = prefillAloneCompute(p, startTokens, newTokens);
  memo.p = p;
  memo.start = startTokens;
  memo.tokens = newTokens;
  memo.ms = ms;
  return ms;
}

const memo: { p: Profile | null; start: number; tokens: number; ms: number } = { p: null, start: -1, tokens: -1, ms: 0 };

function prefillAloneCompute(p: Profile, startTokens: number, newTokens: number): number {
  const m = p.step;
  const budget = p.engine.maxNumBatchedTokens;
  const left = newTokens <= 0 ? 1 : newTokens; // at least the last token is recomputed
  // f full chunks of `budget` tokens then a remainder r, in closed form (same sum as stepping):
  // attention Σ c·(s + c/2) over chunks starting at s0, s0 + B, ... = f·B·s0 + f²·B²/2, plus r·(s0 + f·B + r/2)
  const f = Math.floor(left / budget);
  const r = left - f * budget;
  const perStep = m.fixedMs + m.prefillSeqMs;
  let t = 0;
  let attn = 0;
  if (f > 0) {
    t += f * (perStep + curveMs(m, budget));
    attn += f * budget * startTokens + (f * f * budget * budget) / 2;
  }
  if (r > 0) {
    t += perStep + curveMs(m, r);
    attn += chunkAttnUnits(startTokens + f * budget, r);
  }
  return t + (slopeLast(m) * attn) / m.attnTokens;
}

/**
 * Marginal ms per new prefill token at long batches (throughput-bound regime), used to convert a
 * backlog of queued prefill tokens into time. It is the last curve slope.
 */
export function prefillMsPerToken(p: Profile): number {
  return slopeLast(p.step);
}

/** Decode iteration time (ms) with `batch` decoding requests of mean context `ctx` tokens. */
export function decodeStepMs(p: Profile, batch: number, ctx: number): number {
  return stepMs(p.step, { tokens: batch, prefillSeqs: 0, decodeSeqs: batch, attnUnits: 0, decodeCtxTokens: batch * ctx });
}

/**
 * KV bytes on the wire for `tokens` tokens from a KDN: raw model bytes / KDN compression.
 * @param kvBytesPerToken raw bytes per token of the model (Llama-3-70B bf16: 327,680)
 */
export function kvWireBytes(tokens: number, kvBytesPerToken: number, kdn: Pick<KdnSpec, 'compression'>): number {
  return (tokens * kvBytesPerToken) / Math.max(kdn.compression, 1e-9);
}

/**
 * Transfer time (ms) of `bytes` on a link: bytes / (bandwidth × efficiency) + latency.
 * Source: DESIGN.md "KV transfer on a link"; CacheRoute §5.5 uses efficiency 0.825.
 */
export function transferMs(bytes: number, link: LinkSpec): number {
  if (bytes <= 0) return 0;
  const bytesPerMs = (link.bandwidthGbps * 1e9 * link.efficiency) / 8 / 1000;
  return bytes / bytesPerMs + link.latencyMs;
}

/**
 * KV load time (ms) into the engine (LMCache retrieve) of `tokens` tokens:
 * fixedMs + msPerGB · GB, GB = tokens · bytesPerToken / 2^30.
 * Source: CacheRoute redis-pull fit (2764.34 ms/GB + 12.46 ms), reference/cacheroute.md §5.3.
 */
export function kvLoadMs(m: KvLoadModel, tokens: number): number {
  if (tokens <= 0) return 0;
  return m.fixedMs + (m.msPerGB * tokens * m.bytesPerToken) / 1073741824;
}

/**
 * Load time (ms) of `tokens` tokens from an instance's CPU tier (LMCache `local_cpu`, vLLM's CPU
 * offloading) over the host link: fixedMs + raw KV bytes / host-link bandwidth.
 * @param kvBytesPerToken raw KV bytes per token of the model (the CPU tier holds raw KV)
 * @param hostLinkGBps host -> device bandwidth of the instance, GB/s (10^9 B/s; Mooncake Table 1:
 *   128 GB/s per 8×A800 node)
 */
export function tierLoadMs(tokens: number, kvBytesPerToken: number, hostLinkGBps: number, fixedMs: number): number {
  if (tokens <= 0) return 0;
  return fixedMs + (tokens * kvBytesPerToken) / (hostLinkGBps * 1e6);
}
