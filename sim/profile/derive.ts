/**
 * `kvlab profile derive`: a Profile (engine/types.ts) for a GPU and model without measurements,
 * from datasheet specs (sim/profile/specs.ts), memory arithmetic (sim/profile/memory.ts) and the
 * roofline with learned efficiencies (sim/profile/roofline.ts, engine/profiles/roofline/coefficients.json).
 *
 * Mapping onto the step model (engine/costmodel.ts `stepMs`):
 *   knots/values  token curve = layers × (GEMMs + MoE experts + elementwise + all-reduce/all-to-all)(T)
 *   fixedMs       per-step overhead + layers × layerUs + lm_head weight read
 *   decodeSeqMs   per sequence: lm_head compute for its token + seqMs + layers × attention seqUs
 *   prefillSeqMs  per prefill chunk: the same sampled-token cost + layers × attention kernel floor
 *   attnTokens    so that slopeLast · Σc(s + c/2) / attnTokens = layers · 4·(H/TP)·dh · Σc(s + c/2) / (P·ηattn)
 *   kvReadMsPerToken = layers · 2·max(1, Hkv/TP)·dh·dtype / (BW·ηkv)
 *   apiMs, frontendMsPerRequest  of the entry point (OpenAI server or in-process engine)
 * Engine defaults follow vLLM (vllm/engine/arg_utils.py `get_batch_defaults`, read at a 2026 main
 * commit): the OpenAI server on GPUs with >= 70 GiB that are not A100 uses max_num_batched_tokens
 * 8192 and max_num_seqs 1024, every other GPU 2048 and 256; an in-process engine (AsyncLLM) takes
 * SchedulerConfig's 2048 and 128. max_model_len defaults to the model's max_position_embeddings.
 */
import type { EngineSettings, Profile, StepModel, TermProvenance } from '../../engine/types.js';
import { kvCapacityFromMemory, GPU_MEMORY_UTILIZATION } from './memory.js';
import { collectiveClass, collectiveModel, gemmEfficiency, gemmMs, loadRoofline, tokenCurveMs, type RooflineCoefficients } from './roofline.js';
import { flopsPerToken, kvBytesPerToken, modelSpecOf, paramCounts, type GpuSpec, type ModelShape } from './specs.js';

/** How requests reach the engine: vLLM's OpenAI server (HTTP) or an in-process engine. */
export type EntryPoint = 'openai-server' | 'engine';

/** Knots of derived token curves, tokens per step. */
export const DERIVE_KNOTS: readonly number[] = [0, 1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384];

/** Inputs of deriveProfileFromSpecs. */
export interface DeriveInput {
  gpu: GpuSpec;
  model: ModelShape;
  /** tensor-parallel size = GPUs per instance (default 1). */
  tp?: number;
  /** expert-parallel size for MoE (default 1). */
  ep?: number;
  /**
   * data-parallel ranks of a MoE model with expert parallelism across them (vLLM DP + EP): they
   * step in lockstep, so the instance is the whole DP group (settings × dp, see rooflineStep).
   */
  dp?: number;
  /** profile name (default `<gpu>x<tp>-<model>`, lower case). */
  name?: string;
  entry?: EntryPoint;
  /** overrides of the vLLM defaults. */
  engine?: Partial<EngineSettings>;
  gpuMemoryUtilization?: number;
  coefficients?: RooflineCoefficients;
}

/** vLLM's default max_num_batched_tokens / max_num_seqs for a GPU and entry point (see module docstring). */
export function vllmBatchDefaults(gpu: GpuSpec, entry: EntryPoint): { maxNumBatchedTokens: number; maxNumSeqs: number } {
  if (entry === 'engine') return { maxNumBatchedTokens: 2048, maxNumSeqs: 128 };
  const big = gpu.memGiB >= 70 && !/a100/i.test(gpu.id + gpu.name);
  return big ? { maxNumBatchedTokens: 8192, maxNumSeqs: 1024 } : { maxNumBatchedTokens: 2048, maxNumSeqs: 256 };
}

const sig = (x: number, d = 6): number => (x === 0 || !Number.isFinite(x) ? x : Number(x.toPrecision(d)));

/** A default profile name: rtx4090x1-llama-3.1-8b. */
export function defaultProfileName(gpu: GpuSpec, model: ModelShape, tp: number): string {
  return `${gpu.id}x${tp}-${model.name.toLowerCase().replace(/[^a-z0-9.]+/g, '-')}`;
}

/**
 * The step model of (gpu, model, tp, ep) from the roofline.
 * @returns the StepModel (apiMs / frontendMsPerRequest of `entry`) and per-term provenance
 */
