import test from 'ava';
import { formatAddress, makeEndpointAddress } from '../lib/address.js';
import {
  BUCKET_TABLE,
  BUCKETS,
  bucketOfKvStream,
  endpointRecord,
  endpointsBucketSpec,
  kvStream,
  kvSubject,
  ENDPOINTS_HISTORY,
  clusterKey,
  nameKey,
  LEGACY_ENDPOINTS_BUCKET,
  MAX_RECORD_BYTES,
  decodeRecord,
  endpointBucketKey,
  endpointKey,
  endpointsBucket,
  ifnameKey,
  isValidIfname,
  isValidName,
  isValidNodeName,
  nodeRecord,
  locateEndpointKey,
  parseEndpointKey,
  regionIdKey,
  regionOfEndpointsBucket,
  validateEndpointEntry,
  workspaceIdKey,
  workspaceRecord,
  type EndpointRecord,
} from '../lib/schema.js';

const WS = 0x51373ebf;
const REGION = 0x0a70;
const ADDR = makeEndpointAddress(WS, REGION, Uint8Array.from([0x1b, 0x9d, 0x3a, 0x11, 0x71, 0xf2, 0x5f, 0x0f]));

function record(over: Partial<EndpointRecord> = {}): EndpointRecord {
  return {
    v: 1,
    address: formatAddress(ADDR),
    workspace: 'acme',
    workspaceId: WS,
    region: 'eu-west',
    regionId: REGION,
    node: 'node-a',
    ifname: 'veth0',
    i6pn: true,
    createdAt: '2026-01-02T03:04:05.000Z',
    ...over,
  };
}
const KEY = 'eu-west.51373ebf.1b9d3a1171f25f0f';

test('keys', (t) => {
  t.is(endpointKey(record()), KEY);
  t.deepEqual(parseEndpointKey(KEY), { region: 'eu-west', workspaceId: WS, endpointId: '1b9d3a1171f25f0f' });
  t.is(parseEndpointKey('eu-west.51373ebf'), null);
  t.is(parseEndpointKey('EU.51373ebf.1b9d3a1171f25f0f'), null);
  t.is(regionIdKey(0xa70), 'id.0a70');
  t.is(workspaceIdKey(1), 'id.00000001');
  t.is(ifnameKey('node-a', 'veth0'), 'node-a.7665746830');
  t.deepEqual([...BUCKETS], ['i6pn_regions', 'i6pn_workspaces', 'i6pn_addresses', 'i6pn_ifnames', 'i6pn_nodes', 'i6pn_names', 'i6pn_clusters', 'i6pn_gateways']);
  t.is(nameKey('eu-west', WS, 'web-1'), 'eu-west.51373ebf.web-1');
  t.is(clusterKey('eu-west', WS, 'trainer'), 'eu-west.51373ebf.trainer');
  t.is(LEGACY_ENDPOINTS_BUCKET, 'i6pn_endpoints');
});

test('the bucket table: names, what an agent may do with each, and the KV subjects over their streams', (t) => {
  t.deepEqual(
    Object.values(BUCKET_TABLE).map((b) => [b.name, b.agent]),
    [
      ['i6pn_regions', 'read'],
      ['i6pn_workspaces', 'none'],
      ['i6pn_addresses', 'none'],
      ['i6pn_ifnames', 'none'],
      ['i6pn_nodes', 'read, own key'],
      ['i6pn_names', 'none'],
      ['i6pn_clusters', 'none'],
      ['i6pn_gateways', 'none'],
    ],
  );
  const ep = endpointsBucketSpec('eu-west');
  t.like(ep, { name: 'i6pn_endpoints_eu-west', history: ENDPOINTS_HISTORY, agent: 'read', record: endpointRecord });
  t.throws(() => endpointsBucketSpec('EU West'), { message: /invalid region name/ });
  t.is(kvStream(ep.name), 'KV_i6pn_endpoints_eu-west');
  t.is(bucketOfKvStream('KV_i6pn_nodes'), 'i6pn_nodes');
  t.is(bucketOfKvStream('OBJ_i6pn_nodes'), null);
  t.is(kvSubject('i6pn_nodes', 'node-a'), '$KV.i6pn_nodes.node-a');
  t.is(kvSubject('i6pn_nodes'), '$KV.i6pn_nodes.>');
});

