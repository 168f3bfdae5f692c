/**
 * `i6pnctl explain` against the kernel, on random pairs: a random membership
 * (regions, nodes, workspaces, endpoints with and without i6pn, some
 * removed while their containers run) is provisioned in a real store, and
 * every node's dataplane is loaded into the kernel and filled as its agent
 * fills it (its region's live members, its own veths bound, a removed
 * endpoint's veth sealed). For random pairs of endpoints, and endpoints and
 * addresses no one was given, explain's answer, read from the store, must be
 * what the kernel programs decide at every hook of the packet's path
 * (BPF_PROG_TEST_RUN, one counter moving per run), and its verdict what the
 * first of them decides.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import fc from 'fast-check';
import { Dataplane } from '../agent/bpf/dataplane.js';
import { ipv6Packet } from './tools/packet.js';
import { nodeId } from '../agent/sync.js';
import { formatAddress, makeEndpointAddress, parseAddress, regionOf, workspaceOf } from '../lib/address.js';
import { firstDrop } from '../lib/policy.js';
import type { EndpointRecord } from '../lib/schema.js';
import { addEndpoint, removeEndpoint } from '../controller/store/endpoints.js';
import { addRegion } from '../controller/store/regions.js';
import { connectStore, type Store } from '../lib/store.js';
import { createWorkspace } from '../controller/store/workspaces.js';
import { explain } from '../controller/explain.js';
import { I6PN_OBJECT } from './helpers/binding.js';
import { observe } from './helpers/golden.js';
import { startNats, type NatsServer } from './helpers/nats.js';

const REGIONS = ['ams', 'sjc'];
const NODES: Record<string, string> = { 'ams-1': 'ams', 'ams-2': 'ams', 'sjc-1': 'sjc', 'sjc-2': 'sjc' };
const WORKSPACES = ['acme', 'globex', 'initech'];
/** Veths that stand in for each node's endpoint veths (a TC test run needs a real ifindex); the nodes share them, each with its own maps. */
const SLOTS = 8;

interface Placed {
  record: EndpointRecord;
  /** Removed from the store while its container runs: its veth is sealed. */
  removed: boolean;
  slot: number;
}

let nats: NatsServer;
let store: Store;
const placed: Placed[] = [];
const dataplanes = new Map<string, Dataplane>();
let veths: string[] = [];
let slotIfindex: number[] = [];
let uplink = 0;

const ifindexOf = (name: string): number => Number(readFileSync(join('/sys/class/net', name, 'ifindex'), 'utf8').trim());

test.before(async () => {
  nats = await startNats();
  store = await connectStore({ servers: nats.url });
  for (const r of REGIONS) await addRegion(store, r);
  for (const w of WORKSPACES) await createWorkspace(store, w);
  // A random membership: 4 to 6 endpoints per node, one in six without i6pn, about one in eight removed.
  const spec = fc.sample(
    fc.array(fc.record({ node: fc.constantFrom(...Object.keys(NODES)), workspace: fc.constantFrom(...WORKSPACES), i6pn: fc.integer({ min: 0, max: 5 }).map((n) => n > 0), removed: fc.integer({ min: 0, max: 7 }).map((n) => n === 0) }), { minLength: 18, maxLength: 24 }),
    1,
  )[0]!;
  // At least two of each kind the answers must reach.
  spec[0]!.removed = spec[1]!.removed = true;
  spec[2]!.i6pn = spec[3]!.i6pn = false;
  spec[2]!.removed = spec[3]!.removed = false;
  const perNode = new Map<string, number>();
  for (const [i, s] of spec.entries()) {
    const slot = perNode.get(s.node) ?? 0;
    if (slot >= SLOTS) continue;
    perNode.set(s.node, slot + 1);
    const record = await addEndpoint(store, { workspace: s.workspace, region: NODES[s.node]!, node: s.node, ifname: `ep${i}`, i6pn: s.i6pn });
    if (s.removed) await removeEndpoint(store, record.address);
    placed.push({ record, removed: s.removed, slot });
  }

  const tag = `ie${process.pid % 100000}`;
  for (let i = 0; i <= SLOTS; i++) {
    const a = `${tag}a${i}`;
    execFileSync('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', `${tag}b${i}`], { stdio: 'pipe' });
    veths.push(a);
  }
  slotIfindex = veths.slice(0, SLOTS).map(ifindexOf);
  uplink = ifindexOf(veths[SLOTS]!);

  // Each node's dataplane as its agent fills it.
  for (const [node, region] of Object.entries(NODES)) {
    const dp = await Dataplane.open({ object: I6PN_OBJECT });
    dataplanes.set(node, dp);
    const regionId = regionOf(parseAddress(placed.find((p) => p.record.region === region)!.record.address));
    dp.setConfig({ node: nodeId(node), region: regionId, mode: 'enforce', eventsPerSec: 0, uplinkIfindex: uplink });
    const members = placed.filter((p) => p.record.region === region && !p.removed);
    const res = dp.upsertEndpoints(
      members.map((p) => {
        const addr = parseAddress(p.record.address);
        const local = p.record.node === node;
        return { addr, workspace: workspaceOf(addr), region: regionId, node: nodeId(p.record.node), flags: { i6pn: p.record.i6pn, local }, ifindex: local ? slotIfindex[p.slot]! : 0 };
      }),
    );
    if (res.failed.length) throw new Error(`${node}: ${res.failed[0]!.error.message}`);
    for (const p of placed.filter((x) => x.record.node === node)) {
      dp.setLocalIface(slotIfindex[p.slot]!, { addr: parseAddress(p.record.address), i6pn: p.record.i6pn, sealed: p.removed });
    }
  }
});

