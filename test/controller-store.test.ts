/**
 * The store (lib/store.ts, controller/store/) against a real nats-server with JetStream: uniqueness under
 * concurrency, collisions forced through the random source, never-reused ids
 * and addresses, invalid entries, unreachable servers. In-process, for speed;
 * test/controller-cli.test.ts covers the command surface.
 */
import { randomBytes } from 'node:crypto';
import anyTest, { type TestFn } from 'ava';
import { formatAddress, isPrivate, makeEndpointAddress as makeEndpointAddressFor, parseAddress, regionOf, workspaceOf, workspaceSubnet } from '../lib/address.js';
import {
  ADDRESSES_BUCKET,
  ENDPOINTS_HISTORY,
  addressKey,
  addressRecord,
  decodeRecord,
  endpointBucketKey,
  endpointKey,
  workspaceIdKey,
  workspaceRecord,
} from '../lib/schema.js';
import { StoreError, connectStore, getWorkspace, type RandomSource, type Store } from '../lib/store.js';
import {
  addEndpoint,
  findEndpointByName,
  getEndpoint,
  listEndpoints,
  peersOf,
  removeEndpoint,
  renameEndpoint,
} from '../controller/store/endpoints.js';
import { addRegion, listRegions } from '../controller/store/regions.js';
import { createCluster, listClusters, deleteCluster, showCluster, swapClusterRanks } from '../controller/store/clusters.js';
import { createWorkspace, deleteWorkspace, listWorkspaces } from '../controller/store/workspaces.js';
import { listNodes } from '../controller/store/nodes.js';
import { startNats, type NatsServer } from './helpers/nats.js';

const test = anyTest as TestFn<{ nats: NatsServer; store: Store }>;
// The heavy concurrency tests are serial (ava runs them first, one at a time):
// each is concurrent inside, and they should not starve one another.

test.before(async (t) => {
  const nats = await startNats();
  const store = await connectStore({ servers: nats.url, name: 'controller-store-test' });
  t.context = { nats, store };
});

test.after.always(async (t) => {
  await t.context.store?.close();
  await t.context.nats?.destroy();
});

/** Unique per test and per run, valid as a name. */
let seq = 0;
function name(prefix: string): string {
  return `${prefix}-${(seq++).toString(36)}-${randomBytes(3).toString('hex')}`;
}

/** A second store on the same server whose random source replays `values`, then falls back to crypto. */
async function scriptedStore(t: { context: { nats: NatsServer } }, script: Partial<{ [K in keyof RandomSource]: ReturnType<RandomSource[K]>[] }>): Promise<Store> {
  const random: Partial<RandomSource> = {};
  for (const k of Object.keys(script) as (keyof RandomSource)[]) {
    const values = [...(script[k] as unknown[])];
    const last = values[values.length - 1];
    // Replays the list, then repeats its last value: a collision that never goes away.
    (random as Record<string, () => unknown>)[k] = () => (values.length > 1 ? values.shift() : last);
  }
  return connectStore({ servers: t.context.nats.url, random });
}

async function expectStoreError(t: { fail(m: string): void; is(a: unknown, b: unknown, m?: string): void }, p: Promise<unknown>, code: string, message: string): Promise<void> {
  try {
    await p;
    t.fail(`expected StoreError ${code}`);
  } catch (e) {
    if (!(e instanceof StoreError)) return t.fail(`not a StoreError: ${(e as Error).stack}`);
    t.is(e.code, code, e.message);
    t.is(e.message, message);
  }
}

// ---------------------------------------------------------------- connection

test('an unreachable NATS gives one clear error, not a stack trace', async (t) => {
  const down = await startNats();
  const url = down.url;
  await down.destroy();
  const e = await t.throwsAsync(connectStore({ servers: url, timeout: 2000 }), { instanceOf: StoreError });
  t.is(e?.code, 'unreachable');
  t.is(e?.what, `cannot reach NATS at ${url}: connection refused (connect ECONNREFUSED 127.0.0.1:${new URL(url).port})`);
  t.is(e?.hint, 'is nats-server running? set --nats or I6PN_NATS_URL');
  t.is(e?.message, `${e?.what} (${e?.hint})`);
});

test('a NATS without JetStream is named as such', async (t) => {
  const plain = await startNats({ jetstream: false });
  try {
    const e = await t.throwsAsync(connectStore({ servers: plain.url }), { instanceOf: StoreError });
    t.is(e?.code, 'jetstream');
    t.regex(e?.what ?? '', new RegExp(`^NATS at ${plain.url} has no JetStream: `));
    t.is(e?.hint, 'start nats-server with -js (JetStream) or point --nats at one that has it');
  } finally {
    await plain.destroy();
  }
});

test('an unreadable credentials file is an input error', async (t) => {
  const e = await t.throwsAsync(connectStore({ servers: t.context.nats.url, creds: '/nonexistent/i6pn.creds' }), { instanceOf: StoreError });
  t.is(e?.code, 'invalid');
  t.regex(e?.what ?? '', /^cannot read NATS credentials \/nonexistent\/i6pn\.creds: ENOENT/);
});

