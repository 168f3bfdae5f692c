/**
 * What the node resolver answers from: the region's membership as the maps
 * hold it, kept by MembershipSync in the same batches that write the maps, so
 * that an endpoint is in an answer exactly while its map entry is (an
 * endpoint removed from the map is out of every answer before the next
 * query is read, and no answer names an address the dataplane would drop).
 *
 * - Names and clusters: only endpoints with i6pn that have a name or a
 *   cluster are kept (memory in proportion to the named endpoints): by
 *   (workspace, name), and by (workspace, cluster) with their ranks.
 * - Peers: the i6pn endpoints of each workspace that has an i6pn endpoint
 *   on this node (the only workspaces whose containers can ask), from
 *   EndpointTable when a workspace first appears here, then kept by the
 *   batches.
 * - Queriers: the local endpoints by address (the source of a query).
 *
 * An endpoint is named by its key in the region's bucket (`<ws>.<ep>`);
 * the region is the agent's own, so every answer is of its region.
 */
import { formatAddress, writeEndpointAddress } from '../lib/address.js';
import type { EndpointTable } from './table.js';

/** A named endpoint, as the resolver answers it. */
export interface NamedEndpoint {
  /** `<workspace id>.<endpoint id>` in the region's bucket. */
  readonly key: string;
  /** Canonical text of its address. */
  readonly address: string;
  readonly name: string | null;
  readonly cluster: string | null;
  /** Its rank in `cluster` (-1: none). */
  readonly rank: number;
}

/** The name, cluster and rank a batch applies to an endpoint (null: none of them). */
export interface NameFields {
  address: string;
  name: string | null;
  cluster: string | null;
  rank: number;
}

/** A local endpoint as the resolver sees a querier. */
export interface Querier {
  address: string;
  workspace: number;
  i6pn: boolean;
  key: string;
}

interface ClusterEntry {
  members: Map<string, NamedEndpoint>;
  /** By rank, then address; null until asked after a change. */
  sorted: NamedEndpoint[] | null;
}

interface PeerSet {
  /** key → address */
  members: Map<string, string>;
  /** Addresses in order; null until asked after a change. */
  sorted: string[] | null;
}

const wsKey = (workspace: number, label: string): string => `${workspace}/${label}`;
const hex8 = (n: number): string => (n >>> 0).toString(16).padStart(8, '0');

export class NamesIndex {
  private readonly byKey = new Map<string, NamedEndpoint & { workspace: number }>();
  private readonly names = new Map<string, NamedEndpoint>();
  private readonly clusters = new Map<string, ClusterEntry>();
  private readonly peerSets = new Map<number, PeerSet>();
  private queriers = new Map<string, Querier>();
  private complete_ = false;
  private generation_ = 0;
  private readonly scratch = new Uint8Array(16);

  constructor(private readonly regionId: number) {}

  /**
   * Whether the index holds the whole region: false while a full read or the
   * first reconcile after a resume is under way (then only the queriers are
   * known, and a name not found may yet exist).
   */
  get complete(): boolean {
    return this.complete_;
  }

  setComplete(complete: boolean): void {
    if (this.complete_ !== complete) this.generation_++;
    this.complete_ = complete;
  }

  /** Changes with anything an answer depends on (answers cached under an older one are stale). */
  get generation(): number {
    return this.generation_;
  }

  /** Named endpoints held (the index's size). */
  get size(): number {
    return this.byKey.size;
  }

  // ------------------------------------------------------------ from the batches

  /**
   * An entry applied to the map. `fields` null: it has no name and no
   * cluster, or no i6pn (nothing to answer). `i6pn` and the address (16
   * bytes of `addrs` at `at`) keep the peers of a workspace served here.
   */
  applied(key: string, workspace: number, i6pn: boolean, addrs: Uint8Array, at: number, fields: NameFields | null): void {
    const before = this.byKey.get(key);
    if (fields) this.setNamed(key, workspace, fields, before);
    else if (before) this.unsetNamed(key, before);
    const peers = this.peerSets.get(workspace);
    if (peers) {
      if (i6pn) {
        if (!peers.members.has(key)) {
          peers.members.set(key, fields?.address ?? formatAddress(addrs.subarray(at, at + 16)));
          peers.sorted = null;
          this.generation_++;
        }
      } else if (peers.members.delete(key)) {
        peers.sorted = null;
        this.generation_++;
      }
    }
  }

