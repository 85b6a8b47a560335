/**
 * Phase timing of one simulated run (load, simulate, records, summary, timeseries), CPU and wall,
 * to find where the time goes. Usage: node dist/bench/phases.js [trace] [strategy] [instances]
 */
import { resolve } from 'node:path';
import { createStrategy } from '../engine/strategies/index.js';
import { closeSync, openSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { observed, summarize, timeseries, writeRecords } from '../sim/metrics.js';
import { clusterFor } from '../sim/run.js';
import { simulate } from '../sim/simulator.js';
import { loadTrace } from '../traces/load.js';

const trace = process.argv[2] ?? resolve(import.meta.dirname, '../../../shared/data/traces/mooncake/conversation_trace.jsonl');
const strategy = process.argv[3] ?? 'dynamo-kv';
const instances = Number(process.argv[4] ?? 16);

function lap(label: string, t0: { wall: number; cpu: NodeJS.CpuUsage }): { wall: number; cpu: NodeJS.CpuUsage } {
  const wall = performance.now();
  const cpu = process.cpuUsage();
  const dc = (cpu.user + cpu.system - t0.cpu.user - t0.cpu.system) / 1000;
  console.log(`${label.padEnd(12)} wall ${(wall - t0.wall).toFixed(1).padStart(8)} ms   cpu ${dc.toFixed(1).padStart(8)} ms`);
  return { wall, cpu };
}

let t = { wall: performance.now(), cpu: process.cpuUsage() };
const lt = await loadTrace(trace);
t = lap('load', t);
const rc = clusterFor(lt, { strategy, instances });
const o = simulate(lt.requests, { cluster: rc.spec, strategy: createStrategy(strategy), seed: 1, stepNoiseCv: 0.02 });
t = lap('simulate', t);
const obs = observed(o);
let bytes = 0;
const fd = openSync(join(tmpdir(), 'kvlab-phases-records.jsonl'), 'w');
writeRecords(o, obs, rc.spec.kdns.map((k) => k.id), (c) => {
  bytes += c.length;
  writeSync(fd, c);
});
closeSync(fd);
t = lap('records', t);
summarize(o, obs);
t = lap('summary', t);
timeseries(o, ['kdn0']);
t = lap('timeseries', t);
console.log(`events ${o.events}, records ${(bytes / 1e6).toFixed(1)} MB, rss ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MB`);
