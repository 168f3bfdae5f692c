/**
 * Fault 7 in the soak's registry: the parts that run on the soak's cluster
 * (agents with their default sizes, --events-per-sec 100): the ring buffer
 * flooded and the NATS slow consumer. The full maps (parts a and b) need
 * agents started with small maps (EXHAUSTION_AGENT_ARGS, a teardown away
 * from the default), so only test/fault-exhaustion.test.ts runs them.
 */
import { ringBufferFlood, slowConsumer, type PartResult } from './exhaustion.js';
import type { FaultFigures } from './harness.js';
import type { FaultScenario } from './scenarios.js';

/** A part's figures, with what did not hold among the violations. */
const withProblems = (r: PartResult): FaultFigures => ({ ...r.figures, violations: [...r.figures.violations, ...r.problems] });

export const scenarios: FaultScenario[] = [
  { name: 'exhaustion-ring-buffer', row: 'full maps', run: async (c) => withProblems(await ringBufferFlood(c, 2000, 100)) },
  { name: 'exhaustion-slow-consumer', row: 'full maps', run: async (c) => withProblems(await slowConsumer(c)) },
];

