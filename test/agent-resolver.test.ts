/**
 * The node resolver's answers (agent/resolver.ts), query bytes in, answer
 * bytes out, over a names index filled the way the sync fills it. The
 * sockets, the rate limit and real clients are in test/e2e-dns.test.ts.
 */
import test from 'ava';
import * as dns from 'dns-packet';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseUpstream, parseZone, upstreamsFromResolvConf } from '../agent/config.js';
import { formatAddress, makeEndpointAddress } from '../lib/address.js';
import { NamesIndex, type Querier } from '../agent/names.js';
import { EndpointTable } from '../agent/table.js';
import { MAX_UDP_ANSWER, Resolver, type Resolution, type Transport } from '../agent/resolver.js';

const REGION_ID = 0x0a70;
const W1 = 0x51373ebf;
const W2 = 0x0a701b9d;
const ZONE = 'i6pn.local';

const addr = (ws: number, n: number): string => formatAddress(makeEndpointAddress(ws, REGION_ID, Uint8Array.from([0, 0, 0, 0, 0, 0, n >> 8, n & 0xff])));
const keyOf = (ws: number, n: number): string => `${ws.toString(16).padStart(8, '0')}.${n.toString(16).padStart(16, '0')}`;

/** W1: a querier (local), web, db, a 3-member cluster, 40 more peers; W2: its own web and a querier; a local endpoint without i6pn. */
function fixture(): { names: NamesIndex; q1: Querier; q2: Querier; dark: Querier } {
  const names = new NamesIndex(REGION_ID);
  const table = new EndpointTable();
  const put = (ws: number, n: number, fields: { name?: string; cluster?: string; rank?: number } | null, i6pn = true): void => {
    table.set({ workspace: ws, hi: 0, lo: n }, 1, false, i6pn);
    const address = addr(ws, n);
    names.applied(keyOf(ws, n), ws, i6pn, new Uint8Array(16), 0, fields ? { address, name: fields.name ?? null, cluster: fields.cluster ?? null, rank: fields.rank ?? -1 } : null);
  };
  put(W1, 1, null);
  put(W1, 2, { name: 'web' });
  put(W1, 3, { name: 'db' });
  for (let r = 0; r < 3; r++) put(W1, 10 + r, { cluster: 'trainer', rank: 2 - r });
  for (let i = 0; i < 40; i++) put(W1, 100 + i, null);
  put(W2, 1, null);
  put(W2, 2, { name: 'web' });
  put(W2, 3, { name: 'secret' });
  put(W1, 7, null, false);
  const q1: Querier = { address: addr(W1, 1), workspace: W1, i6pn: true, key: keyOf(W1, 1) };
  const q2: Querier = { address: addr(W2, 1), workspace: W2, i6pn: true, key: keyOf(W2, 1) };
  const dark: Querier = { address: addr(W1, 7), workspace: W1, i6pn: false, key: keyOf(W1, 7) };
  names.setLocals([q1, q2, dark], table);
  names.setComplete(true);
  return { names, q1, q2, dark };
}

function query(name: string, type: string, opts: { id?: number; edns?: number; flags?: number } = {}): Buffer {
  return dns.encode({
    type: 'query',
    id: opts.id ?? 4242,
    flags: opts.flags ?? dns.RECURSION_DESIRED,
    questions: [{ name, type: type as dns.RecordType, class: 'IN' }],
    additionals: opts.edns ? [{ name: '.', type: 'OPT', udpPayloadSize: opts.edns, extendedRcode: 0, ednsVersion: 0, flags: 0, flag_do: false, options: [] }] : [],
  });
}

function ask(r: Resolver, source: string, name: string, type = 'AAAA', transport: Transport = 'udp', opts: Parameters<typeof query>[2] = {}) {
  const res = r.resolve(query(name, type, opts), source, transport);
  if (res.kind !== 'answer') return { res, packet: null };
  return { res, packet: dns.decode(res.bytes) };
}

const rcode = (p: dns.DecodedPacket | null): string => (p as unknown as { rcode: string } | null)?.rcode ?? 'none';
const data = (p: dns.DecodedPacket | null, type = 'AAAA'): unknown[] => (p?.answers ?? []).filter((a) => a.type === type).map((a) => (a as { data: unknown }).data);

