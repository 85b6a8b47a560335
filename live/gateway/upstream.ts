/**
 * Gateway stage "upstream": sends the built prompt to the decided backend and relays the answer.
 *
 * - The backend call is always streamed (with usage) so the first non-empty chunk gives the
 *   observed TTFT; a non-streaming client gets the assembled OpenAI response
 *   (`upstreamMode: 'direct'` sends non-streaming requests as they are: no TTFT then).
 * - Every backend call carries the request's abort signal: a client that disconnects or times
 *   out (streaming or not), an instance that goes down, or the gateway closing aborts it.
 * - A failure before the backend's first byte (connection refused, HTTP 5xx, the instance went
 *   down) is a {@link RetryableError}; after the first byte a stream ends with an in-band error
 *   event (`data: {"error": …}` then `[DONE]`), a non-streaming client gets a 502.
 * - `Backend.inflight` is held from send to the end of the body, released exactly once.
 * - P/D ({@link Upstream.prefill}): the prefill request goes to P as vLLM's disaggregated-serving
 *   proxy sends it (vllm-project/vllm@030ea52e tests/v1/kv_connector/nixl_integration/
 *   toy_proxy_server.py: `kv_transfer_params` {do_remote_decode: true, do_remote_prefill: false,
 *   remote_*: null}, `stream: false`, `max_tokens` (and `max_completion_tokens`) 1, no
 *   `stream_options` / `min_tokens` / `min_completion_tokens`), then the client's request goes to D
 *   with P's returned `kv_transfer_params` ({@link Upstream.send} `to`, `kvTransferParams`) and
 *   D's tokens are relayed as any backend's.
 */
import type { FastifyReply } from 'fastify';
import type { Dispatcher } from 'undici';
import { classifyChunk, isConnectError, SseSplitter, type Backend, type HealthMonitor, type StreamUsage } from '../backends.js';
import { ApiError } from '../openai.js';
import { RetryableError, type RequestContext } from './context.js';

/** The `kv_transfer_params` of a prefill request (vLLM's proxy sends exactly these). */
export const PREFILL_KV_TRANSFER_PARAMS = Object.freeze({ do_remote_decode: true, do_remote_prefill: false, remote_engine_id: null, remote_block_ids: null, remote_host: null, remote_port: null });
import type { BuiltPrompt } from './prompt.js';
import type { GatewayRecords } from './records.js';


/** One leg's upstream outcome, for the caller to finish the record. */
export interface UpstreamResult {
  status: 'ok' | 'failed' | 'aborted';
  error: string | null;
}

/** Talks to the backends for the gateway's requests. */
export class Upstream {
  constructor(
    private readonly backends: readonly Backend[],
    private readonly health: HealthMonitor,
    private readonly records: GatewayRecords,
    private readonly ids: readonly string[],
    private readonly now: () => number,
    /** send the `x-kvlab-decision` header. */
    private readonly sendHeader: boolean,
  ) {}

  /** Whether responses carry the `x-kvlab-decision` header. */
  get sendsHeader(): boolean {
    return this.sendHeader;
  }

  /** Releases the backend slot held by `f` (idempotent). */
  release(f: RequestContext): void {
    if (f.backendHeld >= 0) {
      const b = this.backends[f.backendHeld]!;
      if (b.inflight > 0) b.inflight--;
      f.backendHeld = -1;
    }
  }

