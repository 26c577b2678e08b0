"""Backends behind one protocol; :func:`make_backend` picks one from the config."""

from __future__ import annotations

from modelpull.backends.base import Backend, ChunkSink, RangeResult
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import UsageError

__all__ = ["Backend", "ChunkSink", "RangeResult", "make_backend"]

BACKENDS = ("boto3", "tos-sdk")


def make_backend(config: PullConfig, credentials: Credentials | None = None) -> Backend:
    """The backend ``config.backend`` names, ready to use."""
    if config.backend == "boto3":
        from modelpull.backends.boto3 import Boto3Backend

        return Boto3Backend(config, credentials)
    if config.backend == "tos-sdk":
        # Imported here: the TOS SDK is an optional extra; without it this raises
        # BackendUnavailableError (exit 9) only when the backend is chosen.
        from modelpull.backends.tos_sdk import TosSdkBackend

        return TosSdkBackend(config, credentials)
    raise UsageError(f"unknown backend {config.backend!r}: choose one of {', '.join(BACKENDS)}")
