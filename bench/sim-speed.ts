/**
 * Simulator speed benchmark (issue "simulator", Done means): the whole Mooncake conversation
 * trace (12,031 requests), 16 instances, `dynamo-kv`, measured for the WHOLE process
 * (`node dist/bin/kvlab.js sim ...`: start-up, trace parsing, simulation, writing records.jsonl,
 * summary.json, timeseries.json). Prints wall time, simulated requests per wall-second and the
 * child's peak RSS (from its summary.json), best and median of N runs.
 *
 * Usage: node dist/bench/sim-speed.js [--runs N] [--strategy S] [--trace FILE] [--instances N]
 * Anchor: NVIDIA DynoSim (Rust) replays 23,608 Mooncake requests in 2.41 s (≈ 9,800 req/s).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const args = process.argv.slice(2);
const opt = (name: string, def: string): string => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : def;
};
const root = resolve(import.meta.dirname, '../..');
const trace = opt('trace', resolve(root, '../shared/data/traces/mooncake/conversation_trace.jsonl'));
const strategy = opt('strategy', 'dynamo-kv');
const instances = opt('instances', '16');
const runs = Number(opt('runs', '5'));
if (!existsSync(trace)) {
  console.log(`skipped: ${trace} not found (the shared Mooncake trace is needed for this benchmark)`);
  process.exit(0);
}
const cli = resolve(root, 'dist/bin/kvlab.js');
const rows: { wall: number; rss: number; reqs: number }[] = [];
for (let k = 0; k < runs; k++) {
  const out = mkdtempSync(join(tmpdir(), 'kvlab-speed-'));
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [cli, 'sim', '--trace', trace, '--strategy', strategy, '--instances', instances, '--out', out, '--quiet'], { encoding: 'utf8' });
  const wall = performance.now() - t0;
  if (r.status !== 0) throw new Error(`kvlab sim failed: ${r.stderr}`);
  const s = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
  rows.push({ wall, rss: s.peak_rss_mib, reqs: s.requests });
  console.log(`run ${k + 1}: ${wall.toFixed(0)} ms wall, ${Math.round((s.requests / wall) * 1000)} req/s, peak RSS ${s.peak_rss_mib} MiB, in-process sim ${s.wall_ms} ms`);
}
const walls = rows.map((r) => r.wall).sort((a, b) => a - b);
const med = walls[Math.floor(walls.length / 2)]!;
const reqs = rows[0]!.reqs;
console.log(`\n| trace | strategy | instances | requests | best wall (ms) | median wall (ms) | req/s (median) | peak RSS (MiB) | node | cpu |`);
console.log(`|---|---|---|---|---|---|---|---|---|---|`);
console.log(`| ${trace.split('/').pop()} | ${strategy} | ${instances} | ${reqs} | ${walls[0]!.toFixed(0)} | ${med.toFixed(0)} | ${Math.round((reqs / med) * 1000)} | ${Math.max(...rows.map((r) => r.rss))} | ${process.version} | ${cpus()[0]?.model ?? '?'} |`);
