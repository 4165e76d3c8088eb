// Toru settings form: draws a plugin's settings schema (the JSON Schema subset of src/settings.rs,
// described in docs/SETTINGS.md) as a form, checks what it can before sending, and shows the
// host's errors next to their fields. Plain JavaScript, no framework, no external resources.
// Titles, descriptions, enum values and values come from third-party manifests: they reach the
// page through textContent and attributes only, never as HTML.
//
//   var form = ToruSettings.render(container, schema, values, secretsSet, onSave)
//     schema      as GET /api/plugins/{id}/settings returns it (null: the plugin has no settings)
//     values      the current values (secrets are null); secretsSet: paths of the secrets set
//     onSave(v)   returns a Promise of {ok: true, values, secretsSet} (the form redraws itself
//                 with them) or {ok: false, errors: [{path, message}], message}
//     form.values() is what Save would send; form.check() the errors the form finds itself
//     (the handle follows the form when it redraws itself after a save).
//
// What Save sends: numbers as numbers; an empty text or number field is left out (the host fills
// in its default, or answers "required"); a secret left empty is null, which the host reads as
// "keep the stored one". Inside a list, the host keeps an item's secret only while the list has
// as many items as it had (it matches items by index): once items were added or removed, the form
// shows those secrets as not set, and sends an empty secret of a list of unchanged length as ""
// so that no item takes over another one's secret.
(function () {
  "use strict";

  var seq = 0;

  // ---------------------------------------------------------------- helpers (DOM ones: dom.js)
  var h = window.ToruDom.h, add = window.ToruDom.add, clear = window.ToruDom.clear;
  function isObj(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }
  function has(o, k) { return isObj(o) && Object.prototype.hasOwnProperty.call(o, k); }
  function text(v) { return typeof v === "string" ? v : ""; }
  function copy(v) { return v === undefined ? undefined : JSON.parse(JSON.stringify(v)); }
  // Paths as the host writes them: mqtt.brokers[2].port; the root is "".
  function join(path, key) { return path ? path + "." + key : key; }
  function index(path, i) { return path + "[" + i + "]"; }
  function plural(n, one) { return n === 1 ? "1 " + one : n + " " + one + "s"; }
  function chars(s) { return Array.from(s).length; }
  function fieldNames(schema) { return isObj(schema.properties) ? Object.keys(schema.properties) : []; }
  function count(v) { return typeof v === "number" && v >= 0 ? v : null; }

  // The value a new field or list item starts with: its default; for an object, its fields'.
  function defaultOf(schema) {
    if (!isObj(schema)) return undefined;
    if (has(schema, "default")) return copy(schema.default);
    if (schema.type !== "object") return undefined;
    var o = {};
    fieldNames(schema).forEach(function (k) {
      var d = defaultOf(schema.properties[k]);
      if (d !== undefined) o[k] = d;
    });
    return o;
  }

  // A pattern as the host reads it: found anywhere unless anchored. JavaScript's syntax differs
  // a little from the host's; a pattern it cannot read is left to the host.
  function compile(pattern) {
    try { return new RegExp(pattern, "u"); } catch (e) { /* try without */ }
    try { return new RegExp(pattern); } catch (e) { return null; }
  }

  // ---------------------------------------------------------------- fields
  // Every field is a control: {el, get(), check(path) → messages, sync(path), relabel(text),
  // walk(path, fn), errorBox, box, input}. get() returns undefined for "left out".
  // ctx: {label, required, item (a list item: no "required" mark), origPath (its path when
  //       drawn; null for items added since), lists (the enclosing list controls), secrets (the
  //       paths of the secrets set), form ({resync()}: redraw what depends on list items)}

  function build(schema, value, ctx) {
    if (!isObj(schema)) schema = {};
    if (value === null) value = undefined;
    switch (schema.type) {
      case "object": return buildObject(schema, value, ctx, false);
      case "array": return buildArray(schema, value, ctx);
      case "boolean": return buildBoolean(schema, value, ctx);
      case "integer": case "number":
        return Array.isArray(schema.enum) ? buildEnum(schema, value, ctx) : buildNumber(schema, value, ctx);
      case "string":
        return Array.isArray(schema.enum) ? buildEnum(schema, value, ctx) : buildString(schema, value, ctx);
      default: return buildUnknown(schema, value, ctx);
    }
  }

  function help(schema) {
    return typeof schema.description === "string" && schema.description
      ? h("p", { class: "help", text: schema.description }) : null;
  }
  function errorBox() { return h("div", { class: "field-error", "data-testid": "field-error" }); }

  // A labelled input, select or checkbox.
  function leaf(schema, ctx, input, get, check, extra) {
    var id = "ts-" + (++seq);
    input.id = id;
    var labelText = h("span", { text: ctx.label });
    var label = h("label", { for: id }, input.type === "checkbox" ? input : null, labelText,
      ctx.required && !ctx.item ? h("span", { class: "req", title: "required", text: " *" }) : null);
    var err = errorBox();
    var box = h("div", { class: "field" + (input.type === "checkbox" ? " check" : "") },
      label, input.type === "checkbox" ? null : input, help(schema), err);
    var ctl = {
      el: box, box: box, input: input, errorBox: err, get: get,
      check: check || function () { return []; },
      sync: function (path) {
        box.setAttribute("data-path", path);
        input.setAttribute("name", path);
        if (extra && extra.sync) extra.sync(path);
      },
      relabel: function (t) { labelText.textContent = t; },
      walk: function (path, fn) { fn(ctl, path); }
    };
    return ctl;
  }

  function required(ctx, v) { return v === undefined && ctx.required ? ["required"] : []; }

  function buildString(schema, value, ctx) {
    var secret = schema.format === "secret";
    var input = h("input", { type: secret ? "password" : "text", spellcheck: "false",
      autocomplete: secret ? "new-password" : "off" });
    if (!secret) input.value = text(value === undefined ? defaultOf(schema) : value);
    // A secret is set (and kept when left empty) while its item is the one it was drawn for.
    function sameItem() {
      return ctx.origPath !== null && ctx.lists.every(function (l) { return !l.changed(); });
    }
    function isSet() { return sameItem() && ctx.secrets[ctx.origPath] === true; }
    function get() {
      if (input.value !== "") return input.value;
      if (!secret) return undefined;
      // The host matches list items by index while the length is unchanged: an empty secret of
      // another item must not take over the stored one.
      var carried = ctx.lists.every(function (l) { return l.sameLength(); });
      return !sameItem() && carried ? "" : null;
    }
    var pattern = typeof schema.pattern === "string" ? compile(schema.pattern) : null;
    function check() {
      var v = get();
      if (v === null || v === undefined) return isSet() ? [] : required(ctx, undefined);
      var out = [], n = chars(v);
      if (count(schema.minLength) !== null && n < schema.minLength) out.push("must be at least " + plural(schema.minLength, "character"));
      if (count(schema.maxLength) !== null && n > schema.maxLength) out.push("must be at most " + plural(schema.maxLength, "character"));
      if (pattern && !pattern.test(v)) out.push("must match " + schema.pattern);
      return out;
    }
    return leaf(schema, ctx, input, get, check, {
      sync: function () {
        if (secret) input.placeholder = isSet() ? "set \u2014 leave empty to keep" : "not set";
      }
    });
  }

  function buildNumber(schema, value, ctx) {
    var integer = schema.type === "integer";
    var input = h("input", { type: "number", inputmode: integer ? "numeric" : "decimal",
      step: integer ? "1" : "any", min: typeof schema.minimum === "number" ? schema.minimum : null,
      max: typeof schema.maximum === "number" ? schema.maximum : null });
    var start = value === undefined ? defaultOf(schema) : value;
    if (typeof start === "number") input.value = String(start);
    function get() {
      if (input.value === "") return input.validity && input.validity.badInput ? NaN : undefined;
      return Number(input.value);
    }
    function check() {
      var v = get();
      if (v === undefined) return required(ctx, v);
      if (!isFinite(v)) return [integer ? "must be a whole number" : "must be a number"];
      if (integer && !Number.isInteger(v)) return ["must be a whole number"];
      var out = [];
      if (typeof schema.minimum === "number" && v < schema.minimum) out.push("must be at least " + schema.minimum);
      if (typeof schema.maximum === "number" && v > schema.maximum) out.push("must be at most " + schema.maximum);
      return out;
    }
    return leaf(schema, ctx, input, get, check);
  }

  function buildEnum(schema, value, ctx) {
    var start = value === undefined ? defaultOf(schema) : value;
    var chosen = schema.enum.findIndex(function (c) { return c === start; });
    var select = h("select", null,
      chosen < 0 || !ctx.required ? h("option", { value: "", text: "\u2014" }) : null,
      schema.enum.map(function (c, i) { return h("option", { value: String(i), text: String(c) }); }));
    select.value = chosen < 0 ? "" : String(chosen);
    function get() { return select.value === "" ? undefined : schema.enum[Number(select.value)]; }
    return leaf(schema, ctx, select, get, function () { return required(ctx, get()); });
  }

  function buildBoolean(schema, value, ctx) {
    var start = value === undefined ? defaultOf(schema) : value;
    var input = h("input", { type: "checkbox", checked: start === true });
    return leaf(schema, ctx, input, function () { return input.checked; });
  }

  // Not a type of the subset (the host refuses such schemas): shown, passed through unchanged.
  function buildUnknown(schema, value, ctx) {
    var err = errorBox();
    var box = h("div", { class: "field" }, h("span", { class: "muted", text: ctx.label + ": this kind of setting cannot be edited here" }), err);
    var ctl = { el: box, box: box, errorBox: err, get: function () { return copy(value); },
      check: function () { return []; }, sync: function (path) { box.setAttribute("data-path", path); },
      relabel: function () {}, walk: function (path, fn) { fn(ctl, path); } };
    return ctl;
  }

  function buildObject(schema, value, ctx, isRoot) {
    var names = fieldNames(schema);
    var req = Array.isArray(schema.required) ? schema.required : [];
    var children = names.map(function (k) {
      var sub = isObj(schema.properties[k]) ? schema.properties[k] : {};
      return {
        key: k,
        ctl: build(sub, has(value, k) ? value[k] : undefined, {
          label: typeof sub.title === "string" && sub.title ? sub.title : k,
          required: req.indexOf(k) >= 0,
          origPath: ctx.origPath === null ? null : join(ctx.origPath, k),
          lists: ctx.lists, secrets: ctx.secrets, form: ctx.form
        })
      };
    });
    var legend = isRoot ? null : h("legend", { text: ctx.label });
    var err = errorBox();
    var box = h(isRoot ? "div" : "fieldset", { class: isRoot ? "settings-fields" : "settings-group" },
      legend, help(schema), err, children.map(function (c) { return c.ctl.el; }));
    var ctl = {
      el: box, box: box, errorBox: err,
      get: function () {
        var o = {};
        children.forEach(function (c) { var v = c.ctl.get(); if (v !== undefined) o[c.key] = v; });
        return o;
      },
      check: function () { return []; },
      sync: function (path) { if (!isRoot) box.setAttribute("data-path", path); },
      relabel: function (t) { if (legend) legend.textContent = t; },
      walk: function (path, fn) {
        fn(ctl, path);
        children.forEach(function (c) { c.ctl.walk(join(path, c.key), fn); });
      }
    };
    return ctl;
  }

  function buildArray(schema, value, ctx) {
    var itemSchema = isObj(schema.items) ? schema.items : {};
    var present = Array.isArray(value);
    var start = present ? value : (value === undefined && Array.isArray(defaultOf(schema)) ? defaultOf(schema) : []);
    var origLen = present ? value.length : 0;
    var changed = false;
    var minItems = count(schema.minItems), maxItems = count(schema.maxItems);
    var items = [];
    var list = h("ol", { class: "settings-items" });
    var err = errorBox();
    var addButton = h("button", { type: "button", class: "add", text: "Add", "data-testid": "settings-add", onclick: function () {
      changed = true;
      addItem(defaultOf(itemSchema), null);
      resync();
      var last = items[items.length - 1];
      var focusable = last && last.li.querySelector("input, select");
      if (focusable) focusable.focus();
    } });
    var legend = h("legend", { text: ctx.label });
    var box = h("fieldset", { class: "settings-list" }, legend, help(schema), err, list, addButton);
    var self = {
      changed: function () { return changed; },
      sameLength: function () { return items.length === origLen; }
    };
    function itemLabel(i) {
      return (typeof itemSchema.title === "string" && itemSchema.title ? itemSchema.title : "Item") + " " + (i + 1);
    }
    function addItem(v, origIndex) {
      var item = {};
      item.ctl = build(itemSchema, v, {
        label: itemLabel(items.length), required: true, item: true,
        origPath: origIndex === null || ctx.origPath === null ? null : index(ctx.origPath, origIndex),
        lists: ctx.lists.concat([self]), secrets: ctx.secrets, form: ctx.form
      });
      item.remove = h("button", { type: "button", class: "remove", text: "Remove", "data-testid": "settings-remove", onclick: function () {
        changed = true;
        items.splice(items.indexOf(item), 1);
        list.removeChild(item.li);
        resync();
        addButton.focus();
      } });
      item.li = h("li", { class: "settings-item" }, item.ctl.el, item.remove);
      items.push(item);
      list.appendChild(item.li);
    }
    start.forEach(function (v, i) { addItem(v, present ? i : null); });
    // Redraw what depends on the items: labels, paths, secrets' placeholders, the buttons.
    function resync() { ctx.form.resync(); }
    var ctl = {
      el: box, box: box, errorBox: err,
      get: function () {
        if (!present && !changed && items.length === 0) return undefined;
        return items.map(function (it) { var v = it.ctl.get(); return v === undefined ? null : v; });
      },
      check: function () {
        var v = ctl.get();
        if (v === undefined) return required(ctx, v);
        var out = [];
        if (minItems !== null && v.length < minItems) out.push("must have at least " + plural(minItems, "item"));
        if (maxItems !== null && v.length > maxItems) out.push("must have at most " + plural(maxItems, "item"));
        return out;
      },
      sync: function (path) {
        box.setAttribute("data-path", path);
        addButton.setAttribute("data-path", path);
        addButton.disabled = maxItems !== null && items.length >= maxItems;
        items.forEach(function (it, i) {
          it.ctl.relabel(itemLabel(i));
          it.remove.disabled = minItems !== null && items.length <= minItems;
          it.remove.setAttribute("data-path", index(path, i));
          it.remove.setAttribute("aria-label", "Remove " + itemLabel(i));
        });
      },
      relabel: function (t) { legend.textContent = t; },
      walk: function (path, fn) {
        fn(ctl, path);
        items.forEach(function (it, i) { it.ctl.walk(index(path, i), fn); });
      }
    };
    return ctl;
  }

  // ---------------------------------------------------------------- the form
  function render(container, schema, values, secretsSet, onSave) {
    clear(container);
    if (!isObj(schema) || schema.type !== "object" || fieldNames(schema).length === 0) {
      container.appendChild(h("p", { class: "muted", "data-testid": "settings-none", text: "This plugin has no settings." }));
      return { values: function () { return {}; }, check: function () { return []; }, status: function () {} };
    }
    var secrets = {};
    (Array.isArray(secretsSet) ? secretsSet : []).forEach(function (p) { secrets[p] = true; });
    var root = buildObject(schema, isObj(values) ? values : {}, { label: "", required: false,
      origPath: "", lists: [], secrets: secrets, form: { resync: function () { sync(); } } }, true);
    var summary = h("div", { class: "settings-summary", "data-testid": "settings-summary", role: "alert", hidden: true });
    var save = h("button", { class: "primary", type: "submit", text: "Save", "data-testid": "settings-save" });
    var status = h("span", { class: "muted", role: "status", "data-testid": "settings-status" });
    var form = h("form", { class: "settings-form", "data-testid": "settings-form", novalidate: true, onsubmit: submit },
      summary, root.el, h("div", { class: "settings-actions" }, save, status));
    container.appendChild(form);
    sync();

    function sync() { root.walk("", function (ctl, path) { ctl.sync(path); }); }
    function clientErrors() {
      var out = [];
      root.walk("", function (ctl, path) {
        ctl.check(path).forEach(function (m) { out.push({ path: path, message: m }); });
      });
      return out;
    }
    function show(errors, message) {
      var byPath = {};
      errors.forEach(function (e) {
        if (!isObj(e)) return;
        var p = typeof e.path === "string" ? e.path : "";
        (byPath[p] = byPath[p] || []).push(String(e.message));
      });
      var controls = {};
      root.walk("", function (ctl, path) {
        controls[path] = ctl;
        var msgs = path === "" ? [] : (byPath[path] || []); // the root's errors go to the summary
        ctl.errorBox.textContent = msgs.join("; ");
        ctl.box.classList.toggle("invalid", msgs.length > 0);
        if (ctl.input) {
          if (msgs.length) {
            ctl.input.setAttribute("aria-invalid", "true");
            ctl.input.setAttribute("aria-describedby", ctl.errorBox.id || (ctl.errorBox.id = "ts-" + (++seq)));
          } else ctl.input.removeAttribute("aria-invalid");
        }
      });
      clear(summary);
      summary.hidden = !message && errors.length === 0;
      if (message) summary.appendChild(h("p", { text: message }));
      if (errors.length) {
        summary.appendChild(h("ul", null, errors.filter(isObj).map(function (e) {
          var p = typeof e.path === "string" ? e.path : "";
          var line = (p ? p + ": " : "") + String(e.message);
          var ctl = controls[p];
          if (!ctl || !p) return h("li", { text: line });
          return h("li", null, h("button", { type: "button", class: "link", text: line, onclick: function () {
            var target = ctl.input || ctl.box.querySelector("input, select, button");
            if (target) target.focus();
            ctl.box.scrollIntoView({ block: "center" });
          } }));
        })));
      }
    }
    function submit(e) {
      e.preventDefault();
      if (save.disabled) return;
      status.textContent = "";
      var found = clientErrors();
      if (found.length) { show(found, "Check the fields marked below."); return; }
      show([], "");
      var sent = root.get();
      save.disabled = true;
      save.textContent = "Saving\u2026";
      Promise.resolve().then(function () { return onSave(sent); }).then(function (r) {
        if (r && r.ok) {
          // Redrawn from what the host kept; this handle follows the new form.
          var again = render(container, schema, r.values, r.secretsSet, onSave);
          handle.values = again.values; handle.check = again.check; handle.status = again.status;
          again.status("Saved.");
          return;
        }
        show(r && Array.isArray(r.errors) ? r.errors : [], (r && r.message) || "The settings were not saved.");
      }, function (err) {
        show([], "The settings were not saved: " + (err && err.message ? err.message : String(err)));
      }).then(function () { save.disabled = false; save.textContent = "Save"; });
    }
    var handle = {
      values: function () { return root.get(); },
      check: clientErrors,
      status: function (t) { status.textContent = t; }
    };
    return handle;
  }

  window.ToruSettings = { render: render };
})();
