/**
 * The live gateway: an OpenAI-compatible front door (fastify) that runs the policy engine on
 * the wall clock and routes every request to a vLLM-compatible backend, injecting knowledge as
 * text or as KV (through the KDN) as the engine decides.
 *
 * Routes: `POST /v1/completions`, `POST /v1/chat/completions` (SSE and not), `GET /v1/models`,
 * `GET /health`, `GET /metrics` (Prometheus), `GET /debug/status`, `GET|PUT /debug/strategy`.
 *
 * Request life (times in model ms = wall ms since start × `timeScale`):
 *  1. body validated (400 naming the field); knowledge = `knowledge_ids` (string or list), or
 *     `RAG: true` → retrieval from the KDN catalogue (best word overlap of the question with each
 *     document's first line and first 300 characters; ties → earliest registered; see
 *     {@link KnowledgeStore.retrieve});
 *  2. the knowledge text goes in front of the prompt in the KDN's prefix format (live/kdn.ts
 *     `KnowledgeFormat`): `chat-system` → one system message per document before the client's
 *     messages (completions: the rendered system block before the prompt); `completion` →
 *     document text + "\n" + prompt. So text and KV requests have the same tokens and LMCache
 *     prefix hashes match;
 *  3. prompt tokens come from the local Llama-3 tokenizer (live/tokenizer.ts; the document's
 *     prefix tokens are cached per kid), block ids from live/block-hash.ts `fastBlockIds` with
 *     the instances' block size — exactly the ids the emulator keys its prefix cache with;
 *  4. `engine.decide` then `engine.onDispatch`; `Injection_type` in the body (CacheRoute's field:
 *     text | prompt | kvcache | kv | kv_cache | kv-cache | hybrid) **forces** the intent on the
 *     engine's chosen instance unless `honorInjectionType` is false (then it is ignored);
 *  5. kvcache/hybrid: the KDN copies the KV chunks into the chosen instance's LMCache Redis
 *     (`POST /knowledge/inject_ready_kv`, hybrid: only `reusedTokens` tokens); its ACK →
 *     `engine.onKvTransferDone`. KDN or its target Redis failing → the request falls back to text
 *     (the prompt already holds the text) and the record says why (`decision.fallback`);
 *  6. the prompt goes to the backend, always streamed from the backend (with usage) so the first
 *     non-empty chunk gives the observed TTFT (`engine.onFirstToken`); a non-streaming client gets
 *     the assembled OpenAI response (`upstreamMode: 'direct'` sends non-streaming requests as
 *     they are instead: no TTFT then). `onComplete` / `onAbort` at the end.
 *  7. A failure before the backend's first byte (connection refused, HTTP 5xx) is retried once on
 *     another instance (re-decided without the failed one); a connection failure also takes the
 *     instance out (`engine.onInstanceDown`) until its `/health` answers again. A failure after
 *     the first byte ends the stream with an in-band error event (`data: {"error": …}` then
 *     `[DONE]`), or a 502 for non-streaming clients; the record is `failed`.
 *
 * The decision travels back in the response header `x-kvlab-decision` (JSON, ASCII): decision,
 * prediction and the prepare-side observations (prepare, link wait, transfer), so a replay client
 * can keep them (live/replay.ts). Records go to `out/records.jsonl` (live/recorder.ts).
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import client from 'prom-client';
import { request as undiciRequest, type Dispatcher } from 'undici';
import { Engine } from '../engine/engine.js';
import { createStrategy, STRATEGY_NAMES } from '../engine/strategies/index.js';
import type { ClusterSpec, Decision, Intent, KnowledgeRef, TraceRequest } from '../engine/types.js';
import { readClusterFile, resolveCluster, type ResolvedCluster } from '../sim/cluster.js';
import { DEFAULT_PROFILE } from '../sim/profiles.js';
import { Backend, BlockHashMap, classifyChunk, HealthMonitor, isConnectError, KvEventSubscriber, loadKvEventModules, SseSplitter, type BackendOptions, type BackendSpec, type HealthOptions, type KvEventSource, type StreamUsage } from './backends.js';
import { fastBlockIds } from './block-hash.js';
import { acceptAnyJson, ApiError, badRequest, chatRequestSchema, completionRequestSchema, modelNotFound, parseBody, type ChatRequest, type CompletionRequest } from './openai.js';
import { columnarAlternatives, Recorder, writeConfig, type RecordObserved, type TimingRecord } from './recorder.js';
import { BOS_ID, encodePrompt, encodeSystemPrefix, encodeText, renderLlama3Chat, type ChatMessage } from './tokenizer.js';

/** Options of {@link startGateway}. */
export interface GatewayOptions {
  /** listen address (default 127.0.0.1). */
  host?: string;
  /** listen port (default 7001, CacheRoute's scheduler port; 0 = any free port). */
  port?: number;
  /** the instances, in cluster order. */
  backends: BackendSpec[];
  /** KDN base URL (live/kdn.ts or CacheRoute's KDN); null/undefined = no knowledge service. */
  kdnUrl?: string | null;
  /** strategy name (engine/strategies) and parameters. */
  strategy: string;
  strategyParams?: Record<string, unknown>;
  /** the engine's cluster model: a resolved cluster, or a cluster file path; default: `profile` × backends. */
  cluster?: ResolvedCluster | string;
  /** instance profile when no cluster is given (default rtx5090x8-llama3-70b). */
  profile?: string;
  /** model ms per wall ms (match the emulators' --time-scale); default 1. */
  timeScale?: number;
  /** run directory for records.jsonl / summary.json / config.json; none when absent. */
  out?: string;
  /** served model name; default: asked from the first backend's /v1/models. */
  model?: string;
  /** engine seed (default 1). */
  seed?: number;
  /** insert routed prefixes into the engine index at dispatch (default true). */
  predictOnRoute?: boolean;
  /** force the body's `Injection_type` (default true); false ignores it. */
  honorInjectionType?: boolean;
  /** non-streaming client requests: `stream` (default: stream upstream, assemble, observe TTFT) or `direct`. */
  upstreamMode?: 'stream' | 'direct';
  /** output tokens assumed for a chat request without max_tokens (default 256, the emulator's default). */
  defaultChatMaxTokens?: number;
  /** send the `x-kvlab-decision` header (default true). */
  decisionHeader?: boolean;
  /** retry a request that failed before its first byte once elsewhere (default true). */
  retry?: boolean;
  health?: HealthOptions;
  pool?: BackendOptions;
  /** catalogue refresh period for RAG retrieval, ms (default 30,000). */
  catalogueRefreshMs?: number;
  /**
   * vLLM KV-event sources, one per backend (same order; null = none): the engine's prefix index
   * then follows what the instances really store and evict (BlockStored / BlockRemoved /
   * AllBlocksCleared), on top of predict-on-route. Events of prefixes this gateway routed are
   * mapped to engine block ids through their vLLM hashes (sha256_cbor, `hashSeed`).
   */
  kvEvents?: Array<KvEventSource | null>;
  /** PYTHONHASHSEED of the instances (vLLM NONE_HASH seed), default "0". */
  hashSeed?: string;
  /** keep every routed engine request for `requests()` (default false; the demo re-simulates them). */
  keepRequests?: boolean;
  /** pino logging (fastify `logger`), default false. */
  logger?: boolean | object;
}

/** A running gateway. */
export interface GatewayHandle {
  url: string;
  host: string;
  port: number;
  app: FastifyInstance;
  engine: Engine;
  backends: Backend[];
  recorder: Recorder | null;
  cluster: ResolvedCluster;
  timeScale: number;
  /** Engine clock: model ms since the gateway started. */
  now(): number;
  /**
   * The engine requests routed so far (in arrival order; arrival in model ms since start), for
   * re-simulating exactly the same workload (live/demo.ts). Empty unless `keepRequests`.
   */
  requests(): TraceRequest[];
  /**
   * Fetches knowledge items from the KDN and tokenises their prefixes now (cold-start warm-up,
   * so the first requests do not pay for it). @throws like a request naming unknown kids.
   */
  prefetchKnowledge(kids: string[]): Promise<void>;
  /** Switches the strategy (as PUT /debug/strategy). @throws Error for unknown names/params. */
  setStrategy(name: string, params?: Record<string, unknown>): void;
  /** Stops accepting, fails in-flight requests ("gateway shutting down"), writes summary.json. */
  close(): Promise<void>;
}

