/**
 * Fault 7 of issue 16, resource exhaustion, on a fault cluster whose agents
 * run with small maps (EXHAUSTION_AGENT_ARGS: 8 endpoints, 4 local veths, 20
 * drop events a second per CPU). Each part is reported (log, metric, alert
 * evaluated by Prometheus from the deploy's rules), fails closed, and
 * recovers when the pressure goes, with the harness's traffic running:
 *
 *   a. endpoints map full: region ams holds 6 endpoints; two more fill it, a
 *      third (with a container on ams-1) is refused by both agents of the
 *      region: reachable by nobody, reaching nobody, nothing evicted, the
 *      steady flows untouched. One endpoint removed: the refused one gets in
 *      without a restart (timed).
 *   b. local_ifaces full: ams-1's four slots are taken; a fifth veth keeps
 *      its hooks without an entry (i6pn_unhooked_endpoints,
 *      I6pnEndpointsUnhooked) and drops everything both ways. A container
 *      removed frees a slot: bound and reachable (timed).
 *   c. the ring buffer flooded: a forbidden flood of thousands of packets a
 *      second; every one dropped, the events past the budget counted as
 *      suppressed (the kernel's event_stats, i6pn_drop_events_suppressed_total),
 *      the agent the same process and healthy, the steady flows untouched.
 *   d. NATS slow consumer: ams-1's agent paused (SIGSTOP) while membership
 *      changes and a flood for its inbox pile up past the server's
 *      max_pending (64 MiB): the server cuts it off ("Slow Consumer
 *      Detected"). Meanwhile its dataplane stays at its last state
 *      (forbidden flows dropped, allowed ones delivered, the changes not
 *      applied). Resumed (SIGCONT): the loss is counted
 *      (i6pn_nats_disconnects_total, I6pnNatsConnectionLost), it reconnects
 *      and its maps equal the store again (timed).
 *
 * The parts run in this order on one cluster (each leaves what the next
 * needs); runExhaustion runs all four (the soak's entry point).
 */
import { readFileSync } from 'node:fs';
import { connect } from '@nats-io/transport-node';
import { readPinnedEndpoints } from '../helpers/agent-maps.js';
import type { Cluster } from '../fabric/cluster.js';
import { sleep } from '../fabric/exec.js';
import { ProbeDaemon, udpProbe, timeUntilDelivery } from '../fabric/probes.js';
import { Traffic, defaultFlows, figures, mapsVsStore, waitMapsEqualStore, type FaultFigures, type FlowSpec } from './harness.js';
import { loadDeployRules, waitAlert, type AlertState } from './alerts.js';

export const EXHAUSTION_LIMITS = { maxEndpoints: 8, maxLocalIfaces: 4, eventsPerSec: 20 };
/** The agents' flags for fault 7 (upFaultCluster({ agentArgs })). */
export const EXHAUSTION_AGENT_ARGS = [
  '--max-endpoints', String(EXHAUSTION_LIMITS.maxEndpoints),
  '--max-local-ifaces', String(EXHAUSTION_LIMITS.maxLocalIfaces),
  '--events-per-sec', String(EXHAUSTION_LIMITS.eventsPerSec),
];

export interface PartResult {
  figures: FaultFigures;
  /** What did not hold (must be empty). */
  problems: string[];
  /** Alert states seen, by name. */
  alerts: Record<string, AlertState | null>;
}

const REGION = 'ams';
const NODE = 'ams-1';

/** The JSON log lines of an agent's log file whose msg starts with `prefix`. */
export function logLines(c: Cluster, node: string, prefix: string): Array<Record<string, unknown>> {
  const text = readFileSync(c.agents.get(node)!.log, 'utf8');
  return text.split('\n').flatMap((l) => {
    try {
      const j = JSON.parse(l) as Record<string, unknown>;
      return typeof j['msg'] === 'string' && j['msg'].startsWith(prefix) ? [j] : [];
    } catch {
      return [];
    }
  });
}

async function daemon(c: Cluster, name: string): Promise<ProbeDaemon> {
  let d = c.daemons.get(name);
  if (!d) {
    d = await ProbeDaemon.start(c.fabric.endpoint(name), c.fabric.record);
    c.daemons.set(name, d);
  }
  return d;
}

