/**
 * A whole i6pn installation on the test fabric: the fabric, NATS, the
 * provisioning, the containers, a dataplane per node, Prometheus, and a probe
 * daemon per container. The demo and the end-to-end tests build it the same
 * way, so that what the demo shows is what the tests prove.
 *
 * Dataplanes:
 *   none    nothing enforces (the fabric's control: everything delivers)
 *   static  the BPF programs loaded and filled by the harness (no agent, no NATS membership)
 *   agent   one i6pn-agent per node, following NATS (the product)
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Counters, scrapeMetrics } from './counters.js';
import { mapLimit, run } from './exec.js';
import { Fabric, type FabricEndpoint, type FabricGateway, type FabricNode } from './fabric.js';
import { addressBytes, modelOracle } from './policy.js';
import { ProbeDaemon } from './probes.js';
import { addressIn, planAddresses } from './provision.js';
import { Ctl, ctlArgv } from './ctl.js';
import { NatsCluster } from './nats-cluster.js';
import { type Nats, type Prometheus, type Service, httpOk, startNats, startPrometheus, startService, waitUntil } from './services.js';
import type { StaticLoad } from './static-dataplane.js';
import { type Endpoint, type EndpointSpec, type Topology, defaultTopology, endpointIfname, validateTopology } from './topology.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const BPF_OBJECT = join(REPO_ROOT, 'build/bpf/i6pn.bpf.o');
const AGENT_MAIN = join(REPO_ROOT, 'agent/main.ts');
const GATEWAY_MAIN = join(REPO_ROOT, 'gateway/main.ts');
export const GATEWAY_METRICS_PORT = 9466;
/** The public ports a fabric gateway hands out. */
export const GATEWAY_PORTS = { first: 20000, last: 20099 };
const STATIC_DATAPLANE = fileURLToPath(new URL('./static-dataplane.ts', import.meta.url));

export const AGENT_METRICS_PORT = 9465;

export type DataplaneKind = 'none' | 'static' | 'agent';
export type EnforcementMode = 'enforce' | 'monitor';

export interface ClusterOptions {
  topology?: Topology;
  dataplane: DataplaneKind;
  mode?: EnforcementMode;
  /** Start nats-server even without agents (default: only for the agent dataplane). */
  nats?: boolean;
  /** Start a probe daemon in every container (default true). */
  probes?: boolean;
  log?: (msg: string) => void;
  /**
   * Which build of the agent and i6pnctl runs: `source` (through tsx, the tree
   * under test; the tests' default) or `dist` (what `make build` made, as an
   * operator runs it; the demo's).
   */
  binaries?: 'source' | 'dist';
  /** Start Prometheus scraping the agents (default true with agents). */
  prometheus?: boolean;
  /** Called at the start of each step (the demo's progress lines). */
  step?: (title: string) => void;
  /**
   * The agents' --dns-upstream (default `none`: the fabric's namespaces reach
   * no resolver of the machine, so names outside the zone are REFUSED rather
   * than timing out).
   */
  dnsUpstream?: string;
  /**
   * A NATS cluster of this many servers (JetStream, routes between them)
   * instead of one server; the store's buckets are then created with
   * min(3, n) replicas (i6pnctl --kv-replicas) and every agent and i6pnctl
   * gets all the servers' URLs. See test/fabric/nats-cluster.ts.
   */
  natsCluster?: number;
  /** More agent flags for every agent this cluster starts (after the fabric's own: a later flag wins). */
  agentArgs?: readonly string[];
}

export class Cluster {
  readonly daemons = new Map<string, ProbeDaemon>();
  readonly agents = new Map<string, Service>();
  /** Running i6pn-gateway processes, by gateway name. */
  readonly gatewayServices = new Map<string, Service>();
  ctl?: Ctl;
  /** Endpoints removed from the store whose containers still run (the agents leave them alone). */
  readonly deregistered = new Set<string>();
  binaries: 'source' | 'dist' = 'source';
  agentArgs: readonly string[] = [];
  dnsUpstream = 'none';
  nats?: Nats;
  /** The servers, when Cluster.up was given natsCluster (then `nats` stands for all of them). */
  natsCluster?: NatsCluster;
  prometheus?: Prometheus;
  oracle: ReturnType<typeof modelOracle>;

