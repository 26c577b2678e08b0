"""What a cluster pull reports: its result, its tally of events, and errors between ranks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from modelpull import errors
from modelpull.api import PullResult
from modelpull.cluster.errors import ClusterError
from modelpull.errors import ModelPullError

__all__ = ["ClusterPullResult", "describe_error", "rebuild_error"]

log = logging.getLogger("modelpull")


@dataclass(frozen=True)
class ClusterPullResult(PullResult):
    """A :class:`~modelpull.api.PullResult` with this rank's part in the cluster.

    ``bytes_downloaded`` counts bytes this rank fetched from the store (its egress);
    ``bytes_from_peers``/``bytes_to_peers`` what the exchange moved; ``fetcher`` is the
    rank that fetched for this rank's node; ``lost_ranks`` the peers given up on.
    """

    rank: int = 0
    fetcher: int = 0
    nodes: int = 1
    bytes_from_peers: int = 0
    bytes_to_peers: int = 0
    lost_ranks: tuple[int, ...] = ()
    rounds: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["cluster"] = {
            "rank": self.rank,
            "fetcher": self.fetcher,
            "nodes": self.nodes,
            "bytes_from_peers": self.bytes_from_peers,
            "bytes_to_peers": self.bytes_to_peers,
            "lost_ranks": list(self.lost_ranks),
            "rounds": self.rounds,
        }
        return data


def describe_error(exc: BaseException, rank: int) -> dict[str, Any]:
    """An error as plain data another rank can read (never pickled: the store is open)."""
    return {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__, "rank": rank}


def rebuild_error(info: dict[str, Any], context: str) -> ModelPullError:
    """The error another rank posted, as the same class where it can be rebuilt, so every
    rank exits with the same code."""
    message = f"{context}: {info.get('message', 'unknown error')}"
    cls = getattr(errors, str(info.get("type", "")), None)
    if isinstance(cls, type) and issubclass(cls, ModelPullError):
        try:
            return cls(message)
        except TypeError:
            pass  # needs more than a message (IntegrityError, ...)
    rank = info.get("rank")
    return ClusterError(message, ranks=(int(rank),) if isinstance(rank, int) else ())
