"""Pure logic of a cluster pull: the shared plan, each node's state, who fetches and who
sends what.

Every fetcher computes the same answers from the same inputs (the plan rank 0 made and
the states all fetchers agreed on), so no decision needs a message of its own:

- a file complete on every fetcher is skipped cluster-wide;
- a part some fetcher needs and none holds is *missing*: missing parts are cut into
  contiguous runs of about equal bytes, one per fetcher, and fetched from the store;
- a part some fetcher needs and another holds is *transferred*: its source is the holder
  with the fewest bytes to send so far, and the sources' parts are cut into chunks that
  move in lock-step rounds of an all-gather (:class:`Schedule`).

Zero-byte files are left out: each fetcher creates them itself, at no egress.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from modelpull.files import split_parts
from modelpull.objects import ObjectInfo, RemoteFile

__all__ = [
    "Chunk",
    "ClusterPlan",
    "MemberState",
    "PartRef",
    "Schedule",
    "View",
    "assign_missing",
    "missing_parts",
    "needed_by",
    "plan_transfers",
]


@dataclass(frozen=True, slots=True)
class PartRef:
    """Part ``part`` (an index of :func:`~modelpull.files.split_parts`) of file ``file``."""

    file: int
    part: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ClusterPlan:
    """What rank 0 listed (and headed, for checksums), with the part size every node uses."""

    bucket: str
    part_size: int
    files: tuple[RemoteFile, ...]

    @cached_property
    def _parts(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        return tuple(tuple(split_parts(f.obj.size, self.part_size)) for f in self.files)

    def parts(self, file: int) -> Sequence[tuple[int, int]]:
        return self._parts[file]

    def shared(self) -> list[int]:
        """Indices of the files that go through the cluster: all but zero-byte ones."""
        return [i for i, f in enumerate(self.files) if f.obj.size > 0]

    def refs(self, file: int) -> list[PartRef]:
        return [PartRef(file, p, s, e) for p, (s, e) in enumerate(self.parts(file))]

    @property
    def total_bytes(self) -> int:
        return sum(f.obj.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "part_size": self.part_size,
            "files": [
                {
                    "path": f.path,
                    "key": f.obj.key,
                    "size": f.obj.size,
                    "etag": f.obj.etag,
                    "checksums": dict(f.obj.checksums),
                    "checksum_type": f.obj.checksum_type,
                }
                for f in self.files
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterPlan:
        files = tuple(
            RemoteFile(
                obj=ObjectInfo(
                    key=str(f["key"]),
                    size=int(f["size"]),
                    etag=str(f["etag"]),
                    checksums={str(k): str(v) for k, v in f["checksums"].items()},
                    checksum_type=f["checksum_type"],
                ),
                path=str(f["path"]),
            )
            for f in data["files"]
        )
        return cls(bucket=str(data["bucket"]), part_size=int(data["part_size"]), files=files)


def _ranges(values: Iterable[int]) -> list[list[int]]:
    """``[[start, end], ...]`` runs of sorted integers: a held set in a few numbers."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and runs[-1][1] == v:
            runs[-1][1] = v + 1
        else:
            runs.append([v, v + 1])
    return runs


def _unranges(runs: Iterable[Sequence[int]]) -> frozenset[int]:
    return frozenset(v for start, end in runs for v in range(int(start), int(end)))


@dataclass(frozen=True)
class MemberState:
    """What one fetcher has on disk: complete files, and parts held in resume journals."""

    rank: int
    complete: frozenset[int] = frozenset()
    held: Mapping[int, frozenset[int]] = field(default_factory=dict)
    fetch_failed: bool = False
    cuda: bool = False
    nccl_failed: bool = False

    def has(self, file: int, part: int) -> bool:
        return file in self.complete or part in self.held.get(file, frozenset())

    def needs(self, file: int, part: int) -> bool:
        return not self.has(file, part)

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "complete": _ranges(self.complete),
            "held": {str(f): _ranges(parts) for f, parts in sorted(self.held.items()) if parts},
            "fetch_failed": self.fetch_failed,
            "cuda": self.cuda,
            "nccl_failed": self.nccl_failed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MemberState:
        return cls(
            rank=int(data["rank"]),
            complete=_unranges(data["complete"]),
            held={int(f): _unranges(runs) for f, runs in data["held"].items()},
            fetch_failed=bool(data["fetch_failed"]),
            cuda=bool(data["cuda"]),
            nccl_failed=bool(data["nccl_failed"]),
        )


