/**
 * The agent's drop-event publisher (agent/events.ts) on its real NATS
 * connection (agent/store-client.ts) and a real nats-server that goes away
 * and comes back: published at once while connected; held in the bounded
 * queue while not, the oldest dropped and counted when it overflows; what
 * the queue held published on reconnect, in order; what cannot be
 * published counted by cause. The kernel side is test/dataplane-golden's,
 * the whole chain test/agent.test.ts's and the fabric's.
 */
import test from 'ava';
import { connect } from '@nats-io/transport-node';
import { makeEndpointAddress } from '../lib/address.js';
import { decodeDropEvent, eventsSubject } from '../lib/events.js';
import type { DropEvent } from '../agent/bpf/dataplane.js';
import { DropEventPublisher, MonotonicClock } from '../agent/events.js';
import { createLogger } from '../agent/log.js';
import { AgentMetrics } from '../agent/metrics.js';
import { AgentStore } from '../agent/store-client.js';
import { startNats } from './helpers/nats.js';
import { agentInboxPrefix } from '../lib/schema.js';

const A = makeEndpointAddress(0x1234_5678, 0x0a01, new Uint8Array([0, 0, 0, 0, 0, 0, 0, 1]));
const B = makeEndpointAddress(0x0bad_cafe, 0x0a01, new Uint8Array([0, 0, 0, 0, 0, 0, 0, 2]));

function drop(sport: number): DropEvent {
  return {
    tsNs: process.hrtime.bigint(),
    ipv6: true,
    src: A,
    dst: B,
    ifindex: 7,
    len: 62,
    hook: 'from_endpoint',
    verdict: 'drop',
    reason: 'cross_workspace',
    proto: 17,
    ports: { src: sport, dst: 7001 },
    icmp: null,
  };
}

const metricOf = async (m: AgentMetrics, series: string): Promise<number> => {
  const line = (await m.render()).body.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : NaN;
};

test('published at once; queued while NATS is away (the oldest dropped past the limit); the rest published on reconnect, in order', async (t) => {
  const nats = await startNats();
  t.teardown(() => nats.destroy());
  const log = createLogger('error', {});
  const metrics = new AgentMetrics({ version: 't', node: 'n1', region: 'ams', mode: 'enforce' }, log);
  let publisher: DropEventPublisher | null = null;
  const store = await AgentStore.connect({
    servers: [nats.url],
    creds: undefined,
    name: 'i6pn-agent@n1',
    inboxPrefix: agentInboxPrefix('n1'),
    log,
    onConnected: () => {},
    onReconnect: () => publisher?.flush(),
  });
  t.teardown(() => store.close());
  publisher = new DropEventPublisher({
    node: 'n1',
    region: 'ams',
    sink: store,
    // A is a live local member of this node's region, B is not a member.
    membership: { member: (a) => (a === A ? { i6pn: true, local: true } : null), localIfname: () => 'ep-a' },
    metrics,
    log,
    queueLimit: 5,
  });

  const received: number[] = [];
  const watch = async () => {
    const nc = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
    const sub = nc.subscribe(eventsSubject('ams', 'n1'));
    void (async () => {
      for await (const m of sub) {
        const d = decodeDropEvent(m.data);
        if (!d.ok) throw new Error(d.message);
        received.push(d.record.sport!);
      }
    })();
    await nc.flush();
    return nc;
  };
  let nc = await watch();
  t.teardown(() => nc.close());

  publisher.take(drop(1));
  const until = async (what: string, ok: () => boolean) => {
    for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 50));
    t.true(ok(), what);
  };
  await until('the first event', () => received.length === 1);
  t.is(await metricOf(metrics, 'i6pn_drop_events_published_total'), 1);

  await nats.stop();
  await until('the agent sees the connection go', () => !store.connected);
  for (let sport = 2; sport <= 9; sport++) publisher.take(drop(sport));
  t.is(publisher.queued, 5);
  t.is(await metricOf(metrics, 'i6pn_drop_events_unpublished_total{cause="queue_full"}'), 3);
  await nats.start();
  await nc.close();
  nc = await watch();
  await until('the queue flushed on reconnect', () => received.length === 6);
  t.deepEqual(received, [1, 5, 6, 7, 8, 9]);
  t.is(publisher.queued, 0);
  t.is(await metricOf(metrics, 'i6pn_drop_events_published_total'), 6);
  t.is(await metricOf(metrics, 'i6pn_drop_events_total'), 9);

  // A record the dataplane could not decode is counted, never published.
  publisher.invalid(new Error('drop event of 64 bytes, expected 72'));
  t.is(await metricOf(metrics, 'i6pn_drop_events_unpublished_total{cause="invalid"}'), 1);
});

test('the kernel monotonic clock in wall time, to the microsecond', (t) => {
  const clock = new MonotonicClock();
  const now = process.hrtime.bigint();
  const iso = clock.iso(now);
  t.regex(iso, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
  t.true(Math.abs(Date.parse(iso) - Date.now()) < 500, iso);
  t.is(Date.parse(clock.iso(now - 2_000_000_000n)), Date.parse(iso) - 2000);
  // Microseconds survive.
  t.is(clock.iso(now + 1000n).slice(0, 26) === iso.slice(0, 26), false);
});
