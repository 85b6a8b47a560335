/**
 * Calibration of instance timing profiles: the pieces live in sim/profile/ (logs.ts readers,
 * burst.ts replay, nnls.ts, fit.ts, check.ts, rtx5090.ts, derive.ts, build.ts, cli.ts); this module
 * re-exports the fit/check API for existing callers.
 */
export * from './profile/burst.js';
export * from './profile/nnls.js';
export * from './profile/fit.js';
export * from './profile/check.js';
export * from './profile/rtx5090.js';
export { registerProfileCommands } from './profile/cli.js';
