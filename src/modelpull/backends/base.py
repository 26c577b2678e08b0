"""The backend protocol: the few store operations the engine needs, and nothing else.

A backend translates its SDK's errors into :mod:`modelpull.errors` in one place, so the
engine never sees botocore or TOS SDK exceptions and never asks which backend it has.

:class:`RangedGetBackend` is what the two SDK backends share: a ranged read is one GET
(:meth:`~RangedGetBackend.open_range`, the only SDK-specific step), its answer checked
against the request by :func:`check_range`, then its body streamed into the engine's
buffer. :func:`tls_verify` is their one reading of the TLS settings.

A read runs under the calling thread's :class:`~modelpull.watch.Flight`, when it has
one: the answer's :attr:`OpenRange.interrupt` is attached to it, and the body is read
in steps that follow its pace, so progress is seen every second or so even on a
connection that trickles (one ``readinto`` of a whole buffer would block until the
buffer is full) while a fast one still fills the buffer in one call.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from modelpull.backends.errors import Site, names_for
from modelpull.errors import (
    ObjectChangedError,
    RangeIgnoredError,
    TransientStoreError,
    UsageError,
)
from modelpull.objects import Layout, ObjectInfo
from modelpull.watch import Interrupt, current

if TYPE_CHECKING:
    from modelpull.config import PullConfig

__all__ = [
    "Backend",
    "ByteRange",
    "ChunkSink",
    "OpenRange",
    "RangeResult",
    "RangedGetBackend",
    "check_range",
    "socket_interrupt",
    "tls_verify",
]

# Receives each piece of a range in order; the view is only valid during the call.
ChunkSink = Callable[[memoryview], None]


@dataclass(frozen=True, slots=True)
class RangeResult:
    """What a GET told beyond its bytes: HTTP status, time to headers, checksum headers."""

    status: int
    first_byte_seconds: float | None = None
    checksums: Mapping[str, str] = field(default_factory=dict)
    checksum_type: str | None = None
    etag_md5: bool = True  # as ObjectInfo.etag_md5


class Backend(Protocol):
    """Store operations; every method may raise only :class:`~modelpull.errors.ModelPullError`."""

    name: str

    def head(self, bucket: str, key: str) -> ObjectInfo:
        """Size, ETag and published checksums of one object."""
        ...

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, all pages."""
        ...

    def read_range(
        self,
        obj: ObjectInfo,
        bucket: str,
        start: int,
        end: int,
        buffer: memoryview,
        sink: ChunkSink,
    ) -> RangeResult:
        """GET bytes ``[start, end)`` of ``obj`` into ``buffer``, each piece passed to ``sink``.

        The request carries ``If-Match`` with the object's ETag and the response's ETag
        is checked too, so a replaced object raises
        :class:`~modelpull.errors.ObjectChangedError` instead of being stitched together.
        A body that ends early raises :class:`~modelpull.errors.TransientStoreError`.
        """
        ...

    def upload_parts(self, bucket: str, obj: ObjectInfo, *, checksums: bool) -> Layout | None:
        """How ``obj`` was uploaded in parts, or ``None`` when the store will not say.

        With ``checksums`` the store is asked for each part's own published values too
        (more requests); without, the part sizes are enough.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# [start, end) of an object; ``None`` asks for all of it (a GET without ``Range``).
ByteRange = tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class OpenRange:
    """A GET whose headers have arrived and whose body is still unread.

    ``readinto`` fills a view from the body and returns the byte count (0 at its end),
    its errors already translated; ``abort`` drops the connection (unread bytes make it
    unusable); ``release`` hands a fully read connection back to the pool. These three
    belong to the reading thread; ``interrupt``, when known, may be called from any
    thread to make a read blocked there fail at once.
    """

    status: int
    etag: str | None
    content_range: str | None
    content_length: int | None
    readinto: Callable[[memoryview], int]
    abort: Callable[[], None]
    release: Callable[[], None]
    checksums: Mapping[str, str] = field(default_factory=dict)
    checksum_type: str | None = None
    etag_md5: bool = True  # as ObjectInfo.etag_md5
    interrupt: Interrupt | None = None


def socket_interrupt(response: Any) -> Interrupt | None:
    """An :data:`~modelpull.watch.Interrupt` for a urllib3 response's connection.

    It shuts the socket down: a ``recv`` blocked in another thread returns at once,
    which closing the socket would not make it do (and closing could hand its number
    to another file meanwhile).
    """
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if not isinstance(sock, socket.socket):
        return None
    return shutdown_of(sock)


def shutdown_of(sock: socket.socket) -> Interrupt:
    """An interrupt that shuts ``sock`` down for reading and writing."""

    def interrupt() -> None:
        with contextlib.suppress(OSError):  # already closed: nothing is blocked on it
            # The plain socket's shutdown, also under TLS: SSLSocket's own would drop
            # its TLS state under the feet of the thread reading it.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    return interrupt


# Reads of a body under a flight: the first asks for this many bytes, each later one for
# twice as many after a quick read, half as many after a slow one (within the buffer).
FIRST_STEP = 16 * 1024
MIN_STEP = 4 * 1024
QUICK_READ_SECONDS = 0.05
SLOW_READ_SECONDS = 0.5


def _pace(step: int, seconds: float, most: int) -> int:
    if seconds < QUICK_READ_SECONDS:
        return min(most, step * 2)
    if seconds > SLOW_READ_SECONDS:
        return max(MIN_STEP, step // 2)
    return step


# "bytes FIRST-LAST/TOTAL"; TOTAL may be "*" (unknown), which never fits a listed size.
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


def check_range(answer: OpenRange, obj: ObjectInfo, wanted: ByteRange, site: Site) -> None:
    """Raise unless ``answer`` is the GET of ``wanted`` bytes of ``obj``'s listed version.

    A response that does not fit the request (its status, ``Content-Range`` or length)
    is a server fault, :class:`~modelpull.errors.TransientStoreError` with reason
    ``bad_response``, retried like a 503. A ranged GET answered ``200`` with the whole
    object and no ``Content-Range`` raises :class:`~modelpull.errors.RangeIgnoredError`
    (reason ``range_ignored``), so that a caller can tell a store that ignores ``Range``.
    Only a well-formed response with another ETag than the listed one says the object
    changed (:class:`~modelpull.errors.ObjectChangedError`): stores that ignore
    ``If-Match`` are caught here instead of being stitched together.
    """
    start, end = wanted if wanted is not None else (0, obj.size)
    fields: dict[str, Any] = {"bucket": site.bucket, "key": obj.key, "status": answer.status}
    asked = f"bytes {start}-{end - 1}/{obj.size}"

    def misfit(what: str) -> TransientStoreError:
        return TransientStoreError(
            f"{site}: the store's answer does not fit the request ({asked}): {what}",
            reason="bad_response",
            **fields,
        )

    # 200 may answer a range too: rclone sends one with the right Content-Range.
    if answer.status not in (200, 206):
        raise misfit(f"status {answer.status}")
    sent: tuple[int, int, str] | None = None
    if answer.content_range is not None:
        match = _CONTENT_RANGE.fullmatch(answer.content_range.strip())
        if match is None:
            raise misfit(f"Content-Range {answer.content_range!r}")
        sent = (int(match[1]), int(match[2]) + 1, match[3])
        if answer.content_length is not None and answer.content_length != sent[1] - sent[0]:
            raise misfit(f"Content-Range {answer.content_range} with {answer.content_length} bytes")
    etag = str(answer.etag or "").strip('"')
    if obj.etag and etag and etag != obj.etag:
        raise ObjectChangedError(
            f"{site} changed during the pull (ETag {obj.etag} became {etag})",
            code="ETagMismatch",
            **fields,
        )
    if sent is None and wanted is not None:
        if answer.status == 200 and answer.content_length in (None, obj.size):
            raise RangeIgnoredError(
                f"{site}: the store ignored the Range header ({asked}) and sent the whole object",
                reason="range_ignored",
                **fields,
            )
        raise misfit("no Content-Range")
    if sent is not None and sent != (start, end, str(obj.size)):
        raise misfit(f"Content-Range {answer.content_range}")
    if answer.content_length is not None and answer.content_length != end - start:
        raise misfit(f"{answer.content_length} bytes")


def _stream(
    answer: OpenRange, length: int, buffer: memoryview, sink: ChunkSink, site: Site
) -> None:
    """Read ``length`` bytes of ``answer``'s body into ``buffer``, passing it to ``sink``
    each time it is full, and at the end. What arrived before a failure is passed on too:
    the next attempt resumes after it."""
    flight = current()
    # Without a flight nobody watches progress: one read per buffer.
    step = FIRST_STEP if flight is not None else len(buffer)
    remaining, filled = length, 0
    try:
        while remaining:
            room = min(len(buffer) - filled, remaining)
            view = buffer[filled : filled + min(step, room)]
            began = time.monotonic()
            cause: TransientStoreError | None = None
            try:
                n = answer.readinto(view)
            except TransientStoreError as exc:
                if exc.reason != "short_body":
                    raise
                # An SDK that raises for a short body (requests) says it as the one
                # that reads an empty end of it (http.client) does, with the count.
                n, cause = 0, exc
            if n == 0:
                raise TransientStoreError(
                    f"{site}: body ended {remaining} bytes early",
                    bucket=site.bucket,
                    key=site.key,
                    reason="short_body",
                ) from cause
            filled += n
            remaining -= n
            if flight is not None:
                flight.progress(n)
                step = _pace(step, time.monotonic() - began, len(buffer))
            if filled == len(buffer) or not remaining:
                # What the sink raises (a full disk, a stop) is the engine's: not translated.
                full, filled = buffer[:filled], 0
                sink(full)
    except Exception:
        if filled:
            sink(buffer[:filled])
        raise


def tls_verify(config: PullConfig) -> bool | str:
    """How to verify TLS: ``False`` when off, a CA bundle's path, or ``True`` (default CAs).

    ``verify_ssl=False`` wins over a ``ca_bundle``, which may come from the environment
    (``AWS_CA_BUNDLE``) of a shell that asked for no verification. A bundle that cannot
    be read is refused now, naming the file, rather than reported as a failed handshake
    at the first request.
    """
    if not config.verify_ssl:
        return False
    if config.ca_bundle is None:
        return True
    path = Path(config.ca_bundle).expanduser()
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot read the CA bundle {config.ca_bundle} (--ca-bundle, MODELPULL_CA_BUNDLE "
            f"or AWS_CA_BUNDLE): {exc.strerror or exc}"
        ) from None
    return str(path)


class RangedGetBackend(ABC):
    """:meth:`read_range` from one GET per call: the part the SDK backends share.

    A subclass calls this constructor and implements :meth:`open_range`; everything
    after the GET's headers (the check, the copy into the engine's buffer, the
    connection's fate) is done here, the same way for every SDK.
    """

    def __init__(self, config: PullConfig, *, scheme: str) -> None:
        # What messages name: s3:// and AWS_* or tos:// and TOS_*, by the URI's scheme.
        self.names = names_for(scheme)
        # What every SDK's TLS option takes: off, on, or a CA bundle's path (checked now).
        self.tls_verify = tls_verify(config)

    @abstractmethod
    def open_range(self, obj: ObjectInfo, bucket: str, wanted: ByteRange) -> OpenRange:
        """Send the GET for ``wanted`` of ``obj`` with ``If-Match``; errors translated."""

    def upload_parts(self, bucket: str, obj: ObjectInfo, *, checksums: bool) -> Layout | None:
        """As :meth:`Backend.upload_parts`; a store that cannot tell says ``None``."""
        return None

    def read_range(
        self,
        obj: ObjectInfo,
        bucket: str,
        start: int,
        end: int,
        buffer: memoryview,
        sink: ChunkSink,
    ) -> RangeResult:
        """As :meth:`Backend.read_range`; the whole object goes without a ``Range``."""
        wanted = None if start == 0 and end == obj.size else (start, end)
        started = time.monotonic()
        answer = self.open_range(obj, bucket, wanted)
        first_byte = time.monotonic() - started
        site = Site(bucket, obj.key, self.names)
        flight = current()
        if flight is not None and answer.interrupt is not None:
            flight.attach(answer.interrupt)
        try:
            check_range(answer, obj, wanted, site)
            _stream(answer, end - start, buffer, sink, site)
        except BaseException:
            answer.abort()
            raise
        if flight is not None:
            flight.detach()  # the pool may hand the connection to another request now
        answer.release()
        return RangeResult(
            status=answer.status,
            first_byte_seconds=first_byte,
            checksums=answer.checksums,
            checksum_type=answer.checksum_type,
            etag_md5=answer.etag_md5,
        )
