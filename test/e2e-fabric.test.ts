/**
 * The test fabric on its own, with no dataplane: the control experiment of the
 * isolation matrix. Every pair — allowed or forbidden — must deliver on every
 * probe, and a spoofed source must arrive, or a later "dropped" proves nothing.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { run } from './fabric/exec.js';
import { Fabric } from './fabric/fabric.js';
import { describeUnexpected, rejudge, runMatrix, type MatrixResult } from './fabric/matrix.js';
import { modelOracle, type PolicyOracle } from './fabric/policy.js';
import { ProbeDaemon, injectFromFabric, spoofUdp } from './fabric/probes.js';
import { planAddresses } from './fabric/provision.js';
import { acquireFabricLock, destroyRunSync, leftoverRuns, listNetns, runDir } from './fabric/state.js';
import { FABRIC_CASES, defaultTopology, pairKind } from './fabric/topology.js';

let releaseLock: (() => void) | undefined;
let fabric: Fabric;
const daemons = new Map<string, ProbeDaemon>();
let control: MatrixResult;
let oracle: PolicyOracle;

test.before(async () => {
  releaseLock = await acquireFabricLock();
  fabric = await Fabric.create({ nodes: defaultTopology.nodes, routeLocal: true });
  for (const e of planAddresses(defaultTopology)) await fabric.addEndpoint(e);
  oracle = modelOracle([...fabric.endpoints.values()]);
  await Promise.all([...fabric.endpoints.values()].map(async (e) => daemons.set(e.name, await ProbeDaemon.start(e, fabric.record))));
});

test.after.always(async () => {
  try {
    await Promise.all([...daemons.values()].map((d) => d.stop()));
    await fabric?.destroy();
  } finally {
    releaseLock?.();
  }
});

test.serial('the fabric delivers forbidden traffic when nothing enforces', async (t) => {
  const eps = [...fabric.endpoints.values()];
  control = await runMatrix(eps, daemons, { oracle, expect: 'all' });
  t.is(control.cells.length, eps.length * (eps.length - 1));
  t.deepEqual(control.unexpected, [], describeUnexpected(control));
  t.true(control.durationMs < 30_000, `matrix took ${control.durationMs} ms`);

  // The control is only worth something if forbidden pairs of every kind were among those delivered.
  const forbidden = control.cells.filter((c) => !c.expected.allowed);
  const reasons = new Set(forbidden.map((c) => c.expected.reason));
  t.deepEqual([...reasons].sort(), ['cross_region', 'cross_workspace', 'no_i6pn']);
  const kinds = (f: (k: ReturnType<typeof pairKind>) => boolean, allowed: boolean): number =>
    control.cells.filter((c) => c.expected.allowed === allowed && f(pairKind(c.src, c.dst))).length;
  t.true(kinds((k) => k.sameNode, true) > 0, 'an allowed same-node pair');
  t.true(kinds((k) => !k.sameNode && k.sameRegion, true) > 0, 'an allowed pair across nodes');
  t.true(kinds((k) => k.sameNode && !k.sameWorkspace, false) > 0, 'a forbidden same-node pair');
  t.true(kinds((k) => !k.sameNode && k.sameRegion && !k.sameWorkspace, false) > 0, 'a forbidden pair across nodes');
  t.true(kinds((k) => !k.sameRegion && k.sameWorkspace, false) > 0, 'a forbidden pair across regions');
  t.true(kinds((k) => !k.srcI6pn || !k.dstI6pn, false) > 0, 'a pair with a no-i6pn endpoint');
});

test.serial('read as an enforce run, the control flags exactly the forbidden pairs', (t) => {
  const asEnforce = rejudge(control, oracle, 'policy');
  const forbidden = control.cells.filter((c) => !c.expected.allowed).map((c) => `${c.src.name}>${c.dst.name}`);
  t.true(forbidden.length > 0);
  t.deepEqual(
    asEnforce.unexpected.map((c) => `${c.src.name}>${c.dst.name}`),
    forbidden,
  );
});

test.serial('the matrix sees a pair that does not deliver', async (t) => {
  const a1 = fabric.endpoint('a1');
  const a2 = fabric.endpoint('a2');
  const a3 = fabric.endpoint('a3');
  const node = fabric.node(a2.node);
  await run(['ip', '-n', node.netns, 'link', 'set', a2.ifname, 'down']);
  try {
    const r = await runMatrix([a1, a2, a3], daemons, { oracle, expect: 'all' });
    const broken = r.unexpected.map((c) => `${c.src.name}>${c.dst.name}`).sort();
    t.deepEqual(broken, ['a1>a2', 'a2>a1', 'a2>a3', 'a3>a2']);
    for (const c of r.unexpected) t.is(c.delivered, 0, `${c.src.name}>${c.dst.name} delivered ${c.delivered}`);
  } finally {
    // A link going down takes its addresses and routes with it: plug the cable back as the runtime did.
    await run(['ip', '-n', node.netns, 'link', 'set', a2.ifname, 'up']);
    await run(['ip', '-n', node.netns, 'addr', 'replace', 'fe80::1/64', 'dev', a2.ifname, 'nodad']);
    await run(['ip', '-n', node.netns, 'route', 'replace', `${a2.address}/128`, 'dev', a2.ifname]);
    // Neighbours that failed while the cable was out would answer "no route to host" for a while.
    await run(['ip', '-n', node.netns, 'neigh', 'flush', 'dev', a2.ifname]);
    await run(['ip', '-n', a2.netns, 'neigh', 'flush', 'dev', 'eth0']);
  }
  const again = await runMatrix([a1, a2], daemons, { oracle, expect: 'all' });
  t.deepEqual(again.unexpected, [], describeUnexpected(again));
});

test.serial('a spoofed source from inside a container is delivered when nothing enforces', async (t) => {
  const a1 = fabric.endpoint('a1');
  const a3 = fabric.endpoint('a3');
  // Same node, across nodes in the region, and across regions.
  for (const dst of ['a2', 'g2', 'i2']) {
    const got = await spoofUdp(a1, a3.address, daemons.get(dst)!);
    t.is(got.arrivedFrom, a3.address, `a1 posing as a3 → ${dst}`);
  }
  // The probe itself can tell: its own source arrives as itself.
  const honest = await spoofUdp(a1, a1.address, daemons.get('a3')!);
  t.is(honest.arrivedFrom, a1.address);
});

test.serial('packets injected straight onto the fabric are delivered when nothing enforces', async (t) => {
  const node = fabric.node('ams-2');
  for (const [src, dst] of FABRIC_CASES) {
    const s = fabric.endpoint(src);
    const got = await injectFromFabric(fabric, node, s.address, daemons.get(dst)!);
    t.is(got.arrivedFrom, s.address, `${src} → ${dst} injected at ams-2's uplink`);
  }
});

const HOLD = fileURLToPath(new URL('./fabric/hold.ts', import.meta.url));

async function startHold(): Promise<{ runId: string; child: ReturnType<typeof spawn> }> {
  const child = spawn(process.execPath, ['--import=tsx', HOLD], { stdio: ['ignore', 'pipe', 'inherit'] });
  const runId = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`hold exited ${code}`)));
  });
  return { runId, child };
}

function traces(runId: string): string[] {
  return [
    ...listNetns().filter((n) => n.startsWith(`i6pn-${runId}-`)),
    ...(existsSync(runDir(runId)) ? [runDir(runId)] : []),
  ];
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  test.serial(`a fabric removes everything it made on ${sig}`, async (t) => {
    const { runId, child } = await startHold();
    t.true(traces(runId).length > 5, 'the fabric exists while its owner runs');
    const code = await new Promise<number | null>((resolve) => {
      child.once('exit', (c) => resolve(c));
      child.kill(sig);
    });
    t.is(code, sig === 'SIGINT' ? 130 : 143);
    t.deepEqual(traces(runId), []);
    const link = await run(['ip', 'link', 'show', `i6pn${runId}`], { allowFail: true });
    t.not(link.code, 0, 'the root-namespace link is gone');
  });
}

test.serial('a fabric whose owner was killed is a leftover that down removes', async (t) => {
  const { runId, child } = await startHold();
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
  t.true(traces(runId).length > 5, 'SIGKILL leaves the fabric behind');
  t.true(leftoverRuns(false).includes(runId));
  t.false(leftoverRuns(false).includes(fabric.runId), 'a live run is not a leftover');
  destroyRunSync(runId);
  t.deepEqual(traces(runId), []);
  const probes = await run(['pgrep', '-f', `fabric/probe.py`], { allowFail: true });
  for (const pid of probes.stdout.split(/\s+/).filter(Boolean)) {
    const ns = await run(['ip', 'netns', 'identify', pid], { allowFail: true });
    t.false(ns.stdout.includes(runId), `probe daemon ${pid} of the killed run survived`);
  }
});
