/**
 * Workspaces: a name and a random 32-bit id (its /48), the id never reused;
 * deleting one removes its endpoints and named clusters. Lookups by name and
 * id are in lib/store.ts.
 */
import { workspaceIdHex, workspaceSubnet } from '../../lib/address.js';
import {
  INFRA_WORKSPACE_NAME,
  SCHEMA_VERSION,
  WORKSPACES_BUCKET,
  decodeRecord,
  workspaceIdKey,
  workspaceNameKey,
  workspaceRecord,
  type EndpointRecord,
  type WorkspaceRecord,
} from '../../lib/schema.js';
import { StoreError, type Store, type InvalidEntry, isConflict, enc, readAll, readNamed, checkInput, requireWorkspace } from '../../lib/store.js';
import { endpointRefs, endpointEntries, validateEndpoints } from './endpoint-entries.js';
import { removeEndpointByKey } from './endpoints.js';

/**
 * Create a workspace with a fresh random id. The id key is claimed first
 * (drawn again while taken), then the name key. When the name is taken the id
 * key is marked deleted, so the id stays burnt and is never reused.
 */
export async function createWorkspace(store: Store, name: string): Promise<WorkspaceRecord> {
  checkInput({ workspace: name });
  if (name === INFRA_WORKSPACE_NAME) {
    throw new StoreError('invalid', `workspace name ${JSON.stringify(name)} is reserved (the tunnel gateways' workspace 0)`, 'choose another name');
  }
  const tries = 64;
  for (let i = 0; i < tries; i++) {
    const id = store.random.workspaceId();
    const record = workspaceRecord.parse({
      v: SCHEMA_VERSION,
      name,
      id,
      subnet: workspaceSubnet(id),
      createdAt: new Date().toISOString(),
    });
    let idRevision: number;
    try {
      idRevision = await store.workspaces.create(workspaceIdKey(id), enc(record));
    } catch (e) {
      if (isConflict(e)) continue; // random id taken (live or deleted): draw again
      throw e;
    }
    try {
      await store.workspaces.create(workspaceNameKey(name), enc(record));
    } catch (e) {
      const burnt: WorkspaceRecord = { ...record, deletedAt: new Date().toISOString() };
      await store.workspaces.update(workspaceIdKey(id), enc(burnt), idRevision).catch(() => undefined);
      if (isConflict(e)) throw new StoreError('exists', `workspace ${JSON.stringify(name)} already exists`, 'choose another name; `i6pnctl workspace list` shows the taken ones');
      throw e;
    }
    return record;
  }
  throw new StoreError('exhausted', `no free workspace id after ${tries} random draws`, 'check the random source; the 32-bit space cannot be full');
}

export async function listWorkspaces(store: Store): Promise<{ workspaces: WorkspaceRecord[]; invalid: InvalidEntry[] }> {
  const { records, invalid } = await readNamed(store.workspaces, WORKSPACES_BUCKET, workspaceRecord, workspaceNameKey);
  return { workspaces: records, invalid };
}

/**
 * Delete a workspace: its endpoints are removed first (refused while it has
 * any, unless `force`), then its name key is deleted (compare-and-set) and its
 * id key marked `deletedAt`, then endpoints are swept once more to catch one
 * registered concurrently, and its named clusters are deleted. The name can
 * be used again; the id cannot.
 */
export async function deleteWorkspace(
  store: Store,
  name: string,
  opts: { force?: boolean } = {},
): Promise<{ workspace: WorkspaceRecord; removedEndpoints: EndpointRecord[] }> {
  const { record, revision } = await requireWorkspace(store, name);
  const selection = { workspace: workspaceIdHex(record.id) };
  const before = await endpointRefs(store, selection);
  if (before.length > 0 && !opts.force) {
    throw new StoreError(
      'has-endpoints',
      `workspace ${JSON.stringify(name)} still has ${before.length} endpoint${before.length === 1 ? '' : 's'}`,
      'remove them with `i6pnctl endpoint remove ADDRESS`, or pass --force to remove them with the workspace',
    );
  }
  const removed: EndpointRecord[] = [];
  const sweep = async (): Promise<void> => {
    const keys = (await endpointRefs(store, selection)).map((r) => r.logical);
    for (let i = 0; i < keys.length; i += 64) {
      const done = await Promise.all(keys.slice(i, i + 64).map((k) => removeEndpointByKey(store, k).catch(() => null)));
      for (const r of done) if (r) removed.push(r);
    }
  };
  await sweep();
  try {
    await store.workspaces.delete(workspaceNameKey(name), { previousSeq: revision });
  } catch (e) {
    if (isConflict(e)) throw new StoreError('conflict', `workspace ${JSON.stringify(name)} changed while it was being deleted`, 'run the command again');
    throw e;
  }
  const deletedAt = new Date().toISOString();
  for (let i = 0; i < 8; i++) {
    const idEntry = await store.workspaces.get(workspaceIdKey(record.id));
    const current = idEntry && idEntry.operation === 'PUT' ? decodeRecord(workspaceRecord, idEntry.value) : null;
    const base = current?.ok ? current.record : record;
    try {
      const tomb = enc({ ...base, deletedAt });
      if (idEntry) await store.workspaces.update(workspaceIdKey(record.id), tomb, idEntry.revision);
      else await store.workspaces.create(workspaceIdKey(record.id), tomb);
      break;
    } catch (e) {
      if (!isConflict(e)) throw e;
    }
  }
  await sweep();
  // Its named clusters (their members went with the sweep).
  for (const e of await readAll(store.clusters, `*.${workspaceIdHex(record.id)}.*`)) {
    await store.clusters.delete(e.key, { previousSeq: e.revision }).catch(() => undefined);
  }
  return { workspace: { ...record, deletedAt }, removedEndpoints: removed };
}

/** Counts of a workspace's endpoints per region (for `workspace show`). */
export async function workspaceEndpointCounts(store: Store, workspace: WorkspaceRecord): Promise<{ total: number; byRegion: Record<string, number>; invalid: InvalidEntry[] }> {
  const byRegion: Record<string, number> = {};
  const { valid, invalid } = await validateEndpoints(store, await endpointEntries(store, { workspace: workspaceIdHex(workspace.id) }));
  for (const v of valid) byRegion[v.record.region] = (byRegion[v.record.region] ?? 0) + 1;
  return { total: valid.length, byRegion, invalid };
}
