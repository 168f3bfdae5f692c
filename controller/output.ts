/**
 * What i6pnctl prints: aligned tables and key/value blocks for people, one
 * JSON document for programs (`--json`), and the one-line error and warning
 * formats.
 */
import { regionIdHex, workspaceIdHex } from '../lib/address.js';
import type { ClusterRecord, EndpointRecord, RegionRecord, WorkspaceRecord } from '../lib/schema.js';
import { type GatewayStatus } from './store/gateways.js';
import { type InvalidEntry } from '../lib/store.js';
import { type MigrateConflict, type MigrateReport } from './store/migrate.js';
import { type NodeStatus } from './store/nodes.js';
import { type TunnelStatus } from './store/tunnels.js';
import type { ExplainedEnd, Explanation } from './explain.js';

export interface Io {
  out(s: string): void;
  err(s: string): void;
}

export const processIo: Io = {
  out: (s) => process.stdout.write(s),
  err: (s) => process.stderr.write(s),
};

export function json(io: Io, value: unknown): void {
  io.out(`${JSON.stringify(value, null, 2)}\n`);
}

/** Columns padded to their widest cell; the last column is not padded. */
export function table(io: Io, header: string[], rows: string[][], indent = ''): void {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  for (const r of all) {
    io.out(`${indent}${r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd()}\n`);
  }
}

export function keyValues(io: Io, pairs: [string, string][]): void {
  const w = Math.max(...pairs.map(([k]) => k.length));
  for (const [k, v] of pairs) io.out(`${k.padEnd(w)}  ${v}\n`);
}

/** One line: "i6pnctl: error: <what> — <what to do>". */
export function errorLine(what: string, hint?: string): string {
  const flat = (s: string): string => s.replace(/\s*\n\s*/g, ' ').trim();
  return `i6pnctl: error: ${flat(what)}${hint ? ` — ${flat(hint)}` : ''}\n`;
}

/**
 * Entries that break the schema are reported, never applied or crashed on.
 * Each is named `<bucket>/<key>` as the store holds it (the key in that
 * bucket: `nats kv get <bucket> <key>` finds it), whatever the bucket.
 */
export function warnInvalid(io: Io, invalid: InvalidEntry[], outcome = 'not listed'): void {
  for (const i of invalid) {
    io.err(`i6pnctl: warning: invalid entry ${i.bucket}/${i.key} (${i.reason}: ${i.message}) — ${outcome}; fix or delete it, only i6pnctl should write the store\n`);
  }
}

/** What a list command read: its invalid entries warned on stderr, then all of it as JSON, or `table` for people. */
export function listing<R extends { invalid: InvalidEntry[] }>(io: Io, r: R, asJson: boolean | undefined, table: (r: R) => void): void {
  warnInvalid(io, r.invalid);
  if (asJson) json(io, r);
  else table(r);
}

/** Endpoints that `migrate` found with another value in their region's bucket. */
export function warnConflicts(io: Io, conflicts: MigrateConflict[]): void {
  for (const c of conflicts) {
    io.err(`i6pnctl: warning: conflict ${c.bucket}/${c.key} ${c.message} — compare the two with the nats CLI and fix or delete the wrong one\n`);
  }
}

export function migrateText(io: Io, r: MigrateReport): void {
  if (!r.found) {
    io.out(`nothing to migrate: there is no ${r.legacyBucket} bucket (the store keeps one endpoints bucket per region)\n`);
    return;
  }
  const pairs: [string, string][] = [
    ['legacy bucket', `${r.legacyBucket} (${r.entries} endpoint${r.entries === 1 ? '' : 's'})`],
    ['region buckets', r.buckets.length ? r.buckets.join(', ') : 'none (no region is registered)'],
    ['copied', String(r.copied)],
    ['already there', String(r.unchanged)],
  ];
  if (r.changedMeanwhile) pairs.push(['changed meanwhile', `${r.changedMeanwhile} (not copied; run i6pnctl migrate again)`]);
  pairs.push(['conflicts', `${r.conflicts.length}${r.conflicts.length ? ' (not overwritten; see the warnings)' : ''}`]);
  pairs.push(['invalid', `${r.invalid.length}${r.invalid.length ? ' (skipped; see the warnings)' : ''}`]);
  pairs.push(['old agents', r.oldAgents.length ? r.oldAgents.map((a) => `${a.name} (${a.version})`).join(', ') : 'none']);
  pairs.push([
    'next',
    r.finished
      ? `${r.legacyBucket} is deleted; i6pnctl writes the region buckets only`
      : `i6pnctl keeps writing both layouts; once every agent is upgraded: i6pnctl migrate --finish`,
  ]);
  keyValues(io, pairs);
}

export const regionIdText = (id: number): string => `0x${regionIdHex(id)}`;
export const workspaceIdText = (id: number): string => `0x${workspaceIdHex(id)}`;

export function regionsTable(io: Io, regions: RegionRecord[]): void {
  if (regions.length === 0) {
    io.out('no regions (add one with `i6pnctl region add NAME`)\n');
    return;
  }
  table(io, ['NAME', 'ID'], regions.map((r) => [r.name, `${regionIdText(r.id)} (${r.id})`]));
}

