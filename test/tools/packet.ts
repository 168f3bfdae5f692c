/**
 * A small packet builder for tests and benchmarks: Ethernet with any number of
 * VLAN tags, IPv6 with extension headers (hop-by-hop, destination options,
 * routing, fragment, AH, or any other number in the generic TLV shape),
 * ICMPv6 / TCP / UDP with correct checksums, and IPv4. Bytes out, nothing
 * clever: a test states the packet it wants, including the malformed ones
 * (wrong lengths, truncations, odd next-header values).
 */
import { writeEndpointAddress } from '../../lib/address.js';

export const EtherType = { IPV4: 0x0800, IPV6: 0x86dd, VLAN: 0x8100, QINQ: 0x88a8, ARP: 0x0806 } as const;

/** IPv6 next-header / IPv4 protocol numbers. */
export const Proto = {
  HOP_BY_HOP: 0,
  ICMP: 1,
  TCP: 6,
  UDP: 17,
  ROUTING: 43,
  FRAGMENT: 44,
  ESP: 50,
  AH: 51,
  ICMPV6: 58,
  NO_NEXT: 59,
  DEST_OPTS: 60,
  MOBILITY: 135,
} as const;

export type Address = Uint8Array | string;

/** A VLAN tag: an id, or id with TPID (0x8100 by default, 0x88a8 for an S-tag) and priority. */
export type VlanTag = number | { id: number; tpid?: number; pcp?: number };

export type ExtHeader =
  /** Options padded with PadN; `length` is the header's total bytes (multiple of 8, default 8). */
  | { type: 'hop-by-hop'; length?: number }
  | { type: 'dest-opts'; length?: number }
  /** Routing header: type 0/2/3/4..., segments left, then the addresses (16 bytes each) after 4 reserved bytes. */
  | { type: 'routing'; routingType?: number; segmentsLeft?: number; addresses?: Address[] }
  /** Fragment header: offset in 8-byte units, M flag, identification. */
  | { type: 'fragment'; offset?: number; more?: boolean; id?: number }
  /** Authentication header with an ICV of `icvLength` bytes (default 12; AH length counts 4-byte units). */
  | { type: 'ah'; spi?: number; seq?: number; icvLength?: number }
  /** Any protocol number in the generic next-header/length/data shape; `length` total bytes (multiple of 8). */
  | { type: 'generic'; protocol: number; length?: number }
  /** Exact bytes with the given protocol number; the first byte is overwritten with the next header. */
  | { type: 'raw'; protocol: number; bytes: Uint8Array };

export type L4 =
  | { proto: 'udp'; srcPort?: number; dstPort?: number; payload?: Uint8Array }
  | { proto: 'tcp'; srcPort?: number; dstPort?: number; flags?: number; seq?: number; payload?: Uint8Array }
  | { proto: 'icmpv6'; icmpType?: number; code?: number; body?: Uint8Array }
  /** Next header 59 (no next header) and these bytes, if any. */
  | { proto: 'none'; payload?: Uint8Array }
  /** Any protocol number with an opaque payload. */
  | { proto: 'raw'; protocol: number; payload?: Uint8Array };

export interface EthernetSpec {
  ethDst?: Uint8Array;
  ethSrc?: Uint8Array;
  /** Outermost first. */
  vlans?: VlanTag[];
}

export interface Ipv6Spec extends EthernetSpec {
  src: Address;
  dst: Address;
  ext?: ExtHeader[];
  /** Default: UDP 12345 → 7 with an 8-byte payload. */
  l4?: L4;
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
  /** Override the IPv6 payload length field (for malformed packets). */
  payloadLength?: number;
  /** Override the version nibble (default 6). */
  version?: number;
  /** Only the IPv6 packet, no Ethernet header. */
  noEthernet?: boolean;
}

export interface Ipv4Spec extends EthernetSpec {
  src: string | Uint8Array;
  dst: string | Uint8Array;
  protocol?: number;
  payload?: Uint8Array;
  ttl?: number;
}

const DEFAULT_DST_MAC = Uint8Array.of(0x02, 0, 0, 0, 0, 0x02);
const DEFAULT_SRC_MAC = Uint8Array.of(0x02, 0, 0, 0, 0, 0x01);

