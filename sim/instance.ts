/**
 * Instance model faithful to vLLM V1 scheduling, used by the simulator (virtual clock) and by
 * the emulator (wall clock).
 *
 * Scheduling, per iteration (vLLM V1 `Scheduler.schedule`):
 * - one token budget `max_num_batched_tokens`; each request gets
 *   `min(target - computed, remaining budget, long_prefill_token_threshold)` new tokens, where
 *   target = prompt + generated (so prefill, chunked prefill, decode and recompute after
 *   preemption are one rule);
 * - running requests first, in order; when KV memory runs out, the last running request is
 *   preempted (recompute: its KV is freed, it goes back to the front of the waiting queue);
 * - then, if nothing was preempted in this step, waiting requests FCFS while budget remains and
 *   fewer than `max_num_seqs` run; each is admitted with its prefix-cache hit (contiguous
 *   block match, capped at prompt - 1) plus the external (LMCache) prefix loaded into memory;
 *   admission stops at the first request whose KV does not fit;
 * - async scheduling (`engine.asyncScheduling`, vLLM >= 0.12 default): the scheduler forms step
 *   N+1 while step N runs, so a request that reached the core after step N started is admitted
 *   at step N+2 at the earliest — unless nothing is running, in which case no step N+1 was formed
 *   and it is admitted at once (vllm/v1/engine/core.py step_with_batch_queue; vllm/config/vllm.py
 *   turns async scheduling on by default).
 * Step time comes from the profile's step model (engine/costmodel.ts); loading external KV adds
 * the KV load time (LMCache retrieve) to the step that admits the request.
 *
 * Knowledge reuse beyond the prefix (instance capabilities):
 * - blend (CacheBlend): the KV of every document span beyond the prefix hit is loaded at
 *   admission (pipelined with the recompute: only the longer part shows); the request then
 *   computes the tokens outside the spans plus the recomputed share of them
 *   (engine/knowledge.ts `blendRecomputeTokens`), placed at the end of its prompt;
 * - overlap (Cake): the request is admitted while the KV of its tail [start, end) is still on the
 *   link; it computes its head up to `start`, stalls there until the tail has arrived and been
 *   retrieved (`tailArrived`: I/O beside the compute), then computes the rest.
 *
 * KV tiers (`InstanceSpec.tiers`): after the GPU prefix hit, the blocks that follow are looked up
 * in the CPU tier, then the remote tier (LMCache checks its local CPU backend, then the remote
 * one, chunk by chunk); a contiguous run of tier hits is loaded instead of computed — CPU hits at
 * the host link's bandwidth (engine/costmodel.ts `tierLoadMs`), remote hits with the profile's
 * KV load model — blocking the admitting step like any LMCache retrieve. Remote hits are copied
 * to the CPU tier. Requests with their own external prefix timing (P/D hand-offs, peer moves,
 * overlapped or blended knowledge) do not use the tiers.
 */
import type { BlendSpec, InstanceSpec, StepModel } from '../engine/types.js';
import { chunkAttnUnits, curveMs, emptyComposition, kvLoadMs, slopeLast, stepMs, tierLoadMs, type StepComposition } from '../engine/costmodel.js';
import { blendRecomputeTokens, spanTokensFrom } from '../engine/knowledge.js';
import { blendLoadMs } from '../engine/predict.js';
import { KvCache, TierCache, type BlockEntry, type KvEventSink } from './kvcache.js';

/** A request as the instance sees it. */
export interface CoreRequest {
  id: string;
  promptTokens: number;
  outputTokens: number;
  /** chained prefix-block ids of the prompt (may be empty: no prefix caching). */
  blocks: number[];
  /** tokens per block of `blocks`. */
  blockSize: number;
  /**
   * Length of the prompt prefix whose KV is available in the external store (LMCache Redis),
   * tokens. At admission the part not already hit in the GPU prefix cache is loaded.
   */
  loadedTokens: number;
  /** KV load time override (ms) for the external part; < 0 or undefined: from the profile. */
  kvLoadMs?: number;
  /** the driver's index of this request, passed back to `onTokens` (default -1). */
  tag?: number;
  /**
   * blend: prompt spans [start, end) whose KV is loaded wherever they sit (every document's full
   * chunks) and the instance's CacheBlend settings.
   */
  blend?: { spans: ReadonlyArray<readonly [number, number]>; spec: BlendSpec };
  /**
   * overlap: the KV of prompt tokens [start, end) crosses the link while the head before `start`
   * is computed; `ready` = it has already arrived when the request reaches the core.
   */
  tail?: { start: number; end: number; ready: boolean };
}

