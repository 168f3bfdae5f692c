/**
 * A reference model of the i6pn policy (bpf/policy.h), written independently
 * in TypeScript from the rules, over raw packet bytes. The golden and property
 * tests run the same packets through the kernel programs and this model and
 * require the same reason; the end-to-end matrix uses it as its oracle.
 *
 * It is deliberately plain: no shared code with the C, so that a mistake in
 * one is caught by the other.
 */

export type Hook = 'from_fabric' | 'from_endpoint' | 'to_endpoint' | 'to_fabric';

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
  | 'unknown_dest'
  | 'sealed'
  | 'unbound_source'
  | 'non_private'
  | 'to_node'
  | 'pass_link_scope'
  | 'pass_icmp_error'
  | 'pass_forward'
  | 'pass_tunnel'
  | 'pass_tunnel_reply'
  | 'not_tunneled'
  | 'to_gateway';

export const MAX_VLAN_TAGS = 2;
export const MAX_EXT_HDRS = 6;
const MAX_HDR_OFFSET = 4096;

export interface ModelMember {
  workspace: number;
  region: number;
  i6pn: boolean;
  local: boolean;
  /** a local member's bound veth (0 or absent: none) */
  ifindex?: number;
}

export interface ModelState {
  /** key: 32 lowercase hex chars of the address */
  endpoints: Map<string, ModelMember>;
  /** host-side veth ifindex → the endpoint it is bound to; sealed: revoked */
  ifaces: Map<number, { addr: string; i6pn: boolean; sealed?: boolean }>;
  region: number;
  /** the uplink's ifindex (0 or absent: none) */
  uplink?: number;
  /** --forward-non-private */
  forward?: boolean;
  /** the node's own addresses (hex), which forwarding never reaches */
  nodeAddresses?: Set<string>;
  /** the tunnels map: tunnelKey(address hex, protocol, port) */
  tunnels?: Set<string>;
}

/** A tunnels map entry of ModelState.tunnels. */
export const tunnelKey = (addressHex: string, proto: number, port: number): string => `${addressHex}/${proto}/${port}`;

