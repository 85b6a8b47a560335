/**
 * Every CLI mistake is one line on stderr (`kvlab: ...`), a non-zero exit and no stack trace:
 * bad numeric flags, strategy parameters from every source, unknown workload options and sweep
 * axes, resource-sized inputs, unwritable outputs (fast, no hang), empty traces, runs that share
 * no request id, servers whose Redis is absent, a replay whose knowledge the target lacks.
 * Reordered timestamps and partly overlapping runs are warnings (exit 0). Runs the built CLI
 * (dist/bin/kvlab.js, built by `npm install` / `npm ci`).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backendSpecs } from '../live/backends.js';
import { startEmulator, type EmulatorHandle } from '../live/emulator.js';
import { startGateway, type GatewayHandle } from '../live/gateway.js';
import { freePort } from '../live/redis-launcher.js';
import { testProfile } from './helpers/live.js';
import { testCluster } from './helpers/stack.js';

const KVLAB = resolve('dist/bin/kvlab.js');
let tmp: string;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs `node dist/bin/kvlab.js ...args` (killed after `timeoutMs`). */
function kvlab(args: string[], timeoutMs = 20_000): Promise<Run> {
  if (!existsSync(KVLAB)) throw new Error(`${KVLAB} is missing: run npm run build first`);
  const t0 = performance.now();
  return new Promise((res) => {
    const child = spawn(process.execPath, [KVLAB, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: tmp });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += String(d)));
    child.stderr.on('data', (d) => (stderr += String(d)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

/** The run failed with exactly one `kvlab: ...` line matching `re`, and no stack trace. */
function expectOneLineError(r: Run, re: RegExp): void {
  expect(r.code, `exit code; stderr: ${r.stderr}`).not.toBe(0);
  expect(r.code).not.toBeNull(); // not killed by the timeout
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^kvlab: /);
  expect(lines[0]).toMatch(re);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

const SIM = ['sim', '--workload', 'synthetic', '--workload-opt', 'requests=30', '--quiet'];

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'kvlab-cli-val-'));
  writeFileSync(join(tmp, 'empty.jsonl'), '');
  writeFileSync(join(tmp, 'bad-only.jsonl'), '{"timestamp": "x"}\n');
  const line = (t: number, h: number[]) => JSON.stringify({ timestamp: t, input_length: 600, output_length: 4, hash_ids: h });
  writeFileSync(join(tmp, 'reordered.jsonl'), [line(0, [1, 2]), line(50, [3, 4]), line(20, [5, 6]), line(100, [7, 8]), line(90, [9, 10])].join('\n') + '\n');
  writeFileSync(join(tmp, 'cluster.yaml'), 'instances: 2\nstrategyParams: { kvlab: { workWeight: abc } }\n');
  const rec = (id: string) => JSON.stringify({ id, arrival_ms: 0, status: 'ok', error: null, input_tokens: 10, output_tokens: 2, knowledge_tokens: 0, instance: 'i0', kdn: null, intent: 'none', decision: null, predicted: null, observed: { ttft_ms: 5, e2e_ms: 9 }, source: 'sim' });
  for (const [d, ids] of [['runA', ['a1', 'a2']], ['runB', ['b1', 'b2']], ['runC', ['a1', 'c2', 'c3']]] as const) {
    rmSync(join(tmp, d), { recursive: true, force: true });
    const dir = join(tmp, d);
    mkdirSync(dir);
    writeFileSync(join(dir, 'records.jsonl'), ids.map(rec).join('\n') + '\n');
  }
});

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe('bad flags: one line, non-zero exit, no stack trace', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['--strategy-opt workWeight=abc', [...SIM, '--strategy', 'kvlab', '--strategy-opt', 'workWeight=abc'], /strategy kvlab: .*workWeight/],
    ['--strategy-opt unknown name', [...SIM, '--strategy-opt', 'bogus=1'], /bogus/],
    ['--seed abc', [...SIM, '--seed', 'abc'], /--seed must be an integer >= 0.*"abc"/],
    ['--noise-cv -1', [...SIM, '--noise-cv', '-1'], /--noise-cv must be a number >= 0 \(got "-1"\)/],
    ['--kv-event-delay-ms -5', [...SIM, '--kv-event-delay-ms', '-5'], /--kv-event-delay-ms must be a number >= 0/],
    ['--workload-opt bogus=1', ['sim', '--workload', 'synthetic', '--workload-opt', 'bogus=1'], /--workload-opt bogus: not an option of the synthetic workload \(known: requests, rate/],
    ['--workload-opt rate=fast', ['sim', '--workload', 'synthetic', '--workload-opt', 'rate=fast'], /--workload-opt rate: expected a number, got "fast"/],
    ['--instances 1000000000', [...SIM, '--instances', '1000000000'], /--instances must be an integer >= 1 and <= 4096 \(a resource bound/],
    ['--time-scale 0', [...SIM, '--time-scale', '0'], /--time-scale must be a number > 0/],
    ['ab --seeds 1e9', ['ab', '--workload', 'synthetic', '--seeds', '1000000000'], /--seeds must be an integer >= 1 and <= 1000/],
    ['sweep --vary rat=1,2', ['sweep', '--workload', 'synthetic', '--strategies', 'kvlab', '--vary', 'rat=1,2', '--out', 'sw'], /--vary rat: unknown parameter \(known: rate, kdn_gbps, instances, router_replicas, replica_sync_ms, workload\.<option>\)/],
    ['sweep --vary workload.bogus=1', ['sweep', '--workload', 'synthetic', '--strategies', 'kvlab', '--vary', 'workload.bogus=1,2', '--out', 'sw'], /--vary workload\.bogus: not an option/],
    ['cluster file strategyParams', [...SIM, '--cluster', 'cluster.yaml'], /cluster\.yaml: strategyParams\.kvlab: strategy kvlab: .*workWeight/],
    ['trace stats --rate -1', ['trace', 'stats', '--workload', 'synthetic', '--rate', '-1'], /--rate must be a number > 0/],
    ['gateway --strategy-params bad', ['gateway', '--backends', 'http://127.0.0.1:9', '--strategy-params', '{"workWeight":"abc"}'], /strategy kvlab: .*workWeight/],
    ['gateway --max-n 0', ['gateway', '--backends', 'http://127.0.0.1:9', '--max-n', '0'], /--max-n must be an integer >= 1/],
    ['unknown option', ['sim', '--bogus-flag'], /unknown option '--bogus-flag'/],
  ];
  it.each(cases)('%s', async (_name, args, re) => {
    expectOneLineError(await kvlab(args), re);
  });

  it('--out /proc/x fails at once (no hang in recursive mkdir)', async () => {
    const r = await kvlab([...SIM, '--out', '/proc/x/y'], 10_000);
    expectOneLineError(r, /--out \/proc\/x\/y: cannot create \/proc\/x/);
    expect(r.ms).toBeLessThan(5000);
  });
});

