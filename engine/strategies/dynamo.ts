/**
 * `dynamo-kv`: NVIDIA Dynamo's KV router, `DefaultWorkerSelector::worker_logit` in
 * ai-dynamo/dynamo lib/kv-router/src/scheduling/selector.rs @ 01690d42, with the
 * `KvRouterConfig` defaults of that series (overlap_score_credit 1, prefill_load_scale 1,
 * decode_active_request_weight 0, router_temperature 0, router_track_active_blocks true,
 * router_track_output_blocks false, router_assume_kv_reuse true, router_track_prefill_tokens true):
 *
 *   logit(w) = max(0, (active_prefill_tokens(w) + ISL) / bs − overlap_blocks(w))
 *              + potential_decode_blocks(w)
 *
 * - active_prefill_tokens(w): uncached prompt tokens of the requests routed to w that have not
 *   produced a first token (the router's own booking, released at the first token);
 * - overlap_blocks(w): blocks of the request's prefix cached on w (KV events + predict-on-route);
 * - potential_decode_blocks(w) = active_decode_blocks + additional_active_blocks
 *   (lib/kv-router/src/sequences/prompt_registry.rs `WorkerLoadProjection`): the number of
 *   distinct complete prompt blocks of the requests active on w (routed, not finished) together
 *   with this request's — shared prefix blocks count once (`assume_kv_reuse`), output blocks
 *   are not tracked (`track_output_blocks` false);
 * - bs = 16 (the engine's KV block): a trace block of t tokens holds floor(t / 16) complete
 *   16-token blocks (trace blocks start at multiples of 16, so this count is exact).
 * - KV tiers (lib/kv-router/src/scheduling/overlap.rs @ 13a4eeab, `build_overlap_scores_response`):
 *   the overlap credit is overlap_score_credit × device blocks + host_cache_hit_weight (0.75) ×
 *   host-pinned extension blocks + disk_cache_hit_weight (0.25) × disk/external extension blocks,
 *   the extensions being the blocks right after the device match found in the lower tier, as
 *   tier-tagged KV events report them: here the CPU tier (host) and the remote tier (external).
 * argmin; exact ties by uniform reservoir sampling (`random_choice`); temperature > 0 samples
 * p(w) ∝ exp(−(c_w − c_min) / ((c_max − c_min)·T)) (`softmax_sample`).
 * Not modelled: the router queue (`router_queue_threshold`, unset by default in the v1.4-era
 * config; the peer audit measured it does not help at 1.25× the Mooncake rate).
 *
 * P/D (a cluster with roles; docs/components/router/router-disaggregated-serving.md and
 * lib/kv-router/src/conditional_disagg.rs @ 48bbf30c):
 * - prefill router: the logit above over the prefill workers (role prefill or mixed) without
 *   active block tracking ("always disables active block tracking"):
 *   logit_P(w) = max(0, (active_prefill_tokens(w) + ISL) / bs − overlap credit);
 * - decode router, plain disaggregation (the default): overlap_score_credit 0,
 *   assume_kv_reuse false, track_prefill_tokens false, so
 *   logit_D(w) = potential_decode_blocks(w) = active blocks booked on w (no dedup) + this
 *   request's complete blocks; the request prefills on argmin logit_P and decodes on argmin
 *   logit_D (every request is disaggregated);
 * - conditional disaggregation (`conditionalDisagg`, `--router-conditional-disagg`, off by
 *   default upstream), policy `isl_bounding`: the decode worker is picked with the full logit
 *   (overlap credit, KV reuse: it may run the prefill), then with its weighted cache credit c
 *   (tokens: device + 0.75 host + 0.25 disk blocks, × bs):
 *   eff_isl = ISL − min(c, ISL); bypass = eff_isl < 2048 AND eff_isl / max(ISL, 1) < 0.7
 *   (DEFAULT_CONDITIONAL_DISAGG_EFF_ISL_THRESHOLD / _RATIO_THRESHOLD); a bypassed request runs
 *   colocated on that decode worker (local prefill), the others prefill on argmin logit_P.
 * Active blocks are booked on the request's decode worker (the prefill pool tracks none).
 */
