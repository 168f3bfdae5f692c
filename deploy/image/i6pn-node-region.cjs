#!/usr/bin/env node
// i6pn-node-region OUTFILE: the init step of the i6pn-agent pod. The downward
// API gives a pod its node's name but not the node's labels, so this reads the
// node from the Kubernetes API (get nodes/<name>: ClusterRole i6pn-agent) and
// writes the value of its region label to OUTFILE, where the i6pn-agent wrapper
// reads it into I6PN_REGION.
//
// Environment:
//   I6PN_NODE           the node's name (downward API spec.nodeName), required
//   I6PN_REGION_LABEL   the label to read (default topology.kubernetes.io/region)
//   I6PN_REGION         if set, the region is fixed: nothing is read or written
//   KUBERNETES_SERVICE_HOST/_PORT, the service account token and CA under
//   /var/run/secrets/kubernetes.io/serviceaccount (set by Kubernetes);
//   I6PN_K8S_API and I6PN_K8S_SA_DIR override them (tests).
// Exit 0 with OUTFILE written, 1 with a message saying what to fix.
// CommonJS on purpose: installed without a package.json as
// /usr/local/bin/i6pn-node-region, where Node 20 reads scripts as CommonJS.
"use strict";
const { readFileSync, writeFileSync, renameSync } = require("node:fs");
const { join } = require("node:path");
const http = require("node:http");
const https = require("node:https");

function fail(message) {
  console.error(`i6pn-node-region: ${message}`);
  process.exit(1);
}

const out = process.argv[2];
if (!out) fail("usage: i6pn-node-region OUTFILE");
if (process.env.I6PN_REGION) {
  console.log(`i6pn-node-region: I6PN_REGION=${process.env.I6PN_REGION} is set; not reading node labels`);
  process.exit(0);
}
const node = process.env.I6PN_NODE;
if (!node) fail("I6PN_NODE is not set (env from the downward API: fieldRef spec.nodeName)");
const label = process.env.I6PN_REGION_LABEL || "topology.kubernetes.io/region";
const saDir = process.env.I6PN_K8S_SA_DIR || "/var/run/secrets/kubernetes.io/serviceaccount";
const host = process.env.KUBERNETES_SERVICE_HOST;
const api = process.env.I6PN_K8S_API || (host ? `https://${host.includes(":") ? `[${host}]` : host}:${process.env.KUBERNETES_SERVICE_PORT || "443"}` : "");
if (!api) fail("not in a Kubernetes pod: KUBERNETES_SERVICE_HOST is not set");

let token;
try {
  token = readFileSync(join(saDir, "token"), "utf8").trim();
} catch (err) {
  fail(`cannot read the service account token in ${saDir}: ${err.message} (automountServiceAccountToken must stay on)`);
}
const url = new URL(`/api/v1/nodes/${encodeURIComponent(node)}`, api);
const options = { headers: { Authorization: `Bearer ${token}`, Accept: "application/json" }, timeout: 10_000 };
if (url.protocol === "https:") {
  try {
    options.ca = readFileSync(join(saDir, "ca.crt"));
  } catch (err) {
    fail(`cannot read the cluster CA in ${saDir}: ${err.message}`);
  }
}

const req = (url.protocol === "https:" ? https : http).get(url, options, (res) => {
  let body = "";
  res.setEncoding("utf8");
  res.on("data", (d) => (body += d));
  res.on("end", () => {
    if (res.statusCode === 403) fail(`the API refused get nodes/${node} (403): bind ClusterRole i6pn-agent to the pod's service account`);
    if (res.statusCode !== 200) fail(`GET ${url.pathname}: HTTP ${res.statusCode}: ${body.slice(0, 200)}`);
    let region;
    try {
      region = JSON.parse(body)?.metadata?.labels?.[label];
    } catch {
      fail(`GET ${url.pathname}: the answer is not JSON`);
    }
    if (typeof region !== "string" || region === "") {
      fail(`node ${node} has no label ${label}: label it (kubectl label node ${node} ${label}=REGION), or set I6PN_REGION_LABEL, or I6PN_REGION for a single-region cluster`);
    }
    // The agent validates the name (--region); this only refuses what a shell would mangle.
    if (!/^[\x21-\x7e]+$/.test(region)) fail(`label ${label} of node ${node} is not a region name: ${JSON.stringify(region)}`);
    writeFileSync(`${out}.tmp`, region);
    renameSync(`${out}.tmp`, out);
    console.log(`i6pn-node-region: node ${node} is in region ${region} (label ${label})`);
  });
});
req.on("timeout", () => req.destroy(new Error("timed out after 10 s")));
req.on("error", (err) => fail(`GET ${url}: ${err.message}`));
