/**
 * Endpoints: register (address, interface name, DNS name, entry), look up by
 * address or name, rename, list, peers, remove. Removing an endpoint sweeps
 * its tunnels and releases its claims.
 *
 * Uniqueness never comes from read-then-write. Every claim is a `kv.create`
 * (create-if-absent) or a `kv.update` / delete with the revision that was read
 * (compare-and-set):
 *
 *   - a region id, a workspace id and an address are claimed by creating their
 *     key; a random id that is taken is drawn again, a name that is taken is
 *     refused;
 *   - workspace id keys and address keys are never deleted, so neither is ever
 *     handed out twice (a deleted workspace's id key gets `deletedAt`, a removed
 *     endpoint's address key gets `state: "removed"`);
 *   - a workspace name key is deleted with the workspace, so the name can be
 *     used again, for a new workspace with a new id and subnet;
 *   - one endpoint per (node, ifname), claimed in the ifnames bucket;
 *   - one endpoint per name in a workspace and region, claimed in the names
 *     bucket, and one cluster per name, claimed by creating its record in the
 *     clusters bucket; a name claim is deleted with its endpoint (or when
 *     the endpoint is renamed), so the name can be used again.
 *
 * Writing an endpoint takes four steps (address, ifname, endpoint, then a check
 * that its workspace still exists). A failed step undoes the earlier ones; a
 * process killed between steps can leave an address burnt (never reused, by
 * design) or an ifname claimed, which `endpoint remove ADDRESS` clears.
 */
import { type KV } from '@nats-io/kv';
import {
  endpointIdOf,
  formatAddress,
  isPrivate,
  INFRA_WORKSPACE_ID,
  makeEndpointAddress,
  makeGatewayAddress,
  parseAddress,
  regionOf,
  workspaceIdHex,
  workspaceOf,
  workspaceSubnet,
} from '../../lib/address.js';
import {
  ADDRESSES_BUCKET,
  GATEWAY_ROLE,
  IFNAMES_BUCKET,
  NAMES_BUCKET,
  SCHEMA_VERSION,
  addressKey,
  addressRecord,
  decodeRecord,
  endpointBucketKey,
  endpointKey,
  ifnameKey,
  ifnameRecord,
  nameKey,
  nameRecord,
  isValidDnsLabel,
  type NameRecord,
  parseEndpointKey,
  validateEndpointEntry,
  workspaceNameKey,
  workspaceRecord,
  type AddressRecord,
  type EndpointRecord,
  type IfnameRecord,
  type RegionRecord,
  type WorkspaceRecord,
} from '../../lib/schema.js';
import {
  StoreError,
  type Store,
  type InvalidEntry,
  getRegion,
  isConflict,
  enc,
  getLive,
  readAll,
  decodeOrThrow,
  checkInput,
  parseAddressInput,
  requireRegion,
  requireWorkspace,
} from '../../lib/store.js';
import {
  ifLegacyExists,
  endpointRefs,
  endpointEntries,
  validateEndpoints,
  findEndpoint,
  deleteEndpointEntries,
  requireRegionLayout,
  rewriteEndpoint,
  sortEndpoints,
} from './endpoint-entries.js';

export interface EndpointSpec {
  workspace: string;
  region: string;
  node: string;
  /** Host-side interface name, or a rule that derives it from the address. */
  ifname: string | ((address: Uint8Array) => string);
  /** Default true. */
  i6pn?: boolean;
  /** Its DNS name, unique in its workspace and region. */
  name?: string;
}

/** A member's place in a named cluster (createCluster sets it). */
export interface Membership {
  cluster: string;
  rank: number;
}

export type Resolved = { workspace: Pick<WorkspaceRecord, 'name' | 'id'>; region: RegionRecord };

export async function resolve(store: Store, workspace: string, region: string): Promise<Resolved> {
  checkInput({ workspace, region });
  const [w, r] = await Promise.all([requireWorkspace(store, workspace), requireRegion(store, region)]);
  return { workspace: w.record, region: r };
}

