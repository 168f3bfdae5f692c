/**
 * The dataplane's counters as the matrix checks them: per node, keyed
 * `hook/verdict/reason` → packets. Sources: the pinned maps (static
 * dataplane) or an agent's /metrics (`i6pn_packets_total`).
 */
import type { MatrixResult } from './matrix.js';

export type Counters = Map<string, number>;
export type CounterSource = (node: string) => Promise<Counters>;

export async function snapshot(nodes: readonly string[], source: CounterSource): Promise<Map<string, Counters>> {
  return new Map(await Promise.all(nodes.map(async (n) => [n, await source(n)] as const)));
}

/** Parse `i6pn_packets_total{hook=…,verdict=…,reason=…} N` lines of a Prometheus text exposition. */
export function parsePacketsTotal(text: string): Counters {
  const out: Counters = new Map();
  for (const line of text.split('\n')) {
    if (!line.startsWith('i6pn_packets_total{')) continue;
    const m = /^i6pn_packets_total\{([^}]*)\}\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = Object.fromEntries([...m[1]!.matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    const key = `${labels['hook']}/${labels['verdict']}/${labels['reason']}`;
    out.set(key, (out.get(key) ?? 0) + Number(m[2]));
  }
  return out;
}

export async function scrapeMetrics(url: string): Promise<Counters> {
  const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
  if (!r.ok) throw new Error(`GET ${url}: ${r.status}`);
  return parsePacketsTotal(await r.text());
}

/** How much each counter moved between two snapshots (only keys that moved). */
export function delta(before: Map<string, Counters>, after: Map<string, Counters>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [node, a] of after) {
    const b = before.get(node) ?? new Map();
    for (const [k, v] of a) {
      const d = v - (b.get(k) ?? 0);
      if (d !== 0) out.set(`${node}/${k}`, d);
    }
  }
  return out;
}

/**
 * What a matrix run must have counted: for every forbidden pair, each of its
 * probes is at least one packet stopped (or, in monitor mode, let through as
 * would_drop) at the expected node, hook and reason. Keys `node/hook/verdict/reason`.
 */
export function expectedDrops(r: MatrixResult, verdict: 'drop' | 'would_drop'): Map<string, number> {
  const out = new Map<string, number>();
  for (const c of r.cells) {
    if (c.expected.allowed || !c.expected.node || !c.expected.hook) continue;
    const k = `${c.expected.node}/${c.expected.hook}/${verdict}/${c.expected.reason}`;
    out.set(k, (out.get(k) ?? 0) + c.probes.length);
  }
  return out;
}

/**
 * Problems with the counters of a matrix run, as lines (empty: all good).
 * enforce: every expected drop key moved by at least its pair count, no other
 * drop reason moved anywhere, nothing was counted would_drop.
 * monitor: every expected would_drop key moved as much, nothing was dropped.
 */
export function checkCounters(r: MatrixResult, moved: Map<string, number>, mode: 'enforce' | 'monitor'): string[] {
  const verdict = mode === 'enforce' ? 'drop' : 'would_drop';
  const want = expectedDrops(r, verdict);
  const problems: string[] = [];
  for (const [k, n] of want) {
    const got = moved.get(k) ?? 0;
    if (got < n) problems.push(`${k}: moved by ${got}, expected at least ${n}`);
  }
  for (const [k, n] of moved) {
    const v = k.split('/')[2];
    if (mode === 'enforce' && v === 'drop' && !want.has(k)) problems.push(`${k}: moved by ${n}, no pair should be dropped there`);
    if (mode === 'enforce' && v === 'would_drop') problems.push(`${k}: moved by ${n} in enforce mode`);
    if (mode === 'monitor' && v === 'drop') problems.push(`${k}: moved by ${n} in monitor mode`);
  }
  return problems;
}

/**
 * The agent's membership apply latency histogram (KV write → map update):
 * observations in total and within `le` seconds.
 */
export async function applyLatency(url: string, le = '1'): Promise<{ count: number; within: number }> {
  const r = await fetch(url, { signal: AbortSignal.timeout(3000) });
  const text = await r.text();
  const num = (re: RegExp): number => Number(re.exec(text)?.[1] ?? NaN);
  return {
    count: num(/^i6pn_membership_apply_latency_seconds_count(?:\{\})? (\S+)$/m),
    within: num(new RegExp(`^i6pn_membership_apply_latency_seconds_bucket\\{le="${le.replace('.', '\\.')}"\\} (\\S+)$`, 'm')),
  };
}
