/**
 * One i6pn object under the dataplane bench (bench/dataplane.ts), in a
 * process of its own: loads the object through the Dataplane wrapper of its
 * own version (I6PN_BENCH_AGENT_DIR), fills the map with N endpoints, then
 * answers one line per round on stdin with one JSON line on stdout: the empty
 * programs' ns and every case's ns. Two versions of the libbpf binding cannot
 * share a process (koffi's type names are global), hence one process per
 * object; both stay loaded and take turns, so drift hits them alike.
 *
 * Every timed call is checked against the counters: the case's own
 * (hook, verdict, reason) counter must move by exactly the repeat count.
 */
import { randomFillSync } from 'node:crypto';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import type { Dataplane as DataplaneT, Endpoint, HookName } from '../../agent/bpf/dataplane.js';
import type { BpfObject as BpfObjectT } from '../../agent/bpf/libbpf.js';
import { ipv6Packet, privateAddress } from '../../test/tools/packet.js';
import { runPacket } from '../../test/tools/run-packet.js';

const AGENT_DIR = process.env.I6PN_BENCH_AGENT_DIR!;
const OBJECT = process.env.I6PN_BENCH_OBJECT!;
const EMPTY_OBJECT = process.env.I6PN_BENCH_EMPTY_OBJECT!;
const ENDPOINTS = Number(process.env.I6PN_BENCH_ENDPOINTS);
const REPEAT = Number(process.env.I6PN_BENCH_REPEAT ?? 2_000_000);
const FILL_CHUNK = 65_536;

/** This node and its region; a second region for the cross-region case. */
const NODE = 1;
const REGION = 0x0101;
const OTHER_REGION = 0x0202;
export const WORKSPACES = [0x1000_0001, 0x2000_0002, 0x3000_0003, 0x4000_0004, 0x5000_0005, 0x6000_0006, 0x7000_0007, 0x8000_0008];
/** The veth the TC hooks run on (skb ifindex): the loopback device exists in every namespace. */
const LO = 1;
/**
 * Ingress interfaces (skb ingress_ifindex): only compared with the config and
 * looked up in local_ifaces, never resolved by the kernel, so they need not exist.
 */
const UPLINK = 100_001;
const LOCAL2_VETH = 100_002;

export interface CaseInfo {
  name: string;
  hook: HookName;
  baseline: 'xdp' | 'tc';
  verdict: 'pass' | 'drop';
  reason: string;
  /** issue 12: at most this many times the empty program of the same type (the same run, the same process). */
  goalRatio?: number;
}

interface Case extends CaseInfo {
  packet: Uint8Array;
  ifindex?: number;
  ingressIfindex?: number;
}

/** One round's answer: ns per packet of the empty programs and of each case (null: no such hook in this object). */
export interface RoundResult {
  xdp: number;
  tc: number;
  cases: (number | null)[];
}

export interface Ready {
  fillSeconds: number;
  cases: CaseInfo[];
  hooks: string[];
  verifiedInstructions: Record<string, number>;
}

// The members the packets name; the bulk fill adds random others around them.
const [W1, W2] = WORKSPACES as [number, number];
const local = privateAddress(W1, REGION, 0x1111_0000_0000_0001n);
const local2 = privateAddress(W1, REGION, 0x1111_0000_0000_0005n);
const remote = privateAddress(W1, REGION, 0x2222_0000_0000_0002n);
const otherWs = privateAddress(W2, REGION, 0x3333_0000_0000_0003n);
const otherRegion = privateAddress(W1, OTHER_REGION, 0x4444_0000_0000_0004n);

function cases(): Case[] {
  const udp = (src: Uint8Array, dst: Uint8Array): Uint8Array => ipv6Packet({ src, dst, l4: { proto: 'udp', srcPort: 40000, dstPort: 7, payload: new Uint8Array(18) } });
  const ok = { verdict: 'pass', reason: 'pass_private' } as const;
  return [
    { name: 'allowed (same workspace and region)', hook: 'from_fabric', baseline: 'xdp', packet: udp(remote, local), ...ok, goalRatio: 4 },
    { name: 'cross-workspace drop (address bits)', hook: 'from_fabric', baseline: 'xdp', packet: udp(otherWs, local), verdict: 'drop', reason: 'cross_workspace', goalRatio: 2 },
    { name: 'cross-region drop (address bits)', hook: 'from_fabric', baseline: 'xdp', packet: udp(otherRegion, local), verdict: 'drop', reason: 'cross_region', goalRatio: 2 },
    { name: 'allowed, container sends', hook: 'from_endpoint', baseline: 'tc', packet: udp(local, remote), ifindex: LO, ...ok, goalRatio: 2 },
    { name: 'cross-workspace drop, container sends', hook: 'from_endpoint', baseline: 'tc', packet: udp(local, otherWs), ifindex: LO, verdict: 'drop', reason: 'cross_workspace' },
    { name: 'allowed, container receives (entered from the uplink)', hook: 'to_endpoint', baseline: 'tc', packet: udp(remote, local), ifindex: LO, ingressIfindex: UPLINK, ...ok, goalRatio: 2 },
    { name: 'allowed, container receives (entered from the source’s veth)', hook: 'to_endpoint', baseline: 'tc', packet: udp(local2, local), ifindex: LO, ingressIfindex: LOCAL2_VETH, ...ok, goalRatio: 2 },
    { name: 'allowed, container sends to another node', hook: 'to_fabric', baseline: 'tc', packet: udp(local, remote), ifindex: LO, ingressIfindex: LO, ...ok, goalRatio: 2 },
  ];
}

