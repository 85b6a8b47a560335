/**
 * Gateway stage "OpenAI request validation": the body of `POST /v1/chat/completions` or
 * `/v1/completions` checked with the shared zod schemas (live/openai.ts; 400 naming the field),
 * plus the gateway's own fields: `knowledge_ids` (a kid or a list; `knowledge_id` too), CacheRoute's
 * `RAG` (bool-ish), `Injection_type` (text | prompt | kvcache | kv | kv_cache | kv-cache |
 * hybrid | blend | overlap) and `reorder_documents` (boolean: may the gateway reorder the documents).
 */
import type { Intent } from '../../engine/types.js';
import { badRequest, chatRequestSchema, completionRequestSchema, parseBody, type ChatRequest, type CompletionRequest } from '../openai.js';
import type { Endpoint } from './context.js';

/** A validated generation request. */
export interface ParsedRequest {
  kind: Endpoint;
  body: ChatRequest | CompletionRequest;
  /** forced intent from `Injection_type`, or null. */
  forced: Exclude<Intent, 'none'> | null;
  /** knowledge ids named by the client (null: none named). */
  kids: string[] | null;
  /** `RAG: true`: retrieve the knowledge from the KDN catalogue. */
  rag: boolean;
  /** completions: the prompts (one entry per prompt of a prompt list); chat: one entry. */
  prompts: Array<string | number[]>;
  /** `reorder_documents`: true/false when the client says whether its documents may be reordered, else null. */
  reorder: boolean | null;
}

/**
 * Validates a generation body.
 * @throws ApiError 400 naming the field.
 */
export function parseGenerationRequest(kind: Endpoint, raw: unknown): ParsedRequest {
  const body = kind === 'chat' ? parseBody(chatRequestSchema, raw, 'chat/completions') : parseBody(completionRequestSchema, raw, 'completions');
  const rawObj = raw as Record<string, unknown>;
  if (body.stream_options && !body.stream) throw badRequest('Stream options can only be defined when `stream=True`.', 'stream_options');
  const forced = normaliseInjectionType(rawObj.Injection_type);
  const kids = knowledgeIds(rawObj);
  const rag = boolish(rawObj.RAG);
  const r = rawObj.reorder_documents;
  if (r !== undefined && r !== null && typeof r !== 'boolean') throw badRequest(`reorder_documents: expected true or false, got ${JSON.stringify(r).slice(0, 40)}`, 'reorder_documents');
  return { kind, body, forced, kids, rag, prompts: kind === 'chat' ? [''] : promptList((body as CompletionRequest).prompt), reorder: typeof r === 'boolean' ? r : null };
}

/** The prompts of a completions `prompt` field: a string, token ids, or a list of either. */
export function promptList(p: CompletionRequest['prompt']): Array<string | number[]> {
  if (typeof p === 'string') return [p];
  if (Array.isArray(p) && p.length > 0 && (typeof p[0] === 'string' || Array.isArray(p[0]))) return p as Array<string | number[]>;
  return [p as number[]];
}

/** CacheRoute's bool-ish parsing (`true/1/yes/y`). */
export function boolish(v: unknown): boolean {
  if (typeof v === 'boolean') return v;
  if (typeof v === 'number') return v !== 0;
  if (typeof v === 'string') return ['true', '1', 'yes', 'y'].includes(v.trim().toLowerCase());
  return false;
}

/**
 * Normalises CacheRoute's `Injection_type`: kvcache/kv/kv_cache/kv-cache → kvcache, text/prompt →
 * text, hybrid → hybrid; null/empty → null.
 * @throws ApiError 400 naming the field for anything else.
 */
export function normaliseInjectionType(v: unknown): Exclude<Intent, 'none'> | null {
  if (v === undefined || v === null || v === '') return null;
  if (typeof v !== 'string') throw badRequest(`Injection_type: expected a string (text, kvcache, hybrid, blend or overlap), got ${JSON.stringify(v)}`, 'Injection_type');
  const s = v.trim().toLowerCase();
  if (['kvcache', 'kv', 'kv_cache', 'kv-cache'].includes(s)) return 'kvcache';
  if (s === 'text' || s === 'prompt') return 'text';
  if (s === 'hybrid' || s === 'blend' || s === 'overlap') return s;
  throw badRequest(`Injection_type: unknown value ${JSON.stringify(v)} (use text, kvcache, hybrid, blend or overlap)`, 'Injection_type');
}

/**
 * The `knowledge_ids` (or `knowledge_id`) of a body: a kid or a list of them; null when absent.
 * @throws ApiError 400 naming the field for anything else.
 */
export function knowledgeIds(body: Record<string, unknown>): string[] | null {
  const v = body.knowledge_ids ?? body.knowledge_id;
  const field = body.knowledge_ids !== undefined ? 'knowledge_ids' : 'knowledge_id';
  if (v === undefined || v === null) return null;
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.some((k) => typeof k !== 'string' || k.length === 0)) throw badRequest(`${field}: expected a knowledge id string or a list of them, got ${JSON.stringify(v).slice(0, 80)}`, field);
  return list as string[];
}
