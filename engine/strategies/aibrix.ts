/**
 * `aibrix-prefix`: AIBrix gateway `prefix-cache` routing (vllm-project/aibrix @ e3e10f9e,
 * pkg/plugins/gateway/algorithms/prefix_cache.go `routeOriginal`, least_request.go,
 * util.go; table: pkg/utils/prefixcacheindexer/hash.go, pkg/utils/lrustore/lru_store.go).
 *
 * 1. Load = the gateway's own running-request counter per pod (`RealtimeNumRequestsRunning`,
 *    counted at routing, released at completion). If max − min > 8
 *    (`AIBRIX_PREFIX_CACHE_POD_RUNNING_REQUEST_IMBALANCE_ABS_COUNT`), the match is restricted to
 *    the pods at the minimum (`getTargetPodListOnLoadImbalance`).
 * 2. Prefix match in ONE table shared by all pods (`PrefixHashTable`): block hash -> pods that
 *    were routed a prompt containing it; walk the prompt's blocks until a miss; each pod still
 *    matching gets the integer percentage (i + 1)·100 / blocks (`seqSearchPrefix`).
 * 3. Matched pods are shuffled, stably sorted by percentage desc then running asc, and the first
 *    with running <= mean + 1·σ (mean and *sample* σ over all ready pods) wins
 *    (`getTargetPodFromMatchedPods`); else least-request over all ready pods, random among the
 *    minimum (`selectTargetPodWithLeastRequestCount`).
 * 4. After routing every block of the prompt is `Put` for the chosen pod (`AddPrefix`).
 * Table: an LRU store of 200,000 entries (`defaultPrefixCacheBlockNumber`) over blocks of 4
 * tokenizer units (`defaultPrefixCacheBlockSize`) of the default `character` tokenizer, i.e.
 * 200,000 × 4 bytes of prompt text ≈ 200,000 tokens (~4 characters per token) for the whole
 * cluster; `Put` refreshes recency (`Get` does not); entries idle for 20 minutes are dropped
 * (`defaultPrefixCacheEvictionDurationInMins`, checked every second). We keep that capacity in
 * tokens: ⌊200,000 / trace block size⌋ trace blocks, a global LRU with the same idle expiry.
 */
import type { DecideContext, Strategy, StrategyChoice } from '../engine.js';
import type { Alternative, Decision, Intent } from '../types.js';

/** Parameters of `aibrix-prefix` (AIBrix gateway code defaults). */
export interface AibrixParams {
  imbalanceAbsCount: number;
  stdDevFactor: number;
  /** shared prefix table capacity, tokens (200,000 blocks × 4 characters ≈ 200,000 tokens). */
  tableCapacityTokens: number;
  /** idle expiry of a table entry, ms (20 min). */
  tableIdleMs: number;
  intent: Intent;
}

/** AIBrix's code defaults (imbalance 8 running requests, σ factor 1, ≈200,000-token table, 20 min idle expiry). */
export const AIBRIX_DEFAULTS: AibrixParams = { imbalanceAbsCount: 8, stdDevFactor: 1, tableCapacityTokens: 200_000, tableIdleMs: 20 * 60_000, intent: 'text' };

interface Entry {
  /** pods routed a prompt containing this block (instance indexes). */
  pods: number[];
  /** last Put (ms). */
  at: number;
}

/**
 * AIBrix's shared prefix table: block id -> pods, an LRU on `put` with idle expiry (Map order
 * is the recency order: a put moves the entry to the end).
 */
export class AibrixPrefixTable {
  readonly entries = new Map<number, Entry>();
  constructor(
    readonly capacityBlocks: number,
    readonly idleMs: number,
  ) {}

  /** Drops entries idle for more than `idleMs` at `now` (the oldest are first in the map). */
  expire(now: number): void {
    for (const [k, e] of this.entries) {
      if (now - e.at <= this.idleMs) break;
      this.entries.delete(k);
    }
  }

  /** Records that `pod` was routed `blocks` at `now` (AddPrefix). */
  put(blocks: readonly number[], pod: number, now: number): void {
    for (const b of blocks) {
      const e = this.entries.get(b);
      if (e) {
        this.entries.delete(b);
        if (!e.pods.includes(pod)) e.pods.push(pod);
        e.at = now;
        this.entries.set(b, e);
      } else {
        this.entries.set(b, { pods: [pod], at: now });
        if (this.entries.size > this.capacityBlocks) this.entries.delete(this.entries.keys().next().value!);
      }
    }
  }