  /**
   * Sends `built` to `f`'s decided backend (or to instance `to`: a disaggregated request's D,
   * with P's `kvTransferParams`). Resolves with the upstream response at its first byte (the
   * caller consumes the body), holding a backend slot until {@link release}.
   * @throws RetryableError for a failure before the first byte; RequestAborted when aborted.
   */
  async send(f: RequestContext, built: BuiltPrompt, upstreamStream: boolean, opts: { to?: number; kvTransferParams?: Record<string, unknown> } = {}): Promise<Dispatcher.ResponseData> {
    const b = this.backends[opts.to ?? f.d!.instance]!;
    const body = { ...built.body, stream: upstreamStream };
    if (upstreamStream) (body as Record<string, unknown>).stream_options = { ...((built.body.stream_options as object | undefined) ?? {}), include_usage: true };
    else delete (body as Record<string, unknown>).stream_options;
    if (opts.kvTransferParams) (body as Record<string, unknown>).kv_transfer_params = opts.kvTransferParams;
    // a disaggregated request's send time is its prefill's (the record's prefill_ms then spans
    // P's prefill, the hand-off and D's first step, as the simulator's with the first token from D)
    if (opts.to === undefined) f.tSend = this.now();
    b.inflight++;
    f.backendHeld = b.index;
    f.upstreamAt = b.index;
    f.instanceLost = null;
    try {
      const res = await b.post(built.kind === 'chat' ? '/v1/chat/completions' : '/v1/completions', JSON.stringify(body), { 'x-request-id': f.id }, f.attemptSignal());
      if (res.statusCode >= 500) {
        const text = await res.body.text().catch(() => '');
        b.failures++;
        this.release(f);
        f.upstreamAt = -1;
        throw new RetryableError(`instance ${b.spec.id} answered HTTP ${res.statusCode}: ${text.slice(0, 200)}`, false);
      }
      const kt = res.headers['x-kvlab-kv-transfer'];
      if (f.pd && opts.kvTransferParams && typeof kt === 'string') f.pd.transfer = parseTransferHeader(kt);
      return res;
    } catch (e) {
      if (e instanceof RetryableError) throw e;
      this.release(f);
      f.upstreamAt = -1;
      f.checkAborted();
      if (f.instanceLost) throw new RetryableError(`instance ${b.spec.id} went down before the first byte: ${f.instanceLost}`, false);
      b.failures++;
      const conn = isConnectError(e);
      throw new RetryableError(`instance ${b.spec.id} (${b.url}) failed before the first byte: ${(e as Error).message}`, conn);
    }
  }

  /**
   * The prefill of disaggregated `f` on its prefill instance P (module doc): a non-streamed
   * request of one token with `kv_transfer_params` asking for a remote decode. Resolves with P's
   * returned `kv_transfer_params` (null when it sent none: D then computes the prompt, as vLLM's
   * proxy does). Holds a backend slot on P for the call. Records the times in `f.pd`.
   * @throws RetryableError for a failure of P (connection, HTTP 5xx, broken answer);
   *   ApiError with P's status for a 4xx (the request itself is refused); RequestAborted
   */
  async prefill(f: RequestContext, built: BuiltPrompt): Promise<Record<string, unknown> | null> {
    const b = this.backends[f.d!.instance]!;
    const body: Record<string, unknown> = { ...built.body, kv_transfer_params: { ...PREFILL_KV_TRANSFER_PARAMS }, stream: false, max_tokens: 1 };
    if ('max_completion_tokens' in body) body.max_completion_tokens = 1;
    delete body.stream_options;
    delete body.min_tokens;
    delete body.min_completion_tokens;
    f.tSend = this.now();
    f.pd = { decode: f.pdDecode, prefillSentMs: f.tSend, prefillDoneMs: -1, decodeSentMs: -1, params: false, transfer: null, fallback: null };
    b.inflight++;
    f.backendHeld = b.index;
    f.upstreamAt = b.index;
    f.instanceLost = null;
    let status = 0;
    let text = '';
    try {
      const res = await b.post(built.kind === 'chat' ? '/v1/chat/completions' : '/v1/completions', JSON.stringify(body), { 'x-request-id': f.id }, f.attemptSignal());
      status = res.statusCode;
      text = await res.body.text();
    } catch (e) {
      this.release(f);
      f.upstreamAt = -1;
      f.checkAborted();
      if (f.instanceLost) throw new RetryableError(`prefill instance ${b.spec.id} went down during the prefill: ${f.instanceLost}`, false);
      b.failures++;
      throw new RetryableError(`prefill instance ${b.spec.id} (${b.url}) failed: ${(e as Error).message}`, isConnectError(e));
    }
    this.release(f);
    f.upstreamAt = -1;
    if (status >= 500) {
      b.failures++;
      throw new RetryableError(`prefill instance ${b.spec.id} answered HTTP ${status}: ${text.slice(0, 200)}`, false);
    }
    let j: { kv_transfer_params?: unknown; error?: { message?: string; type?: string; param?: string | null } } = {};
    try {
      j = JSON.parse(text) as typeof j;
    } catch {
      if (status === 200) throw new RetryableError(`prefill instance ${b.spec.id} answered a body that is not JSON: ${text.slice(0, 200)}`, false);
    }
    if (status !== 200) throw new ApiError(status, `prefill instance ${b.spec.id}: ${j.error?.message ?? text.slice(0, 200)}`, j.error?.type ?? 'BadRequestError', j.error?.param ?? null);
    f.pd.prefillDoneMs = this.now();
    const k = j.kv_transfer_params;
    const params = k !== null && typeof k === 'object' && !Array.isArray(k) && Object.keys(k).length > 0 ? (k as Record<string, unknown>) : null;
    f.pd.params = params !== null;
    return params;
  }

