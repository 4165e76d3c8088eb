// Browser tests of the Toru web UI in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser download). Starts the real `toru` binary with temp dirs and the
// example plugins, then walks the flows a person uses: first-start setup with the setup code, log
// out and in, toggle a plugin and see its state change, open plugin views and see what their
// bundles mounted, read and follow logs, events and system pages — on a desktop and a phone
// viewport, with screenshots in $TORU_SHOTS (default /tmp/toru-browser-shots).
//
// Usage: node run.mjs   (after `cargo build --workspace`; TORU_TARGET_DIR overrides target/debug)
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { WAIT, bin, chromiumPath, launchArgs, log, readSetupCode, repo, shot, startHost } from "./lib.mjs";
import { packageFlows } from "./packages.mjs";

const PASSWORD = "browser password 1";

// A protocol-1.0 plugin that writes a log line every 300 ms and whose name tries to inject HTML.
const CHATTER = `#!/usr/bin/env python3
import json, os, socket, struct, sys, threading, time
if "--metadata" in sys.argv:
    print(json.dumps({"id": "chatter", "name": "Chatter <img src=x onerror=window.__xss=1>",
                      "version": "0.0.1", "author": "<b>tests</b>", "icon": "C", "route": "/chatter"}))
    sys.exit(0)
def chat():
    n = 0
    while True:
        n += 1
        print("info: chatter line %d" % n, flush=True)
        time.sleep(0.3)
threading.Thread(target=chat, daemon=True).start()
path = os.environ["TORU_PLUGIN_SOCKET"]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(4)
while True:
    c, _ = srv.accept()
    head = c.recv(4, socket.MSG_WAITALL)
    if len(head) == 4:
        n = struct.unpack(">I", head)[0]
        msg = json.loads(c.recv(n, socket.MSG_WAITALL))
        if msg["payload"].get("action") == "shutdown":
            sys.exit(0)
    c.close()
`;

// The example plugins and the chatter, unpackaged (plain *.binary files).
function fillPlugins(plugins) {
  fs.copyFileSync(path.join(bin, "hello-rust"), path.join(plugins, "hello-rust.binary"));
  fs.chmodSync(path.join(plugins, "hello-rust.binary"), 0o755);
  const py = path.join(repo, "plugins/hello-python");
  if (fs.existsSync(path.join(py, "hello-python.binary"))) {
    for (const f of ["hello-python.binary", "toru_plugin.py", "bundle.js"]) {
      fs.copyFileSync(fs.realpathSync(path.join(py, f)), path.join(plugins, f));
    }
    fs.chmodSync(path.join(plugins, "hello-python.binary"), 0o755);
  }
  fs.writeFileSync(path.join(plugins, "chatter.binary"), CHATTER, { mode: 0o755 });
}

