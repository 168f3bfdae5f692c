/**
 * The membership store's vocabulary: bucket names, keys and the versioned JSON
 * records stored under them. The controller validates with these schemas
 * before it writes and the agent validates with them when it reads, so both
 * programs agree on what a valid entry is.
 *
 * Buckets and keys:
 *
 *   i6pn_regions     name.<region>                      RegionRecord
 *                    id.<region id, 4 hex>              RegionRecord
 *   i6pn_workspaces  name.<workspace>                   WorkspaceRecord (live workspaces only)
 *                    id.<workspace id, 8 hex>           WorkspaceRecord (kept forever, `deletedAt`
 *                                                       set on delete, so an id is never reused)
 *   i6pn_endpoints_<region>  <ws id 8 hex>.<ep id 16 hex>  EndpointRecord, one bucket per region
 *                    (history 1: an agent reads its region's bucket whole, with no
 *                    filter for the server to evaluate; see endpointsBucket())
 *   i6pn_addresses   <address, 32 hex>                  AddressRecord (never deleted: an address is
 *                                                       handed out once; `state` becomes "removed")
 *   i6pn_ifnames     <node>.<ifname as hex>             IfnameRecord (one endpoint per host-side
 *                                                       interface name on a node; deleted with the endpoint)
 *   i6pn_nodes       <node>                             NodeRecord (written by agents)
 *   i6pn_names       <region>.<ws id 8 hex>.<name>      NameRecord (one endpoint per name in a workspace
 *                                                       and region; deleted with the endpoint or the name)
 *   i6pn_clusters    <region>.<ws id 8 hex>.<cluster>   ClusterRecord (a named cluster; its members are
 *                                                       the endpoints whose record names it, with a rank)
 *   i6pn_tunnels_<region>  <ws id 8 hex>.<ep id 16 hex>.<proto>.<port>  TunnelRecord, one bucket per
 *                    region, history 1 (the key is the claim: one tunnel per endpoint, protocol
 *                    and port); followed by the region's agents and gateways
 *   i6pn_gateways    <region>.<gateway address, 32 hex>  GatewayRecord (written by each gateway:
 *                                                       where it listens for which tunnel)
 *
 * A tunnel gateway is also a member of its region's endpoints bucket, in
 * workspace 0 (INFRA_WORKSPACE_ID, lib/address.ts): an EndpointRecord with
 * `role: "gateway"`, so agents bind and route its veth like any member's.
 *
 * Every value carries `v: 1`. A reader that meets another version treats the
 * entry as invalid rather than guessing.
 */
import { z } from 'zod';
import {
  addressHex,
  endpointIdOf,
  formatAddress,
  isPrivate,
  isRegionId,
  isGatewayAddress,
  isWorkspaceId,
  parseAddress,
  regionIdHex,
  regionOf,
  workspaceIdHex,
  workspaceOf,
  workspaceSubnet,
} from './address.js';

export const SCHEMA_VERSION = 1 as const;

export const REGIONS_BUCKET = 'i6pn_regions';
export const WORKSPACES_BUCKET = 'i6pn_workspaces';
/**
 * The endpoints of one region live in a bucket of their own, named by the
 * region: an agent follows exactly its region by reading one stream from its
 * first message, which costs the server nothing per key (a filtered or
 * last-per-subject consumer on a shared bucket costs it a scan of every key).
 */
export const ENDPOINTS_BUCKET_PREFIX = 'i6pn_endpoints_';
/** Values kept per key in an endpoints bucket: only the last one matters (claims keep their own history). */
export const ENDPOINTS_HISTORY = 1;
/**
 * The single endpoints bucket of the first layout (`<region>.<ws>.<ep>` keys,
 * history 5). `i6pnctl migrate` moves its entries into the region buckets.
 */
export const LEGACY_ENDPOINTS_BUCKET = 'i6pn_endpoints';
export const ADDRESSES_BUCKET = 'i6pn_addresses';
export const IFNAMES_BUCKET = 'i6pn_ifnames';
export const NODES_BUCKET = 'i6pn_nodes';
export const NAMES_BUCKET = 'i6pn_names';
export const CLUSTERS_BUCKET = 'i6pn_clusters';
export const GATEWAYS_BUCKET = 'i6pn_gateways';
/** The tunnels of one region live in a bucket of their own, as its endpoints do (its agents and gateways read it). */
export const TUNNELS_BUCKET_PREFIX = 'i6pn_tunnels_';

