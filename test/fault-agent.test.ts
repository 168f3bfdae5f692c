/**
 * Issue 16, fault 1: the agent SIGKILLed during its snapshot, in the middle
 * of a batch and during churn, under steady allowed and forbidden traffic
 * (test/faults/scenario-agent.ts).
 */
import { runFaultSuite } from './faults/suite.js';
import { scenarios } from './faults/scenario-agent.js';

runFaultSuite(scenarios);