/** The `x-kvlab-decision` response header, parsed. */
export interface DecisionHeader {
  id: string;
  arrival_ms: number;
  strategy: string;
  instance: string;
  kdn: string | null;
  intent: Intent;
  planned_intent?: Intent;
  fallback?: string | null;
  reason: string;
  reused_tokens: number;
  cached_tokens: number;
  input_tokens: number;
  knowledge_tokens: number;
  predicted: TimingRecord['predicted'];
  observed: { prepare_ms: number; link_wait_ms: number; transfer_ms: number; transfer_tokens: number; wire_bytes: number };
  retries: number;
}

// ------------------------------------------------------------------------------------------
// Knowledge: catalogue cache and retrieval

/** A knowledge document as the gateway keeps it (immutable: kid = sha256 of the text). */
export interface KnowledgeItem {
  kid: string;
  content: string;
  /** KDN prefix format of its KV. */
  format: 'chat-system' | 'completion';
  kvReady: boolean;
  /** cached token ids: chat-system → the whole system block incl. BOS (= KDN `tokens`). */
  sysIds?: number[];
  /** the system block without BOS, for a 2nd..nth document. */
  sysTailIds?: number[];
}

/** Thrown when the KDN cannot be reached (connection / 5xx). */
export class KdnUnavailable extends Error {}

const STOP = new Set('the and for are was were with that this from what which who whom whose when where why how did does has have had its into onto than then them they their there these those about after before over under between also been being not but can could should would will shall may might must you your our ours his her hers she him'.split(' '));

/** Lower-case words of >= 3 letters/digits, stop words removed (retrieval features). */
export function words(text: string): Set<string> {
  const out = new Set<string>();
  for (const w of text.toLowerCase().normalize('NFKC').split(/[^\p{L}\p{N}]+/u)) if (w.length >= 3 && !STOP.has(w)) out.add(w);
  return out;
}

/** Knowledge cache in front of the KDN (text by kid, catalogue for retrieval). */
export class KnowledgeStore {
  private readonly items = new Map<string, KnowledgeItem>();
  private catalogue: Array<{ kid: string; sig: Set<string> }> = [];
  private catalogueAt = -Infinity;
  /** KDN requests that failed (connection/5xx). */
  failures = 0;

  constructor(
    readonly kdnUrl: string | null,
    private readonly refreshMs = 30_000,
  ) {}

  /** Items cached so far. */
  get size(): number {
    return this.items.size;
  }

