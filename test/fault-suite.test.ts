/**
 * Issue 16, faults under traffic, on one fault cluster (agents, a 3-server
 * NATS cluster with R3 buckets, Prometheus) to keep `make test` short:
 *   1 SIGKILL    the agent killed as it starts reading a backlog, mid-batch, during churn (scenario-agent.ts)
 *   2 upgrade    every agent replaced by a new build of the programs and back (scenario-upgrade.ts)
 *   3 NATS       meta and stream leaders killed during churn; all of NATS down 30 s (scenario-nats.ts)
 *   4 partition  one node cut from NATS: STALE, alert, healed (scenario-partition.ts)
 *   6 reboot     pins gone, veths kept, rebuilt from the store (scenario-reboot.ts)
 * One fault: npx ava test/fault-suite.test.ts --match '*upgrade*'
 */
import { runFaultSuite } from './faults/suite.js';
import { scenarios as agent } from './faults/scenario-agent.js';
import { scenarios as nats } from './faults/scenario-nats.js';
import { scenarios as partition } from './faults/scenario-partition.js';
import { scenarios as reboot } from './faults/scenario-reboot.js';
import { scenarios as upgrade } from './faults/scenario-upgrade.js';

runFaultSuite([...agent, ...upgrade, ...nats, ...partition, ...reboot]);
