/**
 * The engine's TTFT predictor: given the booked state of an instance and a link, predicts the
 * breakdown (prepare, link wait, transfer, KV load, queue, prefill, TTFT) of one option
 * (instance, intent, reused tokens). Used by every strategy for its `predicted` record and by
 * the `kvlab` strategy as its cost.
 */
import { curveMs, kvLoadMs, kvWireBytes, prefillAloneMs, tierLoadMs, transferMs } from './costmodel.js';
import type { InstanceLoad } from './load.js';
import type { Breakdown, Intent, InstanceSpec, KdnSpec, LinkSpec, Profile } from './types.js';

/** Inputs of one prediction. */
export interface PredictInput {
  inst: InstanceSpec;
  load: InstanceLoad;
  /** predicted prefill backlog of the instance now (ms). */
  backlogMs: number;
  promptTokens: number;
  /** output tokens the engine expects (max_tokens or predicted; never the true length). */
  outputTokens: number;
  knowledgeTokens: number;
  /** local prefix-cache hit (tokens, already capped at prompt - 1). */
  cachedTokens: number;
  intent: Intent;
  /** prompt-prefix tokens whose KV the KDN provides (kvcache/hybrid). */
  reuseTokens: number;
  kdn?: KdnSpec;
  link?: LinkSpec;
  /** predicted wait for the link (ms). */
  linkWaitMs: number;
  /**
   * Prompt-prefix tokens available on the instance after a KV transfer from another instance
   * (0 = none): raw KV on the instance->instance link, no LMCache load (it lands in KV memory).
   */
  peerTokens?: number;
  peerLink?: LinkSpec;
  /** predicted wait for the peer link (ms). */
  peerLinkWaitMs?: number;
  /**
   * blend: KV tokens loaded from the KDN beyond the local prefix hit (every document's full
   * chunks), and the tokens the instance computes again for them (engine/knowledge.ts
   * `blendRecomputeTokens`).
   */
  blendTokens?: number;
  blendRecompute?: number;
  /**
   * overlap: prompt position where the loaded tail starts; [hit, split) is computed while
   * [split, reuseTokens) loads (default hit: load it all, overlapped with the queue only).
   */
  overlapSplit?: number;
  /**
   * KV tiers: prompt tokens after the local hit that the instance's CPU tier / remote tier hold
   * (contiguous, from the engine's tier-tagged index). They are loaded instead of computed
   * (intents none and text; a peer move replaces them): CPU at the host link's bandwidth,
   * remote with the profile's KV load model.
   */
  cpuTokens?: number;
  remoteTokens?: number;
  /**
   * KV tokens the decoding requests of the instance hold now, shared prefix blocks counted
   * once (engine `held` active blocks × block size); default: their summed prompt tokens.
   */
  heldKvTokens?: number;
}

/** Breakdown plus the quantities the engine books at dispatch. */
export interface Prediction extends Breakdown {
  /** tokens the KDN transfers (reuse beyond the local hit). */
  transferTokens: number;
  /** prompt tokens the instance computes. */
  computeTokens: number;
  /** predicted prefill work added to the instance lane (ms): prefill + KV load. */
  workMs: number;
  /**
   * the part of `workMs` due to the step model's decode group (per-sequence decode cost and KV
   * read of the requests decoding alongside); the rest is the prefill group (fixed, token
   * curve, attention) and the KV load. Online calibration fits one factor per group.
   */
  workDecodeMs: number;
  /** true when the engine's predictor made it (online calibration learns only from those). */
  engineMade: boolean;
}

/**
 * Predicts one option.
 *
 * ttft = ready + queue + kvLoad + prefill, with
 *  - ready = text fetch (text intent with knowledge) or link wait + transfer (kvcache/hybrid);
 *  - queue = max(0, backlog - ready) + frontend delay (the backlog drains while knowledge is prepared,
 *    as in CacheRoute's IWS `max(ready_wait, kv_prepare)`, §4.8);
 *  - prefill = compute of the non-reused tokens alone on the instance (chunked by the token budget,
 *    attention over the cached context), plus interference of the booked decoding requests
 *    (their per-step cost in every chunk step), plus the API overhead;
 *  - KV memory: when the KV the decoding requests hold (shared prefix blocks once, plus their
 *    booked outputs) and this request's uncached prompt and expected output exceed the capacity,
 *    it waits (queue) for that many tokens of the decoders to finish, at their rate;
 *  - a peer transfer (`peerTokens`) is ready after the peer link's wait + raw-KV transfer, and
 *    the transferred prefix is not recomputed;
 *  - blend: the KV of every document span is transferred and loaded (`blendTokens`); the instance
 *    computes the tokens outside them plus `blendRecompute` of them;
 *  - overlap (Cake, Jin et al., ICML'25): the instance computes the head [hit, split) while the
 *    tail [split, reuse) crosses the link and is retrieved (I/O beside the compute): ttft =
 *    prepare + max(queue + head compute, link wait + tail transfer + tail KV load) + compute of the
 *    rest + API (below the sum of the parts);
 *  - blend: LMCache loads layer by layer while the blender recomputes (CacheBlend §5, pipelined
 *    loading), so only the part of the KV load longer than the recompute shows (`kvLoadMs`).
 */