/** The endpoints bucket of a region. Region names are valid bucket-name characters. */
export function endpointsBucket(region: string): string {
  if (!isValidName(region)) throw new Error(`invalid region name ${JSON.stringify(region)}`);
  return `${ENDPOINTS_BUCKET_PREFIX}${region}`;
}

/** The region whose endpoints bucket this is, or null. */
export function regionOfEndpointsBucket(bucket: string): string | null {
  if (!bucket.startsWith(ENDPOINTS_BUCKET_PREFIX)) return null;
  const region = bucket.slice(ENDPOINTS_BUCKET_PREFIX.length);
  return isValidName(region) ? region : null;
}

/** The tunnels bucket of a region. */
export function tunnelsBucket(region: string): string {
  if (!isValidName(region)) throw new Error(`invalid region name ${JSON.stringify(region)}`);
  return `${TUNNELS_BUCKET_PREFIX}${region}`;
}

// ---------------------------------------------------------------- names

/**
 * Region and workspace names: a lowercase letter, then up to 30 lowercase
 * letters, digits or dashes. Safe as one NATS key token (no dots, no wildcards).
 */
export const NAME_PATTERN = /^[a-z][a-z0-9-]{0,30}$/;

/**
 * Node names follow the Kubernetes node-name rules (lowercase DNS labels joined
 * by dots, at most 63 characters here) so that `spec.nodeName` can be used as is.
 * Each label is a NATS key token.
 */
