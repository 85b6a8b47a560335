/**
 * The built-in synthetic RAG workload (kvlab's default): a seeded knowledge catalog with Zipf
 * popularity and lognormal lengths, Poisson or bursty (gamma) arrivals.
 */
import { createHash } from 'node:crypto';
import { ragRequest } from './blocks.js';
import { ZipfSampler, exponential, gammaGap, lognormalInt, makeRng, type Rng } from './random.js';
import type { KnowledgeRef, LoadedTrace, TraceRequest } from './schema.js';

/** Parameters of the synthetic workload. Lengths in tokens, rate in requests/s. */
export interface SyntheticOptions {
  /** Number of requests. */
  requests: number;
  /** Mean arrival rate, requests per second. */
  rate: number;
  /** `poisson`: exponential gaps; `bursty`: gamma gaps with coefficient of variation burstCv. */
  arrival: 'poisson' | 'bursty';
  /** Coefficient of variation of the gaps when `arrival` is bursty (1 = Poisson). */
  burstCv: number;
  /** Documents in the knowledge catalog. */
  docs: number;
  /** Zipf exponent of document popularity (doc 0 most popular; 0 = uniform). */
  zipfS: number;
  /** Lognormal document length: median, log-sigma, clamp [min, max] (tokens). */
  docMedianTokens: number;
  docSigma: number;
  docMinTokens: number;
  docMaxTokens: number;
  /**
   * Distinct documents per request (retrieval top-k): uniform on [docsPerRequest,
   * docsPerRequestMax] (docsPerRequestMax 0 = exactly docsPerRequest), each drawn by Zipf
   * popularity, placed in the prompt prefix in `docOrder`.
   */
  docsPerRequest: number;
  /** Upper bound of the documents per request (0 = docsPerRequest). */
  docsPerRequestMax: number;
  /**
   * Prompt order of a request's documents: `sampled` = the order they were drawn in (popular
   * documents tend to come first), `shuffled` = a uniform random permutation (retrieval rank is
   * query-specific: it does not follow global popularity).
   */
  docOrder: 'sampled' | 'shuffled';
  /** Lognormal question length (tokens). */
  questionMedianTokens: number;
  questionSigma: number;
  questionMinTokens: number;
  questionMaxTokens: number;
  /** Lognormal output length (tokens). */
  outputMedianTokens: number;
  outputSigma: number;
  outputMinTokens: number;
  outputMaxTokens: number;
  /** Chat-template tokens before the knowledge. */
  chatTemplateTokens: number;
  /** Tokens per prefix block. */
  blockSize: number;
  /**
   * Context window (0 = none): trailing documents that would leave no room for one output token
   * are dropped (at least one document is kept, as a RAG framework fills its context budget),
   * and output tokens are clamped so prompt + output <= maxModelLen. A prompt still longer (one
   * huge document) is kept; drivers reject it like vLLM.
   */
  maxModelLen: number;
  /** Multiplies arrival times (as for file traces). */
  timeScale: number;
  /** Seed of every random choice. */
  seed: number | string;
}

/** Defaults of the synthetic workload (printed by `kvlab trace defaults`). */
export const SYNTHETIC_DEFAULTS: Readonly<SyntheticOptions> = Object.freeze({
  requests: 1000,
  rate: 1.5,
  arrival: 'poisson',
  burstCv: 3,
  docs: 200,
  zipfS: 1.0,
  docMedianTokens: 1200,
  docSigma: 0.6,
  docMinTokens: 128,
  docMaxTokens: 3500,
  docsPerRequest: 1,
  docsPerRequestMax: 0,
  docOrder: 'sampled',
  questionMedianTokens: 24,
  questionSigma: 0.5,
  questionMinTokens: 4,
  questionMaxTokens: 200,
  outputMedianTokens: 128,
  outputSigma: 0.7,
  outputMinTokens: 1,
  outputMaxTokens: 512,
  chatTemplateTokens: 25,
  blockSize: 256,
  maxModelLen: 4096,
  timeScale: 1,
  seed: 1,
});

/**
 * Defaults of the multi-document RAG workload (`--workload rag`): the synthetic generator with
 * retrieval top-k 3–5 documents per request (Zipf 1.0 popularity per document) in
 * query-specific (shuffled) order, and passage-sized documents (median 400 tokens, 64–1,500) so
 * five of them fit Llama-3's 4,096-token window. Arrival rate 0.7 req/s.
 */
