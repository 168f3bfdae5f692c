/**
 * One node's dataplane for the allowed-traffic bench, run inside the node's
 * namespace by bench/fabric.ts: from_fabric on the uplink (native XDP),
 * from_endpoint/to_endpoint on the endpoint's veth, the two endpoints as
 * members. Prints "ready", holds until stdin closes, then detaches.
 *
 *   node --import=tsx bench/fabric/node.ts <json args>
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

import { Dataplane } from '../../agent/bpf/dataplane.js';
import { BpfObject, LinkFd, XdpFlags } from '../../agent/bpf/libbpf.js';
import { parseIpv6 } from '../../test/tools/packet.js';
import { REPO_DIR } from '../lib/results.js';

export interface NodeArgs {
  /**
   * i6pn: the dataplane, from_fabric as native XDP. i6pn-tc: the same with
   * from_fabric at TC ingress (the agent's choice on a veth). xdp-pass: only the bench's xdp_pass on the uplink,
   * native, to separate what any XDP program costs on a veth (veth takes the
   * XDP receive path and turns off the peer's segmentation offload) from
   * what i6pn's programs cost.
   */
  variant: 'i6pn' | 'i6pn-tc' | 'xdp-pass';
  node: number;
  region: number;
  workspace: number;
  /** None on a single node (two endpoints on it, no remote one). */
  uplink?: string;
  /** Host side of the local endpoint's veth. */
  veth: string;
  local: string;
  /** A second endpoint on this node, when the bench runs between two of them. */
  local2?: { veth: string; addr: string };
  remote?: { addr: string; node: number };
  /** The local fast path (bpf_redirect_neigh to a bound endpoint's veth); on by default, as the agent runs it. */
  fastPath?: boolean;
}

function ifindexOf(dev: string): number {
  return (JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'dev', dev], { encoding: 'utf8' })) as { ifindex: number }[])[0]!.ifindex;
}

async function main(): Promise<void> {
  const a = JSON.parse(process.argv[2]!) as NodeArgs;
  const veth = ifindexOf(a.veth);
  const uplink = a.uplink ? ifindexOf(a.uplink) : 0;
  if (a.variant === 'xdp-pass') {
    const obj = BpfObject.open(join(REPO_DIR, 'build/bench/xdp_redirect.bpf.o'));
    obj.program('xdp_redirect_target').setAutoload(false);
    obj.load();
    if (!uplink) throw new Error('xdp-pass needs an uplink');
    const link = LinkFd.createXdp(obj.program('xdp_pass').fd, uplink, XdpFlags.DRV_MODE, 'xdp_pass');
    const done = (): void => {
      link.close();
      obj.close();
    };
    process.stdout.write('ready\n');
    process.stdin.resume();
    process.stdin.on('end', () => {
      done();
      process.stdout.write(JSON.stringify({ counters: [] }) + '\n');
      process.exit(0);
    });
    process.on('SIGTERM', () => {
      done();
      process.exit(0);
    });
    return;
  }
  const dp = await Dataplane.open({ object: join(REPO_DIR, 'build/bpf/i6pn.bpf.o') });
  // The uplink is the one way in for the remote endpoint's packets (to_endpoint checks where they entered).
  dp.setConfig({ node: a.node, region: a.region, mode: 'enforce', eventsPerSec: 100, uplinkIfindex: uplink, localFastPath: a.fastPath ?? true });
  const locals = [{ ifindex: veth, addr: parseIpv6(a.local) }, ...(a.local2 ? [{ ifindex: ifindexOf(a.local2.veth), addr: parseIpv6(a.local2.addr) }] : [])];
  const member = (addr: Uint8Array, node: number, ifindex: number) => ({ addr, workspace: a.workspace, region: a.region, node, flags: { i6pn: true, local: ifindex !== 0 }, ifindex });
  dp.upsertEndpoints([
    ...locals.map((l) => member(l.addr, a.node, l.ifindex)),
    ...(a.remote ? [member(parseIpv6(a.remote.addr), a.remote.node, 0)] : []),
  ]);
  for (const l of locals) {
    dp.setLocalIface(l.ifindex, { addr: l.addr, i6pn: true });
    dp.attachEndpoint(l.ifindex);
  }
  if (uplink) dp.attachUplink(uplink, a.variant === 'i6pn-tc' ? { hook: 'tc' } : { hook: 'xdp', mode: 'native' });
  const detach = (): void => {
    if (uplink) dp.detachUplink(uplink);
    for (const l of locals) dp.detachEndpoint(l.ifindex);
    dp.close();
  };
  process.stdout.write('ready\n');
  process.stdin.resume();
  process.stdin.on('end', () => {
    const rows = dp.readCounters({ nonZero: true }).map((r) => ({ ...r, packets: Number(r.packets), bytes: Number(r.bytes) }));
    detach();
    process.stdout.write(JSON.stringify({ counters: rows }) + '\n');
    process.exit(0);
  });
  process.on('SIGTERM', () => {
    detach();
    process.exit(0);
  });
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
