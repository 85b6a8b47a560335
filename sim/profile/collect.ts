/**
 * `kvlab profile collect`: fires calibration bursts at any OpenAI-compatible server (vLLM, the
 * kvlab emulator, ...) and writes the logs `kvlab profile fit --logs DIR --base PROFILE` fits:
 *
 * - prefill bursts: for every batch size B and prompt length PL, `repeats` times, B simultaneous
 *   streaming `/v1/completions` requests of exactly PL prompt tokens (token-id prompts, random
 *   ids per request so no prefix is shared) and `max_tokens` 1; client-side TTFT (send → first
 *   streamed token) per request, in the CacheRoute log format
 *   `[TTFT] BS=b, PL=p, repeat=r, task=i/b, ttft=X.XXms` (one file log-bsB.txt per B);
 * - decode batches: for every decode batch size B, B simultaneous requests of `decodePrompt`
 *   tokens generating `decodeTokens` tokens (`ignore_eos`); TPOT = (last − first token) /
 *   (tokens − 1), averaged per batch → tpot_benchmark_table.json (lengths = prompt + half the output);
 * - collect.json: the target, the grid, the chat-template tokens (0: token-id prompts), the time
 *   scale and what the server says about itself (/v1/models, /emulator/status when present).
 * Times are written in model ms: wall ms × `timeScale` (1 on GPUs; the emulator's --time-scale,
 * read from /emulator/status unless given).
 * A warm-up request runs first (cold start), unless `warmup` is false.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createParser } from 'eventsource-parser';
import type { Profile } from '../../engine/types.js';
import { replayBurst } from './burst.js';
import { checkBursts, type CheckReport } from './check.js';
import { DEFAULT_FIT_CONFIG, fitStepModel, median, type FitConfig, type StepFit } from './fit.js';
import { CHAT_TEMPLATE_TOKENS, listTtftLogs, readBursts, readTpotTable, type Burst } from './logs.js';
import { makeRng } from '../../traces/random.js';

/** Options of collect(). */
export interface CollectOptions {
  /** server base URL (http://host:port). */
  target: string;
  /** model name for the requests (default: the first of /v1/models). */
  model?: string;
  batchSizes: number[];
  promptLengths: number[];
  repeats: number;
  decodeBatchSizes: number[];
  decodeTokens: number;
  decodePrompt: number;
  out: string;
  /** model ms per wall ms of the target (kvlab emulate --time-scale); default: what /emulator/status says, else 1. */
  timeScale?: number;
  /** token ids are drawn from [100, vocab − 100) (default 32,000). */
  vocab?: number;
  seed?: number;
  warmup?: boolean;
  /** per-request timeout, ms (default 120,000). */
  timeoutMs?: number;
  onProgress?: (msg: string) => void;
}

/** What collect() measured. */
export interface CollectResult {
  out: string;
  files: string[];
  bursts: number;
  requests: number;
  meta: Record<string, unknown>;
}

/** One streamed completion: wall times of the send, the first and the last token, tokens seen. */
interface StreamTiming {
  sentAt: number;
  firstAt: number;
  lastAt: number;
  tokens: number;
}

async function streamCompletion(url: string, body: Record<string, unknown>, timeoutMs: number): Promise<StreamTiming> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  const sentAt = performance.now();
  let firstAt = -1;
  let lastAt = -1;
  let tokens = 0;
  try {
    const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: ac.signal });
    if (!res.ok || !res.body) throw new Error(`${url}/v1/completions: HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`);
    const parser = createParser({
      onEvent: (ev) => {
        if (ev.data === '[DONE]') return;
        let j: { choices?: { text?: string }[]; error?: { message?: string } };
        try {
          j = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (j.error) throw new Error(`${url}: streamed error: ${j.error.message ?? 'unknown'}`);
        const t = j.choices?.[0]?.text;
        if (t === undefined || t === null) return;
        const now = performance.now();
        if (firstAt < 0) firstAt = now;
        lastAt = now;
        tokens++;
      },
    });
    const dec = new TextDecoder();
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) parser.feed(dec.decode(chunk, { stream: true }));
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw new Error(`${url}/v1/completions: no answer within ${timeoutMs} ms`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
  if (firstAt < 0) throw new Error(`${url}/v1/completions: the stream ended without a token`);
  return { sentAt, firstAt, lastAt, tokens };
}

async function getJson(url: string): Promise<unknown> {
  try {
    const r = await fetch(url);
    return r.ok ? await r.json() : null;
  } catch {
    return null;
  }
}

/**
 * Runs the calibration grid against `opts.target` and writes the logs (see the module docstring).
 * @throws Error naming the URL for an unreachable server, an HTTP error or a stream without tokens.
 */
