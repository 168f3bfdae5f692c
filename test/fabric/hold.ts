/**
 * A fabric that waits to be killed: the fixture of the clean-up tests. Prints
 * its run id on stdout when built, then waits (a Ctrl-C or SIGTERM must remove
 * everything; a SIGKILL leaves it to `demo.sh down`).
 */
import { Fabric } from './fabric.js';
import { ProbeDaemon } from './probes.js';
import { planAddresses } from './provision.js';
import type { Topology } from './topology.js';

const topology: Topology = {
  regions: ['r1'],
  nodes: [
    { name: 'n1', region: 'r1' },
    { name: 'n2', region: 'r1' },
  ],
  workspaces: ['w1'],
  endpoints: [
    { name: 'e1', workspace: 'w1', node: 'n1', i6pn: true },
    { name: 'e2', workspace: 'w1', node: 'n2', i6pn: true },
  ],
};

const fabric = await Fabric.create({ nodes: topology.nodes, routeLocal: true });
for (const e of planAddresses(topology)) await ProbeDaemon.start(await fabric.addEndpoint(e), fabric.record);
process.stdout.write(`${fabric.runId}\n`);
setInterval(() => {}, 1 << 30);