test('the store survives a server restart: data kept, client reconnects', async (t) => {
  const nats = await startNats();
  const store = await connectStore({ servers: nats.url, requestTimeout: 5000 });
  try {
    await addRegion(store, 'eu-west', { id: 0x0a70 });
    const w = await createWorkspace(store, 'acme');
    await nats.stop();
    await nats.start();
    // The same connection reconnects by itself and the data is still there.
    const deadline = Date.now() + 60_000;
    let ws: Awaited<ReturnType<typeof getWorkspace>> = null;
    while (Date.now() < deadline) {
      ws = await getWorkspace(store, 'acme').catch(() => null);
      if (ws) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    t.deepEqual(ws?.record, w);
    t.deepEqual((await listRegions(store)).regions, [{ v: 1, name: 'eu-west', id: 0x0a70 }]);
  } finally {
    await store.close();
    await nats.destroy();
  }
});

// ---------------------------------------------------------------- regions

test('regions: add, list, duplicate name, fixed id taken, invalid name', async (t) => {
  const { store } = t.context;
  const a = name('r');
  const b = name('r');
  const ra = await addRegion(store, a);
  t.true(ra.id >= 1 && ra.id <= 0xffff);
  t.deepEqual(ra, { v: 1, name: a, id: ra.id });
  await expectStoreError(t, addRegion(store, a), 'exists', `region "${a}" already exists (choose another name; \`i6pnctl region list\` shows the taken ones)`);
  await expectStoreError(t, addRegion(store, b, { id: ra.id }), 'exists', `region id ${ra.id} (0x${ra.id.toString(16).padStart(4, '0')}) is taken by region "${a}" (choose another --id or leave it out for a random one)`);
  await expectStoreError(t, addRegion(store, 'Bad_Name'), 'invalid', 'invalid region name "Bad_Name" (use a lowercase letter followed by up to 30 lowercase letters, digits or dashes)');
  await expectStoreError(t, addRegion(store, b, { id: 0 }), 'invalid', 'invalid region id 0 (use a number from 1 to 65535)');
  const listed = (await listRegions(store)).regions.filter((r) => r.name === a || r.name === b);
  t.deepEqual(listed, [ra]);
});

test.serial('regions: a taken random id is drawn again; a lost name race frees the id', async (t) => {
  const first = await addRegion(t.context.store, name('r'));
  const other = (first.id % 0xfffe) + 1;
  const s = await scriptedStore(t, { regionId: [first.id, other, other] });
  try {
    const r = await addRegion(s, name('r'));
    t.is(r.id, other);
  } finally {
    await s.close();
  }
  // 50 concurrent adds of one name: one wins, the others are refused and give their ids back.
  const n = name('r');
  const results = await Promise.allSettled(Array.from({ length: 50 }, () => addRegion(t.context.store, n)));
  const won = results.filter((r) => r.status === 'fulfilled');
  t.is(won.length, 1);
  for (const r of results) if (r.status === 'rejected') t.is((r.reason as StoreError).code, 'exists');
  const ids: string[] = [];
  for await (const k of await t.context.store.regions.keys('id.*')) ids.push(k);
  const mine = await Promise.all(ids.map((k) => t.context.store.regions.get(k)));
  t.is(mine.filter((e) => e?.operation === 'PUT' && e.json<{ name: string }>().name === n).length, 1);
});

// ---------------------------------------------------------------- workspaces

test.serial('100 concurrent workspace creates get 100 unique ids and subnets, none lost', async (t) => {
  const { store } = t.context;
  const names = Array.from({ length: 100 }, () => name('w'));
  const created = await Promise.all(names.map((n) => createWorkspace(store, n)));
  t.is(new Set(created.map((w) => w.id)).size, 100);
  t.is(new Set(created.map((w) => w.subnet)).size, 100);
  for (const w of created) {
    t.is(w.subnet, workspaceSubnet(w.id));
    t.true(w.id > 0 && w.id <= 0xffffffff);
  }
  const listed = new Map((await listWorkspaces(store)).workspaces.map((w) => [w.name, w]));
  for (const w of created) t.deepEqual(listed.get(w.name), w);
  // Both keys of every workspace hold the same record.
  for (const w of created.slice(0, 10)) {
    const byId = await store.workspaces.get(workspaceIdKey(w.id));
    t.deepEqual(byId?.json(), w);
  }
});

test.serial('100 concurrent creates of one name: exactly one wins, the rest are refused', async (t) => {
  const { store } = t.context;
  const n = name('w');
  const results = await Promise.allSettled(Array.from({ length: 100 }, () => createWorkspace(store, n)));
  const won = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  t.is(won.length, 1);
  for (const r of results) {
    if (r.status === 'rejected') {
      t.true(r.reason instanceof StoreError);
      t.is((r.reason as StoreError).message, `workspace "${n}" already exists (choose another name; \`i6pnctl workspace list\` shows the taken ones)`);
    }
  }
  t.deepEqual((await getWorkspace(store, n))?.record, won[0]);
});

test('workspaces: a taken random id is drawn again, also when the taker was deleted', async (t) => {
  const { store } = t.context;
  const old = await createWorkspace(store, name('w'));
  await deleteWorkspace(store, old.name);
  const fresh = old.id === 0xffffffff ? 1 : old.id + 1;
  const s = await scriptedStore(t, { workspaceId: [old.id, old.id, fresh, fresh] });
  try {
    const w = await createWorkspace(s, name('w'));
    t.is(w.id, fresh);
    // Only the deleted id left: it is never handed out again.
    const s2 = await scriptedStore(t, { workspaceId: [old.id] });
    try {
      await expectStoreError(t, createWorkspace(s2, name('w')), 'exhausted', 'no free workspace id after 64 random draws (check the random source; the 32-bit space cannot be full)');
    } finally {
      await s2.close();
    }
  } finally {
    await s.close();
  }
});

test('workspace delete: refused with endpoints, --force removes them, the name is reusable, the id is not', async (t) => {
  const { store } = t.context;
  const region = await addRegion(store, name('r'));
  const wn = name('w');
  const w = await createWorkspace(store, wn);
  const eps = await createCluster(store, { workspace: wn, region: region.name, size: 3, nodes: ['node-a'] });
  await expectStoreError(
    t,
    deleteWorkspace(store, wn),
    'has-endpoints',
    `workspace "${wn}" still has 3 endpoints (remove them with \`i6pnctl endpoint remove ADDRESS\`, or pass --force to remove them with the workspace)`,
  );
  const d = await deleteWorkspace(store, wn, { force: true });
  t.is(d.workspace.id, w.id);
  t.truthy(d.workspace.deletedAt);
  t.deepEqual(d.removedEndpoints.map((e) => e.address).sort(), eps.map((e) => e.address).sort());
  t.is(await getWorkspace(store, wn), null);
  t.deepEqual((await listEndpoints(store, { region: region.name })).endpoints, []);
  // The id key stays, marked deleted.
  const tomb = decodeRecord(workspaceRecord, (await store.workspaces.get(workspaceIdKey(w.id)))?.value);
  t.like(tomb, { ok: true, record: { id: w.id, name: wn, deletedAt: d.workspace.deletedAt } });
  // Removed addresses stay taken.
  for (const e of eps) {
    const a = decodeRecord(addressRecord, (await store.addresses.get(addressKey(parseAddress(e.address))))?.value);
    t.like(a, { ok: true, record: { state: 'removed', address: e.address } });
  }
  const again = await createWorkspace(store, wn);
  t.not(again.id, w.id);
  const missing = name('w');
  await expectStoreError(
    t,
    deleteWorkspace(store, missing),
    'not-found',
    `unknown workspace "${missing}" (list workspaces with \`i6pnctl workspace list\` or create it with \`i6pnctl workspace create NAME\`)`,
  );
});

// ---------------------------------------------------------------- endpoints

/** A region, a workspace and two node names of this test's own (interface names are per node). */
async function setup(store: Store): Promise<{ ws: string; wsId: number; region: string; regionId: number; nodeA: string; nodeB: string }> {
  const r = await addRegion(store, name('r'));
  const w = await createWorkspace(store, name('w'));
  return { ws: w.name, wsId: w.id, region: r.name, regionId: r.id, nodeA: name('node'), nodeB: name('node') };
}

test.serial('1000 concurrent endpoint registrations: unique addresses, none lost, each decodes to its workspace and region', async (t) => {
  const { store } = t.context;
  const a = await setup(store);
  const b = await setup(store);
  const specs = Array.from({ length: 1000 }, (_, i) => {
    const at = i % 2 === 0 ? a : b;
    return { workspace: at.ws, region: at.region, node: `${at.nodeA}-${i % 7}`, ifname: `veth${i}` };
  });
  const created = await Promise.all(specs.map((s) => addEndpoint(store, s)));
  t.is(created.length, 1000);
  t.is(new Set(created.map((e) => e.address)).size, 1000);
  for (const [i, e] of created.entries()) {
    const at = i % 2 === 0 ? a : b;
    const addr = parseAddress(e.address);
    t.true(isPrivate(addr));
    t.is(workspaceOf(addr), at.wsId);
    t.is(regionOf(addr), at.regionId);
    t.is(formatAddress(addr), e.address);
    t.like(e, { v: 1, workspace: at.ws, workspaceId: at.wsId, region: at.region, regionId: at.regionId, node: `${at.nodeA}-${i % 7}`, ifname: `veth${i}`, i6pn: true });
  }
  const listedA = await listEndpoints(store, { workspace: a.ws });
  const listedB = await listEndpoints(store, { region: b.region });
  t.is(listedA.endpoints.length, 500);
  t.is(listedB.endpoints.length, 500);
  t.deepEqual(listedA.invalid, []);
  const all = new Set([...listedA.endpoints, ...listedB.endpoints].map((e) => e.address));
  for (const e of created) t.true(all.has(e.address));
  // Filters combine.
  const node3 = `${a.nodeA}-3`;
  const onNode = await listEndpoints(store, { workspace: a.ws, region: a.region, node: node3 });
  t.is(onNode.endpoints.length, created.filter((e, i) => i % 2 === 0 && e.node === node3).length);
  t.true(onNode.endpoints.length > 50);
  t.true(onNode.endpoints.every((e) => e.node === node3 && e.workspace === a.ws));
});

test('endpoints live in their region\'s bucket, keyed <workspace id>.<endpoint id>, one value per key', async (t) => {
  const { store } = t.context;
  const a = await setup(store);
  const b = await setup(store);
  // The region's bucket exists as soon as the region does (its agents read it from the start).
  t.true((await store.endpointRegions()).includes(a.region));
  const ea = await addEndpoint(store, { workspace: a.ws, region: a.region, node: a.nodeA, ifname: 'veth0' });
  const eb = await addEndpoint(store, { workspace: b.ws, region: b.region, node: b.nodeA, ifname: 'veth0' });
  const ka = await store.endpoints(a.region);
  const st = await ka.status();
  t.is(st.bucket, `i6pn_endpoints_${a.region}`);
  t.is(st.history, 1);
  const keysIn = async (region: string): Promise<string[]> => {
    const out: string[] = [];
    for await (const k of await (await store.endpoints(region)).keys()) out.push(k);
    return out;
  };
  t.deepEqual(await keysIn(a.region), [endpointBucketKey(ea)]);
  t.deepEqual(await keysIn(b.region), [endpointBucketKey(eb)]);
  t.is(endpointKey(ea), `${a.region}.${endpointBucketKey(ea)}`);
  t.deepEqual((await ka.get(endpointBucketKey(ea)))?.json(), ea);
  // The claims still name the endpoint store-wide.
  t.like(decodeRecord(addressRecord, (await store.addresses.get(addressKey(parseAddress(ea.address))))?.value), { ok: true, record: { endpointKey: endpointKey(ea) } });
  // History 1: a rewrite replaces the value.
  await ka.put(endpointBucketKey(ea), JSON.stringify(ea));
  const history: number[] = [];
  for await (const h of await ka.history({ key: endpointBucketKey(ea) })) history.push(h.revision);
  t.is(history.length, 1);
  // Lists: one region reads its bucket, no filter reads them all.
  t.deepEqual((await listEndpoints(store, { region: a.region })).endpoints, [ea]);
  const all = (await listEndpoints(store)).endpoints.map((e) => e.address);
  t.true(all.includes(ea.address) && all.includes(eb.address));
  t.deepEqual(await getEndpoint(store, eb.address), eb);
  t.deepEqual(await removeEndpoint(store, eb.address), eb);
  t.deepEqual(await keysIn(b.region), []);
});

test('a region that is not registered gets no endpoints bucket', async (t) => {
  const { store } = t.context;
  const ghost = name('r');
  await expectStoreError(t, store.endpoints(ghost), 'not-found', `unknown region "${ghost}" (list regions with \`i6pnctl region list\` or add it with \`i6pnctl region add NAME\`)`);
  await expectStoreError(t, store.endpoints('Bad.Region'), 'invalid', 'invalid region name "Bad.Region" (use a lowercase letter followed by up to 30 lowercase letters, digits or dashes)');
  t.false((await store.endpointRegions()).includes(ghost));
  // Asked again: still refused (a failure is not cached as a bucket), and created once the region is added.
  await expectStoreError(t, store.endpoints(ghost), 'not-found', `unknown region "${ghost}" (list regions with \`i6pnctl region list\` or add it with \`i6pnctl region add NAME\`)`);
  await addRegion(store, ghost);
  t.is((await (await store.endpoints(ghost)).status()).bucket, `i6pn_endpoints_${ghost}`);
});

test('a removed endpoint\'s address is never handed out again', async (t) => {
  const at = await setup(t.context.store);
  const x = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
  const y = Uint8Array.from([9, 9, 9, 9, 9, 9, 9, 9]);
  const s = await scriptedStore(t, { endpointBits: [x] });
  try {
    const first = await addEndpoint(s, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth0' });
    t.is(first.address.endsWith(':102:304:506:708'), true);
    const removed = await removeEndpoint(s, first.address);
    t.deepEqual(removed, first);
    t.is(await getEndpoint(s, first.address), null);
    const rec = decodeRecord(addressRecord, (await s.addresses.get(addressKey(parseAddress(first.address))))?.value);
    t.like(rec, { ok: true, record: { state: 'removed', address: first.address, endpointKey: endpointKey(first) } });
    // The random source offers only the removed address: refused, not reused.
    await expectStoreError(
      t,
      addEndpoint(s, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth0' }),
      'exhausted',
      `no free address in ${workspaceSubnet(at.wsId)} region ${at.region} after 16 random draws (check the random source; 64 random bits cannot run out)`,
    );
  } finally {
    await s.close();
  }
  const s2 = await scriptedStore(t, { endpointBits: [x, x, y] });
  try {
    const second = await addEndpoint(s2, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth0' });
    t.true(second.address.endsWith(':909:909:909:909'));
  } finally {
    await s2.close();
  }
  await expectStoreError(t, removeEndpoint(t.context.store, `fdaa:${at.wsId.toString(16).slice(0, 4)}::1`), 'not-found', `no endpoint has address fdaa:${at.wsId.toString(16).slice(0, 4)}::1 (list endpoints with \`i6pnctl endpoint list\`)`);
});

test('removing twice, and removing what is not an i6pn address', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const e = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth0' });
  await removeEndpoint(store, e.address);
  await expectStoreError(t, removeEndpoint(store, e.address), 'not-found', `endpoint ${e.address} was already removed (list live endpoints with \`i6pnctl endpoint list\`)`);
  await expectStoreError(t, removeEndpoint(store, '2001:db8::1'), 'invalid', 'address 2001:db8::1 is not an i6pn address (not in fdaa::/16) (pass an address printed by `i6pnctl endpoint add` or `endpoint list`)');
  const bad = await t.throwsAsync(removeEndpoint(store, 'nope'), { instanceOf: StoreError });
  t.is(bad?.code, 'invalid');
  t.regex(bad?.message ?? '', /^invalid IPv6 address "nope": .* \(pass an endpoint address such as fdaa:1234:5678:a70:1b9d:3a11:71f2:5f0f\)$/);
});

test('one endpoint per interface name per node; the name is free again after removal', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const e = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth7' });
  await expectStoreError(
    t,
    addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth7' }),
    'exists',
    `interface veth7 on node ${at.nodeA} is already used by endpoint ${e.address} (choose another --ifname, or remove that endpoint first)`,
  );
  // The refused attempt's address was burnt, not published.
  t.is((await listEndpoints(store, { workspace: at.ws })).endpoints.length, 1);
  const other = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeB, ifname: 'veth7' });
  t.is(other.node, at.nodeB);
  await removeEndpoint(store, e.address);
  const again = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth7' });
  t.not(again.address, e.address);
});

