"""Unit tests of the Python SDK ``toru_plugin``: codec, vectors, HTTP helpers, dispatch, legacy.

Run from this directory (or anywhere with it on ``sys.path``)::

    python3 -m unittest -v test_toru_plugin

The dispatch tests play the host over a ``socketpair`` (1.1) or a real Unix socket in a private
temp dir (1.0 fallback, socket binding). Every wait has a timeout; nothing sleeps to synchronise.
"""

import base64
import io
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import toru_plugin as tp  # noqa: E402
from toru_plugin import (  # noqa: E402
    BadJSON,
    CleanEOF,
    ConfigError,
    EmptyFrame,
    HTTPError,
    KVError,
    OversizedFrame,
    Plugin,
    Request,
    Response,
    TruncatedFrame,
)

VECTORS = os.path.join(HERE, "..", "tests", "vectors")
# Keep the SDK's diagnostics (expected tracebacks of failing handlers) out of the test report;
# set TORU_TEST_VERBOSE=1 to see them.
if not os.environ.get("TORU_TEST_VERBOSE"):
    tp._Session.diagnostics = io.StringIO()
WAIT_S = 5.0


def vector(name):
    """The bytes of one vector file, without the trailing newline."""
    with open(os.path.join(VECTORS, name), "rb") as f:
        return f.read().rstrip(b"\n")


def frame(obj_or_bytes):
    body = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
    return struct.pack(">I", len(body)) + body


class TrickleStream:
    """A binary stream that returns at most ``step`` bytes per read and records read sizes."""

    def __init__(self, data, step=1):
        self.data = data
        self.pos = 0
        self.step = step
        self.requested = []

    def read(self, n):
        self.requested.append(n)
        chunk = self.data[self.pos:self.pos + min(n, self.step)]
        self.pos += len(chunk)
        return chunk


# ---------------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------------


class CodecTest(unittest.TestCase):
    def test_round_trip(self):
        for msg in (
            tp.make_envelope("lifecycle", {"type": "lifecycle", "action": "init"}, "h1"),
            {"type": "log", "payload": {"message": "snake \U0001F40D, quote \" and \\ and \u00e9"}},
            {"nested": {"list": [1, 2.5, None, True, "x" * 1000]}},
        ):
            data = tp.encode_frame(msg)
            self.assertEqual(struct.unpack(">I", data[:4])[0], len(data) - 4)
            self.assertEqual(tp.read_message(io.BytesIO(data)), msg)

    def test_shutdown_vector_frames_like_the_spec_hexdump(self):
        body = vector("host-shutdown.json")
        self.assertEqual(len(body), 124)
        data = frame(body)
        self.assertEqual(data[:8], bytes.fromhex("0000007c7b227479"))
        self.assertEqual(tp.read_frame(io.BytesIO(data)), body)

    def test_several_frames_byte_at_a_time(self):
        msgs = [{"i": i, "pad": "x" * i} for i in range(5)]
        stream = TrickleStream(b"".join(tp.encode_frame(m) for m in msgs), step=1)
        self.assertEqual([tp.read_message(stream) for _ in msgs], msgs)
        with self.assertRaises(CleanEOF):
            tp.read_frame(stream)

    def test_odd_chunk_sizes(self):
        msgs = [{"i": i} for i in range(20)]
        data = b"".join(tp.encode_frame(m) for m in msgs)
        for step in (2, 3, 5, 7, 4096):
            stream = TrickleStream(data, step=step)
            self.assertEqual([tp.read_message(stream) for _ in msgs], msgs)

    def test_clean_eof(self):
        with self.assertRaises(CleanEOF):
            tp.read_frame(io.BytesIO(b""))

    def test_eof_inside_length(self):
        for cut in (1, 2, 3):
            with self.assertRaises(TruncatedFrame) as cm:
                tp.read_frame(TrickleStream(b"\x00\x00\x00\x05"[:cut]))
            self.assertEqual(cm.exception.part, "length")
            self.assertEqual(cm.exception.received, cut)
            self.assertNotIsInstance(cm.exception, CleanEOF)

    def test_eof_inside_body(self):
        with self.assertRaises(TruncatedFrame) as cm:
            tp.read_frame(TrickleStream(frame(b'{"a":1}')[:-2], step=3))
        self.assertEqual(cm.exception.part, "body")
        self.assertEqual((cm.exception.expected, cm.exception.received), (7, 5))

    def test_oversized_rejected_before_reading_the_body(self):
        stream = TrickleStream(b"\xff\xff\xff\xff" + b"x" * 100, step=1 << 20)
        with self.assertRaises(OversizedFrame) as cm:
            tp.read_frame(stream)
        self.assertEqual(cm.exception.length, 0xFFFFFFFF)
        self.assertEqual(cm.exception.limit, tp.MAX_FRAME_LEN)
        self.assertEqual(stream.pos, 4, "nothing of the body was read")
        self.assertEqual(stream.requested, [4])

    def test_limit_is_inclusive_and_configurable(self):
        body = b'{"k":"' + b"v" * 10 + b'"}'
        self.assertEqual(tp.read_frame(io.BytesIO(frame(body)), max_len=len(body)), body)
        with self.assertRaises(OversizedFrame):
            tp.read_frame(io.BytesIO(frame(body)), max_len=len(body) - 1)

    def test_default_limit_is_8_mib(self):
        self.assertEqual(tp.MAX_FRAME_LEN, 8 * 1024 * 1024)
        self.assertEqual(tp.MAX_CONTROL_FRAME_LEN, 1024 * 1024)
        header = struct.pack(">I", 8 * 1024 * 1024 + 1)
        with self.assertRaises(OversizedFrame):
            tp.read_frame(io.BytesIO(header))

    def test_large_read_requests_are_chunked(self):
        body = json.dumps({"pad": "x" * 300000}).encode()
        stream = TrickleStream(frame(body), step=1 << 30)
        self.assertEqual(tp.read_frame(stream), body)
        self.assertLessEqual(max(stream.requested), 64 * 1024)

    def test_zero_length_frame_keeps_the_stream_aligned(self):
        stream = io.BytesIO(b"\x00\x00\x00\x00" + frame({"ok": True}))
        with self.assertRaises(EmptyFrame):
            tp.read_frame(stream)
        self.assertEqual(tp.read_message(stream), {"ok": True})

    def test_bad_json(self):
        for body in (b"\xff\xfe", b"not json", b"[1,2]", b'"str"', b'{"a":NaN}', b'{"a":1',
                     b"{} {}"):
            with self.assertRaises(BadJSON, msg=body):
                tp.read_message(io.BytesIO(frame(body)))

    def test_encode_over_limit(self):
        with self.assertRaises(OversizedFrame):
            tp.encode_frame({"pad": "x" * 100}, max_len=50)

    def test_error_classes_are_distinct(self):
        for a, b in ((CleanEOF, TruncatedFrame), (TruncatedFrame, OversizedFrame),
                     (CleanEOF, OversizedFrame)):
            self.assertFalse(issubclass(a, b) or issubclass(b, a))
        for cls in (CleanEOF, TruncatedFrame, OversizedFrame, EmptyFrame, BadJSON):
            self.assertTrue(issubclass(cls, tp.FrameError))

    def test_rfc3339(self):
        for ok in ("2025-12-30T12:00:00Z", "2025-12-30T12:00:01.050213+00:00",
                   "2025-12-30t12:00:01.050z", "2025-12-30T23:59:60-05:30", tp.now_rfc3339()):
            self.assertTrue(tp.is_rfc3339(ok), ok)
        for bad in ("2025-12-30 12:00:00Z", "2025-12-30T12:00:00", "2025-13-01T00:00:00Z",
                    "yesterday", "", None, 1735560000, "2025-12-30T25:00:00Z",
                    "2025-12-30T12:00:00+0000"):
            self.assertFalse(tp.is_rfc3339(bad), bad)