export async function collect(opts: CollectOptions): Promise<CollectResult> {
  const target = opts.target.replace(/\/+$/, '');
  const vocab = opts.vocab ?? 32000;
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const rng = makeRng(opts.seed ?? 1, 'profile-collect');
  const say = opts.onProgress ?? (() => {});
  const models = (await getJson(`${target}/v1/models`)) as { data?: { id?: string; max_model_len?: number }[] } | null;
  if (!models && !opts.model) throw new Error(`${target}/v1/models: not reachable; pass --model and check --target`);
  const model = opts.model ?? models?.data?.[0]?.id;
  if (!model) throw new Error(`${target}/v1/models: no model listed; pass --model`);
  const status = (await getJson(`${target}/emulator/status`)) as { time_scale?: number } | null;
  const served = typeof status?.time_scale === 'number' && status.time_scale > 0 ? status.time_scale : null;
  const scale = opts.timeScale ?? served ?? 1;
  if (served !== null && opts.timeScale !== undefined && served !== opts.timeScale) say(`warning: the emulator runs at time scale ${served}, not ${opts.timeScale}`);
  const prompt = (n: number): number[] => Array.from({ length: n }, () => 100 + Math.floor(rng() * (vocab - 200)));
  const body = (n: number, maxTokens: number) => ({ model, prompt: prompt(n), max_tokens: maxTokens, stream: true, temperature: 0, ignore_eos: true });
  const out = resolve(opts.out);
  mkdirSync(out, { recursive: true });
  if (opts.warmup !== false) {
    say('warm-up request');
    await streamCompletion(target, body(Math.min(...opts.promptLengths), 2), timeoutMs);
  }
  const files: string[] = [];
  let bursts = 0;
  let requests = 0;
  const total = opts.batchSizes.length * opts.promptLengths.length * opts.repeats;
  for (const bs of opts.batchSizes) {
    const lines: string[] = [];
    for (const pl of opts.promptLengths) {
      for (let rep = 1; rep <= opts.repeats; rep++) {
        const t = await Promise.all(Array.from({ length: bs }, () => streamCompletion(target, body(pl, 1), timeoutMs)));
        t.forEach((x, i) => lines.push(`[TTFT] BS=${bs}, PL=${pl}, repeat=${rep}, task=${i + 1}/${bs}, ttft=${((x.firstAt - x.sentAt) * scale).toFixed(2)}ms`));
        bursts++;
        requests += bs;
        say(`burst ${bursts}/${total}: BS=${bs} PL=${pl} repeat ${rep}`);
      }
    }
    const f = join(out, `log-bs${bs}.txt`);
    writeFileSync(f, lines.join('\n') + '\n');
    files.push(f);
  }
  const rows: { batch_size: number; tpot: number[] }[] = [];
  for (const bs of opts.decodeBatchSizes) {
    say(`decode batch ${bs} × ${opts.decodeTokens} tokens`);
    const t = await Promise.all(Array.from({ length: bs }, () => streamCompletion(target, body(opts.decodePrompt, opts.decodeTokens), timeoutMs)));
    const per = t.filter((x) => x.tokens > 1).map((x) => ((x.lastAt - x.firstAt) * scale) / (x.tokens - 1));
    if (!per.length) throw new Error(`${target}: decode batch ${bs} streamed at most one token per request`);
    rows.push({ batch_size: bs, tpot: [Number((per.reduce((a, b) => a + b, 0) / per.length).toFixed(4))] });
    requests += bs;
  }
  if (rows.length) {
    const f = join(out, 'tpot_benchmark_table.json');
    writeFileSync(f, JSON.stringify({ tpot_unit: 'ms', lengths: [opts.decodePrompt + Math.round(opts.decodeTokens / 2)], rows }, null, 1) + '\n');
    files.push(f);
  }
  const meta = {
    kind: 'kvlab-collect',
    target,
    model,
    endpoint: '/v1/completions',
    prompt: 'token ids (random per request: no shared prefix)',
    template_tokens: 0,
    batch_sizes: opts.batchSizes,
    prompt_lengths: opts.promptLengths,
    repeats: opts.repeats,
    decode: { batch_sizes: opts.decodeBatchSizes, tokens: opts.decodeTokens, prompt_tokens: opts.decodePrompt },
    time_scale: scale,
    server: { models, emulator: status },
    date: new Date().toISOString(),
  };
  writeFileSync(join(out, 'collect.json'), JSON.stringify(meta, null, 1) + '\n');
  files.push(join(out, 'collect.json'));
  return { out, files, bursts, requests, meta };
}

/** The collect.json of a logs directory, or null. */
export function readCollectMeta(dir: string): { template_tokens: number; prompt_lengths: number[]; batch_sizes: number[] } | null {
  try {
    const m = JSON.parse(readFileSync(join(dir, 'collect.json'), 'utf8')) as Record<string, unknown>;
    if (m.kind !== 'kvlab-collect') return null;
    return { template_tokens: Number(m.template_tokens ?? 0), prompt_lengths: (m.prompt_lengths as number[]) ?? [], batch_sizes: (m.batch_sizes as number[]) ?? [] };
  } catch {
    return null;
  }
}

/**
 * Fit knots for a collected grid: 0, every prompt length and batch × length (capped at the
 * token budget) and the budget: the token counts of the grid's steps, and nothing in between the
 * grid does not measure (the step curve interpolates linearly there).
 */
