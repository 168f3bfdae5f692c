// deploy/Dockerfile, checked without a Docker engine: a small parser reads its
// instructions and stages, and the checks below hold it to what the image
// must be (multi-stage, pinned Node 20 base, only production dependencies and
// libbpf1 in the runtime stage, non-root user, COPY sources that exist and are
// not hidden by deploy/Dockerfile.dockerignore). Each check is shown to fail
// on a Dockerfile broken on purpose. Finally the build stage's own steps run
// here on exactly the files it copies, to prove the copied set is enough.
import test from "ava";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";

const root = fileURLToPath(new URL("..", import.meta.url));
const dockerfilePath = join(root, "deploy/Dockerfile");
const ignorePath = join(root, "deploy/Dockerfile.dockerignore");
const dockerfile = readFileSync(dockerfilePath, "utf8");
const ignoreFile = readFileSync(ignorePath, "utf8");

// ---------------------------------------------------------------- parser

interface Instruction { cmd: string; args: string; line: number }
interface Copy { from?: string; sources: string[]; dest: string; line: number }
interface Stage { base: string; name?: string; instructions: Instruction[] }
interface ParsedDockerfile { globalArgs: Map<string, string | undefined>; stages: Stage[] }

function parseDockerfile(text: string): ParsedDockerfile {
  const instructions: Instruction[] = [];
  let buf = "", start = 0;
  text.split("\n").forEach((raw, i) => {
    const line = raw.replace(/\r$/, "");
    if (buf === "" && (/^\s*#/.test(line) || line.trim() === "")) return;
    if (buf !== "" && /^\s*#/.test(line)) return; // comments inside a continued instruction
    if (buf === "") start = i + 1;
    if (line.endsWith("\\")) {
      buf += line.slice(0, -1) + " ";
      return;
    }
    buf += line;
    const m = /^\s*([A-Za-z]+)\s+([\s\S]*)$/.exec(buf);
    if (!m) throw new Error(`Dockerfile line ${start}: not an instruction: ${buf}`);
    instructions.push({ cmd: (m[1] ?? "").toUpperCase(), args: (m[2] ?? "").trim(), line: start });
    buf = "";
  });
  if (buf !== "") throw new Error("Dockerfile ends inside a continued line");
  const globalArgs = new Map<string, string | undefined>();
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.cmd === "FROM") {
      const words = ins.args.split(/\s+/).filter((w) => !w.startsWith("--"));
      const asIdx = words.findIndex((w) => w.toLowerCase() === "as");
      stages.push({ base: words[0] ?? "", ...(asIdx > 0 ? { name: words[asIdx + 1] } : {}), instructions: [] });
    } else if (stages.length === 0) {
      if (ins.cmd !== "ARG") throw new Error(`Dockerfile line ${ins.line}: ${ins.cmd} before the first FROM`);
      const [k, v] = ins.args.split(/=(.*)/s);
      globalArgs.set(k ?? "", v);
    } else {
      stages.at(-1)?.instructions.push(ins);
    }
  }
  return { globalArgs, stages };
}

function parseCopy(ins: Instruction): Copy {
  let args = ins.args;
  let from: string | undefined;
  for (;;) {
    const m = /^--([a-z-]+)(?:=(\S+))?\s+/.exec(args);
    if (!m) break;
    if (m[1] === "from") from = m[2];
    args = args.slice(m[0].length);
  }
  const words = args.startsWith("[") ? (JSON.parse(args) as string[]) : args.split(/\s+/);
  return { ...(from ? { from } : {}), sources: words.slice(0, -1), dest: words.at(-1) ?? "", line: ins.line };
}

/** .dockerignore semantics: patterns in order, the last match wins, a match on a parent directory counts. */
function ignored(patterns: string[], path: string): boolean {
  const toRegex = (p: string) =>
    new RegExp(
      "^" +
        p
          .replace(/^\/+|\/+$/g, "")
          .split(/(\*\*\/?|\*|\?)/)
          .map((part) => (part === "**/" || part === "**" ? "(?:.*/)?" + (part === "**" ? ".*" : "") : part === "*" ? "[^/]*" : part === "?" ? "[^/]" : part.replace(/[.+^${}()|[\]\\]/g, "\\$&")))
          .join("") +
        "$",
    );
  const parts = path.split("/");
  const candidates = parts.map((_, i) => parts.slice(0, i + 1).join("/"));
  let out = false;
  for (const raw of patterns) {
    const neg = raw.startsWith("!");
    const re = toRegex(neg ? raw.slice(1) : raw);
    if (candidates.some((c) => re.test(c))) out = !neg;
  }
  return out;
}

const ignorePatterns = (text: string) =>
  text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));

