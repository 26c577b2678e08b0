"""Volcengine TOS: endpoints, ``TOS_*`` variables and the TOS Python SDK's download knobs.

TOS speaks two protocols on two host names per region: its native one
(``tos-<region>.volces.com``, ``tos-<region>.ivolces.com`` inside Volcengine's network),
which only its own SDKs use, and S3 (``tos-s3-<region>.volces.com`` /
``tos-s3-<region>.ivolces.com``), which boto3 speaks. Deployments configured for the SDK
carry a native endpoint in ``TOS_ENDPOINT``; :func:`to_s3_endpoint` maps it so that the
same variables work with the boto3 engine, and :func:`to_native_endpoint` goes back for
the ``tos-sdk`` backend. TOS's S3 endpoints serve virtual-hosted requests, so
``addressing_style="auto"`` becomes ``"virtual"`` for TOS; local stand-in servers need
``path`` (``--addressing-style path`` / ``MODELPULL_ADDRESSING_STYLE=path``).

For ``tos://`` URIs a setting is taken from, first to last: a CLI flag or Python
keyword, ``MODELPULL_*``, ``TOS_*``, then ``AWS_*`` and the rest of boto3's chain.
CRC-64 verification needs nothing here: the engine checks ``x-tos-hash-crc64ecma``
whenever a HEAD returns it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from modelpull.compat import CompatWarning
from modelpull.config import MAX_CONCURRENCY, MIN_PART_SIZE, PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import UsageError
from modelpull.uri import normalize_endpoint

__all__ = [
    "SDK_DEFAULT_TASK_NUM",
    "TOS_ENV",
    "SdkSettings",
    "adapt_config",
    "config_for_tos",
    "credentials_from_env",
    "endpoint_for_region",
    "from_sdk",
    "region_from_endpoint",
    "resolve_credentials",
    "to_native_endpoint",
    "to_s3_endpoint",
]

TOS_ENV = ("TOS_ACCESS_KEY", "TOS_SECRET_KEY", "TOS_SECURITY_TOKEN", "TOS_ENDPOINT", "TOS_REGION")
# download_file's default: one part at a time. Only a value the caller passes is mapped;
# modelpull's own default applies otherwise.
SDK_DEFAULT_TASK_NUM = 1
# The smallest total rate PullConfig accepts (its token bucket needs a useful burst).
MIN_BANDWIDTH = 64 * 1024

# Region names are lower-case words and digits joined by dashes: cn-beijing,
# cn-beijing2, ap-southeast-1. "control" hosts are TOS's control plane, not data.
_S3_HOST = re.compile(r"^tos-s3-(?P<region>[a-z0-9]+(?:-[a-z0-9]+)*)\.(?P<net>i?volces)\.com$")
_NATIVE_HOST = re.compile(
    r"^tos-(?!s3-|control-)(?P<region>[a-z0-9]+(?:-[a-z0-9]+)*)\.(?P<net>i?volces)\.com$"
)


def _with_host(url: str, host: str) -> str:
    parts = urlsplit(url)
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def to_s3_endpoint(url: str) -> str:
    """``url`` with a native TOS host replaced by its S3 twin; any other URL as it is.

    ``tos-cn-beijing.volces.com`` becomes ``https://tos-s3-cn-beijing.volces.com`` and
    ``http://tos-cn-beijing.ivolces.com`` becomes ``http://tos-s3-cn-beijing.ivolces.com``.
    The result is normalised like any endpoint (``https://`` added when missing).
    """
    text = normalize_endpoint(url)
    host = (urlsplit(text).hostname or "").lower()
    match = _NATIVE_HOST.match(host)
    if match is None:
        return text
    return _with_host(text, f"tos-s3-{match['region']}.{match['net']}.com")


def to_native_endpoint(url: str) -> str:
    """The inverse of :func:`to_s3_endpoint`, for the TOS SDK (which refuses S3 hosts)."""
    text = normalize_endpoint(url)
    host = (urlsplit(text).hostname or "").lower()
    match = _S3_HOST.match(host)
    if match is None:
        return text
    return _with_host(text, f"tos-{match['region']}.{match['net']}.com")


def region_from_endpoint(url: str) -> str | None:
    """The region a TOS endpoint (native or S3) names, or ``None`` for any other host."""
    host = (urlsplit(normalize_endpoint(url)).hostname or "").lower()
    match = _S3_HOST.match(host) or _NATIVE_HOST.match(host)
    return match["region"] if match else None


def endpoint_for_region(region: str) -> str:
    """The public S3 endpoint of a TOS region, as the SDK derives its own from a region."""
    if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", region):
        raise UsageError(f"invalid TOS region {region!r}: expected a name such as cn-beijing")
    return f"https://tos-s3-{region}.volces.com"


def credentials_from_env(environ: Mapping[str, str] | None = None) -> Credentials | None:
    """``TOS_ACCESS_KEY``/``TOS_SECRET_KEY`` (and ``TOS_SECURITY_TOKEN``), or ``None``.

    ``None`` leaves credentials to boto3's chain. One key without the other is refused
    rather than half-used.
    """
    env = os.environ if environ is None else environ
    access, secret = env.get("TOS_ACCESS_KEY", ""), env.get("TOS_SECRET_KEY", "")
    if not access and not secret:
        return None
    if not access or not secret:
        missing = "TOS_SECRET_KEY" if access else "TOS_ACCESS_KEY"
        raise UsageError(f"{missing} is not set: TOS_ACCESS_KEY and TOS_SECRET_KEY go together")
    return Credentials(access, secret, env.get("TOS_SECURITY_TOKEN") or None)


def resolve_credentials(
    config: PullConfig,
    credentials: Credentials | None = None,
    environ: Mapping[str, str] | None = None,
) -> Credentials | None:
    """The credentials for a ``tos://`` pull: explicit ones, else ``TOS_*``, else boto3's chain.

    A named profile (``--profile``) is a request for boto3's chain, so ``TOS_*`` keys
    do not override it.
    """
    if credentials is not None or config.profile is not None:
        return credentials
    return credentials_from_env(environ)


def adapt_config(config: PullConfig, environ: Mapping[str, str] | None = None) -> PullConfig:
    """``config`` made ready for TOS: endpoint, region and addressing filled in or mapped.

    ``TOS_ENDPOINT``/``TOS_REGION`` fill only what ``config`` leaves unset (a config
    passed in is explicit); a native endpoint is mapped to S3; with no endpoint at all
    the region's public one is used; ``auto`` addressing becomes ``virtual``.
    """
    env = os.environ if environ is None else environ
    endpoint = config.endpoint_url or env.get("TOS_ENDPOINT") or None
    region = config.region or env.get("TOS_REGION") or None
    if endpoint is None and region is None:
        raise UsageError(
            "a tos:// URI needs an endpoint: set TOS_ENDPOINT (e.g. tos-cn-beijing.volces.com) "
            "or TOS_REGION, or pass --endpoint-url"
        )
    endpoint = to_s3_endpoint(endpoint) if endpoint else endpoint_for_region(str(region))
    region = region or region_from_endpoint(endpoint)
    style = "virtual" if config.addressing_style == "auto" else config.addressing_style
    return dataclasses.replace(config, endpoint_url=endpoint, region=region, addressing_style=style)


def config_for_tos(environ: Mapping[str, str] | None = None, **overrides: Any) -> PullConfig:
    """:meth:`PullConfig.from_env` for ``tos://`` URIs: ``TOS_*`` rank above ``AWS_*``.

    ``overrides`` (those not ``None``) win over everything, as CLI flags do;
    ``MODELPULL_ENDPOINT_URL``/``MODELPULL_REGION`` win over ``TOS_ENDPOINT``/``TOS_REGION``,
    which win over ``AWS_ENDPOINT_URL``/``AWS_REGION``. Then :func:`adapt_config` applies.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if "MODELPULL_ENDPOINT_URL" not in env and env.get("TOS_ENDPOINT"):
        values["endpoint_url"] = env["TOS_ENDPOINT"]
    if "MODELPULL_REGION" not in env and env.get("TOS_REGION"):
        values["region"] = env["TOS_REGION"]
    values.update({name: value for name, value in overrides.items() if value is not None})
    return adapt_config(PullConfig.from_env(env, **values), env)


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
    return float(value)


def _rate_of(limiter: object) -> int:
    """Bytes per second of a ``tos.RateLimiter`` (its rate is not public) or a plain number."""
    if isinstance(limiter, int | float) and not isinstance(limiter, bool):
        return int(limiter)
    rate = getattr(limiter, "_rate", None)
    if isinstance(rate, int | float) and rate > 0:
        return int(rate)
    raise UsageError(
        f"rate_limiter {limiter!r}: expected tos.RateLimiter(rate, capacity) or bytes per second"
    )


def from_sdk(environ: Mapping[str, str] | None = None, **kwargs: Any) -> SdkSettings:
    """Map ``TosClientV2(...)`` and ``download_file(...)`` keywords onto a :class:`PullConfig`.

    Each keyword becomes what ``docs/tos-mapping.md`` says; one that cannot be honoured
    as given raises a :class:`~modelpull.compat.CompatWarning` and the nearest behaviour
    is used; an unknown keyword is a :class:`~modelpull.errors.UsageError` (a typo must
    not pass unnoticed). The rest comes from the environment as in :func:`config_for_tos`.

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
        base = concurrency if concurrency is not None else PullConfig().concurrency
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

    config = config_for_tos(environ, **values)
    bandwidth = _bandwidth(given, config.concurrency)
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
