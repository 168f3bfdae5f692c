/**
 * `make bench-dataplane`: ns per packet of each hook and verdict through
 * BPF_PROG_TEST_RUN, with 1 thousand, 100 thousand and 1 million endpoints
 * in the map, beside the empty programs of bench/bpf/empty.bpf.c; and the
 * verifier's processed-instruction count of every program.
 *
 * Each figure is the median of RUNS calls of REPEAT runs each (the kernel
 * averages inside one call). One packet per call means its two lookups hit a
 * warm cache line: this is the program's own cost, flat or not as the hash
 * table grows; cache misses under real traffic belong to bench/fabric.ts.
 *
 * With I6PN_BENCH_BASELINE_OBJECT (an earlier build of i6pn.bpf.o) and
 * I6PN_BENCH_BASELINE_AGENT (the agent/ directory of that version, whose
 * Dataplane wrapper loads it), the same cases run on both objects in the same
 * run, round by round, each in its own process (bench/lib/dataplane-worker.ts)
 * with its own empty-program baseline.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';

import type { CaseInfo, Ready, RoundResult } from './lib/dataplane-worker.js';
import { BENCH_DIR, REPO_DIR, log, median, printTable, ratio, saveSection, secondsSince, type Goal, type Table } from './lib/results.js';

const OBJECT = join(REPO_DIR, 'build/bpf/i6pn.bpf.o');
const EMPTY_OBJECT = join(REPO_DIR, 'build/bench/empty.bpf.o');
const REPEAT = Number(process.env.I6PN_BENCH_REPEAT ?? 2_000_000);
const RUNS = Number(process.env.I6PN_BENCH_RUNS ?? 7);
const SIZES = (process.env.I6PN_BENCH_SIZES ?? '1000,100000,1000000').split(',').map(Number);
const BASELINE_OBJECT = process.env.I6PN_BENCH_BASELINE_OBJECT;
const BASELINE_AGENT = process.env.I6PN_BENCH_BASELINE_AGENT ?? join(REPO_DIR, 'agent');
const BASELINE_LABEL = process.env.I6PN_BENCH_BASELINE_LABEL ?? BASELINE_OBJECT;
/** "A few ns" (issue 10): how much the allowed path may grow against the baseline object. */
const GROWTH_GOAL_NS = 5;

/** The figures of one object at one size. */
interface Measured {
  fillSeconds: number;
  hooks: string[];
  verifiedInstructions: Record<string, number>;
  emptyXdp: number[];
  emptyTc: number[];
  /** per case, one ns figure per round (empty: no such hook in the object) */
  cases: number[][];
}

interface Row {
  endpoints: number;
  cases: CaseInfo[];
  current: Measured;
  baseline?: Measured;
}

/** A worker process holding one loaded, filled object; answers one round per call. */
class Worker {
  private readonly child: ChildProcess;
  private readonly lines: Interface;
  private readonly pending: ((line: string) => void)[] = [];
  private readonly exited: Promise<number | null>;

  constructor(agentDir: string, object: string, endpoints: number) {
    this.child = spawn(process.execPath, ['--import=tsx', join(BENCH_DIR, 'lib/dataplane-worker.ts')], {
      env: { ...process.env, I6PN_BENCH_AGENT_DIR: agentDir, I6PN_BENCH_OBJECT: object, I6PN_BENCH_EMPTY_OBJECT: EMPTY_OBJECT, I6PN_BENCH_ENDPOINTS: String(endpoints), I6PN_BENCH_REPEAT: String(REPEAT) },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.exited = new Promise((resolve) => this.child.once('exit', (code) => resolve(code)));
    this.lines = createInterface({ input: this.child.stdout! });
    this.lines.on('line', (line) => this.pending.shift()?.(line));
  }

  private next<T>(): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.pending.push((line) => resolve(JSON.parse(line) as T));
      void this.exited.then((code) => reject(new Error(`dataplane worker exited (${code}) before answering`)));
    });
  }

  ready(): Promise<Ready> {
    return this.next<Ready>();
  }

  round(): Promise<RoundResult> {
    const p = this.next<RoundResult>();
    this.child.stdin!.write('round\n');
    return p;
  }

  async close(): Promise<void> {
    this.child.stdin!.end();
    const code = await this.exited;
    if (code !== 0) throw new Error(`dataplane worker exited with ${code}`);
  }
}