export function rooflineStep(gpu: GpuSpec, model: ModelShape, tp: number, ep: number, entry: EntryPoint, c: RooflineCoefficients, dp = 1): { step: StepModel; provenance: Record<string, TermProvenance> } {
  const lay = { tp, ep, dp };
  const values = DERIVE_KNOTS.map((T) => (T === 0 ? 0 : tokenCurveMs(model, gpu, lay, T, c)));
  const { eff, source: effKind } = gemmEfficiency(c, gpu);
  const p = paramCounts(model);
  const lmW = (model.vocab * model.hidden) / tp;
  const lmRead = gemmMs(lmW, 1, model.dtypeBytes, gpu, eff);
  const lmPerToken = ((2 * lmW) / (gpu.peakTflopsBf16 * 1e12 * eff.etaCompute)) * 1e3;
  const L = model.layers;
  const fixedMs = c.overhead.stepMs + (L * c.overhead.layerUs) / 1000 + lmRead;
  // lockstep data-parallel ranks share a step's sequences: per-sequence and attention work / dp
  const decodeSeqMs = (lmPerToken + c.overhead.seqMs + (L * c.attention.seqUs) / 1000) / dp;
  const prefillSeqMs = (lmPerToken + c.overhead.seqMs + (L * c.attention.kernelUs) / 1000) / dp;
  const n = DERIVE_KNOTS.length;
  const slopeLast = (values[n - 1]! - values[n - 2]!) / (DERIVE_KNOTS[n - 1]! - DERIVE_KNOTS[n - 2]!);
  const headsPerGpu = model.heads / tp;
  const msPerUnit = ((L * 4 * headsPerGpu * model.headDim) / (gpu.peakTflopsBf16 * 1e12 * c.attention.prefillEta)) * 1e3 / dp;
  const kvHeadsPerGpu = Math.max(1, model.kvHeads / tp);
  const kvRead = ((L * 2 * kvHeadsPerGpu * model.headDim * model.dtypeBytes) / (gpu.memBandwidthGBs * 1e9 * c.attention.decodeEtaMem)) * 1e3 / dp;
  const api = c.api[entry];
  const step: StepModel = {
    fixedMs: sig(fixedMs),
    prefillSeqMs: sig(prefillSeqMs),
    decodeSeqMs: sig(decodeSeqMs),
    knots: [...DERIVE_KNOTS],
    values: values.map((v) => sig(v)),
    attnTokens: sig(slopeLast / msPerUnit),
    kvReadMsPerToken: sig(kvRead),
    apiMs: api.apiMs,
    frontendMsPerRequest: api.frontendMsPerRequest,
  };
  const effSrc =
    effKind === 'learned'
      ? `GEMM efficiency fitted on Vidur's ${gpu.id} linear-layer tables`
      : effKind === 'spec'
        ? `GEMM ηmem/ηcompute measured on this GPU: ${gpu.measuredGemm!.source}`
        : `GEMM efficiency = mean of the A100 and H100 fits (no op-level data for ${gpu.id})`;
  const coll = collectiveModel(c, gpu);
  const provenance: Record<string, TermProvenance> = {
    'step.knots/values': {
      kind: 'derived',
      source:
        `roofline per layer × ${L}: GEMMs at ${gpu.peakTflopsBf16} TFLOP/s × ηcompute ${eff.etaCompute} and ${gpu.memBandwidthGBs} GB/s × ηmem ${eff.etaMem} (${effSrc}); ` +
        `elementwise at ηmem ${c.elementwise.etaMem}` +
        (tp > 1 || ep > 1 ? `; ${collectiveClass(gpu)} collectives α ${coll.alphaUs} µs, ηbus ${coll.etaBus} of ${gpu.interconnect.linkGBs} GB/s` : '') +
        (model.moe ? `; MoE: ${model.moe.experts} experts, top-${model.moe.topK}, EP ${ep}, distinct experts read per step` : ''),
    },
    'step.fixedMs': { kind: 'derived', source: `assumed overhead ${c.overhead.stepMs} ms/step + ${c.overhead.layerUs} µs/layer, plus the lm_head weight read (${(lmW * model.dtypeBytes / 1e9).toFixed(2)} GB per GPU)` },
    'step.decodeSeqMs': { kind: 'derived', source: `lm_head compute per token + ${c.overhead.seqMs} ms/sequence (assumed) + ${c.attention.seqUs} µs/layer decode attention` },
    'step.prefillSeqMs': { kind: 'derived', source: `lm_head compute for the sampled token + ${c.attention.kernelUs} µs/layer attention kernel floor (LLMServingSim H100 table)` },
    'step.attnTokens': { kind: 'derived', source: `prefill attention 4·(H/TP)·dh FLOPs per unit at ηattn ${c.attention.prefillEta} (assumed from the FlashAttention papers)` },
    'step.kvReadMsPerToken': { kind: 'derived', source: `KV bytes per token per GPU / (${gpu.memBandwidthGBs} GB/s × ${c.attention.decodeEtaMem})` },
    'step.apiMs': { kind: entry === 'engine' ? 'assumed' : 'measured', source: String((c.provenance as Record<string, unknown>)[`api.${entry}`] ?? entry) },
  };
  void p;
  void flopsPerToken;
  return { step, provenance };
}

/**
 * Derives a complete profile (see the module docstring).
 * @throws Error when the model's weights do not fit in the GPUs' memory (KV capacity 0).
 */
