"""The adversary's findings against modelpull's inputs: its own state files damaged in
ways the journal and record checks did not foresee, and garbage in flags, environment
variables and AIBrix's extra config. Every one must end as modelpull's own error (one
line, a documented exit code) or be discarded with a warning; never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import pytest

import modelpull
from modelpull.config import PullConfig
from modelpull.plan import safe_relpath
from modelpull.resolve import resolve
from modelpull.state import StateDir
from modelpull.transfer import transfer
from tests.helpers import S3Store, run_cli

MiB = 1 << 20
DATA = os.urandom(3 * MiB + 1000)  # four 1 MiB parts, the last short
NESTED = "[" * 100_000  # JSON nested deeper than the parser's recursion limit


def pull(store: S3Store, uri: str, dest: Path) -> modelpull.PullResult:
    config = store.config(part_size=MiB, io_chunk_size=256 << 10, concurrency=2)
    return modelpull.pull(uri, dest, config=config, credentials=store.credentials)


def partial(store: S3Store, uri: str, dest: Path, parts: set[int]) -> None:
    """What a pull killed midway leaves: some parts in the temp file and the journal."""
    config = store.config(part_size=MiB, io_chunk_size=256 << 10, concurrency=2)
    with resolve(uri, config, store.credentials) as target:
        listed = modelpull.list_objects(target)
        transfer(target, listed, dest, lambda event: None, only={f.path: parts for f in listed})


@pytest.fixture
def uri(moto_store: S3Store) -> str:
    bucket = moto_store.new_bucket()
    moto_store.put(bucket, "m/w.bin", DATA)
    return f"s3://{bucket}/m/"


# --- damaged journals and records --------------------------------------------------------


@pytest.mark.parametrize(
    "journal",
    [
        # A part number of 5,000 digits: Python refuses to make it an int (ValueError).
        lambda j: json.dumps(j | {"done": {"1" * 5000: 1}}),
        NESTED,  # json.loads raises RecursionError, which is no ValueError
    ],
    ids=["part-number-of-5000-digits", "nested"],
)
def test_a_journal_that_breaks_the_parser_is_discarded_with_one_warning(
    moto_store: S3Store, uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, journal: Any
) -> None:
    partial(moto_store, uri, tmp_path, {0, 1})
    path = StateDir(tmp_path).journal_path("w.bin")
    made = journal if isinstance(journal, str) else journal(json.loads(path.read_text()))
    path.write_text(made)
    with caplog.at_level(logging.WARNING, logger="modelpull"):
        result = pull(moto_store, uri, tmp_path)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    warnings = [r.getMessage() for r in caplog.records if "resume journal" in r.getMessage()]
    assert len(warnings) == 1 and "fetched again" in warnings[0]
    assert result.bytes_downloaded == len(DATA)  # nothing trusted from it


def test_a_nested_record_is_ignored_and_the_file_checked_again(
    moto_store: S3Store, uri: str, tmp_path: Path
) -> None:
    """Without a usable record the file in DEST is a copy of unknown origin: it is
    adopted only once checked against the store (json.loads raised RecursionError)."""
    pull(moto_store, uri, tmp_path)
    StateDir(tmp_path).record_path("w.bin").write_text(NESTED)
    result = pull(moto_store, uri, tmp_path)
    assert (tmp_path / "w.bin").read_bytes() == DATA
    assert [f.status for f in result.files] == ["adopted"]
    # The CLI too: one clean run, whatever the record holds.
    StateDir(tmp_path).record_path("w.bin").write_text(NESTED)
    done = run_cli(["pull", uri, str(tmp_path)], moto_store.env())
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


# --- garbage in flags and environment variables ------------------------------------------

HUGE = "9" * 400  # a float of it is inf


def assert_usage_error(done: Any, *needles: str) -> None:
    assert "Traceback" not in done.stderr
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("modelpull: error: "), done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow  # the flag and secret-echo cases below cover this path in the fast lane
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MODELPULL_PART_SIZE", HUGE),  # OverflowError: cannot convert float infinity
        ("MODELPULL_MAX_BANDWIDTH", f"{HUGE}TiB"),
        ("MODELPULL_SPEED_LIMIT", HUGE),
        ("MODELPULL_SPEED_TIME", HUGE),  # inf seconds: the watchdog's thread dies on it
        ("MODELPULL_SPEED_TIME", "1" + "0" * 306),  # finite, but x 1 KiB/s is inf
        ("MODELPULL_READ_TIMEOUT", HUGE),  # no socket takes an infinite timeout
        ("MODELPULL_CONNECT_TIMEOUT", "1" + "0" * 300),
        ("MODELPULL_DEADLINE", HUGE),
    ],
    ids=lambda value: value if value.startswith("MODELPULL_") else f"{len(value)}-chars",
)
def test_a_number_too_big_for_the_machine_is_a_usage_error(
    moto_store: S3Store, uri: str, tmp_path: Path, variable: str, value: str
) -> None:
    env = moto_store.env() | {variable: value}
    done = run_cli(["pull", uri, str(tmp_path / "d")], env)
    assert_usage_error(done, variable)
    assert not (tmp_path / "d" / "w.bin").exists()


@pytest.mark.parametrize(
    "flag", ["--part-size", "--io-chunk-size", "--max-bandwidth", "--speed-time", "--deadline"]
)
def test_a_flag_too_big_for_the_machine_is_a_usage_error(
    moto_store: S3Store, uri: str, tmp_path: Path, flag: str
) -> None:
    done = run_cli(["pull", uri, str(tmp_path / "d"), flag, HUGE], moto_store.env())
    assert_usage_error(done, flag)


@pytest.mark.parametrize("name", ["connect_timeout", "read_timeout", "speed_time", "deadline"])
@pytest.mark.parametrize("value", [math.nan, math.inf, 1e300], ids=["nan", "inf", "1e300"])
def test_a_config_duration_that_no_clock_takes_is_refused(name: str, value: float) -> None:
    """NaN passes every ``<= 0`` check; a NaN or infinite speed time killed the watchdog's
    thread (no stall abandoned again: a pull could hang), 1e300 s overflowed time_t."""
    with pytest.raises(modelpull.UsageError, match=name.replace("_", " ")):
        PullConfig(**{name: value})


def test_the_tos_sdk_mapping_refuses_numbers_that_are_not_finite() -> None:
    from modelpull.compat.tos import from_sdk

    for keyword in ("part_size", "task_num", "max_connections", "max_retry_count"):
        for value in (float("inf"), float("nan")):
            with pytest.raises(modelpull.UsageError, match=keyword):
                from_sdk(environ={}, **{keyword: value})
    for keyword in ("connection_time", "socket_timeout"):
        with pytest.raises(modelpull.UsageError):
            from_sdk(environ={}, **{keyword: float("inf")})


# --- AIBrix's --download-extra-config ------------------------------------------------------


@pytest.mark.slow  # the flag and secret-echo cases below cover this path in the fast lane
@pytest.mark.parametrize(
    "extra",
    [
        NESTED,  # argparse lets RecursionError through: a traceback, before any handler
        json.dumps({"endpoint": 5}),  # AttributeError: 'int' object has no attribute 'strip'
        json.dumps({"ak": ["x"], "sk": "y"}),  # an AssertionError deep in botocore
        json.dumps({"region": {"a": 1}}),
    ],
    ids=["nested", "endpoint-int", "ak-list", "region-object"],
)
def test_aibrix_extra_config_of_the_wrong_shape_is_a_usage_error(
    moto_store: S3Store, uri: str, tmp_path: Path, extra: str
) -> None:
    args = ["--model-uri", uri, "--local-dir", str(tmp_path), "--download-extra-config", extra]
    done = run_cli(args, moto_store.env(), module="modelpull.aibrix")
    assert "Traceback" not in done.stderr
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("modelpull.aibrix: error: "), done.stderr
    assert not list(tmp_path.rglob("w.bin"))


@pytest.mark.parametrize(
    "extra",
    [
        '{"ak": "AKIDEXAMPLE", "sk": "s3cr3t-Key-42"',  # a brace short: invalid JSON
        '["AKIDEXAMPLE", "s3cr3t-Key-42"]',  # JSON, but no object
        '{"ak": "AKIDEXAMPLE", "sk": ["s3cr3t-Key-42"]}',  # the key in a list
    ],
    ids=["invalid-json", "list", "sk-list"],
)
def test_aibrix_extra_config_in_error_never_echoes_the_secret_key(
    moto_store: S3Store, uri: str, tmp_path: Path, extra: str
) -> None:
    args = ["--model-uri", uri, "--local-dir", str(tmp_path), "--download-extra-config", extra]
    done = run_cli(args, moto_store.env(), module="modelpull.aibrix")
    assert done.returncode == 2, done.stderr
    assert "s3cr3t-Key-42" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


# --- credentials in an endpoint URL ------------------------------------------------------


@pytest.mark.parametrize("command", ["pull", "ls"])
def test_a_password_in_the_endpoint_url_is_never_printed(
    moto_store: S3Store, uri: str, tmp_path: Path, command: str
) -> None:
    """``http://user:password@host`` is no way to give S3 credentials (requests are
    signed with the access key); whatever it is, the password must not reach an error
    line or the JSON report."""
    secret = "hunter2-Secret-Pass"
    endpoint = moto_store.endpoint_url.replace("http://", f"http://admin:{secret}@")
    args = [command, uri, *([str(tmp_path / "d")] if command == "pull" else []), "--json"]
    for env in (
        moto_store.env() | {"AWS_ENDPOINT_URL": endpoint},
        moto_store.env() | {"MODELPULL_ENDPOINT_URL": endpoint},
    ):
        done = run_cli(args, env)
        assert secret not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr
        assert done.returncode == 2, done.stderr


def test_an_io_buffer_no_machine_has_is_a_usage_error(
    moto_store: S3Store, uri: str, tmp_path: Path
) -> None:
    """Each worker allocates one ``--io-chunk-size`` buffer; the part size was its only
    bound, so an exabyte of both passed every check."""
    huge = ["--part-size", "1000000TB", "--io-chunk-size", "1000000TB"]
    done = run_cli(["pull", uri, str(tmp_path / "d"), *huge], moto_store.env())
    assert_usage_error(done, "I/O chunk size")


def test_an_aws_config_file_that_does_not_parse_is_a_usage_error(
    moto_store: S3Store, uri: str, tmp_path: Path
) -> None:
    """A broken ``~/.aws/config`` is the user's to fix, not 'other store error' (10)."""
    config = tmp_path / "aws-config"
    config.write_text("[default\nregion = us-east-1\n")
    done = run_cli(["ls", uri], moto_store.env() | {"AWS_CONFIG_FILE": str(config)})
    assert_usage_error(done, "AWS_CONFIG_FILE")


