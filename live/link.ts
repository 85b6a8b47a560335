/**
 * Wall-clock pacing of KV transfers on KDN→instance links (DESIGN.md "KV transfer on a link";
 * CacheRoute §5.5/§5.6): one FIFO server per link; a transfer of B bytes holds the link for
 * `transferMs(B, link)` = B / (bandwidth × efficiency) + latency (engine/costmodel.ts), divided
 * by the time scale, and then for the real work (the Redis copy): the data lands at the end of
 * the modelled transfer, as on a real link (a reader never sees it early).
 */
import { transferMs } from '../engine/costmodel.js';
import type { LinkSpec } from '../engine/types.js';

/** Timings of one paced transfer, wall ms (epoch ms for the `*Ts` fields). */
export interface LinkTiming {
  /** wait for the link (FIFO behind earlier transfers). */
  queueMs: number;
  /** from taking the link to releasing it. */
  transferMs: number;
  /** queueMs + transferMs. */
  totalMs: number;
  /** the link model's transfer time for the bytes, after time scaling. */
  modelTransferMs: number;
  enqueuedTs: number;
  startTs: number;
  endTs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Validates a LinkSpec; throws naming the bad field. */
export function checkLinkSpec(l: LinkSpec, where = 'link'): LinkSpec {
  if (!(l.bandwidthGbps > 0) || !Number.isFinite(l.bandwidthGbps)) throw new Error(`${where}.bandwidthGbps must be a finite number > 0 (got ${l.bandwidthGbps})`);
  if (!(l.latencyMs >= 0) || !Number.isFinite(l.latencyMs)) throw new Error(`${where}.latencyMs must be a finite number >= 0 (got ${l.latencyMs})`);
  if (!(l.efficiency > 0 && l.efficiency <= 1)) throw new Error(`${where}.efficiency must be in (0, 1] (got ${l.efficiency})`);
  return l;
}

/** One FIFO link. */
export class PacedLink {
  private tail: Promise<void> = Promise.resolve();
  /** transfers queued or running. */
  pending = 0;
  /** transfers completed. */
  completed = 0;
  /** bytes charged so far. */
  bytes = 0;

  constructor(
    readonly spec: LinkSpec,
    readonly timeScale = 1,
  ) {
    checkLinkSpec(spec);
    if (!(timeScale > 0)) throw new Error(`timeScale must be > 0 (got ${timeScale})`);
  }

  /**
   * Runs `work` as one transfer of `bytes` bytes, after every transfer queued before it.
   * Errors from `work` propagate after the link is released.
   */
  async run<T>(bytes: number, work: () => Promise<T>): Promise<{ result: T; timing: LinkTiming }> {
    const enqueuedTs = Date.now();
    const t0 = performance.now();
    const prev = this.tail;
    let release!: () => void;
    this.tail = new Promise<void>((r) => (release = r));
    this.pending++;
    await prev;
    const t1 = performance.now();
    const startTs = Date.now();
    const model = transferMs(bytes, this.spec) / this.timeScale;
    try {
      // a transfer's bytes land at its end: hold the link for the modelled time first, then do
      // the real copy, so no reader sees the data before the modelled transfer is over.
      // (timers may fire a little early (libuv's cached loop time): sleep until really done)
      for (let left = model - (performance.now() - t1); left > 0.25; left = model - (performance.now() - t1)) await sleep(left);
      const result = await work();
      const t2 = performance.now();
      this.bytes += bytes;
      this.completed++;
      return {
        result,
        timing: { queueMs: t1 - t0, transferMs: t2 - t1, totalMs: t2 - t0, modelTransferMs: model, enqueuedTs, startTs, endTs: Date.now() },
      };
    } finally {
      this.pending--;
      release();
    }
  }
}

/** Links by key (e.g. the target Redis `host:port/db`), created on first use. */
export class LinkTable {
  private readonly links = new Map<string, PacedLink>();
  constructor(
    private readonly dflt: LinkSpec,
    private readonly overrides: Record<string, LinkSpec> = {},
    private readonly timeScale = 1,
  ) {
    checkLinkSpec(dflt, 'link');
    for (const [k, v] of Object.entries(overrides)) checkLinkSpec(v, `links["${k}"]`);
  }

  /**
   * The link for `key` (`host:port/db`); its spec is the override for `host:port/db`, else for
   * `host:port`, else the default.
   */
  get(key: string): PacedLink {
    let l = this.links.get(key);
    if (!l) {
      const hostPort = key.replace(/\/\d+$/, '');
      l = new PacedLink(this.overrides[key] ?? this.overrides[hostPort] ?? this.dflt, this.timeScale);
      this.links.set(key, l);
    }
    return l;
  }

  /** Snapshot of every link used so far. */
  status(): Array<{ key: string; spec: LinkSpec; pending: number; completed: number; bytes: number }> {
    return [...this.links.entries()].map(([key, l]) => ({ key, spec: l.spec, pending: l.pending, completed: l.completed, bytes: l.bytes }));
  }
}
