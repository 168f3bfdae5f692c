/**
 * The attach life cycle: XDP from_fabric on the uplink, and for every local
 * endpoint whose host-side veth exists, the local_ifaces entry, the TC
 * programs (ingress from_endpoint, egress to_endpoint) and the /128 route to
 * the veth. Everything is declarative: converge() compares what should be
 * (local endpoints from the sync × interfaces that exist) with what is, and
 * fixes the difference; it runs after every membership or interface change,
 * serialised, so an interface may appear before or after its KV entry.
 *
 * On start the agent adopts what the previous run left: local_ifaces from the
 * pinned map, routes by their protocol number; TC programs are re-attached
 * with replace (atomic; this is also how an upgrade swaps them). Nothing is
 * removed until the first snapshot is in (`allowRemoval`), so a restart never
 * opens a gap. The veth itself belongs to the runtime and is never deleted.
 */
import { formatAddress } from '../lib/address.js';
import type { LocalIface } from './bpf/dataplane.js';
import { deleteRoute, listAgentRoutes, replaceRoute, type Interfaces } from './links.js';
import type { Logger } from './log.js';
import type { AgentMetrics } from './metrics.js';
import type { LocalEndpoint } from './sync.js';

/** What attach needs of the dataplane (Dataplane fits). */
export interface AttachDataplane {
  attachUplink(ifindex: number, opts?: { mode?: 'native' | 'generic' }): void;
  attachEndpoint(ifindex: number): void;
  detachEndpoint(ifindex: number): boolean;
  setLocalIface(ifindex: number, iface: { addr: Uint8Array; i6pn: boolean }): void;
  deleteLocalIface(ifindex: number): boolean;
  listLocalIfaces(): LocalIface[];
}

interface Attachment {
  ifindex: number;
  /** The interface name when it was attached (an ifindex may be reused by another interface later). */
  ifname: string | undefined;
  address: string;
  i6pn: boolean;
  /** TC programs attached by this process (adopted ones are re-attached once). */
  tc: boolean;
}

export interface AttachOptions {
  dp: AttachDataplane;
  interfaces: Interfaces;
  uplink: string;
  /** The local endpoints (the sync's view). */
  locals: () => ReadonlyMap<string, LocalEndpoint>;
  /** Rewrite a local endpoint's ifindex in its map value. */
  rewriteIfindex: (key: string, ifindex: number) => void;
  metrics: AgentMetrics;
  log: Logger;
}

export class Attacher {
  private readonly o: AttachOptions;
  private readonly attached = new Map<number, Attachment>();
  private uplinkIfindex: number | null = null;
  private uplinkMissingSaid = false;
  private running: Promise<void> | null = null;
  private again = false;
  private allowRemoval = false;
  private stopped = false;

  constructor(o: AttachOptions) {
    this.o = o;
  }

  get uplinkAttached(): boolean {
    return this.uplinkIfindex !== null;
  }

  /** Take over the local_ifaces entries a previous run left (their TC programs get re-attached). */
  adopt(): void {
    for (const l of this.o.dp.listLocalIfaces()) {
      this.attached.set(l.ifindex, {
        ifindex: l.ifindex,
        ifname: this.o.interfaces.nameOf(l.ifindex),
        address: formatAddress(l.addr),
        i6pn: l.i6pn,
        tc: false,
      });
    }
    if (this.attached.size) this.o.log.info({ count: this.attached.size }, 'adopted local interfaces from the pinned map');
    this.updateGauges();
  }

  /** The first snapshot is in: from now on, what is not wanted is removed. */
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
    const { dp, interfaces, log } = this.o;
    this.convergeUplink();

    // What should be: ifindex → local endpoint, for the veths that exist.
    const want = new Map<number, LocalEndpoint>();
    for (const ep of this.o.locals().values()) {
      const ifindex = interfaces.ifindex(ep.ifname);
      if (ifindex !== undefined) {
        if (want.has(ifindex)) {
          log.error({ ifname: ep.ifname, a: want.get(ifindex)!.address, b: ep.address }, 'two local endpoints name the same veth; keeping the first');
          continue;
        }
        want.set(ifindex, ep);
      }
      // Synchronous with the read of the local set: the value cannot go stale.
      this.o.rewriteIfindex(ep.key, ifindex ?? 0);
    }

