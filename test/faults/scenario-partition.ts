/**
 * Fault 4: one node cut from NATS (nftables in its namespace drops its
 * packets to the NATS ports; the fabric link stays up) during churn and
 * traffic. The node keeps its last state and keeps enforcing; `i6pnctl node
 * list` reports it STALE and the alert's expression fires in the fabric's
 * Prometheus; healed, it converges and is fresh again.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { REPO_ROOT, type Cluster } from '../fabric/cluster.js';
import { run, sleep } from '../fabric/exec.js';
import { Churn, Traffic, defaultFlows, figures, waitMapsEqualStore, type FaultFigures } from './harness.js';
import type { FaultScenario } from './scenarios.js';

const NODE = 'ams-2';
const TABLE = 'i6pn_fault';
/**
 * nftables' own binary by its path: under `npx ava` (and any npm script)
 * node_modules/.bin comes first in PATH, and its `nft` is @vercel/nft, a
 * file tracer that prints its usage and exits 0 — the partition was never
 * made, and the check of its table "passed" on that exit code.
 */
const NFT = '/usr/sbin/nft';
/** The test's staleness: heartbeats every second (upFaultCluster), stale after 3 s. */
const STALE_AFTER_S = 3;
const ALERT = 'I6pnNodeHeartbeatStale';

/**
 * The alert's expression from deploy/prometheus/i6pn-rules.yaml, its
 * threshold (120 s, for a 5 s heartbeat) scaled to the test's 1 s heartbeat:
 * the same series and the same comparison, evaluated by the real Prometheus.
 */
export function alertExpr(): string {
  const doc = parse(readFileSync(join(REPO_ROOT, 'deploy/prometheus/i6pn-rules.yaml'), 'utf8')) as { groups: Array<{ rules: Array<{ alert?: string; expr: string }> }> };
  const rule = doc.groups.flatMap((g) => g.rules).find((r) => r.alert === ALERT);
  if (!rule) throw new Error(`no alert ${ALERT} in deploy/prometheus/i6pn-rules.yaml`);
  const expr = rule.expr.replace(/> 120$/, `> ${STALE_AFTER_S}`);
  if (expr === rule.expr) throw new Error(`${ALERT}'s expression changed (${rule.expr}): update the partition fault`);
  return expr;
}

export async function partitionFromNats(c: Cluster, node: string): Promise<void> {
  const n = c.node(node);
  const ports = c.natsCluster ? c.natsCluster.servers.map((s) => s.clientPort).join(', ') : '4222';
  const mgmt = c.fabric.mgmtAddress;
  // Both ways: the node's packets to NATS and NATS's packets to the node.
  const file = join(c.fabric.record.dir, `partition-${node}.nft`);
  writeFileSync(
    file,
    `table inet ${TABLE} {\n` +
      ` chain out {\n  type filter hook output priority 0; policy accept;\n  ip6 daddr ${mgmt} tcp dport { ${ports} } drop\n }\n` +
      ` chain in {\n  type filter hook input priority 0; policy accept;\n  ip6 saddr ${mgmt} tcp sport { ${ports} } drop\n }\n}\n`,
  );
  await run([NFT, '-f', file], { netns: n.netns });
  if (!(await partitioned(c, node))) throw new Error(`the partition's nftables table ${TABLE} is not in ${n.netns} after nft -f`);
}

/** Whether the partition's table is in `node`'s namespace. */
export async function partitioned(c: Cluster, node: string): Promise<boolean> {
  const r = await run([NFT, 'list', 'table', 'inet', TABLE], { netns: c.node(node).netns, allowFail: true });
  return r.code === 0 && r.stdout.includes(`table inet ${TABLE}`);
}

export async function healPartition(c: Cluster, node: string): Promise<void> {
  await run([NFT, 'delete', 'table', 'inet', TABLE], { netns: c.node(node).netns });
}

async function staleNow(c: Cluster, node: string): Promise<boolean> {
  const r = (await c.ctl!.run(['node', 'list', '--stale-after', String(STALE_AFTER_S)])) as { nodes: Array<{ name: string; stale: boolean }> };
  const me = r.nodes.find((x) => x.name === node);
  if (!me) throw new Error(`i6pnctl node list does not list ${node}`);
  return me.stale;
}

async function alertFiring(c: Cluster, node: string): Promise<boolean> {
  return (await c.prometheus!.query(alertExpr())).some((s) => s.metric['node'] === node);
}

/** ms until `cond` holds (polled), or -1 after `timeoutMs`. */
async function msUntil(cond: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (await cond().catch(() => false)) return Date.now() - t0;
    await sleep(250);
  }
  return -1;
}

async function partition(c: Cluster, log: (m: string) => void): Promise<FaultFigures> {
  if (!c.prometheus) throw new Error('the partition fault needs the fabric\'s Prometheus');
  const traffic = await Traffic.start(c, defaultFlows(c));
  const churn = new Churn(c, { region: 'ams' });
  const violations: string[] = [];
  try {
    churn.start();
    await sleep(2000);
    if (await staleNow(c, NODE)) violations.push(`${NODE} is stale before the partition`);
    const cutAt = Date.now();
    traffic.mark('partitioned');
    await partitionFromNats(c, NODE);
    // The partition must hold all along: checked, and put back if gone.
    let reapplied = 0;
    let holding = true;
    const keeper = (async () => {
      while (holding) {
        if (!(await partitioned(c, NODE))) {
          reapplied++;
          await partitionFromNats(c, NODE);
        }
        await sleep(200);
      }
    })();
    const [staleMs, alertMs] = await Promise.all([msUntil(() => staleNow(c, NODE), 30_000), msUntil(() => alertFiring(c, NODE), 30_000)]);
    if (staleMs < 0) {
      const ns = { netns: c.node(NODE).netns, allowFail: true };
      const [rules, conns] = await Promise.all([run([NFT, 'list', 'table', 'inet', TABLE], ns), run(['ss', '-Htn'], ns)]);
      violations.push(`i6pnctl node list did not report ${NODE} stale within 30 s (its rules: ${rules.stdout.replace(/\s+/g, ' ')}; its connections: ${conns.stdout.replace(/\s+/g, ' ')})`);
    }
    if (alertMs < 0) violations.push(`${ALERT} (${alertExpr()}) did not fire for ${NODE} within 30 s`);
    log(`${NODE} cut from NATS: STALE after ${staleMs} ms, ${ALERT} after ${alertMs} ms`);
    await sleep(1000);
    holding = false;
    await keeper;
    if (reapplied) log(`the partition's table went away ${reapplied} times and was put back`);
    const healedAt = Date.now();
    traffic.mark('healed');
    await healPartition(c, NODE);
    const freshMs = await msUntil(async () => !(await staleNow(c, NODE)), 60_000);
    if (freshMs < 0) violations.push(`${NODE} still stale 60 s after the partition healed`);
    const cr = await churn.stop({ boundMs: healedAt - cutAt + 30_000 });
    const convergeMs = await waitMapsEqualStore(c, 60_000);
    const tr = await traffic.stop();
    return figures('partition', {
      traffic: tr,
      churn: cr,
      convergeMs,
      extra: { partitionMs: healedAt - cutAt, staleMs, alertMs, freshMs, partitionReapplied: reapplied },
      violations,
    });
  } finally {
    await healPartition(c, NODE).catch(() => undefined);
    await churn.stop({ boundMs: 0 }).catch(() => undefined);
    await traffic.close();
  }
}

export const scenarios: FaultScenario[] = [{ name: 'partition', row: 'partition', run: partition }];