export function isPass(r: Reason): boolean {
  return r.startsWith('pass_');
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

const isPrivate = (a: Uint8Array) => a[0] === 0xfd && a[1] === 0xaa;
const isLinkLocal = (a: Uint8Array) => a[0] === 0xfe && (a[1]! & 0xc0) === 0x80;
const isLinkScope = (a: Uint8Array) => isLinkLocal(a) || (a[0] === 0xff && a[1] === 0x02);
const isUnspecified = (a: Uint8Array) => a.every((b) => b === 0);
const isMulticast = (a: Uint8Array) => a[0] === 0xff;
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

type Walk = { reason: Reason } | { upper: number; off: number };

function walkExtHeaders(p: Uint8Array, off: number, nh: number): Walk {
  for (let i = 0; i < MAX_EXT_HDRS; i++) {
    if (nh === 0 || nh === 60 || nh === 51) {
      if (off > MAX_HDR_OFFSET) return { reason: 'ext_hdr_limit' };
      if (p.length < off + 2) return { reason: 'truncated' };
      const len = nh === 51 ? (p[off + 1]! + 2) * 4 : (p[off + 1]! + 1) * 8;
      nh = p[off]!;
      off += len;
      if (p.length < off) return { reason: 'truncated' };
    } else if (nh === 44) {
      if (off > MAX_HDR_OFFSET) return { reason: 'ext_hdr_limit' };
      if (p.length < off + 8) return { reason: 'truncated' };
      // A later fragment: no upper-layer header to look at.
      if ((((p[off + 2]! << 8) | p[off + 3]!) & 0xfff8) !== 0) return { upper: 44, off };
      nh = p[off]!;
      off += 8;
    } else if (nh === 43) {
      return { reason: 'routing_header' };
    } else if (EXT_HDRS.has(nh)) {
      return { reason: 'ext_hdr_denied' };
    } else {
      return { upper: nh, off };
    }
  }
  return EXT_HDRS.has(nh) ? { reason: 'ext_hdr_limit' } : { upper: nh, off };
}

/** Where an upper-layer header may start at most for the programs to read it. */
const MAX_UPPER_OFF = 0x1fff;

function icmpType(p: Uint8Array, w: { upper: number; off: number }): number {
  if (w.upper !== 58 || w.off > MAX_UPPER_OFF || p.length < w.off + 1) return -1;
  return p[w.off]!;
}

/** An ICMPv6 error (types 1-4) whose quoted IPv6 header (whole) has `owner` as its source. */
function icmpErrorAbout(p: Uint8Array, w: { upper: number; off: number }, owner: Uint8Array): boolean {
  if (w.upper !== 58 || w.off > MAX_UPPER_OFF || p.length < w.off + 8 + 40) return false;
  const type = p[w.off]!;
  if (type < 1 || type > 4) return false;
  return hex(p.subarray(w.off + 16, w.off + 32)) === hex(owner);
}

/** NDP/MLD a container may send to its node, and a node to its container. */
const NDP_FROM_ENDPOINT = new Set([131, 132, 133, 135, 136, 143]);
const NDP_TO_ENDPOINT = new Set([130, 131, 132, 134, 135, 136, 137, 143]);

function privateBits(pkt: Parsed): Reason | null {
  if (workspaceOf(pkt.src) !== workspaceOf(pkt.dst)) return 'cross_workspace';
  if (regionOf(pkt.src) !== regionOf(pkt.dst)) return 'cross_region';
  return null;
}

// ---------------------------------------------------------------- tunnels

/** Workspace 0: a gateway's (infrastructure), never a tenant's. */
const isInfra = (a: Uint8Array) => workspaceOf(a) === 0;

function tunnelBits(pkt: Parsed): Reason | null {
  return regionOf(pkt.src) !== regionOf(pkt.dst) ? 'cross_region' : null;
}

/**
 * The last step of a packet with a workspace-0 end (instead of membersAgree):
 * a gateway reaches only a tunneled (address, protocol, destination port); a
 * tenant reaches a gateway only from one (source port), and never with a TCP
 * SYN that is not a SYN-ACK.
 */
function tunnelRule(p: Uint8Array, w: { upper: number; off: number }, pkt: Parsed, src: ModelMember, dst: ModelMember, state: ModelState): Reason {
  const fromGateway = isInfra(pkt.src);
  const [gw, ep] = fromGateway ? [src, dst] : [dst, src];
  const refused: Reason = fromGateway ? 'not_tunneled' : 'to_gateway';
  if (!src.i6pn || !dst.i6pn) return 'no_i6pn';
  if (gw.workspace !== 0) return 'cross_workspace';
  if (ep.workspace === 0) return refused;
  if (gw.region !== ep.region) return 'cross_region';
  const tcp = w.upper === 6;
  if ((!tcp && w.upper !== 17) || w.off > MAX_UPPER_OFF || p.length < w.off + (tcp ? 14 : 4)) return refused;
  const at = w.off + (fromGateway ? 2 : 0);
  const port = (p[at]! << 8) | p[at + 1]!;
  if (!state.tunnels?.has(tunnelKey(hex(fromGateway ? pkt.dst : pkt.src), w.upper, port))) return refused;
  if (fromGateway) return 'pass_tunnel';
  if (tcp && (p[w.off + 13]! & 0x12) === 0x02) return 'to_gateway';
  return 'pass_tunnel_reply';
}

// ---------------------------------------------------------------- members

function membersAgree(src: ModelMember, dst: ModelMember): Reason {
  if (!src.i6pn || !dst.i6pn) return 'no_i6pn';
  if (src.workspace !== dst.workspace) return 'cross_workspace';
  if (src.region !== dst.region) return 'cross_region';
  return 'pass_private';
}

/** A veth's non-private traffic: NDP/MLD on its link, ICMPv6 errors, forwarding. */
function vethNotPrivate(
  hook: 'from_endpoint' | 'to_endpoint',
  packet: Uint8Array,
  pkt: Parsed,
  own: string,
  state: ModelState,
): Reason {
  const w = walkExtHeaders(packet, pkt.off, pkt.nexthdr);
  if ('reason' in w) return w.reason;
  const type = icmpType(packet, w);
  const sp = isPrivate(pkt.src);
  const dp = isPrivate(pkt.dst);
  if (hook === 'from_endpoint') {
    if (NDP_FROM_ENDPOINT.has(type) && isLinkScope(pkt.dst)) {
      return hex(pkt.src) === own || isLinkLocal(pkt.src) || isUnspecified(pkt.src) ? 'pass_link_scope' : 'spoofed_source';
    }
    if (!sp && !dp) return 'non_private';
    if (!sp) return 'outside';
    if (hex(pkt.src) !== own) return 'spoofed_source';
    if (!state.forward || isLinkScope(pkt.dst)) return 'outside';
    return state.nodeAddresses?.has(hex(pkt.dst)) || isMulticast(pkt.dst) ? 'to_node' : 'pass_forward';
  }
  if (NDP_TO_ENDPOINT.has(type) && (isLinkLocal(pkt.src) || isUnspecified(pkt.src))) {
    return hex(pkt.dst) === own || isLinkScope(pkt.dst) ? 'pass_link_scope' : 'not_local';
  }
  if (!sp && !dp) return 'non_private';
  if (!dp) return 'outside';
  if (hex(pkt.dst) !== own) return 'not_local';
  if (icmpErrorAbout(packet, w, pkt.dst)) return 'pass_icmp_error';
  if (state.forward && !isLinkScope(pkt.src)) return 'pass_forward';
  return 'outside';
}

/**
 * The reason the programs must report for this packet at this hook.
 * `ifindex` is the veth a TC hook runs on; `ingress` is where the packet
 * entered the node (to_endpoint, to_fabric; 0: the node's own stack).
 */
export function decide(hook: Hook, packet: Uint8Array, state: ModelState, ifindex = 0, ingress = 0): Reason {
  const veth = hook === 'from_endpoint' || hook === 'to_endpoint';
  const iface = veth ? state.ifaces.get(ifindex) : undefined;
  /** On a veth: is it bound, and not sealed? */
  const vethState = (): Reason | null => (!iface ? 'unknown_iface' : iface.sealed ? 'sealed' : null);
  const pkt = parse(packet);
  if (pkt.kind === 'drop') return pkt.reason;
  if (pkt.kind === 'not_ipv6') return veth ? (vethState() ?? 'non_private') : 'pass_not_private';
  const sp = isPrivate(pkt.src);
  const dp = isPrivate(pkt.dst);
  const tunnel = sp && dp && (isInfra(pkt.src) || isInfra(pkt.dst));
  const bitsOf = tunnel ? tunnelBits : privateBits;
  // A veth is looked up after what the addresses alone forbid (private packets' workspace and region bits).
  if (veth) {
    const early = sp && dp ? bitsOf(pkt) : null;
    if (early) return early;
    const state_ = vethState();
    if (state_) return state_;
  }
  /** A local member that entered from its own bound veth. */
  const fromOwnVeth = (m: ModelMember | undefined) => !!m && m.local && !!m.ifindex && m.ifindex === ingress;

  if (!(sp && dp)) {
    if (veth) return vethNotPrivate(hook, packet, pkt, iface!.addr, state);
    if (!sp && !dp) return 'pass_not_private';
    if (sp) return 'outside';
    const w = walkExtHeaders(packet, pkt.off, pkt.nexthdr);
    if ('reason' in w) return w.reason;
    if (!icmpErrorAbout(packet, w, pkt.dst)) return 'outside';
    if (hook === 'to_fabric') return 'pass_icmp_error';
    const d = state.endpoints.get(hex(pkt.dst));
    if (!d) return 'unknown_dest';
    if (!d.local) return 'not_local';
    return 'pass_icmp_error';
  }
  if (hook === 'to_fabric') {
    const m = state.endpoints.get(hex(pkt.src));
    if (!fromOwnVeth(m)) return 'unbound_source';
    return m!.i6pn ? 'pass_private' : 'no_i6pn';
  }

  const bits = bitsOf(pkt);
  if (bits) return bits;
  if (hook === 'from_fabric' && regionOf(pkt.dst) !== state.region) return 'not_local';
  const w = walkExtHeaders(packet, pkt.off, pkt.nexthdr);
  if ('reason' in w) return w.reason;

  const src = state.endpoints.get(hex(pkt.src));
  const dst = state.endpoints.get(hex(pkt.dst));
  if (hook === 'from_fabric') {
    if (!dst) return 'unknown_dest';
    if (!dst.local) return 'not_local';
    if (!src) return 'unknown_source';
    if (src.local) return 'spoofed_source';
    return tunnel ? tunnelRule(packet, w, pkt, src, dst, state) : membersAgree(src, dst);
  }
  if (hook === 'from_endpoint') {
    if (iface!.addr !== hex(pkt.src)) return 'spoofed_source';
  } else if (iface!.addr !== hex(pkt.dst)) {
    return 'not_local';
  }
  if (!iface!.i6pn) return 'no_i6pn';
  if (!src) return 'unknown_source';
  if (!src.i6pn) return 'no_i6pn';
  if (hook === 'to_endpoint') {
    const fromUplink = !!state.uplink && ingress === state.uplink;
    if (src.local ? !fromOwnVeth(src) : !fromUplink) return src.local && fromUplink ? 'spoofed_source' : 'unbound_source';
  }
  if (!dst) return 'unknown_dest';
  return tunnel ? tunnelRule(packet, w, pkt, src, dst, state) : membersAgree(src, dst);
}
