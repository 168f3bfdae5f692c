// The NATS identities of deploy/nats/ against a real nats-server: an agent's
// credentials read the regions and nodes buckets and its own region's
// endpoints bucket (also with a pull consumer), no other region's, and write
// only their own node's heartbeat key; they cannot write membership or another
// node's key. Drop events: an agent publishes on its own node's subject only,
// and cannot receive events at all (no subscription to them, to another
// client's inbox or to the events stream); the controller's credentials can.
// Runs once on a single server and once on the three-server production
// configuration (deploy/nats/nats-server.conf, TLS on clients and routes).
import test, { type ExecutionContext } from "ava";
import { parseAllDocuments } from "yaml";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync, statSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { connect, credsAuthenticator, nkeys, PermissionViolationError, type NatsConnection, type Subscription } from "@nats-io/transport-node";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { AGENT_BUCKETS, agentBuckets, agentPermissions, assertNodeName, assertRegionName, BUCKETS, credsFile, gatewayPermissions, init, issueAgent, issueController, issueGateway } from "../deploy/nats/i6pn-nats-auth.js";
import { agentInboxPrefix, ENDPOINTS_HISTORY, gatewayInboxPrefix, endpointsBucket, GATEWAYS_BUCKET, gatewayKey, LEGACY_ENDPOINTS_BUCKET, tunnelsBucket } from "../lib/schema.js";
import { EVENTS_STREAM, eventsFilter, eventsSubject } from "../lib/events.js";
import { ensureEventsStream } from "../lib/store.js";
import { formatAddress, makeGatewayAddress } from "../lib/address.js";
import { natsServerBin, startConfiguredServer } from "./helpers/nats-server-bin.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const prodConf = join(root, "deploy/nats/nats-server.conf");
const PERMISSION = /Permissions Violation for Publish to "([^"]+)"/;

// ---------------------------------------------------------------- harness

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), "i6pn-deploy-nats-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => (typeof addr === "object" && addr ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

/** Starts nats-server; stopped (and awaited) at the end of the test. */
function startServer(t: ExecutionContext, conf: string, cwd: string, log: string, env: Record<string, string> = {}): ChildProcess {
  return startConfiguredServer(t, conf, cwd, log, env);
}

async function until<T>(what: string, fn: () => Promise<T>, timeoutMs = 30_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      return await fn();
    } catch (err) {
      last = err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`${what}: timed out; last error: ${(last as Error)?.message}`);
}

/** The INFO line a NATS server sends first on a plain TCP connection. */
function serverInfo(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = createConnection({ host: "127.0.0.1", port });
    let buf = "";
    sock.setTimeout(3000, () => sock.destroy(new Error("no INFO from nats-server")));
    sock.on("data", (d) => {
      buf += d.toString();
      if (buf.includes("\r\n")) {
        sock.destroy();
        resolve(buf.slice(0, buf.indexOf("\r\n")));
      }
    });
    sock.on("error", reject);
  });
}

interface Endpoint { servers: string; tls?: { caFile: string } }

/** `agent`: an agent's connection, with the inbox prefix its credentials allow (as agent/store-client.ts connects). */
async function connectAs(t: ExecutionContext, ep: Endpoint, creds: string, name: string, inboxPrefix?: string): Promise<NatsConnection> {
  const nc = await connect({
    servers: ep.servers,
    name,
    ...(inboxPrefix !== undefined ? { inboxPrefix } : {}),
    authenticator: credsAuthenticator(readFileSync(creds)),
    ...(ep.tls ? { tls: ep.tls } : {}),
    maxReconnectAttempts: 0,
    timeout: 20_000,
  });
  t.teardown(() => nc.close().catch(() => undefined));
  return nc;
}

/** The error a rejected KV operation raises, as text, or "ok" when it succeeded. */
async function outcome(op: () => Promise<unknown>): Promise<string> {
  try {
    await op();
    return "ok";
  } catch (err) {
    return (err as Error).message;
  }
}

const R1 = endpointsBucket("r1");
const R2 = endpointsBucket("r2");
const T1 = tunnelsBucket("r1");
const T2 = tunnelsBucket("r2");
/** The gateway of r1 that checkGatewayPermissions connects as, and another one. */
const GW = makeGatewayAddress(0x0a70, Uint8Array.of(1, 2, 3, 4, 5, 6));
const OTHER_GW = makeGatewayAddress(0x0a70, Uint8Array.of(9, 9, 9, 9, 9, 9));

/** The agents checkPermissions expects in dir/agents: node-a of r1, and node-u of r1 issued for the upgrade (--legacy-endpoints). */
function issueAgents(dir: string): void {
  issueAgent(dir, "node-a", "r1");
  issueAgent(dir, "node-u", "r1", { legacyEndpoints: true });
  issueGateway(dir, formatAddress(GW), "r1");
}

/**
 * A gateway of r1 follows r1's tunnels (status, get, a watch from the first
 * message) and writes and reads back its own record, and nothing else: not
 * r2's tunnels, not another gateway's record, not the endpoints.
 */