export function collectKnots(base: Profile, promptLengths: readonly number[], batchSizes: readonly number[], templateTokens: number): number[] {
  const budget = base.engine.maxNumBatchedTokens;
  const k = new Set<number>([0, budget]);
  for (const pl of promptLengths) for (const bs of batchSizes) k.add(Math.min(budget, (pl + templateTokens) * bs));
  for (const pl of promptLengths) k.add(Math.min(budget, pl + templateTokens));
  return [...k].sort((a, b) => a - b);
}

/**
 * One burst per (file, BS, PL): the k-th fastest TTFT is the median of the k-th fastest over the
 * complete repeats, so a repeat slowed by the host (a load spike, a GC pause) does not pull the
 * fit. Incomplete repeats are dropped; a cell without a complete repeat keeps its first one.
 */
export function medianBursts(bursts: readonly Burst[]): Burst[] {
  const cells = new Map<string, Burst[]>();
  for (const b of bursts) {
    const k = `${b.file}|${b.bs}|${b.pl}`;
    cells.set(k, [...(cells.get(k) ?? []), b]);
  }
  const out: Burst[] = [];
  for (const group of cells.values()) {
    const full = group.filter((b) => b.complete);
    if (!full.length) {
      out.push(group[0]!);
      continue;
    }
    const sorted = full.map((b) => b.requests.map((q) => q.ttftMs).sort((x, y) => x - y));
    const first = full[0]!;
    const requests = first.requests.map((q, k) => ({ ...q, fileFirst: false, ttftMs: median(sorted.map((r) => r[k]!)) }));
    out.push({ ...first, requests });
  }
  return out;
}

/** Result of fitCollected. */
export interface CollectedFit {
  profile: Profile;
  fit: StepFit;
  check: CheckReport;
  /** mean |fitted − base| / base of the simulated TTFTs on the collected grid, % (the round-trip metric). */
  gridVsBasePct: number;
}

/**
 * Fits the step model of `base` (engine settings, model, hardware and its derived constants kept)
 * to collected logs, with knots at the grid's token counts and no short-prompt anchors.
 * @throws ProfileLogError naming a malformed log line; Error when `dir` has no logs
 */
export function fitCollected(dir: string, base: Profile, name?: string): CollectedFit {
  const logs = listTtftLogs(dir);
  if (!logs.length) throw new Error(`profile fit: no log-*.txt files in ${dir}`);
  const meta = readCollectMeta(dir);
  // collect warms the server up: no request of its logs is a cold one
  const raw: Burst[] = meta ? readBursts(logs).map((b) => ({ ...b, requests: b.requests.map((q) => ({ ...q, fileFirst: false })) })) : readBursts(logs);
  const bursts = meta ? medianBursts(raw) : raw;
  const tpl = meta ? meta.template_tokens : CHAT_TEMPLATE_TOKENS;
  const pls = meta?.prompt_lengths.length ? meta.prompt_lengths : [...new Set(bursts.map((b) => b.pl))];
  const bss = meta?.batch_sizes.length ? meta.batch_sizes : [...new Set(bursts.map((b) => b.bs))];
  let tpot = null;
  try {
    tpot = readTpotTable(join(dir, 'tpot_benchmark_table.json'));
  } catch (e) {
    if (!String((e as Error).message).includes('cannot read')) throw e;
  }
  const cfg: FitConfig = { ...DEFAULT_FIT_CONFIG, templateTokens: tpl, knots: collectKnots(base, pls, bss, tpl), tpotStride: 1, warm: meta !== null, startFromBase: true };
  const fit = fitStepModel(base, { bursts, tpot, anchors: [] }, cfg);
  const profile: Profile = {
    ...base,
    name: name ?? `${base.name}-collected`,
    derived: false,
    description: `Step model fitted by kvlab profile fit on logs collected by kvlab profile collect (${dir}); engine settings, model and derived constants of ${base.name}.`,
    source: `kvlab profile collect → ${dir}`,
    step: fit.step,
    coldStartMs: meta ? base.coldStartMs : Math.round(fit.coldStartMs), // collect warms the server up: no cold start in its logs
    fit: { generatedBy: 'kvlab profile fit (collected logs)', base: base.name, rows: fit.rows, excluded: fit.excluded, iterations: fit.iterations, converged: fit.converged },
  };
  const check = checkBursts(profile, raw, { templateTokens: tpl, coldStart: meta ? 'off' : 'auto' });
  let s = 0;
  let n = 0;
  for (const bs of bss) {
    for (const pl of pls) {
      const a = replayBurst(profile, bs, pl + tpl).ttftMs;
      const b = replayBurst(base, bs, pl + tpl).ttftMs;
      for (let i = 0; i < a.length; i++) {
        s += Math.abs(a[i]! - b[i]!) / b[i]!;
        n++;
      }
    }
  }
  const gridVsBasePct = (100 * s) / Math.max(1, n);
  (profile.fit as Record<string, unknown>).ttftMape = { all: Number(check.ttftMape.toFixed(2)), conforming: Number(check.conformingMape.toFixed(2)) };
  (profile.fit as Record<string, unknown>).gridVsBasePct = Number(gridVsBasePct.toFixed(3));
  return { profile, fit, check, gridVsBasePct };
}
