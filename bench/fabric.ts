/**
 * `make bench-fabric`: the dataplane on real veths in namespaces.
 *
 * 1. Drop throughput (bench/fabric/drop.ts): a flood of cross-workspace
 *    packets on a native-XDP veth, dropped by from_fabric, against the same
 *    policy in nftables and against no filter at all. The flood comes from
 *    BPF_PROG_TEST_RUN with live frames on a redirecting XDP program
 *    (bench/bpf/xdp_redirect.bpf.c), in its own namespace.
 * 2. Allowed traffic: two endpoints on two nodes (container ns — veth — node
 *    ns — uplink veth — node ns — veth — container ns), iperf3 TCP throughput
 *    and ping round trips, with the dataplane attached on both nodes
 *    (bench/fabric/node.ts) against the same topology without it.
 *
 * Namespaces are named i6b<pid>-*, removed at exit, on error and on SIGINT.
 */
import { join } from 'node:path';

import { addNs, addVeth, cleanup, mac, nsSh, spawnIn, sweepStale } from './lib/netns.js';
import { sleep } from '../test/fabric/exec.js';
import { REPO_DIR, log, median, percentile, printTable, ratio, saveSection, secondsSince, type Goal, type Table } from './lib/results.js';
import type { DropArgs, DropResult, Variant } from './fabric/drop.js';
import type { NodeArgs } from './fabric/node.js';

const ROUNDS = Number(process.env.I6PN_BENCH_FABRIC_ROUNDS ?? 3);
/** Allowed-traffic rounds: at least five, the four set-ups alternating (issue 12). */
const TRAFFIC_ROUNDS = Number(process.env.I6PN_BENCH_TRAFFIC_ROUNDS ?? 5);
const FLOOD_SECONDS = Number(process.env.I6PN_BENCH_FLOOD_SECONDS ?? 6);
const WORKSPACES = Number(process.env.I6PN_BENCH_NFT_WORKSPACES ?? 1000);
const IPERF_SECONDS = Number(process.env.I6PN_BENCH_IPERF_SECONDS ?? 5);
const PINGS = Number(process.env.I6PN_BENCH_PINGS ?? 1000);

function node(): string[] {
  return [process.execPath, '--import=tsx'];
}

function macString(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
}

async function dropThroughput(): Promise<DropResult> {
  const gen = addNs('gen');
  const sink = addNs('sink');
  addVeth(gen, 'gen0', sink, 'sink0');
  const args: DropArgs = { dev: 'sink0', genNs: gen, genDev: 'gen0', mac: macString(mac(sink, 'sink0')), workspaces: WORKSPACES, rounds: ROUNDS, seconds: FLOOD_SECONDS };
  const child = spawnIn(sink, [...node(), join(REPO_DIR, 'bench/fabric/drop.ts'), JSON.stringify(args)], { stdio: 'pipe' });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => process.stderr.write(d));
  const code = await new Promise<number>((res) => child.on('exit', (c) => res(c ?? 1)));
  if (code !== 0) throw new Error(`bench/fabric/drop.ts exited with ${code}`);
  return JSON.parse(out.trim().split('\n').at(-1)!) as DropResult;
}

// ---------------------------------------------------------------- allowed traffic

const WS = 0x1234_5678;
const REGION = 0x0101;
const ADDR_A = 'fdaa:1234:5678:101::a';
const ADDR_B = 'fdaa:1234:5678:101::b';

interface Topology {
  nA: string;
  nB: string;
  cA: string;
  cB: string;
}

/** A fixed link-local address on `dev` in `ns` (the containers' gateway is fe80::1). */
function linkLocal(ns: string, dev: string, a: string): void {
  nsSh(ns, ['ip', '-6', 'addr', 'flush', 'dev', dev, 'scope', 'link']);
  nsSh(ns, ['ip', '-6', 'addr', 'add', `${a}/64`, 'dev', dev, 'nodad']);
}