// ---------------------------------------------------------------- addresses

/** Parse an IPv6 address ("fdaa:1:2:3::9", "::1", "::ffff:1.2.3.4") to 16 bytes. */
export function parseIpv6(text: string): Uint8Array {
  const s = text.trim().replace(/%.*$/, '');
  const fail = (): never => {
    throw new Error(`not an IPv6 address: ${JSON.stringify(text)}`);
  };
  const halves = s.split('::');
  if (halves.length > 2) fail();
  const groups = (part: string): number[] => {
    if (part === '') return [];
    const out: number[] = [];
    const items = part.split(':');
    items.forEach((g, i) => {
      if (i === items.length - 1 && g.includes('.')) {
        const v4 = parseIpv4(g);
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(g)) fail();
        out.push(parseInt(g, 16));
      }
    });
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  const fill = 8 - head.length - tail.length;
  if ((halves.length === 1 && fill !== 0) || (halves.length === 2 && fill < 1)) fail();
  const all = [...head, ...new Array<number>(halves.length === 2 ? fill : 0).fill(0), ...tail];
  const b = new Uint8Array(16);
  all.forEach((g, i) => {
    b[2 * i] = g >> 8;
    b[2 * i + 1] = g & 0xff;
  });
  return b;
}

export function parseIpv4(text: string): Uint8Array {
  const parts = text.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) {
    throw new Error(`not an IPv4 address: ${JSON.stringify(text)}`);
  }
  return Uint8Array.from(parts.map(Number));
}

function addr6(a: Address): Uint8Array {
  if (typeof a === 'string') return parseIpv6(a);
  if (a.length !== 16) throw new Error(`an IPv6 address is 16 bytes, got ${a.length}`);
  return a;
}

/**
 * An i6pn private address: fdaa:<workspace 32>:<region 16>:<endpoint 64>.
 * `endpoint` is a bigint or a number (< 2^53).
 */
export function privateAddress(workspace: number, region: number, endpoint: bigint | number): Uint8Array {
  const id = BigInt.asUintN(64, BigInt(endpoint));
  const b = new Uint8Array(16);
  writeEndpointAddress(b, 0, workspace >>> 0, region & 0xffff, Number(id >> 32n), Number(id & 0xffff_ffffn));
  return b;
}

// ---------------------------------------------------------------- pieces

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Ethernet header (with VLAN tags) in front of a payload of `etherType`. */
export function ethernet(spec: EthernetSpec, etherType: number, payload: Uint8Array): Uint8Array {
  const tags = spec.vlans ?? [];
  const hdr = new Uint8Array(14 + 4 * tags.length);
  const v = new DataView(hdr.buffer);
  hdr.set(spec.ethDst ?? DEFAULT_DST_MAC, 0);
  hdr.set(spec.ethSrc ?? DEFAULT_SRC_MAC, 6);
  let at = 12;
  for (const tag of tags) {
    const t = typeof tag === 'number' ? { id: tag } : tag;
    v.setUint16(at, t.tpid ?? EtherType.VLAN);
    v.setUint16(at + 2, ((t.pcp ?? 0) << 13) | (t.id & 0x0fff));
    at += 4;
  }
  v.setUint16(at, etherType);
  return concat([hdr, payload]);
}

function checksum(chunks: Uint8Array[]): number {
  let sum = 0;
  let odd: number | null = null;
  for (const c of chunks) {
    for (let i = 0; i < c.length; i++) {
      if (odd === null) odd = c[i]!;
      else {
        sum += (odd << 8) | c[i]!;
        odd = null;
      }
    }
  }
  if (odd !== null) sum += odd << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  const r = ~sum & 0xffff;
  return r === 0 ? 0xffff : r;
}

function pseudoHeader6(src: Uint8Array, dst: Uint8Array, len: number, proto: number): Uint8Array {
  const p = new Uint8Array(40);
  const v = new DataView(p.buffer);
  p.set(src, 0);
  p.set(dst, 16);
  v.setUint32(32, len);
  v.setUint8(39, proto);
  return p;
}

