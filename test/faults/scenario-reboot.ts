/**
 * Fault 6: a node reboots as far as the dataplane goes: its agent dies and
 * its bpffs pins are gone (the pin directory removed) while its veths and
 * routes stay. The restarted agent rebuilds the dataplane from the store.
 * Measured: the window in which the node's endpoints are unreachable (the
 * longest gap of the flows into and out of it); nothing forbidden passes in
 * it (the new programs attach with empty maps: they fail closed until filled).
 */
import { rmSync } from 'node:fs';
import type { Cluster } from '../fabric/cluster.js';
import { sleep } from '../fabric/exec.js';
import { killAgent } from './agent-control.js';
import { Traffic, defaultFlows, figures, waitMapsEqualStore, type FaultFigures } from './harness.js';
import type { FaultScenario } from './scenarios.js';

const NODE = 'ams-2';

async function reboot(c: Cluster, log: (m: string) => void): Promise<FaultFigures> {
  const traffic = await Traffic.start(c, defaultFlows(c));
  try {
    await sleep(1000);
    await killAgent(c, NODE);
    rmSync(c.node(NODE).bpffs, { recursive: true, force: true });
    traffic.mark('pins-gone');
    await sleep(1000);
    const t0 = Date.now();
    await c.startAgent(NODE);
    const readyMs = Date.now() - t0;
    const convergeMs = readyMs + (await waitMapsEqualStore(c, 60_000));
    await sleep(1000);
    const tr = await traffic.stop();
    const touching = tr.flows.filter((f) => f.allowed && [f.from, f.to].some((e) => c.fabric.endpoint(e).node === NODE));
    const unreachableMs = Math.max(0, ...touching.map((f) => f.longestGapMs));
    log(`${NODE} rebuilt from the store: agent ready in ${readyMs} ms; its endpoints unreachable for ${unreachableMs} ms`);
    return figures('reboot', {
      traffic: tr,
      convergeMs,
      extra: { readyMs, unreachableMs, lostTouchingNode: touching.reduce((a, f) => a + f.lost, 0) },
      // The rebuilt dataplane starts empty: the node's own flows stop until its maps are filled (the window measured).
      allowedLossBudget: Number.MAX_SAFE_INTEGER,
    });
  } finally {
    await traffic.close();
  }
}

export const scenarios: FaultScenario[] = [{ name: 'reboot', row: 'reboot', run: reboot }];