/** Overlap tail states of a request. */
const TAIL_NONE = 0;
const TAIL_WAITING = 1;
const TAIL_READY = 2;
const TAIL_DONE = 3;

/** Tokens emitted / state changes in one finished step (request ids). */
export interface StepEvents {
  firstToken: string[];
  token: string[];
  done: string[];
  preempted: string[];
  rejected: string[];
}

const WAITING = 0;
const RUNNING = 1;
const DONE = 2;

/** Per-request state inside the instance; exposed read-only to drivers for timing records. */
export class ReqState {
  computed = 0;
  generated = 0;
  state = WAITING;
  /** blocks this request holds references on, in prompt order. */
  refs: BlockEntry[] = [];
  /** index of the next prompt block waiting to be registered as cached. */
  nextBlock = 0;
  /** private (unshared) tokens this request holds in KV memory. */
  private = 0;
  /**
   * Blocks of computed output tokens cached when the request was preempted (vLLM keeps the full
   * blocks of a preempted request in the prefix cache until they are evicted), in order.
   */
  tails: BlockEntry[] = [];
  /** a partly resident prompt block the request hit (referenced; completed when recomputed). */
  partial: BlockEntry | null = null;
  /** tokens of `partial` the request took from the cache. */
  partialHit = 0;
  /** tokens scheduled in the running step. */
  sched = 0;
  /** prefix-cache hit tokens at first admission. */
  hitTokens = -1;
  /** external KV tokens loaded at first admission (overlap: plus its tail), and the load time (ms; tier loads included). */
  loadTokens = 0;
  kvLoadMs = 0;
  /** tokens loaded from the CPU tier and from the remote tier at first admission. */
  cpuTokens = 0;
  remoteTokens = 0;
  /** overlap: state of the KV tail arriving over the link (TAIL_*). */
  kvTail = TAIL_NONE;
  preemptions = 0;
  /** virtual/wall times (ms): arrival at the core, first scheduled, first token, done. */
  arrivedAt = 0;
  firstScheduledAt = -1;
  firstTokenAt = -1;
  doneAt = -1;
  constructor(readonly req: CoreRequest) {}
}

/** Options of an InstanceCore. */
export interface InstanceCoreOptions {
  /** KV event receiver (stored / removed / cleared block ids). */
  onKvEvent?: KvEventSink;
  /**
   * Multiplicative step-time noise: factor for the instance's step number `step` (0, 1, ...).
   * A pure function of the step number keeps coalesced runs identical to single stepping.
   */
  noise?: (step: number) => number;
  /** keep finished request states readable (default true; the simulator drops them). */
  keepDone?: boolean;
  /** list decode tokens in StepEvents.token (default true; the simulator does not need them). */
  reportTokens?: boolean;
  /**
   * reuse one StepEvents object (its arrays are cleared) for every finishStep instead of
   * allocating a new one; the caller must not keep it across steps (default false).
   */
  reuseEvents?: boolean;
  /**
   * Token times, for token-gap metrics (TBT): request `tag` produced `k` tokens at
   * `t0 + ends[j]` (j < k; a coalesced decode run) or, with `ends` null, one token at `t0`.
   * Called once per request per finished step/run, in schedule order.
   */
  onTokens?: (tag: number, t0: number, ends: Float64Array | null, k: number) => void;
}

/** The vLLM-V1-like instance. Not re-entrant: one step runs at a time. */
export class InstanceCore {
  readonly kv: KvCache;
  /** KV tiers below the GPU (null = none): CPU (LMCache local_cpu) and remote (LMCache's Redis). */
  readonly cpu: TierCache | null;
  readonly remote: TierCache | null;
  readonly model: StepModel;
  private readonly budget: number;
  private readonly maxSeqs: number;
  private readonly threshold: number;
  private readonly asyncScheduling: boolean;
  /** start of the last iteration executed (async scheduling admits what arrived before it). */
  private lastIterStart = -Infinity;
  /** end of the last run (a later start means the core was idle in between). */
  private lastEnd = -Infinity;
  private waiting: ReqState[] = [];
  private wHead = 0;
  private running: ReqState[] = [];
  private scheduled: ReqState[] = [];
  private readonly states = new Map<string, ReqState>();
  private readonly noise?: (step: number) => number;
  private readonly keepDone: boolean;
  private readonly reportTokens: boolean;
  private readonly reuseEvents: boolean;
  private readonly onTokens?: (tag: number, t0: number, ends: Float64Array | null, k: number) => void;
  private readonly ev: StepEvents = { firstToken: [], token: [], done: [], preempted: [], rejected: [] };
  /** steps remaining in a coalesced decode run (>= 1 while busy). */
  private runSteps = 0;
  private stepStart = 0;
  /** total busy time (ms) and steps executed. */
  busyMs = 0;
  steps = 0;
  preemptions = 0;
  /** prefill (and recompute) tokens scheduled so far. */
  prefillTokens = 0;
  /** composition of the last step started (for calibration and tests). */
  lastStep: StepComposition = emptyComposition();
  private busyFlag = false;

