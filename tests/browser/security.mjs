// Browser tests of a plugin's Security page (issue 12) against the real host: a signed package of
// the example plugin hello-python whose manifest asks for a process limit, a group and a system
// call (with a reason that tries to inject HTML), installed with the CLI. The page must show what
// GET /api/plugins/{id}/security says — isolation on (root) or off with its reason, every
// protection with its state and detail, each limit with its figure and source — and an admin
// changes the memory and process limits: the page shows the new figures set by "admin", the
// plugin restarts, a reload keeps them; a value the host refuses shows its message beside the
// field and changes nothing; a blank field goes back to the default; ticking the requested group
// and system call grants them. A viewer sees the page without the form. The "isolation is off"
// sentence is also checked on a root host, with the API's answer replaced in the browser.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { cli, hostFlow, log, login, repo, shot, watch } from "./lib.mjs";

const PASSWORD = "security password 1";
const ID = "hello-python";
const REASON = "Reads the <b>serial</b> port; ptrace for its debugger.";
const GROUP = "dialout"; // a group Debian (and the image) has
const SYSCALL = "ptrace";
// Refusals the test provokes (400 invalid_limit, 401 at login), logged as resource errors.
const REFUSALS = [400, 401];
const MANIFEST_EXTRA = `
[limits]
processes = 64

[permissions]
groups = ["${GROUP}"]
syscalls = ["${SYSCALL}"]
network = "any"
reason = "${REASON}"
`;
const PROTECTIONS = ["user", "landlock", "seccomp", "cgroup", "network", "rlimits", "no_new_privs"];
const MIB = 1048576;

// The example with MANIFEST_EXTRA, packed and signed by a key the host trusts, installed.
function installPackage(host, work) {
  const src = path.join(repo, "plugins/hello-python");
  const dir = path.join(work, ID);
  fs.mkdirSync(dir);
  for (const f of ["hello-python.binary", "toru_plugin.py", "bundle.js"]) {
    fs.copyFileSync(fs.realpathSync(path.join(src, f)), path.join(dir, f));
  }
  fs.chmodSync(path.join(dir, "hello-python.binary"), 0o755);
  const manifest = fs.readFileSync(path.join(src, "manifest.toml"), "utf8");
  assert.ok(!/^\[(permissions|limits)\]$/m.test(manifest), "the example's manifest asks for nothing yet");
  fs.writeFileSync(path.join(dir, "manifest.toml"), manifest + MANIFEST_EXTRA);
  cli(["key", "generate", "secpub"], { cwd: work });
  const file = path.join(work, ID + ".toru");
  cli(["plugin", "pack", dir, "--key", path.join(work, "secpub.key"), "-o", file], { cwd: work });
  host.cli(["trust", "add", path.join(work, "secpub.pub")]);
  host.cli(["plugin", "install", file]);
}