import { argminUp, type DecideContext, type Strategy, type StrategyChoice } from '../engine.js';
import { ActiveBlocks } from '../active-blocks.js';
import { decodeCapable } from '../pd.js';
import type { Alternative, Decision, Intent } from '../types.js';

/** Parameters of `dynamo-kv` (Dynamo KvRouterConfig names). */
export interface DynamoParams {
  /** overlap_score_weight (deprecated alias of prefill_load_scale; 0 also zeroes the overlap credit). */
  overlapScoreWeight: number;
  routerTemperature: number;
  /** engine KV block size used to express costs in blocks (tokens). */
  blockSize: number;
  /** router_assume_kv_reuse: shared prefix blocks of active requests count once. */
  assumeKvReuse: boolean;
  /** host_cache_hit_weight: credit per block found in the CPU tier after the device match. */
  hostCacheHitWeight: number;
  /** disk_cache_hit_weight: credit per block found in the remote tier after that. */
  diskCacheHitWeight: number;
  /** P/D: --router-conditional-disagg (policy isl_bounding); false = every request disaggregated. */
  conditionalDisagg: boolean;
  /** --router-conditional-disagg-eff-isl-threshold (tokens). */
  effIslThreshold: number;
  /** --router-conditional-disagg-eff-isl-ratio-threshold (effective / raw ISL). */
  effIslRatioThreshold: number;
  intent: Intent;
}

/** Dynamo's defaults: overlap_score_weight 1, router_temperature 0, assume_kv_reuse true; 16-token blocks; conditional disaggregation off (2048 tokens, 0.7). */
export const DYNAMO_DEFAULTS: DynamoParams = { overlapScoreWeight: 1, routerTemperature: 0, blockSize: 16, assumeKvReuse: true, hostCacheHitWeight: 0.75, diskCacheHitWeight: 0.25, conditionalDisagg: false, effIslThreshold: 2048, effIslRatioThreshold: 0.7, intent: 'text' };

interface Active {
  instance: number;
  blocks: readonly number[];
  /** complete engine blocks per trace block. */
  counts: Int32Array;
  /** engine blocks booked without dedup (no reuse or no block ids). */
  booked: number;
  /** booked with shared prefix blocks counted once (assume_kv_reuse). */
  reuse: boolean;
}

/** The `dynamo-kv` strategy (module doc): the router's own active-sequence tracking per worker. */
export class DynamoKvStrategy implements Strategy {
  readonly name = 'dynamo-kv';
  private readonly p: DynamoParams;
  /** trace block id -> active requests holding it, per instance. */
  private refs = new ActiveBlocks(0);
  /** per instance: Σ complete engine blocks of distinct active trace blocks (or of every prompt without reuse). */
  private activeBlocks = new Float64Array(0);
  private readonly active = new Map<string, Active>();
  private cost = new Float64Array(0);
  private extra = new Float64Array(0);
  private counts = new Int32Array(64);
  private n = 0;

