/**
 * Strategy registry: name -> factory. Every strategy runs unchanged in sim/ and live/.
 */
import type { Strategy } from '../engine.js';
import { AibrixPrefixStrategy } from './aibrix.js';
import { BASELINE_NAMES, createBaseline } from './baselines.js';
import { CacheRouteStrategy } from './cacheroute.js';
import { DynamoKvStrategy } from './dynamo.js';
import { KvlabStrategy } from './kvlab.js';
import { RadixMeshStrategy } from './radixmesh.js';
import { SglangCacheAwareStrategy } from './sglang.js';
import { INTENT_PARAM, parseStrategyParams, type NumberParam, type ParamSchema } from './params.js';

type Factory = (params: Record<string, unknown>) => Strategy;

const FACTORIES: Record<string, Factory> = {
  cacheroute: (p) => new CacheRouteStrategy(p),
  'dynamo-kv': (p) => new DynamoKvStrategy(p),
  'sglang-cache-aware': (p) => new SglangCacheAwareStrategy(p),
  'aibrix-prefix': (p) => new AibrixPrefixStrategy(p),
  radixmesh: (p) => new RadixMeshStrategy(p),
  kvlab: (p) => new KvlabStrategy(p),
};
for (const n of BASELINE_NAMES) FACTORIES[n] = (p) => createBaseline(n, p);

/** Every strategy name, in a stable order (baselines first, kvlab last). */
export const STRATEGY_NAMES: string[] = [...BASELINE_NAMES, 'cacheroute', 'dynamo-kv', 'sglang-cache-aware', 'aibrix-prefix', 'radixmesh', 'kvlab'];

const num = (doc: string, extra: Omit<NumberParam, 'kind' | 'doc'> = {}) => ({ kind: 'number' as const, doc, ...extra });
const ROUTER_PARAM = { kind: 'enum' as const, doc: 'classic router under the fixed intent', values: ['round-robin', 'random', 'least-inflight', 'least-load'] };

/**
 * Parameter schema of every strategy (names, types, ranges). The single place parameters are
 * checked: CLI `--strategy-opt`, cluster-file `strategyParams`, the gateway's
 * `--strategy-params` and `PUT /debug/strategy` all go through `createStrategy`.
 */
export const STRATEGY_PARAMS: Record<string, ParamSchema> = {
  cacheroute: {
    maxCapacity: num('proxy slots per instance (READY_CONCURRENCY)', { min: 1, int: true }),
    loadRatioDelta: num('load-safety window above the minimum load ratio', { min: 0, max: 1 }),
    affinityDecay: num('knowledge-affinity decay per decision', { min: 0, max: 1 }),
    affinityTopK: num('knowledge-affinity table size per instance', { min: 1, int: true }),
    iwsAlpha: num('IWS weight of the KV queue wait', { min: 0 }),
    iwsMarginMs: num('IWS margin (ms) kvcache must win by'),
    headerTokens: num('chat-template header tokens added to the prompt', { min: 0, int: true }),
    kdnPendingOverload: num('KDN overload threshold on pending link reservations (0 = off)', { min: 0 }),
  },
  'dynamo-kv': {
    overlapScoreWeight: num('weight of the prefill blocks in the cost', { min: 0 }),
    routerTemperature: num('softmax temperature (0 = argmin)', { min: 0 }),
    blockSize: num('KV block size the cost is expressed in (tokens)', { min: 1, int: true }),
    intent: INTENT_PARAM,
  },
  'sglang-cache-aware': {
    cacheThreshold: num('match rate above which the best-matching worker wins', { min: 0, max: 1 }),
    balanceAbsThreshold: num('absolute load imbalance threshold (requests)', { min: 0 }),
    balanceRelThreshold: num('relative load imbalance threshold (max/min)', { min: 0 }),
    maxTreeBlocks: num('approximate tree bound per worker (blocks)', { min: 1, allowInfinity: true }),
    intent: INTENT_PARAM,
  },
  'aibrix-prefix': {
    imbalanceAbsCount: num('running-request imbalance that restricts candidates to the least loaded', { min: 0 }),
    stdDevFactor: num('σ factor of the mean + k·σ load cutoff', { min: 0 }),
    tableCapacityBlocks: num('prefix table capacity (blocks)', { min: 1, allowInfinity: true }),
    intent: INTENT_PARAM,
  },
  radixmesh: {
    virtualNodes: num('virtual nodes per instance on the hash ring', { min: 1, max: 4096, int: true }),
    intent: INTENT_PARAM,
  },
  kvlab: {
    workWeight: num("weight of the option's own prefill work (ms per ms)", { min: 0 }),
    queueWeight: num('weight of the queueing externality', { min: 0 }),
    arrivalWeight: num('weight of the arrival externality', { min: 0 }),
    rateAlpha: num('EWMA weight of each new inter-arrival gap', { min: 0, max: 1, minExclusive: true }),
    hybrid: { kind: 'boolean', doc: 'consider hybrid split points' },
    tieMs: num('absolute tie tolerance (ms)', { min: 0 }),
    tieFrac: num('relative tie tolerance (fraction of the cost)', { min: 0, max: 1 }),
    tieMaxMs: num('cap of the tie tolerance (ms)', { min: 0, allowInfinity: true }),
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