test('the apex is the querier itself; names, clusters and ranks are of its own workspace; other workspaces get NXDOMAIN exactly like nothing', (t) => {
  const { names, q1, q2 } = fixture();
  const r = new Resolver({ zone: ZONE, names, forwarding: false });
  const apex = ask(r, q1.address, ZONE);
  t.is(rcode(apex.packet), 'NOERROR');
  t.deepEqual(data(apex.packet), [q1.address]);
  t.true(apex.packet!.flag_aa);
  t.is((apex.packet!.answers![0] as dns.StringAnswer).ttl, 5);
  t.is(apex.packet!.id, 4242);
  t.deepEqual(data(ask(r, q2.address, `${ZONE}.`).packet), [q2.address], 'a trailing dot is the same name');
  t.deepEqual(data(ask(r, q1.address, 'web.i6pn.local').packet), [addr(W1, 2)]);
  t.deepEqual(data(ask(r, q2.address, 'web.i6pn.local').packet), [addr(W2, 2)], 'the same name, the querier\'s own workspace');
  t.deepEqual(data(ask(r, q1.address, 'WeB.I6pn.Local').packet), [addr(W1, 2)], 'case does not matter');
  t.is(ask(r, q1.address, 'WeB.I6pn.Local').packet!.questions![0]!.name, 'WeB.I6pn.Local', 'the question is echoed as asked');

  const secretFromW1 = ask(r, q1.address, 'secret.i6pn.local').packet!;
  const nothing = ask(r, q1.address, 'nothing.i6pn.local').packet!;
  t.is(rcode(secretFromW1), 'NXDOMAIN');
  // Byte for byte the same answer as a name that exists nowhere (but for the name itself).
  t.deepEqual(
    { ...secretFromW1, questions: [], id: 0 },
    { ...nothing, questions: [], id: 0 },
  );
  t.is(secretFromW1.authorities?.[0]?.type, 'SOA');

  // A records: NODATA, so that getent ahosts does not give up on the name.
  const a = ask(r, q1.address, 'web.i6pn.local', 'A').packet!;
  t.is(rcode(a), 'NOERROR');
  t.deepEqual(a.answers, []);
  t.is(a.authorities?.[0]?.type, 'SOA');
});

test('clusters: AAAA in rank order, TXT and SRV carry the ranks, <rank>.<cluster> is one member', (t) => {
  const { names, q1, q2 } = fixture();
  const r = new Resolver({ zone: ZONE, names, forwarding: false });
  t.deepEqual(data(ask(r, q1.address, 'trainer.cluster.i6pn.local').packet), [addr(W1, 12), addr(W1, 11), addr(W1, 10)]);
  t.deepEqual(
    data(ask(r, q1.address, 'trainer.cluster.i6pn.local', 'TXT').packet, 'TXT').map((d) => (d as Buffer[]).map((b) => b.toString()).join('')),
    [`rank=0 address=${addr(W1, 12)}`, `rank=1 address=${addr(W1, 11)}`, `rank=2 address=${addr(W1, 10)}`],
  );
  t.deepEqual(
    data(ask(r, q1.address, 'trainer.cluster.i6pn.local', 'SRV').packet, 'SRV'),
    [0, 1, 2].map((i) => ({ priority: i, weight: 0, port: 0, target: `${i}.trainer.cluster.i6pn.local` })),
  );
  t.deepEqual(data(ask(r, q1.address, '1.trainer.cluster.i6pn.local').packet), [addr(W1, 11)]);
  t.is(rcode(ask(r, q1.address, '3.trainer.cluster.i6pn.local').packet), 'NXDOMAIN');
  t.is(rcode(ask(r, q1.address, '01.trainer.cluster.i6pn.local').packet), 'NXDOMAIN', 'a rank is written one way');
  t.is(rcode(ask(r, q2.address, 'trainer.cluster.i6pn.local').packet), 'NXDOMAIN', 'another workspace\'s cluster');
  t.is(rcode(ask(r, q1.address, 'cluster.i6pn.local').packet), 'NOERROR', 'the clusters\' parent exists for everybody alike');
  t.is(rcode(ask(r, q1.address, 'x.web.i6pn.local').packet), 'NXDOMAIN');
});