test('endpoint add: unknown workspace, unknown region, invalid names', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const ok = { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth0' };
  await expectStoreError(t, addEndpoint(store, { ...ok, workspace: 'no-such-ws' }), 'not-found', 'unknown workspace "no-such-ws" (list workspaces with `i6pnctl workspace list` or create it with `i6pnctl workspace create NAME`)');
  await expectStoreError(t, addEndpoint(store, { ...ok, region: 'mars' }), 'not-found', 'unknown region "mars" (list regions with `i6pnctl region list` or add it with `i6pnctl region add NAME`)');
  await expectStoreError(t, addEndpoint(store, { ...ok, region: 'Mars' }), 'invalid', 'invalid region name "Mars" (use a lowercase letter followed by up to 30 lowercase letters, digits or dashes)');
  await expectStoreError(t, addEndpoint(store, { ...ok, node: 'Node A' }), 'invalid', 'invalid node name "Node A" (use lowercase DNS labels (letters, digits, dashes) joined by dots, at most 63 characters)');
  await expectStoreError(t, addEndpoint(store, { ...ok, ifname: 'veth-much-too-long' }), 'invalid', 'invalid interface name "veth-much-too-long" (use a Linux interface name: 1 to 15 letters, digits, "_", "." or "-", not starting with "." or "-")');
  t.deepEqual((await listEndpoints(store, { workspace: at.ws })).endpoints, []);
});

