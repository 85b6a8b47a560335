/**
 * Strategy parameter schemas: one descriptor per strategy, checked in one place by
 * `parseStrategyParams`, whatever the source (CLI `--strategy-opt k=v` strings, cluster-file
 * `strategyParams`, the gateway's `--strategy-params` JSON and `PUT /debug/strategy` bodies).
 * A bad value is an error naming the strategy and the parameter; nothing non-finite (NaN)
 * reaches a strategy unless the parameter explicitly allows ±Infinity.
 *
 * Pure and dependency-free (the engine must not pay for zod at start-up).
 */

/** A number parameter: finite unless `allowInfinity`; optional integer and range checks. */
export interface NumberParam {
  kind: 'number';
  doc: string;
  /** inclusive lower bound (default -Infinity). */
  min?: number;
  /** inclusive upper bound (default +Infinity). */
  max?: number;
  /** the lower bound is exclusive (e.g. a positive rate). */
  minExclusive?: boolean;
  int?: boolean;
  /** accept Infinity / "inf" / "Infinity" (e.g. "unbounded" table sizes). */
  allowInfinity?: boolean;
}

/** A boolean parameter: true/false, or the strings "true"/"false"/"1"/"0"/"yes"/"no". */
export interface BooleanParam {
  kind: 'boolean';
  doc: string;
}

/** One of a fixed set of strings (e.g. an intent or a variant name). */
export interface EnumParam {
  kind: 'enum';
  doc: string;
  values: readonly string[];
}

/** An array of non-negative integers of a fixed length (e.g. static-mix's [kv, text] pattern). */
export interface IntArrayParam {
  kind: 'intArray';
  doc: string;
  length: number;
}

/** Descriptor of one strategy parameter. */
export type ParamSpec = NumberParam | BooleanParam | EnumParam | IntArrayParam;

/** A strategy's parameters: name -> descriptor. */
export type ParamSchema = Readonly<Record<string, ParamSpec>>;

/** A bad strategy parameter; `param` is its name (or "" for the whole object); the message names both. */
export class StrategyParamError extends Error {
  constructor(
    readonly strategy: string,
    readonly param: string,
    message: string,
  ) {
    super(`strategy ${strategy}: ${message}`);
    this.name = 'StrategyParamError';
  }
}

/** The injection intents a fixed-intent strategy may be configured with. */
export const FIXED_INTENTS = ['text', 'kvcache', 'hybrid', 'blend', 'overlap'] as const;

/** Shared descriptor of the `intent` parameter of fixed-intent routers. */
export const INTENT_PARAM: EnumParam = { kind: 'enum', doc: 'injection intent used for every request', values: FIXED_INTENTS };

/**
 * Checks and converts `raw` against `schema`.
 * Strings are parsed (numbers, booleans, "inf", JSON arrays) so CLI values and JSON values
 * go through the same checks.
 * @returns a new object with only the given keys, converted to their types
 * @throws StrategyParamError naming the strategy and parameter: unknown name (listing the
 *   known ones), wrong type, NaN, non-finite, out of range, not an integer, not an allowed value
 */
export function parseStrategyParams(strategy: string, schema: ParamSchema, raw: unknown): Record<string, unknown> {
  if (raw === undefined || raw === null) return {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new StrategyParamError(strategy, '', `parameters must be an object of name: value (got ${describe(raw)})`);
  const out: Record<string, unknown> = {};
  const known = Object.keys(schema);
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    const spec = schema[k];
    if (!spec) {
      throw new StrategyParamError(strategy, k, `unknown parameter "${k}" (known: ${known.length ? known.join(', ') : 'none'})`);
    }
    out[k] = parseOne(strategy, k, spec, v);
  }
  return out;
}

function parseOne(strategy: string, k: string, spec: ParamSpec, v: unknown): unknown {
  const bad = (msg: string) => new StrategyParamError(strategy, k, `${k} ${msg}`);
  switch (spec.kind) {
    case 'number': {
      let x: number;
      if (typeof v === 'number') x = v;
      else if (typeof v === 'string' && v.trim() !== '') {
        const s = v.trim();
        if (/^[+]?(inf|infinity)$/i.test(s)) x = Infinity;
        else if (/^-(inf|infinity)$/i.test(s)) x = -Infinity;
        else x = Number(s);
      } else throw bad(`must be a number (got ${describe(v)})`);
      if (Number.isNaN(x)) throw bad(`must be a number (got ${describe(v)})`);
      if (!Number.isFinite(x) && !spec.allowInfinity) throw bad(`must be a finite number (got ${describe(v)})`);
      if (spec.int && Number.isFinite(x) && !Number.isInteger(x)) throw bad(`must be an integer (got ${describe(v)})`);
      const min = spec.min ?? -Infinity;
      const max = spec.max ?? Infinity;
      if (spec.minExclusive ? !(x > min) : !(x >= min)) throw bad(`must be ${spec.minExclusive ? '>' : '>='} ${min} (got ${describe(v)})`);
      if (!(x <= max)) throw bad(`must be <= ${max} (got ${describe(v)})`);
      return x;
    }
    case 'boolean': {
      if (typeof v === 'boolean') return v;
      if (typeof v === 'string') {
        const s = v.trim().toLowerCase();
        if (s === 'true' || s === '1' || s === 'yes') return true;
        if (s === 'false' || s === '0' || s === 'no') return false;
      }
      if (v === 1) return true;
      if (v === 0) return false;
      throw bad(`must be true or false (got ${describe(v)})`);
    }
    case 'enum': {
      if (typeof v === 'string' && spec.values.includes(v)) return v;
      throw bad(`must be one of ${spec.values.join(', ')} (got ${describe(v)})`);
    }
    case 'intArray': {
      let a: unknown = v;
      if (typeof v === 'string') {
        const s = v.trim();
        try {
          a = s.startsWith('[') ? JSON.parse(s) : s.split(/[,:]/).map((x) => (x.trim() === '' ? NaN : Number(x)));
        } catch {
          throw bad(`must be a list of ${spec.length} non-negative integers, e.g. [1,1] or 1,1 (got ${describe(v)})`);
        }
      }
      if (!Array.isArray(a) || a.length !== spec.length || a.some((x) => typeof x !== 'number' || !Number.isInteger(x) || x < 0)) {
        throw bad(`must be a list of ${spec.length} non-negative integers, e.g. [1,1] or 1,1 (got ${describe(v)})`);
      }
      return a.slice();
    }
  }
}

/** Human-readable one-line description of a parameter (for `kvlab strategies` and help). */
export function describeParam(name: string, spec: ParamSpec): string {
  switch (spec.kind) {
    case 'number': {
      const lo = spec.min === undefined ? '' : `${spec.minExclusive ? '>' : '>='}${spec.min}`;
      const hi = spec.max === undefined ? '' : `<=${spec.max}`;
      const range = [lo, hi].filter(Boolean).join(', ');
      return `${name} (${spec.int ? 'integer' : 'number'}${range ? `, ${range}` : ''}${spec.allowInfinity ? ', inf allowed' : ''}): ${spec.doc}`;
    }
    case 'boolean':
      return `${name} (boolean): ${spec.doc}`;
    case 'enum':
      return `${name} (${spec.values.join('|')}): ${spec.doc}`;
    case 'intArray':
      return `${name} (${spec.length} integers): ${spec.doc}`;
  }
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'number') return String(v);
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v;
}
