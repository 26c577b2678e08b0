"""The shared classification (``modelpull.backends.errors``): what both backends agree on.

The same faults through real servers, per backend: ``tests/faults/test_backend_parity.py``.
"""

from __future__ import annotations

import email.utils
import http.client
import time

import pytest
import requests.exceptions as rexc
import urllib3.exceptions as uexc

from modelpull import errors
from modelpull.backends.errors import (
    MAX_CLOCK_SKEW,
    S3_NAMES,
    TRANSIENT_CODES,
    Site,
    clock_skew,
    fault_error,
    store_error,
)
from modelpull.retry import is_retryable

SITE = Site("b", "k", S3_NAMES)


def date(offset: float) -> dict[str, str]:
    return {"Date": email.utils.formatdate(time.time() + offset, usegmt=True)}


def answer(status: int, code: str | None, headers: dict[str, str]) -> errors.StoreError:
    return store_error(
        status=status, code=code, message=None, request_id="r-1", headers=headers, site=SITE
    )


def test_clock_skew_reads_the_date_header() -> None:
    assert clock_skew(date(3600)) == pytest.approx(3600, abs=5)
    assert clock_skew({"date": email.utils.formatdate(time.time() - 600, usegmt=True)}) == (
        pytest.approx(-600, abs=5)
    )
    assert clock_skew({}) is None
    assert clock_skew(None) is None
    assert clock_skew({"Date": "not a date"}) is None


@pytest.mark.parametrize("code", [None, "403"])  # a HEAD: no body, or botocore's "403"
def test_a_codeless_403_from_a_skewed_store_is_the_clocks_fault(code: str | None) -> None:
    error = answer(403, code, date(-2 * MAX_CLOCK_SKEW))
    assert isinstance(error, errors.AccessDeniedError)
    assert "differ by 30 min" in str(error)
    assert "check the credentials" not in str(error)
    assert (error.status, error.code) == (403, "403")  # what the store said, unchanged


def test_a_403_within_the_allowed_skew_or_with_a_code_is_the_credentials() -> None:
    assert "check the credentials" in str(answer(403, None, date(MAX_CLOCK_SKEW - 60)))
    assert "check the credentials" in str(answer(403, "AccessDenied", date(3600)))


def test_request_time_too_skewed_names_the_clock_and_is_not_retried() -> None:
    assert "RequestTimeTooSkewed" not in TRANSIENT_CODES
    error = answer(403, "RequestTimeTooSkewed", {})
    assert isinstance(error, errors.AccessDeniedError)
    assert "(RequestTimeTooSkewed)" in str(error)
    assert "synchronise it (NTP)" in str(error)
    assert not is_retryable(error)


def broken_body(cause: BaseException) -> rexc.ChunkedEncodingError:
    return rexc.ChunkedEncodingError(uexc.ProtocolError(f"Connection broken: {cause!r}", cause))


def read_timeout() -> rexc.ConnectionError:
    # urllib3 raises its ReadTimeoutError "from" the socket's timeout.
    inner = uexc.ReadTimeoutError(None, None, "Read timed out.")  # type: ignore[arg-type]
    inner.__cause__ = TimeoutError("timed out")
    return rexc.ConnectionError(inner)


@pytest.mark.parametrize(
    ("exc", "reason", "named"),
    [
        (broken_body(uexc.IncompleteRead(10, 20)), "short_body", "body ended early"),
        (broken_body(http.client.IncompleteRead(b"x", 5)), "short_body", "body ended early"),
        (broken_body(ConnectionResetError(104, "reset")), "reset", "(ConnectionResetError)"),
        (ConnectionResetError(104, "reset"), "reset", "(ConnectionResetError)"),
        (read_timeout(), "timeout", "read timed out"),
    ],
)
def test_a_broken_body_is_told_by_what_broke_it(
    exc: BaseException, reason: str, named: str
) -> None:
    error = fault_error("reset", exc, SITE)
    assert isinstance(error, errors.TransientStoreError)
    assert error.reason == reason
    assert named in str(error)


def test_other_faults_are_not_refined() -> None:
    # A refused connection wraps no body: its kind stands, whatever it wraps.
    error = fault_error("connect", rexc.ConnectionError(TimeoutError()), SITE)
    assert isinstance(error, errors.EndpointError)
    assert error.reason == "connect"
