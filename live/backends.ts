/**
 * Backends of the live gateway: one vLLM-compatible OpenAI server per engine instance (real
 * vLLM 0.13 or the kvlab emulator), reached through an undici `Pool` with keep-alive.
 *
 * - {@link Backend}: the pool, the instance's LMCache Redis target (where the KDN injects KV
 *   for it), health state.
 * - {@link SseSplitter} / {@link classifyChunk}: split a streamed body into SSE events and find
 *   what the gateway observes: the first non-empty chunk (observed TTFT, vLLM's own definition
 *   of a token being visible), the usage chunk (`prompt_tokens_details.cached_tokens`), in-band
 *   errors, and `[DONE]`.
 * - {@link HealthMonitor}: polls `GET /health` of every backend; a backend that fails
 *   `failuresToDown` polls in a row (or a request that cannot connect) is reported down, and up
 *   again after one good poll. The gateway turns these into `engine.onInstanceDown/Up`.
 */
import { Pool, type Dispatcher } from 'undici';

/** Where the KDN must write KV chunks so that this backend's LMCache finds them. */
export interface RedisTarget {
  host: string;
  port: number;
  db: number;
  password?: string;
}

/** One backend instance. */
export interface BackendSpec {
  /** instance id used in records and metrics (default i0, i1, ...). */
  id: string;
  /** base URL, e.g. `http://127.0.0.1:8000` (no trailing slash). */
  url: string;
  /** the instance's LMCache Redis (remote_url); null = no KV injection possible. */
  lmcacheRedis: RedisTarget | null;
}

/**
 * Parses a `redis://[:password@]host:port[/db]` URL.
 * @throws Error naming `what` for anything else.
 */
export function parseRedisUrl(url: string, what = 'redis URL'): RedisTarget {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`${what}: not a URL: "${url}" (expected redis://host:port[/db])`);
  }
  if (u.protocol !== 'redis:') throw new Error(`${what}: expected redis://host:port[/db], got "${url}"`);
  const port = u.port ? Number(u.port) : 6379;
  const dbPart = u.pathname.replace(/^\//, '');
  const db = dbPart === '' ? 0 : Number(dbPart);
  if (!Number.isInteger(db) || db < 0) throw new Error(`${what}: bad database number in "${url}"`);
  return { host: u.hostname, port, db, ...(u.password ? { password: decodeURIComponent(u.password) } : {}) };
}

/**
 * Builds backend specs from URL lists (`--backends`, `--lmcache-redis`).
 * @param urls backend base URLs (http/https)
 * @param redisUrls LMCache Redis URL per backend (same order), or empty for none
 * @param ids optional instance ids (default i0..)
 * @throws Error naming the bad entry.
 */
export function backendSpecs(urls: string[], redisUrls: string[] = [], ids?: string[]): BackendSpec[] {
  if (urls.length === 0) throw new Error('--backends: at least one backend URL is needed');
  if (redisUrls.length && redisUrls.length !== urls.length) throw new Error(`--lmcache-redis: ${redisUrls.length} URLs for ${urls.length} backends (give one per backend, same order)`);
  if (ids && ids.length !== urls.length) throw new Error(`instance ids: ${ids.length} ids for ${urls.length} backends`);
  return urls.map((raw, i) => {
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      throw new Error(`--backends: entry ${i + 1} is not a URL: "${raw}"`);
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`--backends: entry ${i + 1} must be http(s)://host:port, got "${raw}"`);
    return {
      id: ids?.[i] ?? `i${i}`,
      url: `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}`,
      lmcacheRedis: redisUrls.length ? parseRedisUrl(redisUrls[i]!, `--lmcache-redis entry ${i + 1}`) : null,
    };
  });
}

/** Options of a {@link Backend} pool. */
export interface BackendOptions {
  /** max TCP connections per backend (default 128). */
  connections?: number;
  /** ms to wait for response headers (default 600,000: long prefills queue). */
  headersTimeoutMs?: number;
  /** ms allowed between body chunks (default 600,000). */
  bodyTimeoutMs?: number;
}

