/**
 * Shared types of the policy engine. Everything here is plain data: the engine is pure and
 * deterministic (no I/O, no timers, no Date.now()); drivers (sim/, live/) pass time in explicitly.
 *
 * Units: times in ms, lengths in tokens, sizes in bytes, bandwidth in Gbit/s (10^9 bit/s).
 */
import type { TraceRequest } from '../traces/schema.js';

export type { TraceRequest, KnowledgeRef } from '../traces/schema.js';

/**
 * How a request's knowledge reaches the model. `none`: the request carries no knowledge.
 * - `text`: recompute it in prefill;
 * - `kvcache`: load the KV of its leading documents (prefix reuse), prefill the rest;
 * - `hybrid`: load the KV of a leading part, recompute the remainder;
 * - `blend`: load every document's KV wherever it sits and recompute a share of its tokens
 *   (CacheBlend; instances that declare `blend`);
 * - `overlap`: compute the head of the knowledge while the KV of its tail loads, then the rest
 *   (Cake, "Compute Or Load KV Cache? Why Not Both?"; instances that declare `overlap`).
 */
export type Intent = 'none' | 'text' | 'kvcache' | 'hybrid' | 'blend' | 'overlap';

/** Every intent, in the order of their small-integer codes (records, typed arrays). */
export const INTENTS: readonly Intent[] = ['none', 'text', 'kvcache', 'hybrid', 'blend', 'overlap'];

/** A zeroed count per intent. */
export function intentRecord(): Record<Intent, number> {
  return { none: 0, text: 0, kvcache: 0, hybrid: 0, blend: 0, overlap: 0 };
}

/**
 * CacheBlend on an instance (Yao et al., "CacheBlend: Fast Large Language Model Serving for RAG
 * with Cached Knowledge Fusion", EuroSys'25; LMCache's implementation, `lmcache/v1/config.py`
 * keys `enable_blending`, `blend_recompute_ratios`, `blend_check_layers`, `blend_min_tokens`,
 * `blend_special_str`, as in LMCache's `examples/blend_kv_v1`): every document's KV is reused
 * wherever it sits in the prompt; the blender runs the first layers up to the check layer on
 * all reused tokens to find the tokens whose KV deviates most, then recomputes that share of
 * them through the remaining layers.
 */
export interface BlendSpec {
  /** share of the reused tokens recomputed (LMCache `blend_recompute_ratios`, example 0.15). */
  recomputeRatio: number;
  /** index of the layer where the deviating tokens are selected (LMCache `blend_check_layers`, example [1]). */
  checkLayer: number;
}

/** LMCache's example CacheBlend settings: recompute ratio 0.15, check layer 1. */
export const BLEND_DEFAULTS: Readonly<BlendSpec> = Object.freeze({ recomputeRatio: 0.15, checkLayer: 1 });

/** Model constants a profile is measured for. */
export interface ModelSpec {
  name: string;
  layers: number;
  kvHeads: number;
  headDim: number;
  /** bytes per KV element (bf16 = 2). */
  dtypeBytes: number;
  /** layers x 2 x kvHeads x headDim x dtypeBytes (Llama-3-70B bf16: 327,680 B). */
  kvBytesPerToken: number;
  /** parameter count, billions. */
  paramsB: number;
}

/** Hardware one instance runs on (all GPUs of one tensor-parallel group). */
export interface HardwareSpec {
  gpu: string;
  gpus: number;
  /** dense bf16 tensor peak per GPU, TFLOP/s. */
  peakTflops: number;
  /** memory bandwidth per GPU, GB/s. */
  memBandwidthGBs: number;
  /** memory per GPU, GiB. */
  memGiB: number;
}

/** vLLM engine settings of one instance. */
export interface EngineSettings {
  /** vLLM `max_num_batched_tokens`: token budget per iteration. */
  maxNumBatchedTokens: number;
  /** vLLM `max_num_seqs`: running requests cap. */
  maxNumSeqs: number;
  /** vLLM `max_model_len`: longer prompts (+ output) are rejected, never truncated. */
  maxModelLen: number;
  /** KV capacity in tokens (derived from GPU memory minus weights, x gpu_memory_utilization). */
  kvCapacityTokens: number;
  /** vLLM paged-KV block size in tokens (memory is allocated in these units). */
  blockSizeTokens: number;
  /** vLLM `long_prefill_token_threshold` (0 = off): max new tokens per request per step. */
  longPrefillTokenThreshold: number;
  /**
   * vLLM async scheduling (default on since vLLM 0.12 unless incompatible): the scheduler forms
   * step N+1 while step N runs, so a request reaching the engine core during a step waits for
   * the step after the next one. Absent = false (synchronous scheduling, older profiles).
   */
  asyncScheduling?: boolean;
}

