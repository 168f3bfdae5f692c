// Issues the NATS identities of an i6pn deployment without nsc: an operator, a
// system account and the i6pn account (decentralized JWT auth), then one
// credentials file per agent and one for the controller. Least privilege:
//
//   agent <node> of <region>
//                 reads the buckets it follows (regions and nodes: get, watch,
//                 keys; its own region's endpoints bucket i6pn_endpoints_<region>,
//                 also with a pull consumer, and no other region's; its own
//                 region's tunnels bucket i6pn_tunnels_<region>), writes
//                 one key only, its heartbeat $KV.i6pn_nodes.<node>, publishes
//                 its drop events on one subject only, i6pn.events.<region>.<node>,
//                 and subscribes only below its own inbox prefix
//                 (_INBOX.i6pn-agent.<node>), so it reads no reply meant for
//                 another client: no other region's membership, no event;
//   gateway <address> of <region>
//                 reads its region's tunnels bucket and its own record, and
//                 writes one key only, that record $KV.i6pn_gateways.<region>.<address hex>;
//   controller    reads, writes and creates every i6pn_* bucket and the
//                 I6PN_EVENTS stream, and alone subscribes to the drop events
//                 (i6pn.events.>: who talks to whom, tenant metadata) for
//                 `i6pnctl observe`.
//
// A stream name cannot be wildcarded inside a subject token, so the region is
// written into each agent's permissions: an agent is issued for one region.
//
// The server never holds user secrets: it trusts the operator JWT, preloads
// the two account JWTs (auth.conf), and verifies each user JWT's signature by
// the i6pn account, so adding a node is issuing a creds file, not a server
// reload. Seeds (*.nk) and creds are secrets; keep DIR out of git.
//
//   node --import=tsx deploy/nats/i6pn-nats-auth.ts init DIR
//   node --import=tsx deploy/nats/i6pn-nats-auth.ts agent DIR --region REGION [--legacy-endpoints] NODE [NODE...]
//   node --import=tsx deploy/nats/i6pn-nats-auth.ts gateway DIR --region REGION ADDRESS [ADDRESS...]
//   node --import=tsx deploy/nats/i6pn-nats-auth.ts controller DIR
//
// The JWTs are the NATS v2 format (what nsc writes): header
// {"typ":"JWT","alg":"ed25519-nkey"}, claims signed with the issuer's nkey.
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { nkeys } from "@nats-io/transport-node";
import { EVENTS_SUBJECT_PREFIX, eventsSubject } from "../../lib/events.js";
import { formatAddress, isGatewayAddress, parseAddress } from "../../lib/address.js";
import {
  agentInboxPrefix,
  gatewayInboxPrefix,
  BUCKET_TABLE,
  BUCKETS,
  endpointsBucketSpec,
  GATEWAYS_BUCKET,
  gatewayKey,
  tunnelsBucket,
  isValidName,
  isValidNodeName,
  kvStream,
  kvSubject,
  LEGACY_ENDPOINTS_BUCKET,
  nodeKey,
  type BucketSpec,
} from "../../lib/schema.js";

type KeyPair = ReturnType<typeof nkeys.createUser>;

/** The fixed KV buckets of the membership store, as lib/schema.ts names them; besides, one endpoints bucket per region. */
export { BUCKETS };
/**
 * The fixed buckets an agent reads (agent/: its region's id, the nodes), from
 * the table's `agent` column, besides its region's endpoints bucket; the
 * workspace, address and interface-name ledgers are the controller's alone. A
 * bucket an agent reads costs ~9 subjects in every agent's JWT, which travels
 * in the CONNECT line (max_control_line, 4 KB by default).
 */
const agentReads = (b: BucketSpec): boolean => b.agent !== "none";
export const AGENT_BUCKETS: readonly string[] = Object.values(BUCKET_TABLE).filter(agentReads).map((b) => b.name);
/** The bucket where an agent writes one key, its own (the heartbeat). */
export const HEARTBEAT_BUCKET: string = (() => {
  const own = Object.values(BUCKET_TABLE).filter((b: BucketSpec) => b.agent === "read, own key");
  if (own.length !== 1) throw new Error(`lib/schema.ts BUCKET_TABLE: expected one bucket an agent writes its own key in, found ${own.length}`);
  return own[0]!.name;
})();