/** A backend instance: pool + health. */
export class Backend {
  readonly pool: Pool;
  /** false once reported down (by a poll or a failed connection). */
  up = true;
  /** why it went down, while down. */
  downReason: string | null = null;
  /** requests currently in flight through the gateway. */
  inflight = 0;
  /** requests sent (attempts). */
  sent = 0;
  /** attempts that failed before the first byte. */
  failures = 0;

  constructor(
    readonly spec: BackendSpec,
    readonly index: number,
    opts: BackendOptions = {},
  ) {
    this.pool = new Pool(spec.url, {
      connections: opts.connections ?? 128,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      headersTimeout: opts.headersTimeoutMs ?? 600_000,
      bodyTimeout: opts.bodyTimeoutMs ?? 600_000,
      connectTimeout: 2_000,
    });
  }

  /** Base URL. */
  get url(): string {
    return this.spec.url;
  }

  /**
   * POSTs a JSON body. Resolves at the response headers (first byte) with undici's response;
   * the caller must consume or destroy `body`.
   * @throws undici errors (ECONNREFUSED, socket closed, timeouts) before the headers.
   */
  post(path: string, body: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
    this.sent++;
    return this.pool.request({ path, method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body, signal });
  }

  /** GETs a path and returns status and text (for /health, /v1/models). */
  async get(path: string, timeoutMs = 2_000): Promise<{ status: number; text: string }> {
    const res = await this.pool.request({ path, method: 'GET', headersTimeout: timeoutMs, bodyTimeout: timeoutMs, signal: AbortSignal.timeout(timeoutMs) });
    return { status: res.statusCode, text: await res.body.text() };
  }

  /** Closes the pool (in-flight requests are destroyed). */
  async close(): Promise<void> {
    await this.pool.destroy().catch(() => undefined);
  }
}

/** True for errors that mean "could not reach the backend at all" (the instance is gone). */
export function isConnectError(e: unknown): boolean {
  const err = e as { code?: string; cause?: { code?: string } };
  const code = err?.code ?? err?.cause?.code;
  return code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EHOSTUNREACH' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_SOCKET' || code === 'EPIPE';
}

/** One SSE event as received: `raw` = its exact bytes incl. the blank-line terminator. */
export interface SseEvent {
  raw: string;
  /** the joined `data:` lines ('' when none). */
  data: string;
  /** the `event:` field, if any (vLLM sends none). */
  event?: string;
}

/**
 * Incremental SSE framer: feed text chunks, get complete events (terminated by a blank line,
 * `\n\n` or `\r\n\r\n`). Keeps the raw text so events can be forwarded byte for byte.
 */
export class SseSplitter {
  private buf = '';

  /** Adds a chunk; returns the events it completed (possibly none). */
  push(chunk: string): SseEvent[] {
    this.buf += chunk;
    const out: SseEvent[] = [];
    for (;;) {
      let end = this.buf.indexOf('\n\n');
      let sep = 2;
      const crlf = this.buf.indexOf('\r\n\r\n');
      if (crlf >= 0 && (end < 0 || crlf < end)) {
        end = crlf;
        sep = 4;
      }
      if (end < 0) break;
      const raw = this.buf.slice(0, end + sep);
      this.buf = this.buf.slice(end + sep);
      out.push(parseEvent(raw));
    }
    return out;
  }

  /** Text received after the last complete event. */
  get rest(): string {
    return this.buf;
  }
}

function parseEvent(raw: string): SseEvent {
  // fast path: one `data: ...` line (what vLLM sends)
  if (raw.startsWith('data: ') && raw.indexOf('\n') === raw.length - 2) return { raw, data: raw.slice(6, raw.length - 2) };
  let data = '';
  let event: string | undefined;
  let first = true;
  for (const line of raw.split(/\r?\n/)) {
    if (line === '' || line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let v = i < 0 ? '' : line.slice(i + 1);
    if (v.startsWith(' ')) v = v.slice(1);
    if (field === 'data') {
      data += (first ? '' : '\n') + v;
      first = false;
    } else if (field === 'event') event = v;
  }
  return event === undefined ? { raw, data } : { raw, data, event };
}

/** vLLM usage object as streamed (`prompt_tokens_details` optional). */
export interface StreamUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details?: { cached_tokens?: number | null } | null;
}

