/**
 * Real KV for the KDN: each document's KV is computed by a serving instance (a vLLM + LMCache, or
 * kvlab's emulator) whose LMCache remote backend is the KDN's Redis. CacheRoute's `kv_builder.py`
 * flow (reference/cacheroute.md §7, live-protocols.md §4.4): send the document in exactly the
 * prefix format the gateway uses, `max_tokens` 1, `temperature` 0, then wait until LMCache has
 * stored its chunks and read them back. Here the KDN computes the chunk keys it expects itself
 * (live/lmcache.ts: same tokens, model path, world size, dtype and chunk hashing as the
 * instances it injects into), so it records exactly those keys, and when they do not appear it
 * looks at the keys the builder did write to say which setting differs:
 *
 * - `model`: LMCache `model_name` (vLLM `--model` path) — checked first against the builder's
 *   `/v1/models` `root`;
 * - `world_size` (TP × PP), `dtype` (LMCache key dtype), `fmt` (key prefix);
 * - `chunk hashing`: same model/world size/dtype but other chunk hashes (PYTHONHASHSEED, the hash
 *   variant / `pre_caching_hash_algorithm`, `chunk_size`, the tokenizer or the prefix format).
 * The emulator also reports its LMCache settings (`/emulator/status`), so a mismatched emulator
 * is refused before the first build.
 *
 * The bytes are the builder's own (whatever its serde wrote), copied verbatim: nothing is
 * synthesised here.
 */
import type { Redis } from 'ioredis';
import { request } from 'undici';
import { kvBytesKey, metadataKey, type LmcacheChunk, type LmcacheConfig } from './lmcache.js';

/** Options of a {@link KvBuilder}. */
export interface KvBuilderOptions {
  /** base URL of the builder instance (OpenAI API). */
  url: string;
  /** served model name to put in the build requests (default: the first of its `/v1/models`). */
  model?: string;
  /** how long to wait for LMCache to store a document's chunks after the answer, ms (default 30,000). */
  timeoutMs?: number;
  /** poll period while waiting, ms (default 25). */
  pollMs?: number;
  /**
   * also compare the LMCache settings kvlab's emulator reports (`/emulator/status`) before the
   * first build (default true; a vLLM has no such route and is checked after its first build).
   */
  statusCheck?: boolean;
  /**
   * the builder must run CacheBlend (LMCache `enable_blending`) with this `blend_special_str`;
   * absent: it must not (a blending LMCache keys segments, not prefix chunks). Checked on
   * kvlab's emulator (`/emulator/status`); a vLLM shows it only by the keys it writes.
   */
  blendSeparator?: string;
}

/** A setting that differs between the builder and this KDN: the field and what each side has. */
export class BuilderMismatch extends Error {
  constructor(
    /** `model` | `world_size` | `dtype` | `fmt` | `chunk hashing` | `remote_url` | `enable_blending` | `blend_special_str` */
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = 'BuilderMismatch';
  }
}

/** What one build stored, per rank key: the values copied out of the builder's LMCache entries. */
export interface BuiltChunks {
  /** key string (without suffix) → [kv_bytes, metadata] values. */
  values: Map<string, [Buffer, Buffer]>;
  /** wall ms from sending the request to having every chunk. */
  ms: number;
}

/** One build request: the document in the gateway's prefix format. */
export type BuildPrompt = { kind: 'chat'; messages: Array<{ role: 'system'; content: string }> } | { kind: 'completion'; prompt: string };

/** LMCache-looking keys (`fmt@model@ws@rank@hash@dtype`) a Redis holds outside the KDN's namespace. */
async function scanLmcacheKeys(redis: Redis): Promise<Set<string>> {
  const out = new Set<string>();
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', '*@*metadata', 'COUNT', 1000);
    cursor = next;
    for (const k of keys) if (!k.startsWith('kdn:')) out.add(k.slice(0, -'metadata'.length));
  } while (cursor !== '0');
  return out;
}

/** The builder side of the KDN (module doc). */
export class KvBuilder {
  private known: Set<string> | null = null;
  private readonly timeoutMs: number;
  private readonly pollMs: number;

  private constructor(
    readonly url: string,
    /** served model name used in build requests. */
    readonly model: string,
    private readonly redis: Redis,
    private readonly cfg: LmcacheConfig,
    opts: KvBuilderOptions,
  ) {
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.pollMs = opts.pollMs ?? 25;
  }

