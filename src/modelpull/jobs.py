"""The scheduler's bookkeeping: one :class:`Job` per file, and the items of its queue.

A job's state, its generation (bumped when the file starts over, so that parts queued
for the file as it was are dropped) and its parts in flight are the engine's, changed
under the job's mutex; its bytes on disk are its :class:`~modelpull.partfile.PartFile`'s.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from modelpull.hedge import Span
from modelpull.objects import Layout, ObjectInfo
from modelpull.partfile import PartFile
from modelpull.results import FileOutcome

__all__ = ["Hedge", "Item", "Job", "Work"]


@dataclass(eq=False)
class Job:
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
    whole: bool = False  # one part, the whole object: the store ignores Range
    deferrals: int = 0  # times it was put back while another process held its lock
    # Each part's CRC-32C as written, from a download no guessed upload layout fitted.
    unfitted: tuple[tuple[int, int], ...] | None = None
    outcome: FileOutcome | None = None
    mutex: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> str:
        return self.file.path

    @property
    def obj(self) -> ObjectInfo:
        return self.file.obj


Item = tuple[Job, int, int]  # job, generation, part index


@dataclass(frozen=True, eq=False)
class Hedge:
    """A queued hedge: fetch the tail of ``span``, a part of ``file`` (see
    :mod:`modelpull.hedge`)."""

    file: PartFile
    span: Span


Work = Item | Hedge  # what the engine's queue holds
