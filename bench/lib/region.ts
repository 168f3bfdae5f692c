/**
 * A region's endpoints written the fast way, for the benches: random
 * addresses in one buffer, entries as i6pnctl writes them, published straight
 * to the bucket's subjects (what kv.put sends), and a wait until the stream
 * holds them.
 */
import { randomFillSync } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { endpointIdOf, formatAddress, workspaceIdHex } from '../../lib/address.js';
import { endpointsBucket } from '../../lib/schema.js';
import { sleep } from '../../test/fabric/exec.js';

export interface BenchRegion {
  name: string;
  id: number;
  /** Endpoints are spread over this many workspaces, 0x50000000 + i. */
  workspaces: number;
}

export const FIRST_WORKSPACE = 0x5000_0000;

/** `count` random endpoint addresses of the region, in one buffer, with their workspace ids. */
export function randomAddresses(region: BenchRegion, count: number): { buf: Uint8Array; ws: Uint32Array } {
  const buf = new Uint8Array(count * 16);
  randomFillSync(buf);
  const v = new DataView(buf.buffer);
  const ws = new Uint32Array(count);
  for (let i = 0; i < count; i++) {
    ws[i] = FIRST_WORKSPACE + (i % region.workspaces);
    v.setUint16(i * 16, 0xfdaa);
    v.setUint32(i * 16 + 2, ws[i]!);
    v.setUint16(i * 16 + 6, region.id);
  }
  return { buf, ws };
}

const enc = new TextEncoder();
const CREATED = new Date().toISOString();

/** An entry as i6pnctl writes it: its key in the region's bucket and its JSON (`extra`: name, cluster, rank, ifname...). */
export function endpointEntry(region: BenchRegion, addr: Uint8Array, ws: number, node: string, extra: Record<string, unknown> = {}): { key: string; value: Uint8Array } {
  const address = formatAddress(addr);
  const ep = endpointIdOf(addr);
  const rec = { v: 1, address, workspace: `ws-${ws.toString(16)}`, workspaceId: ws, region: region.name, regionId: region.id, node, ifname: `v${ep.slice(0, 12)}`, i6pn: true, createdAt: CREATED, ...extra };
  return { key: `${workspaceIdHex(ws)}.${ep}`, value: enc.encode(JSON.stringify(rec)) };
}

/** Publish straight to the bucket's subjects (what kv.put sends), a flush every chunk; the stream count is checked after. */
export async function publishAll(nc: NatsConnection, region: BenchRegion, n: number, at: (i: number) => { key: string; value: Uint8Array }): Promise<void> {
  const bucket = endpointsBucket(region.name);
  for (let i = 0; i < n; i += 5000) {
    for (let j = i; j < Math.min(n, i + 5000); j++) {
      const r = at(j);
      nc.publish(`$KV.${bucket}.${r.key}`, r.value);
    }
    await nc.flush();
  }
}

/** Wait until the region's stream holds `n` messages (or stops growing); returns what it holds. */
export async function waitStored(nc: NatsConnection, region: BenchRegion, n: number): Promise<number> {
  const jsm = await jetstreamManager(nc);
  const stream = `KV_${endpointsBucket(region.name)}`;
  let last = -1;
  let stable = 0;
  for (;;) {
    const m = (await jsm.streams.info(stream)).state.messages;
    if (m >= n) return m;
    stable = m === last ? stable + 1 : 0;
    if (stable >= 20) return m;
    last = m;
    await sleep(100);
  }
}
