/**
 * `make demo`: builds the two-region fabric, NATS, the provisioning, the
 * dataplane on every node, Prometheus, then runs the isolation matrix and
 * prints it, with where to look next. Leaves everything running until
 * `make demo-down`. Driven by test/fabric/demo.sh.
 *
 *   node --import=tsx test/fabric/demo.ts up [--dataplane agent|static|none] [--mode enforce|monitor]
 *   node --import=tsx test/fabric/demo.ts down
 *   node --import=tsx test/fabric/demo.ts netns NAME     (prints the namespace of a node or container)
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, type DataplaneKind, type EnforcementMode, REPO_ROOT } from './cluster.js';
import { type Counters, delta, snapshot } from './counters.js';
import { run } from './exec.js';
import { renderMatrix, runMatrix } from './matrix.js';
import { modelOracle } from './policy.js';
import { ping } from './probes.js';
import { sleep } from './exec.js';
import { decodeDropEvent, type DropEventRecord } from '../../lib/events.js';
import { eventLine } from '../../controller/observe.js';
import { STATE_ROOT, destroyRunSync, leftoverRuns, readRunState } from './state.js';
import { HTTP_PORT, OTHER_PORT, pageSha256, peer, servePeer, tcpProbe, tunnelTopology, url } from './tunnels.js';

const DEMO_FILE = join(STATE_ROOT, 'demo');
const t0 = Date.now();
let stepNo = 0;
let STEPS = 9;

function say(msg: string): void {
  process.stdout.write(`${msg}\n`);
}

function step(title: string): void {
  stepNo += 1;
  say(`[${String(stepNo).padStart(2)}/${STEPS}] ${title}  (+${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

function currentDemo(): string | undefined {
  try {
    return readFileSync(DEMO_FILE, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** What can run on this checkout: the agent needs the controller to provision it. */
function availableDataplane(): DataplaneKind {
  const agent = existsSync(join(REPO_ROOT, 'agent/main.ts'));
  const ctl = existsSync(join(REPO_ROOT, 'controller/cli.ts'));
  return agent && ctl ? 'agent' : 'static';
}

function down(): void {
  const ids = new Set(leftoverRuns(true));
  const demo = currentDemo();
  if (demo) ids.add(demo);
  for (const id of ids) {
    say(`removing fabric ${id}`);
    destroyRunSync(id);
  }
  rmSync(DEMO_FILE, { force: true });
  say(ids.size ? 'demo: down' : 'demo: nothing to remove');
}