test('one endpoints bucket per region: its name, the key in it, and where a store-wide key lives', (t) => {
  t.is(endpointsBucket('eu-west'), 'i6pn_endpoints_eu-west');
  t.is(ENDPOINTS_HISTORY, 1);
  for (const bad of ['EU', 'eu.west', 'eu*', '>', '', 'a'.repeat(32)]) t.throws(() => endpointsBucket(bad), { message: /invalid region name/ }, bad);
  t.is(regionOfEndpointsBucket('i6pn_endpoints_eu-west'), 'eu-west');
  // The first layout's bucket, other buckets and malformed names are no region's.
  for (const other of ['i6pn_endpoints', 'i6pn_endpoints_', 'i6pn_endpoints_EU', 'i6pn_regions', 'KV_i6pn_endpoints_eu-west']) t.is(regionOfEndpointsBucket(other), null, other);
  t.is(endpointBucketKey(record()), '51373ebf.1b9d3a1171f25f0f');
  t.is(endpointKey(record()), `eu-west.${endpointBucketKey(record())}`);
  t.deepEqual(locateEndpointKey(KEY), { region: 'eu-west', bucket: 'i6pn_endpoints_eu-west', key: '51373ebf.1b9d3a1171f25f0f' });
  t.is(locateEndpointKey('51373ebf.1b9d3a1171f25f0f'), null);
  t.is(locateEndpointKey('eu-west.51373ebf.1b9d3a1171f25f0f.x'), null);
});

test('a valid endpoint entry is accepted as bytes, string or object', (t) => {
  for (const v of [new TextEncoder().encode(JSON.stringify(record())), JSON.stringify(record()), record()]) {
    const r = validateEndpointEntry(KEY, v);
    if (!r.ok) return t.fail(r.message);
    t.deepEqual(r.record, record());
    t.deepEqual(Array.from(r.addr), Array.from(ADDR));
  }
});

test('endpoint entries that are not JSON', (t) => {
  const r = validateEndpointEntry(KEY, new TextEncoder().encode('{"v":1,'));
  t.is(r.ok, false);
  if (!r.ok) {
    t.is(r.reason, 'json');
    t.regex(r.message, /^not JSON: /);
  }
  const bad = validateEndpointEntry(KEY, Uint8Array.from([0xff, 0xfe]));
  t.like(bad, { ok: false, reason: 'json' });
});

test('endpoint entries that break the schema', (t) => {
  const cases: [unknown, RegExp][] = [
    [{ ...record(), v: 2 }, /^v: /],
    [{ ...record(), ifname: 'this-name-is-too-long' }, /^ifname: must be a Linux interface name/],
    [{ ...record(), ifname: 'a/b' }, /^ifname: /],
    [{ ...record(), node: 'Node_A' }, /^node: /],
    [{ ...record(), workspaceId: 0 }, /^workspaceId: workspace id 0 is infrastructure: a gateway/],
    [{ ...record(), role: 'gateway' }, /^workspaceId: workspace id 0 is infrastructure: a gateway/],
    [{ ...record(), workspaceId: 0x1_0000_0000 }, /^workspaceId: /],
    [{ ...record(), role: 'router' }, /^role: /],
    [{ ...record(), regionId: 70000 }, /^regionId: /],
    [{ ...record(), i6pn: 'yes' }, /^i6pn: /],
    [{ ...record(), createdAt: 'yesterday' }, /^createdAt: /],
    [(({ address: _a, ...rest }) => rest)(record()), /^address: /],
    [[1, 2, 3], /^\(value\): /],
    [null, /^\(value\): /],
  ];
  for (const [value, message] of cases) {
    const r = validateEndpointEntry(KEY, JSON.stringify(value));
    t.like(r, { ok: false, reason: 'schema' }, JSON.stringify(value));
    if (!r.ok) t.regex(r.message, message);
  }
});

test('endpoint entries whose address does not match', (t) => {
  const cases: [Partial<EndpointRecord>, string][] = [
    [{ address: 'not-an-address' }, 'invalid IPv6 address "not-an-address"'],
    [{ address: 'fd00:5137:3ebf:a70:1b9d:3a11:71f2:5f0f' }, 'address fd00:5137:3ebf:a70:1b9d:3a11:71f2:5f0f is not in fdaa::/16'],
    [{ address: 'FDAA:5137:3ebf:a70:1b9d:3a11:71f2:5f0f' }, 'is not canonical (fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f)'],
    [{ address: 'fdaa:5137:3ebe:a70:1b9d:3a11:71f2:5f0f' }, 'carries workspace id 51373ebe, record says 51373ebf'],
    [{ address: 'fdaa:5137:3ebf:a71:1b9d:3a11:71f2:5f0f' }, 'carries region id 0a71, record says 0a70'],
  ];
  for (const [over, message] of cases) {
    const r = validateEndpointEntry(KEY, record(over));
    t.like(r, { ok: false, reason: 'address' }, JSON.stringify(over));
    if (!r.ok) t.true(r.message.includes(message), r.message);
  }
});

test('endpoint entries whose key does not match the record', (t) => {
  const cases: [string, RegExp][] = [
    ['eu-west.51373ebf', /is not <region>\.<workspace id 8 hex>\.<endpoint id 16 hex>/],
    ['eu-west.51373ebe.1b9d3a1171f25f0f', /does not match/],
    ['eu-west.51373ebf.1b9d3a1171f25f00', /does not match/],
  ];
  for (const [key, message] of cases) {
    const r = validateEndpointEntry(key, record());
    t.like(r, { ok: false, reason: 'key' }, key);
    if (!r.ok) t.regex(r.message, message);
  }
});