test.after.always(async () => {
  for (const dp of dataplanes.values()) dp.close();
  for (const v of veths) {
    try {
      execFileSync('ip', ['link', 'del', v], { stdio: 'pipe' });
    } catch {
      /* gone */
    }
  }
  await store?.close();
  await nats?.destroy();
});

/** What the kernel decides at `hook` of `node` for a UDP packet from `src` to `dst` that entered at `ingress` (an ifindex). */
function kernel(node: string, hook: 'from_endpoint' | 'to_fabric' | 'from_fabric' | 'to_endpoint', src: string, dst: string, ifindex: number, ingress: number): string {
  const packet = ipv6Packet({ src, dst, l4: { proto: 'udp', srcPort: 40001, dstPort: 7001 } });
  const dp = dataplanes.get(node)!;
  if (hook === 'from_fabric') {
    const xdp = observe(dp, hook, packet, ifindex).counted.reason;
    const tc = observe(dp, hook, packet, ifindex, undefined, 'tc').counted.reason;
    if (xdp !== tc) throw new Error(`from_fabric: XDP ${xdp}, TC ${tc}`);
    return xdp;
  }
  return observe(dp, hook, packet, ifindex, ingress).counted.reason;
}

test.serial('explain, from the store, says what the kernel programs decide at every hook of every random pair', async (t) => {
  t.true(placed.length >= 16, `only ${placed.length} endpoints`);
  t.true(placed.some((p) => p.removed) && placed.some((p) => !p.record.i6pn), 'the membership lacks removed or no-i6pn endpoints');
  const seen = new Map<string, number>();
  let steps = 0;
  const regionIdOf = (region: string) => regionOf(parseAddress(placed.find((p) => p.record.region === region)!.record.address));
  const arbTo = fc.oneof(
    { weight: 8, arbitrary: fc.nat(placed.length - 1).map((i) => ({ placed: placed[i]! })) },
    // An address no endpoint ever had, in a workspace and region that exist (or not).
    { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...placed.map((p) => workspaceOf(parseAddress(p.record.address))), 0x7777_7777), fc.constantFrom(...REGIONS.map(regionIdOf))).map(([w, r]) => ({ address: formatAddress(makeEndpointAddress(w, r)) })) },
  );
  await fc.assert(
    fc.asyncProperty(fc.nat(placed.length - 1), arbTo, async (fromIndex, to) => {
      const from = placed[fromIndex]!;
      const toAddress = 'placed' in to ? to.placed.record.address : to.address;
      if (toAddress === from.record.address) return;
      // Either form of a name: an address, or <node>/<ifname> of a live endpoint.
      const fromAsked = !from.removed && fromIndex % 2 ? `${from.record.node}/${from.record.ifname}` : from.record.address;
      const r = await explain(store, fromAsked, toAddress);
      const toPlaced = 'placed' in to ? to.placed : undefined;
      const fromVeth = slotIfindex[from.slot]!;
      for (const step of r.path) {
        // The store keeps no node for a removed endpoint; the test knows where its container runs.
        const node = step.node ?? from.record.node;
        const at = {
          from_endpoint: [fromVeth, fromVeth],
          to_fabric: [uplink, fromVeth],
          from_fabric: [uplink, uplink],
          to_endpoint: [toPlaced ? slotIfindex[toPlaced.slot]! : 0, toPlaced && toPlaced.record.node === from.record.node ? fromVeth : uplink],
        }[step.hook] as [number, number];
        const got = kernel(node, step.hook, from.record.address, toAddress, at[0], at[1]);
        if (got !== step.reason) {
          throw new Error(`${from.record.address} (${from.record.node}) → ${toAddress}: at ${step.hook} on ${node} explain says ${step.reason}, the kernel ${got}\n${JSON.stringify(r, null, 1)}`);
        }
        steps++;
      }
      const stop = firstDrop(r.path);
      if (r.delivered !== (stop === null)) throw new Error('delivered disagrees with the path');
      const key = stop ? `${stop.hook}/${stop.reason}` : 'delivered';
      seen.set(key, (seen.get(key) ?? 0) + 1);
    }),
    { numRuns: 300 },
  );
  t.log(`${steps} hook decisions compared; outcomes: ${[...seen].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  // The random pairs reach every kind of answer, or the property proves little.
  for (const k of ['delivered', 'from_endpoint/cross_workspace', 'from_endpoint/cross_region', 'from_endpoint/no_i6pn', 'from_endpoint/sealed', 'from_endpoint/unknown_dest']) {
    t.true((seen.get(k) ?? 0) > 0, `no pair ended ${k}`);
  }
});
