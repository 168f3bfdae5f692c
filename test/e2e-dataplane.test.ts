/**
 * The BPF programs on the two-region fabric, loaded and filled by the harness
 * (no agent, no NATS): the isolation matrix in enforce mode against the policy
 * model, with the drop counters of every forbidden pair; the same matrix in
 * monitor mode (everything delivers, would-drops counted) as its control; and
 * spoofing from inside a container. test/e2e.test.ts does the same with the
 * agents and i6pnctl.
 */
import test from 'ava';
import { Cluster } from './fabric/cluster.js';
import { acquireFabricLock } from './fabric/state.js';
import { checkCounters, delta, snapshot } from './fabric/counters.js';
import { describeUnexpected, renderMatrix, runMatrix } from './fabric/matrix.js';
import { injectFromFabric, spoofUdp } from './fabric/probes.js';
import { FABRIC_CASES } from './fabric/topology.js';

let releaseLock: (() => void) | undefined;
let cluster: Cluster;
const nodes = (): string[] => [...cluster.fabric.nodes.keys()];
const counters = () => snapshot(nodes(), (n) => cluster.staticCounters(n));

test.before(async () => {
  releaseLock = await acquireFabricLock();
  cluster = await Cluster.up({ dataplane: 'static', mode: 'enforce' });
});

test.after.always(async () => {
  try {
    await cluster?.down();
  } finally {
    releaseLock?.();
  }
});

test.serial('enforce: allowed pairs deliver, every forbidden pair is stopped and counted under its reason', async (t) => {
  const before = await counters();
  const r = await runMatrix(cluster.endpoints, cluster.daemons, { oracle: cluster.oracle, expect: 'policy' });
  const moved = delta(before, await counters());
  t.log('\n' + renderMatrix(r));
  t.deepEqual(r.unexpected, [], describeUnexpected(r));
  t.true(r.cells.some((c) => c.expected.allowed) && r.cells.some((c) => !c.expected.allowed));
  t.deepEqual(checkCounters(r, moved, 'enforce'), []);
});

test.serial('enforce: a spoofed source from inside a container is dropped at its veth', async (t) => {
  const a1 = cluster.fabric.endpoint('a1');
  const before = await counters();
  for (const [posingAs, dst] of [
    ['a3', 'a2'], // same workspace, the destination on the same node
    ['g1', 'g2'], // another workspace's member, to its own workspace across nodes
  ] as const) {
    const got = await spoofUdp(a1, cluster.fabric.endpoint(posingAs).address, cluster.daemons.get(dst)!);
    t.is(got.arrivedFrom, undefined, `a1 posing as ${posingAs} reached ${dst}`);
  }
  const moved = delta(before, await counters());
  t.true((moved.get('ams-1/from_endpoint/drop/spoofed_source') ?? 0) >= 2, JSON.stringify([...moved]));
  // The same tool with the true source gets through: the drop is the dataplane's doing.
  const honest = await spoofUdp(a1, a1.address, cluster.daemons.get('a3')!);
  t.is(honest.arrivedFrom, a1.address);
});

test.serial('enforce: frames put onto the fabric are judged by the receiving node\'s XDP hook, under the model\'s reason', async (t) => {
  const node = cluster.node('ams-2');
  const reasons = new Set<string>();
  for (const [src, dst] of FABRIC_CASES) {
    const s = cluster.fabric.endpoint(src);
    const expected = cluster.oracle.fromFabric(node.name, s.address, cluster.fabric.endpoint(dst).address);
    reasons.add(expected);
    const nodeCounters = () => snapshot([node.name], (n) => cluster.staticCounters(n));
    const before = await nodeCounters();
    const got = await injectFromFabric(cluster.fabric, node, s.address, cluster.daemons.get(dst)!);
    const moved = delta(before, await nodeCounters());
    if (expected === 'pass_private') t.is(got.arrivedFrom, s.address, `${src} → ${dst}`);
    else {
      t.is(got.arrivedFrom, undefined, `${src} → ${dst} (${expected}) was delivered`);
      t.true((moved.get(`${node.name}/from_fabric/drop/${expected}`) ?? 0) >= 1, `${src} → ${dst}: ${JSON.stringify([...moved])}`);
    }
  }
  t.is(reasons.size, FABRIC_CASES.length, 'one case per reason');
});

test.serial('monitor: the same matrix delivers every pair and counts what enforce would drop', async (t) => {
  await cluster.loadStatic('monitor');
  const before = await counters();
  const r = await runMatrix(cluster.endpoints, cluster.daemons, { oracle: cluster.oracle, expect: 'all' });
  const moved = delta(before, await counters());
  t.deepEqual(r.unexpected, [], describeUnexpected(r));
  t.deepEqual(checkCounters(r, moved, 'monitor'), []);

  const a1 = cluster.fabric.endpoint('a1');
  const spoofBefore = await counters();
  const got = await spoofUdp(a1, cluster.fabric.endpoint('a3').address, cluster.daemons.get('a2')!);
  t.is(got.arrivedFrom, cluster.fabric.endpoint('a3').address, 'monitor lets the spoofed packet through');
  const spoofMoved = delta(spoofBefore, await counters());
  t.true((spoofMoved.get('ams-1/from_endpoint/would_drop/spoofed_source') ?? 0) >= 1);
});

test.serial('back to enforce: forbidden pairs stop again', async (t) => {
  await cluster.loadStatic('enforce');
  const eps = ['a1', 'g1', 'a3', 'a4', 'x1'].map((n) => cluster.fabric.endpoint(n));
  const r = await runMatrix(eps, cluster.daemons, { oracle: cluster.oracle, expect: 'policy' });
  t.deepEqual(r.unexpected, [], describeUnexpected(r));
});
