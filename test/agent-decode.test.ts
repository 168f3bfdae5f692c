/**
 * The agent's byte-level decoder (agent/decode.ts) held to the schema,
 * lib/schema.ts validateEndpointEntry() (zod): whatever the decoder accepts,
 * the schema accepts with the same fields and the agent's region; what the
 * schema accepts in the plain form i6pnctl writes, the decoder accepts too
 * (so the slow path stays the exception). Random records, each with one
 * mutation drawn from what a broken writer or an attacker might put in a KV
 * value.
 */
import test from 'ava';
import fc from 'fast-check';
import { endpointIdOf, formatAddress, isCanonicalAddress, makeEndpointAddress, workspaceIdHex } from '../lib/address.js';
import { validateEndpointEntry } from '../lib/schema.js';
import {
  DecodeContext,
  addressOf,
  clusterOf,
  decodeEndpoint,
  hasNames,
  ifnameOf,
  nameOf,
  newDecoded,
  nodeId,
  parseBucketKey,
  rankOf,
  type KeyParts,
} from '../agent/decode.js';

const REGION = 'eu-west';
const REGION_ID = 0x0e01;
const NODE = 'node-1.rack-2';
const ctx = new DecodeContext(REGION, REGION_ID, NODE);

/** Low 64 bits, each 16-bit group zero half of the time (runs of zeros everywhere). */
const lowBits = fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 4, maxLength: 4 }).map((g) => {
  const b = new Uint8Array(8);
  g.forEach((v, i) => {
    b[2 * i] = v >> 8;
    b[2 * i + 1] = v & 0xff;
  });
  return b;
});
const workspaceId = fc.oneof(fc.integer({ min: 1, max: 0xffffffff }), fc.constant(0x00010000), fc.constant(1), fc.constant(0xffffffff));

const MUTATIONS = [
  'none',
  'spaces',
  'reordered',
  'unknown-key',
  'duplicate-key',
  'missing-key',
  'escaped-string',
  'unicode',
  'v-2',
  'v-float',
  'v-string',
  'ws-other',
  'ws-zero',
  'ws-float',
  'ws-leading-zero',
  'ws-negative',
  'ws-exponent',
  'region-other',
  'regionid-other',
  'address-upper',
  'address-long',
  'address-other',
  'address-trailing',
  'node-upper',
  'node-dot',
  'node-long',
  'node-dash-end',
  'node-self',
  'ifname-slash',
  'ifname-long',
  'ifname-dot-first',
  'i6pn-string',
  'i6pn-false',
  'created-offset',
  'created-feb30',
  'created-leap',
  'created-nonleap',
  'workspace-upper',
  'workspace-long',
  'truncated',
  'trailing-garbage',
  'array',
  'not-json',
  'control-char',
  'named',
  'clustered',
  'named-clustered-reordered',
  'name-upper',
  'name-dash-end',
  'name-digit-first',
  'name-63',
  'name-64',
  'cluster-no-rank',
  'rank-no-cluster',
  'rank-float',
  'rank-max',
  'rank-too-big',
  'rank-negative',
  'rank-leading-zero',
  'rank-string',
] as const;
type Mutation = (typeof MUTATIONS)[number];