/** What one streamed chunk tells the gateway. */
export interface ChunkInfo {
  kind: 'done' | 'error' | 'usage' | 'chunk' | 'other';
  /** chunk: it carries visible output (non-empty text / delta.content / tool call). */
  nonEmpty: boolean;
  /** parsed JSON (undefined for `[DONE]` and unparsable data). */
  json?: Record<string, unknown>;
  usage?: StreamUsage;
  /** error: the in-band error message. */
  error?: string;
}

/**
 * Classifies the `data` of one SSE event from a vLLM-compatible backend.
 * `parse = false` skips JSON parsing for plain content chunks once the caller no longer needs
 * them (cheap substring checks still find usage-only chunks and errors).
 */
export function classifyChunk(data: string, parse = true): ChunkInfo {
  if (data === '[DONE]') return { kind: 'done', nonEmpty: false };
  const maybeUsage = data.includes('"choices":[]') || data.includes('"choices": []');
  const maybeError = data.startsWith('{"error"') || data.startsWith('{"object":"error"');
  if (!parse && !maybeUsage && !maybeError) return { kind: 'chunk', nonEmpty: true };
  let j: Record<string, unknown>;
  try {
    j = JSON.parse(data) as Record<string, unknown>;
  } catch {
    return { kind: 'other', nonEmpty: false };
  }
  if (j.error !== undefined || j.object === 'error') {
    const e = j.error as { message?: string } | string | undefined;
    return { kind: 'error', nonEmpty: false, json: j, error: typeof e === 'string' ? e : (e?.message ?? String(j.message ?? 'backend error')) };
  }
  const choices = j.choices as Array<Record<string, unknown>> | undefined;
  const usage = j.usage as StreamUsage | null | undefined;
  if (Array.isArray(choices) && choices.length === 0) return usage ? { kind: 'usage', nonEmpty: false, json: j, usage } : { kind: 'other', nonEmpty: false, json: j };
  let nonEmpty = false;
  if (Array.isArray(choices)) {
    for (const c of choices) {
      if (typeof c.text === 'string' && c.text.length > 0) nonEmpty = true;
      const d = c.delta as Record<string, unknown> | undefined;
      if (d && ((typeof d.content === 'string' && d.content.length > 0) || (Array.isArray(d.tool_calls) && d.tool_calls.length > 0) || (typeof d.reasoning_content === 'string' && d.reasoning_content.length > 0))) nonEmpty = true;
    }
  }
  return usage ? { kind: 'chunk', nonEmpty, json: j, usage } : { kind: 'chunk', nonEmpty, json: j };
}

/** Options of a {@link HealthMonitor}. */
export interface HealthOptions {
  /** poll period, ms (default 1,000; 0 = no polling). */
  intervalMs?: number;
  /** failed polls in a row before a backend is reported down (default 2). */
  failuresToDown?: number;
  /** per-poll timeout, ms (default 1,000). */
  timeoutMs?: number;
}

/** Polls `/health` of every backend and reports transitions. */
export class HealthMonitor {
  private timer: NodeJS.Timeout | undefined;
  private readonly fails: number[];
  private polling = false;
  private stopped = false;

  constructor(
    readonly backends: Backend[],
    private readonly onDown: (b: Backend, reason: string) => void,
    private readonly onUp: (b: Backend) => void,
    private readonly opts: HealthOptions = {},
  ) {
    this.fails = backends.map(() => 0);
  }

  /** Starts polling (no-op when intervalMs is 0). */
  start(): void {
    const every = this.opts.intervalMs ?? 1000;
    if (every <= 0 || this.timer) return;
    this.timer = setInterval(() => void this.pollOnce(), every);
    this.timer.unref();
  }

  /** Reports `b` down now (e.g. a request could not connect). No-op when already down. */
  markDown(b: Backend, reason: string): void {
    if (!b.up || this.stopped) return;
    b.up = false;
    b.downReason = reason;
    this.fails[b.index] = this.opts.failuresToDown ?? 2;
    this.onDown(b, reason);
  }

