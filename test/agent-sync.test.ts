/**
 * The agent's membership pipeline in one process, with the real parts: a
 * nats-server, the region's endpoints bucket, the reader, the sync and the
 * follower, and the dataplane's maps loaded into the kernel (not pinned, no
 * interfaces). What it proves:
 *
 * - a full read makes the map equal the store and records the position in
 *   sync_state;
 * - a restart resumes after that revision: only the changes since are read
 *   (no full read), and a delete lost from the stream is swept by the
 *   background reconcile that follows;
 * - the fallback to a full read when the position is unusable (the bucket was
 *   replaced, or the revision lies beyond the stream), with the sweep;
 * - the background reconcile never undoes a concurrent update;
 * - the reader keeps at most two pull requests' worth of bytes in flight,
 *   however slow the agent (bounded memory on a large snapshot).
 *
 * Needs root (BPF maps) like the rest of the suite.
 */
import test from 'ava';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { join } from 'node:path';
import { formatAddress } from '../lib/address.js';
import { ENDPOINTS_HISTORY, endpointsBucket } from '../lib/schema.js';
import { Dataplane } from '../agent/bpf/dataplane.js';
import { createLogger } from '../agent/log.js';
import { AgentMetrics } from '../agent/metrics.js';
import { MembershipSync, streamId } from '../agent/sync.js';
import { MembershipFollower } from '../agent/watch.js';
import { StreamReader } from '../agent/reader.js';
import { REPO_ROOT, startNats, type NatsServer } from './helpers/nats.js';
import { eventually } from './helpers/agent-env.js';
import { endpointJson, newEndpoint, type TestEndpoint } from './helpers/endpoints.js';

const REGION = 'sync-test';
const REGION_ID = 0x5e11;
const NODE = 'node-a';
const WS = [0x0a0a0001, 0x0a0a0002];
const OBJECT = join(REPO_ROOT, 'build/bpf/i6pn.bpf.o');

let nats: NatsServer;
let nc: NatsConnection;
let jsm: JetStreamManager;
let kv: KV;
let dp: Dataplane;

type Ep = TestEndpoint;
const newEp = (ws = WS[0]!): Ep => newEndpoint(ws, REGION_ID);
const record = (e: Ep, over: Record<string, unknown> = {}): string => endpointJson(e, { name: REGION, id: REGION_ID }, over);

async function putAll(eps: Ep[]): Promise<void> {
  const js = (await import('@nats-io/jetstream')).jetstream(nc);
  for (let i = 0; i < eps.length; i += 500) await Promise.all(eps.slice(i, i + 500).map((e) => js.publish(`$KV.${endpointsBucket(REGION)}.${e.key}`, record(e))));
}

/** The store's live endpoints of the region, by canonical address. */
async function storeView(): Promise<Set<string>> {
  const out = new Set<string>();
  for await (const k of await kv.keys()) {
    const e = await kv.get(k);
    if (e && e.operation === 'PUT') out.add((JSON.parse(e.string()) as { address: string }).address);
  }
  return out;
}

function mapView(): Set<string> {
  const out = new Set<string>();
  for (const chunk of dp.endpointAddresses()) for (const a of chunk) out.add(formatAddress(a));
  return out;
}

const sameSet = (a: Set<string>, b: Set<string>): boolean => a.size === b.size && [...a].every((x) => b.has(x));

interface Agent {
  sync: MembershipSync;
  follower: MembershipFollower;
  metrics: AgentMetrics;
  initial: Promise<void>;
  logs: Array<Record<string, unknown>>;
}

/** The agent's membership side, as main.ts wires it, over the shared dataplane. */
function startAgent(opts: { reconcileIntervalMs?: number } = {}): Agent {
  const logs: Array<Record<string, unknown>> = [];
  const log = createLogger('info', {}, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
  const metrics = new AgentMetrics({ version: 'test', node: NODE, region: REGION, mode: 'enforce' }, log);
  const sync = new MembershipSync({ map: dp, node: NODE, region: REGION, regionId: REGION_ID, ifindexOf: () => undefined, onLocalsChanged: () => {}, metrics, log });
  let done!: () => void;
  const initial = new Promise<void>((r) => (done = r));
  const follower = new MembershipFollower({
    nc,
    jsm,
    region: REGION,
    regionId: REGION_ID,
    sync,
    metrics,
    log,
    reconcileIntervalMs: opts.reconcileIntervalMs ?? 3_600_000,
    position: () => dp.readSyncState(),
    adoptedLocals: () => [],
    onInitialSync: () => done(),
    reader: { heartbeatMs: 1000 },
  });
  follower.start();
  return { sync, follower, metrics, initial, logs };
}

async function counter(a: Agent, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await a.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => (x.labels as Record<string, unknown>)[k] === val));
  return Number(v?.value ?? 0);
}

test.before(async () => {
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  jsm = await jetstreamManager(nc);
  kv = await new Kvm(nc).create(endpointsBucket(REGION), { history: ENDPOINTS_HISTORY });
  dp = await Dataplane.open({ object: OBJECT, maxEndpoints: 65_536 });
});

