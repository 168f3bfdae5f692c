/**
 * Probe behind a finding of bench/README.md, not part of `make bench`: how
 * the nats-server in use treats a consumer like the agent's on an endpoints
 * stream of N messages (default 1 million).
 *
 * 1. Time to create a consumer. On the first layout's single bucket
 *    (i6pn_endpoints, keys `<region>.<ws>.<ep>`): a push consumer with no
 *    filter, with the filter `<region>.>` and DeliverAll, and with
 *    LastPerSubject (the agent before 0.2.0). On a region's own bucket
 *    (i6pn_endpoints_<region>, keys `<ws>.<ep>`, the same N keys): a pull
 *    consumer over the whole stream, DeliverAll, no filter (the layout the
 *    agent reads from 0.2.0).
 * 2. How fast the snapshot itself arrives to the first layout's agent consumer
 *    (a bound on that agent's initial sync).
 * 3. Delivery latency of new messages at 5 thousand a second to that consumer,
 *    once it has delivered the snapshot: the part of the agent's apply
 *    latency that is the server's.
 *
 *   node --import=tsx bench/probes/nats-consumer.ts [N]
 */
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';

import { ENDPOINTS_HISTORY, LEGACY_ENDPOINTS_BUCKET, endpointsBucket } from '../../lib/schema.js';
import { startNats } from '../../test/helpers/nats.js';
import { percentile } from '../lib/results.js';

const N = Number(process.argv[2] ?? 1_000_000);
const RATE = 5000;
const SECONDS = 20;
const STREAM = `KV_${LEGACY_ENDPOINTS_BUCKET}`;
const FILTER = `$KV.${LEGACY_ENDPOINTS_BUCKET}.probe.>`;
const REGION_BUCKET = endpointsBucket('probe');
const REGION_STREAM = `KV_${REGION_BUCKET}`;

async function main(): Promise<void> {
  const nats = await startNats({ host: '127.0.0.1' });
  const nc = await connect({ servers: nats.url });
  try {
    await new Kvm(jetstream(nc)).create(LEGACY_ENDPOINTS_BUCKET, { history: 1 });
    await new Kvm(jetstream(nc)).create(REGION_BUCKET, { history: ENDPOINTS_HISTORY });
    const jsm = await jetstreamManager(nc, { timeout: 300_000 });
    const payload = new TextEncoder().encode('x'.repeat(300));
    for (const [bucket, prefix, stream] of [[LEGACY_ENDPOINTS_BUCKET, 'probe.', STREAM], [REGION_BUCKET, '', REGION_STREAM]] as const) {
      for (let i = 0; i < N; i += 5000) {
        for (let j = i; j < Math.min(N, i + 5000); j++) nc.publish(`$KV.${bucket}.${prefix}${(j % 64).toString(16).padStart(8, '0')}.${j.toString(16).padStart(16, '0')}`, payload);
        await nc.flush();
      }
      while ((await jsm.streams.info(stream)).state.messages < N) await sleep(100);
      console.log(`${N} messages in ${stream}`);
    }

    const configs = [
      { name: 'no filter, DeliverAll', filter: undefined, policy: DeliverPolicy.All },
      { name: `filter ${FILTER}, DeliverAll`, filter: FILTER, policy: DeliverPolicy.All },
      { name: `filter ${FILTER}, LastPerSubject (the agent before 0.2.0)`, filter: FILTER, policy: DeliverPolicy.LastPerSubject },
    ];
    for (const c of configs) {
      const inbox = `_INBOX.probe.${Math.random().toString(36).slice(2)}`;
      const sub = nc.subscribe(inbox, { callback: () => {} });
      const t0 = performance.now();
      await jsm.consumers.add(STREAM, {
        ...(c.filter ? { filter_subject: c.filter } : {}),
        deliver_policy: c.policy,
        ack_policy: AckPolicy.None,
        deliver_subject: inbox,
        flow_control: true,
        idle_heartbeat: 30_000_000_000,
        mem_storage: true,
      });
      console.log(`create consumer, ${c.name}: ${((performance.now() - t0) / 1000).toFixed(2)} s`);
      sub.unsubscribe();
    }
    {
      const t0 = performance.now();
      const pull = await jsm.consumers.add(REGION_STREAM, { deliver_policy: DeliverPolicy.All, ack_policy: AckPolicy.None, mem_storage: true });
      console.log(`create consumer, ${REGION_STREAM}, pull, no filter, DeliverAll (the agent from 0.2.0): ${((performance.now() - t0) / 1000).toFixed(2)} s`);
      await jsm.consumers.delete(REGION_STREAM, pull.name);
    }

    // Delivery latency to the agent's kind of consumer, after its snapshot.
    const js = jetstream(nc, { timeout: 300_000 });
    const consumer = await js.consumers.getPushConsumer(STREAM, { filter_subjects: FILTER, deliver_policy: DeliverPolicy.LastPerSubject });
    const tSnap = performance.now();
    const messages = await consumer.consume();
    let snapshot = 0;
    const lat: number[] = [];
    const dec = new TextDecoder();
    void (async () => {
      for await (const m of messages) {
        const t = dec.decode(m.data);
        if (t.startsWith('x')) snapshot++;
        else lat.push(performance.timeOrigin + performance.now() - Number(t));
      }
    })();
    while (snapshot < N) await sleep(50);
    const snapSeconds = (performance.now() - tSnap) / 1000;
    console.log(`snapshot of ${N} delivered to the consumer in ${snapSeconds.toFixed(1)} s (${Math.round(N / snapSeconds)}/s), nothing done per message`);
    await sleep(2000);
    const enc = new TextEncoder();
    const start = performance.now();
    let n = 0;
    while (performance.now() - start < SECONDS * 1000) {
      const due = Math.floor(((performance.now() - start) / 1000) * RATE);
      for (; n < due; n++) nc.publish(`$KV.${LEGACY_ENDPOINTS_BUCKET}.probe.new.${n}`, enc.encode(String(performance.timeOrigin + performance.now())));
      await sleep(1);
    }
    await sleep(2000);
    messages.stop();
    console.log(
      `delivery at ${RATE}/s for ${SECONDS} s after the snapshot: ${lat.length} of ${n}, p50 ${percentile(lat, 50).toFixed(1)} ms, p99 ${percentile(lat, 99).toFixed(1)} ms, max ${Math.max(...lat).toFixed(1)} ms`,
    );
  } finally {
    await nc.close();
    await nats.destroy();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