async function checkGatewayPermissions(t: ExecutionContext, dir: string, ep: Endpoint, buckets: Map<string, KV>) {
  const tunnel = JSON.stringify({ v: 1, id: "0123456789ab" });
  await buckets.get(T1)!.put("w1.e1.tcp.80", tunnel);
  await buckets.get(T2)!.put("w2.e2.tcp.80", tunnel);
  const gw = await connectAs(t, ep, join(dir, "gateways", `${Buffer.from(GW).toString("hex")}.creds`), "i6pn-gateway", gatewayInboxPrefix(GW));
  // Replies reach it on its own inbox only: not every client's, not an agent's, not another gateway's.
  for (const subject of ["_INBOX.>", "_INBOX.i6pn-agent.node-a.>", `${gatewayInboxPrefix(OTHER_GW)}.>`, ">"]) {
    t.is(await subscribeOutcome(gw, subject), `denied ${subject}`, `the gateway subscribed to ${subject}`);
  }
  const gkvm = new Kvm(gw);
  const tunnels = await gkvm.open(T1);
  t.is((await tunnels.status()).values, 1);
  const watch = await tunnels.watch({ resumeFromRevision: 1 });
  for await (const e of watch) {
    t.is(`${e.key}=${e.string()}`, `w1.e1.tcp.80=${tunnel}`);
    break;
  }
  watch.stop();
  const own = gatewayKey("r1", GW);
  // Its own record back (after a restart): by direct get, the one read of that bucket it may make.
  const records = await gkvm.open(GATEWAYS_BUCKET, { allow_direct: true });
  t.is(await outcome(() => records.put(own, "{}")), "ok");
  t.is((await records.get(own))?.string(), "{}");
  await buckets.get(GATEWAYS_BUCKET)!.put(gatewayKey("r1", OTHER_GW), "other");
  const otherTunnels = await gkvm.open(T2).catch(() => null);
  const denied: [string, () => Promise<unknown>, string][] = [
    ["write another gateway's record", () => records.put(gatewayKey("r1", OTHER_GW), "{}"), `$KV.${GATEWAYS_BUCKET}.${gatewayKey("r1", OTHER_GW)}`],
    ["read another gateway's record", () => gw.request(`$JS.API.DIRECT.GET.KV_${GATEWAYS_BUCKET}.$KV.${GATEWAYS_BUCKET}.${gatewayKey("r1", OTHER_GW)}`, "", { timeout: 2000 }), `$JS.API.DIRECT.GET.KV_${GATEWAYS_BUCKET}.$KV.${GATEWAYS_BUCKET}.${gatewayKey("r1", OTHER_GW)}`],
    ["write a tunnel", () => tunnels.put("w1.e1.tcp.81", tunnel), `$KV.${T1}.w1.e1.tcp.81`],
    ["delete a tunnel", () => tunnels.delete("w1.e1.tcp.80"), `$KV.${T1}.w1.e1.tcp.80`],
    ["read another region's tunnels", () => (otherTunnels ? otherTunnels.status() : gkvm.open(T2)), `$JS.API.STREAM.INFO.KV_${T2}`],
    ["read the endpoints", () => gkvm.open(R1).then((kv) => kv.status()), `$JS.API.STREAM.INFO.KV_${R1}`],
    ["get a tunnel (it watches, it does not get)", () => tunnels.get("w1.e1.tcp.80"), `$JS.API.STREAM.MSG.GET.KV_${T1}`],
    ["write a heartbeat", () => gw.request(`$KV.i6pn_nodes.node-a`, "x", { timeout: 2000 }), "$KV.i6pn_nodes.node-a"],
  ];
  for (const [what, op, subject] of denied) t.is(PERMISSION.exec(await outcome(op))?.[1], subject, `gateway could ${what}`);
  t.is((await buckets.get(GATEWAYS_BUCKET)!.get(gatewayKey("r1", OTHER_GW)))?.string(), "other");
  t.is((await buckets.get(T1)!.get("w1.e1.tcp.81")), null);
}

/**
 * The controller creates the buckets (the fixed ones, r1's and r2's endpoints
 * buckets, and the first layout's) and writes endpoints; node-a's agent of r1
 * reads r1's (get, watch, keys, a pull consumer) and heartbeats; everything
 * else it tries fails with a permission error and changes nothing.
 */
