/**
 * Clusters: `size` endpoints of one workspace and region placed round-robin
 * over nodes, all or nothing; a named cluster has a record (its claim) and
 * ranks its members, which `cluster swap` exchanges.
 */
import { endpointIdOf, workspaceIdHex } from '../../lib/address.js';
import {
  CLUSTERS_BUCKET,
  MAX_CLUSTER_SIZE,
  SCHEMA_VERSION,
  clusterKey,
  clusterRecord,
  decodeRecord,
  endpointKey,
  type ClusterRecord,
  type EndpointRecord,
} from '../../lib/schema.js';
import {
  StoreError,
  type Store,
  type InvalidEntry,
  isConflict,
  settleLimited,
  enc,
  getLive,
  readAll,
  decodeOrThrow,
  checkInput,
  requireRegion,
  requireWorkspace,
} from '../../lib/store.js';
import { type EndpointAt, endpointEntries, type ValidEndpoint, validateEndpoints, requireRegionLayout, rewriteEndpoint } from './endpoint-entries.js';
import { type Membership, type Resolved, resolve, register, confirmWorkspace, removeEndpointByKey } from './endpoints.js';

/**
 * The interface name `cluster create` gives each endpoint: "i6p" and the last
 * 12 hex digits of the endpoint id (15 characters, the Linux maximum). Random,
 * so unique per node in practice; the ifnames bucket catches the rare clash
 * and the endpoint then gets another address.
 */
export function clusterIfname(address: Uint8Array): string {
  return `i6p${endpointIdOf(address).slice(4)}`;
}

/**
 * Register `size` endpoints of one workspace in one region, placed round-robin
 * over `nodes`, with interface names from `clusterIfname`. All or nothing: if
 * one fails, those already registered are removed. With `name`, the cluster
 * is a named object: its record is claimed first in the clusters bucket
 * (unique per workspace and region), and member i records the cluster and
 * rank i (placement order). Returns the members in rank order.
 */
export async function createCluster(
  store: Store,
  opts: { workspace: string; region: string; size: number; nodes: string[]; i6pn?: boolean; name?: string },
): Promise<EndpointRecord[]> {
  if (!Number.isInteger(opts.size) || opts.size < 1 || opts.size > MAX_CLUSTER_SIZE) {
    throw new StoreError('invalid', `invalid cluster size ${opts.size}`, `use --size with a whole number from 1 to ${MAX_CLUSTER_SIZE}`);
  }
  if (opts.nodes.length === 0) throw new StoreError('invalid', 'no nodes to place the cluster on', 'pass --nodes a,b,c');
  checkInput({ nodes: opts.nodes, cluster: opts.name });
  const at = await resolve(store, opts.workspace, opts.region);
  let claim: { key: string; revision: number } | null = null;
  if (opts.name !== undefined) {
    const record = clusterRecord.parse({
      v: SCHEMA_VERSION,
      name: opts.name,
      workspace: at.workspace.name,
      workspaceId: at.workspace.id,
      region: at.region.name,
      regionId: at.region.id,
      size: opts.size,
      createdAt: new Date().toISOString(),
    });
    const key = clusterKey(at.region.name, at.workspace.id, opts.name);
    try {
      claim = { key, revision: await store.clusters.create(key, enc(record)) };
    } catch (e) {
      if (isConflict(e)) {
        throw new StoreError('exists', `cluster ${JSON.stringify(opts.name)} already exists in workspace ${at.workspace.name} region ${at.region.name}`, 'choose another --name; `i6pnctl cluster list` shows the taken ones');
      }
      throw e;
    }
  }
  const member = (i: number): Membership | undefined => (opts.name !== undefined ? { cluster: opts.name, rank: i } : undefined);
  // Bounded, so that a 10000-endpoint cluster does not flood the server.
  const settled = await settleLimited(Array.from({ length: opts.size }, (_, i) => i), 64, (i) =>
    register(store, at, { workspace: opts.workspace, region: opts.region, node: opts.nodes[i % opts.nodes.length]!, ifname: clusterIfname, i6pn: opts.i6pn ?? true }, member(i)),
  );
  const ok = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  const undoClaim = async (): Promise<void> => {
    if (claim) await store.clusters.delete(claim.key, { previousSeq: claim.revision }).catch(() => undefined);
  };
  if (failed) {
    await Promise.all(ok.map((r) => removeEndpointByKey(store, endpointKey(r)).catch(() => undefined)));
    await undoClaim();
    throw failed.reason;
  }
  try {
    await confirmWorkspace(store, at, ok);
  } catch (e) {
    await undoClaim();
    throw e;
  }
  return ok;
}

export interface ClusterRef {
  workspace: string;
  region: string;
  name: string;
}

/** A named cluster's record and its revision; StoreError 'not-found' when there is none. */
async function requireCluster(store: Store, ref: ClusterRef): Promise<{ at: Resolved; record: ClusterRecord; revision: number }> {
  checkInput({ cluster: ref.name });
  const at = await resolve(store, ref.workspace, ref.region);
  const e = await getLive(store.clusters, clusterKey(at.region.name, at.workspace.id, ref.name));
  if (!e) {
    throw new StoreError('not-found', `no cluster ${JSON.stringify(ref.name)} in workspace ${ref.workspace} region ${ref.region}`, 'list clusters with `i6pnctl cluster list`');
  }
  return { at, record: decodeOrThrow<ClusterRecord>(clusterRecord, CLUSTERS_BUCKET, e), revision: e.revision };
}

