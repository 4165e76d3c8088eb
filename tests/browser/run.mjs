// Browser tests of the Toru web UI in real headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser download). Starts the real `toru` binary with temp dirs and the
// example plugins, then walks the flows a person uses: first-start setup with the setup code, log
// out and in, toggle a plugin and see its state change, open plugin views and see what their
// bundles mounted, read and follow logs, events and system pages — on a desktop and a phone
// viewport, with screenshots in $TORU_SHOTS (default /tmp/toru-browser-shots). The plugin
// settings form is driven on the served page with a schema of its own (settingsForm). Then
// packages.mjs walks plugin packages, security.mjs a plugin's Security page, licenses.mjs a
// licensed package's card (licence needed, a refused upload, a valid one), safemode.mjs the
// safe-mode banner after the host was killed (leave, disable the culprit), and update.mjs System →
// Update (off, then with the real RAUC when root), on hosts of their own.
//
// Usage: node run.mjs   (after `cargo build --workspace`; TORU_TARGET_DIR overrides target/debug)
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import { WAIT, bin, chromiumPath, launchArgs, log, readSetupCode, repo, shot, startHost } from "./lib.mjs";
import { packageFlows } from "./packages.mjs";
import { securityFlows } from "./security.mjs";
import { notesFlows } from "./notes.mjs";
import { sysinfoFlows } from "./sysinfo.mjs";
import { licenceFlows } from "./licenses.mjs";
import { safeModeFlows } from "./safemode.mjs";
import { updateFlows } from "./update.mjs";

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

// The settings form (src/http/ui/settings.js) on the real served page, without the settings API:
// a schema with nested groups, a list of objects holding a secret, every kind of field, and a
// title that tries to inject HTML. `onSave` is answered by the test (see settingsForm).
const SETTINGS_SCHEMA = {
  type: "object",
  properties: {
    name: { type: "string", title: "Name <img src=x onerror=window.__xss=2>", description: "<b>shown</b> as text",
      pattern: "^[a-z]+$", maxLength: 12, default: "kitchen" },
    interval: { type: "number", title: "Interval (s)", minimum: 0.5, maximum: 60, default: 5 },
    level: { type: "string", enum: ["debug", "info", "warn"], default: "info" },
    verbose: { type: "boolean", default: false },
    mqtt: {
      type: "object", title: "MQTT", description: "The broker", required: ["host"],
      properties: {
        host: { type: "string", minLength: 1 },
        port: { type: "integer", minimum: 1, maximum: 65535, default: 1883 },
        password: { type: "string", format: "secret" },
        brokers: {
          type: "array", title: "Brokers", minItems: 1, maxItems: 2,
          items: {
            type: "object", title: "Broker", required: ["url"],
            properties: {
              url: { type: "string", pattern: "^mqtts?://" },
              port: { type: "integer", maximum: 65535, default: 8883 },
              token: { type: "string", format: "secret" },
            },
          },
        },
      },
    },
  },
};
// What GET /api/plugins/{id}/settings would answer: normalised values, secrets null.
const SETTINGS_VALUES = {
  name: "kitchen", interval: 5, level: "info", verbose: false,
  mqtt: { host: "broker.lan", port: 1883, password: null,
    brokers: [{ url: "mqtt://a", port: 8883, token: null }] },
};

