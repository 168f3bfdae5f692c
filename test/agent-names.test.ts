/**
 * The resolver's names index (agent/names.ts) kept by MembershipSync in the
 * same batches as the endpoints map: what it answers equals what the map
 * holds, entry by entry, through puts, renames, re-ranks, deletes, failed
 * map writes, full reads with their sweep and the queriers' own changes. The
 * map is an in-memory stand-in with a capacity (the kernel map's behaviour
 * when full: the update fails and nothing is evicted).
 */
import test from 'ava';
import { formatAddress, parseAddress } from '../lib/address.js';
import { endpointJson, newEndpoint, type TestEndpoint } from './helpers/endpoints.js';
import { createLogger } from '../agent/log.js';
import { AgentMetrics } from '../agent/metrics.js';
import { NamesIndex } from '../agent/names.js';
import { MembershipSync, Operation, type EndpointMap } from '../agent/sync.js';
import type { SyncState, UpsertResult } from '../agent/bpf/dataplane.js';

const REGION = 'names-test';
const REGION_ID = 0x4e41;
const NODE = 'node-a';
const W1 = 0x11110001;
const W2 = 0x11110002;

/** The endpoints map without a kernel: addresses it holds, at most `capacity`. */
class MemoryMap implements EndpointMap {
  readonly held = new Set<string>();
  constructor(public capacity = Infinity) {}
  upsertEndpointBatch(keys: Buffer, _values: Buffer, count: number): UpsertResult {
    const failed: UpsertResult['failed'] = [];
    for (let i = 0; i < count; i++) {
      const addr = new Uint8Array(keys.subarray(i * 16, i * 16 + 16));
      const k = formatAddress(addr);
      if (!this.held.has(k) && this.held.size >= this.capacity) {
        failed.push({ index: i, addr, error: Object.assign(new Error('map full'), { code: 'E2BIG' }) as never });
        continue;
      }
      this.held.add(k);
    }
    return { applied: count - failed.length, failed };
  }
  deleteEndpointBatch(keys: Buffer, count: number): number {
    let n = 0;
    for (let i = 0; i < count; i++) if (this.held.delete(formatAddress(keys.subarray(i * 16, i * 16 + 16)))) n++;
    return n;
  }
  *endpointAddresses(): Iterable<Uint8Array[]> {
    yield [...this.held].map((a) => parseAddress(a));
  }
  endpointsEmpty(): boolean {
    return this.held.size === 0;
  }
  writeSyncState(_st: SyncState): void {}
}

type Ep = TestEndpoint;
const newEp = (ws: number): Ep => newEndpoint(ws, REGION_ID);
const value = (e: Ep, over: Record<string, unknown> = {}): Uint8Array => new TextEncoder().encode(endpointJson(e, { name: REGION, id: REGION_ID }, over));

function setup(capacity = Infinity) {
  const map = new MemoryMap(capacity);
  const names = new NamesIndex(REGION_ID);
  const log = createLogger('fatal', {}, { write: () => {} });
  const sync = new MembershipSync({
    map,
    node: NODE,
    region: REGION,
    regionId: REGION_ID,
    ifindexOf: () => undefined,
    onLocalsChanged: () => {},
    metrics: new AgentMetrics({ version: 't', node: NODE, region: REGION, mode: 'enforce' }, log),
    log,
    names,
  });
  let rev = 0;
  const put = (e: Ep, over: Record<string, unknown> = {}): void => void sync.ingest(e.key, value(e, over), ++rev, Operation.PUT, Date.now());
  const del = (e: Ep): void => void sync.ingest(e.key, new Uint8Array(0), ++rev, Operation.DEL, Date.now());
  return { map, names, sync, put, del };
}

