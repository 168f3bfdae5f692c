/**
 * The Dataplane domain layer (agent/bpf/dataplane.ts) with the real object
 * build/bpf/i6pn.bpf.o: pinned maps adopted across opens, endpoint batches
 * with a full map, local interfaces, config, counters summed over CPUs, drop
 * events, packets through each hook (enforce and monitor), XDP and TC attach,
 * atomic replacement by a second agent, teardown. The golden packet tables of
 * the policy itself live with the programs' tests; here a few packets prove
 * the plumbing.
 */
import test from 'ava';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';

import { Dataplane, DataplaneError, LibbpfError, TC_HANDLE, TC_PRIORITY, type Endpoint } from '../agent/bpf/dataplane.js';
import { ipv4Packet, ipv6Packet, privateAddress } from './tools/packet.js';
import { HOOK_NAMES, REASON_NAMES, VERDICT_NAMES } from '../agent/bpf/abi.generated.js';
import { I6PN_OBJECT, createVethPair, pinDirFor, removePinDir, sh, xdpProgIdOf } from './helpers/binding.js';
import { runLiveFrames, runPacket } from './tools/run-packet.js';
import { BpfObject, mapInfoByFd } from '../agent/bpf/libbpf.js';
import { reconcileTunnelMap, type Tunnel } from '../agent/tunnels.js';

const REGION = 7;
const OTHER_REGION = 8;
const WS_A = 0x1111_1111;
const WS_B = 0x2222_2222;
const NODE = 42;

const A1 = privateAddress(WS_A, REGION, 1n);
const A2 = privateAddress(WS_A, REGION, 2n);
const A3 = privateAddress(WS_A, REGION, 3n);
const B1 = privateAddress(WS_B, REGION, 1n);

function endpoint(addr: Uint8Array, over: Partial<Endpoint> = {}): Endpoint {
  return {
    addr,
    workspace: new DataView(addr.buffer, addr.byteOffset).getUint32(2),
    region: new DataView(addr.buffer, addr.byteOffset).getUint16(6),
    node: NODE,
    flags: { i6pn: true, local: false },
    ifindex: 0,
    ...over,
  };
}

async function openTemp(t: import('ava').ExecutionContext, opts: { maxEndpoints?: number; pin?: boolean } = {}) {
  const pinDir = opts.pin === false ? undefined : pinDirFor('dp');
  const dp = await Dataplane.open({ object: I6PN_OBJECT, ...(pinDir ? { pinDir } : {}), ...(opts.maxEndpoints ? { maxEndpoints: opts.maxEndpoints } : {}) });
  t.teardown(() => {
    dp.close();
    if (pinDir) {
      Dataplane.teardown(pinDir);
      removePinDir(pinDir);
    }
  });
  dp.setConfig({ node: NODE, region: REGION, mode: 'enforce', eventsPerSec: 1000 });
  return { dp, pinDir };
}

const udp = (src: Uint8Array, dst: Uint8Array) => ipv6Packet({ src, dst, l4: { proto: 'udp', dstPort: 9 } });

