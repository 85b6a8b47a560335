/**
 * Gateway request limits, checked before any expensive work, each answered in OpenAI's error
 * shape with the client's-fault status (never 5xx):
 *
 * | limit | flag (default) | checked | answer |
 * |---|---|---|---|
 * | body size | `--max-body-bytes` (8 MiB) | while reading the body (fastify `bodyLimit`) | 413 |
 * | JSON nesting | `--max-json-depth` (64) | scan of the raw text, before `JSON.parse` | 400 |
 * | `n` | `--max-n` (128, the OpenAI API's maximum) | after schema validation | 400 `n` |
 * | prompts per request | `--max-prompts` (64) | completions prompt lists | 400 `prompt` |
 * | `max_tokens` | `--max-tokens` (default: max_model_len) | after schema validation | 400 |
 * | prompt length, cheap bound | `--max-chars-per-token` (8) × max_model_len characters | before tokenising | 400 |
 * | prompt + output tokens | max_model_len (`--max-model-len`, default: the backends' `/v1/models` `max_model_len`, else the cluster profile's) | after tokenising, before routing | 400 (vLLM's message) |
 *
 * The character bound is a heuristic: Llama-3 text averages ~4 characters per token, so a prompt
 * with more than 8 × max_model_len characters is refused without tokenising it (a pathological
 * prompt of long repeated runs could have fewer tokens; such prompts must be shortened).
 * Tokenising never blocks the event loop anyway (live/tokenize-pool.ts).
 */
import { ApiError, badRequest } from '../openai.js';
import type { ParsedRequest } from './request.js';

/** The gateway's limits (see the module doc). */
export interface GatewayLimits {
  /** request body, bytes (413 above). */
  maxBodyBytes: number;
  /** JSON nesting depth (objects + arrays). */
  maxJsonDepth: number;
  /** `n` (sequences per prompt). */
  maxN: number;
  /** prompts in one `/v1/completions` prompt list. */
  maxPrompts: number;
  /** `max_tokens` / `max_completion_tokens`; null = max_model_len. */
  maxTokens: number | null;
  /** context length (prompt + output tokens); null = from the backends, else the cluster profile. */
  maxModelLen: number | null;
  /** prompts longer than this × max_model_len characters are refused before tokenising. */
  maxCharsPerToken: number;
}

/** Default limits. */
export const DEFAULT_LIMITS: Readonly<GatewayLimits> = Object.freeze({
  maxBodyBytes: 8 * 1024 * 1024,
  maxJsonDepth: 64,
  maxN: 128,
  maxPrompts: 64,
  maxTokens: null,
  maxModelLen: null,
  maxCharsPerToken: 8,
});

/**
 * Merges `over` into the defaults and checks every value.
 * @throws Error naming the limit for a value that is not a positive integer (or null where allowed).
 */
export function resolveLimits(over: Partial<GatewayLimits> = {}): GatewayLimits {
  const l: GatewayLimits = { ...DEFAULT_LIMITS, ...Object.fromEntries(Object.entries(over).filter(([, v]) => v !== undefined)) };
  for (const [k, v] of Object.entries(l)) {
    if (v === null && (k === 'maxTokens' || k === 'maxModelLen')) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw new Error(`gateway limit ${k} must be an integer >= 1 (got ${String(v)})`);
  }
  return l;
}

/** The `n` of a request (1 when absent). */
export function nOf(p: ParsedRequest): number {
  return p.body.n ?? 1;
}

/**
 * Checks the limits that need no tokenisation: `n`, prompt count, `max_tokens`, and the prompt's
 * character bound.
 * @param maxModelLen the context length in force
 * @throws ApiError 400 naming the field
 */
export function checkCheapLimits(p: ParsedRequest, l: GatewayLimits, maxModelLen: number): void {
  const n = nOf(p);
  if (n > l.maxN) throw new ApiError(400, `n: at most ${l.maxN} sequences per request (got ${n}; the gateway's --max-n)`, 'BadRequestError', 'n');
  if (p.prompts.length > l.maxPrompts) throw new ApiError(400, `prompt: at most ${l.maxPrompts} prompts per request (got ${p.prompts.length}; the gateway's --max-prompts)`, 'BadRequestError', 'prompt');
  const body = p.body as { max_tokens?: number | null; max_completion_tokens?: number | null };
  const field = body.max_completion_tokens !== undefined && body.max_completion_tokens !== null ? 'max_completion_tokens' : 'max_tokens';
  const mt = body.max_completion_tokens ?? body.max_tokens;
  if (mt !== undefined && mt !== null) {
    if (mt < 1) throw badRequest(`${field} must be at least 1, got ${mt}.`, field);
    const cap = l.maxTokens ?? maxModelLen;
    if (mt > cap) throw badRequest(`${field}: at most ${cap} tokens (got ${mt}; ${l.maxTokens !== null ? "the gateway's --max-tokens" : 'the maximum context length'})`, field);
  }
  const maxChars = l.maxCharsPerToken * maxModelLen;
  const chars = promptChars(p);
  if (chars > maxChars) {
    throw badRequest(`This model's maximum context length is ${maxModelLen} tokens. However, your ${p.kind === 'chat' ? 'messages have' : 'prompt has'} ${chars} characters (more than ${l.maxCharsPerToken} per token of the context; refused without tokenising). Please reduce the length of the ${p.kind === 'chat' ? 'messages' : 'prompt'}.`, p.kind === 'chat' ? 'messages' : 'prompt');
  }
}

/** Characters of prompt text of a request (chat: every message's text; completions: the longest prompt; token-id prompts count their ids). */
export function promptChars(p: ParsedRequest): number {
  if (p.kind === 'chat') {
    let c = 0;
    for (const m of (p.body as { messages: Array<{ content?: unknown }> }).messages) {
      const x = m.content;
      if (typeof x === 'string') c += x.length;
      else if (Array.isArray(x)) for (const part of x) c += typeof (part as { text?: unknown }).text === 'string' ? ((part as { text: string }).text.length) : 0;
    }
    return c;
  }
  let max = 0;
  for (const q of p.prompts) max = Math.max(max, q.length);
  return max;
}

/**
 * Checks prompt + output tokens against the context length (vLLM's messages and fields).
 * @param promptTokens tokens of the prompt as sent upstream (knowledge included)
 * @param maxTokens the client's max_tokens, or null when it gave none
 * @throws ApiError 400
 */
export function checkContext(kind: 'chat' | 'completion', promptTokens: number, maxTokens: number | null, maxModelLen: number): void {
  if (promptTokens === 0) throw badRequest('The prompt must not be empty.', 'prompt');
  const what = kind === 'chat' ? 'messages' : 'prompt';
  if (maxTokens !== null) {
    if (promptTokens + maxTokens > maxModelLen) {
      throw badRequest(`This model's maximum context length is ${maxModelLen} tokens. However, you requested ${promptTokens + maxTokens} tokens (${promptTokens} in the ${what}, ${maxTokens} in the completion). Please reduce the length of the ${what} or completion.`, kind === 'chat' ? 'messages' : 'prompt');
    }
  } else if (promptTokens >= maxModelLen) {
    throw badRequest(`This model's maximum context length is ${maxModelLen} tokens. However, your ${what} has ${promptTokens} tokens. Please reduce the length of the ${what}.`, kind === 'chat' ? 'messages' : 'prompt');
  }
}