  /** Why the body read of `f` broke: client gone, gateway closing, instance lost, or the backend. */
  private brokenWhy(f: RequestContext, e: unknown, what: string): UpstreamResult {
    const at = f.upstreamAt >= 0 ? f.upstreamAt : f.d!.instance;
    if (f.killed) return { status: 'failed', error: f.killed };
    if (f.clientGone) return { status: 'aborted', error: 'client disconnected' };
    if (f.instanceLost) return { status: 'failed', error: `instance ${this.ids[at]} went down: ${f.instanceLost}` };
    const msg = (e as Error).message;
    if (isConnectError(e) || /closed|terminated|socket/i.test(msg)) this.health.markDown(this.backends[at]!, msg);
    return { status: 'failed', error: `instance ${this.ids[at]} failed mid-${what}: ${msg}` };
  }

  /** The instance `f`'s answer streams from (D of a disaggregated request, else its instance). */
  private servingId(f: RequestContext): string {
    return this.ids[f.upstreamAt >= 0 ? f.upstreamAt : f.d!.instance]!;
  }

  /** Streams upstream SSE to the client event by event (usage chunk dropped unless asked). */
  async pipeStream(f: RequestContext, built: BuiltPrompt, res: Dispatcher.ResponseData, reply: FastifyReply): Promise<UpstreamResult> {
    reply.hijack();
    const out = reply.raw;
    const headers: Record<string, string> = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-request-id': f.id };
    if (this.sendHeader) headers['x-kvlab-decision'] = this.records.decisionHeader(f);
    out.writeHead(200, headers);
    const sse = new SseSplitter();
    const dec = new TextDecoder();
    let sawDone = false;
    let result: UpstreamResult | null = null;
    try {
      for await (const chunk of res.body) {
        const evs = sse.push(dec.decode(chunk as Buffer, { stream: true }));
        let outBuf = '';
        for (const ev of evs) {
          const info = classifyChunk(ev.data, f.tFirst < 0);
          if (info.kind === 'chunk') {
            if (info.nonEmpty) {
              this.records.firstToken(f);
              f.completionTokens++;
            }
            if (info.usage) f.usage = info.usage;
            outBuf += ev.raw;
          } else if (info.kind === 'usage') {
            f.usage = info.usage!;
            if (built.includeUsage) outBuf += ev.raw;
          } else if (info.kind === 'error') {
            result = { status: 'failed', error: `backend error: ${info.error}` };
            outBuf += ev.raw;
          } else if (info.kind === 'done') {
            sawDone = true;
            outBuf += ev.raw;
          } else outBuf += ev.raw;
        }
        if (outBuf && !out.destroyed) out.write(outBuf);
      }
    } catch (e) {
      result = this.brokenWhy(f, e, 'stream');
    } finally {
      this.release(f);
    }
    if (!sawDone && !result) result = { status: 'failed', error: `instance ${this.servingId(f)} closed the stream without [DONE]` };
    if (result) {
      if (!out.destroyed && !out.writableEnded) {
        out.write(`data: ${JSON.stringify(new ApiError(502, result.error!, 'BadGatewayError').body())}\n\n`);
        if (!sawDone) out.write('data: [DONE]\n\n');
      }
    } else result = { status: 'ok', error: null };
    f.tDone = this.now();
    if (!out.writableEnded) out.end();
    return result;
  }

  /**
   * Reads upstream SSE of a non-streaming client and collects the choices (text, finish reason,
   * logprobs) and usage into `f`. Returns the outcome; the caller sends the assembled response.
   */
  async collect(f: RequestContext, built: BuiltPrompt, res: Dispatcher.ResponseData): Promise<UpstreamResult & { choices: AssembledChoice[]; meta: { id: string; created: number; model: string } }> {
    const sse = new SseSplitter();
    const dec = new TextDecoder();
    const choices: AssembledChoice[] = [];
    const meta = { id: '', created: 0, model: '' };
    let result: UpstreamResult | null = null;
    let sawDone = false;
    try {
      for await (const chunk of res.body) {
        for (const ev of sse.push(dec.decode(chunk as Buffer, { stream: true }))) {
          const info = classifyChunk(ev.data, true);
          if (info.kind === 'done') sawDone = true;
          else if (info.kind === 'error') result = { status: 'failed', error: `backend error: ${info.error}` };
          else if (info.kind === 'usage') f.usage = info.usage!;
          else if (info.kind === 'chunk' && info.json) {
            const j = info.json;
            meta.id ||= String(j.id ?? '');
            meta.created ||= Number(j.created ?? 0);
            meta.model ||= String(j.model ?? '');
            if (info.nonEmpty) {
              this.records.firstToken(f);
              f.completionTokens++;
            }
            for (const c of (j.choices as Array<Record<string, unknown>>) ?? []) {
              const k = Number(c.index ?? 0);
              const ch = (choices[k] ??= { text: '', finish: null, stop: null, logprobs: null });
              ch.text += built.kind === 'chat' ? ((c.delta as { content?: string } | undefined)?.content ?? '') : String(c.text ?? '');
              if (c.finish_reason !== undefined && c.finish_reason !== null) ch.finish = String(c.finish_reason);
              if (c.stop_reason !== undefined && c.stop_reason !== null) ch.stop = c.stop_reason as string | number;
              if (c.logprobs) mergeLogprobs(ch, c.logprobs as Record<string, unknown>, built.kind);
            }
          }
        }
      }
    } catch (e) {
      result = this.brokenWhy(f, e, 'response');
    } finally {
      this.release(f);
    }
    if (!sawDone && !result) result = { status: 'failed', error: `instance ${this.servingId(f)} closed the stream without [DONE]` };
    f.tDone = this.now();
    return { ...(result ?? { status: 'ok', error: null }), choices, meta };
  }

