/**
 * Test harness: a real redis-server on a free loopback port, started per test file.
 *
 *   const redis = await startTestRedis();   // throws naming the Debian package if missing
 *   ... redis.url ...
 *   await redis.stop();
 *
 * Thin wrapper over live/redis-launcher.ts so the tests and `kvlab live demo` start Redis the
 * same way (`--save '' --appendonly no`, temp dir, 127.0.0.1 only).
 */
import { launchRedis, type RedisServerHandle } from '../../live/redis-launcher.js';

export type { RedisServerHandle } from '../../live/redis-launcher.js';

/**
 * Starts a throw-away redis-server; resolves once it answers PING.
 * @param opts.noEviction use `maxmemory-policy noeviction` (a job queue must never lose keys;
 *   BullMQ warns otherwise) instead of the cache-like allkeys-lru.
 */
export async function startTestRedis(opts: { noEviction?: boolean } = {}): Promise<RedisServerHandle> {
  return launchRedis({ maxmemory: '512mb', extraArgs: opts.noEviction ? ['--maxmemory-policy', 'noeviction'] : [] });
}
