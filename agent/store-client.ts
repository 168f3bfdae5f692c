/**
 * The agent's side of the membership store, on lib/'s connection
 * (lib/nats.ts) and bucket table (lib/schema.ts): the connection's state in
 * the agent's log and metrics, the region lookup (regions bucket), the node
 * heartbeat (nodes bucket), and the JetStream clients the endpoint follower
 * reads with. Buckets are bound, never created: only the subjects the agent's
 * NATS identity may use (deploy/nats derives them from the same table).
 */
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { connectNats, openBucket } from '../lib/nats.js';
import { BUCKET_TABLE, nodeKey, type BucketSpec, type NodeRecord } from '../lib/schema.js';
import { getRegion } from '../lib/store.js';
import type { Logger } from './log.js';

/**
 * JetStream API requests (stream info, consumer creation, KV get/put). The
 * endpoint reader's consumers are unfiltered and cost the server nothing to
 * create, so an answer later than this means the server or the route is in
 * trouble: the follower retries (and a reconnect retries at once).
 */
const JS_API_TIMEOUT_MS = 10_000;

export interface AgentStoreOptions {
  servers: string[];
  creds: string | undefined;
  /** Connection name shown by the server (monitoring, logs). */
  name: string;
  log: Logger;
  /** Connection state changes (true: connected). */
  onConnected: (connected: boolean) => void;
  /** The connection came back after a loss. */
  onReconnect: () => void;
}

export class AgentStore {
  readonly js: JetStreamClient;
  /** Stream and consumer requests (the endpoint reader's pull consumers). */
  readonly jsm: JetStreamManager;
  private readonly kvm: Kvm;
  private readonly buckets = new Map<string, Promise<KV>>();

  private constructor(readonly nc: NatsConnection, jsm: JetStreamManager) {
    this.jsm = jsm;
    this.js = jetstream(nc, { timeout: JS_API_TIMEOUT_MS });
    this.kvm = new Kvm(this.js);
  }

  /**
   * Connect; retries until the first connection succeeds (the agent serves
   * metrics and the dataplane keeps enforcing meanwhile), then reconnects
   * forever.
   */
  static async connect(o: AgentStoreOptions): Promise<AgentStore> {
    const nc = await connectNats({
      servers: o.servers,
      creds: o.creds,
      name: o.name,
      waitOnFirstConnect: true,
      pingIntervalMs: 10_000,
      maxPingOut: 3,
    });
    o.onConnected(true);
    o.log.info({ server: nc.getServer() }, 'connected to NATS');
    void (async () => {
      for await (const s of nc.status()) {
        switch (s.type) {
          case 'disconnect':
            o.onConnected(false);
            o.log.warn({ server: s.server }, 'NATS connection lost; reconnecting (the dataplane keeps its last state)');
            break;
          case 'reconnect':
            o.onConnected(true);
            o.log.info({ server: s.server }, 'reconnected to NATS');
            o.onReconnect();
            break;
          case 'error':
            o.log.warn({ err: s.error }, 'NATS error');
            break;
          default:
            break;
        }
      }
    })();
    void nc.closed().then((err) => {
      o.onConnected(false);
      if (err) o.log.error({ err }, 'NATS connection closed');
    });
    // No $JS.API.INFO check here: the agent's credentials need not allow account info.
    return new AgentStore(nc, await jetstreamManager(nc, { timeout: JS_API_TIMEOUT_MS, checkAPI: false }));
  }

  private bucket(spec: BucketSpec): Promise<KV> {
    let b = this.buckets.get(spec.name);
    if (!b) {
      b = openBucket(this.kvm, spec);
      b.catch(() => this.buckets.delete(spec.name));
      this.buckets.set(spec.name, b);
    }
    return b;
  }

  /** The region's 16-bit id, or null when the region is not registered; an invalid record throws. */
  async regionId(region: string): Promise<number | null> {
    return (await getRegion({ regions: await this.bucket(BUCKET_TABLE.regions) }, region))?.id ?? null;
  }

  /** Write this node's record (its heartbeat). */
  async putNode(record: NodeRecord): Promise<void> {
    const kv = await this.bucket(BUCKET_TABLE.nodes);
    await kv.put(nodeKey(record.name), JSON.stringify(record));
  }

  async close(): Promise<void> {
    try {
      await this.nc.drain();
    } catch {
      await this.nc.close();
    }
  }
}
