"""The package as users get it: the wheel built from this checkout, installed into fresh
virtual environments (no editable install, no system site-packages), run from there.

- the wheel's ``modelpull`` and ``modelpull_aibrix_download`` scripts work, and a small
  pull against a local S3 server succeeds;
- the ``awscrt`` floor declared in ``pyproject.toml`` is enough: with exactly that
  release installed, the CRC functions modelpull uses exist and give the standard check
  values, and combining part CRCs works.

Both install packages from the configured index, so they take a while: ``slow``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelpull._version import __version__
from tests.helpers import S3Store, isolated_env, run_command, tree

ROOT = Path(__file__).parents[2]
INSTALL_TIMEOUT = 600.0

pytestmark = pytest.mark.slow


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """No PYTHONPATH: what runs must be what the venv holds, not this checkout's src."""
    env = isolated_env(extra)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("wheel")
    proc = run_command(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        clean_env(),
        timeout=INSTALL_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    (found,) = out.glob("modelpull-*.whl")
    yield found


def fresh_venv(where: Path, *requirements: str) -> Path:
    """A new venv at ``where`` with ``requirements`` installed; its ``bin`` folder."""
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(where)
    python = where / "bin" / "python"
    proc = run_command(
        [str(python), "-m", "pip", "install", "--quiet", *requirements],
        clean_env(),
        timeout=INSTALL_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    return where / "bin"


def test_the_wheel_installs_and_pulls(wheel: Path, rclone_store: S3Store, tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "venv", str(wheel))
    env = clean_env()
    version = run_command([str(bin_dir / "modelpull"), "--version"], env)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"modelpull {__version__}"
    where = run_command(
        [str(bin_dir / "python"), "-c", "import modelpull; print(modelpull.__file__)"], env
    )
    assert where.stdout.strip().startswith(str(tmp_path / "venv"))  # not this checkout
    bucket = rclone_store.new_bucket()
    files = {"config.json": b"{}", "w.safetensors": os.urandom(3 << 20)}
    rclone_store.put_tree(bucket, "m/", files)
    pulled = run_command(
        [str(bin_dir / "modelpull"), "pull", f"s3://{bucket}/m/", str(tmp_path / "d"), "--json"],
        clean_env(rclone_store.env()),
    )
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["files_fetched"] == 2
    assert tree(tmp_path / "d") == files
    aibrix = run_command([str(bin_dir / "modelpull_aibrix_download"), "--help"], env)
    assert aibrix.returncode == 0 and "--model-uri" in aibrix.stdout


CHECK_CRCS = """
import importlib.metadata, sys
from modelpull.checksums import CRC_KINDS
print(importlib.metadata.version("awscrt"))
nvme, c = CRC_KINDS["crc64nvme"], CRC_KINDS["crc32c"]
data = b"123456789"
assert nvme.compute(data) == 0xAE8B14860A799888, hex(nvme.compute(data))
assert c.compute(data) == 0xE3069283, hex(c.compute(data))
for kind in (nvme, c):
    assert kind.combine(kind.compute(data[:4]), kind.compute(data[4:]), 5) == kind.compute(data)
"""


def test_the_declared_awscrt_floor_has_what_modelpull_uses(wheel: Path, tmp_path: Path) -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    floor = re.search(r'"awscrt>=([0-9.]+)"', text)
    assert floor is not None, "pyproject.toml declares no awscrt floor"
    bin_dir = fresh_venv(tmp_path / "venv", str(wheel), f"awscrt=={floor.group(1)}")
    proc = run_command([str(bin_dir / "python"), "-c", CHECK_CRCS], clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == floor.group(1)
    # And the release before the floor lacks them: the floor is the first that will do.
    listed = run_command(
        [str(bin_dir / "python"), "-m", "pip", "index", "versions", "awscrt"],
        clean_env(),
        timeout=INSTALL_TIMEOUT,
    )
    assert listed.returncode == 0, listed.stderr
    versions = re.search(r"Available versions: (.+)", listed.stdout)
    assert versions is not None, listed.stdout

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split("."))

    older = [v for v in versions.group(1).split(", ") if key(v) < key(floor.group(1))]
    previous = max(older, key=key)
    swapped = run_command(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"awscrt=={previous}"],
        clean_env(),
        timeout=INSTALL_TIMEOUT,
    )
    assert swapped.returncode == 0, swapped.stderr
    lacks = run_command(
        [str(bin_dir / "python"), "-c", CHECK_CRCS], clean_env(), timeout=INSTALL_TIMEOUT
    )
    assert lacks.returncode != 0
    assert "combine_crc" in lacks.stderr
