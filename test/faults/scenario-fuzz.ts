/** Fault 5 in the soak's registry: store garbage (test/faults/fuzz.ts), a new seed each run (logged). */
import { runFuzz } from './fuzz.js';
import type { FaultScenario } from './scenarios.js';

export const scenarios: FaultScenario[] = [
  {
    name: 'fuzz-store-garbage',
    row: 'fuzz',
    run: async (c, log) => (await runFuzz(c, { log })).figures,
  },
];
