// Browser tests of plugin packages in the web UI (issue 11), against the real host: trusted keys,
// installing a signed package built from the example plugin hello-python with `toru key generate`
// and `toru plugin pack`, an update that passes probation, one that crashes at start and is rolled
// back (with the host's reason on the page), Versions and a manual rollback, the settings form
// (nested object, list items added and removed, a field error from the host, a secret never shown
// again), Remove keeping the data; then a host with unsigned packages allowed: the banner on every
// page and an unsigned package marked as such.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { cli, log, login, repo, setupAdmin, shot, startHost, watch } from "./lib.mjs";

const PASSWORD = "package password 1";
const ID = "hello-python";
// Printed by the crashing version on stderr; the rollback reason must carry it to the page.
const CRASH_LINE = "crash-on-purpose: version 0.3.0 refuses to start";
// A secret setting; it must never come back to the page.
const SECRET = "s3cret-broker-password";

// Added to the example's manifest (which has a `greeting` setting): a nested group with a secret,
// a range and a list, and requested permissions and limits.
const EXTRA_MANIFEST = `
[settings.properties.mqtt]
type = "object"
title = "MQTT"
[settings.properties.mqtt.properties.host]
type = "string"
title = "Broker host"
default = "localhost"
[settings.properties.mqtt.properties.port]
type = "integer"
title = "Port"
minimum = 1
maximum = 65535
default = 1883
[settings.properties.mqtt.properties.password]
type = "string"
title = "Password"
format = "secret"
[settings.properties.mqtt.properties.topics]
type = "array"
title = "Topics"
maxItems = 5
items = { type = "string", title = "Topic", pattern = "(?i)^[a-z0-9/+#]+$" }

[permissions]
groups = ["gpio"]

[limits]
memory = "64M"
`;

// A folder `toru plugin pack` takes: the example's files (the SDK copied, not linked), its manifest
// with EXTRA_MANIFEST, the version patched into both; `crash` makes the script exit 3 at start (not
// for --metadata).
function variantDir(work, version, { crash = false } = {}) {
  const src = path.join(repo, "plugins/hello-python");
  const dir = path.join(work, `${ID}-${version}`);
  fs.mkdirSync(dir);
  for (const f of ["hello-python.binary", "toru_plugin.py", "bundle.js"]) {
    fs.copyFileSync(fs.realpathSync(path.join(src, f)), path.join(dir, f));
  }
  const script = path.join(dir, "hello-python.binary");
  let code = fs.readFileSync(script, "utf8");
  assert.ok(code.includes('version="0.1.0"'), "the example sets its version as the test expects");
  code = code.replace('version="0.1.0"', `version="${version}"`);
  if (crash) {
    code = code.replace("\nimport os\n", `\nimport os\nimport sys as _sys\nif "--metadata" not in _sys.argv:\n    _sys.stderr.write("${CRASH_LINE}\\n"); _sys.stderr.flush(); _sys.exit(3)\n`);
    assert.ok(code.includes(CRASH_LINE), "crash inserted");
  }
  fs.writeFileSync(script, code, { mode: 0o755 });
  let manifest = fs.readFileSync(path.join(src, "manifest.toml"), "utf8");
  assert.ok(/^version = "0\.1\.0"$/m.test(manifest) && /^\[settings\]$/m.test(manifest) && !/^\[(permissions|limits)\]$/m.test(manifest),
    "the example's manifest is as the test expects");
  manifest = manifest.replace(/^version = "0\.1\.0"$/m, `version = "${version}"`);
  fs.writeFileSync(path.join(dir, "manifest.toml"), manifest + EXTRA_MANIFEST);
  return dir;
}