  /**
   * Connects to a builder and checks what it can tell before any build: its model path
   * (`/v1/models` `root`, vLLM and the emulator) and, for kvlab's emulator, its LMCache world
   * size, dtype, chunk size, hash variant and hash seed (`/emulator/status`).
   * @param redis the KDN's Redis, which must be the builder's LMCache remote backend
   * @throws BuilderMismatch naming the field; Error when the builder cannot be reached
   */
  static async connect(opts: KvBuilderOptions, redis: Redis, cfg: LmcacheConfig): Promise<KvBuilder> {
    const base = opts.url.replace(/\/+$/, '');
    let models: { data?: Array<{ id?: string; root?: string }> };
    try {
      const res = await request(`${base}/v1/models`, { headersTimeout: 10_000, bodyTimeout: 10_000 });
      if (res.statusCode !== 200) throw new Error(`GET /v1/models answered ${res.statusCode}`);
      models = (await res.body.json()) as typeof models;
    } catch (e) {
      throw new Error(`kdn: builder ${base} unreachable: ${(e as Error).message}`);
    }
    const card = (opts.model ? models.data?.find((m) => m.id === opts.model) : models.data?.[0]) ?? null;
    if (!card?.id) throw new Error(`kdn: builder ${base} serves no model${opts.model ? ` named ${JSON.stringify(opts.model)}` : ''} (GET /v1/models)`);
    const root = card.root ?? card.id;
    if (root !== cfg.model) throw new BuilderMismatch('model', `kdn: builder ${base}: model: it runs ${JSON.stringify(root)} (its LMCache model_name, vLLM --model), this KDN keys KV for ${JSON.stringify(cfg.model)} (--model): the chunk keys would never match`);
    // kvlab's emulator says its LMCache settings; vLLM has no such route (then: after the first build)
    const st = opts.statusCheck === false ? null : await request(`${base}/emulator/status`, { headersTimeout: 5_000, bodyTimeout: 5_000 }).catch(() => null);
    if (st && st.statusCode === 200) {
      const j = (await st.body.json()) as { lmcache?: Partial<LmcacheConfig> & { redis?: string } | null };
      const l = j.lmcache;
      if (!l) throw new BuilderMismatch('remote_url', `kdn: builder ${base}: it has no LMCache Redis (start it with --redis set to this KDN's Redis)`);
      const checks: Array<[string, unknown, unknown, string]> = [
        ['world_size', l.worldSize, cfg.worldSize, '--world-size'],
        ['dtype', l.dtype, cfg.dtype, '--dtype'],
        ['fmt', l.fmt, cfg.fmt, 'key format'],
        ['chunk hashing', l.chunkSize, cfg.chunkSize, 'chunk_size'],
        ['chunk hashing', l.variant, cfg.variant, '--hash-variant'],
        ['chunk hashing', l.hashSeed, cfg.hashSeed, '--hash-seed (PYTHONHASHSEED)'],
      ];
      const b = (l as { blend?: { blend_special_str?: string } | null }).blend ?? null;
      if (opts.blendSeparator !== undefined && !b) throw new BuilderMismatch('enable_blending', `kdn: builder ${base}: enable_blending: it does not run CacheBlend, this KDN's blend KV needs it (start it with --blend)`);
      if (opts.blendSeparator === undefined && b) throw new BuilderMismatch('enable_blending', `kdn: builder ${base}: enable_blending: it runs CacheBlend (per-segment keys), this KDN's prefix KV needs it off (give it as --blend-builder)`);
      if (b && b.blend_special_str !== opts.blendSeparator) throw new BuilderMismatch('blend_special_str', `kdn: builder ${base}: blend_special_str: it uses ${JSON.stringify(b.blend_special_str)}, this KDN ${JSON.stringify(opts.blendSeparator)} (--blend-separator)`);
      for (const [field, theirs, ours, flag] of checks) {
        if (theirs !== undefined && theirs !== ours) throw new BuilderMismatch(field, `kdn: builder ${base}: ${field}: it uses ${JSON.stringify(theirs)}, this KDN ${JSON.stringify(ours)} (${flag})`);
      }
    } else if (st) await st.body.dump();
    return new KvBuilder(base, card.id, redis, cfg, opts);
  }

