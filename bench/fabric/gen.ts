/**
 * Flood generator, run inside the generator's namespace: BPF_PROG_TEST_RUN
 * with BPF_F_TEST_XDP_LIVE_FRAMES on xdp_redirect_target, which sends every
 * frame out of `dev`, for `seconds`. Prints {"frames", "seconds"} as JSON.
 *
 *   node --import=tsx bench/fabric/gen.ts <dev> <packet hex> <seconds>
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

import { BpfObject, TestRunFlags, layouts } from '../../agent/bpf/libbpf.js';
import { REPO_DIR } from '../lib/results.js';

const [dev, hex, secondsArg] = process.argv.slice(2);
if (!dev || !hex || !secondsArg) {
  console.error('usage: gen.ts <dev> <packet hex> <seconds>');
  process.exit(2);
}
const packet = Buffer.from(hex, 'hex');
const seconds = Number(secondsArg);
const ifindex = (JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'dev', dev], { encoding: 'utf8' })) as { ifindex: number }[])[0]!.ifindex;

const obj = BpfObject.open(join(REPO_DIR, 'build/bench/xdp_redirect.bpf.o'));
obj.program('xdp_pass').setAutoload(false);
obj.load();
const target = obj.map('target').handle();
const v = Buffer.alloc(4);
v.writeUInt32LE(ifindex);
target.update(Buffer.alloc(4), v);
const prog = obj.program('xdp_redirect_target');
const ctx = Buffer.alloc(layouts.xdp_md.size);
ctx.writeUInt32LE(packet.length, layouts.xdp_md.data_end);
ctx.writeUInt32LE(ifindex, layouts.xdp_md.ingress_ifindex);

const REPEAT = 1 << 18;
let frames = 0;
const t0 = process.hrtime.bigint();
const end = t0 + BigInt(Math.round(seconds * 1e9));
while (process.hrtime.bigint() < end) {
  prog.testRun({ data: packet, ctx, repeat: REPEAT, flags: TestRunFlags.XDP_LIVE_FRAMES, batchSize: 256 });
  frames += REPEAT;
}
const took = Number(process.hrtime.bigint() - t0) / 1e9;
obj.close();
console.log(JSON.stringify({ frames, seconds: took }));
