/**
 * Reading a JetStream stream in order, fast and in bounded memory: an
 * ephemeral pull consumer (no acks, in memory) driven over a core NATS
 * subscription, with the message's stream sequence, time and pending count
 * parsed from its reply subject. This is the agent's one way of reading its
 * region's endpoints bucket.
 *
 * Why not nats.js's consumers: their per-message objects (JsMsg, its parsed
 * info, the iterator) cost more than the agent's whole decode and map write.
 * On this repository's bench machine the ordered push consumer took 9 µs of
 * client CPU per message and nats.js's ordered pull consumer 19 s for a
 * million; this reader receives the same million at the speed the server
 * sends it (bench/README.md).
 *
 * - In-flight bytes are bounded: at most two pull requests are open, each of
 *   `maxBytes`; the next one is asked for when one is done, so the server can
 *   never run ahead of the agent by more than 2 × maxBytes.
 * - Order and completeness: the consumer's delivery sequence must step by
 *   one. A gap, a missed heartbeat, a deleted consumer or a server error ends
 *   the read with an error; the caller starts a new one from the last
 *   sequence it took (the ordered-consumer discipline).
 * - Callbacks run in the subscription's callback, synchronously, one message
 *   at a time; `onIdle` runs once the messages of a socket read are taken.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { AckPolicy, DeliverPolicy, type JetStreamManager } from '@nats-io/jetstream';
import { createInbox, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { KV_OPERATION_HEADER } from '../lib/schema.js';
import type { Logger } from './log.js';
import { Operation } from './sync.js';

export interface ReaderOptions {
  nc: NatsConnection;
  /** The connection's inbox prefix (its credentials may subscribe there only; default `_INBOX`). */
  inboxPrefix?: string;
  jsm: JetStreamManager;
  stream: string;
  /** The subjects' common prefix, removed to make the key (`$KV.<bucket>.`). */
  prefix: string;
  /** Stream sequence to start at (1: the first message). */
  startSeq: number;
  /** One message: its key, payload, stream sequence, KV operation, server time (ms) and the messages after it. */
  onMessage: (key: string, data: Uint8Array, seq: number, op: Operation, timeMs: number, pending: number) => void;
  /** The messages received so far are taken (the input paused). */
  onIdle?: () => void;
  /**
   * The read reached the stream's head (once): a message with nothing pending
   * after it, a message at or past `headSeq`, or an idle heartbeat (the server
   * has nothing to send). Not the pending count alone: nats-server 2.9 keeps
   * counting messages that a newer value of their key replaced before they
   * were delivered, so a read during updates may never see pending reach 0.
   */
  onHead?: () => void;
  /** The stream's last sequence when the read began (see onHead). */
  headSeq?: number;
  log: Logger;
  /** Bytes per pull request (default 2 MiB; two are open at most). */
  maxBytes?: number;
  /** Messages per pull request (default 16384). */
  batch?: number;
  /** The server's idle heartbeat while a request is open (default 5 s); three missed end the read. */
  heartbeatMs?: number;
  /** A pull request's lifetime (default 30 s). */
  expiresMs?: number;
}

const NS = 1_000_000;
const OPEN_REQUESTS = 2;
const ACK_PREFIX = '$JS.ACK.';
const dots = new Int32Array(16);