test('_peers: every i6pn peer of the workspace but the querier; cut with TC over UDP, whole over TCP', (t) => {
  const { names, q1, q2 } = fixture();
  const r = new Resolver({ zone: ZONE, names, forwarding: false });
  const all = [2, 3, 10, 11, 12, ...Array.from({ length: 40 }, (_, i) => 100 + i)].map((n) => addr(W1, n)).sort();
  const tcp = ask(r, q1.address, '_peers.i6pn.local', 'AAAA', 'tcp');
  t.false(tcp.packet!.flag_tc);
  t.deepEqual(data(tcp.packet), all);
  t.false(data(tcp.packet).includes(q1.address));
  t.false(data(tcp.packet).includes(addr(W1, 7)), 'no endpoint without i6pn');
  const udp = ask(r, q1.address, '_peers.i6pn.local');
  t.true(udp.packet!.flag_tc);
  t.true(udp.res.kind === 'answer' && udp.res.truncated && udp.res.bytes.length <= 512);
  t.deepEqual(data(udp.packet), all.slice(0, data(udp.packet).length));
  t.true(data(udp.packet).length > 5);
  const edns = ask(r, q1.address, '_peers.i6pn.local', 'AAAA', 'udp', { edns: 4096 });
  t.true(edns.res.kind === 'answer' && edns.res.bytes.length <= MAX_UDP_ANSWER && edns.res.bytes.length > 512);
  t.true(edns.packet!.flag_tc);
  t.is(edns.packet!.additionals?.[0]?.type, 'OPT');
  t.deepEqual(data(ask(r, q2.address, '_peers.i6pn.local', 'AAAA', 'tcp').packet), [addr(W2, 2), addr(W2, 3)]);
});

test('REFUSED for a source that is no local i6pn endpoint; out of the zone: forwarded or REFUSED; SERVFAIL while incomplete', (t) => {
  const { names, q1, dark } = fixture();
  const r = new Resolver({ zone: ZONE, names, forwarding: false });
  t.is(rcode(ask(r, dark.address, ZONE).packet), 'REFUSED');
  t.is(rcode(ask(r, addr(W1, 2), ZONE).packet), 'REFUSED', 'a remote endpoint is nobody here');
  t.is(rcode(ask(r, '::1', 'web.i6pn.local').packet), 'REFUSED');
  t.is(rcode(ask(r, q1.address, 'example.com').packet), 'REFUSED');
  t.is(rcode(ask(r, q1.address, 'noti6pn.local').packet), 'REFUSED', 'a suffix is not the zone');
  const fwd = new Resolver({ zone: ZONE, names, forwarding: true });
  t.like(fwd.resolve(query('example.com', 'A'), q1.address, 'udp'), { kind: 'forward', type: 'A' });
  t.is(rcode(ask(fwd, dark.address, 'example.com').packet), 'REFUSED', 'no forwarding for a source without i6pn');
  t.true(ask(fwd, q1.address, ZONE).packet!.flag_ra);
  const servfail = dns.decode(fwd.failure(query('example.com', 'A', { id: 7 }), 'udp')!);
  t.is(rcode(servfail), 'SERVFAIL');
  t.is(servfail.id, 7);

  names.setComplete(false);
  t.is(rcode(ask(r, q1.address, 'web.i6pn.local').packet), 'SERVFAIL', 'not NXDOMAIN: the name may yet exist');
  t.deepEqual(data(ask(r, q1.address, ZONE).packet), [q1.address], 'the apex needs only the querier');
});

