/**
 * Tunnels end to end: the two-region fabric with a gateway node in ams, a
 * real nats-server, one i6pn-agent per node, a real i6pn-gateway in its
 * namespace (its i6pn veth, the underlay, a public link) and a namespace
 * that stands for the internet. One fabric run, many assertions:
 *
 *  - from the internet, through the tunnel: HTTP (the page byte for byte),
 *    TCP echo with many parallel connections (byte-exact), TLS terminated
 *    by the gateway; a tunnel works within a second of `tunnel create`;
 *  - the walls: the same container's other port has no public port, another
 *    container has none, and the private addresses are unreachable from the
 *    internet although a route delivers there (dropped as `outside` by the
 *    gateway node's dataplane);
 *  - from the gateway's own address: an untunneled port, another
 *    workspace's endpoint, are dropped (`not_tunneled`); a tenant reaches the
 *    gateway only as a tunnel's replies (`to_gateway` otherwise);
 *  - the agents' tunnels maps, the gateway's per-tunnel metrics (promtool);
 *  - the gateway keeps serving with NATS down, picks its tunnels up again
 *    after a restart (same public ports), and ends a removed tunnel's port
 *    and open connections within a second; removing an endpoint ends its
 *    tunnels.
 */
import { promtoolCheckMetrics } from './helpers/promtool.js';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { Cluster } from './fabric/cluster.js';
import { delta, snapshot } from './fabric/counters.js';
import type { FabricGateway } from './fabric/fabric.js';
import { acquireFabricLock } from './fabric/state.js';
import { waitUntil } from './fabric/services.js';
import { ECHO_PORT, HTTP_PORT, OTHER_PORT, PAGE_SIZE, holdConnection, pageSha256, peer, servePeer, tcpProbe, tunnelTopology, url } from './fabric/tunnels.js';
import type { TunnelJson } from './fabric/ctl.js';
import { connectStore, type Store } from '../lib/store.js';
import { listTunnels } from '../controller/store/tunnels.js';

let releaseLock: (() => void) | undefined;
let c: Cluster;
let gw: FabricGateway;
let certDir: string;
/** The store, in-process: a fast look at what the gateway says (i6pnctl is a second of tsx). */
let store: Store;
const inet = (): string => c.fabric.internetNetns;
const nodes = (): string[] => [...c.fabric.nodes.keys()];
const counters = () => snapshot(nodes(), c.counters);
const tunnels = new Map<string, TunnelJson>();

/** The public port of a tunnel, as `tunnel list` shows it (waits until a gateway serves it). */
async function publicPort(id: string, timeoutMs = 5000): Promise<number> {
  let port = 0;
  await waitUntil(`a gateway serves tunnel ${id}`, async () => {
    const t = (await c.ctl!.tunnelList()).find((x) => x.id === id);
    port = t?.public.find((p) => !p.stale && p.publicAddress === gw.publicAddress)?.port ?? 0;
    return port > 0;
  }, timeoutMs);
  return port;
}

async function gatewayMetrics(): Promise<string> {
  return (await fetch(c.gatewayMetricsUrl('gw1'), { signal: AbortSignal.timeout(3000) })).text();
}

const series = (text: string, name: string, labels: Record<string, string>): number => {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && want.every((w) => l.includes(w)));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : NaN;
};

test.before(async () => {
  releaseLock = await acquireFabricLock();
  c = await Cluster.up({ topology: tunnelTopology, dataplane: 'agent', probes: false, prometheus: false });
  store = await connectStore({ servers: c.nats!.url });
  // A certificate for the gateway's TLS termination, for the public address it will have (self-signed; the client trusts it as its CA).
  certDir = mkdtempSync(join(tmpdir(), 'i6pn-tunnel-tls-'));
  const ip = `2001:db8:${c.fabric.runId}:1::1`;
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(certDir, 'key.pem'), '-out', join(certDir, 'cert.pem'), '-days', '1', '-subj', '/CN=gateway.i6pn.test', '-addext', `subjectAltName=IP:${ip}`], { stdio: 'pipe' });
  c.gatewayTls = { cert: join(certDir, 'cert.pem'), key: join(certDir, 'key.pem') };
  gw = await c.addGateway('gw1', 'ams-gw');
  if (gw.publicAddress !== `2001:db8:${c.fabric.runId}:1::1`) throw new Error(`the certificate is for another address than ${gw.publicAddress}`);
  await servePeer(c, 'a1');
  await servePeer(c, 'a3');
});

