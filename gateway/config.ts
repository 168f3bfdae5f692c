/**
 * i6pn-gateway's command line: every flag has an environment variable (a
 * DaemonSet sets those), every value is validated once, here, into a typed
 * GatewayConfig. The flag parser is commander, as the agent's; the shared
 * value rules (NATS URLs, HOST:PORT, seconds) are agent/config.ts's.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { Command } from 'commander';
import { z } from 'zod';
import { formatAddress, isGatewayAddress, parseAddress, regionOf } from '../lib/address.js';
import { assertName, assertNodeName } from '../lib/schema.js';
import { AGENT_VERSION, ConfigError, existingFile, flagTable, natsUrls, parseHostPort, seconds, tryCheck } from '../agent/config.js';
import { LOG_LEVELS, type LogLevel } from '../agent/log.js';

export const GATEWAY_VERSION = AGENT_VERSION;
export const DEFAULT_METRICS_ADDR = '127.0.0.1:9466';
export const DEFAULT_PORTS = '20000-20999';

export interface GatewayConfig {
  nats: string[];
  creds: string | undefined;
  region: string;
  /** The node it runs on (its registration's), for its record. */
  node: string;
  /** Its private address (i6pnctl gateway add), canonical. */
  address: string;
  addr: Uint8Array;
  /** Its region's id, from its address's bits. */
  regionId: number;
  /** Where it listens for the public (an IP address of its public interface, or :: for all). */
  listenAddress: string;
  /** What `tunnel list` shows the public: an address or a DNS name (default: listenAddress). */
  publicAddress: string;
  /** The ports it hands out to tunnels, first to last. */
  ports: { first: number; last: number };
  maxConnections: number;
  idleTimeoutMs: number;
  connectTimeoutMs: number;
  /** TLS termination for tunnels created with --tls: the certificate chain and key (PEM). */
  tls: { cert: Buffer; key: Buffer } | null;
  metricsHost: string;
  metricsPort: number;
  heartbeatIntervalMs: number;
  logLevel: LogLevel;
}

const { opt, problemsOf } = flagTable();

const count = (max: number) => z.coerce.number({ error: 'must be a number' }).int('must be an integer').min(1, 'must be at least 1').max(max, `must be at most ${max}`);
const ipAddress = z.string().refine((s) => isIP(s) !== 0, 'must be an IP address');

