/**
 * KV-cache capacity of a vLLM instance from memory arithmetic (vLLM V1 `determine_available_memory`:
 * KV = total × gpu_memory_utilization − weights − peak activations − non-torch memory, per GPU).
 *
 * Per GPU (bytes):
 *   budget      = memGiB × 2^30 × gpu_memory_utilization (vLLM default 0.9)
 *   weights     = (layers × (attention/TP + MLP/(TP or EP)) + (embedding + lm_head)/TP) × dtype
 *   activations = max_num_batched_tokens × (2·hidden + (q+k+v)/TP + 3·MLP-intermediate/TP) × dtype
 *                 (the profiling forward pass: hidden + residual, QKV, gate_up + its activation)
 *   sampler     = 3 × max_num_seqs × vocab × 4 B (fp32 logits, probabilities and a sort buffer of
 *                 the dummy sampler run)
 *   non-torch   = 1 GiB (CUDA context, cuBLAS/NCCL workspaces, CUDA graphs)
 *   KV per GPU  = budget − weights − activations − sampler − non-torch
 *   tokens      = KV per GPU / (kvBytesPerToken × kv-heads-per-GPU / kv-heads), whole blocks.
 * Check (test/profile-derive.test.ts): Llama-3.1-8B on one RTX 4090 (24 GiB), max_num_batched_tokens
 * 2048, max_num_seqs 256 → 2,589 blocks of 16; vLLM 0.19 resolved 2,588 (LLMServingSim meta.json).
 */
import { kvBytesPerToken, paramCounts, type GpuSpec, type ModelShape } from './specs.js';

/** vLLM's default `gpu_memory_utilization`. */
export const GPU_MEMORY_UTILIZATION = 0.9;
/** Per-GPU memory outside torch's allocator (CUDA context, workspaces, CUDA graphs), bytes. */
export const NON_TORCH_BYTES = 2 ** 30;
/** Copies of the [max_num_seqs, vocab] fp32 logits the dummy sampler run holds at its peak. */
export const SAMPLER_LOGIT_COPIES = 3;

/** Parallel layout of one instance. */
export interface Parallelism {
  /** tensor-parallel size (GPUs sharing every layer). */
  tp: number;
  /** expert-parallel size for MoE experts (GPUs the experts are spread over; 1 = none). */
  ep: number;
}

/** KV capacity result with its arithmetic spelled out (for the profile description). */
export interface KvCapacityResult {
  tokens: number;
  blocks: number;
  perGpu: { budget: number; weights: number; activations: number; sampler: number; nonTorch: number; kv: number };
  text: string;
}

/** Weight bytes held by one GPU. */
export function weightBytesPerGpu(m: ModelShape, par: Parallelism): number {
  const p = paramCounts(m);
  const mlpShard = m.moe ? par.ep * par.tp : par.tp;
  const perLayer = p.attnPerLayer / par.tp + p.mlpPerLayer / mlpShard;
  return (m.layers * perLayer + (p.embedding + p.lmHead) / par.tp) * m.dtypeBytes;
}

/** Peak activation bytes per batched token on one GPU during the profiling forward pass. */
export function activationBytesPerToken(m: ModelShape, tp: number): number {
  const qkv = (m.heads + 2 * m.kvHeads) * m.headDim;
  const mlp = m.moe ? m.moe.topK * m.moe.expertIntermediate + m.moe.sharedIntermediate : m.intermediate;
  return (2 * m.hidden + qkv / tp + (3 * mlp) / tp) * m.dtypeBytes;
}

/**
 * KV capacity of one instance (see the module docstring).
 * @param util gpu_memory_utilization (default 0.9)
 * @returns tokens (whole blocks) and the arithmetic; tokens = 0 when the weights do not fit
 */
export function kvCapacityFromMemory(
  m: ModelShape,
  gpu: GpuSpec,
  par: Parallelism,
  engine: { maxNumBatchedTokens: number; maxNumSeqs: number; blockSizeTokens: number },
  util = GPU_MEMORY_UTILIZATION,
): KvCapacityResult {
  const budget = gpu.memGiB * 2 ** 30 * util;
  const weights = weightBytesPerGpu(m, par);
  const activations = engine.maxNumBatchedTokens * activationBytesPerToken(m, par.tp);
  const sampler = SAMPLER_LOGIT_COPIES * engine.maxNumSeqs * m.vocab * 4;
  const kv = budget - weights - activations - sampler - NON_TORCH_BYTES;
  const kvHeadsPerGpu = Math.max(1, m.kvHeads / par.tp);
  const bytesPerTokenPerGpu = (kvBytesPerToken(m) * kvHeadsPerGpu) / m.kvHeads;
  const blocks = Math.max(0, Math.floor(kv / bytesPerTokenPerGpu / engine.blockSizeTokens));
  const tokens = blocks * engine.blockSizeTokens;
  const gb = (x: number): string => `${(x / 1e9).toFixed(2)} GB`;
  const text =
    `KV capacity per GPU = ${gpu.memGiB} GiB × gpu_memory_utilization ${util} = ${gb(budget)} − weights ${gb(weights)} (TP ${par.tp}${m.moe ? `, EP ${par.ep}` : ''})` +
    ` − activations ${engine.maxNumBatchedTokens} tokens × ${Math.round(activationBytesPerToken(m, par.tp) / 1024)} KiB = ${gb(activations)}` +
    ` − sampler ${SAMPLER_LOGIT_COPIES} × ${engine.maxNumSeqs} × ${m.vocab} × 4 B = ${gb(sampler)} − non-torch 1 GiB = ${gb(kv)}` +
    ` → / ${Math.round(bytesPerTokenPerGpu).toLocaleString('en-US')} B per token per GPU = ${tokens.toLocaleString('en-US')} tokens (${blocks} blocks of ${engine.blockSizeTokens}).`;
  return { tokens, blocks, perGpu: { budget, weights, activations, sampler, nonTorch: NON_TORCH_BYTES, kv }, text };
}