async function checkPermissions(t: ExecutionContext, dir: string, controllerEp: Endpoint, agentEp: Endpoint, replicas: number) {
  const ctl = await connectAs(t, controllerEp, join(dir, "controller.creds"), "i6pnctl");
  const kvm = new Kvm(ctl);
  const buckets = new Map<string, KV>();
  for (const b of BUCKETS) buckets.set(b, await until(`create ${b}`, () => kvm.create(b, { history: 1, replicas }), 60_000));
  for (const b of [R1, R2, T1, T2]) buckets.set(b, await until(`create ${b}`, () => kvm.create(b, { history: ENDPOINTS_HISTORY, replicas }), 60_000));
  const legacy = await until(`create ${LEGACY_ENDPOINTS_BUCKET}`, () => kvm.create(LEGACY_ENDPOINTS_BUCKET, { history: 5, replicas }), 60_000);
  const endpoints = buckets.get(R1)!;
  const nodes = buckets.get("i6pn_nodes")!;
  const entry = JSON.stringify({ v: 1, address: "fdaa:0:1:1::1" });
  await endpoints.put("w1.e1", entry);
  await buckets.get(R2)!.put("w2.e2", entry);
  await legacy.put("r1.w1.e1", entry);
  await nodes.put("node-b", "controller wrote node-b");

  const agent = await connectAs(t, agentEp, join(dir, "agents/node-a.creds"), "i6pn-agent@node-a", agentInboxPrefix("node-a"));
  const akvm = new Kvm(agent);
  const aEndpoints = await akvm.open(R1);
  const aNodes = await akvm.open("i6pn_nodes");

  // Reads of its region's bucket: get, a watch with the initial values, keys.
  t.is((await aEndpoints.get("w1.e1"))?.string(), entry);
  const watch = await aEndpoints.watch();
  let watched: string | undefined;
  for await (const e of watch) {
    watched = `${e.key}=${e.string()}`;
    break;
  }
  watch.stop();
  t.is(watched, `w1.e1=${entry}`);
  const keys: string[] = [];
  for await (const k of await aEndpoints.keys()) keys.push(k);
  t.deepEqual(keys, ["w1.e1"]);
  // The agent's own reader (agent/): the stream's info, then a pull consumer
  // over the whole stream ($JS.API.CONSUMER.CREATE.<stream>), its batches
  // ($JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>), its info, its deletion.
  const stream = `KV_${R1}`;
  const jsm = await jetstreamManager(agent);
  t.is((await jsm.streams.info(stream)).state.messages, 1);
  const created = await jsm.consumers.add(stream, { ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All, inactive_threshold: 60_000_000_000, mem_storage: true });
  const consumer = await jetstream(agent).consumers.get(stream, created.name);
  const m = await consumer.next({ expires: 5000 });
  t.is(`${m?.subject}=${m?.string()}`, `$KV.${R1}.w1.e1=${entry}`);
  t.is((await consumer.info()).num_pending, 0);
  t.true(await jsm.consumers.delete(stream, created.name));
  for (const b of agentBuckets("r1")) t.truthy(await (await akvm.open(b)).status(), `agent opens ${b}`);
  t.deepEqual(agentBuckets("r1").filter((b) => !(AGENT_BUCKETS as readonly string[]).includes(b)), [R1]);
  // Its region's tunnels: a watch from the first message (agent/tunnels.ts).
  await buckets.get(T1)!.put("w1.e1.tcp.80", entry);
  const tw = await (await akvm.open(T1)).watch({ resumeFromRevision: 1 });
  for await (const e of tw) {
    t.is(e.key, "w1.e1.tcp.80");
    break;
  }
  tw.stop();
  // The controller's ledgers, the gateways' records, other regions' endpoints and tunnels and the first layout's bucket are closed to it, even for reading.
  t.is((await (await akvm.open(T1)).status()).values, 1);
  for (const b of [...BUCKETS.filter((x) => !(AGENT_BUCKETS as readonly string[]).includes(x)), R2, T2, LEGACY_ENDPOINTS_BUCKET]) {
    const message = await outcome(() => akvm.open(b).then((kv) => kv.status()));
    t.is(PERMISSION.exec(message)?.[1], `$JS.API.STREAM.INFO.KV_${b}`, `agent reads ${b}: ${message}`);
  }
  const otherRegion = await akvm.open(R2);

  // Its own heartbeat: allowed.
  t.is(await outcome(() => aNodes.put("node-a", "alive")), "ok");
  t.is((await nodes.get("node-a"))?.string(), "alive");

  // Membership, other regions and other nodes' keys: permission errors.
  const denied: [string, () => Promise<unknown>, string | RegExp][] = [
    ["put an endpoint", () => aEndpoints.put("w1.e2", entry), `$KV.${R1}.w1.e2`],
    ["overwrite an endpoint", () => aEndpoints.put("w1.e1", "{}"), `$KV.${R1}.w1.e1`],
    ["delete an endpoint", () => aEndpoints.delete("w1.e1"), `$KV.${R1}.w1.e1`],
    ["create an endpoint", () => aEndpoints.create("w1.e3", entry), `$KV.${R1}.w1.e3`],
    ["get from another region", () => otherRegion.get("w2.e2"), `$JS.API.STREAM.MSG.GET.KV_${R2}`],
    ["direct-get from another region", () => agent.request(`$JS.API.DIRECT.GET.KV_${R2}.$KV.${R2}.w2.e2`, "", { timeout: 2000 }), `$JS.API.DIRECT.GET.KV_${R2}.$KV.${R2}.w2.e2`],
    ["watch another region", () => otherRegion.watch(), new RegExp(`^\\$JS\\.API\\.CONSUMER\\.CREATE\\.KV_${R2}\\.oc_\\w+\\.\\$KV\\.${R2}\\.>$`)],
    ["make a pull consumer on another region", () => jsm.consumers.add(`KV_${R2}`, { ack_policy: AckPolicy.None }), `$JS.API.CONSUMER.CREATE.KV_${R2}`],
    ["pull from another region", () => agent.request(`$JS.API.CONSUMER.MSG.NEXT.KV_${R2}.c1`, '{"batch":1}', { timeout: 2000 }), `$JS.API.CONSUMER.MSG.NEXT.KV_${R2}.c1`],
    ["pull from the first layout's bucket", () => agent.request(`$JS.API.CONSUMER.MSG.NEXT.KV_${LEGACY_ENDPOINTS_BUCKET}.c1`, '{"batch":1}', { timeout: 2000 }), `$JS.API.CONSUMER.MSG.NEXT.KV_${LEGACY_ENDPOINTS_BUCKET}.c1`],
    ["write another node's heartbeat", () => aNodes.put("node-b", "spoofed"), "$KV.i6pn_nodes.node-b"],
    ["write a key below its own", () => aNodes.put("node-a.x", "x"), "$KV.i6pn_nodes.node-a.x"],
    ["write a region", () => akvm.open("i6pn_regions").then((kv) => kv.put("r9", "{}")), "$KV.i6pn_regions.r9"],
    ["purge its endpoints bucket", () => agent.request(`$JS.API.STREAM.PURGE.KV_${R1}`, "{}", { timeout: 2000 }), `$JS.API.STREAM.PURGE.KV_${R1}`],
    ["delete its endpoints bucket", () => agent.request(`$JS.API.STREAM.DELETE.KV_${R1}`, "", { timeout: 2000 }), `$JS.API.STREAM.DELETE.KV_${R1}`],
    ["create a bucket", () => akvm.create("i6pn_rogue"), "$JS.API.STREAM.INFO.KV_i6pn_rogue"],
    ["create another region's endpoints bucket", () => akvm.create(endpointsBucket("r3")), `$JS.API.STREAM.INFO.KV_${endpointsBucket("r3")}`],
  ];
  for (const [what, op, subject] of denied) {
    const message = await outcome(op);
    t.regex(message, PERMISSION, `agent could ${what}`);
    if (typeof subject === "string") t.is(PERMISSION.exec(message)?.[1], subject, what);
    else t.regex(PERMISSION.exec(message)?.[1] ?? "", subject, what);
  }

  // Issued for the upgrade (--legacy-endpoints), an agent also reads the first
  // layout's bucket as the agents before 0.2.0 do (a filtered, ordered push
  // consumer), and still writes none of it and reads no other region's bucket.
  const upgrading = await connectAs(t, agentEp, join(dir, "agents/node-u.creds"), "i6pn-agent@node-u", agentInboxPrefix("node-u"));
  const ukvm = new Kvm(upgrading);
  const uLegacy = await ukvm.open(LEGACY_ENDPOINTS_BUCKET);
  t.is((await uLegacy.get("r1.w1.e1"))?.string(), entry);
  const old = await jetstream(upgrading).consumers.getPushConsumer(`KV_${LEGACY_ENDPOINTS_BUCKET}`, {
    filter_subjects: `$KV.${LEGACY_ENDPOINTS_BUCKET}.r1.>`,
    deliver_policy: DeliverPolicy.LastPerSubject,
  });
  const messages = await old.consume();
  for await (const msg of messages) {
    t.is(`${msg.subject}=${msg.string()}`, `$KV.${LEGACY_ENDPOINTS_BUCKET}.r1.w1.e1=${entry}`);
    break;
  }
  messages.stop();
  t.is((await (await ukvm.open(R1)).get("w1.e1"))?.string(), entry);
  t.is(PERMISSION.exec(await outcome(() => uLegacy.put("r1.w1.e9", entry)))?.[1], `$KV.${LEGACY_ENDPOINTS_BUCKET}.r1.w1.e9`);
  t.is(PERMISSION.exec(await outcome(() => ukvm.open(R2).then((kv) => kv.status())))?.[1], `$JS.API.STREAM.INFO.KV_${R2}`);

  // Nothing changed, as the controller sees it; and the controller itself may
  // write what the agent may not (so the denials above are permissions).
  t.is((await endpoints.get("w1.e1"))?.string(), entry);
  t.is(await endpoints.get("w1.e2"), null);
  t.is((await legacy.get("r1.w1.e9")), null);
  t.is((await nodes.get("node-b"))?.string(), "controller wrote node-b");
  t.is(await outcome(() => endpoints.put("w1.e2", entry)), "ok");
  t.is(await outcome(() => nodes.put("node-a.x", "x")), "ok");
  t.true(agent.isClosed() === false, "permission errors do not close the agent's connection");
  await checkGatewayPermissions(t, dir, agentEp, buckets);
}