  constructor(
    readonly spec: InstanceSpec,
    opts: InstanceCoreOptions = {},
  ) {
    this.model = spec.profile.step;
    this.budget = spec.engine.maxNumBatchedTokens;
    this.maxSeqs = spec.engine.maxNumSeqs;
    this.threshold = spec.engine.longPrefillTokenThreshold > 0 ? spec.engine.longPrefillTokenThreshold : Infinity;
    this.asyncScheduling = spec.engine.asyncScheduling === true;
    const t = spec.tiers;
    this.remote = t && t.remoteTokens > 0 ? new TierCache(t.remoteTokens, 'REMOTE', opts.onKvEvent) : null;
    this.cpu = t && t.cpuTokens > 0 ? new TierCache(t.cpuTokens, 'CPU', opts.onKvEvent, this.remote ?? undefined) : null;
    const lower = this.cpu ?? this.remote ?? undefined;
    this.kv = new KvCache(spec.engine.kvCapacityTokens, opts.onKvEvent, spec.engine.blockSizeTokens, lower, lower !== undefined && t!.cpuPolicy === 'write-through');
    this.noise = opts.noise;
    this.keepDone = opts.keepDone ?? true;
    this.reportTokens = opts.reportTokens ?? true;
    this.reuseEvents = opts.reuseEvents ?? false;
    this.onTokens = opts.onTokens;
  }

  /** true while a step is running. */
  get busy(): boolean {
    return this.busyFlag;
  }

  /** requests waiting + running. */
  get load(): { waiting: number; running: number } {
    return { waiting: this.waiting.length - this.wHead, running: this.running.length };
  }

  /** State of a request (undefined once forgotten). */
  get(id: string): ReqState | undefined {
    return this.states.get(id);
  }

  /** Forgets a finished request's state (the simulator calls it after reading the record). */
  forget(id: string): void {
    this.states.delete(id);
  }

  /**
   * Hands a request to the engine core at `nowMs`.
   * @returns false when the request is rejected: prompt + output > max_model_len, or it can
   *   never fit in KV memory. Rejected requests are not truncated.
   */
  add(req: CoreRequest, nowMs: number): boolean {
    const total = req.promptTokens + req.outputTokens;
    if (total > this.spec.engine.maxModelLen || total > this.kv.capacityTokens) return false;
    const s = new ReqState(req);
    s.arrivedAt = nowMs;
    this.states.set(req.id, s);
    this.waiting.push(s);
    return true;
  }

  /**
   * Forms and starts the next iteration at `nowMs`.
   * @returns its duration in ms, or -1 when there is nothing to run.
   */
  startStep(nowMs: number): number {
    return this.startRun(nowMs, 0);
  }

  /**
   * Like startStep, but when the step is pure decode with nothing admissible waiting, coalesces
   * up to the next completion (or KV exhaustion) into one run of several iterations, stopping
   * after the iteration during which `untilMs` (the next arrival) falls. Exact: the same
   * iterations with the same durations as stepping one by one.
   * @returns the run duration in ms, or -1 when idle.
   */
  startRun(nowMs: number, untilMs: number): number {
    if (this.busyFlag) throw new Error('InstanceCore: a step is already running');
    if (untilMs > nowMs && this.canCoalesce()) {
      const d = this.startDecodeRun(nowMs, untilMs);
      if (d >= 0) return d;
    }
    const c = this.schedule(nowMs);
    this.kv.flushEvents();
    if (c === null) return -1;
    let d = stepMs(this.model, c) + this.pendingLoadMs;
    this.pendingLoadMs = 0;
    if (this.noise) d *= this.noise(this.steps);
    this.lastStep = c;
    this.runSteps = 1;
    this.stepStart = nowMs;
    this.busyFlag = true;
    this.busyMs += d;
    this.steps++;
    this.runEnds[0] = d;
    return d;
  }

