/**
 * System packages some tests need (Debian's `redis-server` for the live tests, `chromium` for the
 * report browser test). Without them those tests are skipped — `npm test` (test/run-tests.mjs)
 * prints one line per missing package saying how to install it, and `.ci/run` (which installs
 * them) fails if anything was skipped for that reason.
 *
 *   describeRedis('gateway ...', () => { ... });   // skipped when redis-server is missing
 */
import { describe } from 'vitest';
import { findRedisServer } from '../../live/redis-launcher.js';
import { findChromium } from '../fixtures/notebooks/chromium.js';

function has(find: () => unknown): boolean {
  try {
    return !!find();
  } catch {
    return false;
  }
}

/** `KVLAB_ASSUME_MISSING=redis-server,chromium` checks the skip path on a machine that has them. */
const assumeMissing = new Set((process.env['KVLAB_ASSUME_MISSING'] ?? '').split(',').map((x) => x.trim()));

/** redis-server is installed. */
export const HAVE_REDIS = !assumeMissing.has('redis-server') && has(() => findRedisServer());
/** chromium is installed. */
export const HAVE_CHROMIUM = !assumeMissing.has('chromium') && has(() => findChromium());

/** A describe block that needs redis-server (skipped without it). */
export const describeRedis = describe.skipIf(!HAVE_REDIS);
/** A describe block that needs chromium (skipped without it). */
export const describeChromium = describe.skipIf(!HAVE_CHROMIUM);
