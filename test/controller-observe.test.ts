/**
 * `i6pnctl explain` and `i6pnctl observe` against a real nats-server and a
 * real store: explain's verdicts, words, JSON and exit codes for every kind
 * of pair (the kernel's agreement is test/explain-property.test.ts and the
 * fabric's); observe's filters, history, --follow, --json, names from the
 * store, invalid events and Ctrl-C, on events published as an agent would
 * (the agents themselves are test/e2e.test.ts's).
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { parseAddress, regionOf, workspaceOf } from '../lib/address.js';
import { decodeDropEvent, eventsSubject, type DropEventRecord } from '../lib/events.js';
import { addEndpoint, removeEndpoint } from '../controller/store/endpoints.js';
import { addRegion } from '../controller/store/regions.js';
import { connectStore, type Store } from '../lib/store.js';
import { createWorkspace } from '../controller/store/workspaces.js';
import { endpointKey, type EndpointRecord } from '../lib/schema.js';
import { run } from '../controller/program.js';
import { REPO_ROOT, ctl, startNats, type NatsServer } from './helpers/nats.js';

interface Ctx {
  nats: NatsServer;
  store: Store;
  nc: NatsConnection;
  ep: Record<'a1' | 'a2' | 'a3' | 'g1' | 'a4' | 'x1' | 'r1', EndpointRecord>;
  removedAt: string;
}
const test = anyTest as TestFn<Ctx>;

test.before(async (t) => {
  const nats = await startNats();
  const store = await connectStore({ servers: nats.url });
  await addRegion(store, 'ams');
  await addRegion(store, 'sjc');
  await createWorkspace(store, 'acme');
  await createWorkspace(store, 'globex');
  const add = (workspace: string, region: string, node: string, ifname: string, i6pn = true) => addEndpoint(store, { workspace, region, node, ifname, i6pn });
  const ep = {
    a1: await add('acme', 'ams', 'ams-1', 'ep-a1'),
    a2: await add('acme', 'ams', 'ams-1', 'ep-a2'),
    a3: await add('acme', 'ams', 'ams-2', 'ep-a3'),
    g1: await add('globex', 'ams', 'ams-1', 'ep-g1'),
    a4: await add('acme', 'sjc', 'sjc-1', 'ep-a4'),
    x1: await add('acme', 'ams', 'ams-2', 'ep-x1', false),
    r1: await add('acme', 'ams', 'ams-1', 'ep-r1'),
  };
  await removeEndpoint(store, ep.r1.address);
  const removedAt = (await store.addresses.get(Buffer.from(parseAddress(ep.r1.address)).toString('hex')))!.json<{ removedAt: string }>().removedAt;
  t.context = { nats, store, nc: await connect({ servers: nats.url }), ep, removedAt };
});

test.after.always(async (t) => {
  await t.context.nc?.close();
  await t.context.store?.close();
  await t.context.nats?.destroy();
});

async function cli(t: { context: Ctx }, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await run(['node', 'i6pnctl', '--nats', t.context.nats.url, ...args], { out: (x) => (stdout += x), err: (x) => (stderr += x) });
  return { code, stdout, stderr };
}

// ---------------------------------------------------------------- explain

interface ExplainJson {
  delivered: boolean;
  why: string;
  stop?: { hook: string; node: string | null; reason: string; why: string };
  path: Array<{ hook: string; node: string | null; reason: string; verdict: string }>;
  from: Record<string, unknown>;
  to: Record<string, unknown>;
}

test.serial('explain: each kind of pair, its verdict, the hooks it meets, why, and the exit status', async (t) => {
  const { ep, removedAt } = t.context;
  const cases: Array<[string, string, string, number, Partial<ExplainJson>]> = [
    ['same node, same workspace', 'ams-1/ep-a1', 'ams-1/ep-a2', 0, {
      delivered: true,
      why: 'same workspace (acme) and region (ams), both live endpoints with i6pn',
      path: [
        { hook: 'from_endpoint', node: 'ams-1', reason: 'pass_private', verdict: 'pass' },
        { hook: 'to_endpoint', node: 'ams-1', reason: 'pass_private', verdict: 'pass' },
      ],
    }],
    ['across nodes, same workspace', ep.a1.address, ep.a3.address, 0, { delivered: true }],
    ['another workspace', 'ams-1/ep-a1', 'ams-1/ep-g1', 1, { delivered: false, why: 'different workspaces: acme vs globex', stop: { hook: 'from_endpoint', node: 'ams-1', reason: 'cross_workspace', why: 'different workspaces: acme vs globex' } }],
    ['another region', 'ams-1/ep-a1', 'sjc-1/ep-a4', 1, { why: 'different regions: ams vs sjc' }],
    ['no i6pn at the destination', 'ams-1/ep-a1', 'ams-2/ep-x1', 1, { why: `no i6pn: ${ep.x1.address} was registered with --no-i6pn` }],
    ['no i6pn at the source', 'ams-2/ep-x1', 'ams-2/ep-a3', 1, { why: `no i6pn: ${ep.x1.address} was registered with --no-i6pn` }],
    ['a removed source', ep.r1.address, 'ams-1/ep-a2', 1, { why: `endpoint sealed: ${ep.r1.address} was removed at ${removedAt}; its veth drops everything in and out while its container runs`, stop: { hook: 'from_endpoint', node: null, reason: 'sealed', why: `endpoint sealed: ${ep.r1.address} was removed at ${removedAt}; its veth drops everything in and out while its container runs` } }],
    ['a removed destination', 'ams-1/ep-a1', ep.r1.address, 1, { why: `not a live endpoint: ${ep.r1.address} was removed at ${removedAt}`, path: [{ hook: 'from_endpoint', node: 'ams-1', reason: 'unknown_dest', verdict: 'drop' }] }],
    ['outside i6pn', 'ams-1/ep-a1', '2001:db8::1', 1, { stop: { hook: 'from_endpoint', node: 'ams-1', reason: 'outside', why: 'not private: 2001:db8::1 is outside fdaa::/16 (only an agent with --forward-non-private lets a container reach it)' } }],
  ];
  for (const [what, from, to, code, want] of cases) {
    const r = await cli(t, ['explain', from, to, '--json']);
    t.is(r.code, code, `${what}: ${r.stderr}`);
    t.is(r.stderr, '', what);
    t.like(JSON.parse(r.stdout) as ExplainJson, want, what);
  }
  // Across nodes, the four hooks; across regions they still meet all four (monitor mode would let it through).
  const across = JSON.parse((await cli(t, ['explain', 'ams-1/ep-a1', ep.a3.address, '--json'])).stdout) as ExplainJson;
  t.deepEqual(across.path.map((s) => `${s.hook}@${s.node}`), ['from_endpoint@ams-1', 'to_fabric@ams-1', 'from_fabric@ams-2', 'to_endpoint@ams-2']);
  // The store-wide name is a name too.
  const key = endpointKey(ep.a1);
  const byKey = await cli(t, ['explain', key, 'ams-1/ep-g1', '--json']);
  t.is(byKey.code, 1, byKey.stderr);
  t.like(JSON.parse(byKey.stdout), { from: { address: ep.a1.address, endpoint: key, state: 'live', node: 'ams-1', ifname: 'ep-a1' } });

  // Text, as a person reads it.
  const text = await cli(t, ['explain', 'ams-1/ep-a1', 'ams-1/ep-g1']);
  t.is(
    text.stdout,
    [
      `${ep.a1.address} (acme, ams-1/ep-a1) → ${ep.g1.address} (globex, ams-1/ep-g1): dropped`,
      '  stopped by from_endpoint on ams-1: cross_workspace — different workspaces: acme vs globex',
      '  the hooks it meets (monitor mode counts each and lets it through):',
      '    HOOK           NODE   VERDICT  REASON           WHY',
      '    from_endpoint  ams-1  drop     cross_workspace  different workspaces: acme vs globex',
      '    to_endpoint    ams-1  drop     cross_workspace  different workspaces: acme vs globex',
      '',
    ].join('\n'),
  );
  const ok = await ctl(['explain', 'ams-1/ep-a1', 'ams-2/ep-a3'], { I6PN_NATS_URL: t.context.nats.url });
  t.is(ok.code, 0, ok.stderr);
  t.regex(ok.stdout, /: delivered\n {2}same workspace \(acme\) and region \(ams\), both live endpoints with i6pn\n/);
});

test.serial('explain: what it cannot answer is a usage error (exit 2), one line', async (t) => {
  const { ep } = t.context;
  const cases: Array<[string[], string]> = [
    [['explain', 'ams-1/ep-zz', 'ams-1/ep-a1'], 'i6pnctl: error: no live endpoint is named "ams-1/ep-zz" — list endpoints with `i6pnctl endpoint list`, or pass an address\n'],
    [['explain', 'ams-1/ep-a1', 'Not_An_Endpoint'], 'i6pnctl: error: "Not_An_Endpoint" is not an endpoint address or name — pass an address, its name, <region>.<workspace id>.<endpoint id>, or <node>/<ifname>\n'],
    [['explain', 'ams-1/ep-a1', 'nobody-has-this-name'], 'i6pnctl: error: no live endpoint is named "nobody-has-this-name" — list endpoints with `i6pnctl endpoint list`, or pass an address\n'],
    [['explain', 'fdaa:1:2:3::4', ep.a1.address], 'i6pnctl: error: no endpoint was ever registered with fdaa:1:2:3::4 — FROM must be an endpoint that i6pnctl registered (live or removed)\n'],
    [['explain', '2001:db8::1', ep.a1.address], 'i6pnctl: error: 2001:db8::1 is not an i6pn address (not in fdaa::/16) — FROM must be an endpoint that i6pnctl registered (live or removed)\n'],
    [['explain', 'ams-1/ep-a1', ep.a1.address], `i6pnctl: error: ${ep.a1.address} is both FROM and TO — a packet to itself never leaves its container; name two endpoints\n`],
    [['explain', 'ams-1/ep-a1'], "i6pnctl: error: missing required argument 'to' — see `i6pnctl explain --help`\n"],
  ];
  for (const [args, stderr] of cases) {
    const r = await cli(t, args);
    t.is(r.code, 2, args.join(' '));
    t.is(r.stdout, '');
    t.is(r.stderr, stderr);
  }
  const down = await cli(t, ['--nats', 'nats://127.0.0.1:1', 'explain', 'ams-1/ep-a1', 'ams-1/ep-a2']);
  t.is(down.code, 3);
  const help = await cli(t, ['explain', '--help']);
  t.is(help.code, 0);
  t.regex(help.stdout, /Exit status: 0 delivered, 1 dropped, 2 usage/);
});

// ---------------------------------------------------------------- observe

/** An event as node `node` of `region` would publish it. */
function event(t: { context: Ctx }, over: Partial<DropEventRecord> & { from: EndpointRecord | string; to: EndpointRecord | string }): DropEventRecord {
  const node = over.node ?? 'ams-1';
  const end = (e: EndpointRecord | string) => {
    const address = typeof e === 'string' ? e : e.address;
    const a = parseAddress(address);
    if (a[0] !== 0xfd || a[1] !== 0xaa) return { address };
    const bits = { address, workspaceId: workspaceOf(a), regionId: regionOf(a) };
    // A live member of the reporting node's region, as its agent resolves it.
    if (typeof e === 'string' || e.region !== (over.region ?? 'ams')) return bits;
    return { ...bits, endpoint: endpointKey(e), i6pn: e.i6pn, local: e.node === node, ...(e.node === node ? { ifname: e.ifname } : {}) };
  };
  const { from, to, ...rest } = over;
  return {
    v: 1,
    time: new Date().toISOString(),
    node: 'ams-1',
    region: 'ams',
    hook: 'from_endpoint',
    verdict: 'drop',
    reason: 'cross_workspace',
    wouldDrop: false,
    src: end(from),
    dst: end(to),
    proto: 'udp',
    sport: 40001,
    dport: 7001,
    len: 62,
    ifindex: 7,
    ...rest,
  };
}

