/**
 * zod schemas of kvlab's input files (profiles, cluster files). Loaded on demand by
 * sim/profiles.ts and sim/cluster.ts (zod's import costs more than a short simulation), so only
 * runs that read a user-provided file pay for it. Errors name the file and the field path.
 */
import { z } from 'zod';
import { ROLES_PATTERN } from '../engine/pd.js';

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
  asyncScheduling: z.boolean().optional(),
});

const provenanceSchema = z.object({ kind: z.enum(['measured', 'scaled', 'derived', 'assumed']), source: z.string() });

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
  provenance: z.record(z.string(), provenanceSchema).optional(),
});

/** Formats a zod error as "where: field.path: message; ...". */
export function formatZodError(where: string, err: z.ZodError): string {
  const parts = err.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
  return `${where}: ${parts.join('; ')}`;
}

const capacity = z.union([pos, z.literal('inf'), z.literal('Infinity')]);

const engineOverrides = z
  .object({
    maxNumBatchedTokens: pos.int(),
    maxNumSeqs: pos.int(),
    maxModelLen: pos.int(),
    kvCapacityTokens: capacity,
    blockSizeTokens: pos.int(),
    longPrefillTokenThreshold: nonneg.int(),
    asyncScheduling: z.boolean(),
  })
  .partial()
  .strict();

/** CacheBlend settings of an instance: true = LMCache's example settings, false = off. */
const blendSchema = z.union([z.boolean(), z.object({ recomputeRatio: num.min(0).max(1), checkLayer: nonneg.int() }).partial().strict()]);

/** What an instance supports beyond prefix reuse (off unless declared). */
const capabilitiesSchema = z.object({ blend: blendSchema, overlap: z.boolean() }).partial().strict();

const linkSchema = z.object({ bandwidthGbps: pos, latencyMs: nonneg, efficiency: z.number().gt(0).lte(1) }).strict();


/** Schema of a cluster file. */
export const clusterFileSchema = z
  .object({
    profile: z.string().min(1).optional(),
    instances: z
      .union([
        pos.int(),
        z.array(engineOverrides.extend({ id: z.string().min(1).optional(), profile: z.string().min(1).optional(), capabilities: capabilitiesSchema.optional(), role: z.enum(['prefill', 'decode', 'mixed']).optional(), cpuTierGB: nonneg.optional() }).strict()).min(1),
      ])
      .optional(),
    engine: engineOverrides.optional(),
    capabilities: capabilitiesSchema.optional(),
    kdns: z
      .array(
        z
          .object({
            id: z.string().min(1),
            compression: pos.optional(),
            knowledge: z.union([z.literal('all'), z.array(z.string())]).optional(),
            textFetchMs: nonneg.optional(),
            sequences: z.boolean().optional(),
          })
          .strict(),
      )
      .optional(),
    links: z
      .object({
        default: linkSchema.partial().optional(),
        overrides: z.array(linkSchema.partial().extend({ kdn: z.string(), instance: z.string() }).strict()).optional(),
      })
      .strict()
      .optional(),
    /** instance -> instance KV link (peer transfers, e.g. Mooncake's cache load balancing). */
    peerLink: linkSchema.partial().optional(),
    /** P/D roles of a counted cluster: "6P10D" = 6 prefill then 10 decode instances (+ "2M" mixed). */
    roles: z.string().regex(ROLES_PATTERN, { message: 'must look like 6P10D (prefill count P decode count D, optionally then a mixed count M)' }).optional(),
    /** KV tiers below the GPU of every instance (instances may override `cpuTierGB`). */
    tiers: z
      .object({
        cpu: z
          .object({ capacityGB: nonneg.optional(), hostLinkGBps: pos.optional(), fixedMs: nonneg.optional(), policy: z.enum(['demote', 'write-through']).optional() })
          .strict()
          .optional(),
        remote: z.object({ capacityGB: z.union([pos, z.literal('inf'), z.literal('Infinity')]).optional() }).strict().optional(),
      })
      .strict()
      .optional(),
    /** P -> D hand-off of disaggregated requests (engine/pd.ts). */
    pd: z
      .object({ link: linkSchema.partial().optional(), layerwise: z.boolean().optional(), firstToken: z.enum(['prefill', 'decode']).optional() })
      .strict()
      .optional(),
    kvEventDelayMs: nonneg.optional(),
    chunkTokens: pos.int().optional(),
    strategyParams: z.record(z.string(), z.record(z.string(), z.unknown())).optional(),
    sim: z.object({ stepNoiseCv: nonneg.max(0.5).optional(), maxConcurrency: pos.int().optional() }).strict().optional(),
  })
  .strict();

export type ClusterFile = z.infer<typeof clusterFileSchema>;
