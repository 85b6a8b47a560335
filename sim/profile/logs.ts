/**
 * Readers for the profiling data the instance timing model is calibrated from
 * (reference/cacheroute.md §6): the raw TTFT benchmark logs and the TPOT table.
 *
 * TTFT log line format (cacheroute.md §6.1), one per request, client-side time to the first
 * streamed chunk of a chat request with `max_tokens` 1:
 *
 *   [TTFT] BS=b, PL=p, repeat=r, task=i/b, ttft=X.XXms
 *
 * BS = requests fired simultaneously (a "burst"), PL = synthetic prompt tokens (the chat template
 * adds ~25 more), repeat = 1..3. Every other line of a log ([INFO] stats, summaries, banners) is
 * ignored. A line that starts with `[TTFT]` but does not match is an error naming `FILE:LINE`.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { z } from 'zod';

/** One `[TTFT]` line: one request of one burst. */
export interface TtftRecord {
  /** log file (as given). */
  file: string;
  /** 1-based line number in `file`. */
  line: number;
  /** batch size B: requests fired simultaneously in this burst. */
  bs: number;
  /** prompt length PL, tokens, without the chat-template overhead. */
  pl: number;
  /** repeat number (1-based). */
  repeat: number;
  /** task index i of `task=i/b` (1-based). */
  task: number;
  /** measured client-side time to first token, ms. */
  ttftMs: number;
  /** true for the first `[TTFT]` line of its file (it may include the server's cold start). */
  fileFirst: boolean;
}

/** The requests of one (file, BS, PL, repeat): B requests sent at the same instant. */
export interface Burst {
  file: string;
  bs: number;
  pl: number;
  repeat: number;
  /** line of the burst's first `[TTFT]` line. */
  line: number;
  /** requests in log order. */
  requests: TtftRecord[];
  /** requests.length === bs (a failed request leaves a burst incomplete). */
  complete: boolean;
}

/** A malformed profiling file; the message starts with `FILE:LINE:` when a line is at fault. */
export class ProfileLogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProfileLogError';
  }
}

const TTFT_RE = /^\[TTFT\]\s+BS=(\d+),\s*PL=(\d+),\s*repeat=(\d+),\s*task=(\d+)\/(\d+),\s*ttft=(\d+(?:\.\d+)?)ms$/;
const TTFT_FORMAT = '[TTFT] BS=b, PL=p, repeat=r, task=i/b, ttft=X.XXms';

/**
 * Parses the `[TTFT]` lines of one log.
 * @param text file contents (LF or CRLF)
 * @param file name used in records and error messages
 * @throws ProfileLogError `FILE:LINE: ...` for a malformed `[TTFT]` line, a task index outside
 *   1..BS, a `task=i/b` whose b differs from BS, or a zero BS/PL
 */
export function parseTtftLog(text: string, file: string): TtftRecord[] {
  const out: TtftRecord[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.replace(/\r$/, '');
    const s = raw.trim();
    if (!s.startsWith('[TTFT]')) continue;
    const where = `${file}:${i + 1}`;
    const m = TTFT_RE.exec(s);
    if (!m) throw new ProfileLogError(`${where}: malformed [TTFT] line (expected "${TTFT_FORMAT}"): ${s}`);
    const [bs, pl, repeat, task, of] = [m[1], m[2], m[3], m[4], m[5]].map((x) => Number(x)) as [number, number, number, number, number];
    const ttftMs = Number(m[6]);
    if (bs < 1) throw new ProfileLogError(`${where}: BS must be >= 1: ${s}`);
    if (pl < 1) throw new ProfileLogError(`${where}: PL must be >= 1: ${s}`);
    if (repeat < 1) throw new ProfileLogError(`${where}: repeat must be >= 1: ${s}`);
    if (of !== bs) throw new ProfileLogError(`${where}: task=${task}/${of} does not match BS=${bs}: ${s}`);
    if (task < 1 || task > bs) throw new ProfileLogError(`${where}: task index ${task} outside 1..${bs}: ${s}`);
    out.push({ file, line: i + 1, bs, pl, repeat, task, ttftMs, fileFirst: out.length === 0 });
  }
  return out;
}

/** Reads and parses one TTFT log file (see parseTtftLog). */
export function readTtftLog(path: string): TtftRecord[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ProfileLogError(`${path}: cannot read: ${(e as Error).message}`);
  }
  return parseTtftLog(text, path);
}

/**
 * Groups records into bursts by (file, BS, PL, repeat), in order of first appearance.
 * @throws ProfileLogError `FILE:LINE:` when a burst has the same task index twice or more than BS lines
 */
