/**
 * i6pnctl in-process (controller/program.ts `run`), for the bulk of the CLI
 * tests, and the one-line-stderr check every error case makes.
 */
import { run } from '../../controller/program.js';

/** In-process i6pnctl with --nats taken from env.I6PN_NATS_URL. */
export async function cli(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const nats = env.I6PN_NATS_URL ? ['--nats', env.I6PN_NATS_URL] : [];
  const code = await run(['node', 'i6pnctl', ...nats, ...args], { out: (x) => (stdout += x), err: (x) => (stderr += x) });
  return { code, stdout, stderr };
}

/** stderr must be exactly one line. */
export function oneLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l !== '');
  if (lines.length !== 1) throw new Error(`expected one line on stderr, got:\n${stderr}`);
  return lines[0]!;
}
