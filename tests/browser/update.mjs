// Browser test of System → Update (src/http/ui/update.js), against the real host:
// - where updates are off (`[update] enabled = false`, the default) the panel says they are not
//   available here and offers no upload;
// - with the real RAUC (as tests/update.rs: its own system bus, `rauc service` on a test
//   system.conf whose slots are files, a throwaway CA; needs root for the loop device, else this
//   part is skipped, saying so): a bundle signed under another CA is refused with RAUC's reason; a
//   good one uploads with a progress bar, shows its version and signer, installs with RAUC's
//   progress, and offers Reboot (the test's reboot command writes a marker); the device then comes
//   back on slot A without the new slot ever reporting, and the page shows the failed update and
//   its reason first.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { WAIT, log, setupAdmin, shot, startHost, watch } from "./lib.mjs";

const PASSWORD = "update password 1";

// The refusals the test provokes (422), logged by Chromium as resource errors.
const REFUSALS = [401, 422];

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: "utf8", ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status}): ${r.stderr}${r.error || ""}`);
  return r.stdout;
}

function have(cmd) {
  return !spawnSync(cmd, ["--version"], { stdio: "ignore" }).error;
}

const BOOT_SH = `#!/bin/sh
f=$(dirname "$0")/bootstate
[ -f "$f" ] || printf 'ORDER=A B\\nA_OK=1\\nB_OK=1\\n' > "$f"
get() { sed -n "s/^$1=//p" "$f"; }
case "$1" in
 get-primary) for s in $(get ORDER); do [ "$(get \${s}_OK)" = 1 ] && { echo $s; exit 0; }; done; exit 1;;
 set-primary) o="$2"; for s in $(get ORDER); do [ "$s" = "$2" ] || o="$o $s"; done
              sed -i "s/^ORDER=.*/ORDER=$o/; s/^\${2}_OK=.*/\${2}_OK=1/" "$f";;
 get-state) [ "$(get \${2}_OK)" = 1 ] && echo good || echo bad;;
 set-state) v=0; [ "$3" = good ] && v=1; sed -i "s/^\${2}_OK=.*/\${2}_OK=$v/" "$f";;
 get-current) get ORDER | cut -d' ' -f1;;
 *) exit 1;;