/** Steps 1–3 of registration (with the name's claim), each undone if a later one fails. */
export async function register(store: Store, at: Resolved, spec: EndpointSpec, member?: Membership): Promise<EndpointRecord> {
  checkInput({ node: spec.node, ifname: typeof spec.ifname === 'string' ? spec.ifname : undefined, name: spec.name });
  const endpoints = await store.endpoints(at.region.name);
  const tries = 16;
  for (let i = 0; i < tries; i++) {
    const gateway = at.workspace.id === INFRA_WORKSPACE_ID;
    const addr = gateway ? makeGatewayAddress(at.region.id, store.random.endpointBits().subarray(2)) : makeEndpointAddress(at.workspace.id, at.region.id, store.random.endpointBits());
    const ifname = typeof spec.ifname === 'string' ? spec.ifname : spec.ifname(addr);
    const record: EndpointRecord = {
      v: SCHEMA_VERSION,
      address: formatAddress(addr),
      workspace: at.workspace.name,
      workspaceId: at.workspace.id,
      region: at.region.name,
      regionId: at.region.id,
      node: spec.node,
      ifname,
      i6pn: spec.i6pn ?? true,
      createdAt: new Date().toISOString(),
      ...(spec.name !== undefined ? { name: spec.name } : {}),
      ...(member ? { cluster: member.cluster, rank: member.rank } : {}),
      ...(gateway ? { role: GATEWAY_ROLE } : {}),
    };
    const key = endpointKey(record);
    // The same check the agent applies on read.
    const check = validateEndpointEntry(key, record);
    if (!check.ok) throw new StoreError('invalid', `endpoint would be invalid (${check.reason}: ${check.message})`, 'check the flags');

    // 1. The address: created once, never deleted.
    const addrRecord = addressRecord.parse({ v: SCHEMA_VERSION, address: record.address, endpointKey: key, state: 'active', createdAt: record.createdAt });
    let addrRevision: number;
    try {
      addrRevision = await store.addresses.create(addressKey(addr), enc(addrRecord));
    } catch (e) {
      if (isConflict(e)) continue; // handed out before (live or removed): draw again
      throw e;
    }
    const burnAddress = async (): Promise<void> => {
      const removed: AddressRecord = { ...addrRecord, state: 'removed', removedAt: new Date().toISOString() };
      await store.addresses.update(addressKey(addr), enc(removed), addrRevision).catch(() => undefined);
    };

    // 2. The interface name on its node.
    const ifRecord = ifnameRecord.parse({ v: SCHEMA_VERSION, node: spec.node, ifname, address: record.address, endpointKey: key, createdAt: record.createdAt });
    let ifRevision: number;
    try {
      ifRevision = await store.ifnames.create(ifnameKey(spec.node, ifname), enc(ifRecord));
    } catch (e) {
      await burnAddress();
      if (isConflict(e)) {
        if (typeof spec.ifname !== 'string') continue; // derived name clashed: new address, new name
        const other = await getLive(store.ifnames, ifnameKey(spec.node, ifname));
        const d = other ? decodeRecord(ifnameRecord, other.value) : null;
        throw new StoreError(
          'exists',
          `interface ${ifname} on node ${spec.node} is already used${d?.ok ? ` by endpoint ${d.record.address}` : ''}`,
          'choose another --ifname, or remove that endpoint first',
        );
      }
      throw e;
    }

    // 2b. Its name in its workspace and region.
    let release = async (): Promise<void> => {
      await store.ifnames.delete(ifnameKey(spec.node, ifname), { previousSeq: ifRevision }).catch(() => undefined);
      await burnAddress();
    };
    if (record.name !== undefined) {
      const nameRevision = await claimName(store, record, key).catch(async (e: unknown) => {
        await release();
        throw e;
      });
      const releaseIfname = release;
      release = async () => {
        await store.names.delete(nameKey(record.region, record.workspaceId, record.name!), { previousSeq: nameRevision }).catch(() => undefined);
        await releaseIfname();
      };
    }

    // 3. The endpoint itself, in its region's bucket: what agents apply. While
    // the first layout's bucket exists, there too, for agents not yet upgraded.
    const value = enc(record);
    const bucketKey = endpointBucketKey(record);
    let epRevision: number | null = null;
    try {
      epRevision = await endpoints.create(bucketKey, value);
      const legacy = await store.legacyEndpoints();
      // put with previousSeq 0 is create without kv.create's second try, whose read of a deleted bucket would wait for its timeout.
      if (legacy) await ifLegacyExists(store, () => legacy.put(key, value, { previousSeq: 0 }), 0);
    } catch (e) {
      if (epRevision !== null) await endpoints.delete(bucketKey, { previousSeq: epRevision }).catch(() => undefined);
      await release();
      throw e;
    }
    return record;
  }
  throw new StoreError('exhausted', `no free address in ${workspaceSubnet(at.workspace.id)} region ${at.region.name} after ${tries} random draws`, 'check the random source; 64 random bits cannot run out');
}

