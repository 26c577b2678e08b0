"""One watchdog over a pull's requests in flight: stalls, the deadline and stops.

Every request to the store runs as a :class:`Flight` of the pull's :class:`Watchdog`
(:meth:`Watchdog.request`), in the thread that makes it. A flight knows when it began
and how many bytes it moved, and holds a way to interrupt it, which the backend attaches
as soon as it has a connection (:meth:`Flight.attach`): shutting the socket down, which
wakes a read blocked in another thread where closing it would not. One monitor thread
looks at every flight a few times a second:

- a flight that moved fewer than ``speed_limit x speed_time`` bytes in the last
  ``speed_time`` seconds (curl's ``--speed-limit``/``--speed-time``; no headers yet
  counts as nothing moved) is interrupted, and fails as
  :class:`~modelpull.errors.TransientStoreError` with reason ``stall``: the retry loop
  sends it again on a new connection, from the byte it reached;
- when the deadline passes, every flight is interrupted and the pull halted.

:meth:`Watchdog.halt` (a signal, a permanent failure) interrupts every flight at once;
a halted or expired flight fails as :class:`Stopped`, and the thread that runs the pull
says why (:meth:`Watchdog.check`). Flights stay queryable while they run
(:meth:`Watchdog.flights`), for whoever wants to hedge a slow request or tune
concurrency.

A flight's bytes reach the file under its lock (:meth:`Flight.writing`), which an abort
takes too: once a flight is aborted, nothing more of its response is written, and the
bytes written before stay valid for the next attempt. Time a flight spends in
modelpull's own hands (the bandwidth cap, a disk write) is not held against it.

A backend finds the calling thread's flight with :func:`current`: the SDKs call back
into modelpull's connection classes with no way to pass it along.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from modelpull.errors import DeadlineExceededError, StoreError, TransientStoreError
from modelpull.retry import deadline_error

if TYPE_CHECKING:
    from modelpull.config import PullConfig

__all__ = ["Flight", "FlightView", "Interrupt", "Stopped", "Watchdog", "current"]

T = TypeVar("T")
# Wakes a request blocked in another thread; safe to call from any thread, any time.
Interrupt = Callable[[], None]

# How often the monitor looks at the flights, and how often a waiting thread looks up.
TICK_SECONDS = 0.25
POLL_SECONDS = 0.2
# An abort waits this long for a write in progress before marking the flight anyway:
# a disk that hangs must not hang the monitor.
ABORT_WAIT_SECONDS = 0.5


class _Flying(threading.local):
    """The request the calling thread is making: each thread sees its own."""

    flight: Flight | None = None


_local = _Flying()


class Stopped(Exception):
    """Raised in a worker to abandon a request once the pull is stopping."""


def current() -> Flight | None:
    """The flight of the request the calling thread is making, if any."""
    return _local.flight


@dataclass(frozen=True, slots=True)
class FlightView:
    """A request in flight as seen at one instant (monotonic seconds)."""

    path: str
    method: str
    started: float
    received: int
    last_progress: float


class Flight:
    """One request in flight: when it began, how far it got, how to interrupt it.

    Only the thread making the request calls :meth:`attach`, :meth:`progress`,
    :meth:`busy` and :meth:`writing`; :meth:`abort` may come from any thread.
    """

    def __init__(self, path: str, method: str, halted: threading.Event, now: float) -> None:
        self.path = path
        self.method = method
        self.started = now
        self.received = 0
        self.last_progress = now
        self.reason: str | None = None  # why it was aborted: stall, deadline, stopped, ...
        self._halted = halted
        self._lock = threading.Lock()
        self._interrupt: Interrupt | None = None
        self._busy = 0
        # The stall window: since when, and from which byte count, it is measured.
        self._mark_time = now
        self._mark_bytes = 0

    def view(self) -> FlightView:
        return FlightView(self.path, self.method, self.started, self.received, self.last_progress)

    # -- the request's own thread ------------------------------------------------------

    def attach(self, interrupt: Interrupt) -> None:
        """How to interrupt this request from now on; a new HTTP exchange starts a new
        stall window (a listing's second page is progress)."""
        self._interrupt = interrupt
        self._rearm()
        if self.reason is not None:
            interrupt()  # aborted while it was still connecting

    def progress(self, n: int) -> None:
        """``n`` more bytes arrived."""
        self.received += n
        self.last_progress = time.monotonic()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Time spent here is modelpull's (a bandwidth cap), not the store's."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._rearm()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Write the response's bytes inside this: refused (:class:`Stopped`) once the
        flight is aborted or the pull halted, and never begun while an abort happens."""
        with self._lock:
            if self.reason is not None or self._halted.is_set():
                raise Stopped
            with self.busy():
                yield

    def detach(self) -> None:
        """The connection is done with (maybe back in its pool): nothing may interrupt it."""
        self._interrupt = None

    # -- any thread ----------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Mark the flight aborted (after any write in progress) and interrupt it."""
        locked = self._lock.acquire(timeout=ABORT_WAIT_SECONDS)
        try:
            if self.reason is None:
                self.reason = reason
        finally:
            if locked:
                self._lock.release()
        interrupt = self._interrupt
        if interrupt is not None:
            with contextlib.suppress(Exception):  # a socket already gone is as good
                interrupt()

    def stalled(self, now: float, min_bytes: int, window: float) -> bool:
        """True when fewer than ``min_bytes`` arrived in the ``window`` seconds up to ``now``."""
        if self._busy:
            return False
        if self.received - self._mark_bytes >= min_bytes:
            # Enough moved: judge the next window from here.
            self._mark_time, self._mark_bytes = now, self.received
            return False
        return now - self._mark_time >= window

    def _rearm(self) -> None:
        self._mark_time, self._mark_bytes = time.monotonic(), self.received


class Watchdog:
    """The requests in flight of one pull, and the one thread that watches them.

    ``speed_limit`` (bytes/s, 0: off) and ``speed_time`` (s) define a stall; the
    ``deadline`` (s) counts from ``started`` (monotonic; default: now). Use as a context
    manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        *,
        speed_limit: int = 0,
        speed_time: float = 20.0,
        deadline: float | None = None,
        started: float | None = None,
        tick: float = TICK_SECONDS,
    ) -> None:
        self.speed_limit = speed_limit
        self.speed_time = speed_time
        self.deadline = deadline
        began = time.monotonic() if started is None else started
        self._deadline_at = None if deadline is None else began + deadline
        self._tick = tick
        self.halted = threading.Event()  # set by halt(), and when the deadline passes
        self.expired = False
        self._lock = threading.Lock()
        self._flights: set[Flight] = set()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_config(cls, config: PullConfig, *, started: float | None = None) -> Watchdog:
        """The watchdog ``config`` asks for; its deadline counts from ``started``."""
        return cls(
            speed_limit=config.speed_limit,
            speed_time=config.speed_time,
            deadline=config.deadline,
            started=started,
        )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Watchdog:
        """Start the monitor thread (a daemon: it never keeps a process alive)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="modelpull-watch", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the monitor thread."""
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests ------------------------------------------------------------------------

    @contextlib.contextmanager
    def request(self, path: str, method: str) -> Iterator[Flight]:
        """Run one request as a flight of this thread; refused once the pull is halted.

        A request aborted for a stall fails as a retryable
        :class:`~modelpull.errors.TransientStoreError` (reason ``stall``), whatever its
        transport made of the interruption; one aborted for the deadline or a stop, as
        :class:`Stopped`.
        """
        flight = Flight(path, method, self.halted, time.monotonic())
        with self._lock:
            if self.halted.is_set():
                raise Stopped
            self._flights.add(flight)
        previous = current()
        _local.flight = flight
        try:
            yield flight
        except Exception as exc:
            if flight.reason is None:
                raise
            raise self._failure(flight, exc) from exc
        finally:
            flight.detach()
            _local.flight = previous
            with self._lock:
                self._flights.discard(flight)

    def flights(self) -> list[FlightView]:
        """The requests in flight now, oldest first."""
        with self._lock:
            views = [flight.view() for flight in self._flights]
        return sorted(views, key=lambda v: v.started)

    def _failure(self, flight: Flight, exc: Exception) -> Exception:
        if flight.reason != "stall":
            return Stopped()
        store = exc if isinstance(exc, StoreError) else None
        return TransientStoreError(
            f"{flight.path or flight.method}: stalled: fewer than {self.speed_limit} "
            f"bytes/s for {self.speed_time:g}s; abandoned, to be retried on a new connection",
            bucket=store.bucket if store else None,
            key=store.key if store else None,
            reason="stall",
        )

    # -- halting -------------------------------------------------------------------------

    def halt(self, reason: str = "stopped") -> None:
        """Stop the pull: refuse new requests, interrupt every one in flight."""
        with self._lock:
            self.halted.set()
            flights = list(self._flights)
        for flight in flights:
            flight.abort(reason)

    def check(self) -> None:
        """Raise :class:`~modelpull.errors.DeadlineExceededError` once the deadline passed."""
        if self.expired:
            raise self.deadline_error()

    def deadline_error(self) -> DeadlineExceededError:
        assert self.deadline is not None
        return deadline_error(self.deadline)

    def wait_for(self, fn: Callable[[], T], name: str = "modelpull-wait") -> T:
        """``fn()``, run in a helper thread while this one waits in short steps.

        A wait in a blocking call (a listing over a stalled connection) cannot be cut
        short by a signal meant for this thread: waiting here, Ctrl-C and SIGTERM end it
        at once (halting the pull), and so does the deadline
        (:class:`~modelpull.errors.DeadlineExceededError`). The helper is a daemon,
        never joined.
        """
        outcome: list[tuple[bool, object]] = []

        def run() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append((False, exc))

        helper = threading.Thread(target=run, name=name, daemon=True)
        helper.start()
        try:
            while helper.is_alive() and not self.expired:
                helper.join(POLL_SECONDS)
        except KeyboardInterrupt:
            self.halt()
            raise
        self.check()
        ok, value = outcome[0]
        if not ok:
            assert isinstance(value, BaseException)
            raise value
        return value  # type: ignore[return-value]

    # -- the monitor ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.wait(self._tick):
            self.inspect(time.monotonic())

    def inspect(self, now: float) -> None:
        """One look at every flight at time ``now``: the monitor's step, also for tests."""
        if self._deadline_at is not None and now >= self._deadline_at and not self.expired:
            self.expired = True
            self.halt("deadline")
            return
        if self.speed_limit <= 0 or self.halted.is_set():
            return
        min_bytes = max(1, int(self.speed_limit * self.speed_time))
        with self._lock:
            flights = list(self._flights)
        for flight in flights:
            if flight.reason is None and flight.stalled(now, min_bytes, self.speed_time):
                flight.abort("stall")
