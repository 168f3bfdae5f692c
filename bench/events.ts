/**
 * `make bench-events`: what drop events cost and how fast they arrive.
 *
 *  - The agent's CPU per thousand events a second: a container floods a
 *    destination of another workspace at a paced rate (UDP from Python); its
 *    veth's from_endpoint drops each packet and, with --events-per-sec high
 *    enough to sample every one, writes an event; the agent (dist/agent/
 *    main.js) reads, resolves and publishes each on NATS, where the
 *    I6PN_EVENTS stream keeps it. CPU time of the agent and of nats-server
 *    (/proc/<pid>/stat) over each rate's window, against the same window
 *    with no traffic.
 *  - From the drop to the printed line: `i6pnctl observe --to <address>`
 *    (the built CLI, live) runs while the container sends one datagram at a
 *    time to that address, each from its own source port; the time from
 *    the send (CLOCK_MONOTONIC in the container's Python) to the line
 *    naming that port on observe's stdout (CLOCK_MONOTONIC here), alone and
 *    beside a flood to another destination.
 *
 * Everything but the container runs in a namespace of its own
 * (i6b<pid>-events: nats-server on loopback, the agent on a veth uplink),
 * the container in i6b<pid>-c1, joined by the endpoint's veth.
 */
import { type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { natsServerBin } from '../test/helpers/nats-server-bin.js';
import { freePort, startNats } from '../test/helpers/nats.js';
import { addEndpoint } from '../controller/store/endpoints.js';
import { addRegion } from '../controller/store/regions.js';
import { connectStore } from '../lib/store.js';
import { createWorkspace } from '../controller/store/workspaces.js';
import { PREFIX, addNs, addVeth, benchMain, cpuSeconds, nsSh, onCleanup, rerunInside, sh, spawnIn, sweepStale } from './lib/netns.js';
import { sleep } from '../test/fabric/exec.js';
import { REPO_DIR, log, median, percentile, printTable, saveSection, secondsSince, type Table } from './lib/results.js';

const AGENT = join(REPO_DIR, 'dist/agent/main.js');
const CLI = join(REPO_DIR, 'dist/controller/cli.js');
const RATES = (process.env.I6PN_BENCH_EVENT_RATES ?? '1000,4000,16000').split(',').map(Number);
const SECONDS = Number(process.env.I6PN_BENCH_EVENT_SECONDS ?? 10);
const PROBES = Number(process.env.I6PN_BENCH_EVENT_PROBES ?? 300);
const LOAD_RATE = Number(process.env.I6PN_BENCH_EVENT_LOAD ?? 4000);
const REGION = 'bench';
const NODE = 'n1';
/** The container's namespace, made by outside() (whose PREFIX it carries). */
const CONTAINER = process.env.I6PN_BENCH_CONTAINER ?? `${PREFIX}-c1`;

/** UDP to argv[1] at argv[2] datagrams a second for argv[3] seconds, paced each millisecond; prints how many. */
const FLOOD = `import socket, sys, time
dst, rate, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
n = 0; t0 = time.monotonic(); end = t0 + secs
while True:
    now = time.monotonic()
    if now >= end: break
    due = int((now - t0) * rate)
    while n < due:
        s.sendto(b"x" * 16, (dst, 9)); n += 1
    time.sleep(0.0005)
print(n)`;

/** argv[2] datagrams to argv[1], one every argv[3] seconds, source port 20000 + i; prints "<port> <CLOCK_MONOTONIC ns>" after each send. */
const PROBE = `import socket, sys, time
dst, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for i in range(count):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::", 20000 + i))
    t = time.monotonic_ns()
    s.sendto(b"p", (dst, 9))
    s.close()
    print(20000 + i, t, flush=True)
    time.sleep(gap)`;

function metric(port: number, series: string): Promise<number> {
  return fetch(`http://127.0.0.1:${port}/metrics`)
    .then((r) => r.text())
    .then((t) => Number(t.split('\n').find((l) => l.startsWith(`${series} `))?.slice(series.length + 1) ?? NaN));
}

interface RateResult {
  rate: number;
  sent: number;
  published: number;
  /** Events a second the ring buffer had no room for (the agent did not read fast enough). */
  ringFull: number;
  agentCpu: number;
  serverCpu: number;
}

interface LatencyResult {
  load: string;
  probes: number;
  seen: number;
  p50: number;
  p99: number;
  max: number;
}

/** The agent's and the server's CPU over one window with the container sending at `rate`. */
async function window(agentPid: number, serverPid: number, metricsPort: number, dst: string, rate: number): Promise<RateResult> {
  const a0 = cpuSeconds(agentPid);
  const s0 = cpuSeconds(serverPid);
  const p0 = await metric(metricsPort, 'i6pn_drop_events_published_total');
  const f0 = await metric(metricsPort, 'i6pn_drop_events_suppressed_total{cause="ring_full"}');
  const t0 = process.hrtime.bigint();
  const sent = rate > 0 ? Number(nsSh(CONTAINER, ['python3', '-c', FLOOD, dst, String(rate), String(SECONDS)]).trim()) : (await sleep(SECONDS * 1000), 0);
  await sleep(300); // what was read last is published
  const seconds = secondsSince(t0);
  const r = {
    rate,
    sent,
    published: ((await metric(metricsPort, 'i6pn_drop_events_published_total')) - p0) / seconds,
    ringFull: ((await metric(metricsPort, 'i6pn_drop_events_suppressed_total{cause="ring_full"}')) - f0) / seconds,
    agentCpu: ((cpuSeconds(agentPid) - a0) / seconds) * 100,
    serverCpu: ((cpuSeconds(serverPid) - s0) / seconds) * 100,
  };
  log(`rate ${rate}/s: ${sent} sent, ${r.published.toFixed(0)} events/s published, ${r.ringFull.toFixed(0)}/s lost to a full ring, agent ${r.agentCpu.toFixed(1)} % CPU, nats-server ${r.serverCpu.toFixed(1)} %`);
  return r;
}

/** observe's lines as they arrive, with the time each arrived. */
function observer(natsUrl: string, to: string): { proc: ChildProcess; lines: { text: string; at: bigint }[] } {
  const proc = spawnIn(null, [process.execPath, CLI, '--nats', natsUrl, 'observe', '--to', to], { stdio: 'pipe' });
  const lines: { text: string; at: bigint }[] = [];
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    const at = process.hrtime.bigint();
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop()!;
    for (const text of parts) lines.push({ text, at });
  });
  proc.stderr!.on('data', (d: Buffer) => process.stderr.write(`[observe] ${d.toString()}`));
  return { proc, lines };
}