// Keys and packages, made with the CLI as an author would.
export function buildPackages(work) {
  cli(["key", "generate", "publisher"], { cwd: work });
  cli(["key", "generate", "spare"], { cwd: work });
  const out = {};
  for (const [v, opts] of [["0.1.0", {}], ["0.2.0", {}], ["0.3.0", { crash: true }], ["0.4.0", {}]]) {
    const file = path.join(work, `${ID}-${v}.toru`);
    cli(["plugin", "pack", variantDir(work, v, opts), "--key", path.join(work, "publisher.key"), "-o", file], { cwd: work });
    assert.ok(fs.existsSync(file + ".minisig"), "pack writes the signature beside the package");
    out[v] = file;
  }
  // The id a key file names: "untrusted comment: minisign public key <ID>".
  const keyId = (name) => {
    const m = fs.readFileSync(path.join(work, name + ".pub"), "utf8").match(/public key:? ([0-9A-F]{16})/i);
    assert.ok(m, name + ".pub names its key id");
    return m[1].toUpperCase();
  };
  return { files: out, pub: path.join(work, "publisher.pub"), spare: path.join(work, "spare.pub"),
    keyId: keyId("publisher"), spareId: keyId("spare") };
}

// Refusals the test provokes (401, 409, 422), logged by Chromium as resource errors.
const REFUSALS = [401, 409, 422];

// Through the install dialog: pick `files`, upload; returns once the manifest (or an error) shows.
async function upload(page, files) {
  await page.evaluate(() => { location.hash = "#/"; });
  await page.getByTestId("install-open").click();
  await page.getByTestId("install-files").setInputFiles(files);
  await page.getByTestId("install-upload").click();
  await page.locator('[data-testid="install-manifest"], [data-testid="install-error"]:not(:empty)').first().waitFor();
}

// The outcome of a confirm or rollback: "ok" (then `result` is what the host answered) or
// "rolled-back" / "refused" / "error". Returns the text shown.
async function outcome(page, expected, result) {
  const r = page.getByTestId("result");
  await r.waitFor();
  const text = await r.innerText();
  assert.equal(await r.getAttribute("data-outcome"), expected, "outcome: " + text);
  if (result) assert.equal(await r.getAttribute("data-result"), result, "result: " + text);
  return text;
}
const result = (page, r) => outcome(page, "ok", r);

async function trustFlow(page, pk) {
  await page.getByTestId("nav-trust").click();
  await page.getByTestId("trust-empty").waitFor();
  // A key that is not one: the host's message, nothing added.
  await page.getByTestId("trust-key").fill("not a key");
  await page.getByTestId("trust-add").click();
  await page.getByTestId("trust-error").filter({ hasText: /./ }).waitFor();
  assert.equal(await page.getByTestId("trust-keys").count(), 0);
  // The publisher's key by picking the .pub file (the comment defaults to the file's name).
  await page.getByTestId("trust-file").setInputFiles(pk.pub);
  await page.waitForFunction(() => document.querySelector('[data-testid="trust-key"]').value.includes("minisign public key"));
  await page.getByTestId("trust-add").click();
  await page.getByTestId("trust-key-" + pk.keyId).filter({ hasText: "publisher" }).waitFor();
  // A second key by pasting the text, then removed again after a confirmation.
  await page.getByTestId("trust-key").fill(fs.readFileSync(pk.spare, "utf8"));
  await page.getByTestId("trust-comment").fill("spare <b>key</b>");
  await page.getByTestId("trust-add").click();
  const spare = page.getByTestId("trust-key-" + pk.spareId);
  await spare.filter({ hasText: "spare <b>key</b>" }).waitFor();
  await shot(page, "20-trust");
  await page.getByTestId("trust-remove-" + pk.spareId).click();
  await page.getByTestId("trust-remove-cancel").click();
  assert.equal(await spare.count(), 1, "cancel keeps the key");
  await page.getByTestId("trust-remove-" + pk.spareId).click();
  await page.getByTestId("trust-remove-confirm").click();
  await spare.waitFor({ state: "detached" });
  await page.getByTestId("trust-key-" + pk.keyId).waitFor();
  log("trust: ok");
}

