/**
 * Replay client (`kvlab replay`): sends a trace or built-in workload to an OpenAI-compatible
 * target (the kvlab gateway, or a vLLM / emulator directly) open-loop, at the trace's arrival
 * times ÷ `speed`, with streaming requests, and writes the same run directory as `kvlab sim`
 * (records.jsonl, summary.json, config.json; live/recorder.ts) with `observed` measured by the
 * client.
 *
 * Prompts are real text:
 * - requests with knowledge (NQ, synthetic): `POST /v1/chat/completions` with `knowledge_ids`
 *   and the user question (NQ: the real question; synthetic: words synthesised to the trace's
 *   question length = inputTokens − knowledgeTokens − `chatTemplateTokens`); the gateway adds
 *   the documents (as text or KV, as its engine decides);
 * - requests without knowledge (Mooncake, CSV): `POST /v1/completions` with text synthesised
 *   per block id (each trace block of B tokens becomes B single-token words drawn from a PRNG
 *   seeded by the block id; block 0 has B − 1 words to leave room for BOS), so requests that
 *   share leading block ids share their prompt prefix token for token; `ignore_eos: true` and
 *   `max_tokens = outputTokens` fix the output length on real vLLM too.
 *
 * Time: `arrival_ms` and every observed duration are model ms = client wall ms × `timeScale`
 * (1 for real GPUs; the emulators' `--time-scale` otherwise). The client TTFT is the first
 * non-empty streamed chunk after sending. When the target is the kvlab gateway, its
 * `x-kvlab-decision` response header (JSON; live/gateway.ts `DecisionHeader`) gives the
 * decision, the engine's prediction and the prepare-side observations (prepare, link wait,
 * transfer, in the gateway's model ms); the client then puts the rest of its TTFT into
 * `prefill_ms` (queue_ms = 0: the split is not observable live).
 */
import { setMaxListeners } from 'node:events';
import { Agent, request } from 'undici';
import type { Intent, TraceRequest } from '../engine/types.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { defaultNqDir, loadTrace, loadWorkload, type WorkloadName } from '../traces/load.js';
import { syntheticCatalog } from '../traces/synthetic.js';
import { makeRng } from '../traces/random.js';
import type { LoadedTrace } from '../traces/schema.js';
import { SseSplitter, classifyChunk, type StreamUsage } from './backends.js';
import type { DecisionHeader } from './gateway.js';
import { Recorder, writeConfig, type LiveSummary, type TimingRecord } from './recorder.js';
import { encodeSystemPrefix } from './tokenizer.js';
import llama3Tokenizer from 'llama3-tokenizer-js';

// ------------------------------------------------------------------------------------------
// Text synthesis

let vocab: string[] | undefined;

/**
 * Lower-case words (3–9 letters) that the Llama-3 tokenizer encodes as exactly one token when
 * preceded by a space (taken from its vocabulary, in id order; 8,192 of them). A text made of
 * " w1 w2 … wn" is therefore exactly n tokens, and concatenations stay token-aligned.
 */
export function singleTokenWords(): string[] {
  if (vocab) return vocab;
  const out: string[] = [];
  const byId = (llama3Tokenizer as unknown as { vocabById: string[] }).vocabById;
  for (let id = 0; id < 128000 && out.length < 8192; id++) {
    const s = byId[id];
    if (s && /^\u0120[a-z]{3,9}$/.test(s)) out.push(s.slice(1));
  }
  vocab = out;
  return out;
}

/** `n` words (each " word", one token) drawn from a PRNG seeded by `key`. */
export function synthWords(key: string, n: number): string {
  const w = singleTokenWords();
  const rng = makeRng(key, 'replay-text');
  let s = '';
  for (let i = 0; i < n; i++) s += ' ' + w[Math.floor(rng() * w.length)]!;
  return s;
}

const blockCache = new Map<number, string>();