/**
 * Claim an endpoint's name in its workspace and region (create-if-absent);
 * returns the claim's revision. A taken name is StoreError 'exists', naming
 * the endpoint that holds it.
 */
async function claimName(store: Store, record: EndpointRecord, key: string): Promise<number> {
  const name = record.name!;
  const claim = nameRecord.parse({ v: SCHEMA_VERSION, name, region: record.region, workspaceId: record.workspaceId, address: record.address, endpointKey: key, createdAt: new Date().toISOString() });
  const k = nameKey(record.region, record.workspaceId, name);
  try {
    return await store.names.create(k, enc(claim));
  } catch (e) {
    if (!isConflict(e)) throw e;
    const other = await getLive(store.names, k);
    const d = other ? decodeRecord(nameRecord, other.value) : null;
    throw new StoreError(
      'exists',
      `name ${JSON.stringify(name)} is taken in workspace ${record.workspace} region ${record.region}${d?.ok ? ` by endpoint ${d.record.address}` : ''}`,
      'choose another --name; names are unique per workspace and region',
    );
  }
}

/** Release a name claim if it still points at `key` (compare-and-set). */
async function releaseName(store: Store, record: Pick<EndpointRecord, 'region' | 'workspaceId'>, name: string, key: string): Promise<void> {
  const k = nameKey(record.region, record.workspaceId, name);
  const claim = await getLive(store.names, k);
  if (!claim) return;
  const d = decodeRecord(nameRecord, claim.value);
  if (d.ok && d.record.endpointKey === key) await store.names.delete(k, { previousSeq: claim.revision }).catch(() => undefined);
}

/** Step 4: the workspace must still be the one resolved, or the endpoints are undone. */
export async function confirmWorkspace(store: Store, at: Resolved, records: EndpointRecord[]): Promise<void> {
  const now = await getLive(store.workspaces, workspaceNameKey(at.workspace.name));
  const d = now ? decodeRecord(workspaceRecord, now.value) : null;
  if (d?.ok && d.record.id === at.workspace.id) return;
  await Promise.all(records.map((r) => removeEndpointByKey(store, endpointKey(r)).catch(() => undefined)));
  throw new StoreError('not-found', `workspace ${JSON.stringify(at.workspace.name)} was deleted while the endpoint was being added`, 'create the workspace again and retry');
}

/** Register one endpoint; its address is new, unique and never reused. */
export async function addEndpoint(store: Store, spec: EndpointSpec): Promise<EndpointRecord> {
  const at = await resolve(store, spec.workspace, spec.region);
  const record = await register(store, at, spec);
  await confirmWorkspace(store, at, [record]);
  return record;
}

/**
 * Give an endpoint a name, another name, or none (`null`). The new name is
 * claimed first (create-if-absent), then the entry is rewritten
 * (compare-and-set), then the old name's claim is released; a failed step
 * undoes the claim. Returns the endpoint as it is now.
 */
export async function renameEndpoint(store: Store, address: string, name: string | null): Promise<EndpointRecord> {
  if (name !== null) checkInput({ name });
  await requireRegionLayout(store, 'renaming an endpoint');
  const { key, addr, state } = await endpointKeyOfAddress(store, address);
  if (state === 'removed') throw new StoreError('not-found', `endpoint ${formatAddress(addr)} was removed`, 'list live endpoints with `i6pnctl endpoint list`');
  const found = await findEndpoint(store, key);
  if (!found.current) throw new StoreError('not-found', `no endpoint has address ${formatAddress(addr)}`, 'list endpoints with `i6pnctl endpoint list`');
  const v = validateEndpointEntry(key, found.current.entry.value);
  if (!v.ok) throw new StoreError('corrupt', `entry ${found.current.bucket}/${found.current.key} is invalid (${v.reason}: ${v.message})`, 'fix or delete it with the nats CLI; only i6pnctl should write the store');
  const old = v.record;
  if ((old.name ?? null) === name) return old;
  const { name: _dropped, ...rest } = old;
  const next: EndpointRecord = name === null ? rest : { ...rest, name };
  let claimed: number | null = null;
  if (name !== null) claimed = await claimName(store, next, key);
  try {
    await rewriteEndpoint(store, found.current, next);
  } catch (e) {
    if (claimed !== null) await store.names.delete(nameKey(next.region, next.workspaceId, name!), { previousSeq: claimed }).catch(() => undefined);
    throw e;
  }
  if (old.name !== undefined) await releaseName(store, old, old.name, key);
  return next;
}

