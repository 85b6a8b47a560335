/**
 * `kvlab live demo`: the whole live path on one machine, then the same workload simulated, and
 * the two compared.
 *
 *  1. starts one `redis-server` (live/redis-launcher.ts; db 0 = the KDN's store, db 1..n = each
 *     instance's LMCache Redis), n emulators (live/emulator.ts, the profile's timing on the wall
 *     clock × `timeScale`, cold start off, like the simulator), a builder emulator whose LMCache
 *     stores into the KDN's db 0 (fast-forwarded: its timing is not measured), a KDN
 *     (live/kdn.ts, `builder` = that emulator: real KV, no synthesised bytes) whose links
 *     charge exactly what the simulator charges (`wireBytesPerToken` = the profile's KV bytes per
 *     token / the KDN compression, the cluster's link bandwidth/latency/efficiency, paced ×
 *     `timeScale`) and the gateway (live/gateway.ts) with the same cluster;
 *  2. registers the knowledge through the builder: the NQ documents
 *     (../shared/data/workloads/cacheroute-nq, via traces/nq.ts) when present, else the synthetic
 *     catalogue's documents the workload uses, synthesised to their token lengths
 *     (live/replay.ts `synthesizeDocument`); each document's KV is what the builder computed;
 *  3. replays the workload through the gateway (live/replay.ts; DIR/replay = client view,
 *     DIR/live = the gateway's records);
 *  4. simulates **the requests the gateway actually routed** (same ids, arrivals, prompt tokens,
 *     block ids, knowledge tokens; sim/run.ts `runLoaded`) with the same strategy, profile and
 *     cluster, step noise 0, and KV events never delivered (the gateway runs on predict-on-route
 *     only, so the simulated engine must too) → DIR/sim;
 *  5. writes DIR/diff.json = `kvlab diff DIR/live DIR/sim` (A = observed) and prints simulated vs
 *     observed TTFT beside the engine's decision-time prediction vs observed.
 * With `blend` (`kvlab live demo --blend`) the workload has 3–5 documents per request (the `rag`
 * preset's retrieval) and every instance runs CacheBlend on both sides: emulators `blend`, a
 * CacheBlend builder computing each document's segment KV for the KDN (live/kdn-blend.ts), the
 * cluster's `blend` capability for the gateway's engine and the simulator.
 * With `pd` (`kvlab live demo --pd`) the two instances are 1 prefill + 1 decode (roles 1P1D, both
 * the gateway's engine and the simulator): emulator i0 `--role prefill`, i1 `--role decode` with
 * the cluster's P -> D link; the gateway drives each request as vLLM's disaggregated-serving proxy
 * does (prefill on P with kv_transfer_params, decode on D, D's tokens streamed: pd.firstToken
 * `decode`), and the simulator hands the KV off on the same link model.
 * Every server it started is stopped at the end, on error and on SIGINT/SIGTERM.
 * All times in the outputs are model ms (wall ms × timeScale).
 */
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import type { DecideContext, Strategy, StrategyChoice } from '../engine/engine.js';
import { createStrategy } from '../engine/strategies/index.js';
import type { Intent, TraceRequest } from '../engine/types.js';
import { KVLAB_VERSION } from '../engine/version.js';
import { observed, summarize, writeRecords } from '../sim/metrics.js';
import { simulate } from '../sim/simulator.js';
import { resolveCluster, type ResolvedCluster } from '../sim/cluster.js';
import { DEFAULT_PROFILE, loadProfile } from '../sim/profiles.js';
import { runLoaded } from '../sim/run.js';
import { defaultNqDir } from '../traces/load.js';
import { loadNq } from '../traces/nq.js';
import { generateSynthetic } from '../traces/synthetic.js';
import type { LoadedTrace } from '../traces/schema.js';
import { backendSpecs } from './backends.js';
import { diffRuns, type DiffResult } from './diff.js';
import { startEmulator, type EmulatorHandle } from './emulator.js';
import { livePd, startGateway, type GatewayHandle } from './gateway.js';
import { startKdn, type KdnHandle } from './kdn.js';
import { readRecords, type TimingRecord } from './recorder.js';
import { freePort, launchRedis, type RedisServerHandle } from './redis-launcher.js';
import { registerDocuments, renameKnowledge, runReplay, synthesizeDocument, workloadDocuments, type KnowledgeDoc } from './replay.js';
import { existsSync } from 'node:fs';