/**
 * Completion prompt text for a request without knowledge: one word run per block id (see the
 * module doc), `inputTokens − 1` tokens in total (+ BOS = inputTokens). Without block ids the
 * text is unique to the request id.
 */
export function promptForBlocks(req: Pick<TraceRequest, 'id' | 'inputTokens' | 'blocks' | 'blockSize'>): string {
  const total = Math.max(1, req.inputTokens - 1);
  if (req.blocks.length === 0) return synthWords(`req/${req.id}`, total);
  let s = '';
  let left = total;
  for (let j = 0; j < req.blocks.length && left > 0; j++) {
    const full = j === 0 ? req.blockSize - 1 : req.blockSize;
    const n = Math.min(full, left);
    const b = req.blocks[j]!;
    let text = n === full ? blockCache.get(b) : undefined;
    if (text === undefined) {
      text = synthWords(`block/${b}`, full);
      if (blockCache.size > 50_000) blockCache.clear();
      blockCache.set(b, text);
    }
    s += n === full ? text : text.split(' ').slice(0, n + 1).join(' ');
    left -= n;
  }
  if (left > 0) s += synthWords(`req/${req.id}/tail`, left);
  return s;
}

/**
 * A knowledge document of exactly `tokens` tokens in the KDN's `chat-system` prefix format
 * (`encodeSystemPrefix(text).length === tokens`, header and `<|eot_id|>` included), when
 * `tokens` ≥ 8: "Document <name>" then seeded words. Deterministic in (`name`, `tokens`).
 */
export function synthesizeDocument(name: string, tokens: number): string {
  const head = `Document ${name.replace(/[^\w.-]+/g, ' ').trim()}.`;
  let n = Math.max(1, tokens - 6 - 8);
  let text = head + synthWords(`doc/${name}`, n);
  for (let k = 0; k < 3; k++) {
    const got = encodeSystemPrefix(text).length;
    if (got === tokens) break;
    n = Math.max(1, n + (tokens - got));
    text = head + synthWords(`doc/${name}`, n);
  }
  return text;
}

// ------------------------------------------------------------------------------------------
// Knowledge for the target's KDN

/** A knowledge document to register: the workload's kid and its text. */
export interface KnowledgeDoc {
  kid: string;
  text: string;
}

/**
 * The documents the requests reference: NQ → the files `DIR/knowledge/<kid>.txt`; synthetic →
 * each catalogue document synthesised to its token length ({@link synthesizeDocument}; the
 * catalogue is regenerated from the same workload options).
 * @throws Error naming the missing file / unknown kid.
 */
export function workloadDocuments(requests: readonly TraceRequest[], workload: WorkloadName, workloadOptions: Record<string, unknown> = {}): KnowledgeDoc[] {
  const kids = [...new Set(requests.flatMap((r) => r.knowledge.map((k) => k.kid)))];
  if (workload === 'nq') {
    const dir = (workloadOptions.dir as string | undefined) ?? defaultNqDir();
    return kids.map((kid) => {
      const f = join(dir, 'knowledge', `${kid}.txt`);
      try {
        return { kid, text: readFileSync(f, 'utf8') };
      } catch {
        throw new Error(`NQ document not found: ${f}`);
      }
    });
  }
  const cat = new Map(syntheticCatalog(workloadOptions as never).map((d) => [d.kid, d]));
  return kids.map((kid) => {
    const d = cat.get(kid);
    if (!d) throw new Error(`synthetic workload: kid ${kid} is not in the catalogue of these options`);
    return { kid, text: synthesizeDocument(d.name, d.tokens) };
  });
}

/**
 * Registers documents in a KDN (`POST /knowledge/register_text`) and returns workload kid → KDN
 * kid (the KDN's kid is the sha256 of the normalised text: equal for NQ, different for the
 * synthetic catalogue, whose kids hash the document name).
 * @throws Error naming the document when the KDN refuses it.
 */
