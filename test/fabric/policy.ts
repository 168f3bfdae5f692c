/**
 * What the isolation matrix expects of each ordered pair. The expectation is a
 * function passed to the matrix (a "policy oracle"), so the reference model of
 * the BPF policy can replace the interim rule below without touching the
 * matrix code.
 */
import type { Endpoint } from './topology.js';

/** Enforcement points, named as the agent labels them in metrics. */
export type Hook = 'from_endpoint' | 'from_fabric' | 'to_endpoint';

export interface Expectation {
  allowed: boolean;
  /** The drop reason (metric label) a forbidden pair should be counted under; 'private' when allowed. */
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
  return { allowed: true, reason: 'private' };
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
};

export function reasonCode(reason: string): string {
  return REASON_CODES[reason] ?? reason.slice(0, 3);
}
