/**
 * Running the real tools (ip, sysctl, ping, python3, nsenter) in network
 * namespaces, for the test fabric and the benches (bench/lib/netns.ts builds
 * its run-scoped namespaces on this). One module owns process spawning so
 * that every command is entered into its namespace the same way and fails
 * with the command line in its message.
 */
import { execFile, spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

export class CommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly result: RunResult,
  ) {
    super(
      `command failed (exit ${result.code}): ${argv.join(' ')}\n${result.stderr.trim() || result.stdout.trim()}`,
    );
    this.name = 'CommandError';
  }
}

export interface RunOptions {
  /** Run inside this network namespace (a name under /run/netns), via nsenter. */
  netns?: string;
  /** Text written to the command's stdin. */
  input?: string;
  /** Kill the command after this many milliseconds (default 30 s). */
  timeoutMs?: number;
  /** Resolve with the result instead of throwing on a non-zero exit. */
  allowFail?: boolean;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** The path nsenter needs for a named network namespace. */
export function netnsPath(netns: string): string {
  return `/run/netns/${netns}`;
}

/**
 * argv to run `argv` in a network namespace. nsenter, not `ip netns exec`: the
 * latter mounts a private /sys, which would hide /sys/fs/bpf from the agent.
 */
export function inNetns(netns: string | undefined, argv: readonly string[]): string[] {
  return netns ? ['nsenter', `--net=${netnsPath(netns)}`, '--', ...argv] : [...argv];
}

export function run(argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const full = inNetns(opts.netns, argv);
  const [cmd, ...args] = full;
  if (!cmd) throw new Error('run: empty argv');
  return new Promise((resolve, reject) => {
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 << 20, env: opts.env ?? process.env, encoding: 'utf8', ...(opts.cwd ? { cwd: opts.cwd } : {}) },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        const result = { stdout, stderr, code };
        if (err && !opts.allowFail) reject(new CommandError(full, result));
        else resolve(result);
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/**
 * `run`, synchronously: for code that cannot wait (cleanup at exit, the
 * benches' setup). Same options, same CommandError.
 */
export function runSync(argv: readonly string[], opts: Pick<RunOptions, 'netns' | 'input' | 'allowFail' | 'env'> = {}): RunResult {
  const full = inNetns(opts.netns, argv);
  const [cmd, ...args] = full;
  if (!cmd) throw new Error('runSync: empty argv');
  const r = spawnSync(cmd, args, { encoding: 'utf8', input: opts.input, maxBuffer: 256 << 20, env: opts.env ?? process.env });
  const result = { stdout: r.stdout ?? '', stderr: r.stderr ?? '', code: r.status ?? -1 };
  if (result.code !== 0 && !opts.allowFail) throw new CommandError(full, result);
  return result;
}

/** `ip` with -batch: many changes in one process, stops at the first error. */
export async function ipBatch(lines: readonly string[], netns?: string): Promise<void> {
  if (lines.length === 0) return;
  const argv = netns ? ['ip', '-n', netns, '-batch', '-'] : ['ip', '-batch', '-'];
  await run(argv, { input: lines.join('\n') + '\n' });
}

/** Set sysctls inside a network namespace (one nsenter for all of them). */
export async function sysctls(netns: string, values: Record<string, string | number>): Promise<void> {
  const args = Object.entries(values).map(([k, v]) => `${k}=${v}`);
  await run(['sysctl', '-q', '-w', ...args], { netns });
}

/** Start a long-running process, optionally inside a network namespace. */
export function startProcess(argv: readonly string[], opts: SpawnOptions & { netns?: string } = {}): ChildProcess {
  const { netns, ...spawnOpts } = opts;
  const full = inNetns(netns, argv);
  const [cmd, ...args] = full;
  if (!cmd) throw new Error('startProcess: empty argv');
  return spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...spawnOpts });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Run `fn` over `items` with at most `limit` running at once, results in input order. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      out[i] = await fn(items[i] as T, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
