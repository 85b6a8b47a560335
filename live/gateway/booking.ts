/**
 * Gateway stage "decision and booking": the one place that calls the engine for a request —
 * `decide` (plus a forced `Injection_type`), `onDispatch` (books the request's load),
 * `onKvTransferDone`, `onFirstToken`, and exactly one `onComplete` / `onAbort` per booking,
 * whatever happens (completion, backend failure, retry, client disconnect, instance down,
 * shutdown). A retry unbooks the failed attempt before booking the next one.
 *
 * P/D (the decision names a decode instance D != P): the engine books the prefill on P and the
 * decode on D; P's answer releases the prefill (`onFirstToken`, as the simulator does at P's
 * first token), D's first token ends the hand-off (`onPdTransferDone`), and a dead D moves the
 * decode booking to P (`colocate`) before the request runs there.
 */
import { resolveOption, type Engine } from '../../engine/engine.js';
import type { Decision, Intent, TraceRequest } from '../../engine/types.js';
import { ApiError } from '../openai.js';
import { RequestAborted, type RequestContext } from './context.js';
import type { PeerSync } from './peers.js';

/**
 * Applies a forced intent (`Injection_type`) to the engine's decision on the same instance:
 * kvcache → the KDN's full coverage; hybrid → half of it (chunk-aligned; kvcache when that is
 * 0 or all); blend / overlap where the instance declares them (engine/engine.ts
 * `resolveOption`: else kvcache; overlap at the split where compute meets load); no coverage →
 * text. The prediction is recomputed for the forced option.
 */
export function forceIntent(engine: Engine, req: TraceRequest, d: Decision, forced: Exclude<Intent, 'none'>, now: number, why = `forced-${forced}`): Decision {
  if (req.knowledgeTokens <= 0 || d.intent === forced) return d;
  const ctx = engine.context(req, now);
  let half: number | undefined;
  if (forced === 'hybrid') {
    const kc = ctx.kdnFor(d.instance);
    const chunk = engine.cluster.chunkTokens;
    half = kc ? Math.floor(kc.reuseTokens / 2 / chunk) * chunk : 0;
    if (!(half > 0)) half = undefined; // nothing to split: kvcache (or text)
  }
  const o = resolveOption(ctx, d.instance, forced === 'hybrid' && half === undefined ? 'kvcache' : forced, half);
  const p = o.pred;
  const out: Decision = {
    ...d,
    intent: o.intent,
    kdn: o.kdn,
    reusedTokens: o.reuse,
    predicted: { prepareMs: p.prepareMs, linkWaitMs: p.linkWaitMs, transferMs: p.transferMs, kvLoadMs: p.kvLoadMs, queueMs: p.queueMs, prefillMs: p.prefillMs, ttftMs: p.ttftMs },
    reason: `${d.reason};${why}${o.reason}`,
  };
  delete out.overlapSplit;
  if (o.split >= 0) out.overlapSplit = o.split;
  return out;
}

/** Books and unbooks the engine's load for gateway requests (see the module doc). */
export class EngineBooking {
  /** gateway replicas: every booking step is also appended to the shared op-log (null = alone). */
  peers: PeerSync | null = null;

  constructor(
    readonly engine: Engine,
    private readonly now: () => number,
    /** apply a body's `Injection_type` (false: ignore it). */
    private readonly honorInjectionType: boolean,
  ) {}

  /**
   * Decides where `ctx` runs (without instance `exclude`, for a retry; -1 = none) and books it.
   * @throws ApiError 503 when no (other) instance is up.
   */
  decide(ctx: RequestContext, forced: Exclude<Intent, 'none'> | null, exclude: number): Decision {
    if (ctx.booked) throw new Error(`booking: ${ctx.id} is already booked`);
    const engine = this.engine;
    const t = this.now();
    let restore = false;
    if (exclude >= 0 && engine.up[exclude]) {
      engine.up[exclude] = false;
      restore = true;
    }
    let d: Decision;
    try {
      if (!engine.up.some(Boolean)) throw new ApiError(503, exclude >= 0 ? 'no other instance is up to retry on' : 'no instance is up', 'ServiceUnavailableError', null);
      d = engine.decide(ctx.req!, t);
      // admission control (Mooncake-style early rejection): never booked, answered 429
      if (d.rejected) throw new ApiError(429, `rejected by admission control: ${d.rejected}`, 'RateLimitError', null);
      if (forced && this.honorInjectionType) d = forceIntent(engine, ctx.req!, d, forced, t);
      // an instance running LMCache with enable_blending keys KV per segment, never per prefix
      // chunk: every KV reuse there is a blend (live/blend-layout.ts)
      if ((d.intent === 'kvcache' || d.intent === 'hybrid') && engine.cluster.instances[d.instance]!.blend) d = forceIntent(engine, ctx.req!, d, 'blend', t, 'lmcache-blend');
      engine.onDispatch(ctx.req!, d, t);
      this.peers?.dispatched(engine.dispatchOp(ctx.req!, d));
    } finally {
      if (restore) engine.up[exclude] = true;
    }
    ctx.booked = true;
    ctx.d = d;
    ctx.planned = null;
    ctx.fallback = null;
    ctx.engineFirst = false;
    ctx.pdDecode = d.decode !== undefined && d.decode >= 0 && d.decode !== d.instance ? d.decode : -1;
    ctx.pd = null;
    return d;
  }