  /** One round of polls (all backends in parallel). */
  async pollOnce(): Promise<void> {
    if (this.polling || this.stopped) return;
    this.polling = true;
    try {
      await Promise.all(
        this.backends.map(async (b) => {
          let ok = false;
          let why = '';
          try {
            const r = await b.get('/health', this.opts.timeoutMs ?? 1000);
            ok = r.status === 200;
            why = `GET /health answered ${r.status}`;
          } catch (e) {
            why = `GET /health failed: ${(e as Error).message}`;
          }
          if (this.stopped) return;
          if (ok) {
            this.fails[b.index] = 0;
            if (!b.up) {
              b.up = true;
              b.downReason = null;
              this.onUp(b);
            }
          } else if (b.up && ++this.fails[b.index]! >= (this.opts.failuresToDown ?? 2)) {
            this.markDown(b, why);
          }
        }),
      );
    } finally {
      this.polling = false;
    }
  }

  /** Stops polling. */
  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

// ------------------------------------------------------------------------------------------
// vLLM KV events (ZMQ SUB) → engine

/** Where an instance publishes its KV events (vLLM `--kv-events-config`). */
export interface KvEventSource {
  /** PUB endpoint to connect to, e.g. `tcp://10.0.0.11:5557`. */
  endpoint: string;
  /** ROUTER replay endpoint, e.g. `tcp://10.0.0.11:5558` (used to fill sequence gaps). */
  replayEndpoint?: string;
  /** topic prefix (vLLM `topic`, default ""). */
  topic?: string;
}

/**
 * Subscribes to one instance's vLLM KV events (3-frame ZMQ messages: topic, 8-byte big-endian
 * sequence, msgpack batch; reference/live-protocols.md §3) and hands every batch to `onBatch` in
 * sequence order. A jump in the sequence is a gap (messages lost, e.g. PUB high-water mark or
 * a reconnect): the missing batches are asked from the replay endpoint (DEALER `[empty, seq]` →
 * `[empty, seq, payload]`… `[empty, END_SEQ, empty]`); without one, or when replay does not
 * cover them, `onGap` is told how many were lost (the gateway then clears that instance's
 * index, as vLLM's own consumers do). Duplicates (seq ≤ last) are dropped.
 */
export class KvEventSubscriber {
  lastSeq: bigint | null = null;
  batches = 0;
  gaps = 0;
  lost = 0;
  replayed = 0;
  private sub: import('zeromq').Subscriber | null = null;
  private chain: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    readonly index: number,
    readonly source: KvEventSource,
    private readonly onBatch: (batch: import('./kv-events.js').KvEventBatch, seq: bigint) => void,
    private readonly onGap: (lost: number) => void = () => undefined,
  ) {}

  /** Connects and starts receiving (in the background). */
  async start(): Promise<void> {
    const { Subscriber } = await import('zeromq');
    const sub = new Subscriber({ linger: 0 });
    sub.connect(this.source.endpoint);
    sub.subscribe(this.source.topic ?? '');
    this.sub = sub;
    void (async () => {
      try {
        for await (const frames of sub) {
          if (frames.length < 3 || frames[1]!.length !== 8) continue;
          await this.onMessage(frames[1]!.readBigUInt64BE(0), frames[2]!);
        }
      } catch {
        // socket closed
      }
    })();
  }

  /** Handles one message (exposed for tests); batches are applied in order. */
  onMessage(seq: bigint, payload: Uint8Array): Promise<void> {
    this.chain = this.chain.then(async () => {
      if (this.closed) return;
      if (this.lastSeq !== null && seq <= this.lastSeq) return;
      if (this.lastSeq !== null && seq > this.lastSeq + 1n) {
        this.gaps++;
        const from = this.lastSeq + 1n;
        const got = this.source.replayEndpoint ? await this.replay(from, seq) : 0n;
        const lost = Number(seq - from - got);
        if (lost > 0) {
          this.lost += lost;
          this.onGap(lost);
        }
      }
      this.apply(seq, payload);
    });
    return this.chain;
  }

  private apply(seq: bigint, payload: Uint8Array): void {
    let batch;
    try {
      batch = decodeEventBatchLazy(payload);
    } catch {
      return; // malformed batch: skipped (counted as neither)
    }
    this.lastSeq = seq;
    this.batches++;
    this.onBatch(batch, seq);
  }

