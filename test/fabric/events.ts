/**
 * Drop events on the fabric, as an operator sees them: `i6pnctl observe`
 * (in-process, controller/program.ts run) over the window of a matrix run,
 * and what they must say of it; `i6pnctl explain` for every pair, and how it
 * must agree with what the kernel did.
 */
import { run } from '../../controller/program.js';
import type { Explanation } from '../../controller/explain.js';
import { decodeDropEvent, type DropEventRecord } from '../../lib/events.js';
import type { MatrixCell, MatrixResult } from './matrix.js';
import type { ProbeKind } from './probes.js';

/** `i6pnctl observe --since <since> --json [args]`, from the stream: the events, validated. */
export async function observeSince(natsUrl: string, since: Date, args: readonly string[] = []): Promise<DropEventRecord[]> {
  let stdout = '';
  let stderr = '';
  const code = await run(['node', 'i6pnctl', '--nats', natsUrl, 'observe', '--since', since.toISOString(), '--json', ...args], {
    out: (s) => (stdout += s),
    err: (s) => (stderr += s),
  });
  if (code !== 0 || stderr !== '') throw new Error(`i6pnctl observe ${args.join(' ')}: exit ${code}: ${stderr}`);
  return stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const d = decodeDropEvent(l);
      if (!d.ok) throw new Error(`observe printed an invalid event (${d.message}): ${l}`);
      return d.record;
    });
}

/** `i6pnctl explain FROM TO --json` in-process: the answer and the exit status. */
export async function explainPair(natsUrl: string, from: string, to: string): Promise<{ code: number; answer: Explanation }> {
  let stdout = '';
  let stderr = '';
  const code = await run(['node', 'i6pnctl', '--nats', natsUrl, 'explain', from, to, '--json'], { out: (s) => (stdout += s), err: (s) => (stderr += s) });
  if (code > 1) throw new Error(`i6pnctl explain ${from} ${to}: exit ${code}: ${stderr}`);
  return { code, answer: JSON.parse(stdout) as Explanation };
}

export const PROTO_OF: Record<ProbeKind, string> = { icmp: 'icmpv6', tcp: 'tcp', udp: 'udp' };

const pairOf = (e: DropEventRecord): string => `${e.src?.address}>${e.dst?.address}`;
const cellKey = (c: MatrixCell): string => `${c.src.address}>${c.dst.address}`;

/**
 * What the events of an enforce-mode matrix run must say (problems as
 * lines; none: all good): every probe of every forbidden pair appears, with
 * the reason, node and hook of its first drop, verdict drop, and the
 * workspaces of both ends; no event is about an allowed pair; every event
 * is about a pair of the matrix.
 */
export function checkEnforceEvents(r: MatrixResult, events: readonly DropEventRecord[]): string[] {
  const problems: string[] = [];
  const byPair = new Map<string, DropEventRecord[]>();
  for (const e of events) byPair.set(pairOf(e), [...(byPair.get(pairOf(e)) ?? []), e]);
  const cells = new Map(r.cells.map((c) => [cellKey(c), c] as const));
  for (const c of r.cells) {
    const got = byPair.get(cellKey(c)) ?? [];
    if (c.expected.allowed) {
      if (got.length) problems.push(`${c.src.name}→${c.dst.name} is allowed, yet ${got.length} events: ${got.map((e) => `${e.hook}/${e.reason}`).join(', ')}`);
      continue;
    }
    for (const kind of r.kinds) {
      const want = { node: c.expected.node, hook: c.expected.hook, verdict: 'drop', reason: c.expected.reason, proto: PROTO_OF[kind] };
      const hit = got.find(
        (e) =>
          e.node === want.node && e.hook === want.hook && e.verdict === want.verdict && e.reason === want.reason && e.proto === want.proto &&
          e.src?.workspace === c.src.workspace && e.dst?.workspace === c.dst.workspace && e.wouldDrop === false,
      );
      if (!hit) problems.push(`${c.src.name}→${c.dst.name} ${kind}: no event ${JSON.stringify(want)} with workspaces ${c.src.workspace}→${c.dst.workspace}; got ${JSON.stringify(got.map((e) => [e.node, e.hook, e.verdict, e.reason, e.proto, e.src?.workspace, e.dst?.workspace]))}`);
    }
  }
  for (const [pair, es] of byPair) {
    if (!cells.has(pair)) problems.push(`${es.length} events about ${pair}, not a pair of the matrix: ${es.map((e) => `${e.node}/${e.hook}/${e.reason}`).join(', ')}`);
  }
  return problems;
}

