/**
 * The agent's decoder of its region's endpoint entries: from the bytes of a
 * message of `i6pn_endpoints_<region>` to what the maps need, with nothing
 * allocated on the way (no JSON.parse object, no string but the timestamp's),
 * checked by hand against the same rules as lib/schema.ts
 * validateEndpointEntry() (zod).
 *
 * Only acceptance takes this path. The scanner reads a strict subset of JSON:
 * one object whose keys are exactly the schema's ten required ones and any of
 * its three optional ones (name, cluster, rank), once each, with plain
 * strings (no escapes), plain integers and booleans, and JSON white space;
 * every string passes the schema's own pattern, the ids are the key's and the
 * agent's region's, and the address is the canonical text of the address the
 * key and the region spell. Anything else, and any doubt, returns false: the
 * caller asks validateEndpointEntry(), so an unusual but valid entry is still
 * applied and a rejection carries exactly the schema's reason and message.
 * test/agent-decode.test.ts holds the two to the same verdict on random and
 * mutated entries.
 */
import { isCanonicalAddress } from '../lib/address.js';
import { EndpointFlag } from './bpf/abi.generated.js';
import { MAX_CLUSTER_SIZE, MAX_RECORD_BYTES, TIMESTAMP_PATTERN, SCHEMA_VERSION, type EndpointRecord } from '../lib/schema.js';

/** An endpoint named by a key of a region's bucket: workspace id and the 64-bit endpoint id's two halves. */
export interface KeyParts {
  workspace: number;
  hi: number;
  lo: number;
}

/** What a decoded entry gives the maps; strings are materialised only on demand (local endpoints). */
export interface Decoded {
  i6pn: boolean;
  /** The node's id (nodeId() of its name). */
  node: number;
  /** The entry's node is the agent's own. */
  local: boolean;
  /** Source of the strings: the message bytes (fast path) or a record (slow path). */
  data: Uint8Array | null;
  record: EndpointRecord | null;
  addressAt: number;
  addressEnd: number;
  ifnameAt: number;
  ifnameEnd: number;
  /** The optional DNS name and cluster (at === end: none) and the rank (-1: none). */
  nameAt: number;
  nameEnd: number;
  clusterAt: number;
  clusterEnd: number;
  rank: number;
}

export function newDecoded(): Decoded {
  return { i6pn: false, node: 0, local: false, data: null, record: null, addressAt: 0, addressEnd: 0, ifnameAt: 0, ifnameEnd: 0, nameAt: 0, nameEnd: 0, clusterAt: 0, clusterEnd: 0, rank: -1 };
}

/** Node's ASCII-to-string of a byte range, without a Buffer object per call. */
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice: (this: Uint8Array, start: number, end: number) => string }).latin1Slice;

export const addressOf = (d: Decoded): string => (d.record ? d.record.address : latin1Slice.call(d.data!, d.addressAt, d.addressEnd));
export const ifnameOf = (d: Decoded): string => (d.record ? d.record.ifname : latin1Slice.call(d.data!, d.ifnameAt, d.ifnameEnd));
/** Whether the entry has a DNS name or a cluster (what the resolver's names index keeps). */
export const hasNames = (d: Decoded): boolean => (d.record ? d.record.name !== undefined || d.record.cluster !== undefined : d.nameEnd > d.nameAt || d.clusterEnd > d.clusterAt);
export const nameOf = (d: Decoded): string | null => (d.record ? d.record.name ?? null : d.nameEnd > d.nameAt ? latin1Slice.call(d.data!, d.nameAt, d.nameEnd) : null);
export const clusterOf = (d: Decoded): string | null =>
  d.record ? d.record.cluster ?? null : d.clusterEnd > d.clusterAt ? latin1Slice.call(d.data!, d.clusterAt, d.clusterEnd) : null;
export const rankOf = (d: Decoded): number => (d.record ? d.record.rank ?? -1 : d.rank);

/** What the decoder compares entries with: the agent's region and node. */
export class DecodeContext {
  readonly region: Uint8Array;
  readonly node: Uint8Array;
  readonly nodeId: number;
  constructor(
    readonly regionName: string,
    readonly regionId: number,
    readonly nodeName: string,
  ) {
    this.region = Buffer.from(regionName, 'latin1');
    this.node = Buffer.from(nodeName, 'utf8');
    this.nodeId = nodeId(nodeName);
  }
}

