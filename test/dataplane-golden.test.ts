/**
 * Golden packets: a table of described packets, each with the reason the
 * kernel programs must report, run through BPF_PROG_TEST_RUN in enforce and
 * in monitor mode. Each case also checks the reference model, and that exactly
 * one counter (hook, verdict, reason) moved by one packet and its bytes.
 */
import test from 'ava';
import { ipv4Packet, ipv6, ipv6Offsets, ipv6Packet, rawFrame, truncate, type Ipv6Spec } from './tools/packet.js';
import type { HookName, ReasonName } from '../agent/bpf/dataplane.js';
import { decide, isPass, MAX_EXT_HDRS, type Reason } from '../lib/policy.js';
import { M, NODE_ADDRESS, observe, openFixture, R1, R2, TUNNEL_PORT, W1, type Fixture } from './helpers/golden.js';
import { REASON_NAMES } from '../agent/bpf/abi.generated.js';
import { LibbpfError } from '../agent/bpf/dataplane.js';
import { privateAddress } from './tools/packet.js';
import { runPacket } from './tools/run-packet.js';
import { RESOLVER_ADDRESS } from '../lib/address.js';

type Iface = 'local' | 'local2' | 'localNoI6pn' | 'unregistered' | 'uplink' | 'sealed' | 'gateway';

