"""The keyword arguments the public functions share, each declared once.

:func:`modelpull.pull` and its siblings take the same keywords for the same things:
where to read from and how (:class:`SourceKeywords`: ``config``, ``credentials``,
``backend``), which files (:class:`FilterKeywords`: ``include``, ``exclude``;
:class:`SelectKeywords` adds ``preset``) and who hears of the pull
(:class:`ReportKeywords`: ``observers``, ``registry``). A function's own keywords stay in
its signature; the shared ones come in as ``**kwargs`` typed with the set it takes
(:pep:`692`), so type checkers and editors know each one by name and type, and
:func:`accept` refuses any other at run time, as a written-out signature would. What
each keyword means, and its default, is in :func:`modelpull.pull`'s docstring.

Who takes which: :func:`~modelpull.list_objects` :class:`SourceKeywords`;
:func:`~modelpull.verify.verify` and :func:`~modelpull.cluster.pull_distributed`
:class:`FilterKeywords`; :func:`~modelpull.preview` :class:`SelectKeywords`;
:func:`~modelpull.pull_files` :class:`ReportKeywords`; :func:`~modelpull.pull` and
:func:`~modelpull.snapshot` :class:`PullKeywords`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from modelpull.backends.base import Backend
    from modelpull.config import PullConfig
    from modelpull.credentials import Credentials
    from modelpull.events import Observer

__all__ = [
    "FilterKeywords",
    "PullKeywords",
    "ReportKeywords",
    "SelectKeywords",
    "SourceKeywords",
    "accept",
]


class SourceKeywords(TypedDict, total=False):
    """Where a call reads from, and how: what :func:`modelpull.resolve` takes."""

    config: PullConfig | None
    credentials: Credentials | None
    backend: Backend | None


class FilterKeywords(SourceKeywords, total=False):
    """:class:`SourceKeywords`, and globs on the paths below the URI's folder."""

    include: Sequence[str] | None
    exclude: Sequence[str] | None


class SelectKeywords(FilterKeywords, total=False):
    """:class:`FilterKeywords`, and a serving preset (:mod:`modelpull.presets`)."""

    preset: str | None


class ReportKeywords(SourceKeywords, total=False):
    """:class:`SourceKeywords`, and who hears of the pull: observers, metrics."""

    observers: Sequence[Observer]
    registry: CollectorRegistry | None


class PullKeywords(SelectKeywords, ReportKeywords, total=False):
    """Every shared keyword: a whole pull's."""


def accept(function: str, given: Mapping[str, object], allowed: type[Mapping[str, object]]) -> None:
    """Refuse, as Python does for a written-out signature, a keyword of ``given`` that
    ``allowed`` (one of this module's sets) does not name: a misspelt ``exlude=`` must
    fail, not pull everything."""
    known: frozenset[str] = getattr(allowed, "__optional_keys__", frozenset())
    for name in given:
        if name not in known:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
