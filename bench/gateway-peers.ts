/**
 * Gateway replicas benchmark (issue 10): what `--peers` costs a gateway and how stale a replica's
 * view is. Two in-process emulators (the test profile, model = wall time), a real redis-server,
 * and gateways in this process:
 *  1. one gateway without peers: N non-streaming completions, C in flight; req/s;
 *  2. two gateways without peers, the same N requests alternating between them; req/s;
 *  3. two gateways with --peers, the same N requests alternating between them; req/s, and the
 *     op-log lag every replica saw (ms from an entry reaching Redis to being applied), sampled
 *     from /debug/status every 50 ms during the run.
 *
 * Usage: node dist/bench/gateway-peers.js [--requests N] [--concurrency C]
 */
import { Agent, request } from 'undici';
import { backendSpecs } from '../live/backends.js';
import { startEmulator } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { launchRedis } from '../live/redis-launcher.js';
import type { Profile } from '../engine/types.js';
import { resolveCluster } from '../sim/cluster.js';

const arg = (name: string, d: string): string => {
  const i = process.argv.indexOf(name);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : d;
};
const N = Number(arg('--requests', '2000'));
const C = Number(arg('--concurrency', '32'));

const PROFILE: Profile = {
  name: 'bench-tiny', derived: true, description: 'benchmark profile', source: 'bench/gateway-peers.ts',
  model: { name: 'm', layers: 2, kvHeads: 1, headDim: 8, dtypeBytes: 2, kvBytesPerToken: 64, paramsB: 0.001 },
  hardware: { gpu: 'none', gpus: 1, peakTflops: 1, memBandwidthGBs: 1, memGiB: 1 },
  engine: { maxNumBatchedTokens: 4096, maxNumSeqs: 64, maxModelLen: 8192, kvCapacityTokens: 262144, blockSizeTokens: 16, longPrefillTokenThreshold: 0 },
  step: { fixedMs: 2, prefillSeqMs: 0, decodeSeqMs: 0.05, knots: [0, 8192], values: [0, 100], attnTokens: 1e9, kvReadMsPerToken: 0, apiMs: 0.5, frontendMsPerRequest: 0 },
  kvLoad: { fixedMs: 1, msPerGB: 100, bytesPerToken: 64 },
  coldStartMs: 0,
};

let runNo = 0;
async function run(urls: string[], status: string[] | null): Promise<{ rps: number; lag: number[] }> {
  const tag = `r${runNo++}`;
  const agent = new Agent({ connections: C + 4 });
  const lag: number[] = [];
  let sampling = status !== null;
  const sampler = (async () => {
    while (sampling) {
      for (const u of status ?? []) {
        const r = await request(`${u}/debug/status`);
        const j = (await r.body.json()) as { replicas: { peers: { lag_ms: number }[] } };
        for (const p of j.replicas.peers) lag.push(p.lag_ms);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: C }, async () => {
      while (next < N) {
        const i = next++;
        const r = await request(`${urls[i % urls.length]}/v1/completions`, {
          method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json', 'x-request-id': `${tag}-${i}` }, // unique ids: gateways without peers number alike
          body: JSON.stringify({ model: 'm', prompt: `document ${i % 50} ${'word '.repeat(200)} question ${i}`, max_tokens: 2 }),
        });
        const text = await r.body.text();
        if (r.statusCode !== 200) throw new Error(`HTTP ${r.statusCode}: ${text.slice(0, 300)}`);
      }
    }),
  );
  const wall = performance.now() - t0;
  sampling = false;
  await sampler;
  await agent.close();
  return { rps: (N / wall) * 1000, lag };
}

const q = (xs: number[], p: number): number => (xs.length ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))]! : NaN);

const redis = await launchRedis({ extraArgs: ['--maxmemory-policy', 'noeviction'] });
const ems = [await startEmulator({ profile: PROFILE, model: 'm', coldStart: false }), await startEmulator({ profile: PROFILE, model: 'm', coldStart: false })];
const rc = resolveCluster({ instances: 2 }, {}, 'rtx5090x8-llama3-70b');
for (const s of rc.spec.instances) {
  s.profile = PROFILE;
  s.engine = { ...PROFILE.engine };
}
const gw = (peers: boolean, k: number): Promise<GatewayHandle> =>
  startGateway({ port: 0, backends: backendSpecs(ems.map((e) => e.url)), strategy: 'kvlab', cluster: rc, model: 'm', health: { intervalMs: 0 }, ...(peers ? { peers: { url: `${redis.url}/1`, replicaId: `b${k}` } } : {}) });
try {
  const solo = await gw(false, 0);
  await run([solo.url], null); // warm-up
  const a = await run([solo.url], null);
  await solo.close();
  const n1 = await gw(false, 1);
  const n2 = await gw(false, 2);
  await run([n1.url, n2.url], null);
  const c = await run([n1.url, n2.url], null);
  await n1.close();
  await n2.close();
  const g1 = await gw(true, 1);
  const g2 = await gw(true, 2);
  await run([g1.url, g2.url], null);
  const b = await run([g1.url, g2.url], [g1.url, g2.url]);
  const counts = g1.peers!.status().counts;
  await g1.close();
  await g2.close();
  console.log(`date: ${new Date().toISOString()}; ${N} requests, ${C} in flight`);
  console.log(`one gateway, no peers: ${a.rps.toFixed(0)} req/s`);
  console.log(`two gateways without peers: ${c.rps.toFixed(0)} req/s`);
  console.log(`two gateways with --peers: ${b.rps.toFixed(0)} req/s; op-log lag p50 ${q(b.lag, 0.5)} ms, p99 ${q(b.lag, 0.99)} ms, max ${Math.max(...b.lag)} ms (${b.lag.length} samples); replica b1 applied ${counts.applied} entries, published ${counts.published}, publish errors ${counts.publishErrors}`);
} finally {
  for (const e of ems) await e.close();
  await redis.stop();
}