# ---------------------------------------------------------------------------------------------
# Vectors (tests/vectors): every one decodes as intended
# ---------------------------------------------------------------------------------------------


class VectorTest(unittest.TestCase):
    def test_all_vectors_are_covered(self):
        self.assertEqual(sorted(os.listdir(VECTORS)), sorted([
            "host-http-request.json", "host-init.json", "host-shutdown.json",
            "plugin-http-response-documented.json", "plugin-http-response-legacy-rust.json",
            "plugin-metadata-pretty.txt"]))

    def decode(self, name):
        msg = tp.read_message(io.BytesIO(frame(vector(name))))
        self.assertTrue(tp.is_rfc3339(msg["timestamp"]), name)
        return msg

    def test_host_init(self):
        msg = self.decode("host-init.json")
        self.assertEqual(msg["type"], "lifecycle")
        self.assertIsNone(msg["request_id"])
        self.assertEqual(msg["payload"]["action"], "init")
        self.assertNotIn("protocol", msg["payload"])  # 1.0: the SDK falls back to legacy mode
        ctx = tp.Context(Plugin(id="x", name="x", version="1", route="/x"), None, msg["payload"])
        self.assertEqual(ctx.instance_id, "5f0c6c2e-8a3b-4d7e-9c1a-2b3c4d5e6f70")
        self.assertEqual(ctx.protocol, "1.0")
        self.assertEqual(ctx.log_path, "/run/toru/logs/hello-plugin-python.log")
        self.assertEqual(ctx.config, {})  # the original host sent no settings
        self.assertIsNone(ctx.license)  # unlicensed (and older hosts send none)
        self.assertFalse(ctx.has_feature("pro"))

    def test_a_licence_in_init_is_exposed(self):
        payload = {"instance_id": "i", "license": {
            "plugin": "x", "publisher": "8E2C1D4B6A0F3E57",
            "instance": "0123456789abcdef0123456789abcdef", "features": ["pro"],
            "not_before": "2025-01-01T00:00:00Z", "expires": None,
            "issued_at": "2025-01-01T00:00:00Z"}}
        ctx = tp.Context(Plugin(id="x", name="x", version="1", route="/x"), None, payload)
        self.assertEqual(ctx.license["publisher"], "8E2C1D4B6A0F3E57")
        self.assertTrue(ctx.has_feature("pro"))
        self.assertFalse(ctx.has_feature("export"))

    def test_host_http_request(self):
        msg = self.decode("host-http-request.json")
        self.assertEqual(msg["type"], "http")
        self.assertEqual(msg["request_id"], msg["payload"]["request_id"])
        req = tp._Session._parse_request(msg["request_id"], msg["payload"]["payload"])
        self.assertEqual((req.method, req.path, req.raw_path), ("GET", "/", "/"))
        self.assertEqual(req.headers["accept"], "application/json")
        self.assertEqual(req.headers.raw(), {"Accept": "application/json",
                                             "Host": "toru.local:8080"})
        self.assertIsNone(req.body)
        self.assertIsNone(req.text)

    def test_host_shutdown(self):
        msg = self.decode("host-shutdown.json")
        self.assertEqual((msg["type"], msg["payload"]["action"]), ("lifecycle", "shutdown"))

    def test_plugin_http_response_documented(self):
        msg = self.decode("plugin-http-response-documented.json")
        p = msg["payload"]
        self.assertEqual((p["status"], p["headers"]), (200, {"Content-Type": "application/json"}))
        self.assertEqual(json.loads(p["body"])["message"], "Hello from Python plugin!")

    def test_plugin_http_response_legacy_rust(self):
        msg = self.decode("plugin-http-response-legacy-rust.json")
        inner = msg["payload"]["payload"]
        wrapped = json.loads(inner["body"])
        self.assertEqual(wrapped["status"], 200)
        self.assertEqual(wrapped["headers"], {"Content-Type": "application/json"})
        self.assertEqual(json.loads(wrapped["body"]), {"message": "Hello from Rust plugin!"})

    def test_documented_form_is_what_the_sdk_writes(self):
        expected = self.decode("plugin-http-response-documented.json")["payload"]
        body = json.loads(expected["body"])
        payload = Response.json(body).to_payload()
        self.assertEqual(payload["status"], expected["status"])
        self.assertEqual(payload["headers"], expected["headers"])
        self.assertEqual(json.loads(payload["body"]), body)
        self.assertEqual(set(payload), {"status", "headers", "body"})

    def test_metadata_pretty(self):
        meta = json.loads(vector("plugin-metadata-pretty.txt").decode("utf-8"))
        self.assertNotIn("protocol", meta)
        p = Plugin(id=meta["id"], name=meta["name"], version=meta["version"],
                   author=meta["author"], icon=meta["icon"], route=meta["route"])
        out = p.metadata()
        self.assertEqual(out.pop("protocol"), "1.1")
        self.assertEqual(out, meta)


