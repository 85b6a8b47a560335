/**
 * Gateway replicas that share one engine view (`kvlab gateway --peers redis://HOST:PORT/DB`):
 * RadixMesh's replicated op-log (reference/routers.md) on a Redis Stream.
 *
 * Every replica appends its engine bookkeeping to the stream `kvlab:gateway:oplog` as entries
 * {o: origin replica, s: sequence number (1, 2, ... per origin), k: kind, b: JSON body}:
 * `d` dispatch (the request, the decision and what it booked: engine `dispatchOp`), `x` KV
 * transfer done, `f` first token (a disaggregated request's: P's answer), `p` P/D hand-off done
 * (D's first token), `co` a disaggregated request fell back to colocated on P (dead D; the
 * dispatch carries the decode instance), `c` completion (output tokens), `a` abort, `kv` a KV event it
 * consumed and mapped to engine block ids, `h` heartbeat, `r` restart (a replica that starts
 * again under the same id continues its sequence numbers and voids its earlier bookings). Every replica reads the stream and
 * applies the other origins' entries, in order per origin and exactly once (an entry whose
 * sequence number is not above the origin's last applied one is skipped), to its own engine:
 * `applyRemoteDispatch` and the ordinary hooks, with request ids namespaced by origin
 * (`origin|id`) so two replicas' ids never collide.
 *
 * A (re)starting replica reads the stream from its first entry (catch-up) before serving.
 * A replica silent for `timeoutMs` (no entry, not even a heartbeat) has its bookings released
 * (`onAbort`): a killed gateway's load does not stay booked forever. Redis stream ids carry the
 * Redis server's clock, so "silent" is judged on one clock. Publishing never blocks routing: a
 * failed XADD is counted and routing goes on; one replica (or Redis) down never stops the others.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Redis } from 'ioredis';
import client from 'prom-client';
import type { DispatchOp, Engine } from '../../engine/engine.js';
import type { Decision, EngineRequest, KvEvent } from '../../engine/types.js';

/** Default stream key. */
export const OPLOG_STREAM = 'kvlab:gateway:oplog';

