"""The faults of the matrix: what the store (or the network) does wrong, and how the fault
proxy (``tests/faults/proxy.py``) is told to do it.

Each fault runs in one or two *variants*:

- ``once``: the first matching request only, then the store behaves: a blip. Does the
  path survive it, and how long does it take?
- ``always``: every matching request, a store that keeps failing. How many attempts
  reach the server, how long until the path gives up, and with what error?

Faults a retry cannot cure (403, 404, a changed object, a certificate nobody trusts)
run ``always`` only. Requests are matched by the object's path as the store sees it,
``GET`` only where the fault lives in a body or a part's answer (the ``HEAD`` that
starts every download passes), every request where the store refuses the caller (403)
or lacks the bucket. Errors are worded in each store's dialect: S3's XML with
``x-amz-request-id``, or TOS's JSON with ``x-tos-request-id``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tests.faults.proxy import (
    Action,
    Dialect,
    Rule,
    flip_byte,
    hook,
    if_match,
    reset_after,
    set_headers,
    stall,
    status,
    trickle,
    truncate_after,
)

__all__ = [
    "FAULTS",
    "RETRY_AFTER_SECONDS",
    "TRICKLE_SECONDS",
    "Fault",
    "Variant",
    "Where",
    "fault_named",
]

Variant = Literal["once", "always"]
# How a cell reaches its store: through its own fault proxy, or to an endpoint that is
# broken before HTTP starts (nothing listening; a certificate no client trusts).
Endpoint = Literal["proxy", "refused", "tls"]

MiB = 1 << 20
RETRY_AFTER_SECONDS = 3
SKEW_SECONDS = 3600
TRICKLE_SECONDS = 2.0


@dataclass(frozen=True)
class Where:
    """What a fault needs to know of its cell to arm the proxy."""

    dialect: Dialect
    path: str  # a regex matching the object's path as the store sees it
    crc64: str  # the CRC-64/XZ the store publishes for the object
    change: Callable[[], None]  # replaces the object with another of the same size


RuleMaker = Callable[[Where, Variant], list[Rule]]


def _times(variant: Variant) -> int | None:
    return 1 if variant == "once" else None


def _on_get(action: Action) -> RuleMaker:
    """``action`` on the object's GETs."""

    def rules(where: Where, variant: Variant) -> list[Rule]:
        return [Rule(action, method="GET", path=where.path, times=_times(variant))]

    return rules


def _answer(
    code: int,
    error: str,
    scope: Literal["get", "object", "all"] = "get",
    retry_after: int | None = None,
) -> RuleMaker:
    """The store answers ``code`` / ``error`` to the object's GETs, to every request for
    the object (``HEAD`` too), or to every request at all (listings too)."""

    def rules(where: Where, variant: Variant) -> list[Rule]:
        action = status(code, error, retry_after, dialect=where.dialect)
        method = "GET" if scope == "get" else None
        path = None if scope == "all" else where.path
        return [Rule(action, method=method, path=path, times=_times(variant))]

    return rules


def _skewed(where: Where, variant: Variant) -> list[Rule]:
    # The store's clock (its Date) an hour from the caller's: what the caller of a skewed
    # machine sees, also on a HEAD, whose 403 has no body to say RequestTimeTooSkewed.
    store_time = email.utils.formatdate(time.time() + SKEW_SECONDS, usegmt=True)
    return [
        Rule(set_headers({"Date": store_time}), times=None),
        *_answer(403, "RequestTimeTooSkewed", "all")(where, variant),
    ]


def _changed(where: Where, variant: Variant) -> list[Rule]:
    # The object is replaced as its first GET arrives (after the downloader's HEAD),
    # and the store honours If-Match from then on, as S3 and TOS do.
    return [
        Rule(hook(where.change), method="GET", path=where.path, times=1),
        Rule(if_match(where.dialect), method="GET", path=where.path, times=None),
    ]


def _wrong_crc(where: Where, variant: Variant) -> list[Rule]:
    wrong = str((int(where.crc64) + 1) % (1 << 64))
    header = set_headers({"x-tos-hash-crc64ecma": wrong})
    return [Rule(header, path=where.path, times=None)]


