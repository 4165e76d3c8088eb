// Toru web UI: one page, plain JavaScript, no build step, no external resources.
// Everything a plugin (or the network) provides is put on the page with textContent, never as HTML.
// Routes live in the URL fragment: #/ plugins, #/p/<id> plugin view, #/logs/<id>, #/events, #/system,
// #/versions/<id>, #/settings/<id>, #/security/<id>, #/trust. Package installs, rollbacks and removals
// run in dialogs.
(function () {
  "use strict";

  var CSRF = { "X-Toru-Csrf": "1" };
  var state = { me: null, plugins: [], system: null, current: null, timers: [], mounted: null, loaded: {}, redraw: null };
  var app = document.getElementById("app");

  // ---------------------------------------------------------------- DOM helpers
  var h = window.ToruDom.h, add = window.ToruDom.add, clear = window.ToruDom.clear;
  function logo() {
    var img = h("img", { src: "/ui/icon.svg", alt: "", class: "logo" });
    return img;
  }

  // ---------------------------------------------------------------- API
  function ApiError(status, body) {
    this.status = status;
    this.body = body || null;
    this.code = body && body.error;
    this.message = (body && body.message) || ("HTTP " + status);
  }
  function call(method, path, body) {
    var init = { method: method, headers: Object.assign({ Accept: "application/json" }, CSRF), credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (r) {
      return r.text().then(function (t) {
        var j = null;
        try { j = t ? JSON.parse(t) : null; } catch (e) { j = null; }
        if (!r.ok) {
          var err = new ApiError(r.status, j);
          if (r.status === 401 && path.indexOf("/api/auth/") !== 0) { state.me = null; showLogin("Your session ended; log in again."); }
          throw err;
        }
        return j;
      });
    });
  }

  // ---------------------------------------------------------------- toasts
  function toast(text, kind) {
    var box = document.getElementById("toasts");
    var t = h("div", { class: "toast" + (kind === "error" ? " error" : ""), "data-testid": "toast", text: text });
    box.appendChild(t);
    setTimeout(function () { if (t.parentNode) t.parentNode.removeChild(t); }, kind === "error" ? 6000 : 3500);
  }

  // ---------------------------------------------------------------- time and text
  function ago(iso) {
    if (!iso) return "";
    var s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (!isFinite(s)) return "";
    if (s < 5) return "just now";
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function duration(secs) {
    var d = Math.floor(secs / 86400), hh = Math.floor(secs % 86400 / 3600), m = Math.floor(secs % 3600 / 60);
    return (d ? d + " d " : "") + (d || hh ? hh + " h " : "") + m + " min";
  }
  function bytes(n) {
    if (n === null || n === undefined) return "?";
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }
  function timeOf(iso) {
    var d = new Date(iso);
    return isNaN(d) ? "" : d.toLocaleTimeString();
  }

  // ---------------------------------------------------------------- setup and login
  function page(title, sub, form) {
    clear(app);
    app.appendChild(h("div", { class: "center" }, h("div", { class: "card-form" },
      h("h1", null, logo(), title), h("p", { text: sub }), form)));
  }
  function showSetup() {
    stopTimers();
    var err = h("div", { class: "form-error", "data-testid": "form-error" });
    var code = h("input", { type: "text", id: "setup-code", autocomplete: "one-time-code", autocapitalize: "characters",
      spellcheck: "false", placeholder: "XXXX-XXXX-XXXX", "data-testid": "setup-code", required: true });
    var pw = h("input", { type: "password", id: "setup-password", autocomplete: "new-password", minlength: "8",
      "data-testid": "setup-password", required: true });
    var pw2 = h("input", { type: "password", id: "setup-password2", autocomplete: "new-password", minlength: "8",
      "data-testid": "setup-password2", required: true });
    var btn = h("button", { class: "primary", type: "submit", "data-testid": "setup-submit", text: "Set admin password" });
    var form = h("form", { onsubmit: function (e) {
      e.preventDefault();
      if (pw.value !== pw2.value) { err.textContent = "The passwords differ."; return; }
      if (pw.value.length < 8) { err.textContent = "Use at least 8 characters."; return; }
      btn.disabled = true; err.textContent = "";
      call("POST", "/api/auth/setup", { code: code.value, password: pw.value }).then(function (me) {
        state.me = me; toast("Welcome! The admin password is set."); start();
      }).catch(function (e) { err.textContent = e.message; btn.disabled = false; });
    } },
    h("label", { for: "setup-code", text: "Setup code" }), code,
    h("label", { for: "setup-password", text: "New admin password" }), pw,
    h("label", { for: "setup-password2", text: "Repeat the password" }), pw2, btn, err);
    page("Set up Toru", "Enter the setup code printed in the host log (also in the file setup-code in the data directory) and choose the admin password.", form);
    code.focus();
  }
  function showLogin(message) {
    stopTimers(); unmountPlugin(); closeDialogs();
    var err = h("div", { class: "form-error", "data-testid": "form-error", text: message || "" });
    var user = h("input", { type: "text", id: "login-username", autocomplete: "username", value: "admin",
      autocapitalize: "none", spellcheck: "false", "data-testid": "login-username", required: true });
    var pw = h("input", { type: "password", id: "login-password", autocomplete: "current-password",
      "data-testid": "login-password", required: true });
    var btn = h("button", { class: "primary", type: "submit", "data-testid": "login-submit", text: "Log in" });
    var form = h("form", { onsubmit: function (e) {
      e.preventDefault(); btn.disabled = true; err.textContent = "";
      call("POST", "/api/auth/login", { username: user.value, password: pw.value }).then(function (me) {
        state.me = me; start();
      }).catch(function (e) { err.textContent = e.message; btn.disabled = false; pw.select(); });
    } },
    h("label", { for: "login-username", text: "User" }), user,
    h("label", { for: "login-password", text: "Password" }), pw, btn, err);
    page("Toru", "Log in to manage this device.", form);
    pw.focus();
  }

  // ---------------------------------------------------------------- shell
  var shell = null;
  function buildShell() {
    var nav = h("nav", { class: "side", id: "side", "aria-label": "Main" });
    var main = h("main", { id: "main" });
    var banners = h("div", { id: "banners" });
    var menu = h("button", { id: "menu-button", "aria-label": "Menu", "aria-controls": "side", text: "\u2630",
      onclick: function () { nav.classList.toggle("open"); } });
    var top = h("header", { class: "top" }, menu,
      h("a", { class: "brand", href: "#/" }, logo(), "Toru"),
      h("span", { class: "spacer" }),
      h("span", { class: "who", "data-testid": "whoami", text: state.me.user + " (" + state.me.role + ")" }),
      h("button", { "data-testid": "logout", text: "Log out", onclick: function () {
        call("POST", "/api/auth/logout", {}).catch(function () {}).then(function () { state.me = null; showLogin("Logged out."); });
      } }));
    clear(app);
    app.appendChild(h("div", { class: "shell" }, top, nav, h("div", { style: "min-width:0" }, banners, main)));
    shell = { nav: nav, main: main, banners: banners };
  }
  function navLink(href, icon, label, testid) {
    var active = location.hash === href || (href === "#/" && (location.hash === "" || location.hash === "#"));
    return h("a", { href: href, class: active ? "active" : "", "data-testid": testid, onclick: function () { shell.nav.classList.remove("open"); } },
      h("span", { "aria-hidden": "true", text: icon }), h("span", { text: label }));
  }
  function renderNav() {
    if (!shell) return;
    clear(shell.nav);
    shell.nav.appendChild(navLink("#/", "\u25a6", "Plugins", "nav-plugins"));
    shell.nav.appendChild(navLink("#/events", "\u23f1", "Events", "nav-events"));
    shell.nav.appendChild(navLink("#/trust", "\u26bf", "Trust", "nav-trust"));
    shell.nav.appendChild(navLink("#/system", "\u2699", "System", "nav-system"));
    shell.nav.appendChild(h("h2", { text: "Enabled plugins" }));
    var enabled = state.plugins.filter(function (p) { return p.enabled; });
    if (!enabled.length) shell.nav.appendChild(h("div", { class: "empty", text: "None enabled" }));
    enabled.forEach(function (p) {
      shell.nav.appendChild(navLink("#/p/" + encodeURIComponent(p.id), p.icon || "\u25cf", p.name, "nav-plugin-" + p.id));
    });
  }
  function renderBanners() {
    if (!shell) return;
    clear(shell.banners);
    var s = state.system;
    if (s && s.safe_mode && s.safe_mode.active) shell.banners.appendChild(safeModeBanner(s.safe_mode));
    if (s && s.packages && s.packages.allow_unsigned) {
      shell.banners.appendChild(h("div", { class: "banner warn", "data-testid": "banner-unsigned" },
        h("strong", { text: "Unsigned packages are allowed (development setting)." }),
        " Anyone who can reach an admin account can install code nobody signed. Turn off packages.allow_unsigned on a device in use."));
    }
    if (s && s.degraded) {
      shell.banners.appendChild(h("div", { class: "banner bad", "data-testid": "banner-degraded" },
        h("strong", { text: "Storage problem: " }),
        "the data file could not be used" + (s.store && s.store.reason ? " (" + s.store.reason + ")" : "") +
        ". The host runs on a temporary in-memory store; settings and plugin data will not survive a restart."));
    }
    state.plugins.forEach(function (p) {
      if (p.auto_disabled && !p.enabled) {
        shell.banners.appendChild(h("div", { class: "banner warn", "data-testid": "banner-auto-disabled" },
          h("strong", { text: p.name }), " was disabled automatically: " + p.auto_disabled +
          ". Check its logs, then enable it again."));
      }
    });
  }
  // Safe mode: why, the likely culprits (each with "Disable" for an admin) and "Leave safe mode".
  function safeModeBanner(sm) {
    var n = Math.max(sm.unclean_in_a_row || 0, (sm.culprits || []).length);
    var isAdmin = state.me && state.me.role === "admin";
    var likely = sm.likely_culprits || [];
    var names = likely.map(function (id) { return pluginName(id); });
    var box = h("div", { class: "banner bad", "data-testid": "banner-safe-mode" },
      h("strong", { text: "Safe mode: " }),
      "Toru stopped unexpectedly " + n + (n === 1 ? " time" : " times") + " in a row; third-party plugins are held. ",
      h("span", { "data-testid": "safe-mode-culprits", text: likely.length
        ? "Likely culprit" + (likely.length > 1 ? "s: " : ": ") + names.join(", ")
        : "No plugin was starting or running when it stopped." }));
    if (!isAdmin) return box;
    var actions = h("div", { class: "banner-actions" });
    likely.forEach(function (id, i) {
      var p = state.plugins.filter(function (q) { return q.id === id; })[0];
      if (!p || !p.enabled) return;
      actions.appendChild(h("button", { class: "danger", "data-testid": "safe-mode-disable-" + id, text: "Disable " + names[i],
        onclick: function (e) {
          var b = e.target; b.disabled = true;
          call("POST", pluginUrl(id, "disable"), {}).then(function () {
            toast(names[i] + " disabled"); return afterChange();
          }).catch(function (err) { toast(err.message, "error"); b.disabled = false; });
        } }));
    });
    actions.appendChild(h("button", { class: "primary", "data-testid": "safe-mode-leave", text: "Leave safe mode",
      onclick: function (e) {
        var b = e.target; b.disabled = true;
        call("POST", "/api/system/safe-mode/leave", {}).then(function () {
          toast("Safe mode left; the held plugins are starting."); return afterChange();
        }).catch(function (err) { toast(err.message, "error"); b.disabled = false; });
      } }));
    box.appendChild(actions);
    return box;
  }
  function refresh() {
    return Promise.all([call("GET", "/api/plugins"), call("GET", "/api/system")]).then(function (r) {
      state.plugins = r[0] || []; state.system = r[1];
      renderNav(); renderBanners();
    });
  }
  function every(ms, fn) { state.timers.push(setInterval(fn, ms)); }
  function stopTimers() {
    state.timers.forEach(clearInterval); state.timers = []; state.redraw = null;
    state.follow = (state.follow || 0) + 1; // ends any log follow loop
  }

  // ---------------------------------------------------------------- router
  function route() {
    if (!state.me) return;
    if (!shell || !document.getElementById("main")) buildShell();
    stopTimers(); unmountPlugin();
    var hash = location.hash.replace(/^#/, "") || "/";
    var parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
    clear(shell.main);
    renderNav();
    if (parts.length === 0) return viewPlugins();
    if (parts[0] === "p" && parts[1]) return viewPlugin(parts[1]);
    if (parts[0] === "logs" && parts[1]) return viewLogs(parts[1]);
    if (parts[0] === "events") return viewEvents(parts[1]);
    if (parts[0] === "system") return viewSystem();
    if (parts[0] === "versions" && parts[1]) return viewVersions(parts[1]);
    if (parts[0] === "settings" && parts[1]) return viewSettings(parts[1]);
    if (parts[0] === "security" && parts[1]) return viewSecurity(parts[1]);
    if (parts[0] === "trust") return viewTrust();
    shell.main.appendChild(h("h1", { text: "Not found" }));
  }
  window.addEventListener("hashchange", route);

  // ---------------------------------------------------------------- plugin manager
  function viewPlugins() {
    var m = shell.main;
    var isAdmin = state.me.role === "admin";
    var rescan = h("button", { "data-testid": "rescan", text: "Rescan", disabled: !isAdmin, onclick: function () {
      rescan.disabled = true;
      call("POST", "/api/plugins/rescan", {}).then(function (r) {
        var n = (r.added || []).length, g = (r.removed || []).length, bad = (r.invalid || []).length;
        toast("Rescan: " + n + " added, " + g + " removed" + (bad ? ", " + bad + " invalid" : ""));
        return refresh().then(draw);
      }).catch(function (e) { toast(e.message, "error"); }).then(function () { rescan.disabled = !isAdmin; });
    } });
    var install = isAdmin ? h("button", { class: "primary", "data-testid": "install-open", text: "Install package",
      onclick: function () { installDialog([]); } }) : null;
    m.appendChild(h("h1", null, "Plugins", h("span", { class: "actions" }, install, rescan)));
    var grid = h("div", { class: "cards", "data-testid": "plugin-cards" });
    var invalid = h("div");
    var page = h("div", { class: "drop-page", "data-testid": "plugins-page" }, grid, invalid);
    if (isAdmin) {
      m.appendChild(h("p", { class: "muted hint", text: "To install or update a packaged plugin, drop its .toru file (with its .toru.minisig signature) on this page." }));
      dropTarget(page, function (files) { installDialog(files); });
    }
    m.appendChild(page);
    function draw() {
      clear(grid);
      if (!state.plugins.length) grid.appendChild(h("p", { class: "muted", text: "No plugins found in the plugins directory." }));
      state.plugins.forEach(function (p) { grid.appendChild(card(p, isAdmin, draw)); });
      clear(invalid);
      var inv = (state.system && state.system.invalid_plugins) || [];
      if (inv.length) {
        invalid.appendChild(h("h2", { text: "Skipped binaries" }));
        invalid.appendChild(h("ul", null, inv.map(function (i) { return h("li", null, h("code", { text: i.binary }), ": " + i.reason); })));
      }
    }
    refresh().then(draw).catch(function (e) { toast(e.message, "error"); });
    draw();
    every(3000, function () { refresh().then(draw).catch(function () {}); });
    state.redraw = draw;
  }
  function card(p, isAdmin, redraw) {
    var toggle = h("input", { type: "checkbox", role: "switch", checked: p.enabled, disabled: !isAdmin,
      "aria-label": (p.enabled ? "Disable " : "Enable ") + p.name, "data-testid": "plugin-toggle-" + p.id,
      onchange: function () {
        var want = toggle.checked; toggle.disabled = true;
        call("POST", "/api/plugins/" + encodeURIComponent(p.id) + "/" + (want ? "enable" : "disable"), {}).then(function (v) {
          toast(p.name + (want ? " enabled" : " disabled"));
          state.plugins = state.plugins.map(function (q) { return q.id === v.id ? v : q; });
          renderNav(); redraw();
          return refresh().then(redraw);
        }).catch(function (e) { toggle.checked = !want; toggle.disabled = false; toast(e.message, "error"); });
      } });
    var last = p.last_event;
    var pkg = p.package;
    var enc = encodeURIComponent(p.id);
    var buttons = h("div", { class: "buttons" },
      p.enabled ? h("a", { class: "btn", href: "#/p/" + encodeURIComponent(p.id), text: "Open", "data-testid": "plugin-open-" + p.id }) : null,
      h("a", { class: "btn", href: "#/logs/" + encodeURIComponent(p.id), text: "Logs", "data-testid": "plugin-logs-" + p.id }),
      h("a", { class: "btn", href: "#/events/" + encodeURIComponent(p.id), text: "Events" }),
      isAdmin && p.enabled ? h("button", { text: "Restart", "data-testid": "plugin-restart-" + p.id, onclick: function (e) {
        var b = e.target; b.disabled = true;
        call("POST", "/api/plugins/" + encodeURIComponent(p.id) + "/restart", {}).then(function () {
          toast(p.name + " restarted"); return refresh().then(redraw);
        }).catch(function (err) { toast(err.message, "error"); b.disabled = false; });
      } }) : null,
      pkg ? h("a", { class: "btn", href: "#/versions/" + enc, text: "Versions", "data-testid": "plugin-versions-" + p.id }) : null,
      pkg && pkg.has_settings ? h("a", { class: "btn", href: "#/settings/" + enc, text: "Settings", "data-testid": "plugin-settings-" + p.id }) : null,
      h("a", { class: "btn", href: "#/security/" + enc, text: "Security", "data-testid": "plugin-security-" + p.id }),
      isAdmin && pkg ? h("button", { class: "danger", text: "Remove", "data-testid": "plugin-remove-" + p.id, onclick: function () {
        removeDialog(p);
      } }) : null);
    return h("article", { class: "plugin-card", "data-testid": "plugin-card-" + p.id },
      h("div", { class: "head" },
        h("div", { class: "icon", "aria-hidden": "true", text: p.icon || "\u25cf" }),
        h("div", { style: "min-width:0" }, h("div", { class: "title", text: p.name }),
          h("div", { class: "sub", text: "v" + p.version + (p.author ? " \u00b7 " + p.author : "") + " \u00b7 " + p.route })),
        h("label", { class: "switch", title: p.enabled ? "Enabled" : "Disabled" }, toggle, h("span", { class: "track" }))),
      h("div", { class: "meta" },
        h("span", { class: "state", "data-testid": "plugin-state-" + p.id, "data-state": p.state },
          h("span", { class: "dot " + p.state }), p.state),
        h("span", { class: "muted", text: "restarts: " + p.restarts }),
        p.pid ? h("span", { class: "muted", text: "pid " + p.pid }) : null,
        h("span", { class: "muted", text: "protocol " + p.protocol })),
      packageLine(p),
      licenceLine(p, isAdmin, redraw),
      p.state === "held" ? h("div", { class: "held-note", "data-testid": "plugin-held-" + p.id,
        text: "Held: the host runs in safe mode. It starts when safe mode is left." }) : null,
      last ? h("div", { class: "last", title: last.at }, h("strong", { text: last.kind }), " \u00b7 " + ago(last.at) + " \u00b7 " + last.message) : null,
      buttons);
  }

  // ---------------------------------------------------------------- plugin view
  function pluginApi(p) {
    var base = "/api/plugins/route" + p.route;
    return {
      fetch: function (path, init) {
        init = Object.assign({}, init || {});
        var headers = Object.assign({}, CSRF);
        if (init.headers) {
          if (typeof Headers !== "undefined" && init.headers instanceof Headers) init.headers.forEach(function (v, k) { headers[k] = v; });
          else Object.assign(headers, init.headers);
        }
        var b = init.body;
        var plain = b === undefined || b === null || typeof b === "string" || b instanceof Blob ||
          b instanceof FormData || b instanceof ArrayBuffer || ArrayBuffer.isView(b) || b instanceof URLSearchParams;
        if (!plain) init.body = JSON.stringify(b);
        if (init.body !== undefined && init.body !== null && !Object.keys(headers).some(function (k) { return k.toLowerCase() === "content-type"; }) && !plain) {
          headers["Content-Type"] = "application/json";
        }
        if (typeof b === "string" && !Object.keys(headers).some(function (k) { return k.toLowerCase() === "content-type"; })) {
          headers["Content-Type"] = "application/json";
        }
        init.headers = headers;
        init.credentials = "same-origin";
        path = String(path || "/");
        if (path.charAt(0) !== "/") path = "/" + path;
        return fetch(base + path, init);
      },
      navigate: function (to) {
        to = String(to || "/");
        location.hash = to.charAt(0) === "#" ? to : "#" + (to.charAt(0) === "/" ? to : "/" + to);
      },
      showToast: function (msg, kind) { toast(String(msg), kind === "error" ? "error" : undefined); },
      plugin: { id: p.id, name: p.name, route: p.route },
      user: { name: state.me.user, role: state.me.role }
    };
  }
  // One load per plugin version: an installed update brings its own bundle.
  function loadBundle(id, version) {
    var key = id + "@" + version;
    if (state.loaded[key]) return state.loaded[key];
    state.loaded[key] = new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = "/api/plugins/" + encodeURIComponent(id) + "/bundle.js";
      s.onload = function () { resolve(); };
      s.onerror = function () { delete state.loaded[key]; s.parentNode && s.parentNode.removeChild(s); reject(new Error("the plugin's frontend bundle could not be loaded")); };
      document.head.appendChild(s);
    });
    return state.loaded[key];
  }
  function unmountPlugin() {
    var m = state.mounted;
    state.mounted = null;
    if (!m) return;
    try { if (m.plugin && typeof m.plugin.unmount === "function") m.plugin.unmount(m.container); }
    catch (e) { console.error("unmount failed", e); }
  }
  function viewPlugin(id) {
    var mySeq = state.follow;
    var m = shell.main;
    var title = h("h1", null, h("span", { text: "Plugin" }));
    var status = h("p", { class: "muted", text: "Loading\u2026" });
    var container = h("div", { class: "plugin-view", "data-testid": "plugin-view", "data-plugin": id });
    m.appendChild(title); m.appendChild(status); m.appendChild(container);
    call("GET", "/api/plugins/" + encodeURIComponent(id)).then(function (p) {
      clear(title);
      add(title, [h("span", { "aria-hidden": "true", text: p.icon || "" }), h("span", { text: p.name }),
        h("span", { class: "state" }, h("span", { class: "dot " + p.state }), h("span", { class: "muted", text: p.state })),
        h("span", { class: "actions" }, h("a", { class: "btn", href: "#/security/" + encodeURIComponent(p.id), text: "Security", "data-testid": "plugin-view-security" }),
          h("a", { class: "btn", href: "#/logs/" + encodeURIComponent(p.id), text: "Logs" }))]);
      if (!p.enabled) { status.textContent = "This plugin is disabled. Enable it on the Plugins page."; return; }
      return loadBundle(p.id, p.package ? p.package.version : p.version).then(function () {
        if (state.follow !== mySeq) return; // the user left meanwhile
        var reg = window.ToruPlugins && window.ToruPlugins[p.id];
        if (!reg || typeof reg.mount !== "function") throw new Error("the bundle did not register window.ToruPlugins[\"" + p.id + "\"]");
        status.textContent = "";
        status.style.display = "none";
        state.mounted = { plugin: reg, container: container };
        reg.mount(container, pluginApi(p));
      });
    }).catch(function (e) { status.textContent = "Cannot show this plugin: " + e.message; });
  }

  // ---------------------------------------------------------------- logs
  function viewLogs(id) {
    var m = shell.main;
    var seq = state.follow;
    var level = h("select", { "data-testid": "logs-level", "aria-label": "Level" },
      ["all", "error", "warn", "info", "debug", "trace"].map(function (l) { return h("option", { value: l, text: l === "all" ? "All levels" : l + " and worse" }); }));
    var follow = h("input", { type: "checkbox", checked: true, "data-testid": "logs-follow" });
    var older = h("button", { text: "Older", "data-testid": "logs-older" });
    var newer = h("button", { text: "Newest", "data-testid": "logs-newest" });
    var info = h("span", { class: "muted", "data-testid": "logs-info" });
    var box = h("div", { class: "logs", "data-testid": "logs-lines", role: "log" });
    var pageNo = 1, total = 0, lastSeq = 0;
    m.appendChild(h("h1", null, h("span", { text: "Logs: " + id }),
      h("span", { class: "actions" }, h("a", { class: "btn", href: "#/p/" + encodeURIComponent(id), text: "Open plugin" }))));
    m.appendChild(h("div", { class: "toolbar" }, level, h("label", null, follow, "Live"), older, newer, info));
    m.appendChild(box);
    function line(l) {
      return h("div", { class: "log-line", "data-seq": l.seq },
        h("span", { class: "t", title: l.at, text: timeOf(l.at) }),
        h("span", { class: "lv-" + l.level, text: l.level }),
        h("span", { class: "msg", text: l.message }));
    }
    function lv() { return level.value === "all" ? "" : level.value; }
    function load() {
      var q = "?page=" + pageNo + "&page_size=200" + (lv() ? "&level=" + lv() : "");
      return call("GET", "/api/plugins/" + encodeURIComponent(id) + "/logs" + q).then(function (pg) {
        clear(box);
        total = pg.total;
        pg.lines.forEach(function (l) { box.appendChild(line(l)); lastSeq = Math.max(lastSeq, l.seq); });
        if (!pg.lines.length) box.appendChild(h("div", { class: "log-line muted", text: "No log lines." }));
        var pages = Math.max(1, Math.ceil(total / 200));
        info.textContent = total + " lines \u00b7 page " + pageNo + " of " + pages + (pg.dropped ? " \u00b7 " + pg.dropped + " dropped" : "");
        older.disabled = pageNo >= pages; newer.disabled = pageNo === 1;
        if (pageNo === 1) box.scrollTop = box.scrollHeight;
      }).catch(function (e) { info.textContent = e.message; });
    }
    function poll() {
      if (state.follow !== seq || !follow.checked || pageNo !== 1) return;
      call("GET", "/api/plugins/" + encodeURIComponent(id) + "/logs/follow?after=" + lastSeq + (lv() ? "&level=" + lv() : "")).then(function (r) {
        if (state.follow !== seq) return;
        var atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 30;
        var empty = box.querySelector(".muted"); if (r.lines.length && empty) box.removeChild(empty);
        r.lines.forEach(function (l) { box.appendChild(line(l)); });
        while (box.childNodes.length > 1000) box.removeChild(box.firstChild);
        lastSeq = Math.max(lastSeq, r.next || 0);
        if (atBottom) box.scrollTop = box.scrollHeight;
        poll();
      }).catch(function () { if (state.follow === seq) setTimeout(poll, 3000); });
    }
    level.addEventListener("change", function () { pageNo = 1; load(); });
    follow.addEventListener("change", function () { if (follow.checked) { pageNo = 1; load().then(poll); } });
    older.addEventListener("click", function () { pageNo++; follow.checked = false; load(); });
    newer.addEventListener("click", function () { pageNo = 1; load().then(poll); });
    load().then(poll);
  }

  // ---------------------------------------------------------------- events
  function viewEvents(id) {
    var m = shell.main;
    m.appendChild(h("h1", { text: id ? "Events: " + id : "Events" }));
    var list = h("ul", { class: "timeline", "data-testid": "events" });
    m.appendChild(list);
    var url = id ? "/api/plugins/" + encodeURIComponent(id) + "/events?limit=100" : "/api/events?limit=100";
    function load() {
      call("GET", url).then(function (evs) {
        clear(list);
        if (!evs.length) list.appendChild(h("li", { class: "muted", text: "No events yet." }));
        evs.forEach(function (e) {
          list.appendChild(h("li", null,
            h("span", { class: "kind", text: (e.plugin === "host" ? "" : e.plugin + " \u00b7 ") + e.kind }),
            h("span", { class: "when", title: e.at, text: new Date(e.at).toLocaleString() + " (" + ago(e.at) + ")" }),
            h("span", { class: "msg", text: e.message })));
        });
      }).catch(function (e) { toast(e.message, "error"); });
    }
    load();
    every(5000, load);
  }

  // ---------------------------------------------------------------- system
  // The MQTT bridge's line on the System page (docs/MQTT.md): state, broker, last error, counters.
  function mqttLine(q) {
    if (q.state === "disabled") return "off (no [mqtt] url in the config file)";
    var line = q.state + " \u00b7 " + q.broker + " \u00b7 topics under " + q.topic_prefix +
      " \u00b7 commands " + (q.commands ? "on" : "off") +
      " \u00b7 " + q.published + " published, " + q.dropped + " dropped";
    if (q.last_error && q.state !== "connected") line += " \u00b7 last error: " + q.last_error;
    return line;
  }

  function viewSystem() {
    var m = shell.main;
    m.appendChild(h("h1", { text: "System" }));
    var facts = h("dl", { class: "facts", "data-testid": "system" });
    m.appendChild(facts);
    function load() {
      call("GET", "/api/system").then(function (s) {
        state.system = s; renderBanners();
        clear(facts);
        var rows = [
          ["Version", s.version], ["Instance", s.instance_id],
          ["Licensing id", s.licensing_id || "none (the store cannot be written)"], ["Up for", duration(s.uptime_secs)],
          ["Started", new Date(s.started_at).toLocaleString()], ["Process", "pid " + s.pid],
          ["Memory (RSS)", bytes(s.memory && s.memory.rss_bytes) + " (peak " + bytes(s.memory && s.memory.peak_rss_bytes) + ")"],
          ["Store", (s.store && s.store.state) + (s.degraded ? " \u2014 DEGRADED" : "") + " \u00b7 " + bytes(s.store && s.store.file_bytes) + " \u00b7 " + (s.store && s.store.commits) + " commits"],
          ["Plugins", s.plugins.ready + " ready / " + s.plugins.enabled + " enabled / " + s.plugins.total + " found"],
          ["HTTP", s.http.connections + " of " + s.http.max_connections + " connections"],
          s.safe_mode ? ["Safe mode", (s.safe_mode.active ? "ACTIVE: third-party plugins held" : s.safe_mode.after_unclean ? "not active" : "off") +
            " \u00b7 " + s.safe_mode.unclean_in_a_row + " unclean exit(s) in a row" +
            (s.safe_mode.after_unclean ? " (safe mode after " + s.safe_mode.after_unclean + ")" : "")] : null,
          s.mqtt ? ["MQTT", mqttLine(s.mqtt)] : null,
          s.packages ? ["Packages", (s.packages.allow_unsigned ? "unsigned packages ALLOWED (development setting)" : "signed packages only") +
            (typeof s.packages.probation_secs === "number" ? " \u00b7 probation " + s.packages.probation_secs + " s" : "")] : null
        ];
        rows.forEach(function (r) { if (!r) return; facts.appendChild(h("dt", { text: r[0] })); facts.appendChild(h("dd", { text: String(r[1]) })); });
      }).catch(function (e) { toast(e.message, "error"); });
    }
    load();
    every(5000, load);
    // System → Update: window.ToruUpdate (update.js), loaded when this page is first shown.
    var updateBox = h("div", { "data-testid": "update-box" });
    m.appendChild(updateBox);
    var seq = state.follow;
    loadUiScript("update.js", "ToruUpdate", "the update panel").then(function () {
      if (state.follow !== seq) return; // the user left meanwhile
      window.ToruUpdate.render(updateBox, { call: call, admin: state.me.role === "admin", toast: toast, every: every,
        sessionEnded: function () { state.me = null; showLogin("Your session ended; log in again."); } });
    }).catch(function (e) { updateBox.appendChild(h("p", { class: "form-error", text: e.message })); });
    if (state.me.via === "session") m.appendChild(passwordPanel());
  }
  function passwordPanel() {
    var cur = h("input", { type: "password", id: "pw-current", autocomplete: "current-password" });
    var nw = h("input", { type: "password", id: "pw-new", autocomplete: "new-password", minlength: "8" });
    var err = h("div", { class: "form-error" });
    var btn = h("button", { class: "primary", type: "submit", text: "Change password" });
    return h("form", { class: "panel", onsubmit: function (e) {
      e.preventDefault(); btn.disabled = true; err.textContent = "";
      call("POST", "/api/auth/password", { current: cur.value, new: nw.value }).then(function () {
        toast("Password changed. Other sessions were logged out."); cur.value = ""; nw.value = "";
      }).catch(function (x) { err.textContent = x.message; }).then(function () { btn.disabled = false; });
    } }, h("h2", { text: "Change your password", style: "margin-top:0;font-size:1.1rem" }),
      h("label", { for: "pw-current", text: "Current password" }), cur,
      h("label", { for: "pw-new", text: "New password (8+ characters)" }), nw, btn, err);
  }

  // ---------------------------------------------------------------- packages: shared pieces
  // Everything below shows text from package manifests and signatures; it goes on the page only
  // through h()/textContent.
  function pluginUrl(id, rest) { return "/api/plugins/" + encodeURIComponent(id) + (rest ? "/" + rest : ""); }
  function pluginName(id) {
    var p = state.plugins.filter(function (q) { return q.id === id; })[0];
    return p ? p.name : id;
  }
  function afterChange() {
    return refresh().then(function () { if (state.redraw) state.redraw(); }).catch(function () {});
  }
  // What a plugin card says about its package: "unpackaged", or its version and publisher.
  // A plugin waiting for a licence: why, and (admin) an upload; a licensed one: its claims.
  function licenceLine(p, isAdmin, redraw) {
    if (p.state === "licence-needed") {
      var box = h("div", { class: "licence needed", "data-testid": "plugin-licence-" + p.id },
        h("strong", { text: "Licence needed" }), h("span", { "data-testid": "plugin-licence-reason-" + p.id, text: p.license_needed || "" }));
      if (isAdmin) {
        var input = h("input", { type: "file", accept: ".license,text/plain", "aria-label": "Licence file for " + p.name,
          "data-testid": "plugin-licence-file-" + p.id, onchange: function () {
            var f = input.files && input.files[0];
            if (!f) return;
            input.disabled = true;
            f.text().then(function (text) { return uploadLicence(p.id, text); }).then(function () {
              toast("Licence installed for " + p.name); return refresh().then(redraw);
            }).catch(function (e) { toast("Licence refused: " + e.message, "error"); input.value = ""; input.disabled = false; });
          } });
        box.appendChild(h("label", { class: "btn" }, "Upload licence…", input));
      }
      return box;
    }
    var l = p.license;
    if (!l) return null;
    var feats = (l.features || []).join(", ") || "no features";
    return h("div", { class: "licence", "data-testid": "plugin-licence-" + p.id,
      title: "Publisher key " + l.publisher + " · issued " + l.issued_at },
      h("span", { class: "badge", text: "licensed" }), h("span", { text: feats }),
      h("span", { class: "muted", text: l.expires ? "expires " + new Date(l.expires).toLocaleDateString() : "never expires" }));
  }
  function uploadLicence(id, text) {
    var headers = Object.assign({ Accept: "application/json", "Content-Type": "text/plain" }, CSRF);
    return fetch("/api/licenses?plugin=" + encodeURIComponent(id), { method: "POST", headers: headers, body: text, credentials: "same-origin" })
      .then(function (r) {
        return r.text().then(function (t) {
          var j = null;
          try { j = t ? JSON.parse(t) : null; } catch (e) { j = null; }
          if (!r.ok) throw new ApiError(r.status, j);
          return j;
        });
      });
  }
  function packageLine(p) {
    var pkg = p.package;
    if (pkg === undefined) return null; // a host without packages
    var line = h("div", { class: "pkg-line", "data-testid": "plugin-package-" + p.id });
    if (pkg === null) {
      line.appendChild(h("span", { class: "badge", title: "A plain executable in the plugins folder: no package, no versions, no signature", text: "unpackaged" }));
      return line;
    }
    line.appendChild(h("span", { class: "badge", text: "package " + pkg.version }));
    if (pkg.unsigned) line.appendChild(h("span", { class: "badge warn", text: "unsigned" }));
    else if (pkg.key_id) line.appendChild(h("span", { class: "muted", title: "Publisher key id", text: "key " }, h("code", { text: pkg.key_id })));
    var u = pkg.update;
    if (u && u.state) {
      line.appendChild(h("span", { class: "badge " + (u.state === "probation" ? "warn" : ""), "data-testid": "plugin-update-" + p.id,
        text: (u.kind ? u.kind + " " : "") + (u.from ? u.from + " \u2192 " : "") + (u.to || "") + ": " + (u.state === "probation" ? "on probation" : u.state) }));
    }
    var lu = pkg.last_update;
    if (!u && lu && (lu.result === "rolled-back" || lu.result === "install-failed")) {
      line.appendChild(h("span", { class: "badge bad", title: lu.reason || "", "data-testid": "plugin-last-update-" + p.id,
        text: (lu.result === "rolled-back" ? lu.to + " rolled back" : lu.to + " failed to install") }));
    }
    return line;
  }
  // Files dropped on `el` (the element is highlighted while something is dragged over it).
  function dropTarget(el, onFiles) {
    var depth = 0;
    function hasFiles(e) { return e.dataTransfer && Array.prototype.indexOf.call(e.dataTransfer.types || [], "Files") >= 0; }
    el.addEventListener("dragenter", function (e) { if (!hasFiles(e)) return; depth++; el.classList.add("dropping"); e.preventDefault(); });
    el.addEventListener("dragover", function (e) { if (!hasFiles(e)) return; e.preventDefault(); e.dataTransfer.dropEffect = "copy"; });
    el.addEventListener("dragleave", function () { depth = Math.max(0, depth - 1); if (!depth) el.classList.remove("dropping"); });
    el.addEventListener("drop", function (e) {
      depth = 0; el.classList.remove("dropping");
      if (!hasFiles(e)) return;
      e.preventDefault(); e.stopPropagation();
      onFiles(Array.prototype.slice.call(e.dataTransfer.files));
    });
  }
  // A file dropped anywhere else must not make the browser leave the UI to show it.
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) { e.preventDefault(); });

  // A modal dialog. `onEscape` decides what Escape does (default: close).
  function openDialog(title, testid, onEscape) {
    var heading = h("h2", { text: title });
    var body = h("div", { class: "dialog-body" });
    var foot = h("div", { class: "dialog-buttons" });
    var d = h("dialog", { class: "dialog", "data-testid": testid }, heading, body, foot);
    var dlg = {
      el: d, body: body, foot: foot, closed: false,
      title: function (t) { heading.textContent = t; },
      buttons: function () { clear(foot); add(foot, Array.prototype.slice.call(arguments)); },
      close: function () { if (dlg.closed) return; dlg.closed = true; if (d.open) d.close(); if (d.parentNode) d.parentNode.removeChild(d); }
    };
    d.addEventListener("cancel", function (e) { e.preventDefault(); if (onEscape) onEscape(); else dlg.close(); });
    document.body.appendChild(d);
    d.showModal();
    return dlg;
  }
  function closeDialogs() {
    Array.prototype.forEach.call(document.querySelectorAll("dialog.dialog"), function (d) { if (d.open) d.close(); d.parentNode.removeChild(d); });
  }
  function note(kind, testid, content) {
    return h("div", { class: "note " + kind, "data-testid": testid }, content);
  }
  // Free-form manifest tables ([permissions], [limits]) as nested lists of text.
  function valueList(v) {
    if (v === null || v === undefined) return h("span", { class: "muted", text: "none requested" });
    if (Array.isArray(v)) return h("span", { text: v.map(function (x) { return typeof x === "object" ? JSON.stringify(x) : String(x); }).join(", ") });
    if (typeof v !== "object") return h("span", { text: String(v) });
    var keys = Object.keys(v);
    if (!keys.length) return h("span", { class: "muted", text: "none requested" });
    return h("ul", { class: "kv-list" }, keys.map(function (k) {
      return h("li", null, h("code", { text: k }), ": ", valueList(v[k]));
    }));
  }
  function facts(rows, testid) {
    var dl = h("dl", { class: "facts", "data-testid": testid });
    rows.forEach(function (r) {
      if (!r) return;
      dl.appendChild(h("dt", { text: r[0] }));
      dl.appendChild(h("dd", r[2] ? { "data-testid": r[2] } : null, r[1]));
    });
    return dl;
  }
  function elapsedCounter() {
    var span = h("span", { class: "muted", text: "0 s" });
    var t0 = Date.now();
    var timer = setInterval(function () {
      if (!span.isConnected) { clearInterval(timer); return; }
      span.textContent = Math.round((Date.now() - t0) / 1000) + " s";
    }, 1000);
    return { el: span, stop: function () { clearInterval(timer); } };
  }
  function probationSecs() {
    var p = state.system && state.system.packages;
    return p && typeof p.probation_secs === "number" ? p.probation_secs : null;
  }
  // Runs a request that switches versions and waits for the probation (confirm, rollback), showing
  // that the new version is on probation, then the outcome. `what` = {name, version, fresh}.
  function runProbation(dlg, request, what) {
    var secs = probationSecs();
    var counter = elapsedCounter();
    clear(dlg.body);
    dlg.body.appendChild(note("info", "probation", [
      h("div", { class: "spinner", "aria-hidden": "true" }),
      h("div", null,
        h("strong", { text: what.name + " " + what.version + " is on probation. " }),
        "It must start, become ready and stay healthy" + (secs ? " for " + secs + " s" : "") + ". " +
        (what.fresh ? "If it does not, the install is undone." : "If it does not, the previous version is restored automatically."),
        h("div", null, "Waiting: ", counter.el))]));
    dlg.buttons(h("button", { disabled: true, text: "Working\u2026" }));
    dlg.busy = true;
    // data-outcome: ok, rolled-back (probation failed, the version before runs), refused, error;
    // data-result: what the host answered on success (installed, updated, rolled-back).
    function done(kind, outcome, result, content) {
      counter.stop();
      dlg.busy = false;
      clear(dlg.body);
      var n = note(kind, "result", content);
      n.setAttribute("data-outcome", outcome);
      if (result) n.setAttribute("data-result", result);
      dlg.body.appendChild(n);
      var close = h("button", { class: "primary", "data-testid": "dialog-close", text: "Close", onclick: function () { dlg.close(); } });
      dlg.buttons(close);
      close.focus();
      afterChange();
    }
    return request().then(function (r) {
      var verb = what.verb || (r.result === "installed" ? "Installed" : r.result === "updated" ? "Updated" : r.result || "Done");
      done("ok", "ok", r.result || "ok", [h("strong", { text: verb + ": " }), (r.id || what.name) + " " + (r.version || what.version) + " is running and passed its probation."]);
    }, function (e) {
      if (e.status === 409 && e.code === "rolled_back") {
        done("bad", "rolled-back", null, [h("strong", { text: "Rolled back: " }), h("span", { class: "pre", text: e.message.replace(/^rolled back:\s*/i, "") })]);
      } else if (e.status === 422) {
        done("bad", "refused", null, h("span", { class: "pre", text: e.message }));
      } else {
        done("bad", "error", null, [h("strong", { text: "Failed: " }), h("span", { class: "pre", text: e.message })]);
      }
    });
  }

  // ---------------------------------------------------------------- install
  var MAX_SIGNATURE_BYTES = 4096; // the host's limit; a .minisig is about 300 bytes
  function base64OfFile(file) {
    return file.arrayBuffer().then(function (buf) {
      var b = new Uint8Array(buf), s = "";
      for (var i = 0; i < b.length; i++) s += String.fromCharCode(b[i]);
      return btoa(s);
    });
  }
  function actionText(up) {
    var m = up.manifest, from = up.installed_version;
    switch (up.action) {
      case "install": return "Install " + m.id + " " + m.version + " (new plugin)";
      case "update": return "Update " + m.id + " from " + from + " to " + m.version;
      case "downgrade": return "Downgrade " + m.id + " from " + from + " to " + m.version;
      case "reinstall": return "Reinstall " + m.id + " " + m.version + " (the installed version)";
      default: return up.action + " " + m.id + " " + m.version;
    }
  }
  function installDialog(initial) {
    if (!state.me || state.me.role !== "admin") return;
    var pkg = null, sigs = {}, token = null, xhr = null, up = null;
    var dlg = openDialog("Install a package", "install-dialog", function () {
      if (dlg.busy) return; // the host is switching versions: the outcome comes soon
      cancel();
    });
    function cancel() {
      if (xhr) { xhr.abort(); xhr = null; }
      if (token) {
        var t = token; token = null;
        call("DELETE", "/api/packages/upload/" + encodeURIComponent(t)).catch(function (e) { toast("Cancel: " + e.message, "error"); });
      }
      dlg.close();
    }
    // --- step 1: pick the package and its signature
    var err = h("div", { class: "form-error", "data-testid": "install-error" });
    var chosen = h("div", { class: "chosen", "data-testid": "install-chosen" });
    var input = h("input", { type: "file", multiple: true, accept: ".toru,.minisig", class: "visually-hidden",
      "data-testid": "install-files", id: "install-files", onchange: function () { addFiles(Array.prototype.slice.call(input.files)); input.value = ""; } });
    var zone = h("div", { class: "dropzone", "data-testid": "install-dropzone" },
      h("div", { text: "Drop NAME.toru and its signature NAME.toru.minisig here" }),
      h("div", { class: "muted", text: "or" }),
      h("label", { class: "btn", for: "install-files", tabindex: "0", text: "Choose files\u2026",
        onkeydown: function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } } }), input);
    dropTarget(zone, addFiles);
    var uploadBtn = h("button", { class: "primary", "data-testid": "install-upload", text: "Upload", disabled: true, onclick: upload });
    function addFiles(files) {
      var problems = [];
      var packages = files.filter(function (f) { return /\.toru$/i.test(f.name); });
      if (packages.length > 1) problems.push("Pick one package at a time, not " + packages.map(function (f) { return f.name; }).join(", ") + ".");
      else if (packages.length === 1) pkg = packages[0];
      files.forEach(function (f) {
        if (/\.toru$/i.test(f.name)) return;
        if (/\.minisig$/i.test(f.name)) {
          if (f.size > MAX_SIGNATURE_BYTES) problems.push(f.name + " is " + bytes(f.size) + ": too large for a minisign signature.");
          else sigs[f.name] = f;
        } else {
          problems.push(f.name + " is neither a package (.toru) nor a signature (.minisig).");
        }
      });
      var stray = Object.keys(sigs).filter(function (n) { return pkg && n !== pkg.name + ".minisig"; });
      stray.forEach(function (n) { problems.push(n + " is not the signature of " + pkg.name + " (that one is named " + pkg.name + ".minisig)."); });
      err.textContent = problems.join(" ");
      showChosen();
    }
    function signature() { return pkg ? sigs[pkg.name + ".minisig"] || null : null; }
    function showChosen() {
      clear(chosen);
      var sig = signature();
      if (!pkg) {
        chosen.appendChild(h("p", { class: "muted", text: Object.keys(sigs).length ? "Signature chosen; now the .toru package." : "No package chosen yet." }));
      } else {
        chosen.appendChild(facts([
          ["Package", pkg.name + " (" + bytes(pkg.size) + ")", "install-chosen-package"],
          ["Signature", sig ? sig.name : h("span", { class: "warn-text", text: "none: the package will be uploaded unsigned" }), "install-chosen-signature"]
        ]));
      }
      uploadBtn.disabled = !pkg;
    }
    function pickStep() {
      dlg.title("Install a package");
      clear(dlg.body);
      add(dlg.body, [zone, chosen, err]);
      showChosen();
      dlg.buttons(h("button", { text: "Cancel", "data-testid": "install-cancel", onclick: cancel }), uploadBtn);
    }
    // --- step 2: upload with progress
    function upload() {
      var file = pkg, sig = signature();
      err.textContent = "";
      var cap = state.system && state.system.packages && state.system.packages.max_package_bytes;
      if (typeof cap === "number" && file.size > cap) {
        err.textContent = file.name + " is " + bytes(file.size) + "; this device takes packages up to " + bytes(cap) + ".";
        return;
      }
      (sig ? base64OfFile(sig) : Promise.resolve(null)).then(function (sigB64) {
        var bar = h("progress", { max: "100", value: "0", "data-testid": "install-progress" });
        var label = h("div", { class: "muted", "data-testid": "install-progress-text", text: "0 of " + bytes(file.size) });
        clear(dlg.body);
        add(dlg.body, [h("p", null, "Uploading ", h("strong", { text: file.name }), sig ? " with its signature" : " (unsigned)"), bar, label]);
        dlg.buttons(h("button", { text: "Cancel", "data-testid": "install-cancel", onclick: function () {
          if (xhr) { xhr.abort(); xhr = null; }
          pickStep();
        } }));
        var x = xhr = new XMLHttpRequest();
        x.open("POST", "/api/packages/upload");
        x.setRequestHeader("Content-Type", "application/octet-stream");
        x.setRequestHeader("Accept", "application/json");
        x.setRequestHeader("X-Toru-Csrf", "1");
        if (sigB64) x.setRequestHeader("X-Toru-Signature", sigB64);
        x.upload.onprogress = function (e) {
          var total = e.lengthComputable ? e.total : file.size;
          var pct = total ? Math.floor(e.loaded * 100 / total) : 0;
          bar.value = pct;
          label.textContent = bytes(e.loaded) + " of " + bytes(total) + " (" + pct + "%)";
        };
        x.upload.onload = function () {
          bar.value = 100;
          label.textContent = bytes(file.size) + " sent; the host checks the signature, the manifest and the program\u2026";
        };
        x.onload = function () {
          if (xhr !== x) return;
          xhr = null;
          var j = null;
          try { j = x.responseText ? JSON.parse(x.responseText) : null; } catch (e) { j = null; }
          if (x.status === 201 && j && j.upload) { token = j.upload; up = j; return review(); }
          if (x.status === 401) { state.me = null; dlg.close(); showLogin("Your session ended; log in again."); return; }
          var e = new ApiError(x.status, j);
          pickStep();
          err.textContent = (x.status === 422 ? "Refused: " : "") + e.message;
        };
        x.onerror = function () {
          if (xhr !== x) return;
          xhr = null; pickStep();
          err.textContent = "The upload failed: the connection to the host broke (a package over the host's size limit is cut off like this).";
        };
        x.send(file);
      }).catch(function (e) { err.textContent = "Cannot read " + (sig ? sig.name : file.name) + ": " + e.message; });
    }
    // --- step 3: what the package is, what it asks for; confirm or cancel
    function review() {
      var m = up.manifest, s = up.signature || {};
      dlg.title("Check the package before it runs");
      clear(dlg.body);
      var head = h("div", { class: "pkg-head" },
        h("span", { class: "icon", "aria-hidden": "true", text: m.icon || "\u25cf" }),
        h("div", null, h("div", { class: "title", "data-testid": "install-name", text: m.name }),
          h("div", { class: "muted", "data-testid": "install-version", text: "version " + m.version + (m.author ? " \u00b7 by " + m.author : "") })));
      var signer = s.state === "trusted"
        ? note("ok", "install-signature", [h("strong", { text: "Signed" }), " by trusted key ", h("code", { "data-testid": "install-key-id", text: s.key_id || "?" }),
          s.trusted_comment ? h("div", { class: "muted", text: "Signature comment: " + s.trusted_comment }) : null])
        : note("bad", "install-signature", [h("strong", { "data-testid": "install-unsigned", text: "UNSIGNED." }),
          " Nothing proves who built this package. The host accepts it only because unsigned packages are allowed (development setting)."]);
      var action = note(up.action === "downgrade" ? "bad" : "info", "install-action", h("strong", { text: actionText(up) }));
      add(dlg.body, [head, signer, action, facts([
        ["Id", h("code", { text: m.id })],
        ["Description", m.description || h("span", { class: "muted", text: "none" }), "install-description"],
        ["Author", m.author || "", "install-author"],
        ["Installed version", up.installed_version || h("span", { class: "muted", text: "not installed" }), "install-installed"],
        ["Route", m.route || ""],
        ["Protocol", m.protocol || "1.0"],
        ["Needs Toru", m.min_host || "any version"],
        ["Web page", m.frontend ? "yes" : "no"],
        ["Settings", m.has_settings ? "yes" : "none"],
        ["Permissions", valueList(m.permissions), "install-permissions"],
        ["Limits", valueList(m.limits), "install-limits"],
        m.skipped && m.skipped.length ? ["Not installed", h("span", { text: "the archive also holds " + m.skipped.join(", ") + " (not named by the manifest, so skipped)" }), "install-skipped"] : null,
        ["Size", bytes(up.bytes)]
      ], "install-manifest")]);
      var confirm = h("button", { class: up.action === "downgrade" ? "danger" : "primary", "data-testid": "install-confirm",
        text: { install: "Install", update: "Update", downgrade: "Downgrade", reinstall: "Reinstall" }[up.action] || "Confirm" });
      var allow = null;
      if (up.action === "downgrade") {
        allow = h("input", { type: "checkbox", id: "install-allow-downgrade", "data-testid": "install-allow-downgrade",
          onchange: function () { confirm.disabled = !allow.checked; } });
        confirm.disabled = true;
        dlg.body.appendChild(h("label", { class: "check", for: "install-allow-downgrade" }, allow,
          " Allow the downgrade from " + up.installed_version + " to " + m.version + " (the plugin's data may not suit the older version)"));
      }
      confirm.addEventListener("click", function () {
        var t = token; token = null; // from here the host owns the upload (or it expires)
        runProbation(dlg, function () {
          return call("POST", "/api/packages/upload/" + encodeURIComponent(t) + "/confirm", { allow_downgrade: !!(allow && allow.checked) });
        }, { name: m.name, version: m.version, fresh: up.action === "install" });
      });
      dlg.buttons(h("button", { text: "Cancel", "data-testid": "install-cancel", onclick: cancel }), confirm);
      confirm.focus();
    }
    pickStep();
    if (initial && initial.length) addFiles(initial);
  }

  // ---------------------------------------------------------------- remove
  function removeDialog(p) {
    var dlg = openDialog("Remove " + p.name + "?", "remove-dialog");
    var keep = h("input", { type: "radio", name: "remove-data", id: "remove-keep", "data-testid": "remove-keep", checked: true });
    var purge = h("input", { type: "radio", name: "remove-data", id: "remove-purge", "data-testid": "remove-purge" });
    var err = h("div", { class: "form-error", "data-testid": "remove-error" });
    add(dlg.body, [
      h("p", { text: "Stops " + p.name + " and deletes its installed versions" + (p.package && p.package.versions ? " (" + p.package.versions.join(", ") + ")" : "") + "." }),
      h("fieldset", { class: "choices" }, h("legend", { text: "Its data (stored keys and values, settings)" }),
        h("label", { class: "check", for: "remove-keep" }, keep, " Keep it: installing the plugin again finds it as it was"),
        h("label", { class: "check", for: "remove-purge" }, purge, " Delete it too (cannot be undone)")),
      err]);
    var go = h("button", { class: "danger", "data-testid": "remove-confirm", text: "Remove", onclick: function () {
      go.disabled = true; err.textContent = "";
      call("POST", pluginUrl(p.id, "remove"), { purge_data: purge.checked }).then(function () {
        toast(p.name + " removed" + (purge.checked ? " with its data" : "; its data is kept"));
        dlg.close();
        afterChange();
      }).catch(function (e) { err.textContent = e.message; go.disabled = false; });
    } });
    dlg.buttons(h("button", { text: "Cancel", "data-testid": "remove-cancel", onclick: function () { dlg.close(); } }), go);
  }

  // ---------------------------------------------------------------- versions and rollback
  function viewVersions(id) {
    var m = shell.main;
    var isAdmin = state.me.role === "admin";
    var title = h("h1", null, h("span", { text: "Versions: " + pluginName(id) }),
      h("span", { class: "actions" }, h("a", { class: "btn", href: "#/", text: "Plugins" })));
    var body = h("div", { "data-testid": "versions" });
    m.appendChild(title); m.appendChild(body);
    function load() {
      return call("GET", pluginUrl(id, "versions")).then(function (v) {
        clear(body);
        var table = h("table", { class: "list", "data-testid": "versions-table" },
          h("thead", null, h("tr", null, h("th", { text: "Version" }), h("th", { text: "Installed" }), h("th", { text: "Publisher key" }), h("th"))),
          h("tbody", null, (v.versions || []).map(function (x) {
            var active = x.version === v.active;
            return h("tr", { class: active ? "active" : "", "data-testid": "version-" + x.version },
              h("td", null, h("strong", { text: x.version })),
              h("td", { title: x.installed_at || "", text: x.installed_at ? new Date(x.installed_at).toLocaleString() : "" }),
              h("td", null, x.key_id ? h("code", { text: x.key_id }) : h("span", { class: "badge warn", text: "unsigned" })),
              h("td", null, active ? h("span", { class: "badge ok", text: "active" }) : null));
          })));
        body.appendChild(facts([["Active version", h("strong", { text: v.active || "none" }), "versions-active"]]));
        body.appendChild(table);
        if (v.pending) {
          body.appendChild(note("info", "versions-pending", [h("strong", { text: "On probation: " }),
            (v.pending.kind || "update") + " " + (v.pending.from ? v.pending.from + " \u2192 " : "") + v.pending.to]));
        }
        var lu = v.last_update;
        if (lu) {
          var bad = lu.result === "rolled-back" || lu.result === "install-failed";
          var labels = { "rolled-back": "Rolled back", "install-failed": "Install failed", updated: "Updated", installed: "Installed" };
          body.appendChild(h("h2", { text: "Last change" }));
          var n = note(bad ? "bad" : "ok", "last-update", [
            h("strong", { text: (labels[lu.result] || lu.result) + ": " }),
            (lu.from ? lu.from + " \u2192 " : "") + (lu.to || ""),
            lu.at ? h("span", { class: "muted", title: lu.at, text: " \u00b7 " + new Date(lu.at).toLocaleString() }) : null,
            lu.reason ? h("div", { class: "pre", "data-testid": "last-update-reason", text: lu.reason }) : null]);
          n.setAttribute("data-result", lu.result);
          body.appendChild(n);
        }
        var others = (v.versions || []).filter(function (x) { return x.version !== v.active; });
        if (isAdmin && others.length) {
          var target = others.length === 1 ? others[0].version : null;
          body.appendChild(h("div", { class: "toolbar" }, h("button", { "data-testid": "rollback", text: "Roll back" + (target ? " to " + target : "") + "\u2026",
            onclick: function () { rollbackDialog(id, v.active, target, load); } })));
        } else if (!others.length) {
          body.appendChild(h("p", { class: "muted", text: "No other version is kept, so there is nothing to roll back to." }));
        }
      }).catch(function (e) { clear(body); body.appendChild(note("bad", "versions-error", e.message)); });
    }
    load();
  }
  function rollbackDialog(id, active, target, reload) {
    var name = pluginName(id);
    var dlg = openDialog("Roll back " + name + "?", "rollback-dialog", function () { if (!dlg.busy) dlg.close(); });
    dlg.body.appendChild(h("p", { text: "Switch " + name + " from " + active + " back to " + (target || "the previous version") +
      ". Its stored data and settings go back to how they were before that update. The older version must then pass its probation, or " + active + " comes back." }));
    var go = h("button", { class: "danger", "data-testid": "rollback-confirm", text: "Roll back", onclick: function () {
      runProbation(dlg, function () { return call("POST", pluginUrl(id, "rollback"), {}); },
        { name: name, version: target || "(the previous version)", fresh: false, verb: "Rolled back to " + (target || "the previous version") }).then(function () { if (reload) reload(); });
    } });
    dlg.buttons(h("button", { text: "Cancel", "data-testid": "rollback-cancel", onclick: function () { dlg.close(); } }), go);
  }

  // ---------------------------------------------------------------- settings
  // The form itself is window.ToruSettings.render (settings.js): this page loads the schema and
  // values, and turns a save into the host's PUT.
  // index.html loads the UI's other scripts; a page from before they existed loads them here.
  var uiScripts = {};
  function loadUiScript(file, global, what) {
    if (window[global]) return Promise.resolve();
    if (uiScripts[file]) return uiScripts[file];
    uiScripts[file] = new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = "/ui/" + file;
      s.onload = function () { window[global] ? resolve() : reject(new Error(file + " did not define " + global)); };
      s.onerror = function () { delete uiScripts[file]; if (s.parentNode) s.parentNode.removeChild(s); reject(new Error(what + " (" + file + ") could not be loaded")); };
      document.head.appendChild(s);
    });
    return uiScripts[file];
  }
  function loadSettingsJs() { return loadUiScript("settings.js", "ToruSettings", "the settings form"); }
  function saveSettings(id, values) {
    return call("PUT", pluginUrl(id, "settings"), values).then(function (r) {
      toast("Settings saved" + (r.delivery ? " (" + ({ applied: "the plugin applied them", restarted: "the plugin restarted with them", "at-next-start": "the plugin gets them when it starts" }[r.delivery] || r.delivery) + ")" : ""));
      return { ok: true, values: r.values || {}, secretsSet: r.secrets_set || [] };
    }, function (e) {
      var errs = e.body && Array.isArray(e.body.errors) ? e.body.errors : [];
      return { ok: false, errors: errs, message: e.message };
    });
  }
  function viewSettings(id) {
    var m = shell.main;
    var isAdmin = state.me.role === "admin";
    var seq = state.follow;
    m.appendChild(h("h1", null, h("span", { text: "Settings: " + pluginName(id) }),
      h("span", { class: "actions" }, h("a", { class: "btn", href: "#/versions/" + encodeURIComponent(id), text: "Versions" }),
        h("a", { class: "btn", href: "#/", text: "Plugins" }))));
    var status = h("p", { class: "muted", "data-testid": "settings-page-status", text: "Loading\u2026" });
    var container = h("div", { class: "settings-page", "data-testid": "settings" });
    m.appendChild(status);
    // A viewer sees the form, but a disabled fieldset disables every control in it, also those added later.
    m.appendChild(isAdmin ? container : h("fieldset", { class: "readonly", disabled: true }, container));
    Promise.all([loadSettingsJs(), call("GET", pluginUrl(id, "settings"))]).then(function (r) {
      if (state.follow !== seq) return; // the user left meanwhile
      var s = r[1];
      if (!s.schema) { status.textContent = "This plugin has no settings."; return; }
      status.textContent = isAdmin ? "Changes reach the plugin when you save; the host checks them first." : "Only an admin can change settings.";
      window.ToruSettings.render(container, s.schema, s.values || {}, s.secrets_set || [], function (values) {
        if (!isAdmin) return Promise.resolve({ ok: false, errors: [], message: "Only an admin can change settings." });
        return saveSettings(id, values);
      });
    }).catch(function (e) { status.textContent = "Cannot show the settings: " + e.message; });
  }

  // ---------------------------------------------------------------- security
  // The panel and its form are window.ToruSecurity.render (security.js): this page loads the
  // plugin and its security, refreshes what is shown while it is open (a restart brings a new
  // report of the protections in force), and turns a save into the host's PUT.
  function viewSecurity(id) {
    var m = shell.main;
    var isAdmin = state.me.role === "admin";
    var seq = state.follow;
    var enc = encodeURIComponent(id);
    var title = h("h1", null, h("span", { text: "Security: " + pluginName(id) }),
      h("span", { class: "actions" }, h("a", { class: "btn", href: "#/logs/" + enc, text: "Logs" }),
        h("a", { class: "btn", href: "#/events/" + enc, text: "Events" }), h("a", { class: "btn", href: "#/", text: "Plugins" })));
    var status = h("p", { class: "muted", "data-testid": "security-page-status", text: "Loading\u2026" });
    var container = h("div", { class: "security-page", "data-testid": "security" });
    m.appendChild(title); m.appendChild(status); m.appendChild(container);
    Promise.all([loadUiScript("security.js", "ToruSecurity", "the security panel"), call("GET", pluginUrl(id)), call("GET", pluginUrl(id, "security"))]).then(function (r) {
      if (state.follow !== seq) return; // the user left meanwhile
      var p = r[1];
      title.firstChild.textContent = "Security: " + p.name;
      status.textContent = ""; status.style.display = "none";
      var panel = window.ToruSecurity.render(container, r[2], {
        name: p.name, admin: isAdmin, unpackaged: p.package === null,
        onSave: function (body) {
          return call("PUT", pluginUrl(id, "security"), body).then(function (sec) {
            toast("Saved; " + p.name + " restarts with the new limits and permissions if it was running");
            return { ok: true, security: sec };
          }, function (e) { return { ok: false, code: e.code, message: e.message }; });
        }
      });
      every(5000, function () {
        call("GET", pluginUrl(id, "security")).then(function (sec) { if (state.follow === seq) panel.update(sec); }).catch(function () {});
      });
    }).catch(function (e) {
      status.textContent = "";
      clear(container);
      container.appendChild(note("bad", "security-load-error", "Cannot show the security of " + pluginName(id) + ": " + e.message));
    });
  }

  // ---------------------------------------------------------------- trust
  function viewTrust() {
    var m = shell.main;
    var isAdmin = state.me.role === "admin";
    m.appendChild(h("h1", { text: "Trusted publishers" }));
    m.appendChild(h("p", { class: "muted", text: "A package installs only if it is signed (minisign, Ed25519) by one of these keys. " +
      "An update must be signed by the key that signed the installed version." }));
    var list = h("div", { "data-testid": "trust-list" });
    m.appendChild(list);
    function load() {
      return call("GET", "/api/trust").then(function (keys) {
        clear(list);
        if (!keys.length) { list.appendChild(h("p", { class: "muted", "data-testid": "trust-empty", text: "No trusted keys: only unsigned packages could be installed, and only while that is allowed." })); return; }
        list.appendChild(h("table", { class: "list", "data-testid": "trust-keys" },
          h("thead", null, h("tr", null, h("th", { text: "Key id" }), h("th", { text: "Comment" }), h("th", { text: "Added" }), isAdmin ? h("th") : null)),
          h("tbody", null, keys.map(function (k) {
            return h("tr", { "data-testid": "trust-key-" + k.key_id },
              h("td", null, h("code", { text: k.key_id })),
              h("td", { text: k.comment || "" }),
              h("td", { title: k.added_at || "", text: k.added_at ? new Date(k.added_at).toLocaleString() : "" }),
              isAdmin ? h("td", null, h("button", { class: "danger", "data-testid": "trust-remove-" + k.key_id, text: "Remove",
                onclick: function () { removeKeyDialog(k, load); } })) : null);
          }))));
      }).catch(function (e) { clear(list); list.appendChild(note("bad", "trust-error-load", e.message)); });
    }
    load();
    if (isAdmin) m.appendChild(addKeyPanel(load));
  }
  function addKeyPanel(reload) {
    var text = h("textarea", { id: "trust-key", rows: "3", spellcheck: "false", "data-testid": "trust-key",
      placeholder: "untrusted comment: minisign public key \u2026\nRWQ\u2026" });
    var file = h("input", { type: "file", accept: ".pub", id: "trust-file", "data-testid": "trust-file", onchange: function () {
      var f = file.files[0];
      if (!f) return;
      if (f.size > 4096) { err.textContent = f.name + " is " + bytes(f.size) + ": not a minisign public key."; return; }
      f.text().then(function (t) {
        text.value = t;
        if (!comment.value) comment.value = f.name.replace(/\.pub$/i, "");
      }).catch(function (e) { err.textContent = "Cannot read " + f.name + ": " + e.message; });
    } });
    var comment = h("input", { type: "text", id: "trust-comment", "data-testid": "trust-comment", maxlength: "200" });
    var err = h("div", { class: "form-error", "data-testid": "trust-error" });
    var btn = h("button", { class: "primary", type: "submit", "data-testid": "trust-add", text: "Add key" });
    return h("form", { class: "panel wide", onsubmit: function (e) {
      e.preventDefault();
      if (!text.value.trim()) { err.textContent = "Paste the public key (the .pub file's text) or choose the file."; return; }
      btn.disabled = true; err.textContent = "";
      var body = { public_key: text.value };
      if (comment.value.trim()) body.comment = comment.value.trim();
      call("POST", "/api/trust", body).then(function (k) {
        toast("Key " + k.key_id + " is trusted");
        text.value = ""; comment.value = ""; file.value = "";
        return reload();
      }).catch(function (x) { err.textContent = x.message; }).then(function () { btn.disabled = false; });
    } }, h("h2", { text: "Add a publisher key" }),
      h("label", { for: "trust-key", text: "Public key (the text of the .pub file, or its base64 line)" }), text,
      h("label", { for: "trust-file", text: "\u2026or choose the .pub file" }), file,
      h("label", { for: "trust-comment", text: "Comment (optional)" }), comment, btn, err);
  }
  function removeKeyDialog(k, reload) {
    var dlg = openDialog("Stop trusting key " + k.key_id + "?", "trust-remove-dialog");
    var err = h("div", { class: "form-error" });
    add(dlg.body, [h("p", { text: (k.comment ? "\u201c" + k.comment + "\u201d. " : "") +
      "Packages signed by this key can no longer be installed or updated. Plugins already installed keep running." }), err]);
    var go = h("button", { class: "danger", "data-testid": "trust-remove-confirm", text: "Remove key", onclick: function () {
      go.disabled = true;
      call("DELETE", "/api/trust/" + encodeURIComponent(k.key_id)).then(function () {
        toast("Key " + k.key_id + " removed"); dlg.close(); reload();
      }).catch(function (e) { err.textContent = e.message; go.disabled = false; });
    } });
    dlg.buttons(h("button", { text: "Cancel", "data-testid": "trust-remove-cancel", onclick: function () { dlg.close(); } }), go);
  }

  // ---------------------------------------------------------------- start
  function start() {
    shell = null;
    refresh().catch(function () {}).then(route);
  }
  function boot() {
    call("GET", "/api/auth/setup").then(function (s) {
      if (s && s.required) return showSetup();
      return call("GET", "/api/auth/me").then(function (me) { state.me = me; start(); })
        .catch(function (e) { if (e.status === 401) showLogin(); else page("Toru", "The host did not answer: " + e.message, h("div")); });
    }).catch(function (e) { page("Toru", "The host did not answer: " + e.message, h("div")); });
  }
  boot();
})();
