"""Habits of AWS CLI and s5cmd users, on the ``modelpull`` command, against real servers.

The command runs in this process (:func:`modelpull.cli.main`), with the variables a
deployment would set: options before the subcommand, ``--no-sign-request`` for public
buckets, a wildcard URI, one object to a file DEST, ``S3_ENDPOINT_URL``, ``--dry-run``,
misspelt variables, pulls that select nothing, ``ls``'s sizes and keys that carry control
characters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelpull import config
from modelpull.cli import main
from modelpull.demo.rclone import RcloneS3Server
from tests.helpers import S3Store, rclone_slow, tree

MiB = 1 << 20
WEIGHTS = os.urandom(2 * MiB + 3)
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "generation_config.json": b'{"temperature": 0.6}',
    "model.safetensors": WEIGHTS,
    "README.md": b"# a model",
}

pytestmark = pytest.mark.usefixtures("restore_logger")


def cli(
    args: list[str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, str, str]:
    """``modelpull ARGS`` in this process with ``env``'s AWS_/MODELPULL_/S3_ variables."""
    for name, value in env.items():
        if name.startswith(("AWS_", "MODELPULL_", "S3_")):
            monkeypatch.setenv(name, value)
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def bucket(store: S3Store) -> str:
    name = store.new_bucket()
    store.put_tree(name, "m/", FILES)
    return name


# -- options before the subcommand, S3_ENDPOINT_URL ---------------------------------------


