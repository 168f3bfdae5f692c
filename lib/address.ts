/**
 * i6pn addresses: the one module that knows the bit layout.
 *
 *   0        16                 48        64                               128
 *   | fdaa   | workspace id (32) | region  | endpoint id (64, random)         |
 *
 * Text is parsed through the `ip-address` library (user input) and printed
 * from the bytes; the layout is read and written as bytes, with a codec that
 * allocates nothing for the agent's hot path (writeEndpointAddress,
 * workspaceAt, regionAt, endpointHalfAt, isCanonicalAddress). Addresses travel through the program as 16-byte
 * Uint8Arrays and leave it as canonical RFC 5952 strings.
 */
import { randomBytes } from 'node:crypto';
import { Address6 } from 'ip-address';

/** The first 16 bits of every private address. */
export const PRIVATE_PREFIX = 0xfdaa;
export const PRIVATE_PREFIX_STRING = 'fdaa::/16';

/**
 * The node resolver's address: in workspace 0 of fdaa::/16, which no
 * workspace is ever given, so it is no endpoint's. Every node holds it and
 * answers DNS there (UDP and TCP port 53); the dataplane lets exactly that
 * through from each endpoint's own veth (bpf/i6pn.h I6PN_RESOLVER_LAST_GROUP
 * is the same address, held to this one by the golden packets).
 */
export const RESOLVER_ADDRESS = 'fdaa::53';

/** A workspace id is a non-zero unsigned 32-bit number. */
export function isWorkspaceId(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n > 0 && n <= 0xffff_ffff;
}

/**
 * A region id is a non-zero unsigned 16-bit number. Zero is kept out so that
 * `fdaa:W:W:0::/64` never means a region, which makes a forgotten field show.
 */
export function isRegionId(n: unknown): n is number {
  return typeof n === 'number' && Number.isInteger(n) && n > 0 && n <= 0xffff;
}

/** A random non-zero workspace id from a cryptographic source. */
export function randomWorkspaceId(): number {
  for (;;) {
    const n = randomBytes(4).readUInt32BE(0);
    if (n !== 0) return n;
  }
}

/** A random non-zero region id from a cryptographic source. */
export function randomRegionId(): number {
  for (;;) {
    const n = randomBytes(2).readUInt16BE(0);
    if (n !== 0) return n;
  }
}

/** 64 random bits for an endpoint id. */
export function randomEndpointBits(): Uint8Array {
  return new Uint8Array(randomBytes(8));
}

/**
 * Canonical compressed form (RFC 5952), e.g. "fdaa:1234:5678:1::9":
 * lowercase, no leading zeros, the longest run of two or more zero groups
 * compressed (the first on a tie). Printed from the bytes, not through
 * ip-address (which costs 20–100 µs a call; this, well under one):
 * test/address.test.ts holds the two to the same text.
 */
export function formatAddress(bytes: Uint8Array): string {
  if (!(bytes instanceof Uint8Array) || bytes.length !== 16) {
    throw new Error(`an IPv6 address is 16 bytes, got ${bytes instanceof Uint8Array ? bytes.length : typeof bytes}`);
  }
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  const run = compressedRun(g);
  const hex = (from: number, to: number): string => g.slice(from, to).map((x) => x.toString(16)).join(':');
  if (run < 0) return hex(0, 8);
  const len = run >>> 8;
  const start = run & 0xff;
  return `${hex(0, start)}::${hex(start + len, 8)}`;
}

/**
 * The run of zero groups RFC 5952 compresses in 8 groups: the longest of two
 * or more, the first on a tie. Returns (length << 8) | start, or -1 when
 * there is none.
 */
export function compressedRun(g: ArrayLike<number>): number {
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  return bestStart < 0 ? -1 : (bestLen << 8) | bestStart;
}

// ---------------------------------------------------------------- the hot path's codec
// Byte loops with no allocation and no check: the agent's decoder and sync call
// these per entry. Callers pass ids already validated.

/** The 16 bytes of fdaa:<workspace>:<region>:<endpoint id hi>:<lo> written at `at`. */
export function writeEndpointAddress(into: Uint8Array, at: number, workspace: number, region: number, hi: number, lo: number): void {
  into[at] = PRIVATE_PREFIX >>> 8;
  into[at + 1] = PRIVATE_PREFIX & 0xff;
  into[at + 2] = workspace >>> 24;
  into[at + 3] = (workspace >>> 16) & 0xff;
  into[at + 4] = (workspace >>> 8) & 0xff;
  into[at + 5] = workspace & 0xff;
  into[at + 6] = region >>> 8;
  into[at + 7] = region & 0xff;
  into[at + 8] = hi >>> 24;
  into[at + 9] = (hi >>> 16) & 0xff;
  into[at + 10] = (hi >>> 8) & 0xff;
  into[at + 11] = hi & 0xff;
  into[at + 12] = lo >>> 24;
  into[at + 13] = (lo >>> 16) & 0xff;
  into[at + 14] = (lo >>> 8) & 0xff;
  into[at + 15] = lo & 0xff;
}

