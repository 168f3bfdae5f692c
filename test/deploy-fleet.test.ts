// The fleet topology of deploy/nats/fleet/ on loopback: both files pass
// `nats-server -t`; two regions' servers (hub-region.conf, one server per
// region here, three in production) joined by a gateway, and a rack's leaf
// node (leaf.conf) connected to one of them. Shown on the real servers:
//
// - a region's endpoints bucket created with placement tags (from
//   endpoints-bucket.json, or as a program does) lands on the servers of that
//   region, wherever the request came from; a tag no server has is refused;
// - the leaf holds a read-only mirror of the region's bucket
//   (endpoints-mirror.json) in its own JetStream domain, under the bucket's
//   own stream name; the agent's own reader (agent/reader.ts) on the leaf
//   reads it whole and then follows updates written at the hub, with the
//   origin's stream sequences;
// - however many readers the rack has, the region's stream has one consumer
//   for the rack (the mirror's);
// - the leaf's link needs no more than LEAF_PERMISSIONS;
// - a leaf that was down catches up when it is back, in the same mirror
//   stream (so the rack's agents resume after their revision);
// - a client of the leaf reads the global regions bucket and writes its
//   heartbeat through the hub's domain ($JS.hub.API), with a user whose
//   permissions name exactly that.
//
// The nats-server is the one every test runs (make deps); nothing here needs 2.10.
import { natsServerBin, startConfiguredServer } from "./helpers/nats-server-bin.js";
import test, { type ExecutionContext } from "ava";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { connect, credsAuthenticator, nkeys, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { credsFile, init, issueController, type Permissions } from "../deploy/nats/i6pn-nats-auth.js";
import { endpointsBucket, NODES_BUCKET, REGIONS_BUCKET } from "../lib/schema.js";
import { StreamReader } from "../agent/reader.js";
import { createLogger } from "../agent/log.js";
import { Operation } from "../agent/sync.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const hubConf = join(root, "deploy/nats/fleet/hub-region.conf");
const leafConf = join(root, "deploy/nats/fleet/leaf.conf");
const bucketJson = join(root, "deploy/nats/fleet/endpoints-bucket.json");
const mirrorJson = join(root, "deploy/nats/fleet/endpoints-mirror.json");
const HUB_DOMAIN = "hub";
const REGIONS = ["eu-west", "eu-central"] as const;
type Region = (typeof REGIONS)[number];

/** The server every test runs (test/helpers/nats-server-bin.ts). */
const NATS = natsServerBin();

/**
 * The leaf's link to the region's servers: what crosses it is the leaf's
 * traffic (the mirror's) and its agents' (the global buckets, in the hub's
 * domain). Towards the hub ("pub"): JetStream API requests in the hub's
 * domain, the mirror's flow-control replies. Towards the leaf ("sub"): the
 * mirror's consumer-create reply and deliveries, the agents' replies. Without
 * $JSC.R.> or $JS.M.> the mirror does not catch up (tried on 2.9.10 and
 * 2.10.27); $JS.FC.> is not exercised by this test's few messages.
 */
const LEAF_PERMISSIONS: Permissions = {
  pub: { allow: [`$JS.${HUB_DOMAIN}.API.>`, "$JS.FC.>"] },
  sub: { allow: ["$JSC.R.>", "$JS.M.>", "_INBOX.>"] },
};

// ---------------------------------------------------------------- harness

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), "i6pn-deploy-fleet-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** n loopback ports, free a moment ago and all different (held open together until each is known). */
async function freePorts(n: number): Promise<number[]> {
  const held = await Promise.all(
    Array.from({ length: n }, () => new Promise<Server>((resolve, reject) => {
      const s = createServer();
      s.once("error", reject);
      s.listen(0, "127.0.0.1", () => resolve(s));
    })),
  );
  const ports = held.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(held.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/** nats-server with `conf`, its log beside it; stopped at the end of the test. */
function startServer(t: ExecutionContext, conf: string, cwd: string, env: Record<string, string>): ChildProcess {
  return startConfiguredServer(t, conf, cwd, `${conf}.log`, env);
}

/** Ends an until() at once. */
class Fatal extends Error {}

async function until<T>(what: string, fn: () => Promise<T>, timeoutMs = 30_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof Fatal) throw err;
      last = err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`${what}: timed out; last error: ${(last as Error)?.message}`);
}