  /**
   * Integer match percentage per candidate pod (seqSearchPrefix): walks `blocks` until no
   * candidate matches; `out[i]` = (matched + 1 of the last block it matched)·100 / total, or 0.
   */
  match(blocks: readonly number[], candidates: readonly number[], out: Int32Array): void {
    out.fill(0);
    let live = candidates.slice();
    for (let j = 0; j < blocks.length && live.length; j++) {
      const e = this.entries.get(blocks[j]!);
      if (!e) break;
      const pct = Math.floor(((j + 1) * 100) / blocks.length);
      const next: number[] = [];
      for (const i of live) if (e.pods.includes(i)) {
        out[i] = pct;
        next.push(i);
      }
      live = next;
    }
  }

  /** Removes a pod everywhere (pod gone). */
  dropPod(pod: number): void {
    for (const [k, e] of this.entries) {
      const j = e.pods.indexOf(pod);
      if (j < 0) continue;
      e.pods.splice(j, 1);
      if (e.pods.length === 0) this.entries.delete(k);
    }
  }
}

/** The `aibrix-prefix` strategy (module doc). */
export class AibrixPrefixStrategy implements Strategy {
  readonly name = 'aibrix-prefix';
  private readonly p: AibrixParams;
  private table: AibrixPrefixTable | null = null;
  private buf = new Int32Array(0);

  constructor(params: Partial<AibrixParams> = {}) {
    this.p = { ...AIBRIX_DEFAULTS, ...params };
  }

  decide(ctx: DecideContext): StrategyChoice {
    const p = this.p;
    const req = ctx.req;
    if (!this.table) {
      const cap = Number.isFinite(p.tableCapacityTokens) ? Math.max(1, Math.floor(p.tableCapacityTokens / req.blockSize)) : Infinity;
      this.table = new AibrixPrefixTable(cap, p.tableIdleMs);
      this.buf = new Int32Array(ctx.n);
    }
    this.table.expire(ctx.now);
    const running = (i: number) => ctx.load(i).inflight;
    const ready: number[] = [];
    for (let i = 0; i < ctx.n; i++) if (ctx.isUp(i)) ready.push(i);
    let minR = Infinity;
    let maxR = -Infinity;
    for (const i of ready) {
      minR = Math.min(minR, running(i));
      maxR = Math.max(maxR, running(i));
    }
    let cands = ready;
    let reason = 'prefix';
    if (maxR - minR > p.imbalanceAbsCount) {
      cands = ready.filter((i) => running(i) === minR);
      reason = 'imbalance';
    }
    this.table.match(req.blocks, cands, this.buf);
    const pct = (i: number) => this.buf[i]!;
    const alternatives: Alternative[] = cands.map((i) => ({ instance: i, intent: p.intent, score: -pct(i) }));
    const matched = cands.filter((i) => pct(i) > 0);
    if (matched.length) {
      // shuffle (seeded), then stable sort by match desc, running asc
      for (let j = matched.length - 1; j > 0; j--) {
        const r = Math.floor(ctx.rng() * (j + 1));
        [matched[j], matched[r]] = [matched[r]!, matched[j]!];
      }
      matched.sort((a, b) => pct(b) - pct(a) || running(a) - running(b));
      const rs = ready.map(running);
      const mean = rs.reduce((a, b) => a + b, 0) / rs.length;
      const sd = rs.length > 1 ? Math.sqrt(rs.reduce((a, b) => a + (b - mean) * (b - mean), 0) / (rs.length - 1)) : 0;
      for (const i of matched) {
        if (running(i) <= mean + p.stdDevFactor * sd) return { instance: i, intent: p.intent, alternatives, reason };
      }
      reason += ';prefix-match-skipped';
    }
    // least request over all ready pods, random among the minimum
    let best = -1;
    let ties = 0;
    for (const i of ready) {
      if (best < 0 || running(i) < running(best)) {
        best = i;
        ties = 1;
      } else if (running(i) === running(best) && ctx.rng() * ++ties < 1) best = i;
    }
    return { instance: best, intent: p.intent, alternatives, reason: `${reason};least-request` };
  }

  onDispatch(ctx: DecideContext, d: Decision): void {
    if (this.table && ctx.req.blocks.length) this.table.put(ctx.req.blocks, d.instance, ctx.now);
  }

  onInstanceDown(i: number): void {
    this.table?.dropPod(i);
  }
}
