import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Command } from 'commander';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatStatsTable, infiniteCacheHits, traceStats } from '../traces/stats.js';
import { detectFormat, loadTrace, loadWorkload } from '../traces/load.js';
import { registerTraceCommands } from '../traces/cli.js';
import { generateSynthetic } from '../traces/synthetic.js';
import type { TraceRequest } from '../traces/schema.js';
import { fixtures, haveShared, mooncakeFile, splitwiseFile, tempFile } from './fixtures/traces/helpers.js';

const tiny = join(fixtures, 'tiny.jsonl');

function req(id: string, inputTokens: number, blocks: number[], blockSize = 4): TraceRequest {
  return { id, arrivalMs: 0, inputTokens, outputTokens: 1, blockSize, blocks, knowledge: [], knowledgeTokens: 0 };
}

describe('infinite-cache hit ratio', () => {
  it('hand-computed on the tiny fixture (see test/fixtures/traces/README.md): 2136 / 5148', async () => {
    const t = await loadTrace(tiny);
    const h = infiniteCacheHits(t.requests);
    expect(h).toEqual({ hitTokens: 2136, inputTokens: 5148, ratio: 2136 / 5148 });
    const s = traceStats(t.requests, t.meta);
    expect(s).toMatchObject({
      requests: 6,
      mean_input_tokens: 858,
      mean_output_tokens: 35,
      max_input_tokens: 1500,
      unique_blocks: 6,
      block_refs: 12,
      block_size: 512,
      span_s: 5,
      rate_rps: 1,
      knowledge_docs: 0,
    });
    expect(s.infinite_cache_hit_ratio).toBeCloseTo(0.414918, 6);
  });

  it('counts only the leading run of seen blocks, caps at inputTokens, and depends on order', () => {
    const a = req('a', 12, [1, 2, 3]);
    const b = req('b', 10, [1, 9, 3]); // only block 1 leads: 4 tokens
    const c = req('c', 6, [1, 2]); // 2 blocks = 8 tokens, capped at 6
    expect(infiniteCacheHits([a, b, c])).toEqual({ hitTokens: 10, inputTokens: 28, ratio: 10 / 28 });
    // c first: a then hits 1,2 (8 tokens), b hits 1 (4)
    expect(infiniteCacheHits([c, a, b]).hitTokens).toBe(12);
    // requests without blocks never hit
    expect(infiniteCacheHits([req('x', 5, []), req('y', 5, [])]).ratio).toBe(0);
    expect(infiniteCacheHits([]).ratio).toBe(0);
  });

  it('a synthetic workload reuses knowledge: ratio equals the shared-prefix arithmetic', () => {
    const t = generateSynthetic({ requests: 400, seed: 1 });
    // expected: a request hits floor((25+doc)/256) blocks when its doc was seen before, else 0
    const seen = new Set<string>();
    let hit = 0;
    let all = 0;
    for (const r of t.requests) {
      const k = r.knowledge[0]!.kid;
      if (seen.has(k)) hit += Math.floor((25 + r.knowledgeTokens) / 256) * 256;
      seen.add(k);
      all += r.inputTokens;
    }
    expect(traceStats(t.requests).infinite_cache_hit_ratio).toBeCloseTo(hit / all, 12);
  });
});

describe('traceStats', () => {
  it('zeros for an empty trace and a readable table', () => {
    const s = traceStats([]);
    expect(s.requests).toBe(0);
    expect(s.mean_input_tokens).toBe(0);
    expect(s.infinite_cache_hit_ratio).toBe(0);
    const table = formatStatsTable(traceStats([req('a', 12, [1, 2, 3])]));
    const lines = table.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^requests +1$/);
    expect(new Set(lines.map((l) => l.length)).size).toBe(1); // aligned
  });
});

