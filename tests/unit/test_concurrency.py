"""Adaptive concurrency: the gate's limit climbs while throughput rises, backs off on
throttling, and undoes a growth that bought nothing (clock and traffic simulated)."""

from __future__ import annotations

import threading

from modelpull.concurrency import WINDOW_SECONDS, Climber, Gate
from modelpull.events import BytesTransferred, ConcurrencyChanged, Event, PartRetried


class Sim:
    """A gate with ``active`` holders and a climber on a clock that only moves when told."""

    def __init__(self, start: int = 16, maximum: int = 64) -> None:
        self.now = 0.0
        self.gate = Gate(start)
        self.events: list[Event] = []
        self.climber = Climber(self.gate, maximum, self.events.append, clock=lambda: self.now)

    def window(self, rate: float, *, busy: bool = True, throttled: bool = False) -> int:
        """One window at ``rate`` bytes/s with the gate full (or nearly empty); the limit."""
        self.gate.active = self.gate.limit if busy else 1
        if throttled:
            self.climber(PartRetried(path="w", reason="SlowDown", attempt=1, delay=0.1))
        for _ in range(8):  # eighths of a window (a power of two) add up to exactly one
            self.now += WINDOW_SECONDS / 8
            self.climber(BytesTransferred(path="w", bytes=int(rate * WINDOW_SECONDS / 8)))
        return self.gate.limit


def test_the_limit_climbs_while_throughput_rises_up_to_the_maximum() -> None:
    sim = Sim()
    limits = [sim.window(rate) for rate in (100e6, 150e6, 220e6, 330e6, 500e6, 750e6)]
    assert limits == [32, 64, 64, 64, 64, 64]
    assert [e.limit for e in sim.events if isinstance(e, ConcurrencyChanged)] == [32, 64]


def test_a_growth_that_bought_nothing_is_undone() -> None:
    sim = Sim()
    assert sim.window(100e6) == 32  # first window: try more
    assert sim.window(80e6) == 16  # slower with more: back to where it was


def test_a_flat_stretch_holds_then_probes() -> None:
    sim = Sim()
    sim.window(100e6)  # 32
    limits = [sim.window(100e6) for _ in range(6)]
    assert limits[:4] == [32, 32, 32, 32]
    assert 64 in limits[4:]  # a probe after a few flat windows


def test_throttling_halves_the_limit_and_holds_it() -> None:
    sim = Sim(start=32)
    assert sim.window(100e6, throttled=True) == 16
    # Held for a few windows even though throughput rises, then climbing again.
    assert [sim.window(r) for r in (120e6, 150e6, 200e6)] == [16, 16, 16]
    assert sim.window(300e6) == 32


def test_too_little_work_in_flight_says_nothing_about_the_limit() -> None:
    sim = Sim()
    assert [sim.window(rate, busy=False) for rate in (1e6, 50e6, 500e6)] == [16, 16, 16]


def test_the_gate_admits_up_to_its_limit_and_moves_with_it() -> None:
    gate = Gate(2)
    stop = threading.Event()
    assert gate.enter(stop) and gate.enter(stop)
    waiting = threading.Thread(target=gate.enter, args=(stop,))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()  # a third holder waits
    gate.set_limit(3)
    waiting.join(2)
    assert not waiting.is_alive() and gate.active == 3 and gate.peak == 3
    stop.set()
    assert not gate.enter(stop)  # a stopped pull lets no one through