/** A replica id for this process: host:pid:random. */
export function defaultReplicaId(): string {
  return `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
}

/** Options of {@link PeerSync}. */
export interface PeerSyncOptions {
  /** redis://HOST:PORT/DB */
  url: string;
  engine: Engine;
  /** engine clock (model ms). */
  now: () => number;
  /** this replica's id (default host:pid:random). */
  replicaId?: string;
  stream?: string;
  /** heartbeat period, wall ms (default 1,000). */
  heartbeatMs?: number;
  /** a replica silent this long (wall ms) has its bookings released (default 5,000). */
  timeoutMs?: number;
  /** approximate stream length bound (XADD MAXLEN ~, default 1,000,000 entries). */
  maxLen?: number;
  /** Prometheus registry for the peer metrics. */
  registry?: client.Registry;
  log?: (msg: string) => void;
}

/** What this replica knows of another one. */
interface PeerState {
  lastSeq: number;
  /** Redis time (ms) of its last entry. */
  lastHeardMs: number;
  /** Redis time of the last applied entry minus the local wall time when it was applied. */
  lagMs: number;
  /** namespaced ids it booked that are not finished here. */
  booked: Set<string>;
  applied: number;
  expired: number;
  alive: boolean;
}

/** The wire form of a dispatch (no alternatives: they are this replica's explanation only). */
interface DispatchBody {
  req: EngineRequest;
  d: Pick<Decision, 'requestId' | 'strategy' | 'instance' | 'kdn' | 'intent' | 'reusedTokens' | 'cachedTokens' | 'expectedOutputTokens' | 'peer' | 'decode'>;
  c: number;
  w: number;
  tt: number;
  tm: number;
}

/** Replicates this gateway's engine bookkeeping to its peers and applies theirs (see the module doc). */
export class PeerSync {
  readonly replicaId: string;
  readonly stream: string;
  private readonly pub: Redis;
  private readonly sub: Redis;
  private seq = 0;
  private lastId = '0-0';
  private readonly peers = new Map<string, PeerState>();
  private running = false;
  private readLoop: Promise<void> | undefined;
  private hbTimer: NodeJS.Timeout | undefined;
  private readonly heartbeatMs: number;
  private readonly timeoutMs: number;
  private readonly maxLen: number;
  /** entries published / failed to publish / applied / gaps seen (missing sequence numbers). */
  readonly counts = { published: 0, publishErrors: 0, applied: 0, skipped: 0, gaps: 0, expired: 0 };
  private readonly log: (m: string) => void;

  constructor(private readonly o: PeerSyncOptions) {
    this.replicaId = o.replicaId ?? defaultReplicaId();
    if (this.replicaId.includes('|')) throw new Error(`--replica-id "${this.replicaId}": must not contain "|"`);
    this.stream = o.stream ?? OPLOG_STREAM;
    this.heartbeatMs = o.heartbeatMs ?? 1000;
    this.timeoutMs = o.timeoutMs ?? 5000;
    this.maxLen = o.maxLen ?? 1_000_000;
    if (!(this.heartbeatMs > 0) || !(this.timeoutMs > this.heartbeatMs)) throw new Error(`peers: need heartbeat > 0 and timeout > heartbeat (got ${this.heartbeatMs} / ${this.timeoutMs} ms)`);
    this.log = o.log ?? (() => {});
    let u: URL;
    try {
      u = new URL(o.url);
    } catch {
      throw new Error(`--peers "${o.url}": expected redis://HOST:PORT/DB`);
    }
    if (u.protocol !== 'redis:') throw new Error(`--peers "${o.url}": expected a redis:// URL`);
    const conn = { host: u.hostname, port: u.port ? Number(u.port) : 6379, db: Number(u.pathname.replace(/^\//, '') || 0), password: u.password ? decodeURIComponent(u.password) : undefined, lazyConnect: true };
    if (!Number.isInteger(conn.db) || conn.db < 0) throw new Error(`--peers "${o.url}": bad database number`);
    this.pub = new Redis({ ...conn, maxRetriesPerRequest: 1, enableOfflineQueue: false });
    this.sub = new Redis({ ...conn, maxRetriesPerRequest: null });
    this.pub.on('error', () => {});
    this.sub.on('error', () => {});
    if (o.registry) this.registerMetrics(o.registry);
  }

  /**
   * Connects, catches up on the whole stream (applying the other replicas' entries), then
   * follows it and starts the heartbeat. @throws Error when Redis cannot be reached.
   */
  async start(): Promise<void> {
    try {
      await this.pub.connect();
      await this.sub.connect();
    } catch (e) {
      this.pub.disconnect();
      this.sub.disconnect();
      throw new Error(`--peers ${this.o.url}: cannot connect to Redis: ${(e as Error).message}`);
    }
    // catch up: everything already in the stream
    for (;;) {
      const part = (await this.sub.xrange(this.stream, this.lastId === '0-0' ? '-' : `(${this.lastId}`, '+', 'COUNT', 1000)) as [string, string[]][];
      if (part.length === 0) break;
      for (const [id, f] of part) this.apply(id, f);
    }
    this.expire();
    this.running = true;
    this.readLoop = this.follow();
    // a restart: whatever an earlier life of this replica id booked on the peers is void
    this.publish('r', '');
    this.hbTimer = setInterval(() => {
      this.publish('h', '');
      this.expire();
    }, this.heartbeatMs);
    this.hbTimer.unref();
    this.log(`peers: replica ${this.replicaId} on ${this.o.url} (${this.stream}), ${this.peers.size} peer(s) known after catch-up`);
  }

  /** A local dispatch was booked (call after engine.onDispatch). */
  dispatched(op: DispatchOp): void {
    const d = op.decision;
    const body: DispatchBody = {
      req: op.req,
      d: { requestId: d.requestId, strategy: d.strategy, instance: d.instance, kdn: d.kdn, intent: d.intent, reusedTokens: d.reusedTokens, cachedTokens: d.cachedTokens, expectedOutputTokens: d.expectedOutputTokens, ...(d.peer ? { peer: d.peer } : {}), ...(d.decode !== undefined && d.decode >= 0 && d.decode !== d.instance ? { decode: d.decode } : {}) },
      c: op.computeTokens,
      w: op.workMs,
      tt: op.transferTokens,
      tm: op.transferMs,
    };
    this.publish('d', JSON.stringify(body));
  }

  /** Local KV transfer ACK, first token, completion, abort of request `id`. */
  kvDone(id: string): void {
    this.publish('x', JSON.stringify({ id }));
  }
  firstToken(id: string): void {
    this.publish('f', JSON.stringify({ id }));
  }
  completed(id: string, outputTokens: number | undefined): void {
    this.publish('c', JSON.stringify({ id, n: outputTokens }));
  }
  aborted(id: string): void {
    this.publish('a', JSON.stringify({ id }));
  }
  /** P/D: the hand-off of request `id` ended (D's first token); `id` fell back to colocated on its prefill instance. */
  pdDone(id: string): void {
    this.publish('p', JSON.stringify({ id }));
  }
  colocated(id: string): void {
    this.publish('co', JSON.stringify({ id }));
  }
  /** A KV event this replica consumed, as engine block ids. */
  kvEvent(ev: KvEvent): void {
    this.publish('kv', JSON.stringify({ i: ev.instance, k: ev.kind, b: ev.blocks }));
  }

  /** Membership and lag for /debug/status. */
  status(): { replica: string; stream: string; seq: number; counts: PeerSync['counts']; peers: { id: string; alive: boolean; last_seq: number; lag_ms: number; silent_ms: number; booked: number; applied: number; expired: number }[] } {
    const nowMs = Date.now();
    return {
      replica: this.replicaId,
      stream: this.stream,
      seq: this.seq,
      counts: { ...this.counts },
      peers: [...this.peers.entries()].map(([id, p]) => ({ id, alive: p.alive, last_seq: p.lastSeq, lag_ms: Math.round(p.lagMs), silent_ms: Math.max(0, nowMs - p.lastHeardMs), booked: p.booked.size, applied: p.applied, expired: p.expired })),
    };
  }

  /** Stops following and publishing; closes the connections. Idempotent. */
  async close(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    if (this.hbTimer) clearInterval(this.hbTimer);
    this.sub.disconnect();
    await this.readLoop?.catch(() => {});
    await this.pub.quit().catch(() => this.pub.disconnect());
  }

  private publish(kind: string, body: string): void {
    const s = ++this.seq;
    this.pub
      .xadd(this.stream, 'MAXLEN', '~', String(this.maxLen), '*', 'o', this.replicaId, 's', String(s), 'k', kind, 'b', body)
      .then(() => void this.counts.published++)
      .catch(() => void this.counts.publishErrors++);
  }

  private async follow(): Promise<void> {
    while (this.running) {
      try {
        const r = (await this.sub.xread('COUNT', 1000, 'BLOCK', 1000, 'STREAMS', this.stream, this.lastId)) as [string, [string, string[]][]][] | null;
        if (!r) continue;
        for (const [, entries] of r) for (const [id, f] of entries) this.apply(id, f);
      } catch (e) {
        if (!this.running) return;
        this.log(`peers: reading ${this.stream} failed: ${(e as Error).message}; retrying`);
        await new Promise((res) => setTimeout(res, 500));
      }
    }
  }

  /** Applies one stream entry (fields as a flat [name, value, ...] list). */
  private apply(id: string, f: string[]): void {
    this.lastId = id;
    const fields: Record<string, string> = {};
    for (let i = 0; i + 1 < f.length; i += 2) fields[f[i]!] = f[i + 1]!;
    const origin = fields['o'];
    const seq = Number(fields['s']);
    const kind = fields['k'];
    if (!origin || !Number.isSafeInteger(seq) || !kind) return;
    if (origin === this.replicaId) {
      // our own earlier life (a restart with the same --replica-id): continue its numbering
      if (seq > this.seq) this.seq = seq;
      return;
    }
    const atMs = Number(id.slice(0, id.indexOf('-')));
    let p = this.peers.get(origin);
    if (!p) {
      p = { lastSeq: 0, lastHeardMs: atMs, lagMs: 0, booked: new Set(), applied: 0, expired: 0, alive: true };
      this.peers.set(origin, p);
    }
    if (seq <= p.lastSeq) {
      this.counts.skipped++;
      return;
    }
    if (seq > p.lastSeq + 1 && p.lastSeq > 0) this.counts.gaps += seq - p.lastSeq - 1;
    p.lastSeq = seq;
    p.lastHeardMs = Math.max(p.lastHeardMs, atMs);
    p.lagMs = Math.max(0, Date.now() - atMs);
    if (!p.alive) {
      p.alive = true;
      this.log(`peers: replica ${origin} is back`);
    }
    if (kind === 'h') return;
    if (kind === 'r') {
      this.release(origin, p, 'restarted');
      return;
    }
    let b: Record<string, unknown>;
    try {
      b = JSON.parse(fields['b'] ?? '') as Record<string, unknown>;
    } catch {
      this.counts.skipped++;
      return;
    }
    const engine = this.o.engine;
    const t = this.o.now();
    const ns = (x: unknown): string => `${origin}|${String(x)}`;
    p.applied++;
    this.counts.applied++;
    switch (kind) {
      case 'd': {
        const body = b as unknown as DispatchBody;
        const req = { ...body.req, id: ns(body.req.id) };
        const d = { ...body.d, requestId: req.id, predicted: { prepareMs: 0, linkWaitMs: 0, transferMs: 0, kvLoadMs: 0, queueMs: 0, prefillMs: 0, ttftMs: 0 }, alternatives: [], reason: `peer ${origin}` } as Decision;
        if (!(d.instance >= 0 && d.instance < engine.up.length)) return;
        engine.applyRemoteDispatch({ req, decision: d, computeTokens: body.c, workMs: body.w, transferTokens: body.tt, transferMs: body.tm }, t);
        p.booked.add(req.id);
        return;
      }
      case 'x':
        engine.onKvTransferDone(ns(b['id']), t);
        return;
      case 'f':
        engine.onFirstToken(ns(b['id']), t);
        return;
      case 'p':
        engine.onPdTransferDone(ns(b['id']), t);
        return;
      case 'co':
        engine.colocate(ns(b['id']), t);
        return;
      case 'c':
        engine.onComplete(ns(b['id']), t, typeof b['n'] === 'number' ? b['n'] : undefined);
        p.booked.delete(ns(b['id']));
        return;
      case 'a':
        engine.onAbort(ns(b['id']), t);
        p.booked.delete(ns(b['id']));
        return;
      case 'kv': {
        const i = Number(b['i']);
        const k = b['k'];
        if (Number.isInteger(i) && (k === 'stored' || k === 'removed' || k === 'cleared') && Array.isArray(b['b'])) engine.onKvEvent({ instance: i, kind: k, blocks: b['b'] as number[] });
        return;
      }
      default:
        this.counts.skipped++;
    }
  }

  /** Releases the bookings of replicas silent for longer than the timeout (Redis clock). */
  private expire(): void {
    const nowMs = Date.now();
    for (const [id, p] of this.peers) {
      if (!p.alive || nowMs - p.lastHeardMs <= this.timeoutMs) continue;
      p.alive = false;
      this.release(id, p, `silent for ${nowMs - p.lastHeardMs} ms`);
    }
  }

  /** Releases every booking of peer `id` (it died or restarted). */
  private release(id: string, p: PeerState, why: string): void {
    const t = this.o.now();
    for (const rid of p.booked) this.o.engine.onAbort(rid, t);
    p.expired += p.booked.size;
    this.counts.expired += p.booked.size;
    if (p.booked.size) this.log(`peers: replica ${id} ${why}: released its ${p.booked.size} booking(s)`);
    p.booked.clear();
  }

  private registerMetrics(registry: client.Registry): void {
    const registers = [registry];
    const self = this;
    new client.Gauge({
      name: 'kvlab_gateway_peers',
      help: 'Other gateway replicas known on the op-log, by state (alive = heard within the timeout)',
      labelNames: ['state'],
      registers,
      collect() {
        let alive = 0;
        for (const p of self.peers.values()) if (p.alive) alive++;
        this.set({ state: 'alive' }, alive);
        this.set({ state: 'expired' }, self.peers.size - alive);
      },
    });
    new client.Gauge({
      name: 'kvlab_gateway_peer_lag_ms',
      help: 'Per peer replica: wall ms between its last entry reaching Redis and this replica applying it',
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const [id, p] of self.peers) this.set({ peer: id }, p.lagMs);
      },
    });
    new client.Gauge({
      name: 'kvlab_gateway_peer_booked',
      help: "Per peer replica: its bookings currently applied to this replica's engine",
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const [id, p] of self.peers) this.set({ peer: id }, p.booked.size);
      },
    });
    new client.Gauge({
      name: 'kvlab_gateway_oplog_entries',
      help: 'Op-log entries: published, publish_errors, applied, skipped (duplicates), gaps (missing sequence numbers), expired (bookings of silent replicas released)',
      labelNames: ['what'],
      registers,
      collect() {
        for (const [k, v] of Object.entries(self.counts)) this.set({ what: k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`) }, v);
      },
    });
  }
}
