/**
 * vLLM KV-cache events over ZeroMQ + msgpack (reference/live-protocols.md §3, vLLM 0.10–0.13
 * `vllm/distributed/kv_events.py`), publisher side for the emulator and decoder for
 * subscribers.
 *
 * Wire format:
 * - PUB message = 3 frames `[topic, seq (uint64 big-endian, from 0, +1 per batch), payload]`.
 * - payload = msgpack array `[ts (float64, unix seconds), events, data_parallel_rank]`; events
 *   are tagged arrays: `["BlockStored", hashes, parent|nil, token_ids, block_size, lora_id|nil,
 *   medium|nil, lora_name|nil]`, `["BlockRemoved", hashes, medium|nil]`, `["AllBlocksCleared"]`.
 *   Block hashes are unsigned ints (vLLM's `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1` default),
 *   written in the smallest msgpack int form, as msgspec does.
 * - Replay: a ROUTER socket; a request is `[identity, "", start_seq(8B)]`; the reply is every
 *   buffered batch with seq >= start_seq as `[identity, "", seq(8B), payload]`, then
 *   `[identity, "", 0xffffffffffffffff, ""]` (END_SEQ).
 */
import { Unpackr } from 'msgpackr';
import { Publisher, Router } from 'zeromq';

/** A BlockStored event (vLLM 0.12/0.13 field set, with `lora_name`). */
export interface BlockStoredEvent {
  type: 'BlockStored';
  /** block hashes, first to last (uint64). */
  blockHashes: bigint[];
  /** hash of the block before the first one, or null at the prompt start. */
  parentBlockHash: bigint | null;
  /** token ids of all the blocks, concatenated. */
  tokenIds: number[];
  blockSize: number;
  loraId: number | null;
  medium: string | null;
  loraName?: string | null;
}
/** A BlockRemoved event. */
export interface BlockRemovedEvent {
  type: 'BlockRemoved';
  blockHashes: bigint[];
  medium: string | null;
}
/** An AllBlocksCleared event. */
export interface AllBlocksClearedEvent {
  type: 'AllBlocksCleared';
}
/** One vLLM KV-cache event. */
export type KvCacheEvent = BlockStoredEvent | BlockRemovedEvent | AllBlocksClearedEvent;

/** One decoded event batch. */
export interface KvEventBatch {
  /** unix seconds. */
  ts: number;
  events: KvCacheEvent[];
  dataParallelRank: number | null;
}

// ------------------------------------------------------------------------------------------
// Minimal msgpack writer with msgspec's integer choices (msgpackr writes ints >= 2^32 given
// as JS numbers as float64, and bigints as int64; msgspec writes the smallest uint form).

class MsgpackWriter {
  private buf = Buffer.allocUnsafe(256);
  private n = 0;
  private ensure(k: number): void {
    if (this.n + k <= this.buf.length) return;
    const nb = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.n + k));
    this.buf.copy(nb, 0, 0, this.n);
    this.buf = nb;
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.n++] = v;
  }
  nil(): void {
    this.u8(0xc0);
  }
  uint(v: number | bigint): void {
    const b = BigInt(v);
    if (b < 0n) throw new Error(`msgpack: negative int ${b}`);
    if (b < 128n) this.u8(Number(b));
    else if (b < 0x100n) {
      this.u8(0xcc);
      this.u8(Number(b));
    } else if (b < 0x10000n) {
      this.ensure(3);
      this.buf[this.n++] = 0xcd;
      this.buf.writeUInt16BE(Number(b), this.n);
      this.n += 2;
    } else if (b < 0x100000000n) {
      this.ensure(5);
      this.buf[this.n++] = 0xce;
      this.buf.writeUInt32BE(Number(b), this.n);
      this.n += 4;
    } else {
      this.ensure(9);
      this.buf[this.n++] = 0xcf;
      this.buf.writeBigUInt64BE(b, this.n);
      this.n += 8;
    }
  }
  f64(v: number): void {
    this.ensure(9);
    this.buf[this.n++] = 0xcb;
    this.buf.writeDoubleBE(v, this.n);
    this.n += 8;
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    if (b.length < 32) this.u8(0xa0 | b.length);
    else if (b.length < 0x100) {
      this.u8(0xd9);
      this.u8(b.length);
    } else {
      this.ensure(3);
      this.buf[this.n++] = 0xda;
      this.buf.writeUInt16BE(b.length, this.n);
      this.n += 2;
    }
    this.ensure(b.length);
    b.copy(this.buf, this.n);
    this.n += b.length;
  }
  arr(len: number): void {
    if (len < 16) this.u8(0x90 | len);
    else if (len < 0x10000) {
      this.ensure(3);
      this.buf[this.n++] = 0xdc;
      this.buf.writeUInt16BE(len, this.n);
      this.n += 2;
    } else {
      this.ensure(5);
      this.buf[this.n++] = 0xdd;
      this.buf.writeUInt32BE(len, this.n);
      this.n += 4;
    }
  }
  strOrNil(s: string | null | undefined): void {
    if (s === null || s === undefined) this.nil();
    else this.str(s);
  }
  uintOrNil(v: number | bigint | null | undefined): void {
    if (v === null || v === undefined) this.nil();
    else this.uint(v);
  }
  done(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.n));
  }
}

