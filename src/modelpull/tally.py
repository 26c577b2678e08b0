"""The run report's counts, and how events reach every observer.

Shared by :func:`modelpull.pull` and the cluster pull, so both report the same way.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from modelpull.events import (
    BytesTransferred,
    ConcurrencyChanged,
    Event,
    FileResumed,
    FileVerified,
    Observer,
    PartHedged,
    PartRetried,
)
from modelpull.results import FileOutcome

__all__ = ["Tally", "dispatcher", "report"]

log = logging.getLogger("modelpull")


class Tally:
    """Counts what the run report needs; one more observer of the engine."""

    def __init__(self) -> None:
        self.bytes = 0
        self.resumed = 0
        self.retries: Counter[str] = Counter()
        self.verified: Counter[str] = Counter()
        self.concurrency = 0  # the most requests allowed in flight at once
        self.hedges = 0
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        # Negative counts (a refetched file's discarded bytes) are progress, not traffic.
        if isinstance(event, BytesTransferred) and event.bytes > 0:
            with self._lock:
                self.bytes += event.bytes
        elif isinstance(event, PartRetried):
            with self._lock:
                self.retries[event.reason] += 1
        elif isinstance(event, FileVerified):
            with self._lock:
                self.verified[event.kind] += 1
        elif isinstance(event, PartHedged):
            with self._lock:
                self.hedges += 1
        elif isinstance(event, ConcurrencyChanged):
            with self._lock:
                self.concurrency = max(self.concurrency, event.limit)
        elif isinstance(event, FileResumed):
            with self._lock:
                self.resumed += event.bytes


def report(tally: Tally, outcomes: Sequence[FileOutcome], seconds: float) -> dict[str, Any]:
    """The fields every pull's result has (:class:`~modelpull.results.PullResult`'s, past
    where it came from and where it went), from its outcomes and its tally."""
    return {
        "files_fetched": sum(1 for o in outcomes if o.status == "fetched"),
        "files_skipped": sum(1 for o in outcomes if o.status == "skipped"),
        "bytes_downloaded": tally.bytes,
        "seconds": seconds,
        "files": tuple(sorted(outcomes, key=lambda o: o.path)),
        "retries": dict(tally.retries),
        "checksums_verified": dict(tally.verified),
        "bytes_resumed": tally.resumed,
        "concurrency": tally.concurrency,
        "hedges": tally.hedges,
    }


def dispatcher(observers: Sequence[Observer]) -> Callable[[Event], None]:
    """One callable for all observers; one that raises is logged once, then ignored."""
    broken: set[int] = set()

    def emit(event: Event) -> None:
        for index, observer in enumerate(observers):
            if index in broken:
                continue
            try:
                observer(event)
            except Exception:
                broken.add(index)
                log.exception("observer %r failed and is now ignored", observer)

    return emit
