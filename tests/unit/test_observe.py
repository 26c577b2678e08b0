"""Metrics and log observers fed synthetic events: values, formats, redaction."""

from __future__ import annotations

import gc
import io
import json
import logging
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from modelpull.errors import DestinationError, IntegrityError, UsageError
from modelpull.events import (
    BytesTransferred,
    Event,
    FileDone,
    FileFailed,
    FileQueued,
    FileResumed,
    FileSkipped,
    FileVerified,
    PartRetried,
    PullFinished,
    PullStarted,
    RequestFinished,
    RequestStarted,
)
from modelpull.observe.export import export_metrics, parse_listen, serve, write_textfile
from modelpull.observe.logs import REDACTED, JsonFormatter, LogObserver, setup_logging
from modelpull.observe.metrics import MetricsObserver

LABELS = {"backend": "boto3", "bucket": "models"}
# Shaped like an AWS secret access key (the documentation's example one).
AWS_LIKE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **labels})


def integrity_error(path: str = "w.bin") -> IntegrityError:
    return IntegrityError(
        f"{path}: md5 mismatch", path=path, algorithm="md5", expected="aa", actual="bb"
    )


def a_pull() -> list[Event]:
    """One file fetched in two parts with one retry, one skipped, one failed."""
    return [
        PullStarted(backend="boto3", bucket="models", files=3, bytes=3000),
        FileSkipped(path="config.json", size=1000),
        FileQueued(path="w.bin", size=2000, parts=2),
        RequestStarted(path="w.bin", method="GET"),
        RequestStarted(path="w.bin", method="GET"),
        BytesTransferred(path="w.bin", bytes=700),
        RequestFinished("w.bin", "GET", "503", None, 0.02, 0),
        PartRetried(path="w.bin", reason="503", attempt=1, delay=0.1),
        BytesTransferred(path="w.bin", bytes=300),
        RequestFinished("w.bin", "GET", "206", 0.004, 0.3, 1000),
        RequestStarted(path="w.bin", method="GET"),
        BytesTransferred(path="w.bin", bytes=1000),
        RequestFinished("w.bin", "GET", "206", 0.006, 0.2, 1000),
        FileVerified(path="w.bin", kind="md5"),
        FileVerified(path="w.bin", kind="size"),
        FileDone(path="w.bin", size=2000, seconds=0.7),
        FileFailed(path="x.bin", error=integrity_error("x.bin")),
        PullFinished(files=1, bytes=2000, seconds=1.5, ok=False),
    ]


# -- metrics -----------------------------------------------------------------------------


def test_counters_follow_the_events() -> None:
    observer = MetricsObserver(backend="boto3", bucket="models")
    for event in a_pull():
        observer(event)
    reg = observer.registry
    assert value(reg, "modelpull_bytes_downloaded_total") == 2000
    assert value(reg, "modelpull_files_downloaded_total") == 1
    assert value(reg, "modelpull_files_skipped_total") == 1
    assert value(reg, "modelpull_files_failed_total") == 1
    assert value(reg, "modelpull_integrity_failures_total") == 1
    assert value(reg, "modelpull_requests_total", method="GET", status="206") == 2
    assert value(reg, "modelpull_requests_total", method="GET", status="503") == 1
    assert value(reg, "modelpull_retries_total", reason="503") == 1
    assert value(reg, "modelpull_checksums_verified_total", kind="md5") == 1
    assert value(reg, "modelpull_checksums_verified_total", kind="size") == 1
    assert value(reg, "modelpull_inflight_requests") == 0
    assert value(reg, "modelpull_planned_files") == 3
    assert value(reg, "modelpull_planned_bytes") == 3000
    assert value(reg, "modelpull_pull_success") == 0
    assert value(reg, "modelpull_pull_duration_seconds") == 1.5
    assert (value(reg, "modelpull_pull_end_timestamp_seconds") or 0) > 1.6e9


def test_request_histogram_has_both_phases() -> None:
    observer = MetricsObserver(backend="boto3", bucket="models")
    for event in a_pull():
        observer(event)
    reg = observer.registry
    name = "modelpull_request_duration_seconds"
    # Three GETs ended; the failed one got no response, so no time to first byte.
    assert value(reg, f"{name}_count", method="GET", phase="total") == 3
    assert value(reg, f"{name}_count", method="GET", phase="first_byte") == 2
    assert value(reg, f"{name}_sum", method="GET", phase="first_byte") == pytest.approx(0.01)
    assert value(reg, f"{name}_bucket", method="GET", phase="first_byte", le="0.005") == 1
    assert value(reg, "modelpull_file_download_duration_seconds_count") == 1
    assert value(reg, "modelpull_file_download_duration_seconds_sum") == pytest.approx(0.7)