function entry(low: Uint8Array, ws: number, m: Mutation): { key: string; value: Uint8Array } {
  const addr = makeEndpointAddress(ws, REGION_ID, low);
  const address = formatAddress(addr);
  const rec: Record<string, unknown> = {
    v: 1,
    address,
    workspace: 'tenant-a',
    workspaceId: ws,
    region: REGION,
    regionId: REGION_ID,
    node: 'node-2.rack-2',
    ifname: 'veth_a-1.b',
    i6pn: true,
    createdAt: '2026-11-30T12:34:56.789Z',
  };
  const key = `${workspaceIdHex(ws)}.${endpointIdOf(addr)}`;
  let text: string | null = null;
  switch (m) {
    case 'none':
      break;
    case 'spaces':
      text = JSON.stringify(rec, null, '\t').replace(/:/g, ' : ');
      break;
    case 'reordered':
      text = JSON.stringify(Object.fromEntries(Object.entries(rec).reverse()));
      break;
    case 'unknown-key':
      rec['extra'] = { nested: [1, 2] };
      break;
    case 'duplicate-key':
      text = JSON.stringify(rec).replace('"i6pn":true', '"i6pn":false,"i6pn":true');
      break;
    case 'missing-key':
      delete rec['createdAt'];
      break;
    case 'escaped-string':
      text = JSON.stringify(rec).replace('"tenant-a"', '"tenant\\u002da"');
      break;
    case 'unicode':
      rec['workspace'] = 'tenänt';
      break;
    case 'v-2':
      rec['v'] = 2;
      break;
    case 'v-float':
      text = JSON.stringify(rec).replace('"v":1', '"v":1.0');
      break;
    case 'v-string':
      rec['v'] = '1';
      break;
    case 'ws-other':
      rec['workspaceId'] = (ws % 0xffffffff) + 1;
      break;
    case 'ws-zero':
      rec['workspaceId'] = 0;
      break;
    case 'ws-float':
      text = JSON.stringify(rec).replace(`"workspaceId":${ws}`, `"workspaceId":${ws}.0`);
      break;
    case 'ws-leading-zero':
      text = JSON.stringify(rec).replace(`"workspaceId":${ws}`, `"workspaceId":0${ws}`);
      break;
    case 'ws-negative':
      rec['workspaceId'] = -ws;
      break;
    case 'ws-exponent':
      text = JSON.stringify(rec).replace(`"workspaceId":${ws}`, `"workspaceId":${ws}e0`);
      break;
    case 'region-other':
      rec['region'] = 'eu-east';
      break;
    case 'regionid-other':
      rec['regionId'] = REGION_ID + 1;
      break;
    case 'address-upper':
      rec['address'] = address.toUpperCase();
      break;
    case 'address-long':
      rec['address'] = Array.from({ length: 8 }, (_, i) => ((addr[2 * i]! << 8) | addr[2 * i + 1]!).toString(16)).join(':');
      break;
    case 'address-other':
      rec['address'] = formatAddress(makeEndpointAddress(ws, REGION_ID, low.map((x, i) => (i === 7 ? x ^ 1 : x))));
      break;
    case 'address-trailing':
      rec['address'] = `${address}/64`;
      break;
    case 'node-upper':
      rec['node'] = 'Node-2';
      break;
    case 'node-dot':
      rec['node'] = 'node-2..rack';
      break;
    case 'node-long':
      rec['node'] = 'n'.repeat(64);
      break;
    case 'node-dash-end':
      rec['node'] = 'node-2.rack-';
      break;
    case 'node-self':
      rec['node'] = NODE;
      break;
    case 'ifname-slash':
      rec['ifname'] = 'veth/1';
      break;
    case 'ifname-long':
      rec['ifname'] = 'v'.repeat(16);
      break;
    case 'ifname-dot-first':
      rec['ifname'] = '.veth';
      break;
    case 'i6pn-string':
      rec['i6pn'] = 'true';
      break;
    case 'i6pn-false':
      rec['i6pn'] = false;
      break;
    case 'created-offset':
      rec['createdAt'] = '2026-11-30T12:34:56+01:00';
      break;
    case 'created-feb30':
      rec['createdAt'] = '2026-02-30T12:34:56Z';
      break;
    case 'created-leap':
      rec['createdAt'] = '2028-02-29T00:00:00Z';
      break;
    case 'created-nonleap':
      rec['createdAt'] = '2100-02-29T00:00:00Z';
      break;
    case 'workspace-upper':
      rec['workspace'] = 'Tenant';
      break;
    case 'workspace-long':
      rec['workspace'] = `t${'a'.repeat(31)}`;
      break;
    case 'truncated':
      text = JSON.stringify(rec).slice(0, -3);
      break;
    case 'trailing-garbage':
      text = `${JSON.stringify(rec)} x`;
      break;
    case 'array':
      text = JSON.stringify([rec]);
      break;
    case 'not-json':
      text = 'not json at all';
      break;
    case 'control-char':
      text = JSON.stringify(rec).replace('veth_a-1.b', 'veth\u0001');
      break;
    case 'named':
      rec['name'] = 'web-1';
      break;
    case 'clustered':
      Object.assign(rec, { cluster: 'trainer', rank: (ws % 100) + 0 });
      break;
    case 'named-clustered-reordered':
      text = JSON.stringify(Object.fromEntries(Object.entries({ ...rec, rank: 7, name: 'w9', cluster: 'c-0' }).reverse()));
      break;
    case 'name-upper':
      rec['name'] = 'Web';
      break;
    case 'name-dash-end':
      rec['name'] = 'web-';
      break;
    case 'name-digit-first':
      rec['name'] = '1web';
      break;
    case 'name-63':
      rec['name'] = `w${'0'.repeat(62)}`;
      break;
    case 'name-64':
      rec['name'] = `w${'0'.repeat(63)}`;
      break;
    case 'cluster-no-rank':
      rec['cluster'] = 'trainer';
      break;
    case 'rank-no-cluster':
      rec['rank'] = 1;
      break;
    case 'rank-float':
      text = JSON.stringify({ ...rec, cluster: 'c', rank: 1 }).replace('"rank":1', '"rank":1.0');
      break;
    case 'rank-max':
      Object.assign(rec, { cluster: 'c', rank: 9999 });
      break;
    case 'rank-too-big':
      Object.assign(rec, { cluster: 'c', rank: 10_000 });
      break;
    case 'rank-negative':
      Object.assign(rec, { cluster: 'c', rank: -1 });
      break;
    case 'rank-leading-zero':
      text = JSON.stringify({ ...rec, cluster: 'c', rank: 7 }).replace('"rank":7', '"rank":07');
      break;
    case 'rank-string':
      Object.assign(rec, { cluster: 'c', rank: '3' });
      break;
  }
  return { key, value: new TextEncoder().encode(text ?? JSON.stringify(rec)) };
}

