/**
 * Profile loading: engine/profiles/<name>.json (or a path), schema-validated with zod.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import type { EngineSettings, InstanceSpec, Profile } from '../engine/types.js';

/** Default instance profile for synthetic/NQ workloads (measured). */
export const DEFAULT_PROFILE = 'rtx5090x8-llama3-70b';
/** Default profile for Mooncake replays (derived, 128k context). */
export const DEFAULT_LONG_CONTEXT_PROFILE = 'h100x8-llama3-70b';

/** The repository root (the directory holding package.json), from source or from dist/. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'engine'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('kvlab: cannot locate the repository root (package.json + engine/)');
}

type Schemas = typeof import('./schemas.js');
let schemas: Schemas | null = null;
/** The zod schemas module (sim/schemas.ts), loaded on first use from the compiled build. */
export function loadSchemas(): Schemas {
  schemas ??= createRequire(import.meta.url)('./schemas.js') as Schemas;
  return schemas;
}

/** Provides the schemas module up front (test runners that execute TypeScript sources). */
export function registerSchemas(mod: Schemas): void {
  schemas = mod;
}

/** Validates a parsed profile object; throws an Error naming `where` and the bad fields. */
export function parseProfile(obj: unknown, where: string): Profile {
  const s = loadSchemas();
  const r = s.profileSchema.safeParse(obj);
  if (!r.success) throw new Error(s.formatZodError(where, r.error));
  return r.data as Profile;
}

const cache = new Map<string, Profile>();

/** true when a profile reference is a file path (contains a '/' or ends in .json), not a built-in name. */
export function isProfilePath(nameOrPath: string): boolean {
  return nameOrPath.includes('/') || nameOrPath.endsWith('.json');
}

/**
 * Loads a profile by name (engine/profiles/<name>.json) or by file path (anything containing
 * a '/' or ending in .json). Cached per resolved path. Files given by path are schema-checked;
 * the built-in profiles are checked by the test suite (test/calibrate.test.ts, test/sim.test.ts)
 * and trusted here, which keeps zod out of the start-up of every run.
 * @throws Error when the file is missing, not JSON, or fails the schema (names the field).
 */
export function loadProfile(nameOrPath: string): Profile {
  const isPath = isProfilePath(nameOrPath);
  const file = isPath ? resolve(nameOrPath) : join(repoRoot(), 'engine', 'profiles', `${nameOrPath}.json`);
  const hit = cache.get(file);
  if (hit) return hit;
  if (!existsSync(file)) {
    throw new Error(`profile not found: ${isPath ? file : `${nameOrPath} (looked for ${file})`}`);
  }
  let obj: unknown;
  try {
    obj = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: invalid JSON: ${(e as Error).message}`);
  }
  const p = isPath ? parseProfile(obj, file) : (obj as Profile);
  cache.set(file, p);
  return p;
}

/**
 * Builds an InstanceSpec from a profile, with optional engine-setting overrides
 * (e.g. kvCapacityTokens: Infinity for an unlimited KV cache).
 */
export function instanceSpecFromProfile(profile: Profile, index: number, overrides: Partial<EngineSettings> = {}, id?: string): InstanceSpec {
  return { index, id: id ?? `i${index}`, profile, engine: { ...profile.engine, ...overrides } };
}
