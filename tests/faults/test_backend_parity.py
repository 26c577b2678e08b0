"""The two backends fail alike: the same error class, exit code, retry reason and wording
for the same fault, whatever their SDK raised (the fault matrix's parity findings).

Each test runs once per backend, the same fault injected by a FaultProxy in front of the
store that backend speaks to: ``boto3`` in front of ``rclone serve s3``, ``tos-sdk`` in
front of the TOS stand-in (``tests/tosfront.py``) over the same bucket's folder.
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import modelpull
from modelpull.cli.exits import exit_code
from modelpull.demo.rclone import RcloneS3Server
from modelpull.resolve import resolve
from tests.helpers import S3Store, tree
from tests.tosfront import tos_stand_in

from .proxy import FaultProxy, Rule, reset_after, set_headers, stall, status, truncate_after

MiB = 1 << 20
DATA = os.urandom(2 * MiB + 123)
KEY = "m/w.bin"
BACKENDS = ("boto3", "tos-sdk")


@dataclass(frozen=True)
class Stores:
    bucket: str
    credentials: Any
    upstream: dict[str, str]  # backend -> the store it speaks to


@pytest.fixture(scope="module")
def stores(rclone_server: RcloneS3Server, rclone_store: S3Store) -> Iterator[Stores]:
    bucket = rclone_store.new_bucket("parity")
    rclone_store.put(bucket, KEY, DATA)
    with tos_stand_in(rclone_server.root / bucket) as front:
        upstream = {"boto3": rclone_store.endpoint_url, "tos-sdk": front.url}
        yield Stores(bucket, rclone_store.credentials, upstream)


@dataclass
class Run:
    result: modelpull.PullResult | None
    error: modelpull.ModelPullError | None
    proxy: FaultProxy

    @property
    def gets(self) -> int:
        return sum(1 for r in self.proxy.log if r.method == "GET" and r.path.endswith(KEY))


def pull(stores: Stores, backend: str, dest: Path, rules: list[Rule], **settings: str) -> Run:
    """Pull ``tos://BUCKET/m/w.bin`` with ``backend`` through a proxy armed with ``rules``;
    ``settings`` are ``MODELPULL_*`` variables (``READ_TIMEOUT="0.5"``)."""
    with FaultProxy(stores.upstream[backend]) as proxy:
        for rule in rules:
            proxy.add_rule(rule)
        env = {
            "TOS_ACCESS_KEY": stores.credentials.access_key,
            "TOS_SECRET_KEY": stores.credentials.secret_key,
            "TOS_ENDPOINT": proxy.url,
            "TOS_REGION": "cn-beijing",
            "MODELPULL_ADDRESSING_STYLE": "path",
            "MODELPULL_BACKEND": backend,
            **{f"MODELPULL_{name}": value for name, value in settings.items()},
        }
        try:
            with resolve(f"tos://{stores.bucket}/{KEY}", environ=env) as target:
                return Run(modelpull.pull(target, dest), None, proxy)
        except modelpull.ModelPullError as exc:
            return Run(None, exc, proxy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_short_body_is_short_body_on_both(stores: Stores, backend: str, tmp_path: Path) -> None:
    # requests reports it as a ChunkedEncodingError, as it does a reset: told apart by
    # the IncompleteRead under it.
    run = pull(stores, backend, tmp_path / "w.bin", [Rule(truncate_after(MiB), method="GET")])
    assert run.result is not None, run.error
    assert run.result.retries == {"short_body": 1}
    assert (tmp_path / "w.bin").read_bytes() == DATA


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_short_body_is_worded_alike_on_both(stores: Stores, backend: str, tmp_path: Path) -> None:
    rules = [Rule(truncate_after(MiB), method="GET", times=None)]
    run = pull(stores, backend, tmp_path / "w.bin", rules, MAX_ATTEMPTS="1")
    assert isinstance(run.error, modelpull.TransientStoreError)
    assert run.error.reason == "short_body"
    # The bytes still missing: at most the object's less the MiB that came.
    found = re.search(r"body ended (\d+) bytes early", str(run.error))
    assert found is not None, str(run.error)
    assert len(DATA) - MiB <= int(found[1]) <= len(DATA)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_read_timeout_in_a_body_is_timeout_on_both(
    stores: Stores, backend: str, tmp_path: Path
) -> None:
    # The watchdog off (SPEED_LIMIT=0), so the socket's read timeout is what fires:
    # requests wraps it in a ConnectionError.
    rules = [Rule(stall(1000), method="GET")]
    run = pull(stores, backend, tmp_path / "w.bin", rules, READ_TIMEOUT="0.5", SPEED_LIMIT="0")
    assert run.result is not None, run.error
    assert run.result.retries == {"timeout": 1}
    assert (tmp_path / "w.bin").read_bytes() == DATA


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reset_names_the_os_error_on_both(stores: Stores, backend: str, tmp_path: Path) -> None:
    # Resets before any byte: attempts that move nothing are what the budget counts.
    rules = [Rule(reset_after(0), method="GET", times=None)]
    run = pull(stores, backend, tmp_path / "w.bin", rules, MAX_ATTEMPTS="2")
    assert isinstance(run.error, modelpull.RetriesExhaustedError)
    assert (run.error.reason, exit_code(run.error)) == ("reset", 10)
    assert "connection broken (ConnectionResetError)" in str(run.error)
    assert run.gets == 2
    assert tree(tmp_path) == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_skewed_clock_is_told_on_both_even_on_a_head(
    stores: Stores, backend: str, tmp_path: Path
) -> None:
    # A HEAD's 403 has no body, so no code: the store's Date, an hour off, tells it.
    store_time = email.utils.formatdate(time.time() + 3600, usegmt=True)
    rules = [
        Rule(set_headers({"Date": store_time}), times=None),
        Rule(status(403, "RequestTimeTooSkewed", dialect=dialect(backend)), times=None),
    ]
    run = pull(stores, backend, tmp_path / "w.bin", rules)
    assert isinstance(run.error, modelpull.AccessDeniedError)
    assert exit_code(run.error) == 4
    assert "differ by 60 min" in str(run.error)
    assert "synchronise it (NTP)" in str(run.error)
    assert "check the credentials" not in str(run.error)
    assert len(run.proxy.log) == 1  # not retried: a clock stays off


@pytest.mark.parametrize("backend", BACKENDS)
def test_request_time_too_skewed_is_not_retried_on_both(
    stores: Stores, backend: str, tmp_path: Path
) -> None:
    rule = Rule(status(403, "RequestTimeTooSkewed", dialect=dialect(backend)), method="GET")
    run = pull(stores, backend, tmp_path / "w.bin", [rule])
    assert isinstance(run.error, modelpull.AccessDeniedError)
    assert run.error.code == "RequestTimeTooSkewed"
    assert "RequestTimeTooSkewed" in str(run.error)
    assert "synchronise it (NTP)" in str(run.error)
    assert run.gets == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_403_within_the_allowed_skew_is_about_credentials(
    stores: Stores, backend: str, tmp_path: Path
) -> None:
    store_time = email.utils.formatdate(time.time() + 600, usegmt=True)  # 10 min: allowed
    rules = [
        Rule(set_headers({"Date": store_time}), times=None),
        Rule(status(403, "AccessDenied", dialect=dialect(backend)), times=None),
    ]
    run = pull(stores, backend, tmp_path / "w.bin", rules)
    assert isinstance(run.error, modelpull.AccessDeniedError)
    assert "check the credentials" in str(run.error)


def dialect(backend: str) -> Any:
    return "tos" if backend == "tos-sdk" else "s3"