def test_inflight_gauge_moves_with_requests() -> None:
    observer = MetricsObserver(backend="boto3", bucket="models")
    observer(RequestStarted(path="a", method="GET"))
    observer(RequestStarted(path="", method="HEAD"))
    assert value(observer.registry, "modelpull_inflight_requests") == 2
    observer(RequestFinished("", "HEAD", "200", 0.01, 0.01, 0))
    assert value(observer.registry, "modelpull_inflight_requests") == 1


def test_every_series_exists_at_zero_before_any_event() -> None:
    # rate() misses the first increment of a series that appears with it.
    reg = MetricsObserver(backend="boto3", bucket="models").registry
    for name in (
        "modelpull_bytes_downloaded_total",
        "modelpull_bytes_discarded_total",
        "modelpull_bytes_resumed_total",
        "modelpull_files_downloaded_total",
        "modelpull_files_skipped_total",
        "modelpull_files_failed_total",
        "modelpull_integrity_failures_total",
        "modelpull_inflight_requests",
        "modelpull_file_download_duration_seconds_count",
    ):
        assert value(reg, name) == 0, name
    # The pull's outcome is unknown until it ends: absent, not a misleading 0.
    assert value(reg, "modelpull_pull_success") is None


def test_discarded_and_resumed_bytes() -> None:
    observer = MetricsObserver(backend="boto3", bucket="models")
    observer(FileResumed(path="w.bin", bytes=4096))
    observer(BytesTransferred(path="w.bin", bytes=5000))
    observer(BytesTransferred(path="w.bin", bytes=-5000))  # the file is fetched again
    observer(BytesTransferred(path="w.bin", bytes=5000))
    reg = observer.registry
    assert value(reg, "modelpull_bytes_downloaded_total") == 10000
    assert value(reg, "modelpull_bytes_discarded_total") == 5000
    assert value(reg, "modelpull_bytes_resumed_total") == 4096


def test_integrity_refetch_counts_as_integrity_failure_and_retry() -> None:
    observer = MetricsObserver(backend="boto3", bucket="models")
    observer(PartRetried(path="w.bin", reason="integrity", attempt=1, delay=0.0))
    reg = observer.registry
    assert value(reg, "modelpull_integrity_failures_total") == 1
    assert value(reg, "modelpull_retries_total", reason="integrity") == 1


def test_byte_counter_loses_nothing_across_threads() -> None:
    observer = MetricsObserver(backend="boto3", bucket="models")
    event = BytesTransferred(path="w.bin", bytes=3)
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(20_000):
            observer(event)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert value(observer.registry, "modelpull_bytes_downloaded_total") == 8 * 20_000 * 3


def test_two_pulls_in_one_process_do_not_collide() -> None:
    a = MetricsObserver(backend="boto3", bucket="models")
    b = MetricsObserver(backend="boto3", bucket="models")
    a(BytesTransferred(path="x", bytes=5))
    assert value(a.registry, "modelpull_bytes_downloaded_total") == 5
    assert value(b.registry, "modelpull_bytes_downloaded_total") == 0


def test_pulls_on_one_registry_add_up() -> None:
    shared = CollectorRegistry()
    for bucket in ("models", "models", "other"):
        observer = MetricsObserver(shared, backend="boto3", bucket=bucket)
        observer(BytesTransferred(path="x", bytes=5))
        observer(FileDone(path="x", size=5, seconds=0.1))
        observer(PullFinished(files=1, bytes=5, seconds=0.5, ok=True))
    assert value(shared, "modelpull_bytes_downloaded_total") == 10
    assert value(shared, "modelpull_files_downloaded_total") == 2
    assert value(shared, "modelpull_pull_success") == 1
    other = {"bucket": "other"}
    assert value(shared, "modelpull_bytes_downloaded_total", **other) == 5


def test_a_dropped_registry_is_forgotten() -> None:
    from modelpull.observe import metrics

    before = len(metrics._BY_REGISTRY)
    observer = MetricsObserver(backend="boto3", bucket="models")
    assert len(metrics._BY_REGISTRY) == before + 1
    del observer
    gc.collect()
    assert len(metrics._BY_REGISTRY) == before


def test_no_key_ever_becomes_a_label() -> None:
    observer = MetricsObserver(backend="boto3", bucket="models")
    for event in a_pull():
        observer(event)
    for family in observer.registry.collect():
        for sample in family.samples:
            assert "w.bin" not in sample.labels.values()
            assert set(sample.labels) <= {
                "backend",
                "bucket",
                "method",
                "status",
                "reason",
                "kind",
                "phase",
                "le",
            }