test('cluster create: round-robin over nodes, generated interface names, one region', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const eps = await createCluster(store, { workspace: at.ws, region: at.region, size: 7, nodes: [at.nodeA, at.nodeB, 'node-c'] });
  t.deepEqual(eps.map((e) => e.node), [at.nodeA, at.nodeB, 'node-c', at.nodeA, at.nodeB, 'node-c', at.nodeA]);
  for (const e of eps) {
    t.regex(e.ifname, /^i6p[0-9a-f]{12}$/);
    t.is(e.ifname, `i6p${e.address.split(':').slice(-3).map((g) => g.padStart(4, '0')).join('')}`);
    t.is(regionOf(parseAddress(e.address)), at.regionId);
    t.is(e.region, at.region);
  }
  t.is(new Set(eps.map((e) => `${e.node}/${e.ifname}`)).size, 7);
  t.is((await listEndpoints(store, { workspace: at.ws })).endpoints.length, 7);
  await expectStoreError(t, createCluster(store, { workspace: at.ws, region: at.region, size: 0, nodes: [at.nodeA] }), 'invalid', 'invalid cluster size 0 (use --size with a whole number from 1 to 10000)');
  await expectStoreError(t, createCluster(store, { workspace: at.ws, region: at.region, size: 2, nodes: [] }), 'invalid', 'no nodes to place the cluster on (pass --nodes a,b,c)');
});

