/**
 * `kvlab diff RUN_A RUN_B`: joins two runs' timing records by request id and reports, per timing
 * field, how far B is from A (A is the reference: for "simulated vs observed", A = the live run).
 *
 * For every field present (a number) in both records of a pair with status `ok`:
 * - `mape` = mean(|b − a| / |a|) over pairs with |a| >= 1e-3 ms (null when there is none);
 * - `median_abs_err_ms`, `p90_abs_err_ms` = quantiles of |b − a| (simple-statistics
 *   `quantileSorted`, as sim/metrics.ts);
 * - `bias_ms` = mean(b − a);
 * - `n` = pairs compared.
 * Fields: ttft, prepare, link wait, transfer, kv load, queue, prefill, tpot, e2e, plus
 * `queue_prefill_ms` = queue + prefill (the instance-side time, comparable even where a live run
 * cannot split queueing from prefill).
 * `engine_prediction.ttft_ms`: the same statistics for A's decision-time prediction
 * (`predicted.ttft_ms`) against A's observed TTFT; `engine_prediction.b.ttft_ms` for B's.
 * `pairs`: up to 5,000 joined pairs (evenly spaced when more) `{id, a:{ttft_ms}, b:{ttft_ms},
 * predicted_ttft_ms}` (A's prediction). Format: docs/FORMATS.md diff.json.
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { quantileSorted } from 'simple-statistics';
import { r3 } from '../sim/metrics.js';
import { readRecords, type TimingRecord } from './recorder.js';

/** Per-field error statistics (ms; mape is a fraction). */
export interface FieldStats {
  mape: number | null;
  median_abs_err_ms: number | null;
  p90_abs_err_ms: number | null;
  bias_ms: number | null;
  n: number;
}

/** diff.json content. */
export interface DiffResult {
  a: string;
  b: string;
  joined: number;
  a_only: number;
  b_only: number;
  /** joined pairs where one side is not `ok` (excluded from the statistics). */
  status_mismatch: number;
  /** fraction of compared pairs with the same intent / the same instance. */
  same_intent: number | null;
  same_instance: number | null;
  fields: Record<string, FieldStats>;
  engine_prediction: { ttft_ms: FieldStats; b: { ttft_ms: FieldStats } };
  pairs: Array<{ id: string; a: { ttft_ms: number | null }; b: { ttft_ms: number | null }; predicted_ttft_ms: number | null }>;
}

/** Observed fields compared, in report order. */
export const DIFF_FIELDS = ['ttft_ms', 'prepare_ms', 'link_wait_ms', 'transfer_ms', 'kv_load_ms', 'queue_ms', 'prefill_ms', 'queue_prefill_ms', 'tpot_ms', 'e2e_ms'] as const;

/** Error statistics of paired values (b against reference a). */
export function errorStats(pairs: Array<[number, number]>): FieldStats {
  const n = pairs.length;
  if (n === 0) return { mape: null, median_abs_err_ms: null, p90_abs_err_ms: null, bias_ms: null, n: 0 };
  const abs = pairs.map(([a, b]) => Math.abs(b - a)).sort((x, y) => x - y);
  let ape = 0;
  let nApe = 0;
  let bias = 0;
  for (const [a, b] of pairs) {
    bias += b - a;
    if (Math.abs(a) >= 1e-3) {
      ape += Math.abs(b - a) / Math.abs(a);
      nApe++;
    }
  }
  return {
    mape: nApe ? Math.round((ape / nApe) * 1e5) / 1e5 : null,
    median_abs_err_ms: r3(quantileSorted(abs, 0.5)),
    p90_abs_err_ms: r3(quantileSorted(abs, 0.9)),
    bias_ms: r3(bias / n),
    n,
  };
}