export function deriveProfileFromSpecs(inp: DeriveInput): Profile {
  const tp = inp.tp ?? 1;
  const ep = inp.ep ?? 1;
  const dp = inp.dp ?? 1;
  if (dp > 1 && !inp.model.moe) throw new Error('profile derive: --dp is for MoE models with expert parallelism across the ranks (dense DP ranks are separate instances)');
  const entry = inp.entry ?? 'openai-server';
  const c = inp.coefficients ?? loadRoofline();
  const gpu = inp.gpu;
  const model = inp.model;
  const def = vllmBatchDefaults(gpu, entry);
  const maxModelLen = inp.engine?.maxModelLen ?? model.maxPositionEmbeddings;
  const maxNumSeqs = inp.engine?.maxNumSeqs ?? def.maxNumSeqs;
  let maxNumBatchedTokens = inp.engine?.maxNumBatchedTokens ?? def.maxNumBatchedTokens;
  if (inp.engine?.maxNumBatchedTokens === undefined) maxNumBatchedTokens = Math.min(maxNumBatchedTokens, maxNumSeqs * maxModelLen);
  const blockSizeTokens = inp.engine?.blockSizeTokens ?? 16;
  const util = inp.gpuMemoryUtilization ?? GPU_MEMORY_UTILIZATION;
  const cap = kvCapacityFromMemory(model, gpu, { tp, ep }, { maxNumBatchedTokens, maxNumSeqs, blockSizeTokens }, util);
  const kvCapacityTokens = inp.engine?.kvCapacityTokens ?? cap.tokens * dp;
  if (!(kvCapacityTokens > 0)) throw new Error(`profile derive: ${model.name} does not fit on ${tp} × ${gpu.name} (${cap.text})`);
  const { step, provenance } = rooflineStep(gpu, model, tp, ep, entry, c, dp);
  const name = inp.name ?? defaultProfileName(gpu, model, tp);
  const kvb = kvBytesPerToken(model);
  // a lockstep DP group: each rank schedules its own budget and sequences; one request's chunk
  // stays within one rank's budget
  const engine: EngineSettings = {
    maxNumBatchedTokens: maxNumBatchedTokens * dp,
    maxNumSeqs: maxNumSeqs * dp,
    maxModelLen,
    kvCapacityTokens,
    blockSizeTokens,
    longPrefillTokenThreshold: inp.engine?.longPrefillTokenThreshold ?? (dp > 1 ? maxNumBatchedTokens : 0),
    asyncScheduling: inp.engine?.asyncScheduling ?? true,
  };
  provenance['engine.kvCapacityTokens'] =
    inp.engine?.kvCapacityTokens !== undefined ? { kind: 'measured', source: 'stated by the run (num_gpu_blocks × block_size)' } : { kind: 'derived', source: cap.text };
  provenance['engine.maxNumBatchedTokens/maxNumSeqs'] = {
    kind: inp.engine?.maxNumBatchedTokens !== undefined || inp.engine?.maxNumSeqs !== undefined ? 'measured' : 'derived',
    source: `vLLM defaults for ${gpu.id} and the ${entry} entry point (vllm/engine/arg_utils.py get_batch_defaults) unless the run states them`,
  };
  const fl = flopsPerToken(model);
  return {
    name,
    derived: true,
    description:
      `DERIVED (roofline, not measured): ${model.name} ${model.dtypeBytes === 2 ? 'bf16' : `${model.dtypeBytes}-byte`} on ${tp * dp}× ${gpu.name} (TP ${tp}${model.moe ? `, EP ${ep}` : ''}${dp > 1 ? `, DP ${dp} in lockstep as one instance: budget, sequences and KV × ${dp}` : ''}), ` +
      `vLLM V1 (${entry === 'engine' ? 'in-process engine' : 'OpenAI server'}, async scheduling). ${(fl.linear / 1e9).toFixed(2)} GFLOP per token of linear layers, ` +
      `${kvb.toLocaleString('en-US')} B of KV per token. Step model from kvlab profile derive (sim/profile/derive.ts) with the efficiencies of ` +
      `engine/profiles/roofline/coefficients.json; every term's source is in provenance. ${cap.text}`,
    source: `kvlab profile derive --gpu ${gpu.id} --model ${model.hfId ?? model.name} --tp ${tp}${ep > 1 ? ` --ep ${ep}` : ''}${dp > 1 ? ` --dp ${dp}` : ''}; GPU: ${gpu.source}; model: ${model.source}`,
    model: modelSpecOf(model),
    hardware: { gpu: gpu.name, gpus: tp * dp, peakTflops: gpu.peakTflopsBf16, memBandwidthGBs: gpu.memBandwidthGBs, memGiB: gpu.memGiB },
    engine,
    step,
    kvLoad: { fixedMs: 12.46, msPerGB: 2764.34, bytesPerToken: Math.round(kvb / tp) },
    coldStartMs: 0,
    fit: { derived: true, gpu: gpu.id, tp, ep, dp, entry },
    provenance,
  };
}
