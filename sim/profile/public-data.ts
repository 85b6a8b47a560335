/**
 * Readers of the public op-level and end-to-end measurements in ../shared/data/profiles/public/
 * (each folder's SOURCE.md gives repository, commit, license and caveats). CSVs are read with
 * csv-parse; a missing column or a non-numeric cell is an error naming FILE:LINE and the column.
 *
 * - Vidur (microsoft/vidur @7d47513) `compute/<gpu>/meta-llama/<model>/mlp.csv`: per-layer
 *   median times (ms) of attn_pre_proj (QKV), attn_post_proj (O), mlp_up_proj (gate_up),
 *   mlp_down_proj (down), norms, rope, activation, residual add, vs num_tokens and TP.
 * - Vidur `network/<gpu>_dgx/all_reduce.csv`: NCCL all-reduce median (ms) vs bytes and world size.
 * - LLMServingSim v0 profiler (casys-kaist/LLMServingSim @5daddb2) H100 `layers.csv`: per-layer ns.
 * - Splitwise (Mutinifni/splitwise-sim @8f99e7d) `perf_model.csv`: static-batch prompt_time /
 *   token_time (ms) of Llama-2-70B on DGX-A100/H100, TP 2/4/8.
 * - Argonne LLM-Inference-Bench (@4211f5d) `All_results.csv`: static-batch latency (s) of
 *   `batch` requests with input = output = L tokens, vLLM, A100/H100, TP 1/2/4.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse } from 'csv-parse/sync';
import { repoRoot } from '../profiles.js';

/** ../shared/data/profiles/public relative to the repository (null when absent). */
export function publicDataDir(): string | null {
  const d = resolve(repoRoot(), '..', 'shared', 'data', 'profiles', 'public');
  return existsSync(d) ? d : null;
}

/**
 * Reads a CSV file into records (header row = keys). `relax`: accept rows with fewer or more
 * columns than the header (Argonne's TTFT file has some).
 * @throws Error naming the file.
 */
