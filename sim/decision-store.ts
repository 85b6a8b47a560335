/**
 * Compact, column-oriented storage of the engine's decisions for a whole run (typed arrays
 * indexed by request, alternatives in one shared pool). Keeping Decision objects alive until the
 * records are written made the garbage collector copy ~200,000 objects per Mooncake replay;
 * storing columns keeps the heap flat. `get(r)` rebuilds the Decision when a record is written.
 */
import { INTENTS, type Alternative, type Decision, type Intent } from '../engine/types.js';
import { j3 } from './format.js';

const INTENT_CODE: Record<Intent, number> = { none: 0, text: 1, kvcache: 2, hybrid: 3, blend: 4, overlap: 5 };
const PRED = 7; // prepare, link wait, transfer, kv load, queue, prefill, ttft

/** Decisions of one run, by request index 0..n-1. */
export class DecisionStore {
  readonly instance: Int32Array;
  readonly kdn: Int32Array;
  readonly intentCode: Uint8Array;
  readonly reused: Float64Array;
  readonly cached: Float64Array;
  /** output tokens the engine assumed (max_tokens or predicted). */
  readonly expectedOut: Float64Array;
  /** peer transfer (Mooncake): source instance (-1 = none) and tokens. */
  readonly peerFrom: Int32Array;
  readonly peerTokens: Float64Array;
  /** disaggregated decisions: decode instance (-1 = colocated). */
  readonly decode: Int32Array;
  /** predicted hand-off per request (link wait, exposed transfer, TBT on D; ms), allocated at the first disaggregated decision. */
  private pdPred: Float64Array | null = null;
  /** admission-control rejection reason, when rejected. */
  private readonly rejected = new Map<number, string>();
  /** overlap split point (tokens), -1 when the decision has none. */
  readonly split: Float64Array;
  private readonly pred: Float64Array;
  private readonly reason: string[];
  private readonly strategy: string[];
  private readonly requestId: string[];
  private readonly altOff: Int32Array;
  private readonly altCnt: Int32Array;
  private altInst = new Int32Array(1024);
  private altIntent = new Uint8Array(1024);
  private altScore = new Float64Array(1024);
  /** NaN = not given. */
  private altTtft = new Float64Array(1024);
  private altReused = new Float64Array(1024);
  private altN = 0;

  /** @param n number of requests of the run */
  constructor(readonly n: number) {
    this.instance = new Int32Array(n).fill(-1);
    this.kdn = new Int32Array(n).fill(-1);
    this.intentCode = new Uint8Array(n);
    this.reused = new Float64Array(n);
    this.cached = new Float64Array(n);
    this.expectedOut = new Float64Array(n);
    this.peerFrom = new Int32Array(n).fill(-1);
    this.peerTokens = new Float64Array(n);
    this.split = new Float64Array(n).fill(-1);
    this.decode = new Int32Array(n).fill(-1);
    this.pred = new Float64Array(n * PRED);
    this.reason = new Array<string>(n);
    this.strategy = new Array<string>(n);
    this.requestId = new Array<string>(n);
    this.altOff = new Int32Array(n);
    this.altCnt = new Int32Array(n);
  }

  /** Intent of request r. */
  intent(r: number): Intent {
    return INTENTS[this.intentCode[r]!]!;
  }

  /** Predicted TTFT (ms) of request r. */
  predictedTtft(r: number): number {
    return this.pred[r * PRED + 6]!;
  }

