// The Kubernetes manifests of deploy/kubernetes/ (the tunnel gateway's in gateway/ too), checked offline: every YAML
// parses, validates against the Kubernetes schemas (kubernetes-models), has no
// unknown field (type-checked against kubernetes-models' interfaces, which
// reject excess properties), and carries the settings the agent depends on.
// The two scripts the pod runs (the region init step and the agent's
// entrypoint) run here against a fake API server and a stub `node`.
import test from "ava";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage } from "node:http";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { parse, parseAllDocuments } from "yaml";
import { isGatewayAddress, parseAddress } from "../lib/address.js";
import { isValidIfname, isValidName } from "../lib/schema.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const k8sDir = join(root, "deploy/kubernetes");
const version = (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }).version;
const IMAGE = `registry.example.com/i6pn:${version}`;

// ---------------------------------------------------------------- loading

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Obj = Record<string, any>;
interface Manifest { file: string; index: number; obj: Obj }

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return yamlFiles(path);
    return /\.ya?ml$/.test(name) ? [path] : [];
  });
}

function loadManifests(): Manifest[] {
  return yamlFiles(k8sDir).flatMap((path) => {
    const docs = parseAllDocuments(readFileSync(path, "utf8"), { uniqueKeys: true, prettyErrors: true });
    if (!Array.isArray(docs)) throw new Error(`${path}: not a YAML stream`);
    return docs.map((doc, index) => {
      if (doc.errors.length > 0) throw new Error(`${relative(root, path)} document ${index}: ${doc.errors.map((e) => e.message).join("; ")}`);
      return { file: relative(root, path), index, obj: doc.toJS() as Obj };
    });
  });
}

const manifests = loadManifests();
const objects = manifests.filter((m) => m.obj["kind"] !== "Kustomization");
const find = (kind: string, name: string): Obj => {
  const m = objects.find((x) => x.obj["kind"] === kind && x.obj["metadata"]?.["name"] === name);
  if (!m) throw new Error(`no ${kind} ${name} in deploy/kubernetes`);
  return m.obj;
};

/** kubernetes-models module of each apiVersion. */
const MODULES: Record<string, string> = {
  v1: "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "batch/v1": "kubernetes-models/batch/v1",
  "rbac.authorization.k8s.io/v1": "kubernetes-models/rbac.authorization.k8s.io/v1",
};
const CLUSTER_SCOPED = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding"]);

async function validateModel(obj: Obj): Promise<void> {
  const mod = MODULES[obj["apiVersion"] as string];
  if (!mod) throw new Error(`no schema for apiVersion ${obj["apiVersion"]}`);
  const models = (await import(mod)) as Record<string, new (o: Obj) => { validate(): void }>;
  const Model = models[obj["kind"] as string];
  if (!Model) throw new Error(`no schema for ${obj["apiVersion"]} ${obj["kind"]}`);
  new Model(obj).validate();
}

/**
 * Unknown fields, wrong types: each object becomes a TypeScript object literal
 * typed by kubernetes-models' interface (I<Kind>), and the compiler's excess
 * property check reports any field the Kubernetes API does not define (the
 * API server would drop it silently, or reject it with strict validation).
 */
function typeCheck(objs: Obj[]): string[] {
  const file = join(root, `__i6pn_manifest_check_${process.pid}__.mts`);
  const byModule = new Map<string, Set<string>>();
  const decls = objs.map((obj, i) => {
    const mod = MODULES[obj["apiVersion"] as string] ?? "unknown-module";
    byModule.set(mod, (byModule.get(mod) ?? new Set()).add(`I${obj["kind"]}`));
    return `export const m${i}: ${mod.replace(/\W/g, "_")}.I${obj["kind"]} = ${JSON.stringify(obj, null, 2)};`;
  });
  const imports = [...byModule.keys()].map((mod) => `import type * as ${mod.replace(/\W/g, "_")} from "${mod}";`);
  const text = [...imports, ...decls, ""].join("\n");
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    types: [],
    skipLibCheck: true,
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  const fileExists = host.fileExists.bind(host);
  host.getSourceFile = (f, lang, ...rest) => (f === file ? ts.createSourceFile(f, text, lang) : getSourceFile(f, lang, ...rest));
  host.fileExists = (f) => f === file || fileExists(f);
  const program = ts.createProgram([file], options, host);
  const lines = text.split("\n");
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const line = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start).line : 0;
    const decl = lines.slice(0, line + 1).reverse().find((l) => l.startsWith("export const m")) ?? "";
    const obj = objs[Number(/^export const m(\d+)/.exec(decl)?.[1] ?? -1)];
    return `${obj?.["kind"]}/${obj?.["metadata"]?.["name"]}: ${ts.flattenDiagnosticMessageText(d.messageText, " ")} (near: ${lines[line]?.trim()})`;
  });
}

// ---------------------------------------------------------------- settings

const containers = (pod: Obj): Obj[] => [...(pod["initContainers"] ?? []), ...(pod["containers"] ?? [])];
const envOf = (c: Obj, name: string): Obj | undefined => (c["env"] as Obj[] | undefined)?.find((e) => e["name"] === name);