/**
 * Iteration ("step") time model of one instance, fitted from measured TTFT/TPOT logs.
 *
 *   stepMs = fixedMs + prefillSeqMs * nPrefillSeqs + decodeSeqMs * nDecodeSeqs
 *            + curve(T) + attnMs + kvReadMs
 *   T       = new tokens in the step (prefill chunk tokens + 1 per decode)
 *   curve   = piecewise-linear in T through (knots[i], values[i]), linear extrapolation past the last knot
 *   attnMs  = slopeLast * sum over prefill chunks of c * (s + c/2) / attnTokens    (s = chunk start position)
 *   kvReadMs = kvReadMsPerToken * (sum of context tokens of decoding requests)
 *
 * A request's TTFT adds `apiMs` (HTTP, tokenisation, first SSE chunk) to the end of the step
 * that completes its prefill; requests reach the engine core `frontendMsPerRequest` apart.
 */
export interface StepModel {
  fixedMs: number;
  prefillSeqMs: number;
  decodeSeqMs: number;
  knots: number[];
  values: number[];
  /** tokens of context at which attention FLOPs equal the linear-layer FLOPs per token. */
  attnTokens: number;
  kvReadMsPerToken: number;
  apiMs: number;
  frontendMsPerRequest: number;
}

/** KV load into the engine (LMCache retrieve from its Redis): fixedMs + msPerGB * GB. */
export interface KvLoadModel {
  fixedMs: number;
  msPerGB: number;
  /** bytes per token as stored by LMCache for this model (after serde compression). */
  bytesPerToken: number;
}

/** One instance timing profile (engine/profiles/*.json). */
export interface Profile {
  name: string;
  /** true when scaled from another profile instead of measured. */
  derived: boolean;
  description: string;
  source: string;
  model: ModelSpec;
  hardware: HardwareSpec;
  engine: EngineSettings;
  step: StepModel;
  kvLoad: KvLoadModel;
  /** extra ms on the first request an instance ever serves (CUDA graphs, warm-up). */
  coldStartMs: number;
  /** fit quality, free-form (MAPE per batch size etc.). */
  fit?: Record<string, unknown>;
  /**
   * Per term (step.fixedMs, step.knots/values, engine.kvCapacityTokens, ...): where its value comes
   * from. `measured` = read or fitted from measurements of this hardware and model; `scaled` =
   * measured on other hardware/model and scaled; `derived` = computed (roofline, memory
   * arithmetic) from specs and learned efficiencies; `assumed` = a stated assumption.
   */
  provenance?: Record<string, TermProvenance>;
}

/** Where one profile term comes from (Profile.provenance). */
export interface TermProvenance {
  kind: 'measured' | 'scaled' | 'derived' | 'assumed';
  source: string;
}

/** A KV link KDN -> instance. Transfers on one link are served FIFO. */
export interface LinkSpec {
  /** Gbit/s. */
  bandwidthGbps: number;
  /** one-way latency added to every transfer, ms. */
  latencyMs: number;
  /** achievable fraction of the bandwidth (CacheRoute: 0.825). */
  efficiency: number;
}

/** A knowledge delivery node. */
export interface KdnSpec {
  id: string;
  /** KV compression factor (CacheGen ~3.5-4.3); bytes on the wire = raw / compression. */
  compression: number;
  /** kids this KDN holds with KV ready; null = every knowledge item. */
  knowledge: Set<string> | null;
  /** per-fetch fixed cost of a text fetch (RTT + processing), ms. */
  textFetchMs: number;
  /**
   * The KDN holds the KV of document sequences (built per leading sequence, a knowledge tree),
   * so prefix reuse covers every leading document it holds. false (default): the KV of each
   * document was built alone right after the chat template, so prefix reuse covers the first
   * document only (chained chunk hashes: a later document's KV depends on what precedes it);
   * `blend` reuses every document regardless.
   */
  sequences?: boolean;
}

/**
 * What an instance serves in a disaggregated (P/D) deployment: `prefill` = prompts only (its KV
 * moves to a decode instance after the first token), `decode` = decodes requests prefilled
 * elsewhere and may also run a whole request itself (a local prefill, as Dynamo's conditional
 * disaggregation and llm-d's P/D decider send short or cached prompts to the decode worker),
 * `mixed` = both (a vLLM instance without a P/D role; the default).
 */