/** Options of {@link runDemo}. */
export interface DemoOptions {
  out: string;
  /** requests replayed (default 40). */
  requests?: number;
  strategy?: string;
  strategyParams?: Record<string, unknown>;
  /** emulated instances (default 2). */
  instances?: number;
  /** model ms per wall ms for emulators, KDN links, gateway and client (default 1: real time). */
  timeScale?: number;
  /** `nq` (default when the NQ directory exists) or `synthetic`. */
  workload?: 'nq' | 'synthetic';
  /** NQ directory (default traces/load.ts `defaultNqDir()`). */
  nqDir?: string;
  /** mean arrival rate, requests per model second (default 0.5). */
  rate?: number;
  /** output tokens per request (default 32). */
  outputTokens?: number;
  /** instance profile (default rtx5090x8-llama3-70b). */
  profile?: string;
  seed?: number;
  /**
   * emulators publish vLLM KV events and the gateway follows them (the simulated engine then
   * gets its KV events without delay too); default false: predict-on-route only on both sides.
   */
  kvEvents?: boolean;
  /** 1 prefill + 1 decode instance (roles 1P1D) instead of `instances` mixed ones (module doc). */
  pd?: boolean;
  /**
   * multi-document RAG with CacheBlend (module doc): the synthetic workload with 3–5 documents per
   * request (the `rag` preset's retrieval), every instance running CacheBlend on both sides.
   */
  blend?: boolean;
  /** progress lines (default: stderr). */
  log?: (line: string) => void;
}

/** What the demo measured. */
export interface DemoResult {
  out: string;
  diff: DiffResult;
  /** simulated vs observed TTFT MAPE (fraction). */
  simVsObservedMape: number | null;
  /** engine decision-time prediction vs observed TTFT MAPE (fraction). */
  predictionVsObservedMape: number | null;
  /** same, client-observed TTFT (replay records) vs simulated. */
  simVsClientMape: number | null;
  /** simulated with the strategy deciding on its own (DIR/sim-own) vs observed. */
  simOwnVsObservedMape: number | null;
  requests: number;
  completed: number;
  /** documents registered in the KDN, and those whose KV the builder computed (kv_source builder). */
  documents: { registered: number; builtKv: number; builtBlendKv: number };
  wallMs: number;
  text: string;
}

const MODEL = 'llama3-70b';
/** The builder emulator runs this many times faster than real time (its timing is not measured). */
const BUILDER_TIME_SCALE = 50;
const MODEL_PATH = '/models/Meta-Llama-3-70B-Instruct';

/** Builds the demo workload (NQ or synthetic) with the demo's sizes and its documents. */
async function demoWorkload(o: Required<Pick<DemoOptions, 'requests' | 'rate' | 'outputTokens' | 'seed'>> & { workload: 'nq' | 'synthetic'; nqDir: string; multiDoc: boolean }): Promise<{ trace: LoadedTrace; docs: KnowledgeDoc[] }> {
  if (o.workload === 'nq') {
    const trace = await loadNq(o.nqDir, { requests: o.requests, rate: o.rate, outputTokens: o.outputTokens, seed: o.seed, zipfS: 1.0 });
    return { trace, docs: workloadDocuments(trace.requests, 'nq', { dir: o.nqDir }) };
  }
  const wo = {
    requests: o.requests,
    rate: o.rate,
    seed: o.seed,
    docs: 50,
    docMaxTokens: 3000,
    outputMedianTokens: o.outputTokens,
    outputSigma: 0,
    outputMinTokens: o.outputTokens,
    outputMaxTokens: o.outputTokens,
    // the `rag` preset's retrieval: 3–5 passages of median 400 tokens, query-specific order
    ...(o.multiDoc ? { docsPerRequest: 3, docsPerRequestMax: 5, docOrder: 'shuffled' as const, docMedianTokens: 400, docMaxTokens: 1500 } : {}),
  };
  const trace = generateSynthetic(wo);
  return { trace, docs: workloadDocuments(trace.requests, 'synthetic', wo) };
}

