/**
 * Cluster files (YAML or JSON, schema-validated; errors name the file and field) and the
 * resolution of CLI flags + file into a ClusterSpec.
 *
 * ```yaml
 * profile: rtx5090x8-llama3-70b        # default instance profile (name or path)
 * instances: 4                         # a count, or a list of {id, profile, <engine overrides>}
 * engine: { kvCapacityTokens: 200000 }  # engine overrides for every instance
 * capabilities: { blend: true, overlap: true }  # beyond prefix reuse, off unless declared
 *                                      # (blend: true | {recomputeRatio, checkLayer}; per instance too)
 * kdns:                                # knowledge delivery nodes
 *   - { id: kdn0, compression: 3.41, knowledge: all, textFetchMs: 4, sequences: false }
 * links:
 *   default: { bandwidthGbps: 10, latencyMs: 0.5, efficiency: 0.825 }
 *   overrides: [ { kdn: kdn0, instance: i0, bandwidthGbps: 1 } ]
 * peerLink: { bandwidthGbps: 200, latencyMs: 0.01 }   # instance -> instance KV (peer transfers)
 * roles: 6P10D                       # P/D roles of a counted cluster (or `role:` per listed instance)
 * pd: { link: { bandwidthGbps: 800 }, layerwise: true, firstToken: prefill }   # P -> D hand-off (engine/pd.ts)
 * tiers:                             # KV tiers below the GPU (instances may set cpuTierGB)
 *   cpu: { capacityGB: 80, hostLinkGBps: 128, fixedMs: 0, policy: demote }   # LMCache local_cpu, max_local_cpu_size GiB per GPU
 *   remote: { capacityGB: inf }      # LMCache's Redis backend: CPU evictions demote to it
 * kvEventDelayMs: 500                # default DEFAULT_KV_EVENT_DELAY_MS
 * chunkTokens: 256
 * strategyParams: { kvlab: { workWeight: 0 } }
 * sim: { stepNoiseCv: 0.02, maxConcurrency: 64 }   # maxConcurrency: client cap on requests in flight
 * ```
 * A profile given by path (in `profile:` or an instance's `profile:`) is resolved relative to the
 * cluster file's directory.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { checkStrategyParams } from '../engine/strategies/index.js';
import { PEER_LINK_DEFAULT } from '../engine/engine.js';
import { hasRoles, parseRoles, PD_DEFAULTS } from '../engine/pd.js';
import { BLEND_DEFAULTS, type BlendSpec, type ClusterSpec, type EngineSettings, type InstanceRole, type KdnSpec, type LinkSpec } from '../engine/types.js';
import { instanceSpecFromProfile, isProfilePath, loadProfile, loadSchemas } from './profiles.js';

import type { ClusterFile } from './schemas.js';
export type { ClusterFile };

/** Defaults of a KDN and a link when the cluster file does not say. */
export const KDN_DEFAULTS = {
  /** 327,680 B/token / 3.41 ≈ 0.096 MB/token: CacheRoute's KV network size (§5.4), CacheGen-like. */
  compression: 3.41,
  textFetchMs: 4,
};
/**
 * Default delay (ms) between a KV event on an instance (vLLM publishes BlockStored/BlockRemoved
 * at the end of the engine step) and the engine applying it. Real routers see tens of ms to
 * seconds: Dynamo routers receive the same event 2 ms or 200 ms after publication depending on
 * the event plane (ai-dynamo/dynamo#12777); llm-d keeps speculative entries for 2 s to cover
 * "the ~2s ZMQ propagation blind spot" (`defaultSpeculativeTTL`, llm-d/llm-d#1143, BLIS #1000).
 * 500 ms sits between the two; predict-on-route covers the gap for every strategy alike
 * (the peer audit measured decisions insensitive to 0-5,000 ms).
 */
export const DEFAULT_KV_EVENT_DELAY_MS = 500;

/** Default KDN->instance link: 10 Gbit/s, 0.5 ms, CacheRoute's 0.825 efficiency. */
export const LINK_DEFAULTS: LinkSpec = { bandwidthGbps: 10, latencyMs: 0.5, efficiency: 0.825 };

