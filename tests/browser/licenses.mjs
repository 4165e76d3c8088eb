// Browser test of instance-bound licences in the web UI, against the real host: the hello-python
// example packed with `license = "required"` and signed with a `toru key generate` key is
// installed; its card says "Licence needed" with the reason and an upload control; a licence for
// another device uploaded there is refused with the reason (nothing changes); the right one, made
// by `toru license issue` for the licensing id the System page shows, starts the plugin and the
// card shows the licence's features and expiry.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { cli, hostFlow, repo, shot } from "./lib.mjs";

const PASSWORD = "licence password 1";
const ID = "hello-python";

// The example, its manifest saying `license = "required"`, packed and signed in `work`.
function licensedPackage(work) {
  const src = path.join(repo, "plugins", ID);
  const dir = path.join(work, ID);
  fs.mkdirSync(dir);
  for (const f of ["hello-python.binary", "toru_plugin.py", "bundle.js"]) {
    fs.copyFileSync(fs.realpathSync(path.join(src, f)), path.join(dir, f));
  }
  fs.chmodSync(path.join(dir, "hello-python.binary"), 0o755);
  const manifest = fs.readFileSync(path.join(src, "manifest.toml"), "utf8");
  assert.ok(/^min_host = /m.test(manifest), "the example's manifest is as the test expects");
  fs.writeFileSync(path.join(dir, "manifest.toml"), manifest.replace(/^min_host = /m, 'license = "required"\nmin_host = '));
  cli(["key", "generate", "seller"], { cwd: work });
  const out = path.join(work, `${ID}.toru`);
  cli(["plugin", "pack", dir, "--key", path.join(work, "seller.key"), "-o", out]);
  return { pkg: out, key: path.join(work, "seller.key"), pub: path.join(work, "seller.pub") };
}

function issue(work, key, instance, name, extra = []) {
  const out = path.join(work, name);
  cli(["license", "issue", "--key", key, "--plugin", ID, "--instance", instance, "-o", out, ...extra]);
  return out;
}

export async function licenceFlows(browser) {
  let built;
  await hostFlow(browser, {
    name: "licences", prefix: "tbl-", config: "[packages]\nprobation_secs = 1\n", password: PASSWORD,
    viewport: { width: 1280, height: 860 },
    // The refusal the test provokes (422) is logged by Chromium as a resource error.
    expected: [401, 422],
    prepare: (host, work) => { built = licensedPackage(work); },
  }, async ({ host, page, work }) => {
    host.cli(["trust", "add", built.pub]);
    host.cli(["plugin", "install", built.pkg]);
    const licensingId = JSON.parse(host.cli(["instance", "id", "--json"])).licensing_id;
    assert.match(licensingId, /^[0-9a-f]{32}$/);

    // The System page shows the licensing id a publisher issues for.
    await page.goto(host.url + "#/system");
    await page.getByTestId("system").getByText(licensingId).waitFor();

    // The card: waiting for a licence, why, and an upload.
    await page.goto(host.url + "#/");
    const card = page.getByTestId("plugin-card-" + ID);
    await card.getByTestId("plugin-state-" + ID).and(page.locator('[data-state="licence-needed"]')).waitFor();
    const reason = await page.getByTestId("plugin-licence-reason-" + ID).textContent();
    assert.match(reason, /no licence is installed/);
    assert.match(await card.textContent(), /restarts: 0/);
    await shot(page, "60-licence-needed");

    // A licence for another device: refused, with the reason; the plugin keeps waiting.
    const wrong = issue(work, built.key, "f".repeat(32), "wrong.license");
    await page.getByTestId("plugin-licence-file-" + ID).setInputFiles(wrong);
    await page.locator(".toast.error").filter({ hasText: "not this one" }).waitFor();
    await shot(page, "61-licence-refused");
    assert.equal(await card.getByTestId("plugin-state-" + ID).getAttribute("data-state"), "licence-needed");

    // The right one: it starts, and the card shows what the licence grants.
    const good = issue(work, built.key, licensingId, "good.license", ["--feature", "pro"]);
    await page.getByTestId("plugin-licence-file-" + ID).setInputFiles(good);
    await page.locator(`[data-testid="plugin-state-${ID}"][data-state="ready"]`).waitFor();
    const line = page.getByTestId("plugin-licence-" + ID);
    await line.getByText("pro").waitFor();
    await line.getByText("never expires").waitFor();
    await shot(page, "62-licensed");
  });
}