describe('inputs', () => {
  it('an empty trace is an error; a trace of only malformed lines too (with --skip-bad-lines)', async () => {
    expectOneLineError(await kvlab(['sim', '--trace', 'empty.jsonl', '--quiet']), /empty\.jsonl: the trace has no requests \(empty file\)/);
    expectOneLineError(await kvlab(['sim', '--trace', 'bad-only.jsonl', '--skip-bad-lines', '--quiet']), /bad-only\.jsonl: the trace has no requests \(all 1 line\(s\) were malformed/);
  });

  it('reordered timestamps: a warning on stderr and a count in summary.json, exit 0', async () => {
    const r = await kvlab(['sim', '--trace', 'reordered.jsonl', '--instances', '2', '--out', 'reo', '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: .*reordered\.jsonl: 2 request\(s\) arrived before an earlier line's timestamp; sorted by arrival/);
    expect(JSON.parse(readFileSync(join(tmp, 'reo', 'summary.json'), 'utf8')).reordered_arrivals).toBe(2);
    expect(r.stdout).toMatch(/reordered 2 request/);
  });

  it('kvlab diff: runs sharing no request id are an error; partial overlap a warning with counts', async () => {
    expectOneLineError(await kvlab(['diff', 'runA', 'runB', '--out', 'd.json']), /share no request id/);
    const part = await kvlab(['diff', 'runA', 'runC', '--out', 'd.json']);
    expect(part.code, part.stderr).toBe(0);
    expect(part.stderr).toMatch(/warning: the runs overlap partly: 1 request ids in both, 1 only in .*runA, 2 only in .*runC/);
  });
});

describe('live commands', () => {
  let em: EmulatorHandle;
  let gw: GatewayHandle;
  beforeAll(async () => {
    em = await startEmulator({ profile: testProfile(), model: 'test-llama', coldStart: false });
    gw = await startGateway({ port: 0, backends: backendSpecs([em.url]), strategy: 'kvlab', cluster: testCluster(1) });
  });
  afterAll(async () => {
    await gw?.close();
    await em?.close();
  });

  it('emulate / kdn without a Redis say which URL could not be reached and how to start one', async () => {
    const port = await freePort();
    const e = await kvlab(['emulate', '--port', '0', '--redis', `redis://127.0.0.1:${port}/0`]);
    expectOneLineError(e, new RegExp(`emulator: cannot reach its LMCache Redis at redis://127\\.0\\.0\\.1:${port}/0: .*ECONNREFUSED.*Start one \\(e\\.g\\. \`redis-server --port ${port}`));
    const k = await kvlab(['kdn', '--port', '0', '--model', 'm', '--redis', `redis://127.0.0.1:${port}/0`]);
    expectOneLineError(k, /kdn: cannot reach its Redis store at .*apt-get install redis-server/);
  });

  it('replay of knowledge the target does not know stops at the first unknown id, keeping the records so far', async () => {
    const r = await kvlab(['replay', '--target', gw.url, '--workload', 'synthetic', '--workload-opt', 'requests=40', '--workload-opt', 'rate=20', '--out', 'rep', '--quiet']);
    expectOneLineError(r, /replay stopped after \d+ of 40 requests: .* does not know knowledge id [0-9a-f]{64} \(request r\d+\): register the workload's documents .*--register-kdn/);
    expect(r.ms).toBeLessThan(10_000);
    const recs = readFileSync(join(tmp, 'rep', 'records.jsonl'), 'utf8').split('\n').filter(Boolean);
    expect(recs.length).toBeGreaterThan(0);
    expect(recs.length).toBeLessThan(40);
    // the run directory is now used: a second replay into it is refused
    expectOneLineError(await kvlab(['replay', '--target', gw.url, '--workload', 'synthetic', '--out', 'rep']), /run directory rep already has records/);
  });
});
