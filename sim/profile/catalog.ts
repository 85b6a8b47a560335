/**
 * `kvlab profile list`, `profile show NAME`, `profile derive`, `profile learn`, `profile build`:
 * the shipped profiles (engine/profiles/*.json), their terms with units and provenance, and the
 * commands that produce them.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { Profile } from '../../engine/types.js';
import { prefillAloneMs, decodeStepMs, slopeLast } from '../../engine/costmodel.js';
import { loadProfile, repoRoot } from '../profiles.js';
import { BUILD_PLANS, buildProfile } from './build.js';
import { deriveProfileFromSpecs, type EntryPoint } from './derive.js';
import { learnRoofline, writeRoofline } from './learn.js';
import { publicDataDir } from './public-data.js';
import { listGpus, listModels, loadGpu, loadModel } from './specs.js';
import { writeProfile } from './rtx5090.js';
import { intArg, outDirArg, outFileArg, choiceArg } from '../../bin/options.js';

/** One row of `profile list`. */
export interface ProfileSummary {
  name: string;
  hardware: string;
  gpus: number;
  model: string;
  /** measured | scaled | derived (from the profile's token-curve provenance, else `derived`). */
  provenance: string;
  /** a one-line fit / held-out error summary. */
  fitError: string;
  /** prefill throughput at the token budget, tokens/s; decode step at batch 1, ms. */
  prefillTokPerS: number;
  decodeMs: number;
}

/** The shipped profiles, sorted by name. */
export function shippedProfiles(): Profile[] {
  const dir = join(repoRoot(), 'engine', 'profiles');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => loadProfile(join(dir, f)));
}

/** Kind of a profile: the token curve's provenance when stated. */
export function profileKind(p: Profile): string {
  const k = p.provenance?.['step.knots/values']?.kind;
  if (k) return k;
  return p.derived ? 'derived' : 'measured';
}

/** A short fit-error text from `fit`: the profile's own fit, or its held-out checks. */
export function fitErrorText(p: Profile): string {
  const f = (p.fit ?? {}) as Record<string, any>;
  const parts: string[] = [];
  if (f.ttftMape?.all !== undefined) parts.push(`TTFT fit ${f.ttftMape.all}%`);
  if (f.crossValidation?.all !== undefined) parts.push(`CV ${f.crossValidation.all}%`);
  const cs = f.crossSource as Record<string, any> | undefined;
  if (cs) {
    for (const [k, v] of Object.entries(cs)) {
      if (k.endsWith('Rows') || k.includes('OldEngine') || !v || typeof v !== 'object') continue;
      if (typeof v.mapePct === 'number' && Number.isFinite(v.mapePct)) parts.push(`${k} ${v.mapePct}% (bias ${v.biasPct}%)`);
      else if (typeof v.errPct === 'number') parts.push(`${k} ${v.errPct}%`);
    }
  }
  if (f.derivedFrom) parts.push(`scaled from ${f.derivedFrom}`);
  if (f.derived === true && !parts.length) parts.push('roofline (no fit)');
  return parts.join('; ') || '—';
}

/** Summary of one profile for `profile list`. */
export function summarizeProfile(p: Profile): ProfileSummary {
  const budget = p.engine.maxNumBatchedTokens;
  return {
    name: p.name,
    hardware: p.hardware.gpu,
    gpus: p.hardware.gpus,
    model: p.model.name,
    provenance: profileKind(p),
    fitError: fitErrorText(p),
    prefillTokPerS: Math.round((budget / prefillAloneMs(p, 0, budget)) * 1000),
    decodeMs: Number(decodeStepMs(p, 1, 1024).toFixed(2)),
  };
}

