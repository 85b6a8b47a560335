/**
 * Strategy registry: name -> factory. Every strategy runs unchanged in sim/ and live/.
 */
import type { Strategy } from '../engine.js';
import { AibrixPrefixStrategy } from './aibrix.js';
import { BASELINE_NAMES, createBaseline } from './baselines.js';
import { CacheRouteStrategy } from './cacheroute.js';
import { DynamoKvStrategy } from './dynamo.js';
import { KvlabStrategy } from './kvlab.js';
import { LlmdStrategy } from './llmd.js';
import { MooncakeStrategy } from './mooncake.js';
import { RadixMeshStrategy } from './radixmesh.js';
import { SglangCacheAwareStrategy } from './sglang.js';
import { INTENT_PARAM, parseStrategyParams, type NumberParam, type ParamSchema } from './params.js';

type Factory = (params: Record<string, unknown>) => Strategy;

const FACTORIES: Record<string, Factory> = {
  cacheroute: (p) => new CacheRouteStrategy(p),
  'dynamo-kv': (p) => new DynamoKvStrategy(p),
  'sglang-router': (p) => new SglangCacheAwareStrategy('router', p),
  'sglang-gateway': (p) => new SglangCacheAwareStrategy('gateway', p),
  'aibrix-prefix': (p) => new AibrixPrefixStrategy(p),
  radixmesh: (p) => new RadixMeshStrategy(p),
  'llm-d': (p) => new LlmdStrategy(p),
  mooncake: (p) => new MooncakeStrategy({ ...p, transfer: true }),
  'mooncake-local': (p) => new MooncakeStrategy({ ...p, transfer: false }),
  kvlab: (p) => new KvlabStrategy(p),
};
for (const n of BASELINE_NAMES) FACTORIES[n] = (p) => createBaseline(n, p);

/** Every strategy name, in a stable order (baselines first, kvlab last). */
export const STRATEGY_NAMES: string[] = [...BASELINE_NAMES, 'cacheroute', 'dynamo-kv', 'sglang-router', 'sglang-gateway', 'aibrix-prefix', 'radixmesh', 'llm-d', 'mooncake', 'mooncake-local', 'kvlab'];

/**
 * The faithful peers (each follows an upstream project at a cited version) with the version
 * their docstring cites, for tables and reports.
 */
export const PEER_VERSIONS: Record<string, string> = {
  cacheroute: 'BJTU-ANT/CacheRoute @ 966be95',
  'dynamo-kv': 'ai-dynamo/dynamo selector.rs @ 01690d42',
  'sglang-router': 'sgl-project/sglang sgl-router @ b6f20641',
  'sglang-gateway': 'sgl-project/sglang sgl-model-gateway @ 053b63ff',
  'aibrix-prefix': 'vllm-project/aibrix @ e3e10f9e',
  radixmesh: 'zzt93/RadixMesh @ c31c7b9',
  'llm-d': 'llm-d/llm-d-inference-scheduler @ 520af478',
  mooncake: "Mooncake FAST'25 Algorithm 1 (kvcache-ai/Mooncake @ 3b5a594)",
  'mooncake-local': "Mooncake FAST'25 Algorithm 1, no transfer",
};

const num = (doc: string, extra: Omit<NumberParam, 'kind' | 'doc'> = {}) => ({ kind: 'number' as const, doc, ...extra });
const SGLANG_SCHEMA: ParamSchema = {
  cacheThreshold: num('match rate above which the best-matching worker wins', { min: 0, max: 1 }),
  balanceAbsThreshold: num('absolute load imbalance threshold (requests)', { min: 0 }),
  balanceRelThreshold: num('relative load imbalance threshold (max/min)', { min: 0 }),
  maxTreeTokens: num('approximate tree bound per worker (tokens)', { min: 1, allowInfinity: true }),
  intent: INTENT_PARAM,
};
const MOONCAKE_SCHEMA: ParamSchema = {
  balancingThreshold: num('kvcache_balancing_threshold: move the best remote prefix when it is longer than this × the local one', { min: 0 }),
  ttftSloMs: num('early rejection above this predicted TTFT (ms; 0 = off)', { min: 0 }),
  tbtSloMs: num('early rejection above this predicted TBT (ms; 0 = off)', { min: 0 }),
};
const ROUTER_PARAM = { kind: 'enum' as const, doc: 'classic router under the fixed intent', values: ['round-robin', 'random', 'least-inflight', 'least-load'] };