/** The subject of the next publish the server refused on this connection (it says so asynchronously), or null within `ms`. */
function nextPublishDenied(nc: NatsConnection, ms = 3000): Promise<string | null> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), ms);
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === "error" && s.error instanceof PermissionViolationError && s.error.operation === "publish") {
          clearTimeout(timer);
          resolve(s.error.subject);
          return;
        }
      }
    })();
  });
}

/** "ok" when the server lets the subscription stand (a round trip later), else the subject it refused. */
async function subscribeOutcome(nc: NatsConnection, subject: string): Promise<string> {
  const sub = nc.subscribe(subject);
  const closed = sub.closed.then((err) => (err instanceof PermissionViolationError ? `denied ${err.subject}` : `closed ${String(err)}`));
  await nc.flush();
  const r = await Promise.race([closed, new Promise<string>((res) => setTimeout(() => res("ok"), 1500))]);
  if (r === "ok") sub.unsubscribe();
  return r;
}

/** The messages a subscription receives within `ms`. */
async function received(sub: Subscription, ms: number): Promise<string[]> {
  const out: string[] = [];
  const timer = setTimeout(() => sub.unsubscribe(), ms);
  for await (const m of sub) out.push(`${m.subject} ${m.string()}`);
  clearTimeout(timer);
  return out;
}

/**
 * Drop events: node-a of r1 publishes on i6pn.events.r1.node-a and nowhere
 * else; the controller (on another server of a cluster) receives exactly
 * that, and the I6PN_EVENTS stream, made by i6pnctl's store, keeps it. The
 * agent's credentials receive no event by any way: not by subscribing to
 * the events, to everything, or to the inboxes of other clients (where the
 * controller's stream consumer delivers), nor by reading the stream.
 */
