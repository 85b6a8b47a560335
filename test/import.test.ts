import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { vllmBenchArrivalsMs } from '../traces/arrivals.js';
import { parseLlmServingSimRequests, readLlmServingSimRun } from '../traces/llmservingsim.js';
import { parseLenientJson, vllmBenchToObserved } from '../traces/vllm-bench.js';
import { importRun } from '../sim/import.js';
import { fidelityDiff, formatFidelity } from '../sim/fidelity.js';
import { runSim } from '../sim/run.js';
import { simulate } from '../sim/simulator.js';
import { createStrategy } from '../engine/strategies/index.js';
import { mkReq, SHARED, testCluster } from './helpers/sim.js';

const tmp: string[] = [];
const mk = () => {
  const d = mkdtempSync(join(tmpdir(), 'kvlab-import-'));
  tmp.push(d);
  return d;
};
afterAll(() => tmp.forEach((d) => rmSync(d, { recursive: true, force: true })));

const line = (o: Record<string, unknown>) => JSON.stringify({ request_id: 'bench-0', input_toks: 100, output_toks: 10, arrival_time: 1, queued_ts: 10, scheduled_ts: 10.01, first_token_ts: 10.2, last_token_ts: 11, ...o });

describe('LLMServingSim requests.jsonl', () => {
  it('converts engine timestamps to arrival, TTFT, TPOT, E2E and queueing (ms)', () => {
    const text = [line({}), line({ request_id: 'bench-1', queued_ts: 10.5, scheduled_ts: 10.6, first_token_ts: 10.9, last_token_ts: 12.7 })].join('\n');
    const r = parseLlmServingSimRequests(text, 'req.jsonl');
    expect(r[0]).toMatchObject({ id: 'bench-0', arrivalMs: 0, inputTokens: 100, outputTokens: 10, ok: true });
    expect(r[0]!.ttftMs).toBeCloseTo(200, 6);
    expect(r[0]!.e2eMs).toBeCloseTo(1000, 6);
    expect(r[0]!.tpotMs).toBeCloseTo(800 / 9, 6);
    expect(r[0]!.queueMs).toBeCloseTo(10, 6);
    expect(r[1]!.arrivalMs).toBeCloseTo(500, 6);
  });

  it.each([
    ['{not json', /req\.jsonl:2: not valid JSON/],
    [line({ request_id: 'b1', input_toks: 0 }), /req\.jsonl:2: "input_toks" must be a positive integer, got number 0/],
    [line({ request_id: 'b1', output_toks: 'x' }), /req\.jsonl:2: "output_toks" must be a positive integer, got string/],
    [line({ request_id: 'b1', first_token_ts: null }), /req\.jsonl:2: "first_token_ts" must be a finite number/],
    [line({ request_id: 'b1', first_token_ts: 9 }), /req\.jsonl:2: "first_token_ts" \(9\) is before "scheduled_ts"/],
    [line({ request_id: 'bench-0' }), /req\.jsonl:2: request_id "bench-0" repeats an earlier line/],
    ['[1,2]', /req\.jsonl:2: expected a JSON object, got array/],
    [JSON.stringify({ input_toks: 1 }), /req\.jsonl:2: "request_id" must be a string/],
  ])('malformed line %#: %s', (bad, msg) => {
    expect(() => parseLlmServingSimRequests(`${line({})}\n${bad}\n`, 'req.jsonl')).toThrow(msg);
  });

  it('an empty file is an error naming it', () => {
    expect(() => parseLlmServingSimRequests('\n\n', 'req.jsonl')).toThrow(/req\.jsonl: no request lines/);
  });

  it('meta.json fields are type-checked and name the field', () => {
    const d = mk();
    writeFileSync(join(d, 'requests.jsonl'), line({}) + '\n');
    writeFileSync(join(d, 'meta.json'), JSON.stringify({ engine_kwargs: { max_num_seqs: -3 } }));
    expect(() => readLlmServingSimRun(d)).toThrow(/meta\.json: engine_kwargs\.max_num_seqs: expected a positive integer, got number -3/);
    writeFileSync(join(d, 'meta.json'), JSON.stringify({ vllm_version: '0.19.0', engine_kwargs: { max_num_seqs: 64, max_num_batched_tokens: 1024, tensor_parallel_size: 2 }, kv_cache: { num_gpu_blocks: 100, block_size: 16 } }));
    const r = readLlmServingSimRun(d);
    expect(r.engine).toMatchObject({ maxNumSeqs: 64, maxNumBatchedTokens: 1024, tensorParallel: 2, kvCapacityTokens: 1600 });
    expect(r.entry).toBe('engine');
  });
});

