"""Metrics and logs of real pulls from local S3 servers: /metrics scraped mid-pull, the
textfile, JSON log lines; through the Python API and through the CLI."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import modelpull
from modelpull.events import Event, FileDone
from modelpull.observe.export import export_metrics, serve
from modelpull.observe.logs import LogObserver, setup_logging
from modelpull.observe.metrics import MetricsObserver
from tests.helpers import S3Store, free_port, rclone_slow, start_cli, tree

MiB = 1 << 20
FILES = {
    "config.json": b'{"hidden_size": 4096}',
    "tokenizer.json": b'{"model": {"type": "BPE"}}' * 100,
    "model-00001-of-00003.safetensors": os.urandom(3 * MiB + 17),
    "model-00002-of-00003.safetensors": os.urandom(2 * MiB + 5),
    "model-00003-of-00003.safetensors": os.urandom(1 * MiB + 3),
}
TOTAL = sum(map(len, FILES.values()))


@pytest.fixture
def bucket(store: S3Store) -> str:
    name = store.new_bucket()
    store.put_tree(name, "m/", FILES)
    return name


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by name and labels minus backend/bucket."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = frozenset(
                (k, v) for k, v in s.labels.items() if k not in ("backend", "bucket")
            )
            found[s.name, labels] = s.value
    return found


def one(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[name, frozenset(labels.items())]


def total(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return sum(v for (n, _), v in found.items() if n == name)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        body: bytes = response.read()
    return body.decode()


def on_disk(root: Path) -> int:
    return sum(map(len, tree(root).values()))


# -- the Python API ----------------------------------------------------------------------


@rclone_slow
def test_scrape_during_a_pull_and_after(store: S3Store, bucket: str, tmp_path: Path) -> None:
    metrics = MetricsObserver(backend="boto3", bucket=bucket)
    mid_pull: list[str] = []
    with serve(0, metrics.registry, addr="127.0.0.1") as server:

        def scrape_after_first_file(event: Event) -> None:
            # Runs on a worker thread, after the metrics observer saw the same event.
            if isinstance(event, FileDone) and not mid_pull:
                mid_pull.append(scrape(server.url))

        result = modelpull.pull(
            f"s3://{bucket}/m/",
            tmp_path,
            config=store.config(part_size=1 * MiB, concurrency=2),
            credentials=store.credentials,
            observers=[metrics, scrape_after_first_file],
        )
        final = samples(scrape(server.url))

    during = samples(mid_pull[0])
    assert one(during, "modelpull_files_downloaded_total") >= 1
    assert one(during, "modelpull_bytes_downloaded_total") > 0
    assert one(during, "modelpull_planned_bytes") == TOTAL
    assert ("modelpull_pull_success", frozenset()) not in during  # not ended yet

    assert on_disk(tmp_path) == TOTAL
    assert one(final, "modelpull_bytes_downloaded_total") == TOTAL == result.bytes_downloaded
    assert one(final, "modelpull_files_downloaded_total") == len(FILES)
    assert one(final, "modelpull_files_skipped_total") == 0
    assert one(final, "modelpull_inflight_requests") == 0
    assert one(final, "modelpull_pull_success") == 1
    assert one(final, "modelpull_integrity_failures_total") == 0
    assert total(final, "modelpull_retries_total") == 0
    # 3 + 2 + 1 parts of 1 MiB plus a remainder each, and the two small files.
    gets = {
        dict(labels)["status"]: v
        for (name, labels), v in final.items()
        if name == "modelpull_requests_total" and dict(labels)["method"] == "GET"
    }
    assert sum(gets.values()) >= 9
    assert all(status.startswith("2") for status in gets), gets
    assert one(final, "modelpull_request_duration_seconds_count", method="GET", phase="total") == (
        sum(gets.values())
    )
    assert one(final, "modelpull_file_download_duration_seconds_count") == len(FILES)
    assert total(final, "modelpull_checksums_verified_total") >= len(FILES)


@rclone_slow
def test_second_pull_counts_skipped_files(store: S3Store, bucket: str, tmp_path: Path) -> None:
    uri, cfg = f"s3://{bucket}/m/", store.config()
    modelpull.pull(uri, tmp_path, config=cfg, credentials=store.credentials)
    metrics = MetricsObserver(backend="boto3", bucket=bucket)
    modelpull.pull(uri, tmp_path, config=cfg, credentials=store.credentials, observers=[metrics])
    reg, labels = metrics.registry, {"backend": "boto3", "bucket": bucket}
    assert reg.get_sample_value("modelpull_files_skipped_total", labels) == len(FILES)
    assert reg.get_sample_value("modelpull_files_downloaded_total", labels) == 0
    assert reg.get_sample_value("modelpull_bytes_downloaded_total", labels) == 0


@pytest.mark.slow
def test_scrape_from_outside_while_a_slow_pull_runs(
    store: S3Store, bucket: str, tmp_path: Path
) -> None:
    # Rate-capped to about 2.5 s, so a scraper polling from another thread sees it move.
    cfg = store.config(part_size=1 * MiB, concurrency=2, max_bandwidth=3 * MiB)
    seen: list[float] = []
    metrics = MetricsObserver(backend="boto3", bucket=bucket)
    done = threading.Event()
    with serve(0, metrics.registry, addr="127.0.0.1") as server:

        def poll() -> None:
            while not done.wait(0.2):
                seen.append(one(samples(scrape(server.url)), "modelpull_bytes_downloaded_total"))

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            modelpull.pull(
                f"s3://{bucket}/m/",
                tmp_path,
                config=cfg,
                credentials=store.credentials,
                observers=[metrics],
            )
        finally:
            done.set()
            poller.join()
    assert seen == sorted(seen)  # a counter never goes down
    assert any(0 < v < TOTAL for v in seen), seen  # caught mid-pull
    assert on_disk(tmp_path) == TOTAL


@rclone_slow
def test_pull_takes_a_registry(store: S3Store, bucket: str, tmp_path: Path) -> None:
    registry = CollectorRegistry()
    uri, cfg = f"s3://{bucket}/m/", store.config()
    for _ in range(2):  # the second pull finds every file complete
        modelpull.pull(
            uri,
            tmp_path,
            config=cfg,
            credentials=store.credentials,
            registry=registry,
        )
    labels = {"backend": "boto3", "bucket": bucket}
    assert registry.get_sample_value("modelpull_bytes_downloaded_total", labels) == TOTAL
    assert registry.get_sample_value("modelpull_files_downloaded_total", labels) == len(FILES)
    assert registry.get_sample_value("modelpull_files_skipped_total", labels) == len(FILES)


@rclone_slow
def test_textfile_after_a_pull(store: S3Store, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "textfile" / "modelpull.prom"
    path.parent.mkdir()
    with export_metrics(backend="boto3", bucket=bucket, textfile=path) as metrics:
        modelpull.pull(
            f"s3://{bucket}/m/",
            tmp_path / "out",
            config=store.config(),
            credentials=store.credentials,
            observers=[metrics],
        )
    found = samples(path.read_text())
    assert one(found, "modelpull_bytes_downloaded_total") == on_disk(tmp_path / "out") == TOTAL
    assert one(found, "modelpull_files_downloaded_total") == len(FILES)
    assert one(found, "modelpull_pull_success") == 1
    assert os.listdir(path.parent) == ["modelpull.prom"]


@pytest.mark.usefixtures("restore_logger")
def test_json_logs_of_a_pull(
    store: S3Store, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = store.credentials.secret_key
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    stream = io.StringIO()
    setup_logging(2, False, "json", stream)
    modelpull.pull(
        f"s3://{bucket}/m/",
        tmp_path,
        config=store.config(part_size=1 * MiB),
        credentials=store.credentials,
        observers=[LogObserver()],
    )
    # Whatever a future change might log by mistake, the filter stands in the way.
    logging.getLogger("modelpull.backends").warning(
        "credentials were %s", store.credentials.secret_key
    )
    text = stream.getvalue()
    assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    done = [line for line in lines if line["event"] == "file_done"]
    assert sorted(line["file"] for line in done) == sorted(FILES)
    assert sum(line["bytes"] for line in done) == TOTAL
    assert all(line["seconds"] >= 0 and "mb_per_s" in line for line in done)
    assert [line["event"] for line in lines if line["event"].startswith("pull_")] == [
        "pull_started",
        "pull_finished",
    ]
    assert any(line["event"] == "request_finished" for line in lines)


@pytest.mark.usefixtures("restore_logger")
def test_failed_pull_logs_an_error_line(store: S3Store, tmp_path: Path) -> None:
    stream = io.StringIO()
    setup_logging(0, False, "json", stream, environ={})
    empty = store.new_bucket()
    with pytest.raises(modelpull.NotFoundError):
        modelpull.pull(
            f"s3://{empty}/nothing/",
            tmp_path,
            config=store.config(),
            credentials=store.credentials,
            observers=[LogObserver()],
        )
    [line] = [json.loads(raw) for raw in stream.getvalue().splitlines()]
    assert (line["event"], line["level"], line["ok"]) == ("pull_finished", "error", False)


# -- the CLI ----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_serves_metrics_during_the_pull(store: S3Store, bucket: str, tmp_path: Path) -> None:
    port = free_port()
    env = store.env() | {"MODELPULL_MAX_BANDWIDTH": str(3 * MiB)}  # about 2.5 s
    proc = start_cli(
        [
            "pull",
            f"s3://{bucket}/m/",
            str(tmp_path / "out"),
            "--no-progress",
            "--part-size",
            "1MiB",
            "--metrics-port",
            f"127.0.0.1:{port}",
        ],
        env,
    )
    seen: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                body = scrape(f"http://127.0.0.1:{port}/metrics")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
                continue
            seen.append(one(samples(body), "modelpull_bytes_downloaded_total"))
            time.sleep(0.1)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert seen == sorted(seen)
    assert any(0 < v < TOTAL for v in seen), seen
    assert on_disk(tmp_path / "out") == TOTAL


@rclone_slow
def test_cli_textfile_and_json_logs(store: S3Store, bucket: str, tmp_path: Path) -> None:
    prom = tmp_path / "modelpull.prom"
    proc = start_cli(
        [
            "pull",
            f"s3://{bucket}/m/",
            str(tmp_path / "out"),
            "--no-progress",
            "--metrics-file",
            str(prom),
            "--log-format",
            "json",
            "-vv",
        ],
        store.env(),
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    found = samples(prom.read_text())
    assert one(found, "modelpull_bytes_downloaded_total") == on_disk(tmp_path / "out") == TOTAL
    assert one(found, "modelpull_pull_success") == 1
    lines = [json.loads(line) for line in err.splitlines()]
    assert {line["file"] for line in lines if line["event"] == "file_done"} == set(FILES)
    assert store.credentials.secret_key not in err + out


@rclone_slow
def test_cli_failed_pull_still_writes_the_textfile(store: S3Store, tmp_path: Path) -> None:
    prom = tmp_path / "modelpull.prom"
    empty = store.new_bucket()
    proc = start_cli(
        ["pull", f"s3://{empty}/nothing/", str(tmp_path / "out"), "--metrics-file", str(prom)],
        store.env(),
    )
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert one(samples(prom.read_text()), "modelpull_pull_success") == 0


@rclone_slow
def test_cli_bad_metrics_flags_fail_before_the_pull(store: S3Store, tmp_path: Path) -> None:
    for flag, value, needle in (
        ("--metrics-port", "nope", "--metrics-port"),
        ("--metrics-file", str(tmp_path / "absent" / "m.prom"), "no such folder"),
    ):
        proc = start_cli(
            ["pull", "s3://no-such-bucket/m/", str(tmp_path / "out"), flag, value], store.env()
        )
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert needle in err
