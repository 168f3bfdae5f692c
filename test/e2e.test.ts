/**
 * i6pn end to end: the two-region fabric, a real nats-server, one i6pn-agent
 * per node (inside its namespace), membership provisioned through the store,
 * a real Prometheus. The isolation matrix in enforce mode (with every drop
 * counted under its reason by the agent that should see it, every forbidden
 * probe in `i6pnctl observe` and `i6pnctl explain` agreeing on every pair),
 * the same matrix in monitor mode as its control, observe's filters, the
 * drop events' budget under a flood, spoofing, endpoints coming and going
 * within a second, and Prometheus's query API returning the drop counters.
 */
import test, { type ExecutionContext } from 'ava';
import { availableParallelism } from 'node:os';
import { Cluster } from './fabric/cluster.js';
import { mapLimit, run, sleep } from './fabric/exec.js';
import { acquireFabricLock } from './fabric/state.js';
import { applyLatency, checkCounters, delta, expectedDrops, snapshot } from './fabric/counters.js';
import { describeUnexpected, renderMatrix, runMatrix, type MatrixResult } from './fabric/matrix.js';
import { checkEnforceEvents, checkExplanations, checkMonitorEvents, explainPair, observeSince } from './fabric/events.js';
import type { Explanation } from '../controller/explain.js';
import type { DropEventRecord } from '../lib/events.js';
import { PYTHON, injectFromFabric, spoofUdp, timeUntilDelivery, udpProbe } from './fabric/probes.js';
import { FABRIC_CASES } from './fabric/topology.js';

let releaseLock: (() => void) | undefined;
let c: Cluster;
let enforced: MatrixResult;
/** The enforce matrix's drop events (observe --since its start) and explain's answer for each of its pairs. */
let enforcedEvents: DropEventRecord[] = [];
let enforcedSince: Date;
const explanations = new Map<string, { code: number; answer: Explanation }>();
const nodes = (): string[] => [...c.fabric.nodes.keys()];
const counters = () => snapshot(nodes(), c.counters);

test.before(async () => {
  releaseLock = await acquireFabricLock();
  c = await Cluster.up({ dataplane: 'agent', mode: 'enforce' });
});

test.after.always(async () => {
  try {
    await c?.down();
  } finally {
    releaseLock?.();
  }
});

/** Σ over nodes of an agent metric's series (e.g. 'i6pn_drop_events_suppressed_total{cause="budget"}'). */
async function fleetMetric(series: string): Promise<number> {
  return (await Promise.all(nodes().map((n) => c.metric(n, series)))).reduce((a, b) => a + (Number.isNaN(b) ? 0 : b), 0);
}

/** The drop events since `since`, once every agent has published what it read (its counter stops moving). */
async function settledEvents(since: Date, args: string[] = []): Promise<DropEventRecord[]> {
  let last = -1;
  for (let i = 0; i < 20; i++) {
    const published = await fleetMetric('i6pn_drop_events_published_total');
    if (published === last) break;
    last = published;
    await sleep(500);
  }
  return observeSince(c.nats!.url, since, args);
}

test.serial('enforce: allowed pairs deliver, every forbidden pair is stopped and its agent counts the reason', async (t) => {
  const before = await counters();
  const suppressed = await fleetMetric('i6pn_drop_events_suppressed_total{cause="budget"}');
  enforcedSince = new Date();
  enforced = await runMatrix(c.endpoints, c.daemons, { oracle: c.oracle, expect: 'policy' });
  const moved = delta(before, await counters());
  t.log('\n' + renderMatrix(enforced));
  t.deepEqual(enforced.unexpected, [], describeUnexpected(enforced));
  t.true(enforced.cells.filter((x) => x.expected.allowed).length >= 10);
  t.deepEqual(checkCounters(enforced, moved, 'enforce'), []);

  // i6pnctl observe: every forbidden probe, with its reason, node, hook and workspaces; nothing about allowed pairs.
  enforcedEvents = await settledEvents(enforcedSince);
  t.is(await fleetMetric('i6pn_drop_events_suppressed_total{cause="budget"}'), suppressed, 'the budget held back events of the matrix');
  t.deepEqual(checkEnforceEvents(enforced, enforcedEvents), []);
  t.log(`${enforcedEvents.length} drop events for ${enforced.cells.filter((x) => !x.expected.allowed).length} forbidden pairs`);
});

