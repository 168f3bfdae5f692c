/**
 * Issue 16, fault 5: store garbage under traffic (test/faults/fuzz.ts says
 * what is written and what must hold). Root, real parts: the fabric, a
 * 3-server NATS cluster, one agent per node, Prometheus with the deploy's
 * rules. A failure prints the seed; I6PN_FUZZ_SEED=<seed> replays its garbage.
 */
import test from 'ava';
import type { Cluster } from './fabric/cluster.js';
import { acquireFabricLock } from './fabric/state.js';
import { runFuzz } from './faults/fuzz.js';
import { summary, upFaultCluster } from './faults/harness.js';

let release: (() => void) | undefined;
let c: Cluster | undefined;
/** How long the fault cluster took to come up (logged by the first test: the file's fixed cost). */
let upMs = 0;

test.before(async () => {
  release = await acquireFabricLock(60 * 60_000);
  const t0 = Date.now();
  c = await upFaultCluster();
  upMs = Date.now() - t0;
});

test.after.always(async () => {
  try {
    await c?.down();
  } finally {
    release?.();
  }
});

test.serial('fuzz: garbage in the store is rejected, counted by reason and never applied; the agents never restart; valid churn is enforced', async (t) => {
  t.log(`fault cluster up in ${upMs} ms`);
  const r = await runFuzz(c!, { log: (m) => t.log(m) });
  const seed = `(seed ${r.seed}: I6PN_FUZZ_SEED=${r.seed} replays it)`;
  t.log(summary(r.figures));
  t.log(`rejections expected ${JSON.stringify(r.expected)}, tunnels ${JSON.stringify(r.expectedTunnels)}; counted ${JSON.stringify(r.counted)}`);
  t.deepEqual(r.appliedInvalid, [], `invalid entries applied ${seed}`);
  t.deepEqual(r.problems, [], seed);
  t.deepEqual(r.figures.violations, [], seed);
  for (const reason of Object.keys(r.expected)) t.true(r.expected[reason]! > 0, `the run wrote garbage of reason ${reason} ${seed}`);
  t.true(r.figures.ackedWrites > 0 && r.figures.traffic.forbiddenSent > 0);
});
