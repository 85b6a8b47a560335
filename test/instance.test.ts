import { describe, expect, it } from 'vitest';
import { stepMs } from '../engine/costmodel.js';
import { InstanceCore, type CoreRequest } from '../sim/instance.js';
import { KvCache } from '../sim/kvcache.js';
import { instanceSpecFromProfile } from '../sim/profiles.js';
import { testProfile } from './helpers/sim.js';

function core(over = {}, opts = {}) {
  return new InstanceCore(instanceSpecFromProfile(testProfile(), 0, over), opts);
}

function req(id: string, prompt: number, output: number, blocks: number[] = [], blockSize = 16, loaded = 0): CoreRequest {
  return { id, promptTokens: prompt, outputTokens: output, blocks, blockSize, loadedTokens: loaded };
}

/** Runs single steps until idle; returns per-request first-token and done times. */
function runAll(c: InstanceCore, t0 = 0): { t: number; first: Map<string, number>; done: Map<string, number>; steps: number } {
  let t = t0;
  const first = new Map<string, number>();
  const done = new Map<string, number>();
  let steps = 0;
  for (;;) {
    const d = c.startStep(t);
    if (d < 0) break;
    t += d;
    steps++;
    const ev = c.finishStep(t);
    for (const id of ev.firstToken) first.set(id, t);
    for (const id of ev.done) done.set(id, t);
    if (steps > 100000) throw new Error('runaway');
  }
  return { t, first, done, steps };
}

