/**
 * Property test: thousands of random and mutated packets through each kernel
 * program in enforce mode, on every interface the fixture has, entering from
 * every place a packet can enter the node. Two properties:
 *  - isolation, stated on its own: no packet whose fixed-header addresses
 *    cross a workspace or region boundary, or involve a non-member, is passed
 *    as private traffic; a private packet leaves through to_endpoint or
 *    to_fabric only if it entered where its source is bound; nothing passes
 *    a sealed veth;
 *  - agreement: the kernel reports the same reason as the reference model.
 */
import test from 'ava';
import fc from 'fast-check';
import { ipv6, ipv6Packet, privateAddress, type ExtHeader, type Ipv6Spec, type L4, type VlanTag } from './tools/packet.js';
import { LibbpfError, type HookName } from '../agent/bpf/dataplane.js';
import { decide, isPass, tunnelKey } from '../lib/policy.js';
import { M, observe, openFixture, R1, R2, TUNNEL_PORT, W1, W2, type Fixture } from './helpers/golden.js';
import { RESOLVER_ADDRESS } from '../lib/address.js';

let fx: Fixture;
test.before(async () => {
  fx = await openFixture('p');
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
});
test.after.always(() => fx?.close());

const members = Object.values(M);
const arbAddress = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...members) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.constantFrom(W1, W2, 0, 0xffffffff), fc.constantFrom(R1, R2, 0), fc.constantFrom(0xa, 0xb, 0xc, 0x99))
      .map(([w, r, e]) => privateAddress(w, r, e)),
  },
  { weight: 1, arbitrary: fc.constantFrom('2001:db8::1', 'fe80::1', 'ff02::1', 'ff02::1:ff00:a', '::', 'fdab::1', 'fcaa::1', 'fdaa::54') },
  { weight: 1, arbitrary: fc.constant(RESOLVER_ADDRESS) },
);
const arbVlans = fc.array(
  fc.oneof(fc.integer({ min: 1, max: 4094 }), fc.record({ id: fc.integer({ min: 1, max: 4094 }), tpid: fc.constantFrom(0x8100, 0x88a8) })),
  { maxLength: 3 },
) as fc.Arbitrary<VlanTag[]>;
const arbExt: fc.Arbitrary<ExtHeader> = fc.oneof(
  fc.constant({ type: 'hop-by-hop' as const }),
  fc.record({ type: fc.constant('dest-opts' as const), length: fc.constantFrom(8, 16, 64) }),
  fc.record({ type: fc.constant('fragment' as const), offset: fc.constantFrom(0, 0, 1, 185), more: fc.boolean() }),
  fc.constant({ type: 'ah' as const }),
  fc.record({ type: fc.constant('routing' as const), routingType: fc.constantFrom(0, 2, 4), segmentsLeft: fc.integer({ min: 0, max: 2 }) }),
  fc.record({ type: fc.constant('generic' as const), protocol: fc.constantFrom(135, 139, 140, 253, 254) }),
);
const arbL4: fc.Arbitrary<L4> = fc.oneof(
  fc.constant({ proto: 'udp' as const }),
  fc.constant({ proto: 'tcp' as const }),
  fc.record({ proto: fc.constant('icmpv6' as const), icmpType: fc.constantFrom(128, 129, 130, 131, 133, 134, 135, 136, 137, 143, 1, 2, 3, 4) }),
  // ICMPv6 errors quoting a packet of a member or of anyone
  fc
    .tuple(fc.constantFrom(1, 2, 3, 4), fc.constantFrom(...Object.values(M), '2001:db8::9'), fc.constantFrom(M.remote, '2001:db8::2'))
    .map(([icmpType, qsrc, qdst]) => ({ proto: 'icmpv6' as const, icmpType, body: Uint8Array.from([0, 0, 5, 0x14, ...ipv6({ src: qsrc, dst: qdst })]) })),
  fc.constant({ proto: 'none' as const }),
  // DNS, either way
  fc.constantFrom(
    { proto: 'udp' as const, dstPort: 53 },
    { proto: 'tcp' as const, dstPort: 53 },
    { proto: 'udp' as const, srcPort: 53, dstPort: 40000 },
    { proto: 'tcp' as const, srcPort: 53, dstPort: 40000 },
  ),
  // the tunnels' ports and their neighbours, both ways, with every interesting TCP flag
  fc
    .tuple(fc.constantFrom('tcp' as const, 'tcp' as const, 'udp' as const), fc.constantFrom(TUNNEL_PORT, TUNNEL_PORT + 1, 443, 40000), fc.constantFrom(TUNNEL_PORT, 443, 40000), fc.constantFrom(0x02, 0x12, 0x10, 0x18, 0x04, 0x01))
    .map(([proto, srcPort, dstPort, flags]) => (proto === 'tcp' ? { proto, srcPort, dstPort, flags } : { proto, srcPort, dstPort })),
);
const arbSpec: fc.Arbitrary<Ipv6Spec> = fc.record({
  src: arbAddress,
  dst: arbAddress,
  vlans: arbVlans,
  ext: fc.array(arbExt, { maxLength: 8 }),
  l4: arbL4,
});
/** Byte flips and a cut, applied after building, to reach what no builder makes. */
const arbMutation = fc.record({
  flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }),
  cut: fc.option(fc.nat(), { freq: 4 }),
});
type Place = keyof Fixture['ifindex'] | 'node';
const arbHook = fc.constantFrom<HookName>('from_fabric', 'from_endpoint', 'to_endpoint', 'to_fabric');
const arbIface = fc.constantFrom('local', 'local2', 'localNoI6pn', 'unregistered', 'sealed', 'gateway') as fc.Arbitrary<keyof Fixture['ifindex']>;
/** Where a packet entered the node: any interface, or the node's own stack. */
const arbIngress = fc.constantFrom<Place>('local', 'local2', 'localNoI6pn', 'unregistered', 'sealed', 'gateway', 'uplink', 'uplink', 'node');