/** A small detailed vllm bench result. */
function benchResult(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    date: '20260801-120000',
    backend: 'vllm',
    model_id: 'meta-llama/Llama-3.1-8B-Instruct',
    tokenizer_id: 'meta-llama/Llama-3.1-8B-Instruct',
    num_prompts: 3,
    request_rate: 'inf',
    burstiness: 1.0,
    max_concurrency: null,
    duration: 2.5,
    completed: 2,
    failed: 1,
    total_input_tokens: 300,
    total_output_tokens: 30,
    input_lens: [100, 200, 50],
    output_lens: [10, 20, 0],
    ttfts: [0.05, 0.08, 0],
    itls: [Array(9).fill(0.01), Array(19).fill(0.012), []],
    errors: ['', '', 'Bad Request'],
    mean_ttft_ms: 65,
    median_ttft_ms: 65,
    p99_ttft_ms: 79.7,
    mean_tpot_ms: 11,
    median_tpot_ms: 11,
    p99_tpot_ms: 12,
    ...over,
  };
}

describe('vllm bench serve JSON', () => {
  it('reads per-request data: TTFT, E2E = TTFT + Σ ITL, TPOT, failures', () => {
    const r = vllmBenchToObserved(benchResult(), 'b.json');
    expect(r.format).toBe('vllm-bench');
    expect(r.arrivals).toBe('exact');
    expect(r.requestRate).toBe(Infinity);
    expect(r.requests.map((q) => q.ok)).toEqual([true, true, false]);
    expect(r.requests[0]!.ttftMs).toBeCloseTo(50, 6);
    expect(r.requests[0]!.e2eMs).toBeCloseTo(50 + 90, 6);
    expect(r.requests[0]!.tpotMs).toBeCloseTo(10, 6);
    expect(r.requests[2]!.error).toBe('Bad Request');
    expect(r.aggregates!.ttft).toMatchObject({ mean: 65, p50: 65, p99: 79.7, p90: null });
    expect(r.model).toBe('meta-llama/Llama-3.1-8B-Instruct');
  });

  it('uses latencies and start_times when present (exact send times)', () => {
    const r = vllmBenchToObserved(benchResult({ request_rate: 4, latencies: [0.2, 0.3, 0], start_times: [100.5, 100.75, 101] }), 'b.json');
    expect(r.arrivals).toBe('exact');
    expect(r.requests.map((q) => q.arrivalMs)).toEqual([0, 250, 500]);
    expect(r.requests[1]!.e2eMs).toBeCloseTo(300, 6);
  });

  it('a finite rate without send times is a process', () => {
    const r = vllmBenchToObserved(benchResult({ request_rate: 2, burstiness: 0.5 }), 'b.json');
    expect(r.arrivals).toBe('process');
    expect(r.burstiness).toBe(0.5);
  });

  it('aggregates-only (no --save-detailed) keeps the totals to rebuild fixed-length requests', () => {
    const o = benchResult();
    for (const k of ['input_lens', 'output_lens', 'ttfts', 'itls', 'errors']) delete o[k];
    const r = vllmBenchToObserved(o, 'b.json');
    expect(r.requests).toEqual([]);
    expect(r.totals).toMatchObject({ inputTokens: 300, outputTokens: 30, completed: 2 });
  });

  it('metadata key=value pairs give engine settings', () => {
    const r = vllmBenchToObserved(benchResult({ max_num_seqs: '64', max_num_batched_tokens: '4096', gpu: 'h100', tensor_parallel_size: '2' }), 'b.json');
    expect(r.engine).toMatchObject({ maxNumSeqs: 64, maxNumBatchedTokens: 4096, tensorParallel: 2 });
    expect(r.gpu).toBe('h100');
  });

  it("accepts Python's Infinity literal", () => {
    const o = parseLenientJson('{"request_rate": Infinity, "ttfts": [0.1], "input_lens": [5], "output_lens": [2], "itls": [[0.01]]}', 'b.json') as Record<string, unknown>;
    expect(o.request_rate).toBe(Infinity);
    expect(vllmBenchToObserved(o, 'b.json').requestRate).toBe(Infinity);
  });

  it.each([
    [{ ttfts: 'x' }, /b\.json: ttfts: expected an array, got string/],
    [{ ttfts: [0.1, 0.2] }, /b\.json: input_lens: has 3 entries, expected 2/],
    [{ input_lens: undefined }, /b\.json: ttfts is present but input_lens is missing/],
    [{ ttfts: [0.1, -1, 0.2] }, /b\.json: ttfts\.1: expected a finite number >= 0/],
    [{ itls: [[0.01], ['a'], []] }, /b\.json: itls\.1\.0: expected a finite number >= 0/],
    [{ request_rate: -2 }, /b\.json: request_rate: expected a positive number or "inf"/],
    [{ max_concurrency: 2.5 }, /b\.json: max_concurrency: expected an integer >= 1/],
    [{ max_num_seqs: 'lots' }, /b\.json: max_num_seqs: expected a positive integer, got "lots"/],
  ])('malformed field %#', (over, msg) => {
    const o = benchResult(over as Record<string, unknown>);
    for (const [k, v] of Object.entries(over)) if (v === undefined) delete o[k];
    expect(() => vllmBenchToObserved(o, 'b.json')).toThrow(msg);
  });

  it('not a bench result', () => {
    expect(() => vllmBenchToObserved([1], 'b.json')).toThrow(/b\.json: expected a JSON object/);
    expect(() => vllmBenchToObserved({ foo: 1 }, 'b.json')).toThrow(/b\.json: not a vllm bench serve result/);
    expect(() => parseLenientJson('{nope', 'b.json')).toThrow(/b\.json: not valid JSON/);
  });
});

