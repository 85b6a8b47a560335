/**
 * Gateway stage "records and metrics": exactly one timing record and one
 * `kvlab_gateway_requests_total` count per request that reaches a generation route — completed,
 * rejected by the gateway (a limit, a bad body, an unknown knowledge id), rejected by the backend,
 * failed, or aborted by the client — written by {@link GatewayRecords.finish}, which also releases
 * the request's engine booking. Rejections carry the HTTP status and the reason in `error`.
 *
 * Also the Prometheus registry (own registry: several gateways may live in one process) and the
 * `x-kvlab-decision` response header.
 */
import client from 'prom-client';
import type { Engine } from '../../engine/engine.js';
import type { Intent } from '../../engine/types.js';
import type { KvEventSubscriber } from '../backends.js';
import { columnarAlternatives, Recorder, type RecordObserved, type RecordPdObserved, type TimingRecord } from '../recorder.js';
import type { EngineBooking } from './booking.js';
import type { FinalStatus, RequestContext } from './context.js';

/** The `x-kvlab-decision` response header, parsed. */
export interface DecisionHeader {
  id: string;
  arrival_ms: number;
  strategy: string;
  instance: string;
  /** P/D: the decode instance the engine chose (`instance` prefills). */
  decode?: string;
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

const r3 = (x: number): number => Math.round(x * 1000) / 1000;

/** Metrics and records of one gateway. */
export class GatewayRecords {
  readonly registry = new client.Registry();
  readonly requests: client.Counter<'endpoint' | 'status'>;
  readonly ttft: client.Histogram;
  readonly e2e: client.Histogram;
  readonly intents: client.Counter<'intent'>;
  readonly fallbacks: client.Counter<'reason'>;
  readonly retries: client.Counter;
  readonly rejections: client.Counter<'reason'>;
  readonly linkBusy: client.Counter<'kdn' | 'instance'>;
  readonly linkWait: client.Counter<'kdn' | 'instance'>;
  /** HTTP-level errors answered before any route (431 headers too large, 408, malformed HTTP). */
  readonly clientErrors: client.Counter<'status'>;
  /** disaggregated requests (prefill on P, decode on D) and dead-D fallbacks to colocated on P. */
  readonly pdRequests: client.Counter;
  readonly pdFallbacks: client.Counter;

