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

Every wait is bounded (:mod:`modelpull.watch`): stalled requests are retried, a stop or
the deadline interrupts every one, a wait for another process's lock says so and ends on
a stop. A store that ignores ``Range`` gets one whole-object stream per file
(:meth:`Engine._fall_back`).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

from modelpull import hedge
from modelpull.backends.base import Backend
from modelpull.concurrency import Climber, Gate
from modelpull.config import PullConfig
from modelpull.errors import (
    InterruptedPullError,
    ModelPullError,
    ObjectChangedError,
    RangeIgnoredError,
)
from modelpull.events import (
    BytesTransferred,
    ConcurrencyChanged,
    Event,
    FileFailed,
    FileQueued,
    FileResumed,
    FileSkipped,
    FileVerified,
    PartHedged,
    PartsRepaired,
)
from modelpull.fetch import Fetcher, Stopped
from modelpull.files import bytes_in
from modelpull.finish import Finishing
from modelpull.hashing import PartValues
from modelpull.jobs import Hedge, Work
from modelpull.jobs import Job as _Job
from modelpull.objects import RemoteFile
from modelpull.partfile import PartFile
from modelpull.ratelimit import RateLimiter
from modelpull.results import FileOutcome
from modelpull.retry import RetryPolicy
from modelpull.state import StateDir
from modelpull.tally import dispatcher
from modelpull.watch import POLL_SECONDS, Watchdog
from modelpull.workqueue import WorkQueue

__all__ = ["Engine"]

log = logging.getLogger("modelpull")

# How long a stopping pull waits for workers to notice before leaving them behind.
STOP_GRACE_SECONDS = 1.5
# Times a file another process holds is put back behind the others before it is waited for.
MAX_DEFERRALS = 3
# The part size of a file fetched whole, in one stream: larger than any object.
WHOLE = 1 << 62


