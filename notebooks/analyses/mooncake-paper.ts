/**
 * Shared setup of the Mooncake FAST'25 experiments (mooncake-fig5.ts, mooncake-fig13.ts,
 * mooncake-fig15.ts): the paper's node, cluster and metrics, and the table printer.
 *
 * Node (Qin et al., FAST'25 §5.1, Table 1): 8× A800-SXM4-80GB, LLaMA3-70B (TP 8), 4 × 200 Gbps
 * RDMA NICs (800 Gbps), 128 GB/s host-to-device, prefix cache in the node's DRAM (1 TB ≈ 3 M
 * tokens, §3.2 / Fig. 10). kvlab has no A800 profile: the A800 is an A100-SXM4-80GB (same
 * compute, same HBM2e) with NVLink cut from 600 to 400 GB/s (bidirectional), which only slows
 * the tensor-parallel all-reduces. `a800Profile` therefore takes the measured A100 profile
 * (engine/profiles/a100x8-llama3-70b.json) and adds, at every knot of its token curve, the
 * difference of the roofline all-reduce model (sim/profile/derive.ts `rooflineStep`, NCCL model
 * of engine/profiles/roofline/coefficients.json) between an A100 with 300 GB/s and 200 GB/s
 * NVLink per direction.
 *
 * The paper's numbers live in each script beside the figure they come from; nothing in the
 * simulator or in these setups was fitted to them (they are a check).
 */
import { curveMs } from '../../engine/costmodel.js';
import type { ClusterSpec, Profile, TraceRequest } from '../../engine/types.js';
import { resolveCluster, tierTokens } from '../../sim/cluster.js';
import { observed, summarize, type Slo } from '../../sim/metrics.js';
import { rooflineStep } from '../../sim/profile/derive.js';
import { loadRoofline } from '../../sim/profile/roofline.js';
import { loadGpu, loadModel } from '../../sim/profile/specs.js';
import { loadProfile } from '../../sim/profiles.js';
import { simulate } from '../../sim/simulator.js';
import { createStrategy } from '../../engine/strategies/index.js';

/** The base profile of the A800 node. */
export const A100_PROFILE = 'a100x8-llama3-70b';

/** Prefix cache per node in DRAM (tokens): 1 TB ≈ 3 M tokens of LLaMA3-70B (§3.2, Fig. 10). */
export const NODE_DRAM_TOKENS = 3_000_000;

/** RDMA per node: 4 × 200 Gbps (§5.1, Table 1). */
export const NODE_NIC_GBPS = 800;

/**
 * The A800 node's profile (module doc): the A100 profile + the all-reduce slowdown of 400 GB/s
 * NVLink. @returns a new profile named `a800x8-llama3-70b`
 */
export function a800Profile(): Profile {
  const base = loadProfile(A100_PROFILE);
  const a100 = loadGpu('a100-sxm-80gb');
  const a800 = { ...a100, id: 'a800-sxm4-80gb', name: 'NVIDIA A800-SXM4-80GB', interconnect: { ...a100.interconnect, linkGBs: a100.interconnect.linkGBs * (400 / 600) } };
  const model = loadModel('Llama-3-70B');
  const c = loadRoofline();
  const s100 = rooflineStep(a100, model, 8, 1, 'openai-server', c).step;
  const s800 = rooflineStep(a800, model, 8, 1, 'openai-server', c).step;
  const values = base.step.knots.map((T, k) => base.step.values[k]! + Math.max(0, curveMs(s800, T) - curveMs(s100, T)));
  return {
    ...base,
    name: 'a800x8-llama3-70b',
    description: `${base.name} with the tensor-parallel all-reduces of 400 GB/s NVLink (A800) instead of 600 GB/s (notebooks/analyses/mooncake-paper.ts)`,
    step: { ...base.step, values },
  };
}