  private pendingLoadMs = 0;
  private preemptedBuf: string[] = [];
  /** next synthetic (negative) block id for a preempted request's cached output blocks. */
  private nextTailId = -1;

  /** vLLM V1 schedule(): returns the step composition, or null when nothing is schedulable. */
  private schedule(nowMs: number): StepComposition | null {
    const c = emptyComposition();
    let budget = this.budget;
    const running = this.running;
    const sched = this.scheduled;
    sched.length = 0;
    let preempted = false;
    // fast path: free memory covers a full budget, so no allocation below can fail or evict
    const fast = this.kv.capacityTokens - this.kv.used >= budget;
    let fastTokens = 0;
    // 1) running requests, in order
    for (let i = 0; i < running.length && budget > 0; i++) {
      const r = running[i]!;
      if (r.kvTail === TAIL_WAITING || r.kvTail === TAIL_READY) {
        if (this.tailLimit(r) <= 0) continue; // stalled at the tail: nothing this step
      }
      const target = r.req.promptTokens + r.generated;
      let n = target - r.computed;
      if (n > budget) n = budget;
      if (n > this.threshold) n = this.threshold;
      if (r.kvTail === TAIL_WAITING || r.kvTail === TAIL_READY) n = Math.min(n, this.tailLimit(r));
      if (fast) {
        fastTokens += n;
        r.private += n;
        r.sched = n;
        sched.push(r);
        budget -= n;
        this.account(c, r, n);
        continue;
      }
      let ok = true;
      while (!this.kv.allocate(n)) {
        const victim = running.pop()!;
        this.preempt(victim);
        preempted = true;
        if (victim === r) {
          ok = false;
          break;
        }
      }
      if (!ok) break;
      r.private += n;
      r.sched = n;
      sched.push(r);
      budget -= n;
      this.account(c, r, n);
    }
    if (fastTokens) this.kv.used += fastTokens;
    // 2) waiting requests, FCFS, only if nothing was preempted. With async scheduling, while
    // requests are running, only those that arrived before the last iteration started were seen
    // by the scheduler (an idle core admits at once).
    if (!preempted) {
      const cutoff = this.asyncScheduling && running.length > 0 && nowMs <= this.lastEnd ? this.lastIterStart : Infinity;
      while (budget > 0 && running.length < this.maxSeqs && this.wHead < this.waiting.length) {
        const r = this.waiting[this.wHead]!;
        if (r.arrivedAt > cutoff) break;
        if (!this.admit(r, budget, nowMs)) break;
        this.wHead++;
        r.state = RUNNING;
        running.push(r);
        if (r.sched === 0) continue; // overlap: admitted at its tail, which has not arrived
        sched.push(r);
        budget -= r.sched;
        this.account(c, r, r.sched);
      }
      if (this.wHead > 1024 && this.wHead * 2 > this.waiting.length) {
        this.waiting = this.waiting.slice(this.wHead);
        this.wHead = 0;
      }
    }
    return sched.length ? c : null;
  }

  private account(c: StepComposition, r: ReqState, n: number): void {
    c.tokens += n;
    if (n === 1 && r.computed >= r.req.promptTokens && r.generated > 0) {
      c.decodeSeqs++;
      c.decodeCtxTokens += r.computed;
    } else {
      c.prefillSeqs++;
      c.attnUnits += chunkAttnUnits(r.computed, n);
      this.prefillTokens += n;
    }
  }

