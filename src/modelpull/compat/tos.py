"""Volcengine TOS: the TOS Python SDK's download knobs, mapped onto :class:`PullConfig`.

Endpoints and the ``TOS_*`` variables are not mapped here: :mod:`modelpull.uri` holds
TOS's two endpoint forms (native ``tos-<region>.volces.com`` for its SDK, S3
``tos-s3-<region>.volces.com`` for boto3) and :func:`modelpull.resolve.resolve` applies
the ``TOS_*`` variables, the endpoint mapping and TOS's virtual addressing, once, for
every ``tos://`` pull. Local stand-in servers need ``path`` addressing
(``--addressing-style path`` / ``MODELPULL_ADDRESSING_STYLE=path``).

For ``tos://`` URIs a setting is taken from, first to last: a CLI flag or Python
keyword, ``MODELPULL_*``, ``TOS_*``, then ``AWS_*`` and the rest of boto3's chain.
CRC-64 verification needs nothing here: the engine checks ``x-tos-hash-crc64ecma``
whenever a HEAD returns it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelpull.compat import CompatWarning
from modelpull.config import DEFAULT_CONCURRENCY, MAX_CONCURRENCY, MIN_PART_SIZE, PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import UsageError
from modelpull.resolve import TOS_ENV, credentials_from_env, resolve_config

# Re-exported for code that found them here: their home is modelpull.uri.
from modelpull.uri import (
    endpoint_for_region,
    region_from_endpoint,
    to_native_endpoint,
    to_s3_endpoint,
)

__all__ = [
    "SDK_DEFAULT_TASK_NUM",
    "TOS_ENV",
    "SdkSettings",
    "credentials_from_env",
    "endpoint_for_region",
    "from_sdk",
    "region_from_endpoint",
    "to_native_endpoint",
    "to_s3_endpoint",
]

# download_file's default: one part at a time. Only a value the caller passes is mapped;
# modelpull's own default applies otherwise.
SDK_DEFAULT_TASK_NUM = 1
# The smallest total rate PullConfig accepts (its token bucket needs a useful burst).
MIN_BANDWIDTH = 64 * 1024


# --- the TOS SDK's knobs -------------------------------------------------------------

# TosClientV2(...) and download_file(...) keywords with no modelpull equivalent, and
# what to do instead. Passing one with its SDK default (or None) is not worth a warning.
_NO_EQUIVALENT: Mapping[str, str] = {
    "auto_recognize_content_type": "it only sets Content-Type on uploads",
    "dns_cache_time": "the system resolver is used",
    "proxy_host": "set HTTPS_PROXY / HTTP_PROXY, which botocore honours",
    "proxy_port": "set HTTPS_PROXY / HTTP_PROXY, which botocore honours",
    "proxy_username": "put the user in HTTPS_PROXY (http://user:password@host:port)",
    "proxy_password": "put the password in HTTPS_PROXY (http://user:password@host:port)",
    "is_custom_domain": "the boto3 engine needs an endpoint that serves every bucket: "
    "use the region's endpoint",
    "high_latency_log_threshold": "per-request timings are engine events (RequestFinished)",
    "credentials_provider": "pass Credentials, set TOS_ACCESS_KEY/TOS_SECRET_KEY, or use "
    "boto3's chain",
    "disable_encoding_meta": "object metadata is not read",
    "except100_continue_threshold": "it applies to uploads only",
    "user_agent_product_name": "the User-Agent is botocore's",
    "user_agent_soft_name": "the User-Agent is botocore's",
    "user_agent_soft_version": "the User-Agent is botocore's",
    "user_agent_customized_key_values": "the User-Agent is botocore's",
    "control_endpoint": "no control-plane request is made",
    "follow_redirect_times": "redirects are not followed; set the bucket's region instead",
    "client_crt": "client certificates (mutual TLS) are not supported",
    "client_key": "client certificates (mutual TLS) are not supported",
    "data_transfer_listener": "pass observers= to modelpull.pull (BytesTransferred events)",
    "download_event_listener": "pass observers= to modelpull.pull (File* events)",
    "cancel_hook": "Ctrl-C or SIGTERM stop a pull and keep its state for resume",
    "version_id": "the latest version of each object is pulled",
    "if_match": "every GET already carries If-Match with the listed ETag",
    "if_modified_since": "conditional pulls are not supported",
    "if_none_match": "conditional pulls are not supported",
    "if_unmodified_since": "conditional pulls are not supported",
    "ssec_algorithm": "SSE-C encrypted objects are not supported",
    "ssec_key": "SSE-C encrypted objects are not supported",
    "ssec_key_md5": "SSE-C encrypted objects are not supported",
    "generic_input": "per-request headers and signing dates are not supported",
}
_SDK_DEFAULTS: Mapping[str, object] = {
    "auto_recognize_content_type": True,
    "dns_cache_time": 15,
    "is_custom_domain": False,
    "high_latency_log_threshold": 100,
    "except100_continue_threshold": 65536,
    "control_endpoint": "",
    "follow_redirect_times": 0,
}
_MAPPED = frozenset(
    {
        "ak",
        "sk",
        "security_token",
        "endpoint",
        "region",
        "part_size",
        "task_num",
        "enable_crc",
        "enable_checkpoint",
        "checkpoint_file",
        "rate_limiter",
        "traffic_limit",
        "max_retry_count",
        "connection_time",
        "socket_timeout",
        "request_timeout",
        "max_connections",
        "enable_verify_ssl",
        "ca_crt",
    }
)


@dataclass(frozen=True)
class SdkSettings:
    """What TOS SDK keywords became: the config, and credentials when they named some."""

    config: PullConfig
    credentials: Credentials | None


def _warn(message: str) -> None:
    # stacklevel 3: the caller of from_sdk, so the default filter shows each message once.
    warnings.warn(message, CompatWarning, stacklevel=3)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{name} must be a number, not {value!r}")
    # int() of infinity raises OverflowError and NaN passes every range check as False:
    # both, and integers beyond a float, are refused here rather than deep in a pull.
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise UsageError(f"{name} must be a finite number, not {value!r}")
    return number


def _rate_of(limiter: object) -> int:
    """Bytes per second of a ``tos.RateLimiter`` (its rate is not public) or a plain number."""
    if isinstance(limiter, int | float) and not isinstance(limiter, bool):
        return int(_number("rate_limiter", limiter))
    rate = getattr(limiter, "_rate", None)
    if isinstance(rate, int | float) and rate > 0:
        return int(_number("rate_limiter", rate))
    raise UsageError(
        f"rate_limiter {limiter!r}: expected tos.RateLimiter(rate, capacity) or bytes per second"
    )


def from_sdk(environ: Mapping[str, str] | None = None, **kwargs: Any) -> SdkSettings:
    """Map ``TosClientV2(...)`` and ``download_file(...)`` keywords onto a :class:`PullConfig`.

    Each keyword becomes what ``docs/tos-mapping.md`` says; one that cannot be honoured
    as given raises a :class:`~modelpull.compat.CompatWarning` and the nearest behaviour
    is used; an unknown keyword is a :class:`~modelpull.errors.UsageError` (a typo must
    not pass unnoticed). The rest comes from the environment, as
    :func:`modelpull.resolve.resolve_config` reads it for a ``tos://`` URI.

    >>> from_sdk(endpoint="tos-cn-beijing.volces.com", part_size=64 << 20, task_num=8)
    ... # doctest: +SKIP
    """
    unknown = sorted(set(kwargs) - _MAPPED - set(_NO_EQUIVALENT))
    if unknown:
        raise UsageError(f"unknown TOS SDK keyword(s): {', '.join(unknown)}")
    given = {name: value for name, value in kwargs.items() if value is not None}
    for name, why in _NO_EQUIVALENT.items():
        if name in given and given[name] != _SDK_DEFAULTS.get(name, object()):
            _warn(f"TOS SDK {name}={given[name]!r} has no modelpull equivalent: {why}")

    values: dict[str, Any] = {}
    if given.get("endpoint"):
        values["endpoint_url"] = str(given["endpoint"])
    if given.get("region"):
        values["region"] = str(given["region"])
    if "part_size" in given:
        part_size = int(_number("part_size", given["part_size"]))
        if part_size < MIN_PART_SIZE:
            _warn(f"TOS SDK part_size={part_size} is below modelpull's minimum; using 1MiB")
            part_size = MIN_PART_SIZE
        values["part_size"] = part_size
    concurrency: int | None = None
    if "task_num" in given:
        concurrency = int(_number("task_num", given["task_num"]))
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            clamped = min(max(concurrency, 1), MAX_CONCURRENCY)
            _warn(f"TOS SDK task_num={concurrency} is out of range; using {clamped}")
            concurrency = clamped
    if "max_connections" in given:
        # Each request in flight holds one connection, so a cap on connections is a cap
        # on requests in flight; botocore's pool is then sized from it.
        cap = max(1, int(_number("max_connections", given["max_connections"])))
        base = concurrency if concurrency is not None else DEFAULT_CONCURRENCY
        concurrency = min(base, cap, MAX_CONCURRENCY)
    if concurrency is not None:
        values["concurrency"] = concurrency
    if given.get("enable_crc") is False:
        values["verify"] = "off"
    if given.get("enable_checkpoint") is False:
        _warn(
            "TOS SDK enable_checkpoint=False is not honoured: modelpull always keeps resume "
            "state in DEST/.modelpull/ until a file is complete"
        )
    if given.get("checkpoint_file"):
        _warn(
            f"TOS SDK checkpoint_file={given['checkpoint_file']!r} is not used: resume state "
            "lives in DEST/.modelpull/incomplete/"
        )
    if "max_retry_count" in given:
        # The SDK counts retries after the first attempt; modelpull counts attempts.
        retries = max(0, int(_number("max_retry_count", given["max_retry_count"])))
        values["max_attempts"] = retries + 1
    # The SDK treats a non-positive timeout as "use the default"; so does this mapping.
    if _number("connection_time", given.get("connection_time", 0)) > 0:
        values["connect_timeout"] = float(given["connection_time"])
    if _number("socket_timeout", given.get("socket_timeout", 0)) > 0:
        values["read_timeout"] = float(given["socket_timeout"])
    elif _number("request_timeout", given.get("request_timeout", 0)) > 0:
        values["read_timeout"] = float(given["request_timeout"])  # the SDK's fallback too
    if given.get("enable_verify_ssl") is False:
        values["verify_ssl"] = False
    if given.get("ca_crt"):
        values["ca_bundle"] = str(given["ca_crt"])

    config = resolve_config("tos", overrides=values, environ=environ)
    bandwidth = _bandwidth(given, config.start_concurrency)
    if bandwidth is not None:
        config = dataclasses.replace(config, max_bandwidth=bandwidth)
    return SdkSettings(config=config, credentials=_sdk_credentials(given, environ))


def _bandwidth(given: Mapping[str, Any], concurrency: int) -> int | None:
    limits: list[int] = []
    if "rate_limiter" in given:
        limits.append(_rate_of(given["rate_limiter"]))
    if "traffic_limit" in given:
        # x-tos-traffic-limit is bits per second per connection, enforced by the server;
        # modelpull caps the whole pull, so the per-connection cap times the streams.
        per_connection = int(_number("traffic_limit", given["traffic_limit"])) // 8
        total = per_connection * concurrency
        _warn(
            f"TOS SDK traffic_limit={given['traffic_limit']} bit/s per connection becomes a "
            f"cap of {total} bytes/s on the whole pull ({concurrency} streams)"
        )
        limits.append(total)
    if not limits:
        return None
    rate = min(limits)
    if rate < MIN_BANDWIDTH:
        _warn(f"a bandwidth limit of {rate} bytes/s is below modelpull's minimum; using 64KiB/s")
        rate = MIN_BANDWIDTH
    return rate


def _sdk_credentials(
    given: Mapping[str, Any], environ: Mapping[str, str] | None
) -> Credentials | None:
    access, secret = str(given.get("ak") or ""), str(given.get("sk") or "")
    if access and secret:
        return Credentials(access, secret, str(given.get("security_token") or "") or None)
    if access or secret:
        raise UsageError("TOS SDK ak and sk go together: pass both or neither")
    return credentials_from_env(environ)
