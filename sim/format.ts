/**
 * Number formatting for kvlab's JSON outputs.
 */

const FRAC = ['', '.001', '.002', '.003', '.004', '.005', '.006', '.007', '.008', '.009'];

/**
 * A number as JSON text, 3 decimals (same text as String(Math.round(x·1000)/1000)); non-finite
 * values (Infinity, NaN) become null. Integer arithmetic on the common range: formatting doubles
 * is the main cost of writing records.jsonl.
 */
export function j3(x: number): string {
  if (!Number.isFinite(x)) return 'null';
  const v = Math.round(x * 1000);
  if (v > 2_000_000_000 || v < -2_000_000_000) return String(v / 1000);
  const neg = v < 0;
  const a = neg ? -v : v;
  const ip = (a / 1000) | 0;
  const f = a - ip * 1000;
  let out: string;
  if (f === 0) out = String(ip);
  else if (f < 10) out = ip + FRAC[f]!;
  else if (f < 100) out = ip + (f % 10 === 0 ? '.0' + f / 10 : '.0' + f);
  else out = ip + '.' + (f % 100 === 0 ? String(f / 100) : f % 10 === 0 ? String(f / 10) : String(f));
  return neg && a !== 0 ? '-' + out : out;
}

