/**
 * The agent's command line: the one module that knows commander. Every flag
 * has an environment variable (a DaemonSet sets those), and every value is
 * validated once, here, into a typed AgentConfig; the rest of the agent trusts
 * it.
 */
import { existsSync, readFileSync, statfsSync, statSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import { z } from 'zod';
import { isIP } from 'node:net';
import { RESOLVER_ADDRESS, formatAddress, parseAddress } from '../lib/address.js';
import { assertIfname, assertName, assertNodeName } from '../lib/schema.js';
import { LOG_LEVELS, type LogLevel } from './log.js';

/** The package root (holds package.json), from agent/ or dist/agent/. */
export const PACKAGE_ROOT: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return resolve(dirname(fileURLToPath(import.meta.url)), '..');
})();

export const AGENT_VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: string }).version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
})();

export const DEFAULT_BPFFS = '/sys/fs/bpf/i6pn';
/**
 * Loopback: a container reaches the node's own addresses through nothing of
 * i6pn's (the veth hooks drop traffic to the node), but the metrics need no
 * wider audience than the operator chooses. A DaemonSet sets the pod's address.
 */
export const DEFAULT_METRICS_ADDR = '127.0.0.1:9465';
export const DEFAULT_OBJECT = 'build/bpf/i6pn.bpf.o';
export const DEFAULT_MAX_ENDPOINTS = 65536;
export const DEFAULT_MAX_LOCAL_IFACES = 4096;
/** Hash maps above this size cost more memory than a node should give (about 100 B per entry in the kernel). */
export const MAX_MAX_ENDPOINTS = 16 * 1024 * 1024;
const BPF_FS_MAGIC = 0xcafe4a11;

export const DEFAULT_DNS_ZONE = 'i6pn.local';
export const DEFAULT_DNS_RATE_LIMIT = 500;
/** Where the default upstream resolvers come from. */
export const RESOLV_CONF = '/etc/resolv.conf';

export type Mode = 'enforce' | 'monitor';
export type UplinkHookChoice = 'auto' | 'xdp' | 'tc';

export interface AgentConfig {
  /** NATS server URLs. */
  nats: string[];
  creds: string | undefined;
  node: string;
  region: string;
  uplink: string;
  bpffs: string;
  metricsHost: string;
  metricsPort: number;
  mode: Mode;
  maxEndpoints: number;
  maxLocalIfaces: number;
  forwardNonPrivate: boolean;
  /** Deliver private packets to this node's endpoints straight out of their veth (bpf_redirect_neigh). */
  localFastPath: boolean;
  /** Where from_fabric runs on the uplink: auto (TC on a veth, native XDP elsewhere, TC if the driver has none), xdp or tc. */
  uplinkHook: UplinkHookChoice;
  object: string;
  reconcileIntervalMs: number;
  heartbeatIntervalMs: number;
  rescanIntervalMs: number;
  eventsPerSec: number;
  /** The node resolver, or null (--dns off). */
  dns: DnsConfig | null;
  logLevel: LogLevel;
}

export interface DnsConfig {
  /** The zone, lowercase, without the trailing dot. */
  zone: string;
  /** Upstream resolvers for names outside the zone, in order (empty: none, REFUSED). */
  upstreams: Array<{ host: string; port: number }>;
  /** Queries a second per source (0: no limit). */
  rateLimit: number;
}

export interface TeardownConfig {
  bpffs: string;
  /** Also clear i6pn's TC slot on every interface of the namespace (veths hooked without a local_ifaces entry). */
  allInterfaces: boolean;
  logLevel: LogLevel;
}

export type Command_ = { command: 'run'; config: AgentConfig } | { command: 'teardown'; config: TeardownConfig };

