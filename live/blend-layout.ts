/**
 * Where documents sit in a prompt sent to a CacheBlend instance (LMCache `enable_blending`,
 * live/lmcache.ts `lmcacheSegments`): LMCache cuts the prompt into segments at its
 * `blend_special_str` and keys each segment alone, so the documents go between separators:
 *
 *   chat:        system message `Documents:{sep}{doc1}{sep}{doc2}…{sep}End of documents.`
 *   completions: `Documents:{sep}{doc1}{sep}…{sep}{prompt}`
 *
 * Each document is then one segment whose tokens are exactly the document's own (the KDN keys it
 * from the text alone). The fixed words around them keep the separators away from the chat
 * template's `trim` of message content and give the first segment (BOS, header, "Documents:")
 * a constant key.
 *
 * The separator: LMCache's default `" # # "` does not survive the Llama-3 tokenizer inside a
 * prompt (its trailing space merges into the next word, " The", so the separator's tokens
 * [" #", " #", " "] never appear and nothing is split; test/live-blend.test.ts), hence kvlab's
 * default `" # #\n"` (tokens [" #", " #\n"]): set `blend_special_str: " # #\n"` in the instances'
 * lmcache.yaml as well.
 */
import { renderLlama3Chat } from './tokenizer.js';

/** kvlab's CacheBlend separator (LMCache `blend_special_str`; see the module doc). */
export const BLEND_SEPARATOR = ' # #\n';
/** Words before the first document. */
export const BLEND_HEAD = 'Documents:';
/** Words after the last document (chat). */
export const BLEND_TAIL = 'End of documents.';

/** The system message content holding `docs` for a CacheBlend instance (chat). */
export function blendSystemContent(docs: readonly string[], sep = BLEND_SEPARATOR): string {
  return `${BLEND_HEAD}${sep}${docs.join(sep)}${sep}${BLEND_TAIL}`;
}

/** The text before a completion prompt holding `docs` for a CacheBlend instance. */
export function blendCompletionPrefix(docs: readonly string[], sep = BLEND_SEPARATOR): string {
  return `${BLEND_HEAD}${sep}${docs.join(sep)}${sep}`;
}

/** The rendered chat prompt a KDN builds one document's blend KV with (the document alone). */
export function blendBuildText(doc: string, sep = BLEND_SEPARATOR): string {
  return renderLlama3Chat([{ role: 'system', content: blendSystemContent([doc], sep) }], { addGenerationPrompt: true });
}
