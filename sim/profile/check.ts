/**
 * `kvlab profile check`: replays logged TTFT bursts through the instance model and reports the
 * per-request TTFT error (simulated and measured sorted within each burst).
 */
import type { Profile } from '../../engine/types.js';
import { argsort, burstConforms, coldExcess, replayBurst, type BurstReplay } from './burst.js';
import { weightedMedian } from './fit.js';
import { CHAT_TEMPLATE_TOKENS, readBursts, type Burst } from './logs.js';


/** How a file's first burst is replayed. auto: cold when its first request shows a cold start. */
export type ColdStartMode = 'auto' | 'on' | 'off';

/** One scored (or skipped) request of a check. */
export interface CheckedRequest {
  file: string;
  line: number;
  bs: number;
  pl: number;
  repeat: number;
  measuredMs: number;
  simulatedMs: number;
  /** |sim − measured| / measured. */
  relErr: number;
  /** the file's first request (cold start): not scored. */
  skipped: boolean;
  /** its burst's measured grouping matches the simulated one. */
  conforming: boolean;
  /** rank of the request in its burst (0 = fastest). */
  rank: number;
  /** its burst was replayed on a cold instance. */
  cold: boolean;
}

/** Per batch size statistics of a check. */
export interface BsCheck {
  bursts: number;
  nonconformingBursts: number;
  requests: number;
  /** mean |sim − measured| / measured over scored requests, %. */
  mape: number;
  conformingRequests: number;
  /** the same over requests of conforming bursts, %. */
  conformingMape: number;
  /**
   * Lower bound of `mape` for any deterministic replay, %: every repeat of a (file, BS, PL) gets the
   * same simulated sorted TTFTs, so the best possible value at each rank is the 1/measured-weighted
   * median of the repeats' measured values at that rank. Frontend races between repeats keep it > 0.
   */
  floorMape: number;
}

/** Result of checkBursts / checkProfile. */
export interface CheckReport {
  profile: string;
  files: string[];
  bursts: number;
  incompleteBursts: number;
  coldBursts: number;
  requests: number;
  skippedRequests: number;
  /** all scored requests, %. */
  ttftMape: number;
  /** requests of conforming bursts, %. */
  conformingMape: number;
  nonconformingBursts: number;
  byBs: Record<string, BsCheck>;
  detail: CheckedRequest[];
}

/**
 * Replays every complete burst through the instance model and pairs simulated and measured
 * per-request TTFTs, both sorted within the burst; each file's first request is skipped. A file's
 * first burst is replayed on a cold instance (coldStartMs on its first step) per `coldStart`.
 */
