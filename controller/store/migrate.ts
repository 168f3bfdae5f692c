/**
 * `i6pnctl migrate`: the upgrade from the first layout's single endpoints
 * bucket to one bucket per region (see ./endpoint-entries.ts).
 */
import { type KV, type KvEntry } from '@nats-io/kv';
import { LEGACY_ENDPOINTS_BUCKET, endpointsBucket, locateEndpointKey, validateEndpointEntry } from '../../lib/schema.js';
import { StoreError, type Store, type InvalidEntry, isConflict, settleLimited, getLive, keysOf } from '../../lib/store.js';
import { ifLegacyExists } from './endpoint-entries.js';
import { listRegions } from './regions.js';
import { DEFAULT_STALE_AFTER_MS, listNodes } from './nodes.js';

/** An endpoint that the region bucket holds with another value than the first layout's bucket: not overwritten. */
export interface MigrateConflict {
  /** The region bucket and the key in it (the entry to look at). */
  bucket: string;
  key: string;
  message: string;
}

/** A live agent that reports a version older than this i6pnctl's, or one that cannot be compared. */
export interface OldAgent {
  name: string;
  region: string;
  version: string;
}

export interface MigrateReport {
  /** LEGACY_ENDPOINTS_BUCKET. */
  legacyBucket: string;
  /** Whether it exists; false: nothing to migrate (and nothing else was done). */
  found: boolean;
  /** The endpoints bucket of every registered region, each created if it was absent. */
  buckets: string[];
  /** Live entries in the legacy bucket. */
  entries: number;
  /** Created in their region's bucket by this run. */
  copied: number;
  /** Already in their region's bucket with the same value (a run before, or i6pnctl's double write). */
  unchanged: number;
  /** Removed or rewritten in the legacy bucket while this run copied them: not copied (run migrate again). */
  changedMeanwhile: number;
  conflicts: MigrateConflict[];
  /** Legacy entries that break the schema or name a region that is not registered: skipped (agents never applied them). */
  invalid: InvalidEntry[];
  /** Live agents (heartbeat not stale) older than this version: they still read the legacy bucket. */
  oldAgents: OldAgent[];
  /** The legacy bucket was deleted (finish). */
  finished: boolean;
}

export interface MigrateOptions {
  /** This i6pnctl's version (package.json; an agent of the same release reports the same). */
  version: string;
  /** After copying, delete the legacy bucket: refused while `oldAgents` or `conflicts` are not empty, unless `force`. */
  finish?: boolean;
  force?: boolean;
  /** Heartbeat age past which an agent is not counted (default DEFAULT_STALE_AFTER_MS). */
  staleAfterMs?: number;
}

const VERSION_PATTERN = /^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]*)?$/;

/**
 * Orders two versions `MAJOR.MINOR.PATCH[-pre][+build]` as semver does
 * (`0.2.0-rc.1` < `0.2.0` < `0.10.0`); null when either is not one.
 */
export function compareVersions(a: string, b: string): number | null {
  const pa = VERSION_PATTERN.exec(a);
  const pb = VERSION_PATTERN.exec(b);
  if (!pa || !pb) return null;
  for (let i = 1; i <= 3; i++) {
    const d = Number(pa[i]) - Number(pb[i]);
    if (d !== 0) return Math.sign(d);
  }
  const [ra, rb] = [pa[4], pb[4]];
  if (ra === undefined || rb === undefined) return ra === rb ? 0 : ra === undefined ? 1 : -1;
  const ia = ra.split('.');
  const ib = rb.split('.');
  for (let i = 0; i < Math.max(ia.length, ib.length); i++) {
    const [x, y] = [ia[i], ib[i]];
    if (x === undefined || y === undefined) return x === undefined ? -1 : 1;
    const nx = /^\d+$/.test(x);
    const ny = /^\d+$/.test(y);
    const d = nx && ny ? Number(x) - Number(y) : nx !== ny ? (nx ? -1 : 1) : x < y ? -1 : x > y ? 1 : 0;
    if (d !== 0) return Math.sign(d);
  }
  return 0;
}

/** Two values of one endpoint are the same: the same bytes, or the same valid record. */
function sameEndpoint(logical: string, a: Uint8Array, b: Uint8Array): boolean {
  if (Buffer.from(a).equals(Buffer.from(b))) return true;
  const va = validateEndpointEntry(logical, a);
  const vb = validateEndpointEntry(logical, b);
  return va.ok && vb.ok && JSON.stringify(va.record) === JSON.stringify(vb.record);
}

/**
 * Copy one legacy entry into its region's bucket, create-if-absent. After the
 * copy the legacy entry must still be there, unchanged: a removal that ran in
 * between deleted it before the copy existed, so the copy is deleted again
 * (see deleteEndpointEntries).
 */