async function checkEventPermissions(t: ExecutionContext, dir: string, controllerEp: Endpoint, agentEp: Endpoint, replicas: number) {
  const ctl = await connectAs(t, controllerEp, join(dir, "controller.creds"), "i6pnctl-observe");
  // The stream, as i6pnctl's store creates it with the buckets.
  await ensureEventsStream(await jetstreamManager(ctl), { replicas });
  const live = ctl.subscribe(eventsFilter({}));
  await ctl.flush();
  const agent = await connectAs(t, agentEp, join(dir, "agents/node-a.creds"), "i6pn-agent@node-a", agentInboxPrefix("node-a"));
  const own = eventsSubject("r1", "node-a");
  const denied = nextPublishDenied(agent, 5000);
  agent.publish(own, '{"v":1,"mine":true}');
  await agent.flush();
  t.is(await denied, null, "publishing its own node's events is allowed");
  for (const other of [eventsSubject("r1", "node-b"), eventsSubject("r2", "node-a"), `${own}.x`, "i6pn.events.r1", "i6pn.other"]) {
    const refused = nextPublishDenied(agent);
    agent.publish(other, '{"v":1,"forged":true}');
    await agent.flush();
    t.is(await refused, other, `the agent published as ${other}`);
  }
  t.deepEqual(await received(live, 1500), [`${own} {"v":1,"mine":true}`], "the controller receives the agent's own event and no forged one");
  // The stream kept it (on a cluster, wherever it lives).
  const jsm = await jetstreamManager(ctl);
  await until("the stream holds the event", async () => {
    const si = await jsm.streams.info(EVENTS_STREAM);
    if (si.state.messages !== 1) throw new Error(`${si.state.messages} messages`);
  });

  // No way in for the agent's credentials.
  for (const subject of [eventsFilter({}), own, eventsFilter({ region: "r1" }), ">", "_INBOX.>", "_INBOX.i6pn-agent.node-b.>", "i6pn.>"]) {
    t.is(await subscribeOutcome(agent, subject), `denied ${subject}`, `the agent subscribed to ${subject}`);
  }
  t.is(await subscribeOutcome(agent, "_INBOX.i6pn-agent.node-a.x"), "ok", "its own inbox is its own");
  const ajsm = await jetstreamManager(agent, { checkAPI: false });
  t.regex(await outcome(() => ajsm.streams.info(EVENTS_STREAM)), PERMISSION);
  t.regex(await outcome(() => ajsm.consumers.add(EVENTS_STREAM, { ack_policy: AckPolicy.None })), PERMISSION);
  t.regex(await outcome(() => agent.request(`$JS.API.DIRECT.GET.${EVENTS_STREAM}`, '{"seq":1}', { timeout: 2000 })), PERMISSION);
  // The controller reads the stream back (observe --last).
  const c = await jetstream(ctl).consumers.get(EVENTS_STREAM, { deliver_policy: DeliverPolicy.All });
  const m = await c.next({ expires: 5000 });
  t.is(`${m?.subject} ${m?.string()}`, `${own} {"v":1,"mine":true}`);
  t.false(agent.isClosed());
}

// ---------------------------------------------------------------- tests

test.serial("agent permissions: node and region names with wildcards or spaces are refused", (t) => {
  for (const bad of ["node-*", ">", "a.>", "a b", "Node-A", "", "-a", "a.", "a..b", "$SYS"]) {
    t.throws(() => assertNodeName(bad), { message: /not a Kubernetes node name/ }, JSON.stringify(bad));
    t.throws(() => agentPermissions(bad, "r1"), { message: /not a Kubernetes node name/ }, JSON.stringify(bad));
  }
  for (const bad of ["r*", ">", "r1.>", "eu.west", "EU", "", "1r", "r 1"]) {
    t.throws(() => assertRegionName(bad), { message: /not an i6pn region name/ }, JSON.stringify(bad));
    t.throws(() => agentPermissions("node-a", bad), { message: /not an i6pn region name/ }, JSON.stringify(bad));
  }
  for (const good of ["node-a", "ip-10-0-0-1.ec2.internal", "n1"]) t.notThrows(() => assertNodeName(good));
  const perms = agentPermissions("node-a", "eu-west");
  // Exactly one KV subject may be published, the node's own heartbeat key.
  t.deepEqual(perms.pub.allow.filter((s) => s.startsWith("$KV.")), ["$KV.i6pn_nodes.node-a"]);
  t.false(perms.pub.allow.some((s) => /\$JS\.API\.STREAM\.(CREATE|UPDATE|DELETE|PURGE|MSG\.DELETE)/.test(s)));
  t.false([...perms.pub.allow, ...perms.sub.allow].some((s) => s === ">" || s.startsWith("$KV.") && s.endsWith(">")));
  // Endpoints: its own region's stream and no other, with the pull consumer's requests; no wildcard in a stream name.
  const streams = new Set(perms.pub.allow.flatMap((s) => /KV_i6pn_endpoints[^.]*/.exec(s) ?? []));
  t.deepEqual([...streams], ["KV_i6pn_endpoints_eu-west"]);
  for (const s of ["$JS.API.STREAM.INFO.KV_i6pn_endpoints_eu-west", "$JS.API.CONSUMER.CREATE.KV_i6pn_endpoints_eu-west", "$JS.API.CONSUMER.MSG.NEXT.KV_i6pn_endpoints_eu-west.*", "$JS.API.CONSUMER.INFO.KV_i6pn_endpoints_eu-west.*", "$JS.API.CONSUMER.DELETE.KV_i6pn_endpoints_eu-west.*"]) {
    t.true(perms.pub.allow.includes(s), s);
  }
  t.false(perms.pub.allow.some((s) => /KV_[^.]*[*>]/.test(s)));
  // For the upgrade, the first layout's bucket too (read only).
  const upgrading = agentPermissions("node-a", "eu-west", { legacyEndpoints: true });
  t.deepEqual(upgrading.pub.allow.filter((s) => !perms.pub.allow.includes(s)).filter((s) => !s.includes("KV_i6pn_endpoints.") && !s.endsWith("KV_i6pn_endpoints")), []);
  t.true(upgrading.pub.allow.includes("$JS.API.CONSUMER.CREATE.KV_i6pn_endpoints.>"));
  t.deepEqual(upgrading.pub.allow.filter((s) => s.startsWith("$KV.")), ["$KV.i6pn_nodes.node-a"]);
  // Events: its own node's subject alone; replies below its own inbox prefix alone.
  t.deepEqual(perms.pub.allow.filter((s) => s.startsWith("i6pn.")), ["i6pn.events.eu-west.node-a"]);
  t.deepEqual(perms.sub.allow, ["_INBOX.i6pn-agent.node-a.>"]);
  // A node name's dots do not put one node's inbox below another's.
  t.deepEqual(agentPermissions("a.b", "eu-west").sub.allow, ["_INBOX.i6pn-agent.a_b.>"]);
  t.deepEqual(agentPermissions("a", "eu-west").sub.allow, ["_INBOX.i6pn-agent.a.>"]);
});

