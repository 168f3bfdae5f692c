/**
 * `make bench-dataplane`: ns per packet of each hook and verdict through
 * BPF_PROG_TEST_RUN, with 1 thousand, 100 thousand and 1 million endpoints
 * in the map, beside the empty programs of bpf/empty.bpf.c; and the
 * verifier's processed-instruction count of every program.
 *
 * Each figure is the median of RUNS calls of REPEAT runs each (the kernel
 * averages inside one call). One packet per call means its two lookups hit a
 * warm cache line: this is the program's own cost, flat or not as the hash
 * table grows; cache misses under real traffic belong to bench/fabric.ts.
 */
import { randomFillSync } from 'node:crypto';
import { join } from 'node:path';

import { Dataplane, type Endpoint, type HookName } from '../agent/bpf/dataplane.js';
import { BpfObject } from '../agent/bpf/libbpf.js';
import { ipv6Packet, privateAddress } from '../agent/bpf/packet.js';
import { REPO_DIR, log, median, printTable, ratio, saveSection, secondsSince, type Goal, type Table } from './lib/results.js';

const OBJECT = join(REPO_DIR, 'build/bpf/i6pn.bpf.o');
const EMPTY_OBJECT = join(REPO_DIR, 'build/bpf/empty.bpf.o');
const REPEAT = Number(process.env.I6PN_BENCH_REPEAT ?? 2_000_000);
const RUNS = Number(process.env.I6PN_BENCH_RUNS ?? 7);
const SIZES = (process.env.I6PN_BENCH_SIZES ?? '1000,100000,1000000').split(',').map(Number);
const FILL_CHUNK = 65_536;

/** This node and its region; a second region for the cross-region case. */
const NODE = 1;
const REGION = 0x0101;
const OTHER_REGION = 0x0202;
const WORKSPACES = [0x1000_0001, 0x2000_0002, 0x3000_0003, 0x4000_0004, 0x5000_0005, 0x6000_0006, 0x7000_0007, 0x8000_0008];
/** runPacket's ifindex for the TC hooks: the loopback device exists in every namespace. */
const LO = 1;

interface Case {
  name: string;
  hook: HookName;
  /** 'empty-xdp' / 'empty-tc' for the baselines. */
  baseline: 'xdp' | 'tc';
  packet: Uint8Array;
  expect: 'pass' | 'drop';
  goalNs?: number;
}

interface Row {
  endpoints: number;
  fillSeconds: number;
  results: { case: string; hook: string; verdict: string; ns: number; runs: number[]; baselineNs: number }[];
  emptyXdpNs: number;
  emptyTcNs: number;
}

function ep(addr: Uint8Array, node: number, local: boolean, ifindex = 0): Endpoint {
  return { addr, workspace: new DataView(addr.buffer, addr.byteOffset).getUint32(2), region: new DataView(addr.buffer, addr.byteOffset).getUint16(6), node, flags: { i6pn: true, local }, ifindex };
}

/** Fill the map with `n` random members spread over the workspaces and two regions; returns seconds. */
function fill(dp: Dataplane, n: number): number {
  const t0 = process.hrtime.bigint();
  for (let done = 0; done < n; done += FILL_CHUNK) {
    const k = Math.min(FILL_CHUNK, n - done);
    // One buffer per chunk: a million 16-byte ArrayBuffers would cost more in GC than the map does.
    const addrs = new Uint8Array(k * 16);
    const v = new DataView(addrs.buffer);
    randomFillSync(addrs);
    const batch: Endpoint[] = new Array(k);
    for (let i = 0; i < k; i++) {
      const workspace = WORKSPACES[(done + i) % WORKSPACES.length]!;
      const region = (done + i) % 5 === 0 ? OTHER_REGION : REGION;
      v.setUint16(i * 16, 0xfdaa);
      v.setUint32(i * 16 + 2, workspace);
      v.setUint16(i * 16 + 6, region);
      batch[i] = { addr: addrs.subarray(i * 16, i * 16 + 16), workspace, region, node: 2 + ((done + i) % 50), flags: { i6pn: true, local: false }, ifindex: 0 };
    }
    const r = dp.upsertEndpoints(batch);
    if (r.failed.length) throw new Error(`filling ${n} endpoints: ${r.failed.length} failed, first ${r.failed[0]!.error.message}`);
  }
  return secondsSince(t0);
}

