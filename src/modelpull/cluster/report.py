"""What a cluster pull reports: its events, as a pull's observers expect them, and its
errors between ranks (what one rank posts of its failure, and how another rebuilds it)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from modelpull import errors
from modelpull.cluster.plan import ClusterPlan, MemberState
from modelpull.errors import ClusterError, ModelPullError
from modelpull.events import Event, FileDone, FileQueued, FileResumed, FileSkipped, Observer
from modelpull.tally import Tally, dispatcher

__all__ = ["ClusterEvents", "describe_error", "rebuild_error"]

log = logging.getLogger("modelpull")


def describe_error(exc: BaseException, rank: int) -> dict[str, Any]:
    """An error as plain data another rank can read (never pickled: the store is open)."""
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__, "rank": rank}


def rebuild_error(info: dict[str, Any], context: str) -> ModelPullError:
    """The error another rank posted, as the same class where it can be rebuilt, so every
    rank exits with the same code."""
    message = f"{context}: {info.get('message', 'unknown error')}"
    cls = getattr(errors, str(info.get("type", "")), None)
    if isinstance(cls, type) and issubclass(cls, ModelPullError):
        try:
            return cls(message)
        except TypeError:
            pass  # needs more than a message (IntegrityError, ...)
    rank = info.get("rank")
    return ClusterError(message, ranks=(int(rank),) if isinstance(rank, int) else ())


class ClusterEvents:
    """Events of a cluster pull, shaped like a single pull's for its observers.

    A rank's rounds are internal: files are announced once (:meth:`announce`), share
    fetches report bytes and requests but no file events (:meth:`internal`), and the
    final engine run does not announce them again (:meth:`engine`).
    """

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.tally = Tally()
        self.emit = dispatcher(observers)
        self.announced: set[str] = set()

    def announce(self, plan: ClusterPlan, state: MemberState) -> None:
        """Tell observers what this rank will complete, once (rounds are internal)."""
        for f in plan.shared():
            if f in state.complete:
                continue
            remote = plan.files[f]
            self.announced.add(remote.path)
            self.emit(FileQueued(path=remote.path, size=remote.obj.size, parts=len(plan.parts(f))))
            kept = sum(e - s for p, (s, e) in enumerate(plan.parts(f)) if state.has(f, p))
            if kept:
                self._count(FileResumed(path=remote.path, bytes=kept))

    def internal(self, event: Event) -> None:
        """Events of a share fetch: counted; file events wait for the finalize."""
        if not isinstance(event, FileQueued | FileResumed | FileSkipped | FileDone):
            self._count(event)

    def engine(self, announce: bool) -> Callable[[Event], None]:
        """Events of the final engine run; without ``announce``, files were announced."""

        def emit(event: Event) -> None:
            if not announce:
                if isinstance(event, FileQueued | FileResumed):
                    return
                if isinstance(event, FileSkipped) and event.path in self.announced:
                    event = FileDone(path=event.path, size=event.size, seconds=0.0)
            self._count(event)

        return emit

    def _count(self, event: Event) -> None:
        self.tally(event)
        self.emit(event)