/** UDP probes both ways between `a` and each of `others`: the ones that delivered, as lines. */
async function deliveries(pairs: Array<[ProbeDaemon, ProbeDaemon]>, tries = 3): Promise<string[]> {
  const out: string[] = [];
  for (const [from, to] of pairs) {
    for (let i = 0; i < tries; i++) {
      if ((await udpProbe(from, to, 300)).delivered) out.push(`${from.endpoint.name} -> ${to.endpoint.name}`);
    }
  }
  return out;
}

const inRegionMaps = (c: Cluster, address: string): string[] =>
  c.topology.nodes.filter((n) => n.region === REGION && readPinnedEndpoints(c.node(n.name).bpffs).has(address)).map((n) => n.name);

async function waitFor(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number, problems: string[]): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await check()) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) {
      problems.push(`${what}: not within ${timeoutMs} ms`);
      return -1;
    }
    await sleep(200);
  }
}

async function expectAlert(c: Cluster, node: string, alert: string, want: AlertState | undefined, alerts: Record<string, AlertState | null>, problems: string[]): Promise<void> {
  const s = await waitAlert(c, node, alert, 20_000, want);
  alerts[alert] = s;
  if (s === null) problems.push(`${alert} is not ${want ?? 'pending or firing'} for ${node}`);
}

/** a. The endpoints map full. */
export async function endpointsMapFull(c: Cluster): Promise<PartResult & { recoveryMs: number; refused: string }> {
  const problems: string[] = [];
  const alerts: Record<string, AlertState | null> = {};
  await loadDeployRules(c);
  const ctl = c.ctl!;
  const a1 = await daemon(c, 'a1');
  const a3 = await daemon(c, 'a3');
  const before = new Map(c.topology.nodes.filter((n) => n.region === REGION).map((n) => [n.name, readPinnedEndpoints(c.node(n.name).bpffs)]));
  const fullBefore = await c.metric(NODE, 'i6pn_map_full_total');
  const traffic = await Traffic.start(c, defaultFlows(c));

  // Fill the region's map (6 + 2 = 8), then one more, with a container on ams-1.
  const room = EXHAUSTION_LIMITS.maxEndpoints - before.get(NODE)!.size;
  const fillers: string[] = [];
  for (let i = 0; i < room; i++) fillers.push((await ctl.endpointAdd({ name: `fill${i}`, workspace: 'acme', node: 'ams-2', i6pn: true }, REGION)).address);
  await waitFor('the fillers in every map of the region', () => fillers.every((a) => inRegionMaps(c, a).length === 2), 15_000, problems);
  const e3 = await c.addEndpoint({ name: 'full1', workspace: 'acme', node: NODE, i6pn: true });
  const x = c.daemons.get('full1')!;
  await waitFor('"endpoints map is full" in the log', () => logLines(c, NODE, 'endpoints map is full').length > 0, 15_000, problems);
  if ((await c.metric(NODE, 'i6pn_map_full_total')) <= fullBefore) problems.push('i6pn_map_full_total did not move');
  await expectAlert(c, NODE, 'I6pnMapFull', 'firing', alerts, problems);
  await expectAlert(c, NODE, 'I6pnMapPressure', undefined, alerts, problems);

  // Fails closed: the refused endpoint is in no map, reachable by nobody, reaches nobody; nothing was evicted.
  if (inRegionMaps(c, e3.address).length) problems.push(`the refused endpoint ${e3.address} is in ${inRegionMaps(c, e3.address).join(', ')}`);
  for (const [n, m] of before) {
    const now = readPinnedEndpoints(c.node(n).bpffs);
    for (const a of m.keys()) if (!now.has(a)) problems.push(`${n}: ${a} was evicted`);
  }
  const leaked = await deliveries([[a1, x], [x, a1], [a3, x], [x, a3]]);
  if (leaked.length) problems.push(`the refused endpoint delivered: ${leaked.join(', ')}`);

  // Room: one filler goes; the refused endpoint gets in without a restart.
  const pid = c.agents.get(NODE)!.pid;
  await ctl.endpointRemove(fillers.shift()!);
  const recoveryMs = (await timeUntilDelivery(a1, x, true, 20_000)) ?? -1;
  if (recoveryMs < 0) problems.push('the refused endpoint is not reachable 20 s after room appeared');
  await waitFor('the refused endpoint in both maps of the region', () => inRegionMaps(c, e3.address).length === 2, 10_000, problems);
  if (c.agents.get(NODE)!.pid !== pid) problems.push('the agent was restarted');
  for (const a of fillers) await ctl.endpointRemove(a);
  const tr = await traffic.stop();
  const convergeMs = await waitMapsEqualStore(c, 15_000).catch((e: Error) => (problems.push(e.message), -1));
  return { figures: figures('full endpoints map', { traffic: tr, convergeMs, extra: { recoveryMs } }), problems, alerts, recoveryMs, refused: e3.address };
}

