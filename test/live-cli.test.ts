/**
 * `kvlab emulate` and `kvlab kdn` run in-process through commander: option validation, the
 * `ready <url>` line, serving, and graceful shutdown on SIGTERM/SIGINT.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { intArg, numberArg } from '../bin/options.js';
import { parseLinkOverride, registerLiveCommands } from '../live/cli.js';
import { startTestRedis, type RedisServerHandle } from './helpers/redis.js';
import { getText, postJson, sleep, testProfile } from './helpers/live.js';
import { describeRedis, HAVE_REDIS } from './helpers/system.js';

let redis: RedisServerHandle;
let profileFile: string;
beforeAll(async () => {
  if (!HAVE_REDIS) return;
  redis = await startTestRedis();
  profileFile = join(mkdtempSync(join(tmpdir(), 'kvlab-cli-')), 'tiny.json');
  writeFileSync(profileFile, JSON.stringify(testProfile()));
});
afterAll(async () => {
  await redis?.stop();
});

function program(): Command {
  const p = new Command();
  p.exitOverride();
  registerLiveCommands(p);
  return p;
}

/** Runs a server command in-process; resolves its URL from the `ready` line. */
async function run(args: string[]): Promise<{ url: string; done: Promise<unknown> }> {
  const lines: string[] = [];
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: unknown) => {
    lines.push(String(chunk));
    return true;
  });
  const errSpy = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
  const done = program().parseAsync(['node', 'kvlab', ...args]);
  const deadline = Date.now() + 10_000;
  try {
    for (;;) {
      const ready = lines.find((l) => l.startsWith('ready '));
      if (ready) return { url: ready.slice(6).trim(), done: done.finally(() => errSpy.mockRestore()) };
      if (Date.now() > deadline) throw new Error(`no ready line; stdout: ${lines.join('')}`);
      await Promise.race([sleep(20), done]);
    }
  } finally {
    spy.mockRestore();
  }
}

describe('option parsing', () => {
  it('number options name the flag', () => {
    expect(intArg('--port', { min: 0, max: 65535 })('8000')).toBe(8000);
    expect(() => intArg('--port', { min: 0, max: 65535 })('80.5')).toThrow('--port must be an integer >= 0 and <= 65535 (got "80.5")');
    expect(() => numberArg('--time-scale', { min: 1e-6 })('')).toThrow(/--time-scale/);
    expect(() => numberArg('--time-scale', { min: 1e-6 })('-1')).toThrow(/--time-scale must be a number >= 0.000001/);
  });
  it('--link HOST:PORT[/DB]=GBPS,LATENCY,EFF', () => {
    expect(parseLinkOverride('127.0.0.1:6380/1=10,2.5,0.825')).toEqual(['127.0.0.1:6380/1', { bandwidthGbps: 10, latencyMs: 2.5, efficiency: 0.825 }]);
    expect(() => parseLinkOverride('127.0.0.1=1,2,3')).toThrow(/--link must look like/);
    expect(() => parseLinkOverride('h:1=1,2,1.5')).toThrow(/efficiency/);
  });
  it('commander rejects bad values before starting anything', async () => {
    const errSpy = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await expect(program().parseAsync(['node', 'kvlab', 'emulate', '--port', 'x'])).rejects.toThrow(/--port must be an integer/);
      await expect(program().parseAsync(['node', 'kvlab', 'emulate', '--hash-variant', 'md5'])).rejects.toThrow(/--hash-variant must be one of cacheroute, upstream/);
      await expect(program().parseAsync(['node', 'kvlab', 'kdn', '--redis', 'redis://127.0.0.1:6379/0'])).rejects.toThrow(/--model/);
    } finally {
      errSpy.mockRestore();
    }
  });
});

describeRedis('servers', () => {
  it('kvlab emulate serves, then closes on SIGTERM', async () => {
    const { url, done } = await run(['emulate', '--port', '0', '--profile', profileFile, '--model', 'tiny', '--redis', redis.url, '--time-scale', '5']);
    const r = await postJson(`${url}/v1/completions`, { model: 'tiny', prompt: 'hello', max_tokens: 2 });
    expect(r.status).toBe(200);
    expect(r.json.usage.completion_tokens).toBe(2);
    const st = JSON.parse((await getText(`${url}/emulator/status`)).text);
    expect(st).toMatchObject({ model: 'tiny', profile: 'test-tiny', time_scale: 5 });
    expect(st.lmcache.redis).toBe(redis.url);
    process.emit('SIGTERM');
    await done;
    await expect(getText(`${url}/health`)).rejects.toThrow();
  });

  it('kvlab kdn serves, then closes on SIGINT', async () => {
    const { url, done } = await run(['kdn', '--port', '0', '--redis', redis.url, '--model', '/m', '--link', '127.0.0.1:6390=5,1,0.9']);
    const r = await postJson(`${url}/knowledge/register_text`, { content: 'CLI knowledge.' });
    expect(r.json.status).toMatch(/created|exists/);
    process.emit('SIGINT');
    await done;
    await expect(getText(`${url}/health`)).rejects.toThrow();
  });
});
