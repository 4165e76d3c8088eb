"""Toru plugin SDK for Python: one stdlib-only module implementing protocol 1.1 (and 1.0).

A Toru plugin is an executable ``<anything>.binary`` that the host supervises. The host runs
``<plugin> --metadata`` to discover it, then starts it with ``TORU_PLUGIN_SOCKET=<path>``; the
plugin listens on that Unix socket, the host connects once and both sides exchange
length-prefixed JSON frames (see ``toru-plugin-api/PROTOCOL.md``, the normative specification).
This module does all of that; a plugin only declares its metadata and its handlers::

    #!/usr/bin/env python3
    import os, sys
    sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
    from toru_plugin import ConfigError, Plugin, Response

    plugin = Plugin(id="hello-python", name="Hello World (Python)", version="0.1.0",
                    author="ToruAI", icon="\\U0001F40D", route="/hello-python")

    @plugin.on_init
    def init(ctx):
        ctx.log("info", "starting on instance " + ctx.instance_id)

    @plugin.on_config
    def settings(ctx, config):                                       # ctx.config is config now
        if config.get("greeting") == "":
            raise ConfigError("greeting must not be empty")          # refused: ctx.config reverts

    @plugin.route("GET", "/")
    def index(req, ctx):
        return {"message": "Hello", "instance_id": ctx.instance_id}   # dict -> JSON, 200

    @plugin.route("PUT", "/kv/{key}")
    def put(req, ctx):
        ctx.kv.set(req.params["key"], req.text or "")                # the host's KV store
        return Response.json({"stored": req.params["key"]}, status=201)

    @plugin.on_shutdown
    def bye(ctx):
        ctx.log("info", "bye")

    if __name__ == "__main__":
        plugin.run()

Layout of this module, following the data: framing (:func:`read_frame`, :func:`encode_frame`)
→ envelope helpers (:func:`make_envelope`, :func:`is_rfc3339`) → the user-facing objects
(:class:`Request`, :class:`Response`, :class:`Context`, :class:`KVClient`) → the connection
engine (``_Session``) → :class:`Plugin` (registration, ``--metadata``, binding the socket).

Threading model: the thread that calls :meth:`Plugin.run` owns the socket's read side and never
runs user code, so heartbeats are answered and KV replies delivered while handlers work. ``init``,
every HTTP handler and the shutdown hooks run in their own daemon threads; writes are serialised
by one lock, so frames are never interleaved. Handlers may block (``time.sleep``, KV calls).

Settings: ``ctx.config`` is the plugin's settings object (``{}`` when it has none), from ``init``
and then from each ``config`` message the plugin accepted; :meth:`Plugin.on_config` hooks run for
each one (one at a time, in order) and may refuse it by raising. A 1.0 host restarts the plugin
instead.

Protocol versions: the metadata announces ``"protocol": "1.1"``. If the host's first ``init``
has no ``protocol`` field (an original 1.0 host), the plugin behaves like a 1.0 plugin: every
connection carries one message, handlers run one at a time, KV and ``log`` frames are
unavailable (``ctx.log`` writes to stderr instead).

Python 3.9 or newer, standard library only.
"""

import base64
import binascii
import itertools
import json
import os
import queue
import re
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from collections import abc
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union
from urllib.parse import parse_qs, unquote

__all__ = [
    "PROTOCOL_VERSION",
    "MAX_FRAME_LEN",
    "MAX_CONTROL_FRAME_LEN",
    "MAX_REQUEST_ID_LEN",
    "MAX_KV_KEY_LEN",
    "MAX_KV_VALUE_LEN",
    "MAX_KV_IN_FLIGHT",
    "SOCKET_ENV",
    "LOG_LEVELS",
    "ToruError",
    "FrameError",
    "CleanEOF",
    "TruncatedFrame",
    "OversizedFrame",
    "EmptyFrame",
    "BadJSON",
    "KVError",
    "KVTimeout",
    "MQTTError",
    "HTTPError",
    "ConfigError",
    "read_frame",
    "read_message",
    "encode_frame",
    "decode_frame_body",
    "make_envelope",
    "now_rfc3339",
    "is_rfc3339",
    "Headers",
    "Request",
    "Response",
    "Context",
    "KVClient",
    "KVPage",
    "MQTTClient",
    "Plugin",
    "bind_socket",
]

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

#: The protocol version this SDK speaks and announces in ``--metadata``.
PROTOCOL_VERSION = "1.1"
#: Default limit for any frame, in bytes (both directions; the host's limit comes in ``init``).
MAX_FRAME_LEN = 8 * 1024 * 1024
#: Limit for frames whose ``type`` is not ``http``, in bytes.
MAX_CONTROL_FRAME_LEN = 1024 * 1024
#: Longest accepted ``request_id``, in bytes.
MAX_REQUEST_ID_LEN = 128
#: Longest KV key, in bytes (UTF-8).
MAX_KV_KEY_LEN = 256
#: Longest KV value, in bytes (UTF-8).
MAX_KV_VALUE_LEN = 64 * 1024
#: KV requests the plugin may have in flight to the host.
MAX_KV_IN_FLIGHT = 16
#: Most keys one ``list`` reply carries (the host caps ``limit`` here).
MAX_KV_LIST_LIMIT = 1000
#: Longest payload a plugin may publish through the host's MQTT bridge, in bytes.
MAX_MQTT_PAYLOAD_LEN = 64 * 1024
#: The environment variable holding the socket path.
SOCKET_ENV = "TORU_PLUGIN_SOCKET"
#: Levels accepted by ``log`` frames, most severe first.
LOG_LEVELS = ("error", "warn", "info", "debug", "trace")

#: How long a KV call waits for the host's reply by default, in seconds.
KV_TIMEOUT_S = 30.0
#: How long shutdown hooks may run before ``shutdown_ack`` is sent anyway, in seconds.
SHUTDOWN_HOOK_TIMEOUT_S = 3.0
#: Longest ``log``/``error`` message sent, in characters (longer ones are cut).
MAX_LOG_MESSAGE_CHARS = 64 * 1024
#: HTTP requests handled at once; more in flight are answered with ``error``/``busy``.
MAX_CONCURRENT_REQUESTS = 64

_HEADER = struct.Struct(">I")
# Under a 1.0 host, failures of HTTP requests are answered as HTTP replies with these statuses.
_LEGACY_STATUS = {"bad_request": 400, "not_found": 404, "too_large": 413, "busy": 503,
                  "unavailable": 503, "internal": 500}
_READ_CHUNK = 64 * 1024
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ROUTE_RE = re.compile(r"^/[A-Za-z0-9._-]{1,64}$")
_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$"
)

# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class ToruError(Exception):
    """Base class of every exception this module raises on purpose."""


class FrameError(ToruError):
    """A frame could not be read or written. Subclasses tell the cases apart."""


class CleanEOF(FrameError):
    """The peer closed the connection between two frames (the normal end of a connection)."""


class TruncatedFrame(FrameError):
    """The stream ended inside a frame's length prefix or body; the connection is unusable.

    ``expected`` is how many bytes were wanted for the part being read, ``received`` how many came.
    """

    def __init__(self, part: str, expected: int, received: int) -> None:
        super().__init__(
            "truncated frame: stream ended after %d of %d %s bytes" % (received, expected, part)
        )
        #: ``"length"`` or ``"body"``.
        self.part = part
        #: Bytes wanted for that part.
        self.expected = expected
        #: Bytes received before the end of the stream.
        self.received = received


class OversizedFrame(FrameError):
    """A frame's length is over the limit. Raised before any buffer for the body is allocated.

    When reading, the connection is unusable afterwards (the body was not consumed).
    """

    def __init__(self, length: int, limit: int) -> None:
        super().__init__("frame of %d bytes is over the limit of %d bytes" % (length, limit))
        #: The announced (or encoded) length.
        self.length = length
        #: The limit it exceeded.
        self.limit = limit


class EmptyFrame(FrameError):
    """A frame announced a length of 0. The stream is still aligned; the next frame can be read."""

    def __init__(self) -> None:
        super().__init__("empty frame")