  /**
   * Builds one document: sends `prompt` with `max_tokens` 1, waits until every `expected` chunk
   * key has both its entries in the KDN's Redis, and returns their values.
   * @throws BuilderMismatch naming the field when other keys appeared instead (or none: the
   *   builder does not store into this Redis); Error when the builder fails the request.
   */
  async build(prompt: BuildPrompt, expected: readonly LmcacheChunk[]): Promise<BuiltChunks> {
    const t0 = performance.now();
    this.known ??= await scanLmcacheKeys(this.redis);
    const body =
      prompt.kind === 'chat'
        ? { model: this.model, messages: prompt.messages, max_tokens: 1, temperature: 0, stream: false }
        : { model: this.model, prompt: prompt.prompt, max_tokens: 1, temperature: 0, stream: false };
    const res = await request(`${this.url}/v1/${prompt.kind === 'chat' ? 'chat/completions' : 'completions'}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
    }).catch((e: Error) => {
      throw new Error(`kdn: builder ${this.url} unreachable: ${e.message}`);
    });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`kdn: builder ${this.url} answered ${res.statusCode}: ${text.slice(0, 200)}`);
    const keys = expected.flatMap((c) => c.keys);
    // LMCache stores after the prefill, asynchronously: wait for every entry (kv_bytes first, metadata last)
    const deadline = performance.now() + this.timeoutMs;
    for (;;) {
      const p = this.redis.pipeline();
      for (const k of keys) p.exists(metadataKey(k));
      const r = (await p.exec()) ?? [];
      if (r.every(([e, v]) => !e && Number(v) === 1)) break;
      if (performance.now() >= deadline) throw await this.diagnose(keys);
      await new Promise((s) => setTimeout(s, this.pollMs));
    }
    const g = this.redis.pipeline();
    for (const k of keys) g.getBuffer(kvBytesKey(k)).getBuffer(metadataKey(k));
    const vals = (await g.exec()) ?? [];
    const values = new Map<string, [Buffer, Buffer]>();
    keys.forEach((k, i) => {
      const kv = vals[2 * i]?.[1] as Buffer | null;
      const md = vals[2 * i + 1]?.[1] as Buffer | null;
      if (!kv || !md) throw new Error(`kdn: builder's chunk ${k} vanished from the KDN's Redis before it was read (eviction? give Redis more memory)`);
      values.set(k, [kv, md]);
    });
    for (const k of keys) this.known.add(k);
    return { values, ms: performance.now() - t0 };
  }

  /** Why the expected keys did not appear: compares the keys the builder wrote with ours. */
  private async diagnose(expected: readonly string[]): Promise<Error> {
    const now = await scanLmcacheKeys(this.redis);
    const fresh = [...now].filter((k) => !this.known!.has(k));
    for (const k of fresh) this.known!.add(k);
    const where = `kdn: builder ${this.url}`;
    if (fresh.length === 0) {
      return new BuilderMismatch('remote_url', `${where}: it stored no LMCache chunk in this KDN's Redis within ${this.timeoutMs} ms: its LMCache remote_url must be this KDN's Redis (and the document must be at least one ${this.cfg.chunkSize}-token chunk)`);
    }
    const parse = (k: string) => {
      const p = k.split('@');
      return { fmt: p[0], model: p[1], ws: Number(p[2]), hash: p[4], dtype: p[5] };
    };
    const theirs = parse(fresh[0]!);
    const ours = parse(expected[0]!);
    if (theirs.model !== ours.model) return new BuilderMismatch('model', `${where}: model: its chunks are keyed for ${JSON.stringify(theirs.model)}, this KDN's for ${JSON.stringify(ours.model)} (--model)`);
    if (theirs.ws !== ours.ws) return new BuilderMismatch('world_size', `${where}: world_size: its chunks are keyed for world size ${theirs.ws}, this KDN's for ${ours.ws} (--world-size)`);
    if (theirs.dtype !== ours.dtype) return new BuilderMismatch('dtype', `${where}: dtype: its chunks are keyed ${JSON.stringify(theirs.dtype)}, this KDN's ${JSON.stringify(ours.dtype)} (--dtype)`);
    if (theirs.fmt !== ours.fmt) return new BuilderMismatch('fmt', `${where}: fmt: its keys start ${JSON.stringify(theirs.fmt)}, this KDN's ${JSON.stringify(ours.fmt)}`);
    return new BuilderMismatch('chunk hashing', `${where}: chunk hashing: it stored ${fresh.length} key(s) for the same model, world size and dtype but other chunk hashes (e.g. ${theirs.hash} vs ${ours.hash}): check PYTHONHASHSEED (--hash-seed), the hash variant (--hash-variant), chunk_size, the tokenizer and the prefix format`);
  }
}
