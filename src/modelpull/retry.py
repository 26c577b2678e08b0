"""When and how long to wait before retrying a request: exponential backoff, full jitter.

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
from typing import TypeVar

from modelpull.errors import EndpointError, ModelPullError, TransientStoreError

__all__ = ["RetryPolicy", "is_retryable"]

T = TypeVar("T")

BASE_DELAY = 0.1
MAX_DELAY = 10.0


def is_retryable(exc: BaseException) -> bool:
    """Transient failures, and connection failures other than TLS verification."""
    if isinstance(exc, TransientStoreError):
        return True
    return isinstance(exc, EndpointError) and exc.reason != "tls"


@dataclass
class RetryPolicy:
    """Attempts per request (first included) and an optional deadline for the whole pull."""

    max_attempts: int
    deadline: float | None = None
    base_delay: float = BASE_DELAY
    max_delay: float = MAX_DELAY
    started: float = field(default_factory=time.monotonic)
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, exc: ModelPullError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        if not is_retryable(exc) or attempt >= self.max_attempts:
            return None
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        wait = self.rng.uniform(0, cap)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay * 6))
        if self.deadline is not None and time.monotonic() + wait - self.started > self.deadline:
            return None
        return wait

    def call(
        self,
        fn: Callable[[], T],
        on_retry: Callable[[ModelPullError, int, float], None],
        stop: threading.Event | None = None,
    ) -> T:
        """``fn()``, retried under this policy; ``on_retry(exc, attempt, delay)`` before each wait.

        A ``stop`` event set during a wait re-raises the last error at once.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except ModelPullError as exc:
                delay = self.delay(attempt, exc)
                if delay is None:
                    raise
                on_retry(exc, attempt, delay)
                if stop is not None and stop.wait(delay):
                    raise
                if stop is None:
                    time.sleep(delay)