test.serial("gateway permissions: one region's tunnels, its own record; a gateway's address only", (t) => {
  const perms = gatewayPermissions(formatAddress(GW), "eu-west");
  t.deepEqual(perms.pub.allow.filter((s) => s.startsWith("$KV.")), [`$KV.${GATEWAYS_BUCKET}.eu-west.${Buffer.from(GW).toString("hex")}`]);
  t.deepEqual([...new Set(perms.pub.allow.flatMap((s) => /KV_i6pn_\w+[^.]*/.exec(s) ?? []))].sort(), [`KV_${GATEWAYS_BUCKET}`, "KV_i6pn_tunnels_eu-west"]);
  t.false(perms.pub.allow.some((s) => /\$JS\.API\.STREAM\.(CREATE|UPDATE|DELETE|PURGE|MSG\.DELETE)/.test(s)));
  for (const bad of ["fdaa:1:2:3::4", "fdaa::6a7e:1:2:3", "2001:db8::1", "nope", "fdaa::a70:6a7e:*"]) t.throws(() => gatewayPermissions(bad, "eu-west"), { message: /gateway/ }, bad);
  t.throws(() => gatewayPermissions(formatAddress(GW), "eu.>"), { message: /not an i6pn region name/ });
  t.deepEqual(perms.sub.allow, [`_INBOX.i6pn-gateway.${Buffer.from(GW).toString("hex")}.>`]);
});

test.serial("an agent's JWT fits the server's default 4 KB CONNECT line; the upgrade's fits the deploy's 8 KB", (t) => {
  const dir = tempDir(t);
  init(dir);
  const longest = `${"n".repeat(30)}.${"m".repeat(32)}`; // 63 characters, the longest node name
  const region = `r${"e".repeat(30)}`; // 31 characters, the longest region name
  // Issued for the upgrade, 9 more subjects (the first layout's bucket): a
  // smaller margin, for a while; the single-server test connects with it.
  // The longest names weigh twice more since the events subject and the
  // inbox prefix, and the region's tunnels (issue 15) took 5 subjects, about
  // 330 bytes at the longest names.
  // With the upgrade's 9 more subjects the CONNECT line passes 4 KB: deploy/nats/nats-server.conf sets max_control_line 8192.
  for (const [legacyEndpoints, bound] of [[false, 3450], [true, 4400]] as const) {
    const jwt = /-----\n(\S+)\n------END NATS USER JWT/.exec(readFileSync(issueAgent(dir, longest, region, { legacyEndpoints }), "utf8"))?.[1] ?? "";
    t.true(jwt.length > 500, "no JWT found");
    t.true(jwt.length < bound, `agent JWT is ${jwt.length} bytes; the CONNECT line (JWT, signature, options) must stay under max_control_line (4096 by default, 8192 in deploy/nats)`);
    t.log(`longest names${legacyEndpoints ? ', for the upgrade' : ''}: ${jwt.length} bytes`);
  }
});