class BadJSON(FrameError):
    """A frame's body is not UTF-8 or not one JSON object. The stream is still aligned."""


class KVError(ToruError):
    """A KV call failed. ``code`` is the protocol's error code (``quota_exceeded``, ``busy``, …).

    Codes sent by the host are listed in PROTOCOL.md (``bad_request``, ``unsupported``,
    ``too_large``, ``quota_exceeded``, ``busy``, ``unavailable``, ``internal``). This SDK adds
    ``timeout`` (see :class:`KVTimeout`) and uses ``unavailable`` when the connection is gone or
    the host speaks 1.0, ``too_large``/``bad_request`` for arguments it refuses before sending.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__("%s: %s" % (code, message))
        #: The error code.
        self.code = code
        #: A human sentence.
        self.message = message


class KVTimeout(KVError):
    """The host did not answer a KV call in time (``code`` is ``"timeout"``)."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class MQTTError(KVError):
    """The host refused an MQTT request (``code``: ``unavailable`` when its bridge is off,
    ``bad_request`` for a topic outside the plugin's own, ``too_large``, ``busy``, …), or it did
    not answer in time (``timeout``). A subclass of :class:`KVError`: both are host requests
    answered with the same ``error`` frames."""


class HTTPError(ToruError):
    """Raise from a handler to answer with ``status``; ``body`` is a dict (JSON), str or bytes.

    Example: ``raise HTTPError(400, {"error": "bad_request", "message": "ms must be a number"})``.
    """

    def __init__(self, status: int, body: Any = None, headers: Optional[Mapping[str, str]] = None):
        super().__init__("HTTP %d" % status)
        #: The HTTP status code.
        self.status = status
        #: The response body.
        self.body = body
        #: Extra response headers.
        self.headers = dict(headers or {})

    def to_response(self) -> "Response":
        """The :class:`Response` this error stands for."""
        return Response(self.status, self.headers, self.body)


class ConfigError(ToruError):
    """Raise from an :meth:`Plugin.on_config` hook to refuse new settings.

    The host gets an ``error`` frame with ``code`` (default ``bad_request``) and ``message``, and
    reports the message; ``ctx.config`` keeps the previous settings. ``code="unsupported"`` asks
    the host to restart the plugin instead, which then gets the settings in ``init``.
    """

    def __init__(self, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        #: The error code sent to the host.
        self.code = code
        #: A human sentence.
        self.message = message


# ---------------------------------------------------------------------------------------------
# Framing: 4-byte big-endian length N, then N bytes of UTF-8 JSON (PROTOCOL.md §2)
# ---------------------------------------------------------------------------------------------


def _recv_function(stream: Any) -> Callable[[int], bytes]:
    """The ``n -> bytes`` read function of a socket (``recv``) or binary file (``read``)."""
    if hasattr(stream, "recv"):
        return stream.recv
    return stream.read


def _read_exact(read: Callable[[int], bytes], n: int, part: str, eof_is_clean: bool) -> bytes:
    """Read exactly ``n`` bytes, however the stream splits them.

    Raises :class:`CleanEOF` if the stream ends before the first byte and ``eof_is_clean``,
    :class:`TruncatedFrame` if it ends later.
    """
    chunks = []
    got = 0
    while got < n:
        chunk = read(min(n - got, _READ_CHUNK))
        if not chunk:
            if got == 0 and eof_is_clean:
                raise CleanEOF("connection closed")
            raise TruncatedFrame(part, n, got)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(stream: Any, max_len: int = MAX_FRAME_LEN) -> bytes:
    """Read one frame from ``stream`` (a socket or a binary file) and return its body bytes.

    The length is checked against ``max_len`` before the body is read or any buffer for it is
    allocated. Raises :class:`CleanEOF` (closed between frames), :class:`TruncatedFrame`
    (closed inside the length or body), :class:`OversizedFrame` (length over ``max_len``) or
    :class:`EmptyFrame` (length 0).
    """
    read = _recv_function(stream)
    header = _read_exact(read, _HEADER.size, "length", eof_is_clean=True)
    (length,) = _HEADER.unpack(header)
    if length == 0:
        raise EmptyFrame()
    if length > max_len:
        raise OversizedFrame(length, max_len)
    return _read_exact(read, length, "body", eof_is_clean=False)


def _reject_constant(name: str) -> Any:
    raise ValueError("%s is not JSON" % name)


def decode_frame_body(body: bytes) -> Dict[str, Any]:
    """Decode a frame body: strict UTF-8, one JSON object. Raises :class:`BadJSON` otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadJSON("frame is not UTF-8: %s" % e) from e
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise BadJSON("frame is not JSON: %s" % e) from e
    if not isinstance(value, dict):
        raise BadJSON("frame is JSON but not an object")
    return value


def read_message(stream: Any, max_len: int = MAX_FRAME_LEN) -> Dict[str, Any]:
    """:func:`read_frame` followed by :func:`decode_frame_body`."""
    return decode_frame_body(read_frame(stream, max_len))


def encode_frame(message: Mapping[str, Any], max_len: int = MAX_FRAME_LEN) -> bytes:
    """Encode ``message`` as one frame (length prefix + compact UTF-8 JSON).

    Raises :class:`OversizedFrame` if the JSON is longer than ``max_len`` bytes.
    """
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )
    if len(body) > max_len:
        raise OversizedFrame(len(body), max_len)
    return _HEADER.pack(len(body)) + body


# ---------------------------------------------------------------------------------------------
# Envelope (PROTOCOL.md §3)
# ---------------------------------------------------------------------------------------------


def now_rfc3339() -> str:
    """The current UTC time in RFC 3339, e.g. ``2025-12-30T12:00:01.123456+00:00``."""
    return datetime.now(timezone.utc).isoformat()


def is_rfc3339(value: Any) -> bool:
    """True if ``value`` is an RFC 3339 date-time string (any offset, fractional seconds)."""
    if not isinstance(value, str):
        return False
    m = _RFC3339_RE.match(value)
    if not m:
        return False
    month, day = int(m.group(2)), int(m.group(3))
    hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        return False
    if m.group(9) is not None and (int(m.group(9)) > 23 or int(m.group(10)) > 59):
        return False
    return True


def make_envelope(
    type_: str, payload: Mapping[str, Any], request_id: Optional[str] = None
) -> Dict[str, Any]:
    """Build a frame ``{type, timestamp, request_id, payload}`` stamped with the current time."""
    return {
        "type": type_,
        "timestamp": now_rfc3339(),
        "request_id": request_id,
        "payload": dict(payload),
    }


def _valid_request_id(rid: Any) -> bool:
    return rid is None or (
        isinstance(rid, str) and 1 <= len(rid.encode("utf-8")) <= MAX_REQUEST_ID_LEN
    )


# ---------------------------------------------------------------------------------------------
# HTTP: requests, responses, routing
# ---------------------------------------------------------------------------------------------


class Headers(abc.Mapping):
    """Read-only request headers with case-insensitive lookup (``h["content-type"]``).

    Iteration yields the names as the host sent them; :meth:`raw` returns a plain dict of them.
    """

    def __init__(self, headers: Optional[Mapping[str, str]] = None) -> None:
        self._raw = dict(headers or {})
        self._lower = {k.lower(): v for k, v in self._raw.items()}

    def __getitem__(self, name: str) -> str:
        return self._lower[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lower

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def raw(self) -> Dict[str, str]:
        """The headers as received, names in their original case."""
        return dict(self._raw)

    def __repr__(self) -> str:
        return "Headers(%r)" % self._raw


class Request:
    """One HTTP request forwarded by the host.

    Attributes: ``method`` (``"GET"``…), ``raw_path`` (the part of the URL after the plugin's
    route, query kept, exactly as sent), ``path`` (``raw_path`` without the query), ``query``
    (``{name: last value}``), ``query_all`` (``{name: [values]}``), ``headers``
    (:class:`Headers`), ``raw_body`` (the body string as on the wire, or ``None``),
    ``body_encoding`` (``None`` or ``"base64"``), ``params`` (path parameters of the matched
    route, percent-decoded) and ``request_id``.
    """

    def __init__(
        self,
        method: str,
        path: str,
        headers: Optional[Mapping[str, str]] = None,
        body: Optional[str] = None,
        body_encoding: Optional[str] = None,
        request_id: Optional[str] = None,
    ) -> None:
        self.method = method
        self.raw_path = path
        self.path, _, query_string = path.partition("?")
        self.query_string = query_string
        self.query_all = parse_qs(query_string, keep_blank_values=True)
        self.query = {k: v[-1] for k, v in self.query_all.items()}
        self.headers = Headers(headers)
        self.raw_body = body
        self.body_encoding = body_encoding
        self.request_id = request_id
        self.params = {}  # type: Dict[str, str]
        if body is not None and body_encoding == "base64":
            self._body = base64.b64decode(body.encode("ascii"), validate=True)  # type: Optional[bytes]
        elif body is not None:
            self._body = body.encode("utf-8")
        else:
            self._body = None

    @property
    def body(self) -> Optional[bytes]:
        """The body as bytes (base64 already decoded), or ``None`` if the request had none."""
        return self._body

    @property
    def text(self) -> Optional[str]:
        """The body as text (invalid UTF-8 replaced), or ``None`` if the request had none."""
        if self._body is None:
            return None
        if self.body_encoding != "base64":
            return self.raw_body
        return self._body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises :class:`HTTPError` 400 if it is missing or invalid."""
        if self._body is None:
            raise HTTPError(400, {"error": "bad_request", "message": "expected a JSON body"})
        try:
            return json.loads(self._body.decode("utf-8"))
        except ValueError as e:
            raise HTTPError(400, {"error": "bad_request", "message": "invalid JSON: %s" % e})

    def __repr__(self) -> str:
        return "Request(%s %s)" % (self.method, self.raw_path)


class Response:
    """An HTTP response: ``Response(status=200, headers=None, body=None)``.

    ``body`` may be ``None``, ``str`` (sent as text), ``bytes`` (sent as text if valid UTF-8,
    else base64 with ``body_encoding``), or a dict/list (sent as JSON with
    ``Content-Type: application/json`` unless a Content-Type is given). Handlers may also
    return a plain dict/list (JSON, 200), a str (text/plain, 200), bytes
    (application/octet-stream, 200), ``None`` (204) or a tuple ``(body, status)`` /
    ``(body, status, headers)``.
    """

    def __init__(
        self, status: int = 200, headers: Optional[Mapping[str, str]] = None, body: Any = None
    ) -> None:
        if not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError("HTTP status must be an int in 100..599, got %r" % (status,))
        self.status = status
        self.headers = dict(headers or {})
        self.body = body

    @classmethod
    def json(
        cls, data: Any, status: int = 200, headers: Optional[Mapping[str, str]] = None
    ) -> "Response":
        """A JSON response (``Content-Type: application/json``)."""
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return cls(status, h, json.dumps(data, ensure_ascii=False))

    @classmethod
    def text(
        cls,
        text: str,
        status: int = 200,
        content_type: str = "text/plain; charset=utf-8",
        headers: Optional[Mapping[str, str]] = None,
    ) -> "Response":
        """A text response with the given content type."""
        h = {"Content-Type": content_type}
        h.update(headers or {})
        return cls(status, h, text)

    @classmethod
    def binary(
        cls,
        data: bytes,
        status: int = 200,
        content_type: str = "application/octet-stream",
        headers: Optional[Mapping[str, str]] = None,
    ) -> "Response":
        """A binary response; sent base64-encoded on the wire when it is not UTF-8."""
        h = {"Content-Type": content_type}
        h.update(headers or {})
        return cls(status, h, bytes(data))

    def _with(self, status: Optional[int] = None,
              headers: Optional[Mapping[str, str]] = None) -> "Response":
        h = dict(self.headers)
        h.update(headers or {})
        return Response(self.status if status is None else status, h, self.body)

    def _has_header(self, name: str) -> bool:
        return any(k.lower() == name.lower() for k in self.headers)

    def to_payload(self, allow_base64: bool = True) -> Dict[str, Any]:
        """The documented reply payload ``{status, headers, body[, body_encoding]}``."""
        headers = {str(k): str(v) for k, v in self.headers.items()}
        body = self.body
        payload = {"status": self.status, "headers": headers}  # type: Dict[str, Any]
        if isinstance(body, (dict, list)):
            if not self._has_header("Content-Type"):
                headers["Content-Type"] = "application/json"
            body = json.dumps(body, ensure_ascii=False)
        if isinstance(body, (bytes, bytearray, memoryview)):
            raw = bytes(body)
            try:
                body = raw.decode("utf-8")
            except UnicodeDecodeError:
                if allow_base64:
                    payload["body_encoding"] = "base64"
                    body = base64.b64encode(raw).decode("ascii")
                else:  # 1.0 has no binary bodies
                    body = raw.decode("utf-8", errors="replace")
        elif body is not None and not isinstance(body, str):
            raise TypeError("response body must be str, bytes, dict, list or None")
        payload["body"] = body
        return payload

    def __repr__(self) -> str:
        return "Response(%d)" % self.status


def _to_response(result: Any) -> Response:
    """Turn whatever a handler returned into a :class:`Response`."""
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple):
        if len(result) == 2:
            return _to_response(result[0])._with(status=result[1])
        if len(result) == 3:
            return _to_response(result[0])._with(status=result[1], headers=result[2])
        raise TypeError("a handler may return (body, status) or (body, status, headers)")
    if result is None:
        return Response(204)
    if isinstance(result, (dict, list)):
        return Response.json(result)
    if isinstance(result, str):
        return Response.text(result)
    if isinstance(result, (bytes, bytearray)):
        return Response.binary(bytes(result))
    raise TypeError("handler returned %s; expected Response, dict, list, str, bytes or None"
                    % type(result).__name__)