/** b. local_ifaces full on ams-1 (after a.: a1, a2, g1 and full1 hold its four slots). */
export async function localIfacesFull(c: Cluster): Promise<PartResult & { recoveryMs: number }> {
  const problems: string[] = [];
  const alerts: Record<string, AlertState | null> = {};
  await loadDeployRules(c);
  const a1 = await daemon(c, 'a1');
  const a3 = await daemon(c, 'a3');
  const traffic = await Traffic.start(c, defaultFlows(c));
  const fullBefore = logLines(c, NODE, 'local_ifaces is full').length;
  const l1 = await c.addEndpoint({ name: 'veth5', workspace: 'acme', node: NODE, i6pn: true });
  const x = c.daemons.get('veth5')!;
  await waitFor('"local_ifaces is full" in the log', () => logLines(c, NODE, 'local_ifaces is full').length > fullBefore, 15_000, problems);
  await waitFor('i6pn_unhooked_endpoints 1', async () => (await c.metric(NODE, 'i6pn_unhooked_endpoints')) === 1, 15_000, problems);
  await expectAlert(c, NODE, 'I6pnEndpointsUnhooked', undefined, alerts, problems);
  await expectAlert(c, NODE, 'I6pnMapFull', 'firing', alerts, problems);
  const leaked = await deliveries([[a1, x], [x, a1], [a3, x], [x, a3]]);
  if (leaked.length) problems.push(`the unhooked veth delivered: ${leaked.join(', ')}`);

  // Room: full1's container goes (deregistered first: its veth is sealed until it is gone).
  await c.deregister('full1');
  await c.removeContainer('full1');
  const recoveryMs = (await timeUntilDelivery(a1, x, true, 20_000)) ?? -1;
  if (recoveryMs < 0) problems.push('the fifth veth is not reachable 20 s after a slot was freed');
  await waitFor('i6pn_unhooked_endpoints 0', async () => (await c.metric(NODE, 'i6pn_unhooked_endpoints')) === 0, 15_000, problems);
  const tr = await traffic.stop();
  // Back to the cluster's first state (a soak runs the parts again).
  await c.deregister(l1.name);
  await c.removeContainer(l1.name);
  const convergeMs = await waitMapsEqualStore(c, 15_000).catch((e: Error) => (problems.push(e.message), -1));
  return { figures: figures('full local_ifaces', { traffic: tr, convergeMs, extra: { recoveryMs } }), problems, alerts, recoveryMs };
}

