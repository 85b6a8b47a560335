/**
 * A causal engine: no strategy and no engine bookkeeping reads a request's true output length
 * (`TraceRequest.outputTokens`); the engine books `max_tokens` or its output-length predictor.
 */
import { describe, expect, it } from 'vitest';
import { Engine } from '../engine/engine.js';
import { OutputLengthPredictor } from '../engine/output-length.js';
import { STRATEGY_NAMES, createStrategy } from '../engine/strategies/index.js';
import type { Decision, TraceRequest } from '../engine/types.js';
import { mkReq, testCluster } from './helpers/sim.js';

/** 80 requests over a few shared prefixes, some with knowledge, arriving every 40 ms. */
function workload(outputs: (k: number) => number): TraceRequest[] {
  const out: TraceRequest[] = [];
  for (let k = 0; k < 80; k++) {
    const p = k % 5;
    const blocks = [...Array.from({ length: 6 + p }, (_, j) => 100 * p + j), 10_000 + k];
    const knowledge = k % 3 === 0 ? [{ kid: `doc${p}`, tokens: 256 }] : [];
    out.push(mkReq({ id: `r${k}`, arrivalMs: 40 * k, blocks, inputTokens: blocks.length * 16, outputTokens: outputs(k), knowledge, knowledgeTokens: knowledge.length ? 256 : 0 }));
  }
  return out;
}

/**
 * Drives an engine on a fixed schedule that does not depend on output lengths: first token 150 ms
 * after arrival, completion 700 ms after, with `observed(k)` completion tokens reported.
 * Returns a fingerprint of every decision.
 */
function drive(name: string, reqs: TraceRequest[], observed: (k: number) => number): string[] {
  const e = new Engine(testCluster(4), createStrategy(name), { seed: 5 });
  type Ev = { t: number; kind: 0 | 1; k: number };
  const evs: Ev[] = [];
  const prints: string[] = [];
  const flush = (until: number) => {
    evs.sort((a, b) => a.t - b.t || a.kind - b.kind || a.k - b.k);
    while (evs.length && evs[0]!.t <= until) {
      const ev = evs.shift()!;
      const id = reqs[ev.k]!.id;
      if (ev.kind === 0) e.onFirstToken(id, ev.t);
      else e.onComplete(id, ev.t, observed(ev.k));
      e.onInstanceMetrics(0, { waiting: ev.k % 3, running: 1, kvUsage: 0.1, at: ev.t });
      e.takeReleased();
    }
  };
  reqs.forEach((r, k) => {
    flush(r.arrivalMs);
    const d: Decision = e.decide(r, r.arrivalMs);
    prints.push(JSON.stringify([d.instance, d.intent, d.reusedTokens, d.expectedOutputTokens, d.rejected ?? null, d.peer ?? null, d.alternatives]));
    if (d.rejected) return;
    e.onDispatch(r, d, r.arrivalMs);
    e.forward(r.id, r.arrivalMs);
    e.onKvEvent({ instance: d.instance, kind: 'stored', blocks: r.blocks });
    evs.push({ t: r.arrivalMs + 150, kind: 0, k }, { t: r.arrivalMs + 700, kind: 1, k });
  });
  flush(Infinity);
  return prints;
}

describe('causal engine', () => {
  it('no strategy reads the true output length (reading it throws)', () => {
    for (const name of STRATEGY_NAMES) {
      const reqs = workload(() => 1).map(
        (r) =>
          new Proxy(r, {
            get(t, prop, recv) {
              if (prop === 'outputTokens') throw new Error(`${name} read outputTokens`);
              return Reflect.get(t, prop, recv);
            },
          }),
      );
      expect(() => drive(name, reqs, (k) => 20 + k), name).not.toThrow();
    }
  });

  it('swapping the true output lengths gives identical decisions (every strategy)', () => {
    for (const name of STRATEGY_NAMES) {
      const a = drive(name, workload((k) => 10 + k), (k) => 30 + (k % 7));
      const b = drive(name, workload((k) => 2000 - 13 * k), (k) => 30 + (k % 7));
      expect(b, name).toEqual(a);
    }
  });

  it('books max_tokens when the request carries it, else the predictor learns from completions', () => {
    const e = new Engine(testCluster(2), createStrategy('kvlab'), { seed: 1 });
    const withMax = mkReq({ id: 'm', inputTokens: 1000, outputTokens: 5 });
    withMax.maxTokens = 300;
    expect(e.decide(withMax, 0).expectedOutputTokens).toBe(300);
    // no history: AIBrix's optimistic cold prediction (1)
    const r = mkReq({ id: 'a', inputTokens: 1000, outputTokens: 777 });
    const d = e.decide(r, 0);
    expect(d.expectedOutputTokens).toBe(1);
    e.onDispatch(r, d, 0);
    expect(e.loads.loads[d.instance]!.kvTokens).toBe(1001); // prompt + predicted, not + 777
    e.onComplete('a', 5000, 400);
    expect(e.decide(mkReq({ id: 'b', inputTokens: 1010 }), 6000).expectedOutputTokens).toBe(400);
  });
});

describe('OutputLengthPredictor (AIBrix SimpleOutputPredictor, log2 buckets of 0.1)', () => {
  it('separates input lengths by log2 bucket and falls back to neighbours, the window, then cold', () => {
    const p = new OutputLengthPredictor();
    expect(p.predict(1000, 0)).toBe(1);
    p.observe(1000, 100, 0);
    p.observe(1000, 300, 0);
    p.observe(8000, 20, 0);
    expect(p.predict(1000, 1000)).toBe(200);
    expect(p.bucket(1000)).toBe(Math.round(Math.log2(1000) / 0.1));
    expect(p.predict(1030, 1000)).toBe(200); // same bucket (1000 × 2^0.05 ≈ 1035)
    expect(p.predict(1400, 1000)).toBe(200); // empty bucket: the nearest within an octave
    expect(p.predict(100_000, 1000)).toBe(Math.round((100 + 300 + 20) / 3)); // nothing within an octave: the whole window
  });

  it('weights recent slots more and forgets after the 240 s window', () => {
    const p = new OutputLengthPredictor();
    p.observe(500, 100, 0);
    p.observe(500, 300, 120_000); // one half-life later
    // weights 0.5 (old) and 1 (new): (50 + 300) / 1.5
    expect(p.predict(500, 120_000)).toBe(Math.round(350 / 1.5));
    expect(p.predict(500, 120_000 + 240_000)).toBe(1);
    p.observe(500, NaN, 400_000);
    p.observe(500, -3, 400_000);
    expect(p.predict(500, 400_000)).toBe(1);
  });
});