export async function registerDocuments(kdnUrl: string, docs: readonly KnowledgeDoc[]): Promise<Map<string, string>> {
  const map = new Map<string, string>();
  for (const d of docs) {
    const res = await request(`${kdnUrl.replace(/\/+$/, '')}/knowledge/register_text`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ content: d.text }) });
    const j = (await res.body.json()) as { kid?: string; detail?: string };
    if (res.statusCode !== 200 || !j.kid) throw new Error(`registering knowledge ${d.kid} in ${kdnUrl} failed (HTTP ${res.statusCode}): ${j.detail ?? ''}`);
    map.set(d.kid, j.kid);
  }
  return map;
}

/** The requests with their knowledge kids renamed through `map` (unknown kids kept). */
export function renameKnowledge(requests: readonly TraceRequest[], map: ReadonlyMap<string, string>): TraceRequest[] {
  return requests.map((r) => (r.knowledge.length ? { ...r, knowledge: r.knowledge.map((k) => ({ ...k, kid: map.get(k.kid) ?? k.kid })) } : r));
}

// ------------------------------------------------------------------------------------------
// Replay

/** Options of {@link runReplay}. */
export interface ReplayOptions {
  /** base URL of the target (gateway, vLLM or emulator). */
  target: string;
  /** requests to send (already loaded), or: */
  requests?: TraceRequest[];
  /** a trace file / NQ directory, or: */
  trace?: string;
  /** a built-in workload (default synthetic). */
  workload?: WorkloadName;
  workloadOptions?: Record<string, unknown>;
  /** only the first N requests. */
  limit?: number;
  /** arrivals are sent at arrivalMs / speed wall ms (default 1). */
  speed?: number;
  /** model ms per wall ms of the observed durations (default 1; = the emulators' time scale). */
  timeScale?: number;
  /** run directory (records.jsonl, summary.json, config.json); nothing written when absent. */
  out?: string;
  /** at most N requests in flight; later ones wait (and arrive late). Default unlimited. */
  concurrencyLimit?: number;
  /** `model` field of every request (default: none, the target's only model). */
  model?: string;
  /** chat-template tokens assumed by the workload (question length = input − knowledge − this); default 25. */
  chatTemplateTokens?: number;
  /** per-request timeout, ms (default 600,000). */
  timeoutMs?: number;
  /** called after each finished request. */
  onProgress?: (done: number, total: number) => void;
  /** extra fields for summary.json. */
  meta?: Record<string, unknown>;
  /**
   * register the workload's documents in this KDN first (NQ files / synthesised synthetic
   * catalogue documents) and send the KDN's kids; only for `workload` inputs.
   */
  registerKdn?: string;
}

/** Result of a replay. */
export interface ReplayResult {
  records: TimingRecord[];
  summary: LiveSummary | null;
  outDir?: string;
  wallMs: number;
}

/** Loads the requests of a replay (trace / workload / given list, optional limit). */
export async function replayRequests(opts: Pick<ReplayOptions, 'requests' | 'trace' | 'workload' | 'workloadOptions' | 'limit'>): Promise<{ requests: TraceRequest[]; name: string }> {
  let t: LoadedTrace | null = null;
  let reqs: TraceRequest[];
  if (opts.requests) reqs = opts.requests;
  else {
    t = opts.trace ? await loadTrace(opts.trace, opts.limit ? { limit: opts.limit } : {}) : await loadWorkload(opts.workload ?? 'synthetic', (opts.workloadOptions ?? {}) as never);
    reqs = t.requests;
  }
  if (opts.limit !== undefined) reqs = reqs.slice(0, opts.limit);
  return { requests: reqs, name: t ? (t.meta.file || t.meta.name) : 'requests' };
}