describe('InstanceCore (vLLM V1 scheduling)', () => {
  it('respects the token budget: a long prompt is prefilled in budget-sized chunks', () => {
    const c = core({ maxNumBatchedTokens: 1000 });
    c.add(req('a', 2500, 1), 0);
    const tokens: number[] = [];
    let t = 0;
    for (;;) {
      const d = c.startStep(t);
      if (d < 0) break;
      tokens.push(c.lastStep.tokens);
      t += d;
      c.finishStep(t);
    }
    expect(tokens).toEqual([1000, 1000, 500]);
  });

  it('never schedules more than the token budget in one step, across requests', () => {
    const c = core({ maxNumBatchedTokens: 512, maxNumSeqs: 100 });
    for (let i = 0; i < 20; i++) c.add(req(`r${i}`, 100 + i * 37, 5), 0);
    let t = 0;
    for (;;) {
      const d = c.startStep(t);
      if (d < 0) break;
      expect(c.lastStep.tokens).toBeLessThanOrEqual(512);
      t += d;
      c.finishStep(t);
    }
  });

  it('caps running requests at max_num_seqs', () => {
    const c = core({ maxNumSeqs: 3 });
    for (let i = 0; i < 5; i++) c.add(req(`r${i}`, 10, 50), 0);
    c.startStep(0);
    expect(c.lastStep.prefillSeqs).toBe(3);
    expect(c.load.running).toBe(3);
    expect(c.load.waiting).toBe(2);
  });

  it('a burst: the first request runs alone, the rest batch into the next step', () => {
    const c = core();
    c.add(req('a', 500, 1), 0);
    const d1 = c.startStep(0);
    c.add(req('b', 500, 1), 3);
    c.add(req('c', 500, 1), 6);
    c.finishStep(d1);
    const d2 = c.startStep(d1);
    expect(c.lastStep.prefillSeqs).toBe(2);
    expect(c.lastStep.tokens).toBe(1000);
    expect(d2).toBeGreaterThan(d1);
  });

  it('rejects prompt + output > max_model_len without truncating', () => {
    const c = core({ maxModelLen: 100 });
    expect(c.add(req('long', 90, 20), 0)).toBe(false);
    expect(c.add(req('ok', 90, 10), 0)).toBe(true);
  });

  it('prefix caching: a second request with the same blocks hits them (capped at prompt - 1)', () => {
    const c = core();
    const blocks = [1, 2, 3, 4];
    c.add(req('a', 64, 1, blocks), 0);
    runAll(c);
    c.add(req('b', 64, 1, blocks), 1000);
    c.startStep(1000);
    expect(c.get('b')!.hitTokens).toBe(63);
    expect(c.lastStep.tokens).toBe(1);
    c.add(req('c', 80, 1, [1, 2, 9, 10, 11]), 2000);
  });

  it('only the contiguous prefix hits', () => {
    const c = core();
    c.add(req('a', 64, 1, [1, 2, 3, 4]), 0);
    runAll(c);
    c.add(req('b', 64, 1, [1, 2, 7, 4]), 100);
    c.startStep(100);
    expect(c.get('b')!.hitTokens).toBe(32);
  });

  it('evicts least recently freed blocks when KV memory is full (and emits removed events)', () => {
    const events: [string, number[]][] = [];
    const c = core({ kvCapacityTokens: 64 }, { onKvEvent: (k: string, b: number[]) => events.push([k, b.slice()]) });
    c.add(req('a', 32, 1, [1, 2]), 0);
    runAll(c);
    c.add(req('b', 32, 1, [3, 4]), 10);
    runAll(c, 10);
    // both resident (64 tokens), a third request needs room: a's blocks go first (tail first)
    c.add(req('c', 32, 1, [5, 6]), 20);
    runAll(c, 20);
    expect(c.kv.blocks.has(1)).toBe(false);
    expect(c.kv.blocks.has(2)).toBe(false);
    expect(c.kv.blocks.has(3)).toBe(true);
    expect(c.kv.evictions).toBe(2);
    const removed = events.filter(([k]) => k === 'removed').flatMap(([, b]) => b);
    expect(removed.sort()).toEqual([1, 2]);
    const stored = events.filter(([k]) => k === 'stored').flatMap(([, b]) => b);
    expect(stored.sort((x, y) => x - y)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('preempts the most recently admitted request when decode runs out of KV, then recomputes it', () => {
    // capacity 100 tokens: two requests of 40 prompt tokens decoding 30 tokens each cannot both finish
    const c = core({ kvCapacityTokens: 100 });
    c.add(req('a', 40, 30), 0);
    c.add(req('b', 40, 30), 0);
    const r = runAll(c);
    expect(c.preemptions).toBeGreaterThan(0);
    expect(c.get('b')!.preemptions).toBeGreaterThan(0);
    expect(c.get('a')!.preemptions).toBe(0);
    expect(r.done.has('a') && r.done.has('b')).toBe(true);
    // the victim finishes after the survivor
    expect(r.done.get('b')!).toBeGreaterThan(r.done.get('a')!);
    expect(c.kv.used).toBe(c.kv.evictable); // everything released
  });

  it('coalesced decode runs are exact: same completion times as single stepping', () => {
    const mk = () => {
      const c = core({}, { noise: (s: number) => 1 + 0.05 * Math.sin(s) });
      c.add(req('a', 300, 40), 0);
      c.add(req('b', 200, 25), 0);
      c.add(req('c', 100, 60), 0);
      return c;
    };
    const single = runAll(mk());
    const c = mk();
    let t = 0;
    const done = new Map<string, number>();
    let runs = 0;
    for (;;) {
      const d = c.startRun(t, Infinity);
      if (d < 0) break;
      runs++;
      t += d;
      const ev = c.finishStep(t);
      for (const id of ev.done) done.set(id, t);
    }
    expect(runs).toBeLessThan(single.steps);
    for (const id of ['a', 'b', 'c']) expect(done.get(id)!).toBeCloseTo(single.done.get(id)!, 6);
  });

  it('truncating a coalesced run at an arrival ends it at the step in progress', () => {
    const c = core();
    c.add(req('a', 100, 50), 0);
    let t = c.startStep(0);
    c.finishStep(t); // prefill done, first token
    const d = c.startRun(t, Infinity);
    expect(c.currentRunSteps).toBe(49);
    const oneStep = d / 49;
    const end = c.truncateRun(t + 2.5 * oneStep);
    expect(end).toBeCloseTo(t + 3 * oneStep, 1);
    expect(c.currentRunSteps).toBe(3);
    const ev = c.finishStep(end);
    expect(ev.done).toEqual([]);
    expect(c.get('a')!.generated).toBe(4);
    t = end;
  });

  it('external KV (LMCache) beyond the local hit is loaded and charged to the admitting step', () => {
    const c = core();
    c.add(req('a', 1000, 1, [], 16, 768), 0);
    const d = c.startStep(0);
    const s = c.get('a')!;
    expect(s.loadTokens).toBe(768);
    expect(s.kvLoadMs).toBeGreaterThan(12);
    expect(c.lastStep.tokens).toBe(232);
    expect(d).toBeCloseTo(stepMs(testProfile().step, c.lastStep) + s.kvLoadMs, 6);
  });
});

describe('KvCache', () => {
  it('never exceeds capacity and refuses allocations that cannot fit', () => {
    const kv = new KvCache(100);
    expect(kv.allocate(60)).toBe(true);
    expect(kv.allocate(50)).toBe(false);
    expect(kv.used).toBe(60);
    const e = kv.register(7, 40);
    kv.unref(e);
    expect(kv.evictable).toBe(40);
    // 30 tokens short: eviction takes two 16-token engine blocks from the end of block 7 (vLLM
    // evicts engine blocks, not whole trace blocks), leaving its first 8 tokens resident
    expect(kv.allocate(70)).toBe(true);
    expect(kv.blocks.get(7)!.resident).toBe(8);
    expect(kv.used).toBe(98);
    expect(kv.matchPrefix([7])).toBe(0); // a partly resident block does not count as a full match
    expect(kv.allocate(10)).toBe(true); // the rest of block 7 goes
    expect(kv.blocks.has(7)).toBe(false);
    expect(kv.used).toBeLessThanOrEqual(100);
  });

  it("usage() is vLLM's kv_cache_usage_perc: cached blocks no request references count as free (block_pool.py get_usage)", () => {
    const kv = new KvCache(1000);
    kv.allocate(300); // a running request's tokens: 100 private, 200 of a computed prompt block
    const e = kv.register(7, 200); // which becomes the cached block 7 (it references it)
    expect(kv.usage()).toBeCloseTo(0.3, 12);
    kv.unref(e); // request done: block 7 stays cached (reusable) but is on vLLM's free queue
    kv.release(100);
    expect(kv.blocks.has(7)).toBe(true);
    expect(kv.used).toBe(200);
    expect(kv.usage()).toBe(0);
    kv.ref(e); // a prefix hit references it again
    expect(kv.usage()).toBeCloseTo(0.2, 12);
    expect(new KvCache(Infinity).usage()).toBe(0);
  });

  it('whole-entry eviction when the granularity is Infinity', () => {
    const kv = new KvCache(100, undefined, Infinity);
    kv.allocate(60);
    kv.unref(kv.register(7, 40));
    expect(kv.allocate(70)).toBe(true);
    expect(kv.blocks.has(7)).toBe(false);
    expect(kv.used).toBe(90);
  });
});

describe('InstanceCore fidelity details', () => {
  it('async scheduling: a request arriving during a step waits for the step after the next while others run', () => {
    const timeline = (asyncScheduling: boolean) => {
      const c = core({ asyncScheduling, maxNumBatchedTokens: 4096 });
      c.add(req('a', 100, 50), 0);
      let t = 0;
      const d0 = c.startStep(t); // a's prefill
      c.add(req('b', 100, 2), t + d0 / 2); // arrives during step 0
      t += d0;
      c.finishStep(t);
      const steps: number[] = [];
      for (let k = 0; k < 4; k++) {
        const d = c.startStep(t);
        steps.push(c.lastStep.prefillSeqs);
        t += d;
        c.finishStep(t);
      }
      return steps;
    };
    // synchronous: b's prefill joins step 1; async: step 1 was formed while step 0 ran, b joins step 2
    expect(timeline(false)).toEqual([1, 0, 0, 0]);
    expect(timeline(true)).toEqual([0, 1, 0, 0]);
  });

  it('async scheduling: an idle core admits a new request at once', () => {
    const c = core({ asyncScheduling: true });
    c.add(req('a', 100, 1), 5);
    expect(c.startStep(5)).toBeGreaterThan(0);
    expect(c.lastStep.prefillSeqs).toBe(1);
  });

  it('a preempted request finds its prompt and output blocks in the cache when they were not evicted', () => {
    // a (512 + 400) and b (512 + 300) do not fit together in 1,600 tokens: b, the newest, is
    // preempted; its blocks stay cached (little else competes for memory) and it resumes cheaply
    const c = core({ kvCapacityTokens: 1600, maxNumBatchedTokens: 4096, blockSizeTokens: 16 });
    c.add(req('a', 512, 400, [1], 512), 0);
    c.add(req('b', 512, 300, [2], 512), 0);
    let t = 0;
    let preempted = 0;
    let ctxAtPreemption = 0;
    for (let k = 0; k < 5000; k++) {
      const d = c.startStep(t);
      if (d < 0) break;
      t += d;
      const ev = c.finishStep(t);
      if (ev.preempted.length && !preempted) ctxAtPreemption = 512 + c.get('b')!.generated;
      preempted += ev.preempted.length;
    }
    expect(preempted).toBeGreaterThan(0);
    expect(c.get('a')!.generated).toBe(400);
    expect(c.get('b')!.generated).toBe(300);
    // recompute after the preemption is far less than b's whole context
    const recompute = c.prefillTokens - 1024;
    expect(recompute).toBeGreaterThan(0);
    expect(recompute).toBeLessThan(ctxAtPreemption / 4);
    expect(c.kv.used - c.kv.evictable).toBe(0);
  });

  it('a partly evicted prompt block gives a partial hit that the request completes', () => {
    const c = core({ kvCapacityTokens: 600, maxNumBatchedTokens: 4096, blockSizeTokens: 16 });
    c.add(req('a', 512, 1, [7], 512), 0);
    runAll(c);
    expect(c.kv.blocks.get(7)!.resident).toBe(512);
    // a private allocation of 200 tokens takes 112 tokens (7 engine blocks) from the end of block 7
    expect(c.kv.allocate(200)).toBe(true);
    expect(c.kv.blocks.get(7)!.resident).toBe(400);
    c.kv.release(200);
    c.add(req('b', 512, 1, [7], 512), 100);
    c.startStep(100);
    expect(c.get('b')!.hitTokens).toBe(400);
    expect(c.lastStep.tokens).toBe(112);
    c.finishStep(200);
    expect(c.kv.blocks.get(7)!.resident).toBe(512); // completed again
    expect(c.kv.used).toBe(512);
  });
});
