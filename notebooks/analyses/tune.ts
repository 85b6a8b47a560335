/**
 * Tunes on the protocol's tuning set only (notebooks/analyses/protocol.ts): kvlab's
 * (queueWeight, arrivalWeight) over {1, 2, 3}², and — so that the peer with an undocumented knob
 * gets its best shot too — Mooncake's kvcache_balancing_threshold over {1, 2, 4}. Each variant's
 * capacity under the SLO and mean TTFT at 0.5× and 1× capacity are measured (notebooks/analyses/
 * measure.ts); the choice maximises the mean capacity over the tuning scenarios and seeds, then
 * minimises the geometric mean of the TTFTs. The chosen values are then written by hand into
 * engine/strategies/kvlab-params.ts (with a new version) and the Mooncake default.
 *
 *   node dist/notebooks/analyses/tune.js --out runs/tune [--jobs N]
 *
 * Writes OUT/tuning.json and OUT/tuning.md. Progress on stderr.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fmtDuration } from '../sweep.js';
import { measureSize, type Arm, type SizeResult } from './measure.js';
import { PROTOCOL_VERSION, SCENARIOS, scenarioInputs, protocolCommand } from './protocol.js';

/** The grid: every kvlab weight pair and every Mooncake threshold. */
export function tuningArms(): Arm[] {
  const arms: Arm[] = [];
  for (const qw of [1, 2, 3]) for (const aw of [1, 2, 3]) arms.push({ label: `kvlab q${qw} a${aw}`, strategy: 'kvlab', params: { queueWeight: qw, arrivalWeight: aw } });
  for (const th of [1, 2, 4]) arms.push({ label: `mooncake t${th}`, strategy: 'mooncake', params: { balancingThreshold: th } });
  return arms;
}

async function main(): Promise<void> {
  const o = protocolCommand('tune', "tune kvlab's weights (and Mooncake's threshold) on the protocol's tuning set")
    .parse()
    .opts<{ out: string; shared: string; jobs?: string }>();
  const out = resolve(o.out);
  mkdirSync(out, { recursive: true });
  const t0 = Date.now();
  const arms = tuningArms();
  const measured: { scenario: string; size: SizeResult }[] = [];
  for (const s of SCENARIOS.filter((x) => x.set === 'tuning')) {
    const inputs = scenarioInputs(s, out, resolve(o.shared));
    if (!inputs) {
      process.stderr.write(`tune: ${s.id}: skipped (data not found)\n`);
      continue;
    }
    for (const n of s.instances) measured.push({ scenario: s.id, size: await measureSize(s, inputs, n, arms, { loads: [0.5, 1], concurrency: o.jobs ? Number(o.jobs) : undefined, out, log: (m) => process.stderr.write(`tune: ${m}\n`) }) });
  }
  if (measured.length === 0) throw new Error('no tuning scenario could run');
  const score = (label: string) => {
    const caps = measured.flatMap((m) => m.size.capacity[label]!.values);
    const ttfts = measured.flatMap((m) => m.size.ttft[label]!.map((p) => p.ttft_mean.mean));
    return { capacity: caps.reduce((a, b) => a + b, 0) / caps.length, ttftGeo: Math.exp(ttfts.reduce((a, b) => a + Math.log(b), 0) / ttfts.length) };
  };
  const rank = (prefix: string) =>
    arms
      .filter((a) => a.label.startsWith(prefix))
      .map((a) => ({ arm: a, ...score(a.label) }))
      .sort((x, y) => y.capacity - x.capacity || x.ttftGeo - y.ttftGeo);
  const kv = rank('kvlab');
  const mc = rank('mooncake');
  const lines = [`Tuning set of protocol ${PROTOCOL_VERSION} (${measured.map((m) => `${m.scenario} n=${m.size.instances}`).join(', ')}): mean capacity (offered load, goodput >= target) and geometric mean of mean TTFT at loads 0.5 and 1.`, '', '| variant | mean capacity | TTFT geo-mean ms |', '|---|---|---|'];
  for (const r of [...kv, ...mc]) lines.push(`| ${r.arm.label} | ${r.capacity.toFixed(3)} | ${Math.round(r.ttftGeo)} |`);
  lines.push('', `chosen: ${kv[0]!.arm.label} (${JSON.stringify(kv[0]!.arm.params)}); ${mc[0]!.arm.label} (${JSON.stringify(mc[0]!.arm.params)})`);
  writeFileSync(join(out, 'tuning.json'), JSON.stringify({ protocol_version: PROTOCOL_VERSION, measured, kvlab: kv.map((r) => ({ ...r.arm, capacity: r.capacity, ttft_geo_ms: r.ttftGeo })), mooncake: mc.map((r) => ({ ...r.arm, capacity: r.capacity, ttft_geo_ms: r.ttftGeo })) }, null, 1) + '\n');
  writeFileSync(join(out, 'tuning.md'), lines.join('\n') + '\n');
  process.stdout.write(lines.join('\n') + '\n');
  process.stderr.write(`tune: done in ${fmtDuration(Date.now() - t0)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`tune: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
