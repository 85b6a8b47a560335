import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { readClusterFile, resolveCluster } from '../sim/cluster.js';
import { parseProfile } from '../sim/profiles.js';
import { REPO } from './helpers/sim.js';

const dir = mkdtempSync(join(tmpdir(), 'kvlab-cluster-'));
function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('built-in profiles', () => {
  it('every engine/profiles/*.json passes the profile schema', () => {
    const pdir = resolve(REPO, 'engine/profiles');
    const files = readdirSync(pdir).filter((f) => f.endsWith('.json'));
    expect(files.length).toBeGreaterThanOrEqual(2);
    for (const f of files) expect(() => parseProfile(JSON.parse(readFileSync(join(pdir, f), 'utf8')), f)).not.toThrow();
  });

  it('a broken profile names the bad field', () => {
    const p = JSON.parse(readFileSync(resolve(REPO, 'test/fixtures/profile-test.json'), 'utf8'));
    p.step.knots = [0, 10, 5];
    p.engine.maxNumSeqs = -1;
    expect(() => parseProfile(p, 'x.json')).toThrow(/x\.json: .*engine\.maxNumSeqs/);
  });
});

describe('cluster files', () => {
  it('reads YAML with instances, KDNs, link overrides and strategy parameters', () => {
    const f = file(
      'c.yaml',
      `profile: rtx5090x8-llama3-70b
instances:
  - { id: a, kvCapacityTokens: 50000 }
  - { id: b, maxNumSeqs: 4 }
kdns:
  - { id: k1, compression: 2, knowledge: [doc1, doc2] }
links:
  default: { bandwidthGbps: 25 }
  overrides: [ { kdn: k1, instance: b, bandwidthGbps: 1, latencyMs: 5 } ]
kvEventDelayMs: 40
strategyParams: { kvlab: { workWeight: 0.5 } }
sim: { stepNoiseCv: 0 }
`,
    );
    const rc = resolveCluster(readClusterFile(f), {}, 'rtx5090x8-llama3-70b');
    expect(rc.spec.instances.map((i) => i.id)).toEqual(['a', 'b']);
    expect(rc.spec.instances[0]!.engine.kvCapacityTokens).toBe(50000);
    expect(rc.spec.instances[1]!.engine.maxNumSeqs).toBe(4);
    expect(rc.spec.kdns[0]!.knowledge).toEqual(new Set(['doc1', 'doc2']));
    expect(rc.spec.links[0]![0]!.bandwidthGbps).toBe(25);
    expect(rc.spec.links[0]![1]).toMatchObject({ bandwidthGbps: 1, latencyMs: 5, efficiency: 0.825 });
    expect(rc.spec.kvEventDelayMs).toBe(40);
    expect(rc.strategyParams.kvlab).toEqual({ workWeight: 0.5 });
    expect(rc.stepNoiseCv).toBe(0);
  });

  it('CLI options override the file', () => {
    const f = file('d.json', JSON.stringify({ instances: 3, links: { default: { bandwidthGbps: 5 } } }));
    const rc = resolveCluster(readClusterFile(f), { instances: 2, kdnGbps: 40, kvCapacityTokens: Infinity }, 'rtx5090x8-llama3-70b');
    expect(rc.spec.instances).toHaveLength(2);
    expect(rc.spec.links[0]![1]!.bandwidthGbps).toBe(40);
    expect(rc.spec.instances[1]!.engine.kvCapacityTokens).toBe(Infinity);
  });

  it('errors name the file and the field', () => {
    expect(() => readClusterFile(file('e1.yaml', 'instances: -2\n'))).toThrow(/e1\.yaml: instances/);
    expect(() => readClusterFile(file('e2.yaml', 'links: { default: { efficiency: 3 } }\n'))).toThrow(/e2\.yaml: links\.default\.efficiency/);
    expect(() => readClusterFile(file('e3.yaml', 'bogus: 1\n'))).toThrow(/e3\.yaml: .*bogus/);
    expect(() => readClusterFile(file('e4.yaml', 'instances: [1, 2\n'))).toThrow(/e4\.yaml: not valid YAML/);
    expect(() => readClusterFile(join(dir, 'missing.yaml'))).toThrow(/missing\.yaml/);
    const f = file('e5.yaml', 'instances: 2\nlinks: { overrides: [ { kdn: kdn0, instance: zz, bandwidthGbps: 1 } ] }\n');
    expect(() => resolveCluster(readClusterFile(f), {}, 'rtx5090x8-llama3-70b')).toThrow(/links\.overrides\.0\.instance: unknown instance "zz"/);
    expect(() => resolveCluster(null, { profile: 'no-such-profile' }, 'x')).toThrow(/profile not found: no-such-profile/);
  });
});
