/**
 * One ava test per scenario on one fault cluster per file, under the fabric
 * lock: each asserts that its guarantees held (no violations) and logs its
 * figures' one-line summary.
 */
import test from 'ava';
import type { Cluster } from '../fabric/cluster.js';
import { acquireFabricLock } from '../fabric/state.js';
import { summary, upFaultCluster } from './harness.js';
import type { FaultScenario } from './scenarios.js';

export function runFaultSuite(scenarios: readonly FaultScenario[], opts: { agentArgs?: string[] } = {}): void {
  let cluster: Cluster | undefined;
  let release: (() => void) | undefined;
  test.before(async () => {
    release = await acquireFabricLock();
    cluster = await upFaultCluster(opts.agentArgs ? { agentArgs: opts.agentArgs } : {});
  });
  test.after.always(async () => {
    try {
      await cluster?.down();
    } finally {
      release?.();
    }
  });
  for (const s of scenarios) {
    test.serial(`${s.row}: ${s.name}`, async (t) => {
      t.timeout(5 * 60_000);
      const f = await s.run(cluster!, (m) => t.log(m));
      t.log(summary(f));
      t.deepEqual(f.violations, [], summary(f));
    });
  }
}