const api = (page, p) => page.evaluate(async (p) => {
  const r = await fetch(p, { headers: { Accept: "application/json" } });
  return { status: r.status, body: await r.json() };
}, p);
async function security(page) {
  const r = await api(page, `/api/plugins/${ID}/security`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}
async function plugin(page) { return (await api(page, `/api/plugins/${ID}`)).body; }

async function openSecurity(page) {
  await page.evaluate(() => { location.hash = "#/"; });
  await page.getByTestId("plugin-security-" + ID).click();
  await page.getByTestId("security-limits").waitFor();
}
// The row of limit `key`: its figure and who set it.
async function limitRow(page, key) {
  const row = page.getByTestId("security-limits").getByTestId("limit-" + key);
  return { value: await row.getByTestId("limit-value").innerText(), source: await row.getAttribute("data-source") };
}
async function waitLimit(page, key, value, source) {
  await page.getByTestId("security-limits").locator(`[data-testid="limit-${key}"][data-source="${source}"]`)
    .getByTestId("limit-value").filter({ hasText: new RegExp(`^${value.replace(".", "\\.")}$`) }).waitFor();
}
async function save(page) {
  await page.getByTestId("security-save").click();
}

// What the page shows is what the API says.
async function shownAsTheApiSays(page) {
  const sec = await security(page);
  const root = process.getuid() === 0;
  assert.equal(sec.isolation, root ? "on" : "off", "isolation follows the host's user");
  const banner = page.getByTestId("security-isolation");
  assert.equal(await banner.getAttribute("data-isolation"), sec.isolation);
  if (sec.isolation === "off") {
    assert.equal(await page.getByTestId("security-off-reason").innerText(), "Isolation is off: the host does not run as root.");
  } else {
    assert.match(await banner.innerText(), new RegExp(`^Isolation is on\\. .* \\(uid ${sec.user.uid}\\)`));
    assert.equal(await page.getByTestId("security-user").innerText(), `uid ${sec.user.uid}, gid ${sec.user.gid}`);
  }
  // Every protection the host reports (of the seven it knows; those that need no privileges are
  // always there), its state and its detail.
  const names = sec.protections.map((p) => p.name);
  assert.ok(names.every((n) => PROTECTIONS.includes(n)), "known protections: " + names);
  for (const n of ["user", "rlimits", "no_new_privs"]) assert.ok(names.includes(n), n + " is reported");
  const rows = page.getByTestId("security-protections").locator("tbody tr");
  assert.equal(await rows.count(), sec.protections.length);
  for (const p of sec.protections) {
    const row = page.getByTestId("protection-" + p.name);
    assert.equal(await row.getAttribute("data-state"), p.state, p.name);
    assert.equal(await row.getByTestId("protection-state").innerText(), p.state);
    assert.equal(await row.getByTestId("protection-detail").innerText(), p.detail || "", p.name);
  }
  for (const name of ["rlimits", "no_new_privs"]) {
    assert.equal(await page.getByTestId("protection-" + name).getAttribute("data-state"), "enforced", name + " needs no privileges");
  }
  // Limits: the manifest's process limit, the default open files, memory as the host resolved it.
  assert.deepEqual(await limitRow(page, "processes"), { value: "64", source: "manifest" });
  assert.deepEqual(sec.limits.processes, { value: 64, source: "manifest" });
  assert.deepEqual(await limitRow(page, "open_files"), { value: String(sec.limits.open_files.value), source: "default" });
  const mem = await limitRow(page, "memory");
  assert.equal(mem.source, "default");
  assert.match(mem.value, sec.limits.memory.value === null ? /^unlimited$/ : /^\d+(\.\d{1,2})? (B|KiB|MiB|GiB)$/);
  assert.equal((await limitRow(page, "cpu")).value, sec.limits.cpu.value === null ? "unlimited" : sec.limits.cpu.value + (sec.limits.cpu.value === 1 ? " core" : " cores"));
  // What the manifest asked for, its reason as text.
  assert.equal(await page.getByTestId("security-reason").innerText(), "Why, in the plugin's words: " + REASON);
  assert.equal(await page.getByTestId("security").locator("b").count(), 0, "no HTML from a manifest");
  assert.equal(await page.getByTestId("requested-groups").innerText(), GROUP);
  assert.equal(await page.getByTestId("requested-syscalls").innerText(), SYSCALL);
  assert.equal(await page.getByTestId("granted-groups").innerText(), "none");
}

async function adminFlow(page) {
  await openSecurity(page);
  await shownAsTheApiSays(page);
  await shot(page, "40-security");

  // Memory and processes changed: the figures, set by "admin"; the plugin restarts.
  const before = await plugin(page);
  assert.equal(before.state, "ready");
  assert.equal(await page.getByTestId("limit-input-memory").inputValue(), "", "no override yet");
  await page.getByTestId("limit-input-memory").fill("128M");
  await page.getByTestId("limit-input-processes").fill("32");
  await save(page);
  await page.getByTestId("security-status").filter({ hasText: /^Saved\. .* restarts/ }).waitFor();
  await page.getByTestId("toast").filter({ hasText: "restarts" }).first().waitFor();
  await waitLimit(page, "memory", "128 MiB", "admin");
  await waitLimit(page, "processes", "32", "admin");
  assert.equal(await page.getByTestId("security-error").innerText(), "");
  let sec = await security(page);
  assert.deepEqual(sec.limits.memory, { value: 128 * MIB, source: "admin" });
  assert.deepEqual(sec.limits.processes, { value: 32, source: "admin" });
  await page.waitForFunction(async ([id, pid]) => {
    const p = await (await fetch(`/api/plugins/${id}`)).json();
    return p.state === "ready" && p.pid && p.pid !== pid;
  }, [ID, before.pid], { polling: 200 });
  await shot(page, "41-security-saved");
  // A reload shows them again, and the form starts from them.
  await page.reload();
  await page.getByTestId("security-limits").waitFor();
  assert.deepEqual(await limitRow(page, "memory"), { value: "128 MiB", source: "admin" });
  assert.equal(await page.getByTestId("limit-input-memory").inputValue(), "128M");
  assert.equal(await page.getByTestId("limit-input-processes").inputValue(), "32");
  log("security: limits changed by an admin: ok");

  // A value the host refuses: its message beside the field and under the form; nothing changes.
  await page.getByTestId("limit-input-memory").fill("lots");
  const refused = page.waitForResponse((r) => r.request().method() === "PUT" && r.url().endsWith(`/api/plugins/${ID}/security`));
  await save(page);
  const answer = await refused;
  assert.equal(answer.status(), 400);
  assert.equal((await answer.json()).error, "invalid_limit");
  await page.getByTestId("security-error").filter({ hasText: /^limits\.memory: / }).waitFor();
  const field = page.getByTestId("security-form").locator('[data-key="memory"]');
  assert.notEqual(await field.getByTestId("field-error").innerText(), "");
  assert.equal(await page.getByTestId("limit-input-memory").getAttribute("aria-invalid"), "true");
  assert.equal(await page.getByTestId("security-form").locator('[data-key="processes"]').getByTestId("field-error").innerText(), "");
  assert.ok(!(await page.getByTestId("security-save").isDisabled()), "Save works again");
  await page.getByTestId("security-form").scrollIntoViewIfNeeded();
  await shot(page, "42-security-refused");
  sec = await security(page);
  assert.deepEqual(sec.limits.memory, { value: 128 * MIB, source: "admin" }, "a refused change changes nothing");
  assert.deepEqual(await limitRow(page, "memory"), { value: "128 MiB", source: "admin" });
  log("security: a refused limit: ok (" + (await page.getByTestId("security-error").innerText()) + ")");

  // Blank: back to the default. The requested group and system call, ticked: granted.
  await page.getByTestId("limit-input-memory").fill("");
  await page.getByTestId("grant-group-" + GROUP).check();
  await page.getByTestId("grant-syscall-" + SYSCALL).check();
  await save(page);
  await page.getByTestId("security-status").filter({ hasText: /^Saved\./ }).waitFor();
  await page.getByTestId("security-limits").locator('[data-testid="limit-memory"][data-source="default"]').waitFor();
  assert.equal(await page.getByTestId("security-error").innerText(), "", "the old error is gone");
  assert.equal(await page.getByTestId("limit-input-memory").getAttribute("aria-invalid"), null);
  assert.deepEqual(await limitRow(page, "processes"), { value: "32", source: "admin" }, "the other override stays");
  await page.getByTestId("granted-groups").filter({ hasText: new RegExp(`^${GROUP}$`) }).waitFor();
  assert.equal(await page.getByTestId("granted-syscalls").innerText(), SYSCALL);
  sec = await security(page);
  assert.equal(sec.limits.memory.source, "default");
  assert.deepEqual(sec.granted, { groups: [GROUP], syscalls: [SYSCALL] });
  if (sec.isolation === "on" && /^dialout:/m.test(fs.readFileSync("/etc/group", "utf8"))) {
    // In force once it restarted: the plugin's user is in the group.
    await page.waitForFunction(async (id) => {
      const s = await (await fetch(`/api/plugins/${id}/security`)).json();
      return s.user.groups.includes("dialout");
    }, ID, { polling: 200 });
    await page.getByTestId("security-groups").filter({ hasText: GROUP }).waitFor();
  }
  assert.ok(await page.getByTestId("grant-group-" + GROUP).isChecked(), "the form starts from what was saved");
  log("security: default again, grants: ok");

  // Isolation off says so plainly (the API's answer replaced, for a root host).
  const off = { ...sec, isolation: "off", reason: "the host does not run as root",
    protections: sec.protections.map((p) => p.name === "user" ? { ...p, state: "off", detail: "the host does not run as root" } : p) };
  await page.route(`**/api/plugins/${ID}/security`, (route) => route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify(off) }));
  await page.reload();
  await page.getByTestId("security-off-reason").filter({ hasText: "Isolation is off: the host does not run as root." }).waitFor();
  assert.equal(await page.getByTestId("security-isolation").getAttribute("data-isolation"), "off");
  assert.equal(await page.getByTestId("protection-user").getAttribute("data-state"), "off");
  await shot(page, "43-security-off");
  await page.unroute(`**/api/plugins/${ID}/security`);
  log("security: isolation off banner: ok");

  // On a phone the page fits the screen's width.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.reload();
  await page.getByTestId("security-limits").waitFor();
  const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(over <= 1, "no sideways scrolling on a phone (" + over + " px)");
  await shot(page, "44-security-phone");
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function viewerFlow(browser, host, problems) {
  host.cli(["passwd", "--user", "watcher", "--role", "viewer"], "viewer password 1\n");
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  watch(page, problems, "security viewer", REFUSALS);
  await login(page, host, "watcher", "viewer password 1");
  await openSecurity(page);
  assert.deepEqual(await limitRow(page, "processes"), { value: "32", source: "admin" });
  await page.getByTestId("security-readonly").filter({ hasText: "Only an admin" }).waitFor();
  assert.equal(await page.getByTestId("security-form").count(), 0, "no form for a viewer");
  assert.equal(await page.getByTestId("security").locator("input, button").count(), 0, "no controls for a viewer");
  await ctx.close();
  log("security: viewer: ok");
}

export async function securityFlows(browser) {
  await hostFlow(browser, {
    name: "security", prefix: "tbs-", config: "[packages]\nprobation_secs = 1\n", password: PASSWORD,
    viewport: { width: 1280, height: 900 },
    expected: REFUSALS,
    prepare: installPackage,
  }, async ({ host, page, problems }) => {
    await page.waitForFunction((id) => document.querySelector(`[data-testid="plugin-state-${id}"]`)?.dataset.state === "ready", ID);
    await adminFlow(page);
    await viewerFlow(browser, host, problems);
  });
}
