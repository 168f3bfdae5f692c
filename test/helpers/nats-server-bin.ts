/**
 * The nats-server that tests, the demo and the benches run: Debian 13's
 * (2.10), which `make deps` fetches into .deps/nats-server/ of the repository
 * (scripts/fetch-nats-server.sh; the version is the Makefile's). The Makefile
 * exports NATS_SERVER_BIN with this same path; set it to run another server
 * on purpose. Debian 12's /usr/sbin/nats-server (2.9) is not used.
 */
import { existsSync } from 'node:fs';
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