function l4Bytes(l4: L4, src: Uint8Array, dst: Uint8Array): { proto: number; bytes: Uint8Array } {
  switch (l4.proto) {
    case 'udp': {
      const payload = l4.payload ?? new Uint8Array(8);
      const b = new Uint8Array(8 + payload.length);
      const v = new DataView(b.buffer);
      v.setUint16(0, l4.srcPort ?? 12345);
      v.setUint16(2, l4.dstPort ?? 7);
      v.setUint16(4, b.length);
      b.set(payload, 8);
      v.setUint16(6, checksum([pseudoHeader6(src, dst, b.length, Proto.UDP), b]));
      return { proto: Proto.UDP, bytes: b };
    }
    case 'tcp': {
      const payload = l4.payload ?? new Uint8Array(0);
      const b = new Uint8Array(20 + payload.length);
      const v = new DataView(b.buffer);
      v.setUint16(0, l4.srcPort ?? 12345);
      v.setUint16(2, l4.dstPort ?? 80);
      v.setUint32(4, l4.seq ?? 1);
      v.setUint8(12, 5 << 4);
      v.setUint8(13, l4.flags ?? 0x02 /* SYN */);
      v.setUint16(14, 65535);
      b.set(payload, 20);
      v.setUint16(16, checksum([pseudoHeader6(src, dst, b.length, Proto.TCP), b]));
      return { proto: Proto.TCP, bytes: b };
    }
    case 'icmpv6': {
      const body = l4.body ?? new Uint8Array(4 + 8); // echo: id, seq, 8 bytes of data
      const b = new Uint8Array(4 + body.length);
      const v = new DataView(b.buffer);
      v.setUint8(0, l4.icmpType ?? 128 /* echo request */);
      v.setUint8(1, l4.code ?? 0);
      b.set(body, 4);
      v.setUint16(2, checksum([pseudoHeader6(src, dst, b.length, Proto.ICMPV6), b]));
      return { proto: Proto.ICMPV6, bytes: b };
    }
    case 'none':
      return { proto: Proto.NO_NEXT, bytes: l4.payload ?? new Uint8Array(0) };
    case 'raw':
      return { proto: l4.protocol, bytes: l4.payload ?? new Uint8Array(0) };
  }
}

function extProto(e: ExtHeader): number {
  switch (e.type) {
    case 'hop-by-hop':
      return Proto.HOP_BY_HOP;
    case 'dest-opts':
      return Proto.DEST_OPTS;
    case 'routing':
      return Proto.ROUTING;
    case 'fragment':
      return Proto.FRAGMENT;
    case 'ah':
      return Proto.AH;
    case 'generic':
    case 'raw':
      return e.protocol;
  }
}

function tlvHeader(next: number, length: number): Uint8Array {
  if (length < 8 || length % 8 !== 0 || length > 2048) throw new Error(`extension header length ${length} is not a multiple of 8 in 8..2048`);
  const b = new Uint8Array(length);
  b[0] = next;
  b[1] = length / 8 - 1;
  // PadN option over the rest (type 1, length), which is also harmless for generic headers.
  b[2] = 1;
  b[3] = length - 4;
  return b;
}

function extBytes(e: ExtHeader, next: number): Uint8Array {
  switch (e.type) {
    case 'hop-by-hop':
    case 'dest-opts':
    case 'generic':
      return tlvHeader(next, e.length ?? 8);
    case 'routing': {
      const addrs = (e.addresses ?? []).map(addr6);
      const b = new Uint8Array(8 + 16 * addrs.length);
      b[0] = next;
      b[1] = 2 * addrs.length;
      b[2] = e.routingType ?? 0;
      b[3] = e.segmentsLeft ?? addrs.length;
      addrs.forEach((a, i) => b.set(a, 8 + 16 * i));
      return b;
    }
    case 'fragment': {
      const b = new Uint8Array(8);
      const v = new DataView(b.buffer);
      b[0] = next;
      v.setUint16(2, ((e.offset ?? 0) << 3) | (e.more ? 1 : 0));
      v.setUint32(4, e.id ?? 0x1234_5678);
      return b;
    }
    case 'ah': {
      const icv = e.icvLength ?? 12;
      const total = 12 + icv;
      if (total % 8 !== 0) throw new Error(`AH of ${total} bytes is not 8-byte aligned as IPv6 requires`);
      const b = new Uint8Array(total);
      const v = new DataView(b.buffer);
      b[0] = next;
      b[1] = total / 4 - 2; // AH counts 4-byte units, minus 2
      v.setUint32(4, e.spi ?? 0x100);
      v.setUint32(8, e.seq ?? 1);
      return b;
    }
    case 'raw': {
      const b = new Uint8Array(e.bytes);
      if (b.length > 0) b[0] = next;
      return b;
    }
  }
}

