/**
 * Load booked at dispatch (Dynamo's "predictive active blocks", reference/routers.md §1.4):
 * every decision immediately adds the request's uncached prefill tokens, its KV footprint and a
 * predicted prefill work (ms) to the chosen instance, so consecutive decisions of a burst see
 * each other. Prefill is released at the first token, the rest at completion or abort.
 *
 * Predicted prefill work drains FIFO at 1 ms per ms of wall/virtual time (a fluid model of the
 * instance's prefill lane, like CacheRoute's reservation timeline §4.5); a first token removes
 * whatever is left of that request's share.
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
  /** booked KV footprint: Σ (prompt + output) tokens of inflight requests. */
  kvTokens: number;
  /** predicted prefill work not yet drained (ms), valid at `workAt`. */
  workMs: number;
  workAt: number;
  /** requests dispatched so far. */
  dispatched: number;
}

interface Booking {
  instance: number;
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
   */
  book(id: string, instance: number, now: number, prefillTokens: number, kvTokens: number, ctxTokens: number, workMs: number): void {
    if (this.bookings.has(id)) throw new Error(`LoadBook: request ${id} is already booked`);
    this.drain(instance, now);
    const b: Booking = { instance, prefillTokens, kvTokens, ctxTokens, work: workMs, firstToken: false };
    this.bookings.set(id, b);
    const l = this.loads[instance]!;
    l.inflight++;
    l.dispatched++;
    l.prefillReqs++;
    l.prefillTokens += prefillTokens;
    l.kvTokens += kvTokens;
    l.workMs += workMs;
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
    l.decodeReqs++;
    l.decodeCtxTokens += b.ctxTokens;
  }

  /** Completion or abort: everything the request booked is released. Returns false if unknown. */
  release(id: string, now: number): boolean {
    const b = this.bookings.get(id);
    if (!b) return false;
    this.drain(b.instance, now);
    this.bookings.delete(id);
    const l = this.loads[b.instance]!;
    l.inflight--;
    l.kvTokens -= b.kvTokens;
    if (b.firstToken) {
      l.decodeReqs--;
      l.decodeCtxTokens -= b.ctxTokens;
    } else {
      l.prefillReqs--;
      l.prefillTokens -= b.prefillTokens;
      l.workMs -= b.work;
      if (l.workMs < 1e-9) l.workMs = 0;
      b.work = 0;
    }
    return true;
  }

  /** Releases every booking on `instance` (instance down). Returns the released ids. */
  releaseInstance(instance: number, now: number): string[] {
    const ids: string[] = [];
    for (const [id, b] of this.bookings) if (b.instance === instance) ids.push(id);
    for (const id of ids) this.release(id, now);
    this.queues[instance] = [];
    this.heads[instance] = 0;
    return ids;
  }

  /** Instance of a booked request, or -1. */
  instanceOf(id: string): number {
    return this.bookings.get(id)?.instance ?? -1;
  }

  /** Number of booked requests. */
  get size(): number {
    return this.bookings.size;
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
