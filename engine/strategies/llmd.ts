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
 *   KV cache (`autoTune`: vLLM's cache blocks), no engine events. Here: the trace's blocks, a
 *   per-pod bound of KV capacity / block size (evicting the oldest insertions).
 * - queue-scorer (scorer/queuedepth/queue.go): (max_q − q) / (max_q − min_q) over the pods'
 *   `vllm:num_requests_waiting`, 1 when all are equal.
 * - kv-cache-utilization-scorer (scorer/kvcacheutilization): 1 − `vllm:kv_cache_usage_perc`.
 * The queue and KV numbers are scraped engine metrics (every 50 ms, `RefreshMetricsInterval`):
 * the driver feeds them (`metricsIntervalMs`), so they are up to 50 ms stale like upstream; an
 * instance not scraped yet counts as empty.
 */
import type { DecideContext, Strategy, StrategyChoice } from '../engine.js';
import { PrefixIndex } from '../prefix-index.js';
import type { Alternative, Decision, Intent } from '../types.js';

/** Parameters of `llm-d` (scorer weights of the default profile). */
export interface LlmdParams {
  prefixWeight: number;
  queueWeight: number;
  kvUtilWeight: number;
  /** metrics scrape interval, ms (RefreshMetricsInterval 50 ms). */
  scrapeMs: number;
  intent: Intent;
}

/** llm-d's built-in default profile: prefix 3, queue 2, KV utilisation 2; 50 ms scrapes. */
export const LLMD_DEFAULTS: LlmdParams = { prefixWeight: 3, queueWeight: 2, kvUtilWeight: 2, scrapeMs: 50, intent: 'text' };

/** The `llm-d` strategy (module doc); keeps its own approximate prefix index. */
export class LlmdStrategy implements Strategy {
  readonly name = 'llm-d';
  readonly metricsIntervalMs: number;
  private readonly p: LlmdParams;
  private index: PrefixIndex | null = null;
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
      this.index = new PrefixIndex(ctx.n, caps);
      this.buf = new Int32Array(ctx.n);
    }
    this.buf.fill(0);
    if (req.blocks.length) this.index.match(req.blocks, this.buf);
    let minQ = Infinity;
    let maxQ = -Infinity;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const q = ctx.metrics(i)?.waiting ?? 0;
      if (q < minQ) minQ = q;
      if (q > maxQ) maxQ = q;
    }
    const total = req.blocks.length;
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

  onDispatch(ctx: DecideContext, d: Decision): void {
    if (this.index && ctx.req.blocks.length) this.index.add(d.instance, ctx.req.blocks);
  }

  onInstanceDown(i: number): void {
    this.index?.clear(i);
  }
}