export function predictOption(p: PredictInput): Prediction {
  return predictInto(emptyPrediction(), p);
}

/** A zeroed Prediction, for use as a reusable output of `predictInto`. */
export function emptyPrediction(): Prediction {
  return { prepareMs: 0, linkWaitMs: 0, transferMs: 0, kvLoadMs: 0, queueMs: 0, prefillMs: 0, ttftMs: 0, transferTokens: 0, computeTokens: 0, workMs: 0, workDecodeMs: 0, engineMade: false };
}

/**
 * A Prediction built from a strategy's own estimates (ms, tokens); missing fields are 0 and
 * `ttftMs` defaults to the sum of the breakdown.
 */
export function predictionOf(f: Partial<Prediction>): Prediction {
  const out = { ...emptyPrediction(), ...f, engineMade: false };
  if (f.ttftMs === undefined) out.ttftMs = out.prepareMs + out.linkWaitMs + out.transferMs + out.queueMs + out.kvLoadMs + out.prefillMs;
  return out;
}

/**
 * Predicted TBT (ms) of a request that would start decoding on an instance with load `l`: the
 * duration of one of its longest iterations (Mooncake's TBT averages the longest 10% of token
 * gaps): the decode step of the booked decoding requests plus this one, sharing the step with
 * a chunk of the prefill work still booked there (chunked prefill), if any.
 */
export function tbtEstimateMs(inst: InstanceSpec, l: InstanceLoad): number {
  const m = inst.profile.step;
  const d = l.decodeReqs + 1;
  const budget = inst.engine.maxNumBatchedTokens;
  const chunk = Math.max(0, Math.min(budget - d, l.prefillTokens));
  const ctx = l.decodeReqs > 0 ? l.decodeCtxTokens : 0;
  return m.fixedMs + (chunk > 0 ? m.prefillSeqMs : 0) + m.decodeSeqMs * d + curveMs(m, chunk + d) + m.kvReadMsPerToken * ctx;
}

/** Copies every field of `src` into `dst`; returns `dst`. */
export function copyPrediction(dst: Prediction, src: Prediction): Prediction {
  dst.prepareMs = src.prepareMs;
  dst.linkWaitMs = src.linkWaitMs;
  dst.transferMs = src.transferMs;
  dst.kvLoadMs = src.kvLoadMs;
  dst.queueMs = src.queueMs;
  dst.prefillMs = src.prefillMs;
  dst.ttftMs = src.ttftMs;
  dst.transferTokens = src.transferTokens;
  dst.computeTokens = src.computeTokens;
  dst.workMs = src.workMs;
  dst.workDecodeMs = src.workDecodeMs;
  dst.engineMade = src.engineMade;
  return dst;
}