test.after.always(async () => {
  await store?.close();
  await c?.down();
  if (certDir) rmSync(certDir, { recursive: true, force: true });
  releaseLock?.();
});

test.serial('a tunnel works from the internet within a second of `tunnel create`: HTTP, byte for byte', async (t) => {
  const a1 = c.fabric.endpoint('a1');
  const created = await c.ctl!.tunnelCreate(a1.address, HTTP_PORT);
  const t0 = Date.now();
  let port = 0;
  let page = '';
  // Poll the public side directly: the first second is what counts.
  await waitUntil('the page through the tunnel', async () => {
    const list = (await listTunnels(store, { region: 'ams' })).tunnels.find((x) => x.id === created.id);
    port = list?.public[0]?.port ?? port;
    if (!port) return false;
    page = await peer(inet(), 'http', url('http', gw.publicAddress, port)).catch(() => '');
    return page !== '';
  }, 10_000);
  const ms = Date.now() - t0;
  t.log(`tunnel ${created.id}: served on [${gw.publicAddress}]:${port}, the page came ${ms} ms after tunnel create returned`);
  t.deepEqual(JSON.parse(page), { status: 200, length: PAGE_SIZE, sha256: pageSha256() });
  t.true(port >= 20000 && port <= 20099);
  t.true(ms < 1000, `${ms} ms`);
  tunnels.set('http', { ...created, public: [{ gateway: gw.address, publicAddress: gw.publicAddress, port, stale: false }] });
});

test.serial('TCP through a tunnel: 64 parallel connections, each 256 KiB echoed byte-exact', async (t) => {
  const a1 = c.fabric.endpoint('a1');
  const created = await c.ctl!.tunnelCreate(a1.address, ECHO_PORT, { wait: 10 });
  const port = created.public[0]!.port;
  tunnels.set('echo', created);
  const r = JSON.parse(await peer(inet(), 'echo', gw.publicAddress, port, 64, 256 * 1024)) as { ok: number; bad: number };
  t.deepEqual(r, { ok: 64, bad: 0 });
  const m = await gatewayMetrics();
  t.true(series(m, 'i6pn_gateway_connections_total', { tunnel: created.id }) >= 64);
  t.true(series(m, 'i6pn_gateway_bytes_total', { tunnel: created.id, direction: 'in' }) >= 64 * 256 * 1024);
  t.true(series(m, 'i6pn_gateway_bytes_total', { tunnel: created.id, direction: 'out' }) >= 64 * 256 * 1024);
  t.is(series(m, 'i6pn_gateway_errors_total', { tunnel: created.id, kind: 'connect' }), 0);
  t.regex(m, /^i6pn_gateway_tunnels 2$/m);
});

test.serial('TLS terminated by the gateway with its certificate, plain TCP to the endpoint', async (t) => {
  const a3 = c.fabric.endpoint('a3');
  const created = await c.ctl!.tunnelCreate(a3.address, HTTP_PORT, { tls: true, wait: 10 });
  tunnels.set('tls', created);
  const port = created.public[0]!.port;
  const page = JSON.parse(await peer(inet(), 'http', url('https', gw.publicAddress, port), join(certDir, 'cert.pem'))) as { status: number; sha256: string };
  t.deepEqual(page, { status: 200, length: PAGE_SIZE, sha256: pageSha256() });
  // Plain HTTP on the TLS port is a failed handshake, counted.
  await peer(inet(), 'connect', gw.publicAddress, port);
  const plain = await run(['python3', '-c', `import urllib.request; urllib.request.urlopen(${JSON.stringify(url('http', gw.publicAddress, port))}, timeout=3)`], inet());
  t.not(plain, 0);
  await waitUntil('a TLS error counted', async () => series(await gatewayMetrics(), 'i6pn_gateway_errors_total', { tunnel: created.id, kind: 'tls' }) >= 1, 5000);
  t.pass();
});

