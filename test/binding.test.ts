/**
 * The libbpf binding (agent/bpf/libbpf.ts) against real programs in the
 * kernel, with the small fixture object test/fixtures/mini.bpf.c: load, pin
 * and reuse, map operations (single, batch, per-CPU), test runs, XDP links and
 * TC filters on a real veth, errors, the log callback and the ring buffer.
 */
import test from 'ava';

import {
  BatchError,
  BpfObject,
  LibbpfError,
  LinkFd,
  MapFd,
  MapType,
  RingBuffer,
  TcAttachPoint,
  UpdateFlags,
  XdpAction,
  XdpFlags,
  layouts,
  perCpuStride,
  possibleCpus,
  setLogger,
  tcAttach,
  tcDetach,
  tcHookCreate,
  tcHookDestroy,
  tcQuery,
  type TcFilter,
} from '../agent/bpf/libbpf.js';
import {
  compileFixture,
  createVethPair,
  pinDirFor,
  pingFromPeer,
  removeFixtureBuilds,
  removePinDir,
  sh,
  xdpProgIdOf,
} from './helpers/binding.js';

let MINI = '';
let REJECTED = '';

test.before(() => {
  MINI = compileFixture('mini');
  REJECTED = compileFixture('rejected');
});
test.after.always(() => removeFixtureBuilds());

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n, 0);
  return b;
}
function u64(n: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n), 0);
  return b;
}

function loadMini(): BpfObject {
  const obj = BpfObject.open(MINI);
  obj.load();
  return obj;
}

/** Sum of the per-CPU {packets, bytes} at `idx` of the mini `hits` map. */
function hits(obj: BpfObject, idx: number): { packets: bigint; bytes: bigint } {
  const m = obj.map('hits').handle();
  const v = m.lookup(u32(idx))!;
  const stride = perCpuStride(m.valueSize);
  let packets = 0n;
  let bytes = 0n;
  for (let c = 0; c < possibleCpus(); c++) {
    packets += v.readBigUInt64LE(c * stride);
    bytes += v.readBigUInt64LE(c * stride + 8);
  }
  return { packets, bytes };
}

test.serial('open lists maps and programs with their BTF-declared shapes; load gives fds', (t) => {
  const obj = BpfObject.open(MINI);
  t.teardown(() => obj.close());
  const maps = Object.fromEntries(obj.maps().map((m) => [m.name, { type: m.type, key: m.keySize, value: m.valueSize, max: m.maxEntries }]));
  t.deepEqual(maps.pairs, { type: MapType.HASH, key: 4, value: 8, max: 8 });
  t.deepEqual(maps.hits, { type: MapType.PERCPU_ARRAY, key: 4, value: 16, max: 4 });
  t.deepEqual(maps.events?.type, MapType.RINGBUF);
  t.deepEqual(obj.programs().map((p) => p.name).sort(), ['mini_tc', 'mini_tc_alt', 'mini_xdp']);
  t.is(obj.program('mini_xdp').type, 6 /* BPF_PROG_TYPE_XDP */);
  t.is(obj.program('mini_tc').type, 3 /* BPF_PROG_TYPE_SCHED_CLS */);
  obj.map('pairs').setMaxEntries(16);
  obj.load();
  t.true(obj.map('pairs').fd > 0);
  t.true(obj.program('mini_xdp').fd > 0);
  t.is(obj.map('pairs').handle().maxEntries, 16, 'max_entries set before load reaches the kernel');
  const info = obj.program('mini_xdp').info();
  t.is(info.name, 'mini_xdp');
  t.true(info.verifiedInsns > 10 && info.verifiedInsns < 10_000, `verified_insns ${info.verifiedInsns}`);
  const err = t.throws(() => obj.map('nope'), { instanceOf: LibbpfError });
  t.is(err?.call, 'bpf_object__find_map_by_name');
  t.is(err?.code, 'ENOENT');
  t.throws(() => obj.program('nope'), { message: /bpf_object__find_program_by_name\(.*nope\): ENOENT/ });
});

