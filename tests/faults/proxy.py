"""An HTTP reverse proxy that injects faults between a client and a local S3 server.

::

    boto3 ──HTTP/1.1 keep-alive──▶ FaultProxy (127.0.0.1:free port) ──▶ moto / rclone serve s3

Every request is forwarded unchanged (method, target, headers with ``Host`` as the client
sent it, because SigV4 signs it) and the response is streamed back in chunks, so bodies
of hundreds of MB never sit in memory. Rules added at run time pick requests by method,
path and ``Range`` and apply one action:

- :func:`reset_after` — headers and *n* body bytes, then a TCP RST (``SO_LINGER`` 0);
- :func:`truncate_after` — headers with the full ``Content-Length``, *n* bytes, then FIN;
- :func:`status` — no forwarding; an S3-style XML error (or TOS's JSON one, with
  ``dialect="tos"``), optionally with ``Retry-After``;
- :func:`flip_byte` — the body with one byte XORed: silent corruption in transit;
- :func:`set_headers` / :func:`drop_headers` — edit the response headers;
- :func:`set_status` — another status code on an otherwise forwarded response;
- :func:`ignore_range` — a ranged answer dressed as a store that ignores ``Range``;
- :func:`delay` — sleep before the headers and/or between body chunks;
- :func:`trickle` — the headers, then the body one byte (or a few) every few seconds;
- :func:`stall` — no answer at all, or the headers (and *n* body bytes) and then
  nothing, until the client hangs up or the proxy closes;
- :func:`if_match` — honour ``If-Match`` for a store that ignores it (rclone): a
  forwarded answer whose ETag is not the one asked for becomes ``412``;
- :func:`hook` — call a function before the request is forwarded (to replace the
  object under a client, say).

Several rules may fire on one request: header edits, flips and delays add up, and the
first *terminal* action (reset, truncate, status) wins; a later rule whose terminal
action would be overridden does not fire, so its counter stays honest.

Only the standard library is used. One thread serves each client connection and owns
one upstream connection; :meth:`FaultProxy.close` shuts every socket and joins every
thread, so nothing outlives a test and no ``ResourceWarning`` escapes.

Example::

    with FaultProxy(moto_url) as proxy:
        rule = proxy.add_rule(Rule(reset_after(1000), method="GET", ranged_only=True))
        s3 = boto3.client("s3", endpoint_url=proxy.url, ...)
        ...
        assert rule.fired == 1
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import random
import re
import select
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

__all__ = [
    "Action",
    "Delay",
    "Dialect",
    "DropHeaders",
    "FaultProxy",
    "FlipByte",
    "Hook",
    "IfMatch",
    "IgnoreRange",
    "RequestRecord",
    "ResetAfter",
    "Rule",
    "SetHeaders",
    "SetStatus",
    "Stall",
    "Status",
    "Trickle",
    "TruncateAfter",
    "delay",
    "drop_headers",
    "flip_byte",
    "hook",
    "if_match",
    "ignore_range",
    "reset_after",
    "set_headers",
    "set_status",
    "stall",
    "status",
    "trickle",
    "truncate_after",
]

CHUNK_SIZE = 64 * 1024
_MAX_LOG = 100_000

# Never forwarded in either direction: they describe one hop, and the proxy runs its
# own keep-alive with each side. None of them is in a SigV4 signature (botocore leaves
# out ``expect``; urllib3 adds the others after signing).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "upgrade", "expect", "trailer"}
)

_S3_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "AccessDenied": "Access Denied",
    "NoSuchKey": "The specified key does not exist.",
    "NoSuchBucket": "The specified bucket does not exist.",
    "PreconditionFailed": "At least one of the pre-conditions you specified did not hold",
    "RequestTimeout": "Your socket connection to the server was not read from or written "
    "to within the timeout period.",
    "SignatureDoesNotMatch": "The request signature we calculated does not match the "
    "signature you provided.",
    "RequestTimeTooSkewed": "The difference between the request time and the current time "
    "is too large.",
    "InvalidRange": "The requested range is not satisfiable",
    "TooManyRequests": "Too many requests, please slow down.",
}


# --- actions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResetAfter:
    """Send the headers and ``n_bytes`` of body, then abort the connection with RST."""

    n_bytes: int


@dataclass(frozen=True, slots=True)
class TruncateAfter:
    """Send the headers (full ``Content-Length``) and ``n_bytes`` of body, then FIN."""

    n_bytes: int


# How a store words an error: S3's XML with x-amz-request-id, or TOS's JSON with
# x-tos-request-id (what the TOS SDK parses).
Dialect = Literal["s3", "tos"]


@dataclass(frozen=True, slots=True)
class Status:
    """Answer a store's error without forwarding the request: S3's XML, or TOS's JSON."""

    code: int
    s3_code: str
    retry_after: str | None = None
    message: str | None = None
    dialect: Dialect = "s3"


