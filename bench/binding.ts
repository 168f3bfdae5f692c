/**
 * `make bench-binding`: why the agent reaches libbpf through koffi. Map
 * updates per second into the endpoints map, one entry per call, through
 *
 *   - the agent's binding (agent/bpf/libbpf.ts, koffi, with its checks),
 *   - koffi bare (the same C call, no checks),
 *   - @2060.io/ffi-napi, the maintained fork of the node-ffi-napi that the
 *     design card named (a bench-only devDependency),
 *   - a `bpftool map update` process per entry (what a shell agent would do),
 *
 * plus the batch call the agent uses for bulk sync, and the bare cost of an
 * empty C call (libbpf_major_version) through each FFI.
 */
import { spawnSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { createRequire } from 'node:module';
import { join } from 'node:path';

import koffi from 'koffi';

import { Dataplane } from '../agent/bpf/dataplane.js';
import { MapFd } from '../agent/bpf/libbpf.js';
import { REPO_DIR, log, median, printTable, ratio, saveSection, secondsSince, si, type Table } from './lib/results.js';

const N = Number(process.env.I6PN_BENCH_BINDING_N ?? 200_000);
const N_BPFTOOL = Number(process.env.I6PN_BENCH_BPFTOOL_N ?? 100);
const EMPTY_CALLS = 1_000_000;
const RUNS = 3;
/** Seconds each way gets per run at most: a slow way is measured on fewer calls, not for longer. */
const BUDGET_S = Number(process.env.I6PN_BENCH_BINDING_BUDGET ?? 3);

interface Rate {
  name: string;
  perSec: number[];
  note?: string;
}

/** Calls per second of `op(i)`, for up to `n` calls or BUDGET_S seconds, whichever comes first. */
function rate(n: number, op: (i: number) => void): number {
  const t0 = process.hrtime.bigint();
  let i = 0;
  while (i < n) {
    const end = Math.min(n, i + 500);
    for (; i < end; i++) op(i);
    if (secondsSince(t0) > BUDGET_S) break;
  }
  return i / secondsSince(t0);
}

async function main(): Promise<void> {
  const t0 = process.hrtime.bigint();
  const dp = await Dataplane.open({ object: join(REPO_DIR, 'build/bpf/i6pn.bpf.o'), maxEndpoints: N + 1024 });
  // The endpoints map by its kernel id, reached from outside the Dataplane like any tool would.
  const id = findEndpointsMapId();
  const fd = mapFdById(id);
  const map = MapFd.fromFd(fd, 'endpoints', true);
  const ks = map.keySize;
  const vs = map.valueBytes;
  const keys = Buffer.alloc(N * ks);
  randomFillSync(keys);
  for (let i = 0; i < N; i++) keys.writeUInt16BE(0xfdaa, i * ks);
  const values = Buffer.alloc(N * vs, 1);
  const key = (i: number): Buffer => keys.subarray(i * ks, (i + 1) * ks);
  const value = (i: number): Buffer => values.subarray(i * vs, (i + 1) * vs);

  const lib = koffi.load('libbpf.so.1');
  const kUpdate = lib.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)');
  const kEmpty = lib.func('uint32_t libbpf_major_version()');

  let ffi: { update: (fd: number, k: Buffer, v: Buffer, f: number) => number; empty: () => number } | null = null;
  let ffiError = '';
  try {
    const require = createRequire(import.meta.url);
    const ffiNapi = require('@2060.io/ffi-napi') as { Library: (name: string, fns: Record<string, [string, string[]]>) => Record<string, (...a: unknown[]) => number> };
    const l = ffiNapi.Library('libbpf.so.1', {
      bpf_map_update_elem: ['int', ['int', 'pointer', 'pointer', 'uint64']],
      libbpf_major_version: ['uint32', []],
    });
    ffi = { update: (f, k, v, fl) => l.bpf_map_update_elem!(f, k, v, fl), empty: () => l.libbpf_major_version!() };
  } catch (err) {
    ffiError = String(err).split('\n')[0]!;
    log(`@2060.io/ffi-napi unavailable: ${ffiError}`);
  }

  const rates: Rate[] = [];
  const add = (name: string, r: number, note?: string): void => {
    let row = rates.find((x) => x.name === name);
    if (!row) rates.push((row = { name, perSec: [], ...(note ? { note } : {}) }));
    row.perSec.push(r);
  };
  const empties: Rate[] = [];
  const addEmpty = (name: string, r: number): void => {
    let row = empties.find((x) => x.name === name);
    if (!row) empties.push((row = { name, perSec: [] }));
    row.perSec.push(r);
  };
  for (let r = 0; r < RUNS; r++) {
    add('koffi, agent binding (MapFd.update)', rate(N, (i) => map.update(key(i), value(i))));
    add('koffi, bare bpf_map_update_elem', rate(N, (i) => {
      if ((kUpdate(fd, key(i), value(i), 0) as number) < 0) throw new Error('update failed');
    }));
    if (ffi) {
      const f = ffi;
      add('@2060.io/ffi-napi, bare bpf_map_update_elem', rate(N, (i) => {
        if (f.update(fd, key(i), value(i), 0) < 0) throw new Error('update failed');
      }));
    }
    // One call per 4096 entries: rate over entries.
    add('koffi, agent binding, batch of 4096 (updateBatch)', 4096 * rate(Math.floor(N / 4096), (b) => map.updateBatch(keys.subarray(b * 4096 * ks), values.subarray(b * 4096 * vs), 4096)));
    const hex = (b: Buffer): string[] => Array.from(b, (x) => x.toString(16).padStart(2, '0'));
    add('bpftool map update, a process per entry', rate(N_BPFTOOL, (i) => {
      const p = spawnSync('bpftool', ['map', 'update', 'id', String(id), 'key', 'hex', ...hex(key(i)), 'value', 'hex', ...hex(value(i))]);
      if (p.status !== 0) throw new Error(`bpftool: ${p.stderr.toString()}`);
    }));
    addEmpty('koffi', rate(EMPTY_CALLS, () => kEmpty()));
    if (ffi) {
      const f = ffi;
      addEmpty('@2060.io/ffi-napi', rate(EMPTY_CALLS, () => f.empty()));
    }
    log(`round ${r + 1}: ${rates.map((x) => `${x.name} ${si(x.perSec.at(-1)!)}/s`).join('; ')}`);
  }
  map.close();
  dp.close();

  const base = median(rates.find((x) => x.name.startsWith('koffi, agent binding (MapFd'))!.perSec);
  const table: Table = {
    title: 'Binding: endpoint map updates per second',
    note: `One 16-byte key, 16-byte value per call into a hash map of ${N + 1024} entries; median of ${RUNS} runs, each way for up to ${N.toLocaleString('en')} updates (bpftool ${N_BPFTOOL}) or ${BUDGET_S} s. Ratio: the agent's binding over each way.${ffi ? '' : ` @2060.io/ffi-napi did not load: ${ffiError}.`}`,
    columns: ['through', 'updates/s', 'µs per update', 'agent binding is × faster'],
    rows: rates.map((x) => {
      const m = median(x.perSec);
      return [x.name, si(m), (1e6 / m).toFixed(2), ratio(base, m, 1)];
    }),
  };
  const kEmptyRate = median(empties[0]!.perSec);
  const emptyTable: Table = {
    title: 'Binding: an empty C call (libbpf_major_version)',
    columns: ['FFI', 'ns per call', 'koffi is × faster'],
    rows: empties.map((x) => [x.name, (1e9 / median(x.perSec)).toFixed(0), ratio(kEmptyRate, median(x.perSec), 1)]),
  };
  for (const t of [table, emptyTable]) printTable(t);
  const file = saveSection('binding', {
    at: new Date().toISOString(),
    seconds: secondsSince(t0),
    tables: [table, emptyTable],
    data: { n: N, nBpftool: N_BPFTOOL, updates: rates, emptyCalls: empties, ffiNapi: ffi ? 'loaded' : ffiError },
  });
  log(`wrote ${file}`);
}

/** The id of the endpoints map this process just created (the newest one of that name). */
function findEndpointsMapId(): number {
  const maps = JSON.parse(spawnSync('bpftool', ['-j', 'map', 'show'], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout) as { id: number; name: string; pids?: { pid: number }[] }[];
  const mine = maps.filter((m) => m.name === 'endpoints' && (m.pids ?? []).some((p) => p.pid === process.pid));
  const pick = mine.at(-1) ?? maps.filter((m) => m.name === 'endpoints').at(-1);
  if (!pick) throw new Error('no endpoints map found with bpftool map show');
  return pick.id;
}

function mapFdById(id: number): number {
  const lib = koffi.load('libbpf.so.1');
  const getFd = lib.func('int bpf_map_get_fd_by_id(uint32_t id)');
  const fd = getFd(id) as number;
  if (fd < 0) throw new Error(`bpf_map_get_fd_by_id(${id}): ${fd}`);
  return fd;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
