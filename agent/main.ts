#!/usr/bin/env node
/**
 * i6pn-agent: one per node. Loads (or adopts) the pinned dataplane, attaches
 * it, follows the region's membership into its maps, routes local endpoints
 * and serves metrics. `i6pn-agent teardown` removes it all.
 *
 * Start order is chosen so the dataplane never opens: maps and programs are
 * loaded (adopting pinned maps, never clearing them), the uplink is attached,
 * and only then does membership change the maps; SIGTERM leaves everything in
 * place and enforcing.
 */
import type { Server } from 'node:http';
import { Dataplane } from './bpf/dataplane.js';
import { RESOLVER_ADDRESS } from '../lib/address.js';
import { Attacher } from './attach.js';
import { AGENT_VERSION, ConfigError, parseCommandLine, type AgentConfig, type TeardownConfig } from './config.js';
import { DropEventPublisher } from './events.js';
import { Heartbeat } from './heartbeat.js';
import { startHttp } from './http.js';
import { Interfaces, flushAgentRoutes, interfaceIndexes, removeLoopbackAddress } from './links.js';
import { DnsServer } from './dns-server.js';
import { NamesIndex } from './names.js';
import { Resolver } from './resolver.js';
import { createLogger, type Logger } from './log.js';
import { AgentMetrics } from './metrics.js';
import { AgentStore } from './store-client.js';
import { MembershipSync, nodeId } from './sync.js';
import { MembershipFollower } from './watch.js';
import { TUNNELS_MAP_CAPACITY, TunnelFollower, reconcileTunnelMap } from './tunnels.js';
import { agentInboxPrefix, tunnelsBucket } from '../lib/schema.js';

