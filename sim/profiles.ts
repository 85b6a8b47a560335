/**
 * Profile loading: engine/profiles/<name>.json (or a path), schema-validated with zod.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
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

const num = z.number().finite();
const pos = num.positive();
const nonneg = num.nonnegative();

const engineSchema = z.object({
  maxNumBatchedTokens: pos.int(),
  maxNumSeqs: pos.int(),
  maxModelLen: pos.int(),
  kvCapacityTokens: pos,
  blockSizeTokens: pos.int(),
  longPrefillTokenThreshold: nonneg.int(),
});

/** zod schema of a Profile file; errors name the offending field path. */
export const profileSchema = z.object({
  name: z.string().min(1),
  derived: z.boolean(),
  description: z.string(),
  source: z.string(),
  model: z.object({
    name: z.string(),
    layers: pos.int(),
    kvHeads: pos.int(),
    headDim: pos.int(),
    dtypeBytes: pos,
    kvBytesPerToken: pos,
    paramsB: pos,
  }),
  hardware: z.object({ gpu: z.string(), gpus: pos.int(), peakTflops: pos, memBandwidthGBs: pos, memGiB: pos }),
  engine: engineSchema,
  step: z
    .object({
      fixedMs: nonneg,
      prefillSeqMs: nonneg,
      decodeSeqMs: nonneg,
      knots: z.array(nonneg).min(2),
      values: z.array(nonneg).min(2),
      attnTokens: pos,
      kvReadMsPerToken: nonneg,
      apiMs: nonneg,
      frontendMsPerRequest: nonneg,
    })
    .refine((s) => s.knots.length === s.values.length, { message: 'knots and values must have the same length' })
    .refine((s) => s.knots.every((k, i) => i === 0 || k > s.knots[i - 1]!), { message: 'knots must be increasing' }),
  kvLoad: z.object({ fixedMs: nonneg, msPerGB: nonneg, bytesPerToken: pos }),
  coldStartMs: nonneg,
  fit: z.record(z.string(), z.unknown()).optional(),
});

/** Formats a zod error as "where: field.path: message; ...". */
export function formatZodError(where: string, err: z.ZodError): string {
  const parts = err.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
  return `${where}: ${parts.join('; ')}`;
}

/** Validates a parsed profile object; throws an Error naming `where` and the bad fields. */
export function parseProfile(obj: unknown, where: string): Profile {
  const r = profileSchema.safeParse(obj);
  if (!r.success) throw new Error(formatZodError(where, r.error));
  return r.data as Profile;
}

const cache = new Map<string, Profile>();

/**
 * Loads a profile by name (engine/profiles/<name>.json) or by file path (anything containing
 * a '/' or ending in .json). Cached per resolved path.
 * @throws Error when the file is missing, not JSON, or fails the schema (names the field).
 */
export function loadProfile(nameOrPath: string): Profile {
  const isPath = nameOrPath.includes('/') || nameOrPath.endsWith('.json');
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
  const p = parseProfile(obj, file);
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
