/**
 * Simulator fidelity on real vLLM 0.19 serving runs (LLMServingSim's ground truth,
 * ../shared/data/profiles/public/llmservingsim_bench_vllm019_rtx): for each run,
 * `kvlab import RUN --out DIR` (profile derived for its GPU and model: none of these runs is used
 * to fit anything), `kvlab sim --trace DIR/trace.jsonl --cluster DIR/cluster.yaml`, and
 * `kvlab diff DIR DIR/sim`; prints the TTFT / TPOT / E2E mean and p90 errors and the per-request
 * TTFT MAPE as a Markdown table (docs/BENCHMARKS.md), and --json for the raw fidelity.json files.
 *
 * Usage: node dist/bench/fidelity.js [--out DIR] [--json]
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const args = process.argv.slice(2);
const root = resolve(import.meta.dirname, '../..');
const data = resolve(root, '../shared/data/profiles/public/llmservingsim_bench_vllm019_rtx');
if (!existsSync(data)) {
  console.log(`skipped: ${data} not found (the shared LLMServingSim runs are needed for this benchmark)`);
  process.exit(0);
}
const outIdx = args.indexOf('--out');
const out = outIdx >= 0 ? resolve(args[outIdx + 1]!) : mkdtempSync(join(tmpdir(), 'kvlab-fidelity-'));
const cli = resolve(root, 'dist/bin/kvlab.js');
const runs = ['RTX4090_Llama-3.1-8B', 'RTXPRO6000_Llama-3.1-8B', 'RTXPRO6000_Qwen3-32B', 'RTXPRO6000_Qwen3-30B-A3B-Instruct-2507'];
const kvlab = (a: string[]) => execFileSync(process.execPath, [cli, ...a], { encoding: 'utf8' });
const pct = (x: number | null | undefined) => (x === null || x === undefined ? '—' : `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)}%`);
const rows: string[] = [];
const all: Record<string, unknown> = {};
for (const r of runs) {
  const dir = join(out, r);
  process.stderr.write(`fidelity: ${r} ...\n`);
  const imp = JSON.parse(kvlab(['import', join(data, r), '--out', dir, '--json'])) as { profile: string; profile_choice: string; commands: string[] };
  const strategy = /--strategy (\S+)/.exec(imp.commands[0]!)![1]!;
  kvlab(['sim', '--trace', join(dir, 'trace.jsonl'), '--cluster', join(dir, 'cluster.yaml'), '--strategy', strategy, '--out', join(dir, 'sim'), '--quiet', '--json']);
  kvlab(['diff', dir, join(dir, 'sim'), '--out', join(dir, 'fidelity.json'), '--json']);
  const f = JSON.parse(readFileSync(join(dir, 'fidelity.json'), 'utf8'));
  all[r] = f;
  const a = f.aggregate;
  rows.push(
    `| ${r} | ${imp.profile_choice.replace(/^derived: /, '')} | ${pct(a.ttft_ms.mean.relErr)} | ${pct(a.ttft_ms.p90.relErr)} | ${pct(a.tpot_ms.mean.relErr)} | ${pct(a.tpot_ms.p90.relErr)} | ${pct(a.e2e_ms.mean.relErr)} | ${pct(a.e2e_ms.p90.relErr)} | ${pct(f.perRequest?.ttft_ms.mape)} | ${pct(f.perRequest?.e2e_ms.mape)} |`,
  );
}
if (args.includes('--json')) {
  process.stdout.write(JSON.stringify(all, null, 1) + '\n');
} else {
  process.stdout.write(
    [
      '| run (vLLM 0.19) | profile | TTFT mean | TTFT p90 | TPOT mean | TPOT p90 | E2E mean | E2E p90 | per-request TTFT MAPE | per-request E2E MAPE |',
      '|---|---|---|---|---|---|---|---|---|---|',
      ...rows,
    ].join('\n') + `\n\n(run directories in ${out})\n`,
  );
}
