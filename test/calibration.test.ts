/**
 * Predictor != truth: the engine predicts with its own (possibly wrong) profile while the
 * instances run on the cluster's, and online calibration corrects its step model from observed
 * first-token and completion times.
 */
import { describe, expect, it } from 'vitest';
import { Calibrator, scaleProfile } from '../engine/calibration.js';
import { createStrategy } from '../engine/strategies/index.js';
import { observed } from '../sim/metrics.js';
import { engineClusterFor } from '../sim/run.js';
import { simulate } from '../sim/simulator.js';
import { generateSynthetic } from '../traces/synthetic.js';
import { testCluster, testProfile } from './helpers/sim.js';

describe('Calibrator (ratio of sums per group)', () => {
  it('recovers the true factors from lane and decode equations', () => {
    const c = new Calibrator({ refreshEvery: 8, minEquations: 16 });
    let s = 7;
    const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296);
    for (let k = 0; k < 400; k++) {
      const P = 100 + 900 * rnd();
      const D = 50 * rnd();
      c.addLane(P, D, 2 * P + 0.5 * D + (rnd() - 0.5) * 20);
      const Pd = 200 * rnd();
      const Dd = 300 + 700 * rnd();
      c.addDecode(Pd, Dd, 2 * Pd + 0.5 * Dd + (rnd() - 0.5) * 20);
    }
    expect(c.factors.prefill).toBeCloseTo(2, 1);
    expect(c.factors.decode).toBeCloseTo(0.5, 1);
    expect(c.fits).toBeGreaterThan(10);
  });

  it('keeps the decode factor when the decode group is a sliver of the decode steps (not identifiable)', () => {
    // decode steps 97 % prefill group (weights read), the lane factor 2 % off: the ratio of sums
    // would put αd at (Σobs − 1.02·ΣP)/ΣD ≈ 1 − 0.02·32 = 0.35; the guard keeps it at 1
    const c = new Calibrator({ refreshEvery: 8, minEquations: 16 });
    for (let k = 0; k < 200; k++) {
      c.addLane(1000, 0, 1020);
      c.addDecode(970, 30, 970 + 30);
    }
    expect(c.factors.prefill).toBeCloseTo(1.02, 3);
    expect(c.factors.decode).toBe(1);
    const loose = new Calibrator({ refreshEvery: 8, minEquations: 16, minDecodeShare: 0 });
    for (let k = 0; k < 200; k++) {
      loose.addLane(1000, 0, 1020);
      loose.addDecode(970, 30, 1000);
    }
    expect(loose.factors.decode).toBeCloseTo(1 - (0.02 * 970) / 30, 2);
  });

  it('ignores non-finite or negative equations and clamps the factors', () => {
    const c = new Calibrator({ refreshEvery: 1, minEquations: 1, maxFactor: 3 });
    expect(c.addLane(NaN, 0, 5)).toBe(false);
    expect(c.addLane(10, 0, -1)).toBe(false);
    c.addLane(10, 0, 1000);
    expect(c.factors.prefill).toBe(3);
  });

  it('scales the prefill group (fixed, per-sequence prefill, token curve) and the decode group', () => {
    const p = testProfile();
    const q = scaleProfile(p, { prefill: 2, decode: 0.5 });
    expect(q.step.values).toEqual(p.step.values.map((v) => v * 2));
    expect(q.step.fixedMs).toBe(p.step.fixedMs * 2);
    expect(q.step.decodeSeqMs).toBe(p.step.decodeSeqMs * 0.5);
    expect(q.step.kvReadMsPerToken).toBe(p.step.kvReadMsPerToken * 0.5);
    expect(q.step.apiMs).toBe(p.step.apiMs);
    expect(p.step.fixedMs).toBe(testProfile().step.fixedMs); // the original is untouched
  });
});

describe('engine profile != cluster profile', () => {
  const t = generateSynthetic({ requests: 600, seed: 4, rate: 3 });
  /** mean |predicted − observed| / observed TTFT of a run. */
  const mape = (scale: { prefill: number; decode: number } | undefined, calibrate: boolean) => {
    const c = testCluster(3);
    const o = simulate(t.requests, { cluster: c, engineCluster: engineClusterFor(c, undefined, scale), calibrate, strategy: createStrategy('kvlab'), seed: 1 });
    const obs = observed(o);
    let err = 0;
    let n = 0;
    for (let r = 300; r < 600; r++) {
      if (obs.ttft[r]! <= 0) continue;
      err += Math.abs(o.decisions.predictedTtft(r) - obs.ttft[r]!) / obs.ttft[r]!;
      n++;
    }
    return { mape: err / n, factors: o.stepFactors };
  };

  it('a prefill model off by ×0.5 converges back with online calibration and predicts better', () => {
    const right = mape(undefined, false);
    const wrong = mape({ prefill: 0.5, decode: 1 }, false);
    const fixed = mape({ prefill: 0.5, decode: 1 }, true);
    expect(wrong.factors).toEqual({ prefill: 1, decode: 1 });
    expect(fixed.factors.prefill).toBeGreaterThan(1.7);
    expect(fixed.factors.prefill).toBeLessThan(2.3);
    expect(wrong.mape).toBeGreaterThan(right.mape * 1.3);
    expect(fixed.mape).toBeLessThan(wrong.mape * 0.8);
  });

  it('the engine cluster keeps the instances, links and engine settings, with the other profile', () => {
    const c = testCluster(2);
    const e = engineClusterFor(c, undefined, { prefill: 0.8, decode: 1.25 })!;
    expect(e.instances).toHaveLength(2);
    expect(e.instances[0]!.engine).toEqual(c.instances[0]!.engine);
    expect(e.instances[0]!.profile.step.values).toEqual(c.instances[0]!.profile.step.values.map((v) => v * 0.8));
    expect(e.links).toBe(c.links);
    expect(engineClusterFor(c)).toBeUndefined();
    expect(() => engineClusterFor(c, undefined, { prefill: 0, decode: 1 })).toThrow(/positive/);
  });
});
