/**
 * The gateway's OpenAI routes (`POST /v1/chat/completions`, `POST /v1/completions`) and the
 * request pipeline every generation request goes through, one stage per module:
 *
 *  1. `onRequest`: a {@link RequestContext} with a unique run id (gateway/context.ts) — before the
 *     body is read, so a body refused by a limit (413, too deep) still gets its record;
 *  2. validation (gateway/request.ts) and the cheap limits (gateway/limits.ts: `n`, prompt count,
 *     `max_tokens`, the prompt's character bound) — no tokenising yet;
 *  3. knowledge lookup (gateway/knowledge.ts): named kids or `RAG: true` retrieval;
 *  4. text injection + tokenisation (gateway/prompt.ts), then prompt + output tokens against
 *     max_model_len: a request that cannot fit is refused here, never forwarded;
 *  5. per prompt (a prompt list is split into one engine request per prompt, ids `<id>-<i>`, as
 *     vLLM does): decision + booking (gateway/booking.ts), KV injection (gateway/kv-inject.ts),
 *     the backend call with one retry elsewhere on a failure before the first byte
 *     (gateway/upstream.ts); a disaggregated decision (engine `decode` D != P) runs as vLLM's
 *     disaggregated-serving proxy runs it: the prefill on P (`kv_transfer_params`
 *     do_remote_decode, max_tokens 1), then the request on D with P's returned parameters, D's
 *     tokens relayed; a D that fails before its first byte (connection refused, HTTP 5xx) falls
 *     back to colocated execution on P (the reason in the record's `observed.pd.fallback`);
 *  6. relay to the client (stream, assembled, or direct), then exactly one record per engine
 *     request (gateway/records.ts), which also releases the booking.
 * Anything thrown ends in the app's error handler, which answers in OpenAI's error shape and
 * writes the record of the request (rejected for 4xx, failed for 5xx, aborted when the client
 * went away). A client that disconnects or times out aborts every upstream call of its request.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Dispatcher } from 'undici';
import type { Engine } from '../../engine/engine.js';
import type { TraceRequest } from '../../engine/types.js';
import type { Backend, BlockHashMap, HealthMonitor } from '../backends.js';
import { fastBlockIds } from '../block-hash.js';
import { ApiError, refuseUnreadBody, modelNotFound, toApiError, type ChatRequest, type CompletionRequest } from '../openai.js';
import type { EngineBooking } from './booking.js';
import { legId, RequestAborted, RequestContext, RetryableError, type Endpoint, type FinalStatus, type RunIds } from './context.js';
import { KdnUnavailable, type KnowledgeItem, type KnowledgeStore } from './knowledge.js';
import type { KvInjector } from './kv-inject.js';
import { checkCheapLimits, checkContext, nOf, type GatewayLimits } from './limits.js';
import { buildBlendPrompt, buildChat, buildCompletion, questionOf, type BuiltPrompt } from './prompt.js';
import type { GatewayRecords } from './records.js';
import { parseGenerationRequest, type ParsedRequest } from './request.js';
import { assembledBody, sumUsage, type AssembledChoice, type Upstream } from './upstream.js';

/** What the pipeline needs from the gateway. */
export interface PipelineDeps {
  engine: Engine;
  backends: readonly Backend[];
  booking: EngineBooking;
  records: GatewayRecords;
  store: KnowledgeStore;
  injector: KvInjector;
  upstream: Upstream;
  health: HealthMonitor;
  ids: RunIds;
  limits: GatewayLimits;
  /** requests in flight (routed legs included), by id. */
  inflight: Map<string, RequestContext>;
  now: () => number;
  /** the context length in force (see limits.ts). */
  maxModelLen: () => number;
  /** the served model name, asking the backends when unknown. */
  servedModel: () => Promise<string | null>;
  blockSize: number;
  /** `stream`: always stream from the backend; `direct`: non-streaming requests pass through. */
  upstreamMode: 'stream' | 'direct';
  /** output tokens assumed for a chat request without max_tokens. */
  chatDefaultMaxTokens: number;
  /** the application lets the gateway reorder a request's documents (the engine's canonical order). */
  reorderDocuments: boolean;
  /** LMCache `blend_special_str` of the instances that declare blend; null = none declares it. */
  blendSeparator: string | null;
  retry: boolean;
  /** routed engine requests are appended here when given (live demo). */
  routed: TraceRequest[] | null;
  /** vLLM block hashes of routed prompts (KV events), when followed. */
  hashMap: BlockHashMap | null;
  closing: () => boolean;
}