export function parseAddressArg(address: string): Uint8Array {
  const addr = parseAddressInput(address);
  if (!isPrivate(addr)) throw new StoreError('invalid', `address ${address} is not an i6pn address (not in fdaa::/16)`, 'pass an address printed by `i6pnctl endpoint add` or `endpoint list`');
  return addr;
}

async function endpointKeyOfAddress(store: Store, address: string): Promise<{ key: string; addr: Uint8Array; state: AddressRecord['state'] }> {
  const addr = parseAddressArg(address);
  const e = await getLive(store.addresses, addressKey(addr));
  if (!e) {
    // No claim: only an entry written past i6pnctl can have this address. Find it by its key, in any region's bucket.
    const refs = await endpointRefs(store, { workspace: workspaceIdHex(workspaceOf(addr)), endpoint: endpointIdOf(addr) });
    if (refs.length === 0) throw new StoreError('not-found', `no endpoint has address ${formatAddress(addr)}`, 'list endpoints with `i6pnctl endpoint list`');
    return { key: refs[0]!.logical, addr, state: 'active' };
  }
  const rec = decodeOrThrow<AddressRecord>(addressRecord, ADDRESSES_BUCKET, e);
  return { key: rec.endpointKey, addr, state: rec.state };
}

export async function getEndpoint(store: Store, address: string): Promise<EndpointRecord | null> {
  const { key, state } = await endpointKeyOfAddress(store, address);
  if (state === 'removed') return null;
  return liveEndpointByKey(store, key);
}

/** The valid live entry under an endpoint's store-wide key, or null; an invalid one is StoreError 'corrupt'. */
async function liveEndpointByKey(store: Store, key: string): Promise<EndpointRecord | null> {
  const found = await findEndpoint(store, key);
  const at = found.current ?? found.legacy;
  if (!at) return null;
  const v = validateEndpointEntry(at.logical, at.entry.value);
  if (!v.ok) throw new StoreError('corrupt', `entry ${at.bucket}/${at.key} is invalid (${v.reason}: ${v.message})`, 'fix or delete it with the nats CLI; only i6pnctl should write the store');
  return v.record;
}

/** What the store says of an address: the live endpoint that has it, a removed one and when, or none ever. */
export type AddressLookup =
  | { state: 'live'; record: EndpointRecord }
  | { state: 'removed'; address: string; endpointKey: string; removedAt: string | undefined }
  | { state: 'unknown'; address: string };

/**
 * The address's history in the ledger (i6pn_addresses, never deleted) and,
 * when active, its endpoint. An address outside fdaa::/16 is 'unknown'
 * without a lookup; one that is not an address is StoreError 'invalid'.
 */
export async function lookupAddress(store: Store, address: string): Promise<AddressLookup> {
  const addr = parseAddressInput(address);
  const canonical = formatAddress(addr);
  if (!isPrivate(addr)) return { state: 'unknown', address: canonical };
  const e = await getLive(store.addresses, addressKey(addr));
  if (e) {
    const rec = decodeOrThrow<AddressRecord>(addressRecord, ADDRESSES_BUCKET, e);
    if (rec.state === 'removed') return { state: 'removed', address: canonical, endpointKey: rec.endpointKey, removedAt: rec.removedAt };
  }
  // Active, or an entry written past i6pnctl (no claim): the endpoint entry says.
  const claimed = e !== null || (await endpointRefs(store, { workspace: workspaceIdHex(workspaceOf(addr)), endpoint: endpointIdOf(addr) })).length > 0;
  const record = claimed ? await getEndpoint(store, canonical) : null;
  return record ? { state: 'live', record } : { state: 'unknown', address: canonical };
}

/**
 * The live endpoint with this name: its store-wide name
 * `<region>.<workspace id>.<endpoint id>`, or `<node>/<ifname>` (the host-side
 * veth a runtime named on its node). null when no live endpoint has it;
 * StoreError 'invalid' for something that is neither form.
 */
