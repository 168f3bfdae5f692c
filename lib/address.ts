/**
 * i6pn addresses: the one module that knows the bit layout.
 *
 *   0        16                 48        64                               128
 *   | fdaa   | workspace id (32) | region  | endpoint id (64, random)         |
 *
 * Parsing and formatting go through the `ip-address` library; the layout is
 * read and written as bytes. Addresses travel through the program as 16-byte
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
  const v = new DataView(out.buffer);
  v.setUint16(0, PRIVATE_PREFIX, false);
  v.setUint32(2, workspaceId, false);
  v.setUint16(6, regionId, false);
  out.set(low, 8);
  return out;
}

/** The workspace's /48, e.g. "fdaa:1234:5678::/48". */
export function workspaceSubnet(workspaceId: number): string {
  if (!isWorkspaceId(workspaceId)) throw new Error(`workspace id must be a non-zero 32-bit number, got ${workspaceId}`);
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint16(0, PRIVATE_PREFIX, false);
  v.setUint32(2, workspaceId, false);
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
