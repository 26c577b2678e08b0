"""One cell of the matrix: a fault, a variant, a tool; and running many of them.

A cell gets an object of its own and, for faults that live in HTTP, a
:class:`~tests.faults.proxy.FaultProxy` of its own in front of its tool's store, armed
with the fault's rules (and, on the S3 side, a rule publishing the object's CRC-64 on
HEAD, as TOS's S3 endpoint does). The tool downloads the object to ``model.bin`` in an
empty folder. Then the cell records:

- ``outcome``: ``ok``, ``failed``, or ``capped`` (still running at the cap: killed);
- ``final``: what is under the final name: ``correct`` (the object's bytes, either
  version for a replaced object), ``wrong``, or ``absent``; and ``leftovers``, the
  other names left in the folder (temp files, checkpoints, modelpull's state folder);
- ``error``: the exception's type and its status, code and request id, as the tool
  raised it (modelpull's as ``--json`` reports it, with ``exit_code``);
- ``requests``: what the server side saw for the object (``HEAD``, ``GET``) and other
  requests (listings); TLS handshakes for the TLS fault; nothing for a refused port;
- ``gaps``: the seconds between one GET of a range and the next, as the server saw
  them arrive: the backoff (and the timeouts) a tool waited out;
- ``seconds``: the process's wall time to success, failure or cap.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.faultmatrix.faults import FAULTS, Fault, Variant, Where
from benchmarks.faultmatrix.stores import (
    BUCKET,
    OBJECT_SIZE,
    REGION,
    Stores,
    UntrustedTls,
    refused_endpoint,
)
from benchmarks.faultmatrix.tools import TOOLS, Job, Timeouts, Tool, run
from tests.faults.proxy import FaultProxy, RequestRecord, Rule, set_headers
from tests.helpers import self_signed

__all__ = ["Cell", "Settings", "all_cells", "run_cells"]

FINAL_NAME = "model.bin"
# Faults whose cells spend most of their time waiting (on a stall, a trickle, a
# Retry-After): they run all at once, beside the others, taking no CPU while they wait.
WAITING = frozenset({"trickle", "read-stall", "503-retry-after"})
STAGGER = 0.5


@dataclass(frozen=True)
class Cell:
    fault: Fault
    variant: Variant
    tool: Tool

    @property
    def name(self) -> str:
        """The cell's object name: unique, and safe in a key and a file name."""
        return f"{self.fault.id}.{self.variant}.{self.tool.id}"


@dataclass(frozen=True)
class Settings:
    """How cells run: the tools' timeouts, each cell's cap, modelpull in-process or not."""

    timeouts: Timeouts
    cap: float
    inprocess: bool = False


def all_cells(faults: Sequence[Fault] = FAULTS, tools: Sequence[Tool] = TOOLS) -> list[Cell]:
    return [Cell(f, v, t) for f in faults for v in f.variants for t in tools]


def _gaps(log: Sequence[RequestRecord], pattern: re.Pattern[str], size: int) -> list[float]:
    """Seconds between the arrivals of successive GETs of the same part of the object:
    the backoff a tool waited (plus the failed attempt's own time), as the server saw it.

    A part is known by the last byte it asks for (a retry may resume past its first);
    of the parts a tool asked for (boto3 asks for two at once), the one asked for most.
    """
    arrivals: dict[int, list[float]] = {}
    for record in log:
        if record.method == "GET" and pattern.search(record.path):
            ends = re.findall(r"-(\d+)$", record.range or "")
            last = int(ends[0]) if ends else size - 1  # no Range, or "bytes=N-": the end
            arrivals.setdefault(last, []).append(record.at)
    if not arrivals:
        return []
    times = max(arrivals.values(), key=len)
    return [round(b - a, 1) for a, b in itertools.pairwise(times)]


@contextlib.contextmanager
def _endpoint(
    cell: Cell, stores: Stores, tls: tuple[Path, Path]
) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """The URL the cell's tool is given, and a way to read what its server side saw."""
    fault, tool = cell.fault, cell.tool
    if fault.endpoint == "refused":
        yield refused_endpoint(), lambda: {"requests": None, "gaps": []}
        return
    if fault.endpoint == "tls":
        with UntrustedTls(*tls) as server:
            yield server.url, lambda: {"requests": {"connections": server.connections}, "gaps": []}
        return
    upstream = stores.s3_url if tool.side == "s3" else stores.tos_url
    path = re.escape(f"/{stores.key(cell.name)}") + "$"
    with FaultProxy(upstream) as proxy:
        crc_rule: list[Rule] = []
        if tool.side == "s3":
            crc_rule.append(_crc_rule(stores.crc64, path))
            proxy.add_rule(crc_rule[0])
        else:
            stores.publish_crc(cell.name)

        def change() -> None:
            stores.replace(tool.side, cell.name)
            if crc_rule:  # the S3 side publishes the new version's CRC from now on
                proxy.remove_rule(crc_rule[0])
                proxy.add_rule(_crc_rule(stores.new_crc64, path))

        where = Where(dialect=tool.side, path=path, crc64=stores.crc64, change=change)
        for rule in fault.rules(where, cell.variant):
            proxy.add_rule(rule)
        pattern = re.compile(path)

        def seen() -> dict[str, Any]:
            counts: Counter[str] = Counter()
            for record in proxy.log:
                counts[record.method if pattern.search(record.path) else "other"] += 1
            gaps = _gaps(proxy.log, pattern, len(stores.data))
            return {"requests": dict(counts), "gaps": gaps}

        yield proxy.url, seen