_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")


def _compile_pattern(pattern: str) -> "re.Pattern[str]":
    """``/kv/{key}`` matches one segment, ``/files/{rest:path}`` the rest of the path."""
    if not pattern.startswith("/"):
        raise ValueError("route pattern must start with '/': %r" % pattern)
    out = []
    pos = 0
    for m in _PARAM_RE.finditer(pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        out.append("(?P<%s>%s)" % (m.group(1), ".+" if m.group(2) else "[^/]+"))
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(out) + "$")


class _Route(NamedTuple):
    methods: Optional[Tuple[str, ...]]  # None: any method
    pattern: str
    regex: Any
    handler: Callable[[Request, "Context"], Any]


# ---------------------------------------------------------------------------------------------
# Context and KV client
# ---------------------------------------------------------------------------------------------


class KVPage(NamedTuple):
    """One page of :meth:`KVClient.list`: ``keys`` in byte order, ``truncated`` if more follow."""

    keys: List[str]
    truncated: bool


class KVClient:
    """The host's key-value store, scoped to this plugin. Every call is one round trip.

    Calls block the calling thread (a handler or init), never the I/O loop; they raise
    :class:`KVError` (with the host's ``code``) when the host answers ``error``, and
    :class:`KVTimeout` when it does not answer within ``timeout`` seconds. At most
    ``MAX_KV_IN_FLIGHT`` calls are in flight; further callers wait for a slot.
    """

    def __init__(self, session: "Optional[_Session]") -> None:
        self._session = session

    def _call(self, payload: Dict[str, Any], timeout: Optional[float]) -> Dict[str, Any]:
        if self._session is None or self._session.legacy:
            raise KVError("unavailable", "the host speaks protocol 1.0, which has no KV store")
        return self._session.kv_call(payload, KV_TIMEOUT_S if timeout is None else timeout)

    @staticmethod
    def _check_key(key: str) -> None:
        if not isinstance(key, str):
            raise KVError("bad_request", "a key must be a str")
        n = len(key.encode("utf-8"))
        if n == 0:
            raise KVError("bad_request", "a key must not be empty")
        if n > MAX_KV_KEY_LEN:
            raise KVError("too_large", "key of %d bytes is over %d" % (n, MAX_KV_KEY_LEN))

    def get(self, key: str, timeout: Optional[float] = None) -> Optional[str]:
        """The value stored under ``key``, or ``None`` if there is none."""
        self._check_key(key)
        reply = self._call({"type": "kv", "action": "get", "key": key}, timeout)
        value = reply.get("value")
        if value is not None and not isinstance(value, str):
            raise KVError("bad_request", "host sent a non-string value")
        return value

    def set(self, key: str, value: str, timeout: Optional[float] = None) -> None:
        """Store ``value`` under ``key``; returns once the host has it on disk."""
        self._check_key(key)
        if not isinstance(value, str):
            raise KVError("bad_request", "a value must be a str")
        n = len(value.encode("utf-8"))
        if n > MAX_KV_VALUE_LEN:
            raise KVError("too_large", "value of %d bytes is over %d" % (n, MAX_KV_VALUE_LEN))
        self._call({"type": "kv", "action": "set", "key": key, "value": value}, timeout)

    def delete(self, key: str, timeout: Optional[float] = None) -> bool:
        """Delete ``key``; returns whether it existed."""
        self._check_key(key)
        reply = self._call({"type": "kv", "action": "delete", "key": key}, timeout)
        return bool(reply.get("existed", False))

    def list(
        self,
        prefix: str = "",
        start_after: Optional[str] = None,
        limit: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> KVPage:
        """One page of keys starting with ``prefix``, after ``start_after``, at most ``limit``.

        The host caps ``limit`` at 1000. Continue with ``start_after=page.keys[-1]`` while
        ``page.truncated``, or use :meth:`iter_keys`.
        """
        payload = {"type": "kv", "action": "list", "prefix": prefix}  # type: Dict[str, Any]
        if start_after is not None:
            payload["start_after"] = start_after
        if limit is not None:
            if not isinstance(limit, int) or limit < 1:
                raise KVError("bad_request", "limit must be a positive int")
            payload["limit"] = limit
        reply = self._call(payload, timeout)
        keys = reply.get("keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise KVError("bad_request", "host sent a list reply without a list of keys")
        return KVPage(keys, bool(reply.get("truncated", False)))

    def iter_keys(self, prefix: str = "", timeout: Optional[float] = None) -> Iterator[str]:
        """Every key starting with ``prefix``, in byte order, fetching pages as needed."""
        start_after = None  # type: Optional[str]
        while True:
            page = self.list(prefix, start_after, timeout=timeout)
            for key in page.keys:
                yield key
            if not page.truncated or not page.keys:
                return
            start_after = page.keys[-1]


class MQTTClient:
    """Publish and subscribe through the host's MQTT bridge (docs/MQTT.md), under the plugin's
    own part of the topic tree (``<topic_prefix>/plugins/<id>/``): topics are relative to it.
    The plugin needs no MQTT library or broker credentials of its own.

    Calls block the calling thread (a handler or hook) for one round trip and raise
    :class:`MQTTError` when the host refuses. Messages on subscribed topics arrive through
    :meth:`Plugin.on_mqtt_message` hooks.
    """

    def __init__(self, session: "Optional[_Session]") -> None:
        self._session = session

    def _call(self, payload: Dict[str, Any], timeout: Optional[float]) -> None:
        if self._session is None or self._session.legacy:
            raise MQTTError("unavailable", "the host speaks protocol 1.0, which has no MQTT bridge")
        self._session.call("mqtt", payload, KV_TIMEOUT_S if timeout is None else timeout,
                           reply_action="ok", error_cls=MQTTError)

    def publish(self, topic: str, payload: str, retain: bool = False, qos: Optional[int] = None,
                timeout: Optional[float] = None) -> None:
        """Publish text ``payload`` on ``topic`` (relative, no wildcards); returns once the host
        queued it for the broker. ``qos`` is 0 or 1 (default 1)."""
        if not isinstance(topic, str) or not isinstance(payload, str):
            raise MQTTError("bad_request", "topic and payload must be str")
        if len(payload.encode("utf-8")) > MAX_MQTT_PAYLOAD_LEN:
            raise MQTTError("too_large", "payload over %d bytes" % MAX_MQTT_PAYLOAD_LEN)
        message = {"type": "mqtt", "action": "publish", "topic": topic, "payload": payload,
                   "retain": bool(retain)}  # type: Dict[str, Any]
        if qos is not None:
            message["qos"] = qos
        self._call(message, timeout)

    def subscribe(self, filter: str, timeout: Optional[float] = None) -> None:
        """Receive what is published on ``filter`` (relative; ``+`` and ``#`` as whole levels,
        not the first)."""
        if not isinstance(filter, str):
            raise MQTTError("bad_request", "a filter must be a str")
        self._call({"type": "mqtt", "action": "subscribe", "filter": filter}, timeout)


class Context:
    """What handlers and hooks get besides the request.

    Attributes: ``instance_id`` (the device's id from ``init``), ``plugin_socket``,
    ``log_path``, ``protocol`` (``"1.1"``, or ``"1.0"`` under a legacy host),
    ``heartbeat_interval_ms`` and ``max_frame_len`` (the host's reading limit), ``config`` (the
    plugin's current settings, a dict: ``init``'s, then each accepted ``config`` message's; ``{}``
    when it has none), ``license`` (the licence the host verified for this device, a dict with
    ``plugin``, ``publisher``, ``instance``, ``features``, ``not_before``, ``expires`` and
    ``issued_at``; ``None`` without one, see :meth:`has_feature`), ``init`` (the whole init
    payload), ``kv`` (:class:`KVClient`), ``mqtt`` (:class:`MQTTClient`) and ``plugin`` (the
    :class:`Plugin`).
    """

    def __init__(self, plugin: "Plugin", session: "Optional[_Session]",
                 init: Optional[Mapping[str, Any]] = None) -> None:
        init = dict(init or {})
        self.plugin = plugin
        self.init = init
        self.instance_id = init.get("instance_id")  # type: Optional[str]
        self.plugin_socket = init.get("plugin_socket")  # type: Optional[str]
        self.log_path = init.get("log_path")  # type: Optional[str]
        self.protocol = init.get("protocol") or "1.0"  # type: str
        self.heartbeat_interval_ms = init.get("heartbeat_interval_ms")  # type: Optional[int]
        mfl = init.get("max_frame_len")
        self.max_frame_len = mfl if isinstance(mfl, int) and mfl > 0 else MAX_FRAME_LEN
        config = init.get("config")
        # Replaced as a whole (never mutated) when settings change, so a handler that reads it
        # once sees one consistent version.
        self.config = config if isinstance(config, dict) else {}  # type: Dict[str, Any]
        license = init.get("license")
        # Verified by the host before the start (publisher, this device, dates); absent: none.
        self.license = license if isinstance(license, dict) else None  # type: Optional[Dict[str, Any]]
        self.kv = KVClient(session)
        self.mqtt = MQTTClient(session)
        self._session = session

    def has_feature(self, feature: str) -> bool:
        """Whether the plugin's licence lists ``feature`` (``False`` without a licence)."""
        features = (self.license or {}).get("features")
        return isinstance(features, list) and feature in features

    def log(self, level: str, message: str) -> None:
        """Send a log line to the host (a ``log`` frame; stderr under a 1.0 host).

        ``level`` is one of ``error``, ``warn``, ``info``, ``debug``, ``trace``.
        """
        if level not in LOG_LEVELS:
            raise ValueError("log level must be one of %s, got %r" % (", ".join(LOG_LEVELS), level))
        if self._session is not None and not self._session.legacy and self._session.send_log(
            level, str(message)
        ):
            return
        sys.stderr.write("[%s] %s\n" % (level, message))
        sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# The connection engine
# ---------------------------------------------------------------------------------------------


class _Pending:
    """A request to the host (KV, MQTT) waiting for its reply."""

    __slots__ = ("action", "event", "reply", "error", "error_cls")

    def __init__(self, action: str, error_cls: type = KVError) -> None:
        self.action = action  # the reply's expected action
        self.event = threading.Event()
        self.reply = None  # type: Optional[Dict[str, Any]]
        self.error = None  # type: Optional[KVError]
        self.error_cls = error_cls


class _Session:
    """One connection to the host: the read loop, the serialised writer and the KV bookkeeping.

    The thread calling :meth:`serve` reads frames and dispatches them; it answers pings and
    delivers KV replies itself and hands init, HTTP requests and shutdown hooks to daemon
    threads. Invariant: user code never runs on the reading thread (except in 1.0 mode, where
    the host sends one message per connection and there is nothing else to read).
    """

    def __init__(self, plugin: "Plugin", sock: socket.socket,
                 listener: Optional[socket.socket] = None) -> None:
        self.plugin = plugin
        self.sock = sock
        self.listener = listener
        self.legacy = False
        self.ctx = None  # type: Optional[Context]
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending = {}  # type: Dict[str, _Pending]
        self._kv_slots = threading.BoundedSemaphore(MAX_KV_IN_FLIGHT)
        self._in_flight = 0
        self._closed = False
        self._initialising = False
        self._ready = False
        self._exit_code = None  # type: Optional[int]
        self._peer_limit = MAX_FRAME_LEN
        self._reader_thread = None  # type: Optional[threading.Thread]
        # `config` messages, applied one at a time, in arrival order, by one worker thread.
        self._configs = queue.Queue()  # type: queue.Queue
        self._config_worker = None  # type: Optional[threading.Thread]

    # -- writing ---------------------------------------------------------------------------

    def send(self, message: Mapping[str, Any], limit: Optional[int] = None) -> bool:
        """Write one frame; False if the connection is gone. Raises OversizedFrame."""
        if limit is None:
            limit = MAX_CONTROL_FRAME_LEN if message.get("type") != "http" else self._peer_limit
        data = encode_frame(message, limit)
        with self._write_lock:
            if self._closed:
                return False
            try:
                self.sock.sendall(data)
                return True
            except OSError as e:
                self._log_local("warn", "cannot write to the host: %s" % e)
                return False

    def send_error(self, request_id: Optional[str], code: str, message: str) -> None:
        """Answer ``request_id`` with an ``error`` frame (nothing if it has no id)."""
        if request_id is None:
            self._log_local("warn", "dropped a message without request_id: %s: %s" % (code, message))
            return
        if len(message) > MAX_LOG_MESSAGE_CHARS:
            message = message[:MAX_LOG_MESSAGE_CHARS] + "…"
        self.send(make_envelope("error", {"type": "error", "code": code, "message": message},
                                request_id))

    def send_log(self, level: str, message: str) -> bool:
        """Send a ``log`` frame; False if it could not be sent (the caller falls back to stderr)."""
        if len(message) > MAX_LOG_MESSAGE_CHARS:
            message = message[:MAX_LOG_MESSAGE_CHARS] + "…"
        try:
            return self.send(make_envelope("log", {"type": "log", "level": level,
                                                   "message": message}))
        except OversizedFrame:
            return False

    #: Where the SDK's own diagnostics go (``None``: ``sys.stderr``, which the host logs).
    diagnostics = None  # type: Optional[Any]

    @classmethod
    def _log_local(cls, level: str, message: str) -> None:
        out = cls.diagnostics if cls.diagnostics is not None else sys.stderr
        out.write("toru_plugin: [%s] %s\n" % (level, message))
        out.flush()

    def _finish(self, code: int) -> None:
        """Record the exit code and wake the reading thread (its recv returns EOF)."""
        with self._state_lock:
            if self._exit_code is None:
                self._exit_code = code
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- KV --------------------------------------------------------------------------------

    def kv_call(self, payload: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        """Send one KV request and wait for its reply (called from worker threads only)."""
        return self.call("kv", payload, timeout)

    def call(self, mtype: str, payload: Dict[str, Any], timeout: float,
             reply_action: Optional[str] = None, error_cls: type = KVError) -> Dict[str, Any]:
        """Send one request of type ``mtype`` and wait for its reply, whose action is
        ``reply_action`` (default: the request's); failures raise ``error_cls``. Called from
        worker threads only; KV and MQTT requests share the in-flight slots."""
        what = mtype.upper() if mtype == "kv" else "MQTT"
        if threading.current_thread() is self._reader_thread:
            raise error_cls("unavailable", "%s cannot be called from the I/O thread" % what)
        deadline = time.monotonic() + timeout
        if not self._kv_slots.acquire(timeout=max(0.0, timeout)):
            if error_cls is KVError:
                raise KVTimeout("no KV slot free within %.1f s" % timeout)
            raise error_cls("timeout", "no request slot free within %.1f s" % timeout)
        rid = "p%d" % next(self._ids)
        pending = _Pending(reply_action or payload["action"], error_cls)
        try:
            with self._state_lock:
                if self._closed:
                    raise error_cls("unavailable", "not connected to the host")
                self._pending[rid] = pending
            try:
                sent = self.send(make_envelope(mtype, payload, rid))
            except OversizedFrame as e:
                raise error_cls("too_large", str(e))
            if not sent:
                raise error_cls("unavailable", "not connected to the host")
            if not pending.event.wait(max(0.0, deadline - time.monotonic())):
                message = "no reply to %s %s within %.1f s" % (what, payload["action"], timeout)
                if error_cls is KVError:
                    raise KVTimeout(message)
                raise error_cls("timeout", message)
            if pending.error is not None:
                raise pending.error
            assert pending.reply is not None
            return pending.reply
        finally:
            with self._state_lock:
                self._pending.pop(rid, None)
            self._kv_slots.release()

    def _resolve(self, rid: Any, reply: Optional[Dict[str, Any]],
                 error: Optional[Tuple[str, str]]) -> bool:
        """Hand ``reply`` (or the ``(code, message)`` of an error) to the request ``rid``."""
        with self._state_lock:
            pending = self._pending.get(rid) if isinstance(rid, str) else None
        if pending is None:
            return False
        if reply is not None and reply.get("action") != pending.action:
            error = ("bad_request", "host answered %r where %r was expected"
                     % (reply.get("action"), pending.action))
            reply = None
        pending.reply = reply
        pending.error = pending.error_cls(*error) if error is not None else None
        pending.event.set()
        return True

    def _fail_all_pending(self) -> None:
        with self._state_lock:
            self._closed = True
            pending = list(self._pending.values())
        for p in pending:
            p.error = p.error_cls("unavailable", "connection to the host closed")
            p.event.set()

    # -- reading and dispatch --------------------------------------------------------------

    def serve(self) -> int:
        """Read and dispatch frames until the connection ends; return the process exit code."""
        self._reader_thread = threading.current_thread()
        try:
            while True:
                try:
                    body = read_frame(self.sock, self.plugin.max_frame_len)
                except CleanEOF:
                    if self._exit_code is not None:
                        return self._exit_code
                    # A 1.0 host sends one message per connection, and may open one without a
                    # frame before init (PROTOCOL.md §4): until a 1.1 init, EOF means "next".
                    before_init = self.ctx is None and not self._initialising
                    if (self.legacy or before_init) and self.listener is not None:
                        if not self._accept_next():
                            return 1
                        continue
                    self._log_local("info", "the host closed the connection; exiting")
                    return 0
                except (EmptyFrame, BadJSON) as e:
                    self._log_local("warn", "dropped a frame: %s" % e)
                    continue
                except (TruncatedFrame, OversizedFrame) as e:
                    if self._exit_code is not None:
                        return self._exit_code
                    self._log_local("error", "connection unusable: %s" % e)
                    if self.legacy and self.listener is not None:
                        if not self._accept_next():
                            return 1
                        continue
                    return 1
                except OSError as e:
                    if self._exit_code is not None:
                        return self._exit_code
                    self._log_local("error", "reading from the host failed: %s" % e)
                    return 1
                try:
                    message = decode_frame_body(body)
                except BadJSON as e:
                    self._log_local("warn", "dropped a frame: %s" % e)
                    continue
                try:
                    self._dispatch(message, len(body))
                except Exception as e:  # a bug here must not take the connection down
                    self._log_local("error", "dispatch failed: %s\n%s" % (e, traceback.format_exc()))
                    rid = message.get("request_id")
                    if _valid_request_id(rid):
                        self.send_error(rid, "internal", "plugin failed to handle the message")
                if self._exit_code is not None and self.legacy:
                    return self._exit_code
        finally:
            self._fail_all_pending()
            with self._write_lock:
                self._closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def _accept_next(self) -> bool:
        """1.0 mode: the host connects once per message; wait for its next connection."""
        try:
            self.sock.close()
        except OSError:
            pass
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError as e:
            self._log_local("error", "accept failed: %s" % e)
            return False
        with self._write_lock:
            self.sock = conn
        return True

    def _dispatch(self, msg: Dict[str, Any], size: int) -> None:
        rid = msg.get("request_id")
        if not _valid_request_id(rid):
            self._log_local("warn", "dropped a frame with an invalid request_id")
            return
        mtype = msg.get("type")
        if not isinstance(mtype, str):
            self.send_error(rid, "bad_request", "frame has no type")
            return
        handler = {
            "lifecycle": self._on_lifecycle,
            "heartbeat": self._on_heartbeat,
            "http": self._on_http,
            "kv": self._on_kv_reply,
            "error": self._on_error,
            "config": self._on_config,
            "mqtt": self._on_mqtt,
        }.get(mtype)
        if handler is None:
            if not self.legacy:
                self.send_error(rid, "unsupported", "unsupported message type %r" % mtype)
            else:
                self._log_local("warn", "ignored a %r frame from a 1.0 host" % mtype)
            return
        raw = msg.get("payload")
        is_reply = mtype in ("kv", "error") or (
            mtype == "mqtt" and isinstance(raw, dict) and raw.get("action") == "ok")
        if is_reply:  # replies to our requests: fail the waiting call instead
            def reject(code: str, message: str) -> None:
                if not self._resolve(rid, None, (code, "bad reply from host: " + message)):
                    self._log_local("warn", "dropped a %s frame: %s" % (mtype, message))
        else:
            def reject(code: str, message: str) -> None:
                self.send_error(rid, code, message)
        if not is_rfc3339(msg.get("timestamp")):
            reject("bad_request", "timestamp is missing or not RFC 3339")
            return
        payload = msg.get("payload")
        if not isinstance(payload, dict):
            reject("bad_request", "payload must be an object")
            return
        if "type" in payload and payload["type"] != mtype:
            reject("bad_request", "payload.type %r differs from type %r" % (payload["type"], mtype))
            return
        if mtype != "http" and size > MAX_CONTROL_FRAME_LEN:
            reject("too_large", "control frame of %d bytes is over %d"
                   % (size, MAX_CONTROL_FRAME_LEN))
            return
        handler(rid, payload)

    def _on_lifecycle(self, rid: Optional[str], payload: Dict[str, Any]) -> None:
        action = payload.get("action")
        if action == "init":
            self._on_init(rid, payload)
        elif action == "shutdown":
            self._on_shutdown(rid)
        else:
            self.send_error(rid, "unsupported", "unsupported lifecycle action %r" % (action,))

    def _on_init(self, rid: Optional[str], payload: Dict[str, Any]) -> None:
        if self.ctx is not None or self._initialising:
            if self.legacy:  # a 1.0 host may repeat init after reconnecting: nothing to do
                return
            self.send_error(rid, "bad_request", "already initialised")
            return
        version = payload.get("protocol")
        if "config" in payload and not isinstance(payload["config"], dict):
            if version is None or version == "1.0":  # no error frame to say it with
                self._log_local("warn", "init.config is not a JSON object; ignored")
            else:
                self.send_error(rid, "bad_request", "init.config must be a JSON object")
                self._finish(1)
                return
        if version is None or version == "1.0":
            self.legacy = True
            payload = dict(payload, protocol="1.0")
        elif not isinstance(version, str) or not version.startswith("1."):
            self.send_error(rid, "unsupported", "this plugin speaks protocol 1.1, not %r" % version)
            self._finish(1)
            return
        else:
            if self.listener is not None:  # 1.1: one connection for life, stop listening
                try:
                    self.listener.close()
                except OSError:
                    pass
                self.listener = None
            mfl = payload.get("max_frame_len")
            if isinstance(mfl, int) and mfl > 0:
                self._peer_limit = mfl
        self.ctx = Context(self.plugin, self, payload)
        if self.legacy:
            try:
                self.plugin.init(self.ctx)
            except Exception as e:  # 1.0 has no way to report it: log and exit
                self._log_local("error", "init failed: %s\n%s" % (e, traceback.format_exc()))
                self._exit_code = 1
            return
        self._initialising = True
        self._spawn(self._run_init, rid)

    def _run_init(self, rid: Optional[str]) -> None:
        assert self.ctx is not None
        try:
            self.plugin.init(self.ctx)
        except Exception as e:
            self._log_local("error", "init failed: %s\n%s" % (e, traceback.format_exc()))
            code = e.code if isinstance(e, KVError) else "internal"  # MQTTError included
            self.send_error(rid, code if code != "timeout" else "internal", "init failed: %s" % e)
            self._finish(1)
            return
        self._ready = True
        self._initialising = False
        self.send(make_envelope("lifecycle", {"type": "lifecycle", "action": "ready"}, rid))

    def _on_config(self, rid: Optional[str], payload: Dict[str, Any]) -> None:
        if self.legacy:  # 1.0 has no config message, nor an error frame to refuse it with
            self._log_local("warn", "ignored a config frame from a 1.0 host")
            return
        if payload.get("action") != "set":
            self.send_error(rid, "unsupported", "unsupported config action %r"
                            % (payload.get("action"),))
            return
        if rid is None:
            self._log_local("warn", "dropped a config request without request_id")
            return
        config = payload.get("config")
        if not isinstance(config, dict):
            self.send_error(rid, "bad_request", "config must be a JSON object")
            return
        if self.ctx is None or not self._ready:
            self.send_error(rid, "unavailable", "the plugin is not ready yet")
            return
        self._configs.put((rid, config))
        if self._config_worker is None:
            self._config_worker = threading.Thread(target=self._apply_configs,
                                                   name="toru-config", daemon=True)
            self._config_worker.start()

    def _apply_configs(self) -> None:
        """The config worker: apply each queued ``config`` message, in order, forever."""
        while True:
            rid, config = self._configs.get()
            self._apply_config(rid, config)

    def _apply_config(self, rid: str, config: Dict[str, Any]) -> None:
        ctx = self.ctx
        assert ctx is not None
        previous = ctx.config
        ctx.config = config
        try:
            self.plugin.configure(ctx, config)
        except ConfigError as e:
            ctx.config = previous
            self.send_error(rid, e.code, e.message)
            return
        except Exception as e:
            ctx.config = previous
            self._log_local("error", "on_config failed: %s\n%s" % (e, traceback.format_exc()))
            self.send_error(rid, "internal", "on_config failed: %s" % e)
            return
        self.send(make_envelope("config", {"type": "config", "action": "ok"}, rid))

    def _on_shutdown(self, rid: Optional[str]) -> None:
        if self.legacy:
            self._run_shutdown_hooks()
            self._exit_code = 0
            return
        self._spawn(self._run_shutdown, rid)

    def _run_shutdown_hooks(self) -> None:
        if self.ctx is None:
            return
        try:
            self.plugin.shutdown(self.ctx)
        except Exception as e:
            self._log_local("error", "shutdown hook failed: %s\n%s" % (e, traceback.format_exc()))

    def _run_shutdown(self, rid: Optional[str]) -> None:
        hooks = threading.Thread(target=self._run_shutdown_hooks, name="toru-shutdown", daemon=True)
        hooks.start()
        hooks.join(SHUTDOWN_HOOK_TIMEOUT_S)
        if hooks.is_alive():
            self._log_local("warn", "shutdown hooks still running after %.0f s; exiting anyway"
                            % SHUTDOWN_HOOK_TIMEOUT_S)
        self.send(make_envelope("lifecycle", {"type": "lifecycle", "action": "shutdown_ack"}, rid))
        self._finish(0)

    def _on_heartbeat(self, rid: Optional[str], payload: Dict[str, Any]) -> None:
        if payload.get("action") != "ping":
            self.send_error(rid, "unsupported", "unsupported heartbeat action %r"
                            % (payload.get("action"),))
            return
        self.send(make_envelope("heartbeat", {"type": "heartbeat", "action": "pong",
                                              "seq": payload.get("seq")}, rid))

    def _on_kv_reply(self, rid: Optional[str], payload: Dict[str, Any]) -> None:
        if self.legacy:
            self._log_local("warn", "ignored a kv request from a 1.0 host (KV lives in the host)")
            return
        if not self._resolve(rid, payload, None):
            self._log_local("warn", "kv reply for unknown request %r dropped" % (rid,))

    def _on_error(self, rid: Optional[str], payload: Dict[str, Any]) -> None:
        code = payload.get("code") if isinstance(payload.get("code"), str) else "internal"
        message = payload.get("message") if isinstance(payload.get("message"), str) else ""
        if not self._resolve(rid, None, (code, message)):
            self._log_local("warn", "error from host for %r: %s: %s" % (rid, code, message))

    def _on_mqtt(self, rid: Optional[str], payload: Dict[str, Any]) -> None:
        action = payload.get("action")
        if action == "ok":
            if not self._resolve(rid, payload, None):
                self._log_local("warn", "mqtt reply for unknown request %r dropped" % (rid,))
            return
        if action != "message":
            self.send_error(rid, "unsupported", "unsupported mqtt action %r" % (action,))
            return
        topic, text = payload.get("topic"), payload.get("payload")
        if not isinstance(topic, str) or not isinstance(text, str):
            self._log_local("warn", "dropped an mqtt message without a str topic and payload")
            return
        if self.ctx is None or not self._ready:
            self._log_local("warn", "dropped an mqtt message that came before ready")
            return
        self._spawn(self._run_mqtt_message, topic, text)

    def _run_mqtt_message(self, topic: str, payload: str) -> None:
        assert self.ctx is not None
        try:
            self.plugin.mqtt_message(self.ctx, topic, payload)
        except Exception as e:
            self._log_local("error", "on_mqtt_message failed: %s\n%s"
                            % (e, traceback.format_exc()))

    def _on_http(self, rid: Optional[str], payload: Dict[str, Any]) -> None:
        if rid is None:
            self._log_local("warn", "dropped an http request without request_id")
            return
        if self.ctx is None or (not self.legacy and not self._ready):
            self._fail_http(rid, "unavailable", "the plugin is not ready yet")
            return
        inner = payload.get("payload")
        try:
            req = self._parse_request(rid, inner)
        except ValueError as e:
            self._fail_http(rid, "bad_request", str(e))
            return
        if self.legacy:  # one message per connection: nothing else to read meanwhile
            self._run_http(req)
            return
        with self._state_lock:
            if self._in_flight >= self.plugin.max_concurrency:
                busy = True
            else:
                busy = False
                self._in_flight += 1
        if busy:
            self.send_error(rid, "busy", "too many requests in flight")
            return
        try:
            self._spawn(self._run_http_counted, req)
        except RuntimeError as e:  # "can't start new thread": out of resources
            with self._state_lock:
                self._in_flight -= 1
            self.send_error(rid, "busy", "cannot start a worker thread: %s" % e)

    @staticmethod
    def _parse_request(rid: str, inner: Any) -> Request:
        if not isinstance(inner, dict):
            raise ValueError("http payload.payload must be an object")
        method, path = inner.get("method"), inner.get("path")
        headers, body = inner.get("headers", {}), inner.get("body")
        enc = inner.get("body_encoding")
        if not isinstance(method, str) or not method:
            raise ValueError("http request without method")
        if not isinstance(path, str):
            raise ValueError("http request without path")
        if headers is None:
            headers = {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("http headers must be an object of strings")
        if body is not None and not isinstance(body, str):
            raise ValueError("http body must be a string or null")
        if enc not in (None, "utf8", "base64"):
            raise ValueError("unsupported body_encoding %r" % (enc,))
        try:
            return Request(method, path if path.startswith("/") else "/" + path, headers, body,
                           "base64" if enc == "base64" else None, rid)
        except (binascii.Error, ValueError) as e:
            raise ValueError("body is not valid base64: %s" % e)

    def _run_http_counted(self, req: Request) -> None:
        try:
            self._run_http(req)
        finally:
            with self._state_lock:
                self._in_flight -= 1

    def _run_http(self, req: Request) -> None:
        assert self.ctx is not None
        try:
            try:
                result = _to_response(self.plugin.handle(req, self.ctx))
            except HTTPError as e:
                result = e.to_response()
            payload = result.to_payload(allow_base64=not self.legacy)
        except Exception as e:
            self._log_local("error", "handler for %s %s failed: %s\n%s"
                            % (req.method, req.raw_path, e, traceback.format_exc()))
            self._fail_http(req.request_id, "internal", "handler failed: %s" % e)
            return
        try:
            self.send(make_envelope("http", payload, req.request_id))
        except OversizedFrame as e:
            self._fail_http(req.request_id, "too_large", "reply is too large: %s" % e)

    def _fail_http(self, rid: Optional[str], code: str, message: str) -> None:
        """Answer an HTTP request that failed: an ``error`` frame, or under 1.0 (which has no
        ``error`` type) a documented HTTP reply with the matching status."""
        if not self.legacy:
            self.send_error(rid, code, message)
            return
        status = _LEGACY_STATUS.get(code, 500)
        self.send(make_envelope("http", Response.json({"error": code, "message": message[:4096]},
                                                      status=status).to_payload(False), rid))

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        threading.Thread(target=target, args=args, name="toru-worker", daemon=True).start()


# ---------------------------------------------------------------------------------------------
# The plugin
# ---------------------------------------------------------------------------------------------

Handler = Callable[[Request, Context], Any]
Hook = Callable[[Context], None]
ConfigHook = Callable[[Context, Dict[str, Any]], None]
MqttHook = Callable[[Context, str, str], None]


class Plugin:
    """A Toru plugin: metadata, handlers and the runner.

    Decorator style: create one, register handlers with :meth:`route` (or :meth:`get`,
    :meth:`post`, :meth:`put`, :meth:`delete`), hooks with :meth:`on_init`, :meth:`on_config`
    and :meth:`on_shutdown`, then call :meth:`run`.

    Class style: subclass and override :meth:`init`, :meth:`handle`, :meth:`configure` and/or
    :meth:`shutdown`::

        class Hello(Plugin):
            def __init__(self):
                super().__init__(id="hello", name="Hello", version="1.0", route="/hello")
            def handle(self, req, ctx):
                return {"path": req.path}

        Hello().run()

    Metadata is validated here, so a mistake fails at start-up rather than as a skipped plugin.
    ``max_frame_len`` is this plugin's reading limit; ``max_concurrency`` the number of HTTP
    requests handled at once (the host sends at most 64).
    """

    def __init__(
        self,
        id: str,
        name: str,
        version: str,
        route: str,
        author: Optional[str] = None,
        icon: str = "",
        max_frame_len: int = MAX_FRAME_LEN,
        max_concurrency: int = MAX_CONCURRENT_REQUESTS,
    ) -> None:
        if not isinstance(id, str) or not _ID_RE.match(id):
            raise ValueError("invalid plugin id %r: use 1-63 of a-z, 0-9, '-', not starting "
                             "with '-'" % (id,))
        if not isinstance(route, str) or not _ROUTE_RE.match(route) or ".." in route \
                or route == "/.":
            raise ValueError("invalid route %r: '/' followed by one segment of A-Z a-z 0-9 . _ -"
                             % (route,))
        if not isinstance(name, str) or not 1 <= len(name) <= 99:
            raise ValueError("name must be 1 to 99 characters")
        if author is not None and (not isinstance(author, str) or len(author) >= 100):
            raise ValueError("author must be a str under 100 characters, or None")
        self.id = id
        self.name = name
        self.version = str(version)
        self.route_prefix = route
        self.author = author
        self.icon = icon
        self.max_frame_len = max_frame_len
        self.max_concurrency = max_concurrency
        self._routes = []  # type: List[_Route]
        self._init_hooks = []  # type: List[Hook]
        self._config_hooks = []  # type: List[ConfigHook]
        self._shutdown_hooks = []  # type: List[Hook]
        self._mqtt_hooks = []  # type: List[MqttHook]
        self._not_found = None  # type: Optional[Handler]

    # -- metadata --------------------------------------------------------------------------

    def metadata(self) -> Dict[str, Any]:
        """What ``--metadata`` prints (with ``"protocol": "1.1"``)."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "author": self.author,
            "icon": self.icon,
            "route": self.route_prefix,
            "protocol": PROTOCOL_VERSION,
        }

    # -- registration ----------------------------------------------------------------------

    def on_init(self, fn: Hook) -> Hook:
        """Decorator: ``fn(ctx)`` runs once after the host's ``init``, before ``ready``.

        It may use ``ctx.kv`` and ``ctx.log``. If it raises, the host gets an ``error`` frame
        and the plugin exits with status 1.
        """
        self._init_hooks.append(fn)
        return fn

    def on_config(self, fn: ConfigHook) -> ConfigHook:
        """Decorator: ``fn(ctx, config)`` runs when the host sends new settings (protocol 1.1;
        a 1.0 host restarts the plugin instead, and the settings arrive in ``init``).

        ``config`` is the whole new settings dict, already in ``ctx.config``. Changes are applied
        one at a time, in order, in a worker thread (KV calls are fine). Raise
        :class:`ConfigError` (or any exception) to refuse them: the host reports the message and
        ``ctx.config`` goes back to the previous settings. Without hooks every change is accepted.
        """
        self._config_hooks.append(fn)
        return fn

    def on_shutdown(self, fn: Hook) -> Hook:
        """Decorator: ``fn(ctx)`` runs when the host asks the plugin to stop (bounded to 3 s)."""
        self._shutdown_hooks.append(fn)
        return fn

    def on_mqtt_message(self, fn: MqttHook) -> MqttHook:
        """Decorator: ``fn(ctx, topic, payload)`` runs for each message on a topic the plugin
        subscribed to with ``ctx.mqtt.subscribe`` (``topic`` relative to its own part of the tree,
        ``payload`` text), each in a worker thread."""
        self._mqtt_hooks.append(fn)
        return fn

    def route(self, method: Union[str, List[str], Tuple[str, ...]], pattern: str
              ) -> Callable[[Handler], Handler]:
        """Decorator: ``fn(req, ctx)`` answers ``method`` (``"*"`` = any, or a list) on ``pattern``.

        ``pattern`` is matched against the path without its query: ``"/"``, ``"/items/{id}"``
        (one segment, available percent-decoded as ``req.params["id"]``) or
        ``"/files/{rest:path}"`` (the remaining path, slashes included). Routes are tried in
        registration order; the first match wins.
        """
        if isinstance(method, str):
            methods = None if method == "*" else (method.upper(),)
        else:
            methods = tuple(m.upper() for m in method)
        regex = _compile_pattern(pattern)

        def register(fn: Handler) -> Handler:
            self._routes.append(_Route(methods, pattern, regex, fn))
            return fn

        return register

    def get(self, pattern: str) -> Callable[[Handler], Handler]:
        """Shorthand for ``route("GET", pattern)``."""
        return self.route("GET", pattern)

    def post(self, pattern: str) -> Callable[[Handler], Handler]:
        """Shorthand for ``route("POST", pattern)``."""
        return self.route("POST", pattern)

    def put(self, pattern: str) -> Callable[[Handler], Handler]:
        """Shorthand for ``route("PUT", pattern)``."""
        return self.route("PUT", pattern)

    def delete(self, pattern: str) -> Callable[[Handler], Handler]:
        """Shorthand for ``route("DELETE", pattern)``."""
        return self.route("DELETE", pattern)

    def not_found(self, fn: Handler) -> Handler:
        """Decorator: ``fn(req, ctx)`` answers requests no route matched.

        The default answers 404 ``{"error": "not_found", "path": <path as received>}``.
        """
        self._not_found = fn
        return fn

    # -- overridable behaviour -------------------------------------------------------------

    def init(self, ctx: Context) -> None:
        """Run the :meth:`on_init` hooks in order. Override in a subclass to do more."""
        for hook in self._init_hooks:
            hook(ctx)

    def configure(self, ctx: Context, config: Dict[str, Any]) -> None:
        """Run the :meth:`on_config` hooks in order. Override in a subclass to do more."""
        for hook in self._config_hooks:
            hook(ctx, config)

    def shutdown(self, ctx: Context) -> None:
        """Run the :meth:`on_shutdown` hooks in order. Override in a subclass to do more."""
        for hook in self._shutdown_hooks:
            hook(ctx)

    def mqtt_message(self, ctx: Context, topic: str, payload: str) -> None:
        """Run the :meth:`on_mqtt_message` hooks in order. Override in a subclass to do more."""
        for hook in self._mqtt_hooks:
            hook(ctx, topic, payload)

    def handle(self, req: Request, ctx: Context) -> Any:
        """Answer one request: the first matching route, else the not-found handler."""
        for r in self._routes:
            m = r.regex.match(req.path)
            if m is None or (r.methods is not None and req.method.upper() not in r.methods):
                continue
            req.params = {k: unquote(v) for k, v in m.groupdict().items()}
            return r.handler(req, ctx)
        if self._not_found is not None:
            return self._not_found(req, ctx)
        return Response.json({"error": "not_found", "path": req.raw_path}, status=404)

    # -- running ---------------------------------------------------------------------------

    def print_metadata(self, out: Any = None) -> None:
        """Write the metadata JSON (pretty, UTF-8) to ``out`` (default: stdout)."""
        text = json.dumps(self.metadata(), ensure_ascii=False, indent=2) + "\n"
        if out is None:
            sys.stdout.buffer.write(text.encode("utf-8"))
            sys.stdout.flush()
        else:
            out.write(text)

    def run(self, argv: Optional[List[str]] = None) -> None:
        """The plugin's ``main``: handles ``--metadata``, otherwise serves; never returns.

        Exit status: 0 after ``shutdown`` or when the host closes the connection, 1 when
        init fails or the connection breaks, 2 when the socket cannot be set up.
        """
        argv = sys.argv[1:] if argv is None else argv
        if "--metadata" in argv:
            self.print_metadata()
            sys.exit(0)
        try:  # the host logs stdout line by line: do not hold lines back in a buffer
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
        path = os.environ.get(SOCKET_ENV)
        if not path:
            sys.stderr.write("%s is not set: this program is a Toru plugin and is started by "
                             "the host (try --metadata)\n" % SOCKET_ENV)
            sys.exit(2)
        try:
            listener = bind_socket(path)
        except (OSError, ToruError) as e:
            sys.stderr.write("toru_plugin: cannot listen on %s: %s\n" % (path, e))
            sys.exit(2)
        code = self.serve(listener, path)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.exit(code)

    def serve(self, listener: socket.socket, path: Optional[str] = None) -> int:
        """Accept the host's connection on ``listener`` and serve it; return the exit status.

        The socket file at ``path`` (if given) is removed on return when it is still ours.
        """
        ident = None
        if path is not None:
            try:
                st = os.lstat(path)
                ident = (st.st_dev, st.st_ino)
            except OSError:
                pass
        try:
            conn, _ = listener.accept()
            return self.serve_connection(conn, listener)
        finally:
            try:
                listener.close()
            except OSError:
                pass
            if path is not None and ident is not None:
                try:
                    st = os.lstat(path)
                    if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == ident:
                        os.unlink(path)
                except OSError:
                    pass

    def serve_connection(self, conn: socket.socket, listener: Optional[socket.socket] = None
                         ) -> int:
        """Serve one connected socket (tests use a socketpair); return the exit status.

        With ``listener``, a 1.0 host's further connections are accepted from it.
        """
        return _Session(self, conn, listener).serve()


def bind_socket(path: str, backlog: int = 8) -> socket.socket:
    """Bind and listen on a Unix stream socket at ``path``.

    Creates the parent directory (mode 0700) if it is missing. Removes a stale file at
    ``path`` only if it is a socket (checked with ``lstat``, so a symlink is never followed);
    anything else there is an error.
    """
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ToruError("refusing to replace %s: it exists and is not a socket" % path)
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
