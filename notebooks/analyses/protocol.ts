/**
 * The evaluation protocol (versioned): which traces and loads may choose kvlab's parameters
 * (the *tuning set*), which ones report results (the *evaluation set*, never used to choose
 * anything), the SLO, the loads, the cluster sizes, the seeds and the strategies compared.
 * notebooks/analyses/tune.ts runs the tuning set; notebooks/analyses/evaluate.ts regenerates every
 * results table of the README from the evaluation set (and reports the tuning set separately).
 *
 * Only one real trace with prefix information is available here (Mooncake's conversation trace),
 * so it is split in time: its first half (arrivals before the midpoint) tunes, its second half
 * (re-based to start at 0) evaluates. Generated agent traces (notebooks/analyses/agent-trace.ts)
 * tune with seeds 1, 2 and evaluate with seeds 101–103; the synthetic RAG workload likewise. The
 * Splitwise code trace (no prefix reuse: a pure load-balancing check) is evaluation only.
 *
 * Loads are in offered prefill work over cluster prefill capacity (sim/capacity.ts
 * `offeredLoad`: the whole prompts' prefill alone on an idle instance, no cache hit, over trace
 * span × instances): 0.5 = half of what the cluster could prefill without any cache. The rate
 * multiplier of a scenario is load / (its offered load at the trace's own rate).
 */
import { Command } from 'commander';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { KVLAB_THEORY, KVLAB_TUNED } from '../../engine/strategies/kvlab-params.js';
import type { Slo } from '../../sim/metrics.js';
import { agentTrace } from './agent-trace.js';

/** Version of this protocol (bump when a scenario, the SLO or a load changes). */
export const PROTOCOL_VERSION = '2026-12-01.2';

/**
 * SLO of goodput and capacity: TTFT <= 2 s (about three times the unloaded prefill of the
 * Mooncake trace's 12k-token prompts on the measured H100 profile) and TBT <= 300 ms (Mooncake's
 * loosest TBT SLO, FAST'25 §5.1; chunked prefill of 8,192-token chunks makes ~350 ms iterations on
 * this profile, so a request may meet it only if under 10% of its tokens share such a step).
 */
export const SLO: Slo = { ttftMs: 2000, tbtMs: 300 };
/** Goodput to keep for the capacity. */
export const TARGET = 0.9;
/** Seeds (step-time noise; for generated traces, also the trace). */
export const SEEDS = [1, 2, 3];
/**
 * Loads of the TTFT tables (offered prefill work / cluster capacity): three, so that the whole
 * evaluation runs in well under an hour on the project's 2-core machine (version .2; .1 had five).
 */
export const LOADS = [0.5, 1, 1.5];
/** Relative precision of the capacity bisection (5 %: the seeds' spread is larger; .1 had 3 %). */
export const CAPACITY_TOL = 0.05;

/**
 * The faithful peers and the least-load baseline compared (engine/strategies/index.ts
 * PEER_VERSIONS); round-robin, which no production router uses with caches, is left out (.1 had it).
 */
export const PEERS = ['least-load', 'cacheroute', 'dynamo-kv', 'sglang-router', 'sglang-gateway', 'aibrix-prefix', 'radixmesh', 'llm-d', 'mooncake', 'mooncake-local'];

/**
 * kvlab with its tuned parameters, and with the theory weights (1, 1) when they differ (the
 * tuning set chose exactly them: then one arm is both). The hand-picked (3, 3) it had before the
 * protocol is compared on the tuning set only (docs/EVALUATION.md).
 */
export const KVLAB_VARIANTS: { label: string; strategy: string; params: Record<string, unknown> }[] = [
  { label: 'kvlab', strategy: 'kvlab', params: {} },
  ...(KVLAB_TUNED.queueWeight === KVLAB_THEORY.queueWeight && KVLAB_TUNED.arrivalWeight === KVLAB_THEORY.arrivalWeight ? [] : [{ label: 'kvlab (theory 1, 1)', strategy: 'kvlab', params: { ...KVLAB_THEORY } }]),
];

/** Where one scenario's requests come from. */
export type Source =
  | { kind: 'mooncake-half'; half: 0 | 1 }
  | { kind: 'agent'; traceSeeds: number[]; sessions: number }
  | { kind: 'file'; path: string }
  | { kind: 'workload'; name: 'synthetic'; options: Record<string, unknown>; workloadSeeds: number[] };

/** One scenario of the protocol. */
export interface Scenario {
  id: string;
  set: 'tuning' | 'evaluation';
  title: string;
  source: Source;
  profile: string;
  instances: number[];
  /** loads of its TTFT table (default LOADS). */
  loads?: number[];
  /** cluster sizes whose capacity is measured (default: every size). */
  capacityInstances?: number[];
  /** per cluster size, other loads of its TTFT table (default `loads`). */
  sizeLoads?: Record<number, number[]>;
  /** part of the README's tables (what `evaluate.js` runs by default, sized for 2 cores). */
  readme?: boolean;
}

const H100 = 'h100x8-llama3-70b';