/** What is wrong with the agent's DaemonSet; empty when nothing is. */
function daemonSetProblems(ds: Obj, configMap: Obj): string[] {
  const p: string[] = [];
  const check = (ok: unknown, problem: string) => {
    if (!ok) p.push(problem);
  };
  const spec = ds["spec"] ?? {};
  const pod = spec["template"]?.["spec"] ?? {};
  const agent = (pod["containers"] as Obj[] | undefined)?.find((c) => c["name"] === "agent");
  const inits = (pod["initContainers"] as Obj[] | undefined) ?? [];
  const mountInit = inits.find((c) => c["name"] === "mount-bpffs");
  const regionInit = inits.find((c) => c["name"] === "node-region");
  if (!agent) return ["no container named agent"];

  // Scheduling and updates.
  for (const [k, v] of Object.entries(spec["selector"]?.["matchLabels"] ?? {})) check(spec["template"]?.["metadata"]?.["labels"]?.[k] === v, `selector ${k}=${v} does not match the pod labels`);
  check(pod["hostNetwork"] === true, "hostNetwork must be true (XDP on the uplink, TC on host-side veths, routes)");
  check(pod["dnsPolicy"] === "ClusterFirstWithHostNet", "dnsPolicy must be ClusterFirstWithHostNet with hostNetwork (to resolve the NATS service)");
  check((pod["tolerations"] as Obj[] | undefined)?.some((t) => t["operator"] === "Exists" && !t["key"] && !t["effect"]), "tolerations must include {operator: Exists} to run on every node");
  check(pod["priorityClassName"] === "system-node-critical", "priorityClassName must be system-node-critical");
  const ru = spec["updateStrategy"];
  check(ru?.["type"] === "RollingUpdate" && ru?.["rollingUpdate"]?.["maxUnavailable"] === 1, "updateStrategy must be RollingUpdate with maxUnavailable 1");
  check(ru?.["rollingUpdate"]?.["maxSurge"] === 0, "maxSurge must be 0 (two agents on a node would share pins and the port)");
  check(pod["serviceAccountName"] === "i6pn-agent", "serviceAccountName must be i6pn-agent");

  // Privileges.
  const sc = agent["securityContext"] ?? {};
  check(JSON.stringify([...(sc["capabilities"]?.["add"] ?? [])].sort()) === JSON.stringify(["BPF", "NET_ADMIN", "NET_BIND_SERVICE", "PERFMON"]), "agent capabilities must be exactly BPF, NET_ADMIN, PERFMON, NET_BIND_SERVICE (the resolver's port 53)");
  check(JSON.stringify(sc["capabilities"]?.["drop"]) === JSON.stringify(["ALL"]), "agent must drop ALL other capabilities");
  check(sc["privileged"] !== true, "agent must not be privileged");
  check(sc["allowPrivilegeEscalation"] === false, "agent: allowPrivilegeEscalation false");
  check(sc["readOnlyRootFilesystem"] === true, "agent: readOnlyRootFilesystem true");
  for (const c of containers(pod)) {
    check(!(c["securityContext"]?.["capabilities"]?.["add"] ?? []).includes("SYS_ADMIN"), `${c["name"]} must not add SYS_ADMIN`);
    if (c !== mountInit) check(c["securityContext"]?.["privileged"] !== true, `${c["name"]} must not be privileged (only mount-bpffs is)`);
    check(c["image"] === IMAGE, `${c["name"]} image must be ${IMAGE}, not ${c["image"]}`);
    check(c["resources"]?.["requests"]?.["memory"] && c["resources"]?.["limits"]?.["memory"], `${c["name"]} needs memory requests and limits`);
  }

  // bpffs: host path, mounted by the init container when missing, shared with the agent.
  const bpffsVol = (pod["volumes"] as Obj[] | undefined)?.find((v) => v["hostPath"]?.["path"] === "/sys/fs/bpf");
  check(bpffsVol, "a hostPath volume of /sys/fs/bpf is needed (pins must outlive the pod)");
  const mountOf = (c: Obj | undefined) => (c?.["volumeMounts"] as Obj[] | undefined)?.find((m) => m["name"] === bpffsVol?.["name"]);
  check(mountOf(agent)?.["mountPath"] === "/sys/fs/bpf" && mountOf(agent)?.["mountPropagation"] === "HostToContainer", "agent must mount /sys/fs/bpf with HostToContainer propagation");
  check(inits[0] === mountInit, "mount-bpffs must be the first init container");
  check(mountInit?.["securityContext"]?.["privileged"] === true && mountOf(mountInit)?.["mountPropagation"] === "Bidirectional", "mount-bpffs must be privileged with Bidirectional propagation (the mount must reach the host)");
  const script = (mountInit?.["command"] as string[] | undefined)?.join(" ") ?? "";
  check(/mount -t bpf bpf \/sys\/fs\/bpf/.test(script) && /bpf_fs/.test(script), "mount-bpffs must mount bpffs only when /sys/fs/bpf is not bpf_fs already");

  // Identity: node from the downward API, region from the node label via the init step.
  for (const c of [agent, regionInit]) {
    check(envOf(c ?? {}, "I6PN_NODE")?.["valueFrom"]?.["fieldRef"]?.["fieldPath"] === "spec.nodeName", `${c?.["name"] ?? "node-region"}: I6PN_NODE must come from spec.nodeName`);
  }
  const regionFile = (regionInit?.["command"] as string[] | undefined)?.[1];
  check((regionInit?.["command"] as string[] | undefined)?.[0] === "i6pn-node-region" && regionFile, "node-region must run i6pn-node-region FILE");
  check(envOf(agent, "I6PN_REGION_FILE")?.["value"] === regionFile, "agent's I6PN_REGION_FILE must be the file node-region writes");
  const runVolume = (c: Obj | undefined) => (c?.["volumeMounts"] as Obj[] | undefined)?.find((m) => regionFile?.startsWith(`${m["mountPath"]}/`))?.["name"];
  check(runVolume(agent) && runVolume(agent) === runVolume(regionInit), "agent and node-region must share the volume holding the region file");

  // Settings and secrets.
  for (const c of [agent, regionInit]) check((c?.["envFrom"] as Obj[] | undefined)?.some((e) => e["configMapRef"]?.["name"] === configMap["metadata"]["name"]), `${c?.["name"]}: envFrom the ConfigMap`);
  const env = (agent["env"] as Obj[] | undefined) ?? [];
  const credsIdx = env.findIndex((e) => e["name"] === "I6PN_NATS_CREDS");
  const nodeIdx = env.findIndex((e) => e["name"] === "I6PN_NODE");
  check(credsIdx > nodeIdx && nodeIdx >= 0, "I6PN_NODE must be defined before I6PN_NATS_CREDS, which expands $(I6PN_NODE)");
  const creds = env[credsIdx]?.["value"] as string | undefined;
  const credsVol = (pod["volumes"] as Obj[] | undefined)?.find((v) => v["secret"]?.["secretName"] === "i6pn-nats-agents");
  const credsMount = (agent["volumeMounts"] as Obj[] | undefined)?.find((m) => m["name"] === credsVol?.["name"]);
  check(credsVol && credsMount?.["readOnly"] === true, "agent must mount Secret i6pn-nats-agents read-only");
  check(creds === `${credsMount?.["mountPath"]}/$(I6PN_NODE).creds`, "I6PN_NATS_CREDS must be <secret mount>/$(I6PN_NODE).creds");

  // NATS over TLS with a private CA: Node.js trusts it through NODE_EXTRA_CA_CERTS.
  const ca = envOf(agent, "NODE_EXTRA_CA_CERTS")?.["value"] as string | undefined;
  const caVol = (pod["volumes"] as Obj[] | undefined)?.find((v) => v["configMap"]?.["name"] === "i6pn-nats-ca");
  const caMount = (agent["volumeMounts"] as Obj[] | undefined)?.find((m) => m["name"] === caVol?.["name"]);
  check(caVol && ca === `${caMount?.["mountPath"]}/ca.crt`, "NODE_EXTRA_CA_CERTS must name ca.crt of the mounted ConfigMap i6pn-nats-ca");

  // Ports and probes.
  const port = (agent["ports"] as Obj[] | undefined)?.find((x) => x["name"] === "metrics");
  // The metrics listen on the pod's (the node's) address, never on every address of the node.
  const metricsAddr = String(envOf(agent, "I6PN_METRICS_ADDR")?.["value"] ?? "");
  const podIpIdx = env.findIndex((e) => e["name"] === "POD_IP" && e["valueFrom"]?.["fieldRef"]?.["fieldPath"] === "status.podIP");
  const addrIdx = env.findIndex((e) => e["name"] === "I6PN_METRICS_ADDR");
  check(/^\[\$\(POD_IP\)\]:\d+$/.test(metricsAddr), `I6PN_METRICS_ADDR must be "[$(POD_IP)]:PORT" in the agent's env, not ${JSON.stringify(metricsAddr)}`);
  check(podIpIdx >= 0 && podIpIdx < addrIdx, "POD_IP (status.podIP) must be defined before I6PN_METRICS_ADDR, which expands $(POD_IP)");
  const metricsPort = Number(metricsAddr.split(":").pop());
  check(port && port["containerPort"] === metricsPort && port["hostPort"] === metricsPort, `port "metrics" must be ${metricsPort} (I6PN_METRICS_ADDR), hostPort equal (hostNetwork)`);
  const probe = (kind: string) => agent[kind]?.["httpGet"] as Obj | undefined;
  check(probe("livenessProbe")?.["path"] === "/healthz" && probe("livenessProbe")?.["port"] === "metrics", "livenessProbe must GET /healthz on port metrics");
  check(probe("readinessProbe")?.["path"] === "/readyz" && probe("readinessProbe")?.["port"] === "metrics", "readinessProbe must GET /readyz on port metrics");
  check(probe("startupProbe")?.["path"] === "/healthz", "startupProbe must GET /healthz");
  return p;
}

