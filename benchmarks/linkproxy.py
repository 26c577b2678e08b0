"""A link emulator: a TCP proxy on loopback that makes a local store look far away.

::

    client ──▶ LinkProxy (127.0.0.1:free port) ──▶ rclone serve s3 / moto (loopback)

It is a byte pipe: nothing is parsed, so keep-alive, TLS and any protocol pass through
as they are. Each connection gets what a long, thin network path gives it:

- **Round-trip delay.** Every byte waits ``rtt / 2`` in each direction (a delay line,
  per connection and direction), so a request's first response byte comes one ``rtt``
  after the request was sent, on a new or a kept-alive connection alike. A new
  connection also waits one ``rtt`` before its first byte is forwarded, for the TCP
  handshake a real path would cost (loopback completes it at once): the first request
  on a connection costs two round trips, a later one on the same connection one.
- **A per-connection rate.** Each direction of each connection is paced by a token
  bucket to ``rate`` bytes per second, like one TCP stream over a path whose window or
  fair share caps it; ``total_rate`` adds one bucket shared by every connection (the
  access link). Bytes leave in bursts of 20 ms of the rate (at least 64 KiB), about
  what a TCP sender puts on the wire per round trip; a new connection may start with
  one such burst.

What it does not emulate: loss, TCP slow start or congestion control; its buffer per
direction (a kernel pipe of up to 1 MiB, or 4 MiB in memory) bounds what is in flight,
so ``rate * rtt / 2`` plus a burst must stay well under that (16 MB/s: 160 + 320 kB).

Cost: one thread per connection direction. On Linux, bytes move with ``os.splice``
from the socket into a pipe and from the pipe into the other socket, never entering
Python; elsewhere ``recv``/``send`` with large buffers. The benchmark runs it as a
process of its own (``python linkproxy.py ...``) and reads that process's CPU time.

In code::

    with LinkProxy(("127.0.0.1", 9000), rtt=0.020, rate=16e6) as proxy:
        ...  # connect to proxy.address
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["LinkProxy", "TokenBucket", "main", "parse_rate"]

_PIPE_BYTES = 1 << 20  # Linux's default /proc/sys/fs/pipe-max-size for a normal user
_MEMORY_BYTES = 4 << 20
_MIN_BURST = 64 * 1024
# A bucket holds this many seconds of its rate: a TCP window at 20 ms, few wake-ups.
_BURST_SECONDS = 0.020
_ACCEPT_POLL_S = 0.1
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9}
_UNITS |= {"gb": 10**9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
# How a connection ends when one side goes away; anything else is also printed.
_CUT = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF, None})
_SPLICE = sys.platform == "linux" and hasattr(os, "splice")


def parse_rate(text: str) -> float:
    """Bytes per second from ``16MB``, ``16MiB``, ``2.5e6``, ``16MB/s`` (decimal MB)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)(?:/s)?\s*", text)
    if match is None or match[2].lower() not in _UNITS:
        raise ValueError(f"not a rate: {text!r} (say 16MB, 16MiB or 16000000)")
    return float(match[1]) * _UNITS[match[2].lower()]


