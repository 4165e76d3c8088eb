// Toru web UI: one page, plain JavaScript, no build step, no external resources.
// Everything a plugin (or the network) provides is put on the page with textContent, never as HTML.
// Routes live in the URL fragment: #/ plugins, #/p/<id> plugin view, #/logs/<id>, #/events, #/system.
(function () {
  "use strict";

  var CSRF = { "X-Toru-Csrf": "1" };
  var state = { me: null, plugins: [], system: null, current: null, timers: [], mounted: null, loaded: {} };
  var app = document.getElementById("app");

  // ---------------------------------------------------------------- DOM helpers
  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === "text") el.textContent = String(v);
        else if (k === "class") el.className = v;
        else if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
        else if (k === "checked" || k === "disabled" || k === "value") el[k] = v;
        else el.setAttribute(k, v === true ? "" : String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }
  function add(el, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(el, c); }); return; }
    el.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function logo() {
    var img = h("img", { src: "/ui/icon.svg", alt: "", class: "logo" });
    return img;
  }

  // ---------------------------------------------------------------- API
  function ApiError(status, body) {
    this.status = status;
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
    stopTimers(); unmountPlugin();
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
  function refresh() {
    return Promise.all([call("GET", "/api/plugins"), call("GET", "/api/system")]).then(function (r) {
      state.plugins = r[0] || []; state.system = r[1];
      renderNav(); renderBanners();
    });
  }
  function every(ms, fn) { state.timers.push(setInterval(fn, ms)); }
  function stopTimers() {
    state.timers.forEach(clearInterval); state.timers = [];
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
    m.appendChild(h("h1", null, "Plugins", h("span", { class: "actions" }, rescan)));
    var grid = h("div", { class: "cards", "data-testid": "plugin-cards" });
    var invalid = h("div");
    m.appendChild(grid); m.appendChild(invalid);
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
    var buttons = h("div", { class: "buttons" },
      p.enabled ? h("a", { class: "btn", href: "#/p/" + encodeURIComponent(p.id), text: "Open", "data-testid": "plugin-open-" + p.id }) : null,
      h("a", { class: "btn", href: "#/logs/" + encodeURIComponent(p.id), text: "Logs", "data-testid": "plugin-logs-" + p.id }),
      h("a", { class: "btn", href: "#/events/" + encodeURIComponent(p.id), text: "Events" }),
      isAdmin && p.enabled ? h("button", { text: "Restart", "data-testid": "plugin-restart-" + p.id, onclick: function (e) {
        var b = e.target; b.disabled = true;
        call("POST", "/api/plugins/" + encodeURIComponent(p.id) + "/restart", {}).then(function () {
          toast(p.name + " restarted"); return refresh().then(redraw);
        }).catch(function (err) { toast(err.message, "error"); b.disabled = false; });
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
  function loadBundle(id) {
    if (state.loaded[id]) return state.loaded[id];
    state.loaded[id] = new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = "/api/plugins/" + encodeURIComponent(id) + "/bundle.js";
      s.onload = function () { resolve(); };
      s.onerror = function () { delete state.loaded[id]; s.parentNode && s.parentNode.removeChild(s); reject(new Error("the plugin's frontend bundle could not be loaded")); };
      document.head.appendChild(s);
    });
    return state.loaded[id];
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
        h("span", { class: "actions" }, h("a", { class: "btn", href: "#/logs/" + encodeURIComponent(p.id), text: "Logs" }))]);
      if (!p.enabled) { status.textContent = "This plugin is disabled. Enable it on the Plugins page."; return; }
      return loadBundle(p.id).then(function () {
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
          ["Version", s.version], ["Instance", s.instance_id], ["Up for", duration(s.uptime_secs)],
          ["Started", new Date(s.started_at).toLocaleString()], ["Process", "pid " + s.pid],
          ["Memory (RSS)", bytes(s.memory && s.memory.rss_bytes) + " (peak " + bytes(s.memory && s.memory.peak_rss_bytes) + ")"],
          ["Store", (s.store && s.store.state) + (s.degraded ? " \u2014 DEGRADED" : "") + " \u00b7 " + bytes(s.store && s.store.file_bytes) + " \u00b7 " + (s.store && s.store.commits) + " commits"],
          ["Plugins", s.plugins.ready + " ready / " + s.plugins.enabled + " enabled / " + s.plugins.total + " found"],
          ["HTTP", s.http.connections + " of " + s.http.max_connections + " connections"]
        ];
        rows.forEach(function (r) { facts.appendChild(h("dt", { text: r[0] })); facts.appendChild(h("dd", { text: String(r[1]) })); });
      }).catch(function (e) { toast(e.message, "error"); });
    }
    load();
    every(5000, load);
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
