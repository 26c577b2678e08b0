"""The Python API: :func:`pull` and :func:`list_objects`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from modelpull.backends import make_backend
from modelpull.compat import tos as tos_compat
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.engine import Engine
from modelpull.errors import DestinationError
from modelpull.events import (
    Observer,
    PullFinished,
    PullStarted,
)
from modelpull.objects import RemoteFile
from modelpull.plan import list_remote, select
from modelpull.results import FileOutcome, PullResult
from modelpull.retry import RetryPolicy, retry_events
from modelpull.tally import Tally, dispatcher
from modelpull.uri import parse_uri

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["list_objects", "pull"]

log = logging.getLogger("modelpull")


def _for_scheme(
    scheme: str, config: PullConfig | None, credentials: Credentials | None
) -> tuple[PullConfig, Credentials | None]:
    """The config and credentials for a URI's store; ``TOS_*`` variables are read now.

    For ``tos://``: ``TOS_ENDPOINT``/``TOS_REGION`` rank above ``AWS_*`` (a config passed
    in keeps what it sets), a native endpoint is mapped to S3, addressing ``auto`` becomes
    ``virtual``, and ``TOS_ACCESS_KEY``/``TOS_SECRET_KEY`` come before boto3's chain.
    """
    if scheme != "tos":
        return (config if config is not None else PullConfig.from_env()), credentials
    cfg = tos_compat.config_for_tos() if config is None else tos_compat.adapt_config(config)
    return cfg, tos_compat.resolve_credentials(cfg, credentials)


def _check_dest(dest: Path) -> None:
    """Fail before any network traffic when DEST cannot be a writable folder."""
    probe = dest
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "DEST" if probe == dest else f"{probe} (in DEST's path)"
        raise DestinationError(f"{what} is not a folder: {dest}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DestinationError(
            f"cannot write to {probe}: not writable (permission denied or read-only file "
            "system) - choose another DEST"
        )


def pull(
    uri: str,
    dest: str | os.PathLike[str],
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    config: PullConfig | None = None,
    credentials: Credentials | None = None,
    observers: Sequence[Observer] = (),
    registry: CollectorRegistry | None = None,
    distributed: bool = False,
) -> PullResult:
    """Pull the object or folder at ``uri`` into the folder ``dest``.

    ``include``/``exclude`` are globs on the path relative to the URI's folder. ``config``
    defaults to :meth:`PullConfig.from_env` (read now). Files already complete in
    ``dest`` (same ETag and size as recorded) are skipped unless ``config.force``.
    ``observers`` receive :mod:`modelpull.events` from worker threads. ``registry``
    (default: none) records the pull's Prometheus metrics there, adding to those of
    earlier pulls on it (needs the ``[metrics]`` extra; see ``docs/metrics.md``).
    ``distributed=True`` runs this call as one rank of a job started by torchrun (or any
    launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``):
    each byte is fetched once per cluster and shared between nodes; see
    :func:`modelpull.cluster.pull_distributed` (the ``[distributed]`` extra).
    Raises :class:`~modelpull.errors.ModelPullError` subclasses only.
    """
    parsed = parse_uri(uri)
    cfg, credentials = _for_scheme(parsed.scheme, config, credentials)
    target = Path(dest)
    _check_dest(target)
    if registry is not None:
        from modelpull.observe.metrics import MetricsObserver  # the [metrics] extra

        metrics = MetricsObserver(registry, backend=cfg.backend, bucket=parsed.bucket)
        observers = [*observers, metrics]
    if distributed:
        from modelpull.cluster import pull_distributed

        return pull_distributed(
            uri,
            dest,
            include=include,
            exclude=exclude,
            config=cfg,
            credentials=credentials,
            observers=observers,
        )
    started = time.monotonic()
    tally = Tally()
    emit = dispatcher([tally, *observers])
    backend = make_backend(cfg, credentials)
    outcomes: list[FileOutcome] = []
    ok = False
    try:
        policy = RetryPolicy.from_config(cfg)
        listed = policy.call(lambda: list_remote(backend, parsed), on_retry=retry_events(emit))
        files = select(listed, include, exclude)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DestinationError(
                f"cannot create {target}: {exc.strerror or exc}", errno=exc.errno
            ) from exc
        engine = Engine(backend, cfg, emit, retry=policy)
        emit(
            PullStarted(
                backend=backend.name,
                bucket=parsed.bucket,
                files=len(files),
                bytes=sum(f.obj.size for f in files),
            )
        )
        outcomes = engine.run(parsed.bucket, files, target)
        ok = True
    finally:
        seconds = time.monotonic() - started
        fetched = sum(1 for o in outcomes if o.status == "fetched")
        emit(PullFinished(files=fetched, bytes=tally.bytes, seconds=seconds, ok=ok))
        backend.close()
    return PullResult(
        uri=uri,
        dest=str(target),
        backend=backend.name,
        files_fetched=fetched,
        files_skipped=sum(1 for o in outcomes if o.status == "skipped"),
        bytes_downloaded=tally.bytes,
        seconds=seconds,
        files=tuple(sorted(outcomes, key=lambda o: o.path)),
        retries=dict(tally.retries),
        checksums_verified=dict(tally.verified),
        bytes_resumed=tally.resumed,
        config=cfg.describe(),
    )


def list_objects(
    uri: str,
    *,
    config: PullConfig | None = None,
    credentials: Credentials | None = None,
) -> list[RemoteFile]:
    """The files :func:`pull` would consider for ``uri``, sorted by relative path."""
    parsed = parse_uri(uri)
    cfg, credentials = _for_scheme(parsed.scheme, config, credentials)
    backend = make_backend(cfg, credentials)
    try:
        return list_remote(backend, parsed)
    finally:
        backend.close()