export const NODE_NAME_PATTERN = /^(?=.{1,63}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;

/**
 * Host-side interface names: what Linux accepts (1 to 15 bytes, not "." or
 * "..", no "/", ":" or white space), narrowed to letters, digits, "_", "." and "-".
 */
export const IFNAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;

/**
 * Endpoint and cluster names, which DNS serves (`<name>.<zone>`,
 * `<cluster>.cluster.<zone>`): one lowercase DNS label (RFC 1123), a letter
 * first, a letter or digit last, letters, digits and dashes between, at
 * most 63. A letter first keeps them apart from ranks, which are numbers.
 */
export const DNS_LABEL_PATTERN = /^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
/** Ranks of a cluster's members: 0 .. size - 1, and a cluster has at most this many members. */
export const MAX_CLUSTER_SIZE = 10_000;

export function isValidDnsLabel(s: unknown): s is string {
  return typeof s === 'string' && DNS_LABEL_PATTERN.test(s);
}

export function isValidName(s: unknown): s is string {
  return typeof s === 'string' && NAME_PATTERN.test(s);
}
export const isValidRegionName = isValidName;
export const isValidWorkspaceName = isValidName;
export function isValidNodeName(s: unknown): s is string {
  return typeof s === 'string' && NODE_NAME_PATTERN.test(s);
}
export function isValidIfname(s: unknown): s is string {
  return typeof s === 'string' && IFNAME_PATTERN.test(s);
}

const NAME_RULE = 'a lowercase letter followed by up to 30 lowercase letters, digits or dashes';
const NODE_NAME_RULE = 'lowercase DNS labels (letters, digits, dashes) joined by dots, at most 63 characters';
const IFNAME_RULE = 'a Linux interface name: 1 to 15 letters, digits, "_", "." or "-", not starting with "." or "-"';
const DNS_LABEL_RULE = 'a DNS label: a lowercase letter, then up to 62 lowercase letters, digits or dashes, not ending with a dash';

/** A name given at the edge (a CLI flag) that breaks its rule: what was wrong, and the rule to follow. */
export class InvalidNameError extends Error {
  override readonly name = 'InvalidNameError';
  constructor(
    readonly what: string,
    readonly rule: string,
  ) {
    super(`${what}: use ${rule}`);
  }
}

/** Throws an InvalidNameError that states the rule, for input at the edge (CLI flags). */
export function assertName(kind: 'region' | 'workspace', s: string): string {
  if (!isValidName(s)) throw new InvalidNameError(`invalid ${kind} name ${JSON.stringify(s)}`, NAME_RULE);
  return s;
}
export function assertNodeName(s: string): string {
  if (!isValidNodeName(s)) throw new InvalidNameError(`invalid node name ${JSON.stringify(s)}`, NODE_NAME_RULE);
  return s;
}
export function assertIfname(s: string): string {
  if (!isValidIfname(s)) throw new InvalidNameError(`invalid interface name ${JSON.stringify(s)}`, IFNAME_RULE);
  return s;
}
export function assertDnsLabel(kind: 'endpoint' | 'cluster', s: string): string {
  if (!isValidDnsLabel(s)) throw new InvalidNameError(`invalid ${kind} name ${JSON.stringify(s)}`, DNS_LABEL_RULE);
  return s;
}

export const nameSchema = z.string().regex(NAME_PATTERN, `must be ${NAME_RULE}`);
export const nodeNameSchema = z.string().regex(NODE_NAME_PATTERN, `must be ${NODE_NAME_RULE}`);
export const ifnameSchema = z.string().regex(IFNAME_PATTERN, `must be ${IFNAME_RULE}`);
export const dnsLabelSchema = z.string().regex(DNS_LABEL_PATTERN, `must be ${DNS_LABEL_RULE}`);
const rankSchema = z.number().int().min(0).max(MAX_CLUSTER_SIZE - 1);
const timestamp = z.iso.datetime();
/** The exact pattern the timestamp schema checks (the agent's fast decoder tests with it). */
export const TIMESTAMP_PATTERN: RegExp = (timestamp as unknown as { _zod: { def: { pattern: RegExp } } })._zod.def.pattern;
const workspaceId = z.number().refine(isWorkspaceId, 'must be a non-zero 32-bit unsigned integer');
const regionId = z.number().refine(isRegionId, 'must be a non-zero 16-bit unsigned integer');
const version = z.literal(SCHEMA_VERSION);

// ---------------------------------------------------------------- records

export const regionRecord = z.object({
  v: version,
  name: nameSchema,
  id: regionId,
});
export type RegionRecord = z.infer<typeof regionRecord>;

export const workspaceRecord = z
  .object({
    v: version,
    name: nameSchema,
    id: workspaceId,
    subnet: z.string(),
    createdAt: timestamp,
    /** Set on the id key when the workspace is deleted; the id stays taken. */
    deletedAt: timestamp.optional(),
  })
  .refine((w) => w.subnet === workspaceSubnet(w.id), {
    message: 'subnet does not match the workspace id',
    path: ['subnet'],
  });
export type WorkspaceRecord = z.infer<typeof workspaceRecord>;

/** A tunnel gateway's role in its EndpointRecord, and the workspace name it carries (workspace 0 has no entry of its own). */
export const GATEWAY_ROLE = 'gateway';
export const INFRA_WORKSPACE_NAME = 'infrastructure';

export const endpointRecord = z
  .object({
    v: version,
    /** Canonical (RFC 5952) spelling, in fdaa:W:W:R::/64 of its workspace and region. */
    address: z.string(),
    workspace: nameSchema,
    /** A tenant's workspace id; 0 (infrastructure) for a gateway only. */
    workspaceId: z.number().int().min(0).max(0xffff_ffff),
    region: nameSchema,
    regionId,
    node: nodeNameSchema,
    /** Host side of the endpoint's veth on `node`. */
    ifname: ifnameSchema,
    /** false: the endpoint has an address but may reach no fdaa:: destination. */
    i6pn: z.boolean(),
    createdAt: timestamp,
    /** Its name in DNS, unique in its workspace and region (claimed in NAMES_BUCKET). Optional: older entries have none. */
    name: dnsLabelSchema.optional(),
    /** The named cluster it belongs to (CLUSTERS_BUCKET), with its rank in placement order: both or neither. */
    cluster: dnsLabelSchema.optional(),
    rank: rankSchema.optional(),
    /** A tunnel gateway (workspace 0), not a tenant's endpoint. */
    role: z.literal(GATEWAY_ROLE).optional(),
  })
  .refine((e) => (e.cluster === undefined) === (e.rank === undefined), {
    message: 'cluster and rank go together',
    path: ['rank'],
  })
  .refine((r) => (r.workspaceId === 0) === (r.role === GATEWAY_ROLE) && (r.role !== GATEWAY_ROLE || (r.workspace === INFRA_WORKSPACE_NAME && r.i6pn)), {
    message: `workspace id 0 is infrastructure: a gateway (role "${GATEWAY_ROLE}", workspace "${INFRA_WORKSPACE_NAME}", i6pn) has it, nothing else does`,
    path: ['workspaceId'],
  });
export type EndpointRecord = z.infer<typeof endpointRecord>;

export const addressRecord = z.object({
  v: version,
  address: z.string(),
  endpointKey: z.string(),
  state: z.enum(['active', 'removed']),
  createdAt: timestamp,
  removedAt: timestamp.optional(),
});
export type AddressRecord = z.infer<typeof addressRecord>;

export const ifnameRecord = z.object({
  v: version,
  node: nodeNameSchema,
  ifname: ifnameSchema,
  address: z.string(),
  endpointKey: z.string(),
  createdAt: timestamp,
});
export type IfnameRecord = z.infer<typeof ifnameRecord>;

/** An endpoint name's claim: who holds `<region>.<ws id>.<name>`. */
export const nameRecord = z.object({
  v: version,
  name: dnsLabelSchema,
  region: nameSchema,
  workspaceId,
  address: z.string(),
  endpointKey: z.string(),
  createdAt: timestamp,
});
export type NameRecord = z.infer<typeof nameRecord>;

/** A named cluster of one workspace in one region: its members carry its name and their rank. */
export const clusterRecord = z.object({
  v: version,
  name: dnsLabelSchema,
  workspace: nameSchema,
  workspaceId,
  region: nameSchema,
  regionId,
  /** Members at creation, ranks 0 .. size - 1 (members removed since leave their rank empty). */
  size: z.number().int().min(1).max(MAX_CLUSTER_SIZE),
  createdAt: timestamp,
  /** Set by every change of the members' ranks (compare-and-set on this record orders them). */
  updatedAt: timestamp.optional(),
});
export type ClusterRecord = z.infer<typeof clusterRecord>;

export const nodeRecord = z.object({
  v: version,
  name: nodeNameSchema,
  region: nameSchema,
  version: z.string().min(1).max(64),
  startedAt: timestamp,
  heartbeatAt: timestamp,
});
export type NodeRecord = z.infer<typeof nodeRecord>;

/** The transport protocols a tunnel carries (the gateway relays TCP). */
export const TUNNEL_PROTOCOLS = ['tcp'] as const;
export type TunnelProtocol = (typeof TUNNEL_PROTOCOLS)[number];
/** IP protocol numbers, as the dataplane's tunnels map keys them. */
export const IP_PROTOCOL: Record<TunnelProtocol, number> = { tcp: 6 };
export const TUNNEL_ID_PATTERN = /^[0-9a-f]{12}$/;
const tunnelId = z.string().regex(TUNNEL_ID_PATTERN, 'must be 12 lowercase hex digits');
const port = z.number().int().min(1).max(65535);

export const tunnelRecord = z.object({
  v: version,
  /** 48 random bits: what `tunnel list` shows and `tunnel remove` takes. */
  id: tunnelId,
  /** The endpoint's canonical address (a tenant's, with i6pn, in this region). */
  endpoint: z.string(),
  workspace: nameSchema,
  workspaceId,
  region: nameSchema,
  regionId,
  proto: z.enum(TUNNEL_PROTOCOLS),
  /** The endpoint's port the tunnel exposes. */
  port,
  /** The gateway terminates TLS with its certificate and relays plain TCP. */
  tls: z.boolean(),
  createdAt: timestamp,
});
export type TunnelRecord = z.infer<typeof tunnelRecord>;

/** What a gateway says of itself: where it listens for which tunnel (written by the gateway, read by `tunnel list`). */
export const gatewayRecord = z.object({
  v: version,
  /** Its private address (fdaa:0:0:<region>:6a7e::/80). */
  address: z.string(),
  region: nameSchema,
  node: nodeNameSchema,
  /** Where the public reaches it (an address or a DNS name); its ports are the listeners'. */
  publicAddress: z.string().min(1).max(253),
  listeners: z.array(z.object({ tunnel: tunnelId, port })),
  /** Tunnels it does not serve, and why (no free port, no certificate for TLS). */
  refused: z.array(z.object({ tunnel: tunnelId, reason: z.string().max(200) })),
  version: z.string().min(1).max(64),
  startedAt: timestamp,
  heartbeatAt: timestamp,
});
export type GatewayRecord = z.infer<typeof gatewayRecord>;

// ---------------------------------------------------------------- keys

export const regionNameKey = (name: string): string => `name.${name}`;
export const regionIdKey = (id: number): string => `id.${regionIdHex(id)}`;
export const workspaceNameKey = (name: string): string => `name.${name}`;
export const workspaceIdKey = (id: number): string => `id.${workspaceIdHex(id)}`;
export const nodeKey = (name: string): string => name;

/**
 * Where the agent of node `node` receives replies (JetStream API answers,
 * pull batches, watches): its credentials may subscribe below this prefix
 * and nowhere else, so that no agent reads what another client is sent
 * (another region's membership, the operator's drop events). The dots of a
 * node name become underscores (no node name holds one), so that one node's
 * prefix is never below another's (node `a` and node `a.b`).
 */
export function agentInboxPrefix(node: string): string {
  if (!isValidNodeName(node)) throw new Error(`invalid node name ${JSON.stringify(node)}`);
  return `_INBOX.i6pn-agent.${node.replaceAll('.', '_')}`;
}

export const gatewayKey = (region: string, addr: Uint8Array): string => `${region}.${addressHex(addr)}`;

/**
 * Where the gateway at `addr` receives replies: like an agent's
 * (agentInboxPrefix), its own, so that it reads no other client's (the
 * operator's reads of every workspace, another gateway's record).
 */
export const gatewayInboxPrefix = (addr: Uint8Array): string => `_INBOX.i6pn-gateway.${addressHex(addr)}`;

/** A tunnel's key in its region's bucket: `<workspace id>.<endpoint id>.<proto>.<port>`, the claim of (endpoint, protocol, port). */
export function tunnelBucketKey(record: Pick<TunnelRecord, 'endpoint' | 'proto' | 'port'>): string {
  const addr = parseAddress(record.endpoint);
  return `${workspaceIdHex(workspaceOf(addr))}.${endpointIdOf(addr)}.${record.proto}.${record.port}`;
}
export const addressKey = (addr: Uint8Array): string => addressHex(addr);
export const ifnameKey = (node: string, ifname: string): string =>
  `${node}.${Buffer.from(ifname, 'utf8').toString('hex')}`;
/** An endpoint name's claim in NAMES_BUCKET (names are DNS labels: one NATS key token each). */
export const nameKey = (region: string, workspaceId: number, name: string): string => `${region}.${workspaceIdHex(workspaceId)}.${name}`;
/** A cluster's key in CLUSTERS_BUCKET. */
export const clusterKey = (region: string, workspaceId: number, name: string): string => `${region}.${workspaceIdHex(workspaceId)}.${name}`;

/**
 * An endpoint's name across the store, `<region>.<workspace id, 8 hex>.<endpoint
 * id, 16 hex>`: what address claims and ifname claims point at, and what
 * messages print. Its entry lives in endpointsBucket(region) under the rest of
 * it (endpointBucketKey).
 */
export function endpointKey(record: Pick<EndpointRecord, 'region' | 'workspaceId' | 'address'>): string {
  return `${record.region}.${endpointBucketKey(record)}`;
}

/** The store-wide name of the endpoint of region `region` with address `addr` (its bits spell the rest). */
export function endpointKeyOf(region: string, addr: Uint8Array): string {
  return `${region}.${workspaceIdHex(workspaceOf(addr))}.${endpointIdOf(addr)}`;
}

/** The key of an endpoint inside its region's bucket: `<workspace id, 8 hex>.<endpoint id, 16 hex>`. */
export function endpointBucketKey(record: Pick<EndpointRecord, 'workspaceId' | 'address'>): string {
  const addr = parseAddress(record.address);
  return `${workspaceIdHex(record.workspaceId)}.${endpointIdOf(addr)}`;
}

/** Where an endpoint key's entry lives: its region's bucket and the key inside it; null for a malformed key. */
export function locateEndpointKey(key: string): { region: string; bucket: string; key: string } | null {
  const k = parseEndpointKey(key);
  if (!k) return null;
  return { region: k.region, bucket: endpointsBucket(k.region), key: key.slice(k.region.length + 1) };
}

const ENDPOINT_KEY_PATTERN = /^([a-z][a-z0-9-]{0,30})\.([0-9a-f]{8})\.([0-9a-f]{16})$/;

export function parseEndpointKey(key: string): { region: string; workspaceId: number; endpointId: string } | null {
  const m = ENDPOINT_KEY_PATTERN.exec(key);
  if (!m) return null;
  return { region: m[1]!, workspaceId: parseInt(m[2]!, 16), endpointId: m[3]! };
}

// ---------------------------------------------------------------- decoding

/**
 * Why an entry was refused: not JSON (json), not the record (schema), an
 * address that is not the record's (address), a key that is not the record's
 * (key), a record of another region than its bucket's (region), a value longer
 * than any record can be (too_large: refused before it is parsed).
 */
export type InvalidReason = 'json' | 'schema' | 'address' | 'key' | 'region' | 'too_large';
/**
 * The longest value an endpoint or tunnel entry can have: a record is a few
 * hundred bytes at most (every string in it is bounded). Anything longer is
 * refused unparsed, so a store full of megabyte values costs a reader no
 * JSON.parse of each.
 */
export const MAX_RECORD_BYTES = 4096;
export type Invalid = { ok: false; reason: InvalidReason; message: string };
export type Decoded<T> = { ok: true; record: T } | Invalid;

const decoder = new TextDecoder('utf-8', { fatal: true });

/** A KV value (bytes, string, or an already parsed object) as JSON. */
export function decodeJson(value: Uint8Array | string | unknown): { ok: true; json: unknown } | Invalid {
  if (value instanceof Uint8Array || typeof value === 'string') {
    try {
      const text = typeof value === 'string' ? value : decoder.decode(value);
      return { ok: true, json: JSON.parse(text) as unknown };
    } catch (e) {
      return { ok: false, reason: 'json', message: `not JSON: ${(e as Error).message}` };
    }
  }
  return { ok: true, json: value };
}

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.length ? i.path.join('.') : '(value)'}: ${i.message}`)
    .join('; ');
}

/** Decode and validate a value against one of the record schemas. */
export function decodeRecord<S extends z.ZodType>(schema: S, value: Uint8Array | string | unknown): Decoded<z.infer<S>> {
  const j = decodeJson(value);
  if (!j.ok) return j;
  const r = schema.safeParse(j.json);
  if (!r.success) return { ok: false, reason: 'schema', message: describeIssues(r.error) };
  return { ok: true, record: r.data as z.infer<S> };
}

/** A value (bytes or text) longer than MAX_RECORD_BYTES, refused before it is parsed. */
function tooLarge(value: unknown): Invalid | null {
  const n = value instanceof Uint8Array ? value.length : typeof value === 'string' ? Buffer.byteLength(value, 'utf8') : 0;
  return n > MAX_RECORD_BYTES ? { ok: false, reason: 'too_large', message: `${n} bytes, more than a record can be (${MAX_RECORD_BYTES})` } : null;
}

export type EndpointEntry =
  | { ok: true; record: EndpointRecord; addr: Uint8Array }
  | Invalid;

/**
 * Everything the agent must know before it applies an endpoint: the value is
 * JSON, matches the schema, its address is a canonical private address whose
 * workspace and region bits equal the record's ids, and the key names the same
 * region, workspace and endpoint id as the record.
 */
export function validateEndpointEntry(key: string, value: Uint8Array | string | unknown): EndpointEntry {
  const big = tooLarge(value);
  if (big) return big;
  const d = decodeRecord(endpointRecord, value);
  if (!d.ok) return d;
  const record = d.record;
  let addr: Uint8Array;
  try {
    addr = parseAddress(record.address);
  } catch (e) {
    return { ok: false, reason: 'address', message: (e as Error).message };
  }
  if (!isPrivate(addr)) {
    return { ok: false, reason: 'address', message: `address ${record.address} is not in fdaa::/16` };
  }
  if (formatAddress(addr) !== record.address) {
    return { ok: false, reason: 'address', message: `address ${record.address} is not canonical (${formatAddress(addr)})` };
  }
  if (workspaceOf(addr) !== record.workspaceId) {
    return {
      ok: false,
      reason: 'address',
      message: `address ${record.address} carries workspace id ${workspaceIdHex(workspaceOf(addr))}, record says ${workspaceIdHex(record.workspaceId)}`,
    };
  }
  if (regionOf(addr) !== record.regionId) {
    return {
      ok: false,
      reason: 'address',
      message: `address ${record.address} carries region id ${regionIdHex(regionOf(addr))}, record says ${regionIdHex(record.regionId)}`,
    };
  }
  if (record.role === GATEWAY_ROLE && !isGatewayAddress(addr)) {
    return { ok: false, reason: 'address', message: `gateway address ${record.address} is not in fdaa:0:0:<region>:6a7e::/80` };
  }
  const k = parseEndpointKey(key);
  if (!k) {
    return { ok: false, reason: 'key', message: `key ${JSON.stringify(key)} is not <region>.<workspace id 8 hex>.<endpoint id 16 hex>` };
  }
  if (k.region !== record.region) {
    return { ok: false, reason: 'region', message: `endpoint of region ${record.region} under a key of region ${k.region}` };
  }
  if (k.workspaceId !== record.workspaceId || k.endpointId !== endpointIdOf(addr)) {
    return { ok: false, reason: 'key', message: `key ${key} does not match the record (expected ${endpointKey(record)})` };
  }
  return { ok: true, record, addr };
}

// ---------------------------------------------------------------- the buckets, as one table

/**
 * How JetStream KV lays a bucket over a stream, which the agent's reader (it
 * reads the stream itself) and the NATS permissions (deploy/nats) build on:
 * key K of bucket B is the subject `$KV.B.K` of stream `KV_B`, and a delete or
 * purge is a message with an empty body and this header.
 */
export const KV_SUBJECT_PREFIX = '$KV.';
export const KV_OPERATION_HEADER = 'KV-Operation';
export const kvStream = (bucket: string): string => `KV_${bucket}`;
/** The bucket a stream holds, or null when it is not a KV stream. */
export const bucketOfKvStream = (stream: string): string | null => (stream.startsWith('KV_') ? stream.slice(3) : null);
/** The subject of `key` in `bucket` (`>`: every key). */
export const kvSubject = (bucket: string, key = '>'): string => `${KV_SUBJECT_PREFIX}${bucket}.${key}`;

/** One bucket of the store: what it holds, how its keys are made, and what a node's agent may do with it. */
export interface BucketSpec {
  name: string;
  /** The stream's description on the server. */
  description: string;
  /** The key format (documentation, and the table in the README). */
  key: string;
  record: z.ZodType;
  /** Values kept per key; unset: the store's default (--history, 5). */
  history?: number;
  /**
   * The controller (i6pnctl) creates and writes every bucket. An agent reads
   * only the buckets marked `read` (its region's endpoints bucket among
   * them) and writes one key of `read, own key`: its heartbeat.
   */
  agent: 'none' | 'read' | 'read, own key';
}

/** The buckets that exist once; besides, one endpoints bucket per region (endpointsBucketSpec). */
export const BUCKET_TABLE = {
  regions: { name: REGIONS_BUCKET, description: 'i6pn regions: name <-> 16-bit id', key: 'name.<region> and id.<region id, 4 hex>', record: regionRecord, agent: 'read' },
  workspaces: { name: WORKSPACES_BUCKET, description: 'i6pn workspaces: name <-> 32-bit id and /48', key: 'name.<workspace> and id.<workspace id, 8 hex>', record: workspaceRecord, agent: 'none' },
  addresses: { name: ADDRESSES_BUCKET, description: 'i6pn addresses ever handed out (never deleted)', key: '<address, 32 hex>', record: addressRecord, agent: 'none' },
  ifnames: { name: IFNAMES_BUCKET, description: 'i6pn host-side interface names per node', key: '<node>.<ifname, hex of its bytes>', record: ifnameRecord, agent: 'none' },
  nodes: { name: NODES_BUCKET, description: 'i6pn nodes: agent heartbeats', key: '<node>', record: nodeRecord, agent: 'read, own key' },
  names: { name: NAMES_BUCKET, description: 'i6pn endpoint names per workspace and region', key: '<region>.<workspace id, 8 hex>.<name>', record: nameRecord, agent: 'none' },
  clusters: { name: CLUSTERS_BUCKET, description: 'i6pn named clusters per workspace and region', key: '<region>.<workspace id, 8 hex>.<cluster>', record: clusterRecord, agent: 'none' },
  // Written by each tunnel gateway (its own key only, deploy/nats), read by i6pnctl.
  gateways: { name: GATEWAYS_BUCKET, description: 'i6pn tunnel gateways: where each listens for which tunnel', key: '<region>.<gateway address, 32 hex>', record: gatewayRecord, agent: 'none' },
} as const satisfies Record<string, BucketSpec>;

/** The tunnels bucket of a region, as a row of the table (its agents and its gateways read it). */
export function tunnelsBucketSpec(region: string): BucketSpec {
  return {
    name: tunnelsBucket(region),
    description: `i6pn tunnels of region ${region}: <workspace id>.<endpoint id>.<proto>.<port>`,
    key: '<workspace id, 8 hex>.<endpoint id, 16 hex>.<proto>.<port>',
    record: tunnelRecord,
    history: 1,
    agent: 'read',
  };
}

/** The names of the buckets that exist once, in the table's order. */
export const BUCKETS: readonly string[] = Object.values(BUCKET_TABLE).map((b) => b.name);

/** The endpoints bucket of a region, as a row of the table. */
export function endpointsBucketSpec(region: string): BucketSpec {
  return {
    name: endpointsBucket(region),
    description: `i6pn endpoints of region ${region}: <workspace id>.<endpoint id>`,
    key: '<workspace id, 8 hex>.<endpoint id, 16 hex>',
    record: endpointRecord,
    history: ENDPOINTS_HISTORY,
    agent: 'read',
  };
}

export type TunnelEntry = { ok: true; record: TunnelRecord; addr: Uint8Array } | Invalid;

/**
 * Everything an agent or a gateway must know before it applies a tunnel of
 * `region` (id `regionId`) read under `key` of the region's tunnels bucket:
 * the schema, a canonical tenant address (workspace not 0) whose workspace
 * and region bits are the record's, the record's region the bucket's, and
 * the key the record's (endpoint, protocol, port).
 */
export function validateTunnelEntry(region: string, regionId: number, key: string, value: Uint8Array | string | unknown): TunnelEntry {
  const big = tooLarge(value);
  if (big) return big;
  const d = decodeRecord(tunnelRecord, value);
  if (!d.ok) return d;
  const record = d.record;
  let addr: Uint8Array;
  try {
    addr = parseAddress(record.endpoint);
  } catch (e) {
    return { ok: false, reason: 'address', message: (e as Error).message };
  }
  if (!isPrivate(addr) || formatAddress(addr) !== record.endpoint) {
    return { ok: false, reason: 'address', message: `endpoint ${record.endpoint} is not the canonical spelling of an fdaa::/16 address` };
  }
  if (workspaceOf(addr) !== record.workspaceId || regionOf(addr) !== record.regionId) {
    return { ok: false, reason: 'address', message: `endpoint ${record.endpoint} is not in workspace ${workspaceIdHex(record.workspaceId)}, region ${regionIdHex(record.regionId)}` };
  }
  if (record.region !== region || record.regionId !== regionId) {
    return { ok: false, reason: 'region', message: `tunnel of region ${record.region} (id ${regionIdHex(record.regionId)}) in the bucket of region ${region} (id ${regionIdHex(regionId)})` };
  }
  if (tunnelBucketKey(record) !== key) {
    return { ok: false, reason: 'key', message: `key ${JSON.stringify(key)} does not match the record (expected ${tunnelBucketKey(record)})` };
  }
  return { ok: true, record, addr };
}
