/**
 * Format detection and named workloads.
 */
import { existsSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadCsv } from './csv.js';
import { loadMooncake, type MooncakeOptions } from './mooncake.js';
import { NQ_DEFAULTS, loadNq, type NqOptions } from './nq.js';
import { RAG_DEFAULTS, SYNTHETIC_DEFAULTS, generateSynthetic, type SyntheticOptions } from './synthetic.js';
import type { LoadOptions, LoadedTrace, TraceFormat } from './schema.js';

/**
 * Names accepted by {@link loadWorkload}: `synthetic` (one document per request), `rag` (the
 * same generator with retrieval top-k 3–5 documents per request, {@link RAG_DEFAULTS}), `nq`.
 */
export const WORKLOAD_NAMES = ['synthetic', 'rag', 'nq'] as const;
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
 * @throws Error for a missing path, an unknown format or a trace without requests; TraceError for bad records.
 */
export async function loadTrace(path: string, opts: TraceOptions = {}): Promise<LoadedTrace> {
  const format = detectFormat(path);
  let t: LoadedTrace;
  switch (format) {
    case 'mooncake':
      t = await loadMooncake(path, opts);
      break;
    case 'csv':
      t = await loadCsv(path, opts);
      break;
    case 'nq':
      t = await loadNq(path, stripUndefined(opts));
      break;
  }
  if (t.requests.length === 0) {
    throw new Error(`${path}: the trace has no requests${t.meta.skipped > 0 ? ` (all ${t.meta.skipped} line(s) were malformed and skipped; first: ${t.meta.skippedReasons[0] ?? '?'})` : t.meta.lines > 0 ? ` (${t.meta.lines} line(s) read)` : ' (empty file)'}`);
  }
  return t;
}

/** Largest `requests` of a generated workload (a resource bound: every request is kept in memory). */
export const MAX_WORKLOAD_REQUESTS = 10_000_000;

/**
 * Checks workload options before generating: every name must be an option of that workload
 * (`kvlab trace defaults --workload NAME` lists them; `dir` for nq), numbers must be finite
 * numbers, `arrival` one of the workload's processes, `requests` at most
 * {@link MAX_WORKLOAD_REQUESTS}. Ranges are checked by the generators themselves.
 * @param flag how the options were given, for the message (e.g. "--workload-opt")
 * @throws Error naming the option
 */
export function checkWorkloadOptions(name: WorkloadName, opts: Record<string, unknown>, flag = 'workload option'): void {
  const defaults = workloadDefaults(name) as unknown as Record<string, unknown>;
  const known = [...Object.keys(defaults), ...(name === 'nq' ? ['dir'] : [])];
  const f = (k: string): string => `${flag}${flag.endsWith('.') ? '' : ' '}${k}`;
  for (const [k, v] of Object.entries(opts)) {
    if (v === undefined) continue;
    if (!known.includes(k)) throw new Error(`${f(k)}: not an option of the ${name} workload (known: ${known.join(', ')})`);
    if (k === 'seed') {
      if (!(typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v)))) throw new Error(`${f('seed')}: expected a number or a string, got ${JSON.stringify(v)}`);
    } else if (k === 'dir') {
      if (typeof v !== 'string') throw new Error(`${f('dir')}: expected a directory path, got ${JSON.stringify(v)}`);
    } else if (k === 'arrival') {
      const ok = name === 'nq' ? ['poisson', 'uniform'] : ['poisson', 'bursty'];
      if (typeof v !== 'string' || !ok.includes(v)) throw new Error(`${f('arrival')}: expected ${ok.join(' or ')}, got ${JSON.stringify(v)}`);
    } else if (k === 'docOrder') {
      if (v !== 'sampled' && v !== 'shuffled') throw new Error(`${f('docOrder')}: expected sampled or shuffled, got ${JSON.stringify(v)}`);
    } else if (typeof defaults[k] === 'number' && (typeof v !== 'number' || !Number.isFinite(v))) {
      throw new Error(`${f(k)}: expected a number, got ${JSON.stringify(v)}`);
    }
  }
  const n = opts.requests;
  if (typeof n === 'number' && n > MAX_WORKLOAD_REQUESTS) throw new Error(`${f('requests')}: at most ${MAX_WORKLOAD_REQUESTS} (got ${n}; a resource bound: every request is kept in memory)`);
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
 * Generates a built-in workload: `synthetic` ({@link generateSynthetic}), `rag` (the same with
 * {@link RAG_DEFAULTS}) or `nq` ({@link loadNq} on `opts.dir` or {@link defaultNqDir}).
 * @throws Error for an unknown name, an unknown option name or a wrong type ({@link checkWorkloadOptions}),
 *   or a missing NQ directory; RangeError on bad option values.
 */
export async function loadWorkload(name: WorkloadName, opts: WorkloadOptions = {}): Promise<LoadedTrace> {
  const o = stripUndefined(opts) as Record<string, unknown>;
  if (name === 'synthetic' || name === 'rag' || name === 'nq') checkWorkloadOptions(name, o);
  if (name === 'synthetic') return generateSynthetic(pickKeys(o, SYNTHETIC_DEFAULTS));
  if (name === 'rag') return generateSynthetic(pickKeys(o, RAG_DEFAULTS), RAG_DEFAULTS, 'rag');
  if (name === 'nq') return loadNq(opts.dir ?? defaultNqDir(), pickKeys(o, NQ_DEFAULTS));
  throw new Error(`unknown workload ${JSON.stringify(name)} (expected ${WORKLOAD_NAMES.join(' or ')})`);
}

/** Default options of a built-in workload. */
export function workloadDefaults(name: WorkloadName): Readonly<SyntheticOptions> | Readonly<NqOptions> {
  if (name === 'synthetic') return SYNTHETIC_DEFAULTS;
  if (name === 'rag') return RAG_DEFAULTS;
  if (name === 'nq') return NQ_DEFAULTS;
  throw new Error(`unknown workload ${JSON.stringify(name)} (expected ${WORKLOAD_NAMES.join(' or ')})`);
}

function stripUndefined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

function pickKeys<T extends object>(o: Record<string, unknown>, defaults: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([k]) => k in defaults)) as Partial<T>;
}