async function main() {
  const host = await startHost({ fill: fillPlugins });
  log("toru at", host.url, "dirs in", host.root);
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: launchArgs() });
  const problems = [];
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await ctx.newPage();
    page.setDefaultTimeout(WAIT);
    // Expected 401s (wrong password, the login check) are logged by Chromium as resource errors.
    page.on("console", (m) => {
      if (m.type() === "error" && !/status of 401/.test(m.text())) problems.push("console: " + m.text());
    });
    page.on("pageerror", (e) => problems.push("page error: " + e.message));

    // --- setup
    await page.goto(host.url);
    await page.getByTestId("setup-code").waitFor();
    await shot(page, "01-setup-desktop");
    const code = await readSetupCode(host);
    await page.getByTestId("setup-code").fill("WRONG-CODE-0000");
    await page.getByTestId("setup-password").fill(PASSWORD);
    await page.getByTestId("setup-password2").fill(PASSWORD);
    await page.getByTestId("setup-submit").click();
    await page.getByTestId("form-error").filter({ hasText: /wrong/i }).waitFor();
    await page.getByTestId("setup-code").fill(code.toLowerCase());
    await page.getByTestId("setup-submit").click();
    await page.getByTestId("plugin-card-hello-rust").waitFor();
    assert.ok(!fs.existsSync(path.join(host.data, "setup-code")), "setup code removed after setup");
    log("setup: ok");

    // --- plugin manager; plugin strings are text, never HTML
    const state = page.getByTestId("plugin-state-hello-rust");
    await page.waitForFunction(() => document.querySelector('[data-testid="plugin-state-hello-rust"]')?.dataset.state === "ready");
    await page.getByTestId("plugin-card-chatter").waitFor();
    assert.equal(await page.getByTestId("plugin-card-chatter").locator("img").count(), 0, "no <img> from a plugin name");
    assert.ok((await page.getByTestId("plugin-card-chatter").innerText()).includes("<img src=x"), "the name is shown as text");
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    await shot(page, "02-plugins-desktop");

    // --- log out and in
    await page.getByTestId("logout").click();
    await page.getByTestId("login-password").waitFor();
    await page.getByTestId("login-password").fill("not the password");
    await page.getByTestId("login-submit").click();
    await page.getByTestId("form-error").filter({ hasText: /wrong/i }).waitFor();
    await page.getByTestId("login-password").fill(PASSWORD);
    await page.getByTestId("login-submit").click();
    await page.getByTestId("plugin-card-hello-rust").waitFor();
    log("login/logout: ok");

    // --- toggle a plugin off and on; the state and the sidebar follow
    await page.getByTestId("nav-plugin-hello-rust").waitFor();
    await page.getByTestId("plugin-toggle-hello-rust").click();
    await page.getByTestId("toast").filter({ hasText: "disabled" }).first().waitFor();
    await page.waitForFunction(() => document.querySelector('[data-testid="plugin-state-hello-rust"]')?.dataset.state === "disabled");
    await page.getByTestId("nav-plugin-hello-rust").waitFor({ state: "detached" });
    await page.getByTestId("plugin-toggle-hello-rust").click();
    await page.getByTestId("toast").filter({ hasText: "enabled" }).first().waitFor();
    await page.waitForFunction(() => document.querySelector('[data-testid="plugin-state-hello-rust"]')?.dataset.state === "ready");
    assert.equal(await state.getAttribute("data-state"), "ready");
    log("toggle: ok");

    // --- plugin view: the bundle mounts, api.fetch reaches the plugin (GET and POST with CSRF)
    await page.getByTestId("nav-plugin-hello-rust").click();
    const msg = page.getByTestId("plugin-view").getByTestId("hello-message");
    await msg.filter({ hasText: "Hello from" }).waitFor();
    const counter = page.getByTestId("hello-counter");
    await counter.filter({ hasText: /Counter/ }).waitFor();
    const before = Number((await counter.innerText()).match(/(\d+)\s*$/)[1]);
    await page.getByTestId("plugin-view").getByRole("button").first().click();
    await counter.filter({ hasText: new RegExp(`\\b${before + 1}\\s*$`) }).waitFor();
    await shot(page, "03-plugin-view-desktop");
    log("plugin view (hello-rust): ok");
    if (fs.existsSync(path.join(host.plugins, "hello-python.binary"))) {
      await page.evaluate(() => { location.hash = "#/p/hello-python"; });
      await page.locator('[data-plugin="hello-python"]').getByTestId("hello-message").filter({ hasText: "Hello from" }).waitFor();
      // Leaving the view unmounts the bundle.
      await page.evaluate(() => { location.hash = "#/"; });
      await page.getByTestId("plugin-cards").waitFor();
      assert.equal(await page.getByTestId("hello-message").count(), 0, "unmounted");
      log("plugin view (hello-python): ok");
    }

    // --- logs: level filter and live follow
    await page.evaluate(() => { location.hash = "#/logs/chatter"; });
    const lines = page.getByTestId("logs-lines");
    await lines.locator(".log-line", { hasText: "chatter line" }).first().waitFor();
    const seen = await lines.locator(".log-line").count();
    await page.waitForFunction((n) => document.querySelectorAll('[data-testid="logs-lines"] .log-line').length > n, seen);
    log("logs follow: ok");
    await shot(page, "04-logs-desktop");
    await page.getByTestId("logs-level").selectOption("error");
    await lines.locator(".log-line", { hasText: "No log lines" }).waitFor();
    await page.getByTestId("logs-level").selectOption("all");
    await lines.locator(".log-line", { hasText: "chatter line" }).first().waitFor();
    log("logs filter: ok");

    // --- events and system
    await page.getByTestId("nav-events").click();
    await page.getByTestId("events").locator("li", { hasText: "ready" }).first().waitFor();
    await page.getByTestId("nav-system").click();
    await page.getByTestId("system").locator("dd", { hasText: "pid" }).waitFor();
    await shot(page, "05-system-desktop");
    log("events/system: ok");

    // --- phone
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const p2 = await phone.newPage();
    p2.setDefaultTimeout(WAIT);
    p2.on("pageerror", (e) => problems.push("phone page error: " + e.message));
    await p2.goto(host.url);
    await p2.getByTestId("login-password").fill(PASSWORD);
    await p2.getByTestId("login-submit").click();
    await p2.getByTestId("plugin-card-hello-rust").waitFor();
    await shot(p2, "06-plugins-phone");
    await p2.locator("#menu-button").click();
    await p2.getByTestId("nav-plugin-hello-rust").click();
    await p2.getByTestId("hello-message").filter({ hasText: "Hello from" }).waitFor();
    await shot(p2, "07-plugin-view-phone");
    await p2.evaluate(() => { location.hash = "#/logs/chatter"; });
    await p2.getByTestId("logs-lines").locator(".log-line", { hasText: "chatter line" }).first().waitFor();
    await shot(p2, "08-logs-phone");
    const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, "no horizontal scrolling on a phone (" + overflow + " px)");
    log("phone: ok");

    assert.deepEqual(problems, [], "no console errors or CSP violations");
    log("basic flows passed");
  } catch (e) {
    console.error("host log:\n" + host.log().split("\n").slice(-40).join("\n"));
    if (problems.length) console.error("browser problems:\n" + problems.join("\n"));
    await browser.close();
    throw e;
  } finally {
    await host.stop();
  }
  fs.rmSync(host.root, { recursive: true, force: true });
  try {
    // Packages need `toru key generate`, `toru plugin pack` and the package API (not on main yet).
    if (process.env.TORU_BROWSER_PACKAGES === "1") await packageFlows(browser);
  } finally {
    await browser.close();
  }
  log("all browser flows passed");
}

main().catch((e) => { console.error(e); process.exit(1); });