  /**
   * Streams the legs of a prompt list to one client stream, as vLLM streams a prompt list: every
   * chunk's `choices[].index` becomes prompt index × n + its index, usage is summed into one
   * final chunk (when asked), and one `[DONE]` ends the stream. A leg failing mid-stream puts an
   * in-band error event in the stream; the other legs go on.
   */
  async pipeMerged(legs: RequestContext[], built: BuiltPrompt[], res: Dispatcher.ResponseData[], reply: FastifyReply, n: number): Promise<UpstreamResult[]> {
    reply.hijack();
    const out = reply.raw;
    const headers: Record<string, string> = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-request-id': legs[0]!.clientId ?? legs[0]!.id };
    if (this.sendHeader) headers['x-kvlab-decision'] = this.records.decisionHeader(legs[0]!);
    out.writeHead(200, headers);
    const write = (s: string): void => {
      if (!out.destroyed && !out.writableEnded) out.write(s);
    };
    let usageMeta: { id: string; created: number; model: string; object: string } | null = null;
    const results = await Promise.all(
      legs.map(async (f, li): Promise<UpstreamResult> => {
        const sse = new SseSplitter();
        const dec = new TextDecoder();
        let sawDone = false;
        let result: UpstreamResult | null = null;
        try {
          for await (const chunk of res[li]!.body) {
            let buf = '';
            for (const ev of sse.push(dec.decode(chunk as Buffer, { stream: true }))) {
              const info = classifyChunk(ev.data, true);
              if (info.kind === 'chunk' && info.json) {
                if (info.nonEmpty) {
                  this.records.firstToken(f);
                  f.completionTokens++;
                }
                if (info.usage) f.usage = info.usage;
                const j = info.json;
                for (const c of (j.choices as Array<Record<string, unknown>>) ?? []) c.index = li * n + Number(c.index ?? 0);
                if (j.usage !== undefined) j.usage = null;
                buf += `data: ${JSON.stringify(j)}\n\n`;
              } else if (info.kind === 'usage') {
                f.usage = info.usage!;
                const j = info.json!;
                usageMeta ??= { id: String(j.id ?? ''), created: Number(j.created ?? 0), model: String(j.model ?? ''), object: String(j.object ?? '') };
              } else if (info.kind === 'error') {
                result = { status: 'failed', error: `backend error: ${info.error}` };
                buf += ev.raw;
              } else if (info.kind === 'done') sawDone = true;
            }
            if (buf) write(buf);
          }
        } catch (e) {
          result = this.brokenWhy(f, e, 'stream');
        } finally {
          this.release(f);
        }
        if (!sawDone && !result) result = { status: 'failed', error: `instance ${this.servingId(f)} closed the stream without [DONE]` };
        if (result) write(`data: ${JSON.stringify(new ApiError(502, result.error!, 'BadGatewayError').body())}\n\n`);
        f.tDone = this.now();
        return result ?? { status: 'ok', error: null };
      }),
    );
    const meta = usageMeta as { id: string; created: number; model: string; object: string } | null;
    if (built[0]!.includeUsage && meta) write(`data: ${JSON.stringify({ id: meta.id, object: meta.object, created: meta.created, model: meta.model, choices: [], usage: sumUsage(legs.map((l) => l.usage)) })}\n\n`);
    write('data: [DONE]\n\n');
    if (!out.writableEnded) out.end();
    return results;
  }