def _crc_rule(crc: str, path: str) -> Rule:
    return Rule(set_headers({"x-tos-hash-crc64ecma": crc}), method="HEAD", path=path, times=None)


def _final(folder: Path, stores: Stores) -> tuple[str, list[str]]:
    target = folder / FINAL_NAME
    if target.is_file():
        data = target.read_bytes()
        state = "correct" if data in (stores.data, stores.new_data) else "wrong"
    else:
        state = "absent"
    others = sorted(
        _leftover(p.name) + ("/" if p.is_dir() else "")
        for p in folder.iterdir()
        if p.name != FINAL_NAME
    )
    return state, others


def _leftover(name: str) -> str:
    """A name left beside the final one, its random part replaced, so runs compare."""
    if name.endswith(".download"):
        return "<checkpoint>.download"  # the TOS SDK's: a digest of the bucket and key
    return re.sub(r"^(model\.bin)\.[0-9A-Fa-f]{8}$", r"\1.<random>", name)  # boto3's temp


def run_cell(cell: Cell, stores: Stores, work: Path, settings: Settings) -> dict[str, Any]:
    """Run one cell; its record (see the module's notes)."""
    folder = work / "cells" / cell.name
    folder.mkdir(parents=True)
    tls = (work / "tls" / "untrusted.pem", work / "tls" / "untrusted.key")
    with _endpoint(cell, stores, tls) as (url, seen):
        job = Job(
            endpoint=url,
            bucket=BUCKET,
            key=stores.key(cell.name),
            path=folder / FINAL_NAME,
            access_key=stores.credentials.access_key,
            secret_key=stores.credentials.secret_key,
            region=REGION,
        )
        result = run(cell.tool, job, settings.timeouts, settings.cap, inprocess=settings.inprocess)
        observed = seen()
    final, leftovers = _final(folder, stores)
    outcome = "capped" if result.pop("capped", False) else ("ok" if result["ok"] else "failed")
    del result["ok"]
    record = {
        "fault": cell.fault.id,
        "variant": cell.variant,
        "tool": cell.tool.id,
        "outcome": outcome,
        "final": final,
        "leftovers": leftovers,
        **observed,
        **result,
    }
    shutil.rmtree(folder, ignore_errors=True)
    return record


def run_cells(
    cells: Sequence[Cell],
    work: Path,
    settings: Settings,
    *,
    jobs: int = 4,
    progress: Callable[[dict[str, Any]], None] | None = None,
    size: int = OBJECT_SIZE,
) -> list[dict[str, Any]]:
    """Every cell against one pair of stores; records in cell order.

    Cells of :data:`WAITING` faults start first, :data:`STAGGER` seconds apart, and
    then wait side by side; the others run ``jobs`` at a time meanwhile (few, so that
    CPU contention does not blur their timings).
    """
    self_signed(work / "tls", "untrusted")
    changing = [c.name for c in cells if c.fault.id == "412-changed"]
    with Stores(work, [c.name for c in cells], changing, size=size) as stores:
        records: dict[int, dict[str, Any]] = {}

        def one(index: int) -> None:
            record = run_cell(cells[index], stores, work, settings)
            records[index] = record
            if progress is not None:
                progress(record)

        waiting = [i for i, c in enumerate(cells) if c.fault.id in WAITING]
        busy = [i for i, c in enumerate(cells) if c.fault.id not in WAITING]
        with (
            ThreadPoolExecutor(max_workers=max(1, len(waiting))) as idle_pool,
            ThreadPoolExecutor(max_workers=jobs) as pool,
        ):
            futures = []
            for i in waiting:
                futures.append(idle_pool.submit(one, i))
                time.sleep(STAGGER)  # dozens of interpreters starting at once blur timings
            # The others once the waiting cells are started, and waiting.
            futures += [pool.submit(one, i) for i in busy]
            for future in futures:
                future.result()
    return [records[i] for i in range(len(cells))]
