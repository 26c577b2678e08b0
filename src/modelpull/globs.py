"""The globs of ``--include``, ``--exclude``, presets and wildcard URIs.

Matched against a file's path relative to the URI's folder, with :func:`fnmatch.fnmatchcase`:
``*`` also crosses ``/`` (as in huggingface_hub's ``allow_patterns`` and s5cmd's
wildcards), and a pattern ending in ``/`` means the whole folder.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

__all__ = ["matches"]


def _expand(pattern: str) -> str:
    # "tokenizer/" means the whole folder, as in huggingface_hub's allow_patterns.
    return f"{pattern}*" if pattern.endswith("/") else pattern


def matches(path: str, patterns: Sequence[str]) -> bool:
    """True when ``path`` matches one of the globs (``*`` also crosses ``/``)."""
    return any(fnmatch.fnmatchcase(path, _expand(p)) for p in patterns)
