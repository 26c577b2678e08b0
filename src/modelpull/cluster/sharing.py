"""Running one exchange round: choosing the transport (gloo, or NCCL where every fetcher
has a usable GPU), sizing its chunks, and moving the parts.

Split from :mod:`modelpull.cluster.run`, which decides *when* to exchange; this decides
*how*, and reports what moved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelpull.cluster.coord import KVStore
from modelpull.cluster.exchange import Exchange
from modelpull.cluster.options import MIN_CHUNK_SIZE
from modelpull.cluster.plan import ClusterPlan, Schedule, View
from modelpull.cluster.transport import HEADER, Transport, TransportError
from modelpull.config import PullConfig
from modelpull.events import Event

__all__ = ["Exchanged", "Sharing", "chunk_size", "run_exchange", "wants_nccl"]

log = logging.getLogger("modelpull")

# Exchange buffers (2 x (members + 1) slots) stay under this, whatever the cluster size.
EXCHANGE_MEMORY = 256 << 20


@dataclass(frozen=True)
class Sharing:
    """What an exchange needs from its run: where to meet, who this rank is, the settings
    rank 0 chose (``backend``: gloo, nccl or auto; ``chunk_size`` in bytes)."""

    store: KVStore
    prefix: str
    me: int
    device: int
    timeout: float
    backend: str
    chunk_size: int


@dataclass(frozen=True)
class Exchanged:
    """How an exchange went: whether it completed, whether NCCL failed, bytes moved."""

    ok: bool
    nccl_failed: bool
    received: int = 0
    sent: int = 0


def wants_nccl(backend: str) -> bool:
    return backend in ("nccl", "auto")


def chunk_size(wanted: int, members: int) -> int:
    """The exchange's chunk: as wanted, but within :data:`EXCHANGE_MEMORY` for ``members``."""
    cap = EXCHANGE_MEMORY // (2 * (members + 1))
    return max(MIN_CHUNK_SIZE, min(wanted, cap) // MIN_CHUNK_SIZE * MIN_CHUNK_SIZE)


def _use_nccl(setup: Sharing, view: View) -> bool:
    if not wants_nccl(setup.backend):
        return False
    states = [view.states[m] for m in view.members]
    usable = all(s.cuda and not s.nccl_failed for s in states)
    if not usable and setup.backend == "nccl":
        log.warning("rank %d: NCCL is not usable on every fetcher: using gloo", setup.me)
    return usable


def run_exchange(
    setup: Sharing,
    plan: ClusterPlan,
    view: View,
    schedule: Schedule,
    dest: Path,
    config: PullConfig,
    emit: Callable[[Event], None],
) -> Exchanged:
    """Run one exchange of ``schedule`` among ``view``'s members into ``dest``."""
    nccl = _use_nccl(setup, view)
    size = len(view.members)
    log.info(
        "rank %d: exchanging %d bytes among %d fetchers in %d steps (%s)",
        setup.me,
        schedule.total_bytes,
        size,
        schedule.steps,
        "nccl" if nccl else "gloo",
    )
    exchange: Exchange | None = None
    ok = True
    try:
        transport = Transport(
            setup.store,
            setup.prefix,
            view.members.index(setup.me),
            size,
            setup.timeout,
            HEADER + chunk_size(setup.chunk_size, size),
            nccl=nccl,
            device=setup.device,
        )
        try:
            exchange = Exchange(plan, view, setup.me, dest, config, schedule, transport, emit)
            began = time.monotonic()
            exchange.run()
            log.debug(
                "rank %d: exchange done in %.2fs: %d bytes received, %d sent",
                setup.me,
                time.monotonic() - began,
                exchange.stats.received,
                exchange.stats.sent,
            )
        finally:
            transport.close()
    except TransportError as exc:
        log.warning(
            "rank %d: the exchange of round %d failed (%s); going on without it",
            setup.me,
            view.round,
            exc,
        )
        ok = False
    stats = exchange.stats if exchange is not None else None
    return Exchanged(
        ok=ok,
        nccl_failed=nccl and not ok,
        received=stats.received if stats else 0,
        sent=stats.sent if stats else 0,
    )
