/**
 * `i6pnctl gateway` and `i6pnctl tunnel` against a real nats-server: what is
 * recorded where, the gateway's address in workspace 0, the claim of
 * (endpoint, protocol, port), bad input with one-line errors and their exit
 * codes, `tunnel list` joining what the gateways say, and removing an
 * endpoint removing its tunnels.
 */
import { randomBytes } from 'node:crypto';
import anyTest, { type TestFn } from 'ava';
import { GATEWAY_TAG, isGatewayAddress, parseAddress, regionOf, workspaceOf } from '../lib/address.js';
import { GATEWAY_ROLE, gatewayKey, tunnelBucketKey, tunnelsBucket, validateEndpointEntry, validateTunnelEntry, type GatewayRecord, type TunnelRecord } from '../lib/schema.js';
import { addEndpoint } from '../controller/store/endpoints.js';
import { addRegion } from '../controller/store/regions.js';
import { connectStore, type Store } from '../lib/store.js';
import { createWorkspace } from '../controller/store/workspaces.js';
import { type TunnelStatus } from '../controller/store/tunnels.js';
import { ctl, startNats, type NatsServer } from './helpers/nats.js';
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

/** In-process i6pnctl against this test's server. */
const cliIn = (t: { context: { env: Record<string, string> } }, args: string[]) => cli(args, t.context.env);

const name = (p: string): string => `${p}-${randomBytes(3).toString('hex')}`;

/** A region, a workspace, an endpoint with i6pn and one without. */
async function setup(store: Store): Promise<{ region: string; ws: string; ep: string; noI6pn: string; other: string }> {
  const region = name('r');
  const ws = name('w');
  await addRegion(store, region);
  await createWorkspace(store, ws);
  const ep = (await addEndpoint(store, { workspace: ws, region, node: 'node-a', ifname: name('e').slice(0, 12) })).address;
  const other = (await addEndpoint(store, { workspace: ws, region, node: 'node-b', ifname: name('e').slice(0, 12) })).address;
  const noI6pn = (await addEndpoint(store, { workspace: ws, region, node: 'node-a', ifname: name('x').slice(0, 12), i6pn: false })).address;
  return { region, ws, ep, noI6pn, other };
}

test('a gateway is a member of workspace 0 of its region, at fdaa:0:0:<region>:6a7e::/80', async (t) => {
  const { store } = t.context;
  const { region } = await setup(store);
  const add = await cliIn(t, ['gateway', 'add', '--region', region, '--node', 'gw-1', '--json']);
  t.is(add.code, 0, add.stderr);
  const g = JSON.parse(add.stdout) as { address: string; workspaceId: number; workspace: string; role: string; ifname: string; regionId: number };
  const a = parseAddress(g.address);
  t.true(isGatewayAddress(a));
  t.is(workspaceOf(a), 0);
  t.is(regionOf(a), g.regionId);
  t.is((a[8]! << 8) | a[9]!, GATEWAY_TAG);
  t.like(g, { workspaceId: 0, workspace: 'infrastructure', role: GATEWAY_ROLE });
  t.regex(g.ifname, /^i6g[0-9a-f]{12}$/);
  // Its entry is in the region's endpoints bucket, valid by the agents' rules.
  const kv = await store.endpoints(region);
  const key = `00000000.${Buffer.from(a.subarray(8)).toString('hex')}`;
  const e = await kv.get(key);
  t.truthy(e);
  t.true(validateEndpointEntry(`${region}.${key}`, e!.value).ok);
  // A workspace-0 entry that is not a gateway, or a gateway outside the /80, breaks the schema.
  const record = JSON.parse(new TextDecoder().decode(e!.value)) as Record<string, unknown>;
  const { role: _role, ...noRole } = record;
  t.like(validateEndpointEntry(`${region}.${key}`, noRole), { ok: false, reason: 'schema' });

  const list = await cliIn(t, ['gateway', 'list', '--region', region, '--json']);
  t.is(list.code, 0, list.stderr);
  const gl = JSON.parse(list.stdout) as { gateways: Array<{ member: { address: string }; state: unknown; stale: boolean }> };
  t.deepEqual(gl.gateways.map((x) => [x.member.address, x.state, x.stale]), [[g.address, null, true]]);
  // A tenant's workspace may not take the reserved name; `gateway remove` refuses a tenant's endpoint.
  const reserved = await cliIn(t, ['workspace', 'create', 'infrastructure']);
  t.is(reserved.code, 2);
  t.regex(oneLine(reserved.stderr), /^i6pnctl: error: workspace name "infrastructure" is reserved/);

  const rm = await cliIn(t, ['gateway', 'remove', g.address]);
  t.is(rm.code, 0, rm.stderr);
  t.is(await kv.get(key).then((x) => x?.operation), 'DEL');
  t.is(JSON.parse((await cliIn(t, ['gateway', 'list', '--region', region, '--json'])).stdout).gateways.length, 0);
});

