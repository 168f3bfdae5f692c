/**
 * Issue 16, fault 7: resource exhaustion under traffic (test/faults/exhaustion.ts
 * says what each part does and what must hold). Root, real parts: the
 * fabric, a 3-server NATS cluster, agents with small maps, Prometheus with
 * the deploy's rules. The parts run in order on one cluster.
 */
import test, { type ExecutionContext } from 'ava';
import type { Cluster } from './fabric/cluster.js';
import { acquireFabricLock } from './fabric/state.js';
import { EXHAUSTION_AGENT_ARGS, endpointsMapFull, localIfacesFull, ringBufferFlood, slowConsumer, type PartResult } from './faults/exhaustion.js';
import { summary, upFaultCluster } from './faults/harness.js';

let release: (() => void) | undefined;
let c: Cluster | undefined;
/** How long the fault cluster took to come up (logged by the first test: the file's fixed cost). */
let upMs = 0;

test.before(async () => {
  release = await acquireFabricLock(60 * 60_000);
  const t0 = Date.now();
  c = await upFaultCluster({ agentArgs: EXHAUSTION_AGENT_ARGS });
  upMs = Date.now() - t0;
});

test.after.always(async () => {
  try {
    await c?.down();
  } finally {
    release?.();
  }
});

function judge(t: ExecutionContext, r: PartResult): void {
  t.log(summary(r.figures));
  t.log(`alerts: ${JSON.stringify(r.alerts)}`);
  t.deepEqual(r.problems, []);
  t.deepEqual(r.figures.violations, []);
}

test.serial('a. endpoints map full: logged, counted, alerted; the refused endpoint reaches nobody and nobody reaches it, nothing evicted; it gets in once there is room, without a restart', async (t) => {
  t.log(`fault cluster up in ${upMs} ms`);
  const r = await endpointsMapFull(c!);
  judge(t, r);
  t.true(r.recoveryMs >= 0 && r.recoveryMs < 10_000, `recovered in ${r.recoveryMs} ms`);
});

test.serial('b. local_ifaces full: the extra veth drops everything both ways, counted as unhooked and alerted; bound and reachable once a slot is free', async (t) => {
  const r = await localIfacesFull(c!);
  judge(t, r);
  t.true(r.recoveryMs >= 0, `recovered in ${r.recoveryMs} ms`);
});

test.serial('c. ring buffer flooded by a forbidden flood: every packet dropped, the events past the budget counted, the agent healthy', async (t) => {
  const r = await ringBufferFlood(c!);
  judge(t, r);
  t.true(r.sent > 1000, `flood of ${r.sent} packets`);
});

test.serial('d. NATS slow consumer: the paused agent is cut off, frozen at its last state meanwhile; counted, alerted; it reconnects and re-syncs', async (t) => {
  const r = await slowConsumer(c!);
  judge(t, r);
  t.true(r.resyncMs >= 0, `re-synced in ${r.resyncMs} ms`);
});
