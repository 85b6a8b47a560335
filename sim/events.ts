/**
 * Event queue on a virtual clock: a binary min-heap ordered by (time, sequence number), so
 * events at the same time pop in the order they were pushed (deterministic tie-breaking).
 * Events are three numbers (type, a, b) stored in parallel typed arrays: no allocation per event.
 */
export class EventQueue {
  private t = new Float64Array(1024);
  private seq = new Float64Array(1024);
  private ty = new Int32Array(1024);
  private a = new Float64Array(1024);
  private b = new Float64Array(1024);
  /** heap of slot indices. */
  private heap = new Int32Array(1024);
  private free: number[] = [];
  private slots = 0;
  private n = 0;
  private nextSeq = 0;
  /** popped event (valid after pop() returned true). */
  time = 0;
  type = 0;
  argA = 0;
  argB = 0;

  get size(): number {
    return this.n;
  }

  /** Time of the earliest event, or Infinity when empty. */
  peekTime(): number {
    return this.n ? this.t[this.heap[0]!]! : Infinity;
  }

  /** Schedules event (type, a, b) at `time` (ms). */
  push(time: number, type: number, a: number, b: number): void {
    let s: number;
    if (this.free.length) s = this.free.pop()!;
    else {
      s = this.slots++;
      if (s >= this.t.length) this.grow();
    }
    this.t[s] = time;
    this.seq[s] = this.nextSeq++;
    this.ty[s] = type;
    this.a[s] = a;
    this.b[s] = b;
    if (this.n >= this.heap.length) {
      const h = new Int32Array(this.heap.length * 2);
      h.set(this.heap);
      this.heap = h;
    }
    let i = this.n++;
    const heap = this.heap;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(s, heap[p]!)) break;
      heap[i] = heap[p]!;
      i = p;
    }
    heap[i] = s;
  }

  /** Pops the earliest event into (time, type, argA, argB). @returns false when empty. */
  pop(): boolean {
    if (this.n === 0) return false;
    const heap = this.heap;
    const top = heap[0]!;
    this.time = this.t[top]!;
    this.type = this.ty[top]!;
    this.argA = this.a[top]!;
    this.argB = this.b[top]!;
    this.free.push(top);
    const last = heap[--this.n]!;
    if (this.n > 0) {
      let i = 0;
      const n = this.n;
      for (;;) {
        let c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && this.less(heap[c + 1]!, heap[c]!)) c++;
        if (!this.less(heap[c]!, last)) break;
        heap[i] = heap[c]!;
        i = c;
      }
      heap[i] = last;
    }
    return true;
  }

  private less(x: number, y: number): boolean {
    const tx = this.t[x]!;
    const ty = this.t[y]!;
    return tx < ty || (tx === ty && this.seq[x]! < this.seq[y]!);
  }

  private grow(): void {
    const n = this.t.length * 2;
    const g = <T extends Float64Array | Int32Array>(arr: T, C: new (n: number) => T): T => {
      const x = new C(n);
      x.set(arr);
      return x;
    };
    this.t = g(this.t, Float64Array);
    this.seq = g(this.seq, Float64Array);
    this.ty = g(this.ty, Int32Array);
    this.a = g(this.a, Float64Array);
    this.b = g(this.b, Float64Array);
  }
}
