// Shared by the browser tests: start the real `toru` on temp dirs, read its setup code, take
// screenshots, run the CLI, watch a page for errors, run a flow on a host of its own.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, "../..");
// The built binaries: TORU_TARGET_DIR, else cargo's CARGO_TARGET_DIR/debug, else target/debug.
export const bin = process.env.TORU_TARGET_DIR ||
  (process.env.CARGO_TARGET_DIR ? path.join(process.env.CARGO_TARGET_DIR, "debug") : path.join(repo, "target/debug"));
export const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
export const shots = process.env.TORU_SHOTS || "/tmp/toru-browser-shots";
export const WAIT = 30_000;

export function log(...a) { console.log("[browser]", ...a); }

// Starts `toru` on loopback port 0 with its own temp dirs (or those under `root`, to start again
// on the dirs of a host that stopped or was killed). `fill(pluginsDir)` puts plugins in place
// before it starts; `config` (TOML text) is passed with --config; `env` is added to its
// environment.
export async function startHost({ fill, config, prefix = "tb-", env, root: reuse } = {}) {
  const root = reuse || fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(root, 0o755); // reachable by the plugins' own uids (root host): isolation on
  // A killed host leaves its address file behind: wait for the new one's.
  fs.rmSync(path.join(root, "run", "http.addr"), { force: true });

  const dirs = { root, data: path.join(root, "data"), plugins: path.join(root, "plugins"), run: path.join(root, "run") };
  fs.mkdirSync(dirs.plugins, { recursive: true });
  if (fill) fill(dirs.plugins);
  const args = ["--listen", "127.0.0.1:0", "--data-dir", dirs.data, "--plugins-dir", dirs.plugins,
    "--runtime-dir", dirs.run, "--log-level", "debug"];
  if (config) {
    fs.writeFileSync(path.join(root, "config.toml"), config);
    args.push("--config", path.join(root, "config.toml"));
  }
  const logFile = fs.openSync(path.join(root, "host.log"), "a");
  const child = spawn(path.join(bin, "toru"), args, { stdio: ["ignore", logFile, logFile], env: { ...process.env, ...(env || {}) } });
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const deadline = Date.now() + WAIT;
  let addr = null;
  while (Date.now() < deadline) {
    try {
      addr = fs.readFileSync(path.join(dirs.run, "http.addr"), "utf8").trim();
      const r = await fetch(`http://${addr}/api/health`);
      if (r.ok) break;
    } catch { /* not yet */ }
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!addr || child.exitCode !== null) {
    throw new Error("toru did not start:\n" + fs.readFileSync(path.join(root, "host.log"), "utf8"));
  }
  const host = {
    ...dirs, addr, url: `http://${addr}/`, child, exited,
    log: () => fs.readFileSync(path.join(root, "host.log"), "utf8"),
    // `toru` subcommands against this host (its runtime dir holds the control socket).
    cli: (args, input) => cli(args, { input, env: { TORU_RUNTIME_DIR: dirs.run, TORU_DATA_DIR: dirs.data, TORU_PLUGINS_DIR: dirs.plugins } }),
    async stop() {
      child.kill("SIGTERM");
      await exited;
    },
  };
  return host;
}

// Runs `toru ARGS…`; returns stdout, throws with stderr if it fails.
export function cli(args, { cwd, input, env } = {}) {
  const r = spawnSync(path.join(bin, "toru"), args, { cwd, input, env: { ...process.env, ...(env || {}) }, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`toru ${args.join(" ")} failed (${r.status}): ${r.stderr}${r.error || ""}`);
  return r.stdout;
}

export async function readSetupCode(host) {
  const file = path.join(host.data, "setup-code");
  const deadline = Date.now() + WAIT;
  while (Date.now() < deadline) {
    if (fs.existsSync(file)) return fs.readFileSync(file, "utf8").trim();
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("no setup code file");
}

// First-start setup through the UI; ends on the plugin manager.
export async function setupAdmin(page, host, password) {
  await page.goto(host.url);
  await page.getByTestId("setup-code").fill(await readSetupCode(host));
  await page.getByTestId("setup-password").fill(password);
  await page.getByTestId("setup-password2").fill(password);
  await page.getByTestId("setup-submit").click();
  await page.getByTestId("plugin-cards").waitFor();
}

// Logs in through the UI as `username`, from the host's front page.
export async function login(page, host, username, password) {
  await page.goto(host.url);
  await page.getByTestId("login-username").fill(username);
  await page.getByTestId("login-password").fill(password);
  await page.getByTestId("login-submit").click();
}

// Console and page errors on `page` go to `problems`, named by `label` — except the resource
// errors Chromium logs for the HTTP statuses in `expected` (refusals the test provokes).
export function watch(page, problems, label, expected = []) {
  page.setDefaultTimeout(WAIT);
  const provoked = expected.length ? new RegExp(`status of (${expected.join("|")})`) : null;
  page.on("console", (m) => {
    if (m.type() === "error" && !provoked?.test(m.text())) problems.push(label + " console: " + m.text());
  });
  page.on("pageerror", (e) => problems.push(label + " page error: " + e.message));
}

// A flow on a host of its own, the shape the package tests share: a work dir (mkdtemp makes it
// 0700: plugins under their own uids on a root host must pass it, else the host runs them as
// itself and says isolation is off), a host started with `prefix` and `config`,
// `prepare(host, work)` (e.g. a package installed with the CLI), a page in a new context of
// `viewport` watched as `name` (`expected`: the statuses the flow provokes), the first-start
// setup with `password`, then `body({ host, page, work, problems })`. On a failure: a
// screenshot, the host log's tail and the problems so far. The host always stops; then no
// problems may be left, and both dirs are removed.
export async function hostFlow(browser, { name, prefix, config, password, viewport, expected, prepare }, body) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(work, 0o755);
  const problems = [];
  const host = await startHost({ prefix, config });
  log(name, "host at", host.url);
  let page = null;
  try {
    if (prepare) await prepare(host, work);
    const ctx = await browser.newContext({ viewport });
    page = await ctx.newPage();
    watch(page, problems, name, expected);
    await setupAdmin(page, host, password);
    await body({ host, page, work, problems });
    await ctx.close();
  } catch (e) {
    if (page) await shot(page, "failed-" + name).catch(() => {});
    console.error(name + " host log:\n" + host.log().split("\n").slice(-60).join("\n"));
    if (problems.length) console.error("browser problems:\n" + problems.join("\n"));
    throw e;
  } finally {
    await host.stop();
  }
  assert.deepEqual(problems, [], "no console errors");
  fs.rmSync(host.root, { recursive: true, force: true });
  fs.rmSync(work, { recursive: true, force: true });
}

export async function shot(page, name) {
  fs.mkdirSync(shots, { recursive: true });
  const file = path.join(shots, name + ".png");
  await page.screenshot({ path: file, fullPage: false });
  log("screenshot", file);
}

export function launchArgs() {
  return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"];
}
