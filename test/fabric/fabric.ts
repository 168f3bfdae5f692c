/**
 * The test fabric: network namespaces standing in for nodes and containers.
 *
 *            root netns                      fabric netns (i6pn-<id>-fabric)
 *   nats-server, prometheus  ── i6pn<id> ═══ mgmt ─┐
 *   [fd69:<id>::fe]                                 br0 (a plain bridge, no address)
 *                                           n-ams-1 ┘ │ … one port per node
 *                                                     │
 *   node netns (i6pn-<id>-ams-1):  up0 [fd69:<id>::1/64]  ← the node's uplink (from_fabric, to_fabric)
 *       forwarding on; fdaa…/128 via fd69:<id>::<k> dev up0 for every remote endpoint
 *       ep-a1 (fe80::1) ═══ eth0 [fdaa:…/128] in container netns i6pn-<id>-c-a1
 *                    ↑ host-side veth, named as registered (TC ingress/egress)
 *
 * The underlay `fd69:<id>::/64` (a ULA from the run id) carries everything
 * between nodes, the agents' NATS connection and the Prometheus scrapes; the
 * root-namespace link gives the test process (and NATS, Prometheus) a foot on
 * it without touching any other interface of the machine.
 *
 * Routes to remote endpoints are installed for every endpoint, allowed or not:
 * decisions never depend on routes, so forbidden packets are deliverable unless
 * the dataplane stops them. The /128 from a node to its own endpoint's veth is
 * the agent's job; `routeLocal: true` makes the harness install it (no agent).
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { RESOLVER_ADDRESS } from '../../lib/address.js';
import { ipBatch, run, sysctls } from './exec.js';
import { NETNS_PREFIX, RunRecord, destroyRunSync, netnsConfigDir, newRunId } from './state.js';
import type { Endpoint, NodeSpec } from './topology.js';

export interface FabricOptions {
  runId?: string;
  nodes: NodeSpec[];
  /** Install each local endpoint's /128 route (the agent does this when it runs). */
  routeLocal: boolean;
  /** Leave everything running when this process exits (the demo). */
  detached?: boolean;
  log?: (msg: string) => void;
}

export interface FabricNode extends NodeSpec {
  netns: string;
  /** The uplink interface in the node's netns (the agent's `--uplink`). */
  uplink: string;
  /** The node's underlay address on the uplink. */
  underlay: string;
  /** Where this node's agent pins its maps and links. */
  bpffs: string;
  /** MAC of the uplink (for frames injected from the fabric). */
  uplinkMac: string;
  /** The node's port on the fabric bridge, in the fabric namespace. */
  fabricPort: string;
}

export interface FabricEndpoint extends Endpoint {
  /** The container's network namespace. */
  netns: string;
  /** MAC of the host-side veth (the container's next hop), for raw frames. */
  gatewayMac: string;
}

/**
 * A tunnel gateway's namespace, with three legs: its i6pn veth to its node
 * (eth0, its private address: made as a container's), the underlay (up0: NATS
 * and the metrics scrape, as a pod network would carry them) and its public
 * link to the internet namespace (pub0).
 */
export interface FabricGateway {
  name: string;
  node: string;
  region: string;
  address: string;
  ifname: string;
  netns: string;
  /** Its address on the underlay (metrics). */
  underlay: string;
  /** Its public address, on pub0. */
  publicAddress: string;
  /** The internet namespace's own address on the same link. */
  clientAddress: string;
}

/** Interface names inside namespaces need no run id: namespaces are per run. */
const UPLINK = 'up0';
const BRIDGE = 'br0';
const CONTAINER_IF = 'eth0';
/** Link-local on every host-side veth: the containers' default gateway. */
export const GATEWAY_LL = 'fe80::1';

const NODE_SYSCTLS = {
  'net.ipv6.conf.all.forwarding': 1,
  'net.ipv6.conf.all.accept_dad': 0,
  'net.ipv6.conf.default.accept_dad': 0,
  'net.ipv6.conf.all.accept_ra': 0,
  'net.ipv6.conf.default.accept_ra': 0,
  'net.ipv6.conf.all.accept_redirects': 0,
  'net.ipv6.conf.default.accept_redirects': 0,
};
const CONTAINER_SYSCTLS = {
  'net.ipv6.conf.all.accept_dad': 0,
  'net.ipv6.conf.default.accept_dad': 0,
  'net.ipv6.conf.all.accept_ra': 0,
  'net.ipv6.conf.default.accept_ra': 0,
};

