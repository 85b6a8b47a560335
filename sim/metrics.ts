/**
 * Timing records, summary and time series of a simulated run (formats: docs/FORMATS.md).
 */
import { mean as ssMean, quantileSorted } from 'simple-statistics';
import { intentRecord, type Intent } from '../engine/types.js';
import { j3 } from './format.js';
import type { SimOutcome } from './simulator.js';

export { j3 } from './format.js';
import { ST_OK, ST_REJECTED } from './simulator.js';

/**
 * Default SLO of `summary.json` goodput: TTFT 10 s, TBT 300 ms (Mooncake's FAST'25 evaluation
 * uses TTFT 30 s and TBT 100 / 200 / 300 ms). The evaluation protocol sets its own
 * (notebooks/analyses/protocol.ts); `--slo` overrides.
 */
export const DEFAULT_SLO: Slo = { ttftMs: 10_000, tbtMs: 300 };

/** mean / p50 / p90 / p99 of a metric (ms). null values when there is no sample. */
export interface Dist {
  mean: number | null;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  n: number;
}

/** Rounds to 3 decimals (stable, compact JSON). */
export function r3(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** Distribution of `values` (unsorted; copied). */
export function dist(values: ArrayLike<number>): Dist {
  const n = values.length;
  if (n === 0) return { mean: null, p50: null, p90: null, p99: null, n: 0 };
  const s = Float64Array.from(values).sort();
  const arr = Array.from(s);
  return { mean: r3(ssMean(arr)), p50: r3(quantileSorted(arr, 0.5)), p90: r3(quantileSorted(arr, 0.9)), p99: r3(quantileSorted(arr, 0.99)), n };
}

/** Per-request observed metrics (ms), -1 when not applicable. */
export interface Observed {
  ttft: Float64Array;
  tpot: Float64Array;
  e2e: Float64Array;
  /** Mooncake TBT: mean of the longest 10% token gaps (sim/tbt.ts). */
  tbt: Float64Array;
}

/**
 * A latency SLO (ms). A request is *good* when it completed with TTFT <= ttftMs and TBT <=
 * tbtMs (Mooncake's "effective request"; a request without token gaps meets any TBT SLO).
 */
export interface Slo {
  ttftMs: number;
  tbtMs: number;
}

/** Computes TTFT / TPOT / E2E per request (ms; -1 when the request did not complete). */
export function observed(o: SimOutcome): Observed {
  const N = o.requests.length;
  const ttft = new Float64Array(N).fill(-1);
  const tpot = new Float64Array(N).fill(-1);
  const e2e = new Float64Array(N).fill(-1);
  const pd = o.pd;
  for (let r = 0; r < N; r++) {
    if (o.status[r] !== ST_OK) continue;
    const req = o.requests[r]!;
    const api = o.apiMs[o.decisions.instance[r]!]!;
    // a disaggregated request ends on its decode instance (and starts there with vLLM's proxy)
    const dApi = pd && pd.decode[r]! >= 0 ? o.apiMs[pd.decode[r]!]! : api;
    ttft[r] = o.firstTokenAt[r]! + (pd && pd.firstToken === 'decode' ? dApi : api) - req.arrivalMs;
    e2e[r] = o.doneAt[r]! + dApi - req.arrivalMs;
    if (req.outputTokens > 1) tpot[r] = (o.doneAt[r]! - o.firstTokenAt[r]!) / (req.outputTokens - 1);
  }
  return { ttft, tpot, e2e, tbt: o.tbtMs };
}

function pick(a: Float64Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i]! >= 0) out.push(a[i]!);
  return out;
}

