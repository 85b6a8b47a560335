/**
 * Format detection and named workloads.
 */
import { existsSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadCsv } from './csv.js';
import { loadMooncake, type MooncakeOptions } from './mooncake.js';
import { NQ_DEFAULTS, loadNq, type NqOptions } from './nq.js';
import { SYNTHETIC_DEFAULTS, generateSynthetic, type SyntheticOptions } from './synthetic.js';
import type { LoadOptions, LoadedTrace, TraceFormat } from './schema.js';

/** Names accepted by {@link loadWorkload}. */
export const WORKLOAD_NAMES = ['synthetic', 'nq'] as const;
/** A built-in workload name. */
export type WorkloadName = (typeof WORKLOAD_NAMES)[number];

/** Options of {@link loadTrace}: loader options, plus NQ generation options for a directory. */
export type TraceOptions = LoadOptions & Partial<NqOptions> & Pick<MooncakeOptions, 'blockSize'>;

/**
 * The format of a trace path: `.jsonl` → mooncake, `.csv` → csv, a directory holding
 * workload_nq.json → nq.
 * @throws Error naming the path when it does not exist or has no known format.
 */
export function detectFormat(path: string): Exclude<TraceFormat, 'synthetic'> {
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new Error(`trace file not found: ${path}`);
  }
  if (st.isDirectory()) {
    if (existsSync(join(path, 'workload_nq.json'))) return 'nq';
    throw new Error(`unknown trace format: ${path} is a directory without workload_nq.json`);
  }
  const lower = path.toLowerCase();
  if (lower.endsWith('.jsonl')) return 'mooncake';
  if (lower.endsWith('.csv')) return 'csv';
  throw new Error(`unknown trace format: ${path} (expected .jsonl, .csv or a directory with workload_nq.json)`);
}

/**
 * Loads a trace file or workload directory, detecting its format ({@link detectFormat}).
 * For an NQ directory, `timeScale` and the NQ options apply (`skipBadLines`, `limit` do not:
 * use `requests`).
 * @throws Error for a missing path or unknown format; TraceError for bad records.
 */
export async function loadTrace(path: string, opts: TraceOptions = {}): Promise<LoadedTrace> {
  const format = detectFormat(path);
  switch (format) {
    case 'mooncake':
      return loadMooncake(path, opts);
    case 'csv':
      return loadCsv(path, opts);
    case 'nq':
      return loadNq(path, stripUndefined(opts));
  }
}

/** Options of {@link loadWorkload}: the chosen generator's options, plus `dir` for NQ. */
export type WorkloadOptions = Partial<SyntheticOptions> & Partial<NqOptions> & { dir?: string };

/**
 * The repository root (the nearest ancestor of this module holding package.json), so paths
 * like ../shared/data resolve the same from traces/ and dist/traces/.
 */
export function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(d, 'package.json'))) return d;
    const up = dirname(d);
    if (up === d) return process.cwd();
    d = up;
  }
}

/**
 * Default NQ workload directory: $KVLAB_NQ_DIR, else ../shared/data/workloads/cacheroute-nq
 * beside the repository.
 */
export function defaultNqDir(): string {
  return process.env.KVLAB_NQ_DIR ?? resolve(repoRoot(), '../shared/data/workloads/cacheroute-nq');
}

/**
 * Generates a built-in workload: `synthetic` ({@link generateSynthetic}) or `nq`
 * ({@link loadNq} on `opts.dir` or {@link defaultNqDir}). Unknown option keys for the chosen
 * workload are ignored.
 * @throws Error for an unknown name or a missing NQ directory; RangeError on bad options.
 */
export async function loadWorkload(name: WorkloadName, opts: WorkloadOptions = {}): Promise<LoadedTrace> {
  const o = stripUndefined(opts) as Record<string, unknown>;
  if (name === 'synthetic') return generateSynthetic(pickKeys(o, SYNTHETIC_DEFAULTS));
  if (name === 'nq') return loadNq(opts.dir ?? defaultNqDir(), pickKeys(o, NQ_DEFAULTS));
  throw new Error(`unknown workload ${JSON.stringify(name)} (expected ${WORKLOAD_NAMES.join(' or ')})`);
}

/** Default options of a built-in workload. */
export function workloadDefaults(name: WorkloadName): Readonly<SyntheticOptions> | Readonly<NqOptions> {
  if (name === 'synthetic') return SYNTHETIC_DEFAULTS;
  if (name === 'nq') return NQ_DEFAULTS;
  throw new Error(`unknown workload ${JSON.stringify(name)} (expected ${WORKLOAD_NAMES.join(' or ')})`);
}

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

function pickKeys<T extends object>(o: Record<string, unknown>, defaults: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([k]) => k in defaults)) as Partial<T>;
}
