"""Backends behind one protocol; :func:`make_backend` picks one from the config."""

from __future__ import annotations

from modelpull.backends.base import Backend, ChunkSink, ObjectInfo, RangeResult
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import UsageError

__all__ = ["Backend", "ChunkSink", "ObjectInfo", "RangeResult", "make_backend"]

BACKENDS = ("boto3",)


def make_backend(config: PullConfig, credentials: Credentials | None = None) -> Backend:
    """The backend ``config.backend`` names, ready to use."""
    if config.backend == "boto3":
        from modelpull.backends.boto3 import Boto3Backend

        return Boto3Backend(config, credentials)
    raise UsageError(f"unknown backend {config.backend!r}: choose one of {', '.join(BACKENDS)}")
