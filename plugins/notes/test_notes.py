"""Unit tests of the notes plugin's logic: its handlers, called through the SDK's router
(``Plugin.handle``) with an in-memory KV store that behaves as PROTOCOL.md says the host's does
(keys in byte order, ``start_after``, ``limit``, ``truncated``, the value limit, a quota).
The real host runs it in ``tests/notes.rs`` and ``tests/browser/notes.mjs``.

Run: ``cd plugins/notes && python3 -m unittest test_notes`` (``scripts/test.d/30-python.sh``).
"""

import importlib.machinery
import importlib.util
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True

from toru_plugin import HTTPError, KVError, KVPage, Request, Response  # noqa: E402


def load_plugin():
    """Import ``notes.binary`` (a script without ``.py``) as a module."""
    path = os.path.join(HERE, "notes.binary")
    loader = importlib.machinery.SourceFileLoader("notes_plugin", path)
    spec = importlib.util.spec_from_loader("notes_plugin", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


notes = load_plugin()


class FakeKV:
    """The host's KV as PROTOCOL.md describes it, in memory."""

    def __init__(self, quota=1 << 20):
        self.data = {}
        self.quota = quota
        self.fail_with = None  # a KVError every call raises, when set

    def _check(self):
        if self.fail_with is not None:
            raise self.fail_with

    def get(self, key):
        self._check()
        return self.data.get(key)

    def set(self, key, value):
        self._check()
        if len(value.encode("utf-8")) > 65536:
            raise KVError("too_large", "value over 65536 bytes")
        used = sum(len(k.encode()) + len(v.encode()) for k, v in self.data.items() if k != key)
        if used + len(key.encode()) + len(value.encode()) > self.quota:
            raise KVError("quota_exceeded", "over the quota")
        self.data[key] = value

    def delete(self, key):
        self._check()
        return self.data.pop(key, None) is not None

    def list(self, prefix="", start_after=None, limit=None):
        self._check()
        limit = min(max(limit or 1000, 1), 1000)
        keys = sorted((k for k in self.data if k.startswith(prefix)), key=lambda k: k.encode())
        if start_after is not None:
            keys = [k for k in keys if k.encode() > start_after.encode()]
        return KVPage(keys[:limit], len(keys) > limit)

    def iter_keys(self, prefix=""):
        return iter(self.list(prefix, limit=1000).keys)


class FakeCtx:
    def __init__(self, config=None):
        self.config = config or {}
        self.kv = FakeKV()
        self.logs = []

    def log(self, level, message):
        self.logs.append((level, message))


class NotesTest(unittest.TestCase):
    def setUp(self):
        self.ctx = FakeCtx()

    def call(self, method, path, body=None):
        """(status, JSON body, headers) of one request."""
        if body is not None and not isinstance(body, str):
            body = json.dumps(body)
        req = Request(method, path, {}, body)
        try:
            resp = notes.plugin.handle(req, self.ctx)  # a Response or a dict (JSON, 200)
        except HTTPError as e:
            resp = e.to_response()
        if not isinstance(resp, Response):
            resp = Response.json(resp)
        payload = resp.to_payload()
        text = payload["body"]
        return resp.status, (json.loads(text) if text else None), payload["headers"]

    def ok(self, method, path, body=None, status=200):
        got, data, _ = self.call(method, path, body)
        self.assertEqual(got, status, data)
        return data

    def error(self, method, path, body, status, words):
        got, data, _ = self.call(method, path, body)
        self.assertEqual(got, status, data)
        self.assertIn(words, data["message"])
        self.assertIsInstance(data["error"], str)
        return data

    def test_create_get_edit_delete_a_note(self):
        n = self.ok("POST", "/notes", {"kind": "note", "title": "  Groceries ", "body": "milk"},
                    status=201)
        self.assertEqual((n["kind"], n["title"], n["body"]), ("note", "Groceries", "milk"))
        self.assertRegex(n["id"], r"^[0-9a-f]{20}$")
        self.assertEqual(list(self.ctx.kv.data), ["note/" + n["id"]])
        self.assertEqual(self.ok("GET", "/notes/" + n["id"]), n)
        e = self.ok("PATCH", "/notes/" + n["id"], {"title": "Shop", "body": "milk, eggs"})
        self.assertEqual((e["title"], e["body"], e["created"]), ("Shop", "milk, eggs", n["created"]))
        self.assertEqual(self.ok("DELETE", "/notes/" + n["id"]), {"deleted": n["id"]})
        self.assertEqual(self.ctx.kv.data, {})
        self.error("GET", "/notes/" + n["id"], None, 404, "no note")
        self.error("DELETE", "/notes/" + n["id"], None, 404, "no note")

    def test_checklist_tick_untick_add_remove(self):
        c = self.ok("POST", "/notes", {"kind": "checklist", "title": "Trip",
                                       "items": ["tent", {"text": "stove", "done": True}]},
                    status=201)
        self.assertEqual(c["items"], [{"id": 1, "text": "tent", "done": False},
                                      {"id": 2, "text": "stove", "done": True}])
        path = "/notes/%s/items" % c["id"]
        t = self.ok("PATCH", path + "/1", {"done": True})
        self.assertEqual([i["done"] for i in t["items"]], [True, True])
        t = self.ok("PATCH", path + "/2", {"done": False})
        self.assertEqual([i["done"] for i in t["items"]], [True, False])
        a = self.ok("POST", path, {"text": "map"}, status=201)
        self.assertEqual(a["items"][-1], {"id": 3, "text": "map", "done": False})
        d = self.ok("DELETE", path + "/1")
        self.assertEqual([i["id"] for i in d["items"]], [2, 3])
        self.assertEqual(self.ok("POST", path, {"text": "rope"}, status=201)["items"][-1]["id"], 4)
        self.error("PATCH", path + "/1", {"done": True}, 404, "has no item 1")
        self.error("PATCH", path + "/x", {"done": True}, 404, "whole number")
        self.error("PATCH", path + "/2", {"done": "yes"}, 400, "done must be true or false")
        self.error("PATCH", path + "/2", {}, 400, "nothing to change")
        stored = json.loads(self.ctx.kv.data["note/" + c["id"]])
        self.assertEqual([i["text"] for i in stored["items"]], ["stove", "map", "rope"])

    def test_bad_input_is_400_with_a_message(self):
        self.error("POST", "/notes", {"title": ""}, 400, "title must not be empty")
        self.error("POST", "/notes", {"title": "   "}, 400, "title must not be empty")
        self.error("POST", "/notes", {"title": "x" * 201}, 400, "title is too long: 201")
        self.error("POST", "/notes", {}, 400, "title must be text")
        self.error("POST", "/notes", "{not json", 400, "not valid JSON")
        self.error("POST", "/notes", None, 400, "expected a JSON object")
        self.error("POST", "/notes", "[1]", 400, "must be a JSON object")
        self.error("POST", "/notes", "[" * 100000, 400, "not valid JSON")
        self.error("POST", "/notes", {"title": "a", "colour": "red"}, 400, "unknown field 'colour'")
        self.error("POST", "/notes", {"title": "a", "kind": "poem"}, 400, "kind must be")
        self.error("POST", "/notes", {"title": "a", "items": ["x"]}, 400, "a note has no items")
        self.error("POST", "/notes", {"title": "a", "kind": "checklist", "body": "b"}, 400,
                   "no body")
        self.error("POST", "/notes", {"kind": "checklist", "title": "a", "items": [""]}, 400,
                   "items[0] must not be empty")
        self.error("POST", "/notes", {"kind": "checklist", "title": "a", "items": [3]}, 400,
                   "items[0] must be text or an object")
        self.error("POST", "/notes", {"kind": "checklist", "title": "a",
                                      "items": ["x"] * 101}, 400, "too many items")
        self.error("POST", "/notes", {"title": "a", "body": "b" * 10001}, 400, "body is too long")
        self.error("GET", "/notes?limit=0", None, 400, "limit must be")
        self.error("GET", "/notes?limit=101", None, 400, "limit must be")
        self.error("GET", "/notes?limit=ten", None, 400, "limit must be")
        self.error("GET", "/notes?cursor=" + "a" * 300, None, 400, "cursor")
        self.error("GET", "/notes/nope", None, 404, "20 hex digits")
        self.error("PATCH", "/notes/" + "0" * 20, {"title": "a"}, 404, "no note")
        self.error("GET", "/elsewhere", None, 404, "no such path")
        status, data, headers = self.call("PUT", "/notes")
        self.assertEqual((status, headers["Allow"]), (405, "GET, HEAD, POST"), data)
        self.assertEqual(self.ctx.kv.data, {}, "nothing stored by refused requests")

    def test_a_note_over_the_value_limit_is_413(self):
        self.error("POST", "/notes", {"kind": "checklist", "title": "big",
                                      "items": ["\U0001F600" * 200] * 90}, 413,
                   "more than the 65536")
        c = self.ok("POST", "/notes", {"kind": "checklist", "title": "big",
                                       "items": ["\U0001F600" * 200] * 70}, status=201)
        path = "/notes/%s/items" % c["id"]
        for _ in range(4):  # 2 KB each: the fourth is over 64 KiB
            status, data, _ = self.call("POST", path, {"text": "\U0001F600" * 500})
            if status != 201:
                break
        self.assertEqual(status, 413, data)
        self.assertIn("more than the 65536", data["message"])
        stored = self.ctx.kv.data["note/" + c["id"]]
        self.assertLessEqual(len(stored.encode("utf-8")), 65536)

    def test_kv_failures_become_clear_http_errors(self):
        self.ctx.kv.quota = 10
        self.error("POST", "/notes", {"title": "a"}, 507, "quota")
        self.ctx.kv.fail_with = KVError("unavailable", "store down")
        self.error("GET", "/notes", None, 503, "store down")

    def test_pages_newest_first_without_gaps_or_repeats(self):
        made = [self.ok("POST", "/notes", {"title": "n%d" % i}, status=201)["id"]
                for i in range(25)]
        seen, cursor, pages = [], "", 0
        while True:
            page = self.ok("GET", "/notes?limit=7&cursor=" + cursor)
            self.assertLessEqual(len(page["notes"]), 7)
            seen += [n["id"] for n in page["notes"]]
            pages += 1
            if page["next_cursor"] is None:
                break
            cursor = page["next_cursor"]
        self.assertEqual(pages, 4)
        self.assertEqual(seen, list(reversed(made)), "newest first, each once")
        first = self.ok("GET", "/notes")
        self.assertEqual((first["limit"], len(first["notes"])), (20, 20))
        self.ctx.config = {"page_size": 25}
        last = self.ok("GET", "/notes")
        self.assertEqual((len(last["notes"]), last["next_cursor"]), (25, None))

    def test_values_that_are_not_notes_are_skipped(self):
        self.ok("POST", "/notes", {"title": "real"}, status=201)
        self.ctx.kv.data["note/zzz"] = "not json"
        page = self.ok("GET", "/notes")
        self.assertEqual([n["title"] for n in page["notes"]], ["real"])
        self.assertTrue(any(level == "warn" and "note/zzz" in m for level, m in self.ctx.logs))

    def test_settings(self):
        self.assertEqual(self.ok("GET", "/")["title"], "Notes")
        self.ctx.config = {"title": "Shopping", "page_size": 3}
        info = self.ok("GET", "/")
        self.assertEqual((info["title"], info["page_size"]), ("Shopping", 3))
        notes.apply_settings(self.ctx, self.ctx.config)
        with self.assertRaises(notes.ConfigError):
            notes.apply_settings(self.ctx, {"title": "   "})
        with self.assertRaises(notes.ConfigError):
            notes.apply_settings(self.ctx, {"page_size": 0})

    def test_init_logs_the_count(self):
        self.ok("POST", "/notes", {"title": "a"}, status=201)
        notes.init(self.ctx)
        self.assertIn(("info", "notes ready: 1 notes in the store, 20 a page, title 'Notes'"),
                      self.ctx.logs)
        self.ctx.kv.fail_with = KVError("unavailable", "store down")
        notes.init(self.ctx)  # starts anyway, and says why it could not count
        self.assertIn("the store did not answer", self.ctx.logs[-1][1])

    def test_the_bundle_is_served_for_an_unpackaged_install(self):
        resp = notes.plugin.handle(Request("GET", "/bundle.js"), self.ctx)
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.headers["Content-Type"], "application/javascript")
        self.assertIn('window.ToruPlugins[ID] = { mount: mount, unmount: unmount }', resp.body)

    def test_ids_sort_newest_first(self):
        ids = [notes.new_id() for _ in range(1000)]
        self.assertEqual(ids, sorted(ids, reverse=True))
        self.assertEqual(len(set(ids)), 1000)


if __name__ == "__main__":
    unittest.main()