/** The IPv6 packet (fixed header, extension headers, L4) without Ethernet. */
export function ipv6(spec: Ipv6Spec): Uint8Array {
  const src = addr6(spec.src);
  const dst = addr6(spec.dst);
  const l4 = l4Bytes(spec.l4 ?? { proto: 'udp' }, src, dst);
  const ext = spec.ext ?? [];
  const extParts: Uint8Array[] = [];
  for (let i = ext.length - 1; i >= 0; i--) {
    const next = i === ext.length - 1 ? l4.proto : extProto(ext[i + 1]!);
    extParts.unshift(extBytes(ext[i]!, next));
  }
  const payload = concat([...extParts, l4.bytes]);
  const hdr = new Uint8Array(40);
  const v = new DataView(hdr.buffer);
  v.setUint32(0, ((spec.version ?? 6) << 28) | ((spec.trafficClass ?? 0) << 20) | ((spec.flowLabel ?? 0) & 0xfffff));
  v.setUint16(4, spec.payloadLength ?? payload.length);
  v.setUint8(6, ext.length > 0 ? extProto(ext[0]!) : l4.proto);
  v.setUint8(7, spec.hopLimit ?? 64);
  hdr.set(src, 8);
  hdr.set(dst, 24);
  return concat([hdr, payload]);
}

/** An IPv6 frame: Ethernet (+ VLAN tags) + IPv6, or only IPv6 with noEthernet. */
export function ipv6Packet(spec: Ipv6Spec): Uint8Array {
  const ip = ipv6(spec);
  return spec.noEthernet ? ip : ethernet(spec, EtherType.IPV6, ip);
}

/** An IPv4 frame with a valid header checksum. */
export function ipv4Packet(spec: Ipv4Spec): Uint8Array {
  const payload = spec.payload ?? new Uint8Array(8);
  const hdr = new Uint8Array(20);
  const v = new DataView(hdr.buffer);
  v.setUint8(0, 0x45);
  v.setUint16(2, 20 + payload.length);
  v.setUint16(4, 1);
  v.setUint8(8, spec.ttl ?? 64);
  v.setUint8(9, spec.protocol ?? Proto.UDP);
  hdr.set(typeof spec.src === 'string' ? parseIpv4(spec.src) : spec.src, 12);
  hdr.set(typeof spec.dst === 'string' ? parseIpv4(spec.dst) : spec.dst, 16);
  v.setUint16(10, checksum([hdr]));
  return ethernet(spec, EtherType.IPV4, concat([hdr, payload]));
}

/** An Ethernet frame carrying arbitrary bytes under any EtherType. */
export function rawFrame(spec: EthernetSpec & { etherType: number; payload?: Uint8Array }): Uint8Array {
  return ethernet(spec, spec.etherType, spec.payload ?? new Uint8Array(0));
}

/** The first `length` bytes (a truncated copy). */
export function truncate(packet: Uint8Array, length: number): Uint8Array {
  return packet.slice(0, Math.max(0, Math.min(length, packet.length)));
}

/** Offsets of the layers in a frame built by ipv6Packet (for truncation tests). */
export function ipv6Offsets(spec: Ipv6Spec): { ipv6: number; ext: number[]; l4: number; end: number } {
  const eth = spec.noEthernet ? 0 : 14 + 4 * (spec.vlans?.length ?? 0);
  const src = addr6(spec.src);
  const dst = addr6(spec.dst);
  const ext = spec.ext ?? [];
  const offsets: number[] = [];
  let at = eth + 40;
  for (let i = 0; i < ext.length; i++) {
    offsets.push(at);
    at += extBytes(ext[i]!, 0).length;
  }
  const l4 = l4Bytes(spec.l4 ?? { proto: 'udp' }, src, dst);
  return { ipv6: eth, ext: offsets, l4: at, end: at + l4.bytes.length };
}