/** A configuration error: the message names the flag and its variable, and says what is expected. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

export const seconds = (what: string, min: number, max: number) =>
  z.coerce
    .number({ error: `${what} must be a number of seconds` })
    .refine((n) => Number.isFinite(n) && n >= min && n <= max, `${what} must be between ${min} and ${max} seconds`)
    .transform((n) => Math.round(n * 1000));

const natsUrl = z.string().refine((u) => {
  try {
    const url = new URL(u.includes('://') ? u : `nats://${u}`);
    return ['nats:', 'tls:', 'ws:', 'wss:'].includes(url.protocol) && url.hostname !== '';
  } catch {
    return false;
  }
}, 'expected nats://HOST:PORT (several separated by commas)');

/** HOST:PORT or [ADDRESS]:PORT; the brackets take IPv4 too, so `[$(POD_IP)]:9465` fits either family. */
export function parseHostPort(s: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new Error(`expected HOST:PORT or [IPV6]:PORT, got ${JSON.stringify(s)}`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

/** A domain name: LDH labels of 1 to 63 characters, at most 253 in all; lowercased, without the trailing dot. */
export function parseZone(s: string): string {
  const z = s.trim().toLowerCase().replace(/\.$/, '');
  const label = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
  if (z.length === 0 || z.length > 253 || !z.split('.').every((l) => label.test(l))) {
    throw new Error(`expected a domain name such as i6pn.local, got ${JSON.stringify(s)}`);
  }
  return z;
}

/**
 * An upstream resolver: ADDRESS, IPV4:PORT or [IPV6]:PORT (port 53 when not
 * given). Addresses only: no name to resolve first. An IPv6 address in its
 * canonical text, which is how the kernel reports the source of its answers.
 */
export function parseUpstream(s: string): { host: string; port: number } {
  const t = s.trim();
  const m = isIP(t) ? [t, t.includes(':') ? t : undefined, t.includes(':') ? undefined : t, '53'] : /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(t);
  const host = m?.[1] ?? m?.[2] ?? '';
  const port = Number(m?.[3]);
  if (!m || !isIP(host) || !(port >= 1 && port <= 65535)) throw new Error(`expected an address, IPV4:PORT or [IPV6]:PORT, got ${JSON.stringify(s)}`);
  return { host: isIP(host) === 6 ? formatAddress(parseAddress(host)) : host, port };
}

/**
 * The node's resolvers, from resolv.conf: its `nameserver` lines, less the
 * node resolver itself (a node whose resolv.conf points at it would ask
 * itself forever) and link-local ones (a zone id: not an address of this
 * namespace's routing). A missing file gives none.
 */
export function upstreamsFromResolvConf(path = RESOLV_CONF): Array<{ host: string; port: number }> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return [];
  }
  const out: Array<{ host: string; port: number }> = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    const host = m?.[1];
    if (host && !host.includes('%') && isIP(host) && host !== RESOLVER_ADDRESS) out.push(parseUpstream(host));
  }
  return out;
}

