/**
 * What the isolation matrix expects of each ordered pair. The expectation is a
 * function passed to the matrix (a "policy oracle"), so the reference model of
 * the BPF policy can replace the interim rule below without touching the
 * matrix code.
 */
import { parseAddress } from '../../lib/address.js';
import { FleetModel, firstDrop, type FleetEndpoint, type Hook } from '../../lib/policy.js';
import type { Endpoint } from './topology.js';

/** Enforcement points, named as the agent labels them in metrics. */
export type { Hook } from '../../lib/policy.js';

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
 * The oracle from the model of the BPF policy (lib/policy.ts, the one
 * `i6pnctl explain` answers from): a UDP packet from `src` to `dst` walks the
 * hooks it would meet (FleetModel.path), each node holding what its agent
 * holds (the live members of its region, its own veths), and the first hook
 * that does not pass gives the expected drop.
 */
export function modelOracle(
  endpoints: readonly Endpoint[],
  /** Endpoints removed from the store while their containers run: not members, their veths sealed. */
  sealed: ReadonlySet<string> = new Set(),
): PolicyOracle & { fromFabric(node: string, src: string, dst: string): string; model: FleetModel } {
  const end = (e: Endpoint): FleetEndpoint => ({ address: addressBytes(e.address), i6pn: e.i6pn, node: e.node, live: !sealed.has(e.name) });
  const model = new FleetModel(endpoints.map(end));
  return Object.assign(
    (src: Endpoint, dst: Endpoint): Expectation => {
      const drop = firstDrop(model.path(end(src), end(dst)));
      if (!drop) return { allowed: true, reason: 'pass_private' };
      return { allowed: false, reason: drop.reason, hook: drop.hook, ...(drop.node !== null ? { node: drop.node } : {}) };
    },
    {
      /** The reason `node`'s from_fabric hook gives a packet from `src` to `dst` arriving on its uplink. */
      fromFabric: (node: string, src: string, dst: string): string => model.fromFabric(node, addressBytes(src), addressBytes(dst)),
      model,
    },
  );
}

/** The 16 bytes of an IPv6 address. */
export function addressBytes(address: string): Buffer {
  return Buffer.from(parseAddress(address));
}
