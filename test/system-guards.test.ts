/**
 * `npm test` must pass on a machine without redis-server or chromium (their tests are skipped with
 * one line saying how to install them; test/run-tests.mjs): every test file that starts a Redis or
 * a browser has to guard those tests with test/helpers/system.ts (describeRedis / HAVE_REDIS,
 * describeChromium / HAVE_CHROMIUM). This checks the test sources for it.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const dir = 'test';
const files = readdirSync(dir).filter((f) => f.endsWith('.test.ts'));

describe('tests that need a system package are guarded', () => {
  it('every test file starting redis-server or chromium skips without it', () => {
    const offenders: string[] = [];
    for (const f of files) {
      const src = readFileSync(join(dir, f), 'utf8');
      if (/startTestRedis|startStack\(|launchRedis\(|runDemo\(/.test(src) && !/describeRedis|HAVE_REDIS/.test(src)) offenders.push(`${f}: starts redis-server without describeRedis / HAVE_REDIS`);
      if (/HeadlessPage\.launch/.test(src) && !/describeChromium|HAVE_CHROMIUM/.test(src)) offenders.push(`${f}: starts chromium without describeChromium / HAVE_CHROMIUM`);
    }
    expect(files.length).toBeGreaterThan(20);
    expect(offenders).toEqual([]);
  });
});
