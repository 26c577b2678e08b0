"""Hedged tails: a part far slower than its peers, split with a fresh connection.

One slow connection at the end of a pull sets its duration (and the run-to-run spread):
AWS advises re-requesting the slowest few percent of large requests. Here, once no part
waits to be started and a worker is idle, a part in flight whose rate is under a third
of its peers' (the parts in flight and the last ones done), and that would still need
over :data:`MIN_SECONDS_LEFT` at that rate, is *split*: its request goes on to an
earlier end, and a fresh request on another connection fetches the rest. So is a part
at its peers' pace with over :data:`TAIL_SECONDS` to go: on a far store, where each
connection is slow, the last few large parts would otherwise run alone while the
other workers wait. The split is
where both should finish together: the slow request keeps its rate's share of the two.

No byte is written twice: each range belongs to one request, and the split is made
under the part's lock, so the slow request never writes past it. What a hedge costs is
the bytes the slow connection had in flight past its new end when it stopped: at most
one I/O buffer and the kernel's receive buffer. :func:`budget` caps hedges so that this
stays under 5% of the pull's bytes. A part hedged once is not hedged again, and a hedge
that fails leaves its range to the part's own request, which fetches it after all.
Parts whose checks need each upload part hashed in order (composite checksums,
multipart ETags) are not split.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from modelpull.hashing import PartValues

__all__ = ["MIN_SECONDS_LEFT", "Recent", "Span", "budget", "choose"]

MIN_SECONDS_LEFT = 2.0  # a slow part that would end sooner is left alone
TAIL_SECONDS = 3.0  # a part at its peers' pace is split when this much of it is left
SLOWER = 3.0  # "much slower": under a third of the peers' median rate
MIN_AGE = 1.0  # seconds a request must have run before its rate means anything
EXTRA_EGRESS = 0.05  # of the pull's bytes, at most, thrown away by hedges
RECEIVE_BUFFER = 4 << 20  # what a connection may still hold when it is stopped


@dataclass(eq=False)
class Span:
    """A part in flight: its range, how far its request got, and its hedged tail.

    ``end`` moves earlier once, when a hedge takes ``[end, full_end)``; ``offset`` is
    the next byte the part's own request writes. Both change under :attr:`lock`.
    """

    path: str
    index: int
    start: int
    full_end: int
    began: float = field(default_factory=time.monotonic)
    end: int = 0
    offset: int = 0
    hedged: bool = False
    tail: PartValues | None = None  # the hedge's values, once it succeeded
    hedge: Span | None = None  # the hedge's own span, once it started
    abandoned: bool = False  # the part's own request failed: its hedge writes nothing
    tail_done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.end = self.end or self.full_end
        self.offset = self.offset or self.start

    def rate(self, now: float) -> float:
        """Bytes per second its request has moved so far."""
        return (self.offset - self.start) / max(now - self.began, 1e-6)

    def shorten(self, split: int, margin: int) -> bool:
        """Hand ``[split, full_end)`` to a hedge, unless the request is already within
        ``margin`` bytes of it (or it was hedged before)."""
        with self.lock:
            if self.hedged or split >= self.end or split <= self.offset + margin:
                return False
            self.end = split
            self.hedged = True
            return True

    def adopt_hedge(self, hedge: Span) -> bool:
        """The hedge starts with its own span ``hedge``; ``False`` when the part was
        abandoned before it could."""
        with self.lock:
            if self.abandoned:
                return False
            self.hedge = hedge
            return True

    def abandon(self) -> None:
        """The part's own request failed (its object changed, it was stopped): no byte of
        its hedge, running or still queued, may land after this returns. The file may be
        started over next, for another version; the hedge is not counted among the
        file's requests in flight, so it must be cut here."""
        with self.lock:
            self.abandoned = True
            hedge = self.hedge
        if hedge is not None:
            with hedge.lock:
                hedge.end = hedge.offset

    def take_back(self) -> None:
        """The hedge failed: the part's own request fetches the tail after all."""
        with self.lock:
            self.end = self.full_end
            self.hedged = False


def budget(total_bytes: int, buffer_size: int) -> int:
    """The most hedges a pull of ``total_bytes`` may make (see the module)."""
    waste = buffer_size + RECEIVE_BUFFER
    return max(1, int(total_bytes * EXTRA_EGRESS) // waste)


def choose(
    spans: Sequence[Span],
    recent: Sequence[float],
    now: float,
    idle: int,
    min_piece: int,
) -> list[tuple[Span, int]]:
    """Spans to split now and where, slowest first, at most ``idle`` of them.

    ``recent`` are the rates of the last parts done; ``min_piece`` the smallest range
    worth a request of its own.
    """
    if idle <= 0 or not spans:
        return []
    rates = {id(s): s.rate(now) for s in spans}
    peers = [rates[id(s)] for s in spans if now - s.began >= MIN_AGE] + list(recent)
    if len(peers) < 2:
        return []
    typical = statistics.median(peers)
    if typical <= 0:
        return []  # nothing moves yet: no part is slower than its peers
    picked: list[tuple[Span, int]] = []
    # Longest to go first: a slow part, or a long one at its peers' pace that would keep
    # the pull running alone while workers wait (a far store's few large parts).
    for span in sorted(spans, key=lambda s: _time_left(s, rates[id(s)]), reverse=True):
        rate = rates[id(span)]
        left = span.end - span.offset
        if span.hedged or now - span.began < MIN_AGE or left < 2 * min_piece:
            continue
        slow = rate * SLOWER <= typical and left >= rate * MIN_SECONDS_LEFT
        if not slow and left < rate * TAIL_SECONDS:
            continue
        # Both finish together when the slow one keeps its rate's share of the rest.
        share = int(left * rate / (rate + typical))
        split = span.offset + max(share, 2 * min_piece)
        # Whole buffers from the part's start, and at least one more for the slow one.
        split -= (split - span.start) % min_piece
        if span.end - split >= min_piece:
            picked.append((span, split))
        if len(picked) == idle:
            break
    return picked


def _time_left(span: Span, rate: float) -> float:
    return (span.end - span.offset) / rate if rate > 0 else float("inf")


class Recent:
    """Rates of the last parts done, from any thread."""

    def __init__(self, keep: int = 32) -> None:
        self._rates: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, rate: float) -> None:
        with self._lock:
            self._rates.append(rate)

    def values(self) -> list[float]:
        with self._lock:
            return list(self._rates)
