/** The redis-server launcher used by tests and `kvlab live demo`. */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { findRedisServer, launchRedis, pingRedis } from '../live/redis-launcher.js';
import { HAVE_REDIS } from './helpers/system.js';

describe('launchRedis', () => {
  it.skipIf(!HAVE_REDIS)('starts on a free loopback port without persistence and stops cleanly', async () => {
    const [a, b] = await Promise.all([launchRedis(), launchRedis()]);
    try {
      expect(a.port).not.toBe(b.port);
      expect(a.url).toBe(`redis://127.0.0.1:${a.port}`);
      const c = new Redis(a.url);
      expect(await c.ping()).toBe('PONG');
      expect(await c.config('GET', 'save')).toEqual(['save', '']);
      expect(await c.config('GET', 'appendonly')).toEqual(['appendonly', 'no']);
      expect(await c.config('GET', 'maxmemory-policy')).toEqual(['maxmemory-policy', 'allkeys-lru']);
      await c.set(Buffer.from([0, 255]), Buffer.from([1, 2, 3]));
      expect(await c.getBuffer(Buffer.from([0, 255]))).toEqual(Buffer.from([1, 2, 3]));
      await c.quit();
    } finally {
      await a.stop();
      await b.stop();
    }
    expect(await pingRedis('127.0.0.1', a.port, 200)).toBe(false);
    expect(existsSync(a.dir)).toBe(false);
    await a.stop(); // idempotent
  });

  it('names the Debian package when redis-server is missing', () => {
    expect(() => findRedisServer('redis-server-does-not-exist')).toThrow(/Debian package redis-server/);
    expect(() => findRedisServer('/nonexistent/redis-server')).toThrow(/apt-get install -y redis-server/);
  });

  it.skipIf(!HAVE_REDIS)('reports a port that is taken', async () => {
    const a = await launchRedis();
    try {
      await expect(launchRedis({ port: a.port, startTimeoutMs: 3000 })).rejects.toThrow(/redis-server/);
    } finally {
      await a.stop();
    }
  });
});
