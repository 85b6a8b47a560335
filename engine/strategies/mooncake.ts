/**
 * `mooncake` and `mooncake-local`: Mooncake's Conductor, "KVCache-centric Scheduling Algorithm"
 * (Qin et al., FAST'25, Algorithm 1 and §4.1–4.2; kvcache-ai/Mooncake @ 3b5a594,
 * FAST25-release/Mooncake-FAST25.pdf). The scheduler itself is not open source (the repository's
 * Conductor is the KV indexer it queries, docs/source/design/conductor/); we follow the paper.
 *
 * For every prefill instance (role prefill or mixed; every instance when the cluster has no roles):
 *   best_len, best_instance = the longest cached prefix of the request over all instances
 *   if best_len / instance.prefix_len > kvcache_balancing_threshold (`mooncake` only):
 *       prefix_len = best_len, T_transfer = EstimateKVCacheTransferTime(best_len − prefix_len)
 *   else prefix_len = instance.prefix_len, T_transfer = 0
 *   T_queue   = EstimatePrefillQueueTime(instance): the sum of the estimated prefill times of
 *               the requests queued there (booked at dispatch with the same estimate, drained
 *               as they run, corrected at their first token)
 *   T_prefill = EstimatePrefillExecutionTime(len, prefix_len): a polynomial fitted offline
 *               (engine/peer-models.ts `mooncakeFit`)
 *   TTFT = T_transfer + T_queue + T_prefill; the first instance with the smallest TTFT wins.
 * If the chosen instance transfers, the prefix KV really moves best_instance → instance over
 * the instance-to-instance link (`ClusterSpec.peerLink`), FIFO per pair, and the target then
 * caches it (the simulator loads it into the target's KV memory).
 * Early rejection (Algorithm 1 lines 17–19, the 429 of §4.1): with `ttftSloMs` / `tbtSloMs`
 * set, a request whose best TTFT or whose decode TBT estimate exceeds its SLO is rejected.
 * Decode selection (line 17, `SelectDecodingInstance(D)`): with P/D roles, the decode instance
 * with the smallest predicted TBT (engine/pd.ts `minTbtDecode`, `decodeTbtMs`; a mixed prefill instance keeps the
 * request when its own TBT is smaller); without roles the chosen instance decodes. The TBT
 * estimate is one of its longest iterations (engine/predict.ts `tbtEstimateMs`, the same estimate
 * kvlab's admission control uses). Early rejection is off by default (0).
 * KV tiers: an instance's prefix_len is what its GPU and its CPU tier hold (Mooncake's prefill
 * nodes keep their prefix cache in the node's DRAM, §3.2), as its tier-tagged KV events report.
 * The threshold is "adjusted manually" in the paper (no value is published); default 1 = move
 * whenever another instance holds a longer prefix, chosen on the tuning set (docs/EVALUATION.md).
 */
import { transferMs } from '../costmodel.js';
import type { DecideContext, Strategy, StrategyChoice } from '../engine.js';
import { PEER_LINK_DEFAULT } from '../engine.js';
import { mooncakeFit, mooncakePrefillMs } from '../peer-models.js';
import { decodeTbtMs, minTbtDecode } from '../pd.js';
import { predictionOf, tbtEstimateMs } from '../predict.js';
import type { Alternative } from '../types.js';

/** Parameters of the Mooncake strategies (ms, ratio). */
export interface MooncakeParams {
  /** kvcache_balancing_threshold: move the best remote prefix when best_len > threshold × local prefix_len. */
  balancingThreshold: number;
  /** false = `mooncake-local` (local cache-aware: never move KV between instances). */
  transfer: boolean;
  /** early rejection when the best predicted TTFT exceeds this (ms; 0 = off). */
  ttftSloMs: number;
  /** early rejection when the predicted TBT exceeds this (ms; 0 = off). */
  tbtSloMs: number;
}

/** Defaults (module doc): threshold 1, transfer on, no early rejection. */
export const MOONCAKE_DEFAULTS: MooncakeParams = { balancingThreshold: 1, transfer: true, ttftSloMs: 0, tbtSloMs: 0 };

/** Mooncake's Conductor, Algorithm 1 (module doc). */
export class MooncakeStrategy implements Strategy {
  readonly name: string;
  private readonly p: MooncakeParams;