test.after.always(async () => {
  dp?.close();
  await nc?.close();
  await nats?.destroy();
});

test.serial('a full read makes the map equal the store and records the position; a restart resumes after it and reads only what changed', async (t) => {
  const eps = Array.from({ length: 3000 }, (_, i) => newEp(WS[i % 2]));
  await putAll(eps);
  const a = startAgent();
  await a.initial;
  t.true(sameSet(mapView(), await storeView()), 'map equals store after the full read');
  t.is(await counter(a, 'i6pn_membership_starts_total', { from: 'snapshot' }), 1);
  const info = await jsm.streams.info(`KV_${endpointsBucket(REGION)}`);
  const pos = dp.readSyncState();
  t.deepEqual(pos, { revision: info.state.last_seq, stream: streamId(info.config.name, info.created), region: REGION_ID });
  await a.follower.stop();

  // While the agent is away: a delete, an update, new endpoints, and a delete the stream loses entirely.
  await kv.delete(eps[0]!.key);
  await kv.put(eps[1]!.key, record(eps[1]!, { i6pn: false }));
  const fresh = Array.from({ length: 20 }, () => newEp());
  await putAll(fresh);
  await kv.delete(eps[2]!.key);
  await jsm.streams.purge(`KV_${endpointsBucket(REGION)}`, { filter: `$KV.${endpointsBucket(REGION)}.${eps[2]!.key}` });

  const b = startAgent({ reconcileIntervalMs: 1500 });
  await b.initial;
  t.is(await counter(b, 'i6pn_membership_starts_total', { from: 'revision' }), 1, 'resumed, not read whole');
  t.is(await counter(b, 'i6pn_membership_starts_total', { from: 'snapshot' }), 0);
  // Only what changed was read: 1 delete + 1 update + 20 puts + 1 delete marker (purged), nothing else.
  t.is(await counter(b, 'i6pn_membership_updates_total', { result: 'applied' }), 21);
  const map = mapView();
  t.false(map.has(eps[0]!.address), 'the delete while away is applied');
  t.true(fresh.every((e) => map.has(e.address)), 'the new endpoints are in');
  t.is(dp.getEndpoint(eps[1]!.addr)?.flags.i6pn, false, 'the update is applied');
  t.true(map.has(eps[2]!.address), 'the lost delete is not seen by the resume…');
  await eventually(() => !dp.getEndpoint(eps[2]!.addr), '…but the background reconcile sweeps it', 20_000);
  t.true(sameSet(mapView(), await storeView()), 'map equals store after the reconcile');
  t.is(await counter(b, 'i6pn_reconcile_removed_total'), 1);
  const tail = newEp();
  await putAll([tail]);
  await eventually(() => dp.getEndpoint(tail.addr) !== null, 'the last entry applied');
  await b.follower.stop();
  t.is(dp.readSyncState().revision, (await jsm.streams.info(`KV_${endpointsBucket(REGION)}`)).state.last_seq, 'the position is the last revision applied');
});

test.serial('an unusable position falls back to a full read and a sweep: a replaced bucket, a revision beyond the stream', async (t) => {
  // The bucket is replaced: same name, new stream (new creation time), fewer endpoints.
  const before = mapView();
  t.true(before.size > 0);
  await kv.destroy();
  kv = await new Kvm(nc).create(endpointsBucket(REGION), { history: ENDPOINTS_HISTORY });
  const kept = Array.from({ length: 50 }, () => newEp());
  await putAll(kept);
  const a = startAgent();
  await a.initial;
  t.is(await counter(a, 'i6pn_membership_starts_total', { from: 'snapshot' }), 1);
  t.true(sameSet(mapView(), await storeView()), 'map equals the new store');
  t.is(await counter(a, 'i6pn_reconcile_removed_total'), before.size, 'everything of the old bucket swept');
  await a.follower.stop();

  // A position the stream never reached (a store restored from an older backup).
  const p = dp.readSyncState();
  dp.writeSyncState({ ...p, revision: p.revision + 1000 });
  const stale = newEp();
  await dp.upsertEndpoints([{ addr: stale.addr, workspace: stale.ws, region: REGION_ID, node: 1, flags: { i6pn: true, local: false }, ifindex: 0 }]);
  const b = startAgent();
  await b.initial;
  t.is(await counter(b, 'i6pn_membership_starts_total', { from: 'snapshot' }), 1);
  t.false(mapView().has(stale.address), 'an entry the store does not hold is swept');
  t.true(sameSet(mapView(), await storeView()));
  await b.follower.stop();
});