const ROUTES: Record<string, Endpoint> = { '/v1/chat/completions': 'chat', '/v1/completions': 'completion' };

declare module 'fastify' {
  interface FastifyRequest {
    /** the gateway's context of a generation request (set in onRequest). */
    kvlab?: RequestContext;
  }
}

/** Registers the generation routes, their onRequest hook and the app's error handler. */
export function registerPipeline(app: FastifyInstance, deps: PipelineDeps): void {
  const { records, inflight, ids, limits } = deps;

  /** Ends a context (or, once split, its legs) with one record each. */
  const finish = (ctx: RequestContext, status: FinalStatus, error: string | null, reason?: string): void => {
    if (ctx.legs.length) {
      for (const l of ctx.legs) finish(l, status, error, reason);
      return;
    }
    deps.upstream.release(ctx);
    records.finish(ctx, status, error, reason);
    inflight.delete(ctx.id);
  };

  app.addHook('onRequest', (rq, reply, done) => {
    const kind = rq.method === 'POST' ? ROUTES[rq.routeOptions.url ?? ''] : undefined;
    if (!kind) return done();
    const h = rq.headers['x-request-id'];
    const { id, clientId } = ids.next(Array.isArray(h) ? h[0] : h);
    const ctx = new RequestContext(id, kind, deps.now());
    ctx.clientId = clientId;
    rq.kvlab = ctx;
    inflight.set(id, ctx);
    reply.raw.once('close', () => {
      // the client went away before the whole response was written: abort its upstream work
      if (reply.raw.writableFinished) return;
      for (const c of [ctx, ...ctx.legs]) {
        if (c.finished) continue;
        c.clientGone = true;
        c.abort.abort(new Error('client disconnected'));
      }
    });
    done();
  });

  app.setErrorHandler((err, rq, reply) => {
    const ctx = rq.kvlab;
    let e: ApiError;
    let status: FinalStatus;
    if (err instanceof RequestAborted) {
      const killed = ctx?.killed ?? null;
      e = killed ? new ApiError(503, killed, 'ServiceUnavailableError') : new ApiError(499, err.message, 'ClientClosedRequestError');
      status = killed ? 'failed' : 'aborted';
    } else {
      e = toApiError(err, { bytes: limits.maxBodyBytes, flag: 'the gateway\'s --max-body-bytes' });
      status = e.status < 500 ? 'rejected' : 'failed';
    }
    if (ctx) finish(ctx, status, status === 'rejected' ? `HTTP ${e.status}: ${e.message}` : e.message, `${e.status}${e.param ? `:${e.param}` : ''}`);
    if (reply.sent || reply.raw.headersSent) return;
    // a body refused before it was all read (413, bad JSON): answer without reading the rest
    if (!refuseUnreadBody(rq, reply, e.status, e.body())) void reply.status(e.status).type('application/json').send(e.body());
  });

  /** The knowledge of a request: named kids, or retrieval for `RAG: true`. */
  const lookup = async (p: ParsedRequest): Promise<{ items: KnowledgeItem[]; ragReason: string }> => {
    let kids = p.kids;
    let ragReason = '';
    try {
      if (kids === null && p.rag) {
        const kid = await deps.store.retrieve(questionOf(p.kind, p.body));
        kids = kid ? [kid] : [];
        if (!kid) ragReason = ';rag-no-match';
      }
      return { items: kids && kids.length ? await deps.store.get(kids) : [], ragReason };
    } catch (e) {
      if (e instanceof KdnUnavailable) {
        const field = p.kids ? 'knowledge_ids' : 'RAG';
        // no KDN at all: the client named knowledge this gateway cannot have (its fault, never retried)
        if (e.notConfigured) throw new ApiError(p.kids ? 404 : 400, p.kids ? `unknown knowledge id${p.kids.length > 1 ? 's' : ''}: ${p.kids.join(', ')} (this gateway has no KDN: start it with --kdn URL)` : 'RAG: this gateway has no KDN to retrieve from (start it with --kdn URL)', p.kids ? 'NotFoundError' : 'BadRequestError', field);
        throw new ApiError(503, `knowledge unavailable: ${e.message}`, 'ServiceUnavailableError', field);
      }
      throw e;
    }
  };

  /** The engine's view of one routed prompt. */
  const engineRequest = (ctx: RequestContext, built: BuiltPrompt): TraceRequest => {
    const room = Math.max(1, deps.maxModelLen() - built.ids.length);
    const req: TraceRequest = {
      id: ctx.id,
      arrivalMs: ctx.tArr,
      inputTokens: built.ids.length,
      outputTokens: Math.max(1, built.maxTokensGiven ? built.maxTokens : Math.min(built.maxTokens, room)),
      blockSize: deps.blockSize,
      blocks: fastBlockIds(built.ids, deps.blockSize),
      knowledge: built.knowledge,
      knowledgeTokens: built.knowledgeTokens,
      ...(built.question ? { question: built.question } : {}),
    };
    // what the engine may book as the output length: the client's bound (completions default to
    // vLLM's 16, which is enforced); a chat request without one leaves it to the predictor
    if (built.maxTokensGiven || ctx.kind === 'completion') req.maxTokens = Math.max(1, built.maxTokens);
    return req;
  };

  /** Decide, book, inject and send one leg, with one retry elsewhere before the first byte. */
  const route = async (leg: RequestContext, p: ParsedRequest, ragReason: string, upstreamStream: boolean): Promise<Dispatcher.ResponseData> => {
    let exclude = -1;
    let standard: BuiltPrompt | null = null;
    for (;;) {
      leg.checkAborted();
      deps.booking.decide(leg, p.forced, exclude);
      if (ragReason) leg.d!.reason += ragReason;
      // a blend goes in the CacheBlend layout (documents between separators); else as built
      standard ??= leg.built;
      leg.built = leg.d!.intent === 'blend' && leg.blendPrompt ? ((await leg.blendPrompt()) ?? standard) : standard;
      leg.newAttempt();
      try {
        await deps.injector.run(leg);
        leg.checkAborted();
        // a strategy with a proxy cap (CacheRoute's READY_CONCURRENCY) may hold it here
        await deps.booking.forwardSlot(leg);
        leg.checkAborted();
        if (leg.pdDecode >= 0) return await disaggregated(leg, upstreamStream);
        return await deps.upstream.send(leg, leg.built!, upstreamStream);
      } catch (e) {
        if (!(e instanceof RetryableError)) throw e;
        const i = leg.d!.instance;
        if (e.connect) deps.health.markDown(deps.backends[i]!, e.message);
        deps.booking.release(leg, false);
        if (!deps.retry || leg.retries >= 1 || !deps.engine.up.some((u, j) => u && j !== i)) throw new ApiError(502, e.message, 'BadGatewayError');
        leg.retries++;
        records.retries.inc();
        exclude = i;
      }
    }
  };

  /**
   * A disaggregated leg: prefill on P, then the request with P's `kv_transfer_params` on D. A
   * failure of P throws (the caller's retry); a failure of D before its first byte colocates the
   * request on P (booking moved first, then D taken out when it was unreachable) and sends it
   * there, where the prompt's KV is in P's prefix cache now.
   */
  const disaggregated = async (leg: RequestContext, upstreamStream: boolean): Promise<Dispatcher.ResponseData> => {
    records.pdRequests.inc();
    const params = await deps.upstream.prefill(leg, leg.built!);
    deps.booking.prefillDone(leg);
    leg.checkAborted();
    const D = leg.pdDecode;
    leg.pd!.decodeSentMs = deps.now();
    try {
      return await deps.upstream.send(leg, leg.built!, upstreamStream, { to: D, ...(params ? { kvTransferParams: params } : {}) });
    } catch (e) {
      if (!(e instanceof RetryableError)) throw e;
      leg.checkAborted();
      const b = deps.backends[D]!;
      deps.booking.colocate(leg, `decode instance ${b.spec.id} failed before the first byte: ${e.message}`);
      records.pdFallbacks.inc();
      if (e.connect) deps.health.markDown(b, e.message);
      return await deps.upstream.send(leg, leg.built!, upstreamStream, { to: leg.d!.instance });
    }
  };

  const handle = async (kind: Endpoint, rq: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const ctx = rq.kvlab!;
    if (deps.closing()) throw new ApiError(503, 'gateway shutting down', 'ServiceUnavailableError');
    const p = parseGenerationRequest(kind, rq.body);
    if (p.body.model !== undefined && p.body.model !== null) {
      const served = await deps.servedModel();
      if (served !== null && p.body.model !== served) throw modelNotFound(p.body.model);
    }
    const mml = deps.maxModelLen();
    checkCheapLimits(p, limits, mml);
    let { items, ragReason } = await lookup(p);
    ctx.checkAborted();
    // the canonical document order (engine/doc-order.ts) when the gateway may reorder and the
    // client does not say its order matters (`reorder_documents: false`)
    if (items.length > 1 && deps.reorderDocuments && p.reorder !== false) {
      const order = deps.engine.documentOrder({ knowledge: items.map((it) => ({ kid: it.kid, tokens: 0 })) } as TraceRequest);
      if (order) {
        const byKid = new Map(items.map((it) => [it.kid, it]));
        items = order.map((k) => byKid.get(k.kid)!);
        ragReason += ';reordered';
      }
    }
    const built: BuiltPrompt[] = [];
    for (const prompt of p.prompts) {
      const b = kind === 'chat' ? await buildChat(p.body as ChatRequest, items, deps.chatDefaultMaxTokens) : await buildCompletion(p.body as CompletionRequest, items, prompt);
      checkContext(kind, b.ids.length, b.maxTokensGiven ? b.maxTokens : null, mml);
      built.push(b);
      ctx.checkAborted();
    }
    // from here on, one engine request (and record) per prompt
    let legs = [ctx];
    if (built.length > 1) {
      legs = built.map((_, i) => ctx.leg(i, legId(ids, ctx.id, i)));
      ctx.legs.push(...legs);
      ctx.finished = true; // the legs carry the records
      inflight.delete(ctx.id);
      for (const l of legs) inflight.set(l.id, l);
    }
    legs.forEach((l, i) => {
      l.built = built[i]!;
      if (items.length && deps.blendSeparator !== null) {
        let memo: Promise<BuiltPrompt> | null = null;
        l.blendPrompt = () => (memo ??= buildBlendPrompt(built[i]!, p.body as ChatRequest | CompletionRequest, items, deps.blendSeparator!, p.prompts[i]).then((b) => b ?? built[i]!));
      }
      l.req = engineRequest(l, built[i]!);
      deps.routed?.push(l.req);
      deps.hashMap?.add(built[i]!.ids, l.req.blocks);
    });
    const upstreamStream = built[0]!.stream || deps.upstreamMode === 'stream';
    const settled = await Promise.allSettled(legs.map((l) => route(l, p, ragReason, upstreamStream)));
    const failed = settled.findIndex((s) => s.status === 'rejected');
    if (failed >= 0) {
      // one prompt could not be routed: the others are aborted and the request fails as a whole
      settled.forEach((s, i) => {
        if (s.status === 'fulfilled') {
          s.value.body.destroy();
          finish(legs[i]!, 'aborted', `another prompt of the request failed: ${((settled[failed] as PromiseRejectedResult).reason as Error).message}`);
        }
      });
      throw (settled[failed] as PromiseRejectedResult).reason;
    }
    const res = settled.map((s) => (s as PromiseFulfilledResult<Dispatcher.ResponseData>).value);
    for (const l of legs) records.intents.inc({ intent: l.d!.intent });
    // a client error from the backend (4xx): passed through as it is
    const bad = res.findIndex((r) => r.statusCode !== 200);
    if (bad >= 0) {
      const text = await res[bad]!.body.text().catch(() => '');
      res.forEach((r, i) => {
        if (i !== bad) r.body.destroy();
        legs[i]!.tDone = deps.now();
        finish(legs[i]!, 'rejected', i === bad ? `backend HTTP ${r.statusCode}: ${text.slice(0, 200)}` : `another prompt of the request was rejected (HTTP ${res[bad]!.statusCode})`, `backend_${res[bad]!.statusCode}`);
      });
      return void reply.status(res[bad]!.statusCode).type('application/json').send(text);
    }
    if (legs.length === 1) return relayOne(ctx, built[0]!, res[0]!, reply, upstreamStream);
    return relayMany(legs, built, res, reply, nOf(p), upstreamStream);
  };

  const relayOne = async (f: RequestContext, built: BuiltPrompt, res: Dispatcher.ResponseData, reply: FastifyReply, upstreamStream: boolean): Promise<void> => {
    const up = deps.upstream;
    if (built.stream) {
      const r = await up.pipeStream(f, built, res, reply);
      finish(f, r.status, r.error);
      return;
    }
    if (upstreamStream) {
      const r = await up.collect(f, built, res);
      if (r.status !== 'ok') {
        finish(f, r.status, r.error);
        if (!reply.sent) void reply.status(502).type('application/json').send(new ApiError(502, r.error!, 'BadGatewayError').body());
        return;
      }
      finish(f, 'ok', null);
      const usage = f.usage ? { prompt_tokens: f.usage.prompt_tokens, total_tokens: f.usage.total_tokens, completion_tokens: f.usage.completion_tokens, prompt_tokens_details: f.usage.prompt_tokens_details ?? null } : null;
      if (up.sendsHeader) void reply.header('x-kvlab-decision', records.decisionHeader(f));
      void reply.header('x-request-id', f.id);
      return void reply.send(assembledBody(built.kind, r.meta, f.id, r.choices, usage));
    }
    const r = await up.readDirect(f, res);
    finish(f, r.status, r.error);
    if (r.status !== 'ok') return void reply.status(502).type('application/json').send(new ApiError(502, r.error!, 'BadGatewayError').body());
    if (up.sendsHeader) void reply.header('x-kvlab-decision', records.decisionHeader(f));
    return void reply.header('x-request-id', f.id).type('application/json').send(r.text);
  };

  const relayMany = async (legs: RequestContext[], built: BuiltPrompt[], res: Dispatcher.ResponseData[], reply: FastifyReply, n: number, upstreamStream: boolean): Promise<void> => {
    const up = deps.upstream;
    if (built[0]!.stream) {
      const rs = await up.pipeMerged(legs, built, res, reply, n);
      rs.forEach((r, i) => finish(legs[i]!, r.status, r.error));
      return;
    }
    let choices: AssembledChoice[] = [];
    let meta = { id: '', created: 0, model: '' };
    const outcomes = await Promise.all(
      legs.map(async (f, i) => {
        if (upstreamStream) return up.collect(f, built[i]!, res[i]!);
        const d = await up.readDirect(f, res[i]!);
        let cs: AssembledChoice[] = [];
        let m = { id: '', created: 0, model: '' };
        try {
          const j = JSON.parse(d.text) as { id?: string; created?: number; model?: string; choices?: Array<{ text?: string; finish_reason?: string | null; stop_reason?: string | number | null; logprobs?: Record<string, unknown[]> | null }> };
          m = { id: j.id ?? '', created: j.created ?? 0, model: j.model ?? '' };
          cs = (j.choices ?? []).map((c) => ({ text: c.text ?? '', finish: c.finish_reason ?? null, stop: c.stop_reason ?? null, logprobs: c.logprobs ?? null }));
        } catch {
          /* counted as empty */
        }
        return { ...d, choices: cs, meta: m };
      }),
    );
    outcomes.forEach((o, i) => {
      finish(legs[i]!, o.status, o.error);
      if (!meta.id) meta = o.meta;
      for (let k = 0; k < n; k++) choices[i * n + k] = o.choices[k] ?? { text: '', finish: null, stop: null, logprobs: null };
    });
    choices = choices.slice(0, legs.length * n);
    const bad = outcomes.find((o) => o.status !== 'ok');
    if (bad) return void reply.status(502).type('application/json').send(new ApiError(502, bad.error!, 'BadGatewayError').body());
    if (up.sendsHeader) void reply.header('x-kvlab-decision', records.decisionHeader(legs[0]!));
    void reply.header('x-request-id', legs[0]!.clientId ?? legs[0]!.id);
    return void reply.send(assembledBody('completion', meta, legs[0]!.id, choices, sumUsage(legs.map((l) => l.usage))));
  };

  app.post('/v1/chat/completions', (rq, reply) => handle('chat', rq, reply));
  app.post('/v1/completions', (rq, reply) => handle('completion', rq, reply));
}
