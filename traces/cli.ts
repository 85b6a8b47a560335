import type { Command } from 'commander';

/** Registers this area's kvlab sub-commands on the root program. */
export function registerTraceCommands(_program: Command): void {}
