/**
 * Following the region's endpoints in the store: an ordered push consumer on
 * the endpoints bucket's stream, filtered to `<region>.>` (one wildcard
 * filter, which nats-server 2.9 takes too). It is read as an iterator, so the
 * server's flow-control requests are answered only when the agent reaches
 * them: the server cannot run ahead of the agent by more than its flow-control
 * window, and a million-entry region streams through in bounded memory.
 * (`kv.watch()` answers flow control on arrival and queues without bound.)
 * Same subjects as kv.watch(), so the agent's NATS permissions cover it.
 *
 * - Start and every reconcile: deliver the last value of every key
 *   (a snapshot), then follow. When the snapshot is in, the sync sweeps.
 * - Lost connection: the ordered consumer recreates itself from the last
 *   sequence it delivered; if it gives up, this module resumes from the last
 *   revision applied, forever, with backoff. The dataplane keeps its state
 *   meanwhile (frozen, never opened).
 */
import { setImmediate as yieldToLoop, setTimeout as sleep } from 'node:timers/promises';
import { DeliverPolicy, type JetStreamClient, type JsMsg, type ConsumerMessages } from '@nats-io/jetstream';
import { ENDPOINTS_BUCKET, regionEndpointsFilter } from '../lib/schema.js';
import type { Logger } from './log.js';
import type { AgentMetrics } from './metrics.js';
import type { MembershipSync, StoreEntry } from './sync.js';

const KV_OPERATION = 'KV-Operation';
/** Longest stretch of work between two turns of the event loop. */
const YIELD_AFTER_MS = 10;

export interface FollowerOptions {
  js: JetStreamClient;
  region: string;
  sync: MembershipSync;
  metrics: AgentMetrics;
  log: Logger;
  reconcileIntervalMs: number;
  /** Called when the first snapshot has been applied and swept. */
  onInitialSync: () => void;
  bucket?: string;
}

export class MembershipFollower {
  private readonly o: FollowerOptions;
  private readonly stream: string;
  private readonly prefix: string;
  private stopped = false;
  private reconcileRequested = false;
  private messages: ConsumerMessages | null = null;
  private timer: NodeJS.Timeout | null = null;
  private loop: Promise<void> | null = null;
  private initialDone = false;
  private flushScheduled = false;

  constructor(o: FollowerOptions) {
    this.o = o;
    const bucket = o.bucket ?? ENDPOINTS_BUCKET;
    this.stream = `KV_${bucket}`;
    this.prefix = `$KV.${bucket}.`;
  }

  start(): void {
    this.loop = this.run();
    // A snapshot still being read is a reconcile already.
    this.timer = setInterval(() => {
      if (!this.o.sync.inSnapshot) this.requestReconcile();
    }, this.o.reconcileIntervalMs);
    this.timer.unref();
  }

  /** Re-read every key and sweep (the periodic reconcile; also callable on demand). */
  requestReconcile(): void {
    this.reconcileRequested = true;
    this.messages?.stop();
  }

  /**
   * The connection came back: resume now from the last revision with a fresh
   * consumer rather than wait for the old one's missed heartbeats.
   */
  resume(): void {
    this.messages?.stop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.messages?.stop();
    await this.loop;
  }

  private async run(): Promise<void> {
    let snapshot = true;
    let failures = 0;
    while (!this.stopped) {
      this.reconcileRequested = false;
      try {
        await this.follow(snapshot);
        failures = 0;
        // Ended: by a reconcile request (snapshot next), or by the consumer giving up (resume).
        snapshot = this.reconcileRequested;
      } catch (err) {
        if (this.stopped) break;
        failures++;
        const inSnapshot = this.o.sync.inSnapshot;
        if (inSnapshot) {
          this.o.sync.abortSnapshot();
          this.o.metrics.reconciles.inc({ result: 'failed' });
        }
        // A snapshot cut short is started over (its keys do not arrive in revision order); updates resume.
        snapshot = inSnapshot || snapshot || this.reconcileRequested;
        const backoff = Math.min(10_000, 250 * 2 ** Math.min(failures, 6));
        this.o.log.warn(
          { err, retryInMs: backoff, resumeFrom: snapshot ? 'snapshot' : this.o.sync.lastRevision + 1 },
          'reading the endpoints bucket failed; retrying (the dataplane keeps its last state)',
        );
        await sleep(backoff);
      }
    }
    this.o.sync.flush();
  }

