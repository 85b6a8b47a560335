/**
 * Engine decision latency (issue "live mode", Done means): p50/p99 of `Engine.decide` (and of
 * decide + onDispatch) with 64 instances and 1,000,000 indexed blocks, for several strategies.
 * Anchor: Dynamo's indexer claims p99 < 10 µs for lookups; our target is decision p99 <= 50 µs.
 *
 * Workload: 64 instances of the H100 profile; the index is filled through KV events with
 * 1,000,000 (block, instance) entries forming Mooncake-like chains (shared system prefixes,
 * conversations extending earlier turns); requests are 2..64-block prompts (512-token blocks)
 * drawn from the same chains, so lookups walk real matches.
 *
 * Usage: node --expose-gc dist/bench/engine-decision.js [--decisions N] [--strategies a,b:param=value]
 * Latencies are steady state: 10,000 warm-up decisions (JIT, GC after the index fill) come first.
 */
import { Engine } from '../engine/engine.js';
import { createStrategy } from '../engine/strategies/index.js';
import type { ClusterSpec, TraceRequest } from '../engine/types.js';
import { instanceSpecFromProfile, loadProfile } from '../sim/profiles.js';

const args = process.argv.slice(2);
const opt = (name: string, def: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
};
const N_INST = 64;
const TARGET_ENTRIES = 1_000_000;
const decisions = Number(opt('decisions', '50000'));
const strategies = opt('strategies', 'kvlab,dynamo-kv,sglang-router,least-load,cacheroute,mooncake,llm-d').split(',');

// deterministic LCG so every run measures the same work
let seed = 12345;
const rnd = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 4294967296);

const profile = loadProfile('h100x8-llama3-70b');
const cluster: ClusterSpec = {
  instances: Array.from({ length: N_INST }, (_, i) => instanceSpecFromProfile(profile, i)),
  kdns: [{ id: 'kdn0', compression: 3.41, knowledge: null, textFetchMs: 4 }],
  links: [Array.from({ length: N_INST }, () => ({ bandwidthGbps: 10, latencyMs: 0.5, efficiency: 0.825 }))],
  kvEventDelayMs: 0,
  chunkTokens: 256,
};

// chains: 200 system prefixes of 4 blocks, each extended by conversations of up to 60 blocks
let nextId = 1;
const chains: number[][] = [];
const roots = Array.from({ length: 200 }, () => Array.from({ length: 4 }, () => nextId++));
while (chains.reduce((a, c) => a + c.length, 0) * 1.0 < TARGET_ENTRIES / 4) {
  const root = roots[Math.floor(rnd() * roots.length)]!;
  const len = 4 + Math.floor(rnd() * 60);
  chains.push([...root, ...Array.from({ length: len - 4 }, () => nextId++)]);
}

function fill(e: Engine): number {
  let entries = 0;
  let c = 0;
  while (entries < TARGET_ENTRIES) {
    const chain = chains[c++ % chains.length]!;
    const inst = Math.floor(rnd() * N_INST);
    const before = e.index.size(inst);
    e.onKvEvent({ instance: inst, kind: 'stored', blocks: chain });
    entries += e.index.size(inst) - before;
  }
  return e.index.totalEntries();
}

function request(k: number): TraceRequest {
  const chain = chains[Math.floor(rnd() * chains.length)]!;
  const take = Math.min(chain.length, 2 + Math.floor(rnd() * 62));
  const blocks = chain.slice(0, take);
  if (rnd() < 0.5) blocks.push(nextId++); // a new turn: one unseen block at the end
  return { id: `q${k}`, arrivalMs: k, inputTokens: blocks.length * 512 - 100, outputTokens: 200, blockSize: 512, blocks, knowledge: [], knowledgeTokens: 0 };
}

/** Runs a full GC when the runtime allows it (node --expose-gc), else lets the heap settle. */
function settleGc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) g();
}

function pct(xs: number[], p: number): number {
  return xs[Math.min(xs.length - 1, Math.floor(p * xs.length))]!;
}

console.log(`| strategy | instances | indexed blocks | decisions | decide p50 (µs) | decide p99 (µs) | decide+dispatch p50 (µs) | decide+dispatch p99 (µs) |`);
console.log(`|---|---|---|---|---|---|---|---|`);
for (const spec of strategies) {
  // NAME or NAME:key=value:key=value (strategy parameters)
  const [name, ...kv] = spec.split(':') as [string, ...string[]];
  const params = Object.fromEntries(kv.map((x) => x.split('=') as [string, string]));
  seed = 12345;
  const e = new Engine(cluster, createStrategy(name, params), { seed: 1 });
  const entries = fill(e);
  const reqs = Array.from({ length: decisions }, (_, k) => request(k));
  // warm-up: JIT, and the old-generation GC that follows filling a 1M-entry index (measured
  // without it, the first ~10k decisions carry a p99 2-3x the steady state; a gateway runs for hours)
  for (let k = 0; k < 10_000; k++) {
    const r = reqs[k % reqs.length]!;
    const d = e.decide(r, k);
    if (k % 4 === 0) {
      e.onDispatch({ ...r, id: `w${k}` }, { ...d, requestId: `w${k}` }, k);
      e.onComplete(`w${k}`, k, 200 + (k % 300));
    }
  }
  settleGc();
  const dec: number[] = [];
  const both: number[] = [];
  for (let k = 0; k < reqs.length; k++) {
    const r = reqs[k]!;
    const t0 = process.hrtime.bigint();
    const d = e.decide(r, 10_000 + k);
    const t1 = process.hrtime.bigint();
    e.onDispatch(r, d, 10_000 + k);
    const t2 = process.hrtime.bigint();
    dec.push(Number(t1 - t0) / 1000);
    both.push(Number(t2 - t0) / 1000);
    if (k >= 256) e.onComplete(reqs[k - 256]!.id, 10_000 + k, 200 + (k % 300)); // keep ~256 in flight
  }
  const half = (xs: number[], h: 0 | 1) => xs.slice(h * (xs.length >> 1), (h + 1) * (xs.length >> 1)).sort((a, b) => a - b);
  if (process.env.KVLAB_BENCH_HALVES) console.log(`${name}: p99 first half ${pct(half(dec, 0), 0.99).toFixed(1)}, second half ${pct(half(dec, 1), 0.99).toFixed(1)}`);
  dec.sort((a, b) => a - b);
  both.sort((a, b) => a - b);
  console.log(`| ${spec} | ${N_INST} | ${entries} | ${decisions} | ${pct(dec, 0.5).toFixed(1)} | ${pct(dec, 0.99).toFixed(1)} | ${pct(both, 0.5).toFixed(1)} | ${pct(both, 0.99).toFixed(1)} |`);
}
