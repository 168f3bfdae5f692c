/**
 * i6pn-agent end to end on one node: the real kernel, a real nats-server, real
 * namespaces and veths, the agent as a subprocess in the node's namespace.
 * Membership written to the store shows up in the pinned maps; local
 * endpoints get their TC programs, local_ifaces entry and /128 (whether the
 * veth comes before or after the entry); the dataplane outlives a killed agent
 * and a new one adopts it without a gap; a NATS outage is caught up; metrics
 * are exactly the catalogue and count real packets; monitor mode delivers and
 * counts would-drops; teardown leaves nothing.
 *
 * The tests run in order on one environment (each builds on the last).
 */
import { promtoolCheckMetrics } from './helpers/promtool.js';
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { endpointIdOf, formatAddress, makeEndpointAddress, parseAddress, workspaceIdHex } from '../lib/address.js';
import { nodeId } from '../agent/sync.js';
import { ENDPOINTS_HISTORY, endpointsBucket, validateEndpointEntry } from '../lib/schema.js';
import { METRIC_NAMES, OMITTED_DEFAULT_METRICS } from '../agent/metrics.js';
import { decodeDropEvent, eventsSubject } from '../lib/events.js';
import { parseHostPort } from '../agent/config.js';
import {
  AgentEnv,
  eventually,
  inNs,
  metricValue,
  parseMetrics,
  readPinnedConfig,
  readPinnedEndpoint,
  readPinnedEndpoints,
  readPinnedLocalIfaces,
  sh,
  writePinnedLocalIface,
  type AgentProcess,
  type Sample,
} from './helpers/agent-env.js';
import { REPO_ROOT, ctl, startNats, type NatsServer } from './helpers/nats.js';

const REGION = 'ams';
const REGION_ID = 0x0a01;
const NODE = 'n1';

const env = new AgentEnv('a');
let nats: NatsServer;
let nc: NatsConnection;
let endpoints: KV;
let nodes: KV;
let agent: AgentProcess | null = null;

interface Ep {
  key: string;
  address: string;
  ws: number;
  node: string;
  ifname: string;
  i6pn: boolean;
  /** The record as i6pnctl wrote it. */
  record: Record<string, unknown>;
}

const workspaceIds = new Map<string, number>();