    // Remove what is not wanted (or wanted differently).
    if (this.allowRemoval) {
      for (const [ifindex, a] of [...this.attached]) {
        const w = want.get(ifindex);
        const stillThere = a.ifname !== undefined && interfaces.ifindex(a.ifname) === ifindex;
        if (w && w.address === a.address && stillThere) continue;
        try {
          dp.deleteLocalIface(ifindex);
          if (stillThere && !w) dp.detachEndpoint(ifindex);
        } catch (err) {
          log.warn({ err, ifindex }, 'detaching a former endpoint veth failed');
        }
        this.attached.delete(ifindex);
        log.info({ ifindex, ifname: a.ifname, address: a.address, reason: stillThere ? 'endpoint gone' : 'interface gone' }, 'detached endpoint veth');
      }
    }

    // Add or update what is wanted.
    for (const [ifindex, ep] of want) {
      const a = this.attached.get(ifindex);
      if (a && a.tc && a.address === ep.address && a.i6pn === ep.i6pn) continue;
      try {
        // The map entry first: TC programs on a veth without it drop everything (unknown_iface).
        dp.setLocalIface(ifindex, { addr: ep.addr, i6pn: ep.i6pn });
        dp.attachEndpoint(ifindex);
        this.attached.set(ifindex, { ifindex, ifname: ep.ifname, address: ep.address, i6pn: ep.i6pn, tc: true });
        if (!a || !a.tc) log.info({ ifindex, ifname: ep.ifname, address: ep.address, i6pn: ep.i6pn }, 'attached endpoint veth');
      } catch (err) {
        log.warn({ err, ifindex, ifname: ep.ifname }, 'attaching an endpoint veth failed (it may have just gone); will retry');
      }
    }
    this.updateGauges();
    await this.convergeRoutes(want);
    this.updateGauges();
  }

  private convergeUplink(): void {
    const ifindex = this.o.interfaces.ifindex(this.o.uplink);
    if (ifindex === undefined) {
      if (!this.uplinkMissingSaid) {
        this.o.log.error({ uplink: this.o.uplink }, 'the uplink does not exist: from_fabric is not attached (not ready) until it appears');
        this.uplinkMissingSaid = true;
      }
      this.uplinkIfindex = null;
      return;
    }
    this.uplinkMissingSaid = false;
    if (this.uplinkIfindex === ifindex) return;
    try {
      try {
        this.o.dp.attachUplink(ifindex);
      } catch (err) {
        // A NIC whose driver has no XDP: generic XDP still drops before the stack, after the skb.
        if (!/EOPNOTSUPP|ENOTSUPP|E524/.test(String((err as Error).message))) throw err;
        this.o.log.warn({ err, uplink: this.o.uplink }, 'native XDP refused by the uplink driver; attaching in generic mode');
        this.o.dp.attachUplink(ifindex, { mode: 'generic' });
      }
      this.uplinkIfindex = ifindex;
      this.o.log.info({ uplink: this.o.uplink, ifindex }, 'from_fabric attached to the uplink (XDP link, pinned)');
    } catch (err) {
      this.uplinkIfindex = null;
      this.o.log.error({ err, uplink: this.o.uplink, ifindex }, 'attaching from_fabric to the uplink failed');
    }
  }

  /** /128 to each attached endpoint's veth; routes of ours to anything else go (after the first snapshot). */
  private async convergeRoutes(want: Map<number, LocalEndpoint>): Promise<void> {
    const { log } = this.o;
    let current: Map<string, string>;
    try {
      current = new Map((await listAgentRoutes()).map((r) => [r.addr, r.dev]));
    } catch (err) {
      log.warn({ err }, 'listing routes failed');
      return;
    }
    const wanted = new Map<string, string>();
    for (const [ifindex, ep] of want) if (this.attached.get(ifindex)?.tc) wanted.set(ep.address, ep.ifname);
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

  private updateGauges(): void {
    const m = this.o.metrics;
    let tc = 0;
    for (const a of this.attached.values()) if (a.tc) tc++;
    m.attachedHooks.set({ hook: 'from_fabric' }, this.uplinkIfindex !== null ? 1 : 0);
    m.attachedHooks.set({ hook: 'from_endpoint' }, tc);
    m.attachedHooks.set({ hook: 'to_endpoint' }, tc);
    m.mapEntries.set({ map: 'local_ifaces' }, this.attached.size);
  }
}
