/**
 * agent/table.ts against a Map under random inserts, updates, deletes, marks
 * and sweeps (collisions forced by a small id space), through growth.
 */
import test from 'ava';
import { EndpointTable, type EndpointId } from '../agent/table.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

const idKey = (id: EndpointId) => `${id.workspace}.${id.hi}.${id.lo}`;

test('EndpointTable behaves as a Map with marks', (t) => {
  for (const [seed, space] of [[1, 50], [2, 3000], [3, 100_000]] as const) {
    const r = rng(seed);
    const table = new EndpointTable(16);
    const ref = new Map<string, { rev: number; marked: boolean }>();
    const randomId = (): EndpointId => {
      const n = Math.floor(r() * space);
      return { workspace: (n % 7) + 1, hi: n % 3 === 0 ? 0xffffffff : n >>> 3, lo: n };
    };
    for (let step = 0; step < 60_000; step++) {
      const id = randomId();
      const k = idKey(id);
      const op = r();
      if (op < 0.5) {
        const mark = r() < 0.5;
        table.set(id, step, mark);
        const prev = ref.get(k);
        ref.set(k, { rev: step, marked: mark || (prev?.marked ?? false) });
      } else if (op < 0.75) {
        t.is(table.delete(id), ref.delete(k));
      } else if (op < 0.9) {
        const had = ref.get(k);
        t.is(table.mark(id), had !== undefined);
        if (had) had.marked = true;
      } else if (op < 0.9995) {
        t.is(table.get(id), ref.get(k)?.rev);
        t.is(table.isMarked(id), ref.get(k)?.marked ?? false);
      } else {
        const removed: string[] = [];
        const n = table.sweepUnmarked((x) => removed.push(idKey(x)));
        const expected = [...ref].filter(([, v]) => !v.marked).map(([k2]) => k2);
        t.deepEqual(removed.sort(), expected.sort());
        t.is(n, expected.length);
        for (const k2 of expected) ref.delete(k2);
        table.newEpoch();
        for (const v of ref.values()) v.marked = false;
      }
      if (table.size !== ref.size) {
        t.fail(`size ${table.size} != ${ref.size} at step ${step}`);
        return;
      }
    }
    for (const [k, v] of ref) {
      const [workspace, hi, lo] = k.split('.').map(Number);
      t.is(table.get({ workspace: workspace!, hi: hi!, lo: lo! }), v.rev);
    }
  }
});

test('a million endpoints fit in about 40 MB outside the heap', (t) => {
  const table = new EndpointTable();
  const before = process.memoryUsage();
  for (let i = 0; i < 1_000_000; i++) table.set({ workspace: (i % 97) + 1, hi: i >>> 5, lo: Math.imul(i, 2654435761) >>> 0 }, i + 1);
  const after = process.memoryUsage();
  t.is(table.size, 1_000_000);
  // What the table holds (the arrays a growth replaced are garbage the collector takes when it likes).
  const offHeapMB = table.bytes / 1e6;
  t.log(`table arrays ${offHeapMB.toFixed(0)} MB, heap +${((after.heapUsed - before.heapUsed) / 1e6).toFixed(1)} MB`);
  t.true(offHeapMB < 50);
  t.true((after.heapUsed - before.heapUsed) / 1e6 < 20);
  for (let i = 0; i < 1_000_000; i += 997) t.is(table.get({ workspace: (i % 97) + 1, hi: i >>> 5, lo: Math.imul(i, 2654435761) >>> 0 }), i + 1);
});
