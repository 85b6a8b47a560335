/**
 * 1,000 simultaneous requests through the gateway to four fast emulators: every one is
 * answered, and the load booked at dispatch spreads them across the instances (asserted from
 * the records, as the issue asks).
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, describe, expect, it } from 'vitest';
import { backendSpecs } from '../live/backends.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { resolveCluster } from '../sim/cluster.js';
import { testProfile } from './helpers/live.js';

const ems: EmulatorHandle[] = [];
let gw: GatewayHandle | undefined;
let out = '';

afterAll(async () => {
  await gw?.close();
  for (const e of ems) await e.close();
  if (out) rmSync(out, { recursive: true, force: true });
});

describe('burst', () => {
  it('1,000 simultaneous requests spread across 4 instances', async () => {
    const profile = testProfile({ maxNumSeqs: 64 });
    for (let i = 0; i < 4; i++) ems.push(await startEmulator({ profile, model: 'm', coldStart: false }));
    const rc = resolveCluster({ instances: 4 }, {}, 'rtx5090x8-llama3-70b');
    for (const s of rc.spec.instances) {
      s.profile = profile;
      s.engine = { ...profile.engine };
    }
    out = mkdtempSync(join(tmpdir(), 'kvlab-burst-'));
    gw = await startGateway({ port: 0, backends: backendSpecs(ems.map((e) => e.url)), strategy: 'kvlab', cluster: rc, out, health: { intervalMs: 0 } });
    const agent = new Agent({ connections: 1000, keepAliveTimeout: 10_000 });
    const N = 1000;
    const t0 = performance.now();
    const res = await Promise.all(
      Array.from({ length: N }, async (_, i) => {
        const r = await request(`${gw!.url}/v1/completions`, {
          method: 'POST',
          dispatcher: agent,
          headers: { 'content-type': 'application/json', 'x-request-id': `b${i}` },
          body: JSON.stringify({ model: 'm', prompt: `burst request number ${i} with a distinct prompt`, max_tokens: 2 }),
        });
        await r.body.text();
        return r.statusCode;
      }),
    );
    const wall = performance.now() - t0;
    await agent.close();
    expect(res.filter((s) => s === 200)).toHaveLength(N);
    await gw.close();
    gw = undefined;
    const recs = readFileSync(join(out, 'records.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(recs).toHaveLength(N);
    expect(recs.every((r) => r.status === 'ok')).toBe(true);
    const per = new Map<string, number>();
    for (const r of recs) per.set(r.instance, (per.get(r.instance) ?? 0) + 1);
    expect(per.size).toBe(4);
    // booked load spreads a burst evenly: every instance gets 25% ± 5%
    for (const n of per.values()) expect(Math.abs(n / N - 0.25)).toBeLessThan(0.05);
    expect(wall).toBeLessThan(25_000);
  });
});
