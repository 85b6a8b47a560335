/**
 * Hardware and model specifications for `kvlab profile derive` and the measured profiles:
 * GPU datasheet specs (engine/profiles/gpus/*.json) and model shapes read from a Hugging Face
 * `config.json` (engine/profiles/models/*.json hold the shipped ones, with their source).
 *
 * Units: bytes, GB/s (10^9 B/s), TFLOP/s (10^12 FLOP/s), GiB (2^30 B), tokens.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { ModelSpec } from '../../engine/types.js';
import { repoRoot } from '../profiles.js';

/** Interconnect between the GPUs of one tensor-parallel group. */
export interface InterconnectSpec {
  /** nvlink | pcie | infinity-fabric */
  kind: 'nvlink' | 'pcie' | 'infinity-fabric';
  /** datasheet per-direction bandwidth per GPU, GB/s (NVLink 4: 450; PCIe Gen5 x16: 64). */
  linkGBs: number;
  /** peer-to-peer transfers between GPUs (false on GeForce cards: all-reduce goes through host memory). */
  p2p: boolean;
}

/** One GPU model's datasheet figures (engine/profiles/gpus/<id>.json). */
export interface GpuSpec {
  id: string;
  name: string;
  /** other names it goes by (nvidia-smi / torch device names, short names); matched case-insensitively. */
  aliases: string[];
  vendor: string;
  /** memory per GPU, GiB (2^30 B). */
  memGiB: number;
  /** memory bandwidth per GPU, GB/s. */
  memBandwidthGBs: number;
  /** dense BF16 tensor peak per GPU (FP32 accumulate), TFLOP/s. */
  peakTflopsBf16: number;
  interconnect: InterconnectSpec;
  /** datasheet reference for every figure. */
  source: string;
  /**
   * GEMM efficiencies measured on this GPU by another profiler (cited, not in ../shared): the
   * fraction of HBM bandwidth at 1 token and of the dense peak at 2,048 tokens of a model's
   * linear layers. Used when engine/profiles/roofline/coefficients.json has no fit for the GPU.
   */
  measuredGemm?: { etaMem: number; etaCompute: number; source: string };
}

/** Mixture-of-experts shape (Qwen3-MoE / Mixtral config fields). */
export interface MoeShape {
  experts: number;
  /** experts each token is routed to. */
  topK: number;
  /** per-expert MLP intermediate size. */
  expertIntermediate: number;
  /** shared-expert intermediate size (0 = none). */
  sharedIntermediate: number;
}

/** Transformer shape from a Hugging Face config.json. */
export interface ModelShape {
  name: string;
  hfId: string | null;
  source: string;
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** dense MLP intermediate size (unused by MoE layers). */
  intermediate: number;
  vocab: number;
  tiedEmbeddings: boolean;
  maxPositionEmbeddings: number;
  /** bytes per weight / KV element (bf16 = 2). */
  dtypeBytes: number;
  moe: MoeShape | null;
}

/** A spec file error: names the file and the field. */
export class SpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SpecError';
  }
}

function readJsonFile(file: string): Record<string, unknown> {
  let o: unknown;
  try {
    o = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new SpecError(`${file}: ${existsSync(file) ? `not valid JSON: ${(e as Error).message}` : 'not found'}`);
  }
  if (o === null || typeof o !== 'object' || Array.isArray(o)) throw new SpecError(`${file}: expected a JSON object`);
  return o as Record<string, unknown>;
}