describe('vLLM benchmark arrival process', () => {
  it('rescales the cumulative gamma gaps so the last request is sent at n / rate', () => {
    const a = vllmBenchArrivalsMs(200, 4, 1, 7);
    expect(a.at(-1)).toBeCloseTo((200 / 4) * 1000, 6);
    for (let i = 1; i < a.length; i++) expect(a[i]!).toBeGreaterThanOrEqual(a[i - 1]!);
    expect(vllmBenchArrivalsMs(200, 4, 1, 7)).toEqual(a);
    expect(vllmBenchArrivalsMs(200, 4, 1, 8)).not.toEqual(a);
  });

  it('burstiness shapes the gaps: CV ≈ 1/sqrt(burstiness); rate inf sends all at 0; burstiness inf is uniform', () => {
    const cv = (b: number) => {
      const a = vllmBenchArrivalsMs(20000, 10, b, 3);
      const g = a.map((x, i) => x - (i ? a[i - 1]! : 0));
      const m = g.reduce((s, x) => s + x, 0) / g.length;
      return Math.sqrt(g.reduce((s, x) => s + (x - m) ** 2, 0) / g.length) / m;
    };
    expect(cv(1)).toBeCloseTo(1, 1);
    expect(cv(0.25)).toBeCloseTo(2, 1);
    expect(vllmBenchArrivalsMs(3, Infinity, 1, 1)).toEqual([0, 0, 0]);
    const u = vllmBenchArrivalsMs(4, 2, Infinity, 1);
    expect(u.map((x) => Math.round(x))).toEqual([500, 1000, 1500, 2000]);
    expect(() => vllmBenchArrivalsMs(3, 0, 1, 1)).toThrow(RangeError);
  });
});

describe('client max concurrency in the simulator', () => {
  it('never has more requests in flight than the cap, and times TTFT from the send', () => {
    const reqs = Array.from({ length: 12 }, (_, i) => mkReq({ id: `q${i}`, arrivalMs: 0, inputTokens: 200, outputTokens: 20 }));
    const o = simulate(reqs, { cluster: testCluster(1), strategy: createStrategy('round-robin', {}), maxConcurrency: 3 });
    const spans = o.requests.map((q, r) => [q.arrivalMs, o.doneAt[r]!] as const);
    for (const [t] of spans) expect(spans.filter(([a, b]) => a <= t && b > t).length).toBeLessThanOrEqual(3);
    // later requests were sent when earlier ones finished
    expect(o.requests[11]!.arrivalMs).toBeGreaterThan(0);
    expect(reqs[11]!.arrivalMs).toBe(0); // the caller's array is not changed
    expect(() => simulate(reqs, { cluster: testCluster(1), strategy: createStrategy('round-robin', {}), maxConcurrency: 0 })).toThrow(RangeError);
  });
});

const RTX4090 = resolve(SHARED, 'data/profiles/public/llmservingsim_bench_vllm019_rtx/RTX4090_Llama-3.1-8B');

