/**
 * Replay client: exact-length prompt synthesis (shared block ids → shared token prefixes),
 * documents of a given token length, open-loop replay against an emulator and through the
 * gateway (decision header kept), concurrency limit, run-directory outputs.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TraceRequest } from '../engine/types.js';
import { backendSpecs } from '../live/backends.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway } from '../live/gateway.js';
import { startKdn } from '../live/kdn.js';
import { promptForBlocks, replayBody, runReplay, singleTokenWords, synthesizeDocument, synthWords } from '../live/replay.js';
import { encodePrompt, encodeSystemPrefix, encodeText } from '../live/tokenizer.js';
import { resolveCluster } from '../sim/cluster.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { postJson, testProfile } from './helpers/live.js';
import { describeRedis } from './helpers/system.js';

const req = (id: string, arrivalMs: number, inputTokens: number, blocks: number[], outputTokens = 3): TraceRequest => ({ id, arrivalMs, inputTokens, outputTokens, blockSize: 32, blocks, knowledge: [], knowledgeTokens: 0 });

describe('text synthesis', () => {
  it('every vocabulary word is one token after a space, so n words are n tokens', () => {
    const w = singleTokenWords();
    expect(w.length).toBe(8192);
    for (const x of w.slice(0, 200)) expect(encodeText(' ' + x)).toHaveLength(1);
    expect(encodeText(synthWords('k', 777))).toHaveLength(777);
    expect(synthWords('k', 50)).toBe(synthWords('k', 50));
    expect(synthWords('k', 50)).not.toBe(synthWords('j', 50));
  });

  it('prompts from block ids: exact length, shared leading blocks give shared token prefixes', () => {
    const a = req('a', 0, 100, [11, 22, 33, 44]);
    const b = req('b', 0, 90, [11, 22, 55]);
    const ta = encodePrompt(promptForBlocks(a));
    const tb = encodePrompt(promptForBlocks(b));
    expect(ta).toHaveLength(100);
    expect(tb).toHaveLength(90);
    let same = 0;
    while (ta[same] === tb[same]) same++;
    expect(same).toBe(64); // BOS + 31 words of block 0 + 32 of block 1
    const c = req('c', 0, 20, []);
    expect(encodePrompt(promptForBlocks(c))).toHaveLength(20);
  });

  it('documents have the requested system-prefix token length', () => {
    for (const n of [40, 300, 1234]) expect(encodeSystemPrefix(synthesizeDocument(`doc-${n}`, n))).toHaveLength(n);
  });

  it('knowledge requests become chat requests with knowledge_ids; others completions with ignore_eos', () => {
    const k = replayBody({ ...req('k', 0, 600, []), knowledge: [{ kid: 'x'.repeat(64), tokens: 500 }], knowledgeTokens: 500, question: 'Why?' });
    expect(k.path).toBe('/v1/chat/completions');
    expect(k.body).toMatchObject({ knowledge_ids: ['x'.repeat(64)], messages: [{ role: 'user', content: 'Why?' }], stream: true, max_tokens: 3, ignore_eos: true });
    const p = replayBody(req('p', 0, 50, [1, 2]));
    expect(p.path).toBe('/v1/completions');
    expect(p.body.stream_options).toEqual({ include_usage: true });
  });
});

describeRedis('replay against servers', () => {
  let em: EmulatorHandle;
  const redis: RedisServerHandle[] = [];
  let tmp: string;
  beforeAll(async () => {
    em = await startEmulator({ profile: testProfile({ blockSizeTokens: 16 }), model: 'm', coldStart: false });
    tmp = mkdtempSync(join(tmpdir(), 'kvlab-replay-'));
  });
  afterAll(async () => {
    await em?.close();
    for (const r of redis) await r.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('open-loop replay straight to an emulator: records, prefix hits from shared blocks, summary', async () => {
    const reqs = [req('r0', 0, 200, [1, 2, 3, 4, 5, 6, 7]), req('r1', 150, 200, [1, 2, 3, 4, 5, 6, 8]), req('r2', 300, 64, [9, 10])];
    const out = join(tmp, 'direct');
    const res = await runReplay({ target: em.url, requests: reqs, out, speed: 2 });
    expect(res.records.map((r) => r.status)).toEqual(['ok', 'ok', 'ok']);
    const [r0, r1] = res.records;
    expect(r0!.observed!.ttft_ms).toBeGreaterThan(0);
    expect(r0!.observed!.prompt_tokens).toBe(200);
    expect(r1!.observed!.cached_tokens).toBeGreaterThanOrEqual(176); // 6 shared 32-token blocks, 16-token cache blocks
    expect(r1!.arrival_ms).toBeGreaterThanOrEqual(70); // sent at 150 / speed 2
    expect(r0!.decision).toBeNull(); // no gateway, no decision header
    const lines = readFileSync(join(out, 'records.jsonl'), 'utf8').trim().split('\n');
    expect(lines).toHaveLength(3);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(summary).toMatchObject({ source: 'live', requests: 3, completed: 3, client: 'replay' });
    expect(summary.ttft_ms.n).toBe(3);
  });

  it('concurrency limit: at most one request in flight', async () => {
    const reqs = Array.from({ length: 4 }, (_, i) => req(`c${i}`, 0, 40, [], 5));
    const res = await runReplay({ target: em.url, requests: reqs, concurrencyLimit: 1 });
    const sorted = [...res.records].sort((a, b) => a.arrival_ms - b.arrival_ms);
    for (let i = 1; i < sorted.length; i++) expect(sorted[i]!.arrival_ms).toBeGreaterThanOrEqual(sorted[i - 1]!.observed!.done_at_ms! - 0.5);
  });

  it('through the gateway: the decision header fills decision, prediction and prepare-side timings', async () => {
    redis.push(await startTestRedis(), await startTestRedis());
    const profile = testProfile();
    const em2 = await startEmulator({ profile, model: 'm', redisUrl: `${redis[1]!.url}/0`, bytesPerToken: 16, coldStart: false });
    const kdn = await startKdn({ port: 0, syntheticKv: true, redisUrl: redis[0]!.url, model: 'm', bytesPerToken: 16, link: { bandwidthGbps: 10, latencyMs: 1, efficiency: 1 } });
    const doc = synthesizeDocument('replay-doc', 700);
    const kid = (await postJson(`${kdn.url}/knowledge/register_text`, { content: doc })).json.kid;
    const rc = resolveCluster({ instances: 1, kdns: [{ id: 'kdn0', compression: 1 }] }, {}, 'rtx5090x8-llama3-70b');
    rc.spec.instances[0]!.profile = profile;
    rc.spec.instances[0]!.engine = { ...profile.engine };
    const gw = await startGateway({ port: 0, backends: backendSpecs([em2.url], [`${redis[1]!.url}/0`]), kdnUrl: kdn.url, strategy: 'kv-only', cluster: rc });
    try {
      const k = { ...req('g0', 0, 730, []), knowledge: [{ kid, tokens: 700 }], knowledgeTokens: 700 };
      const res = await runReplay({ target: gw.url, requests: [k, { ...k, id: 'g1', arrivalMs: 50 }], out: join(tmp, 'gw') });
      const [a] = res.records;
      expect(a!.status).toBe('ok');
      expect(a!.intent).toBe('kvcache');
      expect(a!.instance).toBe('i0');
      expect(a!.decision!.reused_tokens).toBe(512);
      expect(a!.predicted!.ttft_ms).toBeGreaterThan(0);
      expect(a!.observed!.transfer_ms).toBeGreaterThan(0);
      const o = a!.observed!;
      expect(o.prepare_ms! + o.link_wait_ms! + o.transfer_ms! + o.queue_ms! + o.prefill_ms!).toBeCloseTo(o.ttft_ms!, 0);
      expect(a!.input_tokens).toBe(o.prompt_tokens);
    } finally {
      await gw.close();
      await kdn.close();
      await em2.close();
    }
  });
});