# ---------------------------------------------------------------------------------------------
# Requests, responses, routing, metadata
# ---------------------------------------------------------------------------------------------


class HttpHelpersTest(unittest.TestCase):
    def test_request_query_and_path(self):
        r = Request("GET", "/items?x=1&y=a%20b&x=2&flag", {"Content-Type": "text/plain"})
        self.assertEqual(r.path, "/items")
        self.assertEqual(r.raw_path, "/items?x=1&y=a%20b&x=2&flag")
        self.assertEqual(r.query, {"x": "2", "y": "a b", "flag": ""})
        self.assertEqual(r.query_all["x"], ["1", "2"])
        self.assertEqual(r.headers.get("content-type"), "text/plain")

    def test_request_bodies(self):
        self.assertEqual(Request("PUT", "/", body="h\u00e9").body, "h\u00e9".encode())
        r = Request("PUT", "/", body=base64.b64encode(b"\xff\x00").decode(), body_encoding="base64")
        self.assertEqual(r.body, b"\xff\x00")
        self.assertEqual(r.text, "\ufffd\x00")
        self.assertEqual(Request("POST", "/", body='{"a": 1}').json(), {"a": 1})
        with self.assertRaises(HTTPError) as cm:
            Request("POST", "/", body="nope").json()
        self.assertEqual(cm.exception.status, 400)

    def test_response_forms(self):
        p = tp._to_response({"a": 1}).to_payload()
        self.assertEqual((p["status"], p["headers"]["Content-Type"]), (200, "application/json"))
        self.assertEqual(json.loads(p["body"]), {"a": 1})
        self.assertEqual(tp._to_response(None).to_payload()["status"], 204)
        p = tp._to_response("hi").to_payload()
        self.assertEqual((p["body"], p["headers"]["Content-Type"]), ("hi", "text/plain; charset=utf-8"))
        p = tp._to_response(({"e": 1}, 404, {"X-A": "b"})).to_payload()
        self.assertEqual((p["status"], p["headers"]["X-A"]), (404, "b"))
        self.assertEqual(tp._to_response(("gone", 410)).to_payload()["status"], 410)
        p = Response(201, {"content-type": "application/vnd+json"}, {"a": 1}).to_payload()
        self.assertEqual(p["headers"], {"content-type": "application/vnd+json"})
        with self.assertRaises(ValueError):
            Response(600)
        with self.assertRaises(TypeError):
            tp._to_response(3.5)

    def test_binary_bodies(self):
        p = Response.binary(b"\x89PNG\xff", content_type="image/png").to_payload()
        self.assertEqual(p["body_encoding"], "base64")
        self.assertEqual(base64.b64decode(p["body"]), b"\x89PNG\xff")
        p = Response.binary("plain".encode()).to_payload()
        self.assertNotIn("body_encoding", p)
        self.assertEqual(p["body"], "plain")
        p = Response.binary(b"\xff").to_payload(allow_base64=False)
        self.assertNotIn("body_encoding", p)

    def test_routing(self):
        p = Plugin(id="r", name="r", version="1", route="/r")
        seen = []

        @p.route("GET", "/kv/{key}")
        def one(req, ctx):
            seen.append(("one", req.params))
            return {}

        @p.route(["PUT", "POST"], "/files/{rest:path}")
        def rest(req, ctx):
            seen.append(("rest", req.params))
            return {}

        @p.route("*", "/any")
        def any_(req, ctx):
            seen.append(("any", req.method))
            return {}

        p.handle(Request("GET", "/kv/a%2Fb?x=1"), None)
        p.handle(Request("POST", "/files/a/b%20c"), None)
        p.handle(Request("PATCH", "/any"), None)
        self.assertEqual(seen, [("one", {"key": "a/b"}), ("rest", {"rest": "a/b c"}),
                                ("any", "PATCH")])
        nf = tp._to_response(p.handle(Request("DELETE", "/kv/a?q=1"), None)).to_payload()
        self.assertEqual(nf["status"], 404)
        self.assertEqual(json.loads(nf["body"]), {"error": "not_found", "path": "/kv/a?q=1"})
        self.assertEqual(tp._to_response(p.handle(Request("GET", "/kv/a/b"), None)).status, 404)

    def test_metadata_validation(self):
        good = dict(id="a-1", name="A", version="1", route="/a")
        Plugin(**good)
        for field, bad in (("id", "-a"), ("id", "A"), ("id", "a" * 64), ("id", "a_b"),
                           ("route", "a"), ("route", "/a/b"), ("route", "/.."), ("route", "/"),
                           ("name", ""), ("name", "n" * 100), ("author", "a" * 100)):
            with self.assertRaises(ValueError, msg=(field, bad)):
                Plugin(**dict(good, **{field: bad}))

    def test_metadata_flag_with_empty_environment(self):
        script = ("import sys; sys.path.insert(0, %r); from toru_plugin import Plugin; "
                  "Plugin(id='m', name='M', version='0.1.0', author=None, icon='\\U0001F40D', "
                  "route='/m').run()" % HERE)
        out = subprocess.run([sys.executable, "-c", script, "--metadata"], env={},
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, timeout=WAIT_S)
        self.assertEqual(out.returncode, 0)
        meta = json.loads(out.stdout.decode("utf-8"))
        self.assertEqual(meta, {"id": "m", "name": "M", "version": "0.1.0", "author": None,
                                "icon": "\U0001F40D", "route": "/m", "protocol": "1.1"})

    def test_no_socket_variable_is_a_clear_error(self):
        script = ("import sys; sys.path.insert(0, %r); from toru_plugin import Plugin; "
                  "Plugin(id='m', name='M', version='1', route='/m').run()" % HERE)
        out = subprocess.run([sys.executable, "-c", script], env={}, stdin=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, timeout=WAIT_S)
        self.assertEqual(out.returncode, 2)
        self.assertIn(b"TORU_PLUGIN_SOCKET", out.stderr)


