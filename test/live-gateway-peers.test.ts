/**
 * Peer behaviours that need the live driver's cooperation: CacheRoute's proxy cap (requests
 * beyond READY_CONCURRENCY wait in the gateway), Mooncake's early rejection (HTTP 429, recorded
 * as rejected), llm-d's scraped engine metrics.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { backendSpecs } from '../live/backends.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { parseVllmMetrics } from '../live/metrics-scraper.js';
import { resolveCluster } from '../sim/cluster.js';
import { postJson, sleep, testProfile } from './helpers/live.js';

let ems: EmulatorHandle[] = [];
let gw: GatewayHandle | undefined;
let out = '';

afterEach(async () => {
  await gw?.close();
  gw = undefined;
  for (const e of ems) await e.close();
  ems = [];
  if (out) rmSync(out, { recursive: true, force: true });
  out = '';
});

async function setup(n: number, strategy: string, strategyParams: Record<string, unknown> = {}) {
  const profile = testProfile({ maxNumSeqs: 64 }, { decodeSeqMs: 2 });
  for (let i = 0; i < n; i++) ems.push(await startEmulator({ profile, model: 'm', coldStart: false }));
  const rc = resolveCluster({ instances: n }, {}, 'rtx5090x8-llama3-70b');
  for (const s of rc.spec.instances) {
    s.profile = profile;
    s.engine = { ...profile.engine };
  }
  out = mkdtempSync(join(tmpdir(), 'kvlab-peers-'));
  gw = await startGateway({ port: 0, backends: backendSpecs(ems.map((e) => e.url)), strategy, strategyParams, cluster: rc, out, health: { intervalMs: 0 } });
  return gw;
}

describe('gateway and peer strategies', () => {
  it('cacheroute: at most readyConcurrency requests reach an instance at once, the rest wait and all complete', async () => {
    const g = await setup(1, 'cacheroute', { readyConcurrency: 2 });
    let maxHeld = 0;
    let maxAtInstance = 0;
    let running = true;
    const watch = (async () => {
      while (running) {
        maxHeld = Math.max(maxHeld, g.engine.heldCount(0));
        const m = parseVllmMetrics(await (await fetch(`${ems[0]!.url}/metrics`)).text());
        if (m) maxAtInstance = Math.max(maxAtInstance, m.running + m.waiting);
        await sleep(2);
      }
    })();
    const res = await Promise.all(Array.from({ length: 6 }, (_, i) => postJson(`${g.url}/v1/completions`, { model: 'm', prompt: `request ${i} `.repeat(20), max_tokens: 30 })));
    running = false;
    await watch;
    expect(res.map((r) => r.status)).toEqual(new Array(6).fill(200));
    expect(maxHeld).toBeGreaterThanOrEqual(3);
    expect(g.engine.heldCount(0)).toBe(0);
    // the instance never had more than 2 at once (running + waiting in its engine core)
    expect(maxAtInstance).toBeGreaterThan(0);
    expect(maxAtInstance).toBeLessThanOrEqual(2);
  });

  it('mooncake early rejection answers 429 and records the request as rejected', async () => {
    const g = await setup(2, 'mooncake', { ttftSloMs: 0.001 });
    const r = await postJson(`${g.url}/v1/completions`, { model: 'm', prompt: 'hello '.repeat(50), max_tokens: 4 });
    expect(r.status).toBe(429);
    expect(r.json.error.message).toMatch(/admission control: predicted TTFT/);
    await g.close();
    gw = undefined;
    const recs = readFileSync(join(out, 'records.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(recs[0].status).toBe('rejected');
  });

  it('llm-d: the gateway scrapes vLLM metrics into the engine', async () => {
    const g = await setup(2, 'llm-d');
    for (let k = 0; k < 50 && g.engine.metrics.some((m) => m === null); k++) await sleep(20);
    expect(g.engine.metrics.every((m) => m !== null && m.kvUsage >= 0 && m.waiting >= 0)).toBe(true);
    const r = await postJson(`${g.url}/v1/completions`, { model: 'm', prompt: 'hello there', max_tokens: 2 });
    expect(r.status).toBe(200);
  });

  it('parses the three vLLM gauges (summed over ranks, KV usage averaged)', () => {
    const text = ['# HELP x', 'vllm:num_requests_waiting{rank="0"} 3', 'vllm:num_requests_waiting{rank="1"} 2', 'vllm:num_requests_running 4', 'vllm:kv_cache_usage_perc{rank="0"} 0.5', 'vllm:kv_cache_usage_perc{rank="1"} 0.25', 'other 9'].join('\n');
    expect(parseVllmMetrics(text)).toEqual({ waiting: 5, running: 4, kvUsage: 0.375 });
    expect(parseVllmMetrics('foo 1\n')).toBeNull();
  });
});