// A large upload under a throttled network shows its progress; what is not a package is refused
// with the host's own message.
async function progressFlow(page, work) {
  const junk = path.join(work, "junk.toru");
  fs.writeFileSync(junk, Buffer.alloc(3 * 1024 * 1024, 7));
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: 1024 * 1024 });
  try {
    await page.evaluate(() => { location.hash = "#/"; });
    await page.getByTestId("install-open").click();
    await page.getByTestId("install-files").setInputFiles(junk);
    await page.getByTestId("install-upload").click();
    await page.waitForFunction(() => {
      const p = document.querySelector('[data-testid="install-progress"]');
      return p && p.value > 0 && p.value < 100;
    });
    assert.match(await page.getByTestId("install-progress-text").innerText(), /^[\d.]+ (KiB|MiB) of 3\.0 MiB \(\d+%\)$/);
    await shot(page, "21-upload-progress");
    await page.getByTestId("install-error").filter({ hasText: /^Refused: / }).waitFor();
  } finally {
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    await cdp.detach();
  }
  log("upload progress, refused package: ok (" + (await page.getByTestId("install-error").innerText()) + ")");
  await page.getByTestId("install-cancel").click();
}

// Drops `files` on the plugin list as a file manager would (a drop event carrying them).
async function dropOnPlugins(page, files) {
  await page.evaluate(() => { location.hash = "#/"; });
  const list = page.getByTestId("plugins-page");
  await list.waitFor();
  const data = files.map((f) => ({ name: path.basename(f), b64: fs.readFileSync(f).toString("base64") }));
  const dt = await page.evaluateHandle((data) => {
    const dt = new DataTransfer();
    for (const f of data) {
      const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
      dt.items.add(new File([bytes], f.name));
    }
    return dt;
  }, data);
  await list.dispatchEvent("dragenter", { dataTransfer: dt });
  assert.ok(await list.evaluate((el) => el.classList.contains("dropping")), "the list shows it takes the drop");
  await list.dispatchEvent("drop", { dataTransfer: dt });
  await page.getByTestId("install-dialog").waitFor();
  assert.ok(!(await list.evaluate((el) => el.classList.contains("dropping"))));
}

