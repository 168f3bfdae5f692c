// Prometheus rules, scrape config and Grafana dashboard in deploy/, checked
// offline: promtool parses and unit-tests the rules, every PromQL expression of
// the dashboard goes through promtool's parser, and every metric name and label
// value they use must be in the agent's catalogue (deploy/metrics.json).
import test from "ava";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse, stringify } from "yaml";

import * as abi from "../agent/bpf/abi.generated.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const promDir = join(root, "deploy/prometheus");
const rulesFile = join(promDir, "i6pn-rules.yaml");
const rulesTestFile = join(promDir, "i6pn-rules.test.yaml");
const scrapeFile = join(promDir, "scrape-config.yaml");
const dashboardFile = join(root, "deploy/grafana/i6pn-dashboard.json");

// ---------------------------------------------------------------- catalogue

interface CatalogueMetric {
  name: string;
  type: "counter" | "gauge" | "histogram" | "summary";
  help: string;
  labels: Record<string, string[] | null>;
  buckets?: number[];
}
interface Catalogue {
  metrics: CatalogueMetric[];
  defaultMetrics: { prefix: string; metrics: { name: string; type: string }[] };
}
const catalogue = JSON.parse(readFileSync(join(root, "deploy/metrics.json"), "utf8")) as Catalogue;

/**
 * The catalogue's label lists that are the dataplane's enums, against the ABI
 * generated from the object's BTF (agent/bpf/abi.generated.ts, itself checked
 * against the object by test/abi.test.ts): a hook, verdict, mode or map label
 * anywhere, and the reason of every metric labelled by hook and reason (the
 * BPF counters; the agent's own metrics have reasons of their own). Each must
 * list exactly the ABI's names in its order (a subset, for maps), so a reason
 * added to bpf/i6pn.h cannot be forgotten here. Returns the problems and the
 * [metric, label] pairs checked.
 */
function abiLabelProblems(metrics: CatalogueMetric[]): { problems: string[]; checked: string[] } {
  const problems: string[] = [];
  const checked: string[] = [];
  const exactly = (m: CatalogueMetric, label: string, want: readonly string[]) => {
    checked.push(`${m.name}{${label}}`);
    const got = m.labels[label];
    if (!got || got.join() !== want.join()) problems.push(`${m.name}{${label}} is [${got?.join(", ") ?? "open"}], the ABI says [${want.join(", ")}]`);
  };
  for (const m of metrics) {
    if ("hook" in m.labels) exactly(m, "hook", abi.HOOK_NAMES);
    if ("verdict" in m.labels) exactly(m, "verdict", abi.VERDICT_NAMES);
    if ("mode" in m.labels) exactly(m, "mode", abi.MODE_NAMES);
    if ("hook" in m.labels && "reason" in m.labels) exactly(m, "reason", abi.REASON_NAMES);
    if ("map" in m.labels) {
      checked.push(`${m.name}{map}`);
      const unknown = (m.labels["map"] ?? ["(open)"]).filter((name) => !(name in abi.maps));
      if (unknown.length) problems.push(`${m.name}{map} names no map of the object: ${unknown.join(", ")}`);
    }
  }
  return { problems, checked };
}

/** Every series name a scrape of the agent can hold, mapped to its catalogue entry. */
function seriesNames(): Map<string, CatalogueMetric | undefined> {
  const names = new Map<string, CatalogueMetric | undefined>();
  const add = (name: string, type: string, entry?: CatalogueMetric) => {
    names.set(name, entry);
    if (type === "histogram" || type === "summary") {
      for (const suffix of ["_sum", "_count"]) names.set(name + suffix, entry);
      if (type === "histogram") names.set(name + "_bucket", entry);
    }
  };
  for (const m of catalogue.metrics) add(m.name, m.type, m);
  for (const m of catalogue.defaultMetrics.metrics) add(m.name, m.type);
  return names;
}

/** Recording rules defined in i6pn-rules.yaml (the dashboard may use them). */
function recordedNames(): Set<string> {
  const doc = parse(readFileSync(rulesFile, "utf8")) as RulesFile;
  return new Set(doc.groups.flatMap((g) => g.rules.flatMap((r) => (r.record ? [r.record] : []))));
}

