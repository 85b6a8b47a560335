import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSimulator, SimulatorUnavailableError, type SimOptions } from '../notebooks/sim-api.js';
import {
  defaultWorkerFile,
  expandGrid,
  formatProgress,
  parseSeeds,
  parseVary,
  planJobs,
  runJobs,
  runSweep,
  toSimOptions,
  type SweepProgress,
  type SweepSpec,
} from '../notebooks/sweep.js';
import type { SummaryJson } from '../notebooks/types.js';

const FIX = join(import.meta.dirname, 'fixtures', 'notebooks');
const FAKE_SIM = pathToFileURL(join(FIX, 'fake-sim.mjs')).href;
let root: string;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'kvlab-nb-sweep-'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

function fakeSummary(opts: SimOptions, v = 100): SummaryJson {
  const st = { mean: v, p50: v, p90: v, p99: v };
  return { strategy: opts.strategy, seed: opts.seed ?? 1, requests: 1, completed: 1, rejected: 0, failed: 0, prefix_hit_ratio: 0, ttft_ms: st, tpot_ms: st, e2e_ms: st, throughput_rps: 1, duration_ms: 1 };
}

const spec = (over: Partial<SweepSpec> = {}): SweepSpec => ({
  workload: 'synthetic',
  strategies: ['round-robin', 'kvlab'],
  vary: { rate: [1, 2, 4, 8], kdn_gbps: [1, 10, 100] },
  seeds: [1, 2, 3],
  out: join(root, 'out'),
  ...over,
});

describe('grid', () => {
  it('parses --vary and --seeds, rejecting malformed options', () => {
    expect(parseVary(['rate=1,2,4,8', 'kdn_gbps=1,10,100', 'workload.docMedianTokens=500,2000', 'policy=a,b'])).toEqual({
      rate: [1, 2, 4, 8], kdn_gbps: [1, 10, 100], 'workload.docMedianTokens': [500, 2000], policy: ['a', 'b'],
    });
    expect(() => parseVary(['rate']) ).toThrow(/--vary "rate": expected NAME=V1,V2/);
    expect(() => parseVary(['rate=1,,2'])).toThrow(/empty value/);
    expect(() => parseVary(['rate=1', 'rate=2'])).toThrow(/given twice/);
    expect(() => parseVary(['rate=1,1'])).toThrow(/repeated value/);
    expect(parseSeeds('3')).toEqual([1, 2, 3]);
    expect(parseSeeds('1, 5,9')).toEqual([1, 5, 9]);
    expect(() => parseSeeds('0')).toThrow(/at least one seed/);
    expect(() => parseSeeds('a')).toThrow(/expected a count/);
  });

  it('expands the cartesian product, first dimension slowest', () => {
    const g = expandGrid({ rate: [1, 2], kdn_gbps: [1, 10, 100] });
    expect(g).toEqual([
      { rate: 1, kdn_gbps: 1 }, { rate: 1, kdn_gbps: 10 }, { rate: 1, kdn_gbps: 100 },
      { rate: 2, kdn_gbps: 1 }, { rate: 2, kdn_gbps: 10 }, { rate: 2, kdn_gbps: 100 },
    ]);
    expect(expandGrid({})).toEqual([{}]);
    const jobs = planJobs(spec());
    expect(jobs).toHaveLength(4 * 3 * 2 * 3);
    expect(jobs.map((j) => j.index)).toEqual(jobs.map((_, i) => i));
    expect(jobs.slice(0, 4).map((j) => `${j.strategy}/${j.seed}`)).toEqual(['round-robin/1', 'round-robin/2', 'round-robin/3', 'kvlab/1']);
    expect(() => planJobs(spec({ strategies: [] }))).toThrow(/no strategy/);
  });

  it('maps rate to the workload rate or to a trace time scale, kdn_gbps to overrides; unknown parameters fail naming the known ones', () => {
    expect(toSimOptions(spec(), { rate: 4, kdn_gbps: 10, 'workload.docs': 50, instances: 8 }, 'kvlab', 2)).toEqual({
      strategy: 'kvlab', seed: 2, workload: 'synthetic', instances: 8,
      workloadOptions: { rate: 4, docs: 50 }, overrides: { kdn_gbps: 10 },
    });
    expect(() => toSimOptions(spec(), { rat: 1 }, 'kvlab', 1)).toThrow(/--vary rat: unknown parameter \(known: rate, kdn_gbps, instances, router_replicas, replica_sync_ms, workload\.<option>\)/);
    expect(() => toSimOptions(spec(), { 'workload.bogus': 1 }, 'kvlab', 1)).toThrow(/bogus: not an option of the synthetic workload/);
    expect(() => toSimOptions(spec(), { instances: 0 }, 'kvlab', 1)).toThrow(/instances must be integers/);
    const t = toSimOptions(spec({ trace: '/t.jsonl', workload: undefined }), { rate: 4 }, 'kvlab', 1);
    expect(t).toEqual({ strategy: 'kvlab', seed: 1, trace: '/t.jsonl', timeScale: 0.25 });
    expect(() => toSimOptions(spec(), { rate: 0 }, 'kvlab', 1)).toThrow(/rate must be a positive number/);
    expect(toSimOptions(spec({ keepRuns: true }), { rate: 2 }, 'kvlab', 3).out).toBe(join(root, 'out', 'runs', 'rate=2', 'kvlab', 'seed-3'));
  });
});