function twoNodes(): Topology {
  const t = { nA: addNs('nodeA'), nB: addNs('nodeB'), cA: addNs('ctrA'), cB: addNs('ctrB') };
  addVeth(t.nA, 'up0', t.nB, 'up0');
  addVeth(t.cA, 'eth0', t.nA, 'vethA');
  addVeth(t.cB, 'eth0', t.nB, 'vethB');
  linkLocal(t.nA, 'up0', 'fe80::a1');
  linkLocal(t.nB, 'up0', 'fe80::b1');
  linkLocal(t.nA, 'vethA', 'fe80::1');
  linkLocal(t.nB, 'vethB', 'fe80::1');
  linkLocal(t.cA, 'eth0', 'fe80::2');
  linkLocal(t.cB, 'eth0', 'fe80::2');
  for (const [c, addr] of [[t.cA, ADDR_A], [t.cB, ADDR_B]] as const) {
    nsSh(c, ['ip', '-6', 'addr', 'add', `${addr}/128`, 'dev', 'eth0', 'nodad']);
    nsSh(c, ['ip', '-6', 'route', 'add', 'fdaa::/16', 'via', 'fe80::1', 'dev', 'eth0']);
  }
  for (const [n, veth, own, other, peer] of [
    [t.nA, 'vethA', ADDR_A, ADDR_B, 'fe80::b1'],
    [t.nB, 'vethB', ADDR_B, ADDR_A, 'fe80::a1'],
  ] as const) {
    nsSh(n, ['sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1']);
    nsSh(n, ['ip', '-6', 'route', 'add', `${own}/128`, 'via', 'fe80::2', 'dev', veth]);
    nsSh(n, ['ip', '-6', 'route', 'add', `${other}/128`, 'via', peer, 'dev', 'up0']);
  }
  return t;
}

interface TrafficSample {
  tcpBitsPerSec: number;
  rttUs: number[];
}

/** iperf3 and ping from the container namespace `from` to ADDR_B. */
async function measureTraffic(from: string): Promise<TrafficSample> {
  const j = JSON.parse(nsSh(from, ['iperf3', '-6', '-c', ADDR_B, '-t', String(IPERF_SECONDS), '-J'])) as {
    end: { sum_received: { bits_per_second: number } };
  };
  const ping = nsSh(from, ['ping', '-6', '-n', '-c', String(PINGS), '-i', '0.002', ADDR_B]);
  const rttUs = [...ping.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]) * 1000);
  if (rttUs.length < PINGS * 0.9) throw new Error(`ping: ${rttUs.length} of ${PINGS} answered`);
  return { tcpBitsPerSec: j.end.sum_received.bits_per_second, rttUs };
}

/** Run `fn` with bench/fabric/node.ts holding a dataplane in each of the given node namespaces. */
async function withNodes<T>(nodes: Array<[string, NodeArgs]>, fn: () => Promise<T>): Promise<{ value: T; counters: unknown[] }> {
  const procs = nodes.map(([ns, a]) => {
    const p = spawnIn(ns, [...node(), join(REPO_DIR, 'bench/fabric/node.ts'), JSON.stringify(a)]);
    let out = '';
    p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr!.on('data', (d: Buffer) => process.stderr.write(d));
    const exited = new Promise<number>((res) => p.on('exit', (c) => res(c ?? 1)));
    return { p, out: () => out, exited };
  });
  const t0 = Date.now();
  while (!procs.every((x) => x.out().includes('ready'))) {
    if (Date.now() - t0 > 30_000) throw new Error('dataplane nodes not ready after 30 s');
    await sleep(50);
  }
  try {
    const value = await fn();
    const counters: unknown[] = [];
    for (const x of procs) {
      x.p.stdin!.end();
      if ((await x.exited) !== 0) throw new Error('bench/fabric/node.ts failed');
      counters.push(JSON.parse(x.out().trim().split('\n').at(-1)!));
    }
    return { value, counters };
  } finally {
    for (const x of procs) if (x.p.exitCode === null) x.p.kill('SIGTERM');
  }
}

/** Both nodes of the two-node topology, one dataplane variant. */
function withDataplane<T>(t: Topology, variant: NodeArgs['variant'], fastPath: boolean, fn: () => Promise<T>): Promise<{ value: T; counters: unknown[] }> {
  return withNodes(
    [
      [t.nA, { variant, node: 1, region: REGION, workspace: WS, uplink: 'up0', veth: 'vethA', local: ADDR_A, remote: { addr: ADDR_B, node: 2 }, fastPath }],
      [t.nB, { variant, node: 2, region: REGION, workspace: WS, uplink: 'up0', veth: 'vethB', local: ADDR_B, remote: { addr: ADDR_A, node: 1 }, fastPath }],
    ],
    fn,
  );
}

/** One node, two containers on it: the same-node path (from_endpoint, the local fast path or the stack, to_endpoint). */
interface OneNode {
  n: string;
  cA: string;
  cB: string;
}

