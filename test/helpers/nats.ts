/**
 * A real nats-server with JetStream for tests: a free loopback port, a
 * temporary store directory, killed when the test process goes away (a
 * parent-death signal covers a crashed or SIGKILLed test process, an exit
 * hook covers the normal case).
 *
 * `stop()` keeps the store directory and `start()` brings the server back on
 * the same port and directory, so clients can reconnect and find their data.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, connect as tcpConnect } from 'node:net';
import { constants as osConstants, tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { natsServerBin } from './nats-server-bin.js';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface NatsServer {
  url: string;
  host: string;
  port: number;
  /** JetStream store directory (kept by stop(), removed by destroy()). */
  dir: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  destroy(): Promise<void>;
}

const live = new Set<ChildProcess>();
const dirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of live) {
      try {
        p.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
}

/** A port that was free a moment ago on `host`. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once something on host:port answers with a NATS INFO line. */
function waitForInfo(host: string, port: number, deadline: number, child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      if (child.exitCode !== null || child.signalCode !== null) {
        reject(new Error(`nats-server exited (${child.exitCode ?? child.signalCode}) before accepting connections`));
        return;
      }
      if (Date.now() > deadline) {
        reject(new Error(`nats-server did not accept connections on ${host}:${port} in time`));
        return;
      }
      const sock = tcpConnect({ host, port });
      let buf = '';
      const retry = (): void => {
        sock.destroy();
        setTimeout(attempt, 25);
      };
      sock.setTimeout(1000, retry);
      sock.on('error', retry);
      sock.on('data', (d) => {
        buf += d.toString();
        if (buf.startsWith('INFO ')) {
          sock.destroy();
          resolve();
        }
      });
    };
    attempt();
  });
}

/** `jetstream: false` starts a server without JetStream (to test that error). */
export async function startNats(opts: { host?: string; port?: number; jetstream?: boolean } = {}): Promise<NatsServer> {
  installExitHook();
  const host = opts.host ?? '127.0.0.1';
  const dir = await mkdtemp(join(tmpdir(), 'i6pn-nats-'));
  dirs.add(dir);
  let port = opts.port ?? 0;
  let child: ChildProcess | null = null;
  let stderr = '';

  const launch = async (): Promise<void> => {
    const js = opts.jetstream === false ? [] : ['-js', '-sd', dir];
    const args = ['--pdeathsig', 'KILL', natsServerBin(), '-a', host, '-p', String(port), ...js];
    const p = spawn('setpriv', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    stderr = '';
    p.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    // The server must not keep the test process alive on its own.
    p.unref();
    (p.stderr as unknown as { unref?: () => void } | null)?.unref?.();
    live.add(p);
    p.on('exit', () => live.delete(p));
    child = p;
    try {
      await waitForInfo(host, port, Date.now() + 10_000, p);
    } catch (e) {
      p.kill('SIGKILL');
      throw new Error(`${(e as Error).message}\n${stderr}`);
    }
  };

  // A port picked by freePort() can be taken before nats-server binds it: retry.
  for (let attempt = 0; ; attempt++) {
    if (opts.port === undefined) port = await freePort(host);
    try {
      await launch();
      break;
    } catch (e) {
      if (attempt >= 4 || opts.port !== undefined) {
        await rm(dir, { recursive: true, force: true });
        dirs.delete(dir);
        throw e;
      }
    }
  }

  const stop = async (): Promise<void> => {
    const p = child;
    child = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };

  return {
    get url() {
      return `nats://${host.includes(':') ? `[${host}]` : host}:${port}`;
    },
    host,
    get port() {
      return port;
    },
    dir,
    stop,
    async start() {
      if (child) return;
      await launch();
    },
    async destroy() {
      await stop();
      await rm(dir, { recursive: true, force: true });
      dirs.delete(dir);
    },
  };
}

export interface CtlResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Subprocesses at once: `node --import=tsx` costs a second or more of CPU, and
 * dozens of them at once only thrash a small machine.
 */
const CTL_PARALLEL = Math.max(2, Number(process.env.I6PN_TEST_CTL_PARALLEL) || 3);
let ctlRunning = 0;
const ctlQueue: (() => void)[] = [];

async function ctlSlot<T>(fn: () => Promise<T>): Promise<T> {
  if (ctlRunning >= CTL_PARALLEL) await new Promise<void>((resolve) => ctlQueue.push(resolve));
  ctlRunning++;
  try {
    return await fn();
  } finally {
    ctlRunning--;
    ctlQueue.shift()?.();
  }
}

/**
 * Run `i6pnctl` from source as a subprocess (cwd: the repository root).
 * `env` is merged over the current environment; I6PN_NATS_URL and
 * I6PN_NATS_CREDS are dropped from the inherited one so that a test only sees
 * what it passes. A child killed by a signal (the 120 s timeout) reports code
 * 128 + signal number and says so on stderr.
 */
export function ctl(args: string[], env: Record<string, string | undefined> = {}): Promise<CtlResult> {
  const base = { ...process.env };
  delete base.I6PN_NATS_URL;
  delete base.I6PN_NATS_CREDS;
  return ctlSlot(
    () =>
      new Promise<CtlResult>((resolve) => {
        execFile(
          process.execPath,
          ['--import=tsx', join('controller', 'cli.ts'), ...args],
          { cwd: REPO_ROOT, env: { ...base, NO_COLOR: '1', ...env }, maxBuffer: 64 * 1024 * 1024, timeout: 120_000 },
          (err, stdout, stderr) => {
            if (!err) return resolve({ code: 0, stdout, stderr });
            if (typeof err.code === 'number') return resolve({ code: err.code, stdout, stderr });
            const signal = err.signal ?? 'SIGKILL';
            const num = osConstants.signals[signal as keyof typeof osConstants.signals] ?? 9;
            resolve({ code: 128 + num, stdout, stderr: `${stderr}[ctl: i6pnctl killed by ${signal}${err.killed ? ' (timeout)' : ''}]\n` });
          },
        );
      }),
  );
}
