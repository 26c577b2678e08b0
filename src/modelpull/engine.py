"""The scheduler: every part of every file shares one pool of ``concurrency`` workers.

Each worker owns one buffer of ``io_chunk_size`` bytes, reads a ranged GET into it and
writes each piece at its offset into the file's preallocated temp file, so no single
writer thread carries every byte and memory stays ``concurrency x io_chunk_size``
whatever the model's size. CRCs are computed per part by the worker that holds the
bytes, then combined. What happens to a file on disk (lock, temp file, journal,
verification, rename) is :class:`~modelpull.partfile.PartFile`'s; the engine decides
which part runs when, retries requests, and refetches what failed. It reports what
happens as events (:mod:`modelpull.events`); it never draws progress or counts metrics.

A file's life in the scheduler: pending -> active (locked, temp file open, maybe resumed
from its journal) -> done, or -> restarting (its object changed, or its bytes failed
verification: refetched from scratch, a bounded number of times) -> active again.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelpull.backends.base import Backend
from modelpull.config import PullConfig
from modelpull.errors import (
    DiskFullError,
    IntegrityError,
    InterruptedPullError,
    ModelPullError,
    ObjectChangedError,
)
from modelpull.events import (
    BytesTransferred,
    Event,
    FileDone,
    FileFailed,
    FileQueued,
    FileResumed,
    FileSkipped,
    FileVerified,
    PartRetried,
    PartsRepaired,
)
from modelpull.fetch import Fetcher, Stopped
from modelpull.files import bytes_in
from modelpull.hashing import PartValues
from modelpull.integrity import needs_layout
from modelpull.objects import Layout, ObjectInfo, RemoteFile
from modelpull.partfile import PartFile
from modelpull.ratelimit import RateLimiter
from modelpull.results import FileOutcome
from modelpull.retry import RetryPolicy
from modelpull.state import StateDir
from modelpull.workqueue import WorkQueue

__all__ = ["Engine"]

log = logging.getLogger("modelpull")

# Headroom asked for beyond the bytes to fetch before a pull starts.
FREE_SPACE_MARGIN = 16 << 20
# How long a stopping pull waits for workers to notice before leaving them behind.
STOP_GRACE_SECONDS = 1.5
# Whole-file refetches after the object changed or its bytes failed verification.
MAX_REFETCHES = 2
# Rounds of refetching only the parts found damaged, before a whole-file refetch.
MAX_REPAIRS = 4


@dataclass(eq=False)
class _Job:
    """The scheduler's view of one file; its bytes on disk are :attr:`file`'s."""

    file: PartFile
    # pending, active, restarting, done, partial, failed, reused; broken: failed to open
    state: str = "pending"
    generation: int = 0
    wanted: set[int] | None = None  # None: every part
    inflight: int = 0
    refetches: int = 0
    repairs: int = 0  # rounds of refetching damaged parts
    repaired: int = 0  # parts refetched by them
    # Each upload part's own published values, asked for once a verification failed.
    part_values: Layout | None = None
    asked_part_values: bool = False
    outcome: FileOutcome | None = None
    mutex: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def obj(self) -> ObjectInfo:
        return self.file.obj


_Item = tuple[_Job, int, int]  # job, generation, part index


class Engine:
    """Runs one pull of already-listed files into DEST."""

    def __init__(
        self,
        backend: Backend,
        config: PullConfig,
        emit: Callable[[Event], None],
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._backend = backend
        self._config = config
        self._emit = emit
        self._stop = threading.Event()  # set on interruption or the first permanent failure
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._retry = retry if retry is not None else RetryPolicy.from_config(config)
        self._limiter = RateLimiter(config.max_bandwidth) if config.max_bandwidth else None
        self._queue = WorkQueue[_Item](0)

    # -- planning ---------------------------------------------------------------------

    def run(
        self,
        bucket: str,
        files: Sequence[RemoteFile],
        dest: Path,
        *,
        only: Mapping[str, Collection[int]] | None = None,
    ) -> list[FileOutcome]:
        """Fetch ``files`` into ``dest``; raise the first failure after stopping cleanly.

        ``only`` restricts the pull to some parts (indices of :func:`split_parts`) of some
        files: those are fetched into the temp file and recorded in its journal, and the
        file is left ``partial`` for another run (or another source of the other parts,
        as the cluster pull is) to complete. Files not in ``only`` are left alone.
        """
        self._bucket = bucket
        self._fetcher = Fetcher(
            self._backend, bucket, self._emit, self._retry, self._stop, self._limiter
        )
        self._dest = dest
        self._state = StateDir(dest)
        self._state.create()  # a link planted among its folders is refused
        outcomes: list[FileOutcome] = []
        jobs: list[_Job] = []
        for remote in files:
            if only is not None and remote.path not in only:
                continue
            job = _Job(file=PartFile(self._state, remote, self._config))
            recheck = self._config.check_existing
            if not self._config.force and not recheck and job.file.is_complete():
                self._emit(FileSkipped(path=remote.path, size=remote.obj.size))
                outcomes.append(FileOutcome(remote.path, remote.obj.size, "skipped"))
                continue
            if only is not None:
                job.wanted = set(only[remote.path])
            jobs.append(job)
        self._check_free_space(jobs)
        # Small files first: configs and tokenizers land early, shards keep workers busy.
        jobs.sort(key=lambda j: (j.obj.size, j.path))
        self._queue = WorkQueue[_Item](len(jobs))
        for job in jobs:
            parts = len(job.file.parts)
            self._emit(FileQueued(path=job.path, size=job.obj.size, parts=parts))
            wanted = range(parts) if job.wanted is None else sorted(job.wanted)
            self._queue.put([(job, 0, i) for i in wanted])
        self._work(jobs)
        outcomes.extend(job.outcome for job in jobs if job.outcome is not None)
        return outcomes

    def _check_free_space(self, jobs: Sequence[_Job]) -> None:
        # A file already at its final name will likely be kept (recorded, or adopted once
        # checked): counting it could refuse a pull that fetches nothing. Temp files kept
        # from an interrupted pull already hold their space.
        needed = sum(job.obj.size for job in jobs if not job.file.adoptable())
        if not needed:
            return
        free = self._state.free_space()
        # Temp files kept from an interrupted pull already hold their space.
        for job in jobs:
            needed -= min(self._state.temp_size(job.path) or 0, job.obj.size)
        if free < needed + FREE_SPACE_MARGIN:
            raise DiskFullError(
                f"not enough free space in {self._dest}: {needed} bytes to fetch, "
                f"{free} free - free some space or choose another DEST",
                errno=errno.ENOSPC,
            )

    # -- workers ----------------------------------------------------------------------

    def _work(self, jobs: Sequence[_Job]) -> None:
        total_parts = sum(len(job.file.parts) for job in jobs)
        workers = [
            threading.Thread(target=self._worker, name=f"modelpull-{i}", daemon=True)
            for i in range(min(self._config.concurrency, total_parts))
        ]
        for thread in workers:
            thread.start()
        try:
            for thread in workers:
                # Short joins keep the main thread responsive to Ctrl-C and SIGTERM.
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt as exc:
            self._stop.set()
            self._queue.close()
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

    def _worker(self) -> None:
        buffer = memoryview(bytearray(self._config.io_chunk_size))
        while (item := self._queue.get()) is not None:
            job, generation, index = item
            try:
                if not self._begin_part(job, generation, index):
                    continue
                values: PartValues | None = None
                try:
                    values = self._fetcher.part(job.file, index, buffer)
                finally:
                    self._end_part(job, generation, index, values)
            except Stopped:
                pass
            except BaseException as exc:  # reported to the main thread, never lost
                try:
                    if not (isinstance(exc, ObjectChangedError) and self._restart(job, exc)):
                        self._fail(job, exc)
                except Stopped:
                    pass
                except BaseException as again:
                    self._fail(job, again)

    def _begin_part(self, job: _Job, generation: int, index: int) -> bool:
        with job.mutex:
            if job.state == "pending":
                try:
                    self._open(job)
                except BaseException:
                    # No other worker may open it again (and wait forever on the lock
                    # this thread took): the failure ends the file.
                    job.state = "broken"
                    job.file.release()
                    raise
            if job.state != "active" or generation != job.generation:
                return False
            if index in job.file.done:
                self._check_complete(job)
                return False
            job.inflight += 1
            return True

    def _open(self, job: _Job) -> None:
        """Lock the file, check nobody completed it meanwhile, open or resume its temp file."""
        pf = job.file
        pf.acquire()
        force = self._config.force
        # Another process may have completed the file while we waited for its lock.
        if not force and pf.is_complete():
            if not self._config.check_existing or pf.intact():
                self._skip(job, "skipped")
                return
            log.warning("%s changed on disk since it was pulled: checking it", job.path)
        if self._config.verify != "off":
            # HEAD asks for the checksums a listing lacks, and sees a replaced object.
            fresh = self._fetcher.head(job.obj.key)
            if job.wanted is not None and fresh.etag != job.obj.etag:
                # Part indices were planned against the listed version; they mean
                # nothing for another one.
                raise ObjectChangedError(
                    f"{job.obj.key} changed since it was planned",
                    bucket=self._bucket,
                    key=job.obj.key,
                    code="ETagMismatch",
                )
            pf.set_object(fresh)
        layout = self._layout(pf.obj)
        if not force and pf.adoptable():
            verified = pf.adopt(layout)
            if verified is not None:
                for kind in verified:
                    self._emit(FileVerified(path=job.path, kind=kind))
                self._skip(job, "adopted", verified)
                return
        pf.open(layout)
        if pf.repaired:
            undone = bytes_in(pf.parts, pf.repaired)
            self._emit(PartsRepaired(job.path, len(pf.repaired), undone, "resume"))
        if pf.resumed_bytes:
            self._emit(FileResumed(path=job.path, bytes=pf.resumed_bytes))
        job.state = "active"
        self._check_complete(job)

    def _end_part(self, job: _Job, generation: int, index: int, values: PartValues | None) -> None:
        with job.mutex:
            job.inflight -= 1
            if generation != job.generation:
                if job.state == "restarting" and job.inflight == 0:
                    self._do_restart(job)
                return
            if values is None or job.file.journal is None:
                return
            # A single-part file needs no journal: it is complete the moment it is in.
            job.file.record(index, values, save=len(job.file.parts) > 1 or job.wanted is not None)
            self._check_complete(job)

    # -- completion -------------------------------------------------------------------

    def _check_complete(self, job: _Job) -> None:
        """With the job's mutex held: verify and place the file once every part is in."""
        pf = job.file
        if job.state != "active" or pf.journal is None:
            return
        if not pf.all_done():
            if job.wanted is not None and job.wanted.issubset(pf.done):
                self._leave_partial(job)
            return
        try:
            verified = pf.verify()
        except IntegrityError as exc:
            if self._repair(job, exc):
                return
            if job.refetches >= MAX_REFETCHES:
                pf.discard()
                raise
            log.warning("%s; fetching it again", exc)
            self._emit(
                PartRetried(path=job.path, reason="integrity", attempt=job.refetches + 1, delay=0.0)
            )
            self._begin_restart(job)
            if job.inflight == 0:
                self._do_restart(job)
            return
        for kind in verified:
            self._emit(FileVerified(path=job.path, kind=kind))
        pf.place(verified)
        seconds = time.monotonic() - pf.started
        job.state = "done"
        job.outcome = FileOutcome(
            job.path,
            job.obj.size,
            "fetched",
            seconds,
            tuple(verified),
            pf.resumed_bytes,
            parts_repaired=len(pf.repaired) + job.repaired,
            unverifiable=pf.verifier.unverifiable,
        )
        self._emit(FileDone(path=job.path, size=job.obj.size, seconds=seconds))
        pf.release()
        self._queue.job_ended()

    def _skip(self, job: _Job, status: str, verified: Sequence[str] = ()) -> None:
        """With the lock held: the file in DEST is already the store's; nothing to fetch."""
        job.state = "reused"
        job.outcome = FileOutcome(job.path, job.obj.size, status, verified=tuple(verified))
        self._emit(FileSkipped(path=job.path, size=job.obj.size))
        job.file.release()
        self._queue.job_ended()

    def _layout(self, obj: ObjectInfo) -> Layout | None:
        """The upload's part sizes, when composite checks need them and the store tells."""
        if not needs_layout(obj, self._config.verify):
            return None
        return self._fetcher.layout(obj, checksums=False)

    def _repair(self, job: _Job, exc: IntegrityError) -> bool:
        """Fetch again only the parts found damaged; ``False`` when none can be named.

        Parts are named by the store's per-part values (composite checksums, per-part
        ETags) and by the CRC each part had when written (damage on disk); a file whose
        store publishes neither is refetched whole by the caller.
        """
        pf = job.file
        if job.repairs >= MAX_REPAIRS:
            return False
        if not job.asked_part_values:
            job.asked_part_values = True
            job.part_values = self._fetcher.layout(pf.obj, checksums=True)
        bad = pf.damaged(job.part_values)
        if not bad or len(bad) == len(pf.parts):
            return False
        job.repairs += 1
        job.repaired += len(bad)
        undone = pf.forget(bad)
        log.warning("%s; fetching %d damaged part(s) again", exc, len(bad))
        self._emit(BytesTransferred(path=job.path, bytes=-undone))
        self._emit(PartsRepaired(job.path, len(bad), undone, "integrity"))
        self._emit(PartRetried(path=job.path, reason="integrity", attempt=job.repairs, delay=0.0))
        self._queue.put([(job, job.generation, i) for i in sorted(bad)], front=True)
        return True

    def _leave_partial(self, job: _Job) -> None:
        """The wanted parts are in: keep the temp file and journal for whoever completes it."""
        job.file.leave_partial()
        job.state = "partial"
        seconds = time.monotonic() - job.file.started
        job.outcome = FileOutcome(job.path, job.obj.size, "partial", seconds)
        job.file.release()
        self._queue.job_ended()

    # -- refetching a whole file ------------------------------------------------------

    def _restart(self, job: _Job, exc: ObjectChangedError) -> bool:
        """Refetch a changed object from the start; False when the budget is spent."""
        with job.mutex:
            if job.state == "restarting":
                return True  # another part of the same file saw the change first
            if job.refetches >= MAX_REFETCHES or job.state != "active":
                return False
            log.warning("%s; fetching it again from the start", exc)
            self._begin_restart(job)
            if job.inflight == 0:
                self._do_restart(job)
            return True

    def _begin_restart(self, job: _Job) -> None:
        job.refetches += 1
        job.generation += 1
        job.state = "restarting"

    def _do_restart(self, job: _Job) -> None:
        """With the mutex held and no part in flight: start the file over, latest version."""
        fresh = self._fetcher.head(job.obj.key)
        undone = job.file.restart(fresh, self._layout(fresh))
        job.part_values, job.asked_part_values = None, False
        if undone:
            self._emit(BytesTransferred(path=job.path, bytes=-undone))
        job.state = "active"
        parts = range(len(job.file.parts))
        self._queue.put([(job, job.generation, i) for i in parts], front=True)

    # -- failure and cleanup ----------------------------------------------------------

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if not isinstance(exc, ModelPullError | OSError):
            log.error("unexpected error while pulling %s", job.path, exc_info=exc)
        with job.mutex:
            first_for_file = job.state != "failed"
            if first_for_file and job.state not in ("done", "reused"):
                job.state = "failed"
                job.outcome = FileOutcome(job.path, job.obj.size, "failed", error=exc)
                self._queue.job_ended()
        if first_for_file:
            self._emit(FileFailed(path=job.path, error=exc))
        with self._error_lock:
            if self._error is None:
                self._error = exc
        # One missing file makes the model unusable: stop the rest, fail fast. Temp
        # files and journals stay, so the next run resumes.
        self._stop.set()
        self._queue.close()

    def _close_all(self, jobs: Sequence[_Job]) -> None:
        for job in jobs:
            with job.mutex:
                # A worker left behind may still write to this descriptor: closing it
                # could let the number be reused by another file. Process exit closes it.
                if job.inflight == 0:
                    job.file.close()
                job.file.release()