/** Every bucket an agent of `region` reads: AGENT_BUCKETS and its region's endpoints bucket (with the first layout's during an upgrade). */
export function agentBuckets(region: string, opts: AgentOptions = {}): string[] {
  const endpoints = endpointsBucketSpec(region);
  return [...AGENT_BUCKETS, ...(agentReads(endpoints) ? [endpoints.name] : []), ...(opts.legacyEndpoints ? [LEGACY_ENDPOINTS_BUCKET] : [])];
}

export interface AgentOptions {
  /**
   * Also read the first layout's single bucket, i6pn_endpoints (every
   * region's endpoints), as agents before 0.2.0 do. Only for the rolling
   * upgrade: the creds of a node are shared by its old and new agent while
   * the DaemonSet rolls, and an old agent restarted in that time reads them
   * again. Issue creds without it once `i6pnctl migrate --finish` is done.
   */
  legacyEndpoints?: boolean;
}

export interface Permissions {
  pub: { allow: string[] };
  sub: { allow: string[] };
}

// The node name becomes a subject in a permission: "*" or ">" in it would
// grant a wildcard. The rule is the agent's own (lib/schema.ts).
export function assertNodeName(node: string): void {
  if (!isValidNodeName(node)) {
    throw new Error(`node name ${JSON.stringify(node)} is not a Kubernetes node name (lowercase DNS subdomain); it becomes a NATS subject and must not hold wildcards or spaces`);
  }
}

// The region name becomes part of a stream name in a permission; the rule is i6pnctl's (lib/schema.ts).
export function assertRegionName(region: string): void {
  if (!isValidName(region)) {
    throw new Error(`region name ${JSON.stringify(region)} is not an i6pn region name (a lowercase letter, then up to 30 lowercase letters, digits or dashes); it becomes part of a NATS subject`);
  }
}

/** What a KV client needs to open, get, watch and list keys of a bucket, without writing it. */
function kvReadSubjects(bucket: string): string[] {
  const stream = kvStream(bucket);
  return [
    `$JS.API.STREAM.INFO.${stream}`, // open the bucket, status
    `$JS.API.STREAM.MSG.GET.${stream}`, // get (when direct get is off)
    `$JS.API.DIRECT.GET.${stream}`, // get (direct, request form)
    `$JS.API.DIRECT.GET.${stream}.>`, // get (direct, last-by-subject form)
    `$JS.API.CONSUMER.CREATE.${stream}`, // watch, keys, history: ordered consumers
    `$JS.API.CONSUMER.CREATE.${stream}.>`,
    `$JS.API.CONSUMER.INFO.${stream}.*`,
    `$JS.API.CONSUMER.DELETE.${stream}.*`,
    `$JS.FC.${stream}.>`, // flow-control replies of ordered consumers
  ];
}

/**
 * What following a bucket with a KV watch needs (agent/tunnels.ts: the
 * region's tunnels), and no get: its status, an ordered push consumer from
 * the first message, its flow control. Five subjects, where kvReadSubjects
 * takes nine: every agent's JWT carries them (see AGENT_BUCKETS).
 */
function kvWatchSubjects(bucket: string): string[] {
  const stream = kvStream(bucket);
  return [
    `$JS.API.STREAM.INFO.${stream}`,
    `$JS.API.CONSUMER.CREATE.${stream}.>`,
    `$JS.API.CONSUMER.INFO.${stream}.*`,
    `$JS.API.CONSUMER.DELETE.${stream}.*`,
    `$JS.FC.${stream}.>`,
  ];
}

/**
 * What the agent's reader of its region's endpoints bucket needs besides:
 * a pull consumer over the whole stream, whose batches it asks for.
 */
function pullConsumerSubjects(bucket: string): string[] {
  return [`$JS.API.CONSUMER.MSG.NEXT.${kvStream(bucket)}.*`];
}