export async function findEndpointByName(store: Store, name: string): Promise<EndpointRecord | null> {
  const slash = name.indexOf('/');
  let key: string;
  if (slash >= 0) {
    const node = name.slice(0, slash);
    const ifname = name.slice(slash + 1);
    checkInput({ node, ifname });
    const claim = await getLive(store.ifnames, ifnameKey(node, ifname));
    if (!claim) return null;
    key = decodeOrThrow<IfnameRecord>(ifnameRecord, IFNAMES_BUCKET, claim).endpointKey;
  } else if (parseEndpointKey(name)) {
    key = name;
  } else if (isValidDnsLabel(name)) {
    // Its name in DNS (endpoint add --name): unique in a workspace and region, so it names one endpoint only when no other workspace or region uses it.
    const claims = await readAll(store.names, `*.*.${name}`);
    if (claims.length === 0) return null;
    if (claims.length > 1) {
      throw new StoreError('invalid', `${claims.length} endpoints are named ${JSON.stringify(name)} (in other workspaces or regions)`, 'pass its address, <node>/<ifname> or <region>.<workspace id>.<endpoint id>');
    }
    key = decodeOrThrow<NameRecord>(nameRecord, NAMES_BUCKET, claims[0]!).endpointKey;
  } else {
    throw new StoreError('invalid', `${JSON.stringify(name)} is not an endpoint address or name`, 'pass an address, its name, <region>.<workspace id>.<endpoint id>, or <node>/<ifname>');
  }
  const region = parseEndpointKey(key)?.region;
  if (region === undefined || !(await getRegion(store, region))) return null;
  return liveEndpointByKey(store, key);
}

/**
 * Remove an endpoint by its store-wide key: the endpoint entry (agents stop
 * allowing it; both layouts during an upgrade), then its interface claim, then
 * its address is marked removed (kept forever). Returns the removed record, or
 * null if there was no valid endpoint under the key.
 */
export async function removeEndpointByKey(store: Store, key: string): Promise<EndpointRecord | null> {
  const found = await findEndpoint(store, key);
  const at = found.current ?? found.legacy;
  if (!at) return null;
  const v = validateEndpointEntry(key, at.entry.value);
  await deleteEndpointEntries(store, found, key);
  if (!v.ok) return null;
  await removeTunnelsOf(store, v.record);
  await finishRemoval(store, v.record, v.addr, key);
  return v.record;
}

async function finishRemoval(
  store: Store,
  record: Pick<EndpointRecord, 'node' | 'ifname' | 'address'> & Partial<Pick<EndpointRecord, 'name' | 'region' | 'workspaceId'>>,
  addr: Uint8Array,
  key: string,
): Promise<void> {
  if (record.name !== undefined && record.region !== undefined && record.workspaceId !== undefined) {
    await releaseName(store, { region: record.region, workspaceId: record.workspaceId }, record.name, key);
  }
  const ik = record.node && record.ifname ? ifnameKey(record.node, record.ifname) : null;
  const claim = ik ? await getLive(store.ifnames, ik) : null;
  if (ik && claim) {
    const d = decodeRecord(ifnameRecord, claim.value);
    if (d.ok && d.record.endpointKey === key) await store.ifnames.delete(ik, { previousSeq: claim.revision }).catch(() => undefined);
  }
  for (let i = 0; i < 8; i++) {
    const a = await getLive(store.addresses, addressKey(addr));
    if (!a) {
      // An endpoint that was never claimed (written by hand): claim its address as removed, so it is never handed out.
      const now = new Date().toISOString();
      const removed = addressRecord.parse({ v: SCHEMA_VERSION, address: formatAddress(addr), endpointKey: key, state: 'removed', createdAt: now, removedAt: now });
      try {
        await store.addresses.create(addressKey(addr), enc(removed));
        return;
      } catch (err) {
        if (!isConflict(err)) throw err;
        continue;
      }
    }
    const d = decodeRecord(addressRecord, a.value);
    if (d.ok && d.record.state === 'removed') return;
    const removed: AddressRecord = d.ok
      ? { ...d.record, state: 'removed', removedAt: new Date().toISOString() }
      : { v: SCHEMA_VERSION, address: formatAddress(addr), endpointKey: key, state: 'removed', createdAt: new Date().toISOString(), removedAt: new Date().toISOString() };
    try {
      await store.addresses.update(addressKey(addr), enc(removed), a.revision);
      return;
    } catch (err) {
      if (!isConflict(err)) throw err;
    }
  }
}

