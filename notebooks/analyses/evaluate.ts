/**
 * Regenerates every results table of the README from scratch, following the evaluation protocol
 * (notebooks/analyses/protocol.ts): for every scenario, cluster size, strategy and seed, the mean
 * TTFT (and p99, goodput) at the protocol's loads, and the capacity under the SLO (the highest
 * load keeping goodput >= the target, bisection per seed); evaluation and tuning sets reported
 * separately. Runs go through the sweep's worker pool (notebooks/sweep.ts `runJobs`), the
 * capacity bisections advance in parallel rounds.
 *
 *   node dist/notebooks/analyses/evaluate.js --out runs/eval [--readme README.md] [--set readme|evaluation|tuning|all]
 *        [--scenarios id,id] [--jobs N] [--quick]
 *
 * Writes OUT/results.json (every number, with the protocol and parameter versions and the peer
 * versions; rewritten after every scenario and size with `partial: true` until the end) and
 * OUT/results.md (the tables); --readme replaces the README's text between
 * `<!-- results:begin -->` and `<!-- results:end -->` with the tables. --quick (one seed, three
 * loads) is for trying it out, not for the README. Progress on stderr.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { KVLAB_PARAMS_VERSION, KVLAB_THEORY, KVLAB_TUNED } from '../../engine/strategies/kvlab-params.js';
import { PEER_VERSIONS } from '../../engine/strategies/index.js';
import { KVLAB_VERSION } from '../../engine/version.js';
import { fmtDuration } from '../sweep.js';
import { measureSize, type Arm, type SizeResult } from './measure.js';
import { CAPACITY_TOL, KVLAB_VARIANTS, LOADS, PEERS, PROTOCOL_VERSION, SCENARIOS, SLO, TARGET, scenarioInputs, protocolCommand, type Scenario } from './protocol.js';

async function main(): Promise<void> {
  const o = protocolCommand('evaluate', 'regenerate the results tables of the README (evaluation protocol)')
    .option('--set <set>', "readme (the README's tables, sized for 2 cores) | evaluation | tuning | all", 'readme')
    .option('--scenarios <ids>', 'only these scenarios (comma-separated ids)')
    .option('--readme <file>', 'replace the tables between <!-- results:begin --> and <!-- results:end --> in this file')
    .option('--quick', 'one seed and three loads (trying it out; not for the README)')
    .parse()
    .opts<{ out: string; shared: string; set: string; scenarios?: string; jobs?: string; readme?: string; quick?: boolean }>();
  const out = resolve(o.out);
  mkdirSync(out, { recursive: true });
  const arms: Arm[] = [...PEERS.map((p) => ({ label: p, strategy: p, params: {} })), ...KVLAB_VARIANTS];
  const loads = o.quick ? [0.5, 1, 1.5] : LOADS;
  const only = o.scenarios ? new Set(o.scenarios.split(',')) : null;
  if (!['readme', 'evaluation', 'tuning', 'all'].includes(o.set)) throw new Error(`--set must be readme, evaluation, tuning or all (got "${o.set}")`);
  const scenarios = SCENARIOS.filter((s) => (o.set === 'all' || (o.set === 'readme' ? s.readme === true : s.set === o.set)) && (!only || only.has(s.id)));
  if (scenarios.length === 0) throw new Error('no scenario selected');
  const concurrency = o.jobs ? Number(o.jobs) : undefined;
  const t0 = Date.now();
  const results: Record<string, { scenario: Scenario; sizes: SizeResult[]; skipped?: string }> = {};

  const write = (partial: boolean): string => {
    const doc = {
      kvlab_version: KVLAB_VERSION,
      protocol_version: PROTOCOL_VERSION,
      kvlab_params_version: KVLAB_PARAMS_VERSION,
      kvlab_tuned: KVLAB_TUNED,
      kvlab_theory: KVLAB_THEORY,
      peer_versions: PEER_VERSIONS,
      slo: { ttft_ms: SLO.ttftMs, tbt_ms: SLO.tbtMs },
      target: TARGET,
      quick: !!o.quick,
      partial,
      wall_ms: Date.now() - t0,
      scenarios: results,
    };
    writeFileSync(join(out, 'results.json'), JSON.stringify(doc, null, 1) + '\n');
    const md = resultsMarkdown(doc.scenarios, !!o.quick);
    writeFileSync(join(out, 'results.md'), md);
    return md;
  };
  for (const s of scenarios) {
    let inputs = scenarioInputs(s, out, resolve(o.shared));
    if (!inputs) {
      results[s.id] = { scenario: s, sizes: [], skipped: `data not found under ${o.shared}` };
      process.stderr.write(`evaluate: ${s.id}: skipped (data not found under ${o.shared})\n`);
      continue;
    }
    if (o.quick) inputs = inputs.slice(0, 1);
    const sizes: SizeResult[] = [];
    results[s.id] = { scenario: s, sizes };
    for (const n of s.instances) {
      const sl = o.quick ? loads : (s.sizeLoads?.[n] ?? s.loads ?? loads);
      sizes.push(await measureSize(s, inputs, n, arms, { loads: sl, capacity: !s.capacityInstances || s.capacityInstances.includes(n), concurrency, out, log: (m) => process.stderr.write(`evaluate: ${m}\n`) }));
      write(true); // what is done so far survives an interrupted run (results.json "partial": true)
    }
  }
  const md = write(false);
  if (o.readme) replaceBetweenMarkers(o.readme, md);
  process.stderr.write(`evaluate: wrote ${join(out, 'results.json')} and results.md in ${fmtDuration(Date.now() - t0)}\n`);
}

const f0 = (x: number) => Math.round(x).toLocaleString('en-US');
const f2 = (x: number) => x.toFixed(2);

/** The tables (markdown): capacity per scenario/size, then mean TTFT per load, per set. */
export function resultsMarkdown(scenarios: Record<string, { scenario: Scenario; sizes: SizeResult[]; skipped?: string }>, quick: boolean): string {
  const lines: string[] = [];
  const peersLine = Object.entries(PEER_VERSIONS)
    .map(([k, v]) => `\`${k}\` ${v}`)
    .join('; ');
  const same = KVLAB_TUNED.queueWeight === KVLAB_THEORY.queueWeight && KVLAB_TUNED.arrivalWeight === KVLAB_THEORY.arrivalWeight;
  lines.push(`Protocol ${PROTOCOL_VERSION} (notebooks/analyses/protocol.ts), kvlab parameters ${KVLAB_PARAMS_VERSION} (tuned queueWeight ${KVLAB_TUNED.queueWeight}, arrivalWeight ${KVLAB_TUNED.arrivalWeight}${same ? ': the theory weights' : `; theory ${KVLAB_THEORY.queueWeight}, ${KVLAB_THEORY.arrivalWeight}`}), SLO TTFT <= ${SLO.ttftMs} ms and TBT <= ${SLO.tbtMs} ms, goodput target ${TARGET}${quick ? ' — QUICK RUN (one seed), not for the README' : ''}. Loads are offered prefill work / cluster prefill capacity (no cache); ± = 95 % CI half-width across seeds. Peers: ${peersLine}.`);
  lines.push('');
  for (const set of ['evaluation', 'tuning'] as const) {
    const ss = Object.values(scenarios).filter((x) => x.scenario.set === set);
    if (ss.length === 0) continue;
    lines.push(`#### ${set === 'evaluation' ? 'Evaluation set (never used to choose a parameter)' : 'Tuning set (chose kvlab\'s parameters)'}`);
    lines.push('');
    // capacity table: one column per scenario x size
    const cols: { title: string; sr: SizeResult }[] = [];
    for (const x of ss) {
      if (x.skipped) lines.push(`*${x.scenario.title}: skipped (${x.skipped}).*`);
      for (const sr of x.sizes) cols.push({ title: `${x.scenario.title}, ${sr.instances} × ${x.scenario.profile}`, sr });
    }
    if (cols.length === 0) continue;
    const labels = Object.keys(cols[0]!.sr.ttft).length ? Object.keys(cols[0]!.sr.ttft) : Object.keys(cols[0]!.sr.capacity);
    const capCols = cols.filter((c) => Object.keys(c.sr.capacity).length > 0);
    if (capCols.length) {
      lines.push(`Capacity under the SLO (highest offered load with goodput >= ${TARGET}, per seed to ${Math.round(CAPACITY_TOL * 100)} %; mean ± 95 % CI; bold = best):`);
      lines.push('');
      lines.push(`| strategy | ${capCols.map((c) => c.title).join(' | ')} |`);
      lines.push(`|---|${capCols.map(() => '---').join('|')}|`);
      const bestCap = capCols.map((c) => Math.max(...labels.map((l) => c.sr.capacity[l]!.mean)));
      for (const l of labels) lines.push(`| ${l} | ${capCols.map((c, j) => { const st = c.sr.capacity[l]!; const t = `${f2(st.mean)} ± ${f2(st.half)}`; return st.mean === bestCap[j] ? `**${t}**` : t; }).join(' | ')} |`);
      lines.push('');
    }
    for (const c of cols) {
      const pts0 = c.sr.ttft[labels[0]!] ?? [];
      if (pts0.length === 0) continue;
      lines.push(`Mean TTFT ms (p99; goodput) by offered load — ${c.title} (1 × trace rate = load ${c.sr.base.toFixed(3)}):`);
      lines.push('');
      lines.push(`| strategy | ${pts0.map((p) => `load ${p.load}`).join(' | ')} |`);
      lines.push(`|---|${pts0.map(() => '---').join('|')}|`);
      const best = pts0.map((_, j) => Math.min(...labels.map((l) => c.sr.ttft[l]![j]!.ttft_mean.mean)));
      for (const l of labels) {
        lines.push(`| ${l} | ${c.sr.ttft[l]!.map((m, j) => { const t = `${f0(m.ttft_mean.mean)} ± ${f0(m.ttft_mean.half)} (${f0(m.ttft_p99.mean)}; ${f2(m.goodput.mean)})`; return m.ttft_mean.mean === best[j] ? `**${t}**` : t; }).join(' | ')} |`);
      }
      lines.push('');
    }
  }
  return lines.join('\n') + '\n';
}

/** Replaces the text between the results markers of `file` with `md`. */
function replaceBetweenMarkers(file: string, md: string): void {
  const begin = '<!-- results:begin -->';
  const end = '<!-- results:end -->';
  if (!existsSync(file)) throw new Error(`--readme ${file}: not found`);
  const text = readFileSync(file, 'utf8');
  const a = text.indexOf(begin);
  const b = text.indexOf(end);
  if (a < 0 || b < a) throw new Error(`--readme ${file}: no ${begin} ... ${end} section`);
  writeFileSync(file, `${text.slice(0, a + begin.length)}\n${md}${text.slice(b)}`);
}

main().catch((e: unknown) => {
  process.stderr.write(`evaluate: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
