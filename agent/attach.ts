/**
 * The attach life cycle: XDP from_fabric and TC to_fabric on the uplink (its
 * ifindex recorded in the dataplane's config), and for every local endpoint
 * whose host-side veth exists, the local_ifaces entry, the TC programs
 * (ingress from_endpoint, egress to_endpoint) and the /128 route to the veth.
 * Everything is declarative: converge() compares what should be (local
 * endpoints from the sync × interfaces that exist) with what is, and fixes the
 * difference; it runs after every membership or interface change, serialised,
 * so an interface may appear before or after its KV entry.
 *
 * A veth's identity is its ifindex, bound once to one endpoint (its address)
 * for the veth's life. The dataplane trusts a private source only on the veth
 * bound to it (ARCHITECTURE.md, "Enforcement points"), so the agent never
 * gives that trust twice:
 *  - revocation seals: when the endpoint is removed, invalidated or moved away
 *    while its veth exists, the veth keeps its TC programs and its entry turns
 *    sealed (everything in and out dropped, under `sealed`); its route goes.
 *    Sealing is terminal until the veth is gone (then the entry goes too).
 *  - a bound or sealed veth is never bound to another endpoint, even one that
 *    names it: a new endpoint reusing a name is bound only to a newly created
 *    veth (a new ifindex).
 *  - entries naming the uplink, an interface that is not a veth (or netkit),
 *    or a veth bound to another endpoint are refused: logged, counted, never
 *    applied. Two entries naming one veth seal it, with no winner.
 *  - an entry that cannot be written (local_ifaces full) leaves the veth with
 *    its TC programs and no entry: they drop everything (`unknown_iface`).
 * Whatever the agent's state, a veth it has not bound reaches nobody: the
 * dataplane's source binding holds without it.
 *
 * On start the agent adopts what the previous run left: local_ifaces from the
 * pinned map (sealed entries stay sealed), routes by their protocol number;
 * TC programs are re-attached with replace (atomic; this is also how an
 * upgrade swaps them). Nothing is removed or sealed until the first snapshot
 * is in (`allowRemoval`), so a restart never opens a gap nor seals a veth
 * whose entry has not been read yet. The veth belongs to the runtime and is
 * never deleted.
 */
import { formatAddress } from '../lib/address.js';
import { LibbpfError, type LocalIface } from './bpf/dataplane.js';
import type { UplinkHookChoice } from './config.js';
import { deleteRoute, listAgentRoutes, replaceRoute, type Interfaces } from './links.js';
import type { Logger } from './log.js';
import type { AgentMetrics, RefuseReason, SealReason } from './metrics.js';
import { isMapFull, type LocalEndpoint } from './sync.js';

/** What attach needs of the dataplane (Dataplane fits). */
export interface AttachDataplane {
  attachUplink(ifindex: number, opts?: { hook?: 'xdp' | 'tc'; mode?: 'native' | 'generic' }): void;
  setUplinkIfindex(ifindex: number): void;
  attachEndpoint(ifindex: number): void;
  detachEndpoint(ifindex: number): boolean;
  setLocalIface(ifindex: number, iface: { addr: Uint8Array; i6pn: boolean; sealed?: boolean }): void;
  deleteLocalIface(ifindex: number): boolean;
  listLocalIfaces(): LocalIface[];
}

/** Interface kinds an endpoint may be bound to (the host side of a container's link). */
export const ENDPOINT_LINK_KINDS: ReadonlySet<string> = new Set(['veth', 'netkit']);

/** A veth the agent holds: bound to one endpoint for its life, or sealed. */
interface Veth {
  ifindex: number;
  /** The endpoint address it is bound to (kept when sealed). */
  address: string;
  addr: Uint8Array;
  i6pn: boolean;
  sealed: boolean;
  /** The local_ifaces entry holds exactly this state. */
  entry: boolean;
  /** Writing the entry failed and was said (said once, until it succeeds). */
  entryFailed: boolean;
  /** TC programs attached by this process (adopted ones are re-attached once). */
  tc: boolean;
}

interface Refusal {
  ep: LocalEndpoint;
  ifindex: number;
  reason: RefuseReason;
}

const REFUSALS: Record<RefuseReason, string> = {
  uplink: 'it names the uplink',
  not_veth: 'it names an interface that is not a veth',
  bound_to_other: 'its veth is bound (or sealed) for another endpoint; a reused name is bound only to a newly created veth',
  duplicate_ifname: 'another local entry names the same veth (the veth is sealed, no entry wins)',
  sealed: 'its veth was sealed (revoked) and stays sealed until it is gone',
};