/**
 * Runs the demo; see the module doc. Stops everything it started before returning or throwing.
 * @throws Error when redis-server is missing (naming the Debian package) or a step fails.
 */
export async function runDemo(opts: DemoOptions): Promise<DemoResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const out = resolve(opts.out);
  // never overwrite an earlier demo's records (its live/ and replay/ runs cannot be regenerated)
  for (const sub of ['live', 'replay']) {
    if (existsSync(join(out, sub, 'records.jsonl'))) throw new Error(`${opts.out} already holds a live demo (${join(out, sub, 'records.jsonl')}); use a new --out directory`);
  }
  mkdirSync(out, { recursive: true });
  if (opts.pd && opts.instances !== undefined && opts.instances !== 2) throw new Error(`--pd runs 1 prefill + 1 decode instance: --instances must be 2 or absent (got ${opts.instances})`);
  const n = opts.instances ?? 2;
  const ts = opts.timeScale ?? 1;
  const strategy = opts.strategy ?? 'kvlab';
  const nqDir = opts.nqDir ?? defaultNqDir();
  const workload = opts.workload ?? (opts.blend ? 'synthetic' : existsSync(join(nqDir, 'workload_nq.json')) ? 'nq' : 'synthetic');
  if (opts.blend && workload !== 'synthetic') throw new Error('--blend runs the multi-document synthetic workload: --workload must be synthetic or absent');
  if (opts.blend && opts.pd) throw new Error('--blend and --pd are separate demos: give one of them');
  if (!Number.isInteger(n) || n < 1) throw new Error(`--instances must be an integer >= 1 (got ${opts.instances})`);
  if (!(ts > 0)) throw new Error(`--time-scale must be > 0 (got ${opts.timeScale})`);
  const t0 = performance.now();
  const stops: Array<() => Promise<unknown>> = [];
  let stopped = false;
  const stopAll = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    for (const s of stops.reverse()) await s().catch(() => undefined);
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`live demo: ${sig}, stopping everything it started`);
    void stopAll().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const profile = loadProfile(opts.profile ?? DEFAULT_PROFILE);
    // ---- the cluster both the gateway's engine and the simulator use
    const rc0: ResolvedCluster = resolveCluster({ instances: n, sim: { stepNoiseCv: 0 } }, { profile: profile.name, kvEventDelayMs: opts.kvEvents ? 0 : 1e9, ...(opts.pd ? { roles: '1P1D' } : {}), ...(opts.blend ? { blend: true } : {}) }, DEFAULT_PROFILE);
    // the hand-off as the gateway drives it (after the prefill, first token from D), on both sides
    const rc: ResolvedCluster = { ...rc0, spec: livePd(rc0.spec) };
    const roles = rc.spec.instances.map((s) => s.role ?? 'mixed');
    const kdnSpec = rc.spec.kdns[0]!;
    const link = rc.spec.links[0]![0]!;

    log(`live demo: ${workload} workload, ${opts.requests ?? 40} requests, ${opts.pd ? '1 prefill + 1 decode' : n} × ${profile.name}, strategy ${strategy}, time scale ${ts}; starting Redis, ${n} emulators, a KDN and the gateway`);
    const { trace, docs } = await demoWorkload({ workload, nqDir, requests: opts.requests ?? 40, rate: opts.rate ?? 0.5, outputTokens: opts.outputTokens ?? 32, seed: opts.seed ?? 1, multiDoc: !!opts.blend });

    // ---- servers
    const redis: RedisServerHandle = await launchRedis({ maxmemory: '1gb' });
    stops.push(() => redis.stop());
    const ems: EmulatorHandle[] = [];
    const kvPorts: number[] = [];
    for (let i = 0; i < n; i++) {
      const kvPort = opts.kvEvents ? await freePort() : 0;
      kvPorts.push(kvPort);
      const pdRole = roles[i] !== 'mixed' ? { role: roles[i], engineId: rc.spec.instances[i]!.id, pdLink: rc.spec.pd!.link } : {};
      const em = await startEmulator({ profile, model: MODEL, modelPath: MODEL_PATH, redisUrl: `${redis.url}/${i + 1}`, timeScale: ts, coldStart: false, ...pdRole, ...(opts.blend ? { blend: { ...rc.spec.instances[i]!.blend } } : {}), ...(opts.kvEvents ? { kvEvents: { endpoint: `tcp://127.0.0.1:${kvPort}` } } : {}) });
      stops.push(() => em.close());
      ems.push(em);
    }
    // the builder: an emulator whose LMCache stores into the KDN's store (db 0), fast-forwarded
    const builder = await startEmulator({ profile, model: MODEL, modelPath: MODEL_PATH, redisUrl: `${redis.url}/0`, timeScale: Math.max(ts, BUILDER_TIME_SCALE), coldStart: false });
    stops.push(() => builder.close());
    // --blend: a CacheBlend builder too (LMCache enable_blending, same db 0) for the documents' segment KV
    const blendBuilder = opts.blend ? await startEmulator({ profile, model: MODEL, modelPath: MODEL_PATH, redisUrl: `${redis.url}/0`, timeScale: Math.max(ts, BUILDER_TIME_SCALE), coldStart: false, blend: {} }) : null;
    if (blendBuilder) stops.push(() => blendBuilder.close());
    const kdn: KdnHandle = await startKdn({
      port: 0,
      redisUrl: `${redis.url}/0`,
      model: MODEL_PATH,
      modelAliases: [MODEL],
      builder: { url: builder.url },
      ...(blendBuilder ? { blend: { builder: { url: blendBuilder.url } } } : {}),
      wireBytesPerToken: profile.model.kvBytesPerToken / kdnSpec.compression,
      link,
      timeScale: ts,
    });
    stops.push(() => kdn.close());
    const gw: GatewayHandle = await startGateway({
      port: 0,
      backends: backendSpecs(
        ems.map((e) => e.url),
        ems.map((_, i) => `${redis.url}/${i + 1}`),
      ),
      kdnUrl: kdn.url,
      strategy,
      strategyParams: opts.strategyParams,
      cluster: rc,
      timeScale: ts,
      out: join(out, 'live'),
      model: MODEL,
      seed: opts.seed ?? 1,
      // the simulator it is compared with predicts with the exact profile: no online calibration
      calibrate: false,
      keepRequests: true,
      ...(opts.kvEvents ? { kvEvents: kvPorts.map((p) => ({ endpoint: `tcp://127.0.0.1:${p}` })) } : {}),
    });
    stops.push(() => gw.close());
    log(`live demo: redis ${redis.url}, emulators ${ems.map((e, i) => (roles[i] !== 'mixed' ? `${e.url} (${roles[i]})` : e.url)).join(' ')}, KDN ${kdn.url}, gateway ${gw.url}`);

    // ---- knowledge (synthetic kids hash the document name: the requests get the KDN's kids)
    const kidMap = await registerDocuments(kdn.url, docs);
    const requests = renameKnowledge(trace.requests, kidMap);
    const snap = (await (await fetch(`${kdn.url}/knowledge/snapshot`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ need_fields: ['kv_source', 'blend_ready'] }) })).json()) as { items: Array<{ kid: string; kv_source?: string; blend_ready?: number }> };
    const ours = new Set(kidMap.values());
    const documents = { registered: ours.size, builtKv: snap.items.filter((i) => ours.has(i.kid) && i.kv_source === 'builder').length, builtBlendKv: snap.items.filter((i) => ours.has(i.kid) && i.blend_ready === 1).length };
    await gw.prefetchKnowledge([...kidMap.values()]);
    log(`live demo: registered ${docs.length} documents in the KDN, their KV built on ${builder.url}${blendBuilder ? ` and their CacheBlend KV on ${blendBuilder.url} (${documents.builtBlendKv} of ${documents.registered})` : ''} (gateway cache warmed)`);
    await warmUp(kdn.url, ems, redis.url);

    // ---- replay through the gateway
    const tr = performance.now();
    let lastLog = performance.now();
    const rep = await runReplay({
      target: gw.url,
      requests,
      speed: ts,
      timeScale: ts,
      out: join(out, 'replay'),
      model: MODEL,
      meta: { strategy, workload },
      onProgress: (d, total) => {
        const t = performance.now();
        if (d === total || t - lastLog >= 5000) {
          lastLog = t;
          log(`live demo: replay ${d}/${total} requests done (${((t - tr) / 1000).toFixed(0)} s)`);
        }
      },
    });
    log(`live demo: replayed ${requests.length} requests in ${((performance.now() - tr) / 1000).toFixed(1)} s wall; simulating the same requests`);
    const routed: TraceRequest[] = gw.requests();
    await stopAll();

    // ---- simulate exactly what the gateway routed: with the live decisions (DIR/sim), and with
    // the strategy deciding on its own (DIR/sim-own)
    const simTrace: LoadedTrace = { requests: [...routed].sort((a, b) => a.arrivalMs - b.arrivalMs), meta: { ...trace.meta, name: `${trace.meta.name}-as-routed` } };
    const liveRecs = readRecords(join(out, 'live'));
    simulateAsDecided(simTrace, rc, createStrategy(strategy, { ...(rc.strategyParams[strategy] ?? {}), ...(opts.strategyParams ?? {}) }), liveRecs, opts.seed ?? 1, join(out, 'sim'));
    runLoaded(simTrace, { strategy, strategyParams: opts.strategyParams, seed: opts.seed ?? 1, stepNoiseCv: 0, out: join(out, 'sim-own') }, rc);

    // ---- compare
    const diff = diffRuns(join(out, 'live'), join(out, 'sim'), join(out, 'diff.json'));
    const own = diffRuns(join(out, 'live'), join(out, 'sim-own'), join(out, 'diff-sim-own.json'));
    const client = diffRuns(join(out, 'replay'), join(out, 'sim'));
    const live = liveRecs;
    const completed = live.filter((r) => r.status === 'ok').length;
    const pdLine = opts.pd ? pdReport(live, readRecords(join(out, 'sim'))) : null;
    const text = demoReport(diff, own, client, live.length, completed, rep.records.length) + (pdLine ? `\n${pdLine}` : '');
    return {
      out,
      diff,
      simVsObservedMape: diff.fields.ttft_ms!.mape,
      predictionVsObservedMape: diff.engine_prediction.ttft_ms.mape,
      simVsClientMape: client.fields.ttft_ms!.mape,
      simOwnVsObservedMape: own.fields.ttft_ms!.mape,
      requests: live.length,
      completed,
      documents,
      wallMs: performance.now() - t0,
      text,
    };
  } finally {
    await stopAll();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * Warms the code paths a first request would pay for (JIT, Redis connections of the KDN to each
 * instance's LMCache db): one KV injection of a private warm-up document per instance and one
 * short request straight to each emulator. Nothing goes through the gateway, so its records and
 * engine state stay those of the workload.
 */
async function warmUp(kdnUrl: string, ems: EmulatorHandle[], redisUrl: string): Promise<void> {
  const text = synthesizeDocument('kvlab-demo-warmup', 600);
  const post = async (url: string, body: unknown): Promise<Record<string, unknown>> => {
    const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const j = (await r.json()) as Record<string, unknown>;
    if (r.status !== 200) throw new Error(`warm-up ${url} answered ${r.status}: ${JSON.stringify(j).slice(0, 200)}`);
    return j;
  };
  const { kid } = (await post(`${kdnUrl}/knowledge/register_text`, { content: text })) as { kid: string };
  const port = Number(new URL(redisUrl).port);
  for (let i = 0; i < ems.length; i++) {
    await post(`${kdnUrl}/knowledge/inject_ready_kv`, { request_id: `warmup-${i}`, knowledge_ids: [kid], redis_host: '127.0.0.1', redis_port: port, redis_db: i + 1 });
    await post(`${ems[i]!.url}/v1/chat/completions`, { messages: [{ role: 'system', content: text }, { role: 'user', content: 'warm up' }], max_tokens: 2, stream: false });
  }
}

/**
 * A strategy that repeats, request by request, the instance and intent the live gateway executed
 * (its records), so the simulator times the same decisions; requests without a usable record
 * fall back to `inner`. The engine still predicts every option from its own state.
 */
export class AsDecidedStrategy implements Strategy {
  readonly name: string;
  private readonly byId = new Map<string, { instance: string; decode: string | null; intent: Intent; reused: number }>();
  constructor(
    private readonly inner: Strategy,
    records: readonly TimingRecord[],
  ) {
    this.name = inner.name;
    for (const r of records) if (r.instance !== null && r.decision) this.byId.set(r.id, { instance: r.instance, decode: r.decode_instance ?? null, intent: r.intent, reused: r.decision.reused_tokens });
  }
  decide(ctx: DecideContext): StrategyChoice {
    const r = this.byId.get(ctx.req.id);
    const i = r ? ctx.cluster.instances.findIndex((s) => s.id === r.instance) : -1;
    if (!r || i < 0 || !ctx.isUp(i)) return this.inner.decide(ctx);
    const intent: Intent = ctx.req.knowledgeTokens > 0 ? (r.intent === 'none' ? 'text' : r.intent) : 'none';
    const p = ctx.predict(i, intent, intent === 'kvcache' || intent === 'hybrid' ? r.reused : 0);
    // P/D: the decode instance the live request really decoded on
    const D = r.decode !== null ? ctx.cluster.instances.findIndex((s) => s.id === r.decode) : -1;
    return { instance: i, ...(D >= 0 && ctx.isUp(D) ? { decode: D } : {}), intent, reuseTokens: intent === 'kvcache' || intent === 'hybrid' ? r.reused : undefined, alternatives: [{ instance: i, intent, score: p.ttftMs, ttftMs: p.ttftMs }], reason: 'as-live', prediction: p };
  }
}

/** Simulates `t` with the live decisions (AsDecidedStrategy) and writes a run directory. */
export function simulateAsDecided(t: LoadedTrace, rc: ResolvedCluster, inner: Strategy, live: readonly TimingRecord[], seed: number, outDir: string): void {
  const o = simulate(t.requests, { cluster: rc.spec, strategy: new AsDecidedStrategy(inner, live), seed, stepNoiseCv: 0 });
  const obs = observed(o);
  const kdnIds = rc.spec.kdns.map((k) => k.id);
  mkdirSync(outDir, { recursive: true });
  const fd = openSync(join(outDir, 'records.jsonl'), 'w');
  try {
    writeRecords(o, obs, kdnIds, (chunk) => writeSync(fd, chunk));
  } finally {
    closeSync(fd);
  }
  const summary = { kvlab_version: KVLAB_VERSION, source: 'sim', strategy: inner.name, decisions: 'as-live', seed, trace: t.meta.name, instances: rc.spec.instances.length, profile: rc.spec.instances[0]!.profile.name, ...summarize(o, obs) };
  writeFileSync(join(outDir, 'summary.json'), JSON.stringify(summary, null, 1) + '\n');
  writeFileSync(join(outDir, 'config.json'), JSON.stringify({ kvlab_version: KVLAB_VERSION, strategy: inner.name, decisions: 'as-live (the gateway\'s executed instance and intent per request)', seed, sim: { step_noise_cv: 0 }, cluster: { instances: rc.spec.instances.map((s) => s.id), kdns: rc.spec.kdns.map((k) => ({ id: k.id, compression: k.compression, text_fetch_ms: k.textFetchMs })), links: rc.spec.links, kv_event_delay_ms: rc.spec.kvEventDelayMs, chunk_tokens: rc.spec.chunkTokens } }, null, 1) + '\n');
}

/**
 * One line on the P/D hand-offs, live (the decode emulator's link report) beside simulated:
 * disaggregated requests, mean transfer ms, mean ms from P's answer / prefill end to D's first
 * token, and fallbacks.
 */
export function pdReport(live: readonly TimingRecord[], sim: readonly TimingRecord[]): string {
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
  const side = (rs: readonly TimingRecord[]) => {
    const pd = rs.filter((r) => r.status === 'ok' && r.observed?.pd && r.decode_instance);
    return {
      n: pd.length,
      transfer: mean(pd.map((r) => r.observed!.pd!.transfer_ms).filter((x): x is number => x !== null)),
      gap: mean(pd.map((r) => (r.observed!.first_token_at_ms ?? NaN) - (r.observed!.pd!.prefill_done_ms ?? NaN)).filter(Number.isFinite)),
      fallbacks: rs.filter((r) => r.observed?.pd?.fallback).length,
    };
  };
  const l = side(live);
  const s = side(sim);
  const f = (x: number) => (Number.isFinite(x) ? `${x.toFixed(1)} ms` : '—');
  return `P/D: ${l.n} requests disaggregated live (${l.fallbacks} fell back to P), ${s.n} in the sim; hand-off transfer mean ${f(l.transfer)} live vs ${f(s.transfer)} sim; prefill end -> client's first token mean ${f(l.gap)} live vs ${f(s.gap)} sim`;
}

function demoReport(d: DiffResult, own: DiffResult, client: DiffResult, total: number, ok: number, sent: number): string {
  const f = d.fields.ttft_ms!;
  const p = d.engine_prediction.ttft_ms;
  const o = own.fields.ttft_ms!;
  const c = client.fields.ttft_ms!;
  const pct = (x: number | null) => (x === null ? '—' : `${(x * 100).toFixed(1)}%`);
  const ms = (x: number | null) => (x === null ? '—' : `${x.toFixed(0)} ms`);
  const row = (name: string, s: typeof f) => [name, pct(s.mape), ms(s.median_abs_err_ms), ms(s.p90_abs_err_ms), ms(s.bias_ms), String(s.n)];
  const rows = [
    ['TTFT vs the observed (gateway) TTFT', 'MAPE', 'median |err|', 'p90 |err|', 'bias', 'n'],
    row('simulated, same decisions (DIR/sim)', f),
    row("engine's decision-time prediction (live)", p),
    row('simulated vs client-observed TTFT (replay)', c),
    row('simulated, own decisions (DIR/sim-own)', o),
  ];
  const w = rows[0]!.map((_, k) => Math.max(...rows.map((r) => r[k]!.length)));
  const lines = rows.map((r) => r.map((x, k) => (k === 0 ? x.padEnd(w[k]!) : x.padStart(w[k]!))).join('  '));
  lines.splice(1, 0, w.map((x) => '-'.repeat(x)).join('  '));
  return [
    `live demo: ${ok}/${total} requests completed at the gateway (${sent} sent by the client); the sim deciding on its own routes ${pct(own.same_instance)} of them to the same instance`,
    ...lines,
    `(model ms; per field: ${d.a.replace(/live$/, '')}diff.json, diff-sim-own.json)`,
  ].join('\n');
}