  constructor(params: Partial<MooncakeParams> = {}) {
    this.p = { ...MOONCAKE_DEFAULTS, ...params };
    this.name = this.p.transfer ? 'mooncake' : 'mooncake-local';
  }

  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    const req = ctx.req;
    const L = req.inputTokens;
    let bestLen = 0;
    let bestInst = -1;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const c = ctx.cachedTokens(i) + ctx.cpuTokens(i);
      if (c > bestLen) {
        bestLen = c;
        bestInst = i;
      }
    }
    const link = ctx.cluster.peerLink ?? PEER_LINK_DEFAULT;
    const alternatives: Alternative[] = [];
    let ttft = Infinity;
    let chosen = -1;
    let cQueue = 0;
    let cPrefill = 0;
    let cXfer = 0;
    let cWait = 0;
    let cPrefix = 0;
    let cMove = false;
    for (let i = 0; i < ctx.n; i++) {
      if (!ctx.isUp(i)) continue;
      const local = ctx.cachedTokens(i) + ctx.cpuTokens(i);
      let prefix = local;
      let tXfer = 0;
      let wait = 0;
      let move = false;
      if (p.transfer && bestInst >= 0 && bestInst !== i && bestLen > p.balancingThreshold * local) {
        prefix = bestLen;
        wait = ctx.peerLinkWaitMs(bestInst, i);
        tXfer = transferMs((bestLen - local) * ctx.cluster.instances[i]!.profile.model.kvBytesPerToken, link);
        move = true;
      }
      const tQueue = ctx.backlogMs(i);
      const tPrefill = mooncakePrefillMs(mooncakeFit(ctx.cluster.instances[i]!.profile), L, prefix);
      const t = wait + tXfer + tQueue + tPrefill;
      alternatives.push({ instance: i, intent: 'none', score: t, ttftMs: t });
      if (ttft > t) {
        ttft = t;
        chosen = i;
        cQueue = tQueue;
        cPrefill = tPrefill;
        cXfer = tXfer;
        cWait = wait;
        cPrefix = prefix;
        cMove = move;
      }
    }
    const pred = predictionOf({
      linkWaitMs: cWait,
      transferMs: cXfer,
      queueMs: cQueue,
      prefillMs: cPrefill,
      ttftMs: ttft,
      transferTokens: cMove ? bestLen - ctx.cachedTokens(chosen) : 0,
      computeTokens: Math.max(1, L - cPrefix),
      workMs: cPrefill,
    });
    const intent = req.knowledgeTokens > 0 ? 'text' : 'none';
    const choice: StrategyChoice = { instance: chosen, intent, alternatives, reason: cMove ? 'min-ttft;transfer' : 'min-ttft', prediction: pred };
    if (cMove) choice.peer = { from: bestInst, tokens: bestLen };
    // d, TBT = SelectDecodingInstance(D) (line 17): the decode instance with the smallest predicted
    // TBT; colocated clusters decode where they prefill
    let tbt: number;
    if (ctx.hasRoles && chosen >= 0) {
      const d = minTbtDecode(ctx.n, chosen, (i) => ctx.cluster.instances[i]!, (i) => ctx.alive(i), (i) => ctx.load(i));
      if (d.instance >= 0 && (ctx.role(chosen) === 'prefill' || d.tbtMs < decodeTbtMs(ctx.cluster.instances[chosen]!, ctx.load(chosen)))) {
        choice.decode = d.instance;
        tbt = d.tbtMs;
      } else tbt = decodeTbtMs(ctx.cluster.instances[chosen]!, ctx.load(chosen));
    } else tbt = p.tbtSloMs > 0 && chosen >= 0 ? tbtEstimateMs(ctx.cluster.instances[chosen]!, ctx.load(chosen)) : 0;
    // lines 18-19: early rejection
    if (p.ttftSloMs > 0 && ttft > p.ttftSloMs) choice.reject = `predicted TTFT ${Math.round(ttft)} ms > SLO ${p.ttftSloMs} ms`;
    else if (p.tbtSloMs > 0 && tbt > p.tbtSloMs) choice.reject = `predicted TBT ${Math.round(tbt)} ms > SLO ${p.tbtSloMs} ms`;
    return choice;
  }
}
