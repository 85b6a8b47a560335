/**
 * A live stack on loopback for the gateway integration tests: a real redis-server (KDN store and
 * one LMCache db per instance), emulators with the tiny test profile, a KDN, and the gateway.
 *
 *   const s = await startStack({ instances: 2, out: dir });
 *   ... s.gw.url ...
 *   await s.close();
 */
import { backendSpecs } from '../../live/backends.js';
import { startEmulator, type EmulatorHandle, type EmulatorOptions } from '../../live/emulator.js';
import { startGateway, type GatewayHandle, type GatewayOptions } from '../../live/gateway.js';
import { startKdn, type KdnHandle } from '../../live/kdn.js';
import { resolveCluster, type ResolvedCluster } from '../../sim/cluster.js';
import type { Profile } from '../../engine/types.js';
import { testProfile } from './live.js';
import { startTestRedis, type RedisServerHandle } from './redis.js';

/** The served model name of the test stacks. */
export const MODEL = 'test-llama';

/** A cluster of `n` instances with `profile`, one KDN, 10 Gbit/s links. */
export function testCluster(n: number, profile: Profile = testProfile()): ResolvedCluster {
  const rc = resolveCluster({ instances: n, kdns: [{ id: 'kdn0', compression: 1 }], links: { default: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 } } }, {}, 'rtx5090x8-llama3-70b');
  for (const s of rc.spec.instances) {
    s.profile = profile;
    s.engine = { ...profile.engine };
  }
  return rc;
}

/** A running stack. */
export interface Stack {
  redis: RedisServerHandle;
  ems: EmulatorHandle[];
  kdn: KdnHandle | null;
  gw: GatewayHandle;
  profile: Profile;
  /** starts another gateway on the same backends and KDN. */
  gateway(over?: Partial<GatewayOptions>): Promise<GatewayHandle>;
  close(): Promise<void>;
}

/** Starts redis, emulators, a KDN (unless `kdn: false`) and a gateway. */
export async function startStack(o: { instances?: number; kdn?: boolean; profile?: Profile; emulator?: Partial<EmulatorOptions>; gateway?: Partial<GatewayOptions> } = {}): Promise<Stack> {
  const n = o.instances ?? 2;
  const profile = o.profile ?? testProfile();
  const redis = await startTestRedis();
  const ems: EmulatorHandle[] = [];
  for (let i = 0; i < n; i++) ems.push(await startEmulator({ profile, model: MODEL, modelPath: MODEL, redisUrl: `${redis.url}/${i + 1}`, bytesPerToken: 16, coldStart: false, ...o.emulator }));
  const kdn = o.kdn === false ? null : await startKdn({ port: 0, syntheticKv: true, redisUrl: `${redis.url}/0`, model: MODEL, bytesPerToken: 16, link: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 } });
  const gateways: GatewayHandle[] = [];
  const gateway = async (over: Partial<GatewayOptions> = {}): Promise<GatewayHandle> => {
    const g = await startGateway({
      port: 0,
      backends: backendSpecs(
        ems.map((e) => e.url),
        ems.map((_, i) => `${redis.url}/${i + 1}`),
      ),
      kdnUrl: kdn?.url ?? null,
      strategy: 'kvlab',
      cluster: testCluster(n, profile),
      health: { intervalMs: 200 },
      ...o.gateway,
      ...over,
    });
    gateways.push(g);
    return g;
  };
  const gw = await gateway();
  return {
    redis,
    ems,
    kdn,
    gw,
    profile,
    gateway,
    close: async () => {
      for (const g of gateways) await g.close();
      for (const e of ems) await e.close();
      await kdn?.close();
      await redis.stop();
    },
  };
}