test('names and clusters follow the batches: put, rename, re-rank, delete; only i6pn endpoints; only what the map holds', async (t) => {
  const { map, names, sync, put, del } = setup();
  sync.beginFullRead(1n);
  const web = newEp(W1);
  const db = newEp(W1);
  const dark = newEp(W1);
  const other = newEp(W2);
  const members = [newEp(W1), newEp(W1), newEp(W1)];
  put(web, { name: 'web' });
  put(db, { name: 'db' });
  put(dark, { name: 'dark', i6pn: false });
  put(other, { name: 'web' });
  members.forEach((m, i) => put(m, { cluster: 'trainer', rank: 2 - i }));
  put(newEp(W1)); // unnamed
  t.false(names.complete, 'not complete during the full read');
  // Before the batch is written nothing is answerable: the map does not hold it yet.
  t.is(names.endpoint(W1, 'web'), null);
  await sync.endFullRead();
  t.true(names.complete);
  t.is(names.endpoint(W1, 'web'), web.address);
  t.is(names.endpoint(W2, 'web'), other.address, 'the same name in another workspace is its own');
  t.is(names.endpoint(W1, 'dark'), null, 'an endpoint without i6pn is never answered');
  t.deepEqual(names.cluster(W1, 'trainer').map((m) => [m.rank, m.address]), [[0, members[2]!.address], [1, members[1]!.address], [2, members[0]!.address]]);
  t.deepEqual(names.cluster(W2, 'trainer'), []);
  t.is(names.size, 6, 'the index holds the named i6pn endpoints only');
  for (const a of [web.address, db.address, other.address, ...members.map((m) => m.address)]) t.true(map.held.has(a));

  // A rename, a re-rank and a delete: each visible after the flush, not before.
  put(web, { name: 'web-2' });
  put(members[0]!, { cluster: 'trainer', rank: 0 });
  put(members[2]!, { cluster: 'trainer', rank: 2 });
  del(db);
  t.is(names.endpoint(W1, 'db'), db.address, 'the delete is not in the map yet');
  sync.flush();
  t.is(names.endpoint(W1, 'web'), null);
  t.is(names.endpoint(W1, 'web-2'), web.address);
  t.is(names.endpoint(W1, 'db'), null);
  t.false(map.held.has(db.address));
  t.deepEqual(names.cluster(W1, 'trainer').map((m) => m.address), [members[0]!.address, members[1]!.address, members[2]!.address]);
  // Losing i6pn, or the name, takes it out; a member leaving its cluster too.
  put(web, { name: 'web-2', i6pn: false });
  put(members[1]!);
  sync.flush();
  t.is(names.endpoint(W1, 'web-2'), null);
  t.deepEqual(names.cluster(W1, 'trainer').map((m) => m.rank), [0, 2]);
  // An invalid entry removes what its key held (fail closed), from the map and the names alike.
  put(members[0]!, { cluster: 'trainer' });
  sync.flush();
  t.false(map.held.has(members[0]!.address));
  t.deepEqual(names.cluster(W1, 'trainer').map((m) => m.rank), [2]);
});

test('an endpoint the map refused (full) is not answered; it is once the map takes it', (t) => {
  const { map, names, sync, put } = setup(2);
  sync.beginFullRead(1n);
  const a = newEp(W1);
  const b = newEp(W1);
  const c = newEp(W1);
  put(a, { name: 'a' });
  put(b, { name: 'b' });
  put(c, { name: 'c' });
  sync.flush();
  t.deepEqual([names.endpoint(W1, 'a'), names.endpoint(W1, 'b'), names.endpoint(W1, 'c')], [a.address, b.address, null]);
  t.false(map.held.has(c.address));
  map.capacity = 3;
  put(c, { name: 'c' });
  sync.flush();
  t.is(names.endpoint(W1, 'c'), c.address);
});

test('a full read over a stale map sweeps what the store no longer has, from the map and the names', async (t) => {
  const { map, names, sync, put } = setup();
  sync.beginFullRead(1n);
  const keep = newEp(W1);
  const gone = newEp(W1);
  put(keep, { name: 'keep' });
  put(gone, { name: 'gone', cluster: 'c', rank: 0 });
  await sync.endFullRead();
  t.is(names.endpoint(W1, 'gone'), gone.address);
  // The stream was replaced: the region is read whole again, and `gone` is not in it.
  sync.beginFullRead(2n);
  t.false(names.complete);
  put(keep, { name: 'keep' });
  await sync.endFullRead();
  t.true(names.complete);
  t.false(map.held.has(gone.address));
  t.is(names.endpoint(W1, 'gone'), null);
  t.deepEqual(names.cluster(W1, 'c'), []);
  t.is(names.endpoint(W1, 'keep'), keep.address);
});

test('queriers are the local endpoints; peers are kept for the workspaces served here, from the table and then the batches', async (t) => {
  const { names, sync, put, del } = setup();
  sync.beginFullRead(1n);
  const remote = [newEp(W1), newEp(W1)];
  for (const r of remote) put(r);
  const remoteDark = newEp(W1);
  put(remoteDark, { i6pn: false });
  const otherWs = newEp(W2);
  put(otherWs);
  await sync.endFullRead();
  t.deepEqual(names.peers(W1), [], 'no endpoint of W1 here: nobody of W1 can ask');
  const local = newEp(W1);
  put(local, { node: NODE });
  sync.flush();
  const q = names.querier(local.address);
  t.like(q, { address: local.address, workspace: W1, i6pn: true });
  t.is(names.querier(remote[0]!.address), null, 'a remote endpoint is no querier here');
  t.deepEqual(names.peers(W1), [...remote.map((r) => r.address), local.address].sort(), 'read from the table when the workspace arrived');
  t.deepEqual(names.peers(W2), []);
  const late = newEp(W1);
  put(late);
  del(remote[0]!);
  sync.flush();
  t.deepEqual(names.peers(W1), [remote[1]!.address, local.address, late.address].sort(), 'then kept by the batches');
  // A local endpoint without i6pn is a querier (refused by the resolver) and keeps no peers.
  const localDark = newEp(W2);
  put(localDark, { node: NODE, i6pn: false });
  sync.flush();
  t.like(names.querier(localDark.address), { i6pn: false, workspace: W2 });
  t.deepEqual(names.peers(W2), []);
  // The last local endpoint of W1 goes: its peers are no longer kept.
  del(local);
  sync.flush();
  t.is(names.querier(local.address), null);
  t.deepEqual(names.peers(W1), []);
});
