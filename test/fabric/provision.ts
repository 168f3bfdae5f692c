/**
 * Addresses for the topology's endpoints. With the controller, `i6pnctl`
 * assigns them (see controlplane.ts); without it, `planAddresses` follows the
 * address plan itself — fdaa:<workspace id 32>:<region id 16>:<endpoint id 64>
 * with random ids — so that the fabric can be proved before the controller exists.
 */
import { randomBytes } from 'node:crypto';
import { Address6 } from 'ip-address';
import { type Endpoint, type Topology, endpointIfname, regionOf, validateTopology } from './topology.js';

function hex16(buf: Buffer, i: number): string {
  return buf.readUInt16BE(i).toString(16);
}

function nonZero(bytes: number): Buffer {
  for (;;) {
    const b = randomBytes(bytes);
    if (b.some((x) => x !== 0)) return b;
  }
}

export function planAddresses(t: Topology): Endpoint[] {
  validateTopology(t);
  const ws = new Map(t.workspaces.map((w) => [w, nonZero(4)] as const));
  const rg = new Map(t.regions.map((r) => [r, nonZero(2)] as const));
  const used = new Set<string>();
  return t.endpoints.map((e) => {
    const region = regionOf(t, e.node);
    const w = ws.get(e.workspace)!;
    const r = rg.get(region)!;
    let address: string;
    do {
      const id = nonZero(8);
      // Canonical (RFC 5952) spelling, as the store keeps it.
      address = new Address6(
        ['fdaa', hex16(w, 0), hex16(w, 2), hex16(r, 0), hex16(id, 0), hex16(id, 2), hex16(id, 4), hex16(id, 6)].join(':'),
      ).correctForm();
    } while (used.has(address));
    used.add(address);
    return { ...e, region, address, ifname: endpointIfname(e.name) };
  });
}

/** A new address in the workspace of `workspaceOf` and the region of `regionOf` (both existing addresses). */
export function addressIn(workspaceOf: string, regionOf: string): string {
  const w = Buffer.from(new Address6(workspaceOf).canonicalForm().replaceAll(':', ''), 'hex');
  const r = Buffer.from(new Address6(regionOf).canonicalForm().replaceAll(':', ''), 'hex');
  const a = Buffer.concat([w.subarray(0, 6), r.subarray(6, 8), nonZero(8)]);
  const groups = Array.from({ length: 8 }, (_, i) => hex16(a, i * 2));
  return new Address6(groups.join(':')).correctForm();
}