export class Fabric {
  readonly runId: string;
  readonly record: RunRecord;
  readonly fabricNetns: string;
  /** The root namespace's address on the underlay: NATS and Prometheus listen here. */
  readonly mgmtAddress: string;
  readonly mgmtLink: string;
  readonly nodes = new Map<string, FabricNode>();
  readonly endpoints = new Map<string, FabricEndpoint>();
  readonly gateways = new Map<string, FabricGateway>();
  /** The namespace that stands for the internet (made with the first gateway). */
  readonly internetNetns: string;
  readonly routeLocal: boolean;
  private readonly log: (msg: string) => void;
  private destroyed = false;
  private readonly onExit = (): void => this.destroySync();
  private readonly onSignal = (sig: NodeJS.Signals): void => {
    this.destroySync();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };

  private constructor(opts: FabricOptions) {
    this.runId = opts.runId ?? newRunId();
    this.record = new RunRecord(this.runId, opts.detached ?? false);
    this.routeLocal = opts.routeLocal;
    this.log = opts.log ?? (() => {});
    this.fabricNetns = `${NETNS_PREFIX}${this.runId}-fabric`;
    this.internetNetns = `${NETNS_PREFIX}${this.runId}-inet`;
    this.mgmtLink = `i6pn${this.runId}`;
    this.mgmtAddress = `${this.underlayPrefix}fe`;
    if (!opts.detached) {
      process.once('exit', this.onExit);
      process.once('SIGINT', this.onSignal);
      process.once('SIGTERM', this.onSignal);
    }
  }

  /** `fd69:<id>::` — the /64 of the underlay (ends with `::`). */
  get underlayPrefix(): string {
    return `fd69:${this.runId}::`;
  }

  /** Build the fabric namespace, the bridge, the management link and every node. */
  static async create(opts: FabricOptions): Promise<Fabric> {
    const f = new Fabric(opts);
    try {
      await f.build(opts.nodes);
    } catch (err) {
      f.destroySync();
      throw err;
    }
    return f;
  }

  private async addNetns(name: string): Promise<void> {
    this.record.addNetns(name);
    await run(['ip', 'netns', 'add', name]);
    await ipBatch(['link set lo up'], name);
  }

  private async build(nodes: NodeSpec[]): Promise<void> {
    this.log(`fabric ${this.runId}: namespaces and bridge`);
    await this.addNetns(this.fabricNetns);
    await sysctls(this.fabricNetns, { 'net.ipv6.conf.all.disable_ipv6': 1, 'net.ipv6.conf.default.disable_ipv6': 1 });
    await ipBatch([`link add ${BRIDGE} type bridge mcast_snooping 0`, `link set ${BRIDGE} up`], this.fabricNetns);

    // The root namespace's foot on the underlay (NATS, Prometheus, the test process).
    this.record.addRootLink(this.mgmtLink);
    await ipBatch([`link add ${this.mgmtLink} type veth peer name mgmt netns ${this.fabricNetns}`]);
    await ipBatch([`link set mgmt master ${BRIDGE}`, `link set mgmt up`], this.fabricNetns);
    await run(['sysctl', '-q', '-w', `net.ipv6.conf.${this.mgmtLink}.accept_dad=0`, `net.ipv6.conf.${this.mgmtLink}.accept_ra=0`]);
    await ipBatch([`addr add ${this.mgmtAddress}/64 dev ${this.mgmtLink} nodad`, `link set ${this.mgmtLink} up`]);

    let i = 0;
    for (const spec of nodes) {
      i += 1;
      const node: FabricNode = {
        ...spec,
        netns: `${NETNS_PREFIX}${this.runId}-${spec.name}`,
        uplink: UPLINK,
        underlay: `${this.underlayPrefix}${i.toString(16)}`,
        bpffs: `/sys/fs/bpf/${NETNS_PREFIX}${this.runId}-${spec.name}`,
        uplinkMac: '',
        fabricPort: `n-${spec.name}`,
      };
      this.log(`fabric ${this.runId}: node ${node.name} (${node.region}) at ${node.underlay}`);
      await this.addNetns(node.netns);
      await sysctls(node.netns, NODE_SYSCTLS);
      const port = `n-${spec.name}`;
      await ipBatch([`link add ${UPLINK} netns ${node.netns} type veth peer name ${port} netns ${this.fabricNetns}`]);
      await ipBatch([`link set ${port} master ${BRIDGE}`, `link set ${port} up`], this.fabricNetns);
      await ipBatch([`addr add ${node.underlay}/64 dev ${UPLINK} nodad`, `link set ${UPLINK} up`], node.netns);
      node.uplinkMac = await linkMac(node.netns, UPLINK);
      this.nodes.set(node.name, node);
    }
    this.record.setInfo('nodes', [...this.nodes.values()]);
    this.record.setInfo('mgmtAddress', this.mgmtAddress);
    this.record.setInfo('fabricNetns', this.fabricNetns);
  }