test('tunnel create records (endpoint, protocol, port) once; list shows where gateways serve it; remove takes it out', async (t) => {
  const { store, env } = t.context;
  const { region, ws, ep } = await setup(store);
  // The real executable once, text output: the id alone.
  const created = await ctl(['tunnel', 'create', '--endpoint', ep, '--port', '8080'], env);
  t.is(created.code, 0, created.stderr);
  t.regex(created.stdout, /^[0-9a-f]{12}\n$/);
  const id = created.stdout.trim();

  const kv = await store.tunnels(region);
  const key = tunnelBucketKey({ endpoint: ep, proto: 'tcp', port: 8080 });
  const e = await kv.get(key);
  t.truthy(e, `entry ${tunnelsBucket(region)}/${key}`);
  const regionId = regionOf(parseAddress(ep));
  const v = validateTunnelEntry(region, regionId, key, e!.value);
  t.true(v.ok);
  t.like((v as { record: TunnelRecord }).record, { id, endpoint: ep, workspace: ws, region, proto: 'tcp', port: 8080, tls: false });

  // Pending until a gateway says it serves it.
  const pending = await cliIn(t, ['tunnel', 'list', '--region', region]);
  t.is(pending.code, 0, pending.stderr);
  t.regex(pending.stdout, new RegExp(`^ID .*PUBLIC\\n${id} +${ep} +${ws} +${region} +tcp/8080 +no +pending\\n$`));

  // What a gateway writes (as i6pn-gateway does): its listeners; list joins them in.
  const gw = parseAddress('fdaa::' + regionId.toString(16) + ':6a7e:1:2:3');
  const state: GatewayRecord = {
    v: 1,
    address: 'fdaa::' + regionId.toString(16) + ':6a7e:1:2:3',
    region,
    node: 'gw-1',
    publicAddress: '2001:db8::7',
    listeners: [{ tunnel: id, port: 20000 }],
    refused: [],
    version: '0.0.0',
    startedAt: new Date().toISOString(),
    heartbeatAt: new Date().toISOString(),
  };
  await store.gateways.put(gatewayKey(region, gw), JSON.stringify(state));
  const listed = await cliIn(t, ['tunnel', 'list', '--region', region, '--json']);
  const tl = JSON.parse(listed.stdout) as { tunnels: TunnelStatus[] };
  t.deepEqual(tl.tunnels.map((x) => [x.id, x.public]), [[id, [{ gateway: state.address, node: 'gw-1', publicAddress: '2001:db8::7', port: 20000, stale: false }]]]);
  const text = await cliIn(t, ['tunnel', 'list', '--endpoint', ep]);
  t.regex(text.stdout, /\[2001:db8::7\]:20000\n$/);
  // --wait returns once a gateway serves it (this one already does).
  const waited = await cliIn(t, ['tunnel', 'create', '--endpoint', ep, '--port', '8443', '--tls', '--wait', '1', '--json']);
  t.is(waited.code, 1, 'no gateway serves the new one');
  t.regex(oneLine(waited.stderr), /^i6pnctl: error: tunnel [0-9a-f]{12} is recorded, but no gateway of region .* serves it after 1 s — /);

  // The claim: one tunnel per endpoint, protocol and port.
  const dup = await cliIn(t, ['tunnel', 'create', '--endpoint', ep, '--port', '8080']);
  t.is(dup.code, 1);
  t.is(oneLine(dup.stderr), `i6pnctl: error: endpoint ${ep} already has a tcp tunnel to port 8080 (id ${id}) — list tunnels with \`i6pnctl tunnel list\`; remove that one first to make it again`);

  const rm = await cliIn(t, ['tunnel', 'remove', id, '--json']);
  t.is(rm.code, 0, rm.stderr);
  t.is((JSON.parse(rm.stdout) as TunnelRecord).id, id);
  t.is((await kv.get(key))?.operation, 'DEL');
  const again = await cliIn(t, ['tunnel', 'remove', id]);
  t.is(again.code, 1);
  t.is(oneLine(again.stderr), `i6pnctl: error: no tunnel has id ${id} — list tunnels with \`i6pnctl tunnel list\``);
  await store.gateways.delete(gatewayKey(region, gw));
});

