/**
 * What the isolation matrix expects of each ordered pair. The expectation is a
 * function passed to the matrix (a "policy oracle"), so the reference model of
 * the BPF policy can replace the interim rule below without touching the
 * matrix code.
 */
import { Address6 } from 'ip-address';
import { type ModelState, decide, isPass } from '../policy-model.js';
import type { Endpoint } from './topology.js';

/** Enforcement points, named as the agent labels them in metrics. */
export type { Hook } from '../policy-model.js';
import type { Hook } from '../policy-model.js';

export interface Expectation {
  allowed: boolean;
  /** The drop reason (metric label) a forbidden pair should be counted under; 'pass_private' when allowed. */
  reason: string;
  /** Where the first drop happens, and on which node's agent its counter moves. */
  hook?: Hook;
  node?: string;
}

export type PolicyOracle = (src: Endpoint, dst: Endpoint) => Expectation;

/**
 * Interim rule until the reference model lands: allowed iff both endpoints
 * have i6pn, share the workspace and the region. A forbidden packet is stopped
 * where it enters the dataplane, by the sender's from-endpoint hook, for the
 * first failing check in the order of bpf/i6pn.h.
 */
export const interimOracle: PolicyOracle = (src, dst) => {
  const drop = (reason: string): Expectation => ({ allowed: false, reason, hook: 'from_endpoint', node: src.node });
  if (!src.i6pn) return drop('no_i6pn');
  if (src.workspace !== dst.workspace) return drop('cross_workspace');
  if (src.region !== dst.region) return drop('cross_region');
  if (!dst.i6pn) return drop('no_i6pn');
  return { allowed: true, reason: 'pass_private' };
};

/** Short codes for matrix cells, so a 10×10 table fits a terminal. */
export const REASON_CODES: Record<string, string> = {
  cross_workspace: 'ws',
  cross_region: 'rg',
  no_i6pn: 'n6',
  unknown_source: 'us',
  unknown_dest: 'ud',
  spoofed_source: 'sp',
  not_local: 'nl',
  unknown_iface: 'ui',
  outside: 'out',
  sealed: 'sl',
  unbound_source: 'ub',
};

export const REASON_LEGEND: Record<string, string> = {
  ws: 'different workspaces',
  rg: 'same workspace, different regions',
  n6: 'an endpoint without i6pn',
  us: 'source is not a live member',
  ud: 'destination is not a live member',
  sp: 'spoofed source',
  nl: 'destination not served here',
  ui: 'unregistered interface',
  out: 'private address paired with a public one',
  sl: 'endpoint removed, its veth sealed',
  ub: 'source not bound to where it entered',
};

export function reasonCode(reason: string): string {
  return REASON_CODES[reason] ?? reason.slice(0, 3);
}

/**
 * The oracle from the reference model of the BPF policy (test/policy-model.ts):
 * a UDP packet from `src` to `dst` walks the hooks it would meet — the
 * sender's from-endpoint, then when it crosses nodes the sending node's
 * to-fabric and the receiving node's from-fabric, the receiver's to-endpoint
 * (having entered that node from the sender's veth or from the uplink) — each
 * node holding what its agent holds (the live members of its region, its own
 * veths), and the first hook that does not pass gives the expected drop.
 */
export function modelOracle(
  endpoints: readonly Endpoint[],
  /** Endpoints removed from the store while their containers run: not members, their veths sealed. */
  sealed: ReadonlySet<string> = new Set(),
): PolicyOracle & { fromFabric(node: string, src: string, dst: string): string } {
  const regionIds = new Map<string, number>();
  for (const e of endpoints) regionIds.set(e.region, addressBytes(e.address).readUInt16BE(6));
  const ifindex = new Map(endpoints.map((e, i) => [e.name, i + 1] as const));
  const states = new Map<string, ModelState>();
  const stateOf = (node: string): ModelState => {
    let s = states.get(node);
    if (s) return s;
    const region = endpoints.find((e) => e.node === node)?.region;
    if (region === undefined) throw new Error(`modelOracle: no endpoint on node ${node}`);
    s = { endpoints: new Map(), ifaces: new Map(), region: regionIds.get(region)!, uplink: UPLINK_IFINDEX };
    for (const e of endpoints) {
      if (e.region !== region) continue;
      const b = addressBytes(e.address);
      const revoked = sealed.has(e.name);
      const local = e.node === node;
      if (!revoked) {
        s.endpoints.set(b.toString('hex'), { workspace: b.readUInt32BE(2), region: b.readUInt16BE(6), i6pn: e.i6pn, local, ifindex: local ? ifindex.get(e.name)! : 0 });
      }
      if (e.node === node) s.ifaces.set(ifindex.get(e.name)!, { addr: b.toString('hex'), i6pn: e.i6pn, sealed: revoked });
    }
    states.set(node, s);
    return s;
  };
  return Object.assign(
    (src: Endpoint, dst: Endpoint): Expectation => {
      const pkt = udpPacket(src.address, dst.address);
      const srcVeth = ifindex.get(src.name) ?? 0;
      // [hook, node, the interface it runs on, where the packet entered that node]
      const path: Array<[Hook, string, number, number]> = [['from_endpoint', src.node, srcVeth, srcVeth]];
      if (dst.node !== src.node) {
        path.push(['to_fabric', src.node, UPLINK_IFINDEX, srcVeth]);
        path.push(['from_fabric', dst.node, UPLINK_IFINDEX, UPLINK_IFINDEX]);
      }
      path.push(['to_endpoint', dst.node, ifindex.get(dst.name) ?? 0, dst.node === src.node ? srcVeth : UPLINK_IFINDEX]);
      for (const [hook, node, ifi, ingress] of path) {
        const reason = decide(hook, pkt, stateOf(node), ifi, ingress);
        if (!isPass(reason)) return { allowed: false, reason, hook, node };
      }
      return { allowed: true, reason: 'pass_private' };
    },
    {
      /** The reason `node`'s from_fabric hook gives a packet from `src` to `dst` arriving on its uplink. */
      fromFabric: (node: string, src: string, dst: string): string => decide('from_fabric', udpPacket(src, dst), stateOf(node), UPLINK_IFINDEX, UPLINK_IFINDEX),
    },
  );
}

/** The uplink's ifindex in the model's numbering (endpoint veths are 1..n). */
const UPLINK_IFINDEX = 1_000_000;

/** The 16 bytes of an IPv6 address. */
export function addressBytes(address: string): Buffer {
  return Buffer.from(new Address6(address).canonicalForm().replaceAll(':', ''), 'hex');
}

/** Ethernet + IPv6 + UDP header, as a probe would put on the wire. */
function udpPacket(src: string, dst: string): Uint8Array {
  const p = Buffer.alloc(14 + 40 + 8);
  p.writeUInt16BE(0x86dd, 12);
  p[14] = 0x60;
  p.writeUInt16BE(8, 14 + 4);
  p[14 + 6] = 17;
  p[14 + 7] = 64;
  addressBytes(src).copy(p, 14 + 8);
  addressBytes(dst).copy(p, 14 + 24);
  p.writeUInt16BE(40001, 54);
  p.writeUInt16BE(7001, 56);
  p.writeUInt16BE(8, 58);
  return p;
}