/** c. The ring buffer flooded with drop events. */
export async function ringBufferFlood(c: Cluster, pps = 2000, eventsPerSec = EXHAUSTION_LIMITS.eventsPerSec): Promise<PartResult & { dropped: number; sent: number; events: number; suppressed: number }> {
  const problems: string[] = [];
  const alerts: Record<string, AlertState | null> = {};
  const series = {
    drops: 'i6pn_packets_total{hook="from_endpoint",verdict="drop",reason="cross_workspace"}',
    events: 'i6pn_drop_events_total',
    budget: 'i6pn_drop_events_suppressed_total{cause="budget"}',
    ring: 'i6pn_drop_events_suppressed_total{cause="ring_full"}',
  };
  const read = async (): Promise<Record<keyof typeof series, number>> =>
    Object.fromEntries(await Promise.all(Object.entries(series).map(async ([k, s]) => [k, await c.metric(NODE, s)]))) as Record<keyof typeof series, number>;
  const pid = c.agents.get(NODE)!.pid;
  const b = await read();
  const flood: FlowSpec = { name: 'flood-a2-g1', from: 'a2', to: 'g1', allowed: false, why: 'cross-workspace flood', pps };
  const traffic = await Traffic.start(c, [...defaultFlows(c), flood]);
  await sleep(3000);
  const tr = await traffic.stop();
  await sleep(1500);
  const a = await read();
  const sent = tr.flows.find((f) => f.name === flood.name)!.sent;
  const d = { drops: a.drops - b.drops, events: a.events - b.events, budget: a.budget - b.budget, ring: a.ring - b.ring };
  // Every flood packet dropped, and (with the steady cross-workspace flow a1-g1 on the same hook and reason) counted.
  if (d.drops < sent) problems.push(`${sent} flood packets sent, ${d.drops} cross_workspace drops counted`);
  if (d.budget <= 0) problems.push('no event suppressed past the budget: the flood did not exhaust it');
  // Every drop is an event or a suppressed one (on this node's hooks the flood's reason is counted once per packet).
  const limit = eventsPerSec * 2 /* CPUs */ * (tr.durationMs / 1000 + 2) * 2; /* every hook that drops on the way */
  if (d.events > limit) problems.push(`${d.events} events read in ${tr.durationMs} ms, more than the budget allows (${limit})`);
  const svc = c.agents.get(NODE)!;
  if (svc.pid !== pid || !svc.alive()) problems.push('the agent did not survive the flood');
  const health = await fetch(`${c.metricsUrl(NODE).replace(/\/metrics$/, '')}/healthz`, { signal: AbortSignal.timeout(3000) }).catch(() => null);
  if (!health?.ok) problems.push(`/healthz answers ${health?.status ?? 'nothing'} after the flood`);
  return {
    figures: figures('ring buffer flood', { traffic: tr, convergeMs: 0, extra: { floodSent: sent, drops: d.drops, events: d.events, suppressedBudget: d.budget, suppressedRingFull: d.ring } }),
    problems,
    alerts,
    dropped: d.drops,
    sent,
    events: d.events,
    suppressed: d.budget + d.ring,
  };
}

/** The subjects ams-1's agent subscribes to, from the server it is connected to (/connz). */
async function agentSubscriptions(c: Cluster, node: string): Promise<{ server: string; subjects: string[] } | null> {
  for (const s of c.natsCluster?.servers ?? []) {
    try {
      const r = await fetch(`${s.monitorUrl}/connz?subs=detail&limit=1024`, { signal: AbortSignal.timeout(2000) });
      const body = (await r.json()) as { connections?: Array<{ name?: string; subscriptions_list_detail?: Array<{ subject: string }> }> };
      const conn = body.connections?.find((x) => x.name === `i6pn-agent@${node}`);
      if (conn) return { server: s.name, subjects: (conn.subscriptions_list_detail ?? []).map((x) => x.subject) };
    } catch {
      /* a server down: the next one */
    }
  }
  return null;
}

