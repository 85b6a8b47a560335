import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { decodeStepMs, prefillAloneMs } from '../engine/costmodel.js';
import { loadProfile, parseProfile } from '../sim/profiles.js';
import { BUILD_PLANS, buildProfile, interpRows } from '../sim/profile/build.js';
import { shippedProfiles, showProfile, summarizeProfile } from '../sim/profile/catalog.js';
import { deriveProfileFromSpecs, vllmBatchDefaults } from '../sim/profile/derive.js';
import { kvCapacityFromMemory } from '../sim/profile/memory.js';
import { allReduceMs, loadRoofline, smax } from '../sim/profile/roofline.js';
import { findGpu, flopsPerToken, kvBytesPerToken, loadGpu, loadModel, paramCounts, parseHfConfig, shapeKey } from '../sim/profile/specs.js';
import { REPO, SHARED } from './helpers/sim.js';

const tmp: string[] = [];
afterAll(() => tmp.forEach((d) => rmSync(d, { recursive: true, force: true })));

describe('model shapes from config.json', () => {
  it.each([
    ['Llama-3-8B', 131_072, 15_009_316_864, 8_029_995_008],
    ['Llama-3-70B', 327_680, 139_003_428_864, 70_552_387_584],
    ['Qwen3-32B', 262_144, 63_967_068_160, 32_761_446_400],
    ['Qwen3-30B-A3B', 98_304, 6_083_313_664, 30_531_911_680],
  ])('%s: KV bytes per token, FLOPs per token, parameters', (name, kv, flops, total) => {
    const m = loadModel(name);
    expect(kvBytesPerToken(m)).toBe(kv);
    expect(flopsPerToken(m).linear).toBe(flops);
    expect(paramCounts(m).total).toBe(total);
  });

  it('MoE: active parameters are the routed experts, not all of them', () => {
    const p = paramCounts(loadModel('Qwen3-30B-A3B'));
    expect(p.active).toBe(3_041_656_832);
    expect(p.total / p.active).toBeGreaterThan(9);
    expect(flopsPerToken(loadModel('Llama-3-8B')).attentionPerContextToken).toBe(4 * 32 * 32 * 128);
  });

  it('HF ids, Instruct variants and context-length variants resolve to the same shapes', () => {
    expect(loadModel('meta-llama/Meta-Llama-3-70B-Instruct').name).toBe('Llama-3-70B');
    expect(loadModel('Qwen/Qwen3-30B-A3B-Instruct-2507').moe).toMatchObject({ experts: 128, topK: 8 });
    expect(shapeKey(loadModel('Llama-3.1-8B'))).toBe(shapeKey(loadModel('Llama-3-8B')));
    expect(shapeKey(loadModel('Llama-2-70B'))).not.toBe(shapeKey(loadModel('Llama-3-70B')));
  });

  it('config.json errors name the file and field', () => {
    expect(() => parseHfConfig({ num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4, vocab_size: 10 }, 'c.json')).toThrow(/c\.json: intermediate_size: expected a positive integer, got undefined/);
    expect(() => parseHfConfig({ num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 3, intermediate_size: 8, vocab_size: 10 }, 'c.json')).toThrow(/c\.json: num_key_value_heads: 3 does not divide num_attention_heads 4/);
    expect(() => parseHfConfig({ num_hidden_layers: 0, hidden_size: 64, num_attention_heads: 4, intermediate_size: 8, vocab_size: 10 }, 'c.json')).toThrow(/c\.json: num_hidden_layers/);
    expect(() => loadModel('nope-7b')).toThrow(/unknown model "nope-7b"; shipped: /);
    const d = mkdtempSync(join(tmpdir(), 'kvlab-spec-'));
    tmp.push(d);
    writeFileSync(join(d, 'config.json'), JSON.stringify({ num_hidden_layers: 2, hidden_size: 64, num_attention_heads: 4, intermediate_size: 128, vocab_size: 100, torch_dtype: 'bfloat16' }));
    expect(loadModel(join(d, 'config.json'))).toMatchObject({ layers: 2, kvHeads: 4, headDim: 16, dtypeBytes: 2 });
  });
});

