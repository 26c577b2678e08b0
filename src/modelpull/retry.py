"""The one retry loop: exponential backoff with full jitter, a budget and a deadline.

Every request to the store (listing, HEAD, ranged GET) runs through :meth:`RetryPolicy.call`.
A wait that would outlast the pull's deadline is not begun: the deadline's own error
(:class:`~modelpull.errors.DeadlineExceededError`) ends the request at once.
Full jitter (a uniform delay between zero and the exponential cap) spreads the retries
of many parts that failed together, which matters when a store answers 503 SlowDown to
all of them at once. A server's ``Retry-After`` is a floor, not a suggestion.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from modelpull.errors import (
    DeadlineExceededError,
    EndpointError,
    ModelPullError,
    RetriesExhaustedError,
    StoreError,
    TransientStoreError,
)
from modelpull.events import Event, PartRetried

if TYPE_CHECKING:
    from modelpull.config import PullConfig

__all__ = [
    "THROTTLE_REASONS",
    "OnRetry",
    "RetryPolicy",
    "deadline_error",
    "is_retryable",
    "retry_events",
]

T = TypeVar("T")
# (the error, the attempt that failed, seconds before the next one)
OnRetry = Callable[[ModelPullError, int, float], None]

BASE_DELAY = 0.1
MAX_DELAY = 10.0
THROTTLE_BASE_DELAY = 1.0
# An attempt that moved this many bytes is not counted against the budget (a trickle's
# few bytes do not count), up to this many times the budget.
PROGRESS_BYTES = 1 << 20
PROGRESS_TRIES = 20
# Retry reasons that mean "too many requests": S3's and TOS's throttling codes, and the
# bare statuses a store sends without a code.
THROTTLE_REASONS = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
        "ExceedAccountQPSLimit",
        "ExceedBucketQPSLimit",
        "429",
        "503",
    }
)


def is_retryable(exc: BaseException) -> bool:
    """Transient failures, and connection failures other than TLS verification."""
    if isinstance(exc, TransientStoreError):
        return True
    return isinstance(exc, EndpointError) and exc.reason != "tls"


def deadline_error(deadline: float) -> DeadlineExceededError:
    """The one error, and the one line, of a pull that ran out of its deadline."""
    return DeadlineExceededError(
        f"the deadline of {deadline:g}s passed before the pull finished (--deadline / "
        "MODELPULL_DEADLINE); what was written is kept: run the same command again to resume",
        deadline=deadline,
    )


def retry_events(emit: Callable[[Event], None], path: str = "") -> OnRetry:
    """An ``on_retry`` that reports each retry as a :class:`PartRetried` event."""

    def on_retry(exc: ModelPullError, attempt: int, delay: float) -> None:
        reason = getattr(exc, "reason", None) or "error"
        emit(PartRetried(path=path, reason=reason, attempt=attempt, delay=delay))

    return on_retry


@dataclass
class RetryPolicy:
    """Attempts per request (first included) and an optional deadline for the whole pull.

    One policy serves a whole pull, so its deadline counts from the pull's start.
    """

    max_attempts: int
    deadline: float | None = None
    base_delay: float = BASE_DELAY
    max_delay: float = MAX_DELAY
    started: float = field(default_factory=time.monotonic)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_config(cls, config: PullConfig) -> RetryPolicy:
        """The policy ``config`` asks for, its deadline starting now."""
        return cls(max_attempts=config.max_attempts, deadline=config.deadline)

    def delay(self, attempt: int, exc: ModelPullError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        if not is_retryable(exc) or attempt >= self.max_attempts:
            return None
        # A store that says "too many requests" gets seconds, not tenths: the backoff of
        # botocore's standard mode, and adaptive concurrency halves the requests too.
        throttled = getattr(exc, "reason", None) in THROTTLE_REASONS
        base = max(self.base_delay, THROTTLE_BASE_DELAY) if throttled else self.base_delay
        cap = min(self.max_delay, base * (2 ** (attempt - 1)))
        wait = self.rng.uniform(0, cap)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay * 6))
        if self.deadline is not None and time.monotonic() + wait - self.started > self.deadline:
            return None
        return wait

    def _retryable(self, attempt: int, exc: ModelPullError) -> bool:
        return is_retryable(exc) and attempt < self.max_attempts

    def call(
        self,
        fn: Callable[[], T],
        *,
        what: str = "",
        on_retry: OnRetry | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[], int] | None = None,
    ) -> T:
        """``fn()``, retried under this policy; ``on_retry(exc, attempt, delay)`` before each wait.

        Errors that are not retryable propagate at once. A transient store error that
        outlives the budget after more than one attempt becomes
        :class:`~modelpull.errors.RetriesExhaustedError` (``what`` names the request in
        its message); one whose next attempt would come after the deadline,
        :class:`~modelpull.errors.DeadlineExceededError`. A ``stop`` event set during a
        wait re-raises the last error at once.

        ``progress()`` (bytes a transfer has received so far) makes the budget one of
        attempts that moved (next to) nothing: an attempt that got :data:`PROGRESS_BYTES`
        further starts the count again, so a connection that breaks every few MiB still
        finishes a large part, resuming each time, while :data:`PROGRESS_TRIES` times the
        budget bounds the whole.
        """
        attempt = tries = 0
        while True:
            attempt += 1
            tries += 1
            before = progress() if progress is not None else 0
            try:
                return fn()
            except ModelPullError as exc:
                moved = progress is not None and progress() - before >= PROGRESS_BYTES
                if moved and tries < self.max_attempts * PROGRESS_TRIES:
                    attempt = 1  # it got somewhere: backoff and budget start over
                delay = self.delay(attempt, exc)
                if delay is None and self.deadline is not None and self._retryable(attempt, exc):
                    # Only the deadline said no: say that, not "retries exhausted".
                    raise deadline_error(self.deadline) from exc
                if delay is None:
                    # An unreachable endpoint stays what it is (its own exit code); a
                    # store that kept failing becomes "retries exhausted".
                    if tries > 1 and isinstance(exc, TransientStoreError):
                        raise _exhausted(exc, tries, what) from exc
                    raise
                if on_retry is not None:
                    on_retry(exc, attempt, delay)
                if stop is None:
                    time.sleep(delay)
                elif stop.wait(delay):
                    raise


def _exhausted(exc: StoreError, attempt: int, what: str) -> RetriesExhaustedError:
    prefix = f"{what}: " if what else ""
    return RetriesExhaustedError(
        f"{prefix}gave up after {attempt} attempts: {exc}",
        bucket=exc.bucket,
        key=exc.key,
        status=exc.status,
        code=exc.code,
        request_id=exc.request_id,
        reason=exc.reason,
    )
