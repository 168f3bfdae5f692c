/**
 * Issue 16, fault 3: the JetStream meta leader and the endpoints stream's
 * leader killed during churn, and a full NATS outage
 * (test/faults/scenario-nats.ts).
 */
import { runFaultSuite } from './faults/suite.js';
import { scenarios } from './faults/scenario-nats.js';

runFaultSuite(scenarios);
