/**
 * Roofline timing of one vLLM engine step, by operator, with efficiency factors learned from
 * measured op-level profiles (sim/profile/learn.ts writes them to engine/profiles/roofline/coefficients.json).
 *
 * Per layer and GPU, for a step of T new tokens:
 *   GEMM g (QKV, O, gate_up, down):  kernelUs + smax_p( W_g·dtype / (BW·ηmem), 2·W_g·T / (P·ηcompute) )
 *     with smax_p(a, b) = (a^p + b^p)^(1/p) (a smooth roofline corner; p learned)
 *   MoE experts: weights of the distinct experts the T·topK routed tokens touch,
 *     E_gpu·(1 − (1 − topK/E)^T), and 2·T·topK·3·d·I_expert / EP FLOPs
 *   elementwise (norms, rope, activation, residual): ewKernelUs + T·bytes_ew / (BW·ηew),
 *     bytes_ew = (10·d + 3·I/TP + 2·(H + Hkv)·dh/TP)·dtype per token
 *   all-reduce (TP > 1; two per layer of T·d·dtype bytes): αUs + 2(n−1)/n · bytes / (link·ηbus)
 *   MoE expert parallelism (EP > 1; vLLM's allgather_reducescatter all2all): 2·αUs + 2·T·d·dtype·(EP−1)/EP / (link·ηbus)
 * Per step: lm_head (a GEMM on the S sampled tokens), attention (prefill FLOPs 4·H/TP·dh per unit
 * of Σ c·(s + c/2), at P·ηattn; decode KV reads at BW·ηkv plus attnSeqUs per sequence and layer),
 * and the engine's per-step overhead.
 * Units: bytes, s → ms in the returned values, T in tokens.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../profiles.js';
import type { GpuSpec, ModelShape } from './specs.js';

/** GEMM efficiency of one GPU family (learned). */
export interface GemmEfficiency {
  /** achieved fraction of HBM bandwidth when weight-read bound. */
  etaMem: number;
  /** achieved fraction of dense BF16 peak when compute bound. */
  etaCompute: number;
  /** fixed cost per GEMM kernel, µs. */
  kernelUs: number;
  /** roofline corner sharpness p of smax_p. */
  p: number;
}

/** All-reduce model of one interconnect class (learned or assumed). */
export interface CollectiveModel {
  /** latency per collective, µs. */
  alphaUs: number;
  /** achieved fraction of the datasheet per-direction link bandwidth. */
  etaBus: number;
}

/** Interconnect classes with their own collective model. */
export type CollectiveClass = 'nvlink' | 'pcie-p2p' | 'pcie-host' | 'infinity-fabric';

/** Engine overheads outside the kernels (per step, per sequence, API). */
export interface OverheadModel {
  /** per engine step (scheduler + input preparation + sampler launch not hidden by async scheduling), ms. */
  stepMs: number;
  /** per layer per step (attention kernels launched outside CUDA graphs), µs. */
  layerUs: number;
  /** per sequence in a step (scheduling, sampling, output processing), ms. */
  seqMs: number;
}

/** API overhead of an entry point (HTTP, tokenisation, detokenisation, streaming). */
export interface ApiModel {
  /** added to every TTFT (and E2E), ms. */
  apiMs: number;
  /** stagger of simultaneous requests reaching the engine core, ms. */
  frontendMsPerRequest: number;
}

/** Everything the roofline needs besides the GPU and model specs (engine/profiles/roofline/coefficients.json). */
export interface RooflineCoefficients {
  /** GEMM efficiency by GPU id, plus `default` for GPUs without op-level data. */
  gemm: Record<string, GemmEfficiency>;
  elementwise: { etaMem: number; kernelUs: number };
  collectives: Record<CollectiveClass, CollectiveModel>;
  /**
   * vLLM's custom all-reduce (vllm/distributed/device_communicators/custom_all_reduce.py: P2P over
   * NVLink, messages up to `maxBytes`), used instead of NCCL for decode-sized messages on NVLink.
   */
  customAllReduce: { alphaUs: number; etaBus: number; maxBytes: number };
  /** prefill FLOP efficiency, per-chunk per-layer kernel floor (µs), decode KV-read efficiency, per-sequence per-layer decode µs. */
  attention: { prefillEta: number; kernelUs: number; decodeEtaMem: number; seqUs: number };
  overhead: OverheadModel;
  api: { 'openai-server': ApiModel; engine: ApiModel };
  /** per coefficient: where it comes from (measured fit / assumption) and its fit error. */
  provenance: Record<string, unknown>;
}