/** Exit code of a command in a namespace. */
async function run(argv: string[], netns: string): Promise<number> {
  return new Promise((resolve) => {
    const p = spawn('nsenter', [`--net=/run/netns/${netns}`, '--', ...argv], { stdio: 'ignore' });
    p.on('exit', (code) => resolve(code ?? 1));
  });
}

test.serial('the walls from the internet: the other port, another container, the private addresses', async (t) => {
  const a1 = c.fabric.endpoint('a1');
  const a2 = c.fabric.endpoint('a2');
  const used = new Set([...tunnels.values()].map((x) => x.public[0]!.port));
  const before = await counters();
  // Only tunnels have public ports: any other port of the gateway is refused by its kernel.
  const unused = [...Array(100).keys()].map((i) => 20000 + i).find((p) => !used.has(p))!;
  t.is(await tcpProbe(inet(), gw.publicAddress, unused), 'refused');
  t.is(await tcpProbe(inet(), gw.publicAddress, OTHER_PORT), 'refused');
  t.is(await tcpProbe(inet(), gw.publicAddress, HTTP_PORT), 'refused');
  // The internet routes fdaa::/16 to the gateway, which forwards: the dataplane stops it.
  t.is(await tcpProbe(inet(), a1.address, HTTP_PORT), 'timeout');
  t.is(await tcpProbe(inet(), a1.address, OTHER_PORT), 'timeout');
  t.is(await tcpProbe(inet(), a2.address, HTTP_PORT), 'timeout');
  const moved = delta(before, await counters());
  // TCP retries its SYN: at least one packet each of the three private targets, at the gateway node's veth hook.
  t.true((moved.get('ams-gw/from_endpoint/drop/outside') ?? 0) >= 3, JSON.stringify(Object.fromEntries(moved)));
  t.is(moved.get('ams-1/to_endpoint/pass/pass_private') ?? 0, 0, 'nothing reached a1 but through the tunnel');
});

test.serial("from the gateway's own address: only the tunneled ports; a tenant reaches the gateway only as replies", async (t) => {
  const a1 = c.fabric.endpoint('a1');
  const a2 = c.fabric.endpoint('a2');
  const g1 = c.fabric.endpoint('g1');
  const before = await counters();
  t.is(await tcpProbe(gw.netns, a1.address, HTTP_PORT), 'open', 'the control: a tunneled port');
  t.is(await tcpProbe(gw.netns, a1.address, OTHER_PORT), 'timeout', 'the same endpoint, another port (a listener is there)');
  t.is(await tcpProbe(gw.netns, a2.address, ECHO_PORT), 'timeout', 'an endpoint without a tunnel');
  t.is(await tcpProbe(gw.netns, g1.address, HTTP_PORT), 'timeout', 'another workspace');
  const gwDrops = delta(before, await counters());
  t.true((gwDrops.get('ams-gw/from_endpoint/drop/not_tunneled') ?? 0) >= 3, JSON.stringify(Object.fromEntries(gwDrops)));
  t.true((gwDrops.get('ams-gw/from_endpoint/pass/pass_tunnel') ?? 0) >= 1);
  t.true((gwDrops.get('ams-1/to_endpoint/pass/pass_tunnel') ?? 0) >= 1);

  // Tenants: a container to the gateway's address; the tunneled container opening from its tunneled port.
  const mid = await counters();
  t.is(await tcpProbe(c.fabric.endpoint('a3').netns, gw.address, tunnels.get('http')!.public[0]!.port), 'timeout', 'a container of another node to the gateway');
  t.is(await tcpProbe(a1.netns, gw.address, 40000, HTTP_PORT), 'timeout', 'a SYN from the tunneled port is no reply');
  const tenantDrops = delta(mid, await counters());
  t.true((tenantDrops.get('ams-2/from_endpoint/drop/to_gateway') ?? 0) >= 1, JSON.stringify(Object.fromEntries(tenantDrops)));
  t.true((tenantDrops.get('ams-1/from_endpoint/drop/to_gateway') ?? 0) >= 1, JSON.stringify(Object.fromEntries(tenantDrops)));
});