@dataclass(frozen=True, slots=True)
class FlipByte:
    """XOR the body byte at ``offset`` (from the start of this response's body) with ``mask``."""

    offset: int
    mask: int = 0xFF


@dataclass(frozen=True, slots=True)
class SetHeaders:
    """Add or replace response headers (names match case-blind)."""

    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class DropHeaders:
    """Remove response headers (names match case-blind)."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SetStatus:
    """Send ``code`` instead of the upstream status; headers and body are forwarded."""

    code: int


@dataclass(frozen=True, slots=True)
class IgnoreRange:
    """Answer a ranged GET the way a store that ignores ``Range`` would, in its headers.

    ``200``, no ``Content-Range`` and the whole object's ``Content-Length`` (the total
    upstream's ``Content-Range`` gave). The body is still only the requested part, and
    the connection closes after it: SigV4 signs ``Range``, so the proxy cannot ask
    upstream for the whole object. A response without ``Content-Range`` passes as is.
    """


@dataclass(frozen=True, slots=True)
class Delay:
    """Sleep before sending the headers, and after each body chunk."""

    before_headers: float = 0.0
    per_chunk: float = 0.0


@dataclass(frozen=True, slots=True)
class Trickle:
    """Send the headers, then ``n_bytes`` of body every ``interval`` seconds: a response
    that never goes quiet for long, yet never gets anywhere."""

    interval: float
    n_bytes: int = 1


@dataclass(frozen=True, slots=True)
class IfMatch:
    """Answer ``412 PreconditionFailed`` (in ``dialect``) to a request whose ``If-Match``
    names another ETag than the forwarded answer carries, as S3 and TOS do."""

    dialect: Dialect = "s3"


@dataclass(frozen=True, slots=True)
class Hook:
    """Call ``callback()`` in the proxy's thread before the request is forwarded."""

    callback: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Stall:
    """Stop answering: before the headers (``after_bytes`` ``None``), or after the headers
    and ``after_bytes`` of body. Held until the client hangs up or the proxy closes."""

    after_bytes: int | None = 0


Action = (
    ResetAfter
    | TruncateAfter
    | Status
    | FlipByte
    | SetHeaders
    | DropHeaders
    | SetStatus
    | IgnoreRange
    | Delay
    | Trickle
    | Stall
    | IfMatch
    | Hook
)
_Terminal = ResetAfter | TruncateAfter | Status


def reset_after(n_bytes: int) -> ResetAfter:
    """A connection reset after ``n_bytes`` of the response body."""
    return ResetAfter(n_bytes)


def truncate_after(n_bytes: int) -> TruncateAfter:
    """A body that ends cleanly after ``n_bytes``, short of its ``Content-Length``."""
    return TruncateAfter(n_bytes)