  /** Admits a waiting request: prefix hit + external load + first chunk. false = no memory. */
  private admit(r: ReqState, budget: number, nowMs: number): boolean {
    const q = r.req;
    const kv = this.kv;
    const target = q.promptTokens + r.generated;
    // prefix-cache hit (contiguous), capped so at least one token is computed: whole blocks, then
    // the resident part of a partly evicted (or capped) block
    const ids = q.blocks;
    const m = kv.blocks;
    const cap = target - 1;
    let hit = 0;
    let hitBlocks = 0;
    let partial: BlockEntry | null = null;
    let partialHit = 0;
    for (; hitBlocks < ids.length; hitBlocks++) {
      const e = m.get(ids[hitBlocks]!);
      if (e === undefined) break;
      const room = cap - hit;
      if (room <= 0) break;
      if (e.resident < e.tokens || e.tokens > room) {
        const got = Math.min(e.resident, room);
        if (got > 0) {
          partial = e;
          partialHit = got;
          hit += got;
        }
        break;
      }
      hit += e.tokens;
    }
    // KV tiers below the GPU: the blocks that follow the GPU hit, from CPU then remote memory
    let tierTok = 0;
    let tierMs = 0;
    if ((this.cpu || this.remote) && !q.tail && !q.blend && !(q.kvLoadMs !== undefined && q.kvLoadMs >= 0) && hitBlocks < ids.length) {
      if (partial && (this.cpu?.has(ids[hitBlocks]!) || this.remote?.has(ids[hitBlocks]!))) {
        // a partly evicted block the tier holds whole: load it rather than recompute its tail
        hit -= partialHit;
        partial = null;
        partialHit = 0;
      }
      if (!partial) {
        const B = q.blockSize;
        let cpuTok = 0;
        let remTok = 0;
        for (let k = hitBlocks; k < ids.length; k++) {
          const id = ids[k]!;
          const inCpu = this.cpu !== null && this.cpu.has(id);
          if (!inCpu && !(this.remote !== null && this.remote.has(id))) break;
          const room = cap - hit - cpuTok - remTok;
          if (room <= 0) break;
          const tok = Math.min(B, q.promptTokens - k * B, room);
          if (tok <= 0) break;
          if (inCpu) {
            cpuTok += tok;
            this.cpu!.touch(id);
          } else {
            remTok += tok;
            this.remote!.touch(id);
            this.cpu?.insert(id, Math.min(B, q.promptTokens - k * B));
          }
        }
        tierTok = cpuTok + remTok;
        if (tierTok > 0) {
          const prof = this.spec.profile;
          tierMs = tierLoadMs(cpuTok, prof.model.kvBytesPerToken, this.spec.tiers!.hostLinkGBps, this.spec.tiers!.hostLoadFixedMs) + kvLoadMs(prof.kvLoad, remTok);
          if (r.hitTokens < 0) {
            r.cpuTokens = cpuTok;
            r.remoteTokens = remTok;
          }
        }
      }
    }
    for (let i = 0; i < hitBlocks; i++) kv.ref(m.get(ids[i]!)!);
    if (partial) kv.ref(partial);
    // a preempted request also finds its cached output blocks, contiguously after a full prompt hit
    if (r.tails.length) {
      const tails = r.tails;
      r.tails = [];
      if (hitBlocks === ids.length && ids.length > 0 && !partial) {
        for (const t of tails) {
          const got = m.get(t.id) === t ? Math.min(t.resident, cap - hit) : 0;
          if (got <= 0) break;
          kv.ref(t);
          r.tails.push(t);
          hit += got;
          if (got < t.tokens) break;
        }
      }
    }
    // external (LMCache) prefix beyond the local hit
    const ext = Math.min(q.loadedTokens, target - 1);
    let load = ext > hit + tierTok ? ext - hit : tierTok;
    // blend: every document span beyond the hit is loaded; a share of it is computed again
    let recompute = 0;
    if (q.blend && load === 0) {
      load = Math.min(spanTokensFrom(q.blend.spans, hit), target - 1 - hit);
      if (load < 0) load = 0;
      recompute = blendRecomputeTokens(load, q.blend.spec, this.spec.profile.model.layers);
    }
    // overlap: the tail's KV memory is reserved now, its load happens when it has arrived
    let reserve = 0;
    if (q.tail && r.kvTail !== TAIL_DONE) {
      const end = Math.min(q.tail.end, target - 1);
      if (hit >= end) r.kvTail = TAIL_DONE;
      else {
        if (r.kvTail === TAIL_NONE) r.kvTail = q.tail.ready ? TAIL_READY : TAIL_WAITING;
        reserve = end - Math.max(hit, q.tail.start);
      }
    }
    const start = hit + load - recompute;
    let n = target - start;
    if (n > budget) n = budget;
    if (n > this.threshold) n = this.threshold;
    if (reserve > 0 && start < q.tail!.start) n = Math.min(n, q.tail!.start - start);
    else if (reserve > 0) n = 0; // the head is cached: the tail is next
    if (!kv.allocate(load - recompute + reserve + n)) {
      for (let i = r.tails.length - 1; i >= 0; i--) kv.unref(r.tails[i]!);
      if (partial) kv.unref(partial);
      for (let i = hitBlocks - 1; i >= 0; i--) kv.unref(m.get(ids[i]!)!);
      return false;
    }
    for (let i = 0; i < hitBlocks; i++) r.refs.push(m.get(ids[i]!)!);
    if (partial) r.refs.push(partial);
    for (const t of r.tails) r.refs.push(t);
    r.nextBlock = hitBlocks;
    r.partial = partial;
    r.partialHit = partialHit;
    r.computed = start;
    r.private = load - recompute + reserve + n;
    r.sched = n;
    if (n === 0 && r.kvTail === TAIL_READY) {
      // the tail has arrived and the head is cached: take it now and compute what follows
      this.takeTail(r);
      let k = target - r.computed;
      if (k > budget) k = budget;
      if (k > this.threshold) k = this.threshold;
      if (!kv.allocate(k)) {
        // keep the admission (memory for the tail is held); compute in a later step
        k = 0;
      }
      r.private += k;
      r.sched = k;
    }
    if (load > 0) {
      const ms =
        tierTok > 0
          ? tierMs + kvLoadMs(this.spec.profile.kvLoad, load - tierTok) // tiers first, then the external rest
          : q.kvLoadMs !== undefined && q.kvLoadMs >= 0 && r.hitTokens < 0
            ? q.kvLoadMs
            : recompute > 0
              ? blendLoadMs(this.spec.profile, load, hit, recompute) // pipelined with the recompute
              : kvLoadMs(this.spec.profile.kvLoad, load);
      this.pendingLoadMs += ms;
      if (r.hitTokens < 0) {
        r.loadTokens = load - tierTok;
        r.kvLoadMs = ms;
      }
      this.registerBlocks(r);
    }
    if (r.hitTokens < 0) r.hitTokens = hit;
    if (r.firstScheduledAt < 0) r.firstScheduledAt = nowMs;
    return true;
  }

