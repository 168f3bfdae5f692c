/**
 * Fault 3: NATS leader loss and a full outage, during churn and traffic.
 *  - leader loss: the JetStream meta leader is killed (SIGKILL) and brought
 *    back, then the leader of the ams endpoints bucket's stream: agents and
 *    i6pnctl go on by themselves (the churn driver retries a failed write as
 *    a new one), no acknowledged write is lost; the figures are the time to
 *    a new leader and the writers' longest outage.
 *  - outage: all three servers stopped for I6PN_FAULT_OUTAGE_S (default 30)
 *    seconds: the dataplane stays at its last state (allowed flows, forbidden
 *    dropped), then the agents catch up and sweep (maps == store).
 * R3 survives one server, so one server is down at a time in the first.
 */
import type { Cluster } from '../fabric/cluster.js';
import { sleep } from '../fabric/exec.js';
import { Churn, Traffic, defaultFlows, endpointsStream, figures, waitMapsEqualStore, type FaultFigures } from './harness.js';
import type { FaultScenario } from './scenarios.js';

export const OUTAGE_S = Number(process.env.I6PN_FAULT_OUTAGE_S ?? 30);
const STREAM = endpointsStream('ams');

/** Kill server `i`, wait for `leaderOf` to name another live server; ms it took. Then restart `i` and let it catch up. */
async function killAndReplace(c: Cluster, i: number, leaderOf: () => Promise<{ index: number } | null>): Promise<number> {
  const nc = c.natsCluster!;
  const t0 = Date.now();
  await nc.killServer(i);
  let ms = -1;
  while (Date.now() - t0 < 60_000) {
    const l = await leaderOf();
    if (l && l.index !== i) {
      ms = Date.now() - t0;
      break;
    }
    await sleep(50);
  }
  if (ms < 0) throw new Error(`no new leader in 60 s after killing nats ${nc.server(i).name}`);
  await sleep(1500);
  await nc.startServer(i);
  await sleep(2000);
  return ms;
}

async function leaderLoss(c: Cluster, log: (m: string) => void): Promise<FaultFigures> {
  const nc = c.natsCluster;
  if (!nc) throw new Error('the leader-loss fault needs Cluster.up({natsCluster: 3})');
  const traffic = await Traffic.start(c, defaultFlows(c));
  const churn = new Churn(c, { region: 'ams' });
  try {
    churn.start();
    await sleep(2500);
    const meta = await nc.waitForMetaLeader(30_000);
    traffic.mark('meta-killed');
    const metaRecoverMs = await killAndReplace(c, meta.index, () => nc.metaLeader());
    log(`meta leader ${meta.name} killed: a new one in ${metaRecoverMs} ms; ${meta.name} back`);
    const sl = await nc.waitForStreamLeader(STREAM, 30_000);
    traffic.mark('stream-leader-killed');
    const killedAt = Date.now();
    const streamRecoverMs = await killAndReplace(c, sl.index, () => nc.streamLeader(STREAM));
    log(`${STREAM} leader ${sl.name} killed: a new one in ${streamRecoverMs} ms; ${sl.name} back`);
    // The writers recovered by themselves: writes started after the last kill are acknowledged.
    const writeRecoverMs = await churn.ackedSince(killedAt, 2, 90_000);
    const cr = await churn.stop({ boundMs: 15_000 });
    if (cr.failed) log(`${cr.failed} writes failed (retried as new ones): ${cr.errors.join(' | ')}`);
    const convergeMs = await waitMapsEqualStore(c, 60_000);
    const tr = await traffic.stop();
    return figures('leader-loss', {
      traffic: tr,
      churn: cr,
      convergeMs,
      extra: { metaRecoverMs, streamRecoverMs, writeRecoverMs, failedWrites: cr.failed },
      violations: writeRecoverMs < 0 ? ['no write acknowledged within 90 s of the stream leader\'s loss'] : [],
    });
  } finally {
    await churn.stop({ boundMs: 0 }).catch(() => undefined);
    await traffic.close();
  }
}

async function outage(c: Cluster, log: (m: string) => void): Promise<FaultFigures> {
  const nc = c.natsCluster;
  if (!nc) throw new Error('the outage fault needs Cluster.up({natsCluster: 3})');
  const traffic = await Traffic.start(c, defaultFlows(c));
  const churn = new Churn(c, { region: 'ams' });
  try {
    churn.start();
    await sleep(2500);
    traffic.mark('nats-down');
    await nc.stopAll();
    await sleep(OUTAGE_S * 1000);
    const upAt = Date.now();
    traffic.mark('nats-up');
    await nc.startAll();
    await nc.waitForStreamLeader(STREAM, 60_000);
    // Recovered for writers: writes started after the restart are acknowledged.
    const writeRecoverMs = await churn.ackedSince(upAt, 2, 90_000);
    log(`NATS down ${OUTAGE_S} s; writes acknowledged again ${writeRecoverMs} ms after the restart`);
    const cr = await churn.stop({ boundMs: OUTAGE_S * 1000 + 30_000 });
    if (cr.failed) log(`${cr.failed} writes failed (retried as new ones): ${cr.errors.join(' | ')}`);
    const convergeMs = await waitMapsEqualStore(c, 60_000);
    const tr = await traffic.stop();
    return figures('nats-outage', {
      traffic: tr,
      churn: cr,
      convergeMs,
      extra: { outageS: OUTAGE_S, writeRecoverMs, failedWrites: cr.failed },
      violations: writeRecoverMs < 0 ? ['no write acknowledged within 90 s of the restart'] : [],
    });
  } finally {
    await churn.stop({ boundMs: 0 }).catch(() => undefined);
    await traffic.close();
  }
}

export const scenarios: FaultScenario[] = [
  { name: 'nats-leader-loss', row: 'leader loss', run: leaderLoss },
  { name: 'nats-outage', row: 'leader loss', run: outage },
];
