/**
 * Live timing records: the records.jsonl / summary.json of docs/FORMATS.md written by the
 * gateway (`kvlab gateway --out DIR`), the replay client (`kvlab replay`) and `kvlab live demo`.
 *
 * - Every record is appended with one synchronous `write(2)` as soon as its request finished,
 *   so a crash of the process loses nothing already answered (the OS holds the bytes; no fsync,
 *   so a power loss may). `close()` rewrites the file in arrival order (FORMATS: request order)
 *   through a temp file + rename, and writes summary.json.
 * - Times in live records are **model ms**: wall ms × the run's time scale (1 unless emulators
 *   run faster than real time), counted from the recorder's clock origin (gateway start, or
 *   replay start). Lengths are tokens, sizes bytes, rounded to 3 decimals.
 * - Fields a live run cannot observe are null: `observed.kv_load_ms` (inside the backend's
 *   prefill) and `observed.preemptions`. `observed.queue_ms` is 0 and `observed.prefill_ms` is
 *   the whole backend time from send to the first non-empty streamed chunk (vLLM does not
 *   expose the split per request), so `ttft = prepare + link_wait + transfer + queue + prefill`
 *   still holds.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { intentRecord, type Intent } from '../engine/types.js';
import { KVLAB_VERSION } from '../engine/version.js';
import { dist, r3, type Dist } from '../sim/metrics.js';

/** Predicted TTFT breakdown as written in a record (ms). */
export interface RecordPredicted {
  prepare_ms: number;
  link_wait_ms: number;
  transfer_ms: number;
  kv_load_ms: number;
  queue_ms: number;
  prefill_ms: number;
  ttft_ms: number;
}

/** Observed timings of a record (ms, model time; null = not observable in this run). */
export interface RecordObserved {
  prepare_ms: number | null;
  link_wait_ms: number | null;
  transfer_ms: number | null;
  kv_load_ms: number | null;
  queue_ms: number | null;
  prefill_ms: number | null;
  ttft_ms: number | null;
  tpot_ms: number | null;
  e2e_ms: number | null;
  /**
   * prompt tokens served from caches. Live: vLLM's `usage.prompt_tokens_details.cached_tokens`,
   * which counts local prefix hits **and** LMCache/KDN loads (the sim splits them into
   * cached_tokens + loaded_tokens).
   */
  cached_tokens: number | null;
  /** KV loaded from LMCache/KDN (sim); null live (inside vLLM's cached_tokens). */
  loaded_tokens?: number | null;
  preemptions: number | null;
  first_token_at_ms: number | null;
  done_at_ms: number | null;
  /** live extras: the backend's `usage.prompt_tokens` (checks the gateway's tokenisation). */
  prompt_tokens?: number | null;
  /** live extras: KV tokens the KDN injected (ACK `tokens_injected`). */
  transfer_tokens?: number | null;
  /** live extras: bytes the KDN's link charged (ACK `wire_bytes`). */
  wire_bytes?: number | null;
  /** live extras: round trip of the KDN inject call (ACK), ms; null when there was none. */
  kdn_ack_ms?: number | null;
  /** live extras: attempts on other instances after a failure before the first byte. */
  retries?: number;
  /** P/D hand-off of a disaggregated request (docs/FORMATS.md). */
  pd?: RecordPdObserved;
}

/**
 * Observed P/D hand-off (docs/FORMATS.md; absolute times are model ms of the run's clock). Sim
 * records fill the transfer window from the link model; live records from the gateway's view
 * (P's answer, D's send) and D's `x-kvlab-kv-transfer` report (null fields when D sent none).
 */
export interface RecordPdObserved {
  /** D, null when the request fell back to colocated execution on P. */
  decode_instance: string | null;
  transfer_bytes: number | null;
  prefill_done_ms: number | null;
  link_wait_ms: number | null;
  transfer_start_ms: number | null;
  transfer_end_ms: number | null;
  transfer_ms: number | null;
  /** live: prefill request sent to P, decode request sent to D (null: never sent). */
  prefill_sent_ms?: number;
  decode_sent_ms?: number | null;
  /** live: P answered with kv_transfer_params (false: D computed the prompt). */
  kv_transfer_params?: boolean;
  /** live: prompt tokens D received from P, and why some were recomputed (null: none was). */
  transfer_tokens?: number | null;
  miss?: string | null;
  /** live: why the request ran colocated on P instead (dead D), null otherwise. */
  fallback?: string | null;
}

