/**
 * Endpoint entries as i6pnctl writes them into a region's bucket, for the
 * agent's tests that feed the bucket (or the sync) directly.
 */
import { randomBytes } from 'node:crypto';
import { endpointIdOf, formatAddress, makeEndpointAddress, workspaceIdHex } from '../../lib/address.js';

export interface TestEndpoint {
  /** `<workspace id>.<endpoint id>`: its key in the region's bucket. */
  key: string;
  addr: Uint8Array;
  address: string;
  ws: number;
}

/** A new endpoint of workspace `ws` in region `regionId`, with a random endpoint id. */
export function newEndpoint(ws: number, regionId: number): TestEndpoint {
  const addr = makeEndpointAddress(ws, regionId, randomBytes(8));
  return { key: `${workspaceIdHex(ws)}.${endpointIdOf(addr)}`, addr, address: formatAddress(addr), ws };
}

/** Its entry's JSON (on node-b, i6pn, a derived interface name), with `over` on top. */
export function endpointJson(e: TestEndpoint, region: { name: string; id: number }, over: Record<string, unknown> = {}): string {
  return JSON.stringify({
    v: 1,
    address: e.address,
    workspace: 'w',
    workspaceId: e.ws,
    region: region.name,
    regionId: region.id,
    node: 'node-b',
    ifname: `v${e.key.slice(-12)}`,
    i6pn: true,
    createdAt: new Date().toISOString(),
    ...over,
  });
}
