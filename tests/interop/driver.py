#!/usr/bin/env python3
"""Host-side interop driver: plays the Toru host against one plugin executable, from PROTOCOL.md.

Usage: ``driver.py [--mode 1.1|1.0|legacy-host] PLUGIN_BINARY`` or ``driver.py --mode host TORU``

Written against ``toru-plugin-api/PROTOCOL.md`` alone; it does not import any SDK, so it tests
SDKs (Python and Rust) and hand-written plugins the same way. It runs ``--metadata`` and checks
it, starts the plugin as the host does (cleared environment, ``TORU_PLUGIN_SOCKET`` in a private
temp dir, stdin ``/dev/null``), then:

- ``--mode 1.1`` (the example plugins ``hello-python`` and ``hello-rust``): one persistent
  connection; init → ready; three concurrent HTTP requests (``/sleep`` must be answered after
  ``/``, which proves concurrency without timing thresholds); a heartbeat while a slow request
  runs; KV through the plugin while this driver serves the plugin's ``kv`` requests from a dict;
  an unknown type and an unknown action (→ ``error``/``unsupported``); new settings in a
  ``config`` message (the ``greeting`` the examples show on ``GET /``: ``ok``, then a refused
  empty one → ``error``, the previous greeting kept); ``/bundle.js``; a 404;
  shutdown → ``shutdown_ack`` → exit status 0.
- ``--mode 1.0`` (``tests/plugins/legacy10.binary``): one frame per connection, only 1.0 frames
  shaped like ``tests/vectors``: a first connection closed without a frame (as Toru's host does),
  init, ``GET /`` (documented reply form), ``GET /legacy-form``
  (legacy Rust SDK form), ``GET /echo?q=1`` (query kept in ``path``), shutdown → exit status 0.
- ``--mode legacy-host`` (the example plugins again): the 1.0 sequence above as a 1.0 host
  would send it to any plugin (no ``protocol`` in init, one frame per connection), which
  exercises an SDK's fallback for old hosts: ``GET /``, ``/echo?q=1``, a 404, shutdown.

- ``--mode host``: the other way round, plugins played against the real host; see
  ``against_host.py``.

Every wait has a deadline. Prints one line per check and finally ``interop: N passed, M failed``;
exits 1 if anything failed (or a fatal error stopped the run), 0 otherwise.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone

METADATA_TIMEOUT_S = 5.0
METADATA_MAX_BYTES = 64 * 1024
SOCKET_TIMEOUT_S = 2.0
READY_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 5.0
MAX_FRAME_LEN = 8 * 1024 * 1024
MAX_CONTROL_FRAME_LEN = 1024 * 1024
SLEEP_MS = 300

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ROUTE_RE = re.compile(r"^/[A-Za-z0-9._-]+$")
RFC3339_RE = re.compile(
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
PLUGIN_TYPES = ("lifecycle", "http", "kv", "heartbeat", "log", "error", "config")
LOG_LEVELS = ("error", "warn", "info", "debug", "trace")
ERROR_CODES = ("bad_request", "unsupported", "not_found", "too_large", "quota_exceeded", "busy",
               "unavailable", "internal")


class Fatal(Exception):
    """A failure after which the run cannot go on (timeout, closed connection, bad frame)."""


class Checks:
    """Counts and prints checks."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print("ok    %s" % what)
        else:
            self.failed += 1
            print("FAIL  %s%s" % (what, (": " + detail) if detail else ""))
        sys.stdout.flush()
        return ok

    def equal(self, actual, expected, what):
        return self.check(actual == expected, what, "expected %r, got %r" % (expected, actual))


def now():
    return datetime.now(timezone.utc).isoformat()


def envelope(type_, payload, request_id=None):
    return {"type": type_, "timestamp": now(), "request_id": request_id, "payload": payload}


# --------------------------------------------------------------------------------------------
# Framing (PROTOCOL.md §2)
# --------------------------------------------------------------------------------------------


