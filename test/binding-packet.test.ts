/**
 * The packet builder (test/tools/packet.ts): byte layouts checked field by
 * field, and every packet kind decoded by an independent parser (tcpdump
 * reading a pcap we write), which also verifies the checksums.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  EtherType,
  Proto,
  ipv4Packet,
  ipv6Offsets,
  ipv6Packet,
  parseIpv6,
  privateAddress,
  rawFrame,
  truncate,
  type Ipv6Spec,
} from './tools/packet.js';

const A = privateAddress(0x1111_1111, 7, 1n);
const B = privateAddress(0x1111_1111, 7, 2n);

function tcpdump(t: import('ava').ExecutionContext, packets: Uint8Array[]): string[] {
  const dir = mkdtempSync(join(tmpdir(), `i6pn-pcap-${process.pid}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const hdr = Buffer.alloc(24);
  hdr.writeUInt32LE(0xa1b2c3d4, 0);
  hdr.writeUInt16LE(2, 4);
  hdr.writeUInt16LE(4, 6);
  hdr.writeUInt32LE(65535, 16);
  hdr.writeUInt32LE(1, 20); // Ethernet
  const records = packets.map((p) => {
    const r = Buffer.alloc(16);
    r.writeUInt32LE(p.length, 8);
    r.writeUInt32LE(p.length, 12);
    return Buffer.concat([r, Buffer.from(p)]);
  });
  const file = join(dir, 'p.pcap');
  writeFileSync(file, Buffer.concat([hdr, ...records]));
  const out = execFileSync('tcpdump', ['-nn', '-vv', '-e', '-r', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  // One packet may print on two lines (IPv4's second line): join continuation lines.
  return out.replace(/\n[\t ]+/g, ' ').trim().split('\n');
}

test('addresses: IPv6 text forms and the private layout', (t) => {
  t.deepEqual(parseIpv6('::1'), Uint8Array.of(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1));
  t.deepEqual(parseIpv6('fdaa:1111:1111:7::1'), A);
  t.deepEqual(parseIpv6('fdaa:1111:1111:7:0:0:0:1'), A);
  t.deepEqual(parseIpv6('::ffff:10.1.2.3').slice(10), Uint8Array.of(0xff, 0xff, 10, 1, 2, 3));
  for (const bad of ['1::2::3', 'fdaa', '1:2:3:4:5:6:7:8:9', 'g::1', '1:2:3:4:5:6:7']) t.throws(() => parseIpv6(bad), { message: /not an IPv6 address/ });
  const p = privateAddress(0xdeadbeef, 0xabcd, 0x0102030405060708n);
  t.is(Buffer.from(p).toString('hex'), 'fdaadeadbeefabcd0102030405060708');
});

test('IPv6 over Ethernet: header fields and lengths', (t) => {
  const p = ipv6Packet({ src: A, dst: B, hopLimit: 9, trafficClass: 0xb8, flowLabel: 0x12345 });
  t.is(p.length, 14 + 40 + 8 + 8);
  const v = new DataView(p.buffer);
  t.is(v.getUint16(12), EtherType.IPV6);
  t.is(v.getUint32(14), (6 << 28) | (0xb8 << 20) | 0x12345);
  t.is(v.getUint16(18), 16, 'payload length');
  t.is(p[20], Proto.UDP);
  t.is(p[21], 9);
  t.deepEqual(p.slice(22, 38), A);
  t.deepEqual(p.slice(38, 54), B);
  t.is(ipv6Packet({ src: A, dst: B, noEthernet: true })[0]! >> 4, 6);
  const odd = ipv6Packet({ src: A, dst: B, version: 4, payloadLength: 999 });
  t.is(odd[14]! >> 4, 4);
  t.is(new DataView(odd.buffer).getUint16(18), 999);
});

test('VLAN tags: any number, outermost first, 802.1Q by default', (t) => {
  const p = ipv6Packet({ src: A, dst: B, vlans: [10, { id: 20, tpid: EtherType.QINQ, pcp: 5 }, 30] });
  const v = new DataView(p.buffer);
  t.deepEqual([v.getUint16(12), v.getUint16(14)], [0x8100, 10]);
  t.deepEqual([v.getUint16(16), v.getUint16(18)], [0x88a8, (5 << 13) | 20]);
  t.deepEqual([v.getUint16(20), v.getUint16(22)], [0x8100, 30]);
  t.is(v.getUint16(24), EtherType.IPV6);
  t.is(ipv6Offsets({ src: A, dst: B, vlans: [1, 2, 3] }).ipv6, 26);
});

test('extension headers chain their next-header values and lengths', (t) => {
  const spec: Ipv6Spec = {
    src: A,
    dst: B,
    ext: [
      { type: 'hop-by-hop' },
      { type: 'dest-opts', length: 16 },
      { type: 'routing', routingType: 4, addresses: [B, A], segmentsLeft: 1 },
      { type: 'fragment', offset: 100, more: true, id: 0xabcdef01 },
      { type: 'ah', icvLength: 20 },
      { type: 'generic', protocol: Proto.MOBILITY, length: 24 },
    ],
    l4: { proto: 'tcp' },
  };
  const p = ipv6Packet(spec);
  const o = ipv6Offsets(spec);
  t.deepEqual(o.ext, [54, 62, 78, 118, 126, 158]);
  t.is(o.l4, 182);
  t.is(o.end, p.length);
  t.is(p[20], Proto.HOP_BY_HOP);
  t.deepEqual([p[54], p[55]], [Proto.DEST_OPTS, 0]);
  t.deepEqual([p[62], p[63]], [Proto.ROUTING, 1]);
  t.deepEqual([p[78], p[79], p[80], p[81]], [Proto.FRAGMENT, 4, 4, 1], 'routing: next, len in 8-byte units, type, segments left');
  t.deepEqual(p.slice(86, 102), B);
  const frag = new DataView(p.buffer, 118);
  t.is(frag.getUint8(0), Proto.AH);
  t.is(frag.getUint16(2), (100 << 3) | 1, 'offset 100 (8-byte units) and M');
  t.is(frag.getUint32(4), 0xabcdef01);
  t.deepEqual([p[126], p[127]], [Proto.MOBILITY, 32 / 4 - 2], 'AH length counts 4-byte units minus 2');
  t.deepEqual([p[158], p[159]], [Proto.TCP, 2]);
  t.is(new DataView(p.buffer).getUint16(18), p.length - 54);
  t.throws(() => ipv6Packet({ src: A, dst: B, ext: [{ type: 'hop-by-hop', length: 12 }] }), { message: /multiple of 8/ });
  t.throws(() => ipv6Packet({ src: A, dst: B, ext: [{ type: 'ah', icvLength: 8 }] }), { message: /8-byte aligned/ });
  const raw = ipv6Packet({ src: A, dst: B, ext: [{ type: 'raw', protocol: 253, bytes: Uint8Array.of(0xff, 0, 1, 2, 3, 4, 5, 6) }], l4: { proto: 'none' } });
  t.deepEqual([raw[20], raw[54], raw[55]], [253, Proto.NO_NEXT, 0]);
});

test('truncate cuts a copy', (t) => {
  const p = ipv6Packet({ src: A, dst: B });
  const cut = truncate(p, 20);
  t.is(cut.length, 20);
  cut[0] = 0x77;
  t.not(p[0], 0x77);
  t.is(truncate(p, 10_000).length, p.length);
  t.is(truncate(p, -1).length, 0);
});

test('tcpdump decodes every kind and finds the checksums correct', (t) => {
  const lines = tcpdump(t, [
    ipv6Packet({ src: A, dst: B, l4: { proto: 'udp', srcPort: 1000, dstPort: 2000, payload: new Uint8Array(7).fill(1) } }),
    ipv6Packet({ src: A, dst: B, vlans: [10, { id: 20, tpid: EtherType.QINQ }], l4: { proto: 'tcp', payload: new Uint8Array(5) } }),
    ipv6Packet({ src: A, dst: B, l4: { proto: 'icmpv6' } }),
    ipv6Packet({
      src: A,
      dst: B,
      ext: [{ type: 'hop-by-hop' }, { type: 'dest-opts', length: 16 }, { type: 'routing', addresses: ['fdaa::9'], segmentsLeft: 1 }, { type: 'fragment', offset: 100, more: true, id: 7 }],
      l4: { proto: 'udp' },
    }),
    ipv6Packet({ src: 'fe80::1', dst: 'ff02::1', l4: { proto: 'icmpv6', icmpType: 135, body: new Uint8Array(20) } }),
    ipv4Packet({ src: '10.0.0.1', dst: '10.0.0.2', vlans: [5], protocol: Proto.ICMP, payload: Uint8Array.of(8, 0, 0xf7, 0xff, 0, 0, 0, 0) }),
    rawFrame({ etherType: EtherType.ARP, payload: new Uint8Array(28) }),
  ]);
  t.is(lines.length, 7, lines.join("\n"));
  t.regex(lines[0]!, /fdaa:1111:1111:7::1\.1000 > fdaa:1111:1111:7::2\.2000: \[udp sum ok\] UDP, length 7/);
  t.regex(lines[1]!, /vlan 10, p 0, ethertype 802\.1Q-QinQ \(0x88a8\), vlan 20, p 0, ethertype IPv6.*Flags \[S\], cksum 0x[0-9a-f]+ \(correct\)/);
  t.regex(lines[2]!, /\[icmp6 sum ok\] ICMP6, echo request/);
  t.regex(lines[3]!, /HBH \(padn\) DSTOPT \(padn\) RT6 \(len=2, type=0 \[Deprecated\], segleft=1, rsv=0x0, \[0\]fdaa::9\) frag \(0x00000007:800\|16\)/);
  t.regex(lines[4]!, /fe80::1 > ff02::1: \[icmp6 sum ok\] ICMP6, neighbor solicitation/);
  t.regex(lines[5]!, /vlan 5, .*proto ICMP \(1\), length 28\) 10\.0\.0\.1 > 10\.0\.0\.2: ICMP echo request/);
  t.notRegex(lines[5]!, /bad cksum/);
  t.regex(lines[6]!, /ethertype ARP/);
});
