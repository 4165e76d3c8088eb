// Frontend of the sysinfo plugin: live figures and a history chart it draws itself (inline SVG).
// No external assets. The Toru UI loads this file and calls mount/unmount; while mounted it asks
// the plugin for `GET /` and `GET /history` every refresh interval (the plugin's setting), and
// unmount stops that. Plugin data only ever reaches the page through textContent and attributes.
(function () {
  "use strict";
  var ID = "sysinfo";
  var SVG = "http://www.w3.org/2000/svg";
  // Chart geometry (viewBox units): the plot area and the left margin for the axis labels.
  var W = 600, H = 170, LEFT = 34, TOP = 8, BOTTOM = 18;
  var SERIES = [
    { key: "cpu", label: "CPU %" },
    { key: "memory", label: "Memory %" },
    { key: "temperature", label: "Temperature °C" },
  ];
  var RETRY_MS = 5000;
  var CSS = [
    ".sysinfo,.sysinfo .si-body{display:grid;gap:1rem}",
    ".sysinfo .si-grid{display:grid;gap:1rem;grid-template-columns:repeat(auto-fit,minmax(16rem,1fr))}",
    ".sysinfo section{background:var(--panel,#fff);border:1px solid var(--line,#d8dde3);border-radius:var(--radius,10px);padding:.75rem 1rem;min-width:0}",
    ".sysinfo h3{margin:0 0 .5rem;font-size:1rem}",
    ".sysinfo .si-big{font-size:1.6rem;font-weight:600;margin:.1rem 0 .4rem}",
    ".sysinfo .si-muted{color:var(--muted,#656d76);font-size:.9rem}",
    ".sysinfo .si-bar{height:.55rem;background:var(--code,#f0f2f4);border-radius:.3rem;overflow:hidden}",
    ".sysinfo .si-fill{height:100%;background:var(--accent,#c2410c)}",
    ".sysinfo .si-fill.si-high{background:var(--bad,#cf222e)}",
    ".sysinfo .si-core{display:grid;grid-template-columns:3.2rem 1fr 3.6rem;gap:.5rem;align-items:center;font-size:.85rem;margin:.2rem 0}",
    ".sysinfo .si-core span:last-child{text-align:right;font-variant-numeric:tabular-nums}",
    ".sysinfo .si-scroll{overflow-x:auto}",
    ".sysinfo table{border-collapse:collapse;width:100%;font-size:.9rem}",
    ".sysinfo th,.sysinfo td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid var(--line,#d8dde3);white-space:nowrap}",
    ".sysinfo td.si-num{text-align:right;font-variant-numeric:tabular-nums}",
    ".sysinfo ul{list-style:none;margin:0;padding:0}",
    ".sysinfo li.si-if{padding:.35rem 0;border-bottom:1px solid var(--line,#d8dde3);overflow-wrap:anywhere}",
    ".sysinfo li.si-if:last-child{border-bottom:0}",
    ".sysinfo .si-badge{display:inline-block;font-size:.75rem;padding:0 .4rem;border-radius:.6rem;background:var(--code,#f0f2f4);margin-left:.4rem}",
    ".sysinfo .si-badge.si-up{background:var(--ok,#1a7f37);color:#fff}",
    ".sysinfo .si-flag{display:flex;justify-content:space-between;gap:.5rem;font-size:.9rem;padding:.15rem 0}",
    ".sysinfo .si-flag.si-now{color:var(--bad,#cf222e);font-weight:600}",
    ".sysinfo .si-flag.si-past{color:var(--warn,#b7791f)}",
    ".sysinfo svg{width:100%;height:auto;display:block}",
    ".sysinfo svg .si-grid-line{stroke:var(--line,#d8dde3);stroke-width:1}",
    ".sysinfo svg text{fill:var(--muted,#656d76);font-size:10px}",
    ".sysinfo svg path{fill:none;stroke-width:2;stroke-linejoin:round;stroke-linecap:round}",
    ".sysinfo .si-s-cpu{stroke:var(--accent,#c2410c);color:var(--accent,#c2410c)}",
    ".sysinfo .si-s-memory{stroke:#2f81f7;color:#2f81f7}",
    ".sysinfo .si-s-temperature{stroke:#8250df;color:#8250df}",
    ".sysinfo .si-legend{display:flex;gap:1rem;flex-wrap:wrap;font-size:.85rem;margin-top:.3rem}",
    ".sysinfo .si-legend span::before{content:'';display:inline-block;width:.8rem;height:.2rem;background:currentColor;margin-right:.3rem;vertical-align:middle}",
    ".sysinfo .si-error{color:var(--bad,#cf222e)}",
  ].join("\n");

  // ---------------------------------------------------------------- small helpers
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (!Object.prototype.hasOwnProperty.call(attrs, k) || attrs[k] == null) continue;
        if (k === "text") e.textContent = String(attrs[k]);
        else e.setAttribute(k, String(attrs[k]));
      }
    }
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) {
      if (!Object.prototype.hasOwnProperty.call(attrs, k) || attrs[k] == null) continue;
      if (k === "text") e.textContent = String(attrs[k]);
      else e.setAttribute(k, String(attrs[k]));
    }
    return e;
  }
  function num(v) { return typeof v === "number" && isFinite(v); }
  function pct(v) { return num(v) ? v.toFixed(1) + " %" : "…"; }
  function bytes(n) {
    if (!num(n)) return "–";
    var units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }
  function duration(secs) {
    if (!num(secs)) return "–";
    var d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600), m = Math.floor(secs % 3600 / 60);
    if (d > 0) return d + " d " + h + " h";
    if (h > 0) return h + " h " + m + " min";
    return m + " min " + Math.floor(secs % 60) + " s";
  }
  function seconds(ms) { return ms % 1000 === 0 ? String(ms / 1000) : (ms / 1000).toFixed(1); }
  function bar(percent) {
    var fill = el("div", { class: "si-fill" + (num(percent) && percent >= 90 ? " si-high" : "") });
    fill.style.width = (num(percent) ? Math.max(0, Math.min(100, percent)) : 0) + "%";
    return el("div", { class: "si-bar", role: "presentation" }, [fill]);
  }
  function section(title, testid, children) {
    return el("section", { "data-testid": testid }, [el("h3", { text: title })].concat(children));
  }
  function getJson(api, path) {
    return Promise.resolve(api.fetch(path)).then(function (r) {
      if (r && typeof r.json === "function") {
        if (r.ok === false) throw new Error(path + ": HTTP " + r.status);
        return r.json();
      }
      return r;
    });
  }

  // ---------------------------------------------------------------- sections
  function cpuSection(cpu) {
    var cores = (cpu && cpu.cores) || [];
    var list = el("div", { "data-testid": "sysinfo-cores", "data-count": cores.length }, cores.map(function (c) {
      return el("div", { class: "si-core", "data-testid": "sysinfo-core", "data-core": c.core }, [
        el("span", { text: "cpu" + c.core }), bar(c.percent), el("span", { text: pct(c.percent) }),
      ]);
    }));
    return section("CPU", "sysinfo-cpu", [
      el("div", { class: "si-big", "data-testid": "sysinfo-cpu-total", text: pct(cpu && cpu.total_percent) }),
      el("div", { class: "si-muted", text: cores.length + (cores.length === 1 ? " core" : " cores") }),
      list,
    ]);
  }
  function memorySection(m) {
    if (!m) return section("Memory", "sysinfo-memory", [el("p", { class: "si-muted", text: "not available" })]);
    var kids = [
      el("div", { class: "si-big", "data-testid": "sysinfo-memory-used", text: pct(m.used_percent) }),
      bar(m.used_percent),
      el("p", { class: "si-muted", "data-testid": "sysinfo-memory-text",
        text: bytes(m.used_bytes) + " used of " + bytes(m.total_bytes) + " · " + bytes(m.available_bytes) + " available" }),
    ];
    if (m.swap_total_bytes > 0) kids.push(el("p", { class: "si-muted", text: "Swap: " + bytes(m.swap_used_bytes) + " of " + bytes(m.swap_total_bytes) }));
    return section("Memory", "sysinfo-memory", kids);
  }
  function temperatureSection(t) {
    var zones = (t && t.zones) || [];
    var main = t && num(t.celsius)
      ? el("div", { class: "si-big", "data-testid": "sysinfo-temperature-value", text: t.celsius.toFixed(1) + " °C" })
      : el("div", { class: "si-muted", "data-testid": "sysinfo-temperature-value", text: "not available" });
    var list = el("ul", null, zones.map(function (z) {
      return el("li", { class: "si-muted", text: z.name + (z.type ? " (" + z.type + ")" : "") + ": " + (num(z.celsius) ? z.celsius.toFixed(1) + " °C" : "unreadable") });
    }));
    return section("Temperature", "sysinfo-temperature", [main, list]);
  }
  function piSection(pi) {
    var kids = [];
    if (!pi || !pi.available) {
      kids.push(el("p", { class: "si-muted", "data-testid": "sysinfo-pi-status", text: "not available" + (pi && pi.model ? " on " + pi.model : "") }));
      kids.push(el("p", { class: "si-muted", text: "Shown on a Raspberry Pi whose kernel exposes the firmware's throttling flags." }));
    } else {
      kids.push(el("p", { class: "si-muted", "data-testid": "sysinfo-pi-status",
        text: (pi.model || "Raspberry Pi") + (pi.throttled ? " · get_throttled " + pi.throttled : "") }));
      (pi.flags || []).forEach(function (f) {
        var when = f.now ? "now" : f.since_boot ? "since boot" : "no";
        kids.push(el("div", { class: "si-flag" + (f.now ? " si-now" : f.since_boot ? " si-past" : ""), "data-testid": "sysinfo-pi-flag", "data-flag": f.name, "data-now": f.now, "data-since-boot": f.since_boot }, [
          el("span", { text: f.label }), el("span", { text: when }),
        ]));
      });
      if (typeof pi.under_voltage_alarm === "boolean") {
        kids.push(el("div", { class: "si-flag" + (pi.under_voltage_alarm ? " si-now" : ""), "data-testid": "sysinfo-pi-flag", "data-flag": "under_voltage_alarm" }, [
          el("span", { text: "Under-voltage sensor" }), el("span", { text: pi.under_voltage_alarm ? "alarm" : "ok" }),
        ]));
      }
    }
    return section("Raspberry Pi power", "sysinfo-pi", kids);
  }
  function disksSection(disks) {
    disks = disks || [];
    var rows = disks.map(function (d) {
      if (!d.available) {
        return el("tr", { "data-testid": "sysinfo-mount", "data-mount": d.mount, "data-available": "false" }, [
          el("td", { text: d.mount }), el("td", { text: d.device }), el("td", { text: d.fstype }),
          el("td", { colspan: 4, class: "si-muted", text: "unavailable" + (d.error ? ": " + d.error : "") }),
        ]);
      }
      return el("tr", { "data-testid": "sysinfo-mount", "data-mount": d.mount, "data-available": "true" }, [
        el("td", { text: d.mount }), el("td", { text: d.device }), el("td", { text: d.fstype + (d.read_only ? " (ro)" : "") }),
        el("td", { class: "si-num", text: bytes(d.total_bytes) }), el("td", { class: "si-num", text: bytes(d.used_bytes) }),
        el("td", { class: "si-num", text: bytes(d.free_bytes) }),
        el("td", { class: "si-num" }, [el("span", { text: pct(d.used_percent) })]),
      ]);
    });
    var head = el("tr", null, ["Mount", "Device", "Type", "Size", "Used", "Free", "Use"].map(function (t) { return el("th", { text: t }); }));
    var body = rows.length ? rows : [el("tr", null, [el("td", { colspan: 7, class: "si-muted", text: "No filesystems found." })])];
    return section("Disks", "sysinfo-disks", [el("div", { class: "si-scroll" }, [
      el("table", { "data-testid": "sysinfo-mounts" }, [el("thead", null, [head]), el("tbody", null, body)]),
    ])]);
  }
  function networkSection(ifs) {
    ifs = ifs || [];
    var items = ifs.map(function (i) {
      var state = i.state || "unknown";
      var addrs = (i.addresses || []).map(function (a) {
        return el("div", { class: "si-muted", "data-testid": "sysinfo-address", "data-family": a.family,
          text: a.address + (a.prefix != null ? "/" + a.prefix : "") });
      });
      return el("li", { class: "si-if", "data-testid": "sysinfo-interface", "data-name": i.name }, [
        el("strong", { text: i.name }), el("span", { class: "si-badge" + (state === "up" ? " si-up" : ""), text: state }),
        i.mac ? el("span", { class: "si-muted", text: "  " + i.mac }) : null,
      ].concat(addrs));
    });
    return section("Network", "sysinfo-network", [
      el("ul", { "data-testid": "sysinfo-interfaces" }, items.length ? items : [el("li", { class: "si-muted", text: "No interfaces found." })]),
    ]);
  }

  // ---------------------------------------------------------------- the chart
  // One path per series over a 0–100 scale (percent, and °C capped at 100); the newest point at
  // the right edge, the full width being `capacity` points. A missing figure breaks its line.
  function chart(hist) {
    var points = (hist && hist.points) || [];
    var cap = Math.max(2, (hist && hist.capacity) || points.length);
    var plotW = W - LEFT, plotH = H - TOP - BOTTOM;
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "data-testid": "sysinfo-chart",
      "aria-label": "History of CPU, memory and temperature" });
    [0, 25, 50, 75, 100].forEach(function (v) {
      var y = TOP + plotH - v / 100 * plotH;
      root.appendChild(svg("line", { class: "si-grid-line", x1: LEFT, x2: W, y1: y, y2: y }));
      root.appendChild(svg("text", { x: LEFT - 4, y: y + 3, "text-anchor": "end", text: v }));
    });
    var label = points.length ? seconds((points[points.length - 1].t - points[0].t)) + " s" : "";
    root.appendChild(svg("text", { x: LEFT, y: H - 4, text: label ? "last " + label : "" }));
    root.appendChild(svg("text", { x: W, y: H - 4, "text-anchor": "end", text: "now" }));
    SERIES.forEach(function (s) {
      var d = "", n = 0, pen = false;
      points.forEach(function (p, i) {
        var v = p[s.key];
        if (!num(v)) { pen = false; return; }
        var x = LEFT + (cap - points.length + i) / (cap - 1) * plotW;
        var y = TOP + plotH - Math.max(0, Math.min(100, v)) / 100 * plotH;
        d += (pen ? " L" : " M") + x.toFixed(1) + " " + y.toFixed(1);
        pen = true;
        n++;
      });
      root.appendChild(svg("path", { class: "si-s-" + s.key, d: d.trim() || "M0 0", "data-series": s.key, "data-points": n,
        visibility: n ? "visible" : "hidden" }));
    });
    return root;
  }
  function historySection(hist) {
    var legend = el("div", { class: "si-legend" }, SERIES.map(function (s) { return el("span", { class: "si-s-" + s.key, text: s.label }); }));
    var n = hist && hist.points ? hist.points.length : 0;
    var caption = el("p", { class: "si-muted", "data-testid": "sysinfo-history-caption", "data-points": n, "data-capacity": hist ? hist.capacity : 0,
      text: hist ? n + " of " + hist.capacity + " points, one every " + seconds(hist.refresh_ms) + " s" : "…" });
    return section("History", "sysinfo-history", [chart(hist), legend, caption]);
  }

  // ---------------------------------------------------------------- the view
  function render(view, cur, hist) {
    var up = "up " + duration(cur.uptime_secs);
    var load = cur.load ? " · load " + cur.load.map(function (v) { return v.toFixed(2); }).join(" ") : "";
    var when = new Date(cur.time_ms).toLocaleTimeString();
    view.status.className = "si-muted";
    view.status.setAttribute("data-time", cur.time_ms);
    view.status.textContent = (cur.hostname ? cur.hostname + " · " : "") + up + load + " · updated " + when +
      " · every " + seconds(cur.settings.refresh_ms) + " s";
    view.body.replaceChildren(
      el("div", { class: "si-grid" }, [cpuSection(cur.cpu), memorySection(cur.memory), temperatureSection(cur.temperature), piSection(cur.pi)]),
      historySection(hist),
      disksSection(cur.disks),
      networkSection(cur.network)
    );
  }

  function poll(view) {
    if (view.stopped) return;
    Promise.all([getJson(view.api, "/"), getJson(view.api, "/history")]).then(function (r) {
      if (view.stopped) return;
      render(view, r[0], r[1]);
      schedule(view, r[0].settings && r[0].settings.refresh_ms);
    }).catch(function (e) {
      if (view.stopped) return;
      view.status.className = "si-error";
      view.status.textContent = "Cannot read the figures: " + (e && e.message ? e.message : e) + " — trying again.";
      schedule(view, RETRY_MS);
    });
  }
  function schedule(view, ms) {
    if (view.stopped) return;
    view.timer = setTimeout(function () { view.timer = null; poll(view); }, Math.max(500, ms || RETRY_MS));
  }

  var views = new Map();

  window.ToruPlugins = window.ToruPlugins || {};
  window.ToruPlugins[ID] = {
    mount: function (container, api) {
      var style = el("style", { text: CSS });
      var status = el("p", { class: "si-muted", "data-testid": "sysinfo-status", text: "Loading…" });
      var body = el("div", { class: "si-body" });
      var root = el("div", { class: "sysinfo", "data-testid": "sysinfo" }, [style, status, body]);
      container.appendChild(root);
      var view = { api: api, status: status, body: body, timer: null, stopped: false };
      views.set(container, view);
      poll(view);
    },
    unmount: function (container) {
      var view = views.get(container);
      if (view) {
        view.stopped = true;
        if (view.timer) clearTimeout(view.timer);
        views.delete(container);
      }
      while (container.firstChild) container.removeChild(container.firstChild);
    },
  };
})();
