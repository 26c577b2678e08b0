"""Texts that code writes or that must agree with code: the README's exit codes and the
metrics listed in docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from modelpull.cli.exits import EXIT_CODES, exit_codes_epilog, exit_codes_markdown
from modelpull.events import (
    Event,
    FileVerified,
    PartRetried,
    PartsRepaired,
    PullFinished,
    RequestFinished,
)
from modelpull.observe.metrics import MetricsObserver

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"


def test_readme_exit_codes_are_the_code_table() -> None:
    # Regenerate: python -c 'from modelpull.cli.exits import exit_codes_markdown as m; print(m())'
    assert exit_codes_markdown() in README.read_text(encoding="utf-8")


def test_every_exit_code_is_in_the_epilog_and_the_table() -> None:
    for entry in EXIT_CODES:
        assert f"{entry.code} {entry.meaning}" in exit_codes_epilog()
        assert f"| {entry.code} | {entry.meaning} |" in exit_codes_markdown()
    assert "| 130 / 143 |" in exit_codes_markdown()


def documented_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """docs/metrics.md's table: name -> (type, extra labels)."""
    text = METRICS_DOC.read_text(encoding="utf-8")
    table = text.split("| name | type | extra labels | meaning |", 1)[1].split("\n\n", 1)[0]
    found = {}
    for row in table.strip().splitlines()[1:]:  # after the | --- | line
        name, kind, labels, _meaning = (cell.strip() for cell in row.strip("|").split("|", 3))
        # Label values are listed in parentheses: only the names outside them count.
        names = re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", labels))
        found[name.strip("`")] = (kind, frozenset(names))
    return found


def registered_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """What a MetricsObserver registers: exposed name -> (type, labels beyond the usual)."""
    registry = CollectorRegistry()
    observer = MetricsObserver(registry, backend="boto3", bucket="models")
    # Metrics with extra labels show them once a series exists: one event of each kind.
    events: list[Event] = [
        RequestFinished(
            path="a", method="GET", status="206", first_byte_seconds=0.1, seconds=0.2, bytes=1
        ),
        PartRetried(path="a", reason="503", attempt=1, delay=0.0),
        FileVerified(path="a", kind="md5"),
        PartsRepaired(path="a", parts=1, bytes=1, reason="resume"),
        PullFinished(files=1, bytes=1, seconds=1.0, ok=True),
    ]
    for event in events:
        observer(event)
    found = {}
    for family in registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = {k for s in family.samples for k in s.labels} - {"backend", "bucket", "le"}
        found[name] = (family.type, frozenset(labels))
    return found


def test_metrics_doc_lists_what_is_registered() -> None:
    assert documented_metrics() == registered_metrics()
