"""Requests to the store for one pull: each under the retry policy, each reported as
request events, each watched (:mod:`modelpull.watch`), all abandoned once the pull stops.

:class:`Fetcher` is the engine's only way to the backend. Each attempt of a request is a
flight of the pull's watchdog, which abandons it when it stalls (a retry, reason
``stall``) and interrupts it when the pull stops or its deadline passes. A part is
fetched straight into its :class:`~modelpull.partfile.PartFile`: each piece the backend
reads is written at its offset, hashed and counted as it passes; a failed attempt keeps
what it wrote and the next one resumes from the byte it reached, unless the store
ignores ``Range`` (:attr:`Fetcher.whole`): then it starts the object over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from modelpull.backends.base import Backend, RangeResult
from modelpull.errors import ModelPullError, StoreError
from modelpull.events import BytesTransferred, Event, RequestFinished, RequestStarted
from modelpull.hashing import PartValues
from modelpull.objects import Layout, ObjectInfo
from modelpull.partfile import PartFile
from modelpull.ratelimit import RateLimiter
from modelpull.retry import RetryPolicy, retry_events
from modelpull.watch import Stopped, Watchdog, current

__all__ = ["Fetcher", "Stopped"]

T = TypeVar("T")

log = logging.getLogger("modelpull")


class Fetcher:
    """One pull's requests to ``bucket`` through ``backend``."""

    def __init__(
        self,
        backend: Backend,
        bucket: str,
        emit: Callable[[Event], None],
        retry: RetryPolicy,
        watch: Watchdog,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._backend = backend
        self._bucket = bucket
        self._emit = emit
        self._retry = retry
        self._watch = watch
        self._stop = watch.halted
        self._limiter = limiter
        # The store ignores Range: a part is the whole object, sent without one, and an
        # attempt cannot resume where another broke off.
        self.whole = False

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag and checksums of one object, retried."""
        return self.metadata(lambda: self._backend.head(self._bucket, key))

    def layout(self, obj: ObjectInfo, *, checksums: bool) -> Layout | None:
        """How ``obj`` was uploaded in parts, retried; ``None`` when the store will not say
        (or refuses: verification then falls back to what it can do without)."""
        try:
            return self.metadata(
                lambda: self._backend.upload_parts(self._bucket, obj, checksums=checksums)
            )
        except StoreError as exc:
            if self._stop.is_set():
                raise Stopped from None
            log.debug("%s: no part layout from the store: %s", obj.key, exc)
            return None

    def metadata(self, fn: Callable[[], T], method: str = "HEAD") -> T:
        """A metadata request under the same retry policy as the parts."""

        def request() -> T:
            self._emit(RequestStarted(path="", method=method))
            began = time.monotonic()
            try:
                with self._watch.request("", method):
                    info = fn()
            except BaseException as exc:
                seconds = time.monotonic() - began
                self._emit(RequestFinished("", method, status_of(exc), None, seconds, 0))
                raise
            seconds = time.monotonic() - began
            self._emit(RequestFinished("", method, "200", seconds, seconds, 0))
            return info

        return self._retry.call(request, on_retry=retry_events(self._emit), stop=self._stop)

    def part(self, pf: PartFile, index: int, buffer: memoryview) -> PartValues:
        """Part ``index`` of ``pf`` from the store into its temp file; its values."""
        start, end = pf.parts[index]
        obj = pf.obj
        emit, path, stop, limiter = self._emit, pf.path, self._stop, self._limiter
        write = pf.write
        hasher = pf.hasher(index)
        offset = start
        watch = self._watch

        def sink(view: memoryview) -> None:
            nonlocal offset
            flight = current()
            assert flight is not None
            n = len(view)
            if limiter is not None:
                with flight.busy():
                    limiter.take(n, stop)
            # Refused once the flight is aborted: no byte of an abandoned response lands.
            with flight.writing():
                write(view, offset)
            hasher.update(view)
            offset += n
            emit(BytesTransferred(path=path, bytes=n))

        def request() -> RangeResult:
            nonlocal offset, hasher
            if self.whole and offset > start == 0 and end == obj.size:
                # Asking for the rest of the object would need Range: start it over.
                pf.truncate(start)
                emit(BytesTransferred(path=path, bytes=start - offset))
                offset, hasher = start, pf.hasher(index)
            with watch.request(path, "GET"):
                return self._backend.read_range(obj, self._bucket, offset, end, buffer, sink)

        self._attempts(path, request, lambda: offset)
        pf.written(index)
        return hasher.values()

    def _attempts(
        self, path: str, request: Callable[[], RangeResult], received: Callable[[], int]
    ) -> RangeResult:
        """``request()`` under the retry policy, each attempt reported as request events.

        ``received()`` tells how far the transfer got: bytes written by a failed attempt
        stay, and the next attempt resumes from there.
        """
        emit = self._emit

        def attempt() -> RangeResult:
            emit(RequestStarted(path=path, method="GET"))
            began, before = time.monotonic(), received()
            try:
                result = request()
            except BaseException as exc:
                seconds, done = time.monotonic() - began, received() - before
                emit(RequestFinished(path, "GET", status_of(exc), None, seconds, done))
                raise
            seconds, done = time.monotonic() - began, received() - before
            status, ttfb = str(result.status), result.first_byte_seconds
            emit(RequestFinished(path, "GET", status, ttfb, seconds, done))
            return result

        try:
            return self._retry.call(
                attempt, what=path, on_retry=retry_events(emit, path), stop=self._stop
            )
        except ModelPullError:
            if self._stop.is_set():
                raise Stopped from None
            raise


def status_of(exc: BaseException) -> str:
    """A bounded label for a failed request: the HTTP status, else the error's reason."""
    if isinstance(exc, StoreError):
        return str(exc.status) if exc.status else (exc.reason or "error")
    if isinstance(exc, Stopped):
        return "stopped"
    return "error"
