// Toru UI: the DOM helpers the page (app.js) and the settings form (settings.js) share. Text
// always goes in as text (textContent, text nodes): nothing a manifest or a plugin wrote is ever
// parsed as HTML.
(function () {
  "use strict";

  // h("div", {class: "x", text: "…", onclick: f}, child, [children], …)
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

  window.ToruDom = { h: h, add: add, clear: clear };
})();
