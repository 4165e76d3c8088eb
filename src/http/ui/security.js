// Toru security panel: what confines one plugin (GET /api/plugins/{id}/security, docs/API.md) —
// isolation on or off and why, its user, folders and network, the limits in force and where each
// came from, which protections this kernel enforces, what its manifest asked for — and, for an
// admin, the form that changes its limits and grants (a save is the PUT; app.js sends it).
// Plain JavaScript, no framework, no external resources. Paths, reasons, group names and the
// manifest's `reason` come from the host or a third-party manifest: they reach the page through
// textContent only, never as HTML.
//
//   var panel = ToruSecurity.render(container, security, opts)
//     security      as GET /api/plugins/{id}/security returns it
//     opts.name     the plugin's name (for sentences)
//     opts.admin    true: draw the form; false: read-only
//     opts.unpackaged  true: no manifest asks for anything, so grants are typed in, not ticked
//     opts.onSave(body) returns a Promise of {ok: true, security} (the panel redraws itself with
//                   it) or {ok: false, code, message}; `body` is the PUT's
//                   {"limits": {key: value|null for each of the five}, "grants": {groups, syscalls}}
//   panel.update(security)  redraws what is shown, not the form (so typing is not lost)
//   panel.body()            what Save would send
//
// In the form a blank limit is null: the admin's override is dropped and the manifest's request
// or the host's default applies again. Digits are sent as numbers (bytes for memory and address
// space, cores for cpu), anything else as typed ("256M", "2G", "50%", "unlimited") for the host
// to read; the host's refusal (400 invalid_limit, "limits.memory: …") shows beside that field.
(function () {
  "use strict";

  var h = window.ToruDom.h, add = window.ToruDom.add, clear = window.ToruDom.clear;

  var LIMITS = [
    { key: "memory", label: "Memory", what: "cgroup memory.max (no swap)", kind: "bytes",
      hint: "bytes (at least 4M) like 256M or 2G, a share of the device's memory like 50%, or unlimited" },
    { key: "processes", label: "Processes", what: "RLIMIT_NPROC and cgroup pids.max", kind: "count",
      hint: "processes and threads together: 1 to 1000000, or unlimited" },
    { key: "cpu", label: "CPU", what: "cgroup cpu.max", kind: "cores",
      hint: "cores, 0.01 to 1024, like 0.5 or 2, or unlimited" },
    { key: "open_files", label: "Open files", what: "RLIMIT_NOFILE", kind: "count",
      hint: "file descriptors: 16 to 1048576" },
    { key: "address_space", label: "Address space", what: "RLIMIT_AS", kind: "bytes",
      hint: "bytes (at least 16M) like 512M or 2G, or unlimited" }
  ];
  var PROTECTIONS = {
    user: "Own user",
    landlock: "Files (Landlock)",
    seccomp: "System calls (seccomp)",
    cgroup: "Memory, processes, CPU (cgroup)",
    network: "Network",
    rlimits: "Resource limits (rlimits)",
    no_new_privs: "No new privileges"
  };
  var STATE_BADGE = { enforced: "ok", degraded: "warn", off: "bad" };
  var NETWORK = {
    any: "the host's network (any address)",
    local: "the host's network; the plugin states it only talks on the local network (a statement of intent, not enforced)",
    none: "none: its own empty network namespace (no interface up, not even loopback)"
  };
  var KIB = 1024, MIB = 1048576, GIB = 1073741824;
  var seq = 0;

  function isObj(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }
  function list(v) { return Array.isArray(v) ? v.map(String) : []; }
  function uid() { return "sec-" + (++seq); }

  // ---------------------------------------------------------------- figures
  // 268435456 → "256 MiB", 1610612736 → "1.5 GiB"; at most two decimals, none when whole.
  function size(n) {
    function num(x) { return String(Math.round(x * 100) / 100); }
    if (n >= GIB) return num(n / GIB) + " GiB";
    if (n >= MIB) return num(n / MIB) + " MiB";
    if (n >= KIB) return num(n / KIB) + " KiB";
    return n + " B";
  }
  function figure(kind, v) {
    if (v === null || v === undefined) return "unlimited";
    if (typeof v !== "number") return String(v);
    if (kind === "bytes") return size(v);
    if (kind === "cores") return v + (v === 1 ? " core" : " cores");
    return String(v);
  }
  // The text an override starts with in the form; the host reads it back to the same value.
  function inputText(kind, v) {
    if (v === null || v === undefined) return "unlimited";
    if (typeof v !== "number") return String(v);
    if (kind === "bytes" && v > 0 && v % GIB === 0) return v / GIB + "G";
    if (kind === "bytes" && v > 0 && v % MIB === 0) return v / MIB + "M";
    return String(v);
  }
  // What the form sends for a field's text: blank → null, digits → a number, else the text.
  function valueOf(text) {
    var t = text.trim();
    if (t === "") return null;
    if (/^\d+$/.test(t)) return Number(t);
    if (/^\d*\.\d+$/.test(t)) return Number(t);
    return t;
  }
  function names(text) {
    return text.split(/[\s,]+/).filter(Boolean);
  }

  // ---------------------------------------------------------------- read-only parts
  function isolationNote(sec, name) {
    var on = sec.isolation === "on";
    var prot = Array.isArray(sec.protections) ? sec.protections : [];
    var weak = prot.filter(function (p) { return p.state !== "enforced"; }).length;
    var u = sec.user;
    var n = h("div", { class: "note " + (on ? "ok" : "bad"), "data-testid": "security-isolation", "data-isolation": on ? "on" : "off" },
      on ? [h("strong", { text: "Isolation is on." }),
        " " + name + " runs as its own user" + (u && typeof u.uid === "number" ? " (uid " + u.uid + ")" : "") +
        ", confined to its own folders and limits." +
        (weak ? " " + weak + (weak === 1 ? " protection is" : " protections are") + " not fully in force on this device (see below)." : "")]
        : [h("strong", { "data-testid": "security-off-reason", text: "Isolation is off: " + (sec.reason || "no reason given") + "." }),
          " " + name + " runs as the host's own user and can read and change what the host can: the store, other plugins' folders, secrets." +
          (prot.length ? " The protections below that need no privileges still apply." : "")]);
    return n;
  }
  function code(text) { return text ? h("code", { text: text }) : h("span", { class: "muted", text: "none" }); }
  function identity(sec) {
    var u = isObj(sec.user) ? sec.user : null, f = isObj(sec.folders) ? sec.folders : {};
    var groups = u ? list(u.groups) : [];
    var missing = u ? list(u.missing_groups) : [];
    var who = u ? "uid " + u.uid + ", gid " + u.gid + (sec.isolation === "on" ? "" : " (the host's own user)") : "the host's own user";
    var rows = [
      ["User", who, "security-user"],
      ["Groups", groups.length ? h("span", null, groups.map(function (g, i) {
        return [i ? ", " : "", g, missing.indexOf(g) >= 0 ? h("span", { class: "warn-text", "data-testid": "security-missing-group", text: " (no such group on this device: skipped)" }) : null];
      })) : h("span", { class: "muted", text: "none" }), "security-groups"],
      ["Network", h("span", null, h("code", { text: sec.network || "any" }), " \u2014 " + (NETWORK[sec.network] || "as declared")), "security-network"],
      ["Data folder", code(f.data), "security-folder-data"],
      ["Install folder", f.install ? h("span", null, code(f.install), sec.isolation === "on" ? " (read-only to it)" : "") : code(null), "security-folder-install"],
      ["Socket", code(f.socket), "security-folder-socket"]
    ];
    var dl = h("dl", { class: "facts", "data-testid": "security-facts" });
    rows.forEach(function (r) {
      dl.appendChild(h("dt", { text: r[0] }));
      dl.appendChild(h("dd", { "data-testid": r[2] }, r[1]));
    });
    return dl;
  }
  function limitsTable(sec) {
    var lim = isObj(sec.limits) ? sec.limits : {};
    return h("table", { class: "list security-limits", "data-testid": "security-limits" },
      h("caption", { class: "visually-hidden", text: "Limits in force" }),
      h("thead", null, h("tr", null, h("th", { scope: "col", text: "Limit" }), h("th", { scope: "col", text: "In force" }),
        h("th", { scope: "col", text: "Set by" }))),
      h("tbody", null, LIMITS.map(function (l) {
        var e = isObj(lim[l.key]) ? lim[l.key] : { value: null, source: "default" };
        return h("tr", { "data-testid": "limit-" + l.key, "data-source": e.source, "data-value": e.value === null ? "unlimited" : String(e.value) },
          h("th", { scope: "row" }, h("span", { text: l.label }), h("div", { class: "muted small", text: l.what })),
          h("td", { "data-testid": "limit-value", title: typeof e.value === "number" && l.kind === "bytes" ? e.value + " bytes" : null,
            text: figure(l.kind, e.value) }),
          h("td", null, h("span", { class: "badge source-" + e.source, "data-testid": "limit-source", text: e.source })));
      })));
  }
  function protectionsTable(sec) {
    var prot = Array.isArray(sec.protections) ? sec.protections : [];
    if (!prot.length) return h("p", { class: "muted", "data-testid": "security-protections", text: "The host reports no protections for this plugin yet (it has not started since the host did)." });
    var counts = { enforced: 0, degraded: 0, off: 0 };
    prot.forEach(function (p) { counts[p.state] = (counts[p.state] || 0) + 1; });
    return h("div", null,
      h("p", { class: "muted", "data-testid": "security-protections-summary",
        text: counts.enforced + " enforced, " + counts.degraded + " degraded, " + counts.off + " off" }),
      h("table", { class: "list security-protections", "data-testid": "security-protections" },
        h("caption", { class: "visually-hidden", text: "Protections" }),
        h("thead", null, h("tr", null, h("th", { scope: "col", text: "Protection" }), h("th", { scope: "col", text: "State" }),
          h("th", { scope: "col", text: "Detail" }))),
        h("tbody", null, prot.map(function (p) {
          return h("tr", { "data-testid": "protection-" + p.name, "data-state": p.state },
            h("th", { scope: "row", text: PROTECTIONS[p.name] || p.name }),
            h("td", null, h("span", { class: "badge " + (STATE_BADGE[p.state] || ""), "data-testid": "protection-state", text: p.state })),
            h("td", { class: "pre", "data-testid": "protection-detail", text: p.detail || "" }));
        }))));
  }
  function requested(sec, unpackaged) {
    var r = isObj(sec.requested) ? sec.requested : {};
    var lim = isObj(r.limits) ? r.limits : null, perm = isObj(r.permissions) ? r.permissions : null;
    var box = h("div", { "data-testid": "security-requested" });
    if (!lim && !perm) {
      box.appendChild(h("p", { class: "muted", text: unpackaged
        ? "An unpackaged plugin has no manifest: it asks for nothing, and gets the host's defaults and what an admin grants."
        : "Its manifest asks for no limits and no permissions: the host's defaults apply." }));
      return box;
    }
    var rows = [];
    if (perm && typeof perm.reason === "string" && perm.reason) {
      box.appendChild(h("div", { class: "note info", "data-testid": "security-reason" },
        h("strong", { text: "Why, in the plugin's words: " }), h("span", { class: "pre", text: perm.reason })));
    }
    LIMITS.forEach(function (l) {
      if (lim && Object.prototype.hasOwnProperty.call(lim, l.key)) {
        var v = lim[l.key];
        rows.push([l.label, typeof v === "number" ? figure(l.kind, v) : String(v), "requested-" + l.key]);
      }
    });
    if (lim) {
      Object.keys(lim).forEach(function (k) {
        if (!LIMITS.some(function (l) { return l.key === k; })) rows.push([k, JSON.stringify(lim[k]), "requested-" + k]);
      });
    }
    if (perm) {
      var g = list(perm.groups), s = list(perm.syscalls);
      rows.push(["Groups", g.length ? g.join(", ") : h("span", { class: "muted", text: "none" }), "requested-groups"]);
      rows.push(["System calls", s.length ? s.join(", ") : h("span", { class: "muted", text: "none" }), "requested-syscalls"]);
      rows.push(["Network", perm.network ? h("code", { text: String(perm.network) }) : h("span", { class: "muted", text: "any (not declared)" }), "requested-network"]);
      Object.keys(perm).forEach(function (k) {
        if (["groups", "syscalls", "network", "reason"].indexOf(k) < 0) rows.push([k, JSON.stringify(perm[k]), "requested-" + k]);
      });
    }
    var dl = h("dl", { class: "facts" });
    rows.forEach(function (row) {
      dl.appendChild(h("dt", { text: row[0] }));
      dl.appendChild(h("dd", { "data-testid": row[2] }, row[1]));
    });
    box.appendChild(dl);
    return box;
  }
  function granted(sec) {
    var g = isObj(sec.granted) ? sec.granted : {};
    var groups = list(g.groups), calls = list(g.syscalls);
    var dl = h("dl", { class: "facts", "data-testid": "security-granted" });
    dl.appendChild(h("dt", { text: "Groups" }));
    dl.appendChild(h("dd", { "data-testid": "granted-groups" }, groups.length ? groups.join(", ") : h("span", { class: "muted", text: "none" })));
    dl.appendChild(h("dt", { text: "System calls allowed" }));
    dl.appendChild(h("dd", { "data-testid": "granted-syscalls" }, calls.length ? calls.join(", ") : h("span", { class: "muted", text: "none" })));
    return dl;
  }

  // ---------------------------------------------------------------- the admin's form
  function form(sec, opts, onSaved) {
    var lim = isObj(sec.limits) ? sec.limits : {};
    var perm = isObj(sec.requested) && isObj(sec.requested.permissions) ? sec.requested.permissions : {};
    var g = isObj(sec.granted) ? sec.granted : {};
    var fields = {};
    var limitSet = h("fieldset", null, h("legend", { text: "Limits" }),
      h("p", { class: "help", text: "Blank: no override — the manifest's request or the host's default applies." }));
    LIMITS.forEach(function (l) {
      var e = isObj(lim[l.key]) ? lim[l.key] : { value: null, source: "default" };
      var id = "security-limit-" + l.key, hintId = uid(), errId = uid();
      var initial = e.source === "admin" ? inputText(l.kind, e.value) : "";
      var input = h("input", { type: "text", id: id, name: l.key, value: initial, autocomplete: "off", spellcheck: "false",
        "data-testid": "limit-input-" + l.key, "aria-describedby": hintId,
        placeholder: e.source === "admin" ? "blank: back to the default" : "now " + figure(l.kind, e.value) + " (" + e.source + ")" });
      var err = h("div", { class: "field-error", id: errId, "data-testid": "field-error" });
      fields[l.key] = { input: input, err: err, errId: errId, hintId: hintId, initial: initial };
      limitSet.appendChild(h("div", { class: "field", "data-key": l.key },
        h("label", { for: id, text: l.label }), input, h("p", { class: "help", id: hintId, text: l.hint }), err));
    });

    // Grants: ticked from what the manifest asks for (a grant it does not ask for has no effect);
    // an unpackaged plugin has no manifest, so the admin's grant alone counts: typed in.
    var boxes = [];
    var permSet = h("fieldset", null, h("legend", { text: "Permissions" }));
    var typed = null;
    if (opts.unpackaged) {
      var gi = h("input", { type: "text", id: "security-grant-groups", value: list(g.groups).join(", "), autocomplete: "off",
        spellcheck: "false", "data-testid": "grant-groups-input" });
      var si = h("input", { type: "text", id: "security-grant-syscalls", value: list(g.syscalls).join(", "), autocomplete: "off",
        spellcheck: "false", "data-testid": "grant-syscalls-input" });
      typed = { groups: gi, syscalls: si };
      add(permSet, [h("p", { class: "help", text: "An unpackaged plugin has no manifest to ask: what you list here is granted as it is. Separate names with commas." }),
        h("div", { class: "field" }, h("label", { for: "security-grant-groups", text: "Supplementary groups (from /etc/group)" }), gi),
        h("div", { class: "field" }, h("label", { for: "security-grant-syscalls", text: "System calls to allow (lifted from the deny list)" }), si)]);
    } else {
      var req = { group: list(perm.groups), syscall: list(perm.syscalls) };
      var have = { group: list(g.groups), syscall: list(g.syscalls) };
      ["group", "syscall"].forEach(function (kind) {
        var all = req[kind].concat(have[kind].filter(function (x) { return req[kind].indexOf(x) < 0; }));
        all.forEach(function (name) {
          var id = uid();
          var asked = req[kind].indexOf(name) >= 0;
          var box = h("input", { type: "checkbox", id: id, checked: have[kind].indexOf(name) >= 0,
            "data-testid": "grant-" + kind + "-" + name, "data-kind": kind, "data-name": name });
          boxes.push(box);
          permSet.appendChild(h("label", { class: "check", for: id }, box,
            h("span", null, kind === "group" ? "Member of group " : "May call ", h("code", { text: name }),
              asked ? "" : h("span", { class: "muted", text: " (not asked for by the manifest: no effect)" }))));
        });
      });
      if (!boxes.length) permSet.appendChild(h("p", { class: "muted", text: "The manifest asks for no groups and no system calls." }));
    }
    var initialGrants = JSON.stringify(grants());
    function grants() {
      if (typed) return { groups: names(typed.groups.value), syscalls: names(typed.syscalls.value) };
      var out = { groups: [], syscalls: [] };
      boxes.forEach(function (b) { if (b.checked) out[b.getAttribute("data-kind") === "group" ? "groups" : "syscalls"].push(b.getAttribute("data-name")); });
      return out;
    }
    function body() {
      var limits = {};
      LIMITS.forEach(function (l) { limits[l.key] = valueOf(fields[l.key].input.value); });
      return { limits: limits, grants: grants() };
    }
    function changed() {
      return LIMITS.some(function (l) { return fields[l.key].input.value.trim() !== fields[l.key].initial; }) ||
        JSON.stringify(grants()) !== initialGrants;
    }
    function clearErrors() {
      LIMITS.forEach(function (l) {
        var f = fields[l.key];
        f.err.textContent = "";
        f.input.removeAttribute("aria-invalid");
        f.input.setAttribute("aria-describedby", f.hintId);
      });
      error.textContent = "";
    }

    var save = h("button", { class: "primary", type: "submit", "data-testid": "security-save", text: "Save and restart" });
    var status = h("span", { class: "muted", role: "status", "data-testid": "security-status" });
    var error = h("div", { class: "form-error", role: "alert", "data-testid": "security-error" });
    var el = h("form", { class: "security-form panel wide", "data-testid": "security-form", novalidate: true, onsubmit: function (e) {
      e.preventDefault();
      clearErrors();
      if (!changed()) { status.textContent = "Nothing changed."; return; }
      save.disabled = true; status.textContent = "Saving\u2026";
      opts.onSave(body()).then(function (r) {
        if (r.ok) { onSaved(r.security); return; }
        status.textContent = "";
        save.disabled = false;
        var m = /^limits\.([a-z_]+):\s*([\s\S]*)$/.exec(r.message || "");
        var f = m && fields[m[1]];
        if (f) {
          f.err.textContent = m[2];
          f.input.setAttribute("aria-invalid", "true");
          f.input.setAttribute("aria-describedby", f.hintId + " " + f.errId);
          f.input.focus();
        }
        error.textContent = r.message || "The host refused the change.";
      });
    } },
    h("h2", { text: "Change limits and permissions" }),
    h("p", { class: "muted", "data-testid": "security-restart-note", text: "Saving restarts " + opts.name + " if it is running: limits and grants apply when it starts." }),
    limitSet, permSet,
    h("div", { class: "settings-actions" }, save, status), error);
    return { el: el, body: body, status: status };
  }

  // ---------------------------------------------------------------- the panel
  function render(container, security, opts) {
    opts = opts || {};
    var name = opts.name || "The plugin";
    var view = h("div", { "data-testid": "security-view" });
    var formBox = h("div");
    var current = null, f = null;
    function draw(sec) {
      current = sec;
      clear(view);
      add(view, [
        isolationNote(sec, name),
        identity(sec),
        h("h2", { text: "Limits in force" }), limitsTable(sec),
        h("h2", { text: "Protections on this device" }), protectionsTable(sec),
        h("h2", { text: "What its manifest asks for" }), requested(sec, opts.unpackaged),
        h("h2", { text: "What an admin granted" }), granted(sec)
      ]);
    }
    function drawForm(sec) {
      clear(formBox);
      if (!opts.admin) {
        formBox.appendChild(h("p", { class: "muted", "data-testid": "security-readonly", text: "Only an admin can change limits and permissions." }));
        f = null;
        return;
      }
      f = form(sec, { name: name, unpackaged: opts.unpackaged, onSave: opts.onSave }, function (next) {
        draw(next); drawForm(next);
        f.status.textContent = "Saved. " + name + " restarts with these limits and permissions if it was running.";
      });
      formBox.appendChild(f.el);
    }
    clear(container);
    add(container, [view, formBox]);
    draw(security); drawForm(security);
    return {
      update: function (sec) { draw(sec); },
      body: function () { return f ? f.body() : null; },
      security: function () { return current; }
    };
  }

  window.ToruSecurity = { render: render, size: size };
})();
