/**
 * Agent life-cycle helpers for the faults: start an agent without waiting
 * for it, SIGKILL it, read its log and its pinned map's size.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Cluster } from '../fabric/cluster.js';
import { sleep } from '../fabric/exec.js';
import { readPinnedEndpoints } from '../helpers/agent-maps.js';

function agentLog(c: Cluster, node: string): string {
  return join(c.fabric.record.dir, 'logs', `agent-${node}.log`);
}

/** Bytes in `node`'s agent log so far (the log is appended to across restarts). */
export function agentLogOffset(c: Cluster, node: string): number {
  try {
    return statSync(agentLog(c, node)).size;
  } catch {
    return 0;
  }
}

/**
 * Start `node`'s agent; resolves at once (its readiness wait runs on, failures
 * ignored: the agent may be killed before). `logFrom`: where its own lines start.
 */
export function startAgentNoWait(c: Cluster, node: string, extraArgs: readonly string[] = []): { ready: Promise<boolean>; logFrom: number } {
  const logFrom = agentLogOffset(c, node);
  const ready = c.startAgent(node, c.mode, { extraArgs }).then(
    () => true,
    () => false,
  );
  return { ready, logFrom };
}

/** SIGKILL `node`'s agent (a crash: nothing closed, nothing flushed); resolves when it is gone. */
export async function killAgent(c: Cluster, node: string): Promise<void> {
  const svc = c.agents.get(node);
  if (!svc) throw new Error(`no agent running on ${node}`);
  if (svc.alive()) process.kill(svc.pid, 'SIGKILL');
  await svc.stop();
  c.agents.delete(node);
}

/** Entries of `node`'s pinned endpoints map, or -1 when it cannot be read (no pins). */
export function pinnedEndpointCount(c: Cluster, node: string): number {
  try {
    return readPinnedEndpoints(c.node(node).bpffs).size;
  } catch {
    return -1;
  }
}

/** Whether `node`'s agent logged a line with this `msg` (pino JSON) after byte `from` of its log. */
export function agentLogged(c: Cluster, node: string, msg: string, from: number): boolean {
  try {
    return readFileSync(agentLog(c, node)).subarray(from).toString('utf8').includes(`"msg":"${msg}"`);
  } catch {
    return false;
  }
}

/** Poll `cond` every `everyMs` until true; false after `timeoutMs`. */
export async function pollUntil(cond: () => boolean, timeoutMs: number, everyMs = 5): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (cond()) return true;
    await sleep(everyMs);
  }
  return cond();
}
