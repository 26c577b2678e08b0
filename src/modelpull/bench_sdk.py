"""The TOS SDK's own ``download_file``, as an arm of ``modelpull bench``.

``download_file`` is the path TOS deployments take today: per file, ``task_num``
threads of ``part_size`` ranged GETs into ``<path>.temp``, a checkpoint beside it, then a
rename. The bench runs it at the same concurrency and part size as its other arms, file
by file into the trial's folder, and hashes what it wrote like any other trial's. The
listing and the client come from the ``tos-sdk`` backend, so both arms of the TOS SDK
reach the store the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelpull.backends.errors import ErrorMap
from modelpull.backends.tos_sdk import TosSdkBackend, translate
from modelpull.errors import UsageError
from modelpull.objects import ObjectInfo
from modelpull.plan import choose, list_remote
from modelpull.resolve import Target

__all__ = ["ProgressSink", "download_file", "run_trial"]

# Receives the byte count of each piece download_file wrote; it may raise to stop it.
ProgressSink = Callable[[int], None]


def download_file(
    backend: TosSdkBackend,
    obj: ObjectInfo,
    bucket: str,
    path: Path,
    progress: ProgressSink,
    *,
    part_size: int,
    task_num: int,
) -> None:
    """All of ``obj`` into ``path`` (created or replaced) with the SDK's ``download_file``.

    The SDK writes ``<path>.temp`` with ``task_num`` threads of ``part_size`` ranged
    GETs, keeps a checkpoint beside it (so a failed or interrupted download resumes from
    its completed parts on the next call) and renames it to ``path``. ``progress``
    receives each piece's byte count from the SDK's threads; an exception it raises
    stops the download and is raised again here unchanged. The SDK's errors become
    modelpull's, as the backend's do.
    """
    raised: list[BaseException] = []

    def listener(consumed: int, total: int, once: int, kind: object) -> None:
        if once <= 0:
            return
        try:
            progress(once)
        except BaseException as exc:
            raised.append(exc)
            raise

    errors = ErrorMap(translate, backend.names)
    try:
        with errors(bucket, obj.key):
            backend.client.download_file(
                bucket,
                obj.key,
                str(path),
                if_match=obj.etag or None,
                part_size=part_size,
                task_num=task_num,
                enable_checkpoint=True,
                data_transfer_listener=listener,
            )
    except Exception:
        if raised:
            # The SDK wraps what the listener raised; the caller's own signal goes back.
            raise raised[0] from None
        raise


def run_trial(target: Target, dest: Path) -> dict[str, Any]:
    """Every object under ``target`` into ``dest`` with :func:`download_file`, timed.

    ``target.config.concurrency`` is the SDK's ``task_num`` and its ``part_size`` the
    SDK's ``part_size``; the target must resolve to the ``tos-sdk`` backend. Returns
    the trial's numbers as ``modelpull bench`` records them (the SDK reports no
    per-request timings).
    """
    backend = target.backend
    if not isinstance(backend, TosSdkBackend):
        raise UsageError("the download_file arm needs the tos-sdk backend")
    config, parsed = target.config, target.uri
    received = 0

    def count(n: int) -> None:
        nonlocal received
        received += n

    started = time.monotonic()  # the listing counts, as it does in a pull's time
    try:
        files = choose(list_remote(backend, parsed), parsed)  # a wildcard URI's glob too
        for remote in files:
            local = dest / remote.path
            local.parent.mkdir(parents=True, exist_ok=True)
            download_file(
                backend,
                remote.obj,
                parsed.bucket,
                local,
                count,
                part_size=config.part_size,
                task_num=config.start_concurrency,
            )
        seconds = time.monotonic() - started
    finally:
        target.close()
    return {"seconds": seconds, "bytes": received, "retries": {}, "latencies": []}
