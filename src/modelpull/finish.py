"""How a file's fetch ends once its parts are in: verified and placed; its damaged parts
fetched again; fetched again whole (its bytes kept failing, or the object changed); or
left partial for whoever completes it.

:class:`Finishing` is the engine's half that decides what a complete (or failed) file
becomes; the scheduler in :mod:`modelpull.engine` decides which part runs when. Every
method here runs with the job's mutex held, unless it says otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from modelpull.config import PullConfig
from modelpull.errors import IntegrityError, ObjectChangedError
from modelpull.events import (
    BytesTransferred,
    Event,
    FileDone,
    FileSkipped,
    FileVerified,
    PartRetried,
    PartsRepaired,
)
from modelpull.fetch import Fetcher
from modelpull.integrity import needs_layout
from modelpull.jobs import Job, Work
from modelpull.objects import Layout, ObjectInfo
from modelpull.results import FileOutcome
from modelpull.workqueue import WorkQueue

__all__ = ["MAX_REFETCHES", "MAX_REPAIRS", "Finishing"]

log = logging.getLogger("modelpull")

# Whole-file refetches after the object changed or its bytes failed verification.
MAX_REFETCHES = 2
# Rounds of refetching only the parts found damaged, before a whole-file refetch.
MAX_REPAIRS = 4


class Finishing:
    """The end of each file's fetch; a base of :class:`~modelpull.engine.Engine`."""

    _config: PullConfig
    _emit: Callable[[Event], None]
    _fetcher: Fetcher
    _queue: WorkQueue[Work]

    def _restart_whole(self, job: Job) -> None:
        """Start ``job`` over as one whole-object part (a store that ignores ``Range``)."""
        raise NotImplementedError

    # -- completion -------------------------------------------------------------------

    def _check_complete(self, job: Job) -> None:
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
            self._refetch(job)
            return
        if pf.verifier.unverifiable and pf.verifier.layout is not None and not self._alike(job):
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

    def _alike(self, job: Job) -> bool:
        """Whether this download's bytes are the last one's, for a file whose check was
        guessed: an upload layout fitted its size and part count, yet no guess matched.

        Damage in transit and a part size no guess knows look the same then, so the file is
        fetched again, and placed unchecked only once two downloads agree on every part's
        CRC-32C; when they never do, the pull fails with exit 7.
        """
        pf = job.file
        check = pf.verifier.unverifiable
        assert pf.journal is not None and check is not None
        seen = tuple(sorted(pf.journal.done.items()))
        if seen == job.unfitted:
            return True
        if job.refetches >= MAX_REFETCHES:
            pf.discard()
            raise IntegrityError(
                f"{job.path}: no part size fits its {check.split(',')[0]}"
                f" and {job.refetches + 1} downloads differed",
                path=job.path,
                algorithm="crc32c",
                expected="the same bytes twice",
                actual="different bytes",
            )
        job.unfitted = seen
        log.warning(
            "%s: no guessed part size fits its %s: fetching it again, to tell damaged bytes "
            "from an unusual part size",
            job.path,
            check,
        )
        self._refetch(job)
        return False

    def _refetch(self, job: Job) -> None:
        """Fetch the whole file again, from the start: an integrity retry."""
        self._emit(
            PartRetried(path=job.path, reason="integrity", attempt=job.refetches + 1, delay=0.0)
        )
        self._begin_restart(job)
        if job.inflight == 0:
            self._do_restart(job)

    def _skip(self, job: Job, status: str, verified: Sequence[str] = ()) -> None:
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

    def _repair(self, job: Job, exc: IntegrityError) -> bool:
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

    def _leave_partial(self, job: Job) -> None:
        """The wanted parts are in: keep the temp file and journal for whoever completes it."""
        job.file.leave_partial()
        job.state = "partial"
        seconds = time.monotonic() - job.file.started
        job.outcome = FileOutcome(job.path, job.obj.size, "partial", seconds)
        job.file.release()
        self._queue.job_ended()

    # -- refetching a whole file ------------------------------------------------------

    def _restart(self, job: Job, exc: ObjectChangedError) -> bool:
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

    def _begin_restart(self, job: Job) -> None:
        job.refetches += 1
        job.generation += 1
        job.state = "restarting"

    def _do_restart(self, job: Job) -> None:
        """With the mutex held and no part in flight: start the file over, latest version."""
        if job.whole and len(job.file.parts) > 1:
            self._restart_whole(job)
            return
        fresh = self._fetcher.head(job.obj.key)
        undone = job.file.restart(fresh, self._layout(fresh))
        job.part_values, job.asked_part_values = None, False
        if undone:
            self._emit(BytesTransferred(path=job.path, bytes=-undone))
        job.state = "active"
        parts = range(len(job.file.parts))
        self._queue.put([(job, job.generation, i) for i in parts], front=True)