async function copyLegacyEntry(legacy: KV, kv: KV, bucket: string, key: string, e: KvEntry): Promise<'copied' | 'unchanged' | 'changed' | MigrateConflict> {
  for (let attempt = 0; attempt < 4; attempt++) {
    let revision: number;
    try {
      revision = await kv.create(key, e.value);
    } catch (err) {
      if (!isConflict(err)) throw err;
      const there = await getLive(kv, key);
      if (!there) continue; // removed in between: try again
      if (sameEndpoint(e.key, there.value, e.value)) return 'unchanged';
      return { bucket, key, message: `holds another value than ${LEGACY_ENDPOINTS_BUCKET}/${e.key}; not overwritten` };
    }
    const still = await getLive(legacy, e.key);
    if (still?.revision === e.revision) return 'copied';
    await kv.delete(key, { previousSeq: revision }).catch(() => undefined);
    return 'changed';
  }
  return 'changed';
}

/**
 * `i6pnctl migrate`: copy every entry of the first layout's bucket into its
 * region's bucket (creating the bucket of every registered region), never
 * overwriting: an entry already there with the same value counts as
 * unchanged, one with another value is a conflict, an invalid legacy entry
 * is skipped. Running it again changes nothing. With `finish`, the legacy
 * bucket is then deleted, unless a live agent (its heartbeat not stale)
 * reports an older version than `version`, or conflicts remain: StoreError
 * 'upgrade-pending', unless `force`. Without a legacy bucket it does nothing
 * (`found: false`).
 */
export async function migrateEndpoints(store: Store, opts: MigrateOptions): Promise<MigrateReport> {
  const report: MigrateReport = {
    legacyBucket: LEGACY_ENDPOINTS_BUCKET,
    found: false,
    buckets: [],
    entries: 0,
    copied: 0,
    unchanged: 0,
    changedMeanwhile: 0,
    conflicts: [],
    invalid: [],
    oldAgents: [],
    finished: false,
  };
  const legacy = await store.legacyEndpoints({ recheck: true });
  if (!legacy) return report;
  report.found = true;

  const { regions } = await listRegions(store);
  const registered = new Set(regions.map((r) => r.name));
  for (const r of regions) {
    await store.endpoints(r.name);
    report.buckets.push(endpointsBucket(r.name));
  }

  const keys = await keysOf(legacy, '>');
  const settled = await settleLimited(keys, 64, async (legacyKey) => {
    const e = await getLive(legacy, legacyKey);
    if (!e) return;
    report.entries++;
    const v = validateEndpointEntry(legacyKey, e.value);
    if (!v.ok) {
      report.invalid.push({ bucket: LEGACY_ENDPOINTS_BUCKET, key: legacyKey, reason: v.reason, message: v.message });
      return;
    }
    const loc = locateEndpointKey(legacyKey)!;
    if (!registered.has(loc.region)) {
      report.invalid.push({ bucket: LEGACY_ENDPOINTS_BUCKET, key: legacyKey, reason: 'key', message: `region ${JSON.stringify(loc.region)} is not registered, so it has no endpoints bucket` });
      return;
    }
    const r = await copyLegacyEntry(legacy, await store.endpoints(loc.region), loc.bucket, loc.key, e);
    if (r === 'copied') report.copied++;
    else if (r === 'unchanged') report.unchanged++;
    else if (r === 'changed') report.changedMeanwhile++;
    else report.conflicts.push(r);
  });
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  report.conflicts.sort((a, b) => a.bucket.localeCompare(b.bucket) || a.key.localeCompare(b.key));
  report.invalid.sort((a, b) => a.key.localeCompare(b.key));

  const { nodes } = await listNodes(store, { staleAfterMs: opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS });
  report.oldAgents = nodes
    .filter((n) => !n.stale && (compareVersions(n.version, opts.version) ?? -1) < 0)
    .map((n) => ({ name: n.name, region: n.region, version: n.version }));
  if (!opts.finish) return report;

  if (!opts.force && report.oldAgents.length > 0) {
    const n = report.oldAgents.length;
    const list = report.oldAgents.slice(0, 5).map((a) => `${a.name} (${a.version})`).join(', ');
    throw new StoreError(
      'upgrade-pending',
      `${n} live agent${n === 1 ? '' : 's'} report${n === 1 ? 's' : ''} a version older than ${opts.version} and still read${n === 1 ? 's' : ''} ${LEGACY_ENDPOINTS_BUCKET}: ${list}${n > 5 ? `, and ${n - 5} more` : ''}`,
      'upgrade them first (`i6pnctl node list` shows their versions), or pass --force; the legacy bucket is kept',
    );
  }
  if (!opts.force && report.conflicts.length > 0) {
    const n = report.conflicts.length;
    throw new StoreError(
      'upgrade-pending',
      `${n} endpoint${n === 1 ? '' : 's'} differ${n === 1 ? 's' : ''} between ${LEGACY_ENDPOINTS_BUCKET} and the region buckets (first: ${report.conflicts[0]!.bucket}/${report.conflicts[0]!.key})`,
      'see `i6pnctl migrate` for the list and fix or delete the entries with the nats CLI, or pass --force to keep the region buckets\' values; the legacy bucket is kept',
    );
  }
  await ifLegacyExists(store, () => legacy.destroy(), true);
  await store.legacyEndpoints({ recheck: true });
  report.finished = true;
  return report;
}