test.serial('open of a missing file names the call, the path and the errno', (t) => {
  const err = t.throws(() => BpfObject.open('/nonexistent/x.bpf.o'), { instanceOf: LibbpfError });
  t.is(err?.call, 'bpf_object__open_file');
  t.is(err?.code, 'ENOENT');
  t.is(err?.errno, 2);
  t.regex(err!.message, /^bpf_object__open_file\(\/nonexistent\/x\.bpf\.o\): ENOENT \(No such file or directory\)/);
});

test.serial('map lookup, update, delete, next key, with flags and errors', (t) => {
  const obj = loadMini();
  t.teardown(() => obj.close());
  const pairs = obj.map('pairs').handle();
  t.is(pairs.lookup(u32(1)), null);
  pairs.update(u32(1), u64(11));
  pairs.update(u32(2), u64(22), UpdateFlags.NOEXIST);
  t.is(pairs.lookup(u32(1))?.readBigUInt64LE(0), 11n);
  const exists = t.throws(() => pairs.update(u32(2), u64(0), UpdateFlags.NOEXIST), { instanceOf: LibbpfError });
  t.is(exists?.message, 'bpf_map_update_elem(pairs): EEXIST (File exists)');
  const missing = t.throws(() => pairs.update(u32(3), u64(0), UpdateFlags.EXIST), { instanceOf: LibbpfError });
  t.is(missing?.code, 'ENOENT');
  t.deepEqual([...pairs.keys()].map((k) => k.readUInt32LE(0)).sort(), [1, 2]);
  t.true(pairs.delete(u32(1)));
  t.false(pairs.delete(u32(1)));
  t.deepEqual([...pairs.keys()].map((k) => k.readUInt32LE(0)), [2]);
  t.throws(() => pairs.update(u32(1).subarray(0, 2), u64(0)), { instanceOf: RangeError, message: /key is 2 bytes, map wants 4/ });
});

test.serial('update on a full hash map fails with E2BIG and evicts nothing', (t) => {
  const obj = loadMini();
  t.teardown(() => obj.close());
  const pairs = obj.map('pairs').handle();
  for (let i = 0; i < 8; i++) pairs.update(u32(100 + i), u64(i));
  const err = t.throws(() => pairs.update(u32(999), u64(1)), { instanceOf: LibbpfError });
  t.is(err?.message, 'bpf_map_update_elem(pairs): E2BIG (Argument list too long)');
  t.is(err?.errno, 7);
  t.is([...pairs.keys()].length, 8);
  pairs.update(u32(100), u64(42)); // an existing key can still be updated
  t.is(pairs.lookup(u32(100))?.readBigUInt64LE(0), 42n);
});

test.serial('operations on a bad fd name the call and EBADF', (t) => {
  const fake = new MapFd(987_654, { type: MapType.HASH, id: 0, keySize: 4, valueSize: 8, maxEntries: 1, flags: 0, name: 'x' }, 'ghost', false);
  const err = t.throws(() => fake.lookup(u32(0)), { instanceOf: LibbpfError });
  t.is(err?.call, 'bpf_map_lookup_elem');
  t.is(err?.code, 'EBADF');
  t.is(err?.message, 'bpf_map_lookup_elem(ghost): EBADF (Bad file descriptor)');
  t.throws(() => MapFd.fromFd(987_654), { instanceOf: LibbpfError, message: /^bpf_obj_get_info_by_fd: EBADFD/ });
});

