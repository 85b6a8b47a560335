/**
 * KDN (knowledge delivery node) service: stores knowledge text and precomputed KV chunks in its
 * own Redis and copies the chunks into an instance's LMCache Redis on request, paced by a link
 * model. API names and response fields follow CacheRoute's KDN server
 * (reference/cacheroute.md §7) so a CacheRoute user feels at home:
 *
 * | route | body | answer |
 * |---|---|---|
 * | `POST /knowledge/register_text` | `{content, meta?, build_kv?=true}` | `{kid, status: created\|exists, length, tokens, kv_ready, kv_keys, kv_bytes, kv_source, kv_error?}` |
 * | `POST /knowledge/build_kv` | `{kid}` | item status (builds the KV; 409 naming the field on a builder mismatch) |
 * | `POST /knowledge/search/text` | `{knowledge_ids, need_fields?}` | `{items: [{id, kid, content, length, tokens, kv_ready, meta, created_at}], miss}` |
 * | `POST /knowledge/snapshot` | `{need_fields?, limit?=1e6, offset?=0}` | `{items: [{kid, length, tokens, kv_ready, kv_updated_at, kv_dumped_keys, created_at}], count, limit, offset}` |
 * | `POST /knowledge/inject_ready_kv` | `{request_id?, model?, knowledge_ids, redis_host?, redis_port?, redis_db?, redis_password?, tokens?, sequence?=false, blend?=false, model_path?}` | ACK (see {@link InjectAck}) |
 * | `POST /knowledge/delete` | `{knowledge_ids, delete_kv?=true}` | `{deleted, miss}` |
 * | `POST /knowledge/purge_all` | `{delete_kv?=true}` | `{deleted}` |
 * | `POST /knowledge/pool_status` | `{sample_limit?=5}` | totals and samples |
 * | `GET /health`, `GET /debug/links`, `GET /debug/memory[?gc=1]` | | |
 *
 * Identity: kid = sha256 hex of the normalised text (CRLF/CR → LF, then trim), as CacheRoute.
 * Knowledge prefix (what the KV covers), `format`:
 * - `chat-system` (default, CacheRoute's convention): the text as the system message of the
 *   Llama-3-Instruct template, `<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{text}<|eot_id|>`;
 *   a chat request whose first message is that system message hits its full chunks.
 * - `completion`: `<|begin_of_text|>` + the text; a completion prompt that starts with the text
 *   hits its full chunks (the last text token is left out of the keyed span, so a BPE merge
 *   with whatever follows cannot break the match).
 * Where the KV comes from (`kv_source`):
 * - `builder` (`--builder URL`): computed by a serving instance whose LMCache stores into this
 *   KDN's Redis, from the document sent in the gateway's prefix format (live/kv-builder.ts); the
 *   chunk keys are the ones this KDN computes for its target (model path, world size, dtype,
 *   chunk hashing), and a builder whose keys differ is refused naming the field;
 * - `synthetic` (`--synthetic-kv`, GPU-less tests only): bytes synthesised (`bytesPerToken`,
 *   summed over ranks) under the same keys, valid metadata — what the emulator accepts, garbage
 *   for a real vLLM;
 * - neither: the KDN holds text only (`kv_ready` 0): kvcache requests fall back to text.
 * Only full 256-token chunks are keyed, one key pair per rank.
 *
 * `inject_ready_kv` with `blend: true` (kvlab extension, KDN started with `blend`): every kid's
 * CacheBlend KV (live/kdn-blend.ts: its segment key, valid wherever it sits, plus the layout's
 * head segment), for instances running LMCache with `enable_blending`.
 * `inject_ready_kv` with `sequence: true` (kvlab extension): the kids are documents in prompt
 * order at the head of one chat prompt (one system message each, as the gateway places them);
 * the KDN injects the first document's chunks and then the chunks of that exact sequence (LMCache
 * chains chunk hashes, so a later document's own KV is useless behind another one), built on
 * first use (live/kdn-sequences.ts), up to `tokens`. Without it (CacheRoute's semantics) each
 * kid's own KV is injected.
 *
 * KDN Redis layout: `kdn:item:<kid>` hash (content, length, tokens, meta, created_at, kv_ready,
 * kv_keys, kv_bytes, kv_updated_at, format), `kdn:kids` sorted set (score = created ms),
 * `kdn:kvkeys:<kid>` list of LMCache key strings, and `kdn:kv:<lmcache key><suffix>` values.
 */