async function installFlow(page, host, pk) {
  // Unsigned: refused with the host's message, nothing installed.
  await upload(page, [pk.files["0.1.0"]]);
  await page.getByTestId("install-error").filter({ hasText: /not signed|unsigned/i }).waitFor();
  await page.getByTestId("install-cancel").click();
  assert.equal(await page.getByTestId("plugin-card-" + ID).count(), 0);
  // A signature that is not this package's: paired by name, so it is named and left out.
  await page.getByTestId("install-open").click();
  await page.getByTestId("install-files").setInputFiles([pk.files["0.1.0"], pk.files["0.2.0"] + ".minisig"]);
  await page.getByTestId("install-error").filter({ hasText: "hello-python-0.2.0.toru.minisig is not the signature of hello-python-0.1.0.toru" }).waitFor();
  assert.match(await page.getByTestId("install-chosen-signature").innerText(), /none/);
  await page.getByTestId("install-cancel").click();

  // Signed: the manifest, the signer, the action; confirm; probation; installed.
  await upload(page, [pk.files["0.1.0"], pk.files["0.1.0"] + ".minisig"]);
  const dlg = page.getByTestId("install-dialog");
  assert.equal(await dlg.getByTestId("install-name").innerText(), "Hello World (Python)");
  assert.match(await dlg.getByTestId("install-version").innerText(), /version 0\.1\.0 · by ToruAI/);
  assert.equal(await dlg.getByTestId("install-key-id").innerText(), pk.keyId);
  assert.match(await dlg.getByTestId("install-action").innerText(), /Install hello-python 0\.1\.0/);
  assert.match(await dlg.getByTestId("install-permissions").innerText(), /groups: gpio/);
  assert.match(await dlg.getByTestId("install-limits").innerText(), /memory: 64M/);
  assert.equal(await dlg.getByTestId("install-allow-downgrade").count(), 0, "no downgrade box for an install");
  assert.equal(await dlg.getByTestId("install-unsigned").count(), 0);
  await shot(page, "22-install-manifest");
  await dlg.getByTestId("install-confirm").click();
  await dlg.getByTestId("probation").filter({ hasText: "0.1.0 is on probation" }).waitFor();
  await shot(page, "23-install-probation");
  await result(page, "installed");
  await page.getByTestId("dialog-close").click();
  const card = page.getByTestId("plugin-card-" + ID);
  await card.getByTestId("plugin-package-" + ID).filter({ hasText: "package 0.1.0" }).filter({ hasText: pk.keyId }).waitFor();
  await page.waitForFunction((id) => document.querySelector(`[data-testid="plugin-state-${id}"]`)?.dataset.state === "ready", ID);
  // It runs: its own page mounts and answers.
  await page.getByTestId("plugin-open-" + ID).click();
  await page.locator(`[data-plugin="${ID}"]`).getByTestId("hello-message").filter({ hasText: "Hello from" }).waitFor();
  log("install: ok");

  // An update, dropped on the plugin list: reviewed, then cancelled (the host drops the upload).
  await dropOnPlugins(page, [pk.files["0.2.0"], pk.files["0.2.0"] + ".minisig"]);
  assert.equal(await page.getByTestId("install-chosen-signature").innerText(), "hello-python-0.2.0.toru.minisig");
  await page.getByTestId("install-upload").click();
  await page.getByTestId("install-manifest").waitFor();
  assert.match(await page.getByTestId("install-action").innerText(), /Update hello-python from 0\.1\.0 to 0\.2\.0/);
  assert.equal(await page.getByTestId("install-allow-downgrade").count(), 0, "no downgrade box for an update");
  const cancelled = page.waitForResponse((r) => r.request().method() === "DELETE" && r.url().includes("/api/packages/upload/"));
  await page.getByTestId("install-cancel").click();
  assert.equal((await cancelled).status(), 200);
  assert.deepEqual(fs.readdirSync(path.join(host.data, "packages", ".staging")), [], "the staged upload is gone");
  assert.ok((await page.getByTestId("plugin-package-" + ID).innerText()).includes("package 0.1.0"));
  // The same update, confirmed: it passes its probation.
  await upload(page, [pk.files["0.2.0"], pk.files["0.2.0"] + ".minisig"]);
  await page.getByTestId("install-confirm").click();
  await result(page, "updated");
  await page.getByTestId("dialog-close").click();
  await page.getByTestId("plugin-package-" + ID).filter({ hasText: "package 0.2.0" }).waitFor();
  log("update: ok");

  // An update that crashes at start: rolled back, with the host's reason.
  await upload(page, [pk.files["0.3.0"], pk.files["0.3.0"] + ".minisig"]);
  await page.getByTestId("install-confirm").click();
  await page.getByTestId("probation").filter({ hasText: "0.3.0 is on probation" }).waitFor();
  const text = await outcome(page, "rolled-back");
  assert.match(text, /^Rolled back: /);
  assert.ok(text.includes(CRASH_LINE) || /exit code 3/.test(text), "the reason names the crash: " + text);
  await shot(page, "24-update-rolled-back");
  await page.getByTestId("dialog-close").click();
  await page.getByTestId("plugin-package-" + ID).filter({ hasText: "package 0.2.0" }).waitFor();
  await page.waitForFunction((id) => document.querySelector(`[data-testid="plugin-state-${id}"]`)?.dataset.state === "ready", ID);
  log("update rolled back: ok");

  // Versions: the active one, the kept ones, the last update and why it was rolled back.
  await page.getByTestId("plugin-versions-" + ID).click();
  await page.getByTestId("versions-active").filter({ hasText: "0.2.0" }).waitFor();
  await page.getByTestId("version-0.1.0").waitFor();
  const last = page.getByTestId("last-update");
  assert.equal(await last.getAttribute("data-result"), "rolled-back");
  assert.match(await last.innerText(), /0\.2\.0 → 0\.3\.0/);
  await shot(page, "25-versions");
  // Roll back by hand to 0.1.0: confirm, probation, result; the page follows.
  await page.getByTestId("rollback").click();
  await page.getByTestId("rollback-dialog").filter({ hasText: "back to 0.1.0" }).waitFor();
  await page.getByTestId("rollback-confirm").click();
  assert.match(await outcome(page, "ok"), /Rolled back to 0\.1\.0: /);
  await page.getByTestId("dialog-close").click();
  await page.getByTestId("versions-active").filter({ hasText: "0.1.0" }).waitFor();
  log("versions and rollback: ok");
}

