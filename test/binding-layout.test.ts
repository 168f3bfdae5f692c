/**
 * The struct layouts that agent/bpf/libbpf.ts encodes by hand must be the
 * ones of the installed libbpf and kernel headers: compile a C program that
 * prints sizeof/offsetof for each, and compare every number.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { layouts } from '../agent/bpf/libbpf.js';

/** C member expression for a layout field, where its name differs. */
const MEMBER: Record<string, string> = { 'bpf_link_info.xdp_ifindex': 'xdp.ifindex' };

test('hand-encoded libbpf and UAPI struct layouts match the C headers', (t) => {
  const dir = mkdtempSync(join(tmpdir(), `i6pn-layout-${process.pid}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const lines: string[] = [];
  for (const [struct, fields] of Object.entries(layouts)) {
    lines.push(`printf("%s.size %zu\\n", "${struct}", sizeof(struct ${struct}));`);
    for (const field of Object.keys(fields)) {
      if (field === 'size') continue;
      const member = MEMBER[`${struct}.${field}`] ?? field;
      lines.push(`printf("%s.%s %zu\\n", "${struct}", "${field}", offsetof(struct ${struct}, ${member}));`);
    }
  }
  const src = [
    '#include <stdio.h>',
    '#include <stddef.h>',
    '#include <bpf/libbpf.h>',
    '#include <bpf/bpf.h>',
    '#include <linux/bpf.h>',
    'int main(void) {',
    ...lines,
    'return 0; }',
  ].join('\n');
  writeFileSync(join(dir, 'layout.c'), src);
  execFileSync('clang', ['-Wall', '-Werror', '-o', join(dir, 'layout'), join(dir, 'layout.c')]);
  const actual = Object.fromEntries(
    execFileSync(join(dir, 'layout'), { encoding: 'utf8' })
      .trim()
      .split('\n')
      .map((l) => {
        const [k, v] = l.split(' ');
        return [k!, Number(v)];
      }),
  );
  const expected: Record<string, number> = {};
  for (const [struct, fields] of Object.entries(layouts)) {
    for (const [field, value] of Object.entries(fields)) expected[`${struct}.${field}`] = value;
  }
  t.deepEqual(actual, expected);
});