  private async post(path: string, body: unknown): Promise<any> {
    if (!this.kdnUrl) throw new KdnUnavailable('no KDN configured (--kdn)');
    let res;
    try {
      res = await undiciRequest(`${this.kdnUrl}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), headersTimeout: 10_000, bodyTimeout: 60_000 });
    } catch (e) {
      this.failures++;
      throw new KdnUnavailable(`KDN ${this.kdnUrl} unreachable: ${(e as Error).message}`);
    }
    const text = await res.body.text();
    if (res.statusCode >= 500) {
      this.failures++;
      throw new KdnUnavailable(`KDN ${path} answered ${res.statusCode}: ${text.slice(0, 200)}`);
    }
    let j: unknown;
    try {
      j = JSON.parse(text);
    } catch {
      throw new KdnUnavailable(`KDN ${path} answered non-JSON (${res.statusCode})`);
    }
    if (res.statusCode !== 200) throw new ApiError(res.statusCode === 404 ? 404 : 400, `KDN ${path}: ${(j as { detail?: string }).detail ?? text}`, res.statusCode === 404 ? 'NotFoundError' : 'BadRequestError', 'knowledge_ids');
    return j;
  }

  /**
   * The items of `kids`, in order, from the cache or the KDN.
   * @throws ApiError 404 naming unknown kids; KdnUnavailable when uncached ones cannot be fetched.
   */
  async get(kids: string[]): Promise<KnowledgeItem[]> {
    const missing = [...new Set(kids.filter((k) => !this.items.has(k)))];
    if (missing.length) {
      const j = (await this.post('/knowledge/search/text', { knowledge_ids: missing, need_fields: ['content', 'kv_ready', 'format', 'tokens'] })) as { items: Array<{ id: string; content: string; kv_ready?: number; format?: string }>; miss: string[] };
      for (const it of j.items ?? []) {
        if (typeof it.content !== 'string') continue;
        this.items.set(it.id, { kid: it.id, content: it.content, format: it.format === 'completion' ? 'completion' : 'chat-system', kvReady: Number(it.kv_ready ?? 0) === 1 });
      }
      const unknown = missing.filter((k) => !this.items.has(k));
      if (unknown.length) throw new ApiError(404, `unknown knowledge id${unknown.length > 1 ? 's' : ''}: ${unknown.join(', ')}`, 'NotFoundError', 'knowledge_ids');
    }
    return kids.map((k) => this.items.get(k)!);
  }

  /** Adds an item directly (tests, demo pre-warming). */
  put(item: KnowledgeItem): void {
    this.items.set(item.kid, item);
  }

  /**
   * Deterministic retrieval for `RAG: true`: the catalogue document whose signature (words of
   * its first line and first 300 characters) shares the most distinct words with `query`; ties
   * go to the earliest registered. Returns null when nothing overlaps. The catalogue comes from
   * the KDN (`/knowledge/snapshot` then `/knowledge/search/text`) and is refreshed every
   * `refreshMs` (and when empty).
   */
  async retrieve(query: string, nowWall = performance.now()): Promise<string | null> {
    if (this.catalogue.length === 0 || nowWall - this.catalogueAt > this.refreshMs) await this.refresh(nowWall);
    const q = words(query);
    let best: string | null = null;
    let bestScore = 0;
    for (const c of this.catalogue) {
      let s = 0;
      for (const w of q) if (c.sig.has(w)) s++;
      if (s > bestScore) {
        bestScore = s;
        best = c.kid;
      }
    }
    return best;
  }

  private async refresh(nowWall: number): Promise<void> {
    const snap = (await this.post('/knowledge/snapshot', { need_fields: ['kid'] })) as { items: Array<{ kid: string }> };
    const kids = snap.items.map((i) => i.kid);
    for (let i = 0; i < kids.length; i += 200) {
      const part = kids.slice(i, i + 200).filter((k) => !this.items.has(k));
      if (part.length) await this.get(part).catch((e) => {
        if (!(e instanceof ApiError)) throw e; // deleted meanwhile: skip
      });
    }
    this.catalogue = kids
      .filter((k) => this.items.has(k))
      .map((kid) => {
        const c = this.items.get(kid)!.content;
        const firstLine = c.split('\n', 1)[0]!;
        return { kid, sig: words(`${firstLine} ${c.slice(0, 300)}`) };
      });
    this.catalogueAt = nowWall;
  }
}

/** Token ids of a document's system block (cached on the item). */
function sysIds(it: KnowledgeItem): number[] {
  it.sysIds ??= encodeSystemPrefix(it.content);
  return it.sysIds;
}
function sysTailIds(it: KnowledgeItem): number[] {
  it.sysTailIds ??= encodeText(`<|start_header_id|>system<|end_header_id|>\n\n${it.content}<|eot_id|>`);
  return it.sysTailIds;
}

// ------------------------------------------------------------------------------------------
// Prompt building

/** The prompt the backend will see: upstream body, token ids, knowledge refs. */
export interface BuiltPrompt {
  kind: 'chat' | 'completion';
  /** body to send (gateway fields removed, knowledge inserted). */
  body: Record<string, unknown>;
  ids: number[];
  knowledge: KnowledgeRef[];
  knowledgeTokens: number;
  maxTokens: number;
  stream: boolean;
  includeUsage: boolean;
  /** the user's question text (last user message / prompt), for RAG and records. */
  question: string;
}

const GATEWAY_FIELDS = ['knowledge_ids', 'knowledge_id', 'RAG', 'Injection_type'];

function stripGatewayFields(body: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(body)) if (!GATEWAY_FIELDS.includes(k)) out[k] = v;
  return out;
}

/**
 * Builds the prompt of a chat request with knowledge `items` in front (one system message per
 * document, CacheRoute's KDN convention). Token ids equal what a vLLM/emulator with the
 * Llama-3-Instruct template computes for the upstream body.
 */
export function buildChat(body: ChatRequest, items: KnowledgeItem[], defaultMaxTokens: number): BuiltPrompt {
  const msgs = body.messages as ChatMessage[];
  const opts = { addGenerationPrompt: body.add_generation_prompt ?? true, continueFinalMessage: body.continue_final_message ?? false };
  const rest = renderLlama3Chat(msgs, opts).slice('<|begin_of_text|>'.length);
  let ids: number[];
  const knowledge: KnowledgeRef[] = [];
  if (items.length === 0) ids = encodeText(`<|begin_of_text|>${rest}`);
  else {
    ids = [];
    items.forEach((it, i) => {
      const part = i === 0 ? sysIds(it) : sysTailIds(it);
      for (const t of part) ids.push(t);
      knowledge.push({ kid: it.kid, tokens: part.length });
    });
    for (const t of encodeText(rest)) ids.push(t);
  }
  if (body.add_special_tokens) ids = [BOS_ID, ...ids];
  const up = stripGatewayFields(body as Record<string, unknown>);
  if (items.length) up.messages = [...items.map((it) => ({ role: 'system', content: it.content })), ...msgs];
  return finish('chat', up, ids, knowledge, body.max_completion_tokens ?? body.max_tokens ?? defaultMaxTokens, body, questionOf('chat', body));
}

/**
 * Builds the prompt of a completion request with knowledge in front: `chat-system` documents
 * as the rendered system block (`<|start_header_id|>system<|end_header_id|>\n\n{doc}<|eot_id|>`,
 * BOS from add_special_tokens), `completion` documents as `doc + "\n"`.
 * @throws ApiError 400 for a batch of several prompts.
 */
export function buildCompletion(body: CompletionRequest, items: KnowledgeItem[]): BuiltPrompt {
  let p = body.prompt as string | string[] | number[] | number[][];
  if (Array.isArray(p) && p.length > 0 && (typeof p[0] === 'string' || Array.isArray(p[0]))) {
    if (p.length !== 1) throw badRequest('prompt: the gateway routes one prompt per request (got a batch of ' + p.length + ')', 'prompt');
    p = p[0] as string | number[];
  }
  const addSpecial = body.add_special_tokens ?? true;
  const knowledge: KnowledgeRef[] = [];
  let ids: number[];
  let upPrompt: string | number[];
  if (typeof p === 'string') {
    if (items.length === 0) {
      ids = encodePrompt(p, addSpecial);
      upPrompt = p;
    } else if (items.every((it) => it.format === 'chat-system')) {
      ids = addSpecial ? [BOS_ID] : [];
      let text = '';
      items.forEach((it, i) => {
        const tail = i === 0 ? sysIds(it).slice(1) : sysTailIds(it);
        for (const t of tail) ids.push(t);
        knowledge.push({ kid: it.kid, tokens: tail.length + (i === 0 && addSpecial ? 1 : 0) });
        text += `<|start_header_id|>system<|end_header_id|>\n\n${it.content}<|eot_id|>`;
      });
      for (const t of encodeText(p)) ids.push(t);
      upPrompt = text + p;
    } else {
      // completion-format documents: doc + "\n" + prompt; BPE may merge across the newline, so
      // the whole string is tokenised (the KDN keys the document minus its last token)
      const ctx = items.map((it) => it.content).join('\n');
      upPrompt = `${ctx}\n${p}`;
      ids = encodePrompt(upPrompt, addSpecial);
      const docIds = encodePrompt(ctx, addSpecial);
      knowledge.push(...items.map((it, i) => ({ kid: it.kid, tokens: i === 0 ? docIds.length - 1 : 0 })));
    }
  } else {
    const pre: number[] = [];
    items.forEach((it, i) => {
      const part = it.format === 'chat-system' ? (i === 0 ? sysIds(it) : sysTailIds(it)) : encodePrompt(it.content + '\n', i === 0);
      pre.push(...part);
      knowledge.push({ kid: it.kid, tokens: part.length });
    });
    ids = [...pre, ...(p as number[])];
    upPrompt = ids;
  }
  const up = stripGatewayFields(body as Record<string, unknown>);
  up.prompt = upPrompt;
  return finish('completion', up, ids, knowledge, body.max_tokens ?? 16, body, typeof p === 'string' ? p : '');
}

function finish(kind: 'chat' | 'completion', up: Record<string, unknown>, ids: number[], knowledge: KnowledgeRef[], maxTokens: number, body: { stream?: boolean | null; stream_options?: { include_usage?: boolean | null } | null }, question: string): BuiltPrompt {
  const so = body.stream_options;
  return {
    kind,
    body: up,
    ids,
    knowledge,
    knowledgeTokens: knowledge.reduce((a, k) => a + k.tokens, 0),
    maxTokens,
    stream: body.stream ?? false,
    includeUsage: !!so && (so.include_usage ?? true),
    question,
  };
}

/** The user's question: the last user message (chat) or the prompt string (completions). */
export function questionOf(kind: 'chat' | 'completion', body: ChatRequest | CompletionRequest): string {
  if (kind === 'completion') {
    const p = (body as CompletionRequest).prompt;
    return typeof p === 'string' ? p : Array.isArray(p) && typeof p[0] === 'string' ? (p[0] as string) : '';
  }
  const msgs = (body as ChatRequest).messages as ChatMessage[];
  const users = msgs.filter((m) => m.role === 'user');
  const last = users[users.length - 1] ?? msgs[msgs.length - 1]!;
  return typeof last.content === 'string' ? last.content : (last.content ?? []).map((p) => p.text ?? '').join('\n');
}

/** CacheRoute's bool-ish parsing (`true/1/yes/y`). */
function boolish(v: unknown): boolean {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'string') return ['true', '1', 'yes', 'y'].includes(v.trim().toLowerCase());
  return false;
}

/**
 * Normalises CacheRoute's `Injection_type`: kvcache/kv/kv_cache/kv-cache → kvcache, text/prompt →
 * text, hybrid → hybrid; null/empty → null.
 * @throws ApiError 400 naming the field for anything else.
 */
export function normaliseInjectionType(v: unknown): Exclude<Intent, 'none'> | null {
  if (v === undefined || v === null || v === '') return null;
  if (typeof v !== 'string') throw badRequest(`Injection_type: expected a string (text, kvcache or hybrid), got ${JSON.stringify(v)}`, 'Injection_type');
  const s = v.trim().toLowerCase();
  if (['kvcache', 'kv', 'kv_cache', 'kv-cache'].includes(s)) return 'kvcache';
  if (s === 'text' || s === 'prompt') return 'text';
  if (s === 'hybrid') return 'hybrid';
  throw badRequest(`Injection_type: unknown value ${JSON.stringify(v)} (use text, kvcache or hybrid)`, 'Injection_type');
}

function knowledgeIds(body: Record<string, unknown>): string[] | null {
  const v = body.knowledge_ids ?? body.knowledge_id;
  const field = body.knowledge_ids !== undefined ? 'knowledge_ids' : 'knowledge_id';
  if (v === undefined || v === null) return null;
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.some((k) => typeof k !== 'string' || k.length === 0)) throw badRequest(`${field}: expected a knowledge id string or a list of them, got ${JSON.stringify(v).slice(0, 80)}`, field);
  return list as string[];
}

// ------------------------------------------------------------------------------------------
// Engine helpers

/**
 * Applies a forced intent (`Injection_type`) to the engine's decision on the same instance:
 * kvcache → the KDN's full coverage; hybrid → half of it (chunk-aligned; kvcache when that is
 * 0 or all); no coverage → text. The prediction is recomputed for the forced option.
 */
export function forceIntent(engine: Engine, req: TraceRequest, d: Decision, forced: Exclude<Intent, 'none'>, now: number): Decision {
  if (req.knowledgeTokens <= 0 || d.intent === forced) return d;
  const ctx = engine.context(req, now);
  let intent: Intent = forced;
  let reuse = 0;
  let kdn = -1;
  let reason = `${d.reason};forced-${forced}`;
  if (forced !== 'text') {
    const kc = ctx.kdnFor(d.instance);
    if (!kc || kc.reuseTokens <= 0) {
      intent = 'text';
      reason += ';no-kdn-kv';
    } else {
      kdn = kc.kdn;
      reuse = kc.reuseTokens;
      if (forced === 'hybrid') {
        const chunk = engine.cluster.chunkTokens;
        const half = Math.floor(reuse / 2 / chunk) * chunk;
        if (half > 0 && half < reuse) reuse = half;
        else intent = 'kvcache';
      }
    }
  }
  const p = ctx.predict(d.instance, intent, reuse);
  return {
    ...d,
    intent,
    kdn,
    reusedTokens: reuse,
    predicted: { prepareMs: p.prepareMs, linkWaitMs: p.linkWaitMs, transferMs: p.transferMs, kvLoadMs: p.kvLoadMs, queueMs: p.queueMs, prefillMs: p.prefillMs, ttftMs: p.ttftMs },
    reason,
  };
}

/** Resolves the engine's cluster: given, from a file, or `profile` × backends with KDN defaults. */
export function gatewayCluster(opts: Pick<GatewayOptions, 'cluster' | 'profile' | 'backends'>): ResolvedCluster {
  let rc: ResolvedCluster;
  if (opts.cluster && typeof opts.cluster === 'object') rc = opts.cluster;
  else {
    const file = typeof opts.cluster === 'string' ? readClusterFile(opts.cluster) : null;
    rc = resolveCluster(file, { profile: opts.profile, instances: file?.instances === undefined ? opts.backends.length : undefined }, DEFAULT_PROFILE);
  }
  if (rc.spec.instances.length !== opts.backends.length) {
    throw new Error(`cluster: ${rc.spec.instances.length} instances but ${opts.backends.length} backends (--backends): they must match one to one`);
  }
  return rc;
}

// ------------------------------------------------------------------------------------------

interface Flight {
  id: string;
  kind: 'chat' | 'completion';
  tArr: number;
  req: TraceRequest;
  d: Decision | null;
  planned: Intent | null;
  fallback: string | null;
  retries: number;
  linkWait: number;
  transfer: number;
  transferTokens: number;
  wireBytes: number;
  /** KDN inject round trip (model ms), -1 when none. */
  ackMs: number;
  tSend: number;
  tFirst: number;
  tDone: number;
  usage: StreamUsage | null;
  completionTokens: number;
  abort: AbortController;
  finished: boolean;
  /** set by close(): the reason to fail with. */
  killed: string | null;
}

const ID_RE = /^[\w.:-]{1,128}$/;

/** Starts the gateway; resolves once it listens. @throws Error for bad options (named). */
export async function startGateway(opts: GatewayOptions): Promise<GatewayHandle> {
  const ts = opts.timeScale ?? 1;
  if (!(ts > 0) || !Number.isFinite(ts)) throw new Error(`timeScale must be a finite number > 0 (got ${opts.timeScale})`);
  const rc = gatewayCluster(opts);
  const cluster: ClusterSpec = rc.spec;
  const ids = cluster.instances.map((s) => s.id);
  const kdnIds = cluster.kdns.map((k) => k.id);
  const blockSize = cluster.instances[0]!.engine.blockSizeTokens;
  let strategyName = opts.strategy;
  let strategyParams = { ...(rc.strategyParams[opts.strategy] ?? {}), ...(opts.strategyParams ?? {}) };
  const engine = new Engine(cluster, createStrategy(strategyName, strategyParams), { seed: opts.seed ?? 1, predictOnRoute: opts.predictOnRoute });
  const backends = opts.backends.map((s, i) => new Backend({ ...s, id: ids[i]! }, i, opts.pool));
  const kdnUrl = opts.kdnUrl ? opts.kdnUrl.replace(/\/+$/, '') : null;
  const store = new KnowledgeStore(kdnUrl, opts.catalogueRefreshMs);
  const t0 = performance.now();
  const now = (): number => (performance.now() - t0) * ts;
  const honor = opts.honorInjectionType ?? true;
  const upstreamMode = opts.upstreamMode ?? 'stream';
  const chatDefault = opts.defaultChatMaxTokens ?? 256;
  const sendHeader = opts.decisionHeader ?? true;
  const retryOn = opts.retry ?? true;
  const keepRequests = opts.keepRequests ?? false;
  const routed: TraceRequest[] = [];
  const inflight = new Map<string, Flight>();
  let seq = 0;
  let closing = false;

  // records are not kept in memory (a gateway runs long): close() reads the file back for the summary
  const recorder = opts.out ? new Recorder(opts.out, { keep: false, meta: { strategy: strategyName, instances: ids.length, profile: cluster.instances[0]!.profile.name, time_scale: ts, backends: backends.map((b) => b.url), kdn: kdnUrl } }) : null;
  if (opts.out) {
    writeConfig(opts.out, {
      source: 'live',
      strategy: strategyName,
      strategy_params: strategyParams,
      seed: opts.seed ?? 1,
      time_scale: ts,
      kdn: kdnUrl,
      backends: backends.map((b) => ({ id: b.spec.id, url: b.url, lmcache_redis: b.spec.lmcacheRedis ? { ...b.spec.lmcacheRedis, password: undefined } : null })),
      cluster: {
        instances: cluster.instances.map((s) => ({ id: s.id, profile: s.profile.name, engine: { ...s.engine, kvCapacityTokens: Number.isFinite(s.engine.kvCapacityTokens) ? s.engine.kvCapacityTokens : 'inf' } })),
        kdns: cluster.kdns.map((k) => ({ id: k.id, compression: k.compression, text_fetch_ms: k.textFetchMs })),
        links: cluster.links,
        chunk_tokens: cluster.chunkTokens,
      },
    });
  }

  // ---- metrics (own registry: several gateways may live in one process)
  const registry = new client.Registry();
  const mRequests = new client.Counter({ name: 'kvlab_gateway_requests_total', help: 'Requests finished, by endpoint and status (ok|failed|rejected|client_error).', labelNames: ['endpoint', 'status'], registers: [registry] });
  const mTtft = new client.Histogram({ name: 'kvlab_gateway_ttft_seconds', help: 'Observed time to first token at the gateway (model seconds).', buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80], registers: [registry] });
  const mE2e = new client.Histogram({ name: 'kvlab_gateway_e2e_seconds', help: 'Observed end-to-end latency at the gateway (model seconds).', buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160], registers: [registry] });
  const mIntents = new client.Counter({ name: 'kvlab_gateway_intents_total', help: 'Executed injection intents.', labelNames: ['intent'], registers: [registry] });
  const mFallbacks = new client.Counter({ name: 'kvlab_gateway_fallbacks_total', help: 'KV injections that fell back to text, by reason.', labelNames: ['reason'], registers: [registry] });
  const mRetries = new client.Counter({ name: 'kvlab_gateway_retries_total', help: 'Requests retried on another instance after a failure before the first byte.', registers: [registry] });
  const mLinkBusy = new client.Counter({ name: 'kvlab_gateway_kdn_link_busy_seconds_total', help: 'KDN link busy time reported by KDN ACKs (transfer_ms), model seconds.', labelNames: ['kdn', 'instance'], registers: [registry] });
  const mLinkWait = new client.Counter({ name: 'kvlab_gateway_kdn_link_wait_seconds_total', help: 'KDN link queueing reported by KDN ACKs (queue_ms), model seconds.', labelNames: ['kdn', 'instance'], registers: [registry] });
  new client.Gauge({
    name: 'kvlab_gateway_instance_booked_prefill_tokens',
    help: 'Uncached prompt tokens booked by the engine on each instance (dispatched, no first token yet).',
    labelNames: ['instance'],
    registers: [registry],
    collect() {
      engine.loads.loads.forEach((l, i) => this.set({ instance: ids[i]! }, l.prefillTokens));
    },
  });
  new client.Gauge({
    name: 'kvlab_gateway_instance_booked_work_ms',
    help: "Engine's predicted prefill backlog per instance (model ms).",
    labelNames: ['instance'],
    registers: [registry],
    collect() {
      const t = now();
      ids.forEach((id, i) => this.set({ instance: id }, engine.loads.backlogMs(i, t)));
    },
  });
  new client.Gauge({
    name: 'kvlab_gateway_instance_inflight',
    help: 'Requests booked on each instance (dispatched, not finished).',
    labelNames: ['instance'],
    registers: [registry],
    collect() {
      engine.loads.loads.forEach((l, i) => this.set({ instance: ids[i]! }, l.inflight));
    },
  });
  new client.Gauge({
    name: 'kvlab_gateway_instance_up',
    help: '1 when the instance is routable.',
    labelNames: ['instance'],
    registers: [registry],
    collect() {
      engine.up.forEach((u, i) => this.set({ instance: ids[i]! }, u ? 1 : 0));
    },
  });

  // ---- health
  const health = new HealthMonitor(
    backends,
    (b, reason) => {
      const lost = engine.onInstanceDown(b.index, now());
      app.log.warn(`instance ${b.spec.id} (${b.url}) down: ${reason}; released ${lost.length} booked requests`);
    },
    (b) => {
      engine.onInstanceUp(b.index);
      app.log.info(`instance ${b.spec.id} (${b.url}) up again`);
    },
    opts.health,
  );

  // ---- KV events
  const kvSources = opts.kvEvents ?? [];
  if (kvSources.length && kvSources.length !== backends.length) throw new Error(`kvEvents: ${kvSources.length} sources for ${backends.length} backends (one per backend, null for none)`);
  let hashMap: BlockHashMap | null = null;
  const subscribers: KvEventSubscriber[] = [];
  if (kvSources.some(Boolean)) {
    await loadKvEventModules();
    hashMap = new BlockHashMap(blockSize, opts.hashSeed ?? '0');
    const hm = hashMap;
    kvSources.forEach((src, i) => {
      if (!src) return;
      subscribers.push(
        new KvEventSubscriber(
          i,
          src,
          (batch) => {
            for (const ev of batch.events) {
              if (ev.type === 'AllBlocksCleared') engine.onKvEvent({ instance: i, kind: 'cleared', blocks: [] });
              else {
                const blocks = hm.lookup(ev.blockHashes);
                if (blocks.length) engine.onKvEvent({ instance: i, kind: ev.type === 'BlockStored' ? 'stored' : 'removed', blocks });
              }
            }
          },
          (lost) => {
            // lost batches: this instance's index can no longer be trusted
            engine.onKvEvent({ instance: i, kind: 'cleared', blocks: [] });
            app.log.warn(`instance ${ids[i]}: ${lost} KV-event batches lost; its prefix index was cleared`);
          },
        ),
      );
    });
  }
  new client.Gauge({
    name: 'kvlab_gateway_kv_event_batches',
    help: 'KV-event batches applied per instance (and gaps / lost batches).',
    labelNames: ['instance', 'what'],
    registers: [registry],
    collect() {
      for (const s of subscribers) {
        this.set({ instance: ids[s.index]!, what: 'applied' }, s.batches);
        this.set({ instance: ids[s.index]!, what: 'gaps' }, s.gaps);
        this.set({ instance: ids[s.index]!, what: 'lost' }, s.lost);
        this.set({ instance: ids[s.index]!, what: 'replayed' }, s.replayed);
      }
    },
  });

  // ---- served model
  let served: string | null = opts.model ?? null;
  let modelsBody: unknown = null;
  const fetchModels = async (): Promise<void> => {
    for (const b of backends) {
      try {
        const r = await b.get('/v1/models', 2000);
        if (r.status !== 200) continue;
        const j = JSON.parse(r.text) as { data?: Array<{ id: string }> };
        modelsBody = j;
        served ??= j.data?.[0]?.id ?? null;
        return;
      } catch {
        /* try the next one */
      }
    }
  };

  // ---- app
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: 64 * 1024 * 1024, forceCloseConnections: true });
  acceptAnyJson(app, (message) => badRequest(message, null));
  app.setErrorHandler((err, _req, reply) => {
    const e = toApiError(err);
    void reply.status(e.status).type('application/json').send(e.body());
  });
  app.setNotFoundHandler((_req, reply) => void reply.status(404).type('application/json').send(new ApiError(404, 'Not Found', 'NotFoundError').body()));

  const headerId = (req: FastifyRequest): string => {
    const h = req.headers['x-request-id'];
    const v = Array.isArray(h) ? h[0] : h;
    let id = v && ID_RE.test(v) ? v : `gw-${seq}`;
    seq++;
    if (inflight.has(id)) id = `${id}~${seq}`;
    return id;
  };

  /** Writes the record of a finished flight. */
  const record = (f: Flight, status: TimingRecord['status'], error: string | null): void => {
    if (f.finished) return;
    f.finished = true;
    inflight.delete(f.id);
    if (f.d) {
      if (status === 'ok') engine.onComplete(f.id, f.tDone);
      else engine.onAbort(f.id, now());
    }
    mRequests.inc({ endpoint: f.kind, status });
    if (!recorder) return;
    const d = f.d;
    let observed: RecordObserved | null = null;
    if (status === 'ok') {
      const ttft = f.tFirst >= 0 ? f.tFirst - f.tArr : null;
      const e2e = f.tDone - f.tArr;
      const sendAt = f.tSend - f.tArr;
      const outTok = f.usage?.completion_tokens ?? f.completionTokens;
      observed = {
        prepare_ms: Math.max(0, sendAt - f.linkWait - f.transfer),
        link_wait_ms: f.linkWait,
        transfer_ms: f.transfer,
        kv_load_ms: null,
        queue_ms: ttft === null ? null : 0,
        prefill_ms: ttft === null ? null : f.tFirst - f.tSend,
        ttft_ms: ttft,
        tpot_ms: ttft !== null && outTok > 1 ? (e2e - ttft) / (outTok - 1) : null,
        e2e_ms: e2e,
        cached_tokens: f.usage ? (f.usage.prompt_tokens_details?.cached_tokens ?? 0) : null,
        loaded_tokens: null,
        preemptions: null,
        first_token_at_ms: f.tFirst >= 0 ? f.tFirst : null,
        done_at_ms: f.tDone,
        prompt_tokens: f.usage?.prompt_tokens ?? null,
        transfer_tokens: f.transferTokens,
        wire_bytes: f.wireBytes,
        kdn_ack_ms: f.ackMs >= 0 ? f.ackMs : null,
        retries: f.retries,
      };
    }
    recorder.write({
      id: f.id,
      arrival_ms: f.tArr,
      status,
      error,
      input_tokens: f.req.inputTokens,
      output_tokens: status === 'ok' ? (f.usage?.completion_tokens ?? f.completionTokens) : f.req.outputTokens,
      knowledge_tokens: f.req.knowledgeTokens,
      instance: d ? ids[d.instance]! : null,
      kdn: d && d.kdn >= 0 ? kdnIds[d.kdn]! : null,
      intent: d ? d.intent : f.req.knowledgeTokens > 0 ? 'text' : 'none',
      decision: d
        ? {
            strategy: d.strategy,
            reason: d.reason,
            reused_tokens: d.reusedTokens,
            cached_tokens: d.cachedTokens,
            alternatives: columnarAlternatives(d.alternatives, ids),
            ...(f.planned ? { planned_intent: f.planned, fallback: f.fallback } : {}),
          }
        : null,
      predicted: d
        ? { prepare_ms: d.predicted.prepareMs, link_wait_ms: d.predicted.linkWaitMs, transfer_ms: d.predicted.transferMs, kv_load_ms: d.predicted.kvLoadMs, queue_ms: d.predicted.queueMs, prefill_ms: d.predicted.prefillMs, ttft_ms: d.predicted.ttftMs }
        : null,
      observed,
      source: 'live',
    });
  };

  const decisionHeader = (f: Flight): string => {
    const d = f.d!;
    const h: DecisionHeader = {
      id: f.id,
      arrival_ms: r3(f.tArr),
      strategy: d.strategy,
      instance: ids[d.instance]!,
      kdn: d.kdn >= 0 ? kdnIds[d.kdn]! : null,
      intent: d.intent,
      ...(f.planned ? { planned_intent: f.planned, fallback: f.fallback } : {}),
      reason: d.reason,
      reused_tokens: d.reusedTokens,
      cached_tokens: d.cachedTokens,
      input_tokens: f.req.inputTokens,
      knowledge_tokens: f.req.knowledgeTokens,
      predicted: {
        prepare_ms: r3(d.predicted.prepareMs),
        link_wait_ms: r3(d.predicted.linkWaitMs),
        transfer_ms: r3(d.predicted.transferMs),
        kv_load_ms: r3(d.predicted.kvLoadMs),
        queue_ms: r3(d.predicted.queueMs),
        prefill_ms: r3(d.predicted.prefillMs),
        ttft_ms: r3(d.predicted.ttftMs),
      },
      observed: { prepare_ms: r3(Math.max(0, f.tSend - f.tArr - f.linkWait - f.transfer)), link_wait_ms: r3(f.linkWait), transfer_ms: r3(f.transfer), transfer_tokens: f.transferTokens, wire_bytes: f.wireBytes },
      retries: f.retries,
    };
    // JSON of ASCII ids/reasons; escape anything else so the header stays valid
    return JSON.stringify(h).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  };

  /** Decides and dispatches (or re-decides without `exclude` for a retry). */
  const decide = (f: Flight, forced: Exclude<Intent, 'none'> | null, exclude: number): void => {
    const t = now();
    let restore = false;
    if (exclude >= 0 && engine.up[exclude]) {
      engine.up[exclude] = false;
      restore = true;
    }
    let d: Decision;
    try {
      if (!engine.up.some(Boolean)) throw new ApiError(503, exclude >= 0 ? 'no other instance is up to retry on' : 'no instance is up', 'ServiceUnavailableError', null);
      d = engine.decide(f.req, t);
      if (forced && honor) d = forceIntent(engine, f.req, d, forced, t);
      engine.onDispatch(f.req, d, t);
    } finally {
      if (restore) engine.up[exclude] = true;
    }
    f.d = d;
    f.planned = null;
    f.fallback = null;
  };

  /** KV injection for kvcache/hybrid; falls back to text (recorded) on KDN/Redis failure. */
  const inject = async (f: Flight): Promise<void> => {
    const d = f.d!;
    f.linkWait = 0;
    f.transfer = 0;
    f.transferTokens = 0;
    f.wireBytes = 0;
    f.ackMs = -1;
    if (d.intent !== 'kvcache' && d.intent !== 'hybrid') return;
    const b = backends[d.instance]!;
    const fall = (why: string): void => {
      f.planned = d.intent;
      f.fallback = why;
      d.intent = 'text';
      d.reason += `;fallback-text:${why}`;
      mFallbacks.inc({ reason: why.split(':')[0]! });
      engine.onKvTransferDone(f.id, now());
    };
    if (d.reusedTokens <= d.cachedTokens) return; // the instance holds the prefix already (engine's view): nothing to move
    if (!b.spec.lmcacheRedis) return fall('no-lmcache-redis');
    if (!kdnUrl) return fall('no-kdn');
    const target = b.spec.lmcacheRedis;
    const kid = f.req.knowledge[0]!.kid;
    let ack: { ok?: boolean; queue_ms?: number; transfer_ms?: number; tokens_injected?: number; wire_bytes?: number; detail?: string; injected_kids?: string[] };
    const tStart = now();
    try {
      const res = await undiciRequest(`${kdnUrl}/knowledge/inject_ready_kv`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ request_id: f.id, model: served ?? undefined, knowledge_ids: [kid], redis_host: target.host, redis_port: target.port, redis_db: target.db, redis_password: target.password, tokens: d.reusedTokens }),
        signal: f.abort.signal,
        headersTimeout: 120_000,
        bodyTimeout: 120_000,
      });
      const text = await res.body.text();
      if (res.statusCode !== 200) return fall(`kdn-http-${res.statusCode}: ${text.slice(0, 120)}`);
      ack = JSON.parse(text);
    } catch (e) {
      if (f.killed) throw e;
      return fall(`kdn-unreachable: ${(e as Error).message}`);
    }
    const tAck = now();
    f.ackMs = tAck - tStart;
    engine.onKvTransferDone(f.id, tAck);
    if (!ack.ok || !(ack.injected_kids ?? []).includes(kid)) return fall(`kv-inject-failed: ${(ack.detail ?? 'not injected').slice(0, 160)}`);
    f.linkWait = Math.min((ack.queue_ms ?? 0) * ts, tAck - tStart);
    f.transfer = Math.min((ack.transfer_ms ?? 0) * ts, tAck - tStart - f.linkWait);
    f.transferTokens = ack.tokens_injected ?? 0;
    f.wireBytes = ack.wire_bytes ?? 0;
    const labels = { kdn: kdnIds[d.kdn] ?? 'kdn', instance: ids[d.instance]! };
    mLinkBusy.inc(labels, f.transfer / 1000);
    mLinkWait.inc(labels, f.linkWait / 1000);
  };

  /**
   * Sends the prompt to the decided backend. Resolves with the upstream response at its first
   * byte, or throws a RetryableError (failure before the first byte) / ApiError.
   */
  const send = async (f: Flight, built: BuiltPrompt, upstreamStream: boolean): Promise<Dispatcher.ResponseData> => {
    const b = backends[f.d!.instance]!;
    const body = { ...built.body, stream: upstreamStream };
    if (upstreamStream) (body as Record<string, unknown>).stream_options = { ...((built.body.stream_options as object | undefined) ?? {}), include_usage: true };
    else delete (body as Record<string, unknown>).stream_options;
    f.tSend = now();
    b.inflight++;
    try {
      const res = await b.post(built.kind === 'chat' ? '/v1/chat/completions' : '/v1/completions', JSON.stringify(body), { 'x-request-id': f.id }, built.stream ? f.abort.signal : undefined);
      if (res.statusCode >= 500) {
        const text = await res.body.text().catch(() => '');
        b.failures++;
        b.inflight--;
        throw new RetryableError(`instance ${b.spec.id} answered HTTP ${res.statusCode}: ${text.slice(0, 200)}`, false);
      }
      return res;
    } catch (e) {
      if (e instanceof RetryableError) throw e;
      b.inflight--;
      if (f.killed) throw e;
      b.failures++;
      const conn = isConnectError(e);
      throw new RetryableError(`instance ${b.spec.id} (${b.url}) failed before the first byte: ${(e as Error).message}`, conn);
    }
  };

  /** The whole request: decide, inject, send with one retry, then stream/assemble. */
  const handle = async (kind: 'chat' | 'completion', rq: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (closing) throw new ApiError(503, 'gateway shutting down', 'ServiceUnavailableError');
    const tArr = now();
    const raw = rq.body;
    const body = kind === 'chat' ? parseBody(chatRequestSchema, raw, 'chat/completions') : parseBody(completionRequestSchema, raw, 'completions');
    const rawObj = raw as Record<string, unknown>;
    if (body.model !== undefined && body.model !== null) {
      if (served === null) await fetchModels();
      if (served !== null && body.model !== served) throw modelNotFound(body.model);
    }
    if (body.stream_options && !body.stream) throw badRequest('Stream options can only be defined when `stream=True`.', 'stream_options');
    const forced = normaliseInjectionType(rawObj.Injection_type);
    let kids = knowledgeIds(rawObj);
    const rag = boolish(rawObj.RAG);
    // knowledge
    let items: KnowledgeItem[] = [];
    let ragReason = '';
    try {
      if (kids === null && rag) {
        const q = questionOf(kind, body);
        const kid = await store.retrieve(q);
        kids = kid ? [kid] : [];
        if (!kid) ragReason = ';rag-no-match';
      }
      if (kids && kids.length) items = await store.get(kids);
    } catch (e) {
      if (e instanceof KdnUnavailable) throw new ApiError(503, `knowledge unavailable: ${e.message}`, 'ServiceUnavailableError', kids ? 'knowledge_ids' : 'RAG');
      throw e;
    }
    const built = kind === 'chat' ? buildChat(body as ChatRequest, items, chatDefault) : buildCompletion(body as CompletionRequest, items);
    const id = headerId(rq);
    const req: TraceRequest = {
      id,
      arrivalMs: tArr,
      inputTokens: built.ids.length,
      outputTokens: Math.max(1, built.maxTokens),
      blockSize,
      blocks: fastBlockIds(built.ids, blockSize),
      knowledge: built.knowledge,
      knowledgeTokens: built.knowledgeTokens,
      ...(built.question ? { question: built.question } : {}),
    };
    const f: Flight = { id, kind, tArr, req, d: null, planned: null, fallback: null, retries: 0, linkWait: 0, transfer: 0, transferTokens: 0, wireBytes: 0, ackMs: -1, tSend: -1, tFirst: -1, tDone: -1, usage: null, completionTokens: 0, abort: new AbortController(), finished: false, killed: null };
    inflight.set(id, f);
    if (keepRequests) routed.push(req);
    hashMap?.add(built.ids, req.blocks);
    if (built.stream) {
      // a streaming client that goes away aborts the upstream stream (non-streaming ones finish)
      reply.raw.once('close', () => {
        if (!reply.raw.writableFinished && !f.finished) f.abort.abort(new Error('client disconnected'));
      });
    }
    const upstreamStream = built.stream || upstreamMode === 'stream';
    let res: Dispatcher.ResponseData | null = null;
    let exclude = -1;
    try {
      for (;;) {
        decide(f, forced, exclude);
        if (ragReason) f.d!.reason += ragReason;
        await inject(f);
        try {
          res = await send(f, built, upstreamStream);
          break;
        } catch (e) {
          if (!(e instanceof RetryableError) || f.killed) throw e;
          const i = f.d!.instance;
          if (e.connect) health.markDown(backends[i]!, e.message);
          engine.onAbort(f.id, now());
          if (!retryOn || f.retries >= 1 || !engine.up.some((u, j) => u && j !== i)) throw new ApiError(502, e.message, 'BadGatewayError');
          f.retries++;
          mRetries.inc();
          exclude = i;
        }
      }
    } catch (e) {
      const err = f.killed ? new ApiError(503, f.killed, 'ServiceUnavailableError') : toApiError(e);
      record(f, 'failed', err.message);
      throw err;
    }
    mIntents.inc({ intent: f.d!.intent });
    const b = backends[f.d!.instance]!;
    try {
      if (res.statusCode !== 200) {
        // a client error from the backend (4xx): pass it through as it is
        const text = await res.body.text();
        f.tDone = now();
        record(f, 'rejected', `backend HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
        mRequests.inc({ endpoint: kind, status: 'client_error' });
        void reply.status(res.statusCode).type('application/json').send(text);
        return;
      }
      if (built.stream) await pipeStream(f, built, res, reply);
      else if (upstreamStream) await assemble(f, built, res, reply);
      else await direct(f, res, reply);
    } finally {
      if (b.inflight > 0) b.inflight--;
    }
  };