/**
 * Host link per GPU, GB/s, for the CPU tier's loads (an instance's link = this × its GPUs):
 * 16 GB/s makes an 8-GPU node's 128 GB/s, Mooncake's host-to-device bandwidth of an 8×A800 node
 * (Qin et al., FAST'25, Table 1); about half of a PCIe 4.0 x16 link's 32 GB/s.
 */
export const HOST_LINK_GBPS_PER_GPU = 16;

/**
 * KV tokens a tier of `gib` GiB per GPU holds on an instance: LMCache runs one worker per
 * tensor-parallel rank, each with `max_local_cpu_size` GiB (`int(max_local_cpu_size * 1024**3)`
 * bytes, lmcache/v1/cache_engine.py `_Create_memory_allocator`) for its shard of the KV
 * (kvBytesPerToken / GPUs per token): tokens = gib · 2^30 · gpus / kvBytesPerToken.
 */
export function tierTokens(gib: number, kvBytesPerToken: number, gpus: number): number {
  if (!Number.isFinite(gib)) return Infinity;
  return Math.floor((gib * 1073741824 * gpus) / kvBytesPerToken);
}

/**
 * Reads and validates a cluster file (YAML or JSON by content), including every strategy's
 * `strategyParams` against that strategy's parameter schema.
 * @throws Error "FILE: field.path: message" for schema errors and bad strategy parameters,
 *   "FILE: ..." for parse errors.
 */
export function readClusterFile(file: string): ClusterFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`cluster file ${file}: ${(e as Error).message}`);
  }
  let obj: unknown;
  try {
    // yaml is loaded only when a cluster file is used (start-up time of every other run)
    const { parse: parseYaml } = createRequire(import.meta.url)('yaml') as typeof import('yaml');
    obj = parseYaml(text);
  } catch (e) {
    throw new Error(`${file}: not valid YAML/JSON: ${(e as Error).message}`);
  }
  const s = loadSchemas();
  const r = s.clusterFileSchema.safeParse(obj ?? {});
  if (!r.success) throw new Error(s.formatZodError(file, r.error));
  // strategy parameters: the one schema (engine/strategies/params.ts), at load time
  for (const [name, params] of Object.entries(r.data.strategyParams ?? {})) {
    try {
      checkStrategyParams(name, params);
    } catch (e) {
      throw new Error(`${file}: strategyParams.${name}: ${(e as Error).message}`);
    }
  }
  const data = r.data;
  // profile paths are relative to the cluster file
  const rel = (p: string | undefined): string | undefined => (p !== undefined && isProfilePath(p) && !isAbsolute(p) ? join(dirname(resolve(file)), p) : p);
  if (data.profile !== undefined) data.profile = rel(data.profile);
  if (Array.isArray(data.instances)) for (const x of data.instances) if (x.profile !== undefined) x.profile = rel(x.profile);
  return data;
}

/** CLI-level cluster options (override the file). */
export interface ClusterOptions {
  profile?: string;
  instances?: number;
  /** tokens, or Infinity. */
  kvCapacityTokens?: number;
  kdnGbps?: number;
  kvEventDelayMs?: number;
  /** P/D roles, e.g. "6P10D" (sets the instance count; overrides the file's roles). */
  roles?: string;
  /** CPU tier of every instance, GiB per GPU (LMCache `max_local_cpu_size`; 0 = none). */
  cpuTierGB?: number;
  /** remote tier of every instance, GiB per GPU (Infinity = unbounded). */
  remoteTierGB?: number;
  /** CacheBlend on every instance (true = LMCache's example settings; an object overrides them; false = off). */
  blend?: boolean | Partial<BlendSpec>;
  /** overlapped hybrid on every instance. */
  overlap?: boolean;
}

/** Capabilities as written in a cluster file (or CLI). */
type Capabilities = { blend?: boolean | Partial<BlendSpec>; overlap?: boolean };

/** The BlendSpec of a capability value (undefined = no blend). */
function blendOf(v: boolean | Partial<BlendSpec> | undefined): BlendSpec | undefined {
  if (v === undefined || v === false) return undefined;
  return v === true ? { ...BLEND_DEFAULTS } : { ...BLEND_DEFAULTS, ...v };
}

