/**
 * Following the region's endpoints: the live reader over the region's bucket
 * (`i6pn_endpoints_<region>`, read whole: no filter for the server to
 * evaluate), where it starts, and the background reconcile.
 *
 * - Start: when the pinned sync_state map says the maps reflect this very
 *   stream (same name, same creation time, same region) up to revision R, and
 *   the stream still reaches R, the agent resumes at R + 1: a restart reads
 *   only what changed while it was away, and a reconcile follows in the
 *   background. Otherwise it reads the region whole and sweeps at the end.
 * - A failed read (lost connection, gap, missed heartbeats) starts again from
 *   the last revision taken, forever, with backoff (a full read under way goes
 *   on, marks and all); if the stream was replaced meanwhile, from its start.
 *   The dataplane keeps its state meanwhile (frozen, never opened).
 * - A missing bucket (the region has no endpoints bucket yet, or the store has
 *   not been migrated) is waited for; nothing is swept on its account.
 * - Every `reconcileIntervalMs` ± 20 % (and soon after a resume), a second
 *   reader goes through the bucket beside the live one (MembershipSync.reconcile).
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { isBucketGone } from '../lib/nats.js';
import { endpointsBucket, kvStream, kvSubject } from '../lib/schema.js';
import type { SyncState } from './bpf/dataplane.js';
import type { Logger } from './log.js';
import type { AgentMetrics } from './metrics.js';
import { StreamReader, backoff } from './reader.js';
import { streamId, type LocalEndpoint, type MembershipSync, type Operation } from './sync.js';

export interface FollowerOptions {
  nc: NatsConnection;
  /** The connection's inbox prefix (the agent's credentials may subscribe there only). */
  inboxPrefix?: string;
  jsm: JetStreamManager;
  region: string;
  regionId: number;
  sync: MembershipSync;
  metrics: AgentMetrics;
  log: Logger;
  reconcileIntervalMs: number;
  /** Where the pinned maps stand (sync_state). */
  position: () => SyncState;
  /** The local endpoints known without the store (the adopted veths), for a resume. */
  adoptedLocals: () => LocalEndpoint[];
  /** Called when the maps first reflect the store (read whole and swept, or resumed and caught up). */
  onInitialSync: () => void;
  /** Reader tuning (tests, bench). */
  reader?: { maxBytes?: number; batch?: number; heartbeatMs?: number };
}

/** A reconcile this soon after a resume (or the interval, if shorter). */
const RECONCILE_AFTER_RESUME_MS = 10_000;
/** Deletes that free room in a full map come in bursts: one reconcile for the burst, this long after its first. */
const RECONCILE_FOR_ROOM_MS = 1000;

export class MembershipFollower {
  private readonly o: FollowerOptions;
  private readonly stream: string;
  private readonly prefix: string;
  private stopped = false;
  private live: StreamReader | null = null;
  private reconciler: StreamReader | null = null;
  private reconcileRunning = false;
  private loop: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private soon: NodeJS.Timeout | null = null;
  private streamIdNow: bigint | null = null;
  private started = false;
  private caughtUp = false;
  private initialDone = false;
  private ending: Promise<void> | null = null;
  /** Ends the backoff early (a reconnect). */
  private wake: (() => void) | null = null;
  /** A reconcile for the endpoints the full map refused: scheduled, or wanted again once the running one ends. */
  private forRoom: NodeJS.Timeout | null = null;
  private roomAgain = false;

  constructor(o: FollowerOptions) {
    this.o = o;
    const bucket = endpointsBucket(o.region);
    this.stream = kvStream(bucket);
    this.prefix = kvSubject(bucket, '');
  }

  start(): void {
    this.loop = this.run();
    this.scheduleReconcile();
  }

  /**
   * The next periodic reconcile, at the interval ± 20 %: agents started
   * together (a rollout, a region's power cut) must not read their region
   * together at every interval after.
   */
  private scheduleReconcile(): void {
    if (this.stopped) return;
    const ms = this.o.reconcileIntervalMs * (0.8 + 0.4 * Math.random());
    this.timer = setTimeout(() => {
      this.requestReconcile();
      this.scheduleReconcile();
    }, ms);
    this.timer.unref();
  }

  /** Reconcile now in the background (also periodic). */
  requestReconcile(): void {
    if (this.stopped || !this.caughtUp || this.reconcileRunning || this.o.sync.inFullRead) return;
    void this.reconcile();
  }

