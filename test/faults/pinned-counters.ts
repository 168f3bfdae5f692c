/**
 * The dataplane's counters and attached programs as the faults read them,
 * independently of the agent (which may be down): the pinned counters map
 * through the binding, and the program on a veth through bpftool.
 */
import { join } from 'node:path';
import * as abi from '../../agent/bpf/abi.generated.js';
import { MapFd, perCpuStride, possibleCpus } from '../../agent/bpf/libbpf.js';
import type { Cluster } from '../fabric/cluster.js';
import { run } from '../fabric/exec.js';

/** Packets of one hook and verdict, every reason, summed over CPUs, from `node`'s pinned counters map. */
export function pinnedPackets(c: Cluster, node: string, hook: abi.HookName, verdict: abi.VerdictName): number {
  const m = MapFd.fromPin(join(c.node(node).bpffs, 'counters'), 'counters');
  try {
    const F = abi.structs.i6pn_counter.fields;
    const stride = perCpuStride(abi.structs.i6pn_counter.size);
    const h = abi.HOOK_NAMES.indexOf(hook);
    const v = abi.VERDICT_NAMES.indexOf(verdict);
    let packets = 0n;
    for (const [k, val] of m.entriesBatch()) {
      const idx = k.readUInt32LE(0);
      if (Math.floor(idx / (abi.REASON_MAX * abi.VERDICT_MAX)) !== h || Math.floor(idx / abi.REASON_MAX) % abi.VERDICT_MAX !== v) continue;
      for (let cpu = 0; cpu < possibleCpus(); cpu++) packets += val.readBigUInt64LE(cpu * stride + F.packets.offset);
    }
    return Number(packets);
  } finally {
    m.close();
  }
}

/**
 * The program on `ifname`'s TC ingress in `node` and the names of its maps
 * (bpftool): which build is attached.
 */
export async function attachedProgram(c: Cluster, node: string, ifname: string): Promise<{ id: number; name: string; maps: Map<string, number> }> {
  const netns = c.node(node).netns;
  const net = JSON.parse((await run(['bpftool', '-j', 'net', 'show', 'dev', ifname], { netns })).stdout) as Array<{ tc?: Array<{ kind: string; name: string; prog_id?: number; id?: number }> }>;
  const tc = net.flatMap((x) => x.tc ?? []).find((x) => x.kind.endsWith('ingress'));
  const id = tc?.prog_id ?? tc?.id;
  if (!tc || id === undefined) throw new Error(`no TC ingress program on ${node}/${ifname}`);
  const prog = JSON.parse((await run(['bpftool', '-j', 'prog', 'show', 'id', String(id)])).stdout) as { map_ids?: number[] };
  const maps = new Map<string, number>();
  for (const mid of prog.map_ids ?? []) {
    const m = JSON.parse((await run(['bpftool', '-j', 'map', 'show', 'id', String(mid)])).stdout) as { name: string };
    maps.set(m.name, mid);
  }
  return { id, name: tc.name, maps };
}

/** The first u64 of an array map, by id (bpftool). */
export async function mapFirstU64(id: number): Promise<number> {
  const d = JSON.parse((await run(['bpftool', '-j', 'map', 'lookup', 'id', String(id), 'key', '0', '0', '0', '0'])).stdout) as { value: string[] | number };
  if (typeof d.value === 'number') return d.value;
  return Number(Buffer.from(d.value.map((x) => Number(x))).readBigUInt64LE(0));
}
