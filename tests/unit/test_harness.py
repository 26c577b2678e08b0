"""What the suite stands on, checked without a server: the isolated environment, and what
the rclone launcher says when there is no rclone."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

from modelpull.demo.rclone import RcloneS3Server, find_rclone
from modelpull.errors import BackendUnavailableError
from tests.helpers import ISOLATED_PREFIXES


def test_environment_is_isolated() -> None:
    leaked = [n for n in os.environ if n.startswith(ISOLATED_PREFIXES)]
    assert sorted(leaked) == [
        "AWS_CONFIG_FILE",
        "AWS_EC2_METADATA_DISABLED",
        "AWS_SHARED_CREDENTIALS_FILE",
    ]
    assert not Path(os.environ["AWS_SHARED_CREDENTIALS_FILE"]).exists()


def test_missing_rclone_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailableError, match=r"modelpull\[demo\]"):
        find_rclone()
    with pytest.raises(BackendUnavailableError):
        RcloneS3Server(tmp_path / "root").start()