/** Every scenario; the tuning set chooses parameters, the evaluation set reports. */
export const SCENARIOS: Scenario[] = [
  { id: 'mooncake-tune', set: 'tuning', title: 'Mooncake conversation, first half', source: { kind: 'mooncake-half', half: 0 }, profile: H100, instances: [16] },
  { id: 'agent-tune', set: 'tuning', title: 'agent traces (seeds 1, 2)', source: { kind: 'agent', traceSeeds: [1, 2], sessions: 2600 }, profile: H100, instances: [16] },
  // the README's tables: TTFT at 0.5/1/1.5 and the capacity at 16 instances, TTFT at 0.5 and 1 at 8
  // and 32 (overloaded runs dominate the cost: queues of thousands in every step)
  { id: 'mooncake-eval', set: 'evaluation', title: 'Mooncake conversation, second half', source: { kind: 'mooncake-half', half: 1 }, profile: H100, instances: [8, 16, 32], capacityInstances: [16], sizeLoads: { 8: [0.5, 1], 32: [0.5, 1] }, readme: true },
  { id: 'agent-eval', set: 'evaluation', title: 'agent traces (seeds 101–103, 900 sessions)', source: { kind: 'agent', traceSeeds: [101, 102, 103], sessions: 900 }, profile: H100, instances: [16] },
  { id: 'splitwise-eval', set: 'evaluation', title: 'Splitwise code trace (no prefix reuse)', source: { kind: 'file', path: 'traces/splitwise_code.csv' }, profile: H100, instances: [16] },
  { id: 'rag-eval', set: 'evaluation', title: 'synthetic RAG with knowledge injection (seeds 101–103)', source: { kind: 'workload', name: 'synthetic', options: { requests: 1500 }, workloadSeeds: [101, 102, 103] }, profile: 'rtx5090x8-llama3-70b', instances: [4] },
];

/** One concrete run input of a scenario for one seed. */
export interface Input {
  trace?: string;
  workload?: 'synthetic';
  workloadOptions?: Record<string, unknown>;
  /** the noise seed of the run. */
  seed: number;
}

/**
 * The command line the protocol's scripts share (evaluate, tune, mismatch): `-o, --out DIR`
 * (required), `--shared DIR` (the shared data directory, default `../shared/data` from the working
 * directory) and `--jobs N` (parallel simulations, default all cores). Each script adds its own
 * options and parses; the values are strings, as commander gives them.
 */
export function protocolCommand(name: string, description: string): Command {
  return new Command(name)
    .description(description)
    .requiredOption('-o, --out <dir>', 'output directory')
    .option('--shared <dir>', 'the shared data directory', resolve('..', 'shared', 'data'))
    .option('--jobs <n>', 'parallel simulations (default: all cores)');
}

/**
 * Materialises a scenario's inputs under OUT/traces (Mooncake halves, agent traces) and returns
 * one input per seed; null when its shared data is absent (the caller reports it skipped).
 * @param shared the ../shared/data directory
 */
export function scenarioInputs(s: Scenario, out: string, shared: string): Input[] | null {
  const dir = join(resolve(out), 'traces');
  mkdirSync(dir, { recursive: true });
  const src = s.source;
  if (src.kind === 'mooncake-half') {
    const file = join(shared, 'traces', 'mooncake', 'conversation_trace.jsonl');
    if (!existsSync(file)) return null;
    const path = join(dir, `mooncake-half-${src.half}.jsonl`);
    if (!existsSync(path)) writeFileSync(path, mooncakeHalf(readFileSync(file, 'utf8'), src.half));
    return SEEDS.map((seed) => ({ trace: path, seed }));
  }
  if (src.kind === 'agent') {
    return src.traceSeeds.map((ts, k) => {
      const path = join(dir, `agent-${ts}-${src.sessions}.jsonl`);
      if (!existsSync(path)) writeFileSync(path, agentTrace(ts, src.sessions).map((r) => JSON.stringify(r)).join('\n') + '\n');
      return { trace: path, seed: k + 1 };
    });
  }
  if (src.kind === 'file') {
    const path = join(shared, src.path);
    if (!existsSync(path)) return null;
    return SEEDS.map((seed) => ({ trace: path, seed }));
  }
  return src.workloadSeeds.map((ws, k) => ({ workload: src.name, workloadOptions: { ...src.options, seed: ws }, seed: k + 1 }));
}

/**
 * One half of a Mooncake JSONL trace by arrival time: half 0 = records before the midpoint of
 * the first and last timestamps (lines kept as they are), half 1 = the others with timestamps
 * re-based so the half starts at 0.
 */
export function mooncakeHalf(text: string, half: 0 | 1): string {
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  const ts = lines.map((l) => Number((JSON.parse(l) as { timestamp: number }).timestamp));
  let lo = Infinity;
  let hi = -Infinity;
  for (const t of ts) {
    if (t < lo) lo = t;
    if (t > hi) hi = t;
  }
  const mid = (lo + hi) / 2;
  const out: string[] = [];
  lines.forEach((l, k) => {
    if (half === 0 && ts[k]! < mid) out.push(l);
    if (half === 1 && ts[k]! >= mid) {
      const r = JSON.parse(l) as Record<string, unknown>;
      r['timestamp'] = ts[k]! - mid;
      out.push(JSON.stringify(r));
    }
  });
  return out.join('\n') + '\n';
}
