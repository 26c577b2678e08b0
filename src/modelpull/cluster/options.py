"""How a cluster pull coordinates: timeouts, fallback, exchange transport and chunk size.

Like :class:`~modelpull.config.PullConfig`, one frozen object whose fields each state
their default, unit and environment variable once; variables are read by
:meth:`ClusterOptions.from_env`, never at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modelpull.errors import UsageError
from modelpull.units import MAX_DURATION, parse_bool, parse_duration, parse_size

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_TIMEOUT",
    "ENV",
    "ClusterOptions",
    "ExchangeBackend",
]

ExchangeBackend = Literal["gloo", "nccl", "auto"]

MiB = 1 << 20
# Long enough for a busy node to answer, short enough that a vanished one (no TCP reset,
# e.g. a network partition) is given up on within minutes. A crashed process is noticed
# at once whatever this is: its sockets close.
DEFAULT_TIMEOUT = 300.0
# Per source and step of the exchange; the exchange keeps 2 x (nodes + 1) of these.
DEFAULT_CHUNK_SIZE = 16 * MiB
MIN_CHUNK_SIZE = 64 * 1024

# Field name -> environment variable.
ENV = {
    "timeout": "MODELPULL_DIST_TIMEOUT",
    "fallback": "MODELPULL_DIST_FALLBACK",
    "backend": "MODELPULL_DIST_BACKEND",
    "chunk_size": "MODELPULL_DIST_CHUNK_SIZE",
    "node": "MODELPULL_DIST_NODE",
    "node_per_rank": "MODELPULL_DIST_NODE_PER_RANK",
}


def _backend(text: str) -> str:
    value = text.strip().lower()
    if value not in ("gloo", "nccl", "auto"):
        raise UsageError(f"invalid exchange backend {text!r}: use gloo, nccl or auto")
    return value


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """Settings of a cluster pull beyond :class:`~modelpull.config.PullConfig`.

    - ``timeout`` (seconds, default 300, ``MODELPULL_DIST_TIMEOUT``, ``--dist-timeout``):
      how long a peer may stay silent (no heartbeat, no answer to a collective) before
      it is declared lost. Joining the cluster must also happen within it.
    - ``fallback`` (default on, ``MODELPULL_DIST_FALLBACK``, ``--no-dist-fallback``):
      when a peer is lost, the others fetch its share from the store themselves; off,
      the pull fails with :class:`~modelpull.errors.ClusterError` naming it.
    - ``backend`` (``gloo``, ``nccl`` or ``auto``; default ``gloo``,
      ``MODELPULL_DIST_BACKEND``): transport of the exchange. ``auto`` uses NCCL when
      every fetcher has a GPU; a failed NCCL exchange falls back to gloo.
    - ``chunk_size`` (bytes, default 16MiB, ``MODELPULL_DIST_CHUNK_SIZE``): bytes each
      node sends per step of the exchange; lowered so the exchange buffers stay under
      256MiB however many nodes there are.
    - ``node`` (``MODELPULL_DIST_NODE``): this rank's node name, for launchers that set
      neither ``GROUP_RANK`` (torchrun does) nor distinct host names. Unset: ``GROUP_RANK``,
      else the host name.
    - ``node_per_rank`` (default off, ``MODELPULL_DIST_NODE_PER_RANK``): testing switch;
      every rank is a node of its own with its own DEST (write DEST with ``{rank}``).
    """

    timeout: float = DEFAULT_TIMEOUT
    fallback: bool = True
    backend: ExchangeBackend = "gloo"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    node: str | None = None
    node_per_rank: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.timeout <= MAX_DURATION:  # NaN fails both
            raise UsageError("the distributed timeout must be positive, and at most a year")
        if self.backend not in ("gloo", "nccl", "auto"):
            raise UsageError(f"invalid exchange backend {self.backend!r}: use gloo, nccl or auto")
        if self.chunk_size < MIN_CHUNK_SIZE:
            raise UsageError("the exchange chunk size must be at least 64KiB")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClusterOptions:
        """Options from ``MODELPULL_DIST_*``, read now; ``overrides`` (not ``None``) win."""
        env = os.environ if environ is None else environ
        parsers: dict[str, Any] = {
            "timeout": lambda t: parse_duration(t, what=ENV["timeout"]),
            "fallback": parse_bool,
            "backend": _backend,
            "chunk_size": lambda t: parse_size(t, what=ENV["chunk_size"]),
            "node": lambda t: t.strip() or None,
            "node_per_rank": parse_bool,
        }
        values: dict[str, Any] = {}
        for name, variable in ENV.items():
            if variable in env:
                try:
                    values[name] = parsers[name](env[variable])
                except UsageError as exc:
                    raise UsageError(f"{variable}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
