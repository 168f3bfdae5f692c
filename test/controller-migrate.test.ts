/**
 * The upgrade from the first layout (one i6pn_endpoints bucket, keys
 * `<region>.<ws>.<ep>`, history 5) to one bucket per region: `i6pnctl migrate`
 * copies, is idempotent, reports conflicts and invalid entries; while the old
 * bucket exists i6pnctl writes and reads both layouts; `migrate --finish`
 * deletes it once no live agent is older than this i6pnctl. Each test has a
 * nats-server of its own: the legacy bucket is the whole store's.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { formatAddress, makeEndpointAddress, parseAddress } from '../lib/address.js';
import {
  LEGACY_ENDPOINTS_BUCKET,
  SCHEMA_VERSION,
  addressKey,
  endpointBucketKey,
  endpointKey,
  ifnameKey,
  regionIdKey,
  regionNameKey,
  type EndpointRecord,
  type RegionRecord,
  type WorkspaceRecord,
} from '../lib/schema.js';
import { StoreError, connectStore, type Store } from '../lib/store.js';
import { addEndpoint, getEndpoint, listEndpoints, peersOf, removeEndpoint } from '../controller/store/endpoints.js';
import { addRegion } from '../controller/store/regions.js';
import { compareVersions, migrateEndpoints } from '../controller/store/migrate.js';
import { createCluster } from '../controller/store/clusters.js';
import { createWorkspace, deleteWorkspace, workspaceEndpointCounts } from '../controller/store/workspaces.js';
import { run } from '../controller/program.js';
import { REPO_ROOT, ctl, startNats, type NatsServer } from './helpers/nats.js';

const test = anyTest as TestFn<unknown>;
const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
/** What the agents of the first layout report. */
const FIRST_LAYOUT_VERSION = '0.1.0';

interface Old {
  nats: NatsServer;
  store: Store;
  legacy: KV;
  ws: WorkspaceRecord;
  r1: RegionRecord;
  r2: RegionRecord;
}

/**
 * A store as the first layout's i6pnctl left it: the legacy bucket (history
 * 5), two regions registered without buckets of their own, a workspace.
 */
async function firstLayout(t: ExecutionContext): Promise<Old> {
  const nats = await startNats();
  t.teardown(() => nats.destroy());
  const store = await connectStore({ servers: nats.url, name: 'controller-migrate-test' });
  t.teardown(() => store.close());
  const legacy = await new Kvm(store.nc).create(LEGACY_ENDPOINTS_BUCKET, { history: 5 });
  const r1: RegionRecord = { v: SCHEMA_VERSION, name: 'eu-west', id: 0x0a01 };
  const r2: RegionRecord = { v: SCHEMA_VERSION, name: 'us-east', id: 0x0a02 };
  for (const r of [r1, r2]) {
    await store.regions.create(regionIdKey(r.id), JSON.stringify(r));
    await store.regions.create(regionNameKey(r.name), JSON.stringify(r));
  }
  const ws = await createWorkspace(store, 'acme');
  t.deepEqual(await store.endpointRegions(), [], 'the first layout has no region buckets');
  return { nats, store, legacy, ws, r1, r2 };
}

let bitsSeq = 1;
/** What the first layout's `endpoint add` wrote: the address and interface claims, and the entry in the legacy bucket. */
async function oldEndpoint(o: Old, region: RegionRecord, node: string, ifname: string): Promise<EndpointRecord> {
  const bits = Uint8Array.from([0xc0, 0xde, 0, 0, 0, 0, 0, bitsSeq++]);
  const record: EndpointRecord = {
    v: SCHEMA_VERSION,
    address: formatAddress(makeEndpointAddress(o.ws.id, region.id, bits)),
    workspace: o.ws.name,
    workspaceId: o.ws.id,
    region: region.name,
    regionId: region.id,
    node,
    ifname,
    i6pn: true,
    createdAt: new Date().toISOString(),
  };
  const key = endpointKey(record);
  const now = record.createdAt;
  await o.store.addresses.create(addressKey(parseAddress(record.address)), JSON.stringify({ v: 1, address: record.address, endpointKey: key, state: 'active', createdAt: now }));
  await o.store.ifnames.create(ifnameKey(node, ifname), JSON.stringify({ v: 1, node, ifname, address: record.address, endpointKey: key, createdAt: now }));
  await o.legacy.put(key, JSON.stringify(record));
  return record;
}