/**
 * The monitor-mode run: every probe of every forbidden pair appears as
 * would_drop at every hook where explain says the packet would be dropped,
 * on the node and with the reason it says (monitor mode lets the packet go
 * on, so each of them sees it); nothing is dropped; no event is about an
 * allowed pair.
 */
export function checkMonitorEvents(r: MatrixResult, events: readonly DropEventRecord[], explanations: ReadonlyMap<string, Explanation>): string[] {
  const problems: string[] = [];
  const byPair = new Map<string, DropEventRecord[]>();
  for (const e of events) byPair.set(pairOf(e), [...(byPair.get(pairOf(e)) ?? []), e]);
  for (const e of events) if (e.verdict !== 'would_drop' || !e.wouldDrop) problems.push(`an event in monitor mode is ${e.verdict}: ${JSON.stringify(e)}`);
  for (const c of r.cells) {
    const got = byPair.get(cellKey(c)) ?? [];
    const x = explanations.get(cellKey(c));
    if (!x) throw new Error(`no explanation for ${c.src.name}→${c.dst.name}`);
    if (x.delivered) {
      if (got.length) problems.push(`${c.src.name}→${c.dst.name} is allowed, yet ${got.length} events`);
      continue;
    }
    for (const step of x.path.filter((s) => s.verdict === 'drop')) {
      for (const kind of r.kinds) {
        const hit = got.find((e) => e.node === step.node && e.hook === step.hook && e.reason === step.reason && e.proto === PROTO_OF[kind] && e.src?.workspace === c.src.workspace && e.dst?.workspace === c.dst.workspace);
        if (!hit) problems.push(`${c.src.name}→${c.dst.name} ${kind}: no would_drop at ${step.hook} on ${step.node} (${step.reason}); got ${JSON.stringify(got.map((e) => [e.node, e.hook, e.reason, e.proto]))}`);
      }
    }
  }
  return problems;
}

/**
 * explain against the kernel on an enforce-mode matrix run: a pair is
 * delivered on every probe exactly when explain says delivered (and exits 0,
 * else 1), and a dropped pair's first drop (its events) is where explain
 * says it stops, with the same reason.
 */
export function checkExplanations(r: MatrixResult, explanations: ReadonlyMap<string, { code: number; answer: Explanation }>, events: readonly DropEventRecord[]): string[] {
  const problems: string[] = [];
  for (const c of r.cells) {
    const x = explanations.get(cellKey(c));
    if (!x) {
      problems.push(`no explanation for ${c.src.name}→${c.dst.name}`);
      continue;
    }
    const delivered = c.delivered === c.probes.length;
    if (x.answer.delivered !== delivered || x.code !== (delivered ? 0 : 1)) {
      problems.push(`${c.src.name}→${c.dst.name}: delivered ${c.delivered}/${c.probes.length}, explain says ${x.answer.delivered ? 'delivered' : 'dropped'} (exit ${x.code})`);
      continue;
    }
    if (delivered) continue;
    const stop = x.answer.stop!;
    const seen = events.filter((e) => pairOf(e) === cellKey(c));
    if (!seen.some((e) => e.hook === stop.hook && e.node === stop.node && e.reason === stop.reason)) {
      problems.push(`${c.src.name}→${c.dst.name}: explain stops it at ${stop.hook} on ${stop.node} (${stop.reason}); the kernel: ${JSON.stringify(seen.map((e) => [e.node, e.hook, e.reason]))}`);
    }
  }
  return problems;
}