const schema = z
  .object({
    nats: natsUrls,
    creds: existingFile('credentials'),
    region: z.string({ error: 'is required' }).transform((s, ctx) => tryCheck(() => assertName('region', s), ctx)),
    node: z.string({ error: 'is required' }).transform((s, ctx) => tryCheck(() => assertNodeName(s), ctx)),
    address: z.string({ error: 'is required' }).transform((s, ctx) =>
      tryCheck(() => {
        const a = parseAddress(s);
        if (!isGatewayAddress(a)) throw new Error(`${s} is not a gateway's address (fdaa:0:0:<region>:6a7e::/80, as \`i6pnctl gateway add\` prints it)`);
        return a;
      }, ctx),
    ),
    listen: ipAddress,
    publicAddress: z.string().min(1).max(253).optional(),
    ports: z.string().transform((s, ctx) =>
      tryCheck(() => {
        const m = /^(\d{1,5})-(\d{1,5})$/.exec(s.trim());
        const first = Number(m?.[1]);
        const last = Number(m?.[2]);
        if (!m || !(first >= 1 && last <= 65535 && first <= last)) throw new Error(`expected FIRST-LAST, ports from 1 to 65535, got ${JSON.stringify(s)}`);
        return { first, last };
      }, ctx),
    ),
    maxConnections: count(1_000_000),
    idleTimeout: seconds('the idle timeout', 1, 86400),
    connectTimeout: seconds('the connect timeout', 0.1, 600),
    tlsCert: existingFile('certificate'),
    tlsKey: existingFile('key'),
    metricsAddr: z.string().transform((s, ctx) => tryCheck(() => parseHostPort(s), ctx)),
    heartbeatInterval: seconds('the heartbeat interval', 0.1, 3600),
    logLevel: z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` }),
  })
  .refine((o) => (o.tlsCert === undefined) === (o.tlsKey === undefined), { message: 'give both or neither (--tls-cert with --tls-key)', path: ['tlsCert'] });

function buildProgram(onRun: (o: Record<string, unknown>) => void): Command {
  return new Command('i6pn-gateway')
    .description(
      'i6pn tunnel gateway: holds a private address in workspace 0 (i6pnctl gateway add), follows its region\'s ' +
        'tunnels in NATS JetStream KV, listens on a public port for each and relays TCP to the endpoint\'s private ' +
        'address and port. The dataplane lets it reach exactly the tunneled ports. Every flag can be given by its environment variable.',
    )
    .version(GATEWAY_VERSION)
    .showHelpAfterError()
    .addOption(opt('--nats <urls>', 'I6PN_NATS_URL', 'NATS server URL(s), comma-separated (required)'))
    .addOption(opt('--creds <file>', 'I6PN_NATS_CREDS', 'NATS credentials file (deploy/nats/i6pn-nats-auth.ts gateway)'))
    .addOption(opt('--region <name>', 'I6PN_REGION', 'the region it serves (required)'))
    .addOption(opt('--node <name>', 'I6PN_NODE', 'the node it runs on, as registered (required)'))
    .addOption(opt('--address <address>', 'I6PN_GATEWAY_ADDRESS', 'its private address, as `i6pnctl gateway add` printed it (required); the runtime put it on its i6pn veth'))
    .addOption(opt('--listen <address>', 'I6PN_GATEWAY_LISTEN', 'the IP address the public reaches it on (:: for all of its addresses)', '::'))
    .addOption(opt('--public-address <host>', 'I6PN_GATEWAY_PUBLIC_ADDRESS', 'what `i6pnctl tunnel list` shows the public (a load balancer\'s address or a DNS name; default: --listen)'))
    .addOption(opt('--ports <first-last>', 'I6PN_GATEWAY_PORTS', 'the public ports it hands out, one per tunnel', DEFAULT_PORTS))
    .addOption(opt('--max-connections <n>', 'I6PN_GATEWAY_MAX_CONNECTIONS', 'open connections per tunnel; more are refused and counted', '1024'))
    .addOption(opt('--idle-timeout <seconds>', 'I6PN_GATEWAY_IDLE_TIMEOUT', 'a connection with no byte either way for this long is closed', '300'))
    .addOption(opt('--connect-timeout <seconds>', 'I6PN_GATEWAY_CONNECT_TIMEOUT', 'time to reach the endpoint before the public connection is closed', '5'))
    .addOption(opt('--tls-cert <file>', 'I6PN_GATEWAY_TLS_CERT', 'certificate chain (PEM) for tunnels created with --tls; without it such tunnels are refused'))
    .addOption(opt('--tls-key <file>', 'I6PN_GATEWAY_TLS_KEY', 'its private key (PEM)'))
    .addOption(opt('--metrics-addr <host:port>', 'I6PN_METRICS_ADDR', 'listen address of /metrics, /healthz and /readyz', DEFAULT_METRICS_ADDR))
    .addOption(opt('--heartbeat-interval <seconds>', 'I6PN_HEARTBEAT_INTERVAL', 'period of its record in the gateways bucket', '5'))
    .addOption(opt('--log-level <level>', 'I6PN_LOG_LEVEL', `log level: ${LOG_LEVELS.join(', ')}`, 'info'))
    .action((o: Record<string, unknown>) => onRun(o));
}

/** Parse argv (without node and script). Throws ConfigError listing every problem. */
export function parseGatewayCommandLine(argv: string[]): GatewayConfig {
  let result: GatewayConfig | null = null;
  buildProgram((o) => {
    const r = schema.safeParse(o);
    if (!r.success) throw new ConfigError(problemsOf(r.error));
    const d = r.data;
    const addr = d.address;
    result = {
      nats: d.nats,
      creds: d.creds,
      region: d.region,
      node: d.node,
      address: formatAddress(addr),
      addr,
      regionId: regionOf(addr),
      listenAddress: d.listen,
      publicAddress: d.publicAddress ?? d.listen,
      ports: d.ports,
      maxConnections: d.maxConnections,
      idleTimeoutMs: d.idleTimeout,
      connectTimeoutMs: d.connectTimeout,
      tls: d.tlsCert && d.tlsKey ? { cert: readFileSync(d.tlsCert), key: readFileSync(d.tlsKey) } : null,
      metricsHost: d.metricsAddr.host,
      metricsPort: d.metricsAddr.port,
      heartbeatIntervalMs: d.heartbeatInterval,
      logLevel: d.logLevel,
    };
  }).parse(argv, { from: 'user' });
  if (!result) throw new ConfigError(['no command']);
  return result;
}