const groups = new Uint16Array(8);

/**
 * Whether b[at, end) is the RFC 5952 text of fdaa:<workspace>:<region>:<hi>:<lo>
 * (lowercase, no leading zeros, the longest run of two or more zero groups
 * compressed, the first on a tie), compared byte by byte.
 */
export function isCanonicalAddress(b: Uint8Array, at: number, end: number, workspace: number, region: number, hi: number, lo: number): boolean {
  const g = groups;
  g[0] = 0xfdaa;
  g[1] = workspace >>> 16;
  g[2] = workspace & 0xffff;
  g[3] = region;
  g[4] = hi >>> 16;
  g[5] = hi & 0xffff;
  g[6] = lo >>> 16;
  g[7] = lo & 0xffff;
  const run = compressedRun(g);
  const runAt = run < 0 ? -1 : run & 0xff;
  const runLen = run < 0 ? 1 : run >>> 8;
  let p = at;
  for (let i = 0; i < 8; i++) {
    if (i === runAt) {
      // "::" replaces the run and the separators around it.
      if (p + 1 >= end || b[p] !== 58 || b[p + 1] !== 58) return false;
      p += 2;
      i += runLen - 1;
      continue;
    }
    if (i > 0 && i !== runAt + runLen) {
      if (p >= end || b[p] !== 58) return false;
      p++;
    }
    const v = g[i]!;
    const digits = v >= 0x1000 ? 4 : v >= 0x100 ? 3 : v >= 0x10 ? 2 : 1;
    for (let d = digits - 1; d >= 0; d--) {
      const nib = (v >>> (d * 4)) & 0xf;
      if (p >= end || b[p] !== (nib < 10 ? 48 + nib : 87 + nib)) return false;
      p++;
    }
  }
  return p === end;
}

/** The workspace id of the address at `at` (no check). */
export function workspaceAt(a: Uint8Array, at: number): number {
  return ((a[at + 2]! << 24) | (a[at + 3]! << 16) | (a[at + 4]! << 8) | a[at + 5]!) >>> 0;
}

/** The region id of the address at `at` (no check). */
export function regionAt(a: Uint8Array, at: number): number {
  return (a[at + 6]! << 8) | a[at + 7]!;
}

/** The endpoint id's high (`half` 0) or low (1) 32 bits of the address at `at` (no check). */
export function endpointHalfAt(a: Uint8Array, at: number, half: 0 | 1): number {
  const o = at + 8 + 4 * half;
  return ((a[o]! << 24) | (a[o + 1]! << 16) | (a[o + 2]! << 8) | a[o + 3]!) >>> 0;
}

/** The same text through ip-address, the reference formatAddress is tested against. */
export function formatAddressReference(bytes: Uint8Array): string {
  return Address6.fromUnsignedByteArray(Array.from(bytes)).correctForm();
}

/**
 * Parse one IPv6 address (no prefix length, no zone) into 16 bytes.
 * Throws an Error that names the input when it is not one.
 */
export function parseAddress(s: string): Uint8Array {
  if (typeof s !== 'string' || s.trim() === '') {
    throw new Error(`invalid IPv6 address ${JSON.stringify(s)}: empty`);
  }
  let a: Address6;
  try {
    a = new Address6(s.trim());
  } catch (e) {
    throw new Error(`invalid IPv6 address ${JSON.stringify(s)}: ${(e as Error).message}`);
  }
  if (a.parsedSubnet !== '' || a.subnetMask !== 128) {
    throw new Error(`invalid IPv6 address ${JSON.stringify(s)}: expected an address, not a prefix`);
  }
  if (a.zone !== '') {
    throw new Error(`invalid IPv6 address ${JSON.stringify(s)}: a zone id has no meaning here`);
  }
  const bytes = a.toUnsignedByteArray();
  const out = new Uint8Array(16);
  // toUnsignedByteArray drops leading zero bytes on some versions: right-align.
  out.set(bytes.slice(-16), 16 - Math.min(16, bytes.length));
  return out;
}

/** Whether the address is in fdaa::/16, the private range. */
export function isPrivate(bytes: Uint8Array): boolean {
  return bytes.length === 16 && bytes[0] === 0xfd && bytes[1] === 0xaa;
}

