"""Errors between ranks: what one rank posts of its failure, and how another rebuilds it."""

from __future__ import annotations

import logging
from typing import Any

from modelpull import errors
from modelpull.errors import ClusterError, ModelPullError

__all__ = ["describe_error", "rebuild_error"]

log = logging.getLogger("modelpull")


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
