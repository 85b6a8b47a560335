/**
 * `llm-d`: the llm-d inference scheduler's built-in default profile (llm-d/llm-d-inference-scheduler
 * @ 520af478, now llm-d-router; pkg/epp/config/loader/defaults.go `loadDefaultConfig`):
 *
 *   score(pod) = 3 · prefix-cache-scorer + 2 · queue-scorer + 2 · kv-cache-utilization-scorer
 *   → max-score picker (shuffle, then stable sort by score: uniform among ties)
 *
 * - prefix-cache-scorer (pkg/epp/framework/plugins/scheduling/scorer/prefix/plugin.go):
 *   matched blocks / total blocks of the prompt, from the approximate prefix producer
 *   (requestcontrol/dataproducer/approximateprefix): a per-pod LRU index of the blocks routed to
 *   each pod, updated right after the decision (`PreRequest`), capacity auto-tuned to the pod's
 *   KV cache (`autoTune`: vLLM's cache blocks), no engine events; only the prompt's first
 *   256 blocks × 16 tokens = 4,096 tokens are hashed (`defaultMaxPrefixBlocks`, `hashPrompt`), so
 *   "total" is at most 4,096 tokens' worth. Here (engine/strategies/llmd-prefix.ts): the trace's
 *   blocks cut to `maxPrefixTokens`, a per-pod LRU (re-adding a block refreshes it) bounded at
 *   KV capacity / block size, and upstream's match walk.
 * - queue-scorer (scorer/queuedepth/queue.go): (max_q − q) / (max_q − min_q) over the pods'
 *   `vllm:num_requests_waiting`, 1 when all are equal.
 * - kv-cache-utilization-scorer (scorer/kvcacheutilization): 1 − `vllm:kv_cache_usage_perc`.
 * The queue and KV numbers are scraped engine metrics (every 50 ms, `RefreshMetricsInterval`):
 * the driver feeds them (`metricsIntervalMs`), so they are up to 50 ms stale like upstream; an
 * instance not scraped yet counts as empty.
 *
 * P/D (a cluster with roles): the `disagg-profile-handler` with the `prefix-based-pd-decider` of
 * deploy/config/pd-epp-config.yaml (same commit; profilehandler/disagg/pd_profile_handler.go,
 * prefix_based_pd_decider.go, filter/bylabel/roles.go):
 *   1. decode profile: decode-filter (role decode, prefill-decode = kvlab's mixed, or no label),
 *      score 2 · prefix-cache-scorer + 1 · queue-scorer, max-score picker → D;
 *   2. decider: hit = D's matched blocks × block size, non-cached = input − hit;
 *      disaggregate iff nonCachedTokens > 0 AND input ≥ nonCachedTokens AND non-cached ≥
 *      nonCachedTokens (16 in that config; the plugin's own default 0 disables P/D);
 *   3. disaggregated: prefill profile: prefill-filter (role prefill or prefill-decode), same
 *      scorers → P; the request prefills on P and decodes on D. Otherwise it runs on D alone.
 * Upstream counts the input as prompt characters / 4 (the request is not tokenized there); here
 * the prompt's token count, which the approximation estimates. Both chosen pods get the
 * request's blocks in the approximate index (P computed them, D holds them after the transfer).
 *
 * Behaviour that is upstream's own, on the Mooncake conversation trace (checked 2026-12-01; the
 * README's "Why llm-d trails on this trace"): the profile's load signals are the waiting count
 * and KV usage, and neither sees prefill work already admitted. Under chunked prefill a new
 * request is admitted at once, so waiting is mostly 0 and KV usage stays below 0.1 on the
 * h100x8 profile. The prefix scorer (weight 3) therefore dominates, and because every request
 * of that trace shares its first block, a pod that did not receive it early is starved (≥ 3 ×
 * 1/8 behind on every request). Mean TTFT is about 2.3 s against least-load's 0.95 s at load
 * 0.5 on 8 instances. The earlier 3.0 s also came from deviations since fixed: the simulator's
 * KV usage counting cached free blocks (vLLM does not), no 4,096-token hash cut, and a FIFO
 * index instead of an LRU.
 */
