/**
 * The simulator's instance model (sim/instance.ts `InstanceCore`) run on the wall clock with
 * real concurrency, for the emulator.
 *
 * Time: the core works in *model* ms; `model = (wall - t0) × timeScale`, so `timeScale = 10`
 * runs everything ten times faster. One engine iteration at a time: when work is present,
 * `startStep(now)` gives the step's duration d, a timer fires at the step's end
 * (`start + d`, in model time), `finishStep(start + d)` applies it, and its tokens are
 * delivered to the requests' sinks `apiMs` (profile step model: HTTP + detokenise + SSE) later,
 * in step order. The next step starts at the previous step's scheduled end (so timer lateness
 * does not accumulate), unless the loop fell behind by more than 20 wall ms.
 * Requests pass an API frontend, a FIFO server taking `frontendMsPerRequest` each (as in
 * sim/simulator.ts), and the very first request an instance serves waits `coldStartMs` more
 * (a cold vLLM; the simulator leaves it out, so pass `coldStart: false` to compare).
 */
import { InstanceCore, type CoreRequest, type ReqState } from '../sim/instance.js';
import type { KvEventSink } from '../sim/kvcache.js';
import type { InstanceSpec } from '../engine/types.js';

/** Receives one request's progress. Called from timers, never re-entrantly. */
export interface TokenSink {
  /** one generated token became visible (first token first); `index` counts from 0. */
  token(index: number, state: ReqState | undefined): void;
  /** the request finished (after its last token). */
  done(state: ReqState | undefined): void;
  /** the request was preempted (KV recompute); informational. */
  preempted?(): void;
  /** the core rejected or the engine shut down. */
  failed(reason: string): void;
}

/** Options of {@link WallClockEngine}. */
export interface WallClockEngineOptions {
  /** model ms per wall ms (> 0); default 1. */
  timeScale?: number;
  /** KV events from the core (block ids), delivered synchronously during steps. */
  onKvEvent?: KvEventSink;
  /** called after every step with its new-token count and duration (model ms). */
  onStep?: (tokens: number, durationMs: number) => void;
  /** called after every finished step (after its events were applied to the core). */
  onStepFinished?: () => void;
  /** apply the profile's `coldStartMs` to the first request (default true). */
  coldStart?: boolean;
}

interface Pending {
  sink: TokenSink;
  emitted: number;
}

/** Drives an {@link InstanceCore} with timers; see the module doc. */
export class WallClockEngine {
  readonly core: InstanceCore;
  readonly timeScale: number;
  private readonly t0 = performance.now();
  private readonly sinks = new Map<string, Pending>();
  private stepTimer: NodeJS.Timeout | undefined;
  private frontFree = 0;
  private served = 0;
  private readonly delivery: Array<{ dueWall: number; run: () => void }> = [];
  private deliveryTimer: NodeJS.Timeout | undefined;
  private readonly entryTimers = new Set<NodeJS.Timeout>();
  /** aborts asked while a step was running, applied at its end. */
  private pendingAborts: string[] = [];
  private closed = false;

  constructor(
    readonly spec: InstanceSpec,
    private readonly opts: WallClockEngineOptions = {},
  ) {
    this.timeScale = opts.timeScale ?? 1;
    if (!(this.timeScale > 0) || !Number.isFinite(this.timeScale)) throw new Error(`timeScale must be a finite number > 0 (got ${opts.timeScale})`);
    this.core = new InstanceCore(spec, { onKvEvent: opts.onKvEvent, keepDone: true });
  }

  /** Current model time, ms. */
  nowModel(): number {
    return (performance.now() - this.t0) * this.timeScale;
  }

  /** Requests in the core: waiting (incl. not yet admitted) and running. */
  get load(): { waiting: number; running: number } {
    return this.core.load;
  }

  /** Requests submitted and not finished (including ones still in the frontend delay). */
  get inflight(): number {
    return this.sinks.size;
  }

  /** Tokens of the leading `blocks` present in the prefix cache right now. */
  localHitTokens(blocks: readonly number[], blockSize: number): number {
    return this.core.kv.matchPrefix(blocks) * blockSize;
  }

  /**
   * Checks a request against the core's static limits (prompt + output vs max_model_len and KV
   * capacity). Returns an error message or null.
   */
  admissible(promptTokens: number, outputTokens: number): string | null {
    const e = this.spec.engine;
    const total = promptTokens + outputTokens;
    if (total > e.maxModelLen) return `prompt (${promptTokens}) + max_tokens (${outputTokens}) = ${total} tokens exceeds max_model_len ${e.maxModelLen}`;
    if (total > e.kvCapacityTokens) return `prompt + max_tokens = ${total} tokens exceeds the KV cache capacity ${e.kvCapacityTokens}`;
    return null;
  }

