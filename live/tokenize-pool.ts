/**
 * Tokenisation that never stalls a server's event loop: texts shorter than
 * {@link ASYNC_TOKENIZE_MIN_CHARS} are tokenised in place (about 2 ms per 10k characters), longer
 * ones in a worker thread (piscina, live/tokenize-worker.js; llama3-tokenizer-js takes ~0.3 s per
 * million characters, and pathological inputs such as long runs of spaces more). The gateway,
 * the KDN and the emulator use it, so `/health` answers while a long prompt is being tokenised.
 *
 * The pool starts on first use with one thread (`maxThreads` 1: tokenisation is a background
 * task on a shared machine; its start loads the tokenizer, ~0.5 s) and idles out after 30 s; servers call {@link holdTokenizePool} at
 * start and release it on close so the pool is destroyed when the last one stops. From the
 * TypeScript sources without a build (no worker file) everything runs in place.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { encodePrompt, encodeSystemPrefix, encodeText, renderLlama3Chat, type ChatMessage, type ChatTemplateOptions } from './tokenizer.js';
import type { TokenizeTask } from './tokenize-worker.js';

/** Texts of at least this many characters are tokenised in the worker thread. */
export const ASYNC_TOKENIZE_MIN_CHARS = 16_384;

let pool: Piscina | null = null;
let holders = 0;
let workerFile: string | null | undefined;
let keepWarm = false;

function findWorker(): string | null {
  if (workerFile !== undefined) return workerFile;
  const here = dirname(fileURLToPath(import.meta.url));
  workerFile = [join(here, 'tokenize-worker.js'), join(here, '..', 'dist', 'live', 'tokenize-worker.js')].find((f) => existsSync(f)) ?? null;
  return workerFile;
}

function getPool(file: string): Piscina {
  pool ??= new Piscina({ filename: file, minThreads: keepWarm ? 1 : 0, maxThreads: 1, idleTimeout: 30_000 });
  return pool;
}

async function run(task: TokenizeTask, inPlace: () => number[]): Promise<number[]> {
  if (task.text.length < ASYNC_TOKENIZE_MIN_CHARS) return inPlace();
  const file = findWorker();
  if (!file) return inPlace();
  const ids = (await getPool(file).run(task)) as Int32Array;
  return Array.from(ids);
}

/**
 * Starts the worker thread now and keeps it (the `kvlab gateway` / `kdn` / `emulate` servers call
 * it), so the first long prompt does not wait for the thread to load the tokenizer. In the
 * background; errors are ignored (tokenisation then starts the thread itself).
 */
export function warmTokenizePool(): void {
  const file = findWorker();
  if (!file) return;
  keepWarm = true;
  if (pool && pool.options.minThreads === 0) return; // an idling pool from before: leave it
  void getPool(file)
    .run({ text: 'warm up', mode: 'text' } satisfies TokenizeTask)
    .catch(() => undefined);
}

/** Token ids of `text`, no special tokens added (live/tokenizer.ts `encodeText`). */
export function encodeTextAsync(text: string): Promise<number[]> {
  return run({ text, mode: 'text' }, () => encodeText(text));
}

/** Token ids of a completion prompt (BOS when `addSpecialTokens`; live/tokenizer.ts `encodePrompt`). */
export async function encodePromptAsync(text: string, addSpecialTokens = true): Promise<number[]> {
  if (!addSpecialTokens) return encodeTextAsync(text);
  return run({ text, mode: 'prompt' }, () => encodePrompt(text, true));
}

/** Token ids of a document as the system message (live/tokenizer.ts `encodeSystemPrefix`). */
export function encodeSystemPrefixAsync(text: string): Promise<number[]> {
  return run({ text, mode: 'system' }, () => encodeSystemPrefix(text));
}

/** Token ids of a chat request after the Llama-3-Instruct template (live/tokenizer.ts `encodeChat`). */
export function encodeChatAsync(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): Promise<number[]> {
  return encodeTextAsync(renderLlama3Chat(messages, opts));
}

/** A server keeps the pool while it runs; returns the release function (idempotent). */
export function holdTokenizePool(): () => Promise<void> {
  holders++;
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    holders--;
    if (holders <= 0 && pool) {
      const p = pool;
      pool = null;
      holders = 0;
      await p.destroy();
    }
  };
}
