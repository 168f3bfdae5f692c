#!/usr/bin/env node
/**
 * i6pn-gateway: the one way in from the public. Runs in a namespace of its
 * own on a gateway node of its region, with two legs: its i6pn veth (its
 * private address in workspace 0, bound and hooked by the node's agent like
 * a container's) and its public interface. It follows the region's tunnels,
 * listens on a public port for each and relays TCP to the tunneled
 * endpoint's private address and port; the dataplane lets it reach exactly
 * those ports.
 *
 * Losing NATS changes nothing it serves (the last tunnels stay, none stops
 * until the store says so); a restart reads the tunnels again and keeps
 * their ports (its last record). SIGTERM closes every listener.
 */
import { formatAddress } from '../lib/address.js';
import { GATEWAYS_BUCKET, decodeRecord, gatewayInboxPrefix, gatewayKey, gatewayRecord, tunnelsBucket } from '../lib/schema.js';
import { ConfigError } from '../agent/config.js';
import { startHttp } from '../agent/http.js';
import { createLogger } from '../agent/log.js';
import { AgentStore } from '../agent/store-client.js';
import { TunnelFollower } from '../agent/tunnels.js';
import { GATEWAY_VERSION, parseGatewayCommandLine, type GatewayConfig } from './config.js';
import { Gateway } from './gateway.js';
import { GatewayMetrics } from './metrics.js';

async function run(cfg: GatewayConfig): Promise<void> {
  const log = createLogger(cfg.logLevel, { app: 'i6pn-gateway', region: cfg.region, address: cfg.address });
  log.info({ version: GATEWAY_VERSION, config: { ...cfg, addr: undefined, tls: cfg.tls ? '(set)' : null, creds: cfg.creds ? '(set)' : undefined } }, 'i6pn-gateway starting');
  const metrics = new GatewayMetrics({ version: GATEWAY_VERSION, region: cfg.region, address: cfg.address });
  const state = { storeConnected: false, tunnelsRead: false };
  const server = await startHttp({ host: cfg.metricsHost, port: cfg.metricsPort, metrics, readiness: () => ({ ...state }), log: log.child({ component: 'http' }) });

  let follower: TunnelFollower | null = null;
  const storeLog = log.child({ component: 'store' });
  const store = await AgentStore.connect({
    servers: cfg.nats,
    creds: cfg.creds,
    name: `i6pn-gateway@${cfg.address}`,
    inboxPrefix: gatewayInboxPrefix(cfg.addr), // the only inbox its credentials may subscribe to
    log: storeLog,
    onConnected: (up) => metrics.natsConnected.set(up ? 1 : 0),
    onReconnect: () => follower?.resume(),
  });
  state.storeConnected = true;
  const key = gatewayKey(cfg.region, cfg.addr);

  // The ports its tunnels had: its last record, if the store has it.
  const previous = new Map<string, number>();
  for (let attempt = 0; ; attempt++) {
    try {
      const e = await (await store.bucket(GATEWAYS_BUCKET, { direct: true })).get(key);
      const d = e && e.operation === 'PUT' ? decodeRecord(gatewayRecord, e.value) : null;
      if (d?.ok) for (const l of d.record.listeners) previous.set(l.tunnel, l.port);
      break;
    } catch (err) {
      storeLog.warn({ err: { message: (err as Error).message }, attempt }, 'reading the last gateway record failed; retrying');
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
    }
  }

  const gateway = new Gateway({
    cfg,
    metrics,
    log: log.child({ component: 'relay' }),
    version: GATEWAY_VERSION,
    previous,
    publish: async (r) => {
      await (await store.bucket(GATEWAYS_BUCKET, { direct: true })).put(key, JSON.stringify(r));
    },
  });
  follower = new TunnelFollower({
    openBucket: () => store.bucket(tunnelsBucket(cfg.region)),
    region: cfg.region,
    regionId: cfg.regionId,
    log: log.child({ component: 'tunnels' }),
    onTunnels: (t) => {
      state.tunnelsRead = true;
      void gateway.apply(t);
    },
    resyncMs: 30_000,
  });
  follower.start();
  const heartbeat = setInterval(() => void gateway.publish(), cfg.heartbeatIntervalMs);

  let stopping = false;
  const shutdown = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping: closing every listener');
    const force = setTimeout(() => process.exit(0), 5000);
    force.unref();
    clearInterval(heartbeat);
    await follower?.stop().catch(() => {});
    await gateway.stop();
    await store.close().catch(() => {});
    server.close();
    log.info('stopped');
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));
  log.info({ listen: cfg.listenAddress, public: cfg.publicAddress, ports: `${cfg.ports.first}-${cfg.ports.last}`, private: formatAddress(cfg.addr) }, 'following the tunnels of the region');
}

async function main(): Promise<void> {
  let cfg: GatewayConfig;
  try {
    cfg = parseGatewayCommandLine(process.argv.slice(2));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`i6pn-gateway: ${err.message}\nRun i6pn-gateway --help for the flags.\n`);
      process.exit(2);
    }
    throw err;
  }
  try {
    await run(cfg);
  } catch (err) {
    process.stderr.write(`i6pn-gateway: cannot start: ${(err as Error).message}\n`);
    process.exit(1);
  }
}

await main();