export function groupBursts(records: readonly TtftRecord[]): Burst[] {
  const byKey = new Map<string, Burst>();
  const order: Burst[] = [];
  for (const r of records) {
    const key = `${r.file}\u0000${r.bs}\u0000${r.pl}\u0000${r.repeat}`;
    let b = byKey.get(key);
    if (!b) {
      b = { file: r.file, bs: r.bs, pl: r.pl, repeat: r.repeat, line: r.line, requests: [], complete: false };
      byKey.set(key, b);
      order.push(b);
    }
    if (b.requests.some((q) => q.task === r.task)) {
      throw new ProfileLogError(`${r.file}:${r.line}: duplicate task ${r.task}/${r.bs} in burst BS=${r.bs}, PL=${r.pl}, repeat=${r.repeat}`);
    }
    b.requests.push(r);
    if (b.requests.length > b.bs) {
      throw new ProfileLogError(`${r.file}:${r.line}: more than BS=${r.bs} requests in burst PL=${r.pl}, repeat=${r.repeat}`);
    }
    b.complete = b.requests.length === b.bs;
  }
  return order;
}

/**
 * The TTFT logs of a profile directory: files named `log-*.txt`, sorted by the number in the
 * name (log-bs1, log-bs2, ..., log-bs10).
 */
export function listTtftLogs(dir: string): string[] {
  const names = readdirSync(dir).filter((n) => /^log-.*\.txt$/.test(n));
  const num = (n: string): number => Number(/(\d+)/.exec(n)?.[1] ?? Infinity);
  names.sort((a, b) => num(a) - num(b) || a.localeCompare(b));
  return names.map((n) => join(dir, n));
}

/** Reads several TTFT logs and groups their lines into bursts. */
export function readBursts(paths: readonly string[]): Burst[] {
  const recs: TtftRecord[] = [];
  for (const p of paths) recs.push(...readTtftLog(p));
  return groupBursts(recs);
}

/** Measured time per output token (ms) by batch size and sequence length (cacheroute.md §6.4). */
export interface TpotTable {
  /** sequence lengths (prompt + generated tokens) of the columns. */
  lengths: number[];
  rows: { batchSize: number; tpotMs: number[] }[];
}

const tpotSchema = z.object({
  tpot_unit: z.literal('ms'),
  lengths: z.array(z.number().int().positive()).min(1),
  rows: z
    .array(z.object({ batch_size: z.number().int().positive(), tpot: z.array(z.number().finite().positive()) }))
    .min(1),
});

/**
 * Reads `tpot_benchmark_table.json` ({tpot_unit: "ms", lengths, rows: [{batch_size, tpot}]}).
 * @throws ProfileLogError naming the file and the offending field
 */
export function readTpotTable(path: string): TpotTable {
  let obj: unknown;
  try {
    obj = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ProfileLogError(`${path}: cannot read TPOT table: ${(e as Error).message}`);
  }
  const r = tpotSchema.safeParse(obj);
  if (!r.success) {
    const msg = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new ProfileLogError(`${path}: invalid TPOT table: ${msg}`);
  }
  const t = r.data;
  t.rows.forEach((row, i) => {
    if (row.tpot.length !== t.lengths.length) {
      throw new ProfileLogError(`${path}: rows.${i}.tpot has ${row.tpot.length} values for ${t.lengths.length} lengths`);
    }
  });
  return { lengths: t.lengths, rows: t.rows.map((row) => ({ batchSize: row.batch_size, tpotMs: row.tpot })) };
}

/** Short display name of a log path (its base name). */
export function logName(path: string): string {
  return basename(path);
}

// ---------------------------------------------------------------------------------------------
// Constants of the CacheRoute logs and of the fit's defaults

/** Chat-template overhead added to the synthetic prompt of the logs, tokens (cacheroute.md §5.1: L = PL + 25). */
export const CHAT_TEMPLATE_TOKENS = 25;

/**
 * Short-prompt bs = 1 anchors (L = PL + 25 tokens, mean TTFT ms) from CacheRoute's supplementary
 * measured logs (cacheroute.md §5.1 and §6.2, "small lengths" file, PL 10..90).
 */
export const SHORT_PROMPT_ANCHORS: readonly Anchor[] = [
  [35, 47],
  [45, 53.26],
  [55, 65.97],
  [65, 70.71],
  [75, 76.63],
  [89, 88.38],
  [95, 90.35],
  [105, 93.01],
  [115, 95.67],
].map(([promptTokens, ttftMs]) => ({ promptTokens: promptTokens!, ttftMs: ttftMs! }));

/** Default curve knots, tokens per step (knots[0] = 0 where the curve is 0). */
export const DEFAULT_KNOTS: readonly number[] = [0, 32, 64, 96, 128, 256, 384, 512, 1024, 2048, 4096, 8192, 16384];

/**
 * Frontend stagger, ms between simultaneous requests reaching the engine core. vLLM's API server
 * applies the chat template, tokenizes (≈1–3 ms for ≤4k tokens with the fast tokenizer) and hands
 * each request to the core over IPC one after the other on one event loop, so a burst trickles in
 * a few ms apart. 3 ms keeps a burst of 8 (24 ms) inside the shortest first step of the data
 * (~30 ms at 35 tokens), which gives the dominant logged pattern: one request alone, then B−1.
 */
export const FRONTEND_MS_PER_REQUEST = 3;

/** A bs = 1 TTFT measurement at `promptTokens` (template included), ms. */
export interface Anchor {
  promptTokens: number;
  ttftMs: number;
}
