/**
 * Drop throughput, run inside the sink's namespace by bench/fabric.ts: a
 * flood of cross-workspace packets arrives on veth `dev` (native XDP), sent
 * by bench/fabric/gen.ts in the generator's namespace, and meets one of:
 *
 *   none      no filter: xdp_pass (so veth takes redirected frames) and the
 *             stack, which delivers to a UDP port nobody listens on
 *   nftables  the same policy as the address-bit checks of from_fabric, the
 *             fairest ruleset we could write: in raw prerouting, the
 *             destination masked to its /64 (workspace /48 + this node's
 *             region) looked up in a hash vmap (an interval map of /64s was
 *             5× slower at 1000 workspaces) that jumps to one chain per
 *             workspace, which accepts its own /64 as source and drops the rest
 *   xdp       i6pn from_fabric, native mode, through Dataplane.attachUplink
 *
 * Packets handled per second are counted on the receive side over a window
 * in the middle of the flood: Ip6InReceives for none, the nft drop counter,
 * the from_fabric cross_workspace drop counter.
 *
 *   node --import=tsx bench/fabric/drop.ts <json args>   → JSON on stdout
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Dataplane } from '../../agent/bpf/dataplane.js';
import { BpfObject, LinkFd, XdpFlags } from '../../agent/bpf/libbpf.js';
import { ipv6Packet, parseIpv6, privateAddress } from '../../test/tools/packet.js';
import { REPO_DIR } from '../lib/results.js';

export interface DropArgs {
  dev: string;
  genNs: string;
  genDev: string;
  /** The sink veth's MAC, so the stack takes the frames as its own. */
  mac: string;
  workspaces: number;
  rounds: number;
  /** Flood length per measurement; the window skips the first and last second. */
  seconds: number;
}

export type Variant = 'none' | 'nftables' | 'xdp' | 'xdp_drop';
export interface DropResult {
  pps: Record<Variant, number[]>;
  generatorFps: Record<Variant, number[]>;
  packetBytes: number;
  nftRules: number;
}

const REGION = 0x0101;
const TABLE = 'i6pn_bench';
const wsId = (i: number): number => 0x1000_0000 + i;

function nft(script: string): void {
  execFileSync('/usr/sbin/nft', ['-f', '-'], { input: script, stdio: ['pipe', 'ignore', 'pipe'] });
}