function countersTable(moved: Map<string, number>): string {
  const rows = [...moved].filter(([k]) => /\/(drop|would_drop)\//.test(k)).sort(([a], [b]) => a.localeCompare(b));
  if (rows.length === 0) return '  (no drops counted)';
  return rows.map(([k, n]) => `  ${k.padEnd(52)} ${String(n).padStart(6)}`).join('\n');
}

async function up(dataplane: DataplaneKind, mode: EnforcementMode): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root (namespaces, BPF and bpffs need it)');
  const old = currentDemo();
  if (old && readRunState(old)) {
    say(`a demo is already running (fabric ${old}); replacing it`);
    destroyRunSync(old);
  }
  rmSync(DEMO_FILE, { force: true });
  STEPS = dataplane === 'agent' ? 13 : dataplane === 'static' ? 8 : 7;
  // Ctrl-C while building: the fabric's own handler removes what exists and exits;
  // before there is a fabric, this one exits.
  const onInterrupt = (): void => {
    process.stderr.write(`\ndemo: interrupted${stepNo ? ` at step ${stepNo}` : ''}; removing what was built\n`);
    setImmediate(() => process.exit(130));
  };
  process.once('SIGINT', onInterrupt);
  process.once('SIGTERM', onInterrupt);
  step(`checking the machine: Linux ${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}, dataplane: ${dataplane}, mode: ${mode}`);
  if (dataplane === 'static') say('        (no agent: the harness loads the BPF programs and fills their maps itself)');
  // `make demo` builds first: run the built agent and i6pnctl, as an operator would.
  const built = existsSync(join(REPO_ROOT, 'dist/agent/main.js')) && existsSync(join(REPO_ROOT, 'dist/controller/cli.js'));
  const withGateway = dataplane === 'agent';
  const cluster = await Cluster.up({ dataplane, mode, nats: true, step, binaries: built ? 'dist' : 'source', ...(withGateway ? { topology: tunnelTopology } : {}) });
  writeFileSync(DEMO_FILE, cluster.fabric.runId + '\n');
  const nodes = [...cluster.fabric.nodes.keys()];

  // An endpoint removed from the store while its container runs: its veth stays, sealed.
  let matrixEndpoints = cluster.endpoints;
  let oracle = cluster.oracle;
  if (dataplane === 'agent') {
    step('revoking r1 (acme, ams-1): removed from the store while its container runs; its veth stays, sealed');
    await cluster.addEndpoint({ name: 'r1', workspace: 'acme', node: 'ams-1', i6pn: true });
    await cluster.revoke('r1');
    matrixEndpoints = [...cluster.endpoints, cluster.fabric.endpoint('r1')];
    oracle = modelOracle(matrixEndpoints, new Set(['r1']));
  }
  step(`isolation matrix: ${matrixEndpoints.length * (matrixEndpoints.length - 1)} ordered pairs × ICMPv6, TCP, UDP`);
  const matrixStart = new Date();
  const before = await snapshot(nodes, cluster.counters);
  const result = await runMatrix(matrixEndpoints, cluster.daemons, {
    oracle,
    expect: mode === 'enforce' && dataplane !== 'none' ? 'policy' : 'all',
  });
  const after = await snapshot(nodes, cluster.counters);
  await Promise.all([...cluster.daemons.values()].map((d) => d.stop()));
  cluster.daemons.clear();
  const events = dataplane === 'agent' ? await dropEvents(cluster, matrixStart) : null;

  const f = cluster.fabric;
  const tunnelLines = withGateway ? await tunnelDemo(cluster) : [];
  say('');
  say(renderMatrix(result, { title: `Who reaches whom (rows: from, columns: to; ${mode} mode, policy model as the expectation):` }));
  say('');
  say('Dataplane counters moved by the matrix (node/hook/verdict/reason, packets):');
  say(countersTable(delta(before, after) as Map<string, number>));
  say('');
  if (events) await showEvents(cluster, events, matrixStart);
  if (cluster.ctl) {
    say(`Provisioned with i6pnctl (${cluster.ctl.history.length} commands), e.g.:`);
    for (const h of cluster.ctl.history.filter((x, i, a) => i === 0 || x.split(' ')[1] !== a[i - 1]!.split(' ')[1] || x.includes('--no-i6pn')).slice(0, 6)) {
      say(`  ${h} --nats ${cluster.nats?.url ?? ''}`);
    }
    say('');
  }
  if (dataplane === 'agent') await discovery(cluster);
  for (const l of tunnelLines) say(l);
  say('Endpoints:');
  for (const e of matrixEndpoints) {
    const note = cluster.deregistered.has(e.name) ? '  (removed from the store, container running: veth sealed)' : e.i6pn ? '' : '  (no i6pn)';
    say(`  ${e.name.padEnd(4)} ${e.address.padEnd(40)} ${e.workspace.padEnd(8)} ${e.node.padEnd(6)} ${e.ifname}${note}`);
  }
  say('');
  say(`Explore (fabric ${f.runId}, state in ${f.record.dir}):`);
  say(`  make demo-shell NODE=${nodes[0]}          a shell in a node (or NODE=a1 for a container)`);
  say(`  ip netns exec ${f.node(nodes[0]!).netns} ip -6 route`);
  say(`  ip netns exec ${cluster.fabric.endpoint('a1').netns} ping -6 -c1 ${cluster.fabric.endpoint('a3').address}`);
  if (dataplane === 'agent') say(`  ip netns exec ${cluster.fabric.endpoint('a1').netns} getent ahosts i6pn.local    (names: ip netns exec applies the container's resolv.conf)`);
  if (cluster.nats) say(`  NATS:        ${cluster.nats.url}`);
  if (dataplane === 'agent' && cluster.ctl) {
    for (const n of nodes) say(`  metrics:     ${cluster.metricsUrl(n)}   (${n})`);
    say(`  agent logs:  ${join(f.record.dir, 'logs', 'agent-<node>.log')}`);
    say(`  i6pnctl:     ${cluster.ctl.commandLine(['endpoint', 'list'])}`);
    say(`  drops, live: ${cluster.ctl.commandLine(['observe'])}        (Ctrl-C to stop; --json, --workspace, --reason, --from, ...)`);
    say(`  why:         ${cluster.ctl.commandLine(['explain', 'ams-1/ep-a1', 'ams-2/ep-g2'])}`);
  }
  if (cluster.prometheus) say(`  Prometheus:  ${cluster.prometheus.url}/graph?g0.expr=${encodeURIComponent('sum by (node, reason) (i6pn_packets_total{verdict="drop"})')}`);
  say(`  logs:        ${join(f.record.dir, 'logs')}`);
  say(`  make demo-down                  removes everything`);
  f.detach();
  process.off('SIGINT', onInterrupt);
  process.off('SIGTERM', onInterrupt);
  if (result.unexpected.length > 0) {
    throw new Error(`${result.unexpected.length} matrix cells are not what the policy expects (marked !)`);
  }
}