function publish(t: { context: Ctx }, e: DropEventRecord | string, subject?: string): void {
  const s = typeof e === 'string' ? subject! : eventsSubject(e.region, e.node);
  t.context.nc.publish(s, typeof e === 'string' ? e : JSON.stringify(e));
}

/** `i6pnctl observe ...` as a subprocess: its lines as they come, and a way to stop it like Ctrl-C. */
function observer(t: ExecutionContext<Ctx>, args: string[]) {
  const p = spawn(process.execPath, ['--import=tsx', join(REPO_ROOT, 'controller/cli.ts'), '--nats', t.context.nats.url, 'observe', ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => void p.kill('SIGKILL'));
  const lines: string[] = [];
  let stderr = '';
  let buf = '';
  p.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    const parts = buf.split('\n');
    buf = parts.pop()!;
    lines.push(...parts);
  });
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => p.on('exit', (code) => resolve(code)));
  return {
    lines,
    get stderr() {
      return stderr;
    },
    exited,
    interrupt: () => p.kill('SIGINT'),
    async waitLines(n: number, ms = 20_000): Promise<string[]> {
      const end = Date.now() + ms;
      while (lines.length < n && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      return lines;
    },
  };
}

test.serial('observe: live events, one JSON object per line with the store names; filters; Ctrl-C exits 0', async (t) => {
  const { ep } = t.context;
  const all = observer(t, ['--json']);
  const filtered = observer(t, ['--json', '--workspace', 'globex', '--reason', 'cross_workspace,cross_region', '--node', 'ams-1']);
  const fromA1 = observer(t, ['--from', 'ams-1/ep-a1', '--to', ep.a4.address, '--hook', 'from_endpoint']);
  // Each is subscribed once it prints an event that it alone matches (sent again until it does).
  for (const [o, canary] of [
    [all, event(t, { from: ep.a2, to: ep.g1, node: 'ams-9' })],
    [filtered, event(t, { from: ep.g1, to: ep.a2, node: 'ams-1', reason: 'cross_region', sport: 1 })],
    [fromA1, event(t, { from: ep.a1, to: ep.a4, hook: 'from_endpoint', sport: 1 })],
  ] as const) {
    for (let i = 0; o.lines.length === 0 && i < 300; i++) {
      publish(t, canary);
      await o.waitLines(1, 100);
    }
    t.true(o.lines.length > 0, 'an observer never subscribed');
  }
  await new Promise((r) => setTimeout(r, 500));
  for (const o of [all, filtered, fromA1]) o.lines.length = 0;
  const events = [
    event(t, { from: ep.a1, to: ep.g1 }), // globex, ams-1, cross_workspace: all three but fromA1
    event(t, { from: ep.a1, to: ep.a4, reason: 'cross_region' }), // all, fromA1; not globex
    event(t, { from: ep.g1, to: ep.a3, node: 'ams-2', hook: 'from_fabric' }), // globex but ams-2
    event(t, { from: ep.a1, to: ep.a4, reason: 'cross_region', hook: 'to_fabric' }), // hook to_fabric: not fromA1
    event(t, { from: ep.a1, to: ep.x1, reason: 'no_i6pn', verdict: 'would_drop', wouldDrop: true, proto: 'icmpv6', sport: undefined, dport: undefined, icmpType: 128, icmpCode: 0 }),
  ];
  for (const e of events) publish(t, JSON.parse(JSON.stringify(e)) as DropEventRecord);
  publish(t, '{"v":1,"not":"an event"}', eventsSubject('ams', 'ams-1'));
  const got = (await all.waitLines(events.length)).map((l) => JSON.parse(l) as DropEventRecord);
  t.is(got.length, events.length);
  // As published, plus the names of the store.
  for (const [i, e] of got.entries()) {
    t.true(decodeDropEvent(JSON.stringify(e)).ok);
    t.like(e, JSON.parse(JSON.stringify(events[i])) as DropEventRecord);
  }
  t.like(got[0], { src: { workspace: 'acme', region: 'ams' }, dst: { workspace: 'globex', region: 'ams' } });
  t.like(got[1], { dst: { workspace: 'acme', region: 'sjc' } });
  t.deepEqual((await filtered.waitLines(1)).map((l) => (JSON.parse(l) as DropEventRecord).dst?.address), [ep.g1.address]);
  const lines = await fromA1.waitLines(1);
  t.is(lines.length, 1);
  t.true(lines[0]!.endsWith(`from_endpoint drop cross_region udp [${ep.a1.address}]:40001 (acme ams ep-a1) → [${ep.a4.address}]:7001 (acme sjc not a member here) len 62`), lines[0]);
  t.regex(lines[0]!, /^\d{4}-\d\d-\d\dT[\d:.]+Z ams-1 /);
  await new Promise((r) => setTimeout(r, 500));
  for (const o of [all, filtered, fromA1]) o.interrupt();
  t.deepEqual(await Promise.all([all.exited, filtered.exited, fromA1.exited]), [0, 0, 0], 'Ctrl-C exits 0');
  t.is(all.lines.length, events.length, 'the invalid event is not printed');
  t.regex(all.stderr, /^i6pnctl: warning: invalid event on i6pn\.events\.ams\.ams-1 \(schema: .*\) — skipped; only i6pn agents should publish there\n$/);
  t.is(filtered.lines.length, 1);
  t.is(fromA1.lines.length, 1);
});

