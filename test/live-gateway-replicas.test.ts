/**
 * Gateway replicas over a Redis Stream op-log (`--peers`): 3 gateways in front of 2 emulators,
 * a burst of 600 requests spread round-robin over the gateways, against the same burst through
 * one gateway; without --peers the loss shows; a SIGKILLed gateway's bookings expire.
 * Real redis-server, real HTTP on loopback; the killed gateway is a `kvlab gateway` process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { backendSpecs } from '../live/backends.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { resolveCluster, type ResolvedCluster } from '../sim/cluster.js';
import type { Profile } from '../engine/types.js';
import { getText, sleep, testProfile } from './helpers/live.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { HAVE_REDIS, describeRedis } from './helpers/system.js';

const KVLAB = resolve('dist/bin/kvlab.js');
const MODEL = 'm';
const PROFILE: Profile = testProfile({ maxNumSeqs: 16, kvCapacityTokens: 8192 });
const DOCS = 30;
/** SGLang's cache-aware router keeps its prefix tree from its own dispatches: the router whose loss is reported. */
const STRATEGY = 'sglang-router';
const N = 600;
let redis: RedisServerHandle;
let tmp: string;
const ems: EmulatorHandle[] = [];
const gateways: GatewayHandle[] = [];
const children: ChildProcess[] = [];

function cluster(): ResolvedCluster {
  const rc = resolveCluster({ instances: 2 }, {}, 'rtx5090x8-llama3-70b');
  for (const s of rc.spec.instances) {
    s.profile = PROFILE;
    s.engine = { ...PROFILE.engine };
  }
  return rc;
}

/** A document of ~300 tokens, different per run (`salt`) so one run's cache never helps another. */
function doc(salt: string, k: number): string {
  return `Document ${salt}-${k}. ` + Array.from({ length: 60 }, (_, j) => `fact ${salt} ${k} ${j} holds;`).join(' ');
}

/** Sends the burst: request i -> gateway i mod G, at most 60 in flight; returns the status codes. */
async function burst(urls: string[], salt: string, onSent?: (i: number) => void): Promise<number[]> {
  const agent = new Agent({ connections: 64 });
  const codes = new Array<number>(N).fill(0);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < N) {
      const i = next++;
      onSent?.(i);
      const k = Math.floor(((i * 0.6180339887498949) % 1) * DOCS); // every gateway sees every document
      try {
        const r = await request(`${urls[i % urls.length]}/v1/completions`, {
          method: 'POST',
          dispatcher: agent,
          headers: { 'content-type': 'application/json', 'x-request-id': `${salt}-${i}` },
          body: JSON.stringify({ model: MODEL, prompt: `${doc(salt, k)}\nQuestion ${i}: what holds?`, max_tokens: 3 }),
        });
        await r.body.text();
        codes[i] = r.statusCode;
      } catch {
        codes[i] = -1;
      }
    }
  };
  await Promise.all(Array.from({ length: 60 }, worker));
  await agent.close();
  return codes;
}

interface Outcome {
  /** max/mean of requests per instance. */
  maxMean: number;
  /** Σ cached prompt tokens / Σ prompt tokens (observed, from the emulators' usage). */
  hit: number;
  perInstance: Record<string, number>;
}

function outcome(dirs: string[]): Outcome {
  const recs = dirs.flatMap((d) => readFileSync(join(d, 'records.jsonl'), 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { status: string; instance: string; observed: { cached_tokens: number | null; prompt_tokens: number | null } | null }));
  const ok = recs.filter((r) => r.status === 'ok');
  const per: Record<string, number> = {};
  let cached = 0;
  let prompt = 0;
  for (const r of ok) {
    per[r.instance] = (per[r.instance] ?? 0) + 1;
    cached += r.observed?.cached_tokens ?? 0;
    prompt += r.observed?.prompt_tokens ?? 0;
  }
  const counts = Object.values(per);
  return { maxMean: Math.max(...counts) / (counts.reduce((a, b) => a + b, 0) / counts.length), hit: cached / prompt, perInstance: per };
}

async function gatewaysFor(run: string, n: number, peers: boolean): Promise<{ gws: GatewayHandle[]; dirs: string[] }> {
  const gws: GatewayHandle[] = [];
  const dirs: string[] = [];
  for (let k = 0; k < n; k++) {
    const out = join(tmp, `${run}-g${k}`);
    dirs.push(out);
    const gw = await startGateway({
      port: 0,
      backends: backendSpecs(ems.map((e) => e.url)),
      strategy: STRATEGY,
      cluster: cluster(),
      out,
      model: MODEL,
      // separate processes: SGLang's worker order is a per-process hash order (a seeded permutation here)
      seed: k + 1,
      health: { intervalMs: 0 },
      ...(peers ? { peers: { url: `${redis.url}/2`, replicaId: `${run}-g${k}`, heartbeatMs: 100, timeoutMs: 800 } } : {}),
    });
    gws.push(gw);
    gateways.push(gw);
  }
  return { gws, dirs };
}

