/**
 * Tunnels: one port of one tenant endpoint exposed through its region's
 * gateways, a record per (endpoint, protocol, port) in the region's tunnels
 * bucket. An endpoint's removal sweeps them (./endpoints.ts).
 */
import { randomBytes } from 'node:crypto';
import { type KV } from '@nats-io/kv';
import { formatAddress } from '../../lib/address.js';
import {
  GATEWAY_ROLE,
  TUNNEL_PROTOCOLS,
  tunnelBucketKey,
  tunnelRecord,
  tunnelsBucket,
  TUNNEL_ID_PATTERN,
  validateTunnelEntry,
  type TunnelProtocol,
  type TunnelRecord,
  SCHEMA_VERSION,
  type EndpointRecord,
  type RegionRecord,
} from '../../lib/schema.js';
import { StoreError, type Store, type InvalidEntry, isConflict, enc, getLive, readAll, checkInput, requireRegion } from '../../lib/store.js';
import { listRegions } from './regions.js';
import { parseAddressArg, getEndpoint } from './endpoints.js';
import { DEFAULT_STALE_AFTER_MS } from './nodes.js';
import { gatewayStates, ageOf } from './gateways.js';

/**
 * A tunnel exposes one port of one tenant endpoint through its region's
 * gateways. Its entry lives in the region's tunnels bucket under
 * `<workspace id>.<endpoint id>.<proto>.<port>` (tunnelBucketKey): creating
 * that key is the claim, so an (endpoint, protocol, port) has one tunnel at
 * most. Its id is 48 random bits (what people and `tunnel remove` use). The
 * agents fill the dataplane's tunnels map from the bucket; each gateway
 * listens for each tunnel on a port of its own choosing and says so in its
 * record, which `tunnel list` joins in.
 */
export interface TunnelSpec {
  /** The endpoint's address. */
  endpoint: string;
  port: number;
  proto?: TunnelProtocol;
  /** Must be the endpoint's region, when given. */
  region?: string;
  /** The gateway terminates TLS with its certificate. */
  tls?: boolean;
}

/** Where the public reaches a tunnel: one per gateway that serves it. */
export interface TunnelPublic {
  gateway: string;
  node: string;
  publicAddress: string;
  port: number;
  stale: boolean;
}

export interface TunnelStatus extends TunnelRecord {
  public: TunnelPublic[];
  /** Gateways that picked it up and could not serve it. */
  refused: { gateway: string; reason: string }[];
}

function checkTunnelInput(spec: TunnelSpec): TunnelProtocol {
  const proto = spec.proto ?? 'tcp';
  if (!(TUNNEL_PROTOCOLS as readonly string[]).includes(proto)) {
    throw new StoreError('invalid', `protocol ${JSON.stringify(proto)} cannot be tunneled`, `use ${TUNNEL_PROTOCOLS.join(' or ')} (the gateway relays TCP)`);
  }
  if (!Number.isInteger(spec.port) || spec.port < 1 || spec.port > 65535) {
    throw new StoreError('invalid', `port ${spec.port} is out of range`, 'use a port from 1 to 65535');
  }
  if (spec.region !== undefined) checkInput({ region: spec.region });
  return proto;
}

/** The live tenant endpoint a tunnel may expose, or the reason it may not. */
async function tunnelTarget(store: Store, address: string, region: string | undefined): Promise<EndpointRecord> {
  const ep = await getEndpoint(store, address);
  if (!ep) throw new StoreError('not-found', `endpoint ${formatAddress(parseAddressArg(address))} was removed`, 'list live endpoints with `i6pnctl endpoint list`');
  if (ep.role === GATEWAY_ROLE) throw new StoreError('invalid', `${ep.address} is a gateway, not a tenant's endpoint`, 'tunnel an endpoint listed by `i6pnctl endpoint list`');
  if (!ep.i6pn) throw new StoreError('invalid', `endpoint ${ep.address} has no i6pn`, 'a gateway reaches its endpoint over i6pn: tunnel an endpoint registered without --no-i6pn');
  if (region !== undefined && region !== ep.region) throw new StoreError('invalid', `endpoint ${ep.address} is in region ${ep.region}, not ${region}`, `leave --region out, or pass --region ${ep.region}`);
  return ep;
}

