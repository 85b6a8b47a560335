/**
 * Test helpers: a test profile, clusters and requests.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { ClusterSpec, EngineSettings, Profile, TraceRequest } from '../../engine/types.js';
import { instanceSpecFromProfile, loadProfile } from '../../sim/profiles.js';

export const REPO = resolve(import.meta.dirname, '../..');
export const SHARED = resolve(REPO, '../shared');
export const MOONCAKE = resolve(SHARED, 'data/traces/mooncake/conversation_trace.jsonl');
export const HAVE_SHARED = existsSync(MOONCAKE);
if (!HAVE_SHARED) console.warn(`[kvlab tests] ${MOONCAKE} is absent: tests on the shared Mooncake trace and profiles logs are skipped`);

/** The hand-made test profile (test/fixtures/profile-test.json). */
export function testProfile(): Profile {
  return loadProfile(resolve(REPO, 'test/fixtures/profile-test.json'));
}

/** A cluster of `n` test-profile instances with one KDN holding everything. */
export function testCluster(n: number, over: Partial<EngineSettings> = {}, gbps = 10): ClusterSpec {
  const p = testProfile();
  const instances = Array.from({ length: n }, (_, i) => instanceSpecFromProfile(p, i, over));
  return {
    instances,
    kdns: [{ id: 'kdn0', compression: 3.41, knowledge: null, textFetchMs: 4 }],
    links: [instances.map(() => ({ bandwidthGbps: gbps, latencyMs: 0.5, efficiency: 0.825 }))],
    kvEventDelayMs: 0,
    chunkTokens: 256,
  };
}

let nextId = 0;
/** A request with `blocks` ids of `blockSize` tokens (input = blocks × blockSize unless given). */
export function mkReq(o: Partial<TraceRequest> & { blocks?: number[] } = {}): TraceRequest {
  const blockSize = o.blockSize ?? 16;
  const blocks = o.blocks ?? [];
  const input = o.inputTokens ?? Math.max(1, blocks.length * blockSize);
  return {
    id: o.id ?? `t${nextId++}`,
    arrivalMs: o.arrivalMs ?? 0,
    inputTokens: input,
    outputTokens: o.outputTokens ?? 1,
    blockSize,
    blocks,
    knowledge: o.knowledge ?? [],
    knowledgeTokens: o.knowledgeTokens ?? 0,
  };
}

/**
 * A P/D test profile whose step time is 10 ms + 1 ms per new token (no attention, KV read, API or
 * frontend cost), 80 layers, 125,000 KV bytes per token: timelines and TBTs computed by hand.
 */
export function pdHandProfile(): Profile {
  const p = testProfile();
  return {
    ...p,
    name: 'hand',
    model: { ...p.model, layers: 80, kvBytesPerToken: 125_000 },
    engine: { maxNumBatchedTokens: 4096, maxNumSeqs: 8, maxModelLen: 100_000, kvCapacityTokens: 1_000_000, blockSizeTokens: 16, longPrefillTokenThreshold: 0, asyncScheduling: false },
    step: { fixedMs: 10, prefillSeqMs: 0, decodeSeqMs: 0, knots: [0, 1000], values: [0, 1000], attnTokens: 1e15, kvReadMsPerToken: 0, apiMs: 0, frontendMsPerRequest: 0 },
  };
}