/** Summary fields of a run (without run-identity fields, which the caller adds). */
export interface SummaryCore {
  requests: number;
  completed: number;
  rejected: number;
  failed: number;
  prefix_hit_ratio: number;
  kv_reuse_ratio: number;
  ttft_ms: Dist;
  tpot_ms: Dist;
  e2e_ms: Dist;
  /** Mooncake TBT per request (mean of its longest 10% token gaps), distribution over requests. */
  tbt_ms: Dist;
  /** the SLO `goodput` is measured against. */
  slo: { ttft_ms: number; tbt_ms: number };
  /** share of all requests (rejected and failed included) that completed within the SLO. */
  goodput: number;
  /** requests completed within the SLO per second of the run. */
  goodput_rps: number;
  /** requests rejected by the strategy's admission control (also counted in `rejected`). */
  rejected_admission: number;
  throughput_rps: number;
  duration_ms: number;
  intent_mix: Record<Intent, number>;
  load_cov: number;
  kv_bytes_moved: number;
  preemptions: number;
  per_instance: { id: string; requests: number; prompt_tokens: number; hit_tokens: number; computed_tokens: number; busy_ms: number; evictions: number; preemptions: number }[];
  /**
   * KV tiers (only when some instance has a tier below the GPU): prompt tokens loaded from the
   * CPU / remote tier instead of computed, their share of the prompt tokens (completed requests),
   * and the blocks each tier evicted.
   */
  tiers?: { cpu_hit_tokens: number; remote_hit_tokens: number; cpu_hit_ratio: number; remote_hit_ratio: number; cpu_evictions: number; remote_evictions: number };
  /**
   * P/D disaggregation (only when the cluster has instance roles): requests disaggregated and
   * colocated, P -> D bytes, and over completed disaggregated requests the hand-off time
   * (transfer start to end, ms) and the wait the client saw after P's prefill (prefill end to the
   * end of the hand-off, ms).
   */
  pd?: { first_token: 'prefill' | 'decode'; disaggregated: number; colocated: number; transfer_bytes: number; transfer_ms: Dist; exposed_ms: Dist; per_instance: { id: string; role: string; decoded: number }[] };
}

/** Requests of a run that completed within the SLO (TTFT and TBT), out of all requests. */
export function goodCount(o: SimOutcome, obs: Observed, slo: Slo): number {
  let good = 0;
  for (let r = 0; r < o.requests.length; r++) {
    if (o.status[r] !== ST_OK) continue;
    if (obs.ttft[r]! <= slo.ttftMs && obs.tbt[r]! <= slo.tbtMs) good++;
  }
  return good;
}

/** Aggregates a simulated run; `goodput` is measured against `slo`. */
export function summarize(o: SimOutcome, obs: Observed = observed(o), slo: Slo = DEFAULT_SLO): SummaryCore {
  const N = o.requests.length;
  let completed = 0;
  let rejected = 0;
  let prompt = 0;
  let hit = 0;
  let loaded = 0;
  let cpuHit = 0;
  let remoteHit = 0;
  let preemptions = 0;
  let firstArrival = Infinity;
  let lastDone = 0;
  const intentMix: Record<Intent, number> = intentRecord();
  const per = o.instances.map((s) => ({ id: s.id, requests: 0, prompt_tokens: 0, hit_tokens: 0, computed_tokens: 0, busy_ms: r3(s.busyMs), evictions: s.evictions, preemptions: s.preemptions }));
  for (let r = 0; r < N; r++) {
    const req = o.requests[r]!;
    const inst = o.decisions.instance[r]!;
    intentMix[o.decisions.intent(r)]++;
    if (req.arrivalMs < firstArrival) firstArrival = req.arrivalMs;
    preemptions += o.preemptions[r]!;
    const p = per[inst]!;
    p.requests++;
    if (o.status[r] === ST_REJECTED) rejected++;
    if (o.status[r] !== ST_OK) continue;
    completed++;
    prompt += req.inputTokens;
    hit += o.hitTokens[r]!;
    loaded += o.loadTokens[r]!;
    if (o.tiers) {
      const c = o.tiers.cpuTokens[r]!;
      const rm = o.tiers.remoteTokens[r]!;
      loaded += c + rm;
      cpuHit += c;
      remoteHit += rm;
      p.computed_tokens -= c + rm;
    }
    p.prompt_tokens += req.inputTokens;
    p.hit_tokens += o.hitTokens[r]!;
    p.computed_tokens += req.inputTokens - o.hitTokens[r]! - o.loadTokens[r]!;
    const done = o.doneAt[r]! + o.apiMs[inst]!;
    if (done > lastDone) lastDone = done;
  }
  const comp = per.map((p) => p.computed_tokens);
  const m = comp.reduce((a, b) => a + b, 0) / Math.max(1, comp.length);
  const sd = Math.sqrt(comp.reduce((a, b) => a + (b - m) * (b - m), 0) / Math.max(1, comp.length));
  const duration = completed ? lastDone - firstArrival : 0;
  const good = goodCount(o, obs, slo);
  const core: SummaryCore = {
    requests: N,
    completed,
    rejected,
    failed: N - completed - rejected,
    prefix_hit_ratio: prompt ? r3(hit / prompt * 1000) / 1000 : 0,
    kv_reuse_ratio: prompt ? r3((hit + loaded) / prompt * 1000) / 1000 : 0,
    ttft_ms: dist(pick(obs.ttft)),
    tpot_ms: dist(pick(obs.tpot)),
    e2e_ms: dist(pick(obs.e2e)),
    tbt_ms: dist(pick(obs.tbt)),
    slo: { ttft_ms: slo.ttftMs, tbt_ms: slo.tbtMs },
    goodput: N ? r3(good / N) : 0,
    goodput_rps: duration > 0 ? r3((good / duration) * 1000) : 0,
    rejected_admission: o.admissionRejected,
    throughput_rps: duration > 0 ? r3((completed / duration) * 1000) : 0,
    duration_ms: r3(duration),
    intent_mix: intentMix,
    load_cov: m > 0 ? r3(sd / m) : 0,
    kv_bytes_moved: Math.round(o.kvBytesMoved),
    preemptions,
    per_instance: per,
  };
  if (o.pd) core.pd = pdSummary(o);
  if (o.tiers) {
    let ce = 0;
    let re = 0;
    for (const s of o.instances) {
      ce += s.cpuEvictions ?? 0;
      re += s.remoteEvictions ?? 0;
    }
    core.tiers = { cpu_hit_tokens: cpuHit, remote_hit_tokens: remoteHit, cpu_hit_ratio: prompt ? r3(cpuHit / prompt) : 0, remote_hit_ratio: prompt ? r3(remoteHit / prompt) : 0, cpu_evictions: ce, remote_evictions: re };
  }
  return core;
}