  /** An entry deleted from the map (or whose update failed: not in the map). */
  removed(key: string, workspace: number): void {
    const before = this.byKey.get(key);
    if (before) this.unsetNamed(key, before);
    const peers = this.peerSets.get(workspace);
    if (peers?.members.delete(key)) {
      peers.sorted = null;
      this.generation_++;
    }
  }

  /**
   * The local endpoints changed: the queriers, and the workspaces whose
   * peers are kept (each new one read from the table once).
   */
  setLocals(locals: Iterable<Querier>, table: EndpointTable): void {
    const queriers = new Map<string, Querier>();
    const wanted = new Set<number>();
    for (const l of locals) {
      queriers.set(l.address, l);
      if (l.i6pn) wanted.add(l.workspace);
    }
    this.queriers = queriers;
    this.generation_++;
    for (const ws of this.peerSets.keys()) if (!wanted.has(ws)) this.peerSets.delete(ws);
    const fresh = new Map<number, PeerSet>();
    for (const ws of wanted) if (!this.peerSets.has(ws)) fresh.set(ws, { members: new Map(), sorted: null });
    if (fresh.size === 0) return;
    table.forEachEntry((workspace, hi, lo, i6pn) => {
      const set = i6pn ? fresh.get(workspace) : undefined;
      if (!set) return;
      set.members.set(`${hex8(workspace)}.${hex8(hi)}${hex8(lo)}`, this.addressOf(workspace, hi, lo));
    });
    for (const [ws, set] of fresh) this.peerSets.set(ws, set);
  }

  private addressOf(workspace: number, hi: number, lo: number): string {
    writeEndpointAddress(this.scratch, 0, workspace, this.regionId, hi, lo);
    return formatAddress(this.scratch);
  }

  private setNamed(key: string, workspace: number, f: NameFields, before: (NamedEndpoint & { workspace: number }) | undefined): void {
    if (before && before.name === f.name && before.cluster === f.cluster && before.rank === f.rank && before.address === f.address) return;
    if (before) this.unsetNamed(key, before);
    this.generation_++;
    const e = { key, workspace, address: f.address, name: f.name, cluster: f.cluster, rank: f.cluster === null ? -1 : f.rank };
    this.byKey.set(key, e);
    // Names are unique in the store; should two entries ever hold one (a hand-written store), the last applied answers.
    if (e.name !== null) this.names.set(wsKey(workspace, e.name), e);
    if (e.cluster !== null) {
      const ck = wsKey(workspace, e.cluster);
      let c = this.clusters.get(ck);
      if (!c) this.clusters.set(ck, (c = { members: new Map(), sorted: null }));
      c.members.set(key, e);
      c.sorted = null;
    }
  }

  private unsetNamed(key: string, e: NamedEndpoint & { workspace: number }): void {
    this.generation_++;
    this.byKey.delete(key);
    if (e.name !== null) {
      const nk = wsKey(e.workspace, e.name);
      if (this.names.get(nk)?.key === key) this.names.delete(nk);
    }
    if (e.cluster !== null) {
      const ck = wsKey(e.workspace, e.cluster);
      const c = this.clusters.get(ck);
      if (c?.members.delete(key)) {
        c.sorted = null;
        if (c.members.size === 0) this.clusters.delete(ck);
      }
    }
  }

  // ------------------------------------------------------------ for the resolver

  /** The local endpoint whose address `address` is (canonical text), or null. */
  querier(address: string): Querier | null {
    return this.queriers.get(address) ?? null;
  }

  /** The address of the endpoint named `name` in `workspace`, or null. */
  endpoint(workspace: number, name: string): string | null {
    return this.names.get(wsKey(workspace, name))?.address ?? null;
  }

  /** The members of a cluster of `workspace`, by rank (then address); empty when there is none. */
  cluster(workspace: number, name: string): readonly NamedEndpoint[] {
    const c = this.clusters.get(wsKey(workspace, name));
    if (!c) return [];
    c.sorted ??= [...c.members.values()].sort((a, b) => a.rank - b.rank || (a.address < b.address ? -1 : a.address > b.address ? 1 : 0));
    return c.sorted;
  }

  /** The addresses of every i6pn endpoint of `workspace` (one served here), in order. */
  peers(workspace: number): readonly string[] {
    const p = this.peerSets.get(workspace);
    if (!p) return [];
    p.sorted ??= [...p.members.values()].sort();
    return p.sorted;
  }
}
