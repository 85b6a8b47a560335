/**
 * OpenAI / vLLM 0.10–0.13 API shapes shared by the emulator (and, later, the gateway):
 * error bodies, request validation with zod (errors name the field), usage objects.
 * Source: reference/live-protocols.md §1 (vLLM `entrypoints/openai/protocol.py`).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { STATUS_CODES } from 'node:http';
import { z } from 'zod';

/** vLLM 0.10–0.13 `ErrorResponse`: `code` is the HTTP status integer. */
export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: number };
}

/** An API error with its HTTP status and OpenAI error type. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }
  /** The JSON body vLLM sends for this error. */
  body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.status } };
  }
}

/** 400 BadRequestError naming the offending field. */
export const badRequest = (message: string, param: string | null = null): ApiError => new ApiError(400, message, 'BadRequestError', param);
/** 404 NotFoundError for an unknown model (vLLM wording). */
export const modelNotFound = (model: string): ApiError => new ApiError(404, `The model \`${model}\` does not exist.`, 'NotFoundError', 'model');
/** 500 InternalServerError. */
export const internalError = (message: string): ApiError => new ApiError(500, message, 'InternalServerError', null);

/** vLLM `UsageInfo` (field order as vLLM dumps it). */
export interface UsageInfo {
  prompt_tokens: number;
  total_tokens: number;
  completion_tokens: number;
  prompt_tokens_details?: { cached_tokens: number } | null;
}

// ------------------------------------------------------------------------------------------
// Request schemas. Unknown fields are accepted (vLLM warns and ignores them).

const int = z.number().int();
const tokenIds = z.array(int.min(0));
const streamOptions = z
  .looseObject({ include_usage: z.boolean().nullish(), continuous_usage_stats: z.boolean().nullish() })
  .nullish();
const stop = z.union([z.string(), z.array(z.string())]).nullish();

const sampling = {
  model: z.string().nullish(),
  n: int.min(1).nullish(),
  stream: z.boolean().nullish(),
  stream_options: streamOptions,
  temperature: z.number().min(0).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: int.nullish(),
  seed: int.nullish(),
  stop,
  presence_penalty: z.number().nullish(),
  frequency_penalty: z.number().nullish(),
  ignore_eos: z.boolean().nullish(),
  include_stop_str_in_output: z.boolean().nullish(),
  min_tokens: int.min(0).nullish(),
  request_id: z.string().nullish(),
  user: z.string().nullish(),
};

/** `/v1/completions` body (the fields the emulator reads; others pass through). */
export const completionRequestSchema = z.looseObject({
  ...sampling,
  prompt: z.union([z.string(), z.array(z.string()).min(1), tokenIds.min(1), z.array(tokenIds.min(1)).min(1)]),
  max_tokens: int.nullish(),
  echo: z.boolean().nullish(),
  logprobs: int.min(0).nullish(),
  add_special_tokens: z.boolean().nullish(),
});
/** Parsed `/v1/completions` body. */
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

const contentPart = z.looseObject({ type: z.string(), text: z.string().optional() });
const message = z.looseObject({
  role: z.string().min(1),
  content: z.union([z.string(), z.array(contentPart), z.null()]).optional(),
});

/** `/v1/chat/completions` body. */
export const chatRequestSchema = z.looseObject({
  ...sampling,
  messages: z.array(message).min(1),
  max_tokens: int.nullish(),
  max_completion_tokens: int.nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: int.nullish(),
  add_generation_prompt: z.boolean().nullish(),
  continue_final_message: z.boolean().nullish(),
  add_special_tokens: z.boolean().nullish(),
});
/** Parsed `/v1/chat/completions` body. */
export type ChatRequest = z.infer<typeof chatRequestSchema>;