function field(r: TimingRecord, f: (typeof DIFF_FIELDS)[number]): number | null {
  const o = r.observed as Record<string, number | null | undefined> | null;
  if (!o) return null;
  if (f === 'queue_prefill_ms') {
    const q = o.queue_ms;
    const p = o.prefill_ms;
    return typeof q === 'number' && typeof p === 'number' ? q + p : null;
  }
  const v = o[f];
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/**
 * Diffs two record sets (already read).
 * @param aName label of A (its directory) for the output
 */
export function diffRecords(aRecs: readonly TimingRecord[], bRecs: readonly TimingRecord[], aName = 'A', bName = 'B', maxPairs = 5000): DiffResult {
  const bById = new Map<string, TimingRecord>();
  for (const r of bRecs) bById.set(r.id, r);
  const aIds = new Set(aRecs.map((r) => r.id));
  const perField = new Map<string, Array<[number, number]>>(DIFF_FIELDS.map((f) => [f, []]));
  const predA: Array<[number, number]> = [];
  const predB: Array<[number, number]> = [];
  const pairs: DiffResult['pairs'] = [];
  let joined = 0;
  let mismatch = 0;
  let sameIntent = 0;
  let sameInst = 0;
  let compared = 0;
  for (const a of aRecs) {
    const b = bById.get(a.id);
    if (!b) continue;
    joined++;
    if (a.status !== 'ok' || b.status !== 'ok' || !a.observed || !b.observed) {
      if (a.status !== b.status) mismatch++;
      continue;
    }
    compared++;
    if (a.intent === b.intent) sameIntent++;
    if (a.instance === b.instance) sameInst++;
    for (const f of DIFF_FIELDS) {
      const va = field(a, f);
      const vb = field(b, f);
      if (va !== null && vb !== null) perField.get(f)!.push([va, vb]);
    }
    const ta = a.observed.ttft_ms;
    const tb = b.observed.ttft_ms;
    if (a.predicted && typeof ta === 'number') predA.push([ta, a.predicted.ttft_ms]);
    if (b.predicted && typeof tb === 'number') predB.push([tb, b.predicted.ttft_ms]);
    pairs.push({ id: a.id, a: { ttft_ms: ta ?? null }, b: { ttft_ms: tb ?? null }, predicted_ttft_ms: a.predicted?.ttft_ms ?? b.predicted?.ttft_ms ?? null });
  }
  let kept = pairs;
  if (pairs.length > maxPairs) {
    kept = [];
    for (let k = 0; k < maxPairs; k++) kept.push(pairs[Math.floor((k * pairs.length) / maxPairs)]!);
  }
  const fields: Record<string, FieldStats> = {};
  for (const f of DIFF_FIELDS) fields[f] = errorStats(perField.get(f)!);
  return {
    a: aName,
    b: bName,
    joined,
    a_only: aRecs.length - joined,
    b_only: bRecs.filter((r) => !aIds.has(r.id)).length,
    status_mismatch: mismatch,
    same_intent: compared ? r3(sameIntent / compared) : null,
    same_instance: compared ? r3(sameInst / compared) : null,
    fields,
    engine_prediction: { ttft_ms: errorStats(predA), b: { ttft_ms: errorStats(predB) } },
    pairs: kept,
  };
}

/**
 * Diffs two run directories (or records.jsonl files) and writes `out` when given.
 * @throws Error naming the missing directory/file or the bad line; when a run has no records;
 *   when the runs share no request id (they are not runs of the same requests: nothing to compare).
 */
export function diffRuns(a: string, b: string, out?: string): DiffResult {
  for (const p of [a, b]) if (!existsSync(p)) throw new Error(`run not found: ${p}`);
  const ra = readRecords(a);
  const rb = readRecords(b);
  for (const [p, r] of [[a, ra], [b, rb]] as const) if (r.length === 0) throw new Error(`${p}: the run has no records`);
  const d = diffRecords(ra, rb, resolve(a), resolve(b));
  if (d.joined === 0) {
    throw new Error(`${a} (${ra.length} records, e.g. ${JSON.stringify(ra[0]!.id)}) and ${b} (${rb.length}, e.g. ${JSON.stringify(rb[0]!.id)}) share no request id: diff compares runs of the same requests (e.g. a live replay and its simulation)`);
  }
  if (out) {
    mkdirSync(dirname(resolve(out)), { recursive: true });
    writeFileSync(out, JSON.stringify(d, null, 1) + '\n');
  }
  return d;
}

/** A warning line when the runs only partly overlap (null when every id is in both). */
export function overlapWarning(d: DiffResult): string | null {
  if (d.a_only === 0 && d.b_only === 0) return null;
  return `warning: the runs overlap partly: ${d.joined} request ids in both, ${d.a_only} only in ${d.a}, ${d.b_only} only in ${d.b} (statistics cover the joined ones)`;
}

const pct = (x: number | null): string => (x === null ? '—' : `${(x * 100).toFixed(1)}%`);
const ms = (x: number | null): string => (x === null ? '—' : x.toFixed(1));

/** A plain-text table of a diff (one row per field with data, then the engine's prediction). */
export function formatDiff(d: DiffResult, labels: { a?: string; b?: string } = {}): string {
  const la = labels.a ?? 'A';
  const lb = labels.b ?? 'B';
  const rows: string[][] = [['field', 'n', 'MAPE', 'median |err| ms', 'p90 |err| ms', `bias (${lb}−${la}) ms`]];
  for (const [f, s] of Object.entries(d.fields)) {
    if (s.n === 0) continue;
    rows.push([f, String(s.n), pct(s.mape), ms(s.median_abs_err_ms), ms(s.p90_abs_err_ms), ms(s.bias_ms)]);
  }
  const pa = d.engine_prediction.ttft_ms;
  const pb = d.engine_prediction.b.ttft_ms;
  if (pa.n) rows.push([`engine prediction (${la}) vs ${la} ttft`, String(pa.n), pct(pa.mape), ms(pa.median_abs_err_ms), ms(pa.p90_abs_err_ms), ms(pa.bias_ms)]);
  if (pb.n) rows.push([`engine prediction (${lb}) vs ${lb} ttft`, String(pb.n), pct(pb.mape), ms(pb.median_abs_err_ms), ms(pb.p90_abs_err_ms), ms(pb.bias_ms)]);
  const w = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const lines = rows.map((r) => r.map((x, c) => (c === 0 ? x.padEnd(w[c]!) : x.padStart(w[c]!))).join('  '));
  lines.splice(1, 0, w.map((n) => '-'.repeat(n)).join('  '));
  const head = `${la}: ${d.a}\n${lb}: ${d.b}\njoined ${d.joined} (only in ${la}: ${d.a_only}, only in ${lb}: ${d.b_only}, status differs: ${d.status_mismatch}); same intent ${pct(d.same_intent)}, same instance ${pct(d.same_instance)}`;
  return `${head}\n${lines.join('\n')}\n`;
}
