// Browser test of the sysinfo plugin (issue 13) on a host of its own: plugins/sysinfo packed with
// `toru plugin pack` (the built `sysinfo` binary at this machine's entry), signed by a key the host
// trusts and installed with the CLI — confined when the host runs as root. Its page must show live
// figures (CPU total and per-core bars, memory, mounts, interfaces including loopback, the
// temperature or "not available", the Pi's flags as "not available" off a Pi), a history chart
// whose SVG lines gain points, follow a settings change made on the plugin's Settings page (a value
// outside the schema refused by the form first), fit a phone's width, and stop asking the plugin
// once the user leaves the page.
//
// Called by run.mjs; alone: `node sysinfo.mjs` (after `cargo build --workspace`).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { chromium } from "playwright-core";
import { bin, chromiumPath, cli, hostFlow, launchArgs, log, repo, shot } from "./lib.mjs";

const PASSWORD = "sysinfo password 1";
const ID = "sysinfo";
const ROUTE = "/api/plugins/route/sysinfo/";

// The target triple the binaries in `bin` were built for: target/<triple>/debug, else rustc's host
// (TORU_TARGET_TRIPLE overrides).
function hostTriple() {
  if (process.env.TORU_TARGET_TRIPLE) return process.env.TORU_TARGET_TRIPLE;
  const m = /\/target\/([a-z0-9_]+-[a-z0-9_]+-[a-z0-9_-]+)\/(debug|release)\/?$/.exec(bin);
  if (m) return m[1];
  const r = spawnSync("rustc", ["-vV"], { encoding: "utf8" });
  const host = /^host: (\S+)$/m.exec(r.stdout || "");
  assert.ok(host, "rustc -vV names the host triple: " + (r.stderr || r.error));
  return host[1];
}

// plugins/sysinfo as a signed package for this machine, installed on `host` with the CLI.
function installPackage(host, work) {
  const triple = hostTriple();
  const src = path.join(repo, "plugins/sysinfo");
  const dir = path.join(work, ID);
  const entry = `bin/${triple}/sysinfo`;
  let manifest = fs.readFileSync(path.join(src, "manifest.toml"), "utf8");
  assert.ok(manifest.includes(`${triple} = "${entry}"`), `plugins/sysinfo/manifest.toml names ${entry}`);
  // Only this machine's entry: the package holds one binary.
  const other = /^[a-z0-9_]+-[a-z0-9_-]+ = "bin\/[^"]+"$/;
  manifest = manifest.split("\n").filter((l) => !other.test(l) || l.startsWith(triple + " ")).join("\n");
  fs.mkdirSync(path.join(dir, path.dirname(entry)), { recursive: true });
  fs.copyFileSync(path.join(bin, "sysinfo"), path.join(dir, entry));
  fs.chmodSync(path.join(dir, entry), 0o755);
  fs.copyFileSync(path.join(src, "bundle.js"), path.join(dir, "bundle.js"));
  fs.writeFileSync(path.join(dir, "manifest.toml"), manifest);
  cli(["key", "generate", "syspub"], { cwd: work });
  const file = path.join(work, "sysinfo.toru");
  cli(["plugin", "pack", dir, "--key", path.join(work, "syspub.key"), "-o", file], { cwd: work });
  host.cli(["trust", "add", path.join(work, "syspub.pub")]);
  host.cli(["plugin", "install", file]);
}

const view = (page) => page.locator(`[data-plugin="${ID}"]`);
const points = (page, series) => view(page).locator(`[data-testid="sysinfo-chart"] path[data-series="${series}"]`);

async function liveFigures(page) {
  await page.evaluate((id) => { location.hash = "#/p/" + id; }, ID);
  const v = view(page);
  // The CPU load needs two samples: "…" first, then a figure.
  await v.getByTestId("sysinfo-cpu-total").filter({ hasText: /^\d+(\.\d)? %$/ }).waitFor();
  const cores = await v.getByTestId("sysinfo-core").count();
  assert.ok(cores >= 1, "per-core bars");
  assert.equal(await v.getByTestId("sysinfo-cores").getAttribute("data-count"), String(cores));
  assert.match(await v.getByTestId("sysinfo-memory-text").innerText(), /used of \d+(\.\d)? [KMGT]iB/);
  assert.ok(await v.getByTestId("sysinfo-mount").count() >= 1, "at least one mount");
  assert.ok(await v.locator('[data-testid="sysinfo-mount"][data-available="true"]').count() >= 1, "a readable mount");
  const lo = v.locator('[data-testid="sysinfo-interface"][data-name="lo"]');
  await lo.waitFor();
  assert.ok((await lo.innerText()).includes("127.0.0.1"), "loopback with its address");
  // Temperature: a figure where the machine has a thermal zone, else "not available".
  const hasZone = fs.existsSync("/sys/class/thermal") && fs.readdirSync("/sys/class/thermal").some((n) => n.startsWith("thermal_zone"));
  const temp = await v.getByTestId("sysinfo-temperature-value").innerText();
  if (hasZone) assert.match(temp, /°C|not available/);
  else assert.equal(temp, "not available");
  // Off a Pi, its power flags are "not available".
  if (!fs.existsSync("/sys/devices/platform/soc/soc:firmware/get_throttled")) {
    assert.match(await v.getByTestId("sysinfo-pi-status").innerText(), /^not available/);
    assert.equal(await v.getByTestId("sysinfo-pi-flag").count(), 0);
  }
  assert.match(await v.getByTestId("sysinfo-status").innerText(), /up .* · updated .* · every 2 s$/);
  // Live: the sample time moves on.
  const t0 = Number(await v.getByTestId("sysinfo-status").getAttribute("data-time"));
  await page.waitForFunction((t) => Number(document.querySelector('[data-plugin="sysinfo"] [data-testid="sysinfo-status"]')?.dataset.time) > t, t0);
  log("sysinfo live figures: ok (" + cores + " cores, temperature " + temp + ")");
}

