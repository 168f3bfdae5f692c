/**
 * The two ends of a tunnel on the test fabric, through tunnel_peer.py: the
 * servers in a container (HTTP, TCP echo) and the clients in any namespace
 * (the internet's, the gateway's, a container's). Shared by the end-to-end
 * tunnel test, the demo and the tunnel bench.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { run, startProcess } from './exec.js';
import type { Cluster } from './cluster.js';
import { startService, waitUntil, type Service } from './services.js';
import { defaultTopology, type Topology } from './topology.js';

export const PEER = fileURLToPath(new URL('./tunnel_peer.py', import.meta.url));
/** Ports the peer serves in a container: HTTP, and TCP echo on the others. */
export const HTTP_PORT = 8080;
export const ECHO_PORT = 9000;
/** A port with a listener that no tunnel names (an echo too). */
export const OTHER_PORT = 7000;
/** The size of the page GET /page serves (tunnel_peer.py PAGE_SIZE). */
export const PAGE_SIZE = 100_000;

/** The demo's and the tunnel test's topology: the default one plus a gateway node in ams. */
export const tunnelTopology: Topology = {
  ...defaultTopology,
  nodes: [...defaultTopology.nodes, { name: 'ams-gw', region: 'ams' }],
};

/** The page's sha256, as the peer computes it. */
export function pageSha256(): string {
  return execFileSync('python3', ['-c', `import hashlib,sys; sys.path.insert(0, ${JSON.stringify(fileURLToPath(new URL('.', import.meta.url)))}); import tunnel_peer; print(hashlib.sha256(tunnel_peer.PAGE).hexdigest())`], { encoding: 'utf8' }).trim();
}

/** HTTP on HTTP_PORT and echo on ECHO_PORT and OTHER_PORT, in a container. */
export async function servePeer(c: Cluster, endpoint: string): Promise<Service> {
  const e = c.fabric.endpoint(endpoint);
  const svc = startService(c.fabric, `peer-${endpoint}`, ['/usr/bin/python3', PEER, 'serve', String(HTTP_PORT), String(ECHO_PORT), String(OTHER_PORT)], { netns: e.netns, cmdlineMark: e.netns });
  await waitUntil(`peer servers in ${endpoint}`, async () => (await run(['python3', PEER, 'connect', '::1', String(HTTP_PORT)], { netns: e.netns })).stdout.trim() === 'open', 10_000, svc);
  return svc;
}

/** One client command of the peer in `netns`; its stdout. */
export async function peer(netns: string, ...args: (string | number)[]): Promise<string> {
  return (await run(['python3', PEER, ...args.map(String)], { netns, timeoutMs: 60_000 })).stdout.trim();
}

/** `connect`: "open", "refused" or "timeout". */
export const tcpProbe = (netns: string, host: string, port: number, srcPort?: number): Promise<string> =>
  srcPort === undefined ? peer(netns, 'connect', host, port) : peer(netns, 'connect', host, port, srcPort);

/** URL of a host and port ([v6] bracketed). */
export const url = (scheme: 'http' | 'https', host: string, port: number, path = '/page'): string => `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}${path}`;

/** A held connection (`hold`): resolves `held` once it echoed, `ended` with how long it lasted after. */
export function holdConnection(netns: string, host: string, port: number): { held: Promise<void>; ended: Promise<number>; child: ChildProcess } {
  const child = startProcess(['python3', PEER, 'hold', host, String(port)], { netns, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let heldResolve!: () => void;
  let heldReject!: (e: Error) => void;
  const held = new Promise<void>((res, rej) => ((heldResolve = res), (heldReject = rej)));
  const ended = new Promise<number>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('held')) heldResolve();
      const m = /ended ([\d.]+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => {
      heldReject(new Error(`hold exited before the echo: ${out}`));
      reject(new Error(`hold exited: ${out}`));
    });
  });
  held.catch(() => {});
  ended.catch(() => {});
  return { held, ended, child };
}
