import type { Command } from 'commander';

/** Registers this area's kvlab sub-commands on the root program. */
export function registerSimCommands(_program: Command): void {}