test('cluster create is all or nothing', async (t) => {
  const at = await setup(t.context.store);
  // Every draw gives the same address: the first registration wins, the others run out.
  const s = await scriptedStore(t, { endpointBits: [Uint8Array.from([7, 7, 7, 7, 7, 7, 7, 7])] });
  try {
    const e = await t.throwsAsync(createCluster(s, { workspace: at.ws, region: at.region, size: 3, nodes: [at.nodeA] }), { instanceOf: StoreError });
    t.is(e?.code, 'exhausted');
  } finally {
    await s.close();
  }
  t.deepEqual((await listEndpoints(t.context.store, { workspace: at.ws })).endpoints, []);
});

// ---------------------------------------------------------------- names and named clusters

test.serial('20 concurrent adds of one name in one workspace and region: exactly one wins; other workspaces and regions have their own', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const other = await setup(store);
  const settled = await Promise.allSettled(
    Array.from({ length: 20 }, (_, i) => addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: `veth${i}`, name: 'web' })),
  );
  const won = settled.filter((s): s is PromiseFulfilledResult<Awaited<ReturnType<typeof addEndpoint>>> => s.status === 'fulfilled');
  t.is(won.length, 1);
  const winner = won[0]!.value;
  t.is(winner.name, 'web');
  for (const s of settled) {
    if (s.status === 'rejected') {
      t.true(s.reason instanceof StoreError);
      t.is((s.reason as StoreError).message, `name "web" is taken in workspace ${at.ws} region ${at.region} by endpoint ${winner.address} (choose another --name; names are unique per workspace and region)`);
    }
  }
  // The losers left nothing behind: one endpoint, and their interface names are free.
  t.deepEqual((await listEndpoints(store, { workspace: at.ws })).endpoints.map((e) => e.address), [winner.address]);
  const loserIf = settled.findIndex((s) => s.status === 'rejected');
  await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: `veth${loserIf}` });
  // The same name in another workspace, and in the same workspace in another region.
  const r2 = await addRegion(store, name('r'));
  t.is((await addEndpoint(store, { workspace: other.ws, region: at.region, node: at.nodeA, ifname: 'veth99', name: 'web' })).name, 'web');
  t.is((await addEndpoint(store, { workspace: at.ws, region: r2.name, node: at.nodeA, ifname: 'veth98', name: 'web' })).name, 'web');
  await expectStoreError(t, addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth97', name: 'Web_1' }), 'invalid', 'invalid endpoint name "Web_1" (use a DNS label: a lowercase letter, then up to 62 lowercase letters, digits or dashes, not ending with a dash)');
});