/** FNV-1a, 32 bits, of the UTF-8 bytes: a node's id in map values and the config map. */
export function nodeId(name: string): number {
  return fnv(Buffer.from(name, 'utf8'), 0, Buffer.byteLength(name, 'utf8'));
}

function fnv(b: Uint8Array, at: number, end: number): number {
  let h = 0x811c9dc5;
  for (let i = at; i < end; i++) {
    h ^= b[i]!;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

// ---------------------------------------------------------------- keys

const HEX = new Int8Array(128).fill(-1);
for (let i = 0; i < 10; i++) HEX[48 + i] = i;
for (let i = 0; i < 6; i++) HEX[97 + i] = 10 + i;

/** 8 lowercase hex digits of `s` at `at` as an unsigned 32-bit number, or -1. */
function hex32(s: string, at: number): number {
  let v = 0;
  for (let i = at; i < at + 8; i++) {
    const c = s.charCodeAt(i);
    const d = c < 128 ? HEX[c]! : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

/**
 * `<workspace id, 8 hex>.<endpoint id, 16 hex>` (lowercase) into `out`; false
 * when the key is anything else.
 */
export function parseBucketKey(key: string, out: KeyParts): boolean {
  if (key.length !== 25 || key.charCodeAt(8) !== 46 /* . */) return false;
  const ws = hex32(key, 0);
  const hi = hex32(key, 9);
  const lo = hex32(key, 17);
  if (ws < 0 || hi < 0 || lo < 0) return false;
  out.workspace = ws;
  out.hi = hi;
  out.lo = lo;
  return true;
}

// ---------------------------------------------------------------- the patterns, on bytes

const isLower = (c: number): boolean => c >= 97 && c <= 122;
const isDigit = (c: number): boolean => c >= 48 && c <= 57;
const isUpper = (c: number): boolean => c >= 65 && c <= 90;

/** NAME_PATTERN: a lowercase letter, then up to 30 lowercase letters, digits or dashes. */
function isName(b: Uint8Array, at: number, end: number): boolean {
  const n = end - at;
  if (n < 1 || n > 31 || !isLower(b[at]!)) return false;
  for (let i = at + 1; i < end; i++) {
    const c = b[i]!;
    if (!isLower(c) && !isDigit(c) && c !== 45) return false;
  }
  return true;
}

/** NODE_NAME_PATTERN: 1 to 63 characters of dot-separated labels of [a-z0-9-], each starting and ending alphanumeric. */
function isNodeName(b: Uint8Array, at: number, end: number): boolean {
  const n = end - at;
  if (n < 1 || n > 63) return false;
  let labelStart = at;
  for (let i = at; i <= end; i++) {
    const c = i < end ? b[i]! : 46;
    if (c === 46) {
      if (i === labelStart) return false;
      const first = b[labelStart]!;
      const last = b[i - 1]!;
      if (!(isLower(first) || isDigit(first)) || !(isLower(last) || isDigit(last))) return false;
      labelStart = i + 1;
    } else if (!isLower(c) && !isDigit(c) && c !== 45) {
      return false;
    }
  }
  return true;
}

/** IFNAME_PATTERN: [A-Za-z0-9_] then up to 14 of [A-Za-z0-9_.-]. */
function isIfname(b: Uint8Array, at: number, end: number): boolean {
  const n = end - at;
  if (n < 1 || n > 15) return false;
  for (let i = at; i < end; i++) {
    const c = b[i]!;
    const word = isLower(c) || isUpper(c) || isDigit(c) || c === 95;
    if (!word && (i === at || (c !== 46 && c !== 45))) return false;
  }
  return true;
}

/** DNS_LABEL_PATTERN: a lowercase letter, then up to 62 of [a-z0-9-], the last not a dash. */
function isDnsLabel(b: Uint8Array, at: number, end: number): boolean {
  const n = end - at;
  if (n < 1 || n > 63 || !isLower(b[at]!) || b[end - 1] === 45) return false;
  for (let i = at + 1; i < end; i++) {
    const c = b[i]!;
    if (!isLower(c) && !isDigit(c) && c !== 45) return false;
  }
  return true;
}

function bytesEqual(b: Uint8Array, at: number, end: number, want: Uint8Array): boolean {
  if (end - at !== want.length) return false;
  for (let i = 0; i < want.length; i++) if (b[at + i] !== want[i]) return false;
  return true;
}

// ---------------------------------------------------------------- the scanner

const K_V = 1;
const K_ADDRESS = 2;
const K_WORKSPACE = 4;
const K_WORKSPACE_ID = 8;
const K_REGION = 16;
const K_REGION_ID = 32;
const K_NODE = 64;
const K_IFNAME = 128;
const K_I6PN = 256;
const K_CREATED_AT = 512;
/** The required keys. */
const K_ALL = 1023;
const K_NAME = 1024;
const K_CLUSTER = 2048;
const K_RANK = 4096;

/** Which schema key b[at, end) spells (0: none). */
function keyOf(b: Uint8Array, at: number, end: number): number {
  switch (end - at) {
    case 1:
      return b[at] === 118 /* v */ ? K_V : 0;
    case 4:
      if (b[at] === 110 && b[at + 1] === 111 && b[at + 2] === 100 && b[at + 3] === 101) return K_NODE; // node
      if (b[at] === 105 && b[at + 1] === 54 && b[at + 2] === 112 && b[at + 3] === 110) return K_I6PN; // i6pn
      if (match(b, at, 'name')) return K_NAME;
      if (match(b, at, 'rank')) return K_RANK;
      return 0;
    case 6:
      if (match(b, at, 'region')) return K_REGION;
      if (match(b, at, 'ifname')) return K_IFNAME;
      return 0;
    case 7:
      if (match(b, at, 'address')) return K_ADDRESS;
      return match(b, at, 'cluster') ? K_CLUSTER : 0;
    case 8:
      return match(b, at, 'regionId') ? K_REGION_ID : 0;
    case 9:
      if (match(b, at, 'workspace')) return K_WORKSPACE;
      if (match(b, at, 'createdAt')) return K_CREATED_AT;
      return 0;
    case 11:
      return match(b, at, 'workspaceId') ? K_WORKSPACE_ID : 0;
    default:
      return 0;
  }
}

function match(b: Uint8Array, at: number, s: string): boolean {
  for (let i = 0; i < s.length; i++) if (b[at + i] !== s.charCodeAt(i)) return false;
  return true;
}

const isWs = (c: number | undefined): boolean => c === 32 || c === 10 || c === 13 || c === 9;

/** The index of the first byte at or after `p` that is not JSON white space. */
function skipWs(b: Uint8Array, p: number): number {
  while (p < b.length && isWs(b[p])) p++;
  return p;
}

/** A string with no escape starting at p (its opening quote): the index of its closing quote, or -1. */
function stringEnd(b: Uint8Array, p: number): number {
  if (b[p] !== 34) return -1;
  for (let i = p + 1; i < b.length; i++) {
    const c = b[i]!;
    if (c === 34) return i;
    if (c === 92 || c < 0x20) return -1; // an escape, or a raw control character (not JSON)
  }
  return -1;
}

/** The end of a plain unsigned integer (no sign, fraction, exponent or leading zero) starting at p, or -1. */
function uintEnd(b: Uint8Array, p: number): number {
  let i = p;
  while (i < b.length && isDigit(b[i]!)) i++;
  const n = i - p;
  if (n === 0 || n > 10 || (n > 1 && b[p] === 48)) return -1;
  const c = b[i];
  if (c === 46 || c === 101 || c === 69) return -1; // a fraction or exponent: the slow path's
  return i;
}

function uintValue(b: Uint8Array, p: number, end: number): number {
  let v = 0;
  for (let i = p; i < end; i++) v = v * 10 + (b[i]! - 48);
  return v;
}

/**
 * Decode an entry of the context's region under the key `id` into `out`. True
 * when it is valid by every rule of validateEndpointEntry() and belongs to the
 * region (name and id); false otherwise (ask validateEndpointEntry why).
 */
export function decodeEndpoint(b: Uint8Array, id: KeyParts, ctx: DecodeContext, out: Decoded): boolean {
  // A value longer than any record (white space can pad a valid one) is the schema's to refuse: too_large.
  if (b.length > MAX_RECORD_BYTES) return false;
  let p = skipWs(b, 0);
  if (b[p++] !== 123 /* { */) return false;
  let seen = 0;
  let i6pn = false;
  let addressAt = 0;
  let addressEnd = 0;
  let ifnameAt = 0;
  let ifnameEnd = 0;
  let nodeAt = 0;
  let nodeEnd = 0;
  let nameAt = 0;
  let nameEnd = 0;
  let clusterAt = 0;
  let clusterEnd = 0;
  let rank = -1;
  for (;;) {
    p = skipWs(b, p);
    let e = stringEnd(b, p);
    if (e < 0) return false;
    const k = keyOf(b, p + 1, e);
    if (k === 0 || (seen & k) !== 0) return false; // an unknown key (zod would strip it) or a repeated one: the slow path's
    seen |= k;
    p = skipWs(b, e + 1);
    if (b[p] !== 58 /* : */) return false;
    p = skipWs(b, p + 1);
    if (k === K_V || k === K_WORKSPACE_ID || k === K_REGION_ID || k === K_RANK) {
      e = uintEnd(b, p);
      if (e < 0) return false;
      const v = uintValue(b, p, e);
      if (k === K_RANK) {
        if (v >= MAX_CLUSTER_SIZE) return false;
        rank = v;
      } else if (k === K_V ? v !== SCHEMA_VERSION : k === K_REGION_ID ? v !== ctx.regionId : v !== id.workspace || v === 0) {
        return false;
      }
      p = e;
    } else if (k === K_I6PN) {
      if (b[p] === 116 && b[p + 1] === 114 && b[p + 2] === 117 && b[p + 3] === 101) {
        i6pn = true;
        p += 4;
      } else if (b[p] === 102 && b[p + 1] === 97 && b[p + 2] === 108 && b[p + 3] === 115 && b[p + 4] === 101) {
        i6pn = false;
        p += 5;
      } else {
        return false;
      }
    } else {
      e = stringEnd(b, p);
      if (e < 0) return false;
      const at = p + 1;
      switch (k) {
        case K_ADDRESS:
          addressAt = at;
          addressEnd = e;
          break;
        case K_WORKSPACE:
          if (!isName(b, at, e)) return false;
          break;
        case K_REGION:
          if (!bytesEqual(b, at, e, ctx.region)) return false;
          break;
        case K_NODE:
          if (!isNodeName(b, at, e)) return false;
          nodeAt = at;
          nodeEnd = e;
          break;
        case K_IFNAME:
          if (!isIfname(b, at, e)) return false;
          ifnameAt = at;
          ifnameEnd = e;
          break;
        case K_NAME:
          if (!isDnsLabel(b, at, e)) return false;
          nameAt = at;
          nameEnd = e;
          break;
        case K_CLUSTER:
          if (!isDnsLabel(b, at, e)) return false;
          clusterAt = at;
          clusterEnd = e;
          break;
        default: // K_CREATED_AT
          if (e - at > 40 || !TIMESTAMP_PATTERN.test(latin1Slice.call(b, at, e))) return false;
      }
      p = e + 1;
    }
    p = skipWs(b, p);
    const c = b[p++];
    if (c === 125 /* } */) break;
    if (c !== 44 /* , */) return false;
  }
  if (skipWs(b, p) !== b.length || (seen & K_ALL) !== K_ALL) return false;
  // A cluster and a rank go together (the schema's refinement).
  if (((seen & K_CLUSTER) === 0) !== ((seen & K_RANK) === 0)) return false;
  if (!isCanonicalAddress(b, addressAt, addressEnd, id.workspace, ctx.regionId, id.hi, id.lo)) return false;
  out.i6pn = i6pn;
  out.local = bytesEqual(b, nodeAt, nodeEnd, ctx.node);
  out.node = out.local ? ctx.nodeId : fnv(b, nodeAt, nodeEnd);
  out.data = b;
  out.record = null;
  out.addressAt = addressAt;
  out.addressEnd = addressEnd;
  out.ifnameAt = ifnameAt;
  out.ifnameEnd = ifnameEnd;
  out.nameAt = nameAt;
  out.nameEnd = nameEnd;
  out.clusterAt = clusterAt;
  out.clusterEnd = clusterEnd;
  out.rank = rank;
  return true;
}

/** `out` from a record the schema accepted (the slow path). */
export function fromRecord(r: EndpointRecord, ctx: DecodeContext, out: Decoded): void {
  out.i6pn = r.i6pn;
  out.local = r.node === ctx.nodeName;
  out.node = out.local ? ctx.nodeId : nodeId(r.node);
  out.data = null;
  out.record = r;
}

/** Map value flags of a decoded entry. */
export const flagsOf = (d: Decoded): number => (d.i6pn ? EndpointFlag.I6PN : 0) | (d.local ? EndpointFlag.LOCAL : 0);
