// Issues the NATS identities of an i6pn deployment without nsc: an operator, a
// system account and the i6pn account (decentralized JWT auth), then one
// credentials file per agent and one for the controller. Least privilege:
//
//   agent <node>  reads the buckets it follows (regions, endpoints, nodes: get,
//                 watch, keys) and writes one key only, its heartbeat
//                 $KV.i6pn_nodes.<node>;
//   controller    reads, writes and creates every i6pn_* bucket.
//
// The server never holds user secrets: it trusts the operator JWT, preloads
// the two account JWTs (auth.conf), and verifies each user JWT's signature by
// the i6pn account, so adding a node is issuing a creds file, not a server
// reload. Seeds (*.nk) and creds are secrets; keep DIR out of git.
//
//   node --import=tsx deploy/nats/i6pn-nats-auth.ts init DIR
//   node --import=tsx deploy/nats/i6pn-nats-auth.ts agent DIR NODE [NODE...]
//   node --import=tsx deploy/nats/i6pn-nats-auth.ts controller DIR
//
// The JWTs are the NATS v2 format (what nsc writes): header
// {"typ":"JWT","alg":"ed25519-nkey"}, claims signed with the issuer's nkey.
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { nkeys } from "@nats-io/transport-node";
import {
  ADDRESSES_BUCKET,
  ENDPOINTS_BUCKET,
  IFNAMES_BUCKET,
  isValidNodeName,
  NODES_BUCKET,
  nodeKey,
  REGIONS_BUCKET,
  WORKSPACES_BUCKET,
} from "../../lib/schema.js";

type KeyPair = ReturnType<typeof nkeys.createUser>;

/** The KV buckets of the membership store, as lib/schema.ts names them. */
export const BUCKETS = [REGIONS_BUCKET, WORKSPACES_BUCKET, ENDPOINTS_BUCKET, ADDRESSES_BUCKET, IFNAMES_BUCKET, NODES_BUCKET] as const;
/**
 * The buckets an agent reads (agent/: its region's id, the endpoints, the
 * nodes); the workspace, address and interface-name ledgers are the
 * controller's alone. A bucket added here costs ~9 subjects in every agent's
 * JWT, which travels in the CONNECT line (max_control_line, 4 KB by default).
 */
export const AGENT_BUCKETS = [REGIONS_BUCKET, ENDPOINTS_BUCKET, NODES_BUCKET] as const;
export const HEARTBEAT_BUCKET = NODES_BUCKET;

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

/** What a KV client needs to open, get, watch and list keys of a bucket, without writing it. */
function kvReadSubjects(bucket: string): string[] {
  const stream = `KV_${bucket}`;
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

export function agentPermissions(node: string): Permissions {
  assertNodeName(node);
  return {
    pub: {
      allow: [
        "$JS.API.INFO",
        ...AGENT_BUCKETS.flatMap(kvReadSubjects),
        `$KV.${HEARTBEAT_BUCKET}.${nodeKey(node)}`, // its own heartbeat key, nothing else
      ],
    },
    // Replies (API responses, put acks, watch deliveries) arrive on inboxes.
    sub: { allow: ["_INBOX.>"] },
  };
}

/**
 * The controller owns the store: every JetStream API call and every KV subject
 * of the account. The i6pn account holds nothing else, so this is the store.
 */
export function controllerPermissions(): Permissions {
  return {
    pub: { allow: ["$JS.API.>", "$KV.>", "$JS.FC.>"] },
    sub: { allow: ["_INBOX.>"] },
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

/** Writes DIR/agents/<node>.creds for each node. */
export function issueAgent(dir: string, node: string): string {
  const permissions = agentPermissions(node);
  mkdirSync(join(dir, "agents"), { recursive: true, mode: 0o700 });
  return issueUser(dir, `i6pn-agent@${node}`, permissions, join(dir, "agents", `${node}.creds`));
}

/** Writes DIR/controller.creds. */
export function issueController(dir: string): string {
  return issueUser(dir, "i6pnctl", controllerPermissions(), join(dir, "controller.creds"));
}

function main(argv: string[]): number {
  const [command, dir, ...rest] = argv;
  const usage = "usage: i6pn-nats-auth.ts init DIR | agent DIR NODE [NODE...] | controller DIR";
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
      case "agent":
        if (rest.length === 0) throw new Error("agent: name at least one node");
        for (const node of rest) console.log(`wrote ${issueAgent(dir, node)}`);
        return 0;
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