/** Cluster of the experiments: `nodes` A800 nodes (or `roles` like 8P8D), DRAM prefix cache, 800 Gbps RDMA between nodes. */
export function paperCluster(o: { nodes?: number; roles?: string; peerGbps?: number; profile?: Profile }): ClusterSpec {
  const prof = o.profile ?? a800Profile();
  const gpus = prof.hardware.gpus;
  // the CPU tier in GiB per GPU that holds NODE_DRAM_TOKENS (sim/cluster.ts tierTokens)
  const gib = (NODE_DRAM_TOKENS * prof.model.kvBytesPerToken) / (1073741824 * gpus);
  const r = resolveCluster(null, { profile: A100_PROFILE, instances: o.roles ? undefined : o.nodes, roles: o.roles, cpuTierGB: gib }, A100_PROFILE);
  const spec = r.spec;
  for (const s of spec.instances) s.profile = prof;
  const gbps = o.peerGbps ?? NODE_NIC_GBPS;
  spec.peerLink = { bandwidthGbps: gbps, latencyMs: 0.01, efficiency: 0.825 };
  if (spec.pd) spec.pd = { ...spec.pd, link: { ...spec.pd.link, bandwidthGbps: gbps } };
  void tierTokens;
  return spec;
}

/** Summary figures of one run (s for TTFT, ms for TBT). */
export interface PaperRun {
  strategy: string;
  meanTtftS: number;
  p90TtftS: number;
  meanTbtMs: number;
  p90TbtMs: number;
  /** share of all requests meeting the SLO (Mooncake's effective request capacity). */
  capacity: number;
  rejected: number;
  prefixHit: number;
  /** prompt tokens loaded from the CPU (DRAM) tier / prompt tokens. */
  cpuHit: number;
  /** instance busy time per completed request (s): in a prefill-only run, the prefill GPU time per request (the paper's Fig. 8). */
  gpuTimePerReqS: number;
  wallS: number;
}

/**
 * Simulates `reqs` on `cluster` with a strategy; TTFT/TBT over completed requests, `capacity`
 * against `slo` (rejected requests count as failing it).
 */
export function runPaper(reqs: TraceRequest[], cluster: ClusterSpec, strategy: string, params: Record<string, unknown>, slo: Slo, seed = 1): PaperRun {
  const t0 = performance.now();
  const o = simulate(reqs, { cluster, strategy: createStrategy(strategy, params), seed });
  const obs = observed(o);
  const s = summarize(o, obs, slo);
  return {
    strategy,
    meanTtftS: (s.ttft_ms.mean ?? NaN) / 1000,
    p90TtftS: (s.ttft_ms.p90 ?? NaN) / 1000,
    meanTbtMs: s.tbt_ms.mean ?? NaN,
    p90TbtMs: s.tbt_ms.p90 ?? NaN,
    capacity: s.goodput,
    rejected: s.rejected,
    prefixHit: s.prefix_hit_ratio,
    cpuHit: s.tiers?.cpu_hit_ratio ?? 0,
    gpuTimePerReqS: s.completed ? s.per_instance.reduce((a, x) => a + x.busy_ms, 0) / s.completed / 1000 : NaN,
    wallS: (performance.now() - t0) / 1000,
  };
}

/** Requests with every output cut to one token (a prefill-only run: Fig. 5 and Fig. 13 measure TTFT on the prefill pool). */
export function prefillOnly(reqs: readonly TraceRequest[]): TraceRequest[] {
  return reqs.map((r) => ({ ...r, outputTokens: 1 }));
}

/** Signed relative difference of ours vs the paper's, as "+12 %". */
export function relDiff(ours: number, paper: number): string {
  if (!(paper !== 0)) return '';
  const d = ((ours - paper) / Math.abs(paper)) * 100;
  return `${d >= 0 ? '+' : ''}${d.toFixed(0)} %`;
}

/** A plain-text table (first row = header). */
export function table(rows: ReadonlyArray<ReadonlyArray<string | number>>): string {
  const cells = rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)));
  const w = cells[0]!.map((_, j) => Math.max(...cells.map((r) => (r[j] ?? '').length)));
  return cells.map((r, i) => r.map((c, j) => (j === 0 ? c.padEnd(w[j]!) : c.padStart(w[j]!))).join('  ') + (i === 0 ? '\n' + w.map((x) => '-'.repeat(x)).join('  ') : '')).join('\n');
}

function fmt(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2);
}

/** Spearman-free ordering check: true when `ours` sorts the keys as `paper` does (ascending). */
export function sameOrder(paper: Record<string, number>, ours: Record<string, number>): boolean {
  const keys = Object.keys(paper);
  const a = [...keys].sort((x, y) => paper[x]! - paper[y]!);
  const b = [...keys].sort((x, y) => ours[x]! - ours[y]!);
  return a.every((k, i) => k === b[i]);
}

/** A CLI integer >= 1. @throws Error naming the option otherwise */
export function positiveInt(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${what} must be a positive integer, got ${v}`);
  return n;
}