// ---------------------------------------------------------------- tests

test("every YAML parses, names its object, and sits in i6pn-system", (t) => {
  t.true(manifests.length >= 10, `only ${manifests.length} documents`);
  for (const { file, index, obj } of manifests) {
    const where = `${file}#${index}`;
    t.truthy(obj["apiVersion"], where);
    t.truthy(obj["kind"], where);
    if (obj["kind"] === "Kustomization") continue;
    t.regex(obj["metadata"]?.["name"] ?? "", /^[a-z0-9-]+$/, where);
    t.is(obj["metadata"]?.["labels"]?.["app.kubernetes.io/part-of"], "i6pn", `${where} label part-of`);
    if (CLUSTER_SCOPED.has(obj["kind"])) t.is(obj["metadata"]?.["namespace"], undefined, where);
    else t.is(obj["metadata"]?.["namespace"], "i6pn-system", where);
  }
  // A duplicate key is an error, not a silent override.
  t.true(parseAllDocuments("a: 1\na: 2\n", { uniqueKeys: true }).some((d) => d.errors.length > 0));
});

test("every object validates against the Kubernetes schemas (kubernetes-models)", async (t) => {
  for (const { file, index, obj } of objects) {
    await t.notThrowsAsync(validateModel(obj), `${file}#${index} ${obj["kind"]}`);
  }
  // The validation can fail: a port as a string, a missing container name.
  const ds = structuredClone(find("DaemonSet", "i6pn-agent"));
  ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9465";
  await t.throwsAsync(validateModel(ds), { message: /containerPort must be integer/ });
  const job = structuredClone(find("Job", "i6pn-provision"));
  delete job["spec"]["template"]["spec"]["containers"][0]["name"];
  await t.throwsAsync(validateModel(job), { message: /name/ });
});