/** The HTTP request (path + JSON body) that replays one trace request. */
export function replayBody(req: TraceRequest, opts: Pick<ReplayOptions, 'model' | 'chatTemplateTokens'> = {}): { path: string; body: Record<string, unknown> } {
  const common: Record<string, unknown> = { max_tokens: req.outputTokens, ignore_eos: true, temperature: 0, stream: true, stream_options: { include_usage: true } };
  if (opts.model) common.model = opts.model;
  if (req.knowledge.length > 0) {
    const qTokens = Math.max(1, req.inputTokens - req.knowledgeTokens - (opts.chatTemplateTokens ?? 25));
    const question = req.question ?? `Question${synthWords(`question/${req.id}`, Math.max(1, qTokens - 2))}?`;
    return { path: '/v1/chat/completions', body: { ...common, messages: [{ role: 'user', content: question }], knowledge_ids: req.knowledge.map((k) => k.kid) } };
  }
  return { path: '/v1/completions', body: { ...common, prompt: promptForBlocks(req) } };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Replays requests open-loop and records what the client observed.
 * @throws Error for bad options (naming them) or an unloadable trace.
 */
export async function runReplay(opts: ReplayOptions): Promise<ReplayResult> {
  const speed = opts.speed ?? 1;
  const ts = opts.timeScale ?? 1;
  if (!(speed > 0) || !Number.isFinite(speed)) throw new Error(`--speed must be a number > 0 (got ${opts.speed})`);
  if (!(ts > 0) || !Number.isFinite(ts)) throw new Error(`--time-scale must be a number > 0 (got ${opts.timeScale})`);
  const limit = opts.concurrencyLimit ?? Infinity;
  if (!(limit >= 1)) throw new Error(`--concurrency-limit must be >= 1 (got ${opts.concurrencyLimit})`);
  let target: URL;
  try {
    target = new URL(opts.target);
  } catch {
    throw new Error(`--target must be a URL like http://127.0.0.1:7001 (got "${opts.target}")`);
  }
  const base = `${target.protocol}//${target.host}`;
  const loaded = await replayRequests(opts);
  let requests = loaded.requests;
  const name = loaded.name;
  if (opts.registerKdn) {
    if (opts.trace || opts.requests) throw new Error('--register-kdn needs a --workload (nq or synthetic)');
    const map = await registerDocuments(opts.registerKdn, workloadDocuments(requests, opts.workload ?? 'synthetic', opts.workloadOptions));
    requests = renameKnowledge(requests, map);
  }
  const recorder = opts.out ? new Recorder(opts.out, { meta: { source: 'live', client: 'replay', target: base, trace: name, speed, time_scale: ts, ...(opts.meta ?? {}) } }) : null;
  if (opts.out) writeConfig(opts.out, { source: 'live', client: 'replay', target: base, trace: opts.trace ?? null, workload: opts.trace || opts.requests ? null : (opts.workload ?? 'synthetic'), workload_options: opts.workloadOptions ?? {}, speed, time_scale: ts, concurrency_limit: Number.isFinite(limit) ? limit : null, requests: requests.length });
  const agent = new Agent({ keepAliveTimeout: 30_000, connections: Number.isFinite(limit) ? limit : null, headersTimeout: opts.timeoutMs ?? 600_000, bodyTimeout: opts.timeoutMs ?? 600_000 });
  const records: TimingRecord[] = new Array(requests.length);
  const t0 = performance.now();
  const clock = (): number => (performance.now() - t0) * ts;
  const first = requests.length ? requests[0]!.arrivalMs : 0;
  let active = 0;
  let done = 0;
  const waiters: Array<() => void> = [];
  const slot = async (): Promise<void> => {
    if (active < limit) {
      active++;
      return;
    }
    await new Promise<void>((r) => waiters.push(r));
  };
  const release = (): void => {
    const w = waiters.shift();
    if (w) w();
    else active--;
  };

  // the target does not know a knowledge id: every later request would fail the same way, so the
  // replay stops at the first one (requests in flight are aborted, their records kept)
  let stop: string | null = null;
  const stopAll = new AbortController();
  setMaxListeners(0, stopAll.signal); // one listener per request in flight
  const one = async (k: number): Promise<void> => {
    const req = requests[k]!;
    await slot();
    if (stop) {
      release();
      return;
    }
    const { path, body } = replayBody(req, opts);
    const tSend = clock();
    let rec: TimingRecord;
    try {
      rec = await sendOne(base + path, body, req, tSend, clock, agent, stopAll.signal);
    } catch (e) {
      rec = failedRecord(req, tSend, stop ? `aborted: ${stop}` : `request failed: ${(e as Error).message}`, null);
      if (stop) rec.status = 'aborted';
    } finally {
      release();
    }
    if (!stop && rec.status === 'rejected' && (rec as TimingRecord & { unknownKnowledge?: string }).unknownKnowledge) {
      const kid = (rec as TimingRecord & { unknownKnowledge?: string }).unknownKnowledge!;
      stop = `${base} does not know knowledge id ${kid} (request ${req.id}): register the workload's documents in the target's KDN first (kvlab replay --register-kdn KDN_URL ...)`;
      stopAll.abort();
    }
    delete (rec as TimingRecord & { unknownKnowledge?: string }).unknownKnowledge;
    records[k] = rec;
    recorder?.write(rec);
    done++;
    opts.onProgress?.(done, requests.length);
  };

  const pending: Promise<void>[] = [];
  for (let k = 0; k < requests.length && !stop; k++) {
    const dueWall = (requests[k]!.arrivalMs - first) / speed;
    const wait = dueWall - (performance.now() - t0);
    if (wait > 1) await sleep(wait);
    if (stop) break;
    pending.push(one(k));
  }
  await Promise.all(pending);
  await agent.close();
  const wallMs = performance.now() - t0;
  const summary = recorder ? recorder.close({ wall_ms: Math.round(wallMs), ...(stop ? { stopped: stop } : {}) }) : null;
  if (stop) throw new Error(`replay stopped after ${done} of ${requests.length} requests: ${stop}${recorder ? `; records so far in ${recorder.dir}` : ''}`);
  return { records: records.filter(Boolean), summary, outDir: recorder?.dir, wallMs };
}

function failedRecord(req: TraceRequest, tSend: number, error: string, h: DecisionHeader | null): TimingRecord {
  return {
    id: req.id,
    arrival_ms: tSend,
    status: 'failed',
    error,
    input_tokens: h?.input_tokens ?? req.inputTokens,
    output_tokens: req.outputTokens,
    knowledge_tokens: h?.knowledge_tokens ?? req.knowledgeTokens,
    instance: h?.instance ?? null,
    kdn: h?.kdn ?? null,
    intent: h?.intent ?? ((req.knowledgeTokens > 0 ? 'text' : 'none') as Intent),
    decision: h ? decisionOf(h) : null,
    predicted: h?.predicted ?? null,
    observed: null,
    source: 'live',
  };
}

function decisionOf(h: DecisionHeader): TimingRecord['decision'] {
  return { strategy: h.strategy, reason: h.reason, reused_tokens: h.reused_tokens, cached_tokens: h.cached_tokens, alternatives: { instance: [], intent: [], score: [] }, ...(h.planned_intent ? { planned_intent: h.planned_intent, fallback: h.fallback ?? null } : {}) };
}

/** Sends one streamed request and builds its record. */
async function sendOne(url: string, body: Record<string, unknown>, req: TraceRequest, tSend: number, clock: () => number, agent: Agent, signal: AbortSignal): Promise<TimingRecord> {
  const res = await request(url, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': req.id }, body: JSON.stringify(body), dispatcher: agent, signal });
  const hv = res.headers['x-kvlab-decision'];
  let h: DecisionHeader | null = null;
  if (typeof hv === 'string') {
    try {
      h = JSON.parse(hv) as DecisionHeader;
    } catch {
      h = null;
    }
  }
  if (res.statusCode !== 200) {
    const text = await res.body.text();
    let msg = text.slice(0, 300);
    let param: string | null | undefined;
    try {
      const e = (JSON.parse(text) as { error?: { message?: string; param?: string | null } }).error;
      msg = e?.message ?? msg;
      param = e?.param;
    } catch {
      /* keep text */
    }
    const rec: TimingRecord & { unknownKnowledge?: string } = { ...failedRecord(req, tSend, `HTTP ${res.statusCode}: ${msg}`, h), status: res.statusCode >= 500 ? 'failed' : 'rejected' };
    if (res.statusCode === 404 && (param === 'knowledge_ids' || param === 'knowledge_id')) rec.unknownKnowledge = /unknown knowledge ids?: ([^\s(,]+)/.exec(msg)?.[1] ?? req.knowledge[0]?.kid ?? '?';
    return rec;
  }
  const sse = new SseSplitter();
  const dec = new TextDecoder();
  let tFirst = -1;
  let tokens = 0;
  let usage: StreamUsage | null = null;
  let error: string | null = null;
  let sawDone = false;
  try {
    for await (const chunk of res.body) {
      for (const ev of sse.push(dec.decode(chunk as Buffer, { stream: true }))) {
        const info = classifyChunk(ev.data, tFirst < 0);
        if (info.kind === 'chunk') {
          if (info.nonEmpty) {
            if (tFirst < 0) tFirst = clock();
            tokens++;
          }
          if (info.usage) usage = info.usage;
        } else if (info.kind === 'usage') usage = info.usage!;
        else if (info.kind === 'error') error = info.error ?? 'error event';
        else if (info.kind === 'done') sawDone = true;
      }
    }
  } catch (e) {
    error = `stream broke: ${(e as Error).message}`;
  }
  const tDone = clock();
  if (!error && !sawDone) error = 'stream ended without [DONE]';
  if (error) return failedRecord(req, tSend, error, h);
  const out = usage?.completion_tokens ?? tokens;
  const ttft = tFirst >= 0 ? tFirst - tSend : null;
  const e2e = tDone - tSend;
  const pre = h ? h.observed.prepare_ms + h.observed.link_wait_ms + h.observed.transfer_ms : 0;
  return {
    id: req.id,
    arrival_ms: tSend,
    status: 'ok',
    error: null,
    input_tokens: h?.input_tokens ?? usage?.prompt_tokens ?? req.inputTokens,
    output_tokens: out,
    knowledge_tokens: h?.knowledge_tokens ?? req.knowledgeTokens,
    instance: h?.instance ?? null,
    kdn: h?.kdn ?? null,
    intent: h?.intent ?? ((req.knowledgeTokens > 0 ? 'text' : 'none') as Intent),
    decision: h ? decisionOf(h) : null,
    predicted: h?.predicted ?? null,
    observed: {
      prepare_ms: h ? h.observed.prepare_ms : null,
      link_wait_ms: h ? h.observed.link_wait_ms : null,
      transfer_ms: h ? h.observed.transfer_ms : null,
      kv_load_ms: null,
      queue_ms: ttft === null ? null : 0,
      prefill_ms: ttft === null ? null : Math.max(0, ttft - pre),
      ttft_ms: ttft,
      tpot_ms: ttft !== null && out > 1 ? (e2e - ttft) / (out - 1) : null,
      e2e_ms: e2e,
      cached_tokens: usage ? (usage.prompt_tokens_details?.cached_tokens ?? 0) : null,
      loaded_tokens: null,
      preemptions: null,
      first_token_at_ms: tFirst >= 0 ? tFirst : null,
      done_at_ms: tDone,
      prompt_tokens: usage?.prompt_tokens ?? null,
      transfer_tokens: h ? h.observed.transfer_tokens : null,
      wire_bytes: h ? h.observed.wire_bytes : null,
      retries: h?.retries ?? 0,
    },
    source: 'live',
  };
}
