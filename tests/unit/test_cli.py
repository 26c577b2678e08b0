"""The ``modelpull`` command without a store: its help text, its argument line, escaping,
and how it ends on an error."""

from __future__ import annotations

import errno
import json

import pytest

from modelpull.cli import build_parser
from modelpull.cli.exits import run_command
from modelpull.cli.main import hoist_options
from modelpull.text import escape_controls, shown
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


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # Options of the subcommand before it move just after it, values with them.
        (
            ["--endpoint-url", "http://h:1", "ls", "s3://bk/m/"],
            ["ls", "--endpoint-url", "http://h:1", "s3://bk/m/"],
        ),
        (
            ["--endpoint-url=http://h:1", "-vv", "--no-sign-request", "pull", "s3://bk/", "d"],
            ["pull", "--endpoint-url=http://h:1", "-vv", "--no-sign-request", "s3://bk/", "d"],
        ),
        # argparse's unique prefixes work before the subcommand too.
        (
            ["--endpoint", "http://h", "ls", "s3://bk/"],
            ["ls", "--endpoint", "http://h", "s3://bk/"],
        ),
        # The program's own options stay; anything unknown is left for argparse to report.
        (["--version"], ["--version"]),
        (["--bogus", "ls", "s3://bk/"], ["--bogus", "ls", "s3://bk/"]),
        (["ls", "s3://bk/", "--region", "r"], ["ls", "s3://bk/", "--region", "r"]),
    ],
)
def test_options_before_the_subcommand_move_after_it(argv: list[str], expected: list[str]) -> None:
    assert hoist_options(argv, build_parser()) == expected


def test_a_hoisted_option_the_subcommand_lacks_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(hoist_options(["--dry-run", "ls", "s3://bk/m/"], parser))
    assert caught.value.code == 2
    assert "--dry-run" in capsys.readouterr().err


def test_ls_and_pull_help_say_what_they_do() -> None:
    # argparse wraps lines: compare with the spaces normalised.
    ls = " ".join(run_cli(["ls", "--help"], isolated_env()).stdout.split())
    for needle in ("--bytes", "total", "*.json", "--no-sign-request"):
        assert needle in ls
    pull = " ".join(run_cli(["pull", "--help"], isolated_env()).stdout.split())
    for needle in ("--dry-run", "--preset", "--allow-empty", "--no-sign-request", "aws s3 cp"):
        assert needle in pull
    top = " ".join(run_cli(["--help"], isolated_env()).stdout.split())
    assert "before or after the command" in top


@pytest.mark.parametrize(
    ("text", "shown_as"),
    [
        ("config.json", "config.json"),
        ("模型/权重.safetensors", "模型/权重.safetensors"),
        ("evil\r\x1b[31mred", "'evil\\r\\x1b[31mred'"),
        ("two\nlines", "'two\\nlines'"),
    ],
)
def test_keys_are_shown_escaped(text: str, shown_as: str) -> None:
    assert shown(text) == shown_as
    assert escape_controls(f"error: {text}") == f"error: {shown_as.strip(chr(39))}"
