"""``modelpull demo``: pull a generated model from a local S3 server and check every byte.

Nothing leaves the machine: the sample model is written to a temp folder, served by
``rclone serve s3`` on loopback, pulled with :func:`modelpull.pull` and compared with
its source by SHA-256.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from modelpull.api import pull
from modelpull.config import PullConfig
from modelpull.demo.rclone import RcloneS3Server
from modelpull.demo.sample import DEFAULT_SHARD_SIZES, write_sample_model
from modelpull.observe.progress import ProgressDisplay
from modelpull.units import format_rate, format_size

__all__ = ["DEMO_BUCKET", "DEMO_PREFIX", "run_demo"]

DEMO_BUCKET = "models"
DEMO_PREFIX = "demo-model/"
_HASH_CHUNK = 4 << 20


def run_demo(
    *,
    shard_sizes: Sequence[int] | None = None,
    keep: Path | None = None,
    progress: bool | None = None,
    out: TextIO | None = None,
) -> int:
    """Generate, serve, pull and verify a sample model; 0 if every byte matched, else 1.

    ``shard_sizes`` defaults to 48 MiB and 24 MiB. The model is pulled into ``keep``,
    which is left in place, or into a temp folder that is removed with the store.
    ``progress=None`` shows progress when stderr is a terminal. The summary goes to
    ``out`` (default: :data:`sys.stdout` at call time). Errors of the pull or the
    server propagate as :class:`~modelpull.errors.ModelPullError`.
    """
    stream = sys.stdout if out is None else out
    sizes = DEFAULT_SHARD_SIZES if shard_sizes is None else tuple(shard_sizes)
    with tempfile.TemporaryDirectory(prefix="modelpull-demo-") as tmp:
        store = Path(tmp) / "store"
        source = store / DEMO_BUCKET / DEMO_PREFIX
        started = time.monotonic()
        files = write_sample_model(source, shard_sizes=sizes)
        total = sum(p.stat().st_size for p in files)
        _say(
            stream,
            f"wrote a sample model ({len(files)} files, {format_size(total)}) "
            f"in {time.monotonic() - started:.1f} s",
        )
        dest = keep if keep is not None else Path(tmp) / "pulled"
        uri = f"s3://{DEMO_BUCKET}/{DEMO_PREFIX}"
        with RcloneS3Server(store) as server:
            _say(stream, f"serving it with rclone serve s3 at {server.endpoint_url}")
            config = PullConfig(endpoint_url=server.endpoint_url, addressing_style="path")
            show = sys.stderr.isatty() if progress is None else progress
            with ProgressDisplay(enabled=show) as display:
                result = pull(
                    uri,
                    dest,
                    config=config,
                    credentials=server.credentials,
                    observers=[display],
                )
        rate = format_rate(result.bytes_downloaded, result.seconds)
        _say(
            stream,
            f"pulled {uri}: {result.files_fetched} files fetched, "
            f"{result.files_skipped} skipped (already complete), "
            f"{format_size(result.bytes_downloaded)} in {result.seconds:.2f} s"
            + (f" ({rate})" if result.bytes_downloaded else ""),
        )
        bad = _mismatches(source, dest, files)
        if bad:
            _say(stream, f"MISMATCH in {len(bad)} of {len(files)} files: {', '.join(bad)}")
            return 1
        _say(stream, f"verified {len(files)} files byte for byte (sha256)")
        if keep is not None:
            _say(stream, f"the model is in {keep}")
    return 0


def _say(stream: TextIO, line: str) -> None:
    print(f"modelpull demo: {line}", file=stream, flush=True)


def _mismatches(source: Path, dest: Path, files: Sequence[Path]) -> list[str]:
    """Relative paths whose pulled copy is missing or differs from the source."""
    bad = []
    for path in files:
        relative = path.relative_to(source)
        copy = dest / relative
        if not copy.is_file() or _sha256(copy) != _sha256(path):
            bad.append(relative.as_posix())
    return bad


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
