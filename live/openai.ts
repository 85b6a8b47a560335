/**
 * OpenAI / vLLM 0.10–0.13 API shapes shared by the emulator (and, later, the gateway):
 * error bodies, request validation with zod (errors name the field), usage objects.
 * Source: reference/live-protocols.md §1 (vLLM `entrypoints/openai/protocol.py`).
 */
import type { FastifyInstance } from 'fastify';
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

/**
 * Makes `app` parse every request body as JSON whatever its content type (as vLLM/FastAPI
 * does, so `curl -d '{…}'` works). An empty body parses to `undefined` (handlers report the
 * missing object); malformed JSON fails with `makeError("Invalid JSON body: <reason>")`.
 */
export function acceptAnyJson(app: FastifyInstance, makeError: (message: string) => Error): void {
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    const s = String(body);
    if (s.trim() === '') return done(null, undefined);
    try {
      done(null, JSON.parse(s));
    } catch (e) {
      done(makeError(`Invalid JSON body: ${(e as Error).message}`), undefined);
    }
  });
}
