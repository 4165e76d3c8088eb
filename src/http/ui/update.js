// Toru update panel (System → Update): whole-device A/B updates through RAUC (docs/UPDATES.md,
// GET /api/system/update in docs/API.md). Shows the booted slot, both slots' versions, what the
// check after the last boot found, the update waiting for a reboot and how the last one ended (a
// failed one with its reason, first and in red); for an admin, uploading a bundle with a progress
// bar, what RAUC found in it (version, signer), Install with RAUC's progress, and Reboot.
// Plain JavaScript, no framework, no external resources. Versions, signers and reasons come from a
// bundle or from RAUC: they reach the page through textContent only, never as HTML.
//
//   var panel = ToruUpdate.render(container, opts)
//     opts.call(method, path, body)  app.js's API call (a Promise of the JSON, or an ApiError)
//     opts.admin    true: the upload, install and reboot controls
//     opts.toast(text, kind)
//     opts.every(ms, fn)             a timer the page stops when the user leaves it
//     opts.sessionEnded()            the upload was answered 401
//   panel.load()                     fetch and redraw now
(function () {
  "use strict";

  var h = window.ToruDom.h, add = window.ToruDom.add, clear = window.ToruDom.clear;

  function bytes(n) {
    if (n === null || n === undefined) return "?";
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    if (n < 1073741824) return (n / 1048576).toFixed(1) + " MiB";
    return (n / 1073741824).toFixed(2) + " GiB";
  }
  function when(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }
  function note(kind, testid, content) {
    return h("div", { class: "note " + kind, "data-testid": testid }, content);
  }
  function row(dl, label, value, testid) {
    dl.appendChild(h("dt", { text: label }));
    dl.appendChild(h("dd", testid ? { "data-testid": testid } : null, value));
  }

  // What the check after boot found, in a sentence.
  function gateText(g) {
    if (!g) return "";
    switch (g.state) {
      case "not-started": return "not started yet (the host is starting)";
      case "no-update": return "no update under way; this slot is marked good";
      case "awaiting-reboot": return "an update is installed; reboot to switch to it";
      case "checking":
        var w = Object.keys(g.waiting_for || {}).map(function (id) { return id + " (" + g.waiting_for[id] + ")"; });
        return "checking the new system: waiting for " + (w.length ? w.join(", ") : "the host");
      case "succeeded": return "the new system is healthy and marked good";
      case "gave-up": return "the new system is not healthy: " + g.reason + " \u2014 rebooting into the old one";
      case "fell-back": return "back on the old system: " + g.reason;
      case "failed": return "the update failed: " + g.reason;
      case "error": return "the check could not run: " + g.reason;
      default: return g.state;
    }
  }

  function render(container, opts) {
    var call = opts.call;
    var status = null;         // the last GET /api/system/update
    var preview = null;        // the uploaded bundle, as the host checked it
    var xhr = null;
    var root = h("section", { class: "panel update", "data-testid": "update" });
    var head = h("h2", { text: "Update", style: "margin-top:0;font-size:1.1rem" });
    var last = h("div");
    var facts = h("dl", { class: "facts", "data-testid": "update-facts" });
    var work = h("div", { "data-testid": "update-work" });
    var err = h("div", { class: "form-error", "data-testid": "update-error", role: "alert" });
    add(root, [head, last, facts, work, err]);
    clear(container);
    container.appendChild(root);

    function draw() {
      var s = status;
      clear(last); clear(facts);
      if (!s) return;
      var r = s.last_result;
      if (r && r.result === "failed") {
        last.appendChild(note("bad", "update-last-result", [h("strong", { text: "The last update (" + r.version + ") failed: " }),
          h("span", { "data-testid": "update-last-reason", text: r.reason || "no reason was recorded" }),
          h("div", { class: "muted", text: when(r.at) })]));
      } else if (r) {
        last.appendChild(note("ok", "update-last-result", [h("strong", { text: "The last update (" + r.version + ") succeeded" }),
          " \u2014 slot " + r.to_slot + ", " + when(r.at)]));
      }
      if (!s.enabled) {
        last.appendChild(note("info", "update-unavailable", s.message || "Updates are not available on this device."));
        clear(work);
        return;
      }
      if (s.status_error) {
        row(facts, "RAUC", h("span", { class: "warn-text", text: s.status_error }), "update-status-error");
      } else {
        row(facts, "Booted slot", s.booted, "update-booted");
        (s.slots || []).slice().sort(function (a, b) { return String(a.bootname).localeCompare(String(b.bootname)); }).forEach(function (sl) {
          if (!sl.bootname) return;
          var parts = [sl.state, "boot status " + (sl.boot_status || "?"), sl.version ? "version " + sl.version : "no version recorded"];
          if (sl.installed_at) parts.push("installed " + when(sl.installed_at));
          row(facts, "Slot " + sl.bootname, parts.join(" \u00b7 "), "update-slot-" + sl.bootname);
        });
        row(facts, "Next boot", s.boot_primary ? "slot " + s.boot_primary : "?", "update-next");
        row(facts, "Compatible", s.compatible || "?");
      }
      row(facts, "After boot", gateText(s.gate), "update-gate");
      if (s.gate_problem) row(facts, "Problem", h("span", { class: "warn-text", text: s.gate_problem }), "update-gate-problem");
      var p = s.pending;
      if (p) {
        row(facts, "Pending", p.version + (p.installed_at ? " installed" : " being installed") + ", slot " + p.from_slot + " \u2192 slot " + p.to_slot +
          (p.signer ? " \u00b7 signed by " + p.signer : ""), "update-pending");
      }
      drawWork();
    }

    // The admin's part: install progress, the reboot, or the upload. Redrawn only when what it
    // shows changed (a file being chosen is not taken away by a refresh).
    var shown = null;
    function drawWork() {
      if (xhr) return; // an upload is on the page
      var s = status;
      var inst = s && s.install;
      var key = JSON.stringify([opts.admin, s && s.enabled, inst, s && s.pending, s && s.gate && s.gate.state, preview && preview.token]);
      if (key === shown) return;
      shown = key;
      clear(work);
      if (!opts.admin || !s || !s.enabled) return;
      if (inst && inst.state === "running") {
        add(work, [h("p", null, "Installing ", h("strong", { text: inst.version }), "\u2026"),
          h("progress", { max: "100", value: String(inst.percent || 0), "data-testid": "update-install-progress" }),
          h("div", { class: "muted", "data-testid": "update-install-message", text: (inst.percent || 0) + "% " + (inst.message || "") })]);
        return;
      }
      if (inst && inst.state === "failed") {
        work.appendChild(note("bad", "update-install-failed", "The install of " + inst.version + " failed: " + (inst.error || "no reason")));
      }
      if (s.pending && s.pending.installed_at && s.gate && s.gate.state === "awaiting-reboot") {
        work.appendChild(note("ok", "update-installed", [h("strong", { text: s.pending.version + " is installed in slot " + s.pending.to_slot + "." }),
          " Reboot to switch to it; it is kept once Toru and its plugins are healthy there, otherwise the device comes back to this slot."]));
        work.appendChild(h("button", { class: "primary", "data-testid": "update-reboot", text: "Reboot now", onclick: reboot }));
        return;
      }
      if (preview) return drawPreview();
      drawPick();
    }

    function drawPick() {
      var input = h("input", { type: "file", accept: ".raucb,application/octet-stream", "data-testid": "update-file",
        "aria-label": "Update bundle (.raucb)", onchange: function () {
          var f = input.files && input.files[0];
          if (f) upload(f);
        } });
      add(work, [h("p", { class: "muted", text: "Upload a signed update bundle (.raucb, up to " + bytes(status.max_bundle_bytes) +
        "). It is checked before anything is installed." }), h("label", { class: "btn" }, "Choose a bundle\u2026", input)]);
    }

    function upload(file) {
      err.textContent = "";
      if (typeof status.max_bundle_bytes === "number" && file.size > status.max_bundle_bytes) {
        err.textContent = file.name + " is " + bytes(file.size) + "; this device takes bundles up to " + bytes(status.max_bundle_bytes) + ".";
        return;
      }
      clear(work);
      var bar = h("progress", { max: "100", value: "0", "data-testid": "update-upload-progress" });
      var label = h("div", { class: "muted", "data-testid": "update-upload-text", text: "0 of " + bytes(file.size) });
      var x = xhr = new XMLHttpRequest();
      add(work, [h("p", null, "Uploading ", h("strong", { text: file.name })), bar, label,
        h("button", { text: "Cancel", "data-testid": "update-upload-cancel", onclick: function () {
          if (xhr === x) { xhr = null; shown = null; x.abort(); drawWork(); }
        } })]);
      x.open("POST", "/api/system/update/upload");
      x.setRequestHeader("Content-Type", "application/octet-stream");
      x.setRequestHeader("Accept", "application/json");
      x.setRequestHeader("X-Toru-Csrf", "1");
      x.upload.onprogress = function (e) {
        var total = e.lengthComputable ? e.total : file.size;
        var pct = total ? Math.floor(e.loaded * 100 / total) : 0;
        bar.value = pct;
        label.textContent = bytes(e.loaded) + " of " + bytes(total) + " (" + pct + "%)";
      };
      x.upload.onload = function () {
        bar.value = 100;
        label.textContent = bytes(file.size) + " sent; RAUC checks the signature and the manifest\u2026";
      };
      x.onload = function () {
        if (xhr !== x) return;
        xhr = null; shown = null;
        var j = null;
        try { j = x.responseText ? JSON.parse(x.responseText) : null; } catch (e) { j = null; }
        if (x.status === 201 && j && j.token) { preview = j; drawWork(); return; }
        if (x.status === 401) { opts.sessionEnded(); return; }
        drawWork();
        err.textContent = (x.status === 422 ? "Refused: " : "") + ((j && j.message) || ("HTTP " + x.status));
      };
      x.onerror = function () {
        if (xhr !== x) return;
        xhr = null; shown = null; drawWork();
        err.textContent = "The upload failed: the connection to the host broke (a bundle over the size limit is cut off like this).";
      };
      x.send(file);
    }

    function drawPreview() {
      var dl = h("dl", { class: "facts", "data-testid": "update-preview" });
      row(dl, "Version", preview.version, "update-preview-version");
      row(dl, "Signed by", preview.signer || "(RAUC did not say)", "update-preview-signer");
      row(dl, "For", preview.compatible, "update-preview-compatible");
      if (preview.description) row(dl, "Description", preview.description);
      row(dl, "Size", bytes(preview.bytes));
      var install = h("button", { class: "primary", "data-testid": "update-install", text: "Install into the other slot", onclick: function () {
        install.disabled = true; err.textContent = "";
        call("POST", "/api/system/update/upload/" + encodeURIComponent(preview.token) + "/install").then(function () {
          preview = null; return load();
        }).catch(function (e) { install.disabled = false; err.textContent = e.message; });
      } });
      var cancel = h("button", { "data-testid": "update-cancel", text: "Cancel", onclick: function () {
        var t = preview.token; preview = null; drawWork();
        call("DELETE", "/api/system/update/upload/" + encodeURIComponent(t)).catch(function () {});
      } });
      add(work, [note("ok", "update-checked", "RAUC verified the signature; nothing is installed yet."), dl, h("div", { class: "actions" }, install, cancel)]);
    }

    function reboot(e) {
      var btn = e.target;
      btn.disabled = true;
      call("POST", "/api/system/reboot").then(function () {
        opts.toast("Rebooting\u2026 the page comes back when the device does.");
      }).catch(function (x) { btn.disabled = false; err.textContent = x.message; });
    }

    function load() {
      return call("GET", "/api/system/update").then(function (s) { status = s; draw(); })
        .catch(function (e) { err.textContent = "Cannot show the update status: " + e.message; });
    }
    load();
    // Faster while an install runs, so its progress moves.
    var ticks = 0;
    opts.every(1000, function () {
      ticks++;
      var running = status && status.install && status.install.state === "running";
      var checking = status && status.gate && status.gate.state === "checking";
      if (running || checking || ticks % 5 === 0) load();
    });
    return { load: load };
  }

  window.ToruUpdate = { render: render };
})();