test.serial('batch update and lookup: count in/out, ENOENT at the end, partial failure', (t) => {
  const obj = loadMini();
  t.teardown(() => obj.close());
  const pairs = obj.map('pairs').handle();
  const keys = Buffer.alloc(10 * 4);
  const values = Buffer.alloc(10 * 8);
  for (let i = 0; i < 10; i++) {
    keys.writeUInt32LE(i + 1, i * 4);
    values.writeBigUInt64LE(BigInt((i + 1) * 10), i * 8);
  }
  t.is(pairs.updateBatch(keys, values, 5), 5);
  // Three at a time walks several batches and ends on ENOENT.
  const got = [...pairs.entriesBatch(3)].map(([k, v]) => [k.readUInt32LE(0), Number(v.readBigUInt64LE(0))]);
  t.deepEqual(got.sort((a, b) => a[0]! - b[0]!), [[1, 10], [2, 20], [3, 30], [4, 40], [5, 50]]);
  // 10 keys into 8 slots (5 present): 3 more fit, the 9th key fails with E2BIG.
  const err = t.throws(() => pairs.updateBatch(keys, values, 10), { instanceOf: BatchError });
  t.is(err?.code, 'E2BIG');
  t.is(err?.call, 'bpf_map_update_batch');
  t.is(err?.done, 8, 'the kernel reports how many it applied before the failing one');
  t.is([...pairs.entriesBatch()].length, 8);
  // Delete batch: stops at the first absent key.
  const del = Buffer.alloc(3 * 4);
  [1, 2, 77].forEach((k, i) => del.writeUInt32LE(k, i * 4));
  const derr = t.throws(() => pairs.deleteBatch(del, 3), { instanceOf: BatchError });
  t.is(derr?.code, 'ENOENT');
  t.is(derr?.done, 2);
  t.is([...pairs.entriesBatch(100)].length, 6);
  // An empty map's batch lookup ends at once.
  const empty = loadMini();
  t.teardown(() => empty.close());
  t.deepEqual([...empty.map('pairs').handle().entriesBatch()], []);
});

test.serial('batch lookup grows its buffers when a hash bucket holds more than a chunk (ENOSPC)', (t) => {
  const obj = BpfObject.open(MINI);
  t.teardown(() => obj.close());
  obj.map('pairs').setMaxEntries(64);
  obj.load();
  const pairs = obj.map('pairs').handle();
  // 64 keys in 64 buckets: some bucket surely holds two, more than a chunk of one.
  for (let i = 0; i < 64; i++) pairs.update(u32(i * 64 + 1), u64(i));
  const got = [...pairs.entriesBatch(1)].map(([k]) => k.readUInt32LE(0));
  t.is(got.length, 64);
  t.is(new Set(got).size, 64);
});

test.serial('per-CPU values: one slot per possible CPU, stride rounded to 8 bytes', (t) => {
  const obj = loadMini();
  t.teardown(() => obj.close());
  const m = obj.map('hits').handle();
  const cpus = possibleCpus();
  t.true(m.perCpu);
  t.is(m.valueBytes, perCpuStride(16) * cpus);
  t.is(perCpuStride(12), 16);
  t.is(perCpuStride(4), 8);
  const v = m.newValue();
  for (let c = 0; c < cpus; c++) {
    v.writeBigUInt64LE(BigInt(c + 1), c * 16);
    v.writeBigUInt64LE(BigInt(100 * (c + 1)), c * 16 + 8);
  }
  m.update(u32(3), v);
  const want = (cpus * (cpus + 1)) / 2;
  t.deepEqual(hits(obj, 3), { packets: BigInt(want), bytes: BigInt(100 * want) });
  // Batch lookup of a per-CPU array carries every CPU's slot.
  const row = [...m.entriesBatch()].find(([k]) => k.readUInt32LE(0) === 3)!;
  t.is(row[1].length, m.valueBytes);
  t.is(row[1].readBigUInt64LE((cpus - 1) * 16), BigInt(cpus));
});