interface Case {
  name: string;
  hook: HookName;
  packet: Uint8Array;
  /** which veth the veth hooks run on (default: the local endpoint's) */
  on?: Iface;
  /**
   * where the packet entered the node, for to_endpoint and to_fabric:
   * default the uplink for to_endpoint, the local endpoint's veth for
   * to_fabric; 'node' is the node's own stack (ingress 0)
   */
  from?: Iface | 'node';
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
    c('other workspace (address bits)', p6(privateAddress(0x0a701b9d, R1, 5), dst), 'cross_workspace'),
    c('other region (address bits)', p6(privateAddress(W1, R2, 5), dst), 'cross_region'),
    c('IPv6 ethertype, version 4', p6(src, dst, { version: 4 }), 'malformed'),
    // VLAN
    c('one VLAN tag, allowed', p6(src, dst, { vlans: [10] }), 'pass_private'),
    c('two VLAN tags (802.1ad + 802.1Q), allowed', p6(src, dst, { vlans: [{ id: 5, tpid: 0x88a8 }, 10] }), 'pass_private'),
    c('two 802.1Q tags, allowed', p6(src, dst, { vlans: [5, 10] }), 'pass_private'),
    c('three VLAN tags', p6(src, dst, { vlans: [1, 2, 3] }), 'vlan_depth'),
    c('one VLAN tag hiding another workspace', p6(privateAddress(0x0a701b9d, R1, 5), dst, { vlans: [10] }), 'cross_workspace'),
    c('two VLAN tags hiding another region', p6(privateAddress(W1, R2, 5), dst, { vlans: [1, 2] }), 'cross_region'),
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

const icmpError = (type: number, quoted: Uint8Array) => ({
  proto: 'icmpv6' as const,
  icmpType: type,
  body: Uint8Array.from([...new Uint8Array(4), ...quoted]),
});
/** The IPv6 header (and UDP) of a packet `src` sent, as an ICMPv6 error quotes it. */
const quote = (src: Uint8Array | string, dst: Uint8Array | string) => ipv6({ src, dst });
const ICMP_PTB = 2;
const echo = { proto: 'icmpv6' as const, icmpType: 128 };
const mld2 = { proto: 'icmpv6' as const, icmpType: 143 };
const na = { proto: 'icmpv6' as const, icmpType: 136 };
const ra = { proto: 'icmpv6' as const, icmpType: 134 };
const rs = { proto: 'icmpv6' as const, icmpType: 133 };
const ROUTER = '2001:db8::1';

/** What is not private traffic, at each hook: not ours at the uplink, almost nothing on a veth. */
function nonPrivateCases(): Case[] {
  const per = (name: string, packet: Uint8Array, expect: Partial<Record<HookName, Reason>>): Case[] =>
    (Object.entries(expect) as Array<[HookName, Reason]>).map(([hook, e]) => ({ name, hook, packet, expect: e }));
  const ipv4 = ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2' });
  return [
    ...per('IPv4', ipv4, { from_fabric: 'pass_not_private', to_fabric: 'pass_not_private', from_endpoint: 'non_private', to_endpoint: 'non_private' }),
    ...per('ARP', rawFrame({ etherType: 0x0806, payload: new Uint8Array(28) }), { from_fabric: 'pass_not_private', to_fabric: 'pass_not_private', from_endpoint: 'non_private', to_endpoint: 'non_private' }),
    ...per('IPv4 behind two VLAN tags', ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2', vlans: [1, 2] }), { from_fabric: 'pass_not_private', to_fabric: 'pass_not_private', from_endpoint: 'non_private', to_endpoint: 'non_private' }),
    ...per('IPv4 behind three VLAN tags', ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2', vlans: [1, 2, 3] }), { from_fabric: 'vlan_depth', to_fabric: 'vlan_depth', from_endpoint: 'vlan_depth', to_endpoint: 'vlan_depth' }),
    ...per('public IPv6', p6(PUBLIC_A, PUBLIC_B), { from_fabric: 'pass_not_private', to_fabric: 'pass_not_private', from_endpoint: 'non_private', to_endpoint: 'non_private' }),
    ...per('public IPv6 with a routing header', p6(PUBLIC_A, PUBLIC_B, { ext: [{ type: 'routing' }] }), { from_fabric: 'pass_not_private', to_fabric: 'pass_not_private', from_endpoint: 'routing_header', to_endpoint: 'routing_header' }),
    ...per('NDP between link-local addresses', p6('fe80::1', 'ff02::1:ff00:a', { l4: ns }), { from_fabric: 'pass_not_private', to_fabric: 'pass_not_private', from_endpoint: 'pass_link_scope', to_endpoint: 'pass_link_scope' }),
    ...per('DAD: NS from the unspecified address', p6('::', 'ff02::1:ff00:a', { l4: ns }), { from_fabric: 'pass_not_private', from_endpoint: 'pass_link_scope', to_endpoint: 'pass_link_scope' }),
    ...per('MLDv2 report behind hop-by-hop (router alert)', p6('fe80::2', 'ff02::16', { ext: [{ type: 'hop-by-hop' }], l4: mld2 }), { from_fabric: 'pass_not_private', from_endpoint: 'pass_link_scope', to_endpoint: 'pass_link_scope' }),
    ...per('router solicitation', p6('fe80::2', 'ff02::2', { l4: rs }), { from_endpoint: 'pass_link_scope', to_endpoint: 'non_private' }),
    ...per('router advertisement', p6('fe80::1', 'ff02::1', { l4: ra }), { from_endpoint: 'non_private', to_endpoint: 'pass_link_scope' }),
    ...per('ping between link-local addresses (the node itself)', p6('fe80::2', 'fe80::1', { l4: echo }), { from_fabric: 'pass_not_private', from_endpoint: 'non_private', to_endpoint: 'non_private' }),
    ...per('TCP to the node\'s link-local address (its metrics port)', p6('fe80::2', 'fe80::1', { l4: { proto: 'tcp', dstPort: 9465 } }), { from_endpoint: 'non_private', to_endpoint: 'non_private' }),
    ...per('UDP to link-scope multicast', p6('fe80::2', 'ff02::1'), { from_endpoint: 'non_private', to_endpoint: 'non_private' }),
    ...per('UDP from a private address to link-scope multicast', p6(M.local, 'ff02::1'), { from_fabric: 'outside', to_fabric: 'outside', from_endpoint: 'outside', to_endpoint: 'outside' }),
    ...per('public source to a private address', p6(PUBLIC_A, M.local), { from_fabric: 'outside', to_fabric: 'outside', to_endpoint: 'outside' }),
    ...per('private source to a public address', p6(M.local, PUBLIC_A), { from_fabric: 'outside', to_fabric: 'outside', from_endpoint: 'outside' }),
    ...per('global multicast with a private source', p6(M.local, 'ff0e::1', { l4: ns }), { from_fabric: 'outside', to_fabric: 'outside', from_endpoint: 'outside' }),
    // ICMPv6 errors from routers (path-MTU discovery)
    ...per('packet too big from a router, about a packet the endpoint sent', p6(ROUTER, M.local, { l4: icmpError(ICMP_PTB, quote(M.local, PUBLIC_B)) }), { from_fabric: 'pass_icmp_error', to_endpoint: 'pass_icmp_error' }),
    ...per('time exceeded from a router, about a packet the endpoint sent to a peer', p6(ROUTER, M.local, { l4: icmpError(3, quote(M.local, M.remote)) }), { from_fabric: 'pass_icmp_error', to_endpoint: 'pass_icmp_error' }),
    ...per('packet too big about a packet someone else sent', p6(ROUTER, M.local, { l4: icmpError(ICMP_PTB, quote(M.local2, PUBLIC_B)) }), { from_fabric: 'outside', to_endpoint: 'outside' }),
    ...per('packet too big whose quoted header is cut short', p6(ROUTER, M.local, { l4: icmpError(ICMP_PTB, quote(M.local, PUBLIC_B).subarray(0, 32)) }), { from_fabric: 'outside', to_endpoint: 'outside' }),
    ...per('an echo reply is not an error', p6(ROUTER, M.local, { l4: { proto: 'icmpv6', icmpType: 129 } }), { from_fabric: 'outside', to_endpoint: 'outside' }),
  ];
}

const udp53 = { proto: 'udp' as const, dstPort: 53 };
const tcp53 = { proto: 'tcp' as const, dstPort: 53 };
const fromUdp53 = { proto: 'udp' as const, srcPort: 53, dstPort: 40000 };
const fromTcp53 = { proto: 'tcp' as const, srcPort: 53, dstPort: 40000 };

/** A case at one hook, on a veth (`on`), entered from a place (`from`). */
const caseAt = (hook: HookName, name: string, packet: Uint8Array, expect: Reason, on?: Case['on'], from?: Case['from']): Case => ({
  hook,
  name,
  packet,
  expect,
  ...(on ? { on } : {}),
  ...(from ? { from } : {}),
});

/** DNS with the node's resolver (lib/address RESOLVER_ADDRESS, the C header's fdaa::53): its own verdicts, nothing else to it. */
function resolverCases(): Case[] {
  const R = RESOLVER_ADDRESS;
  const c = (hook: HookName, name: string, ...rest: [Uint8Array, Reason, Case['on']?, Case['from']?]): Case => caseAt(hook, `resolver: ${name}`, ...rest);
  const fe = 'from_endpoint';
  const te = 'to_endpoint';
  return [
    c(fe, 'a query over UDP', p6(M.local, R, { l4: udp53 }), 'pass_resolver'),
    c(fe, 'a query over TCP', p6(M.local, R, { l4: tcp53 }), 'pass_resolver'),
    c(fe, 'a query from the second endpoint', p6(M.local2, R, { l4: udp53 }), 'pass_resolver', 'local2'),
    c(fe, 'a query from the endpoint without i6pn (answered REFUSED)', p6(M.localNoI6pn, R, { l4: udp53 }), 'pass_resolver', 'localNoI6pn'),
    c(fe, 'a query behind destination options', p6(M.local, R, { ext: [{ type: 'dest-opts' }], l4: udp53 }), 'pass_resolver'),
    c(fe, 'a query under a neighbour\'s address', p6(M.local2, R, { l4: udp53 }), 'spoofed_source'),
    c(fe, 'a query under another workspace\'s address', p6(M.otherWorkspaceLocal, R, { l4: udp53 }), 'spoofed_source'),
    c(fe, 'a query from a sealed veth', p6(M.sealed, R, { l4: udp53 }), 'sealed', 'sealed'),
    c(fe, 'a query on an unregistered veth', p6(M.local, R, { l4: udp53 }), 'unknown_iface', 'unregistered'),
    c(fe, 'another UDP port', p6(M.local, R, { l4: { proto: 'udp', dstPort: 5353 } }), 'resolver_not_dns'),
    c(fe, 'another TCP port (ssh)', p6(M.local, R, { l4: { proto: 'tcp', dstPort: 22 } }), 'resolver_not_dns'),
    c(fe, 'source port 53 to another port', p6(M.local, R, { l4: { proto: 'udp', srcPort: 53, dstPort: 9465 } }), 'resolver_not_dns'),
    c(fe, 'a ping', p6(M.local, R, { l4: echo }), 'resolver_not_dns'),
    c(fe, 'a later fragment (no ports to show)', p6(M.local, R, { ext: [{ type: 'fragment', offset: 185 }], l4: { proto: 'raw', protocol: 17, payload: new Uint8Array(16) } }), 'resolver_not_dns'),
    c(fe, 'a query behind a routing header', p6(M.local, R, { ext: [{ type: 'routing' }], l4: udp53 }), 'routing_header'),
    c(fe, 'UDP header cut short', truncate(p6(M.local, R, { l4: udp53 }), 14 + 40 + 3), 'resolver_not_dns'),
    c(fe, 'the resolver\'s address forged as a source, to a peer (workspace 0: the tunnel rules, region 0)', p6(R, M.remote, { l4: fromUdp53 }), 'cross_region'),
    c(te, 'an answer over UDP, from the node', p6(R, M.local, { l4: fromUdp53 }), 'pass_resolver', undefined, 'node'),
    c(te, 'an answer over TCP, from the node', p6(R, M.local, { l4: fromTcp53 }), 'pass_resolver', undefined, 'node'),
    c(te, 'an answer to the endpoint without i6pn', p6(R, M.localNoI6pn, { l4: fromUdp53 }), 'pass_resolver', 'localNoI6pn', 'node'),
    c(te, 'its address from the uplink', p6(R, M.local, { l4: fromUdp53 }), 'unbound_source'),
    c(te, 'its address from another endpoint\'s veth', p6(R, M.local, { l4: fromUdp53 }), 'unbound_source', undefined, 'local2'),
    c(te, 'an answer to another endpoint\'s address', p6(R, M.local2, { l4: fromUdp53 }), 'not_local', undefined, 'node'),
    c(te, 'from another port of the node', p6(R, M.local, { l4: { proto: 'tcp', srcPort: 22 } }), 'resolver_not_dns', undefined, 'node'),
    c(te, 'an ICMPv6 error from it', p6(R, M.local, { l4: icmpError(1, quote(M.local, R)) }), 'resolver_not_dns', undefined, 'node'),
    c(te, 'an answer to a sealed veth', p6(R, M.sealed, { l4: fromUdp53 }), 'sealed', 'sealed', 'node'),
    // The resolver's address is in workspace 0: at the uplink the tunnel rules take it, and it is in region 0.
    c('from_fabric', 'a query from a remote member', p6(M.remote, R, { l4: udp53 }), 'cross_region'),
    c('from_fabric', 'a query from workspace 0 of the fabric', p6('fdaa::1', R, { l4: udp53 }), 'not_local'),
    c('from_fabric', 'its address from the fabric, to a local endpoint', p6(R, M.local, { l4: fromUdp53 }), 'cross_region'),
    c('to_fabric', 'its address leaving the node', p6(R, M.remote, { l4: fromUdp53 }), 'unbound_source', undefined, 'node'),
  ];
}

const SYN = 0x02;
const ACK = 0x10;
/** TCP from `sport` to `dport` with these flags. */
const tcp = (srcPort: number, dstPort: number, flags = ACK) => ({ l4: { proto: 'tcp' as const, srcPort, dstPort, flags } });

/**
 * Tunnels: a gateway (workspace 0) reaches exactly the tunneled (address,
 * TCP, port) of the fixture (TUNNELS), and a tenant reaches a gateway only
 * as that port's reply. The rest of the policy (binding, members) holds.
 */
function tunnelCases(): Case[] {
  const c = (hook: HookName, name: string, packet: Uint8Array, expect: Reason, on?: Iface, from?: Case['from']): Case => ({
    hook,
    name: `tunnel: ${name}`,
    packet,
    expect,
    ...(on ? { on } : {}),
    ...(from ? { from } : {}),
  });
  const P = TUNNEL_PORT;
  const ff = 'from_fabric';
  const fe = 'from_endpoint';
  const te = 'to_endpoint';
  const tf = 'to_fabric';
  return [
    // the gateway's own veth (from_endpoint): what it may send
    c(fe, 'gateway opens a connection to a tunneled port', p6(M.gateway, M.remote, tcp(40000, P, SYN)), 'pass_tunnel', 'gateway'),
    c(fe, 'gateway sends data on it', p6(M.gateway, M.remote, tcp(40000, P, ACK)), 'pass_tunnel', 'gateway'),
    c(fe, 'gateway to the tunneled port of an endpoint on its own node', p6(M.gateway, M.local, tcp(40000, P, SYN)), 'pass_tunnel', 'gateway'),
    c(fe, 'gateway to a tunneled port of another workspace', p6(M.gateway, M.otherWorkspace, tcp(40000, 443, SYN)), 'pass_tunnel', 'gateway'),
    c(fe, 'gateway to the same endpoint\'s other port', p6(M.gateway, M.remote, tcp(40000, P + 1, SYN)), 'not_tunneled', 'gateway'),
    c(fe, 'gateway to the tunneled port over UDP', p6(M.gateway, M.remote, { l4: { proto: 'udp', srcPort: 40000, dstPort: P } }), 'not_tunneled', 'gateway'),
    c(fe, 'gateway to an endpoint without a tunnel', p6(M.gateway, M.local2, tcp(40000, P, SYN)), 'not_tunneled', 'gateway'),
    c(fe, 'gateway to another workspace\'s untunneled port', p6(M.gateway, M.otherWorkspace, tcp(40000, P, SYN)), 'not_tunneled', 'gateway'),
    c(fe, 'gateway pings a tunneled endpoint', p6(M.gateway, M.remote, { l4: echo }), 'not_tunneled', 'gateway'),
    c(fe, 'gateway sends a later fragment to a tunneled endpoint', p6(M.gateway, M.remote, { ext: [{ type: 'fragment', offset: 185 }], l4: { proto: 'raw', protocol: 6, payload: new Uint8Array(20) } }), 'not_tunneled', 'gateway'),
    c(fe, 'gateway sends a TCP header cut short', truncate(p6(M.gateway, M.remote, tcp(40000, P, SYN)), 14 + 40 + 12), 'not_tunneled', 'gateway'),
    c(fe, 'gateway to another gateway', p6(M.gateway, M.remoteGateway, tcp(40000, P, SYN)), 'not_tunneled', 'gateway'),
    c(fe, 'gateway to a tunneled endpoint without i6pn', p6(M.gateway, M.remoteNoI6pn, tcp(40000, P, SYN)), 'no_i6pn', 'gateway'),
    c(fe, 'gateway to another region', p6(M.gateway, privateAddress(W1, R2, 0xb), tcp(40000, P, SYN)), 'cross_region', 'gateway'),
    c(fe, 'gateway to an unknown address', p6(M.gateway, M.unknown, tcp(40000, P, SYN)), 'unknown_dest', 'gateway'),
    c(fe, 'gateway hides a routing header', p6(M.gateway, M.remote, { ext: [{ type: 'routing' }], ...tcp(40000, P, SYN) }), 'routing_header', 'gateway'),
    c(fe, 'gateway\'s veth forging another gateway\'s address', p6(M.remoteGateway, M.remote, tcp(40000, P, SYN)), 'spoofed_source', 'gateway'),
    c(fe, 'a tenant forging the gateway\'s address', p6(M.gateway, M.remote, tcp(40000, P, SYN)), 'spoofed_source'),
    // a tenant's veth (from_endpoint): only its tunneled port's replies reach a gateway
    c(fe, 'tunneled port answers the gateway (SYN-ACK)', p6(M.local, M.remoteGateway, tcp(P, 40000, SYN | ACK)), 'pass_tunnel_reply'),
    c(fe, 'tunneled port sends data to the gateway', p6(M.local, M.remoteGateway, tcp(P, 40000, ACK)), 'pass_tunnel_reply'),
    c(fe, 'tunneled port answers the gateway on its node', p6(M.local, M.gateway, tcp(P, 40000, ACK)), 'pass_tunnel_reply'),
    c(fe, 'tunneled port opens a connection to the gateway (SYN)', p6(M.local, M.remoteGateway, tcp(P, 80, SYN)), 'to_gateway'),
    c(fe, 'another port to the gateway', p6(M.local, M.remoteGateway, tcp(P + 1, 40000, ACK)), 'to_gateway'),
    c(fe, 'the tunneled port over UDP to the gateway', p6(M.local, M.remoteGateway, { l4: { proto: 'udp', srcPort: P, dstPort: 40000 } }), 'to_gateway'),
    c(fe, 'ping to the gateway', p6(M.local, M.remoteGateway, { l4: echo }), 'to_gateway'),
    c(fe, 'an endpoint without a tunnel to the gateway', p6(M.local2, M.remoteGateway, tcp(P, 40000, ACK)), 'to_gateway', 'local2'),
    c(fe, 'to an address of workspace 0 that is no member', p6(M.local, M.unknownGateway, tcp(P, 40000, ACK)), 'unknown_dest'),
    c(fe, 'to another region\'s gateway', p6(M.local, M.otherRegionGateway, tcp(P, 40000, ACK)), 'cross_region'),
    // from the fabric
    c(ff, 'a remote gateway to a tunneled port here', p6(M.remoteGateway, M.local, tcp(40000, P, SYN)), 'pass_tunnel'),
    c(ff, 'a remote gateway to another port here', p6(M.remoteGateway, M.local, tcp(40000, 22, SYN)), 'not_tunneled'),
    c(ff, 'a remote gateway to an untunneled endpoint here', p6(M.remoteGateway, M.local2, tcp(40000, P, SYN)), 'not_tunneled'),
    c(ff, 'a remote gateway to a tunneled endpoint without i6pn', p6(M.remoteGateway, M.localNoI6pn, tcp(40000, P, SYN)), 'no_i6pn'),
    c(ff, 'a reply from a remote tunneled port to the gateway here', p6(M.remote, M.gateway, tcp(P, 40000, SYN | ACK)), 'pass_tunnel_reply'),
    c(ff, 'a remote tunneled port calls the gateway here', p6(M.remote, M.gateway, tcp(P, 40000, SYN)), 'to_gateway'),
    c(ff, 'a remote endpoint\'s other port to the gateway here', p6(M.remote, M.gateway, tcp(9999, 40000, ACK)), 'to_gateway'),
    c(ff, 'the local gateway\'s address arriving from the fabric', p6(M.gateway, M.local, tcp(40000, P, SYN)), 'spoofed_source'),
    c(ff, 'an unknown workspace-0 source', p6(M.unknownGateway, M.local, tcp(40000, P, SYN)), 'unknown_source'),
    c(ff, 'to a gateway on another node', p6(M.remote, M.remoteGateway, tcp(P, 40000, ACK)), 'not_local'),
    c(ff, 'from another region\'s gateway', p6(M.otherRegionGateway, M.local, tcp(40000, P, SYN)), 'cross_region'),
    // to a tenant's veth (to_endpoint)
    c(te, 'from a remote gateway, through the uplink', p6(M.remoteGateway, M.local, tcp(40000, P, ACK)), 'pass_tunnel'),
    c(te, 'from a remote gateway, to another port', p6(M.remoteGateway, M.local, tcp(40000, 9000, ACK)), 'not_tunneled'),
    c(te, 'from the gateway here, through its own veth', p6(M.gateway, M.local, tcp(40000, P, SYN)), 'pass_tunnel', undefined, 'gateway'),
    c(te, 'the gateway\'s address from an unregistered veth', p6(M.gateway, M.local, tcp(40000, P, SYN)), 'unbound_source', undefined, 'unregistered'),
    c(te, 'the gateway\'s address from a tenant\'s veth', p6(M.gateway, M.local, tcp(40000, P, SYN)), 'unbound_source', undefined, 'local2'),
    c(te, 'a remote gateway\'s address from the node itself', p6(M.remoteGateway, M.local, tcp(40000, P, SYN)), 'unbound_source', undefined, 'node'),
    // to the gateway's veth (to_endpoint)
    c(te, 'a remote tunneled port\'s reply to the gateway', p6(M.remote, M.gateway, tcp(P, 40000, ACK)), 'pass_tunnel_reply', 'gateway'),
    c(te, 'a local tunneled port\'s reply, through its own veth', p6(M.local, M.gateway, tcp(P, 40000, ACK)), 'pass_tunnel_reply', 'gateway', 'local'),
    c(te, 'a remote tunneled port calls the gateway', p6(M.remote, M.gateway, tcp(P, 40000, SYN)), 'to_gateway', 'gateway'),
    c(te, 'a tenant reaches the gateway on another port', p6(M.local2, M.gateway, tcp(P, 40000, ACK)), 'to_gateway', 'gateway', 'local2'),
    // the uplink's exit checks the binding only
    c(tf, 'the gateway\'s packet leaves from its own veth', p6(M.gateway, M.remote, tcp(40000, P, SYN)), 'pass_private', undefined, 'gateway'),
    c(tf, 'the gateway\'s address leaves from a tenant\'s veth', p6(M.gateway, M.remote, tcp(40000, P, SYN)), 'unbound_source', undefined, 'local2'),
  ];
}

function hookCases(): Case[] {
  const c = caseAt;
  const ff = 'from_fabric';
  const fe = 'from_endpoint';
  const te = 'to_endpoint';
  const tf = 'to_fabric';
  return [
    ...nonPrivateCases(),
    ...resolverCases(),
    ...tunnelCases(),
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
    c(fe, 'internet egress from a public address', p6(PUBLIC_A, PUBLIC_B), 'non_private'),
    c(fe, 'anything on an unregistered veth', p6(PUBLIC_A, PUBLIC_B), 'unknown_iface', 'unregistered'),
    c(fe, 'own traffic to a public address (forwarding off)', p6(M.local, PUBLIC_A), 'outside'),
    c(fe, 'NDP from the own private address to solicited-node multicast', p6(M.local, 'ff02::1:ff00:a', { l4: ns }), 'pass_link_scope'),
    c(fe, 'NA from the own private address to the node', p6(M.local, 'fe80::1', { l4: na }), 'pass_link_scope'),
    c(fe, 'NDP forging a neighbour\'s address', p6(M.local2, 'ff02::1:ff00:a', { l4: ns }), 'spoofed_source'),
    c(fe, 'NDP forging another workspace\'s address to the node', p6(M.otherWorkspace, 'fe80::1', { l4: ns }), 'spoofed_source'),
    c(fe, 'ping to all nodes forging another workspace\'s address', p6(M.otherWorkspace, 'ff02::1', { l4: echo }), 'spoofed_source'),
    c(fe, 'ping to the node\'s link-local address from the own address', p6(M.local, 'fe80::1', { l4: echo }), 'outside'),
    c(fe, 'a sealed veth sends to a peer', p6(M.sealed, M.remote), 'sealed', 'sealed'),
    c(fe, 'a sealed veth sends NDP', p6('fe80::2', 'ff02::1:ff00:a', { l4: ns }), 'sealed', 'sealed'),
    c(fe, 'a sealed veth sends IPv4', ipv4Packet({ src: '192.0.2.1', dst: '192.0.2.2' }), 'sealed', 'sealed'),
    c(fe, 'to a member whose workspace disagrees with its bits', p6(M.local, M.inconsistent), 'cross_workspace'),

    ...commonCases(te, M.remote, M.local),
    c(te, 'from a local endpoint, through its own veth', p6(M.local2, M.local), 'pass_private', undefined, 'local2'),
    c(te, 'a local endpoint\'s address from the uplink', p6(M.local2, M.local), 'spoofed_source'),
    c(te, 'a local endpoint\'s address from an unregistered veth', p6(M.local2, M.local), 'unbound_source', undefined, 'unregistered'),
    c(te, 'a local endpoint\'s address from a sealed veth', p6(M.local2, M.local), 'unbound_source', undefined, 'sealed'),
    c(te, 'the sealed endpoint\'s own address from its sealed veth', p6(M.sealed, M.local), 'unknown_source', undefined, 'sealed'),
    c(te, 'an unknown address of the workspace from an unregistered veth', p6(M.unknown, M.local), 'unknown_source', undefined, 'unregistered'),
    c(te, 'a local endpoint\'s address from the node itself', p6(M.local2, M.local), 'unbound_source', undefined, 'node'),
    c(te, 'a remote member\'s address from a local veth', p6(M.remote, M.local), 'unbound_source', undefined, 'local2'),
    c(te, 'a remote member\'s address from an unregistered veth', p6(M.remote, M.local), 'unbound_source', undefined, 'unregistered'),
    c(te, 'its own address, from the uplink', p6(M.local, M.local), 'spoofed_source'),
    c(te, 'its own address, hairpinned through its own veth', p6(M.local, M.local), 'pass_private', undefined, 'local'),
    c(te, 'NDP from the node to the endpoint', p6('fe80::1', M.local, { l4: ns }), 'pass_link_scope', undefined, 'node'),
    c(te, 'NA from the node to the endpoint', p6('fe80::1', M.local, { l4: na }), 'pass_link_scope', undefined, 'node'),
    c(te, 'NA from the node to another endpoint\'s address', p6('fe80::1', M.local2, { l4: na }), 'not_local', undefined, 'node'),
    c(te, 'ping from the node\'s link-local address', p6('fe80::1', M.local, { l4: echo }), 'outside', undefined, 'node'),
    c(te, 'reflected: NDP with a neighbour\'s private source to solicited-node multicast', p6(M.local2, 'ff02::1:ff00:a', { l4: ns }), 'outside', undefined, 'node'),
    c(te, 'packet too big about the endpoint\'s packet, to another endpoint\'s address', p6(ROUTER, M.local2, { l4: icmpError(ICMP_PTB, quote(M.local2, PUBLIC_B)) }), 'not_local', undefined, 'node'),
    c(te, 'to a sealed veth, from a peer', p6(M.remote, M.sealed), 'sealed', 'sealed'),
    c(te, 'to a sealed veth, NDP from the node', p6('fe80::1', 'ff02::1:ff00:5e', { l4: ns }), 'sealed', 'sealed', 'node'),
    c(te, 'other workspace member (address bits)', p6(M.otherWorkspace, M.local), 'cross_workspace'),
    c(te, 'to another endpoint than the veth serves', p6(M.remote, M.local2), 'not_local'),
    c(te, 'unknown source', p6(M.unknown, M.local), 'unknown_source'),
    c(te, 'source without i6pn', p6(M.remoteNoI6pn, M.local), 'no_i6pn'),
    c(te, 'to the endpoint without i6pn', p6(M.remote, M.localNoI6pn), 'no_i6pn', 'localNoI6pn'),
    c(te, 'on an interface the agent did not register', p6(M.remote, M.local), 'unknown_iface', 'unregistered'),
    c(te, 'from a member whose workspace disagrees with its bits', p6(M.inconsistent, M.local), 'cross_workspace'),

    c(ff, 'packet too big about a packet of a remote endpoint', p6(ROUTER, M.remote, { l4: icmpError(ICMP_PTB, quote(M.remote, PUBLIC_B)) }), 'not_local'),
    c(ff, 'packet too big about a packet of an unknown address', p6(ROUTER, M.unknown, { l4: icmpError(ICMP_PTB, quote(M.unknown, PUBLIC_B)) }), 'unknown_dest'),
    c(ff, 'NDP from a private address arriving from the fabric', p6(M.remote, 'ff02::1:ff00:a', { l4: ns }), 'outside'),

    c(tf, 'from the veth bound to its source', p6(M.local, M.remote), 'pass_private'),
    c(tf, 'from the second local veth', p6(M.local2, M.remote), 'pass_private', undefined, 'local2'),
    c(tf, 'from a veth bound to another address', p6(M.local, M.remote), 'unbound_source', undefined, 'local2'),
    c(tf, 'from an unregistered veth', p6(M.local, M.remote), 'unbound_source', undefined, 'unregistered'),
    c(tf, 'from a sealed veth, with its own former address', p6(M.sealed, M.remote), 'unbound_source', undefined, 'sealed'),
    c(tf, 'from the node itself', p6(M.local, M.remote), 'unbound_source', undefined, 'node'),
    c(tf, 'from the fabric, forwarded back out', p6(M.remote, M.otherWorkspace), 'unbound_source', undefined, 'uplink'),
    c(tf, 'a forged remote source from an unregistered veth', p6(M.otherWorkspace, M.remote), 'unbound_source', undefined, 'unregistered'),
    c(tf, 'packet too big from the node, about a remote endpoint\'s packet', p6(ROUTER, M.remote, { l4: icmpError(ICMP_PTB, quote(M.remote, M.local)) }), 'pass_icmp_error', undefined, 'node'),
    c(tf, 'from the veth of the endpoint without i6pn', p6(M.localNoI6pn, M.remote), 'no_i6pn', undefined, 'localNoI6pn'),
    // (behind a VLAN tag: the kernel's skb test run refuses an IPv6 frame shorter than its header)
    c(tf, 'truncated private packet', truncate(p6(M.local, M.remote, { vlans: [7] }), 44), 'truncated'),
  ];
}

let fx: Fixture;
test.before(async () => {
  fx = await openFixture('g');
});
test.after.always(() => fx?.close());

const ifindexFor = (k: Case['on']) => fx.ifindex[k ?? 'local'];

/** The interface a hook runs on, and where the packet entered the node. */
function placeOf(c: Case): { ifindex: number | undefined; ingress: number | undefined } {
  const where = (k: Iface | 'node') => (k === 'node' ? 0 : fx.ifindex[k]);
  switch (c.hook) {
    case 'from_fabric':
      return { ifindex: undefined, ingress: undefined };
    case 'from_endpoint':
      return { ifindex: ifindexFor(c.on), ingress: undefined };
    case 'to_endpoint':
      return { ifindex: ifindexFor(c.on), ingress: where(c.from ?? 'uplink') };
    case 'to_fabric':
      return { ifindex: fx.ifindex.uplink, ingress: where(c.from ?? 'local') };
  }
}

function check(t: import('ava').ExecutionContext, c: Case, mode: 'enforce' | 'monitor') {
  const { ifindex, ingress } = placeOf(c);
  const label = `${c.hook}: ${c.name}`;
  t.is(decide(c.hook, c.packet, fx.model, ifindex ?? 0, ingress ?? 0), c.expect, `model disagrees: ${label}`);
  const seen = observe(fx.dp, c.hook, c.packet, ifindex, ingress);
  checkSeen(t, c, mode, seen, label);
  // from_fabric's TC flavour (an uplink where XDP costs more) must decide alike.
  if (c.hook === 'from_fabric') {
    let tc;
    try {
      tc = observe(fx.dp, c.hook, c.packet, fx.ifindex.uplink, undefined, 'tc');
    } catch (err) {
      // The skb test runner refuses (EINVAL) a frame too short for the L3 header its ethertype promises.
      if (err instanceof LibbpfError && err.code === 'EINVAL' && c.expect === 'truncated') {
        tcRefused++;
        return;
      }
      throw err;
    }
    checkSeen(t, c, mode, tc, `${label} (TC flavour)`);
  }
}

let tcRefused = 0;

function checkSeen(t: import('ava').ExecutionContext, c: Case, mode: 'enforce' | 'monitor', seen: ReturnType<typeof observe>, label: string) {
  const passes = isPass(c.expect);
  const verdict = passes ? 'pass' : mode === 'enforce' ? 'drop' : 'would_drop';
  t.is(seen.counted.reason, c.expect as ReasonName, `reason: ${label}`);
  t.is(seen.counted.hook, c.hook, `hook: ${label}`);
  t.is(seen.counted.verdict, verdict, `counted verdict: ${label}`);
  t.is(seen.verdict, passes || mode === 'monitor' ? 'pass' : 'drop', `action: ${label}`);
  // XDP counts the frame; TC counts skb->len, which is the frame too.
  t.is(seen.counted.bytes, BigInt(c.packet.length), `bytes: ${label}`);
}

const cases = hookCases();
/** Run with --forward-non-private (a test of its own below). */
const forwardCases: Case[] = [
  { hook: 'from_endpoint', on: 'local2', name: 'own address to a public one', packet: p6(M.local2, PUBLIC_A, { l4: { proto: 'tcp', dstPort: 443 } }), expect: 'pass_forward' },
  { hook: 'from_endpoint', on: 'local2', name: 'own address to the node\'s own address', packet: p6(M.local2, NODE_ADDRESS, { l4: { proto: 'tcp', dstPort: 9465 } }), expect: 'to_node' },
  { hook: 'from_endpoint', on: 'local2', name: 'a neighbour\'s address to a public one', packet: p6(M.local, PUBLIC_A), expect: 'spoofed_source' },
  { hook: 'from_endpoint', on: 'local2', name: 'a public source', packet: p6(PUBLIC_A, PUBLIC_B), expect: 'non_private' },
  { hook: 'from_endpoint', on: 'local2', name: 'own address to the node\'s link-local one', packet: p6(M.local2, 'fe80::1', { l4: echo }), expect: 'outside' },
  { hook: 'to_endpoint', on: 'local2', from: 'uplink', name: 'a reply from a public address', packet: p6(PUBLIC_A, M.local2, { l4: { proto: 'tcp', srcPort: 443 } }), expect: 'pass_forward' },
  { hook: 'to_endpoint', on: 'local2', from: 'node', name: 'from the node\'s link-local address', packet: p6('fe80::1', M.local2, { l4: echo }), expect: 'outside' },
  { hook: 'from_fabric', name: 'still nothing reaches a private address from outside', packet: p6(PUBLIC_A, M.local2), expect: 'outside' },
  { hook: 'to_fabric', name: 'still no private source leaves the node', packet: p6(M.local2, PUBLIC_A), expect: 'outside' },
];


test.serial('every reason has a golden case that reaches it at some hook', (t) => {
  const reached = new Set([...cases, ...forwardCases].map((c) => c.expect));
  const all: Reason[] = [
    'pass_private', 'pass_not_private', 'truncated', 'malformed', 'vlan_depth', 'ext_hdr_limit',
    'ext_hdr_denied', 'routing_header', 'outside', 'cross_workspace', 'cross_region', 'not_local',
    'unknown_iface', 'spoofed_source', 'no_i6pn', 'unknown_source', 'unknown_dest', 'sealed',
    'unbound_source', 'non_private', 'to_node', 'pass_link_scope', 'pass_icmp_error', 'pass_forward',
    'pass_resolver', 'resolver_not_dns',
    'pass_tunnel', 'pass_tunnel_reply', 'not_tunneled', 'to_gateway',
  ];
  t.deepEqual([...all].sort(), [...REASON_NAMES].sort(), 'the list above is every reason of the ABI');
  t.deepEqual(all.filter((r) => !reached.has(r)), []);
  t.true(cases.length > 150);
});

for (const mode of ['enforce', 'monitor'] as const) {
  test.serial(`golden packets, ${mode} mode`, (t) => {
    fx.dp.setConfig({ node: 7, region: R1, mode, eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
    tcRefused = 0;
    for (const c of cases) check(t, c, mode);
    const fromFabric = cases.filter((c) => c.hook === 'from_fabric').length;
    t.log(`${fromFabric - tcRefused} of ${fromFabric} from_fabric cases also run through the TC flavour (${tcRefused} too short for the skb test runner)`);
    t.true(tcRefused < fromFabric / 10);
  });
}

test.serial('every truncation point of an allowed packet, at every hook', (t) => {
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
  const plans: Array<[HookName, Uint8Array, Uint8Array]> = [
    ['from_fabric', M.remote, M.local],
    ['from_endpoint', M.local, M.remote],
    ['to_endpoint', M.remote, M.local],
    ['to_fabric', M.local, M.remote],
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
      // to_fabric reads only the fixed header: its binding is all it adds to from_endpoint's checks.
      const expect: Reason = cut < (hook === 'to_fabric' ? ipv6Offsets(spec).ipv6 + 40 : l4) ? 'truncated' : 'pass_private';
      check(t, { name: `cut at ${cut} of ${full.length} (l4 at ${l4})`, hook, packet: truncate(full, cut), expect }, 'enforce');
    }
  }
});

test.serial('membership is the truth: a removed member stops passing at once', (t) => {
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
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

test.serial('forwarding a container\'s own non-private traffic: on only when configured, never to the node', (t) => {
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink, forwardNonPrivate: true });
  fx.model.forward = true;
  try {
    for (const c of forwardCases) check(t, c, 'enforce');
  } finally {
    fx.model.forward = false;
    fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
  }
  // The control: the same packets with forwarding off.
  check(t, { ...forwardCases[0]!, expect: 'outside' }, 'enforce');
  check(t, { ...forwardCases[5]!, expect: 'outside' }, 'enforce');
});

test.serial('local fast path: a packet passed for an endpoint bound here leaves by its veth; the same verdicts and counters either way', (t) => {
  const TC_ACT_OK = 0;
  const TC_ACT_REDIRECT = 7;
  const fastCases: Array<Case & { tc?: boolean; deliverTo: number }> = [
    { hook: 'from_endpoint', name: 'to an endpoint of this node', packet: p6(M.local, M.local2), expect: 'pass_private', deliverTo: fx.ifindex.local2 },
    { hook: 'from_endpoint', name: 'to an endpoint of another node', packet: p6(M.local, M.remote), expect: 'pass_private', deliverTo: 0 },
    { hook: 'from_endpoint', name: 'to another workspace, on this node', packet: p6(M.local, M.otherWorkspaceLocal), expect: 'cross_workspace', deliverTo: 0 },
    { hook: 'from_fabric', tc: true, name: 'from the fabric to an endpoint of this node (TC flavour)', packet: p6(M.remote, M.local2), expect: 'pass_private', deliverTo: fx.ifindex.local2 },
    { hook: 'from_fabric', tc: true, name: 'from the fabric to the endpoint without i6pn', packet: p6(M.remote, M.localNoI6pn), expect: 'no_i6pn', deliverTo: 0 },
  ];
  try {
    for (const fast of [false, true]) {
      fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink, localFastPath: fast });
      for (const c of fastCases) {
        const label = `${c.name}, fast path ${fast ? 'on' : 'off'}`;
        const seen = c.tc ? observe(fx.dp, c.hook, c.packet, fx.ifindex.uplink, undefined, 'tc') : observe(fx.dp, c.hook, c.packet, fx.ifindex.local);
        t.is(seen.counted.reason, c.expect as ReasonName, `reason: ${label}`);
        if (!isPass(c.expect)) {
          t.is(seen.verdict, 'drop', label);
          continue;
        }
        t.is(seen.verdict, 'pass', label);
        t.is(seen.retval, fast && c.deliverTo ? TC_ACT_REDIRECT : TC_ACT_OK, `action: ${label}`);
      }
    }
  } finally {
    fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
  }
});

test.serial('drops are sampled into the ring buffer within the per-CPU budget; every other drop is counted as not sampled', (t) => {
  fx.dp.drainDropEvents();
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 2, uplinkIfindex: fx.ifindex.uplink });
  const lost0 = fx.dp.readEventLosses();
  const packet = p6(M.otherWorkspace, M.local);
  for (let i = 0; i < 20; i++) runPacket(fx.dp, 'from_fabric', packet);
  runPacket(fx.dp, 'from_fabric', p6(M.remote, M.local)); // a pass is never an event
  const events = fx.dp.drainDropEvents();
  const lost = fx.dp.readEventLosses();
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
  t.true(events.length >= 2, `got ${events.length} events`);
  t.true(events.length <= 2 * 8, `budget exceeded: ${events.length} events`);
  // Each of the 20 drops is an event or counted past the budget; none is lost to a full ring.
  t.is(BigInt(events.length) + lost.overBudget - lost0.overBudget, 20n);
  t.is(lost.ringFull, lost0.ringFull);
  for (const e of events) {
    t.like(e, { hook: 'from_fabric', reason: 'cross_workspace', verdict: 'drop', ipv6: true, len: packet.length, proto: 17, icmp: null });
    t.deepEqual(Buffer.from(e.src), Buffer.from(M.otherWorkspace));
    t.deepEqual(Buffer.from(e.dst), Buffer.from(M.local));
    t.deepEqual(e.ports, { src: 12345, dst: 7 });
  }
  for (let i = 0; i < 5; i++) runPacket(fx.dp, 'from_fabric', packet);
  t.deepEqual(fx.dp.drainDropEvents(), [], 'events disabled at 0 per second');
});

