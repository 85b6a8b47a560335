/**
 * The per-request context of the gateway: one object created when a generation request reaches
 * the gateway (fastify `onRequest`) and passed through every stage — validation, knowledge
 * lookup, prompt building, decision and booking, KV injection, upstream call, records — so each
 * stage reads what the previous ones found and each limit or record has one place to live.
 *
 * A client request normally has one context. A `/v1/completions` prompt list has one context per
 * prompt (vLLM also turns each prompt into its own engine request, `<id>-<i>`): the client's
 * context is the first, the others are legs created by {@link RequestContext.leg}.
 */
import type { Decision, Intent, TraceRequest } from '../../engine/types.js';
import type { StreamUsage } from '../backends.js';
import type { BuiltPrompt } from './prompt.js';

/** The endpoint of a generation request. */
export type Endpoint = 'chat' | 'completion';

/** Final status of a request (records.jsonl `status`). */
export type FinalStatus = 'ok' | 'rejected' | 'failed' | 'aborted';

/** Everything the gateway knows about one request (times in model ms since gateway start). */
export class RequestContext {
  /** the client's `x-request-id` when it was given (and valid), else null. */
  clientId: string | null = null;
  /** the prompt as sent upstream (after knowledge insertion), once built. */
  built: BuiltPrompt | null = null;
  /** the same request in the CacheBlend layout (live/blend-layout.ts), built on first need; null = none. */
  blendPrompt: (() => Promise<BuiltPrompt>) | null = null;
  /** the engine's view of the request, once built. */
  req: TraceRequest | null = null;
  /** the decision being executed (the retry's when retried). */
  d: Decision | null = null;
  /** intent the engine chose when execution fell back (else null), and why. */
  planned: Intent | null = null;
  fallback: string | null = null;
  retries = 0;
  /** KDN ACK: link wait, transfer (model ms), tokens and bytes moved. */
  linkWait = 0;
  transfer = 0;
  transferTokens = 0;
  wireBytes = 0;
  /** KDN inject round trip (model ms), -1 when none. */
  ackMs = -1;
  /** backend send, first visible token, done (model ms), -1 until then. */
  tSend = -1;
  tFirst = -1;
  tDone = -1;
  usage: StreamUsage | null = null;
  completionTokens = 0;
  /** aborts the upstream work (client gone, instance down, gateway closing). */
  readonly abort = new AbortController();
  /** the record was written (exactly once). */
  finished = false;
  /** set by close(): the reason to fail with. */
  killed: string | null = null;
  /** set when the instance of the current attempt went down before the first byte (retried elsewhere). */
  instanceLost: string | null = null;
  /** the client went away before the response was complete. */
  clientGone = false;
  /** engine load booked for the current attempt (booked/unbooked only by gateway/booking.ts). */
  booked = false;
  /** a backend slot (`Backend.inflight`) held by the current attempt. */
  backendHeld = -1;
  /** why the request was refused before routing (a limit), for the record. */
  rejectReason: string | null = null;
  /** legs of a prompt list, once routed (this context then has no record of its own); empty for a single prompt. */
  readonly legs: RequestContext[] = [];
  /** aborts only the current attempt (its instance went down); a retry gets a new one. */
  attempt: AbortController | null = null;
  /**
   * P/D: the decode instance D of the current attempt when the engine disaggregated it (the
   * prefill runs on `d.instance`), -1 when colocated (or after the dead-D fallback).
   */
  pdDecode = -1;
  /** P/D hand-off as the gateway saw it (model ms); null when the attempt was colocated. */
  pd: PdObserved | null = null;
  /** the engine's first-token hook ran (P's prefill ended before the client's first token). */
  engineFirst = false;
  /** the backend the current upstream call talks to (P, then D), -1 between calls. */
  upstreamAt = -1;

  constructor(
    readonly id: string,
    readonly kind: Endpoint,
    /** arrival, model ms since gateway start. */
    readonly tArr: number,
    /** index of the prompt in a prompt list (0 otherwise). */
    readonly promptIndex = 0,
  ) {}