  /**
   * Overlap: how many tokens a request may compute now before its tail. At the tail's start an
   * arrived tail is taken (its KV load joins this step) and the limit lifts; a tail still on the
   * link stalls the request (0).
   */
  private tailLimit(r: ReqState): number {
    const t = r.req.tail!;
    if (r.computed < t.start) return t.start - r.computed;
    if (r.kvTail === TAIL_WAITING) return 0;
    this.takeTail(r);
    return Infinity;
  }

  /**
   * Overlap: the arrived tail's KV joins the request (memory was reserved at admission). Its
   * retrieve ran beside the compute (the driver marks the tail arrived after transfer + load),
   * so it adds no step time; its load time is recorded.
   */
  private takeTail(r: ReqState): void {
    const t = r.req.tail!;
    const end = Math.min(t.end, r.req.promptTokens + r.generated - 1);
    r.kvTail = TAIL_DONE;
    if (end <= r.computed) return;
    const tokens = end - r.computed;
    const ms = kvLoadMs(this.spec.profile.kvLoad, tokens);
    if (r.firstTokenAt < 0) {
      r.loadTokens += tokens;
      r.kvLoadMs += ms;
    }
    r.computed = end;
    this.registerBlocks(r);
  }

  /**
   * Overlap: the KV of request `id`'s tail has arrived. A request stalled at its tail computes
   * again from the next step (the driver starts one when the instance is idle).
   * @returns false when the request is unknown or has no waiting tail
   */
  tailArrived(id: string): boolean {
    const r = this.states.get(id);
    if (!r || !r.req.tail) return false;
    if (r.kvTail === TAIL_WAITING) {
      r.kvTail = TAIL_READY;
      return true;
    }
    if (r.kvTail === TAIL_NONE) {
      r.req.tail.ready = true; // still waiting for admission
      return true;
    }
    return false;
  }

  /** Registers every prompt block that is now fully computed as a cached block. */
  private registerBlocks(r: ReqState): void {
    const q = r.req;
    const ids = q.blocks;
    const B = q.blockSize;
    const P = q.promptTokens;
    while (r.nextBlock < ids.length) {
      const start = r.nextBlock * B;
      const end = start + B < P ? start + B : P;
      if (end > r.computed) break;
      const tokens = end - start;
      const p = r.partial;
      if (p !== null && p.id === ids[r.nextBlock]) {
        // a partly hit block, now recomputed: the private copy of its missing part completes it
        const mine = tokens - r.partialHit;
        r.private -= mine;
        this.kv.release(mine);
        this.kv.restore(p);
        r.partial = null;
      } else {
        r.refs.push(this.kv.register(ids[r.nextBlock]!, tokens));
        r.private -= tokens;
      }
      r.nextBlock++;
    }
  }

  private freeKv(r: ReqState): void {
    const refs = r.refs;
    for (let i = refs.length - 1; i >= 0; i--) this.kv.unref(refs[i]!);
    r.refs = [];
    this.kv.release(r.private);
    r.private = 0;
    r.nextBlock = 0;
    r.partial = null;
  }