/** Record a tunnel. The gateways of its region pick it up; none need be running. */
export async function createTunnel(store: Store, spec: TunnelSpec): Promise<TunnelRecord> {
  const proto = checkTunnelInput(spec);
  const ep = await tunnelTarget(store, spec.endpoint, spec.region);
  const record = tunnelRecord.parse({
    v: SCHEMA_VERSION,
    id: randomBytes(6).toString('hex'),
    endpoint: ep.address,
    workspace: ep.workspace,
    workspaceId: ep.workspaceId,
    region: ep.region,
    regionId: ep.regionId,
    proto,
    port: spec.port,
    tls: spec.tls ?? false,
    createdAt: new Date().toISOString(),
  });
  const kv = await store.tunnels(ep.region);
  const key = tunnelBucketKey(record);
  let revision: number;
  try {
    revision = await kv.create(key, enc(record));
  } catch (e) {
    if (!isConflict(e)) throw e;
    const other = await getLive(kv, key);
    const d = other ? validateTunnelEntry(ep.region, ep.regionId, key, other.value) : null;
    throw new StoreError(
      'exists',
      `endpoint ${ep.address} already has a ${proto} tunnel to port ${spec.port}${d?.ok ? ` (id ${d.record.id})` : ''}`,
      'list tunnels with `i6pnctl tunnel list`; remove that one first to make it again',
    );
  }
  // The endpoint must still be there: a removal that swept its tunnels before this one was created would miss it.
  const now = await getEndpoint(store, ep.address).catch(() => null);
  if (!now || now.createdAt !== ep.createdAt) {
    await kv.delete(key, { previousSeq: revision }).catch(() => undefined);
    throw new StoreError('not-found', `endpoint ${ep.address} was removed while its tunnel was being created`, 'nothing was recorded');
  }
  return record;
}

/** Every valid tunnel of a region, with where it lives. */
async function regionTunnels(store: Store, region: RegionRecord, invalid: InvalidEntry[]): Promise<{ kv: KV; key: string; revision: number; record: TunnelRecord }[]> {
  const kv = await store.tunnels(region.name);
  const out: { kv: KV; key: string; revision: number; record: TunnelRecord }[] = [];
  for (const e of await readAll(kv, '>')) {
    const v = validateTunnelEntry(region.name, region.id, e.key, e.value);
    if (v.ok) out.push({ kv, key: e.key, revision: e.revision, record: v.record });
    else invalid.push({ bucket: tunnelsBucket(region.name), key: e.key, reason: v.reason, message: v.message });
  }
  return out;
}

async function regionsOf(store: Store, region: string | undefined): Promise<RegionRecord[]> {
  return region === undefined ? (await listRegions(store)).regions : [await requireRegion(store, region)];
}

export async function listTunnels(
  store: Store,
  filter: { region?: string; endpoint?: string; staleAfterMs?: number } = {},
): Promise<{ tunnels: TunnelStatus[]; invalid: InvalidEntry[] }> {
  if (filter.region !== undefined) checkInput({ region: filter.region });
  const endpoint = filter.endpoint === undefined ? undefined : formatAddress(parseAddressArg(filter.endpoint));
  const invalid: InvalidEntry[] = [];
  const now = Date.now();
  const tunnels: TunnelStatus[] = [];
  for (const region of await regionsOf(store, filter.region)) {
    const found = (await regionTunnels(store, region, invalid)).filter((t) => endpoint === undefined || t.record.endpoint === endpoint);
    if (found.length === 0) continue;
    const states = [...(await gatewayStates(store, region.name, invalid)).values()];
    for (const { record } of found) {
      const pub: TunnelPublic[] = [];
      const refused: TunnelStatus['refused'] = [];
      for (const g of states) {
        const age = ageOf(g, now)!;
        for (const l of g.listeners) if (l.tunnel === record.id) pub.push({ gateway: g.address, node: g.node, publicAddress: g.publicAddress, port: l.port, stale: age > (filter.staleAfterMs ?? DEFAULT_STALE_AFTER_MS) });
        for (const r of g.refused) if (r.tunnel === record.id) refused.push({ gateway: g.address, reason: r.reason });
      }
      tunnels.push({ ...record, public: pub, refused });
    }
  }
  tunnels.sort((a, b) => a.region.localeCompare(b.region) || a.endpoint.localeCompare(b.endpoint) || a.port - b.port);
  return { tunnels, invalid };
}

/** Remove the tunnel with this id: its gateways stop serving it, its agents close its port to them. */
export async function removeTunnel(store: Store, id: string): Promise<TunnelRecord> {
  if (!TUNNEL_ID_PATTERN.test(id)) throw new StoreError('invalid', `invalid tunnel id ${JSON.stringify(id)}`, 'pass the 12 hex digits `i6pnctl tunnel list` shows');
  for (const region of await regionsOf(store, undefined)) {
    for (const t of await regionTunnels(store, region, [])) {
      if (t.record.id !== id) continue;
      try {
        await t.kv.delete(t.key, { previousSeq: t.revision });
      } catch (e) {
        if (isConflict(e)) throw new StoreError('conflict', `tunnel ${id} changed while it was being removed`, 'run the command again');
        throw e;
      }
      return t.record;
    }
  }
  throw new StoreError('not-found', `no tunnel has id ${id}`, 'list tunnels with `i6pnctl tunnel list`');
}
