"""What there is: the files the store offers (the plan) and what this DEST already holds."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from pathlib import Path

from modelpull.backends.base import Backend
from modelpull.cluster.plan import ClusterPlan, MemberState
from modelpull.config import PullConfig
from modelpull.errors import ModelPullError
from modelpull.objects import RemoteFile
from modelpull.partfile import PartFile
from modelpull.plan import choose, list_remote
from modelpull.retry import RetryPolicy
from modelpull.state import StateDir
from modelpull.uri import ObjectURI

__all__ = ["local_state", "make_plan"]


def make_plan(
    backend: Backend,
    uri: ObjectURI,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    config: PullConfig,
    on_retry: Callable[[ModelPullError, int, float], None],
) -> ClusterPlan:
    """List and filter as :func:`modelpull.pull` does, then HEAD each file.

    A listing lacks the checksums a HEAD gives, and every node must compute the same CRC
    kinds over the parts it receives, so the plan carries them.
    """
    policy = RetryPolicy.from_config(config)
    listed = policy.call(lambda: list_remote(backend, uri), on_retry=on_retry)
    files = choose(listed, uri, include, exclude, allow_empty=config.allow_empty)
    if config.verify != "off" and files:

        def head(f: RemoteFile) -> RemoteFile:
            fresh = policy.call(lambda: backend.head(uri.bucket, f.obj.key), on_retry=on_retry)
            return RemoteFile(obj=fresh, path=f.path)

        workers = max(1, min(config.start_concurrency, len(files)))
        with concurrent.futures.ThreadPoolExecutor(workers, "modelpull-head") as pool:
            files = list(pool.map(head, files))
    return ClusterPlan(uri.bucket, config.part_size, tuple(files))


def local_state(
    plan: ClusterPlan,
    dest: Path,
    rank: int,
    config: PullConfig,
    *,
    fetch_failed: bool = False,
    cuda: bool = False,
    nccl_failed: bool = False,
) -> MemberState:
    """What ``dest`` holds of the plan: complete files (by their records, re-read with
    ``config.check_existing``; none with ``config.force``) and parts held in resume
    journals that describe this very object.

    ``config.part_size`` must be the plan's, for part indices to mean the same thing."""
    state = StateDir(dest)
    complete: set[int] = set()
    held: dict[int, frozenset[int]] = {}
    for f in plan.shared():
        remote = plan.files[f]
        local = PartFile(state, remote, config)
        # --check-existing trusts no record: a copy damaged on disk, offered to the
        # others as complete, would reach nodes whose store checks cannot catch it.
        recorded = not config.force and local.is_complete()
        if recorded and (not config.check_existing or local.intact()):
            complete.add(f)
            continue
        parts = local.resumable()
        if parts:
            held[f] = parts
    return MemberState(
        rank=rank,
        complete=frozenset(complete),
        held=held,
        fetch_failed=fetch_failed,
        cuda=cuda,
        nccl_failed=nccl_failed,
    )
