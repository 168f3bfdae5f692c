/**
 * Fail closed at the edges of an endpoint's life, end to end: the two-region
 * fabric, a real nats-server, one i6pn-agent per node. Each attack below is
 * first run with the agents in monitor mode, where it must be delivered (and
 * counted as a would-drop by the hook that stops it), then in enforce mode,
 * where it must not be, with the drop counted under that hook and reason:
 *
 *  - a container whose endpoint was removed keeps its veth: it reaches nobody,
 *    whatever source it forges, on its own node and across nodes (sealed);
 *  - a veth the runtime made and never registered reaches nobody with a
 *    forged member source (unbound_source at to_endpoint and to_fabric);
 *  - an interface name reused for another workspace's endpoint while the old
 *    container runs gives the old container nothing (the veth stays sealed);
 *  - a forged private source towards the node is dropped at the sender, so
 *    no reply of the node's is reflected onto the forged victim (link-scope
 *    ICMPv6 with forged sources is in the golden table: its answers stay on
 *    the sender's own link);
 *  - a container cannot open TCP to its agent's metrics port or to NATS.
 */
import test, { type ExecutionContext } from 'ava';
import { Cluster } from './fabric/cluster.js';
import { delta, snapshot } from './fabric/counters.js';
import { run, startProcess } from './fabric/exec.js';
import type { FabricEndpoint } from './fabric/fabric.js';
import { PYTHON, newToken, spoofUdp, udpProbe } from './fabric/probes.js';
import { addressIn } from './fabric/provision.js';
import { acquireFabricLock } from './fabric/state.js';
import { waitUntil } from './fabric/services.js';
import { AGENT_METRICS_PORT } from './fabric/cluster.js';

let releaseLock: (() => void) | undefined;
let c: Cluster;
/** A container on ams-1 whose veth the runtime made and never registered. */
let stray: FabricEndpoint;
/** The address registered, for another workspace, under the old container q1's interface name. */
let reusedAddress: string;
const nodes = (): string[] => [...c.fabric.nodes.keys()];
const counters = () => snapshot(nodes(), c.counters);

/** TCP connect from inside a container; true when the handshake completes. */
async function tcpConnect(from: FabricEndpoint, host: string, port: number): Promise<boolean> {
  const script = [
    'import socket, sys',
    's = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)',
    's.settimeout(1.5)',
    'try:',
    '    s.connect((sys.argv[1], int(sys.argv[2])))',
    '    print("open")',
    'except OSError as e:',
    '    print("closed", e)',
  ].join('\n');
  const r = await run([PYTHON, '-c', script, host, String(port)], { netns: from.netns, timeoutMs: 20_000, allowFail: true });
  return r.stdout.startsWith('open');
}

/**
 * From `from`'s container, an ICMPv6 echo request to `target` (the node's own
 * address) with the victim's private address as its forged source; true when
 * the victim's container receives the echo reply carrying the token (the node
 * reflecting the forger's ping onto the victim).
 */