/** Resolved cluster plus the simulator settings and strategy parameters of the file. */
export interface ResolvedCluster {
  spec: ClusterSpec;
  strategyParams: Record<string, Record<string, unknown>>;
  stepNoiseCv: number;
  /** client cap on requests in flight (`sim.maxConcurrency`), undefined = none. */
  maxConcurrency?: number;
}

/**
 * Builds the ClusterSpec from an optional cluster file and CLI options (CLI wins).
 * Defaults: `defaultProfile`, 4 instances, one KDN `kdn0` holding all knowledge,
 * 10 Gbit/s links.
 * @throws Error naming the field for unknown profiles or link overrides.
 */
export function resolveCluster(file: ClusterFile | null, opts: ClusterOptions, defaultProfile: string): ResolvedCluster {
  const f = file ?? {};
  const profileName = opts.profile ?? f.profile ?? defaultProfile;
  const baseEngine: Partial<EngineSettings> = normEngine(f.engine ?? {});
  if (opts.kvCapacityTokens !== undefined) baseEngine.kvCapacityTokens = opts.kvCapacityTokens;
  let list: { id?: string; profile?: string; role?: InstanceRole; cpuTierGB?: number; over: Partial<EngineSettings>; caps?: Capabilities }[];
  const roleSpec = opts.roles ?? f.roles;
  const roles = roleSpec !== undefined ? parseRoles(roleSpec, opts.roles !== undefined ? '--roles' : 'cluster: roles') : null;
  if (roles && opts.instances !== undefined && opts.instances !== roles.length) throw new Error(`--instances ${opts.instances} disagrees with roles ${roleSpec} (${roles.length} instances)`);
  if (roles && typeof f.instances === 'number' && opts.instances === undefined && opts.roles === undefined && f.instances !== roles.length) throw new Error(`cluster: roles ${roleSpec} names ${roles.length} instances, the cluster has ${f.instances}`);
  if (roles && Array.isArray(f.instances) && opts.instances === undefined) {
    if (f.instances.length !== roles.length) throw new Error(`cluster: roles ${roleSpec} names ${roles.length} instances, the instances list has ${f.instances.length}`);
    if (f.instances.some((x) => x.role !== undefined) && opts.roles === undefined) throw new Error('cluster: give roles either per instance (role:) or as roles:, not both');
  }
  if (opts.instances !== undefined) list = Array.from({ length: opts.instances }, () => ({ over: {} }));
  else if (Array.isArray(f.instances)) list = f.instances.map((x) => ({ id: x.id, profile: x.profile, role: x.role, cpuTierGB: x.cpuTierGB, over: normEngine(x), caps: x.capabilities }));
  else list = Array.from({ length: roles ? roles.length : typeof f.instances === 'number' ? f.instances : 4 }, () => ({ over: {} }));
  if (roles && list.length !== roles.length) throw new Error(`cluster: roles ${roleSpec} names ${roles.length} instances, the cluster has ${list.length}`);
  const instances = list.map((x, i) => {
    const prof = loadProfile(x.profile ?? profileName);
    const over = { ...baseEngine, ...x.over };
    if (opts.kvCapacityTokens !== undefined) over.kvCapacityTokens = opts.kvCapacityTokens;
    const spec = instanceSpecFromProfile(prof, i, over, x.id);
    // capabilities: CLI > the instance's own > the file's default
    const caps: Capabilities = { ...(f.capabilities ?? {}), ...(x.caps ?? {}) };
    if (opts.blend !== undefined) caps.blend = opts.blend;
    if (opts.overlap !== undefined) caps.overlap = opts.overlap;
    const blend = blendOf(caps.blend);
    if (blend) spec.blend = blend;
    if (caps.overlap) spec.overlap = true;
    const role = roles ? roles[i]! : x.role;
    if (role !== undefined && role !== 'mixed') spec.role = role;
    // KV tiers: CLI > the instance's cpuTierGB > the file's tiers
    const cpuGB = opts.cpuTierGB ?? x.cpuTierGB ?? f.tiers?.cpu?.capacityGB ?? 0;
    const rc = f.tiers?.remote?.capacityGB;
    const remoteGB = opts.remoteTierGB ?? (rc === undefined ? (f.tiers?.remote ? Infinity : 0) : rc === 'inf' || rc === 'Infinity' ? Infinity : rc);
    if (cpuGB > 0 || remoteGB > 0) {
      const gpus = prof.hardware.gpus;
      spec.tiers = {
        cpuTokens: cpuGB > 0 ? tierTokens(cpuGB, prof.model.kvBytesPerToken, gpus) : 0,
        hostLinkGBps: f.tiers?.cpu?.hostLinkGBps ?? HOST_LINK_GBPS_PER_GPU * gpus,
        hostLoadFixedMs: f.tiers?.cpu?.fixedMs ?? 0,
        cpuPolicy: f.tiers?.cpu?.policy ?? 'demote',
        remoteTokens: remoteGB > 0 ? tierTokens(remoteGB, prof.model.kvBytesPerToken, gpus) : 0,
      };
    }
    return spec;
  });
  if (hasRoles(instances)) {
    if (!instances.some((s) => s.role !== 'prefill')) throw new Error('cluster: every instance has role prefill: no instance can decode');
    if (!instances.some((s) => s.role !== 'decode')) throw new Error('cluster: every instance has role decode: no instance can take a prefill (give some role prefill or mixed)');
  }
  const ids = new Set<string>();
  for (const s of instances) {
    if (ids.has(s.id)) throw new Error(`cluster: duplicate instance id "${s.id}"`);
    ids.add(s.id);
  }
  const kdnDefs = f.kdns ?? [{ id: 'kdn0' }];
  const kdns: KdnSpec[] = kdnDefs.map((k) => ({
    id: k.id,
    compression: k.compression ?? KDN_DEFAULTS.compression,
    knowledge: k.knowledge === undefined || k.knowledge === 'all' ? null : new Set(k.knowledge),
    textFetchMs: k.textFetchMs ?? KDN_DEFAULTS.textFetchMs,
    ...(k.sequences ? { sequences: true } : {}),
  }));
  const def: LinkSpec = { ...LINK_DEFAULTS, ...(f.links?.default ?? {}) };
  if (opts.kdnGbps !== undefined) def.bandwidthGbps = opts.kdnGbps;
  const links: LinkSpec[][] = kdns.map(() => instances.map(() => ({ ...def })));
  for (const [n, o] of (f.links?.overrides ?? []).entries()) {
    const k = kdns.findIndex((x) => x.id === o.kdn);
    const i = instances.findIndex((x) => x.id === o.instance);
    if (k < 0) throw new Error(`cluster: links.overrides.${n}.kdn: unknown KDN "${o.kdn}"`);
    if (i < 0) throw new Error(`cluster: links.overrides.${n}.instance: unknown instance "${o.instance}"`);
    const { kdn: _k, instance: _i, ...rest } = o;
    links[k]![i] = { ...links[k]![i]!, ...rest };
  }
  return {
    spec: {
      instances,
      kdns,
      links,
      peerLink: { ...PEER_LINK_DEFAULT, ...(f.peerLink ?? {}) },
      kvEventDelayMs: opts.kvEventDelayMs ?? f.kvEventDelayMs ?? DEFAULT_KV_EVENT_DELAY_MS,
      chunkTokens: f.chunkTokens ?? 256,
      ...(hasRoles(instances) || f.pd ? { pd: { link: { ...PD_DEFAULTS.link, ...(f.pd?.link ?? {}) }, layerwise: f.pd?.layerwise ?? PD_DEFAULTS.layerwise, firstToken: f.pd?.firstToken ?? PD_DEFAULTS.firstToken } } : {}),
    },
    strategyParams: f.strategyParams ?? {},
    stepNoiseCv: f.sim?.stepNoiseCv ?? 0.02,
    maxConcurrency: f.sim?.maxConcurrency,
  };
}

function normEngine(o: Record<string, unknown>): Partial<EngineSettings> {
  const out: Partial<EngineSettings> = {};
  for (const k of ['maxNumBatchedTokens', 'maxNumSeqs', 'maxModelLen', 'blockSizeTokens', 'longPrefillTokenThreshold'] as const) {
    if (typeof o[k] === 'number') out[k] = o[k] as number;
  }
  if (typeof o.asyncScheduling === 'boolean') out.asyncScheduling = o.asyncScheduling;
  const c = o.kvCapacityTokens;
  if (c !== undefined) out.kvCapacityTokens = c === 'inf' || c === 'Infinity' ? Infinity : (c as number);
  return out;
}
