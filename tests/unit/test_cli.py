"""The ``modelpull`` command without a store: its help text."""

from __future__ import annotations

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
