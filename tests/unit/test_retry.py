import random

import pytest

from modelpull.errors import (
    AccessDeniedError,
    DeadlineExceededError,
    EndpointError,
    RetriesExhaustedError,
    TransientStoreError,
)
from modelpull.retry import RetryPolicy


def test_transient_errors_back_off_with_full_jitter() -> None:
    policy = RetryPolicy(max_attempts=6, base_delay=0.1, max_delay=1.0, rng=random.Random(1))
    exc = TransientStoreError("reset", reason="reset")
    delays = [policy.delay(attempt, exc) for attempt in range(1, 6)]
    caps = [0.1, 0.2, 0.4, 0.8, 1.0]
    assert all(d is not None and 0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert policy.delay(6, exc) is None


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=0.01)
    exc = TransientStoreError("503", reason="SlowDown")
    exc.retry_after = 2.0
    assert policy.delay(1, exc) == 2.0


def test_permanent_errors_are_not_retried() -> None:
    policy = RetryPolicy(max_attempts=5)
    assert policy.delay(1, AccessDeniedError("no", status=403)) is None
    assert policy.delay(1, EndpointError("tls", reason="tls")) is None
    assert policy.delay(1, EndpointError("refused", reason="connect")) is not None


def test_deadline_stops_retries() -> None:
    policy = RetryPolicy(max_attempts=100, deadline=0.5, base_delay=10, max_delay=10)
    exc = TransientStoreError("x", reason="reset")
    exc.retry_after = 5.0
    assert policy.delay(1, exc) is None


def test_a_retry_that_would_end_after_the_deadline_is_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=5, deadline=0.5, base_delay=10, max_delay=10)
    calls: list[int] = []

    def fail() -> None:
        calls.append(1)
        error = TransientStoreError("503", reason="SlowDown")
        error.retry_after = 5.0
        raise error

    with pytest.raises(DeadlineExceededError) as info:
        policy.call(fail)
    assert calls == [1]
    assert isinstance(info.value.__cause__, TransientStoreError)


def test_throttling_backs_off_in_seconds() -> None:
    policy = RetryPolicy(max_attempts=6, base_delay=0.1, max_delay=20.0, rng=random.Random(1))
    for reason in ("SlowDown", "429", "ExceedAccountQPSLimit"):
        exc = TransientStoreError("slow down", reason=reason)
        delays = [policy.delay(attempt, exc) for attempt in range(1, 6)]
        caps = [1.0, 2.0, 4.0, 8.0, 16.0]
        assert all(d is not None and 0 <= d <= c for d, c in zip(delays, caps, strict=True))
        assert max(d for d in delays if d is not None) > 1.0  # not tenths


def test_attempts_that_make_progress_do_not_spend_the_budget() -> None:
    policy = RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0)
    received = 0

    def breaks_after_a_mib() -> str:
        nonlocal received
        received += 1 << 20
        if received < 9 << 20:
            raise TransientStoreError("reset", reason="reset")
        return "done"

    assert policy.call(breaks_after_a_mib, progress=lambda: received) == "done"

    def never_moves() -> str:
        raise TransientStoreError("reset", reason="reset")

    with pytest.raises(RetriesExhaustedError, match="2 attempts"):
        policy.call(never_moves, progress=lambda: received)

    def trickles() -> str:
        nonlocal received
        received += 10  # a trickle's few bytes are no progress
        raise TransientStoreError("stalled", reason="stall")

    with pytest.raises(RetriesExhaustedError, match="2 attempts"):
        policy.call(trickles, progress=lambda: received)

    def always_a_mib() -> str:
        nonlocal received
        received += 1 << 20
        raise TransientStoreError("reset", reason="reset")

    with pytest.raises(RetriesExhaustedError, match="40 attempts"):  # 20 x the budget, still
        policy.call(always_a_mib, progress=lambda: received)
