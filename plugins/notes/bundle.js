// Frontend of the notes plugin. The Toru UI loads this file and calls mount/unmount; every request
// goes through api.fetch, scoped to the plugin's route (/notes). No external assets. Note text is
// only ever put into the page with textContent, never innerHTML.
//
// What a test reads (data-testid): notes-heading, notes-form, notes-kind, notes-new-title,
// notes-new-body, notes-new-items, notes-add, notes-error, notes-list, notes-empty, note (with
// data-id, data-kind), note-title, note-body, note-item (data-item-id, data-done),
// note-item-toggle, note-item-text, note-delete (data-armed once clicked: a second click deletes;
// none for a viewer, who gets no form and disabled ticks either),
// notes-prev, notes-page, notes-next.
(function () {
  "use strict";
  var ID = "notes";
  var CSS = [
    ".toru-notes{max-width:760px}",
    ".toru-notes form{display:grid;gap:.5rem;background:var(--panel);border:1px solid var(--line);",
    "border-radius:10px;padding:.9rem;margin-bottom:1rem}",
    ".toru-notes .row{display:flex;gap:.5rem;flex-wrap:wrap}",
    ".toru-notes .row>select{width:auto}",
    ".toru-notes .row>input{flex:1;min-width:10rem}",
    ".toru-notes textarea{font:inherit;color:inherit;background:var(--panel);border:1px solid var(--line);",
    "border-radius:8px;padding:.5em .7em;min-height:4.5em;resize:vertical;width:100%}",
    ".toru-notes .error{color:var(--bad);min-height:1.3em;margin:.25rem 0}",
    ".toru-notes .list{display:grid;gap:.7rem}",
    ".toru-notes article{background:var(--panel);border:1px solid var(--line);border-radius:10px;",
    "padding:.8rem 1rem;overflow-wrap:anywhere}",
    ".toru-notes article h3{margin:0 0 .35rem;font-size:1.05rem}",
    ".toru-notes article .body{white-space:pre-wrap;margin:.2rem 0}",
    ".toru-notes article ul{list-style:none;padding:0;margin:.2rem 0}",
    ".toru-notes article li label{display:flex;gap:.5rem;align-items:baseline;cursor:pointer}",
    ".toru-notes article li[data-done=true] span{text-decoration:line-through;color:var(--muted)}",
    ".toru-notes article footer{display:flex;gap:.5rem;align-items:center;margin-top:.4rem;",
    "font-size:.85rem;color:var(--muted)}",
    ".toru-notes article footer .spacer{flex:1}",
    ".toru-notes article footer button{flex:none;white-space:nowrap}",
    ".toru-notes button.armed{background:var(--bad);color:#fff;border-color:var(--bad)}",
    ".toru-notes nav{display:flex;gap:.75rem;align-items:center;justify-content:center;margin-top:1rem}",
    ".toru-notes .muted{color:var(--muted)}",
    ".toru-notes [hidden]{display:none!important}"
  ].join("");
  var mounted = []; // [{container, state}] of live mounts

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") e.textContent = String(v);
      else if (k === "class") e.className = v;
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else if (k === "checked" || k === "disabled" || k === "value") e[k] = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }

  // One request: resolves with the JSON answer, rejects with the plugin's message.
  function request(api, method, path, body) {
    var init = { method: method, headers: { Accept: "application/json" } };
    if (body !== undefined) init.body = body;
    return Promise.resolve(api.fetch(path, init)).then(function (r) {
      if (!r || typeof r.json !== "function") return r;
      return r.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!r.ok) {
          throw new Error((data && data.message) || ("HTTP " + r.status));
        }
        return data;
      });
    });
  }

  function when(text) {
    var d = new Date(text);
    return isNaN(d.getTime()) ? "" : d.toLocaleString();
  }

  function mount(container, api) {
    // A viewer may read but not change (the host refuses it anyway): no form, no delete, no ticks.
    var readOnly = !!(api.user && api.user.role === "viewer");
    var state = {
      live: true,
      cursors: [""], // the cursor of each page seen so far; page n is cursors[n]
      page: 0,
      next: null,
      seq: 0 // answers to an older load are dropped
    };
    mounted.push({ container: container, state: state });

    var heading = el("h2", { "data-testid": "notes-heading", text: "Notes" });
    var kind = el("select", { "data-testid": "notes-kind", "aria-label": "Kind" }, [
      el("option", { value: "note", text: "Note" }),
      el("option", { value: "checklist", text: "Checklist" })
    ]);
    var title = el("input", { type: "text", "data-testid": "notes-new-title", placeholder: "Title",
      "aria-label": "Title", maxlength: 200 });
    var body = el("textarea", { "data-testid": "notes-new-body", placeholder: "Write something\u2026",
      "aria-label": "Text" });
    var items = el("textarea", { "data-testid": "notes-new-items", placeholder: "One item a line",
      "aria-label": "Items, one a line", hidden: true });
    var add = el("button", { type: "submit", class: "primary", "data-testid": "notes-add", text: "Add" });
    var form = el("form", { "data-testid": "notes-form", onsubmit: onAdd, hidden: readOnly },
      [el("div", { class: "row" }, [kind, title, add]), body, items]);
    var error = el("p", { class: "error", role: "alert", "data-testid": "notes-error" });
    var list = el("div", { class: "list", "data-testid": "notes-list", "aria-live": "polite" });
    var empty = el("p", { class: "muted", "data-testid": "notes-empty", hidden: true,
      text: readOnly ? "No notes yet." : "No notes yet: add one above." });
    var prev = el("button", { type: "button", "data-testid": "notes-prev", text: "\u2190 Newer",
      onclick: function () { go(state.page - 1); } });
    var pageLabel = el("span", { class: "muted", "data-testid": "notes-page" });
    var next = el("button", { type: "button", "data-testid": "notes-next", text: "Older \u2192",
      onclick: function () { go(state.page + 1); } });
    var nav = el("nav", { "aria-label": "Pages" }, [prev, pageLabel, next]);
    var style = el("style", { text: CSS });
    var root = el("div", { class: "toru-notes" }, [style, heading, form, error, list, empty, nav]);
    container.appendChild(root);

    kind.addEventListener("change", function () {
      var checklist = kind.value === "checklist";
      body.hidden = checklist;
      items.hidden = !checklist;
    });

    function showError(e) {
      if (!state.live) return;
      error.textContent = e ? String(e.message || e) : "";
    }

    function onAdd(ev) {
      ev.preventDefault();
      var payload = { kind: kind.value, title: title.value };
      if (kind.value === "checklist") {
        payload.items = items.value.split("\n").map(function (s) { return s.trim(); })
          .filter(function (s) { return s !== ""; });
      } else {
        payload.body = body.value;
      }
      add.disabled = true;
      request(api, "POST", "/notes", payload).then(function (note) {
        if (!state.live) return;
        title.value = ""; body.value = ""; items.value = "";
        showError(null);
        if (api.showToast) api.showToast("Added \u201c" + note.title + "\u201d");
        go(0);
      }).catch(showError).then(function () { add.disabled = false; });
    }

    // Load page n: its cursor is known (pages are reached one step at a time).
    function go(n) {
      if (n < 0 || n >= state.cursors.length) return;
      var mySeq = ++state.seq;
      var cursor = state.cursors[n];
      prev.disabled = true; next.disabled = true;
      request(api, "GET", "/notes" + (cursor ? "?cursor=" + encodeURIComponent(cursor) : ""))
        .then(function (page) {
          if (!state.live || mySeq !== state.seq) return;
          // A page emptied by deletes (not the first): show the one before instead.
          if (page.notes.length === 0 && n > 0) {
            state.cursors.length = n;
            go(n - 1);
            return;
          }
          state.page = n;
          state.cursors.length = n + 1;
          if (page.next_cursor) state.cursors.push(page.next_cursor);
          render(page);
        }).catch(showError);
    }

    function render(page) {
      while (list.firstChild) list.removeChild(list.firstChild);
      page.notes.forEach(function (note) { list.appendChild(card(note)); });
      empty.hidden = page.notes.length !== 0 || state.page !== 0;
      prev.disabled = state.page === 0;
      next.disabled = !page.next_cursor;
      pageLabel.textContent = "Page " + (state.page + 1);
      nav.hidden = state.page === 0 && !page.next_cursor;
    }

    function card(note) {
      var art = el("article", { "data-testid": "note", "data-id": note.id, "data-kind": note.kind });
      fill(art, note);
      return art;
    }

    function fill(art, note) {
      while (art.firstChild) art.removeChild(art.firstChild);
      art.appendChild(el("h3", { "data-testid": "note-title", text: note.title }));
      if (note.kind === "checklist") {
        var ul = el("ul", { "aria-label": note.title });
        (note.items || []).forEach(function (item) { ul.appendChild(itemRow(art, note, item)); });
        art.appendChild(ul);
      } else if (note.body) {
        art.appendChild(el("p", { class: "body", "data-testid": "note-body", text: note.body }));
      }
      var del = readOnly ? null : el("button", { type: "button", "data-testid": "note-delete", text: "Delete",
        "aria-label": "Delete \u201c" + note.title + "\u201d" });
      if (del) del.addEventListener("click", function () {
        if (!del.hasAttribute("data-armed")) { // the first click asks, the second deletes
          del.setAttribute("data-armed", "");
          del.className = "armed";
          del.textContent = "Delete for good?";
          return;
        }
        del.disabled = true;
        request(api, "DELETE", "/notes/" + encodeURIComponent(note.id)).then(function () {
          if (!state.live) return;
          showError(null);
          if (api.showToast) api.showToast("Deleted \u201c" + note.title + "\u201d");
          go(state.page);
        }).catch(function (e) { del.disabled = false; showError(e); });
      });
      art.appendChild(el("footer", null, [
        el("span", { text: (note.updated && note.updated !== note.created ? "edited " : "") + when(note.updated || note.created) }),
        el("span", { class: "spacer" }), del]));
    }

    function itemRow(art, note, item) {
      var box = el("input", { type: "checkbox", "data-testid": "note-item-toggle", checked: !!item.done,
        disabled: readOnly });
      box.addEventListener("change", function () {
        box.disabled = true;
        var path = "/notes/" + encodeURIComponent(note.id) + "/items/" + item.id;
        request(api, "PATCH", path, { done: box.checked }).then(function (updated) {
          if (!state.live) return;
          showError(null);
          fill(art, updated);
        }).catch(function (e) {
          box.checked = !box.checked;
          box.disabled = false;
          showError(e);
        });
      });
      return el("li", { "data-testid": "note-item", "data-item-id": item.id, "data-done": String(!!item.done) }, [
        el("label", null, [box, el("span", { "data-testid": "note-item-text", text: item.text })])]);
    }

    request(api, "GET", "/").then(function (info) {
      if (!state.live) return;
      heading.textContent = info.title;
      title.maxLength = info.limits.title_chars;
    }).catch(showError);
    go(0);
  }

  function unmount(container) {
    mounted = mounted.filter(function (m) {
      if (m.container === container) { m.state.live = false; return false; }
      return true;
    });
    while (container.firstChild) container.removeChild(container.firstChild);
  }

  window.ToruPlugins = window.ToruPlugins || {};
  window.ToruPlugins[ID] = { mount: mount, unmount: unmount };
})();