async function run(cfg: AgentConfig): Promise<void> {
  const log = createLogger(cfg.logLevel, { node: cfg.node, region: cfg.region });
  log.info({ version: AGENT_VERSION, config: { ...cfg, creds: cfg.creds ? '(set)' : undefined } }, 'i6pn-agent starting');
  const metrics = new AgentMetrics({ version: AGENT_VERSION, node: cfg.node, region: cfg.region, mode: cfg.mode }, log.child({ component: 'metrics' }));

  const state = { mapsLoaded: false, initialSyncDone: false };
  let attacher: Attacher | null = null;
  let dns: DnsServer | null = null;
  const server: Server = await startHttp({
    host: cfg.metricsHost,
    port: cfg.metricsPort,
    metrics,
    readiness: () => ({ ...state, uplinkAttached: attacher?.uplinkAttached ?? false, ...(cfg.dns ? { resolverListening: dns?.listening ?? false } : {}) }),
    log: log.child({ component: 'http' }),
  });
  log.info({ addr: `${cfg.metricsHost}:${cfg.metricsPort}` }, 'serving /metrics, /healthz, /readyz');

  // The dataplane: pinned maps are adopted as they are (never cleared), programs replaced.
  const dpLog = log.child({ component: 'dataplane' });
  const dp = await Dataplane.open({
    object: cfg.object,
    pinDir: cfg.bpffs,
    maxEndpoints: cfg.maxEndpoints,
    maxLocalIfaces: cfg.maxLocalIfaces,
    logger: {
      // libbpf warns when the clsact qdisc it would create exists: expected on every re-attach.
      warn: (obj, msg) => (msg?.includes('Exclusivity flag on') ? dpLog.debug(obj, msg) : dpLog.warn(obj, msg)),
      info: (obj, msg) => dpLog.info(obj, msg),
      debug: (obj, msg) => dpLog.debug(obj, msg),
    },
  });
  state.mapsLoaded = true;
  metrics.mapCapacity.set({ map: 'endpoints' }, dp.maxEndpoints);
  metrics.mapCapacity.set({ map: 'local_ifaces' }, dp.maxLocalIfaces);
  metrics.mapCapacity.set({ map: 'tunnels' }, TUNNELS_MAP_CAPACITY);
  metrics.mapEntries.set({ map: 'tunnels' }, dp.listTunnels().length);
  metrics.setCounterSource(() => dp.readCounters());
  metrics.setEventLossSource(() => dp.readEventLosses());
  log.info({ bpffs: cfg.bpffs, capacity: dp.maxEndpoints }, 'dataplane loaded (pinned maps adopted or created)');

  // Interfaces, then the uplink and the adopted local interfaces.
  const interfaces = new Interfaces(log.child({ component: 'links' }), cfg.rescanIntervalMs);
  await interfaces.start();

  let sync: MembershipSync | null = null;
  attacher = new Attacher({
    dp,
    interfaces,
    uplink: cfg.uplink,
    uplinkHook: cfg.uplinkHook,
    locals: () => sync?.localEndpoints() ?? new Map(),
    rewriteIfindex: (key, ifindex) => sync?.rewriteLocal(key, ifindex),
    metrics,
    log: log.child({ component: 'attach' }),
  });
  attacher.adopt();
  interfaces.onChange(() => void attacher!.schedule());
  await attacher.schedule();
  // Also periodically, so an attach or route that failed (an interface mid-change) is retried.
  const converger = setInterval(() => void attacher!.schedule(), cfg.rescanIntervalMs);

  // Membership.
  let follower: MembershipFollower | null = null;
  let tunnels: TunnelFollower | null = null;
  let heartbeat: Heartbeat | null = null;
  let store: AgentStore | null = null;
  let stopping = false;

  // Drop events: from the ring buffer to NATS (queued until the first connection).
  const publisher = new DropEventPublisher({
    node: cfg.node,
    region: cfg.region,
    sink: { get connected() { return store?.connected ?? false; }, publish: (subject, data) => store!.publish(subject, data) },
    membership: {
      member: (addr) => {
        const e = dp.getEndpoint(addr);
        return e ? { i6pn: e.flags.i6pn, local: e.flags.local } : null;
      },
      localIfname: (key) => sync?.localEndpoints().get(key)?.ifname,
    },
    metrics,
    log: log.child({ component: 'events' }),
  });
  const drops = dp.watchDropEvents((e) => publisher.take(e), { onInvalid: (err) => publisher.invalid(err) });

  const shutdown = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping; the dataplane stays attached and enforcing');
    const force = setTimeout(() => process.exit(0), 5000);
    force.unref();
    heartbeat?.stop();
    clearInterval(converger);
    await dns?.stop().catch(() => {});
    await follower?.stop().catch(() => {});
    await tunnels?.stop().catch(() => {});
    attacher?.stop();
    interfaces.stop();
    drops.close();
    await store?.close().catch(() => {});
    server.close();
    dp.close();
    log.info('stopped');
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));

  const storeLog = log.child({ component: 'store' });
  store = await AgentStore.connect({
    servers: cfg.nats,
    creds: cfg.creds,
    name: `i6pn-agent@${cfg.node}`,
    inboxPrefix: agentInboxPrefix(cfg.node),
    log: storeLog,
    onConnected: (up) => metrics.natsConnected.set(up ? 1 : 0),
    onDisconnect: () => metrics.natsDisconnects.inc(),
    onReconnect: () => {
      publisher.flush();
      follower?.resume();
      tunnels?.resume();
    },
    onEventsDenied: (subject) => publisher.denied(subject),
  });
  if (stopping) return;
  publisher.flush();

  heartbeat = new Heartbeat({
    node: cfg.node,
    region: cfg.region,
    version: AGENT_VERSION,
    intervalMs: cfg.heartbeatIntervalMs,
    put: (r) => store!.putNode(r),
    metrics,
    log: storeLog,
  });
  heartbeat.start();

  // The region's id: the config map needs it, and every address carries it.
  let regionId: number | null = null;
  for (let attempt = 0; regionId === null && !stopping; attempt++) {
    try {
      regionId = await store.regionId(cfg.region);
      if (regionId === null) storeLog.error({ region: cfg.region }, 'region is not registered in the store (i6pnctl region create); waiting');
    } catch (err) {
      storeLog.warn({ err }, 'looking up the region failed; retrying');
    }
    if (regionId === null) await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * 2 ** Math.min(attempt, 5))));
  }
  if (stopping || regionId === null) return;
  // The whole entry is rewritten: it keeps the uplink the attacher recorded (0 while there is none).
  dp.setConfig({
    node: nodeId(cfg.node),
    region: regionId,
    mode: cfg.mode,
    eventsPerSec: cfg.eventsPerSec,
    uplinkIfindex: attacher.uplinkIfindex ?? 0,
    forwardNonPrivate: cfg.forwardNonPrivate,
    localFastPath: cfg.localFastPath,
  });
  log.info({ regionId, nodeId: nodeId(cfg.node), mode: cfg.mode, uplinkIfindex: attacher.uplinkIfindex ?? 0, forwardNonPrivate: cfg.forwardNonPrivate, localFastPath: cfg.localFastPath }, 'dataplane configured');

  // The node resolver answers from the names index that the sync keeps with the maps.
  const names = cfg.dns ? new NamesIndex(regionId) : undefined;
  sync = new MembershipSync({
    names,
    map: dp,
    node: cfg.node,
    region: cfg.region,
    regionId,
    // Only a bound veth's ifindex goes into a map value (the attacher corrects it when it converges).
    ifindexOf: (ifname) => attacher!.boundIfindex(ifname),
    onLocalsChanged: () => void attacher!.schedule(),
    onRoom: () => follower?.roomFreed(),
    metrics,
    log: log.child({ component: 'sync' }),
  });
  follower = new MembershipFollower({
    nc: store.nc,
    inboxPrefix: store.inboxPrefix,
    jsm: store.jsm,
    region: cfg.region,
    regionId,
    position: () => dp.readSyncState(),
    adoptedLocals: () => attacher!.adoptedLocals(cfg.region, regionId!),
    sync,
    metrics,
    log: log.child({ component: 'sync' }),
    reconcileIntervalMs: cfg.reconcileIntervalMs,
    onInitialSync: () => {
      state.initialSyncDone = true;
      attacher!.enableRemoval();
    },
  });
  follower.start();

  if (cfg.dns && names) {
    metrics.setNamesSource(() => names.size);
    dns = new DnsServer({
      address: RESOLVER_ADDRESS,
      resolver: new Resolver({ zone: cfg.dns.zone, names, forwarding: cfg.dns.upstreams.length > 0 }),
      upstreams: cfg.dns.upstreams,
      rateLimit: cfg.dns.rateLimit,
      metrics,
      log: log.child({ component: 'dns' }),
    });
    await dns.converge();
    // Like the attacher: an address removed or a bind that failed comes back.
    const resolverConverger = setInterval(() => void dns?.converge(), cfg.rescanIntervalMs);
    resolverConverger.unref();
    log.info({ address: RESOLVER_ADDRESS, zone: cfg.dns.zone, upstreams: cfg.dns.upstreams, rateLimit: cfg.dns.rateLimit, listening: dns.listening }, 'node resolver started');
  }
  // The region's tunnels into the tunnels map: what its gateways may reach.
  const tunnelLog = log.child({ component: 'tunnels' });
  tunnels = new TunnelFollower({
    openBucket: () => store!.bucket(tunnelsBucket(cfg.region)),
    region: cfg.region,
    regionId,
    log: tunnelLog,
    onTunnels: (wanted) => {
      const r = reconcileTunnelMap(dp, wanted, tunnelLog);
      metrics.mapEntries.set({ map: 'tunnels' }, r.entries);
      if (r.failed) metrics.mapFull.inc(r.failed);
    },
    onRejected: (reason) => metrics.tunnelsRejected.inc({ reason }),
  });
  tunnels.start();
}

