/**
 * The three probes of the isolation matrix, with real tools, run from inside
 * a container's namespace: ICMPv6 echo with `ping`, a TCP connection and a UDP
 * datagram through the container's probe daemon (probe.py), plus the spoofing
 * probe (a raw frame with someone else's source, sent with scapy).
 */
import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { run, startProcess } from './exec.js';
import type { FabricEndpoint, FabricNode } from './fabric.js';
import type { RunRecord } from './state.js';

/** Debian's python3, which has scapy (a pyenv shim first in PATH may not). */
export const PYTHON = '/usr/bin/python3';
export const TCP_PORT = 7000;
export const UDP_PORT = 7001;
const PROBE_PY = fileURLToPath(new URL('./probe.py', import.meta.url));

export type ProbeKind = 'icmp' | 'tcp' | 'udp';
export const PROBE_KINDS: readonly ProbeKind[] = ['icmp', 'tcp', 'udp'];

export interface ProbeResult {
  kind: ProbeKind;
  delivered: boolean;
  /** Why not, in a word: timeout, refused, unreachable, … */
  detail?: string;
  ms: number;
}

interface Arrival {
  kind: 'tcp' | 'udp';
  src: string;
  token: string;
}

let tokenSeq = 0;
export function newToken(tag: string): string {
  tokenSeq += 1;
  return `${tag}-${process.pid}-${tokenSeq}-${Math.random().toString(36).slice(2, 8)}`;
}

/** One per container: listens on TCP/UDP and sends on command. */
export class ProbeDaemon {
  private readonly child: ChildProcess;
  private nextId = 1;
  private readonly pending = new Map<number, (r: { ok: boolean; err?: string }) => void>();
  private readonly arrivals = new Map<string, Arrival>();
  private readonly waiters = new Map<string, (a: Arrival) => void>();
  private exited = false;
  private stderr = '';