function emptyRunner(): { xdp(p: Uint8Array): number; tc(p: Uint8Array): number; insns: Record<string, number>; close(): void } {
  const obj = BpfObject.open(EMPTY_OBJECT);
  obj.load();
  const xdp = obj.program('xdp_empty');
  const tc = obj.program('tc_empty');
  return {
    xdp: (p) => xdp.testRun({ data: p, repeat: REPEAT }).durationNs,
    tc: (p) => tc.testRun({ data: p, repeat: REPEAT }).durationNs,
    insns: { xdp_empty: xdp.info().verifiedInsns, tc_empty: tc.info().verifiedInsns },
    close: () => obj.close(),
  };
}

async function main(): Promise<void> {
  const t0 = process.hrtime.bigint();
  const [W1, W2] = WORKSPACES as [number, number];
  // The members the packets name; the bulk fill adds random others around them.
  const local = privateAddress(W1, REGION, 0x1111_0000_0000_0001n);
  const remote = privateAddress(W1, REGION, 0x2222_0000_0000_0002n);
  const otherWs = privateAddress(W2, REGION, 0x3333_0000_0000_0003n);
  const otherRegion = privateAddress(W1, OTHER_REGION, 0x4444_0000_0000_0004n);
  const udp = (src: Uint8Array, dst: Uint8Array): Uint8Array => ipv6Packet({ src, dst, l4: { proto: 'udp', srcPort: 40000, dstPort: 7, payload: new Uint8Array(18) } });

  const cases: Case[] = [
    { name: 'allowed (same workspace and region)', hook: 'from_fabric', baseline: 'xdp', packet: udp(remote, local), expect: 'pass', goalNs: 25 },
    { name: 'cross-workspace drop (address bits)', hook: 'from_fabric', baseline: 'xdp', packet: udp(otherWs, local), expect: 'drop', goalNs: 15 },
    { name: 'cross-region drop (address bits)', hook: 'from_fabric', baseline: 'xdp', packet: udp(otherRegion, local), expect: 'drop', goalNs: 15 },
    { name: 'allowed, container sends', hook: 'from_endpoint', baseline: 'tc', packet: udp(local, remote), expect: 'pass' },
    { name: 'cross-workspace drop, container sends', hook: 'from_endpoint', baseline: 'tc', packet: udp(local, otherWs), expect: 'drop' },
    { name: 'allowed, container receives', hook: 'to_endpoint', baseline: 'tc', packet: udp(remote, local), expect: 'pass' },
  ];

  const empty = emptyRunner();
  const rows: Row[] = [];
  let insns: Record<string, number> = {};
  try {
    for (const n of SIZES) {
      log(`${n} endpoints: load and fill`);
      const dp = await Dataplane.open({ object: OBJECT, maxEndpoints: Math.max(n + 16, 1024) });
      try {
        // The agent's default drop-event budget (100/s per CPU): a flood exhausts it and pays the check.
        dp.setConfig({ node: NODE, region: REGION, mode: 'enforce', eventsPerSec: 100 });
        const named = [ep(local, NODE, true, LO), ep(remote, 2, false), ep(otherWs, 3, false), ep(otherRegion, 4, false)];
        const fillSeconds = fill(dp, n - named.length);
        dp.upsertEndpoints(named);
        dp.setLocalIface(LO, { addr: local, i6pn: true });
        insns = { ...dp.verifiedInstructions(), ...empty.insns };

        const row: Row = { endpoints: n, fillSeconds, results: [], emptyXdpNs: 0, emptyTcNs: 0 };
        const base = { xdp: [] as number[], tc: [] as number[] };
        const per = cases.map(() => [] as number[]);
        // One untimed round first: the first calls of a process run slower (caches, CPU clock).
        empty.xdp(cases[0]!.packet);
        empty.tc(cases[0]!.packet);
        for (const c of cases) dp.runPacket(c.hook, c.packet, { repeat: REPEAT, ifindex: c.hook === 'from_fabric' ? undefined : LO });
        // Interleave the cases run by run, so drift on a shared machine hits all alike.
        for (let r = 0; r < RUNS; r++) {
          base.xdp.push(empty.xdp(cases[0]!.packet));
          base.tc.push(empty.tc(cases[0]!.packet));
          cases.forEach((c, i) => {
            const res = dp.runPacket(c.hook, c.packet, { repeat: REPEAT, ifindex: c.hook === 'from_fabric' ? undefined : LO });
            if (res.verdict !== c.expect) throw new Error(`${c.name} on ${c.hook}: expected ${c.expect}, got ${res.verdict} (retval ${res.retval})`);
            per[i]!.push(res.durationNs);
          });
        }
        row.emptyXdpNs = median(base.xdp);
        row.emptyTcNs = median(base.tc);
        cases.forEach((c, i) =>
          row.results.push({ case: c.name, hook: c.hook, verdict: c.expect, ns: median(per[i]!), runs: per[i]!, baselineNs: c.baseline === 'xdp' ? row.emptyXdpNs : row.emptyTcNs }),
        );
        rows.push(row);
        log(`${n} endpoints: filled in ${fillSeconds.toFixed(2)} s; ${row.results.map((x) => `${x.hook}/${x.verdict} ${x.ns}`).join(', ')} ns; empty xdp ${row.emptyXdpNs}, tc ${row.emptyTcNs}`);
      } finally {
        dp.close();
      }
    }
  } finally {
    empty.close();
  }

  // ---------------------------------------------------------------- report
  const fmtN = (n: number): string => (n >= 1e6 ? `${n / 1e6}M` : n >= 1e3 ? `${n / 1e3}k` : String(n));
  const table: Table = {
    title: 'Dataplane: ns per packet (BPF_PROG_TEST_RUN)',
    note: `Median of ${RUNS} calls × ${REPEAT.toExponential(0)} repeats; 84-byte UDP packet; ratio to the empty program of the same type (bpf/empty.bpf.c). Endpoints are random members of ${WORKSPACES.length} workspaces in two regions; fill rate through upsertEndpoints (batch).`,
    columns: ['hook', 'case', ...rows.flatMap((r) => [`${fmtN(r.endpoints)} eps ns`, `×empty`])],
    rows: [],
  };
  table.rows.push(['xdp', 'empty program (baseline)', ...rows.flatMap((r) => [r.emptyXdpNs, '1×'])]);
  table.rows.push(['tc', 'empty program (baseline)', ...rows.flatMap((r) => [r.emptyTcNs, '1×'])]);
  cases.forEach((c, i) => {
    table.rows.push([c.hook, c.name, ...rows.flatMap((r) => [r.results[i]!.ns, ratio(r.results[i]!.ns, r.results[i]!.baselineNs, 1)])]);
  });
  table.rows.push(['—', 'fill: build Endpoint objects + upsertEndpoints (batch), entries/s', ...rows.flatMap((r) => [Math.round(r.endpoints / r.fillSeconds).toLocaleString('en'), ''])]);
  const insTable: Table = {
    title: 'Verifier: processed instructions per program',
    columns: ['program', 'instructions'],
    rows: Object.entries(insns).map(([k, v]) => [k, v]),
  };
  const goals: Goal[] = [];
  const last = rows.at(-1);
  if (last) {
    cases.forEach((c, i) => {
      if (c.goalNs === undefined) return;
      const ns = last.results[i]!.ns;
      goals.push({ goal: `${c.name}, from_fabric, ${fmtN(last.endpoints)} endpoints ≤ ${c.goalNs} ns`, measured: `${ns} ns (empty XDP ${last.emptyXdpNs} ns)`, met: ns <= c.goalNs });
    });
  }
  for (const t of [table, insTable]) printTable(t);
  for (const g of goals) console.log(`goal: ${g.goal}: ${g.measured} — ${g.met ? 'met' : 'NOT met'}`);
  const file = saveSection('dataplane', { at: new Date().toISOString(), seconds: secondsSince(t0), tables: [table, insTable], goals, data: { repeat: REPEAT, runs: RUNS, rows, verifiedInstructions: insns } });
  log(`wrote ${file}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