async function keysOf(kv: KV): Promise<string[]> {
  const out: string[] = [];
  for await (const k of await kv.keys()) out.push(k);
  return out.sort();
}

async function legacyExists(store: Store): Promise<boolean> {
  const jsm = await jetstreamManager(store.nc);
  try {
    await jsm.streams.info(`KV_${LEGACY_ENDPOINTS_BUCKET}`);
    return true;
  } catch {
    return false;
  }
}

function heartbeat(name: string, region: string, version: string, agoMs = 0): string {
  return JSON.stringify({ v: 1, name, region, version, startedAt: new Date(Date.now() - 3_600_000).toISOString(), heartbeatAt: new Date(Date.now() - agoMs).toISOString() });
}

async function cli(nats: NatsServer, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await run(['node', 'i6pnctl', '--nats', nats.url, ...args], { out: (x) => (stdout += x), err: (x) => (stderr += x) });
  return { code, stdout, stderr };
}

function oneLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l !== '');
  if (lines.length !== 1) throw new Error(`expected one line on stderr, got:\n${stderr}`);
  return lines[0]!;
}

test('versions compare as semver; the first layout\'s agents are older than this i6pnctl', (t) => {
  t.is(compareVersions('0.1.0', '0.2.0'), -1);
  t.is(compareVersions('0.10.0', '0.9.9'), 1);
  t.is(compareVersions('1.2.3', 'v1.2.3'), 0);
  t.is(compareVersions('0.2.0-rc.1', '0.2.0'), -1);
  t.is(compareVersions('0.2.0-rc.2', '0.2.0-rc.10'), -1);
  t.is(compareVersions('0.2.0+build.5', '0.2.0'), 0);
  t.is(compareVersions('dev', '0.2.0'), null);
  t.is(compareVersions(FIRST_LAYOUT_VERSION, VERSION), -1, 'package.json must be newer than the first layout\'s release');
});

