/**
 * Gateway operations endpoints: `GET /v1/models` (the backends' answer), `GET /health` (200 while
 * an instance is routable; 503 in OpenAI's error shape otherwise or while shutting down),
 * `GET /metrics` (Prometheus), `GET /debug/status`, `GET|PUT /debug/strategy` (switch strategy at
 * run time; parameters checked by the one strategy schema, engine/strategies/params.ts: a bad
 * name or parameter is a 400 naming it and routing stays unchanged).
 */
import type { PeerSync } from './peers.js';
import type { FastifyInstance } from 'fastify';
import type { Engine } from '../../engine/engine.js';
import { STRATEGY_NAMES } from '../../engine/strategies/index.js';
import type { Backend, KvEventSubscriber } from '../backends.js';
import { ApiError, badRequest } from '../openai.js';
import type { Recorder } from '../recorder.js';
import type { KnowledgeStore } from './knowledge.js';
import type { GatewayRecords } from './records.js';

/** What the ops endpoints read. */
export interface OpsDeps {
  engine: Engine;
  backends: readonly Backend[];
  records: GatewayRecords;
  recorder: Recorder | null;
  store: KnowledgeStore;
  subscribers: readonly KvEventSubscriber[];
  kdnUrl: string | null;
  timeScale: number;
  now: () => number;
  inflight: () => number;
  routed: () => number;
  closing: () => boolean;
  model: () => string | null;
  /** the backends' /v1/models body (asked when unknown). */
  models: () => Promise<unknown>;
  strategy: () => { name: string; params: Record<string, unknown> };
  /** switches the strategy. @throws Error (unknown name) / StrategyParamError (bad parameter). */
  setStrategy: (name: string, params: Record<string, unknown>) => void;
  /** gateway replicas: membership and lag (null when not replicated). */
  peers?: () => ReturnType<PeerSync['status']> | null;
  log: (msg: string) => void;
}

const r3 = (x: number): number => Math.round(x * 1000) / 1000;

/** Registers the ops routes. */
export function registerOps(app: FastifyInstance, d: OpsDeps): void {
  const { engine, backends } = d;
  app.get('/v1/models', async () => {
    const m = await d.models();
    if (m === null) throw new ApiError(503, 'no backend answered /v1/models', 'ServiceUnavailableError');
    return m;
  });
  app.get('/health', async (_rq, reply) => {
    if (d.closing() || !engine.up.some(Boolean)) return reply.status(503).type('application/json').send(new ApiError(503, d.closing() ? 'gateway shutting down' : 'no instance is up', 'ServiceUnavailableError').body());
    return reply.status(200).send('');
  });
  app.get('/metrics', async (_rq, reply) => reply.type(d.records.registry.contentType).send(await d.records.registry.metrics()));
  app.get('/debug/status', async () => {
    const t = d.now();
    const s = d.strategy();
    return {
      strategy: s.name,
      strategy_params: s.params,
      time_scale: d.timeScale,
      now_ms: r3(t),
      model: d.model(),
      inflight: d.inflight(),
      routed: d.routed(),
      records: d.recorder?.count ?? 0,
      booked_requests: engine.loads.size,
      intent_counts: engine.intentCounts,
      kdn: { url: d.kdnUrl, knowledge_cached: d.store.size, failures: d.store.failures },
      replicas: d.peers?.() ?? null,
      instances: backends.map((b, i) => ({
        id: b.spec.id,
        url: b.url,
        role: engine.cluster.instances[i]!.role ?? 'mixed',
        up: engine.up[i],
        down_reason: b.downReason,
        inflight: b.inflight,
        sent: b.sent,
        failures: b.failures,
        lmcache_redis: b.spec.lmcacheRedis ? `${b.spec.lmcacheRedis.host}:${b.spec.lmcacheRedis.port}/${b.spec.lmcacheRedis.db}` : null,
        booked: { ...engine.loads.loads[i]!, backlog_ms: r3(engine.loads.backlogMs(i, t)) },
        kv_events: (() => {
          const sub = d.subscribers.find((x) => x.index === i);
          return sub ? { endpoint: sub.source.endpoint, last_seq: sub.lastSeq === null ? null : Number(sub.lastSeq), batches: sub.batches, gaps: sub.gaps, lost: sub.lost, replayed: sub.replayed } : null;
        })(),
      })),
    };
  });
  app.get('/debug/strategy', async () => {
    const s = d.strategy();
    return { strategy: s.name, params: s.params, available: STRATEGY_NAMES, intent_counts: engine.intentCounts };
  });
  app.put('/debug/strategy', async (rq) => {
    const b = rq.body as { strategy?: unknown; params?: unknown } | undefined;
    if (!b || typeof b !== 'object' || Array.isArray(b)) throw badRequest('debug/strategy: request body must be a JSON object {"strategy": "...", "params": {...}}', null);
    if (typeof b.strategy !== 'string' || !b.strategy) throw badRequest(`strategy: expected a strategy name (one of ${STRATEGY_NAMES.join(', ')})`, 'strategy');
    if (b.params !== undefined && (b.params === null || typeof b.params !== 'object' || Array.isArray(b.params))) throw badRequest('params: expected an object of strategy parameters', 'params');
    const prev = d.strategy().name;
    try {
      d.setStrategy(b.strategy, (b.params as Record<string, unknown>) ?? {});
    } catch (e) {
      const pe = e as { name?: string; param?: string; message: string };
      throw badRequest(pe.message, pe.name === 'StrategyParamError' ? 'params' : 'strategy');
    }
    d.log(`strategy switched from ${prev} to ${b.strategy}`);
    const s = d.strategy();
    return { strategy: s.name, params: s.params, previous: prev };
  });
}