# ---------------------------------------------------------------------------------------------
# Socket binding
# ---------------------------------------------------------------------------------------------


class BindTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(dir="/tmp", prefix="tpb")

    def tearDown(self):
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)

    def test_creates_private_parent_and_replaces_stale_socket(self):
        path = os.path.join(self.dir, "sub", "p.sock")
        s1 = tp.bind_socket(path)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o077, 0)
        s1.close()  # leaves a stale socket file behind
        self.assertTrue(stat.S_ISSOCK(os.lstat(path).st_mode))
        s2 = tp.bind_socket(path)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        c.close()
        s2.close()

    def test_refuses_a_regular_file(self):
        path = os.path.join(self.dir, "p.sock")
        with open(path, "w") as f:
            f.write("keep me")
        with self.assertRaises(tp.ToruError):
            tp.bind_socket(path)
        with open(path) as f:
            self.assertEqual(f.read(), "keep me")

    def test_never_follows_a_symlink(self):
        target = os.path.join(self.dir, "real.sock")
        real = tp.bind_socket(target)
        link = os.path.join(self.dir, "p.sock")
        os.symlink(target, link)
        with self.assertRaises(tp.ToruError):
            tp.bind_socket(link)
        self.assertTrue(os.path.islink(link))
        self.assertTrue(stat.S_ISSOCK(os.lstat(target).st_mode))
        real.close()


# ---------------------------------------------------------------------------------------------
# Dispatch over a socketpair (1.1)
# ---------------------------------------------------------------------------------------------


class FakeHost:
    """The host side of a socketpair; the plugin serves the other end in a thread."""

    def __init__(self, plugin):
        self.sock, plugin_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT_S)
        self.exit_code = []
        self.thread = threading.Thread(
            target=lambda: self.exit_code.append(plugin.serve_connection(plugin_side)),
            daemon=True)
        self.thread.start()
        self.n = 0

    def rid(self):
        self.n += 1
        return "h%d" % self.n

    def send(self, msg):
        self.sock.sendall(tp.encode_frame(msg))

    def send_raw(self, data):
        self.sock.sendall(data)

    def recv(self):
        return tp.read_message(self.sock)

    def request(self, type_, payload, rid=None):
        rid = rid or self.rid()
        self.send(tp.make_envelope(type_, payload, rid))
        return rid

    def init(self, **extra):
        payload = {"type": "lifecycle", "action": "init", "instance_id": "inst-1",
                   "plugin_socket": "/x.sock", "log_path": "/x.log", "protocol": "1.1",
                   "heartbeat_interval_ms": 5000, "max_frame_len": tp.MAX_FRAME_LEN}
        payload.update(extra)
        return self.request("lifecycle", payload)

    def http(self, method, path, body=None, headers=None, **extra):
        rid = self.rid()
        inner = {"method": method, "path": path, "headers": headers or {}, "body": body}
        inner.update(extra)
        self.send(tp.make_envelope("http", {"type": "http", "request_id": rid, "payload": inner},
                                   rid))
        return rid

    def ping(self, seq):
        return self.request("heartbeat", {"type": "heartbeat", "action": "ping", "seq": seq})

    def wait_exit(self):
        self.thread.join(WAIT_S)
        self.assertFalse_alive()
        return self.exit_code[0]

    def assertFalse_alive(self):
        if self.thread.is_alive():
            raise AssertionError("plugin did not stop")

    def close(self):
        self.sock.close()


