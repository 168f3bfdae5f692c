/**
 * Golden packets: a table of described packets, each with the reason the
 * kernel programs must report, run through BPF_PROG_TEST_RUN in enforce and
 * in monitor mode. Each case also checks the reference model, and that exactly
 * one counter (hook, verdict, reason) moved by one packet and its bytes.
 */
import test from 'ava';
import { ipv4Packet, ipv6Offsets, ipv6Packet, rawFrame, truncate, type Ipv6Spec } from '../agent/bpf/packet.js';
import type { HookName, ReasonName } from '../agent/bpf/dataplane.js';
import { decide, MAX_EXT_HDRS, type Reason } from './policy-model.js';
import { M, observe, openFixture, R1, R2, W1, type Fixture } from './helpers/golden.js';
import { privateAddress } from '../agent/bpf/packet.js';

interface Case {
  name: string;
  hook: HookName;
  packet: Uint8Array;
  /** which veth the TC hooks run on (default: the local endpoint's) */
  on?: 'local' | 'local2' | 'localNoI6pn' | 'unregistered';
  expect: Reason;
}

const PUBLIC_A = '2001:db8::a';
const PUBLIC_B = '2001:db8::b';
const p6 = (src: Uint8Array | string, dst: Uint8Array | string, more: Partial<Ipv6Spec> = {}) =>
  ipv6Packet({ src, dst, ...more });
const dstOpts = (n: number) => Array.from({ length: n }, () => ({ type: 'dest-opts' as const }));
const ns = { proto: 'icmpv6' as const, icmpType: 135 };