test.serial('test run returns the program retval and its duration; bad input names the call', (t) => {
  const obj = loadMini();
  t.teardown(() => obj.close());
  const xdp = obj.program('mini_xdp');
  const pkt = Buffer.alloc(60, 0x11);
  let r = xdp.testRun({ data: pkt });
  t.is(r.retval, XdpAction.PASS);
  t.deepEqual(r.dataOut, pkt);
  obj.map('pairs').handle().update(u32(0), u64(XdpAction.DROP));
  r = xdp.testRun({ data: pkt, repeat: 1000 });
  t.is(r.retval, XdpAction.DROP);
  t.true(r.durationNs > 0 && r.durationNs < 100_000, `duration ${r.durationNs}`);
  t.deepEqual(hits(obj, 0), { packets: 1001n, bytes: 1001n * 60n });
  const short = t.throws(() => xdp.testRun({ data: Buffer.alloc(4) }), { instanceOf: LibbpfError });
  t.is(short?.call, 'bpf_prog_test_run_opts');
  t.is(short?.code, 'EINVAL');
});

test.serial('TC test run takes ifindex and ingress_ifindex through the __sk_buff context', (t) => {
  const obj = loadMini();
  t.teardown(() => obj.close());
  // A real interface of this namespace: the kernel resolves the context's ifindex.
  const veth = createVethPair('c');
  t.teardown(() => veth.destroy());
  const dummy = { ifindex: veth.hostIfindex };
  const tc = obj.program('mini_tc');
  const seen = obj.map('seen').handle();
  const ctx = (ifindex: number, ingress: number): Buffer => {
    const c = Buffer.alloc(layouts.__sk_buff.size);
    c.writeUInt32LE(ifindex, layouts.__sk_buff.ifindex);
    c.writeUInt32LE(ingress, layouts.__sk_buff.ingress_ifindex);
    return c;
  };
  const frame = Buffer.alloc(64);
  t.is(tc.testRun({ data: frame }).retval, 0 /* TC_ACT_OK */);
  t.is(seen.lookup(u32(0))?.readUInt32LE(0), 1, 'without a context the skb is on loopback');
  tc.testRun({ data: frame, ctx: ctx(dummy.ifindex, 4242) });
  t.is(seen.lookup(u32(0))?.readUInt32LE(0), dummy.ifindex);
  t.is(seen.lookup(u32(1))?.readUInt32LE(0), 4242, 'ingress_ifindex is taken as given');
  const err = t.throws(() => tc.testRun({ data: frame, ctx: ctx(0x7fff_fff0, 0) }), { instanceOf: LibbpfError });
  t.is(err?.code, 'ENODEV', 'ifindex must name an interface of the caller’s namespace');
  t.is(obj.program('mini_tc_alt').testRun({ data: frame }).retval, 2 /* TC_ACT_SHOT */);
});

test.serial('pinned maps are reused by a second load and keep their entries', (t) => {
  const dir = pinDirFor('reuse');
  t.teardown(() => removePinDir(dir));
  const first = BpfObject.open(MINI);
  t.teardown(() => first.close());
  first.map('pairs').setPinPath(`${dir}/pairs`);
  first.map('hits').setPinPath(`${dir}/hits`);
  first.load();
  t.true(first.map('pairs').isPinned);
  first.map('pairs').handle().update(u32(7), u64(77));
  first.close();

  const second = BpfObject.open(MINI);
  t.teardown(() => second.close());
  second.map('pairs').setPinPath(`${dir}/pairs`);
  second.load();
  t.is(second.map('pairs').handle().lookup(u32(7))?.readBigUInt64LE(0), 77n, 'the second load sees the first one’s entry');
  second.program('mini_xdp').testRun({ data: Buffer.alloc(20) }); // the program uses the reused map
  const viaPin = MapFd.fromPin(`${dir}/pairs`);
  t.teardown(() => viaPin.close());
  t.is(viaPin.name, `${dir}/pairs`);
  t.is(viaPin.lookup(u32(7))?.readBigUInt64LE(0), 77n);
});