test('migrate copies every legacy entry into its region\'s bucket; again, it changes nothing; conflicts and invalid entries are reported', async (t) => {
  const o = await firstLayout(t);
  const eu = await Promise.all([0, 1, 2].map((i) => oldEndpoint(o, o.r1, 'node-a', `veth${i}`)));
  const us = await Promise.all([0, 1].map((i) => oldEndpoint(o, o.r2, 'node-b', `veth${i}`)));
  const wsHex = o.ws.id.toString(16).padStart(8, '0');
  await o.legacy.put(`eu-west.${wsHex}.00000000000000aa`, 'not json');
  // A valid record of a region nobody registered: no bucket is made for it.
  const stray = { ...us[0]!, region: 'mars', regionId: 0x0a09, address: formatAddress(makeEndpointAddress(o.ws.id, 0x0a09, Uint8Array.from([1, 1, 1, 1, 1, 1, 1, 1]))) };
  await o.legacy.put(endpointKey(stray), JSON.stringify(stray));

  const first = await migrateEndpoints(o.store, { version: VERSION });
  t.like(first, { legacyBucket: 'i6pn_endpoints', found: true, entries: 7, copied: 5, unchanged: 0, changedMeanwhile: 0, conflicts: [], oldAgents: [], finished: false });
  t.deepEqual(first.buckets, ['i6pn_endpoints_eu-west', 'i6pn_endpoints_us-east']);
  t.deepEqual(
    first.invalid.map((i) => [i.bucket, i.key, i.reason]),
    [
      ['i6pn_endpoints', `eu-west.${wsHex}.00000000000000aa`, 'json'],
      ['i6pn_endpoints', endpointKey(stray), 'key'],
    ],
  );
  t.is(first.invalid[1]!.message, 'region "mars" is not registered, so it has no endpoints bucket');
  t.deepEqual(await o.store.endpointRegions(), ['eu-west', 'us-east']);

  // Each entry in its region's bucket under <ws>.<ep>, the same bytes; the buckets keep one value per key.
  for (const [region, eps] of [['eu-west', eu], ['us-east', us]] as const) {
    const kv = await o.store.endpoints(region);
    t.is((await kv.status()).history, 1);
    t.deepEqual(await keysOf(kv), eps.map((e) => endpointBucketKey(e)).sort());
    for (const e of eps) t.is((await kv.get(endpointBucketKey(e)))?.string(), (await o.legacy.get(endpointKey(e)))?.string());
  }
  // Nothing left the legacy bucket: agents not yet upgraded still read it.
  t.is((await keysOf(o.legacy)).length, 7);

  const again = await migrateEndpoints(o.store, { version: VERSION });
  t.like(again, { entries: 7, copied: 0, unchanged: 5, conflicts: [] });
  t.deepEqual(again.invalid, first.invalid);

  // A region bucket that disagrees with the legacy bucket is reported, not overwritten.
  const eu1 = await o.store.endpoints('eu-west');
  const changed = JSON.stringify({ ...eu[1]!, node: 'node-z' });
  await eu1.put(endpointBucketKey(eu[1]!), changed);
  const third = await migrateEndpoints(o.store, { version: VERSION });
  t.like(third, { copied: 0, unchanged: 4 });
  t.deepEqual(third.conflicts, [{ bucket: 'i6pn_endpoints_eu-west', key: endpointBucketKey(eu[1]!), message: `holds another value than i6pn_endpoints/${endpointKey(eu[1]!)}; not overwritten` }]);
  t.is((await eu1.get(endpointBucketKey(eu[1]!)))?.string(), changed);
  // A value with other bytes but the same record is the same.
  await eu1.put(endpointBucketKey(eu[2]!), JSON.stringify(eu[2]!, null, 2));
  t.like(await migrateEndpoints(o.store, { version: VERSION }), { unchanged: 4, conflicts: [{ key: endpointBucketKey(eu[1]!) }] });

  // --finish refuses while they disagree; --force deletes the legacy bucket anyway.
  const refused = await t.throwsAsync(migrateEndpoints(o.store, { version: VERSION, finish: true }), { instanceOf: StoreError });
  t.is(refused?.code, 'upgrade-pending');
  t.is(refused?.what, `1 endpoint differs between i6pn_endpoints and the region buckets (first: i6pn_endpoints_eu-west/${endpointBucketKey(eu[1]!)})`);
  t.true(await legacyExists(o.store));
  t.like(await migrateEndpoints(o.store, { version: VERSION, finish: true, force: true }), { finished: true });
  t.false(await legacyExists(o.store));
  t.like(await migrateEndpoints(o.store, { version: VERSION }), { found: false, entries: 0, buckets: [], finished: false });
});