export const RAG_DEFAULTS: Readonly<SyntheticOptions> = Object.freeze({
  ...SYNTHETIC_DEFAULTS,
  rate: 0.7,
  docMedianTokens: 400,
  docSigma: 0.5,
  docMinTokens: 64,
  docMaxTokens: 1500,
  docsPerRequest: 3,
  docsPerRequestMax: 5,
  docOrder: 'shuffled' as const,
});

/** One catalog document. */
export interface SyntheticDoc extends KnowledgeRef {
  /** The synthetic name whose sha256 is the kid. */
  name: string;
}

/**
 * The knowledge catalog for a seed: `docs` documents, index = popularity rank, kid = sha256 hex
 * of `kvlab-synthetic/<seed>/doc-<i>`, lognormal lengths. Depends only on seed and the doc-*
 * options, so traces with other request counts or rates reuse the same catalog.
 */
export function syntheticCatalog(opts: Partial<SyntheticOptions> = {}): SyntheticDoc[] {
  const o = { ...SYNTHETIC_DEFAULTS, ...opts };
  const rng = makeRng(o.seed, 'catalog');
  const docs: SyntheticDoc[] = [];
  for (let i = 0; i < o.docs; i++) {
    const name = `kvlab-synthetic/${String(o.seed)}/doc-${i}`;
    docs.push({
      name,
      kid: createHash('sha256').update(name).digest('hex'),
      tokens: lognormalInt(rng, o.docMedianTokens, o.docSigma, o.docMinTokens, o.docMaxTokens),
    });
  }
  return docs;
}

function check(cond: boolean, what: string, v: unknown): void {
  if (!cond) throw new RangeError(`synthetic workload: ${what}, got ${String(v)}`);
}

function validate(o: SyntheticOptions): void {
  const posInt = (v: number) => Number.isSafeInteger(v) && v >= 1;
  check(posInt(o.requests), 'requests must be a positive integer', o.requests);
  check(Number.isFinite(o.rate) && o.rate > 0, 'rate must be > 0 req/s', o.rate);
  check(o.arrival === 'poisson' || o.arrival === 'bursty', 'arrival must be poisson or bursty', o.arrival);
  check(Number.isFinite(o.burstCv) && o.burstCv > 0, 'burstCv must be > 0', o.burstCv);
  check(posInt(o.docs), 'docs must be a positive integer', o.docs);
  check(Number.isFinite(o.zipfS) && o.zipfS >= 0, 'zipfS must be >= 0', o.zipfS);
  check(posInt(o.docsPerRequest) && o.docsPerRequest <= o.docs, 'docsPerRequest must be in 1..docs', o.docsPerRequest);
  check(Number.isSafeInteger(o.docsPerRequestMax) && (o.docsPerRequestMax === 0 || (o.docsPerRequestMax >= o.docsPerRequest && o.docsPerRequestMax <= o.docs)), 'docsPerRequestMax must be 0 or in docsPerRequest..docs', o.docsPerRequestMax);
  check(o.docOrder === 'sampled' || o.docOrder === 'shuffled', 'docOrder must be sampled or shuffled', o.docOrder);
  check(posInt(o.blockSize), 'blockSize must be a positive integer', o.blockSize);
  check(Number.isSafeInteger(o.chatTemplateTokens) && o.chatTemplateTokens >= 0, 'chatTemplateTokens must be >= 0', o.chatTemplateTokens);
  check(Number.isSafeInteger(o.maxModelLen) && o.maxModelLen >= 0, 'maxModelLen must be an integer >= 0', o.maxModelLen);
  check(Number.isFinite(o.timeScale) && o.timeScale >= 0, 'timeScale must be >= 0', o.timeScale);
  for (const k of ['doc', 'question', 'output'] as const) {
    const min = o[`${k}MinTokens`];
    const max = o[`${k}MaxTokens`];
    check(posInt(min) && posInt(max) && min <= max, `${k}MinTokens..${k}MaxTokens must be 1 <= min <= max`, `${min}..${max}`);
    check(o[`${k}MedianTokens`] > 0 && o[`${k}Sigma`] >= 0, `${k} median must be > 0 and sigma >= 0`, o[`${k}MedianTokens`]);
  }
}