/** The `pd` block of summary.json (SummaryCore.pd). */
function pdSummary(o: SimOutcome): NonNullable<SummaryCore['pd']> {
  const pd = o.pd!;
  const N = o.requests.length;
  let dis = 0;
  const xfer: number[] = [];
  const exposed: number[] = [];
  const decoded = new Array<number>(o.instances.length).fill(0);
  for (let r = 0; r < N; r++) {
    if (o.decisions.decode[r]! < 0 || o.decisions.rejectedReason(r) !== undefined) {
      if (o.decisions.rejectedReason(r) === undefined) decoded[o.decisions.instance[r]!]!++;
      continue;
    }
    dis++;
    decoded[o.decisions.decode[r]!]!++;
    if (o.status[r] !== ST_OK || pd.end[r]! < 0) continue;
    xfer.push(pd.end[r]! - pd.start[r]!);
    exposed.push(pd.end[r]! - pd.prefillDoneAt[r]!);
  }
  return {
    first_token: pd.firstToken,
    disaggregated: dis,
    colocated: N - dis - o.admissionRejected,
    transfer_bytes: Math.round(pd.bytesMoved),
    transfer_ms: dist(xfer),
    exposed_ms: dist(exposed),
    per_instance: o.instances.map((s, i) => ({ id: s.id, role: o.roles?.[i] ?? 'mixed', decoded: decoded[i]! })),
  };
}

function rejectionJson(admission: string | undefined): string {
  return admission === undefined ? '"prompt + output tokens exceed max_model_len or the KV memory"' : JSON.stringify(`admission control: ${admission}`);
}