async function measureSize(n: number): Promise<Row> {
  const objects = [{ agentDir: join(REPO_DIR, 'agent'), object: OBJECT }];
  if (BASELINE_OBJECT) objects.push({ agentDir: BASELINE_AGENT, object: BASELINE_OBJECT });
  const workers: Worker[] = [];
  const measured: Measured[] = [];
  let cases: CaseInfo[] = [];
  try {
    // One at a time: two fills at once would share the 2 cores.
    for (const o of objects) {
      log(`${n} endpoints: load and fill ${o.object}`);
      const w = new Worker(o.agentDir, o.object, n);
      workers.push(w);
      const r = await w.ready();
      cases = r.cases;
      measured.push({ fillSeconds: r.fillSeconds, hooks: r.hooks, verifiedInstructions: r.verifiedInstructions, emptyXdp: [], emptyTc: [], cases: r.cases.map(() => []) });
    }
    // Interleave the objects round by round, first one then the other, so drift on a shared machine hits both alike.
    for (let r = 0; r < RUNS; r++) {
      const order = r % 2 ? [...workers.keys()].reverse() : [...workers.keys()];
      for (const i of order) {
        const res = await workers[i]!.round();
        const m = measured[i]!;
        m.emptyXdp.push(res.xdp);
        m.emptyTc.push(res.tc);
        res.cases.forEach((ns, c) => ns !== null && m.cases[c]!.push(ns));
      }
    }
  } finally {
    for (const w of workers) await w.close();
  }
  const [current, baseline] = measured as [Measured, Measured | undefined];
  for (const [label, m] of [['', current], ['baseline ', baseline]] as const) {
    if (m) log(`${n} endpoints: ${label}${cases.map((c, i) => `${c.hook}/${c.verdict} ${median(m.cases[i]!)}`).join(', ')} ns; empty xdp ${median(m.emptyXdp)}, tc ${median(m.emptyTc)}`);
  }
  return { endpoints: n, cases, current, ...(baseline ? { baseline } : {}) };
}

const fmtN = (n: number): string => (n >= 1e6 ? `${n / 1e6}M` : n >= 1e3 ? `${n / 1e3}k` : String(n));
const empty = (m: Measured, c: CaseInfo): number => median(c.baseline === 'xdp' ? m.emptyXdp : m.emptyTc);
const signed = (d: number): string => (d > 0 ? `+${d}` : String(d));
const spread = (xs: number[]): string => `${median(xs)} (${Math.min(...xs)}–${Math.max(...xs)})`;