export type InstanceRole = 'prefill' | 'decode' | 'mixed';

/**
 * KV tiers below the GPU of one instance (LMCache `local_cpu` / vLLM's CPU offloading): blocks the
 * GPU evicts are demoted to CPU memory; a CPU hit is loaded back over the host link instead of
 * being recomputed.
 */
export interface TierSpec {
  /** CPU tier capacity in tokens (LMCache `max_local_cpu_size` GB × 1e9 / KV bytes per token); 0 = no CPU tier. */
  cpuTokens: number;
  /** host-to-device bandwidth used to load CPU hits, GB/s (10^9 B/s). */
  hostLinkGBps: number;
  /** fixed cost of one CPU-tier load (retrieve call), ms. */
  hostLoadFixedMs: number;
  /**
   * `demote` (default): a block enters the CPU tier when the GPU evicts it (exclusive-ish, the
   * brief's model and vLLM's OffloadingConnector on eviction); `write-through`: every block the GPU
   * computes is also stored to CPU (LMCache's store path).
   */
  cpuPolicy: 'demote' | 'write-through';
  /**
   * Remote tier (the instance's LMCache Redis backend) capacity in tokens: 0 = none, Infinity =
   * unbounded. Blocks the CPU tier evicts are demoted to it; a remote hit loads with the profile's
   * `kvLoad` model (LMCache's Redis retrieve, CacheRoute's fit).
   */
  remoteTokens: number;
}

/** One serving instance as the engine sees it. */
export interface InstanceSpec {
  /** stable index 0..n-1 (used in arrays). */
  index: number;
  id: string;
  profile: Profile;
  engine: EngineSettings;
  /** CacheBlend settings when the instance supports the `blend` intent (absent = it does not). */
  blend?: BlendSpec;
  /** the instance overlaps computing the head of the knowledge with loading the KV of its tail (`overlap` intent). */
  overlap?: boolean;
  /** P/D role; absent = `mixed`. */
  role?: InstanceRole;
  /** KV tiers below the GPU; absent = GPU only. */
  tiers?: TierSpec;
}

/**
 * Prefill -> decode KV hand-off of a disaggregated cluster. The prompt's raw KV
 * (prompt tokens × `kvBytesPerToken` bytes) moves P -> D on `link`, FIFO per (P, D) pair.
 */
export interface PdSpec {
  /** the P -> D KV link (RDMA NICs between nodes). */
  link: LinkSpec;
  /**
   * Stream the KV layer by layer while P computes (Mooncake §3.1 step 3, vLLM's NIXL/LMCache
   * layer-wise pipelines): the transfer may start when P starts the prefill and ends at
   * max(start + transfer, prefill end + transfer / layers). false = it starts when the prefill ends.
   */
  layerwise: boolean;
  /**
   * Which instance emits the token the client sees first. `prefill` (Mooncake, Dynamo): P's first
   * token is streamed at once, the second comes from D after the transfer, so the first token gap
   * includes the transfer. `decode` (vLLM's disaggregated-serving proxy): P's token is discarded,
   * D recomputes the last prompt token after the transfer and streams every token, so TTFT
   * includes the transfer.
   */
  firstToken: 'prefill' | 'decode';
}

/** The whole cluster: instances, KDNs and the link matrix links[kdn][instance]. */
export interface ClusterSpec {
  instances: InstanceSpec[];
  kdns: KdnSpec[];
  links: LinkSpec[][];
  /**
   * Instance -> instance KV link (the same for every pair), used when a strategy moves a prefix
   * between instances (Mooncake's cache load balancing); default `PEER_LINK_DEFAULT`.
   */
  peerLink?: LinkSpec;
  /** delay between a KV event on an instance and the engine seeing it, ms. */
  kvEventDelayMs: number;
  /** P/D hand-off settings; absent = no instance has a P/D role (every instance is mixed). */
  pd?: PdSpec;
  /** LMCache chunk size for KV injection, tokens (256). */
  chunkTokens: number;
}

