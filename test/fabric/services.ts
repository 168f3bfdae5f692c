/**
 * Long-running processes of a fabric run: nats-server (JetStream, in the root
 * namespace on the management address), the agents (inside node namespaces)
 * and Prometheus. All are started detached with their output in log files
 * under the run directory, and recorded, so that they can outlive a demo
 * driver and are still found and stopped by the run's clean-up.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { natsServerBin } from '../helpers/nats-server-bin.js';
import { inNetns, run, sleep } from './exec.js';
import type { Fabric, FabricNode } from './fabric.js';

export interface Service {
  name: string;
  pid: number;
  log: string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it is gone. */
  stop(graceMs?: number): Promise<void>;
  alive(): boolean;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie (exited, not yet reaped by us) counts as gone.
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Start `argv` detached (in `netns` if given), output to `<run dir>/logs/<name>.log`, recorded in the run. */
export function startService(
  fabric: Fabric,
  name: string,
  argv: readonly string[],
  opts: { netns?: string; cmdlineMark: string; env?: NodeJS.ProcessEnv; cwd?: string },
): Service {
  const logDir = join(fabric.record.dir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const log = join(logDir, `${name}.log`);
  const fd = openSync(log, 'a');
  const full = inNetns(opts.netns, argv);
  const exe = argv[0] ?? '';
  try {
    accessSync(exe, constants.X_OK);
  } catch {
    throw new Error(`cannot start ${name}: ${exe} is not an executable (is its package installed? make deps)`);
  }
  const child = spawn(full[0]!, full.slice(1), { detached: true, stdio: ['ignore', fd, fd], env: opts.env ?? process.env, ...(opts.cwd ? { cwd: opts.cwd } : {}) });
  child.unref();
  child.on('error', () => {
    /* reported by the readiness wait (the service is not alive) */
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not start ${name}: ${full.join(' ')}`);
  fabric.record.addProcess({ pid, what: name, cmdlineMark: opts.cmdlineMark });
  return {
    name,
    pid,
    log,
    alive: () => isAlive(pid),
    async stop(graceMs = 5000) {
      if (!isAlive(pid)) return;
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        return;
      }
      const deadline = Date.now() + graceMs;
      while (isAlive(pid) && Date.now() < deadline) await sleep(20);
      if (isAlive(pid)) process.kill(pid, 'SIGKILL');
      while (isAlive(pid)) await sleep(10);
      fabric.record.removeProcess(pid);
    },
  };
}

export function logTail(svc: Service, lines = 20): string {
  try {
    return readFileSync(svc.log, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

/** Poll `check` until it resolves true; throws with `what` and the service log after `timeoutMs`. */
export async function waitUntil(what: string, check: () => Promise<boolean>, timeoutMs: number, svc?: Service): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (svc && !svc.alive()) throw new Error(`${svc.name} exited while waiting for ${what}:\n${logTail(svc)}`);
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${svc ? `:\n${logTail(svc)}` : ''}`);
    await sleep(50);
  }
}

export function tcpOpen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.setTimeout(500, () => {
      s.destroy();
      resolve(false);
    });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export async function httpOk(url: string): Promise<boolean> {
  const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
  await r.arrayBuffer();
  return r.ok;
}

export const PROMETHEUS = process.env.PROMETHEUS_BIN ?? '/usr/bin/prometheus';

export interface Nats extends Service {
  url: string;
}

/**
 * nats-server with JetStream on the management address, in the root
 * namespace: reachable from every node over the fabric and from this process.
 * (test/helpers/nats.ts serves tests on loopback; this one must be reachable
 * from the node namespaces and may outlive its starter, hence its own.)
 */
export async function startNats(fabric: Fabric, port = 4222): Promise<Nats> {
  const dir = join(fabric.record.dir, 'nats');
  mkdirSync(dir, { recursive: true });
  const svc = startService(
    fabric,
    'nats-server',
    [natsServerBin(), '-js', '-a', fabric.mgmtAddress, '-p', String(port), '-sd', dir, '-n', `i6pn-${fabric.runId}`],
    { cmdlineMark: dir },
  );
  await waitUntil(`nats-server on [${fabric.mgmtAddress}]:${port}`, () => tcpOpen(fabric.mgmtAddress, port), 10_000, svc);
  const url = `nats://[${fabric.mgmtAddress}]:${port}`;
  fabric.record.setInfo('nats', url);
  return { ...svc, url };
}

/**
 * dnsmasq on `[address]:port` of the root namespace (the management link),
 * answering `records` (name → AAAA) and, with `hostsFile`, the names of that
 * file; nothing else (no upstream, no /etc/hosts, no /etc/resolv.conf). The
 * fabric's upstream resolver for names outside the zone, and the bench's
 * baseline.
 */
export async function startDnsmasq(
  fabric: Fabric,
  opts: { address: string; port: number; records?: Record<string, string>; hostsFile?: string; netns?: string; extra?: string[] },
): Promise<Service> {
  const dir = join(fabric.record.dir, `dnsmasq-${opts.port}`);
  mkdirSync(dir, { recursive: true });
  const argv = [
    '/usr/sbin/dnsmasq',
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--bind-interfaces',
    `--listen-address=${opts.address}`,
    '--except-interface=lo',
    `--port=${opts.port}`,
    `--pid-file=${join(dir, 'pid')}`,
    '--user=root',
    ...Object.entries(opts.records ?? {}).map(([name, addr]) => `--host-record=${name},${addr}`),
    ...(opts.hostsFile ? [`--addn-hosts=${opts.hostsFile}`] : []),
    ...(opts.extra ?? []),
  ];
  const svc = startService(fabric, `dnsmasq-${opts.port}`, argv, { cmdlineMark: dir, ...(opts.netns ? { netns: opts.netns } : {}) });
  // Listening, in its namespace (which the test process may not reach).
  const bound = async (): Promise<boolean> =>
    (await run(['ss', '-Hlnu', `sport = :${opts.port}`], { ...(opts.netns ? { netns: opts.netns } : {}), allowFail: true })).stdout.trim() !== '';
  await waitUntil(`dnsmasq on [${opts.address}]:${opts.port}`, bound, 10_000, svc);
  return svc;
}

export interface Prometheus extends Service {
  url: string;
  /** An instant query; returns the API's `data.result`. */
  query(promql: string): Promise<PromSample[]>;
}

export interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

/**
 * A real Prometheus scraping every agent's /metrics every second, with the
 * node and region as target labels (as deploy/prometheus/scrape-config.yaml
 * does in a cluster).
 */
export async function startPrometheus(
  fabric: Fabric,
  targets: ReadonlyArray<{ node: FabricNode; metricsAddr: string }>,
  port = 9090,
): Promise<Prometheus> {
  const dir = join(fabric.record.dir, 'prometheus');
  mkdirSync(join(dir, 'data'), { recursive: true });
  const config = [
    'global:',
    '  scrape_interval: 1s',
    '  evaluation_interval: 1s',
    'scrape_configs:',
    '  - job_name: i6pn-agent',
    '    static_configs:',
    ...targets.flatMap((t) => [
      `      - targets: ['${t.metricsAddr}']`,
      `        labels: { node: '${t.node.name}', region: '${t.node.region}' }`,
    ]),
    '',
  ].join('\n');
  const configFile = join(dir, 'prometheus.yml');
  writeFileSync(configFile, config);
  const listen = `[${fabric.mgmtAddress}]:${port}`;
  const svc = startService(
    fabric,
    'prometheus',
    [
      PROMETHEUS,
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=${listen}`,
      '--web.enable-lifecycle',
    ],
    { cmdlineMark: dir },
  );
  const url = `http://${listen}`;
  await waitUntil(`prometheus on ${url}`, () => httpOk(`${url}/-/ready`), 30_000, svc);
  fabric.record.setInfo('prometheus', url);
  const prom: Prometheus = {
    ...svc,
    url,
    async query(promql: string): Promise<PromSample[]> {
      const r = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`, { signal: AbortSignal.timeout(5000) });
      const body = (await r.json()) as { status: string; data?: { result: PromSample[] }; error?: string };
      if (body.status !== 'success' || !body.data) throw new Error(`prometheus query ${promql}: ${body.error ?? r.status}`);
      return body.data.result;
    },
  };
  // Ready means every target scraped once (and Prometheus's start-up work is behind it).
  await waitUntil(
    `prometheus scraping all ${targets.length} targets`,
    async () => (await prom.query('up == 1')).length === targets.length,
    30_000,
    svc,
  );
  return prom;
}
