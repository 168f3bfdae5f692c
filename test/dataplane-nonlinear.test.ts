/**
 * Non-linear skbs at the TC hooks. The hooks decide on the skb's linear part
 * and pull only when a header they need lies beyond it (bpf/i6pn.bpf.c), so
 * a packet whose headers sit in page fragments must get the verdict the same
 * packet gets when linear. BPF_PROG_TEST_RUN only makes linear skbs; a TAP
 * device with IFF_NAPI_FRAGS makes the other kind: what the first iovec of a
 * write holds is the linear part, the rest goes into fragments. Here the first
 * iovec is the Ethernet header alone and GRO is off (GRO would pull the
 * headers it parses), so every IPv6 header is outside the linear part. A probe program shows that the skbs really are shaped so; then
 * from_endpoint on the TAP's TC ingress must count, for each golden packet,
 * the reason the model gives.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createInterface } from 'node:readline';
import { BpfObject, tcAttach, tcDetach, tcHookCreate, TcAttachPoint } from '../agent/bpf/libbpf.js';
import { ipv4Packet, ipv6, ipv6Packet, type Ipv6Spec } from './tools/packet.js';
import type { ReasonName } from '../agent/bpf/dataplane.js';
import { decide, type Reason } from '../lib/policy.js';
import { M, R1, openFixture, type Fixture } from './helpers/golden.js';
import { compileFixture, ifindexOf, removeFixtureBuilds } from './helpers/binding.js';
import { runPacket } from './tools/run-packet.js';

const TAP = `i6nl${process.pid % 100000}`;
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** A TAP with IFF_NAPI | IFF_NAPI_FRAGS, held by a Python process that writes each line's iovecs with writev. */
const TAP_WRITER = `
import fcntl, os, struct, sys
IFF_TAP, IFF_NO_PI, IFF_NAPI, IFF_NAPI_FRAGS, TUNSETIFF = 0x0002, 0x1000, 0x0010, 0x0020, 0x400454ca
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', sys.argv[1].encode(), IFF_TAP | IFF_NO_PI | IFF_NAPI | IFF_NAPI_FRAGS))
print('ready', flush=True)
for line in sys.stdin:
    parts = [bytes.fromhex(p) for p in line.split()]
    try:
        os.writev(fd, parts)
        print('ok', flush=True)
    except OSError as e:
        print('error', e.errno, flush=True)
`;

let fx: Fixture;
let writer: ChildProcessWithoutNullStreams;
let replies: AsyncIterator<string>;
let tapIfindex: number;

async function write(iovecs: Uint8Array[]): Promise<void> {
  writer.stdin.write(iovecs.map(hex).join(' ') + '\n');
  const r = await replies.next();
  if (r.value !== 'ok') throw new Error(`writing to the TAP: ${String(r.value)}`);
}

/** Ethernet header alone, then the rest in two fragments. */
const split = (p: Uint8Array): Uint8Array[] => [p.subarray(0, 14), p.subarray(14, 34), p.subarray(34)];