export interface AttachOptions {
  dp: AttachDataplane;
  interfaces: Interfaces;
  uplink: string;
  /** Where from_fabric runs on the uplink (see --uplink-hook); auto when absent. */
  uplinkHook?: UplinkHookChoice;
  /** The local endpoints (the sync's view). */
  locals: () => ReadonlyMap<string, LocalEndpoint>;
  /** Rewrite a local endpoint's ifindex in its map value. */
  rewriteIfindex: (key: string, ifindex: number) => void;
  metrics: AgentMetrics;
  log: Logger;
}

export class Attacher {
  private readonly o: AttachOptions;
  private readonly veths = new Map<number, Veth>();
  /** Refusals said (logged and counted) so far, by endpoint key: each is said once. */
  private refused = new Map<string, Refusal>();
  private uplinkIfindex_: number | null = null;
  /** The uplink ifindex this process wrote into the dataplane config (null: not yet). */
  private configUplink: number | null = null;
  private uplinkMissingSaid = false;
  private running: Promise<void> | null = null;
  private again = false;
  private allowRemoval = false;
  private stopped = false;

  constructor(o: AttachOptions) {
    this.o = o;
  }

  get uplinkAttached(): boolean {
    return this.uplinkIfindex_ !== null;
  }

  /** The uplink's ifindex while its programs are attached (setConfig must keep it). */
  get uplinkIfindex(): number | null {
    return this.uplinkIfindex_;
  }

  /** The ifindex of the veth of that name when it is bound (not sealed, entry written); else undefined. */
  boundIfindex(ifname: string): number | undefined {
    const ifindex = this.o.interfaces.ifindex(ifname);
    const v = ifindex === undefined ? undefined : this.veths.get(ifindex);
    return v && !v.sealed && v.entry ? ifindex : undefined;
  }

  /**
   * Take over the local_ifaces entries a previous run left (their TC programs
   * get re-attached; sealed ones stay sealed). An entry on the uplink or on an
   * interface that is not a veth (left by an agent that trusted an entry's
   * ifname) is removed with its programs.
   */
  adopt(): void {
    const { dp, interfaces, log } = this.o;
    for (const l of dp.listLocalIfaces()) {
      const ifname = interfaces.nameOf(l.ifindex);
      const link = ifname === undefined ? undefined : interfaces.link(ifname);
      if (link && (ifname === this.o.uplink || !ENDPOINT_LINK_KINDS.has(link.kind))) {
        try {
          dp.deleteLocalIface(l.ifindex);
          dp.detachEndpoint(l.ifindex);
          log.warn({ ifindex: l.ifindex, ifname, kind: link.kind }, 'removed a pinned local_ifaces entry and endpoint programs from an interface that is not an endpoint veth');
        } catch (err) {
          log.error({ err, ifindex: l.ifindex, ifname }, 'removing endpoint programs from a non-endpoint interface failed');
        }
        continue;
      }
      this.veths.set(l.ifindex, {
        ifindex: l.ifindex,
        address: formatAddress(l.addr),
        addr: l.addr,
        i6pn: l.i6pn,
        sealed: l.sealed,
        entry: true,
        entryFailed: false,
        tc: false,
      });
    }
    if (this.veths.size) {
      const sealed = [...this.veths.values()].filter((v) => v.sealed).length;
      log.info({ count: this.veths.size, sealed }, 'adopted local interfaces from the pinned map');
    }
    this.updateGauges(0);
  }

  /**
   * The local endpoints the adopted veths stand for (bound, not sealed), for
   * an agent that resumes without reading the store: each veth was bound to
   * the endpoint of its address under its current name. A reconcile replaces
   * them with what the store says.
   */
  adoptedLocals(region: string, regionId: number): LocalEndpoint[] {
    const out: LocalEndpoint[] = [];
    for (const v of this.veths.values()) {
      if (v.sealed) continue;
      const ifname = this.o.interfaces.nameOf(v.ifindex);
      const a = Buffer.from(v.addr);
      if (ifname === undefined || a.readUInt16BE(6) !== regionId) continue;
      out.push({
        key: `${region}.${a.toString('hex', 2, 6)}.${a.toString('hex', 8, 16)}`,
        addr: new Uint8Array(a),
        address: v.address,
        ifname,
        i6pn: v.i6pn,
        workspace: a.readUInt32BE(2),
        region: regionId,
        writtenIfindex: v.ifindex,
      });
    }
    return out;
  }