/**
 * Encodes an EventBatch payload exactly as vLLM 0.12/0.13 (msgspec array_like, tagged):
 * `[ts, [events…], data_parallel_rank]`. `includeLoraName=false` gives the 0.10/0.11 shape
 * (BlockStored ends at `medium`).
 */
export function encodeEventBatch(batch: KvEventBatch, includeLoraName = true): Buffer {
  const w = new MsgpackWriter();
  w.arr(batch.dataParallelRank === null ? 2 : 3);
  w.f64(batch.ts);
  w.arr(batch.events.length);
  for (const e of batch.events) {
    if (e.type === 'BlockStored') {
      w.arr(includeLoraName ? 8 : 7);
      w.str('BlockStored');
      w.arr(e.blockHashes.length);
      for (const h of e.blockHashes) w.uint(h);
      w.uintOrNil(e.parentBlockHash);
      w.arr(e.tokenIds.length);
      for (const t of e.tokenIds) w.uint(t);
      w.uint(e.blockSize);
      w.uintOrNil(e.loraId);
      w.strOrNil(e.medium);
      if (includeLoraName) w.strOrNil(e.loraName ?? null);
    } else if (e.type === 'BlockRemoved') {
      w.arr(3);
      w.str('BlockRemoved');
      w.arr(e.blockHashes.length);
      for (const h of e.blockHashes) w.uint(h);
      w.strOrNil(e.medium);
    } else {
      w.arr(1);
      w.str('AllBlocksCleared');
    }
  }
  if (batch.dataParallelRank !== null) w.uint(batch.dataParallelRank);
  return w.done();
}

const unpackr = new Unpackr({ int64AsType: 'bigint', useRecords: false, mapsAsObjects: true });

const toHash = (x: unknown): bigint => {
  if (typeof x === 'bigint' || typeof x === 'number') return BigInt(x);
  if (x instanceof Uint8Array) return Buffer.from(x).readBigUInt64BE(x.length - 8);
  throw new Error(`KV event: bad block hash ${String(x)}`);
};

/**
 * Decodes an EventBatch payload (array form). Tolerates missing trailing fields (msgspec
 * `omit_defaults`) and byte-string hashes (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`, reduced to
 * their last 8 bytes). Throws on a malformed payload.
 */
export function decodeEventBatch(payload: Uint8Array): KvEventBatch {
  const v = unpackr.unpack(payload) as unknown;
  if (!Array.isArray(v) || v.length < 2 || !Array.isArray(v[1])) throw new Error('KV event batch: expected [ts, events, dp_rank]');
  const events: KvCacheEvent[] = (v[1] as unknown[]).map((raw) => {
    if (!Array.isArray(raw) || typeof raw[0] !== 'string') throw new Error('KV event: expected a tagged array');
    const [tag, ...f] = raw as [string, ...unknown[]];
    if (tag === 'BlockStored') {
      return {
        type: 'BlockStored',
        blockHashes: ((f[0] as unknown[]) ?? []).map(toHash),
        parentBlockHash: f[1] === null || f[1] === undefined ? null : toHash(f[1]),
        tokenIds: ((f[2] as unknown[]) ?? []).map((t) => Number(t)),
        blockSize: Number(f[3] ?? 0),
        loraId: f[4] === null || f[4] === undefined ? null : Number(f[4]),
        medium: (f[5] as string | null | undefined) ?? null,
        loraName: (f[6] as string | null | undefined) ?? null,
      };
    }
    if (tag === 'BlockRemoved') {
      return { type: 'BlockRemoved', blockHashes: ((f[0] as unknown[]) ?? []).map(toHash), medium: (f[1] as string | null | undefined) ?? null };
    }
    if (tag === 'AllBlocksCleared') return { type: 'AllBlocksCleared' };
    throw new Error(`KV event: unknown tag ${tag}`);
  });
  return { ts: Number(v[0]), events, dataParallelRank: v.length > 2 && v[2] !== null ? Number(v[2]) : null };
}

/** Sequence number frame: 8-byte big-endian unsigned. */
export function seqFrame(seq: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(seq));
  return b;
}