  constructor(params: Partial<DynamoParams> = {}) {
    this.p = { ...DYNAMO_DEFAULTS, ...params };
  }

  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    if (this.n !== ctx.n) this.init(ctx.n);
    const req = ctx.req;
    const bs = p.blockSize;
    const counts = this.blockCounts(req.inputTokens, req.blockSize, req.blocks.length);
    const credit = p.overlapScoreWeight === 0 ? 0 : 1;
    const scale = p.overlapScoreWeight;
    const reqBlocks = Math.floor(req.inputTokens / bs);
    // additional_active_blocks per worker: this request's complete blocks not active there
    const extra = this.extra;
    if (!p.assumeKvReuse || req.blocks.length === 0) extra.fill(reqBlocks);
    else {
      extra.fill(0);
      let all = 0;
      for (let j = 0; j < req.blocks.length; j++) {
        const c = counts[j]!;
        const r = this.refs.counts(req.blocks[j]!);
        if (r === undefined) all += c;
        else for (let i = 0; i < ctx.n; i++) if (r[i] === 0) extra[i]! += c;
      }
      if (all) for (let i = 0; i < ctx.n; i++) extra[i]! += all;
    }
    if (ctx.hasRoles) return this.decidePd(ctx, reqBlocks);
    const cost = this.cost;
    const alternatives: Alternative[] = [];
    let cmin = Infinity;
    let cmax = -Infinity;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const l = ctx.load(i);
      const overlap = Math.floor(ctx.cachedTokens(i) / bs);
      const tierCredit = p.hostCacheHitWeight * Math.floor(ctx.cpuTokens(i) / bs) + p.diskCacheHitWeight * Math.floor(ctx.remoteTokens(i) / bs);
      const prefill = Math.max(0, (l.prefillTokens + req.inputTokens) / bs - credit * overlap - tierCredit);
      const c = scale * prefill + this.activeBlocks[i]! + extra[i]!;
      cost[i] = c;
      if (c < cmin) cmin = c;
      if (c > cmax) cmax = c;
      alternatives.push({ instance: i, intent: p.intent, score: c });
    }
    let chosen: number;
    if (p.routerTemperature > 0 && cmax > cmin) {
      let total = 0;
      const w = new Float64Array(ctx.n);
      for (let i = 0; i < ctx.n; i++) {
        if (!ctx.isUp(i)) continue;
        w[i] = Math.exp(-(cost[i]! - cmin) / ((cmax - cmin) * p.routerTemperature));
        total += w[i]!;
      }
      let r = ctx.rng() * total;
      chosen = -1;
      for (let i = 0; i < ctx.n; i++) {
        if (!ctx.isUp(i)) continue;
        chosen = i;
        r -= w[i]!;
        if (r <= 0) break;
      }
    } else chosen = argminUp(ctx, (i) => cost[i]!);
    return { instance: chosen, intent: p.intent, alternatives, reason: 'dynamo-cost' };
  }

  /**
   * P/D decision (module doc): the decode worker, then (conditional disaggregation) the bypass
   * rule, then the prefill worker. `extra` must hold this request's additional active blocks.
   */
  private decidePd(ctx: DecideContext, reqBlocks: number): StrategyChoice {
    const p = this.p;
    const req = ctx.req;
    const bs = p.blockSize;
    const cost = this.cost;
    const alternatives: Alternative[] = [];
    // cache credit (blocks) of worker i: device + weighted tier extensions
    const credit = (i: number) => (p.overlapScoreWeight === 0 ? 0 : Math.floor(ctx.cachedTokens(i) / bs) + p.hostCacheHitWeight * Math.floor(ctx.cpuTokens(i) / bs) + p.diskCacheHitWeight * Math.floor(ctx.remoteTokens(i) / bs));
    const prefillLogit = (i: number) => p.overlapScoreWeight * Math.max(0, (ctx.load(i).prefillTokens + req.inputTokens) / bs - credit(i));
    // decode worker: plain = active blocks (no dedup) + this request's; conditional = the full logit
    for (let i = 0; i < ctx.n; i++) cost[i] = ctx.alive(i) && decodeCapable(ctx.cluster.instances[i]!) ? (p.conditionalDisagg ? prefillLogit(i) + this.activeBlocks[i]! + this.extra[i]! : this.activeBlocks[i]! + reqBlocks) : Infinity;
    const D = this.argmin(ctx, cost);
    if (D >= 0 && p.conditionalDisagg) {
      const cached = Math.min(credit(D) * bs, req.inputTokens);
      const eff = req.inputTokens - cached;
      if (eff < p.effIslThreshold && eff / Math.max(req.inputTokens, 1) < p.effIslRatioThreshold) {
        alternatives.push({ instance: D, intent: p.intent, score: cost[D]! });
        return { instance: D, intent: p.intent, alternatives, reason: `dynamo-cost;bypass eff_isl=${eff}` };
      }
    }
    // prefill worker: the prefill logit over the prefill pool
    for (let i = 0; i < ctx.n; i++) {
      cost[i] = ctx.isUp(i) ? prefillLogit(i) : Infinity;
      if (ctx.isUp(i)) alternatives.push({ instance: i, intent: p.intent, score: cost[i]! });
    }
    const P = this.argmin(ctx, cost);
    const choice: StrategyChoice = { instance: P, intent: p.intent, alternatives, reason: 'dynamo-cost;disagg' };
    if (D >= 0 && D !== P) choice.decode = D;
    return choice;
  }

  /** argmin of `cost` over finite entries, exact ties by uniform reservoir sampling; -1 when none. */
  private argmin(ctx: DecideContext, cost: Float64Array): number {
    let best = -1;
    let ties = 0;
    for (let i = 0; i < ctx.n; i++) {
      const c = cost[i]!;
      if (c === Infinity) continue;
      if (best < 0 || c < cost[best]!) {
        best = i;
        ties = 1;
      } else if (c === cost[best] && ctx.rng() * ++ties < 1) best = i;
    }
    return best;
  }

  /**
   * Books the request's prompt blocks as active on its decode worker (the chosen worker when
   * colocated; released at completion). Plain P/D decode routing books them without dedup.
   */
  onDispatch(ctx: DecideContext, d: Decision): void {
    const req = ctx.req;
    if (this.n !== ctx.n) this.init(ctx.n);
    const counts = this.blockCounts(req.inputTokens, req.blockSize, req.blocks.length).slice(0, req.blocks.length);
    const i = d.decode ?? d.instance;
    const booked = Math.floor(req.inputTokens / this.p.blockSize);
    const reuse = this.p.assumeKvReuse && (!ctx.hasRoles || this.p.conditionalDisagg);
    this.active.set(req.id, { instance: i, blocks: req.blocks, counts, booked, reuse });
    if (!reuse || req.blocks.length === 0) {
      this.activeBlocks[i]! += booked;
      return;
    }
    for (let j = 0; j < req.blocks.length; j++) if ((this.refs.counts(req.blocks[j]!)?.[i] ?? 0) === 0) this.activeBlocks[i]! += counts[j]!;
    this.refs.add(i, req.blocks);
  }

  onComplete(id: string): void {
    const a = this.active.get(id);
    if (!a) return;
    this.active.delete(id);
    const i = a.instance;
    if (i >= this.n) return;
    if (!a.reuse || a.blocks.length === 0) {
      const booked = a.booked;
      this.activeBlocks[i] = Math.max(0, this.activeBlocks[i]! - booked);
      return;
    }
    this.refs.remove(i, a.blocks);
    for (let j = 0; j < a.blocks.length; j++) if ((this.refs.counts(a.blocks[j]!)?.[i] ?? 0) === 0) this.activeBlocks[i]! -= a.counts[j]!;
  }

  onInstanceDown(i: number): void {
    if (i >= this.n) return;
    for (const [id, a] of this.active) {
      if (a.instance !== i) continue;
      this.onComplete(id);
    }
    this.activeBlocks[i] = 0;
  }

  /** floor(tokens / bs) per trace block of a prompt (scratch array, valid until the next call). */
  private blockCounts(inputTokens: number, traceBlock: number, nBlocks: number): Int32Array {
    if (this.counts.length < nBlocks) this.counts = new Int32Array(Math.max(nBlocks, this.counts.length * 2));
    const c = this.counts;
    const bs = this.p.blockSize;
    for (let j = 0; j < nBlocks; j++) {
      const start = j * traceBlock;
      const t = Math.max(0, Math.min(traceBlock, inputTokens - start));
      c[j] = Math.floor(t / bs);
    }
    return c;
  }

  private init(n: number): void {
    this.n = n;
    this.refs = new ActiveBlocks(n);
    this.activeBlocks = new Float64Array(n);
    this.cost = new Float64Array(n);
    this.extra = new Float64Array(n);
  }
}
