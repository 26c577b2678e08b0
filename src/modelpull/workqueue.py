"""The queue of parts the engine's workers take from.

Workers block on it while files may still add parts: a file whose object changed, or
whose bytes failed verification, is refetched by putting its parts back at the front.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["WorkQueue"]

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """Items for workers, and a count of the files (jobs) not yet ended."""

    def __init__(self, open_jobs: int) -> None:
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._open_jobs = open_jobs
        self._closed = False
        self._waiting = 0  # workers blocked in get() with nothing to hand them

    def put(self, items: Sequence[T], *, front: bool = False) -> None:
        with self._cond:
            if front:
                self._items.extendleft(reversed(items))
            else:
                self._items.extend(items)
            self._cond.notify_all()

    def get(self) -> T | None:
        """The next item; ``None`` once closed, or once empty with every job ended."""
        with self._cond:
            while not self._items and self._open_jobs > 0 and not self._closed:
                self._waiting += 1
                try:
                    self._cond.wait()
                finally:
                    self._waiting -= 1
            return self._items.popleft() if self._items and not self._closed else None

    def has(self, wanted: Callable[[T], bool]) -> bool:
        """True when some queued item is ``wanted``."""
        with self._cond:
            return any(wanted(item) for item in self._items)

    @property
    def idle(self) -> int:
        """Workers waiting for an item while none is queued: spare hands for a hedge."""
        with self._cond:
            return self._waiting if not self._items else 0

    def job_ended(self) -> None:
        with self._cond:
            self._open_jobs -= 1
            self._cond.notify_all()

    def close(self) -> None:
        """Release every waiting worker; nothing more is handed out."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
