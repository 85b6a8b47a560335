/**
 * An observed serving benchmark: what a real vLLM run measured, converted from its own file format
 * (traces/vllm-bench.ts: `vllm bench serve --save-result`; traces/llmservingsim.ts: LLMServingSim's
 * per-request JSONL). `kvlab import` (sim/import.ts) turns one into an observed run directory and
 * the trace `kvlab sim` replays.
 *
 * Units: ms, tokens. Times of a request are relative to the first request of the run.
 */

/** How the run's arrival times are known. */
export type ArrivalKind =
  /** every request's send (or engine-arrival) time is in the file: compare request by request. */
  | 'exact'
  /** only the arrival process is known (rate, burstiness): compare distributions across seeds. */
  | 'process';

/** One measured request. Lengths are what the engine saw; null = not measured. */
export interface ObservedRequest {
  /** id in the source (or r<index>). */
  id: string;
  /** arrival (send or engine-queue time), ms since the run's first arrival; null when only the process is known. */
  arrivalMs: number | null;
  inputTokens: number;
  outputTokens: number;
  /** true when the request completed. */
  ok: boolean;
  /** the source's error text for a failed request. */
  error: string | null;
  ttftMs: number | null;
  /** (e2e − ttft) / (output − 1), vLLM's definition; null when output_tokens = 1. */
  tpotMs: number | null;
  e2eMs: number | null;
  /** engine queueing (queued → first scheduled), when the source has engine timestamps. */
  queueMs: number | null;
  /** line (JSONL) or array index (JSON) in the source, for error messages. */
  where: string;
}

/** mean / p50 / p90 / p99 of a metric as the source reported them (ms); null = not reported. */
export interface ObservedDist {
  mean: number | null;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  n: number;
}

/**
 * Engine settings of the run, as far as the source states them (null = not stated; the importer
 * then uses vLLM's defaults for the hardware).
 */
export interface ObservedEngine {
  maxNumSeqs: number | null;
  maxNumBatchedTokens: number | null;
  maxModelLen: number | null;
  /** KV capacity in tokens (vLLM's resolved num_gpu_blocks × block_size). */
  kvCapacityTokens: number | null;
  blockSize: number | null;
  enablePrefixCaching: boolean | null;
  gpuMemoryUtilization: number | null;
  tensorParallel: number | null;
  dataParallel: number | null;
  expertParallel: boolean | null;
}

/** An imported benchmark run. */
export interface ObservedRun {
  format: 'vllm-bench' | 'llmservingsim';
  /** the file read (and its companions, e.g. meta.json). */
  files: string[];
  /** Hugging Face model id when known. */
  model: string | null;
  /** GPU name as the source states it (e.g. "NVIDIA GeForce RTX 4090", "RTXPRO6000"), null when absent. */
  gpu: string | null;
  /** GPUs per instance when stated. */
  gpus: number | null;
  vllmVersion: string | null;
  /** the source's date/time string. */
  date: string | null;
  /**
   * How requests reached the engine: `openai-server` (HTTP, client-side TTFT: API overhead
   * included) or `engine` (in-process AsyncLLM; engine-side timestamps, no API overhead).
   */
  entry: 'openai-server' | 'engine';
  arrivals: ArrivalKind;
  /** requests/s (Infinity = all at t = 0), when the source states it. */
  requestRate: number | null;
  /** gamma shape of the inter-arrival process (1 = Poisson). */
  burstiness: number;
  /** client-side concurrency cap (vllm bench --max-concurrency); null = none. */
  maxConcurrency: number | null;
  /** requests sent (completed + failed). */
  numRequests: number;
  /** per-request measurements; empty when the source has aggregates only. */
  requests: ObservedRequest[];
  /** the source's own aggregates (vllm bench mean_ttft_ms, ...), when present. */
  aggregates: { ttft: ObservedDist; tpot: ObservedDist; e2e: ObservedDist; itl: ObservedDist } | null;
  /** when requests are absent: totals to rebuild fixed-length requests from. */
  totals: { inputTokens: number; outputTokens: number; completed: number; failed: number; durationMs: number | null } | null;
  engine: ObservedEngine;
  /** anything else worth keeping in config.json (source-specific). */
  extra: Record<string, unknown>;
}

/** Engine settings with nothing stated. */
export function unknownEngine(): ObservedEngine {
  return {
    maxNumSeqs: null,
    maxNumBatchedTokens: null,
    maxModelLen: null,
    kvCapacityTokens: null,
    blockSize: null,
    enablePrefixCaching: null,
    gpuMemoryUtilization: null,
    tensorParallel: null,
    dataParallel: null,
    expertParallel: null,
  };
}

/** An import error; the message names the file and the line or field. */
export class ImportError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ImportError';
  }
}