  /** Non-streaming upstream (`upstreamMode: 'direct'`): the JSON passes through; no TTFT. */
  async readDirect(f: RequestContext, res: Dispatcher.ResponseData): Promise<UpstreamResult & { text: string }> {
    let text = '';
    try {
      text = await res.body.text();
    } catch (e) {
      return { ...this.brokenWhy(f, e, 'response'), text: '' };
    } finally {
      this.release(f);
    }
    try {
      f.usage = ((JSON.parse(text) as { usage?: StreamUsage }).usage ?? null) as StreamUsage | null;
    } catch {
      /* usage unknown */
    }
    f.tDone = this.now();
    return { status: 'ok', error: null, text };
  }
}

/** Parses a decode instance's `x-kvlab-kv-transfer` header (live/emulator.ts); null when malformed. */
export function parseTransferHeader(h: string): NonNullable<RequestContext['pd']>['transfer'] {
  try {
    const j = JSON.parse(h) as Record<string, unknown>;
    const num = (k: string): number => (typeof j[k] === 'number' && Number.isFinite(j[k]) ? (j[k] as number) : NaN);
    const t = { tokens: num('tokens'), bytes: num('bytes'), link_wait_ms: num('link_wait_ms'), transfer_ms: num('transfer_ms'), start_after_ms: num('start_after_ms'), miss: typeof j.miss === 'string' ? j.miss : null };
    return [t.tokens, t.bytes, t.link_wait_ms, t.transfer_ms, t.start_after_ms].every(Number.isFinite) ? t : null;
  } catch {
    return null;
  }
}

/** One choice assembled from a stream. */
export interface AssembledChoice {
  text: string;
  finish: string | null;
  stop: string | number | null;
  /** completions: {tokens, token_logprobs, top_logprobs, text_offset}; chat: {content: [...]}. */
  logprobs: Record<string, unknown[]> | null;
}

/** Appends a streamed chunk's logprobs to the assembled choice (vLLM shapes, reference/live-protocols.md §1). */
function mergeLogprobs(ch: AssembledChoice, lp: Record<string, unknown>, kind: 'chat' | 'completion'): void {
  const acc = (ch.logprobs ??= {});
  const keys = kind === 'chat' ? ['content'] : ['tokens', 'token_logprobs', 'top_logprobs', 'text_offset'];
  for (const k of keys) {
    const v = lp[k];
    if (Array.isArray(v)) (acc[k] ??= []).push(...v);
  }
}

/** Usage summed over legs (vLLM reports one usage for a prompt list). */
export function sumUsage(us: Array<StreamUsage | null>): Record<string, unknown> | null {
  if (us.every((u) => !u)) return null;
  let p = 0;
  let c = 0;
  let cached = 0;
  let details = false;
  for (const u of us) {
    if (!u) continue;
    p += u.prompt_tokens;
    c += u.completion_tokens;
    if (u.prompt_tokens_details) {
      details = true;
      cached += u.prompt_tokens_details.cached_tokens ?? 0;
    }
  }
  return { prompt_tokens: p, total_tokens: p + c, completion_tokens: c, prompt_tokens_details: details ? { cached_tokens: cached } : null };
}

/**
 * The OpenAI response of a non-streaming client, from assembled choices (vLLM 0.13 field order).
 * `choices` are in client order (prompt index × n + sample index).
 */
export function assembledBody(kind: 'chat' | 'completion', meta: { id: string; created: number; model: string }, fallbackId: string, choices: AssembledChoice[], usage: Record<string, unknown> | null): Record<string, unknown> {
  const n = Math.max(choices.length, 1);
  const at = (i: number): AssembledChoice => choices[i] ?? { text: '', finish: null, stop: null, logprobs: null };
  if (kind === 'completion') {
    return {
      id: meta.id || `cmpl-${fallbackId}`,
      object: 'text_completion',
      created: meta.created,
      model: meta.model,
      choices: Array.from({ length: n }, (_, i) => ({ index: i, text: at(i).text, logprobs: at(i).logprobs, finish_reason: at(i).finish, stop_reason: at(i).stop, prompt_logprobs: null })),
      usage,
      system_fingerprint: null,
      kv_transfer_params: null,
    };
  }
  return {
    id: meta.id || `chatcmpl-${fallbackId}`,
    object: 'chat.completion',
    created: meta.created,
    model: meta.model,
    choices: Array.from({ length: n }, (_, i) => ({ index: i, message: { role: 'assistant', content: at(i).text, reasoning_content: null, tool_calls: [] }, logprobs: at(i).logprobs, finish_reason: at(i).finish, stop_reason: at(i).stop })),
    usage,
    prompt_logprobs: null,
    kv_transfer_params: null,
  };
}
