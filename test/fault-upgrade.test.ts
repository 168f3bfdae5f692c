/**
 * Issue 16, fault 2: the agents upgraded to a new build of the programs and
 * back under steady traffic (test/faults/scenario-upgrade.ts).
 */
import { runFaultSuite } from './faults/suite.js';
import { scenarios } from './faults/scenario-upgrade.js';

runFaultSuite(scenarios);