  /** Asks the replay endpoint for [from, until); returns how many batches it applied. */
  private async replay(from: bigint, until: bigint): Promise<bigint> {
    const { Dealer } = await import('zeromq');
    const d = new Dealer({ linger: 0, receiveTimeout: 2000 });
    let n = 0n;
    try {
      d.connect(this.source.replayEndpoint!);
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(from);
      await d.send([Buffer.alloc(0), b]);
      for (;;) {
        const frames = await d.receive();
        if (frames.length < 3 || frames[1]!.length !== 8) continue;
        if (frames[1]!.equals(Buffer.alloc(8, 0xff))) break;
        const s = frames[1]!.readBigUInt64BE(0);
        if (s < from || s >= until) continue;
        if (this.lastSeq !== null && s <= this.lastSeq) continue;
        this.apply(s, frames[2]!);
        this.replayed++;
        n++;
      }
    } catch {
      // timeout or socket error: whatever arrived counts
    } finally {
      d.close();
    }
    return n;
  }

  /** Stops receiving. */
  close(): void {
    this.closed = true;
    this.sub?.close();
  }
}

type KvModules = {
  decode: (p: Uint8Array) => import('./kv-events.js').KvEventBatch;
  vllmBlockHashes: (tokens: readonly number[], blockSize: number, seed?: string) => Buffer[];
  kvEventHash: (d: Uint8Array) => bigint;
};
let kvModules: KvModules | null = null;
function kv(): KvModules {
  if (!kvModules) throw new Error('KV event modules not loaded: call loadKvEventModules() first');
  return kvModules;
}
function decodeEventBatchLazy(p: Uint8Array): import('./kv-events.js').KvEventBatch {
  return kv().decode(p);
}
/**
 * Loads the msgpack decoder and vLLM block hashing once (kept out of the gateway's start-up when
 * KV events are off). Call before using {@link KvEventSubscriber} / {@link BlockHashMap}.
 */
export async function loadKvEventModules(): Promise<void> {
  if (kvModules) return;
  const [ev, bh] = await Promise.all([import('./kv-events.js'), import('./block-hash.js')]);
  kvModules = { decode: ev.decodeEventBatch, vllmBlockHashes: bh.vllmBlockHashes, kvEventHash: bh.kvEventHash };
}

/**
 * vLLM block hash (KV-event int: last 8 bytes of the sha256_cbor digest) → the engine's block id
 * (live/block-hash.ts `fastBlockIds`), for the prefixes this gateway routed. Bounded: the oldest
 * entries go first past `max`.
 */
export class BlockHashMap {
  private readonly map = new Map<bigint, number>();
  constructor(
    readonly blockSize: number,
    readonly hashSeed = '0',
    readonly max = 2_000_000,
  ) {}

  get size(): number {
    return this.map.size;
  }

  /**
   * Registers the full blocks of a prompt (token ids) and their engine ids: one sha256 over
   * canonical CBOR per block (vLLM `sha256_cbor`, chained from NONE_HASH(`hashSeed`)).
   */
  add(ids: readonly number[], engineIds: readonly number[]): void {
    const { vllmBlockHashes, kvEventHash } = kv();
    const n = engineIds.length;
    if (n === 0) return;
    const hashes = vllmBlockHashes(ids.slice(0, n * this.blockSize), this.blockSize, this.hashSeed);
    for (let i = 0; i < n; i++) {
      const h = kvEventHash(hashes[i]!);
      if (!this.map.has(h)) this.map.set(h, engineIds[i]!);
    }
    if (this.map.size > this.max) {
      let drop = this.map.size - this.max;
      for (const k of this.map.keys()) {
        if (drop-- <= 0) break;
        this.map.delete(k);
      }
    }
  }

  /** Engine ids of the known hashes (unknown ones — prefixes routed elsewhere — are skipped). */
  lookup(hashes: readonly bigint[]): number[] {
    const out: number[] = [];
    for (const h of hashes) {
      const id = this.map.get(h);
      if (id !== undefined) out.push(id);
    }
    return out;
  }
}
