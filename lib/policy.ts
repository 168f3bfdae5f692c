/**
 * The i6pn policy (bpf/policy.h) as a model, written independently in
 * TypeScript from the rules, over raw packet bytes, and the path a packet
 * takes through the fleet's hooks. One model for three users, so that they
 * cannot drift apart:
 *
 *  - the golden and property tests run the same packets through the kernel
 *    programs and decide() and require the same reason;
 *  - the end-to-end matrix takes its expectations from FleetModel;
 *  - `i6pnctl explain` answers from FleetModel, built from the store, and
 *    says why with describeStep().
 *
 * The packet model is deliberately plain and shares no code with the C, so
 * that a mistake in one is caught by the other.
 */
import { RESOLVER_ADDRESS, addressHex, formatAddress, isPrivate, parseAddress, regionIdHex, regionOf, workspaceIdHex, workspaceOf } from './address.js';

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
  | 'pass_resolver'
  | 'resolver_not_dns'
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

const isLinkLocal = (a: Uint8Array) => a[0] === 0xfe && (a[1]! & 0xc0) === 0x80;
const isLinkScope = (a: Uint8Array) => isLinkLocal(a) || (a[0] === 0xff && a[1] === 0x02);
const isUnspecified = (a: Uint8Array) => a.every((b) => b === 0);
const isMulticast = (a: Uint8Array) => a[0] === 0xff;

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

/** The node resolver, fdaa::53: workspace 0, never an endpoint's. */
const RESOLVER = addressHex(parseAddress(RESOLVER_ADDRESS));

/**
 * DNS with the node's resolver on a veth: a query from the veth's own
 * address to UDP/TCP port 53 of the resolver, or an answer from its port 53
 * that the node itself sent (ingress 0) to the veth's own address.
 */
