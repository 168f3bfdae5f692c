/**
 * The isolation matrix: every ordered pair of endpoints, three probes each
 * (ICMPv6 echo, TCP, UDP), compared with what a policy oracle expects.
 *
 * `expect: 'policy'` is the enforce run (allowed pairs deliver, forbidden
 * ones deliver nothing); `expect: 'all'` is the control (no dataplane, or
 * monitor mode), where every pair must deliver on every probe — without it
 * a matrix of drops proves nothing.
 */
import { mapLimit } from './exec.js';
import type { FabricEndpoint } from './fabric.js';
import { type Expectation, type PolicyOracle, REASON_LEGEND, reasonCode } from './policy.js';
import { PROBE_KINDS, type ProbeDaemon, type ProbeKind, type ProbeResult, udpProbe } from './probes.js';

export interface MatrixOptions {
  oracle: PolicyOracle;
  expect: 'policy' | 'all';
  kinds?: readonly ProbeKind[];
  /** Pairs probed at once (each pair runs its probes in parallel). */
  concurrency?: number;
  /** ping's -W, in ms (rounded to seconds; default 1 s). */
  timeoutMs?: number;
  /** TCP connect and exchange (default 1.5 s). */
  tcpTimeoutMs?: number;
  /** How long after its send a datagram may still arrive (default 2 s). */
  udpTimeoutMs?: number;
  onPair?: (cell: MatrixCell, done: number, total: number) => void;
}

export interface MatrixCell {
  src: FabricEndpoint;
  dst: FabricEndpoint;
  expected: Expectation;
  probes: ProbeResult[];
  /** Probes that delivered, of those run. */
  delivered: number;
  /** What the run required of this pair: deliver on every probe, or on none. */
  mustDeliver: boolean;
  ok: boolean;
}

export interface MatrixResult {
  cells: MatrixCell[];
  unexpected: MatrixCell[];
  durationMs: number;
  kinds: readonly ProbeKind[];
}

export async function runMatrix(
  endpoints: readonly FabricEndpoint[],
  daemons: ReadonlyMap<string, ProbeDaemon>,
  opts: MatrixOptions,
): Promise<MatrixResult> {
  const kinds = opts.kinds ?? PROBE_KINDS;
  const timeoutMs = opts.timeoutMs ?? 1000;
  const pairs = endpoints.flatMap((src) => endpoints.filter((dst) => dst !== src).map((dst) => ({ src, dst })));
  const daemon = (name: string): ProbeDaemon => {
    const d = daemons.get(name);
    if (!d) throw new Error(`matrix: no probe daemon for ${name}`);
    return d;
  };
  const t0 = Date.now();
  let done = 0;
  // Phase one holds a concurrency slot for what takes time at the sender (ping,
  // TCP connect, the UDP send); UDP arrivals are awaited outside the slots, so
  // a generous UDP window costs the matrix its length once, not once per pair.
  const pending = await mapLimit(pairs, opts.concurrency ?? 24, async ({ src, dst }) => {
    const probes = kinds.map((k): Promise<ProbeResult> => {
      switch (k) {
        case 'icmp':
          return daemon(src.name).ping(dst.address, Math.max(1, Math.round(timeoutMs / 1000)));
        case 'tcp':
          return daemon(src.name).tcp(dst.address, opts.tcpTimeoutMs ?? 1500);
        case 'udp':
          return udpProbe(daemon(src.name), daemon(dst.name), opts.udpTimeoutMs ?? 2000);
      }
    });
    await Promise.all(probes.filter((_, i) => kinds[i] !== 'udp'));
    return { src, dst, probes };
  });
  const cells = await Promise.all(
    pending.map(async ({ src, dst, probes: running }) => {
      const probes = await Promise.all(running);
      const expected = opts.oracle(src, dst);
      const delivered = probes.filter((p) => p.delivered).length;
      const mustDeliver = opts.expect === 'all' || expected.allowed;
      const ok = mustDeliver ? delivered === probes.length : delivered === 0;
      const cell: MatrixCell = { src, dst, expected, probes, delivered, mustDeliver, ok };
      done += 1;
      opts.onPair?.(cell, done, pairs.length);
      return cell;
    }),
  );
  return { cells, unexpected: cells.filter((c) => !c.ok), durationMs: Date.now() - t0, kinds };
}

