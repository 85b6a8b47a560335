/**
 * CacheRoute NQ workload: 99 Natural Questions, each with its knowledge document.
 *
 * Directory layout (see the data's SOURCE.md):
 *   workload_nq.json   {"requests": [{"name": "q1", "messages": [{"role": "user", "content": "..."}]}, ...]}
 *   dataset.csv        per question: dataset_source, kdn_reference_document_id (kid), user_question, ...
 *   knowledge/<kid>.txt  the document text
 * Workload question i is matched to the dataset row with the same question text (Unicode-NFKC,
 * whitespace-collapsed), else to the i-th NQ row that has a kid (one question in the release was
 * reworded in the workload file). Token counts use the Llama-3 tokenizer (llama3-tokenizer-js).
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parse as parseCsvSync } from 'csv-parse/sync';
import { ragRequest } from './blocks.js';
import { ZipfSampler, exponential, makeRng } from './random.js';
import { baseName } from './common.js';
import type { KnowledgeRef, LoadedTrace, TraceRequest } from './schema.js';

/** Options of {@link loadNq}. Lengths in tokens, rate in requests/s. */
export interface NqOptions {
  /** Number of requests to sample (with replacement) from the questions. */
  requests: number;
  /** Mean arrival rate, requests/s. */
  rate: number;
  /** `poisson`: exponential gaps; `uniform`: evenly spaced 1000/rate ms apart. Both start at 0. */
  arrival: 'poisson' | 'uniform';
  /** Zipf exponent of question popularity (question q1 most popular); 0 = uniform. */
  zipfS: number;
  /** Output tokens of every request. */
  outputTokens: number;
  /**
   * Documents per question. 1 = the dataset's reference document (CacheRoute's mapping); k > 1 =
   * the k documents of the workload's knowledge/ directory with the most words in common with
   * the question ({@link retrieveDocuments}), best first.
   */
  topK: number;
  /**
   * Context window, tokens (0 = none): retrieved documents that would push prompt + output
   * tokens past it are dropped from the end (the best one is always kept).
   */
  contextTokens: number;
  /** Chat-template tokens added to doc + question tokens. */
  chatTemplateTokens: number;
  /** Tokens per prefix block. */
  blockSize: number;
  /** Multiplies arrival times. */
  timeScale: number;
  /** Seed of the sampling and the arrivals. */
  seed: number | string;
}

/** Defaults of the NQ workload (printed by `kvlab trace defaults --workload nq`). */
export const NQ_DEFAULTS: Readonly<NqOptions> = Object.freeze({
  requests: 200,
  rate: 1,
  arrival: 'poisson',
  zipfS: 0,
  outputTokens: 64,
  topK: 1,
  contextTokens: 4096,
  chatTemplateTokens: 25,
  blockSize: 256,
  timeScale: 1,
  seed: 1,
});

/** One question of the NQ workload with its document, tokenized. */
export interface NqQuestion {
  /** Workload name, e.g. "q17". */
  name: string;
  /** The user message text (as sent to the model). */
  question: string;
  questionTokens: number;
  /** Knowledge id = document file name without .txt. */
  kid: string;
  docTokens: number;
}

type Tokenizer = { encode(s: string, o?: { bos?: boolean; eos?: boolean }): number[] };
let tokenizer: Promise<Tokenizer> | null = null;
const tokenCache = new Map<string, number>();

/**
 * Llama-3 token count of `text` without BOS/EOS (llama3-tokenizer-js, loaded lazily on first
 * use). Results are cached per text.
 */
export async function llama3TokenCount(text: string): Promise<number> {
  const hit = tokenCache.get(text);
  if (hit !== undefined) return hit;
  tokenizer ??= import('llama3-tokenizer-js').then((m) => m.default as Tokenizer);
  const n = (await tokenizer).encode(text, { bos: false, eos: false }).length;
  tokenCache.set(text, n);
  return n;
}

const normText = (s: string) => s.normalize('NFKC').split(/\s+/).filter(Boolean).join(' ');

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    throw new Error(`NQ workload: ${what} not found: ${path}`);
  }
}

/** Words too common to count as overlap (articles, auxiliaries, question words, prepositions). */
const STOPWORDS = new Set(
  'a an and are as at be by did do does for from give had has have how in is it its list me of on or the their there this to was were what when where which who whom why will with'.split(' '),
);

/** The distinct lower-case words (letters and digits) of a text, stop words removed. */
export function contentWords(text: string): Set<string> {
  const out = new Set<string>();
  for (const w of text.normalize('NFKC').toLowerCase().split(/[^\p{L}\p{N}]+/u)) if (w.length > 1 && !STOPWORDS.has(w)) out.add(w);
  return out;
}