// The counter hello-python keeps in the host's KV store, as its own page shows it.
async function counterValue(page) {
  await page.evaluate((id) => { location.hash = "#/p/" + id; }, ID);
  const counter = page.locator(`[data-plugin="${ID}"]`).getByTestId("hello-counter");
  await counter.filter({ hasText: /\d\s*$/ }).waitFor();
  return Number((await counter.innerText()).match(/(\d+)\s*$/)[1]);
}
async function bumpCounter(page) {
  const before = await counterValue(page);
  await page.locator(`[data-plugin="${ID}"]`).getByRole("button").first().click();
  await page.locator(`[data-plugin="${ID}"]`).getByTestId("hello-counter").filter({ hasText: new RegExp(`\\b${before + 1}\\s*$`) }).waitFor();
  return before + 1;
}

async function install(page, file, expected) {
  await upload(page, [file, file + ".minisig"]);
  await page.getByTestId("install-confirm").click();
  await result(page, expected);
  await page.getByTestId("dialog-close").click();
}

async function removeFlow(page, pk) {
  // Keep the data: a reinstall finds the counter where it was.
  const kept = await bumpCounter(page);
  await page.evaluate(() => { location.hash = "#/"; });
  await page.getByTestId("plugin-remove-" + ID).click();
  const dlg = page.getByTestId("remove-dialog");
  assert.ok(await dlg.getByTestId("remove-keep").isChecked(), "keeping the data is the default");
  await dlg.getByTestId("remove-confirm").click();
  await page.getByTestId("toast").filter({ hasText: "its data is kept" }).first().waitFor();
  await page.getByTestId("plugin-card-" + ID).waitFor({ state: "detached" });
  await install(page, pk.files["0.4.0"], "installed");
  assert.equal(await counterValue(page), kept, "the kept data is there again");
  // Delete the data: a reinstall starts from nothing.
  await page.evaluate(() => { location.hash = "#/"; });
  await page.getByTestId("plugin-remove-" + ID).click();
  await page.getByTestId("remove-purge").check();
  await shot(page, "28-remove");
  await page.getByTestId("remove-confirm").click();
  await page.getByTestId("toast").filter({ hasText: "removed with its data" }).first().waitFor();
  await page.getByTestId("plugin-card-" + ID).waitFor({ state: "detached" });
  await install(page, pk.files["0.4.0"], "installed");
  assert.equal(await counterValue(page), 0, "the purged data is gone");
  log("remove (keep, purge): ok");
  // A downgrade needs the box ticked.
  await upload(page, [pk.files["0.1.0"], pk.files["0.1.0"] + ".minisig"]);
  assert.match(await page.getByTestId("install-action").innerText(), /Downgrade hello-python from 0\.4\.0 to 0\.1\.0/);
  assert.ok(await page.getByTestId("install-confirm").isDisabled(), "not without allowing it");
  await page.getByTestId("install-allow-downgrade").check();
  await page.getByTestId("install-confirm").click();
  await result(page);
  await page.getByTestId("dialog-close").click();
  await page.getByTestId("plugin-package-" + ID).filter({ hasText: "package 0.1.0" }).waitFor();
  log("downgrade: ok");
}