/** The matrix's drop events, as `i6pnctl observe --since <its start> --json` prints them. */
async function dropEvents(cluster: Cluster, since: Date): Promise<DropEventRecord[]> {
  await sleep(1000); // the agents publish as they read: within milliseconds
  const out = await cluster.ctl!.text(['observe', '--since', since.toISOString(), '--json']);
  return out.stdout.split('\n').filter((l) => l).map((l) => {
    const d = decodeDropEvent(l);
    if (!d.ok) throw new Error(`observe printed an invalid event: ${d.message}`);
    return d.record;
  });
}

/**
 * A few of the matrix's drop events (one per node, hook and reason), the
 * command that shows them live, and a cross-workspace probe appearing in a
 * live `i6pnctl observe` while it is sent; then explain on that pair.
 */
async function showEvents(cluster: Cluster, events: DropEventRecord[], since: Date): Promise<void> {
  const ctl = cluster.ctl!;
  const seen = new Set<string>();
  const few = events.filter((e) => {
    const k = `${e.node}/${e.hook}/${e.reason}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
  say(`Drop events the agents published during the matrix: ${events.length}; one per node, hook and reason (${ctl.commandLine(['observe', '--since', since.toISOString()])}):`);
  for (const e of few.slice(0, 8)) say(`  ${eventLine(e)}`);
  say('');

  const a1 = cluster.fabric.endpoint('a1');
  const g1 = cluster.fabric.endpoint('g1');
  const args = ['observe', '--from', `${a1.node}/${a1.ifname}`, '--to', `${g1.node}/${g1.ifname}`];
  say(`A cross-workspace probe, a1 (acme) → g1 (globex), seen live by \`${ctl.commandLine(args)}\`:`);
  const observer = ctl.start(args);
  let line = '';
  observer.stdout!.on('data', (d: Buffer) => (line ||= d.toString().split('\n')[0]!));
  const deadline = Date.now() + 20_000;
  // observe takes a moment to subscribe: ping until a drop shows.
  while (!line && Date.now() < deadline) {
    const r = await ping(a1, g1.address, 1);
    if (r.delivered) throw new Error('a1 reached g1 across workspaces');
  }
  observer.kill('SIGINT');
  if (!line) throw new Error('the cross-workspace probe never appeared in i6pnctl observe');
  say(`  $ ip netns exec ${a1.netns} ping -6 -c1 ${g1.address}     # 100% packet loss`);
  say(`  ${line}`);
  say('');
  const why = await ctl.text(['explain', `${a1.node}/${a1.ifname}`, `${g1.node}/${g1.ifname}`]);
  say(`Before sending anything, i6pnctl explain says the same (exit ${why.code}):`);
  for (const l of why.stdout.trimEnd().split('\n')) say(`  ${l}`);
}

/**
 * Discovery: a name and a named cluster provisioned with i6pnctl, then
 * resolved inside containers as their libc does (`ip netns exec` applies the
 * resolv.conf the runtime wrote: the node resolver, fdaa::53).
 */
async function discovery(cluster: Cluster): Promise<void> {
  const ctl = cluster.ctl!;
  const ep = (n: string) => cluster.fabric.endpoint(n);
  step('discovery: a2 named web, a named cluster "trainer" of acme; resolved in the containers by their node\'s resolver');
  await ctl.run(['endpoint', 'rename', ep('a2').address, 'web']);
  await ctl.run(['cluster', 'create', '--workspace', 'acme', '--region', 'ams', '--size', '3', '--nodes', 'ams-1,ams-2', '--name', 'trainer']);
  const inside = async (c: string, argv: string[]): Promise<string> => {
    const r = await run(['ip', 'netns', 'exec', ep(c).netns, ...argv], { allowFail: true });
    return (r.stdout + r.stderr).trim();
  };
  // The agents apply the store within a second: wait for the last write to answer.
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && !(await inside('a1', ['dig', '+short', '2.trainer.cluster.i6pn.local', 'AAAA'])).startsWith('fdaa:')) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const show = async (c: string, what: string, argv: string[]): Promise<void> => {
    const out = await inside(c, argv);
    say(`  ${c} (${ep(c).workspace}, ${ep(c).node}) ${what}:`);
    say(`    $ ip netns exec ${ep(c).netns} ${argv.join(' ')}`);
    for (const l of (out || '(nothing: exit status not 0)').split('\n')) say(`    ${l}`);
  };
  say('');
  say('Discovery (the container\'s /etc/resolv.conf, as its runtime wrote it: nameserver fdaa::53):');
  await show('a1', 'resolves itself', ['getent', 'ahosts', 'i6pn.local']);
  await show('a1', 'resolves its peer a2 by name', ['getent', 'ahosts', 'web.i6pn.local']);
  await show('a3', 'resolves its cluster, members in rank order', ['dig', '+short', 'trainer.cluster.i6pn.local', 'AAAA']);
  await show('a3', 'reads the ranks', ['dig', '+short', 'trainer.cluster.i6pn.local', 'TXT']);
  await show('a1', 'resolves the member of rank 1', ['dig', '+short', '1.trainer.cluster.i6pn.local', 'AAAA']);
  await show('g1', 'cannot resolve acme\'s name (another workspace: NXDOMAIN, as for a name nobody has)', ['getent', 'ahosts', 'web.i6pn.local']);
  const status = (await inside('g1', ['dig', 'web.i6pn.local', 'AAAA'])).match(/status: [A-Z]+/)?.[0] ?? '?';
  say(`    dig web.i6pn.local from g1: ${status}`);
  say('');
}