/** A retrievable document: its kid and its {@link contentWords}. */
export interface RetrievalDoc {
  kid: string;
  words: Set<string>;
}

/**
 * Word-overlap retrieval (deterministic): the `k` documents sharing the most distinct content
 * words with the question, best first; ties go to the smaller kid.
 * @returns indices into `docs`
 */
export function retrieveDocuments(question: string, docs: readonly RetrievalDoc[], k: number): number[] {
  const q = contentWords(question);
  const scored = docs.map((d, i) => {
    let s = 0;
    for (const w of q) if (d.words.has(w)) s++;
    return { i, s, kid: d.kid };
  });
  scored.sort((a, b) => b.s - a.s || (a.kid < b.kid ? -1 : a.kid > b.kid ? 1 : 0));
  return scored.slice(0, Math.max(0, k)).map((x) => x.i);
}

/** Every document of a workload's knowledge/ directory (kid = file name), tokenized, in kid order. */
async function readNqDocuments(dir: string): Promise<Array<RetrievalDoc & { tokens: number }>> {
  const kdir = join(dir, 'knowledge');
  let names: string[];
  try {
    names = (await readdir(kdir)).filter((n) => n.endsWith('.txt')).sort();
  } catch {
    throw new Error(`NQ workload: knowledge directory not found: ${kdir}`);
  }
  const out: Array<RetrievalDoc & { tokens: number }> = [];
  for (const n of names) {
    const text = await readText(join(kdir, n), 'document');
    out.push({ kid: n.slice(0, -4), words: contentWords(text), tokens: await llama3TokenCount(text) });
  }
  return out;
}

/**
 * Reads and tokenizes the questions of an NQ workload directory (in workload order).
 * @throws Error naming the path when a file is missing or malformed, or a question has no
 *   dataset row / document.
 */
export async function readNqQuestions(dir: string): Promise<NqQuestion[]> {
  const wlPath = join(dir, 'workload_nq.json');
  const dsPath = join(dir, 'dataset.csv');
  let wl: unknown;
  try {
    wl = JSON.parse(await readText(wlPath, 'workload file'));
  } catch (e) {
    throw new Error(`NQ workload: ${wlPath}: ${(e as Error).message}`);
  }
  const wlReqs = (wl as { requests?: unknown }).requests;
  if (!Array.isArray(wlReqs)) throw new Error(`NQ workload: ${wlPath}: expected {"requests": [...]}`);
  const rows = parseCsvSync(await readText(dsPath, 'dataset'), {
    columns: true,
    bom: true,
    skip_empty_lines: true,
    record_delimiter: ['\r\n', '\n'],
  }) as Record<string, string | undefined>[];
  const withKid = rows.filter((r) => (r.kdn_reference_document_id ?? '').trim() !== '');
  const byText = new Map<string, Record<string, string | undefined>>();
  for (const r of withKid) byText.set(normText(r.user_question ?? ''), r);
  const nqWithKid = withKid.filter((r) => r.dataset_source === undefined || r.dataset_source === 'NQ');

  const out: NqQuestion[] = [];
  for (let i = 0; i < wlReqs.length; i++) {
    const q = wlReqs[i] as { name?: unknown; messages?: { role?: unknown; content?: unknown }[] };
    const users = Array.isArray(q.messages) ? q.messages.filter((m) => m.role === 'user') : [];
    const content = users.at(-1)?.content;
    const name = typeof q.name === 'string' ? q.name : `q${i + 1}`;
    if (typeof content !== 'string') throw new Error(`NQ workload: ${wlPath}: request ${name} has no user message`);
    const row = byText.get(normText(content)) ?? nqWithKid[i];
    if (row === undefined) throw new Error(`NQ workload: ${dsPath}: no dataset row with a document for ${name}`);
    const kid = row.kdn_reference_document_id!.trim();
    const docPath = join(dir, 'knowledge', `${kid}.txt`);
    const doc = await readText(docPath, `document of ${name}`);
    out.push({
      name,
      question: content,
      questionTokens: await llama3TokenCount(content),
      kid,
      docTokens: await llama3TokenCount(doc),
    });
  }
  if (out.length === 0) throw new Error(`NQ workload: ${wlPath}: no requests`);
  return out;
}