test.serial('explain agrees with the kernel on every pair of the matrix: delivered or not, and where and why it stops', async (t) => {
  await mapLimit(enforced.cells, 4, async (cell) => {
    explanations.set(`${cell.src.address}>${cell.dst.address}`, await explainPair(c.nats!.url, `${cell.src.node}/${cell.src.ifname}`, `${cell.dst.node}/${cell.dst.ifname}`));
  });
  t.deepEqual(checkExplanations(enforced, explanations, enforcedEvents), []);
  t.is(explanations.size, enforced.cells.length);
});

test.serial('observe: each filter selects exactly the events it names', async (t) => {
  const all = enforcedEvents;
  const by = (ws: string) => (e: DropEventRecord) => e.src?.workspace === ws || e.dst?.workspace === ws;
  const a1 = c.fabric.endpoint('a1');
  const g2 = c.fabric.endpoint('g2');
  const cases: Array<[string[], (e: DropEventRecord) => boolean]> = [
    [['--workspace', 'globex'], by('globex')],
    [['--region', 'sjc'], (e) => e.region === 'sjc'],
    [['--node', 'ams-2'], (e) => e.node === 'ams-2'],
    [['--reason', 'cross_region,no_i6pn'], (e) => e.reason === 'cross_region' || e.reason === 'no_i6pn'],
    [['--from', 'ams-1/ep-a1'], (e) => e.src?.address === a1.address],
    [['--to', g2.address], (e) => e.dst?.address === g2.address],
    [['--workspace', 'acme', '--node', 'ams-1', '--reason', 'cross_workspace', '--to', `ams-2/${g2.ifname}`], (e) => by('acme')(e) && e.node === 'ams-1' && e.reason === 'cross_workspace' && e.dst?.address === g2.address],
  ];
  const key = (e: DropEventRecord) => JSON.stringify(e);
  for (const [args, select] of cases) {
    const got = await observeSince(c.nats!.url, enforcedSince, args);
    const want = all.filter(select);
    t.true(want.length > 0 && want.length < all.length, `${args.join(' ')} selects ${want.length} of ${all.length}: the case proves nothing`);
    t.deepEqual(got.map(key), want.map(key), args.join(' '));
  }
});

test.serial('prometheus scrapes every agent and its query API returns the drop counters by reason', async (t) => {
  const prom = c.prometheus!;
  const up = await prom.query('up{job="i6pn-agent"}');
  t.deepEqual(up.map((s) => s.metric['node']).sort(), nodes().sort());
  t.true(up.every((s) => s.value[1] === '1'));
  // Every (node, reason) the matrix had to drop is there, at least as large as the matrix made it.
  const want = new Map<string, number>();
  for (const [k, n] of expectedDrops(enforced, 'drop')) {
    const [node, , , reason] = k.split('/');
    const key = `${node ?? ''}/${reason ?? ''}`;
    want.set(key, (want.get(key) ?? 0) + n);
  }
  let missing: string[] = [];
  const deadline = Date.now() + 15_000;
  do {
    const got = new Map<string, number>(
      (await prom.query('sum by (node, reason) (i6pn_packets_total{verdict="drop"})')).map(
        (s) => [`${s.metric['node']}/${s.metric['reason']}`, Number(s.value[1])] as const,
      ),
    );
    missing = [...want].filter(([k, n]) => (got.get(k) ?? 0) < n).map(([k, n]) => `${k} < ${n} (${got.get(k) ?? 'absent'})`);
    if (missing.length === 0) break;
    await new Promise((r) => setTimeout(r, 500));
  } while (Date.now() < deadline);
  t.deepEqual(missing, []);
  t.true(want.size >= 8, `drops expected on ${want.size} node/reason pairs`);
});

test.serial('enforce: a spoofed source from inside a container is dropped and counted', async (t) => {
  const a1 = c.fabric.endpoint('a1');
  const before = await counters();
  for (const [posingAs, dst] of [
    ['a3', 'a2'],
    ['g1', 'g2'],
  ] as const) {
    const got = await spoofUdp(a1, c.fabric.endpoint(posingAs).address, c.daemons.get(dst)!);
    t.is(got.arrivedFrom, undefined, `a1 posing as ${posingAs} reached ${dst}`);
  }
  const moved = delta(before, await counters());
  t.true((moved.get('ams-1/from_endpoint/drop/spoofed_source') ?? 0) >= 2, JSON.stringify([...moved]));
  const honest = await spoofUdp(a1, a1.address, c.daemons.get('a3')!);
  t.is(honest.arrivedFrom, a1.address, 'the same tool with the true source gets through');
});