class TokenBucket:
    """Bytes allowed at ``rate`` per second, at most ``burst`` saved up; thread-safe."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst or max(_MIN_BURST, int(rate * _BURST_SECONDS))
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def available(self, now: float) -> int:
        with self._lock:
            self._refill(now)
            return int(self._tokens)

    def take(self, want: int, least: int, now: float) -> int:
        """Up to ``want`` bytes if at least ``least`` are available now, else 0."""
        with self._lock:
            self._refill(now)
            if self._tokens < least:
                return 0
            grant = min(want, int(self._tokens))
            self._tokens -= grant
            return grant

    def wait_for(self, n: int, now: float) -> float:
        """Seconds until ``n`` bytes (at most a burst) are available."""
        with self._lock:
            self._refill(now)
            return max(0.0, (min(n, self.burst) - self._tokens) / self.rate)

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now


class _KernelPipe:
    """Bytes held in a kernel pipe: spliced in from one socket, out to the other."""

    def __init__(self) -> None:
        import fcntl  # Unix only, like splice

        self._r, self._w = os.pipe()
        with contextlib.suppress(OSError):  # a lower pipe-max-size: keep the default
            fcntl.fcntl(self._w, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self.capacity: int = fcntl.fcntl(self._r, fcntl.F_GETPIPE_SZ)

    def fill(self, sock: socket.socket, n: int) -> int | None:
        """Bytes moved in (0 at end of stream), None when the pipe has no room."""
        try:
            return os.splice(
                sock.fileno(), self._w, n, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
            )
        except BlockingIOError:
            return None

    def send(self, sock: socket.socket, n: int) -> int:
        return os.splice(self._r, sock.fileno(), n, flags=os.SPLICE_F_MOVE)

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class _MemoryPipe:
    """The same with ``recv``/``send`` and a queue of buffers, where splice is missing."""

    capacity = _MEMORY_BYTES

    def __init__(self) -> None:
        self._chunks: collections.deque[memoryview] = collections.deque()

    def fill(self, sock: socket.socket, n: int) -> int | None:
        data = sock.recv(n)
        if data:
            self._chunks.append(memoryview(data))
        return len(data)

    def send(self, sock: socket.socket, n: int) -> int:
        head = self._chunks[0]
        sent = sock.send(head[:n])
        if sent == len(head):
            self._chunks.popleft()
        else:
            self._chunks[0] = head[sent:]
        return sent

    def close(self) -> None:
        self._chunks.clear()


class LinkProxy:
    """Forward connections to ``upstream`` through an emulated link; a context manager.

    ``rtt`` in seconds; ``rate`` and ``total_rate`` in bytes per second (None: no
    limit). ``address`` is where to connect once started. Counters: ``connections``,
    ``bytes_up`` (client to upstream) and ``bytes_down``.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        rtt: float = 0.0,
        rate: float | None = None,
        total_rate: float | None = None,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        use_splice: bool = _SPLICE,
    ) -> None:
        self.upstream = upstream
        self.rtt = rtt
        self.rate = rate
        self._total = TokenBucket(total_rate) if total_rate else None
        self._listen_at = listen
        self._splice = use_splice
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0

    @property
    def address(self) -> tuple[str, int]:
        if self._listener is None:
            raise RuntimeError("LinkProxy is not started")
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the proxy (use ``https://`` when upstream speaks TLS)."""
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> LinkProxy:
        self._listener = socket.create_server(self._listen_at, backlog=256)
        self._spawn(self._accept_loop, "linkproxy-accept")
        return self

    def close(self) -> None:
        """Stop accepting, cut every connection and join every thread."""
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        while True:
            with self._lock:
                threads = [t for t in self._threads if t.is_alive()]
            if not threads:
                break
            for thread in threads:
                thread.join()
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> LinkProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            # A timeout rather than a blocking accept: closing a listening socket from
            # another thread does not wake accept() everywhere.
            ready, _, _ = select.select([self._listener], [], [], _ACCEPT_POLL_S)
            if not ready:
                continue
            try:
                client, _addr = self._listener.accept()
            except OSError:
                continue
            self._spawn(self._connection, "linkproxy-conn", client, time.monotonic())

    def _connection(self, client: socket.socket, accepted: float) -> None:
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
            self._sockets.update((client, upstream))
            if self._stop.is_set():  # close() has taken its list of sockets already
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        down = threading.Thread(
            target=self._relay, args=(upstream, client, "down", 0.0), daemon=True
        )
        down.start()
        # The handshake a real path would cost: the client's first bytes wait one rtt.
        self._relay(client, upstream, "up", accepted + self.rtt)
        down.join()
        with self._lock:
            self._sockets.difference_update((client, upstream))
        client.close()
        upstream.close()

    def _relay(self, src: socket.socket, dst: socket.socket, way: str, not_before: float) -> None:
        """Copy ``src`` to ``dst`` through the delay line and the buckets, until EOF."""
        pipe: _KernelPipe | _MemoryPipe = _KernelPipe() if self._splice else _MemoryPipe()
        bucket = TokenBucket(self.rate) if self.rate else None
        total = self._total if way == "down" else None
        buckets = [b for b in (bucket, total) if b is not None]
        # Bytes go out a bucket's burst (~20 ms of its rate) at a time: few wake-ups.
        burst = min((b.burst for b in buckets), default=pipe.capacity)
        delay = self.rtt / 2
        pending: collections.deque[list[float]] = collections.deque()  # [due, bytes]
        held = 0
        open_ = True
        full = False
        try:
            while open_ or pending:
                now = time.monotonic()
                due = 0
                for when, n in pending:
                    if when > now:
                        break
                    due += int(n)
                timeout: float | None = None
                if due:
                    least = min(due, burst)
                    grant = due if bucket is None else min(due, bucket.available(now))
                    if total is not None and grant >= least:
                        grant = total.take(grant, least, now)
                    if grant >= least:
                        if bucket is not None:
                            bucket.take(grant, 0, now)
                        sent = pipe.send(dst, grant)
                        if sent <= 0:
                            raise ConnectionError("destination closed")
                        held -= sent
                        full = False
                        self._count(way, sent)
                        _consume(pending, sent)
                        continue
                    timeout = max(b.wait_for(least, now) for b in buckets) or 0.001
                elif pending:
                    timeout = pending[0][0] - now
                if now < not_before:  # nothing read yet: the connection's handshake
                    time.sleep(not_before - now)
                    continue
                if not open_ or full or held >= pipe.capacity:
                    if timeout is None:  # nothing left to send
                        break
                    time.sleep(timeout)
                    continue
                readable, _, _ = select.select([src], [], [], timeout)
                if not readable:
                    continue
                got = pipe.fill(src, pipe.capacity - held)
                if got is None:
                    full = True
                elif got == 0:
                    open_ = False
                else:
                    held += got
                    pending.append([time.monotonic() + delay, got])
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            # A reset on one side is passed on to the other as a cut connection.
            if exc.errno not in _CUT:
                print(f"linkproxy: {way}: {exc!r}", file=sys.stderr)
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            pipe.close()

    def _count(self, way: str, n: int) -> None:
        with self._lock:
            if way == "up":
                self.bytes_up += n
            else:
                self.bytes_down += n


def _consume(pending: collections.deque[list[float]], sent: int) -> None:
    """Drop ``sent`` bytes from the front of the delay line."""
    while sent:
        head = int(pending[0][1])
        if head > sent:
            pending[0][1] = head - sent
            return
        pending.popleft()
        sent -= head


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print ``listening HOST:PORT`` once ready."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the store")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default a free port)")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip delay, ms")
    parser.add_argument("--rate", type=parse_rate, help="per connection and direction, e.g. 16MB")
    parser.add_argument("--total-rate", type=parse_rate, help="cap over all connections")
    parser.add_argument("--no-splice", action="store_true", help="recv/send instead of splice")
    args = parser.parse_args(argv)
    up_host, up_port = args.upstream.rsplit(":", 1)
    host, port = args.listen.rsplit(":", 1)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    proxy = LinkProxy(
        (up_host, int(up_port)),
        rtt=args.rtt_ms / 1000,
        rate=args.rate,
        total_rate=args.total_rate,
        listen=(host, int(port)),
        use_splice=_SPLICE and not args.no_splice,
    )
    with proxy:
        print("listening {}:{}".format(*proxy.address), flush=True)
        done.wait()
    print(
        f"connections {proxy.connections} up {proxy.bytes_up} down {proxy.bytes_down}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