  node(name: string): FabricNode {
    const n = this.nodes.get(name);
    if (!n) throw new Error(`fabric: no node ${name}`);
    return n;
  }

  endpoint(name: string): FabricEndpoint {
    const e = this.endpoints.get(name);
    if (!e) throw new Error(`fabric: no endpoint ${name}`);
    return e;
  }

  /**
   * Play the container runtime: make the container's namespace and veth pair,
   * put the endpoint's address on the container side, name the host side as
   * registered, point an i6pn container's resolver at its node's
   * (containerResolvConf); then route the address from every other node to
   * this one.
   */
  async addEndpoint(ep: Endpoint): Promise<FabricEndpoint> {
    if (this.endpoints.has(ep.name)) throw new Error(`fabric: endpoint ${ep.name} exists`);
    const netns = `${NETNS_PREFIX}${this.runId}-c-${ep.name}`;
    const gatewayMac = await this.makeContainer(ep, netns, 'default');
    if (ep.i6pn) {
      // What `ip netns exec` binds over /etc/resolv.conf: getent, dig and libc in the container use the node resolver.
      mkdirSync(netnsConfigDir(netns), { recursive: true });
      writeFileSync(`${netnsConfigDir(netns)}/resolv.conf`, containerResolvConf());
    }
    const fe: FabricEndpoint = { ...ep, netns, gatewayMac };
    this.endpoints.set(ep.name, fe);
    if (this.routeLocal) await this.routeLocalEndpoint(fe);
    await this.routeRemote(fe);
    this.record.setInfo('endpoints', [...this.endpoints.values()]);
    return fe;
  }

  /**
   * A namespace with an i6pn veth to its node, as the runtime makes it: the
   * host side named as registered (fe80::1 on it), the address on eth0, a
   * route to `via` through the node. Returns the MAC of the host side.
   */
  private async makeContainer(ep: Pick<Endpoint, 'node' | 'ifname' | 'address'>, netns: string, via: string): Promise<string> {
    if (ep.ifname.length > 15) throw new Error(`fabric: ifname ${ep.ifname} is longer than 15 characters`);
    const node = this.node(ep.node);
    await this.addNetns(netns);
    await sysctls(netns, CONTAINER_SYSCTLS);
    await ipBatch([`link add ${ep.ifname} netns ${node.netns} type veth peer name ${CONTAINER_IF} netns ${netns}`]);
    await ipBatch([`addr add ${GATEWAY_LL}/64 dev ${ep.ifname} nodad`, `link set ${ep.ifname} up`], node.netns);
    await ipBatch([`addr add ${ep.address}/128 dev ${CONTAINER_IF} nodad`, `link set ${CONTAINER_IF} up`, `route replace ${via} via ${GATEWAY_LL} dev ${CONTAINER_IF}`], netns);
    return linkMac(node.netns, ep.ifname);
  }