  /**
   * Hands a request to the engine (after the frontend delay). Returns an error message when it
   * can never run (see `admissible`), else null; progress goes to `sink`.
   * @param hold optional: given the model time (ms) the request leaves the frontend, returns the
   *   model time it may join the core (a P/D hand-off: the KV arriving over the P -> D link after
   *   the frontend, as sim/simulator.ts orders them); called once, synchronously
   */
  submit(req: CoreRequest, sink: TokenSink, hold?: (entryModelMs: number) => number): string | null {
    if (this.closed) return 'engine is shut down';
    const bad = this.admissible(req.promptTokens, req.outputTokens);
    if (bad) return bad;
    if (this.sinks.has(req.id)) return `duplicate request id ${req.id}`;
    this.sinks.set(req.id, { sink, emitted: 0 });
    const step = this.spec.profile.step;
    const now = this.nowModel();
    // API frontend: a FIFO server taking frontendMsPerRequest per request (as sim/simulator.ts)
    let entry = Math.max(now, this.frontFree) + step.frontendMsPerRequest;
    this.frontFree = entry;
    if (this.served === 0 && (this.opts.coldStart ?? true)) entry += this.spec.profile.coldStartMs;
    this.served++;
    if (hold) entry = Math.max(entry, hold(entry));
    const enter = (): void => {
      if (this.closed || !this.sinks.has(req.id)) return; // aborted during the frontend delay
      if (!this.core.add(req, this.nowModel())) {
        this.sinks.delete(req.id);
        sink.failed('rejected by the instance model');
        return;
      }
      this.kick();
    };
    const waitWall = (entry - now) / this.timeScale;
    if (waitWall < 0.5) enter();
    else {
      const t = setTimeout(() => {
        this.entryTimers.delete(t);
        enter();
      }, waitWall);
      this.entryTimers.add(t);
    }
    return null;
  }

  /**
   * Starts the next step if the core is idle and has work. `contFrom` = the end of the step just
   * finished when called right after it (continuous stepping starts at that scheduled end, so
   * timer lateness does not accumulate); work arriving at an idle core starts now, as in the
   * simulator (never back-dated to an old step end).
   */
  private kick(contFrom?: number): void {
    if (this.closed || this.stepTimer || this.core.busy) return;
    const now = this.nowModel();
    const start = contFrom !== undefined && now - contFrom <= 20 * this.timeScale ? Math.max(contFrom, 0) : now;
    const d = this.core.startStep(start);
    if (d < 0) return;
    this.opts.onStep?.(this.core.lastStep.tokens, d);
    const end = start + d;
    this.armStep(end);
  }

  /** Fires `finish(end)` once the model clock reaches `end` (re-arming if a timer fires early). */
  private armStep(end: number): void {
    const wall = Math.max(0, (end - this.nowModel()) / this.timeScale);
    this.stepTimer = setTimeout(() => {
      this.stepTimer = undefined;
      if (this.closed) return;
      if ((end - this.nowModel()) / this.timeScale > 0.25) return this.armStep(end);
      this.finish(end);
      if (this.pendingAborts.length) {
        for (const id of this.pendingAborts) this.core.abort(id);
        this.pendingAborts = [];
      }
      this.kick(end);
    }, wall);
  }

  private finish(end: number): void {
    const ev = this.core.finishStep(end);
    this.opts.onStepFinished?.();
    const tokenIds = [...ev.firstToken, ...ev.token];
    const doneIds = ev.done;
    const preempted = ev.preempted;
    const rejected = ev.rejected;
    if (tokenIds.length + doneIds.length + preempted.length + rejected.length === 0) return;
    // capture states now: delivery may run after later steps finished (and forgot) the request
    const states = new Map<string, ReqState | undefined>();
    for (const id of tokenIds) states.set(id, this.core.get(id));
    for (const id of doneIds) {
      states.set(id, this.core.get(id));
      this.core.forget(id);
    }
    const run = (): void => {
      for (const id of preempted) this.sinks.get(id)?.sink.preempted?.();
      for (const id of tokenIds) {
        const p = this.sinks.get(id);
        if (!p) continue;
        p.sink.token(p.emitted++, states.get(id));
      }
      for (const id of doneIds) {
        const p = this.sinks.get(id);
        if (!p) continue;
        this.sinks.delete(id);
        p.sink.done(states.get(id));
      }
      for (const id of rejected) {
        const p = this.sinks.get(id);
        if (!p) continue;
        this.sinks.delete(id);
        this.core.forget(id);
        p.sink.failed('rejected by the instance model');
      }
    };
    const apiWall = this.spec.profile.step.apiMs / this.timeScale;
    if (apiWall < 0.5 && this.delivery.length === 0) run();
    else {
      this.delivery.push({ dueWall: performance.now() + apiWall, run });
      this.armDelivery();
    }
  }

  private armDelivery(): void {
    if (this.deliveryTimer || this.delivery.length === 0) return;
    const head = this.delivery[0]!;
    this.deliveryTimer = setTimeout(() => {
      this.deliveryTimer = undefined;
      const now = performance.now();
      while (this.delivery.length && this.delivery[0]!.dueWall <= now + 0.5) this.delivery.shift()!.run();
      this.armDelivery();
    }, Math.max(0, head.dueWall - performance.now()));
  }

  /**
   * Aborts a submitted request (vLLM aborts a request whose client went away, or whose output
   * matched a stop string): its sink gets nothing more and it leaves the instance model at the
   * next step boundary (its KV memory released). Returns false when it already finished.
   */
  abort(id: string): boolean {
    if (!this.sinks.delete(id)) return false;
    if (this.core.busy) this.pendingAborts.push(id);
    else this.core.abort(id);
    return true;
  }

  /** Stops all timers and fails every unfinished request with `reason`. Idempotent. */
  close(reason = 'engine shut down'): void {
    if (this.closed) return;
    this.closed = true;
    if (this.stepTimer) clearTimeout(this.stepTimer);
    if (this.deliveryTimer) clearTimeout(this.deliveryTimer);
    for (const t of this.entryTimers) clearTimeout(t);
    this.entryTimers.clear();
    this.delivery.length = 0;
    const pending = [...this.sinks.values()];
    this.sinks.clear();
    for (const p of pending) p.sink.failed(reason);
  }
}
