/**
 * Nodes: what each agent's heartbeat says (i6pn_nodes), and whether it is stale.
 */
import { NODES_BUCKET, decodeRecord, nodeRecord, type NodeRecord } from '../../lib/schema.js';
import { type Store, type InvalidEntry, readAll } from '../../lib/store.js';

export interface NodeStatus extends NodeRecord {
  /** Seconds since the last heartbeat (at the time of listing). */
  heartbeatAgeSeconds: number;
  /** No heartbeat for longer than the stale threshold. */
  stale: boolean;
}

export const DEFAULT_STALE_AFTER_MS = 30_000;

export async function listNodes(
  store: Store,
  opts: { staleAfterMs?: number; now?: Date; region?: string } = {},
): Promise<{ nodes: NodeStatus[]; invalid: InvalidEntry[] }> {
  const staleAfter = opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS;
  const now = (opts.now ?? new Date()).getTime();
  const nodes: NodeStatus[] = [];
  const invalid: InvalidEntry[] = [];
  for (const e of await readAll(store.nodes, '>')) {
    const d = decodeRecord(nodeRecord, e.value);
    if (!d.ok) {
      invalid.push({ bucket: NODES_BUCKET, key: e.key, reason: d.reason, message: d.message });
      continue;
    }
    if (d.record.name !== e.key) {
      invalid.push({ bucket: NODES_BUCKET, key: e.key, reason: 'key', message: `key does not match the record's name ${JSON.stringify(d.record.name)}` });
      continue;
    }
    if (opts.region !== undefined && d.record.region !== opts.region) continue;
    const age = Math.max(0, now - Date.parse(d.record.heartbeatAt));
    nodes.push({ ...d.record, heartbeatAgeSeconds: Math.round(age / 100) / 10, stale: age > staleAfter });
  }
  return { nodes: nodes.sort((a, b) => a.region.localeCompare(b.region) || a.name.localeCompare(b.name)), invalid };
}