class DispatchTest(unittest.TestCase):
    def make_plugin(self):
        p = Plugin(id="t", name="T", version="1", route="/t")
        self.release = threading.Event()
        self.shutdown_ran = threading.Event()

        @p.route("GET", "/")
        def index(req, ctx):
            return {"instance_id": ctx.instance_id, "protocol": ctx.protocol}

        @p.route("GET", "/block")
        def block(req, ctx):
            self.release.wait(WAIT_S)
            return {"released": True}

        @p.route("GET", "/kv")
        def kv(req, ctx):
            out = {}
            try:
                ctx.kv.set("a", "1")
                out["get"] = ctx.kv.get("a")
                out["missing"] = ctx.kv.get("zz")
                out["deleted"] = ctx.kv.delete("a")
                page = ctx.kv.list(prefix="a/", start_after="a/3", limit=2)
                out["list"] = [page.keys, page.truncated]
                out["all"] = list(ctx.kv.iter_keys("b"))
            except KVError as e:
                out["error"] = [e.code, e.message]
            return out

        @p.route("GET", "/kv-error")
        def kv_error(req, ctx):
            try:
                ctx.kv.set("k", "v")
            except KVError as e:
                return {"code": e.code, "message": e.message}
            return {"code": None}

        @p.route("GET", "/mqtt")
        def mqtt(req, ctx):
            ctx.mqtt.subscribe("cmd/#")
            ctx.mqtt.publish("t", "v", retain=True)
            try:
                ctx.mqtt.publish("../x", "v")
            except tp.MQTTError as e:
                return {"refused": [e.code, e.message]}
            return {"refused": None}

        self.mqtt_seen = []
        self.mqtt_seen_event = threading.Event()

        @p.on_mqtt_message
        def on_message(ctx, topic, payload):
            self.mqtt_seen.append((topic, payload))
            self.mqtt_seen_event.set()

        @p.route("GET", "/boom")
        def boom(req, ctx):
            raise RuntimeError("kaput")

        @p.route("GET", "/teapot")
        def teapot(req, ctx):
            raise HTTPError(418, {"error": "teapot"})

        @p.route("POST", "/bin")
        def binary(req, ctx):
            return Response.binary(bytes(reversed(req.body)), content_type="application/x-bin")

        @p.route("GET", "/log")
        def log(req, ctx):
            ctx.log("warn", "careful")
            return {}

        @p.route("GET", "/config")
        def config(req, ctx):
            return ctx.config

        self.seen_configs = []

        @p.on_config
        def settings(ctx, config):
            self.seen_configs.append(ctx.config)  # already the new settings
            if config.get("greeting") == "":
                raise ConfigError("greeting must not be empty")
            if config.get("greeting") == "crash":
                raise RuntimeError("kaput")

        @p.on_shutdown
        def bye(ctx):
            self.shutdown_ran.set()

        return p

    def setUp(self):
        self.host = FakeHost(self.make_plugin())
        self.addCleanup(self.host.close)

    def ready(self):
        rid = self.host.init()
        msg = self.host.recv()
        self.assertEqual(msg["request_id"], rid)
        self.assertEqual(msg["payload"], {"type": "lifecycle", "action": "ready"})
        self.assertTrue(tp.is_rfc3339(msg["timestamp"]))

    def reply(self, rid):
        msg = self.host.recv()
        self.assertEqual(msg["request_id"], rid, msg)
        return msg

    def http_json(self, rid):
        msg = self.reply(rid)
        self.assertEqual(msg["type"], "http", msg)
        return msg["payload"]["status"], json.loads(msg["payload"]["body"])

    def test_init_ready_and_context(self):
        self.ready()
        rid = self.host.http("GET", "/")
        self.assertEqual(self.http_json(rid), (200, {"instance_id": "inst-1", "protocol": "1.1"}))

    def config(self, config, action="set"):
        rid = self.host.request("config", {"type": "config", "action": action, "config": config})
        return self.reply(rid)

    def test_settings_come_with_init_and_follow_config_messages(self):
        rid = self.host.init(config={"greeting": "hello"})
        self.assertEqual(self.reply(rid)["payload"]["action"], "ready")
        self.assertEqual(self.http_json(self.host.http("GET", "/config")),
                         (200, {"greeting": "hello"}))
        new = {"greeting": "howdy", "nested": {"list": [1, 2]}}
        ok = self.config(new)
        self.assertEqual((ok["type"], ok["payload"]), ("config", {"type": "config",
                                                                 "action": "ok"}))
        self.assertEqual(self.http_json(self.host.http("GET", "/config")), (200, new))
        for refused, code, words in (({"greeting": ""}, "bad_request", "must not be empty"),
                                     ({"greeting": "crash"}, "internal", "kaput")):
            msg = self.config(refused)
            self.assertEqual((msg["type"], msg["payload"]["code"]), ("error", code), msg)
            self.assertIn(words, msg["payload"]["message"])
            self.assertEqual(self.http_json(self.host.http("GET", "/config")), (200, new),
                             "a refused change is not kept")
        self.assertEqual(self.seen_configs, [new, {"greeting": ""}, {"greeting": "crash"}])

    def test_settings_default_to_empty_and_bad_config_messages_are_answered(self):
        early = self.config({"greeting": "too soon"})
        self.assertEqual(early["payload"]["code"], "unavailable")
        self.ready()
        self.assertEqual(self.http_json(self.host.http("GET", "/config")), (200, {}))
        self.assertEqual(self.config([1])["payload"]["code"], "bad_request")
        self.assertEqual(self.config({}, action="merge")["payload"]["code"], "unsupported")
        self.assertEqual(self.seen_configs, [])

    def test_pong_and_other_requests_while_a_handler_blocks(self):
        self.ready()
        slow = self.host.http("GET", "/block")
        ping = self.host.ping(7)
        msg = self.reply(ping)
        self.assertEqual(msg["payload"], {"type": "heartbeat", "action": "pong", "seq": 7})
        fast = self.host.http("GET", "/")
        self.assertEqual(self.http_json(fast)[0], 200)
        self.release.set()
        self.assertEqual(self.http_json(slow), (200, {"released": True}))

    def serve_kv(self, replies):
        """Answer the plugin's KV requests with replies[action](payload) -> (type, payload)."""
        seen = []
        while True:
            msg = self.host.recv()
            if msg["type"] != "kv":
                return msg, seen
            self.assertRegex(msg["request_id"], r"^p\d+$")
            self.assertTrue(tp.is_rfc3339(msg["timestamp"]))
            p = msg["payload"]
            seen.append(p)
            type_, payload = replies(p)
            self.host.send(tp.make_envelope(type_, payload, msg["request_id"]))

    def test_kv_round_trip(self):
        self.ready()
        rid = self.host.http("GET", "/kv")
        store = {"a/4": "x", "a/5": "y", "b1": "1", "b2": "2"}

        def answer(p):
            a = p["action"]
            if a == "set":
                store[p["key"]] = p["value"]
                return "kv", {"type": "kv", "action": "set", "key": p["key"]}
            if a == "get":
                return "kv", {"type": "kv", "action": "get", "key": p["key"],
                              "value": store.get(p["key"])}
            if a == "delete":
                return "kv", {"type": "kv", "action": "delete", "key": p["key"],
                              "existed": store.pop(p["key"], None) is not None}
            keys = sorted(k for k in store if k.startswith(p.get("prefix", "")))
            if p.get("start_after"):
                keys = [k for k in keys if k > p["start_after"]]
            if p["prefix"] == "b":  # paginate one key at a time to exercise iter_keys
                return "kv", {"type": "kv", "action": "list", "keys": keys[:1],
                              "truncated": len(keys) > 1}
            return "kv", {"type": "kv", "action": "list", "keys": keys[:p.get("limit", 1000)],
                          "truncated": False}

        msg, seen = self.serve_kv(answer)
        self.assertEqual(msg["request_id"], rid)
        body = json.loads(msg["payload"]["body"])
        self.assertEqual(body, {"get": "1", "missing": None, "deleted": True,
                                "list": [["a/4", "a/5"], False], "all": ["b1", "b2"]})
        self.assertEqual(seen[0], {"type": "kv", "action": "set", "key": "a", "value": "1"})
        self.assertEqual(seen[4], {"type": "kv", "action": "list", "prefix": "a/",
                                   "start_after": "a/3", "limit": 2})

    def test_mqtt_requests_are_answered_and_messages_reach_the_hook(self):
        self.ready()
        rid = self.host.http("GET", "/mqtt")
        seen = []
        while True:
            msg = self.host.recv()
            if msg["type"] != "mqtt":
                break
            p = msg["payload"]
            seen.append(p)
            if p.get("topic") == "../x":
                reply = tp.make_envelope("error", {"type": "error", "code": "bad_request",
                                                   "message": "leaves"}, msg["request_id"])
            else:
                reply = tp.make_envelope("mqtt", {"type": "mqtt", "action": "ok"},
                                         msg["request_id"])
            self.host.send(reply)
        self.assertEqual(msg["request_id"], rid)
        self.assertEqual(json.loads(msg["payload"]["body"]),
                         {"refused": ["bad_request", "leaves"]})
        self.assertEqual(seen[0], {"type": "mqtt", "action": "subscribe", "filter": "cmd/#"})
        self.assertEqual(seen[1], {"type": "mqtt", "action": "publish", "topic": "t",
                                   "payload": "v", "retain": True})
        # A delivery needs no reply and reaches the hook, in a worker thread.
        self.host.send(tp.make_envelope("mqtt", {"type": "mqtt", "action": "message",
                                                 "topic": "cmd/go", "payload": "now"}))
        self.assertTrue(self.mqtt_seen_event.wait(WAIT_S))
        self.assertEqual(self.mqtt_seen, [("cmd/go", "now")])

    def test_kv_error_reply_raises_typed_exception(self):
        self.ready()
        rid = self.host.http("GET", "/kv-error")
        msg, _ = self.serve_kv(lambda p: ("error", {
            "type": "error", "code": "quota_exceeded", "message": "plugin quota exceeded"}))
        self.assertEqual(msg["request_id"], rid)
        self.assertEqual(json.loads(msg["payload"]["body"]),
                         {"code": "quota_exceeded", "message": "plugin quota exceeded"})

    def test_kv_reply_with_wrong_action_is_an_error(self):
        self.ready()
        rid = self.host.http("GET", "/kv-error")
        msg, _ = self.serve_kv(lambda p: ("kv", {"type": "kv", "action": "get", "value": None}))
        self.assertEqual(msg["request_id"], rid)
        self.assertEqual(json.loads(msg["payload"]["body"])["code"], "bad_request")

    def test_malformed_kv_reply_fails_the_call_without_answering_the_host(self):
        self.ready()
        rid = self.host.http("GET", "/kv-error")
        kv = self.host.recv()
        self.assertEqual(kv["type"], "kv")
        bad = tp.make_envelope("kv", {"type": "kv", "action": "set", "key": "k"}, kv["request_id"])
        bad["timestamp"] = "not a time"
        self.host.send(bad)
        msg = self.reply(rid)  # the next frame is the HTTP reply, not an error sent to the host
        self.assertEqual(msg["type"], "http")
        self.assertEqual(json.loads(msg["payload"]["body"])["code"], "bad_request")

    def test_unknown_type_action_and_bad_envelopes(self):
        self.ready()
        cases = [
            (tp.make_envelope("bogus", {"type": "bogus"}, "x1"), "unsupported"),
            (tp.make_envelope("log", {"type": "log", "level": "info", "message": "m"}, "x2"),
             "unsupported"),
            (tp.make_envelope("lifecycle", {"type": "lifecycle", "action": "reboot"}, "x3"),
             "unsupported"),
            (tp.make_envelope("heartbeat", {"type": "heartbeat", "action": "pang"}, "x4"),
             "unsupported"),
            (dict(tp.make_envelope("heartbeat", {"type": "heartbeat", "action": "ping"}, "x5"),
                  timestamp="yesterday"), "bad_request"),
            (tp.make_envelope("heartbeat", {"type": "http", "action": "ping"}, "x6"),
             "bad_request"),
            (dict(tp.make_envelope("heartbeat", {}, "x7"), payload=[1]), "bad_request"),
            (tp.make_envelope("http", {"type": "http", "payload": {"path": "/"}}, "x8"),
             "bad_request"),
            (tp.make_envelope("lifecycle", {"type": "lifecycle", "action": "init"}, "x9"),
             "bad_request"),  # already initialised
        ]
        for msg, code in cases:
            self.host.send(msg)
            reply = self.reply(msg["request_id"])
            self.assertEqual(reply["type"], "error", msg)
            self.assertEqual(reply["payload"]["type"], "error")
            self.assertEqual(reply["payload"]["code"], code, msg)
            self.assertIsInstance(reply["payload"]["message"], str)

    def test_frames_without_request_id_and_junk_are_dropped(self):
        self.ready()
        self.host.send(tp.make_envelope("bogus", {"type": "bogus"}))
        self.host.send_raw(b"\x00\x00\x00\x00")  # empty frame
        self.host.send_raw(frame(b"not json"))
        self.host.send_raw(frame(b"[1]"))
        self.host.send(dict(tp.make_envelope("bogus", {}), request_id="r" * 129))
        ping = self.host.ping(1)
        self.assertEqual(self.reply(ping)["payload"]["action"], "pong")

    def test_oversized_control_frame_is_answered_too_large(self):
        self.ready()
        msg = tp.make_envelope("heartbeat", {"type": "heartbeat", "action": "ping", "seq": 1,
                                             "pad": "x" * (tp.MAX_CONTROL_FRAME_LEN + 1)}, "big")
        self.host.send(msg)
        reply = self.reply("big")
        self.assertEqual((reply["type"], reply["payload"]["code"]), ("error", "too_large"))
        ping = self.host.ping(2)
        self.assertEqual(self.reply(ping)["payload"]["seq"], 2)

    def test_large_http_request_is_fine(self):
        self.ready()
        body = "y" * (2 * 1024 * 1024)
        rid = self.host.http("POST", "/bin", body=body)
        msg = self.reply(rid)
        self.assertEqual(msg["payload"]["body"], body)

    def test_frame_over_the_limit_closes_the_connection(self):
        self.ready()
        self.host.send_raw(struct.pack(">I", tp.MAX_FRAME_LEN + 1))
        self.assertEqual(self.host.wait_exit(), 1)

    def test_truncated_frame_ends_the_plugin(self):
        self.ready()
        self.host.send_raw(b"\x00\x00\x01\x00{")
        self.host.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(self.host.wait_exit(), 1)

    def test_handler_errors(self):
        self.ready()
        rid = self.host.http("GET", "/boom")
        msg = self.reply(rid)
        self.assertEqual((msg["type"], msg["payload"]["code"]), ("error", "internal"))
        rid = self.host.http("GET", "/teapot")
        self.assertEqual(self.http_json(rid), (418, {"error": "teapot"}))
        rid = self.host.http("GET", "/nope?x=1")
        self.assertEqual(self.http_json(rid), (404, {"error": "not_found", "path": "/nope?x=1"}))

    def test_binary_bodies_both_ways(self):
        self.ready()
        data = b"\x00\xff\xfe\x80"
        rid = self.host.http("POST", "/bin", body=base64.b64encode(data).decode(),
                             body_encoding="base64")
        msg = self.reply(rid)
        self.assertEqual(msg["payload"]["body_encoding"], "base64")
        self.assertEqual(base64.b64decode(msg["payload"]["body"]), bytes(reversed(data)))
        rid = self.host.http("POST", "/bin", body="***", body_encoding="base64")
        self.assertEqual(self.reply(rid)["payload"]["code"], "bad_request")
        rid = self.host.http("POST", "/bin", body="x", body_encoding="rot13")
        self.assertEqual(self.reply(rid)["payload"]["code"], "bad_request")

    def test_log_frames(self):
        self.ready()
        rid = self.host.http("GET", "/log")
        log = self.host.recv()
        self.assertEqual(log["type"], "log")
        self.assertIsNone(log["request_id"])
        self.assertEqual(log["payload"], {"type": "log", "level": "warn", "message": "careful"})
        self.assertEqual(self.http_json(rid)[0], 200)

    def test_http_before_ready_is_unavailable(self):
        rid = self.host.http("GET", "/")
        msg = self.reply(rid)
        self.assertEqual((msg["type"], msg["payload"]["code"]), ("error", "unavailable"))
        ping = self.host.ping(3)
        self.assertEqual(self.reply(ping)["payload"]["seq"], 3)

    def test_shutdown(self):
        self.ready()
        rid = self.host.request("lifecycle", {"type": "lifecycle", "action": "shutdown"})
        msg = self.reply(rid)
        self.assertEqual(msg["payload"], {"type": "lifecycle", "action": "shutdown_ack"})
        self.assertTrue(self.shutdown_ran.is_set())
        self.assertEqual(self.host.wait_exit(), 0)

    def test_host_closing_ends_the_plugin(self):
        self.ready()
        self.host.sock.shutdown(socket.SHUT_WR)
        self.assertEqual(self.host.wait_exit(), 0)


