/**
 * Gateway stage "KV injection": for a kvcache/hybrid decision the KDN copies the document's KV
 * chunks into the chosen instance's LMCache Redis (`POST /knowledge/inject_ready_kv`; hybrid:
 * only `reusedTokens` tokens; when the engine counted on more than the first document — a KDN
 * that holds document sequences, `KdnSpec.sequences` — every leading document in prompt order
 * with `sequence: true`, live/kdn-sequences.ts; blend, on an instance running LMCache with
 * `enable_blending`: every document's CacheBlend KV with `blend: true`, live/kdn-blend.ts), and its ACK (`queue_ms`, `transfer_ms`, `tokens_injected`,
 * `wire_bytes`) becomes the record's link wait / transfer. The KDN or its target Redis failing →
 * the request falls back to text (the prompt already holds the text) and the record says why
 * (`decision.fallback`). Nothing to move when the engine believes the instance holds the prefix.
 */
import { request as undiciRequest } from 'undici';
import type { Backend } from '../backends.js';
import type { EngineBooking } from './booking.js';
import { RetryableError, type RequestContext } from './context.js';
import type { GatewayRecords } from './records.js';

/** Runs the KV injections of gateway requests. */
export class KvInjector {
  /** per backend, its model path (`/v1/models` root = vLLM --model = LMCache model_name), once known. */
  private readonly roots = new Map<number, Promise<string | null>>();

  constructor(
    private readonly kdnUrl: string | null,
    private readonly backends: readonly Backend[],
    private readonly booking: EngineBooking,
    private readonly records: GatewayRecords,
    private readonly ids: readonly string[],
    private readonly kdnIds: readonly string[],
    private readonly now: () => number,
    private readonly timeScale: number,
    /** the served model name (LMCache keys), once known. */
    private readonly model: () => string | null,
  ) {}

  /** Backend i's model path from its `/v1/models` (`root`, else `id`); null when it cannot say (asked again later). */
  private rootOf(i: number): Promise<string | null> {
    let p = this.roots.get(i);
    if (!p) {
      p = this.backends[i]!.get('/v1/models', 2000).then(
        (r) => {
          const card = r.status === 200 ? (JSON.parse(r.text) as { data?: Array<{ id?: string; root?: string }> }).data?.[0] : undefined;
          const root = card?.root ?? card?.id ?? null;
          if (root === null) this.roots.delete(i);
          return root;
        },
        () => {
          this.roots.delete(i);
          return null;
        },
      );
      this.roots.set(i, p);
    }
    return p;
  }

  /**
   * Injects the KV of `f`'s knowledge for its decision (no-op for text/none).
   * @throws when the request was aborted while waiting for the KDN.
   */
  async run(f: RequestContext): Promise<void> {
    const d = f.d!;
    f.linkWait = 0;
    f.transfer = 0;
    f.transferTokens = 0;
    f.wireBytes = 0;
    f.ackMs = -1;
    if (d.intent !== 'kvcache' && d.intent !== 'hybrid' && d.intent !== 'blend') return;
    const b = this.backends[d.instance]!;
    const fall = (why: string): void => {
      f.planned = d.intent;
      f.fallback = why;
      d.intent = 'text';
      d.reason += `;fallback-text:${why}`;
      this.records.fallbacks.inc({ reason: why.split(':')[0]! });
      this.booking.kvDone(f);
    };
    if (d.intent !== 'blend' && d.reusedTokens <= d.cachedTokens) return; // the instance holds the prefix already (engine's view): nothing to move
    if (!b.spec.lmcacheRedis) return fall('no-lmcache-redis');
    if (!this.kdnUrl) return fall('no-kdn');
    const target = b.spec.lmcacheRedis;
    const docs = f.req!.knowledge;
    const kid = docs[0]!.kid;
    // beyond the first document the engine counted on the KV of the whole leading sequence
    // (cluster KdnSpec.sequences): ask for it (the KDN's `sequence` extension, built on first use)
    const blend = d.intent === 'blend';
    const sequence = !blend && docs.length > 1 && d.reusedTokens > docs[0]!.tokens;
    const kids = sequence || blend ? docs.map((k) => k.kid) : [kid];
    // the target's model path goes along: the KDN refuses KV keyed for another model (409 naming model_path)
    const modelPath = await this.rootOf(d.instance);
    let ack: { ok?: boolean; queue_ms?: number; transfer_ms?: number; tokens_injected?: number; wire_bytes?: number; detail?: string; injected_kids?: string[] };
    const tStart = this.now();
    try {
      const res = await undiciRequest(`${this.kdnUrl}/knowledge/inject_ready_kv`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ request_id: f.id, model: this.model() ?? undefined, ...(modelPath ? { model_path: modelPath } : {}), knowledge_ids: kids, ...(sequence ? { sequence: true } : {}), ...(blend ? { blend: true } : {}), redis_host: target.host, redis_port: target.port, redis_db: target.db, redis_password: target.password, tokens: d.reusedTokens }),
        signal: f.attemptSignal(),
        headersTimeout: 120_000,
        bodyTimeout: 120_000,
      });
      const text = await res.body.text();
      if (res.statusCode !== 200) return fall(`kdn-http-${res.statusCode}: ${kdnDetail(text).slice(0, 200)}`);
      ack = JSON.parse(text);
    } catch (e) {
      if (f.abort.signal.aborted || f.instanceLost) {
        this.booking.kvDone(f);
        f.checkAborted();
        throw new RetryableError(`instance ${this.ids[d.instance]} went down during the KV injection: ${f.instanceLost}`, false);
      }
      return fall(`kdn-unreachable: ${(e as Error).message}`);
    }
    const tAck = this.now();
    f.ackMs = tAck - tStart;
    this.booking.kvDone(f);
    if (!ack.ok || !(blend ? (ack.injected_kids ?? []).length > 0 : (ack.injected_kids ?? []).includes(kid))) return fall(`kv-inject-failed: ${(ack.detail ?? 'not injected').slice(0, 160)}`);
    f.linkWait = Math.min((ack.queue_ms ?? 0) * this.timeScale, tAck - tStart);
    f.transfer = Math.min((ack.transfer_ms ?? 0) * this.timeScale, tAck - tStart - f.linkWait);
    f.transferTokens = ack.tokens_injected ?? 0;
    f.wireBytes = ack.wire_bytes ?? 0;
    const labels = { kdn: this.kdnIds[d.kdn] ?? 'kdn', instance: this.ids[d.instance]! };
    this.records.linkBusy.inc(labels, f.transfer / 1000);
    this.records.linkWait.inc(labels, f.linkWait / 1000);
  }
}

/** The `detail` of a KDN error body (FastAPI shape), else the text itself. */
function kdnDetail(text: string): string {
  try {
    const d = (JSON.parse(text) as { detail?: unknown }).detail;
    return typeof d === 'string' ? d : text;
  } catch {
    return text;
  }
}
