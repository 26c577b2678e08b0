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

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from modelpull.backends.base import Backend, RangeResult
from modelpull.checksums import CRC_KINDS
from modelpull.errors import ModelPullError, StoreError
from modelpull.events import BytesTransferred, Event, RequestFinished, RequestStarted
from modelpull.hashing import PartHasher, PartValues
from modelpull.hedge import Recent, Span
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
        self.recent = Recent()  # rates of the last parts done, for hedging
        self._spans: dict[tuple[str, int], Span] = {}
        self._spans_lock = threading.Lock()

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

    def spans(self) -> list[Span]:
        """The parts in flight now that a hedge may split."""
        with self._spans_lock:
            return list(self._spans.values())

    def part(self, pf: PartFile, index: int, buffer: memoryview) -> PartValues:
        """Part ``index`` of ``pf`` from the store into its temp file; its values.

        Its tail may be handed to a hedge (:mod:`modelpull.hedge`) while it runs; then
        the part's values combine this request's and the hedge's.
        """
        start, end = pf.parts[index]
        span = Span(pf.path, index, start, end)
        # Nor a file fetched without a HEAD: its one GET's headers bring its checksums,
        # and a request a hedge cut short ends without them (only the ETag was checked).
        hedgeable = pf.verifier.splittable and not self.whole and not pf.headless
        if hedgeable:
            with self._spans_lock:
                self._spans[(pf.path, index)] = span
        try:
            hasher, answer = self._range(pf, span, lambda: pf.hasher(index), buffer)
            while span.hedged:
                span.tail_done.wait(0.2)
                if self._stop.is_set():
                    raise Stopped
                if span.tail_done.is_set() and span.tail is None:
                    span.take_back()  # the hedge failed: fetch the tail here after all
                    hasher, _ = self._range(pf, span, functools.partial(_same, hasher), buffer)
                if span.tail_done.is_set():
                    break
        except BaseException:
            span.abandon()
            raise
        finally:
            if hedgeable:
                with self._spans_lock:
                    self._spans.pop((pf.path, index), None)
        self.recent.add(span.rate(time.monotonic()))
        pf.written(index)
        values = hasher.values()
        if span.hedged and span.tail is not None:
            values = joined(values, span.tail, end - span.end)
        if answer is not None and pf.learn(answer.checksums, answer.checksum_type, answer.etag_md5):
            values = pf.reread(index)  # for the checks the answer brought
        return values

    def tail(self, pf: PartFile, span: Span, buffer: memoryview) -> None:
        """A hedge: ``[span.end, span.full_end)`` on a fresh connection, for ``span``'s
        own request to combine; a failure leaves the range to that request."""
        tail = Span(span.path, span.index, span.end, span.full_end)
        try:
            if not span.adopt_hedge(tail):
                return  # its part failed before the hedge began
            hasher, _ = self._range(pf, tail, pf.verifier.crc_hasher, buffer)
            span.tail = hasher.values()
        except Exception as exc:  # the part's own request fetches the range instead
            log.info("%s: hedge of part %d gave up (%s)", span.path, span.index, exc)
        finally:
            span.tail_done.set()

    def _range(
        self,
        pf: PartFile,
        span: Span,
        new_hasher: Callable[[], PartHasher],
        buffer: memoryview,
    ) -> tuple[PartHasher, RangeResult | None]:
        """``[span.offset, span.end)`` into ``pf``, under the retry policy; its hasher and
        the last answer (``None`` when a hedge ended it early).

        ``span.end`` may move earlier meanwhile (a hedge took the rest): each write is
        cut at it, under the span's lock, so no byte is written by two requests.
        """
        obj = pf.obj
        emit, path, stop, limiter = self._emit, pf.path, self._stop, self._limiter
        write = pf.write
        hasher = new_hasher()
        watch = self._watch
        start = span.offset

        def sink(view: memoryview) -> None:
            flight = current()
            assert flight is not None
            if limiter is not None:
                with flight.busy():
                    limiter.take(len(view), stop)
            with span.lock:
                view = view[: max(0, span.end - span.offset)]
                n = len(view)
                # Refused once the flight is aborted: no byte of an abandoned response lands.
                with flight.writing():
                    write(view, span.offset)
                hasher.update(view)
                span.offset += n
                done = span.offset >= span.end
            if n:
                emit(BytesTransferred(path=path, bytes=n))
            if done and span.end < span.full_end:
                raise _Shortened  # a hedge fetches the rest: this request ends here

        def request() -> RangeResult | None:
            nonlocal hasher
            if self.whole and span.offset > start == 0 and span.full_end == obj.size:
                # Asking for the rest of the object would need Range: start it over.
                pf.truncate(start)
                emit(BytesTransferred(path=path, bytes=start - span.offset))
                span.offset, hasher = start, new_hasher()
            if span.offset >= span.end:
                return None
            try:
                with watch.request(path, "GET"):
                    return self._backend.read_range(
                        obj, self._bucket, span.offset, span.end, buffer, sink
                    )
            except _Shortened:
                return None

        answer = self._attempts(path, request, lambda: span.offset)
        return hasher, answer

    def _attempts(
        self, path: str, request: Callable[[], RangeResult | None], received: Callable[[], int]
    ) -> RangeResult | None:
        """``request()`` under the retry policy, each attempt reported as request events.

        ``received()`` tells how far the transfer got: bytes written by a failed attempt
        stay, and the next attempt resumes from there.
        """
        emit = self._emit

        def attempt() -> RangeResult | None:
            emit(RequestStarted(path=path, method="GET"))
            began, before = time.monotonic(), received()
            try:
                result = request()
            except BaseException as exc:
                seconds, done = time.monotonic() - began, received() - before
                emit(RequestFinished(path, "GET", status_of(exc), None, seconds, done))
                raise
            seconds, done = time.monotonic() - began, received() - before
            if result is None:  # ended early, its tail hedged: it read what it had to
                emit(RequestFinished(path, "GET", "hedged", None, seconds, done))
            else:
                status, ttfb = str(result.status), result.first_byte_seconds
                emit(RequestFinished(path, "GET", status, ttfb, seconds, done))
            return result

        try:
            return self._retry.call(
                attempt,
                what=path,
                on_retry=retry_events(emit, path),
                stop=self._stop,
                progress=received,
            )
        except ModelPullError:
            if self._stop.is_set():
                raise Stopped from None
            raise


def _same(hasher: PartHasher) -> PartHasher:
    """Go on with ``hasher``: the request continues a piece already hashed."""
    return hasher


class _Shortened(Exception):
    """A request reached the earlier end a hedge gave it: it ends, successfully, here."""


def joined(head: PartValues, tail: PartValues, tail_length: int) -> PartValues:
    """The CRCs of a part from those of its head and of its hedged tail."""
    crcs = {
        name: CRC_KINDS[name].combine(value, tail.crcs[name], tail_length)
        for name, value in head.crcs.items()
    }
    return PartValues(crcs=crcs)


def status_of(exc: BaseException) -> str:
    """A bounded label for a failed request: the HTTP status, else the error's reason."""
    if isinstance(exc, StoreError):
        return str(exc.status) if exc.status else (exc.reason or "error")
    if isinstance(exc, Stopped):
        return "stopped"
    return "error"
