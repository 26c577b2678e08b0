"""Backends behind one protocol; :func:`make_backend` picks one from the config."""

from __future__ import annotations

from modelpull.backends.base import Backend, ChunkSink, RangeResult
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import UsageError

__all__ = ["Backend", "ChunkSink", "RangeResult", "make_backend"]

BACKENDS = ("boto3", "tos-sdk")


def make_backend(
    config: PullConfig, credentials: Credentials | None = None, *, scheme: str | None = None
) -> Backend:
    """The backend ``config.backend`` names, ready to use.

    ``scheme`` (``s3`` or ``tos``: the URI's) decides which URIs and variables its
    messages name; unset, each backend names its own store's.
    """
    options = {} if scheme is None else {"scheme": scheme}
    if config.backend == "boto3":
        from modelpull.backends.boto3 import Boto3Backend

        return Boto3Backend(config, credentials, **options)
    if config.backend == "tos-sdk":
        # Imported here: the TOS SDK is an optional extra; without it this raises
        # BackendUnavailableError (exit 9) only when the backend is chosen.
        from modelpull.backends.tos_sdk import TosSdkBackend

        return TosSdkBackend(config, credentials, **options)
    raise UsageError(f"unknown backend {config.backend!r}: choose one of {', '.join(BACKENDS)}")