  private preempt(r: ReqState): void {
    // cache the full engine blocks of its computed output (prompt blocks are cached already)
    const q = r.req;
    if (q.blocks.length > 0 && r.nextBlock === q.blocks.length) {
      const bs = this.spec.engine.blockSizeTokens;
      const full = Math.floor(r.private / bs) * bs;
      if (full > 0) {
        const e = this.kv.register(this.nextTailId--, full);
        r.private -= full;
        r.refs.push(e);
        r.tails.push(e);
      }
    }
    this.freeKv(r);
    // an overlap tail already taken sits in the LMCache store: it is ready for the re-admission
    if (r.kvTail === TAIL_DONE && r.req.tail) r.kvTail = TAIL_READY;
    r.computed = 0;
    r.sched = 0;
    r.state = WAITING;
    r.preemptions++;
    this.preemptions++;
    if (this.wHead > 0) this.waiting[--this.wHead] = r;
    else this.waiting.unshift(r);
    this.preemptedBuf.push(r.req.id);
  }

  /** A pure-decode step with nothing admissible waiting can be coalesced. */
  private canCoalesce(): boolean {
    const running = this.running;
    if (running.length === 0) return false;
    if (this.wHead < this.waiting.length && running.length < this.maxSeqs) return false;
    if (running.length > this.budget) return false;
    for (let i = 0; i < running.length; i++) {
      const r = running[i]!;
      if (r.generated === 0 || r.computed !== r.req.promptTokens + r.generated - 1) return false;
    }
    return true;
  }

  private startDecodeRun(nowMs: number, untilMs: number): number {
    const running = this.running;
    const n = running.length;
    let kMax = Infinity;
    let ctx = 0;
    for (let i = 0; i < n; i++) {
      const r = running[i]!;
      const left = r.req.outputTokens - r.generated;
      if (left < kMax) kMax = left;
      ctx += r.computed;
    }
    const memSteps = Math.floor(this.kv.available() / n);
    if (memSteps < kMax) kMax = memSteps;
    if (kMax < 1) return -1;
    const m = this.model;
    const base = m.fixedMs + m.decodeSeqMs * n + curveMs(m, n);
    const kvr = m.kvReadMsPerToken;
    const horizon = untilMs - nowMs;
    let total = 0;
    let k = 0;
    if (this.runEnds.length < 64) this.runEnds = new Float64Array(64);
    while (k < kMax) {
      let d = base + kvr * (ctx + k * n);
      if (this.noise) d *= this.noise(this.steps + k);
      total += d;
      if (k >= this.runEnds.length) {
        const grown = new Float64Array(this.runEnds.length * 2);
        grown.set(this.runEnds);
        this.runEnds = grown;
      }
      this.runEnds[k] = total;
      k++;
      if (total >= horizon) break;
    }
    this.lastStep = { tokens: n, prefillSeqs: 0, decodeSeqs: n, attnUnits: 0, decodeCtxTokens: ctx };
    this.runSteps = k;
    this.decodeRun = true;
    this.scheduled.length = 0;
    for (let i = 0; i < n; i++) {
      const r = running[i]!;
      r.sched = 1;
      this.scheduled.push(r);
    }
    this.stepStart = nowMs;
    this.busyFlag = true;
    this.busyMs += total;
    this.steps += k;
    return total;
  }

  private runEnds = new Float64Array(64);
  /** the running step came from startDecodeRun (memory is allocated at finish). */
  private decodeRun = false;

  /**
   * Cuts a coalesced decode run short because new work arrived at `atMs`: the run now ends with
   * the iteration in progress at `atMs` (vLLM admits new requests at the next step boundary).
   * @returns the new end time (ms), or -1 when the running step is a single iteration (unchanged).
   */
  truncateRun(atMs: number): number {
    if (!this.busyFlag || this.runSteps <= 1) return -1;
    const off = atMs - this.stepStart;
    const ends = this.runEnds;
    let j = 0;
    while (j < this.runSteps - 1 && ends[j]! < off) j++;
    // async scheduling: the iteration after the one in progress was already formed
    if (this.asyncScheduling && j < this.runSteps - 1) j++;
    if (j === this.runSteps - 1) return -1;
    const oldTotal = ends[this.runSteps - 1]!;
    const k = j + 1;
    this.busyMs -= oldTotal - ends[j]!;
    this.steps -= this.runSteps - k;
    this.runSteps = k;
    return this.stepStart + ends[j]!;
  }