test('open pins every map, config round-trips, programs report verified instructions', async (t) => {
  const { dp, pinDir } = await openTemp(t);
  t.deepEqual(readdirSync(pinDir!).sort(), ['config', 'counters', 'drop_events', 'endpoints', 'event_budget', 'event_stats', 'local_ifaces', 'sync_state', 'tunnels']);
  t.deepEqual(dp.readSyncState(), { revision: 0, stream: 0n, region: 0 }, 'a new sync_state says: nothing applied');
  dp.writeSyncState({ revision: 2 ** 40 + 3, stream: 0xfedcba9876543210n, region: REGION });
  t.deepEqual(dp.readSyncState(), { revision: 2 ** 40 + 3, stream: 0xfedcba9876543210n, region: REGION });
  t.deepEqual(dp.getConfig(), { node: NODE, region: REGION, mode: 'enforce', eventsPerSec: 1000, uplinkIfindex: 0, forwardNonPrivate: false, localFastPath: false });
  dp.setConfig({ node: 1, region: 65535, mode: 'monitor', eventsPerSec: 0, uplinkIfindex: 7, forwardNonPrivate: true, localFastPath: true });
  t.deepEqual(dp.getConfig(), { node: 1, region: 65535, mode: 'monitor', eventsPerSec: 0, uplinkIfindex: 7, forwardNonPrivate: true, localFastPath: true });
  dp.setUplinkIfindex(42);
  t.deepEqual(dp.getConfig(), { node: 1, region: 65535, mode: 'monitor', eventsPerSec: 0, uplinkIfindex: 42, forwardNonPrivate: true, localFastPath: true }, 'setUplinkIfindex keeps the rest');
  t.throws(() => dp.setConfig({ node: 1, region: 70000, mode: 'enforce', eventsPerSec: 0 }), { instanceOf: RangeError });
  t.throws(() => dp.setConfig({ node: 1, region: 1, mode: 'sometimes' as 'enforce', eventsPerSec: 0 }), { message: /mode must be one of enforce, monitor/ });
  const insns = dp.verifiedInstructions();
  t.deepEqual(Object.keys(insns).sort(), ['from_endpoint', 'from_fabric', 'from_fabric_tc', 'to_endpoint', 'to_fabric']);
  for (const [prog, n] of Object.entries(insns)) t.true(n > 0 && n < 1_000_000, `${prog}: ${n}`);
  t.log('verified instructions', insns);
});

/** The kernel's names of the BPF maps this process holds an fd of. */
function mapsHeldHere(): string[] {
  const names: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target = '';
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // the directory's own fd, closed by now
    }
    if (target === 'anon_inode:bpf-map') names.push(mapInfoByFd(Number(fd), `fd ${fd}`).name);
  }
  return names;
}

// Serial: no other test of this file holds maps meanwhile.
test.serial('the BTF carrier i6pn_abi is not created in the kernel (a plain load of the object would create it)', async (t) => {
  const { dp } = await openTemp(t, { pin: false });
  const held = mapsHeldHere();
  t.true(held.includes('endpoints') && held.includes('config'), `the Dataplane's maps are seen: ${held.join(' ')}`);
  t.false(held.includes('i6pn_abi'), `held: ${held.join(' ')}`);
  t.true(dp.verifiedInstructions().from_fabric > 0, 'the programs loaded without it');
  // The control: without setAutocreate(false), libbpf creates it.
  const plain = BpfObject.open(I6PN_OBJECT);
  try {
    plain.load();
    t.true(mapsHeldHere().includes('i6pn_abi'), 'a plain load creates i6pn_abi: the check above can fail');
  } finally {
    plain.close();
  }
});

test('a second open on the same pinDir adopts the maps and their contents; a capacity change is refused', async (t) => {
  const pinDir = pinDirFor('adopt');
  t.teardown(() => {
    Dataplane.teardown(pinDir);
    removePinDir(pinDir);
  });
  const first = await Dataplane.open({ object: I6PN_OBJECT, pinDir, maxEndpoints: 128 });
  first.setConfig({ node: NODE, region: REGION, mode: 'monitor', eventsPerSec: 5 });
  t.deepEqual(first.upsertEndpoints([endpoint(A1), endpoint(A2)]), { applied: 2, failed: [] });
  first.setLocalIface(9, { addr: A1, i6pn: true });
  runPacket(first, 'from_fabric', ipv4Packet({ src: '10.0.0.1', dst: '10.0.0.2' }));
  first.close(); // the agent exits; the pins keep the state

  const second = await Dataplane.open({ object: I6PN_OBJECT, pinDir, maxEndpoints: 128 });
  t.teardown(() => second.close());
  t.is(second.maxEndpoints, 128);
  t.deepEqual(second.getConfig(), { node: NODE, region: REGION, mode: 'monitor', eventsPerSec: 5, uplinkIfindex: 0, forwardNonPrivate: false, localFastPath: false });
  t.deepEqual(second.listEndpoints().map((e) => Buffer.from(e.addr).toString('hex')).sort(), [A1, A2].map((a) => Buffer.from(a).toString('hex')).sort());
  t.deepEqual(second.listLocalIfaces(), [{ ifindex: 9, addr: A1, i6pn: true, sealed: false }]);
  t.is(second.readCounter('from_fabric', 'pass', 'pass_not_private').packets, 1n, 'counters survive too');

  const err = await t.throwsAsync(Dataplane.open({ object: I6PN_OBJECT, pinDir, maxEndpoints: 256 }), { instanceOf: DataplaneError });
  t.regex(err!.message, /pinned map .*\/endpoints cannot be reused: pinned max_entries 128 vs 256/);
  t.regex(err!.message, /--max-endpoints 128/);
});