  /**
   * A tunnel gateway, as its runtime makes it (FabricGateway): its i6pn veth
   * like a container's (its routes to fdaa::/16 through its node), a leg on
   * the underlay, and a public link to the internet namespace, which is made
   * with the first gateway and routes fdaa::/16 to it. The gateway's
   * namespace forwards: a packet from the internet to a private address is
   * delivered to its i6pn veth, where the dataplane, not a missing route,
   * stops it (from_endpoint: `outside`).
   */
  async addGateway(gw: { name: string; node: string; region: string; address: string; ifname: string }): Promise<FabricGateway> {
    if (this.gateways.has(gw.name)) throw new Error(`fabric: gateway ${gw.name} exists`);
    const n = this.gateways.size + 1;
    const netns = `${NETNS_PREFIX}${this.runId}-gw-${gw.name}`;
    await this.makeContainer(gw, netns, 'fdaa::/16');
    await sysctls(netns, { 'net.ipv6.conf.all.forwarding': 1 });
    // The underlay leg (NATS, metrics).
    const underlay = `${this.underlayPrefix}${(0x100 + n).toString(16)}`;
    const port = `g-${gw.name}`.slice(0, 15);
    await ipBatch([`link add up0 netns ${netns} type veth peer name ${port} netns ${this.fabricNetns}`]);
    await ipBatch([`link set ${port} master ${BRIDGE}`, `link set ${port} up`], this.fabricNetns);
    await ipBatch([`addr add ${underlay}/64 dev up0 nodad`, 'link set up0 up'], netns);
    // The public link.
    if (!this.record.state.netns.includes(this.internetNetns)) {
      await this.addNetns(this.internetNetns);
      await sysctls(this.internetNetns, CONTAINER_SYSCTLS);
    }
    const net = `2001:db8:${this.runId}:${n.toString(16)}::`;
    const [publicAddress, clientAddress] = [`${net}1`, `${net}2`];
    const inetIf = `gw${n}`;
    await ipBatch([`link add pub0 netns ${netns} type veth peer name ${inetIf} netns ${this.internetNetns}`]);
    await ipBatch([`addr add ${publicAddress}/64 dev pub0 nodad`, 'link set pub0 up'], netns);
    await ipBatch([`addr add ${clientAddress}/64 dev ${inetIf} nodad`, `link set ${inetIf} up`, ...(n === 1 ? [`route replace fdaa::/16 via ${publicAddress} dev ${inetIf}`] : [])], this.internetNetns);
    const fg: FabricGateway = { ...gw, netns, underlay, publicAddress, clientAddress };
    this.gateways.set(gw.name, fg);
    await this.routeRemote(fg);
    this.record.setInfo('gateways', [...this.gateways.values()]);
    return fg;
  }

  /** The /128 from the node to its endpoint's veth; idempotent (the agent installs the same). */
  async routeLocalEndpoint(ep: FabricEndpoint): Promise<void> {
    await ipBatch([`route replace ${ep.address}/128 dev ${ep.ifname}`], this.node(ep.node).netns);
  }

  /** Every other node reaches this endpoint through the owner's underlay address. */
  private async routeRemote(ep: Pick<FabricEndpoint, 'node' | 'address'>): Promise<void> {
    const owner = this.node(ep.node);
    await Promise.all(
      [...this.nodes.values()]
        .filter((n) => n.name !== owner.name)
        .map((n) => ipBatch([`route replace ${ep.address}/128 via ${owner.underlay} dev ${n.uplink}`], n.netns)),
    );
  }

  /** The container goes away: its namespace (and so its veth pair) and the remote routes. */
  async removeEndpoint(name: string): Promise<void> {
    const ep = this.endpoint(name);
    const owner = this.node(ep.node);
    for (const pid of (await run(['ip', 'netns', 'pids', ep.netns], { allowFail: true })).stdout.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await run(['ip', 'netns', 'del', ep.netns]);
    rmSync(netnsConfigDir(ep.netns), { recursive: true, force: true });
    this.record.state.netns = this.record.state.netns.filter((n) => n !== ep.netns);
    await Promise.all(
      [...this.nodes.values()]
        .filter((n) => n.name !== owner.name)
        .map((n) => run(['ip', '-n', n.netns, '-6', 'route', 'del', `${ep.address}/128`], { allowFail: true })),
    );
    this.endpoints.delete(name);
    this.record.setInfo('endpoints', [...this.endpoints.values()]);
  }

  /**
   * Leave the fabric running after this process exits (the demo): no more
   * clean-up on exit or signals; `demo.sh down` removes it.
   */
  detach(): void {
    process.off('exit', this.onExit);
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
    this.record.state.detached = true;
    this.record.save();
  }

  /** Remove everything this run made. Safe to call twice, and from exit/signal handlers. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    process.off('exit', this.onExit);
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
    destroyRunSync(this.runId);
  }

  async destroy(): Promise<void> {
    this.destroySync();
  }
}

/**
 * The resolv.conf a runtime gives an i6pn container: its node's resolver,
 * reached through the container's own veth, which answers the zone
 * (i6pn.local) for the container's workspace and region and forwards the
 * rest (as the agent's --dns-upstream says).
 */
export function containerResolvConf(): string {
  return `# i6pn: the node resolver (answers i6pn.local for this container's workspace and region)\nnameserver ${RESOLVER_ADDRESS}\noptions timeout:1 attempts:2\n`;
}

async function linkMac(netns: string, ifname: string): Promise<string> {
  const link = JSON.parse((await run(['ip', '-n', netns, '-j', 'link', 'show', 'dev', ifname])).stdout) as Array<{ address?: string }>;
  const mac = link[0]?.address;
  if (!mac) throw new Error(`fabric: no MAC on ${ifname} in ${netns}`);
  return mac;
}