/** The live members of a named cluster, by rank (then address, should two ever share one). */
async function clusterMembers(store: Store, at: Resolved, name: string): Promise<{ members: ValidEndpoint[]; invalid: InvalidEntry[] }> {
  const { valid, invalid } = await validateEndpoints(store, await endpointEntries(store, { region: at.region.name, workspace: workspaceIdHex(at.workspace.id) }));
  const members = valid.filter((v) => v.record.cluster === name && v.record.workspaceId === at.workspace.id);
  members.sort((a, b) => a.record.rank! - b.record.rank! || a.record.address.localeCompare(b.record.address));
  return { members, invalid };
}

/** `cluster show`: the cluster and its live members by rank. */
export async function showCluster(store: Store, ref: ClusterRef): Promise<{ cluster: ClusterRecord; members: EndpointRecord[]; invalid: InvalidEntry[] }> {
  const { at, record } = await requireCluster(store, ref);
  const { members, invalid } = await clusterMembers(store, at, ref.name);
  return { cluster: record, members: members.map((m) => m.record), invalid };
}

/** Named clusters, optionally of one workspace and/or region, by region, workspace and name. */
export async function listClusters(store: Store, filter: { workspace?: string; region?: string } = {}): Promise<{ clusters: ClusterRecord[]; invalid: InvalidEntry[] }> {
  let ws = '*';
  if (filter.workspace !== undefined) ws = workspaceIdHex((await requireWorkspace(store, filter.workspace)).record.id);
  if (filter.region !== undefined) await requireRegion(store, filter.region);
  const clusters: ClusterRecord[] = [];
  const invalid: InvalidEntry[] = [];
  for (const e of await readAll(store.clusters, `${filter.region ?? '*'}.${ws}.*`)) {
    const d = decodeRecord(clusterRecord, e.value);
    if (!d.ok) invalid.push({ bucket: CLUSTERS_BUCKET, key: e.key, reason: d.reason, message: d.message });
    else if (clusterKey(d.record.region, d.record.workspaceId, d.record.name) !== e.key) invalid.push({ bucket: CLUSTERS_BUCKET, key: e.key, reason: 'key', message: 'key does not match the record' });
    else clusters.push(d.record);
  }
  clusters.sort((a, b) => a.region.localeCompare(b.region) || a.workspace.localeCompare(b.workspace) || a.name.localeCompare(b.name));
  return { clusters, invalid };
}

/**
 * Swap the members at two ranks of a named cluster (either rank may be
 * empty: the other member moves). The cluster record is updated first
 * (compare-and-set), which orders concurrent swaps; then each member's entry
 * (compare-and-set), the first undone if the second fails. Agents may see
 * the two entries change a moment apart. Returns the members by rank.
 */
export async function swapClusterRanks(store: Store, ref: ClusterRef, a: number, b: number): Promise<EndpointRecord[]> {
  await requireRegionLayout(store, 'changing ranks');
  const { at, record, revision } = await requireCluster(store, ref);
  for (const r of [a, b]) {
    if (!Number.isInteger(r) || r < 0 || r >= record.size) throw new StoreError('invalid', `rank ${r} is not in cluster ${ref.name} (ranks 0 to ${record.size - 1})`, 'pass two ranks of the cluster');
  }
  if (a === b) throw new StoreError('invalid', `ranks ${a} and ${b} are the same`, 'pass two different ranks');
  try {
    await store.clusters.update(clusterKey(at.region.name, at.workspace.id, ref.name), enc({ ...record, updatedAt: new Date().toISOString() }), revision);
  } catch (e) {
    if (isConflict(e)) throw new StoreError('conflict', `cluster ${ref.name} changed meanwhile`, 'run the command again');
    throw e;
  }
  const { members } = await clusterMembers(store, at, ref.name);
  const moves = members.filter((m) => m.record.rank === a || m.record.rank === b);
  if (moves.length === 0) throw new StoreError('not-found', `cluster ${ref.name} has no live member at rank ${a} or ${b}`, 'see `i6pnctl cluster show`');
  const done: { at: EndpointAt; record: EndpointRecord }[] = [];
  for (const m of moves) {
    const moved = { ...m.record, rank: m.record.rank === a ? b : a };
    try {
      await rewriteEndpoint(store, m.at, moved);
    } catch (e) {
      for (const d of done) {
        const now = await getLive(d.at.kv, d.at.key);
        if (now) await rewriteEndpoint(store, { ...d.at, entry: now }, d.record).catch(() => undefined);
      }
      throw e;
    }
    done.push({ at: m.at, record: m.record });
  }
  return (await clusterMembers(store, at, ref.name)).members.map((m) => m.record);
}

/** Remove a named cluster: its live members (as `endpoint remove` does), then its record. */
export async function deleteCluster(store: Store, ref: ClusterRef): Promise<{ cluster: ClusterRecord; removedEndpoints: EndpointRecord[] }> {
  const { at, record } = await requireCluster(store, ref);
  const removed: EndpointRecord[] = [];
  const { members } = await clusterMembers(store, at, ref.name);
  for (let i = 0; i < members.length; i += 64) {
    const done = await Promise.all(members.slice(i, i + 64).map((m) => removeEndpointByKey(store, m.at.logical).catch(() => null)));
    for (const r of done) if (r) removed.push(r);
  }
  const now = await getLive(store.clusters, clusterKey(at.region.name, at.workspace.id, ref.name));
  if (now) await store.clusters.delete(now.key, { previousSeq: now.revision }).catch(() => undefined);
  return { cluster: record, removedEndpoints: removed };
}
