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
import { parseIpv6 } from '../../agent/bpf/packet.js';
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
  uplink: string;
  /** Host side of the local endpoint's veth. */
  veth: string;
  local: string;
  remote: { addr: string; node: number };
}

function ifindexOf(dev: string): number {
  return (JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'dev', dev], { encoding: 'utf8' })) as { ifindex: number }[])[0]!.ifindex;
}

async function main(): Promise<void> {
  const a = JSON.parse(process.argv[2]!) as NodeArgs;
  const veth = ifindexOf(a.veth);
  const uplink = ifindexOf(a.uplink);
  if (a.variant === 'xdp-pass') {
    const obj = BpfObject.open(join(REPO_DIR, 'build/bench/xdp_redirect.bpf.o'));
    obj.program('xdp_redirect_target').setAutoload(false);
    obj.load();
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
  dp.setConfig({ node: a.node, region: a.region, mode: 'enforce', eventsPerSec: 100, uplinkIfindex: uplink });
  const local = parseIpv6(a.local);
  dp.upsertEndpoints([
    { addr: local, workspace: a.workspace, region: a.region, node: a.node, flags: { i6pn: true, local: true }, ifindex: veth },
    { addr: parseIpv6(a.remote.addr), workspace: a.workspace, region: a.region, node: a.remote.node, flags: { i6pn: true, local: false }, ifindex: 0 },
  ]);
  dp.setLocalIface(veth, { addr: local, i6pn: true });
  dp.attachEndpoint(veth);
  dp.attachUplink(uplink, a.variant === 'i6pn-tc' ? { hook: 'tc' } : { hook: 'xdp', mode: 'native' });
  const detach = (): void => {
    dp.detachUplink(uplink);
    dp.detachEndpoint(veth);
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