/** The probe script in the container, without blocking this event loop (observe's lines are timed on it): its stdout. */
function probe(to: string, count: number, gap: number): Promise<string> {
  const p = spawnIn(CONTAINER, ['python3', '-c', PROBE, to, String(count), String(gap)], { stdio: 'pipe' });
  let out = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise((resolve) => p.on('exit', () => resolve(out)));
}

/** Send PROBES datagrams to `to`, one every 20 ms, and time each to its line. */
async function latency(o: ReturnType<typeof observer>, to: string, load: string): Promise<LatencyResult> {
  o.lines.length = 0;
  const out = await probe(to, PROBES, 0.02);
  await sleep(1000);
  const sentAt = new Map(out.trim().split('\n').map((l) => l.split(' ')).map(([port, ns]) => [Number(port), BigInt(ns!)] as const));
  const ms: number[] = [];
  for (const l of o.lines) {
    const port = Number(/\]:(\d+) \(/.exec(l.text)?.[1]);
    const t = sentAt.get(port);
    if (t !== undefined) ms.push(Number(l.at - t) / 1e6);
  }
  const r = { load, probes: PROBES, seen: ms.length, p50: percentile(ms, 50), p99: percentile(ms, 99), max: Math.max(...ms) };
  log(`latency (${load}): ${ms.length}/${PROBES} lines, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, max ${r.max.toFixed(2)} ms`);
  return r;
}