/**
 * The one way in: a gateway on ams-gw, a tunnel to a1's HTTP server, the page
 * fetched from the internet namespace, and the walls around it. Returns the
 * lines to print.
 */
async function tunnelDemo(c: Cluster): Promise<string[]> {
  step('tunnel gateway gw1 on ams-gw (i6pnctl gateway add; its namespace: i6pn veth, underlay, public link to the internet namespace)');
  const gw = await c.addGateway('gw1', 'ams-gw');
  const a1 = c.fabric.endpoint('a1');
  const a2 = c.fabric.endpoint('a2');
  await servePeer(c, 'a1');
  step(`tunnel to a1's HTTP server (port ${HTTP_PORT}); fetching a page from the internet namespace, then the walls`);
  const t0 = Date.now();
  const tunnel = await c.ctl!.tunnelCreate(a1.address, HTTP_PORT, { wait: 10 });
  const port = tunnel.public[0]!.port;
  const page = JSON.parse(await peer(c.fabric.internetNetns, 'http', url('http', gw.publicAddress, port))) as { status: number; length: number; sha256: string };
  const fetchedMs = Date.now() - t0;
  const exact = page.sha256 === pageSha256();
  const inet = c.fabric.internetNetns;
  const walls: Array<[string, string, string]> = [
    [`the same container's other port (${OTHER_PORT}): no public port`, await tcpProbe(inet, gw.publicAddress, OTHER_PORT), 'refused'],
    [`another container (a2): no public port (${HTTP_PORT})`, await tcpProbe(inet, gw.publicAddress, HTTP_PORT), 'refused'],
    [`a1's private address directly, port ${HTTP_PORT}`, await tcpProbe(inet, a1.address, HTTP_PORT), 'timeout'],
    [`a2's private address directly, port ${HTTP_PORT}`, await tcpProbe(inet, a2.address, HTTP_PORT), 'timeout'],
    [`from the gateway's own address, a1 port ${OTHER_PORT}`, await tcpProbe(gw.netns, a1.address, OTHER_PORT), 'timeout'],
  ];
  const lines = [
    `Tunnel ${tunnel.id}: a1 [${a1.address}]:${HTTP_PORT}  ->  public [${gw.publicAddress}]:${port} at gateway ${gw.address}`,
    `  from the internet namespace: GET ${url('http', gw.publicAddress, port)} -> ${page.status}, ${page.length} bytes, ${exact ? 'byte for byte the page a1 serves' : 'NOT the page a1 serves'} (${fetchedMs} ms after \`i6pnctl tunnel create --wait\` started, a process of its own)`,
    ...walls.map(([what, got, want]) => `  ${got === want ? 'unreachable' : 'REACHED'}: ${what} (${got})`),
    `  (timeouts are drops: the internet routes fdaa::/16 to the gateway; the gateway node's dataplane drops them as "outside",`,
    `   and the gateway's own probe as "not_tunneled": ${c.metricsUrl('ams-gw')})`,
    `  i6pnctl tunnel list --nats ${c.nats!.url}`,
    `  make demo-shell NODE=inet     a shell on the internet: curl -g 'http://[${gw.publicAddress}]:${port}/page' | head -c 64`,
    '',
  ];
  const bad = walls.filter(([, got, want]) => got !== want);
  if (!exact || page.status !== 200 || bad.length) throw new Error(`the tunnel demo failed: ${[...lines].join('\n')}`);
  return lines;
}

