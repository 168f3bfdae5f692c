/**
 * i6pn-agent under its production NATS identity (deploy/nats): a server with
 * decentralized JWT auth, the controller's credentials for i6pnctl, and the
 * node's own agent credentials, which allow reading the regions, endpoints
 * and nodes buckets, writing one key, its heartbeat, and publishing its
 * drop events on its own subject. The agent must sync, attach, heartbeat and
 * publish its drop events with no permission error; with another node's
 * credentials its heartbeat is refused, and it says so.
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, credsAuthenticator } from '@nats-io/transport-node';
import { readFileSync } from 'node:fs';
import { init, issueAgent, issueController } from '../deploy/nats/i6pn-nats-auth.js';
import { decodeDropEvent, eventsFilter } from '../lib/events.js';
import { AgentEnv, eventually, readPinnedEndpoint } from './helpers/agent-env.js';
import { ctl, freePort } from './helpers/nats.js';
import { natsServerBin } from './helpers/nats-server-bin.js';

const env = new AgentEnv('auth');
const dir = mkdtempSync(join(tmpdir(), 'i6pn-agent-auth-'));
let server: ChildProcess | null = null;
let url = '';

test.before(async () => {
  await env.create();
  init(dir);
  issueAgent(dir, 'n1', 'ams');
  issueController(dir);
  const port = await freePort('::1');
  writeFileSync(join(dir, 'server.conf'), `listen: "[::]:${port}"\njetstream { store_dir: "${join(dir, 'js')}" }\ninclude ./auth.conf\n`);
  const fd = openSync(join(dir, 'server.log'), 'a');
  server = spawn('setpriv', ['--pdeathsig', 'KILL', natsServerBin(), '-c', join(dir, 'server.conf')], { cwd: dir, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  url = `nats://[::1]:${port}`;
  await eventually(async () => {
    const nc = await connect({ servers: url, authenticator: credsAuthenticator(readFileSync(join(dir, 'controller.creds'))), maxReconnectAttempts: 0 });
    await nc.close();
    return true;
  }, 'nats-server with auth up', 60_000, 250);
});

test.after.always(async () => {
  await env.destroy();
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server!.once('exit', r));
    server.kill('SIGTERM');
    const timer = setTimeout(() => server!.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
  rmSync(dir, { recursive: true, force: true });
});

async function i6pnctl(args: string[]): Promise<string> {
  const r = await ctl(args, { I6PN_NATS_URL: url, I6PN_NATS_CREDS: join(dir, 'controller.creds') });
  if (r.code !== 0) throw new Error(`i6pnctl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

test.serial('with its own least-privilege credentials the agent syncs, attaches and heartbeats', async (t) => {
  await i6pnctl(['region', 'add', 'ams']);
  await i6pnctl(['workspace', 'create', 'one']);
  await env.addContainer('a', 'ep-a');
  const address = (await i6pnctl(['endpoint', 'add', '--workspace', 'one', '--region', 'ams', '--node', 'n1', '--ifname', 'ep-a'])).trim();
  await env.setAddress('a', address);

  const agent = env.startAgent(
    env.agentArgs(`nats://[${env.natsAddr}]:${url.split(':').pop()}`, { '--creds': join(dir, 'agents', 'n1.creds'), '--log-level': 'debug' }),
  );
  t.teardown(async () => {
    agent.kill('SIGKILL');
    await agent.exited;
  });
  await agent.waitLog((l) => l.msg === 'initial sync done', 60_000);
  t.truthy(readPinnedEndpoint(env.bpffs, address)?.local);
  await eventually(async () => (await env.tcPrograms('ep-a')).ingress === 'from_endpoint', 'TC on ep-a');
  await eventually(async () => (await env.routes()).get(address) === 'ep-a', 'route');

  // The heartbeat landed (read with the controller's identity).
  const nc = await connect({ servers: url, authenticator: credsAuthenticator(readFileSync(join(dir, 'controller.creds'))) });
  t.teardown(() => nc.close());
  const nodes = await new Kvm(jetstream(nc)).open('i6pn_nodes');
  const rec = await eventually(async () => (await nodes.get('n1'))?.json<{ region: string }>(), 'heartbeat of n1', 15_000);
  t.is(rec?.region, 'ams');

  // An update arrives through the same consumer.
  const second = (await i6pnctl(['endpoint', 'add', '--workspace', 'one', '--region', 'ams', '--node', 'n2', '--ifname', 'ep-b'])).trim();
  await eventually(() => readPinnedEndpoint(env.bpffs, second) !== null, 'update applied');

  // A drop, published on the node's own subject, which the controller's identity receives.
  await i6pnctl(['workspace', 'create', 'two']);
  const other = (await i6pnctl(['endpoint', 'add', '--workspace', 'two', '--region', 'ams', '--node', 'n2', '--ifname', 'ep-c'])).trim();
  const events = nc.subscribe(eventsFilter({}));
  await nc.flush();
  const first = (async () => {
    for await (const m of events) return { subject: m.subject, event: decodeDropEvent(m.data) };
    return null;
  })();
  t.false((await env.ping('a', other)).ok, 'a reaches another workspace');
  const got = await Promise.race([first, new Promise<null>((r) => setTimeout(() => r(null), 15_000))]);
  events.unsubscribe();
  t.is(got?.subject, 'i6pn.events.ams.n1');
  t.like(got?.event, { ok: true, record: { node: 'n1', hook: 'from_endpoint', reason: 'cross_workspace', src: { address }, dst: { address: other } } });

  const problems = agent.logs.filter((l) => /permission/i.test(JSON.stringify(l)));
  t.deepEqual(problems, [], 'no permission errors');
  const metrics = await (await fetch(`${env.metricsUrl}/metrics`)).text();
  t.regex(metrics, /^i6pn_drop_events_unpublished_total\{cause="denied"\} 0$/m);
  t.true((await fetch(`${env.metricsUrl}/readyz`)).ok);
});

test.serial("with another node's credentials the heartbeat is refused and the agent says so", async (t) => {
  const agent = env.startAgent(
    env.agentArgs(`nats://[${env.natsAddr}]:${url.split(':').pop()}`, {
      '--node': 'n7',
      '--creds': join(dir, 'agents', 'n1.creds'),
      '--bpffs': `${env.bpffs}-n7`,
      '--metrics-addr': `[${env.mgmtNodeAddr}]:9467`,
      '--uplink': 'up0peer',
    }),
  );
  t.teardown(async () => {
    agent.kill('SIGKILL');
    await agent.exited;
    rmSync(`${env.bpffs}-n7`, { recursive: true, force: true });
  });
  const refused = await agent.waitLog((l) => l.msg === 'writing the node heartbeat failed; retrying', 30_000);
  t.regex(JSON.stringify(refused), /[Pp]ermission|timeout/);
});