/** Cases that hold at every hook, given a sender and receiver the hook allows. */
function commonCases(hook: HookName, src: Uint8Array, dst: Uint8Array): Case[] {
  const c = (name: string, packet: Uint8Array, expect: Reason): Case => ({ name, hook, packet, expect });
  return [
    c('allowed: same workspace, same region, live members', p6(src, dst), 'pass_private'),
    c('allowed over TCP', p6(src, dst, { l4: { proto: 'tcp', dstPort: 80 } }), 'pass_private'),
    c('allowed ICMPv6 echo', p6(src, dst, { l4: { proto: 'icmpv6', icmpType: 128 } }), 'pass_private'),
    c('IPv4 is not ours', ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2' }), 'pass_not_private'),
    c('ARP is not ours', rawFrame({ etherType: 0x0806, payload: new Uint8Array(28) }), 'pass_not_private'),
    c('public IPv6 is not ours', p6(PUBLIC_A, PUBLIC_B), 'pass_not_private'),
    c('public IPv6 with a routing header is not ours', p6(PUBLIC_A, PUBLIC_B, { ext: [{ type: 'routing' }] }), 'pass_not_private'),
    c('NDP between link-local addresses', p6('fe80::1', 'ff02::1:ff00:a', { l4: ns }), 'pass_not_private'),
    c('NDP from a private address to solicited-node multicast', p6(src, 'ff02::1:ff00:a', { l4: ns }), 'pass_not_private'),
    c('NDP from link-local to a private address', p6('fe80::1', dst, { l4: { proto: 'icmpv6', icmpType: 136 } }), 'pass_not_private'),
    c('UDP from a private address to link-scope multicast', p6(src, 'ff02::1'), 'outside'),
    c('UDP from link-local to a private address', p6('fe80::1', dst), 'outside'),
    c('public source to a private address', p6(PUBLIC_A, dst), 'outside'),
    c('private source to a public address', p6(src, PUBLIC_A), 'outside'),
    c('global multicast with a private source', p6(src, 'ff0e::1', { l4: ns }), 'outside'),
    c('other workspace (address bits)', p6(privateAddress(0x0a701b9d, R1, 5), dst), 'cross_workspace'),
    c('other region (address bits)', p6(privateAddress(W1, R2, 5), dst), 'cross_region'),
    c('IPv6 ethertype, version 4', p6(src, dst, { version: 4 }), 'malformed'),
    // VLAN
    c('one VLAN tag, allowed', p6(src, dst, { vlans: [10] }), 'pass_private'),
    c('two VLAN tags (802.1ad + 802.1Q), allowed', p6(src, dst, { vlans: [{ id: 5, tpid: 0x88a8 }, 10] }), 'pass_private'),
    c('two 802.1Q tags, allowed', p6(src, dst, { vlans: [5, 10] }), 'pass_private'),
    c('three VLAN tags', p6(src, dst, { vlans: [1, 2, 3] }), 'vlan_depth'),
    c('three VLAN tags around IPv4', ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2', vlans: [1, 2, 3] }), 'vlan_depth'),
    c('one VLAN tag hiding another workspace', p6(privateAddress(0x0a701b9d, R1, 5), dst, { vlans: [10] }), 'cross_workspace'),
    c('two VLAN tags hiding another region', p6(privateAddress(W1, R2, 5), dst, { vlans: [1, 2] }), 'cross_region'),
    c('two VLAN tags around IPv4', ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2', vlans: [1, 2] }), 'pass_not_private'),
    // extension headers
    c('hop-by-hop options', p6(src, dst, { ext: [{ type: 'hop-by-hop' }] }), 'pass_private'),
    c('destination options', p6(src, dst, { ext: [{ type: 'dest-opts', length: 16 }] }), 'pass_private'),
    c('first fragment', p6(src, dst, { ext: [{ type: 'fragment', offset: 0, more: true }] }), 'pass_private'),
    c('later fragment', p6(src, dst, { ext: [{ type: 'fragment', offset: 185, more: false }], l4: { proto: 'raw', protocol: 17, payload: new Uint8Array(16) } }), 'pass_private'),
    c('authentication header', p6(src, dst, { ext: [{ type: 'ah' }] }), 'pass_private'),
    c('hop-by-hop, fragment, AH, destination options', p6(src, dst, { ext: [{ type: 'hop-by-hop' }, { type: 'fragment' }, { type: 'ah' }, { type: 'dest-opts' }] }), 'pass_private'),
    c(`extension header chain at the bound (${MAX_EXT_HDRS})`, p6(src, dst, { ext: dstOpts(MAX_EXT_HDRS) }), 'pass_private'),
    c(`extension header chain at the bound + 1 (${MAX_EXT_HDRS + 1})`, p6(src, dst, { ext: dstOpts(MAX_EXT_HDRS + 1) }), 'ext_hdr_limit'),
    c('routing header hidden behind the bound', p6(src, dst, { ext: [...dstOpts(MAX_EXT_HDRS), { type: 'routing' }] }), 'ext_hdr_limit'),
    c('routing header (segment routing, type 4)', p6(src, dst, { ext: [{ type: 'routing', routingType: 4, segmentsLeft: 1, addresses: [privateAddress(0x0a701b9d, R1, 5)] }] }), 'routing_header'),
    c('routing header (type 2) behind hop-by-hop', p6(src, dst, { ext: [{ type: 'hop-by-hop' }, { type: 'routing', routingType: 2, segmentsLeft: 1, addresses: [privateAddress(W1, R1, 0x55)] }] }), 'routing_header'),
    c('routing header with no segments left', p6(src, dst, { ext: [{ type: 'routing', segmentsLeft: 0 }] }), 'routing_header'),
    c('routing header in a first fragment', p6(src, dst, { ext: [{ type: 'fragment', more: true }, { type: 'routing' }] }), 'routing_header'),
    c('mobility header', p6(src, dst, { ext: [{ type: 'generic', protocol: 135 }] }), 'ext_hdr_denied'),
    c('HIP header', p6(src, dst, { ext: [{ type: 'generic', protocol: 139 }] }), 'ext_hdr_denied'),
    c('shim6 header', p6(src, dst, { ext: [{ type: 'generic', protocol: 140 }] }), 'ext_hdr_denied'),
    c('experimental header 253', p6(src, dst, { ext: [{ type: 'generic', protocol: 253 }] }), 'ext_hdr_denied'),
    c('experimental header 254 behind destination options', p6(src, dst, { ext: [{ type: 'dest-opts' }, { type: 'generic', protocol: 254 }] }), 'ext_hdr_denied'),
    c('hop-by-hop claiming more bytes than the packet has', p6(src, dst, { ext: [{ type: 'raw', protocol: 0, bytes: Uint8Array.of(0, 255, 1, 4, 0, 0, 0, 0) }] }), 'truncated'),
    c('later fragment of another workspace', p6(privateAddress(0x0a701b9d, R1, 5), dst, { ext: [{ type: 'fragment', offset: 10 }] }), 'cross_workspace'),
    c('first fragment of another region', p6(privateAddress(W1, R2, 5), dst, { ext: [{ type: 'fragment', more: true }] }), 'cross_region'),
  ];
}

function hookCases(): Case[] {
  const c = (hook: HookName, name: string, packet: Uint8Array, expect: Reason, on?: Case['on']): Case => ({
    hook,
    name,
    packet,
    expect,
    ...(on ? { on } : {}),
  });
  const ff = 'from_fabric';
  const fe = 'from_endpoint';
  const te = 'to_endpoint';
  return [
    ...commonCases(ff, M.remote, M.local),
    c(ff, 'to another local endpoint', p6(M.remote, M.local2), 'pass_private'),
    c(ff, 'other workspace member (address bits)', p6(M.otherWorkspace, M.local), 'cross_workspace'),
    c(ff, 'both ends in another region', p6(privateAddress(W1, R2, 1), privateAddress(W1, R2, 2)), 'not_local'),
    c(ff, 'destination on another node', p6(M.remote, M.remoteNoI6pn), 'not_local'),
    c(ff, 'unknown source', p6(M.unknown, M.local), 'unknown_source'),
    c(ff, 'unknown destination', p6(M.remote, M.unknown), 'unknown_dest'),
    c(ff, 'spoofed: a local endpoint address arriving from the fabric', p6(M.local2, M.local), 'spoofed_source'),
    c(ff, 'source without i6pn', p6(M.remoteNoI6pn, M.local), 'no_i6pn'),
    c(ff, 'destination without i6pn', p6(M.remote, M.localNoI6pn), 'no_i6pn'),
    c(ff, 'member whose workspace disagrees with its bits', p6(M.inconsistent, M.local), 'cross_workspace'),

    ...commonCases(fe, M.local, M.remote),
    c(fe, 'to a local endpoint', p6(M.local, M.local2), 'pass_private'),
    c(fe, 'from the second local endpoint', p6(M.local2, M.remote), 'pass_private', 'local2'),
    c(fe, 'other workspace member (address bits)', p6(M.local, M.otherWorkspace), 'cross_workspace'),
    c(fe, 'other region', p6(M.local, M.otherRegion), 'cross_region'),
    c(fe, 'unknown destination', p6(M.local, M.unknown), 'unknown_dest'),
    c(fe, 'spoofed: another member of the same workspace', p6(M.remote, M.local2), 'spoofed_source'),
    c(fe, 'spoofed: an unregistered address of the workspace', p6(M.unknown, M.remote), 'spoofed_source'),
    c(fe, 'spoofed: the neighbour veth address', p6(M.local2, M.remote), 'spoofed_source'),
    c(fe, 'endpoint without i6pn sends', p6(M.localNoI6pn, M.remote), 'no_i6pn', 'localNoI6pn'),
    c(fe, 'to an endpoint without i6pn', p6(M.local, M.remoteNoI6pn), 'no_i6pn'),
    c(fe, 'on an interface the agent did not register', p6(M.local, M.remote), 'unknown_iface', 'unregistered'),
    c(fe, 'internet egress from a public address', p6(PUBLIC_A, PUBLIC_B), 'pass_not_private', 'unregistered'),
    c(fe, 'to a member whose workspace disagrees with its bits', p6(M.local, M.inconsistent), 'cross_workspace'),

    ...commonCases(te, M.remote, M.local),
    c(te, 'from a local endpoint', p6(M.local2, M.local), 'pass_private'),
    c(te, 'other workspace member (address bits)', p6(M.otherWorkspace, M.local), 'cross_workspace'),
    c(te, 'to another endpoint than the veth serves', p6(M.remote, M.local2), 'not_local'),
    c(te, 'unknown source', p6(M.unknown, M.local), 'unknown_source'),
    c(te, 'source without i6pn', p6(M.remoteNoI6pn, M.local), 'no_i6pn'),
    c(te, 'to the endpoint without i6pn', p6(M.remote, M.localNoI6pn), 'no_i6pn', 'localNoI6pn'),
    c(te, 'on an interface the agent did not register', p6(M.remote, M.local), 'unknown_iface', 'unregistered'),
    c(te, 'from a member whose workspace disagrees with its bits', p6(M.inconsistent, M.local), 'cross_workspace'),
  ];
}

let fx: Fixture;
test.before(async () => {
  fx = await openFixture('g');
});
test.after.always(() => fx?.close());

const ifindexFor = (k: Case['on']) => fx.ifindex[k ?? 'local'];

function check(t: import('ava').ExecutionContext, c: Case, mode: 'enforce' | 'monitor') {
  const ifindex = c.hook === 'from_fabric' ? undefined : ifindexFor(c.on);
  const label = `${c.hook}: ${c.name}`;
  t.is(decide(c.hook, c.packet, fx.model, ifindex ?? 0), c.expect, `model disagrees: ${label}`);
  const seen = observe(fx.dp, c.hook, c.packet, ifindex);
  const passes = c.expect === 'pass_private' || c.expect === 'pass_not_private';
  const verdict = passes ? 'pass' : mode === 'enforce' ? 'drop' : 'would_drop';
  t.is(seen.counted.reason, c.expect as ReasonName, `reason: ${label}`);
  t.is(seen.counted.hook, c.hook, `hook: ${label}`);
  t.is(seen.counted.verdict, verdict, `counted verdict: ${label}`);
  t.is(seen.verdict, passes || mode === 'monitor' ? 'pass' : 'drop', `action: ${label}`);
  // XDP counts the frame; TC counts skb->len, which is the frame too.
  t.is(seen.counted.bytes, BigInt(c.packet.length), `bytes: ${label}`);
}

const cases = hookCases();

test.serial('every reason has a golden case that reaches it at some hook', (t) => {
  const reached = new Set(cases.map((c) => c.expect));
  const all: Reason[] = [
    'pass_private', 'pass_not_private', 'truncated', 'malformed', 'vlan_depth', 'ext_hdr_limit',
    'ext_hdr_denied', 'routing_header', 'outside', 'cross_workspace', 'cross_region', 'not_local',
    'unknown_iface', 'spoofed_source', 'no_i6pn', 'unknown_source', 'unknown_dest',
  ];
  t.deepEqual(all.filter((r) => !reached.has(r)), []);
  t.true(cases.length > 150);
});

for (const mode of ['enforce', 'monitor'] as const) {
  test.serial(`golden packets, ${mode} mode`, (t) => {
    fx.dp.setConfig({ node: 7, region: R1, mode, eventsPerSec: 0 });
    for (const c of cases) check(t, c, mode);
  });
}

test.serial('every truncation point of an allowed packet, at every hook', (t) => {
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0 });
  const plans: Array<[HookName, Uint8Array, Uint8Array]> = [
    ['from_fabric', M.remote, M.local],
    ['from_endpoint', M.local, M.remote],
    ['to_endpoint', M.remote, M.local],
  ];
  for (const [hook, src, dst] of plans) {
    const spec: Ipv6Spec = {
      src,
      dst,
      vlans: [{ id: 3, tpid: 0x88a8 }, 7],
      ext: [{ type: 'hop-by-hop', length: 16 }, { type: 'fragment', more: true }, { type: 'ah' }],
      l4: { proto: 'udp', payload: new Uint8Array(32) },
    };
    const full = ipv6Packet(spec);
    const { l4 } = ipv6Offsets(spec);
    // The kernel refuses test runs shorter than an Ethernet header: such frames never reach a hook.
    for (let cut = 14; cut <= full.length; cut++) {
      const expect: Reason = cut < l4 ? 'truncated' : 'pass_private';
      check(t, { name: `cut at ${cut} of ${full.length} (l4 at ${l4})`, hook, packet: truncate(full, cut), expect }, 'enforce');
    }
  }
});

test.serial('membership is the truth: a removed member stops passing at once', (t) => {
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0 });
  const before = fx.dp.getEndpoint(M.local2)!;
  t.truthy(before);
  fx.dp.deleteEndpoints([M.local2]);
  const gone = fx.model.endpoints.get(Buffer.from(M.local2).toString('hex'))!;
  fx.model.endpoints.delete(Buffer.from(M.local2).toString('hex'));
  try {
    check(t, { name: 'veth still registered, member gone', hook: 'from_endpoint', packet: p6(M.local2, M.remote), on: 'local2', expect: 'unknown_source' }, 'enforce');
    check(t, { name: 'to a removed local member', hook: 'from_endpoint', packet: p6(M.local, M.local2), expect: 'unknown_dest' }, 'enforce');
    check(t, { name: 'veth still registered, member gone', hook: 'to_endpoint', packet: p6(M.remote, M.local2), on: 'local2', expect: 'unknown_dest' }, 'enforce');
    check(t, { name: 'removed member from the fabric', hook: 'from_fabric', packet: p6(M.remote, M.local2), expect: 'unknown_dest' }, 'enforce');
  } finally {
    fx.dp.upsertEndpoints([before]);
    fx.model.endpoints.set(Buffer.from(M.local2).toString('hex'), gone);
  }
  check(t, { name: 'restored member', hook: 'from_fabric', packet: p6(M.remote, M.local2), expect: 'pass_private' }, 'enforce');
});