test('while the legacy bucket exists, i6pnctl writes both layouts and reads their union', async (t) => {
  const o = await firstLayout(t);
  const { store, legacy } = o;
  const old = await oldEndpoint(o, o.r1, 'node-a', 'veth-old');
  const other = await oldEndpoint(o, o.r1, 'node-b', 'veth-other');

  // Before migrate: the endpoints only the legacy bucket holds are seen, and can be removed.
  const listed = await listEndpoints(store, { region: 'eu-west' });
  t.deepEqual(listed.endpoints.map((e) => e.address).sort(), [old.address, other.address].sort());
  t.deepEqual(listed.invalid, []);
  t.deepEqual(await getEndpoint(store, old.address), old);
  t.deepEqual((await peersOf(store, old.address)).peers.map((e) => e.address), [other.address]);
  t.like(await workspaceEndpointCounts(store, o.ws), { total: 2, byRegion: { 'eu-west': 2 } });

  // New endpoints go to both layouts, the same value under each layout's key.
  const added = await addEndpoint(store, { workspace: 'acme', region: 'eu-west', node: 'node-a', ifname: 'veth-new' });
  const cluster = await createCluster(store, { workspace: 'acme', region: 'us-east', size: 3, nodes: ['node-c'] });
  const eu = await store.endpoints('eu-west');
  const usKv = await store.endpoints('us-east');
  for (const [kv, e] of [[eu, added], ...cluster.map((c) => [usKv, c] as const)] as const) {
    const inRegion = await kv.get(endpointBucketKey(e));
    const inLegacy = await legacy.get(endpointKey(e));
    t.truthy(inRegion?.string());
    t.is(inRegion?.string(), inLegacy?.string());
  }
  t.deepEqual(await keysOf(eu), [endpointBucketKey(added)], 'migrate has not run: the old endpoints are in the legacy bucket only');
  t.deepEqual((await peersOf(store, added.address)).peers.map((e) => e.address).sort(), [old.address, other.address].sort());

  // Removal deletes both, also an endpoint only the legacy bucket holds; migrate does not bring it back.
  t.deepEqual(await removeEndpoint(store, added.address), added);
  t.is(await eu.get(endpointBucketKey(added)).then((e) => (e?.operation === 'PUT' ? e : null)), null);
  t.is(await legacy.get(endpointKey(added)).then((e) => (e?.operation === 'PUT' ? e : null)), null);
  t.deepEqual(await removeEndpoint(store, old.address), old);
  t.is(await legacy.get(endpointKey(old)).then((e) => (e?.operation === 'PUT' ? e : null)), null);
  t.like(await migrateEndpoints(store, { version: VERSION }), { entries: 4, copied: 1, unchanged: 3 });
  t.deepEqual(await keysOf(eu).then(async (keys) => (await Promise.all(keys.map((k) => eu.get(k)))).filter((e) => e?.operation === 'PUT').map((e) => e!.key)), [endpointBucketKey(other)]);

  // A workspace delete sweeps both layouts, whatever migrate has copied.
  const late = await oldEndpoint(o, o.r2, 'node-c', 'veth-late');
  const refused = await t.throwsAsync(deleteWorkspace(store, 'acme'), { instanceOf: StoreError });
  t.is(refused?.what, 'workspace "acme" still has 5 endpoints');
  const d = await deleteWorkspace(store, 'acme', { force: true });
  t.deepEqual(d.removedEndpoints.map((e) => e.address).sort(), [other.address, late.address, ...cluster.map((c) => c.address)].sort());
  t.deepEqual((await listEndpoints(store)).endpoints, []);
  const live = async (kv: KV): Promise<string[]> => (await Promise.all((await keysOf(kv)).map((k) => kv.get(k)))).filter((e) => e?.operation === 'PUT').map((e) => e!.key);
  t.deepEqual(await live(legacy), []);
  t.deepEqual(await live(eu), []);
  t.deepEqual(await live(usKv), []);
});