/** d. The agent cut off by NATS as a slow consumer. */
export async function slowConsumer(c: Cluster): Promise<PartResult & { pausedMs: number; resyncMs: number; cutAfterMs: number }> {
  const problems: string[] = [];
  const alerts: Record<string, AlertState | null> = {};
  await loadDeployRules(c);
  const ctl = c.ctl!;
  const svc = c.agents.get(NODE)!;
  const disconnectsBefore = await c.metric(NODE, 'i6pn_nats_disconnects_total');
  const subs = await agentSubscriptions(c, NODE);
  const target = subs?.subjects.find((s) => s.endsWith('.*'));
  if (!subs || !target) {
    problems.push(`no wildcard inbox subscription of i6pn-agent@${NODE} found (${JSON.stringify(subs)})`);
    return { figures: figures('slow consumer', { traffic: { durationMs: 0, flows: [], allowedSent: 0, allowedLost: 0, allowedLongestGapMs: 0, forbiddenSent: 0, forbiddenDelivered: 0, marks: {} }, convergeMs: -1 }), problems, alerts, pausedMs: 0, resyncMs: -1, cutAfterMs: -1 };
  }
  const mapBefore = readPinnedEndpoints(c.node(NODE).bpffs);
  const traffic = await Traffic.start(c, defaultFlows(c));
  const nc = await connect({ servers: c.nats!.url.split(','), name: 'i6pn-fault-flood', maxPingOut: 10 });
  const stoppedAt = Date.now();
  process.kill(svc.pid, 'SIGSTOP');
  let cutAfterMs = -1;
  const added: string[] = [];
  try {
    // Membership changes the paused agent must not apply, then must catch up with.
    for (let i = 0; i < 2; i++) added.push((await ctl.endpointAdd({ name: `slow${i}`, workspace: 'acme', node: 'ams-2', i6pn: true }, REGION)).address);
    await ctl.endpointRemove(added.shift()!);
    // 70 MiB for its inbox: more than the server's max_pending (64 MiB) for one client.
    const chunk = new Uint8Array(1024 * 1024 - 1024);
    const subject = target.replace(/\*$/, 'flood');
    for (let i = 0; i < 70; i++) {
      nc.publish(subject, chunk);
      if (i % 8 === 7) await nc.flush();
    }
    await nc.flush();
    cutAfterMs = await waitFor(`the server cuts i6pn-agent@${NODE} off`, async () => (await agentSubscriptions(c, NODE)) === null, 20_000, problems);
    if (cutAfterMs >= 0) cutAfterMs = Date.now() - stoppedAt;
    const slowLogged = (c.natsCluster?.servers ?? []).some((s) => s.service && readFileSync(s.service.log, 'utf8').includes('Slow Consumer Detected'));
    if (!slowLogged) problems.push('no nats-server logged "Slow Consumer Detected"');
    // Frozen at its last state meanwhile: nothing of the changes applied.
    const frozen = readPinnedEndpoints(c.node(NODE).bpffs);
    if ([...frozen.keys()].sort().join() !== [...mapBefore.keys()].sort().join()) problems.push('the paused agent\'s map changed');
  } finally {
    process.kill(svc.pid, 'SIGCONT');
    await nc.close().catch(() => {});
  }
  const pausedMs = Date.now() - stoppedAt;
  const resyncMs = await waitMapsEqualStore(c, 30_000).catch((e: Error) => (problems.push(`after SIGCONT: ${e.message}`), -1));
  const tr = await traffic.stop();
  if ((await c.metric(NODE, 'i6pn_nats_disconnects_total')) <= disconnectsBefore) problems.push('i6pn_nats_disconnects_total did not move');
  if (logLines(c, NODE, 'NATS connection lost').length === 0) problems.push('no "NATS connection lost" in the agent\'s log');
  if ((await c.metric(NODE, 'i6pn_nats_connected')) !== 1) problems.push('i6pn_nats_connected is not 1 after the resync');
  await expectAlert(c, NODE, 'I6pnNatsConnectionLost', 'firing', alerts, problems);
  for (const a of added) await ctl.endpointRemove(a);
  if (!svc.alive()) problems.push('the agent died');
  const left = await mapsVsStore(c);
  if (left.length) await waitMapsEqualStore(c, 15_000).catch((e: Error) => problems.push(e.message));
  return {
    figures: figures('slow consumer', { traffic: tr, convergeMs: resyncMs, extra: { pausedMs, cutAfterMs, resyncMs } }),
    problems,
    alerts,
    pausedMs,
    resyncMs,
    cutAfterMs,
  };
}

/** All four parts, in order (the soak's entry point; the cluster needs EXHAUSTION_AGENT_ARGS). */
export async function runExhaustion(c: Cluster): Promise<PartResult[]> {
  const out: PartResult[] = [];
  out.push(await endpointsMapFull(c));
  out.push(await localIfacesFull(c));
  out.push(await ringBufferFlood(c));
  out.push(await slowConsumer(c));
  return out;
}
