/**
 * vLLM V1 Prometheus metrics for the emulator (names, label names, types and buckets from
 * reference/live-protocols.md §2, vLLM `v1/metrics/loggers.py` PrometheusStatLogger), in a
 * prom-client registry of its own. Every family carries the labels `model_name` (served model
 * name) and `engine` ("0").
 *
 * Counters are declared with their exposed `_total` name (prometheus_client appends `_total`
 * to counters, prom-client does not). Not emitted: the `_created` gauge families that
 * prometheus_client adds, and the names removed by 0.12/0.13 (`gpu_cache_usage_perc`,
 * `gpu_prefix_cache_*`, `time_per_output_token_seconds`).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** vLLM `build_1_2_5_buckets(max)`: 1, 2, 5, 10, 20, 50, … up to max. */
export function build125Buckets(max: number): number[] {
  const out: number[] = [];
  for (let e = 1; ; e *= 10) {
    for (const m of [1, 2, 5]) {
      const v = m * e;
      if (v > max) return out;
      out.push(v);
    }
  }
}

const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0];
const ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
/** vLLM `request_latency_buckets` (e2e/queue/inference/prefill/decode); [unverified for 0.13]. */
const LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0];
const ITERATION_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384];

/** Gauge values read at scrape time. */
export interface EmulatorGaugeSource {
  running(): number;
  waiting(): number;
  /** 0..1 */
  kvUsage(): number;
}

/** The emulator's metric families (see module doc). */
export class EmulatorMetrics {
  readonly registry = new Registry();
  private readonly labels: { model_name: string; engine: string };
  readonly promptTokens: Counter<string>;
  readonly generationTokens: Counter<string>;
  readonly requestSuccess: Counter<string>;
  readonly preemptions: Counter<string>;
  readonly prefixQueries: Counter<string>;
  readonly prefixHits: Counter<string>;
  readonly externalQueries: Counter<string>;
  readonly externalHits: Counter<string>;
  readonly lmcacheRequested: Counter<string>;
  readonly lmcacheHit: Counter<string>;
  readonly ttft: Histogram<string>;
  readonly itl: Histogram<string>;
  readonly tpot: Histogram<string>;
  readonly e2e: Histogram<string>;
  readonly queueTime: Histogram<string>;
  readonly inferenceTime: Histogram<string>;
  readonly prefillTime: Histogram<string>;
  readonly decodeTime: Histogram<string>;
  readonly reqPromptTokens: Histogram<string>;
  readonly reqGenTokens: Histogram<string>;
  readonly reqMaxTokens: Histogram<string>;
  readonly reqN: Histogram<string>;
  readonly iterationTokens: Histogram<string>;

