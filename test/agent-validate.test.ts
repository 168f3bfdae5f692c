/**
 * The agent's fast validation (agent/validate.ts) against the reference,
 * lib/schema.ts validateEndpointEntry(): the same verdict, reason and record
 * on valid entries, near-valid ones and garbage; and its RFC 5952 printer
 * against lib/address.ts formatAddress() on random addresses rich in zero
 * groups (where compression rules bite).
 */
import test from 'ava';
import fc from 'fast-check';
import { formatAddress, makeEndpointAddress, workspaceIdHex, endpointIdOf, parseAddress } from '../lib/address.js';
import { validateEndpointEntry } from '../lib/schema.js';
import { parseHexAddress, printAddress, validateEndpoint } from '../agent/validate.js';

/** 8 groups, each zero half of the time, so runs of zeros of every length and position occur. */
const addressBytes = fc
  .array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff }), fc.constant(1), fc.constant(0xffff)), { minLength: 8, maxLength: 8 })
  .map((groups) => {
    const b = new Uint8Array(16);
    groups.forEach((g, i) => {
      b[2 * i] = g >> 8;
      b[2 * i + 1] = g & 0xff;
    });
    return b;
  });

test('printAddress is formatAddress (RFC 5952) and parseHexAddress inverts it', (t) => {
  fc.assert(
    fc.property(addressBytes, (b) => {
      const text = formatAddress(b);
      t.is(printAddress(b), text);
      t.deepEqual(parseHexAddress(text), b);
      t.deepEqual(parseAddress(text), b);
    }),
    { numRuns: 5000 },
  );
  for (const s of ['::', '::1', '1::', 'fdaa:0:0:1::', 'fdaa::1:0:0:1', '1:0:0:1:0:0:0:1', '1:0:0:0:1:0:0:1', '0:1:0:1:0:1:0:1']) {
    t.is(printAddress(parseAddress(s)), formatAddress(parseAddress(s)), s);
  }
  // Not canonical or not hex groups: the fast parser declines or prints something else, never a wrong address.
  for (const s of ['FDAA::1', 'fdaa::01', 'fdaa:0::1', 'fdaa::1::2', '::ffff:1.2.3.4', 'fdaa::1%eth0', 'fdaa::/64', '', ':', 'fdaa:1:2:3:4:5:6:7:8']) {
    const b = parseHexAddress(s);
    t.true(b === null || printAddress(b) !== s, s);
  }
});

const REGION = 'ams';
const REGION_ID = 0x0a01;

function entry(over: Record<string, unknown>, keyOver?: (k: string) => string) {
  const addr = makeEndpointAddress(0x1a2b3c4d, REGION_ID, new Uint8Array([0, 0, 0, 0, 0, 0, 0, 7]));
  const record = {
    v: 1,
    address: formatAddress(addr),
    workspace: 'one',
    workspaceId: 0x1a2b3c4d,
    region: REGION,
    regionId: REGION_ID,
    node: 'n1',
    ifname: 'ep-a',
    i6pn: true,
    createdAt: '2026-11-27T18:00:00.000Z',
    ...over,
  };
  const key = `${REGION}.${workspaceIdHex(0x1a2b3c4d)}.${endpointIdOf(addr)}`;
  return { key: keyOver ? keyOver(key) : key, value: new TextEncoder().encode(JSON.stringify(record)) };
}