test.serial('observe: --last and --since from the stream, then exit; --follow goes on live without a gap', async (t) => {
  const { ep } = t.context;
  await new Promise((r) => setTimeout(r, 1000));
  const before = new Date(Date.now() - 100).toISOString();
  const history = Array.from({ length: 6 }, (_, i) => event(t, { from: ep.a1, to: ep.g1, sport: 50000 + i, node: i % 2 ? 'ams-2' : 'ams-1' }));
  for (const e of history) publish(t, e);
  await t.context.nc.flush();
  await new Promise((r) => setTimeout(r, 500));
  const last = await cli(t, ['observe', '--last', '2', '--json', '--since', before]);
  t.is(last.code, 0, last.stderr);
  t.deepEqual(last.stdout.trim().split('\n').map((l) => (JSON.parse(l) as DropEventRecord).sport), [50004, 50005]);
  const since = await cli(t, ['observe', '--since', before, '--node', 'ams-2', '--json']);
  t.deepEqual(since.stdout.trim().split('\n').map((l) => (JSON.parse(l) as DropEventRecord).sport), [50001, 50003, 50005]);
  const none = await cli(t, ['observe', '--since', before, '--reason', 'sealed']);
  t.is(none.code, 0);
  t.is(none.stdout, '');

  const follow = observer(t, ['--since', before, '--follow', '--json', '--from', ep.a1.address]);
  await follow.waitLines(6);
  const more = event(t, { from: ep.a1, to: ep.g1, sport: 60000 });
  publish(t, more);
  const lines = await follow.waitLines(7);
  follow.interrupt();
  t.is(await follow.exited, 0);
  t.deepEqual(lines.map((l) => (JSON.parse(l) as DropEventRecord).sport), [50000, 50001, 50002, 50003, 50004, 50005, 60000]);
});