function oneNode(): OneNode {
  const t = { n: addNs('node1'), cA: addNs('ctr1A'), cB: addNs('ctr1B') };
  addVeth(t.cA, 'eth0', t.n, 'vethA');
  addVeth(t.cB, 'eth0', t.n, 'vethB');
  linkLocal(t.n, 'vethA', 'fe80::1');
  linkLocal(t.n, 'vethB', 'fe80::1');
  for (const [c, addr] of [[t.cA, ADDR_A], [t.cB, ADDR_B]] as const) {
    linkLocal(c, 'eth0', 'fe80::2');
    nsSh(c, ['ip', '-6', 'addr', 'add', `${addr}/128`, 'dev', 'eth0', 'nodad']);
    nsSh(c, ['ip', '-6', 'route', 'add', 'fdaa::/16', 'via', 'fe80::1', 'dev', 'eth0']);
  }
  nsSh(t.n, ['sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1']);
  nsSh(t.n, ['ip', '-6', 'route', 'add', `${ADDR_A}/128`, 'via', 'fe80::2', 'dev', 'vethA']);
  nsSh(t.n, ['ip', '-6', 'route', 'add', `${ADDR_B}/128`, 'via', 'fe80::2', 'dev', 'vethB']);
  return t;
}

function withSameNode<T>(t: OneNode, fastPath: boolean, fn: () => Promise<T>): Promise<{ value: T; counters: unknown[] }> {
  return withNodes(
    [[t.n, { variant: 'i6pn', node: 1, region: REGION, workspace: WS, veth: 'vethA', local: ADDR_A, local2: { veth: 'vethB', addr: ADDR_B }, fastPath }]],
    fn,
  );
}

interface Traffic {
  /** Two nodes. */
  without: TrafficSample[];
  xdpPass: TrafficSample[];
  with: TrafficSample[];
  withTc: TrafficSample[];
  withTcNoFast: TrafficSample[];
  /** One node, two containers. */
  local: TrafficSample[];
  localFast: TrafficSample[];
  localNoFast: TrafficSample[];
  counters: unknown[];
}