  private constructor(
    readonly endpoint: FabricEndpoint,
    private readonly record?: RunRecord,
  ) {
    this.child = startProcess([PYTHON, '-u', PROBE_PY, String(TCP_PORT), String(UDP_PORT)], { netns: endpoint.netns });
    if (this.child.pid !== undefined) record?.addProcess({ pid: this.child.pid, what: `probe ${endpoint.name}`, cmdlineMark: PROBE_PY });
    this.child.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-4000);
    });
    this.child.on('exit', () => {
      this.exited = true;
      for (const [, resolve] of this.pending) resolve({ ok: false, err: 'probe-daemon-exited' });
      this.pending.clear();
    });
  }

  static async start(endpoint: FabricEndpoint, record?: RunRecord): Promise<ProbeDaemon> {
    const d = new ProbeDaemon(endpoint, record);
    await d.ready();
    return d;
  }

  private ready(): Promise<void> {
    return new Promise((resolve, reject) => {
      const rl = createInterface({ input: this.child.stdout! });
      const timer = setTimeout(() => reject(new Error(`probe daemon of ${this.endpoint.name} not ready in 5 s: ${this.stderr}`)), 5000);
      this.child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`probe daemon of ${this.endpoint.name} exited (${code}): ${this.stderr}`));
      });
      rl.on('line', (line) => {
        if (process.env.I6PN_PROBE_DEBUG) process.stderr.write(`${Date.now()} ${this.endpoint.name} < ${line}\n`);
        let msg: Record<string, unknown>;
        try {
          msg = JSON.parse(line) as Record<string, unknown>;
        } catch {
          return;
        }
        if (msg['ready'] === true) {
          clearTimeout(timer);
          resolve();
        } else if (typeof msg['id'] === 'number') {
          const done = this.pending.get(msg['id']);
          this.pending.delete(msg['id']);
          done?.({ ok: msg['ok'] === true, err: typeof msg['err'] === 'string' ? msg['err'] : undefined });
        } else if (msg['ev'] === 'tcp' || msg['ev'] === 'udp') {
          const a: Arrival = { kind: msg['ev'], src: String(msg['src']), token: String(msg['token']) };
          this.arrivals.set(a.token, a);
          const w = this.waiters.get(a.token);
          this.waiters.delete(a.token);
          w?.(a);
        }
      });
    });
  }

  private command(cmd: Record<string, unknown>): Promise<{ ok: boolean; err?: string }> {
    if (this.exited) return Promise.resolve({ ok: false, err: 'probe-daemon-exited' });
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      if (process.env.I6PN_PROBE_DEBUG) process.stderr.write(`${Date.now()} ${this.endpoint.name} > ${JSON.stringify({ id, ...cmd })}\n`);
      this.child.stdin!.write(JSON.stringify({ id, ...cmd }) + '\n');
    });
  }

  /** A TCP connection to `dst` that exchanges a token with its probe daemon. */
  async tcp(dst: string, timeoutMs = 1000): Promise<ProbeResult> {
    const t0 = Date.now();
    const r = await this.command({ op: 'tcp', dst, port: TCP_PORT, token: newToken('tcp'), timeout: timeoutMs / 1000 });
    return { kind: 'tcp', delivered: r.ok, ...(r.ok ? {} : { detail: r.err ?? 'failed' }), ms: Date.now() - t0 };
  }

  /** ICMPv6 echo to `dst` with iputils ping, run by the daemon inside its container. */
  async ping(dst: string, timeoutS = 1): Promise<ProbeResult> {
    const t0 = Date.now();
    const r = await this.command({ op: 'ping', dst, timeout: timeoutS });
    return { kind: 'icmp', delivered: r.ok, ...(r.ok ? {} : { detail: r.err ?? 'failed' }), ms: Date.now() - t0 };
  }

  /**
   * Resolves once every line the daemon wrote before it has been read here:
   * after a sync, "no arrival event" means the daemon saw none (and not that
   * this process was too busy to read it in time).
   */
  async sync(): Promise<void> {
    await this.command({ op: 'sync' });
  }

  /** Send one datagram carrying `token`; whether it arrived is the receiver's to say. */
  async sendUdp(dst: string, token: string): Promise<{ ok: boolean; err?: string }> {
    return this.command({ op: 'udp', dst, port: UDP_PORT, token });
  }

  /** Resolves with the arrival of `token` here, or undefined after `timeoutMs`. */
  waitFor(token: string, timeoutMs: number): Promise<Arrival | undefined> {
    const seen = this.arrivals.get(token);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(token);
        resolve(undefined);
      }, timeoutMs);
      this.waiters.set(token, (a) => {
        clearTimeout(timer);
        resolve(a);
      });
    });
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGTERM');
    await gone;
    if (this.child.pid !== undefined) this.record?.removeProcess(this.child.pid);
  }
}

/** ICMPv6 echo from `src`'s container to `dst` with iputils ping. */
export async function ping(src: FabricEndpoint, dst: string, timeoutS = 1): Promise<ProbeResult> {
  const t0 = Date.now();
  const r = await run(['ping', '-6', '-n', '-q', '-c', '1', '-W', String(timeoutS), dst], {
    netns: src.netns,
    allowFail: true,
    timeoutMs: (timeoutS + 5) * 1000,
  });
  const ms = Date.now() - t0;
  if (r.code === 0) return { kind: 'icmp', delivered: true, ms };
  const text = (r.stdout + r.stderr).toLowerCase();
  const detail = text.includes('unreachable') ? 'unreachable' : text.includes('0 received') ? 'timeout' : `exit-${r.code}`;
  return { kind: 'icmp', delivered: false, detail, ms };
}

/** UDP from `from` to `to`, delivered iff the token arrives at `to`'s daemon in time. */
export async function udpProbe(from: ProbeDaemon, to: ProbeDaemon, timeoutMs = 1000): Promise<ProbeResult> {
  const t0 = Date.now();
  const token = newToken('udp');
  const arrival = to.waitFor(token, timeoutMs);
  const sent = await from.sendUdp(to.endpoint.address, token);
  if (!sent.ok) return { kind: 'udp', delivered: false, detail: sent.err ?? 'send-failed', ms: Date.now() - t0 };
  let a = await arrival;
  if (!a) {
    // The timer may have fired late, behind a busy event loop: ask the receiver what it saw.
    await to.sync();
    a = await to.waitFor(token, 0);
  }
  if (!a && process.env.I6PN_PROBE_LATE_MS) {
    const late = await to.waitFor(token, Number(process.env.I6PN_PROBE_LATE_MS));
    if (late) return { kind: 'udp', delivered: false, detail: `late:${Date.now() - t0}ms`, ms: Date.now() - t0 };
  }
  return { kind: 'udp', delivered: a !== undefined, ...(a ? {} : { detail: 'timeout' }), ms: Date.now() - t0 };
}

