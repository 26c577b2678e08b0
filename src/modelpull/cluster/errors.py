"""The cluster pull's error, defined in :mod:`modelpull.errors` with the rest of the tree."""

from __future__ import annotations

from modelpull.errors import ClusterError

__all__ = ["ClusterError"]