// ---------------------------------------------------------------- checks

const REQUIRED_SOURCES = ["package.json", "package-lock.json", "tsconfig.json", "Makefile", "bpf/", "lib/", "agent/", "controller/", "gateway/"];
const BUILD_TOOLS = ["clang", "llvm", "libbpf-dev", "bpftool", "make"];

function aptPackages(stage: Stage): string[] {
  return stage.instructions
    .filter((i) => i.cmd === "RUN" && /apt-get install/.test(i.args))
    .flatMap((i) => (/apt-get install\s+(.*?)(?:&&|$)/.exec(i.args)?.[1] ?? "").split(/\s+/).filter((w) => w && !w.startsWith("-")));
}

/** What is wrong with a Dockerfile (and its ignore file); empty when nothing is. */
function dockerfileProblems(text: string, ignore: string, exists: (p: string) => boolean): string[] {
  const p: string[] = [];
  const check = (ok: unknown, problem: string) => {
    if (!ok) p.push(problem);
  };
  let df: ParsedDockerfile;
  try {
    df = parseDockerfile(text);
  } catch (err) {
    return [(err as Error).message];
  }
  const baseArg = df.globalArgs.get("NODE_IMAGE");
  check(baseArg && /^node:20(\.\d+){0,2}-bookworm-slim(@sha256:[0-9a-f]{64})?$/.test(baseArg), `ARG NODE_IMAGE must default to a Node 20 Debian 12 slim image with a version (node:20.x-bookworm-slim), not ${baseArg}`);
  const names = df.stages.map((s) => s.name);
  check(df.stages.length >= 3, "multi-stage: build, prod-deps and runtime stages");
  for (const [i, s] of df.stages.entries()) {
    check(s.name, `stage ${i} (FROM ${s.base}) needs a name (AS ...)`);
    const earlier = names.slice(0, i);
    check(s.base === "${NODE_IMAGE}" || earlier.includes(s.base), `stage ${s.name}: FROM ${s.base} must be \${NODE_IMAGE} or an earlier stage (one pinned base)`);
    check(!/:latest\b/.test(s.base) && (s.base.includes(":") || s.base.startsWith("$") || earlier.includes(s.base)), `stage ${s.name}: base ${s.base} is not pinned`);
  }
  check(new Set(names).size === names.length, "stage names must be unique");
  for (const n of ["build", "prod-deps", "runtime"]) check(names.includes(n), `no stage named ${n}`);
  check(df.stages.at(-1)?.name === "runtime", "the last stage (the image) must be runtime");
  const stage = (n: string) => df.stages.find((s) => s.name === n) ?? { base: "", instructions: [] };
  const runs = (s: Stage) => s.instructions.filter((i) => i.cmd === "RUN").map((i) => i.args);
  const copies = (s: Stage) => s.instructions.filter((i) => i.cmd === "COPY").map(parseCopy);
  for (const s of df.stages) {
    check(!s.instructions.some((i) => i.cmd === "ADD"), `stage ${s.name}: use COPY, not ADD`);
    for (const r of runs(s).filter((r) => /apt-get install/.test(r))) {
      check(/--no-install-recommends/.test(r), `stage ${s.name}: apt-get install --no-install-recommends`);
      check(/apt-get update/.test(r) && /rm -rf \/var\/lib\/apt\/lists/.test(r), `stage ${s.name}: apt-get update, install and rm -rf /var/lib/apt/lists in one RUN`);
    }
  }

  // build: compilers, the lock file, the whole build.
  const build = stage("build");
  for (const tool of BUILD_TOOLS) check(aptPackages(build).includes(tool), `build stage must install ${tool}`);
  check(runs(build).some((r) => /^npm ci\b/.test(r) && !/--omit=dev/.test(r)), "build stage: npm ci (with dev dependencies: tsc, tsx)");
  check(!runs(build).some((r) => /npm install/.test(r)), "build stage: npm ci from the lock file, not npm install");
  check(runs(build).some((r) => /^npm ci\b.*--ignore-scripts/.test(r)), "build stage: npm ci --ignore-scripts (dev-only native modules would need a C++ toolchain)");
  check(runs(build).some((r) => /^make (bpf ts|build)\b/.test(r)), "build stage must run `make bpf ts`");
  const buildCopies = copies(build);
  const firstNpm = build.instructions.findIndex((i) => i.cmd === "RUN" && /npm ci/.test(i.args));
  const lockCopy = build.instructions.findIndex((i) => i.cmd === "COPY" && /package-lock\.json/.test(i.args));
  const srcCopy = build.instructions.findIndex((i) => i.cmd === "COPY" && /\b(agent|lib|bpf)\//.test(i.args));
  check(lockCopy >= 0 && lockCopy < firstNpm && firstNpm < srcCopy, "build stage: copy package*.json and npm ci before the sources (layer cache)");

  // prod-deps: production dependencies only.
  check(runs(stage("prod-deps")).some((r) => /^npm ci\b.*--omit=dev/.test(r)), "prod-deps stage: npm ci --omit=dev");

  // runtime: what runs on the node, nothing else.
  const runtime = stage("runtime");
  const rtPackages = aptPackages(runtime);
  for (const pkg of ["libbpf1", "iproute2"]) check(rtPackages.includes(pkg), `runtime must install ${pkg}`);
  for (const pkg of [...BUILD_TOOLS, "gcc", "build-essential", "python3"]) check(!rtPackages.includes(pkg), `runtime must not install ${pkg}`);
  check(!runs(runtime).some((r) => /npm (ci|install)/.test(r)), "runtime must not run npm (its node_modules come from prod-deps)");
  const rtCopies = copies(runtime);
  check(rtCopies.some((c) => c.from === "prod-deps" && c.sources.some((s) => /node_modules$/.test(s))), "runtime: node_modules from prod-deps");
  check(!rtCopies.some((c) => c.from === "build" && c.sources.some((s) => /node_modules/.test(s))), "runtime must not copy node_modules from build (dev dependencies)");
  check(rtCopies.some((c) => c.from === "build" && c.sources.includes("/src/dist")), "runtime: dist from build");
  check(rtCopies.some((c) => c.from === "build" && c.sources.includes("/src/build/bpf") && /build\/bpf$/.test(c.dest)), "runtime: the BPF objects (build/bpf, next to package.json: the agent's --object default)");
  check(rtCopies.some((c) => c.from === "build" && c.sources.includes("/src/package.json")), "runtime: package.json (the agent's version and package root)");
  const users = runtime.instructions.filter((i) => i.cmd === "USER");
  const lastUser = users.at(-1)?.args.split(":")[0];
  check(lastUser && !["0", "root"].includes(lastUser), `runtime must end as a non-root USER, not ${lastUser ?? "(none)"}`);
  const entry = runtime.instructions.filter((i) => i.cmd === "ENTRYPOINT").at(-1)?.args ?? "";
  check(/^\[.*"\/usr\/local\/bin\/i6pn-agent"\]$/.test(entry), "runtime: ENTRYPOINT [\"/usr/local/bin/i6pn-agent\"] (exec form: SIGTERM reaches the agent)");
  const installed = rtCopies.filter((c) => !c.from).flatMap((c) => c.sources.map((s) => (c.dest.endsWith("/") ? c.dest + s.split("/").pop() : c.dest)));
  for (const bin of ["/usr/local/bin/i6pn-agent", "/usr/local/bin/i6pnctl", "/usr/local/bin/i6pn-gateway", "/usr/local/bin/i6pn-node-region"]) check(installed.includes(bin), `runtime must install ${bin}`);

  // Sources from the build context: they exist, and the ignore file lets them through.
  const patterns = ignorePatterns(ignore);
  const contextSources = df.stages.flatMap((s) => copies(s).filter((c) => !c.from).flatMap((c) => c.sources));
  for (const src of contextSources) {
    check(!/[*?[]/.test(src), `COPY ${src}: name files, not globs`);
    check(exists(src), `COPY ${src}: no such file in the repository`);
    check(!ignored(patterns, src.replace(/\/$/, "")), `COPY ${src}: excluded by deploy/Dockerfile.dockerignore`);
  }
  for (const req of REQUIRED_SOURCES) check(contextSources.includes(req) || contextSources.includes(req.replace(/\/$/, "")), `the build must COPY ${req}`);
  for (const secret of ["node_modules/x", "agent/node_modules/x", "secrets/nats/agents/node-a.creds", "deploy/image/node-a.creds", "lib/i6pn.nk", "dist/agent/main.js", "build/bpf/i6pn.bpf.o", ".git/config", "test/deploy-image.test.ts"]) {
    check(ignored(patterns, secret), `deploy/Dockerfile.dockerignore must exclude ${secret}`);
  }
  return p;
}

const existsInRepo = (p: string) => existsSync(join(root, p));

// ---------------------------------------------------------------- tests

test("parser: stages, continued lines, COPY flags and .dockerignore matching", (t) => {
  const df = parseDockerfile('ARG B=node:20\nFROM ${B} AS one\nRUN a \\\n  && b\nFROM one AS two\nCOPY --from=one --chown=1:1 /x /y ./z/\n');
  t.deepEqual(df.globalArgs.get("B"), "node:20");
  t.deepEqual(df.stages.map((s) => [s.base, s.name]), [["${B}", "one"], ["one", "two"]]);
  t.is(df.stages[0]?.instructions[0]?.args, "a    && b");
  t.deepEqual(parseCopy(df.stages[1]!.instructions[0]!), { from: "one", sources: ["/x", "/y"], dest: "./z/", line: 6 });
  const pats = ["*", "!agent", "**/node_modules", "agent/bpf/abi.generated.ts"];
  t.false(ignored(pats, "agent/main.ts"));
  t.true(ignored(pats, "agent/node_modules/x"));
  t.true(ignored(pats, "agent/bpf/abi.generated.ts"));
  t.true(ignored(pats, "test/x.ts"));
  t.throws(() => parseDockerfile("RUN x\nFROM y"), { message: /before the first FROM/ });
});

test("deploy/Dockerfile: multi-stage, pinned Node 20, prod deps and libbpf1 at runtime, non-root, sources present", (t) => {
  t.deepEqual(dockerfileProblems(dockerfile, ignoreFile, existsInRepo), []);
  const df = parseDockerfile(dockerfile);
  t.deepEqual(df.stages.map((s) => s.name), ["build", "prod-deps", "runtime"]);
});

test("each check fails on a Dockerfile broken on purpose (they can fail)", (t) => {
  const mutants: [string, string, RegExp][] = [
    ["ARG NODE_IMAGE=node:20.19-bookworm-slim", "ARG NODE_IMAGE=node:latest", /Node 20/],
    ["ARG NODE_IMAGE=node:20.19-bookworm-slim", "ARG NODE_IMAGE=node:22-bookworm-slim", /Node 20/],
    ["FROM ${NODE_IMAGE} AS prod-deps", "FROM node:lts AS prod-deps", /FROM node:lts/],
    ["FROM ${NODE_IMAGE} AS runtime", "FROM ${NODE_IMAGE}", /needs a name/],
    ["USER 65532:65532", "USER root", /non-root USER/],
    ["USER 65532:65532", "", /non-root USER/],
    ["libbpf1 iproute2", "iproute2", /runtime must install libbpf1/],
    ["libbpf1 iproute2", "libbpf1 iproute2 clang", /runtime must not install clang/],
    ["COPY --from=prod-deps /app/node_modules ./node_modules", "COPY --from=build /src/node_modules ./node_modules", /node_modules from prod-deps|must not copy node_modules from build/],
    ["RUN npm ci --omit=dev --no-audit --no-fund", "RUN npm ci --no-audit --no-fund", /--omit=dev/],
    ["COPY controller/ controller/", "COPY controllers/ controller/", /controllers\/: no such file|must COPY controller/],
    ["COPY lib/ lib/", "COPY lib/*.ts lib/", /globs/],
    ["RUN make bpf ts", "RUN npx tsc", /make bpf ts/],
    ['ENTRYPOINT ["/usr/local/bin/i6pn-agent"]', "ENTRYPOINT /usr/local/bin/i6pn-agent", /exec form/],
    [" \\\n && rm -rf /var/lib/apt/lists/* \\\n && groupadd", " \\\n && groupadd", /rm -rf \/var\/lib\/apt\/lists/],
    ["COPY --from=build /src/build/bpf ./build/bpf", "", /BPF objects/],
    ["COPY deploy/image/i6pn-node-region.cjs /usr/local/bin/i6pn-node-region", "", /i6pn-node-region/],
  ];
  for (const [from, to, expected] of mutants) {
    t.true(dockerfile.includes(from), `the Dockerfile no longer contains ${JSON.stringify(from)}: update this test`);
    const problems = dockerfileProblems(dockerfile.replace(from, to), ignoreFile, existsInRepo);
    t.regex(problems.join("\n"), expected, `${from} -> ${to} went unnoticed`);
  }
  t.regex(dockerfileProblems(dockerfile, ignoreFile.replace("!lib\n", ""), existsInRepo).join("\n"), /COPY lib\/: excluded/);
  t.regex(dockerfileProblems(dockerfile, ignoreFile.replace("**/*.creds\n", ""), existsInRepo).join("\n"), /exclude deploy\/image\/node-a\.creds/);
});

test("the DaemonSet runs the scripts the image installs, and the image tag is the package version", (t) => {
  const ds = parse(readFileSync(join(root, "deploy/kubernetes/daemonset.yaml"), "utf8"));
  const version = (JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { version: string }).version;
  const pod = ds.spec.template.spec;
  const region = pod.initContainers.find((c: { name: string }) => c.name === "node-region");
  t.is(region.command[0], "i6pn-node-region");
  t.regex(dockerfile, /COPY deploy\/image\/i6pn-node-region\.cjs \/usr\/local\/bin\/i6pn-node-region\n/);
  t.is(pod.containers[0].command, undefined, "the agent container uses the image's ENTRYPOINT");
  for (const script of ["i6pn-agent", "i6pnctl", "i6pn-gateway"]) t.is(spawnSync("sh", ["-n", join(root, "deploy/image", script)]).status, 0, script);
  t.is(spawnSync(process.execPath, ["--check", join(root, "deploy/image/i6pn-node-region.cjs")]).status, 0);
  t.is(pod.containers[0].image, `registry.example.com/i6pn:${version}`);
});

/**
 * Runs the Dockerfile's stages on this machine, without Docker: each stage gets
 * a directory standing for its root filesystem; COPY copies from the build
 * context (after the ignore file) or from an earlier stage's directory; RUN
 * runs in the stage's WORKDIR, except apt-get (the packages are the host's,
 * installed by make deps) and npm cache clean (it would empty the host's
 * cache). npm ci gets --prefer-offline (the host's cache is warm after make deps).
 */
function simulateStages(t: { log: (...a: unknown[]) => void }, tmp: string): Map<string, string> {
  const patterns = ignorePatterns(ignoreFile);
  const context = spawnSync("git", ["ls-files", "-co", "--exclude-standard"], { cwd: root, encoding: "utf8" })
    .stdout.split("\n")
    .filter((f) => f && existsSync(join(root, f)) && !ignored(patterns, f));
  const roots = new Map<string, string>();
  for (const stage of parseDockerfile(dockerfile).stages) {
    const name = stage.name ?? "";
    const rootDir = join(tmp, name);
    mkdirSync(rootDir, { recursive: true });
    roots.set(name, rootDir);
    let workdir = "/";
    const inStage = (p: string) => join(rootDir, p.startsWith("/") ? p : join(workdir, p));
    for (const ins of stage.instructions) {
      if (ins.cmd === "WORKDIR") {
        workdir = ins.args.startsWith("/") ? ins.args : join(workdir, ins.args);
        mkdirSync(inStage(workdir), { recursive: true });
      } else if (ins.cmd === "COPY") {
        const c = parseCopy(ins);
        const dest = inStage(c.dest);
        for (const src of c.sources) {
          if (c.from) {
            const from = join(roots.get(c.from) ?? "/nonexistent", src);
            const target = c.dest.endsWith("/") ? join(dest, src.split("/").pop() ?? "") : dest;
            mkdirSync(dirname(target), { recursive: true });
            cpSync(from, target, { recursive: true });
            continue;
          }
          const prefix = src.replace(/\/$/, "");
          const files = context.filter((f) => f === prefix || f.startsWith(`${prefix}/`));
          if (files.length === 0) throw new Error(`COPY ${src}: nothing in the build context`);
          for (const file of files) {
            const target = src.endsWith("/") ? join(dest, file.slice(prefix.length + 1)) : c.dest.endsWith("/") ? join(dest, file.split("/").pop() ?? "") : dest;
            mkdirSync(dirname(target), { recursive: true });
            cpSync(join(root, file), target);
          }
        }
      } else if (ins.cmd === "RUN") {
        const steps = ins.args.split(/\s*&&\s*/).filter((step) => !/apt-get|\/var\/lib\/apt|groupadd|useradd|npm cache clean/.test(step));
        for (const step of steps) {
          const cmd = /^npm ci\b/.test(step) ? `${step} --prefer-offline` : step;
          t.log(`${name}: ${cmd}`);
          const r = spawnSync("sh", ["-ec", cmd], { cwd: inStage(workdir), encoding: "utf8", timeout: 280_000, env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
          if (r.status !== 0) throw new Error(`stage ${name}: \`${cmd}\` failed (${r.status}):\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`);
        }
      }
    }
  }
  return roots;
}

test("the stages run without Docker: build compiles the copied files, prod-deps has no dev dependency, the runtime's files start the agent and i6pnctl", (t) => {
  for (const tool of ["clang", "bpftool", "make", "npm"]) {
    if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) return t.fail(`${tool} is missing: run make deps`);
  }
  const tmp = mkdtempSync(join(tmpdir(), "i6pn-deploy-image-"));
  t.teardown(() => rmSync(tmp, { recursive: true, force: true }));
  const roots = simulateStages(t, tmp);
  const build = join(roots.get("build") ?? "", "src");
  const app = join(roots.get("runtime") ?? "", "app");
  t.true(existsSync(join(build, "build/bpf/i6pn.bpf.o")), "the build stage made no BPF object");
  t.true(existsSync(join(build, "dist/agent/main.js")), "the build stage made no dist/agent/main.js");

  // Production dependencies only, and all of them: the compiled agent and CLI start.
  const lock = JSON.parse(readFileSync(join(root, "package-lock.json"), "utf8")) as { packages: Record<string, { dev?: boolean }> };
  const devOnly = Object.entries(lock.packages).filter(([k, v]) => k.startsWith("node_modules/") && v.dev).map(([k]) => k);
  t.true(devOnly.length > 10);
  t.deepEqual(devOnly.filter((k) => existsSync(join(app, k))), [], "dev dependencies in the runtime image");
  for (const [args, expected] of [
    [["dist/agent/main.js", "--help"], /Usage: i6pn-agent/],
    [["dist/agent/main.js", "teardown", "--help"], /Usage: i6pn-agent teardown/],
    [["dist/controller/cli.js", "--help"], /Usage: i6pnctl/],
    [["dist/gateway/main.js", "--help"], /Usage: i6pn-gateway/],
  ] as const) {
    const r = spawnSync(process.execPath, [...args], { cwd: app, encoding: "utf8", timeout: 60_000, env: { PATH: process.env["PATH"] ?? "" } });
    t.is(r.status, 0, `${args.join(" ")}: ${r.stderr}`);
    t.regex(r.stdout, expected);
  }
  const rt = roots.get("runtime") ?? "";
  for (const bin of ["i6pn-agent", "i6pnctl", "i6pn-gateway", "i6pn-node-region"]) t.true(existsSync(join(rt, "usr/local/bin", bin)), bin);
});