export function checkBursts(profile: Profile, bursts: readonly Burst[], opts: { coldStart?: ColdStartMode; templateTokens?: number } = {}): CheckReport {
  const mode = opts.coldStart ?? 'auto';
  const tpl = opts.templateTokens ?? CHAT_TEMPLATE_TOKENS;
  const detail: CheckedRequest[] = [];
  const files: string[] = [];
  let incomplete = 0;
  let coldBursts = 0;
  let nonconf = 0;
  const perBs = new Map<number, { bursts: number; nonconf: number }>();
  const cache = new Map<string, BurstReplay>();
  for (const b of bursts) {
    if (!files.includes(b.file)) files.push(b.file);
    if (!b.complete) {
      incomplete++;
      continue;
    }
    const p = b.pl + tpl;
    let cold = false;
    if (b.requests.some((q) => q.fileFirst) && mode !== 'off') {
      cold = mode === 'on' || (coldExcess(profile, b, tpl)?.excessMs ?? 0) > profile.coldStartMs / 2;
    }
    let r: BurstReplay;
    if (cold) {
      r = replayBurst(profile, b.bs, p, { coldStartMs: profile.coldStartMs });
      coldBursts++;
    } else {
      const key = `${b.bs}|${p}`;
      r = cache.get(key) ?? replayBurst(profile, b.bs, p);
      cache.set(key, r);
    }
    const measured = b.requests.map((q) => q.ttftMs);
    const mOrder = argsort(measured);
    const sim = [...r.ttftMs].sort((a, c) => a - c);
    const conforming = burstConforms(
      r,
      mOrder.map((i) => measured[i]!),
    );
    const s = perBs.get(b.bs) ?? { bursts: 0, nonconf: 0 };
    s.bursts++;
    if (!conforming) {
      s.nonconf++;
      nonconf++;
    }
    perBs.set(b.bs, s);
    mOrder.forEach((i, rank) => {
      const q = b.requests[i]!;
      detail.push({
        file: q.file,
        line: q.line,
        bs: b.bs,
        pl: b.pl,
        repeat: b.repeat,
        measuredMs: q.ttftMs,
        simulatedMs: sim[rank]!,
        relErr: Math.abs(sim[rank]! - q.ttftMs) / q.ttftMs,
        skipped: q.fileFirst,
        conforming,
        rank,
        cold,
      });
    });
  }
  const mape = (rows: CheckedRequest[]): number => (rows.length ? (100 * rows.reduce((s, d) => s + d.relErr, 0)) / rows.length : NaN);
  const scored = detail.filter((d) => !d.skipped);
  // best deterministic prediction per (file, BS, PL, cold, rank): weighted median of the repeats
  const groups = new Map<string, number[]>();
  for (const d of scored) {
    const k = `${d.file}|${d.bs}|${d.pl}|${d.cold}|${d.rank}`;
    const g = groups.get(k) ?? [];
    g.push(d.measuredMs);
    groups.set(k, g);
  }
  const floorErr = new Map<number, { sum: number; n: number }>();
  for (const [k, ys] of groups) {
    const bs = Number(k.split('|')[1]);
    const c = weightedMedian(ys, ys.map((y) => 1 / y));
    const f = floorErr.get(bs) ?? { sum: 0, n: 0 };
    for (const y of ys) f.sum += Math.abs(c - y) / y;
    f.n += ys.length;
    floorErr.set(bs, f);
  }
  const byBs: Record<string, BsCheck> = {};
  for (const bs of [...perBs.keys()].sort((a, b) => a - b)) {
    const rows = scored.filter((d) => d.bs === bs);
    const conf = rows.filter((d) => d.conforming);
    byBs[String(bs)] = {
      bursts: perBs.get(bs)!.bursts,
      nonconformingBursts: perBs.get(bs)!.nonconf,
      requests: rows.length,
      mape: mape(rows),
      conformingRequests: conf.length,
      conformingMape: mape(conf),
      floorMape: floorErr.has(bs) ? (100 * floorErr.get(bs)!.sum) / floorErr.get(bs)!.n : NaN,
    };
  }
  return {
    profile: profile.name,
    files,
    bursts: bursts.length,
    incompleteBursts: incomplete,
    coldBursts,
    requests: scored.length,
    skippedRequests: detail.length - scored.length,
    ttftMape: mape(scored),
    conformingMape: mape(scored.filter((d) => d.conforming)),
    nonconformingBursts: nonconf,
    byBs,
    detail,
  };
}

/** checkBursts over log files. */
export function checkProfile(profile: Profile, logFiles: readonly string[], opts: { coldStart?: ColdStartMode } = {}): CheckReport {
  return checkBursts(profile, readBursts(logFiles), opts);
}


/** Plain-text table of a check report. */
export function formatCheck(r: CheckReport): string {
  const lines: string[] = [];
  lines.push(
    `profile ${r.profile}: ${r.files.length} file(s), ${r.bursts} bursts (${r.incompleteBursts} incomplete, ${r.coldBursts} replayed cold), ` +
      `${r.requests} requests scored, ${r.skippedRequests} skipped (each file's first request)`,
  );
  lines.push(`ttft_mape ${r.ttftMape.toFixed(2)}%   conforming bursts: ${r.conformingMape.toFixed(2)}% (${r.nonconformingBursts} non-conforming bursts)`);
  lines.push('bs  bursts  nonconf  requests  ttft_mape  conforming_mape  floor_mape');
  for (const [bs, v] of Object.entries(r.byBs)) {
    lines.push(
      `${bs.padEnd(3)} ${String(v.bursts).padStart(6)}  ${String(v.nonconformingBursts).padStart(7)}  ${String(v.requests).padStart(8)}  ` +
        `${(v.mape.toFixed(2) + '%').padStart(9)}  ${(v.conformingMape.toFixed(2) + '%').padStart(15)}  ${(v.floorMape.toFixed(2) + '%').padStart(10)}`,
    );
  }
  lines.push('floor_mape: the lowest ttft_mape any deterministic replay can reach on these logs (repeats of a burst differ)');
  return lines.join('\n');
}

