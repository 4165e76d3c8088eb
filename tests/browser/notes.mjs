// Browser tests of the notes plugin (plugins/notes, Python) in the web UI, on a host of its own
// with notes installed as a package (packed from plugins/notes with `toru plugin pack`, signed by a
// key the host trusts, installed with the CLI): add a note (whose title tries to inject HTML: it
// must show as text) and a checklist, tick and untick an item (kept across a reload), an error
// from the plugin shown on the page, the Settings page (the plugin's schema) changing the title and
// the page size, paging with Older/Newer, delete (a second click confirms), and a viewer (no
// controls that change anything) on a phone viewport.
//
// Run with the others (run.mjs), or alone: node notes.mjs   (after `cargo build --workspace`)
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { chromiumPath, cli, hostFlow, launchArgs, log, login, repo, shot, watch } from "./lib.mjs";

const PASSWORD = "notes password 1";
const ID = "notes";
const XSS_TITLE = "Groceries <img src=x onerror=window.__xss=1>";
// Refusals the test provokes (400: an empty title; 404: a deleted note; 401: the login check before
// logging in), logged by Chromium as resource errors.
const REFUSALS = [400, 401, 404];

// plugins/notes packed and signed by a fresh key, the key trusted, the package installed.
function installNotes(host, work) {
  cli(["key", "generate", "notespub"], { cwd: work });
  const file = path.join(work, "notes-0.1.0.toru");
  cli(["plugin", "pack", path.join(repo, "plugins/notes"), "--key", path.join(work, "notespub.key"), "-o", file], { cwd: work });
  host.cli(["trust", "add", path.join(work, "notespub.pub")]);
  host.cli(["plugin", "install", file]);
}

// The plugin's answer to `GET path`, fetched by the page (its session).
const pluginGet = (page, p) => page.evaluate(async (p) => {
  const r = await fetch("/api/plugins/route/notes" + p, { headers: { Accept: "application/json" } });
  return { status: r.status, body: await r.json() };
}, p);

async function openNotes(page) {
  await page.evaluate((id) => { location.hash = "#/p/" + id; }, ID);
  const view = page.locator(`[data-plugin="${ID}"]`);
  await view.getByTestId("notes-form").waitFor();
  return view;
}

// Wait until the list shows exactly `expected` titles, in order.
async function waitTitles(page, expected) {
  await page.waitForFunction((want) => {
    const got = [...document.querySelectorAll('[data-plugin="notes"] [data-testid="note-title"]')].map((e) => e.textContent);
    return JSON.stringify(got) === JSON.stringify(want);
  }, expected);
}

async function addNote(page, view, { kind = "note", title, body, items }) {
  await view.getByTestId("notes-kind").selectOption(kind);
  await view.getByTestId("notes-new-title").fill(title);
  if (kind === "checklist") await view.getByTestId("notes-new-items").fill(items.join("\n"));
  else await view.getByTestId("notes-new-body").fill(body || "");
  await view.getByTestId("notes-add").click();
  await card(view, title).first().waitFor();
  assert.equal(await view.getByTestId("notes-new-title").inputValue(), "", "the form is cleared");
}