esac
`;

// RAUC on its own bus in `dir` (see tests/update.rs, whose rig this follows).
async function startRig(dir) {
  const p = (n) => path.join(dir, n);
  const ca = (name, cn) => {
    run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-keyout", p(name + ".key.pem"),
      "-out", p(name + ".cert.pem"), "-subj", "/CN=" + cn]);
  };
  const signer = (caName, name, cn) => {
    fs.writeFileSync(p("signer.cnf"), "[v3]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n");
    run("openssl", ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", p(name + ".key.pem"), "-out", p(name + ".csr"), "-subj", "/CN=" + cn]);
    run("openssl", ["x509", "-req", "-days", "3650", "-CAcreateserial", "-in", p(name + ".csr"), "-CA", p(caName + ".cert.pem"),
      "-CAkey", p(caName + ".key.pem"), "-out", p(name + ".cert.pem"), "-extfile", p("signer.cnf"), "-extensions", "v3"]);
    return { cert: p(name + ".cert.pem"), key: p(name + ".key.pem") };
  };
  ca("ca", "Toru test CA");
  const good = signer("ca", "dev", "Toru test signer");
  ca("other-ca", "Another CA");
  const stranger = signer("other-ca", "other", "Stranger");
  fs.writeFileSync(p("boot.sh"), BOOT_SH, { mode: 0o755 });
  for (const s of ["slotA.img", "slotB.img"]) {
    fs.writeFileSync(p(s), "");
    fs.truncateSync(p(s), 16 * 1024 * 1024);
  }
  fs.mkdirSync(p("mnt"));
  fs.writeFileSync(p("system.conf"), `[system]\ncompatible=toru-test\nbootloader=custom\nstatusfile=${p("rauc.status")}\n` +
    `mountprefix=${p("mnt")}\n[handlers]\nbootloader-custom-backend=${p("boot.sh")}\n[keyring]\npath=${p("ca.cert.pem")}\n` +
    `[slot.rootfs.0]\ndevice=${p("slotA.img")}\ntype=ext4\nbootname=A\n[slot.rootfs.1]\ndevice=${p("slotB.img")}\ntype=ext4\nbootname=B\n`);
  fs.writeFileSync(p("rauc"), `#!/bin/sh\nexec rauc --conf=${p("system.conf")} "$@"\n`, { mode: 0o755 });
  fs.writeFileSync(p("bus.conf"), `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" ` +
    `"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n<busconfig><type>system</type><listen>unix:path=${p("bus.sock")}</listen>` +
    `<auth>EXTERNAL</auth><policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>` +
    `<allow receive_sender="*"/></policy></busconfig>\n`);
  fs.writeFileSync(p("boot_id"), "boot-1\n");
  const bus = spawn("dbus-daemon", ["--config-file=" + p("bus.conf"), "--nofork", "--print-address=1"], { stdio: ["ignore", "pipe", "inherit"] });
  // The address is printed once the bus listens.
  const busAddr = await new Promise((resolve, reject) => {
    let out = "";
    bus.stdout.on("data", (d) => { out += d; if (out.includes("\n")) resolve(out.split("\n")[0].trim()); });
    bus.on("exit", (c) => reject(new Error("dbus-daemon exited " + c)));
  });
  const env = { ...process.env, DBUS_SYSTEM_BUS_ADDRESS: busAddr };
  const service = spawn("rauc", ["--conf=" + p("system.conf"), "service", "--override-boot-slot=A"],
    { env, stdio: ["ignore", fs.openSync(p("service.log"), "a"), fs.openSync(p("service.log"), "a")] });
  const deadline = Date.now() + WAIT;
  for (;;) {
    const r = spawnSync("dbus-send", ["--system", "--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
      "org.freedesktop.DBus.GetConnectionUnixProcessID", "string:de.pengutronix.rauc"], { env, encoding: "utf8" });
    if ((r.stdout || "").includes("uint32 " + service.pid)) break;
    if (Date.now() > deadline) throw new Error("rauc service did not take its bus name:\n" + fs.readFileSync(p("service.log"), "utf8"));
    await new Promise((res) => setTimeout(res, 50));
  }
  const bundle = (name, signedBy) => {
    const content = p("content-" + name);
    fs.mkdirSync(content);
    const image = Buffer.alloc(256 * 1024);
    for (let i = 0; i < image.length; i++) image[i] = (i * 2654435761 + name.length * 97) >>> 13 & 0xff;
    fs.writeFileSync(path.join(content, "rootfs.ext4"), image);
    fs.writeFileSync(path.join(content, "manifest.raucm"),
      "[update]\ncompatible=toru-test\nversion=2.0.0\n[bundle]\nformat=plain\n[image.rootfs]\nfilename=rootfs.ext4\n");
    run("rauc", ["bundle", "--cert=" + signedBy.cert, "--key=" + signedBy.key, content, p(name + ".raucb")]);
    return p(name + ".raucb");
  };
  return {
    busAddr,
    good: bundle("good", good),
    foreign: bundle("foreign", stranger),
    config: `[update]\nenabled = true\nrauc = "${p("rauc")}"\nhealth_timeout_ms = 60000\n` +
      `reboot_command = ["/bin/sh", "-c", "echo reboot >> ${p("rebooted")}"]\nboot_id_file = "${p("boot_id")}"\n`,
    rebooted: () => fs.existsSync(p("rebooted")),
    boot: (id) => fs.writeFileSync(p("boot_id"), id + "\n"),
    stop() { service.kill("SIGKILL"); bus.kill("SIGKILL"); },
  };
}

