/**
 * FIFO link reservations per (KDN, instance), the engine's view of KV transfers in flight
 * (CacheRoute §4.6: one FIFO server per link key; reservations chain; the actual completion
 * corrects the chain).
 */

interface Reservation {
  id: string;
  readyAt: number;
  start: number;
  durMs: number;
  done: boolean;
}

/** Link reservation book; times in ms. */
export class LinkBook {
  /** free[k][i]: time the link KDN k -> instance i becomes free (predicted). */
  private readonly free: Float64Array[];
  private readonly pending: Reservation[][][];
  private readonly byId = new Map<string, { k: number; i: number; r: Reservation }>();
  /** total predicted busy ms booked per link (for utilisation metrics). */
  readonly bookedMs: Float64Array[];

  constructor(
    readonly kdns: number,
    readonly instances: number,
  ) {
    this.free = Array.from({ length: kdns }, () => new Float64Array(instances));
    this.pending = Array.from({ length: kdns }, () => Array.from({ length: instances }, () => [] as Reservation[]));
    this.bookedMs = Array.from({ length: kdns }, () => new Float64Array(instances));
  }

  /** Predicted wait (ms) before a transfer submitted at `now` on link k->i could start. */
  waitMs(k: number, i: number, now: number): number {
    const f = this.free[k]![i]!;
    return f > now ? f - now : 0;
  }

  /** Predicted time the link k->i is free. */
  freeAt(k: number, i: number): number {
    return this.free[k]![i]!;
  }

  /**
   * Reserves the link for a transfer of `durMs` submitted at `readyAt`.
   * @returns the predicted start time (ms)
   */
  reserve(id: string, k: number, i: number, readyAt: number, durMs: number): number {
    const start = Math.max(readyAt, this.free[k]![i]!);
    this.free[k]![i] = start + durMs;
    const r: Reservation = { id, readyAt, start, durMs, done: false };
    this.pending[k]![i]!.push(r);
    this.byId.set(id, { k, i, r });
    this.bookedMs[k]![i]! += durMs;
    return start;
  }

  /**
   * A transfer finished at `now`: the chain of later reservations is rebuilt from `now`
   * (transfers that finish early pull the queue forward; late ones push it back).
   * @returns false when the id had no reservation.
   */
  done(id: string, now: number): boolean {
    const e = this.byId.get(id);
    if (!e) return false;
    this.byId.delete(id);
    e.r.done = true;
    const list = this.pending[e.k]![e.i]!;
    const idx = list.indexOf(e.r);
    if (idx >= 0) list.splice(idx, 1);
    let t = now;
    for (const r of list) {
      // started transfers keep their start; queued ones chain after the previous one
      if (r.start > now) r.start = Math.max(r.readyAt, t);
      t = Math.max(t, r.start + r.durMs);
    }
    this.free[e.k]![e.i] = Math.max(t, now);
    return true;
  }

  /** Drops every reservation of instance i (instance down). */
  dropInstance(i: number, now: number): void {
    for (let k = 0; k < this.kdns; k++) {
      for (const r of this.pending[k]![i]!) this.byId.delete(r.id);
      this.pending[k]![i] = [];
      this.free[k]![i] = now;
    }
  }
}