/** `profile show`: every term with its unit and provenance. */
export function showProfile(p: Profile): string {
  const s = p.step;
  const e = p.engine;
  const prov = (k: string) => {
    const v = p.provenance?.[k];
    return v ? `  [${v.kind}: ${v.source}]` : '';
  };
  const lines = [
    `${p.name}  (${profileKind(p)}${p.derived ? ', derived' : ''})`,
    p.description,
    `source: ${p.source}`,
    '',
    `model     ${p.model.name}: ${p.model.layers} layers, ${p.model.kvHeads} KV heads × ${p.model.headDim}, ${p.model.dtypeBytes} B/element, ${p.model.kvBytesPerToken.toLocaleString('en-US')} B KV per token, ${p.model.paramsB} B params`,
    `hardware  ${p.hardware.gpus} × ${p.hardware.gpu}: ${p.hardware.peakTflops} TFLOP/s dense BF16, ${p.hardware.memBandwidthGBs} GB/s, ${p.hardware.memGiB} GiB per GPU`,
    `engine    max_num_batched_tokens ${e.maxNumBatchedTokens} tokens, max_num_seqs ${e.maxNumSeqs}, max_model_len ${e.maxModelLen} tokens, block ${e.blockSizeTokens} tokens, ` +
      `long_prefill_token_threshold ${e.longPrefillTokenThreshold}, async scheduling ${e.asyncScheduling ? 'on' : 'off'}`,
    `          KV capacity ${e.kvCapacityTokens.toLocaleString('en-US')} tokens${prov('engine.kvCapacityTokens')}`,
    '',
    'step model (engine/costmodel.ts stepMs):',
    `  fixedMs            ${s.fixedMs} ms per step${prov('step.fixedMs')}`,
    `  prefillSeqMs       ${s.prefillSeqMs} ms per prefill chunk${prov('step.prefillSeqMs')}`,
    `  decodeSeqMs        ${s.decodeSeqMs} ms per decoding sequence${prov('step.decodeSeqMs')}`,
    `  token curve        ms vs new tokens per step${prov('step.knots/values')}`,
    ...s.knots.map((k, i) => `    ${String(k).padStart(6)} tokens  ${s.values[i]!.toFixed(3).padStart(10)} ms`),
    `  slopeLast          ${slopeLast(s).toFixed(5)} ms per token (prefill throughput bound)`,
    `  attnTokens         ${s.attnTokens} tokens (prefill attention = slopeLast · Σc(s + c/2) / attnTokens)${prov('step.attnTokens')}`,
    `  kvReadMsPerToken   ${s.kvReadMsPerToken} ms per context token of each decoding sequence${prov('step.kvReadMsPerToken')}`,
    `  apiMs              ${s.apiMs} ms added to TTFT and E2E${prov('step.apiMs')}`,
    `  frontendMsPerRequest ${s.frontendMsPerRequest} ms between requests reaching the engine core`,
    `kvLoad    ${p.kvLoad.fixedMs} ms + ${p.kvLoad.msPerGB} ms/GB at ${p.kvLoad.bytesPerToken} B/token (LMCache retrieve)`,
    `coldStartMs ${p.coldStartMs} ms on an instance's first request`,
    '',
    `fit / held-out error: ${fitErrorText(p)}`,
  ];
  return lines.join('\n') + '\n';
}