test('endpoints: batch upsert reports a full map per entry and evicts nothing; get, list, delete', async (t) => {
  const { dp } = await openTemp(t, { maxEndpoints: 4 });
  const six = [1n, 2n, 3n, 4n, 5n, 6n].map((n) => endpoint(privateAddress(WS_A, REGION, n), { node: Number(n) }));
  const r = dp.upsertEndpoints(six);
  t.is(r.applied, 4);
  t.deepEqual(r.failed.map((f) => [f.index, f.error.code, f.error.call]), [
    [4, 'E2BIG', 'bpf_map_update_batch'],
    [5, 'E2BIG', 'bpf_map_update_batch'],
  ]);
  t.deepEqual(r.failed[0]!.addr, six[4]!.addr);
  t.regex(r.failed[0]!.error.message, /^bpf_map_update_batch\(endpoints\): E2BIG \(Argument list too long\): map full$/);
  t.is(dp.listEndpoints().length, 4);
  // Updating members already there still works in a full map, and mixes with failures in one batch.
  const again = dp.upsertEndpoints([endpoint(six[0]!.addr, { node: 99, flags: { i6pn: false, local: true }, ifindex: 5 }), six[5]!]);
  t.is(again.applied, 1);
  t.deepEqual(again.failed.map((f) => f.index), [1]);
  t.deepEqual(dp.getEndpoint(six[0]!.addr), {
    addr: six[0]!.addr,
    workspace: WS_A,
    region: REGION,
    node: 99,
    flags: { i6pn: false, local: true },
    ifindex: 5,
  });
  t.is(dp.getEndpoint(six[5]!.addr), null);
  t.is(dp.deleteEndpoints([six[1]!.addr, six[5]!.addr, six[2]!.addr]), 2, 'the absent one is skipped');
  t.is(dp.listEndpoints().length, 2);
  t.is(dp.upsertEndpoints([six[5]!]).applied, 1, 'room again after the deletes');
  t.throws(() => dp.upsertEndpoints([endpoint(A1, { addr: new Uint8Array(4) })]), { instanceOf: RangeError, message: /16 bytes/ });
  t.throws(() => dp.upsertEndpoints([endpoint(A1, { region: -1 })]), { instanceOf: RangeError });
});

test('endpoints: batches larger than one syscall chunk', async (t) => {
  const { dp } = await openTemp(t, { maxEndpoints: 10_000 });
  const many = Array.from({ length: 9000 }, (_, i) => endpoint(privateAddress(WS_A, REGION, BigInt(i + 1))));
  t.deepEqual(dp.upsertEndpoints(many), { applied: 9000, failed: [] });
  const listed = dp.listEndpoints();
  t.is(listed.length, 9000);
  t.is(new Set(listed.map((e) => Buffer.from(e.addr).toString('hex'))).size, 9000);
  t.is(dp.deleteEndpoints(many.slice(0, 5000).map((e) => e.addr)), 5000);
  t.is(dp.listEndpoints().length, 4000);
});

test('local interfaces: set, list, delete', async (t) => {
  const { dp } = await openTemp(t, { pin: false });
  dp.setLocalIface(11, { addr: A1, i6pn: true });
  dp.setLocalIface(12, { addr: A2, i6pn: false });
  dp.setLocalIface(13, { addr: A3, i6pn: true, sealed: true });
  t.deepEqual(
    dp.listLocalIfaces().sort((a, b) => a.ifindex - b.ifindex),
    [
      { ifindex: 11, addr: A1, i6pn: true, sealed: false },
      { ifindex: 12, addr: A2, i6pn: false, sealed: false },
      { ifindex: 13, addr: A3, i6pn: true, sealed: true },
    ],
  );
  t.true(dp.deleteLocalIface(13));
  t.true(dp.deleteLocalIface(11));
  t.false(dp.deleteLocalIface(11));
  t.is(dp.listLocalIfaces().length, 1);
});

