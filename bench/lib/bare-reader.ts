/**
 * The bare NATS client of `make bench-agent`'s sync baseline: a process that
 * connects, creates an ephemeral pull consumer (no acks, in memory) on a
 * stream and receives every message, counting them and nothing else: the
 * time the server and the client library take to hand over a region, with no
 * decoding and no maps. It asks for messages the way the agent's reader does
 * (two requests of 2 MiB open), so the two differ only by the agent's work.
 *
 *   node --import=tsx bench/lib/bare-reader.ts <nats url> <stream>
 *
 * Prints one JSON line: { messages, bytes, ms } (ms: connect → last message).
 */
import { AckPolicy, DeliverPolicy, jetstreamManager } from '@nats-io/jetstream';
import { connect, createInbox } from '@nats-io/transport-node';

const [url, stream] = process.argv.slice(2);
if (!url || !stream) {
  console.error('usage: bare-reader.ts <nats url> <stream>');
  process.exit(2);
}
const t0 = performance.now();
const nc = await connect({ servers: url });
const jsm = await jetstreamManager(nc);
const total = (await jsm.streams.info(stream)).state.messages; // nothing writes meanwhile
const inbox = createInbox();
let messages = 0;
let bytes = 0;
let open = 0;
const BATCH = 16_384;
let done!: () => void;
const finished = new Promise<void>((r) => (done = r));
const ci = await jsm.consumers.add(stream, { ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All, mem_storage: true, inactive_threshold: 60_000_000_000 });
const next = `$JS.API.CONSUMER.MSG.NEXT.${stream}.${ci.name}`;
const request = JSON.stringify({ batch: BATCH, max_bytes: 2 * 1024 * 1024, expires: 30_000_000_000 });
const ask = (): void => {
  open++;
  nc.publish(next, request, { reply: inbox });
};
let inRequest = 0;
nc.subscribe(inbox, {
  callback: (_err, m) => {
    if (!m.reply) {
      // A request ended (max bytes reached, expired): ask for another.
      open--;
      inRequest = 0;
      ask();
      return;
    }
    messages++;
    bytes += m.data.length;
    if (++inRequest === BATCH) {
      open--;
      inRequest = 0;
      ask();
    }
    if (messages === total) done();
  },
});
ask();
ask();
await finished;
const ms = performance.now() - t0;
console.log(JSON.stringify({ messages, bytes, ms, open }));
await nc.close();
