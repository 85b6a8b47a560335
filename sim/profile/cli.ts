/**
 * `kvlab profile ...`: fit, check, derive, learn, build, list, show, collect.
 */
import { dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { choiceArg, intArg, numberArg, outDirArg, outFileArg } from '../../bin/options.js';
import type { StepModel } from '../../engine/types.js';
import { slopeLast } from '../../engine/costmodel.js';
import { loadProfile, repoRoot } from '../profiles.js';
import { checkProfile, formatCheck, type ColdStartMode } from './check.js';
import { registerCatalogCommands } from './catalog.js';
import { collect, fitCollected, readCollectMeta } from './collect.js';
import { defaultLogsDir, deriveH100Profile, fitRtx5090Profile, writeProfile } from './rtx5090.js';

function fmtStep(s: StepModel): string {
  const v = s.knots.map((k, i) => `${k}:${s.values[i]!.toFixed(1)}`).join(' ');
  return (
    `fixedMs ${s.fixedMs.toFixed(3)}  prefillSeqMs ${s.prefillSeqMs.toFixed(3)}  decodeSeqMs ${s.decodeSeqMs.toFixed(3)}  apiMs ${s.apiMs.toFixed(3)}\n` +
    `curve (tokens:ms) ${v}  slopeLast ${slopeLast(s).toFixed(4)} ms/token\n` +
    `attnTokens ${s.attnTokens.toFixed(0)}  kvReadMsPerToken ${s.kvReadMsPerToken.toExponential(4)}  frontendMsPerRequest ${s.frontendMsPerRequest}`
  );
}

/** Registers `kvlab profile ...` on the root program (bin/kvlab.ts). */
export function registerProfileCommands(program: Command): void {
  const profile = program.command('profile').description('list, show, derive, build, fit and check instance timing profiles (engine/profiles/*.json)');
  registerCatalogCommands(profile);

  profile
    .command('fit')
    .description(
      'fit the RTX 5090 step model from the CacheRoute logs (log-*.txt + tpot_benchmark_table.json) and write the measured ' +
        'profile and the H100 profile scaled from it (h100x8-llama3-70b-from-rtx5090)',
    )
    .option('--logs <dir>', 'profiling data directory (default ../shared/data/profiles/rtx5090x8-llama3-70b)')
    .option('--out <file>', 'measured profile output (default engine/profiles/rtx5090x8-llama3-70b.json)', outFileArg('--out'))
    .option('--derived-out <file>', 'scaled H100 profile output (default: h100x8-llama3-70b-from-rtx5090.json next to --out)', outFileArg('--derived-out'))
    .option('--no-derived', 'do not write the derived H100 profile')
    .option('--no-cv', 'skip the leave-one-PL-out cross-validation (faster)')
    .option('--base <profile>', 'with logs from kvlab profile collect: the profile whose engine settings, model and derived constants the fit keeps (required for collected logs)')
    .option('--name <name>', 'name of the fitted profile (collected logs)')
    .option('--json', 'print the fit summary as JSON')
    .action((flags: { logs?: string; out?: string; derivedOut?: string; derived: boolean; cv: boolean; json?: boolean; base?: string; name?: string }) => {
      const logsDir = resolve(flags.logs ?? defaultLogsDir());
      if (flags.base || readCollectMeta(logsDir)) {
        if (!flags.base) throw new Error(`profile fit: ${logsDir} holds collected logs: pass --base PROFILE (its engine settings and model are kept)`);
        if (!flags.out) throw new Error('profile fit: pass --out FILE for the fitted profile');
        const r = fitCollected(logsDir, loadProfile(flags.base), flags.name);
        writeProfile(resolve(flags.out), r.profile);
        if (flags.json) process.stdout.write(JSON.stringify({ out: resolve(flags.out), step: r.profile.step, fit: r.profile.fit }, null, 2) + '\n');
        else
          process.stdout.write(
            [`wrote ${resolve(flags.out)}`, fmtStep(r.profile.step), formatCheck(r.check), `simulated TTFT on the collected grid vs ${flags.base}: mean |difference| ${r.gridVsBasePct.toFixed(2)}%`].join('\n') + '\n',
          );
        return;
      }
      const out = resolve(flags.out ?? join(repoRoot(), 'engine', 'profiles', 'rtx5090x8-llama3-70b.json'));
      const r = fitRtx5090Profile(logsDir, { cv: flags.cv });
      writeProfile(out, r.profile);
      let derivedPath: string | null = null;
      if (flags.derived) {
        derivedPath = resolve(flags.derivedOut ?? join(dirname(out), 'h100x8-llama3-70b-from-rtx5090.json'));
        writeProfile(derivedPath, deriveH100Profile(r.profile));
      }
      if (flags.json) {
        process.stdout.write(JSON.stringify({ out, derivedOut: derivedPath, step: r.profile.step, coldStartMs: r.profile.coldStartMs, fit: r.profile.fit }, null, 2) + '\n');
        return;
      }
      const lines = [
        `wrote ${out}${derivedPath ? ` and ${derivedPath}` : ''}`,
        fmtStep(r.profile.step),
        `coldStartMs ${r.profile.coldStartMs}  rows: ${r.fit.rows.ttft} TTFT + ${r.fit.rows.anchors} anchors + ${r.fit.rows.tpot} TPOT; ` +
          `excluded bursts: ${r.fit.excluded.firstBursts} first, ${r.fit.excluded.nonconformingBursts} non-conforming, ${r.fit.excluded.incompleteBursts} incomplete; ` +
          `${r.fit.iterations} iterations${r.fit.converged ? '' : ' (not converged)'}`,
        formatCheck(r.check),
      ];
      if (r.cv) {
        lines.push(`cross-validation ${r.cv.scheme}: ttft_mape ${r.cv.ttftMape.toFixed(2)}%, conforming ${r.cv.conformingMape.toFixed(2)}%`);
        lines.push('  ' + Object.entries(r.cv.byBs).map(([bs, v]) => `bs${bs} ${v.mape.toFixed(2)}%/${v.conformingMape.toFixed(2)}%`).join('  '));
      }
      lines.push('short-prompt anchors (tokens: measured/simulated ms, err): ' + r.anchors.map((a) => `${a.promptTokens}: ${a.measuredMs}/${a.simulatedMs.toFixed(1)} (${a.errPct >= 0 ? '+' : ''}${a.errPct.toFixed(1)}%)`).join(', '));
      if (r.tpotMape !== null) lines.push(`tpot_mape ${r.tpotMape.toFixed(2)}%`);
      process.stdout.write(lines.join('\n') + '\n');
    });

  profile
    .command('check')
    .description(
      'replay logged bursts (B simultaneous requests of PL + 25 tokens) through the instance model and report the TTFT MAPE ' +
        '(simulated and measured sorted within each burst; each file\'s first request skipped)',
    )
    .requiredOption('--profile <p>', 'profile name (engine/profiles/<p>.json) or path')
    .requiredOption('--logs <file...>', 'TTFT log files ([TTFT] BS=b, PL=p, repeat=r, task=i/b, ttft=X.XXms lines)')
    .option('--cold-start <mode>', 'replay each file\'s first burst cold: auto (when its first request shows it), on, off', choiceArg('--cold-start', ['auto', 'on', 'off'] as const), 'auto')
    .option('--json', 'print the report as JSON (without per-request detail)')
    .option('--detail', 'with --json: include every request')
    .action((flags: { profile: string; logs: string[]; coldStart: string; json?: boolean; detail?: boolean }) => {
      if (!['auto', 'on', 'off'].includes(flags.coldStart)) throw new Error(`--cold-start must be auto, on or off (got ${flags.coldStart})`);
      const p = loadProfile(flags.profile);
      const r = checkProfile(p, flags.logs, { coldStart: flags.coldStart as ColdStartMode });
      if (flags.json) {
        const { detail, ...rest } = r;
        const byBs = Object.fromEntries(Object.entries(r.byBs).map(([bs, v]) => [bs, { ...v, ttft_mape: v.mape }]));
        process.stdout.write(JSON.stringify({ ...rest, ttft_mape: r.ttftMape, byBs, ...(flags.detail ? { detail } : {}) }, null, 2) + '\n');
        return;
      }
      process.stdout.write(formatCheck(r) + '\n');
    });

  profile
    .command('collect')
    .description(
      'fire calibration bursts at an OpenAI-compatible server (vLLM, kvlab emulate): B simultaneous requests of PL prompt tokens ' +
        '(TTFT per request) and decode batches (TPOT), written as logs that kvlab profile fit --logs DIR --base PROFILE fits',
    )
    .requiredOption('--target <url>', 'server base URL, e.g. http://127.0.0.1:8000')
    .option('--model <name>', 'model name of the requests (default: the first of /v1/models)')
    .option('--batch-sizes <list>', 'simultaneous requests per burst', listArg('--batch-sizes'), [1, 2, 4, 8])
    .option('--prompt-lengths <list>', 'prompt tokens', listArg('--prompt-lengths'), [64, 128, 256, 512, 1024, 2048])
    .option('--repeats <n>', 'bursts per (batch size, prompt length)', intArg('--repeats'), 3)
    .option('--decode-batch-sizes <list>', 'decode batch sizes for the TPOT table', listArg('--decode-batch-sizes'), [1, 4, 16])
    .option('--decode-tokens <n>', 'tokens generated per decode request', intArg('--decode-tokens'), 64)
    .option('--decode-prompt <n>', 'prompt tokens of the decode requests', intArg('--decode-prompt'), 128)
    .option('--time-scale <x>', 'model ms per wall ms of the target (default: the time scale /emulator/status reports, else 1 as on GPUs)', numberArg('--time-scale', { min: 1e-6 }))
    .option('--vocab <n>', 'token ids are drawn below this', intArg('--vocab'), 32000)
    .option('--no-warmup', 'skip the warm-up request')
    .requiredOption('--out <dir>', 'logs directory', outDirArg('--out'))
    .option('--json', 'print a JSON summary')
    .action(async (f: Record<string, any>) => {
      const r = await collect({
        target: f.target,
        model: f.model,
        batchSizes: f.batchSizes,
        promptLengths: f.promptLengths,
        repeats: f.repeats,
        decodeBatchSizes: f.decodeBatchSizes,
        decodeTokens: f.decodeTokens,
        decodePrompt: f.decodePrompt,
        timeScale: f.timeScale,
        vocab: f.vocab,
        warmup: f.warmup,
        out: f.out,
        onProgress: (m) => process.stderr.write(`profile collect: ${m}\n`),
      });
      if (f.json) process.stdout.write(JSON.stringify({ out: r.out, files: r.files, bursts: r.bursts, requests: r.requests }, null, 1) + '\n');
      else process.stdout.write(`wrote ${r.files.length} files to ${r.out} (${r.bursts} bursts, ${r.requests} requests)\nnext: kvlab profile fit --logs ${r.out} --base PROFILE --out my-profile.json\n`);
    });
}

/** A comma-separated list of positive integers. */
function listArg(flag: string) {
  const one = intArg(flag);
  return (v: string): number[] => {
    const xs = v.split(',').map((x) => x.trim()).filter(Boolean).map(one);
    if (!xs.length) throw new Error(`${flag} needs at least one positive integer`);
    return xs;
  };
}
