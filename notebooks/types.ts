/**
 * Shapes of the run-directory files the reports consume (docs/FORMATS.md), as they appear on
 * disk: snake_case keys, times in ms, lengths in tokens, sizes in bytes.
 *
 * These types describe what notebooks/ reads; the writers live in sim/ and live/. Fields the
 * reports do not use are typed loosely (`unknown`) so that additions elsewhere do not break them.
 */

/** How a request's knowledge was injected; `none` = the request carried no knowledge. */
export type IntentName = 'none' | 'text' | 'kvcache' | 'hybrid' | 'blend' | 'overlap';

/** Every intent, in the order charts and tables show them. */
export const INTENTS: readonly IntentName[] = ['text', 'kvcache', 'hybrid', 'blend', 'overlap', 'none'];

/** A TTFT breakdown (predicted or observed), ms. ttft = prepare + link_wait + transfer + queue + kv_load + prefill. */
export interface BreakdownJson {
  prepare_ms: number;
  link_wait_ms: number;
  transfer_ms: number;
  /** KV load into the engine (LMCache retrieve), ms. */
  kv_load_ms: number;
  queue_ms: number;
  prefill_ms: number;
  ttft_ms: number;
}

/** What really happened to a request (sim or live), ms unless named otherwise. */
export interface ObservedJson extends BreakdownJson {
  /** (e2e - ttft) / (output_tokens - 1); null when output_tokens = 1. */
  tpot_ms: number | null;
  e2e_ms: number;
  /** local prefix-cache hit, tokens. */
  cached_tokens?: number;
  /** KV loaded from LMCache/KDN, tokens. */
  loaded_tokens?: number;
  /** tokens moved on the KDN link. */
  transfer_tokens?: number;
  preemptions?: number;
  /** absolute virtual/wall time of the first token, ms since run start. */
  first_token_at_ms?: number;
  /** absolute time of the last token, ms since run start. */
  done_at_ms?: number;
}

/** One option the strategy scored (chosen or rejected). */
export interface AlternativeJson {
  instance: string;
  intent: IntentName;
  /** strategy-specific score (lower is better unless the strategy says otherwise). */
  score: number;
  /** predicted TTFT of this option, ms, when the strategy computes one. */
  ttft_ms?: number;
  /** hybrid split point, tokens loaded as KV. */
  reused_tokens?: number;
}

/**
 * The engine's decision as the reports use it. On disk `alternatives` is columnar
 * ({instance: [...], intent: [...], score: [...], ttft_ms: [...]}); `parseRecords` turns it into
 * one object per option.
 */
export interface DecisionJson {
  strategy: string;
  reason: string;
  reused_tokens: number;
  cached_tokens: number;
  alternatives: AlternativeJson[];
}

/** One line of records.jsonl. */
export interface RecordJson {
  id: string;
  arrival_ms: number;
  status: 'ok' | 'rejected' | 'failed';
  error: string | null;
  input_tokens: number;
  output_tokens: number;
  knowledge_tokens: number;
  instance: string | null;
  kdn: string | null;
  intent: IntentName;
  decision: DecisionJson | null;
  predicted: BreakdownJson | null;
  /** null when status is `rejected` (and possibly `failed`). */
  observed: ObservedJson | null;
  source: string;
}

/** mean and percentiles of one metric over a run's completed requests, ms. */
export interface Stat4 {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
}

/** One instance's totals in summary.json. */
export interface PerInstanceJson {
  id: string;
  requests: number;
  prompt_tokens: number;
  hit_tokens: number;
  busy_ms: number;
}

/** summary.json: aggregate metrics of one run. */
export interface SummaryJson {
  kvlab_version?: string;
  source?: string;
  strategy: string;
  seed: number;
  trace?: string;
  instances?: number;
  requests: number;
  completed: number;
  rejected: number;
  failed: number;
  /** prompt tokens served from instance caches / prompt tokens, 0..1. */
  prefix_hit_ratio: number;
  ttft_ms: Stat4;
  tpot_ms: Stat4;
  e2e_ms: Stat4;
  /** TTFT at quantile levels k/(n-1), k = 0..n-1 (sim writes 101: 0 %, 1 %, ..., 100 %), ms. */
  ttft_quantiles_ms?: number[];
  /** completed requests per second of run time. */
  throughput_rps: number;
  duration_ms: number;
  intent_mix?: Partial<Record<IntentName, number>>;
  load_cov?: number;
  kv_bytes_moved?: number;
  preemptions?: number;
  per_instance?: PerInstanceJson[];
  wall_ms?: number;
  sim_requests_per_s?: number;
}

