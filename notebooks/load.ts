/**
 * Loading report inputs: run directories, `kvlab ab` directories (ab.json), sweep directories
 * (sweep.json) and `kvlab diff` outputs (diff.json), as described in docs/FORMATS.md.
 *
 * Every error names the file (and line, for records.jsonl) and the missing or malformed field.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import type { AbJson, AlternativeJson, DiffJson, RecordJson, SummaryJson, SweepEntry, TimeseriesJson } from './types.js';

/** A problem with a report input; the message names the file and the field. */
export class InputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InputError';
  }
}

/** One run directory as loaded. Files that are absent are null (and noted in `notes`). */
export interface RunData {
  /** absolute path of the run directory. */
  dir: string;
  strategy: string;
  seed: number;
  summary: SummaryJson | null;
  config: Record<string, unknown> | null;
  timeseries: TimeseriesJson | null;
  /** every record of records.jsonl, in file order; null when the file is absent. */
  records: RecordJson[] | null;
}

/** A loaded ab.json with the directory it came from. */
export interface AbData {
  dir: string;
  ab: AbJson;
}

/** A loaded sweep.json. */
export interface SweepData {
  file: string;
  entries: SweepEntry[];
}

/** A loaded diff.json. */
export interface DiffData {
  file: string;
  diff: DiffJson;
}

/** A loaded capacity.json (`kvlab capacity`): the evaluated points per strategy. */
export interface CapacityData {
  file: string;
  target: number;
  slo: { ttft_ms: number; tbt_ms: number };
  /** strategy -> capacity mean and the evaluated (offered load, goodput) points. */
  strategies: Record<string, { mean: number; offered_load: number; points: { seed: number; multiplier: number; offered_load: number; goodput: number }[] }>;
}

/** Everything a report is built from. */
export interface ReportInputs {
  runs: RunData[];
  abs: AbData[];
  sweeps: SweepData[];
  diffs: DiffData[];
  capacities: CapacityData[];
  /** non-fatal problems (e.g. a run listed in ab.json that is not on disk), shown in the report. */
  warnings: string[];
}

type Obj = Record<string, unknown>;

function isObj(x: unknown): x is Obj {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/** Reads and parses a JSON file; throws InputError naming the file on a read or parse error. */
export function readJson(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new InputError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new InputError(`${file}: invalid JSON (${(e as Error).message})`);
  }
}

/** Value at a dotted path of an object, or undefined. */
function at(o: unknown, path: string): unknown {
  let cur: unknown = o;
  for (const k of path.split('.')) {
    if (!isObj(cur)) return undefined;
    cur = cur[k];
  }
  return cur;
}

function requireNumber(o: unknown, path: string, where: string): number {
  const v = at(o, path);
  if (typeof v !== 'number') {
    throw new InputError(`${where}: ${v === undefined ? 'missing field' : 'field is not a number:'} "${path}"`);
  }
  return v;
}

function requireString(o: unknown, path: string, where: string): string {
  const v = at(o, path);
  if (typeof v !== 'string') throw new InputError(`${where}: ${v === undefined ? 'missing field' : 'field is not a string:'} "${path}"`);
  return v;
}

/**
 * Validates the parts of summary.json that reports use.
 * @throws InputError naming the file and the first missing/malformed field.
 */
export function validateSummary(x: unknown, file: string): SummaryJson {
  if (!isObj(x)) throw new InputError(`${file}: expected a JSON object`);
  for (const f of ['requests', 'completed', 'prefix_hit_ratio', 'throughput_rps']) requireNumber(x, f, file);
  for (const m of ['ttft_ms', 'tpot_ms', 'e2e_ms']) for (const s of ['mean', 'p50', 'p90', 'p99']) requireNumber(x, `${m}.${s}`, file);
  return x as unknown as SummaryJson;
}

/**
 * Validates timeseries.json: `bucket_ms`, `t_ms`, and that every series has one value per bucket.
 * @throws InputError naming the file and field.
 */