export function agentPermissions(node: string, region: string, opts: AgentOptions = {}): Permissions {
  assertNodeName(node);
  assertRegionName(region);
  const endpoints = endpointsBucketSpec(region).name;
  return {
    pub: {
      allow: [
        "$JS.API.INFO",
        ...agentBuckets(region, opts).flatMap(kvReadSubjects),
        ...pullConsumerSubjects(endpoints),
        ...kvWatchSubjects(tunnelsBucket(region)), // its region's tunnels, into the tunnels map
        kvSubject(HEARTBEAT_BUCKET, nodeKey(node)), // its own heartbeat key, nothing else
        eventsSubject(region, node), // its own drop events, nothing else
      ],
    },
    // Replies (API responses, put acks, watch deliveries) arrive on its own
    // inboxes, not `_INBOX.>`: that would let it read every other client's
    // replies (another region's membership, the operator's event deliveries).
    sub: { allow: [`${agentInboxPrefix(node)}.>`] },
  };
}

/** A gateway's address becomes a subject in its permissions: it must be a gateway's (fdaa:0:0:<region>:6a7e::/80). */
export function assertGatewayAddress(address: string): Uint8Array {
  let a: Uint8Array;
  try {
    a = parseAddress(address);
  } catch (err) {
    throw new Error(`gateway address ${JSON.stringify(address)}: ${(err as Error).message}`);
  }
  if (!isGatewayAddress(a)) throw new Error(`${address} is not a gateway's address (fdaa:0:0:<region>:6a7e::/80, as \`i6pnctl gateway add\` prints it)`);
  return a;
}

/**
 * A tunnel gateway of `region` at `address` (i6pnctl gateway add): it follows
 * its region's tunnels and writes (and reads back, after a restart) its own
 * record; nothing else of the store.
 */
export function gatewayPermissions(address: string, region: string): Permissions {
  assertRegionName(region);
  const addr = assertGatewayAddress(address);
  const key = gatewayKey(region, addr);
  const stream = kvStream(GATEWAYS_BUCKET);
  return {
    pub: {
      allow: [
        "$JS.API.INFO",
        ...kvWatchSubjects(tunnelsBucket(region)),
        `$JS.API.STREAM.INFO.${stream}`, // open the bucket
        `$JS.API.DIRECT.GET.${stream}.${kvSubject(GATEWAYS_BUCKET, key)}`, // its own record, and no other
        kvSubject(GATEWAYS_BUCKET, key),
      ],
    },
    sub: { allow: [`${gatewayInboxPrefix(addr)}.>`] }, // its own replies, as an agent's (agentPermissions)
  };
}

/**
 * The controller owns the store: every JetStream API call and every KV subject
 * of the account. The i6pn account holds nothing else, so this is the store.
 * It alone subscribes to the agents' drop events (`i6pnctl observe`), and
 * publishes none.
 */
export function controllerPermissions(): Permissions {
  return {
    pub: { allow: ["$JS.API.>", "$KV.>", "$JS.FC.>"] },
    sub: { allow: ["_INBOX.>", `${EVENTS_SUBJECT_PREFIX}.>`] },
  };
}

// ---------------------------------------------------------------- JWT

const b64url = (data: string | Uint8Array) => Buffer.from(data).toString("base64url");
const base32 = (buf: Buffer) => {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0, value = 0, out = "";
  for (const byte of buf) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
};

function encodeJwt(issuer: KeyPair, subject: string, name: string, nats: Record<string, unknown>): string {
  const claims: Record<string, unknown> = { jti: "", iat: Math.floor(Date.now() / 1000), iss: issuer.getPublicKey(), name, sub: subject, nats: { ...nats, version: 2 } };
  // jti as nsc computes it: base32 SHA-512/256 of the claims without jti.
  claims["jti"] = base32(createHash("sha512-256").update(JSON.stringify(claims)).digest());
  const signed = `${b64url(JSON.stringify({ typ: "JWT", alg: "ed25519-nkey" }))}.${b64url(JSON.stringify(claims))}`;
  return `${signed}.${b64url(issuer.sign(new TextEncoder().encode(signed)))}`;
}