test('validateEndpoint gives validateEndpointEntry\'s verdict on valid, near-valid and broken entries', (t) => {
  const cases: Array<{ key: string; value: Uint8Array }> = [
    entry({}),
    entry({ address: 'fdaa:1a2b:3c4d:a01:0:0:0:7' }), // not canonical
    entry({ address: 'FDAA:1A2B:3C4D:A01::7' }),
    entry({ address: 'fdab:1a2b:3c4d:a01::7' }), // not private
    entry({ address: 'fdaa:1a2b:3c4d:a02::7' }), // region bits
    entry({ address: 'fdaa:1a2b:3c4e:a01::7' }), // workspace bits
    entry({ address: '::ffff:1.2.3.4' }),
    entry({ address: 'nonsense' }),
    entry({ regionId: REGION_ID + 1 }),
    entry({ workspaceId: 0 }),
    entry({ ifname: 'bad/name' }),
    entry({ i6pn: 'yes' }),
    entry({ v: 2 }),
    entry({}, (k) => k.replace(REGION, 'other')),
    entry({}, (k) => k.replace(/\.[0-9a-f]{16}$/, '.0000000000000008')),
    entry({}, (k) => k.replace('1a2b3c4d', '1a2b3c4e')),
    entry({}, (k) => `${k}.extra`),
    { key: 'ams.1a2b3c4d.0000000000000007', value: new TextEncoder().encode('{not json') },
    { key: 'ams.1a2b3c4d.0000000000000007', value: new Uint8Array([0xff, 0xfe]) },
  ];
  for (const c of cases) t.deepEqual(validateEndpoint(c.key, c.value), validateEndpointEntry(c.key, c.value), c.key);

  // Random endpoints, valid by construction, with one field sometimes perturbed.
  fc.assert(
    fc.property(
      addressBytes,
      fc.integer({ min: 1, max: 0xffffffff }),
      fc.integer({ min: 1, max: 0xffff }),
      fc.oneof(fc.constant('none'), fc.constant('ws'), fc.constant('region'), fc.constant('key'), fc.constant('text')),
      (low, ws, region, perturb) => {
        const addr = makeEndpointAddress(ws, region, low.subarray(8));
        const record = {
          v: 1,
          address: perturb === 'text' ? formatAddress(addr).toUpperCase() : formatAddress(addr),
          workspace: 'w',
          workspaceId: perturb === 'ws' ? (ws % 0xffffffff) + 1 : ws,
          region: 'r',
          regionId: perturb === 'region' ? (region % 0xffff) + 1 : region,
          node: 'n1',
          ifname: 'eth0',
          i6pn: true,
          createdAt: '2026-11-27T18:00:00.000Z',
        };
        const key = `r.${workspaceIdHex(perturb === 'key' ? (ws % 0xffffffff) + 1 : ws)}.${endpointIdOf(addr)}`;
        const value = new TextEncoder().encode(JSON.stringify(record));
        const fast = validateEndpoint(key, value);
        t.deepEqual(fast, validateEndpointEntry(key, value));
        if (perturb === 'none') t.true(fast.ok);
      },
    ),
    { numRuns: 3000 },
  );
});

test('validateEndpoint is several times faster than validateEndpointEntry on valid entries', (t) => {
  const items = Array.from({ length: 5000 }, (_, i) => {
    const addr = makeEndpointAddress(0x1234, 0x0b0b, new Uint8Array([i >> 8, i & 0xff, 1, 2, 3, 4, 5, 6]));
    return entry({ address: formatAddress(addr), workspaceId: 0x1234, regionId: 0x0b0b, region: 'bench' }, () => `bench.${workspaceIdHex(0x1234)}.${endpointIdOf(addr)}`);
  });
  const time = (f: (k: string, v: Uint8Array) => { ok: boolean }): number => {
    let best = Infinity;
    for (let r = 0; r < 3; r++) {
      const t0 = performance.now();
      for (const it of items) if (!f(it.key, it.value).ok) throw new Error('invalid');
      best = Math.min(best, performance.now() - t0);
    }
    return best;
  };
  const lib = time(validateEndpointEntry);
  const fast = time(validateEndpoint);
  t.log(`validateEndpointEntry ${((lib * 1000) / items.length).toFixed(1)} µs, validateEndpoint ${((fast * 1000) / items.length).toFixed(1)} µs per entry`);
  t.true(fast * 1.5 < lib, 'the fast path must stay clearly faster (a loaded machine narrows the ratio)');
});
