/**
 * Regions: a name and a 16-bit id (bits 48-63 of their addresses), each
 * claimed by creating its key; adding one creates its endpoints and tunnels
 * buckets. Lookups by name and id are in lib/store.ts (the agent reads them).
 */
import { isRegionId, regionIdHex } from '../../lib/address.js';
import {
  REGIONS_BUCKET,
  SCHEMA_VERSION,
  decodeRecord,
  endpointsBucket,
  regionIdKey,
  regionNameKey,
  regionRecord,
  type RegionRecord,
} from '../../lib/schema.js';
import { StoreError, type Store, type InvalidEntry, isConflict, reasonOf, enc, getLive, readNamed, checkInput } from '../../lib/store.js';

/**
 * Register a region under a new 16-bit id (random unless `id` is given). The
 * id key is claimed first, then the name key; a taken name releases the id.
 */
export async function addRegion(store: Store, name: string, opts: { id?: number } = {}): Promise<RegionRecord> {
  checkInput({ region: name });
  if (opts.id !== undefined && !isRegionId(opts.id)) {
    throw new StoreError('invalid', `invalid region id ${opts.id}`, 'use a number from 1 to 65535');
  }
  const tries = opts.id === undefined ? 64 : 1;
  for (let i = 0; i < tries; i++) {
    const id = opts.id ?? store.random.regionId();
    const record = regionRecord.parse({ v: SCHEMA_VERSION, name, id });
    let idRevision: number;
    try {
      idRevision = await store.regions.create(regionIdKey(id), enc(record));
    } catch (e) {
      if (!isConflict(e)) throw e;
      if (opts.id !== undefined) {
        const other = await getLive(store.regions, regionIdKey(id));
        const d = other ? decodeRecord(regionRecord, other.value) : null;
        const owner = d?.ok ? d.record.name : undefined;
        throw new StoreError('exists', `region id ${id} (0x${regionIdHex(id)}) is taken${owner ? ` by region ${JSON.stringify(owner)}` : ''}`, 'choose another --id or leave it out for a random one');
      }
      continue; // random id taken: draw again
    }
    try {
      await store.regions.create(regionNameKey(name), enc(record));
    } catch (e) {
      // The id was never published under a name: give it back.
      await store.regions.delete(regionIdKey(id), { previousSeq: idRevision }).catch(() => undefined);
      if (isConflict(e)) throw new StoreError('exists', `region ${JSON.stringify(name)} already exists`, 'choose another name; `i6pnctl region list` shows the taken ones');
      throw e;
    }
    // Its endpoints and tunnels buckets, now: the region's agents and gateways read them from the start.
    try {
      await store.endpoints(name);
      await store.tunnels(name);
    } catch (e) {
      throw new StoreError(
        'jetstream',
        `region ${name} is added (id 0x${regionIdHex(id)}) but its bucket ${endpointsBucket(name)} could not be created: ${reasonOf(e)}`,
        'check the NATS account\'s JetStream limits; the next command that writes an endpoint of this region creates it',
      );
    }
    return record;
  }
  throw new StoreError('exhausted', 'no free region id after 64 random draws', 'the 16-bit region space is nearly full; pass --id');
}

export async function listRegions(store: Store): Promise<{ regions: RegionRecord[]; invalid: InvalidEntry[] }> {
  const { records, invalid } = await readNamed(store.regions, REGIONS_BUCKET, regionRecord, regionNameKey);
  return { regions: records, invalid };
}