  /** P answered the prefill of disaggregated `ctx`: its prefill load is released (the engine's first-token hook). */
  prefillDone(ctx: RequestContext): void {
    if (!ctx.booked || ctx.engineFirst) return;
    ctx.engineFirst = true;
    this.engine.onFirstToken(ctx.id, this.now());
    this.peers?.firstToken(ctx.id);
  }

  /**
   * Disaggregated `ctx` falls back to colocated execution on its prefill instance (its decode
   * instance failed before the first byte): the decode booking moves to P, `reason` goes to the
   * record (`observed.pd.fallback`).
   */
  colocate(ctx: RequestContext, reason: string): void {
    if (ctx.pdDecode < 0) return;
    if (ctx.booked) {
      this.engine.colocate(ctx.id, this.now());
      this.peers?.colocated(ctx.id);
    }
    ctx.pdDecode = -1;
    if (ctx.pd) ctx.pd.fallback = reason;
  }

  /** The KDN's ACK arrived (or the injection was abandoned): the link reservation is corrected. */
  kvDone(ctx: RequestContext): void {
    if (!ctx.booked) return;
    this.engine.onKvTransferDone(ctx.id, this.now());
    this.peers?.kvDone(ctx.id);
  }

  /** The first visible token: the prefill load is released. Returns false when it was seen already. */
  firstToken(ctx: RequestContext): boolean {
    if (ctx.tFirst >= 0) return false;
    ctx.tFirst = this.now();
    if (ctx.booked && ctx.pdDecode >= 0) {
      // D's first token: the hand-off is over
      this.engine.onPdTransferDone(ctx.id, ctx.tFirst);
      this.peers?.pdDone(ctx.id);
    }
    if (ctx.booked && !ctx.engineFirst) {
      ctx.engineFirst = true;
      this.engine.onFirstToken(ctx.id, ctx.tFirst);
      this.peers?.firstToken(ctx.id);
    }
    return true;
  }

  /**
   * Releases the booking: `onComplete` (with the completion tokens observed, which teach the
   * engine's output-length predictor) when the request completed, else `onAbort`; then wakes the
   * requests the engine released from its proxy queues. No-op when not booked.
   */
  release(ctx: RequestContext, completed: boolean): void {
    if (!ctx.booked) return;
    ctx.booked = false;
    if (completed) {
      const n = ctx.usage?.completion_tokens ?? ctx.completionTokens;
      this.engine.onComplete(ctx.id, ctx.tDone >= 0 ? ctx.tDone : this.now(), n);
      this.peers?.completed(ctx.id, n);
    } else {
      this.engine.onAbort(ctx.id, this.now());
      this.peers?.aborted(ctx.id);
    }
    for (const id of this.engine.takeReleased()) {
      const wake = this.held.get(id);
      this.held.delete(id);
      wake?.();
    }
  }

  /** Requests waiting for a proxy slot: id -> wake-up. */
  private readonly held = new Map<string, () => void>();

  /**
   * Resolves when the booked request may be forwarded to its instance: at once, unless the
   * strategy caps requests per instance (`maxForwardPerInstance`, CacheRoute's READY_CONCURRENCY)
   * and the engine holds it in the instance's proxy queue until a forwarded request finishes.
   * Rejects when the request is aborted while waiting (its booking is then released by the caller).
   */
  async forwardSlot(ctx: RequestContext): Promise<void> {
    if (!ctx.booked || this.engine.forward(ctx.id, this.now())) return;
    const signal = ctx.attemptSignal();
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        this.held.delete(ctx.id);
        reject(new RequestAborted(ctx.killed ?? 'aborted while waiting for a proxy slot'));
      };
      this.held.set(ctx.id, () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}
