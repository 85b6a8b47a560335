/**
 * Connecting to a Redis a server depends on (the KDN's store, the emulator's LMCache Redis), with
 * an error that says which URL could not be reached, why (the socket error, not ioredis'
 * "Connection is closed."), and how to start one.
 */
import { Redis, type RedisOptions } from 'ioredis';

/**
 * Connects a new ioredis client to `url` (no retries during the first connect, so an absent
 * server fails at once; later reconnects use `opts`).
 * @param who the server, for the message (e.g. "kdn", "emulator")
 * @param what which Redis (e.g. "its Redis store", "its LMCache Redis")
 * @throws Error "<who>: cannot reach <what> at <url>: <cause>. Start one ... or pass --redis URL"
 */
export async function connectRedis(url: string, who: string, what: string, opts: RedisOptions = {}): Promise<Redis> {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`${who}: --redis must be a URL like redis://127.0.0.1:6379/0 (got "${url}")`);
  }
  if (parsed.protocol !== 'redis:') throw new Error(`${who}: --redis must be a redis:// URL (got "${url}")`);
  const redis = new Redis(url, { ...opts, lazyConnect: true, retryStrategy: () => null });
  let last: Error | undefined;
  redis.on('error', (e: Error) => {
    last = e;
  });
  try {
    await redis.connect();
  } catch (e) {
    redis.disconnect();
    const cause = (last ?? (e as Error)).message;
    const port = parsed.port || '6379';
    throw new Error(`${who}: cannot reach ${what} at ${url}: ${cause}. Start one (e.g. \`redis-server --port ${port} --save ''\`; Debian: apt-get install redis-server) or pass --redis URL`);
  }
  // from now on: reconnect as asked (default: ioredis' backoff), errors surface on the commands
  redis.options.retryStrategy = opts.retryStrategy ?? ((times: number) => Math.min(times * 50, 2000));
  return redis;
}