/** Remove the endpoint that has `address`. Its address is never handed out again. */
export async function removeEndpoint(store: Store, address: string): Promise<EndpointRecord> {
  const { key, addr, state } = await endpointKeyOfAddress(store, address);
  if (state === 'removed') throw new StoreError('not-found', `endpoint ${formatAddress(addr)} was already removed`, 'list live endpoints with `i6pnctl endpoint list`');
  const found = await findEndpoint(store, key);
  const at = found.current ?? found.legacy;
  if (!at) {
    // Registration or removal died half-way: clear what is left of it.
    for (const c of await readAll(store.ifnames, '>')) {
      const d = decodeRecord(ifnameRecord, c.value);
      if (d.ok && d.record.endpointKey === key) await store.ifnames.delete(c.key, { previousSeq: c.revision }).catch(() => undefined);
    }
    await finishRemoval(store, { node: '', ifname: '', address: formatAddress(addr) }, addr, key);
    throw new StoreError('not-found', `no endpoint has address ${formatAddress(addr)} (a half-finished registration was cleared)`, 'nothing more to do');
  }
  const v = validateEndpointEntry(key, at.entry.value);
  await deleteEndpointEntries(store, found, formatAddress(addr));
  if (!v.ok) {
    await finishRemoval(store, { node: '', ifname: '', address: formatAddress(addr) }, addr, key);
    throw new StoreError('corrupt', `endpoint entry ${at.bucket}/${at.key} was invalid (${v.reason}: ${v.message}); it has been deleted`, 'nothing more to do');
  }
  await removeTunnelsOf(store, v.record);
  await finishRemoval(store, v.record, v.addr, key);
  return v.record;
}

export interface EndpointFilter {
  workspace?: string;
  region?: string;
  node?: string;
}

/** Endpoints matching the filter, and the entries under the same keys that break the schema. */
export async function listEndpoints(store: Store, filter: EndpointFilter = {}): Promise<{ endpoints: EndpointRecord[]; invalid: InvalidEntry[] }> {
  let wsHex = '*';
  if (filter.workspace !== undefined) wsHex = workspaceIdHex((await requireWorkspace(store, filter.workspace)).record.id);
  if (filter.region !== undefined) await requireRegion(store, filter.region);
  checkInput({ node: filter.node });
  // One region's bucket, or every one's; one wildcard filter per keys call (nats-server 2.9 takes no more).
  const { valid, invalid } = await validateEndpoints(
    store,
    await endpointEntries(store, { ...(filter.region !== undefined ? { region: filter.region } : {}), ...(wsHex !== '*' ? { workspace: wsHex } : {}) }),
  );
  const endpoints = valid.map((e) => e.record).filter((r) => filter.node === undefined || r.node === filter.node);
  return { endpoints: sortEndpoints(endpoints), invalid };
}

/**
 * The endpoints that `address` may reach: live i6pn endpoints of the same
 * workspace in the same region, itself excluded. An endpoint registered
 * without i6pn reaches no private address, so it has no peers.
 */
export async function peersOf(store: Store, address: string): Promise<{ endpoint: EndpointRecord; peers: EndpointRecord[]; invalid: InvalidEntry[] }> {
  const endpoint = await getEndpoint(store, address);
  if (!endpoint) throw new StoreError('not-found', `no live endpoint has address ${formatAddress(parseAddressArg(address))}`, 'list endpoints with `i6pnctl endpoint list`');
  const addr = parseAddress(endpoint.address);
  const peers: EndpointRecord[] = [];
  const invalid: InvalidEntry[] = [];
  // A gateway reaches tunneled ports only (`tunnel list`), no peer.
  if (endpoint.i6pn && endpoint.role !== GATEWAY_ROLE) {
    const read = await validateEndpoints(store, await endpointEntries(store, { region: endpoint.region, workspace: workspaceIdHex(workspaceOf(addr)) }));
    invalid.push(...read.invalid);
    for (const v of read.valid) {
      if (v.record.address === endpoint.address || !v.record.i6pn) continue;
      if (workspaceOf(v.addr) !== workspaceOf(addr) || regionOf(v.addr) !== regionOf(addr)) continue;
      peers.push(v.record);
    }
  }
  return { endpoint, peers: sortEndpoints(peers), invalid };
}

/** An endpoint is removed: so are its tunnels (any entry under its key prefix, valid or not). */
async function removeTunnelsOf(store: Store, endpoint: EndpointRecord): Promise<void> {
  if (endpoint.role === GATEWAY_ROLE) return;
  let kv: KV;
  try {
    kv = await store.tunnels(endpoint.region);
  } catch (e) {
    if (e instanceof StoreError && e.code === 'not-found') return; // the region is gone, and its tunnels with it
    throw e;
  }
  for (const e of await readAll(kv, `${endpointBucketKey(endpoint)}.>`)) {
    await kv.delete(e.key, { previousSeq: e.revision }).catch(async (err: unknown) => {
      if (!isConflict(err)) throw err;
      await kv.delete(e.key); // changed meanwhile: the endpoint is gone all the same
    });
  }
}