// A viewer sees packages, versions, settings and keys, and no control that changes them.
async function viewerFlow(browser, host, pk, problems) {
  host.cli(["passwd", "--user", "watcher", "--role", "viewer"], "viewer password 1\n");
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await ctx.newPage();
  watch(page, problems, "viewer", REFUSALS);
  await login(page, host, "watcher", "viewer password 1");
  await page.getByTestId("plugin-package-" + ID).waitFor();
  assert.equal(await page.getByTestId("install-open").count(), 0, "no Install for a viewer");
  assert.equal(await page.getByTestId("plugin-remove-" + ID).count(), 0, "no Remove for a viewer");
  await page.getByTestId("plugin-versions-" + ID).click();
  await page.getByTestId("versions-table").waitFor();
  assert.equal(await page.getByTestId("rollback").count(), 0, "no Rollback for a viewer");
  await page.getByTestId("nav-trust").click();
  await page.getByTestId("trust-key-" + pk.keyId).waitFor();
  assert.equal(await page.getByTestId("trust-add").count(), 0, "no Add key for a viewer");
  assert.equal(await page.getByTestId("trust-remove-" + pk.keyId).count(), 0, "no Remove key for a viewer");
  await page.evaluate((id) => { location.hash = "#/settings/" + id; }, ID);
  await page.getByTestId("settings-page-status").filter({ hasText: "Only an admin" }).waitFor();
  assert.ok(await page.locator("fieldset.readonly").evaluate((f) => f.disabled), "the form is read-only");
  await ctx.close();
  log("viewer: ok");
}

// A host that allows unsigned packages says so on every page, and marks an unsigned package.
async function unsignedFlow(browser, pk, problems) {
  const host = await startHost({ prefix: "tbu-", config: "[packages]\nallow_unsigned = true\nprobation_secs = 1\n" });
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    const page = await ctx.newPage();
    watch(page, problems, "unsigned", REFUSALS);
    await setupAdmin(page, host, PASSWORD);
    for (const nav of ["nav-plugins", "nav-events", "nav-trust", "nav-system"]) {
      await page.getByTestId(nav).click();
      await page.getByTestId("banner-unsigned").filter({ hasText: "Unsigned packages are allowed (development setting)" }).waitFor();
    }
    await upload(page, [pk.files["0.1.0"]]);
    await page.getByTestId("install-unsigned").waitFor();
    assert.equal(await page.getByTestId("install-key-id").count(), 0);
    await shot(page, "29-unsigned-manifest");
    // On a phone the review fits the screen's width.
    await page.setViewportSize({ width: 390, height: 844 });
    const over = await page.getByTestId("install-dialog").evaluate((d) => d.scrollWidth - d.clientWidth);
    assert.ok(over <= 1, "the review needs no sideways scrolling on a phone (" + over + " px)");
    await shot(page, "29-unsigned-manifest-phone");
    await page.setViewportSize({ width: 1280, height: 860 });
    await page.getByTestId("install-confirm").click();
    await result(page, "installed");
    await page.getByTestId("dialog-close").click();
    await page.getByTestId("plugin-package-" + ID).filter({ hasText: "unsigned" }).waitFor();
    await shot(page, "30-unsigned-banner");
    await ctx.close();
    log("unsigned banner and package: ok");
  } catch (e) {
    console.error("unsigned host log:\n" + host.log().split("\n").slice(-60).join("\n"));
    throw e;
  } finally {
    await host.stop();
  }
  fs.rmSync(host.root, { recursive: true, force: true });
}