function mutate(p: Uint8Array, m: { flips: Array<[number, number]>; cut: number | null }): Uint8Array {
  let out = new Uint8Array(p);
  for (const [at, v] of m.flips) out[at % out.length] = v;
  if (m.cut !== null) out = out.slice(0, 14 + (m.cut % Math.max(1, out.length - 13)));
  return out;
}

/** Fixed-header addresses, found on our own (up to two VLAN tags), or null. */
function addresses(p: Uint8Array): { src: Uint8Array; dst: Uint8Array } | null {
  let off = 12;
  let type = (p[off]! << 8) | p[off + 1]!;
  for (let i = 0; i < 2 && (type === 0x8100 || type === 0x88a8); i++) {
    off += 4;
    type = (p[off]! << 8) | p[off + 1]!;
  }
  const l3 = off + 2;
  if (type !== 0x86dd || p.length < l3 + 40) return null;
  return { src: p.slice(l3 + 8, l3 + 24), dst: p.slice(l3 + 24, l3 + 40) };
}

const isPrivate = (a: Uint8Array) => a[0] === 0xfd && a[1] === 0xaa;
const hex = (a: Uint8Array) => Buffer.from(a).toString('hex');

/** Packets one step from allowed: the right ends for the hook, allowed headers, rare mutations. */
const arbAllowedExt: fc.Arbitrary<ExtHeader> = fc.oneof(
  fc.constant({ type: 'hop-by-hop' as const }),
  fc.constant({ type: 'dest-opts' as const }),
  fc.record({ type: fc.constant('fragment' as const), offset: fc.constantFrom(0, 185), more: fc.boolean() }),
  fc.constant({ type: 'ah' as const }),
);
/** One flip at most, a cut now and then. */
const arbRareMutation = fc.record({
  flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 1 }),
  cut: fc.option(fc.nat(), { freq: 10 }),
});
/** Where a packet is run and its ends: hook, interface, where it entered, source, destination. */
type Plan = [HookName, keyof Fixture['ifindex'], Place, Uint8Array, Uint8Array];
const arbNearAllowed = fc
  .tuple(
    fc.constantFrom(
      ['from_fabric', 'local', 'uplink', M.remote, M.local],
      ['from_fabric', 'local', 'uplink', M.remote, M.local2],
      ['from_endpoint', 'local', 'local', M.local, M.remote],
      ['from_endpoint', 'local', 'local', M.local, M.local2],
      ['from_endpoint', 'local2', 'local2', M.local2, M.remote],
      ['to_endpoint', 'local', 'uplink', M.remote, M.local],
      ['to_endpoint', 'local', 'local2', M.local2, M.local],
      ['to_endpoint', 'local2', 'uplink', M.remote, M.local2],
      ['to_endpoint', 'local2', 'local', M.local, M.local2],
      ['to_fabric', 'uplink', 'local', M.local, M.remote],
      ['to_fabric', 'uplink', 'local2', M.local2, M.remote],
    ) as fc.Arbitrary<Plan>,
    fc.array(fc.integer({ min: 1, max: 4094 }), { maxLength: 2 }),
    fc.array(arbAllowedExt, { maxLength: 3 }),
    arbL4,
    arbRareMutation,
  )
  .map(([[hook, iface, ingress, src, dst], vlans, ext, l4, mutation]) => [hook, iface, ingress, { src, dst, vlans, ext, l4 }, mutation] as const);