def test_textfile_parses_and_is_replaced_atomically(tmp_path: Path) -> None:
    observer = MetricsObserver(backend="boto3", bucket="models")
    for event in a_pull():
        observer(event)
    path = tmp_path / "modelpull.prom"
    path.write_text("stale")
    write_textfile(path, observer.registry)
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    assert families["modelpull_bytes_downloaded"].type == "counter"
    [sample] = [s for s in families["modelpull_bytes_downloaded"].samples]
    assert sample.value == 2000
    assert sample.labels == LABELS
    assert families["modelpull_request_duration_seconds"].type == "histogram"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["modelpull.prom"]  # no temp left


def test_textfile_into_a_missing_folder_is_a_destination_error(tmp_path: Path) -> None:
    registry = MetricsObserver(backend="boto3", bucket="models").registry
    with pytest.raises(DestinationError, match="cannot write metrics file"):
        write_textfile(tmp_path / "absent" / "m.prom", registry)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9100", ("0.0.0.0", 9100)),
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:8000", ("localhost", 8000)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "x", "70000", "-1", ":9100", "host:"])
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--metrics-port"):
        parse_listen(text)


def test_serve_scrape_close_frees_the_port() -> None:
    observer = MetricsObserver(backend="boto3", bucket="models")
    observer(BytesTransferred(path="w.bin", bytes=123))
    with serve(0, observer.registry, addr="127.0.0.1") as server:
        port = server.port
        with urllib.request.urlopen(server.url, timeout=5) as response:
            body = response.read().decode()
    assert 'modelpull_bytes_downloaded_total{backend="boto3",bucket="models"} 123.0' in body
    with pytest.raises(OSError):  # URLError: connection refused
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    # Closed means closed: a next pull in this process can serve on the same port.
    with serve(port, observer.registry, addr="127.0.0.1") as again:
        assert again.port == port


def test_serve_on_a_busy_port_is_a_usage_error() -> None:
    registry = MetricsObserver(backend="boto3", bucket="models").registry
    with (
        serve(0, registry, addr="127.0.0.1") as server,
        pytest.raises(UsageError, match="in use"),
    ):
        serve(server.port, registry, addr="127.0.0.1")


