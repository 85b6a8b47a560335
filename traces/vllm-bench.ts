/**
 * Reader of `vllm bench serve --save-result [--save-detailed]` result JSON (vllm-project/vllm
 * vllm/benchmarks/serve.py, read at commit 009e6d4; the older benchmarks/benchmark_serving.py
 * writes the same keys). The fields used:
 *
 *   date, backend|endpoint_type, model_id, tokenizer_id, num_prompts       setup
 *   request_rate (number or "inf"), burstiness (gamma shape, 1 = Poisson; default 1 in old files),
 *   max_concurrency (null or an integer)                                  traffic
 *   duration (s), completed, failed, total_input_tokens, total_output_tokens
 *   mean_/median_/std_/pNN_{ttft,tpot,itl,e2el}_ms                        aggregates (ms)
 *   with --save-detailed, one entry per request (same length):
 *     input_lens, output_lens (tokens), ttfts (s), itls (list of s per request), errors ("" = ok),
 *     and in recent versions latencies (s, send → last chunk) and start_times (s, perf_counter at send)
 *   --metadata KEY=VALUE pairs land as top-level string fields: kvlab reads the engine settings
 *     max_num_seqs, max_num_batched_tokens, max_model_len, tensor_parallel_size (or tp),
 *     data_parallel_size, gpu, num_gpus, num_gpu_blocks, block_size, gpu_memory_utilization,
 *     enable_prefix_caching, vllm_version from them when present.
 *
 * Definitions follow vLLM's `calculate_metrics`: TTFT = client send → first streamed token;
 * E2E = `latencies[i]` (or TTFT + Σ itls[i] when absent); TPOT = (E2E − TTFT) / (output − 1).
 * Arrivals: `start_times` present → exact (relative to the first send); request_rate "inf" → all
 * at t = 0 (exact); a finite rate without start times → only the process is known (vLLM draws
 * gamma(shape = burstiness, scale = 1/(rate·burstiness)) gaps and rescales them to N/rate s).
 */
import { readFileSync } from 'node:fs';
import { showValue, typeName } from './errors.js';
import { ImportError, unknownEngine, type ObservedDist, type ObservedRequest, type ObservedRun } from './observed.js';

/** true when a parsed JSON object looks like a vllm bench serve result. */
export function isVllmBenchResult(o: unknown): boolean {
  if (o === null || typeof o !== 'object' || Array.isArray(o)) return false;
  const r = o as Record<string, unknown>;
  return ('ttfts' in r || 'mean_ttft_ms' in r || 'mean_e2el_ms' in r) && ('request_rate' in r || 'num_prompts' in r || 'duration' in r);
}

/**
 * Parses JSON text, also accepting Python's `Infinity` / `NaN` literals (json.dump of a float
 * inf/nan) which strict JSON rejects: they are read as Infinity / null.
 * @throws ImportError `FILE: not valid JSON: ...`
 */
export function parseLenientJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    const fixed = text.replace(/(?<=[:,[]\s*)-?Infinity(?=\s*[,\]}])/g, (m) => (m.startsWith('-') ? '-1e999' : '1e999')).replace(/(?<=[:,[]\s*)NaN(?=\s*[,\]}])/g, 'null');
    try {
      return JSON.parse(fixed);
    } catch {
      throw new ImportError(`${file}: not valid JSON: ${(e as Error).message}`);
    }
  }
}

type Obj = Record<string, unknown>;

function num(o: Obj, k: string, file: string, opts: { min?: number; int?: boolean; nullable?: boolean } = {}): number | null {
  const v = o[k];
  if (v === undefined || v === null) {
    if (opts.nullable !== false) return null;
    throw new ImportError(`${file}: ${k}: missing`);
  }
  if (typeof v !== 'number' || Number.isNaN(v) || (opts.int && !Number.isInteger(v)) || (opts.min !== undefined && v < opts.min)) {
    throw new ImportError(`${file}: ${k}: expected ${opts.int ? 'an integer' : 'a number'}${opts.min !== undefined ? ` >= ${opts.min}` : ''}, got ${typeName(v)} ${showValue(v)}`);
  }
  return v;
}

function str(o: Obj, k: string): string | null {
  const v = o[k];
  return typeof v === 'string' ? v : v === undefined || v === null ? null : String(v);
}

/** A metadata value (strings from --metadata, or numbers) as a positive number, or null. */
function metaNum(o: Obj, keys: string[], file: string, int = true): number | null {
  for (const k of keys) {
    const v = o[k];
    if (v === undefined || v === null || v === '') continue;
    const n = typeof v === 'number' ? v : Number(v);
    if (!Number.isFinite(n) || n <= 0 || (int && !Number.isInteger(n))) throw new ImportError(`${file}: ${k}: expected a positive ${int ? 'integer' : 'number'}, got ${showValue(v)}`);
    return n;
  }
  return null;
}

