"""The fault matrix's modelpull columns, run on every CI run and held to the committed run.

``benchmarks/fault_matrix.py`` wrote ``docs/fault-matrix.json`` and the tables of
``docs/migration.md`` from it. Here one fault per kind of outcome runs again through both
modelpull backends (in-process, through the API the CLI calls, on a smaller object that
takes the same requests), and each must end as the committed run says: outcome, bytes
under the final name, error class and exit code, status, code, request id, retries by
reason, requests the server saw. The SDKs' columns are not rerun: they depend on their
versions and on timing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from benchmarks.faultmatrix.cells import Cell, Settings, run_cells
from benchmarks.faultmatrix.faults import FAULTS, fault_named
from benchmarks.faultmatrix.report import BEGIN, END, markdown
from benchmarks.faultmatrix.tools import Timeouts, tool_named

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "docs" / "fault-matrix.json"
GUIDE = REPO / "docs" / "migration.md"
MODELPULL = ("modelpull-boto3", "modelpull-tos-sdk")
OLD = "tos-download-file"
# One fault per kind of outcome: survived by a retry, by a refetch, by a restart;
# retries exhausted; unreachable, untrusted; refused; not found (key, bucket); changed;
# corrupt. Not a body broken on every attempt: each attempt resumes where the last one
# broke, so how far that gets depends on the object's size.
SUBSET = (
    ("none", "always"),
    ("reset", "once"),
    ("503-slowdown", "always"),
    ("refused", "always"),
    ("tls-untrusted", "always"),
    ("403-skewed", "always"),
    ("404-key", "always"),
    ("404-bucket", "always"),
    ("412-changed", "always"),
    ("416", "always"),
    ("flip", "once"),
    ("wrong-crc", "always"),
)
# Enough for every fault's offsets (a reset after 1 MiB); modelpull fetches it in one
# GET as it does the matrix's 9 MiB object.
SIZE = 2 * (1 << 20) + 4321

Record = Mapping[str, Any]


def essence(record: Record) -> dict[str, Any]:
    """What must not change between runs: everything but timings and request id values."""
    error = record.get("error") or {}
    return {
        "outcome": record["outcome"],
        "final": record["final"],
        "leftovers": record["leftovers"],
        "exit_code": record.get("exit_code"),
        "error": error.get("type"),
        "status": error.get("status"),
        "code": error.get("code"),
        "request_id": bool(error.get("request_id")),
        "retries": record.get("retries"),
        "statuses": record.get("statuses"),
        "requests": record["requests"],
    }


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    run: dict[str, Any] = json.loads(COMMITTED.read_text())
    return run


def by_cell(run: Mapping[str, Any]) -> dict[tuple[str, str, str], Record]:
    return {(c["fault"], c["variant"], c["tool"]): c for c in run["cells"]}


@pytest.mark.slow
def test_modelpull_still_does_what_the_committed_matrix_says(
    committed: dict[str, Any], tmp_path: Path
) -> None:
    cells = [Cell(fault_named(f), v, tool_named(t)) for f, v in SUBSET for t in MODELPULL]
    # Each tool's own timeouts, as the committed run had: no fault here waits on them.
    settings = Settings(Timeouts(), cap=60, inprocess=True)
    live = run_cells(cells, tmp_path, settings, jobs=4, size=SIZE)
    expected = by_cell(committed)
    differences = {}
    for record in live:
        name = (record["fault"], record["variant"], record["tool"])
        was, now = essence(expected[name]), essence(record)
        if was != now:
            differences[name] = {k: (was[k], now[k]) for k in was if was[k] != now[k]}
    # (committed, now) for each field that changed: if the change is meant, rerun
    # benchmarks/fault_matrix.py and review the new tables in docs/migration.md.
    assert differences == {}


def test_the_committed_matrix_is_complete(committed: dict[str, Any]) -> None:
    cells = by_cell(committed)
    tools = {c["tool"] for c in committed["cells"]}
    assert {OLD, *MODELPULL} <= tools
    expected = {(f.id, v, t) for f in FAULTS for v in f.variants for t in tools}
    assert set(cells) == expected
    assert not committed["meta"]["quick"], "the committed run uses every tool's defaults"
    assert all(c["outcome"] == "ok" for k, c in cells.items() if k[0] == "none")


def test_the_guide_shows_the_committed_matrix(committed: dict[str, Any]) -> None:
    text = GUIDE.read_text()
    section = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert section + "\n" == markdown(committed)


def test_both_backends_end_every_fault_alike(committed: dict[str, Any]) -> None:
    cells = by_cell(committed)
    for fault in FAULTS:
        for variant in fault.variants:
            ends = {
                tool: (
                    cells[fault.id, variant, tool]["outcome"],
                    cells[fault.id, variant, tool]["final"],
                    (cells[fault.id, variant, tool].get("error") or {}).get("type"),
                    cells[fault.id, variant, tool]["exit_code"],
                )
                for tool in MODELPULL
            }
            assert len(set(ends.values())) == 1, (fault.id, variant, ends)


def test_modelpull_survives_every_fault_the_tos_sdk_survived(committed: dict[str, Any]) -> None:
    cells = by_cell(committed)
    for (fault, variant, tool), old in cells.items():
        if tool != OLD or old["outcome"] != "ok" or old["final"] != "correct":
            continue
        for new in MODELPULL:
            record = cells[fault, variant, new]
            assert (record["outcome"], record["final"]) == ("ok", "correct"), (fault, variant)


def test_modelpull_never_leaves_wrong_bytes_under_the_final_name(
    committed: dict[str, Any],
) -> None:
    cells = by_cell(committed).items()
    assert [k for k, c in cells if k[2] in MODELPULL and c["final"] == "wrong"] == []