class Conn:
    """A connection on a Unix stream socket, with deadline-bounded reads: a client connection to
    the plugin's socket, or (``sock``) one the plugin side accepted (``against_host.py``)."""

    def __init__(self, path, deadline, sock=None):
        if sock is not None:
            self.sock = sock
            return
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self.sock.connect(path)
                return
            except BlockingIOError:
                # The plugin's listen backlog is full (a 1.0 plugin serves one connection at a
                # time; the host retries the same way). Nothing signals room: retry until the
                # deadline.
                self.sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.001)

    def send(self, message):
        body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self.send_raw(struct.pack(">I", len(body)) + body)

    def send_raw(self, data):
        """Write bytes as they are (a frame built by hand, or a broken one on purpose)."""
        self.sock.settimeout(REPLY_TIMEOUT_S)
        self.sock.sendall(data)

    def _exact(self, n, deadline, what, clean_eof_ok):
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Fatal("timed out waiting for %s" % what)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(min(n - got, 65536))
            except socket.timeout:
                raise Fatal("timed out waiting for %s" % what)
            if not chunk:
                if got == 0 and clean_eof_ok:
                    return None
                raise Fatal("truncated frame while waiting for %s (%d of %d bytes)" % (what, got, n))
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def recv(self, deadline, what):
        """Read one frame; returns (message, size) or (None, 0) on a clean EOF."""
        header = self._exact(4, deadline, what, clean_eof_ok=True)
        if header is None:
            return None, 0
        (n,) = struct.unpack(">I", header)
        if n == 0:
            raise Fatal("empty frame from the plugin while waiting for %s" % what)
        if n > MAX_FRAME_LEN:
            raise Fatal("frame of %d bytes over the %d limit while waiting for %s"
                        % (n, MAX_FRAME_LEN, what))
        body = self._exact(n, deadline, what, clean_eof_ok=False)
        try:
            msg = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise Fatal("bad JSON from the plugin while waiting for %s: %s" % (what, e))
        if not isinstance(msg, dict):
            raise Fatal("frame is not a JSON object while waiting for %s" % what)
        return msg, n

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# The plugin process
# --------------------------------------------------------------------------------------------


class PluginProcess:
    """The plugin started as the host starts it, with its output collected line by line."""

    def __init__(self, binary, tmpdir):
        self.binary = binary
        self.socket_path = os.path.join(tmpdir, "p.sock")
        self.log_path = os.path.join(tmpdir, "plugin.log")
        self.lines = []
        self._lock = threading.Lock()
        env = {"TORU_PLUGIN_SOCKET": self.socket_path,
               "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen([binary], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, cwd=tmpdir)
        self._readers = [threading.Thread(target=self._pump, args=(s, n), daemon=True)
                         for s, n in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))]
        for t in self._readers:
            t.start()

    def _pump(self, stream, name):
        for raw in iter(stream.readline, b""):
            with self._lock:
                self.lines.append("%s: %s" % (name, raw.decode("utf-8", "replace").rstrip("\n")))

    def wait_for_socket(self):
        """Connect once the socket accepts connections (bounded by SOCKET_TIMEOUT_S)."""
        deadline = time.monotonic() + SOCKET_TIMEOUT_S
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Fatal("plugin exited with status %d before its socket appeared"
                            % self.proc.returncode)
            try:
                st = os.lstat(self.socket_path)
                if stat.S_ISSOCK(st.st_mode):
                    return Conn(self.socket_path, deadline)
            except OSError as e:
                last = e
            # No notification exists for "a socket appeared"; poll briefly, bounded by deadline.
            time.sleep(0.01)
        raise Fatal("socket %s did not appear within %.0f s (%s)"
                    % (self.socket_path, SOCKET_TIMEOUT_S, last))

    def connect(self, timeout=REPLY_TIMEOUT_S):
        return Conn(self.socket_path, time.monotonic() + timeout)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc.poll() is None:
            for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                if self.wait_exit(grace) is not None:
                    break
        for t in self._readers:
            t.join(1.0)

    def output_tail(self, n=40):
        with self._lock:
            return self.lines[-n:]


# --------------------------------------------------------------------------------------------
# Metadata (PROTOCOL.md §1.2)
# --------------------------------------------------------------------------------------------


