#!/usr/bin/env node
/**
 * kvlab command-line entry point. Each area registers its own sub-commands:
 * traces/cli.ts (trace), sim/cli.ts (sim, ab, strategies), sim/profile/cli.ts (profile), sim/import.ts (import),
 * live/cli.ts and live/cli-run.ts (kdn, emulate, gateway, replay, diff, live demo), notebooks/cli.ts (report, sweep, worker).
 *
 * Start-up cost matters (a Mooncake replay takes about a second): only the area that owns the
 * requested sub-command is imported; `kvlab --help` (or an unknown command) imports them all.
 */
import { Command } from 'commander';
import { KVLAB_VERSION } from '../engine/version.js';

type Area = 'traces' | 'sim' | 'profile' | 'import' | 'live' | 'notebooks';

/** Which area owns each sub-command. */
const OWNER: Record<string, Area> = {
  trace: 'traces',
  sim: 'sim',
  ab: 'sim',
  strategies: 'sim',
  profile: 'profile',
  import: 'import',
  emulate: 'live',
  kdn: 'live',
  gateway: 'live',
  replay: 'live',
  diff: 'live',
  live: 'live',
  report: 'notebooks',
  sweep: 'notebooks',
  worker: 'notebooks',
};

async function register(program: Command, area: Area): Promise<void> {
  switch (area) {
    case 'traces':
      (await import('../traces/cli.js')).registerTraceCommands(program);
      break;
    case 'sim':
      (await import('../sim/cli.js')).registerSimCommands(program);
      break;
    case 'profile':
      (await import('../sim/profile/cli.js')).registerProfileCommands(program);
      break;
    case 'import':
      (await import('../sim/import.js')).registerImportCommand(program);
      break;
    case 'live': {
      (await import('../live/cli.js')).registerLiveCommands(program);
      const runPath = '../live/cli-run.js'; // optional module (gateway, replay, diff, demo)
      const run = (await import(runPath).catch(() => null)) as { registerLiveRunCommands?: (p: Command) => void } | null;
      run?.registerLiveRunCommands?.(program);
      break;
    }
    case 'notebooks':
      (await import('../notebooks/cli.js')).registerReportCommands(program);
      break;
  }
}

/** One line per error on stderr: `kvlab: <message>`, never a stack trace. */
function fail(err: unknown): never {
  const msg = (err instanceof Error ? err.message : String(err)).replace(/\s*\n\s*/g, '; ').trim();
  process.stderr.write(`kvlab: ${msg}\n`);
  process.exit(1);
}

async function main(): Promise<void> {
  const program = new Command();
  program
    .name('kvlab')
    .description('Knowledge injection and KV-cache-aware routing lab: simulate, A/B test, run live.')
    .version(KVLAB_VERSION)
    // commander's own errors (bad flag values, unknown options) as one line, with the hint on it
    .configureOutput({ outputError: (str, write) => write(`kvlab: ${str.replace(/^error:\s*/, '').replace(/\s*\n\s*/g, '; ').trim()} (run with --help for usage)\n`) });
  const sub = process.argv.slice(2).find((a) => !a.startsWith('-'));
  const area = sub === undefined || sub === 'help' ? undefined : OWNER[sub];
  if (area) await register(program, area);
  else for (const a of ['traces', 'sim', 'profile', 'import', 'live', 'notebooks'] as const) await register(program, a);
  await program.parseAsync(process.argv);
}

// anything that escapes a command (also from timers and streams of running servers) ends the
// process with one line, not a stack dump
process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);
main().catch(fail);