test('malformed queries: FORMERR to a readable header, nothing to the rest; responses are never answered', (t) => {
  const { names, q1 } = fixture();
  const r = new Resolver({ zone: ZONE, names, forwarding: false });
  const drop = (b: Buffer): Resolution => r.resolve(b, q1.address, 'udp');
  t.is(drop(Buffer.alloc(5)).kind, 'drop');
  const garbage = Buffer.concat([query(ZONE, 'AAAA', { id: 99 }).subarray(0, 12), Buffer.from([63, 1, 2, 3])]);
  const formerr = drop(garbage);
  t.is(formerr.kind, 'answer');
  if (formerr.kind === 'answer') {
    t.is(formerr.rcode, 'FORMERR');
    t.is(dns.decode(formerr.bytes).id, 99);
  }
  const response = query(ZONE, 'AAAA');
  response[2] = response[2]! | 0x80;
  t.is(drop(response).kind, 'drop', 'a response is not answered (no reflection)');
  const two = dns.encode({ type: 'query', id: 1, questions: [{ name: ZONE, type: 'AAAA' }, { name: 'web.i6pn.local', type: 'AAAA' }] });
  t.like(drop(two), { kind: 'answer', rcode: 'FORMERR' });
  const notify = dns.encode({ type: 'query', id: 1, flags: 4 << 11, questions: [{ name: ZONE, type: 'SOA' }] });
  t.like(drop(notify), { kind: 'answer', rcode: 'NOTIMP' });
  // A pointer loop in the name: dns-packet refuses it.
  const loop = Buffer.from(query(ZONE, 'AAAA'));
  loop.writeUInt16BE(0xc00c, 12);
  t.like(drop(loop), { kind: 'answer', rcode: 'FORMERR' });
});

test('an answer asked again is the kept one with the new id, until the index changes', (t) => {
  const { names, q1 } = fixture();
  const r = new Resolver({ zone: ZONE, names, forwarding: false });
  const first = ask(r, q1.address, 'web.i6pn.local', 'AAAA', 'udp', { id: 1 });
  const again = ask(r, q1.address, 'web.i6pn.local', 'AAAA', 'udp', { id: 2 });
  t.is(again.packet!.id, 2);
  t.deepEqual(data(again.packet), data(first.packet));
  t.deepEqual({ ...again.packet, id: 0 }, { ...first.packet, id: 0 });
  // The endpoint is renamed (the sync applies its new entry): the kept answer goes.
  names.applied(keyOf(W1, 2), W1, true, new Uint8Array(16), 0, { address: addr(W1, 2), name: 'web-2', cluster: null, rank: -1 });
  t.is(rcode(ask(r, q1.address, 'web.i6pn.local', 'AAAA', 'udp', { id: 3 }).packet), 'NXDOMAIN');
  t.deepEqual(data(ask(r, q1.address, 'web-2.i6pn.local').packet), [addr(W1, 2)]);
  // Removed from the map: gone from _peers at once, too.
  const peers = data(ask(r, q1.address, '_peers.i6pn.local', 'AAAA', 'tcp').packet);
  names.removed(keyOf(W1, 3), W1);
  const after = data(ask(r, q1.address, '_peers.i6pn.local', 'AAAA', 'tcp').packet);
  t.is(after.length, peers.length - 1);
  t.false(after.includes(addr(W1, 3)));
  // Another querier, the same question: its own answer.
  t.deepEqual(data(ask(r, fixture().q2.address, '_peers.i6pn.local', 'AAAA', 'tcp').packet), [addr(W2, 2), addr(W2, 3)], 'its own workspace\'s peers');
});

test('--dns-zone and --dns-upstream are checked at the edge: upstreams in the canonical text the kernel reports answers from', (t) => {
  t.deepEqual(parseUpstream('fd69:0400::fe'), { host: 'fd69:400::fe', port: 53 });
  t.deepEqual(parseUpstream('[2001:DB8::1]:5353'), { host: '2001:db8::1', port: 5353 });
  t.deepEqual(parseUpstream('10.0.0.2:5353'), { host: '10.0.0.2', port: 5353 });
  t.throws(() => parseUpstream('dns.example:53'), { message: /expected an address, IPV4:PORT or \[IPV6\]:PORT/ });
  t.throws(() => parseUpstream('[::1]:99999'));
  t.is(parseZone('I6PN.Local.'), 'i6pn.local');
  t.throws(() => parseZone('bad_zone'), { message: /expected a domain name/ });
  const conf = join(mkdtempSync(join(tmpdir(), 'i6pn-resolv-')), 'resolv.conf');
  writeFileSync(conf, '# a node\nnameserver 10.255.255.53\nnameserver fdaa::53\nnameserver fe80::1%eth0\nsearch example\n');
  t.deepEqual(upstreamsFromResolvConf(conf), [{ host: '10.255.255.53', port: 53 }], 'never itself, no link-local one');
  t.deepEqual(upstreamsFromResolvConf('/nonexistent/resolv.conf'), []);
});