test.serial('observe: bad flags are one-line usage errors (exit 2); --help says how to use it', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['observe', '--reason', 'cross_workspace,nope'], /^i6pnctl: error: option '--reason <reasons>' argument 'cross_workspace,nope' is invalid\. reason "nope" is not one of truncated, .*cross_workspace.* — see `i6pnctl observe --help`\n$/],
    [['observe', '--reason', 'pass_private'], /reason "pass_private" is not one of/],
    [['observe', '--hook', 'sideways'], /hook "sideways" is not one of from_fabric, from_endpoint, to_endpoint, to_fabric/],
    [['observe', '--since', 'yesterday'], /--since takes a duration \(90s, 10m, 2h, 1d\) or an RFC 3339 time/],
    [['observe', '--since', '2999-01-01T00:00:00Z'], /--since is in the future/],
    [['observe', '--last', '0'], /--last must be a whole number from 1 to 100000/],
    [['observe', '--follow'], /^i6pnctl: error: --follow goes with --since or --last — without them observe follows live events anyway\n$/],
    [['observe', '--workspace', 'Bad'], /invalid workspace name "Bad"/],
    [['observe', '--node', 'a b'], /invalid node name "a b"/],
    [['observe', '--from', 'nobody/x', '--last', '1'], /^i6pnctl: error: no live endpoint is named "nobody\/x"/],
  ];
  for (const [args, re] of cases) {
    const r = await cli(t, args);
    t.not(r.code, 0, args.join(' '));
    t.regex(r.stderr, re, args.join(' '));
    t.is(r.stderr.split('\n').filter((l) => l).length, 1, args.join(' '));
  }
  t.is((await cli(t, ['observe', '--reason', 'x'])).code, 2);
  t.is((await cli(t, ['observe', '--workspace', 'nobody', '--last', '1'])).code, 1, 'an unknown workspace is refused, as by every command');
  const help = await cli(t, ['observe', '--help']);
  t.is(help.code, 0);
  for (const want of [/--workspace <name>/, /--since <time>/, /--last <n>/, /--follow/, /Ctrl-C\s+exits 0/, /i6pn\.events\.<region>\.<node>/]) t.regex(help.stdout, want);
});
