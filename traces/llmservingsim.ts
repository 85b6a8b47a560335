/**
 * Reader of LLMServingSim's real-vLLM ground-truth runs (casys-kaist/LLMServingSim v1.1.0,
 * `bench/examples/<GPU>/<model>/`; ../shared/data/profiles/public/llmservingsim_bench_vllm019_rtx/SOURCE.md):
 *
 * - `requests.jsonl`, one request per line:
 *     request_id      string
 *     input_toks      prompt tokens, positive integer
 *     output_toks     output tokens (exact: min_tokens = max_tokens, ignore_eos), positive integer
 *     arrival_time    client wall clock, s (not used: another clock than the engine's)
 *     queued_ts, scheduled_ts, first_token_ts, last_token_ts
 *                     vLLM RequestStateStats, engine monotonic clock, s; non-decreasing in that order
 * - `meta.json` (optional, beside it): vLLM version, engine_kwargs (tensor/data parallel size,
 *   expert parallel, max_num_seqs, max_num_batched_tokens, max_model_len), kv_cache (num_gpu_blocks,
 *   block_size, gpu_memory_utilization, enable_prefix_caching), hardware (device_name, device_count);
 * - `config.json` (optional, beside it or one directory up): LLMServingSim's cluster file
 *   (nodes[].instances[] with hardware, num_npus, tp_size, ep_size).
 *
 * The requests were driven in-process through vLLM's AsyncLLM (no HTTP), so timestamps are engine
 * side: arrival = queued_ts, TTFT = first_token_ts − queued_ts, E2E = last_token_ts − queued_ts
 * (the definitions of LLMServingSim's own validation), TPOT = (last − first)/(output − 1).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { showValue, typeName } from './errors.js';
import { ImportError, unknownEngine, type ObservedEngine, type ObservedRequest, type ObservedRun } from './observed.js';

const TS_FIELDS = ['queued_ts', 'scheduled_ts', 'first_token_ts', 'last_token_ts'] as const;

/** true when `line` (one parsed JSONL record) looks like an LLMServingSim request record. */
export function isLlmServingSimRecord(o: unknown): boolean {
  return o !== null && typeof o === 'object' && 'queued_ts' in o && 'first_token_ts' in o && 'input_toks' in o;
}

/** Resolves a run directory or a requests.jsonl path to the requests file. */
export function llmServingSimRequestsFile(path: string): string {
  const isDir = existsSync(path) && statSync(path).isDirectory();
  const file = isDir ? join(path, 'requests.jsonl') : path;
  if (!existsSync(file)) throw new ImportError(`${file}: not found${isDir ? ' (expected an LLMServingSim run directory with requests.jsonl)' : ''}`);
  return file;
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ImportError(`${file}: not valid JSON: ${(e as Error).message}`);
  }
}

/**
 * Parses the request lines (text of requests.jsonl).
 * @throws ImportError `FILE:LINE: reason` for a line that is not JSON, a missing or non-numeric
 *   field, non-positive lengths, or timestamps out of order; also for a repeated request_id.
 */
export function parseLlmServingSimRequests(text: string, file: string): ObservedRequest[] {
  const lines = text.split('\n');
  const raw: { line: number; id: string; input: number; output: number; ts: number[] }[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < lines.length; i++) {
    const s = lines[i]!.trim();
    if (!s) continue;
    const where = `${file}:${i + 1}`;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(s) as Record<string, unknown>;
    } catch (e) {
      throw new ImportError(`${where}: not valid JSON: ${(e as Error).message}`);
    }
    if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new ImportError(`${where}: expected a JSON object, got ${typeName(o)}`);
    const id = o.request_id;
    if (typeof id !== 'string' && typeof id !== 'number') throw new ImportError(`${where}: "request_id" must be a string, got ${typeName(id)} ${showValue(id)}`);
    const sid = String(id);
    if (seen.has(sid)) throw new ImportError(`${where}: request_id "${sid}" repeats an earlier line`);
    seen.add(sid);
    const len = (k: string): number => {
      const v = o[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new ImportError(`${where}: "${k}" must be a positive integer, got ${typeName(v)} ${showValue(v)}`);
      return v;
    };
    const input = len('input_toks');
    const output = len('output_toks');
    const ts: number[] = [];
    for (const k of TS_FIELDS) {
      const v = o[k];
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new ImportError(`${where}: "${k}" must be a finite number (s), got ${typeName(v)} ${showValue(v)}`);
      ts.push(v);
    }
    for (let k = 1; k < ts.length; k++) {
      if (ts[k]! < ts[k - 1]!) throw new ImportError(`${where}: "${TS_FIELDS[k]}" (${ts[k]}) is before "${TS_FIELDS[k - 1]}" (${ts[k - 1]})`);
    }
    raw.push({ line: i + 1, id: sid, input, output, ts });
  }
  if (raw.length === 0) throw new ImportError(`${file}: no request lines`);
  const t0 = Math.min(...raw.map((r) => r.ts[0]!));
  return raw.map((r) => {
    const [q, sch, first, last] = r.ts.map((x) => (x - t0) * 1000) as [number, number, number, number];
    return {
      id: r.id,
      arrivalMs: q,
      inputTokens: r.input,
      outputTokens: r.output,
      ok: true,
      error: null,
      ttftMs: first - q,
      tpotMs: r.output > 1 ? (last - first) / (r.output - 1) : null,
      e2eMs: last - q,
      queueMs: sch - q,
      where: `${file}:${r.line}`,
    };
  });
}