async function historyChart(page) {
  // Two samples with a CPU figure make a line: the path has points and a segment.
  await page.waitForFunction(() => Number(document.querySelector('[data-plugin="sysinfo"] [data-testid="sysinfo-chart"] path[data-series="cpu"]')?.dataset.points) >= 2);
  assert.match(await points(page, "cpu").getAttribute("d"), /^M[\d.]+ [\d.]+ L/);
  assert.ok(Number(await points(page, "memory").getAttribute("data-points")) >= 2);
  assert.equal(await view(page).locator("svg").count(), 1, "the chart is the bundle's own inline SVG");
  assert.equal(await view(page).locator("img, link, iframe, object").count(), 0, "no external assets");
  await shot(page, "50-sysinfo");
  log("sysinfo chart: ok");
}

async function settingsChange(page) {
  await page.evaluate((id) => { location.hash = "#/settings/" + id; }, ID);
  const form = page.getByTestId("settings-form");
  await form.waitFor();
  const field = (p) => form.locator(`[name="${p}"]`);
  assert.equal(await field("refresh_ms").inputValue(), "2000");
  assert.equal(await field("history").inputValue(), "60");
  // Below the schema's minimum: the form refuses it before sending.
  await field("history").fill("5");
  await form.getByTestId("settings-save").click();
  await form.locator('[data-path="history"]').getByTestId("field-error").filter({ hasText: "must be at least 10" }).waitFor();
  await field("history").fill("10");
  await field("refresh_ms").fill("500");
  await form.getByTestId("settings-save").click();
  await page.getByTestId("toast").filter({ hasText: "Settings saved" }).first().waitFor();
  // The page follows: a sample every 0.5 s, a history of 10 points, filled up.
  await page.evaluate((id) => { location.hash = "#/p/" + id; }, ID);
  const caption = view(page).getByTestId("sysinfo-history-caption");
  await caption.filter({ hasText: "of 10 points, one every 0.5 s" }).waitFor();
  await page.waitForFunction(() => document.querySelector('[data-plugin="sysinfo"] [data-testid="sysinfo-history-caption"]')?.dataset.points === "10");
  assert.ok(Number(await points(page, "cpu").getAttribute("data-points")) <= 10);
  assert.match(await view(page).getByTestId("sysinfo-status").innerText(), /every 0\.5 s$/);
  await shot(page, "51-sysinfo-settings");
  log("sysinfo settings: ok");
}

// On a phone the page fits the width (the mounts table scrolls inside its box).
async function phone(page) {
  await page.setViewportSize({ width: 390, height: 844 });
  await view(page).getByTestId("sysinfo-mounts").waitFor();
  const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(over <= 1, "no horizontal scrolling on a phone (" + over + " px)");
  await shot(page, "52-sysinfo-phone");
  await page.setViewportSize({ width: 1280, height: 900 });
}

// Leaving the page unmounts the bundle, which stops asking the plugin. A request that must not
// happen has no event to wait for: the check watches for four refresh intervals (0.5 s each).
async function stopsOnUnmount(page) {
  let asked = 0;
  page.on("request", (r) => { if (r.url().includes(ROUTE)) asked++; });
  await page.waitForResponse((r) => r.url().includes(ROUTE));
  await page.evaluate(() => { location.hash = "#/"; });
  await page.getByTestId("plugin-cards").waitFor();
  assert.equal(await page.getByTestId("sysinfo").count(), 0, "unmounted");
  const after = asked;
  await page.waitForTimeout(2000);
  assert.equal(asked, after, "no request to the plugin after unmount");
  log("sysinfo unmount stops polling: ok");
}

export async function sysinfoFlows(browser) {
  await hostFlow(browser, {
    name: "sysinfo", prefix: "tbsys-", config: "[packages]\nprobation_secs = 1\n", password: PASSWORD,
    viewport: { width: 1280, height: 900 },
    // The UI's login check before setup is a 401, logged by Chromium as a resource error.
    expected: [401],
    prepare: installPackage,
  }, async ({ page }) => {
    await page.waitForFunction((id) => document.querySelector(`[data-testid="plugin-state-${id}"]`)?.dataset.state === "ready", ID);
    await liveFigures(page);
    await historyChart(page);
    await settingsChange(page);
    await phone(page);
    await stopsOnUnmount(page);
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: launchArgs() });
  try {
    await sysinfoFlows(browser);
    log("sysinfo browser flows passed");
  } finally {
    await browser.close();
  }
}
