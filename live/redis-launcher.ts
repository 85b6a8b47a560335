/**
 * Starts and stops a private `redis-server` on a free loopback port. Used by `kvlab live demo`
 * (one Redis per emulated instance plus one for the KDN) and by the integration tests
 * (test/helpers/redis.ts).
 *
 * The server runs in the foreground as a child process with persistence off
 * (`--save '' --appendonly no`, as CacheRoute runs its LMCache Redis), `allkeys-lru` eviction,
 * bound to 127.0.0.1 only, with its working directory in a fresh temp dir that `stop()` removes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join, delimiter } from 'node:path';
import { existsSync } from 'node:fs';

/** A running redis-server started by {@link launchRedis}. */
export interface RedisServerHandle {
  /** always 127.0.0.1. */
  host: string;
  port: number;
  /** `redis://127.0.0.1:<port>` (db 0). */
  url: string;
  /** temp working directory of the server (removed by `stop`). */
  dir: string;
  /** OS process id of redis-server. */
  pid: number;
  /** Stops the server (SIGTERM, then SIGKILL after 5 s) and removes its temp dir. Idempotent. */
  stop(): Promise<void>;
}

/** Options of {@link launchRedis}. */
export interface LaunchRedisOptions {
  /** TCP port; default: a free loopback port picked by the OS (retried if taken meanwhile). */
  port?: number;
  /** path or name of the redis-server binary; default `redis-server` looked up on PATH. */
  bin?: string;
  /** `maxmemory` value (e.g. `"256mb"`); default unlimited. */
  maxmemory?: string;
  /** ms to wait for the first PONG before giving up; default 10,000. */
  startTimeoutMs?: number;
  /** extra command-line arguments passed to redis-server verbatim. */
  extraArgs?: string[];
}

/**
 * Resolves the redis-server binary. Throws an Error naming the Debian package `redis-server`
 * when it is not installed.
 */
export function findRedisServer(bin = 'redis-server'): string {
  if (bin.includes('/')) {
    if (existsSync(bin)) return bin;
  } else {
    for (const dir of (process.env.PATH ?? '').split(delimiter)) {
      if (dir && existsSync(join(dir, bin))) return join(dir, bin);
    }
    // common sbin locations that may be missing from a non-root PATH
    for (const dir of ['/usr/bin', '/usr/sbin', '/usr/local/bin']) {
      if (existsSync(join(dir, bin))) return join(dir, bin);
    }
  }
  throw new Error(
    `redis-server not found (looked for "${bin}" on PATH). Install the Debian package redis-server: ` +
      `apt-get update && apt-get install -y redis-server`,
  );
}

/** Returns a TCP port that was free on 127.0.0.1 a moment ago (the OS picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not obtain a free port'))));
    });
  });
}

/** Sends one inline PING to host:port; resolves true on `+PONG` within `timeoutMs`. */
export function pingRedis(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host, port });
    let buf = '';
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once('error', () => done(false));
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'));
    });
    sock.once('connect', () => sock.write('PING\r\n'));
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `process_id` from `INFO server` of the Redis at host:port, or undefined on failure. */
export function redisPid(host: string, port: number, timeoutMs = 1000): Promise<number | undefined> {
  return new Promise((resolve) => {
    const sock = createConnection({ host, port });
    let buf = '';
    const done = (v: number | undefined): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    sock.once('error', () => done(undefined));
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      const m = /process_id:(\d+)/.exec(buf);
      if (m) done(Number(m[1]));
      else if (buf.startsWith('-')) done(undefined);
    });
    sock.once('connect', () => sock.write('INFO server\r\n'));
  });
}

/**
 * Starts redis-server on 127.0.0.1 and waits until it answers PING.
 * Errors: redis-server missing (names the Debian package), the process exiting early (its log
 * tail is included), or no PONG within `startTimeoutMs`.
 */
export async function launchRedis(opts: LaunchRedisOptions = {}): Promise<RedisServerHandle> {
  const bin = findRedisServer(opts.bin);
  const attempts = opts.port ? 1 : 5;
  let lastErr: Error | undefined;
  for (let i = 0; i < attempts; i++) {
    const port = opts.port ?? (await freePort());
    try {
      return await startOnce(bin, port, opts);
    } catch (e) {
      lastErr = e as Error;
      if (!/Address already in use|bind/i.test(lastErr.message)) break;
    }
  }
  throw lastErr ?? new Error('redis-server did not start');
}

async function startOnce(bin: string, port: number, opts: LaunchRedisOptions): Promise<RedisServerHandle> {
  const dir = mkdtempSync(join(tmpdir(), 'kvlab-redis-'));
  const args = [
    '--port', String(port),
    '--bind', '127.0.0.1',
    '--save', '',
    '--appendonly', 'no',
    '--dir', dir,
    '--daemonize', 'no',
    '--maxmemory-policy', 'allkeys-lru',
    ...(opts.maxmemory ? ['--maxmemory', opts.maxmemory] : []),
    ...(opts.extraArgs ?? []),
  ];
  const child: ChildProcess = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const onData = (d: Buffer): void => {
    log = (log + d.toString()).slice(-4000);
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  let exited: number | null | undefined;
  const exitP = new Promise<void>((resolve) => {
    child.once('exit', (code) => {
      exited = code;
      resolve();
    });
  });
  child.once('error', (e) => {
    log += `\nspawn error: ${e.message}`;
    exited = -1;
  });

  const cleanupDir = (): void => rmSync(dir, { recursive: true, force: true });
  const deadline = Date.now() + (opts.startTimeoutMs ?? 10_000);
  for (;;) {
    if (exited !== undefined) {
      cleanupDir();
      throw new Error(`redis-server exited early (code ${exited}) on port ${port}:\n${log.trim()}`);
    }
    if (await pingRedis('127.0.0.1', port, 300)) {
      // make sure the PONG came from our child, not from a server already on that port
      const pid = await redisPid('127.0.0.1', port);
      if (pid === child.pid) break;
      if (pid !== undefined) {
        child.kill('SIGKILL');
        cleanupDir();
        throw new Error(`redis-server: port ${port} is already used by another redis-server (pid ${pid}): Address already in use`);
      }
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      cleanupDir();
      throw new Error(`redis-server on port ${port} did not answer PING within ${opts.startTimeoutMs ?? 10_000} ms:\n${log.trim()}`);
    }
    await sleep(25);
  }

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (exited === undefined) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exitP;
        clearTimeout(t);
      }
      cleanupDir();
    })();
    return stopping;
  };
  return { host: '127.0.0.1', port, url: `redis://127.0.0.1:${port}`, dir, pid: child.pid ?? -1, stop };
}