async function inside(): Promise<void> {
  const t0 = process.hrtime.bigint();
  const nats = await startNats({ host: '127.0.0.1' });
  onCleanup(() => void nats.destroy());
  const serverPid = Number(sh(['pgrep', '-n', '-f', `${natsServerBin()} -a 127.0.0.1 -p ${nats.port}`], { allowFail: true }).trim());
  const store = await connectStore({ servers: nats.url });
  await addRegion(store, REGION);
  await createWorkspace(store, 'acme');
  await createWorkspace(store, 'globex');
  const a = await addEndpoint(store, { workspace: 'acme', region: REGION, node: NODE, ifname: 'ep1', i6pn: true });
  const g = await addEndpoint(store, { workspace: 'globex', region: REGION, node: 'n2', ifname: 'ep-g', i6pn: true });
  const h = await addEndpoint(store, { workspace: 'globex', region: REGION, node: 'n2', ifname: 'ep-h', i6pn: true });
  await store.close();
  // The container: its address, and the node as its router (as the test fabric sets them up).
  sh(['ip', '-6', 'addr', 'add', 'fe80::1/64', 'dev', 'ep1']);
  nsSh(CONTAINER, ['ip', '-6', 'addr', 'add', `${a.address}/128`, 'dev', 'eth0', 'nodad']);
  nsSh(CONTAINER, ['ip', '-6', 'route', 'add', 'default', 'via', 'fe80::1', 'dev', 'eth0']);

  const bpffs = process.env.I6PN_BENCH_BPFFS!;
  const metricsPort = await freePort();
  const agent = spawnIn(null, [process.execPath, ...(process.env.I6PN_BENCH_AGENT_NODE_ARGS ?? '').split(' ').filter(Boolean), AGENT, '--nats', nats.url, '--node', NODE, '--region', REGION, '--uplink', 'up0', '--bpffs', bpffs, '--metrics-addr', `127.0.0.1:${metricsPort}`, '--events-per-sec', '1000000', '--log-level', 'warn'], { stdio: 'inherit' });
  for (let i = 0; ; i++) {
    const hooked = await metric(metricsPort, 'i6pn_attached_hooks{hook="from_endpoint"}').catch(() => NaN);
    if (hooked === 1) break;
    if (i > 600) throw new Error('the agent did not attach to ep1 within 60 s');
    await sleep(100);
  }
  nsSh(CONTAINER, ['ping', '-6', '-c', '2', '-W', '1', g.address], { allowFail: true }); // resolves the router; dropped
  await sleep(2000);

  const rates: RateResult[] = [];
  for (const rate of [0, ...RATES]) rates.push(await window(agent.pid!, serverPid, metricsPort, g.address, rate));

  const o = observer(nats.url, h.address);
  // observe is subscribed once a probe shows.
  for (let i = 0; i < 100 && o.lines.length === 0; i++) {
    await probe(h.address, 1, 0);
    await sleep(200);
  }
  if (o.lines.length === 0) throw new Error('i6pnctl observe printed nothing');
  const lat: LatencyResult[] = [await latency(o, h.address, 'alone')];
  const flood = spawnIn(CONTAINER, ['python3', '-c', FLOOD, g.address, String(LOAD_RATE), String(PROBES * 0.02 + 5)], { stdio: 'ignore' });
  await sleep(1000);
  lat.push(await latency(o, h.address, `beside ${LOAD_RATE} other events/s`));
  flood.kill('SIGKILL');
  o.proc.kill('SIGINT');
  agent.kill('SIGTERM');
  await sleep(500);

  const idle = rates[0]!;
  const costs = rates.slice(1).map((r) => (r.agentCpu - idle.agentCpu) / (r.published / 1000));
  const tables: Table[] = [
    {
      title: 'Drop events: CPU per thousand events a second',
      note: `A container's paced UDP flood to another workspace, every drop sampled (--events-per-sec 1000000), each event resolved and published by the agent, kept by the I6PN_EVENTS stream; CPU of each process over ${SECONDS} s, against the same window without traffic (idle: agent ${idle.agentCpu.toFixed(2)} %, nats-server ${idle.serverCpu.toFixed(2)} % of one core).`,
      columns: ['drops/s sent', 'events/s published', 'lost to a full ring buffer', 'agent CPU', 'agent CPU per 1,000 events/s', 'nats-server CPU', 'nats-server CPU per 1,000 events/s'],
      rows: rates.slice(1).map((r, i) => [
        r.rate,
        r.published.toFixed(0),
        `${r.ringFull.toFixed(0)}/s`,
        `${r.agentCpu.toFixed(1)} %`,
        `${costs[i]!.toFixed(2)} % of a core`,
        `${r.serverCpu.toFixed(1)} %`,
        `${((r.serverCpu - idle.serverCpu) / (r.published / 1000)).toFixed(2)} % of a core`,
      ]),
    },
    {
      title: 'Drop events: from the drop to the line `i6pnctl observe` prints',
      note: `${PROBES} datagrams, one every 20 ms, each from its own port, to an address of another workspace; the time from the send (the container's CLOCK_MONOTONIC) to observe's line naming that port (live, core NATS, the built CLI), alone and beside a flood of ${LOAD_RATE} other drop events a second.`,
      columns: ['load', 'lines seen', 'p50', 'p99', 'max'],
      rows: lat.map((l) => [l.load, `${l.seen} of ${l.probes}`, `${l.p50.toFixed(2)} ms`, `${l.p99.toFixed(2)} ms`, `${l.max.toFixed(2)} ms`]),
    },
  ];
  for (const t of tables) printTable(t);
  const file = saveSection('events', {
    at: new Date().toISOString(),
    seconds: secondsSince(t0),
    tables,
    data: { rates, latency: lat, cpuPerThousand: { agent: median(costs) } },
  });
  log(`wrote ${file}`);
}

async function outside(): Promise<void> {
  sweepStale();
  const ns = addNs('events');
  addNs('c1');
  addVeth(ns, 'up0', ns, 'up0p');
  addVeth(ns, 'ep1', CONTAINER, 'eth0');
  const bpffs = `/sys/fs/bpf/${PREFIX}-events`;
  onCleanup(() => {
    nsSh(ns, [process.execPath, AGENT, 'teardown', '--bpffs', bpffs], { allowFail: true });
    rmSync(bpffs, { recursive: true, force: true });
  });
  await rerunInside(ns, join(REPO_DIR, 'bench/events.ts'), { I6PN_BENCH_BPFFS: bpffs, I6PN_BENCH_CONTAINER: CONTAINER });
}

benchMain(inside, outside);
