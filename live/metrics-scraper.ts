/**
 * Scrapes the engine metrics a metrics-reading router uses (llm-d's queue and KV-utilisation
 * scorers) from every backend's Prometheus `/metrics`: `vllm:num_requests_waiting`,
 * `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` (summed over label sets, e.g. DP
 * ranks; KV usage averaged). It runs only while the gateway's strategy asks for metrics
 * (`Strategy.metricsIntervalMs`, read at every tick so a strategy switch takes effect), one
 * request per backend per interval, never two at once for one backend. A failed scrape keeps
 * the previous values (the engine's copy then ages, like upstream's stale metrics).
 */

/** The part of a backend the scraper needs. */
export interface ScrapeTarget {
  get(path: string, timeoutMs?: number): Promise<{ status: number; text: string }>;
}

/** One parsed scrape. */
export interface ScrapedMetrics {
  waiting: number;
  running: number;
  kvUsage: number;
}

/**
 * Parses the three vLLM gauges from Prometheus text exposition.
 * @returns null when none of them is present
 */
export function parseVllmMetrics(text: string): ScrapedMetrics | null {
  let waiting = 0;
  let running = 0;
  let kv = 0;
  let kvN = 0;
  let seen = false;
  for (const line of text.split('\n')) {
    if (line.length === 0 || line.charCodeAt(0) === 35 /* # */) continue;
    const sp = line.lastIndexOf(' ');
    if (sp < 0) continue;
    const name = line.slice(0, line.indexOf('{') >= 0 && line.indexOf('{') < sp ? line.indexOf('{') : sp);
    const v = Number(line.slice(sp + 1));
    if (!Number.isFinite(v)) continue;
    if (name === 'vllm:num_requests_waiting') {
      waiting += v;
      seen = true;
    } else if (name === 'vllm:num_requests_running') {
      running += v;
      seen = true;
    } else if (name === 'vllm:kv_cache_usage_perc') {
      kv += v;
      kvN++;
      seen = true;
    }
  }
  return seen ? { waiting, running, kvUsage: kvN ? kv / kvN : 0 } : null;
}

/** Polls every target while `intervalMs()` returns a number (model ms; wall = model / timeScale). */
export class MetricsScraper {
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;
  private readonly busy: boolean[];

  constructor(
    private readonly targets: readonly ScrapeTarget[],
    private readonly intervalMs: () => number | undefined,
    private readonly onMetrics: (i: number, m: ScrapedMetrics) => void,
    private readonly timeScale = 1,
  ) {
    this.busy = targets.map(() => false);
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.tick();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    if (this.stopped) return;
    const iv = this.intervalMs();
    if (iv !== undefined && iv > 0) {
      this.targets.forEach((t, i) => {
        if (this.busy[i]) return;
        this.busy[i] = true;
        t.get('/metrics', Math.max(200, (4 * iv) / this.timeScale))
          .then((r) => {
            if (r.status !== 200 || this.stopped) return;
            const m = parseVllmMetrics(r.text);
            if (m) this.onMetrics(i, m);
          })
          .catch(() => undefined)
          .finally(() => (this.busy[i] = false));
      });
    }
    const wait = iv !== undefined && iv > 0 ? iv / this.timeScale : 500;
    this.timer = setTimeout(() => this.tick(), Math.max(1, wait));
    this.timer.unref?.();
  }
}
