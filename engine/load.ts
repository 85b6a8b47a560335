/**
 * Load booked at dispatch (Dynamo's "predictive active blocks", reference/routers.md §1.4):
 * every decision immediately adds the request's uncached prefill tokens, its KV footprint and a
 * predicted prefill work (ms) to the chosen instance, so consecutive decisions of a burst see
 * each other. Prefill is released at the first token, the rest at completion or abort.
 *
 * Predicted prefill work drains FIFO at 1 ms per ms of wall/virtual time (a fluid model of the
 * instance's prefill lane, like CacheRoute's reservation timeline §4.5); a first token removes
 * whatever is left of that request's share.
 *
 * A disaggregated request (prefill on P, decode on D != P) books its prefill (tokens, work, the
 * prompt's KV and one in-flight slot) on P until its first token, and its decode (the KV of
 * prompt + output and one in-flight slot from dispatch, one decoding request from the first
 * token) on D until completion.
 */

/** Booked load of one instance (read-only view for strategies). */
export interface InstanceLoad {
  /** dispatched and not completed/aborted. */
  inflight: number;
  /** requests dispatched without a first token yet. */
  prefillReqs: number;
  /** uncached prompt tokens of those requests (tokens). */
  prefillTokens: number;
  /** requests past their first token, not completed. */
  decodeReqs: number;
  /** Σ context tokens of decoding requests at their first token (prompt tokens). */
  decodeCtxTokens: number;
  /** booked KV footprint: Σ (prompt + expected output) tokens of inflight requests. */
  kvTokens: number;
  /** the part of `kvTokens` of the requests decoding now (past their first token): the KV they hold. */
  decodeKvTokens: number;
  /** predicted prefill work not yet drained (ms), valid at `workAt`. */
  workMs: number;
  workAt: number;
  /** requests dispatched so far. */
  dispatched: number;
}

interface Booking {
  instance: number;
  /** decode instance (= instance when colocated). */
  decode: number;
  prefillTokens: number;
  kvTokens: number;
  ctxTokens: number;
  /** remaining predicted work share (ms), drained FIFO. */
  work: number;
  firstToken: boolean;
}

/** Per-instance booked load, keyed by request id. */
export class LoadBook {
  readonly loads: InstanceLoad[];
  private readonly bookings = new Map<string, Booking>();
  /** FIFO of bookings with remaining work, per instance. */
  private readonly queues: Booking[][];
  private readonly heads: number[];

  constructor(instances: number) {
    this.loads = Array.from({ length: instances }, () => ({
      inflight: 0,
      prefillReqs: 0,
      prefillTokens: 0,
      decodeReqs: 0,
      decodeCtxTokens: 0,
      kvTokens: 0,
      decodeKvTokens: 0,
      workMs: 0,
      workAt: 0,
      dispatched: 0,
    }));
    this.queues = Array.from({ length: instances }, () => []);
    this.heads = new Array<number>(instances).fill(0);
  }

  /** Predicted prefill backlog (ms) of `instance` at time `now`, draining the FIFO. */
  backlogMs(instance: number, now: number): number {
    this.drain(instance, now);
    return this.loads[instance]!.workMs;
  }

  /**
   * Books a dispatched request.
   * @param prefillTokens uncached prompt tokens the instance will compute
   * @param kvTokens KV footprint (prompt + output tokens)
   * @param workMs predicted prefill work (ms) added to the instance's lane
   * @param decode decode instance of a disaggregated request (default: `instance`, colocated)
   */
  book(id: string, instance: number, now: number, prefillTokens: number, kvTokens: number, ctxTokens: number, workMs: number, decode = instance): void {
    if (this.bookings.has(id)) throw new Error(`LoadBook: request ${id} is already booked`);
    this.drain(instance, now);
    const b: Booking = { instance, decode, prefillTokens, kvTokens, ctxTokens, work: workMs, firstToken: false };
    this.bookings.set(id, b);
    const l = this.loads[instance]!;
    l.inflight++;
    l.dispatched++;
    l.prefillReqs++;
    l.prefillTokens += prefillTokens;
    l.workMs += workMs;
    if (decode === instance) l.kvTokens += kvTokens;
    else {
      l.kvTokens += ctxTokens;
      const d = this.loads[decode]!;
      d.inflight++;
      d.kvTokens += kvTokens;
    }
    this.queues[instance]!.push(b);
  }

