/**
 * i6pnctl's command surface: the one module that knows the CLI parser
 * (commander). Each action parses its flags, calls the store's aggregates
 * (./store/, on lib/store.ts) and prints through ./output.ts. `run(argv)` returns the exit code instead of exiting,
 * so that it can be driven in-process.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { DEFAULT_NATS_URL, StoreError, checkInput, connectStore, getWorkspace, type Store } from '../lib/store.js';
import { DEFAULT_STALE_AFTER_MS, listNodes } from './store/nodes.js';
import { addEndpoint, findEndpointByName, listEndpoints, peersOf, removeEndpoint, renameEndpoint } from './store/endpoints.js';
import { addGateway, listGateways, removeGateway } from './store/gateways.js';
import { addRegion, listRegions } from './store/regions.js';
import { createTunnel, listTunnels, removeTunnel, type TunnelStatus } from './store/tunnels.js';
import { createCluster, deleteCluster, listClusters, showCluster, swapClusterRanks } from './store/clusters.js';
import { createWorkspace, deleteWorkspace, listWorkspaces, workspaceEndpointCounts } from './store/workspaces.js';
import { migrateEndpoints } from './store/migrate.js';
import { formatAddress, parseAddress } from '../lib/address.js';
import { isConnectionFailure } from '../lib/nats.js';
import { HOOK_NAMES, REASON_NAMES } from '../agent/bpf/abi.generated.js';
import { TUNNEL_PROTOCOLS, type TunnelProtocol } from '../lib/schema.js';
import { endLabel, explain } from './explain.js';
import { eventLine, observe, type EventFilter } from './observe.js';
import {
  type Io,
  clusterMembersTable,
  clustersTable,
  endpointsTable,
  errorLine,
  explainText,
  gatewaysTable,
  tunnelsTable,
  json,
  listing,
  keyValues,
  migrateText,
  nodesTable,
  processIo,
  regionIdText,
  regionsTable,
  warnConflicts,
  warnInvalid,
  workspaceIdText,
  workspacesTable,
} from './output.js';

/**
 * Exit codes:
 *   0  success (explain: delivered)
 *   1  the store refused or lacks something (unknown name, taken name, endpoints left, conflict); explain: dropped
 *   2  usage: bad flags, arguments, names or addresses (explain: also an endpoint it cannot find)
 *   3  the store cannot be used: NATS unreachable, no JetStream, no permission, invalid entry in the way
 */
export const EXIT = { ok: 0, refused: 1, usage: 2, store: 3 } as const;

const VERSION = readVersion();

/** The package's version: package.json is one level up from controller/, two from dist/controller/. */
function readVersion(): string {
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'i6pn' && pkg.version) return pkg.version;
    } catch {
      // not there: try the next
    }
  }
  return '0.0.0';
}

const MANUAL = `
i6pn gives containers private IPv6 networking, isolated per workspace and per
region. Every private address lives in fdaa::/16:

  fdaa : workspace id (32 bits) : region id (16) : endpoint id (64, random)

A workspace owns the /48 fdaa:WWWW:WWWW::/48; an endpoint (a container's
interface) gets fdaa:W:W:R:<random> when it is registered. Endpoints reach each
other only within one workspace and one region.

i6pnctl writes the membership store (NATS JetStream KV); the node agents follow
it and enforce it in the kernel. Addresses and workspace ids are never reused.

Environment:
  I6PN_NATS_URL    NATS server URL(s), comma-separated
                   (default ${DEFAULT_NATS_URL})
  I6PN_NATS_CREDS  NATS credentials file
  I6PN_KV_REPLICAS, I6PN_KV_HISTORY, I6PN_KV_STORAGE
                   bucket settings, used when i6pnctl creates the buckets
                   (the first command against a new NATS); existing buckets
                   are left as they are

Exit status: 0 success, 1 refused (unknown or taken name, endpoints left),
2 usage error, 3 store unreachable or unusable. Errors are one line on stderr:
  i6pnctl: error: <what went wrong> — <what to do>

Every command that prints takes --json for one stable JSON document on stdout.`;

const EXAMPLE = `
Example: provision a workspace and a four-endpoint cluster
  $ i6pnctl region add eu-west
  $ i6pnctl workspace create acme
  $ i6pnctl cluster create --workspace acme --region eu-west --size 4 --nodes node-a,node-b
  $ i6pnctl endpoint list --workspace acme
  $ i6pnctl peers fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f`;

interface GlobalOpts {
  nats: string;
  creds?: string;
  kvReplicas?: number;
  kvHistory?: number;
  kvStorage?: 'file' | 'memory';
}

function parseReplicas(v: string): number {
  if (!['1', '3', '5'].includes(v)) throw new InvalidArgumentError('replicas must be 1, 3 or 5.');
  return Number(v);
}

interface Ctx {
  io: Io;
  /** Set by an action that wants a non-zero exit without an error line. */
  exitCode: number;
}

function examples(lines: string[]): string {
  return `\nExamples:\n${lines.map((l) => `  $ ${l}`).join('\n')}\n`;
}

function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** Commander's own errors (bad flags) also come out as one line. */
function oneLineErrors(cmd: Command, io: Io): Command {
  return cmd.configureOutput({
    writeOut: (s) => io.out(s),
    writeErr: (s) => io.err(s),
    outputError: (s, write) => write(errorLine(s.replace(/^error: /, ''), `see \`${commandPath(cmd)} --help\``)),
  });
}

function parsePositiveInt(what: string, max: number) {
  return (v: string): number => {
    if (!/^[0-9]+$/.test(v)) throw new InvalidArgumentError(`${what} must be a whole number from 1 to ${max}.`);
    const n = Number(v);
    if (n < 1 || n > max) throw new InvalidArgumentError(`${what} must be a whole number from 1 to ${max}.`);
    return n;
  };
}