class LimitsTest(unittest.TestCase):
    def test_at_most_16_kv_requests_in_flight(self):
        p = Plugin(id="l", name="L", version="1", route="/l")

        @p.route("GET", "/one")
        def one(req, ctx):
            return {"v": ctx.kv.get("k")}

        host = FakeHost(p)
        self.addCleanup(host.close)
        host.init()
        self.assertEqual(host.recv()["payload"]["action"], "ready")
        for _ in range(20):
            host.http("GET", "/one")
        kv = [host.recv() for _ in range(tp.MAX_KV_IN_FLIGHT)]
        self.assertTrue(all(m["type"] == "kv" for m in kv))
        self.assertEqual(len({m["request_id"] for m in kv}), tp.MAX_KV_IN_FLIGHT)
        host.sock.settimeout(0.2)  # a negative check: nothing more may arrive yet
        with self.assertRaises(socket.timeout):
            host.recv()
        host.sock.settimeout(WAIT_S)
        host.send(tp.make_envelope("kv", {"type": "kv", "action": "get", "key": "k",
                                          "value": "1"}, kv[0]["request_id"]))
        types = sorted(host.recv()["type"] for _ in range(2))
        self.assertEqual(types, ["http", "kv"], "one reply out, the 17th request in")

    def test_busy_when_every_worker_is_taken(self):
        p = Plugin(id="b", name="B", version="1", route="/b", max_concurrency=1)
        release = threading.Event()

        @p.route("GET", "/block")
        def block(req, ctx):
            release.wait(WAIT_S)
            return {}

        host = FakeHost(p)
        self.addCleanup(host.close)
        host.init()
        host.recv()
        first = host.http("GET", "/block")
        second = host.http("GET", "/block")
        msg = host.recv()
        self.assertEqual((msg["request_id"], msg["type"], msg["payload"]["code"]),
                         (second, "error", "busy"))
        release.set()
        self.assertEqual(host.recv()["request_id"], first)


