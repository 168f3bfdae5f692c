/**
 * Endpoint entries as the agent validates them: exactly the verdict of
 * lib/schema.ts validateEndpointEntry(), with a fast path for the common case.
 *
 * Why: validateEndpointEntry parses and re-formats the address with the
 * `ip-address` library, about 60–90 µs per entry, which caps a region's
 * initial sync near 10 000 entries a second and makes most of the garbage.
 * Here the address is parsed and printed by a few lines of code (RFC 5952:
 * lowercase, no leading zeros, the longest run of two or more zero groups
 * compressed, the first on a tie) — test/agent-validate.test.ts holds this
 * printer to lib/address.ts formatAddress() on random addresses.
 *
 * Only acceptance takes the fast path: the record must pass the same schema
 * (decodeRecord), its address must print back to itself and lie in fdaa::/16,
 * its workspace and region bits must match the record, and the key must name
 * the same region, workspace and endpoint id. Anything else — and any doubt —
 * goes to validateEndpointEntry, so a rejection carries exactly its reason
 * and message.
 */
import { decodeRecord, endpointRecord, parseEndpointKey, validateEndpointEntry, type EndpointEntry } from '../lib/schema.js';

const HEX_GROUP = /^(?:0|[1-9a-f][0-9a-f]{0,3})$/;

/** 16 bytes of a textual IPv6 address made of hex groups (no IPv4 tail, no zone), or null. */
export function parseHexAddress(s: string): Uint8Array | null {
  if (s.length < 2 || s.length > 39) return null;
  const halves = s.split('::');
  if (halves.length > 2) return null;
  const head = halves[0] === '' ? [] : halves[0]!.split(':');
  const tail = halves.length === 2 ? (halves[1] === '' ? [] : halves[1]!.split(':')) : [];
  const n = head.length + tail.length;
  if (halves.length === 1 ? n !== 8 : n > 7) return null;
  const groups = [...head, ...new Array<string>(8 - n).fill('0'), ...tail];
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    const g = groups[i]!;
    if (!HEX_GROUP.test(g)) return null;
    const v = parseInt(g, 16);
    out[2 * i] = v >> 8;
    out[2 * i + 1] = v & 0xff;
  }
  return out;
}

/** RFC 5952 text of 16 bytes. */
export function printAddress(b: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[2 * i]! << 8) | b[2 * i + 1]!);
  // The longest run of at least two zero groups; the first one on a tie.
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
  const hex = (from: number, to: number): string => g.slice(from, to).map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(0, 8);
  return `${hex(0, bestStart)}::${hex(bestStart + bestLen, 8)}`;
}

/** validateEndpointEntry(key, value), faster when the entry is valid. */
export function validateEndpoint(key: string, value: Uint8Array | string): EndpointEntry {
  const d = decodeRecord(endpointRecord, value);
  if (d.ok) {
    const r = d.record;
    const addr = parseHexAddress(r.address);
    if (addr && addr[0] === 0xfd && addr[1] === 0xaa && printAddress(addr) === r.address) {
      const v = new DataView(addr.buffer);
      const k = parseEndpointKey(key);
      if (
        v.getUint32(2) === r.workspaceId &&
        v.getUint16(6) === r.regionId &&
        k !== null &&
        k.region === r.region &&
        k.workspaceId === r.workspaceId &&
        k.endpointId === Buffer.from(addr.buffer, 8, 8).toString('hex')
      ) {
        return { ok: true, record: r, addr };
      }
    }
  }
  return validateEndpointEntry(key, value);
}