async function settingsForm(page) {
  await page.evaluate(([schema, values]) => {
    const box = document.createElement("div");
    box.id = "settings-harness";
    box.style.cssText = "position:fixed;inset:0;overflow:auto;background:var(--bg);padding:1rem;z-index:30";
    document.body.appendChild(box);
    window.__saves = [];
    window.__form = window.ToruSettings.render(box, schema, values, ["mqtt.password", "mqtt.brokers[0].token"], (v) => {
      window.__saves.push(v);
      return new Promise((resolve) => { window.__answer = resolve; });
    });
  }, [SETTINGS_SCHEMA, SETTINGS_VALUES]);
  const form = page.getByTestId("settings-form");
  const field = (path) => form.locator(`[data-path="${path}"]`);
  const input = (path) => field(path).locator("input, select").first();
  const saves = () => page.evaluate(() => window.__saves.length);

  // Titles and descriptions are text; secrets are never filled in, and say whether they are set.
  assert.equal(await form.locator("img, b").count(), 0, "no HTML from a schema");
  assert.ok((await field("name").innerText()).includes("Name <img src=x"), "the title is shown as text");
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await input("name").inputValue(), "kitchen");
  assert.equal(await input("mqtt.password").getAttribute("type"), "password");
  assert.equal(await input("mqtt.password").inputValue(), "");
  assert.equal(await input("mqtt.password").getAttribute("placeholder"), "set \u2014 leave empty to keep");
  assert.equal(await input("mqtt.brokers[0].token").getAttribute("placeholder"), "set \u2014 leave empty to keep");
  assert.equal(await form.locator("legend", { hasText: "MQTT" }).count(), 1);
  // minItems 1: the only broker cannot be removed.
  assert.ok(await form.locator('[data-testid="settings-remove"][data-path="mqtt.brokers[0]"]').isDisabled());

  // Add a broker: it starts with the item's defaults; maxItems 2 disables Add; its secret is not set.
  const addBroker = form.locator('[data-testid="settings-add"][data-path="mqtt.brokers"]');
  await addBroker.click();
  assert.equal(await input("mqtt.brokers[1].port").inputValue(), "8883");
  assert.ok(await addBroker.isDisabled(), "at most 2 brokers");
  assert.ok(!(await form.locator('[data-testid="settings-remove"][data-path="mqtt.brokers[0]"]').isDisabled()));
  // Items were added: the host no longer matches the list's secrets by index.
  assert.equal(await input("mqtt.brokers[0].token").getAttribute("placeholder"), "not set");
  await page.evaluate(() => { document.getElementById("settings-harness").scrollTop = 0; });
  await shot(page, "09-settings-form");

  // Client-side checks: nothing is sent, each error is next to its field and in the summary.
  await input("interval").fill("61");
  await input("name").fill("Kitchen");
  await form.getByTestId("settings-save").click();
  await field("interval").getByTestId("field-error").filter({ hasText: "must be at most 60" }).waitFor();
  assert.equal(await field("name").getByTestId("field-error").innerText(), "must match ^[a-z]+$");
  assert.equal(await field("mqtt.brokers[1].url").getByTestId("field-error").innerText(), "required");
  const summary = await form.getByTestId("settings-summary").innerText();
  assert.ok(summary.includes("interval: must be at most 60") && summary.includes("mqtt.brokers[1].url: required"), summary);
  assert.equal(await saves(), 0, "nothing sent while the form finds errors");
  await page.evaluate(() => { document.getElementById("settings-harness").scrollTop = 0; });
  await shot(page, "10-settings-client-errors");

  // Fixed: Save sends typed values, secrets left empty as null; Save is disabled while it saves.
  await input("interval").fill("2.5");
  await input("name").fill("hall");
  await input("level").selectOption({ label: "warn" });
  await input("verbose").check();
  await input("mqtt.brokers[1].url").fill("mqtts://b");
  await input("mqtt.brokers[1].token").fill("tok-1");
  await form.getByTestId("settings-save").click();
  await page.waitForFunction(() => window.__saves.length === 1);
  assert.ok(await form.getByTestId("settings-save").isDisabled(), "disabled while saving");
  assert.equal(await form.getByTestId("field-error").filter({ hasText: /./ }).count(), 0, "client errors cleared");
  assert.deepEqual(await page.evaluate(() => window.__saves[0]), {
    name: "hall", interval: 2.5, level: "warn", verbose: true,
    mqtt: { host: "broker.lan", port: 1883, password: null,
      brokers: [{ url: "mqtt://a", port: 8883, token: null }, { url: "mqtts://b", port: 8883, token: "tok-1" }] },
  });

  // The host refuses: its errors show next to their fields (by path) and in the summary.
  await page.evaluate(() => window.__answer({ ok: false, message: "The settings are not valid.", errors: [
    { path: "mqtt.brokers[1].url", message: "cannot reach the broker" },
    { path: "mqtt.colour", message: "unknown setting" },
  ] }));
  await field("mqtt.brokers[1].url").getByTestId("field-error").filter({ hasText: "cannot reach the broker" }).waitFor();
  const hostSummary = await form.getByTestId("settings-summary").innerText();
  assert.ok(hostSummary.includes("The settings are not valid.") && hostSummary.includes("mqtt.colour: unknown setting"), hostSummary);
  assert.ok(!(await form.getByTestId("settings-save").isDisabled()), "enabled again");
  await page.evaluate(() => { document.getElementById("settings-harness").scrollTop = 0; });
  await shot(page, "11-settings-host-errors");

  // Remove the first broker: the second takes its place (paths and labels follow).
  await form.locator('[data-testid="settings-remove"][data-path="mqtt.brokers[0]"]').click();
  assert.equal(await input("mqtt.brokers[0].url").inputValue(), "mqtts://b");
  assert.ok((await field("mqtt.brokers[0]").locator("legend").first().innerText()).startsWith("Broker 1"));
  assert.equal(await field("mqtt.brokers[1]").count(), 0);
  assert.ok(await form.locator('[data-testid="settings-remove"][data-path="mqtt.brokers[0]"]').isDisabled(), "minItems 1");
  assert.ok(!(await addBroker.isDisabled()));
  await input("mqtt.password").fill("new password");
  await form.getByTestId("settings-save").click();
  await page.waitForFunction(() => window.__saves.length === 2);
  const second = await page.evaluate(() => window.__saves[1]);
  assert.deepEqual(second.mqtt, { host: "broker.lan", port: 1883, password: "new password",
    brokers: [{ url: "mqtts://b", port: 8883, token: "tok-1" }] });

  // The host accepts: the form redraws from what it answered.
  await page.evaluate((mqtt) => window.__answer({ ok: true, secretsSet: ["mqtt.password", "mqtt.brokers[0].token"],
    values: { name: "hall", interval: 2.5, level: "warn", verbose: true,
      mqtt: { ...mqtt, password: null, brokers: [{ url: "mqtts://b", port: 8883, token: null }] } } }), second.mqtt);
  await form.getByTestId("settings-status").filter({ hasText: "Saved." }).waitFor();
  assert.equal(await input("mqtt.password").inputValue(), "");
  assert.equal(await input("mqtt.brokers[0].token").getAttribute("placeholder"), "set \u2014 leave empty to keep");
  assert.equal(await form.getByTestId("settings-summary").isVisible(), false);
  // Add a broker and remove the first: same length, so the host would match the new item to the
  // stored item's secret by index; the form sends its empty secret as "" instead of null.
  await form.locator('[data-testid="settings-add"][data-path="mqtt.brokers"]').click();
  await input("mqtt.brokers[1].url").fill("mqtt://c");
  await form.locator('[data-testid="settings-remove"][data-path="mqtt.brokers[0]"]').click();
  assert.equal(await input("mqtt.brokers[0].token").getAttribute("placeholder"), "not set");
  assert.deepEqual(await page.evaluate(() => window.__form.values().mqtt.brokers),
    [{ url: "mqtt://c", port: 8883, token: "" }]);
  await page.evaluate(() => document.getElementById("settings-harness").remove());
}

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
    // Plain *.binary files are not packages: each card says "unpackaged" (the API's `package: null`).
    for (const id of ["hello-rust", "chatter"]) {
      const line = page.getByTestId("plugin-package-" + id);
      await line.filter({ hasText: "unpackaged" }).waitFor();
      assert.equal((await line.innerText()).trim(), "unpackaged", id + ": " + (await line.innerText()));
    }
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

    // --- the settings form, on the served page (no settings API needed)
    await settingsForm(page);
    log("settings form: ok");

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
    await packageFlows(browser);
    await securityFlows(browser);
    await notesFlows(browser);
    await sysinfoFlows(browser);
    await licenceFlows(browser);
    await safeModeFlows(browser);
    await updateFlows(browser);
  } finally {
    await browser.close();
  }
  log("all browser flows passed");
}

main().catch((e) => { console.error(e); process.exit(1); });
