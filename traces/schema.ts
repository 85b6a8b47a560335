/**
 * The one request schema every trace source is converted into.
 *
 * A `TraceRequest` is what a driver (simulator or live replay) feeds to the policy engine.
 * All times are milliseconds since the start of the trace; all lengths are tokens.
 */

/** One knowledge document referenced by a request, placed at the prompt prefix in order. */
export interface KnowledgeRef {
  /** Knowledge id: sha256 (hex) of the normalised document text. */
  kid: string;
  /** Length of the document in tokens (Llama-3 tokenizer for NQ; generated for synthetic). */
  tokens: number;
}

/**
 * How a generated RAG prompt is laid out (NQ, synthetic): enough to rebuild its block ids for
 * another document order ({@link reorderRequest} in traces/blocks.ts).
 */
export interface PromptLayout {
  /** chat-template tokens before the first document (tokens). */
  headTokens: number;
  /** per-request salt of the blocks holding question tokens (`ragBlockIds` requestSalt). */
  salt: string;
}

/** One inference request in kvlab's common schema. */
export interface TraceRequest {
  /** Unique id within the trace (e.g. "r42"). Runs are joined on it by `kvlab diff`. */
  id: string;
  /** Arrival time in ms since the trace start (already multiplied by any --time-scale). */
  arrivalMs: number;
  /** Total prompt length in tokens, knowledge prefix included. >= 1. */
  inputTokens: number;
  /**
   * Number of output tokens the request really generates (it stops there). >= 1. What the
   * simulated instance runs; the policy engine never reads it (a router does not know it).
   */
  outputTokens: number;
  /**
   * The client's `max_tokens` when the request carries one (live requests; traces rarely do).
   * The engine books this as the output length; without it, the engine predicts one.
   */
  maxTokens?: number;
  /** Tokens per prefix block of `blocks` (512 for Mooncake traces, 256 for RAG workloads). */
  blockSize: number;
  /**
   * Chained prefix-block hashes covering the prompt: `blocks[i]` identifies block i and every
   * block before it, so equal leading ids mean a shareable KV prefix. Length is
   * ceil(inputTokens / blockSize) (the last block may be partial), or 0 when the trace has no
   * prefix information (every block is then unique to this request).
   * Ids are non-negative integers < 2^53.
   */
  blocks: number[];
  /**
   * Knowledge documents at the prompt prefix, in prompt order (empty when the request has none):
   * document i starts at `layout.headTokens` + the tokens of documents 0..i-1.
   */
  knowledge: KnowledgeRef[];
  /** Sum of `knowledge[].tokens`: the prompt prefix that is external knowledge (tokens). */
  knowledgeTokens: number;
  /** Prompt layout of a generated RAG request (absent for file traces). */
  layout?: PromptLayout;
  /** Optional session/conversation id. */
  session?: string;
  /** Optional user text (question) for live replay; the knowledge text is fetched by kid. */
  question?: string;
  /** Where the request came from, for error messages: file and 1-based line. */
  source?: { file: string; line: number };
}

/** Source format of a loaded trace. */
export type TraceFormat = 'mooncake' | 'csv' | 'nq' | 'synthetic';

/** What a loader read, besides the requests. */
export interface TraceMeta {
  /** Short name: file name without extension, the NQ directory name, or "synthetic". */
  name: string;
  /** Path as given by the caller ("" for generated workloads). */
  file: string;
  format: TraceFormat;
  /** Tokens per prefix block of the requests' `blocks` (512 Mooncake, 16 CSV, 256 RAG). */
  blockSize: number;
  /** Non-blank records read (header excluded): requests.length + skipped. */
  lines: number;
  /** Bad records skipped (only with `skipBadLines: true`). */
  skipped: number;
  /** The first few skip reasons, each formatted `FILE:LINE: what is wrong`. */
  skippedReasons: string[];
  /**
   * Requests that arrived earlier than some request before them in file order (so the stable
   * sort by arrival moved them). 0 for a sorted source.
   */
  reordered: number;
}

/** A trace converted to the common schema. `requests` is stably sorted by `arrivalMs`. */
export interface LoadedTrace {
  requests: TraceRequest[];
  meta: TraceMeta;
}

/** Options every file loader accepts. */
export interface LoadOptions {
  /** Multiplies every arrival time (2 = half the rate). >= 0, default 1. */
  timeScale?: number;
  /** Skip (and count) bad records instead of failing on the first one. Default false. */
  skipBadLines?: boolean;
  /** Stop after this many accepted requests in file order (positive integer). */
  limit?: number;
}