import type { DecideContext, Strategy, StrategyChoice } from '../engine.js';
import { decodeCapable } from '../pd.js';
import type { Alternative, Decision, Intent } from '../types.js';
import { ApproxPrefixIndex } from './llmd-prefix.js';

/** Parameters of `llm-d` (scorer weights of the default profile). */
export interface LlmdParams {
  prefixWeight: number;
  queueWeight: number;
  kvUtilWeight: number;
  /** metrics scrape interval, ms (RefreshMetricsInterval 50 ms). */
  scrapeMs: number;
  /** P/D profiles (pd-epp-config.yaml): prefix-cache-scorer weight. */
  pdPrefixWeight: number;
  /** P/D profiles: queue-scorer weight. */
  pdQueueWeight: number;
  /** prefix-based-pd-decider nonCachedTokens (0 = never disaggregate). */
  nonCachedTokens: number;
  /**
   * Prompt tokens the approximate prefix index hashes, tokens: upstream truncates the prompt to
   * `MaxPrefixBlocksToMatch` (256) blocks of the auto-tuned block size (vLLM's 16) = 4,096 tokens
   * (approximateprefix/types.go `defaultMaxPrefixBlocks`, hashing.go `hashPrompt`). Here
   * floor(maxPrefixTokens / trace block size) leading trace blocks (at least 1).
   */
  maxPrefixTokens: number;
  intent: Intent;
}

/** llm-d's built-in default profile: prefix 3, queue 2, KV utilisation 2; 50 ms scrapes; 4,096 prompt tokens hashed; P/D: prefix 2, queue 1, nonCachedTokens 16. */
export const LLMD_DEFAULTS: LlmdParams = { prefixWeight: 3, queueWeight: 2, kvUtilWeight: 2, scrapeMs: 50, pdPrefixWeight: 2, pdQueueWeight: 1, nonCachedTokens: 16, maxPrefixTokens: 256 * 16, intent: 'text' };

/** The `llm-d` strategy (module doc); keeps its own approximate prefix index. */
export class LlmdStrategy implements Strategy {
  readonly name = 'llm-d';
  readonly metricsIntervalMs: number;
  private readonly p: LlmdParams;
  private index: ApproxPrefixIndex | null = null;
  private buf = new Int32Array(0);
  private order: number[] = [];

