/**
 * Gateway stage "text injection": the prompt the backend will see, with the knowledge documents
 * in front in the KDN's prefix format (live/kdn.ts `KnowledgeFormat`), and its token ids.
 *
 * - `chat-system` → one system message per document before the client's messages (completions:
 *   the rendered system block `<|start_header_id|>system<|end_header_id|>\n\n{doc}<|eot_id|>`
 *   before the prompt, BOS from `add_special_tokens`);
 * - `completion` → document text + "\n" + prompt.
 * So text and KV requests have the same tokens and LMCache prefix hashes match. Token ids come
 * from the local Llama-3 tokenizer (live/tokenizer.ts; long texts in a worker thread,
 * live/tokenize-pool.ts) and equal what a vLLM/emulator with the Llama-3-Instruct template
 * computes for the upstream body.
 */
import type { KnowledgeRef } from '../../engine/types.js';
import type { ChatRequest, CompletionRequest } from '../openai.js';
import { BOS_ID, renderLlama3Chat, type ChatMessage } from '../tokenizer.js';
import { encodePromptAsync, encodeTextAsync } from '../tokenize-pool.js';
import { sysIds, sysTailIds, type KnowledgeItem } from './knowledge.js';
import { blendCompletionPrefix, blendSystemContent } from '../blend-layout.js';

/** The prompt the backend will see: upstream body, token ids, knowledge refs. */
export interface BuiltPrompt {
  kind: 'chat' | 'completion';
  /** body to send (gateway fields removed, knowledge inserted). */
  body: Record<string, unknown>;
  ids: number[];
  knowledge: KnowledgeRef[];
  knowledgeTokens: number;
  /** output tokens per sequence (max_tokens, or the default). */
  maxTokens: number;
  /** true when the client gave max_tokens / max_completion_tokens (else `maxTokens` is a default). */
  maxTokensGiven: boolean;
  stream: boolean;
  includeUsage: boolean;
  /** the user's question text (last user message / prompt), for RAG and records. */
  question: string;
}

/** Request fields that only the gateway reads (never forwarded). */
export const GATEWAY_FIELDS = ['knowledge_ids', 'knowledge_id', 'RAG', 'Injection_type', 'reorder_documents'];

function stripGatewayFields(body: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(body)) if (!GATEWAY_FIELDS.includes(k)) out[k] = v;
  return out;
}

/**
 * Builds the prompt of a chat request with knowledge `items` in front (one system message per
 * document, CacheRoute's KDN convention).
 * @param defaultMaxTokens output tokens assumed without max_tokens (the backend's default)
 */
export async function buildChat(body: ChatRequest, items: KnowledgeItem[], defaultMaxTokens: number): Promise<BuiltPrompt> {
  const msgs = body.messages as ChatMessage[];
  const opts = { addGenerationPrompt: body.add_generation_prompt ?? true, continueFinalMessage: body.continue_final_message ?? false };
  const rest = renderLlama3Chat(msgs, opts).slice('<|begin_of_text|>'.length);
  let ids: number[];
  const knowledge: KnowledgeRef[] = [];
  if (items.length === 0) ids = await encodeTextAsync(`<|begin_of_text|>${rest}`);
  else {
    ids = [];
    for (let i = 0; i < items.length; i++) {
      const it = items[i]!;
      const part = i === 0 ? await sysIds(it) : await sysTailIds(it);
      for (const t of part) ids.push(t);
      knowledge.push({ kid: it.kid, tokens: part.length });
    }
    for (const t of await encodeTextAsync(rest)) ids.push(t);
  }
  if (body.add_special_tokens) ids = [BOS_ID, ...ids];
  const up = stripGatewayFields(body as Record<string, unknown>);
  if (items.length) up.messages = [...items.map((it) => ({ role: 'system', content: it.content })), ...msgs];
  const given = body.max_completion_tokens ?? body.max_tokens;
  return finish('chat', up, ids, knowledge, given ?? defaultMaxTokens, given !== null && given !== undefined, body, questionOf('chat', body));
}

/**
 * Builds the prompt of one completion prompt (a string or token ids) with knowledge in front:
 * `chat-system` documents as the rendered system block, `completion` documents as `doc + "\n"`.
 * A prompt list is split by the caller (one engine request per prompt).
 */