function resolverAtVeth(hook: 'from_endpoint' | 'to_endpoint', packet: Uint8Array, pkt: Parsed, own: string, ingress: number): Reason {
  const w = walkExtHeaders(packet, pkt.off, pkt.nexthdr);
  if ('reason' in w) return w.reason;
  if (hook === 'to_endpoint') {
    if (hex(pkt.dst) !== own) return 'not_local';
    if (ingress !== 0) return 'unbound_source';
  } else if (hex(pkt.src) !== own) {
    return 'spoofed_source';
  }
  if ((w.upper !== 6 && w.upper !== 17) || w.off > MAX_UPPER_OFF || packet.length < w.off + 4) return 'resolver_not_dns';
  const at = hook === 'to_endpoint' ? w.off : w.off + 2;
  return ((packet[at]! << 8) | packet[at + 1]!) === 53 ? 'pass_resolver' : 'resolver_not_dns';
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
  // A veth is looked up after what the addresses alone forbid (private packets' workspace and region bits).
  // DNS with the resolver is judged apart: its workspace (0) is nobody's.
  const resolver = veth && sp && dp && hex(hook === 'to_endpoint' ? pkt.src : pkt.dst) === RESOLVER;
  // A packet with a workspace-0 end (a tunnel gateway's) is decided by the tunnel rules.
  const tunnel = sp && dp && (isInfra(pkt.src) || isInfra(pkt.dst));
  const bitsOf = tunnel ? tunnelBits : privateBits;
  if (veth) {
    const early = sp && dp && !resolver ? bitsOf(pkt) : null;
    if (early) return early;
    const state_ = vethState();
    if (state_) return state_;
    if (resolver) return resolverAtVeth(hook, packet, pkt, iface!.addr, ingress);
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

// ---------------------------------------------------------------- the fleet: a packet's path

/** The hooks' names, in the order a packet between two nodes meets them. */
export const HOOKS: readonly Hook[] = ['from_endpoint', 'to_fabric', 'from_fabric', 'to_endpoint'];

/** One endpoint as the store says it, for the model of the nodes that hold it. */
export interface FleetEndpoint {
  /** Its 16-byte address. */
  address: Uint8Array;
  i6pn: boolean;
  /** The node it runs on; null where the store does not say (it keeps no node for a removed endpoint). */
  node: string | null;
  /**
   * A live member of the store. false: removed while (perhaps) its container
   * runs: no node holds it as a member, and its veth is sealed.
   */
  live: boolean;
}

/** A hook a packet meets, where, and what it decides. */
export interface PathStep {
  hook: Hook;
  /** The node whose program decides; null for a removed endpoint's node, which the store does not keep. */
  node: string | null;
  reason: Reason;
}

/** The uplink's ifindex in the model's numbering (endpoint veths are 1..n). */
const UPLINK_IFINDEX = 1_000_000;

/**
 * The policy as the fleet's agents enforce it once converged on the store:
 * each node holds the live members of its region and binds its own
 * endpoints' veths (a removed endpoint's veth sealed). Only the endpoints
 * given are known; for a path that is all a decision reads (the packet's two
 * ends and the veths it crosses).
 */
export class FleetModel {
  private readonly ends: FleetEndpoint[] = [];
  private readonly veth = new Map<string, number>();
  /** By node name; the store's unplaced (removed) endpoints by region: `\0<region id>`. */
  private readonly states = new Map<string, ModelState>();

  constructor(endpoints: Iterable<FleetEndpoint>) {
    for (const e of endpoints) this.add(e);
  }

  private add(e: FleetEndpoint): number {
    const key = hex(e.address);
    let i = this.veth.get(key);
    if (i === undefined) {
      this.ends.push(e);
      i = this.ends.length;
      this.veth.set(key, i);
      this.states.clear();
    }
    return i;
  }

  /** What node `node`'s maps hold (null: the node of endpoints the store does not place, in `region`). */
  nodeState(node: string | null, region?: number): ModelState {
    const placed = node === null ? undefined : this.ends.find((e) => e.node === node && isPrivate(e.address));
    const regionId = placed ? regionOf(placed.address) : region;
    if (regionId === undefined) throw new Error(`FleetModel: no endpoint on node ${String(node)} says its region`);
    const key = node ?? `\0${regionId}`;
    let s = this.states.get(key);
    if (s) return s;
    s = { endpoints: new Map(), ifaces: new Map(), region: regionId, uplink: UPLINK_IFINDEX };
    for (const e of this.ends) {
      if (!isPrivate(e.address)) continue;
      const local = e.node === node;
      const veth = this.veth.get(hex(e.address))!;
      if (e.live && regionOf(e.address) === regionId) {
        s.endpoints.set(hex(e.address), { workspace: workspaceOf(e.address), region: regionId, i6pn: e.i6pn, local, ifindex: local ? veth : 0 });
      }
      if (local && (node !== null || regionOf(e.address) === regionId)) s.ifaces.set(veth, { addr: hex(e.address), i6pn: e.i6pn, sealed: !e.live });
    }
    this.states.set(key, s);
    return s;
  }

  /**
   * The hooks a UDP packet from `src` (sent by its container) to `dst` meets:
   * the sender's from_endpoint; when it crosses nodes, the sending node's
   * to_fabric and the receiving node's from_fabric; the receiver's
   * to_endpoint, having entered that node from the sender's veth or from the
   * uplink. i6pn's decisions do not look at ports, nor at the protocol of
   * traffic between two endpoints, so one packet stands for all.
   *
   * Each hook is decided as in monitor mode, where a drop is counted and the
   * packet goes on; in enforce mode the first step that does not pass is where
   * the packet stops. The walk ends after from_endpoint when `dst` is not a
   * live private endpoint (no node routes it), or when `src`'s node is not
   * known (the store keeps none for a removed endpoint: its sealed veth
   * drops everything, and where the packet would go on is not known).
   */
  path(src: FleetEndpoint, dst: FleetEndpoint): PathStep[] {
    const srcVeth = this.add(src);
    const dstVeth = this.add(dst);
    const pkt = udpPacket(src.address, dst.address);
    const at = (hook: Hook, node: string | null, ifindex: number, ingress: number): PathStep => ({
      hook,
      node,
      reason: decide(hook, pkt, this.nodeState(node, regionOf(src.address)), ifindex, ingress),
    });
    const steps = [at('from_endpoint', src.node, srcVeth, srcVeth)];
    if (!dst.live || dst.node === null || !isPrivate(dst.address) || src.node === null) return steps;
    const sameNode = src.node !== null && dst.node === src.node;
    if (!sameNode) {
      steps.push(at('to_fabric', src.node, UPLINK_IFINDEX, srcVeth));
      steps.push(at('from_fabric', dst.node, UPLINK_IFINDEX, UPLINK_IFINDEX));
    }
    steps.push(at('to_endpoint', dst.node, dstVeth, sameNode ? srcVeth : UPLINK_IFINDEX));
    return steps;
  }

  /** What `node`'s from_fabric hook decides for a UDP packet from `src` to `dst` arriving on its uplink. */
  fromFabric(node: string, src: Uint8Array, dst: Uint8Array): Reason {
    return decide('from_fabric', udpPacket(src, dst), this.nodeState(node), UPLINK_IFINDEX, UPLINK_IFINDEX);
  }
}

/** The step where enforce mode stops the packet, or null when every hook passes it. */
export function firstDrop(steps: readonly PathStep[]): PathStep | null {
  return steps.find((s) => !isPass(s.reason)) ?? null;
}

/** Ethernet + IPv6 + UDP header, as a container would put it on its veth. */
function udpPacket(src: Uint8Array, dst: Uint8Array): Uint8Array {
  const p = Buffer.alloc(14 + 40 + 8);
  p.writeUInt16BE(0x86dd, 12);
  p[14] = 0x60;
  p.writeUInt16BE(8, 14 + 4);
  p[14 + 6] = 17;
  p[14 + 7] = 64;
  p.set(src, 14 + 8);
  p.set(dst, 14 + 24);
  p.writeUInt16BE(40001, 54);
  p.writeUInt16BE(7001, 56);
  p.writeUInt16BE(8, 58);
  return p;
}

// ---------------------------------------------------------------- why, in words

/** What the store says of one end, for the words of describeStep(). */
export interface EndFacts {
  address: Uint8Array;
  /** Workspace and region names, where the store knows them. */
  workspace?: string | undefined;
  region?: string | undefined;
  i6pn?: boolean | undefined;
  /** Registered once (its address is in the ledger). */
  registered: boolean;
  /** When it was removed (ISO 8601), for a removed endpoint. */
  removedAt?: string | undefined;
}

/** What each reason means, in a few words (bpf/i6pn.h). */
export const REASON_TEXT: Record<Reason, string> = {
  pass_private: 'same workspace, same region, live members with i6pn',
  pass_not_private: 'no fdaa::/16 address: not i6pn traffic',
  truncated: 'a header ends past the packet',
  malformed: 'IPv6 ethertype but not an IPv6 header',
  vlan_depth: 'more VLAN tags than the programs walk',
  ext_hdr_limit: 'a longer extension header chain than the programs walk',
  ext_hdr_denied: 'an extension header not on the allow-list',
  routing_header: 'a routing header in private traffic',
  outside: 'a private address paired with one outside fdaa::/16',
  cross_workspace: 'different workspaces',
  cross_region: 'same workspace, different regions',
  not_local: 'the destination is not served by this node or veth',
  unknown_iface: 'a veth the agent has not bound',
  spoofed_source: "the source is not the sender's own address",
  no_i6pn: 'an endpoint without i6pn',
  unknown_source: 'the source is not a live endpoint',
  unknown_dest: 'the destination is not a live endpoint',
  sealed: 'the endpoint was removed: its veth is sealed',
  unbound_source: 'the packet did not enter where its source is bound',
  non_private: 'traffic on an i6pn veth that is not i6pn traffic',
  to_node: "a container reaching the node's own addresses",
  pass_link_scope: 'NDP/MLD between an endpoint and its node',
  pass_icmp_error: 'an ICMPv6 error about a packet the endpoint sent',
  pass_forward: "a container's own non-private traffic (--forward-non-private)",
  pass_resolver: "DNS between an endpoint and its node's resolver (fdaa::53, port 53)",
  resolver_not_dns: "to or from the node's resolver address, but not DNS (UDP/TCP port 53)",
  pass_tunnel: 'a tunnel gateway to a tunneled (endpoint address, protocol, port)',
  pass_tunnel_reply: "a tunneled port's reply to a tunnel gateway",
  not_tunneled: 'a tunnel gateway to anything no tunnel exposes',
  to_gateway: "a tenant to a tunnel gateway, other than a tunneled port's reply",
};

const workspaceName = (e: EndFacts): string => e.workspace ?? `workspace 0x${workspaceIdHex(workspaceOf(e.address))}`;
const regionName = (e: EndFacts): string => e.region ?? `region 0x${regionIdHex(regionOf(e.address))}`;

function notLive(e: EndFacts): string {
  const a = formatAddress(e.address);
  if (e.removedAt) return `${a} was removed at ${e.removedAt}`;
  return e.registered ? `${a} is not in the store` : `no endpoint was ever registered with ${a}`;
}

/**
 * Why `step` decides as it does for a packet from `src` to `dst`, in a
 * sentence that names them: "different workspaces: acme vs globex",
 * "endpoint sealed: … was removed at …", "no i6pn: … was registered with
 * --no-i6pn", "different regions: ams vs sjc".
 */
export function describeStep(step: PathStep, src: EndFacts, dst: EndFacts): string {
  switch (step.reason) {
    case 'pass_private':
      return `same workspace (${workspaceName(src)}) and region (${regionName(src)}), both live endpoints with i6pn`;
    case 'cross_workspace':
      return `different workspaces: ${workspaceName(src)} vs ${workspaceName(dst)}`;
    case 'cross_region':
      return `different regions: ${regionName(src)} vs ${regionName(dst)}`;
    case 'no_i6pn': {
      const without = src.i6pn === false ? src : dst;
      return `no i6pn: ${formatAddress(without.address)} was registered with --no-i6pn`;
    }
    case 'sealed':
      return `endpoint sealed: ${notLive(src)}; its veth drops everything in and out while its container runs`;
    case 'unknown_dest':
      return `not a live endpoint: ${notLive(dst)}`;
    case 'unknown_source':
      return `not a live endpoint: ${notLive(src)}`;
    case 'outside':
      return `not private: ${formatAddress(isPrivate(dst.address) ? src.address : dst.address)} is outside fdaa::/16 (only an agent with --forward-non-private lets a container reach it)`;
    default:
      return REASON_TEXT[step.reason];
  }
}