def status(
    code: int,
    s3_error_code: str,
    retry_after: float | str | None = None,
    message: str | None = None,
    *,
    dialect: Dialect = "s3",
) -> Status:
    """An S3 error response, e.g. ``status(503, "SlowDown", retry_after=1)``; TOS's JSON
    error with ``x-tos-request-id`` instead with ``dialect="tos"``."""
    if isinstance(retry_after, float) and retry_after.is_integer():
        retry_after = int(retry_after)
    after = None if retry_after is None else str(retry_after)
    return Status(code, s3_error_code, after, message, dialect)


def flip_byte(offset: int, mask: int = 0xFF) -> FlipByte:
    """Corrupt the body byte at ``offset``; the response is otherwise intact."""
    if not 0 < mask <= 0xFF:
        raise ValueError("mask must be 1..255 so that the byte really changes")
    return FlipByte(offset, mask)


def set_headers(headers: Mapping[str, str]) -> SetHeaders:
    """Add or replace response headers, e.g. ``{"x-tos-hash-crc64ecma": "123"}``."""
    return SetHeaders(tuple(headers.items()))


def drop_headers(names: Iterable[str]) -> DropHeaders:
    """Remove response headers, e.g. ``["x-amz-checksum-crc32c"]``."""
    return DropHeaders(tuple(names))


def set_status(code: int) -> SetStatus:
    """Another status on a forwarded response, e.g. ``set_status(203)`` on a ranged GET."""
    return SetStatus(code)


def ignore_range() -> IgnoreRange:
    """A ranged answer that says ``200``, whole object; see :class:`IgnoreRange`."""
    return IgnoreRange()


def delay(seconds_before_headers: float = 0.0, seconds_per_chunk: float = 0.0) -> Delay:
    """A slow response: a pause before the headers and/or between body chunks."""
    return Delay(seconds_before_headers, seconds_per_chunk)


def trickle(interval: float, n_bytes: int = 1) -> Trickle:
    """The headers, then ``n_bytes`` of body every ``interval`` seconds."""
    if interval <= 0 or n_bytes < 1:
        raise ValueError("a trickle needs a positive interval and at least one byte")
    return Trickle(interval, n_bytes)


def stall(after_bytes: int = 0, *, before_headers: bool = False) -> Stall:
    """A server that stops answering: after the headers and ``after_bytes`` of body, or
    (``before_headers``) without sending anything."""
    return Stall(None if before_headers else after_bytes)


def if_match(dialect: Dialect = "s3") -> IfMatch:
    """``If-Match`` honoured in front of a store that ignores it; see :class:`IfMatch`."""
    return IfMatch(dialect)


def hook(callback: Callable[[], None]) -> Hook:
    """Run ``callback`` before forwarding, e.g. to replace the object being fetched."""
    return Hook(callback)


# --- rules -----------------------------------------------------------------------------


