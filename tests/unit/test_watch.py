"""The watchdog's rules, stepped by hand (:meth:`Watchdog.inspect` at chosen instants)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from modelpull.errors import DeadlineExceededError, TransientStoreError
from modelpull.state import StateDir
from modelpull.watch import Stopped, Watchdog, current


def watchdog(**kwargs: float) -> Watchdog:
    return Watchdog(speed_limit=100, speed_time=10.0, **kwargs)  # type: ignore[arg-type]


def test_a_flight_moving_too_little_is_interrupted_and_fails_as_a_stall() -> None:
    watch = watchdog()
    interrupted: list[bool] = []
    with pytest.raises(TransientStoreError) as info, watch.request("w.bin", "GET") as flight:
        assert current() is flight
        flight.attach(lambda: interrupted.append(True))
        t0 = flight.started
        watch.inspect(t0 + 5)
        flight.progress(999)  # under 100 bytes/s x 10 s
        watch.inspect(t0 + 9.9)
        assert flight.reason is None and not interrupted
        watch.inspect(t0 + 10.1)
        assert flight.reason == "stall" and interrupted == [True]
        # Whatever the transport made of the interruption, the stall is what is told.
        raise OSError("connection reset by peer")
    assert info.value.reason == "stall"
    assert "w.bin: stalled" in str(info.value)
    assert current() is None
    assert watch.flights() == []


def test_enough_bytes_open_a_new_window() -> None:
    watch = watchdog()
    with watch.request("w.bin", "GET") as flight:
        t0 = flight.started
        flight.progress(1000)
        watch.inspect(t0 + 8)  # 1,000 bytes within the window: judged from here on
        watch.inspect(t0 + 17.9)
        assert flight.reason is None
        watch.inspect(t0 + 18.1)
        assert flight.reason == "stall"


def test_time_in_modelpulls_own_hands_is_not_a_stall() -> None:
    watch = watchdog()
    with watch.request("w.bin", "GET") as flight:
        with flight.busy():  # the bandwidth cap, a slow disk
            watch.inspect(flight.started + 60)
            assert flight.reason is None
        watch.inspect(time.monotonic() + 9)
        assert flight.reason is None


def test_no_write_once_aborted() -> None:
    watch = watchdog()
    with watch.request("w.bin", "GET") as flight:
        with flight.writing():
            pass
        flight.abort("stall")
        with pytest.raises(Stopped), flight.writing():
            raise AssertionError("written after the abort")


def test_an_abort_waits_for_the_write_in_progress() -> None:
    watch = watchdog()
    order: list[str] = []
    with watch.request("w.bin", "GET") as flight:
        writing = threading.Event()

        def abort() -> None:
            writing.wait()
            flight.abort("stopped")
            order.append("aborted")

        thread = threading.Thread(target=abort)
        thread.start()
        with flight.writing():
            writing.set()
            time.sleep(0.1)
            order.append("written")
        thread.join()
    assert order == ["written", "aborted"]


def test_the_deadline_halts_everything_and_refuses_new_requests() -> None:
    began = time.monotonic()
    watch = Watchdog(deadline=5.0, started=began)
    interrupted: list[bool] = []
    with pytest.raises(Stopped), watch.request("w.bin", "GET") as flight:
        flight.attach(lambda: interrupted.append(True))
        watch.inspect(began + 4.9)
        assert not watch.expired
        watch.inspect(began + 5.0)
        assert watch.expired and watch.halted.is_set()
        assert flight.reason == "deadline" and interrupted == [True]
        raise OSError("connection reset by peer")
    with pytest.raises(Stopped), watch.request("other", "HEAD"):
        pass
    with pytest.raises(DeadlineExceededError) as info:
        watch.check()
    assert info.value.deadline == 5.0
    assert "\n" not in str(info.value)
    assert "run the same command again to resume" in str(info.value)


def test_halt_interrupts_the_flights_and_a_finished_one_is_left_alone() -> None:
    watch = watchdog()
    interrupted: list[str] = []
    with watch.request("done", "GET") as done:
        done.attach(lambda: interrupted.append("done"))
    with pytest.raises(Stopped), watch.request("w.bin", "GET") as flight:
        flight.attach(lambda: interrupted.append("w.bin"))
        watch.halt()
        raise OSError("connection reset by peer")
    assert interrupted == ["w.bin"]


def test_a_flight_aborted_before_it_connects_is_interrupted_when_it_does() -> None:
    watch = watchdog()
    with watch.request("w.bin", "GET") as flight:
        flight.abort("stall")
        interrupted: list[bool] = []
        flight.attach(lambda: interrupted.append(True))
        assert interrupted == [True]


def test_flights_can_be_queried_while_they_run() -> None:
    watch = watchdog()
    with watch.request("a", "GET") as first, watch.request("b", "HEAD"):
        first.progress(123)
        views = watch.flights()
    assert [(v.path, v.method, v.received) for v in views] == [("a", "GET", 123), ("b", "HEAD", 0)]
    assert views[0].started <= views[1].started


def test_wait_for_returns_raises_and_keeps_the_deadline() -> None:
    with Watchdog() as watch:
        assert watch.wait_for(lambda: 42) == 42
        with pytest.raises(KeyError):
            watch.wait_for(lambda: {}["missing"])
    with Watchdog(deadline=0.3, tick=0.05) as watch:
        began = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            watch.wait_for(lambda: time.sleep(30))
        assert time.monotonic() - began < 1.5


def test_the_monitor_thread_finds_a_stall_on_its_own() -> None:
    watch = Watchdog(speed_limit=1000, speed_time=0.2, tick=0.05)
    with watch, pytest.raises(TransientStoreError), watch.request("w.bin", "GET") as flight:
        deadline = time.monotonic() + 5
        while flight.reason is None and time.monotonic() < deadline:
            time.sleep(0.02)
        raise OSError("interrupted")


def test_the_holder_of_a_files_lock_is_named(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.create()
    assert state.lock_holder("w.bin") is None  # no lock file yet
    with FileLock(state.lock_path("w.bin")):
        holder = state.lock_holder("w.bin")
    # Linux says who holds a lock (/proc/locks); elsewhere the wait is told without it.
    assert holder == (os.getpid() if sys.platform == "linux" else None)
    assert state.lock_holder("w.bin") is None
