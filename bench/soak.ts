/**
 * `make soak`: the fault suite's scenarios (every test/faults/scenario-*.ts,
 * the other faults' included) run round after round on one fault cluster
 * for SOAK_MINUTES (default 30), then their figures go to
 * bench/results/soak-<date>.json and a markdown table beside it (one row per
 * README Reliability row). Exit status 1 when any guarantee did not hold.
 *
 *   SOAK_MINUTES=3 make soak
 *   SOAK_SCENARIOS=upgrade,reboot SOAK_MINUTES=5 make soak     (a subset, by scenario name)
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT, type Cluster } from '../test/fabric/cluster.js';
import { acquireFabricLock } from '../test/fabric/state.js';
import { summary, upFaultCluster, type FaultFigures } from '../test/faults/harness.js';
import { loadScenarios, type FaultScenario } from '../test/faults/scenarios.js';

interface SoakRun {
  scenario: string;
  row: string;
  round: number;
  startedAt: string;
  ms: number;
  /** The figures without the per-flow detail (kept: the flows' totals). */
  figures?: Omit<FaultFigures, 'traffic'> & { traffic: Omit<FaultFigures['traffic'], 'flows'> };
  error?: string;
}

interface RowFigures {
  row: string;
  runs: number;
  failedRuns: number;
  forbiddenDelivered: number;
  forbiddenSent: number;
  allowedLost: number;
  allowedSent: number;
  convergeMsMax: number;
  ackedWrites: number;
  ackedWritesLost: number;
}

function parseMinutes(v: string | undefined): number {
  const n = Number(v ?? 30);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`SOAK_MINUTES must be a positive number of minutes, got ${JSON.stringify(v)}`);
  return n;
}

function selected(all: FaultScenario[], names: string | undefined): FaultScenario[] {
  if (!names) return all;
  const want = names.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = want.filter((n) => !all.some((s) => s.name === n));
  if (unknown.length) throw new Error(`SOAK_SCENARIOS names unknown scenarios ${unknown.join(', ')}; known: ${all.map((s) => s.name).join(', ')}`);
  return all.filter((s) => want.includes(s.name));
}

function rows(runs: SoakRun[]): RowFigures[] {
  const by = new Map<string, RowFigures>();
  for (const r of runs) {
    const x = by.get(r.row) ?? { row: r.row, runs: 0, failedRuns: 0, forbiddenDelivered: 0, forbiddenSent: 0, allowedLost: 0, allowedSent: 0, convergeMsMax: 0, ackedWrites: 0, ackedWritesLost: 0 };
    by.set(r.row, x);
    x.runs++;
    const f = r.figures;
    if (!f || f.violations.length > 0) x.failedRuns++;
    if (!f) continue;
    x.forbiddenDelivered += f.forbiddenDelivered;
    x.forbiddenSent += f.traffic.forbiddenSent;
    x.allowedLost += f.allowedLost;
    x.allowedSent += f.allowedSent;
    x.convergeMsMax = Math.max(x.convergeMsMax, f.convergeMs);
    x.ackedWrites += f.ackedWrites;
    x.ackedWritesLost += f.ackedWritesLost;
  }
  return [...by.values()];
}

function markdown(meta: { date: string; minutes: number; rounds: number }, table: RowFigures[]): string {
  return [
    `# Soak ${meta.date}: ${meta.minutes} min, ${meta.rounds} rounds`,
    '',
    '| fault | runs (failed) | forbidden delivered | allowed lost | time to converge (max) | acknowledged writes lost |',
    '|---|---|---|---|---|---|',
    ...table.map(
      (r) =>
        `| ${r.row} | ${r.runs} (${r.failedRuns}) | ${r.forbiddenDelivered} of ${r.forbiddenSent} | ${r.allowedLost} of ${r.allowedSent} | ${(r.convergeMsMax / 1000).toFixed(1)} s | ${r.ackedWritesLost} of ${r.ackedWrites} |`,
    ),
    '',
  ].join('\n');
}

async function main(): Promise<number> {
  const minutes = parseMinutes(process.env.SOAK_MINUTES);
  const scenarios = selected(await loadScenarios(), process.env.SOAK_SCENARIOS);
  const log = (m: string): void => void process.stdout.write(`${new Date().toISOString()} ${m}\n`);
  log(`soak: ${minutes} min of ${scenarios.map((s) => s.name).join(', ')}`);
  const release = await acquireFabricLock();
  const runs: SoakRun[] = [];
  let t0 = Date.now();
  let cluster: Cluster | undefined;
  let round = 0;
  try {
    cluster = await upFaultCluster({ log });
    // The soak's time counts from a running cluster; every scenario runs at least once.
    t0 = Date.now();
    do {
      round++;
      for (const s of scenarios) {
        if (Date.now() - t0 >= minutes * 60_000 && round > 1) break;
        const started = Date.now();
        const run: SoakRun = { scenario: s.name, row: s.row, round, startedAt: new Date(started).toISOString(), ms: 0 };
        try {
          const f = await s.run(cluster, (m) => log(`  ${s.name}: ${m}`));
          const { flows: _flows, ...traffic } = f.traffic;
          run.figures = { ...f, traffic };
          log(`round ${round} ${summary(f)}`);
        } catch (err) {
          run.error = (err as Error).stack ?? String(err);
          log(`round ${round} ${s.name}: ERROR ${(err as Error).message}; the cluster is made again`);
          await cluster.down().catch(() => undefined);
          cluster = await upFaultCluster({ log });
        }
        run.ms = Date.now() - started;
        runs.push(run);
      }
    } while (Date.now() - t0 < minutes * 60_000);
  } finally {
    await cluster?.down().catch(() => undefined);
    release();
  }
  const date = new Date().toISOString().slice(0, 10);
  const table = rows(runs);
  const dir = join(REPO_ROOT, 'bench/results');
  mkdirSync(dir, { recursive: true });
  const meta = { date, minutes, rounds: round };
  writeFileSync(join(dir, `soak-${date}.json`), JSON.stringify({ ...meta, startedAt: new Date(t0).toISOString(), rows: table, runs }, null, 2) + '\n');
  writeFileSync(join(dir, `soak-${date}.md`), markdown(meta, table));
  process.stdout.write(markdown(meta, table));
  const bad = runs.filter((r) => r.error || (r.figures?.violations.length ?? 0) > 0);
  for (const r of bad) log(`FAILED ${r.scenario} (round ${r.round}): ${r.error ?? r.figures!.violations.join('; ')}`);
  log(`soak: ${runs.length} runs in ${round} rounds, ${bad.length} failed; bench/results/soak-${date}.{json,md}`);
  return bad.length === 0 ? 0 : 1;
}

process.exitCode = await main();
