"""Who this process is in the job, and which ranks share a node (and so one DEST).

Launchers (torchrun, and any that follows its conventions) describe a rank with
``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` and usually ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE`` and ``GROUP_RANK`` (the node's index). Ranks of one node share its
disk, so only one of them, the node's *fetcher* (its lowest rank), moves bytes; the
others reuse what it writes. Node names are exchanged through the rendezvous store
rather than derived from ``RANK // LOCAL_WORLD_SIZE``, so launchers that number ranks
differently still group them right.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from modelpull.cluster.options import ClusterOptions
from modelpull.errors import UsageError

__all__ = ["Layout", "Topology", "check_dests"]

log = logging.getLogger("modelpull")

REQUIRED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _int_env(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = env.get(name)
    if text is None or not text.strip():
        if default is None:
            raise UsageError(f"{name} is not set")
        return default
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name} must be a whole number, not {text!r}") from None


@dataclass(frozen=True, slots=True)
class Topology:
    """This rank as its launcher describes it."""

    rank: int
    world_size: int
    local_rank: int
    node: str
    master: str

    @classmethod
    def from_env(
        cls, options: ClusterOptions, environ: Mapping[str, str] | None = None
    ) -> Topology:
        """Read the launcher's variables; :class:`UsageError` names any that is missing."""
        env = os.environ if environ is None else environ
        absent = [name for name in REQUIRED if not env.get(name, "").strip()]
        if absent:
            raise UsageError(
                f"--distributed needs {', '.join(REQUIRED)} from a launcher such as torchrun "
                f"(missing: {', '.join(absent)})"
            )
        rank = _int_env(env, "RANK")
        world_size = _int_env(env, "WORLD_SIZE")
        port = _int_env(env, "MASTER_PORT")
        if not 0 <= port <= 65535:
            # Else torch fails it as a rendezvous that timed out, exit 11, not a usage error.
            raise UsageError(f"MASTER_PORT must be a TCP port (0 to 65535), not {port}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(f"RANK {rank} is not within WORLD_SIZE {world_size}")
        local_rank = _int_env(env, "LOCAL_RANK", 0)
        if options.node_per_rank:
            node = f"rank-{rank}"
        elif options.node:
            node = options.node
        elif env.get("GROUP_RANK", "").strip():
            node = f"group-{env['GROUP_RANK'].strip()}"
        else:
            node = f"host-{socket.gethostname()}"
        master = f"{env['MASTER_ADDR'].strip()}:{env['MASTER_PORT'].strip()}"
        return cls(rank, world_size, local_rank, node, master)

    def expand(self, dest: str) -> str:
        """DEST with ``{rank}``, ``{local_rank}`` and ``{node}`` filled in; other text as is."""
        return (
            dest.replace("{rank}", str(self.rank))
            .replace("{local_rank}", str(self.local_rank))
            .replace("{node}", self.node)
        )


@dataclass(frozen=True)
class Layout:
    """Every rank's node, as gathered from all ranks; the same on every rank."""

    nodes: Mapping[int, str]

    @property
    def fetchers(self) -> tuple[int, ...]:
        """The lowest rank of each node, sorted: the ranks that move bytes."""
        first: dict[str, int] = {}
        for rank in sorted(self.nodes):
            first.setdefault(self.nodes[rank], rank)
        return tuple(sorted(first.values()))

    def fetcher_of(self, rank: int) -> int:
        node = self.nodes[rank]
        return min(r for r, n in self.nodes.items() if n == node)

    def node_count(self) -> int:
        return len(set(self.nodes.values()))


def check_dests(layout: Layout, dests: Mapping[int, str], me: int) -> None:
    """Warn about DESTs (``host:path`` by rank) that defeat the one-fetcher-per-disk rule;
    the pull still ends right either way."""
    fetcher = layout.fetcher_of(me)
    if me == fetcher:
        twins = [r for r in layout.fetchers if r != me and dests[r] == dests[me]]
        if twins:
            log.warning(
                "rank %d: ranks %s are other nodes but use the same DEST on this host (%s): "
                "they fetch and write the same files; give each its own DEST ({rank})",
                me,
                twins,
                dests[me],
            )
    elif dests[fetcher] != dests[me]:
        log.warning(
            "rank %d: DEST %s differs from that of rank %d, this node's fetcher (%s): this "
            "rank will have to fetch on its own",
            me,
            dests[me],
            fetcher,
            dests[fetcher],
        )
