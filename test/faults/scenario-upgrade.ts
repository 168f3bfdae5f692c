/**
 * Fault 2: agent upgrade under traffic. Every agent is replaced by one
 * running a new build of the programs (build/bpf/i6pn-marker.bpf.o: one more
 * map, `make build` makes it), through the TC replace on the pinned
 * dataplane, then back to the shipped build. No program-less window: every
 * packet delivered into ams-1's containers is counted by their to_endpoint
 * hook (pass), and the new build's own map shows it is attached and runs.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, type Cluster } from '../fabric/cluster.js';
import { sleep } from '../fabric/exec.js';
import { Traffic, defaultFlows, figures, waitMapsEqualStore, type FaultFigures } from './harness.js';
import { attachedProgram, mapFirstU64, pinnedPackets } from './pinned-counters.js';
import type { FaultScenario } from './scenarios.js';

export const NEW_BUILD = join(REPO_ROOT, 'build/bpf/i6pn-marker.bpf.o');
const WATCHED = 'ams-1';

/** Replace `node`'s agent (SIGTERM, as a DaemonSet rollout does) by one with `extraArgs`. */
async function replaceAgent(c: Cluster, node: string, extraArgs: string[]): Promise<void> {
  await c.stopAgent(node);
  await c.startAgent(node, c.mode, { extraArgs });
}

async function upgrade(c: Cluster, log: (m: string) => void): Promise<FaultFigures> {
  if (!existsSync(NEW_BUILD)) throw new Error(`${NEW_BUILD} is missing: run make build (it builds the upgrade's new programs)`);
  const nodes = [...c.fabric.nodes.keys()];
  const passBefore = pinnedPackets(c, WATCHED, 'to_endpoint', 'pass');
  const traffic = await Traffic.start(c, defaultFlows(c));
  // The pass counter sampled all along: its longest stand-still while traffic flows.
  let sampling = true;
  let stallMs = 0;
  const sampler = (async () => {
    let last = pinnedPackets(c, WATCHED, 'to_endpoint', 'pass');
    let since = Date.now();
    while (sampling) {
      await sleep(20);
      const n = pinnedPackets(c, WATCHED, 'to_endpoint', 'pass');
      if (n < last) throw new Error(`the pinned pass counter went back from ${last} to ${n}`);
      if (n > last) {
        stallMs = Math.max(stallMs, Date.now() - since);
        since = Date.now();
        last = n;
      }
    }
  })();
  const violations: string[] = [];
  const extra: Record<string, number> = {};
  try {
    await sleep(1000);
    const t0 = Date.now();
    for (const n of nodes) await replaceAgent(c, n, ['--object', NEW_BUILD]);
    extra['upgradeMs'] = Date.now() - t0;
    traffic.mark('upgraded');
    await sleep(1000);
    const prog = await attachedProgram(c, WATCHED, c.fabric.endpoint('a1').ifname);
    const marker = prog.maps.get('build_marker');
    if (marker === undefined) violations.push(`the new build is not attached on ${WATCHED} (program ${prog.name} #${prog.id} has maps ${[...prog.maps.keys()].join(', ')})`);
    else extra['newBuildPackets'] = await mapFirstU64(marker);
    if (marker !== undefined && extra['newBuildPackets'] === 0) violations.push('the new build is attached but has seen no packet');
    log(`upgraded ${nodes.length} agents in ${extra['upgradeMs']} ms; the new build on ${WATCHED} counted ${extra['newBuildPackets'] ?? 0} packets`);
    const t1 = Date.now();
    for (const n of nodes) await replaceAgent(c, n, []);
    extra['downgradeMs'] = Date.now() - t1;
    const back = await attachedProgram(c, WATCHED, c.fabric.endpoint('a1').ifname);
    if (back.maps.has('build_marker')) violations.push('the shipped build did not replace the new one');
    await sleep(1000);
  } finally {
    sampling = false;
    await sampler;
  }
  const tr = await traffic.stop();
  const passDelta = pinnedPackets(c, WATCHED, 'to_endpoint', 'pass') - passBefore;
  const deliveredHere = tr.flows.filter((f) => f.allowed && c.fabric.endpoint(f.to).node === WATCHED).reduce((a, f) => a + f.delivered, 0);
  extra['passCounted'] = passDelta;
  extra['deliveredHere'] = deliveredHere;
  extra['passStallMs'] = stallMs;
  if (passDelta < deliveredHere) {
    violations.push(`${deliveredHere - passDelta} packets reached ${WATCHED}'s containers without its to_endpoint program counting them: a window with no program attached`);
  }
  const convergeMs = await waitMapsEqualStore(c, 30_000);
  return figures('upgrade', { traffic: tr, convergeMs, extra, violations });
}

export const scenarios: FaultScenario[] = [{ name: 'upgrade', row: 'upgrade', run: upgrade }];