test.serial('pin path with an incompatible pinned map fails the load, naming the object', (t) => {
  const dir = pinDirFor('clash');
  t.teardown(() => removePinDir(dir));
  const a = BpfObject.open(MINI);
  t.teardown(() => a.close());
  a.map('pairs').setPinPath(`${dir}/pairs`);
  a.load();
  const b = BpfObject.open(MINI);
  t.teardown(() => b.close());
  b.map('pairs').setMaxEntries(99);
  b.map('pairs').setPinPath(`${dir}/pairs`);
  const err = t.throws(() => b.load(), { instanceOf: LibbpfError });
  t.is(err?.call, 'bpf_object__load');
  t.is(err?.code, 'EINVAL');
});

test.serial('libbpf log reaches the logger: a program the verifier rejects', (t) => {
  const lines: Array<[string, string]> = [];
  setLogger({
    warn: (m) => lines.push(['warn', m]),
    info: (m) => lines.push(['info', m]),
    debug: (m) => lines.push(['debug', m]),
  });
  t.teardown(() => setLogger(null));
  const obj = BpfObject.open(REJECTED);
  t.teardown(() => obj.close());
  const err = t.throws(() => obj.load(), { instanceOf: LibbpfError });
  t.is(err?.call, 'bpf_object__load');
  t.is(err?.code, 'EACCES');
  const warn = lines.filter(([l]) => l === 'warn').map(([, m]) => m).join('\n');
  t.regex(warn, /prog 'unchecked_read': BPF program load failed/);
  t.regex(warn, /BEGIN PROG LOAD LOG/);
  t.regex(warn, /invalid access to packet/, 'the verifier’s own words came through vsnprintf');
  t.true(lines.some(([l, m]) => l === 'debug' && /loading object/.test(m) || l === 'info'), 'lower levels arrive too');
  // Silenced: nothing more arrives.
  setLogger(null);
  const before = lines.length;
  const again = BpfObject.open(REJECTED);
  t.teardown(() => again.close());
  t.throws(() => again.load());
  t.is(lines.length, before);
});

test.serial('ring buffer records reach the callback on consume', (t) => {
  const obj = loadMini();
  t.teardown(() => obj.close());
  const records: number[] = [];
  const rb = new RingBuffer(obj.map('events').fd, (d) => records.push(d.readUInt32LE(0)));
  t.teardown(() => rb.close());
  t.is(rb.consume(), 0);
  const xdp = obj.program('mini_xdp');
  xdp.testRun({ data: Buffer.alloc(40, 0xee) });
  xdp.testRun({ data: Buffer.alloc(50, 0x01) }); // not marked: no record
  xdp.testRun({ data: Buffer.alloc(70, 0xee) });
  t.is(rb.consume(), 2);
  t.deepEqual(records, [40, 70]);
  t.true(rb.epollFd > 0);
  xdp.testRun({ data: Buffer.alloc(30, 0xee) });
  t.is(rb.poll(100), 1);
  t.deepEqual(records, [40, 70, 30]);
});

test.serial('XDP: native link attach, pin, reopen, atomic program update, detach on a veth', (t) => {
  const veth = createVethPair('x');
  t.teardown(() => veth.destroy());
  const dir = pinDirFor('xdp');
  t.teardown(() => removePinDir(dir));
  const a = loadMini();
  t.teardown(() => a.close());
  const b = loadMini();
  t.teardown(() => b.close());
  const progA = a.program('mini_xdp');
  const progB = b.program('mini_xdp');

  const link = LinkFd.createXdp(progA.fd, veth.hostIfindex, XdpFlags.DRV_MODE);
  t.is(xdpProgIdOf(veth.host), progA.info().id);
  t.is(link.info().xdpIfindex, veth.hostIfindex);
  link.pin(`${dir}/link`);
  link.close(); // pinned: stays attached
  t.is(xdpProgIdOf(veth.host), progA.info().id);

  pingFromPeer(veth);
  t.true(hits(a, 0).packets > 0n, 'packets from the peer ran the attached program');

  const reopened = LinkFd.open(`${dir}/link`);
  t.teardown(() => reopened.close());
  reopened.update(progB.fd);
  t.is(xdpProgIdOf(veth.host), progB.info().id, 'bpf_link_update swapped the program in place');
  t.is(reopened.info().progId, progB.info().id);
  const before = hits(b, 0).packets;
  pingFromPeer(veth);
  t.true(hits(b, 0).packets > before);

  reopened.detach();
  t.is(xdpProgIdOf(veth.host), null);
});

