/**
 * Shared fixture for the golden-packet and property tests: the i6pn object
 * loaded (unpinned) into the kernel, a small membership, and a way to run a
 * packet and observe which counter moved.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Dataplane, type HookName, type ReasonName, type VerdictName } from '../../agent/bpf/dataplane.js';
import { parseIpv6, privateAddress } from '../tools/packet.js';
import { I6PN_OBJECT } from './binding.js';
import { tunnelKey, type ModelMember, type ModelState } from '../../lib/policy.js';
import { runPacket } from '../tools/run-packet.js';

export const W1 = 0x5137_3ebf;
export const W2 = 0x0a70_1b9d;
export const R1 = 0x0a70;
export const R2 = 0x0b80;
export const NODE = 7;
export const OTHER_NODE = 9;

const addr = (w: number, r: number, e: number | bigint) => privateAddress(w, r, e);
/** A gateway's address: workspace 0, the region, 0x6a7e then 48 bits (lib/address.ts makeGatewayAddress). */
const gatewayAddr = (r: number, e: number) => privateAddress(0, r, (0x6a7en << 48n) | BigInt(e));

/** The membership every golden case runs against (this node is in R1). */
export const M = {
  /** local, i6pn; its veth is the loopback device (ifindex 1) */
  local: addr(W1, R1, 0xa),
  /** local, i6pn; its veth is a veth made by the fixture */
  local2: addr(W1, R1, 0xc),
  /** local, without i6pn; its veth is another veth made by the fixture */
  localNoI6pn: addr(W1, R1, 0xe),
  /** same workspace and region, on another node */
  remote: addr(W1, R1, 0xb),
  /** same workspace and region, on another node, without i6pn */
  remoteNoI6pn: addr(W1, R1, 0xd),
  /** other workspace, same region, on another node */
  otherWorkspace: addr(W2, R1, 0xb),
  /** other workspace, same region, local (no veth here) */
  otherWorkspaceLocal: addr(W2, R1, 0xf),
  /** same workspace, other region (not in this node's maps: agents hold their region) */
  otherRegion: addr(W1, R2, 0xb),
  /** never registered */
  unknown: addr(W1, R1, 0x99),
  /** registered with a workspace that disagrees with its address bits */
  inconsistent: addr(W1, R1, 0x77),
  /** local, i6pn, removed: its veth is sealed (the address is what the veth stays bound to) */
  sealed: addr(W1, R1, 0x5e),
  /** a tunnel gateway of this region, local; its veth is the fixture's sixth */
  gateway: gatewayAddr(R1, 0x1),
  /** a tunnel gateway of this region on another node */
  remoteGateway: gatewayAddr(R1, 0x2),
  /** a gateway of another region (not in this node's maps) */
  otherRegionGateway: gatewayAddr(R2, 0x3),
  /** an address of workspace 0 that is no member */
  unknownGateway: gatewayAddr(R1, 0x99),
} as const;

/** The tunneled port of every tunnel of the fixture (TCP). */
export const TUNNEL_PORT = 8080;
/** The tunnels map of every golden case: (member, TCP, TUNNEL_PORT) for these, and otherWorkspace's 443. */
export const TUNNELS: ReadonlyArray<{ addr: Uint8Array; proto: number; port: number }> = [
  { addr: M.local, proto: 6, port: TUNNEL_PORT },
  { addr: M.remote, proto: 6, port: TUNNEL_PORT },
  { addr: M.localNoI6pn, proto: 6, port: TUNNEL_PORT },
  { addr: M.remoteNoI6pn, proto: 6, port: TUNNEL_PORT },
  { addr: M.otherWorkspace, proto: 6, port: 443 },
];

/** A non-private address of the node itself (on the uplink stand-in): forwarding never reaches it. */
export const NODE_ADDRESS = '2001:db8:ffff::1';

