/**
 * Multi-document requests through the gateway (real Redis, emulators, KDN): the canonical
 * document order (`reorderDocuments`, the engine's knowledge tree) turns a differently ordered
 * document set into a prefix hit; `reorder_documents: false` keeps the client's order; the
 * gateway refuses an overlap capability no serving engine has.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startGateway } from '../live/gateway.js';
import { backendSpecs } from '../live/backends.js';
import { postJson } from './helpers/live.js';
import { startStack, testCluster, MODEL, type Stack } from './helpers/stack.js';
import { describeRedis } from './helpers/system.js';

const DOCS = [
  `Paris is the capital of France. ${'The city has museums, bridges, cafes and long avenues along the Seine river. '.repeat(20)}`,
  `Photosynthesis converts light into chemical energy. ${'Plants, algae and bacteria use chlorophyll to capture sunlight in their leaves. '.repeat(20)}`,
];
let s: Stack;
const kids: string[] = [];

beforeAll(async () => {
  s = await startStack({ instances: 1, gateway: { reorderDocuments: true } });
  for (const d of DOCS) kids.push((await postJson(`${s.kdn!.url}/knowledge/register_text`, { content: d })).json.kid);
}, 60_000);
afterAll(async () => {
  await s?.close();
});

const ask = (order: string[], extra: Record<string, unknown> = {}) =>
  postJson(`${s.gw.url}/v1/chat/completions`, { model: MODEL, messages: [{ role: 'user', content: `Question ${Math.random()}` }], knowledge_ids: order, Injection_type: 'text', max_tokens: 2, ...extra });

describeRedis('gateway document order', () => {
  it('sends [A, B] and [B, A] in one canonical order: the second request hits both documents in the prefix cache', async () => {
    const first = await ask([kids[0]!, kids[1]!]);
    expect(first.status).toBe(200);
    const both = first.json.usage.prompt_tokens - 30; // the two documents, the question aside
    const second = await ask([kids[1]!, kids[0]!]);
    expect(second.status).toBe(200);
    // no history yet: the first goes in kid order; the second follows the path it left
    const reasons = [first, second].map((r) => JSON.parse(r.headers['x-kvlab-decision'] as string).reason as string);
    expect(reasons.filter((x) => x.includes(';reordered'))).toHaveLength(1);
    const canonical = [kids[0]!, kids[1]!].sort();
    expect(reasons[0]!.includes(';reordered')).toBe(canonical[0] !== kids[0]);
    // the local prefix cache holds every full block of the two documents
    expect(second.json.usage.prompt_tokens_details.cached_tokens).toBeGreaterThan(both * 0.9);
    // the application says order matters: kept as given, and that order has never been sent
    const unseen = canonical[0] === kids[0] ? [kids[1]!, kids[0]!] : [kids[0]!, kids[1]!];
    const kept = await ask(unseen, { reorder_documents: false });
    const hk = JSON.parse(kept.headers['x-kvlab-decision'] as string);
    expect(hk.reason).not.toContain('reordered');
    expect(kept.json.usage.prompt_tokens_details?.cached_tokens ?? 0).toBeLessThan(16);
    const bad = await ask([kids[0]!], { reorder_documents: 'yes' });
    expect(bad.status).toBe(400);
    expect(bad.json.error.param).toBe('reorder_documents');
  });

  it('refuses a cluster whose instances declare overlap (no serving engine implements it)', async () => {
    const rc = testCluster(1, s.profile);
    rc.spec.instances[0]!.overlap = true;
    await expect(startGateway({ port: 0, backends: backendSpecs([s.ems[0]!.url], []), strategy: 'kvlab', cluster: rc })).rejects.toThrow(/overlap/);
  });
});