test.before(async () => {
  fx = await openFixture('n');
  writer = spawn('python3', ['-c', TAP_WRITER, TAP]);
  replies = createInterface({ input: writer.stdout })[Symbol.asyncIterator]();
  const first = await replies.next();
  if (first.value !== 'ready') throw new Error(`TAP writer: ${String(first.value)}`);
  // Without GRO nothing parses the headers on the way in, so nothing pulls them into the linear part.
  for (const argv of [['ethtool', '-K', TAP, 'gro', 'off'], ['ip', 'link', 'set', TAP, 'up']]) {
    await new Promise<void>((resolve, reject) => {
      const p = spawn(argv[0]!, argv.slice(1), { stdio: 'inherit' });
      p.on('error', (err) => reject(new Error(`${argv.join(' ')}: ${err.message} (make deps installs ethtool)`)));
      p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${argv.join(' ')}: exit ${code}`))));
    });
  }
  tapIfindex = ifindexOf(TAP);
  // The TAP plays the local endpoint's veth.
  fx.dp.setLocalIface(tapIfindex, { addr: M.local, i6pn: true });
  fx.model.ifaces.set(tapIfindex, { addr: hex(M.local), i6pn: true });
});

test.after.always(() => {
  writer?.kill();
  fx?.close();
  removeFixtureBuilds();
});

test.serial('the TAP makes skbs whose IPv6 header is outside the linear part', async (t) => {
  const obj = BpfObject.open(compileFixture('linear'));
  t.teardown(() => obj.close());
  obj.load();
  const filter = { ifindex: tapIfindex, attachPoint: TcAttachPoint.INGRESS, handle: 0x77, priority: 7 } as const;
  tcHookCreate(tapIfindex);
  tcAttach(filter, obj.program('linear_probe').fd);
  try {
    for (let i = 0; i < 5; i++) await write(split(ipv6Packet({ src: M.local, dst: M.remote })));
  } finally {
    tcDetach(filter);
  }
  const shape = obj.map('shape').handle();
  const at = (k: number) => shape.lookup(Buffer.from(Uint32Array.of(k).buffer))!.readBigUInt64LE(0);
  t.is(at(0), 5n, 'packets seen at TC ingress');
  t.is(at(1), 5n, 'of which non-linear');
  t.true(at(2) < 14n + 40n, `linear part of ${at(2)} bytes: the IPv6 header is not in it`);
});

interface Case {
  name: string;
  packet: Uint8Array;
}

const PUBLIC = '2001:db8::a';
const p6 = (src: Uint8Array | string, dst: Uint8Array | string, more: Partial<Ipv6Spec> = {}) => ipv6Packet({ src, dst, ...more });
const cases: Case[] = [
  { name: 'allowed, to a remote member', packet: p6(M.local, M.remote) },
  { name: 'allowed, over TCP', packet: p6(M.local, M.remote, { l4: { proto: 'tcp', dstPort: 80 } }) },
  { name: 'to another workspace', packet: p6(M.local, M.otherWorkspace) },
  { name: 'spoofed source', packet: p6(M.local2, M.remote) },
  { name: 'unknown destination', packet: p6(M.local, M.unknown) },
  { name: 'extension headers: hop-by-hop, fragment, AH, destination options', packet: p6(M.local, M.remote, { ext: [{ type: 'hop-by-hop' }, { type: 'fragment', more: true }, { type: 'ah' }, { type: 'dest-opts', length: 16 }] }) },
  { name: 'routing header behind destination options', packet: p6(M.local, M.remote, { ext: [{ type: 'dest-opts' }, { type: 'routing' }] }) },
  { name: 'NDP from the own address', packet: p6(M.local, 'ff02::1:ff00:a', { l4: { proto: 'icmpv6', icmpType: 135 } }) },
  { name: 'MLDv2 report behind hop-by-hop', packet: p6('fe80::2', 'ff02::16', { ext: [{ type: 'hop-by-hop' }], l4: { proto: 'icmpv6', icmpType: 143 } }) },
  { name: 'NDP forging a neighbour', packet: p6(M.local2, 'ff02::1:ff00:a', { l4: { proto: 'icmpv6', icmpType: 135 } }) },
  { name: 'echo to the node\'s link-local address', packet: p6('fe80::2', 'fe80::1', { l4: { proto: 'icmpv6', icmpType: 128 } }) },
  { name: 'own address to a public one', packet: p6(M.local, PUBLIC) },
  { name: 'an ICMPv6 error the container sends about a peer\'s packet', packet: p6(M.local, M.remote, { l4: { proto: 'icmpv6', icmpType: 1, body: Uint8Array.from([0, 0, 0, 0, ...ipv6({ src: M.remote, dst: M.local })]) } }) },
  { name: 'IPv4', packet: ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2' }) },
];

/**
 * Each case, linear through BPF_PROG_TEST_RUN and non-linear through the TAP,
 * must get the model's verdict; the TAP's write moves exactly the one
 * counter of the model's reason.
 */
async function checkNonLinear(t: ExecutionContext, hook: 'from_endpoint' | 'from_fabric', list: readonly Case[]): Promise<void> {
  const key = (r: { hook: string; verdict: string; reason: string }) => `${r.hook}/${r.verdict}/${r.reason}`;
  const counts = () => new Map(fx.dp.readCounters({ nonZero: true }).map((r) => [key(r), r.packets]));
  for (const c of list) {
    const expected: Reason = decide(hook, c.packet, fx.model, hook === 'from_endpoint' ? tapIfindex : 0);
    const linear = runPacket(fx.dp, hook, c.packet, hook === 'from_endpoint' ? { ifindex: tapIfindex } : { uplinkHook: 'tc' });
    t.is(linear.verdict === 'pass', expected.startsWith('pass_'), `linear: ${c.name}`);
    const before = counts();
    await write(split(c.packet));
    const moved = [...counts()].filter(([k, n]) => k.startsWith(`${hook}/`) && n !== (before.get(k) ?? 0n)).map(([k]) => k);
    const verdict = expected.startsWith('pass_') ? 'pass' : 'drop';
    t.deepEqual(moved, [`${hook}/${verdict}/${expected as ReasonName}`], `non-linear: ${c.name}`);
  }
}

test.serial('from_endpoint gives a non-linear packet the verdict the model gives it (the linear one\'s)', async (t) => {
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
  fx.dp.attachEndpoint(tapIfindex);
  await checkNonLinear(t, 'from_endpoint', cases);
});

const icmpError = (quotedSrc: Uint8Array) => ({ proto: 'icmpv6' as const, icmpType: 2, body: Uint8Array.from([0, 0, 5, 0x14, ...ipv6({ src: quotedSrc, dst: PUBLIC })]) });
const fabricCases: Case[] = [
  { name: 'allowed, from a remote member', packet: p6(M.remote, M.local) },
  { name: 'allowed, to the second local endpoint', packet: p6(M.remote, M.local2, { l4: { proto: 'tcp', dstPort: 443 } }) },
  { name: 'from another workspace', packet: p6(M.otherWorkspace, M.local) },
  { name: 'a local endpoint\'s address from the fabric', packet: p6(M.local2, M.local) },
  { name: 'to an endpoint of another node', packet: p6(M.remote, M.remoteNoI6pn) },
  { name: 'to an unknown address', packet: p6(M.remote, M.unknown) },
  { name: 'extension headers: hop-by-hop, fragment, AH, destination options', packet: p6(M.remote, M.local, { ext: [{ type: 'hop-by-hop' }, { type: 'fragment', more: true }, { type: 'ah' }, { type: 'dest-opts', length: 16 }] }) },
  { name: 'routing header', packet: p6(M.remote, M.local, { ext: [{ type: 'routing' }] }) },
  { name: 'packet too big from a router about the endpoint\'s packet', packet: p6('2001:db8::1', M.local, { l4: icmpError(M.local) }) },
  { name: 'packet too big about someone else\'s packet', packet: p6('2001:db8::1', M.local, { l4: icmpError(M.local2) }) },
  { name: 'public traffic', packet: p6(PUBLIC, '2001:db8::b') },
];

test.serial('from_fabric\'s TC flavour gives a non-linear packet the verdict the model gives it', async (t) => {
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
  // The TAP plays the uplink now: from_fabric at its TC ingress.
  fx.dp.attachUplink(tapIfindex, { hook: 'tc' });
  await checkNonLinear(t, 'from_fabric', fabricCases);
});