class Engine(Finishing):
    """Runs one pull of already-listed files into DEST."""

    def __init__(
        self,
        backend: Backend,
        config: PullConfig,
        emit: Callable[[Event], None],
        *,
        retry: RetryPolicy | None = None,
        watch: Watchdog | None = None,
    ) -> None:
        self._backend = backend
        self._config = config
        self._emit = emit
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._retry = retry if retry is not None else RetryPolicy.from_config(config)
        self._limiter = RateLimiter(config.max_bandwidth) if config.max_bandwidth else None
        self._queue = WorkQueue[Work](0)
        self._gate = Gate(config.start_concurrency)
        if config.adaptive:
            climber = Climber(self._gate, config.max_concurrency, emit)
            self._emit = dispatcher([climber, emit])
        # Halted on interruption, the deadline or the first permanent failure.
        self._given_watch = watch
        self._watch = watch or Watchdog.for_config(config, started=self._retry.started)

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
        if self._given_watch is not None:
            return self._run(bucket, files, dest, only)
        with self._watch:
            return self._run(bucket, files, dest, only)

    def _run(
        self,
        bucket: str,
        files: Sequence[RemoteFile],
        dest: Path,
        only: Mapping[str, Collection[int]] | None,
    ) -> list[FileOutcome]:
        self._bucket = bucket
        self._fetcher = Fetcher(
            self._backend, bucket, self._emit, self._retry, self._watch, self._limiter
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
        # A file already at its final name will likely be kept (recorded, or adopted once
        # checked): counting it could refuse a pull that fetches nothing.
        self._state.check_free_space([(j.path, j.obj.size) for j in jobs if not j.file.adoptable()])
        # Small files first: configs and tokenizers land early, shards keep workers busy.
        jobs.sort(key=lambda j: (j.obj.size, j.path))
        self._jobs = {job.path: job for job in jobs}
        self._queue = WorkQueue[Work](len(jobs))
        total = sum(job.obj.size for job in jobs)
        self._hedges = hedge.budget(total, self._config.io_chunk_size) if self._config.hedge else 0
        for job in jobs:
            parts = len(job.file.parts)
            self._emit(FileQueued(path=job.path, size=job.obj.size, parts=parts))
            wanted = range(parts) if job.wanted is None else sorted(job.wanted)
            self._queue.put([(job, 0, i) for i in wanted])
        self._work(jobs)
        outcomes.extend(job.outcome for job in jobs if job.outcome is not None)
        return outcomes

    # -- workers ----------------------------------------------------------------------

    def _work(self, jobs: Sequence[_Job]) -> None:
        total_parts = sum(len(job.file.parts) for job in jobs)
        self._emit(ConcurrencyChanged(limit=self._gate.limit))
        workers = [
            threading.Thread(target=self._worker, name=f"modelpull-{i}", daemon=True)
            for i in range(min(self._config.most_concurrency, total_parts))
        ]
        for thread in workers:
            thread.start()
        try:
            for thread in workers:
                # Short joins keep the main thread responsive to Ctrl-C, SIGTERM and the
                # deadline.
                while thread.is_alive() and not self._watch.expired:
                    thread.join(POLL_SECONDS)
                    self._hedge()
        except KeyboardInterrupt as exc:
            self._wind_down(workers, jobs)
            raise InterruptedPullError(
                "pull interrupted; run the same command again to resume",
                signum=getattr(exc, "signum", signal.SIGINT),
            ) from None
        if self._watch.expired and any(job.outcome is None for job in jobs):
            self._wind_down(workers, jobs)
            raise self._watch.deadline_error()
        self._close_all(jobs)
        if self._error is not None:
            raise self._error

    def _wind_down(self, workers: Sequence[threading.Thread], jobs: Sequence[_Job]) -> None:
        """Stop every worker, waiting a moment for them; those left behind are daemons."""
        self._watch.halt()
        self._queue.close()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._close_all(jobs)

    def _worker(self) -> None:
        buffer: memoryview | None = None  # made once this worker is first let through
        while self._gate.enter(self._watch.halted):
            try:
                item = self._queue.get()
                if item is None:
                    return
                if buffer is None:
                    buffer = memoryview(bytearray(self._config.io_chunk_size))
                self._item(item, buffer)
            finally:
                self._gate.leave()

    def _hedge(self) -> None:
        """Split the parts far slower than their peers, while workers are idle; an
        optimisation, so a fault of its own is logged and never fails the pull."""
        try:
            self._split_slow_parts()
        except Exception:
            log.exception("hedging failed; the pull goes on without it")
            self._hedges = 0

    def _split_slow_parts(self) -> None:
        idle = min(self._queue.idle, self._hedges)
        if idle <= 0:
            return
        spans = self._fetcher.spans()
        now = time.monotonic()
        chunk = self._config.io_chunk_size
        picked = hedge.choose(spans, self._fetcher.recent.values(), now, idle, chunk)
        for span, split in picked:
            job = self._jobs.get(span.path)
            if job is None or not span.shorten(split, chunk):
                continue
            self._hedges -= 1
            self._emit(PartHedged(span.path, span.index, span.full_end - split))
            self._queue.put([Hedge(job.file, span)], front=True)

    def _item(self, item: Work, buffer: memoryview) -> None:
        """One queued part: open its file if need be, fetch it, record it; failures end
        the file (or start it over), never the worker."""
        if isinstance(item, Hedge):
            self._fetcher.tail(item.file, item.span, buffer)
            return
        job, generation, index = item
        try:
            if not self._begin_part(job, generation, index):
                return
            values: PartValues | None = None
            try:
                values = self._fetcher.part(job.file, index, buffer)
            finally:
                self._end_part(job, generation, index, values)
        except Stopped:
            pass
        except BaseException as exc:  # reported to the main thread, never lost
            try:
                if _ignores_range(exc) and self._fall_back(job, generation, index, exc):
                    return
                if not (isinstance(exc, ObjectChangedError) and self._restart(job, exc)):
                    self._fail(job, exc)
            except Stopped:
                pass
            except BaseException as again:
                self._fail(job, again)

    def _begin_part(self, job: _Job, generation: int, index: int) -> bool:
        with job.mutex:
            if job.state == "pending":
                if self._defer(job, generation, index):
                    return False
                if self._fetcher.whole and job.wanted is None and len(job.file.parts) > 1:
                    self._make_whole(job)
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
        self._lock(job)
        force = self._config.force
        # Another process may have completed the file while we waited for its lock.
        if not force and pf.is_complete():
            if not self._config.check_existing or pf.intact():
                self._skip(job, "skipped")
                return
            log.warning("%s changed on disk since it was pulled: checking it", job.path)
        # A file of one part costs one GET: its answer brings the checksums a HEAD would
        # (pf.learn), and If-Match sees a replaced object. A file already in DEST needs
        # them before anything is fetched (to adopt it), a multi-part one before its
        # parts are planned.
        one_get = len(pf.parts) == 1 and job.wanted is None and not pf.adoptable()
        if self._config.verify != "off" and not one_get:
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
        pf.headless = one_get and self._config.verify != "off"
        if pf.repaired:
            undone = bytes_in(pf.parts, pf.repaired)
            self._emit(PartsRepaired(job.path, len(pf.repaired), undone, "resume"))
        if pf.resumed_bytes:
            self._emit(FileResumed(path=job.path, bytes=pf.resumed_bytes))
        job.state = "active"
        self._check_complete(job)

    def _defer(self, job: _Job, generation: int, index: int) -> bool:
        """Another process holds the file's lock: put the part back and fetch other files
        first, a few times, so that processes pulling one model into one DEST share its
        files instead of queueing behind each other's; ``False`` to go on with it now."""
        if job.deferrals >= MAX_DEFERRALS or job.file.acquire(timeout=0):
            return False
        if not self._queue.has(lambda item: isinstance(item, tuple) and item[0] is not job):
            return False  # nothing else to do: wait for it
        job.deferrals += 1
        self._queue.put([(job, generation, index)])
        return True

    def _lock(self, job: _Job) -> None:
        """Take the file's lock; waiting for another process says so, and ends on a stop."""
        if job.file.locked or job.file.acquire(timeout=0):
            return
        holder = self._state.lock_holder(job.path)
        log.warning(
            "waiting for %s: another process%s is fetching it into the same folder",
            job.path,
            f" (pid {holder})" if holder is not None else "",
        )
        while not job.file.acquire(timeout=POLL_SECONDS):
            if self._watch.halted.is_set():
                raise Stopped

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
        self._watch.halt("failed")
        self._queue.close()

    def _close_all(self, jobs: Sequence[_Job]) -> None:
        for job in jobs:
            # A worker left behind (stuck in a request no interrupt reached) may hold the
            # mutex: its file is left to it, or to the process's exit.
            if not job.mutex.acquire(timeout=0.05):
                continue
            try:
                # A worker left behind may still write to this descriptor: closing it
                # could let the number be reused by another file. Process exit closes it.
                if job.inflight == 0:
                    job.file.close()
                job.file.release()
            finally:
                job.mutex.release()

    # -- a store that ignores Range ---------------------------------------------------

    def _fall_back(self, job: _Job, generation: int, index: int, exc: BaseException) -> bool:
        """The store ignores ``Range``: from now on each file is one part, fetched whole
        without a ``Range``, and this one starts over; False when that cannot help."""
        # A cluster pull's share (some parts of a file) cannot be fetched from such a
        # store: the cluster pull must not split its files between nodes.
        if job.wanted is not None:
            return False
        with job.mutex:
            if generation != job.generation:
                return True  # a part of the file as it was: it starts over anyway
            if job.state != "active" or job.whole:
                return False  # it failed even whole
            with self._error_lock:
                first, self._fetcher.whole = not self._fetcher.whole, True
            if first:
                log.warning(
                    "the store ignores Range: fetching each file whole, in one stream, "
                    "from now on (no parallel parts; a broken stream starts over): %s",
                    exc,
                )
            job.whole = True
            if len(job.file.parts) == 1:  # whole already: fetched again from byte 0
                self._queue.put([(job, generation, index)], front=True)
                return True
            job.generation += 1
            job.state = "restarting"
            if job.inflight == 0:
                self._restart_whole(job)
        return True

    def _make_whole(self, job: _Job) -> None:
        """With the mutex held, before the file is opened: one part, the whole object."""
        whole = dataclasses.replace(self._config, part_size=WHOLE)
        job.file = PartFile(self._state, RemoteFile(obj=job.obj, path=job.path), whole)
        job.whole = True
        job.generation += 1
        self._queue.put([(job, job.generation, 0)], front=True)

    def _restart_whole(self, job: _Job) -> None:
        """With the mutex held and no part in flight: start the file over, whole."""
        old = job.file
        undone = bytes_in(old.parts, old.done)
        old.close()
        old.release()
        self._make_whole(job)
        self._lock(job)
        # Its journal, for another part size, is not resumed: the temp file starts empty.
        job.file.open()
        if undone:
            self._emit(BytesTransferred(path=job.path, bytes=-undone))
        job.state = "active"


def _ignores_range(exc: BaseException) -> bool:
    """True for a ranged GET answered with the whole object, on every attempt."""
    return isinstance(exc, RangeIgnoredError) or isinstance(exc.__cause__, RangeIgnoredError)
