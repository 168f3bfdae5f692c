/**
 * Probe behind "nats-server version" in bench/README.md, not part of `make
 * bench`: how the nats-server in use (NATS_SERVER_BIN, default the one `make
 * deps` fetched) copes with many agents' consumers at once on a KV bucket of
 * N keys (default 1 million, values of ~250 bytes of JSON).
 *
 * (a) bucket of history 1, keys `<ws>.<ep>`: K ordered push consumers at once
 *     (default 32), DeliverAll, no filter: time to create each, time for each
 *     to receive all N (only the first D of them consume, default all K);
 * (b) bucket of history 5, keys `<region>.<ws>.<ep>`, all in one region: K
 *     ordered push consumers at once with the agent's filter `<region>.>` and
 *     LastPerSubject (the agent's snapshot): time to create each (then they
 *     are deleted, never read);
 * (c) one consumer alone of each kind: time to create it and to receive all N
 *     (a client that does nothing with the messages: the floor for any agent).
 *
 * Consumers are made the agent's way (`js.consumers.getPushConsumer`, read as
 * an iterator), each on a connection of its own; times count from the common
 * start. Everything runs in this one process (on a small machine the client
 * competes with the server for CPU: compare versions on the same machine).
 *
 *   NATS_SERVER_BIN=/usr/sbin/nats-server \
 *   node --import=tsx bench/probes/nats-concurrent-consumers.ts [N] [K] [D]
 *
 * K=0 runs (c) alone (a minute: repeat it to see the noise).
 */