/** `/tokenize` body, completion form. */
export const tokenizeCompletionSchema = z.looseObject({
  model: z.string().nullish(),
  prompt: z.string(),
  add_special_tokens: z.boolean().nullish(),
  return_token_strs: z.boolean().nullish(),
});
/** `/tokenize` body, chat form (chosen when the body has `messages`). */
export const tokenizeChatSchema = z.looseObject({
  model: z.string().nullish(),
  messages: z.array(message).min(1),
  add_generation_prompt: z.boolean().nullish(),
  continue_final_message: z.boolean().nullish(),
  add_special_tokens: z.boolean().nullish(),
  return_token_strs: z.boolean().nullish(),
});

/** `/detokenize` body. */
export const detokenizeRequestSchema = z.looseObject({ model: z.string().nullish(), tokens: tokenIds });

/**
 * Parses `body` with `schema`; throws a 400 {@link ApiError} whose message names the first
 * offending field (e.g. `messages: Required`) and whose `param` is that field.
 */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown, what: string): T {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw badRequest(`${what}: request body must be a JSON object`, null);
  const r = schema.safeParse(body);
  if (r.success) return r.data;
  const issue = pickIssue(r.error.issues, body as Record<string, unknown>);
  const path = issue.path.map(String).join('.');
  const field = issue.path.length ? String(issue.path[0]) : null;
  const msg = describeIssue(issue, body as Record<string, unknown>);
  throw badRequest(`${what}: ${path || '(body)'}: ${msg}`, field);
}

/** The issue to report (the first one). */
function pickIssue(issues: z.core.$ZodIssue[], body: Record<string, unknown>): z.core.$ZodIssue {
  const first = issues[0]!;
  if (first.path.length === 1 && body[String(first.path[0])] === undefined) return { ...first, message: 'field required' } as z.core.$ZodIssue;
  return first;
}

function describeIssue(issue: z.core.$ZodIssue, body: Record<string, unknown>): string {
  if (issue.path.length === 1 && body[String(issue.path[0])] === undefined) return 'field required';
  if (issue.code === 'invalid_union') return `invalid value ${short(valueAt(body, issue.path))}`;
  return `${issue.message} (got ${short(valueAt(body, issue.path))})`;
}

function valueAt(body: unknown, path: PropertyKey[]): unknown {
  let v: unknown = body;
  for (const p of path) v = v !== null && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[p] : undefined;
  return v;
}

function short(v: unknown): string {
  const s = JSON.stringify(v);
  if (s === undefined) return String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** Options of {@link acceptAnyJson}. */
export interface JsonBodyOptions {
  /** maximum nesting depth of objects + arrays; deeper bodies fail before `JSON.parse` (default 64). */
  maxDepth?: number;
}

/**
 * Makes `app` parse every request body as JSON whatever its content type (as vLLM/FastAPI
 * does, so `curl -d '{…}'` works). An empty body parses to `undefined` (handlers report the
 * missing object); malformed JSON fails with `makeError("Invalid JSON body: <reason>")`, JSON
 * nested deeper than `maxDepth` with `makeError("Invalid JSON body: nested deeper than …")`,
 * found by a linear scan before any parsing (a 1M-deep body costs one pass, never a stack
 * overflow in `JSON.parse`, the schema check or a later `JSON.stringify`).
 */
export function acceptAnyJson(app: FastifyInstance, makeError: (message: string) => Error, opts: JsonBodyOptions = {}): void {
  const maxDepth = opts.maxDepth ?? 64;
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    const s = String(body);
    if (s.trim() === '') return done(null, undefined);
    const depth = jsonDepth(s, maxDepth);
    if (depth > maxDepth) return done(makeError(`Invalid JSON body: nested deeper than ${maxDepth} levels of objects/arrays`), undefined);
    try {
      done(null, JSON.parse(s));
    } catch (e) {
      done(makeError(`Invalid JSON body: ${(e as Error).message}`), undefined);
    }
  });
}

/**
 * Maximum nesting depth of a JSON text (objects and arrays; brackets inside strings do not
 * count), by one linear scan that stops as soon as `limit` is exceeded (then returns a value
 * > limit). The text need not be valid JSON.
 */
