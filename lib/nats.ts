/**
 * The NATS connection of i6pn, for the controller and the agent alike: how to
 * connect (credentials, reconnecting forever, pings) and how to open the
 * store's buckets of the table of lib/schema.ts, either created when absent
 * (the controller: openBucket) or only bound (an agent or a gateway, whose
 * credentials cannot create a stream, deploy/nats: bindBucket).
 */
import { readFileSync } from 'node:fs';
import { StorageType } from '@nats-io/jetstream';
import type { KV, Kvm } from '@nats-io/kv';
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import {
  ClosedConnectionError,
  connect,
  ConnectionError,
  credsAuthenticator,
  DrainingConnectionError,
  NoRespondersError,
  RequestError,
  TimeoutError,
  type NatsConnection,
} from '@nats-io/transport-node';
import type { BucketSpec } from './schema.js';

export interface ConnectOptions {
  servers: string | string[];
  /** NATS credentials file (JWT + nkey seed). */
  creds?: string | undefined;
  /** Connection name shown by the server (monitoring, logs). */
  name: string;
  /** Where replies arrive (default _INBOX); an agent's is its own, so no other node reads them. */
  inboxPrefix?: string;
  /** Milliseconds to wait for the first connection (default 5000). */
  timeout?: number;
  /** Keep trying until the first connection succeeds (the agent), instead of failing fast (the CLI). */
  waitOnFirstConnect?: boolean;
  /** Ping every this many ms; a connection that misses `maxPingOut` answers in a row is dropped and made again. */
  pingIntervalMs?: number;
  maxPingOut?: number;
}

/** A credentials file that cannot be read. */
/** `e` and its causes, outermost first (nats.js wraps: a RequestError around a NoRespondersError, ...). */
function causes(e: unknown): unknown[] {
  const out: unknown[] = [];
  for (let c = e; c !== undefined && c !== null && out.length < 8; c = (c as { cause?: unknown }).cause) out.push(c);
  return out;
}

/**
 * Whether `e` says the server has no JetStream (for this account): nobody
 * answers the JetStream API, or it answers that it is not enabled. By the
 * errors' classes and API codes, not their messages. (nats.js's own
 * JetStreamNotEnabled class is not exported: its name is what it offers.)
 */
export function isJetStreamMissing(e: unknown): boolean {
  return causes(e).some(
    (c) =>
      c instanceof NoRespondersError ||
      (c instanceof RequestError && c.isNoResponders()) ||
      (c instanceof Error && c.name === 'JetStreamNotEnabled') ||
      (c instanceof JetStreamApiError && c.code === JetStreamApiCodes.JetStreamNotEnabledForAccount),
  );
}

/** The bucket's stream is not there (stream info, keys, destroy). */
export function isBucketGone(e: unknown): boolean {
  return e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound;
}

/** Whether `e` is the connection failing a request: a timeout, a closed, draining or broken connection. */
export function isConnectionFailure(e: unknown): boolean {
  return causes(e).some(
    (c) =>
      c instanceof TimeoutError ||
      c instanceof ClosedConnectionError ||
      c instanceof DrainingConnectionError ||
      c instanceof ConnectionError ||
      (c instanceof RequestError && !c.isNoResponders()),
  );
}

export class CredsError extends Error {
  override readonly name = 'CredsError';
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`cannot read NATS credentials ${path}: ${reason}`);
  }
}

export function readCreds(path: string): Uint8Array {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new CredsError(path, (e as Error).message);
  }
}

/** Connect; once connected, the connection reconnects forever (every second). */
export function connectNats(o: ConnectOptions): Promise<NatsConnection> {
  return connect({
    servers: o.servers,
    name: o.name,
    ...(o.inboxPrefix !== undefined ? { inboxPrefix: o.inboxPrefix } : {}),
    timeout: o.timeout ?? 5000,
    waitOnFirstConnect: o.waitOnFirstConnect ?? false,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 1000,
    ...(o.pingIntervalMs !== undefined ? { pingInterval: o.pingIntervalMs } : {}),
    ...(o.maxPingOut !== undefined ? { maxPingOut: o.maxPingOut } : {}),
    ...(o.creds ? { authenticator: credsAuthenticator(readCreds(o.creds)) } : {}),
  });
}

/** How the controller creates a bucket that is not there yet. */
export interface BucketSettings {
  /** Values per key, unless the table fixes it (BucketSpec.history). */
  history: number;
  replicas: number;
  storage: 'file' | 'memory';
  maxValueSize: number;
  /** JetStream request timeout, ms. */
  timeout: number;
}

/**
 * A bucket of the table, created with `settings` when it is not there (one
 * that is there is opened as it is: its settings are never changed).
 */
export async function openBucket(kvm: Kvm, spec: BucketSpec, settings: BucketSettings): Promise<KV> {
  const kv = await kvm.create(spec.name, {
    history: spec.history ?? settings.history,
    replicas: settings.replicas,
    storage: settings.storage === 'memory' ? StorageType.Memory : StorageType.File,
    maxValueSize: settings.maxValueSize,
    timeout: settings.timeout,
    description: spec.description,
  });
  if (settings.replicas > 1) await untilDirectGetAnswers(kv, settings.timeout);
  return kv;
}

/**
 * A replicated stream that was just created answers direct gets only once its
 * replicas have subscribed to them, a moment after the create returns; until
 * then a get fails with "no responders". Wait for that (a get of a key that
 * no bucket holds), so the first read after a create is an answer.
 */
async function untilDirectGetAnswers(kv: KV, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 10; ; delay = Math.min(delay * 2, 250)) {
    try {
      await kv.get('i6pn-ready-probe');
      return;
    } catch (e) {
      if (!(e instanceof RequestError && e.isNoResponders()) || Date.now() > deadline) throw e;
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}

/**
 * An existing bucket, only bound (a missing one is an error): what an agent or
 * a gateway, whose credentials cannot create a stream, opens. `direct`: gets
 * are direct gets ($JS.API.DIRECT.GET), what an identity allowed to read one
 * key of a bucket may do.
 */
export function bindBucket(kvm: Kvm, name: string, opts: { direct?: boolean } = {}): Promise<KV> {
  return kvm.open(name, opts.direct ? { allow_direct: true } : {});
}