test.serial('XDP: fd link in generic mode, pin, update, detach; a second link on the hook is refused', (t) => {
  const veth = createVethPair('g');
  t.teardown(() => veth.destroy());
  const dir = pinDirFor('xdpg');
  t.teardown(() => removePinDir(dir));
  const a = loadMini();
  t.teardown(() => a.close());
  const b = loadMini();
  t.teardown(() => b.close());
  const link = LinkFd.createXdp(a.program('mini_xdp').fd, veth.hostIfindex, XdpFlags.SKB_MODE);
  t.teardown(() => link.close());
  link.pin(`${dir}/link`);
  const shown = JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', 'dev', veth.host])) as Array<{ xdp?: { mode?: number } }>;
  t.is(shown[0]?.xdp?.mode, 2 /* XDP_ATTACHED_SKB */);
  const again = t.throws(() => LinkFd.createXdp(b.program('mini_xdp').fd, veth.hostIfindex, XdpFlags.SKB_MODE), {
    instanceOf: LibbpfError,
  });
  t.is(again?.call, 'bpf_link_create');
  t.is(again?.code, 'EBUSY');
  const opened = LinkFd.open(`${dir}/link`);
  t.teardown(() => opened.close());
  opened.update(b.program('mini_xdp').fd);
  t.is(xdpProgIdOf(veth.host), b.program('mini_xdp').info().id);
  opened.detach();
  t.is(xdpProgIdOf(veth.host), null);
});

test.serial('TC: clsact hook, attach at a fixed handle and priority, replace, query, detach', (t) => {
  const veth = createVethPair('t');
  t.teardown(() => veth.destroy());
  const obj = loadMini();
  t.teardown(() => obj.close());
  const filter: TcFilter = { ifindex: veth.hostIfindex, attachPoint: TcAttachPoint.INGRESS, handle: 0x1e6, priority: 1 };
  t.is(tcQuery(filter), null, 'nothing before the hook exists');
  tcHookCreate(veth.hostIfindex);
  tcHookCreate(veth.hostIfindex); // EEXIST is fine
  t.is(tcQuery(filter), null);
  const tc = obj.program('mini_tc');
  const alt = obj.program('mini_tc_alt');
  t.is(tcAttach(filter, tc.fd), tc.info().id);
  t.is(tcQuery(filter), tc.info().id);
  pingFromPeer(veth);
  t.true(hits(obj, 1).packets > 0n, 'ingress traffic ran mini_tc');

  t.is(tcAttach(filter, alt.fd), alt.info().id, 'same handle and priority: replaced');
  t.is(tcQuery(filter), alt.info().id);
  pingFromPeer(veth);
  t.true(hits(obj, 2).packets > 0n, 'the replacement runs');

  const egress: TcFilter = { ...filter, attachPoint: TcAttachPoint.EGRESS };
  tcAttach(egress, tc.fd);
  t.is(tcQuery(egress), tc.info().id);
  t.true(tcDetach(filter));
  t.false(tcDetach(filter));
  t.is(tcQuery(filter), null);
  t.is(tcQuery(egress), tc.info().id, 'the other direction is untouched');
  tcHookDestroy(veth.hostIfindex);
  t.is(tcQuery(egress), null);
  const bad = t.throws(() => tcAttach({ ...filter, ifindex: 0x7fff_fff0 }, tc.fd), { instanceOf: LibbpfError });
  t.is(bad?.call, 'bpf_tc_attach');
});
