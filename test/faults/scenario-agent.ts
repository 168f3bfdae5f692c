/**
 * Fault 1: the agent is SIGKILLed while it catches up with a large backlog
 * (its snapshot: as soon as it starts reading, and in the middle of applying
 * a batch) and during churn, then restarted. The pinned dataplane forwards
 * while it is away: no allowed packet lost, nothing forbidden delivered;
 * the figure is the time until its maps equal the store again.
 */
import { connectStore } from '../../lib/store.js';
import { addEndpoint, removeEndpoint } from '../../controller/store/endpoints.js';
import type { Cluster } from '../fabric/cluster.js';
import { mapLimit, sleep } from '../fabric/exec.js';
import { agentLogged, killAgent, pinnedEndpointCount, pollUntil, startAgentNoWait } from './agent-control.js';
import { Churn, Traffic, defaultFlows, figures, waitMapsEqualStore, type FaultFigures } from './harness.js';
import type { FaultScenario } from './scenarios.js';

/** Endpoints of the backlog that makes the snapshot long enough to be hit (I6PN_FAULT_BULK). */
export const BULK = Number(process.env.I6PN_FAULT_BULK ?? 1500);
const NODE = 'ams-2';
const CONVERGE_MS = 60_000;

/**
 * `n` endpoints of workspace globex on ams-1, written straight to the store
 * (setup, not the writes under test: i6pnctl would take minutes).
 */
export async function bulkAdd(c: Cluster, n: number): Promise<string[]> {
  const store = await connectStore({ servers: c.nats!.url.split(',') });
  try {
    const recs = await mapLimit(Array.from({ length: n }, (_, i) => i), 16, () =>
      addEndpoint(store, { workspace: 'globex', region: 'ams', node: 'ams-1', ifname: (a) => `bk${Buffer.from(a.subarray(10)).toString('hex')}` }),
    );
    return recs.map((r) => r.address);
  } finally {
    await store.close();
  }
}

export async function bulkRemove(c: Cluster, addresses: readonly string[]): Promise<void> {
  const store = await connectStore({ servers: c.nats!.url.split(',') });
  try {
    await mapLimit([...addresses], 16, (a) => removeEndpoint(store, a));
  } finally {
    await store.close();
  }
}

/**
 * Kill the agent of NODE while it catches up with BULK endpoints written
 * while it was down: `start` as soon as it logs that it reads them, `mid-batch`
 * once its map holds some of them and not all.
 */
async function killDuringCatchUp(c: Cluster, when: 'start' | 'mid-batch', log: (m: string) => void): Promise<FaultFigures> {
  const traffic = await Traffic.start(c, defaultFlows(c));
  try {
    await sleep(500);
    // A poll can miss a batch on a loaded machine (the agent applied the whole
    // backlog between two reads): then the agent is killed again and the next
    // attempt writes another backlog, up to three attempts.
    const backlog: string[] = [];
    let before = 0;
    let target = 0;
    let atKill = 0;
    let hit = false;
    for (let attempt = 1; attempt <= 3 && !(hit && atKill < target); attempt++) {
      await killAgent(c, NODE);
      before = pinnedEndpointCount(c, NODE);
      const t0 = Date.now();
      backlog.push(...(await bulkAdd(c, BULK)));
      log(`${NODE}'s agent down; ${BULK} endpoints written in ${Date.now() - t0} ms (attempt ${attempt})`);
      target = before + BULK;
      const { logFrom } = startAgentNoWait(c, NODE);
      const reading = (): boolean =>
        agentLogged(c, NODE, 'reading every endpoint of the region', logFrom) || agentLogged(c, NODE, 'following the endpoint updates', logFrom);
      hit = when === 'start' ? await pollUntil(reading, 60_000) : await pollUntil(() => pinnedEndpointCount(c, NODE) > before, 60_000, 1);
      atKill = pinnedEndpointCount(c, NODE);
    }
    await killAgent(c, NODE);
    traffic.mark('killed');
    const violations = hit && atKill < target ? [] : [`the kill missed the catch-up in 3 attempts (${when}: map had ${atKill} of ${target})`];
    log(`killed ${NODE}'s agent ${when === 'start' ? 'as it started reading' : 'mid-batch'}: its map held ${atKill - before} of the ${BULK} new endpoints`);
    await sleep(1000);
    const restartedAt = Date.now();
    await c.startAgent(NODE);
    const convergeMs = (await waitMapsEqualStore(c, CONVERGE_MS)) + (Date.now() - restartedAt);
    await bulkRemove(c, backlog);
    await waitMapsEqualStore(c, CONVERGE_MS);
    const tr = await traffic.stop();
    return figures(`sigkill-${when === 'start' ? 'snapshot' : 'mid-batch'}`, {
      traffic: tr,
      convergeMs,
      extra: { backlog: BULK, appliedAtKill: atKill - before },
      violations,
    });
  } finally {
    await traffic.close();
  }
}

async function killDuringChurn(c: Cluster, log: (m: string) => void): Promise<FaultFigures> {
  const traffic = await Traffic.start(c, defaultFlows(c));
  const churn = new Churn(c, { region: 'ams' });
  try {
    churn.start();
    await sleep(3000);
    await killAgent(c, 'ams-1');
    const downAt = Date.now();
    traffic.mark('killed');
    await sleep(3000);
    await c.startAgent('ams-1');
    const downMs = Date.now() - downAt;
    log(`ams-1's agent down ${downMs} ms during churn`);
    await sleep(2000);
    const cr = await churn.stop({ boundMs: downMs + 10_000 });
    const convergeMs = await waitMapsEqualStore(c, CONVERGE_MS);
    const tr = await traffic.stop();
    return figures('sigkill-churn', { traffic: tr, churn: cr, convergeMs, extra: { downMs } });
  } finally {
    await churn.stop({ boundMs: 0 }).catch(() => undefined);
    await traffic.close();
  }
}

export const scenarios: FaultScenario[] = [
  { name: 'sigkill-snapshot', row: 'SIGKILL', run: (c, log) => killDuringCatchUp(c, 'start', log) },
  { name: 'sigkill-mid-batch', row: 'SIGKILL', run: (c, log) => killDuringCatchUp(c, 'mid-batch', log) },
  { name: 'sigkill-churn', row: 'SIGKILL', run: killDuringChurn },
];