def test_options_before_the_subcommand(
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {k: v for k, v in store.env().items() if k != "AWS_ENDPOINT_URL"}
    code, out, err = cli(
        ["--endpoint-url", store.endpoint_url, "ls", f"s3://{bucket}/m/"], env, monkeypatch, capsys
    )
    assert code == 0, err
    assert "model.safetensors" in out
    # s5cmd's order: global flags, the command, then its own; = forms and -v too.
    args = [f"--endpoint-url={store.endpoint_url}", "--json", "-v", "pull"]
    code, out, err = cli(
        [*args, f"s3://{bucket}/m/", str(tmp_path), "--concurrency", "2"], env, monkeypatch, capsys
    )
    assert code == 0, err
    assert json.loads(out)["files_fetched"] == len(FILES)
    assert tree(tmp_path) == FILES


def test_s3_endpoint_url_is_honoured(
    store: S3Store,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {k: v for k, v in store.env().items() if k != "AWS_ENDPOINT_URL"}
    # s5cmd's variable, with nothing else naming an endpoint: the pull goes there, not AWS.
    code, out, err = cli(
        ["ls", f"s3://{bucket}/m/"],
        env | {"S3_ENDPOINT_URL": store.endpoint_url},
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert "config.json" in out


# -- wildcards -----------------------------------------------------------------------------


@rclone_slow
def test_a_wildcard_uri_is_an_include(
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = store.env()
    code, _, err = cli(
        ["pull", f"s3://{bucket}/m/*.json", str(tmp_path / "a")], env, monkeypatch, capsys
    )
    assert code == 0, err
    code, _, err = cli(
        ["pull", f"s3://{bucket}/m/", str(tmp_path / "b"), "--include", "*.json"],
        env,
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    jsons = {k: v for k, v in FILES.items() if k.endswith(".json")}
    assert tree(tmp_path / "a") == tree(tmp_path / "b") == jsons
    code, out, _ = cli(["ls", f"s3://{bucket}/m/*.json", "--json"], env, monkeypatch, capsys)
    assert sorted(json.loads(line)["path"] for line in out.splitlines()) == sorted(jsons)


# -- one object to a file ------------------------------------------------------------------


@rclone_slow
def test_one_object_to_a_file_dest(
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = store.env()
    uri = f"s3://{bucket}/m/config.json"
    dest = tmp_path / "models" / "cfg.json"
    code, out, err = cli(["pull", uri, str(dest), "--json"], env, monkeypatch, capsys)
    assert code == 0, err
    assert dest.read_bytes() == FILES["config.json"]  # the file itself, as aws s3 cp writes it
    assert json.loads(out)["dest"] == str(dest)
    # The skip record lives in the file's folder: a second pull fetches nothing.
    code, out, _ = cli(["pull", uri, str(dest), "--json"], env, monkeypatch, capsys)
    assert (json.loads(out)["files_skipped"], json.loads(out)["bytes_downloaded"]) == (1, 0)
    # A trailing slash, or an existing folder, means a folder.
    cli(["pull", uri, f"{tmp_path / 'folder'}/"], env, monkeypatch, capsys)
    assert (tmp_path / "folder" / "config.json").read_bytes() == FILES["config.json"]
    (tmp_path / "there").mkdir()
    cli(["pull", uri, str(tmp_path / "there")], env, monkeypatch, capsys)
    assert (tmp_path / "there" / "config.json").is_file()
    # A folder URI into an existing file is still refused.
    code, _, err = cli(["pull", f"s3://{bucket}/m/", str(dest)], env, monkeypatch, capsys)
    assert code == 6
    assert "not a folder" in err


# -- --dry-run ----------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


@rclone_slow
def test_dry_run_says_what_it_would_do_and_writes_nothing(
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = store.env()
    uri = f"s3://{bucket}/m/"
    # Nothing there yet: every file would be fetched, and DEST is not even created.
    code, out, err = cli(
        ["pull", uri, str(tmp_path / "new"), "--dry-run"], env, monkeypatch, capsys
    )
    assert code == 0, err
    assert out.count("would fetch") == len(FILES) + 1  # one line per file, then the total
    assert "2.00 MiB" in out  # sizes, human-readable
    assert not (tmp_path / "new").exists()
    # One file complete, one copied in by another tool (right size, no record), two absent.
    dest = tmp_path / "dest"
    cli(["pull", uri, str(dest), "--include", "config.json"], env, monkeypatch, capsys)
    (dest / "generation_config.json").write_bytes(FILES["generation_config.json"])
    before = _snapshot(dest)
    code, out, err = cli(["pull", uri, str(dest), "--dryrun"], env, monkeypatch, capsys)
    assert code == 0, err
    lines = out.splitlines()
    # README.md, config.json, generation_config.json, model.safetensors: sorted by path.
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["would", "fetch"],
        ["would", "skip"],
        ["would", "check"],
        ["would", "fetch"],
    ]
    assert "would check 1 existing file" in lines[-1]
    assert _snapshot(dest) == before
    code, out, _ = cli(["pull", uri, str(dest), "--dry-run", "--json"], env, monkeypatch, capsys)
    plan = json.loads(out)
    assert (plan["skip"]["files"], plan["check"]["files"], plan["fetch"]["files"]) == (1, 1, 2)
    assert plan["fetch"]["bytes"] == len(WEIGHTS) + len(FILES["README.md"])
    assert _snapshot(dest) == before


# -- the environment ------------------------------------------------------------------------


def test_a_misspelt_variable_is_named_once(
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(config, "_warned", set())  # once per process: start afresh
    env = store.env() | {"MODELPULL_CONCURENCY": "4"}
    code, _, err = cli(["pull", f"s3://{bucket}/m/", str(tmp_path)], env, monkeypatch, capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "MODELPULL_CONCURENCY" in line]
    assert len(warnings) == 1
    assert "did you mean MODELPULL_CONCURRENCY?" in warnings[0]


# -- a pull that selects nothing -------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "needles"),
    [
        (["--include", "*.gguf"], ["--include *.gguf", "lists 4 file(s)"]),
        (["--exclude", "*", "--include", "*.json"], ["allow-list", "not applied in order"]),
        (["--include", "m/*.json"], ["relative to", "not whole keys"]),
    ],
)
@rclone_slow
def test_a_pull_that_selects_nothing_fails(
    store: S3Store,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    filters: list[str],
    needles: list[str],
) -> None:
    env = store.env()
    uri = f"s3://{bucket}/m/"
    code, _, err = cli(["pull", uri, str(tmp_path / "d"), *filters], env, monkeypatch, capsys)
    assert code == 3
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("modelpull: error: nothing to pull")
    for needle in [uri, "--allow-empty", *needles]:
        assert needle in lines[0]
    code, out, err = cli(
        ["pull", uri, str(tmp_path / "d"), *filters, "--allow-empty", "--json"],
        env,
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["files_fetched"] == 0


# -- ls ----------------------------------------------------------------------------------


def test_ls_sizes_total_and_bytes(
    store: S3Store,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = store.env()
    code, out, _ = cli(["ls", f"s3://{bucket}/m/"], env, monkeypatch, capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[3] == ["2.00", "MiB", "model.safetensors"]
    total = sum(len(v) for v in FILES.values())
    assert rows[-1] == ["2.00", "MiB", "total,", "4", "files"]
    code, out, _ = cli(["ls", f"s3://{bucket}/m/", "--bytes"], env, monkeypatch, capsys)
    rows = [line.split() for line in out.splitlines()]
    assert rows[3] == [str(len(WEIGHTS)), "model.safetensors"]
    assert rows[-1] == [str(total), "total,", "4", "files"]


# -- keys with control characters ---------------------------------------------------------

EVIL = "m/evil\r\x1b[31mred.json"


@pytest.fixture
def evil_bucket(moto_store: S3Store) -> str:
    name = moto_store.new_bucket()
    moto_store.put(name, EVIL, b"{}")
    moto_store.put(name, "m/config.json", b"{}")
    return name


def test_keys_are_escaped_in_text_and_kept_in_json(
    moto_store: S3Store,
    evil_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = moto_store.env()
    uri = f"s3://{evil_bucket}/m/"
    outputs = []
    for args in (
        ["ls", uri],
        ["pull", uri, str(tmp_path / "d"), "-v"],
        ["pull", uri, str(tmp_path / "e"), "--dry-run"],
        ["pull", uri, str(tmp_path / "f"), "--include", "*.bin"],  # an error naming the keys
    ):
        _, out, err = cli(args, env, monkeypatch, capsys)
        outputs.append(out + err)
    text = "".join(outputs)
    assert "\x1b" not in text and "\r" not in text
    assert repr(EVIL.removeprefix("m/")) in text
    assert (tmp_path / "d" / EVIL.removeprefix("m/")).read_bytes() == b"{}"  # the real name
    code, out, _ = cli(["ls", uri, "--json"], env, monkeypatch, capsys)
    assert code == 0
    assert EVIL in [json.loads(line)["key"] for line in out.splitlines()]


# -- --no-sign-request ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """An anonymous rclone (no --auth-key) serving the bucket ``public``."""
    root = tmp_path_factory.mktemp("public")
    for relative, data in FILES.items():
        path = root / "public" / "m" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    with RcloneS3Server(root, anonymous=True) as server:
        yield server.endpoint_url, "public"


def test_no_sign_request_reads_a_public_bucket(
    public: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint, name = public
    env = {"MODELPULL_ADDRESSING_STYLE": "path", "AWS_REGION": "us-east-1"}
    uri = f"s3://{name}/m/"
    # No credentials anywhere: a signed request cannot even be made.
    code, _, err = cli(
        ["--endpoint-url", endpoint, "pull", uri, str(tmp_path / "a")], env, monkeypatch, capsys
    )
    assert code == 4
    assert "--no-sign-request" in err
    code, _, err = cli(
        ["--no-sign-request", "--endpoint-url", endpoint, "pull", uri, str(tmp_path / "b")],
        env,
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert tree(tmp_path / "b") == FILES
    env |= {"MODELPULL_NO_SIGN_REQUEST": "true", "AWS_ENDPOINT_URL": endpoint}
    code, out, err = cli(["ls", uri], env, monkeypatch, capsys)
    assert code == 0, err
    assert "model.safetensors" in out