  /** Number of iterations in the running (possibly coalesced) run. */
  get currentRunSteps(): number {
    return this.runSteps;
  }

  /**
   * Applies the running step (or coalesced run) at `nowMs` and reports what it produced.
   * Tokens are attributed to the end of the run.
   */
  finishStep(nowMs: number): StepEvents {
    if (!this.busyFlag) throw new Error('InstanceCore: no step is running');
    this.busyFlag = false;
    let ev: StepEvents;
    if (this.reuseEvents) {
      ev = this.ev;
      ev.firstToken.length = 0;
      ev.token.length = 0;
      ev.done.length = 0;
      ev.preempted.length = 0;
      for (const id of this.preemptedBuf) ev.preempted.push(id);
      this.preemptedBuf.length = 0;
    } else {
      ev = { firstToken: [], token: [], done: [], preempted: this.preemptedBuf, rejected: [] };
      this.preemptedBuf = [];
    }
    const k = this.runSteps;
    this.runSteps = 0;
    this.lastIterStart = k > 1 ? this.stepStart + this.runEnds[k - 2]! : this.stepStart;
    this.lastEnd = nowMs;
    const sched = this.scheduled;
    const decodeRun = this.decodeRun;
    this.decodeRun = false;
    if (decodeRun) {
      // coalesced decode run: k tokens per request, memory grown by k each (checked at start)
      this.kv.allocate(k * sched.length);
    }
    let anyDone = false;
    for (let i = 0; i < sched.length; i++) {
      const r = sched[i]!;
      if (r.state !== RUNNING) continue; // preempted later in the same step
      if (decodeRun) {
        r.computed += k;
        r.private += k;
        r.generated += k;
        if (this.reportTokens) ev.token.push(r.req.id);
        if (this.onTokens) this.onTokens(r.req.tag ?? -1, this.stepStart, this.runEnds, k);
      } else {
        r.computed += r.sched;
        if (r.nextBlock < r.req.blocks.length) this.registerBlocks(r);
        if (r.computed === r.req.promptTokens + r.generated) {
          r.generated++;
          if (this.onTokens) this.onTokens(r.req.tag ?? -1, nowMs, null, 1);
          if (r.generated === 1) {
            r.firstTokenAt = nowMs;
            ev.firstToken.push(r.req.id);
          } else if (this.reportTokens) ev.token.push(r.req.id);
        }
      }
      r.sched = 0;
      if (r.generated >= r.req.outputTokens) {
        r.state = DONE;
        r.doneAt = nowMs;
        this.freeKv(r);
        ev.done.push(r.req.id);
        anyDone = true;
        if (!this.keepDone) this.states.delete(r.req.id);
      }
    }
    if (anyDone) {
      let w = 0;
      const run = this.running;
      for (let j = 0; j < run.length; j++) if (run[j]!.state === RUNNING) run[w++] = run[j]!;
      run.length = w;
    }
    sched.length = 0;
    this.kv.flushEvents();
    return ev;
  }

  /**
   * Aborts a request between steps (vLLM `EngineCore.abort_requests`: the client went away or a
   * stop string matched): it leaves the waiting / running queue and its KV memory is released
   * (blocks it computed stay in the prefix cache). Its state is forgotten.
   * @returns false when the request is unknown or already done
   * @throws Error while a step is running (abort after `finishStep`)
   */
  abort(id: string): boolean {
    if (this.busyFlag) throw new Error('InstanceCore: abort while a step is running');
    const r = this.states.get(id);
    if (!r || r.state === DONE) return false;
    const queue = r.state === RUNNING ? this.running : this.waiting;
    const at = queue.indexOf(r, r.state === RUNNING ? 0 : this.wHead);
    if (at >= 0) queue.splice(at, 1);
    r.state = DONE;
    this.freeKv(r);
    this.states.delete(id);
    this.kv.flushEvents();
    return true;
  }

  /**
   * Leading blocks of `ids` this instance holds in GPU memory or, after them, in its CPU tier
   * (what another instance can read from it over RDMA). Does not touch LRU order.
   */
  heldPrefixBlocks(ids: readonly number[]): number {
    let k = this.kv.matchPrefix(ids);
    if (this.cpu) while (k < ids.length && this.cpu.has(ids[k]!)) k++;
    return k;
  }

  /** Per-token prefill slope (ms/token) of this instance's profile. */
  msPerToken(): number {
    return slopeLast(this.model);
  }
}
