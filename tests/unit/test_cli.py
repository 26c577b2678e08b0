"""The ``modelpull`` command without a store: its help text, and how it ends on an error."""

from __future__ import annotations

import errno
import json

import pytest

from modelpull.cli.exits import run_command
from tests.helpers import isolated_env, run_cli


def test_help_lists_options_and_exit_codes() -> None:
    proc = run_cli(["pull", "--help"], isolated_env())
    assert proc.returncode == 0
    for flag in (
        "--include",
        "--exclude",
        "--concurrency",
        "--part-size",
        "--endpoint-url",
        "--force",
        "--no-progress",
        "--json",
    ):
        assert flag in proc.stdout
    assert "Exit codes" in run_cli(["--help"], isolated_env()).stdout


def test_an_unexpected_error_is_one_line_and_a_json_object(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def body() -> int:
        raise OSError(errno.EIO, "Input/output error", "/dest/w.bin")

    assert run_command("modelpull", body, json_errors=True) == 1
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "modelpull: error: unexpected OSError: [Errno 5] Input/output error: '/dest/w.bin' "
        "(details with -vv)"
    ]
    assert json.loads(out)["error"]["type"] == "OSError"
    assert json.loads(out)["exit_code"] == 1
