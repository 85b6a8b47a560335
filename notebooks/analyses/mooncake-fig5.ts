/**
 * Mooncake FAST'25 Fig. 5 (§4.1 "prefill global scheduling"): average TTFT of four prefill
 * schedulers on the conversation trace with 16 prefill nodes, ours beside the paper's.
 *
 *   node dist/notebooks/analyses/mooncake-fig5.js [--trace FILE] [--json]
 *
 * Schedulers → kvlab strategies: random → `random`; load balancing → `least-load` (least booked
 * prefill work); local cache-aware → `mooncake-local` (Algorithm 1 without KV transfer: each
 * node's own prefix cache); global cache-aware → `mooncake` (Algorithm 1 with the cache load
 * balancing transfer from the node holding the longest prefix).
 * Setup (notebooks/analyses/mooncake-paper.ts): 16 A800 nodes (A100 profile + 400 GB/s NVLink),
 * DRAM prefix cache of 3 M tokens per node, 800 Gbps between nodes, the trace replayed at its
 * timestamps. Only the prefill pool is simulated: every output is cut to one token, so TTFT is
 * the prefill pool's (the paper's decode pool does not touch it).
 */
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { DEFAULT_SLO } from '../../sim/metrics.js';
import { loadMooncake } from '../../traces/mooncake.js';
import { a800Profile, paperCluster, prefillOnly, relDiff, runPaper, sameOrder, table, type PaperRun } from './mooncake-paper.js';

/** Fig. 5 of the paper, average TTFT (s) on the conversation trace, 16 prefill nodes. */
export const PAPER_FIG5_TTFT_S: Record<string, number> = { random: 19.65, 'load balancing': 5.27, 'local cache-aware': 3.58, 'global cache-aware': 3.07 };

/**
 * Fig. 8 of the paper: Mooncake's prefill GPU time per request on the conversation trace (s), a
 * check of the node's speed independent of the load (ours: busy time per request of the
 * global cache-aware run).
 */
export const PAPER_FIG8_CONV_GPU_S = 1.06;

/** Scheduler name → kvlab strategy. */
export const FIG5_STRATEGIES: Record<string, string> = { random: 'random', 'load balancing': 'least-load', 'local cache-aware': 'mooncake-local', 'global cache-aware': 'mooncake' };

const program = new Command('mooncake-fig5')
  .description("Mooncake FAST'25 Fig. 5: TTFT of random / load-balancing / local / global cache-aware prefill scheduling on the conversation trace, 16 prefill nodes")
  .option('--trace <file>', 'Mooncake conversation trace', resolve('..', 'shared', 'data', 'traces', 'mooncake', 'conversation_trace.jsonl'))
  .option('--nodes <n>', 'prefill nodes', '16')
  .option('--seed <n>', 'seed', '1')
  .option('--limit <n>', 'only the first n requests of the trace')
  .option('--json', 'print the results as JSON');

async function main(): Promise<void> {
  const o = program.parse().opts<{ limit?: string; trace: string; nodes: string; seed: string; json?: boolean }>();
  if (!existsSync(o.trace)) throw new Error(`trace not found: ${o.trace} (pass --trace)`);
  const nodes = Number(o.nodes);
  if (!Number.isInteger(nodes) || nodes < 1) throw new Error(`--nodes must be a positive integer, got ${o.nodes}`);
  const limit = o.limit !== undefined ? Number(o.limit) : undefined;
  if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1)) throw new Error(`--limit must be a positive integer, got ${o.limit}`);
  const reqs = prefillOnly((await loadMooncake(o.trace, { limit })).requests);
  const prof = a800Profile();
  const runs: Record<string, PaperRun> = {};
  for (const [name, strategy] of Object.entries(FIG5_STRATEGIES)) {
    process.stderr.write(`mooncake-fig5: ${name} (${strategy}) on ${nodes} nodes, ${reqs.length} requests...\n`);
    runs[name] = runPaper(reqs, paperCluster({ nodes, profile: prof }), strategy, {}, DEFAULT_SLO, Number(o.seed));
    process.stderr.write(`mooncake-fig5: ${name}: mean TTFT ${runs[name]!.meanTtftS.toFixed(2)} s (${runs[name]!.wallS.toFixed(1)} s wall)\n`);
  }
  const ours = Object.fromEntries(Object.entries(runs).map(([k, r]) => [k, r.meanTtftS]));
  const order = sameOrder(PAPER_FIG5_TTFT_S, ours);
  if (o.json) {
    process.stdout.write(JSON.stringify({ figure: "Mooncake FAST'25 Fig. 5", nodes, paper_mean_ttft_s: PAPER_FIG5_TTFT_S, runs, same_order: order }, null, 2) + '\n');
    return;
  }
  const rows: Array<Array<string | number>> = [['scheduler (kvlab strategy)', 'paper TTFT s', 'ours TTFT s', 'diff', 'ours p90 s', 'GPU hit', 'DRAM hit', 'GPU s/req']];
  for (const [name, r] of Object.entries(runs)) rows.push([`${name} (${FIG5_STRATEGIES[name]})`, PAPER_FIG5_TTFT_S[name]!, r.meanTtftS, relDiff(r.meanTtftS, PAPER_FIG5_TTFT_S[name]!), r.p90TtftS, r.prefixHit, r.cpuHit, r.gpuTimePerReqS]);
  const g = runs['global cache-aware']!.gpuTimePerReqS;
  process.stdout.write(
    `Mooncake FAST'25 Fig. 5: average TTFT, conversation trace, ${nodes} prefill nodes (A800 = A100 profile + 400 GB/s NVLink)\n\n${table(rows)}\n\n` +
      `same ordering as the paper: ${order ? 'yes' : 'no'}\n` +
      `prefill GPU time per request (global cache-aware): ours ${g.toFixed(2)} s, paper Fig. 8 ${PAPER_FIG8_CONV_GPU_S} s (${relDiff(g, PAPER_FIG8_CONV_GPU_S)})${Math.abs(g / PAPER_FIG8_CONV_GPU_S - 1) <= 0.25 ? ": the node's speed is within 25 %, so a TTFT gap is queueing (the paper does not give its replay rate; ours replays the trace at its timestamps)" : ''}\n`,
  );
}

main().catch((e: unknown) => {
  process.stderr.write(`mooncake-fig5: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
