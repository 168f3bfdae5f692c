/**
 * A reference model of the i6pn policy (bpf/policy.h), written independently
 * in TypeScript from the rules, over raw packet bytes. The golden and property
 * tests run the same packets through the kernel programs and this model and
 * require the same reason; the end-to-end matrix uses it as its oracle.
 *
 * It is deliberately plain: no shared code with the C, so that a mistake in
 * one is caught by the other.
 */

export type Hook = 'from_fabric' | 'from_endpoint' | 'to_endpoint';

export type Reason =
  | 'pass_private'
  | 'pass_not_private'
  | 'truncated'
  | 'malformed'
  | 'vlan_depth'
  | 'ext_hdr_limit'
  | 'ext_hdr_denied'
  | 'routing_header'
  | 'outside'
  | 'cross_workspace'
  | 'cross_region'
  | 'not_local'
  | 'unknown_iface'
  | 'spoofed_source'
  | 'no_i6pn'
  | 'unknown_source'
  | 'unknown_dest';

export const MAX_VLAN_TAGS = 2;
export const MAX_EXT_HDRS = 6;
const MAX_HDR_OFFSET = 4096;

export interface ModelMember {
  workspace: number;
  region: number;
  i6pn: boolean;
  local: boolean;
}

export interface ModelState {
  /** key: 32 lowercase hex chars of the address */
  endpoints: Map<string, ModelMember>;
  /** host-side veth ifindex → the endpoint it serves */
  ifaces: Map<number, { addr: string; i6pn: boolean }>;
  region: number;
}

export function isPass(r: Reason): boolean {
  return r === 'pass_private' || r === 'pass_not_private';
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

const isPrivate = (a: Uint8Array) => a[0] === 0xfd && a[1] === 0xaa;
const isLinkScope = (a: Uint8Array) =>
  (a[0] === 0xfe && (a[1]! & 0xc0) === 0x80) || (a[0] === 0xff && a[1] === 0x02);
const workspaceOf = (a: Uint8Array) => Buffer.from(a).readUInt32BE(2);
const regionOf = (a: Uint8Array) => Buffer.from(a).readUInt16BE(6);

interface Parsed {
  kind: 'ipv6';
  src: Uint8Array;
  dst: Uint8Array;
  nexthdr: number;
  off: number;
}

function parse(p: Uint8Array): Parsed | { kind: 'not_ipv6' } | { kind: 'drop'; reason: Reason } {
  if (p.length < 14) return { kind: 'drop', reason: 'truncated' };
  const type = (off: number) => (p[off]! << 8) | p[off + 1]!;
  const isVlan = (t: number) => t === 0x8100 || t === 0x88a8;
  let proto = type(12);
  let off = 14;
  for (let i = 0; i < MAX_VLAN_TAGS && isVlan(proto); i++) {
    if (p.length < off + 4) return { kind: 'drop', reason: 'truncated' };
    proto = type(off + 2);
    off += 4;
  }
  if (isVlan(proto)) return { kind: 'drop', reason: 'vlan_depth' };
  if (proto !== 0x86dd) return { kind: 'not_ipv6' };
  if (p.length < off + 40) return { kind: 'drop', reason: 'truncated' };
  if (p[off]! >> 4 !== 6) return { kind: 'drop', reason: 'malformed' };
  return {
    kind: 'ipv6',
    nexthdr: p[off + 6]!,
    src: p.slice(off + 8, off + 24),
    dst: p.slice(off + 24, off + 40),
    off: off + 40,
  };
}

const EXT_HDRS = new Set([0, 43, 44, 51, 60, 135, 139, 140, 253, 254]);

function walkExtHeaders(p: Uint8Array, off: number, nh: number): Reason | null {
  for (let i = 0; i < MAX_EXT_HDRS; i++) {
    if (nh === 0 || nh === 60 || nh === 51) {
      if (off > MAX_HDR_OFFSET) return 'ext_hdr_limit';
      if (p.length < off + 2) return 'truncated';
      const len = nh === 51 ? (p[off + 1]! + 2) * 4 : (p[off + 1]! + 1) * 8;
      nh = p[off]!;
      off += len;
      if (p.length < off) return 'truncated';
    } else if (nh === 44) {
      if (off > MAX_HDR_OFFSET) return 'ext_hdr_limit';
      if (p.length < off + 8) return 'truncated';
      if ((((p[off + 2]! << 8) | p[off + 3]!) & 0xfff8) !== 0) return null;
      nh = p[off]!;
      off += 8;
    } else if (nh === 43) {
      return 'routing_header';
    } else if (EXT_HDRS.has(nh)) {
      return 'ext_hdr_denied';
    } else {
      return null;
    }
  }
  return EXT_HDRS.has(nh) ? 'ext_hdr_limit' : null;
}

function addressChecks(pkt: Parsed): Reason | null {
  const sp = isPrivate(pkt.src);
  const dp = isPrivate(pkt.dst);
  if (!sp && !dp) return 'pass_not_private';
  if (!sp || !dp) {
    const peer = sp ? pkt.dst : pkt.src;
    if (pkt.nexthdr === 58 && isLinkScope(peer)) return 'pass_not_private';
    return 'outside';
  }
  if (workspaceOf(pkt.src) !== workspaceOf(pkt.dst)) return 'cross_workspace';
  if (regionOf(pkt.src) !== regionOf(pkt.dst)) return 'cross_region';
  return null;
}

function membersAgree(src: ModelMember, dst: ModelMember): Reason {
  if (!src.i6pn || !dst.i6pn) return 'no_i6pn';
  if (src.workspace !== dst.workspace) return 'cross_workspace';
  if (src.region !== dst.region) return 'cross_region';
  return 'pass_private';
}

/** The reason the programs must report for this packet at this hook. */
export function decide(hook: Hook, packet: Uint8Array, state: ModelState, ifindex = 0): Reason {
  const pkt = parse(packet);
  if (pkt.kind === 'not_ipv6') return 'pass_not_private';
  if (pkt.kind === 'drop') return pkt.reason;
  const early = addressChecks(pkt);
  if (early) return early;
  if (hook === 'from_fabric' && regionOf(pkt.dst) !== state.region) return 'not_local';
  const ext = walkExtHeaders(packet, pkt.off, pkt.nexthdr);
  if (ext) return ext;

  const src = state.endpoints.get(hex(pkt.src));
  const dst = state.endpoints.get(hex(pkt.dst));
  if (hook === 'from_fabric') {
    if (!dst) return 'unknown_dest';
    if (!dst.local) return 'not_local';
    if (!src) return 'unknown_source';
    if (src.local) return 'spoofed_source';
    return membersAgree(src, dst);
  }
  const iface = state.ifaces.get(ifindex);
  if (!iface) return 'unknown_iface';
  if (hook === 'from_endpoint') {
    if (iface.addr !== hex(pkt.src)) return 'spoofed_source';
  } else if (iface.addr !== hex(pkt.dst)) {
    return 'not_local';
  }
  if (!iface.i6pn) return 'no_i6pn';
  if (!src) return 'unknown_source';
  if (!src.i6pn) return 'no_i6pn';
  if (!dst) return 'unknown_dest';
  return membersAgree(src, dst);
}