  private async follow(snapshot: boolean): Promise<void> {
    const { js, sync, log } = this.o;
    const filter = `${this.prefix}${regionEndpointsFilter(this.o.region)}`;
    const consumer = await js.consumers.getPushConsumer(
      this.stream,
      snapshot
        ? { filter_subjects: filter, deliver_policy: DeliverPolicy.LastPerSubject }
        : { filter_subjects: filter, deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: sync.lastRevision + 1 },
    );
    const info = await consumer.info(true);
    log.info(
      { snapshot, pending: info.num_pending, from: snapshot ? 'last per key' : sync.lastRevision + 1 },
      snapshot ? 'reading every endpoint of the region' : 'resuming the endpoint updates',
    );
    if (snapshot) {
      sync.beginSnapshot();
      if (info.num_pending === 0) await this.finishSnapshot();
    }
    const messages = await consumer.consume();
    this.messages = messages;
    if (this.stopped || this.reconcileRequested) messages.stop();
    try {
      // Queued messages are handed out without a trip through the event loop: give it a turn every
      // few milliseconds of work, so that scrapes, probes and timers never wait behind a large region.
      let since = performance.now();
      for await (const m of messages) {
        const wrote = sync.ingest(this.entryOf(m));
        if (sync.inSnapshot && m.info.pending === 0) {
          await this.finishSnapshot();
          since = performance.now();
        } else {
          if (!wrote) this.scheduleFlush();
          if (wrote || performance.now() - since > YIELD_AFTER_MS) {
            await yieldToLoop();
            since = performance.now();
          }
        }
        if (this.stopped || this.reconcileRequested) break;
      }
    } finally {
      this.messages = null;
      messages.stop();
      sync.flush();
    }
    if (sync.inSnapshot && !this.stopped && !this.reconcileRequested) {
      throw new Error('the consumer stopped before the snapshot was complete');
    }
    if (sync.inSnapshot) sync.abortSnapshot();
  }

  private async finishSnapshot(): Promise<void> {
    const t0 = Date.now();
    try {
      const removed = await this.o.sync.endSnapshot();
      this.o.metrics.reconciles.inc({ result: 'ok' });
      if (removed) this.o.metrics.reconcileRemoved.inc(removed);
      this.o.log.info(
        { endpoints: this.o.sync.size, removed, revision: this.o.sync.lastRevision, ms: Date.now() - t0 },
        this.initialDone ? 'reconciled the endpoints map with the store' : 'initial sync done',
      );
    } catch (err) {
      this.o.metrics.reconciles.inc({ result: 'failed' });
      throw err;
    }
    if (!this.initialDone) {
      this.initialDone = true;
      this.o.onInitialSync();
    }
  }

  /** Write what has been taken once the input pauses (a burst becomes one batch). */
  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      try {
        this.o.sync.flush();
      } catch (err) {
        this.o.log.error({ err }, 'applying membership updates failed');
      }
    });
  }

  private entryOf(m: JsMsg): StoreEntry {
    const op = m.headers?.get(KV_OPERATION);
    return {
      key: m.subject.startsWith(this.prefix) ? m.subject.slice(this.prefix.length) : m.subject,
      value: m.data,
      revision: m.seq,
      operation: op === 'DEL' ? 'DEL' : op === 'PURGE' ? 'PURGE' : 'PUT',
      created: m.time,
    };
  }
}
