/**
 * Probe behind a finding of bench/README.md, not part of `make bench`: the
 * agent's membership pipeline (MembershipSync.ingest + flush into a real
 * endpoints map) on N snapshot entries (default 100 thousand), timed and
 * profiled in-process; prints µs per entry and the functions that take the
 * time (inclusive), and writes the CPU profile to /tmp.
 *
 * The profiler starts after the object is loaded: a profiler signal during
 * verification makes BPF_PROG_LOAD fail with EAGAIN.
 *
 *   node --import=tsx bench/probes/sync-profile.ts [N]
 */
import { randomFillSync } from 'node:crypto';
import { Session } from 'node:inspector/promises';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { Dataplane } from '../../agent/bpf/dataplane.js';
import { createLogger } from '../../agent/log.js';
import { AgentMetrics } from '../../agent/metrics.js';
import { MembershipSync, Operation } from '../../agent/sync.js';
import { endpointIdOf, formatAddress, workspaceIdHex } from '../../lib/address.js';
import { REPO_DIR } from '../lib/results.js';

const N = Number(process.argv[2] ?? 100_000);
const REGION = 'probe';
const REGION_ID = 0x0b0b;

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}

async function main(): Promise<void> {
  const enc = new TextEncoder();
  const addrs = new Uint8Array(N * 16);
  randomFillSync(addrs);
  const v = new DataView(addrs.buffer);
  const now = new Date();
  const entries: { key: string; value: Uint8Array; revision: number }[] = [];
  for (let i = 0; i < N; i++) {
    const ws = 0x5000_0000 + (i % 64);
    v.setUint16(i * 16, 0xfdaa);
    v.setUint32(i * 16 + 2, ws);
    v.setUint16(i * 16 + 6, REGION_ID);
    const a = addrs.subarray(i * 16, i * 16 + 16);
    const record = { v: 1, address: formatAddress(a), workspace: `ws-${ws.toString(16)}`, workspaceId: ws, region: REGION, regionId: REGION_ID, node: `node-${i % 100}`, ifname: `v${endpointIdOf(a).slice(0, 12)}`, i6pn: true, createdAt: now.toISOString() };
    entries.push({ key: `${workspaceIdHex(ws)}.${endpointIdOf(a)}`, value: enc.encode(JSON.stringify(record)), revision: i + 1 });
  }
  const log = createLogger('warn', {});
  const metrics = new AgentMetrics({ version: 'probe', node: 'probe-node', region: REGION, mode: 'enforce' }, log);
  const dp = await Dataplane.open({ object: join(REPO_DIR, 'build/bpf/i6pn.bpf.o'), maxEndpoints: N + 1024 });
  const sync = new MembershipSync({ map: dp, node: 'probe-node', region: REGION, regionId: REGION_ID, ifindexOf: () => undefined, onLocalsChanged: () => {}, metrics, log });

  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  const t0 = performance.now();
  sync.beginFullRead(1n);
  const created = now.getTime();
  for (const e of entries) sync.ingest(e.key, e.value, e.revision, Operation.PUT, created);
  sync.flush();
  const ms = performance.now() - t0;
  const { profile } = (await session.post('Profiler.stop')) as unknown as { profile: { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] } };
  dp.close();
  const file = `/tmp/i6pn-sync-profile-${process.pid}.cpuprofile`;
  writeFileSync(file, JSON.stringify(profile));
  console.log(`ingest + flush of ${N} entries: ${ms.toFixed(0)} ms, ${((ms * 1000) / N).toFixed(1)} µs per entry (profile: ${file})`);

  // Inclusive time per function: every sample counts once for each function on its stack.
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const incl = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((s, i) => {
    const dt = profile.timeDeltas[i] ?? 0;
    total += dt;
    const seen = new Set<string>();
    for (let id: number | undefined = s; id !== undefined; id = parent.get(id)) {
      const cf = byId.get(id)!.callFrame;
      const name = `${cf.functionName || '(anonymous)'} ${cf.url.split('/').pop() ?? ''}`;
      if (seen.has(name)) continue;
      seen.add(name);
      incl.set(name, (incl.get(name) ?? 0) + dt);
    }
  });
  const ours = [...incl.entries()].filter(([k]) => /sync\.ts|decode\.ts|table\.ts|schema\.ts|address\.ts|dataplane\.ts|libbpf\.ts|ipv6\.js|garbage/.test(k)).sort((a, b) => b[1] - a[1]);
  for (const [k, us] of ours.slice(0, 15)) console.log(`${((100 * us) / total).toFixed(1).padStart(5)} %  ${k}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
