/**
 * Tunnel gateways: members of workspace 0 (registered as endpoints are, role
 * gateway), and what each running gateway says of itself (i6pn_gateways).
 */
import { endpointIdOf, formatAddress, INFRA_WORKSPACE_ID, parseAddress, workspaceIdHex } from '../../lib/address.js';
import {
  GATEWAY_ROLE,
  GATEWAYS_BUCKET,
  INFRA_WORKSPACE_NAME,
  gatewayRecord,
  gatewayKey,
  type GatewayRecord,
  decodeRecord,
  type EndpointRecord,
} from '../../lib/schema.js';
import { StoreError, type Store, type InvalidEntry, readAll, checkInput, requireRegion } from '../../lib/store.js';
import { endpointEntries, validateEndpoints, sortEndpoints } from './endpoint-entries.js';
import { register, parseAddressArg, getEndpoint, removeEndpoint } from './endpoints.js';
import { DEFAULT_STALE_AFTER_MS } from './nodes.js';

/**
 * A tunnel gateway is a member of its region in workspace 0: registered as an
 * endpoint is (its address claimed once, never reused; one interface name per
 * node), with `role: "gateway"`, at fdaa:0:0:<region>:6a7e:<48 random bits>.
 * The runtime that starts the gateway makes its veth as for a container; the
 * agents bind, hook and route it; the dataplane lets it reach tunneled ports
 * only. What the running gateway says of itself (its public address, which
 * tunnel it serves on which port) is its record in GATEWAYS_BUCKET.
 */
export interface GatewaySpec {
  region: string;
  node: string;
  /** Host-side interface name (default gatewayIfname). */
  ifname?: string;
}

/** The interface name a gateway gets by default: "i6g" + the last 12 hex digits of its id (15 characters). */
export function gatewayIfname(address: Uint8Array): string {
  return `i6g${endpointIdOf(address).slice(4)}`;
}

/** Register a gateway of `region` on `node`; prints its new address. */
export async function addGateway(store: Store, spec: GatewaySpec): Promise<EndpointRecord> {
  checkInput({ region: spec.region });
  const region = await requireRegion(store, spec.region);
  return register(store, { workspace: { name: INFRA_WORKSPACE_NAME, id: INFRA_WORKSPACE_ID }, region }, {
    workspace: INFRA_WORKSPACE_NAME,
    region: spec.region,
    node: spec.node,
    ifname: spec.ifname ?? gatewayIfname,
    i6pn: true,
  });
}

export interface GatewayStatus {
  /** Its registration (an endpoint of workspace 0). */
  member: EndpointRecord;
  /** What the running gateway last wrote, or null when it never ran. */
  state: GatewayRecord | null;
  heartbeatAgeSeconds: number | null;
  /** No heartbeat for longer than the stale threshold (or never one). */
  stale: boolean;
}

/** The live records of a region's gateways (GATEWAYS_BUCKET), by address. */
export async function gatewayStates(store: Store, region: string | undefined, invalid: InvalidEntry[]): Promise<Map<string, GatewayRecord>> {
  const out = new Map<string, GatewayRecord>();
  for (const e of await readAll(store.gateways, region === undefined ? '>' : `${region}.*`)) {
    const d = decodeRecord(gatewayRecord, e.value);
    if (!d.ok) invalid.push({ bucket: GATEWAYS_BUCKET, key: e.key, reason: d.reason, message: d.message });
    else out.set(d.record.address, d.record);
  }
  return out;
}

export const ageOf = (r: { heartbeatAt: string } | null, now: number): number | null => (r ? Math.max(0, now - Date.parse(r.heartbeatAt)) : null);

export async function listGateways(store: Store, opts: { region?: string; staleAfterMs?: number } = {}): Promise<{ gateways: GatewayStatus[]; invalid: InvalidEntry[] }> {
  if (opts.region !== undefined) await requireRegion(store, opts.region);
  const { valid, invalid } = await validateEndpoints(
    store,
    await endpointEntries(store, { ...(opts.region !== undefined ? { region: opts.region } : {}), workspace: workspaceIdHex(INFRA_WORKSPACE_ID) }),
  );
  const states = await gatewayStates(store, opts.region, invalid);
  const now = Date.now();
  const gateways = sortEndpoints(valid.map((v) => v.record).filter((r) => r.role === GATEWAY_ROLE)).map((member): GatewayStatus => {
    const state = states.get(member.address) ?? null;
    const age = ageOf(state, now);
    return { member, state, heartbeatAgeSeconds: age === null ? null : Math.round(age / 100) / 10, stale: age === null || age > (opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS) };
  });
  return { gateways, invalid };
}

/** Remove a gateway: its registration (as `endpoint remove`) and its record. */
export async function removeGateway(store: Store, address: string): Promise<EndpointRecord> {
  const member = await getEndpoint(store, address);
  if (!member) throw new StoreError('not-found', `no live gateway has address ${formatAddress(parseAddressArg(address))}`, 'list gateways with `i6pnctl gateway list`');
  if (member.role !== GATEWAY_ROLE) throw new StoreError('invalid', `${member.address} is a tenant's endpoint, not a gateway`, 'remove it with `i6pnctl endpoint remove`');
  const removed = await removeEndpoint(store, address);
  await store.gateways.delete(gatewayKey(removed.region, parseAddress(removed.address))).catch(() => undefined);
  return removed;
}