function nftRuleset(workspaces: number): string {
  const hex = (n: number): string => `${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  const r = REGION.toString(16);
  const lines = [`table ip6 ${TABLE} {`, '  counter xws { }'];
  for (let i = 0; i < workspaces; i++) {
    lines.push(`  chain ws${i} {`, `    ip6 saddr fdaa:${hex(wsId(i))}:${r}::/64 accept`, `    counter name xws drop`, '  }');
  }
  lines.push('  map ws_by_dst {', '    type ipv6_addr : verdict', '    elements = {');
  lines.push(Array.from({ length: workspaces }, (_, i) => `      fdaa:${hex(wsId(i))}:${r}:: : jump ws${i}`).join(',\n'));
  lines.push('    }', '  }');
  lines.push('  chain prerouting {', '    type filter hook prerouting priority raw; policy accept;');
  lines.push('    ip6 daddr fdaa::/16 ip6 daddr & ffff:ffff:ffff:ffff:: vmap @ws_by_dst');
  // Private destinations outside this node's workspaces and region, and private sources to anything else.
  lines.push('    ip6 daddr fdaa::/16 counter name xws drop', '    ip6 saddr fdaa::/16 counter name xws drop', '  }', '}');
  return lines.join('\n') + '\n';
}

function nftDrops(): number {
  const j = JSON.parse(execFileSync('/usr/sbin/nft', ['-j', 'list', 'counter', 'ip6', TABLE, 'xws'], { encoding: 'utf8' })) as {
    nftables: { counter?: { packets: number } }[];
  };
  return j.nftables.find((x) => x.counter)?.counter?.packets ?? 0;
}

function ip6InReceives(): number {
  const m = /^Ip6InReceives\s+(\d+)/m.exec(readFileSync('/proc/net/snmp6', 'utf8'));
  return m ? Number(m[1]) : 0;
}

function ifindexOf(dev: string): number {
  return (JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'dev', dev], { encoding: 'utf8' })) as { ifindex: number }[])[0]!.ifindex;
}

/** Flood for args.seconds and count what `counter` sees over the middle of it. */
async function measure(args: DropArgs, packet: Uint8Array, counter: () => number): Promise<{ pps: number; fps: number }> {
  const gen = spawn(
    'nsenter',
    [`--net=/run/netns/${args.genNs}`, '--', process.execPath, '--import=tsx', join(REPO_DIR, 'bench/fabric/gen.ts'), args.genDev, Buffer.from(packet).toString('hex'), String(args.seconds)],
    { stdio: ['ignore', 'pipe', 'inherit'], cwd: REPO_DIR },
  );
  let out = '';
  gen.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const done = new Promise<number>((res) => gen.on('exit', (code) => res(code ?? 1)));
  // Wait for the flood to start (node start-up), then one more second to settle.
  const base = counter();
  const t0 = Date.now();
  while (counter() - base < 1000 && Date.now() - t0 < 20_000) await sleep(50);
  await sleep(1000);
  const c1 = counter();
  const t1 = process.hrtime.bigint();
  await sleep(Math.max(1000, (args.seconds - 2.5) * 1000));
  const c2 = counter();
  const t2 = process.hrtime.bigint();
  const code = await done;
  if (code !== 0) throw new Error(`generator exited with ${code}`);
  const g = JSON.parse(out) as { frames: number; seconds: number };
  return { pps: (c2 - c1) / (Number(t2 - t1) / 1e9), fps: g.frames / g.seconds };
}

/** Frames veth's XDP path dropped on `dev`, over its receive queues (ethtool -S). */
function vethXdpDrops(dev: string): number {
  const out = execFileSync('ethtool', ['-S', dev], { encoding: 'utf8' });
  let n = 0;
  for (const m of out.matchAll(/rx_queue_\d+_xdp_drops: (\d+)/g)) n += Number(m[1]);
  return n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function main(): Promise<void> {
  const args = JSON.parse(process.argv[2]!) as DropArgs;
  const dev = ifindexOf(args.dev);
  // Cross-workspace: from workspace 1 to an endpoint of workspace 0 on this node.
  const local = privateAddress(wsId(0), REGION, 1n);
  execFileSync('ip', ['-6', 'addr', 'add', 'fdaa:1000:0:101::1/64', 'dev', args.dev, 'nodad']);
  const packet = ipv6Packet({
    src: privateAddress(wsId(1), REGION, 2n),
    dst: parseIpv6('fdaa:1000:0:101::1'),
    ethDst: Uint8Array.from(args.mac.split(':').map((h) => parseInt(h, 16))),
    l4: { proto: 'udp', srcPort: 40000, dstPort: 9, payload: new Uint8Array(18) },
  });

  const pass = BpfObject.open(join(REPO_DIR, 'build/bench/xdp_redirect.bpf.o'));
  pass.program('xdp_redirect_target').setAutoload(false);
  pass.load();
  const dp = await Dataplane.open({ object: join(REPO_DIR, 'build/bpf/i6pn.bpf.o') });
  dp.setConfig({ node: 1, region: REGION, mode: 'enforce', eventsPerSec: 100 });
  dp.upsertEndpoints([{ addr: local, workspace: wsId(0), region: REGION, node: 1, flags: { i6pn: true, local: true }, ifindex: 0 }]);

  const result: DropResult = {
    pps: { none: [], nftables: [], xdp: [], xdp_drop: [] },
    generatorFps: { none: [], nftables: [], xdp: [], xdp_drop: [] },
    packetBytes: packet.length,
    nftRules: args.workspaces * 2 + 3,
  };
  const variants: Variant[] = ['none', 'nftables', 'xdp', 'xdp_drop'];
  try {
    // Round-robin over the variants, so drift on a shared machine hits all alike.
    for (let r = 0; r < args.rounds; r++) {
      for (const v of variants) {
        let link: LinkFd | null = null;
        let counter: () => number;
        if (v === 'xdp') {
          dp.attachUplink(dev, { hook: 'xdp', mode: 'native' });
          counter = () => Number(dp.readCounter('from_fabric', 'drop', 'cross_workspace').packets);
        } else if (v === 'xdp_drop') {
          link = LinkFd.createXdp(pass.program('xdp_drop').fd, dev, XdpFlags.DRV_MODE, 'xdp_drop');
          counter = () => vethXdpDrops(args.dev);
        } else {
          link = LinkFd.createXdp(pass.program('xdp_pass').fd, dev, XdpFlags.DRV_MODE, 'xdp_pass');
          if (v === 'nftables') {
            nft(nftRuleset(args.workspaces));
            counter = nftDrops;
          } else {
            counter = ip6InReceives;
          }
        }
        try {
          const m = await measure(args, packet, counter);
          result.pps[v].push(m.pps);
          result.generatorFps[v].push(m.fps);
          process.stderr.write(`[drop] round ${r + 1} ${v}: ${(m.pps / 1e6).toFixed(2)} Mpps handled (generator ${(m.fps / 1e6).toFixed(2)} Mfps)\n`);
        } finally {
          if (v === 'xdp') dp.detachUplink(dev);
          link?.close();
          if (v === 'nftables') execFileSync('/usr/sbin/nft', ['delete', 'table', 'ip6', TABLE]);
        }
      }
    }
  } finally {
    dp.close();
    pass.close();
  }
  console.log(JSON.stringify(result));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});