def read_metadata(checks, binary, mode):
    try:
        out = subprocess.run([binary, "--metadata"], env={}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=METADATA_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Fatal("--metadata did not exit within %.0f s" % METADATA_TIMEOUT_S)
    if not checks.equal(out.returncode, 0, "--metadata exits 0"):
        raise Fatal("--metadata failed: %s" % out.stderr.decode("utf-8", "replace"))
    problems = []
    if len(out.stdout) > METADATA_MAX_BYTES:
        problems.append("output over 64 KiB")
    try:
        meta = json.loads(out.stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Fatal("--metadata output is not JSON: %s" % e)
    if not isinstance(meta, dict):
        raise Fatal("--metadata output is not a JSON object")
    if not (isinstance(meta.get("id"), str) and ID_RE.match(meta["id"])):
        problems.append("id %r" % (meta.get("id"),))
    name = meta.get("name")
    if not (isinstance(name, str) and 1 <= len(name) <= 99):
        problems.append("name %r" % (name,))
    if not isinstance(meta.get("version"), str):
        problems.append("version %r" % (meta.get("version"),))
    author = meta.get("author")
    if not (author is None or (isinstance(author, str) and len(author) < 100)):
        problems.append("author %r" % (author,))
    if not isinstance(meta.get("icon"), str):
        problems.append("icon %r" % (meta.get("icon"),))
    route = meta.get("route")
    if not (isinstance(route, str) and ROUTE_RE.match(route) and ".." not in route):
        problems.append("route %r" % (route,))
    checks.check(not problems, "metadata fields are valid", "; ".join(problems))
    if mode == "1.1":
        checks.equal(meta.get("protocol"), "1.1", "metadata announces protocol 1.1")
    else:
        checks.check("protocol" not in meta, "metadata has no protocol field (legacy 1.0)",
                     "got %r" % (meta.get("protocol"),))
    return meta


# --------------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------------


def decode_http_reply(payload):
    """(form, status, headers, body) from a documented or legacy-Rust-SDK reply payload."""
    if isinstance(payload.get("status"), int):
        return "documented", payload["status"], payload.get("headers") or {}, payload.get("body")
    inner = payload.get("payload")
    if isinstance(inner, dict) and isinstance(inner.get("body"), str):
        try:
            wrapped = json.loads(inner["body"])
        except ValueError:
            wrapped = None
        if isinstance(wrapped, dict) and isinstance(wrapped.get("status"), int):
            return ("legacy-rust", wrapped["status"], wrapped.get("headers") or {},
                    wrapped.get("body"))
    raise Fatal("http reply is in neither documented nor legacy form: %r" % (payload,))


def header(headers, name):
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


def json_body(body):
    try:
        return json.loads(body) if isinstance(body, str) else None
    except ValueError:
        return None


def http_request(rid, method, path, headers=None, body=None):
    return envelope("http", {"type": "http", "request_id": rid, "payload": {
        "method": method, "path": path, "headers": headers or {}, "body": body}}, rid)


# --------------------------------------------------------------------------------------------
# 1.1
# --------------------------------------------------------------------------------------------


class Host11:
    """One persistent connection: sends requests, serves the plugin's KV, collects replies."""

    def __init__(self, checks, conn):
        self.checks = checks
        self.conn = conn
        self.inbox = []  # (arrival number, message)
        self.arrivals = 0
        self.frames = 0
        self.envelope_problems = []
        self.kv_store = {}
        self.kv_log = []  # (action, payload)
        self.kv_problems = []
        self.logs = []
        self.next_id = 0

    def rid(self):
        self.next_id += 1
        return "h%d" % self.next_id

    def send(self, msg):
        self.conn.send(msg)

    def _validate(self, msg, size):
        t = msg.get("type")
        rid = msg.get("request_id")
        p = msg.get("payload")
        where = "%s frame %r" % (t, rid)
        if t not in PLUGIN_TYPES:
            self.envelope_problems.append("unknown type %r" % (t,))
        if not (isinstance(msg.get("timestamp"), str) and RFC3339_RE.match(msg["timestamp"])):
            self.envelope_problems.append("%s: timestamp %r" % (where, msg.get("timestamp")))
        if not (rid is None or (isinstance(rid, str) and 1 <= len(rid.encode()) <= 128)):
            self.envelope_problems.append("%s: request_id" % where)
        if not isinstance(p, dict):
            self.envelope_problems.append("%s: payload is not an object" % where)
            return False
        if t != "http" and p.get("type") != t:
            self.envelope_problems.append("%s: payload.type %r" % (where, p.get("type")))
        if t != "http" and size > MAX_CONTROL_FRAME_LEN:
            self.envelope_problems.append("%s: control frame of %d bytes" % (where, size))
        return True

    def wait_for(self, pred, what, timeout=REPLY_TIMEOUT_S):
        """Return the first message matching pred, serving KV and logs meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (n, m) in enumerate(self.inbox):
                if pred(m):
                    del self.inbox[i]
                    return n, m
            msg, size = self.conn.recv(deadline, what)
            if msg is None:
                raise Fatal("plugin closed the connection while waiting for %s" % what)
            self.frames += 1
            if not self._validate(msg, size):
                continue
            if msg.get("type") == "kv":
                self._serve_kv(msg)
            elif msg.get("type") == "log":
                p = msg["payload"]
                if p.get("level") not in LOG_LEVELS or not isinstance(p.get("message"), str):
                    self.envelope_problems.append("bad log frame %r" % (p,))
                self.logs.append(p)
            else:
                self.arrivals += 1
                self.inbox.append((self.arrivals, msg))

    def reply_to(self, rid, what, timeout=REPLY_TIMEOUT_S):
        return self.wait_for(lambda m: m.get("request_id") == rid and m.get("type") != "kv",
                             what, timeout)

    def _serve_kv(self, msg):
        rid, p = msg.get("request_id"), msg["payload"]
        action = p.get("action")
        problem = None
        if not (isinstance(rid, str) and re.match(r"^p\d+$", rid)):
            problem = "request_id %r is not p<n>" % (rid,)
        key = p.get("key")
        key_ok = isinstance(key, str) and 1 <= len(key.encode()) <= 256
        if action in ("get", "set", "delete") and not key_ok:
            problem = "key %r" % (key,)
        if action == "set" and not (isinstance(p.get("value"), str)
                                    and len(p["value"].encode()) <= 64 * 1024):
            problem = "value %r" % (p.get("value"),)
        if action == "list":
            if not isinstance(p.get("prefix", ""), str):
                problem = "prefix %r" % (p.get("prefix"),)
            if p.get("start_after") is not None and not isinstance(p.get("start_after"), str):
                problem = "start_after %r" % (p.get("start_after"),)
            if p.get("limit") is not None and not (isinstance(p["limit"], int) and p["limit"] > 0):
                problem = "limit %r" % (p.get("limit"),)
        if action not in ("get", "set", "delete", "list"):
            problem = "action %r" % (action,)
        self.kv_log.append((action, p))
        if problem:
            self.kv_problems.append(problem)
            code = "unsupported" if action not in ("get", "set", "delete", "list") else "bad_request"
            if isinstance(rid, str):
                self.send(envelope("error", {"type": "error", "code": code, "message": problem},
                                   rid))
            return
        if action == "get":
            reply = {"type": "kv", "action": "get", "key": key, "value": self.kv_store.get(key)}
        elif action == "set":
            self.kv_store[key] = p["value"]
            reply = {"type": "kv", "action": "set", "key": key}
        elif action == "delete":
            existed = self.kv_store.pop(key, None) is not None
            reply = {"type": "kv", "action": "delete", "key": key, "existed": existed}
        else:
            prefix = p.get("prefix") or ""
            after = p.get("start_after")
            limit = min(p.get("limit") or 1000, 1000)
            keys = sorted((k for k in self.kv_store if k.startswith(prefix)),
                          key=lambda k: k.encode())
            if after is not None:
                keys = [k for k in keys if k.encode() > after.encode()]
            reply = {"type": "kv", "action": "list", "keys": keys[:limit],
                     "truncated": len(keys) > limit}
        self.send(envelope("kv", reply, rid))

    def http(self, method, path, headers=None, body=None, what=None):
        """Send one request and wait for its reply; returns (form, status, headers, body)."""
        rid = self.rid()
        self.send(http_request(rid, method, path, headers, body))
        return self.http_reply(rid, what or "%s %s" % (method, path))

    def http_reply(self, rid, what):
        _, msg = self.reply_to(rid, what)
        if msg.get("type") == "error":
            raise Fatal("%s answered with error %r" % (what, msg.get("payload")))
        if msg.get("type") != "http":
            raise Fatal("%s answered with a %r frame" % (what, msg.get("type")))
        return decode_http_reply(msg["payload"])


def run_11(checks, meta, plugin):
    c = checks
    conn = plugin.wait_for_socket()
    c.check(True, "socket appeared and accepts a connection")
    host = Host11(c, conn)
    instance_id = str(uuid.uuid4())

    # init -> ready
    rid = host.rid()
    host.send(envelope("lifecycle", {
        "type": "lifecycle", "action": "init", "instance_id": instance_id,
        "plugin_socket": plugin.socket_path, "log_path": plugin.log_path, "protocol": "1.1",
        "heartbeat_interval_ms": 5000, "max_frame_len": MAX_FRAME_LEN, "config": {}}, rid))
    _, msg = host.reply_to(rid, "ready", READY_TIMEOUT_S)
    c.check(msg.get("type") == "lifecycle" and msg["payload"].get("action") == "ready",
            "init is answered with lifecycle/ready (same request_id)", repr(msg))

    # three requests in flight on one connection
    expected_message = "Hello from %s!" % meta["name"]
    r_sleep, r_index, r_echo = host.rid(), host.rid(), host.rid()
    echo_headers = {"Accept": "application/json", "X-Toru-User": "admin", "X-Custom": "a, b"}
    host.send(http_request(r_sleep, "GET", "/sleep?ms=%d" % SLEEP_MS))
    host.send(http_request(r_index, "GET", "/"))
    host.send(http_request(r_echo, "GET", "/echo?x=1", echo_headers, None))
    order = {}
    replies = {}
    for r, what in ((r_sleep, "GET /sleep"), (r_index, "GET /"), (r_echo, "GET /echo")):
        n, msg = host.reply_to(r, what)
        order[r] = n
        replies[r] = msg
    c.check(all(replies[r].get("type") == "http" for r in replies),
            "three concurrent requests are each answered with an http reply matched by id",
            repr([replies[r].get("type") for r in replies]))
    c.check(order[r_index] < order[r_sleep],
            "GET / is answered before the earlier GET /sleep (requests run concurrently)",
            "arrival order %r" % order)
    c.check(all("status" in replies[r]["payload"] for r in replies),
            "1.1 replies use the documented form", repr([replies[r]["payload"] for r in replies]))

    form, status, headers, body = decode_http_reply(replies[r_index]["payload"])
    j = json_body(body) or {}
    c.check(status == 200 and (header(headers, "Content-Type") or "").startswith("application/json")
            and j.get("message") == expected_message and j.get("instance_id") == instance_id,
            "GET / -> 200 JSON {message: %r, instance_id: init's}" % expected_message,
            "status %r headers %r body %r" % (status, headers, body))

    form, status, headers, body = decode_http_reply(replies[r_echo]["payload"])
    j = json_body(body) or {}
    c.check(status == 200 and j.get("method") == "GET" and j.get("path") == "/echo?x=1"
            and j.get("headers") == echo_headers and j.get("body") is None,
            "GET /echo?x=1 echoes method, path with query, headers and body",
            "status %r body %r" % (status, body))

    form, status, headers, body = decode_http_reply(replies[r_sleep]["payload"])
    c.check(status == 200 and (json_body(body) or {}).get("slept_ms") == SLEEP_MS,
            "GET /sleep?ms=%d -> {slept_ms: %d}" % (SLEEP_MS, SLEEP_MS),
            "status %r body %r" % (status, body))

    # heartbeat while a slow handler runs
    r_slow, r_ping = host.rid(), host.rid()
    host.send(http_request(r_slow, "GET", "/sleep?ms=%d" % SLEEP_MS))
    host.send(envelope("heartbeat", {"type": "heartbeat", "action": "ping", "seq": 7}, r_ping))
    n_pong, pong = host.reply_to(r_ping, "pong")
    n_slow, slow = host.reply_to(r_slow, "GET /sleep (during ping)")
    c.check(pong.get("type") == "heartbeat" and pong["payload"].get("action") == "pong"
            and pong["payload"].get("seq") == 7,
            "ping (seq 7) -> pong with the same seq and request_id", repr(pong))
    c.check(n_pong < n_slow, "pong is sent while a slow handler is still running",
            "pong #%d, sleep reply #%d" % (n_pong, n_slow))

    # KV through the plugin; this driver is the store
    value = "v\u00e9 1"
    form, status, headers, body = host.http("PUT", "/kv/a", {"Content-Type": "text/plain"}, value)
    sets = [p for a, p in host.kv_log if a == "set"]
    c.check(status == 200 and json_body(body) == {"key": "a", "value": value}
            and host.kv_store.get("a") == value and sets and sets[-1].get("key") == "a",
            "PUT /kv/a -> plugin sends kv set -> 200 {key, value}",
            "status %r body %r store %r" % (status, body, host.kv_store))
    form, status, headers, body = host.http("GET", "/kv/a")
    c.check(status == 200 and json_body(body) == {"key": "a", "value": value},
            "GET /kv/a -> kv get -> 200 {key, value}", "status %r body %r" % (status, body))
    form, status, headers, body = host.http("GET", "/kv/missing")
    c.check(status == 404 and (json_body(body) or {}).get("error") == "not_found",
            "GET /kv/missing -> 404 {error: not_found}", "status %r body %r" % (status, body))
    form, status, headers, body = host.http("GET", "/kv?prefix=")
    c.check(status == 200 and json_body(body) == {"keys": ["a"]}
            and any(a == "list" for a, _ in host.kv_log),
            "GET /kv?prefix= -> kv list -> 200 {keys: [a]}", "status %r body %r" % (status, body))
    form, status, headers, body = host.http("DELETE", "/kv/a")
    c.check(status == 200 and json_body(body) == {"key": "a", "existed": True}
            and "a" not in host.kv_store,
            "DELETE /kv/a -> kv delete -> 200 {key, existed: true}",
            "status %r body %r" % (status, body))
    counters = []
    for _ in range(2):
        form, status, headers, body = host.http("POST", "/counter")
        counters.append((status, json_body(body)))
    form, status, headers, body = host.http("GET", "/counter")
    counters.append((status, json_body(body)))
    c.check(counters == [(200, {"counter": 1}), (200, {"counter": 2}), (200, {"counter": 2})]
            and host.kv_store.get("counter") == "2",
            "POST /counter twice, GET /counter -> 1, 2, 2 (stored in the host's KV)",
            "%r store %r" % (counters, host.kv_store))
    c.check(not host.kv_problems and len(host.kv_log) >= 7,
            "every kv request from the plugin is well-formed (%d requests)" % len(host.kv_log),
            "; ".join(host.kv_problems) or "only %d kv requests" % len(host.kv_log))

    # unknown type and unknown action
    r_bogus = host.rid()
    host.send(envelope("bogus", {"type": "bogus"}, r_bogus))
    _, msg = host.reply_to(r_bogus, "error for an unknown type")
    c.check(msg.get("type") == "error" and msg["payload"].get("code") == "unsupported",
            "unknown type with request_id -> error/unsupported", repr(msg))
    r_act = host.rid()
    host.send(envelope("lifecycle", {"type": "lifecycle", "action": "reboot"}, r_act))
    _, msg = host.reply_to(r_act, "error for an unknown action")
    c.check(msg.get("type") == "error" and msg["payload"].get("code") == "unsupported",
            "unknown lifecycle action with request_id -> error/unsupported", repr(msg))

    # settings: a new greeting is applied, an empty one refused (the previous one stays)
    def configure(config, what):
        r = host.rid()
        host.send(envelope("config", {"type": "config", "action": "set", "config": config}, r))
        return host.reply_to(r, what)[1]

    msg = configure({"greeting": "Howdy"}, "config/ok")
    c.check(msg.get("type") == "config" and msg["payload"].get("action") == "ok",
            "config {greeting: Howdy} -> config/ok (same request_id)", repr(msg))
    form, status, headers, body = host.http("GET", "/")
    c.check(status == 200 and (json_body(body) or {}).get("message") == "Howdy from %s!"
            % meta["name"], "GET / after config -> the new greeting",
            "status %r body %r" % (status, body))
    msg = configure({"greeting": ""}, "error for an empty greeting")
    c.check(msg.get("type") == "error" and msg["payload"].get("code") == "bad_request"
            and "greeting" in msg["payload"].get("message", ""),
            "config {greeting: ''} -> error/bad_request naming the greeting", repr(msg))
    form, status, headers, body = host.http("GET", "/")
    c.check(status == 200 and (json_body(body) or {}).get("message") == "Howdy from %s!"
            % meta["name"], "GET / after a refused config -> the previous greeting",
            "status %r body %r" % (status, body))

    # bundle and 404
    form, status, headers, body = host.http("GET", "/bundle.js")
    c.check(status == 200
            and (header(headers, "Content-Type") or "").startswith("application/javascript")
            and isinstance(body, str) and "ToruPlugins" in body and meta["id"] in body,
            "GET /bundle.js -> 200 application/javascript registering window.ToruPlugins[id]",
            "status %r headers %r" % (status, headers))
    form, status, headers, body = host.http("GET", "/no/such/thing?x=1")
    j = json_body(body) or {}
    c.check(status == 404 and j.get("error") == "not_found" and "path" in j,
            "unknown path -> 404 {error: not_found, path}", "status %r body %r" % (status, body))

    # shutdown
    r_stop = host.rid()
    host.send(envelope("lifecycle", {"type": "lifecycle", "action": "shutdown"}, r_stop))
    _, msg = host.reply_to(r_stop, "shutdown_ack", SHUTDOWN_TIMEOUT_S)
    c.check(msg.get("type") == "lifecycle" and msg["payload"].get("action") == "shutdown_ack",
            "shutdown -> lifecycle/shutdown_ack (same request_id)", repr(msg))
    code = plugin.wait_exit(SHUTDOWN_TIMEOUT_S)
    c.equal(code, 0, "plugin exits with status 0 after shutdown_ack")
    c.check(not host.envelope_problems,
            "every frame from the plugin has a valid envelope (%d frames, %d log frames)"
            % (host.frames, len(host.logs)), "; ".join(host.envelope_problems))
    conn.close()


# --------------------------------------------------------------------------------------------
# 1.0
# --------------------------------------------------------------------------------------------


def one_message(plugin, msg, expect_reply, what):
    """1.0: connect, write one frame, read the reply if one is due, close."""
    conn = plugin.connect()
    try:
        conn.send(msg)
        if not expect_reply:
            return None
        reply, _ = conn.recv(time.monotonic() + REPLY_TIMEOUT_S, what)
        if reply is None:
            raise Fatal("plugin closed the connection without answering %s" % what)
        return reply
    finally:
        conn.close()


def run_10(checks, meta, plugin, legacy_host=False):
    """1.0 framing and connection pattern. ``legacy_host``: the plugin announces 1.1 but is
    driven like the original host would (checks generic to the example plugins)."""
    c = checks
    probe = plugin.wait_for_socket()
    c.check(True, "socket appeared and accepts a connection")
    # Toru's host closes its first connection to a 1.0 plugin without a frame (PROTOCOL.md §4):
    # the plugin must accept the next one.
    probe.close()
    instance_id = str(uuid.uuid4())
    conn = plugin.connect()
    # init exactly like tests/vectors/host-init.json: request_id null, no protocol, no reply
    try:
        conn.send(envelope("lifecycle", {"type": "lifecycle", "action": "init",
                                         "instance_id": instance_id,
                                         "plugin_socket": plugin.socket_path,
                                         "log_path": plugin.log_path}))
    finally:
        conn.close()

    def get(path, headers=None):
        rid = str(uuid.uuid4())
        reply = one_message(plugin, http_request(rid, "GET", path, headers), True, "GET " + path)
        ok = reply.get("type") == "http" and reply.get("request_id") == rid \
            and isinstance(reply.get("payload"), dict)
        if not ok:
            raise Fatal("GET %s: reply is not an http frame with the request's id: %r"
                        % (path, reply))
        return decode_http_reply(reply["payload"])

    form, status, headers, body = get("/", {"Accept": "application/json",
                                            "Host": "toru.local:8080"})
    j = json_body(body) or {}
    if legacy_host:
        expected = "Hello from %s!" % meta["name"]
        c.check(form == "documented" and status == 200 and j.get("message") == expected
                and j.get("instance_id") == instance_id,
                "under a 1.0 host, GET / -> documented form, 200 {message, instance_id}",
                "form %r status %r body %r" % (form, status, body))
    else:
        c.check(form == "documented" and status == 200
                and j.get("message") == "Hello from legacy 1.0!",
                "1.0 GET / -> documented form, 200 {message: Hello from legacy 1.0!}",
                "form %r status %r body %r" % (form, status, body))
        form, status, headers, body = get("/legacy-form")
        c.check(form == "legacy-rust" and status == 200
                and (header(headers, "Content-Type") or "").startswith("application/json")
                and isinstance(json_body(body), dict),
                "1.0 GET /legacy-form -> legacy Rust SDK form decoded to 200 + JSON body",
                "form %r status %r headers %r body %r" % (form, status, headers, body))
    form, status, headers, body = get("/echo?q=1", {"X-Toru-User": "admin"})
    j = json_body(body) or {}
    c.check(status == 200 and j.get("path") == "/echo?q=1" and j.get("method") == "GET"
            and j.get("headers") == {"X-Toru-User": "admin"},
            "1.0 GET /echo?q=1 -> echo keeps the query in path",
            "status %r body %r" % (status, body))
    form, status, headers, body = get("/nope")
    c.equal(status, 404, "1.0 unknown path -> 404")
    one_message(plugin, envelope("lifecycle", {"type": "lifecycle", "action": "shutdown"}),
                False, "shutdown")
    c.equal(plugin.wait_exit(SHUTDOWN_TIMEOUT_S), 0, "plugin exits with status 0 on 1.0 shutdown")


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("1.1", "1.0", "legacy-host", "host"), default="1.1",
                    help="1.1: persistent connection (default); 1.0: a legacy-only plugin; "
                         "legacy-host: a 1.1 plugin driven like the original 1.0 host; "
                         "host: play plugins against the real host (against_host.py)")
    ap.add_argument("plugin", help="the plugin executable (with --mode host: the toru binary)")
    args = ap.parse_args()
    binary = os.path.abspath(args.plugin)
    checks = Checks()
    tmpdir = tempfile.mkdtemp(dir="/tmp", prefix="ti")
    plugin = None
    fatal = None
    if args.mode == "host":
        import against_host  # imports this module's helpers
        try:
            against_host.run(checks, binary, tmpdir)
        except Fatal as e:
            checks.check(False, "run completed", str(e))
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        print("interop: %d passed, %d failed" % (checks.passed, checks.failed))
        return 1 if checks.failed else 0
    try:
        meta = read_metadata(checks, binary, "1.1" if args.mode == "legacy-host" else args.mode)
        plugin = PluginProcess(binary, tmpdir)
        if args.mode == "1.1":
            run_11(checks, meta, plugin)
        else:
            run_10(checks, meta, plugin, legacy_host=args.mode == "legacy-host")
    except Fatal as e:
        fatal = str(e)
    except (OSError, KeyError, TypeError, AttributeError) as e:
        fatal = "%s: %s" % (type(e).__name__, e)
    finally:
        if plugin is not None:
            plugin.kill()
        shutil.rmtree(tmpdir, ignore_errors=True)
    if fatal:
        checks.check(False, "run completed", fatal)
    if checks.failed and plugin is not None:
        print("--- plugin output (last lines) ---")
        for line in plugin.output_tail():
            print("    " + line)
    print("interop: %d passed, %d failed" % (checks.passed, checks.failed))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