import { execFileSync } from 'node:child_process';
import { DeliverPolicy, jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';

import { startNats } from '../../test/helpers/nats.js';
import { natsServerBin } from '../../test/helpers/nats-server-bin.js';
import { percentile } from '../lib/results.js';

const N = Number(process.argv[2] ?? 1_000_000);
const K = Number(process.argv[3] ?? 32);
const D = Number(process.argv[4] ?? K);
const REGION = 'eu-west';
/** JetStream API timeout: a consumer may take minutes to be created. */
const API_TIMEOUT = 600_000;
/** Give up waiting for deliveries after this long (and say how far they got). */
const DELIVERY_DEADLINE_MS = Number(process.env.PROBE_DELIVERY_DEADLINE_S ?? 600) * 1000;

/** Connection status events of the consumers' connections since the last report. */
const events = new Map<string, number>();

async function main(): Promise<void> {
  const version = execFileSync(natsServerBin(), ['--version'], { encoding: 'utf8' }).trim();
  console.log(`${version}; N=${N}, K=${K} concurrent consumers, D=${D} of them consuming in (a)`);
  const nats = await startNats({ host: '127.0.0.1' });
  const nc = await connect({ servers: nats.url });
  const jsm = await jetstreamManager(nc, { timeout: API_TIMEOUT });
  const conns = await Promise.all(Array.from({ length: Math.max(1, K) }, () => connect({ servers: nats.url })));
  // A client the server finds slow, or that finds the server stale, reconnects: a request in flight then gets
  // no reply (its API call times out). Counted per case.
  for (const c of conns) {
    void (async () => {
      for await (const s of c.status()) if (s.type !== 'ping') events.set(s.type, (events.get(s.type) ?? 0) + 1);
    })();
  }
  try {
    // (a) and (c): history 1, no filter, DeliverAll.
    const A = 'probe_a';
    await new Kvm(jetstream(nc)).create(A, { history: 1 });
    await write(nc, jsm, A, (i) => `${ws(i)}.${ep(i)}`);
    const soloA = await consumers([conns[0]!], `KV_${A}`, { deliver_policy: DeliverPolicy.All }, 1);
    report('(c) one consumer, no filter, DeliverAll', soloA);
    if (K > 0) {
      const manyA = await consumers(conns, `KV_${A}`, { deliver_policy: DeliverPolicy.All }, D);
      report(`(a) ${K} consumers at once, no filter, DeliverAll (${D} consuming)`, manyA);
    }
    await jsm.streams.delete(`KV_${A}`);

    // (b) and (c): history 5, one region, filter <region>.>, LastPerSubject.
    const B = 'probe_b';
    await new Kvm(jetstream(nc)).create(B, { history: 5 });
    await write(nc, jsm, B, (i) => `${REGION}.${ws(i)}.${ep(i)}`);
    const opts = { filter_subjects: `$KV.${B}.${REGION}.>`, deliver_policy: DeliverPolicy.LastPerSubject };
    const soloB = await consumers([conns[0]!], `KV_${B}`, opts, 1);
    report(`(c) one consumer, filter ${REGION}.>, LastPerSubject`, soloB);
    if (K > 0) {
      const manyB = await consumers(conns, `KV_${B}`, opts, 0);
      report(`(b) ${K} consumers at once, filter ${REGION}.>, LastPerSubject (created only)`, manyB);
    }
  } finally {
    await Promise.all(conns.map((c) => c.close()));
    await nc.close();
    await nats.destroy();
  }
}

const ws = (i: number): string => (i % 1000).toString(16).padStart(8, '0');
const ep = (i: number): string => i.toString(16).padStart(16, '0');

/** N keys published to the bucket's subjects (what kv.put sends, without waiting for each ack), then counted in the stream. */
async function write(nc: NatsConnection, jsm: JetStreamManager, bucket: string, key: (i: number) => string): Promise<void> {
  const enc = new TextEncoder();
  const created = new Date().toISOString();
  const t0 = performance.now();
  for (let i = 0; i < N; i += 5000) {
    for (let j = i; j < Math.min(N, i + 5000); j++) {
      const value = JSON.stringify({ v: 1, workspace: ws(j), endpoint: ep(j), node: `node-${j % 100}`, address: `fd12:3456:789a:${ws(j).slice(4)}:${ep(j).match(/.{4}/g)!.join(':')}`, created, labels: { app: 'probe', tier: 'x'.repeat(49) } });
      nc.publish(`$KV.${bucket}.${key(j)}`, enc.encode(value));
    }
    await nc.flush();
  }
  let stored = 0;
  for (let last = -1, still = 0; stored < N; ) {
    stored = (await jsm.streams.info(`KV_${bucket}`)).state.messages;
    if (stored === last && ++still > 50) throw new Error(`the stream holds ${stored} of ${N} messages and no more arrive`);
    if (stored !== last) still = 0;
    last = stored;
    if (stored < N) await sleep(100);
  }
  console.log(`wrote ${N} keys to ${bucket} in ${secs(t0)} s`);
}

interface Run {
  created: number[];
  delivered: number[];
  /** Messages received by each consumer still short of N at the deadline. */
  short: number[];
  /** Creations that failed (the JetStream API timeout is API_TIMEOUT): when and why. */
  failed: string[];
}

/**
 * One ordered push consumer per connection, all at once; the first `consuming` of them read
 * until they have N messages, the others are deleted once created.
 */
async function consumers(conns: NatsConnection[], stream: string, opts: object, consuming: number): Promise<Run> {
  const run: Run = { created: [], delivered: [], short: [], failed: [] };
  const t0 = performance.now();
  const deadline = t0 + DELIVERY_DEADLINE_MS;
  await Promise.all(
    conns.map(async (c, i) => {
      const js = jetstream(c, { timeout: API_TIMEOUT });
      let consumer;
      try {
        consumer = await js.consumers.getPushConsumer(stream, opts);
      } catch (err) {
        run.failed.push(`${((performance.now() - t0) / 1000).toFixed(1)} s: ${(err as Error).message}`);
        return;
      }
      run.created.push((performance.now() - t0) / 1000);
      if (i < consuming) {
        const messages = await consumer.consume();
        const stop = setTimeout(() => messages.stop(), Math.max(0, deadline - performance.now()));
        let n = 0;
        for await (const m of messages) {
          n++;
          if (n >= N) break;
        }
        clearTimeout(stop);
        messages.stop();
        if (n >= N) run.delivered.push((performance.now() - t0) / 1000);
        else run.short.push(n);
      }
      await consumer.delete().catch(() => {});
    }),
  );
  return run;
}

function report(name: string, r: Run): void {
  const f = (xs: number[]): string => (xs.length ? `p50 ${percentile(xs, 50).toFixed(2)} s, max ${Math.max(...xs).toFixed(2)} s` : '-');
  console.log(`${name}:\n  created:   ${f(r.created)} (${r.created.length})`);
  if (r.delivered.length || r.short.length) console.log(`  all ${N} received: ${f(r.delivered)} (${r.delivered.length})`);
  if (r.failed.length) console.log(`  creation failed: ${r.failed.join('; ')}`);
  if (r.short.length) console.log(`  short of ${N} at the ${DELIVERY_DEADLINE_MS / 1000} s deadline: ${r.short.join(', ')}`);
  if (events.size) console.log(`  connection events: ${[...events].map(([k, v]) => `${k} ${v}`).join(', ')}`);
  events.clear();
}

const secs = (t0: number): string => ((performance.now() - t0) / 1000).toFixed(1);

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