class InitTest(unittest.TestCase):
    def test_init_failure_sends_error_and_exits_non_zero(self):
        p = Plugin(id="f", name="F", version="1", route="/f")

        @p.on_init
        def init(ctx):
            raise RuntimeError("no config")

        host = FakeHost(p)
        self.addCleanup(host.close)
        rid = host.init()
        msg = host.recv()
        self.assertEqual((msg["type"], msg["request_id"]), ("error", rid))
        self.assertEqual(msg["payload"]["code"], "internal")
        self.assertIn("no config", msg["payload"]["message"])
        self.assertEqual(host.wait_exit(), 1)

    def test_init_with_settings_that_are_not_an_object_is_refused(self):
        host = FakeHost(Plugin(id="f", name="F", version="1", route="/f"))
        self.addCleanup(host.close)
        rid = host.init(config=["not", "an", "object"])
        msg = host.recv()
        self.assertEqual((msg["type"], msg["request_id"]), ("error", rid))
        self.assertEqual(msg["payload"]["code"], "bad_request")
        self.assertEqual(host.wait_exit(), 1)

    def test_init_can_use_kv_and_pings_are_answered_meanwhile(self):
        p = Plugin(id="k", name="K", version="1", route="/k")
        got = []

        @p.on_init
        def init(ctx):
            got.append(ctx.kv.get("boot"))

        host = FakeHost(p)
        self.addCleanup(host.close)
        rid = host.init()
        kv = host.recv()
        self.assertEqual(kv["payload"], {"type": "kv", "action": "get", "key": "boot"})
        host.ping(9)
        self.assertEqual(host.recv()["payload"]["seq"], 9)
        host.send(tp.make_envelope("kv", {"type": "kv", "action": "get", "key": "boot",
                                          "value": "x"}, kv["request_id"]))
        ready = host.recv()
        self.assertEqual((ready["request_id"], ready["payload"]["action"]), (rid, "ready"))
        self.assertEqual(got, ["x"])

    def test_pending_kv_fails_when_the_host_goes_away(self):
        p = Plugin(id="k", name="K", version="1", route="/k")
        errors = []
        failed = threading.Event()

        @p.on_init
        def init(ctx):
            try:
                ctx.kv.get("boot")
            except KVError as e:
                errors.append(e.code)
                failed.set()

        host = FakeHost(p)
        host.init()
        host.recv()  # the kv request
        host.close()
        host.thread.join(WAIT_S)
        self.assertTrue(failed.wait(WAIT_S))
        self.assertEqual(errors, ["unavailable"])

    def test_class_based_plugin(self):
        class Hello(Plugin):
            def __init__(self):
                super().__init__(id="cls", name="Cls", version="1", route="/cls")
                self.inits = 0

            def init(self, ctx):
                self.inits += 1

            def handle(self, req, ctx):
                return {"path": req.path, "inits": self.inits}

        host = FakeHost(Hello())
        self.addCleanup(host.close)
        host.init()
        self.assertEqual(host.recv()["payload"]["action"], "ready")
        rid = host.http("GET", "/x?y")
        msg = host.recv()
        self.assertEqual(msg["request_id"], rid)
        self.assertEqual(json.loads(msg["payload"]["body"]), {"path": "/x", "inits": 1})


