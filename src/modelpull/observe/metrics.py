"""Prometheus metrics of a pull, recorded: the metric definitions and the engine observer.

Exporting them (an HTTP endpoint, a node_exporter textfile) is :mod:`modelpull.observe.export`.
Needs the optional ``[metrics]`` extra (prometheus-client); importing this module
without it raises :class:`~modelpull.errors.BackendUnavailableError`, so the core
package, which never imports it, works without the extra.

Every series carries ``backend`` and ``bucket`` and nothing per object: keys would make
the cardinality unbounded. ``docs/metrics.md`` lists the metrics and example alerts; a
test keeps that list equal to what :class:`MetricsObserver` registers.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from modelpull.errors import BackendUnavailableError, IntegrityError
from modelpull.events import (
    BytesTransferred,
    ConcurrencyChanged,
    Event,
    FileDone,
    FileFailed,
    FileResumed,
    FileSkipped,
    FileVerified,
    PartHedged,
    PartRetried,
    PartsRepaired,
    PullFinished,
    PullStarted,
    RequestFinished,
    RequestStarted,
)

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.metrics_core import CounterMetricFamily, Metric
except ImportError as exc:  # the optional [metrics] extra
    raise BackendUnavailableError(
        "metrics need prometheus-client: pip install 'modelpull[metrics]'"
    ) from exc

__all__ = [
    "FILE_BUCKETS",
    "INTEGRITY_RETRY_REASON",
    "REQUEST_BUCKETS",
    "MetricsObserver",
]

# Seconds. One histogram serves both phases of a request (see docs/metrics.md): time to
# first byte sits in the low buckets, a whole 32 MiB part in the high ones.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Seconds per file, from a config.json to a 10 GB shard on a slow link.
FILE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# A PartRetried with this reason means a whole file failed its checksum and is fetched
# again; it counts as an integrity failure as well as a retry.
INTEGRITY_RETRY_REASON = "integrity"

_LABELS = ("backend", "bucket")


class _PerThreadSum:
    """A sum that threads add to without a lock; readers add up every thread's cell.

    Each cell has one writer (its thread), so no increment is lost, and a reader sees
    each cell's latest whole value. This keeps the once-per-MiB byte count at a
    thread-local lookup instead of prometheus-client's mutex.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._cells: list[list[int]] = []
        self._lock = threading.Lock()  # only when a thread adds its first bytes

    def add(self, n: int) -> None:
        try:
            cell: list[int] = self._local.cell
        except AttributeError:
            cell = self._local.cell = [0]
            with self._lock:
                self._cells.append(cell)
        cell[0] += n

    def value(self) -> int:
        with self._lock:
            cells = tuple(self._cells)
        return sum(cell[0] for cell in cells)