/** One line per unexpected cell, for assertion messages. */
export function describeUnexpected(r: MatrixResult): string {
  return r.unexpected
    .map(
      (c) =>
        `${c.src.name}→${c.dst.name}: expected ${c.mustDeliver ? 'delivery' : `drop (${c.expected.reason})`}, got ` +
        c.probes.map((p) => `${p.kind}:${p.delivered ? 'delivered' : (p.detail ?? 'lost')}`).join(' '),
    )
    .join('\n');
}

/**
 * The matrix as a person reads it: rows are sources, columns destinations.
 *   ✓     delivered on every probe        ✗ ws  delivered nothing (reason code)
 *   ½     some probes delivered           !     not what was expected
 * `reasonOf` may supply the reason actually observed (from the agents' counters).
 */
export function renderMatrix(
  r: MatrixResult,
  opts: { title?: string; reasonOf?: (c: MatrixCell) => string | undefined } = {},
): string {
  const names = [...new Set(r.cells.map((c) => c.src.name))];
  const eps = new Map(r.cells.map((c) => [c.src.name, c.src] as const));
  const cellOf = new Map(r.cells.map((c) => [`${c.src.name}>${c.dst.name}`, c] as const));
  const W = 6;
  const label = (n: string): string => {
    const e = eps.get(n)!;
    return `${n} ${e.workspace}${e.i6pn ? '' : '*'} ${e.node}`;
  };
  const lw = Math.max(...names.map((n) => label(n).length)) + 2;
  const lines: string[] = [];
  if (opts.title) lines.push(opts.title);
  lines.push(' '.repeat(lw) + names.map((n) => n.padEnd(W)).join(''));
  for (const s of names) {
    let row = label(s).padEnd(lw);
    for (const d of names) {
      const c = cellOf.get(`${s}>${d}`);
      let text: string;
      if (!c) text = '·';
      else if (c.delivered === c.probes.length) text = '✓';
      else if (c.delivered === 0) text = `✗ ${reasonCode(opts.reasonOf?.(c) ?? c.expected.reason)}`;
      else text = `½ ${c.probes.filter((p) => !p.delivered).map((p) => p.kind[0]).join('')}`;
      if (c && !c.ok) text += '!';
      row += text.padEnd(W);
    }
    lines.push(row);
  }
  const used = new Set(r.cells.filter((c) => c.delivered === 0).map((c) => reasonCode(opts.reasonOf?.(c) ?? c.expected.reason)));
  lines.push('');
  lines.push(`legend: ✓ delivered (${r.kinds.join(', ')})   ✗ dropped, with why:   ½ some probes lost (i/t/u)   ! unexpected   * no i6pn`);
  for (const code of used) lines.push(`        ${code.padEnd(4)} ${REASON_LEGEND[code] ?? code}`);
  lines.push(`${r.cells.length} pairs × ${r.kinds.length} probes in ${(r.durationMs / 1000).toFixed(1)} s; unexpected cells: ${r.unexpected.length}`);
  return lines.join('\n');
}

/** The same probe results judged against another expectation (e.g. the control read as an enforce run). */
export function rejudge(r: MatrixResult, oracle: PolicyOracle, expect: 'policy' | 'all'): MatrixResult {
  const cells = r.cells.map((c) => {
    const expected = oracle(c.src, c.dst);
    const mustDeliver = expect === 'all' || expected.allowed;
    return { ...c, expected, mustDeliver, ok: mustDeliver ? c.delivered === c.probes.length : c.delivered === 0 };
  });
  return { ...r, cells, unexpected: cells.filter((c) => !c.ok) };
}