/** The numeric value of s[from, to) (decimal digits), or -1. */
function num(s: string, from: number, to: number): number {
  if (from >= to) return -1;
  let v = 0;
  for (let i = from; i < to; i++) {
    const d = s.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

/** The reply of a JetStream message: stream sequence, delivery sequence, time (ms), pending; null if not one. */
export function parseAckReply(reply: string, out: { seq: number; dseq: number; timeMs: number; pending: number }): boolean {
  if (!reply.startsWith(ACK_PREFIX)) return false;
  let n = 0;
  for (let i = 0; i < reply.length && n < dots.length; i++) if (reply.charCodeAt(i) === 46) dots[n++] = i;
  // v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending> (8 dots)
  // v2: $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>[.<token>]
  const base = n === 8 ? 4 : n === 10 || n === 11 ? 6 : -1;
  if (base < 0) return false;
  out.seq = num(reply, dots[base]! + 1, dots[base + 1]!);
  out.dseq = num(reply, dots[base + 1]! + 1, dots[base + 2]!);
  out.timeMs = num(reply, dots[base + 2]! + 1, dots[base + 3]!) / NS;
  out.pending = num(reply, dots[base + 3]! + 1, base + 4 < n ? dots[base + 4]! : reply.length);
  return out.seq > 0 && out.dseq > 0 && out.pending >= 0;
}

export class ReadError extends Error {
  override readonly name = 'ReadError';
}

export class StreamReader {
  private readonly o: Required<Omit<ReaderOptions, 'onIdle' | 'onHead' | 'headSeq' | 'inboxPrefix'>> & Pick<ReaderOptions, 'onIdle' | 'onHead' | 'headSeq' | 'inboxPrefix'>;
  private atHead = false;
  private sub: Subscription | null = null;
  private consumer = '';
  private inbox = '';
  private nextSubject = '';
  private request = '';
  /** Messages still to come of each open request, oldest first (the server serves them in order). */
  private readonly open: number[] = [];
  private lastDseq = 0;
  private heard = true;
  private silentPeriods = 0;
  private watchdog: NodeJS.Timeout | null = null;
  private idleScheduled = false;
  private stopped = false;
  private settle!: (err?: Error) => void;
  private readonly reply = { seq: 0, dseq: 0, timeMs: 0, pending: 0 };
  /** Stream sequence of the last message taken (0: none yet). */
  lastSeq = 0;
  /** Resolves when stop() is called; rejects when the read fails. */
  readonly done: Promise<void>;

  constructor(o: ReaderOptions) {
    this.o = { maxBytes: 2 * 1024 * 1024, batch: 16_384, heartbeatMs: 5000, expiresMs: 30_000, ...o };
    this.done = new Promise<void>((resolve, reject) => {
      this.settle = (err) => (err ? reject(err) : resolve());
    });
    this.done.catch(() => undefined);
  }

  /** Create the consumer and ask for the first messages. Resolves with the messages pending at creation. */
  async start(): Promise<number> {
    const o = this.o;
    this.inbox = createInbox(o.inboxPrefix);
    this.sub = o.nc.subscribe(this.inbox, { callback: (err, m) => (err ? this.fail(new ReadError(`subscription failed: ${err.message}`)) : this.take(m)) });
    let info;
    try {
      info = await o.jsm.consumers.add(o.stream, {
        ack_policy: AckPolicy.None,
        deliver_policy: o.startSeq <= 1 ? DeliverPolicy.All : DeliverPolicy.StartSequence,
        ...(o.startSeq > 1 ? { opt_start_seq: o.startSeq } : {}),
        mem_storage: true,
        num_replicas: 1,
        inactive_threshold: 60_000 * NS,
        max_waiting: 8,
      });
    } catch (err) {
      this.sub.unsubscribe();
      throw err;
    }
    this.consumer = info.name;
    this.nextSubject = `$JS.API.CONSUMER.MSG.NEXT.${o.stream}.${info.name}`;
    this.request = JSON.stringify({ batch: o.batch, max_bytes: o.maxBytes, expires: o.expiresMs * NS, idle_heartbeat: o.heartbeatMs * NS });
    for (let i = 0; i < OPEN_REQUESTS; i++) this.ask();
    if (info.num_pending === 0) this.head();
    this.watchdog = setInterval(() => this.check(), o.heartbeatMs);
    this.watchdog.unref();
    if (this.stopped) this.cleanup();
    return info.num_pending;
  }

  /** End the read (done resolves) and delete the consumer. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.cleanup();
    this.settle();
  }

  private fail(err: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    this.cleanup();
    this.settle(err);
  }

  private cleanup(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
    this.sub?.unsubscribe();
    this.sub = null;
    if (this.consumer && !this.o.nc.isClosed()) {
      const name = this.consumer;
      this.consumer = '';
      void this.o.jsm.consumers.delete(this.o.stream, name).catch(() => undefined);
    }
  }

  private ask(): void {
    this.open.push(this.o.batch);
    this.o.nc.publish(this.nextSubject, this.request, { reply: this.inbox });
  }

  /** The oldest open request is done: ask for the next one. */
  private requestDone(): void {
    this.open.shift();
    if (!this.stopped) while (this.open.length < OPEN_REQUESTS) this.ask();
  }

  private check(): void {
    if (this.heard) {
      this.heard = false;
      this.silentPeriods = 0;
      return;
    }
    // Open requests get a heartbeat every heartbeatMs: silence means the consumer or the route is gone.
    if (++this.silentPeriods >= 3) this.fail(new ReadError(`no message or heartbeat from consumer ${this.consumer} for ${3 * this.o.heartbeatMs} ms`));
  }

  private take(m: Msg): void {
    if (this.stopped) return;
    this.heard = true;
    const reply = m.reply;
    if (!reply) {
      this.status(m);
      return;
    }
    const r = this.reply;
    if (!parseAckReply(reply, r)) {
      this.o.log.warn({ subject: m.subject, reply }, 'unexpected message on the reader inbox; ignored');
      return;
    }
    if (r.dseq !== this.lastDseq + 1) {
      this.fail(new ReadError(`delivery sequence jumped from ${this.lastDseq} to ${r.dseq} (stream sequence ${r.seq}); reading again from ${this.lastSeq + 1}`));
      return;
    }
    this.lastDseq = r.dseq;
    this.lastSeq = r.seq;
    const subject = m.subject;
    const key = subject.startsWith(this.o.prefix) ? subject.slice(this.o.prefix.length) : subject;
    let op: Operation = Operation.PUT;
    const h = m.headers;
    if (h) {
      const v = h.get(KV_OPERATION_HEADER);
      if (v === 'DEL') op = Operation.DEL;
      else if (v === 'PURGE') op = Operation.PURGE;
    }
    if (this.open.length && --this.open[0]! === 0) this.requestDone();
    try {
      this.o.onMessage(key, m.data, r.seq, op, r.timeMs, r.pending);
      if (!this.atHead && (r.pending === 0 || r.seq >= (this.o.headSeq ?? Infinity))) this.head();
    } catch (err) {
      // Taking it failed (a bug, or the map refused in a way the sync did not expect): read again from here.
      this.lastSeq = r.seq - 1;
      this.fail(new ReadError(`processing ${key} (stream sequence ${r.seq}) failed: ${(err as Error).stack ?? String(err)}`));
      return;
    }
    if (!this.idleScheduled && this.o.onIdle) {
      this.idleScheduled = true;
      setImmediate(() => {
        this.idleScheduled = false;
        if (!this.stopped) this.o.onIdle!();
      });
    }
  }

  private head(): void {
    this.atHead = true;
    this.o.onHead?.();
  }

  /** A status message: a heartbeat, or the end of a pull request, or trouble. */
  private status(m: Msg): void {
    const h = m.headers;
    const code = h?.code ?? 0;
    const description = (h?.description ?? '').toLowerCase();
    if (code === 100) {
      // An idle heartbeat: the open request waits for messages there are none of.
      if (!this.atHead && (h?.description ?? '').toLowerCase().includes('idle')) this.head();
      return;
    }
    if (code === 404 || code === 408) {
      this.requestDone(); // no messages now / the request expired
      return;
    }
    if (code === 409 && (description.includes('exceeds maxbytes') || description.includes('batch completed') || description.includes('exceeded max'))) {
      this.requestDone();
      return;
    }
    this.fail(new ReadError(`consumer ${this.consumer} on ${this.o.stream}: status ${code} ${h?.description ?? ''}`.trim()));
  }
}

/** Wait before the attempt-th retry: 0.5 s, doubling, at most 10 s. */
export async function backoff(attempt: number): Promise<void> {
  await sleep(Math.min(10_000, 250 * 2 ** Math.min(attempt, 6)));
}