function posNum(o: Record<string, unknown>, k: string, file: string, int = false): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || (int && !Number.isInteger(v))) {
    throw new SpecError(`${file}: ${k}: expected a positive ${int ? 'integer' : 'number'}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Normalises a device name for matching: lower case, "nvidia"/"geforce"/"amd" dropped, separators removed. */
export function normName(s: string): string {
  return s
    .toLowerCase()
    .replace(/\b(nvidia|geforce|amd|instinct|gpu)\b/g, '')
    .replace(/[^a-z0-9]/g, '');
}

function specsDir(kind: 'gpus' | 'models'): string {
  return join(repoRoot(), 'engine', 'profiles', kind);
}

/** Parses and checks a GPU spec object. @throws SpecError naming the file and field. */
export function parseGpuSpec(o: Record<string, unknown>, file: string): GpuSpec {
  const ic = o.interconnect as Record<string, unknown> | undefined;
  if (!ic || typeof ic !== 'object') throw new SpecError(`${file}: interconnect: expected an object {kind, linkGBs, p2p}`);
  const kind = ic.kind;
  if (kind !== 'nvlink' && kind !== 'pcie' && kind !== 'infinity-fabric') throw new SpecError(`${file}: interconnect.kind: expected nvlink, pcie or infinity-fabric, got ${JSON.stringify(kind)}`);
  if (typeof ic.p2p !== 'boolean') throw new SpecError(`${file}: interconnect.p2p: expected true or false`);
  if (typeof o.id !== 'string' || !o.id) throw new SpecError(`${file}: id: expected a non-empty string`);
  if (typeof o.name !== 'string') throw new SpecError(`${file}: name: expected a string`);
  return {
    id: o.id,
    name: o.name,
    aliases: Array.isArray(o.aliases) ? o.aliases.map(String) : [],
    vendor: typeof o.vendor === 'string' ? o.vendor : '',
    memGiB: posNum(o, 'memGiB', file),
    memBandwidthGBs: posNum(o, 'memBandwidthGBs', file),
    peakTflopsBf16: posNum(o, 'peakTflopsBf16', file),
    interconnect: { kind, linkGBs: posNum(ic, 'linkGBs', `${file}: interconnect`), p2p: ic.p2p },
    source: typeof o.source === 'string' ? o.source : '',
    ...(o.measuredGemm ? { measuredGemm: parseMeasuredGemm(o.measuredGemm, file) } : {}),
  };
}

function parseMeasuredGemm(v: unknown, file: string): { etaMem: number; etaCompute: number; source: string } {
  const o = v as Record<string, unknown>;
  if (!o || typeof o !== 'object') throw new SpecError(`${file}: measuredGemm: expected {etaMem, etaCompute, source}`);
  const eta = (k: string) => {
    const x = o[k];
    if (typeof x !== 'number' || !(x > 0 && x <= 1.2)) throw new SpecError(`${file}: measuredGemm.${k}: expected a fraction in (0, 1.2], got ${JSON.stringify(x)}`);
    return x;
  };
  return { etaMem: eta('etaMem'), etaCompute: eta('etaCompute'), source: String(o.source ?? '') };
}

/** Every shipped GPU spec, sorted by id. */
export function listGpus(): GpuSpec[] {
  const dir = specsDir('gpus');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => parseGpuSpec(readJsonFile(join(dir, f)), join(dir, f)));
}

/**
 * Finds a shipped GPU by id, name or alias (case- and separator-insensitive, "NVIDIA"/"GeForce"
 * ignored: "NVIDIA GeForce RTX 4090", "RTX4090" and "rtx 4090" all match), or reads a spec file
 * (a path ending in .json).
 * @throws SpecError listing the known GPUs when nothing matches.
 */
export function loadGpu(nameOrPath: string): GpuSpec {
  if (nameOrPath.endsWith('.json')) {
    const file = resolve(nameOrPath);
    return parseGpuSpec(readJsonFile(file), file);
  }
  const gpu = findGpu(nameOrPath);
  if (!gpu) throw new SpecError(`unknown GPU "${nameOrPath}"; known: ${listGpus().map((g) => g.id).join(', ')} (or give a spec .json)`);
  return gpu;
}

/** The shipped GPU matching a device name, or null. Exact id/name/alias first, then the longest alias contained in the name. */
export function findGpu(name: string): GpuSpec | null {
  const n = normName(name);
  if (!n) return null;
  const gpus = listGpus();
  for (const g of gpus) if ([g.id, g.name, ...g.aliases].some((a) => normName(a) === n)) return g;
  let best: { g: GpuSpec; len: number } | null = null;
  for (const g of gpus) {
    for (const a of [g.id, g.name, ...g.aliases]) {
      const na = normName(a);
      if (na.length >= 4 && n.includes(na) && (!best || na.length > best.len)) best = { g, len: na.length };
    }
  }
  return best?.g ?? null;
}

function dtypeBytes(t: unknown): number {
  if (t === undefined || t === null) return 2;
  const s = String(t).toLowerCase();
  if (s.includes('float32') || s === 'fp32') return 4;
  if (s.includes('float16') || s.includes('bf16') || s.includes('fp16')) return 2;
  if (s.includes('float8') || s.includes('fp8')) return 1;
  throw new SpecError(`torch_dtype "${s}" is not supported (bfloat16, float16, float32, float8)`);
}

/**
 * Reads a Hugging Face config.json object into a ModelShape. Required: num_hidden_layers,
 * hidden_size, num_attention_heads, intermediate_size (or moe_intermediate_size), vocab_size;
 * num_key_value_heads defaults to num_attention_heads (MHA), head_dim to hidden/heads; MoE from
 * num_experts (or num_local_experts) + num_experts_per_tok + moe_intermediate_size.
 * @throws SpecError "FILE: field: ..." for a missing or invalid field.
 */
export function parseHfConfig(o: Record<string, unknown>, file: string): ModelShape {
  const layers = posNum(o, 'num_hidden_layers', file, true);
  const hidden = posNum(o, 'hidden_size', file, true);
  const heads = posNum(o, 'num_attention_heads', file, true);
  const kvHeads = o.num_key_value_heads === undefined || o.num_key_value_heads === null ? heads : posNum(o, 'num_key_value_heads', file, true);
  if (heads % kvHeads !== 0) throw new SpecError(`${file}: num_key_value_heads: ${kvHeads} does not divide num_attention_heads ${heads}`);
  const headDim = o.head_dim === undefined || o.head_dim === null ? hidden / heads : posNum(o, 'head_dim', file, true);
  if (!Number.isInteger(headDim)) throw new SpecError(`${file}: head_dim: hidden_size / num_attention_heads = ${headDim} is not an integer; give head_dim`);
  const vocab = posNum(o, 'vocab_size', file, true);
  const nExperts = o.num_experts ?? o.num_local_experts ?? o.n_routed_experts;
  let moe: MoeShape | null = null;
  if (nExperts !== undefined && nExperts !== null && nExperts !== 0) {
    const experts = posNum({ num_experts: nExperts }, 'num_experts', file, true);
    const topK = posNum(o, 'num_experts_per_tok', file, true);
    const expertIntermediate = o.moe_intermediate_size !== undefined ? posNum(o, 'moe_intermediate_size', file, true) : posNum(o, 'intermediate_size', file, true);
    const sharedIntermediate = typeof o.shared_expert_intermediate_size === 'number' ? o.shared_expert_intermediate_size : 0;
    if (topK > experts) throw new SpecError(`${file}: num_experts_per_tok: ${topK} > num_experts ${experts}`);
    moe = { experts, topK, expertIntermediate, sharedIntermediate };
  }
  const intermediate = o.intermediate_size !== undefined ? posNum(o, 'intermediate_size', file, true) : moe ? moe.expertIntermediate : posNum(o, 'intermediate_size', file, true);
  let bytes: number;
  try {
    bytes = dtypeBytes(o.torch_dtype ?? o.dtype);
  } catch (e) {
    throw new SpecError(`${file}: torch_dtype: ${(e as Error).message}`);
  }
  return {
    name: typeof o.name === 'string' ? o.name : typeof o._name_or_path === 'string' ? String(o._name_or_path).split('/').pop()! : file.split('/').pop()!.replace(/\.json$/, ''),
    hfId: typeof o.hf_id === 'string' ? o.hf_id : typeof o._name_or_path === 'string' ? o._name_or_path : null,
    source: typeof o.source === 'string' ? o.source : file,
    layers,
    hidden,
    heads,
    kvHeads,
    headDim,
    intermediate,
    vocab,
    tiedEmbeddings: o.tie_word_embeddings === true,
    maxPositionEmbeddings: typeof o.max_position_embeddings === 'number' ? o.max_position_embeddings : 4096,
    dtypeBytes: bytes,
    moe,
  };
}

/** Every shipped model shape, sorted by file name. */
export function listModels(): ModelShape[] {
  const dir = specsDir('models');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => parseHfConfig(readJsonFile(join(dir, f)), join(dir, f)));
}

/** Normalised model name for matching ("meta-llama/Meta-Llama-3-70B-Instruct" → "llama370b"). */
export function normModel(s: string): string {
  return s
    .toLowerCase()
    .split('/')
    .pop()!
    .replace(/-(instruct|chat|hf|base|it)(-\d+)?$/g, '')
    .replace(/-instruct-2507$|-2507$/g, '')
    .replace(/^meta-/, '')
    .replace(/[^a-z0-9]/g, '');
}

/** The shipped model matching a name or HF id (Instruct/chat variants share the base shapes), or null. */
export function findModel(name: string): ModelShape | null {
  const n = normModel(name);
  for (const m of listModels()) if (normModel(m.name) === n || (m.hfId && normModel(m.hfId) === n)) return m;
  return null;
}

/**
 * A model by shipped name / HF id, or a path to a Hugging Face config.json.
 * @throws SpecError listing the shipped models when nothing matches.
 */
export function loadModel(nameOrPath: string): ModelShape {
  if (nameOrPath.endsWith('.json')) {
    const file = resolve(nameOrPath);
    return parseHfConfig(readJsonFile(file), file);
  }
  const m = findModel(nameOrPath);
  if (!m) throw new SpecError(`unknown model "${nameOrPath}"; shipped: ${listModels().map((x) => x.name).join(', ')} (or give a Hugging Face config.json)`);
  return m;
}

/**
 * A key of the shapes that determine timing (layers, widths, heads, vocabulary, experts): models
 * that differ only in context length or RoPE scaling (Llama-3-8B and Llama-3.1-8B) share it.
 */
export function shapeKey(m: ModelShape): string {
  const moe = m.moe ? `${m.moe.experts}x${m.moe.topK}x${m.moe.expertIntermediate}+${m.moe.sharedIntermediate}` : 'dense';
  return [m.layers, m.hidden, m.heads, m.kvHeads, m.headDim, m.intermediate, m.vocab, m.dtypeBytes, moe].join('/');
}

/** Parameter counts (weights, not bytes) of a model shape. */
export interface ParamCounts {
  /** attention projections per layer: q, k, v, o. */
  attnPerLayer: number;
  /** MLP weights per layer, all experts (dense: gate, up, down). */
  mlpPerLayer: number;
  /** MLP weights one token uses per layer (dense = mlpPerLayer; MoE: topK experts + shared + router). */
  mlpActivePerLayer: number;
  embedding: number;
  lmHead: number;
  /** all weights (embedding and lm_head counted once when tied). */
  total: number;
  /** weights one token uses (attention + active MLP per layer, embedding row excluded, lm_head included). */
  active: number;
}

/** Parameter counts of a shape (norm weights are ignored: < 0.01 %). */
export function paramCounts(m: ModelShape): ParamCounts {
  const qo = 2 * m.hidden * m.heads * m.headDim;
  const kv = 2 * m.hidden * m.kvHeads * m.headDim;
  const attnPerLayer = qo + kv;
  let mlpPerLayer: number;
  let mlpActivePerLayer: number;
  if (m.moe) {
    const expert = 3 * m.hidden * m.moe.expertIntermediate;
    const shared = 3 * m.hidden * m.moe.sharedIntermediate;
    const router = m.hidden * m.moe.experts;
    mlpPerLayer = m.moe.experts * expert + shared + router;
    mlpActivePerLayer = m.moe.topK * expert + shared + router;
  } else {
    mlpPerLayer = 3 * m.hidden * m.intermediate;
    mlpActivePerLayer = mlpPerLayer;
  }
  const embedding = m.vocab * m.hidden;
  const lmHead = m.tiedEmbeddings ? 0 : m.vocab * m.hidden;
  const total = m.layers * (attnPerLayer + mlpPerLayer) + embedding + lmHead;
  const active = m.layers * (attnPerLayer + mlpActivePerLayer) + m.vocab * m.hidden;
  return { attnPerLayer, mlpPerLayer, mlpActivePerLayer, embedding, lmHead, total, active };
}

/** KV bytes per token = layers × 2 × kv_heads × head_dim × dtype bytes (Llama-3-70B bf16: 327,680 B). */
export function kvBytesPerToken(m: ModelShape): number {
  return m.layers * 2 * m.kvHeads * m.headDim * m.dtypeBytes;
}

/**
 * FLOPs per token of the linear layers (2 per multiply-accumulate of every active weight, lm_head
 * included; embedding lookup excluded), and per token of context for attention
 * (QKᵀ and PV: 4 × layers × heads × head_dim per context token).
 */
export function flopsPerToken(m: ModelShape): { linear: number; attentionPerContextToken: number } {
  const p = paramCounts(m);
  return { linear: 2 * p.active, attentionPerContextToken: 4 * m.layers * m.heads * m.headDim };
}

/** The engine's ModelSpec (engine/types.ts) of a shape: paramsB = active parameters (billions) for MoE. */
export function modelSpecOf(m: ModelShape): ModelSpec {
  const p = paramCounts(m);
  return {
    name: m.name,
    layers: m.layers,
    kvHeads: m.kvHeads,
    headDim: m.headDim,
    dtypeBytes: m.dtypeBytes,
    kvBytesPerToken: kvBytesPerToken(m),
    paramsB: Number(((m.moe ? p.active : p.total) / 1e9).toFixed(3)),
  };
}
