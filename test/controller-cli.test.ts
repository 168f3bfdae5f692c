/**
 * i6pnctl's command surface against a real nats-server: exit codes, stdout,
 * the one-line stderr, JSON shapes, help text.
 *
 * `ctl` runs the real executable as a subprocess (about a second of CPU each);
 * `cli` runs the same parser and actions in-process (controller/program.ts
 * `run`), for the bulk. Every test has some of each.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import anyTest, { type TestFn } from 'ava';
import { formatAddress, parseAddress, regionOf, workspaceOf, workspaceSubnet } from '../lib/address.js';
import { addEndpoint } from '../controller/store/endpoints.js';
import { addRegion } from '../controller/store/regions.js';
import { connectStore, type Store } from '../lib/store.js';
import { createWorkspace } from '../controller/store/workspaces.js';
import { run } from '../controller/program.js';
import { REPO_ROOT, ctl, freePort, startNats, type NatsServer } from './helpers/nats.js';
import { cli, oneLine } from './helpers/cli.js';

const test = anyTest as TestFn<{ nats: NatsServer; store: Store; env: Record<string, string> }>;

test.before(async (t) => {
  const nats = await startNats();
  const store = await connectStore({ servers: nats.url });
  t.context = { nats, store, env: { I6PN_NATS_URL: nats.url } };
});

test.after.always(async (t) => {
  await t.context.store?.close();
  await t.context.nats?.destroy();
});


let seq = 0;
function name(prefix: string): string {
  return `${prefix}-${(seq++).toString(36)}-${randomBytes(3).toString('hex')}`;
}


const hex8 = (n: number): string => n.toString(16).padStart(8, '0');
const hex4 = (n: number): string => n.toString(16).padStart(4, '0');

test('region add and list', async (t) => {
  const { env } = t.context;
  const r = name('r');
  const add = await ctl(['region', 'add', r, '--json'], env);
  t.is(add.code, 0, add.stderr);
  t.is(add.stderr, '');
  const rec = JSON.parse(add.stdout) as { v: number; name: string; id: number };
  t.deepEqual(Object.keys(rec), ['v', 'name', 'id']);
  t.like(rec, { v: 1, name: r });
  t.true(rec.id >= 1 && rec.id <= 0xffff);

  const fixed = name('r');
  const [dup, bad, text, list] = await Promise.all([
    ctl(['region', 'add', r], env),
    cli(['region', 'add', 'Bad_Name'], env),
    cli(['region', 'add', fixed, '--id', '0x0a70'], env),
    cli(['region', 'list', '--json'], env),
  ]);
  t.is(dup.code, 1);
  t.is(dup.stdout, '');
  t.is(oneLine(dup.stderr), `i6pnctl: error: region "${r}" already exists — choose another name; \`i6pnctl region list\` shows the taken ones`);
  t.is(bad.code, 2);
  t.is(oneLine(bad.stderr), 'i6pnctl: error: invalid region name "Bad_Name" — use a lowercase letter followed by up to 30 lowercase letters, digits or dashes');
  t.is(text.code, 0, text.stderr);
  t.is(text.stdout, `region  ${fixed}\nid      0x0a70 (2672)\n`);
  t.is(list.code, 0, list.stderr);
  const l = JSON.parse(list.stdout) as { regions: unknown[]; invalid: unknown[] };
  t.deepEqual(Object.keys(l), ['regions', 'invalid']);
  t.deepEqual(l.invalid, []);
  t.deepEqual(
    l.regions.filter((x) => (x as { name: string }).name === r),
    [rec],
  );

  const taken = await cli(['region', 'add', name('r'), '--id', '2672'], env);
  t.is(taken.code, 1);
  t.regex(oneLine(taken.stderr), new RegExp(`^i6pnctl: error: region id 2672 \\(0x0a70\\) is taken by region "${fixed}" — `));
  const textList = await cli(['region', 'list'], env);
  t.regex(textList.stdout, /^NAME +ID\n/);
  t.regex(textList.stdout, new RegExp(`\\n${fixed} +0x0a70 \\(2672\\)\\n`));
});

test('workspace create, list, show, delete', async (t) => {
  const { env } = t.context;
  const w = name('w');
  const created = await ctl(['workspace', 'create', w], env);
  t.is(created.code, 0, created.stderr);
  const m = /^workspace  (\S+)\nid         0x([0-9a-f]{8}) \((\d+)\)\nsubnet     (\S+)\n$/.exec(created.stdout);
  if (!m) return t.fail(created.stdout);
  t.is(m[1], w);
  const id = parseInt(m[2]!, 16);
  t.is(Number(m[3]), id);
  t.is(m[4], workspaceSubnet(id));

  const [dup, show, list, invalid, unknown] = await Promise.all([
    cli(['workspace', 'create', w, '--json'], env),
    cli(['workspace', 'show', w, '--json'], env),
    cli(['workspace', 'list', '--json'], env),
    cli(['workspace', 'create', '-bad'], env),
    cli(['workspace', 'show', 'no-such-workspace'], env),
  ]);
  t.is(dup.code, 1);
  t.is(dup.stdout, '');
  t.is(oneLine(dup.stderr), `i6pnctl: error: workspace "${w}" already exists — choose another name; \`i6pnctl workspace list\` shows the taken ones`);
  t.is(show.code, 0, show.stderr);
  const s = JSON.parse(show.stdout) as { workspace: Record<string, unknown>; endpoints: unknown; invalid: unknown[] };
  t.deepEqual(Object.keys(s), ['workspace', 'endpoints', 'invalid']);
  t.like(s.workspace, { v: 1, name: w, id, subnet: workspaceSubnet(id) });
  t.deepEqual(Object.keys(s.workspace), ['v', 'name', 'id', 'subnet', 'createdAt']);
  t.deepEqual(s.endpoints, { total: 0, byRegion: {} });
  t.is(list.code, 0);
  const l = JSON.parse(list.stdout) as { workspaces: { name: string }[]; invalid: unknown[] };
  t.deepEqual(l.workspaces.find((x) => x.name === w), s.workspace);
  t.not(invalid.code, 0);
  t.regex(oneLine(invalid.stderr), /^i6pnctl: error: /);
  t.is(unknown.code, 1);
  t.is(oneLine(unknown.stderr), 'i6pnctl: error: unknown workspace "no-such-workspace" — list workspaces with `i6pnctl workspace list`');

  const del = await cli(['workspace', 'delete', w], env);
  t.is(del.code, 0, del.stderr);
  t.is(del.stdout, `deleted workspace ${w} (0x${hex8(id)}, ${workspaceSubnet(id)}) and 0 endpoints\n`);
  const gone = await cli(['workspace', 'show', w], env);
  t.is(gone.code, 1);
  // The name is free again; the new workspace has a new id.
  const again = await cli(['workspace', 'create', w, '--json'], env);
  t.is(again.code, 0);
  t.not((JSON.parse(again.stdout) as { id: number }).id, id);
});

test('workspace delete refuses while endpoints exist; --force removes them', async (t) => {
  const { env, store } = t.context;
  const r = await addRegion(store, name('r'));
  const w = await createWorkspace(store, name('w'));
  const node = name('node');
  const e1 = await addEndpoint(store, { workspace: w.name, region: r.name, node, ifname: 'veth0' });
  const e2 = await addEndpoint(store, { workspace: w.name, region: r.name, node, ifname: 'veth1' });
  const refused = await ctl(['workspace', 'delete', w.name], env);
  t.is(refused.code, 1);
  t.is(oneLine(refused.stderr), `i6pnctl: error: workspace "${w.name}" still has 2 endpoints — remove them with \`i6pnctl endpoint remove ADDRESS\`, or pass --force to remove them with the workspace`);
  const forced = await cli(['workspace', 'delete', w.name, '--force', '--json'], env);
  t.is(forced.code, 0, forced.stderr);
  const d = JSON.parse(forced.stdout) as { workspace: { id: number; deletedAt: string }; removedEndpoints: { address: string }[] };
  t.deepEqual(Object.keys(d), ['workspace', 'removedEndpoints']);
  t.is(d.workspace.id, w.id);
  t.regex(d.workspace.deletedAt, /^\d{4}-\d\d-\d\dT/);
  t.deepEqual(d.removedEndpoints.map((e) => e.address).sort(), [e1.address, e2.address].sort());
});

test('endpoint add, list, remove; peers', async (t) => {
  const { env, store } = t.context;
  const r = await addRegion(store, name('r'));
  const w = await createWorkspace(store, name('w'));
  const node = name('node');
  const base = ['--workspace', w.name, '--region', r.name, '--node', node];
  const [a, b, dark] = await Promise.all([
    ctl(['endpoint', 'add', ...base, '--ifname', 'veth0'], env),
    cli(['endpoint', 'add', ...base, '--ifname', 'veth1', '--json'], env),
    cli(['endpoint', 'add', ...base, '--ifname', 'veth2', '--no-i6pn', '--json'], env),
  ]);
  t.is(a.code, 0, a.stderr);
  t.regex(a.stdout, /^fdaa:[0-9a-f:]+\n$/);
  const addrA = a.stdout.trim();
  t.is(formatAddress(parseAddress(addrA)), addrA);
  t.is(workspaceOf(parseAddress(addrA)), w.id);
  t.is(regionOf(parseAddress(addrA)), r.id);
  t.is(b.code, 0, b.stderr);
  const recB = JSON.parse(b.stdout) as Record<string, unknown>;
  t.deepEqual(Object.keys(recB), ['v', 'address', 'workspace', 'workspaceId', 'region', 'regionId', 'node', 'ifname', 'i6pn', 'createdAt']);
  t.like(recB, { v: 1, workspace: w.name, workspaceId: w.id, region: r.name, regionId: r.id, node, ifname: 'veth1', i6pn: true });
  t.like(JSON.parse(dark.stdout) as object, { ifname: 'veth2', i6pn: false });
  const addrDark = (JSON.parse(dark.stdout) as { address: string }).address;

  const [dupIf, list, byNode, peers, peersText, peersDark] = await Promise.all([
    ctl(['endpoint', 'add', ...base, '--ifname', 'veth0'], env),
    cli(['endpoint', 'list', '--workspace', w.name, '--json'], env),
    cli(['endpoint', 'list', '--region', r.name, '--node', node], env),
    cli(['peers', addrA, '--json'], env),
    cli(['peers', addrA], env),
    cli(['peers', addrDark, '--json'], env),
  ]);
  t.is(dupIf.code, 1);
  t.is(oneLine(dupIf.stderr), `i6pnctl: error: interface veth0 on node ${node} is already used by endpoint ${addrA} — choose another --ifname, or remove that endpoint first`);
  t.is(list.code, 0);
  const l = JSON.parse(list.stdout) as { endpoints: { address: string }[]; invalid: unknown[] };
  t.deepEqual(Object.keys(l), ['endpoints', 'invalid']);
  t.deepEqual(l.endpoints.map((e) => e.address).sort(), [addrA, recB.address as string, addrDark].sort());
  t.deepEqual(l.invalid, []);
  t.is(byNode.code, 0);
  t.regex(byNode.stdout, /^ADDRESS +WORKSPACE +REGION +NODE +IFNAME +I6PN +NAME +CLUSTER +CREATED\n/);
  t.is(byNode.stdout.trim().split('\n').length, 4);
  t.regex(byNode.stdout, new RegExp(`${addrDark} +${w.name} +${r.name} +${node} +veth2 +no +- +- `));
  const p = JSON.parse(peers.stdout) as { endpoint: { address: string }; peers: { address: string }[]; invalid: unknown[] };
  t.deepEqual(Object.keys(p), ['endpoint', 'peers', 'invalid']);
  t.is(p.endpoint.address, addrA);
  t.deepEqual(p.peers.map((x) => x.address), [recB.address]);
  t.is(peersText.stdout, `${recB.address as string}\n`);
  t.deepEqual((JSON.parse(peersDark.stdout) as { peers: unknown[] }).peers, []);

  const rm = await cli(['endpoint', 'remove', addrA, '--json'], env);
  t.is(rm.code, 0, rm.stderr);
  t.is((JSON.parse(rm.stdout) as { address: string }).address, addrA);
  const [rmAgain, rmBad, rmText] = await Promise.all([
    cli(['endpoint', 'remove', addrA], env),
    cli(['endpoint', 'remove', 'not-an-address'], env),
    cli(['endpoint', 'remove', recB.address as string], env),
  ]);
  t.is(rmAgain.code, 1);
  t.is(oneLine(rmAgain.stderr), `i6pnctl: error: endpoint ${addrA} was already removed — list live endpoints with \`i6pnctl endpoint list\``);
  t.is(rmBad.code, 2);
  t.regex(oneLine(rmBad.stderr), /^i6pnctl: error: invalid IPv6 address "not-an-address": .* — pass an endpoint address such as /);
  t.is(rmText.code, 0);
  t.is(rmText.stdout, `removed endpoint ${recB.address as string} (workspace ${w.name}, region ${r.name}, node ${node}, veth1)\n`);
});

test('cluster create places round-robin in one region', async (t) => {
  const { env, store } = t.context;
  const r = await addRegion(store, name('r'));
  const w = await createWorkspace(store, name('w'));
  const n1 = name('node');
  const n2 = name('node');
  const [json, text] = await Promise.all([
    cli(['cluster', 'create', '--workspace', w.name, '--region', r.name, '--size', '5', '--nodes', `${n1},${n2}`, '--json'], env),
    ctl(['cluster', 'create', '--workspace', w.name, '--region', r.name, '--size', '2', '--nodes', n1], env),
  ]);
  t.is(json.code, 0, json.stderr);
  const c = JSON.parse(json.stdout) as { workspace: string; region: string; endpoints: { address: string; node: string; ifname: string; regionId: number }[] };
  t.deepEqual(Object.keys(c), ['workspace', 'region', 'endpoints']);
  t.is(c.workspace, w.name);
  t.is(c.region, r.name);
  t.deepEqual(c.endpoints.map((e) => e.node), [n1, n2, n1, n2, n1]);
  for (const e of c.endpoints) {
    t.regex(e.ifname, /^i6p[0-9a-f]{12}$/);
    t.is(regionOf(parseAddress(e.address)), r.id);
  }
  t.is(text.code, 0, text.stderr);
  const lines = text.stdout.trim().split('\n');
  t.is(lines.length, 2);
  for (const l of lines) t.regex(l, new RegExp(`^fdaa:[0-9a-f:]+  ${n1}  i6p[0-9a-f]{12}$`));
  const all = new Set([...c.endpoints.map((e) => e.address), ...lines.map((l) => l.split(' ')[0])]);
  t.is(all.size, 7);

  const [zero, noNodes, unknownRegion, badRegion] = await Promise.all([
    cli(['cluster', 'create', '--workspace', w.name, '--region', r.name, '--size', '0', '--nodes', n1], env),
    cli(['cluster', 'create', '--workspace', w.name, '--region', r.name, '--size', '2'], env),
    cli(['cluster', 'create', '--workspace', w.name, '--region', 'atlantis', '--size', '2', '--nodes', n1], env),
    cli(['cluster', 'create', '--workspace', w.name, '--region', 'At-lantis', '--size', '2', '--nodes', n1], env),
  ]);
  t.is(zero.code, 2);
  t.is(oneLine(zero.stderr), "i6pnctl: error: option '--size <n>' argument '0' is invalid. --size must be a whole number from 1 to 10000. — see `i6pnctl cluster create --help`");
  t.is(noNodes.code, 2);
  t.is(oneLine(noNodes.stderr), "i6pnctl: error: required option '--nodes <a,b,...>' not specified — see `i6pnctl cluster create --help`");
  t.is(unknownRegion.code, 1);
  t.is(oneLine(unknownRegion.stderr), 'i6pnctl: error: unknown region "atlantis" — list regions with `i6pnctl region list` or add it with `i6pnctl region add NAME`');
  t.is(badRegion.code, 2);
  t.regex(oneLine(badRegion.stderr), /^i6pnctl: error: invalid region name "At-lantis" — use a lowercase letter/);
});

test('names: endpoint add --name, rename, clear; named clusters: create, show by rank, list, swap, delete', async (t) => {
  const { env, store } = t.context;
  const r = await addRegion(store, name('r'));
  const w = await createWorkspace(store, name('w'));
  const node = name('node');
  const base = ['--workspace', w.name, '--region', r.name, '--node', node];
  const web = await cli(['endpoint', 'add', ...base, '--ifname', 'veth0', '--name', 'web-1', '--json'], env);
  t.is(web.code, 0, web.stderr);
  const rec = JSON.parse(web.stdout) as { address: string; name: string };
  t.deepEqual(Object.keys(rec), ['v', 'address', 'workspace', 'workspaceId', 'region', 'regionId', 'node', 'ifname', 'i6pn', 'createdAt', 'name']);
  t.is(rec.name, 'web-1');
  const [taken, bad, list] = await Promise.all([
    cli(['endpoint', 'add', ...base, '--ifname', 'veth1', '--name', 'web-1'], env),
    cli(['endpoint', 'add', ...base, '--ifname', 'veth1', '--name', 'Web-1'], env),
    cli(['endpoint', 'list', '--workspace', w.name], env),
  ]);
  t.is(taken.code, 1);
  t.is(oneLine(taken.stderr), `i6pnctl: error: name "web-1" is taken in workspace ${w.name} region ${r.name} by endpoint ${rec.address} — choose another --name; names are unique per workspace and region`);
  t.is(bad.code, 2);
  t.is(oneLine(bad.stderr), 'i6pnctl: error: invalid endpoint name "Web-1" — use a DNS label: a lowercase letter, then up to 62 lowercase letters, digits or dashes, not ending with a dash');
  t.regex(list.stdout, new RegExp(`${rec.address} +${w.name} +${r.name} +${node} +veth0 +yes +web-1 +- `));

  const renamed = await cli(['endpoint', 'rename', rec.address, 'web-2'], env);
  t.is(renamed.code, 0, renamed.stderr);
  t.is(renamed.stdout, `${rec.address} is named web-2\n`);
  const [neither, cleared] = await Promise.all([cli(['endpoint', 'rename', rec.address], env), cli(['endpoint', 'rename', rec.address, '--clear', '--json'], env)]);
  t.is(neither.code, 2);
  t.is(oneLine(neither.stderr), 'i6pnctl: error: pass either a name or --clear — see `i6pnctl endpoint rename --help`');
  t.is(cleared.code, 0, cleared.stderr);
  t.false('name' in (JSON.parse(cleared.stdout) as object));

  const created = await cli(['cluster', 'create', '--workspace', w.name, '--region', r.name, '--size', '3', '--nodes', node, '--name', 'trainer', '--json'], env);
  t.is(created.code, 0, created.stderr);
  const c = JSON.parse(created.stdout) as { name: string; endpoints: { address: string; cluster: string; rank: number }[] };
  t.deepEqual(Object.keys(c), ['workspace', 'region', 'name', 'endpoints']);
  t.deepEqual(c.endpoints.map((e) => [e.cluster, e.rank]), [['trainer', 0], ['trainer', 1], ['trainer', 2]]);
  const ref = ['--workspace', w.name, '--region', r.name];
  const [again, show, showJson, listed, missing] = await Promise.all([
    cli(['cluster', 'create', '--workspace', w.name, '--region', r.name, '--size', '1', '--nodes', node, '--name', 'trainer'], env),
    cli(['cluster', 'show', 'trainer', ...ref], env),
    cli(['cluster', 'show', 'trainer', ...ref, '--json'], env),
    cli(['cluster', 'list', '--workspace', w.name], env),
    cli(['cluster', 'show', 'nope', ...ref], env),
  ]);
  t.is(again.code, 1);
  t.is(oneLine(again.stderr), `i6pnctl: error: cluster "trainer" already exists in workspace ${w.name} region ${r.name} — choose another --name; \`i6pnctl cluster list\` shows the taken ones`);
  t.is(show.code, 0, show.stderr);
  const lines = show.stdout.trim().split('\n');
  t.is(lines[0], `cluster trainer (workspace ${w.name}, region ${r.name}): 3 of 3 members live`);
  t.regex(lines[1]!, /^RANK +ADDRESS +NODE +IFNAME +I6PN$/);
  for (const [i, e] of c.endpoints.entries()) t.regex(lines[2 + i]!, new RegExp(`^${i} +${e.address} +${node} +i6p[0-9a-f]{12} +yes$`));
  const sj = JSON.parse(showJson.stdout) as { cluster: { name: string; size: number }; members: { address: string }[] };
  t.deepEqual(Object.keys(sj), ['cluster', 'members', 'invalid']);
  t.like(sj.cluster, { name: 'trainer', size: 3 });
  t.regex(listed.stdout, new RegExp(`^NAME +WORKSPACE +REGION +SIZE +CREATED\ntrainer +${w.name} +${r.name} +3 `));
  t.is(missing.code, 1);
  t.is(oneLine(missing.stderr), `i6pnctl: error: no cluster "nope" in workspace ${w.name} region ${r.name} — list clusters with \`i6pnctl cluster list\``);

  const swap = await cli(['cluster', 'swap', 'trainer', '0', '2', ...ref, '--json'], env);
  t.is(swap.code, 0, swap.stderr);
  t.deepEqual((JSON.parse(swap.stdout) as { members: { address: string }[] }).members.map((m) => m.address), [c.endpoints[2]!.address, c.endpoints[1]!.address, c.endpoints[0]!.address]);
  const badRank = await cli(['cluster', 'swap', 'trainer', '0', 'x', ...ref], env);
  t.is(badRank.code, 2);
  t.is(oneLine(badRank.stderr), 'i6pnctl: error: rank "x" is not a whole number — pass two ranks, e.g. 0 3');
  const del = await cli(['cluster', 'delete', 'trainer', ...ref], env);
  t.is(del.code, 0, del.stderr);
  t.is(del.stdout, 'deleted cluster trainer and 3 endpoints\n');
});

test('node list marks stale nodes', async (t) => {
  const { env, store } = t.context;
  const region = name('r');
  const fresh = name('node');
  const old = name('node');
  const rec = (n: string, agoMs: number) =>
    JSON.stringify({ v: 1, name: n, region, version: '0.1.0', startedAt: new Date(Date.now() - 3_600_000).toISOString(), heartbeatAt: new Date(Date.now() - agoMs).toISOString() });
  // Fresh: a heartbeat now; old: two hours ago. The threshold is an hour, so a slow machine cannot blur them.
  await store.nodes.put(fresh, rec(fresh, 0));
  await store.nodes.put(old, rec(old, 7_200_000));
  const [json, text, lenient] = await Promise.all([
    cli(['node', 'list', '--region', region, '--stale-after', '3600', '--json'], env),
    ctl(['node', 'list', '--region', region, '--stale-after', '3600'], env),
    cli(['node', 'list', '--region', region, '--stale-after', '86400', '--json'], env),
  ]);
  t.is(json.code, 0, json.stderr);
  const n = JSON.parse(json.stdout) as { nodes: { name: string; stale: boolean; heartbeatAgeSeconds: number }[]; invalid: unknown[] };
  t.deepEqual(Object.keys(n), ['nodes', 'invalid']);
  t.deepEqual(
    n.nodes.map((x) => [x.name, x.stale]).sort(),
    [
      [fresh, false],
      [old, true],
    ].sort(),
  );
  t.deepEqual(Object.keys(n.nodes[0]!), ['v', 'name', 'region', 'version', 'startedAt', 'heartbeatAt', 'heartbeatAgeSeconds', 'stale']);
  t.regex(text.stdout, /^NAME +REGION +VERSION +HEARTBEAT +AGE +STATUS\n/);
  t.regex(text.stdout, new RegExp(`\\n?${old} +${region} +0\\.1\\.0 +\\S+ +\\d+(\\.\\d)?s +STALE\\n`));
  t.regex(text.stdout, new RegExp(`\\n?${fresh} +${region} +0\\.1\\.0 +\\S+ +\\d+(\\.\\d)?s +ok\\n`));
  t.true((JSON.parse(lenient.stdout) as { nodes: { stale: boolean }[] }).nodes.every((x) => !x.stale));
});

test('an entry that breaks the schema is reported by list, which still succeeds', async (t) => {
  const { env, store } = t.context;
  const r = await addRegion(store, name('r'));
  const w = await createWorkspace(store, name('w'));
  const good = await addEndpoint(store, { workspace: w.name, region: r.name, node: name('node'), ifname: 'veth0' });
  const badKey = `${hex8(w.id)}.00000000deadbeef`;
  await (await store.endpoints(r.name)).put(badKey, JSON.stringify({ v: 1, address: 'fdaa::1', hello: 'world' }));
  const [json, text] = await Promise.all([
    cli(['endpoint', 'list', '--region', r.name, '--json'], env),
    ctl(['endpoint', 'list', '--region', r.name], env),
  ]);
  t.is(json.code, 0, json.stderr);
  const l = JSON.parse(json.stdout) as { endpoints: { address: string }[]; invalid: { bucket: string; key: string; reason: string; message: string }[] };
  t.deepEqual(l.endpoints.map((e) => e.address), [good.address]);
  t.is(l.invalid.length, 1);
  // The bucket and the key in it, as `nats kv get` takes them.
  t.like(l.invalid[0], { bucket: `i6pn_endpoints_${r.name}`, key: badKey, reason: 'schema' });
  t.regex(l.invalid[0]!.message, /^workspace: /);
  t.is(text.code, 0);
  t.regex(oneLine(text.stderr), new RegExp(`^i6pnctl: warning: invalid entry i6pn_endpoints_${r.name}/${badKey.replace(/\./g, '\\.')} \\(schema: `));
  t.true(text.stdout.includes(good.address));
  t.false(text.stdout.includes('deadbeef'));
});

test('errors: unknown workspace, NATS unreachable, bad flags, no subcommand', async (t) => {
  const { env, store } = t.context;
  const r = await addRegion(store, name('r'));
  const closed = await freePort();
  const [unknownWs, down, downEnv, bogus, missing, group, unknownCmd] = await Promise.all([
    ctl(['endpoint', 'add', '--workspace', 'ghost', '--region', r.name, '--node', 'n1', '--ifname', 'veth0'], env),
    ctl(['--nats', `nats://127.0.0.1:${closed}`, 'workspace', 'list']),
    ctl(['region', 'list'], { I6PN_NATS_URL: `nats://127.0.0.1:${closed}` }),
    ctl(['workspace', 'list', '--bogus'], env),
    ctl(['endpoint', 'add', '--workspace', 'x'], env),
    ctl(['endpoint'], env),
    ctl(['frobnicate'], env),
  ]);
  t.is(unknownWs.code, 1);
  t.is(unknownWs.stdout, '');
  t.is(oneLine(unknownWs.stderr), 'i6pnctl: error: unknown workspace "ghost" — list workspaces with `i6pnctl workspace list` or create it with `i6pnctl workspace create NAME`');
  for (const d of [down, downEnv]) {
    t.is(d.code, 3);
    t.is(d.stdout, '');
    t.is(
      oneLine(d.stderr),
      `i6pnctl: error: cannot reach NATS at nats://127.0.0.1:${closed}: connection refused (connect ECONNREFUSED 127.0.0.1:${closed}) — is nats-server running? set --nats or I6PN_NATS_URL`,
    );
  }
  t.is(bogus.code, 2);
  t.is(oneLine(bogus.stderr), "i6pnctl: error: unknown option '--bogus' — see `i6pnctl workspace list --help`");
  t.is(missing.code, 2);
  t.is(oneLine(missing.stderr), "i6pnctl: error: required option '--region <name>' not specified — see `i6pnctl endpoint add --help`");
  t.is(group.code, 2);
  t.regex(group.stderr, /^Usage: i6pnctl endpoint \[options\] \[command\]/);
  t.is(unknownCmd.code, 2);
  t.is(oneLine(unknownCmd.stderr), "i6pnctl: error: unknown command 'frobnicate' — see `i6pnctl --help`");
});

test('concurrent workspace create through the CLI: unique ids, one winner per name', async (t) => {
  const { env } = t.context;
  const names = Array.from({ length: 4 }, () => name('w'));
  const same = name('w');
  const results = await Promise.all([...names.map((n) => ctl(['workspace', 'create', n, '--json'], env)), ...[0, 1, 2].map(() => ctl(['workspace', 'create', same, '--json'], env))]);
  const distinct = results.slice(0, 4);
  for (const r of distinct) t.is(r.code, 0, r.stderr);
  t.is(new Set(distinct.map((r) => (JSON.parse(r.stdout) as { id: number }).id)).size, 4);
  const race = results.slice(4);
  t.deepEqual(race.map((r) => r.code).sort(), [0, 1, 1]);
  for (const r of race.filter((x) => x.code === 1)) t.is(oneLine(r.stderr), `i6pnctl: error: workspace "${same}" already exists — choose another name; \`i6pnctl workspace list\` shows the taken ones`);
});

// ---------------------------------------------------------------- help (in-process)

async function runCaptured(args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await run(['node', 'i6pnctl', ...args], { out: (s) => (out += s), err: (s) => (err += s) });
  return { code, out, err };
}

const LEAVES = [
  'region add',
  'region list',
  'workspace create',
  'workspace list',
  'workspace show',
  'workspace delete',
  'endpoint add',
  'endpoint remove',
  'endpoint list',
  'endpoint rename',
  'cluster create',
  'cluster show',
  'cluster list',
  'cluster swap',
  'cluster delete',
  'node list',
  'migrate',
  'peers',
];

test('--help on every command reads like a manual, with examples and --json', async (t) => {
  const root = await runCaptured(['--help']);
  t.is(root.code, 0);
  t.is(root.err, '');
  for (const s of ['Usage: i6pnctl [options] [command]', '--nats <url>', '--creds <file>', 'I6PN_NATS_URL', 'I6PN_NATS_CREDS', 'fdaa::/16', 'Exit status:', '$ i6pnctl workspace create acme']) {
    t.true(root.out.includes(s), s);
  }
  for (const leaf of LEAVES) {
    const h = await runCaptured([...leaf.split(' '), '--help']);
    t.is(h.code, 0, leaf);
    t.true(h.out.startsWith(`Usage: i6pnctl ${leaf} `), leaf);
    t.true(h.out.includes('--json'), `${leaf} has --json`);
    t.true(h.out.includes('Examples:'), `${leaf} has examples`);
    t.true(h.out.includes('--nats <url>'), `${leaf} shows the global options`);
    t.true(h.out.includes(`$ i6pnctl ${leaf}`), `${leaf} example uses the command`);
    for (const line of h.out.split('\n')) t.true(line.length <= 100, `${leaf}: ${line}`);
  }
  for (const group of ['region', 'workspace', 'endpoint', 'cluster', 'node']) {
    const h = await runCaptured(['help', group]);
    t.is(h.code, 0);
    t.true(h.out.startsWith(`Usage: i6pnctl ${group} `));
  }
  const v = await runCaptured(['--version']);
  t.is(v.code, 0);
  t.is(v.out, `${(JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version}\n`);
});

test('input is checked before connecting: a typo is exit 2 even with NATS down', async (t) => {
  const closed = await freePort();
  const r = await runCaptured(['--nats', `nats://127.0.0.1:${closed}`, 'workspace', 'create', 'Acme']);
  t.is(r.code, 2);
  t.is(r.out, '');
  t.is(r.err, 'i6pnctl: error: invalid workspace name "Acme" — use a lowercase letter followed by up to 30 lowercase letters, digits or dashes\n');
  const p = await runCaptured(['--nats', `nats://127.0.0.1:${closed}`, 'peers', 'fdaa::1::2']);
  t.is(p.code, 2);
  t.regex(p.err, /^i6pnctl: error: invalid IPv6 address "fdaa::1::2": /);
  const c = await runCaptured(['--nats', t.context.nats.url, '--creds', '/nonexistent/i6pnctl.creds', 'region', 'list']);
  t.is(c.code, 2);
  t.regex(c.err, /^i6pnctl: error: cannot read NATS credentials \/nonexistent\/i6pnctl\.creds: ENOENT.* — set --creds or I6PN_NATS_CREDS to a readable \.creds file\n$/);
  const n = await runCaptured(['--nats', `nats://127.0.0.1:${closed}`, 'endpoint', 'add', '--workspace', 'a', '--region', 'b', '--node', 'n', '--ifname', 'way-too-long-ifname']);
  t.is(n.code, 2);
  t.is(n.err, 'i6pnctl: error: invalid interface name "way-too-long-ifname" — use a Linux interface name: 1 to 15 letters, digits, "_", "." or "-", not starting with "." or "-"\n');
});

test('the built CLI keeps its shebang', (t) => {
  const src = readFileSync(join(REPO_ROOT, 'controller', 'cli.ts'), 'utf8');
  t.true(src.startsWith('#!/usr/bin/env node\n'));
  const built = join(REPO_ROOT, 'dist', 'controller', 'cli.js');
  if (existsSync(built)) t.true(readFileSync(built, 'utf8').startsWith('#!/usr/bin/env node\n'));
  t.is(hex4(0xa70), '0a70');
});
