/**
 * The nats-server that tests, the demo and the benches run: Debian 13's
 * (2.10), which `make deps` fetches into .deps/nats-server/ of the repository
 * (scripts/fetch-nats-server.sh; the version is the Makefile's). The Makefile
 * exports NATS_SERVER_BIN with this same path; set it to run another server
 * on purpose. Debian 12's /usr/sbin/nats-server (2.9) is not used.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const NATS_SERVER =
  process.env.NATS_SERVER_BIN || join(dirname(fileURLToPath(import.meta.url)), '..', '..', '.deps', 'nats-server', 'usr', 'sbin', 'nats-server');

/** NATS_SERVER, or an error that says how to get it (checked where a server is started, not on import). */
export function natsServerBin(): string {
  if (!existsSync(NATS_SERVER)) {
    throw new Error(`no nats-server at ${NATS_SERVER}: run \`make deps\` (it fetches Debian 13's nats-server into .deps/nats-server/)`);
  }
  return NATS_SERVER;
}

/**
 * nats-server with a configuration file (the deploy tests' clusters, leaves
 * and production configs): its output appended to `log`, killed with the test
 * process (parent-death signal), stopped and awaited at the end of the test.
 */
export function startConfiguredServer(
  t: { teardown(fn: () => Promise<void>): void },
  conf: string,
  cwd: string,
  log: string,
  env: Record<string, string> = {},
): ChildProcess {
  const fd = openSync(log, 'a');
  const proc = spawn('setpriv', ['--pdeathsig', 'KILL', natsServerBin(), '-c', conf], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
  });
  return proc;
}