  /** A leg for prompt `index` of a prompt list (`id` from {@link legId}), same arrival and client id. */
  leg(index: number, id: string): RequestContext {
    const c = new RequestContext(id, this.kind, this.tArr, index);
    c.clientId = this.clientId ?? this.id;
    return c;
  }

  /** Starts a new upstream attempt (its own abort; the request's abort aborts it too). */
  newAttempt(): AbortController {
    const a = new AbortController();
    if (this.abort.signal.aborted) a.abort(this.abort.signal.reason);
    else if (!this.linked) {
      this.linked = true;
      this.abort.signal.addEventListener('abort', () => this.attempt?.abort(this.abort.signal.reason), { once: true });
    }
    this.attempt = a;
    return a;
  }

  private linked = false;

  /** The signal of the current upstream attempt (aborted with the request too). */
  attemptSignal(): AbortSignal {
    return this.attempt ? this.attempt.signal : this.abort.signal;
  }

  /** Throws when the request was aborted (client gone, gateway closing): stages call it between steps. */
  checkAborted(): void {
    if (this.abort.signal.aborted) throw new RequestAborted(this.killed ?? (this.clientGone ? 'client disconnected' : 'aborted'));
  }
}

/** The hand-off of a disaggregated request as the gateway saw it (model ms since gateway start). */
export interface PdObserved {
  /** the decode instance the engine chose (kept after a fallback). */
  decode: number;
  /** prefill request sent to P, and P's answer received (the prefill is done). */
  prefillSentMs: number;
  prefillDoneMs: number;
  /** decode request sent to D (-1: never sent). */
  decodeSentMs: number;
  /** P answered with kv_transfer_params (false: D computed the prompt itself, as vLLM's proxy then does). */
  params: boolean;
  /** D's `x-kvlab-kv-transfer` report (emulator), null when D sent none. */
  transfer: { tokens: number; bytes: number; link_wait_ms: number; transfer_ms: number; start_after_ms: number; miss: string | null } | null;
  /** why the request fell back to colocated execution on P (dead D), null otherwise. */
  fallback: string | null;
}

/** The request was aborted (client disconnected or timed out, gateway closing). */
export class RequestAborted extends Error {}

/** A failure before the backend's first byte: the attempt is retried once on another instance. */
export class RetryableError extends Error {
  constructor(
    message: string,
    /** the backend could not be reached at all (it is taken out). */
    readonly connect: boolean,
  ) {
    super(message);
  }
}

/** Valid client request ids (as vLLM's `x-request-id`). */
export const REQUEST_ID_RE = /^[\w.:-]{1,128}$/;

/**
 * Record ids of one run, unique: the client's `x-request-id` when it is valid and unused in this
 * run, else `gw-<n>`; a reused client id gets a suffix `~<n>` (the client's id is kept in the
 * record's `client_id`). With `--append`, the ids already in the run directory count as used.
 */
export class RunIds {
  private readonly used = new Set<string>();
  private seq = 0;

  /** @param prefix of generated ids (`<prefix>-<n>`); gateway replicas use one per replica so their ids never collide at a backend. */
  constructor(private readonly prefix = 'gw') {}

  /** Marks ids as used (those of an existing records.jsonl). */
  reserve(ids: Iterable<string>): void {
    for (const id of ids) this.used.add(id);
  }

  /** Requests numbered so far. */
  get count(): number {
    return this.seq;
  }

  /** `id` if unused (then it is used), else `id~<n>` for the first free n. */
  claim(id: string): string {
    let out = id;
    for (let k = 1; this.used.has(out); k++) out = `${id}~${k}`;
    this.used.add(out);
    return out;
  }

  /** A fresh unique id for a request whose client sent `header` (or nothing). */
  next(header: string | undefined): { id: string; clientId: string | null } {
    const n = this.seq++;
    const clientId = header && REQUEST_ID_RE.test(header) ? header : null;
    return { id: this.claim(clientId ?? `${this.prefix}-${n}`), clientId };
  }
}

/** Unique ids for the legs of a prompt list: `<id>-<i>` (suffixed `~<n>` if taken). */
export function legId(ids: RunIds, base: string, index: number): string {
  return ids.claim(`${base}-${index}`);
}