test('migrate --finish is refused while a live agent is older; after the upgrade it deletes the legacy bucket for good', async (t) => {
  const o = await firstLayout(t);
  const { nats, store } = o;
  const e = await oldEndpoint(o, o.r1, 'node-a', 'veth0');
  await store.nodes.put('node-a', heartbeat('node-a', 'eu-west', FIRST_LAYOUT_VERSION));
  await store.nodes.put('node-b', heartbeat('node-b', 'us-east', VERSION));
  await store.nodes.put('node-gone', heartbeat('node-gone', 'us-east', FIRST_LAYOUT_VERSION, 3_600_000));

  const report = await cli(nats, ['migrate', '--json']);
  t.is(report.code, 0, report.stderr);
  t.is(report.stderr, '');
  const r = JSON.parse(report.stdout) as Record<string, unknown>;
  t.deepEqual(Object.keys(r), ['legacyBucket', 'found', 'buckets', 'entries', 'copied', 'unchanged', 'changedMeanwhile', 'conflicts', 'invalid', 'oldAgents', 'finished']);
  t.like(r, { found: true, entries: 1, copied: 1, finished: false });
  // The stale node is gone, not counted.
  t.deepEqual(r['oldAgents'], [{ name: 'node-a', region: 'eu-west', version: FIRST_LAYOUT_VERSION }]);

  const refused = await ctl(['migrate', '--finish'], { I6PN_NATS_URL: nats.url });
  t.is(refused.code, 1);
  t.is(refused.stdout, '');
  t.is(
    oneLine(refused.stderr),
    `i6pnctl: error: 1 live agent reports a version older than ${VERSION} and still reads i6pn_endpoints: node-a (${FIRST_LAYOUT_VERSION}) — upgrade them first (\`i6pnctl node list\` shows their versions), or pass --force; the legacy bucket is kept`,
  );
  t.true(await legacyExists(store));
  // A second i6pnctl, opened while the legacy bucket exists, writes both.
  const before = await connectStore({ servers: nats.url });
  t.teardown(() => before.close());
  const dual = await addEndpoint(before, { workspace: 'acme', region: 'eu-west', node: 'node-a', ifname: 'veth1' });
  t.truthy(await o.legacy.get(endpointKey(dual)));

  // node-a upgraded: its heartbeat reports this version.
  await store.nodes.put('node-a', heartbeat('node-a', 'eu-west', VERSION));
  const finished = await cli(nats, ['migrate', '--finish']);
  t.is(finished.code, 0, finished.stderr);
  t.regex(finished.stdout, /^legacy bucket +i6pn_endpoints \(2 endpoints\)\n/);
  t.regex(finished.stdout, /\ncopied +0\nalready there +2\n/);
  t.regex(finished.stdout, /\nold agents +none\n/);
  t.regex(finished.stdout, /\nnext +i6pn_endpoints is deleted; i6pnctl writes the region buckets only\n$/);
  t.false(await legacyExists(store));

  // The i6pnctl opened before still works, and does not bring the legacy bucket back.
  const after = await addEndpoint(before, { workspace: 'acme', region: 'eu-west', node: 'node-a', ifname: 'veth2' });
  t.deepEqual(await removeEndpoint(before, dual.address), dual);
  t.false(await legacyExists(store));
  t.deepEqual((await listEndpoints(store, { region: 'eu-west' })).endpoints.map((x) => x.address).sort(), [e.address, after.address].sort());

  const nothing = await cli(nats, ['migrate']);
  t.is(nothing.code, 0);
  t.is(nothing.stdout, 'nothing to migrate: there is no i6pn_endpoints bucket (the store keeps one endpoints bucket per region)\n');
  const nothingFinish = await cli(nats, ['migrate', '--finish', '--json']);
  t.is(nothingFinish.code, 0);
  t.like(JSON.parse(nothingFinish.stdout) as object, { found: false, finished: false });
});

test('migrate --finish --force deletes the legacy bucket despite older agents; warnings name what was not copied', async (t) => {
  const o = await firstLayout(t);
  await oldEndpoint(o, o.r2, 'node-b', 'veth0');
  const wsHex = o.ws.id.toString(16).padStart(8, '0');
  await o.legacy.put(`us-east.${wsHex}.00000000000000bb`, '{"v":2}');
  await o.store.nodes.put('node-b', heartbeat('node-b', 'us-east', FIRST_LAYOUT_VERSION));
  const usage = await cli(o.nats, ['migrate', '--force']);
  t.is(usage.code, 2);
  t.is(oneLine(usage.stderr), 'i6pnctl: error: --force goes with --finish — run `i6pnctl migrate --finish --force`');
  const forced = await cli(o.nats, ['migrate', '--finish', '--force']);
  t.is(forced.code, 0, forced.stderr);
  t.is(
    oneLine(forced.stderr),
    `i6pnctl: warning: invalid entry i6pn_endpoints/us-east.${wsHex}.00000000000000bb (schema: v: Invalid input: expected 1; address: Invalid input: expected string, received undefined; workspace: Invalid input: expected string, received undefined; workspaceId: Invalid input: expected number, received undefined; region: Invalid input: expected string, received undefined; regionId: Invalid input: expected number, received undefined; node: Invalid input: expected string, received undefined; ifname: Invalid input: expected string, received undefined; i6pn: Invalid input: expected boolean, received undefined; createdAt: Invalid input: expected string, received undefined) — not copied; fix or delete it, only i6pnctl should write the store`,
  );
  t.regex(forced.stdout, /\ncopied +1\n/);
  t.regex(forced.stdout, /\ninvalid +1 \(skipped; see the warnings\)\n/);
  t.regex(forced.stdout, new RegExp(`\\nold agents +node-b \\(${FIRST_LAYOUT_VERSION.replace(/\./g, '\\.')}\\)\\n`));
  t.false(await legacyExists(o.store));
});