# --- sizes at the edges of a part ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("verify", ["auto", "strict"])
def test_sizes_at_the_edges_of_a_part_with_one_buffer_a_part(
    store: S3Store, tmp_path: Path, verify: str
) -> None:
    """Empty, one byte, a part less one, a part, a part and one byte, two parts: with
    ``--part-size`` equal to ``--io-chunk-size`` and one request at a time; then again
    (all kept) and with --check-existing (all read back)."""
    bucket = store.new_bucket()
    sizes = [0, 1, MiB - 1, MiB, MiB + 1, 2 * MiB]
    files = {f"s{size}.bin": os.urandom(size) for size in sizes}
    for name, data in files.items():
        store.client().put_object(
            Bucket=bucket, Key=f"m/{name}", Body=data, ChecksumAlgorithm="CRC32C"
        )
    args = ["pull", f"s3://{bucket}/m/", str(tmp_path), "--part-size", "1MiB"]
    args += ["--io-chunk-size", "1MiB", "--concurrency", "1", "--verify", verify, "--json"]
    for extra in ([], [], ["--check-existing"]):
        done = run_cli([*args, *extra], store.env())
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        for name, data in files.items():
            assert (tmp_path / name).read_bytes() == data, name
    report = json.loads(done.stdout)
    assert {f["path"]: f["status"] for f in report["files"]} == dict.fromkeys(files, "skipped")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*files, ".modelpull"])


@pytest.mark.parametrize("folder", [".MODELPULL", ".ModelPull"])
def test_a_key_into_the_state_folder_in_other_case_is_refused(folder: str) -> None:
    """On a case-blind file system (macOS, ext4 casefold) it is the state folder."""
    with pytest.raises(modelpull.UnsafePathError, match="modelpull's"):
        safe_relpath(f"m/{folder}/records/x.json", "m/")