  /** Stores the decision of request r (the Decision object can then be dropped). */
  set(r: number, d: Decision): void {
    this.instance[r] = d.instance;
    this.kdn[r] = d.kdn;
    this.intentCode[r] = INTENT_CODE[d.intent];
    this.reused[r] = d.reusedTokens;
    this.cached[r] = d.cachedTokens;
    this.expectedOut[r] = d.expectedOutputTokens;
    if (d.peer) {
      this.peerFrom[r] = d.peer.from;
      this.peerTokens[r] = d.peer.tokens;
    }
    if (d.rejected) this.rejected.set(r, d.rejected);
    this.split[r] = d.overlapSplit ?? -1;
    if (d.decode !== undefined) {
      this.decode[r] = d.decode;
      const pp = (this.pdPred ??= new Float64Array(this.n * 3));
      const q = d.pdPredicted;
      pp[r * 3] = q?.linkWaitMs ?? 0;
      pp[r * 3 + 1] = q?.transferMs ?? 0;
      pp[r * 3 + 2] = q?.tbtMs ?? 0;
    }
    const p = d.predicted;
    const o = r * PRED;
    const pr = this.pred;
    pr[o] = p.prepareMs;
    pr[o + 1] = p.linkWaitMs;
    pr[o + 2] = p.transferMs;
    pr[o + 3] = p.kvLoadMs;
    pr[o + 4] = p.queueMs;
    pr[o + 5] = p.prefillMs;
    pr[o + 6] = p.ttftMs;
    this.reason[r] = d.reason;
    this.strategy[r] = d.strategy;
    this.requestId[r] = d.requestId;
    const alts = d.alternatives;
    if (this.altN + alts.length > this.altScore.length) this.grow(this.altN + alts.length);
    this.altOff[r] = this.altN;
    this.altCnt[r] = alts.length;
    for (let j = 0; j < alts.length; j++) {
      const a = alts[j]!;
      const k = this.altN++;
      this.altInst[k] = a.instance;
      this.altIntent[k] = INTENT_CODE[a.intent];
      this.altScore[k] = a.score;
      this.altTtft[k] = a.ttftMs === undefined ? NaN : a.ttftMs;
      this.altReused[k] = a.reusedTokens === undefined ? NaN : a.reusedTokens;
    }
  }

  /** Rebuilds the Decision of request r (a fresh object). */
  get(r: number): Decision {
    const o = r * PRED;
    const pr = this.pred;
    const alternatives: Alternative[] = new Array(this.altCnt[r]!);
    for (let j = 0; j < alternatives.length; j++) {
      const k = this.altOff[r]! + j;
      const a: Alternative = { instance: this.altInst[k]!, intent: INTENTS[this.altIntent[k]!]!, score: this.altScore[k]! };
      if (!Number.isNaN(this.altTtft[k]!)) a.ttftMs = this.altTtft[k]!;
      if (!Number.isNaN(this.altReused[k]!)) a.reusedTokens = this.altReused[k]!;
      alternatives[j] = a;
    }
    const d: Decision = {
      requestId: this.requestId[r]!,
      strategy: this.strategy[r]!,
      instance: this.instance[r]!,
      kdn: this.kdn[r]!,
      intent: this.intent(r),
      reusedTokens: this.reused[r]!,
      cachedTokens: this.cached[r]!,
      predicted: { prepareMs: pr[o]!, linkWaitMs: pr[o + 1]!, transferMs: pr[o + 2]!, kvLoadMs: pr[o + 3]!, queueMs: pr[o + 4]!, prefillMs: pr[o + 5]!, ttftMs: pr[o + 6]! },
      alternatives,
      reason: this.reason[r]!,
      expectedOutputTokens: this.expectedOut[r]!,
      ...(this.peerFrom[r]! >= 0 ? { peer: { from: this.peerFrom[r]!, tokens: this.peerTokens[r]! } } : {}),
      ...(this.decode[r]! >= 0 ? { decode: this.decode[r]!, pdPredicted: { linkWaitMs: this.pdPred![r * 3]!, transferMs: this.pdPred![r * 3 + 1]!, tbtMs: this.pdPred![r * 3 + 2]! } } : {}),
      ...(this.rejected.has(r) ? { rejected: this.rejected.get(r)! } : {}),
    };
    if (this.split[r]! >= 0) d.overlapSplit = this.split[r]!;
    return d;
  }