export function jsonDepth(text: string, limit = Infinity): number {
  let depth = 0;
  let max = 0;
  let inStr = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inStr) {
      if (c === 92) i++; // backslash: skip the escaped character
      else if (c === 34) inStr = false;
      continue;
    }
    if (c === 34) inStr = true;
    else if (c === 123 || c === 91) {
      if (++depth > max) {
        max = depth;
        if (max > limit) return max;
      }
    } else if (c === 125 || c === 93) depth--;
  }
  return max;
}

/**
 * Maps anything thrown in a fastify handler to an OpenAI-shaped {@link ApiError}: ApiErrors as
 * they are; fastify's own 4xx errors (bad JSON, empty body, body too large → 413 naming the
 * limit) keep their status; anything else is a 500.
 * @param bodyLimitFlag how the body limit is configured, for the 413 message (e.g. "--max-body-bytes")
 */
export function toApiError(err: unknown, bodyLimit?: { bytes: number; flag: string }): ApiError {
  if (err instanceof ApiError) return err;
  const e = err as { statusCode?: number; message?: string; code?: string };
  if (e && typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    if (e.statusCode === 413 || e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      const msg = bodyLimit ? `request body is larger than ${bodyLimit.bytes} bytes (${bodyLimit.flag})` : (e.message ?? 'request body too large');
      return new ApiError(413, msg, 'BadRequestError', null);
    }
    const msg = e.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' ? 'request body must be a JSON object' : (e.message ?? 'bad request');
    return e.statusCode === 404 ? new ApiError(404, msg, 'NotFoundError', null) : new ApiError(400, msg, 'BadRequestError', null);
  }
  return new ApiError(500, e?.message ?? String(err), 'InternalServerError', null);
}

/**
 * Answers a request whose body was refused before it was all read (413, a JSON error before the
 * end) so that the client can read the answer. Closing the connection with unread bytes in flight
 * resets it, and a client still writing its body then loses the answer (EPIPE / ECONNRESET);
 * reading and discarding the rest costs CPU (50 MB per refusal). Instead the answer is written
 * with `Connection: close`, the connection stops reading (TCP flow control stops the sender) and
 * is closed once the client closes it, or after `maxMs`.
 * @returns false when the body was read completely (answer normally then)
 */
export function refuseUnreadBody(req: FastifyRequest, reply: FastifyReply, status: number, answer: unknown, maxMs = 5000): boolean {
  const raw = req.raw;
  const socket = raw.socket;
  if (raw.complete || !socket || socket.destroyed) return false;
  reply.hijack();
  raw.pause();
  socket.pause();
  const body = JSON.stringify(answer);
  socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  const timer = setTimeout(() => socket.destroy(), maxMs);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  // the client read the answer and went away: close our side too
  socket.once('end', () => socket.destroy());
  return true;
}

/**
 * A fastify `clientErrorHandler` answering HTTP-level errors in OpenAI's error shape instead of
 * fastify's: 431 (headers larger than the server's limit), 408 (request timeout), 400 (anything
 * else the HTTP parser rejects), then closes the socket (as Node and fastify do).
 * @param onError called with the status for each answered error (metrics)
 */
export function openAiClientErrorHandler(onError?: (status: number, message: string) => void): (err: NodeJS.ErrnoException, socket: import('node:net').Socket) => void {
  return (err, socket) => {
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    const [status, text, message] =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'Request Header Fields Too Large', 'request headers are larger than the server accepts (Node --max-http-header-size, 16 KiB by default)']
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? [408, 'Request Timeout', 'request timed out before its headers and body arrived']
          : [400, 'Bad Request', `malformed HTTP request: ${err.message}`];
    onError?.(status, message);
    const body = JSON.stringify(new ApiError(status, message, status === 400 ? 'BadRequestError' : status === 408 ? 'RequestTimeoutError' : 'RequestHeaderFieldsTooLargeError', null).body());
    if (socket.writable) socket.write(`HTTP/1.1 ${status} ${text}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n${body}`);
    socket.destroy(err);
  };
}
