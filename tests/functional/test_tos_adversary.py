"""The second adversary's findings against the ``tos-sdk`` backend, on the TOS stand-in
(:mod:`tests.tosfront`) that ``tests/functional/test_tos.py`` uses, whose fixtures these
reuse."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import modelpull
from modelpull.backends.tos_sdk import TosSdkBackend
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