@dataclass(frozen=True)
class View:
    """One round as every member agreed on it: who is in, and what each holds."""

    round: int
    members: tuple[int, ...]
    states: Mapping[int, MemberState]


def needed_by(plan: ClusterPlan, view: View, ref: PartRef) -> list[int]:
    return [m for m in view.members if view.states[m].needs(ref.file, ref.part)]


def missing_parts(plan: ClusterPlan, view: View) -> list[PartRef]:
    """Parts some member needs and no member holds, in plan order."""
    found: list[PartRef] = []
    for f in plan.shared():
        if all(f in view.states[m].complete for m in view.members):
            continue  # skipped cluster-wide
        for ref in plan.refs(f):
            holders = [m for m in view.members if view.states[m].has(f, ref.part)]
            if not holders:
                found.append(ref)
    return found


def assign_missing(parts: Sequence[PartRef], view: View) -> dict[int, list[PartRef]]:
    """Contiguous runs of ``parts`` of about equal bytes, one per member able to fetch.

    Members whose last fetch failed are passed over while another member can fetch;
    contiguity keeps each member's share in few files.

    Not for a store that ignores ``Range``: there a file can only be fetched whole, by
    one member (the engine refuses to fall back to whole files for a share, see
    ``Engine._fall_back``). Such files must not be split between members.
    """
    able = [m for m in view.members if not view.states[m].fetch_failed] or list(view.members)
    shares: dict[int, list[PartRef]] = {m: [] for m in view.members}
    total = sum(ref.length for ref in parts)
    if not able or not total:
        return shares
    per_member = total / len(able)
    done = 0
    for ref in parts:
        # The member whose slice of [0, total) holds the middle of this part.
        slot = min(len(able) - 1, math.floor((done + ref.length / 2) / per_member))
        shares[able[slot]].append(ref)
        done += ref.length
    return shares


@dataclass(frozen=True, slots=True)
class Chunk:
    """``length`` bytes at ``offset`` in the file, within part ``ref``; ``last`` ends it."""

    ref: PartRef
    offset: int
    length: int
    last: bool


@dataclass(frozen=True)
class Schedule:
    """Who sends which chunk at each step; step ``k`` is one all-gather of every member."""

    members: tuple[int, ...]
    streams: Mapping[int, Sequence[Chunk]]

    @cached_property
    def steps(self) -> int:
        return max((len(s) for s in self.streams.values()), default=0)

    def chunk(self, member: int, step: int) -> Chunk | None:
        stream = self.streams.get(member, ())
        return stream[step] if step < len(stream) else None

    def step_length(self, step: int) -> int:
        """The largest chunk of the step: every member's slot is that long."""
        return max(
            (c.length for m in self.members if (c := self.chunk(m, step)) is not None),
            default=0,
        )

    @property
    def total_bytes(self) -> int:
        return sum(c.length for s in self.streams.values() for c in s)


def plan_transfers(plan: ClusterPlan, view: View, chunk_size: int) -> Schedule:
    """Sources for every part a member needs and another holds, cut into chunks."""
    load = dict.fromkeys(view.members, 0)
    sources: dict[int, list[PartRef]] = {m: [] for m in view.members}
    for f in plan.shared():
        if all(f in view.states[m].complete for m in view.members):
            continue
        for ref in plan.refs(f):
            holders = [m for m in view.members if view.states[m].has(f, ref.part)]
            if not holders or len(holders) == len(view.members):
                continue
            source = min(holders, key=lambda m: (load[m], m))
            load[source] += ref.length
            sources[source].append(ref)
    streams: dict[int, list[Chunk]] = {}
    for member, refs in sources.items():
        chunks: list[Chunk] = []
        for ref in refs:
            for offset in range(ref.start, ref.end, chunk_size):
                length = min(chunk_size, ref.end - offset)
                chunks.append(Chunk(ref, offset, length, offset + length >= ref.end))
        streams[member] = chunks
    return Schedule(members=view.members, streams=streams)
