/**
 * Mooncake FAST'25 Fig. 13 (§5.3): average TTFT on the synthetic trace against the bandwidth
 * between nodes (24-400 Gbps), with the cache load balancing that moves prefix KV between nodes,
 * beside a recompute baseline; ours beside the paper's.
 *
 *   node dist/notebooks/analyses/mooncake-fig13.js [--gbps 24,50,100,200,400] [--json]
 *
 * Strategies: `mooncake` (Algorithm 1: a prefix cached on another node is moved over the
 * inter-node link when that predicts a lower TTFT) on the bandwidth swept; recompute =
 * `mooncake-local` (each node's own cache only, nothing moved; independent of the bandwidth).
 * Trace: the paper's synthetic trace is not in ../shared; traces/mooncake-synthetic.ts generates
 * one with the statistics of its Table 2 (3,993 requests, 15.3 K average input, 66 % cache
 * ratio; printed below), Poisson arrivals at `--rate` (default 3.34 req/s, the conversation
 * trace's 12,031 requests per hour: the paper gives no rate). Setup as in Fig. 5
 * (mooncake-paper.ts): 16 A800 nodes, 3 M tokens of DRAM prefix cache per node, outputs cut to
 * one token (TTFT of the prefill pool).
 */
import { Command } from 'commander';
import { DEFAULT_SLO } from '../../sim/metrics.js';
import { generateMooncakeSynthetic, MOONCAKE_SYNTHETIC_TABLE2, mooncakeSyntheticStats } from '../../traces/mooncake-synthetic.js';
import { a800Profile, paperCluster, positiveInt, prefillOnly, relDiff, runPaper, table, type PaperRun } from './mooncake-paper.js';

/**
 * What Fig. 13 shows (read off the figure, §5.3 text): average TTFT ≈ 5 s at the lowest bandwidth
 * (24 Gbps), below 2 s from 100 Gbps up, the recompute baseline ≈ 2.6 s.
 */
export const PAPER_FIG13 = { ttftAtLowestS: 5, ttftAbove100S: 2, recomputeS: 2.6 } as const;

const program = new Command('mooncake-fig13')
  .description("Mooncake FAST'25 Fig. 13: TTFT against inter-node bandwidth (24-400 Gbps) on the synthetic trace, vs recomputation")
  .option('--gbps <list>', 'inter-node bandwidths, Gbit/s', '24,50,100,200,400')
  .option('--nodes <n>', 'prefill nodes', '16')
  .option('--rate <r>', 'Poisson arrival rate of the synthetic trace, req/s', '3.34')
  .option('--seed <n>', 'seed (trace and simulator)', '1')
  .option('--requests <n>', 'requests of the synthetic trace (the paper: 3,993)', '3993')
  .option('--json', 'print the results as JSON');

async function main(): Promise<void> {
  const o = program.parse().opts<{ requests: string; gbps: string; nodes: string; rate: string; seed: string; json?: boolean }>();
  const gbps = o.gbps.split(',').map(Number);
  if (gbps.some((g) => !(g > 0))) throw new Error(`--gbps must be positive numbers, got ${o.gbps}`);
  const nodes = Number(o.nodes);
  const rate = Number(o.rate);
  if (!Number.isInteger(nodes) || nodes < 1) throw new Error(`--nodes must be a positive integer, got ${o.nodes}`);
  if (!(rate > 0)) throw new Error(`--rate must be positive, got ${o.rate}`);
  const full = generateMooncakeSynthetic({ rate, seed: Number(o.seed), requests: positiveInt(o.requests, '--requests') });
  const stats = mooncakeSyntheticStats(full);
  const reqs = prefillOnly(full);
  const prof = a800Profile();
  process.stderr.write(`mooncake-fig13: recompute (mooncake-local) on ${nodes} nodes, ${reqs.length} requests...\n`);
  const recompute = runPaper(reqs, paperCluster({ nodes, profile: prof }), 'mooncake-local', {}, DEFAULT_SLO, Number(o.seed));
  const sweep: Array<{ gbps: number; run: PaperRun }> = [];
  for (const g of gbps) {
    process.stderr.write(`mooncake-fig13: mooncake at ${g} Gbps...\n`);
    sweep.push({ gbps: g, run: runPaper(reqs, paperCluster({ nodes, profile: prof, peerGbps: g }), 'mooncake', {}, DEFAULT_SLO, Number(o.seed)) });
  }
  if (o.json) {
    process.stdout.write(JSON.stringify({ figure: "Mooncake FAST'25 Fig. 13", nodes, rate, trace: { ours: stats, paper_table2: MOONCAKE_SYNTHETIC_TABLE2 }, paper: PAPER_FIG13, recompute, sweep }, null, 2) + '\n');
    return;
  }
  const lowest = sweep[0]!;
  const rows: Array<Array<string | number>> = [['bandwidth', 'ours TTFT s', 'ours p90 s', 'moved GB', 'paper']];
  for (const s of sweep) rows.push([`${s.gbps} Gbps`, s.run.meanTtftS, s.run.p90TtftS, '', s === lowest ? `≈ ${PAPER_FIG13.ttftAtLowestS} s (lowest)` : s.gbps >= 100 ? `< ${PAPER_FIG13.ttftAbove100S} s` : '']);
  rows.push(['recompute (mooncake-local)', recompute.meanTtftS, recompute.p90TtftS, '', `≈ ${PAPER_FIG13.recomputeS} s`]);
  for (const r of rows) r.splice(3, 1);
  const above = sweep.filter((s) => s.gbps >= 100);
  process.stdout.write(
    `Mooncake FAST'25 Fig. 13: average TTFT vs inter-node bandwidth, synthetic trace (ours: ${stats.requests} requests, avg input ${stats.avgInput.toFixed(0)} (paper ${MOONCAKE_SYNTHETIC_TABLE2.avgInput}), cache ratio ${(stats.cacheRatio * 100).toFixed(0)} % (paper ${MOONCAKE_SYNTHETIC_TABLE2.cacheRatio * 100} %), ${rate} req/s), ${nodes} prefill nodes\n\n${table(rows)}\n\n` +
      `lowest bandwidth vs paper ≈ ${PAPER_FIG13.ttftAtLowestS} s: ${relDiff(lowest.run.meanTtftS, PAPER_FIG13.ttftAtLowestS)}; recompute vs paper ≈ ${PAPER_FIG13.recomputeS} s: ${relDiff(recompute.meanTtftS, PAPER_FIG13.recomputeS)}\n` +
      `from 100 Gbps up below recompute: ${above.every((s) => s.run.meanTtftS < recompute.meanTtftS) ? 'yes' : 'no'}; lowest bandwidth above recompute: ${lowest.run.meanTtftS > recompute.meanTtftS ? 'yes' : 'no'}\n`,
  );
}

main().catch((e: unknown) => {
  process.stderr.write(`mooncake-fig13: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