function isOnBpffs(dir: string): boolean {
  // The pin directory may not exist yet: its nearest existing ancestor decides.
  let d = dir;
  while (!existsSync(d)) {
    const up = dirname(d);
    if (up === d) return false;
    d = up;
  }
  try {
    return statfsSync(d).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

const bpffsDir = z
  .string()
  .refine(isAbsolute, 'must be an absolute path')
  .refine(isOnBpffs, 'is not on a bpf filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`, or `make bpffs`)');

/** max_entries of a BPF hash map. */
const mapCapacity = z.coerce
  .number({ error: 'must be a number' })
  .int('must be an integer')
  .min(1, 'must be at least 1')
  .max(MAX_MAX_ENDPOINTS, `must be at most ${MAX_MAX_ENDPOINTS}`);

/** A switch: `--flag` alone is true; a value (or the variable) is spelled out. */
const onOff = z
  .preprocess((v) => (v === true ? 'true' : v), z.enum(['true', 'false', '1', '0', 'yes', 'no'], { error: 'must be true or false' }))
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

/** --nats: one URL or several, comma-separated. */
export const natsUrls = z
  .string({ error: 'is required' })
  .min(1, 'is required')
  .transform((s) => s.split(',').map((u) => u.trim()).filter(Boolean))
  .pipe(z.array(natsUrl).min(1, 'is required'));

/** A file that must exist (credentials, certificates). */
export const existingFile = (what: string) =>
  z
    .string()
    .optional()
    .refine((p) => p === undefined || (existsSync(p) && statSync(p).isFile()), `no such ${what} file`);

const runSchema = z.object({
  nats: natsUrls,
  creds: existingFile('credentials'),
  node: z.string({ error: 'is required' }).transform((s, ctx) => tryCheck(() => assertNodeName(s), ctx)),
  region: z.string({ error: 'is required' }).transform((s, ctx) => tryCheck(() => assertName('region', s), ctx)),
  uplink: z.string({ error: 'is required' }).transform((s, ctx) => tryCheck(() => assertIfname(s), ctx)),
  bpffs: bpffsDir,
  uplinkHook: z.enum(['auto', 'xdp', 'tc'], { error: 'must be auto, xdp or tc' }),
  metricsAddr: z.string().transform((s, ctx) => tryCheck(() => parseHostPort(s), ctx)),
  mode: z.enum(['enforce', 'monitor'], { error: 'must be enforce or monitor' }),
  maxEndpoints: mapCapacity,
  maxLocalIfaces: mapCapacity,
  forwardNonPrivate: onOff,
  localFastPath: onOff,
  object: z
    .string()
    .transform((p) => resolve(PACKAGE_ROOT, p))
    .refine((p) => existsSync(p), 'no such file (build it with `make build`)'),
  reconcileInterval: seconds('the reconcile interval', 1, 86400),
  heartbeatInterval: seconds('the heartbeat interval', 0.1, 3600),
  rescanInterval: seconds('the interface rescan interval', 0.1, 3600),
  eventsPerSec: z.coerce.number({ error: 'must be a number' }).int('must be an integer').min(0).max(1_000_000),
  dns: onOff,
  dnsZone: z.string().transform((s, ctx) => tryCheck(() => parseZone(s), ctx)),
  dnsUpstream: z.string().transform((s, ctx) =>
    tryCheck(() => {
      const v = s.trim();
      if (v === 'none') return [];
      if (v === '' || v === 'resolv.conf') return upstreamsFromResolvConf();
      return v.split(',').map(parseUpstream);
    }, ctx),
  ),
  dnsRateLimit: z.coerce.number({ error: 'must be a number' }).int('must be an integer').min(0).max(10_000_000),
  logLevel: z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` }),
});

export function tryCheck<T>(f: () => T, ctx: z.RefinementCtx): T {
  try {
    return f();
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
}

/**
 * Options that each have an environment variable, and the error lines that
 * name a bad value's flag and variable (the agent's and the gateway's).
 */
export function flagTable(): { opt: (flags: string, env: string, description: string, defaultValue?: string) => Option; problemsOf: (error: z.ZodError) => string[] } {
  const flags: Record<string, { flag: string; env: string }> = {};
  return {
    opt(spec, env, description, defaultValue) {
      const o = new Option(spec, description).env(env);
      if (defaultValue !== undefined) o.default(defaultValue);
      flags[o.attributeName()] = { flag: o.long ?? spec, env };
      return o;
    },
    problemsOf(error) {
      return error.issues.map((i) => {
        const key = String(i.path[0] ?? '');
        const f = flags[key];
        const where = f ? `${f.flag} (${f.env})` : key || 'configuration';
        return `${where}: ${i.message}`;
      });
    },
  };
}

const { opt, problemsOf } = flagTable();

function buildProgram(onRun: (o: Record<string, unknown>) => void, onTeardown: (o: Record<string, unknown>) => void): Command {
  const program = new Command('i6pn-agent')
    .description(
      'i6pn node agent: loads the i6pn eBPF dataplane, keeps its maps equal to the region\'s membership in NATS ' +
        'JetStream KV, attaches XDP to the uplink and TC to every local endpoint\'s veth, routes local endpoints ' +
        '(/128 to the veth) and serves Prometheus metrics. Every flag can be given by its environment variable.',
    )
    .version(AGENT_VERSION)
    .enablePositionalOptions()
    .showHelpAfterError()
    .addOption(opt('--nats <urls>', 'I6PN_NATS_URL', 'NATS server URL(s), comma-separated (required)'))
    .addOption(opt('--creds <file>', 'I6PN_NATS_CREDS', 'NATS credentials file (JWT + nkey seed)'))
    .addOption(opt('--node <name>', 'I6PN_NODE', 'this node\'s name, as endpoints are registered (the Kubernetes node name) (required)'))
    .addOption(opt('--region <name>', 'I6PN_REGION', 'the region this node serves (required)'))
    .addOption(opt('--uplink <ifname>', 'I6PN_UPLINK', 'the node\'s fabric-facing interface: from_fabric and to_fabric are attached to it (required)'))
    .addOption(
      opt(
        '--uplink-hook <hook>',
        'I6PN_UPLINK_HOOK',
        'where from_fabric runs on the uplink: xdp (native XDP, before any skb: the right hook on a NIC whose driver runs it), ' +
          'tc (TC ingress: the right hook on a veth, where any XDP program turns segmentation offload off, or on a NIC ' +
          'without native XDP), or auto (tc on a veth; native XDP elsewhere, tc if the driver refuses it). Same decisions, same counters',
        'auto',
      ),
    )
    .addOption(opt('--bpffs <dir>', 'I6PN_BPFFS', 'bpffs directory where maps and links are pinned', DEFAULT_BPFFS))
    .addOption(opt('--metrics-addr <host:port>', 'I6PN_METRICS_ADDR', 'listen address of /metrics, /healthz and /readyz', DEFAULT_METRICS_ADDR))
    .addOption(opt('--mode <mode>', 'I6PN_MODE', 'enforce (drop) or monitor (count would-drops, deliver everything)', 'enforce'))
    .addOption(
      opt('--max-endpoints <n>', 'I6PN_MAX_ENDPOINTS', 'capacity of the endpoints map (set at creation; a pinned map keeps its size)', String(DEFAULT_MAX_ENDPOINTS)),
    )
    .addOption(
      opt(
        '--max-local-ifaces <n>',
        'I6PN_MAX_LOCAL_IFACES',
        'capacity of the local_ifaces map, the veths this node can bind (set at creation; a pinned map keeps its size). ' +
          'A veth beyond it keeps the TC programs without an entry: it drops everything and is counted in i6pn_unhooked_endpoints',
        String(DEFAULT_MAX_LOCAL_IFACES),
      ),
    )
    .addOption(
      opt(
        '--forward-non-private [bool]',
        'I6PN_FORWARD_NON_PRIVATE',
        'forward a container\'s own non-private IPv6 traffic (source = its own address; internet egress that the operator ' +
          'masquerades) through the node; never to the node itself. Off: only i6pn traffic, NDP/MLD and ICMPv6 errors on the veth',
        'false',
      ),
    )
    .addOption(
      opt(
        '--local-fast-path [bool]',
        'I6PN_LOCAL_FAST_PATH',
        'deliver a private packet for an endpoint of this node straight out of its veth (bpf_redirect_neigh) once ' +
          'from_endpoint or a TC from_fabric passed it, past the node\'s routing and netfilter; its to_endpoint hook still ' +
          'decides. Off: through the node\'s stack',
        'true',
      ),
    )
    .addOption(opt('--object <path>', 'I6PN_OBJECT', 'the compiled BPF object, relative to the package root', DEFAULT_OBJECT))
    .addOption(
      opt('--reconcile-interval <seconds>', 'I6PN_RECONCILE_INTERVAL', 'period (± 20 %) of the background reconcile (mark and sweep) of the maps against the store', '300'),
    )
    .addOption(opt('--heartbeat-interval <seconds>', 'I6PN_HEARTBEAT_INTERVAL', 'period of the node heartbeat in the nodes bucket', '5'))
    .addOption(
      opt('--rescan-interval <seconds>', 'I6PN_RESCAN_INTERVAL', 'period of the full interface rescan (besides `ip monitor link` events)', '10'),
    )
    .addOption(opt('--events-per-sec <n>', 'I6PN_EVENTS_PER_SEC', 'sampled drop events per second and CPU (0: none)', '100'))
    .addOption(
      opt(
        '--dns [bool]',
        'I6PN_DNS',
        `the node resolver: DNS on UDP and TCP port 53 of ${RESOLVER_ADDRESS} (put on the loopback device), which every ` +
          'container reaches through its own veth; it answers names of the querier\'s own workspace and region only',
        'true',
      ),
    )
    .addOption(opt('--dns-zone <name>', 'I6PN_DNS_ZONE', 'the zone the resolver answers for: <zone> (the querier itself), <name>.<zone>, <cluster>.cluster.<zone>, _peers.<zone>', DEFAULT_DNS_ZONE))
    .addOption(
      opt(
        '--dns-upstream <list>',
        'I6PN_DNS_UPSTREAM',
        `where names outside the zone go: addresses, IPV4:PORT or [IPV6]:PORT, comma-separated; "resolv.conf" (the nameservers of ${RESOLV_CONF}, read at start); ` +
          '"none" (answered REFUSED)',
        'resolv.conf',
      ),
    )
    .addOption(
      opt('--dns-rate-limit <qps>', 'I6PN_DNS_RATE_LIMIT', 'queries a second per source (container) the resolver answers, twice that in a burst; the rest are dropped and counted (0: no limit)', String(DEFAULT_DNS_RATE_LIMIT)),
    )
    .addOption(opt('--log-level <level>', 'I6PN_LOG_LEVEL', `log level: ${LOG_LEVELS.join(', ')}`, 'info'))
    .action((o: Record<string, unknown>) => onRun(o));

  program
    .command('teardown')
    .description(
      'remove everything the agent made on this node: the uplink\'s XDP link, the TC filters and /128 routes of the ' +
        'endpoints in the local_ifaces map, and every pin under --bpffs. The dataplane stops enforcing.',
    )
    .addOption(new Option('--bpffs <dir>', 'bpffs directory of the pins').env('I6PN_BPFFS').default(DEFAULT_BPFFS))
    .addOption(
      new Option(
        '--all-interfaces',
        'also remove i6pn\'s TC filters from every interface of this network namespace, not only those in local_ifaces: ' +
          'veths hooked without an entry (local_ifaces was full) are found only this way. For a node, which has one i6pn dataplane',
      ).default(false),
    )
    .addOption(new Option('--log-level <level>', 'log level').env('I6PN_LOG_LEVEL').default('info'))
    .action((o: Record<string, unknown>) => onTeardown(o));
  return program;
}

/**
 * Parse argv (without node and script) into a command and its validated
 * configuration. Throws ConfigError listing every problem. --help and
 * --version print and exit, as commander does.
 */
export function parseCommandLine(argv: string[]): Command_ {
  let result: Command_ | null = null;
  const program = buildProgram(
    (o) => {
      const r = runSchema.safeParse(o);
      if (!r.success) throw new ConfigError(problemsOf(r.error));
      const d = r.data;
      result = {
        command: 'run',
        config: {
          nats: d.nats,
          creds: d.creds,
          node: d.node,
          region: d.region,
          uplink: d.uplink,
          bpffs: d.bpffs,
          metricsHost: d.metricsAddr.host,
          metricsPort: d.metricsAddr.port,
          mode: d.mode,
          maxEndpoints: d.maxEndpoints,
          maxLocalIfaces: d.maxLocalIfaces,
          forwardNonPrivate: d.forwardNonPrivate,
          localFastPath: d.localFastPath,
          uplinkHook: d.uplinkHook,
          object: d.object,
          reconcileIntervalMs: d.reconcileInterval,
          heartbeatIntervalMs: d.heartbeatInterval,
          rescanIntervalMs: d.rescanInterval,
          eventsPerSec: d.eventsPerSec,
          dns: d.dns ? { zone: d.dnsZone, upstreams: d.dnsUpstream, rateLimit: d.dnsRateLimit } : null,
          logLevel: d.logLevel,
        },
      };
    },
    (o) => {
      const r = z.object({ bpffs: bpffsDir, allInterfaces: z.boolean(), logLevel: z.enum(LOG_LEVELS) }).safeParse(o);
      if (!r.success) throw new ConfigError(problemsOf(r.error));
      result = { command: 'teardown', config: r.data };
    },
  );
  program.parse(argv, { from: 'user' });
  if (!result) throw new ConfigError(['no command']);
  return result;
}