// The note card whose title is exactly `title`.
const exactly = (text) => new RegExp("^" + text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&") + "$");
const card = (view, title) => view.getByTestId("note").filter({ has: view.page().getByTestId("note-title").filter({ hasText: exactly(title) }) });

async function deleteNote(view, title) {
  const del = card(view, title).getByTestId("note-delete");
  await del.click();
  assert.equal(await del.getAttribute("data-armed"), "", "the first click only asks");
  assert.equal(await del.innerText(), "Delete for good?");
  await del.click();
}

async function flows(page) {
  await page.waitForFunction((id) => document.querySelector(`[data-testid="plugin-state-${id}"]`)?.dataset.state === "ready", ID);
  const sec = await page.evaluate(async (id) => (await fetch(`/api/plugins/${id}/security`)).json(), ID);
  log("notes runs with isolation", sec.isolation, "uid", sec.user && sec.user.uid, "—",
    (sec.protections || []).map((p) => p.name + ":" + p.state).join(" "));

  // --- empty, then a note and a checklist (newest first)
  let view = await openNotes(page);
  await view.getByTestId("notes-heading").filter({ hasText: "Notes" }).waitFor();
  await view.getByTestId("notes-empty").waitFor();
  assert.ok(await view.locator("nav").isHidden(), "no paging for one page");
  await addNote(page, view, { title: XSS_TITLE, body: "milk\neggs" });
  assert.equal(await view.locator("img").count(), 0, "a title is text, never HTML");
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await card(view, XSS_TITLE).getByTestId("note-body").innerText(), "milk\neggs");
  assert.ok(await view.getByTestId("notes-empty").isHidden());
  // The items field replaces the text field for a checklist.
  await view.getByTestId("notes-kind").selectOption("checklist");
  assert.ok(await view.getByTestId("notes-new-body").isHidden());
  await addNote(page, view, { kind: "checklist", title: "Trip", items: ["tent", "stove", "", "map"] });
  await waitTitles(page, ["Trip", XSS_TITLE]);
  const trip = card(view, "Trip");
  assert.deepEqual(await trip.getByTestId("note-item-text").allInnerTexts(), ["tent", "stove", "map"]);
  await shot(page, "40-notes-added");
  log("notes: add a note and a checklist: ok");

  // --- tick and untick: the plugin keeps it (a reload shows it, the API says it)
  const tripId = await trip.getAttribute("data-id");
  const stove = trip.locator('[data-testid="note-item"][data-item-id="2"]');
  await stove.getByTestId("note-item-toggle").check();
  await trip.locator('[data-testid="note-item"][data-item-id="2"][data-done="true"]').waitFor();
  let stored = await pluginGet(page, "/notes/" + tripId);
  assert.deepEqual(stored.body.items.map((i) => i.done), [false, true, false]);
  await page.reload();
  view = await openNotes(page);
  await card(view, "Trip").locator('[data-testid="note-item"][data-item-id="2"][data-done="true"]').waitFor();
  assert.ok(await card(view, "Trip").locator('[data-item-id="2"]').getByTestId("note-item-toggle").isChecked());
  await shot(page, "41-notes-ticked");
  await card(view, "Trip").locator('[data-item-id="2"]').getByTestId("note-item-toggle").uncheck();
  await card(view, "Trip").locator('[data-testid="note-item"][data-item-id="2"][data-done="false"]').waitFor();
  stored = await pluginGet(page, "/notes/" + tripId);
  assert.deepEqual(stored.body.items.map((i) => i.done), [false, false, false]);
  log("notes: tick and untick: ok");

  // --- the plugin's error for bad input, on the page
  await view.getByTestId("notes-kind").selectOption("note");
  await view.getByTestId("notes-new-title").fill("   ");
  await view.getByTestId("notes-add").click();
  await view.getByTestId("notes-error").filter({ hasText: "title must not be empty" }).waitFor();
  log("notes: error shown: ok");

  // --- settings from the plugin's schema: a title and two notes a page
  await page.evaluate(() => { location.hash = "#/"; });
  await page.getByTestId("plugin-settings-" + ID).click();
  const form = page.getByTestId("settings-form");
  await form.waitFor();
  assert.equal(await form.locator('[name="page_size"]').inputValue(), "20");
  await form.locator('[name="title"]').fill("Shopping");
  await form.locator('[name="page_size"]').fill("2");
  await form.getByTestId("settings-save").click();
  await page.getByTestId("toast").filter({ hasText: "Settings saved" }).first().waitFor();
  view = await openNotes(page);
  await view.getByTestId("notes-heading").filter({ hasText: "Shopping" }).waitFor();
  await waitTitles(page, ["Trip", XSS_TITLE]);
  log("notes: settings applied: ok");

  // --- a third note makes two pages: Older / Newer
  await addNote(page, view, { title: "Third", body: "" });
  await waitTitles(page, ["Third", "Trip"]);
  assert.equal(await view.getByTestId("notes-page").innerText(), "Page 1");
  assert.ok(await view.getByTestId("notes-prev").isDisabled());
  await view.getByTestId("notes-next").click();
  await waitTitles(page, [XSS_TITLE]);
  assert.equal(await view.getByTestId("notes-page").innerText(), "Page 2");
  assert.ok(await view.getByTestId("notes-next").isDisabled(), "the last page");
  await shot(page, "42-notes-page-2");
  await view.getByTestId("notes-prev").click();
  await waitTitles(page, ["Third", "Trip"]);
  await view.getByTestId("notes-next").click();
  await waitTitles(page, [XSS_TITLE]);
  log("notes: paging: ok");

  // --- delete: the last note of page 2 (back to page 1), then one on page 1
  const xssId = await card(view, XSS_TITLE).getAttribute("data-id");
  await deleteNote(view, XSS_TITLE);
  await waitTitles(page, ["Third", "Trip"]);
  assert.equal(await view.getByTestId("notes-page").innerText(), "Page 1");
  assert.equal((await pluginGet(page, "/notes/" + xssId)).status, 404, "gone from the plugin");
  await deleteNote(view, "Third");
  await waitTitles(page, ["Trip"]);
  assert.ok(await view.locator("nav").isHidden(), "one page again");
  const list = await pluginGet(page, "/notes");
  assert.deepEqual(list.body.notes.map((n) => n.title), ["Trip"]);
  await shot(page, "43-notes-deleted");
  log("notes: delete: ok");
}

// A viewer, on a phone: the notes without the controls that change them; the page fits the
// screen's width.
async function viewerOnPhone(browser, host, problems) {
  host.cli(["passwd", "--user", "watcher", "--role", "viewer"], "viewer password 1\n");
  const ctx = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  const page = await ctx.newPage();
  watch(page, problems, "notes viewer", REFUSALS);
  await login(page, host, "watcher", "viewer password 1");
  await page.getByTestId("plugin-cards").waitFor();
  await page.evaluate((id) => { location.hash = "#/p/" + id; }, ID);
  const view = page.locator(`[data-plugin="${ID}"]`);
  await card(view, "Trip").waitFor();
  assert.ok(await view.getByTestId("notes-form").isHidden(), "no form for a viewer");
  assert.equal(await view.getByTestId("note-delete").count(), 0, "no Delete for a viewer");
  assert.ok(await card(view, "Trip").getByTestId("note-item-toggle").first().isDisabled(), "no ticking for a viewer");
  await shot(page, "44-notes-viewer-phone");
  const over = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(over <= 1, "no sideways scrolling on a phone (" + over + " px)");
  await ctx.close();
  log("notes: viewer on a phone: ok");
}

export async function notesFlows(browser) {
  await hostFlow(browser, {
    name: "notes", prefix: "tbn-", config: "[packages]\nprobation_secs = 1\n", password: PASSWORD,
    viewport: { width: 1280, height: 860 },
    expected: REFUSALS,
    prepare: installNotes,
  }, async ({ host, page, problems }) => {
    await flows(page);
    await viewerOnPhone(browser, host, problems);
  });
}

// Alone: node notes.mjs
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: launchArgs() });
  try {
    await notesFlows(browser);
    log("notes browser flows passed");
  } finally {
    await browser.close();
  }
}
