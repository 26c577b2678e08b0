"""Control messages between ranks through the rendezvous key-value store.

Bulk bytes go through a process group (:mod:`modelpull.cluster.transport`); everything
else (the plan, each node's state, agreement on who is still in, final statuses) is a
JSON value under a key of the launcher's store. Waiting on a key never hangs: while a
peer is awaited its *heartbeat* (a counter it bumps from a thread every few seconds) is
watched, and a peer whose counter has not moved for ``timeout`` seconds, or that has
posted its final status, is reported lost. A legitimately long phase (fetching a share
of a large model) is therefore never cut short by the timeout, while a dead peer is.

Store operations that fail (the store is hosted by rank 0 unless torchrun's agent hosts
it, so rank 0 dying takes it away) raise :class:`StoreLost`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

__all__ = ["Coordinator", "KVStore", "StoreLost"]

log = logging.getLogger("modelpull")

# Polling is cheap (one small request), and the keys awaited are few per phase.
POLL_FIRST = 0.02
POLL_MAX = 0.2
# Liveness is read less often than keys: it costs one request per awaited peer.
LIVENESS_EVERY = 0.5


class KVStore(Protocol):
    """The part of ``torch.distributed.Store`` used here."""

    def set(self, key: str, value: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def check(self, keys: list[str]) -> bool: ...

    def add(self, key: str, value: int) -> int: ...

    def compare_set(self, key: str, expected_value: str, desired_value: str) -> bytes: ...

    def clone(self) -> KVStore: ...

    def multi_get(self, keys: list[str]) -> list[bytes]: ...


class StoreLost(Exception):
    """The rendezvous store could not be reached: coordination is over."""


_UNREACHABLE = "cannot reach the rendezvous store"


def _store_call(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (RuntimeError, OSError, ValueError) as exc:  # torch's DistError is a RuntimeError
        lines = str(exc).strip().splitlines()
        raise StoreLost(f"{what}: {lines[0] if lines else type(exc).__name__}") from exc


class Coordinator:
    """One rank's view of the store, under a per-pull key prefix."""

    def __init__(self, store: KVStore, prefix: str, rank: int, timeout: float) -> None:
        self._store = store
        self._prefix = prefix.rstrip("/")
        self.rank = rank
        self.timeout = timeout
        self._beats: dict[int, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def prefix(self) -> str:
        return self._prefix

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}"

    # -- heartbeat --------------------------------------------------------------------

    def start(self) -> None:
        """Start bumping this rank's heartbeat, on a store client of the thread's own."""
        store = _store_call(_UNREACHABLE, self._store.clone)
        interval = min(5.0, max(0.1, self.timeout / 8))
        key = self._key(f"beat/{self.rank}")

        def beat() -> None:
            while not self._stop.is_set():
                try:
                    store.add(key, 1)
                except (RuntimeError, OSError):
                    return  # the main thread finds out on its own next request
                self._stop.wait(interval)

        self._thread = threading.Thread(target=beat, name="modelpull-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None

    def silent_for(self, rank: int) -> float:
        """Seconds since ``rank``'s heartbeat last moved, as seen from here."""
        count = _store_call(_UNREACHABLE, self._store.add, self._key(f"beat/{rank}"), 0)
        now = time.monotonic()
        seen = self._beats.get(rank)
        if seen is None or seen[0] != count:
            self._beats[rank] = (count, now)
            return 0.0
        return now - seen[1]

    def finished(self, rank: int) -> bool:
        """Whether ``rank`` has posted its final status (and so will post nothing else)."""
        return bool(_store_call(_UNREACHABLE, self._store.check, [self._key(f"done/{rank}")]))

    # -- values -----------------------------------------------------------------------

    def publish(self, name: str, value: Any) -> None:
        _store_call(
            _UNREACHABLE,
            self._store.set,
            self._key(name),
            json.dumps(value, separators=(",", ":")),
        )

    def read(self, name: str) -> Any:
        """The value at ``name``, which must exist."""
        raw = _store_call(_UNREACHABLE, self._store.get, self._key(name))
        return json.loads(raw)

    def exists(self, name: str) -> bool:
        return bool(_store_call(_UNREACHABLE, self._store.check, [self._key(name)]))

    def wait(
        self, names: Mapping[int, str], *, finished_is_lost: bool = True
    ) -> dict[int, Any | None]:
        """Each rank's value at its key; ``None`` for a rank lost before posting it.

        A rank is lost when its heartbeat is silent for ``timeout`` seconds or, with
        ``finished_is_lost``, when it posted its final status instead.
        """
        pending = dict(names)
        found: dict[int, Any | None] = {}
        poll = POLL_FIRST
        next_liveness = time.monotonic() + LIVENESS_EVERY
        while pending:
            # One request per pass while everything is on its way; per-key requests only
            # at liveness checks, so thousands of ranks do not flood the store.
            keys = [self._key(name) for name in pending.values()]
            if _store_call(_UNREACHABLE, self._store.check, keys):
                values = _store_call(_UNREACHABLE, self._store.multi_get, keys)
                for rank, raw in zip(list(pending), values, strict=True):
                    found[rank] = json.loads(raw)
                break
            if time.monotonic() >= next_liveness:
                next_liveness = time.monotonic() + LIVENESS_EVERY
                for rank in list(pending):
                    name = pending[rank]
                    if self.exists(name):
                        found[rank] = self.read(name)
                    elif finished_is_lost and self.finished(rank):
                        log.info("rank %d finished without posting %s", rank, name)
                        found[rank] = None
                    elif self.silent_for(rank) > self.timeout:
                        log.warning(
                            "rank %d has been silent for more than %.0fs (the distributed "
                            "timeout): treating it as lost",
                            rank,
                            self.timeout,
                        )
                        found[rank] = None
                    else:
                        continue
                    del pending[rank]
                continue
            time.sleep(poll)
            poll = min(POLL_MAX, poll * 2)
        return found

    def agree(self, name: str, proposal: Any) -> Any:
        """The first proposal posted at ``name`` by any rank: one answer for all."""
        raw = _store_call(
            _UNREACHABLE,
            self._store.compare_set,
            self._key(name),
            "",
            json.dumps(proposal, separators=(",", ":")),
        )
        return json.loads(raw)

    def gather(self, name: str, value: Any, ranks: Iterable[int]) -> dict[int, Any | None]:
        """Post ``value`` at ``name/<rank>`` and wait for the same from ``ranks``."""
        self.publish(f"{name}/{self.rank}", value)
        return self.wait({r: f"{name}/{r}" for r in ranks})
