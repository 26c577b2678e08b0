"""Prometheus metrics of a pull, exported: ``/metrics`` over HTTP and a node_exporter textfile.

:func:`export_metrics` is the CLI's glue (``--metrics-port``, ``--metrics-file``); the
metrics themselves are recorded by :class:`~modelpull.observe.metrics.MetricsObserver`.
Needs the ``[metrics]`` extra, as :mod:`modelpull.observe.metrics` does.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from modelpull.errors import DestinationError, UsageError

# First: it raises BackendUnavailableError when the [metrics] extra is missing, which
# makes the plain prometheus_client imports of this module safe.
from modelpull.observe.metrics import MetricsObserver  # isort: skip

from prometheus_client import CollectorRegistry, make_wsgi_app, write_to_textfile  # isort: skip

__all__ = [
    "DEFAULT_METRICS_ADDR",
    "MetricsServer",
    "check_textfile_path",
    "export_metrics",
    "parse_listen",
    "serve",
    "write_textfile",
]

# All interfaces, as Prometheus exporters do: the scraper is usually on another host.
DEFAULT_METRICS_ADDR = "0.0.0.0"  # noqa: S104

log = logging.getLogger("modelpull")


# -- the /metrics endpoint ---------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr: it would interleave with progress and logs."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    # A slow scraper must not hold up another, nor keep the process alive at exit.
    daemon_threads = True


class MetricsServer:
    """``/metrics`` served over HTTP from a daemon thread until :meth:`close` (or the
    end of a ``with`` block).

    Made here rather than with ``prometheus_client.start_http_server`` because that
    returns no handle before 0.20, and its handle's ``shutdown`` leaves the port bound.
    """

    def __init__(
        self, port: int, registry: CollectorRegistry, *, addr: str = DEFAULT_METRICS_ADDR
    ) -> None:
        # An IPv6 address needs an AF_INET6 socket; WSGIServer's default is AF_INET.
        info = socket.getaddrinfo(
            addr or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        server_class = type("_Server", (_ThreadingServer,), {"address_family": info[0]})
        self._httpd: WSGIServer = make_server(
            str(info[4][0]),
            port,
            make_wsgi_app(registry),
            server_class=server_class,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="modelpull-metrics", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """The bound port: the one asked for, or the one chosen for port 0."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Where to scrape from this host (loopback when bound to all interfaces)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.address, self.address)  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def parse_listen(value: str) -> tuple[str, int]:
    """``PORT``, ``ADDR:PORT`` or ``[IPv6]:PORT`` as given to ``--metrics-port``."""
    addr, sep, port_text = value.rpartition(":")
    if not sep:
        addr = DEFAULT_METRICS_ADDR
    elif addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535 or (sep and not addr):
        raise UsageError(f"--metrics-port must be PORT or ADDR:PORT (0-65535), not {value!r}")
    return addr, port


def serve(
    port: int, registry: CollectorRegistry, *, addr: str = DEFAULT_METRICS_ADDR
) -> MetricsServer:
    """Serve ``registry`` on ``http://addr:port/metrics`` (all interfaces by default).

    Port 0 picks a free port (see :attr:`MetricsServer.port`). A port in use or an
    address that cannot be bound raises :class:`~modelpull.errors.UsageError`.
    """
    try:
        return MetricsServer(port, registry, addr=addr)
    except OSError as exc:
        why = "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise UsageError(f"cannot serve metrics on {addr}:{port}: {why}") from exc


# -- the node_exporter textfile -----------------------------------------------------------


def check_textfile_path(path: str | os.PathLike[str]) -> None:
    """Fail before the pull when the textfile's folder is missing or not writable."""
    folder = os.path.dirname(os.path.abspath(path))  # noqa: PTH100, PTH120
    if not os.path.isdir(folder):  # noqa: PTH112
        raise UsageError(f"--metrics-file: no such folder: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--metrics-file: cannot write to {folder}")


def write_textfile(path: str | os.PathLike[str], registry: CollectorRegistry) -> None:
    """Write ``registry`` to ``path`` in the text format node_exporter's textfile reads.

    Atomic: prometheus-client writes a temp file beside ``path`` and renames it over, so
    a collector never reads half a file (name it ``*.prom`` for the textfile collector;
    the temp name does not end in ``.prom``). Raises
    :class:`~modelpull.errors.DestinationError` when it cannot be written.
    """
    try:
        write_to_textfile(os.fspath(path), registry)
    except OSError as exc:
        raise DestinationError(
            f"cannot write metrics file {os.fspath(path)}: {exc.strerror or exc}",
            errno=exc.errno,
        ) from exc


@contextmanager
def export_metrics(
    *,
    backend: str,
    bucket: str,
    listen: str | None = None,
    textfile: str | os.PathLike[str] | None = None,
    registry: CollectorRegistry | None = None,
) -> Iterator[MetricsObserver]:
    """The CLI's metrics: an observer, served on ``listen`` during the block, written
    to ``textfile`` at its end, failed pulls included (they are what alerts need).

    ``listen`` is ``--metrics-port``'s ``[ADDR:]PORT``. A textfile error after a failed
    pull is logged rather than raised, so it never hides the pull's own error.
    """
    if textfile is not None:
        check_textfile_path(textfile)
    observer = MetricsObserver(registry, backend=backend, bucket=bucket)
    server = None
    if listen is not None:
        addr, port = parse_listen(listen)
        server = serve(port, observer.registry, addr=addr)
        host = f"[{addr}]" if ":" in addr else addr
        log.info("serving metrics on http://%s:%d/metrics", host, server.port)
    failed = True
    try:
        yield observer
        failed = False
    finally:
        if server is not None:
            server.close()
        if textfile is not None:
            try:
                write_textfile(textfile, observer.registry)
            except DestinationError:
                if not failed:
                    raise
                log.exception("could not write the metrics file")