  /** The first snapshot is in: from now on, what is not wanted is sealed or removed. */
  enableRemoval(): void {
    this.allowRemoval = true;
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
  }

  /** Converge soon (coalesced, serialised). Resolves when a converge that started after the call is done. */
  schedule(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await new Promise((r) => setImmediate(r));
        if (this.stopped) break;
        try {
          await this.converge();
        } catch (err) {
          this.o.log.error({ err }, 'attach converge failed; retrying at the next change or rescan');
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async converge(): Promise<void> {
    const { interfaces } = this.o;
    this.convergeUplink();
    const locals = [...this.o.locals().values()];

    // The local endpoints by the veth they name; entries naming anything else are refused.
    const refusals = new Map<string, Refusal>();
    const refuse = (ep: LocalEndpoint, ifindex: number, reason: RefuseReason): void => void refusals.set(ep.key, { ep, ifindex, reason });
    const naming = new Map<number, LocalEndpoint[]>();
    for (const ep of locals) {
      const link = interfaces.link(ep.ifname);
      if (!link) continue;
      if (ep.ifname === this.o.uplink) refuse(ep, link.ifindex, 'uplink');
      else if (!ENDPOINT_LINK_KINDS.has(link.kind)) refuse(ep, link.ifindex, 'not_veth');
      else naming.set(link.ifindex, [...(naming.get(link.ifindex) ?? []), ep]);
    }

    // Forget veths that are gone; seal those whose binding no longer holds (after the first snapshot).
    if (this.allowRemoval) {
      for (const v of [...this.veths.values()]) {
        if (interfaces.nameOf(v.ifindex) === undefined) {
          this.forget(v);
          continue;
        }
        const eps = naming.get(v.ifindex) ?? [];
        if (v.sealed || (eps.length === 1 && eps[0]!.address === v.address)) continue;
        this.seal(v, eps.length > 1 ? 'duplicate_ifname' : 'revoked', eps);
      }
    }

    // Bind a veth named by exactly one endpoint and held by none; refuse every other claim.
    for (const [ifindex, eps] of naming) {
      const v = this.veths.get(ifindex);
      if (eps.length > 1) {
        for (const ep of eps) refuse(ep, ifindex, 'duplicate_ifname');
        if (!v && this.allowRemoval) {
          const first = [...eps].sort((a, b) => (a.address < b.address ? -1 : 1))[0]!;
          const sealed = this.newVeth(ifindex, first);
          this.seal(sealed, 'duplicate_ifname', eps);
        }
        continue;
      }
      const ep = eps[0]!;
      if (!v) {
        this.newVeth(ifindex, ep);
      } else if (v.address !== ep.address) {
        refuse(ep, ifindex, 'bound_to_other');
      } else if (v.sealed) {
        refuse(ep, ifindex, 'sealed');
      } else if (v.i6pn !== ep.i6pn) {
        v.i6pn = ep.i6pn;
        v.entry = false;
      }
    }

    for (const v of this.veths.values()) this.apply(v);

    // Each local endpoint's map value names its veth only while bound to it.
    const routes = new Map<string, string>();
    let unhooked = 0;
    for (const ep of locals) {
      const ifindex = interfaces.ifindex(ep.ifname);
      const v = ifindex === undefined ? undefined : this.veths.get(ifindex);
      const bound = v !== undefined && !v.sealed && v.entry && v.tc && v.address === ep.address && !refusals.has(ep.key);
      // Synchronous with the read of the local set: the value cannot go stale.
      this.o.rewriteIfindex(ep.key, bound ? ifindex! : 0);
      if (bound) routes.set(ep.address, ep.ifname);
      else if (ifindex !== undefined) unhooked++;
    }
    this.say(refusals);
    this.updateGauges(unhooked);
    await this.convergeRoutes(routes);
  }

  private newVeth(ifindex: number, ep: LocalEndpoint): Veth {
    const v: Veth = { ifindex, address: ep.address, addr: ep.addr, i6pn: ep.i6pn, sealed: false, entry: false, entryFailed: false, tc: false };
    this.veths.set(ifindex, v);
    return v;
  }

  /** Terminal until the veth is gone: the programs stay, the entry drops everything in and out. */
  private seal(v: Veth, reason: SealReason, claimants: readonly LocalEndpoint[]): void {
    v.sealed = true;
    v.entry = false;
    this.o.metrics.vethsSealed.inc({ reason });
    this.o.log.warn(
      { ifindex: v.ifindex, ifname: this.o.interfaces.nameOf(v.ifindex), address: v.address, reason, claimants: claimants.map((e) => e.address) },
      'sealed endpoint veth: it keeps its programs and drops everything in and out until it is gone',
    );
  }

  /** The veth is gone (its programs went with it): its entry goes too. */
  private forget(v: Veth): void {
    try {
      this.o.dp.deleteLocalIface(v.ifindex);
    } catch (err) {
      this.o.log.warn({ err, ifindex: v.ifindex }, 'removing the local_ifaces entry of a veth that is gone failed; will retry');
      return;
    }
    this.veths.delete(v.ifindex);
    this.o.log.info({ ifindex: v.ifindex, address: v.address, sealed: v.sealed }, 'forgot an endpoint veth that is gone');
  }

  /** The kernel follows the record: the entry first, then the programs (without an entry they drop everything). */
  private apply(v: Veth): void {
    const { dp, log, metrics } = this.o;
    if (!v.entry) {
      try {
        dp.setLocalIface(v.ifindex, { addr: v.addr, i6pn: v.i6pn, sealed: v.sealed });
        v.entry = true;
        if (v.entryFailed) log.info({ ifindex: v.ifindex, address: v.address, sealed: v.sealed }, 'local_ifaces entry written after all');
        v.entryFailed = false;
      } catch (err) {
        // Fail closed: a stale entry must not outlive the state it no longer describes.
        try {
          dp.deleteLocalIface(v.ifindex);
        } catch {
          // reported below; retried at the next converge
        }
        if (!v.entryFailed) {
          v.entryFailed = true;
          const full = isMapFull((err as { code?: string }).code ?? '');
          if (full) metrics.mapFull.inc();
          log.error(
            { err, ifindex: v.ifindex, ifname: this.o.interfaces.nameOf(v.ifindex), address: v.address, sealed: v.sealed },
            full
              ? 'local_ifaces is full: the veth keeps its programs without an entry, so it drops everything (unknown_iface); raise --max-local-ifaces (takes a teardown) or remove endpoints'
              : 'writing the local_ifaces entry failed: the veth drops everything until it is written; will retry',
          );
        }
      }
    }
    if (!v.tc) {
      try {
        dp.attachEndpoint(v.ifindex);
        v.tc = true;
        log.info({ ifindex: v.ifindex, ifname: this.o.interfaces.nameOf(v.ifindex), address: v.address, sealed: v.sealed, entry: v.entry }, 'attached endpoint veth');
      } catch (err) {
        log.warn({ err, ifindex: v.ifindex }, 'attaching an endpoint veth failed (it may have just gone); will retry');
      }
    }
  }

  /** Log and count each refusal once (while it lasts); forget those that ended. */
  private say(refusals: Map<string, Refusal>): void {
    for (const [key, r] of refusals) {
      const prev = this.refused.get(key);
      if (prev && prev.ifindex === r.ifindex && prev.reason === r.reason) continue;
      this.o.metrics.endpointRefused.inc({ reason: r.reason });
      this.o.log.error(
        { key, address: r.ep.address, ifname: r.ep.ifname, ifindex: r.ifindex, reason: r.reason },
        `refused a local endpoint entry: ${REFUSALS[r.reason]}`,
      );
    }
    this.refused = refusals;
  }

  private convergeUplink(): void {
    const { dp, log, uplink } = this.o;
    const ifindex = this.o.interfaces.ifindex(uplink);
    if (ifindex === undefined) {
      if (!this.uplinkMissingSaid) {
        log.error({ uplink }, 'the uplink does not exist: from_fabric is not attached (not ready) until it appears');
        this.uplinkMissingSaid = true;
      }
      this.uplinkIfindex_ = null;
      this.recordUplink(0);
      return;
    }
    this.uplinkMissingSaid = false;
    if (this.uplinkIfindex_ !== ifindex) {
      try {
        const how = this.attachUplink(ifindex);
        this.uplinkIfindex_ = ifindex;
        log.info({ uplink, ifindex, hook: how }, `from_fabric (${how}) and to_fabric (TC egress) attached to the uplink`);
      } catch (err) {
        this.uplinkIfindex_ = null;
        log.error({ err, uplink, ifindex }, 'attaching from_fabric and to_fabric to the uplink failed');
      }
    }
    if (this.uplinkIfindex_ !== null) this.recordUplink(this.uplinkIfindex_);
  }

  /**
   * from_fabric where it costs least: TC ingress on a veth (any XDP program
   * there turns the device's segmentation offload off), native XDP on a NIC
   * that runs it, TC on one whose driver refuses XDP. --uplink-hook xdp
   * falls back to generic XDP instead. Returns what was attached.
   */
  private attachUplink(ifindex: number): string {
    const { dp, log, uplink } = this.o;
    const choice = this.o.uplinkHook ?? 'auto';
    const kind = this.o.interfaces.link(uplink)?.kind ?? '';
    if (choice === 'tc' || (choice === 'auto' && kind === 'veth')) {
      dp.attachUplink(ifindex, { hook: 'tc' });
      return choice === 'tc' ? 'TC ingress, as configured' : 'TC ingress: the uplink is a veth';
    }
    try {
      dp.attachUplink(ifindex, { hook: 'xdp' });
      return 'native XDP link, pinned';
    } catch (err) {
      const noNativeXdp = err instanceof LibbpfError && (err.code === 'EOPNOTSUPP' || err.errno === 524 /* ENOTSUPP */);
      if (!noNativeXdp) throw err;
      if (choice === 'auto') {
        log.warn({ err, uplink }, 'native XDP refused by the uplink driver; running from_fabric at TC ingress');
        dp.attachUplink(ifindex, { hook: 'tc' });
        return 'TC ingress: the driver has no native XDP';
      }
      // A NIC whose driver has no XDP: generic XDP still drops before the stack, after the skb.
      log.warn({ err, uplink }, 'native XDP refused by the uplink driver; attaching in generic mode');
      dp.attachUplink(ifindex, { hook: 'xdp', mode: 'generic' });
      return 'generic XDP link, pinned';
    }
  }

  /** The dataplane trusts non-local sources only from the uplink the config names. */
  private recordUplink(ifindex: number): void {
    if (this.configUplink === ifindex) return;
    try {
      this.o.dp.setUplinkIfindex(ifindex);
      this.configUplink = ifindex;
      this.o.log.info({ uplink: this.o.uplink, ifindex }, 'uplink ifindex recorded in the dataplane config');
    } catch (err) {
      this.o.log.error({ err, ifindex }, 'recording the uplink ifindex in the dataplane config failed; will retry');
    }
  }

  /** /128 to each bound endpoint's veth; routes of ours to anything else go (after the first snapshot). */
  private async convergeRoutes(wanted: Map<string, string>): Promise<void> {
    const { log } = this.o;
    let current: Map<string, string>;
    try {
      current = new Map((await listAgentRoutes()).map((r) => [r.addr, r.dev]));
    } catch (err) {
      log.warn({ err }, 'listing routes failed');
      return;
    }
    for (const [address, ifname] of wanted) {
      if (current.get(address) === ifname) continue;
      try {
        await replaceRoute(address, ifname);
        log.info({ address, ifname }, 'routed local endpoint');
      } catch (err) {
        log.warn({ err, address, ifname }, 'routing a local endpoint failed; will retry');
      }
    }
    if (!this.allowRemoval) return;
    for (const address of current.keys()) {
      if (wanted.has(address)) continue;
      try {
        await deleteRoute(address);
        log.info({ address }, 'removed the route of a former local endpoint');
      } catch (err) {
        log.warn({ err, address }, 'removing a route failed');
      }
    }
  }

  private updateGauges(unhooked: number): void {
    const m = this.o.metrics;
    const count = { tc: 0, entries: 0, bound: 0, sealed: 0, unbound: 0 };
    for (const v of this.veths.values()) {
      if (v.tc) count.tc++;
      if (v.entry) count.entries++;
      if (v.sealed) count.sealed++;
      else if (v.entry) count.bound++;
      else count.unbound++;
    }
    const uplink = this.uplinkIfindex_ !== null ? 1 : 0;
    m.attachedHooks.set({ hook: 'from_fabric' }, uplink);
    m.attachedHooks.set({ hook: 'to_fabric' }, uplink);
    m.attachedHooks.set({ hook: 'from_endpoint' }, count.tc);
    m.attachedHooks.set({ hook: 'to_endpoint' }, count.tc);
    m.mapEntries.set({ map: 'local_ifaces' }, count.entries);
    m.veths.set({ state: 'bound' }, count.bound);
    m.veths.set({ state: 'sealed' }, count.sealed);
    m.veths.set({ state: 'unbound' }, count.unbound);
    m.unhookedEndpoints.set(unhooked);
  }
}