/** One timing record line (no trailing newline). */
function recordLine(o: SimOutcome, obs: Observed, r: number, quotedIds: string[], quotedKdns: string[]): string {
  const q = o.requests[r]!;
  const ds = o.decisions;
  const inst = ds.instance[r]!;
  const kdn = ds.kdn[r]!;
  const st = o.status[r] === ST_OK ? 'ok' : o.status[r] === ST_REJECTED ? 'rejected' : 'failed';
  const pred = ds.predictedJson(r);
  let obsJ = 'null';
  const pd = o.pd;
  const dec = pd ? ds.decode[r]! : -1;
  if (o.status[r] === ST_OK) {
    const api = o.apiMs[inst]!;
    const ready = o.readyAt[r]!;
    const queue = o.firstSchedAt[r]! - ready;
    // P's first token ends the prefill (with vLLM's proxy the client's first token comes from D later)
    const pEnd = dec >= 0 && pd!.prefillDoneAt[r]! >= 0 ? pd!.prefillDoneAt[r]! : o.firstTokenAt[r]!;
    const prefill = pEnd + api - o.firstSchedAt[r]! - o.kvLoadMs[r]!;
    const dApi = dec >= 0 ? o.apiMs[dec]! : api;
    const firstAt = o.firstTokenAt[r]! + (dec >= 0 && pd!.firstToken === 'decode' ? dApi : api);
    const doneAt = o.doneAt[r]! + dApi;
    const pdJ = dec >= 0 && pd!.end[r]! >= 0 ? `,"pd":{"decode_instance":${quotedIds[dec]},"transfer_bytes":${Math.round(pd!.bytes[r]!)},"prefill_done_ms":${j3(pd!.prefillDoneAt[r]!)},"link_wait_ms":${j3(pd!.start[r]! - pd!.readyAt[r]!)},"transfer_start_ms":${j3(pd!.start[r]!)},"transfer_end_ms":${j3(pd!.end[r]!)},"transfer_ms":${j3(pd!.end[r]! - pd!.start[r]!)}}` : '';
    obsJ =
      `{"prepare_ms":${j3(o.prepareMs[r]!)},"link_wait_ms":${j3(o.linkWaitMs[r]!)},"transfer_ms":${j3(o.transferMs[r]!)},"kv_load_ms":${j3(o.kvLoadMs[r]!)},` +
      `"queue_ms":${j3(queue)},"prefill_ms":${j3(prefill)},"ttft_ms":${j3(obs.ttft[r]!)},"tpot_ms":${obs.tpot[r]! >= 0 ? r3(obs.tpot[r]!) : 'null'},"tbt_ms":${obs.tbt[r]! >= 0 ? r3(obs.tbt[r]!) : 'null'},"e2e_ms":${j3(obs.e2e[r]!)},` +
      `"cached_tokens":${o.hitTokens[r]!},"loaded_tokens":${o.loadTokens[r]!},${o.tiers ? `"cpu_tokens":${o.tiers.cpuTokens[r]!},"remote_tokens":${o.tiers.remoteTokens[r]!},` : ''}"transfer_tokens":${o.transferTokens[r]!},"preemptions":${o.preemptions[r]!},` +
      `"first_token_at_ms":${j3(firstAt)},"done_at_ms":${j3(doneAt)}${pdJ}}`;
  }
  return (
    `{"id":${JSON.stringify(q.id)},"arrival_ms":${j3(q.arrivalMs)},"status":"${st}","error":${st === 'rejected' ? rejectionJson(ds.rejectedReason(r)) : 'null'},` +
    `"input_tokens":${q.inputTokens},"output_tokens":${q.outputTokens},"knowledge_tokens":${q.knowledgeTokens},` +
    `"instance":${quotedIds[inst]},${dec >= 0 ? `"decode_instance":${quotedIds[dec]},` : ''}"kdn":${kdn >= 0 ? quotedKdns[kdn] : 'null'},"intent":"${ds.intent(r)}",` +
    `"decision":${ds.decisionJson(r, quotedIds)},"predicted":${pred},"observed":${obsJ},"source":"sim"}`
  );
}

/**
 * Streams every timing record as JSONL (one line per request, request order) to `write`, in
 * chunks of about `chunkChars` characters (keeps memory flat for large runs).
 * @param kdnIds KDN ids by index; instance ids come from the outcome
 */
export function writeRecords(o: SimOutcome, obs: Observed, kdnIds: string[], write: (chunk: string) => void, chunkChars = 1 << 18): void {
  const quotedIds = o.instances.map((s) => JSON.stringify(s.id));
  const quotedKdns = kdnIds.map((k) => JSON.stringify(k));
  let buf = '';
  for (let r = 0; r < o.requests.length; r++) {
    buf += recordLine(o, obs, r, quotedIds, quotedKdns) + '\n';
    if (buf.length >= chunkChars) {
      write(buf);
      buf = '';
    }
  }
  if (buf) write(buf);
}

/** All timing records as one JSONL string (tests, small runs). */
export function recordsJsonl(o: SimOutcome, obs: Observed, kdnIds: string[]): string {
  const parts: string[] = [];
  writeRecords(o, obs, kdnIds, (c) => parts.push(c));
  return parts.join('');
}