test.serial('a full read cut short (a reconnect) goes on from where it stopped, then sweeps and records its position', async (t) => {
  const p = dp.readSyncState();
  dp.writeSyncState({ ...p, revision: 0 }); // no position: the next start reads the region whole
  const stale = newEp();
  dp.upsertEndpoints([{ addr: stale.addr, workspace: stale.ws, region: REGION_ID, node: 1, flags: { i6pn: true, local: false }, ifindex: 0 }]);
  await putAll(Array.from({ length: 20_000 }, () => newEp()));
  const a = startAgent();
  // Cut the read short three times, as reconnects do.
  for (let i = 0; i < 3; i++) {
    await eventually(() => a.sync.lastRevision > 0 && a.sync.inFullRead, 'the full read under way', 10_000, 5);
    a.follower.resume();
    await new Promise((r) => setTimeout(r, 30));
  }
  await a.initial;
  t.is(await counter(a, 'i6pn_membership_starts_total', { from: 'snapshot' }), 1, 'one full read, continued, not started over');
  t.false(a.logs.some((l) => String(l.msg).includes('replaced')), 'not mistaken for a replaced stream');
  t.false(mapView().has(stale.address), 'the sweep ran at its end');
  t.true(sameSet(mapView(), await storeView()));
  t.is(dp.readSyncState().revision, a.sync.lastRevision, 'its position is recorded');
  await a.follower.stop();
});

test.serial('the background reconcile never undoes updates made while it runs', async (t) => {
  const many = Array.from({ length: 4000 }, () => newEp());
  await putAll(many);
  const a = startAgent();
  await a.initial;
  const changed: Ep[] = [];
  const js = (await import('@nats-io/jetstream')).jetstream(nc);
  const del = headers();
  del.set('KV-Operation', 'DEL');
  for (let round = 0; round < 5; round++) {
    a.follower.requestReconcile();
    // Updates racing the reconcile: deletes of old entries, new entries.
    const batch = many.slice(round * 100, round * 100 + 100);
    await Promise.all(batch.map((e) => js.publish(`$KV.${endpointsBucket(REGION)}.${e.key}`, '', { headers: del })));
    const fresh = Array.from({ length: 100 }, () => newEp());
    await putAll(fresh);
    changed.push(...fresh);
    try {
      await eventually(async () => (await counter(a, 'i6pn_reconcile_total', { result: 'ok' })) >= round + 2, `reconcile ${round + 1} done`, 20_000);
    } catch (err) {
      t.log(a.logs.map((l) => JSON.stringify(l)).join('\n'));
      throw err;
    }
    t.false(a.logs.some((l) => String(l.msg).startsWith('the endpoints map and the applied state disagree')), 'the reconcile found the map as the sync thinks it is');
  }
  const store = await storeView();
  await eventually(() => sameSet(mapView(), store), 'map equals store', 10_000);
  const map = mapView();
  t.true(changed.every((e) => map.has(e.address)), 'every endpoint added during the reconciles is in');
  t.true(many.slice(0, 500).every((e) => !map.has(e.address)), 'every endpoint deleted during the reconciles is out');
  await a.follower.stop();
});

test.serial('the reader keeps at most two requests of bytes in flight, however slow the agent', async (t) => {
  const stream = `KV_${endpointsBucket(REGION)}`;
  const total = (await jsm.streams.info(stream)).state.messages;
  t.true(total >= 4000);
  const maxBytes = 32 * 1024;
  const info = await connect({ servers: nats.url });
  const ijsm = await jetstreamManager(info);
  let processed = 0;
  let bytes = 0;
  let worst = 0;
  let samples = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const reader = new StreamReader({
    nc,
    jsm,
    stream,
    prefix: `$KV.${endpointsBucket(REGION)}.`,
    startSeq: 1,
    maxBytes,
    batch: 100_000,
    log: createLogger('warn', {}),
    onMessage: (_k, data, _seq, _op, _t, pending) => {
      processed++;
      bytes = Math.max(bytes, data.length);
      // A slow agent: 200 µs per message.
      const until = performance.now() + 0.2;
      while (performance.now() < until);
      if (pending === 0) done();
    },
  });
  await reader.start();
  const name = (reader as unknown as { consumer: string }).consumer;
  // Delivered by the server minus taken by the agent when the question was asked: an upper bound of what is in flight.
  const sampler = setInterval(() => {
    const taken = processed;
    void ijsm.consumers.info(stream, name).then((ci) => {
      samples++;
      worst = Math.max(worst, ci.delivered.consumer_seq - taken);
    }, () => undefined);
  }, 20);
  await finished;
  clearInterval(sampler);
  reader.stop();
  await info.close();
  t.true(samples >= 5, `sampled ${samples} times`);
  // Each message costs its payload plus subject, reply and protocol overhead (~150 bytes) against max_bytes.
  const bound = Math.ceil((2 * maxBytes) / (bytes * 0.5)) + 1;
  t.log(`${total} messages; at most ${worst} delivered ahead of the agent (bound ${bound}: two requests of ${maxBytes} bytes)`);
  t.true(worst <= bound, `${worst} messages in flight`);
  t.true(worst > 0, 'the sampler saw messages in flight');
  t.true(worst * 4 < total, 'far from the whole stream');
});
