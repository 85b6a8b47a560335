/**
 * Learns the roofline efficiency factors (sim/profile/roofline.ts) from the public op-level
 * measurements (sim/profile/public-data.ts) and writes engine/profiles/roofline/coefficients.json
 * (`kvlab profile learn`). What is fitted on what, and what is checked on what:
 *
 * - GEMM (ηmem, ηcompute, kernelUs, p) per GPU: fitted on Vidur's linear-layer times (QKV, O,
 *   gate_up, down per layer, all TP and token counts; A100: Llama-3-8B/70B and Llama-2-70B, H100:
 *   Llama-2-7B/70B), minimising the squared log error; checked (held out) on LLMServingSim's H100
 *   per-layer tables of Llama-3.1-8B/70B (another profiler: HF modules, separate q/k/v kernels).
 *   `default` (GPUs without op-level data) = the mean of the A100 and H100 fits.
 * - elementwise (ηmem, kernelUs): fitted on Vidur's norm + rope + activation + residual times.
 * - NVLink all-reduce (α, ηbus) per GPU: fitted on Vidur's NCCL all-reduce tables (DGX A100/H100,
 *   2–8 GPUs, 2 KB–64 MB); `nvlink` = their mean.
 * - PCIe through host memory (GeForce, no P2P): derived from the measured RTX 5090 profile
 *   (engine/profiles/rtx5090x8-llama3-70b.json, TP 8): its last prefill slope minus the roofline
 *   GEMM + elementwise time per token is the all-reduce time per token → ηbus; its fixedMs minus
 *   the weight-read time spread over 2 × 80 all-reduces → α.
 * - PCIe with P2P, Infinity Fabric: no measurement; assumed (stated in provenance).
 * - attention prefill ηattn: fitted on LLMServingSim's H100 Llama-3.1-70B TP4 FLASH_ATTENTION
 *   prefill table; decode KV reads at the GEMM ηmem (its decode table is not vLLM's split-KV kernel
 *   and implies ~5 % of HBM bandwidth, so it is not used).
 * - overheads (per step, per layer, per sequence) and the API overhead: assumptions/measurements
 *   stated in provenance (the op-level tables exclude them).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Profile } from '../../engine/types.js';
import { repoRoot } from '../profiles.js';
import { readCsv, readLlmServingSimLayers, readVidurAllReduce, readVidurMlp, vidurMlpFiles } from './public-data.js';
import { gemmMs, setRoofline, tokenCurveMs, type CollectiveModel, type GemmEfficiency, type RooflineCoefficients } from './roofline.js';
import { flopsPerToken, loadGpu, loadModel, type GpuSpec } from './specs.js';

/** Nelder–Mead minimisation of f over a box (parameters clamped to [lo, hi]). */
export function nelderMead(f: (x: number[]) => number, x0: number[], lo: number[], hi: number[], iters = 400): number[] {
  const n = x0.length;
  const clamp = (x: number[]) => x.map((v, i) => Math.min(hi[i]!, Math.max(lo[i]!, v)));
  let simplex = [clamp(x0)];
  for (let i = 0; i < n; i++) {
    const x = [...x0];
    x[i] = x[i]! + 0.1 * (hi[i]! - lo[i]!);
    simplex.push(clamp(x));
  }
  let vals = simplex.map(f);
  for (let it = 0; it < iters; it++) {
    const order = vals.map((v, i) => i).sort((a, b) => vals[a]! - vals[b]!);
    simplex = order.map((i) => simplex[i]!);
    vals = order.map((i) => vals[i]!);
    const centroid = Array.from({ length: n }, (_, j) => simplex.slice(0, n).reduce((s, x) => s + x[j]!, 0) / n);
    const worst = simplex[n]!;
    const refl = clamp(centroid.map((c, j) => c + (c - worst[j]!)));
    const fr = f(refl);
    if (fr < vals[0]!) {
      const exp = clamp(centroid.map((c, j) => c + 2 * (c - worst[j]!)));
      const fe = f(exp);
      if (fe < fr) {
        simplex[n] = exp;
        vals[n] = fe;
      } else {
        simplex[n] = refl;
        vals[n] = fr;
      }
    } else if (fr < vals[n - 1]!) {
      simplex[n] = refl;
      vals[n] = fr;
    } else {
      const con = clamp(centroid.map((c, j) => c + 0.5 * (worst[j]! - c)));
      const fc = f(con);
      if (fc < vals[n]!) {
        simplex[n] = con;
        vals[n] = fc;
      } else {
        for (let i = 1; i <= n; i++) {
          simplex[i] = clamp(simplex[i]!.map((v, j) => simplex[0]![j]! + 0.5 * (v - simplex[0]![j]!)));
          vals[i] = f(simplex[i]!);
        }
      }
    }
  }
  const best = vals.indexOf(Math.min(...vals));
  return simplex[best]!;
}

