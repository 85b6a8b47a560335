#!/usr/bin/env node
/**
 * kvlab command-line entry point. Each area registers its own sub-commands:
 * traces/cli.ts (trace), sim/cli.ts (sim, ab, profile), live/cli.ts (kdn, emulate, gateway, replay,
 * diff, live demo), notebooks/cli.ts (report, sweep).
 */
import { Command } from 'commander';
import { registerTraceCommands } from '../traces/cli.js';
import { registerSimCommands } from '../sim/cli.js';
import { registerLiveCommands } from '../live/cli.js';
import { registerReportCommands } from '../notebooks/cli.js';
import { KVLAB_VERSION } from '../engine/version.js';

const program = new Command();
program
  .name('kvlab')
  .description('Knowledge injection and KV-cache-aware routing lab: simulate, A/B test, run live.')
  .version(KVLAB_VERSION)
  .showHelpAfterError();

registerTraceCommands(program);
registerSimCommands(program);
registerLiveCommands(program);
registerReportCommands(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  const msg = err instanceof Error ? err.message : String(err);
  process.stderr.write(`kvlab: ${msg}\n`);
  process.exit(1);
});