  /** First visible output: engine bookkeeping + TTFT metric. */
  const firstToken = (f: Flight): void => {
    if (f.tFirst >= 0) return;
    f.tFirst = now();
    engine.onFirstToken(f.id, f.tFirst);
    mTtft.observe((f.tFirst - f.tArr) / 1000);
  };

  const done = (f: Flight): void => {
    f.tDone = now();
    mE2e.observe((f.tDone - f.tArr) / 1000);
    record(f, 'ok', null);
  };

  /** Streams upstream SSE to the client event by event (usage chunk dropped unless asked). */
  const pipeStream = async (f: Flight, built: BuiltPrompt, res: Dispatcher.ResponseData, reply: FastifyReply): Promise<void> => {
    reply.hijack();
    const out = reply.raw;
    const headers: Record<string, string> = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-request-id': f.id };
    if (sendHeader) headers['x-kvlab-decision'] = decisionHeader(f);
    out.writeHead(200, headers);
    const sse = new SseSplitter();
    const dec = new TextDecoder();
    let sawDone = false;
    let error: string | null = null;
    try {
      for await (const chunk of res.body) {
        const evs = sse.push(dec.decode(chunk as Buffer, { stream: true }));
        let outBuf = '';
        for (const ev of evs) {
          const info = classifyChunk(ev.data, f.tFirst < 0);
          if (info.kind === 'chunk') {
            if (info.nonEmpty) {
              firstToken(f);
              f.completionTokens++;
            }
            if (info.usage) f.usage = info.usage;
            outBuf += ev.raw;
          } else if (info.kind === 'usage') {
            f.usage = info.usage!;
            if (built.includeUsage) outBuf += ev.raw;
          } else if (info.kind === 'error') {
            error = `backend error: ${info.error}`;
            outBuf += ev.raw;
          } else if (info.kind === 'done') {
            sawDone = true;
            outBuf += ev.raw;
          } else outBuf += ev.raw;
        }
        if (outBuf && !out.destroyed) out.write(outBuf);
      }
    } catch (e) {
      if (f.abort.signal.aborted && !f.killed) error = 'client disconnected';
      else {
        error = f.killed ?? `instance ${ids[f.d!.instance]} failed mid-stream: ${(e as Error).message}`;
        if (isConnectError(e) || /closed|terminated|socket/i.test((e as Error).message)) health.markDown(backends[f.d!.instance]!, (e as Error).message);
      }
    }
    if (!sawDone && !error) error = `instance ${ids[f.d!.instance]} closed the stream without [DONE]`;
    if (error) {
      if (!out.destroyed && !out.writableEnded) {
        out.write(`data: ${JSON.stringify(new ApiError(502, error, 'BadGatewayError').body())}\n\n`);
        if (!sawDone) out.write('data: [DONE]\n\n');
      }
      record(f, 'failed', error);
    } else done(f);
    if (!out.writableEnded) out.end();
  };