/** A CA and one certificate for 127.0.0.1, used by every listener (clients, routes, gateways, leaf nodes). */
function makeCerts(dir: string): void {
  const ssl = (args: string[]) => {
    const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}${r.error ? r.error.message : ""}`);
  };
  ssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=i6pn-test-ca"]);
  ssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=nats"]);
  writeFileSync(join(dir, "ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n");
  ssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf"]);
}

/**
 * A user of the i6pn account with these permissions (all of the account's
 * subjects when null), signed with the account key that `init` wrote. The
 * leaf's link and the agent on a leaf are identities that
 * deploy/nats/i6pn-nats-auth.ts does not issue (yet); the JWT is the NATS v2
 * form that it writes.
 */
function issueUser(dir: string, name: string, permissions: Permissions | null): string {
  const account = nkeys.fromSeed(new TextEncoder().encode(readFileSync(join(dir, "i6pn.nk"), "utf8").trim()));
  const user = nkeys.createUser();
  const b64 = (s: string | Uint8Array) => Buffer.from(s).toString("base64url");
  const claims: Record<string, unknown> = {
    jti: "",
    iat: Math.floor(Date.now() / 1000),
    iss: account.getPublicKey(),
    name,
    sub: user.getPublicKey(),
    nats: { type: "user", version: 2, subs: -1, data: -1, payload: -1, ...(permissions ?? {}) },
  };
  claims["jti"] = createHash("sha256").update(JSON.stringify(claims)).digest("hex").toUpperCase();
  const signed = `${b64(JSON.stringify({ typ: "JWT", alg: "ed25519-nkey" }))}.${b64(JSON.stringify(claims))}`;
  const jwt = `${signed}.${b64(account.sign(new TextEncoder().encode(signed)))}`;
  const file = join(dir, `${name}.creds`);
  writeFileSync(file, credsFile(jwt, user.getSeed()), { mode: 0o600 });
  return file;
}

/** text.replace, failing when the file no longer holds what this test rewrites. */
function rewrite(file: string, text: string, from: string | RegExp, to: string): string {
  const found = typeof from === "string" ? text.includes(from) : new RegExp(from.source, from.flags.replace("g", "")).test(text);
  if (!found) throw new Error(`${file} changed: ${from} not found; update test/deploy-fleet.test.ts`);
  return text.replace(from, to);
}

interface HubPorts { client: number; http: number; route: number; gateway: number; leaf: number }

/** hub-region.conf as an operator instantiates it for `region`, on loopback ports, in dir. */
function hubConfig(dir: string, region: Region, p: HubPorts, gateways: Record<Region, number>): string {
  const f = "deploy/nats/fleet/hub-region.conf";
  let c = readFileSync(hubConf, "utf8");
  // The region: its tag and its cluster's (and gateway's) name.
  c = rewrite(f, c, 'server_tags: ["region:eu-west"]', `server_tags: ["region:${region}"]`);
  c = rewrite(f, c, /^ {2}name: i6pn-eu-west$/gm, `  name: i6pn-${region}`);
  // Loopback ports, paths.
  c = rewrite(f, c, /^port: 4222$/m, `port: ${p.client}\nhost: 127.0.0.1`);
  c = rewrite(f, c, /^http_port: 8222$/m, `http: "127.0.0.1:${p.http}"`);
  c = rewrite(f, c, /^ {2}port: 6222$/m, `  port: ${p.route}\n  host: 127.0.0.1`);
  c = rewrite(f, c, /^ {2}port: 7222$/m, `  port: ${p.gateway}\n  host: 127.0.0.1`);
  c = rewrite(f, c, /^ {2}port: 7422$/m, `  port: ${p.leaf}\n  host: 127.0.0.1`);
  c = rewrite(f, c, /\/etc\/nats\/tls\//g, `${dir}/`);
  c = rewrite(f, c, '"/data/jetstream"', `"${dir}/js-${region}"`);
  // One server per region here: its routes are itself.
  c = rewrite(f, c, /routes: \[[^\]]*\]/, `routes: [ nats-route://127.0.0.1:${p.route} ]`);
  for (const r of REGIONS) c = rewrite(f, c, `nats://nats-${r}-gw.i6pn-system.svc.cluster.local:7222`, `nats://127.0.0.1:${gateways[r]}`);
  const out = join(dir, `hub-${region}.conf`);
  writeFileSync(out, c);
  return out;
}

/** leaf.conf on loopback ports, connecting to the hub server whose leafnodes port is `hubLeaf`. */
function leafConfig(dir: string, p: { client: number; http: number }, hubLeaf: number): string {
  const f = "deploy/nats/fleet/leaf.conf";
  let c = readFileSync(leafConf, "utf8");
  c = rewrite(f, c, /^port: 4222$/m, `port: ${p.client}\nhost: 127.0.0.1`);
  c = rewrite(f, c, /^http_port: 8222$/m, `http: "127.0.0.1:${p.http}"`);
  c = rewrite(f, c, /\/etc\/nats\/tls\//g, `${dir}/`);
  c = rewrite(f, c, '"/etc/nats/leaf.creds"', `"${dir}/leaf.creds"`);
  c = rewrite(f, c, '"/data/jetstream"', `"${dir}/js-leaf"`);
  c = rewrite(f, c, /urls: \[[^\]]*\]/, `urls: [ tls://127.0.0.1:${hubLeaf} ]`);
  const out = join(dir, "leaf.conf");
  writeFileSync(out, c);
  return out;
}

/**
 * A stream configuration of deploy/nats/fleet/ (written for eu-west) for
 * `region`, with `replicas` (one server per region here, three in production).
 */
function streamConfig(file: string, region: Region, replicas: number): StreamConfig {
  const name = file.slice(root.length);
  const text = readFileSync(file, "utf8");
  if (!text.includes("eu-west")) throw new Error(`${name} changed: no eu-west in it; update test/deploy-fleet.test.ts`);
  const cfg = JSON.parse(text.replaceAll("eu-west", region)) as StreamConfig;
  if (cfg.num_replicas !== 3 && cfg.num_replicas !== 1) throw new Error(`${name}: num_replicas ${cfg.num_replicas}`);
  return { ...cfg, num_replicas: replicas };
}

/** `nats-server -t -c conf`: the configuration parses, with every variable and included file it names. */
function configCheck(conf: string, cwd: string, env: Record<string, string>) {
  return spawnSync(NATS, ["-t", "-c", conf], { cwd, env: { ...process.env, ...env }, encoding: "utf8" });
}

interface Ep { servers: string; tls: { caFile: string } }

async function connectAs(t: ExecutionContext, ep: Ep, creds: string, name: string): Promise<NatsConnection> {
  const nc = await connect({ servers: ep.servers, name, tls: ep.tls, authenticator: credsAuthenticator(readFileSync(creds)), maxReconnectAttempts: 0, timeout: 20_000 });
  t.teardown(() => nc.close().catch(() => undefined));
  return nc;
}

async function outcome(op: () => Promise<unknown>): Promise<string> {
  try {
    await op();
    return "ok";
  } catch (err) {
    return (err as Error).message;
  }
}

/** Every message of a stream as the agent reads it, from `startSeq` until `stop` says so. */
function readStream(nc: NatsConnection, jsm: JetStreamManager, bucket: string, startSeq: number, stop: (got: Map<string, { seq: number; op: Operation; value: string }>) => boolean) {
  const got = new Map<string, { seq: number; op: Operation; value: string }>();
  let resolve!: () => void;
  const finished = new Promise<void>((r) => (resolve = r));
  const reader = new StreamReader({
    nc,
    jsm,
    stream: `KV_${bucket}`,
    prefix: `$KV.${bucket}.`,
    startSeq,
    log: createLogger("warn", {}),
    heartbeatMs: 1000,
    onMessage: (key, data, seq, op) => {
      got.set(key, { seq, op, value: new TextDecoder().decode(data) });
      if (stop(got)) resolve();
    },
  });
  return { reader, got, finished };
}

// ---------------------------------------------------------------- tests

test.serial("nats-server -t accepts both fleet files as an operator fills them in, and refuses them without their variables", (t) => {
  const dir = tempDir(t);
  const { account } = init(dir);
  makeCerts(dir);
  writeFileSync(join(dir, "leaf.creds"), "");
  // The files as they are, only their TLS, store and creds paths moved here.
  for (const [name, file] of [["hub-region.conf", hubConf], ["leaf.conf", leafConf]] as const) {
    let c = readFileSync(file, "utf8");
    c = rewrite(name, c, /\/etc\/nats\/tls\//g, `${dir}/`);
    c = rewrite(name, c, '"/data/jetstream"', `"${dir}/js"`);
    if (name === "leaf.conf") c = rewrite(name, c, '"/etc/nats/leaf.creds"', `"${dir}/leaf.creds"`);
    writeFileSync(join(dir, name), c);
  }
  const env = { NATS_SERVER_NAME: "nats-eu-west-0", NATS_LEAF_DOMAIN: "eu-west-r17", I6PN_NATS_ACCOUNT: account };
  for (const name of ["hub-region.conf", "leaf.conf"]) {
    const ok = configCheck(join(dir, name), dir, env);
    t.is(ok.status, 0, `${name}: ${ok.stdout}${ok.stderr}`);
    t.regex(`${ok.stdout}${ok.stderr}`, /is valid/);
  }
  // The check can fail: a variable the file needs, or auth.conf, missing.
  const unset = { ...process.env } as Record<string, string>;
  delete unset["I6PN_NATS_ACCOUNT"];
  const noVariable = spawnSync(NATS, ["-t", "-c", join(dir, "leaf.conf")], { cwd: dir, env: { ...unset, NATS_SERVER_NAME: "x", NATS_LEAF_DOMAIN: "x" }, encoding: "utf8" });
  t.not(noVariable.status, 0, "leaf.conf without I6PN_NATS_ACCOUNT");
  t.regex(noVariable.stderr, /I6PN_NATS_ACCOUNT/);
  rmSync(join(dir, "auth.conf"));
  const noAuth = configCheck(join(dir, "hub-region.conf"), dir, env);
  t.not(noAuth.status, 0, "hub-region.conf without auth.conf");
});

test.serial("two regions and a rack's leaf: placement by region tag, the region's bucket mirrored on the leaf and read there by the agent's reader, one hub consumer per leaf, global buckets through the hub's domain", async (t) => {
  const dir = tempDir(t);
  const { account } = init(dir);
  const controllerCreds = issueController(dir);
  issueUser(dir, "leaf", LEAF_PERMISSIONS);
  makeCerts(dir);
  const tls = { caFile: join(dir, "ca.crt") };

  const ports = await freePorts(12);
  const hub: Record<Region, HubPorts> = {
    "eu-west": { client: ports[0]!, http: ports[1]!, route: ports[2]!, gateway: ports[3]!, leaf: ports[4]! },
    "eu-central": { client: ports[5]!, http: ports[6]!, route: ports[7]!, gateway: ports[8]!, leaf: ports[9]! },
  };
  const leafPorts = { client: ports[10]!, http: ports[11]! };
  const gateways = { "eu-west": hub["eu-west"].gateway, "eu-central": hub["eu-central"].gateway };
  const procs: ChildProcess[] = [];
  for (const r of REGIONS) {
    const conf = hubConfig(dir, r, hub[r], gateways);
    const env = { NATS_SERVER_NAME: `nats-${r}-0` };
    const check = configCheck(conf, dir, env);
    t.is(check.status, 0, `${check.stdout}${check.stderr}`);
    procs.push(startServer(t, conf, dir, env));
  }
  // The rack's leaf belongs to eu-central: it connects to that region's server.
  const leafDomain = "eu-central-r1";
  const leafEnv = { NATS_SERVER_NAME: "nats-leaf-eu-central-r1", NATS_LEAF_DOMAIN: leafDomain, I6PN_NATS_ACCOUNT: account };
  const lconf = leafConfig(dir, leafPorts, hub["eu-central"].leaf);
  const lcheck = configCheck(lconf, dir, leafEnv);
  t.is(lcheck.status, 0, `${lcheck.stdout}${lcheck.stderr}`);
  let leafProc = startServer(t, lconf, dir, leafEnv);

  const west: Ep = { servers: `tls://127.0.0.1:${hub["eu-west"].client}`, tls };
  const leaf: Ep = { servers: `tls://127.0.0.1:${leafPorts.client}`, tls };

  // The controller talks to eu-west's server; JetStream answers once the super-cluster has a meta leader
  // (a few seconds: the servers find each other through the gateway first).
  const logTail = (conf: string) => readFileSync(`${conf}.log`, "utf8").split("\n").slice(-15).join("\n");
  await until("a JetStream meta leader", async () => {
    for (const [i, p] of procs.entries()) {
      if (p.exitCode !== null || p.signalCode !== null) throw new Fatal(`nats-server nats-${REGIONS[i]}-0 exited:\n${logTail(join(dir, `hub-${REGIONS[i]}.conf`))}`);
    }
    const jsz = (await (await fetch(`http://127.0.0.1:${hub["eu-west"].http}/jsz`)).json()) as { meta_cluster?: { leader?: string } };
    if (!jsz.meta_cluster?.leader) throw new Error(`no meta leader yet; eu-west's log ends:\n${logTail(join(dir, "hub-eu-west.conf"))}`);
    return jsz.meta_cluster.leader;
  }, 60_000);
  const ctl = await until("controller connected", () => connectAs(t, west, controllerCreds, "i6pnctl"), 30_000);
  const kvm = new Kvm(jetstream(ctl, { timeout: 20_000 }));
  const jsm = await jetstreamManager(ctl, { timeout: 20_000, checkAPI: false });
  const bucketWest = endpointsBucket("eu-west");
  const bucketCentral = endpointsBucket("eu-central");
  // eu-central's bucket from deploy/nats/fleet/endpoints-bucket.json (what `nats stream add --config` sends),
  // eu-west's as a program creates it (nats.js, placement tags).
  await jsm.streams.add(streamConfig(bucketJson, "eu-central", 1));
  const central = await kvm.open(bucketCentral);
  const create = (bucket: string, tag: string) => kvm.create(bucket, { history: 1, replicas: 1, maxValueSize: 16 * 1024, placement: { cluster: "", tags: [tag] } });
  await create(bucketWest, "region:eu-west");

  // Placement: each region's bucket on its own region's server, though both were asked of eu-west's.
  for (const r of REGIONS) {
    const si = await jsm.streams.info(`KV_${endpointsBucket(r)}`);
    t.is(si.cluster?.name, `i6pn-${r}`, `${r}'s bucket in its region's cluster`);
    t.is(si.cluster?.leader, `nats-${r}-0`, `${r}'s bucket led by its region's server`);
    t.deepEqual(si.config.placement?.tags, [`region:${r}`]);
  }
  // A tag no server carries: refused, not placed anywhere.
  const nowhere = await outcome(() => create(endpointsBucket("ap-south"), "region:ap-south"));
  t.not(nowhere, "ok");
  t.regex(nowhere, /insufficient resources|no suitable peers/i);

  // The global buckets (here on any server: they are small) and what the agent reads of them.
  const regions = await kvm.create(REGIONS_BUCKET, { history: 5, replicas: 1 });
  const nodes = await kvm.create(NODES_BUCKET, { history: 5, replicas: 1 });
  await regions.put("name.eu-central", JSON.stringify({ v: 1, name: "eu-central", id: 2 }));

  // Membership with history: an overwritten key and a deleted one leave gaps in the stream's sequences.
  const entry = (n: number) => JSON.stringify({ v: 1, n });
  await central.put("00000001.0000000000000001", entry(1));
  await central.put("00000001.0000000000000002", entry(2));
  await central.put("00000001.0000000000000003", entry(3));
  await central.put("00000001.0000000000000001", entry(11));
  await central.delete("00000001.0000000000000002");
  await central.put("00000001.0000000000000004", entry(4));
  const origin = new Map<string, number>();
  for await (const k of await central.keys()) origin.set(k, (await central.get(k))!.revision);
  t.deepEqual([...origin.keys()].sort(), ["00000001.0000000000000001", "00000001.0000000000000003", "00000001.0000000000000004"]);
  const originState = (await jsm.streams.info(`KV_${bucketCentral}`)).state;
  t.is(originState.last_seq, 6);
  t.true(originState.first_seq > 1 || originState.messages < originState.last_seq, "the origin has gaps");

  // The mirror, created on the leaf (its own domain, the bucket's own name), once the leaf's link is up.
  const lctl = await until("controller on the leaf", () => connectAs(t, leaf, controllerCreds, "i6pnctl@leaf"), 30_000);
  const lkvm = new Kvm(jetstream(lctl, { timeout: 20_000 }));
  const ljsm = await jetstreamManager(lctl, { timeout: 20_000, checkAPI: false });
  await ljsm.streams.add(streamConfig(mirrorJson, "eu-central", 1));
  const lkv = await lkvm.open(bucketCentral);
  const mirrorInfo = await until("the mirror caught up", async () => {
    const si = await ljsm.streams.info(`KV_${bucketCentral}`);
    if (si.state.last_seq !== originState.last_seq) throw new Error(`mirror at ${si.state.last_seq}, origin at ${originState.last_seq}`);
    return si;
  }, 30_000);
  t.is(mirrorInfo.config.mirror?.name, `KV_${bucketCentral}`);
  t.is(mirrorInfo.config.mirror?.external?.api, `$JS.${HUB_DOMAIN}.API`);
  t.is((await lkv.get("00000001.0000000000000001"))?.revision, origin.get("00000001.0000000000000001"), "a KV read of the mirror");
  t.deepEqual(mirrorInfo.config.subjects ?? [], [], "a mirror takes no writes of its own");
  t.not(mirrorInfo.created, (await jsm.streams.info(`KV_${bucketCentral}`)).created, "the mirror is another stream: another creation time, so another pinned-stream id");

  // The agent on the leaf: a user with only what it needs there.
  const stream = `KV_${bucketCentral}`;
  const agentCreds = issueUser(dir, "agent-node-a", {
    pub: {
      allow: [
        // its region's bucket, in the leaf's own JetStream: the agent's pull reader
        `$JS.API.STREAM.INFO.${stream}`,
        `$JS.API.CONSUMER.CREATE.${stream}`,
        `$JS.API.CONSUMER.CREATE.${stream}.>`,
        `$JS.API.CONSUMER.MSG.NEXT.${stream}.*`,
        `$JS.API.CONSUMER.INFO.${stream}.*`,
        `$JS.API.CONSUMER.DELETE.${stream}.*`,
        // the global buckets, in the hub's domain: its region's id and its heartbeat
        `$JS.${HUB_DOMAIN}.API.STREAM.INFO.KV_${REGIONS_BUCKET}`,
        `$JS.${HUB_DOMAIN}.API.DIRECT.GET.KV_${REGIONS_BUCKET}.>`,
        `$JS.${HUB_DOMAIN}.API.STREAM.MSG.GET.KV_${REGIONS_BUCKET}`,
        `$JS.${HUB_DOMAIN}.API.STREAM.INFO.KV_${NODES_BUCKET}`,
        `$JS.${HUB_DOMAIN}.API.$KV.${NODES_BUCKET}.node-a`,
      ],
    },
    sub: { allow: ["_INBOX.>"] },
  });
  const agent = await connectAs(t, leaf, agentCreds, "i6pn-agent@node-a");
  const ajsm = await jetstreamManager(agent, { timeout: 20_000, checkAPI: false });

  // The agent's reader, on the mirror, from the first message: the live keys with the origin's revisions.
  const whole = readStream(agent, ajsm, bucketCentral, 1, (got) => [...got.values()].some((v) => v.seq >= originState.last_seq));
  await whole.reader.start();
  await whole.finished;
  const live = new Map([...whole.got].filter(([, v]) => v.op === Operation.PUT).map(([k, v]) => [k, v.seq]));
  t.deepEqual(live, origin, "the mirror holds the origin's live keys at the origin's revisions");
  t.is(whole.got.get("00000001.0000000000000002")?.op, Operation.DEL, "and the delete marker");
  t.is(whole.got.get("00000001.0000000000000001")?.value, entry(11));

  // Two more readers of the rack, resuming after the revision they hold; then an update at the hub.
  const more = [0, 1].map(() => readStream(agent, ajsm, bucketCentral, originState.last_seq + 1, (got) => got.has("00000002.0000000000000005")));
  for (const m of more) await m.reader.start();
  const revision = await central.put("00000002.0000000000000005", entry(5));
  await Promise.all(more.map((m) => m.finished));
  for (const m of more) {
    t.is(m.got.size, 1, "a resumed reader reads only what came after its revision");
    t.is(m.got.get("00000002.0000000000000005")?.seq, revision, "at the revision the hub gave it");
  }

  // Fan-out: three readers on the leaf, one consumer on the region's stream (the mirror's).
  const leafSide = await ljsm.streams.info(stream);
  const hubSide = await jsm.streams.info(stream);
  t.is(leafSide.state.consumer_count, 3, "the rack's readers are the leaf's consumers");
  t.is(hubSide.state.consumer_count, 1, "the region's servers serve the rack one consumer, the mirror's");
  whole.reader.stop();
  for (const m of more) m.reader.stop();

  // The global buckets through the hub's domain: the region's id, the node's heartbeat.
  const hubKv = new Kvm(jetstream(agent, { domain: HUB_DOMAIN, timeout: 20_000 }));
  const aRegions = await hubKv.open(REGIONS_BUCKET);
  t.is((await aRegions.get("name.eu-central"))?.json<{ id: number }>().id, 2);
  const aNodes = await hubKv.open(NODES_BUCKET);
  t.is(await outcome(() => aNodes.put("node-a", "alive")), "ok");
  t.is((await nodes.get("node-a"))?.string(), "alive", "the heartbeat reached the hub's bucket");
  t.regex(await outcome(() => aNodes.put("node-b", "spoofed")), /Permissions Violation/, "and only its own key");
  // Nothing but its region's bucket on the leaf: not eu-west's, not the hub's directly.
  t.regex(await outcome(() => ajsm.streams.info(`KV_${bucketWest}`)), /Permissions Violation/);
  t.regex(await outcome(() => new Kvm(jetstream(agent, { domain: HUB_DOMAIN, timeout: 5000 })).open(bucketCentral).then((kv) => kv.status())), /Permissions Violation/);

  // The leaf goes down; the region changes meanwhile; back up, its mirror catches up by itself.
  await agent.close();
  await lctl.close();
  const stopped = new Promise((r) => leafProc.once("exit", r));
  leafProc.kill("SIGTERM");
  await stopped;
  const whileDown = await central.put("00000002.0000000000000006", entry(6));
  await central.delete("00000001.0000000000000003");
  leafProc = startServer(t, lconf, dir, leafEnv);
  const back = await until("the leaf back", () => connectAs(t, leaf, controllerCreds, "i6pnctl@leaf-again"), 30_000);
  const bjsm = await jetstreamManager(back, { timeout: 20_000, checkAPI: false });
  const caughtUp = await until("the mirror caught up after the leaf's restart", async () => {
    const si = await bjsm.streams.info(stream);
    if (si.state.last_seq !== whileDown + 1) throw new Error(`mirror at ${si.state.last_seq}, origin at ${whileDown + 1}`);
    return si;
  }, 60_000);
  t.is(caughtUp.created, mirrorInfo.created, "the same mirror stream (the agents' pinned revision still names it)");
  const bkv = await new Kvm(jetstream(back, { timeout: 20_000 })).open(bucketCentral);
  t.is((await bkv.get("00000002.0000000000000006"))?.revision, whileDown);
  t.is((await bkv.get("00000001.0000000000000003"))?.operation, "DEL");

  for (const p of [...procs, leafProc]) t.is(p.exitCode, null, "nats-server still running");
});