  private constructor(
    readonly fabric: Fabric,
    readonly topology: Topology,
    readonly dataplane: DataplaneKind,
    public mode: EnforcementMode,
  ) {
    this.oracle = modelOracle([]);
  }

  /** Registered endpoints with their containers (not those deregistered but still running). */
  get endpoints(): FabricEndpoint[] {
    return [...this.fabric.endpoints.values()].filter((e) => !this.deregistered.has(e.name));
  }

  static async up(opts: ClusterOptions): Promise<Cluster> {
    const topology = opts.topology ?? defaultTopology;
    validateTopology(topology);
    const step = opts.step ?? (() => {});
    const log = opts.log ?? (() => {});
    if (opts.dataplane !== 'none') ensureBpffs();
    step(`fabric: ${topology.nodes.length} nodes in ${topology.regions.length} regions`);
    const fabric = await Fabric.create({ nodes: topology.nodes, routeLocal: opts.dataplane !== 'agent', log });
    const c = new Cluster(fabric, topology, opts.dataplane, opts.mode ?? 'enforce');
    c.binaries = opts.binaries ?? 'source';
    c.dnsUpstream = opts.dnsUpstream ?? 'none';
    c.agentArgs = opts.agentArgs ?? [];
    try {
      if (opts.natsCluster !== undefined && opts.natsCluster > 1) {
        step(`nats-server cluster of ${opts.natsCluster} with JetStream`);
        c.natsCluster = await NatsCluster.start(fabric, opts.natsCluster);
        c.nats = c.natsCluster.asNats();
        log(`nats cluster at ${c.nats.url}`);
      } else if (opts.nats ?? opts.dataplane === 'agent') {
        step('nats-server with JetStream');
        c.nats = await startNats(fabric);
        log(`nats at ${c.nats.url}`);
      }
      step(`provisioning: ${topology.regions.length} regions, ${topology.workspaces.length} workspaces, ${topology.endpoints.length} endpoints`);
      const endpoints = await c.provision();
      step(`containers: ${endpoints.length} namespaces with a veth pair and an fdaa address each`);
      for (const e of endpoints) await fabric.addEndpoint(e);
      c.oracle = modelOracle(endpoints);
      if (opts.dataplane === 'static') {
        step(`dataplane: BPF programs loaded on ${fabric.nodes.size} nodes, ${c.mode} mode (no agent)`);
        await c.loadStatic();
      } else if (opts.dataplane === 'agent') {
        step(`agents: one i6pn-agent per node, ${c.mode} mode`);
        await c.startAgents();
        if (opts.prometheus ?? true) {
          step('prometheus scraping every agent');
          c.prometheus = await startPrometheus(
            fabric,
            [...fabric.nodes.values()].map((node) => ({ node, metricsAddr: `[${node.underlay}]:${AGENT_METRICS_PORT}` })),
          );
        }
      }
      if (opts.probes ?? true) {
        step('probe daemons in every container');
        await Promise.all(c.endpoints.map(async (e) => c.daemons.set(e.name, await ProbeDaemon.start(e, fabric.record))));
      }
    } catch (err) {
      await c.down();
      throw err;
    }
    return c;
  }

  /**
   * Addresses for every endpoint. With agents, provisioning is i6pnctl's, as an
   * operator runs it (it hands out the addresses); otherwise the harness plans them.
   */
  private async provision(): Promise<Endpoint[]> {
    if (this.dataplane !== 'agent') return planAddresses(this.topology);
    if (!this.nats) throw new Error('the agent dataplane needs nats');
    this.ctl = new Ctl(
      this.nats.url,
      this.binaries === 'dist' ? [process.execPath, join(REPO_ROOT, 'dist/controller/cli.js')] : ctlArgv(),
      this.natsCluster ? ['--kv-replicas', String(Math.min(3, this.natsCluster.servers.length))] : [],
    );
    // On a fresh NATS cluster, one i6pnctl creates the fixed R3 buckets before
    // several create the regions' at once (concurrent first creates of the same
    // streams have timed out on a loaded machine).
    if (this.natsCluster) await this.ctl.run(['region', 'list']);
    return this.ctl.provision(this.topology);
  }