describe('GPU specs', () => {
  it('device names as nvidia-smi / torch print them resolve to the shipped specs', () => {
    expect(findGpu('NVIDIA GeForce RTX 4090')!.id).toBe('rtx4090');
    expect(findGpu('RTXPRO6000')!.id).toBe('rtx-pro-6000');
    expect(findGpu('NVIDIA A100-SXM4-40GB')!.id).toBe('a100-sxm-40gb');
    expect(findGpu('NVIDIA H100 80GB HBM3')!.id).toBe('h100-sxm');
    expect(findGpu('H100 PCIe')!.id).toBe('h100-pcie');
    expect(findGpu('TPU v5e')).toBeNull();
    for (const id of ['a100-sxm-40gb', 'a100-sxm-80gb', 'h100-sxm', 'h100-pcie', 'h200-sxm', 'b200', 'mi300x', 'rtx4090', 'rtx-pro-6000', 'rtx5090', 'l40s']) {
      expect(loadGpu(id).source.length).toBeGreaterThan(40);
    }
    expect(() => loadGpu('gtx1080')).toThrow(/unknown GPU "gtx1080"; known: /);
  });
});

describe('memory arithmetic and vLLM defaults', () => {
  it('Llama-3.1-8B on one RTX 4090 gives the KV blocks vLLM 0.19 resolved (2,588) within 1 %', () => {
    const c = kvCapacityFromMemory(loadModel('Llama-3.1-8B'), loadGpu('rtx4090'), { tp: 1, ep: 1 }, { maxNumBatchedTokens: 2048, maxNumSeqs: 256, blockSizeTokens: 16 });
    expect(Math.abs(c.blocks - 2588) / 2588).toBeLessThan(0.01);
    expect(c.text).toMatch(/gpu_memory_utilization 0\.9/);
  });

  it('weights that do not fit leave no KV (and derive refuses)', () => {
    const c = kvCapacityFromMemory(loadModel('Llama-3-70B'), loadGpu('a100-sxm-40gb'), { tp: 2, ep: 1 }, { maxNumBatchedTokens: 2048, maxNumSeqs: 256, blockSizeTokens: 16 });
    expect(c.tokens).toBe(0);
    expect(() => deriveProfileFromSpecs({ gpu: loadGpu('a100-sxm-40gb'), model: loadModel('Llama-3-70B'), tp: 2 })).toThrow(/does not fit/);
  });

  it('batch defaults follow get_batch_defaults: >= 70 GiB and not A100 -> 8192 / 1024, else 2048 / 256; in-process engine 2048 / 128', () => {
    expect(vllmBatchDefaults(loadGpu('h100-sxm'), 'openai-server')).toEqual({ maxNumBatchedTokens: 8192, maxNumSeqs: 1024 });
    expect(vllmBatchDefaults(loadGpu('a100-sxm-80gb'), 'openai-server')).toEqual({ maxNumBatchedTokens: 2048, maxNumSeqs: 256 });
    expect(vllmBatchDefaults(loadGpu('l40s'), 'openai-server')).toEqual({ maxNumBatchedTokens: 2048, maxNumSeqs: 256 });
    expect(vllmBatchDefaults(loadGpu('mi300x'), 'openai-server')).toEqual({ maxNumBatchedTokens: 8192, maxNumSeqs: 1024 });
    expect(vllmBatchDefaults(loadGpu('h100-sxm'), 'engine')).toEqual({ maxNumBatchedTokens: 2048, maxNumSeqs: 128 });
  });
});