def _nothing(where: Where, variant: Variant) -> list[Rule]:
    return []


@dataclass(frozen=True)
class Fault:
    """One row of the matrix (or two: one per variant)."""

    id: str
    title: str
    rules: RuleMaker = _nothing
    variants: tuple[Variant, ...] = ("always",)
    endpoint: Endpoint = "proxy"
    note: str = ""


BOTH: tuple[Variant, ...] = ("once", "always")

FAULTS: tuple[Fault, ...] = (
    Fault("none", "no fault (baseline)", note="the harness itself: every tool must succeed"),
    Fault("refused", "connection refused", endpoint="refused", note="nothing listens"),
    Fault(
        "tls-untrusted",
        "TLS certificate not trusted",
        endpoint="tls",
        note="a self-signed certificate; attempts are TLS handshakes",
    ),
    Fault(
        "reset",
        "connection reset mid-body",
        _on_get(reset_after(1 * MiB)),
        BOTH,
        note="RST after 1 MiB of a GET's body",
    ),
    Fault(
        "short-body",
        "body ends early (correct Content-Length)",
        _on_get(truncate_after(1 * MiB)),
        BOTH,
        note="FIN after 1 MiB of a body that promised more",
    ),
    Fault(
        "read-stall",
        "read stall (headers, then nothing)",
        _on_get(stall(0)),
        BOTH,
        note="held until the client hangs up",
    ),
    Fault(
        "trickle",
        f"trickle (1 byte every {TRICKLE_SECONDS:g} s)",
        _on_get(trickle(TRICKLE_SECONDS)),
        BOTH,
        note="never silent for a read timeout, never getting anywhere",
    ),
    Fault("500", "500 InternalError", _answer(500, "InternalError"), BOTH),
    Fault("502", "502 BadGateway", _answer(502, "BadGateway"), BOTH),
    Fault("503-slowdown", "503 SlowDown", _answer(503, "SlowDown"), BOTH),
    Fault(
        "503-retry-after",
        f"503 with Retry-After: {RETRY_AFTER_SECONDS}",
        _answer(503, "ServiceUnavailable", retry_after=RETRY_AFTER_SECONDS),
        BOTH,
        note=f"a path that honours it waits {RETRY_AFTER_SECONDS} s before each retry",
    ),
    Fault("429", "429 TooManyRequests", _answer(429, "TooManyRequests"), BOTH),
    Fault("403-denied", "403 AccessDenied", _answer(403, "AccessDenied", "all")),
    Fault(
        "403-signature", "403 SignatureDoesNotMatch", _answer(403, "SignatureDoesNotMatch", "all")
    ),
    Fault(
        "403-skewed",
        "403 RequestTimeTooSkewed",
        _skewed,
        note="the caller's clock an hour off the store's `Date`",
    ),
    Fault("404-key", "404 NoSuchKey", _answer(404, "NoSuchKey", "object")),
    Fault("404-bucket", "404 NoSuchBucket", _answer(404, "NoSuchBucket", "all")),
    Fault(
        "412-changed",
        "412 after the object changes",
        _changed,
        note="replaced (same size) as its first GET arrives; If-Match honoured",
    ),
    Fault("416", "416 InvalidRange", _answer(416, "InvalidRange")),
    Fault(
        "flip",
        "a flipped byte, CRC-64 published",
        _on_get(flip_byte(1000)),
        BOTH,
        note="byte 1000 of a GET's body XORed; HEAD publishes the right CRC-64",
    ),
    Fault(
        "wrong-crc",
        "a wrong CRC-64 header",
        _wrong_crc,
        note="HEAD (and GET) publish a CRC-64 the bytes never had",
    ),
)


def fault_named(fault_id: str) -> Fault:
    """The fault with this id; ``KeyError`` naming the known ones otherwise."""
    for fault in FAULTS:
        if fault.id == fault_id:
            return fault
    raise KeyError(f"no fault {fault_id!r}; known: {', '.join(f.id for f in FAULTS)}")
