/**
 * Live cache state from vLLM KV events: the gateway subscribes to each instance's ZMQ PUB,
 * maps vLLM block hashes to engine block ids and feeds engine.onKvEvent (stored, then removed on
 * eviction); sequence gaps are filled from the replay endpoint, or the instance's index is
 * cleared when they cannot be.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { backendSpecs, BlockHashMap, KvEventSubscriber, loadKvEventModules } from '../live/backends.js';
import { fastBlockIds, kvEventHash, vllmBlockHashes } from '../live/block-hash.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { KvEventPublisher, type KvEventBatch } from '../live/kv-events.js';
import { freePort } from '../live/redis-launcher.js';
import { encodePrompt } from '../live/tokenizer.js';
import { resolveCluster } from '../sim/cluster.js';
import { postJson, sleep, testProfile } from './helpers/live.js';
import { synthWords } from '../live/replay.js';

const closers: Array<() => Promise<unknown> | unknown> = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c();
});

describe('KV-event subscriber', () => {
  it('applies batches in order, fills a gap from the replay endpoint, reports what it cannot fill', async () => {
    await loadKvEventModules();
    const replayPort = await freePort();
    const pub = await KvEventPublisher.start({ endpoint: `tcp://127.0.0.1:${await freePort()}`, replayEndpoint: `tcp://127.0.0.1:${replayPort}` });
    closers.push(() => pub.close());
    for (let k = 0; k < 4; k++) pub.publish([{ type: 'BlockRemoved', blockHashes: [BigInt(100 + k)], medium: 'GPU' }]);
    await sleep(50);
    const seen: bigint[] = [];
    let lost = 0;
    const sub = new KvEventSubscriber(0, { endpoint: 'tcp://127.0.0.1:1', replayEndpoint: `tcp://127.0.0.1:${replayPort}` }, (b: KvEventBatch) => seen.push((b.events[0] as { blockHashes: bigint[] }).blockHashes[0]!), (n) => (lost += n));
    // feed seq 0 directly (decoded from a real publish), then seq 3: 1 and 2 come from replay
    const { encodeEventBatch } = await import('../live/kv-events.js');
    const enc = (k: number) => encodeEventBatch({ ts: 0, events: [{ type: 'BlockRemoved', blockHashes: [BigInt(100 + k)], medium: 'GPU' }], dataParallelRank: 0 });
    await sub.onMessage(0n, enc(0));
    await sub.onMessage(3n, enc(3));
    await sub.onMessage(3n, enc(3)); // duplicate dropped
    expect(seen).toEqual([100n, 101n, 102n, 103n]);
    expect(sub).toMatchObject({ gaps: 1, replayed: 2, lost: 0, batches: 4 });
    // without a replay endpoint a gap is reported as lost
    const sub2 = new KvEventSubscriber(1, { endpoint: 'tcp://127.0.0.1:1' }, () => undefined, (n) => (lost += n));
    await sub2.onMessage(5n, enc(0));
    await sub2.onMessage(9n, enc(1));
    expect(lost).toBe(3);
    expect(sub2.lost).toBe(3);
  });

  it('maps vLLM block hashes of routed prompts to engine block ids', async () => {
    await loadKvEventModules();
    const ids = encodePrompt(synthWords('map', 100));
    const engineIds = fastBlockIds(ids, 16);
    const m = new BlockHashMap(16, '0');
    m.add(ids, engineIds);
    const h = vllmBlockHashes(ids.slice(0, 96), 16, '0').map(kvEventHash);
    expect(m.lookup(h)).toEqual(engineIds);
    expect(m.lookup([123n])).toEqual([]);
  });
});

describe('gateway with KV events', () => {
  let em: EmulatorHandle;
  let gw: GatewayHandle;
  it('the index follows stores and evictions reported by the instance', async () => {
    const profile = testProfile({ kvCapacityTokens: 640 });
    const port = await freePort();
    em = await startEmulator({ profile, model: 'm', coldStart: false, kvEvents: { endpoint: `tcp://127.0.0.1:${port}`, topic: 'kv-events' } });
    closers.push(() => em.close());
    const rc = resolveCluster({ instances: 1 }, {}, 'rtx5090x8-llama3-70b');
    rc.spec.instances[0]!.profile = profile;
    rc.spec.instances[0]!.engine = { ...profile.engine };
    gw = await startGateway({ port: 0, backends: backendSpecs([em.url]), strategy: 'least-load', cluster: rc, predictOnRoute: false, kvEvents: [{ endpoint: `tcp://127.0.0.1:${port}`, topic: 'kv-events' }], health: { intervalMs: 0 } });
    closers.push(() => gw.close());
    await sleep(200); // SUB connects
    const promptA = synthWords('kv-a', 200);
    const blocksA = fastBlockIds(encodePrompt(promptA), 16);
    const held = () => {
      const out = new Int32Array(1);
      gw.engine.index.match(blocksA, out);
      return out[0]!;
    };
    expect((await postJson(`${gw.url}/v1/completions`, { prompt: promptA, max_tokens: 2 })).status).toBe(200);
    for (let i = 0; i < 50 && held() < blocksA.length; i++) await sleep(20);
    expect(held()).toBe(blocksA.length); // learned from BlockStored, not from routing
    // fill the 640-token cache with other prompts: A's blocks are evicted
    for (let k = 0; k < 3; k++) expect((await postJson(`${gw.url}/v1/completions`, { prompt: synthWords(`kv-other-${k}`, 300), max_tokens: 2 })).status).toBe(200);
    for (let i = 0; i < 50 && held() > 0; i++) await sleep(20);
    expect(held()).toBe(0);
    const st = (await (await fetch(`${gw.url}/debug/status`)).json()) as { instances: Array<{ kv_events: { batches: number; gaps: number } }> };
    expect(st.instances[0]!.kv_events.batches).toBeGreaterThan(1);
    expect(st.instances[0]!.kv_events.gaps).toBe(0);
  });
});