/** Mean absolute percentage error of pred vs meas, %. */
function mape(pairs: [number, number][]): number {
  return (100 * pairs.reduce((s, [p, m]) => s + Math.abs(p - m) / m, 0)) / Math.max(1, pairs.length);
}

const r4 = (x: number) => Number(x.toPrecision(4));

/** One GEMM observation: per-GPU weights of each GEMM of the layer, tokens, measured ms (sum). */
interface GemmObs {
  weights: number[];
  tokens: number;
  ms: number;
}

function gemmObsFromVidur(file: string): { gemm: GemmObs[]; ew: { bytesPerToken: number; tokens: number; ms: number }[] } {
  const gemm: GemmObs[] = [];
  const ew: { bytesPerToken: number; tokens: number; ms: number }[] = [];
  for (const r of readVidurMlp(file)) {
    const { hidden: d, intermediate: I, heads: H, kvHeads: Hkv } = r.shape;
    const dh = d / H;
    const tp = r.tp;
    const w = [(d * (H + 2 * Hkv) * dh) / tp, (H * dh * d) / tp, (2 * d * I) / tp, (I * d) / tp];
    gemm.push({ weights: w, tokens: r.tokens, ms: r.qkv + r.o + r.gateUp + r.down });
    ew.push({ bytesPerToken: (10 * d + (3 * I) / tp + (2 * (H + Hkv) * dh) / tp) * 2, tokens: r.tokens, ms: r.elementwise });
  }
  return { gemm, ew };
}

function predictGemm(o: GemmObs, gpu: GpuSpec, e: GemmEfficiency): number {
  return o.weights.reduce((s, w) => s + gemmMs(w, o.tokens, 2, gpu, e), 0);
}

/** Fits GEMM efficiency on observations (squared log error). */
export function fitGemm(obs: GemmObs[], gpu: GpuSpec): { eff: GemmEfficiency; mape: number } {
  const f = (x: number[]) => {
    const e = { etaMem: x[0]!, etaCompute: x[1]!, kernelUs: x[2]!, p: x[3]! };
    let s = 0;
    for (const o of obs) {
      const d = Math.log(predictGemm(o, gpu, e) / o.ms);
      s += d * d;
    }
    return s;
  };
  const x = nelderMead(f, [0.8, 0.7, 5, 3], [0.3, 0.3, 0, 1], [1, 1, 40, 12], 600);
  const eff = { etaMem: r4(x[0]!), etaCompute: r4(x[1]!), kernelUs: r4(x[2]!), p: r4(x[3]!) };
  return { eff, mape: mape(obs.map((o) => [predictGemm(o, gpu, eff), o.ms])) };
}

/** Fits an all-reduce model α + 2(n−1)/n·bytes/(link·η) (squared log error). */
export function fitAllReduce(rows: { workers: number; bytes: number; ms: number }[], linkGBs: number): { model: CollectiveModel; mape: number } {
  const pred = (r: { workers: number; bytes: number }, a: number, eta: number) => (a * 1e-6 + ((2 * (r.workers - 1)) / r.workers) * (r.bytes / (linkGBs * 1e9 * eta))) * 1e3;
  const f = (x: number[]) => rows.reduce((s, r) => s + Math.log(pred(r, x[0]!, x[1]!) / r.ms) ** 2, 0);
  const x = nelderMead(f, [20, 0.6], [1, 0.05], [200, 1.5], 400);
  const model = { alphaUs: r4(x[0]!), etaBus: r4(x[1]!) };
  return { model, mape: mape(rows.map((r) => [pred(r, model.alphaUs, model.etaBus), r.ms])) };
}

/** Result of learning: the coefficients and a report of every fit and held-out check. */
export interface LearnResult {
  coefficients: RooflineCoefficients;
  report: Record<string, unknown>;
}