async function allowedTraffic(): Promise<Traffic> {
  const t = twoNodes();
  const one = oneNode();
  const servers = [spawnIn(t.cB, ['iperf3', '-6', '-s', '-B', ADDR_B], { stdio: 'ignore' }), spawnIn(one.cB, ['iperf3', '-6', '-s', '-B', ADDR_B], { stdio: 'ignore' })];
  await sleep(500);
  // Routes and neighbours warm before the first figure.
  nsSh(t.cA, ['ping', '-6', '-c', '3', '-i', '0.2', '-W', '2', ADDR_B]);
  nsSh(one.cA, ['ping', '-6', '-c', '3', '-i', '0.2', '-W', '2', ADDR_B]);
  const res: Traffic = { without: [], xdpPass: [], with: [], withTc: [], withTcNoFast: [], local: [], localFast: [], localNoFast: [], counters: [] };
  const f = (x: TrafficSample): string => `${(x.tcpBitsPerSec / 1e9).toFixed(2)} Gbit/s p50 ${median(x.rttUs)} µs`;
  for (let r = 0; r < TRAFFIC_ROUNDS; r++) {
    res.without.push(await measureTraffic(t.cA));
    res.xdpPass.push((await withDataplane(t, 'xdp-pass', true, () => measureTraffic(t.cA))).value);
    res.with.push((await withDataplane(t, 'i6pn', true, () => measureTraffic(t.cA))).value);
    const wt = await withDataplane(t, 'i6pn-tc', true, () => measureTraffic(t.cA));
    res.withTc.push(wt.value);
    res.counters = wt.counters;
    res.withTcNoFast.push((await withDataplane(t, 'i6pn-tc', false, () => measureTraffic(t.cA))).value);
    res.local.push(await measureTraffic(one.cA));
    res.localFast.push((await withSameNode(one, true, () => measureTraffic(one.cA))).value);
    res.localNoFast.push((await withSameNode(one, false, () => measureTraffic(one.cA))).value);
    log(
      `allowed round ${r + 1}: two nodes: without ${f(res.without.at(-1)!)}; xdp_pass ${f(res.xdpPass.at(-1)!)}; i6pn XDP uplink ${f(res.with.at(-1)!)}; ` +
        `TC uplink ${f(res.withTc.at(-1)!)}, without the fast path ${f(res.withTcNoFast.at(-1)!)} | one node: without ${f(res.local.at(-1)!)}; ` +
        `i6pn ${f(res.localFast.at(-1)!)}, without the fast path ${f(res.localNoFast.at(-1)!)}`,
    );
  }
  for (const s of servers) s.kill('SIGKILL');
  return res;
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const t0 = process.hrtime.bigint();
  sweepStale();
  log('drop throughput: flood of cross-workspace packets on a native-XDP veth');
  const drop = await dropThroughput();
  log('allowed traffic: two endpoints on two nodes, with and without the dataplane');
  const traffic = await allowedTraffic();
  cleanup();

  const pps = (v: Variant): number => median(drop.pps[v]);
  const dropTable: Table = {
    title: 'Drop throughput: cross-workspace flood on a veth (native XDP), packets handled per second',
    note: `${drop.packetBytes}-byte UDP packets from BPF_PROG_TEST_RUN live frames redirected into the veth (bench/bpf/xdp_redirect.bpf.c); median of ${ROUNDS} rounds of ${FLOOD_SECONDS} s, counted on the receive side. nftables: ${WORKSPACES} workspaces, a hash vmap on the destination /64 jumping to one chain per workspace (${drop.nftRules} rules). The generator is throttled by the sink it feeds (2 cores), so its rate is shown too.`,
    columns: ['filter', 'Mpps (median)', 'per round', 'generator Mfps', '× no filter', '× nftables', '× XDP_DROP'],
    rows: (['none', 'nftables', 'xdp', 'xdp_drop'] as Variant[]).map((v) => [
      v === 'none' ? 'no filter (stack, no listener)' : v === 'nftables' ? 'nftables raw prerouting' : v === 'xdp' ? 'i6pn from_fabric (XDP)' : 'an XDP program that only drops',
      (pps(v) / 1e6).toFixed(2),
      drop.pps[v].map((x) => (x / 1e6).toFixed(2)).join(' / '),
      (median(drop.generatorFps[v]) / 1e6).toFixed(2),
      ratio(pps(v), pps('none')),
      ratio(pps(v), pps('nftables')),
      ratio(pps(v), pps('xdp_drop')),
    ]),
  };
  const bw = (xs: TrafficSample[]): number => median(xs.map((x) => x.tcpBitsPerSec));
  const rtt = (xs: TrafficSample[], p: number): number => median(xs.map((x) => percentile(x.rttUs, p)));
  // Signed so that a positive figure is always a cost: throughput lost, latency added.
  const overhead = (w: number, wo: number, higherIsBetter: boolean): string => {
    const pct = higherIsBetter ? (1 - w / wo) * 100 : (w / wo - 1) * 100;
    return `${pct >= 0 ? '+' : ''}${pct.toFixed(1)} %`;
  };
  const spread = (xs: TrafficSample[]): string => {
    const v = xs.map((x) => x.tcpBitsPerSec / 1e9);
    return `${Math.min(...v).toFixed(2)}–${Math.max(...v).toFixed(2)}`;
  };
  /** Throughput and RTT rows: each set-up's figure, then each comparison's overhead ([measured, baseline]). */
  const trafficRows = (setups: TrafficSample[][], vs: Array<[TrafficSample[], TrafficSample[]]>): Array<Array<string | number>> => [
    ['TCP throughput (iperf3), Gbit/s', ...setups.map((x) => `${(bw(x) / 1e9).toFixed(2)} (${spread(x)})`), ...vs.map(([w, wo]) => overhead(bw(w), bw(wo), true))],
    ...([50, 99] as const).map((p) => [`ping RTT p${p}`, ...setups.map((x) => `${rtt(x, p).toFixed(0)} µs`), ...vs.map(([w, wo]) => overhead(rtt(w, p), rtt(wo, p), false))]),
  ];
  const trafficTable: Table = {
    title: 'Allowed traffic between two endpoints on two nodes',
    note: `Container — veth (TC from_endpoint/to_endpoint) — node — uplink veth (from_fabric, XDP or TC ingress; TC to_fabric) — node — veth — container; median of ${TRAFFIC_ROUNDS} rounds (the spread in brackets), the set-ups alternating; the local fast path (from_fabric's TC flavour redirecting to the bound veth) on unless said; iperf3 TCP ${IPERF_SECONDS} s, ${PINGS} pings at 2 ms. xdp_pass attaches only an empty XDP program to both uplinks: any native XDP program puts a veth on its XDP receive path and turns off the peer's segmentation offload, a cost of veth, not of i6pn; so the XDP uplink is held against xdp_pass and the TC uplink (what the agent chooses on a veth) against nothing attached. Overhead: throughput lost and latency added, in percent (negative: faster, within noise).`,
    columns: ['figure', 'nothing attached', 'xdp_pass on uplinks', 'i6pn, XDP uplink', 'i6pn, TC uplink', 'TC uplink, no fast path', 'XDP uplink vs xdp_pass', 'TC uplink vs nothing'],
    rows: trafficRows(
      [traffic.without, traffic.xdpPass, traffic.with, traffic.withTc, traffic.withTcNoFast],
      [
        [traffic.with, traffic.xdpPass],
        [traffic.withTc, traffic.without],
      ],
    ),
  };
  const localTable: Table = {
    title: 'Allowed traffic between two endpoints on one node',
    note: `Container — veth (TC from_endpoint) — node — veth (TC to_endpoint) — container; median of ${TRAFFIC_ROUNDS} rounds (the spread in brackets), alternating with the two-node set-ups. The local fast path: from_endpoint redirects a passed packet for an endpoint bound on the node straight out of its veth (bpf_redirect_neigh), past routing and netfilter; to_endpoint still decides on it. Overhead against nothing attached (the node's own forwarding).`,
    columns: ['figure', 'nothing attached', 'i6pn, fast path', 'i6pn, through the stack', 'fast path vs nothing', 'stack vs nothing'],
    rows: trafficRows(
      [traffic.local, traffic.localFast, traffic.localNoFast],
      [
        [traffic.localFast, traffic.local],
        [traffic.localNoFast, traffic.local],
      ],
    ),
  };
  const goals: Goal[] = [
    { goal: 'XDP drop ≥ 4× nftables', measured: `${ratio(pps('xdp'), pps('nftables'))} (${(pps('xdp') / 1e6).toFixed(2)} vs ${(pps('nftables') / 1e6).toFixed(2)} Mpps)`, met: pps('xdp') >= 4 * pps('nftables') },
    {
      goal: 'issue 12: drop rate, from_fabric ≥ 90 % of an XDP program that only returns XDP_DROP',
      measured: `${((pps('xdp') / pps('xdp_drop')) * 100).toFixed(1)} % (${(pps('xdp') / 1e6).toFixed(2)} vs ${(pps('xdp_drop') / 1e6).toFixed(2)} Mpps)`,
      met: pps('xdp') >= 0.9 * pps('xdp_drop'),
    },
    {
      goal: 'issue 12: throughput, TC uplink ≥ 95 % of nothing attached',
      measured: `${((bw(traffic.withTc) / bw(traffic.without)) * 100).toFixed(1)} % (${(bw(traffic.withTc) / 1e9).toFixed(2)} vs ${(bw(traffic.without) / 1e9).toFixed(2)} Gbit/s)`,
      met: bw(traffic.withTc) >= 0.95 * bw(traffic.without),
    },
    {
      goal: 'issue 12: throughput, XDP uplink ≥ 95 % of xdp_pass',
      measured: `${((bw(traffic.with) / bw(traffic.xdpPass)) * 100).toFixed(1)} % (${(bw(traffic.with) / 1e9).toFixed(2)} vs ${(bw(traffic.xdpPass) / 1e9).toFixed(2)} Gbit/s)`,
      met: bw(traffic.with) >= 0.95 * bw(traffic.xdpPass),
    },
    {
      goal: 'issue 12: ping RTT p50, TC uplink ≤ nothing attached + 5 µs',
      measured: `+${(rtt(traffic.withTc, 50) - rtt(traffic.without, 50)).toFixed(0)} µs (${rtt(traffic.withTc, 50).toFixed(0)} vs ${rtt(traffic.without, 50).toFixed(0)} µs)`,
      met: rtt(traffic.withTc, 50) <= rtt(traffic.without, 50) + 5,
    },
  ];
  for (const t of [dropTable, trafficTable, localTable]) printTable(t);
  for (const g of goals) console.log(`goal: ${g.goal}: ${g.measured} — ${g.met ? 'met' : 'NOT met'}`);
  const file = saveSection('fabric', {
    at: new Date().toISOString(),
    seconds: secondsSince(t0),
    tables: [dropTable, trafficTable, localTable],
    goals,
    data: {
      drop,
      traffic: {
        without: traffic.without.map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
        xdpPass: traffic.xdpPass.map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
        with: traffic.with.map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
        withTcUplink: traffic.withTc.map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
        withTcUplinkNoFastPath: traffic.withTcNoFast.map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
        oneNode: Object.fromEntries(
          (['local', 'localFast', 'localNoFast'] as const).map((k) => [
            k,
            traffic[k].map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
          ]),
        ),
        countersOfLastRound: traffic.counters,
      },
    },
  });
  log(`wrote ${file}`);
}

main().catch((err: unknown) => {
  console.error(err);
  cleanup();
  process.exit(1);
});