# ---------------------------------------------------------------------------------------------
# Legacy 1.0 host: one message per connection, over a real socket
# ---------------------------------------------------------------------------------------------


class LegacyHostTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(dir="/tmp", prefix="tpl")
        self.path = os.path.join(self.dir, "p.sock")
        p = Plugin(id="hello-plugin-python", name="Hello", version="1", route="/hello-python")
        self.inits = []

        @p.on_init
        def init(ctx):
            self.inits.append((ctx.instance_id, ctx.protocol))

        @p.route("GET", "/")
        def index(req, ctx):
            return {"message": "Hello from Python plugin!", "instance_id": ctx.instance_id}

        @p.route("GET", "/kv")
        def kv(req, ctx):
            try:
                ctx.kv.get("a")
            except KVError as e:
                return {"code": e.code}

        @p.route("GET", "/boom")
        def boom(req, ctx):
            raise RuntimeError("kaput")

        @p.route("GET", "/config")
        def config(req, ctx):
            return ctx.config

        listener = tp.bind_socket(self.path)
        self.code = []
        self.thread = threading.Thread(
            target=lambda: self.code.append(p.serve(listener, self.path)), daemon=True)
        self.thread.start()

    def tearDown(self):
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)

    def one(self, data, reply):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(WAIT_S)
        c.connect(self.path)
        try:
            c.sendall(data)
            return tp.read_message(c) if reply else None
        finally:
            c.close()

    def test_vectors_one_message_per_connection(self):
        self.one(frame(vector("host-init.json")), reply=False)
        msg = self.one(frame(vector("host-http-request.json")), reply=True)
        self.assertEqual(self.inits, [("5f0c6c2e-8a3b-4d7e-9c1a-2b3c4d5e6f70", "1.0")])
        expected = json.loads(vector("plugin-http-response-documented.json").decode())
        self.assertEqual(msg["type"], "http")
        self.assertEqual(msg["request_id"], expected["request_id"])
        self.assertEqual(msg["payload"]["status"], 200)
        self.assertEqual(msg["payload"]["headers"], expected["payload"]["headers"])
        self.assertEqual(json.loads(msg["payload"]["body"]),
                         json.loads(expected["payload"]["body"]))
        req = json.loads(vector("host-http-request.json").decode())
        req["payload"]["payload"]["path"] = "/kv"
        msg = self.one(frame(json.dumps(req).encode()), reply=True)
        self.assertEqual(json.loads(msg["payload"]["body"]), {"code": "unavailable"})
        req["payload"]["payload"]["path"] = "/boom"  # 1.0 has no error frames: HTTP 500
        msg = self.one(frame(json.dumps(req).encode()), reply=True)
        self.assertEqual((msg["type"], msg["payload"]["status"]), ("http", 500))
        self.assertEqual(json.loads(msg["payload"]["body"])["error"], "internal")
        self.one(frame(vector("host-shutdown.json")), reply=False)
        self.thread.join(WAIT_S)
        self.assertEqual(self.code, [0])
        self.assertFalse(os.path.exists(self.path), "socket file removed on exit")

    def test_settings_under_a_legacy_host(self):
        # An original host sends no settings; Toru's 1.0 init carries them, and restarts a 1.0
        # plugin instead of sending `config` (a stray one is ignored: 1.0 has no error frame).
        init = json.loads(vector("host-init.json").decode())
        init["payload"]["config"] = {"greeting": "hi"}
        self.one(frame(json.dumps(init).encode()), reply=False)
        change = tp.make_envelope("config", {"type": "config", "action": "set",
                                             "config": {"greeting": "no"}}, "h1")
        self.assertIsNone(self.one_or_none(tp.encode_frame(change)))
        req = json.loads(vector("host-http-request.json").decode())
        req["payload"]["payload"]["path"] = "/config"
        msg = self.one(frame(json.dumps(req).encode()), reply=True)
        self.assertEqual(json.loads(msg["payload"]["body"]), {"greeting": "hi"})
        self.one(frame(vector("host-shutdown.json")), reply=False)
        self.thread.join(WAIT_S)
        self.assertEqual(self.code, [0])

    def one_or_none(self, data):
        """Send one frame, close our side; the frame the plugin wrote back, or None at EOF."""
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(WAIT_S)
        c.connect(self.path)
        try:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            try:
                return tp.read_message(c)
            except CleanEOF:
                return None
        finally:
            c.close()

    def test_connection_without_a_frame_before_init_is_not_the_end(self):
        # Toru's host opens one connection without a frame before init to a 1.0 plugin.
        self.one(b"", reply=False)
        self.one(frame(vector("host-init.json")), reply=False)
        msg = self.one(frame(vector("host-http-request.json")), reply=True)
        self.assertEqual((msg["type"], msg["payload"]["status"]), ("http", 200))
        self.one(frame(vector("host-shutdown.json")), reply=False)
        self.thread.join(WAIT_S)
        self.assertEqual(self.code, [0])


if __name__ == "__main__":
    unittest.main()
