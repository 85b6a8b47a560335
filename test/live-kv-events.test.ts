/**
 * vLLM KV events from the emulator over real ZMQ sockets on loopback: 3-frame PUB messages,
 * msgpack EventBatch arrays, vLLM sha256_cbor block hashes, eviction -> BlockRemoved, replay
 * over ROUTER/DEALER with END_SEQ.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { Dealer, Subscriber } from 'zeromq';
import { Unpackr } from 'msgpackr';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { decodeEventBatch, encodeEventBatch, END_SEQ, seqFrame, type KvEventBatch } from '../live/kv-events.js';
import { freePort } from '../live/redis-launcher.js';
import { kvEventHash, vllmBlockHashes } from '../live/block-hash.js';
import { postJson, sleep, testProfile } from './helpers/live.js';

const closers: Array<() => unknown> = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c();
});

describe('event batch encoding', () => {
  it('writes msgspec-style arrays with smallest ints and float64 ts, and decodes back', () => {
    const batch: KvEventBatch = {
      ts: 1700000000.5,
      events: [
        { type: 'BlockStored', blockHashes: [12687895063098490012n, 5n, 2n ** 40n], parentBlockHash: null, tokenIds: [1, 300, 70000], blockSize: 16, loraId: null, medium: 'GPU', loraName: null },
        { type: 'BlockRemoved', blockHashes: [7n], medium: 'GPU' },
        { type: 'AllBlocksCleared' },
      ],
      dataParallelRank: 0,
    };
    const b = encodeEventBatch(batch);
    expect(b[0]).toBe(0x93); // fixarray(3)
    expect(b[1]).toBe(0xcb); // float64 ts
    const hex = b.toString('hex');
    expect(hex).toContain('cfb0147556276afc9c'); // uint64 hash
    expect(hex).toContain('05'); // small hash as fixint
    expect(hex).toContain('cf0000010000000000'); // 2^40: uint64 (msgspec smallest form)
    // generic msgpack decoders see the same structure
    const generic = new Unpackr({ int64AsType: 'bigint', useRecords: false }).unpack(b) as unknown[];
    expect((generic[1] as unknown[][])[0]![0]).toBe('BlockStored');
    expect((generic[1] as unknown[][])[0]).toHaveLength(8);
    expect(decodeEventBatch(b)).toEqual(batch);
    // 0.10/0.11 shape without lora_name
    const old = new Unpackr({ useRecords: false }).unpack(encodeEventBatch(batch, false)) as unknown[][];
    expect((old[1] as unknown[][])[0]).toHaveLength(7);
  });
});

describe('emulator KV events over ZMQ', () => {
  it('publishes BlockStored with vLLM block hashes, BlockRemoved on eviction, and serves replay', async () => {
    const pubPort = await freePort();
    const replayPort = await freePort();
    // small KV (64 blocks of 16) so a second long prompt evicts the first one's blocks
    const em: EmulatorHandle = await startEmulator({
      profile: testProfile({ kvCapacityTokens: 1024, maxModelLen: 1024 }),
      kvEvents: { endpoint: `tcp://127.0.0.1:${pubPort}`, replayEndpoint: `tcp://127.0.0.1:${replayPort}`, topic: 'kv-events' },
    });
    closers.push(() => em.close());
    const sub = new Subscriber({ linger: 0 });
    closers.push(() => sub.close());
    sub.connect(`tcp://127.0.0.1:${pubPort}`);
    sub.subscribe('kv-events');
    const got: Array<{ topic: string; seq: bigint; batch: KvEventBatch }> = [];
    void (async () => {
      try {
        for await (const [topic, seq, payload] of sub) got.push({ topic: topic!.toString(), seq: seq!.readBigUInt64BE(0), batch: decodeEventBatch(payload!) });
      } catch {
        /* closed */
      }
    })();
    await sleep(200); // PUB/SUB slow joiner

    const promptA = 'alpha beta gamma delta '.repeat(150);
    const idsA: number[] = (await postJson(`${em.url}/tokenize`, { prompt: promptA })).json.tokens;
    const r1 = await postJson(`${em.url}/v1/completions`, { prompt: promptA, max_tokens: 2 });
    expect(r1.status).toBe(200);
    const deadline = Date.now() + 3000;
    while (got.length === 0 && Date.now() < deadline) await sleep(10);
    expect(got.length).toBeGreaterThan(0);
    expect(got[0]!.topic).toBe('kv-events');
    expect(got[0]!.seq).toBe(0n);
    expect(got.map((g) => g.seq)).toEqual(got.map((_, i) => BigInt(i)));
    const stored = got.flatMap((g) => g.batch.events).filter((e) => e.type === 'BlockStored');
    const hashes = stored.flatMap((e) => (e.type === 'BlockStored' ? e.blockHashes : []));
    const fullBlocks = Math.floor(idsA.length / 16);
    const expected = vllmBlockHashes(idsA, 16).map(kvEventHash);
    expect(hashes).toEqual(expected);
    expect(hashes).toHaveLength(fullBlocks);
    const first = stored[0]!;
    if (first.type !== 'BlockStored') throw new Error('unreachable');
    expect(first.parentBlockHash).toBeNull();
    expect(first.blockSize).toBe(16);
    expect(first.medium).toBe('GPU');
    expect(first.tokenIds).toEqual(idsA.slice(0, first.blockHashes.length * 16));
    expect(got.every((g) => g.batch.dataParallelRank === 0 && g.batch.ts > 1e9)).toBe(true);

    // a different long prompt needs the memory: A's unreferenced blocks are evicted
    const promptB = 'one two three four '.repeat(150);
    await postJson(`${em.url}/v1/completions`, { prompt: promptB, max_tokens: 2 });
    const deadline2 = Date.now() + 3000;
    const removed = (): bigint[] => got.flatMap((g) => g.batch.events).flatMap((e) => (e.type === 'BlockRemoved' ? e.blockHashes : []));
    while (removed().length === 0 && Date.now() < deadline2) await sleep(10);
    expect(removed().length).toBeGreaterThan(0);
    expect(removed().every((h) => expected.includes(h))).toBe(true);

    // replay from seq 1 over a DEALER: [empty, seq8, payload]..., then [empty, END_SEQ, empty]
    const dealer = new Dealer({ linger: 0, receiveTimeout: 3000 });
    closers.push(() => dealer.close());
    dealer.connect(`tcp://127.0.0.1:${replayPort}`);
    await dealer.send([Buffer.alloc(0), seqFrame(1)]);
    const replayed: bigint[] = [];
    for (;;) {
      const frames = await dealer.receive();
      expect(frames).toHaveLength(3);
      expect(frames[0]!.length).toBe(0);
      if (frames[1]!.equals(END_SEQ)) {
        expect(frames[2]!.length).toBe(0);
        break;
      }
      replayed.push(frames[1]!.readBigUInt64BE(0));
      expect(decodeEventBatch(frames[2]!).events.length).toBeGreaterThan(0);
    }
    const published = got.map((g) => g.seq).filter((s) => s >= 1n);
    expect(replayed).toEqual(published);
  });
});