function metaBool(o: Obj, k: string, file: string): boolean | null {
  const v = o[k];
  if (v === undefined || v === null || v === '') return null;
  if (typeof v === 'boolean') return v;
  const s = String(v).toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(s)) return true;
  if (['false', '0', 'no', 'off'].includes(s)) return false;
  throw new ImportError(`${file}: ${k}: expected true or false, got ${showValue(v)}`);
}

/** An array field of N entries, or null when absent; names the field and index when mistyped. */
function arr<T>(o: Obj, k: string, n: number | null, file: string, check: (v: unknown, where: string) => T): T[] | null {
  const v = o[k];
  if (v === undefined || v === null) return null;
  if (!Array.isArray(v)) throw new ImportError(`${file}: ${k}: expected an array, got ${typeName(v)}`);
  if (n !== null && v.length !== n) throw new ImportError(`${file}: ${k}: has ${v.length} entries, expected ${n} (one per request)`);
  return v.map((x, i) => check(x, `${file}: ${k}.${i}`));
}

const nonNegNum = (v: unknown, where: string): number => {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ImportError(`${where}: expected a finite number >= 0, got ${typeName(v)} ${showValue(v)}`);
  return v;
};
const nonNegInt = (v: unknown, where: string): number => {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new ImportError(`${where}: expected an integer >= 0, got ${typeName(v)} ${showValue(v)}`);
  return v;
};

function aggregate(o: Obj, metric: string, n: number, file: string): ObservedDist {
  const g = (k: string) => num(o, k, file, { min: 0 });
  return { mean: g(`mean_${metric}_ms`), p50: g(`median_${metric}_ms`) ?? g(`p50_${metric}_ms`), p90: g(`p90_${metric}_ms`), p99: g(`p99_${metric}_ms`), n };
}

/**
 * Converts a parsed vllm bench serve result object.
 * @throws ImportError naming the file and field (and index) for missing or mistyped fields,
 *   arrays of different lengths, or a file with neither per-request data nor aggregates.
 */