  /** Reads upstream SSE and answers the non-streaming client with the assembled response. */
  const assemble = async (f: Flight, built: BuiltPrompt, res: Dispatcher.ResponseData, reply: FastifyReply): Promise<void> => {
    const sse = new SseSplitter();
    const dec = new TextDecoder();
    const texts: string[] = [];
    const finish: Array<string | null> = [];
    let upstreamId = '';
    let created = 0;
    let model = '';
    let error: string | null = null;
    let sawDone = false;
    try {
      for await (const chunk of res.body) {
        for (const ev of sse.push(dec.decode(chunk as Buffer, { stream: true }))) {
          const info = classifyChunk(ev.data, true);
          if (info.kind === 'done') sawDone = true;
          else if (info.kind === 'error') error = `backend error: ${info.error}`;
          else if (info.kind === 'usage') f.usage = info.usage!;
          else if (info.kind === 'chunk' && info.json) {
            const j = info.json;
            upstreamId ||= String(j.id ?? '');
            created ||= Number(j.created ?? 0);
            model ||= String(j.model ?? '');
            if (info.nonEmpty) {
              firstToken(f);
              f.completionTokens++;
            }
            for (const c of (j.choices as Array<Record<string, unknown>>) ?? []) {
              const k = Number(c.index ?? 0);
              const piece = built.kind === 'chat' ? ((c.delta as { content?: string } | undefined)?.content ?? '') : String(c.text ?? '');
              texts[k] = (texts[k] ?? '') + piece;
              if (c.finish_reason !== undefined && c.finish_reason !== null) finish[k] = String(c.finish_reason);
            }
          }
        }
      }
    } catch (e) {
      error = f.killed ?? `instance ${ids[f.d!.instance]} failed mid-response: ${(e as Error).message}`;
      if (!f.killed && (isConnectError(e) || /closed|terminated|socket/i.test((e as Error).message))) health.markDown(backends[f.d!.instance]!, (e as Error).message);
    }
    if (!sawDone && !error) error = `instance ${ids[f.d!.instance]} closed the stream without [DONE]`;
    if (error) {
      record(f, 'failed', error);
      const e = new ApiError(502, error, 'BadGatewayError');
      if (!reply.sent) void reply.status(502).type('application/json').send(e.body());
      return;
    }
    done(f);
    const usage = f.usage ? { prompt_tokens: f.usage.prompt_tokens, total_tokens: f.usage.total_tokens, completion_tokens: f.usage.completion_tokens, prompt_tokens_details: f.usage.prompt_tokens_details ?? null } : null;
    if (sendHeader) void reply.header('x-kvlab-decision', decisionHeader(f));
    void reply.header('x-request-id', f.id);
    const n = Math.max(texts.length, 1);
    if (built.kind === 'completion') {
      return void reply.send({
        id: upstreamId || `cmpl-${f.id}`,
        object: 'text_completion',
        created,
        model,
        choices: Array.from({ length: n }, (_, i) => ({ index: i, text: texts[i] ?? '', logprobs: null, finish_reason: finish[i] ?? null, stop_reason: null, prompt_logprobs: null })),
        usage,
        system_fingerprint: null,
        kv_transfer_params: null,
      });
    }
    return void reply.send({
      id: upstreamId || `chatcmpl-${f.id}`,
      object: 'chat.completion',
      created,
      model,
      choices: Array.from({ length: n }, (_, i) => ({ index: i, message: { role: 'assistant', content: texts[i] ?? '', reasoning_content: null, tool_calls: [] }, logprobs: null, finish_reason: finish[i] ?? null, stop_reason: null })),
      usage,
      prompt_logprobs: null,
      kv_transfer_params: null,
    });
  };

