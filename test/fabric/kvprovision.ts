/**
 * A stand-in for `i6pnctl` while the controller is being written: writes the
 * membership records (lib/schema.ts) of planned addresses straight into the
 * JetStream KV buckets, as the controller would after its checks. The agents
 * cannot tell the difference; the end-to-end test switches to i6pnctl as soon
 * as controller/cli.ts exists (see Cluster.provision).
 */
import { jetstream } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { parseAddress, regionOf, workspaceOf, workspaceSubnet } from '../../lib/address.js';
import {
  ENDPOINTS_BUCKET,
  NODES_BUCKET,
  REGIONS_BUCKET,
  SCHEMA_VERSION,
  WORKSPACES_BUCKET,
  endpointKey,
  regionIdKey,
  regionNameKey,
  workspaceIdKey,
  workspaceNameKey,
  type EndpointRecord,
} from '../../lib/schema.js';
import type { Endpoint } from './topology.js';

export class KvProvisioner {
  private constructor(
    private readonly close_: () => Promise<void>,
    private readonly buckets: Record<string, KV>,
  ) {}

  static async connect(url: string): Promise<KvProvisioner> {
    const nc = await connect({ servers: url });
    const kvm = new Kvm(jetstream(nc));
    const buckets: Record<string, KV> = {};
    for (const b of [REGIONS_BUCKET, WORKSPACES_BUCKET, ENDPOINTS_BUCKET, NODES_BUCKET]) buckets[b] = await kvm.create(b, { history: 1 });
    return new KvProvisioner(() => nc.drain(), buckets);
  }

  private kv(name: string): KV {
    const b = this.buckets[name];
    if (!b) throw new Error(`no bucket ${name}`);
    return b;
  }

  /** Regions and workspaces implied by the endpoints' addresses, then the endpoints. */
  async provision(endpoints: readonly Endpoint[]): Promise<void> {
    const now = new Date().toISOString();
    for (const e of endpoints) {
      const a = parseAddress(e.address);
      const region = { v: SCHEMA_VERSION, name: e.region, id: regionOf(a) };
      await this.kv(REGIONS_BUCKET).put(regionNameKey(e.region), JSON.stringify(region));
      await this.kv(REGIONS_BUCKET).put(regionIdKey(region.id), JSON.stringify(region));
      const ws = { v: SCHEMA_VERSION, name: e.workspace, id: workspaceOf(a), subnet: workspaceSubnet(workspaceOf(a)), createdAt: now };
      await this.kv(WORKSPACES_BUCKET).put(workspaceNameKey(e.workspace), JSON.stringify(ws));
      await this.kv(WORKSPACES_BUCKET).put(workspaceIdKey(ws.id), JSON.stringify(ws));
    }
    for (const e of endpoints) await this.addEndpoint(e);
  }

  async addEndpoint(e: Endpoint): Promise<void> {
    const a = parseAddress(e.address);
    const rec: EndpointRecord = {
      v: SCHEMA_VERSION,
      address: e.address,
      workspace: e.workspace,
      workspaceId: workspaceOf(a),
      region: e.region,
      regionId: regionOf(a),
      node: e.node,
      ifname: e.ifname,
      i6pn: e.i6pn,
      createdAt: new Date().toISOString(),
    };
    await this.kv(ENDPOINTS_BUCKET).put(endpointKey(rec), JSON.stringify(rec));
  }

  async removeEndpoint(e: Endpoint): Promise<void> {
    const a = parseAddress(e.address);
    await this.kv(ENDPOINTS_BUCKET).delete(endpointKey({ region: e.region, workspaceId: workspaceOf(a), address: e.address }));
  }

  async close(): Promise<void> {
    await this.close_();
  }
}
