/**
 * Piscina worker of `kvlab sweep`: runs one simulation per task with sim/run's `runSim`
 * (imported once per thread) and returns {summary, outDir}.
 */
import { loadSimulator, type SimOptions, type SimResult, type SimRunner } from './sim-api.js';

const cache = new Map<string, Promise<SimRunner>>();

/** Task posted by notebooks/sweep.ts. */
export interface SweepTask {
  opts: SimOptions;
  /** simulator module to import (default sim/run.js). */
  simModule?: string;
}

/** Runs one grid point. Errors (including "simulator not available") reject the task. */
export default async function runTask(task: SweepTask): Promise<SimResult> {
  const key = task.simModule ?? '';
  if (!cache.has(key)) cache.set(key, loadSimulator(task.simModule));
  const runSim = await cache.get(key)!;
  const r = await runSim(task.opts);
  return { summary: r.summary, outDir: r.outDir };
}