describe('kvlab import end to end', () => {
  it('a vllm bench file with a finite rate: one trace per seed, distributions compared across seeds', async () => {
    const d = mk();
    const f = join(d, 'bench.json');
    const n = 40;
    writeFileSync(
      f,
      JSON.stringify(
        benchResult({
          request_rate: 5,
          num_prompts: n,
          max_concurrency: 8,
          gpu: 'H100',
          input_lens: Array(n).fill(300),
          output_lens: Array(n).fill(20),
          ttfts: Array(n).fill(0.04),
          itls: Array(n).fill(Array(19).fill(0.008)),
          errors: Array(n).fill(''),
          completed: n,
          failed: 0,
        }),
      ),
    );
    const out = join(d, 'imp');
    const r = importRun(f, { out, seeds: 3 });
    expect(r.traces).toEqual(['trace-seed-1.jsonl', 'trace-seed-2.jsonl', 'trace-seed-3.jsonl']);
    expect(r.profileChoice).toMatch(/measured profile h100x1-llama3-8b/);
    expect(readFileSync(join(out, 'cluster.yaml'), 'utf8')).toMatch(/maxConcurrency: 8/);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(cfg).toMatchObject({ kind: 'observed', arrivals: 'process', request_rate: 5, max_concurrency: 8 });
    const sims: string[] = [];
    for (const s of [1, 2, 3]) {
      const so = join(d, `sim-${s}`);
      await runSim({ trace: join(out, `trace-seed-${s}.jsonl`), cluster: join(out, 'cluster.yaml'), strategy: 'round-robin', seed: s, out: so });
      sims.push(so);
    }
    const fid = fidelityDiff(out, sims);
    expect(fid.arrivals).toBe('process');
    expect(fid.perRequest).toBeNull();
    const m = fid.aggregate.ttft_ms.mean;
    expect(m.observed).toBeCloseTo(40, 3);
    expect(m.simulated.length).toBe(3);
    expect(Number.isFinite(m.relErr!)).toBe(true);
    expect(m.ci95[0]).toBeLessThanOrEqual(m.relErr!);
    expect(formatFidelity(fid)).toMatch(/95% CI across seeds/);
  });

  it('reports missing GPU or model with the flag to pass', () => {
    const d = mk();
    const f = join(d, 'bench.json');
    writeFileSync(f, JSON.stringify(benchResult()));
    expect(() => importRun(f, { out: join(d, 'o') })).toThrow(/does not name its GPU: pass --gpu/);
    writeFileSync(f, JSON.stringify(benchResult({ model_id: 'acme/unknown-13b', gpu: 'a100' })));
    expect(() => importRun(f, { out: join(d, 'o') })).toThrow(/model "acme\/unknown-13b" is not shipped: pass --model/);
  });

  it.skipIf(!existsSync(RTX4090))('the LLMServingSim RTX 4090 run: engine settings from meta.json, per-request comparison', async () => {
    const d = mk();
    const out = join(d, 'imp');
    const r = importRun(RTX4090, { out });
    expect(r.profile.engine).toMatchObject({ maxNumSeqs: 256, maxNumBatchedTokens: 2048, maxModelLen: 32768, kvCapacityTokens: 41408 });
    expect(r.profile.step.apiMs).toBe(0); // in-process engine: engine-side timestamps
    expect(r.profileChoice).toMatch(/derived: kvlab profile derive --gpu rtx4090/);
    await runSim({ trace: join(out, 'trace.jsonl'), cluster: join(out, 'cluster.yaml'), strategy: 'round-robin', out: join(d, 'sim') });
    const fid = fidelityDiff(out, [join(d, 'sim')], join(d, 'fidelity.json'));
    expect(fid.perRequest!.ttft_ms.n).toBe(300);
    expect(fid.completed).toEqual({ observed: 300, simulated: [300] });
    // a derived profile on held-out hardware: within 30 % on mean E2E (BENCHMARKS.md has the numbers)
    expect(Math.abs(fid.aggregate.e2e_ms.mean.relErr!)).toBeLessThan(0.3);
    expect(JSON.parse(readFileSync(join(d, 'fidelity.json'), 'utf8')).aggregate.ttft_ms.mean.observed).toBeCloseTo(65456.6, 0);
  });
});

describe('cluster file profile paths', () => {
  it('are relative to the cluster file', async () => {
    const d = mk();
    mkdirSync(join(d, 'c'));
    writeFileSync(join(d, 'c', 'p.json'), readFileSync(resolve(import.meta.dirname, 'fixtures/profile-test.json')));
    writeFileSync(join(d, 'c', 'cluster.yaml'), 'profile: p.json\ninstances: 1\n');
    const { readClusterFile } = await import('../sim/cluster.js');
    expect(readClusterFile(join(d, 'c', 'cluster.yaml')).profile).toBe(join(d, 'c', 'p.json'));
  });
});
