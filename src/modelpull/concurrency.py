"""How many requests are in flight: pinned by ``--concurrency``, or adapted to the link.

A fixed number of requests caps a pull at that number times one connection's rate: 16
streams of S3's ~90 MB/s is 1.4 GB/s on a node with a 100 Gb/s link, and 16 streams of a
far store's 16 MB/s is 256 MB/s. So unless the user pins it, the limit climbs a hill:

- every window (half a second of received bytes) the pull's throughput is measured;
- while it keeps rising (by 10% or more) the limit doubles, up to
  ``max_concurrency`` (each request holds one I/O buffer: that is the memory bound);
- when a growth bought nothing (throughput fell back) the limit returns to where it was;
- when the store throttles (503 SlowDown, 429, its QPS codes) the limit halves and holds
  for a few windows, then climbs again;
- a flat stretch is probed now and then with one step up, kept only if it pays.

Windows where fewer requests were running than the limit allowed (the pull's tail, or a
store that answers slower than the workers ask) say nothing about the limit and leave it.

:class:`Gate` holds the limit; the engine's workers pass through it. :class:`Climber`
moves it; it is one more observer of the engine's events (bytes and retries), so the
scheduler never branches on it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from modelpull.events import BytesTransferred, ConcurrencyChanged, Event, PartRetried
from modelpull.retry import THROTTLE_REASONS

__all__ = ["Climber", "Gate"]

WINDOW_SECONDS = 0.5
GROWTH = 2.0
RISING = 1.10  # a window this much faster than the last one is a rise
FALLING = 0.90  # a window this much slower after a growth undoes it
HOLD_WINDOWS = 3  # after throttling, before climbing again
PROBE_EVERY = 5  # flat windows between probes
MIN_LIMIT = 2


class Gate:
    """At most :attr:`limit` holders at once; the limit may move while they wait."""

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition()
        self._limit = limit
        self.active = 0
        self.peak = 0  # the most holders at once

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self._limit = limit
            self._cond.notify_all()

    def enter(self, stop: threading.Event) -> bool:
        """Wait for a place; ``False`` when ``stop`` is set first."""
        with self._cond:
            while self.active >= self._limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.2)
            if stop.is_set():
                return False
            self.active += 1
            self.peak = max(self.peak, self.active)
            return True

    def leave(self) -> None:
        with self._cond:
            self.active -= 1
            self._cond.notify()


class Climber:
    """Moves a :class:`Gate`'s limit between ``minimum`` and ``maximum`` (see the module).

    Call it with each engine event; ``clock`` is for tests.
    """

    def __init__(
        self,
        gate: Gate,
        maximum: int,
        emit: Callable[[Event], None],
        *,
        minimum: int = MIN_LIMIT,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gate = gate
        self._min = min(minimum, gate.limit)
        self._max = max(maximum, gate.limit)
        self._emit = emit
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._bytes = 0
        self._busy = 0.0  # holder-seconds seen at the gate during the window
        self._last_sample = self._started
        self._throttled = False
        self._last_rate: float | None = None
        self._grew_from: int | None = None  # the limit before the last growth
        self._hold = 0
        self._flat = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, BytesTransferred):
            if event.bytes > 0:
                self._account(event.bytes)
        elif isinstance(event, PartRetried) and event.reason in THROTTLE_REASONS:
            with self._lock:
                self._throttled = True

    def _account(self, n: int) -> None:
        with self._lock:
            now = self._clock()
            self._busy += self._gate.active * (now - self._last_sample)
            self._last_sample = now
            self._bytes += n
            elapsed = now - self._started
            if elapsed < self._window:
                return
            rate = self._bytes / elapsed
            busy = self._busy / elapsed
            throttled = self._throttled
            self._started, self._bytes, self._busy, self._throttled = now, 0, 0.0, False
            limit = self._decide(rate, busy, throttled)
        if limit is not None:
            self._emit(ConcurrencyChanged(limit=limit))

    def _decide(self, rate: float, busy: float, throttled: bool) -> int | None:
        """With the lock held: the new limit after a window, or ``None`` to keep it."""
        limit = self._gate.limit
        last, self._last_rate = self._last_rate, rate
        if throttled:
            self._hold, self._grew_from = HOLD_WINDOWS, None
            return self._set(max(self._min, limit // 2))
        if self._hold:
            self._hold -= 1
            return None
        if busy < 0.8 * limit:
            return None  # not enough work in flight to judge the limit
        if last is None:
            return self._grow(limit)
        if rate >= last * RISING:
            return self._grow(limit)
        if self._grew_from is not None and rate < last * FALLING:
            back, self._grew_from = self._grew_from, None
            self._flat = 0
            return self._set(back)
        self._grew_from = None
        self._flat += 1
        if self._flat >= PROBE_EVERY:
            return self._grow(limit)
        return None

    def _grow(self, limit: int) -> int | None:
        self._flat = 0
        grown = min(self._max, math.ceil(limit * GROWTH))
        if grown == limit:
            return None
        self._grew_from = limit
        return self._set(grown)

    def _set(self, limit: int) -> int | None:
        if limit == self._gate.limit:
            return None
        self._gate.set_limit(limit)
        return limit