test.serial('from the fabric: the receiving node drops what its from_fabric hook (TC on these veth uplinks) must, under the model\'s reason', async (t) => {
  const node = c.node('ams-2');
  const reasons = new Set<string>();
  for (const [src, dst] of FABRIC_CASES) {
    const s = c.fabric.endpoint(src);
    const expected = c.oracle.fromFabric(node.name, s.address, c.fabric.endpoint(dst).address);
    reasons.add(expected);
    const before = await counters();
    const got = await injectFromFabric(c.fabric, node, s.address, c.daemons.get(dst)!);
    const moved = delta(before, await counters());
    if (expected === 'pass_private') {
      t.is(got.arrivedFrom, s.address, `${src} → ${dst} from the fabric`);
    } else {
      t.is(got.arrivedFrom, undefined, `${src} → ${dst} from the fabric (${expected}) was delivered`);
      t.true((moved.get(`${node.name}/from_fabric/drop/${expected}`) ?? 0) >= 1, `${src} → ${dst}: ${JSON.stringify([...moved])}`);
    }
  }
  t.deepEqual([...reasons].sort(), ['cross_region', 'cross_workspace', 'not_local', 'pass_private', 'spoofed_source']);
});

test.serial('the local fast path: packets for an endpoint of the node skip its forwarding, and its to_endpoint still decides', async (t) => {
  const forwarded = async (node: string): Promise<number> => {
    const snmp = (await run(['cat', '/proc/net/snmp6'], { netns: c.node(node).netns })).stdout;
    return Number(/^Ip6OutForwDatagrams\s+(\d+)/m.exec(snmp)![1]);
  };
  const d = (n: string) => c.daemons.get(n)!;
  const N = 20;
  const before = await counters();
  const fwd0 = await forwarded('ams-1');
  // Same node (a1 → a2, from_endpoint redirects) and from the fabric (a3 on ams-2 → a1, from_fabric's TC flavour redirects).
  let delivered = 0;
  for (let i = 0; i < N; i++) {
    if ((await udpProbe(d('a1'), d('a2'))).delivered) delivered++;
    if ((await udpProbe(d('a3'), d('a1'))).delivered) delivered++;
  }
  const fwd1 = await forwarded('ams-1');
  // The control: ams-1 forwards what leaves it for another node through its stack.
  for (let i = 0; i < N; i++) await udpProbe(d('a1'), d('a3'));
  const fwd2 = await forwarded('ams-1');
  const moved = delta(before, await counters());
  t.is(delivered, 2 * N);
  t.true(fwd2 - fwd1 >= N, `ams-1 forwarded ${fwd2 - fwd1} packets of ${N} to another node (the control)`);
  t.true(fwd1 - fwd0 < N / 4, `ams-1 forwarded ${fwd1 - fwd0} of the ${2 * N} packets for its own endpoints`);
  t.true((moved.get('ams-1/to_endpoint/pass/pass_private') ?? 0) >= 2 * N, JSON.stringify([...moved]));
});

/**
 * Every membership update the region's agents applied meanwhile took at most a
 * second from the KV write to the maps (the agent observes puts; deletes are
 * measured by the probes alone).
 */
async function appliedWithinASecond(t: ExecutionContext, before: Map<string, { count: number; within: number }>, region: string): Promise<void> {
  for (const n of nodes().filter((x) => c.node(x).region === region)) {
    const a = await applyLatency(c.metricsUrl(n));
    const b = before.get(n)!;
    t.true(a.count > b.count, `${n} applied no update`);
    t.is(a.within - b.within, a.count - b.count, `${n}: some updates took over a second from the store to the maps`);
  }
}

const latencies = async () => new Map(await Promise.all(nodes().map(async (n) => [n, await applyLatency(c.metricsUrl(n))] as const)));

test.serial('an endpoint added becomes reachable within a second, and only to its workspace', async (t) => {
  const lat = await latencies();
  const a5 = await c.addEndpoint({ name: 'a5', workspace: 'acme', node: 'ams-2', i6pn: true });
  // Polling starts once a5's probe daemon runs, a little after a5 existed: the bound is an upper one.
  const pollStart = Date.now();
  const took = await timeUntilDelivery(c.daemons.get('a1')!, c.daemons.get('a5')!, true, 1000);
  t.not(took, undefined, 'a1 → a5 not delivered within a second');
  const sinceReady = pollStart + (took ?? 0) - a5.readyAt;
  t.log(`a1 → a5 delivered at most ${sinceReady} ms after a5 was registered and its container up`);
  t.true(sinceReady <= 1000, `${sinceReady} ms`);
  await appliedWithinASecond(t, lat, 'ams');
  t.true((await udpProbe(c.daemons.get('a5')!, c.daemons.get('a3')!)).delivered, 'a5 → a3 (same workspace, same node)');
  t.false((await udpProbe(c.daemons.get('g1')!, c.daemons.get('a5')!)).delivered, 'g1 → a5 (other workspace)');
  const r = await runMatrix([c.fabric.endpoint('a1'), a5, c.fabric.endpoint('g2'), c.fabric.endpoint('a4')], c.daemons, {
    oracle: c.oracle,
    expect: 'policy',
  });
  t.deepEqual(r.unexpected, [], describeUnexpected(r));
});