/**
 * Parameter schema of every strategy (names, types, ranges). The single place parameters are
 * checked: CLI `--strategy-opt`, cluster-file `strategyParams`, the gateway's
 * `--strategy-params` and `PUT /debug/strategy` all go through `createStrategy`.
 */
export const STRATEGY_PARAMS: Record<string, ParamSchema> = {
  cacheroute: {
    maxCapacity: num('PROXY_MAX_CAPACITY: the load ratio is in-flight / this', { min: 1, int: true }),
    readyConcurrency: num('READY_CONCURRENCY: requests forwarded to one instance at once; the rest wait in the proxy queue', { min: 1, int: true, allowInfinity: true }),
    loadRatioDelta: num('load-safety window above the minimum load ratio', { min: 0, max: 1 }),
    affinityDecay: num('knowledge-affinity decay per decision', { min: 0, max: 1 }),
    affinityTopK: num('knowledge-affinity table size per instance', { min: 1, int: true }),
    iwsAlpha: num('IWS weight of the KV queue wait', { min: 0 }),
    iwsMarginMs: num('IWS margin (ms) kvcache must win by'),
    headerTokens: num('chat-template header tokens added to the prompt', { min: 0, int: true }),
    kdnPendingOverload: num('KDN overload threshold on pending link reservations (0 = off)', { min: 0 }),
  },
  'dynamo-kv': {
    overlapScoreWeight: num('overlap_score_weight: scale of the prefill blocks (0 also drops the overlap credit)', { min: 0 }),
    routerTemperature: num('softmax temperature (0 = argmin)', { min: 0 }),
    blockSize: num('KV block size the cost is expressed in (tokens)', { min: 1, int: true }),
    assumeKvReuse: { kind: 'boolean', doc: 'router_assume_kv_reuse: shared prefix blocks of active requests count once' },
    hostCacheHitWeight: num('host_cache_hit_weight: credit per CPU-tier block after the device match', { min: 0 }),
    diskCacheHitWeight: num('disk_cache_hit_weight: credit per remote-tier block after that', { min: 0 }),
    conditionalDisagg: { kind: 'boolean', doc: 'P/D: --router-conditional-disagg (isl_bounding): run small, mostly cached prompts on the decode worker' },
    effIslThreshold: num('P/D conditional disaggregation: effective ISL threshold (tokens)', { min: 0 }),
    effIslRatioThreshold: num('P/D conditional disaggregation: effective / raw ISL ratio threshold', { min: 0, max: 1 }),
    intent: INTENT_PARAM,
  },
  'sglang-router': SGLANG_SCHEMA,
  'sglang-gateway': SGLANG_SCHEMA,
  'aibrix-prefix': {
    imbalanceAbsCount: num('running-request imbalance that restricts candidates to the least loaded', { min: 0 }),
    stdDevFactor: num('σ factor of the mean + k·σ load cutoff', { min: 0 }),
    tableCapacityTokens: num('shared prefix table capacity (tokens)', { min: 1, allowInfinity: true }),
    tableIdleMs: num('idle expiry of a table entry (ms)', { min: 0, allowInfinity: true }),
    intent: INTENT_PARAM,
  },
  radixmesh: {
    virtualNodes: num('virtual nodes per instance on the hash ring', { min: 1, max: 4096, int: true }),
    intent: INTENT_PARAM,
  },
  'llm-d': {
    prefixWeight: num('weight of the prefix-cache scorer', { min: 0 }),
    queueWeight: num('weight of the queue scorer', { min: 0 }),
    kvUtilWeight: num('weight of the KV-cache-utilization scorer', { min: 0 }),
    scrapeMs: num('engine metrics scrape interval (ms)', { min: 1 }),
    pdPrefixWeight: num('P/D profiles: weight of the prefix-cache scorer', { min: 0 }),
    pdQueueWeight: num('P/D profiles: weight of the queue scorer', { min: 0 }),
    nonCachedTokens: num('P/D: prefix-based-pd-decider nonCachedTokens (disaggregate at or above this many uncached tokens; 0 = never)', { min: 0, int: true }),
    maxPrefixTokens: num('prompt tokens the approximate prefix index hashes (MaxPrefixBlocksToMatch × block size; 4,096)', { min: 1, allowInfinity: true }),
    intent: INTENT_PARAM,
  },
  mooncake: MOONCAKE_SCHEMA,
  'mooncake-local': MOONCAKE_SCHEMA,
  kvlab: {
    workWeight: num("weight of the option's own prefill work (ms per ms)", { min: 0 }),
    queueWeight: num('weight of the queueing externality', { min: 0 }),
    arrivalWeight: num('weight of the arrival externality', { min: 0 }),
    rateAlpha: num('EWMA weight of each new inter-arrival gap', { min: 0, max: 1, minExclusive: true }),
    hybrid: { kind: 'boolean', doc: 'consider hybrid split points' },
    peer: { kind: 'boolean', doc: 'consider moving the longest cached prefix from another instance over the peer KV link' },
    blend: { kind: 'boolean', doc: 'consider blend (CacheBlend) on instances that declare it' },
    overlap: { kind: 'boolean', doc: 'consider overlapped hybrid (compute the head while the tail loads) on instances that declare it' },
    tieMs: num('absolute tie tolerance (ms)', { min: 0 }),
    tieFrac: num('relative tie tolerance (fraction of the cost)', { min: 0, max: 1 }),
    tieMaxMs: num('cap of the tie tolerance (ms)', { min: 0, allowInfinity: true }),
    ttftSloMs: num('admission control: reject above this predicted TTFT (ms; 0 = off)', { min: 0 }),
    tbtSloMs: num('admission control: reject above this predicted TBT (ms; 0 = off)', { min: 0 }),
    externality: { kind: 'enum', doc: 'externality form: linear (first order) or busy (M/G/1 busy period)', values: ['busy', 'linear'] },
    externalityWeight: num('weight of the busy-period externality (theory 1)', { min: 0 }),
    rhoMax: num('cap of the utilisation estimate in 1/(1 - rho)', { min: 0, max: 0.999 }),
    workTauMs: num('time constant of the utilisation estimate (ms)', { min: 1 }),
  },
  'round-robin': { intent: INTENT_PARAM },
  random: { intent: INTENT_PARAM },
  'least-inflight': { intent: INTENT_PARAM },
  'least-load': { intent: INTENT_PARAM },
  'text-only': { router: ROUTER_PARAM },
  'kv-only': { router: ROUTER_PARAM },
  'static-mix': { router: ROUTER_PARAM, pattern: { kind: 'intArray', doc: '[kv, text] requests per cycle', length: 2 } },
};

/**
 * Checks a strategy's parameters without creating it (same checks as `createStrategy`).
 * @returns the converted parameters
 * @throws Error for an unknown strategy; StrategyParamError for a bad parameter
 */
export function checkStrategyParams(name: string, params: unknown): Record<string, unknown> {
  if (!FACTORIES[name]) throw new Error(`unknown strategy "${name}"; known: ${STRATEGY_NAMES.join(', ')}`);
  return parseStrategyParams(name, STRATEGY_PARAMS[name] ?? {}, params);
}

/**
 * Creates a strategy by name, with its parameters checked by `STRATEGY_PARAMS`.
 * @param params name -> value; strings (CLI) are converted, e.g. "3", "true", "inf"
 * @throws Error for an unknown name (listing the known ones); StrategyParamError (an Error)
 *   naming the parameter for an unknown name, a wrong type, NaN or a value out of range
 */
export function createStrategy(name: string, params: Record<string, unknown> = {}): Strategy {
  const p = checkStrategyParams(name, params);
  return FACTORIES[name]!(p);
}