test('bad tunnels get one-line errors: unknown, removed, no-i6pn and gateway endpoints, ports, protocols, regions', async (t) => {
  const { store } = t.context;
  const { region, ep, noI6pn } = await setup(store);
  const gw = JSON.parse((await cliIn(t, ['gateway', 'add', '--region', region, '--node', 'gw-2', '--json'])).stdout) as { address: string };
  const removed = (await addEndpoint(store, { workspace: (await setup(store)).ws, region, node: 'node-a', ifname: name('g').slice(0, 12) })).address;
  await cliIn(t, ['endpoint', 'remove', removed]);
  const cases: Array<[string[], number, string]> = [
    [['--endpoint', 'fdaa:1:2:3::9', '--port', '80'], 1, 'i6pnctl: error: no endpoint has address fdaa:1:2:3::9 — list endpoints with `i6pnctl endpoint list`'],
    [['--endpoint', removed, '--port', '80'], 1, `i6pnctl: error: endpoint ${removed} was removed — list live endpoints with \`i6pnctl endpoint list\``],
    [['--endpoint', noI6pn, '--port', '80'], 2, `i6pnctl: error: endpoint ${noI6pn} has no i6pn — a gateway reaches its endpoint over i6pn: tunnel an endpoint registered without --no-i6pn`],
    [['--endpoint', gw.address, '--port', '80'], 2, `i6pnctl: error: ${gw.address} is a gateway, not a tenant's endpoint — tunnel an endpoint listed by \`i6pnctl endpoint list\``],
    [['--endpoint', ep, '--port', '0'], 2, 'i6pnctl: error: option \'--port <port>\' argument \'0\' is invalid. port "0" is out of range: use a whole number from 1 to 65535. — see `i6pnctl tunnel create --help`'],
    [['--endpoint', ep, '--port', '65536'], 2, 'i6pnctl: error: option \'--port <port>\' argument \'65536\' is invalid. port "65536" is out of range: use a whole number from 1 to 65535. — see `i6pnctl tunnel create --help`'],
    [['--endpoint', ep, '--port', '80', '--proto', 'udp'], 2, 'i6pnctl: error: option \'--proto <proto>\' argument \'udp\' is invalid. Allowed choices are tcp. — see `i6pnctl tunnel create --help`'],
    [['--endpoint', ep, '--port', '80', '--region', 'elsewhere'], 2, `i6pnctl: error: endpoint ${ep} is in region ${region}, not elsewhere — leave --region out, or pass --region ${region}`],
    [['--endpoint', 'acme-web', '--port', '80'], 1, 'i6pnctl: error: no live endpoint is named "acme-web" — list endpoints with `i6pnctl endpoint list`, or pass an address'],
    [['--endpoint', 'Acme_Web', '--port', '80'], 2, 'i6pnctl: error: "Acme_Web" is not an endpoint address or name — pass an address, its name, <region>.<workspace id>.<endpoint id>, or <node>/<ifname>'],
    [['--endpoint', '2001:db8::1', '--port', '80'], 2, 'i6pnctl: error: address 2001:db8::1 is not an i6pn address (not in fdaa::/16) — pass an address printed by `i6pnctl endpoint add` or `endpoint list`'],
  ];
  for (const [args, code, line] of cases) {
    const r = await cliIn(t, ['tunnel', 'create', ...args]);
    t.is(r.code, code, `${args.join(' ')}: ${r.stderr}`);
    t.is(r.stdout, '');
    t.is(oneLine(r.stderr), line);
  }
  const badId = await cliIn(t, ['tunnel', 'remove', 'nope']);
  t.is(badId.code, 2);
  t.is(oneLine(badId.stderr), 'i6pnctl: error: invalid tunnel id "nope" — pass the 12 hex digits `i6pnctl tunnel list` shows');
  // Nothing of the above was recorded.
  t.deepEqual((await store.tunnels(region).then(async (kv) => { const out: string[] = []; for await (const k of await kv.keys()) out.push(k); return out; })), []);
});

test('removing an endpoint removes its tunnels, and only its own', async (t) => {
  const { store } = t.context;
  const { region, ep, other } = await setup(store);
  const ids: string[] = [];
  for (const [e, port] of [[ep, 80], [ep, 443], [other, 80]] as const) {
    const r = await cliIn(t, ['tunnel', 'create', '--endpoint', e, '--port', String(port)]);
    t.is(r.code, 0, r.stderr);
    ids.push(r.stdout.trim());
  }
  const rm = await cliIn(t, ['endpoint', 'remove', ep]);
  t.is(rm.code, 0, rm.stderr);
  const left = JSON.parse((await cliIn(t, ['tunnel', 'list', '--region', region, '--json'])).stdout) as { tunnels: TunnelStatus[] };
  t.deepEqual(left.tunnels.map((x) => [x.id, x.endpoint, x.port]), [[ids[2], other, 80]]);
  // Deleting the workspace (with --force) removes the other endpoint's too.
  const ws = JSON.parse((await cliIn(t, ['endpoint', 'list', '--region', region, '--json'])).stdout).endpoints[0].workspace as string;
  t.is((await cliIn(t, ['workspace', 'delete', ws, '--force'])).code, 0);
  t.deepEqual((JSON.parse((await cliIn(t, ['tunnel', 'list', '--region', region, '--json'])).stdout) as { tunnels: unknown[] }).tunnels, []);
});