  constructor(
    /** the run directory's recorder (null without `--out`). */
    readonly recorder: Recorder | null,
    private readonly booking: EngineBooking,
    /** instance and KDN ids, in cluster order. */
    private readonly ids: readonly string[],
    private readonly kdnIds: readonly string[],
    private readonly now: () => number,
  ) {
    const registers = [this.registry];
    this.requests = new client.Counter({ name: 'kvlab_gateway_requests_total', help: 'Requests that reached a generation route, counted once when they finish, by endpoint and status (ok|rejected|failed|aborted).', labelNames: ['endpoint', 'status'], registers });
    this.ttft = new client.Histogram({ name: 'kvlab_gateway_ttft_seconds', help: 'Observed time to first token at the gateway (model seconds).', buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80], registers });
    this.e2e = new client.Histogram({ name: 'kvlab_gateway_e2e_seconds', help: 'Observed end-to-end latency at the gateway (model seconds).', buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160], registers });
    this.intents = new client.Counter({ name: 'kvlab_gateway_intents_total', help: 'Executed injection intents.', labelNames: ['intent'], registers });
    this.fallbacks = new client.Counter({ name: 'kvlab_gateway_fallbacks_total', help: 'KV injections that fell back to text, by reason.', labelNames: ['reason'], registers });
    this.retries = new client.Counter({ name: 'kvlab_gateway_retries_total', help: 'Requests retried on another instance after a failure before the first byte.', registers });
    this.rejections = new client.Counter({ name: 'kvlab_gateway_rejections_total', help: 'Requests refused, by reason (limit name, http status of a backend rejection, ...).', labelNames: ['reason'], registers });
    this.linkBusy = new client.Counter({ name: 'kvlab_gateway_kdn_link_busy_seconds_total', help: 'KDN link busy time reported by KDN ACKs (transfer_ms), model seconds.', labelNames: ['kdn', 'instance'], registers });
    this.linkWait = new client.Counter({ name: 'kvlab_gateway_kdn_link_wait_seconds_total', help: 'KDN link queueing reported by KDN ACKs (queue_ms), model seconds.', labelNames: ['kdn', 'instance'], registers });
    this.pdRequests = new client.Counter({ name: 'kvlab_gateway_pd_prefills_total', help: 'Disaggregated requests whose prefill went to a prefill instance (kv_transfer_params do_remote_decode).', registers });
    this.pdFallbacks = new client.Counter({ name: 'kvlab_gateway_pd_fallbacks_total', help: 'Disaggregated requests that fell back to colocated execution on the prefill instance (the decode instance failed before its first byte).', registers });
    this.clientErrors = new client.Counter({ name: 'kvlab_gateway_http_client_errors_total', help: 'HTTP-level client errors answered before routing (431 headers too large, 408 timeout, 400 malformed HTTP), by status.', labelNames: ['status'], registers });
  }

  /** Registers the KV-event gauge (applied batches, gaps, lost, replayed per instance). */
  kvEventGauge(subscribers: readonly KvEventSubscriber[]): void {
    const ids = this.ids;
    new client.Gauge({
      name: 'kvlab_gateway_kv_event_batches',
      help: 'KV-event batches applied per instance (and gaps / lost batches).',
      labelNames: ['instance', 'what'],
      registers: [this.registry],
      collect() {
        for (const s of subscribers) {
          this.set({ instance: ids[s.index]!, what: 'applied' }, s.batches);
          this.set({ instance: ids[s.index]!, what: 'gaps' }, s.gaps);
          this.set({ instance: ids[s.index]!, what: 'lost' }, s.lost);
          this.set({ instance: ids[s.index]!, what: 'replayed' }, s.replayed);
        }
      },
    });
  }

  /** Registers the per-instance gauges read from the engine at scrape time. */
  engineGauges(engine: Engine): void {
    const ids = this.ids;
    const now = this.now;
    const registers = [this.registry];
    new client.Gauge({
      name: 'kvlab_gateway_instance_booked_prefill_tokens',
      help: 'Uncached prompt tokens booked by the engine on each instance (dispatched, no first token yet).',
      labelNames: ['instance'],
      registers,
      collect() {
        engine.loads.loads.forEach((l, i) => this.set({ instance: ids[i]! }, l.prefillTokens));
      },
    });
    new client.Gauge({
      name: 'kvlab_gateway_instance_booked_work_ms',
      help: "Engine's predicted prefill backlog per instance (model ms).",
      labelNames: ['instance'],
      registers,
      collect() {
        const t = now();
        ids.forEach((id, i) => this.set({ instance: id }, engine.loads.backlogMs(i, t)));
      },
    });
    new client.Gauge({
      name: 'kvlab_gateway_instance_inflight',
      help: 'Requests booked on each instance (dispatched, not finished).',
      labelNames: ['instance'],
      registers,
      collect() {
        engine.loads.loads.forEach((l, i) => this.set({ instance: ids[i]! }, l.inflight));
      },
    });
    new client.Gauge({
      name: 'kvlab_gateway_instance_up',
      help: '1 when the instance is routable.',
      labelNames: ['instance'],
      registers,
      collect() {
        engine.up.forEach((u, i) => this.set({ instance: ids[i]! }, u ? 1 : 0));
      },
    });
  }

  /** First visible output of `ctx`: engine bookkeeping and the TTFT histogram. */
  firstToken(ctx: RequestContext): void {
    if (this.booking.firstToken(ctx)) this.ttft.observe((ctx.tFirst - ctx.tArr) / 1000);
  }

  /**
   * Ends `ctx`: releases its engine booking, counts it once and writes its one record. Later
   * calls for the same context are no-ops (so every exit path may call it).
   * @param status ok | rejected (refused: by the gateway or the backend, `error` says why) |
   *   failed (backend or gateway failure) | aborted (client disconnected or timed out)
   */
  finish(ctx: RequestContext, status: FinalStatus, error: string | null, rejectReason?: string): void {
    if (ctx.finished) return;
    ctx.finished = true;
    if (status === 'ok') {
      if (ctx.tDone < 0) ctx.tDone = this.now();
      this.e2e.observe((ctx.tDone - ctx.tArr) / 1000);
    }
    this.booking.release(ctx, status === 'ok');
    this.requests.inc({ endpoint: ctx.kind, status });
    if (status === 'rejected') this.rejections.inc({ reason: rejectReason ?? ctx.rejectReason ?? 'other' });
    this.recorder?.write(this.record(ctx, status, error));
  }

  /** The timing record of a finished request (docs/FORMATS.md). */
  record(f: RequestContext, status: FinalStatus, error: string | null): TimingRecord {
    const ids = this.ids;
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
      if (f.pd) observed.pd = this.pdObserved(f);
    }
    const req = f.req;
    return {
      id: f.id,
      ...(f.clientId !== null && f.clientId !== f.id ? { client_id: f.clientId } : {}),
      arrival_ms: f.tArr,
      status,
      error,
      input_tokens: req?.inputTokens ?? 0,
      output_tokens: status === 'ok' ? (f.usage?.completion_tokens ?? f.completionTokens) : (req?.outputTokens ?? 0),
      knowledge_tokens: req?.knowledgeTokens ?? 0,
      instance: d ? ids[d.instance]! : null,
      ...(d && f.pdDecode >= 0 ? { decode_instance: ids[f.pdDecode]! } : {}),
      kdn: d && d.kdn >= 0 ? this.kdnIds[d.kdn]! : null,
      intent: d ? d.intent : req && req.knowledgeTokens > 0 ? 'text' : 'none',
      decision: d
        ? {
            strategy: d.strategy,
            reason: d.reason,
            reused_tokens: d.reusedTokens,
            cached_tokens: d.cachedTokens,
            alternatives: columnarAlternatives(d.alternatives, ids),
            ...(f.planned ? { planned_intent: f.planned, fallback: f.fallback } : {}),
            ...(d.decode !== undefined && d.decode >= 0 && d.decode !== d.instance ? { decode: ids[d.decode]! } : {}),
          }
        : null,
      predicted: d
        ? {
            prepare_ms: d.predicted.prepareMs,
            link_wait_ms: d.predicted.linkWaitMs,
            transfer_ms: d.predicted.transferMs,
            kv_load_ms: d.predicted.kvLoadMs,
            queue_ms: d.predicted.queueMs,
            prefill_ms: d.predicted.prefillMs,
            ttft_ms: d.predicted.ttftMs,
            ...(d.pdPredicted ? { pd: { link_wait_ms: d.pdPredicted.linkWaitMs, transfer_ms: d.pdPredicted.transferMs, tbt_ms: d.pdPredicted.tbtMs } } : {}),
          }
        : null,
      observed,
      source: 'live',
    };
  }

  /** `observed.pd` of a disaggregated request (docs/FORMATS.md): the gateway's times plus D's report. */
  private pdObserved(f: RequestContext): RecordPdObserved {
    const p = f.pd!;
    const t = p.transfer;
    const start = t && p.decodeSentMs >= 0 ? p.decodeSentMs + t.start_after_ms : null;
    return {
      decode_instance: f.pdDecode >= 0 ? this.ids[f.pdDecode]! : null,
      transfer_bytes: t ? t.bytes : null,
      prefill_done_ms: p.prefillDoneMs >= 0 ? p.prefillDoneMs : null,
      link_wait_ms: t ? t.link_wait_ms : null,
      transfer_start_ms: start,
      transfer_end_ms: start !== null ? start + t!.transfer_ms : null,
      transfer_ms: t ? t.transfer_ms : null,
      prefill_sent_ms: p.prefillSentMs,
      decode_sent_ms: p.decodeSentMs >= 0 ? p.decodeSentMs : null,
      kv_transfer_params: p.params,
      transfer_tokens: t ? t.tokens : null,
      miss: t ? t.miss : null,
      fallback: p.fallback,
    };
  }

  /** The `x-kvlab-decision` header of a routed request (JSON, ASCII only). */
  decisionHeader(f: RequestContext): string {
    const d = f.d!;
    const h: DecisionHeader = {
      id: f.id,
      arrival_ms: r3(f.tArr),
      strategy: d.strategy,
      instance: this.ids[d.instance]!,
      ...(f.pdDecode >= 0 ? { decode: this.ids[f.pdDecode]! } : {}),
      kdn: d.kdn >= 0 ? this.kdnIds[d.kdn]! : null,
      intent: d.intent,
      ...(f.planned ? { planned_intent: f.planned, fallback: f.fallback } : {}),
      reason: d.reason,
      reused_tokens: d.reusedTokens,
      cached_tokens: d.cachedTokens,
      input_tokens: f.req!.inputTokens,
      knowledge_tokens: f.req!.knowledgeTokens,
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
  }
}
