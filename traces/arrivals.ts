/**
 * Arrival processes of benchmark clients, reproduced so that a run whose file states only its
 * process (not its send times) can be replayed as a distribution over seeds.
 */
import { gamma, makeRng } from './random.js';

/**
 * Send times (ms from the benchmark start) of `n` requests the way `vllm bench serve` spaces them
 * (vllm-project/vllm vllm/benchmarks/serve.py `get_request`, read at commit 009e6d4): gap_i ~
 * Gamma(shape = burstiness, scale = 1 / (rate · burstiness)) s for i = 0..n−1 (burstiness 1 =
 * Poisson), cumulated, then rescaled so that the last request is sent at exactly n / rate s
 * (vLLM's normalisation "to stabilise the throughput across seeds"). `rate` Infinity sends all at 0;
 * `burstiness` Infinity gives constant gaps 1/rate. The random stream is kvlab's seeded generator
 * (traces/random.ts), not numpy's: the same process, not the same draws.
 * @param rate requests per second (> 0, or Infinity)
 * @param burstiness gamma shape (> 0, or Infinity)
 * @throws RangeError for n < 0, rate <= 0 or burstiness <= 0
 */
export function vllmBenchArrivalsMs(n: number, rate: number, burstiness: number, seed: number): number[] {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`arrivals: n must be a non-negative integer (got ${n})`);
  if (!(rate > 0)) throw new RangeError(`arrivals: rate must be > 0 (got ${rate})`);
  if (!(burstiness > 0)) throw new RangeError(`arrivals: burstiness must be > 0 (got ${burstiness})`);
  if (rate === Infinity) return new Array<number>(n).fill(0);
  const rng = makeRng(seed, 'vllm-bench-arrivals');
  const cum: number[] = [];
  let t = 0;
  for (let i = 0; i < n; i++) {
    t += burstiness === Infinity ? 1 / rate : gamma(rng, burstiness, 1 / (rate * burstiness));
    cum.push(t);
  }
  if (n === 0 || t === 0) return cum;
  const factor = n / rate / t;
  return cum.map((x) => x * factor * 1000);
}