/** Scored options, columnar (docs/FORMATS.md); `ttft_ms` / `reused_tokens` only when computed. */
export interface Alternatives {
  instance: string[];
  intent: Intent[];
  score: number[];
  ttft_ms?: Array<number | null>;
  reused_tokens?: Array<number | null>;
}

/** Columnar alternatives from the engine's list (instance indices mapped to ids). */
export function columnarAlternatives(alts: ReadonlyArray<{ instance: number; intent: Intent; score: number; ttftMs?: number; reusedTokens?: number }>, ids: readonly string[]): Alternatives {
  const out: Alternatives = { instance: alts.map((a) => ids[a.instance] ?? String(a.instance)), intent: alts.map((a) => a.intent), score: alts.map((a) => a.score) };
  if (alts.some((a) => a.ttftMs !== undefined)) out.ttft_ms = alts.map((a) => a.ttftMs ?? null);
  if (alts.some((a) => a.reusedTokens !== undefined)) out.reused_tokens = alts.map((a) => a.reusedTokens ?? null);
  return out;
}

/** The engine's decision as written in a record. */
export interface RecordDecision {
  strategy: string;
  reason: string;
  reused_tokens: number;
  cached_tokens: number;
  /** columnar (docs/FORMATS.md): one array per field, one entry per option scored. */
  alternatives: Alternatives;
  /** live: the intent the engine chose when execution fell back to another one (e.g. KDN down). */
  planned_intent?: Intent;
  /** live: why execution differed from the decision (e.g. "kdn-unreachable"). */
  fallback?: string | null;
  /** P/D: the decode instance the engine chose (the prefill instance is the record's `instance`). */
  decode?: string;
}

/** One timing record (docs/FORMATS.md records.jsonl). */
export interface TimingRecord {
  id: string;
  /** live: the client's `x-request-id` when the record id differs from it (a reused id got a suffix, or a prompt list was split). */
  client_id?: string;
  arrival_ms: number;
  /** ok | rejected (refused: limit, bad request, max_model_len, backend 4xx) | failed (backend or gateway failure) | aborted (live: the client disconnected or timed out). */
  status: 'ok' | 'rejected' | 'failed' | 'aborted';
  error: string | null;
  input_tokens: number;
  output_tokens: number;
  knowledge_tokens: number;
  instance: string | null;
  /** P/D: the instance that decoded (the prefill instance is `instance`); absent when colocated. */
  decode_instance?: string;
  kdn: string | null;
  intent: Intent;
  decision: RecordDecision | null;
  predicted: (RecordPredicted & { pd?: { link_wait_ms: number; transfer_ms: number; tbt_ms: number } }) | null;
  observed: RecordObserved | null;
  source: 'sim' | 'live';
}

/** Rounds every number of a plain object tree to 3 decimals (in place) and returns it. */
export function roundDeep<T>(x: T): T {
  if (Array.isArray(x)) {
    for (let i = 0; i < x.length; i++) x[i] = typeof x[i] === 'number' ? r3(x[i]) : roundDeep(x[i]);
  } else if (x !== null && typeof x === 'object') {
    const o = x as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      const v = o[k];
      o[k] = typeof v === 'number' ? (Number.isFinite(v) ? r3(v) : null) : roundDeep(v);
    }
  }
  return x;
}

/** Options of a {@link Recorder}. */
export interface RecorderOptions {
  /** summary.json fields that identify the run (strategy, trace, instances, time_scale, ...). */
  meta?: Record<string, unknown>;
  /** keep records in memory for the summary (default true). */
  keep?: boolean;
  /**
   * an existing DIR/records.jsonl with records is appended to (true) instead of refused (default
   * false: nothing already recorded is ever overwritten).
   */
  append?: boolean;
}

/**
 * Appends timing records to DIR/records.jsonl, one synchronous write per record.
 * @throws Error when DIR cannot be created or the file cannot be opened (names the path).
 */
export class Recorder {
  readonly dir: string;
  readonly file: string;
  private fd: number | null;
  private readonly kept: TimingRecord[] = [];
  private readonly keep: boolean;
  meta: Record<string, unknown>;
  private closed = false;
  /** records written so far. */
  count = 0;

  /** ids of the records already in the file (append mode), else empty. */
  readonly existingIds: string[] = [];
  /**
   * append mode: the end of the earlier records (max of done_at_ms, arrival_ms), model ms; a
   * live driver starts its clock there so arrival times keep increasing. 0 otherwise.
   */
  readonly resumeAtMs: number = 0;

