#!/usr/bin/env node
// The README's test command (`npm test`): runs the vitest suites and prints one plain closing line
// "tests: N passed, N failed, N skipped" (read by CI), exiting with vitest's own exit code.
//
// Some tests need Debian packages: redis-server (live tests) and chromium (the report's browser
// test). When one is missing, its tests are skipped and this prints one line saying how to
// install it. With KVLAB_REQUIRE_SYSTEM_PACKAGES=1 (.ci/run sets it after installing them) a
// missing package is an error instead: in CI nothing may be skipped for that reason.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { delimiter, join } from 'node:path';

// KVLAB_ASSUME_MISSING=redis-server,chromium checks the skip path on a machine that has them
const assumeMissing = new Set((process.env.KVLAB_ASSUME_MISSING ?? '').split(',').map((x) => x.trim()).filter(Boolean));
const onPath = (bin) => [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/sbin', '/usr/local/bin'].some((d) => d && existsSync(join(d, bin)));
const missing = [];
if (assumeMissing.has('redis-server') || !onPath('redis-server')) missing.push({ pkg: 'redis-server', what: 'the live-mode tests (gateway, KDN, emulator LMCache, replay, live demo)' });
if (assumeMissing.has('chromium') || ![process.env.CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'].some((p) => p && existsSync(p))) missing.push({ pkg: 'chromium', what: 'the report browser test' });
for (const m of missing) console.log(`tests: ${m.pkg} is not installed: ${m.what} will be skipped; install it with: sudo apt-get install -y ${m.pkg}`);
const strict = process.env.KVLAB_REQUIRE_SYSTEM_PACKAGES === '1';
if (strict && missing.length) {
  console.log(`tests: KVLAB_REQUIRE_SYSTEM_PACKAGES=1 but ${missing.map((m) => m.pkg).join(' and ')} ${missing.length > 1 ? 'are' : 'is'} missing`);
  console.log('tests: 0 passed, 1 failed');
  process.exit(1);
}

const out = '.vitest-results.json';
rmSync(out, { force: true });
const args = ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile=${out}`, ...process.argv.slice(2)];
const r = spawnSync('npx', args, { stdio: 'inherit' });
let code = r.status ?? 1;
try {
  const j = JSON.parse(readFileSync(out, 'utf8'));
  const skipped = (j.numPendingTests ?? 0) + (j.numTodoTests ?? 0);
  console.log(`tests: ${j.numPassedTests} passed, ${j.numFailedTests} failed, ${skipped} skipped`);
  if (j.numTotalTests === 0) code = code || 1;
} catch {
  console.log('tests: 0 passed, 1 failed');
  code = code || 1;
}
process.exit(code);