/** DNS with the resolver, one step from allowed: a query or an answer, where it is allowed or one place off. */
const arbNearResolver = fc
  .tuple(
    fc.constantFrom(
      ['from_endpoint', 'local', 'local', M.local, RESOLVER_ADDRESS],
      ['from_endpoint', 'localNoI6pn', 'localNoI6pn', M.localNoI6pn, RESOLVER_ADDRESS],
      ['from_endpoint', 'local2', 'local2', M.local, RESOLVER_ADDRESS],
      ['to_endpoint', 'local2', 'node', RESOLVER_ADDRESS, M.local2],
      ['to_endpoint', 'local', 'uplink', RESOLVER_ADDRESS, M.local],
      ['to_endpoint', 'local', 'local2', RESOLVER_ADDRESS, M.local],
    ) as fc.Arbitrary<[HookName, keyof Fixture['ifindex'], Place, Uint8Array | string, Uint8Array | string]>,
    fc.array(arbAllowedExt, { maxLength: 2 }),
    fc.constantFrom<L4>({ proto: 'udp', dstPort: 53 }, { proto: 'tcp', dstPort: 53 }, { proto: 'udp', srcPort: 53, dstPort: 40000 }, { proto: 'tcp', srcPort: 53, dstPort: 40000 }),
    fc.record({
      flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 1 }),
      // Half of them whole: a cut packet is seldom DNS any more.
      cut: fc.oneof(fc.constant(null), fc.nat()),
    }),
  )
  .map(([[hook, iface, ingress, src, dst], ext, l4, mutation]) => [hook, iface, ingress, { src, dst, ext, l4 }, mutation] as const);

/** Packets one step from a tunnel's: a gateway and a tunneled endpoint, mostly on the tunnel's port, with any TCP flags. */
const arbNearTunnel = fc
  .tuple(
    fc.constantFrom(
      ['from_endpoint', 'gateway', 'gateway', M.gateway, M.remote],
      ['from_endpoint', 'gateway', 'gateway', M.gateway, M.local],
      ['from_endpoint', 'local', 'local', M.local, M.remoteGateway],
      ['from_fabric', 'local', 'uplink', M.remoteGateway, M.local],
      ['from_fabric', 'local', 'uplink', M.remote, M.gateway],
      ['to_endpoint', 'local', 'uplink', M.remoteGateway, M.local],
      ['to_endpoint', 'local', 'gateway', M.gateway, M.local],
      ['to_endpoint', 'gateway', 'uplink', M.remote, M.gateway],
      ['to_endpoint', 'gateway', 'local', M.local, M.gateway],
      ['to_fabric', 'uplink', 'gateway', M.gateway, M.remote],
    ) as fc.Arbitrary<Plan>,
    fc.array(fc.integer({ min: 1, max: 4094 }), { maxLength: 2 }),
    fc.array(arbAllowedExt, { maxLength: 2 }),
    fc.constantFrom(TUNNEL_PORT, TUNNEL_PORT, TUNNEL_PORT, TUNNEL_PORT + 1),
    fc.constantFrom('tcp' as const, 'tcp' as const, 'tcp' as const, 'udp' as const),
    fc.constantFrom(0x02, 0x12, 0x10, 0x18, 0x11, 0x04),
    arbRareMutation,
  )
  .map(([[hook, iface, ingress, src, dst], vlans, ext, port, proto, flags, mutation]) => {
    const fromGateway = src[2] === 0 && src[3] === 0 && src[4] === 0 && src[5] === 0;
    const srcPort = fromGateway ? 40000 : port;
    const dstPort = fromGateway ? port : 40000;
    const l4: L4 = proto === 'tcp' ? { proto, srcPort, dstPort, flags } : { proto, srcPort, dstPort };
    return [hook, iface, ingress, { src, dst, vlans, ext, l4 }, mutation] as const;
  });
const arbRandom = fc.tuple(arbHook, arbIface, arbIngress, arbSpec, arbMutation);

