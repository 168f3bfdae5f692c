/**
 * Issue 16, fault 6: a node reboot (pins gone, veths stay) under
 * and traffic (test/faults/scenario-reboot.ts).
 */
import { runFaultSuite } from './faults/suite.js';
import { scenarios } from './faults/scenario-reboot.js';

runFaultSuite(scenarios);