export interface Fixture {
  dp: Dataplane;
  model: ModelState;
  /** ifindex of each local endpoint's veth */
  /** uplink: the node's uplink (config.uplink_ifindex); sealed: the veth of a revoked endpoint */
  /** gateway: the veth of the local tunnel gateway */
  ifindex: { local: number; local2: number; localNoI6pn: number; unregistered: number; uplink: number; sealed: number; gateway: number };
  close(): void;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

function ifindexOf(name: string): number {
  return Number(readFileSync(join('/sys/class/net', name, 'ifindex'), 'utf8').trim());
}

/** Load the programs and the membership above; veth pairs stand in for endpoint veths. */
export async function openFixture(tag: string): Promise<Fixture> {
  if (process.getuid?.() !== 0) throw new Error('the dataplane tests load BPF programs: run them as root');
  // veth pairs stand in for endpoint veths (the dummy module may be absent).
  const names = ['a', 'b', 'c', 'd', 'e', 'f'].map((s) => `i6g${tag}${s}${process.pid % 100000}`.slice(0, 15));
  for (const [a, b] of [[names[0]!, names[1]!], [names[2]!, names[3]!], [names[4]!, names[5]!]] as const) {
    execFileSync('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b], { stdio: 'pipe' });
  }
  // Forwarding (bpf_fib_lookup) needs the veth up and forwarding on it; the node's own address is on the uplink.
  for (const n of names) execFileSync('ip', ['link', 'set', n, 'up'], { stdio: 'pipe' });
  execFileSync('sysctl', ['-qw', `net.ipv6.conf.${names[0]!}.forwarding=1`], { stdio: 'pipe' });
  execFileSync('ip', ['addr', 'add', `${NODE_ADDRESS}/128`, 'dev', names[3]!, 'nodad'], { stdio: 'pipe' });
  const ifindex = {
    local: 1,
    local2: ifindexOf(names[0]!),
    localNoI6pn: ifindexOf(names[1]!),
    unregistered: ifindexOf(names[2]!),
    uplink: ifindexOf(names[3]!),
    sealed: ifindexOf(names[4]!),
    gateway: ifindexOf(names[5]!),
  };
  const dp = await Dataplane.open({ object: I6PN_OBJECT });
  dp.setConfig({ node: NODE, region: R1, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: ifindex.uplink });

  const members: Array<[Uint8Array, ModelMember & { mapWorkspace?: number }, number]> = [
    [M.local, { workspace: W1, region: R1, i6pn: true, local: true }, ifindex.local],
    [M.local2, { workspace: W1, region: R1, i6pn: true, local: true }, ifindex.local2],
    [M.localNoI6pn, { workspace: W1, region: R1, i6pn: false, local: true }, ifindex.localNoI6pn],
    [M.remote, { workspace: W1, region: R1, i6pn: true, local: false }, 0],
    [M.remoteNoI6pn, { workspace: W1, region: R1, i6pn: false, local: false }, 0],
    [M.otherWorkspace, { workspace: W2, region: R1, i6pn: true, local: false }, 0],
    [M.otherWorkspaceLocal, { workspace: W2, region: R1, i6pn: true, local: true }, 0],
    [M.inconsistent, { workspace: W2, region: R1, i6pn: true, local: false }, 0],
    [M.gateway, { workspace: 0, region: R1, i6pn: true, local: true }, ifindex.gateway],
    [M.remoteGateway, { workspace: 0, region: R1, i6pn: true, local: false }, 0],
  ];
  const res = dp.upsertEndpoints(
    members.map(([a, m, ifi]) => ({
      addr: a,
      workspace: m.workspace,
      region: m.region,
      node: m.local ? NODE : OTHER_NODE,
      flags: { i6pn: m.i6pn, local: m.local },
      ifindex: ifi,
    })),
  );
  if (res.failed.length) throw new Error(`fixture membership not applied: ${res.failed[0]!.error.message}`);
  dp.setLocalIface(ifindex.local, { addr: M.local, i6pn: true });
  dp.setLocalIface(ifindex.local2, { addr: M.local2, i6pn: true });
  dp.setLocalIface(ifindex.localNoI6pn, { addr: M.localNoI6pn, i6pn: false });
  dp.setLocalIface(ifindex.sealed, { addr: M.sealed, i6pn: true, sealed: true });
  dp.setLocalIface(ifindex.gateway, { addr: M.gateway, i6pn: true });
  TUNNELS.forEach((t, i) => dp.setTunnel({ ...t, id: i + 1 }));

  const model: ModelState = {
    endpoints: new Map(members.map(([a, m, ifi]) => [hex(a), { ...m, ifindex: ifi }])),
    ifaces: new Map([
      [ifindex.local, { addr: hex(M.local), i6pn: true }],
      [ifindex.local2, { addr: hex(M.local2), i6pn: true }],
      [ifindex.localNoI6pn, { addr: hex(M.localNoI6pn), i6pn: false }],
      [ifindex.sealed, { addr: hex(M.sealed), i6pn: true, sealed: true }],
      [ifindex.gateway, { addr: hex(M.gateway), i6pn: true }],
    ]),
    region: R1,
    uplink: ifindex.uplink,
    forward: false,
    nodeAddresses: new Set([hex(parseIpv6(NODE_ADDRESS))]),
    tunnels: new Set(TUNNELS.map((t) => tunnelKey(hex(t.addr), t.proto, t.port))),
  };
  return {
    dp,
    model,
    ifindex,
    close() {
      dp.close();
      for (const n of [names[0]!, names[2]!, names[4]!]) {
        try {
          execFileSync('ip', ['link', 'del', n], { stdio: 'pipe' });
        } catch {
          /* already gone */
        }
      }
    },
  };
}

export interface Observed {
  /** what the program did with the packet */
  verdict: 'pass' | 'drop';
  /** its raw return code (TC_ACT_REDIRECT when it delivered locally past the stack) */
  retval: number;
  /** the one counter that moved */
  counted: { hook: HookName; verdict: VerdictName; reason: ReasonName; bytes: bigint };
}

type Snapshot = Map<string, { packets: bigint; bytes: bigint }>;

function snapshot(dp: Dataplane): Snapshot {
  return new Map(dp.readCounters().map((r) => [`${r.hook}/${r.verdict}/${r.reason}`, r]));
}

/** Run one packet and find the single counter it moved (throws if not exactly one). */
export function observe(
  dp: Dataplane,
  hook: HookName,
  packet: Uint8Array,
  ifindex?: number,
  ingressIfindex?: number,
  uplinkHook?: 'xdp' | 'tc',
): Observed {
  const before = snapshot(dp);
  const r = runPacket(dp, hook, packet, {
    ...(ifindex === undefined ? {} : { ifindex }),
    ...(ingressIfindex === undefined ? {} : { ingressIfindex }),
    ...(uplinkHook === undefined ? {} : { uplinkHook }),
  });
  const moved: Observed['counted'][] = [];
  for (const [key, now] of snapshot(dp)) {
    const was = before.get(key)!;
    if (now.packets !== was.packets) {
      if (now.packets - was.packets !== 1n) throw new Error(`${key} moved by ${now.packets - was.packets}`);
      const [h, v, reason] = key.split('/') as [HookName, VerdictName, ReasonName];
      moved.push({ hook: h, verdict: v, reason, bytes: now.bytes - was.bytes });
    }
  }
  if (moved.length !== 1) throw new Error(`expected one counter to move, got ${moved.map((m) => `${m.hook}/${m.verdict}/${m.reason}`).join(', ') || 'none'}`);
  return { verdict: r.verdict, retval: r.retval | 0, counted: moved[0]! };
}