export function readCsv(file: string, relax = false): Record<string, string>[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message}`);
  }
  try {
    return parse(text, { columns: true, skip_empty_lines: true, trim: true, relax_column_count: relax }) as Record<string, string>[];
  } catch (e) {
    throw new Error(`${file}: not valid CSV: ${(e as Error).message}`);
  }
}

/** A numeric cell; @throws Error `FILE:LINE: column "c": ...` (line = data row + 1 for the header). */
export function cell(rec: Record<string, string>, col: string, file: string, row: number): number {
  const v = rec[col];
  if (v === undefined) throw new Error(`${file}:${row + 2}: missing column "${col}"`);
  const n = Number(v);
  if (v === '' || !Number.isFinite(n)) throw new Error(`${file}:${row + 2}: column "${col}": expected a number, got "${v}"`);
  return n;
}

/** One Vidur mlp.csv row (ms per layer, medians). */
export interface VidurMlpRow {
  tp: number;
  tokens: number;
  /** n_embd, n_expanded_embd, n_head, n_kv_head, vocab_size of the profiled model. */
  shape: { hidden: number; intermediate: number; heads: number; kvHeads: number; vocab: number };
  qkv: number;
  o: number;
  gateUp: number;
  down: number;
  /** norms + rope + activation + residual add. */
  elementwise: number;
}

/** Reads a Vidur mlp.csv. */
export function readVidurMlp(file: string): VidurMlpRow[] {
  const recs = readCsv(file);
  return recs.map((r, i) => {
    const c = (k: string) => cell(r, k, file, i);
    const med = (op: string) => c(`time_stats.${op}.median`);
    return {
      tp: c('num_tensor_parallel_workers'),
      tokens: c('num_tokens'),
      shape: { hidden: c('n_embd'), intermediate: c('n_expanded_embd'), heads: c('n_head'), kvHeads: c('n_kv_head'), vocab: c('vocab_size') },
      qkv: med('attn_pre_proj'),
      o: med('attn_post_proj'),
      gateUp: med('mlp_up_proj'),
      down: med('mlp_down_proj'),
      elementwise: med('input_layernorm') + med('post_attention_layernorm') + med('attn_rope') + med('mlp_act') + med('add'),
    };
  });
}

/** The Vidur mlp.csv files present: [gpu, model folder, path]. */
export function vidurMlpFiles(dir: string): { gpu: 'a100' | 'h100'; model: string; file: string }[] {
  const out: { gpu: 'a100' | 'h100'; model: string; file: string }[] = [];
  const models: Record<'a100' | 'h100', string[]> = { a100: ['Meta-Llama-3-8B', 'Meta-Llama-3-70B', 'Llama-2-70b-hf'], h100: ['Llama-2-7b-hf', 'Llama-2-70b-hf'] };
  for (const gpu of ['a100', 'h100'] as const) {
    for (const m of models[gpu]) {
      const f = join(dir, 'vidur_profiling_mlp_allreduce', 'compute', gpu, 'meta-llama', m, 'mlp.csv');
      if (existsSync(f)) out.push({ gpu, model: m, file: f });
    }
  }
  return out;
}

/** One all-reduce measurement. */
export interface AllReduceRow {
  workers: number;
  bytes: number;
  ms: number;
}

/** Reads Vidur's all_reduce.csv, keeping intra-node rows (devices_per_node >= num_workers). */
export function readVidurAllReduce(file: string): AllReduceRow[] {
  const recs = readCsv(file);
  const out: AllReduceRow[] = [];
  recs.forEach((r, i) => {
    const w = cell(r, 'num_workers', file, i);
    const dpn = cell(r, 'devices_per_node', file, i);
    if (dpn < w) return;
    out.push({ workers: w, bytes: cell(r, 'size', file, i), ms: cell(r, 'time_stats.all_reduce.median', file, i) });
  });
  return out;
}

/** One LLMServingSim layers.csv row aggregated per input size (ms per layer). */
export interface LayerProfileRow {
  tokens: number;
  tp: number;
  /** q + k + v + o + gate + up + down projections. */
  linear: number;
  lmHead: number;
}

/** Reads an LLMServingSim v0 layers.csv (latency in ns) and sums the linear projections per token count. */
export function readLlmServingSimLayers(file: string): LayerProfileRow[] {
  const recs = readCsv(file);
  const by = new Map<number, LayerProfileRow>();
  const lin = new Set(['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']);
  recs.forEach((r, i) => {
    const T = cell(r, 'input', file, i);
    const ms = cell(r, 'latency(ns)', file, i) / 1e6;
    const tp = cell(r, 'tp_size', file, i);
    let e = by.get(T);
    if (!e) by.set(T, (e = { tokens: T, tp, linear: 0, lmHead: 0 }));
    const name = r.layer_name ?? '';
    if (lin.has(name)) e.linear += ms;
    else if (name === 'lm_head') e.lmHead += ms;
  });
  return [...by.values()].sort((a, b) => a.tokens - b.tokens);
}

/** One Splitwise perf_model.csv configuration (medians of its repetitions). */
export interface SplitwiseRow {
  hardware: string;
  tp: number;
  promptTokens: number;
  batch: number;
  outputTokens: number;
  /** prefill of the whole batch, ms. */
  promptMs: number;
  /** mean decode step, ms. */
  tokenMs: number;
}

/** Reads Splitwise's perf_model.csv (llama2-70b rows), one row per configuration (median over repetitions). */
export function readSplitwise(file: string): SplitwiseRow[] {
  const recs = readCsv(file);
  const groups = new Map<string, { row: Omit<SplitwiseRow, 'promptMs' | 'tokenMs'>; p: number[]; t: number[] }>();
  recs.forEach((r, i) => {
    if (r.model !== 'llama2-70b') return;
    const row = { hardware: r.hardware ?? '', tp: cell(r, 'tensor_parallel', file, i), promptTokens: cell(r, 'prompt_size', file, i), batch: cell(r, 'batch_size', file, i), outputTokens: cell(r, 'token_size', file, i) };
    const k = `${row.hardware}|${row.tp}|${row.promptTokens}|${row.batch}|${row.outputTokens}`;
    let g = groups.get(k);
    if (!g) groups.set(k, (g = { row, p: [], t: [] }));
    g.p.push(cell(r, 'prompt_time', file, i));
    g.t.push(cell(r, 'token_time', file, i));
  });
  const med = (v: number[]) => {
    const s = [...v].sort((a, b) => a - b);
    return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  return [...groups.values()].map((g) => ({ ...g.row, promptMs: med(g.p), tokenMs: med(g.t) }));
}

/** One Argonne static-batch vLLM measurement. */
export interface ArgonneRow {
  hardware: string;
  gpus: number;
  model: string;
  /** input = output tokens. */
  length: number;
  batch: number;
  /** whole batch, s. */
  latencyS: number;
}

/** Reads Argonne's All_results.csv (vLLM rows only). */
export function readArgonne(file: string): ArgonneRow[] {
  const recs = readCsv(file);
  const out: ArgonneRow[] = [];
  recs.forEach((r, i) => {
    if (r.Framework !== 'vLLM') return;
    out.push({
      hardware: r.Hardware ?? '',
      gpus: cell(r, 'Num of Hardware', file, i),
      model: r.Model ?? '',
      length: cell(r, 'Input Output Length', file, i),
      batch: cell(r, 'Batch Size', file, i),
      latencyS: cell(r, 'Latency', file, i),
    });
  });
  return out;
}