describe('running', () => {
  it('keeps grid order whatever the completion order, bounds concurrency, records failures, reports progress', async () => {
    const jobs = planJobs(spec({ strategies: ['a', 'boom'], vary: { rate: [1, 2, 3] }, seeds: [1, 2] }));
    let running = 0;
    let peak = 0;
    const progress: SweepProgress[] = [];
    const { entries, timings } = await runJobs(jobs, {
      concurrency: 3,
      runner: async (o) => {
        running++;
        peak = Math.max(peak, running);
        // later jobs finish first
        await new Promise((r) => setTimeout(r, 5 + 40 / (o.workloadOptions!['rate'] as number) / (o.seed ?? 1)));
        running--;
        if (o.strategy === 'boom') throw new Error('exploded');
        return { summary: fakeSummary(o, (o.workloadOptions!['rate'] as number) * 100) };
      },
      onProgress: (p) => progress.push(p),
    });
    expect(peak).toBe(3);
    expect(entries.map((e) => `${e.params['rate']}/${e.strategy}/${e.seed}`)).toEqual(jobs.map((j) => `${j.params['rate']}/${j.strategy}/${j.seed}`));
    expect(entries.filter((e) => e.strategy === 'a').every((e) => e.summary!.ttft_ms.p50 === (e.params['rate'] as number) * 100)).toBe(true);
    expect(entries.filter((e) => e.strategy === 'boom').every((e) => e.summary === null && e.error === 'exploded')).toBe(true);
    expect(progress.map((p) => p.done)).toEqual(jobs.map((_, i) => i + 1));
    // machine-dependent facts are kept apart from the entries, in the same order
    expect(timings.map((t) => `${t.params['rate']}/${t.strategy}/${t.seed}`)).toEqual(entries.map((e) => `${e.params['rate']}/${e.strategy}/${e.seed}`));
    expect(timings.every((t) => t.wall_ms >= 5)).toBe(true);
    expect(entries.every((e) => e.wall_ms === undefined)).toBe(true);
    expect(progress.at(-1)).toMatchObject({ total: jobs.length, failed: 6 });
    expect(formatProgress(progress.at(-1)!)).toMatch(/^sweep 12\/12 \(100%\) · 6 failed · 0:0\d elapsed · ~0:00 left · last: /);
  });

  it('runs jobs in parallel worker threads (piscina) and writes sweep.json in grid order', async () => {
    const out = join(root, 'pool');
    const t0 = Date.now();
    const r = await runSweep(
      { workload: 'synthetic', strategies: ['a', 'boom'], vary: { rate: [1, 2], kdn_gbps: [1, 10] }, seeds: [1, 2], out, overrides: { sleep_ms: 150 } },
      { workerFile: join(FIX, 'fake-sweep-worker.mjs'), simModule: FAKE_SIM, concurrency: 2 },
    );
    const wall = Date.now() - t0;
    expect(r.entries).toHaveLength(16);
    expect(r.failed).toBe(8);
    const onDisk = JSON.parse(readFileSync(join(out, 'sweep.json'), 'utf8')) as { params: Record<string, number>; strategy: string; seed: number; summary: (SummaryJson & { thread: number; echo: SimOptions }) | null; error?: string }[];
    expect(onDisk.map((e) => [e.params['rate'], e.params['kdn_gbps'], e.strategy, e.seed])).toEqual(r.entries.map((e) => [e.params['rate'], e.params['kdn_gbps'], e.strategy, e.seed]));
    const ok = onDisk.filter((e) => e.summary);
    expect(new Set(ok.map((e) => e.summary!.thread)).size).toBeGreaterThanOrEqual(2); // more than one worker thread
    expect(ok.every((e) => e.summary!.thread !== 0)).toBe(true); // not the main thread
    expect(ok.every((e) => e.summary!.echo.overrides!['kdn_gbps'] === e.params['kdn_gbps'] && e.summary!.echo.workloadOptions!['rate'] === e.params['rate'])).toBe(true);
    expect(onDisk.find((e) => e.strategy === 'boom')!.error).toMatch(/boom: strategy exploded/);
    expect(wall).toBeLessThan(16 * 150); // serial would take >= 2.4 s
  });

  it('fails at once with "simulator not available" when sim/run is missing or has no runSim', async () => {
    await expect(loadSimulator(pathToFileURL(join(root, 'sim', 'run.js')).href)).rejects.toThrow(/^simulator not available: .*run\.js does not exist yet/);
    await expect(loadSimulator(pathToFileURL(join(FIX, 'no-runsim.mjs')).href)).rejects.toThrow(SimulatorUnavailableError);
    await expect(loadSimulator(pathToFileURL(join(FIX, 'no-runsim.mjs')).href)).rejects.toThrow(/does not export runSim/);
    const fn = await loadSimulator(FAKE_SIM);
    expect((await fn({ strategy: 'x', seed: 1, overrides: { sleep_ms: 0 } })).summary.strategy).toBe('x');
    const out = join(root, 'nosim');
    await expect(runSweep(spec({ out }), { simModule: pathToFileURL(join(root, 'missing.js')).href })).rejects.toThrow(/simulator not available/);
    expect(existsSync(join(out, 'sweep.json'))).toBe(false);
  });

  it.skipIf(!defaultWorkerFile())('the compiled sweep worker loads the simulator module it is given', async () => {
    const r = await runSweep(
      { workload: 'synthetic', strategies: ['a'], vary: { rate: [1, 2] }, seeds: [1], out: join(root, 'real-worker'), overrides: { sleep_ms: 1 } },
      { simModule: FAKE_SIM, concurrency: 2 },
    );
    expect(r.failed).toBe(0);
    expect(r.entries.map((e) => e.summary!.ttft_ms.p50)).toEqual([101, 202]);
  });
});
