/**
 * Llama-3 tokenisation for the emulator and the KDN (llama3-tokenizer-js, offline), and the
 * Llama-3-Instruct chat template applied by hand (reference/live-protocols.md §1.3):
 *
 *   <|begin_of_text|>{for each message: <|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>}
 *   [<|start_header_id|>assistant<|end_header_id|>\n\n]   (add_generation_prompt)
 *
 * As in vLLM, the template is rendered to a string and that string is tokenised without
 * adding special tokens (special-token text inside it is recognised).
 */
import llama3Tokenizer from 'llama3-tokenizer-js';

/** `<|begin_of_text|>` */
export const BOS_ID = 128000;
/** `<|end_of_text|>` */
export const EOS_ID = 128001;
/** `<|eot_id|>` */
export const EOT_ID = 128009;
/** Llama-3 vocabulary size (128,000 BPE + 256 special). */
export const VOCAB_SIZE = 128256;

// The tokenizer first splits its input at special-token strings and encodes every piece in
// between on its own, so caching long pieces (documents repeated across requests) is exact.
// Only pieces of 512 .. 1 Mi characters are cached (LRU, at most 256 entries and 16 Mi
// characters in all), so one huge input cannot pin its text and ids in memory.
const SPECIAL_SPLIT = /(<\|(?:begin_of_text|end_of_text|start_header_id|end_header_id|eot_id|eom_id|python_tag|finetune_right_pad_id|reserved_special_token_(?:[0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-3][0-9]|24[0-7]))\|>)/;
const pieceCache = new Map<string, number[]>();
let pieceCacheChars = 0;
const PIECE_MIN = 512;
const PIECE_MAX = 1024 * 1024;
const CACHE_MAX_ENTRIES = 256;
const CACHE_MAX_CHARS = 16 * 1024 * 1024;

/** Characters of text held by the tokenizer's piece cache now (for memory checks). */
export function tokenizerCacheChars(): number {
  return pieceCacheChars;
}

/** Empties the tokenizer's piece cache. */
export function clearTokenizerCache(): void {
  pieceCache.clear();
  pieceCacheChars = 0;
}

function cachePiece(p: string, ids: number[]): void {
  pieceCache.set(p, ids);
  pieceCacheChars += p.length;
  while (pieceCache.size > CACHE_MAX_ENTRIES || pieceCacheChars > CACHE_MAX_CHARS) {
    const k = pieceCache.keys().next().value!;
    pieceCache.delete(k);
    pieceCacheChars -= k.length;
  }
}

/** `llama3Tokenizer.encode(text, {bos: false, eos: false})`, with long pieces cached. */
function encodeCached(text: string): number[] {
  if (text.length < PIECE_MIN) return llama3Tokenizer.encode(text, { bos: false, eos: false });
  const parts = text.split(SPECIAL_SPLIT);
  const out: number[] = [];
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!;
    if (p === '') continue;
    if (i % 2 === 1) {
      const id = llama3Tokenizer.vocabByString.get(p);
      if (id === undefined) return llama3Tokenizer.encode(text, { bos: false, eos: false });
      out.push(id);
      continue;
    }
    const cacheable = p.length >= PIECE_MIN && p.length <= PIECE_MAX;
    let ids = cacheable ? pieceCache.get(p) : undefined;
    if (ids) {
      pieceCache.delete(p); // LRU: re-insert as newest
      pieceCache.set(p, ids);
    } else {
      ids = llama3Tokenizer.encode(p, { bos: false, eos: false });
      if (cacheable) cachePiece(p, ids);
    }
    for (const t of ids) out.push(t);
  }
  return out;
}

/**
 * Token ids of a completion prompt string: BOS (when `addSpecialTokens`, vLLM's default for
 * completions) followed by the BPE ids; never EOS.
 */
export function encodePrompt(text: string, addSpecialTokens = true): number[] {
  const ids = encodeCached(text);
  return addSpecialTokens ? [BOS_ID, ...ids] : ids;
}

/** Token ids of `text` with no special tokens added. */
export function encodeText(text: string): number[] {
  return encodeCached(text);
}

/** Decodes ids to text (special tokens rendered as their text form). */
export function decodeTokens(ids: readonly number[]): string {
  return llama3Tokenizer.decode(ids as number[]);
}

/** The string of one token id (for `/tokenize` `return_token_strs`). */
export function tokenString(id: number): string {
  return llama3Tokenizer.vocabById[id] ?? decodeTokens([id]);
}

/** An OpenAI chat message as accepted by the emulator (text content only). */
export interface ChatMessage {
  role: string;
  /** a string, or OpenAI content parts of which the `text` parts are joined by "\n". */
  content: string | Array<{ type: string; text?: string }> | null;
}

/** Text of a message's content (string, or text parts joined by newlines, as vLLM does). */
export function messageText(m: ChatMessage): string {
  if (m.content === null || m.content === undefined) return '';
  if (typeof m.content === 'string') return m.content;
  return m.content
    .filter((p) => p.type === 'text')
    .map((p) => p.text ?? '')
    .join('\n');
}

/** Options of the chat template (vLLM chat request fields). */
export interface ChatTemplateOptions {
  /** append the assistant header (default true). */
  addGenerationPrompt?: boolean;
  /** leave the last message open (no `<|eot_id|>`, no generation prompt); default false. */
  continueFinalMessage?: boolean;
}

/** Renders the Llama-3-Instruct chat template to a string. */
export function renderLlama3Chat(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
  const cont = opts.continueFinalMessage ?? false;
  const gen = (opts.addGenerationPrompt ?? true) && !cont;
  let s = '<|begin_of_text|>';
  messages.forEach((m, i) => {
    s += `<|start_header_id|>${m.role}<|end_header_id|>\n\n${messageText(m).trim()}`;
    if (!(cont && i === messages.length - 1)) s += '<|eot_id|>';
  });
  if (gen) s += '<|start_header_id|>assistant<|end_header_id|>\n\n';
  return s;
}

/** Token ids of a chat request after the Llama-3-Instruct template. */
export function encodeChat(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): number[] {
  return encodeCached(renderLlama3Chat(messages, opts));
}

/** Token ids of a knowledge document placed as the system message (CacheRoute's KDN convention). */
export function encodeSystemPrefix(text: string): number[] {
  return encodeChat([{ role: 'system', content: text }], { addGenerationPrompt: false });
}

const FILLER_TEXT =
  ' The quick brown fox jumps over the lazy dog while the emulator keeps producing deterministic tokens for testing.';
let fillerIds: number[] | undefined;
let fillerStrs: string[] | undefined;

/**
 * Deterministic filler output: the `i`-th generated token id and its text. The sequence cycles
 * through a fixed English sentence; `offset` (e.g. the request's seed) shifts the start.
 */
export function fillerToken(i: number, offset = 0): { id: number; text: string } {
  if (!fillerIds) {
    fillerIds = encodeText(FILLER_TEXT);
    fillerStrs = fillerIds.map((id) => decodeTokens([id]));
  }
  const k = (((i + offset) % fillerIds.length) + fillerIds.length) % fillerIds.length;
  return { id: fillerIds[k]!, text: fillerStrs![k]! };
}
