/**
 * Fault 5 of issue 16, store garbage: a seeded fuzzer writes into a region's
 * endpoints bucket (and its tunnels bucket, the other bucket an agent follows
 * while it runs) what i6pnctl never would, interleaved with the harness's
 * valid churn and traffic:
 *
 *   random bytes, an empty value, truncated JSON                     → json
 *   JSON that is not the record (types, missing fields, not an object) → schema
 *   records whose address bits are not the record's workspace or region,
 *   or not a canonical fdaa address                                   → address
 *   a record of another region under a key of this region's bucket     → region
 *   keys that are not <workspace id>.<endpoint id> (another region's
 *   key, upper case, extra labels) or name another workspace, and
 *   deletes/purges of such unknown keys                               → key
 *   values longer than any record, up to what the bucket takes         → too_large
 *   values near the max payload (1 MiB): the bucket refuses them (16 KiB)
 *   valid records written straight into the bucket, some of them then
 *   overwritten with garbage (the store no longer vouches for them),
 *   deletes and purges of unknown well-formed keys                     → no rejection
 *
 * What must hold on every agent of the region: the same process throughout;
 * no key ever applied while its value is invalid (the maps are sampled during
 * the run); each rejection counted and logged once under its reason
 * (i6pn_membership_rejected_total, i6pn_tunnels_rejected_total), and
 * I6pnMembershipRejected evaluated by Prometheus; at the end its map holds
 * exactly the valid records (the harness's maps == store, plus the fuzzer's
 * own model); the valid churn enforced and the traffic judged as in every
 * fault. Everything the fuzzer writes comes from `seed`: a failure prints it,
 * and I6PN_FUZZ_SEED=<seed> replays the same garbage.
 */
import { MAX_VALUE_BYTES, connectStore, getRegion, type Store } from '../../lib/store.js';
import { listEndpoints } from '../../controller/store/endpoints.js';
import { formatAddress, makeEndpointAddress, endpointIdOf, workspaceIdHex } from '../../lib/address.js';
import { MAX_RECORD_BYTES, type EndpointRecord, type InvalidReason } from '../../lib/schema.js';
import { readPinnedEndpoints } from '../helpers/agent-maps.js';
import type { Cluster } from '../fabric/cluster.js';
import { sleep } from '../fabric/exec.js';
import { Churn, Traffic, defaultFlows, figures, mapsVsStore, waitMapsEqualStore, type FaultFigures } from './harness.js';
import { loadDeployRules, waitAlert } from './alerts.js';
import { logLines } from './exhaustion.js';

export const REJECT_REASONS: readonly InvalidReason[] = ['json', 'schema', 'address', 'key', 'region', 'too_large'];

/** mulberry32: a small seeded PRNG, so one number replays a run's garbage. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Bucket = 'endpoints' | 'tunnels';

/** One write of the fuzzer. */
interface FuzzOp {
  what: string;
  bucket: Bucket;
  op: 'put' | 'delete' | 'purge';
  key: string;
  value?: Uint8Array;
  /** The reason the agents must count it under; null: not a rejection. */
  reason: InvalidReason | null;
  /** A valid endpoint record: the address the agents must apply (until a later write of its key). */
  valid?: string;
  /** Longer than the bucket takes (MAX_VALUE_BYTES): the server must refuse the write, so no agent sees it. */
  serverRefuses?: boolean;
}

export interface FuzzOptions {
  region?: string;
  /** Default: I6PN_FUZZ_SEED, else random. */
  seed?: number;
  /** Garbage writes (default 80). */
  ops?: number;
  /** Pause between two fuzzer writes (default 40 ms). */
  intervalMs?: number;
  log?: (m: string) => void;
}

export interface FuzzResult {
  seed: number;
  figures: FaultFigures;
  /** Rejections expected per reason (endpoints bucket) and what each agent of the region counted. */
  expected: Record<string, number>;
  counted: Record<string, Record<string, number>>;
  expectedTunnels: Record<string, number>;
  countedTunnels: Record<string, Record<string, number>>;
  /** Keys applied while their value was invalid, seen by the sampler or at the end (must be empty). */
  appliedInvalid: string[];
  /** Problems with the agents' processes, counters, alerts and maps (must be empty). */
  problems: string[];
}

const enc = new TextEncoder();
const bytes = (s: string): Uint8Array => enc.encode(s);