  /**
   * The full endpoints map has room again (MembershipSync onRoom): reconcile
   * soon, so the endpoints it refused get in without waiting for the periodic
   * reconcile or a restart. A reconcile under way may have read their keys
   * before the room appeared: then another follows it.
   */
  roomFreed(): void {
    if (this.stopped) return;
    if (this.reconcileRunning) {
      this.roomAgain = true;
      return;
    }
    if (this.forRoom) return;
    this.forRoom = setTimeout(() => {
      this.forRoom = null;
      // Not caught up yet (a read or a full read under way): ask again later.
      if (this.reconcileRunning || !this.caughtUp || this.o.sync.inFullRead) this.roomFreed();
      else this.requestReconcile();
    }, RECONCILE_FOR_ROOM_MS);
    this.forRoom.unref();
  }

  /** The connection came back: start the live read again from the last revision, now (not after the backoff). */
  resume(): void {
    this.live?.stop();
    this.reconciler?.stop();
    this.wake?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.soon) clearTimeout(this.soon);
    if (this.forRoom) clearTimeout(this.forRoom);
    this.live?.stop();
    this.reconciler?.stop();
    this.wake?.();
    await this.loop;
    this.o.sync.flush();
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        await this.follow();
        failures = 0;
      } catch (err) {
        if (this.stopped) break;
        failures++;
        // A full read cut short goes on from where it stopped (its marks stay): the stream is read in order.
        this.o.log.warn(
          { err: { message: (err as Error).message }, attempt: failures, resumeFrom: this.o.sync.lastRevision + 1 },
          'reading the endpoints bucket failed; retrying (the dataplane keeps its last state)',
        );
        await Promise.race([backoff(failures), new Promise<void>((r) => (this.wake = r))]);
        this.wake = null;
      }
    }
  }

  /** One live read: decide where it starts, read until it stops or fails. */
  private async follow(): Promise<void> {
    const { jsm, sync, log, metrics } = this.o;
    let info;
    try {
      info = await jsm.streams.info(this.stream);
    } catch (err) {
      if (isBucketGone(err)) {
        throw new Error(`the region's endpoints bucket ${this.stream.slice(3)} does not exist (no endpoint was ever added to region ${this.o.region}, or the store was not migrated: i6pnctl migrate); waiting for it`);
      }
      throw err;
    }
    const sid = streamId(this.stream, info.created);
    const last = info.state.last_seq;
    let from: number;
    if (!this.started) {
      const p = this.o.position();
      if (p.revision > 0 && p.stream === sid && p.region === this.o.regionId && p.revision <= last) {
        sync.resumeAt(sid, p.revision, this.o.adoptedLocals());
        from = p.revision + 1;
        metrics.membershipStarts.inc({ from: 'revision' });
        log.info({ revision: p.revision, behind: last - p.revision }, 'the pinned maps reflect this stream: resuming after their revision');
      } else {
        sync.beginFullRead(sid, info.state.messages);
        from = 1;
        metrics.membershipStarts.inc({ from: 'snapshot' });
        log.info(
          { stream: this.stream, messages: info.state.messages, pinned: p.revision > 0 ? { revision: p.revision, sameStream: p.stream === sid, region: p.region } : null },
          'reading the region whole',
        );
      }
      this.started = true;
    } else if (this.streamIdNow === sid && sync.lastRevision <= last) {
      // The same stream: go on after the last revision taken (a full read under way continues, marks and all).
      from = sync.lastRevision + 1;
    } else {
      log.warn({ stream: this.stream, lastRevision: sync.lastRevision, streamLast: last }, 'the endpoints stream was replaced: reading the region whole');
      sync.beginFullRead(sid);
      from = 1;
      metrics.membershipStarts.inc({ from: 'snapshot' });
    }
    this.streamIdNow = sid;
    this.caughtUp = false;
    const reader = new StreamReader({
      nc: this.o.nc,
      ...(this.o.inboxPrefix !== undefined ? { inboxPrefix: this.o.inboxPrefix } : {}),
      jsm,
      stream: this.stream,
      prefix: this.prefix,
      startSeq: from,
      headSeq: last,
      log,
      ...this.o.reader,
      onMessage: (key, data, seq, op, timeMs) => void sync.ingest(key, data, seq, op, timeMs),
      onIdle: () => this.flush(),
      onHead: () => this.atHead(),
    });
    this.live = reader;
    if (this.stopped) return;
    const pending = await reader.start();
    log.info({ from, pending }, from === 1 ? 'reading every endpoint of the region' : 'following the endpoint updates');
    try {
      await reader.done;
    } finally {
      this.live = null;
      this.flush();
      await this.ending;
    }
  }

  private flush(): void {
    try {
      this.o.sync.flush();
    } catch (err) {
      this.o.log.error({ err }, 'applying membership updates failed');
    }
  }

  /** The live reader has every message there was: end a full read, and the first time say so. */
  private atHead(): void {
    if (this.caughtUp) return;
    this.caughtUp = true;
    const sync = this.o.sync;
    if (!sync.inFullRead) {
      this.flush();
      this.initial(false);
      return;
    }
    const t0 = Date.now();
    this.ending = (async () => {
      try {
        const removed = await sync.endFullRead();
        this.o.metrics.reconciles.inc({ result: 'ok' });
        if (removed) this.o.metrics.reconcileRemoved.inc(removed);
        this.o.log.info({ endpoints: sync.size, removed, revision: sync.lastRevision, ms: Date.now() - t0 }, 'read the region whole and swept the endpoints map');
        this.initial(true);
      } catch (err) {
        this.o.metrics.reconciles.inc({ result: 'failed' });
        this.o.log.error({ err }, 'sweeping the endpoints map failed; reading again');
        this.live?.stop();
      } finally {
        this.ending = null;
      }
    })();
  }

  private initial(swept: boolean): void {
    if (this.initialDone) return;
    this.initialDone = true;
    this.o.log.info({ endpoints: this.o.sync.size, revision: this.o.sync.lastRevision }, 'initial sync done');
    this.o.onInitialSync();
    if (!swept && this.o.sync.needsReconcile) {
      // At once while the resolver answers SERVFAIL for want of it; otherwise a little later, the restart's own work done.
      const delay = this.o.sync.namesWaiting ? 0 : Math.min(RECONCILE_AFTER_RESUME_MS, this.o.reconcileIntervalMs);
      this.soon = setTimeout(() => this.requestReconcile(), delay);
      this.soon.unref();
    }
  }

  /** A second reader through the whole bucket, beside the live one. */
  private async reconcile(): Promise<void> {
    const { sync, log, metrics } = this.o;
    const t0 = Date.now();
    this.reconcileRunning = true;
    let head: number;
    try {
      head = (await this.o.jsm.streams.info(this.stream)).state.last_seq;
    } catch (err) {
      this.reconcileRunning = false;
      metrics.reconciles.inc({ result: 'failed' });
      log.warn({ err: { message: (err as Error).message } }, 'the reconcile could not start; the next one is at the next interval');
      return;
    }
    sync.beginReconcile(sync.lastRevision);
    let finished: Promise<number> | null = null;
    const reader = new StreamReader({
      nc: this.o.nc,
      ...(this.o.inboxPrefix !== undefined ? { inboxPrefix: this.o.inboxPrefix } : {}),
      jsm: this.o.jsm,
      stream: this.stream,
      prefix: this.prefix,
      startSeq: 1,
      headSeq: Math.max(head, sync.lastRevision),
      log,
      ...this.o.reader,
      onMessage: (key: string, data: Uint8Array, seq: number, op: Operation) => {
        if (!finished) sync.reconcile(key, data, seq, op);
      },
      onIdle: () => this.flush(),
      onHead: () => {
        finished = sync.endReconcile();
        reader.stop();
      },
    });
    this.reconciler = reader;
    try {
      const pending = await reader.start();
      log.info({ pending, upTo: sync.lastRevision }, 'reconciling the endpoints map with the store, in the background');
      await reader.done;
      if (!finished) throw new Error('the reconcile stopped before it read the whole bucket');
      const removed = await finished;
      metrics.reconciles.inc({ result: 'ok' });
      if (removed) metrics.reconcileRemoved.inc(removed);
      log.info({ endpoints: sync.size, removed, ms: Date.now() - t0 }, 'reconciled the endpoints map with the store');
    } catch (err) {
      sync.abortReconcile();
      metrics.reconciles.inc({ result: 'failed' });
      if (!this.stopped) log.warn({ err: { message: (err as Error).message } }, 'the reconcile failed; the next one is at the next interval');
    } finally {
      this.reconciler = null;
      this.reconcileRunning = false;
      if (this.roomAgain) {
        this.roomAgain = false;
        this.roomFreed();
      }
    }
  }
}