/**
 * From inside `from`'s container, a hand-made UDP datagram whose IPv6 source
 * is `spoofedSource`, to `to`'s probe daemon, sent as a raw Ethernet frame to
 * the container's gateway with scapy (so the kernel's socket layer, which
 * would refuse a foreign source, is out of the way). Resolves with the source
 * address the receiver saw, or undefined if nothing arrived in `timeoutMs`.
 */
export async function spoofUdp(
  from: FabricEndpoint,
  spoofedSource: string,
  to: ProbeDaemon,
  timeoutMs = 1500,
): Promise<{ token: string; arrivedFrom?: string }> {
  const token = newToken('spoof');
  const script = [
    'import sys',
    'from scapy.all import Ether, IPv6, UDP, Raw, sendp',
    'mac, src, dst, port, token = sys.argv[1:6]',
    "sendp(Ether(dst=mac)/IPv6(src=src, dst=dst)/UDP(sport=40001, dport=int(port))/Raw(load=token.encode()), iface='eth0', verbose=False)",
  ].join('\n');
  await run([PYTHON, '-c', script, from.gatewayMac, spoofedSource, to.endpoint.address, String(UDP_PORT), token], {
    netns: from.netns,
    timeoutMs: 30_000,
  });
  let a = await to.waitFor(token, timeoutMs);
  if (!a) {
    await to.sync();
    a = await to.waitFor(token, 0);
  }
  return { token, ...(a ? { arrivedFrom: a.src } : {}) };
}

/**
 * Poll UDP from `from` to `to` every few ms until delivery is `want`; resolves
 * with when (ms after the call) the first probe that showed it was sent, or undefined if it did not happen within `withinMs`.
 */
export async function timeUntilDelivery(from: ProbeDaemon, to: ProbeDaemon, want: boolean, withinMs: number): Promise<number | undefined> {
  const t0 = Date.now();
  for (;;) {
    const sentAt = Date.now() - t0;
    const r = await udpProbe(from, to, 100);
    if (r.delivered === want) return sentAt;
    if (Date.now() - t0 > withinMs) return undefined;
  }
}

/**
 * A UDP datagram put straight onto the fabric, as another node (or anything
 * plugged into the fabric) could send it: a raw frame from the node's bridge
 * port, in the fabric namespace, to the node's uplink — so it meets the node's
 * from_fabric hook (XDP or TC ingress) first. Resolves with the source the receiver saw, or
 * undefined if nothing arrived.
 */
export async function injectFromFabric(
  fabric: { fabricNetns: string },
  node: FabricNode,
  source: string,
  to: ProbeDaemon,
  timeoutMs = 1500,
): Promise<{ token: string; arrivedFrom?: string }> {
  const token = newToken('inject');
  const script = [
    'import sys',
    'from scapy.all import Ether, IPv6, UDP, Raw, sendp',
    'mac, iface, src, dst, port, token = sys.argv[1:7]',
    "sendp(Ether(dst=mac)/IPv6(src=src, dst=dst, hlim=63)/UDP(sport=40002, dport=int(port))/Raw(load=token.encode()), iface=iface, verbose=False)",
  ].join('\n');
  await run([PYTHON, '-c', script, node.uplinkMac, node.fabricPort, source, to.endpoint.address, String(UDP_PORT), token], {
    netns: fabric.fabricNetns,
    timeoutMs: 30_000,
  });
  let a = await to.waitFor(token, timeoutMs);
  if (!a) {
    await to.sync();
    a = await to.waitFor(token, 0);
  }
  return { token, ...(a ? { arrivedFrom: a.src } : {}) };
}
