/**
 * The mismatched-predictor table (docs/BENCHMARKS.md): kvlab's margin against the best peer when
 * the engine's step model is off — prefill group or decode group × 0.5, 0.8, 1.25, 2
 * (`--engine-scale`) — without and with online calibration (`--calibrate`). Every strategy gets
 * the same wrong engine profile (the peers that fit a model from it, CacheRoute and Mooncake, fit
 * the wrong one; those that use none are unaffected); only kvlab calibrates, as upstream none of
 * the peers does. Evaluation scenario mooncake-eval, 16 instances, the protocol's seeds, at offered
 * loads 0.75 and 1 (below and at saturation).
 *
 *   node dist/notebooks/analyses/mismatch.js --out runs/mismatch [--jobs N]
 *
 * Writes OUT/mismatch.json and OUT/mismatch.md (the table). Progress on stderr.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fmtDuration } from '../sweep.js';
import { measureSize, type Arm } from './measure.js';
import { PEERS, PROTOCOL_VERSION, SCENARIOS, scenarioInputs, protocolCommand } from './protocol.js';

/** Peers whose decisions depend on the engine's profile (their own fits or its backlog). */
const PROFILE_PEERS = ['least-load', 'cacheroute', 'mooncake', 'mooncake-local'];
const LOADS = [0.75, 1];

async function main(): Promise<void> {
  const o = protocolCommand('mismatch', "kvlab's margin against the best peer with a wrong engine profile, with and without online calibration")
    .parse()
    .opts<{ out: string; shared: string; jobs?: string }>();
  const out = resolve(o.out);
  mkdirSync(out, { recursive: true });
  const t0 = Date.now();
  const s = SCENARIOS.find((x) => x.id === 'mooncake-eval')!;
  const inputs = scenarioInputs(s, out, resolve(o.shared));
  if (!inputs) throw new Error(`the Mooncake trace is not under ${o.shared}`);
  const settings: { group: 'prefill' | 'decode' | 'none'; factor: number }[] = [{ group: 'none', factor: 1 }];
  for (const group of ['prefill', 'decode'] as const) for (const factor of [0.5, 0.8, 1.25, 2]) settings.push({ group, factor });
  const arms: Arm[] = [];
  for (const p of PEERS) if (!PROFILE_PEERS.includes(p)) arms.push({ label: `${p}|none|1`, strategy: p, params: {} });
  for (const st of settings) {
    const scale = st.group === 'none' ? undefined : { prefill: st.group === 'prefill' ? st.factor : 1, decode: st.group === 'decode' ? st.factor : 1 };
    const tag = `${st.group}|${st.factor}`;
    for (const p of PROFILE_PEERS) arms.push({ label: `${p}|${tag}`, strategy: p, params: {}, run: scale ? { engineScale: scale } : {} });
    arms.push({ label: `kvlab|${tag}`, strategy: 'kvlab', params: {}, run: scale ? { engineScale: scale } : {} });
    arms.push({ label: `kvlab+cal|${tag}`, strategy: 'kvlab', params: {}, run: { ...(scale ? { engineScale: scale } : {}), calibrate: true } });
  }
  const r = await measureSize(s, inputs, 16, arms, { loads: LOADS, capacity: false, concurrency: o.jobs ? Number(o.jobs) : undefined, out, log: (m) => process.stderr.write(`mismatch: ${m}\n`) });
  const ttft = (label: string, j: number) => r.ttft[label]![j]!.ttft_mean.mean;
  const rows: string[] = [];
  const json: Record<string, unknown>[] = [];
  for (const st of settings) {
    const tag = `${st.group}|${st.factor}`;
    const cells: string[] = [st.group === 'none' ? 'exact profile' : `${st.group} × ${st.factor}`];
    for (let j = 0; j < LOADS.length; j++) {
      const peers = PEERS.map((p) => ({ p, t: ttft(PROFILE_PEERS.includes(p) ? `${p}|${tag}` : `${p}|none|1`, j) })).sort((a, b) => a.t - b.t);
      const best = peers[0]!;
      const k = ttft(`kvlab|${tag}`, j);
      const kc = ttft(`kvlab+cal|${tag}`, j);
      const m = (x: number) => `${(((best.t - x) / best.t) * 100).toFixed(1)} %`;
      cells.push(`${best.p} ${Math.round(best.t)}`, `${Math.round(k)} (${m(k)})`, `${Math.round(kc)} (${m(kc)})`);
      json.push({ group: st.group, factor: st.factor, load: LOADS[j], best_peer: best.p, best_peer_ttft_ms: best.t, kvlab_ttft_ms: k, kvlab_calibrated_ttft_ms: kc });
    }
    rows.push(`| ${cells.join(' | ')} |`);
  }
  const head = ['engine model', ...LOADS.flatMap((L) => [`best peer, load ${L}`, `kvlab (margin)`, `kvlab + calibration (margin)`])];
  const md = [
    `Mean TTFT ms, Mooncake conversation second half (evaluation set), 16 × h100x8-llama3-70b, ${inputs.length} seeds, protocol ${PROTOCOL_VERSION}; margin = (best peer − kvlab) / best peer (positive: kvlab ahead). Every strategy's engine profile is scaled alike; only kvlab calibrates.`,
    '',
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
    ...rows,
  ].join('\n');
  writeFileSync(join(out, 'mismatch.json'), JSON.stringify({ protocol_version: PROTOCOL_VERSION, rows: json }, null, 1) + '\n');
  writeFileSync(join(out, 'mismatch.md'), md + '\n');
  process.stdout.write(md + '\n');
  process.stderr.write(`mismatch: done in ${fmtDuration(Date.now() - t0)}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`mismatch: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
