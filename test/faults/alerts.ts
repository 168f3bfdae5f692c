/**
 * The deploy's alerting rules (deploy/prometheus/i6pn-rules.yaml) in the
 * fabric's real Prometheus, for the fault tests: the fabric's Prometheus
 * scrapes every agent each second but loads no rules; loadDeployRules() adds
 * the rule file to its configuration and reloads it (evaluated each second),
 * and alertStates() reads the ALERTS series Prometheus itself computes.
 *
 * An alert with a `for:` shows as `pending` until its duration has passed
 * (minutes, longer than a fault test): a test accepts `pending` as "the
 * condition holds" and says so; alerts without `for:` fire at once.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Cluster } from '../fabric/cluster.js';
import { sleep } from '../fabric/exec.js';

export const RULES_FILE = fileURLToPath(new URL('../../deploy/prometheus/i6pn-rules.yaml', import.meta.url));

/** Load the deploy's rules into the cluster's Prometheus (idempotent). */
export async function loadDeployRules(c: Cluster): Promise<void> {
  const prom = c.prometheus;
  if (!prom) throw new Error('the cluster runs no Prometheus');
  const config = join(c.fabric.record.dir, 'prometheus', 'prometheus.yml');
  const text = readFileSync(config, 'utf8');
  if (!text.includes('rule_files:')) writeFileSync(config, `${text.trimEnd()}\nrule_files:\n  - '${RULES_FILE}'\n`);
  const r = await fetch(`${prom.url}/-/reload`, { method: 'POST', signal: AbortSignal.timeout(10_000) });
  if (!r.ok) throw new Error(`prometheus reload: ${r.status} ${await r.text()}`);
  // The rules are loaded when Prometheus lists them.
  for (let i = 0; i < 50; i++) {
    const body = (await (await fetch(`${prom.url}/api/v1/rules`, { signal: AbortSignal.timeout(5000) })).json()) as { data: { groups: unknown[] } };
    if (body.data.groups.length > 0) return;
    await sleep(200);
  }
  throw new Error(`prometheus did not load ${RULES_FILE}`);
}

export type AlertState = 'firing' | 'pending';

/** alertname → state, for one node, as Prometheus evaluates the rules now. */
export async function alertStates(c: Cluster, node: string): Promise<Map<string, AlertState>> {
  const rows = await c.prometheus!.query(`ALERTS{node="${node}"}`);
  const out = new Map<string, AlertState>();
  for (const r of rows) {
    const name = r.metric['alertname']!;
    const state = r.metric['alertstate'] as AlertState;
    if (out.get(name) !== 'firing') out.set(name, state);
  }
  return out;
}

/** Wait until `alert` is pending or firing (or exactly `want`) on `node`; its state, or null after `timeoutMs`. */
export async function waitAlert(c: Cluster, node: string, alert: string, timeoutMs: number, want?: AlertState): Promise<AlertState | null> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = (await alertStates(c, node)).get(alert) ?? null;
    if (s !== null && (want === undefined || s === want)) return s;
    if (Date.now() > deadline) return null;
    await sleep(500);
  }
}