test.serial('drops are sampled into the ring buffer within the per-CPU budget', (t) => {
  fx.dp.drainDropEvents();
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 2 });
  const packet = p6(M.otherWorkspace, M.local);
  for (let i = 0; i < 20; i++) fx.dp.runPacket('from_fabric', packet);
  fx.dp.runPacket('from_fabric', p6(M.remote, M.local)); // a pass is never an event
  const events = fx.dp.drainDropEvents();
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0 });
  t.true(events.length >= 2, `got ${events.length} events`);
  t.true(events.length <= 2 * 8, `budget exceeded: ${events.length} events`);
  for (const e of events) {
    t.is(e.hook, 'from_fabric');
    t.is(e.reason, 'cross_workspace');
    t.is(e.verdict, 'drop');
    t.deepEqual(Buffer.from(e.src), Buffer.from(M.otherWorkspace));
    t.deepEqual(Buffer.from(e.dst), Buffer.from(M.local));
    t.is(e.len, packet.length);
  }
  for (let i = 0; i < 5; i++) fx.dp.runPacket('from_fabric', packet);
  t.deepEqual(fx.dp.drainDropEvents(), [], 'events disabled at 0 per second');
});

test.serial('each program passes the verifier; its processed-instruction count is reported', (t) => {
  const insns = fx.dp.verifiedInstructions();
  for (const hook of ['from_fabric', 'from_endpoint', 'to_endpoint'] as const) {
    t.true(insns[hook] > 0, `${hook}: ${insns[hook]}`);
    t.log(`${hook}: ${insns[hook]} instructions processed by the verifier`);
  }
  void W1;
});
