/**
 * Replay of logged TTFT bursts through the simulator's instance model (sim/instance.ts
 * `InstanceCore`, vLLM V1 scheduling), used by the fit (sim/profile/fit.ts) and the check
 * (sim/profile/check.ts): B simultaneous requests of PL tokens, request k reaching the engine core
 * at (k+1)·frontendMsPerRequest, TTFT = apiMs + end of the step that completes its prefill.
 */
import type { Profile } from '../../engine/types.js';
import type { StepComposition } from '../../engine/costmodel.js';
import { InstanceCore, type CoreRequest } from '../instance.js';
import { instanceSpecFromProfile } from '../profiles.js';
import type { Burst } from './logs.js';


/** One engine step of a replayed burst. */
export interface ReplayStep {
  comp: StepComposition;
  /** start time, ms after the burst was sent. */
  startMs: number;
  /** duration including any cold start, ms. */
  durMs: number;
  /** start of the busy period (steps back to back) this step belongs to, ms. */
  busyStartMs: number;
  /** cold-start ms added to this step (first step of a cold instance). */
  coldMs: number;
}

/** A replayed burst: per request (index = arrival order) its TTFT and completing step. */
export interface BurstReplay {
  /** simulated TTFT per request, ms (apiMs + end of its prefill step − send time 0). */
  ttftMs: number[];
  /** index into `steps` of the step that completed each request's prefill. */
  doneStep: number[];
  steps: ReplayStep[];
}

/**
 * Replays one burst — `bs` simultaneous requests of `promptTokens` tokens (template included),
 * 1 output token each, unique block ids (no prefix-cache hits) — through a fresh InstanceCore.
 * Request k reaches the core at (k+1)·frontendMsPerRequest; the core starts a step whenever it
 * is idle and has work. `coldStartMs` is added to the first step (a cold instance).
 * @throws Error when the instance rejects a request (prompt + 1 > max_model_len or KV capacity)
 */
export function replayBurst(profile: Profile, bs: number, promptTokens: number, opts: { coldStartMs?: number } = {}): BurstReplay {
  const spec = instanceSpecFromProfile(profile, 0);
  const core = new InstanceCore(spec, { keepDone: true });
  const f = profile.step.frontendMsPerRequest;
  const api = profile.step.apiMs;
  const blockSize = spec.engine.blockSizeTokens;
  const nBlocks = Math.ceil(promptTokens / blockSize);
  const arrivals: number[] = [];
  const reqs: CoreRequest[] = [];
  for (let k = 0; k < bs; k++) {
    arrivals.push((k + 1) * f);
    // unique ids per request: prefix caching is defeated, as in the logs (uuid-prefixed prompts)
    const blocks = Array.from({ length: nBlocks }, (_, j) => (k + 1) * 1_000_000 + j);
    reqs.push({ id: String(k), promptTokens, outputTokens: 1, blocks, blockSize, loadedTokens: 0, kvLoadMs: 0 });
  }
  const ttftMs = new Array<number>(bs).fill(NaN);
  const doneStep = new Array<number>(bs).fill(-1);
  const steps: ReplayStep[] = [];
  let t = 0;
  let next = 0;
  let done = 0;
  let idle = true;
  let busyStart = 0;
  let cold = opts.coldStartMs ?? 0;
  const admit = (upTo: number, inclusive: boolean): void => {
    while (next < bs && (inclusive ? arrivals[next]! <= upTo : arrivals[next]! < upTo)) {
      if (!core.add(reqs[next]!, arrivals[next]!)) {
        throw new Error(
          `replay: request of ${promptTokens} prompt tokens rejected by ${profile.name} (max_model_len ${spec.engine.maxModelLen}, KV ${spec.engine.kvCapacityTokens} tokens)`,
        );
      }
      next++;
    }
  };
  let guard = 0;
  while (done < bs) {
    if (++guard > 100_000) throw new Error('replay: no progress');
    admit(t, true);
    let d = core.startStep(t);
    if (d < 0) {
      if (next >= bs) throw new Error('replay: instance idle with requests outstanding');
      t = arrivals[next]!;
      idle = true;
      continue;
    }
    if (idle) {
      busyStart = t;
      idle = false;
    }
    const coldMs = cold;
    d += coldMs;
    cold = 0;
    const comp = { ...core.lastStep };
    const end = t + d;
    admit(end, false);
    const ev = core.finishStep(end);
    steps.push({ comp, startMs: t, durMs: d, busyStartMs: busyStart, coldMs });
    for (const id of ev.firstToken) {
      const k = Number(id);
      ttftMs[k] = api + end;
      doneStep[k] = steps.length - 1;
      done++;
    }
    t = end;
  }
  return { ttftMs, doneStep, steps };
}

/**
 * Sizes of the groups of requests that complete in the same step, in completion order
 * (e.g. [1, 7] for a burst of 8: one alone, then seven together).
 */
export function simulatedGroups(r: BurstReplay): number[] {
  const count = new Map<number, number>();
  for (const s of r.doneStep) count.set(s, (count.get(s) ?? 0) + 1);
  return [...count.entries()].sort((a, b) => a[0] - b[0]).map(([, n]) => n);
}

/**
 * Clusters sorted measured TTFTs: a new group starts where the gap to the previous value exceeds
 * `gapMs`. Returns the group sizes in order.
 */
export function measuredGroups(sortedMs: readonly number[], gapMs: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < sortedMs.length; i++) {
    if (i === 0 || sortedMs[i]! - sortedMs[i - 1]! > gapMs) out.push(1);
    else out[out.length - 1]!++;
  }
  return out;
}

/**
 * Gap threshold for measuredGroups given a replay: half the smallest gap between consecutive
 * simulated groups, or a quarter of the fastest TTFT when the simulation has a single group.
 */
export function groupGapMs(r: BurstReplay): number {
  const byStep = new Map<number, number>();
  r.doneStep.forEach((s, k) => byStep.set(s, r.ttftMs[k]!));
  const times = [...byStep.values()].sort((a, b) => a - b);
  let minGap = Infinity;
  for (let i = 1; i < times.length; i++) minGap = Math.min(minGap, times[i]! - times[i - 1]!);
  return Number.isFinite(minGap) ? minGap / 2 : Math.min(...r.ttftMs) / 4;
}

/** true when the measured grouping of a burst equals the simulated one. */
export function burstConforms(r: BurstReplay, measuredSortedMs: readonly number[]): boolean {
  const a = simulatedGroups(r);
  const b = measuredGroups(measuredSortedMs, groupGapMs(r));
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Indices 0..n−1 sorted by value (stable). */
export function argsort(v: readonly number[]): number[] {
  return v.map((_, i) => i).sort((a, b) => v[a]! - v[b]! || a - b);
}


/**
 * Cold-start excess of the burst holding a file's first request: measured TTFT of that request
 * minus the warm simulated TTFT of the same rank. `cold` when it exceeds max(200 ms, the simulated
 * value) — a warm server measures within a few % of the model, a cold one ~0.7–0.9 s slower.
 */
export function coldExcess(profile: Profile, b: Burst, templateTokens: number): { excessMs: number; cold: boolean } | null {
  const idx = b.requests.findIndex((q) => q.fileFirst);
  if (idx < 0) return null;
  const r = replayBurst(profile, b.bs, b.pl + templateTokens);
  const measured = b.requests.map((q) => q.ttftMs);
  const rank = argsort(measured).indexOf(idx);
  const sim = [...r.ttftMs].sort((a, c) => a - c)[rank]!;
  const excessMs = measured[idx]! - sim;
  return { excessMs, cold: excessMs > Math.max(200, sim) };
}