async function i6pnctl(args: string[]): Promise<string> {
  const r = await ctl(args, { I6PN_NATS_URL: nats.url });
  if (r.code !== 0) throw new Error(`i6pnctl ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** Register an endpoint with i6pnctl (the address is the controller's choice). */
async function register(workspace: string, node: string, ifname: string): Promise<Ep> {
  const rec = JSON.parse(
    await i6pnctl(['endpoint', 'add', '--json', '--workspace', workspace, '--region', REGION, '--node', node, '--ifname', ifname]),
  ) as { address: string; workspaceId: number; i6pn: boolean };
  const addr = parseAddress(rec.address);
  return {
    key: `${workspaceIdHex(rec.workspaceId)}.${endpointIdOf(addr)}`,
    address: rec.address,
    ws: rec.workspaceId,
    node,
    ifname,
    i6pn: rec.i6pn,
    record: rec,
  };
}

async function unregister(e: Ep): Promise<void> {
  await i6pnctl(['endpoint', 'remove', e.address]);
}

/** A record for a raw write (an update i6pnctl has no command for, or a broken entry). */
function record(e: Ep, over: Record<string, unknown> = {}): string {
  return JSON.stringify({ ...e.record, ...over });
}

/** Rewrite an endpoint's entry directly in the bucket (what no i6pnctl command does: an in-place update). */
async function put(e: Ep, over: Record<string, unknown> = {}): Promise<void> {
  await endpoints.put(e.key, record(e, over));
}

/** An endpoint that is never registered, for broken entries. */
function unregistered(ws: number, low: number, node: string, ifname: string): Ep {
  const rand = Buffer.alloc(8);
  rand.writeUInt32BE(process.pid, 0);
  rand.writeUInt32BE(low, 4);
  const addr = makeEndpointAddress(ws, REGION_ID, new Uint8Array(rand));
  const address = formatAddress(addr);
  return {
    key: `${workspaceIdHex(ws)}.${endpointIdOf(addr)}`,
    address,
    ws,
    node,
    ifname,
    i6pn: true,
    record: {
      v: 1,
      address,
      workspace: 'one',
      workspaceId: ws,
      region: REGION,
      regionId: REGION_ID,
      node,
      ifname,
      i6pn: true,
      createdAt: new Date().toISOString(),
    },
  };
}

// Local endpoints on n1 (containers a, b: workspace one; e: workspace two; d comes later), remote ones on n2.
let A: Ep, B: Ep, C: Ep, E: Ep;

async function scrape(): Promise<{ text: string; samples: Sample[]; types: Map<string, string> }> {
  const res = await fetch(`${env.metricsUrl}/metrics`, { signal: AbortSignal.timeout(5000) });
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  const text = await res.text();
  return { text, ...parseMetrics(text) };
}

async function ready(): Promise<boolean> {
  try {
    return (await fetch(`${env.metricsUrl}/readyz`, { signal: AbortSignal.timeout(5000) })).status === 200;
  } catch {
    return false;
  }
}

function startAgent(over: Record<string, string> = {}): AgentProcess {
  agent = env.startAgent(env.agentArgs(`nats://[${env.natsAddr}]:${nats.port}`, over));
  return agent;
}

async function stopAgent(signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const a = agent!;
  agent = null;
  a.kill(signal);
  return a.exited;
}

/** The store's endpoints of the region: address → expected map value. */
async function storeView(): Promise<Map<string, { local: boolean; i6pn: boolean; workspace: number }>> {
  const out = new Map<string, { local: boolean; i6pn: boolean; workspace: number }>();
  for await (const k of await endpoints.keys()) {
    const e = await endpoints.get(k);
    if (!e || e.operation !== 'PUT') continue;
    const v = validateEndpointEntry(`${REGION}.${k}`, e.value);
    // Invalid entries are not expected in the map.
    if (v.ok && v.record.regionId === REGION_ID) out.set(v.record.address, { local: v.record.node === NODE, i6pn: v.record.i6pn, workspace: v.record.workspaceId });
  }
  return out;
}

test.before(async () => {
  await env.create();
  nats = await startNats({ host: '::' });
  nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  await i6pnctl(['region', 'add', REGION, '--id', String(REGION_ID)]);
  for (const w of ['one', 'two']) workspaceIds.set(w, (JSON.parse(await i6pnctl(['workspace', 'create', '--json', w])) as { id: number }).id);
  const kvm = new Kvm(jetstream(nc));
  // The region's bucket (i6pnctl creates it with the region; created here too, so the test does not depend on when).
  endpoints = await kvm.create(endpointsBucket(REGION), { history: ENDPOINTS_HISTORY });
  nodes = await kvm.open('i6pn_nodes');
  // Containers whose veth exists before their entry (their address comes with it).
  await env.addContainer('a', 'ep-a');
  await env.addContainer('b', 'ep-b');
  await env.addContainer('e', 'ep-e');
});

test.after.always(async () => {
  if (agent) await stopAgent('SIGKILL');
  await nc?.close().catch(() => {});
  await env.destroy();
  await nats?.destroy();
});

test.serial('--help documents every flag with its variable; invalid flags fail with exit 2 naming flag and variable', async (t) => {
  const run = (args: string[], extraEnv: Record<string, string> = {}) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, ['--import=tsx', 'agent/main.ts', ...args], { cwd: REPO_ROOT, env: { ...process.env, ...extraEnv } }, (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
  const help = await run(['--help']);
  t.is(help.code, 0);
  const flat = help.stdout.replace(/\s+/g, ' ');
  for (const [flag, variable] of [
    ['--nats', 'I6PN_NATS_URL'],
    ['--creds', 'I6PN_NATS_CREDS'],
    ['--node', 'I6PN_NODE'],
    ['--region', 'I6PN_REGION'],
    ['--uplink', 'I6PN_UPLINK'],
    ['--bpffs', 'I6PN_BPFFS'],
    ['--metrics-addr', 'I6PN_METRICS_ADDR'],
    ['--mode', 'I6PN_MODE'],
    ['--max-endpoints', 'I6PN_MAX_ENDPOINTS'],
    ['--max-local-ifaces', 'I6PN_MAX_LOCAL_IFACES'],
    ['--object', 'I6PN_OBJECT'],
  ]) {
    t.regex(flat, new RegExp(`${flag} <[^>]+> .*?env: ${variable}\\)`), `${flag} documented with ${variable}`);
  }
  t.regex(flat, /--forward-non-private \[bool\] [^-]*non-private.*?never to the node itself[^-]*\(default: "false", env: I6PN_FORWARD_NON_PRIVATE\)/);
  t.regex(flat, /--max-local-ifaces <n> [^-]*a pinned map keeps its size[^-]*\(default: "4096"/);
  t.regex(flat, /--metrics-addr <host:port> [^(]*\(default: "127\.0\.0\.1:9465"/, 'metrics listen on loopback unless told otherwise');
  t.regex(flat, /teardown/);
  // The DaemonSet's `[$(POD_IP)]:9465` whichever family the pod's address is.
  t.deepEqual(parseHostPort('[10.1.2.3]:9465'), { host: '10.1.2.3', port: 9465 });
  t.deepEqual(parseHostPort('[fd00::1]:9465'), { host: 'fd00::1', port: 9465 });

  const bad = await run(['--node', 'Not_A_Node', '--mode', 'sometimes', '--metrics-addr', 'nowhere', '--forward-non-private', 'perhaps'], {
    I6PN_MAX_ENDPOINTS: '0',
    I6PN_MAX_LOCAL_IFACES: '2.5',
  });
  t.is(bad.code, 2, bad.stderr);
  t.regex(bad.stderr, /--nats \(I6PN_NATS_URL\): is required/);
  t.regex(bad.stderr, /--node \(I6PN_NODE\): invalid node name "Not_A_Node"/);
  t.regex(bad.stderr, /--region \(I6PN_REGION\): is required/);
  t.regex(bad.stderr, /--mode \(I6PN_MODE\): must be enforce or monitor/);
  t.regex(bad.stderr, /--metrics-addr \(I6PN_METRICS_ADDR\): expected HOST:PORT/);
  t.regex(bad.stderr, /--max-endpoints \(I6PN_MAX_ENDPOINTS\): must be at least 1/);
  t.regex(bad.stderr, /--max-local-ifaces \(I6PN_MAX_LOCAL_IFACES\): must be an integer/);
  t.regex(bad.stderr, /--forward-non-private \(I6PN_FORWARD_NON_PRIVATE\): must be true or false/);
  const noBpffs = await run(['--nats', 'nats://127.0.0.1:1', '--node', 'n1', '--region', 'ams', '--uplink', 'eth0', '--bpffs', '/tmp/not-bpffs']);
  t.is(noBpffs.code, 2);
  t.regex(noBpffs.stderr, /--bpffs \(I6PN_BPFFS\): is not on a bpf filesystem/);
  // The environment alone is enough.
  const envOnly = await run(['--help'], { I6PN_MODE: 'monitor' });
  t.regex(envOnly.stdout.replace(/\s+/g, ' '), /--mode <mode>/);
});

test.serial('entries appear in the maps, updates replace, deletes remove; invalid entries are counted and absent', async (t) => {
  A = await register('one', NODE, 'ep-a');
  B = await register('one', NODE, 'ep-b');
  C = await register('one', 'n2', 'ep-c');
  E = await register('two', NODE, 'ep-e');
  await env.setAddress('a', A.address);
  await env.setAddress('b', B.address);
  await env.setAddress('e', E.address);
  startAgent();
  await eventually(ready, '/readyz 200', 20_000);
  await agent!.waitLog((l) => l.msg === 'initial sync done');

  // The uplink carries from_fabric (XDP) and to_fabric (TC egress), and the config names it: the one way in for remote sources.
  t.is(await env.xdpProgram(), 'from_fabric');
  t.deepEqual(await env.tcPrograms(env.uplink), { ingress: null, egress: 'to_fabric' });
  t.deepEqual(readPinnedConfig(env.bpffs), { uplinkIfindex: (await env.ifindex(env.uplink))!, forwardNonPrivate: false });

  const a = readPinnedEndpoint(env.bpffs, A.address);
  t.deepEqual(a, { workspace: workspaceIds.get('one'), region: REGION_ID, i6pn: true, local: true, node: nodeId(NODE), ifindex: (await env.ifindex('ep-a'))! });
  t.deepEqual(readPinnedEndpoint(env.bpffs, C.address), { workspace: workspaceIds.get('one'), region: REGION_ID, i6pn: true, local: false, node: nodeId('n2'), ifindex: 0 });
  t.is(readPinnedEndpoint(env.bpffs, E.address)?.workspace, workspaceIds.get('two'));

  // An update replaces the value.
  await put(C, { i6pn: false });
  await eventually(() => readPinnedEndpoint(env.bpffs, C.address)?.i6pn === false, 'C without i6pn');
  t.false(readPinnedEndpoint(env.bpffs, C.address)!.local);
  // A delete removes it; so does a purge.
  await unregister(C);
  await eventually(() => readPinnedEndpoint(env.bpffs, C.address) === null, 'C deleted');
  const F = await register('one', 'n2', 'ep-f');
  await eventually(() => readPinnedEndpoint(env.bpffs, F.address) !== null, 'F applied');
  await endpoints.purge(F.key);
  await eventually(() => readPinnedEndpoint(env.bpffs, F.address) === null, 'F purged');

  // Invalid entries: never applied, counted by reason, the agent keeps running.
  const before = (await scrape()).samples;
  const W1 = workspaceIds.get('one')!;
  const bad1 = unregistered(W1, 0x101, NODE, 'ep-x1');
  const bad2 = unregistered(W1, 0x102, 'n2', 'ep-x2');
  const bad3 = unregistered(W1, 0x103, 'n2', 'ep-x3');
  const bad4 = unregistered(W1, 0x104, 'n2', 'ep-x4');
  await endpoints.put(bad1.key, '{not json');
  await endpoints.put(bad2.key, record(bad2, { i6pn: 'yes' }));
  await endpoints.put(bad3.key, record(bad3, { regionId: REGION_ID + 1 })); // address bits disagree with the record
  await endpoints.put(`${workspaceIdHex(workspaceIds.get('two')!)}.${bad4.key.split('.')[1]}`, record(bad4)); // key names another workspace
  // A valid entry written after them proves they were all processed.
  const G = await register('one', 'n2', 'ep-g');
  await eventually(() => readPinnedEndpoint(env.bpffs, G.address) !== null, 'G applied after the invalid ones');
  const after = (await scrape()).samples;
  const delta = (name: string, labels: Record<string, string>) => metricValue(after, name, labels) - metricValue(before, name, labels);
  t.is(delta('i6pn_membership_rejected_total', { reason: 'json' }), 1);
  t.is(delta('i6pn_membership_rejected_total', { reason: 'schema' }), 1);
  t.is(delta('i6pn_membership_rejected_total', { reason: 'address' }), 1);
  t.is(delta('i6pn_membership_rejected_total', { reason: 'key' }), 1);
  t.is(delta('i6pn_membership_updates_total', { result: 'rejected' }), 4);
  t.is(delta('i6pn_membership_updates_total', { result: 'applied' }), 1);
  for (const x of [bad2, bad3, bad4]) t.is(readPinnedEndpoint(env.bpffs, x.address), null, `${x.address} absent`);
  t.is(agent!.proc.exitCode, null, 'the agent keeps running');
  t.true(agent!.logs.some((l) => l.msg === 'invalid endpoint entry rejected' && l.reason === 'key'));

  // An entry that turns invalid loses its place (the store no longer vouches for it).
  await endpoints.put(G.key, record(G, { ifname: 'bad/name' }));
  await eventually(() => readPinnedEndpoint(env.bpffs, G.address) === null, 'G removed when its entry turned invalid');
  await endpoints.delete(G.key);

  // The map equals the store.
  const view = await storeView();
  const map = readPinnedEndpoints(env.bpffs);
  t.deepEqual([...map.keys()].sort(), [...view.keys()].sort());

  // The node registered itself, with a heartbeat.
  const n = (await eventually(async () => (await nodes.get(NODE))?.json<{ region: string; version: string; heartbeatAt: string }>(), 'node record'))!;
  t.is(n.region, REGION);
  t.regex(n.version, /^\d+\.\d+\.\d+/);
  const hb1 = n.heartbeatAt;
  await eventually(async () => (await nodes.get(NODE))?.json<{ heartbeatAt: string }>().heartbeatAt !== hb1, 'heartbeat moves', 5000);
});

test.serial('local endpoints: a veth before or after its entry ends bound with local_ifaces and a /128; removal seals the veth until it is gone; a reused name binds only a new veth', async (t) => {
  // Before: ep-a existed when A was written.
  const ia = (await env.ifindex('ep-a'))!;
  t.deepEqual(await env.tcPrograms('ep-a'), { ingress: 'from_endpoint', egress: 'to_endpoint' });
  t.deepEqual(readPinnedLocalIfaces(env.bpffs).get(ia), { address: A.address, i6pn: true, sealed: false });
  t.is((await env.routes()).get(A.address), 'ep-a');

  // After: D's entry first, then the runtime makes the veth.
  const D = await register('one', NODE, 'ep-d');
  await eventually(() => readPinnedEndpoint(env.bpffs, D.address) !== null, 'D in the map');
  t.is(readPinnedEndpoint(env.bpffs, D.address)!.ifindex, 0, 'no veth yet: ifindex 0');
  t.false((await env.routes()).has(D.address));
  await env.addContainer('d', D.ifname);
  await env.setAddress('d', D.address);
  const id = (await env.ifindex('ep-d'))!;
  await eventually(async () => (await env.tcPrograms('ep-d')).ingress === 'from_endpoint', 'TC on ep-d');
  t.deepEqual(await env.tcPrograms('ep-d'), { ingress: 'from_endpoint', egress: 'to_endpoint' });
  await eventually(() => readPinnedLocalIfaces(env.bpffs).get(id)?.address === D.address, 'local_ifaces entry of ep-d');
  await eventually(async () => (await env.routes()).get(D.address) === 'ep-d', 'route to D');
  await eventually(() => readPinnedEndpoint(env.bpffs, D.address)?.ifindex === id, 'D carries the ifindex');
  t.true((await env.ping('a', D.address)).ok, 'A reaches D');

  const before = (await scrape()).samples;
  const delta = (after: Sample[], name: string, labels: Record<string, string> = {}) => metricValue(after, name, labels) - metricValue(before, name, labels);

  // The endpoint goes while its container runs: the veth keeps both hooks and is sealed with D's address; the route goes.
  await unregister(D);
  await eventually(() => readPinnedLocalIfaces(env.bpffs).get(id)?.sealed === true, 'ep-d sealed');
  t.deepEqual(readPinnedLocalIfaces(env.bpffs).get(id), { address: D.address, i6pn: true, sealed: true });
  t.deepEqual(await env.tcPrograms('ep-d'), { ingress: 'from_endpoint', egress: 'to_endpoint' }, 'revocation keeps the hooks');
  await eventually(async () => !(await env.routes()).has(D.address), 'route removed');
  t.is(readPinnedEndpoint(env.bpffs, D.address), null);
  t.is(await env.ifindex('ep-d'), id, 'the veth is still there');
  t.false((await env.ping('a', D.address)).ok, 'D unreachable');
  t.false((await env.ping('d', A.address)).ok, 'D reaches nobody');
  const sealedLog = await agent!.waitLog((l) => typeof l.msg === 'string' && l.msg.startsWith('sealed endpoint veth') && l.address === D.address);
  t.is(sealedLog.reason, 'revoked');
  const s1 = (await scrape()).samples;
  t.is(delta(s1, 'i6pn_veths_sealed_total', { reason: 'revoked' }), 1);
  t.is(metricValue(s1, 'i6pn_veths', { state: 'sealed' }), 1);

  // A new endpoint of another workspace registered with the veth's name while the old container runs: refused, the veth stays sealed.
  const D2 = await register('two', NODE, 'ep-d');
  await env.setAddress('d', D2.address);
  const refused = await agent!.waitLog((l) => typeof l.msg === 'string' && l.msg.startsWith('refused a local endpoint entry') && l.address === D2.address);
  t.is(refused.level, 'error');
  t.is(refused.reason, 'bound_to_other');
  t.is(refused.ifname, 'ep-d');
  t.deepEqual(readPinnedLocalIfaces(env.bpffs).get(id), { address: D.address, i6pn: true, sealed: true }, 'still sealed with the old address');
  t.deepEqual(await env.tcPrograms('ep-d'), { ingress: 'from_endpoint', egress: 'to_endpoint' });
  t.is(readPinnedEndpoint(env.bpffs, D2.address)!.ifindex, 0, 'D2 is not bound to the old veth');
  t.false((await env.routes()).has(D2.address));
  t.false((await env.ping('e', D2.address)).ok, 'the old container gets nothing of the new identity');
  const s2 = (await scrape()).samples;
  t.is(delta(s2, 'i6pn_endpoint_refused_total', { reason: 'bound_to_other' }), 1);
  t.is(metricValue(s2, 'i6pn_unhooked_endpoints'), 1, 'D2 names a veth that exists but is not bound to it');

  // The old container goes (the runtime deletes the veth): the sealed entry goes with it; a new veth of that name is D2's.
  await env.removeContainer('d');
  await eventually(() => !readPinnedLocalIfaces(env.bpffs).has(id), 'local_ifaces entry of the gone veth removed');
  await env.addContainer('d', 'ep-d');
  await env.setAddress('d', D2.address);
  const id2 = (await env.ifindex('ep-d'))!;
  t.not(id2, id, 'a new veth');
  await eventually(() => readPinnedLocalIfaces(env.bpffs).get(id2)?.address === D2.address, 'D2 bound to the new veth');
  t.deepEqual(readPinnedLocalIfaces(env.bpffs).get(id2), { address: D2.address, i6pn: true, sealed: false });
  await eventually(async () => (await env.routes()).get(D2.address) === 'ep-d', 'route to D2');
  await eventually(() => readPinnedEndpoint(env.bpffs, D2.address)?.ifindex === id2, 'D2 carries the new ifindex');
  t.true((await env.ping('e', D2.address)).ok, 'E reaches D2 (same workspace)');
  await eventually(async () => metricValue((await scrape()).samples, 'i6pn_unhooked_endpoints') === 0, 'nothing unhooked');

  // The container goes while its entry stays: the entry of the gone veth goes, the ifindex in the value is back to 0.
  await env.removeContainer('d');
  await eventually(() => !readPinnedLocalIfaces(env.bpffs).has(id2), 'local_ifaces entry of the gone veth removed');
  await eventually(() => readPinnedEndpoint(env.bpffs, D2.address)?.ifindex === 0, 'D2 ifindex back to 0');
  t.true(readPinnedEndpoint(env.bpffs, D2.address)!.local);
  await unregister(D2);
  await eventually(async () => metricValue((await scrape()).samples, 'i6pn_veths', { state: 'sealed' }) === 0, 'no sealed veth left');
});

test.serial('/metrics is exactly the catalogue, passes promtool, and counts real packets', async (t) => {
  const catalogue = JSON.parse(readFileSync(join(REPO_ROOT, 'deploy', 'metrics.json'), 'utf8')) as {
    metrics: Array<{ name: string; type: string; labels?: Record<string, string[] | null> }>;
    defaultMetrics: { metrics: Array<{ name: string; type: string }> };
  };
  const { text, samples, types } = await scrape();

  // promtool accepts the exposition.
  const promtool = await promtoolCheckMetrics(text);
  t.is(promtool.code, 0, promtool.out);

  // Exactly the catalogue's names and types (the defaults minus the _total gauges promtool rejects).
  const expected = new Map<string, string>([
    ...catalogue.metrics.map((m) => [m.name, m.type] as [string, string]),
    ...catalogue.defaultMetrics.metrics.filter((m) => !(OMITTED_DEFAULT_METRICS as readonly string[]).includes(m.name)).map((m) => [m.name, m.type] as [string, string]),
  ]);
  t.deepEqual(Object.fromEntries([...types].sort()), Object.fromEntries([...expected].sort()));
  t.deepEqual([...METRIC_NAMES].sort(), catalogue.metrics.map((m) => m.name).sort());

  // Every listed label value exists from the start, and no other.
  for (const m of catalogue.metrics) {
    for (const [label, values] of Object.entries(m.labels ?? {})) {
      // A histogram's series carry suffixes; another metric may share the name as a prefix (i6pn_veths, i6pn_veths_sealed_total).
      const seen = new Set(samples.filter((s) => ['', '_bucket', '_sum', '_count'].some((x) => s.name === `${m.name}${x}`)).map((s) => s.labels[label]));
      if (values && m.name !== 'i6pn_agent_info') t.deepEqual([...seen].sort(), [...values].sort(), `${m.name} ${label}`);
    }
  }
  t.is(metricValue(samples, 'i6pn_agent_info', { node: NODE, region: REGION, mode: 'enforce' }), 1);
  t.is(metricValue(samples, 'i6pn_nats_connected'), 1);
  t.is(metricValue(samples, 'i6pn_attached_hooks', { hook: 'from_fabric' }), 1);
  t.is(metricValue(samples, 'i6pn_attached_hooks', { hook: 'from_endpoint' }), 3); // ep-a, ep-b, ep-e
  t.is(metricValue(samples, 'i6pn_endpoints', { scope: 'local' }), 3);
  t.is(metricValue(samples, 'i6pn_endpoints', { scope: 'region' }), 3);
  t.is(metricValue(samples, 'i6pn_map_entries', { map: 'endpoints' }), 3);
  t.is(metricValue(samples, 'i6pn_map_capacity', { map: 'endpoints' }), 65536);
  t.is(metricValue(samples, 'i6pn_map_capacity', { map: 'local_ifaces' }), 4096);
  t.true(metricValue(samples, 'i6pn_membership_last_revision') > 0);
  t.true(metricValue(samples, 'i6pn_membership_apply_latency_seconds_count') > 0);
  t.true(metricValue(samples, 'i6pn_heartbeat_last_success_timestamp_seconds') > Date.now() / 1000 - 60);

  // Real packets: A → B is private traffic that passes; A → E crosses workspaces and is dropped.
  const pass = (s: Sample[], hook: string) => metricValue(s, 'i6pn_packets_total', { hook, verdict: 'pass', reason: 'pass_private' });
  const drop = (s: Sample[]) => metricValue(s, 'i6pn_packets_total', { hook: 'from_endpoint', verdict: 'drop', reason: 'cross_workspace' });
  const bytes = (s: Sample[]) => metricValue(s, 'i6pn_bytes_total', { hook: 'from_endpoint', verdict: 'pass', reason: 'pass_private' });
  // The drop is published on the node's events subject, resolved against the membership.
  const events = nc.subscribe(eventsSubject(REGION, NODE));
  const published = (async () => {
    for await (const m of events) {
      const d = decodeDropEvent(m.data);
      if (!d.ok) throw new Error(`invalid event ${m.string()}: ${d.message}`);
      if (d.record.dst?.address === E.address) return d.record;
    }
    return null;
  })();
  t.true((await env.ping('a', B.address, { count: 3 })).ok, 'A reaches B');
  t.false((await env.ping('a', E.address)).ok, 'A does not reach E');
  const s2 = (await scrape()).samples;
  t.true(pass(s2, 'from_endpoint') - pass(samples, 'from_endpoint') >= 6, 'from_endpoint passes: 3 requests + 3 replies');
  t.true(pass(s2, 'to_endpoint') - pass(samples, 'to_endpoint') >= 6);
  t.true(bytes(s2) - bytes(samples) >= 6 * 104, 'bytes count whole packets');
  t.is(drop(s2) - drop(samples), 1);
  await eventually(async () => metricValue((await scrape()).samples, 'i6pn_drop_events_total') >= 1, 'a sampled drop event');
  const event = await Promise.race([published, new Promise<null>((r) => setTimeout(() => r(null), 10_000))]);
  events.unsubscribe();
  t.like(event, {
    node: NODE,
    region: REGION,
    hook: 'from_endpoint',
    verdict: 'drop',
    reason: 'cross_workspace',
    wouldDrop: false,
    proto: 'icmpv6',
    icmpType: 128,
    icmpCode: 0,
    src: { address: A.address, workspaceId: A.ws, regionId: REGION_ID, endpoint: `${REGION}.${A.key}`, i6pn: true, local: true, ifname: 'ep-a' },
    dst: { address: E.address, workspaceId: E.ws, regionId: REGION_ID, endpoint: `${REGION}.${E.key}`, i6pn: true, local: true, ifname: 'ep-e' },
  });
  t.true(Math.abs(Date.parse(event!.time) - Date.now()) < 30_000, `event time ${event?.time}`);
  const s3 = (await scrape()).samples;
  t.true(metricValue(s3, 'i6pn_drop_events_published_total') >= 1);
  t.is(metricValue(s3, 'i6pn_drop_events_unpublished_total', { cause: 'invalid' }), 0);
  // Every drop is an event or counted as not sampled (the budget is far from reached here).
  t.is(metricValue(s3, 'i6pn_drop_events_suppressed_total', { cause: 'budget' }), 0);
});

/** The agent's error line refusing the entry of that address. */
function refusal(address: string): Promise<Record<string, unknown>> {
  return agent!.waitLog((l) => typeof l.msg === 'string' && l.msg.startsWith('refused a local endpoint entry') && l.address === address);
}

test.serial('entries naming the uplink or an interface that is not a veth are refused, logged and counted; the rest of the node keeps working', async (t) => {
  const before = (await scrape()).samples;
  const uplinkIfindex = (await env.ifindex(env.uplink))!;
  const U = await register('one', NODE, env.uplink);
  await sh(['ip', '-n', env.nodeNs, 'link', 'add', 'br0', 'type', 'bridge']);
  await sh(['ip', '-n', env.nodeNs, 'link', 'set', 'br0', 'up']);
  t.teardown(() => sh(['ip', '-n', env.nodeNs, 'link', 'del', 'br0'], { allowFail: true }).then(() => {}));
  const N = await register('one', NODE, 'br0');

  const u = await refusal(U.address);
  t.is(u.level, 'error');
  t.like(u, { reason: 'uplink', ifname: env.uplink, ifindex: uplinkIfindex });
  t.like(await refusal(N.address), { level: 'error', reason: 'not_veth', ifname: 'br0' });
  const after = (await scrape()).samples;
  const delta = (name: string, labels: Record<string, string> = {}) => metricValue(after, name, labels) - metricValue(before, name, labels);
  t.is(delta('i6pn_endpoint_refused_total', { reason: 'uplink' }), 1);
  t.is(delta('i6pn_endpoint_refused_total', { reason: 'not_veth' }), 1);
  t.is(metricValue(after, 'i6pn_unhooked_endpoints'), 2);

  // Never applied: the uplink keeps from_fabric and to_fabric only; no entry, no route, no hooks anywhere for them.
  t.is(await env.xdpProgram(), 'from_fabric');
  t.deepEqual(await env.tcPrograms(env.uplink), { ingress: null, egress: 'to_fabric' });
  t.deepEqual(await env.tcPrograms('br0'), { ingress: null, egress: null });
  const ifaces = readPinnedLocalIfaces(env.bpffs);
  t.false(ifaces.has(uplinkIfindex));
  t.false(ifaces.has((await env.ifindex('br0'))!));
  const routes = await env.routes();
  t.false(routes.has(U.address));
  t.false(routes.has(N.address));
  t.is(readPinnedEndpoint(env.bpffs, U.address)!.ifindex, 0);
  t.is(readPinnedConfig(env.bpffs).uplinkIfindex, uplinkIfindex);
  // The node keeps working.
  t.true((await env.ping('a', B.address, { count: 2 })).ok, 'A still reaches B');
  t.is(metricValue(after, 'i6pn_attached_hooks', { hook: 'from_endpoint' }), 3);

  await unregister(U);
  await unregister(N);
  await eventually(async () => metricValue((await scrape()).samples, 'i6pn_unhooked_endpoints') === 0, 'refused entries gone');
});

test.serial('two entries naming one veth seal it, with no winner; a sealed veth stays sealed for its own endpoint', async (t) => {
  const before = (await scrape()).samples;
  await env.addContainer('h', 'ep-h');
  const H1 = await register('one', NODE, 'ep-h');
  await env.setAddress('h', H1.address);
  const ih = (await env.ifindex('ep-h'))!;
  await eventually(async () => (await env.routes()).get(H1.address) === 'ep-h', 'H1 bound and routed');
  t.true((await env.ping('h', A.address)).ok, 'H1 reaches A while bound');

  // i6pnctl refuses a second endpoint on a used interface name: a raw write is what gets past it.
  const H2 = unregistered(workspaceIds.get('two')!, 0x301, NODE, 'ep-h');
  H2.record['workspace'] = 'two';
  await endpoints.put(H2.key, record(H2));
  await eventually(() => readPinnedLocalIfaces(env.bpffs).get(ih)?.sealed === true, 'ep-h sealed');
  t.deepEqual(readPinnedLocalIfaces(env.bpffs).get(ih), { address: H1.address, i6pn: true, sealed: true });
  t.deepEqual(await env.tcPrograms('ep-h'), { ingress: 'from_endpoint', egress: 'to_endpoint' });
  t.like(await refusal(H1.address), { reason: 'duplicate_ifname', ifname: 'ep-h' });
  t.like(await refusal(H2.address), { reason: 'duplicate_ifname', ifname: 'ep-h' });
  await eventually(async () => !(await env.routes()).has(H1.address), 'H1 route removed');
  t.false((await env.routes()).has(H2.address));
  t.false((await env.ping('h', A.address)).ok, 'the sealed veth reaches nobody');
  t.false((await env.ping('a', H1.address)).ok, 'nothing reaches the sealed veth');
  const s1 = (await scrape()).samples;
  t.is(metricValue(s1, 'i6pn_veths_sealed_total', { reason: 'duplicate_ifname' }) - metricValue(before, 'i6pn_veths_sealed_total', { reason: 'duplicate_ifname' }), 1);
  t.is(metricValue(s1, 'i6pn_endpoint_refused_total', { reason: 'duplicate_ifname' }) - metricValue(before, 'i6pn_endpoint_refused_total', { reason: 'duplicate_ifname' }), 2);
  t.is(metricValue(s1, 'i6pn_veths', { state: 'sealed' }), 1);
  t.is(metricValue(s1, 'i6pn_unhooked_endpoints'), 2);

  // The duplicate goes: no winner after the fact either; H1 stays off its sealed veth.
  await endpoints.delete(H2.key);
  t.like(await agent!.waitLog((l) => l.address === H1.address && l.reason === 'sealed'), { level: 'error', ifname: 'ep-h' });
  t.deepEqual(readPinnedLocalIfaces(env.bpffs).get(ih), { address: H1.address, i6pn: true, sealed: true });
  t.false((await env.routes()).has(H1.address));
  t.false((await env.ping('h', A.address)).ok, 'still sealed');
  // H1 and its sealed veth stay for the restart test.
  sealedH = { ep: H1, ifindex: ih };
});

let sealedH: { ep: Ep; ifindex: number } | null = null;

test.serial('SIGKILL: the dataplane keeps enforcing; a restarted agent adopts it without a gap and sweeps what was deleted meanwhile', async (t) => {
  const F = await register('one', 'n2', 'ep-f2');
  await eventually(() => readPinnedEndpoint(env.bpffs, F.address) !== null, 'F applied');
  const progBefore = await env.tcPrograms('ep-a');

  // A continuous ping A → B across the kill and the restart.
  const pinging = env.ping('a', B.address, { count: 80, interval: 0.05, wait: 1 });
  await new Promise((r) => setTimeout(r, 300));
  const exit = await stopAgent('SIGKILL');
  t.is(exit.signal, 'SIGKILL');

  // Agent down: hooks, maps, routes and the XDP link stay; the policy still holds.
  t.deepEqual(await env.tcPrograms('ep-a'), progBefore);
  t.is(await env.xdpProgram(), 'from_fabric');
  t.truthy(readPinnedEndpoint(env.bpffs, A.address));
  t.is((await env.routes()).get(A.address), 'ep-a');
  t.false((await env.ping('a', E.address)).ok, 'still enforcing with no agent');
  // A delete the dead agent misses entirely: the key's messages, delete marker included, are gone from the stream.
  const jsm = await jetstreamManager(nc);
  await unregister(F);
  await jsm.streams.purge(`KV_${endpointsBucket(REGION)}`, { filter: `$KV.${endpointsBucket(REGION)}.${F.key}` });
  t.truthy(readPinnedEndpoint(env.bpffs, F.address), 'frozen, not opened or cleared');
  // What an agent that trusted an entry's ifname left: the uplink in local_ifaces. The next one must not adopt it.
  const uplinkIfindex = (await env.ifindex(env.uplink))!;
  writePinnedLocalIface(env.bpffs, uplinkIfindex, C.address);

  startAgent();
  await eventually(ready, '/readyz after restart', 20_000);
  // The new agent resumes after the revision the pinned maps reflect (it does not read the region again);
  // the delete lost from the stream is swept by the reconcile that follows a resume.
  await agent!.waitLog((l) => l.msg === 'the pinned maps reflect this stream: resuming after their revision', 20_000);
  await eventually(() => readPinnedEndpoint(env.bpffs, F.address) === null, 'F swept by the new agent', 30_000);
  t.true(agent!.logs.some((l) => l.msg === 'adopted local interfaces from the pinned map'));
  const { out } = await pinging;
  t.regex(out, / 0% packet loss/, `no gap:\n${out}`);
  t.deepEqual(await env.tcPrograms('ep-a'), { ingress: 'from_endpoint', egress: 'to_endpoint' });
  t.is(await env.xdpProgram(), 'from_fabric');
  t.false(readPinnedLocalIfaces(env.bpffs).has(uplinkIfindex), 'the uplink entry is removed, not adopted');
  t.true(agent!.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('removed a pinned local_ifaces entry') && l.ifname === env.uplink));
  t.deepEqual(await env.tcPrograms(env.uplink), { ingress: null, egress: 'to_fabric' });
  t.is(readPinnedConfig(env.bpffs).uplinkIfindex, uplinkIfindex);
  const { samples } = await scrape();
  t.is(metricValue(samples, 'i6pn_reconcile_removed_total'), 1);
  t.is(metricValue(samples, 'i6pn_membership_starts_total', { from: 'revision' }), 1);
  t.is(metricValue(samples, 'i6pn_membership_starts_total', { from: 'snapshot' }), 0);
  t.is(metricValue(samples, 'i6pn_attached_hooks', { hook: 'to_endpoint' }), 4, 'ep-a, ep-b, ep-e and the sealed ep-h');

  // The sealed veth was adopted sealed, kept its hooks, and its own endpoint is still refused.
  const h = sealedH!;
  t.true(agent!.logs.some((l) => l.msg === 'adopted local interfaces from the pinned map' && l.sealed === 1));
  t.deepEqual(readPinnedLocalIfaces(env.bpffs).get(h.ifindex), { address: h.ep.address, i6pn: true, sealed: true });
  t.deepEqual(await env.tcPrograms('ep-h'), { ingress: 'from_endpoint', egress: 'to_endpoint' });
  t.like(await agent!.waitLog((l) => l.address === h.ep.address && l.reason === 'sealed'), { level: 'error' });
  t.false((await env.routes()).has(h.ep.address));
  t.false((await env.ping('h', A.address)).ok, 'still sealed after the restart');
  t.is(metricValue(samples, 'i6pn_veths', { state: 'sealed' }), 1);
  await unregister(h.ep);
  await env.removeContainer('h');
  await eventually(() => !readPinnedLocalIfaces(env.bpffs).has(h.ifindex), 'the sealed entry goes with its veth');
  await eventually(async () => metricValue((await scrape()).samples, 'i6pn_attached_hooks', { hook: 'to_endpoint' }) === 3, 'three veths hooked');
});

test.serial('NATS outage: the dataplane stays frozen, and the agent catches up when the store is back', async (t) => {
  await env.blockNats(true);
  t.teardown(() => env.blockNats(false).catch(() => {}));
  t.log('blocked');
  await nats.stop();
  t.log('nats stopped');
  await eventually(async () => metricValue((await scrape()).samples, 'i6pn_nats_connected') === 0, 'disconnected', 10_000);
  t.truthy(readPinnedEndpoint(env.bpffs, B.address), 'maps unchanged while the store is gone');
  await nats.start();
  t.log('nats started');
  // Changes the agent cannot see yet: one delete, one update, two new entries.
  await eventually(async () => {
    await unregister(E);
    return true;
  }, 'store writable again', 30_000, 500);
  // The test's own connection may still be reconnecting: retry the raw write.
  await eventually(async () => {
    await put(B, { i6pn: false });
    return true;
  }, 'raw write after the restart', 30_000, 500);
  const C2 = await register('one', 'n2', 'ep-c2');
  const G = await register('two', 'n2', 'ep-g2');
  t.log('store changed');
  t.truthy(readPinnedEndpoint(env.bpffs, E.address), 'the agent has not seen the changes');

  await env.blockNats(false);
  await eventually(async () => metricValue((await scrape()).samples, 'i6pn_nats_connected') === 1, 'reconnected', 15_000);
  const view = await storeView();
  await eventually(() => {
    const map = readPinnedEndpoints(env.bpffs);
    return map.size === view.size && [...view].every(([addr, v]) => map.get(addr)?.i6pn === v.i6pn && map.get(addr)?.local === v.local);
  }, 'maps equal the store', 15_000);
  t.is(readPinnedEndpoint(env.bpffs, E.address), null);
  t.false(readPinnedEndpoint(env.bpffs, B.address)!.i6pn);
  t.truthy(readPinnedEndpoint(env.bpffs, G.address));
  t.truthy(readPinnedEndpoint(env.bpffs, C2.address));
  // E's container still runs: its veth keeps both hooks, sealed with E's old address, and reaches nobody.
  const ie = (await env.ifindex('ep-e'))!;
  await eventually(() => readPinnedLocalIfaces(env.bpffs).get(ie)?.sealed === true, 'ep-e sealed');
  t.deepEqual(readPinnedLocalIfaces(env.bpffs).get(ie), { address: E.address, i6pn: true, sealed: true });
  t.deepEqual(await env.tcPrograms('ep-e'), { ingress: 'from_endpoint', egress: 'to_endpoint' });
  await put(B);
  // A new E gets a new container (a new veth of the same name): the old one is never re-bound.
  await env.removeContainer('e');
  await eventually(() => !readPinnedLocalIfaces(env.bpffs).has(ie), 'the sealed entry goes with its veth');
  E = await register('two', NODE, 'ep-e');
  await env.addContainer('e', 'ep-e');
  await env.setAddress('e', E.address);
  await eventually(() => readPinnedEndpoint(env.bpffs, B.address)?.i6pn === true && readPinnedEndpoint(env.bpffs, E.address) !== null, 'B and E back');
  const ie2 = (await env.ifindex('ep-e'))!;
  await eventually(() => readPinnedLocalIfaces(env.bpffs).get(ie2)?.address === E.address, 'E bound to its new veth');
  await eventually(async () => (await env.tcPrograms('ep-e')).ingress === 'from_endpoint', 'E attached again');
});

test.serial('monitor mode: forbidden packets are delivered and counted as would_drop', async (t) => {
  const exit = await stopAgent('SIGTERM');
  t.is(exit.code, 0, 'SIGTERM exits cleanly');
  t.is(await env.xdpProgram(), 'from_fabric', 'SIGTERM leaves the dataplane attached');
  t.false((await env.ping('a', E.address)).ok, 'enforcing while no agent runs');

  startAgent({ '--mode': 'monitor' });
  await eventually(ready, '/readyz in monitor mode', 20_000);
  const before = (await scrape()).samples;
  t.is(metricValue(before, 'i6pn_agent_info', { mode: 'monitor' }), 1);
  const wouldDrop = (s: Sample[]) => metricValue(s, 'i6pn_packets_total', { hook: 'from_endpoint', verdict: 'would_drop', reason: 'cross_workspace' });
  const dropped = (s: Sample[]) => metricValue(s, 'i6pn_packets_total', { hook: 'from_endpoint', verdict: 'drop', reason: 'cross_workspace' });
  t.true((await env.ping('a', E.address, { count: 2 })).ok, 'A reaches E in monitor mode');
  const after = (await scrape()).samples;
  t.true(wouldDrop(after) - wouldDrop(before) >= 2);
  t.is(dropped(after) - dropped(before), 0);
});

test.serial('a full endpoints map: logged, counted, nothing evicted; the endpoint gets in once there is room', async (t) => {
  // More endpoints than the small map will hold.
  for (let i = 0; i < 4; i++) {
    const e = unregistered(workspaceIds.get('one')!, 0x200 + i, 'n2', `extra${i}`);
    await endpoints.put(e.key, record(e));
  }
  // A second agent on this node with a tiny map, as node "n9" (no local endpoints) on an uplink of its own.
  await sh(['ip', '-n', env.nodeNs, 'link', 'add', 'up1', 'type', 'veth', 'peer', 'name', 'up1peer']);
  await sh(['ip', '-n', env.nodeNs, 'link', 'set', 'up1', 'up']);
  const bpffs = `${env.bpffs}-small`;
  const small = env.startAgent(
    env.agentArgs(`nats://[${env.natsAddr}]:${nats.port}`, {
      '--node': 'n9',
      '--uplink': 'up1',
      '--bpffs': bpffs,
      '--max-endpoints': '4',
      '--metrics-addr': `[${env.mgmtNodeAddr}]:9466`,
      '--reconcile-interval': '2',
    }),
  );
  t.teardown(async () => {
    small.kill('SIGKILL');
    await small.exited;
    await sh(inNs(env.nodeNs, [process.execPath, '--import=tsx', join(REPO_ROOT, 'agent', 'main.ts'), 'teardown', '--bpffs', bpffs]), { allowFail: true });
  });
  const smallScrape = async () => parseMetrics(await (await fetch(`http://[${env.mgmtNodeAddr}]:9466/metrics`, { signal: AbortSignal.timeout(5000) })).text()).samples;
  await small.waitLog((l) => l.msg === 'initial sync done', 60_000);
  const full = await small.waitLog((l) => typeof l.msg === 'string' && l.msg.startsWith('endpoints map is full'));
  t.is(full.level, 'error');
  const s = await eventually(smallScrape, 'metrics of the small agent');
  const view = await storeView();
  t.true(view.size > 4);
  t.is(metricValue(s, 'i6pn_map_capacity', { map: 'endpoints' }), 4);
  t.true(metricValue(s, 'i6pn_map_full_total') >= view.size - 4);
  t.true(metricValue(s, 'i6pn_membership_updates_total', { result: 'failed' }) >= view.size - 4);
  const inMap = readPinnedEndpoints(bpffs);
  t.is(inMap.size, 4, 'full, nothing evicted');
  for (const a of inMap.keys()) t.true(view.has(a));
  // The first four stay through the next reconciles (a refused endpoint never displaces one).
  const before = [...inMap.keys()].sort();
  await small.waitLog((l) => l.msg === 'reconciled the endpoints map with the store', 20_000);
  t.deepEqual([...readPinnedEndpoints(bpffs).keys()].sort(), before);
  // Room appears: one of the four leaves the store; a refused endpoint takes its place at the next reconcile.
  const gone = before[0]!;
  const addr = parseAddress(gone);
  await endpoints.delete(`${workspaceIdHex(new DataView(addr.buffer).getUint32(2))}.${endpointIdOf(addr)}`);
  await eventually(() => {
    const m = readPinnedEndpoints(bpffs);
    return m.size === 4 && !m.has(gone);
  }, 'a refused endpoint takes the freed slot', 20_000);
});

test.serial('more local endpoints than local_ifaces slots: the extra veth keeps its hooks without an entry, reaches nobody, and is counted', async (t) => {
  // A second node of its own (namespace, uplink, containers), whose agent has two local_ifaces slots for three veths.
  const envF = new AgentEnv('f');
  t.teardown(() => envF.destroy());
  await envF.create();
  const eps: Array<{ name: string; ep: Ep }> = [];
  t.teardown(async () => {
    for (const { ep } of eps) await unregister(ep).catch(() => {});
  });
  for (const name of ['1', '2', '3']) {
    await envF.addContainer(name, `fp-${name}`);
    const ep = await register('one', 'nf', `fp-${name}`);
    await envF.setAddress(name, ep.address);
    eps.push({ name, ep });
  }
  const small = envF.startAgent(envF.agentArgs(`nats://[${envF.natsAddr}]:${nats.port}`, { '--node': 'nf', '--max-local-ifaces': '2' }));
  await small.waitLog((l) => l.msg === 'initial sync done', 60_000);
  const full = await small.waitLog((l) => typeof l.msg === 'string' && l.msg.startsWith('local_ifaces is full'));
  t.is(full.level, 'error');
  const scrapeF = async () => parseMetrics(await (await fetch(`${envF.metricsUrl}/metrics`, { signal: AbortSignal.timeout(5000) })).text()).samples;
  for (const { ep } of eps) await eventually(async () => (await envF.tcPrograms(ep.ifname)).egress === 'to_endpoint', `hooks on ${ep.ifname}`);

  const ifaces = readPinnedLocalIfaces(envF.bpffs);
  t.is(ifaces.size, 2, 'the map is full');
  const bound = eps.filter(({ ep }) => [...ifaces.values()].some((v) => v.address === ep.address && !v.sealed));
  const left = eps.filter((x) => !bound.includes(x));
  t.is(bound.length, 2);
  t.is(left.length, 1);
  const x = left[0]!;
  t.false(ifaces.has((await envF.ifindex(x.ep.ifname))!), 'no entry for the extra veth');
  t.deepEqual(await envF.tcPrograms(x.ep.ifname), { ingress: 'from_endpoint', egress: 'to_endpoint' }, 'the extra veth has the hooks all the same');
  await eventually(async () => (await envF.routes()).size === 2, 'the two bound endpoints routed');
  t.false((await envF.routes()).has(x.ep.address), 'no route to the extra veth');
  const s = (await eventually(async () => {
    const m = await scrapeF();
    return metricValue(m, 'i6pn_unhooked_endpoints') === 1 ? m : undefined;
  }, 'one endpoint unhooked'))!;
  t.is(metricValue(s, 'i6pn_veths', { state: 'bound' }), 2);
  t.is(metricValue(s, 'i6pn_veths', { state: 'unbound' }), 1);
  t.is(metricValue(s, 'i6pn_map_capacity', { map: 'local_ifaces' }), 2);
  t.is(metricValue(s, 'i6pn_map_entries', { map: 'local_ifaces' }), 2);
  t.true(metricValue(s, 'i6pn_map_full_total') >= 1);
  t.is(metricValue(s, 'i6pn_attached_hooks', { hook: 'from_endpoint' }), 3);
  // The bound two reach each other; the extra one reaches nobody and nothing reaches it.
  t.true((await envF.ping(bound[0]!.name, bound[1]!.ep.address)).ok, 'bound endpoints reach each other');
  t.false((await envF.ping(x.name, bound[0]!.ep.address)).ok, 'the unhooked veth reaches nobody');
  t.false((await envF.ping(bound[0]!.name, x.ep.address)).ok, 'nothing reaches the unhooked veth');

  // Room appears (a bound container goes with its veth): the extra veth is bound at the next converge.
  await envF.removeContainer(bound[0]!.name);
  const ix = (await envF.ifindex(x.ep.ifname))!;
  await eventually(() => readPinnedLocalIfaces(envF.bpffs).get(ix)?.address === x.ep.address, 'the extra veth bound once there is room', 20_000);
  await eventually(async () => (await envF.routes()).get(x.ep.address) === x.ep.ifname, 'and routed');
  // Its container's neighbour entry for the node went FAILED while it reached nobody; the kernel probes again after a while.
  await eventually(async () => (await envF.ping(x.name, bound[1]!.ep.address)).ok, 'it reaches its workspace now', 15_000);
  await eventually(async () => metricValue(await scrapeF(), 'i6pn_unhooked_endpoints') === 0, 'nothing unhooked');
  for (const { ep } of eps.splice(0)) await unregister(ep);

  // Teardown --all-interfaces frees a veth hooked without an entry too (local_ifaces does not name it).
  await envF.addContainer('4', 'fp-4');
  const e4 = await register('one', 'nf', 'fp-4');
  eps.push({ name: '4', ep: e4 });
  await eventually(async () => (await envF.tcPrograms('fp-4')).egress === 'to_endpoint', 'hooks on fp-4');
  small.kill('SIGTERM');
  await small.exited;
  const r = await sh(inNs(envF.nodeNs, [process.execPath, '--import=tsx', join(REPO_ROOT, 'agent', 'main.ts'), 'teardown', '--all-interfaces', '--bpffs', envF.bpffs]), { allowFail: true });
  t.is(r.code, 0, r.stderr);
  for (const dev of [x.ep.ifname, bound[1]!.ep.ifname, 'fp-4']) t.deepEqual(await envF.tcPrograms(dev), { ingress: null, egress: null }, dev);
  t.deepEqual(await envF.tcPrograms(envF.uplink), { ingress: null, egress: null });
});

test.serial('a large backlog is applied in batches while the agent keeps answering, and equals the store', async (t) => {
  await stopAgent('SIGTERM');
  const N = 40_000;
  const js = jetstream(nc);
  const W1 = workspaceIds.get('one')!;
  let inflight: Promise<unknown>[] = [];
  for (let i = 0; i < N; i++) {
    const e = unregistered(W1, 0x100000 + i, 'n2', `bulk${i}`);
    inflight.push(js.publish(`$KV.${endpointsBucket(REGION)}.${e.key}`, record(e)));
    if (inflight.length >= 1000) {
      await Promise.all(inflight);
      inflight = [];
    }
  }
  await Promise.all(inflight);
  startAgent();
  // While it reads the snapshot, /healthz answers promptly: the event loop is not held.
  // The agent resumes after its pinned revision: what it reads is the N entries written since.
  const reading = await agent!.waitLog((l) => l.msg === 'following the endpoint updates', 30_000);
  t.true(Number(reading.pending) >= N);
  const t0 = Date.now();
  let done = false;
  void agent!.waitLog((l) => l.msg === 'initial sync done', 60_000).then(() => (done = true));
  let slowest = 0;
  let probes = 0;
  while (!done && Date.now() - t0 < 60_000) {
    const p0 = Date.now();
    const r = await fetch(`${env.metricsUrl}/healthz`, { signal: AbortSignal.timeout(5000) });
    t.is(r.status, 200);
    probes++;
    slowest = Math.max(slowest, Date.now() - p0);
    await new Promise((r) => setTimeout(r, 10));
  }
  t.true(done, 'initial sync done');
  t.log(`${N} entries applied in ${Date.now() - t0} ms; ${probes} /healthz probes meanwhile, slowest ${slowest} ms`);
  t.true(probes >= 3);
  // The agent gives the event loop a turn every 10 ms of work; the bound leaves room for a loaded machine
  // (a busy CI host delays the whole process), not for a loop held through the snapshot.
  t.true(slowest < 3000, `slowest /healthz ${slowest} ms`);
  await eventually(ready, '/readyz', 10_000);
  const view = await storeView();
  const map = readPinnedEndpoints(env.bpffs);
  t.is(map.size, view.size);
  t.true(map.size >= N);
  const { samples } = await scrape();
  t.is(metricValue(samples, 'i6pn_map_entries', { map: 'endpoints' }), view.size);
  t.is(metricValue(samples, 'i6pn_endpoints', { scope: 'region' }), view.size);
});

test.serial('--uplink-hook auto on a veth uplink: from_fabric moves to TC ingress and the XDP link goes; xdp brings it back', async (t) => {
  await stopAgent('SIGTERM');
  t.is(await env.xdpProgram(), 'from_fabric', 'the previous run (--uplink-hook xdp) left the XDP link');
  startAgent({ '--uplink-hook': 'auto' });
  await eventually(ready, '/readyz', 20_000);
  const log = await agent!.waitLog((l) => typeof l.msg === 'string' && l.msg.startsWith('from_fabric ('));
  t.regex(String(log.msg), /TC ingress: the uplink is a veth/);
  await eventually(async () => (await env.xdpProgram()) === null, 'the XDP link removed', 10_000);
  t.deepEqual(await env.tcPrograms(env.uplink), { ingress: 'from_fabric_tc', egress: 'to_fabric' });
  t.deepEqual(readPinnedConfig(env.bpffs), { uplinkIfindex: (await env.ifindex(env.uplink))!, forwardNonPrivate: false });
  await stopAgent('SIGTERM');
  t.deepEqual(await env.tcPrograms(env.uplink), { ingress: 'from_fabric_tc', egress: 'to_fabric' }, 'it stays when the agent stops');
  startAgent({ '--uplink-hook': 'xdp' });
  await eventually(ready, '/readyz', 20_000);
  await eventually(async () => (await env.xdpProgram()) === 'from_fabric', 'the XDP link back', 10_000);
  t.deepEqual(await env.tcPrograms(env.uplink), { ingress: null, egress: 'to_fabric' });
});

test.serial('teardown removes every pin, hook and route', async (t) => {
  await stopAgent('SIGTERM');
  const r = await sh(inNs(env.nodeNs, [process.execPath, '--import=tsx', join(REPO_ROOT, 'agent', 'main.ts'), 'teardown', '--bpffs', env.bpffs]), { allowFail: true });
  t.is(r.code, 0, r.stderr);
  t.false(existsSync(env.bpffs));
  for (const dev of ['ep-a', 'ep-b', 'ep-e']) t.deepEqual(await env.tcPrograms(dev), { ingress: null, egress: null }, dev);
  t.is(await env.xdpProgram(), null);
  t.deepEqual([...(await env.routes()).keys()], []);
  const protoRoutes = await sh(['ip', '-n', env.nodeNs, '-6', 'route', 'show', 'proto', '105']);
  t.is(protoRoutes.stdout.trim(), '');
  // Without the dataplane, nothing stops cross-workspace traffic any more — which is why teardown is explicit.
  // (No route to E any more either: delivery is not asserted, only that nothing of i6pn is left.)
  const again = await sh(inNs(env.nodeNs, [process.execPath, '--import=tsx', join(REPO_ROOT, 'agent', 'main.ts'), 'teardown', '--bpffs', env.bpffs]), { allowFail: true });
  t.is(again.code, 0, 'teardown is idempotent');
});
