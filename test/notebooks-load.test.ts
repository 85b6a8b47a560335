import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InputError, loadInputs, loadRun, parseRecords } from '../notebooks/load.js';
import { makeFixtures, writeRun, type FixturePaths } from './fixtures/notebooks/make-fixtures.js';

let root: string;
let fx: FixturePaths;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'kvlab-nb-load-'));
  fx = makeFixtures(join(root, 'fx'), { requests: 300, seeds: [1, 2] });
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('loadInputs', () => {
  it('loads an ab directory with every run it lists, strategy and seed from ab.json', () => {
    const inp = loadInputs([fx.abDir]);
    expect(inp.abs).toHaveLength(1);
    expect(inp.runs.map((r) => `${r.strategy}/${r.seed}`)).toEqual([
      'round-robin/1', 'round-robin/2', 'cacheroute/1', 'cacheroute/2', 'kvlab/1', 'kvlab/2',
    ]);
    expect(inp.runs[0]!.records!.length).toBe(300);
    expect(inp.runs[0]!.timeseries!.t_ms.length).toBeGreaterThan(0);
  });

  it('classifies sweep dirs, diff files, run dirs and parents of runs; de-duplicates runs', () => {
    const inp = loadInputs([fx.sweepDir, fx.diffFile, fx.runDirs[0]!, join(fx.abDir, 'kvlab')]);
    expect(inp.sweeps).toHaveLength(1);
    expect(inp.sweeps[0]!.entries.length).toBeGreaterThan(10);
    expect(inp.diffs).toHaveLength(1);
    expect(inp.runs.map((r) => r.strategy)).toEqual(['round-robin', 'kvlab', 'kvlab']);
    const again = loadInputs([fx.abDir, fx.runDirs[0]!]);
    expect(again.runs).toHaveLength(6);
  });

  it('finds the runs of a moved ab directory, and warns (not fails) for runs that are gone', () => {
    const moved = join(root, 'moved-ab');
    cpSync(fx.abDir, moved, { recursive: true });
    // paths as written on another machine
    const ab = JSON.parse(readFileSync(join(moved, 'ab.json'), 'utf8'));
    for (const [name, st] of Object.entries(ab.strategies) as [string, { runs: string[] }][]) {
      st.runs = st.runs.map((_, i) => `/elsewhere/runs/demo/${name}/seed-${i + 1}`);
    }
    writeFileSync(join(moved, 'ab.json'), JSON.stringify(ab));
    rmSync(join(moved, 'kvlab', 'seed-2'), { recursive: true });
    const inp = loadInputs([moved]);
    expect(inp.runs).toHaveLength(5);
    expect(inp.runs.every((r) => r.dir.startsWith(moved))).toBe(true);
    expect(inp.warnings.join('\n')).toMatch(/kvlab.*seed 2.*not found/);
  });

  it('errors name the missing file or field', () => {
    expect(() => loadInputs([join(root, 'nope')])).toThrow(/input not found: .*nope/);
    const empty = join(root, 'empty');
    mkdirSync(empty);
    expect(() => loadInputs([empty])).toThrow(/no report input found/);
    expect(() => loadInputs([])).toThrow(InputError);

    const bad = join(root, 'bad-summary');
    writeRun(bad, 'kvlab', 1, { requests: 20 });
    const s = JSON.parse(readFileSync(join(bad, 'summary.json'), 'utf8'));
    delete s.ttft_ms.p99;
    writeFileSync(join(bad, 'summary.json'), JSON.stringify(s));
    expect(() => loadRun(bad)).toThrow(/bad-summary\/summary.json: missing field "ttft_ms.p99"/);

    const badTs = join(root, 'bad-ts');
    writeRun(badTs, 'kvlab', 1, { requests: 20 });
    const ts = JSON.parse(readFileSync(join(badTs, 'timeseries.json'), 'utf8'));
    ts.instances.i0.hit_ratio.pop();
    writeFileSync(join(badTs, 'timeseries.json'), JSON.stringify(ts));
    expect(() => loadRun(badTs)).toThrow(/timeseries.json: field "instances.i0.hit_ratio" has \d+ values, expected \d+/);

    const badAb = join(root, 'bad-ab');
    mkdirSync(badAb);
    writeFileSync(join(badAb, 'ab.json'), JSON.stringify({ seeds: [1], strategies: { kvlab: {} } }));
    expect(() => loadInputs([badAb])).toThrow(/ab.json: missing field "strategies.kvlab.runs"/);

    const badSweep = join(root, 'bad-sweep');
    mkdirSync(badSweep);
    writeFileSync(join(badSweep, 'sweep.json'), JSON.stringify([{ params: {}, strategy: 'x', seed: 1 }]));
    expect(() => loadInputs([badSweep])).toThrow(/sweep.json: entry 0: missing field "summary"/);
  });

  it('parseRecords reports the line of a bad record', () => {
    const ok = '{"id":"r1","status":"rejected","observed":null}';
    expect(parseRecords(`${ok}\n\n${ok}\n`, 'f.jsonl')).toHaveLength(2);
    expect(() => parseRecords(`${ok}\n{"id":"r2","status":"ok","observed":{"e2e_ms":3}}\n`, 'f.jsonl')).toThrow('f.jsonl:2: missing field "observed.ttft_ms"');
    expect(() => parseRecords('{nope', 'f.jsonl')).toThrow(/f.jsonl:1: invalid JSON/);
  });

  it('a run without summary takes its strategy from the records and its seed from config', () => {
    const dir = join(root, 'records-only');
    writeRun(dir, 'cacheroute', 7, { requests: 30 });
    rmSync(join(dir, 'summary.json'));
    const r = loadRun(dir);
    expect(r.strategy).toBe('cacheroute');
    expect(r.seed).toBe(7);
    expect(r.summary).toBeNull();
  });
});

describe('records format details', () => {
  it('turns columnar alternatives into one object per option and reads Infinity as null with a warning', () => {
    const line = '{"id":"r1","status":"ok","observed":{"ttft_ms":5,"e2e_ms":9},"decision":{"strategy":"s","reason":"x","reused_tokens":0,"cached_tokens":0,' +
      '"alternatives":{"instance":["i0","i1"],"intent":["text","kvcache"],"score":[1.5,Infinity],"ttft_ms":[null,-Infinity]}}}';
    const warnings: string[] = [];
    const [r] = parseRecords(line + '\n', 'f.jsonl', (w) => warnings.push(w));
    expect(r!.decision!.alternatives).toEqual([{ instance: 'i0', intent: 'text', score: 1.5 }, { instance: 'i1', intent: 'kvcache' }]);
    expect(warnings).toEqual(['f.jsonl: 1 line(s) hold Infinity/NaN, which is not JSON (first: line 1); read as null']);
    // Infinity inside a string is left alone, and other JSON errors still fail
    expect(parseRecords('{"id":"Infinity","status":"rejected"}', 'g.jsonl')[0]!.id).toBe('Infinity');
    expect(() => parseRecords('{"id":"r1","status":"ok",Infinity}', 'g.jsonl')).toThrow(/g.jsonl:1: invalid JSON/);
  });
});