function pickDocs(rng: Rng, zipf: ZipfSampler, k: number): number[] {
  const chosen: number[] = [];
  while (chosen.length < k) {
    let r = -1;
    for (let tries = 0; tries < 1000; tries++) {
      const c = zipf.sample(rng);
      if (!chosen.includes(c)) {
        r = c;
        break;
      }
    }
    if (r < 0) for (r = 0; chosen.includes(r); r++); // pathological skew: most popular unused doc
    chosen.push(r);
  }
  return chosen;
}

/** Fisher–Yates shuffle in place with a seeded generator. */
function shuffle(rng: Rng, a: number[]): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const t = a[i]!;
    a[i] = a[j]!;
    a[j] = t;
  }
}

/**
 * Generates the synthetic RAG workload. Deterministic given the options (seed included).
 *
 * Request i: `id` r<i>, knowledge = k distinct catalog docs drawn by Zipf popularity (k uniform
 * on [docsPerRequest, docsPerRequestMax]) in `docOrder`, trailing ones dropped to fit maxModelLen, `inputTokens = chatTemplateTokens + knowledge tokens + question tokens`, output
 * tokens lognormal (clamped to fit maxModelLen), blocks from ragBlockIds via {@link ragRequest} (question blocks
 * unique per request), arrivals starting at 0 ms. Separate random streams are used for the
 * catalog, the per-request draws and the arrivals, so changing `rate` keeps the same requests.
 *
 * @param defaults the defaults `opts` override ({@link SYNTHETIC_DEFAULTS}, or {@link RAG_DEFAULTS} for `rag`)
 * @param name `meta.name` of the trace
 * @throws RangeError on invalid options.
 */
export function generateSynthetic(opts: Partial<SyntheticOptions> = {}, defaults: Readonly<SyntheticOptions> = SYNTHETIC_DEFAULTS, name = 'synthetic'): LoadedTrace {
  const o: SyntheticOptions = { ...defaults, ...opts };
  validate(o);
  const catalog = syntheticCatalog(o);
  const zipf = new ZipfSampler(o.docs, o.zipfS);
  const rng = makeRng(o.seed, 'requests');
  const arrivals = makeRng(o.seed, 'arrivals');
  const meanGapMs = 1000 / o.rate;
  const salt = `synthetic/${String(o.seed)}`;
  const requests: TraceRequest[] = [];
  let t = 0;
  for (let i = 0; i < o.requests; i++) {
    if (i > 0) {
      t += o.arrival === 'poisson' ? exponential(arrivals, meanGapMs) : gammaGap(arrivals, meanGapMs, o.burstCv);
    }
    // the single-k path draws exactly what it always did (same requests for old seeds)
    const k = o.docsPerRequestMax > o.docsPerRequest ? o.docsPerRequest + Math.floor(rng() * (o.docsPerRequestMax - o.docsPerRequest + 1)) : o.docsPerRequest;
    const picked = pickDocs(rng, zipf, k);
    if (o.docOrder === 'shuffled') shuffle(rng, picked);
    const knowledge = picked.map((r) => ({ kid: catalog[r]!.kid, tokens: catalog[r]!.tokens }));
    const question = lognormalInt(rng, o.questionMedianTokens, o.questionSigma, o.questionMinTokens, o.questionMaxTokens);
    let knowledgeTokens = knowledge.reduce((a, d) => a + d.tokens, 0);
    while (o.maxModelLen > 0 && knowledge.length > 1 && o.chatTemplateTokens + knowledgeTokens + question + 1 > o.maxModelLen) {
      knowledgeTokens -= knowledge.pop()!.tokens;
    }
    const inputTokens = o.chatTemplateTokens + knowledgeTokens + question;
    let outputTokens = lognormalInt(rng, o.outputMedianTokens, o.outputSigma, o.outputMinTokens, o.outputMaxTokens);
    if (o.maxModelLen > 0) outputTokens = Math.max(1, Math.min(outputTokens, o.maxModelLen - inputTokens));
    requests.push(
      ragRequest({
        index: i,
        arrivalMs: t,
        timeScale: o.timeScale,
        inputTokens,
        outputTokens,
        blockSize: o.blockSize,
        chatTemplateTokens: o.chatTemplateTokens,
        knowledge,
        requestSalt: `${salt}/${i}`,
      }),
    );
  }
  return {
    requests,
    meta: {
      name,
      file: '',
      format: 'synthetic',
      blockSize: o.blockSize,
      lines: o.requests,
      skipped: 0,
      skippedReasons: [],
      reordered: 0,
    },
  };
}