let cached: RooflineCoefficients | null = null;

/** The committed coefficients (engine/profiles/roofline/coefficients.json). */
export function loadRoofline(): RooflineCoefficients {
  cached ??= JSON.parse(readFileSync(join(repoRoot(), 'engine', 'profiles', 'roofline', 'coefficients.json'), 'utf8')) as RooflineCoefficients;
  return cached;
}

/** Replaces the cached coefficients (learn step, tests). */
export function setRoofline(c: RooflineCoefficients | null): void {
  cached = c;
}

/** The collective class of a GPU's interconnect. */
export function collectiveClass(gpu: GpuSpec): CollectiveClass {
  if (gpu.interconnect.kind === 'nvlink') return 'nvlink';
  if (gpu.interconnect.kind === 'infinity-fabric') return 'infinity-fabric';
  return gpu.interconnect.p2p ? 'pcie-p2p' : 'pcie-host';
}

/** The collective model of a GPU: its own learned entry (by id), else its interconnect class. */
export function collectiveModel(c: RooflineCoefficients, gpu: GpuSpec): CollectiveModel {
  return (c.collectives as Record<string, CollectiveModel>)[gpu.id] ?? c.collectives[collectiveClass(gpu)];
}

/**
 * GEMM efficiency for a GPU: its own entry learned from the shared op-level tables; else the
 * GPU spec's cited measurement (ηmem, ηcompute) with the default corner and kernel cost; else
 * `default` (mean of the learned GPUs).
 */
export function gemmEfficiency(c: RooflineCoefficients, gpu: GpuSpec): { eff: GemmEfficiency; learned: boolean; source: 'learned' | 'spec' | 'default' } {
  const own = c.gemm[gpu.id];
  if (own) return { eff: own, learned: true, source: 'learned' };
  const d = c.gemm.default!;
  if (gpu.measuredGemm) return { eff: { ...d, etaMem: gpu.measuredGemm.etaMem, etaCompute: gpu.measuredGemm.etaCompute }, learned: true, source: 'spec' };
  return { eff: d, learned: false, source: 'default' };
}

/** smax_p(a, b) = (a^p + b^p)^(1/p). */
export function smax(a: number, b: number, p: number): number {
  if (a <= 0) return b;
  if (b <= 0) return a;
  const m = Math.max(a, b);
  return m * Math.pow(Math.pow(a / m, p) + Math.pow(b / m, p), 1 / p);
}

/** Time of one GEMM of `weights` parameters on `tokens` tokens, ms. */
export function gemmMs(weights: number, tokens: number, dtypeBytes: number, gpu: GpuSpec, e: GemmEfficiency): number {
  const mem = (weights * dtypeBytes) / (gpu.memBandwidthGBs * 1e9 * e.etaMem);
  const comp = (2 * weights * tokens) / (gpu.peakTflopsBf16 * 1e12 * e.etaCompute);
  return (e.kernelUs * 1e-6 + smax(mem, comp, e.p)) * 1e3;
}

/** The parallel layout a roofline step is computed for. */
export interface RooflineLayout {
  tp: number;
  /** expert-parallel size (MoE only; 1 = experts replicated per TP group). */
  ep: number;
  /**
   * data-parallel ranks stepping in lockstep (vLLM DP + EP for MoE: every forward pass runs on all
   * ranks at once, the experts see the tokens of every rank): the step's T tokens are split evenly
   * over the ranks for the dense layers, the experts process all T. Default 1.
   */
  dp?: number;
}

/** Per-layer linear GEMM shapes per GPU: [weights per GPU] of QKV, O, gate_up, down (dense MLP). */
export function denseGemms(m: ModelShape, tp: number): number[] {
  const q = m.heads * m.headDim;
  const kv = m.kvHeads * m.headDim;
  const g = [(m.hidden * (q + 2 * kv)) / tp, (q * m.hidden) / tp];
  if (!m.moe) g.push((2 * m.hidden * m.intermediate) / tp, (m.intermediate * m.hidden) / tp);
  return g;
}