function view(bytes: Uint8Array): DataView {
  if (bytes.length !== 16) throw new Error(`an IPv6 address is 16 bytes, got ${bytes.length}`);
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Bits 16..47: the workspace id. */
export function workspaceOf(bytes: Uint8Array): number {
  return view(bytes).getUint32(2, false);
}

/** Bits 48..63: the region id. */
export function regionOf(bytes: Uint8Array): number {
  return view(bytes).getUint16(6, false);
}

/** Bits 64..127: the endpoint id, as 16 lowercase hex digits. */
export function endpointIdOf(bytes: Uint8Array): string {
  return hex(bytes.subarray(8, 16));
}

/** The address as 32 lowercase hex digits (a NATS-key-safe spelling). */
export function addressHex(bytes: Uint8Array): string {
  if (bytes.length !== 16) throw new Error(`an IPv6 address is 16 bytes, got ${bytes.length}`);
  return hex(bytes);
}

/** `fdaa:W:W:R:<rand>`; `rand` (8 bytes) defaults to a cryptographic source. */
export function makeEndpointAddress(workspaceId: number, regionId: number, rand?: Uint8Array): Uint8Array {
  if (!isWorkspaceId(workspaceId)) throw new Error(`workspace id must be a non-zero 32-bit number, got ${workspaceId}`);
  if (!isRegionId(regionId)) throw new Error(`region id must be a non-zero 16-bit number, got ${regionId}`);
  const low = rand ?? randomEndpointBits();
  if (low.length !== 8) throw new Error(`endpoint id must be 8 bytes, got ${low.length}`);
  const out = new Uint8Array(16);
  writeEndpointAddress(out, 0, workspaceId, regionId, 0, 0);
  out.set(low, 8);
  return out;
}

// ---------------------------------------------------------------- infrastructure: workspace 0

/**
 * Workspace 0 of fdaa::/16 is infrastructure, never a tenant's (isWorkspaceId
 * refuses 0). The node resolver of issue 13 is fdaa::53 (region 0); the
 * tunnel gateways of a region live in fdaa:0:0:<region>:6a7e::/80, one
 * random 48-bit id each: a non-zero region keeps them off fdaa::/64, and
 * "6a7e" ("gate") marks them for a reader of addresses. The dataplane knows
 * a gateway by its membership (a workspace-0 member), not by the tag.
 */
export const INFRA_WORKSPACE_ID = 0;
export const GATEWAY_TAG = 0x6a7e;

/** `fdaa:0:0:<region>:6a7e:<rand>`; `rand` (6 bytes) defaults to a cryptographic source. */
export function makeGatewayAddress(regionId: number, rand?: Uint8Array): Uint8Array {
  if (!isRegionId(regionId)) throw new Error(`region id must be a non-zero 16-bit number, got ${regionId}`);
  const low = rand ?? new Uint8Array(randomBytes(6));
  if (low.length !== 6) throw new Error(`a gateway id is 6 bytes, got ${low.length}`);
  const out = new Uint8Array(16);
  writeEndpointAddress(out, 0, INFRA_WORKSPACE_ID, regionId, GATEWAY_TAG << 16, 0);
  out.set(low, 10);
  return out;
}

/** Whether the address is a gateway's: fdaa:0:0:<region, not 0>:6a7e::/80. */
export function isGatewayAddress(bytes: Uint8Array): boolean {
  return isPrivate(bytes) && workspaceAt(bytes, 0) === INFRA_WORKSPACE_ID && regionAt(bytes, 0) !== 0 && ((bytes[8]! << 8) | bytes[9]!) === GATEWAY_TAG;
}

/** The workspace's /48, e.g. "fdaa:1234:5678::/48". */
export function workspaceSubnet(workspaceId: number): string {
  if (!isWorkspaceId(workspaceId)) throw new Error(`workspace id must be a non-zero 32-bit number, got ${workspaceId}`);
  const b = new Uint8Array(16);
  writeEndpointAddress(b, 0, workspaceId, 0, 0, 0);
  return `${formatAddress(b)}/48`;
}

/** One workspace in one region: "fdaa:W:W:R::/64". */
export function regionSubnet(workspaceId: number, regionId: number): string {
  const b = makeEndpointAddress(workspaceId, regionId, new Uint8Array(8));
  return `${formatAddress(b)}/64`;
}

/** Workspace id as 8 hex digits, region id as 4, as used in keys. */
export function workspaceIdHex(id: number): string {
  return id.toString(16).padStart(8, '0');
}
export function regionIdHex(id: number): string {
  return id.toString(16).padStart(4, '0');
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}