/** Registers list, show, derive, learn, build under `kvlab profile`. */
export function registerCatalogCommands(profile: Command): void {
  profile
    .command('list')
    .description('every shipped profile (engine/profiles/*.json): hardware, model, TP, provenance, fit error, prefill tokens/s and decode ms')
    .option('--json', 'print JSON')
    .action((f: { json?: boolean }) => {
      const rows = shippedProfiles().map(summarizeProfile);
      if (f.json) {
        process.stdout.write(JSON.stringify(rows, null, 1) + '\n');
        return;
      }
      const head = ['name', 'hardware', 'TP', 'model', 'provenance', 'prefill tok/s', 'decode ms (bs1)', 'fit / held-out error'];
      const t = rows.map((r) => [r.name, r.hardware, String(r.gpus), r.model, r.provenance, String(r.prefillTokPerS), String(r.decodeMs), r.fitError]);
      const w = head.map((h, i) => Math.max(h.length, ...t.map((x) => Math.min(60, x[i]!.length))));
      const line = (x: string[]) => x.map((c, i) => (i === x.length - 1 ? c : c.padEnd(w[i]!))).join('  ');
      process.stdout.write([line(head), ...t.map(line)].join('\n') + '\n');
    });

  profile
    .command('show')
    .description('the terms of one profile with units and the provenance of each')
    .argument('<name>', 'profile name (engine/profiles/<name>.json) or path')
    .option('--json', 'print the profile JSON')
    .action((name: string, f: { json?: boolean }) => {
      const p = loadProfile(name);
      process.stdout.write(f.json ? JSON.stringify(p, null, 2) + '\n' : showProfile(p));
    });

  profile
    .command('derive')
    .description(
      'derive a profile for a GPU and model without measurements: roofline with the efficiencies of engine/profiles/roofline/coefficients.json, ' +
        'KV capacity from memory arithmetic at gpu_memory_utilization 0.9, vLLM defaults for the GPU',
    )
    .requiredOption('--gpu <name|spec.json>', `GPU (${listGpus().map((g) => g.id).join(', ')}) or a spec file`)
    .requiredOption('--model <name|config.json>', `model (${listModels().map((m) => m.name).join(', ')}) or a Hugging Face config.json`)
    .option('--tp <n>', 'GPUs per instance (tensor parallel)', intArg('--tp'), 1)
    .option('--ep <n>', 'expert-parallel size (MoE)', intArg('--ep'), 1)
    .option('--entry <kind>', 'openai-server (HTTP API overhead) or engine (in-process)', choiceArg('--entry', ['openai-server', 'engine'] as const), 'openai-server')
    .option('--max-num-seqs <n>', 'override vLLM\'s default', intArg('--max-num-seqs'))
    .option('--max-num-batched-tokens <n>', 'override vLLM\'s default', intArg('--max-num-batched-tokens'))
    .option('--max-model-len <n>', 'override the model\'s context length', intArg('--max-model-len'))
    .option('--name <name>', 'profile name')
    .requiredOption('--out <file>', 'output profile file', outFileArg('--out'))
    .option('--json', 'print the profile JSON instead of a summary')
    .action((f: Record<string, any>) => {
      if (f.entry !== 'openai-server' && f.entry !== 'engine') throw new Error(`--entry must be openai-server or engine (got ${f.entry})`);
      const p = deriveProfileFromSpecs({
        gpu: loadGpu(f.gpu),
        model: loadModel(f.model),
        tp: f.tp,
        ep: f.ep,
        name: f.name,
        entry: f.entry as EntryPoint,
        engine: { maxNumSeqs: f.maxNumSeqs, maxNumBatchedTokens: f.maxNumBatchedTokens, maxModelLen: f.maxModelLen },
      });
      writeProfile(resolve(f.out), p);
      if (f.json) process.stdout.write(JSON.stringify(p, null, 2) + '\n');
      else {
        const s = summarizeProfile(p);
        process.stdout.write(`wrote ${resolve(f.out)}: ${p.name}, KV ${p.engine.kvCapacityTokens.toLocaleString('en-US')} tokens, prefill ${s.prefillTokPerS} tokens/s, decode ${s.decodeMs} ms at batch 1\n`);
      }
    });

  profile
    .command('learn')
    .description('re-learn the roofline efficiencies from ../shared/data/profiles/public (Vidur, LLMServingSim tables) into engine/profiles/roofline/coefficients.json')
    .option('--data <dir>', 'public data directory (default ../shared/data/profiles/public)')
    .option('--out <file>', 'output (default engine/profiles/roofline/coefficients.json)', outFileArg('--out'))
    .option('--json', 'print the fit report as JSON')
    .action((f: { data?: string; out?: string; json?: boolean }) => {
      const dir = f.data ?? publicDataDir();
      if (!dir || !existsSync(dir)) throw new Error(`profile learn: public data not found (${dir ?? '../shared/data/profiles/public'}); pass --data`);
      process.stderr.write('profile learn: fitting GEMM, elementwise, all-reduce and attention efficiencies ...\n');
      const r = learnRoofline(dir);
      const out = writeRoofline(r, f.out ? resolve(f.out) : undefined);
      process.stdout.write(f.json ? JSON.stringify(r.report, null, 1) + '\n' : `wrote ${out}\n${JSON.stringify(r.report, null, 1)}\n`);
    });

  profile
    .command('build')
    .description('build the measured A100/H100 profiles from the public op-level tables, with their held-out cross-source checks (writes engine/profiles/<name>.json)')
    .option('--data <dir>', 'public data directory (default ../shared/data/profiles/public)')
    .option('--out-dir <dir>', 'output directory (default engine/profiles)', outDirArg('--out-dir'))
    .option('--only <names>', 'comma-separated subset')
    .option('--json', 'print the cross-source checks as JSON')
    .action((f: { data?: string; outDir?: string; only?: string; json?: boolean }) => {
      const dir = f.data ?? publicDataDir();
      if (!dir || !existsSync(dir)) throw new Error(`profile build: public data not found (${dir ?? '../shared/data/profiles/public'}); pass --data`);
      const only = f.only ? new Set(f.only.split(',').map((x) => x.trim())) : null;
      const outDir = resolve(f.outDir ?? join(repoRoot(), 'engine', 'profiles'));
      const report: Record<string, unknown> = {};
      for (const plan of BUILD_PLANS) {
        if (only && !only.has(plan.name)) continue;
        process.stderr.write(`profile build: ${plan.name} ...\n`);
        const p = buildProfile(plan, dir);
        writeProfile(join(outDir, `${p.name}.json`), p);
        report[p.name] = { file: join(outDir, `${p.name}.json`), heldOut: fitErrorText(p) };
      }
      process.stdout.write(f.json ? JSON.stringify(report, null, 1) + '\n' : Object.entries(report).map(([k, v]) => `${k}: ${(v as { heldOut: string }).heldOut}`).join('\n') + '\n');
    });
}