/**
 * Learns the coefficients from `dir` (../shared/data/profiles/public) and the measured RTX 5090
 * profile. Deterministic (fixed starting points).
 * @throws Error when a source file is missing or malformed (names the file).
 */
export function learnRoofline(dir: string): LearnResult {
  const files = vidurMlpFiles(dir);
  if (files.length === 0) throw new Error(`profile learn: no Vidur mlp.csv under ${dir}/vidur_profiling_mlp_allreduce`);
  const gemm: Record<string, GemmEfficiency> = {};
  const report: Record<string, unknown> = {};
  const ewObs: { bytesPerToken: number; tokens: number; ms: number; gpu: GpuSpec }[] = [];
  const gpuIds = { a100: 'a100-sxm-80gb', h100: 'h100-sxm' } as const;
  for (const g of ['a100', 'h100'] as const) {
    const gpu = loadGpu(gpuIds[g]);
    const obs: GemmObs[] = [];
    for (const f of files.filter((x) => x.gpu === g)) {
      const o = gemmObsFromVidur(f.file);
      obs.push(...o.gemm);
      for (const e of o.ew) ewObs.push({ ...e, gpu });
    }
    const fit = fitGemm(obs, gpu);
    gemm[gpu.id] = fit.eff;
    report[`gemm.${gpu.id}`] = { fitOn: files.filter((x) => x.gpu === g).map((x) => `vidur ${g} ${x.model}`), rows: obs.length, fitMapePct: r4(fit.mape) };
  }
  const ids = Object.keys(gemm);
  const avg = (k: keyof GemmEfficiency) => r4(ids.reduce((s, i) => s + gemm[i]![k], 0) / ids.length);
  gemm.default = { etaMem: avg('etaMem'), etaCompute: avg('etaCompute'), kernelUs: avg('kernelUs'), p: avg('p') };
  // held-out check of the H100 GEMM fit on LLMServingSim's H100 Llama-3.1 layer tables
  const h100 = loadGpu('h100-sxm');
  const lss: [number, number][] = [];
  for (const [model, tps] of [
    ['Llama-3.1-8B', [1, 2]],
    ['Llama-3.1-70B', [1, 2, 4]],
  ] as const) {
    const m = loadModel(model);
    for (const tp of tps) {
      const f = join(dir, 'llmservingsim_h100_llama31_layer_profiles', 'meta-llama', model, `tp${tp}`, 'layers.csv');
      if (!existsSync(f)) continue;
      for (const r of readLlmServingSimLayers(f)) {
        if (![1, 8, 32, 128, 256, 512, 1024, 2048].includes(r.tokens)) continue;
        const q = m.heads * m.headDim;
        const kv = m.kvHeads * m.headDim;
        // HF modules: q, k, v, o, gate, up, down as 7 separate GEMMs
        const w = [(m.hidden * q) / tp, (m.hidden * kv) / tp, (m.hidden * kv) / tp, (q * m.hidden) / tp, (m.hidden * m.intermediate) / tp, (m.hidden * m.intermediate) / tp, (m.intermediate * m.hidden) / tp];
        lss.push([predictGemm({ weights: w, tokens: r.tokens, ms: r.linear }, h100, gemm['h100-sxm']!), r.linear]);
      }
    }
  }
  report['gemm.h100-sxm.heldOut'] = { checkOn: 'LLMServingSim H100 Llama-3.1-8B TP1/2 and 70B TP1/2/4 layers.csv (T = 1..2048)', rows: lss.length, mapePct: r4(mape(lss)) };
  // elementwise
  const ewPred = (o: (typeof ewObs)[number], eta: number, k: number) => (k * 1e-6 + (o.bytesPerToken * o.tokens) / (o.gpu.memBandwidthGBs * 1e9 * eta)) * 1e3;
  const xe = nelderMead((x) => ewObs.reduce((s, o) => s + Math.log(ewPred(o, x[0]!, x[1]!) / o.ms) ** 2, 0), [0.5, 20], [0.05, 0], [1, 200], 300);
  const elementwise = { etaMem: r4(xe[0]!), kernelUs: r4(xe[1]!) };
  report.elementwise = { fitOn: 'vidur mlp.csv norms + rope + act + add (A100 and H100)', rows: ewObs.length, fitMapePct: r4(mape(ewObs.map((o) => [ewPred(o, elementwise.etaMem, elementwise.kernelUs), o.ms]))) };
  // NVLink all-reduce
  const coll: Record<string, CollectiveModel> = {};
  for (const [g, id] of [
    ['a100_dgx', 'a100-sxm-80gb'],
    ['h100_dgx', 'h100-sxm'],
  ] as const) {
    const f = join(dir, 'vidur_profiling_mlp_allreduce', 'network', g, 'all_reduce.csv');
    const rows = readVidurAllReduce(f);
    const fit = fitAllReduce(rows, loadGpu(id).interconnect.linkGBs);
    coll[id] = fit.model;
    report[`allReduce.${id}`] = { fitOn: `vidur ${g} all_reduce.csv (intra-node, 2-8 GPUs)`, rows: rows.length, fitMapePct: r4(fit.mape) };
  }
  const nvlink = { alphaUs: r4((coll['a100-sxm-80gb']!.alphaUs + coll['h100-sxm']!.alphaUs) / 2), etaBus: r4((coll['a100-sxm-80gb']!.etaBus + coll['h100-sxm']!.etaBus) / 2) };
  // PCIe through host memory, from the measured RTX 5090 profile
  const p5090 = JSON.parse(readFileSync(join(repoRoot(), 'engine', 'profiles', 'rtx5090x8-llama3-70b.json'), 'utf8')) as Profile;
  const g5090 = loadGpu('rtx5090');
  const m70 = loadModel('Llama-3-70B');
  const base: RooflineCoefficients = {
    gemm,
    elementwise,
    collectives: { nvlink, 'pcie-p2p': nvlink, 'pcie-host': nvlink, 'infinity-fabric': nvlink, ...coll } as RooflineCoefficients['collectives'],
    customAllReduce: { alphaUs: 3, etaBus: nvlink.etaBus, maxBytes: 8 * 2 ** 20 },
    attention: { prefillEta: PREFILL_ATTENTION_ETA, kernelUs: 10, decodeEtaMem: gemm.default.etaMem, seqUs: 0.2 },
    overhead: { stepMs: 0.5, layerUs: 10, seqMs: 0.01 },
    api: { 'openai-server': { apiMs: p5090.step.apiMs, frontendMsPerRequest: p5090.step.frontendMsPerRequest }, engine: { apiMs: 0, frontendMsPerRequest: 0 } },
    provenance: {},
  };
  const k = p5090.step.knots;
  const v = p5090.step.values;
  const slope = (v[v.length - 1]! - v[v.length - 2]!) / (k[k.length - 1]! - k[k.length - 2]!);
  const noColl = { ...base, collectives: { ...base.collectives, nvlink: { alphaUs: 0, etaBus: 1e9 } }, customAllReduce: { alphaUs: 0, etaBus: 1e9, maxBytes: Infinity } };
  // GEMM + elementwise per token at large T on the 5090 (no collective): difference of two token counts
  const lay = { tp: 8, ep: 1 };
  const perTokNoColl = (tokenCurveMs(m70, { ...g5090, interconnect: { ...g5090.interconnect, kind: 'nvlink' } }, lay, 16384, noColl) - tokenCurveMs(m70, { ...g5090, interconnect: { ...g5090.interconnect, kind: 'nvlink' } }, lay, 8192, noColl)) / 8192;
  const arPerTok = Math.max(1e-6, slope - perTokNoColl);
  const bytesPerTok = 2 * m70.layers * ((2 * 7) / 8) * m70.hidden * 2;
  const etaHost = r4(bytesPerTok / (arPerTok * 1e-3) / (g5090.interconnect.linkGBs * 1e9));
  const weightRead = tokenCurveMs(m70, { ...g5090, interconnect: { ...g5090.interconnect, kind: 'nvlink' } }, lay, 1, noColl);
  const alphaHost = r4(Math.max(5, ((p5090.step.fixedMs - weightRead - base.overhead.stepMs) / (2 * m70.layers)) * 1e3));
  base.collectives['pcie-host'] = { alphaUs: alphaHost, etaBus: etaHost };
  report['allReduce.pcie-host'] = {
    derivedFrom: 'engine/profiles/rtx5090x8-llama3-70b.json (measured, TP 8 over PCIe without P2P)',
    prefillSlopeMsPerToken: r4(slope),
    rooflineGemmEwMsPerToken: r4(perTokNoColl),
    allReduceMsPerToken: r4(arPerTok),
    etaBus: etaHost,
    alphaUs: alphaHost,
  };
  // PCIe with P2P (professional cards): LLMServingSim's cluster config of its RTX PRO 6000 TP2 runs
  // states the inter-GPU link its simulator uses (link_bw GB/s, link_latency ns)
  const lssCfg = join(dir, 'llmservingsim_bench_vllm019_rtx', 'RTXPRO6000_Qwen3-32B', 'config.json');
  if (existsSync(lssCfg)) {
    const cfg = JSON.parse(readFileSync(lssCfg, 'utf8')) as { link_bw?: number; link_latency?: number };
    if (typeof cfg.link_bw !== 'number' || typeof cfg.link_latency !== 'number') throw new Error(`${lssCfg}: link_bw / link_latency: expected numbers`);
    const pro = loadGpu('rtx-pro-6000');
    base.collectives['pcie-p2p'] = { alphaUs: r4(cfg.link_latency / 1000), etaBus: r4(cfg.link_bw / pro.interconnect.linkGBs) };
    report['allReduce.pcie-p2p'] = { from: `llmservingsim_bench_vllm019_rtx/RTXPRO6000_Qwen3-32B/config.json: link_bw ${cfg.link_bw} GB/s, link_latency ${cfg.link_latency} ns (LLMServingSim's model of the PCIe link of these runs)`, ...base.collectives['pcie-p2p'] };
  } else {
    base.collectives['pcie-p2p'] = { alphaUs: r4(2 * nvlink.alphaUs), etaBus: nvlink.etaBus };
  }
  // vLLM's custom all-reduce: vllm PR #2192 ("Custom all reduce kernels", merged 2023-12) measured
  // Llama-70B on 4x A100-80G, batch 64, 256 in / 256 out: 16.37 s -> 14.57 s, i.e. 1.8 s / 256 steps /
  // (2 x 80 all-reduces of 64 x 8192 x 2 B = 1 MiB) = 44 us less per all-reduce than NCCL.
  const a100 = coll['a100-sxm-80gb']!;
  const mib = 2 ** 20;
  const ncclAt1MiB = a100.alphaUs + ((2 * 3) / 4) * (mib / (300e9 * a100.etaBus)) * 1e6;
  const savedUs = ((16.37 - 14.57) / 256 / (2 * 80)) * 1e6;
  const bwUs = ((2 * 3) / 4) * (mib / (300e9 * a100.etaBus)) * 1e6;
  base.customAllReduce = { alphaUs: r4(Math.max(3, ncclAt1MiB - savedUs - bwUs)), etaBus: a100.etaBus, maxBytes: 8 * mib };
  report.customAllReduce = { derivedFrom: 'vllm-project/vllm PR #2192 end-to-end latency table (Llama 70B, A100-80G, TP4, BS 64)', ncclFitAt1MiBUs: r4(ncclAt1MiB), savedPerAllReduceUs: r4(savedUs), alphaUs: base.customAllReduce.alphaUs, floorUs: 3 };
  base.collectives['infinity-fabric'] = { ...nvlink };
  base.provenance = {
    gemm: 'measured: fitted on Vidur linear-layer tables (see report gemm.*); default = mean of A100 and H100',
    elementwise: 'measured: fitted on Vidur norm/rope/activation/residual tables',
    'collectives.nvlink': 'measured: fitted on Vidur NCCL all-reduce (DGX A100/H100), per GPU and their mean',
    'collectives.pcie-host': 'derived from the measured RTX 5090 TP8 profile (see report allReduce.pcie-host)',
    'collectives.pcie-p2p': 'assumed: the inter-GPU link LLMServingSim configured for its RTX PRO 6000 TP2 validation runs (see report allReduce.pcie-p2p); no measurement of ours',
    'collectives.infinity-fabric': 'assumed: NVLink model (no measurement)',
    customAllReduce: 'derived: NVLink messages <= 8 MiB use vLLM\'s custom all-reduce; its latency from the end-to-end gain reported in vllm PR #2192 (see report.customAllReduce), floored at 3 us',
    'attention.prefillEta': 'assumed: 0.5 of dense BF16 peak (FlashAttention-2/3 papers report 50-75 %); the LLMServingSim table is too small-scale to fit it',
    'attention.kernelUs': 'measured: per-chunk per-layer floor fitted on LLMServingSim H100 Llama-3.1-70B TP4 FLASH_ATTENTION prefill table',
    'attention.decodeEtaMem': 'derived: the GEMM weight-read efficiency (default) applied to KV reads',
    'attention.seqUs': 'measured: per-sequence coefficient of a linear fit to the LLMServingSim decode attention table',
    overhead: 'assumed: async scheduling (vLLM >= 0.12 default) hides the scheduler; 0.5 ms per step, 10 us per layer (attention kernels outside CUDA graphs), 0.01 ms per sequence',
    'api.openai-server': 'measured: apiMs / frontendMsPerRequest of the RTX 5090 profile fit (vLLM OpenAI server, CacheRoute logs); depends on the host CPU',
    'api.engine': 'definition: in-process AsyncLLM with engine-side timestamps has no API overhead',
  };
  // attention prefill efficiency on the LLMServingSim table
  const af = join(dir, 'llmservingsim_h100_llama31_layer_profiles', 'meta-llama', 'Llama-3.1-70B', 'tp4', 'attention.csv');
  if (existsSync(af)) {
    const att = fitAttention(af, h100);
    base.attention.prefillEta = att.prefillEta;
    base.attention.kernelUs = att.kernelUs;
    base.attention.seqUs = att.seqUs;
    report.attention = att.report;
  }
  report.endToEndToOpLevel = endToEndToOpLevel(dir, gemm);
  setRoofline(null);
  return { coefficients: base, report };
}

