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

/** One inference request in kvlab's common schema. */
export interface TraceRequest {
  /** Unique id within the trace (e.g. "r42"). Runs are joined on it by `kvlab diff`. */
  id: string;
  /** Arrival time in ms since the trace start (already multiplied by any --time-scale). */
  arrivalMs: number;
  /** Total prompt length in tokens, knowledge prefix included. >= 1. */
  inputTokens: number;
  /** Number of output tokens to generate (the request stops there). >= 1. */
  outputTokens: number;
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
  /** Knowledge documents at the prompt prefix, in order (empty when the request has none). */
  knowledge: KnowledgeRef[];
  /** Sum of `knowledge[].tokens`: the prompt prefix that is external knowledge (tokens). */
  knowledgeTokens: number;
  /** Optional session/conversation id. */
  session?: string;
  /** Optional user text (question) for live replay; the knowledge text is fetched by kid. */
  question?: string;
  /** Where the request came from, for error messages: file and 1-based line. */
  source?: { file: string; line: number };
}
