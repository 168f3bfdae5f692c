/**
 * The dataplane without its agent: loads bpf/i6pn programs on one node, fills
 * the maps from a membership given on the command line, attaches XDP to the
 * uplink and TC to the endpoint veths, pins everything and exits. It is the
 * harness's way to prove the programs on the fabric on their own (and the
 * matrix machinery before the agent exists); the agent does the same from
 * NATS. Run it inside the node's namespace (ifindexes are per namespace):
 *
 *   nsenter --net=/run/netns/NODE node --import=tsx test/fabric/static-dataplane.ts load '<json>'
 *   nsenter --net=/run/netns/NODE node --import=tsx test/fabric/static-dataplane.ts counters <pinDir>
 *   nsenter --net=/run/netns/NODE node --import=tsx test/fabric/static-dataplane.ts teardown <pinDir>
 */
import { execFileSync } from 'node:child_process';
import { Dataplane } from '../../agent/bpf/dataplane.js';
import { interfaceIndexes } from '../../agent/links.js';
import { addressBytes } from './policy.js';

export interface StaticMember {
  address: string;
  i6pn: boolean;
  /** Host-side veth when the endpoint is served by this node. */
  ifname?: string;
}

export interface StaticLoad {
  object: string;
  pinDir: string;
  node: number;
  region: number;
  mode: 'enforce' | 'monitor';
  uplink: string;
  /** The live members of this node's region. */
  members: StaticMember[];
}

function ifindexOf(name: string): number {
  const out = JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'dev', name], { encoding: 'utf8' })) as Array<{ ifindex: number }>;
  const i = out[0]?.ifindex;
  if (!i) throw new Error(`no interface ${name}`);
  return i;
}

async function load(cfg: StaticLoad): Promise<void> {
  const dp = await Dataplane.open({ object: cfg.object, pinDir: cfg.pinDir });
  try {
    // The uplink is the one way in for remote sources (to_endpoint checks where a packet entered).
    dp.setConfig({ node: cfg.node, region: cfg.region, mode: cfg.mode, eventsPerSec: 0, uplinkIfindex: ifindexOf(cfg.uplink) });
    const entries = cfg.members.map((m) => {
      const b = addressBytes(m.address);
      const ifindex = m.ifname ? ifindexOf(m.ifname) : 0;
      return {
        addr: new Uint8Array(b),
        workspace: b.readUInt32BE(2),
        region: b.readUInt16BE(6),
        node: m.ifname ? cfg.node : 0,
        flags: { i6pn: m.i6pn, local: m.ifname !== undefined },
        ifindex,
      };
    });
    const r = dp.upsertEndpoints(entries);
    if (r.failed.length > 0) throw new Error(`endpoints not written: ${r.failed.map((f) => f.error.message).join('; ')}`);
    for (const e of entries) {
      if (!e.ifindex) continue;
      dp.setLocalIface(e.ifindex, { addr: e.addr, i6pn: e.flags.i6pn });
      dp.attachEndpoint(e.ifindex);
    }
    dp.attachUplink(ifindexOf(cfg.uplink));
  } finally {
    dp.close();
  }
}

async function counters(pinDir: string, object: string): Promise<void> {
  const dp = await Dataplane.open({ object, pinDir });
  try {
    const rows = dp.readCounters({ nonZero: true }).map((r) => ({ ...r, packets: Number(r.packets), bytes: Number(r.bytes) }));
    process.stdout.write(JSON.stringify(rows) + '\n');
  } finally {
    dp.close();
  }
}

const [cmd, arg, object = 'build/bpf/i6pn.bpf.o'] = process.argv.slice(2);
if (cmd === 'load' && arg) await load(JSON.parse(arg) as StaticLoad);
else if (cmd === 'counters' && arg) await counters(arg, object);
else if (cmd === 'teardown' && arg) Dataplane.teardown(arg, { interfaces: await interfaceIndexes() });
else {
  process.stderr.write('usage: static-dataplane.ts load JSON | counters PINDIR [OBJECT] | teardown PINDIR\n');
  process.exit(2);
}
