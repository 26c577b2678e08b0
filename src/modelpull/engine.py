"""The scheduler: every part of every file shares one pool of ``concurrency`` workers.

Each worker owns one buffer of ``io_chunk_size`` bytes, reads a ranged GET into it and
writes each piece at its offset (``os.pwrite``) into the file's preallocated temp file,
so no single writer thread carries every byte and memory stays
``concurrency x io_chunk_size`` whatever the model's size. A file is renamed into place
only when all its parts are written (and verified); a final name never holds a partial
file. The engine reports what happens as events (:mod:`modelpull.events`); it never
draws progress or counts metrics itself.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock

from modelpull.backends.base import Backend
from modelpull.config import PullConfig
from modelpull.errors import (
    DestinationError,
    DiskFullError,
    InterruptedPullError,
    ModelPullError,
    RetriesExhaustedError,
    StoreError,
    UnsafePathError,
)
from modelpull.events import (
    BytesTransferred,
    Event,
    FileDone,
    FileFailed,
    FileQueued,
    FileSkipped,
    PartRetried,
)
from modelpull.plan import RemoteFile
from modelpull.retry import RetryPolicy
from modelpull.state import Record, StateDir

__all__ = ["Engine", "FileOutcome", "StopSignal"]

log = logging.getLogger("modelpull")

# Headroom asked for beyond the bytes to fetch before a pull starts.
FREE_SPACE_MARGIN = 64 << 20
# How long a stopping pull waits for workers to notice before leaving them behind.
STOP_GRACE_SECONDS = 1.5


@dataclass
class FileOutcome:
    """How one file ended: ``fetched``, ``skipped`` or ``failed``."""

    path: str
    size: int
    status: str
    seconds: float = 0.0
    error: BaseException | None = None


@dataclass
class _Job:
    remote: RemoteFile
    final: Path
    temp: Path
    parts: int
    remaining: int
    mutex: threading.Lock = field(default_factory=threading.Lock)
    fd: int | None = None
    lock: FileLock | None = None
    started: float = 0.0
    reused: bool = False
    outcome: FileOutcome | None = None

    @property
    def path(self) -> str:
        return self.remote.path


class Engine:
    """Runs one pull of already-listed files into DEST."""

    def __init__(
        self,
        backend: Backend,
        config: PullConfig,
        emit: Callable[[Event], None],
        cancel: threading.Event | None = None,
    ) -> None:
        self._backend = backend
        self._config = config
        self._emit = emit
        self._cancel = cancel or threading.Event()
        self._stop = threading.Event()  # set on cancel or on the first permanent failure
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._retry = RetryPolicy(max_attempts=config.max_attempts, deadline=config.deadline)

    # -- planning ---------------------------------------------------------------------

    def run(self, bucket: str, files: Sequence[RemoteFile], dest: Path) -> list[FileOutcome]:
        """Fetch ``files`` into ``dest``; raise the first failure after stopping cleanly."""
        self._bucket = bucket
        self._dest = dest
        self._dest_real = dest.resolve()
        self._state = StateDir(dest)
        try:
            self._state.create()
        except OSError as exc:
            raise _dest_error(exc, dest) from exc
        outcomes: list[FileOutcome] = []
        jobs: list[_Job] = []
        for remote in files:
            final = dest / remote.path
            if not self._config.force and self._state.is_complete(remote.path, final, remote.obj):
                self._emit(FileSkipped(path=remote.path, size=remote.obj.size))
                outcomes.append(FileOutcome(remote.path, remote.obj.size, "skipped"))
                continue
            parts = max(1, -(-remote.obj.size // self._config.part_size))
            jobs.append(
                _Job(
                    remote=remote,
                    final=final,
                    temp=self._state.temp_path(remote.path),
                    parts=parts,
                    remaining=parts,
                )
            )
        self._check_free_space(jobs)
        for job in jobs:
            self._emit(FileQueued(path=job.path, size=job.remote.obj.size, parts=job.parts))
        self._work(jobs)
        outcomes.extend(job.outcome for job in jobs if job.outcome is not None)
        return outcomes

    def _check_free_space(self, jobs: Sequence[_Job]) -> None:
        needed = sum(job.remote.obj.size for job in jobs)
        if not needed:
            return
        free = shutil.disk_usage(self._state.incomplete).free
        if free < needed + FREE_SPACE_MARGIN:
            raise DiskFullError(
                f"not enough free space in {self._dest}: {needed} bytes to fetch, "
                f"{free} free - free some space or choose another DEST",
                errno=errno.ENOSPC,
            )

    def _parts(self, jobs: Sequence[_Job]) -> Iterator[tuple[_Job, int, int]]:
        # Small files first: configs and tokenizers land early, shards keep every worker busy.
        size = self._config.part_size
        for job in sorted(jobs, key=lambda j: (j.remote.obj.size, j.path)):
            total = job.remote.obj.size
            for index in range(job.parts):
                yield job, index * size, min(total, (index + 1) * size)

    # -- workers ----------------------------------------------------------------------

    def _work(self, jobs: Sequence[_Job]) -> None:
        parts = self._parts(jobs)
        parts_lock = threading.Lock()

        def next_part() -> tuple[_Job, int, int] | None:
            with parts_lock:
                return next(parts, None)

        total_parts = sum(job.parts for job in jobs)
        workers = [
            threading.Thread(
                target=self._worker, args=(next_part,), name=f"modelpull-{i}", daemon=True
            )
            for i in range(min(self._config.concurrency, total_parts))
        ]
        for thread in workers:
            thread.start()
        try:
            for thread in workers:
                # Short joins keep the main thread responsive to KeyboardInterrupt.
                while thread.is_alive():
                    thread.join(0.2)
                    if self._cancel.is_set():
                        raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            self._stop.set()
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for thread in workers:
                thread.join(max(0.0, deadline - time.monotonic()))
            self._close_all(jobs)
            raise InterruptedPullError(
                "pull interrupted; run the same command again to resume",
                signum=getattr(exc, "signum", signal.SIGINT),
            ) from None
        self._close_all(jobs)
        if self._error is not None:
            raise self._error

    def _worker(self, next_part: Callable[[], tuple[_Job, int, int] | None]) -> None:
        buffer = memoryview(bytearray(self._config.io_chunk_size))
        while not self._stop.is_set():
            item = next_part()
            if item is None:
                return
            job, start, end = item
            if job.outcome is not None:
                continue  # the file failed, or another process completed it
            try:
                if self._open(job):
                    self._fetch(job, start, end, buffer)
                self._part_done(job)
            except BaseException as exc:  # reported to the main thread, never lost
                self._fail(job, exc)

    def _open(self, job: _Job) -> bool:
        """Lock and create the temp file on first use; False when nothing is left to fetch."""
        with job.mutex:
            if job.reused or job.outcome is not None:
                return False
            if job.fd is not None:
                return True
            job.lock = FileLock(self._state.lock_path(job.path))
            job.lock.acquire()
            # Another process may have completed the file while we waited for its lock.
            if not self._config.force and self._state.is_complete(
                job.path, job.final, job.remote.obj
            ):
                job.reused = True
                return False
            job.started = time.monotonic()
            try:
                fd = os.open(job.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                size = job.remote.obj.size
                if size:
                    try:
                        os.posix_fallocate(fd, 0, size)
                    except OSError as exc:
                        if exc.errno == errno.ENOSPC:
                            raise
                        os.ftruncate(fd, size)  # filesystems without fallocate
            except OSError as exc:
                raise _dest_error(exc, job.temp) from exc
            job.fd = fd
            return True

    def _fetch(self, job: _Job, start: int, end: int, buffer: memoryview) -> None:
        fd = job.fd
        assert fd is not None
        emit = self._emit
        path = job.path
        offset = start
        attempt = 0
        stop = self._stop

        def sink(view: memoryview) -> None:
            nonlocal offset
            if stop.is_set():
                raise _Stopped
            written = 0
            while written < len(view):
                try:
                    written += os.pwrite(fd, view[written:], offset + written)
                except OSError as exc:
                    raise _dest_error(exc, job.temp) from exc
            offset += written
            emit(BytesTransferred(path=path, bytes=written))

        while True:
            attempt += 1
            try:
                self._backend.read_range(job.remote.obj, self._bucket, offset, end, buffer, sink)
                return
            except StoreError as exc:
                # Bytes already written stay: the next attempt resumes where this one broke.
                delay = self._retry.delay(attempt, exc)
                if delay is None:
                    if attempt > 1 and exc.reason is not None:
                        raise RetriesExhaustedError(
                            f"{path}: gave up after {attempt} attempts: {exc}",
                            bucket=self._bucket,
                            key=job.remote.obj.key,
                            status=exc.status,
                            code=exc.code,
                            request_id=exc.request_id,
                            reason=exc.reason,
                        ) from exc
                    raise
                emit(
                    PartRetried(
                        path=path, reason=exc.reason or "error", attempt=attempt, delay=delay
                    )
                )
                if stop.wait(delay):
                    raise _Stopped from None

    def _part_done(self, job: _Job) -> None:
        with job.mutex:
            job.remaining -= 1
            if job.remaining or job.outcome is not None:
                return
            if job.reused:
                job.outcome = FileOutcome(job.path, job.remote.obj.size, "skipped")
                self._emit(FileSkipped(path=job.path, size=job.remote.obj.size))
                self._release(job)
                return
            self._finish(job)

    def _finish(self, job: _Job) -> None:
        fd = job.fd
        assert fd is not None
        try:
            if self._config.fsync:
                os.fsync(fd)
            os.close(fd)
            job.fd = None
            self._place(job)
        except OSError as exc:
            raise _dest_error(exc, job.final) from exc
        seconds = time.monotonic() - job.started
        job.outcome = FileOutcome(job.path, job.remote.obj.size, "fetched", seconds)
        self._emit(FileDone(path=job.path, size=job.remote.obj.size, seconds=seconds))
        self._release(job)

    def _place(self, job: _Job) -> None:
        """Rename the complete temp file to its final name, inside DEST and nowhere else."""
        parent = job.final.parent
        parent.mkdir(parents=True, exist_ok=True)
        # A symlinked folder inside DEST must not carry a file out of it.
        if not parent.resolve().is_relative_to(self._dest_real):
            raise UnsafePathError(
                f"refusing to write {job.path!r}: {parent} leads outside DEST through a symlink",
                key=job.remote.obj.key,
            )
        if job.final.is_dir() and not job.final.is_symlink():
            raise DestinationError(f"cannot write {job.final}: a folder is in the way")
        self._state.forget(job.path)
        job.temp.replace(job.final)
        st = job.final.stat()
        obj = job.remote.obj
        self._state.write_record(
            Record(
                path=job.path,
                key=obj.key,
                etag=obj.etag,
                size=obj.size,
                mtime_ns=st.st_mtime_ns,
                checksums=dict(obj.checksums),
            )
        )

    # -- failure and cleanup ----------------------------------------------------------

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if isinstance(exc, _Stopped):
            return
        if not isinstance(exc, ModelPullError | OSError):
            log.exception("unexpected error while pulling %s", job.path)
        with job.mutex:
            first_for_file = job.outcome is None or job.outcome.status != "failed"
            job.outcome = FileOutcome(job.path, job.remote.obj.size, "failed", error=exc)
        if first_for_file:
            self._emit(FileFailed(path=job.path, error=exc))
        with self._error_lock:
            if self._error is None:
                self._error = exc
        # One missing file makes the model unusable: stop the rest, fail fast.
        self._stop.set()

    def _close_all(self, jobs: Sequence[_Job]) -> None:
        for job in jobs:
            with job.mutex:
                if job.fd is not None:
                    os.close(job.fd)
                    job.fd = None
                if job.outcome is None or job.outcome.status != "fetched":
                    try:
                        job.temp.unlink(missing_ok=True)
                    except OSError:
                        log.warning("could not remove temp file %s", job.temp)
                self._release(job)

    @staticmethod
    def _release(job: _Job) -> None:
        if job.lock is not None:
            job.lock.release()
            job.lock = None


class StopSignal(KeyboardInterrupt):
    """Raised in the main thread by a SIGTERM handler, so SIGTERM stops a pull like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Stopped(Exception):
    """Raised inside a worker to abandon a part once the pull is stopping."""


def _dest_error(exc: OSError, where: Path) -> DestinationError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"disk full while writing {where}: free some space, then run the same command "
            "again to resume",
            errno=exc.errno,
        )
    if isinstance(exc, DestinationError):
        return exc
    return DestinationError(f"cannot write {where}: {exc.strerror or exc}", errno=exc.errno)
