/**
 * Mooncake FAST'25 Fig. 15 (§5.4): the P:D ratio of a 16-node cluster on the synthetic trace —
 * TTFT, TBT and effective request capacity (share of requests with TTFT ≤ 10 s and TBT ≤ 100 ms,
 * TBT = mean of the longest 10 % token gaps) from 5P11D to 11P5D; ours beside the paper's.
 *
 *   node dist/notebooks/analyses/mooncake-fig15.js [--ratios 5,6,7,8,9,10,11] [--json]
 *
 * Strategy `mooncake` (Algorithm 1: prefill node by predicted TTFT with cache load balancing,
 * decode node by predicted TBT), prefill on P, the prompt's KV to D over the 800 Gbps RDMA link
 * layer-wise during the prefill (§3.1 step 3), decode on D; early rejection (§4.1: a request whose
 * predicted TTFT or TBT exceeds the SLO is refused, and counts as failing it). Trace and nodes as in Fig. 13
 * (traces/mooncake-synthetic.ts, Table 2 statistics; 16 A800 nodes, 3 M tokens of DRAM prefix
 * cache each; Poisson at `--rate`, default 3.34 req/s: the paper gives no rate), full outputs.
 */
import { Command } from 'commander';
import { generateMooncakeSynthetic, mooncakeSyntheticStats } from '../../traces/mooncake-synthetic.js';
import { a800Profile, paperCluster, positiveInt, relDiff, runPaper, table, type PaperRun } from './mooncake-paper.js';

/** Fig. 15 of the paper: effective request capacity (share of requests) per prefill-node count of 16 nodes. */
export const PAPER_FIG15_CAPACITY: Record<number, number> = { 5: 0.775, 6: 0.97, 7: 0.99, 8: 0.99, 9: 0.99, 10: 0.98, 11: 0.86 };

/** SLO of Fig. 15: TTFT 10 s, TBT 100 ms. */
export const FIG15_SLO = { ttftMs: 10_000, tbtMs: 100 };

const program = new Command('mooncake-fig15')
  .description("Mooncake FAST'25 Fig. 15: TTFT, TBT and effective request capacity against the P:D ratio of 16 nodes on the synthetic trace")
  .option('--ratios <list>', 'prefill nodes out of 16', '5,6,7,8,9,10,11')
  .option('--nodes <n>', 'nodes in all', '16')
  .option('--rate <r>', 'Poisson arrival rate of the synthetic trace, req/s', '3.34')
  .option('--seed <n>', 'seed (trace and simulator)', '1')
  .option('--requests <n>', 'requests of the synthetic trace (the paper: 3,993)', '3993')
  .option('--no-early-rejection', "mooncake without its early rejection (Algorithm 1 lines 18-19) at the SLO")
  .option('--json', 'print the results as JSON');

async function main(): Promise<void> {
  const o = program.parse().opts<{ earlyRejection: boolean; requests: string; ratios: string; nodes: string; rate: string; seed: string; json?: boolean }>();
  const nodes = Number(o.nodes);
  const rate = Number(o.rate);
  const ps = o.ratios.split(',').map(Number);
  if (!Number.isInteger(nodes) || nodes < 2) throw new Error(`--nodes must be an integer >= 2, got ${o.nodes}`);
  if (ps.some((p) => !Number.isInteger(p) || p < 1 || p >= nodes)) throw new Error(`--ratios must be integers in [1, ${nodes - 1}], got ${o.ratios}`);
  if (!(rate > 0)) throw new Error(`--rate must be positive, got ${o.rate}`);
  const reqs = generateMooncakeSynthetic({ rate, seed: Number(o.seed), requests: positiveInt(o.requests, '--requests') });
  const stats = mooncakeSyntheticStats(reqs);
  const prof = a800Profile();
  const runs: Array<{ p: number; d: number; run: PaperRun }> = [];
  for (const p of ps) {
    const roles = `${p}P${nodes - p}D`;
    process.stderr.write(`mooncake-fig15: ${roles}, ${reqs.length} requests...\n`);
    const c = paperCluster({ roles, profile: prof });
    c.pd = { ...c.pd!, layerwise: true };
    const run = runPaper(reqs, c, 'mooncake', o.earlyRejection ? { ttftSloMs: FIG15_SLO.ttftMs, tbtSloMs: FIG15_SLO.tbtMs } : {}, FIG15_SLO, Number(o.seed));
    runs.push({ p, d: nodes - p, run });
    process.stderr.write(`mooncake-fig15: ${roles}: capacity ${(run.capacity * 100).toFixed(1)} %, TTFT ${run.meanTtftS.toFixed(2)} s, TBT ${run.meanTbtMs.toFixed(0)} ms (${run.wallS.toFixed(1)} s wall)\n`);
  }
  if (o.json) {
    process.stdout.write(JSON.stringify({ figure: "Mooncake FAST'25 Fig. 15", nodes, rate, trace: stats, slo: FIG15_SLO, paper_capacity: PAPER_FIG15_CAPACITY, runs }, null, 2) + '\n');
    return;
  }
  const rows: Array<Array<string | number>> = [['P:D', 'paper capacity %', 'ours capacity %', 'diff', 'ours TTFT s', 'ours TBT ms', 'ours p90 TBT ms']];
  for (const r of runs) {
    const paper = PAPER_FIG15_CAPACITY[r.p];
    rows.push([`${r.p}P${r.d}D`, paper !== undefined ? paper * 100 : '', r.run.capacity * 100, paper !== undefined ? relDiff(r.run.capacity, paper) : '', r.run.meanTtftS, r.run.meanTbtMs, r.run.p90TbtMs]);
  }
  const best = runs.reduce((a, b) => (b.run.capacity > a.run.capacity ? b : a));
  process.stdout.write(
    `Mooncake FAST'25 Fig. 15: P:D ratio on ${nodes} nodes, synthetic trace (${stats.requests} requests, ${rate} req/s), SLO TTFT ${FIG15_SLO.ttftMs / 1000} s, TBT ${FIG15_SLO.tbtMs} ms\n\n${table(rows)}\n\n` +
      `best ratio: ours ${best.p}P${best.d}D (paper: 7P9D-9P7D, about 1:1); TTFT falls and TBT rises with P in the paper\n`,
  );
}

main().catch((e: unknown) => {
  process.stderr.write(`mooncake-fig15: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