// The settings form (settings.js) on the plugin's settings page, saved through the host.
async function settingsFlow(page) {
  await page.evaluate(() => { location.hash = "#/"; });
  await page.getByTestId("plugin-settings-" + ID).click();
  const form = page.getByTestId("settings-form");
  await form.waitFor();
  const field = (p) => form.locator(`[name="${p}"]`);
  const errorAt = (p) => form.locator(`[data-path="${p}"] > [data-testid="field-error"]`);
  // Defaults from the schema.
  assert.equal(await field("greeting").inputValue(), "Hello");
  assert.equal(await field("mqtt.host").inputValue(), "localhost");
  assert.equal(await field("mqtt.port").inputValue(), "1883");
  // Edit the nested group, set the secret, add two list items.
  await field("greeting").fill("hi there");
  await field("mqtt.host").fill("broker.lan");
  await field("mqtt.port").fill("8883");
  await field("mqtt.password").fill(SECRET);
  const addTopic = form.locator('[data-testid="settings-add"][data-path="mqtt.topics"]');
  await addTopic.click();
  await field("mqtt.topics[0]").fill("home/porch");
  await addTopic.click();
  await field("mqtt.topics[1]").fill("not a topic!");
  // The pattern uses an inline flag JavaScript cannot read, so the form leaves it to the host:
  // the host's error comes back with its path and shows beside that item.
  await form.getByTestId("settings-save").click();
  await errorAt("mqtt.topics[1]").filter({ hasText: "must match" }).waitFor();
  assert.equal(await errorAt("mqtt.topics[0]").innerText(), "", "only the bad item is marked");
  await shot(page, "26-settings-error");
  // Remove the bad item and save.
  await form.locator('[data-testid="settings-remove"][data-path="mqtt.topics[1]"]').click();
  await form.getByTestId("settings-save").click();
  await page.getByTestId("toast").filter({ hasText: "Settings saved" }).first().waitFor();
  // The secret is write-only: not in the form, not in what the host sends the page.
  await page.getByTestId("settings-form").getByTestId("settings-status").filter({ hasText: "Saved" }).waitFor();
  assert.equal(await field("mqtt.password").inputValue(), "");
  assert.match(await field("mqtt.password").getAttribute("placeholder"), /^set/);
  const stored = await page.evaluate(async (id) => (await fetch(`/api/plugins/${id}/settings`)).json(), ID);
  assert.equal(stored.values.mqtt.password, null);
  assert.deepEqual(stored.secrets_set, ["mqtt.password"]);
  assert.deepEqual(stored.values.mqtt.topics, ["home/porch"]);
  assert.equal(stored.values.mqtt.port, 8883);
  // After a reload the form shows what was saved, and still not the secret.
  await page.reload();
  await page.getByTestId("settings-form").waitFor();
  assert.equal(await field("greeting").inputValue(), "hi there");
  assert.equal(await field("mqtt.topics[0]").inputValue(), "home/porch");
  assert.equal(await field("mqtt.topics[1]").count(), 0);
  assert.equal(await field("mqtt.password").inputValue(), "");
  assert.ok(!(await page.content()).includes(SECRET), "the secret never reaches the page");
  await shot(page, "27-settings");
  // The plugin has them: its page greets with the new greeting.
  await page.evaluate((id) => { location.hash = "#/p/" + id; }, ID);
  await page.locator(`[data-plugin="${ID}"]`).getByTestId("hello-message").filter({ hasText: "hi there from Hello World (Python)!" }).waitFor();
  log("settings: ok");
}

export async function packageFlows(browser) {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "tbw-"));
  const pk = buildPackages(work);
  log("packages built in", work, "publisher key", pk.keyId);
  const problems = [];
  const host = await startHost({ prefix: "tbp-", config: "[packages]\nprobation_secs = 2\n" });
  log("packages host at", host.url);
  let page = null;
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
    page = await ctx.newPage();
    watch(page, problems, "packages", REFUSALS);
    await setupAdmin(page, host, PASSWORD);
    assert.equal(await page.getByTestId("banner-unsigned").count(), 0, "no unsigned banner by default");
    await trustFlow(page, pk);
    await progressFlow(page, work);
    await installFlow(page, host, pk);
    await settingsFlow(page);
    await viewerFlow(browser, host, pk, problems);
    await removeFlow(page, pk);
    await ctx.close();
  } catch (e) {
    if (page) await shot(page, "failed-packages").catch(() => {});
    console.error("packages host log:\n" + host.log().split("\n").slice(-60).join("\n"));
    if (problems.length) console.error("browser problems:\n" + problems.join("\n"));
    throw e;
  } finally {
    await host.stop();
  }
  fs.rmSync(host.root, { recursive: true, force: true });
  await unsignedFlow(browser, pk, problems);
  assert.deepEqual(problems, [], "no console errors");
  fs.rmSync(work, { recursive: true, force: true });
}