function parseList(v: string): string[] {
  return v
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

export function buildProgram(ctx: Ctx): Command {
  const { io } = ctx;
  const program = new Command('i6pnctl');
  program
    .description('Provision i6pn: regions, workspaces, endpoints and clusters of private IPv6 networking.')
    .version(VERSION, '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help for a command')
    .addOption(new Option('--nats <url>', 'NATS server URL; several, comma-separated, for a cluster').env('I6PN_NATS_URL').default(DEFAULT_NATS_URL))
    .addOption(new Option('--creds <file>', 'NATS credentials file (JWT and nkey seed)').env('I6PN_NATS_CREDS'))
    .addOption(
      new Option('--kv-replicas <n>', 'replicas of each bucket when i6pnctl creates it (1, 3 or 5; a NATS cluster wants 3)')
        .env('I6PN_KV_REPLICAS')
        .argParser(parseReplicas),
    )
    .addOption(
      new Option('--kv-history <n>', 'values kept per key when i6pnctl creates a bucket (default 5; endpoints buckets keep 1)')
        .env('I6PN_KV_HISTORY')
        .argParser(parsePositiveInt('--kv-history', 64)),
    )
    .addOption(new Option('--kv-storage <type>', 'storage of a bucket i6pnctl creates').choices(['file', 'memory']).env('I6PN_KV_STORAGE'))
    .showSuggestionAfterError(true)
    // Every command's help also lists --nats and --creds.
    .configureHelp({ showGlobalOptions: true })
    .exitOverride()
    .addHelpText('after', `${MANUAL}\n${EXAMPLE}\n`);
  oneLineErrors(program, io);

  const withStore = async <T>(cmd: Command, fn: (store: Store) => Promise<T>): Promise<T> => {
    const g = cmd.optsWithGlobals<GlobalOpts>();
    const servers = parseList(g.nats);
    if (servers.length === 0) throw new StoreError('invalid', 'no NATS server given', 'set --nats or I6PN_NATS_URL, e.g. nats://127.0.0.1:4222');
    const store = await connectStore({
      servers,
      name: 'i6pnctl',
      ...(g.creds ? { creds: g.creds } : {}),
      ...(g.kvReplicas !== undefined ? { replicas: g.kvReplicas } : {}),
      ...(g.kvHistory !== undefined ? { history: g.kvHistory } : {}),
      ...(g.kvStorage !== undefined ? { storage: g.kvStorage } : {}),
    });
    try {
      return await fn(store);
    } finally {
      await store.close();
    }
  };

  const leaf = (parent: Command, nameAndArgs: string, summary: string, help: string, ex: string[]): Command => {
    const c = parent.command(nameAndArgs).description(summary);
    // Preformatted (help text after the options is not re-wrapped).
    c.addHelpText('after', `\n${help}\n${examples(ex)}`);
    c.exitOverride();
    oneLineErrors(c, io);
    return c;
  };
  const group = (name: string, summary: string): Command => {
    const c = program.command(name).description(summary);
    c.exitOverride();
    oneLineErrors(c, io);
    return c;
  };
  const jsonOption = (c: Command): Command => c.option('--json', 'print one JSON document instead of text');

  // ------------------------------------------------------------ region
  const region = group('region', 'Regions: named 16-bit ids, the fourth group of every address');
  jsonOption(
    leaf(
      region,
      'add <name>',
      'Register a region under a new 16-bit region id.',
      `The id is random unless --id is given, and never shared by two regions. It
becomes bits 48-63 of every address in the region, so that two addresses can be
compared by region before any lookup. Names: a lowercase letter, then up to 30
lowercase letters, digits or dashes. A region cannot be renamed or removed.

Prints the region's name and id. --json: {"v":1,"name":"eu-west","id":2672}`,
      ['i6pnctl region add eu-west', 'i6pnctl region add us-east --id 0x0a70', 'i6pnctl region add eu-west --json'],
    ),
  )
    .option('--id <id>', 'a fixed region id, 1-65535 (decimal or 0x hex)', (v: string) => {
      const n = /^0x[0-9a-f]{1,4}$/i.test(v) ? parseInt(v, 16) : /^[0-9]+$/.test(v) ? Number(v) : NaN;
      if (!(n >= 1 && n <= 0xffff)) throw new InvalidArgumentError('region id must be 1-65535 (decimal or 0x hex).');
      return n;
    })
    .action(async (name: string, o: { json?: boolean; id?: number }, cmd: Command) => {
      checkInput({ region: name });
      const r = await withStore(cmd, (s) => addRegion(s, name, o.id !== undefined ? { id: o.id } : {}));
      if (o.json) json(io, r);
      else keyValues(io, [['region', r.name], ['id', `${regionIdText(r.id)} (${r.id})`]]);
    });

  jsonOption(
    leaf(
      region,
      'list',
      'List regions and their ids.',
      `--json: {"regions":[{"v":1,"name":"eu-west","id":2672}], "invalid":[...]}
"invalid" lists entries of the regions bucket that break the schema.`,
      ['i6pnctl region list', 'i6pnctl region list --json'],
    ),
  ).action(async (o: { json?: boolean }, cmd: Command) => {
    const r = await withStore(cmd, (s) => listRegions(s));
    listing(io, r, o.json, (l) => regionsTable(io, l.regions));
  });

  // ------------------------------------------------------------ workspace
  const workspace = group('workspace', 'Workspaces: the unit of isolation, one /48 each');
  jsonOption(
    leaf(
      workspace,
      'create <name>',
      'Create a workspace with a new random 32-bit id and its /48.',
      `The id comes from a cryptographic source, is never zero and is never reused,
not even after the workspace is deleted. The subnet is fdaa:WWWW:WWWW::/48.
Names: a lowercase letter, then up to 30 lowercase letters, digits or dashes; a
name is free again once its workspace is deleted (the new workspace gets a new id).

Prints the id and the subnet.
--json: {"v":1,"name":"acme","id":1362575039,"subnet":"fdaa:5137:3ebf::/48",
         "createdAt":"2026-01-02T03:04:05.678Z"}`,
      ['i6pnctl workspace create acme', 'i6pnctl workspace create acme --json'],
    ),
  ).action(async (name: string, o: { json?: boolean }, cmd: Command) => {
    checkInput({ workspace: name });
    const w = await withStore(cmd, (s) => createWorkspace(s, name));
    if (o.json) json(io, w);
    else keyValues(io, [['workspace', w.name], ['id', `${workspaceIdText(w.id)} (${w.id})`], ['subnet', w.subnet]]);
  });

  jsonOption(
    leaf(
      workspace,
      'list',
      'List workspaces with their ids and subnets.',
      `Workspaces are listed by name; a deleted one is not listed.
--json: {"workspaces":[<as in \`workspace create --json\`>, ...],"invalid":[...]}
"invalid" lists entries of the workspaces bucket that break the schema.`,
      ['i6pnctl workspace list', 'i6pnctl workspace list --json'],
    ),
  ).action(async (o: { json?: boolean }, cmd: Command) => {
    const r = await withStore(cmd, (s) => listWorkspaces(s));
    listing(io, r, o.json, (l) => workspacesTable(io, l.workspaces));
  });

  jsonOption(
    leaf(
      workspace,
      'show <name>',
      'Show one workspace and how many endpoints it has per region.',
      `Exits 1 when there is no such workspace, which makes it a test in scripts:
  i6pnctl workspace show acme >/dev/null 2>&1 || i6pnctl workspace create acme
--json: {"workspace":{...},"endpoints":{"total":4,"byRegion":{"eu-west":4}},"invalid":[...]}`,
      ['i6pnctl workspace show acme', 'i6pnctl workspace show acme --json'],
    ),
  ).action(async (name: string, o: { json?: boolean }, cmd: Command) => {
    checkInput({ workspace: name });
    const r = await withStore(cmd, async (s) => {
      const w = await getWorkspace(s, name);
      if (!w) throw new StoreError('not-found', `unknown workspace ${JSON.stringify(name)}`, 'list workspaces with `i6pnctl workspace list`');
      const counts = await workspaceEndpointCounts(s, w.record);
      return { workspace: w.record, endpoints: { total: counts.total, byRegion: counts.byRegion }, invalid: counts.invalid };
    });
    warnInvalid(io, r.invalid);
    if (o.json) return json(io, r);
    const w = r.workspace;
    const regions = Object.entries(r.endpoints.byRegion).sort(([a], [b]) => a.localeCompare(b));
    keyValues(io, [
      ['workspace', w.name],
      ['id', `${workspaceIdText(w.id)} (${w.id})`],
      ['subnet', w.subnet],
      ['created', w.createdAt],
      ['endpoints', `${r.endpoints.total}${regions.length ? ` (${regions.map(([k, n]) => `${k}: ${n}`).join(', ')})` : ''}`],
    ]);
  });

  jsonOption(
    leaf(
      workspace,
      'delete <name>',
      'Delete a workspace; with --force, its endpoints first.',
      `Refuses (exit 1) while the workspace has endpoints, unless --force, which
removes them first (their addresses are never handed out again). The id stays
taken forever; the name can be used again by a new workspace.
--json: {"workspace":{...,"deletedAt":"..."},"removedEndpoints":[{...}]}`,
      ['i6pnctl workspace delete acme', 'i6pnctl workspace delete acme --force'],
    ),
  )
    .option('--force', 'remove the workspace\'s endpoints, then the workspace')
    .action(async (name: string, o: { json?: boolean; force?: boolean }, cmd: Command) => {
      checkInput({ workspace: name });
      const r = await withStore(cmd, (s) => deleteWorkspace(s, name, { force: o.force === true }));
      if (o.json) json(io, r);
      else io.out(`deleted workspace ${r.workspace.name} (${workspaceIdText(r.workspace.id)}, ${r.workspace.subnet}) and ${r.removedEndpoints.length} endpoint${r.removedEndpoints.length === 1 ? '' : 's'}\n`);
    });

  // ------------------------------------------------------------ endpoint
  const endpoint = group('endpoint', 'Endpoints: one container interface, one address');
  jsonOption(
    leaf(
      endpoint,
      'add',
      'Register an endpoint and print its new address.',
      `The address is fdaa:<workspace id>:<region id>:<64 random bits>, unique and never
handed out again, even after the endpoint is removed. --ifname is the host side
of the container's veth pair on --node, as the runtime names it; one endpoint per
interface name per node. With --no-i6pn the endpoint gets an address but can reach
no private address, and none can reach it. --name gives it a name, unique in its
workspace and region, that the node resolvers answer as <name>.i6pn.local to the
workspace's containers in the region (and to nobody else).

Prints the address alone, for scripts: addr=$(i6pnctl endpoint add ...).
--json: {"v":1,"address":"fdaa:...","workspace":"acme","workspaceId":...,"region":"eu-west",
         "regionId":...,"node":"node-a","ifname":"veth1a2b","i6pn":true,"createdAt":"...",
         "name":"web-1"}   (name, cluster and rank only when set)`,
      [
        'i6pnctl endpoint add --workspace acme --region eu-west --node node-a --ifname veth1a2b',
        'i6pnctl endpoint add --workspace acme --region eu-west --node node-a --ifname veth7 --name web-1',
        'i6pnctl endpoint add --workspace acme --region eu-west --node node-b --ifname veth9 --no-i6pn',
      ],
    ),
  )
    .requiredOption('--workspace <name>', 'the workspace')
    .requiredOption('--region <name>', 'the region of the node')
    .requiredOption('--node <name>', 'the node the container runs on')
    .requiredOption('--ifname <ifname>', 'host-side interface name of the endpoint (at most 15 characters)')
    .option('--no-i6pn', 'register without private networking (reaches no fdaa:: address)')
    .option('--name <name>', 'its DNS name, unique in the workspace and region (a lowercase DNS label)')
    .action(async (o: { json?: boolean; workspace: string; region: string; node: string; ifname: string; i6pn: boolean; name?: string }, cmd: Command) => {
      checkInput(o);
      const e = await withStore(cmd, (s) =>
        addEndpoint(s, { workspace: o.workspace, region: o.region, node: o.node, ifname: o.ifname, i6pn: o.i6pn, ...(o.name !== undefined ? { name: o.name } : {}) }),
      );
      if (o.json) json(io, e);
      else io.out(`${e.address}\n`);
    });

  jsonOption(
    leaf(
      endpoint,
      'rename <address> [name]',
      'Give an endpoint a name, another name, or (--clear) none.',
      `The new name is claimed first (unique in the endpoint's workspace and region;
exit 1 when taken), then the endpoint is rewritten, then its old name is freed.
The resolvers answer the new name within a second and the old one no more.
--json: the endpoint as it is now, as in \`endpoint add --json\`.`,
      ['i6pnctl endpoint rename fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f web-2', 'i6pnctl endpoint rename fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f --clear'],
    ),
  )
    .option('--clear', 'remove the endpoint\'s name')
    .action(async (address: string, name: string | undefined, o: { json?: boolean; clear?: boolean }, cmd: Command) => {
      if ((name === undefined) === (o.clear !== true)) throw new StoreError('invalid', 'pass either a name or --clear', 'see `i6pnctl endpoint rename --help`');
      checkInput({ address, ...(name !== undefined ? { name } : {}) });
      const e = await withStore(cmd, (s) => renameEndpoint(s, address, name ?? null));
      if (o.json) json(io, e);
      else io.out(e.name !== undefined ? `${e.address} is named ${e.name}\n` : `${e.address} has no name\n`);
    });

  jsonOption(
    leaf(
      endpoint,
      'remove <address>',
      'Remove the endpoint with this address.',
      `Agents stop allowing it at once. The address stays recorded as removed and is
never handed out again. The interface name on its node becomes free.
--json: the removed endpoint, as in \`endpoint add --json\`.`,
      ['i6pnctl endpoint remove fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f'],
    ),
  ).action(async (address: string, o: { json?: boolean }, cmd: Command) => {
    checkInput({ address });
    const e = await withStore(cmd, (s) => removeEndpoint(s, address));
    if (o.json) json(io, e);
    else io.out(`removed endpoint ${e.address} (workspace ${e.workspace}, region ${e.region}, node ${e.node}, ${e.ifname})\n`);
  });

  jsonOption(
    leaf(
      endpoint,
      'list',
      'List endpoints, optionally of one workspace, region or node.',
      `Filters combine. Entries that break the schema are reported on stderr (and in
"invalid" with --json) and not listed.
--json: {"endpoints":[<as in \`endpoint add --json\`>, ...],
         "invalid":[{"bucket":"i6pn_endpoints_eu-west","key":"<workspace id>.<endpoint id>",
                     "reason":"schema","message":"..."}]}
An invalid entry is named by its bucket and its key in that bucket.`,
      ['i6pnctl endpoint list', 'i6pnctl endpoint list --workspace acme --region eu-west', 'i6pnctl endpoint list --node node-a --json'],
    ),
  )
    .option('--workspace <name>', 'only this workspace')
    .option('--region <name>', 'only this region')
    .option('--node <name>', 'only this node')
    .action(async (o: { json?: boolean; workspace?: string; region?: string; node?: string }, cmd: Command) => {
      checkInput(o);
      const r = await withStore(cmd, (s) =>
        listEndpoints(s, {
          ...(o.workspace !== undefined ? { workspace: o.workspace } : {}),
          ...(o.region !== undefined ? { region: o.region } : {}),
          ...(o.node !== undefined ? { node: o.node } : {}),
        }),
      );
      listing(io, r, o.json, (l) => endpointsTable(io, l.endpoints));
    });

  // ------------------------------------------------------------ cluster
  const cluster = group('cluster', 'Clusters: many endpoints of one workspace in one region, named and ranked');
  jsonOption(
    leaf(
      cluster,
      'create',
      'Register --size endpoints in one region, placed round-robin over --nodes.',
      `The way a clustered job is placed: every endpoint is in the same workspace and
the same region (a cluster never spans regions), so all of them can reach each
other. Endpoint i goes to node i mod (number of nodes). Each gets the interface
name "i6p" + the last 12 hex digits of its endpoint id (15 characters), unique on
its node; the runtime names the host side of the veth accordingly.
All or nothing: if one registration fails, the others are removed.

With --name the cluster is a named object, unique in its workspace and region:
member i records the cluster and its rank i (placement order), \`cluster show\`
lists them by rank, and the node resolvers answer <name>.cluster.i6pn.local (every
member, by rank), <rank>.<name>.cluster.i6pn.local and the ranks in TXT and SRV.

Prints one line per endpoint, in rank order: address, node, interface name.
--json: {"workspace":"acme","region":"eu-west","name":"trainer","endpoints":[{...}, ...]}`,
      [
        'i6pnctl cluster create --workspace acme --region eu-west --size 8 --nodes node-a,node-b,node-c',
        'i6pnctl cluster create --workspace acme --region eu-west --size 4 --nodes a,b --name trainer',
      ],
    ),
  )
    .requiredOption('--workspace <name>', 'the workspace')
    .requiredOption('--region <name>', 'the one region of every endpoint')
    .requiredOption('--size <n>', 'number of endpoints (1-10000)', parsePositiveInt('--size', 10_000))
    .requiredOption('--nodes <a,b,...>', 'nodes of that region, comma-separated', parseList)
    .option('--no-i6pn', 'register without private networking')
    .option('--name <name>', 'name the cluster (a lowercase DNS label): its members get ranks 0..size-1')
    .action(async (o: { json?: boolean; workspace: string; region: string; size: number; nodes: string[]; i6pn: boolean; name?: string }, cmd: Command) => {
      checkInput({ ...o, name: undefined, cluster: o.name });
      const eps = await withStore(cmd, (s) =>
        createCluster(s, { workspace: o.workspace, region: o.region, size: o.size, nodes: o.nodes, i6pn: o.i6pn, ...(o.name !== undefined ? { name: o.name } : {}) }),
      );
      // Placement order (round-robin), not storage order.
      if (o.json) json(io, { workspace: o.workspace, region: o.region, ...(o.name !== undefined ? { name: o.name } : {}), endpoints: eps });
      else for (const e of eps) io.out(`${e.address}  ${e.node}  ${e.ifname}\n`);
    });

  const clusterRef = (c: Command): Command =>
    c.requiredOption('--workspace <name>', 'the workspace').requiredOption('--region <name>', 'the region');
  jsonOption(
    clusterRef(
      leaf(
        cluster,
        'show <name>',
        'List a named cluster\'s members by rank.',
        `One line per live member: rank, address, node, interface name. A member removed
since creation leaves its rank empty (not listed). Exit 1 when there is no such cluster.
--json: {"cluster":{"v":1,"name":"trainer","workspace":"acme",...,"size":4},
         "members":[<endpoint, with "cluster" and "rank">, ...],"invalid":[...]}`,
        ['i6pnctl cluster show trainer --workspace acme --region eu-west'],
      ),
    ),
  ).action(async (name: string, o: { json?: boolean; workspace: string; region: string }, cmd: Command) => {
    checkInput({ workspace: o.workspace, region: o.region, cluster: name });
    const r = await withStore(cmd, (s) => showCluster(s, { workspace: o.workspace, region: o.region, name }));
    listing(io, r, o.json, (l) => clusterMembersTable(io, l.cluster, l.members));
  });

  jsonOption(
    leaf(
      cluster,
      'list',
      'List named clusters, optionally of one workspace or region.',
      `--json: {"clusters":[{"v":1,"name":"trainer","workspace":"acme","workspaceId":...,
         "region":"eu-west","regionId":...,"size":4,"createdAt":"..."}],"invalid":[...]}`,
      ['i6pnctl cluster list', 'i6pnctl cluster list --workspace acme --json'],
    ),
  )
    .option('--workspace <name>', 'only this workspace')
    .option('--region <name>', 'only this region')
    .action(async (o: { json?: boolean; workspace?: string; region?: string }, cmd: Command) => {
      checkInput(o);
      const r = await withStore(cmd, (s) => listClusters(s, { ...(o.workspace !== undefined ? { workspace: o.workspace } : {}), ...(o.region !== undefined ? { region: o.region } : {}) }));
      listing(io, r, o.json, (l) => clustersTable(io, l.clusters));
    });

  jsonOption(
    clusterRef(
      leaf(
        cluster,
        'swap <name> <rank-a> <rank-b>',
        'Swap the members at two ranks of a named cluster.',
        `The member at rank-a gets rank-b and the other way round (an empty rank: the
member moves). The resolvers answer the new ranks within a second; the two members
are rewritten one after the other, so for a moment both may hold one rank.
--json: {"members":[<endpoint>, ...]} by rank, as \`cluster show\`.`,
        ['i6pnctl cluster swap trainer 0 3 --workspace acme --region eu-west'],
      ),
    ),
  ).action(async (name: string, ra: string, rb: string, o: { json?: boolean; workspace: string; region: string }, cmd: Command) => {
    checkInput({ workspace: o.workspace, region: o.region, cluster: name });
    const rank = (v: string): number => {
      if (!/^[0-9]{1,5}$/.test(v)) throw new StoreError('invalid', `rank ${JSON.stringify(v)} is not a whole number`, 'pass two ranks, e.g. 0 3');
      return Number(v);
    };
    const a = rank(ra);
    const b = rank(rb);
    const members = await withStore(cmd, (s) => swapClusterRanks(s, { workspace: o.workspace, region: o.region, name }, a, b));
    if (o.json) json(io, { members });
    else for (const m of members) io.out(`${m.rank}  ${m.address}  ${m.node}  ${m.ifname}\n`);
  });

  jsonOption(
    clusterRef(
      leaf(
        cluster,
        'delete <name>',
        'Remove a named cluster and its members.',
        `Its live members are removed as by \`endpoint remove\` (their addresses are never
handed out again), then the cluster; its name is free again.
--json: {"cluster":{...},"removedEndpoints":[{...}]}`,
        ['i6pnctl cluster delete trainer --workspace acme --region eu-west'],
      ),
    ),
  ).action(async (name: string, o: { json?: boolean; workspace: string; region: string }, cmd: Command) => {
    checkInput({ workspace: o.workspace, region: o.region, cluster: name });
    const r = await withStore(cmd, (s) => deleteCluster(s, { workspace: o.workspace, region: o.region, name }));
    if (o.json) json(io, r);
    else io.out(`deleted cluster ${r.cluster.name} and ${r.removedEndpoints.length} endpoint${r.removedEndpoints.length === 1 ? '' : 's'}\n`);
  });

  // ------------------------------------------------------------ node
  const node = group('node', 'Nodes: as their agents register them');
  jsonOption(
    leaf(
      node,
      'list',
      'List nodes with their region, agent version and last heartbeat.',
      `A node whose agent has not written a heartbeat for --stale-after seconds
(default ${DEFAULT_STALE_AFTER_MS / 1000}) is marked STALE: its agent is down or cut off from NATS,
and its dataplane keeps enforcing the last state it knew.
--json: {"nodes":[{"v":1,"name":"node-a","region":"eu-west","version":"0.1.0","startedAt":"...",
          "heartbeatAt":"...","heartbeatAgeSeconds":2.1,"stale":false}],"invalid":[...]}`,
      ['i6pnctl node list', 'i6pnctl node list --region eu-west --stale-after 60 --json'],
    ),
  )
    .option('--region <name>', 'only nodes of this region')
    .option('--stale-after <seconds>', 'heartbeat age that marks a node stale', parsePositiveInt('--stale-after', 86_400), DEFAULT_STALE_AFTER_MS / 1000)
    .action(async (o: { json?: boolean; region?: string; staleAfter: number }, cmd: Command) => {
      checkInput({ region: o.region });
      const r = await withStore(cmd, (s) => listNodes(s, { staleAfterMs: o.staleAfter * 1000, ...(o.region !== undefined ? { region: o.region } : {}) }));
      listing(io, r, o.json, (l) => nodesTable(io, l.nodes));
    });

  // ------------------------------------------------------------ migrate
  jsonOption(
    leaf(
      program,
      'migrate',
      'Move endpoints from the single i6pn_endpoints bucket to one bucket per region.',
      `The first layout kept every endpoint in one bucket, i6pn_endpoints, under
<region>.<workspace id>.<endpoint id>; this one keeps each region's endpoints in
i6pn_endpoints_<region> under <workspace id>.<endpoint id>. migrate creates the
bucket of every registered region and copies each legacy entry into it,
create-if-absent: an entry already there with the same value is left alone, one
with another value is a conflict (reported, not overwritten), an invalid legacy
entry is reported and skipped. Running it again changes nothing.

While i6pn_endpoints exists, i6pnctl writes every endpoint it adds or removes to
both layouts and reads both, so agents not yet upgraded keep working. Once every
agent runs this version, --finish deletes i6pn_endpoints. It refuses (exit 1)
while a live agent (heartbeat younger than --stale-after) reports an older
version, or while conflicts remain, unless --force. Without i6pn_endpoints there
is nothing to migrate (exit 0). Conflicts and invalid entries are warnings on
stderr.

--json: {"legacyBucket":"i6pn_endpoints","found":true,"buckets":["i6pn_endpoints_eu-west"],
         "entries":4,"copied":4,"unchanged":0,"changedMeanwhile":0,"conflicts":[],
         "invalid":[],"oldAgents":[{"name":"node-a","region":"eu-west","version":"0.1.0"}],
         "finished":false}`,
      ['i6pnctl migrate', 'i6pnctl migrate --json', 'i6pnctl migrate --finish'],
    ),
  )
    .option('--finish', 'after copying, delete the i6pn_endpoints bucket (refused while older agents are live)')
    .option('--force', 'with --finish: delete it despite older agents or conflicts')
    .option('--stale-after <seconds>', 'heartbeat age past which an agent no longer counts', parsePositiveInt('--stale-after', 86_400), DEFAULT_STALE_AFTER_MS / 1000)
    .action(async (o: { json?: boolean; finish?: boolean; force?: boolean; staleAfter: number }, cmd: Command) => {
      if (o.force && !o.finish) throw new StoreError('invalid', '--force goes with --finish', 'run `i6pnctl migrate --finish --force`');
      const r = await withStore(cmd, (s) => migrateEndpoints(s, { version: VERSION, finish: o.finish === true, force: o.force === true, staleAfterMs: o.staleAfter * 1000 }));
      warnInvalid(io, r.invalid, 'not copied');
      warnConflicts(io, r.conflicts);
      if (o.json) json(io, r);
      else migrateText(io, r);
    });

  // ------------------------------------------------------------ peers
  jsonOption(
    leaf(
      program,
      'peers <address>',
      'List the endpoints that the endpoint with this address may reach.',
      `Its peers are the live i6pn endpoints of the same workspace in the same region,
itself excluded, so that a job can discover its peers without a side store. An
endpoint registered with --no-i6pn has none.

Prints one address per line.
--json: {"endpoint":{...},"peers":[{...}],"invalid":[...]}`,
      ['i6pnctl peers fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f', 'i6pnctl peers fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f --json'],
    ),
  ).action(async (address: string, o: { json?: boolean }, cmd: Command) => {
    checkInput({ address });
    const r = await withStore(cmd, (s) => peersOf(s, address));
    listing(io, r, o.json, (l) => {
      for (const p of l.peers) io.out(`${p.address}\n`);
    });
  });

  // ------------------------------------------------------------ observe
  const DROP_REASONS = REASON_NAMES.filter((r) => !r.startsWith('pass_'));
  const choices = (what: string, allowed: readonly string[]) => (v: string, prev?: Set<string>): Set<string> => {
    const out = new Set(prev);
    for (const x of parseList(v)) {
      if (!allowed.includes(x)) throw new InvalidArgumentError(`${what} ${JSON.stringify(x)} is not one of ${allowed.join(', ')}.`);
      out.add(x);
    }
    return out;
  };
  const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
  const parseSince = (v: string): Date => {
    const ago = /^([0-9]{1,9})([smhd])$/.exec(v);
    const t = ago ? Date.now() - Number(ago[1]) * UNIT_MS[ago[2] as keyof typeof UNIT_MS] : /^\d{4}-\d\d-\d\dT/.test(v) ? Date.parse(v) : NaN;
    if (!Number.isFinite(t)) throw new InvalidArgumentError('--since takes a duration (90s, 10m, 2h, 1d) or an RFC 3339 time (2026-12-02T12:00:00Z).');
    if (t > Date.now() + 1000) throw new InvalidArgumentError('--since is in the future.');
    return new Date(t);
  };
  jsonOption(
    leaf(
      program,
      'observe',
      'Print the drop events of every node, as they happen or from the last hour.',
      `Each agent publishes the drops its BPF programs sample (at most --events-per-sec
per CPU; the rest are counted in i6pn_drop_events_suppressed_total) on NATS:
i6pn.events.<region>.<node>. observe prints one line per event:

  <time> <node> <hook> <drop|would_drop> <reason> <protocol> <source> → <destination> len <bytes>

with each address's workspace and region from the store, its veth on the node
that reported it, and "not a member here" for a private address that node does
not hold as a live member. would_drop is monitor mode (the packet went on).

Without --since or --last it follows live events until interrupted (Ctrl-C
exits 0). --since and --last read the I6PN_EVENTS stream (an hour, 64 MiB at
most), then exit, or go on live with --follow, without a gap. Filters combine;
--reason and --hook take comma-separated lists. --region and --node select the
nodes that report; --workspace an event either of whose addresses is in it;
--from and --to the source and destination: an address, <node>/<ifname> or
<region>.<workspace id>.<endpoint id>.

--json: one object per line:
  {"v":1,"time":"...","node":"ams-1","region":"ams","hook":"from_endpoint",
   "verdict":"drop","reason":"cross_workspace","wouldDrop":false,
   "src":{"address":"fdaa:...","workspaceId":...,"regionId":...,"endpoint":"ams.<ws>.<ep>",
          "i6pn":true,"local":true,"ifname":"veth1a2b","workspace":"acme","region":"ams"},
   "dst":{...},"proto":"udp","sport":40001,"dport":7001,"len":62,"ifindex":7}
Needs the operator's (controller's) NATS credentials: agents cannot read events.`,
      [
        'i6pnctl observe',
        'i6pnctl observe --workspace acme --reason cross_workspace,cross_region',
        'i6pnctl observe --node ams-1 --hook from_endpoint --json',
        'i6pnctl observe --last 20',
        'i6pnctl observe --since 10m --follow --to ams-1/veth1a2b',
      ],
    ),
  )
    .option('--workspace <name>', 'events either of whose addresses is in this workspace')
    .option('--region <name>', 'events reported by the nodes of this region')
    .option('--node <name>', 'events reported by this node')
    .option('--reason <reasons>', `drop reasons, comma-separated: ${DROP_REASONS.join(', ')}`, choices('reason', DROP_REASONS))
    .option('--hook <hooks>', `hooks, comma-separated: ${HOOK_NAMES.join(', ')}`, choices('hook', HOOK_NAMES))
    .option('--from <endpoint>', 'source: an address or an endpoint name')
    .option('--to <endpoint>', 'destination: an address or an endpoint name')
    .option('--since <time>', 'from the stream, since a duration ago (90s, 10m, 2h) or an RFC 3339 time', parseSince)
    .option('--last <n>', 'from the stream, the last N matching events', parsePositiveInt('--last', 100_000))
    .option('--follow', 'with --since or --last: go on with live events')
    .action(
      async (
        o: { json?: boolean; workspace?: string; region?: string; node?: string; reason?: Set<string>; hook?: Set<string>; from?: string; to?: string; since?: Date; last?: number; follow?: boolean },
        cmd: Command,
      ) => {
        checkInput(o);
        if (o.follow && o.since === undefined && o.last === undefined) {
          throw new StoreError('invalid', '--follow goes with --since or --last', 'without them observe follows live events anyway');
        }
        await withStore(cmd, async (s) => {
          const filter: EventFilter = {
            ...(o.region !== undefined ? { region: o.region } : {}),
            ...(o.node !== undefined ? { node: o.node } : {}),
            ...(o.reason ? { reasons: o.reason } : {}),
            ...(o.hook ? { hooks: o.hook } : {}),
          };
          if (o.workspace !== undefined) {
            const w = await getWorkspace(s, o.workspace);
            if (!w) throw new StoreError('not-found', `unknown workspace ${JSON.stringify(o.workspace)}`, 'list workspaces with `i6pnctl workspace list`');
            filter.workspaceId = w.record.id;
          }
          if (o.from !== undefined) filter.from = await addressOf(s, o.from);
          if (o.to !== undefined) filter.to = await addressOf(s, o.to);
          const interrupted = new AbortController();
          const stop = (): void => interrupted.abort();
          process.once('SIGINT', stop);
          process.once('SIGTERM', stop);
          try {
            await observe(s, {
              filter,
              ...(o.since !== undefined ? { since: o.since } : {}),
              ...(o.last !== undefined ? { last: o.last } : {}),
              follow: o.follow === true,
              signal: interrupted.signal,
              onEvent: (e) => io.out(o.json ? `${JSON.stringify(e)}\n` : `${eventLine(e)}\n`),
              onInvalid: (subject, problem) => io.err(`i6pnctl: warning: invalid event on ${subject} (${problem}) — skipped; only i6pn agents should publish there\n`),
            });
          } finally {
            process.off('SIGINT', stop);
            process.off('SIGTERM', stop);
          }
        });
      },
    );

  // ------------------------------------------------------------ explain
  jsonOption(
    leaf(
      program,
      'explain <from> <to>',
      'Say whether a packet from one endpoint to another would be delivered, and why.',
      `Reads only the store and answers from the model of the policy the BPF programs
enforce (lib/policy.ts, which the tests hold the kernel to): each node as its
agent holds it once converged, the hooks the packet meets (the sender's
from_endpoint; across nodes the sender's to_fabric and the receiver's
from_fabric; the receiver's to_endpoint), the one that stops it and why:
"different workspaces: acme vs globex", "different regions: ams vs sjc",
"no i6pn: ... was registered with --no-i6pn", "endpoint sealed: ... was
removed at ...", "not a live endpoint: ...". Ports and protocols do not matter
to the policy between endpoints.

FROM is an endpoint, live or removed; TO an endpoint or any IPv6 address. Each
is an address, <node>/<ifname> (the host-side veth on its node) or
<region>.<workspace id>.<endpoint id>.

Exit status: 0 delivered, 1 dropped, 2 usage (or an endpoint it cannot find),
3 store unreachable.
--json: {"from":{"asked":"...","address":"...","state":"live","endpoint":"...","workspace":"acme",
          "region":"ams","node":"ams-1","ifname":"ep-a1","i6pn":true},"to":{...},
         "delivered":false,"stop":{"hook":"from_endpoint","node":"ams-1","reason":"cross_workspace",
          "verdict":"drop","why":"different workspaces: acme vs globex"},
         "why":"different workspaces: acme vs globex","path":[{...}, ...]}`,
      [
        'i6pnctl explain fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f fdaa:5137:3ebf:a70::9',
        'i6pnctl explain ams-1/veth1a2b ams-2/veth3c4d --json',
        'i6pnctl explain ams-1/veth1a2b ams-2/veth3c4d >/dev/null && echo reachable',
      ],
    ),
  ).action(async (from: string, to: string, o: { json?: boolean }, cmd: Command) => {
    const r = await withStore(cmd, (s) => explain(s, from, to));
    if (o.json) json(io, r);
    else explainText(io, r, endLabel);
    ctx.exitCode = r.delivered ? EXIT.ok : EXIT.refused;
  });

  addTunnelCommands({ io, leaf, group, jsonOption, withStore });
  return program;
}

interface CommandKit {
  io: Io;
  leaf: (parent: Command, nameAndArgs: string, summary: string, help: string, ex: string[]) => Command;
  group: (name: string, summary: string) => Command;
  jsonOption: (c: Command) => Command;
  withStore: <T>(cmd: Command, fn: (store: Store) => Promise<T>) => Promise<T>;
}

/**
 * An endpoint as the operator names it: an address (any spelling), its name
 * in DNS, <node>/<ifname> or <region>.<workspace id>.<endpoint id>
 * (findEndpointByName), as its canonical address.
 */
async function addressOf(s: Store, v: string): Promise<string> {
  try {
    return formatAddress(parseAddress(v));
  } catch {
    const r = await findEndpointByName(s, v);
    if (!r) throw new StoreError('not-found', `no live endpoint is named ${JSON.stringify(v)}`, 'list endpoints with `i6pnctl endpoint list`, or pass an address');
    return r.address;
  }
}

/** A port given on the command line: 1 to 65535, a clear error otherwise. */
function parsePort(v: string): number {
  if (!/^[0-9]+$/.test(v) || Number(v) < 1 || Number(v) > 65535) throw new InvalidArgumentError(`port ${JSON.stringify(v)} is out of range: use a whole number from 1 to 65535.`);
  return Number(v);
}

/** `gateway add|list|remove` and `tunnel create|list|remove`: the one way in from outside. */
function addTunnelCommands({ io, leaf, group, jsonOption, withStore }: CommandKit): void {
  const gateway = group('gateway', 'Tunnel gateways: members of workspace 0 that relay public TCP to tunneled ports');
  jsonOption(
    leaf(
      gateway,
      'add',
      'Register a tunnel gateway of a region on a node and print its private address.',
      `A gateway holds a private address in workspace 0 of fdaa::/16, which no tenant
ever gets: fdaa:0:0:<region>:6a7e:<48 random bits>, claimed once and never
reused. The runtime that starts i6pn-gateway makes its veth pair as for a
container (host side --ifname on --node, the address on the gateway's side);
the node's agent binds, hooks and routes it. The dataplane lets a gateway
reach tunneled ports only, and tenants reach it only as those ports' replies.

Prints the address alone, for scripts: gw=$(i6pnctl gateway add ...).
--json: the gateway's registration (an endpoint record with "role":"gateway").`,
      ['i6pnctl gateway add --region eu-west --node gw-1', 'i6pnctl gateway add --region eu-west --node gw-1 --ifname i6gw0 --json'],
    ),
  )
    .requiredOption('--region <name>', 'the region it serves')
    .requiredOption('--node <name>', 'the node it runs on (a gateway node of the region)')
    .option('--ifname <ifname>', 'host-side interface name of its veth (default "i6g" + 12 hex digits of its id)')
    .action(async (o: { region: string; node: string; ifname?: string; json?: boolean }, cmd: Command) => {
      checkInput({ region: o.region, node: o.node, ifname: o.ifname });
      const g = await withStore(cmd, (s) => addGateway(s, { region: o.region, node: o.node, ...(o.ifname !== undefined ? { ifname: o.ifname } : {}) }));
      if (o.json) json(io, g);
      else io.out(`${g.address}\n`);
    });

  jsonOption(
    leaf(
      gateway,
      'list',
      'List tunnel gateways, where they listen and whether they are alive.',
      `A gateway that has not written its record for ${DEFAULT_STALE_AFTER_MS / 1000} s is STALE.
--json: {"gateways":[{"member":{...},"state":{...}|null,"heartbeatAgeSeconds":1.2,"stale":false}],"invalid":[...]}`,
      ['i6pnctl gateway list', 'i6pnctl gateway list --region eu-west --json'],
    ),
  )
    .option('--region <name>', 'only this region')
    .action(async (o: { region?: string; json?: boolean }, cmd: Command) => {
      checkInput({ region: o.region });
      const r = await withStore(cmd, (s) => listGateways(s, o.region !== undefined ? { region: o.region } : {}));
      listing(io, r, o.json, (l) => gatewaysTable(io, l.gateways));
    });

  jsonOption(
    leaf(
      gateway,
      'remove <address>',
      'Remove the gateway with this address.',
      `Its registration goes (its address is never handed out again) and its record
with it; its node's agent seals its veth. --json: the removed registration.`,
      ['i6pnctl gateway remove fdaa::a70:6a7e:1b9d:3a11:71f2'],
    ),
  ).action(async (address: string, o: { json?: boolean }, cmd: Command) => {
    checkInput({ address });
    const g = await withStore(cmd, (s) => removeGateway(s, address));
    if (o.json) json(io, g);
    else io.out(`removed gateway ${g.address} (region ${g.region}, node ${g.node})\n`);
  });

  const tunnel = group('tunnel', 'Tunnels: one port of one endpoint, exposed to the public through the gateways');
  jsonOption(
    leaf(
      tunnel,
      'create',
      'Expose one port of one endpoint through the gateways of its region.',
      `Records a tunnel: an id, the endpoint, the protocol and the port. It is recorded
even when no gateway runs; each gateway of the endpoint's region picks it up
within a second, listens on a public port of its own choosing and relays TCP
to the endpoint's private address and this port. \`tunnel list\` shows where.
The dataplane then lets the region's gateways reach exactly this (address,
protocol, port), and nothing else of the endpoint.

--endpoint takes the endpoint's address or its name (endpoint add --name;
refused when another workspace or region uses the same name).
The endpoint must be live, a tenant's, with i6pn; one tunnel per endpoint,
protocol and port. --tls: the gateway terminates TLS with its certificate.

Prints the id alone, for scripts: id=$(i6pnctl tunnel create ...).
--json: {"v":1,"id":"3fa85f64a1b2","endpoint":"fdaa:...","workspace":"acme",...,
         "proto":"tcp","port":8080,"tls":false,"createdAt":"..."}`,
      ['i6pnctl tunnel create --endpoint fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f --port 8080', 'i6pnctl tunnel create --endpoint fdaa:5137:3ebf:a70:1b9d:3a11:71f2:5f0f --port 443 --tls --json'],
    ),
  )
    .requiredOption('--endpoint <address|name>', "the endpoint's private address, or its name")
    .requiredOption('--port <port>', 'its port to expose (1-65535)', parsePort)
    .addOption(new Option('--proto <proto>', 'transport protocol').choices([...TUNNEL_PROTOCOLS]).default('tcp'))
    .option('--region <name>', "the endpoint's region (checked, when given)")
    .option('--tls', 'the gateway terminates TLS with its certificate and relays plain TCP')
    .option('--wait <seconds>', 'wait until a gateway serves it, at most this long', parsePositiveInt('--wait', 3600))
    .action(async (o: { endpoint: string; port: number; proto: TunnelProtocol; region?: string; tls?: boolean; wait?: number; json?: boolean }, cmd: Command) => {
      checkInput({ region: o.region });
      const t = await withStore(cmd, async (s) => {
        const created = await createTunnel(s, { endpoint: await addressOf(s, o.endpoint), port: o.port, proto: o.proto, tls: o.tls ?? false, ...(o.region !== undefined ? { region: o.region } : {}) });
        if (o.wait === undefined) return { ...created, public: [], refused: [] } as TunnelStatus;
        const until = Date.now() + o.wait * 1000;
        for (;;) {
          const now = (await listTunnels(s, { region: created.region, endpoint: created.endpoint })).tunnels.find((x) => x.id === created.id);
          if (now && now.public.some((p) => !p.stale)) return now;
          if (Date.now() > until) throw new StoreError('not-found', `tunnel ${created.id} is recorded, but no gateway of region ${created.region} serves it after ${o.wait} s`, 'check `i6pnctl gateway list`; the tunnel stays recorded');
          await new Promise((r) => setTimeout(r, 100));
        }
      });
      if (o.json) json(io, t);
      else if (o.wait === undefined) io.out(`${t.id}\n`);
      else tunnelsTable(io, [t]);
    });

  jsonOption(
    leaf(
      tunnel,
      'list',
      'List tunnels and where the public reaches each.',
      `PUBLIC is <public address>:<port> at each gateway that serves the tunnel
("pending" while none does; a STALE gateway is marked).
--json: {"tunnels":[{<as in \`tunnel create --json\`>,"public":[{"gateway":"fdaa::…","node":"gw-1",
         "publicAddress":"203.0.113.7","port":20000,"stale":false}],"refused":[...]}],"invalid":[...]}`,
      ['i6pnctl tunnel list', 'i6pnctl tunnel list --region eu-west --json'],
    ),
  )
    .option('--region <name>', 'only this region')
    .option('--endpoint <address>', "only this endpoint's")
    .action(async (o: { region?: string; endpoint?: string; json?: boolean }, cmd: Command) => {
      checkInput({ region: o.region, address: o.endpoint });
      const r = await withStore(cmd, (s) => listTunnels(s, { ...(o.region !== undefined ? { region: o.region } : {}), ...(o.endpoint !== undefined ? { endpoint: o.endpoint } : {}) }));
      listing(io, r, o.json, (l) => tunnelsTable(io, l.tunnels));
    });

  jsonOption(
    leaf(
      tunnel,
      'remove <id>',
      'Remove the tunnel with this id.',
      `Its gateways stop listening and end its open connections within a second; the
agents take it out of the dataplane. --json: the removed tunnel.`,
      ['i6pnctl tunnel remove 3fa85f64a1b2'],
    ),
  ).action(async (id: string, o: { json?: boolean }, cmd: Command) => {
    const t = await withStore(cmd, (s) => removeTunnel(s, id));
    if (o.json) json(io, t);
    else io.out(`removed tunnel ${t.id} (${t.endpoint} ${t.proto}/${t.port})\n`);
  });
}

function exitCodeOf(e: StoreError): number {
  switch (e.code) {
    case 'invalid':
      return EXIT.usage;
    case 'unreachable':
    case 'jetstream':
    case 'corrupt':
      return EXIT.store;
    default:
      return EXIT.refused;
  }
}

/** Parse argv (as process.argv: node, script, ...args), run, return the exit code. */
export async function run(argv: string[], io: Io = processIo): Promise<number> {
  const ctx: Ctx = { io, exitCode: 0 };
  const program = buildProgram(ctx);
  try {
    await program.parseAsync(argv);
    return ctx.exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version "errors" are successes; the message was printed already.
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return EXIT.ok;
      if (e.code === 'commander.help' && e.exitCode === 0) return EXIT.ok; // `i6pnctl help region`
      // A group named without a subcommand prints its help and exits non-zero.
      return EXIT.usage;
    }
    if (e instanceof StoreError) {
      io.err(errorLine(e.what, e.hint));
      return exitCodeOf(e);
    }
    const err = e as Error;
    if (process.env.I6PN_DEBUG) io.err(`${err?.stack ?? String(e)}\n`);
    const name = err?.name && err.name !== 'Error' ? `${err.name}: ` : '';
    if (isConnectionFailure(e)) {
      io.err(errorLine(`NATS did not complete the request: ${name}${err?.message ?? String(e)}`, 'check that nats-server is up and reachable, then run the command again'));
      return EXIT.store;
    }
    io.err(errorLine(`unexpected failure: ${name}${err?.message ?? String(e)}`, 'run again with I6PN_DEBUG=1 for details and report it'));
    return EXIT.store;
  }
}