class _BytesCollector:
    """``modelpull_bytes_downloaded_total``, read from the per-thread sums at scrape time."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str], _PerThreadSum] = {}
        self._lock = threading.Lock()

    def sum_for(self, labels: tuple[str, str]) -> _PerThreadSum:
        with self._lock:
            return self._sums.setdefault(labels, _PerThreadSum())

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(
            "modelpull_bytes_downloaded",
            "Bytes received from the store and written to temp files (failed attempts "
            "included; see modelpull_bytes_discarded_total).",
            labels=_LABELS,
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        with self._lock:
            sums = list(self._sums.items())
        for labels, total in sums:
            family.add_metric(list(labels), float(total.value()))
        return [family]


class _Metrics:
    """The metric objects of one registry, shared by every observer recording on it."""

    def __init__(self, reg: CollectorRegistry) -> None:
        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(name, doc, [*_LABELS, *extra], registry=reg)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, _LABELS, registry=reg)

        self.bytes = _BytesCollector()
        reg.register(self.bytes)
        self.discarded = counter(
            "modelpull_bytes_discarded", "Downloaded bytes thrown away to refetch a file."
        )
        self.resumed = counter(
            "modelpull_bytes_resumed", "Bytes kept from an interrupted earlier pull."
        )
        self.files_done = counter(
            "modelpull_files_downloaded", "Files fetched, verified and in place."
        )
        self.files_skipped = counter(
            "modelpull_files_skipped", "Files already complete in the destination."
        )
        self.files_failed = counter("modelpull_files_failed", "Files that failed for good.")
        self.integrity = counter(
            "modelpull_integrity_failures",
            "Files whose bytes did not match the store's checksum (refetched or failed).",
        )
        self.requests = counter(
            "modelpull_requests",
            "Requests to the store by method and HTTP status (or error reason).",
            "method",
            "status",
        )
        self.retries = counter(
            "modelpull_retries", "Retries by reason (HTTP status, error code, network).", "reason"
        )
        self.verified = counter(
            "modelpull_checksums_verified", "Checksums that matched, by kind.", "kind"
        )
        self.request_seconds = Histogram(
            "modelpull_request_duration_seconds",
            "Request latency: phase=first_byte until the response headers, "
            "phase=total until the last byte.",
            [*_LABELS, "method", "phase"],
            registry=reg,
            buckets=REQUEST_BUCKETS,
        )
        self.file_seconds = Histogram(
            "modelpull_file_download_duration_seconds",
            "Seconds from a file's first request to its verified rename.",
            _LABELS,
            registry=reg,
            buckets=FILE_BUCKETS,
        )
        self.inflight = gauge("modelpull_inflight_requests", "Requests to the store in flight now.")
        self.concurrency = gauge(
            "modelpull_concurrency_limit",
            "Requests allowed in flight now: pinned, or as adaptive concurrency set it.",
        )
        self.hedges = counter(
            "modelpull_hedged_parts", "Parts whose tail a fresh request fetched (far slower)."
        )
        self.repaired = counter(
            "modelpull_parts_repaired",
            "Parts fetched again after failing a check, by reason (resume, integrity).",
            "reason",
        )
        self.planned_files = gauge(
            "modelpull_planned_files", "Files the pull covers, already complete ones included."
        )
        self.planned_bytes = gauge(
            "modelpull_planned_bytes", "Bytes the pull covers, already complete ones included."
        )
        self.success = gauge(
            "modelpull_pull_success", "1 when the pull ended complete, 0 when it failed."
        )
        self.duration = gauge("modelpull_pull_duration_seconds", "Seconds the pull took.")
        self.ended = gauge(
            "modelpull_pull_end_timestamp_seconds", "Unix time at which the pull ended."
        )


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_BY_REGISTRY_LOCK = threading.Lock()


def _metrics_on(registry: CollectorRegistry) -> _Metrics:
    with _BY_REGISTRY_LOCK:
        found = _BY_REGISTRY.get(registry)
        if found is None:
            found = _BY_REGISTRY[registry] = _Metrics(registry)
        return found


class MetricsObserver:
    """An engine observer that records a pull's metrics on ``registry``.

    ``registry`` defaults to a fresh private :class:`CollectorRegistry`, so two pulls in
    one process never mix. Pass your own (an application's, or
    ``prometheus_client.REGISTRY``) to export many pulls from one endpoint: observers on
    the same registry share its metrics, so counters add up across pulls as Prometheus
    expects of a process's counters, and the gauges show the latest pull per bucket.

    ``backend`` and ``bucket`` label every series; they are given here rather than learnt
    from ``PullStarted`` because listing retries come before that event, and so that
    each counter is exported at 0 from the start (a series that appears with its first
    increment hides that increment from ``rate()``).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        backend: str,
        bucket: str,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        m = _metrics_on(self.registry)
        labels = (backend, bucket)
        self._labels = labels
        self._m = m
        self._bytes = m.bytes.sum_for(labels)
        # Children bound once: .labels() takes a lock and a lookup on every call.
        self._discarded = m.discarded.labels(*labels)
        self._resumed = m.resumed.labels(*labels)
        self._files_done = m.files_done.labels(*labels)
        self._files_skipped = m.files_skipped.labels(*labels)
        self._files_failed = m.files_failed.labels(*labels)
        self._integrity = m.integrity.labels(*labels)
        self._file_seconds = m.file_seconds.labels(*labels)
        self._inflight = m.inflight.labels(*labels)
        self._concurrency = m.concurrency.labels(*labels)
        self._hedges = m.hedges.labels(*labels)
        self._planned_files = m.planned_files.labels(*labels)
        self._planned_bytes = m.planned_bytes.labels(*labels)
        self._children: dict[tuple[int | str, ...], Any] = {}
        for phase in ("first_byte", "total"):
            self._child(m.request_seconds, "GET", phase)

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        key: tuple[int | str, ...] = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*self._labels, *values))
        return child

    def __call__(self, event: Event) -> None:
        # Most frequent first: one event per I/O chunk (1 MiB) from every worker.
        if type(event) is BytesTransferred:
            if event.bytes >= 0:
                self._bytes.add(event.bytes)
            else:
                self._discarded.inc(-event.bytes)
            return
        m = self._m
        match event:
            case RequestStarted():
                self._inflight.inc()
            case RequestFinished():
                self._inflight.dec()
                self._child(m.requests, event.method, event.status).inc()
                if event.first_byte_seconds is not None:
                    first = self._child(m.request_seconds, event.method, "first_byte")
                    first.observe(event.first_byte_seconds)
                self._child(m.request_seconds, event.method, "total").observe(event.seconds)
            case FileDone():
                self._files_done.inc()
                self._file_seconds.observe(event.seconds)
            case FileSkipped():
                self._files_skipped.inc()
            case FileResumed():
                self._resumed.inc(event.bytes)
            case FileVerified():
                self._child(m.verified, event.kind).inc()
            case PartRetried():
                self._child(m.retries, event.reason).inc()
                if event.reason == INTEGRITY_RETRY_REASON:
                    self._integrity.inc()
            case FileFailed():
                self._files_failed.inc()
                if isinstance(event.error, IntegrityError):
                    self._integrity.inc()
            case ConcurrencyChanged():
                self._concurrency.set(event.limit)
            case PartHedged():
                self._hedges.inc()
            case PartsRepaired():
                self._child(m.repaired, event.reason).inc(event.parts)
            case PullStarted():
                self._planned_files.set(event.files)
                self._planned_bytes.set(event.bytes)
            case PullFinished():
                m.success.labels(*self._labels).set(1 if event.ok else 0)
                m.duration.labels(*self._labels).set(event.seconds)
                m.ended.labels(*self._labels).set(time.time())
            case _:
                pass