export async function buildCompletion(body: CompletionRequest, items: KnowledgeItem[], prompt: string | number[] = body.prompt as string | number[]): Promise<BuiltPrompt> {
  const p = prompt;
  const addSpecial = body.add_special_tokens ?? true;
  const knowledge: KnowledgeRef[] = [];
  let ids: number[];
  let upPrompt: string | number[];
  if (typeof p === 'string') {
    if (items.length === 0) {
      ids = await encodePromptAsync(p, addSpecial);
      upPrompt = p;
    } else if (items.every((it) => it.format === 'chat-system')) {
      ids = addSpecial ? [BOS_ID] : [];
      let text = '';
      for (let i = 0; i < items.length; i++) {
        const it = items[i]!;
        const tail = i === 0 ? (await sysIds(it)).slice(1) : await sysTailIds(it);
        for (const t of tail) ids.push(t);
        knowledge.push({ kid: it.kid, tokens: tail.length + (i === 0 && addSpecial ? 1 : 0) });
        text += `<|start_header_id|>system<|end_header_id|>\n\n${it.content}<|eot_id|>`;
      }
      for (const t of await encodeTextAsync(p)) ids.push(t);
      upPrompt = text + p;
    } else {
      // completion-format documents: doc + "\n" + prompt; BPE may merge across the newline, so
      // the whole string is tokenised (the KDN keys the document minus its last token)
      const ctx = items.map((it) => it.content).join('\n');
      upPrompt = `${ctx}\n${p}`;
      ids = await encodePromptAsync(upPrompt, addSpecial);
      const docIds = await encodePromptAsync(ctx, addSpecial);
      knowledge.push(...items.map((it, i) => ({ kid: it.kid, tokens: i === 0 ? docIds.length - 1 : 0 })));
    }
  } else {
    const pre: number[] = [];
    for (let i = 0; i < items.length; i++) {
      const it = items[i]!;
      const part = it.format === 'chat-system' ? (i === 0 ? await sysIds(it) : await sysTailIds(it)) : await encodePromptAsync(it.content + '\n', i === 0);
      pre.push(...part);
      knowledge.push({ kid: it.kid, tokens: part.length });
    }
    ids = [...pre, ...p];
    upPrompt = ids;
  }
  const up = stripGatewayFields(body as Record<string, unknown>);
  up.prompt = upPrompt;
  const given = body.max_tokens;
  return finish('completion', up, ids, knowledge, given ?? 16, given !== null && given !== undefined, body, typeof p === 'string' ? p : '');
}

/**
 * The prompt of `base` (built by {@link buildChat} / {@link buildCompletion}) in the CacheBlend
 * layout for an instance running LMCache with `enable_blending` (live/blend-layout.ts): the
 * documents in one system message (chat) or before the prompt (completions), between separators,
 * so each is one LMCache segment whose KV the KDN holds. Engine request and knowledge refs stay
 * those of `base` (a few separator tokens more). null when the layout does not apply (no
 * documents, or a token-id completion prompt).
 */
export async function buildBlendPrompt(base: BuiltPrompt, body: ChatRequest | CompletionRequest, items: KnowledgeItem[], separator: string, prompt?: string | number[]): Promise<BuiltPrompt | null> {
  if (items.length === 0) return null;
  const docs = items.map((it) => it.content);
  const up = { ...base.body };
  let ids: number[];
  if (base.kind === 'chat') {
    const b = body as ChatRequest;
    const msgs = [{ role: 'system' as const, content: blendSystemContent(docs, separator) }, ...(b.messages as ChatMessage[])];
    up.messages = msgs;
    ids = await encodeTextAsync(renderLlama3Chat(msgs, { addGenerationPrompt: b.add_generation_prompt ?? true, continueFinalMessage: b.continue_final_message ?? false }));
    if (b.add_special_tokens) ids = [BOS_ID, ...ids];
  } else {
    const p = prompt ?? (body as CompletionRequest).prompt;
    if (typeof p !== 'string') return null;
    up.prompt = blendCompletionPrefix(docs, separator) + p;
    ids = await encodePromptAsync(up.prompt as string, (body as CompletionRequest).add_special_tokens ?? true);
  }
  return { ...base, body: up, ids };
}

function finish(kind: 'chat' | 'completion', up: Record<string, unknown>, ids: number[], knowledge: KnowledgeRef[], maxTokens: number, maxTokensGiven: boolean, body: { stream?: boolean | null; stream_options?: { include_usage?: boolean | null } | null }, question: string): BuiltPrompt {
  const so = body.stream_options;
  return {
    kind,
    body: up,
    ids,
    knowledge,
    knowledgeTokens: knowledge.reduce((a, k) => a + k.tokens, 0),
    maxTokens,
    maxTokensGiven,
    stream: body.stream ?? false,
    includeUsage: !!so && (so.include_usage ?? true),
    question,
  };
}

/** The user's question: the last user message (chat) or the prompt string (completions). */
export function questionOf(kind: 'chat' | 'completion', body: ChatRequest | CompletionRequest): string {
  if (kind === 'completion') {
    const p = (body as CompletionRequest).prompt;
    return typeof p === 'string' ? p : Array.isArray(p) && typeof p[0] === 'string' ? (p[0] as string) : '';
  }
  const msgs = (body as ChatRequest).messages as ChatMessage[];
  const users = msgs.filter((m) => m.role === 'user');
  const last = users[users.length - 1] ?? msgs[msgs.length - 1]!;
  return typeof last.content === 'string' ? last.content : (last.content ?? []).map((p) => p.text ?? '').join('\n');
}