describe('loadTrace / loadWorkload', () => {
  it('detects formats by extension and directory content', () => {
    expect(detectFormat(tiny)).toBe('mooncake');
    expect(detectFormat(join(fixtures, 'tiny.csv'))).toBe('csv');
    expect(detectFormat(join(fixtures, 'nq-mini'))).toBe('nq');
  });

  it('names the path of a missing file, an unknown extension or a plain directory', async () => {
    await expect(loadTrace('/nope/trace.jsonl')).rejects.toThrow('trace file not found: /nope/trace.jsonl');
    const txt = tempFile('trace.txt', 'x');
    await expect(loadTrace(txt)).rejects.toThrow(`unknown trace format: ${txt} (expected .jsonl, .csv or a directory with workload_nq.json)`);
    const dir = mkdtempSync(join(tmpdir(), 'kvlab-dir-'));
    await expect(loadTrace(dir)).rejects.toThrow(`unknown trace format: ${dir} is a directory without workload_nq.json`);
  });

  it('passes loader options through', async () => {
    const t = await loadTrace(tiny, { timeScale: 2, limit: 3 });
    expect(t.requests.map((r) => r.arrivalMs)).toEqual([0, 2000, 4000]);
    const n = await loadTrace(join(fixtures, 'nq-mini'), { requests: 4, seed: 2 });
    expect(n.requests).toHaveLength(4);
    expect(n.meta.format).toBe('nq');
  });

  it('loadWorkload("synthetic") equals generateSynthetic with the same options; unknown option names and wrong types fail naming them', async () => {
    const w = await loadWorkload('synthetic', { requests: 20, seed: 3 });
    expect(w).toEqual(generateSynthetic({ requests: 20, seed: 3 }));
    await expect(loadWorkload('synthetic', { requests: 20, dir: 'x' })).rejects.toThrow(/dir: not an option of the synthetic workload \(known: requests, rate, /);
    await expect(loadWorkload('synthetic', { bogus: 1 } as never)).rejects.toThrow(/bogus: not an option/);
    await expect(loadWorkload('synthetic', { rate: 'fast' } as never)).rejects.toThrow(/rate: expected a number, got "fast"/);
    await expect(loadWorkload('synthetic', { arrival: 'uniform' } as never)).rejects.toThrow(/arrival: expected poisson or bursty/);
    await expect(loadWorkload('synthetic', { requests: 1e9 })).rejects.toThrow(/requests: at most 10000000/);
    await expect(loadWorkload('other' as 'nq')).rejects.toThrow('unknown workload "other"');
  });
});

describe('kvlab trace stats (CLI)', () => {
  let out: string[];
  let err: string[];
  beforeEach(() => {
    out = [];
    err = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
      out.push(String(s));
      return true;
    });
    vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
      err.push(String(s));
      return true;
    });
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  async function run(...args: string[]): Promise<void> {
    const program = new Command().exitOverride();
    registerTraceCommands(program);
    await program.parseAsync(['trace', ...args], { from: 'user' });
  }

  it('--json prints one object with the required fields', async () => {
    await run('stats', tiny, '--json');
    expect(out).toHaveLength(1);
    const j = JSON.parse(out[0]!);
    expect(j).toMatchObject({
      name: 'tiny',
      format: 'mooncake',
      requests: 6,
      mean_input_tokens: 858,
      mean_output_tokens: 35,
      unique_blocks: 6,
      block_refs: 12,
    });
    expect(j.infinite_cache_hit_ratio).toBeCloseTo(2136 / 5148, 12);
  });

  it('plain mode prints an aligned table', async () => {
    await run('stats', tiny);
    const text = out.join('');
    expect(text).toContain('# tiny (mooncake)');
    expect(text).toMatch(/\ninfinite_cache_hit_ratio +0\.4149\n/);
    expect(text).toMatch(/\nrequests +6\n/);
  });

  it('--skip-bad-lines and --time-scale reach the loader', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvlab-cli-'));
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'bad.jsonl');
    writeFileSync(file, '{"timestamp":0,"input_length":10,"output_length":1,"hash_ids":[1]}\n{oops\n{"timestamp":1000,"input_length":10,"output_length":1,"hash_ids":[1]}\n');
    await expect(run('stats', file, '--json')).rejects.toThrow(`${file}:2: invalid JSON`);
    await run('stats', file, '--json', '--skip-bad-lines', '--time-scale', '3');
    const j = JSON.parse(out.at(-1)!);
    expect(j).toMatchObject({ requests: 2, skipped: 1, span_s: 3, infinite_cache_hit_ratio: 0.5 });
  });

  it('--workload synthetic with generator flags', async () => {
    await run('stats', '--workload', 'synthetic', '--requests', '50', '--seed', '3', '--json');
    const j = JSON.parse(out[0]!);
    const want = traceStats(generateSynthetic({ requests: 50, seed: 3 }).requests);
    expect(j).toMatchObject({ name: 'synthetic', format: 'synthetic', ...want });
  });

  it('--workload nq --dir', async () => {
    await run('stats', '--workload', 'nq', '--dir', join(fixtures, 'nq-mini'), '--requests', '10', '--json');
    expect(JSON.parse(out[0]!)).toMatchObject({ format: 'nq', requests: 10, knowledge_docs: expect.any(Number) });
  });

  it('needs exactly one of FILE and --workload', async () => {
    await expect(run('stats')).rejects.toThrow('give either FILE or --workload');
    await expect(run('stats', tiny, '--workload', 'synthetic')).rejects.toThrow('give either FILE or --workload');
  });

  it('trace defaults prints the synthetic defaults', async () => {
    await run('defaults');
    expect(JSON.parse(out.join(''))).toMatchObject({ docs: 200, zipfS: 1, rate: 1.5 });
  });
});

