/**
 * The scenario registry of the fault suite. A scenario runs one fault on a
 * running fault cluster (upFaultCluster) and returns its figures; it leaves
 * the cluster as it found it. Each fault's file `test/faults/scenario-*.ts`
 * exports `scenarios: FaultScenario[]`; its ava test runs them, and the soak
 * (bench/soak.ts) finds every such file (scenarioFiles) and runs them all.
 */
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Cluster } from '../fabric/cluster.js';
import type { FaultFigures } from './harness.js';

/** The README's Reliability rows. */
export type ReliabilityRow = 'SIGKILL' | 'upgrade' | 'leader loss' | 'partition' | 'fuzz' | 'reboot' | 'full maps';

export interface FaultScenario {
  /** Unique, e.g. `sigkill-mid-batch`. */
  name: string;
  row: ReliabilityRow;
  run(c: Cluster, log: (msg: string) => void): Promise<FaultFigures>;
}

const DIR = fileURLToPath(new URL('./', import.meta.url));

/** Every scenario file of test/faults (absolute paths), sorted. */
export function scenarioFiles(): string[] {
  return readdirSync(DIR).filter((f) => /^scenario-.*\.ts$/.test(f)).sort().map((f) => DIR + f);
}

/** The scenarios of every scenario file. A file without a `scenarios` array is an error, named. */
export async function loadScenarios(files = scenarioFiles()): Promise<FaultScenario[]> {
  const out: FaultScenario[] = [];
  for (const f of files) {
    const m = (await import(f)) as { scenarios?: FaultScenario[] };
    if (!Array.isArray(m.scenarios)) throw new Error(`${f} exports no scenarios array (export const scenarios: FaultScenario[])`);
    out.push(...m.scenarios);
  }
  const names = out.map((s) => s.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new Error(`two scenarios named ${dup}`);
  return out;
}