/** Predicted (or observed) TTFT breakdown, ms. ttftMs = prepare-side + instance-side parts. */
export interface Breakdown {
  /** knowledge preparation before the link (text fetch, classification), ms. */
  prepareMs: number;
  /** wait for the KDN link to be free, ms. */
  linkWaitMs: number;
  /** KV transfer on the link, ms. */
  transferMs: number;
  /** KV load into the engine (LMCache retrieve), ms. */
  kvLoadMs: number;
  /** queueing inside the instance before the request's prefill completes its first step, ms. */
  queueMs: number;
  /** prefill compute of the non-reused tokens, ms. */
  prefillMs: number;
  /** time to first token, ms. */
  ttftMs: number;
}

/** A scored option the strategy considered (chosen or rejected). */
export interface Alternative {
  instance: number;
  intent: Intent;
  /** the strategy's own score (lower is better unless the strategy says otherwise). */
  score: number;
  /** predicted TTFT for this option when the strategy computes one, ms. */
  ttftMs?: number;
  /** hybrid split point (tokens loaded as KV) when intent is hybrid; overlap: first token of the loaded tail. */
  reusedTokens?: number;
}

/** What the engine decided for one request. */
export interface Decision {
  requestId: string;
  strategy: string;
  /** chosen instance index. */
  instance: number;
  /** chosen KDN index, or -1 when no KDN is involved. */
  kdn: number;
  intent: Intent;
  /**
   * knowledge tokens whose KV comes from the KDN: kvcache/hybrid/overlap = the end of the loaded
   * prompt prefix (the local hit below it is not transferred); blend = the tokens of every
   * document span loaded (chunk-aligned per document).
   */
  reusedTokens: number;
  /** overlap: the split point, prompt tokens [cached, split) computed while [split, reusedTokens) loads. */
  overlapSplit?: number;
  /** predicted prefix-cache hit tokens on the chosen instance (local GPU cache). */
  cachedTokens: number;
  /** predicted breakdown with the cost model (every strategy gets one, for diffing). */
  predicted: Breakdown;
  /** every option scored, including the chosen one. */
  alternatives: Alternative[];
  /** short machine-readable reason, e.g. "min-cost", "imbalance-fallback". */
  reason: string;
  /**
   * Output tokens the engine assumed for this request at decision time: the client's
   * `max_tokens`, else the output-length predictor's estimate. Never the true length.
   */
  expectedOutputTokens: number;
  /**
   * Set when the strategy rejected the request (admission control: Mooncake's early rejection,
   * HTTP 429): the request is not dispatched and counts as rejected. The text says why.
   */
  rejected?: string;
  /** KV of `tokens` prompt-prefix tokens moved from instance `from` to the chosen one before prefill. */
  peer?: { from: number; tokens: number };
  /**
   * Disaggregated execution: the decode instance (`instance` is then the prefill instance). Absent
   * = colocated: `instance` runs prefill and decode.
   */
  decode?: number;
  /** predicted P -> D hand-off of a disaggregated decision: link wait and transfer (ms), TBT on D (ms). */
  pdPredicted?: { linkWaitMs: number; transferMs: number; tbtMs: number };
}

/**
 * Engine metrics of one instance as a metrics-scraping router sees them (vLLM `/metrics`:
 * `vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`), with
 * the time they were scraped (ms).
 */
export interface InstanceMetrics {
  waiting: number;
  running: number;
  /** KV cache usage, 0..1. */
  kvUsage: number;
  at: number;
}

/**
 * A request as strategies see it: everything but the true output length (`outputTokens`),
 * which no real router knows at decision time. `maxTokens` is the client's bound when given.
 */
export type CausalRequest = Omit<TraceRequest, 'outputTokens'>;

/**
 * Storage tier of a KV event (vLLM's `medium` field of BlockStored/BlockRemoved: "GPU", "CPU" for
 * its offloading connector; kvlab names the LMCache remote backend's tier "REMOTE", which Dynamo
 * calls External/Disk).
 */
export type KvMedium = 'GPU' | 'CPU' | 'REMOTE';

/** A KV cache event from an instance (vLLM BlockStored/BlockRemoved/AllBlocksCleared). */
export interface KvEvent {
  instance: number;
  kind: 'stored' | 'removed' | 'cleared';
  /** chained block hashes (trace block ids) concerned; empty for `cleared`. */
  blocks: number[];
  /**
   * Tier the event is about (vLLM `medium`: "GPU" for the device cache, "CPU" for its offloading
   * connector's host tier); absent = GPU. `cleared` without a medium clears every tier.
   */
  medium?: KvMedium;
}

/** Per-request scalar summary the engine needs; derived once from a TraceRequest. */
export type EngineRequest = TraceRequest;