  /**
   * Opens DIR/records.jsonl for writing.
   * @throws Error naming the path when DIR cannot be created or the file cannot be opened, or
   *   when it already holds records and `append` is not set.
   */
  constructor(dir: string, opts: RecorderOptions = {}) {
    this.dir = resolve(dir);
    this.file = join(this.dir, 'records.jsonl');
    const exists = existsSync(this.file) && statSync(this.file).size > 0;
    if (exists && !opts.append) {
      throw new Error(`run directory ${dir} already has records (${this.file}); use a new --out directory, or --append to add to it`);
    }
    if (exists) {
      const old = readRecords(this.file);
      let end = 0;
      for (const r of old) {
        this.existingIds.push(r.id);
        end = Math.max(end, r.arrival_ms, r.observed?.done_at_ms ?? 0);
      }
      this.resumeAtMs = Math.ceil(end) + 1000;
    }
    try {
      mkdirSync(this.dir, { recursive: true });
      this.fd = openSync(this.file, exists ? 'a' : 'w');
    } catch (e) {
      throw new Error(`recorder: cannot write to ${dir}: ${(e as Error).message}`);
    }
    this.keep = opts.keep ?? true;
    this.meta = opts.meta ?? {};
    if (exists && this.keep) for (const r of readRecords(this.file)) this.kept.push(r);
  }

  /** Appends one record (rounded to 3 decimals) and writes it to the OS at once. No-op after close. */
  write(rec: TimingRecord): void {
    if (this.closed || this.fd === null) return;
    roundDeep(rec);
    writeSync(this.fd, JSON.stringify(rec) + '\n');
    this.count++;
    if (this.keep) this.kept.push(rec);
  }

  /** Records written so far (in write order; empty unless `keep`). */
  records(): readonly TimingRecord[] {
    return this.kept;
  }

  /**
   * Closes the file, rewrites it in arrival order and writes summary.json (`extra` fields are
   * merged into the summary). Idempotent; returns the summary.
   */
  close(extra: Record<string, unknown> = {}): LiveSummary {
    if (!this.closed && this.fd !== null) closeSync(this.fd);
    this.fd = null;
    const recs = this.keep ? this.kept : readRecords(this.file);
    if (!this.closed) {
      this.closed = true;
      const sorted = [...recs].sort((a, b) => a.arrival_ms - b.arrival_ms);
      const tmp = `${this.file}.tmp`;
      writeFileSync(tmp, sorted.map((r) => JSON.stringify(r)).join('\n') + (sorted.length ? '\n' : ''));
      renameSync(tmp, this.file);
    }
    const s = summarizeRecords(recs, { ...this.meta, ...extra });
    writeFileSync(join(this.dir, 'summary.json'), JSON.stringify(s, null, 1) + '\n');
    return s;
  }
}

/**
 * Reads DIR/records.jsonl (or a .jsonl path). Blank lines are skipped.
 * @throws Error naming the file and line for a missing file or a bad JSON line.
 */
export function readRecords(pathOrDir: string): TimingRecord[] {
  const file = pathOrDir.endsWith('.jsonl') ? pathOrDir : join(pathOrDir, 'records.jsonl');
  if (!existsSync(file)) throw new Error(`records not found: ${file}`);
  const out: TimingRecord[] = [];
  const lines = readFileSync(file, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!.trim();
    if (!l) continue;
    let r: unknown;
    try {
      r = JSON.parse(l);
    } catch (e) {
      throw new Error(`${file}:${i + 1}: not valid JSON: ${(e as Error).message}`);
    }
    if (r === null || typeof r !== 'object' || typeof (r as { id?: unknown }).id !== 'string') throw new Error(`${file}:${i + 1}: a record needs a string "id"`);
    out.push(r as TimingRecord);
  }
  return out;
}

/** summary.json of a live run (docs/FORMATS.md; same core fields as a simulated run). */
export interface LiveSummary {
  kvlab_version: string;
  source: 'live' | 'sim';
  requests: number;
  completed: number;
  rejected: number;
  failed: number;
  /** live: requests the client abandoned (disconnect / timeout). */
  aborted: number;
  /** cached_tokens / input tokens over completed requests (live: local prefix hits + LMCache loads). */
  prefix_hit_ratio: number;
  ttft_ms: Dist;
  tpot_ms: Dist;
  e2e_ms: Dist;
  throughput_rps: number;
  duration_ms: number;
  intent_mix: Record<Intent, number>;
  load_cov: number;
  kv_bytes_moved: number;
  preemptions: number | null;
  per_instance: Array<{ id: string; requests: number; prompt_tokens: number; hit_tokens: number; computed_tokens: number }>;
  [k: string]: unknown;
}

