/**
 * Prefill/decode disaggregation in the emulator (`kvlab emulate --role prefill|decode|mixed`):
 * the `kv_transfer_params` protocol of vLLM's disaggregated serving, with the KV handed over
 * through the prefill instance's LMCache Redis.
 *
 * Protocol (vLLM's proxy, vllm-project/vllm@030ea52e
 * tests/v1/kv_connector/nixl_integration/toy_proxy_server.py, and the NixlConnector it drives,
 * vllm/distributed/kv_transfer/kv_connector/v1/nixl_connector.py @002a1057):
 *  1. the proxy sends the client's request to P with `kv_transfer_params` =
 *     {do_remote_decode: true, do_remote_prefill: false, remote_*: null}, `stream: false`,
 *     `max_tokens: 1` (and `max_completion_tokens: 1`), without `stream_options` / `min_tokens`;
 *  2. P prefills, generates its one token and answers with `kv_transfer_params` =
 *     {do_remote_prefill: true, do_remote_decode: false, remote_engine_id, remote_request_id,
 *     remote_host, remote_port, remote_block_ids, tp_size} (NixlConnectorScheduler.request_finished);
 *  3. the proxy sends the original request (streamed as the client asked) to D with those
 *     parameters; D takes the prompt's KV from P instead of computing it (it recomputes only the
 *     last prompt token, whose logits it needs) and generates every output token.
 *
 * Here P stores the prompt's KV as LMCache chunks in its LMCache Redis (every token: the trailing
 * partial chunk is keyed too, as NIXL moves every prompt block) before it answers, and points D at
 * that Redis: `remote_host` / `remote_port` are the Redis address, `remote_db` (a kvlab extension)
 * its database, `remote_num_tokens` the tokens stored. D really reads the chunks (LMCache layout,
 * live/lmcache-redis.ts) and books the hand-off on a FIFO P -> D link of its own (one per
 * `remote_engine_id`, engine/pd.ts `pdTransferWindow` after the prefill, `bandwidthGbps` ×
 * `efficiency` + `latencyMs`, the profile's KV bytes per token) after its API frontend, then the
 * request joins the core with that prefix as loaded KV at no extra load time — as the simulator
 * times a hand-off (sim/simulator.ts). Chunks D cannot find (evicted, Redis unreachable) are
 * recomputed, as vLLM recomputes blocks whose load failed.
 */
import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { pdTransferWindow, PD_LINK_DEFAULT } from '../engine/pd.js';
import type { LinkSpec } from '../engine/types.js';
import { checkLinkSpec } from './link.js';
import { lmcacheChunks, type LmcacheConfig } from './lmcache.js';
import { LmcacheRedis } from './lmcache-redis.js';
import { badRequest } from './openai.js';
import { connectRedis } from './redis-connect.js';

/** The role an emulator plays in disaggregated serving. */
export type EmulatorRole = 'prefill' | 'decode' | 'mixed';
/** Accepted `--role` values. */
export const EMULATOR_ROLES = ['prefill', 'decode', 'mixed'] as const;

const nullableInt = (min: number, max = Number.MAX_SAFE_INTEGER) => z.number().int().min(min).max(max).nullish();

/** `kv_transfer_params` of a request (the fields the emulator reads; others are ignored, as a connector ignores them). */
export const kvTransferParamsSchema = z.looseObject({
  do_remote_decode: z.boolean().nullish(),
  do_remote_prefill: z.boolean().nullish(),
  remote_engine_id: z.string().nullish(),
  remote_request_id: z.string().nullish(),
  remote_host: z.string().min(1).nullish(),
  remote_port: nullableInt(1, 65535),
  remote_db: nullableInt(0, 1_000_000),
  remote_block_ids: z.array(z.number().int().min(0)).nullish(),
  remote_num_tokens: nullableInt(0),
  tp_size: nullableInt(1),
});

/** What a request's `kv_transfer_params` ask of this instance. */
export type PdRequest =
  | { kind: 'remote-decode' }
  | { kind: 'remote-prefill'; host: string; port: number; db: number; engineId: string; requestId: string | null; numTokens: number | null };

/**
 * Reads a request's `kv_transfer_params` (absent / null / neither flag set: null, an ordinary
 * request) and checks them against this instance.
 * @param role this emulator's role
 * @param canStore whether it has an LMCache Redis to store a prefill's KV in
 * @throws ApiError 400 naming the field (`kv_transfer_params.remote_port`, …): a bad type, both
 *   flags set, a remote prefill without P's address, a role that cannot serve the request
 */