export function workspacesTable(io: Io, workspaces: WorkspaceRecord[]): void {
  if (workspaces.length === 0) {
    io.out('no workspaces (create one with `i6pnctl workspace create NAME`)\n');
    return;
  }
  table(
    io,
    ['NAME', 'ID', 'SUBNET', 'CREATED'],
    workspaces.map((w) => [w.name, workspaceIdText(w.id), w.subnet, w.createdAt]),
  );
}

export function endpointsTable(io: Io, endpoints: EndpointRecord[]): void {
  if (endpoints.length === 0) {
    io.out('no endpoints\n');
    return;
  }
  table(
    io,
    ['ADDRESS', 'WORKSPACE', 'REGION', 'NODE', 'IFNAME', 'I6PN', 'NAME', 'CLUSTER', 'CREATED'],
    endpoints.map((e) => [e.address, e.workspace, e.region, e.node, e.ifname, e.i6pn ? 'yes' : 'no', e.name ?? '-', e.cluster !== undefined ? `${e.cluster}/${e.rank}` : '-', e.createdAt]),
  );
}

export function clustersTable(io: Io, clusters: ClusterRecord[]): void {
  if (clusters.length === 0) {
    io.out('no named clusters (create one with `i6pnctl cluster create --name NAME ...`)\n');
    return;
  }
  table(io, ['NAME', 'WORKSPACE', 'REGION', 'SIZE', 'CREATED'], clusters.map((c) => [c.name, c.workspace, c.region, String(c.size), c.createdAt]));
}

/** A named cluster's members, by rank. */
export function clusterMembersTable(io: Io, cluster: ClusterRecord, members: EndpointRecord[]): void {
  io.out(`cluster ${cluster.name} (workspace ${cluster.workspace}, region ${cluster.region}): ${members.length} of ${cluster.size} members live\n`);
  if (members.length === 0) return;
  table(io, ['RANK', 'ADDRESS', 'NODE', 'IFNAME', 'I6PN'], members.map((m) => [String(m.rank), m.address, m.node, m.ifname, m.i6pn ? 'yes' : 'no']));
}

export function nodesTable(io: Io, nodes: NodeStatus[]): void {
  if (nodes.length === 0) {
    io.out('no nodes (agents register themselves when they start)\n');
    return;
  }
  table(
    io,
    ['NAME', 'REGION', 'VERSION', 'HEARTBEAT', 'AGE', 'STATUS'],
    nodes.map((n) => [n.name, n.region, n.version, n.heartbeatAt, `${n.heartbeatAgeSeconds}s`, n.stale ? 'STALE' : 'ok']),
  );
}

/**
 * fdaa:…:1 (acme, ams-1/ep-a1) → fdaa:…:2 (globex, ams-1/ep-g1): dropped
 *   stopped by from_endpoint on ams-1: cross_workspace — different workspaces: acme vs globex
 *   the hooks it meets (monitor mode counts each and lets it through):
 *     from_endpoint  ams-1  drop  cross_workspace  different workspaces: acme vs globex
 */
export function explainText(io: Io, r: Explanation, label: (e: ExplainedEnd) => string): void {
  io.out(`${label(r.from)} → ${label(r.to)}: ${r.delivered ? 'delivered' : 'dropped'}\n`);
  if (r.stop) io.out(`  stopped by ${r.stop.hook} on ${r.stop.node ?? 'the node that ran it'}: ${r.stop.reason} — ${r.stop.why}\n`);
  else io.out(`  ${r.why}\n`);
  io.out(r.delivered ? '  the hooks it meets:\n' : '  the hooks it meets (monitor mode counts each and lets it through):\n');
  table(io, ['HOOK', 'NODE', 'VERDICT', 'REASON', 'WHY'], r.path.map((s) => [s.hook, s.node ?? '(its node)', s.verdict, s.reason, s.verdict === 'pass' ? '' : s.why]), '    ');
}

export function gatewaysTable(io: Io, gateways: GatewayStatus[]): void {
  if (gateways.length === 0) {
    io.out('no gateways (register one with `i6pnctl gateway add --region REGION --node NODE`)\n');
    return;
  }
  table(
    io,
    ['ADDRESS', 'REGION', 'NODE', 'IFNAME', 'PUBLIC', 'TUNNELS', 'STATUS'],
    gateways.map((g) => [
      g.member.address,
      g.member.region,
      g.member.node,
      g.member.ifname,
      g.state?.publicAddress ?? '-',
      g.state ? String(g.state.listeners.length) : '-',
      g.state === null ? 'never ran' : g.stale ? 'STALE' : 'ok',
    ]),
  );
}

/** `[v6]:port` or `host:port`. */
const hostPort = (host: string, port: number): string => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

export function tunnelsTable(io: Io, tunnels: TunnelStatus[]): void {
  if (tunnels.length === 0) {
    io.out('no tunnels\n');
    return;
  }
  table(
    io,
    ['ID', 'ENDPOINT', 'WORKSPACE', 'REGION', 'PORT', 'TLS', 'PUBLIC'],
    tunnels.map((t) => [
      t.id,
      t.endpoint,
      t.workspace,
      t.region,
      `${t.proto}/${t.port}`,
      t.tls ? 'yes' : 'no',
      t.public.length
        ? t.public.map((p) => `${hostPort(p.publicAddress, p.port)}${p.stale ? ' (STALE)' : ''}`).join(', ')
        : t.refused.length
          ? `refused: ${t.refused.map((r) => r.reason).join('; ')}`
          : 'pending',
    ]),
  );
}