test('an endpoint is found by its name in DNS (observe, explain, tunnel create), unless another workspace or region uses it too', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const other = await setup(store);
  const label = name('n');
  const a = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'vethn1', name: label });
  t.is((await findEndpointByName(store, label))?.address, a.address);
  t.is(await findEndpointByName(store, `${label}-x`), null);
  await addEndpoint(store, { workspace: other.ws, region: at.region, node: other.nodeA, ifname: 'vethn2', name: label });
  await expectStoreError(t, findEndpointByName(store, label), 'invalid', `2 endpoints are named "${label}" (in other workspaces or regions) (pass its address, <node>/<ifname> or <region>.<workspace id>.<endpoint id>)`);
  await removeEndpoint(store, a.address);
  t.not((await findEndpointByName(store, label))?.address, a.address, 'a removed endpoint frees its name');
});

test('a removed endpoint frees its name; rename claims the new name, frees the old one, and refuses a taken one', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const a = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth1', name: 'db' });
  const b = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth2', name: 'cache' });
  await removeEndpoint(store, a.address);
  const a2 = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth3', name: 'db' });
  t.is(a2.name, 'db');
  await expectStoreError(t, renameEndpoint(store, b.address, 'db'), 'exists', `name "db" is taken in workspace ${at.ws} region ${at.region} by endpoint ${a2.address} (choose another --name; names are unique per workspace and region)`);
  const renamed = await renameEndpoint(store, b.address, 'cache-2');
  t.is(renamed.name, 'cache-2');
  t.is((await getEndpoint(store, b.address))?.name, 'cache-2');
  // The old name is free, the new one taken.
  t.is((await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth4', name: 'cache' })).name, 'cache');
  await expectStoreError(t, addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth5', name: 'cache-2' }), 'exists', `name "cache-2" is taken in workspace ${at.ws} region ${at.region} by endpoint ${b.address} (choose another --name; names are unique per workspace and region)`);
  const cleared = await renameEndpoint(store, b.address, null);
  t.is(cleared.name, undefined);
  t.false('name' in ((await getEndpoint(store, b.address)) ?? {}));
  t.is((await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth6', name: 'cache-2' })).name, 'cache-2');
  await expectStoreError(t, renameEndpoint(store, a.address, 'x'), 'not-found', `endpoint ${a.address} was removed (list live endpoints with \`i6pnctl endpoint list\`)`);
});

test('named clusters: unique per workspace and region, members ranked in placement order, show by rank, swap, delete', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const eps = await createCluster(store, { workspace: at.ws, region: at.region, size: 5, nodes: [at.nodeA, at.nodeB], name: 'trainer' });
  t.deepEqual(eps.map((e) => [e.cluster, e.rank, e.node]), [0, 1, 2, 3, 4].map((i) => ['trainer', i, i % 2 ? at.nodeB : at.nodeA]));
  await expectStoreError(
    t,
    createCluster(store, { workspace: at.ws, region: at.region, size: 2, nodes: [at.nodeA], name: 'trainer' }),
    'exists',
    `cluster "trainer" already exists in workspace ${at.ws} region ${at.region} (choose another --name; \`i6pnctl cluster list\` shows the taken ones)`,
  );
  const show = await showCluster(store, { workspace: at.ws, region: at.region, name: 'trainer' });
  t.is(show.cluster.size, 5);
  t.is(show.cluster.workspaceId, at.wsId);
  t.deepEqual(show.members.map((m) => m.address), eps.map((e) => e.address));
  t.deepEqual((await listClusters(store, { workspace: at.ws })).clusters.map((c) => c.name), ['trainer']);

  const swapped = await swapClusterRanks(store, { workspace: at.ws, region: at.region, name: 'trainer' }, 0, 3);
  t.deepEqual(swapped.map((m) => m.address), [eps[3], eps[1], eps[2], eps[0], eps[4]].map((e) => e!.address));
  t.deepEqual(swapped.map((m) => m.rank), [0, 1, 2, 3, 4]);
  await expectStoreError(t, swapClusterRanks(store, { workspace: at.ws, region: at.region, name: 'trainer' }, 0, 5), 'invalid', 'rank 5 is not in cluster trainer (ranks 0 to 4) (pass two ranks of the cluster)');

  // A removed member leaves its rank empty; a swap with the empty rank moves the other.
  await removeEndpoint(store, eps[2]!.address);
  t.deepEqual((await showCluster(store, { workspace: at.ws, region: at.region, name: 'trainer' })).members.map((m) => m.rank), [0, 1, 3, 4]);
  const moved = await swapClusterRanks(store, { workspace: at.ws, region: at.region, name: 'trainer' }, 4, 2);
  t.deepEqual(moved.map((m) => m.rank), [0, 1, 2, 3]);
  t.is(moved[2]!.address, eps[4]!.address);

  const gone = await deleteCluster(store, { workspace: at.ws, region: at.region, name: 'trainer' });
  t.is(gone.removedEndpoints.length, 4);
  t.deepEqual((await listEndpoints(store, { workspace: at.ws })).endpoints, []);
  await expectStoreError(t, showCluster(store, { workspace: at.ws, region: at.region, name: 'trainer' }), 'not-found', `no cluster "trainer" in workspace ${at.ws} region ${at.region} (list clusters with \`i6pnctl cluster list\`)`);
  // The name is free again; an unnamed cluster records no cluster at all.
  t.is((await createCluster(store, { workspace: at.ws, region: at.region, size: 1, nodes: [at.nodeA], name: 'trainer' }))[0]!.rank, 0);
  const unnamed = await createCluster(store, { workspace: at.ws, region: at.region, size: 2, nodes: [at.nodeA] });
  t.false(unnamed.some((e) => 'cluster' in e || 'rank' in e));
  // Deleting the workspace deletes its clusters.
  await deleteWorkspace(store, at.ws, { force: true });
  t.deepEqual((await listClusters(store, { region: at.region })).clusters, []);
});

test.serial('an endpoint racing its workspace\'s deletion is undone', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  // Registrations and a forced delete at once: afterwards no endpoint of the deleted workspace remains.
  const adds = Array.from({ length: 40 }, (_, i) => addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: `veth${i}` }).catch((e: StoreError) => e));
  await new Promise((r) => setTimeout(r, 5));
  const del = deleteWorkspace(store, at.ws, { force: true });
  const results = await Promise.all(adds);
  await del;
  for (const r of results) if (r instanceof StoreError) t.is(r.code, 'not-found');
  let left: string[] = [];
  for await (const k of await (await store.endpoints(at.region)).keys(`${at.wsId.toString(16).padStart(8, '0')}.*`)) left.push(k);
  t.deepEqual(left, []);
});