export function parsePdRequest(raw: unknown, role: EmulatorRole, canStore: boolean): PdRequest | null {
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) throw badRequest('kv_transfer_params: must be an object or null', 'kv_transfer_params');
  const r = kvTransferParamsSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw badRequest(`kv_transfer_params.${issue.path.map(String).join('.')}: ${issue.message}`, 'kv_transfer_params');
  }
  const p = r.data;
  if (p.do_remote_decode && p.do_remote_prefill) throw badRequest('kv_transfer_params: do_remote_decode and do_remote_prefill cannot both be true (a request is either the prefill or the decode of a hand-off)', 'kv_transfer_params');
  if (p.do_remote_decode) {
    if (role === 'decode') throw badRequest('kv_transfer_params.do_remote_decode: this instance has role decode (kvlab emulate --role decode): it does not prefill for another instance', 'kv_transfer_params');
    if (!canStore) throw badRequest('kv_transfer_params.do_remote_decode: this instance has no LMCache Redis (kvlab emulate --redis URL) to hand the KV over through', 'kv_transfer_params');
    return { kind: 'remote-decode' };
  }
  if (!p.do_remote_prefill) return null;
  if (role === 'prefill') throw badRequest('kv_transfer_params.do_remote_prefill: this instance has role prefill (kvlab emulate --role prefill): it does not decode for another instance', 'kv_transfer_params');
  if (!p.remote_host) throw badRequest('kv_transfer_params.remote_host: required with do_remote_prefill (the prefill instance\'s answer carries it)', 'kv_transfer_params');
  if (p.remote_port === undefined || p.remote_port === null) throw badRequest('kv_transfer_params.remote_port: required with do_remote_prefill (the prefill instance\'s answer carries it)', 'kv_transfer_params');
  return { kind: 'remote-prefill', host: p.remote_host, port: p.remote_port, db: p.remote_db ?? 0, engineId: p.remote_engine_id ?? `${p.remote_host}:${p.remote_port}`, requestId: p.remote_request_id ?? null, numTokens: p.remote_num_tokens ?? null };
}

/** The prompt KV a decode instance found for a hand-off (before it joins the core). */
export interface PdLoaded {
  /** prompt tokens whose KV was read from P's LMCache Redis. */
  tokens: number;
  /** bytes read from Redis (synthetic LMCache values). */
  redisBytes: number;
  /** why nothing (or not everything) was found, null when the whole prompt was. */
  miss: string | null;
}

/** One hand-off's P -> D link window, model ms of this emulator's clock. */
export interface PdWindow {
  /** the request left the API frontend (link asked for). */
  readyMs: number;
  startMs: number;
  endMs: number;
  /** bytes charged on the link (tokens × the profile's KV bytes per token). */
  bytes: number;
}

/** Options of {@link PdHandoff}. */
export interface PdHandoffOptions {
  role: EmulatorRole;
  /** this instance's engine id (`remote_engine_id` of its hand-offs); default a random UUID. */
  engineId?: string;
  /** P -> D link model (default engine/pd.ts PD_LINK_DEFAULT: 200 Gbit/s, 0.01 ms, 0.825). */
  link?: LinkSpec;
  /** this instance's LMCache Redis URL and client (null: none). */
  own: { url: string; redis: Redis; lmcache: LmcacheRedis } | null;
  lmcache: LmcacheConfig;
  /** synthesised LMCache KV bytes per token (what P writes). */
  bytesPerToken: number;
  /** the profile's KV bytes per token (what the link charges). */
  kvBytesPerToken: number;
  layers: number;
  /** engine block size, tokens (`remote_block_ids` lists the prompt's blocks). */
  blockSize: number;
  log: (msg: string) => void;
}

/** The emulator's side of the hand-off protocol (module doc); one per emulator. */
export class PdHandoff {
  readonly role: EmulatorRole;
  readonly engineId: string;
  readonly link: LinkSpec;
  private readonly cfg: LmcacheConfig;
  private readonly remotes = new Map<string, Promise<LmcacheRedis>>();
  private readonly linkFree = new Map<string, number>();
  private readonly ownAddr: { host: string; port: number; db: number } | null;
  /** counters for /emulator/status. */
  readonly stats = { prefills_handed_off: 0, prefill_store_errors: 0, decodes_received: 0, tokens_received: 0, tokens_recomputed: 0, load_misses: 0, link_bytes: 0, link_busy_ms: 0 };

  constructor(private readonly o: PdHandoffOptions) {
    this.role = o.role;
    this.engineId = o.engineId ?? randomUUID();
    this.link = checkLinkSpec(o.link ?? PD_LINK_DEFAULT, 'pd link');
    this.cfg = { ...o.lmcache, saveUnfullChunk: true };
    this.ownAddr = o.own ? redisAddr(o.own.url) : null;
  }

  /**
   * P: stores the prompt's KV (every chunk from `fromChunk`, the trailing partial one included)
   * in this instance's LMCache Redis and returns the `kv_transfer_params` of the answer. A failed
   * store is logged and counted; the answer still points D here (D then recomputes what it misses).
   */
  async handOff(ids: readonly number[], requestId: string, fromChunk: number): Promise<Record<string, unknown>> {
    const own = this.o.own;
    if (!own || !this.ownAddr) throw new Error('pd: no LMCache Redis to hand the KV over through');
    const chunks = lmcacheChunks(ids, this.cfg);
    try {
      await own.lmcache.store(chunks, Math.min(fromChunk, chunks.length));
    } catch (e) {
      this.stats.prefill_store_errors++;
      this.o.log(`P/D hand-off ${requestId}: storing the KV in ${own.url} failed (${(e as Error).message}); the decode instance will recompute it`);
    }
    this.stats.prefills_handed_off++;
    const blockSize = this.o.blockSize;
    return {
      do_remote_prefill: true,
      do_remote_decode: false,
      remote_engine_id: this.engineId,
      remote_request_id: requestId,
      remote_host: this.ownAddr.host,
      remote_port: this.ownAddr.port,
      remote_db: this.ownAddr.db,
      remote_block_ids: Array.from({ length: Math.ceil(ids.length / blockSize) }, (_, i) => i),
      remote_num_tokens: ids.length,
      tp_size: this.cfg.worldSize,
    };
  }