interface Rule { record?: string; alert?: string; expr: string; for?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
interface RulesFile { groups: { name: string; rules: Rule[] }[] }

// ---------------------------------------------------------------- PromQL helpers

const KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless", "atan2", "inf", "nan", "Inf", "NaN"]);
// Prometheus' own series, and the target labels added by relabeling.
const PROMETHEUS_SERIES = new Set(["up"]);
const TARGET_LABELS = new Set(["job", "instance", "node", "region", "namespace", "pod", "le", "__name__"]);

/**
 * The metric names a PromQL expression selects. Not a parser: it removes
 * strings, label matchers, ranges and grouping clauses, then takes the
 * identifiers that are not functions (followed by "(") or keywords.
 */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  const names: string[] = [];
  for (const m of stripped.matchAll(/(?<![\w.:])[a-zA-Z_:][\w:]*/g)) {
    const rest = stripped.slice((m.index ?? 0) + m[0].length);
    if (/^\s*\(/.test(rest) || KEYWORDS.has(m[0])) continue;
    names.push(m[0]);
  }
  return names;
}

/** Equality and regex matchers of every selector that names a metric: [metric, label, op, value]. */
function matchers(expr: string): [string, string, string, string][] {
  const out: [string, string, string, string][] = [];
  for (const sel of expr.matchAll(/([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}/g)) {
    for (const m of (sel[2] ?? "").matchAll(/([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"/g)) {
      out.push([sel[1] ?? "", m[1] ?? "", m[2] ?? "", m[3] ?? ""]);
    }
  }
  return out;
}

/** Problems of an expression against the catalogue; empty when it is clean. */
function catalogueProblems(expr: string, allowed: Map<string, CatalogueMetric | undefined>, recorded: Set<string>): string[] {
  const problems: string[] = [];
  const names = metricNames(expr);
  if (names.length === 0) problems.push(`selects no metric: ${expr}`);
  for (const name of names) {
    if (!allowed.has(name) && !recorded.has(name) && !PROMETHEUS_SERIES.has(name)) problems.push(`unknown metric ${name} in: ${expr}`);
  }
  for (const [metric, label, op, value] of matchers(expr)) {
    if (TARGET_LABELS.has(label) || value.includes("$")) continue;
    const entry = allowed.get(metric);
    if (!entry) continue; // recording rules and `up` carry the labels they aggregate by
    const values = entry.labels[label];
    if (values === undefined) {
      problems.push(`${metric} has no label ${label} in: ${expr}`);
      continue;
    }
    if (values === null) continue;
    // Only plain alternatives (a|b|c) are checked; a real regex is left alone.
    const alternatives = op === "=~" || op === "!~" ? value.split("|") : [value];
    for (const alt of alternatives) {
      if (/^\w+$/.test(alt) && !values.includes(alt)) problems.push(`${metric}{${label}} has no value ${alt} in: ${expr}`);
    }
  }
  return problems;
}

function promtool(args: string[], cwd?: string) {
  const r = spawnSync("promtool", args, { cwd, encoding: "utf8", timeout: 60_000 });
  if (r.error) throw r.error;
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

function tempDir(t: { teardown: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), "i6pn-deploy-obs-"));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs expressions through promtool's PromQL parser as recording rules. */
function checkPromQL(dir: string, exprs: { name: string; expr: string }[]) {
  const file = join(dir, `exprs-${Math.random().toString(36).slice(2)}.yaml`);
  const doc = { groups: [{ name: "parse", rules: exprs.map((e, i) => ({ record: `parse:expr_${i}`, expr: e.expr })) }] };
  writeFileSync(file, stringify(doc));
  return promtool(["check", "rules", file]);
}

// ---------------------------------------------------------------- helpers' own tests

test("metricNames finds selected metrics and skips functions, keywords, labels and durations", (t) => {
  t.deepEqual(
    metricNames('sum by (node, le) (rate(a_total{x="b_c", y=~"d|e"}[5m] offset 1h)) / on (node) group_left (z) max(b:rec) > 0.9 and bool 1e3'),
    ["a_total", "b:rec"],
  );
  t.deepEqual(metricNames("time() - i6pn_x"), ["i6pn_x"]);
  t.deepEqual(metricNames("vector(0)"), []);
});

test("catalogue check rejects unknown metrics, unknown labels and unknown label values", (t) => {
  const allowed = seriesNames();
  const recorded = recordedNames();
  t.deepEqual(catalogueProblems('rate(i6pn_packets_total{verdict="drop", reason=~"spoofed_source|cross_region"}[5m])', allowed, recorded), []);
  t.regex(catalogueProblems("rate(i6pn_packets_dropped_total[5m])", allowed, recorded).join(), /unknown metric i6pn_packets_dropped_total/);
  t.regex(catalogueProblems('i6pn_packets_total{verdict="dropped"}', allowed, recorded).join(), /no value dropped/);
  t.regex(catalogueProblems('i6pn_packets_total{verdict=~"drop|denied"}', allowed, recorded).join(), /no value denied/);
  t.regex(catalogueProblems('i6pn_nats_connected{server="a"}', allowed, recorded).join(), /no label server/);
  t.deepEqual(catalogueProblems("i6pn_membership_apply_latency_seconds_bucket", allowed, recorded), []);
  t.deepEqual(catalogueProblems("i6pn_agent_process_resident_memory_bytes", allowed, recorded), []);
});

test("the catalogue is well formed: unique i6pn_ names, known types, counters end in _total", (t) => {
  const names = catalogue.metrics.map((m) => m.name);
  t.is(new Set(names).size, names.length, "duplicate metric names");
  for (const m of catalogue.metrics) {
    t.regex(m.name, /^i6pn_[a-z0-9_]+$/, m.name);
    t.true(["counter", "gauge", "histogram"].includes(m.type), m.name);
    t.is(m.type === "counter", m.name.endsWith("_total"), `${m.name}: only counters end in _total`);
    t.true(m.help.length > 10, `${m.name} needs help text`);
    if (m.type === "histogram") t.true((m.buckets ?? []).length > 3, `${m.name} needs buckets`);
    for (const [label, values] of Object.entries(m.labels)) {
      t.false(TARGET_LABELS.has(label) && m.name !== "i6pn_agent_info", `${m.name}: ${label} is a target label`);
      if (values) t.is(new Set(values).size, values.length, `${m.name}{${label}} has duplicates`);
    }
  }
  for (const m of catalogue.defaultMetrics.metrics) {
    t.true(m.name.startsWith(catalogue.defaultMetrics.prefix), m.name);
    // promtool check metrics rejects a non-counter named *_total
    t.is(m.type === "counter", m.name.endsWith("_total"), `${m.name}: only counters end in _total`);
  }
});

test("every label list of the catalogue that is a dataplane enum is the generated ABI's: hooks, verdicts, reasons, modes, maps", (t) => {
  const { problems, checked } = abiLabelProblems(catalogue.metrics);
  t.deepEqual(problems, []);
  for (const pair of ["i6pn_packets_total{reason}", "i6pn_bytes_total{reason}", "i6pn_packets_total{hook}", "i6pn_bytes_total{verdict}", "i6pn_attached_hooks{hook}", "i6pn_agent_info{mode}", "i6pn_map_entries{map}"]) {
    t.true(checked.includes(pair), `${pair} is checked (checked: ${checked.join(" ")})`);
  }
});

test("the ABI label check finds a forgotten reason, a reordered hook, an unknown map and an open list", (t) => {
  const edit = (name: string, label: string, values: string[] | null) =>
    catalogue.metrics.map((m) => (m.name === name ? { ...m, labels: { ...m.labels, [label]: values } } : m));
  const reasons = [...abi.REASON_NAMES];
  t.regex(abiLabelProblems(edit("i6pn_bytes_total", "reason", reasons.slice(0, -1))).problems.join(), /i6pn_bytes_total\{reason\}.*the ABI says/);
  t.regex(abiLabelProblems(edit("i6pn_attached_hooks", "hook", [...abi.HOOK_NAMES].reverse())).problems.join(), /i6pn_attached_hooks\{hook\}/);
  t.regex(abiLabelProblems(edit("i6pn_map_capacity", "map", ["endpoints", "routes"])).problems.join(), /names no map of the object: routes/);
  t.regex(abiLabelProblems(edit("i6pn_packets_total", "verdict", null)).problems.join(), /i6pn_packets_total\{verdict\} is \[open\]/);
  t.deepEqual(abiLabelProblems(edit("i6pn_dns_dropped_total", "reason", ["anything"])).problems, [], "an agent-side reason is not the ABI's");
});

// ---------------------------------------------------------------- Prometheus rules

test("promtool check rules accepts i6pn-rules.yaml", (t) => {
  const r = promtool(["check", "rules", rulesFile]);
  t.is(r.code, 0, r.out);
  t.regex(r.out, /SUCCESS: \d+ rules found/);
});

test("the rules hold the required alerts, each with a severity, a summary and a description", (t) => {
  const doc = parse(readFileSync(rulesFile, "utf8")) as RulesFile;
  const alerts = doc.groups.flatMap((g) => g.rules.filter((r) => r.alert));
  const names = alerts.map((a) => a.alert);
  for (const required of ["I6pnDropsRising", "I6pnMapPressure", "I6pnAgentNotSyncing", "I6pnApplyLatencyHigh", "I6pnNatsDisconnected", "I6pnNodeHeartbeatStale"]) {
    t.true(names.includes(required), `missing alert ${required}`);
  }
  for (const a of alerts) {
    t.true(["critical", "warning", "info"].includes(a.labels?.["severity"] ?? ""), `${a.alert} severity`);
    t.truthy(a.annotations?.["summary"], `${a.alert} summary`);
    t.truthy(a.annotations?.["description"], `${a.alert} description`);
  }
  t.regex(alerts.find((a) => a.alert === "I6pnMapPressure")?.expr ?? "", /> 0\.9\b/);
});

test("every rule expression names only catalogue metrics, labels and label values", (t) => {
  const doc = parse(readFileSync(rulesFile, "utf8")) as RulesFile;
  const allowed = seriesNames();
  const recorded = recordedNames();
  const problems = doc.groups.flatMap((g) => g.rules.flatMap((r) => catalogueProblems(r.expr, allowed, recorded)));
  t.deepEqual(problems, []);
});

test("promtool test rules: every alert fires on its case and stays quiet on the others", (t) => {
  const r = promtool(["test", "rules", rulesTestFile], promDir);
  t.is(r.code, 0, r.out);
  t.regex(r.out, /SUCCESS/);
  // Every alert of the rules has a firing case in the unit tests.
  const rules = parse(readFileSync(rulesFile, "utf8")) as RulesFile;
  const tests = parse(readFileSync(rulesTestFile, "utf8")) as { tests: { alert_rule_test?: { alertname: string; exp_alerts: unknown[] }[] }[] };
  const cases = tests.tests.flatMap((x) => x.alert_rule_test ?? []);
  for (const alert of rules.groups.flatMap((g) => g.rules.flatMap((r) => (r.alert ? [r.alert] : [])))) {
    t.true(cases.some((c) => c.alertname === alert && c.exp_alerts.length > 0), `${alert} has no firing test`);
    t.true(cases.some((c) => c.alertname === alert && c.exp_alerts.length === 0), `${alert} has no quiet test`);
  }
});

test("the rule unit tests fail when a threshold changes (they can fail)", (t) => {
  const dir = tempDir(t);
  copyFileSync(rulesTestFile, join(dir, "i6pn-rules.test.yaml"));
  const rules = readFileSync(rulesFile, "utf8");
  const mutated = rules.replace("expr: i6pn:map_pressure:ratio > 0.9", "expr: i6pn:map_pressure:ratio > 0.96");
  t.not(mutated, rules);
  writeFileSync(join(dir, "i6pn-rules.yaml"), mutated);
  const r = promtool(["test", "rules", "i6pn-rules.test.yaml"], dir);
  t.not(r.code, 0);
  t.regex(r.out, /alertname: I6pnMapPressure/);

  const quiet = rules.replace("i6pn_nats_connected == 0\n        for: 2m", "i6pn_nats_connected == 0\n        for: 0m");
  t.not(quiet, rules);
  writeFileSync(join(dir, "i6pn-rules.yaml"), quiet);
  const r2 = promtool(["test", "rules", "i6pn-rules.test.yaml"], dir);
  t.not(r2.code, 0);
  t.regex(r2.out, /alertname: I6pnNatsDisconnected/);
});

test("scrape config: pods of the DaemonSet, node and region labels from relabeling, valid for promtool", (t) => {
  const doc = parse(readFileSync(scrapeFile, "utf8")) as {
    rule_files: string[];
    scrape_configs: { job_name: string; kubernetes_sd_configs: { role: string; attach_metadata?: { node?: boolean } }[]; relabel_configs: { source_labels?: string[]; target_label?: string; action?: string; regex?: string }[] }[];
  };
  const job = doc.scrape_configs.find((s) => s.job_name === "i6pn-agent");
  t.truthy(job);
  if (!job) return;
  t.is(job.kubernetes_sd_configs[0]?.role, "pod");
  t.true(job.kubernetes_sd_configs[0]?.attach_metadata?.node, "attach_metadata.node is what exposes node labels to pod targets");
  const target = (label: string) => job.relabel_configs.find((r) => r.target_label === label)?.source_labels;
  t.deepEqual(target("node"), ["__meta_kubernetes_pod_node_name"]);
  t.deepEqual(target("region"), ["__meta_kubernetes_node_label_topology_kubernetes_io_region"]);
  t.true(job.relabel_configs.some((r) => r.action === "keep" && r.regex === "metrics"));
  t.deepEqual(doc.rule_files, ["i6pn-rules.yaml"]);

  // Debian's promtool is built without Kubernetes service discovery, so the
  // check runs on a copy with a static target in its place: it still checks
  // everything else, relabeling included, and loads the rules.
  const dir = tempDir(t);
  copyFileSync(rulesFile, join(dir, "i6pn-rules.yaml"));
  const staticDoc = structuredClone(doc) as unknown as { scrape_configs: Record<string, unknown>[] };
  for (const s of staticDoc.scrape_configs) {
    delete s["kubernetes_sd_configs"];
    s["static_configs"] = [{ targets: ["127.0.0.1:9465"] }];
  }
  writeFileSync(join(dir, "prometheus.yml"), stringify(staticDoc));
  const r = promtool(["check", "config", "prometheus.yml"], dir);
  t.is(r.code, 0, r.out);
  // and it can fail: a relabel action that does not exist
  writeFileSync(join(dir, "bad.yml"), stringify(staticDoc).replace("action: keep", "action: keepit"));
  t.not(promtool(["check", "config", "bad.yml"], dir).code, 0);
});

// ---------------------------------------------------------------- Grafana dashboard

interface Target { expr: string; refId: string; datasource?: { type: string; uid: string } }
interface Panel { id: number; type: string; title: string; datasource?: { type: string; uid: string }; targets?: Target[]; gridPos: { x: number; y: number; w: number; h: number }; panels?: Panel[] }
interface Variable { name: string; type: string; query: string | { query: string }; datasource?: { uid: string }; allValue?: string; multi?: boolean; includeAll?: boolean }
interface Dashboard { uid: string; title: string; templating: { list: Variable[] }; panels: Panel[]; schemaVersion: number }

const dashboard = JSON.parse(readFileSync(dashboardFile, "utf8")) as Dashboard;
const allPanels = dashboard.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const queries = allPanels.flatMap((p) => (p.targets ?? []).map((q) => ({ panel: p.title, ...q })));
const variableQueries = dashboard.templating.list
  .filter((v) => v.type === "query")
  .map((v) => ({ name: v.name, query: typeof v.query === "string" ? v.query : v.query.query }));

/** Grafana's variables replaced by values PromQL accepts. */
function expand(expr: string): string {
  return expr
    .replaceAll("$__rate_interval", "5m")
    .replaceAll("$__interval", "1m")
    .replaceAll("$__range", "1h")
    .replace(/\$\{?(region|node)\}?/g, ".*");
}

/** label_values(selector, label) -> selector */
function labelValuesSelector(query: string): string {
  const m = /^label_values\((.*),\s*(\w+)\)$/.exec(query.trim());
  if (!m?.[1]) throw new Error(`not a label_values query: ${query}`);
  return m[1];
}

test("dashboard: datasource is a variable, region and node are variables, every panel uses them", (t) => {
  const byName = new Map(dashboard.templating.list.map((v) => [v.name, v]));
  t.is(byName.get("datasource")?.type, "datasource");
  t.is(byName.get("datasource")?.query, "prometheus");
  for (const name of ["region", "node"]) {
    const v = byName.get(name);
    t.is(v?.type, "query", name);
    t.is(v?.datasource?.uid, "${datasource}", name);
    t.true(v?.multi && v.includeAll, `${name} should allow several values and All`);
    t.is(v?.allValue, ".*", name);
  }
  t.regex(labelValuesSelector(variableQueries.find((q) => q.name === "node")?.query ?? ""), /region=~"\$region"/, "node follows region");
  t.true(queries.length >= 20, `only ${queries.length} queries`);
  for (const p of allPanels.filter((p) => p.type !== "row")) {
    t.is(p.datasource?.uid, "${datasource}", `panel ${p.title}`);
    t.true((p.targets ?? []).length > 0, `panel ${p.title} has no query`);
    t.true(p.gridPos.x + p.gridPos.w <= 24, `panel ${p.title} is wider than the grid`);
  }
  for (const q of queries) {
    t.is(q.datasource?.uid, "${datasource}", `${q.panel} ${q.refId}`);
    t.regex(q.expr, /region=~"\$region"/, `${q.panel} ${q.refId} ignores $region`);
  }
  const ids = allPanels.map((p) => p.id);
  t.is(new Set(ids).size, ids.length, "panel ids must be unique");
  // No data source is hard-wired anywhere in the file.
  t.notRegex(readFileSync(dashboardFile, "utf8"), /"uid":\s*"(?!\$\{datasource\})[^"]*"[^}]*"type":\s*"prometheus"|"type":\s*"prometheus",\s*"uid":\s*"(?!\$\{datasource\})/);
});

test("dashboard: has the panels operators need (verdicts by reason, drops, map pressure, sync, health)", (t) => {
  const all = queries.map((q) => q.expr).join("\n");
  const titles = allPanels.map((p) => p.title).join("\n");
  t.regex(all, /sum by \(verdict, reason\) \(rate\(i6pn_packets_total/);
  t.regex(all, /verdict=~"drop\|would_drop"/);
  t.regex(all, /i6pn_map_entries[^\n]*\/[^\n]*i6pn_map_capacity/);
  t.regex(all, /histogram_quantile\(0\.99, [^\n]*i6pn_membership_apply_latency_seconds_bucket/);
  t.regex(all, /i6pn_membership_last_revision/);
  t.regex(all, /i6pn_nats_connected/);
  t.regex(titles, /Map pressure/);
  t.regex(titles, /Heartbeat age/);
  // Every i6pn metric of the catalogue is on the dashboard somewhere.
  const used = new Set(queries.flatMap((q) => metricNames(expand(q.expr))));
  const unused = catalogue.metrics
    .filter((m) => ![m.name, `${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`].some((n) => used.has(n)))
    .map((m) => m.name);
  t.deepEqual(unused, []);
});

test("dashboard: every query parses as PromQL (promtool) and names only catalogue metrics", (t) => {
  const dir = tempDir(t);
  const exprs = [
    ...queries.map((q) => ({ name: `${q.panel} ${q.refId}`, expr: expand(q.expr) })),
    ...variableQueries.map((q) => ({ name: `variable ${q.name}`, expr: expand(labelValuesSelector(q.query)) })),
  ];
  const r = checkPromQL(dir, exprs);
  t.is(r.code, 0, r.out);
  t.regex(r.out, new RegExp(`SUCCESS: ${exprs.length} rules found`));

  const allowed = seriesNames();
  const recorded = recordedNames();
  const problems = exprs.flatMap((e) => catalogueProblems(e.expr, allowed, recorded).map((p) => `${e.name}: ${p}`));
  t.deepEqual(problems, []);
});

test("the PromQL check fails on a broken expression (it can fail)", (t) => {
  const dir = tempDir(t);
  const r = checkPromQL(dir, [{ name: "ok", expr: "sum(rate(i6pn_packets_total[5m]))" }, { name: "bad", expr: "sum(rate(i6pn_packets_total[5m])" }]);
  t.not(r.code, 0);
  t.regex(r.out, /parse|unclosed|unexpected/i);
  const unsubstituted = checkPromQL(dir, [{ name: "raw", expr: 'rate(i6pn_packets_total{node=~"$node"}[$__rate_interval])' }]);
  t.not(unsubstituted.code, 0, "Grafana's variables must be expanded before parsing");
});
