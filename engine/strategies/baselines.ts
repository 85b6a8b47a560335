/**
 * Classic baselines: round-robin, random, least-inflight, least-load, and the fixed-intent
 * strategies text-only, kv-only, static-mix (1:1 alternating), each over a classic router.
 */
import { argminUp, type DecideContext, type Strategy, type StrategyChoice } from '../engine.js';
import type { Alternative, Intent } from '../types.js';

/** Router of a baseline: returns the instance and the per-instance scores. */
type Router = (ctx: DecideContext) => { instance: number; scores: Alternative[]; reason: string };

function alts(ctx: DecideContext, intent: Intent, score: (i: number) => number): Alternative[] {
  const out: Alternative[] = [];
  for (let i = 0; i < ctx.n; i++) if (ctx.isUp(i)) out.push({ instance: i, intent, score: score(i) });
  return out;
}

/** Round robin over up instances (one cursor). */
export function roundRobinRouter(intent: () => Intent): Router {
  let cursor = 0;
  return (ctx) => {
    for (let t = 0; t < ctx.n; t++) {
      const i = (cursor + t) % ctx.n;
      if (ctx.isUp(i)) {
        cursor = i + 1;
        return { instance: i, scores: alts(ctx, intent(), (j) => (j === i ? 0 : 1)), reason: 'round-robin' };
      }
    }
    throw new Error('no instance is up');
  };
}

/** Uniform random over up instances (seeded). */
export function randomRouter(intent: () => Intent): Router {
  return (ctx) => {
    const ups: number[] = [];
    for (let i = 0; i < ctx.n; i++) if (ctx.isUp(i)) ups.push(i);
    const i = ups[Math.floor(ctx.rng() * ups.length)]!;
    return { instance: i, scores: alts(ctx, intent(), (j) => (j === i ? 0 : 1)), reason: 'random' };
  };
}

/** Fewest in-flight requests (ties random). */
export function leastInflightRouter(intent: () => Intent): Router {
  return (ctx) => {
    const s = (i: number) => ctx.load(i).inflight;
    const i = argminUp(ctx, s);
    return { instance: i, scores: alts(ctx, intent(), s), reason: 'least-inflight' };
  };
}

/**
 * Least load with CacheRoute's `least_load` weights (reference/cacheroute.md §4.1):
 * inflight·1 + pending prefill requests·1 + decoding requests·0.5 + predicted backlog ms·0.001.
 */
export function leastLoadRouter(intent: () => Intent): Router {
  return (ctx) => {
    const s = (i: number) => {
      const l = ctx.load(i);
      return l.inflight + l.prefillReqs + 0.5 * l.decodeReqs + 0.001 * ctx.backlogMs(i);
    };
    const i = argminUp(ctx, s);
    return { instance: i, scores: alts(ctx, intent(), s), reason: 'least-load' };
  };
}

const ROUTERS: Record<string, (intent: () => Intent) => Router> = {
  'round-robin': roundRobinRouter,
  random: randomRouter,
  'least-inflight': leastInflightRouter,
  'least-load': leastLoadRouter,
};

/** Names of the classic routers. */
export const ROUTER_NAMES = Object.keys(ROUTERS);

function parseIntent(v: unknown, where: string): Intent {
  if (v === undefined) return 'text';
  if (v === 'text' || v === 'kvcache' || v === 'hybrid' || v === 'blend' || v === 'overlap') return v;
  throw new Error(`${where}: intent must be text, kvcache, hybrid, blend or overlap (got ${JSON.stringify(v)})`);
}

function routerFor(name: string, where: string): (intent: () => Intent) => Router {
  const r = ROUTERS[name];
  if (!r) throw new Error(`${where}: router must be one of ${ROUTER_NAMES.join(', ')} (got ${JSON.stringify(name)})`);
  return r;
}

/** A baseline = a router with a fixed (or alternating) intent. */
class Baseline implements Strategy {
  constructor(
    readonly name: string,
    private readonly router: Router,
    private readonly nextIntent: () => Intent,
  ) {}
  decide(ctx: DecideContext): StrategyChoice {
    const intent = this.nextIntent();
    const r = this.router(ctx);
    return { instance: r.instance, intent, alternatives: r.scores, reason: r.reason };
  }
}

/**
 * Builds a classic baseline.
 * @param name round-robin | random | least-inflight | least-load | text-only | kv-only | static-mix
 * @param params `intent` (text|kvcache|hybrid|blend|overlap, routers only; default text; blend and
 *   overlap fall back to kvcache on instances that do not declare them), `router` (for
 *   text-only / kv-only / static-mix; default least-load), `pattern` [kv, text] for static-mix (default [1, 1])
 * @throws Error naming the bad parameter
 */
export function createBaseline(name: string, params: Record<string, unknown> = {}): Strategy {
  const where = `strategy ${name}`;
  if (ROUTERS[name]) {
    const intent = parseIntent(params.intent, where);
    const f = () => intent;
    return new Baseline(name, routerFor(name, where)(f), f);
  }
  const routerName = (params.router as string | undefined) ?? 'least-load';
  if (name === 'text-only' || name === 'kv-only') {
    const intent: Intent = name === 'text-only' ? 'text' : 'kvcache';
    const f = () => intent;
    return new Baseline(name, routerFor(routerName, where)(f), f);
  }
  if (name === 'static-mix') {
    const pat = (params.pattern as number[] | undefined) ?? [1, 1];
    if (!Array.isArray(pat) || pat.length !== 2 || pat.some((x) => !Number.isInteger(x) || x < 0) || pat[0]! + pat[1]! === 0) {
      throw new Error(`${where}: pattern must be [kv, text] non-negative integers`);
    }
    let k = 0;
    let current: Intent = 'kvcache';
    const next = () => {
      current = k % (pat[0]! + pat[1]!) < pat[0]! ? 'kvcache' : 'text';
      k++;
      return current;
    };
    const peek = () => current;
    return new Baseline(name, routerFor(routerName, where)(peek), next);
  }
  throw new Error(`unknown baseline ${name}`);
}

/** Baseline strategy names. */
export const BASELINE_NAMES = [...ROUTER_NAMES, 'text-only', 'kv-only', 'static-mix'];