test('peers: live i6pn endpoints of the same workspace and region, itself excluded', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const otherRegion = await addRegion(store, name('r'));
  const otherWs = await createWorkspace(store, name('w'));
  const cluster = await createCluster(store, { workspace: at.ws, region: at.region, size: 4, nodes: [at.nodeA, at.nodeB] });
  const dark = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'dark0', i6pn: false });
  await addEndpoint(store, { workspace: at.ws, region: otherRegion.name, node: name('node'), ifname: 'veth0' });
  await addEndpoint(store, { workspace: otherWs.name, region: at.region, node: at.nodeA, ifname: 'veth9' });
  const me = cluster[0]!;
  const p = await peersOf(store, me.address);
  t.deepEqual(p.endpoint, me);
  t.deepEqual(p.peers.map((e) => e.address).sort(), cluster.slice(1).map((e) => e.address).sort());
  t.deepEqual(p.invalid, []);
  t.deepEqual((await peersOf(store, dark.address)).peers, []);
  await removeEndpoint(store, cluster[1]!.address);
  t.is((await peersOf(store, me.address)).peers.length, 2);
  await expectStoreError(t, peersOf(store, cluster[1]!.address), 'not-found', `no live endpoint has address ${cluster[1]!.address} (list endpoints with \`i6pnctl endpoint list\`)`);
});

// ---------------------------------------------------------------- invalid entries, nodes

test('entries written by hand that break the schema are reported by list, not applied or crashed on', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const good = await addEndpoint(store, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'veth0' });
  const wsHex = at.wsId.toString(16).padStart(8, '0');
  const bucket = await store.endpoints(at.region);
  await bucket.put(`${wsHex}.00000000000000aa`, 'this is not json');
  await bucket.put(`${wsHex}.00000000000000bb`, JSON.stringify({ ...good, v: 2 }));
  await bucket.put(`${wsHex}.00000000000000cc`, JSON.stringify(good));
  const r = await listEndpoints(store, { workspace: at.ws });
  t.deepEqual(r.endpoints, [good]);
  // Named as the store holds them: the region's bucket and the key in it.
  t.deepEqual(
    r.invalid.map((i) => [i.bucket, i.key, i.reason]),
    [
      [`i6pn_endpoints_${at.region}`, `${wsHex}.00000000000000aa`, 'json'],
      [`i6pn_endpoints_${at.region}`, `${wsHex}.00000000000000bb`, 'schema'],
      [`i6pn_endpoints_${at.region}`, `${wsHex}.00000000000000cc`, 'key'],
    ],
  );
  t.is(r.invalid[2]!.message, `key ${at.region}.${wsHex}.00000000000000cc does not match the record (expected ${endpointKey(good)})`);
  t.is(r.invalid[1]!.message, 'v: Invalid input: expected 1');
  // peers reports them too, and skips them.
  const p = await peersOf(store, good.address);
  t.deepEqual(p.peers, []);
  t.is(p.invalid.length, 3);
  // Workspaces and regions as well.
  const wn = name('w');
  await store.workspaces.put(`name.${wn}`, JSON.stringify({ v: 1, name: wn, id: 5, subnet: 'fdaa::/48', createdAt: new Date().toISOString() }));
  const wl = await listWorkspaces(store);
  t.false(wl.workspaces.some((w) => w.name === wn));
  t.deepEqual(wl.invalid.find((i) => i.key === `name.${wn}`), { bucket: 'i6pn_workspaces', key: `name.${wn}`, reason: 'schema', message: 'subnet: subnet does not match the workspace id' });
  const rn = name('r');
  await store.regions.put(`name.${rn}`, JSON.stringify({ v: 1, name: 'someone-else', id: 9 }));
  t.like((await listRegions(store)).invalid.find((i) => i.key === `name.${rn}`), { reason: 'key' });
  // A command that needs the broken entry says so.
  await expectStoreError(t, getWorkspace(store, wn), 'corrupt', `entry i6pn_workspaces/name.${wn} is invalid (schema: subnet: subnet does not match the workspace id) (fix or delete it with the nats CLI; only i6pnctl should write the store)`);
  t.is(ADDRESSES_BUCKET, 'i6pn_addresses');
});