function usage(): never {
  process.stderr.write('usage: demo.ts up [--dataplane agent|static|none] [--mode enforce|monitor] | down | netns NAME\n');
  process.exit(2);
}

const [cmd, ...rest] = process.argv.slice(2);
try {
  if (cmd === 'up') {
    let dataplane = availableDataplane();
    let mode: EnforcementMode = 'enforce';
    for (let i = 0; i < rest.length; i += 2) {
      const v = rest[i + 1];
      if (rest[i] === '--dataplane' && (v === 'agent' || v === 'static' || v === 'none')) dataplane = v;
      else if (rest[i] === '--mode' && (v === 'enforce' || v === 'monitor')) mode = v;
      else usage();
    }
    await up(dataplane, mode);
    say(`demo: up in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } else if (cmd === 'down') {
    down();
  } else if (cmd === 'netns' && rest[0]) {
    const id = currentDemo();
    if (!id) throw new Error('no demo is running (make demo)');
    const s = readRunState(id);
    const name = rest[0];
    const ns = [`i6pn-${id}-${name}`, `i6pn-${id}-c-${name}`, `i6pn-${id}-gw-${name}`].find((n) => s?.netns.includes(n));
    if (!ns) throw new Error(`no node or container ${name} in the demo; nodes: ${(s?.info['nodes'] as Array<{ name: string }> | undefined)?.map((n) => n.name).join(', ')}`);
    say(ns);
  } else usage();
} catch (err) {
  process.stderr.write(`\ndemo: FAILED${stepNo ? ` at step ${stepNo}` : ''}: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
