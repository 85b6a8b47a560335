/**
 * Commander argument parsers shared by every kvlab command, so every numeric flag is checked the
 * same way (type, range, integer), and a bad value is one error line naming the flag, never NaN:
 *
 *   .option('--seed <n>', 'seed', intArg('--seed', { min: 0 }), 1)
 *   .option('--noise-cv <x>', '...', numberArg('--noise-cv', { min: 0 }))
 *
 * The parsers throw commander's `InvalidArgumentError`; commander prints
 * `error: option '--seed <n>' argument 'abc' is invalid. --seed must be an integer >= 0 (got "abc")`
 * and exits 1.
 */
import { InvalidArgumentError } from 'commander';
import { accessSync, constants, mkdirSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

/** Range of a numeric flag. */
export interface NumberRange {
  /** inclusive lower bound (exclusive with `minExclusive`). */
  min?: number;
  /** inclusive upper bound. */
  max?: number;
  minExclusive?: boolean;
  /** accept `inf` / `infinity` as Infinity. */
  allowInfinity?: boolean;
  /** why the upper bound exists (said in the message), e.g. "a resource bound". */
  maxWhy?: string;
}

function describe(kind: string, r: NumberRange): string {
  const lo = r.min !== undefined ? `${r.minExclusive ? '>' : '>='} ${r.min}` : '';
  const hi = r.max !== undefined ? `<= ${r.max}` : '';
  return lo && hi ? `${kind} ${lo} and ${hi}` : lo || hi ? `${kind} ${lo || hi}` : kind;
}

function parse(flag: string, v: string, int: boolean, r: NumberRange): number {
  const s = v.trim();
  const kind = int ? 'an integer' : 'a number';
  if (r.allowInfinity && /^(inf|infinity)$/i.test(s)) return Infinity;
  const x = s === '' ? NaN : Number(s);
  const bad = !Number.isFinite(x) || (int && !Number.isSafeInteger(x)) || (r.min !== undefined && (r.minExclusive ? x <= r.min : x < r.min));
  if (bad) throw new InvalidArgumentError(`${flag} must be ${describe(kind, r)}${r.allowInfinity ? ' (or inf)' : ''} (got "${v}")`);
  if (r.max !== undefined && x > r.max) throw new InvalidArgumentError(`${flag} must be ${describe(kind, r)}${r.maxWhy ? ` (${r.maxWhy})` : ''} (got "${v}")`);
  return x;
}

/** A parser for a finite number within `range`. */
export function numberArg(flag: string, range: NumberRange = {}): (v: string) => number {
  return (v) => parse(flag, v, false, range);
}

/** A parser for a safe integer within `range` (default: >= 1). */
export function intArg(flag: string, range: NumberRange = { min: 1 }): (v: string) => number {
  return (v) => parse(flag, v, true, range);
}

/** A parser accepting one of `choices`. */
export function choiceArg<T extends string>(flag: string, choices: readonly T[]): (v: string) => T {
  return (v) => {
    if (!(choices as readonly string[]).includes(v)) throw new InvalidArgumentError(`${flag} must be one of ${choices.join(', ')} (got "${v}")`);
    return v as T;
  };
}

/** `--seed`: a non-negative integer. */
export const seedArg = intArg('--seed', { min: 0, max: Number.MAX_SAFE_INTEGER });

/**
 * Parses one `key=value` of a repeatable option into `prev` (numbers and true/false converted),
 * for commander's repeatable options (`.option('--workload-opt <k=v>', '...', keyValueArg('--workload-opt'), {})`).
 */
export function keyValueArg(flag: string): (v: string, prev?: Record<string, unknown>) => Record<string, unknown> {
  return (v, prev = {}) => {
    const i = v.indexOf('=');
    if (i <= 0) throw new InvalidArgumentError(`${flag} must look like key=value (got "${v}")`);
    const k = v.slice(0, i).trim();
    const raw = v.slice(i + 1).trim();
    if (k in prev) throw new InvalidArgumentError(`${flag} ${k} given twice`);
    return { ...prev, [k]: parseScalar(raw) };
  };
}

/** "3" → 3, "true"/"false" → booleans, anything else stays a string (numbers must be finite). */
export function parseScalar(raw: string): unknown {
  if (raw === 'true') return true;
  if (raw === 'false') return false;
  const n = Number(raw);
  return raw !== '' && Number.isFinite(n) ? n : raw;
}

/**
 * Makes sure `dir` is a directory this process can write, creating missing levels one at a time
 * (never `mkdir -p` on special file systems such as /proc, where Node's recursive mkdir can
 * loop forever). Returns the absolute path.
 * @throws Error naming `flag` and the path when it cannot be created or written.
 */
export function ensureWritableDir(dir: string, flag = '--out'): string {
  const abs = resolve(dir);
  const missing: string[] = [];
  let p = abs;
  for (;;) {
    let st;
    try {
      st = statSync(p);
    } catch {
      missing.unshift(p);
      const up = dirname(p);
      if (up === p) break;
      p = up;
      continue;
    }
    if (!st.isDirectory()) throw new Error(`${flag} ${dir}: ${p} exists and is not a directory`);
    try {
      accessSync(p, constants.W_OK);
    } catch {
      throw new Error(`${flag} ${dir}: ${p} is not writable`);
    }
    break;
  }
  for (const m of missing) {
    try {
      mkdirSync(m);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && statSync(m).isDirectory()) continue;
      throw new Error(`${flag} ${dir}: cannot create ${m}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  return abs;
}

/** A commander parser for an output directory: created (and checked writable) at once, so a bad path fails before any work. */
export function outDirArg(flag = '--out'): (v: string) => string {
  return (v) => {
    try {
      ensureWritableDir(v, flag);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
    return v;
  };
}

/** An output file (e.g. `--out diff.json`): its directory is created and checked like {@link outDirArg}. */
export function outFileArg(flag = '--out'): (v: string) => string {
  return (v) => {
    try {
      ensureWritableDir(dirname(resolve(v)), flag);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
    return v;
  };
}