test.serial("init refuses to replace existing keys and writes secrets mode 0600", (t) => {
  const dir = tempDir(t);
  init(dir);
  t.throws(() => init(dir), { message: /refusing to replace/ });
  const creds = issueAgent(dir, "node-a", "r1");
  for (const f of ["operator.nk", "sys.nk", "i6pn.nk", "agents/node-a.creds"]) t.is(statSync(join(dir, f)).mode & 0o777, 0o600, f);
  t.regex(readFileSync(creds, "utf8"), /-----BEGIN NATS USER JWT-----\n[\w-]+\.[\w-]+\.[\w-]+\n------END NATS USER JWT------[\s\S]*-----BEGIN USER NKEY SEED-----\nSU[A-Z2-7]+\n/);
  const auth = (...args: string[]) => spawnSync(process.execPath, ["--import=tsx", join(root, "deploy/nats/i6pn-nats-auth.ts"), "agent", dir, ...args], { encoding: "utf8" });
  const badNode = auth("--region", "r1", "bad>name");
  t.is(badNode.status, 1);
  t.regex(badNode.stderr, /not a Kubernetes node name/);
  const noRegion = auth("node-b");
  t.is(noRegion.status, 1);
  t.regex(noRegion.stderr, /^i6pn-nats-auth: agent: --region REGION is required: an agent may read its own region's endpoints bucket only/);
  const badRegion = auth("node-b", "--region", "r.>");
  t.is(badRegion.status, 1);
  t.regex(badRegion.stderr, /not an i6pn region name/);
  const ok = auth("node-b", "node-c", "--region", "r2", "--legacy-endpoints");
  t.is(ok.status, 0, ok.stderr);
  t.is(ok.stdout, ["node-b", "node-c"].map((n) => `wrote ${join(dir, "agents", `${n}.creds`)} (region r2, and i6pn_endpoints until the upgrade is finished)\n`).join(""));
  const claims = JSON.parse(Buffer.from(/-----\n[\w-]+\.([\w-]+)\.[\w-]+\n/.exec(readFileSync(join(dir, "agents/node-b.creds"), "utf8"))?.[1] ?? "", "base64url").toString());
  t.deepEqual(claims.nats.pub.allow, agentPermissions("node-b", "r2", { legacyEndpoints: true }).pub.allow);
});

test.serial("single server: an agent reads membership, writes its heartbeat, and cannot write membership or other nodes' keys", async (t) => {
  const dir = tempDir(t);
  init(dir);
  issueAgents(dir);
  issueController(dir);
  const port = await freePort();
  // max_control_line as deploy/nats/nats-server.conf sets it (the largest credentials, issued for the upgrade, need more than the default 4 KB).
  writeFileSync(join(dir, "server.conf"), `listen: 127.0.0.1:${port}\nmax_control_line: 8192\njetstream { store_dir: "${join(dir, "js")}" }\ninclude ./auth.conf\n`);
  const proc = startServer(t, join(dir, "server.conf"), dir, join(dir, "server.log"));
  const ep = { servers: `nats://127.0.0.1:${port}` };
  await until("nats-server up", () => connectAs(t, ep, join(dir, "controller.creds"), "probe").then((nc) => nc.close()), 90_000);
  await checkPermissions(t, dir, ep, ep, 1);
  await checkEventPermissions(t, dir, ep, ep, 1);
  // The largest agent JWT there is (longest node and region names, issued for the upgrade) passes the configured max_control_line.
  const largest = issueAgent(dir, `${"n".repeat(30)}.${"m".repeat(32)}`, `r${"e".repeat(30)}`, { legacyEndpoints: true });
  const big = await connectAs(t, ep, largest, "largest");
  t.is(await outcome(() => big.flush()), "ok");

  // No creds, or creds of another operator: not even connected.
  t.regex(await outcome(() => connect({ servers: ep.servers, maxReconnectAttempts: 0 })), /Authorization Violation/i);
  const other = tempDir(t);
  init(other);
  const rogue = issueAgent(other, "node-a", "r1");
  t.regex(await outcome(() => connectAs(t, ep, rogue, "rogue")), /Authorization Violation/i);
  // A creds file whose JWT was altered (permissions widened) fails its signature.
  const real = readFileSync(join(dir, "agents/node-a.creds"), "utf8");
  const jwt = /-----\n([\w-]+\.[\w-]+\.[\w-]+)\n/.exec(real)?.[1] ?? "";
  const [h, p, s] = jwt.split(".");
  const claims = JSON.parse(Buffer.from(p ?? "", "base64url").toString());
  claims.nats.pub.allow.push("$KV.>");
  const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.${s}`;
  const seed = /SEED-----\n(SU[A-Z2-7]+)\n/.exec(real)?.[1] ?? "";
  t.truthy(nkeys.fromSeed(new TextEncoder().encode(seed)).getPublicKey());
  writeFileSync(join(dir, "forged.creds"), credsFile(forged, new TextEncoder().encode(seed)));
  t.regex(await outcome(() => connectAs(t, ep, join(dir, "forged.creds"), "forged")), /Authorization Violation/i);
  t.is(proc.exitCode, null, "nats-server still running");
  t.regex(readFileSync(join(dir, "server.log"), "utf8"), /Publish Violation/);
});

test.serial("three-server production config (TLS, JetStream R3): the same permissions hold across the cluster", async (t) => {
  const dir = tempDir(t);
  init(dir);
  issueAgents(dir);
  issueController(dir);
  // A CA and one server certificate for 127.0.0.1, used by clients and routes.
  if (spawnSync("sh", ["-c", "command -v openssl"]).status !== 0) return t.fail("openssl is needed to make the test certificates: apt-get install openssl");
  const ssl = (args: string[]) => {
    const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
    if (r.status !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
  };
  ssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=i6pn-test-ca"]);
  ssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=nats"]);
  writeFileSync(join(dir, "ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n");
  ssl(["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf"]);

  const ports = await Promise.all(Array.from({ length: 9 }, freePort));
  const client = ports.slice(0, 3), route = ports.slice(3, 6), http = ports.slice(6, 9);
  const template = readFileSync(prodConf, "utf8");
  const replace = (text: string, from: string | RegExp, to: string) => {
    const out = text.replace(from, to);
    if (out === text) throw new Error(`deploy/nats/nats-server.conf changed: ${from} not found; update this test`);
    return out;
  };
  for (let i = 0; i < 3; i++) {
    let conf = template;
    conf = replace(conf, /^port: 4222$/m, `port: ${client[i]}\nhost: 127.0.0.1`);
    conf = replace(conf, /^http_port: 8222$/m, `http: "127.0.0.1:${http[i]}"`);
    conf = replace(conf, /^  port: 6222$/m, `  port: ${route[i]}\n  host: 127.0.0.1`);
    conf = replace(conf, /\/etc\/nats\/tls\//g, `${dir}/`);
    conf = replace(conf, '"/data/jetstream"', `"${dir}/js-${i}"`);
    for (let j = 0; j < 3; j++) conf = replace(conf, `nats-${j}.nats.i6pn-system.svc.cluster.local:6222`, `127.0.0.1:${route[j]}`);
    writeFileSync(join(dir, `nats-${i}.conf`), conf);
    const check = spawnSync(natsServerBin(), ["-c", `nats-${i}.conf`, "-t"], { cwd: dir, encoding: "utf8", env: { ...process.env, NATS_SERVER_NAME: `nats-${i}` } });
    t.is(check.status, 0, `${check.stdout}${check.stderr}`);
  }
  const procs = [0, 1, 2].map((i) => startServer(t, join(dir, `nats-${i}.conf`), dir, join(dir, `nats-${i}.log`), { NATS_SERVER_NAME: `nats-${i}` }));
  const tls = { caFile: join(dir, "ca.crt") };
  // The controller talks to server 0, the agent to server 2.
  const ctlEp = { servers: `tls://127.0.0.1:${client[0]}`, tls };
  const agentEp = { servers: `tls://127.0.0.1:${client[2]}`, tls };
  await until("cluster up", () => connectAs(t, agentEp, join(dir, "agents/node-a.creds"), "probe").then((nc) => nc.close()), 90_000);
  await checkPermissions(t, dir, ctlEp, agentEp, 3);
  await checkEventPermissions(t, dir, ctlEp, agentEp, 3);

  // The buckets really are replicated on three servers, and TLS is required.
  const ctl = await connectAs(t, ctlEp, join(dir, "controller.creds"), "i6pnctl-check");
  const status = await (await new Kvm(ctl).open(R1)).status();
  t.is(status.replicas, 3);
  const plain = { servers: `nats://127.0.0.1:${client[1]}`, authenticator: credsAuthenticator(readFileSync(join(dir, "controller.creds"))), maxReconnectAttempts: 0, timeout: 3000 };
  t.regex(await serverInfo(client[1] ?? 0), /"tls_required":true/, "the server requires TLS of every client");
  t.regex(await outcome(() => connect(plain)), /certificate/i, "a client that does not trust the CA is refused");
  // How the pods reach these servers: tls:// URLs, the CA through
  // NODE_EXTRA_CA_CERTS (daemonset.yaml, controller-job.yaml), the real i6pnctl.
  const i6pnctl = (extra: Record<string, string>) =>
    spawnSync(process.execPath, ["--import=tsx", join(root, "controller/cli.ts"), "region", "list", "--json"], {
      cwd: root,
      encoding: "utf8",
      timeout: 120_000,
      env: { ...process.env, I6PN_NATS_URL: client.map((p) => `tls://127.0.0.1:${p}`).join(","), I6PN_NATS_CREDS: join(dir, "controller.creds"), ...extra },
    });
  const trusted = i6pnctl({ NODE_EXTRA_CA_CERTS: join(dir, "ca.crt") });
  t.is(trusted.status, 0, trusted.stderr);
  t.regex(trusted.stdout, /"regions": *\[/);
  const untrusted = i6pnctl({});
  t.not(untrusted.status, 0);
  t.regex(untrusted.stderr, /certificate/i);
  for (const p of procs) t.is(p.exitCode, null, "nats-server still running");
});

test.serial("the provisioning Job's script, with the real i6pnctl and the controller's creds, provisions once however often it runs", async (t) => {
  const dir = tempDir(t);
  init(dir);
  issueAgent(dir, "node-a", "eu-west");
  issueController(dir);
  const port = await freePort();
  writeFileSync(join(dir, "server.conf"), `listen: 127.0.0.1:${port}\njetstream { store_dir: "${join(dir, "js")}" }\ninclude ./auth.conf\n`);
  startServer(t, join(dir, "server.conf"), dir, join(dir, "server.log"));
  const ep = { servers: `nats://127.0.0.1:${port}` };
  await until("nats-server up", () => connectAs(t, ep, join(dir, "controller.creds"), "probe").then((nc) => nc.close()), 90_000);

  // i6pnctl from source, as the image's /usr/local/bin/i6pnctl runs dist/.
  writeFileSync(join(dir, "i6pnctl"), `#!/bin/sh\nexec "${process.execPath}" --import=tsx "${join(root, "controller/cli.ts")}" "$@"\n`, { mode: 0o755 });
  const job = parseAllDocuments(readFileSync(join(root, "deploy/kubernetes/controller-job.yaml"), "utf8")).map((d) => d.toJS());
  const script = job.find((o) => o.kind === "ConfigMap").data["provision.sh"] as string;
  const container = job.find((o) => o.kind === "Job").spec.template.spec.containers[0];
  const jobEnv = Object.fromEntries((container.env as { name: string; value?: string }[]).filter((e) => e.value !== undefined).map((e) => [e.name, e.value as string]));
  t.is(jobEnv["I6PN_KV_REPLICAS"], "3");
  const provision = (creds: string) =>
    spawnSync("sh", ["-c", script], {
      cwd: root,
      encoding: "utf8",
      timeout: 240_000,
      env: { ...process.env, PATH: `${dir}:${process.env["PATH"]}`, I6PN_NATS_URL: ep.servers, I6PN_NATS_CREDS: creds, I6PN_KV_REPLICAS: "1" },
    });

  // An agent's creds cannot provision: the first write is refused.
  const refused = provision(join(dir, "agents/node-a.creds"));
  t.not(refused.status, 0);
  t.regex(`${refused.stdout}${refused.stderr}`, /ermission/);

  const first = provision(join(dir, "controller.creds"));
  t.is(first.status, 0, `${first.stdout}${first.stderr}`);
  for (const name of ["eu-west", "eu-central", "acme"]) t.regex(first.stdout, new RegExp(`\\b${name}\\b`));
  t.regex(first.stdout, /^nothing to migrate: there is no i6pn_endpoints bucket/m);
  const second = provision(join(dir, "controller.creds"));
  t.is(second.status, 0, `${second.stdout}${second.stderr}`);
  t.is(second.stdout, first.stdout.slice(first.stdout.length - second.stdout.length), "the second run adds nothing, and lists the same");
  const ctl = await connectAs(t, ep, join(dir, "controller.creds"), "check");
  const regions: string[] = [];
  for await (const k of await (await new Kvm(ctl).open("i6pn_regions")).keys("name.>")) regions.push(k);
  t.deepEqual(regions.sort(), ["name.eu-central", "name.eu-west"]);
  // Each region's endpoints bucket, made by `region add`, one value per key.
  for (const region of ["eu-west", "eu-central"]) t.is((await new Kvm(ctl).open(endpointsBucket(region)).then((kv) => kv.status())).history, ENDPOINTS_HISTORY);
});