test("no object has a field the Kubernetes API does not define", (t) => {
  t.deepEqual(typeCheck(objects.map((m) => m.obj)), []);
});

test("the unknown-field check catches typos at any depth (it can fail)", (t) => {
  const ds = find("DaemonSet", "i6pn-agent");
  const mutants: [string, (o: Obj) => void, RegExp][] = [
    ["pod spec", (o) => (o["spec"]["template"]["spec"]["hostNetwrok"] = true), /hostNetwrok/],
    ["capabilities", (o) => (o["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["addd"] = ["BPF"]), /addd/],
    ["probe", (o) => (o["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpget"] = { path: "/readyz" }), /httpget/],
    ["strategy", (o) => (o["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavaliable"] = 1), /maxUnavaliable/],
    ["volume", (o) => (o["spec"]["template"]["spec"]["volumes"][0]["hostpath"] = { path: "/x" }), /hostpath/],
  ];
  for (const [what, mutate, expected] of mutants) {
    const m = structuredClone(ds);
    mutate(m);
    const problems = typeCheck([m]);
    t.is(problems.length, 1, `${what}: ${problems.join("\n")}`);
    t.regex(problems[0] ?? "", expected, what);
  }
});

test("DaemonSet: host network, minimal capabilities, bpffs, node and region, probes, rolling update", (t) => {
  t.deepEqual(daemonSetProblems(find("DaemonSet", "i6pn-agent"), find("ConfigMap", "i6pn-agent")), []);
});

test("DaemonSet checks fail on each broken setting (they can fail)", (t) => {
  const ds = find("DaemonSet", "i6pn-agent");
  const cm = find("ConfigMap", "i6pn-agent");
  const agentOf = (o: Obj) => (o["spec"]["template"]["spec"]["containers"] as Obj[]).find((c) => c["name"] === "agent") as Obj;
  const mutants: [(o: Obj) => void, RegExp][] = [
    [(o) => (o["spec"]["template"]["spec"]["hostNetwork"] = false), /hostNetwork/],
    [(o) => agentOf(o)["securityContext"]["capabilities"]["add"].push("SYS_ADMIN"), /exactly BPF|SYS_ADMIN/],
    [(o) => (agentOf(o)["securityContext"]["privileged"] = true), /agent must not be privileged/],
    [(o) => (o["spec"]["template"]["spec"]["tolerations"] = [{ key: "node-role.kubernetes.io/control-plane", operator: "Exists" }]), /every node/],
    [(o) => (o["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = "50%"), /maxUnavailable 1/],
    [(o) => (o["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] = 1), /maxSurge/],
    [(o) => (agentOf(o)["readinessProbe"]["httpGet"]["path"] = "/healthz"), /readinessProbe/],
    [(o) => (agentOf(o)["livenessProbe"]["httpGet"]["path"] = "/readyz"), /livenessProbe/],
    [(o) => (agentOf(o)["volumeMounts"].find((m: Obj) => m["mountPath"] === "/sys/fs/bpf")["mountPropagation"] = "None"), /HostToContainer/],
    [(o) => (o["spec"]["template"]["spec"]["initContainers"] = o["spec"]["template"]["spec"]["initContainers"].reverse()), /first init container/],
    [(o) => (agentOf(o)["env"] = agentOf(o)["env"].reverse()), /before I6PN_NATS_CREDS/],
    [(o) => (agentOf(o)["env"].find((e: Obj) => e["name"] === "I6PN_NODE")["valueFrom"]["fieldRef"]["fieldPath"] = "metadata.name"), /spec.nodeName/],
    [(o) => (agentOf(o)["env"].find((e: Obj) => e["name"] === "I6PN_REGION_FILE")["value"] = "/tmp/region"), /I6PN_REGION_FILE/],
    [(o) => (agentOf(o)["env"].find((e: Obj) => e["name"] === "I6PN_METRICS_ADDR")["value"] = "0.0.0.0:9465"), /I6PN_METRICS_ADDR must be/],
    [(o) => (agentOf(o)["env"] = agentOf(o)["env"].filter((e: Obj) => e["name"] !== "POD_IP")), /POD_IP \(status.podIP\) must be defined before/],
    [(o) => (agentOf(o)["image"] = "registry.example.com/i6pn:latest"), /image must be/],
    [(o) => (agentOf(o)["ports"][0]["hostPort"] = 19465), /port "metrics"/],
    [(o) => (agentOf(o)["env"] = agentOf(o)["env"].filter((e: Obj) => e["name"] !== "NODE_EXTRA_CA_CERTS")), /NODE_EXTRA_CA_CERTS/],
  ];
  for (const [mutate, expected] of mutants) {
    const m = structuredClone(ds);
    mutate(m);
    const problems = daemonSetProblems(m, cm);
    t.regex(problems.join("\n"), expected, `${mutate.toString()} went unnoticed: ${problems.join("; ")}`);
  }
});

test("ConfigMap: only the agent's own variables, with valid values; nothing per-node", (t) => {
  const data = find("ConfigMap", "i6pn-agent")["data"] as Record<string, string>;
  // The variables the agent reads (its own source), plus the init step's label.
  const agentSource = readFileSync(join(root, "agent/config.ts"), "utf8");
  for (const key of Object.keys(data)) {
    t.regex(key, /^I6PN_[A-Z_]+$/);
    if (key === "I6PN_REGION_LABEL") continue;
    t.true(agentSource.includes(`'${key}'`) || agentSource.includes(`"${key}"`), `${key} is not read by agent/config.ts`);
  }
  for (const perNode of ["I6PN_NODE", "I6PN_NATS_CREDS", "I6PN_REGION", "I6PN_METRICS_ADDR"]) t.false(perNode in data, `${perNode} is per node`);
  t.true(["enforce", "monitor"].includes(data["I6PN_MODE"] ?? ""));
  t.regex(data["I6PN_MAX_ENDPOINTS"] ?? "", /^[1-9]\d*$/);
  t.regex(data["I6PN_MAX_LOCAL_IFACES"] ?? "", /^[1-9]\d*$/);
  t.is(data["I6PN_FORWARD_NON_PRIVATE"], "false", "forwarding non-private traffic is the operator's explicit choice");
  t.true(["auto", "xdp", "tc"].includes(data["I6PN_UPLINK_HOOK"] ?? ""), "the uplink hook is one the agent knows");
  t.regex(data["I6PN_BPFFS"] ?? "", /^\/sys\/fs\/bpf\//);
  for (const url of (data["I6PN_NATS_URL"] ?? "").split(",")) t.regex(url, /^tls:\/\/[a-z0-9.-]+:4222$/, "agents reach NATS over TLS");
  t.truthy(data["I6PN_UPLINK"]);
  t.is(data["I6PN_DNS"], "true", "the node resolver is on");
  t.is(data["I6PN_DNS_ZONE"], "i6pn.local");
  t.regex(data["I6PN_DNS_RATE_LIMIT"] ?? "", /^[1-9]\d*$/, "a rate limit per container");
});

test("RBAC: the agent may only get nodes; i6pnctl has no API token", (t) => {
  const role = find("ClusterRole", "i6pn-agent");
  t.deepEqual(role["rules"], [{ apiGroups: [""], resources: ["nodes"], verbs: ["get"] }]);
  const binding = find("ClusterRoleBinding", "i6pn-agent");
  t.deepEqual(binding["roleRef"], { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "i6pn-agent" });
  t.deepEqual(binding["subjects"], [{ kind: "ServiceAccount", name: "i6pn-agent", namespace: "i6pn-system" }]);
  t.truthy(find("ServiceAccount", "i6pn-agent"));
  t.is(find("ServiceAccount", "i6pnctl")["automountServiceAccountToken"], false);
  t.is(find("Namespace", "i6pn-system")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
});

test("Service and scrape config select the agent pods and their metrics port", (t) => {
  const svc = find("Service", "i6pn-agent");
  const ds = find("DaemonSet", "i6pn-agent");
  const podLabels = ds["spec"]["template"]["metadata"]["labels"] as Record<string, string>;
  t.is(svc["spec"]["clusterIP"], "None");
  for (const [k, v] of Object.entries(svc["spec"]["selector"] as Record<string, string>)) t.is(podLabels[k], v);
  t.deepEqual(svc["spec"]["ports"], [{ name: "metrics", port: 9465, targetPort: "metrics", protocol: "TCP" }]);
  const scrape = parse(readFileSync(join(root, "deploy/prometheus/scrape-config.yaml"), "utf8")) as Obj;
  const job = (scrape["scrape_configs"] as Obj[]).find((j) => j["job_name"] === "i6pn-agent") as Obj;
  const sd = job["kubernetes_sd_configs"][0];
  t.deepEqual(sd["namespaces"]["names"], ["i6pn-system"]);
  const [k, v] = String(sd["selectors"][0]["label"]).split("=");
  t.is(podLabels[k ?? ""], v);
  t.is((job["relabel_configs"] as Obj[]).find((r) => r["action"] === "keep")?.["regex"], "metrics");
});

test("controller Job: non-root i6pnctl with the controller's creds and a script that parses", (t) => {
  const job = find("Job", "i6pn-provision");
  const pod = job["spec"]["template"]["spec"];
  const c = pod["containers"][0];
  t.is(pod["restartPolicy"], "Never");
  t.is(pod["securityContext"]["runAsNonRoot"], true);
  t.is(pod["securityContext"]["fsGroup"], pod["securityContext"]["runAsGroup"], "fsGroup lets the non-root user read the 0440 creds");
  t.is(pod["automountServiceAccountToken"], false);
  t.is(c["image"], IMAGE);
  t.deepEqual(c["securityContext"]["capabilities"], { drop: ["ALL"] });
  t.is(envOf(c, "I6PN_NATS_CREDS")?.["value"], "/etc/i6pn/nats/controller.creds");
  t.is(envOf(c, "NODE_EXTRA_CA_CERTS")?.["value"], "/etc/i6pn/nats-ca/ca.crt");
  t.is(pod["volumes"].find((v: Obj) => v["configMap"]?.["name"] === "i6pn-nats-ca")?.["name"], c["volumeMounts"].find((m: Obj) => m["mountPath"] === "/etc/i6pn/nats-ca")?.["name"]);
  t.is(pod["volumes"].find((v: Obj) => v["secret"])?.["secret"]?.["secretName"], "i6pn-nats-controller");
  const script = find("ConfigMap", "i6pn-provision")["data"]["provision.sh"] as string;
  t.is(c["command"].join(" "), "/bin/sh /etc/i6pn/provision/provision.sh");
  const sh = spawnSync("sh", ["-n"], { input: script, encoding: "utf8" });
  t.is(sh.status, 0, sh.stderr);
  t.regex(script, /i6pnctl region add/);
  t.true(spawnSync("sh", ["-n"], { input: "for x in; do", encoding: "utf8" }).status !== 0, "sh -n can fail");
});

test("kustomization lists every base manifest, and each exists", (t) => {
  const k = manifests.find((m) => m.obj["kind"] === "Kustomization");
  t.truthy(k);
  const resources = k?.obj["resources"] as string[];
  for (const r of resources) t.true(existsSync(join(k8sDir, r)), r);
  t.deepEqual([...resources].sort(), ["configmap.yaml", "daemonset.yaml", "namespace.yaml", "rbac.yaml", "service.yaml"]);
  t.deepEqual(k?.obj["images"], [{ name: "registry.example.com/i6pn", newTag: version }]);
});

// ---------------------------------------------------------------- the pod's scripts

function tempDir(t: { teardown: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), "i6pn-deploy-k8s-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function run(cmd: string, args: string[], env: Record<string, string>): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => p.kill("SIGKILL"), 20_000);
    p.on("error", reject);
    p.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

test("i6pn-node-region reads the node's region label from the API, and says what to fix when it cannot", async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, "token"), "test-token\n");
  const requests: { url: string; auth: string | undefined }[] = [];
  const nodes: Record<string, Obj> = {
    "node-a": { metadata: { name: "node-a", labels: { "topology.kubernetes.io/region": "ord", "i6pn.example/region": "ams" } } },
    "node-b": { metadata: { name: "node-b", labels: {} } },
  };
  const server = createServer((req: IncomingMessage, res) => {
    requests.push({ url: req.url ?? "", auth: req.headers.authorization });
    if (req.headers.authorization !== "Bearer test-token") return void res.writeHead(401).end("{}");
    if (req.url === "/api/v1/nodes/node-c") return void res.writeHead(403).end('{"reason":"Forbidden"}');
    const node = nodes[decodeURIComponent((req.url ?? "").replace("/api/v1/nodes/", ""))];
    if (!node) return void res.writeHead(404).end('{"reason":"NotFound"}');
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(node));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const addr = server.address();
  const api = `http://127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}`;
  const script = join(root, "deploy/image/i6pn-node-region.cjs");
  const base = { I6PN_K8S_API: api, I6PN_K8S_SA_DIR: dir };
  const out = join(dir, "region");

  let r = await run(process.execPath, [script, out], { ...base, I6PN_NODE: "node-a" });
  t.is(r.code, 0, r.err);
  t.is(readFileSync(out, "utf8"), "ord");
  t.deepEqual(requests.at(-1), { url: "/api/v1/nodes/node-a", auth: "Bearer test-token" });

  r = await run(process.execPath, [script, out], { ...base, I6PN_NODE: "node-a", I6PN_REGION_LABEL: "i6pn.example/region" });
  t.is(r.code, 0, r.err);
  t.is(readFileSync(out, "utf8"), "ams");

  rmSync(out);
  r = await run(process.execPath, [script, out], { ...base, I6PN_NODE: "node-b" });
  t.is(r.code, 1);
  t.regex(r.err, /node node-b has no label topology\.kubernetes\.io\/region: label it \(kubectl label node node-b/);
  t.false(existsSync(out));
  r = await run(process.execPath, [script, out], { ...base, I6PN_NODE: "node-c" });
  t.is(r.code, 1);
  t.regex(r.err, /403.*ClusterRole i6pn-agent/);
  r = await run(process.execPath, [script, out], { ...base, I6PN_NODE: "node-x" });
  t.is(r.code, 1);
  t.regex(r.err, /HTTP 404/);
  r = await run(process.execPath, [script, out], { ...base });
  t.is(r.code, 1);
  t.regex(r.err, /I6PN_NODE is not set/);
  r = await run(process.execPath, [script, out], { ...base, I6PN_NODE: "node-a", I6PN_K8S_SA_DIR: join(dir, "missing") });
  t.is(r.code, 1);
  t.regex(r.err, /service account token/);
  // A fixed region: nothing is read.
  const before = requests.length;
  r = await run(process.execPath, [script, out], { ...base, I6PN_NODE: "node-a", I6PN_REGION: "ord" });
  t.is(r.code, 0);
  t.is(requests.length, before);
  t.false(existsSync(out));
});

test("the i6pn-agent entrypoint exports the region from the file, unless I6PN_REGION is set", async (t) => {
  const dir = tempDir(t);
  // A stub `node` that prints what the agent would receive.
  writeFileSync(join(dir, "node"), '#!/bin/sh\necho "region=${I6PN_REGION:-} args=$*"\n');
  chmodSync(join(dir, "node"), 0o755);
  const wrapper = join(root, "deploy/image/i6pn-agent");
  const env = { PATH: `${dir}:${process.env["PATH"] ?? "/usr/bin:/bin"}` };
  writeFileSync(join(dir, "region"), "ord");

  let r = await run("sh", [wrapper, "--mode", "monitor"], { ...env, I6PN_REGION_FILE: join(dir, "region") });
  t.is(r.code, 0, r.err);
  t.is(r.out.trim(), "region=ord args=/app/dist/agent/main.js --mode monitor");
  r = await run("sh", [wrapper, "teardown"], { ...env, I6PN_REGION_FILE: join(dir, "region"), I6PN_REGION: "ams" });
  t.is(r.out.trim(), "region=ams args=/app/dist/agent/main.js teardown");
  r = await run("sh", [wrapper], { ...env });
  t.is(r.out.trim(), "region= args=/app/dist/agent/main.js", "no file configured: the agent's own check applies");
  writeFileSync(join(dir, "region"), "");
  r = await run("sh", [wrapper], { ...env, I6PN_REGION_FILE: join(dir, "region") });
  t.is(r.code, 78);
  t.regex(r.err, /no region in .*region.*label the node/);
  r = await run("sh", [wrapper], { ...env, I6PN_REGION_FILE: join(dir, "absent") });
  t.is(r.code, 78);
  t.is(r.out, "");
});

test("mount-bpffs mounts bpffs where /sys/fs/bpf has none, and leaves a mounted one alone", (t) => {
  if (process.getuid?.() !== 0) return t.fail("needs root (make test runs as root): it mounts bpffs in a private mount namespace");
  const init = (find("DaemonSet", "i6pn-agent")["spec"]["template"]["spec"]["initContainers"] as Obj[]).find((c) => c["name"] === "mount-bpffs");
  const [shell, flags, script] = init?.["command"] as string[];
  t.is(`${shell} ${flags}`, "/bin/sh -ec");
  // A private mount namespace: the host's bpffs (and every pin on it) is untouched.
  const hostFs = () => spawnSync("stat", ["-f", "-c", "%T", "/sys/fs/bpf"], { encoding: "utf8" }).stdout.trim();
  const hostBefore = hostFs();
  const r = spawnSync(
    "unshare",
    ["--mount", "--propagation", "private", "sh", "-ec", `
      while [ "$(stat -f -c %T /sys/fs/bpf)" = bpf_fs ]; do umount -l /sys/fs/bpf; done
      echo "before: $(stat -f -c %T /sys/fs/bpf)"
      sh -ec "$1"
      echo "after: $(stat -f -c %T /sys/fs/bpf)"
      sh -ec "$1"
      echo "mounts: $(grep -c ' /sys/fs/bpf bpf ' /proc/self/mounts)"
    `, "sh", script ?? ""],
    { encoding: "utf8", timeout: 30_000 },
  );
  t.is(r.status, 0, r.stderr);
  t.deepEqual(r.stdout.trim().split("\n"), ["before: sysfs", "mounted bpffs on /sys/fs/bpf", "after: bpf_fs", "bpffs already mounted on /sys/fs/bpf", "mounts: 1"]);
  t.is(hostFs(), hostBefore, "the host's /sys/fs/bpf is as it was");
});

// ---------------------------------------------------------------- the tunnel gateway (deploy/kubernetes/gateway/)


/** The environment variables i6pn-gateway reads (its --help lists each flag's). */
function gatewayEnvVars(): Set<string> {
  const help = spawnSync(process.execPath, ["--import=tsx", join(root, "gateway/main.ts"), "--help"], { encoding: "utf8", timeout: 60_000 });
  // The help wraps at 80 columns: one line of it, then "(env: NAME)".
  return new Set([...help.stdout.replace(/\s+/g, " ").matchAll(/env: (I6PN_\w+)/g)].map((m) => m[1]!));
}

/** What is wrong with the gateway's DaemonSet, ConfigMaps and Service; empty when nothing is. */
function gatewayProblems(ds: Obj, cm: Obj, regs: Obj, svc: Obj, envVars: Set<string>): string[] {
  const p: string[] = [];
  const pod = ds["spec"]["template"]["spec"] as Obj;
  if (pod["hostNetwork"] !== false) p.push("the gateway must have its own network namespace (hostNetwork false): the host's stack is no proven source");
  if (pod["nodeSelector"]?.["i6pn.dev/gateway"] !== "true") p.push('the gateway runs on gateway nodes only (nodeSelector i6pn.dev/gateway: "true")');
  if (pod["automountServiceAccountToken"] !== false) p.push("the gateway needs no API token");
  const gw = (pod["containers"] as Obj[]).find((c) => c["name"] === "gateway");
  const init = (pod["initContainers"] as Obj[] | undefined)?.find((c) => c["name"] === "i6pn-veth");
  if (!gw || !init) return [...p, "containers gateway and init container i6pn-veth are required"];
  const sc = gw["securityContext"] ?? {};
  if (sc["privileged"] || sc["allowPrivilegeEscalation"] !== false || sc["runAsNonRoot"] !== true) p.push("the gateway container must be non-root, unprivileged, without privilege escalation");
  if (JSON.stringify(sc["capabilities"]) !== JSON.stringify({ drop: ["ALL"] })) p.push("the gateway container needs no capability: drop ALL, add none");
  for (const c of [gw, init]) if (c["image"] !== IMAGE) p.push(`${c["name"]}: image must be ${IMAGE}`);
  if (gw["readinessProbe"]?.["httpGet"]?.["path"] !== "/readyz" || gw["livenessProbe"]?.["httpGet"]?.["path"] !== "/healthz") p.push("readinessProbe /readyz and livenessProbe /healthz");
  const envNames = [...(gw["env"] as Obj[]).map((e) => e["name"] as string), ...Object.keys(cm["data"] ?? {})];
  for (const n of envNames) if (n.startsWith("I6PN_") && !envVars.has(n)) p.push(`${n} is not a variable of i6pn-gateway`);
  const node = (gw["env"] as Obj[]).findIndex((e) => e["name"] === "I6PN_NODE");
  const creds = (gw["env"] as Obj[]).findIndex((e) => e["name"] === "I6PN_NATS_CREDS");
  if (node < 0 || node > creds || (gw["env"] as Obj[])[node]?.["valueFrom"]?.["fieldRef"]?.["fieldPath"] !== "spec.nodeName") p.push("I6PN_NODE (spec.nodeName) must come before I6PN_NATS_CREDS, which names its node's creds");
  // The Service carries exactly the ports the gateways hand out.
  const m = /^(\d+)-(\d+)$/.exec(cm["data"]?.["I6PN_GATEWAY_PORTS"] ?? "");
  const range = m ? Array.from({ length: Number(m[2]) - Number(m[1]) + 1 }, (_, i) => Number(m[1]) + i) : [];
  const ports = (svc["spec"]["ports"] as Obj[]).map((x) => x["port"] as number);
  if (range.length === 0 || JSON.stringify(ports) !== JSON.stringify(range) || (svc["spec"]["ports"] as Obj[]).some((x) => x["targetPort"] !== x["port"] || x["protocol"] !== "TCP")) p.push(`the Service's ports must be I6PN_GATEWAY_PORTS (${cm["data"]?.["I6PN_GATEWAY_PORTS"]}), each to the same port`);
  if (svc["spec"]["type"] !== "LoadBalancer" || svc["spec"]["externalTrafficPolicy"] !== "Local") p.push("the Service is a LoadBalancer with externalTrafficPolicy Local");
  for (const [k, v] of Object.entries(svc["spec"]["selector"] ?? {})) if (ds["spec"]["template"]["metadata"]["labels"][k] !== v) p.push(`the Service selects ${k}=${v}, which the pods do not carry`);
  // Each registration: a gateway's address, an interface name, a region.
  for (const [n, line] of Object.entries(regs["data"] ?? {})) {
    const [address, ifname, region, ...rest] = String(line).split(/\s+/);
    let ok = false;
    try {
      ok = isGatewayAddress(parseAddress(address ?? ""));
    } catch {
      ok = false;
    }
    if (!ok || !isValidIfname(ifname) || !isValidName(region) || rest.length) p.push(`registration of ${n}: "ADDRESS IFNAME REGION" with a gateway's address, got ${JSON.stringify(line)}`);
  }
  const script = (init["command"] as string[]).at(-1) ?? "";
  if (spawnSync("sh", ["-n"], { input: script, encoding: "utf8" }).status !== 0) p.push("the init script does not parse");
  return p;
}

test("gateway: its own namespace, gateway nodes, an unprivileged relay, the Service's ports its --ports, registrations that parse", (t) => {
  const args = [find("DaemonSet", "i6pn-gateway"), find("ConfigMap", "i6pn-gateway"), find("ConfigMap", "i6pn-gateway-registrations"), find("Service", "i6pn-gateway")] as const;
  const envVars = gatewayEnvVars();
  t.true(envVars.has("I6PN_GATEWAY_PORTS") && envVars.has("I6PN_NATS_URL"), [...envVars].join(" "));
  t.deepEqual(gatewayProblems(...args, envVars), []);
  const [ds, cm, regs, svc] = args;
  const gwOf = (o: Obj) => (o["spec"]["template"]["spec"]["containers"] as Obj[]).find((c) => c["name"] === "gateway") as Obj;
  const mutants: [string, () => unknown[], RegExp][] = [
    ["host network", () => { const o = structuredClone(ds); o["spec"]["template"]["spec"]["hostNetwork"] = true; return [o, cm, regs, svc]; }, /hostNetwork/],
    ["privileged relay", () => { const o = structuredClone(ds); gwOf(o)["securityContext"]["privileged"] = true; return [o, cm, regs, svc]; }, /unprivileged/],
    ["a capability", () => { const o = structuredClone(ds); gwOf(o)["securityContext"]["capabilities"]["add"] = ["NET_ADMIN"]; return [o, cm, regs, svc]; }, /drop ALL/],
    ["ports", () => { const o = structuredClone(cm); o["data"]["I6PN_GATEWAY_PORTS"] = "20000-20009"; return [ds, o, regs, svc]; }, /Service's ports/],
    ["an unknown variable", () => { const o = structuredClone(cm); o["data"]["I6PN_GATEWAY_PORT"] = "1"; return [ds, o, regs, svc]; }, /I6PN_GATEWAY_PORT is not/],
    ["a tenant's address", () => { const o = structuredClone(regs); o["data"]["gw-node-1"] = "fdaa:1:2:3::4 i6gx eu-west"; return [ds, cm, o, svc]; }, /registration of gw-node-1/],
    ["any node", () => { const o = structuredClone(ds); delete o["spec"]["template"]["spec"]["nodeSelector"]["i6pn.dev/gateway"]; return [o, cm, regs, svc]; }, /gateway nodes/],
  ];
  for (const [what, make, expected] of mutants) {
    const [a, b, c, d] = make() as [Obj, Obj, Obj, Obj];
    t.regex(gatewayProblems(a, b, c, d, envVars).join("\n"), expected, `${what} went unnoticed`);
  }
});
