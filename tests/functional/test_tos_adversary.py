"""The second adversary's findings against the ``tos-sdk`` backend, on the TOS stand-in
(:mod:`tests.tosfront`) that ``tests/functional/test_tos.py`` uses, whose fixtures these
reuse."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

import modelpull
from modelpull.backends.tos_sdk import TosSdkBackend
from tests.faults.proxy import FaultProxy, Rule, set_headers
from tests.functional import test_tos
from tests.functional.test_tos import FILES, WEIGHTS, sdk_config
from tests.helpers import tree
from tests.tosfront import TosFront

# test_tos's fixtures: the TOS stand-in, reset after each test, and a backend over it.
stand_in = test_tos.stand_in
front = test_tos.front
sdk_backend = test_tos.sdk_backend


@pytest.mark.parametrize("value", ["garbage", "", "0x10"])
def test_a_crc64_header_that_is_not_a_number_is_ignored_as_on_boto3(
    stand_in: tuple[str, TosFront],
    front: TosFront,
    sdk_backend: TosSdkBackend,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    """The engine ignores a malformed checksum the store sends (with a warning) and checks
    the others; the boto3 backend does so for this very header. The TOS SDK parses it
    with ``int()`` while building its answer, and the pull failed with exit 10:
    "unexpected ValueError: invalid literal for int() with base 10: 'garbage'"."""
    front.crc[f"models/llama/{WEIGHTS}"] = value
    with caplog.at_level(logging.WARNING, logger="modelpull"):
        result = modelpull.pull(
            f"tos://{stand_in[0]}/models/llama/",
            tmp_path / "out",
            config=sdk_config(front),
            backend=sdk_backend,
        )
    assert tree(tmp_path / "out") == FILES
    weights = next(f for f in result.files if f.path == WEIGHTS)
    assert weights.verified == ("size", "md5")  # the ETag still checks the bytes
    assert f"ignoring malformed crc64ecma checksum {value!r}" in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        {"Expires": "0"},  # what CDNs send for "already expired"
        {"Last-Modified": "yesterday"},
        {"x-tos-last-modified-ns": "soon"},
        {"x-tos-tagging-count": "many"},
    ],
)
def test_a_garbled_header_modelpull_never_reads_does_not_fail_the_pull(
    stand_in: tuple[str, TosFront], front: TosFront, tmp_path: Path, headers: dict[str, str]
) -> None:
    """The SDK parses these while it builds every HEAD's and GET's answer: one it cannot
    parse failed the pull with exit 10 ("unexpected ValueError: time data '0' does not
    match format ..."). The proxy, in front of the stand-in, plays a CDN."""
    with FaultProxy(front.url) as proxy:
        rule = proxy.add_rule(Rule(set_headers(headers), path=WEIGHTS, times=None))
        config = replace(sdk_config(front), endpoint_url=proxy.url)
        backend = TosSdkBackend(config)
        try:
            result = modelpull.pull(
                f"tos://{stand_in[0]}/models/llama/",
                tmp_path / "out",
                config=config,
                backend=backend,
            )
        finally:
            backend.close()
        assert proxy.fired(rule) >= 2  # its HEAD and its GETs
    assert tree(tmp_path / "out") == FILES
    assert result.files_fetched == len(FILES)