describe('roofline derive', () => {
  it('produces a valid profile with provenance per term, monotone curve, faster on faster GPUs', () => {
    const m = loadModel('Llama-3-8B');
    const a100 = deriveProfileFromSpecs({ gpu: loadGpu('a100-sxm-80gb'), model: m });
    const h100 = deriveProfileFromSpecs({ gpu: loadGpu('h100-sxm'), model: m });
    const b200 = deriveProfileFromSpecs({ gpu: loadGpu('b200'), model: m });
    for (const p of [a100, h100, b200]) {
      expect(() => parseProfile(JSON.parse(JSON.stringify(p)), p.name)).not.toThrow();
      p.step.values.forEach((v, i) => i > 0 && expect(v).toBeGreaterThanOrEqual(p.step.values[i - 1]!));
      expect(p.provenance!['step.knots/values']!.kind).toBe('derived');
      expect(p.provenance!['engine.kvCapacityTokens']!.kind).toBe('derived');
      expect(p.derived).toBe(true);
    }
    expect(prefillAloneMs(h100, 0, 2048)).toBeLessThan(prefillAloneMs(a100, 0, 2048));
    expect(prefillAloneMs(b200, 0, 2048)).toBeLessThan(prefillAloneMs(h100, 0, 2048));
    expect(decodeStepMs(h100, 1, 1024)).toBeLessThan(decodeStepMs(a100, 1, 1024));
    // decode at batch 1 is weight-read bound: within 2x of weights / bandwidth
    const ideal = (paramCounts(m).total * 2) / (3350e9) * 1e3;
    expect(decodeStepMs(h100, 1, 1024)).toBeGreaterThan(ideal);
    expect(decodeStepMs(h100, 1, 1024)).toBeLessThan(2 * ideal);
  });

  it('prefill scales with FLOPs: large steps cost GEMM FLOPs / (peak × learned efficiency) plus all-reduce and elementwise', () => {
    const c = loadRoofline();
    const m = loadModel('Llama-3-70B');
    const p = deriveProfileFromSpecs({ gpu: loadGpu('h100-sxm'), model: m, tp: 8 });
    const T = 8192;
    const k = p.step.knots.indexOf(T);
    const compute = (flopsPerToken(m).linear * T) / 8 / (989.4e12 * c.gemm['h100-sxm']!.etaCompute) * 1e3;
    expect(p.step.values[k]!).toBeGreaterThan(compute);
    // TP8: all-reduces (~2 × 80 × 134 MB) and norms/rope/activation (Vidur measures ~30 % of the GEMMs) add to the GEMMs
    expect(p.step.values[k]!).toBeLessThan(2 * compute);
    const half = p.step.values[p.step.knots.indexOf(4096)]!;
    expect(p.step.values[k]! / half).toBeGreaterThan(1.8);
  });

  it('MoE decode reads the distinct experts; TP shards the weights; smax is a smooth max', () => {
    const q = deriveProfileFromSpecs({ gpu: loadGpu('rtx-pro-6000'), model: loadModel('Qwen3-30B-A3B'), tp: 1, ep: 2, entry: 'engine' });
    expect(decodeStepMs(q, 64, 1000)).toBeGreaterThan(decodeStepMs(q, 1, 1000));
    expect(q.step.apiMs).toBe(0);
    const t1 = deriveProfileFromSpecs({ gpu: loadGpu('h100-sxm'), model: loadModel('Llama-3-70B'), tp: 4 });
    const t2 = deriveProfileFromSpecs({ gpu: loadGpu('h100-sxm'), model: loadModel('Llama-3-70B'), tp: 8 });
    expect(decodeStepMs(t2, 1, 1024)).toBeLessThan(decodeStepMs(t1, 1, 1024));
    expect(smax(3, 0, 2)).toBe(3);
    expect(smax(3, 4, 2)).toBeCloseTo(5, 9);
    expect(smax(3, 4, 64)).toBeCloseTo(4, 2);
  });

  it('NVLink all-reduce uses the custom kernel for small messages and NCCL beyond 8 MiB', () => {
    const c = loadRoofline();
    const h = loadGpu('h100-sxm');
    expect(allReduceMs(16384, 8, h, c)).toBeLessThan(c.collectives['h100-sxm' as 'nvlink']!.alphaUs / 1000);
    expect(allReduceMs(64 * 2 ** 20, 8, h, c)).toBeGreaterThan(allReduceMs(8 * 2 ** 20, 8, h, c));
    // PCIe without P2P (GeForce) is far slower than NVLink for the same message
    expect(allReduceMs(2 ** 20, 2, loadGpu('rtx4090'), c)).toBeGreaterThan(5 * allReduceMs(2 ** 20, 2, h, c));
  });
});