describe.skipIf(!haveShared('the real Mooncake trace test', mooncakeFile))('real Mooncake conversation trace', () => {
  it('12,031 requests, mean input within 1% of 12,035, block invariants, hit ratio', async () => {
    const t = await loadTrace(mooncakeFile);
    expect(t.requests).toHaveLength(12031);
    expect(t.meta).toMatchObject({ format: 'mooncake', blockSize: 512, lines: 12031, skipped: 0 });
    const s = traceStats(t.requests, t.meta);
    expect(Math.abs(s.mean_input_tokens - 12035) / 12035).toBeLessThan(0.01);
    expect(Math.abs(s.mean_output_tokens - 343) / 343).toBeLessThan(0.01);
    for (const r of t.requests) expect(r.blocks.length).toBe(Math.ceil(r.inputTokens / 512));
    // ties keep file order: ids increase within each timestamp
    for (let i = 1; i < t.requests.length; i++) {
      const a = t.requests[i - 1]!;
      const b = t.requests[i]!;
      if (a.arrivalMs === b.arrivalMs) expect(Number(a.id.slice(1))).toBeLessThan(Number(b.id.slice(1)));
    }
    console.log(`[traces] real Mooncake infinite_cache_hit_ratio = ${s.infinite_cache_hit_ratio.toFixed(4)} (unique_blocks ${s.unique_blocks}, block_refs ${s.block_refs})`);
    // a shared system-prompt block plus multi-turn reuse: well above 0, below 1
    expect(s.infinite_cache_hit_ratio).toBeGreaterThan(0.2);
    expect(s.infinite_cache_hit_ratio).toBeLessThan(0.6);
  });
});

describe.skipIf(!haveShared('the real Splitwise CSV test', splitwiseFile))('real Splitwise code trace', () => {
  it('8,819 requests, sorted, no blocks', async () => {
    const t = await loadTrace(splitwiseFile);
    expect(t.requests).toHaveLength(8819);
    expect(t.meta.reordered).toBe(0);
    expect(t.requests.at(-1)!.arrivalMs).toBe(3435948.056);
    expect(traceStats(t.requests).block_refs).toBe(0);
  });
});