import { createHash } from 'node:crypto';
import Fastify, { type FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import { connectRedis } from './redis-connect.js';
import { request } from 'undici';
import { z } from 'zod';
import type { LinkSpec } from '../engine/types.js';
import { LinkTable, type LinkTiming } from './link.js';
import { BuilderMismatch, KvBuilder, type KvBuilderOptions } from './kv-builder.js';
import { MAX_SEQUENCE_DOCS, SEQKV, SequenceStore } from './kdn-sequences.js';
import { BKV, BlendStore } from './kdn-blend.js';
import { BLEND_SEPARATOR } from './blend-layout.js';
import { kvBytesKey, lmcacheChunks, lmcacheConfig, metadataKey, rankChunkBytes, syntheticKvBytes, syntheticMetadata, type LmcacheConfig } from './lmcache.js';
import { acceptAnyJson, refuseUnreadBody } from './openai.js';
import { encodePromptAsync, encodeSystemPrefixAsync, holdTokenizePool } from './tokenize-pool.js';
import { tokenizerCacheChars } from './tokenizer.js';

/** How a knowledge text sits at the prompt prefix (see module doc). */
export type KnowledgeFormat = 'chat-system' | 'completion';

/** Options of {@link startKdn}. */
export interface KdnOptions {
  host?: string;
  /** default 9101 (CacheRoute `KDN_PORT`); 0 = any free port. */
  port?: number;
  /** the KDN's own Redis (text + KV chunks). */
  redisUrl: string;
  /** LMCache `model_name` of the target instances (their `--model` path). */
  model: string;
  /** extra names accepted in `inject_ready_kv.model` (e.g. the served model name). */
  modelAliases?: string[];
  /** LMCache key settings of the target (worldSize, variant, chunkSize, dtype, hashSeed). */
  lmcache?: Partial<Omit<LmcacheConfig, 'model'>>;
  /** synthesised KV bytes per token, summed over ranks (default 64, as the emulator). */
  bytesPerToken?: number;
  /** bytes per token the link model charges (default = bytesPerToken); lets tiny test payloads model real sizes. */
  wireBytesPerToken?: number;
  /** default knowledge prefix format (default `chat-system`). */
  format?: KnowledgeFormat;
  /** tokenise through this vLLM-compatible server's `/tokenize` instead of the local Llama-3 tokenizer. */
  tokenizeUrl?: string;
  /** default KDN→instance link (default 1 Gbit/s, 10 ms, efficiency 0.8: CacheRoute's KDN simulator). */
  link?: LinkSpec;
  /** per-target link overrides keyed by `host:port` or `host:port/db`. */
  links?: Record<string, LinkSpec>;
  /** model ms per wall ms for link pacing (default 1). */
  timeScale?: number;
  /** largest document, UTF-8 bytes of its text (default 2 MiB; 413 above, checked before tokenising). */
  maxDocumentBytes?: number;
  /** largest document, tokens of its knowledge prefix (default 131,072, Llama-3.1's context; 422 above). */
  maxDocumentTokens?: number;
  /** compute every document's KV on this serving instance (its LMCache remote = this KDN's Redis). */
  builder?: KvBuilderOptions;
  /**
   * also keep every document's CacheBlend KV (live/kdn-blend.ts) for instances running LMCache
   * with `enable_blending`: built on `builder` (a CacheBlend instance whose LMCache stores into
   * this KDN's Redis) or synthesised with `syntheticKv`; `separator` = their `blend_special_str`.
   */
  blend?: { separator?: string; builder?: KvBuilderOptions };
  /** synthesise KV bytes instead (GPU-less tests: garbage for a real vLLM). Exclusive with `builder`. */
  syntheticKv?: boolean;
  logger?: boolean | object;
}

/** `inject_ready_kv` answer (CacheRoute fields + timings). */
export interface InjectAck {
  ok: boolean;
  request_id: string | number | null;
  injected_kids: string[];
  text_only_kids: string[];
  miss_kids: string[];
  /** Redis keys written (kv_bytes + metadata, per chunk per rank). */
  keys_injected: number;
  /** bytes written (values of every key). */
  payload_bytes: number;
  /** = keys_injected (CacheRoute counts dump files, one per key). */
  payload_files: number;
  /** bytes the link model charged (tokens × wireBytesPerToken). */
  wire_bytes: number;
  /** tokens of KV injected (full chunks), summed over kids. */
  tokens_injected: number;
  network_sim_enabled: true;
  /** wait for the link, ms. */
  queue_ms: number;
  /** link held, ms (>= the link model's time). */
  transfer_ms: number;
  total_ms: number;
  /** link model transfer time, ms (after time scaling). */
  model_transfer_ms: number;
  transfer_start_ts: number | null;
  transfer_end_ts: number | null;
  link: { key: string; bandwidth_gbps: number; latency_ms: number; efficiency: number };
  detail: string;
  /** `sequence: true`: the sequence whose KV was injected beyond the first document (null: none). */
  sequence_id: string | null;
  /** ms this request spent building a new sequence's KV on the builder (0 when it was held). */
  build_ms: number;
}

/** A running KDN. */
export interface KdnHandle {
  url: string;
  host: string;
  port: number;
  app: FastifyInstance;
  redis: Redis;
  lmcache: LmcacheConfig;
  links: LinkTable;
  /** where document KV comes from: `builder`, `synthetic`, or `none` (text only). */
  kvSource: 'builder' | 'synthetic' | 'none';
  /** Stops accepting connections, lets running requests finish (10 s at most), quits Redis. */
  close(): Promise<void>;
}

/** CacheRoute's text normalisation: CRLF/CR → LF, then trim. */
export function normaliseKnowledge(text: string): string {
  return text.replace(/\r\n?/g, '\n').trim();
}

/** kid = sha256 (hex) of the normalised UTF-8 text. */
export function knowledgeId(text: string): string {
  return createHash('sha256').update(normaliseKnowledge(text), 'utf8').digest('hex');
}

/** FastAPI-style error (`{"detail": message}`), as CacheRoute's KDN answers. */
class KdnError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const kidList = z.array(z.string().min(1)).min(1);
const registerSchema = z.looseObject({ content: z.string(), meta: z.record(z.string(), z.unknown()).nullish(), build_kv: z.boolean().nullish(), format: z.enum(['chat-system', 'completion']).nullish() });
const searchSchema = z.looseObject({ knowledge_ids: kidList, need_fields: z.array(z.string()).nullish() });
const snapshotSchema = z.looseObject({ need_fields: z.array(z.string()).nullish(), limit: z.number().int().min(0).nullish(), offset: z.number().int().min(0).nullish() });
const injectSchema = z.looseObject({
  request_id: z.union([z.string(), z.number()]).nullish(),
  model: z.string().nullish(),
  model_path: z.string().nullish(),
  knowledge_ids: kidList,
  redis_host: z.string().min(1).nullish(),
  redis_port: z.number().int().min(1).max(65535).nullish(),
  redis_db: z.number().int().min(0).nullish(),
  redis_password: z.string().nullish(),
  tokens: z.number().int().min(0).nullish(),
  sequence: z.boolean().nullish(),
  blend: z.boolean().nullish(),
});
const deleteSchema = z.looseObject({ knowledge_ids: kidList, delete_kv: z.boolean().nullish() });
const buildSchema = z.looseObject({ kid: z.string().min(1) });

function parse<T>(schema: z.ZodType<T>, body: unknown, what: string): T {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new KdnError(400, `${what}: request body must be a JSON object`);
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const i = r.error.issues[0]!;
  const path = i.path.map(String).join('.') || '(body)';
  const missing = i.path.length === 1 && (body as Record<string, unknown>)[String(i.path[0])] === undefined;
  throw new KdnError(400, `${what}: ${path}: ${missing ? 'field required' : i.message}`);
}

const ITEM = (kid: string): string => `kdn:item:${kid}`;
const KVKEYS = (kid: string): string => `kdn:kvkeys:${kid}`;
const KV = (k: string): string => `kdn:kv:${k}`;
const KIDS = 'kdn:kids';

/** Starts the KDN service; resolves once it listens. Throws on bad options or an unreachable Redis. */
export async function startKdn(opts: KdnOptions): Promise<KdnHandle> {
  const lm = lmcacheConfig({ ...opts.lmcache, model: opts.model });
  const bpt = opts.bytesPerToken ?? 64;
  if (!(bpt > 0)) throw new Error(`bytesPerToken must be > 0 (got ${bpt})`);
  const wireBpt = opts.wireBytesPerToken ?? bpt;
  if (!(wireBpt >= 0)) throw new Error(`wireBytesPerToken must be >= 0 (got ${wireBpt})`);
  const defaultFormat = opts.format ?? 'chat-system';
  const maxDocBytes = opts.maxDocumentBytes ?? 2 * 1024 * 1024;
  const maxDocTokens = opts.maxDocumentTokens ?? 131_072;
  if (!Number.isSafeInteger(maxDocBytes) || maxDocBytes < 1) throw new Error(`kdn: maxDocumentBytes must be a positive integer (got ${opts.maxDocumentBytes})`);
  if (!Number.isSafeInteger(maxDocTokens) || maxDocTokens < 1) throw new Error(`kdn: maxDocumentTokens must be a positive integer (got ${opts.maxDocumentTokens})`);
  const modelNames = new Set([opts.model, ...(opts.modelAliases ?? [])]);
  const links = new LinkTable(opts.link ?? { bandwidthGbps: 1, latencyMs: 10, efficiency: 0.8 }, opts.links ?? {}, opts.timeScale ?? 1);

  if (opts.builder && opts.syntheticKv) throw new Error('kdn: --builder and --synthetic-kv exclude each other (real KV from a builder, or synthesised bytes for GPU-less tests)');
  const redis = await connectRedis(opts.redisUrl, 'kdn', 'its Redis store', { maxRetriesPerRequest: 2 });
  redis.on('error', () => undefined); // failures surface on the commands (HTTP 500 with the reason)
  let builder: KvBuilder | null = null;
  if (opts.builder) {
    try {
      builder = await KvBuilder.connect(opts.builder, redis, lm);
    } catch (e) {
      redis.disconnect();
      throw e;
    }
  }
  const kvSource: KdnHandle['kvSource'] = builder ? 'builder' : opts.syntheticKv ? 'synthetic' : 'none';
  let blendStore: BlendStore | null = null;
  if (opts.blend) {
    if (!opts.blend.builder && !opts.syntheticKv) {
      redis.disconnect();
      throw new Error('kdn: --blend needs --blend-builder URL (an instance running LMCache with enable_blending, storing into this KDN\'s Redis) or --synthetic-kv');
    }
    const separator = opts.blend.separator ?? BLEND_SEPARATOR;
    let bb: KvBuilder | null = null;
    if (opts.blend.builder) {
      try {
        bb = await KvBuilder.connect({ ...opts.blend.builder, blendSeparator: separator }, redis, lm);
      } catch (e) {
        redis.disconnect();
        throw e;
      }
    }
    blendStore = new BlendStore({ redis, lm, separator, bytesPerToken: bpt, source: bb ? 'builder' : 'synthetic', build: bb ? (p, e) => bb!.build(p, e) : undefined });
  }
  /** Builds an item's CacheBlend KV (no-op without --blend); a failure is kept as blend_error. */
  const buildBlend = async (kid: string, text: string): Promise<void> => {
    if (!blendStore) return;
    let fields: Record<string, string | number>;
    try {
      fields = await blendStore.build(kid, text);
    } catch (e) {
      fields = { blend_ready: 0, blend_error: e instanceof BuilderMismatch ? `${e.field}: ${e.message}` : (e as Error).message };
    }
    const m = redis.multi().hset(ITEM(kid), fields);
    if (!('blend_error' in fields)) m.hdel(ITEM(kid), 'blend_error');
    await m.exec();
  };
  const targets = new Map<string, Redis>();
  const target = (host: string, port: number, db: number, password?: string | null): Redis => {
    const key = `${host}:${port}/${db}`;
    let r = targets.get(key);
    if (!r) {
      r = new Redis({ host, port, db, password: password ?? undefined, lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 3000 });
      r.on('error', () => undefined); // reported per request
      targets.set(key, r);
    }
    return r;
  };

  /** Token ids of the knowledge prefix and the span that is keyed. */
  const tokenize = async (text: string, format: KnowledgeFormat): Promise<{ ids: number[]; keyed: number[] }> => {
    let ids: number[];
    if (opts.tokenizeUrl) {
      const body = format === 'chat-system' ? { messages: [{ role: 'system', content: text }], add_generation_prompt: false } : { prompt: text, add_special_tokens: true };
      ids = await tokenizeVia(opts.tokenizeUrl, body);
    } else ids = format === 'chat-system' ? await encodeSystemPrefixAsync(text) : await encodePromptAsync(text, true);
    if (ids.length > maxDocTokens) throw new KdnError(422, `register_text: content: the document has ${ids.length} tokens, more than this KDN accepts (${maxDocTokens}, --max-document-tokens)`);
    return { ids, keyed: format === 'chat-system' ? ids : ids.slice(0, -1) };
  };

  const sequences = new SequenceStore({
    redis,
    lm,
    bytesPerToken: bpt,
    source: kvSource,
    build: builder ? (prompt, expected) => builder!.build(prompt, expected) : undefined,
    tokenize: opts.tokenizeUrl
      ? (texts) => tokenizeVia(opts.tokenizeUrl!, { messages: texts.map((content) => ({ role: 'system', content })), add_generation_prompt: false })
      : undefined,
  });

  /**
   * Builds and stores the KV chunks of an item: from the builder (the document in the gateway's
   * prefix format, max_tokens 1), or synthesised with `syntheticKv`. Returns keys (pairs) and bytes.
   * @throws KdnError 409 without a KV source, or naming the field of a builder mismatch
   */
  const buildKv = async (kid: string, text: string, format: KnowledgeFormat): Promise<{ keys: number; bytes: number; tokens: number }> => {
    if (kvSource === 'none') throw new KdnError(409, 'build_kv: this KDN has no KV source: start it with --builder URL (a vLLM + LMCache or emulator whose LMCache stores into this KDN\'s Redis), or --synthetic-kv for GPU-less tests');
    const { ids, keyed } = await tokenize(text, format);
    const chunks = lmcacheChunks(keyed, lm);
    let built: Map<string, [Buffer, Buffer]> | null = null;
    let buildMs = 0;
    if (builder && chunks.length > 0) {
      try {
        const r = await builder.build(format === 'chat-system' ? { kind: 'chat', messages: [{ role: 'system', content: text }] } : { kind: 'completion', prompt: text }, chunks);
        built = r.values;
        buildMs = r.ms;
      } catch (e) {
        if (e instanceof BuilderMismatch) throw new KdnError(409, `build_kv: ${e.field}: ${e.message}`);
        throw new KdnError(502, `build_kv: ${(e as Error).message}`);
      }
    }
    const m = redis.multi();
    m.del(KVKEYS(kid));
    let bytes = 0;
    let keys = 0;
    for (const c of chunks) {
      const size = rankChunkBytes(c.tokens, bpt, lm.worldSize);
      for (const k of c.keys) {
        // the builder's bytes verbatim; synthesised ones only with --synthetic-kv
        const [kv, md] = built ? built.get(k)! : [syntheticKvBytes(k, size), syntheticMetadata(size)];
        m.set(KV(kvBytesKey(k)), kv);
        m.set(KV(metadataKey(k)), md);
        m.rpush(KVKEYS(kid), k);
        bytes += kv.length + md.length;
        keys += 2;
      }
    }
    m.hset(ITEM(kid), { kv_ready: chunks.length > 0 ? 1 : 0, kv_keys: keys, kv_bytes: bytes, kv_chunks: chunks.length, kv_tokens: chunks.length * lm.chunkSize, kv_updated_at: Date.now(), tokens: ids.length, format, kv_source: chunks.length > 0 ? kvSource : 'none', kv_build_ms: Math.round(buildMs) });
    m.hdel(ITEM(kid), 'kv_error');
    await m.exec();
    return { keys, bytes, tokens: ids.length };
  };

  const readItem = async (kid: string): Promise<Record<string, string> | null> => {
    const h = await redis.hgetall(ITEM(kid));
    return h && h.content !== undefined ? h : null;
  };

  const publicItem = (kid: string, h: Record<string, string>, withContent: boolean): Record<string, unknown> => ({
    kid,
    ...(withContent ? { content: h.content } : {}),
    length: Number(h.length),
    tokens: Number(h.tokens ?? 0),
    kv_ready: Number(h.kv_ready ?? 0),
    kv_updated_at: h.kv_updated_at ? Number(h.kv_updated_at) : null,
    kv_dumped_keys: Number(h.kv_keys ?? 0),
    kv_tokens: Number(h.kv_tokens ?? 0),
    kv_source: h.kv_source ?? (Number(h.kv_ready ?? 0) === 1 ? 'synthetic' : 'none'),
    ...(h.kv_error ? { kv_error: h.kv_error } : {}),
    ...(blendStore ? { blend_ready: Number(h.blend_ready ?? 0), blend_tokens: Number(h.blend_tokens ?? 0), ...(h.blend_error ? { blend_error: h.blend_error } : {}) } : {}),
    format: h.format,
    meta: h.meta ? JSON.parse(h.meta) : null,
    created_at: Number(h.created_at),
  });

  const pick = (o: Record<string, unknown>, fields: string[] | null | undefined, always: string[]): Record<string, unknown> =>
    fields && fields.length ? Object.fromEntries(Object.entries(o).filter(([k]) => fields.includes(k) || always.includes(k))) : o;

  // JSON-escaped text can be up to 6 bytes per byte (\\u00XX); the content itself is checked below
  const bodyLimit = 6 * maxDocBytes + 64 * 1024;
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit, forceCloseConnections: 'idle' });
  acceptAnyJson(app, (msg) => new KdnError(400, msg));
  app.setErrorHandler((err, req, reply) => {
    const e = err as { status?: number; statusCode?: number; message: string };
    const status = err instanceof KdnError ? err.status : typeof e.statusCode === 'number' && e.statusCode < 500 ? e.statusCode : 500;
    const msg = status === 413 && !(err instanceof KdnError) ? `request body is larger than ${bodyLimit} bytes (this KDN takes documents of at most ${maxDocBytes} bytes, --max-document-bytes)` : e.message;
    if (reply.sent || refuseUnreadBody(req, reply, status, { detail: msg })) return;
    void reply.status(status).send({ detail: msg });
  });
  app.setNotFoundHandler((_req, reply) => void reply.status(404).send({ detail: 'Not Found' }));

  app.get('/health', async () => ({ ok: true }));
  app.get('/debug/links', async () => ({ links: links.status() }));
  // memory of this process (MiB); `?gc=1` collects garbage first when node runs with --expose-gc
  app.get('/debug/memory', async (req) => {
    const g = (globalThis as { gc?: () => void }).gc;
    if ((req.query as { gc?: string }).gc === '1' && g) g();
    const m = process.memoryUsage();
    const mib = (x: number): number => Math.round((x / 2 ** 20) * 10) / 10;
    return { rss_mib: mib(m.rss), heap_used_mib: mib(m.heapUsed), heap_total_mib: mib(m.heapTotal), external_mib: mib(m.external), array_buffers_mib: mib(m.arrayBuffers), tokenizer_cache_chars: tokenizerCacheChars(), gc: !!g };
  });

  app.post('/knowledge/register_text', async (req) => {
    const b = parse(registerSchema, req.body, 'register_text');
    const text = normaliseKnowledge(b.content);
    if (!text) throw new KdnError(400, 'register_text: content: must not be empty after normalisation');
    const bytes = Buffer.byteLength(text, 'utf8');
    if (bytes > maxDocBytes) throw new KdnError(413, `register_text: content: the document has ${bytes} bytes, more than this KDN accepts (${maxDocBytes}, --max-document-bytes)`);
    const kid = knowledgeId(text);
    const format = b.format ?? defaultFormat;
    const now = Date.now();
    // idempotent: HSETNX on content decides who creates
    const created = await redis.hsetnx(ITEM(kid), 'content', text);
    if (!created) {
      const h = (await readItem(kid))!;
      return { kid, status: 'exists', length: Number(h.length ?? text.length), tokens: Number(h.tokens ?? 0), kv_ready: Number(h.kv_ready ?? 0), kv_keys: Number(h.kv_keys ?? 0), kv_bytes: Number(h.kv_bytes ?? 0) };
    }
    await redis.multi().hset(ITEM(kid), { length: text.length, created_at: now, meta: JSON.stringify(b.meta ?? {}), kv_ready: 0, format }).zadd(KIDS, now, kid).exec();
    let kv = { keys: 0, bytes: 0, tokens: 0 };
    let kvError: string | undefined;
    try {
      kv.tokens = (await tokenize(text, format)).ids.length;
      if (b.build_kv ?? true) await buildBlend(kid, text);
      if ((b.build_kv ?? true) && kvSource !== 'none') {
        try {
          kv = await buildKv(kid, text, format);
        } catch (e) {
          // the text is registered; its KV is refused (builder mismatch / down): it serves as text
          if (!(e instanceof KdnError) || e.status < 409) throw e;
          kvError = e.message;
          await redis.hset(ITEM(kid), { kv_error: kvError });
        }
      }
      await redis.hset(ITEM(kid), { tokens: kv.tokens });
    } catch (e) {
      await redis.multi().del(ITEM(kid)).zrem(KIDS, kid).exec();
      throw e;
    }
    return { kid, status: 'created', length: text.length, tokens: kv.tokens, kv_ready: kv.keys > 0 ? 1 : 0, kv_keys: kv.keys, kv_bytes: kv.bytes, kv_source: kv.keys > 0 ? kvSource : 'none', ...(kvError ? { kv_error: kvError } : {}) };
  });

  app.post('/knowledge/build_kv', async (req) => {
    const b = parse(buildSchema, req.body, 'build_kv');
    const h = await readItem(b.kid);
    if (!h) throw new KdnError(404, `build_kv: kid: unknown knowledge id ${b.kid}`);
    await buildBlend(b.kid, h.content!);
    const kv = kvSource === 'none' && blendStore ? { keys: 0, bytes: 0, tokens: Number(h.tokens ?? 0) } : await buildKv(b.kid, h.content!, (h.format as KnowledgeFormat) ?? defaultFormat);
    return { kid: b.kid, status: 'built', kv_ready: kv.keys > 0 ? 1 : 0, kv_keys: kv.keys, kv_bytes: kv.bytes, tokens: kv.tokens };
  });

  app.post('/knowledge/search/text', async (req) => {
    const b = parse(searchSchema, req.body, 'search/text');
    const items: Record<string, unknown>[] = [];
    const miss: string[] = [];
    for (const kid of b.knowledge_ids) {
      const h = await readItem(kid);
      if (!h) miss.push(kid);
      else items.push(pick({ id: kid, ...publicItem(kid, h, true) }, b.need_fields, ['id']));
    }
    return { items, miss };
  });

  app.post('/knowledge/snapshot', async (req) => {
    const b = parse(snapshotSchema, req.body ?? {}, 'snapshot');
    const limit = b.limit ?? 1_000_000;
    const offset = b.offset ?? 0;
    const count = await redis.zcard(KIDS);
    const kids = limit > 0 ? await redis.zrange(KIDS, String(offset), String(offset + limit - 1)) : [];
    const items: Record<string, unknown>[] = [];
    for (const kid of kids) {
      const h = await readItem(kid);
      if (h) items.push(pick(publicItem(kid, h, false), b.need_fields, ['kid']));
    }
    return { items, count, limit, offset };
  });

  app.post('/knowledge/inject_ready_kv', async (req) => {
    const b = parse(injectSchema, req.body, 'inject_ready_kv');
    if (b.model && !modelNames.has(b.model)) throw new KdnError(400, `inject_ready_kv: model: this KDN builds KV for ${[...modelNames].map((m) => JSON.stringify(m)).join(' / ')}, not ${JSON.stringify(b.model)}`);
    // the target's model path is its LMCache model_name, part of every key: another one never hits
    if (b.model_path && b.model_path !== lm.model) throw new KdnError(409, `inject_ready_kv: model_path: the target instance runs ${JSON.stringify(b.model_path)} (its LMCache model_name), this KDN keys KV for ${JSON.stringify(lm.model)} (--model): its chunk keys would never match`);
    const host = b.redis_host ?? '127.0.0.1';
    const port = b.redis_port ?? 6379;
    const db = b.redis_db ?? 0;
    const linkKey = `${host}:${port}/${db}`;
    const link = links.get(linkKey);
    const maxChunks = b.tokens === null || b.tokens === undefined ? Infinity : Math.floor(b.tokens / lm.chunkSize);
    const miss: string[] = [];
    const textOnly: string[] = [];
    // per entry: the LMCache keys to write and where each value sits in this KDN's Redis
    const plan: Array<{ kids: string[]; keys: string[]; src: (i: number, suffixed: string) => string; tokens: number }> = [];
    const own = (k: string): string => KV(k);
    let sequenceId: string | null = null;
    let buildMs = 0;
    let seqNote = '';
    if (b.blend) {
      // CacheBlend: every document's own segment KV, wherever it sits (live/kdn-blend.ts)
      if (!blendStore) throw new KdnError(409, 'inject_ready_kv: blend: this KDN keeps no CacheBlend KV (start it with --blend)');
      for (const kid of b.knowledge_ids) {
        const h = await readItem(kid);
        if (!h) {
          miss.push(kid);
          continue;
        }
        const keys = Number(h.blend_ready ?? 0) === 1 ? await blendStore.keys(kid) : [];
        if (keys.length === 0) {
          textOnly.push(kid);
          continue;
        }
        plan.push({ kids: [kid], keys, src: (_i, k) => BKV(kid, k), tokens: Number(h.blend_tokens ?? 0) });
      }
    } else if (b.sequence && b.knowledge_ids.length > 1) {
      // the documents are one sequence at the prompt head (module doc of live/kdn-sequences.ts):
      // the first document's own chunks, then the sequence's chunks (built on first use)
      if (b.knowledge_ids.length > MAX_SEQUENCE_DOCS) throw new KdnError(400, `inject_ready_kv: knowledge_ids: a sequence holds at most ${MAX_SEQUENCE_DOCS} documents (got ${b.knowledge_ids.length})`);
      const kidsIn = b.knowledge_ids;
      const hs = await Promise.all(kidsIn.map((kid) => readItem(kid)));
      kidsIn.forEach((kid, j) => {
        if (!hs[j]) miss.push(kid);
      });
      const h0 = hs[0];
      const firstKeys = h0 && Number(h0.kv_ready ?? 0) === 1 ? await redis.lrange(KVKEYS(kidsIn[0]!), 0, -1) : [];
      const firstChunks = firstKeys.length / lm.worldSize;
      let seqKeys: string[] = [];
      if (firstKeys.length > 0 && maxChunks > firstChunks) {
        if (hs.some((h) => !h || (h.format ?? defaultFormat) !== 'chat-system')) seqNote = 'a sequence needs every document registered, in chat-system format: the first document only';
        else {
          try {
            const seq = await sequences.ensure(kidsIn, hs.map((h) => h!.content!), firstChunks);
            seqKeys = seq.keys;
            sequenceId = seq.sid;
            buildMs = seq.buildMs;
          } catch (e) {
            seqNote = `sequence KV not available (${(e as Error).message.slice(0, 200)}): the first document only`;
          }
        }
      }
      let keys = [...firstKeys, ...seqKeys];
      if (Number.isFinite(maxChunks)) keys = keys.slice(0, maxChunks * lm.worldSize);
      // which documents the injected chunks reach into (the others go as text)
      const reach = keys.length / lm.worldSize * lm.chunkSize;
      const kids: string[] = [];
      let at = 0;
      for (const [j, kid] of kidsIn.entries()) {
        if (!hs[j]) break;
        if (j > 0 && !sequenceId) break;
        if (at >= reach) break;
        kids.push(kid);
        at += Number(hs[j]!.tokens ?? 0) - (j > 0 ? 1 : 0); // a later block has no BOS
      }
      const sid = sequenceId;
      if (keys.length > 0) plan.push({ kids, keys, src: (i, k) => (i < firstKeys.length || !sid ? own(k) : SEQKV(sid, k)), tokens: reach });
      for (const [j, kid] of kidsIn.entries()) if (hs[j] && !kids.includes(kid)) textOnly.push(kid);
    } else
      for (const kid of b.knowledge_ids) {
        const h = await readItem(kid);
        if (!h) {
          miss.push(kid);
          continue;
        }
        if (Number(h.kv_ready ?? 0) !== 1) {
          textOnly.push(kid);
          continue;
        }
        const all = await redis.lrange(KVKEYS(kid), 0, -1);
        const keys = Number.isFinite(maxChunks) ? all.slice(0, maxChunks * lm.worldSize) : all;
        if (keys.length === 0) {
          textOnly.push(kid);
          continue;
        }
        plan.push({ kids: [kid], keys, src: (_i, k) => own(k), tokens: (keys.length / lm.worldSize) * lm.chunkSize });
      }
    const tokens = plan.reduce((a, p) => a + p.tokens, 0);
    const wire = tokens * wireBpt;
    const ack: InjectAck = {
      ok: true,
      request_id: b.request_id ?? null,
      injected_kids: [],
      text_only_kids: textOnly,
      miss_kids: miss,
      keys_injected: 0,
      payload_bytes: 0,
      payload_files: 0,
      wire_bytes: 0,
      tokens_injected: 0,
      network_sim_enabled: true,
      queue_ms: 0,
      transfer_ms: 0,
      total_ms: 0,
      model_transfer_ms: 0,
      transfer_start_ts: null,
      transfer_end_ts: null,
      link: { key: linkKey, bandwidth_gbps: link.spec.bandwidthGbps, latency_ms: link.spec.latencyMs, efficiency: link.spec.efficiency },
      detail: plan.length ? seqNote : 'nothing to inject',
      sequence_id: sequenceId,
      build_ms: round3(buildMs),
    };
    if (plan.length === 0) return ack;
    const dst = target(host, port, db, b.redis_password);
    let timing: LinkTiming | undefined;
    try {
      const out = await link.run(wire, async () => {
        if (dst.status === 'wait' || dst.status === 'end') await dst.connect();
        const done: Array<{ kids: string[]; keys: number; bytes: number; tokens: number }> = [];
        const failed: Array<{ kids: string[]; why: string }> = [];
        for (const p of plan) {
          try {
            const src = redis.pipeline();
            p.keys.forEach((k, i) => src.getBuffer(p.src(i, kvBytesKey(k))).getBuffer(p.src(i, metadataKey(k))));
            const vals = (await src.exec()) ?? [];
            const w = dst.pipeline();
            let bytes = 0;
            for (let i = 0; i < p.keys.length; i++) {
              const kv = vals[2 * i]?.[1] as Buffer | null;
              const md = vals[2 * i + 1]?.[1] as Buffer | null;
              if (!kv || !md) throw new Error(`KV chunk missing in the KDN store: ${p.keys[i]}`);
              w.set(kvBytesKey(p.keys[i]!), kv); // kv_bytes first, as LMCache's RedisConnector
              w.set(metadataKey(p.keys[i]!), md);
              bytes += kv.length + md.length;
            }
            const res = (await w.exec()) ?? [];
            const err = res.find(([e]) => e);
            if (err) throw err[0];
            done.push({ kids: p.kids, keys: p.keys.length * 2, bytes, tokens: p.tokens });
          } catch (e) {
            failed.push({ kids: p.kids, why: (e as Error).message });
          }
        }
        return { done, failed };
      });
      timing = out.timing;
      for (const d of out.result.done) {
        ack.injected_kids.push(...d.kids);
        ack.keys_injected += d.keys;
        ack.payload_bytes += d.bytes;
        ack.tokens_injected += d.tokens;
      }
      for (const f of out.result.failed) ack.text_only_kids.push(...f.kids);
      if (out.result.failed.length) {
        ack.ok = false;
        ack.detail = out.result.failed.map((f) => `${f.kids.join('+')}: ${f.why}`).join('; ');
      }
    } catch (e) {
      ack.ok = false;
      ack.text_only_kids.push(...plan.flatMap((p) => p.kids));
      ack.detail = `cannot write to target Redis ${linkKey}: ${(e as Error).message}`;
    }
    ack.payload_files = ack.keys_injected;
    ack.wire_bytes = ack.tokens_injected * wireBpt;
    if (timing) {
      ack.queue_ms = round3(timing.queueMs);
      ack.transfer_ms = round3(timing.transferMs);
      ack.total_ms = round3(timing.totalMs);
      ack.model_transfer_ms = round3(timing.modelTransferMs);
      ack.transfer_start_ts = timing.startTs;
      ack.transfer_end_ts = timing.endTs;
    }
    return ack;
  });

  app.post('/knowledge/delete', async (req) => {
    const b = parse(deleteSchema, req.body, 'delete');
    const deleted: string[] = [];
    const miss: string[] = [];
    for (const kid of b.knowledge_ids) {
      if (!(await readItem(kid))) {
        miss.push(kid);
        continue;
      }
      await deleteItem(kid, b.delete_kv ?? true);
      deleted.push(kid);
    }
    return { deleted, miss };
  });

  app.post('/knowledge/purge_all', async (req) => {
    const b = parse(z.looseObject({ delete_kv: z.boolean().nullish() }), req.body ?? {}, 'purge_all');
    const kids = await redis.zrange(KIDS, '0', '-1');
    for (const kid of kids) await deleteItem(kid, b.delete_kv ?? true);
    return { deleted: kids.length };
  });

  app.post('/knowledge/pool_status', async (req) => {
    const b = parse(z.looseObject({ sample_limit: z.number().int().min(0).nullish() }), req.body ?? {}, 'pool_status');
    const kids = await redis.zrange(KIDS, '0', '-1');
    let ready = 0;
    let len = 0;
    let keysOnReady = 0;
    const samples: Record<string, unknown>[] = [];
    for (const kid of kids) {
      const h = await readItem(kid);
      if (!h) continue;
      len += Number(h.length);
      if (Number(h.kv_ready) === 1) {
        ready++;
        keysOnReady += Number(h.kv_keys ?? 0);
      }
      if (samples.length < (b.sample_limit ?? 5)) samples.push(publicItem(kid, h, false));
    }
    return {
      total: kids.length,
      kv_ready: ready,
      text_only: kids.length - ready,
      avg_length: kids.length ? len / kids.length : 0,
      avg_dumped_keys_on_ready: ready ? keysOnReady / ready : 0,
      sequences: await sequences.count(),
      samples,
    };
  });

  const deleteItem = async (kid: string, deleteKv: boolean): Promise<void> => {
    await sequences.deleteFor(kid); // a sequence without one of its documents is never valid again
    if (deleteKv) await blendStore?.delete(kid);
    const m = redis.multi();
    if (deleteKv) {
      const keys = await redis.lrange(KVKEYS(kid), 0, -1);
      for (const k of keys) m.del(KV(kvBytesKey(k)), KV(metadataKey(k)));
      m.del(KVKEYS(kid));
    }
    m.del(ITEM(kid)).zrem(KIDS, kid);
    await m.exec();
  };

  const host = opts.host ?? '127.0.0.1';
  const releasePool = holdTokenizePool();
  await app.listen({ host, port: opts.port ?? 9101 });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : (opts.port ?? 9101);
  let closing: Promise<void> | undefined;
  return {
    url: `http://${host}:${port}`,
    host,
    port,
    app,
    redis,
    lmcache: lm,
    links,
    kvSource,
    close: () =>
      (closing ??= (async () => {
        // stop listening; running requests (injections) finish, idle keep-alive sockets close
        const closed = app.close();
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([closed, new Promise((r) => (timer = setTimeout(r, 10_000)))]);
        clearTimeout(timer); // a pending 10 s grace timer would keep the process alive
        app.server.closeAllConnections();
        await closed;
        for (const r of targets.values()) await r.quit().catch(() => r.disconnect());
        await redis.quit().catch(() => redis.disconnect());
        await releasePool();
      })()),
  };
}

/** Token ids from a vLLM-compatible server's `POST /tokenize`. @throws KdnError 502 when it fails */
async function tokenizeVia(url: string, body: unknown): Promise<number[]> {
  const res = await request(`${url.replace(/\/$/, '')}/tokenize`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const j = (await res.body.json()) as { tokens?: number[] };
  if (res.statusCode !== 200 || !Array.isArray(j.tokens)) throw new KdnError(502, `kdn: tokenize via ${url} failed (HTTP ${res.statusCode})`);
  return j.tokens;
}

const round3 = (x: number): number => Math.round(x * 1000) / 1000;