describe('committed profiles', () => {
  const all = shippedProfiles();
  it('every profile validates, states hardware/model/TP, and the required measured ones exist', () => {
    const names = all.map((p) => p.name);
    for (const n of ['h100x8-llama3-70b', 'h100x4-llama3-70b', 'a100x8-llama3-70b', 'a100-40gbx8-llama3-70b', 'h100x1-llama3-8b', 'a100x1-llama3-8b', 'rtx5090x8-llama3-70b', 'h100x8-llama3-70b-from-rtx5090']) {
      expect(names).toContain(n);
    }
    for (const p of all) {
      const s = summarizeProfile(p);
      expect(s.gpus).toBeGreaterThan(0);
      expect(s.prefillTokPerS).toBeGreaterThan(0);
      expect(showProfile(p)).toMatch(/KV capacity/);
    }
  });

  it('the measured H100/A100 profiles carry per-term provenance and held-out checks; the Mooncake default is measured', () => {
    for (const p of all.filter((x) => BUILD_PLANS.some((b) => b.name === x.name))) {
      expect(p.derived).toBe(false);
      expect(['measured', 'scaled']).toContain(p.provenance!['step.knots/values']!.kind);
      expect(p.provenance!['engine.kvCapacityTokens']!.source).toMatch(/gpu_memory_utilization 0\.9/);
      expect(p.fit).toHaveProperty('crossSource');
      expect(p.engine.asyncScheduling).toBe(true);
    }
    const h = loadProfile('h100x8-llama3-70b');
    expect(h.derived).toBe(false);
    expect(h.engine).toMatchObject({ maxNumBatchedTokens: 8192, maxNumSeqs: 1024, maxModelLen: 131072 });
    const cs = h.fit!.crossSource as Record<string, { biasPct: number; note?: string }>;
    expect(cs.splitwiseDecodeOldEngine!.note).toMatch(/CUDA graphs/);
    // about 5x the prefill throughput of the profile scaled from the PCIe-bound RTX 5090 rig
    expect(summarizeProfile(h).prefillTokPerS).toBeGreaterThan(4 * summarizeProfile(loadProfile('h100x8-llama3-70b-from-rtx5090')).prefillTokPerS);
  });

  it('interpolation of measured tables is linear between points and continues the top slope', () => {
    const rows = [
      { tokens: 1, ms: 1 },
      { tokens: 100, ms: 2 },
      { tokens: 200, ms: 3 },
    ];
    expect(interpRows(rows, 50).ms).toBeCloseTo(1 + 49 / 99, 9);
    expect(interpRows(rows, 400)).toMatchObject({ extrapolated: true });
    expect(interpRows(rows, 400).ms).toBeCloseTo(5, 9);
  });

  const PUB = resolve(SHARED, 'data/profiles/public');
  it.skipIf(!existsSync(PUB))('rebuilding from ../shared/data/profiles/public reproduces the committed curves', () => {
    for (const name of ['h100x8-llama3-70b', 'a100x1-llama3-8b']) {
      const plan = BUILD_PLANS.find((b) => b.name === name)!;
      const p = buildProfile(plan, PUB);
      const committed = JSON.parse(readFileSync(join(REPO, 'engine', 'profiles', `${name}.json`), 'utf8'));
      expect(p.step.values).toEqual(committed.step.values);
      expect(p.engine.kvCapacityTokens).toBe(committed.engine.kvCapacityTokens);
    }
  });
});