test('an endpoint entry under a key of another region: region; a value longer than any record: too_large, unparsed', (t) => {
  const r = validateEndpointEntry('us-east.51373ebf.1b9d3a1171f25f0f', record());
  t.like(r, { ok: false, reason: 'region' });
  if (!r.ok) t.regex(r.message, /endpoint of region eu-west under a key of region us-east/);
  // A valid record padded with JSON white space past the bound is refused all the same, as are megabytes of garbage.
  const text = JSON.stringify(record());
  const padded = text + ' '.repeat(MAX_RECORD_BYTES);
  t.like(validateEndpointEntry(KEY, padded), { ok: false, reason: 'too_large' });
  t.like(validateEndpointEntry(KEY, new Uint8Array(1 << 20).fill(0x7b)), { ok: false, reason: 'too_large' });
  t.like(validateEndpointEntry(KEY, text + ' '.repeat(MAX_RECORD_BYTES - text.length)), { ok: true });
});

test('name validators', (t) => {
  for (const ok of ['a', 'eu-west', 'acme2', 'a'.repeat(31)]) t.true(isValidName(ok), ok);
  for (const bad of ['', 'A', '1abc', 'eu_west', 'eu.west', 'a'.repeat(32), 'eu*', 'eu>', 'é']) t.false(isValidName(bad), bad);
  for (const ok of ['node-a', 'n1', 'ip-10-0-0-1.ec2.internal', '1node']) t.true(isValidNodeName(ok), ok);
  for (const bad of ['', 'Node', 'node..a', '.node', 'node.', 'node-', 'a'.repeat(64), 'node*', 'node a']) t.false(isValidNodeName(bad), bad);
  for (const ok of ['veth0', 'eth0.10', 'i6p0123456789ab', '_x', 'a'.repeat(15)]) t.true(isValidIfname(ok), ok);
  for (const bad of ['', '.', '..', '-a', 'a/b', 'a:b', 'a b', 'a'.repeat(16)]) t.false(isValidIfname(bad), bad);
});

test('workspace records: the subnet must match the id', (t) => {
  const ok = { v: 1, name: 'acme', id: WS, subnet: 'fdaa:5137:3ebf::/48', createdAt: '2026-01-02T03:04:05.000Z' };
  t.like(decodeRecord(workspaceRecord, ok), { ok: true });
  t.like(decodeRecord(workspaceRecord, { ...ok, deletedAt: '2026-01-03T00:00:00.000Z' }), { ok: true });
  const bad = decodeRecord(workspaceRecord, { ...ok, subnet: 'fdaa:5137:3ebe::/48' });
  t.deepEqual(bad, { ok: false, reason: 'schema', message: 'subnet: subnet does not match the workspace id' });
});

test('node records', (t) => {
  const ok = { v: 1, name: 'node-a', region: 'eu-west', version: '0.1.0', startedAt: '2026-01-02T03:04:05.000Z', heartbeatAt: '2026-01-02T03:04:15.000Z' };
  t.like(decodeRecord(nodeRecord, JSON.stringify(ok)), { ok: true, record: ok });
  t.like(decodeRecord(nodeRecord, { ...ok, region: 'EU' }), { ok: false, reason: 'schema' });
  t.like(decodeRecord(nodeRecord, { ...ok, heartbeatAt: 12 }), { ok: false, reason: 'schema' });
  t.like(decodeRecord(nodeRecord, 'nope'), { ok: false, reason: 'json' });
});

test('names, clusters and ranks are optional; entries without them stay valid; cluster and rank go together', (t) => {
  t.true(validateEndpointEntry(KEY, record()).ok);
  const named = validateEndpointEntry(KEY, record({ name: 'web-1', cluster: 'trainer', rank: 0 }));
  t.true(named.ok);
  if (named.ok) t.deepEqual([named.record.name, named.record.cluster, named.record.rank], ['web-1', 'trainer', 0]);
  const bad = (over: Record<string, unknown>): string => {
    const v = validateEndpointEntry(KEY, { ...record(), ...over });
    return v.ok ? 'ok' : v.message;
  };
  t.is(bad({ cluster: 'trainer' }), 'rank: cluster and rank go together');
  t.is(bad({ rank: 3 }), 'rank: cluster and rank go together');
  t.regex(bad({ name: 'Web' }), /^name: must be a DNS label/);
  t.regex(bad({ name: 'web-' }), /^name: must be a DNS label/);
  t.regex(bad({ name: '1web' }), /^name: must be a DNS label/);
  t.regex(bad({ name: 'a'.repeat(64) }), /^name: must be a DNS label/);
  t.is(bad({ name: 'a'.repeat(63) }), 'ok');
  t.regex(bad({ cluster: 'trainer', rank: 10_000 }), /^rank: /);
  t.regex(bad({ cluster: 'trainer', rank: 1.5 }), /^rank: /);
  t.regex(bad({ cluster: 'trainer', rank: -1 }), /^rank: /);
});