const UNLIMITED = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };

export function credsFile(jwt: string, seed: Uint8Array): string {
  return [
    "-----BEGIN NATS USER JWT-----",
    jwt,
    "------END NATS USER JWT------",
    "",
    "************************* IMPORTANT *************************",
    "NKEY Seed printed below can be used to sign and prove identity.",
    "NKEYs are sensitive and should be treated as secrets.",
    "",
    "-----BEGIN USER NKEY SEED-----",
    new TextDecoder().decode(seed),
    "------END USER NKEY SEED------",
    "",
    "*************************************************************",
    "",
  ].join("\n");
}

// ---------------------------------------------------------------- files

function writeSecret(path: string, text: string): void {
  writeFileSync(path, text, { mode: 0o600 });
  chmodSync(path, 0o600);
}

function loadSeed(dir: string, name: string): KeyPair {
  const path = join(dir, `${name}.nk`);
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`init ${dir}\` first`);
  return nkeys.fromSeed(new TextEncoder().encode(readFileSync(path, "utf8").trim()));
}

/**
 * Creates the operator, the system account and the i6pn account in dir, and
 * auth.conf for nats-server (include it from nats-server.conf). Refuses to
 * overwrite existing keys: re-keying the operator invalidates every creds file.
 */
export function init(dir: string): { authConf: string; operator: string; account: string; systemAccount: string } {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  for (const name of ["operator", "sys", "i6pn"]) {
    if (existsSync(join(dir, `${name}.nk`))) throw new Error(`${join(dir, `${name}.nk`)} exists; refusing to replace the keys of a running deployment`);
  }
  const operator = nkeys.createOperator();
  const sys = nkeys.createAccount();
  const acct = nkeys.createAccount();
  writeSecret(join(dir, "operator.nk"), new TextDecoder().decode(operator.getSeed()) + "\n");
  writeSecret(join(dir, "sys.nk"), new TextDecoder().decode(sys.getSeed()) + "\n");
  writeSecret(join(dir, "i6pn.nk"), new TextDecoder().decode(acct.getSeed()) + "\n");

  const operatorJwt = encodeJwt(operator, operator.getPublicKey(), "i6pn", { type: "operator", system_account: sys.getPublicKey() });
  const sysJwt = encodeJwt(operator, sys.getPublicKey(), "SYS", { type: "account", limits: { ...UNLIMITED } });
  // JetStream is on for the i6pn account (storage -1: bounded by the server's
  // jetstream max_file_store / max_memory_store). Set explicit limits when the
  // NATS cluster is shared with other tenants.
  const acctJwt = encodeJwt(operator, acct.getPublicKey(), "i6pn", {
    type: "account",
    limits: { ...UNLIMITED, mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 },
    default_permissions: { pub: {}, sub: {} },
  });
  const authConf = [
    "# Generated by deploy/nats/i6pn-nats-auth.ts init. Decentralized JWT auth:",
    "# users are not listed here; the server accepts any user JWT signed by the",
    "# i6pn account, with the permissions written in that JWT.",
    `operator: ${operatorJwt}`,
    `system_account: ${sys.getPublicKey()}`,
    "resolver: MEMORY",
    "resolver_preload: {",
    `  # SYS`,
    `  ${sys.getPublicKey()}: ${sysJwt}`,
    `  # i6pn (the membership store's account)`,
    `  ${acct.getPublicKey()}: ${acctJwt}`,
    "}",
    "",
  ].join("\n");
  writeFileSync(join(dir, "auth.conf"), authConf, { mode: 0o644 });
  return { authConf: join(dir, "auth.conf"), operator: operator.getPublicKey(), account: acct.getPublicKey(), systemAccount: sys.getPublicKey() };
}

function issueUser(dir: string, name: string, permissions: Permissions, file: string): string {
  const acct = loadSeed(dir, "i6pn");
  const user = nkeys.createUser();
  const jwt = encodeJwt(acct, user.getPublicKey(), name, { type: "user", ...permissions, subs: -1, data: -1, payload: -1 });
  writeSecret(file, credsFile(jwt, user.getSeed()));
  return file;
}