/** The interface a hook runs on and where the packet entered, as the kernel is told. */
function place(hook: HookName, iface: keyof Fixture['ifindex'], ingress: Place): { ifindex?: number; ingress?: number } {
  const at = (p: Place) => (p === 'node' ? 0 : fx.ifindex[p]);
  if (hook === 'from_fabric') return {};
  if (hook === 'from_endpoint') return { ifindex: fx.ifindex[iface] };
  if (hook === 'to_endpoint') return { ifindex: fx.ifindex[iface], ingress: at(ingress) };
  return { ifindex: fx.ifindex.uplink, ingress: at(ingress) };
}

/**
 * The transport header of a packet with no extension header, found on our
 * own (up to two VLAN tags), or null: the tunnel passes below are checked
 * against it where there is one.
 */
function plainPorts(p: Uint8Array): { proto: number; src: number; dst: number; flags: number } | null {
  let off = 12;
  let type = (p[off]! << 8) | p[off + 1]!;
  for (let i = 0; i < 2 && (type === 0x8100 || type === 0x88a8); i++) {
    off += 4;
    type = (p[off]! << 8) | p[off + 1]!;
  }
  const l3 = off + 2;
  const proto = p[l3 + 6];
  const l4 = l3 + 40;
  if ((proto !== 6 && proto !== 17) || p.length < l4 + 4) return null;
  return { proto, src: (p[l4]! << 8) | p[l4 + 1]!, dst: (p[l4 + 2]! << 8) | p[l4 + 3]!, flags: p[l4 + 13] ?? 0 };
}