async function teardown(cfg: TeardownConfig): Promise<void> {
  const log = createLogger(cfg.logLevel, { command: 'teardown' });
  await flushAgentRoutes().catch((err: unknown) => log.warn({ err }, 'removing the agent\'s routes failed'));
  await removeLoopbackAddress(RESOLVER_ADDRESS).catch((err: unknown) => log.warn({ err }, 'removing the resolver\'s address failed'));
  Dataplane.teardown(cfg.bpffs, { interfaces: cfg.allInterfaces ? await interfaceIndexes() : [] });
  log.info({ bpffs: cfg.bpffs, allInterfaces: cfg.allInterfaces }, 'removed the i6pn dataplane: XDP link, TC filters, routes, the resolver\'s address and pins');
}

function fail(log: Logger | null, message: string, err?: unknown): never {
  if (log) log.fatal({ err }, message);
  process.stderr.write(`i6pn-agent: ${message}${err instanceof Error ? `: ${err.message}` : ''}\n`);
  process.exit(1);
}

async function main(): Promise<void> {
  let cmd;
  try {
    cmd = parseCommandLine(process.argv.slice(2));
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`i6pn-agent: ${err.message}\nRun i6pn-agent --help for the flags.\n`);
      process.exit(2);
    }
    throw err;
  }
  if (cmd.command === 'teardown') {
    try {
      await teardown(cmd.config);
    } catch (err) {
      fail(null, 'teardown failed', err);
    }
    return;
  }
  try {
    await run(cmd.config);
  } catch (err) {
    fail(createLogger(cmd.config.logLevel), 'cannot start', err);
  }
}

await main();