/**
 * Aggregates records into the summary.json fields (uses sim/metrics.ts `dist`).
 * `load_cov` = coefficient of variation across instances of prompt tokens computed
 * (input − cached); `kv_bytes_moved` = Σ observed.wire_bytes.
 */
export function summarizeRecords(recs: readonly TimingRecord[], meta: Record<string, unknown> = {}): LiveSummary {
  const intent: Record<Intent, number> = intentRecord();
  const ttft: number[] = [];
  const tpot: number[] = [];
  const e2e: number[] = [];
  let completed = 0;
  let rejected = 0;
  let aborted = 0;
  let prompt = 0;
  let hit = 0;
  let bytes = 0;
  let first = Infinity;
  let last = -Infinity;
  const per = new Map<string, { id: string; requests: number; prompt_tokens: number; hit_tokens: number; computed_tokens: number }>();
  for (const r of recs) {
    intent[r.intent] = (intent[r.intent] ?? 0) + 1;
    if (r.arrival_ms < first) first = r.arrival_ms;
    if (r.status === 'rejected') rejected++;
    else if (r.status === 'aborted') aborted++;
    const id = r.instance ?? '(none)';
    let p = per.get(id);
    if (!p) per.set(id, (p = { id, requests: 0, prompt_tokens: 0, hit_tokens: 0, computed_tokens: 0 }));
    p.requests++;
    const o = r.observed;
    bytes += o?.wire_bytes ?? 0;
    if (r.status !== 'ok' || !o) continue;
    completed++;
    const cached = o.cached_tokens ?? 0;
    prompt += r.input_tokens;
    hit += cached;
    p.prompt_tokens += r.input_tokens;
    p.hit_tokens += cached;
    p.computed_tokens += Math.max(0, r.input_tokens - cached);
    if (o.ttft_ms !== null) ttft.push(o.ttft_ms);
    if (o.tpot_ms !== null) tpot.push(o.tpot_ms);
    if (o.e2e_ms !== null) e2e.push(o.e2e_ms);
    const done = o.done_at_ms ?? (o.e2e_ms !== null ? r.arrival_ms + o.e2e_ms : null);
    if (done !== null && done > last) last = done;
  }
  const perList = [...per.values()].sort((a, b) => a.id.localeCompare(b.id, 'en', { numeric: true }));
  const comp = perList.filter((p) => p.id !== '(none)').map((p) => p.computed_tokens);
  const m = comp.reduce((a, b) => a + b, 0) / Math.max(1, comp.length);
  const sd = Math.sqrt(comp.reduce((a, b) => a + (b - m) * (b - m), 0) / Math.max(1, comp.length));
  const duration = completed && last > first ? last - first : 0;
  return {
    kvlab_version: KVLAB_VERSION,
    source: 'live',
    ...meta,
    requests: recs.length,
    completed,
    rejected,
    failed: recs.length - completed - rejected - aborted,
    aborted,
    prefix_hit_ratio: prompt ? r3(hit / prompt) : 0,
    ttft_ms: dist(ttft),
    tpot_ms: dist(tpot),
    e2e_ms: dist(e2e),
    throughput_rps: duration > 0 ? r3((completed / duration) * 1000) : 0,
    duration_ms: r3(duration),
    intent_mix: intent,
    load_cov: m > 0 ? r3(sd / m) : 0,
    kv_bytes_moved: Math.round(bytes),
    preemptions: null,
    per_instance: perList,
  };
}

/**
 * Writes DIR/config.json (pretty JSON). With `keepPrevious` (an appended run), the config that was
 * there is kept inside the new one as `previous_config`.
 */
export function writeConfig(dir: string, config: Record<string, unknown>, opts: { keepPrevious?: boolean } = {}): void {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'config.json');
  let previous: unknown;
  if (opts.keepPrevious && existsSync(file)) {
    try {
      previous = JSON.parse(readFileSync(file, 'utf8'));
    } catch {
      previous = readFileSync(file, 'utf8');
    }
  }
  writeFileSync(file, JSON.stringify({ kvlab_version: KVLAB_VERSION, ...config, ...(previous !== undefined ? { previous_config: previous } : {}) }, null, 1) + '\n');
}