test.serial('a drop event says what the packet carried: protocol, ports or ICMPv6 type, behind the extension headers the decision walked', (t) => {
  fx.dp.drainDropEvents();
  fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 1000, uplinkIfindex: fx.ifindex.uplink });
  try {
    const cases: Array<[string, HookName, Uint8Array, number | undefined, object]> = [
      ['TCP, dropped on the address bits', 'from_fabric', p6(M.otherWorkspace, M.local, { l4: { proto: 'tcp', srcPort: 40001, dstPort: 443 } }), undefined, { reason: 'cross_workspace', proto: 6, ports: { src: 40001, dst: 443 }, icmp: null }],
      ['ICMPv6 echo', 'from_fabric', p6(M.otherWorkspace, M.local, { l4: { proto: 'icmpv6', icmpType: 128, code: 0 } }), undefined, { reason: 'cross_workspace', proto: 58, ports: null, icmp: { type: 128, code: 0 } }],
      // The decision walked the chain (unknown_dest comes after it): the upper layer behind it.
      ['UDP behind hop-by-hop and destination options', 'from_endpoint', p6(M.local, M.unknown, { ext: [{ type: 'hop-by-hop' }, { type: 'dest-opts' }], l4: { proto: 'udp', srcPort: 5353, dstPort: 53 } }), fx.ifindex.local, { reason: 'unknown_dest', proto: 17, ports: { src: 5353, dst: 53 } }],
      // Dropped on the address bits, before the walk: the first extension header's number, no ports.
      ['UDP behind hop-by-hop, across workspaces', 'from_endpoint', p6(M.local, M.otherWorkspace, { ext: [{ type: 'hop-by-hop' }], l4: { proto: 'udp' } }), fx.ifindex.local, { reason: 'cross_workspace', proto: 0, ports: null }],
      // A chain that cannot be walked: the fixed header's next header, no ports.
      ['a routing header', 'from_fabric', p6(M.remote, M.local, { ext: [{ type: 'routing' }] }), undefined, { reason: 'routing_header', proto: 43, ports: null, icmp: null }],
      ['a later fragment', 'from_fabric', p6(M.otherWorkspace, M.local, { ext: [{ type: 'fragment', offset: 185 }] }), undefined, { reason: 'cross_workspace', proto: 44, ports: null }],
      ['IPv4 on a veth', 'from_endpoint', ipv4Packet({ src: '10.0.0.1', dst: '10.0.0.2' }), fx.ifindex.local, { reason: 'non_private', ipv6: false, proto: null, ports: null, icmp: null }],
    ];
    for (const [what, hook, packet, ifindex, want] of cases) {
      runPacket(fx.dp, hook, packet, ifindex === undefined ? {} : { ifindex });
      const events = fx.dp.drainDropEvents();
      t.is(events.length, 1, what);
      t.like(events[0], { hook, verdict: 'drop', len: packet.length, ...want }, what);
    }
  } finally {
    fx.dp.setConfig({ node: 7, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: fx.ifindex.uplink });
  }
});

test.serial('each program passes the verifier; its processed-instruction count is reported', (t) => {
  const insns = fx.dp.verifiedInstructions();
  for (const hook of ['from_fabric', 'from_fabric_tc', 'from_endpoint', 'to_endpoint', 'to_fabric'] as const) {
    t.true(insns[hook] > 0, `${hook}: ${insns[hook]}`);
    t.log(`${hook}: ${insns[hook]} instructions processed by the verifier`);
  }
  void W1;
});