test.serial('no random or mutated packet crosses a boundary, and the kernel agrees with the model', (t) => {
  let private_passed = 0;
  let tunnel_passed = 0;
  let resolver_passed = 0;
  let tcRuns = 0;
  let refused = 0;
  let dropped = 0;
  fc.assert(
    fc.property(
      fc.oneof({ arbitrary: arbRandom, weight: 4 }, { arbitrary: arbNearAllowed, weight: 4 }, { arbitrary: arbNearTunnel, weight: 4 }, { arbitrary: arbNearResolver, weight: 1 }),
      ([hook, iface, ingressPlace, spec, mutation]) => {
      const packet = mutate(ipv6Packet(spec), mutation);
      const { ifindex, ingress } = place(hook, iface, ingressPlace);
      let seen;
      try {
        seen = observe(fx.dp, hook, packet, ifindex, ingress);
      } catch (err) {
        // The kernel's skb test runner refuses (EINVAL) frames whose ethertype
        // promises an L3 header they are too short for; such frames cannot be
        // run at the TC hooks this way (the XDP runner takes them).
        if (hook !== 'from_fabric' && err instanceof LibbpfError && err.code === 'EINVAL') {
          refused++;
          fc.pre(false);
        }
        throw err;
      }
      const expected = decide(hook, packet, fx.model, ifindex ?? 0, ingress ?? 0);
      if (seen.counted.reason !== expected) {
        throw new Error(`${hook}: kernel said ${seen.counted.reason}, model ${expected}: ${Buffer.from(packet).toString('hex')}`);
      }
      // from_fabric's TC flavour decides alike (where the skb test runner takes the frame).
      if (hook === 'from_fabric') {
        try {
          const tc = observe(fx.dp, hook, packet, fx.ifindex.uplink, undefined, 'tc');
          if (tc.counted.reason !== expected || tc.verdict !== seen.verdict) {
            throw new Error(`from_fabric TC flavour said ${tc.counted.reason} (${tc.verdict}), XDP ${expected} (${seen.verdict}): ${Buffer.from(packet).toString('hex')}`);
          }
          tcRuns++;
        } catch (err) {
          if (!(err instanceof LibbpfError && err.code === 'EINVAL')) throw err;
        }
      }
      if (seen.verdict === 'drop') {
        dropped++;
        return;
      }
      if (isPass(expected) !== (seen.verdict === 'pass')) throw new Error(`${hook}: verdict ${seen.verdict} for ${expected}`);
      // A sealed veth passes nothing, in either direction.
      if ((hook === 'from_endpoint' || hook === 'to_endpoint') && iface === 'sealed') throw new Error(`${hook}: a sealed veth passed ${seen.counted.reason}`);
      if (seen.counted.reason === 'pass_resolver') {
        // The resolver exception, independent of the model: only on a bound veth, only the veth's own
        // address with the resolver's, only from the node's own stack towards the endpoint.
        resolver_passed++;
        const a = addresses(packet);
        const bound = hook === 'from_endpoint' || hook === 'to_endpoint' ? fx.model.ifaces.get(fx.ifindex[iface]) : undefined;
        if (!a || !bound || bound.sealed) throw new Error(`${hook}: pass_resolver off a bound veth`);
        const [own, resolver] = hook === 'from_endpoint' ? [a.src, a.dst] : [a.dst, a.src];
        if (hex(own) !== bound.addr || hex(resolver) !== 'fdaa0000000000000000000000000053') throw new Error(`${hook}: pass_resolver between ${hex(a.src)} and ${hex(a.dst)}`);
        if (hook === 'to_endpoint' && ingressPlace !== 'node') throw new Error(`to_endpoint: the resolver's address passed from ${ingressPlace}`);
        return;
      }
      if (seen.counted.reason === 'pass_tunnel' || seen.counted.reason === 'pass_tunnel_reply') {
        // Tunnels, independent of the model: a gateway member and a tenant member of this region, and the tenant's end is a tunnel's.
        tunnel_passed++;
        const a = addresses(packet)!;
        const fromGateway = seen.counted.reason === 'pass_tunnel';
        const [gw, ep] = fromGateway ? [a.src, a.dst] : [a.dst, a.src];
        const g = fx.model.endpoints.get(hex(gw));
        const e = fx.model.endpoints.get(hex(ep));
        if (!g || g.workspace !== 0 || !e || e.workspace === 0 || !e.i6pn || !g.i6pn || g.region !== R1 || e.region !== R1) throw new Error(`${hook}: ${seen.counted.reason} between ${hex(a.src)} and ${hex(a.dst)}`);
        const l4 = plainPorts(packet);
        if (l4 && !fx.model.tunnels!.has(tunnelKey(hex(ep), l4.proto, fromGateway ? l4.dst : l4.src))) throw new Error(`${hook}: ${seen.counted.reason} to a port no tunnel names`);
        if (l4 && !fromGateway && l4.proto === 6 && (l4.flags & 0x12) === 0x02) throw new Error(`${hook}: a tenant's SYN reached a gateway`);
        return;
      }
      if (seen.counted.reason !== 'pass_private') return;
      // Isolation, independent of the model: both ends live members with i6pn, same workspace and region.
      private_passed++;
      const a = addresses(packet);
      if (!a || !isPrivate(a.src) || !isPrivate(a.dst)) throw new Error(`${hook}: passed as private without two private addresses`);
      const boundHere = (p: Place) => {
        const b = p === 'node' ? undefined : fx.model.ifaces.get(fx.ifindex[p]);
        return !!b && !b.sealed && b.i6pn && b.addr === hex(a.src);
      };
      // to_fabric guards the exit only (from_endpoint decided the policy on the way in; the receiving node decides again).
      if (hook === 'to_fabric') {
        if (!boundHere(ingressPlace)) throw new Error('to_fabric: a private packet left from where its source is not bound');
        return;
      }
      const s = fx.model.endpoints.get(hex(a.src));
      const d = fx.model.endpoints.get(hex(a.dst));
      if (!s || !d || !s.i6pn || !d.i6pn) throw new Error(`${hook}: passed a non-member`);
      if (s.workspace !== d.workspace || s.region !== d.region || s.region !== R1) throw new Error(`${hook}: crossed a boundary`);
      if (s.workspace === 0) throw new Error(`${hook}: a gateway's packet passed as private traffic`);
      if (Buffer.from(a.src).readUInt32BE(2) !== Buffer.from(a.dst).readUInt32BE(2)) throw new Error(`${hook}: workspace bits differ`);
      // Source binding, independent of the model: a private packet leaves by a node exit only from where its source is proven.
      if (hook === 'to_endpoint' && !boundHere(ingressPlace) && !(ingressPlace === 'uplink' && !s.local)) {
        throw new Error(`to_endpoint: a private packet entering at ${ingressPlace} passed with source ${hex(a.src)}`);
      }
    }),
    { numRuns: 4000, maxSkipsPerRun: 1 },
  );
  t.true(resolver_passed > 20, `only ${resolver_passed} DNS packets passed to or from the resolver`);
  t.log(`${private_passed} passed as private, ${tunnel_passed} through tunnels, ${resolver_passed} as DNS with the resolver, ${dropped} dropped, ${refused} refused by the skb test runner; ${tcRuns} from_fabric packets also through its TC flavour`);
  t.true(tcRuns > 500, `only ${tcRuns} from_fabric packets through the TC flavour`);
  // The generator must reach both outcomes, or the property proves little.
  t.true(private_passed > 200, `only ${private_passed} private passes generated`);
  t.true(tunnel_passed > 20, `only ${tunnel_passed} tunnel passes generated`);
  t.true(dropped > 1000, `only ${dropped} drops generated`);
});