export function validateTimeseries(x: unknown, file: string): TimeseriesJson {
  if (!isObj(x)) throw new InputError(`${file}: expected a JSON object`);
  requireNumber(x, 'bucket_ms', file);
  const t = x['t_ms'];
  if (!Array.isArray(t)) throw new InputError(`${file}: missing field "t_ms" (array of bucket start times, ms)`);
  const n = t.length;
  const check = (arr: unknown, path: string): void => {
    if (arr === undefined) return;
    if (!Array.isArray(arr)) throw new InputError(`${file}: field "${path}" is not an array`);
    if (arr.length !== n) throw new InputError(`${file}: field "${path}" has ${arr.length} values, expected ${n} (one per t_ms bucket)`);
  };
  if (isObj(x['intent'])) for (const [k, v] of Object.entries(x['intent'])) check(v, `intent.${k}`);
  if (isObj(x['instances'])) {
    for (const [id, inst] of Object.entries(x['instances'])) {
      if (!isObj(inst)) throw new InputError(`${file}: field "instances.${id}" is not an object`);
      for (const k of ['requests', 'hit_ratio', 'booked_prefill_tokens', 'running']) check(inst[k], `instances.${id}.${k}`);
      if (isObj(inst['intent'])) for (const [k, v] of Object.entries(inst['intent'])) check(v, `instances.${id}.intent.${k}`);
    }
  }
  if (isObj(x['links'])) {
    for (const [id, l] of Object.entries(x['links'])) {
      if (!isObj(l)) throw new InputError(`${file}: field "links.${id}" is not an object`);
      for (const k of ['busy_frac', 'mean_wait_ms']) check(l[k], `links.${id}.${k}`);
    }
  }
  return x as unknown as TimeseriesJson;
}

/** Bare Infinity / NaN tokens (not valid JSON) in a value position. */
const NON_JSON_NUMBER = /(?<=[:,[]\s*)-?(?:Infinity|NaN)(?=\s*[,\]}])/g;

/**
 * Turns columnar alternatives ({instance: [...], intent: [...], score: [...], ttft_ms: [...]},
 * docs/FORMATS.md) into one object per option; arrays of objects (the older form) pass through.
 * Null entries are dropped from each option.
 */
export function normalizeAlternatives(alts: unknown): AlternativeJson[] {
  if (Array.isArray(alts)) return alts as AlternativeJson[];
  if (!isObj(alts)) return [];
  const cols = Object.entries(alts).filter(([, v]) => Array.isArray(v)) as [string, unknown[]][];
  const n = Math.max(0, ...cols.map(([, v]) => v.length));
  const out: AlternativeJson[] = [];
  for (let i = 0; i < n; i++) {
    const o: Record<string, unknown> = {};
    for (const [k, v] of cols) if (v[i] !== null && v[i] !== undefined) o[k] = v[i];
    out.push(o as unknown as AlternativeJson);
  }
  return out;
}

/**
 * Parses records.jsonl. Checks per line: `id`, `status`, and for status `ok` the observed
 * `ttft_ms` and `e2e_ms`. Blank lines are skipped. Columnar `decision.alternatives` are turned
 * into one object per option. Bare `Infinity`/`NaN` numbers (not JSON) are read as null and
 * reported through `warn` (once per file, with the count and the first line).
 * @throws InputError "FILE:LINE: missing field "observed.ttft_ms"" etc.
 */
export function parseRecords(text: string, file: string, warn?: (msg: string) => void): RecordJson[] {
  const out: RecordJson[] = [];
  let lineNo = 0;
  let start = 0;
  let nonJson = 0;
  let firstNonJson = 0;
  while (start < text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    lineNo++;
    const line = text.slice(start, end).trim();
    start = end + 1;
    if (line === '') continue;
    const where = `${file}:${lineNo}`;
    let rec: unknown;
    try {
      rec = JSON.parse(line);
    } catch (e) {
      const fixed = line.replace(NON_JSON_NUMBER, 'null');
      try {
        if (fixed === line) throw e;
        rec = JSON.parse(fixed);
        if (nonJson++ === 0) firstNonJson = lineNo;
      } catch {
        throw new InputError(`${where}: invalid JSON (${(e as Error).message})`);
      }
    }
    if (!isObj(rec)) throw new InputError(`${where}: expected a JSON object`);
    requireString(rec, 'id', where);
    const status = requireString(rec, 'status', where);
    if (status === 'ok') {
      requireNumber(rec, 'observed.ttft_ms', where);
      requireNumber(rec, 'observed.e2e_ms', where);
    }
    const d = rec['decision'];
    if (isObj(d) && d['alternatives'] !== undefined && !Array.isArray(d['alternatives'])) d['alternatives'] = normalizeAlternatives(d['alternatives']);
    out.push(rec as unknown as RecordJson);
  }
  if (nonJson > 0) warn?.(`${file}: ${nonJson} line(s) hold Infinity/NaN, which is not JSON (first: line ${firstNonJson}); read as null`);
  return out;
}