/** `predictOption` writing into `out` (no allocation on the decision hot path). */
export function predictInto(out: Prediction, p: PredictInput): Prediction {
  const prof = p.inst.profile;
  const m = prof.step;
  const P = p.promptTokens;
  const hit = Math.min(p.cachedTokens, P - 1);
  let prepareMs = 0;
  let linkWaitMs = 0;
  let xferMs = 0;
  let loadMs = 0;
  let transferTokens = 0;
  let start = hit;
  // overlap: [hit, start) is the head computed while the tail [start, tailEnd) loads
  let tailEnd = -1;
  if (p.intent === 'blend' && p.kdn && p.link) {
    const loaded = Math.max(0, Math.min(p.blendTokens ?? 0, P - 1 - hit));
    if (loaded > 0) {
      transferTokens = loaded;
      linkWaitMs = p.linkWaitMs;
      xferMs = transferMs(kvWireBytes(loaded, prof.model.kvBytesPerToken, p.kdn), p.link);
      const recompute = Math.min(loaded, p.blendRecompute ?? 0);
      loadMs = blendLoadMs(prof, loaded, hit, recompute);
      // the loaded tokens not recomputed; what is computed is placed at the end of the prompt
      start = hit + loaded - recompute;
    }
    if (loaded < p.knowledgeTokens) prepareMs = p.kdn.textFetchMs; // the rest as text
  } else if ((p.intent === 'kvcache' || p.intent === 'hybrid' || p.intent === 'overlap') && p.kdn && p.link) {
    // the KV of [from, reuse) is loaded: from the local hit on (kvcache, hybrid), or from the split (overlap)
    const reuse = Math.min(p.reuseTokens, P - 1);
    const from = p.intent === 'overlap' ? Math.min(reuse, Math.max(hit, p.overlapSplit ?? hit)) : hit;
    if (reuse > from) {
      transferTokens = reuse - from;
      linkWaitMs = p.linkWaitMs;
      xferMs = transferMs(kvWireBytes(transferTokens, prof.model.kvBytesPerToken, p.kdn), p.link);
      loadMs = kvLoadMs(prof.kvLoad, transferTokens);
      if (p.intent === 'overlap') {
        start = from;
        tailEnd = reuse;
      } else start = reuse;
    }
    if (reuse < p.knowledgeTokens) prepareMs = p.kdn.textFetchMs; // remainder as text
  } else if (p.intent === 'text' && p.knowledgeTokens > 0 && p.kdn) {
    prepareMs = p.kdn.textFetchMs;
  }
  const peer = p.peerTokens !== undefined ? Math.min(p.peerTokens, P - 1) : 0;
  if (peer > start && p.peerLink && transferTokens === 0) {
    transferTokens = peer - hit;
    linkWaitMs = p.peerLinkWaitMs ?? 0;
    xferMs = transferMs(transferTokens * prof.model.kvBytesPerToken, p.peerLink);
    start = peer;
  } else if ((p.cpuTokens || p.remoteTokens) && (p.intent === 'none' || p.intent === 'text') && p.inst.tiers) {
    // tier hits (the instance model's admission: CPU first, then remote, chunk by chunk)
    const cpu = Math.max(0, Math.min(p.cpuTokens ?? 0, P - 1 - hit));
    const rem = Math.max(0, Math.min(p.remoteTokens ?? 0, P - 1 - hit - cpu));
    loadMs += tierLoadMs(cpu, prof.model.kvBytesPerToken, p.inst.tiers.hostLinkGBps, p.inst.tiers.hostLoadFixedMs) + kvLoadMs(prof.kvLoad, rem);
    start = hit + cpu + rem;
  }
  const headTokens = tailEnd >= 0 ? start - hit : 0;
  const restFrom = tailEnd >= 0 ? tailEnd : start;
  const computeTokens = Math.max(1, headTokens + P - restFrom);
  const headMs = headTokens > 0 ? prefillAloneMs(prof, hit, headTokens) : 0;
  let prefill = headMs + prefillAloneMs(prof, restFrom, Math.max(1, P - restFrom));
  let headShare = headMs;
  // interference of the booked decoding requests: one decode token each in every chunk step,
  // split into its prefill-group (token curve) and decode-group (per-sequence, KV read) parts
  let decodePart = 0;
  const d = p.load.decodeReqs;
  if (d > 0) {
    const budget = p.inst.engine.maxNumBatchedTokens;
    const steps = Math.ceil(computeTokens / Math.max(1, budget - d));
    const curvePart = steps * (curveMs(m, Math.min(budget, computeTokens) + d) - curveMs(m, Math.min(budget, computeTokens)));
    prefill += curvePart;
    decodePart = steps * (m.decodeSeqMs * d + m.kvReadMsPerToken * p.load.decodeCtxTokens);
    headShare += ((curvePart + decodePart) * headTokens) / computeTokens; // overlap: the head's share
  }
  // KV memory: this request needs its uncached prompt and expected output; the decoding requests
  // hold their (shared-once) prompts and booked outputs. What does not fit waits — vLLM admits
  // FCFS as memory frees — for that many tokens of the decoders to finish: at their KV per ms,
  // i.e. held KV over their mean remaining decode time (half their mean output × the decode step).
  let kvWaitMs = 0;
  const cap = p.inst.engine.kvCapacityTokens;
  if (Number.isFinite(cap) && d > 0) {
    const held = p.heldKvTokens ?? p.load.decodeCtxTokens;
    const decOut = Math.max(0, p.load.decodeKvTokens - p.load.decodeCtxTokens);
    const over = held + decOut + (P - start) + p.outputTokens - cap;
    if (over > 0) {
      const step = m.fixedMs + m.decodeSeqMs * d + curveMs(m, d) + m.kvReadMsPerToken * p.load.decodeCtxTokens;
      const remaining = Math.max(1, (decOut / d / 2) * step);
      kvWaitMs = Math.min(over, held + decOut) * (remaining / Math.max(1, held + decOut));
    }
  }
  const prefillMs = prefill + decodePart + m.apiMs;
  let queueMs: number;
  let ttft: number;
  if (tailEnd >= 0) {
    // the request enters the instance once its text is ready; the tail crosses the link meanwhile
    queueMs = Math.max(0, p.backlogMs - prepareMs) + kvWaitMs + m.frontendMsPerRequest;
    // loading the tail (link + LMCache retrieve) is I/O: it runs beside the head's compute
    const gpu = prepareMs + queueMs + headShare;
    const kv = prepareMs + linkWaitMs + xferMs + loadMs; // the KDN is asked once the knowledge is resolved
    ttft = Math.max(gpu, kv) + (prefillMs - headShare);
  } else {
    const ready = prepareMs + linkWaitMs + xferMs;
    queueMs = Math.max(0, p.backlogMs - ready) + kvWaitMs + m.frontendMsPerRequest;
    ttft = ready + queueMs + loadMs + prefillMs;
  }
  out.prepareMs = prepareMs;
  out.linkWaitMs = linkWaitMs;
  out.transferMs = xferMs;
  out.kvLoadMs = loadMs;
  out.queueMs = queueMs;
  out.prefillMs = prefillMs;
  out.ttftMs = ttft;
  out.transferTokens = transferTokens;
  out.computeTokens = computeTokens;
  out.workMs = prefill + decodePart + loadMs;
  out.workDecodeMs = decodePart;
  out.engineMade = true;
  return out;
}

