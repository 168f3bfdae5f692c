import test from 'ava';
import fc from 'fast-check';
import {
  addressHex,
  endpointHalfAt,
  endpointIdOf,
  formatAddress,
  formatAddressReference,
  isCanonicalAddress,
  isPrivate,
  isRegionId,
  isWorkspaceId,
  makeEndpointAddress,
  parseAddress,
  randomRegionId,
  randomWorkspaceId,
  regionAt,
  regionOf,
  regionSubnet,
  workspaceAt,
  workspaceOf,
  workspaceSubnet,
  writeEndpointAddress,
} from '../lib/address.js';

const bytes = (...b: number[]): Uint8Array => Uint8Array.from(b);

test('the address from the product page decodes to its workspace and region', (t) => {
  const a = parseAddress('fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f');
  t.true(isPrivate(a));
  t.is(workspaceOf(a), 0x51373ebf);
  t.is(regionOf(a), 0x0a70);
  t.is(endpointIdOf(a), '1b9d3a1171f25f0f');
  t.is(addressHex(a), 'fdaa51373ebf0a701b9d3a1171f25f0f');
  t.is(formatAddress(a), 'fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f');
});

test('makeEndpointAddress lays out fdaa:W:W:R:<64 bits>', (t) => {
  const a = makeEndpointAddress(0x12345678, 0x0a70, bytes(1, 2, 3, 4, 5, 6, 7, 8));
  t.deepEqual(Array.from(a), [0xfd, 0xaa, 0x12, 0x34, 0x56, 0x78, 0x0a, 0x70, 1, 2, 3, 4, 5, 6, 7, 8]);
  t.is(formatAddress(a), 'fdaa:1234:5678:a70:102:304:506:708');
  // Zero groups are compressed the RFC 5952 way (longest run, lowercase).
  t.is(formatAddress(makeEndpointAddress(1, 1, new Uint8Array(8))), 'fdaa:0:1:1::');
  t.is(formatAddress(makeEndpointAddress(0x10000, 2, bytes(0, 0, 0, 0, 0, 0, 0, 9))), 'fdaa:1:0:2::9');
});

test('makeEndpointAddress draws 64 random bits when none are given', (t) => {
  const a = makeEndpointAddress(7, 9);
  const b = makeEndpointAddress(7, 9);
  t.notDeepEqual(Array.from(a), Array.from(b));
  t.is(workspaceOf(a), 7);
  t.is(regionOf(a), 9);
});

test('makeEndpointAddress refuses ids out of range and short random bits', (t) => {
  t.throws(() => makeEndpointAddress(0, 1), { message: /workspace id must be a non-zero 32-bit number, got 0/ });
  t.throws(() => makeEndpointAddress(2 ** 32, 1), { message: /workspace id/ });
  t.throws(() => makeEndpointAddress(1.5, 1), { message: /workspace id/ });
  t.throws(() => makeEndpointAddress(1, 0), { message: /region id must be a non-zero 16-bit number, got 0/ });
  t.throws(() => makeEndpointAddress(1, 0x10000), { message: /region id/ });
  t.throws(() => makeEndpointAddress(1, 1, bytes(1, 2, 3)), { message: 'endpoint id must be 8 bytes, got 3' });
});

test('workspaceSubnet and regionSubnet', (t) => {
  t.is(workspaceSubnet(0x12345678), 'fdaa:1234:5678::/48');
  t.is(workspaceSubnet(0x51373ebf), 'fdaa:5137:3ebf::/48');
  t.is(workspaceSubnet(1), 'fdaa:0:1::/48');
  t.is(workspaceSubnet(0xffffffff), 'fdaa:ffff:ffff::/48');
  t.is(regionSubnet(0x51373ebf, 0xa70), 'fdaa:5137:3ebf:a70::/64');
  t.throws(() => workspaceSubnet(0), { message: /non-zero/ });
});

test('parseAddress canonicalises what ip-address accepts', (t) => {
  t.is(formatAddress(parseAddress('FDAA:0000:0000:0000:0000:0000:0000:0001')), 'fdaa::1');
  t.is(formatAddress(parseAddress(' fdaa::1 ')), 'fdaa::1');
  t.deepEqual(Array.from(parseAddress('::1')), [...new Array(15).fill(0), 1]);
  t.deepEqual(Array.from(parseAddress('::')), new Array(16).fill(0));
  t.false(isPrivate(parseAddress('fe80::1')));
  t.false(isPrivate(parseAddress('fdab::1')));
  t.false(isPrivate(parseAddress('::ffff:10.0.0.1')));
});

test('parseAddress throws a clear error on bad input', (t) => {
  t.throws(() => parseAddress(''), { message: 'invalid IPv6 address "": empty' });
  t.throws(() => parseAddress('fdaa::/48'), { message: 'invalid IPv6 address "fdaa::/48": expected an address, not a prefix' });
  t.throws(() => parseAddress('fdaa::1/128'), { message: /not a prefix/ });
  t.throws(() => parseAddress('fe80::1%eth0'), { message: /zone id/ });
  t.throws(() => parseAddress('10.0.0.1'), { message: /^invalid IPv6 address "10\.0\.0\.1": / });
  t.throws(() => parseAddress('fdaa::1::2'), { message: /^invalid IPv6 address "fdaa::1::2": / });
  t.throws(() => parseAddress('fdaa:1:2:3:4:5:6:7:8'), { message: /^invalid IPv6 address/ });
  t.throws(() => parseAddress('hello'), { message: /^invalid IPv6 address "hello": / });
});