/** The strategy name of a run, from summary.json, config.json or the first record's decision. */
function runStrategy(summary: SummaryJson | null, config: Obj | null, records: RecordJson[] | null): string | undefined {
  if (summary && typeof summary.strategy === 'string') return summary.strategy;
  const cs = config?.['strategy'];
  if (typeof cs === 'string') return cs;
  if (isObj(cs) && typeof cs['name'] === 'string') return cs['name'];
  const r = records?.find((x) => x.decision && typeof x.decision.strategy === 'string');
  return r?.decision?.strategy;
}

/** True when a directory holds at least one run file. */
export function isRunDir(dir: string): boolean {
  return ['summary.json', 'records.jsonl', 'timeseries.json'].some((f) => existsSync(join(dir, f)));
}

/**
 * Loads one run directory (summary.json, records.jsonl, timeseries.json, config.json; each
 * optional but at least one of the first three must exist).
 * @param override strategy/seed to use instead of the files' own (e.g. from ab.json).
 * @throws InputError when the directory has no run file, a file is malformed, or the strategy cannot be determined.
 */
export function loadRun(dir: string, override: { strategy?: string; seed?: number } = {}, warn?: (msg: string) => void): RunData {
  const abs = resolve(dir);
  if (!existsSync(abs) || !statSync(abs).isDirectory()) throw new InputError(`run directory not found: ${dir}`);
  if (!isRunDir(abs)) throw new InputError(`${dir}: not a run directory (no summary.json, records.jsonl or timeseries.json)`);
  const f = (name: string): string => join(abs, name);
  const summary = existsSync(f('summary.json')) ? validateSummary(readJson(f('summary.json')), f('summary.json')) : null;
  const configRaw = existsSync(f('config.json')) ? readJson(f('config.json')) : null;
  const config = isObj(configRaw) ? configRaw : null;
  const timeseries = existsSync(f('timeseries.json')) ? validateTimeseries(readJson(f('timeseries.json')), f('timeseries.json')) : null;
  const records = existsSync(f('records.jsonl')) ? parseRecords(readFileSync(f('records.jsonl'), 'utf8'), f('records.jsonl'), warn) : null;
  const strategy = override.strategy ?? runStrategy(summary, config, records);
  if (strategy === undefined) {
    throw new InputError(`${dir}: cannot tell the strategy: missing field "strategy" in summary.json and config.json`);
  }
  let seed = override.seed;
  if (seed === undefined) {
    const s = summary?.seed ?? config?.['seed'];
    seed = typeof s === 'number' ? s : 0;
  }
  return { dir: abs, strategy, seed, summary, config, timeseries, records };
}

/**
 * Validates ab.json: `seeds` (array of numbers) and `strategies` (object of {runs: string[]}).
 * @throws InputError naming the file and field.
 */
export function validateAb(x: unknown, file: string): AbJson {
  if (!isObj(x)) throw new InputError(`${file}: expected a JSON object`);
  if (!Array.isArray(x['seeds']) || !x['seeds'].every((s) => typeof s === 'number')) {
    throw new InputError(`${file}: missing field "seeds" (array of seed numbers)`);
  }
  if (!isObj(x['strategies'])) throw new InputError(`${file}: missing field "strategies" (object keyed by strategy name)`);
  for (const [name, s] of Object.entries(x['strategies'])) {
    if (!isObj(s)) throw new InputError(`${file}: field "strategies.${name}" is not an object`);
    if (!Array.isArray(s['runs'])) throw new InputError(`${file}: missing field "strategies.${name}.runs" (array of run directories)`);
  }
  return x as unknown as AbJson;
}

