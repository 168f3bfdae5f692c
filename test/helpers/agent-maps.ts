/**
 * The agent's maps as a test sees them: opened from their pins through the
 * binding (libbpf.ts), decoded with the generated ABI — independently of the
 * agent process.
 */
import { join } from 'node:path';
import { structs as abiStructs, ConfigFlag, EndpointFlag } from '../../agent/bpf/abi.generated.js';
import { readEndpointValue } from '../../agent/bpf/dataplane.js';
import { MapFd } from '../../agent/bpf/libbpf.js';
import { formatAddress, parseAddress } from '../../lib/address.js';

export { abiStructs };

export interface PinnedEndpoint {
  workspace: number;
  region: number;
  i6pn: boolean;
  local: boolean;
  node: number;
  ifindex: number;
}

function withMap<T>(bpffs: string, name: string, f: (m: MapFd) => T): T {
  const m = MapFd.fromPin(join(bpffs, name), name);
  try {
    return f(m);
  } finally {
    m.close();
  }
}

function decodeEndpoint(v: Buffer): PinnedEndpoint {
  const e = readEndpointValue(new DataView(v.buffer, v.byteOffset, v.length), 0);
  return { workspace: e.workspace, region: e.region, i6pn: e.flags.i6pn, local: e.flags.local, node: e.node, ifindex: e.ifindex };
}

export function readPinnedEndpoint(bpffs: string, address: string): PinnedEndpoint | null {
  return withMap(bpffs, 'endpoints', (m) => {
    const v = m.lookup(parseAddress(address));
    return v ? decodeEndpoint(v) : null;
  });
}

/** Every entry of the pinned endpoints map: address → value. */
export function readPinnedEndpoints(bpffs: string): Map<string, PinnedEndpoint> {
  return withMap(bpffs, 'endpoints', (m) => {
    const out = new Map<string, PinnedEndpoint>();
    for (const [k, v] of m.entriesBatch()) out.set(formatAddress(new Uint8Array(k)), decodeEndpoint(v));
    return out;
  });
}

export interface PinnedLocalIface {
  address: string;
  i6pn: boolean;
  sealed: boolean;
}

/** The pinned local_ifaces map: ifindex → { address, i6pn, sealed }. */
export function readPinnedLocalIfaces(bpffs: string): Map<number, PinnedLocalIface> {
  return withMap(bpffs, 'local_ifaces', (m) => {
    const F = abiStructs.i6pn_local_iface.fields;
    const out = new Map<number, PinnedLocalIface>();
    for (const [k, v] of m.entriesBatch()) {
      const flags = v.readUInt32LE(F.flags.offset);
      out.set(k.readUInt32LE(0), {
        address: formatAddress(new Uint8Array(v.subarray(F.addr.offset, F.addr.offset + 16))),
        i6pn: (flags & EndpointFlag.I6PN) !== 0,
        sealed: (flags & EndpointFlag.SEALED) !== 0,
      });
    }
    return out;
  });
}

/** Write a local_ifaces entry behind the agent's back (what an agent that trusted an entry's ifname left). */
export function writePinnedLocalIface(bpffs: string, ifindex: number, address: string): void {
  withMap(bpffs, 'local_ifaces', (m) => {
    const S = abiStructs.i6pn_local_iface;
    const key = Buffer.alloc(4);
    key.writeUInt32LE(ifindex);
    const v = Buffer.alloc(S.size);
    v.set(parseAddress(address), S.fields.addr.offset);
    v.writeUInt32LE(EndpointFlag.I6PN, S.fields.flags.offset);
    m.update(key, v);
  });
}

/** The uplink and the flags of the pinned config map (the agent writes them). */
export function readPinnedConfig(bpffs: string): { uplinkIfindex: number; forwardNonPrivate: boolean } {
  return withMap(bpffs, 'config', (m) => {
    const F = abiStructs.i6pn_config.fields;
    const key = Buffer.alloc(4);
    const v = m.lookup(key);
    if (!v) throw new Error('config map has no entry 0');
    return {
      uplinkIfindex: v.readUInt32LE(F.uplink_ifindex.offset),
      forwardNonPrivate: (v.readUInt32LE(F.flags.offset) & ConfigFlag.FORWARD_NON_PRIVATE) !== 0,
    };
  });
}