  /** Admission-control rejection reason of request r, or undefined. */
  rejectedReason(r: number): string | undefined {
    return this.rejected.get(r);
  }

  /** The `predicted` object of request r as JSON (docs/FORMATS.md keys). */
  predictedJson(r: number): string {
    const o = r * PRED;
    const p = this.pred;
    const pd = this.decode[r]! >= 0 ? `,"pd":{"link_wait_ms":${j3(this.pdPred![r * 3]!)},"transfer_ms":${j3(this.pdPred![r * 3 + 1]!)},"tbt_ms":${j3(this.pdPred![r * 3 + 2]!)}}` : '';
    return `{"prepare_ms":${j3(p[o]!)},"link_wait_ms":${j3(p[o + 1]!)},"transfer_ms":${j3(p[o + 2]!)},"kv_load_ms":${j3(p[o + 3]!)},"queue_ms":${j3(p[o + 4]!)},"prefill_ms":${j3(p[o + 5]!)},"ttft_ms":${j3(p[o + 6]!)},"output_tokens":${this.expectedOut[r]!}${pd}}`;
  }

  /**
   * The `decision` object of request r as JSON, alternatives columnar (docs/FORMATS.md), written
   * straight from the columns (no Decision object is rebuilt).
   * @param quotedIds JSON-quoted instance ids by index
   */
  decisionJson(r: number, quotedIds: readonly string[]): string {
    const off = this.altOff[r]!;
    const cnt = this.altCnt[r]!;
    let inst = '';
    let intent = '';
    let score = '';
    let ttft = '';
    let reused = '';
    let hasTtft = false;
    let hasReused = false;
    for (let j = 0; j < cnt; j++) {
      const k = off + j;
      const sep = j ? ',' : '';
      inst += sep + quotedIds[this.altInst[k]!];
      intent += sep + '"' + INTENTS[this.altIntent[k]!] + '"';
      score += sep + j3(this.altScore[k]!);
      const t = this.altTtft[k]!;
      const u = this.altReused[k]!;
      if (!Number.isNaN(t)) hasTtft = true;
      if (!Number.isNaN(u)) hasReused = true;
      ttft += sep + (Number.isNaN(t) ? 'null' : j3(t));
      reused += sep + (Number.isNaN(u) ? 'null' : u);
    }
    const alts = `{"instance":[${inst}],"intent":[${intent}],"score":[${score}]` + (hasTtft ? `,"ttft_ms":[${ttft}]` : '') + (hasReused ? `,"reused_tokens":[${reused}]` : '') + '}';
    const peer = this.peerFrom[r]! >= 0 ? `,"peer":{"from":${quotedIds[this.peerFrom[r]!]},"tokens":${this.peerTokens[r]}}` : '';
    const split = this.split[r]! >= 0 ? `,"overlap_split":${this.split[r]}` : '';
    const dec = this.decode[r]! >= 0 ? `,"decode":${quotedIds[this.decode[r]!]}` : '';
    return `{"strategy":${JSON.stringify(this.strategy[r])},"reason":${JSON.stringify(this.reason[r])},"reused_tokens":${this.reused[r]},"cached_tokens":${this.cached[r]}${peer}${split}${dec},"alternatives":${alts}}`;
  }

  private grow(min: number): void {
    let n = this.altScore.length * 2;
    while (n < min) n *= 2;
    const g = <T extends Int32Array | Uint8Array | Float64Array>(a: T, C: new (n: number) => T): T => {
      const x = new C(n);
      x.set(a);
      return x;
    };
    this.altInst = g(this.altInst, Int32Array);
    this.altIntent = g(this.altIntent, Uint8Array);
    this.altScore = g(this.altScore, Float64Array);
    this.altTtft = g(this.altTtft, Float64Array);
    this.altReused = g(this.altReused, Float64Array);
  }
}
