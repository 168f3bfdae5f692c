/**
 * What the test fabric is made of, as data: regions, nodes, workspaces and
 * endpoints. The default topology is small enough for a full n² matrix in
 * seconds and still has every pair kind the isolation rules care about.
 */

export interface NodeSpec {
  /** Node name as the agent knows it (`--node`); at most 13 characters. */
  name: string;
  region: string;
}

export interface EndpointSpec {
  /** Short name, unique in the topology; at most 11 characters. */
  name: string;
  workspace: string;
  node: string;
  /** false: registered with `--no-i6pn` (it still gets an fdaa address). */
  i6pn: boolean;
}

export interface Topology {
  regions: string[];
  nodes: NodeSpec[];
  workspaces: string[];
  endpoints: EndpointSpec[];
}

/** An endpoint with what provisioning gave it: its address and host-side ifname. */
export interface Endpoint extends EndpointSpec {
  region: string;
  address: string;
  /** Host-side veth in the node's namespace, named as registered (≤ 15 chars). */
  ifname: string;
}

/** The host-side interface name the harness registers for an endpoint. */
export function endpointIfname(name: string): string {
  return `ep-${name}`;
}

/**
 * Two regions × two nodes, three workspaces, ten endpoints:
 *
 *   region ams:  ams-1 { a1 acme, a2 acme, g1 globex }   ams-2 { a3 acme, g2 globex, x1 acme no-i6pn }
 *   region sjc:  sjc-1 { a4 acme, i1 initech }           sjc-2 { i2 initech, g3 globex, x2 initech no-i6pn }
 *
 * Pair kinds present: same node same workspace (a1→a2), same node other
 * workspace (a1→g1), other node same region same workspace (a1→a3, i1→i2),
 * other node same region other workspace (a1→g2), other region same workspace
 * (a1→a4, g1→g3), other region other workspace (a1→i1), and each of those with
 * a no-i6pn endpoint on either side (x1, x2).
 */
export const defaultTopology: Topology = {
  regions: ['ams', 'sjc'],
  nodes: [
    { name: 'ams-1', region: 'ams' },
    { name: 'ams-2', region: 'ams' },
    { name: 'sjc-1', region: 'sjc' },
    { name: 'sjc-2', region: 'sjc' },
  ],
  workspaces: ['acme', 'globex', 'initech'],
  endpoints: [
    { name: 'a1', workspace: 'acme', node: 'ams-1', i6pn: true },
    { name: 'a2', workspace: 'acme', node: 'ams-1', i6pn: true },
    { name: 'g1', workspace: 'globex', node: 'ams-1', i6pn: true },
    { name: 'a3', workspace: 'acme', node: 'ams-2', i6pn: true },
    { name: 'g2', workspace: 'globex', node: 'ams-2', i6pn: true },
    { name: 'x1', workspace: 'acme', node: 'ams-2', i6pn: false },
    { name: 'a4', workspace: 'acme', node: 'sjc-1', i6pn: true },
    { name: 'i1', workspace: 'initech', node: 'sjc-1', i6pn: true },
    { name: 'i2', workspace: 'initech', node: 'sjc-2', i6pn: true },
    { name: 'g3', workspace: 'globex', node: 'sjc-2', i6pn: true },
    { name: 'x2', workspace: 'initech', node: 'sjc-2', i6pn: false },
  ],
};

/** Throws with a precise message if a topology is inconsistent or names are too long. */
export function validateTopology(t: Topology): void {
  const fail = (msg: string): never => {
    throw new Error(`topology: ${msg}`);
  };
  const regions = new Set(t.regions);
  const workspaces = new Set(t.workspaces);
  const nodes = new Map<string, NodeSpec>();
  for (const n of t.nodes) {
    if (!/^[a-z0-9][a-z0-9-]{0,12}$/.test(n.name)) fail(`node name ${JSON.stringify(n.name)} must be 1–13 of [a-z0-9-]`);
    if (!regions.has(n.region)) fail(`node ${n.name} is in unknown region ${n.region}`);
    if (nodes.has(n.name)) fail(`duplicate node ${n.name}`);
    nodes.set(n.name, n);
  }
  const seen = new Set<string>();
  for (const e of t.endpoints) {
    if (!/^[a-z0-9][a-z0-9-]{0,10}$/.test(e.name)) fail(`endpoint name ${JSON.stringify(e.name)} must be 1–11 of [a-z0-9-]`);
    if (seen.has(e.name)) fail(`duplicate endpoint ${e.name}`);
    seen.add(e.name);
    if (!nodes.has(e.node)) fail(`endpoint ${e.name} is on unknown node ${e.node}`);
    if (!workspaces.has(e.workspace)) fail(`endpoint ${e.name} is in unknown workspace ${e.workspace}`);
  }
}

export function regionOf(t: Topology, node: string): string {
  const n = t.nodes.find((x) => x.name === node);
  if (!n) throw new Error(`topology: unknown node ${node}`);
  return n.region;
}

/** How two endpoints relate, for coverage checks and for reading a matrix. */
export interface PairKind {
  sameNode: boolean;
  sameRegion: boolean;
  sameWorkspace: boolean;
  srcI6pn: boolean;
  dstI6pn: boolean;
}

export function pairKind(src: Endpoint, dst: Endpoint): PairKind {
  return {
    sameNode: src.node === dst.node,
    sameRegion: src.region === dst.region,
    sameWorkspace: src.workspace === dst.workspace,
    srcI6pn: src.i6pn,
    dstI6pn: dst.i6pn,
  };
}

/**
 * Packets put onto the fabric at ams-2's uplink, as [source, destination] of
 * the default topology: a member of the workspace on another node of the
 * region (allowed), another workspace's member, the same workspace from the
 * other region, a source that is local to ams-2 (a spoof from outside), and a
 * destination that ams-2 does not serve.
 */
export const FABRIC_CASES: ReadonlyArray<readonly [string, string]> = [
  ['a1', 'a3'],
  ['g1', 'a3'],
  ['a4', 'a3'],
  ['x1', 'a3'],
  ['a1', 'a2'],
];
