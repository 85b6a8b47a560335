/**
 * `kvlab live demo` end to end, small and fast (synthetic workload, time scale 4): it starts
 * Redis, emulators, a KDN and the gateway, replays, simulates the same requests, writes
 * diff.json, and stops everything it started. The MAPE bound here is loose (CI machines are
 * shared); the demo's own numbers are in docs/BENCHMARKS.md.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runDemo } from '../live/demo.js';
import { pingRedis } from '../live/redis-launcher.js';
import { describeRedis } from './helpers/system.js';

const out = mkdtempSync(join(tmpdir(), 'kvlab-demo-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describeRedis('live demo', () => {
  it('runs the live path and the simulator on the same requests and compares them', async () => {
    const lines: string[] = [];
    const r = await runDemo({ out, requests: 10, rate: 2, timeScale: 4, workload: 'synthetic', outputTokens: 8, log: (l) => lines.push(l) });
    expect(r.requests).toBe(10);
    expect(r.completed).toBe(10);
    // the documents' KV was computed by the builder instance, not synthesised by the KDN
    expect(r.documents.registered).toBeGreaterThan(0);
    expect(r.documents.builtKv).toBe(r.documents.registered);
    for (const d of ['live', 'replay', 'sim', 'sim-own']) {
      expect(existsSync(join(out, d, 'records.jsonl'))).toBe(true);
      expect(existsSync(join(out, d, 'summary.json'))).toBe(true);
    }
    const diff = JSON.parse(readFileSync(join(out, 'diff.json'), 'utf8'));
    expect(diff.joined).toBe(10);
    expect(diff.fields.ttft_ms.n).toBe(10);
    expect(diff.engine_prediction.ttft_ms.n).toBe(10);
    expect(diff.pairs).toHaveLength(10);
    expect(diff.same_instance).toBe(1); // the sim replays the live decisions
    // same requests on both sides: ids, prompt tokens, knowledge
    const live = readFileSync(join(out, 'live', 'records.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const sim = new Map(readFileSync(join(out, 'sim', 'records.jsonl'), 'utf8').trim().split('\n').map((l) => [JSON.parse(l).id, JSON.parse(l)]));
    for (const l of live) {
      const s = sim.get(l.id)!;
      expect(s.input_tokens).toBe(l.input_tokens);
      expect(s.knowledge_tokens).toBe(l.knowledge_tokens);
      expect(s.intent).toBe(l.intent);
      expect(l.observed.prompt_tokens).toBe(l.input_tokens); // the gateway tokenises like the backend
    }
    expect(r.simVsObservedMape).not.toBeNull();
    expect(r.simVsObservedMape!).toBeLessThan(0.5);
    expect(r.text).toMatch(/simulated, same decisions/);
    expect(r.text).toMatch(/decision-time prediction/);
    // everything it started is stopped
    const port = Number(/redis:\/\/127\.0\.0\.1:(\d+)/.exec(lines.join('\n'))![1]);
    expect(await pingRedis('127.0.0.1', port, 300)).toBe(false);
    const gwUrl = /gateway (http:\/\/\S+)/.exec(lines.join('\n'))![1]!;
    await expect(fetch(`${gwUrl}/health`)).rejects.toThrow();
    // progress: the replay reports where it is, and the steps are announced
    expect(lines.some((l) => /live demo: replay 10\/10 requests done/.test(l))).toBe(true);
    expect(lines.some((l) => /simulating the same requests/.test(l))).toBe(true);
    // the demo's records are never overwritten: a second demo into the same directory is refused at once
    const t0 = performance.now();
    await expect(runDemo({ out, requests: 2, workload: 'synthetic', log: () => undefined })).rejects.toThrow(/already holds a live demo .*use a new --out directory/);
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  it('--pd: 1 prefill + 1 decode emulator end to end, every request disaggregated live and in the sim', async () => {
    const dir = join(out, 'pd');
    const r = await runDemo({ out: dir, pd: true, requests: 6, rate: 2, timeScale: 4, workload: 'synthetic', outputTokens: 6, log: () => undefined });
    expect(r.completed).toBe(6);
    const read = (d: string) => readFileSync(join(dir, d, 'records.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const live = read('live');
    const sim = new Map(read('sim').map((x) => [x.id, x]));
    for (const l of live) {
      expect(l.instance).toBe('i0');
      expect(l.decode_instance).toBe('i1');
      expect(l.observed.pd).toMatchObject({ decode_instance: 'i1', kv_transfer_params: true, fallback: null, transfer_tokens: l.input_tokens });
      // the decode emulator charged the hand-off on the same link model as the simulator
      const s = sim.get(l.id);
      expect(s.decode_instance).toBe('i1');
      expect(l.observed.pd.transfer_bytes).toBe(s.observed.pd.transfer_bytes);
      expect(l.observed.pd.transfer_ms).toBeCloseTo(s.observed.pd.transfer_ms, 1);
    }
    expect(JSON.parse(readFileSync(join(dir, 'diff.json'), 'utf8')).same_instance).toBe(1);
    expect(r.text).toMatch(/P\/D: 6 requests disaggregated live \(0 fell back to P\), 6 in the sim/);
    await expect(runDemo({ out: join(out, 'pd3'), pd: true, instances: 3, log: () => undefined })).rejects.toThrow(/--pd runs 1 prefill \+ 1 decode instance/);
  });

  it('--blend: several documents per request blended in live from builder-computed CacheBlend KV, and in the sim', async () => {
    const dir = join(out, 'blend');
    const r = await runDemo({ out: dir, blend: true, requests: 6, rate: 2, timeScale: 4, outputTokens: 6, log: () => undefined });
    expect(r.completed).toBe(6);
    // every document the requests use got its CacheBlend KV from the CacheBlend builder
    expect(r.documents.builtBlendKv).toBe(r.documents.registered);
    const live = readFileSync(join(dir, 'live', 'records.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const blended = live.filter((l) => l.intent === 'blend');
    expect(blended.length).toBeGreaterThan(0);
    for (const l of blended) {
      expect(l.decision.reused_tokens).toBeGreaterThan(0);
      // LMCache (the emulator's, enable_blending) found every injected document: the engine's
      // reuse counts each document's system-message block, the segments hold the document alone
      // (a few template tokens fewer per document)
      expect(l.observed.cached_tokens).toBeGreaterThan(0.95 * l.decision.reused_tokens);
    }
    expect(live.every((l) => l.knowledge_tokens > 0)).toBe(true);
    await expect(runDemo({ out: join(out, 'blend-nq'), blend: true, workload: 'nq', log: () => undefined })).rejects.toThrow(/--blend runs the multi-document synthetic workload/);
  });
});
