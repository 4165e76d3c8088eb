// Browser test of safe mode in the web UI, against the real host (`[safe_mode] after_unclean = 1`,
// hello-rust kept, hello-python third-party): the host is killed with SIGKILL while both run and
// started again on the same dirs; every page shows the banner ("Toru stopped unexpectedly 1 time
// in a row; third-party plugins are held. Likely culprit: Hello World (Python)"), the culprit's
// card says `held` with its switch still on, the kept plugin runs. "Leave safe mode" starts the
// held plugin and the banner goes. Killed again: "Disable Hello World (Python)" on the banner
// disables it, and leaving safe mode then leaves it disabled.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { bin, log, repo, setupAdmin, shot, startHost, watch } from "./lib.mjs";

const PASSWORD = "safe mode password 1";
const CONFIG = '[safe_mode]\nafter_unclean = 1\nkeep = ["hello-rust"]\n';
const CULPRIT = "hello-python";

function fill(plugins) {
  fs.copyFileSync(path.join(bin, "hello-rust"), path.join(plugins, "hello-rust.binary"));
  fs.chmodSync(path.join(plugins, "hello-rust.binary"), 0o755);
  const py = path.join(repo, "plugins/hello-python");
  for (const f of ["hello-python.binary", "toru_plugin.py", "bundle.js"]) {
    fs.copyFileSync(fs.realpathSync(path.join(py, f)), path.join(plugins, f));
  }
  fs.chmodSync(path.join(plugins, "hello-python.binary"), 0o755);
}

function stateOf(page, id, state) {
  return page.locator(`[data-testid="plugin-state-${id}"][data-state="${state}"]`);
}

// SIGKILL (no clean stop is recorded), then a new host on the same dirs. The page leaves first:
// its polling would meet a refused connection meanwhile.
async function killAndRestart(page, host) {
  await page.goto("about:blank");
  host.child.kill("SIGKILL");
  await host.exited;
  return startHost({ root: host.root, config: CONFIG });
}

// The plugin manager of `host` (the session cookie is the store's: it outlives the host).
async function open(page, host) {
  await page.goto(host.url);
  await page.getByTestId("plugin-cards").waitFor();
}

export async function safeModeFlows(browser) {
  const problems = [];
  let host = await startHost({ prefix: "tbs-", config: CONFIG, fill });
  log("safe mode host at", host.url);
  let page = null;
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    page = await ctx.newPage();
    watch(page, problems, "safe mode");
    await setupAdmin(page, host, PASSWORD);
    await stateOf(page, CULPRIT, "ready").waitFor();
    await stateOf(page, "hello-rust", "ready").waitFor();
    assert.equal(await page.getByTestId("banner-safe-mode").count(), 0, "no banner before");

    // Killed while both run: safe mode at the next start.
    host = await killAndRestart(page, host);
    await open(page, host);
    const banner = page.getByTestId("banner-safe-mode");
    await banner.waitFor();
    const text = await banner.innerText();
    assert.match(text, /Safe mode: Toru stopped unexpectedly 1 time in a row; third-party plugins are held\./);
    // Named by its plugin name once the plugins are listed (the host answers before discovery
    // is over; until then the banner names the id).
    await page.getByTestId("safe-mode-culprits").filter({ hasText: /^Likely culprit: Hello World \(Python\)$/ }).waitFor();
    await stateOf(page, CULPRIT, "held").waitFor();
    await page.getByTestId("plugin-held-" + CULPRIT).waitFor();
    assert.ok(await page.getByTestId("plugin-toggle-" + CULPRIT).isChecked(), "still enabled");
    await stateOf(page, "hello-rust", "ready").waitFor();
    await shot(page, "70-safe-mode");
    // On every page: the events say why.
    await page.getByTestId("nav-events").click();
    await page.getByTestId("events").locator("li", { hasText: "safe-mode" }).first().waitFor();
    await page.getByTestId("events").locator("li", { hasText: "unclean-exit" }).first().waitFor();
    assert.equal(await banner.count(), 1, "the banner on the events page too");
    await page.getByTestId("nav-system").click();
    await page.getByTestId("system").locator("dd", { hasText: "ACTIVE" }).waitFor();
    assert.equal(await banner.count(), 1, "and on the system page");

    // Leave: the held plugin starts, the banner goes.
    await page.getByTestId("safe-mode-leave").click();
    await page.getByTestId("toast").filter({ hasText: "Safe mode left" }).waitFor();
    await banner.waitFor({ state: "detached" });
    await page.getByTestId("nav-plugins").click();
    await stateOf(page, CULPRIT, "ready").waitFor();
    await shot(page, "71-safe-mode-left");

    // Killed again: disable the culprit from the banner; leaving then keeps it disabled.
    host = await killAndRestart(page, host);
    await open(page, host);
    await banner.waitFor();
    await page.getByTestId("safe-mode-disable-" + CULPRIT).click();
    await page.getByTestId("toast").filter({ hasText: "Hello World (Python) disabled" }).waitFor();
    await stateOf(page, CULPRIT, "disabled").waitFor();
    await page.getByTestId("safe-mode-disable-" + CULPRIT).waitFor({ state: "detached" });
    assert.ok(!(await page.getByTestId("plugin-toggle-" + CULPRIT).isChecked()));
    await shot(page, "72-safe-mode-culprit-disabled");
    await page.getByTestId("safe-mode-leave").click();
    await banner.waitFor({ state: "detached" });
    await stateOf(page, "hello-rust", "ready").waitFor();
    assert.equal(await stateOf(page, CULPRIT, "disabled").count(), 1, "a disabled culprit stays disabled");
    await ctx.close();
  } catch (e) {
    if (page) await shot(page, "failed-safe-mode").catch(() => {});
    console.error("safe mode host log:\n" + host.log().split("\n").slice(-60).join("\n"));
    if (problems.length) console.error("browser problems:\n" + problems.join("\n"));
    throw e;
  } finally {
    await host.stop();
  }
  fs.rmSync(host.root, { recursive: true, force: true });
  assert.deepEqual(problems, [], "no console errors");
}