async function closeAll(gws: GatewayHandle[]): Promise<void> {
  for (const g of gws) {
    await g.close();
    gateways.splice(gateways.indexOf(g), 1);
  }
}

beforeAll(async () => {
  if (!HAVE_REDIS) return;
  redis = await startTestRedis({ noEviction: true });
  tmp = mkdtempSync(join(tmpdir(), 'kvlab-gw-replicas-'));
  for (let i = 0; i < 2; i++) ems.push(await startEmulator({ profile: PROFILE, model: MODEL, coldStart: false }));
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const g of [...gateways]) await g.close().catch(() => undefined);
  for (const e of ems) await e.close();
  await redis?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describeRedis('gateway replicas (--peers)', () => {
  let single: Outcome;

  it('3 gateways with --peers route a 600-request burst as one gateway does; without --peers the prefix hit ratio falls', async () => {
    const one = await gatewaysFor('single', 1, false);
    expect((await burst(one.gws.map((g) => g.url), 'single')).every((c) => c === 200)).toBe(true);
    await closeAll(one.gws);
    single = outcome(one.dirs);

    const rep = await gatewaysFor('peers', 3, true);
    expect((await burst(rep.gws.map((g) => g.url), 'peers')).every((c) => c === 200)).toBe(true);
    // membership and lag are visible
    const st = JSON.parse((await getText(`${rep.gws[0]!.url}/debug/status`)).text) as { replicas: { replica: string; peers: { id: string; alive: boolean; last_seq: number; lag_ms: number }[]; counts: { applied: number; published: number } } };
    expect(st.replicas.replica).toBe('peers-g0');
    expect(st.replicas.peers.filter((p) => p.alive).map((p) => p.id).sort()).toEqual(['peers-g1', 'peers-g2']);
    expect(st.replicas.counts.applied).toBeGreaterThan(N); // the others' dispatches, first tokens, completions
    const metrics = (await getText(`${rep.gws[0]!.url}/metrics`)).text;
    expect(metrics).toMatch(/kvlab_gateway_peers\{state="alive"\} 2/);
    expect(metrics).toMatch(/kvlab_gateway_peer_lag_ms\{peer="peers-g1"\} \d+/);
    // after the burst every replica's engine has nothing booked: completions reached everyone exactly once
    await sleep(300);
    for (const g of rep.gws) expect(g.engine.loads.size).toBe(0);
    await closeAll(rep.gws);
    const shared = outcome(rep.dirs);

    const alone = await gatewaysFor('alone', 3, false);
    expect((await burst(alone.gws.map((g) => g.url), 'alone')).every((c) => c === 200)).toBe(true);
    await closeAll(alone.gws);
    const apart = outcome(alone.dirs);

    const msg = JSON.stringify({ single, shared, apart });
    process.stderr.write(`gateway replicas: ${msg}\n`);
    expect(Math.abs(shared.maxMean / single.maxMean - 1), msg).toBeLessThanOrEqual(0.1);
    expect(shared.hit, msg).toBeGreaterThanOrEqual(0.95 * single.hit);
    expect(apart.hit, msg).toBeLessThan(shared.hit);
    expect(apart.hit, msg).toBeLessThan(0.95 * single.hit);
  });

  it('op-log: entries applied in order and exactly once; a replica restarting under the same id continues its numbering and voids its old bookings', async () => {
    const { Engine } = await import('../engine/engine.js');
    const { createStrategy } = await import('../engine/strategies/index.js');
    const { PeerSync } = await import('../live/gateway/peers.js');
    const { mkReq } = await import('./helpers/sim.js');
    const url = `${redis.url}/4`;
    const mk = () => new Engine(cluster().spec, createStrategy('least-load'), { seed: 1 });
    const ea = mk();
    const eb = mk();
    const a = new PeerSync({ url, engine: ea, now: () => 0, replicaId: 'a', heartbeatMs: 100, timeoutMs: 60_000 });
    const b = new PeerSync({ url, engine: eb, now: () => 0, replicaId: 'b', heartbeatMs: 100, timeoutMs: 60_000 });
    await a.start();
    await b.start();
    const book = (e: InstanceType<typeof Engine>, p: InstanceType<typeof PeerSync>, id: string) => {
      const req = mkReq({ id, blocks: [1, 2, 3], outputTokens: 4 });
      const d = e.decide(req, 0);
      e.onDispatch(req, d, 0);
      p.dispatched(e.dispatchOp(req, d));
    };
    const until = async (cond: () => boolean, what: string) => {
      const t0 = Date.now();
      while (!cond()) {
        if (Date.now() - t0 > 5000) throw new Error(`timed out: ${what}`);
        await sleep(20);
      }
    };
    book(ea, a, 'x1');
    book(ea, a, 'x2');
    await until(() => eb.loads.size === 2, 'b applies a\'s two dispatches');
    a.completed('x1', 4);
    await until(() => eb.loads.size === 1, 'b applies the completion');
    await a.close(); // dies with x2 booked
    const ea2 = mk();
    const a2 = new PeerSync({ url, engine: ea2, now: () => 0, replicaId: 'a', heartbeatMs: 100, timeoutMs: 60_000 });
    await a2.start();
    expect(a2.status().seq).toBeGreaterThan(3); // continued after its earlier life's entries
    await until(() => eb.loads.size === 0, 'the restart voids x2 on b');
    book(ea2, a2, 'y1');
    await until(() => eb.loads.size === 1, 'b applies the restarted replica\'s new dispatch (not skipped as a duplicate)');
    expect(b.status().counts).toMatchObject({ gaps: 0 });
    // b's own entries reached a2 during its catch-up too, and nothing of b was booked there
    expect(a2.status().peers.map((p) => p.id)).toEqual(['b']);
    await a2.close();
    await b.close();
  });

  it('replicas number their own requests under their replica id, so two gateways never send one id to a backend', async () => {
    const { RunIds } = await import('../live/gateway/context.js');
    expect(new RunIds('gw-a').next(undefined).id).toBe('gw-a-0');
    expect(new RunIds().next(undefined).id).toBe('gw-0');
    const two = await gatewaysFor('ids', 2, true);
    const r = await Promise.all(two.gws.map((g) => request(`${g.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, prompt: 'same first request on both', max_tokens: 2 }) })));
    for (const x of r) {
      expect(x.statusCode).toBe(200);
      await x.body.text();
    }
    await closeAll(two.gws);
  });

  it('SIGKILL one gateway mid-burst: the others keep routing and its bookings expire', async () => {
    const profileFile = join(tmp, 'profile.json');
    writeFileSync(profileFile, JSON.stringify(PROFILE));
    const clusterFile = join(tmp, 'cluster.json');
    writeFileSync(clusterFile, JSON.stringify({ profile: profileFile, instances: 2 }));
    const rep = await gatewaysFor('kill', 2, true);
    const child = spawn(process.execPath, [KVLAB, 'gateway', '--backends', ems.map((e) => e.url).join(','), '--port', '0', '--cluster', clusterFile, '--model', MODEL, '--health-ms', '0', '--peers', `${redis.url}/2`, '--replica-id', 'kill-victim', '--peer-heartbeat-ms', '100', '--peer-timeout-ms', '800'], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let err = '';
    child.stderr!.on('data', (d) => (err += String(d)));
    const url = await new Promise<string>((res, rej) => {
      let out = '';
      child.stdout!.on('data', (d) => {
        out += String(d);
        const m = /ready (\S+)/.exec(out);
        if (m) res(m[1]!);
      });
      child.once('exit', () => rej(new Error(`gateway exited early: ${err}`)));
    });
    const survivor = rep.gws[0]!;
    let killedAt = -1;
    const codes = await burst([survivor.url, rep.gws[1]!.url, url], 'kill', (i) => {
      if (i === 200 && killedAt < 0) {
        killedAt = i;
        child.kill('SIGKILL');
      }
    });
    // every request sent to a surviving gateway is answered
    codes.forEach((c, i) => {
      if (i % 3 !== 2) expect(c, `request ${i}`).toBe(200);
    });
    const peerOf = async () => (JSON.parse((await getText(`${survivor.url}/debug/status`)).text) as { replicas: { peers: { id: string; alive: boolean; booked: number; expired: number }[]; counts: { expired: number } } }).replicas;
    // the victim's bookings expire after the silence timeout, and nothing of it stays booked
    const t0 = Date.now();
    for (;;) {
      const v = (await peerOf()).peers.find((p) => p.id === 'kill-victim')!;
      if (!v.alive) {
        expect(v.booked).toBe(0);
        expect(v.expired).toBeGreaterThan(0); // it had requests in flight when it died
        break;
      }
      expect(Date.now() - t0).toBeLessThan(10_000);
      await sleep(100);
    }
    await sleep(300);
    for (const g of rep.gws) expect(g.engine.loads.size).toBe(0);
    // and the survivors still route
    const after = await burst([survivor.url, rep.gws[1]!.url], 'after');
    expect(after.every((c) => c === 200)).toBe(true);
    await closeAll(rep.gws);
  });
});