test('formatAddress refuses anything but 16 bytes', (t) => {
  t.throws(() => formatAddress(new Uint8Array(4)), { message: 'an IPv6 address is 16 bytes, got 4' });
  t.throws(() => workspaceOf(new Uint8Array(15)), { message: /16 bytes/ });
});

test('random ids are non-zero and in range', (t) => {
  for (let i = 0; i < 2000; i++) {
    t.true(isWorkspaceId(randomWorkspaceId()));
    t.true(isRegionId(randomRegionId()));
  }
  t.false(isWorkspaceId(0));
  t.false(isRegionId(0));
  t.false(isRegionId(0x10000));
});

test('property: format and parse round-trip, and the bits decode back', (t) => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 0xffffffff }),
      fc.integer({ min: 1, max: 0xffff }),
      fc.uint8Array({ minLength: 8, maxLength: 8 }),
      (ws, region, rand) => {
        const a = makeEndpointAddress(ws, region, rand);
        const s = formatAddress(a);
        const back = parseAddress(s);
        return (
          Buffer.from(back).equals(Buffer.from(a)) &&
          formatAddress(back) === s &&
          isPrivate(back) &&
          workspaceOf(back) === ws &&
          regionOf(back) === region &&
          endpointIdOf(back) === Buffer.from(rand).toString('hex') &&
          s.startsWith(workspaceSubnet(ws).replace(/::\/48$/, ''))
        );
      },
    ),
    { numRuns: 2000 },
  );
  t.pass();
});

test('property: any 16 bytes format to a string that parses back to them', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 16, maxLength: 16 }), (b) => {
      const s = formatAddress(b);
      return s === s.toLowerCase() && Buffer.from(parseAddress(s)).equals(Buffer.from(b));
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

test('formatAddress prints from the bytes exactly what ip-address prints (RFC 5952), zero runs everywhere', (t) => {
  // 8 groups, each zero half of the time, so runs of zeros of every length and position occur.
  const groups = fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff }), fc.constant(1), fc.constant(0xffff)), { minLength: 8, maxLength: 8 });
  fc.assert(
    fc.property(groups, (g) => {
      const b = new Uint8Array(16);
      g.forEach((v, i) => {
        b[2 * i] = v >> 8;
        b[2 * i + 1] = v & 0xff;
      });
      const text = formatAddress(b);
      t.is(text, formatAddressReference(b));
      t.deepEqual(parseAddress(text), b);
    }),
    { numRuns: 5000 },
  );
  for (const s of ['::', '::1', '1::', 'fdaa:0:0:1::', 'fdaa::1:0:0:1', '1:0:0:1:0:0:0:1', '1:0:0:0:1:0:0:1', '0:1:0:1:0:1:0:1']) {
    t.is(formatAddress(parseAddress(s)), formatAddressReference(parseAddress(s)), s);
  }
});

test('property: the hot path\'s codec writes and reads the layout makeEndpointAddress and workspaceOf/regionOf define', (t) => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 0xffff_ffff }),
      fc.integer({ min: 1, max: 0xffff }),
      fc.uint8Array({ minLength: 8, maxLength: 8 }),
      fc.nat(32),
      (ws, region, rand, at) => {
        const want = makeEndpointAddress(ws, region, rand);
        const hi = Buffer.from(rand).readUInt32BE(0);
        const lo = Buffer.from(rand).readUInt32BE(4);
        const buf = new Uint8Array(at + 16 + 3).fill(0xee);
        writeEndpointAddress(buf, at, ws, region, hi, lo);
        t.deepEqual(buf.subarray(at, at + 16), want);
        t.true(buf.subarray(0, at).every((b) => b === 0xee) && buf.subarray(at + 16).every((b) => b === 0xee), 'nothing written outside');
        t.is(workspaceAt(buf, at), workspaceOf(want));
        t.is(regionAt(buf, at), regionOf(want));
        t.is(((BigInt(endpointHalfAt(buf, at, 0)) << 32n) | BigInt(endpointHalfAt(buf, at, 1))).toString(16).padStart(16, '0'), endpointIdOf(want));
        const text = Buffer.from(`x${formatAddress(want)}y`, 'latin1');
        t.true(isCanonicalAddress(text, 1, text.length - 1, ws, region, hi, lo));
        t.false(isCanonicalAddress(text, 1, text.length - 1, ws, region, hi, lo ^ 1));
        const upper = Buffer.from(formatAddress(want).toUpperCase(), 'latin1');
        if (/[a-f]/.test(formatAddress(want))) t.false(isCanonicalAddress(upper, 0, upper.length, ws, region, hi, lo), 'uppercase is not canonical');
      },
    ),
    { numRuns: 500 },
  );
});