@dataclass(eq=False)
class Rule:
    """Which requests an action applies to, and how often.

    ``method`` is matched exactly (``None``: any); ``path`` and ``query`` are regexes
    searched in the request target's path and query string as sent (percent-encoded);
    ``ranged_only`` keeps requests with a ``Range`` header, and ``range``, a regex searched
    in that header (``r"^bytes=0-"``), those whose range it finds (a request without one
    never matches it). Of the matching requests the
    first ``skip`` pass untouched; after that the rule fires ``times`` times (``None``:
    without end), each time with probability ``p`` (``None``: always) drawn from a
    ``random.Random(seed)`` of its own, so a benchmark's faults repeat run to run.

    ``fired`` counts the times it fired since the last
    :meth:`FaultProxy.reset_counters`; the ``times`` budget is not re-armed by that.
    """

    action: Action
    method: str | None = None
    path: str | None = None
    query: str | None = None
    ranged_only: bool = False
    times: int | None = 1
    p: float | None = None
    seed: int = 0
    skip: int = 0
    range: str | None = None
    fired: int = field(default=0, init=False)
    _used: int = field(default=0, init=False, repr=False)
    _seen: int = field(default=0, init=False, repr=False)
    _rng: random.Random = field(init=False, repr=False)
    _path_re: re.Pattern[str] | None = field(init=False, repr=False)
    _query_re: re.Pattern[str] | None = field(init=False, repr=False)
    _range_re: re.Pattern[str] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.p is not None and not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be within [0, 1], not {self.p}")
        self._rng = random.Random(self.seed)
        self._path_re = re.compile(self.path) if self.path is not None else None
        self._query_re = re.compile(self.query) if self.query is not None else None
        self._range_re = re.compile(self.range) if self.range is not None else None

    def _matches(self, method: str, path: str, query: str, ranged: str | None) -> bool:
        return (
            (self.method is None or self.method == method)
            and (self._path_re is None or self._path_re.search(path) is not None)
            and (self._query_re is None or self._query_re.search(query) is not None)
            and (ranged is not None or not self.ranged_only)
            and (
                self._range_re is None
                or (ranged is not None and self._range_re.search(ranged) is not None)
            )
        )

    def _should_fire(self) -> bool:
        self._seen += 1
        if self._seen <= self.skip:
            return False
        if self.times is not None and self._used >= self.times:
            return False
        return self.p is None or self._rng.random() < self.p


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the proxy saw and answered it; ``status`` 0: none was sent (a stall
    before the headers); ``at``: when it arrived (``time.monotonic()``)."""

    method: str
    path: str
    query: str
    range: str | None
    status: int
    faults: tuple[str, ...]
    body_bytes: int
    at: float = 0.0


@dataclass(slots=True)
class _Entry:
    # Live form of a RequestRecord: body_bytes grows while the body streams.
    method: str
    path: str
    query: str
    range: str | None
    status: int
    faults: tuple[str, ...]
    body_bytes: int = 0
    at: float = 0.0

    def freeze(self) -> RequestRecord:
        return RequestRecord(
            self.method,
            self.path,
            self.query,
            self.range,
            self.status,
            self.faults,
            self.body_bytes,
            self.at,
        )


@dataclass(slots=True)
class _Plan:
    terminal: _Terminal | None = None
    flips: list[FlipByte] = field(default_factory=list)
    set_headers: dict[str, tuple[str, str]] = field(default_factory=dict)
    drop_headers: set[str] = field(default_factory=set)
    status: int | None = None
    ignore_range: bool = False
    before_headers: float = 0.0
    per_chunk: float = 0.0
    trickle: Trickle | None = None
    stall: Stall | None = None
    if_match: IfMatch | None = None
    hooks: list[Hook] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def edit_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        gone = self.drop_headers | set(self.set_headers)
        kept = [(k, v) for k, v in headers if k.lower() not in gone]
        return kept + list(self.set_headers.values())


# --- the proxy -------------------------------------------------------------------------


class FaultProxy:
    """A fault-injecting reverse proxy to ``upstream`` (``http://127.0.0.1:PORT``).

    Use as a context manager, or call :meth:`start` and :meth:`close`. All methods are
    thread-safe and may be called while requests are in flight.
    """

    def __init__(self, upstream: str, *, timeout: float = 60.0, chunk_size: int = CHUNK_SIZE):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.timeout = timeout
        self.chunk_size = chunk_size
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._rules: list[Rule] = []
        self._bytes_served = 0
        self._connections = 0
        self._requests: Counter[tuple[str, int]] = Counter()
        self._log: deque[_Entry] = deque(maxlen=_MAX_LOG)
        self._sockets: set[socket.socket] = set()
        self._request_ids = itertools.count(1)
        self.errors: list[BaseException] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle

    def start(self) -> FaultProxy:
        """Listen on a free loopback port and serve in the background."""
        if self._server is not None:
            raise RuntimeError("FaultProxy already started")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FaultProxy:{self._server.server_address[1]}",
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, cut every connection and join every thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._closing.set()
        server.shutdown()
        thread.join()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            # Wakes handler threads blocked in recv on either side.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()  # joins the handler threads (block_on_close)
        self._server = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` to give the client as its endpoint."""
        if self._server is None:
            raise RuntimeError("FaultProxy not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # rules

    def add_rule(self, rule: Rule) -> Rule:
        """Append a rule (rules are consulted in order); returns it for its counter."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove_rule(self, rule: Rule) -> None:
        """Remove one rule."""
        with self._lock:
            self._rules.remove(rule)

    def clear_rules(self) -> None:
        """Remove every rule; later requests pass untouched."""
        with self._lock:
            self._rules.clear()

    # counters

    @property
    def bytes_served(self) -> int:
        """Response body bytes written to clients, error bodies included."""
        with self._lock:
            return self._bytes_served

    @property
    def connections(self) -> int:
        """Client connections accepted; with keep-alive, far fewer than requests."""
        with self._lock:
            return self._connections

    @property
    def requests(self) -> Counter[tuple[str, int]]:
        """A copy of how many requests got each ``(method, status)``."""
        with self._lock:
            return Counter(self._requests)

    @property
    def log(self) -> list[RequestRecord]:
        """A copy of the last requests, oldest first (at most 100,000)."""
        with self._lock:
            return [entry.freeze() for entry in self._log]

    def fired(self, rule: Rule) -> int:
        """How many times ``rule`` fired since the last :meth:`reset_counters`."""
        with self._lock:
            return rule.fired

    def reset_counters(self) -> None:
        """Zero bytes served, connections, request counts, the log and rules' ``fired``."""
        with self._lock:
            self._bytes_served = 0
            self._connections = 0
            self._requests.clear()
            self._log.clear()
            for rule in self._rules:
                rule.fired = 0

    # used by the handlers

    def _plan(self, method: str, path: str, query: str, ranged: str | None) -> _Plan:
        plan = _Plan()
        with self._lock:
            for rule in self._rules:
                if not rule._matches(method, path, query, ranged):
                    continue
                action = rule.action
                terminal = isinstance(action, ResetAfter | TruncateAfter | Status)
                if terminal and plan.terminal is not None:
                    continue
                if not rule._should_fire():
                    continue
                rule._used += 1
                rule.fired += 1
                plan.names.append(type(action).__name__)
                if isinstance(action, ResetAfter | TruncateAfter | Status):
                    plan.terminal = action
                elif isinstance(action, FlipByte):
                    plan.flips.append(action)
                elif isinstance(action, SetHeaders):
                    for name, value in action.headers:
                        plan.set_headers[name.lower()] = (name, value)
                elif isinstance(action, DropHeaders):
                    plan.drop_headers.update(name.lower() for name in action.names)
                elif isinstance(action, SetStatus):
                    plan.status = action.code
                elif isinstance(action, IgnoreRange):
                    plan.ignore_range = True
                elif isinstance(action, Trickle):
                    plan.trickle = action
                elif isinstance(action, Stall):
                    plan.stall = action
                elif isinstance(action, IfMatch):
                    plan.if_match = action
                elif isinstance(action, Hook):
                    plan.hooks.append(action)
                else:
                    plan.before_headers += action.before_headers
                    plan.per_chunk += action.per_chunk
        return plan

    def _count_body(self, entry: _Entry, n: int) -> None:
        with self._lock:
            self._bytes_served += n
            entry.body_bytes += n

    def _record(self, entry: _Entry) -> None:
        with self._lock:
            self._requests[entry.method, entry.status] += 1
            self._log.append(entry)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closing.is_set():
                # close() has taken its list already: cut this one here.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def _sleep(self, seconds: float) -> None:
        # An Event wait, not time.sleep, so close() cuts a long delay short.
        if seconds > 0:
            self._closing.wait(seconds)

    def _next_request_id(self) -> str:
        return f"FAULTPROXY{next(self._request_ids):010d}"


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    # Non-daemon threads are remembered and joined by server_close(): no leaks.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Kept for tests to inspect instead of a traceback on stderr.
        exc = sys.exc_info()[1]
        if exc is not None:
            with self.proxy._lock:
                self.proxy.errors.append(exc)


def _whole_size(response: http.client.HTTPResponse) -> int | None:
    """The object size a ranged response's ``Content-Range`` gives, if it has one."""
    match = re.fullmatch(
        r"bytes \d+-\d+/(\d+)", (response.getheader("Content-Range") or "").strip()
    )
    return int(match[1]) if match else None


def _matches_etag(wanted: str | None, response: http.client.HTTPResponse) -> bool:
    """Whether an ``If-Match`` (absent, ``*``, or a list of ETags, quoted or bare) holds
    for ``response``; an error answer is left to speak for itself."""
    if wanted is None or response.status >= 300 or wanted.strip() == "*":
        return True

    def bare(tag: str) -> str:
        return tag.strip().removeprefix("W/").strip('"')

    etag = bare(response.getheader("ETag") or "")
    return any(bare(tag) == etag for tag in wanted.split(","))


class _ClientGone(Exception):
    """The client connection broke or was cut on purpose; stop serving it."""


# A reused upstream connection that the server closed while idle fails like this on
# the next request; a request without a body is then sent once more on a fresh one.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proxy = self.server.proxy
        self.proxy._track(self.connection)
        with self.proxy._lock:
            self.proxy._connections += 1
        self._upstream: http.client.HTTPConnection | None = None
        self._upstream_sock: socket.socket | None = None
        self._aborted = False
        self._entry = _Entry("", "", "", None, 0, ())

    def finish(self) -> None:
        self._close_upstream()
        self.proxy._untrack(self.connection)
        if not self._aborted:
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a test's output is not the place for an access log

    def handle_one_request(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline or self.proxy._closing.is_set():
                self.close_connection = True
                return
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414)
                return
            if not self.parse_request():
                return
            self._serve()
        except (_ClientGone, OSError):
            self.close_connection = True

    # one request

    def _serve(self) -> None:
        arrived = time.monotonic()
        target = urlsplit(self.path)
        ranged = self.headers.get("Range")
        plan = self.proxy._plan(self.command, target.path, target.query, ranged)
        self.proxy._sleep(plan.before_headers)
        for action in plan.hooks:
            action.callback()

        def record(code: int) -> None:
            # Counted before the client can see the answer, so a test that has its
            # response can trust the counters.
            entry = _Entry(
                self.command, target.path, target.query, ranged, code, tuple(plan.names), 0, arrived
            )
            self._entry = entry
            self.proxy._record(entry)

        if plan.stall is not None and plan.stall.after_bytes is None:
            record(0)  # no status: none was ever sent
            self._hold()
        if isinstance(plan.terminal, Status):
            self._copy_request_body(None)
            record(plan.terminal.code)
            self._send_s3_error(plan.terminal, plan)
            return
        try:
            response = self._forward()
        except (OSError, http.client.HTTPException) as exc:
            self._close_upstream()
            record(502)
            body = f"FaultProxy: upstream failed: {exc!r}".encode()
            self._send_head(502, "Bad Gateway", [("Content-Length", str(len(body)))])
            self._write_body(body)
            return
        if plan.if_match is not None and not _matches_etag(self.headers.get("If-Match"), response):
            # The body is not read: that upstream connection is spoiled.
            response.close()
            self._close_upstream()
            record(412)
            refusal = Status(412, "PreconditionFailed", dialect=plan.if_match.dialect)
            self._send_s3_error(refusal, plan)
            return
        try:
            whole = _whole_size(response) if plan.ignore_range else None
            code = plan.status or (200 if whole is not None else response.status)
            record(code)
            self._relay_response(response, plan, code, whole)
        finally:
            response.close()

    def _forward(self) -> http.client.HTTPResponse:
        has_body = "Transfer-Encoding" in self.headers or int(
            self.headers.get("Content-Length", "0") or 0
        )
        for attempt in (1, 2):
            reused = self._upstream is not None and self._upstream.sock is not None
            conn = self._connect_upstream()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        conn.putheader(name, value)
                conn.endheaders()
                self._copy_request_body(conn.send)
                return conn.getresponse()
            except _STALE:
                self._close_upstream()
                if attempt == 2 or not reused or has_body:
                    raise
        raise AssertionError("unreachable")

    def _connect_upstream(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(
                self.proxy.upstream_host, self.proxy.upstream_port, timeout=self.proxy.timeout
            )
        conn = self._upstream
        if conn.sock is None:
            conn.connect()
        if conn.sock is not self._upstream_sock:
            # http.client drops its socket after a "Connection: close" response.
            if self._upstream_sock is not None:
                self.proxy._untrack(self._upstream_sock)
            self._upstream_sock = conn.sock
            self.proxy._track(conn.sock)
        return conn

    def _close_upstream(self) -> None:
        conn, self._upstream = self._upstream, None
        sock, self._upstream_sock = self._upstream_sock, None
        if sock is not None:
            self.proxy._untrack(sock)
        if conn is not None:
            conn.close()

    def _copy_request_body(self, send: Callable[[bytes], None] | None) -> None:
        """Stream the request body to ``send`` (or drop it), keeping any chunked framing."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self._readline()
                if send:
                    send(line)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    break
                self._copy_exact(size + 2, send)
            while True:  # trailers, up to the empty line
                line = self._readline()
                if send:
                    send(line)
                if line in (b"\r\n", b"\n"):
                    return
        self._copy_exact(int(self.headers.get("Content-Length", "0") or 0), send)

    def _readline(self) -> bytes:
        line = self.rfile.readline(65537)
        if not line:
            raise _ClientGone
        return line

    def _copy_exact(self, n: int, send: Callable[[bytes], None] | None) -> None:
        while n > 0:
            data = self.rfile.read(min(n, self.proxy.chunk_size))
            if not data:
                raise _ClientGone
            if send:
                send(data)
            n -= len(data)

    def _relay_response(
        self, response: http.client.HTTPResponse, plan: _Plan, code: int, whole: int | None
    ) -> None:
        """Send ``response`` to the client as ``plan`` says, with status ``code``.

        ``whole`` (for :class:`IgnoreRange`) is the object's size to claim; the
        connection is closed after the shorter body.
        """
        headers = [
            (k, v)
            for k, v in response.getheaders()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "transfer-encoding"
        ]
        has_body = self.command != "HEAD" and response.status not in (204, 304)
        # Upstream chunked or close-delimited bodies are re-chunked, so the client
        # connection survives whatever framing upstream chose.
        chunked = has_body and response.length is None
        if chunked:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Transfer-Encoding", "chunked"))
        if whole is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "content-range"]
            if not chunked:
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Length", str(whole)))
        reason = (
            response.reason if code == response.status else http.client.responses.get(code, "Fault")
        )
        self._send_head(code, reason, plan.edit_headers(headers))

        terminal = plan.terminal
        limit = terminal.n_bytes if isinstance(terminal, ResetAfter | TruncateAfter) else None
        if plan.stall is not None and plan.stall.after_bytes is not None:
            limit = plan.stall.after_bytes
        buf = bytearray(self.proxy.chunk_size)
        view = memoryview(buf)
        sent = 0
        while has_body and (limit is None or sent < limit):
            want = len(buf) if limit is None else min(len(buf), limit - sent)
            try:
                n = response.readinto(view[:want])
            except (OSError, http.client.HTTPException):
                # Upstream broke mid-body: the client must see a broken body too.
                self._close_upstream()
                self._abort(rst=True)
            if not n:
                break
            for flip in plan.flips:
                if sent <= flip.offset < sent + n:
                    buf[flip.offset - sent] ^= flip.mask
            self.proxy._sleep(plan.per_chunk)
            step = n if plan.trickle is None else plan.trickle.n_bytes
            for at in range(0, n, step):
                piece = view[at : min(n, at + step)]
                if chunked:
                    self._write(b"%x\r\n" % len(piece))
                    self._write_body(piece)
                    self._write(b"\r\n")
                else:
                    self._write_body(piece)
                if plan.trickle is not None:
                    if self.proxy._closing.is_set():
                        self._abort(rst=False)
                    self.proxy._sleep(plan.trickle.interval)
            sent += n

        if plan.stall is not None:
            self._hold()

        if isinstance(terminal, ResetAfter | TruncateAfter):
            # The rest of the upstream body is not wanted; that connection is spoiled.
            self._close_upstream()
            self._abort(rst=isinstance(terminal, ResetAfter))
        if whole is not None and not chunked:
            self._abort(rst=False)  # fewer bytes than the Content-Length promised
        if chunked:
            self._write(b"0\r\n\r\n")
        if response.will_close:
            self._close_upstream()

    def _send_s3_error(self, error: Status, plan: _Plan) -> None:
        request_id = self.proxy._next_request_id()
        message = error.message or _S3_MESSAGES.get(error.s3_code, "Injected by FaultProxy")
        if error.dialect == "tos":
            body = json.dumps(
                {
                    "Code": error.s3_code,
                    "Message": message,
                    "RequestId": request_id,
                    "HostId": "faultproxy",
                    "EC": "0000-00000000",
                }
            ).encode()
            kind, id_header = "application/json", "x-tos-request-id"
        else:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{escape(error.s3_code)}</Code><Message>{escape(message)}</Message>"
                f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
            ).encode()
            kind, id_header = "application/xml", "x-amz-request-id"
        if self.command == "HEAD":
            body = b""  # stores send no body on HEAD; SDKs go by the status alone
        headers = [
            ("Content-Type", kind),
            ("Content-Length", str(len(body))),
            (id_header, request_id),
        ]
        if error.retry_after is not None:
            headers.append(("Retry-After", error.retry_after))
        reason = http.client.responses.get(error.code, "Fault")
        self._send_head(error.code, reason, plan.edit_headers(headers))
        self._write_body(body)

    # the client connection

    def _send_head(self, code: int, reason: str, headers: list[tuple[str, str]]) -> None:
        lines = [f"HTTP/1.1 {code} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if self.close_connection:
            lines.append("Connection: close")
        self._write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _write_body(self, data: bytes | memoryview) -> None:
        self.proxy._count_body(self._entry, len(data))  # before the client can see it
        self._write(data)

    def _write(self, data: bytes | memoryview) -> None:
        try:
            self.wfile.write(data)
        except OSError as exc:
            raise _ClientGone from exc

    def _hold(self) -> NoReturn:
        """Answer nothing more until the client hangs up or the proxy closes."""
        sock = self.connection
        while not self.proxy._closing.wait(0.05):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                try:
                    data = sock.recv(1, socket.MSG_PEEK)
                except OSError:
                    data = b""
                if not data:
                    break  # the client hung up
        self._close_upstream()
        self._abort(rst=False)

    def _abort(self, *, rst: bool) -> NoReturn:
        """Cut the client connection: RST when ``rst``, else a clean FIN."""
        sock = self.connection
        self.close_connection = True
        self._aborted = True
        with contextlib.suppress(OSError):
            if rst:
                # Linger 0 makes close() drop the send queue and answer with RST.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                sock.shutdown(socket.SHUT_WR)
        # The rfile holds a reference that would keep the descriptor open past close().
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.wfile.close()
        self.proxy._untrack(sock)
        sock.close()
        raise _ClientGone