  /**
   * One i6pn-agent per node, inside the node's namespace, as a DaemonSet would
   * run it. `eventsPerSec`: its --events-per-sec (default: the agent's own).
   */
  async startAgents(mode: EnforcementMode = this.mode, opts: { eventsPerSec?: number } = {}): Promise<void> {
    this.mode = mode;
    await Promise.all([...this.fabric.nodes.values()].map((node) => this.startAgent(node.name, mode, opts)));
  }

  /** `extraArgs`: more flags, after the fabric's own (a later flag wins). */
  async startAgent(nodeName: string, mode: EnforcementMode = this.mode, opts: { eventsPerSec?: number; extraArgs?: readonly string[] } = {}): Promise<Service> {
    const node = this.node(nodeName);
    const nats = this.nats;
    if (!nats) throw new Error('agents need nats');
    this.fabric.record.addBpffsDir(node.bpffs);
    const argv = [
      process.execPath,
      ...(this.binaries === 'dist' ? [join(REPO_ROOT, 'dist/agent/main.js')] : ['--import=tsx', AGENT_MAIN]),
      '--nats', nats.url,
      '--node', node.name,
      '--region', node.region,
      '--uplink', node.uplink,
      '--bpffs', node.bpffs,
      '--metrics-addr', `[${node.underlay}]:${AGENT_METRICS_PORT}`,
      '--mode', mode,
      '--dns-upstream', this.dnsUpstream,
      '--log-level', 'debug',
      ...(opts.eventsPerSec !== undefined ? ['--events-per-sec', String(opts.eventsPerSec)] : []),
      ...this.agentArgs,
      ...(opts.extraArgs ?? []),
    ];
    const svc = startService(this.fabric, `agent-${node.name}`, argv, { netns: node.netns, cmdlineMark: node.bpffs, cwd: REPO_ROOT });
    this.agents.set(node.name, svc);
    const local = this.endpoints.filter((e) => e.node === node.name && !this.deregistered.has(e.name));
    const base = `http://[${node.underlay}]:${AGENT_METRICS_PORT}`;
    await waitUntil(
      `agent ${node.name} ready with its ${local.length} endpoint veths attached and routed`,
      async () => {
        if (!(await httpOk(`${base}/readyz`))) return false;
        const text = await (await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(1000) })).text();
        const m = /^i6pn_attached_hooks\{hook="from_endpoint"\} (\S+)/m.exec(text);
        if (m === null || Number(m[1]) < local.length) return false;
        // The agent routes its endpoints (a /128 to the veth) after attaching them.
        const routes = (await run(['ip', '-6', 'route', 'show'], { netns: node.netns })).stdout;
        return local.every((e) => routes.includes(`${e.address} dev ${e.ifname}`));
      },
      30_000,
      svc,
    );
    return svc;
  }

  async stopAgent(nodeName: string): Promise<void> {
    await this.agents.get(nodeName)?.stop();
    this.agents.delete(nodeName);
  }

  node(name: string): FabricNode {
    return this.fabric.node(name);
  }

  /** The static dataplane of one node: members of its region, its own veths. */
  private staticLoad(node: FabricNode, mode: EnforcementMode): StaticLoad {
    const members = this.endpoints.filter((e) => e.region === node.region);
    const regionOf = members[0] ? addressBytes(members[0].address).readUInt16BE(6) : 0xffff;
    return {
      object: BPF_OBJECT,
      pinDir: node.bpffs,
      node: [...this.fabric.nodes.keys()].indexOf(node.name) + 1,
      region: regionOf,
      mode,
      uplink: node.uplink,
      members: members.map((e) => ({ address: e.address, i6pn: e.i6pn, ...(e.node === node.name ? { ifname: e.ifname } : {}) })),
    };
  }

  async loadStatic(mode: EnforcementMode = this.mode): Promise<void> {
    this.mode = mode;
    await mapLimit([...this.fabric.nodes.values()], 2, async (node) => {
      this.fabric.record.addBpffsDir(node.bpffs);
      await run(['node', '--import=tsx', STATIC_DATAPLANE, 'load', JSON.stringify(this.staticLoad(node, mode))], {
        netns: node.netns,
        timeoutMs: 60_000,
        env: { ...process.env },
      });
    });
  }

  /** Counters of one node's dataplane, read from its pinned maps: `hook/verdict/reason` → packets. */
  async staticCounters(nodeName: string): Promise<Map<string, number>> {
    const node = this.node(nodeName);
    const r = await run(['node', '--import=tsx', STATIC_DATAPLANE, 'counters', node.bpffs, BPF_OBJECT], { netns: node.netns });
    const rows = JSON.parse(r.stdout) as Array<{ hook: string; verdict: string; reason: string; packets: number }>;
    return new Map(rows.map((x) => [`${x.hook}/${x.verdict}/${x.reason}`, x.packets] as const));
  }

  /**
   * A new endpoint, as in production: registered (store), then its container
   * made by the runtime (namespace, veth, address), then its probe daemon.
   */
  async addEndpoint(spec: EndpointSpec): Promise<FabricEndpoint & { readyAt: number }> {
    const region = this.node(spec.node).region;
    let ep: Endpoint;
    if (this.ctl) {
      ep = await this.ctl.endpointAdd(spec, region);
    } else {
      const sameWs = this.endpoints.find((e) => e.workspace === spec.workspace);
      const sameRegion = this.endpoints.find((e) => e.region === region);
      if (!sameWs || !sameRegion) throw new Error(`addEndpoint: no existing endpoint of workspace ${spec.workspace} or region ${region}`);
      ep = { ...spec, region, address: addressIn(sameWs.address, sameRegion.address), ifname: endpointIfname(spec.name) };
    }
    const fe = await this.fabric.addEndpoint(ep);
    if (this.dataplane === 'static') await this.loadStatic();
    // From here the endpoint exists for the product: registered and its container up.
    const readyAt = Date.now();
    this.daemons.set(fe.name, await ProbeDaemon.start(fe, this.fabric.record));
    this.oracle = modelOracle(this.endpoints);
    return { ...fe, readyAt };
  }

  /**
   * A tunnel gateway on `node`, as in production: registered (i6pnctl
   * gateway add), its namespace made by the runtime (Fabric.addGateway), the
   * node's agent binding its veth, then i6pn-gateway started in it.
   */
  async addGateway(name: string, nodeName: string): Promise<FabricGateway> {
    if (!this.ctl) throw new Error('gateways need the agent dataplane (i6pnctl)');
    const node = this.node(nodeName);
    const reg = await this.ctl.gatewayAdd(node.region, node.name);
    const gw = await this.fabric.addGateway({ name, node: node.name, region: node.region, ...reg });
    // The agent binds and routes its veth (the gateway's packets pass nothing before).
    await waitUntil(
      `agent ${node.name} routes gateway ${name}`,
      async () => (await run(['ip', '-6', 'route', 'show'], { netns: node.netns })).stdout.includes(`${gw.address} dev ${gw.ifname}`),
      30_000,
      this.agents.get(node.name),
    );
    await this.startGateway(name);
    return gw;
  }

  /** i6pn-gateway in its namespace (again, after stopGateway: a restart). */
  async startGateway(name: string): Promise<Service> {
    const gw = this.fabric.gateways.get(name);
    if (!gw || !this.nats) throw new Error(`no gateway ${name} (or no nats)`);
    const argv = [
      process.execPath,
      ...(this.binaries === 'dist' ? [join(REPO_ROOT, 'dist/gateway/main.js')] : ['--import=tsx', GATEWAY_MAIN]),
      '--nats', this.nats.url,
      '--region', gw.region,
      '--node', gw.node,
      '--address', gw.address,
      '--listen', gw.publicAddress,
      '--ports', `${GATEWAY_PORTS.first}-${GATEWAY_PORTS.last}`,
      '--metrics-addr', `[${gw.underlay}]:${GATEWAY_METRICS_PORT}`,
      '--heartbeat-interval', '1',
      '--log-level', 'debug',
      ...(this.gatewayTls ? ['--tls-cert', this.gatewayTls.cert, '--tls-key', this.gatewayTls.key] : []),
    ];
    const svc = startService(this.fabric, `gateway-${name}`, argv, { netns: gw.netns, cmdlineMark: gw.netns, cwd: REPO_ROOT });
    this.gatewayServices.set(name, svc);
    await waitUntil(`gateway ${name} ready`, () => httpOk(`${this.gatewayMetricsUrl(name).replace(/metrics$/, 'readyz')}`), 30_000, svc);
    return svc;
  }

  /** Certificate and key files a gateway started from now on terminates TLS with. */
  gatewayTls?: { cert: string; key: string };

  async stopGateway(name: string): Promise<void> {
    await this.gatewayServices.get(name)?.stop();
    this.gatewayServices.delete(name);
  }

  gatewayMetricsUrl(name: string): string {
    const gw = this.fabric.gateways.get(name);
    if (!gw) throw new Error(`no gateway ${name}`);
    return `http://[${gw.underlay}]:${GATEWAY_METRICS_PORT}/metrics`;
  }

  /** Stop nats-server (its store stays): the agents lose the store, the dataplane keeps its state. */
  async stopNats(): Promise<void> {
    await this.nats?.stop();
  }

  /** nats-server again, same address and store: the agents reconnect by themselves. */
  async restartNats(): Promise<void> {
    if (!this.nats) throw new Error('no nats');
    if (this.natsCluster) return this.natsCluster.startAll();
    this.nats = await startNats(this.fabric);
  }

  /** `i6pnctl endpoint remove`: the store forgets the endpoint: its container keeps running and keeps trying. */
  async deregister(name: string): Promise<void> {
    const ep = this.fabric.endpoint(name);
    if (!this.ctl) throw new Error('deregister needs the agent dataplane (i6pnctl)');
    await this.ctl.endpointRemove(ep.address);
    this.deregistered.add(name);
    this.oracle = modelOracle(this.endpoints);
  }

  /**
   * `i6pnctl endpoint remove` while the container keeps running, then wait
   * until its node's agent has sealed the veth (the veth keeps its hooks and
   * drops everything in and out until it is gone).
   */
  async revoke(name: string): Promise<void> {
    const node = this.fabric.endpoint(name).node;
    const series = 'i6pn_veths{state="sealed"}';
    const before = (await this.metric(node, series)) || 0;
    await this.deregister(name);
    await waitUntil(`${node} seals the veth of ${name}`, async () => (await this.metric(node, series)) > before, 15_000);
  }

  /** One series of an agent's /metrics, as printed (`name{labels}`); NaN when absent. */
  async metric(node: string, series: string): Promise<number> {
    const text = await (await fetch(this.metricsUrl(node), { signal: AbortSignal.timeout(2000) })).text();
    const line = text.split('\n').find((l) => l.startsWith(`${series} `));
    return line ? Number(line.slice(series.length + 1)) : NaN;
  }

  /** The container goes away (after deregister). */
  async removeContainer(name: string): Promise<void> {
    await this.daemons.get(name)?.stop();
    this.daemons.delete(name);
    await this.fabric.removeEndpoint(name);
    this.deregistered.delete(name);
    this.oracle = modelOracle(this.endpoints);
  }

  /** Where this cluster's counters come from: the pinned maps, or the agents' /metrics. */
  counters = async (node: string): Promise<Counters> => {
    if (this.dataplane === 'static') return this.staticCounters(node);
    if (this.dataplane === 'agent') return scrapeMetrics(this.metricsUrl(node));
    return new Map();
  };

  /** An agent's /metrics URL (reachable from the root namespace over the management link). */
  metricsUrl(node: string): string {
    return `http://[${this.node(node).underlay}]:${AGENT_METRICS_PORT}/metrics`;
  }

  async down(): Promise<void> {
    await Promise.all([...this.daemons.values()].map((d) => d.stop()));
    await this.prometheus?.stop();
    await Promise.all([...this.gatewayServices.keys()].map((n) => this.stopGateway(n)));
    await Promise.all([...this.agents.keys()].map((n) => this.stopAgent(n)));
    await this.nats?.stop();
    await this.fabric.destroy();
  }
}

/** Pins need a bpffs at /sys/fs/bpf (a fresh machine may not have it mounted). */
export function ensureBpffs(): void {
  try {
    execFileSync('mountpoint', ['-q', '/sys/fs/bpf']);
  } catch {
    execFileSync('mount', ['-t', 'bpf', 'bpf', '/sys/fs/bpf']);
  }
  if (!existsSync('/sys/fs/bpf')) throw new Error('no /sys/fs/bpf');
}