/** One instance's series in timeseries.json; every array has one value per bucket. */
export interface InstanceSeriesJson {
  requests?: number[];
  /** 0..1 per bucket. */
  hit_ratio?: number[];
  /** prompt tokens booked (dispatched, prefill not yet done) at the bucket, tokens. */
  booked_prefill_tokens?: number[];
  running?: number[];
  intent?: Partial<Record<IntentName, number[]>>;
}

/** One KDN->instance link's series. */
export interface LinkSeriesJson {
  /** fraction of the bucket the link was transferring, 0..1. */
  busy_frac?: number[];
  /** mean wait of transfers that started in the bucket, ms. */
  mean_wait_ms?: number[];
}

/** timeseries.json: per-bucket series for charts. `t_ms[i]` is the start of bucket i. */
export interface TimeseriesJson {
  bucket_ms: number;
  t_ms: number[];
  intent?: Partial<Record<IntentName, number[]>>;
  instances?: Record<string, InstanceSeriesJson>;
  links?: Record<string, LinkSeriesJson>;
}

/** A value across seeds as written by `kvlab ab`. */
export interface SeedStatJson {
  mean: number;
  ci95: [number, number];
  /** one value per seed, in the order of ab.json `seeds`. */
  values: number[];
}

/** One strategy in ab.json. */
export interface AbStrategyJson {
  /** run directories, one per seed (in `seeds` order). */
  runs: string[];
  ttft_ms?: Partial<Record<keyof Stat4, SeedStatJson>>;
  tpot_ms?: Partial<Record<keyof Stat4, SeedStatJson>>;
  e2e_ms?: Partial<Record<keyof Stat4, SeedStatJson>>;
  throughput_rps?: SeedStatJson;
  prefix_hit_ratio?: SeedStatJson;
  vs_baseline?: Record<string, { change: number; ci95: [number, number]; significant: boolean }>;
}

/** ab.json: an A/B comparison of strategies over seeds. */
export interface AbJson {
  trace?: string;
  seeds: number[];
  baseline?: string;
  instances?: number;
  strategies: Record<string, AbStrategyJson>;
}

/** Error statistics of one field in diff.json. */
export interface DiffFieldStats {
  /** mean absolute percentage error, fraction (0.06 = 6 %). */
  mape: number;
  median_abs_err_ms: number;
  p90_abs_err_ms: number;
  /** mean signed error (b - a), ms. */
  bias_ms: number;
  n: number;
}

/** One joined request in diff.json: values of run A and run B, keyed by field name (ms). */
export interface DiffPairJson {
  id: string;
  a: Record<string, number | null>;
  b: Record<string, number | null>;
}

/** diff.json: `kvlab diff RUN_A RUN_B` (A is usually the prediction/replay, B the observation). */
export interface DiffJson {
  a: string;
  b: string;
  joined: number;
  fields: Record<string, DiffFieldStats>;
  engine_prediction?: Record<string, DiffFieldStats>;
  pairs?: DiffPairJson[];
}

/** One grid point of a sweep: the varied parameter values, e.g. {rate: 4, kdn_gbps: 10}. */
export type SweepParams = Record<string, number | string>;

/** One entry of sweep.json: a finished (or failed) simulation of one grid point, strategy and seed. */
export interface SweepEntry {
  params: SweepParams;
  strategy: string;
  seed: number;
  /** the run's summary; null when the run failed (then `error` says why). */
  summary: SummaryJson | null;
  error?: string;
  /** the run directory when the sweep kept it (`--keep-runs`), relative to the sweep directory. */
  run_dir?: string;
  /** wall time of this run, ms (older sweep.json files only; now in sweep-timing.json). */
  wall_ms?: number;
}