/** The fuzzer's writes, all drawn from `rnd`. */
export function planOps(rnd: () => number, n: number, t: { record: EndpointRecord; regionId: number; other: { name: string; id: number } }): FuzzOp[] {
  const int = (k: number): number => Math.floor(rnd() * k);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const randBytes = (k: number): Uint8Array => Uint8Array.from({ length: k }, () => int(256));
  const ws = t.record.workspaceId;
  const wsHex = workspaceIdHex(ws);
  /** A fresh endpoint of the template's workspace in `regionId`: its address, key and a valid record. */
  const fresh = (regionId = t.regionId, region = t.record.region): { address: string; key: string; record: EndpointRecord } => {
    const addr = makeEndpointAddress(ws, regionId, randBytes(8));
    const address = formatAddress(addr);
    // A node that runs no agent: the entry is a remote member for every agent of the region.
    const { name: _n, cluster: _c, rank: _r, ...base } = t.record;
    return { address, key: `${wsHex}.${endpointIdOf(addr)}`, record: { ...base, address, region, regionId, node: 'fuzz-node', ifname: 'fz0', createdAt: new Date(1_800_000_000_000 + int(1e9)).toISOString() } };
  };
  const json = (r: unknown): Uint8Array => bytes(JSON.stringify(r));
  const ops: FuzzOp[] = [];
  const put = (what: string, key: string, value: Uint8Array, reason: InvalidReason | null, valid?: string, bucket: Bucket = 'endpoints'): void => {
    ops.push({ what, bucket, op: 'put', key, value, reason, ...(valid ? { valid } : {}) });
  };
  const kinds: Array<() => void> = [
    () => {
      const e = fresh();
      put('random bytes', e.key, Uint8Array.from([0xff, ...randBytes(1 + int(300))]), 'json');
    },
    () => put('empty value', fresh().key, new Uint8Array(0), 'json'),
    () => {
      const e = fresh();
      const text = JSON.stringify(e.record);
      put('truncated JSON', e.key, bytes(text.slice(0, 1 + int(text.length - 2))), 'json');
    },
    () => {
      const e = fresh();
      const wrong = pick<unknown>([
        { ...e.record, i6pn: 'yes' },
        { ...e.record, v: 2 },
        { ...e.record, node: undefined },
        { ...e.record, ifname: 'bad/name' },
        { ...e.record, workspaceId: -1 },
        { ...e.record, cluster: 'db' },
        [e.record],
        42,
        null,
      ]);
      put('not the record', e.key, json(wrong), 'schema');
    },
    () => {
      const e = fresh();
      const a = makeEndpointAddress(ws, t.regionId, randBytes(8));
      const bad = pick([
        formatAddress(makeEndpointAddress((ws ^ 0x1) >>> 0, t.regionId, a.subarray(8))), // workspace bits
        formatAddress(makeEndpointAddress(ws, t.other.id, a.subarray(8))), // region bits
        formatAddress(a).toUpperCase(), // not canonical
        `fd00${formatAddress(a).slice(4)}`, // not fdaa::/16
        'not-an-address',
      ]);
      put('address bits not the record', e.key, json({ ...e.record, address: bad }), 'address');
    },
    () => {
      // Another region's record, whole and consistent, in this region's bucket.
      const e = fresh(t.other.id, t.other.name);
      put("another region's record", e.key, json(e.record), 'region');
    },
    () => {
      // This region's name with another region's id (and address bits to match).
      const e = fresh(t.other.id);
      put("another region's id", e.key, json(e.record), 'region');
    },
    () => {
      const e = fresh();
      const key = pick([`${t.other.name}.${e.key}`, `g${e.key.slice(1)}`, `${e.key}.x`, `${wsHex}.${endpointIdOf(makeEndpointAddress(ws, t.regionId, randBytes(8)))}`.slice(0, 20)]);
      put('a key that is not <workspace id>.<endpoint id>', key, json(e.record), 'key');
    },
    () => {
      const e = fresh();
      put('a key of another workspace', `${workspaceIdHex((ws ^ 0x10) >>> 0)}.${e.key.slice(9)}`, json(e.record), 'key');
    },
    () => {
      const e = fresh();
      ops.push({ what: 'delete of an unknown malformed key', bucket: 'endpoints', op: pick(['delete', 'purge'] as const), key: `${t.other.name}.${e.key}`, reason: 'key' });
    },
    () => ops.push({ what: 'delete of an unknown key', bucket: 'endpoints', op: pick(['delete', 'purge'] as const), key: fresh().key, reason: null }),
    () => {
      const e = fresh();
      const text = JSON.stringify(e.record);
      // A valid record padded past the bound with JSON white space, or random bytes: just past a record, just
      // under what the bucket takes, or near the max payload (1 MiB), which the bucket itself refuses.
      const size = pick([MAX_RECORD_BYTES + 1, MAX_VALUE_BYTES - 512, 1024 * 1024 - 8 * 1024]);
      const value = rnd() < 0.5 ? bytes(text + ' '.repeat(size - text.length)) : Uint8Array.from([0x7b, ...randBytes(size - 1)]);
      if (size > MAX_VALUE_BYTES) ops.push({ what: 'longer than the bucket takes', bucket: 'endpoints', op: 'put', key: e.key, value, reason: null, serverRefuses: true });
      else put('longer than a record', e.key, value, 'too_large');
    },
    () => {
      const e = fresh();
      put('a valid record written straight into the bucket', e.key, json(e.record), null, e.address);
      // Half of them turn to garbage later: the agents must drop them again.
      if (rnd() < 0.5) ops.push({ what: 'a valid record overwritten with garbage', bucket: 'endpoints', op: 'put', key: e.key, value: bytes(JSON.stringify(e.record).slice(0, 40)), reason: 'json' });
    },
    () => {
      const e = fresh();
      const key = `${e.key}.udp.${1 + int(65535)}`;
      put('tunnel: random bytes', key, Uint8Array.from([0xff, ...randBytes(1 + int(100))]), 'json', undefined, 'tunnels');
    },
    () => put('tunnel: not the record', `${fresh().key}.tcp.${1 + int(65535)}`, json({ v: 1, id: 'x' }), 'schema', undefined, 'tunnels'),
    () => put('tunnel: longer than a record', `${fresh().key}.tcp.${1 + int(65535)}`, new Uint8Array(MAX_RECORD_BYTES + 1 + int(MAX_VALUE_BYTES - MAX_RECORD_BYTES - 512)).fill(0x20), 'too_large', undefined, 'tunnels'),
  ];
  // Every kind at least once, then at random.
  kinds.forEach((k) => k());
  while (ops.length < n) pick(kinds)();
  // Shuffle (Fisher-Yates), keeping each key's writes in their order (a valid record before the garbage that replaces it).
  for (let i = ops.length - 1; i > 0; i--) {
    const j = int(i + 1);
    [ops[i], ops[j]] = [ops[j]!, ops[i]!];
  }
  const byKey = new Map<string, FuzzOp[]>();
  for (const o of ops) byKey.set(`${o.bucket}/${o.key}`, [...(byKey.get(`${o.bucket}/${o.key}`) ?? []), o]);
  const seen = new Map<string, number>();
  return ops.map((o) => {
    const k = `${o.bucket}/${o.key}`;
    const i = seen.get(k) ?? 0;
    seen.set(k, i + 1);
    return byKey.get(k)![i]!;
  });
}