test('node list: heartbeats, stale marking, invalid records', async (t) => {
  const { store } = t.context;
  const now = new Date('2026-06-01T12:00:00.000Z');
  const rec = (n: string, region: string, agoMs: number) => ({
    v: 1,
    name: n,
    region,
    version: '0.1.0',
    startedAt: '2026-06-01T11:00:00.000Z',
    heartbeatAt: new Date(now.getTime() - agoMs).toISOString(),
  });
  const region = name('r');
  const fresh = name('node');
  const old = name('node');
  await store.nodes.put(fresh, JSON.stringify(rec(fresh, region, 5_000)));
  await store.nodes.put(old, JSON.stringify(rec(old, region, 45_000)));
  const broken = name('node');
  await store.nodes.put(broken, JSON.stringify({ v: 1, name: broken }));
  const r = await listNodes(store, { now, region });
  t.deepEqual(
    r.nodes.map((n) => [n.name, n.stale, n.heartbeatAgeSeconds]).sort(),
    [
      [fresh, false, 5],
      [old, true, 45],
    ].sort(),
  );
  t.like(r.invalid.find((i) => i.key === broken), { bucket: 'i6pn_nodes', reason: 'schema' });
  const strict = await listNodes(store, { now, region, staleAfterMs: 1000 });
  t.true(strict.nodes.every((n) => n.stale));
});

test('bucket settings apply when the store creates the buckets, and existing buckets are left alone', async (t) => {
  const nats = await startNats();
  try {
    const s1 = await connectStore({ servers: nats.url, history: 3, storage: 'memory' });
    await addRegion(s1, 'eu-west');
    const st = await (await s1.endpoints('eu-west')).status();
    t.is(st.history, ENDPOINTS_HISTORY, 'an endpoints bucket keeps one value per key whatever --kv-history says');
    t.is(st.storage, 'memory');
    t.is(st.replicas, 1);
    t.is(st.bucket, 'i6pn_endpoints_eu-west');
    t.is((await s1.workspaces.status()).history, 3);
    await s1.close();
    const s2 = await connectStore({ servers: nats.url, history: 10 });
    t.is((await (await s2.endpoints('eu-west')).status()).history, 1);
    t.is((await s2.workspaces.status()).history, 3);
    await s2.close();
  } finally {
    await nats.destroy();
  }
  const fresh = await startNats();
  try {
    const s = await connectStore({ servers: fresh.url });
    for (const kv of [s.regions, s.workspaces, s.addresses, s.ifnames, s.nodes]) {
      const st = await kv.status();
      t.is(st.history, 5);
      t.is(st.storage, 'file');
    }
    // No endpoints bucket until a region is added, and never the first layout's.
    t.deepEqual(await s.endpointRegions(), []);
    t.is(await s.legacyEndpoints(), null);
    await s.close();
  } finally {
    await fresh.destroy();
  }
});

test('an endpoint written past i6pnctl (no address claim) can still be removed, and its address is then never handed out', async (t) => {
  const { store } = t.context;
  const at = await setup(store);
  const bits = Uint8Array.from([0xab, 0xcd, 0, 0, 0, 0, 0, 1]);
  const addr = formatAddress(makeEndpointAddressFor(at.wsId, at.regionId, bits));
  const record = { v: 1, address: addr, workspace: at.ws, workspaceId: at.wsId, region: at.region, regionId: at.regionId, node: at.nodeA, ifname: 'hand0', i6pn: true, createdAt: new Date().toISOString() };
  await (await store.endpoints(at.region)).put(endpointBucketKey(record), JSON.stringify(record));
  t.deepEqual((await peersOf(store, addr)).endpoint, record);
  t.deepEqual(await removeEndpoint(store, addr), record);
  t.like(decodeRecord(addressRecord, (await store.addresses.get(addressKey(parseAddress(addr))))?.value), { ok: true, record: { state: 'removed', address: addr } });
  const s = await scriptedStore(t, { endpointBits: [bits] });
  try {
    const e = await t.throwsAsync(addEndpoint(s, { workspace: at.ws, region: at.region, node: at.nodeA, ifname: 'hand0' }), { instanceOf: StoreError });
    t.is(e?.code, 'exhausted');
  } finally {
    await s.close();
  }
});
