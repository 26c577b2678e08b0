"""What ``modelpull`` loads and does before the first byte: only what the command needs.

A pull of one small file costs mostly start-up (imports, botocore's models, exit), so
each heavy optional dependency stays out of that path.
"""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelpull.backends.boto3 import Boto3Backend
from modelpull.cli.exits import GC_THRESHOLD, few_collections
from modelpull.config import PullConfig
from tests.helpers import S3Store, isolated_env, run_command

# Never needed to parse a command line or to pull from S3 without a progress bar.
HEAVY = ("boto3", "numpy", "prometheus_client", "safetensors", "torch", "tos", "tqdm")
# Modules of modelpull's own that only some commands need.
ON_DEMAND = ("modelpull.aibrix", "modelpull.bench", "modelpull.cluster", "modelpull.demo")


def imported(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=isolated_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(done.stdout.split())


def under(names: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n.split(".")[0] in packages or n.startswith(packages))


def test_the_cli_imports_no_store_sdk_and_no_optional_package() -> None:
    names = imported("import modelpull.cli")
    assert "modelpull.cli.main" in names  # the probe works
    # --help, a usage error, or a TOS pull need no botocore either.
    assert under(names, (*HEAVY, "botocore", "urllib3", *ON_DEMAND)) == []


@pytest.mark.slow
def test_a_pull_of_one_file_imports_only_what_it_uses(moto_store: S3Store, tmp_path: Path) -> None:
    bucket = moto_store.new_bucket()
    moto_store.put(bucket, "m/config.json", b"{}")
    dest = tmp_path / "config.json"
    uri = f"s3://{bucket}/m/config.json"
    argv = [sys.executable, "-X", "importtime", "-m", "modelpull", "pull", uri, str(dest)]
    proc = run_command([*argv, "--no-progress"], moto_store.env())
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == b"{}"
    names = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", proc.stderr, re.M))
    assert "botocore.client" in names  # the probe works
    assert under(names, (*HEAVY, *ON_DEMAND)) == []


def test_commands_collect_rarely_and_freeze_at_exit() -> None:
    before = gc.get_threshold()
    with few_collections():
        assert gc.get_threshold() == (GC_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before
    # Registered once however many commands run, and run at exit: a handler registered
    # before it runs after it (atexit is last in, first out) and sees objects frozen.
    probe = (
        "import atexit, gc\n"
        "real, calls = gc.freeze, []\n"
        "gc.freeze = lambda: calls.append(1) or real()\n"
        "atexit.register(lambda: print(len(calls), gc.get_freeze_count() > 0))\n"
        "from modelpull.cli.exits import few_collections\n"
        "for _ in range(3):\n"
        "    with few_collections():\n"
        "        pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["1", "True"]


def test_the_s3_backend_loads_only_the_s3_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """botocore's loader lists every service it ships before loading one (20 ms); ours
    knows it is S3, and still honours AWS_DATA_PATH."""
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    backend = Boto3Backend(PullConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1"))
    try:
        loader = backend._client._loader
        assert loader.list_available_services("service-2") == ["s3"]
        assert str(tmp_path) in loader.search_paths
        assert backend._client.meta.service_model.service_name == "s3"
    finally:
        backend.close()
