import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { loadProfile } from '../sim/profiles.js';
import { collect, collectKnots, fitCollected, medianBursts } from '../sim/profile/collect.js';
import { replayBurst } from '../sim/profile/burst.js';
import { listTtftLogs, readBursts } from '../sim/profile/logs.js';
import type { Profile } from '../engine/types.js';

/**
 * How far the collected data itself lies from `base`, %: mean over the grid's (BS, PL, rank) of
 * |median-of-repeats TTFT − base's simulated TTFT| / base's (what the fit is given to match).
 */
function dataVsBasePct(dir: string, base: Profile): number {
  let s = 0;
  let n = 0;
  for (const b of medianBursts(readBursts(listTtftLogs(dir)))) {
    const sim = replayBurst(base, b.bs, b.pl).ttftMs;
    const got = b.requests.map((q) => q.ttftMs).sort((x, y) => x - y);
    got.forEach((ms, k) => {
      s += Math.abs(ms - sim[k]!) / sim[k]!;
      n++;
    });
  }
  return (100 * s) / Math.max(1, n);
}

const tmp: string[] = [];
let em: EmulatorHandle | null = null;
afterAll(async () => {
  await em?.close();
  tmp.forEach((d) => rmSync(d, { recursive: true, force: true }));
});

describe('profile collect → profile fit round trip against kvlab emulate', () => {
  it('recovers the emulated profile: simulated TTFT within 2 % of it on the collected grid, beyond the data\'s own distance', async () => {
    const P = loadProfile('a100x1-llama3-8b');
    // model time runs 10× slower than the wall clock, so the host's HTTP + timer overhead (a few
    // wall ms per request on a loaded 2-CPU box) is a few tenths of a model ms
    const timeScale = 0.1;
    em = await startEmulator({ profile: P, model: 'llama3-8b', coldStart: false, timeScale });
    const dir = mkdtempSync(join(tmpdir(), 'kvlab-collect-'));
    tmp.push(dir);
    const progress: string[] = [];
    const r = await collect({
      target: em.url,
      batchSizes: [1, 4],
      promptLengths: [256, 1024],
      repeats: 3,
      decodeBatchSizes: [1, 4],
      decodeTokens: 12,
      decodePrompt: 64,
      out: dir, // time scale: read from /emulator/status
      onProgress: (m) => progress.push(m),
    });
    expect(r.bursts).toBe(12);
    expect(progress.some((m) => m.startsWith('burst 12/12'))).toBe(true);
    const meta = JSON.parse(readFileSync(join(dir, 'collect.json'), 'utf8'));
    expect(meta).toMatchObject({ kind: 'kvlab-collect', model: 'llama3-8b', template_tokens: 0, time_scale: 0.1 });
    expect(meta.server.emulator.profile).toBe('a100x1-llama3-8b');
    expect(readFileSync(join(dir, 'log-bs4.txt'), 'utf8')).toMatch(/^\[TTFT\] BS=4, PL=256, repeat=1, task=1\/4, ttft=\d+\.\d\dms$/m);
    const f = fitCollected(dir, P);
    // The emulator is deterministic in model time, so the logs differ from the profile only by
    // what the host adds (late timers, a descheduled process: delays, never gains). On an idle
    // machine that is a few tenths of a %; at load average 9-11 the median repeat was 3-9 % late
    // and no fit of such data can be closer. So: the fitted profile is within 2 % of the emulated
    // one, beyond the collected data's own distance from it (measured here, under the same load);
    // a fit bug (wrong knots, terms, units) is off by far more than the data.
    const data = dataVsBasePct(dir, P);
    expect(f.gridVsBasePct).toBeLessThan(2 + data);
    expect(f.check.ttftMape).toBeLessThan(10); // per-request, against the wall-clock measurements
    expect(f.profile.engine).toEqual(P.engine);
    expect(f.profile.name).toBe('a100x1-llama3-8b-collected');
    expect(f.profile.coldStartMs).toBe(P.coldStartMs); // collect warms up: its logs carry no cold start
  }, 180_000);

  it('fit knots are the grid token counts up to the budget', () => {
    const P = loadProfile('a100x1-llama3-8b');
    expect(collectKnots(P, [100, 3000], [1, 4], 0)).toEqual([0, 100, 400, 2048]); // 3000 and 12000 capped at the budget
    expect(collectKnots(P, [100], [2], 28)).toEqual([0, 128, 256, 2048]);
  });

  it('repeats are combined rank by rank through the median (a slowed repeat does not pull)', () => {
    const req = (ms: number, task: number) => ({ file: 'f', line: task, bs: 2, pl: 64, repeat: 1, task, ttftMs: ms, fileFirst: task === 1 });
    const b = (rep: number, a: number, c: number) => ({ file: 'f', bs: 2, pl: 64, repeat: rep, line: rep, requests: [req(a, 1), req(c, 2)], complete: true });
    const m = medianBursts([b(1, 50, 30), b(2, 31, 52), b(3, 300, 400), { ...b(4, 1, 1), complete: false, requests: [req(1, 1)] }]);
    expect(m).toHaveLength(1);
    expect(m[0]!.requests.map((q) => q.ttftMs)).toEqual([31, 52]);
    expect(m[0]!.requests.every((q) => !q.fileFirst)).toBe(true);
  });

  it('an unreachable target is a one-line error naming the URL', async () => {
    await expect(collect({ target: 'http://127.0.0.1:9', batchSizes: [1], promptLengths: [8], repeats: 1, decodeBatchSizes: [], decodeTokens: 2, decodePrompt: 8, out: join(tmpdir(), 'never') })).rejects.toThrow(/127\.0\.0\.1:9\/v1\/models: not reachable/);
  });

  it('a malformed collected log names FILE:LINE', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvlab-collect-bad-'));
    tmp.push(dir);
    writeFileSync(join(dir, 'log-bs1.txt'), '[TTFT] BS=1, PL=64, repeat=1, task=1/1, ttft=oops\n');
    expect(() => fitCollected(dir, loadProfile('a100x1-llama3-8b'))).toThrow(/log-bs1\.txt:1: malformed \[TTFT\] line/);
  });
});