/** Reads optional numeric / boolean fields of an object, naming the file and field when mistyped. */
function field(o: Record<string, unknown> | undefined, k: string, file: string, path: string, kind: 'int' | 'num' | 'bool' | 'str'): number | boolean | string | null {
  if (!o || o[k] === undefined || o[k] === null) return null;
  const v = o[k];
  const ok =
    kind === 'int' ? typeof v === 'number' && Number.isSafeInteger(v) && v > 0 : kind === 'num' ? typeof v === 'number' && Number.isFinite(v) && v > 0 : kind === 'bool' ? typeof v === 'boolean' : typeof v === 'string';
  if (!ok) throw new ImportError(`${file}: ${path}.${k}: expected ${kind === 'int' ? 'a positive integer' : kind === 'num' ? 'a positive number' : kind === 'bool' ? 'true/false' : 'a string'}, got ${typeName(v)} ${showValue(v)}`);
  return v as number | boolean | string;
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

/**
 * Reads an LLMServingSim run (directory or requests.jsonl path) into an ObservedRun.
 * @throws ImportError naming FILE:LINE (requests) or FILE: field (meta.json / config.json).
 */
export function readLlmServingSimRun(path: string): ObservedRun {
  const file = llmServingSimRequestsFile(path);
  const requests = parseLlmServingSimRequests(readFileSync(file, 'utf8'), file);
  const dir = dirname(file);
  const files = [file];
  const engine: ObservedEngine = unknownEngine();
  let model: string | null = null;
  let gpu: string | null = null;
  let gpus: number | null = null;
  let version: string | null = null;
  let date: string | null = null;
  const extra: Record<string, unknown> = {};
  const metaFile = join(dir, 'meta.json');
  if (existsSync(metaFile)) {
    files.push(metaFile);
    const m = obj(readJson(metaFile));
    if (!m) throw new ImportError(`${metaFile}: expected a JSON object`);
    model = field(m, 'model', metaFile, '(root)', 'str') as string | null;
    version = field(m, 'vllm_version', metaFile, '(root)', 'str') as string | null;
    date = field(m, 'started_at', metaFile, '(root)', 'str') as string | null;
    const ek = obj(m.engine_kwargs);
    engine.tensorParallel = field(ek, 'tensor_parallel_size', metaFile, 'engine_kwargs', 'int') as number | null;
    engine.dataParallel = field(ek, 'data_parallel_size', metaFile, 'engine_kwargs', 'int') as number | null;
    engine.expertParallel = field(ek, 'enable_expert_parallel', metaFile, 'engine_kwargs', 'bool') as boolean | null;
    engine.maxNumSeqs = field(ek, 'max_num_seqs', metaFile, 'engine_kwargs', 'int') as number | null;
    engine.maxNumBatchedTokens = field(ek, 'max_num_batched_tokens', metaFile, 'engine_kwargs', 'int') as number | null;
    engine.maxModelLen = field(ek, 'max_model_len', metaFile, 'engine_kwargs', 'int') as number | null;
    const kv = obj(m.kv_cache);
    const blocks = field(kv, 'num_gpu_blocks', metaFile, 'kv_cache', 'int') as number | null;
    engine.blockSize = field(kv, 'block_size', metaFile, 'kv_cache', 'int') as number | null;
    if (blocks !== null) engine.kvCapacityTokens = blocks * (engine.blockSize ?? 16);
    engine.gpuMemoryUtilization = field(kv, 'gpu_memory_utilization', metaFile, 'kv_cache', 'num') as number | null;
    engine.enablePrefixCaching = field(kv, 'enable_prefix_caching', metaFile, 'kv_cache', 'bool') as boolean | null;
    const hw = obj(m.hardware);
    gpu = field(hw, 'device_name', metaFile, 'hardware', 'str') as string | null;
    const dev = field(hw, 'device_total_memory_bytes', metaFile, 'hardware', 'int') as number | null;
    if (dev !== null) extra.device_total_memory_bytes = dev;
    if (m.dataset_path !== undefined) extra.dataset_path = m.dataset_path;
  }
  const cfgFile = [join(dir, 'config.json'), join(dirname(dir), 'config.json')].find((f) => existsSync(f));
  if (cfgFile) {
    files.push(cfgFile);
    const c = obj(readJson(cfgFile));
    const node0 = c && Array.isArray(c.nodes) && c.nodes.length ? obj(c.nodes[0]) : undefined;
    const insts = node0 && Array.isArray(node0.instances) ? (node0.instances as unknown[]) : [];
    const inst = insts.length ? obj(insts[0]) : undefined;
    if (!inst) throw new ImportError(`${cfgFile}: nodes.0.instances.0: expected LLMServingSim's cluster config (nodes[].instances[])`);
    gpu ??= field(inst, 'hardware', cfgFile, 'nodes.0.instances.0', 'str') as string | null;
    const tp = field(inst, 'tp_size', cfgFile, 'nodes.0.instances.0', 'int') as number | null;
    engine.tensorParallel ??= tp;
    gpus = field(inst, 'num_npus', cfgFile, 'nodes.0.instances.0', 'int') as number | null;
    const ep = field(inst, 'ep_size', cfgFile, 'nodes.0.instances.0', 'int') as number | null;
    if (ep !== null) extra.ep_size = ep;
    const n = field(node0, 'num_instances', cfgFile, 'nodes.0', 'int') as number | null;
    if (n !== null) extra.num_instances = n;
  }
  gpus ??= engine.tensorParallel;
  return {
    format: 'llmservingsim',
    files,
    model,
    gpu,
    gpus,
    vllmVersion: version,
    date,
    entry: 'engine',
    arrivals: 'exact',
    requestRate: null,
    burstiness: 1,
    maxConcurrency: null,
    numRequests: requests.length,
    requests,
    aggregates: null,
    totals: null,
    engine,
    extra,
  };
}