/**
 * The reverse direction of the cross-source check: the compute efficiency implied by an end-to-end
 * measurement (Argonne's prefill-only TTFT of 16 × 1,024 tokens of Llama-3-8B, vLLM mid-2024, on
 * A100 and H100) used to predict Vidur's op-level linear-layer times at >= 1,024 tokens per step.
 */
function endToEndToOpLevel(dir: string, gemm: Record<string, GemmEfficiency>): Record<string, unknown> {
  const f = join(dir, 'argonne_llm_inference_bench_static', 'all_results_TTFT_ITL.csv');
  if (!existsSync(f)) return { skipped: `${f} not found` };
  const rows = readCsv(f, true);
  const m = loadModel('Llama-3-8B');
  const fl = flopsPerToken(m);
  const out: Record<string, unknown> = {};
  for (const [hw, id, vidurGpu] of [
    ['Nvidia A100 GPU', 'a100-sxm-40gb', 'a100'],
    ['Nvidia H100 GPU', 'h100-sxm', 'h100'],
  ] as const) {
    const r = rows.find((x) => x.Hardware === hw && x.Framework === 'vLLM' && x.Model === 'meta-llama/Meta-Llama-3-8B' && x['Batch Size'] === '16' && x['Input Length'] === '1024');
    if (!r) continue;
    const ttftS = Number(r['TTFT Latency']);
    const tokens = 16 * 1024;
    const flops = tokens * fl.linear + 16 * fl.attentionPerContextToken * (1024 * 1024) / 2;
    const gpu = loadGpu(id);
    const etaE2e = flops / (ttftS * gpu.peakTflopsBf16 * 1e12);
    const vgpu = loadGpu(vidurGpu === 'a100' ? 'a100-sxm-80gb' : 'h100-sxm');
    const eff = { ...gemm[vgpu.id]!, etaCompute: etaE2e };
    const pairs: [number, number][] = [];
    for (const vf of vidurMlpFiles(dir).filter((x) => x.gpu === vidurGpu)) {
      for (const o of gemmObsFromVidur(vf.file).gemm) if (o.tokens >= 1024) pairs.push([predictGemm(o, vgpu, eff), o.ms]);
    }
    out[id] = {
      fitOn: `Argonne all_results_TTFT_ITL.csv ${hw} vLLM Meta-Llama-3-8B, 16 × 1,024 tokens: TTFT ${ttftS.toFixed(3)} s`,
      impliedEtaCompute: r4(etaE2e),
      opLevelFitEtaCompute: gemm[vgpu.id]!.etaCompute,
      checkOn: `Vidur ${vidurGpu} linear layers at >= 1,024 tokens per step`,
      rows: pairs.length,
      mapePct: r4(mape(pairs)),
      biasPct: r4((100 * pairs.reduce((s2, [p2, m2]) => s2 + (p2 - m2) / m2, 0)) / Math.max(1, pairs.length)),
    };
  }
  return out;
}

