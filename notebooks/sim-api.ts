/**
 * The simulator interface notebooks/ programs against (`runSim` in sim/run.ts, written by the
 * simulator's owner), loaded lazily so that reports work without it and the sweep fails with a
 * clear "simulator not available" error until it exists.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { SummaryJson } from './types.js';

/** Options of `runSim` (sim/run.ts). Times in ms; `timeScale` multiplies trace arrival times. */
export interface SimOptions {
  /** trace file (Mooncake JSONL, CSV, kvlab JSONL). Exclusive with `workload`. */
  trace?: string;
  /** built-in workload generator. */
  workload?: 'synthetic' | 'rag' | 'nq';
  /** generator options, e.g. {rate: 4} (requests/s). */
  workloadOptions?: Record<string, unknown>;
  strategy: string;
  instances?: number;
  seed?: number;
  /** arrival-time multiplier for traces: 0.5 = twice the trace's rate. */
  timeScale?: number;
  /** cluster config file. */
  cluster?: string;
  /** config overrides, e.g. {kdn_gbps: 10}. */
  overrides?: Record<string, unknown>;
  /** router replicas behind a load balancer (sim/run.ts RunOptions.routerReplicas). */
  routerReplicas?: number;
  /** ms until a replica's bookkeeping reaches the others; null = never. */
  replicaSyncMs?: number | null;
  /** run directory to write (records.jsonl, summary.json, ...); none when absent. */
  out?: string;
}

/** What `runSim` resolves to. */
export interface SimResult {
  summary: SummaryJson;
  outDir?: string;
}

/** A function that runs one simulation (sim/run.ts `runSim`, or a fake in tests). */
export type SimRunner = (opts: SimOptions) => Promise<SimResult>;

/** Thrown when sim/run is missing or does not export `runSim`. */
export class SimulatorUnavailableError extends Error {
  constructor(detail: string) {
    super(`simulator not available: ${detail}`);
    this.name = 'SimulatorUnavailableError';
  }
}

/** The default module: sim/run.js next to notebooks/ (dist/sim/run.js when compiled). */
export function defaultSimModule(): string {
  return new URL('../sim/run.js', import.meta.url).href;
}

/**
 * Imports the simulator and returns its `runSim`.
 * @param specifier module URL or path (default: sim/run.js beside notebooks/).
 * @throws SimulatorUnavailableError when the module file does not exist (neither .js nor .ts) or
 *   has no `runSim` export; errors raised while loading an existing module propagate unchanged.
 */
export async function loadSimulator(specifier: string = defaultSimModule()): Promise<SimRunner> {
  if (specifier.startsWith('file:')) {
    const path = fileURLToPath(specifier);
    if (!existsSync(path) && !existsSync(path.replace(/\.js$/, '.ts'))) {
      throw new SimulatorUnavailableError(`${path} does not exist yet (sim/run.ts must export runSim(opts) to run sweeps)`);
    }
  }
  let mod: Record<string, unknown>;
  try {
    mod = (await import(specifier)) as Record<string, unknown>;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const msg = (e as Error).message ?? '';
    if ((code === 'ERR_MODULE_NOT_FOUND' || /Cannot find module|Failed to load url/.test(msg)) && msg.includes('run')) {
      throw new SimulatorUnavailableError(`cannot load ${specifier}: ${msg}`);
    }
    throw e;
  }
  const fn = mod['runSim'];
  if (typeof fn !== 'function') throw new SimulatorUnavailableError(`${specifier} does not export runSim`);
  return fn as SimRunner;
}
