/**
 * Probe behind the README's "At fleet scale" section, not part of `make
 * bench`: what creating one agent's consumer costs the nats-server, on each
 * layout, with no agent involved. Run it once per server version:
 *
 *   node --import=tsx bench/probes/consumer-create.ts [nats-server binary] [N]
 *
 * 1. A region's own bucket (keys `<ws>.<ep>`, history 1) of N keys, 10 % of
 *    them overwritten so that the stream has the gaps churn leaves: the
 *    agent's consumer (pull, no filter, in memory, no acks) from the first
 *    message, from the middle, and 100 messages before the head (a resume).
 * 2. The first layout's single bucket, ten regions of N/3 keys each: a
 *    consumer filtered to one region, LastPerSubject (the agent before
 *    0.2.0) and DeliverAll.
 *
 * Each is created and deleted three times; the times are the API round trip
 * on loopback (the server's work, plus a little).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AckPolicy, DeliverPolicy, jetstreamManager, type ConsumerConfig, type StreamState } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { freePort, REPO_ROOT } from '../../test/helpers/nats.js';

const fetched = join(REPO_ROOT, '.deps/nats-server/usr/sbin/nats-server');
const BIN = process.argv[2] || process.env['NATS_SERVER_BIN'] || (existsSync(fetched) ? fetched : '/usr/sbin/nats-server');
const N = Number(process.argv[3] ?? 300_000);
const REGIONS = 10;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'i6pn-probe-'));
  const port = await freePort();
  const server = spawn('setpriv', ['--pdeathsig', 'KILL', BIN, '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
  try {
    let nc;
    for (let i = 0; ; i++) {
      try {
        nc = await connect({ servers: `nats://127.0.0.1:${port}` });
        break;
      } catch (err) {
        if (i > 50) throw err;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    console.log(`nats-server ${nc.info?.version} (${BIN}), N = ${N}`);
    const jsm = await jetstreamManager(nc, { timeout: 300_000 });
    const payload = new TextEncoder().encode('x'.repeat(230));
    const hex = (n: number, w: number) => n.toString(16).padStart(w, '0');

    /** Publishes `writes` messages to `count` keys (the keys first, then overwrites), waits until stored. */
    const fill = async (stream: string, key: (i: number) => string, count: number, writes: number): Promise<StreamState> => {
      await jsm.streams.add({ name: stream, subjects: [`$KV.${stream}.>`], max_msgs_per_subject: 1 });
      for (let i = 0; i < writes; i += 5000) {
        for (let j = i; j < Math.min(writes, i + 5000); j++) nc.publish(`$KV.${stream}.${key(j < count ? j : (j * 7919) % count)}`, payload);
        await nc.flush();
      }
      for (;;) {
        const s = (await jsm.streams.info(stream)).state;
        if (s.last_seq >= writes) return s;
        await new Promise((r) => setTimeout(r, 200));
      }
    };
    const time = async (what: string, stream: string, cfg: Partial<ConsumerConfig>): Promise<void> => {
      const ms: number[] = [];
      let pending = 0;
      for (let k = 0; k < 3; k++) {
        const t0 = performance.now();
        const ci = await jsm.consumers.add(stream, { ack_policy: AckPolicy.None, mem_storage: true, num_replicas: 1, inactive_threshold: 60_000_000_000, ...cfg });
        ms.push(performance.now() - t0);
        pending = ci.num_pending;
        await jsm.consumers.delete(stream, ci.name);
      }
      console.log(`  ${what}: ${ms.map((m) => m.toFixed(1)).join(', ')} ms (${pending} pending)`);
    };

    const region = await fill('region', (i) => `${hex(i % 64, 8)}.${hex(i, 16)}`, N, N + N / 10);
    console.log(`a region's bucket: ${region.messages} keys, sequences ${region.first_seq}..${region.last_seq}`);
    await time('no filter, from the first message', 'region', { deliver_policy: DeliverPolicy.All });
    await time('no filter, from the middle', 'region', { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: Math.floor(region.last_seq / 2) });
    await time('no filter, 100 before the head', 'region', { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: region.last_seq - 100 });

    const perRegion = Math.floor(N / 3);
    const shared = await fill('shared', (i) => `r${i % REGIONS}.${hex(i % 64, 8)}.${hex(i, 16)}`, perRegion * REGIONS, perRegion * REGIONS);
    console.log(`the single bucket: ${shared.messages} keys of ${REGIONS} regions`);
    await time('filter r3.>, LastPerSubject', 'shared', { deliver_policy: DeliverPolicy.LastPerSubject, filter_subject: '$KV.shared.r3.>' });
    await time('filter r3.>, DeliverAll', 'shared', { deliver_policy: DeliverPolicy.All, filter_subject: '$KV.shared.r3.>' });
    await nc.close();
  } finally {
    server.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