test.serial('an endpoint removed stops being reachable within a second, though its container still runs', async (t) => {
  const before = await counters();
  await c.deregister('a5');
  try {
    const took = await timeUntilDelivery(c.daemons.get('a1')!, c.daemons.get('a5')!, false, 1000);
    t.not(took, undefined, 'a1 → a5 still delivered a second after the removal');
    t.log(`a1 → a5 stopped ${took} ms after i6pnctl endpoint remove returned`);
    for (const [s, d] of [
      ['a1', 'a5'],
      ['a5', 'a3'],
      ['a3', 'a5'],
    ] as const) {
      t.false((await udpProbe(c.daemons.get(s)!, c.daemons.get(d)!, 500)).delivered, `${s} → ${d} after removal`);
    }
    const moved = delta(before, await counters());
    t.true((moved.get('ams-1/from_endpoint/drop/unknown_dest') ?? 0) >= 1, JSON.stringify([...moved]));
  } finally {
    await c.removeContainer('a5');
  }
  // The others are untouched.
  t.true((await udpProbe(c.daemons.get('a1')!, c.daemons.get('a3')!)).delivered);
});

test.serial('monitor: the same matrix delivers every pair and the agents count what enforce would drop', async (t) => {
  await Promise.all(nodes().map((n) => c.stopAgent(n)));
  // Monitor mode lets every forbidden packet on to each hook of its path, and its replies too: a bigger budget, so that every one is an event.
  await c.startAgents('monitor', { eventsPerSec: 1000 });
  const before = await counters();
  const suppressed = await fleetMetric('i6pn_drop_events_suppressed_total{cause="budget"}');
  const since = new Date();
  const r = await runMatrix(c.endpoints, c.daemons, { oracle: c.oracle, expect: 'all' });
  const moved = delta(before, await counters());
  t.deepEqual(r.unexpected, [], describeUnexpected(r));
  t.deepEqual(checkCounters(r, moved, 'monitor'), []);
  // Every forbidden probe is a would_drop event at every hook explain says would drop it.
  const events = await settledEvents(since);
  t.is(await fleetMetric('i6pn_drop_events_suppressed_total{cause="budget"}'), suppressed, 'the budget held back events of the matrix');
  t.deepEqual(checkMonitorEvents(r, events, new Map([...explanations].map(([k, v]) => [k, v.answer]))), []);
  // The hook filter, on the hooks monitor mode lets the packets reach.
  const fromFabric = await observeSince(c.nats!.url, since, ['--hook', 'from_fabric,to_endpoint']);
  const want = events.filter((e) => e.hook === 'from_fabric' || e.hook === 'to_endpoint');
  t.true(want.length > 0 && want.length < events.length);
  t.deepEqual(fromFabric.map((e) => JSON.stringify(e)), want.map((e) => JSON.stringify(e)));
  const spoofBefore = await counters();
  const spoof = await spoofUdp(c.fabric.endpoint('a1'), c.fabric.endpoint('a3').address, c.daemons.get('a2')!);
  t.is(spoof.arrivedFrom, c.fabric.endpoint('a3').address, 'monitor lets a spoofed packet through');
  const spoofMoved = delta(spoofBefore, await counters());
  t.true((spoofMoved.get('ams-1/from_endpoint/would_drop/spoofed_source') ?? 0) >= 1, JSON.stringify([...spoofMoved]));
});

test.serial('back to enforce: an agent restart in enforce mode stops forbidden pairs again', async (t) => {
  await Promise.all(nodes().map((n) => c.stopAgent(n)));
  await c.startAgents('enforce');
  const eps = ['a1', 'g1', 'a3', 'a4', 'x1', 'i2'].map((n) => c.fabric.endpoint(n));
  const r = await runMatrix(eps, c.daemons, { oracle: c.oracle, expect: 'policy' });
  t.deepEqual(r.unexpected, [], describeUnexpected(r));
});

/** UDP to argv[1] for argv[2] seconds, as fast as one Python process sends; prints how many. */
const FLOOD = `import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
end = time.time() + float(sys.argv[2]); n = 0
while time.time() < end:
    for _ in range(200):
        try:
            s.sendto(b"x" * 16, (sys.argv[1], 9)); n += 1
        except OSError:
            pass
print(n)`;