  constructor(params: Partial<LlmdParams> = {}) {
    this.p = { ...LLMD_DEFAULTS, ...params };
    this.metricsIntervalMs = this.p.scrapeMs;
  }

  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    const req = ctx.req;
    if (!this.index) {
      const caps = ctx.cluster.instances.map((s) => (Number.isFinite(s.engine.kvCapacityTokens) ? Math.max(1, Math.floor(s.engine.kvCapacityTokens / req.blockSize)) : Infinity));
      this.index = new ApproxPrefixIndex(ctx.n, caps);
      this.buf = new Int32Array(ctx.n);
    }
    this.buf.fill(0);
    const blocks = this.hashed(req.blocks, req.blockSize);
    if (blocks.length) this.index.match(blocks, this.buf);
    if (ctx.hasRoles) return this.decidePd(ctx, blocks.length);
    let minQ = Infinity;
    let maxQ = -Infinity;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const q = ctx.metrics(i)?.waiting ?? 0;
      if (q < minQ) minQ = q;
      if (q > maxQ) maxQ = q;
    }
    const total = blocks.length;
    const order = this.order;
    order.length = 0;
    const alternatives: Alternative[] = [];
    const scores = new Float64Array(ctx.n);
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const m = ctx.metrics(i);
      const prefix = total > 0 ? this.buf[i]! / total : 0;
      const queue = maxQ === minQ ? 1 : (maxQ - (m?.waiting ?? 0)) / (maxQ - minQ);
      const kv = 1 - (m?.kvUsage ?? 0);
      const s = p.prefixWeight * prefix + p.queueWeight * queue + p.kvUtilWeight * kv;
      scores[i] = s;
      order.push(i);
      alternatives.push({ instance: i, intent: p.intent, score: -s });
    }
    // max-score picker: shuffle, stable sort by score desc = uniform among the best
    let best = -1;
    let ties = 0;
    for (const i of order) {
      if (best < 0 || scores[i]! > scores[best]!) {
        best = i;
        ties = 1;
      } else if (scores[i] === scores[best] && ctx.rng() * ++ties < 1) best = i;
    }
    return { instance: best, intent: p.intent, alternatives, reason: 'max-score' };
  }

  /**
   * The leading blocks the approximate prefix index hashes (`maxPrefixTokens`, module doc): the
   * prompt's trace blocks cut to floor(maxPrefixTokens / blockSize) >= 1 (no copy when shorter).
   * @param blockSize tokens per trace block
   */
  private hashed(blocks: readonly number[], blockSize: number): readonly number[] {
    const max = Math.max(1, Math.floor(this.p.maxPrefixTokens / Math.max(1, blockSize)));
    return blocks.length > max ? blocks.slice(0, max) : blocks;
  }

  /** The P/D profile handler (module doc); `buf` holds the request's matched blocks per pod, of `total` hashed blocks. */
  private decidePd(ctx: DecideContext, total: number): StrategyChoice {
    const p = this.p;
    const req = ctx.req;
    const alternatives: Alternative[] = [];
    const D = this.pick(ctx, (i) => ctx.alive(i) && decodeCapable(ctx.cluster.instances[i]!), alternatives, total);
    const hit = D >= 0 ? Math.min(req.inputTokens, this.buf[D]! * req.blockSize) : 0;
    const nonCached = req.inputTokens - hit;
    const disagg = p.nonCachedTokens > 0 && D >= 0 && req.inputTokens >= p.nonCachedTokens && nonCached >= p.nonCachedTokens;
    if (!disagg) return { instance: D, intent: p.intent, alternatives, reason: `max-score;decode-only non-cached=${nonCached}` };
    const P = this.pick(ctx, (i) => ctx.isUp(i), alternatives, total);
    const choice: StrategyChoice = { instance: P, intent: p.intent, alternatives, reason: `max-score;prefill-decode non-cached=${nonCached}` };
    if (P !== D) choice.decode = D;
    return choice;
  }

  /** max-score picker over the pods `ok` admits: pdPrefixWeight · prefix + pdQueueWeight · queue. */
  private pick(ctx: DecideContext, ok: (i: number) => boolean, alternatives: Alternative[], total: number): number {
    const p = this.p;
    let minQ = Infinity;
    let maxQ = -Infinity;
    for (let i = 0; i < ctx.n; i++) {
      if (!ok(i)) continue;
      const q = ctx.metrics(i)?.waiting ?? 0;
      if (q < minQ) minQ = q;
      if (q > maxQ) maxQ = q;
    }
    let best = -1;
    let bestS = -Infinity;
    let ties = 0;
    for (let i = 0; i < ctx.n; i++) {
      if (!ok(i)) continue;
      const prefix = total > 0 ? this.buf[i]! / total : 0;
      const queue = maxQ === minQ ? 1 : (maxQ - (ctx.metrics(i)?.waiting ?? 0)) / (maxQ - minQ);
      const s = p.pdPrefixWeight * prefix + p.pdQueueWeight * queue;
      alternatives.push({ instance: i, intent: p.intent, score: -s });
      if (best < 0 || s > bestS) {
        best = i;
        bestS = s;
        ties = 1;
      } else if (s === bestS && ctx.rng() * ++ties < 1) best = i;
    }
    return best;
  }

  onDispatch(ctx: DecideContext, d: Decision): void {
    if (!this.index || !ctx.req.blocks.length) return;
    const blocks = this.hashed(ctx.req.blocks, ctx.req.blockSize);
    this.index.add(d.instance, blocks);
    if (d.decode !== undefined && d.decode !== d.instance) this.index.add(d.decode, blocks);
  }

  onInstanceDown(i: number): void {
    this.index?.clear(i);
  }
}
