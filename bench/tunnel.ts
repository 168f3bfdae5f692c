/**
 * `make bench-tunnel`: what a tunnel costs (issue 15). On the test fabric with
 * the agents enforcing (a gateway node, a1 on ams-1 serving iperf3 and a TCP
 * echo), the same measures two ways, in one run:
 *
 *   - tunneled: from the internet namespace to the gateway's public port,
 *     relayed by i6pn-gateway to a1's private address and port;
 *   - direct:   from the gateway's own namespace and private address straight
 *     to a1's port (the path the relay itself takes: the dataplane allows it,
 *     since the port is tunneled), with no relay.
 *
 * Throughput: iperf3 (one TCP stream, 5 s, best of three). Latency: one
 * connection, 32-byte round trips (Python client, the same on both paths, so
 * the difference is what the tunnel adds). New connections per second:
 * connect, one byte echoed, close, on 4 threads for 5 s.
 * Goals: tunneled ≥ 80 % of direct throughput, ≤ 100 µs added p50 latency.
 */
import { Cluster } from '../test/fabric/cluster.js';
import { run } from '../test/fabric/exec.js';
import { acquireFabricLock } from '../test/fabric/state.js';
import { startService, waitUntil } from '../test/fabric/services.js';
import { ECHO_PORT, peer, servePeer, tunnelTopology } from '../test/fabric/tunnels.js';
import { log, median, printTable, saveSection, secondsSince, type Goal, type Table } from './lib/results.js';

const IPERF_PORT = 5201;
const SECONDS = Number(process.env.I6PN_BENCH_TUNNEL_SECONDS ?? 5);
const RUNS = 3;
const RTTS = 5000;

async function iperf(netns: string, host: string, port: number): Promise<number> {
  const r = await run(['iperf3', '-c', host, '-p', String(port), '-t', String(SECONDS), '-J'], { netns, timeoutMs: (SECONDS + 30) * 1000 });
  const j = JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } };
  return j.end.sum_received.bits_per_second;
}

async function main(): Promise<void> {
  const t0 = process.hrtime.bigint();
  const release = await acquireFabricLock();
  // The tunnel topology, with the agents enforcing; no probe daemons, no Prometheus.
  const c = await Cluster.up({ topology: tunnelTopology, dataplane: 'agent', probes: false, prometheus: false, binaries: 'dist', step: (s) => log(s) });
  try {
    const gw = await c.addGateway('gw1', 'ams-gw');
    const a1 = c.fabric.endpoint('a1');
    await servePeer(c, 'a1');
    const iperfd = startService(c.fabric, 'iperf3-a1', ['/usr/bin/iperf3', '-s', '-p', String(IPERF_PORT)], { netns: a1.netns, cmdlineMark: a1.netns });
    await waitUntil('iperf3 in a1', async () => (await peer(a1.netns, 'connect', '::1', IPERF_PORT)) === 'open', 10_000, iperfd);
    const iperfT = await c.ctl!.tunnelCreate(a1.address, IPERF_PORT, { wait: 10 });
    const echoT = await c.ctl!.tunnelCreate(a1.address, ECHO_PORT, { wait: 10 });
    const inet = c.fabric.internetNetns;
    // The connection-rate loop closes first on the client's side and the relay's: reuse TIME_WAIT ports
    // (timestamps on), or the later runs measure the port space, not the tunnel.
    for (const ns of [inet, gw.netns]) await run(['sysctl', '-qw', 'net.ipv4.tcp_tw_reuse=1'], { netns: ns });
    const ways = {
      tunneled: { netns: inet, host: gw.publicAddress, iperf: iperfT.public[0]!.port, echo: echoT.public[0]!.port },
      direct: { netns: gw.netns, host: a1.address, iperf: IPERF_PORT, echo: ECHO_PORT },
    };
    const data: Record<string, { bps: number[]; p50: number[]; p99: number[]; connPerSec: number[]; connFailed: number }> = {};
    for (let i = 0; i < RUNS; i++) {
      // Alternate the two ways, so that the machine's other work weighs on both.
      for (const [name, w] of Object.entries(ways)) {
        const d = (data[name] ??= { bps: [], p50: [], p99: [], connPerSec: [], connFailed: 0 });
        d.bps.push(await iperf(w.netns, w.host, w.iperf));
        const r = JSON.parse(await peer(w.netns, 'rtt', w.host, w.echo, RTTS)) as { p50_us: number; p99_us: number };
        d.p50.push(r.p50_us);
        d.p99.push(r.p99_us);
        const cr = JSON.parse(await peer(w.netns, 'connrate', w.host, w.echo, SECONDS, 4)) as { per_sec: number; failed: number };
        d.connPerSec.push(cr.per_sec);
        d.connFailed += cr.failed;
        log(`${name} run ${i + 1}: ${(d.bps.at(-1)! / 1e9).toFixed(2)} Gbit/s, p50 ${r.p50_us.toFixed(0)} µs, ${cr.per_sec.toFixed(0)} connections/s`);
      }
    }
    const best = (xs: number[]) => Math.max(...xs);
    const tun = data['tunneled']!;
    const dir = data['direct']!;
    const share = best(tun.bps) / best(dir.bps);
    const added = median(tun.p50) - median(dir.p50);
    const table: Table = {
      title: 'Tunnel: tunneled against direct (issue 15)',
      note: `One TCP stream of iperf3, ${SECONDS} s, best of ${RUNS}; ${RTTS} round trips of 32 bytes on one connection (median of ${RUNS} runs); connect + 1 byte echoed + close on 4 threads for ${SECONDS} s. Tunneled: internet namespace → gateway's public port → i6pn-gateway → a1. Direct: the gateway's namespace, its private address → a1, no relay. Agents enforcing on every node.`,
      columns: ['path', 'throughput', 'p50 RTT', 'p99 RTT', 'new connections/s'],
      rows: [
        ['direct', `${(best(dir.bps) / 1e9).toFixed(2)} Gbit/s`, `${median(dir.p50).toFixed(0)} µs`, `${median(dir.p99).toFixed(0)} µs`, `${median(dir.connPerSec).toFixed(0)}`],
        ['tunneled', `${(best(tun.bps) / 1e9).toFixed(2)} Gbit/s (${(share * 100).toFixed(0)} %)`, `${median(tun.p50).toFixed(0)} µs (+${added.toFixed(0)})`, `${median(tun.p99).toFixed(0)} µs`, `${median(tun.connPerSec).toFixed(0)}${tun.connFailed ? ` (${tun.connFailed} failed)` : ''}`],
      ],
    };
    const goals: Goal[] = [
      { goal: 'tunnel throughput ≥ 80 % of direct (issue 15)', measured: `${(share * 100).toFixed(0)} %`, met: share >= 0.8 },
      { goal: 'tunnel adds ≤ 100 µs p50 latency (issue 15)', measured: `${added.toFixed(0)} µs`, met: added <= 100 },
    ];
    printTable(table);
    for (const g of goals) log(`${g.met ? 'met' : 'MISSED'}: ${g.goal}: ${g.measured}`);
    const file = saveSection('tunnel', { at: new Date().toISOString(), seconds: secondsSince(t0), tables: [table], goals, data });
    log(`wrote ${file}`);
  } finally {
    await c.down();
    release();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