def test_export_metrics_writes_the_textfile_even_when_the_pull_fails(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    with (
        pytest.raises(RuntimeError),
        export_metrics(backend="boto3", bucket="models", textfile=path) as observer,
    ):
        observer(BytesTransferred(path="w.bin", bytes=42))
        observer(PullFinished(files=0, bytes=42, seconds=1.0, ok=False))
        raise RuntimeError("the pull failed")
    text = path.read_text()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["modelpull_bytes_downloaded_total"] == 42
    assert samples["modelpull_pull_success"] == 0


def test_export_metrics_checks_the_textfile_folder_first(tmp_path: Path) -> None:
    with (
        pytest.raises(UsageError, match="no such folder"),
        export_metrics(backend="boto3", bucket="b", textfile=tmp_path / "no" / "m.prom"),
    ):
        pass


def test_core_imports_without_prometheus_client() -> None:
    # None in sys.modules makes any import of the package fail, as if not installed.
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import importlib, modelpull, modelpull.cli, modelpull.observe.logs\n"
        "for name in ('modelpull.observe.metrics', 'modelpull.observe.export'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except modelpull.BackendUnavailableError as exc:\n"
        "        print('unavailable:', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "unavailable:" in out.stdout
    assert "pip install 'modelpull[metrics]'" in out.stdout
    assert out.stdout.count("unavailable:") == 2  # recording and exporting alike


# -- logs --------------------------------------------------------------------------------


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restore_logger")
def test_json_lines_carry_the_event_fields() -> None:
    stream = io.StringIO()
    setup_logging(2, False, "json", stream, environ={})
    observer = LogObserver()
    for event in a_pull():
        observer(event)
    lines = json_lines(stream)
    assert all(line["logger"] == "modelpull.events" for line in lines)
    by_event: dict[object, list[dict[str, object]]] = {}
    for line in lines:
        by_event.setdefault(line["event"], []).append(line)
    [done] = by_event["file_done"]
    assert done["level"] == "info"
    assert done["file"] == "w.bin"
    assert done["bytes"] == 2000
    assert done["seconds"] == 0.7
    assert done["mb_per_s"] == pytest.approx(2000 / 0.7 / 1e6, abs=1e-3)
    [retry] = by_event["retry"]
    assert retry["level"] == "warning"
    assert (retry["file"], retry["reason"], retry["attempt"], retry["delay"]) == (
        "w.bin",
        "503",
        1,
        0.1,
    )
    [failed] = by_event["file_failed"]
    assert failed["level"] == "error"
    assert failed["error"] == "IntegrityError: x.bin: md5 mismatch"
    [finished] = by_event["pull_finished"]
    assert (finished["level"], finished["ok"]) == ("error", False)
    assert len(by_event["request_finished"]) == 3
    assert {line["event"] for line in lines} >= {"pull_started", "file_skipped", "file_queued"}
    # Byte progress is the progress display's business, never a log line.
    assert "bytes_transferred" not in by_event
    ts = str(lines[0]["ts"])
    assert ts.endswith("Z") and "T" in ts


@pytest.mark.usefixtures("restore_logger")
@pytest.mark.parametrize(
    ("verbose", "quiet", "events"),
    [
        (0, True, {"file_failed", "pull_finished"}),
        (0, False, {"file_failed", "pull_finished", "retry"}),
        (1, False, {"file_failed", "pull_finished", "retry", "file_done", "file_skipped"}),
    ],
)
def test_verbosity_picks_the_events(verbose: int, quiet: bool, events: set[str]) -> None:
    stream = io.StringIO()
    setup_logging(verbose, quiet, "json", stream, environ={})
    observer = LogObserver()
    for event in a_pull():
        observer(event)
    seen = {line["event"] for line in json_lines(stream)}
    assert events <= seen
    assert "request_finished" not in seen  # DEBUG only


@pytest.mark.usefixtures("restore_logger")
def test_text_format_is_one_readable_line() -> None:
    stream = io.StringIO()
    setup_logging(1, False, "text", stream, environ={})
    LogObserver()(FileDone(path="w.bin", size=3 << 20, seconds=1.5))
    LogObserver()(PartRetried(path="", reason="SlowDown", attempt=2, delay=1.0))
    assert stream.getvalue().splitlines() == [
        "modelpull: INFO: done w.bin: 3.00 MiB in 1.50s (2.1 MB/s)",
        "modelpull: WARNING: retrying a request after SlowDown (attempt 2 failed; next in 1.0s)",
    ]


@pytest.mark.usefixtures("restore_logger")
def test_percent_in_a_file_name_is_not_a_format() -> None:
    stream = io.StringIO()
    setup_logging(1, False, "text", stream, environ={})
    LogObserver()(FileSkipped(path="100%s.bin", size=1))
    assert "skipped 100%s.bin" in stream.getvalue()


def test_bad_format_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--log-format"):
        setup_logging(0, False, "xml", io.StringIO())  # type: ignore[arg-type]


@pytest.mark.usefixtures("restore_logger")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_never_reach_a_line(fmt: str) -> None:
    env_secret = "tos-secret-from-the-environment"
    token = "FwoGZXIvYXdzEJr//////////wEaDN0token-from-env"
    stream = io.StringIO()
    setup_logging(
        2,
        False,
        fmt,  # type: ignore[arg-type]
        stream,
        environ={"TOS_SECRET_KEY": env_secret, "AWS_SESSION_TOKEN": token},
        secrets=["explicit-secret-value"],
    )
    log = logging.getLogger("modelpull.backends")  # a child: its records propagate
    log.warning("env %s and %s", env_secret, token)
    log.warning("explicit explicit-secret-value")
    log.warning("shaped like a key: %s.", AWS_LIKE_SECRET)
    log.warning('config {"aws_secret_access_key": "short", "X-Amz-Signature=abc123"}')
    log.info("an event", extra={"event": "x", "error": f"denied for {env_secret}"})
    try:
        raise RuntimeError(f"boom with {AWS_LIKE_SECRET}")
    except RuntimeError:
        log.exception("failed")
    out = stream.getvalue()
    for secret in (env_secret, token, "explicit-secret-value", AWS_LIKE_SECRET, "short", "abc123"):
        assert secret not in out, secret
    assert out.count(REDACTED) >= (8 if fmt == "json" else 7)  # text shows no extras
    if fmt == "json":
        assert len(json_lines(stream)) == 6


@pytest.mark.usefixtures("restore_logger")
def test_redaction_spares_digests_and_ordinary_words() -> None:
    stream = io.StringIO()
    setup_logging(0, False, "text", stream, environ={"AWS_SECRET_ACCESS_KEY": "abc"})
    sha1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    logging.getLogger("modelpull").warning(
        "etag %s for model-00001-of-00002.safetensors (abc is too short to redact)", sha1
    )
    assert stream.getvalue().strip() == (
        f"modelpull: WARNING: etag {sha1} for model-00001-of-00002.safetensors "
        "(abc is too short to redact)"
    )


def test_json_formatter_on_a_plain_record() -> None:
    record = logging.LogRecord("modelpull", logging.WARNING, __file__, 1, "hi %s", ("x",), None)
    data = json.loads(JsonFormatter().format(record))
    assert data["event"] == "log"
    assert data["message"] == "hi x"
    assert data["level"] == "warning"