/** Writes DIR/agents/<node>.creds for a node of `region`. */
export function issueAgent(dir: string, node: string, region: string, opts: AgentOptions = {}): string {
  const permissions = agentPermissions(node, region, opts);
  mkdirSync(join(dir, "agents"), { recursive: true, mode: 0o700 });
  return issueUser(dir, `i6pn-agent@${node}`, permissions, join(dir, "agents", `${node}.creds`));
}

/** `agent DIR --region REGION [--legacy-endpoints] NODE...`, flags anywhere after DIR. */
function parseAgentArgs(args: string[]): { region: string; nodes: string[]; opts: AgentOptions } {
  let region: string | undefined;
  const nodes: string[] = [];
  const opts: AgentOptions = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--region") {
      region = args[++i];
      if (region === undefined) throw new Error("agent: --region needs a region name");
    } else if (a.startsWith("--region=")) region = a.slice("--region=".length);
    else if (a === "--legacy-endpoints") opts.legacyEndpoints = true;
    else if (a.startsWith("--")) throw new Error(`agent: unknown option ${a}`);
    else nodes.push(a);
  }
  if (region === undefined) throw new Error("agent: --region REGION is required: an agent may read its own region's endpoints bucket only (issue each region's nodes separately)");
  if (nodes.length === 0) throw new Error("agent: name at least one node");
  return { region, nodes, opts };
}

/** Writes DIR/gateways/<address hex>.creds for a gateway of `region`. */
export function issueGateway(dir: string, address: string, region: string): string {
  const permissions = gatewayPermissions(address, region);
  mkdirSync(join(dir, "gateways"), { recursive: true, mode: 0o700 });
  const a = parseAddress(address);
  return issueUser(dir, `i6pn-gateway@${formatAddress(a)}`, permissions, join(dir, "gateways", `${Buffer.from(a).toString("hex")}.creds`));
}

/** Writes DIR/controller.creds. */
export function issueController(dir: string): string {
  return issueUser(dir, "i6pnctl", controllerPermissions(), join(dir, "controller.creds"));
}

function main(argv: string[]): number {
  const [command, dir, ...rest] = argv;
  const usage = "usage: i6pn-nats-auth.ts init DIR | agent DIR --region REGION [--legacy-endpoints] NODE [NODE...] | gateway DIR --region REGION ADDRESS [ADDRESS...] | controller DIR";
  if (!command || !dir) {
    console.error(usage);
    return 2;
  }
  try {
    switch (command) {
      case "init": {
        const r = init(dir);
        console.log(`wrote ${r.authConf} (operator ${r.operator}, account i6pn ${r.account}); keep ${dir}/*.nk secret`);
        return 0;
      }
      case "agent": {
        const { region, nodes, opts } = parseAgentArgs(rest);
        for (const node of nodes) assertNodeName(node);
        assertRegionName(region);
        for (const node of nodes) console.log(`wrote ${issueAgent(dir, node, region, opts)} (region ${region}${opts.legacyEndpoints ? `, and ${LEGACY_ENDPOINTS_BUCKET} until the upgrade is finished` : ""})`);
        return 0;
      }
      case "gateway": {
        const i = rest.indexOf("--region");
        const region = i >= 0 ? rest[i + 1] : undefined;
        const addresses = rest.filter((_, j) => i < 0 || (j !== i && j !== i + 1));
        if (region === undefined) throw new Error("gateway: --region REGION is required: a gateway reads its own region's tunnels only");
        if (addresses.length === 0) throw new Error("gateway: name at least one gateway address (i6pnctl gateway add prints it)");
        for (const a of addresses) console.log(`wrote ${issueGateway(dir, a, region)} (region ${region})`);
        return 0;
      }
      case "controller":
        console.log(`wrote ${issueController(dir)}`);
        return 0;
      default:
        console.error(usage);
        return 2;
    }
  } catch (err) {
    console.error(`i6pn-nats-auth: ${(err as Error).message}`);
    return 1;
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  process.exitCode = main(process.argv.slice(2));
}