function ep(addr: Uint8Array, node: number, local: boolean, ifindex = 0): Endpoint {
  const v = new DataView(addr.buffer, addr.byteOffset);
  return { addr, workspace: v.getUint32(2), region: v.getUint16(6), node, flags: { i6pn: true, local }, ifindex };
}

/** Fill the map with `n` random members spread over the workspaces and two regions; returns seconds. */
function fill(dp: DataplaneT, n: number): number {
  const t0 = process.hrtime.bigint();
  for (let done = 0; done < n; done += FILL_CHUNK) {
    const k = Math.min(FILL_CHUNK, n - done);
    // One buffer per chunk: a million 16-byte ArrayBuffers would cost more in GC than the map does.
    const addrs = new Uint8Array(k * 16);
    const v = new DataView(addrs.buffer);
    randomFillSync(addrs);
    const batch: Endpoint[] = new Array(k);
    for (let i = 0; i < k; i++) {
      const workspace = WORKSPACES[(done + i) % WORKSPACES.length]!;
      const region = (done + i) % 5 === 0 ? OTHER_REGION : REGION;
      v.setUint16(i * 16, 0xfdaa);
      v.setUint32(i * 16 + 2, workspace);
      v.setUint16(i * 16 + 6, region);
      batch[i] = { addr: addrs.subarray(i * 16, i * 16 + 16), workspace, region, node: 2 + ((done + i) % 50), flags: { i6pn: true, local: false }, ifindex: 0 };
    }
    const r = dp.upsertEndpoints(batch);
    if (r.failed.length) throw new Error(`filling ${n} endpoints: ${r.failed.length} failed, first ${r.failed[0]!.error.message}`);
  }
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function main(): Promise<void> {
  // The wrapper of the object's own version: map layouts and programs change between versions.
  const { Dataplane } = (await import(join(AGENT_DIR, 'bpf/dataplane.ts'))) as { Dataplane: typeof DataplaneT };
  const { BpfObject } = (await import(join(AGENT_DIR, 'bpf/libbpf.ts'))) as { BpfObject: typeof BpfObjectT };

  const empty = BpfObject.open(EMPTY_OBJECT);
  empty.load();
  const xdpEmpty = empty.program('xdp_empty');
  const tcEmpty = empty.program('tc_empty');
  const dp = await Dataplane.open({ object: OBJECT, maxEndpoints: Math.max(ENDPOINTS + 16, 1024) });
  try {
    const insns = { ...dp.verifiedInstructions(), xdp_empty: xdpEmpty.info().verifiedInsns, tc_empty: tcEmpty.info().verifiedInsns };
    const hooks = Object.keys(dp.verifiedInstructions());
    // The agent's default drop-event budget (100/s per CPU): a flood exhausts it and pays the check.
    // An older object's wrapper ignores uplinkIfindex (its programs do not know the uplink).
    dp.setConfig({ node: NODE, region: REGION, mode: 'enforce', eventsPerSec: 100, uplinkIfindex: UPLINK });
    const all = cases();
    const [c0] = all;
    const named = [ep(local, NODE, true, LO), ep(local2, NODE, true, LOCAL2_VETH), ep(remote, 2, false), ep(otherWs, 3, false), ep(otherRegion, 4, false)];
    const fillSeconds = fill(dp, ENDPOINTS - named.length);
    const r = dp.upsertEndpoints(named);
    if (r.failed.length) throw new Error(`named members: ${r.failed[0]!.error.message}`);
    dp.setLocalIface(LO, { addr: local, i6pn: true });
    dp.setLocalIface(LOCAL2_VETH, { addr: local2, i6pn: true });

    const runCase = (c: Case): number | null => {
      if (!hooks.includes(c.hook)) return null;
      const counter = () => dp.readCounter(c.hook, c.verdict, c.reason as never).packets;
      const before = counter();
      const res = runPacket(dp, c.hook, c.packet, { repeat: REPEAT, ifindex: c.ifindex, ingressIfindex: c.ingressIfindex });
      if (res.verdict !== c.verdict) throw new Error(`${c.name} on ${c.hook}: expected ${c.verdict}, got ${res.verdict} (retval ${res.retval})`);
      if (counter() - before !== BigInt(REPEAT)) {
        const moved = dp.readCounters({ nonZero: true }).map((x) => `${x.hook}/${x.verdict}/${x.reason}=${x.packets}`).join(', ');
        throw new Error(`${c.name} on ${c.hook}: counter ${c.verdict}/${c.reason} moved by ${counter() - before}, not ${REPEAT} (counters: ${moved})`);
      }
      return res.durationNs;
    };
    const round = (): RoundResult => ({
      xdp: xdpEmpty.testRun({ data: c0!.packet, repeat: REPEAT }).durationNs,
      tc: tcEmpty.testRun({ data: c0!.packet, repeat: REPEAT }).durationNs,
      cases: all.map(runCase),
    });
    // One untimed round first: the first calls of a process run slower (caches, CPU clock).
    round();
    const ready: Ready = { fillSeconds, cases: all.map(({ packet: _p, ifindex: _i, ingressIfindex: _g, ...info }) => info), hooks, verifiedInstructions: insns };
    process.stdout.write(JSON.stringify(ready) + '\n');
    for await (const line of createInterface({ input: process.stdin })) {
      if (line.trim() !== 'round') break;
      process.stdout.write(JSON.stringify(round()) + '\n');
    }
  } finally {
    dp.close();
    empty.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