/** The replay end marker `(-1).to_bytes(8, "big", signed=True)`. */
export const END_SEQ = Buffer.alloc(8, 0xff);

/** Options of {@link KvEventPublisher}. */
export interface KvEventPublisherOptions {
  /** PUB endpoint, e.g. `tcp://127.0.0.1:5557` (bound, so subscribers connect). */
  endpoint: string;
  /** ROUTER replay endpoint (bound), or undefined for no replay. */
  replayEndpoint?: string;
  /** topic frame (vLLM `topic`, default ""). */
  topic?: string;
  /** batches kept for replay (vLLM `buffer_steps`, default 10,000). */
  bufferSteps?: number;
  /** data_parallel_rank written in every batch (default 0). */
  dataParallelRank?: number;
  /** write `lora_name` in BlockStored (0.12/0.13 shape; default true). */
  includeLoraName?: boolean;
}

/**
 * Publishes vLLM-format KV event batches on a ZMQ PUB socket and serves replay requests on a
 * ROUTER socket. Both endpoints are bound (subscribers connect, as to a vLLM started with a
 * `tcp://*:PORT` endpoint).
 */
export class KvEventPublisher {
  private seq = 0n;
  private readonly buffer: Array<{ seq: bigint; payload: Buffer }> = [];
  private sendChain: Promise<void> = Promise.resolve();
  private closed = false;
  private readonly topic: Buffer;
  private readonly bufferSteps: number;

  private constructor(
    private readonly pub: Publisher,
    private readonly router: Router | undefined,
    private readonly opts: KvEventPublisherOptions,
  ) {
    this.topic = Buffer.from(opts.topic ?? '', 'utf8');
    this.bufferSteps = opts.bufferSteps ?? 10_000;
    if (router) void this.serveReplay(router);
  }

  /** Binds the sockets. Throws when an endpoint cannot be bound (names it). */
  static async start(opts: KvEventPublisherOptions): Promise<KvEventPublisher> {
    const pub = new Publisher({ linger: 0, sendHighWaterMark: 100_000 });
    try {
      await pub.bind(opts.endpoint);
    } catch (e) {
      pub.close();
      throw new Error(`kv-events: cannot bind PUB endpoint ${opts.endpoint}: ${(e as Error).message}`);
    }
    let router: Router | undefined;
    if (opts.replayEndpoint) {
      router = new Router({ linger: 0 });
      try {
        await router.bind(opts.replayEndpoint);
      } catch (e) {
        router.close();
        pub.close();
        throw new Error(`kv-events: cannot bind replay endpoint ${opts.replayEndpoint}: ${(e as Error).message}`);
      }
    }
    return new KvEventPublisher(pub, router, opts);
  }

  /** The bound PUB endpoint (with the real port when the option used port 0). */
  get endpoint(): string {
    return this.pub.lastEndpoint ?? this.opts.endpoint;
  }

  /** The bound replay endpoint, or undefined. */
  get replayEndpoint(): string | undefined {
    return this.router ? (this.router.lastEndpoint ?? this.opts.replayEndpoint) : undefined;
  }

  /** Next sequence number to be used (= batches published so far). */
  get nextSeq(): bigint {
    return this.seq;
  }

  /** Publishes one batch (an engine step's events). No-op for an empty list or after close. */
  publish(events: KvCacheEvent[], tsSeconds = Date.now() / 1000): void {
    if (this.closed || events.length === 0) return;
    const payload = encodeEventBatch({ ts: tsSeconds, events, dataParallelRank: this.opts.dataParallelRank ?? 0 }, this.opts.includeLoraName ?? true);
    const seq = this.seq++;
    this.buffer.push({ seq, payload });
    if (this.buffer.length > this.bufferSteps) this.buffer.shift();
    const frames = [this.topic, seqFrame(seq), payload];
    // zeromq sockets accept one pending send at a time: serialise
    this.sendChain = this.sendChain.then(() => (this.closed ? undefined : this.pub.send(frames))).catch(() => undefined);
  }

  private async serveReplay(router: Router): Promise<void> {
    try {
      for await (const frames of router) {
        if (frames.length !== 3 || frames[2]!.length !== 8) continue; // vLLM ignores malformed requests
        const [identity] = frames as [Buffer, Buffer, Buffer];
        const start = frames[2]!.readBigUInt64BE(0);
        for (const b of this.buffer) {
          if (b.seq >= start) await router.send([identity, Buffer.alloc(0), seqFrame(b.seq), b.payload]);
        }
        await router.send([identity, Buffer.alloc(0), END_SEQ, Buffer.alloc(0)]);
      }
    } catch {
      // socket closed
    }
  }

  /** Flushes pending sends and closes both sockets. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.sendChain;
    this.closed = true;
    this.pub.close();
    this.router?.close();
  }
}