/**
 * KV load time (ms) a blending instance does not hide: LMCache retrieves layer by layer while the
 * blender recomputes (CacheBlend §5 pipelining), so the load shows only where it is longer than
 * the recompute of `recompute` tokens after position `start`: max(0, load(loaded) − compute).
 */
export function blendLoadMs(prof: Profile, loaded: number, start: number, recompute: number): number {
  if (loaded <= 0) return 0;
  const load = kvLoadMs(prof.kvLoad, loaded);
  return recompute > 0 ? Math.max(0, load - prefillAloneMs(prof, start, recompute)) : load;
}

/**
 * The overlap split where computing the head meets loading the tail (Cake, Jin et al., ICML'25:
 * compute from the front while loading from the back, meeting where they cross): the
 * chunk-aligned position in [hit, reuse] with the smallest predicted TTFT among the crossing
 * point of the two timelines and its neighbours (head compute grows and tail transfer shrinks
 * with the split, so their maximum is smallest where they cross). Uses {@link predictInto} with
 * `p.intent = 'overlap'`; `p` is left with `overlapSplit` set to the result.
 * @param chunk split granularity (LMCache chunk, 256 tokens)
 * @returns the split (tokens); `hit` when there is nothing to load
 */
export function overlapMeetSplit(p: PredictInput, chunk: number, scratch: Prediction = emptyPrediction()): number {
  const P = p.promptTokens;
  const hit = Math.min(p.cachedTokens, P - 1);
  const reuse = Math.min(p.reuseTokens, P - 1);
  p.intent = 'overlap';
  if (reuse <= hit) {
    p.overlapSplit = hit;
    return hit;
  }
  // g(split) = (gpu side) - (kv side): increasing in split; bisection over chunk multiples
  const gap = (split: number): number => {
    p.overlapSplit = split;
    const r = predictInto(scratch, p);
    const head = split > hit ? prefillAloneMs(p.inst.profile, hit, split - hit) : 0;
    return r.queueMs + head - (r.linkWaitMs + r.transferMs + r.kvLoadMs);
  };
  const lo0 = Math.ceil(hit / chunk);
  const hi0 = Math.floor(reuse / chunk);
  let lo = lo0;
  let hi = hi0;
  if (gap(hi * chunk) < 0) lo = hi; // compute never catches up: load nothing
  else {
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (gap(mid * chunk) >= 0) hi = mid;
      else lo = mid + 1;
    }
  }
  let best = Math.max(hit, lo * chunk);
  let bestT = Infinity;
  for (const c of [lo - 1, lo, lo + 1]) {
    if (c < lo0 - 1 || c > hi0) continue;
    const split = c < lo0 ? hit : Math.min(reuse, c * chunk);
    p.overlapSplit = split;
    const t = predictInto(scratch, p).ttftMs;
    if (t < bestT - 1e-9) {
      bestT = t;
      best = split;
    }
  }
  p.overlapSplit = best;
  return best;
}