export function vllmBenchToObserved(o: unknown, file: string): ObservedRun {
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new ImportError(`${file}: expected a JSON object (vllm bench serve --save-result)`);
  const r = o as Obj;
  if (!isVllmBenchResult(r)) throw new ImportError(`${file}: not a vllm bench serve result: needs ttfts or mean_ttft_ms, and request_rate`);
  const rr = r.request_rate;
  let rate: number;
  if (rr === undefined || rr === null) rate = Infinity; // vLLM's default --request-rate
  else if (rr === 'inf' || rr === 'Infinity' || rr === Infinity) rate = Infinity;
  else if (typeof rr === 'number' && rr > 0) rate = rr;
  else if (typeof rr === 'string' && Number.isFinite(Number(rr)) && Number(rr) > 0) rate = Number(rr);
  else throw new ImportError(`${file}: request_rate: expected a positive number or "inf", got ${showValue(rr)}`);
  const burstiness = num(r, 'burstiness', file, { min: Number.MIN_VALUE }) ?? 1;
  const maxConcurrency = num(r, 'max_concurrency', file, { min: 1, int: true });
  const ttfts = arr(r, 'ttfts', null, file, nonNegNum);
  const n = ttfts ? ttfts.length : null;
  const inputLens = arr(r, 'input_lens', n, file, nonNegInt);
  const outputLens = arr(r, 'output_lens', n, file, nonNegInt);
  const latencies = arr(r, 'latencies', n, file, nonNegNum);
  const startTimes = arr(r, 'start_times', n, file, (v, w) => {
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new ImportError(`${w}: expected a finite number (s), got ${typeName(v)} ${showValue(v)}`);
    return v;
  });
  const itls = arr(r, 'itls', n, file, (v, w) => {
    if (!Array.isArray(v)) throw new ImportError(`${w}: expected a list of inter-token latencies (s), got ${typeName(v)}`);
    return v.map((x, j) => nonNegNum(x, `${w}.${j}`));
  });
  const errors = arr(r, 'errors', n, file, (v) => (v === null || v === undefined ? '' : String(v)));
  if (ttfts && (!inputLens || !outputLens)) throw new ImportError(`${file}: ttfts is present but ${!inputLens ? 'input_lens' : 'output_lens'} is missing (per-request data needs both lengths)`);
  const requests: ObservedRequest[] = [];
  if (ttfts && inputLens && outputLens) {
    const t0 = startTimes ? Math.min(...startTimes) : 0;
    for (let i = 0; i < ttfts.length; i++) {
      const err = errors?.[i] ?? '';
      const out = outputLens[i]!;
      const ok = err === '' && (out > 0 || ttfts[i]! > 0);
      const ttft = ttfts[i]! * 1000;
      const e2e = latencies ? latencies[i]! * 1000 : itls ? ttft + itls[i]!.reduce((s, x) => s + x, 0) * 1000 : null;
      if (ok && inputLens[i]! < 1) throw new ImportError(`${file}: input_lens.${i}: a completed request needs at least 1 prompt token, got 0`);
      requests.push({
        id: `r${i}`,
        arrivalMs: startTimes ? (startTimes[i]! - t0) * 1000 : rate === Infinity ? 0 : null,
        inputTokens: Math.max(1, inputLens[i]!),
        outputTokens: Math.max(1, out),
        ok,
        error: ok ? null : err || 'failed (no output)',
        ttftMs: ok ? ttft : null,
        tpotMs: ok && e2e !== null && out > 1 ? (e2e - ttft) / (out - 1) : null,
        e2eMs: ok ? e2e : null,
        queueMs: null,
        where: `${file}: request ${i}`,
      });
    }
  }
  const completed = num(r, 'completed', file, { min: 0, int: true });
  const failedField = num(r, 'failed', file, { min: 0, int: true });
  const nDone = completed ?? requests.filter((q) => q.ok).length;
  const hasAgg = ['ttft', 'tpot', 'e2el', 'itl'].some((m) => r[`mean_${m}_ms`] !== undefined);
  if (requests.length === 0 && !hasAgg) throw new ImportError(`${file}: no per-request data (ttfts) and no aggregates (mean_ttft_ms)`);
  const aggregates = hasAgg ? { ttft: aggregate(r, 'ttft', nDone, file), tpot: aggregate(r, 'tpot', nDone, file), e2e: aggregate(r, 'e2el', nDone, file), itl: aggregate(r, 'itl', nDone, file) } : null;
  const numPrompts = num(r, 'num_prompts', file, { min: 1, int: true });
  const numRequests = requests.length || numPrompts || (completed ?? 0) + (failedField ?? 0);
  let totals: ObservedRun['totals'] = null;
  if (requests.length === 0) {
    const ti = num(r, 'total_input_tokens', file, { min: 0, int: true });
    const to = num(r, 'total_output_tokens', file, { min: 0, int: true });
    if (ti === null || to === null || !completed) throw new ImportError(`${file}: aggregates-only result needs total_input_tokens, total_output_tokens and completed > 0 to rebuild the requests`);
    const dur = num(r, 'duration', file, { min: 0 });
    totals = { inputTokens: ti, outputTokens: to, completed, failed: failedField ?? Math.max(0, numRequests - completed), durationMs: dur === null ? null : dur * 1000 };
  }
  const engine = unknownEngine();
  engine.maxNumSeqs = metaNum(r, ['max_num_seqs'], file);
  engine.maxNumBatchedTokens = metaNum(r, ['max_num_batched_tokens'], file);
  engine.maxModelLen = metaNum(r, ['max_model_len'], file);
  engine.tensorParallel = metaNum(r, ['tensor_parallel_size', 'tp', 'tp_size'], file);
  engine.dataParallel = metaNum(r, ['data_parallel_size', 'dp'], file);
  engine.blockSize = metaNum(r, ['block_size'], file);
  const blocks = metaNum(r, ['num_gpu_blocks'], file);
  const kvTokens = metaNum(r, ['kv_cache_tokens', 'num_kv_tokens'], file);
  engine.kvCapacityTokens = kvTokens ?? (blocks !== null ? blocks * (engine.blockSize ?? 16) : null);
  engine.gpuMemoryUtilization = metaNum(r, ['gpu_memory_utilization'], file, false);
  engine.enablePrefixCaching = metaBool(r, 'enable_prefix_caching', file);
  return {
    format: 'vllm-bench',
    files: [file],
    model: str(r, 'model_id') ?? str(r, 'model'),
    gpu: str(r, 'gpu') ?? str(r, 'hardware'),
    gpus: metaNum(r, ['num_gpus', 'gpus'], file),
    vllmVersion: str(r, 'vllm_version'),
    date: str(r, 'date'),
    entry: 'openai-server',
    arrivals: startTimes || rate === Infinity ? 'exact' : 'process',
    requestRate: rate,
    burstiness,
    maxConcurrency: maxConcurrency === null ? null : Math.round(maxConcurrency),
    numRequests,
    requests,
    aggregates,
    totals,
    engine,
    extra: {
      backend: str(r, 'backend') ?? str(r, 'endpoint_type'),
      label: str(r, 'label'),
      tokenizer_id: str(r, 'tokenizer_id'),
      duration_s: num(r, 'duration', file, { min: 0 }),
      request_throughput: num(r, 'request_throughput', file, { min: 0 }),
      per_request_start_times: !!startTimes,
    },
  };
}

/** Reads a vllm bench serve result file. @throws ImportError naming the file and field. */
export function readVllmBenchResult(file: string): ObservedRun {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ImportError(`${file}: ${(e as Error).message}`);
  }
  return vllmBenchToObserved(parseLenientJson(text, file), file);
}