/** Validates capacity.json: target, slo and per-strategy points with numeric fields. */
function validateCapacity(json: unknown, file: string): CapacityData {
  if (!isObj(json) || typeof json['target'] !== 'number' || !isObj(json['slo']) || !isObj(json['strategies'])) throw new InputError(`${file}: not a capacity.json (needs target, slo, strategies)`);
  const strategies: CapacityData['strategies'] = {};
  for (const [name, e] of Object.entries(json['strategies'] as Obj)) {
    if (!isObj(e) || !Array.isArray(e['points'])) throw new InputError(`${file}: strategies.${name}.points must be an array`);
    const points = (e['points'] as unknown[]).map((p, i) => {
      if (!isObj(p) || !['seed', 'multiplier', 'offered_load', 'goodput'].every((k) => typeof p[k] === 'number' && Number.isFinite(p[k]))) throw new InputError(`${file}: strategies.${name}.points.${i} needs numeric seed, multiplier, offered_load, goodput`);
      return { seed: p['seed'] as number, multiplier: p['multiplier'] as number, offered_load: p['offered_load'] as number, goodput: p['goodput'] as number };
    });
    strategies[name] = { mean: typeof e['mean'] === 'number' ? e['mean'] : NaN, offered_load: typeof e['offered_load'] === 'number' ? e['offered_load'] : NaN, points };
  }
  const slo = json['slo'] as Obj;
  return { file, target: json['target'] as number, slo: { ttft_ms: Number(slo['ttft_ms']), tbt_ms: Number(slo['tbt_ms']) }, strategies };
}

/** Validates sweep.json: an array of {params, strategy, seed, summary|null}. */
export function validateSweep(x: unknown, file: string): SweepEntry[] {
  if (!Array.isArray(x)) throw new InputError(`${file}: expected a JSON array of {params, strategy, seed, summary}`);
  x.forEach((e, i) => {
    const where = `${file}: entry ${i}`;
    if (!isObj(e)) throw new InputError(`${where}: expected an object`);
    if (!isObj(e['params'])) throw new InputError(`${where}: missing field "params"`);
    requireString(e, 'strategy', where);
    requireNumber(e, 'seed', where);
    if (e['summary'] === undefined) throw new InputError(`${where}: missing field "summary" (null for a failed run)`);
    if (e['summary'] !== null) validateSummary(e['summary'], `${where}.summary`);
  });
  return x as SweepEntry[];
}

/** Validates diff.json: `a`, `b`, `fields`; `pairs` when present must be an array of {id, a, b}. */
export function validateDiff(x: unknown, file: string): DiffJson {
  if (!isObj(x)) throw new InputError(`${file}: expected a JSON object`);
  requireString(x, 'a', file);
  requireString(x, 'b', file);
  if (!isObj(x['fields'])) throw new InputError(`${file}: missing field "fields"`);
  if (x['pairs'] !== undefined) {
    if (!Array.isArray(x['pairs'])) throw new InputError(`${file}: field "pairs" is not an array`);
    x['pairs'].forEach((p, i) => {
      if (!isObj(p) || !isObj(p['a']) || !isObj(p['b'])) throw new InputError(`${file}: field "pairs[${i}]" needs "a" and "b" objects`);
    });
  }
  return x as unknown as DiffJson;
}

/**
 * Finds the directory of a run listed in ab.json, preferring copies inside the ab directory (so a
 * moved or copied ab directory uses its own runs): relative to the ab directory, then its last two
 * path components under the ab directory (e.g. kvlab/seed-1), then the last one, then the path as
 * written (absolute, or relative to the working directory).
 */
export function resolveAbRun(abDir: string, p: string): string | undefined {
  const tries: string[] = [];
  if (!isAbsolute(p)) tries.push(resolve(abDir, p));
  const parts = p.split(/[\\/]+/).filter(Boolean);
  if (parts.length >= 2) tries.push(join(abDir, parts[parts.length - 2]!, parts[parts.length - 1]!));
  if (parts.length >= 1) tries.push(join(abDir, parts[parts.length - 1]!));
  tries.push(resolve(p));
  return tries.find((t) => existsSync(t) && statSync(t).isDirectory() && isRunDir(t));
}

/** Loads an ab directory (ab.json + the runs it lists); missing runs become warnings. */
function loadAbDir(dir: string, into: ReportInputs): void {
  const file = join(dir, 'ab.json');
  const ab = validateAb(readJson(file), file);
  into.abs.push({ dir, ab });
  for (const [strategy, s] of Object.entries(ab.strategies)) {
    s.runs.forEach((p, i) => {
      const found = resolveAbRun(dir, p);
      const seed = ab.seeds[i] ?? i;
      if (!found) {
        into.warnings.push(`${file}: run "${p}" (strategy ${strategy}, seed ${seed}) not found; using ab.json's numbers only`);
        return;
      }
      into.runs.push(loadRun(found, { strategy, seed }, (w) => into.warnings.push(w)));
    });
  }
}

