"""The run report's counts, and how events reach every observer.

Shared by :func:`modelpull.pull` and the cluster pull, so both report the same way.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Sequence

from modelpull.events import (
    BytesTransferred,
    Event,
    FileResumed,
    FileVerified,
    Observer,
    PartRetried,
)

__all__ = ["Tally", "dispatcher"]

log = logging.getLogger("modelpull")


class Tally:
    """Counts what the run report needs; one more observer of the engine."""

    def __init__(self) -> None:
        self.bytes = 0
        self.resumed = 0
        self.retries: Counter[str] = Counter()
        self.verified: Counter[str] = Counter()
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
        elif isinstance(event, FileResumed):
            with self._lock:
                self.resumed += event.bytes


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
