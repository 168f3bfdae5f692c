/**
 * The agent's side of the membership store, on lib/'s connection
 * (lib/nats.ts) and bucket table (lib/schema.ts): the connection's state in
 * the agent's log and metrics, the region lookup (regions bucket), the node
 * heartbeat (nodes bucket), the JetStream clients the endpoint follower reads
 * with, and the publication of drop events. Buckets are bound, never created:
 * only the subjects the agent's NATS identity may use (deploy/nats derives
 * them from the same table): reads of the buckets an agent reads, its own
 * heartbeat key, its own events subject, and replies below its own inbox prefix.
 */
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { PermissionViolationError, type NatsConnection } from '@nats-io/transport-node';
import { EVENTS_SUBJECT_PREFIX } from '../lib/events.js';
import { bindBucket, connectNats } from '../lib/nats.js';
import { BUCKET_TABLE, nodeKey, type NodeRecord } from '../lib/schema.js';
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
  /** Connection name shown by the server (`i6pn-agent@<node>`, `i6pn-gateway@<address>`). */
  name: string;
  /** Where replies arrive: an agent's own (agentInboxPrefix(node)), so no other node reads them; default _INBOX. */
  inboxPrefix?: string;
  log: Logger;
  /** Connection state changes (true: connected). */
  onConnected: (connected: boolean) => void;
  /** The connection was lost (once per loss; reconnecting follows). */
  onDisconnect?: () => void;
  /** The connection came back after a loss. */
  onReconnect: () => void;
  /** The server refused a publish to one of the events subjects (the credentials do not allow it). */
  onEventsDenied?: (subject: string) => void;
}

export class AgentStore {
  readonly js: JetStreamClient;
  /** Stream and consumer requests (the endpoint reader's pull consumers). */
  readonly jsm: JetStreamManager;
  private readonly kvm: Kvm;
  private readonly buckets = new Map<string, Promise<KV>>();

  private connected_ = true;

  private constructor(
    readonly nc: NatsConnection,
    jsm: JetStreamManager,
    /** Where this connection's replies arrive (agentInboxPrefix for an agent). */
    readonly inboxPrefix: string,
  ) {
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
    const inboxPrefix = o.inboxPrefix ?? '_INBOX';
    const nc = await connectNats({
      servers: o.servers,
      creds: o.creds,
      name: o.name,
      inboxPrefix,
      waitOnFirstConnect: true,
      pingIntervalMs: 10_000,
      maxPingOut: 3,
    });
    o.onConnected(true);
    o.log.info({ server: nc.getServer() }, 'connected to NATS');
    // No $JS.API.INFO check here: the agent's credentials need not allow account info.
    const store = new AgentStore(nc, await jetstreamManager(nc, { timeout: JS_API_TIMEOUT_MS, checkAPI: false }), inboxPrefix);
    const connected = (up: boolean): void => {
      store.connected_ = up;
      o.onConnected(up);
    };
    void (async () => {
      for await (const s of nc.status()) {
        switch (s.type) {
          case 'disconnect':
            connected(false);
            o.onDisconnect?.();
            o.log.warn({ server: s.server }, 'NATS connection lost; reconnecting (the dataplane keeps its last state)');
            break;
          case 'reconnect':
            connected(true);
            o.log.info({ server: s.server }, 'reconnected to NATS');
            o.onReconnect();
            break;
          case 'error':
            if (s.error instanceof PermissionViolationError && s.error.operation === 'publish' && s.error.subject.startsWith(`${EVENTS_SUBJECT_PREFIX}.`)) {
              o.onEventsDenied?.(s.error.subject);
              break;
            }
            o.log.warn({ err: s.error }, 'NATS error');
            break;
          default:
            break;
        }
      }
    })();
    void nc.closed().then((err) => {
      connected(false);
      if (err) o.log.error({ err }, 'NATS connection closed');
    });
    return store;
  }

  /** Connected now (false between a disconnect and the reconnect, and once closed). */
  get connected(): boolean {
    return this.connected_ && !this.nc.isClosed();
  }

  /** One drop event on core NATS (see agent/events.ts); throws when the connection cannot take it. */
  publish(subject: string, data: Uint8Array): void {
    this.nc.publish(subject, data);
  }

  /**
   * A bucket, opened once (a failed open is tried again next time). `direct`:
   * gets are direct gets ($JS.API.DIRECT.GET), what an identity allowed to
   * read one key of a bucket may do (the gateway's own record).
   */
  bucket(name: string, opts: { direct?: boolean } = {}): Promise<KV> {
    let b = this.buckets.get(name);
    if (!b) {
      b = bindBucket(this.kvm, name, opts);
      b.catch(() => this.buckets.delete(name));
      this.buckets.set(name, b);
    }
    return b;
  }

  /** The region's 16-bit id, or null when the region is not registered; an invalid record throws. */
  async regionId(region: string): Promise<number | null> {
    return (await getRegion({ regions: await this.bucket(BUCKET_TABLE.regions.name) }, region))?.id ?? null;
  }

  /** Write this node's record (its heartbeat). */
  async putNode(record: NodeRecord): Promise<void> {
    const kv = await this.bucket(BUCKET_TABLE.nodes.name);
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
