/**
 * KDN document limits with a real redis-server: a document over `--max-document-bytes` is refused
 * (413) before it is tokenised, one over `--max-document-tokens` with 422, a 50 MB body with 413
 * while /health keeps answering, nothing of a refused document is stored, and deleting documents
 * gives their memory back (Redis keys and the process heap; the tokenizer cache is bounded).
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Redis } from 'ioredis';
import llama3Tokenizer from 'llama3-tokenizer-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startKdn, type KdnHandle } from '../live/kdn.js';
import { synthesizeDocument } from '../live/replay.js';
import { tokenizerCacheChars } from '../live/tokenizer.js';
import { healthStalls, postBigWhilePolling, postJson } from './helpers/live.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { describeRedis } from './helpers/system.js';

let redis: RedisServerHandle;
let kdn: KdnHandle;
let small: KdnHandle;

beforeAll(async () => {
  redis = await startTestRedis();
  kdn = await startKdn({ port: 0, syntheticKv: true, redisUrl: `${redis.url}/0`, model: 'm', bytesPerToken: 64 });
  small = await startKdn({ port: 0, syntheticKv: true, redisUrl: `${redis.url}/1`, model: 'm', maxDocumentBytes: 100_000, maxDocumentTokens: 2000 });
});
afterAll(async () => {
  await kdn?.close();
  await small?.close();
  await redis?.stop();
});

const total = async (k: KdnHandle): Promise<number> => (await postJson(`${k.url}/knowledge/pool_status`, {})).json.total;

function gc(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

describeRedis('document limits', () => {
  it('over --max-document-bytes: 413 before tokenising, nothing stored', async () => {
    const content = 'word '.repeat(30_000);
    const t0 = performance.now();
    const r = await postJson(`${small.url}/knowledge/register_text`, { content });
    const refuseMs = performance.now() - t0;
    expect(r.status).toBe(413);
    expect(r.json.detail).toMatch(/149999 bytes, more than this KDN accepts \(100000, --max-document-bytes\)/);
    // faster than tokenising it alone, measured here under the same machine load (~150 ms idle)
    const t1 = performance.now();
    llama3Tokenizer.encode(content, { bos: false, eos: false });
    expect(refuseMs).toBeLessThan(performance.now() - t1);
    expect(await total(small)).toBe(0);
  });

  it('over --max-document-tokens: 422, nothing stored', async () => {
    const r = await postJson(`${small.url}/knowledge/register_text`, { content: synthesizeDocument('too-long', 3000) });
    expect(r.status).toBe(422);
    expect(r.json.detail).toMatch(/3000 tokens, more than this KDN accepts \(2000, --max-document-tokens\)/);
    expect(await total(small)).toBe(0);
    const ok = await postJson(`${small.url}/knowledge/register_text`, { content: synthesizeDocument('fits', 1500) });
    expect(ok.json).toMatchObject({ status: 'created', tokens: 1500 });
  });

  it('a 50 MB body is refused with 413 before it is read, /health answering meanwhile', async () => {
    const r = await postBigWhilePolling(`${kdn.url}/knowledge/register_text`, `JSON.stringify({ content: 'x'.repeat(50 * 1024 * 1024) })`, `${kdn.url}/health`);
    expect(r.status).toBe(413);
    expect(JSON.parse(r.body).detail).toMatch(/--max-document-bytes/);
    // refused from its Content-Length: the answer came while the sender still had most of it to write
    expect(r.writtenAtAnswer).toBeLessThan(r.totalBytes / 2);
    expect(healthStalls(r.healthMs, r.baselineMs).join('; ')).toBe('');
    expect(await total(kdn)).toBe(0);
  });

  it('deleting documents gives their memory back: Redis keys, the heap, the tokenizer cache', async () => {
    const r = new Redis(`${redis.url}/0`);
    try {
      gc();
      const heap0 = process.memoryUsage().heapUsed;
      const kids: string[] = [];
      for (let i = 0; i < 2; i++) {
        const res = await postJson(`${kdn.url}/knowledge/register_text`, { content: synthesizeDocument(`big-${i}`, 60_000) });
        expect(res.json).toMatchObject({ status: 'created', tokens: 60_000, kv_ready: 1 });
        kids.push(res.json.kid);
      }
      expect(await r.dbsize()).toBeGreaterThan(900); // 2 × 234 chunks × (kv_bytes + metadata) + lists and items
      expect(tokenizerCacheChars()).toBeLessThanOrEqual(16 * 1024 * 1024);
      const del = await postJson(`${kdn.url}/knowledge/delete`, { knowledge_ids: kids });
      expect(del.json.deleted).toHaveLength(2);
      expect(await r.dbsize()).toBe(0);
      gc();
      const grown = (process.memoryUsage().heapUsed - heap0) / 2 ** 20;
      expect(grown).toBeLessThan(16); // MiB; 2 × 60k-token documents were ~0.5 MB of text and 7.7 MB of KV
    } finally {
      await r.quit();
    }
  });
});