  /** D: reads the prompt's KV that P stored (module doc); never throws (a failure is a miss). */
  async receive(ids: readonly number[], req: Extract<PdRequest, { kind: 'remote-prefill' }>): Promise<PdLoaded> {
    this.stats.decodes_received++;
    const chunks = lmcacheChunks(ids, this.cfg);
    let found = 0;
    let redisBytes = 0;
    let miss: string | null = null;
    try {
      const lm = await this.remote(req);
      const n = await lm.lookup(chunks);
      const got = await lm.retrieve(chunks, 0, n);
      found = got.chunks;
      redisBytes = got.bytes;
      if (found < chunks.length) miss = `${chunks.length - found} of ${chunks.length} chunks not found in ${req.host}:${req.port}/${req.db}`;
    } catch (e) {
      miss = `prefill instance's LMCache Redis ${req.host}:${req.port}/${req.db} unreachable: ${(e as Error).message}`;
    }
    let tokens = 0;
    for (let i = 0; i < found; i++) tokens += chunks[i]!.tokens;
    tokens = Math.min(tokens, ids.length);
    if (miss) {
      this.stats.load_misses++;
      this.o.log(`P/D hand-off from ${req.engineId}: ${miss}; recomputing ${ids.length - tokens} tokens`);
    }
    this.stats.tokens_received += tokens;
    this.stats.tokens_recomputed += ids.length - tokens;
    return { tokens, redisBytes, miss };
  }

  /**
   * D: books the hand-off of `tokens` prompt tokens from `engineId` on its FIFO link, the request
   * having left the API frontend at `readyMs` (model ms). Returns the window; the request joins the
   * core at `endMs`.
   */
  reserve(engineId: string, readyMs: number, tokens: number): PdWindow {
    const bytes = tokens * this.o.kvBytesPerToken;
    const free = this.linkFree.get(engineId) ?? -Infinity;
    const [startMs, endMs] = pdTransferWindow(bytes, { link: this.link, layerwise: false, firstToken: 'decode' }, this.o.layers, readyMs, readyMs, free);
    this.linkFree.set(engineId, endMs - (bytes > 0 ? this.link.latencyMs : 0));
    this.stats.link_bytes += bytes;
    this.stats.link_busy_ms += endMs - startMs;
    return { readyMs, startMs, endMs, bytes };
  }

  /** /emulator/status block. */
  status(): Record<string, unknown> {
    return { role: this.role, engine_id: this.engineId, link: this.link, ...this.stats, link_busy_ms: Math.round(this.stats.link_busy_ms * 1000) / 1000 };
  }

  /** Closes the connections to other instances' Redis. */
  async close(): Promise<void> {
    const all = [...this.remotes.values()];
    this.remotes.clear();
    for (const p of all) {
      const lm = await p.catch(() => null);
      if (lm && lm.redis !== this.o.own?.redis) await lm.redis.quit().catch(() => lm.redis.disconnect());
    }
  }

  /** The LMCache view of P's Redis (this instance's own client when it is the same database). */
  private remote(req: { host: string; port: number; db: number }): Promise<LmcacheRedis> {
    const own = this.o.own;
    const a = this.ownAddr;
    if (own && a && a.port === req.port && a.db === req.db && sameHost(a.host, req.host)) return Promise.resolve(own.lmcache);
    const key = `${req.host}:${req.port}/${req.db}`;
    let p = this.remotes.get(key);
    if (!p) {
      p = connectRedis(`redis://${req.host.includes(':') ? `[${req.host}]` : req.host}:${req.port}/${req.db}`, 'emulator', "the prefill instance's LMCache Redis", { maxRetriesPerRequest: 2 }).then((r) => {
        r.on('error', () => undefined);
        return new LmcacheRedis(r, this.o.lmcache, this.o.bytesPerToken);
      });
      // a failed connect is retried by the next hand-off
      p.catch(() => this.remotes.delete(key));
      this.remotes.set(key, p);
    }
    return p;
  }
}

/** host, port and database of a redis:// URL. */
function redisAddr(url: string): { host: string; port: number; db: number } {
  const u = new URL(url);
  const db = Number(u.pathname.replace(/^\//, '') || '0');
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || '6379'), db: Number.isInteger(db) ? db : 0 };
}

function sameHost(a: string, b: string): boolean {
  const loop = (h: string) => (h === 'localhost' || h === '::1' || h === '127.0.0.1' ? 'loopback' : h);
  return loop(a) === loop(b);
}
