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

/** Strategies whose parameters are numbers/intents only; unknown keys are rejected. */
const KNOWN_PARAMS: Record<string, string[]> = {
  cacheroute: ['maxCapacity', 'loadRatioDelta', 'affinityDecay', 'affinityTopK', 'iwsAlpha', 'iwsMarginMs', 'headerTokens', 'kdnPendingOverload'],
  'dynamo-kv': ['overlapScoreWeight', 'routerTemperature', 'blockSize', 'intent'],
  'sglang-cache-aware': ['cacheThreshold', 'balanceAbsThreshold', 'balanceRelThreshold', 'maxTreeBlocks', 'intent'],
  'aibrix-prefix': ['imbalanceAbsCount', 'stdDevFactor', 'tableCapacityBlocks', 'intent'],
  radixmesh: ['virtualNodes', 'intent'],
  kvlab: ['workWeight', 'queueWeight', 'arrivalWeight', 'rateAlpha', 'hybrid', 'tieMs', 'tieFrac', 'tieMaxMs'],
};

/**
 * Creates a strategy by name.
 * @throws Error for an unknown name (listing the known ones) or an unknown parameter.
 */
export function createStrategy(name: string, params: Record<string, unknown> = {}): Strategy {
  const f = FACTORIES[name];
  if (!f) throw new Error(`unknown strategy "${name}"; known: ${STRATEGY_NAMES.join(', ')}`);
  const known = KNOWN_PARAMS[name] ?? ['intent', 'router', 'pattern'];
  for (const k of Object.keys(params)) {
    if (!known.includes(k)) throw new Error(`strategy ${name}: unknown parameter "${k}" (known: ${known.join(', ')})`);
  }
  return f(params);
}