  constructor(servedModel: string, maxModelLen: number, cacheConfig: Record<string, string | number>, src: EmulatorGaugeSource) {
    this.labels = { model_name: servedModel, engine: '0' };
    const L = ['model_name', 'engine'];
    const reg = [this.registry];
    const g = (name: string, help: string, read: () => number): void => {
      const labels = this.labels;
      new Gauge({
        name,
        help,
        labelNames: L,
        registers: reg,
        collect() {
          this.set(labels, read());
        },
      });
    };
    g('vllm:num_requests_running', 'Number of requests in model execution batches.', () => src.running());
    g('vllm:num_requests_waiting', 'Number of requests waiting to be processed.', () => src.waiting());
    g('vllm:kv_cache_usage_perc', 'KV-cache usage. 1 means 100 percent usage.', () => src.kvUsage());
    const info = new Gauge({ name: 'vllm:cache_config_info', help: 'Information of the LLMEngine CacheConfig', labelNames: [...L, ...Object.keys(cacheConfig)], registers: reg });
    info.set({ ...this.labels, ...Object.fromEntries(Object.entries(cacheConfig).map(([k, v]) => [k, String(v)])) }, 1);

    const c = (name: string, help: string, extra: string[] = []): Counter<string> => new Counter({ name, help, labelNames: [...L, ...extra], registers: reg });
    this.preemptions = c('vllm:num_preemptions_total', 'Cumulative number of preemption from the engine.');
    this.promptTokens = c('vllm:prompt_tokens_total', 'Number of prefill tokens processed.');
    this.generationTokens = c('vllm:generation_tokens_total', 'Number of generation tokens processed.');
    this.requestSuccess = c('vllm:request_success_total', 'Count of successfully processed requests.', ['finished_reason']);
    this.prefixQueries = c('vllm:prefix_cache_queries_total', 'Prefix cache queries, in terms of number of queried tokens.');
    this.prefixHits = c('vllm:prefix_cache_hits_total', 'Prefix cache hits, in terms of number of cached tokens.');
    this.externalQueries = c('vllm:external_prefix_cache_queries_total', 'External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.');
    this.externalHits = c('vllm:external_prefix_cache_hits_total', 'External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.');
    this.lmcacheRequested = c('lmcache:num_requested_tokens_total', 'Total number of tokens requested from LMCache.');
    this.lmcacheHit = c('lmcache:num_hit_tokens_total', 'Total number of tokens hit in LMCache.');
    // pre-create label sets so the families show zero samples before the first request
    for (const k of [this.preemptions, this.promptTokens, this.generationTokens, this.prefixQueries, this.prefixHits, this.externalQueries, this.externalHits, this.lmcacheRequested, this.lmcacheHit]) k.inc(this.labels, 0);
    for (const r of ['stop', 'length', 'abort']) this.requestSuccess.inc({ ...this.labels, finished_reason: r }, 0);

    const h = (name: string, help: string, buckets: number[]): Histogram<string> => new Histogram({ name, help, labelNames: L, buckets, registers: reg });
    const tokBuckets = build125Buckets(maxModelLen);
    this.reqPromptTokens = h('vllm:request_prompt_tokens', 'Number of prefill tokens processed.', tokBuckets);
    this.reqGenTokens = h('vllm:request_generation_tokens', 'Number of generation tokens processed.', tokBuckets);
    this.reqMaxTokens = h('vllm:request_params_max_tokens', 'Histogram of the max_tokens request parameter.', tokBuckets);
    this.reqN = h('vllm:request_params_n', 'Histogram of the n request parameter.', [1, 2, 5, 10, 20]);
    this.iterationTokens = h('vllm:iteration_tokens_total', 'Histogram of number of tokens per engine_step.', ITERATION_BUCKETS);
    this.ttft = h('vllm:time_to_first_token_seconds', 'Histogram of time to first token in seconds.', TTFT_BUCKETS);
    this.itl = h('vllm:inter_token_latency_seconds', 'Histogram of inter-token latency in seconds.', ITL_BUCKETS);
    this.tpot = h('vllm:request_time_per_output_token_seconds', 'Histogram of time_per_output_token_seconds per request.', ITL_BUCKETS);
    this.e2e = h('vllm:e2e_request_latency_seconds', 'Histogram of e2e request latency in seconds.', LATENCY_BUCKETS);
    this.queueTime = h('vllm:request_queue_time_seconds', 'Histogram of time spent in WAITING phase for request.', LATENCY_BUCKETS);
    this.inferenceTime = h('vllm:request_inference_time_seconds', 'Histogram of time spent in RUNNING phase for request.', LATENCY_BUCKETS);
    this.prefillTime = h('vllm:request_prefill_time_seconds', 'Histogram of time spent in PREFILL phase for request.', LATENCY_BUCKETS);
    this.decodeTime = h('vllm:request_decode_time_seconds', 'Histogram of time spent in DECODE phase for request.', LATENCY_BUCKETS);
  }

  /** Increments a counter by `v` with the standard labels (plus `extra`). */
  inc(counter: Counter<string>, v: number, extra: Record<string, string> = {}): void {
    if (v > 0) counter.inc({ ...this.labels, ...extra }, v);
  }

  /** Records one histogram observation with the standard labels. */
  observe(h: Histogram<string>, v: number): void {
    if (Number.isFinite(v)) h.observe(this.labels, v);
  }

  /** Prometheus text exposition. */
  text(): Promise<string> {
    return this.registry.metrics();
  }
}
