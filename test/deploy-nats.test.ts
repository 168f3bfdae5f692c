// The NATS identities of deploy/nats/ against a real nats-server: an agent's
// credentials read the membership buckets and write only their own node's
// heartbeat key; they cannot write membership or another node's key. Runs
// once on a single server and once on the three-server production
// configuration (deploy/nats/nats-server.conf, TLS on clients and routes).
import test, { type ExecutionContext } from "ava";
import { parseAllDocuments } from "yaml";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, closeSync, statSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { connect, credsAuthenticator, nkeys, type NatsConnection } from "@nats-io/transport-node";
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { AGENT_BUCKETS, agentPermissions, assertNodeName, BUCKETS, credsFile, init, issueAgent, issueController } from "../deploy/nats/i6pn-nats-auth.js";
import { natsServerBin } from "./helpers/nats-server-bin.js";

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
  const fd = openSync(log, "a");
  const proc = spawn(natsServerBin(), ["-c", conf], { cwd, env: { ...process.env, ...env }, stdio: ["ignore", fd, fd] });
  closeSync(fd);
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      const exited = new Promise((r) => proc.once("exit", r));
      proc.kill("SIGTERM");
      const timer = setTimeout(() => proc.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
  });
  return proc;
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

async function connectAs(t: ExecutionContext, ep: Endpoint, creds: string, name: string): Promise<NatsConnection> {
  const nc = await connect({
    servers: ep.servers,
    name,
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

/**
 * The controller creates the buckets and writes an endpoint; node-a's agent
 * reads it (get, watch, keys) and heartbeats; everything else it tries fails
 * with a permission error and changes nothing.
 */
async function checkPermissions(t: ExecutionContext, dir: string, controllerEp: Endpoint, agentEp: Endpoint, replicas: number) {
  const ctl = await connectAs(t, controllerEp, join(dir, "controller.creds"), "i6pnctl");
  const kvm = new Kvm(ctl);
  const buckets = new Map<string, KV>();
  for (const b of BUCKETS) buckets.set(b, await until(`create ${b}`, () => kvm.create(b, { history: 1, replicas }), 60_000));
  const endpoints = buckets.get("i6pn_endpoints")!;
  const nodes = buckets.get("i6pn_nodes")!;
  const entry = JSON.stringify({ v: 1, address: "fdaa:0:1:1::1" });
  await endpoints.put("r1.w1.e1", entry);
  await nodes.put("node-b", "controller wrote node-b");

  const agent = await connectAs(t, agentEp, join(dir, "agents/node-a.creds"), "i6pn-agent@node-a");
  const akvm = new Kvm(agent);
  const aEndpoints = await akvm.open("i6pn_endpoints");
  const aNodes = await akvm.open("i6pn_nodes");

  // Reads: get, a watch with the initial values, keys.
  t.is((await aEndpoints.get("r1.w1.e1"))?.string(), entry);
  const watch = await aEndpoints.watch({ key: "r1.>" });
  let watched: string | undefined;
  for await (const e of watch) {
    watched = `${e.key}=${e.string()}`;
    break;
  }
  watch.stop();
  t.is(watched, `r1.w1.e1=${entry}`);
  const keys: string[] = [];
  for await (const k of await aEndpoints.keys("r1.>")) keys.push(k);
  t.deepEqual(keys, ["r1.w1.e1"]);
  // The agent's own reader (agent/watch.ts): an ordered push consumer on the
  // bucket's stream, filtered to its region, last value per key.
  const consumer = await jetstream(agent).consumers.getPushConsumer("KV_i6pn_endpoints", {
    filter_subjects: "$KV.i6pn_endpoints.r1.>",
    deliver_policy: DeliverPolicy.LastPerSubject,
  });
  t.is((await consumer.info(true)).num_pending, 1);
  const messages = await consumer.consume();
  for await (const m of messages) {
    t.is(`${m.subject}=${m.string()}`, `$KV.i6pn_endpoints.r1.w1.e1=${entry}`);
    break;
  }
  messages.stop();
  for (const b of AGENT_BUCKETS) t.truthy(await (await akvm.open(b)).status(), `agent opens ${b}`);
  // The controller's ledgers are closed to agents, even for reading.
  for (const b of BUCKETS.filter((x) => !(AGENT_BUCKETS as readonly string[]).includes(x))) {
    const message = await outcome(() => akvm.open(b).then((kv) => kv.status()));
    t.is(PERMISSION.exec(message)?.[1], `$JS.API.STREAM.INFO.KV_${b}`, `agent reads ${b}: ${message}`);
  }

  // Its own heartbeat: allowed.
  t.is(await outcome(() => aNodes.put("node-a", "alive")), "ok");
  t.is((await nodes.get("node-a"))?.string(), "alive");

  // Membership and other nodes' keys: permission errors.
  const denied: [string, () => Promise<unknown>, string][] = [
    ["put an endpoint", () => aEndpoints.put("r1.w1.e2", entry), "$KV.i6pn_endpoints.r1.w1.e2"],
    ["overwrite an endpoint", () => aEndpoints.put("r1.w1.e1", "{}"), "$KV.i6pn_endpoints.r1.w1.e1"],
    ["delete an endpoint", () => aEndpoints.delete("r1.w1.e1"), "$KV.i6pn_endpoints.r1.w1.e1"],
    ["create an endpoint", () => aEndpoints.create("r1.w1.e3", entry), "$KV.i6pn_endpoints.r1.w1.e3"],
    ["write another node's heartbeat", () => aNodes.put("node-b", "spoofed"), "$KV.i6pn_nodes.node-b"],
    ["write a key below its own", () => aNodes.put("node-a.x", "x"), "$KV.i6pn_nodes.node-a.x"],
    ["write a region", () => akvm.open("i6pn_regions").then((kv) => kv.put("r9", "{}")), "$KV.i6pn_regions.r9"],
    ["purge the endpoints bucket", () => agent.request("$JS.API.STREAM.PURGE.KV_i6pn_endpoints", "{}", { timeout: 2000 }), "$JS.API.STREAM.PURGE.KV_i6pn_endpoints"],
    ["delete the endpoints bucket", () => agent.request("$JS.API.STREAM.DELETE.KV_i6pn_endpoints", "", { timeout: 2000 }), "$JS.API.STREAM.DELETE.KV_i6pn_endpoints"],
    ["create a bucket", () => akvm.create("i6pn_rogue"), "$JS.API.STREAM.INFO.KV_i6pn_rogue"],
  ];
  for (const [what, op, subject] of denied) {
    const message = await outcome(op);
    t.regex(message, PERMISSION, `agent could ${what}`);
    t.is(PERMISSION.exec(message)?.[1], subject, what);
  }

  // Nothing changed, as the controller sees it; and the controller itself may
  // write what the agent may not (so the denials above are permissions).
  t.is((await endpoints.get("r1.w1.e1"))?.string(), entry);
  t.is(await endpoints.get("r1.w1.e2"), null);
  t.is((await nodes.get("node-b"))?.string(), "controller wrote node-b");
  t.is(await outcome(() => endpoints.put("r1.w1.e2", entry)), "ok");
  t.is(await outcome(() => nodes.put("node-a.x", "x")), "ok");
  t.true(agent.isClosed() === false, "permission errors do not close the agent's connection");
}

// ---------------------------------------------------------------- tests

test.serial("agent permissions: node names with wildcards or spaces are refused", (t) => {
  for (const bad of ["node-*", ">", "a.>", "a b", "Node-A", "", "-a", "a.", "a..b", "$SYS"]) {
    t.throws(() => assertNodeName(bad), { message: /not a Kubernetes node name/ }, JSON.stringify(bad));
  }
  for (const good of ["node-a", "ip-10-0-0-1.ec2.internal", "n1"]) t.notThrows(() => assertNodeName(good));
  const perms = agentPermissions("node-a");
  // Exactly one KV subject may be published, the node's own heartbeat key.
  t.deepEqual(perms.pub.allow.filter((s) => s.startsWith("$KV.")), ["$KV.i6pn_nodes.node-a"]);
  t.false(perms.pub.allow.some((s) => /\$JS\.API\.STREAM\.(CREATE|UPDATE|DELETE|PURGE|MSG\.DELETE)/.test(s)));
  t.false([...perms.pub.allow, ...perms.sub.allow].some((s) => s === ">" || s.startsWith("$KV.") && s.endsWith(">")));
});

test.serial("an agent's JWT fits the server's default 4 KB CONNECT line with room to spare", (t) => {
  const dir = tempDir(t);
  init(dir);
  const longest = `${"n".repeat(30)}.${"m".repeat(32)}`; // 63 characters, the longest node name
  const jwt = /-----\n(\S+)\n------END NATS USER JWT/.exec(readFileSync(issueAgent(dir, longest), "utf8"))?.[1] ?? "";
  t.true(jwt.length > 500, "no JWT found");
  t.true(jwt.length < 3000, `agent JWT is ${jwt.length} bytes; the CONNECT line (JWT, signature, options) must stay under max_control_line 4096`);
});

test.serial("init refuses to replace existing keys and writes secrets mode 0600", (t) => {
  const dir = tempDir(t);
  init(dir);
  t.throws(() => init(dir), { message: /refusing to replace/ });
  const creds = issueAgent(dir, "node-a");
  for (const f of ["operator.nk", "sys.nk", "i6pn.nk", "agents/node-a.creds"]) t.is(statSync(join(dir, f)).mode & 0o777, 0o600, f);
  t.regex(readFileSync(creds, "utf8"), /-----BEGIN NATS USER JWT-----\n[\w-]+\.[\w-]+\.[\w-]+\n------END NATS USER JWT------[\s\S]*-----BEGIN USER NKEY SEED-----\nSU[A-Z2-7]+\n/);
  const cli = spawnSync(process.execPath, ["--import=tsx", join(root, "deploy/nats/i6pn-nats-auth.ts"), "agent", dir, "bad>name"], { encoding: "utf8" });
  t.is(cli.status, 1);
  t.regex(cli.stderr, /not a Kubernetes node name/);
});

test.serial("single server: an agent reads membership, writes its heartbeat, and cannot write membership or other nodes' keys", async (t) => {
  const dir = tempDir(t);
  init(dir);
  issueAgent(dir, "node-a");
  issueController(dir);
  const port = await freePort();
  writeFileSync(join(dir, "server.conf"), `listen: 127.0.0.1:${port}\njetstream { store_dir: "${join(dir, "js")}" }\ninclude ./auth.conf\n`);
  const proc = startServer(t, join(dir, "server.conf"), dir, join(dir, "server.log"));
  const ep = { servers: `nats://127.0.0.1:${port}` };
  await until("nats-server up", () => connectAs(t, ep, join(dir, "controller.creds"), "probe").then((nc) => nc.close()), 90_000);
  await checkPermissions(t, dir, ep, ep, 1);

  // No creds, or creds of another operator: not even connected.
  t.regex(await outcome(() => connect({ servers: ep.servers, maxReconnectAttempts: 0 })), /Authorization Violation/i);
  const other = tempDir(t);
  init(other);
  const rogue = issueAgent(other, "node-a");
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
  issueAgent(dir, "node-a");
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

  // The buckets really are replicated on three servers, and TLS is required.
  const ctl = await connectAs(t, ctlEp, join(dir, "controller.creds"), "i6pnctl-check");
  const status = await (await new Kvm(ctl).open("i6pn_endpoints")).status();
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
  issueAgent(dir, "node-a");
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
  const second = provision(join(dir, "controller.creds"));
  t.is(second.status, 0, `${second.stdout}${second.stderr}`);
  t.is(second.stdout, first.stdout.slice(first.stdout.length - second.stdout.length), "the second run adds nothing, and lists the same");
  const ctl = await connectAs(t, ep, join(dir, "controller.creds"), "check");
  const regions: string[] = [];
  for await (const k of await (await new Kvm(ctl).open("i6pn_regions")).keys("name.>")) regions.push(k);
  t.deepEqual(regions.sort(), ["name.eu-central", "name.eu-west"]);
});
