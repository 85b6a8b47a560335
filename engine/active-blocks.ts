/**
 * Prompt blocks of a set of requests per instance (Dynamo's "active sequences",
 * lib/kv-router/src/sequences): block id -> per-instance reference count, and per instance the
 * number of distinct blocks held. Used by `dynamo-kv` (the requests it routed, not finished: its
 * distinct-active-blocks decode load) and by the engine (the requests decoding on each
 * instance: the KV they hold, shared prefix blocks counted once). Pure; O(blocks) per add/remove.
 */
export class ActiveBlocks {
  private refs = new Map<number, Int32Array>();
  /** per instance, blocks held by at least one active request there. */
  readonly distinct: Int32Array;

  /** @param n number of instances */
  constructor(readonly n: number) {
    this.distinct = new Int32Array(n);
  }

  /** The request holding `blocks` became active on instance i. */
  add(i: number, blocks: readonly number[]): void {
    for (const b of blocks) {
      let r = this.refs.get(b);
      if (r === undefined) {
        r = new Int32Array(this.n);
        this.refs.set(b, r);
      }
      if (r[i]!++ === 0) this.distinct[i]!++;
    }
  }

  /** The request holding `blocks` on instance i finished. */
  remove(i: number, blocks: readonly number[]): void {
    for (const b of blocks) {
      const r = this.refs.get(b);
      if (!r || r[i] === 0) continue;
      r[i]!--;
      if (r[i] === 0) {
        this.distinct[i]!--;
        let any = false;
        for (let k = 0; k < this.n; k++) if (r[k] !== 0) any = true;
        if (!any) this.refs.delete(b);
      }
    }
  }

  /** The per-instance reference counts of block b, or undefined when no request holds it. */
  counts(b: number): Int32Array | undefined {
    return this.refs.get(b);
  }

  /** Forgets instance i (instance down). */
  clear(i: number): void {
    this.distinct[i] = 0;
    for (const [b, r] of this.refs) {
      r[i] = 0;
      let any = false;
      for (let k = 0; k < this.n; k++) if (r[k] !== 0) any = true;
      if (!any) this.refs.delete(b);
    }
  }
}
