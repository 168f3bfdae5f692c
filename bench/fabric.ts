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

import { addNs, addVeth, cleanup, mac, nsSh, spawnIn, sleep, sweepStale } from './lib/netns.js';
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

function twoNodes(): Topology {
  const t = { nA: addNs('nodeA'), nB: addNs('nodeB'), cA: addNs('ctrA'), cB: addNs('ctrB') };
  addVeth(t.nA, 'up0', t.nB, 'up0');
  addVeth(t.cA, 'eth0', t.nA, 'vethA');
  addVeth(t.cB, 'eth0', t.nB, 'vethB');
  const ll = (ns: string, dev: string, a: string): void => {
    nsSh(ns, ['ip', '-6', 'addr', 'flush', 'dev', dev, 'scope', 'link']);
    nsSh(ns, ['ip', '-6', 'addr', 'add', `${a}/64`, 'dev', dev, 'nodad']);
  };
  ll(t.nA, 'up0', 'fe80::a1');
  ll(t.nB, 'up0', 'fe80::b1');
  ll(t.nA, 'vethA', 'fe80::1');
  ll(t.nB, 'vethB', 'fe80::1');
  ll(t.cA, 'eth0', 'fe80::2');
  ll(t.cB, 'eth0', 'fe80::2');
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

async function measureTraffic(t: Topology): Promise<TrafficSample> {
  const j = JSON.parse(nsSh(t.cA, ['iperf3', '-6', '-c', ADDR_B, '-t', String(IPERF_SECONDS), '-J'])) as {
    end: { sum_received: { bits_per_second: number } };
  };
  const ping = nsSh(t.cA, ['ping', '-6', '-n', '-c', String(PINGS), '-i', '0.002', ADDR_B]);
  const rttUs = [...ping.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1]) * 1000);
  if (rttUs.length < PINGS * 0.9) throw new Error(`ping: ${rttUs.length} of ${PINGS} answered`);
  return { tcpBitsPerSec: j.end.sum_received.bits_per_second, rttUs };
}

async function withDataplane<T>(t: Topology, variant: NodeArgs['variant'], fn: () => Promise<T>): Promise<{ value: T; counters: unknown[] }> {
  const procs = [
    [t.nA, { variant, node: 1, region: REGION, workspace: WS, uplink: 'up0', veth: 'vethA', local: ADDR_A, remote: { addr: ADDR_B, node: 2 } }],
    [t.nB, { variant, node: 2, region: REGION, workspace: WS, uplink: 'up0', veth: 'vethB', local: ADDR_B, remote: { addr: ADDR_A, node: 1 } }],
  ].map(([ns, a]) => {
    const p = spawnIn(ns as string, [...node(), join(REPO_DIR, 'bench/fabric/node.ts'), JSON.stringify(a as NodeArgs)]);
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

async function allowedTraffic(): Promise<{ without: TrafficSample[]; xdpPass: TrafficSample[]; with: TrafficSample[]; withTc: TrafficSample[]; counters: unknown[] }> {
  const t = twoNodes();
  const server = spawnIn(t.cB, ['iperf3', '-6', '-s', '-B', ADDR_B], { stdio: 'ignore' });
  await sleep(500);
  // Routes and neighbours warm before the first figure.
  nsSh(t.cA, ['ping', '-6', '-c', '3', '-i', '0.2', '-W', '2', ADDR_B]);
  const res = { without: [] as TrafficSample[], xdpPass: [] as TrafficSample[], with: [] as TrafficSample[], withTc: [] as TrafficSample[], counters: [] as unknown[] };
  for (let r = 0; r < TRAFFIC_ROUNDS; r++) {
    res.without.push(await measureTraffic(t));
    res.xdpPass.push((await withDataplane(t, 'xdp-pass', () => measureTraffic(t))).value);
    const w = await withDataplane(t, 'i6pn', () => measureTraffic(t));
    res.with.push(w.value);
    const wt = await withDataplane(t, 'i6pn-tc', () => measureTraffic(t));
    res.withTc.push(wt.value);
    res.counters = wt.counters;
    const f = (x: TrafficSample): string => `${(x.tcpBitsPerSec / 1e9).toFixed(2)} Gbit/s p50 ${median(x.rttUs)} µs`;
    log(`allowed round ${r + 1}: without ${f(res.without.at(-1)!)}; xdp_pass on uplinks ${f(res.xdpPass.at(-1)!)}; i6pn (XDP uplink) ${f(w.value)}; i6pn (TC uplink) ${f(wt.value)}`);
  }
  server.kill('SIGKILL');
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
  const setups = [traffic.without, traffic.xdpPass, traffic.with, traffic.withTc];
  const trafficTable: Table = {
    title: 'Allowed traffic between two endpoints on two nodes',
    note: `Container — veth (TC from_endpoint/to_endpoint) — node — uplink veth (from_fabric, XDP or TC ingress; TC to_fabric) — node — veth — container; median of ${TRAFFIC_ROUNDS} rounds (the spread in brackets), the four set-ups alternating; iperf3 TCP ${IPERF_SECONDS} s, ${PINGS} pings at 2 ms. xdp_pass attaches only an empty XDP program to both uplinks: any native XDP program puts a veth on its XDP receive path and turns off the peer's segmentation offload, a cost of veth, not of i6pn; so the XDP uplink is held against xdp_pass and the TC uplink (what the agent chooses on a veth) against nothing attached. Overhead: throughput lost and latency added, in percent (negative: faster, within noise).`,
    columns: ['figure', 'nothing attached', 'xdp_pass on uplinks', 'i6pn, XDP uplink', 'i6pn, TC uplink', 'XDP uplink vs xdp_pass', 'TC uplink vs nothing'],
    rows: [
      [
        'TCP throughput (iperf3), Gbit/s',
        ...setups.map((x) => `${(bw(x) / 1e9).toFixed(2)} (${spread(x)})`),
        overhead(bw(traffic.with), bw(traffic.xdpPass), true),
        overhead(bw(traffic.withTc), bw(traffic.without), true),
      ],
      ...([50, 99] as const).map((p) => [
        `ping RTT p${p}`,
        ...setups.map((x) => `${rtt(x, p).toFixed(0)} µs`),
        overhead(rtt(traffic.with, p), rtt(traffic.xdpPass, p), false),
        overhead(rtt(traffic.withTc, p), rtt(traffic.without, p), false),
      ]),
    ],
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
  for (const t of [dropTable, trafficTable]) printTable(t);
  for (const g of goals) console.log(`goal: ${g.goal}: ${g.measured} — ${g.met ? 'met' : 'NOT met'}`);
  const file = saveSection('fabric', {
    at: new Date().toISOString(),
    seconds: secondsSince(t0),
    tables: [dropTable, trafficTable],
    goals,
    data: {
      drop,
      traffic: {
        without: traffic.without.map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
        xdpPass: traffic.xdpPass.map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
        with: traffic.with.map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
        withTcUplink: traffic.withTc.map((x) => ({ tcpBitsPerSec: x.tcpBitsPerSec, rttP50Us: percentile(x.rttUs, 50), rttP99Us: percentile(x.rttUs, 99) })),
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
