/**
 * The output side of one emulated choice: stop strings, the streaming hold-back and logprobs, as
 * vLLM 0.13 produces them (V1 engine, `vllm/v1/engine/detokenizer.py`
 * `BaseIncrementalDetokenizer`, and `vllm/entrypoints/openai/protocol.py` for the shapes):
 *
 * - **stop strings** (`stop`: a string or a list): after each token the new text (and the last
 *   `max(len(stop)) - 1` characters before it) is searched for every stop string, in the order
 *   given; the first found ends the request with `finish_reason: "stop"` and
 *   `stop_reason: <the string>`, the text cut before it (after it with
 *   `include_stop_str_in_output`). Not checked before `min_tokens` tokens.
 * - **hold-back**: while streaming, the last `max(len(stop)) - 1` characters are not sent until
 *   more text shows they cannot start a stop string (vLLM's `stop_buffer_length`), so a stream
 *   never shows part of a stop string; everything is flushed with the last token.
 * - **logprobs** (the emulator has no model: deterministic values in vLLM's shapes):
 *   completions `logprobs: k` → `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`;
 *   chat `logprobs: true, top_logprobs: k` → `{content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`.
 */
import { fillerToken } from './tokenizer.js';

/** What one choice asks for on its output. */
export interface OutputSpec {
  /** the choice's seed offset (filler sequence start). */
  seedOffset: number;
  /** stop strings (empty: none). */
  stop: readonly string[];
  includeStopStr: boolean;
  /** stop strings are not checked before this many output tokens. */
  minTokens: number;
  /** logprobs: null = none; else the number of top alternatives per token. */
  logprobs: number | null;
  /** chat (content entries) or completions (column lists) logprobs shape. */
  chat: boolean;
}

/** One token's contribution to the output. */
export interface OutputStep {
  /** text to send now ('' while held back). */
  delta: string;
  /** the choice ends with this token (max tokens, or a stop string). */
  last: boolean;
  /** "stop" when a stop string matched, else null (the caller's reason applies). */
  finishReason: 'stop' | null;
  stopReason: string | null;
  /** logprobs of the tokens since the last sent chunk, in the choice's shape (null when not asked). */
  logprobs: Record<string, unknown[]> | null;
}

/** Deterministic log-probability of filler token `i` (in (-3, -0.01]). */
function fakeLogprob(i: number, seed: number): number {
  const h = (Math.imul(i + 1, 2654435761) ^ Math.imul(seed + 7, 40503)) >>> 0;
  return -Math.round((0.01 + (h % 2990) / 1000) * 1e4) / 1e4;
}

const utf8 = (s: string): number[] => [...Buffer.from(s, 'utf8')];

/** Accumulates one choice's output; see the module doc. */
export class OutputText {
  /** the output text so far (cut at a matched stop string). */
  text = '';
  private sent = 0;
  private tokens = 0;
  private done = false;
  private readonly holdback: number;
  private readonly maxStop: number;
  private pending: Record<string, unknown[]> | null = null;
  /** every token's logprobs (for non-streaming answers), null when not asked. */
  readonly logprobs: Record<string, unknown[]> | null;

  constructor(private readonly spec: OutputSpec) {
    this.maxStop = spec.stop.reduce((m, s) => Math.max(m, s.length), 0);
    this.holdback = spec.stop.length && !spec.includeStopStr ? Math.max(0, this.maxStop - 1) : 0;
    this.logprobs = spec.logprobs === null ? null : spec.chat ? { content: [] } : { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  }

  /**
   * Adds generated token `text` (id `id`); `atMax` = it is the last one max_tokens allows.
   * No-op (empty step) after the choice ended.
   */
  push(id: number, text: string, atMax: boolean): OutputStep {
    if (this.done) return { delta: '', last: true, finishReason: null, stopReason: null, logprobs: null };
    const i = this.tokens++;
    const before = this.text.length;
    this.text += text;
    this.addLogprobs(i, id, text, before);
    let stop: string | null = null;
    if (this.spec.stop.length && this.tokens >= this.spec.minTokens) {
      const from = Math.max(0, before - this.maxStop + 1);
      for (const s of this.spec.stop) {
        if (!s) continue;
        const at = this.text.indexOf(s, from);
        if (at >= 0) {
          stop = s;
          this.text = this.text.slice(0, this.spec.includeStopStr ? at + s.length : at);
          break;
        }
      }
    }
    const last = atMax || stop !== null;
    if (last) this.done = true;
    const upto = last ? this.text.length : Math.max(this.sent, this.text.length - this.holdback);
    const delta = this.text.slice(this.sent, upto);
    this.sent = upto;
    let lp: Record<string, unknown[]> | null = null;
    if (this.pending && (delta || last)) {
      lp = this.pending;
      this.pending = null;
    }
    return { delta, last, finishReason: stop !== null ? 'stop' : null, stopReason: stop, logprobs: lp };
  }

  private addLogprobs(i: number, id: number, text: string, offset: number): void {
    const k = this.spec.logprobs;
    if (k === null || !this.logprobs) return;
    const seed = this.spec.seedOffset;
    const lp = fakeLogprob(i, seed);
    const alts: Array<{ token: string; logprob: number }> = [];
    for (let j = 1; j <= k; j++) alts.push({ token: fillerToken(i + 7 * j, seed + 1).text, logprob: Math.round((lp - 0.75 * j) * 1e4) / 1e4 });
    void id;
    const add = (acc: Record<string, unknown[]>): void => {
      if (this.spec.chat) {
        acc.content!.push({ token: text, logprob: lp, bytes: utf8(text), top_logprobs: alts.map((a) => ({ token: a.token, logprob: a.logprob, bytes: utf8(a.token) })) });
      } else {
        acc.tokens!.push(text);
        acc.token_logprobs!.push(lp);
        const top: Record<string, number> = { [text]: lp };
        for (const a of alts) if (!(a.token in top)) top[a.token] = a.logprob;
        acc.top_logprobs!.push(top);
        acc.text_offset!.push(offset);
      }
    };
    add(this.logprobs);
    this.pending ??= this.spec.chat ? { content: [] } : { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    add(this.pending);
  }
}