  /** First token seen: prefill released, request counted as decoding. No-op if unknown. */
  firstToken(id: string, now: number): void {
    const b = this.bookings.get(id);
    if (!b || b.firstToken) return;
    this.drain(b.instance, now);
    const l = this.loads[b.instance]!;
    b.firstToken = true;
    l.prefillReqs--;
    l.prefillTokens -= b.prefillTokens;
    l.workMs -= b.work;
    if (l.workMs < 1e-9) l.workMs = 0;
    b.work = 0;
    const d = this.loads[b.decode]!;
    if (b.decode !== b.instance) {
      // the prefill instance is done with it: its slot and the prompt's KV move to D
      l.inflight--;
      l.kvTokens -= b.ctxTokens;
    }
    d.decodeReqs++;
    d.decodeCtxTokens += b.ctxTokens;
    d.decodeKvTokens += b.kvTokens;
  }

  /** Completion or abort: everything the request booked is released. Returns false if unknown. */
  release(id: string, now: number): boolean {
    const b = this.bookings.get(id);
    if (!b) return false;
    this.drain(b.instance, now);
    this.bookings.delete(id);
    const l = this.loads[b.instance]!;
    const d = this.loads[b.decode]!;
    this.holdDecode(d, b, -1);
    if (!b.firstToken) {
      if (b.decode !== b.instance) {
        l.inflight--;
        l.kvTokens -= b.ctxTokens;
      }
      l.prefillReqs--;
      l.prefillTokens -= b.prefillTokens;
      l.workMs -= b.work;
      if (l.workMs < 1e-9) l.workMs = 0;
      b.work = 0;
    }
    return true;
  }

  /** Releases every booking on `instance` as prefill or decode instance (instance down). Returns the released ids. */
  releaseInstance(instance: number, now: number): string[] {
    const ids: string[] = [];
    for (const [id, b] of this.bookings) if (b.instance === instance || b.decode === instance) ids.push(id);
    for (const id of ids) this.release(id, now);
    this.queues[instance] = [];
    this.heads[instance] = 0;
    return ids;
  }

  /** Instance of a booked request, or -1. */
  instanceOf(id: string): number {
    return this.bookings.get(id)?.instance ?? -1;
  }

  /** Decode instance of a booked request (= its instance when colocated), or -1. */
  decodeOf(id: string): number {
    return this.bookings.get(id)?.decode ?? -1;
  }

  /**
   * Moves a disaggregated booking's decode to its prefill instance (colocated from now on: a
   * dead decode instance, the gateway's fallback). No-op for unknown or colocated bookings.
   */
  colocate(id: string, now: number): void {
    const b = this.bookings.get(id);
    if (!b || b.decode === b.instance) return;
    this.drain(b.instance, now);
    const l = this.loads[b.instance]!;
    const d = this.loads[b.decode]!;
    this.holdDecode(d, b, -1);
    if (b.firstToken) this.holdDecode(l, b, 1);
    else l.kvTokens += b.kvTokens - b.ctxTokens;
    b.decode = b.instance;
  }

  /** Number of booked requests. */
  get size(): number {
    return this.bookings.size;
  }

  /**
   * Adds (`sign` 1) or removes (-1) what booking `b` holds on its decode instance's load `x`: one
   * in-flight request and its KV (tokens), and once its first token is out its decoding counters.
   */
  private holdDecode(x: InstanceLoad, b: Booking, sign: 1 | -1): void {
    x.inflight += sign;
    x.kvTokens += sign * b.kvTokens;
    if (b.firstToken) {
      x.decodeReqs += sign;
      x.decodeCtxTokens += sign * b.ctxTokens;
      x.decodeKvTokens += sign * b.kvTokens;
    }
  }

  private drain(instance: number, now: number): void {
    const l = this.loads[instance]!;
    let dt = now - l.workAt;
    l.workAt = now;
    if (dt <= 0 || l.workMs <= 0) return;
    const q = this.queues[instance]!;
    let h = this.heads[instance]!;
    while (dt > 0 && h < q.length) {
      const b = q[h]!;
      if (b.work <= dt) {
        dt -= b.work;
        l.workMs -= b.work;
        b.work = 0;
        h++;
      } else {
        b.work -= dt;
        l.workMs -= dt;
        dt = 0;
      }
    }
    // skip bookings whose work was removed by a first token
    while (h < q.length && q[h]!.work === 0) h++;
    if (l.workMs < 1e-9) l.workMs = 0;
    if (h > 256 && h * 2 > q.length) {
      this.queues[instance] = q.slice(h);
      h = 0;
    }
    this.heads[instance] = h;
  }
}