test('runPacket: verdicts and counters per hook; monitor passes what enforce drops', async (t) => {
  const { dp } = await openTemp(t, { pin: false });
  dp.upsertEndpoints([endpoint(A1, { flags: { i6pn: true, local: true } }), endpoint(A2), endpoint(B1)]);
  const v4 = ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2' });
  for (const hook of ['from_fabric', 'to_fabric'] as const) {
    const r = runPacket(dp, hook, v4);
    t.is(r.verdict, 'pass', `${hook} passes IPv4`);
    t.is(dp.readCounter(hook, 'pass', 'pass_not_private').packets, 1n);
    t.is(dp.readCounter(hook, 'pass', 'pass_not_private').bytes, BigInt(v4.length));
  }
  // An i6pn veth carries i6pn: IPv4 from or to a container is not let through (here the loopback, registered for A1).
  dp.setLocalIface(1, { addr: A1, i6pn: true });
  for (const hook of ['from_endpoint', 'to_endpoint'] as const) {
    t.is(runPacket(dp, hook, v4).verdict, 'drop', `${hook} drops IPv4`);
    t.is(dp.readCounter(hook, 'drop', 'non_private').packets, 1n);
  }
  t.is(runPacket(dp, 'from_fabric', ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2' })).retval, 2 /* XDP_PASS */);

  // From another node: a workspace-B source to our workspace-A endpoint.
  const cross = udp(B1, A1);
  const dropped = runPacket(dp, 'from_fabric', cross);
  t.deepEqual([dropped.verdict, dropped.retval], ['drop', 1 /* XDP_DROP */]);
  t.is(dp.readCounter('from_fabric', 'drop', 'cross_workspace').packets, 1n);
  // Same workspace, from a remote member, to the local one: passes.
  t.is(runPacket(dp, 'from_fabric', udp(A2, A1)).verdict, 'pass');
  t.is(dp.readCounter('from_fabric', 'pass', 'pass_private').packets, 1n);

  dp.setConfig({ ...dp.getConfig(), mode: 'monitor' });
  t.is(runPacket(dp, 'from_fabric', cross).verdict, 'pass', 'monitor lets the would-drop through');
  t.is(dp.readCounter('from_fabric', 'would_drop', 'cross_workspace').packets, 1n);
  t.is(dp.readCounter('from_fabric', 'drop', 'cross_workspace').packets, 1n, 'and does not count it as a drop');

  const rows = dp.readCounters({ nonZero: true });
  t.true(rows.every((r) => r.packets > 0n));
  t.deepEqual(
    rows.find((r) => r.hook === 'from_fabric' && r.verdict === 'would_drop'),
    { hook: 'from_fabric', verdict: 'would_drop', reason: 'cross_workspace', packets: 1n, bytes: BigInt(cross.length) },
  );
  t.is(dp.readCounters().length, HOOK_NAMES.length * VERDICT_NAMES.length * REASON_NAMES.length);

  const repeated = runPacket(dp, 'from_fabric', cross, { repeat: 1000 });
  t.true(repeated.durationNs > 0);
  t.is(dp.readCounter('from_fabric', 'would_drop', 'cross_workspace').packets, 1001n);
});

test('uplink TC: from_fabric_tc at TC ingress takes over from the XDP link and gives it back; detach removes both', async (t) => {
  const { dp } = await openTemp(t);
  const veth = createVethPair('u');
  t.teardown(() => veth.destroy());
  const ids = dp.programIds();
  dp.attachUplink(veth.hostIfindex);
  t.is(xdpProgIdOf(veth.host), ids.from_fabric, 'xdp by default');
  t.deepEqual(dp.uplinkAttachment(veth.hostIfindex), { tc: null, egress: ids.to_fabric });
  dp.attachUplink(veth.hostIfindex, { hook: 'tc' });
  t.is(xdpProgIdOf(veth.host), null, 'the XDP link goes once TC runs');
  t.deepEqual(dp.uplinkAttachment(veth.hostIfindex), { tc: ids.from_fabric_tc, egress: ids.to_fabric });
  dp.attachUplink(veth.hostIfindex, { hook: 'xdp' });
  t.is(xdpProgIdOf(veth.host), ids.from_fabric);
  t.deepEqual(dp.uplinkAttachment(veth.hostIfindex), { tc: null, egress: ids.to_fabric });
  t.true(dp.detachUplink(veth.hostIfindex));
  t.deepEqual(dp.uplinkAttachment(veth.hostIfindex), { tc: null, egress: null });
  t.is(xdpProgIdOf(veth.host), null);
  t.false(dp.detachUplink(veth.hostIfindex));
});

test('runLiveFrames: real xdp_frames through from_fabric, counted', async (t) => {
  const { dp } = await openTemp(t, { pin: false });
  dp.upsertEndpoints([endpoint(A1, { flags: { i6pn: true, local: true } }), endpoint(B1)]);
  const r = runLiveFrames(dp, udp(B1, A1), { repeat: 500 });
  t.true(r.durationNs >= 0);
  t.is(dp.readCounter('from_fabric', 'drop', 'cross_workspace').packets, 500n);
});

test('runPacket on TC hooks takes the veth ifindex (a real interface of this namespace)', async (t) => {
  const { dp } = await openTemp(t, { pin: false });
  const veth = createVethPair('r');
  t.teardown(() => veth.destroy());
  dp.upsertEndpoints([endpoint(A1, { flags: { i6pn: true, local: true }, ifindex: veth.hostIfindex }), endpoint(A2), endpoint(B1)]);
  // Without the interface registered, the veth is unknown.
  t.is(runPacket(dp, 'from_endpoint', udp(A1, A2), { ifindex: veth.hostIfindex }).verdict, 'drop');
  t.is(dp.readCounter('from_endpoint', 'drop', 'unknown_iface').packets, 1n);
  dp.setLocalIface(veth.hostIfindex, { addr: A1, i6pn: true });
  t.is(runPacket(dp, 'from_endpoint', udp(A1, A2), { ifindex: veth.hostIfindex }).verdict, 'pass');
  t.is(runPacket(dp, 'from_endpoint', udp(A3, A2), { ifindex: veth.hostIfindex }).verdict, 'drop');
  t.is(dp.readCounter('from_endpoint', 'drop', 'spoofed_source').packets, 1n);
  // A remote member's packet is proven only by entering from the uplink.
  dp.setUplinkIfindex(1); // the loopback stands in for the uplink
  t.is(runPacket(dp, 'to_endpoint', udp(A2, A1), { ifindex: veth.hostIfindex, ingressIfindex: 1 }).verdict, 'pass');
  t.is(runPacket(dp, 'to_endpoint', udp(A2, A1), { ifindex: veth.hostIfindex }).verdict, 'drop');
  t.is(dp.readCounter('to_endpoint', 'drop', 'unbound_source').packets, 1n);
  t.is(runPacket(dp, 'to_endpoint', udp(B1, A1), { ifindex: veth.hostIfindex, ingressIfindex: 1 }).verdict, 'drop');
  t.is(dp.readCounter('to_endpoint', 'drop', 'cross_workspace').packets, 1n);
  const err = t.throws(() => runPacket(dp, 'to_endpoint', udp(A2, A1), { ifindex: 0x7fff_fff0 }));
  t.regex(err!.message, /bpf_prog_test_run_opts\(to_endpoint\): ENODEV/);
  t.throws(() => runPacket(dp, 'sideways' as 'to_endpoint', udp(A2, A1)), { message: /no hook sideways/ });
});

test.serial('drop events: drained and streamed, with names from the ABI', async (t) => {
  const { dp } = await openTemp(t, { pin: false });
  dp.upsertEndpoints([endpoint(A1, { flags: { i6pn: true, local: true } }), endpoint(B1)]);
  dp.drainDropEvents();
  const cross = udp(B1, A1);
  runPacket(dp, 'from_fabric', cross);
  const events = dp.drainDropEvents();
  t.is(events.length, 1);
  t.like(events[0], { hook: 'from_fabric', verdict: 'drop', reason: 'cross_workspace', len: cross.length, ifindex: 1 });
  t.deepEqual(events[0]!.src, B1);
  t.deepEqual(events[0]!.dst, A1);
  t.true(events[0]!.tsNs > 0n);
  t.deepEqual(dp.drainDropEvents(), []);

  const streamed: string[] = [];
  const got = new Promise<void>((resolve) => {
    const w = dp.watchDropEvents((e) => {
      streamed.push(`${e.hook}/${e.verdict}/${e.reason}`);
      if (streamed.length === 2) {
        w.close();
        resolve();
      }
    });
  });
  dp.setConfig({ ...dp.getConfig(), mode: 'monitor' });
  runPacket(dp, 'from_fabric', cross);
  runPacket(dp, 'from_fabric', udp(privateAddress(WS_A, OTHER_REGION, 9n), A1));
  // Serial, and generous: other tests' synchronous work (ip, ping) would block this event loop.
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([got, new Promise((_, rej) => (timer = setTimeout(() => rej(new Error('no events within 60 s')), 60_000)))]);
  clearTimeout(timer);
  t.deepEqual(streamed, ['from_fabric/would_drop/cross_workspace', 'from_fabric/would_drop/cross_region']);

  dp.setConfig({ ...dp.getConfig(), eventsPerSec: 0 });
  runPacket(dp, 'from_fabric', cross);
  t.deepEqual(dp.drainDropEvents(), [], 'a zero budget disables events');
});

test('uplink XDP: pinned link, a second agent replaces the program atomically, detach', async (t) => {
  const veth = createVethPair('u');
  t.teardown(() => veth.destroy());
  const pinDir = pinDirFor('uplink');
  t.teardown(() => {
    Dataplane.teardown(pinDir);
    removePinDir(pinDir);
  });
  const first = await Dataplane.open({ object: I6PN_OBJECT, pinDir });
  first.attachUplink(veth.hostIfindex);
  const firstId = first.programIds().from_fabric;
  t.is(xdpProgIdOf(veth.host), firstId);
  t.true(existsSync(`${pinDir}/xdp_uplink_${veth.hostIfindex}`));
  first.close();
  t.is(xdpProgIdOf(veth.host), firstId, 'the pinned link outlives the agent');

  const second = await Dataplane.open({ object: I6PN_OBJECT, pinDir });
  t.teardown(() => second.close());
  second.attachUplink(veth.hostIfindex);
  const secondId = second.programIds().from_fabric;
  t.not(secondId, firstId);
  t.is(xdpProgIdOf(veth.host), secondId, 'the link now runs the new program');
  t.true(second.detachUplink(veth.hostIfindex));
  t.is(xdpProgIdOf(veth.host), null);
  t.false(existsSync(`${pinDir}/xdp_uplink_${veth.hostIfindex}`));
  t.false(second.detachUplink(veth.hostIfindex));
});

test('teardown after the uplink vanished: the defunct pinned link is removed', async (t) => {
  const veth = createVethPair('v');
  t.teardown(() => veth.destroy());
  const pinDir = pinDirFor('gone');
  t.teardown(() => removePinDir(pinDir));
  const dp = await Dataplane.open({ object: I6PN_OBJECT, pinDir });
  dp.attachUplink(veth.hostIfindex);
  dp.close();
  veth.destroy();
  t.true(existsSync(`${pinDir}/xdp_uplink_${veth.hostIfindex}`));
  Dataplane.teardown(pinDir);
  t.false(existsSync(pinDir));
  t.notThrows(() => Dataplane.teardown(pinDir), 'teardown of nothing is fine');
});

test('uplink XDP: generic mode; without a pinDir the link dies with close()', async (t) => {
  const veth = createVethPair('n');
  t.teardown(() => veth.destroy());
  const dp = await Dataplane.open({ object: I6PN_OBJECT });
  dp.attachUplink(veth.hostIfindex, { mode: 'generic' });
  const [link] = JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', 'dev', veth.host])) as Array<{ xdp?: { mode?: number } }>;
  t.is(link?.xdp?.mode, 2 /* generic (skb) */);
  dp.close();
  t.is(xdpProgIdOf(veth.host), null);
});

test('uplink XDP: an interface already running someone else’s XDP program is refused with a hint', async (t) => {
  const veth = createVethPair('b');
  t.teardown(() => veth.destroy());
  const other = await Dataplane.open({ object: I6PN_OBJECT });
  t.teardown(() => other.close());
  other.attachUplink(veth.hostIfindex);
  const dp = await Dataplane.open({ object: I6PN_OBJECT });
  t.teardown(() => dp.close());
  const err = t.throws(() => dp.attachUplink(veth.hostIfindex), { instanceOf: LibbpfError });
  t.is(err?.call, 'bpf_link_create');
  t.is(err?.code, 'EBUSY');
  t.regex(err!.message, /^bpf_link_create\(from_fabric on ifindex \d+\): EBUSY \(Device or resource busy\): another XDP program is attached/);
  t.is(xdpProgIdOf(veth.host), other.programIds().from_fabric, 'the existing program is untouched');
});

test('endpoint TC: attach, replace by a second agent, detach; teardown clears registered veths', async (t) => {
  const veth = createVethPair('e');
  t.teardown(() => veth.destroy());
  const pinDir = pinDirFor('tc');
  t.teardown(() => removePinDir(pinDir));
  const first = await Dataplane.open({ object: I6PN_OBJECT, pinDir });
  t.deepEqual(first.endpointAttachment(veth.hostIfindex), { ingress: null, egress: null });
  first.attachEndpoint(veth.hostIfindex);
  const ids1 = first.programIds();
  t.deepEqual(first.endpointAttachment(veth.hostIfindex), { ingress: ids1.from_endpoint, egress: ids1.to_endpoint });
  const filters = sh('tc', ['filter', 'show', 'dev', veth.host, 'ingress']);
  t.regex(filters, new RegExp(`pref ${TC_PRIORITY} bpf .*handle 0x${TC_HANDLE.toString(16)} .*from_endpoint.*direct-action`, 's'));
  first.setLocalIface(veth.hostIfindex, { addr: A1, i6pn: true });
  first.close();

  const second = await Dataplane.open({ object: I6PN_OBJECT, pinDir });
  second.attachEndpoint(veth.hostIfindex);
  const ids2 = second.programIds();
  t.notDeepEqual(ids2, ids1);
  t.deepEqual(second.endpointAttachment(veth.hostIfindex), { ingress: ids2.from_endpoint, egress: ids2.to_endpoint });
  t.is(sh('tc', ['filter', 'show', 'dev', veth.host, 'ingress']).match(/direct-action/g)?.length, 1, 'replaced, not stacked');
  t.true(second.detachEndpoint(veth.hostIfindex));
  t.false(second.detachEndpoint(veth.hostIfindex));
  t.deepEqual(second.endpointAttachment(veth.hostIfindex), { ingress: null, egress: null });
  second.attachEndpoint(veth.hostIfindex);
  second.close();

  Dataplane.teardown(pinDir);
  t.false(existsSync(pinDir));
  const observer = await Dataplane.open({ object: I6PN_OBJECT });
  t.teardown(() => observer.close());
  t.deepEqual(
    observer.endpointAttachment(veth.hostIfindex),
    { ingress: null, egress: null },
    'teardown detached the TC filters of the veths in local_ifaces',
  );
  t.false(observer.detachEndpoint(0x7fff_fff0), 'a vanished interface has nothing to detach');
});

test('live traffic through an endpoint veth: cross-workspace dropped in enforce, would-drop in monitor', async (t) => {
  const veth = createVethPair('l');
  t.teardown(() => veth.destroy());
  const { dp } = await openTemp(t, { pin: false });
  t.teardown(() => dp.detachEndpoint(veth.hostIfindex));
  const src = privateAddress(WS_A, REGION, 0x10n);
  const dst = privateAddress(WS_B, REGION, 0x20n);
  const text = (b: Uint8Array) => Buffer.from(b).toString('hex').match(/.{4}/g)!.join(':');
  sh('ip', ['-n', veth.netns, 'addr', 'add', `${text(src)}/64`, 'dev', veth.peer, 'nodad']);
  sh('ip', ['-n', veth.netns, 'route', 'add', `${text(dst)}/128`, 'dev', veth.peer]);
  sh('ip', ['-n', veth.netns, 'neigh', 'add', text(dst), 'lladdr', '02:00:00:00:00:99', 'dev', veth.peer]);
  dp.upsertEndpoints([endpoint(src, { flags: { i6pn: true, local: true }, ifindex: veth.hostIfindex }), endpoint(dst)]);
  dp.setLocalIface(veth.hostIfindex, { addr: src, i6pn: true });
  dp.attachEndpoint(veth.hostIfindex);
  const ping = () => {
    try {
      sh('ip', ['netns', 'exec', veth.netns, 'ping', '-6', '-c', '3', '-i', '0.2', '-W', '1', text(dst)]);
    } catch {
      // no reply expected: the destination is not there
    }
  };
  ping();
  const dropped = dp.readCounter('from_endpoint', 'drop', 'cross_workspace').packets;
  t.true(dropped >= 3n, `enforce dropped ${dropped}`);
  dp.setConfig({ ...dp.getConfig(), mode: 'monitor' });
  ping();
  t.true(dp.readCounter('from_endpoint', 'would_drop', 'cross_workspace').packets >= 3n);
  t.is(dp.readCounter('from_endpoint', 'drop', 'cross_workspace').packets, dropped);
});

test('tunnels map: entries round-trip; the agent\'s reconcile writes what is wanted and deletes the rest', async (t) => {
  const { dp } = await openTemp(t, { pin: false });
  dp.setTunnel({ addr: A1, proto: 6, port: 8080, id: 0xabcdef012345 });
  dp.setTunnel({ addr: A2, proto: 6, port: 443, id: 1 });
  t.deepEqual(dp.listTunnels().sort((a, b) => a.port - b.port), [
    { addr: A2, proto: 6, port: 443, id: 1 },
    { addr: A1, proto: 6, port: 8080, id: 0xabcdef012345 },
  ]);
  t.true(dp.deleteTunnel({ addr: A2, proto: 6, port: 443 }));
  t.false(dp.deleteTunnel({ addr: A2, proto: 6, port: 443 }));
  t.throws(() => dp.setTunnel({ addr: A1, proto: 6, port: 70000, id: 1 }), { instanceOf: RangeError });
  // What the store says: A1:8080 under another id, A3:9000; A1's old entry is replaced, nothing else is left.
  const tunnel = (addr: Uint8Array, port: number, id: string): Tunnel => ({
    key: `k${port}`,
    addr,
    record: { v: 1, id, endpoint: '', workspace: 'w', workspaceId: WS_A, region: 'r', regionId: REGION, proto: 'tcp', port, tls: false, createdAt: new Date().toISOString() },
  });
  const silent = { error: () => {} } as unknown as Parameters<typeof reconcileTunnelMap>[2];
  const wanted = new Map([['a', tunnel(A1, 8080, '000000000002')], ['b', tunnel(A3, 9000, '000000000003')]]);
  t.deepEqual(reconcileTunnelMap(dp, wanted, silent), { entries: 2, failed: 0 });
  t.deepEqual(dp.listTunnels().sort((a, b) => a.port - b.port), [
    { addr: A1, proto: 6, port: 8080, id: 2 },
    { addr: A3, proto: 6, port: 9000, id: 3 },
  ]);
  t.deepEqual(reconcileTunnelMap(dp, new Map(), silent), { entries: 0, failed: 0 });
  t.deepEqual(dp.listTunnels(), []);
});