/** Linear + elementwise + collective time of one layer for T tokens on one GPU, ms. */
export function layerMs(m: ModelShape, gpu: GpuSpec, lay: RooflineLayout, T: number, c: RooflineCoefficients): { gemm: number; moe: number; elementwise: number; collective: number } {
  const { eff } = gemmEfficiency(c, gpu);
  const Tr = T / (lay.dp ?? 1); // tokens per data-parallel rank (dense layers)
  let gemm = 0;
  for (const w of denseGemms(m, lay.tp)) gemm += gemmMs(w, Tr, m.dtypeBytes, gpu, eff);
  let moe = 0;
  let collective = 0;
  const coll = collectiveModel(c, gpu);
  const link = gpu.interconnect.linkGBs * 1e9 * coll.etaBus;
  if (m.moe) {
    const { experts, topK, expertIntermediate: ie, sharedIntermediate: is } = m.moe;
    const perGpu = experts / lay.ep;
    const hit = perGpu * (1 - Math.pow(1 - topK / experts, T));
    const expertW = (3 * m.hidden * ie) / lay.tp;
    const mem = (hit * expertW * m.dtypeBytes) / (gpu.memBandwidthGBs * 1e9 * eff.etaMem);
    const comp = (2 * T * topK * expertW) / lay.ep / (gpu.peakTflopsBf16 * 1e12 * eff.etaCompute);
    // grouped GEMMs: two kernels (gate_up, down) + router
    moe = (3 * eff.kernelUs * 1e-6 + smax(mem, comp, eff.p)) * 1e3 + gemmMs((m.hidden * m.moe.experts) / lay.tp, T, m.dtypeBytes, gpu, eff);
    if (is > 0) moe += gemmMs((2 * m.hidden * is) / lay.tp, T, m.dtypeBytes, gpu, eff) + gemmMs((is * m.hidden) / lay.tp, T, m.dtypeBytes, gpu, eff);
    if (lay.ep > 1) {
      // vLLM's default all2all backend (allgather_reducescatter): all-gather the hidden states of the
      // step's tokens before the experts and reduce-scatter the results after, once per token
      const bytes = (2 * T * m.hidden * m.dtypeBytes * (lay.ep - 1)) / lay.ep;
      collective += (2 * coll.alphaUs * 1e-6 + bytes / link) * 1e3;
    }
  }
  const mlpI = m.moe ? m.moe.topK * m.moe.expertIntermediate : m.intermediate;
  const ewBytes = (10 * m.hidden + (3 * mlpI) / lay.tp + (2 * (m.heads + m.kvHeads) * m.headDim) / lay.tp) * m.dtypeBytes * Tr;
  const elementwise = (c.elementwise.kernelUs * 1e-6 + ewBytes / (gpu.memBandwidthGBs * 1e9 * c.elementwise.etaMem)) * 1e3;
  if (lay.tp > 1) collective += 2 * allReduceMs(Tr * m.hidden * m.dtypeBytes, lay.tp, gpu, c);
  return { gemm, moe, elementwise, collective };
}

/**
 * One tensor-parallel all-reduce of `bytes` over `n` GPUs, ms: vLLM's custom all-reduce for
 * messages up to its limit on NVLink, else the NCCL ring model α + 2(n−1)/n · bytes / (link·ηbus).
 */
export function allReduceMs(bytes: number, n: number, gpu: GpuSpec, c: RooflineCoefficients): number {
  const coll = collectiveModel(c, gpu);
  const ring = (2 * (n - 1)) / n;
  const nccl = (coll.alphaUs * 1e-6 + (ring * bytes) / (gpu.interconnect.linkGBs * 1e9 * coll.etaBus)) * 1e3;
  const ca = c.customAllReduce;
  if (ca && gpu.interconnect.kind === 'nvlink' && bytes <= ca.maxBytes) {
    const custom = (ca.alphaUs * 1e-6 + (ring * bytes) / (gpu.interconnect.linkGBs * 1e9 * ca.etaBus)) * 1e3;
    return Math.min(nccl, custom);
  }
  return nccl;
}

/** Time of all layers for T tokens (the step model's token curve before per-step terms), ms. */
export function tokenCurveMs(m: ModelShape, gpu: GpuSpec, lay: RooflineLayout, T: number, c: RooflineCoefficients): number {
  const l = layerMs(m, gpu, lay, T, c);
  return m.layers * (l.gemm + l.moe + l.elementwise + l.collective);
}
