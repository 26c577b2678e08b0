"""Observers of the engine: progress display (metrics and logs join them here)."""

from modelpull.observe.progress import ProgressDisplay

__all__ = ["ProgressDisplay"]