/** The address a well-formed key of the region's bucket names, or null (what an agent would write into its map). */
function keyAddress(key: string, regionId: number): string | null {
  const m = /^([0-9a-f]{8})\.([0-9a-f]{16})$/.exec(key);
  if (!m) return null;
  const ws = parseInt(m[1]!, 16);
  if (ws === 0) return null;
  return formatAddress(makeEndpointAddress(ws, regionId, Buffer.from(m[2]!, 'hex')));
}

const countSeries = async (c: Cluster, node: string, metric: string): Promise<Record<string, number>> => {
  const out: Record<string, number> = {};
  for (const r of REJECT_REASONS) out[r] = (await c.metric(node, `${metric}{reason="${r}"}`)) || 0;
  return out;
};

const diff = (a: Record<string, number>, b: Record<string, number>): Record<string, number> =>
  Object.fromEntries(Object.keys(a).map((k) => [k, (a[k] ?? 0) - (b[k] ?? 0)]));

/** Run fault 5 on a fault cluster (harness upFaultCluster, default topology). */
export async function runFuzz(c: Cluster, o: FuzzOptions = {}): Promise<FuzzResult> {
  const region = o.region ?? 'ams';
  const seed = o.seed ?? (process.env['I6PN_FUZZ_SEED'] ? Number(process.env['I6PN_FUZZ_SEED']) : Math.floor(Math.random() * 2 ** 32));
  const log = o.log ?? (() => {});
  log(`fuzz seed ${seed} (I6PN_FUZZ_SEED=${seed} replays it)`);
  const nodes = c.topology.nodes.filter((n) => n.region === region).map((n) => n.name);
  const problems: string[] = [];
  const store: Store = await connectStore({ servers: c.nats!.url.split(','), name: 'i6pn-fault-fuzz' });
  try {
    const other = c.topology.regions.find((r) => r !== region)!;
    const regionId = (await getRegion(store, region))!.id;
    const otherId = (await getRegion(store, other))!.id;
    const template = (await listEndpoints(store, { region })).endpoints.find((e) => e.i6pn)!;
    const ops = planOps(prng(seed), o.ops ?? 80, { record: template, regionId, other: { name: other, id: otherId } });
    const kv = { endpoints: await store.endpoints(region), tunnels: await store.tunnels(region) };

    const pids = new Map(nodes.map((n) => [n, c.agents.get(n)!.pid]));
    /** Rejections logged so far by an agent, per reason (endpoints or tunnels). */
    const logged = (n: string, what: 'endpoint' | 'tunnel'): Record<string, number> => {
      const out: Record<string, number> = Object.fromEntries(REJECT_REASONS.map((r) => [r, 0]));
      for (const l of logLines(c, n, `invalid ${what} entry rejected`)) out[String(l['reason'])] = (out[String(l['reason'])] ?? 0) + 1;
      return out;
    };
    const loggedBefore = new Map(nodes.map((n) => [n, [logged(n, 'endpoint'), logged(n, 'tunnel')] as const]));
    const before = new Map<string, [Record<string, number>, Record<string, number>]>();
    for (const n of nodes) before.set(n, [await countSeries(c, n, 'i6pn_membership_rejected_total'), await countSeries(c, n, 'i6pn_tunnels_rejected_total')]);
    await loadDeployRules(c);

    // What may never be in a map: the addresses of well-formed keys whose every write is invalid.
    const everValid = new Set(ops.filter((x) => x.valid).map((x) => x.key));
    const neverValid = new Set(
      ops.filter((x) => x.bucket === 'endpoints' && x.op === 'put' && x.reason !== null && !everValid.has(x.key)).flatMap((x) => keyAddress(x.key, regionId) ?? []),
    );
    const appliedInvalid = new Set<string>();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        for (const n of nodes) {
          for (const a of readPinnedEndpoints(c.node(n).bpffs).keys()) if (neverValid.has(a)) appliedInvalid.add(`${n}: ${a}`);
        }
        await sleep(100);
      }
    })();

    const traffic = await Traffic.start(c, defaultFlows(c));
    const churn = new Churn(c, { region });
    churn.start();
    const t0 = Date.now();
    for (const x of ops) {
      const b = kv[x.bucket];
      try {
        if (x.op === 'put') await b.put(x.key, x.value!);
        else if (x.op === 'delete') await b.delete(x.key);
        else await b.purge(x.key);
        if (x.serverRefuses) {
          problems.push(`the bucket took a value of ${x.value!.length} bytes (its limit is ${MAX_VALUE_BYTES})`);
          x.reason = 'too_large';
        }
      } catch (err) {
        if (!x.serverRefuses) problems.push(`the fuzzer's ${x.op} of ${x.bucket}/${x.key} (${x.what}) failed: ${(err as Error).message}`);
      }
      await sleep(o.intervalMs ?? 40);
    }
    const fuzzMs = Date.now() - t0;
    const cr = await churn.stop({ boundMs: 5000 });
    const tr = await traffic.stop();

    // Every rejection counted once, under its reason, on every agent of the region.
    const expected: Record<string, number> = Object.fromEntries(REJECT_REASONS.map((r) => [r, 0]));
    const expectedTunnels = { ...expected };
    for (const x of ops) {
      const into = x.bucket === 'endpoints' ? expected : expectedTunnels;
      if (x.reason) into[x.reason] = (into[x.reason] ?? 0) + 1;
    }
    const counted: Record<string, Record<string, number>> = {};
    const countedTunnels: Record<string, Record<string, number>> = {};
    for (const n of nodes) {
      const deadline = Date.now() + 20_000;
      for (;;) {
        counted[n] = diff(await countSeries(c, n, 'i6pn_membership_rejected_total'), before.get(n)![0]);
        countedTunnels[n] = diff(await countSeries(c, n, 'i6pn_tunnels_rejected_total'), before.get(n)![1]);
        const same = JSON.stringify(counted[n]) === JSON.stringify(expected) && JSON.stringify(countedTunnels[n]) === JSON.stringify(expectedTunnels);
        if (same || Date.now() > deadline) break;
        await sleep(250);
      }
      if (JSON.stringify(counted[n]) !== JSON.stringify(expected)) problems.push(`${n} counted ${JSON.stringify(counted[n])} endpoint rejections, expected ${JSON.stringify(expected)}`);
      // And each logged once, with its reason.
      const inLog = diff(logged(n, 'endpoint'), loggedBefore.get(n)![0]);
      const inLogTunnels = diff(logged(n, 'tunnel'), loggedBefore.get(n)![1]);
      if (JSON.stringify(inLog) !== JSON.stringify(expected)) problems.push(`${n} logged ${JSON.stringify(inLog)} endpoint rejections, expected ${JSON.stringify(expected)}`);
      if (JSON.stringify(inLogTunnels) !== JSON.stringify(expectedTunnels)) problems.push(`${n} logged ${JSON.stringify(inLogTunnels)} tunnel rejections, expected ${JSON.stringify(expectedTunnels)}`);
      if (JSON.stringify(countedTunnels[n]) !== JSON.stringify(expectedTunnels)) problems.push(`${n} counted ${JSON.stringify(countedTunnels[n])} tunnel rejections, expected ${JSON.stringify(expectedTunnels)}`);
    }

    // The maps hold exactly the valid records: the fuzzer's model, then the harness's maps == store.
    const last = new Map<string, FuzzOp>();
    for (const x of ops) if (x.bucket === 'endpoints') last.set(x.key, x);
    const convergeMs = await waitMapsEqualStore(c, 20_000).catch((err: Error) => {
      problems.push(err.message);
      return -1;
    });
    for (const n of nodes) {
      const map = readPinnedEndpoints(c.node(n).bpffs);
      for (const x of last.values()) {
        const a = keyAddress(x.key, regionId);
        if (x.valid && !map.has(x.valid)) problems.push(`${n}: valid ${x.valid} (written straight into the bucket) missing`);
        if (!x.valid && a && map.has(a)) appliedInvalid.add(`${n}: ${a} (${x.what})`);
      }
    }
    sampling = false;
    await sampler;

    for (const [n, pid] of pids) {
      const svc = c.agents.get(n);
      if (!svc || svc.pid !== pid || !svc.alive()) problems.push(`agent ${n}: pid ${pid} is gone (now ${svc?.alive() ? svc.pid : 'none'})`);
    }
    for (const n of nodes) {
      const s = await waitAlert(c, n, 'I6pnMembershipRejected', 15_000, 'firing');
      if (s !== 'firing') problems.push(`I6pnMembershipRejected does not fire for ${n}`);
    }

    // Clean the bucket of what the fuzzer left (a soak runs it again and again).
    for (const x of last.values()) await kv.endpoints.purge(x.key).catch(() => {});
    for (const x of ops) if (x.bucket === 'tunnels') await kv.tunnels.purge(x.key).catch(() => {});
    const after = await mapsVsStore(c).catch((err: Error) => [err.message]);
    if (after.length) await waitMapsEqualStore(c, 20_000).catch((err: Error) => problems.push(`after the clean-up: ${err.message}`));

    const f = figures('fuzz', {
      traffic: tr,
      churn: cr,
      convergeMs,
      extra: { seed, garbageWrites: ops.filter((x) => x.reason).length, validWrites: ops.filter((x) => x.valid).length, fuzzMs },
      violations: [...[...appliedInvalid].map((a) => `applied while invalid: ${a}`), ...problems.map((p) => `${p} (seed ${seed})`)],
    });
    return { seed, figures: f, expected, counted, expectedTunnels, countedTunnels, appliedInvalid: [...appliedInvalid], problems };
  } finally {
    await store.close();
  }
}