test.serial('a flood: drop events stay within the per-CPU budget, and the agent counts every drop it did not sample', async (t) => {
  const node = 'ams-1';
  const a1 = c.fabric.endpoint('a1');
  const g1 = c.fabric.endpoint('g1');
  const drops = async () => [...(await c.counters(node))].filter(([k]) => /\/(drop|would_drop)\//.test(k)).reduce((a, [, n]) => a + n, 0);
  const read = async () => ({
    drops: await drops(),
    events: await c.metric(node, 'i6pn_drop_events_total'),
    published: await c.metric(node, 'i6pn_drop_events_published_total'),
    budget: await c.metric(node, 'i6pn_drop_events_suppressed_total{cause="budget"}'),
    ringFull: await c.metric(node, 'i6pn_drop_events_suppressed_total{cause="ring_full"}'),
    unpublished: (await Promise.all(['queue_full', 'denied', 'error', 'invalid'].map((cause) => c.metric(node, `i6pn_drop_events_unpublished_total{cause="${cause}"}`)))).reduce((a, b) => a + b, 0),
  });
  const b = await read();
  const since = new Date();
  const seconds = 3;
  const sent = Number((await run([PYTHON, '-c', FLOOD, g1.address, String(seconds)], { netns: a1.netns, timeoutMs: 30_000 })).stdout.trim());
  const events = await settledEvents(since, ['--node', node]);
  const a = await read();
  const cpus = availableParallelism();
  const budget = 100; // the agents' --events-per-sec (default)
  t.log(`${sent} datagrams sent in ${seconds} s; ${a.drops - b.drops} dropped, ${events.length} events, ${a.budget - b.budget} past the budget, ${a.ringFull - b.ringFull} lost to a full ring`);
  t.true(a.drops - b.drops >= sent * 0.99 && a.drops - b.drops > 20 * budget * cpus, `the flood was not a flood: ${a.drops - b.drops} drops`);
  // At most the budget per CPU and second (a CPU's window need not start on the second: one more window's worth).
  t.true(events.length <= budget * cpus * (seconds + 1), `${events.length} events in ${seconds} s, over ${budget}/s on ${cpus} CPUs`);
  t.true(events.length >= budget, `only ${events.length} events`);
  t.true(events.every((e) => e.reason === 'cross_workspace' && e.hook === 'from_endpoint' && e.src?.address === a1.address && e.dst?.address === g1.address));
  // Every drop is an event or counted as not sampled; every event read was published, and observe shows each.
  t.is(a.drops - b.drops, a.events - b.events + (a.budget - b.budget) + (a.ringFull - b.ringFull));
  t.is(a.events - b.events, a.published - b.published + (a.unpublished - b.unpublished));
  t.is(a.unpublished - b.unpublished, 0);
  t.is(events.length, a.published - b.published);
});

const SAMPLE = ['a1', 'g1', 'a3', 'a4', 'x1', 'i2'];

test.serial('with every agent stopped, the pinned dataplane keeps enforcing', async (t) => {
  await Promise.all(nodes().map((n) => c.stopAgent(n)));
  const r = await runMatrix(
    SAMPLE.map((n) => c.fabric.endpoint(n)),
    c.daemons,
    { oracle: c.oracle, expect: 'policy' },
  );
  t.deepEqual(r.unexpected, [], describeUnexpected(r));
  t.true(r.cells.some((x) => x.expected.allowed) && r.cells.some((x) => !x.expected.allowed));
  await c.startAgents('enforce');
});

test.serial('with NATS down, the agents keep the last state; when it is back they follow again', async (t) => {
  await c.stopNats();
  const r = await runMatrix(
    SAMPLE.map((n) => c.fabric.endpoint(n)),
    c.daemons,
    { oracle: c.oracle, expect: 'policy' },
  );
  t.deepEqual(r.unexpected, [], describeUnexpected(r));
  await c.restartNats();
  // The agents reconnect by themselves; a new endpoint shows they follow the store again.
  const a6 = await c.addEndpoint({ name: 'a6', workspace: 'acme', node: 'ams-1', i6pn: true });
  const took = await timeUntilDelivery(c.daemons.get('a3')!, c.daemons.get('a6')!, true, 15_000);
  t.not(took, undefined, 'a3 → a6 never delivered after NATS came back');
  t.false((await udpProbe(c.daemons.get('g2')!, c.daemons.get('a6')!)).delivered, 'g2 → a6 (other workspace)');
  t.log(`a3 → a6 delivered ${took} ms after a6 existed (agents reconnecting)`);
});