/** Per-bucket time series for charts (docs/FORMATS.md timeseries.json). */
export function timeseries(o: SimOutcome, kdnIds: string[], bucketMs?: number): Record<string, unknown> {
  const N = o.requests.length;
  const span = Math.max(1, o.endMs - (N ? o.requests[0]!.arrivalMs : 0));
  const b = bucketMs ?? Math.max(1000, Math.ceil(span / 120 / 1000) * 1000);
  const nb = Math.ceil(span / b) + 1;
  const t0 = N ? o.requests[0]!.arrivalMs : 0;
  const zero = () => new Array<number>(nb).fill(0);
  const intents: Record<Intent, number[]> = { none: zero(), text: zero(), kvcache: zero(), hybrid: zero(), blend: zero(), overlap: zero() };
  const inst: Record<string, { requests: number[]; hit_ratio: number[]; booked_prefill_tokens: number[]; running: number[]; intent: Record<Intent, number[]> }> = {};
  const hitT: number[][] = [];
  const promptT: number[][] = [];
  const bookedMax: number[][] = [];
  const runMax: number[][] = [];
  for (const s of o.instances) {
    inst[s.id] = { requests: zero(), hit_ratio: zero(), booked_prefill_tokens: zero(), running: zero(), intent: { none: zero(), text: zero(), kvcache: zero(), hybrid: zero(), blend: zero(), overlap: zero() } };
    hitT.push(zero());
    promptT.push(zero());
    bookedMax.push(zero());
    runMax.push(zero());
  }
  const ids = o.instances.map((s) => s.id);
  for (let r = 0; r < N; r++) {
    const q = o.requests[r]!;
    const di = o.decisions.instance[r]!;
    const intent = o.decisions.intent(r);
    const k = Math.min(nb - 1, Math.floor((q.arrivalMs - t0) / b));
    intents[intent][k]!++;
    const I = inst[ids[di]!]!;
    I.requests[k]!++;
    I.intent[intent][k]!++;
    bookedMax[di]![k] = Math.max(bookedMax[di]![k]!, o.bookedPrefillAtArrival[r]!);
    runMax[di]![k] = Math.max(runMax[di]![k]!, o.runningAtArrival[r]!);
    if (o.status[r] === ST_OK) {
      const kf = Math.min(nb - 1, Math.floor((o.firstTokenAt[r]! - t0) / b));
      hitT[di]![kf]! += o.hitTokens[r]!;
      promptT[di]![kf]! += q.inputTokens;
    }
  }
  o.instances.forEach((s, i) => {
    const I = inst[s.id]!;
    for (let k = 0; k < nb; k++) {
      I.hit_ratio[k] = promptT[i]![k]! ? r3(hitT[i]![k]! / promptT[i]![k]!) : 0;
      I.booked_prefill_tokens[k] = bookedMax[i]![k]!;
      I.running[k] = runMax[i]![k]!;
    }
  });
  const links: Record<string, { busy_frac: number[]; mean_wait_ms: number[] }> = {};
  o.transfers.forEach((arr, kd) => {
    const per = new Map<number, { busy: number[]; wait: number[]; cnt: number[] }>();
    for (let j = 0; j < arr.length; j += 4) {
      const i = arr[j]!;
      const start = arr[j + 1]!;
      const end = arr[j + 2]!;
      const wait = arr[j + 3]!;
      let e = per.get(i);
      if (!e) {
        e = { busy: zero(), wait: zero(), cnt: zero() };
        per.set(i, e);
      }
      const ks = Math.min(nb - 1, Math.floor((start - t0) / b));
      e.wait[ks]! += wait;
      e.cnt[ks]!++;
      for (let k = ks; k < nb; k++) {
        const bs = t0 + k * b;
        const be = bs + b;
        if (bs >= end) break;
        e.busy[k]! += Math.min(end, be) - Math.max(start, bs);
      }
    }
    for (const [i, e] of [...per.entries()].sort((x, y) => x[0] - y[0])) {
      links[`${kdnIds[kd]}->${ids[i]}`] = { busy_frac: e.busy.map((x) => r3(x / b)), mean_wait_ms: e.wait.map((w, k) => (e.cnt[k] ? r3(w / e.cnt[k]!) : 0)) };
    }
  });
  return { bucket_ms: b, t_ms: Array.from({ length: nb }, (_, k) => t0 + k * b), intent: intents, instances: inst, links };
}