/** Run directories under dir (depth <= 3), for a directory that is not itself a known input. */
function findRunDirs(dir: string, depth = 3): string[] {
  if (depth < 0) return [];
  if (isRunDir(dir)) return [dir];
  let entries: string[];
  try {
    entries = readdirSync(dir).sort();
  } catch {
    return [];
  }
  return entries.flatMap((e) => {
    const p = join(dir, e);
    try {
      return statSync(p).isDirectory() ? findRunDirs(p, depth - 1) : [];
    } catch {
      return [];
    }
  });
}

/**
 * Loads every report input. Each path may be:
 * - a run directory (summary.json / records.jsonl / timeseries.json / config.json);
 * - an ab directory (ab.json, whose `runs` are loaded too) or the ab.json file;
 * - a sweep directory (sweep.json) or the sweep.json file;
 * - a diff.json file or a directory containing one;
 * - a directory that holds run directories below it (up to 3 levels), e.g. a parent of several runs.
 * A directory may hold several of these (e.g. a run directory with a diff.json). The same run
 * directory given twice is loaded once.
 * @throws InputError when a path does not exist, holds no known input, or a file is malformed.
 */
export function loadInputs(paths: readonly string[]): ReportInputs {
  if (paths.length === 0) throw new InputError('no input given: pass one or more run, ab or sweep directories, or a diff.json');
  const inputs: ReportInputs = { runs: [], abs: [], sweeps: [], diffs: [], capacities: [], warnings: [] };
  for (const p of paths) {
    const abs = resolve(p);
    if (!existsSync(abs)) throw new InputError(`input not found: ${p}`);
    if (statSync(abs).isFile()) {
      const name = basename(abs);
      const json = readJson(abs);
      if (name === 'capacity.json' || (isObj(json) && typeof json['target'] === 'number' && isObj(json['slo']))) {
        inputs.capacities.push(validateCapacity(json, abs));
      } else if (name === 'ab.json' || (isObj(json) && isObj(json['strategies']) && Array.isArray(json['seeds']))) {
        loadAbDir(dirname(abs), inputs);
      } else if (Array.isArray(json)) {
        inputs.sweeps.push({ file: abs, entries: validateSweep(json, abs) });
      } else if (isObj(json) && 'fields' in json && 'a' in json) {
        inputs.diffs.push({ file: abs, diff: validateDiff(json, abs) });
      } else {
        throw new InputError(`${p}: not a known report input (expected ab.json, sweep.json or diff.json, or a directory)`);
      }
      continue;
    }
    let known = false;
    if (existsSync(join(abs, 'ab.json'))) {
      loadAbDir(abs, inputs);
      known = true;
    }
    if (existsSync(join(abs, 'sweep.json'))) {
      const f = join(abs, 'sweep.json');
      inputs.sweeps.push({ file: f, entries: validateSweep(readJson(f), f) });
      known = true;
    }
    if (existsSync(join(abs, 'capacity.json'))) {
      const f = join(abs, 'capacity.json');
      inputs.capacities.push(validateCapacity(readJson(f), f));
      known = true;
    }
    if (existsSync(join(abs, 'diff.json'))) {
      const f = join(abs, 'diff.json');
      inputs.diffs.push({ file: f, diff: validateDiff(readJson(f), f) });
      known = true;
    }
    const warn = (w: string): void => void inputs.warnings.push(w);
    if (isRunDir(abs)) {
      inputs.runs.push(loadRun(abs, {}, warn));
      known = true;
    }
    if (!known) {
      const found = findRunDirs(abs);
      if (found.length === 0) {
        throw new InputError(`${p}: no report input found (expected summary.json, records.jsonl, timeseries.json, ab.json, sweep.json or diff.json)`);
      }
      for (const d of found) inputs.runs.push(loadRun(d, {}, warn));
    }
  }
  const seen = new Set<string>();
  inputs.runs = inputs.runs.filter((r) => (seen.has(r.dir) ? false : (seen.add(r.dir), true)));
  return inputs;
}