/** Prefill attention efficiency (fraction of dense BF16 peak), from the FlashAttention papers (see fitAttention). */
export const PREFILL_ATTENTION_ETA = 0.5;

function fitAttention(file: string, gpu: GpuSpec): { prefillEta: number; kernelUs: number; seqUs: number; report: Record<string, unknown> } {
  const text = readFileSync(file, 'utf8').trim().split('\n');
  const head = text[0]!.split(',');
  const col = (n: string) => head.indexOf(n);
  const pre: { units: number; ms: number; heads: number; dh: number }[] = [];
  const dec: { b: number; ms: number }[] = [];
  for (let i = 1; i < text.length; i++) {
    const c = text[i]!.split(',');
    const heads = Number(c[col('n_q_head')]) / Number(c[col('num_tensor_parallel_workers')]);
    const dh = Number(c[col('n_embd')]) / Number(c[col('n_q_head')]);
    if (c[col('is_prefill')] === 'True') {
      const ch = Number(c[col('prefill_chunk_size')]);
      const kv = Number(c[col('kv_cache_size')]);
      const ms = Number(c[col('time_stats.attn_prefill.median')]);
      if (ch >= 256) pre.push({ units: ch * (Math.max(0, kv - ch) + ch / 2), ms, heads, dh });
    } else {
      const kv = Number(c[col('kv_cache_size')]);
      if (kv <= 64) dec.push({ b: Number(c[col('batch_size')]), ms: Number(c[col('time_stats.attn_decode.median')]) });
    }
  }
  // The table stops at 1,024-token chunks over <= 2,016 tokens of context: kernels too small to
  // show the efficiency of long prefills, so ηattn is not fitted here. It is set from the
  // FlashAttention papers (FA2, Dao 2023: 50-73 % of A100 peak in the forward pass; FA3, Shah et
  // al. 2024: ~75 % of H100 BF16 peak, head_dim 128, long sequences) to a conservative 0.5; the
  // table gives the per-chunk kernel floor.
  const eta = PREFILL_ATTENTION_ETA;
  const pred = (o: (typeof pre)[number], a: number) => (a * 1e-6 + (4 * o.heads * o.dh * o.units) / (gpu.peakTflopsBf16 * 1e12 * eta)) * 1e3;
  const x = nelderMead((x) => pre.reduce((s, o) => s + Math.log(pred(o, x[0]!) / o.ms) ** 2, 0), [5], [0], [100], 200);
  // per-sequence decode cost: slope of time vs batch at tiny contexts
  const n = dec.length;
  const mb = dec.reduce((s, d) => s + d.b, 0) / Math.max(1, n);
  const mt = dec.reduce((s, d) => s + d.ms, 0) / Math.max(1, n);
  const slope = n > 1 ? dec.reduce((s, d) => s + (d.b - mb) * (d.ms - mt), 0) / dec.reduce((s, d) => s + (d.b - mb) ** 2, 0) : 0.0002;
  return {
    prefillEta: eta,
    kernelUs: r4(x[0]!),
    seqUs: r4(Math.max(0, slope * 1e3)),
    report: {
      kernelUsFitOn: 'LLMServingSim H100 Llama-3.1-70B TP4 attention.csv prefill rows (chunk >= 256), with eta fixed',
      rows: pre.length,
      kernelUs: r4(x[0]!),
      mapePctWithAssumedEta: r4(mape(pre.map((o) => [pred(o, r4(x[0]!)), o.ms]))),
      decodeRows: n,
    },
  };
}

/** Writes the coefficients (and the report under provenance.report) to engine/profiles/roofline/coefficients.json or `out`. */
export function writeRoofline(r: LearnResult, out = join(repoRoot(), 'engine', 'profiles', 'roofline', 'coefficients.json')): string {
  const c = { ...r.coefficients, provenance: { ...r.coefficients.provenance, report: r.report } };
  writeFileSync(out, JSON.stringify(c, null, 2) + '\n');
  setRoofline(null);
  return out;
}