test.serial("the agents' tunnels maps hold the region's tunnels; the gateway's /metrics passes promtool", async (t) => {
  for (const n of ['ams-1', 'ams-2', 'ams-gw']) t.is(await c.metric(n, 'i6pn_map_entries{map="tunnels"}'), tunnels.size, n);
  for (const n of ['sjc-1', 'sjc-2']) t.is(await c.metric(n, 'i6pn_map_entries{map="tunnels"}'), 0, n);
  const text = await gatewayMetrics();
  const promtool = await promtoolCheckMetrics(text);
  t.is(promtool.code, 0, promtool.out);
  for (const id of [...tunnels.values()].map((x) => x.id)) t.is(series(text, 'i6pn_gateway_open_connections', { tunnel: id }), 0);
});

test.serial('NATS down: the gateway serves its last tunnels; a restart picks them up on the same ports', async (t) => {
  const http = tunnels.get('http')!;
  await c.stopNats();
  try {
    await waitUntil('the gateway sees NATS gone', async () => /^i6pn_gateway_nats_connected 0$/m.test(await gatewayMetrics()), 10_000);
    const page = JSON.parse(await peer(inet(), 'http', url('http', gw.publicAddress, http.public[0]!.port))) as { sha256: string };
    t.is(page.sha256, pageSha256());
    t.deepEqual(JSON.parse(await peer(inet(), 'echo', gw.publicAddress, tunnels.get('echo')!.public[0]!.port, 8, 4096)), { ok: 8, bad: 0 });
  } finally {
    await c.restartNats();
  }
  await c.stopGateway('gw1');
  t.is(await tcpProbe(inet(), gw.publicAddress, http.public[0]!.port), 'refused', 'stopped: nothing listens');
  await c.startGateway('gw1');
  for (const [name, x] of tunnels) t.is(await publicPort(x.id), x.public[0]!.port, `${name}: the same public port after the restart`);
  t.is((JSON.parse(await peer(inet(), 'http', url('http', gw.publicAddress, http.public[0]!.port))) as { sha256: string }).sha256, pageSha256());
});

test.serial('tunnel remove: the public port closes and open connections end within a second', async (t) => {
  const echo = tunnels.get('echo')!;
  const port = echo.public[0]!.port;
  const hold = holdConnection(inet(), gw.publicAddress, port);
  await hold.held;
  const t0 = Date.now();
  await c.ctl!.tunnelRemove(echo.id);
  const afterCtl = Date.now() - t0;
  const held = await hold.ended;
  t.log(`the held connection ended ${(held * 1000).toFixed(0)} ms after it was set up; i6pnctl tunnel remove took ${afterCtl} ms`);
  t.true(held * 1000 < afterCtl + 1000, `ended ${held} s after holding, remove returned after ${afterCtl} ms`);
  t.is(await tcpProbe(inet(), gw.publicAddress, port), 'refused');
  tunnels.delete('echo');
  for (const n of ['ams-1', 'ams-gw']) await waitUntil(`${n} drops the tunnel from its map`, async () => (await c.metric(n, 'i6pn_map_entries{map="tunnels"}')) === tunnels.size, 5000);
  // The dataplane closed that port to the gateway too.
  t.is(await tcpProbe(gw.netns, c.fabric.endpoint('a1').address, ECHO_PORT), 'timeout');
  t.pass();
});

test.serial("removing an endpoint ends its tunnels: the port closes, its connections end, the veth is sealed", async (t) => {
  const http = tunnels.get('http')!;
  await c.ctl!.tunnelCreate(c.fabric.endpoint('a1').address, ECHO_PORT, { wait: 10 });
  const echo = (await c.ctl!.tunnelList()).find((x) => x.endpoint === c.fabric.endpoint('a1').address && x.port === ECHO_PORT)!;
  const hold = holdConnection(inet(), gw.publicAddress, echo.public[0]!.port);
  await hold.held;
  await c.revoke('a1');
  const list = await c.ctl!.tunnelList();
  t.deepEqual(list.map((x) => x.id), [tunnels.get('tls')!.id], 'only a3\'s tunnel is left');
  t.true((await hold.ended) < 5);
  await waitUntil('the public port of the removed endpoint closes', async () => (await tcpProbe(inet(), gw.publicAddress, http.public[0]!.port)) === 'refused', 3000);
  t.pass();
});
