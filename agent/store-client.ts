/**
 * The node side of the membership store, for the agent and the tunnel
 * gateway: a NATS connection that reconnects forever, the region lookup
 * (regions bucket), the node heartbeat (nodes bucket), buckets to read (the
 * tunnels) and the JetStream client the endpoint follower reads with. Only
 * the subjects their NATS identities may use (deploy/nats): reads of the
 * i6pn_* buckets and their own keys.
 */
import { readFileSync } from 'node:fs';
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { NODES_BUCKET, REGIONS_BUCKET, decodeRecord, nodeKey, regionNameKey, regionRecord, type NodeRecord } from '../lib/schema.js';
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
    const nc = await connect({
      servers: o.servers,
      name: o.name,
      ...(o.creds ? { authenticator: credsAuthenticator(readFileSync(o.creds)) } : {}),
      waitOnFirstConnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 1000,
      pingInterval: 10_000,
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

  /**
   * A bucket, opened once (a failed open is tried again next time). `direct`:
   * gets are direct gets ($JS.API.DIRECT.GET), what an identity allowed to
   * read one key of a bucket may do (the gateway's own record).
   */
  bucket(name: string, opts: { direct?: boolean } = {}): Promise<KV> {
    let b = this.buckets.get(name);
    if (!b) {
      b = this.kvm.open(name, opts.direct ? { allow_direct: true } : {});
      b.catch(() => this.buckets.delete(name));
      this.buckets.set(name, b);
    }
    return b;
  }

  /** The region's 16-bit id, or null when the region is not registered (or its record is invalid). */
  async regionId(region: string): Promise<number | null> {
    const kv = await this.bucket(REGIONS_BUCKET);
    const e = await kv.get(regionNameKey(region));
    if (!e || e.operation !== 'PUT') return null;
    const d = decodeRecord(regionRecord, e.value);
    if (!d.ok) throw new Error(`region ${region}: invalid record in ${REGIONS_BUCKET}: ${d.message}`);
    if (d.record.name !== region) throw new Error(`region ${region}: record names ${d.record.name}`);
    return d.record.id;
  }

  /** Write this node's record (its heartbeat). */
  async putNode(record: NodeRecord): Promise<void> {
    const kv = await this.bucket(NODES_BUCKET);
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