async function main(): Promise<void> {
  const t0 = process.hrtime.bigint();
  const rows: Row[] = [];
  for (const n of SIZES) rows.push(await measureSize(n));

  // ---------------------------------------------------------------- report
  const cases = rows[0]!.cases;
  const table: Table = {
    title: 'Dataplane: ns per packet (BPF_PROG_TEST_RUN)',
    note: `Median of ${RUNS} calls × ${REPEAT.toExponential(0)} repeats; 84-byte UDP packet; ratio to the empty program of the same type (bench/bpf/empty.bpf.c). Endpoints are random members of 8 workspaces in two regions; fill rate through upsertEndpoints (batch). Every call is checked against its counter (pass_private, cross_workspace, cross_region).`,
    columns: ['hook', 'case', ...rows.flatMap((r) => [`${fmtN(r.endpoints)} eps ns`, `×empty`])],
    rows: [],
  };
  table.rows.push(['xdp', 'empty program (baseline)', ...rows.flatMap((r) => [median(r.current.emptyXdp), '1×'])]);
  table.rows.push(['tc', 'empty program (baseline)', ...rows.flatMap((r) => [median(r.current.emptyTc), '1×'])]);
  cases.forEach((c, i) => {
    table.rows.push([c.hook, c.name, ...rows.flatMap((r) => [median(r.current.cases[i]!), ratio(median(r.current.cases[i]!), empty(r.current, c), 1)])]);
  });
  table.rows.push(['—', 'fill: build Endpoint objects + upsertEndpoints (batch), entries/s', ...rows.flatMap((r) => [Math.round(r.endpoints / r.current.fillSeconds).toLocaleString('en'), ''])]);
  const last = rows.at(-1)!;
  const insTable: Table = {
    title: 'Verifier: processed instructions per program',
    columns: ['program', 'instructions', ...(last.baseline ? [`baseline (${BASELINE_LABEL})`] : [])],
    rows: Object.entries(last.current.verifiedInstructions).map(([k, v]) => [k, v, ...(last.baseline ? [last.baseline.verifiedInstructions[k] ?? '—'] : [])]),
  };
  const tables = [table];
  const goals: Goal[] = [];
  cases.forEach((c, i) => {
    if (c.goalRatio === undefined || !last.current.cases[i]!.length) return;
    const ns = median(last.current.cases[i]!);
    const base = empty(last.current, c);
    goals.push({
      goal: `issue 12: ${c.hook} ${c.name}, ${fmtN(last.endpoints)} endpoints ≤ ${c.goalRatio}× the empty ${c.baseline === 'xdp' ? 'XDP' : 'TC'} program`,
      measured: `${(ns / base).toFixed(1)}× (${ns} ns, empty ${base} ns)`,
      met: ns <= c.goalRatio * base,
    });
  });
  // The cost stays flat with the number of endpoints: the largest size against the smallest, as ratios to their empty programs.
  const first = rows[0]!;
  if (rows.length > 1) {
    cases.forEach((c, i) => {
      if (!first.current.cases[i]!.length || !last.current.cases[i]!.length) return;
      const small = median(first.current.cases[i]!) / empty(first.current, c);
      const large = median(last.current.cases[i]!) / empty(last.current, c);
      goals.push({
        goal: `issue 12: ${c.hook} ${c.name} flat from ${fmtN(first.endpoints)} to ${fmtN(last.endpoints)} endpoints (≤ 1.25×)`,
        measured: `${small.toFixed(1)}× → ${large.toFixed(1)}× the empty program (${(large / small).toFixed(2)}×)`,
        met: large <= 1.25 * small,
      });
    });
  }

  const base = last.baseline;
  if (base) {
    const cmp: Table = {
      title: `Dataplane: this build against ${BASELINE_LABEL}, ns per packet`,
      note: `${fmtN(last.endpoints)} endpoints; both objects loaded in the same run, each in its own process through its own version's Dataplane, taking turns round by round; median (min–max) of ${RUNS} calls × ${REPEAT.toExponential(0)} repeats; ratio to the empty program of the same type measured in the same process. Δ: this build's median minus the baseline's.`,
      columns: ['hook', 'case', `${BASELINE_LABEL} ns`, '×empty', 'this build ns', '×empty', 'Δ ns'],
      rows: [
        ['xdp', 'empty program', spread(base.emptyXdp), '1×', spread(last.current.emptyXdp), '1×', signed(median(last.current.emptyXdp) - median(base.emptyXdp))],
        ['tc', 'empty program', spread(base.emptyTc), '1×', spread(last.current.emptyTc), '1×', signed(median(last.current.emptyTc) - median(base.emptyTc))],
      ],
    };
    const growth: number[] = [];
    cases.forEach((c, i) => {
      const now = last.current.cases[i]!;
      const was = base.cases[i]!;
      const nowR = ratio(median(now), empty(last.current, c), 1);
      if (!was.length) {
        // A hook the baseline does not have: all of its cost beyond the empty program is new.
        const own = median(now) - empty(last.current, c);
        cmp.rows.push([c.hook, c.name, '— (no such hook)', '', spread(now), nowR, `+${own} over empty`]);
        if (c.verdict === 'pass') growth.push(own);
        return;
      }
      const d = median(now) - median(was);
      cmp.rows.push([c.hook, c.name, spread(was), ratio(median(was), empty(base, c), 1), spread(now), nowR, signed(d)]);
      if (c.verdict !== 'pass') return;
      if (!c.name.includes('source’s veth')) growth.push(d);
      goals.push({
        goal: `issue 10: ${c.hook} ${c.name}, ${fmtN(last.endpoints)} endpoints, grew ≤ ${GROWTH_GOAL_NS} ns against ${BASELINE_LABEL}`,
        measured: `${median(was)} → ${median(now)} ns (${signed(d)} ns)`,
        met: d <= GROWTH_GOAL_NS,
      });
    });
    tables.push(cmp);
    const total = growth.reduce((a, b) => a + b, 0);
    goals.push({
      goal: `issue 10: container → another node → container (from_endpoint, to_fabric, from_fabric, to_endpoint), grew ≤ ${GROWTH_GOAL_NS} ns in all`,
      measured: `${signed(total)} ns (to_fabric's cost over the empty TC program counted whole)`,
      met: total <= GROWTH_GOAL_NS,
    });
  }
  tables.push(insTable);
  for (const t of tables) printTable(t);
  for (const g of goals) console.log(`goal: ${g.goal}: ${g.measured} — ${g.met ? 'met' : 'NOT met'}`);
  const file = saveSection('dataplane', {
    at: new Date().toISOString(),
    seconds: secondsSince(t0),
    tables,
    goals,
    data: { repeat: REPEAT, runs: RUNS, baseline: BASELINE_OBJECT ? { object: BASELINE_OBJECT, agent: BASELINE_AGENT, label: BASELINE_LABEL } : null, rows },
  });
  log(`wrote ${file}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