async function reflectedPing(from: FabricEndpoint, target: string, victim: FabricEndpoint): Promise<boolean> {
  const token = newToken('refl');
  const listen = [
    'import socket, sys, time',
    's = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)',
    's.settimeout(0.2)',
    'print("ready", flush=True)',
    'end = time.time() + 2.5',
    'while time.time() < end:',
    '    try:',
    '        data, peer = s.recvfrom(2048)',
    '    except socket.timeout:',
    '        continue',
    '    if data[0] == 129 and sys.argv[1].encode() in data:',
    '        print("reply", peer[0], flush=True)',
    '        break',
  ].join('\n');
  const listener = startProcess([PYTHON, '-c', listen, token], { netns: victim.netns, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const ready = new Promise<void>((resolve) => listener.stdout!.on('data', (d: Buffer) => ((out += d.toString()), out.includes('ready') && resolve())));
  const done = new Promise<void>((resolve) => listener.once('exit', () => resolve()));
  await ready;
  const send = [
    'import sys',
    'from scapy.all import Ether, IPv6, ICMPv6EchoRequest, sendp',
    'mac, src, dst, token = sys.argv[1:5]',
    "sendp(Ether(dst=mac)/IPv6(src=src, dst=dst)/ICMPv6EchoRequest(id=7, seq=1, data=token.encode()), iface='eth0', verbose=False)",
  ].join('\n');
  await run([PYTHON, '-c', send, from.gatewayMac, victim.address, target, token], { netns: from.netns, timeoutMs: 30_000 });
  await done;
  return out.includes('reply');
}

interface Attack {
  name: string;
  /** Where enforce drops it first, and why: node/hook/reason as the counters name it. */
  stoppedAt: string;
  /** true when the attack got through */
  attempt: () => Promise<boolean>;
}

const attacks = (): Attack[] => {
  const ep = (n: string) => c.fabric.endpoint(n);
  const daemon = (n: string) => c.daemons.get(n)!;
  const underlay = c.node('ams-1').underlay;
  return [
    // A removed endpoint's container (r1, ams-1) keeps its veth: sealed both ways.
    { name: 'removed r1 → a2, as itself', stoppedAt: 'ams-1/from_endpoint/sealed', attempt: async () => (await udpProbe(daemon('r1'), daemon('a2'), 700)).delivered },
    { name: 'removed r1 forging a2 → a1 (same node)', stoppedAt: 'ams-1/from_endpoint/sealed', attempt: async () => (await spoofUdp(ep('r1'), ep('a2').address, daemon('a1'))).arrivedFrom !== undefined },
    { name: 'removed r1 forging a1 → a3 (across nodes)', stoppedAt: 'ams-1/from_endpoint/sealed', attempt: async () => (await spoofUdp(ep('r1'), ep('a1').address, daemon('a3'))).arrivedFrom !== undefined },
    { name: 'removed r1 forging another workspace (g1) → g2', stoppedAt: 'ams-1/from_endpoint/sealed', attempt: async () => (await spoofUdp(ep('r1'), ep('g1').address, daemon('g2'))).arrivedFrom !== undefined },
    { name: 'a1 → removed r1', stoppedAt: 'ams-1/from_endpoint/unknown_dest', attempt: async () => (await udpProbe(daemon('a1'), daemon('r1'), 700)).delivered },
    { name: 'a3 → removed r1 (across nodes)', stoppedAt: 'ams-2/from_endpoint/unknown_dest', attempt: async () => (await udpProbe(daemon('a3'), daemon('r1'), 700)).delivered },
    // A veth made by the runtime and never registered (no hooks at all).
    { name: 'unregistered veth forging a2 → a1 (same node)', stoppedAt: 'ams-1/to_endpoint/unbound_source', attempt: async () => (await spoofUdp(stray, ep('a2').address, daemon('a1'))).arrivedFrom !== undefined },
    { name: 'unregistered veth forging a remote member (a3) → a1', stoppedAt: 'ams-1/to_endpoint/unbound_source', attempt: async () => (await spoofUdp(stray, ep('a3').address, daemon('a1'))).arrivedFrom !== undefined },
    { name: 'unregistered veth forging a1 → a3 (across nodes)', stoppedAt: 'ams-1/to_fabric/unbound_source', attempt: async () => (await spoofUdp(stray, ep('a1').address, daemon('a3'))).arrivedFrom !== undefined },
    { name: 'unregistered veth forging g1 → g2 (across nodes)', stoppedAt: 'ams-1/to_fabric/unbound_source', attempt: async () => (await spoofUdp(stray, ep('g1').address, daemon('g2'))).arrivedFrom !== undefined },
    // The old container q1 whose interface name was registered again for another workspace.
    { name: 'old container q1 → a1, as itself', stoppedAt: 'ams-1/from_endpoint/sealed', attempt: async () => (await udpProbe(daemon('q1'), daemon('a1'), 700)).delivered },
    { name: 'old container q1 as the new endpoint of its ifname → g1', stoppedAt: 'ams-1/from_endpoint/sealed', attempt: async () => (await spoofUdp(ep('q1'), reusedAddress, daemon('g1'))).arrivedFrom !== undefined },
    // A forged private source towards the node, whose answer would land on the victim.
    { name: 'a1 pings its node as g1: the node\'s reply reaches g1', stoppedAt: 'ams-1/from_endpoint/spoofed_source', attempt: () => reflectedPing(ep('a1'), underlay, ep('g1')) },
    // The node itself.
    { name: 'a1 opens TCP to its agent\'s metrics port', stoppedAt: 'ams-1/from_endpoint/outside', attempt: () => tcpConnect(ep('a1'), underlay, AGENT_METRICS_PORT) },
    { name: 'a1 opens TCP to NATS', stoppedAt: 'ams-1/from_endpoint/outside', attempt: () => tcpConnect(ep('a1'), c.fabric.mgmtAddress, 4222) },
  ];
};

test.before(async () => {
  releaseLock = await acquireFabricLock();
  c = await Cluster.up({ dataplane: 'agent', mode: 'monitor' });
  const a1 = c.fabric.endpoint('a1');
  await c.addEndpoint({ name: 'r1', workspace: 'acme', node: 'ams-1', i6pn: true });
  await c.addEndpoint({ name: 'q1', workspace: 'acme', node: 'ams-1', i6pn: true });
  // The runtime makes a container and its veth, and nobody registers it.
  stray = await c.fabric.addEndpoint({ name: 'u1', workspace: 'acme', node: 'ams-1', i6pn: true, region: 'ams', address: addressIn(a1.address, a1.address), ifname: 'ep-u1' });
  // Not in the store: no agent waits for it to be attached.
  c.deregistered.add('u1');
  // The root namespace (NATS) routes the containers of ams-1 back through ams-1, so TCP to NATS can complete in the control.
  await run(['ip', '-6', 'route', 'replace', 'fdaa::/16', 'via', c.node('ams-1').underlay, 'dev', c.fabric.mgmtLink]);

  // r1 is removed from the store while its container runs; q1 too, and its interface name is registered again for globex.
  await c.revoke('r1');
  await c.revoke('q1');
  const added = (await c.ctl!.run(['endpoint', 'add', '--workspace', 'globex', '--region', 'ams', '--node', 'ams-1', '--ifname', 'ep-q1'])) as { address: string };
  reusedAddress = added.address;
  await waitUntil(
    'ams-1 refuses the reused interface name',
    async () => (await c.metric('ams-1', 'i6pn_endpoint_refused_total{reason="bound_to_other"}')) >= 1,
    15_000,
  );
  // Decisions never depend on routes: put back by hand (not the agent's protocol, so it stays) the /128s
  // the agent withdrew, so that only the dataplane stands between r1 and the others.
  for (const n of ['r1', 'q1']) {
    const e = c.fabric.endpoint(n);
    await run(['ip', '-n', c.node('ams-1').netns, '-6', 'route', 'replace', `${e.address}/128`, 'dev', e.ifname]);
  }
});

test.after.always(async () => {
  try {
    await run(['ip', '-6', 'route', 'del', 'fdaa::/16'], { allowFail: true });
    await c?.down();
  } finally {
    releaseLock?.();
  }
});

async function runAttacks(t: ExecutionContext, mode: 'monitor' | 'enforce'): Promise<void> {
  for (const a of attacks()) {
    const before = await counters();
    const through = await a.attempt();
    const moved = delta(before, await counters());
    const [node, hook, reason] = a.stoppedAt.split('/');
    const key = `${node}/${hook}/${mode === 'monitor' ? 'would_drop' : 'drop'}/${reason}`;
    if (mode === 'monitor') t.true(through, `control: "${a.name}" was not delivered with the agents in monitor mode`);
    else t.false(through, `"${a.name}" got through in enforce mode`);
    t.true((moved.get(key) ?? 0) >= 1, `${a.name}: ${key} did not count; moved: ${JSON.stringify([...moved])}`);
  }
}

test.serial('monitor (the control): every attack is delivered, and counted as a would-drop where enforce stops it', async (t) => {
  await runAttacks(t, 'monitor');
});

test.serial('enforce: every attack is stopped, by the hook and under the reason expected', async (t) => {
  await Promise.all(nodes().map((n) => c.stopAgent(n)));
  await c.startAgents('enforce');
  await runAttacks(t, 'enforce');
});

test.serial('the reused interface name is not bound: no route to the new address on ams-1, the refusal counted', async (t) => {
  const routes = (await run(['ip', '-6', 'route', 'show'], { netns: c.node('ams-1').netns })).stdout;
  t.false(routes.includes(reusedAddress), routes);
  t.true((await c.metric('ams-1', 'i6pn_endpoint_refused_total{reason="bound_to_other"}')) >= 1);
  // Honest traffic on the node is untouched.
  t.true((await udpProbe(c.daemons.get('a1')!, c.daemons.get('a2')!)).delivered, 'a1 → a2');
  t.true((await udpProbe(c.daemons.get('a1')!, c.daemons.get('a3')!)).delivered, 'a1 → a3');
});
