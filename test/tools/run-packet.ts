/**
 * Packets through the loaded programs of a Dataplane, with BPF_PROG_TEST_RUN:
 * the tool the golden table, the property test and the benches use (Katran
 * keeps its own beside its tests too). The programs are found by their kernel
 * ids (Dataplane.programIds()), so the production class carries no test API.
 */
import * as abi from '../../agent/bpf/abi.generated.js';
import type { Dataplane, HookName, UplinkHook } from '../../agent/bpf/dataplane.js';
import { TcAction, TestRunFlags, XdpAction, closeFd, layouts, progFdById, progTestRun, type TestRunResult } from '../../agent/bpf/libbpf.js';

export interface PacketResult {
  /** What the hook did with the packet (monitor mode passes would-drops). */
  verdict: 'pass' | 'drop';
  /** The program's raw return code (XDP_* or TC_ACT_*). */
  retval: number;
  /** Average ns per run. */
  durationNs: number;
}

export interface RunPacketOptions {
  /**
   * The interface the hook runs on: xdp_md.ingress_ifindex for from_fabric,
   * __sk_buff.ifindex for the TC hooks (from_endpoint also gets it as
   * ingress_ifindex). The kernel resolves it in the caller's network
   * namespace, so it must be an existing interface there (ENODEV otherwise);
   * without it the kernel uses the loopback device (ifindex 1).
   */
  ifindex?: number;
  /**
   * Where the packet entered the node (__sk_buff.ingress_ifindex) for
   * to_endpoint and to_fabric; from_endpoint's is its own veth. Default 0:
   * made by the node's own stack.
   */
  ingressIfindex?: number;
  /** from_fabric only: run the TC flavour (from_fabric_tc) instead of the XDP program. */
  uplinkHook?: UplinkHook;
  /** Runs to average over (BPF_PROG_TEST_RUN repeat); default 1. */
  repeat?: number;
}

function withProgram<T>(dp: Dataplane, name: HookName | 'from_fabric_tc', run: (fd: number) => T): T {
  const fd = progFdById(dp.programIds()[name]);
  try {
    return run(fd);
  } finally {
    closeFd(fd);
  }
}

/** Run one packet through a hook's program. */
export function runPacket(dp: Dataplane, hook: HookName, packet: Uint8Array, opts: RunPacketOptions = {}): PacketResult {
  if (!abi.HOOK_NAMES.includes(hook)) throw new RangeError(`no hook ${String(hook)}; hooks are ${abi.HOOK_NAMES.join(', ')}`);
  const tcFromFabric = hook === 'from_fabric' && opts.uplinkHook === 'tc';
  let ctx: Buffer | undefined;
  if (hook === 'from_fabric' && !tcFromFabric) {
    if (opts.ifindex !== undefined) {
      const L = layouts.xdp_md;
      ctx = Buffer.alloc(L.size);
      ctx.writeUInt32LE(packet.length, L.data_end); // the kernel wants data_end == packet length
      ctx.writeUInt32LE(opts.ifindex, L.ingress_ifindex);
    }
  } else if (opts.ifindex !== undefined) {
    const L = layouts.__sk_buff;
    ctx = Buffer.alloc(L.size);
    ctx.writeUInt32LE(opts.ifindex, L.ifindex);
    const ingress = hook === 'from_endpoint' || hook === 'from_fabric' ? opts.ifindex : (opts.ingressIfindex ?? 0);
    ctx.writeUInt32LE(ingress, L.ingress_ifindex);
  }
  const name = tcFromFabric ? 'from_fabric_tc' : hook;
  const r: TestRunResult = withProgram(dp, name, (fd) => progTestRun(fd, { data: packet, ...(ctx ? { ctx } : {}), repeat: opts.repeat ?? 1 }, name));
  return { verdict: retvalVerdict(tcFromFabric ? 'to_fabric' : hook, r.retval), retval: r.retval, durationNs: r.durationNs };
}

/**
 * Run from_fabric on `repeat` live frames (BPF_F_TEST_XDP_LIVE_FRAMES): each
 * frame is a real xdp_frame, and what passes goes up the stack of the
 * loopback device (or `ifindex`). The kernel reports no verdict in this mode,
 * only the time; read the counters for what happened.
 */
export function runLiveFrames(dp: Dataplane, packet: Uint8Array, opts: { repeat: number; ifindex?: number; batchSize?: number }): { durationNs: number } {
  const L = layouts.xdp_md;
  const ctx = Buffer.alloc(L.size);
  ctx.writeUInt32LE(packet.length, L.data_end);
  ctx.writeUInt32LE(opts.ifindex ?? 1, L.ingress_ifindex);
  const r = withProgram(dp, 'from_fabric', (fd) =>
    progTestRun(
      fd,
      { data: packet, ctx, repeat: opts.repeat, flags: TestRunFlags.XDP_LIVE_FRAMES, ...(opts.batchSize ? { batchSize: opts.batchSize } : {}) },
      'from_fabric',
    ),
  );
  return { durationNs: r.durationNs };
}

function retvalVerdict(hook: HookName, retval: number): 'pass' | 'drop' {
  if (hook === 'from_fabric') {
    if (retval === XdpAction.PASS) return 'pass';
    if (retval === XdpAction.DROP || retval === XdpAction.ABORTED) return 'drop';
  } else {
    const r = retval | 0; // TC_ACT_UNSPEC is -1
    // TC_ACT_REDIRECT: passed, and delivered locally past the stack (the config's local fast path).
    if (r === TcAction.OK || r === TcAction.UNSPEC || r === TcAction.REDIRECT) return 'pass';
    if (r === TcAction.SHOT) return 'drop';
  }
  throw new Error(`${hook} returned ${retval}, which is neither pass nor drop`);
}