export async function updateFlows(browser) {
  const problems = [];
  // Updates off: the panel says so.
  {
    const host = await startHost({ prefix: "tbu-" });
    try {
      const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
      const page = await ctx.newPage();
      watch(page, problems, "update (off)", REFUSALS);
      await setupAdmin(page, host, PASSWORD);
      await page.goto(host.url + "#/system");
      const off = page.getByTestId("update-unavailable");
      await off.waitFor();
      assert.match(await off.innerText(), /not available on this device/);
      assert.equal(await page.getByTestId("update-file").count(), 0, "no upload where updates are off");
      await shot(page, "update-off");
      await ctx.close();
    } finally {
      await host.stop();
    }
  }

  const isRoot = process.getuid && process.getuid() === 0;
  const tools = ["rauc", "dbus-daemon", "dbus-send", "openssl"].filter((t) => !have(t));
  if (!isRoot || tools.length) {
    log("update: the RAUC part is skipped:", !isRoot ? "installing a bundle needs root (loop devices)" : "missing " + tools.join(", "));
    assert.deepEqual(problems, []);
    return;
  }
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "tbu-rauc-"));
  const rig = await startRig(work);
  const env = { DBUS_SYSTEM_BUS_ADDRESS: rig.busAddr };
  let host = await startHost({ prefix: "tbu-", config: rig.config, env });
  log("update host at", host.url);
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await ctx.newPage();
    watch(page, problems, "update", REFUSALS);
    await setupAdmin(page, host, PASSWORD);
    await page.goto(host.url + "#/system");
    await page.getByTestId("update-booted").waitFor();
    assert.equal(await page.getByTestId("update-booted").innerText(), "A");
    await page.getByTestId("update-gate").filter({ hasText: "marked good" }).waitFor();

    // Another CA's bundle: refused with RAUC's words, nothing installed.
    await page.getByTestId("update-file").setInputFiles(rig.foreign);
    await page.getByTestId("update-error").filter({ hasText: "Refused:" }).waitFor();
    assert.match(await page.getByTestId("update-error").innerText(), /not signed by a certificate this device trusts.*signature verification failed/);
    await shot(page, "update-refused");

    // The good bundle: progress, what RAUC found, install, progress, reboot.
    await page.getByTestId("update-file").setInputFiles(rig.good);
    await page.getByTestId("update-preview").waitFor();
    assert.equal(await page.getByTestId("update-upload-progress").count(), 0, "the bar goes once the host answered");
    assert.equal(await page.getByTestId("update-preview-version").innerText(), "2.0.0");
    assert.equal(await page.getByTestId("update-preview-signer").innerText(), "CN = Toru test signer");
    await shot(page, "update-preview");
    await page.getByTestId("update-install").click();
    await page.getByTestId("update-installed").waitFor();
    assert.match(await page.getByTestId("update-installed").innerText(), /2\.0\.0 is installed in slot B/);
    assert.match(await page.getByTestId("update-next").innerText(), /slot B/);
    assert.match(await page.getByTestId("update-pending").innerText(), /slot A → slot B.*CN = Toru test signer/);
    await shot(page, "update-installed");
    await page.getByTestId("update-reboot").click();
    await page.getByTestId("toast").filter({ hasText: "Rebooting" }).waitFor();
    assert.ok(rig.rebooted(), "the reboot command ran");

    // The new slot never reports; the device is back on A: the failure and its reason come first.
    await host.stop();
    rig.boot("boot-2");
    host = await startHost({ root: host.root, config: rig.config, env });
    await page.goto(host.url + "#/system");
    const reason = page.getByTestId("update-last-reason");
    await reason.waitFor();
    assert.match(await reason.innerText(), /slot B never became healthy \(Toru on it did not report\)/);
    assert.match(await page.getByTestId("update-last-result").innerText(), /The last update \(2\.0\.0\) failed/);
    await page.getByTestId("update-next").filter({ hasText: "slot A" }).waitFor();
    await shot(page, "update-failed");
    await ctx.close();
  } finally {
    await host.stop();
    rig.stop();
  }
  assert.deepEqual(problems, []);
}
