"""SHA-256 of every file in a folder: the source model's (cached), and a destination's
compared with them, so that every benchmark run is checked byte for byte."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["STATE_DIR", "compare", "sha256_file", "source_hashes", "tree_hashes"]

MiB = 1 << 20
# modelpull's own folder in DEST (resume records and locks): no part of the model.
STATE_DIR = ".modelpull"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``folder`` but ``.modelpull/``.

    Hashed on several threads: hashlib releases the GIL for large buffers.
    """
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] != STATE_DIR
    )
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        digests = list(pool.map(sha256_file, files))
    return {p.relative_to(folder).as_posix(): d for p, d in zip(files, digests, strict=True)}


def source_hashes(folder: Path, cache: Path) -> dict[str, str]:
    """The hashes of ``folder``, kept in ``cache`` while every file's size and mtime hold."""
    stamp = {
        p.relative_to(folder).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(cache.read_text())
        if saved["stamp"] == stamp:
            return dict(saved["sha256"])
    hashes = tree_hashes(folder)
    cache.write_text(json.dumps({"stamp": stamp, "sha256": hashes}, indent=1))
    return hashes


def compare(got: dict[str, str], expected: dict[str, str]) -> str | None:
    """None when the trees are equal, else what differs (a few names of each kind)."""
    if got == expected:
        return None
    missing = sorted(expected.keys() - got.keys())
    extra = sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if got[k] != expected[k])
    return (
        f"destination differs from the source: {len(missing)} missing {missing[:3]}, "
        f"{len(extra)} unexpected {extra[:3]}, {len(wrong)} with wrong bytes {wrong[:3]}"
    )