  /** Non-streaming upstream: the JSON passes through; no TTFT. */
  const direct = async (f: Flight, res: Dispatcher.ResponseData, reply: FastifyReply): Promise<void> => {
    let text: string;
    try {
      text = await res.body.text();
    } catch (e) {
      const msg = f.killed ?? `instance ${ids[f.d!.instance]} failed mid-response: ${(e as Error).message}`;
      record(f, 'failed', msg);
      return void reply.status(502).type('application/json').send(new ApiError(502, msg, 'BadGatewayError').body());
    }
    try {
      f.usage = ((JSON.parse(text) as { usage?: StreamUsage }).usage ?? null) as StreamUsage | null;
    } catch {
      /* usage unknown */
    }
    done(f);
    if (sendHeader) void reply.header('x-kvlab-decision', decisionHeader(f));
    return void reply.header('x-request-id', f.id).type('application/json').send(text);
  };

  app.post('/v1/chat/completions', (rq, reply) => handle('chat', rq, reply));
  app.post('/v1/completions', (rq, reply) => handle('completion', rq, reply));
  app.get('/v1/models', async () => {
    if (modelsBody === null) await fetchModels();
    if (modelsBody === null) throw new ApiError(503, 'no backend answered /v1/models', 'ServiceUnavailableError');
    return modelsBody;
  });
  app.get('/health', async (_rq, reply) => {
    if (closing || !engine.up.some(Boolean)) return reply.status(503).type('application/json').send(new ApiError(503, closing ? 'gateway shutting down' : 'no instance is up', 'ServiceUnavailableError').body());
    return reply.status(200).send('');
  });
  app.get('/metrics', async (_rq, reply) => reply.type(registry.contentType).send(await registry.metrics()));
  app.get('/debug/status', async () => {
    const t = now();
    return {
      strategy: strategyName,
      strategy_params: strategyParams,
      time_scale: ts,
      now_ms: r3(t),
      model: served,
      inflight: inflight.size,
      routed: seq,
      records: recorder?.count ?? 0,
      intent_counts: engine.intentCounts,
      kdn: { url: kdnUrl, knowledge_cached: store.size, failures: store.failures },
      instances: backends.map((b, i) => ({
        id: b.spec.id,
        url: b.url,
        up: engine.up[i],
        down_reason: b.downReason,
        inflight: b.inflight,
        sent: b.sent,
        failures: b.failures,
        lmcache_redis: b.spec.lmcacheRedis ? `${b.spec.lmcacheRedis.host}:${b.spec.lmcacheRedis.port}/${b.spec.lmcacheRedis.db}` : null,
        booked: { ...engine.loads.loads[i]!, backlog_ms: r3(engine.loads.backlogMs(i, t)) },
        kv_events: (() => {
          const sub = subscribers.find((x) => x.index === i);
          return sub ? { endpoint: sub.source.endpoint, last_seq: sub.lastSeq === null ? null : Number(sub.lastSeq), batches: sub.batches, gaps: sub.gaps, lost: sub.lost, replayed: sub.replayed } : null;
        })(),
      })),
    };
  });
  const setStrategy = (name: string, params: Record<string, unknown> = {}): void => {
    const s = createStrategy(name, params);
    engine.strategy = s;
    strategyName = name;
    strategyParams = params;
    if (recorder) recorder.meta.strategy = name;
  };
  app.get('/debug/strategy', async () => ({ strategy: strategyName, params: strategyParams, available: STRATEGY_NAMES, intent_counts: engine.intentCounts }));
  app.put('/debug/strategy', async (rq) => {
    const b = rq.body as { strategy?: unknown; params?: unknown } | undefined;
    if (!b || typeof b !== 'object' || Array.isArray(b)) throw badRequest('debug/strategy: request body must be a JSON object {"strategy": "...", "params": {...}}', null);
    if (typeof b.strategy !== 'string' || !b.strategy) throw badRequest(`strategy: expected a strategy name (one of ${STRATEGY_NAMES.join(', ')})`, 'strategy');
    if (b.params !== undefined && (b.params === null || typeof b.params !== 'object' || Array.isArray(b.params))) throw badRequest('params: expected an object of strategy parameters', 'params');
    const prev = strategyName;
    try {
      setStrategy(b.strategy, (b.params as Record<string, unknown>) ?? {});
    } catch (e) {
      throw badRequest((e as Error).message, /parameter/.test((e as Error).message) ? 'params' : 'strategy');
    }
    app.log.info(`strategy switched from ${prev} to ${strategyName}`);
    return { strategy: strategyName, params: strategyParams, previous: prev };
  });

