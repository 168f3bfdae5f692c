/**
 * The generated ABI module (agent/bpf/abi.generated.ts) against its sources:
 * regenerated from build/bpf/i6pn.bpf.o it is byte-identical to the file the
 * build wrote; its enums and layouts equal what a C compiler makes of
 * bpf/i6pn.h; the loaded object's maps have its key and value sizes; and the
 * generator refuses an object that lacks the ABI types.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import * as abi from '../agent/bpf/abi.generated.js';
import { AbiError, generateAbi } from '../agent/bpf/gen-abi.js';
import { BpfObject, MapType } from '../agent/bpf/libbpf.js';
import { I6PN_OBJECT, REPO_ROOT, compileFixture, removeFixtureBuilds } from './helpers/binding.js';

const GENERATED = join(REPO_ROOT, 'agent', 'bpf', 'abi.generated.ts');

test.after.always(() => removeFixtureBuilds());

test('regenerating from the built object gives the file the build wrote', (t) => {
  t.is(generateAbi(I6PN_OBJECT), readFileSync(GENERATED, 'utf8'), 'run `make bpf` after changing bpf/i6pn.h');
});

test('enums and struct layouts equal what the C compiler makes of bpf/i6pn.h', (t) => {
  const dir = mkdtempSync(join(tmpdir(), `i6pn-abi-${process.pid}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lines: string[] = [];
  const enums: Array<[Record<string, number>, string]> = [
    [abi.Hook, 'I6PN_HOOK_'],
    [abi.Verdict, 'I6PN_VERDICT_'],
    [abi.Reason, 'I6PN_'],
    [abi.Mode, 'I6PN_MODE_'],
    [abi.EndpointFlag, 'I6PN_EP_'],
    [abi.ConfigFlag, 'I6PN_CFG_'],
    [abi.EventFlag, 'I6PN_EVENT_'],
  ];
  const expected: Record<string, number> = {};
  for (const [values, prefix] of enums) {
    for (const [k, v] of Object.entries(values)) {
      lines.push(`printf("%s %lld\\n", "${prefix}${k}", (long long)${prefix}${k});`);
      expected[`${prefix}${k}`] = v;
    }
  }
  for (const [name, max] of [['I6PN_HOOK_MAX', abi.HOOK_MAX], ['I6PN_VERDICT_MAX', abi.VERDICT_MAX], ['I6PN_REASON_MAX', abi.REASON_MAX]] as const) {
    lines.push(`printf("%s %lld\\n", "${name}", (long long)${name});`);
    expected[name] = max;
  }
  for (const [struct, s] of Object.entries(abi.structs)) {
    lines.push(`printf("%s %lld\\n", "${struct}", (long long)sizeof(struct ${struct}));`);
    expected[struct] = s.size;
    for (const [field, f] of Object.entries(s.fields)) {
      lines.push(`printf("%s %lld\\n", "${struct}.${field}", (long long)offsetof(struct ${struct}, ${field}));`);
      lines.push(`printf("%s %lld\\n", "${struct}.${field}.size", (long long)sizeof(((struct ${struct} *)0)->${field}));`);
      expected[`${struct}.${field}`] = f.offset;
      expected[`${struct}.${field}.size`] = f.size;
    }
  }
  const src = ['#include <stdio.h>', '#include <stddef.h>', '#include "i6pn.h"', 'int main(void) {', ...lines, 'return 0; }'];
  writeFileSync(join(dir, 'abi.c'), src.join('\n'));
  execFileSync('clang', ['-Wall', '-Werror', `-I${join(REPO_ROOT, 'bpf')}`, '-o', join(dir, 'abi'), join(dir, 'abi.c')]);
  const actual = Object.fromEntries(
    execFileSync(join(dir, 'abi'), { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map((l) => {
        const [k, v] = l.split(' ');
        return [k!, Number(v)];
      }),
  );
  t.deepEqual(actual, expected);
  // Every enumerator of i6pn.h made it (the header, not only the generated file, is the reference).
  const header = readFileSync(join(REPO_ROOT, 'bpf', 'i6pn.h'), 'utf8');
  const declared = [...header.matchAll(/^\s*(I6PN_[A-Z0-9_]+)\s*[=,]/gm)].map((m) => m[1]!).sort();
  t.deepEqual(Object.keys(actual).filter((k) => k.startsWith('I6PN_')).sort(), declared);
});

test('labels are snake_case names indexed by value', (t) => {
  t.deepEqual(abi.HOOK_NAMES, ['from_fabric', 'from_endpoint', 'to_endpoint', 'to_fabric']);
  t.deepEqual(abi.VERDICT_NAMES, ['pass', 'drop', 'would_drop']);
  t.is(abi.REASON_NAMES.length, abi.REASON_MAX);
  t.is(abi.REASON_NAMES[abi.Reason.DROP_CROSS_WORKSPACE], 'cross_workspace');
  t.is(abi.REASON_NAMES[abi.Reason.PASS_PRIVATE], 'pass_private');
  for (const n of abi.REASON_NAMES) t.regex(n, /^[a-z][a-z0-9_]*$/);
});

test('the generated map table is what the kernel creates, and each map holds the generated structs', (t) => {
  const obj = BpfObject.open(I6PN_OBJECT);
  t.teardown(() => obj.close());
  obj.load();
  // Generated from the BTF against the kernel's view of every created map.
  t.deepEqual(Object.keys(abi.maps).sort(), obj.maps().map((m) => m.name).sort(), 'every map of the object is in the table');
  for (const [name, m] of Object.entries(abi.maps)) {
    const k = obj.map(name).handle();
    t.deepEqual({ type: k.type, keySize: k.keySize, valueSize: k.valueSize, maxEntries: k.maxEntries }, { ...m }, name);
  }
  // And against the layouts the agent encodes (independently of the map table).
  const want: Record<string, { type: number; key: number; value: number; max?: number }> = {
    endpoints: { type: MapType.HASH, key: 16, value: abi.structs.i6pn_endpoint.size },
    local_ifaces: { type: MapType.HASH, key: 4, value: abi.structs.i6pn_local_iface.size },
    config: { type: MapType.ARRAY, key: 4, value: abi.structs.i6pn_config.size, max: 1 },
    sync_state: { type: MapType.ARRAY, key: 4, value: abi.structs.i6pn_sync_state.size, max: 1 },
    counters: {
      type: MapType.PERCPU_ARRAY,
      key: 4,
      value: abi.structs.i6pn_counter.size,
      max: abi.HOOK_MAX * abi.VERDICT_MAX * abi.REASON_MAX,
    },
    event_budget: { type: MapType.PERCPU_ARRAY, key: 4, value: abi.structs.i6pn_event_budget.size, max: 1 },
    event_stats: { type: MapType.PERCPU_ARRAY, key: 4, value: abi.structs.i6pn_event_stats.size, max: 1 },
    drop_events: { type: MapType.RINGBUF, key: 0, value: 0 },
  };
  for (const [name, w] of Object.entries(want)) {
    const m: { type: number; keySize: number; valueSize: number; maxEntries: number } = abi.maps[name as abi.MapName];
    t.is(m.type, w.type, `${name} type`);
    t.is(m.keySize, w.key, `${name} key size`);
    t.is(m.valueSize, w.value, `${name} value size`);
    if (w.max !== undefined) t.is(m.maxEntries, w.max, `${name} max_entries`);
  }
  // The ABI carrier's value embeds the drop event, the budget and the event stats.
  t.true(abi.maps.i6pn_abi.valueSize >= abi.structs.i6pn_drop_event.size + abi.structs.i6pn_event_budget.size + abi.structs.i6pn_event_stats.size);
});

test('the generator fails loudly, naming the missing type, on an object without the ABI', (t) => {
  const mini = compileFixture('mini');
  const err = t.throws(() => generateAbi(mini), { instanceOf: AbiError });
  t.regex(err!.message, /no enum i6pn_hook in BTF/);
  const out = join(mkdtempSync(join(tmpdir(), `i6pn-abi-${process.pid}-`)), 'abi.generated.ts');
  t.teardown(() => rmSync(join(out, '..'), { recursive: true, force: true }));
  const run = spawnSync(process.execPath, ['--import=tsx', join(REPO_ROOT, 'agent', 'bpf', 'gen-abi.ts'), mini, out], {
    encoding: 'utf8',
    cwd: REPO_ROOT,
  });
  t.is(run.status, 1);
  t.regex(run.stderr, /gen-abi: .*mini\.bpf\.o: no enum i6pn_hook in BTF/);
  const missing = spawnSync(process.execPath, ['--import=tsx', join(REPO_ROOT, 'agent', 'bpf', 'gen-abi.ts'), '/nonexistent.o', out], {
    encoding: 'utf8',
    cwd: REPO_ROOT,
  });
  t.is(missing.status, 1);
  t.regex(missing.stderr, /bpftool btf dump failed/);
});