/**
 * Builds an NQ request trace from a workload directory. Deterministic given the options.
 *
 * Request i (`id` r<i>) is a question drawn with replacement (Zipf over workload order), with
 * `knowledge = [{kid, tokens: docTokens}]` (topK 1) or its top-k retrieved documents (best
 * first, trimmed to `contextTokens`), `inputTokens = chatTemplateTokens + document tokens +
 * questionTokens`, `outputTokens` fixed, `question` set, blocks from ragBlockIds (question blocks
 * unique per request). `meta.lines` is the number of workload questions.
 *
 * @throws Error naming the path when the directory or a file is missing; RangeError on bad options.
 */
export async function loadNq(dir: string, opts: Partial<NqOptions> = {}): Promise<LoadedTrace> {
  const o: NqOptions = { ...NQ_DEFAULTS, ...opts };
  const bad = (what: string, v: unknown) => new RangeError(`NQ workload: ${what}, got ${String(v)}`);
  if (!Number.isSafeInteger(o.requests) || o.requests < 1) throw bad('requests must be a positive integer', o.requests);
  if (!Number.isFinite(o.rate) || o.rate <= 0) throw bad('rate must be > 0 req/s', o.rate);
  if (o.arrival !== 'poisson' && o.arrival !== 'uniform') throw bad('arrival must be poisson or uniform', o.arrival);
  if (!Number.isFinite(o.zipfS) || o.zipfS < 0) throw bad('zipfS must be >= 0', o.zipfS);
  if (!Number.isSafeInteger(o.outputTokens) || o.outputTokens < 1) throw bad('outputTokens must be a positive integer', o.outputTokens);
  if (!Number.isSafeInteger(o.topK) || o.topK < 1) throw bad('topK must be a positive integer', o.topK);
  if (!Number.isSafeInteger(o.contextTokens) || o.contextTokens < 0) throw bad('contextTokens must be an integer >= 0', o.contextTokens);
  if (!Number.isSafeInteger(o.blockSize) || o.blockSize < 1) throw bad('blockSize must be a positive integer', o.blockSize);
  if (!Number.isSafeInteger(o.chatTemplateTokens) || o.chatTemplateTokens < 0) throw bad('chatTemplateTokens must be >= 0', o.chatTemplateTokens);
  if (!Number.isFinite(o.timeScale) || o.timeScale < 0) throw bad('timeScale must be >= 0', o.timeScale);
  const isDir = await stat(dir).then((s) => s.isDirectory(), () => false);
  if (!isDir) throw new Error(`NQ workload directory not found: ${dir}`);

  const questions = await readNqQuestions(dir);
  // top-k retrieval over the whole knowledge directory, once per question
  let retrieved: KnowledgeRef[][] | null = null;
  if (o.topK > 1) {
    const docs = await readNqDocuments(dir);
    if (docs.length < o.topK) throw bad(`topK must be <= the ${docs.length} documents of ${join(dir, 'knowledge')}`, o.topK);
    retrieved = questions.map((q) => retrieveDocuments(q.question, docs, o.topK).map((i) => ({ kid: docs[i]!.kid, tokens: docs[i]!.tokens })));
  }
  const zipf = new ZipfSampler(questions.length, o.zipfS);
  const pick = makeRng(o.seed, 'nq-questions');
  const arrivals = makeRng(o.seed, 'nq-arrivals');
  const gapMs = 1000 / o.rate;
  const salt = `nq/${String(o.seed)}`;
  const requests: TraceRequest[] = [];
  let t = 0;
  for (let i = 0; i < o.requests; i++) {
    if (i > 0) t += o.arrival === 'uniform' ? gapMs : exponential(arrivals, gapMs);
    const qi = zipf.sample(pick);
    const q = questions[qi]!;
    const knowledge = retrieved ? retrieved[qi]!.slice() : [{ kid: q.kid, tokens: q.docTokens }];
    let docTokens = knowledge.reduce((a, d) => a + d.tokens, 0);
    while (o.contextTokens > 0 && knowledge.length > 1 && o.chatTemplateTokens + docTokens + q.questionTokens + o.outputTokens > o.contextTokens) {
      docTokens -= knowledge.pop()!.tokens;
    }
    const inputTokens = o.chatTemplateTokens + docTokens + q.questionTokens;
    requests.push(
      ragRequest({
        index: i,
        arrivalMs: t,
        timeScale: o.timeScale,
        inputTokens,
        outputTokens: o.outputTokens,
        blockSize: o.blockSize,
        chatTemplateTokens: o.chatTemplateTokens,
        knowledge,
        requestSalt: `${salt}/${i}`,
        question: q.question,
      }),
    );
  }
  return {
    requests,
    meta: {
      name: baseName(dir),
      file: dir,
      format: 'nq',
      blockSize: o.blockSize,
      lines: questions.length,
      skipped: 0,
      skippedReasons: [],
      reordered: 0,
    },
  };
}