  const host = opts.host ?? '127.0.0.1';
  await app.listen({ host, port: opts.port ?? 7001 });
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : (opts.port ?? 7001);
  if (served === null || modelsBody === null) await fetchModels();
  health.start();
  for (const sub of subscribers) await sub.start();

  let closed: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closed ??= (async () => {
      closing = true;
      health.stop();
      for (const sub of subscribers) sub.close();
      for (const f of inflight.values()) {
        f.killed = 'gateway shutting down';
        f.abort.abort(new Error('gateway shutting down'));
      }
      // let the aborted handlers write their failed records
      for (let i = 0; i < 50 && inflight.size > 0; i++) await new Promise((r) => setTimeout(r, 10));
      for (const f of [...inflight.values()]) record(f, 'failed', 'gateway shutting down');
      recorder?.close({ strategy: strategyName, wall_ms: Math.round(performance.now() - t0) });
      await app.close();
      await Promise.all(backends.map((b) => b.close()));
    })());

  return {
    url: `http://${host}:${port}`,
    host,
    port,
    app,
    engine,
    backends,
    recorder,
    cluster: rc,
    timeScale: ts,
    now,
    requests: () => routed.slice(),
    prefetchKnowledge: async (kids: string[]) => {
      for (const it of await store.get(kids)) if (it.format === 'chat-system') sysIds(it);
    },
    setStrategy,
    close,
  };
}

/** A failure before the backend's first byte (retried once elsewhere). */
class RetryableError extends Error {
  constructor(
    message: string,
    readonly connect: boolean,
  ) {
    super(message);
  }
}

const r3 = (x: number): number => Math.round(x * 1000) / 1000;

/** Maps anything thrown in a handler to an OpenAI-shaped ApiError. */
function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  const e = err as { statusCode?: number; message?: string; code?: string };
  if (e && typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    const msg = e.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ? 'request body must be a JSON object' : (e.message ?? 'bad request');
    return e.statusCode === 404 ? new ApiError(404, msg, 'NotFoundError', null) : new ApiError(e.statusCode === 413 ? 413 : 400, msg, 'BadRequestError', null);
  }
  return new ApiError(500, e?.message ?? String(err), 'InternalServerError', null);
}