/** Mutations that keep the entry in the plain form i6pnctl writes (the decoder must accept those the schema does). */
const PLAIN: ReadonlySet<Mutation> = new Set([
  'none',
  'spaces',
  'reordered',
  'node-self',
  'i6pn-false',
  'created-leap',
  'ifname-dot-first',
  'named',
  'clustered',
  'named-clustered-reordered',
  'name-63',
  'rank-max',
]);

test('decodeEndpoint accepts exactly what validateEndpointEntry accepts for the region, with the same fields', (t) => {
  const kp: KeyParts = { workspace: 0, hi: 0, lo: 0 };
  const out = newDecoded();
  const seen = new Map<Mutation, { fast: number; schema: number }>();
  fc.assert(
    fc.property(lowBits, workspaceId, fc.constantFrom(...MUTATIONS), (low, ws, m) => {
      const { key, value } = entry(low, ws, m);
      t.true(parseBucketKey(key, kp), key);
      const schema = validateEndpointEntry(`${REGION}.${key}`, value);
      const schemaOk = schema.ok && schema.record.region === REGION && schema.record.regionId === REGION_ID;
      const fast = decodeEndpoint(value, kp, ctx, out);
      const s = seen.get(m) ?? { fast: 0, schema: 0 };
      s.fast += fast ? 1 : 0;
      s.schema += schemaOk ? 1 : 0;
      seen.set(m, s);
      if (fast) {
        if (!schemaOk) return t.fail(`decoder accepted what the schema rejects (${m}): ${new TextDecoder().decode(value)}`) as never;
        const r = schema.record;
        t.is(addressOf(out), r.address);
        t.is(ifnameOf(out), r.ifname);
        t.is(out.i6pn, r.i6pn);
        t.is(out.local, r.node === NODE);
        t.is(out.node, nodeId(r.node));
        t.is(nameOf(out), r.name ?? null);
        t.is(clusterOf(out), r.cluster ?? null);
        t.is(rankOf(out), r.rank ?? -1);
        t.is(hasNames(out), r.name !== undefined || r.cluster !== undefined);
      } else if (schemaOk && PLAIN.has(m)) {
        t.fail(`decoder declined a plain valid entry (${m}): ${new TextDecoder().decode(value)}`);
      }
    }),
    { numRuns: 20_000 },
  );
  // Every mutation was drawn, and the rejecting ones were rejected by both.
  for (const m of MUTATIONS) t.truthy(seen.get(m), `mutation ${m} was exercised`);
  t.is(seen.get('none')!.fast, seen.get('none')!.schema);
  t.is(seen.get('unknown-key')!.fast, 0, 'unknown keys go to the slow path');
  t.true(seen.get('unknown-key')!.schema > 0, 'zod strips unknown keys: the slow path applies them');
  t.is(seen.get('created-feb30')!.schema, 0);
  t.is(seen.get('created-nonleap')!.schema, 0);
  for (const m of ['named', 'clustered', 'named-clustered-reordered', 'name-63', 'rank-max'] as const) t.is(seen.get(m)!.fast, seen.get(m)!.schema, `${m}: the fast path takes every valid one`);
  for (const m of ['name-upper', 'name-dash-end', 'name-digit-first', 'name-64', 'cluster-no-rank', 'rank-no-cluster', 'rank-too-big', 'rank-negative', 'rank-string'] as const) {
    t.is(seen.get(m)!.schema, 0, `${m}: invalid`);
  }
});

test('parseBucketKey reads exactly <8 hex>.<16 hex>; isCanonicalAddress is RFC 5952 text', (t) => {
  const kp: KeyParts = { workspace: 0, hi: 0, lo: 0 };
  t.true(parseBucketKey('0000abcd.0123456789abcdef', kp));
  t.deepEqual(kp, { workspace: 0xabcd, hi: 0x01234567, lo: 0x89abcdef });
  for (const bad of ['0000ABCD.0123456789abcdef', '0000abcd-0123456789abcdef', '0000abcd.0123456789abcde', 'eu.0000abcd.0123456789abcdef', '0000abcd.0123456789abcdeg', '']) {
    t.false(parseBucketKey(bad, kp), bad);
  }
  fc.assert(
    fc.property(lowBits, workspaceId, fc.integer({ min: 1, max: 0xffff }), (low, ws, region) => {
      const text = formatAddress(makeEndpointAddress(ws, region, low));
      const b = new TextEncoder().encode(`"${text}"`);
      const v = new DataView(low.buffer);
      t.true(isCanonicalAddress(b, 1, b.length - 1, ws, region, v.getUint32(0), v.getUint32(4)), text);
      t.false(isCanonicalAddress(b, 1, b.length - 2, ws, region, v.getUint32(0), v.getUint32(4)), `${text} cut short`);
      t.false(isCanonicalAddress(b, 0, b.length - 1, ws, region, v.getUint32(0), v.getUint32(4)), `"${text}`);
    }),
    { numRuns: 3000 },
  );
});
