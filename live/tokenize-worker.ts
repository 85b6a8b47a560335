/**
 * Piscina worker of live/tokenize-pool.ts: Llama-3 tokenisation of one long text off the main
 * event loop. Task `{text, mode}` → `Int32Array` of token ids (see tokenize-pool.ts for modes).
 */
import { encodePrompt, encodeSystemPrefix, encodeText } from './tokenizer.js';

/** A tokenisation task. */
export interface TokenizeTask {
  text: string;
  /** `text`: no special tokens added; `prompt`: BOS first; `system`: the text as a Llama-3 system block incl. BOS. */
  mode: 'text' | 'prompt' | 'system';
}

/** Tokenises one text. */
export default function tokenize(task: TokenizeTask): Int32Array {
  const ids = task.mode === 'system' ? encodeSystemPrefix(task.text) : task.mode === 'prompt' ? encodePrompt(task.text, true) : encodeText(task.text);
  return Int32Array.from(ids);
}
