"""What a pull reports: per file (:class:`FileOutcome`), per pull (:class:`PullResult`),
and per rank of a cluster pull (:class:`ClusterPullResult`).

Plain data with no behaviour beyond rendering ``--json``; the API, the CLI and the cluster
pull all import it, and it imports nothing of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClusterPullResult", "FileOutcome", "PullResult"]


@dataclass
class FileOutcome:
    """How one file ended: ``fetched``, ``skipped`` (recorded complete), ``adopted`` (found in
    DEST without a record, checked against the store and kept), ``partial`` (see ``only``)
    or ``failed``."""

    path: str
    size: int
    status: str
    seconds: float = 0.0
    verified: tuple[str, ...] = ()
    resumed_bytes: int = 0
    error: BaseException | None = None
    # Parts fetched again because they failed a check (a resumed part that no longer
    # matched its journal, or a part found damaged after the file failed verification).
    parts_repaired: int = 0
    # A check the store offered that could not be made ("multipart etag, part size unknown").
    unverifiable: str | None = None


@dataclass(frozen=True)
class PullResult:
    """What a pull did.

    ``bytes_downloaded`` counts object bytes received from the store, retried and
    refetched bytes included; ``bytes_resumed`` those kept from an interrupted pull;
    ``checksums_verified`` the files checked per kind (``size``, ``crc64nvme``, ``md5``...).
    """

    uri: str
    dest: str
    backend: str
    files_fetched: int
    files_skipped: int
    bytes_downloaded: int
    seconds: float
    files: tuple[FileOutcome, ...] = ()
    retries: dict[str, int] = field(default_factory=dict)
    checksums_verified: dict[str, int] = field(default_factory=dict)
    bytes_resumed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    # The most requests allowed in flight at once: the pinned number, or as high as
    # adaptive concurrency climbed.
    concurrency: int = 0
    # Parts whose tail a fresh request fetched, being far slower than their peers.
    hedges: int = 0

    @property
    def files_adopted(self) -> int:
        """Files found in DEST, put there by another tool, checked and kept."""
        return sum(1 for f in self.files if f.status == "adopted")

    @property
    def parts_repaired(self) -> int:
        """Parts fetched again, over every file, because they failed a check."""
        return sum(f.parts_repaired for f in self.files)

    @property
    def mb_per_s(self) -> float:
        """Decimal megabytes per second over the whole pull."""
        return self.bytes_downloaded / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: no credentials, no exceptions objects."""
        return {
            "uri": self.uri,
            "dest": self.dest,
            "backend": self.backend,
            "files_fetched": self.files_fetched,
            "files_skipped": self.files_skipped,
            "bytes_downloaded": self.bytes_downloaded,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 1),
            "bytes_resumed": self.bytes_resumed,
            "files_adopted": self.files_adopted,
            "parts_repaired": self.parts_repaired,
            "concurrency": self.concurrency,
            "hedges": self.hedges,
            "retries": dict(self.retries),
            "checksums_verified": dict(self.checksums_verified),
            "files": [_file_dict(f) for f in self.files],
            "config": self.config,
        }


def _file_dict(f: FileOutcome) -> dict[str, Any]:
    data: dict[str, Any] = {
        "path": f.path,
        "size": f.size,
        "status": f.status,
        "seconds": round(f.seconds, 3),
        "verified": list(f.verified),
    }
    if f.parts_repaired:
        data["parts_repaired"] = f.parts_repaired
    if f.unverifiable:
        data["unverifiable"] = f.unverifiable
    return data


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
