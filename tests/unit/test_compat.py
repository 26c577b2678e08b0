"""The TOS and AIBrix mappings as pure logic: endpoints, precedence, knobs, layout, errors."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests.exceptions as rexc
import tos
import urllib3.exceptions as uexc
from tos.exceptions import TosClientError, TosServerError

from modelpull import errors
from modelpull.backends.errors import TOS_NAMES, Site
from modelpull.backends.tos_sdk import translate
from modelpull.compat import CompatWarning
from modelpull.compat import aibrix as ab
from modelpull.compat import tos as tc
from modelpull.config import DEFAULT_CONCURRENCY, PullConfig
from modelpull.credentials import Credentials
from modelpull.plan import matches
from modelpull.uri import parse_uri

MiB = 1 << 20
DOCS = Path(__file__).parents[2] / "docs" / "tos-mapping.md"
TOS_ENV = {"TOS_ENDPOINT": "tos-cn-beijing.volces.com"}


# --- TOS SDK keywords ------------------------------------------------------------------


def sdk(**kwargs: Any) -> tc.SdkSettings:
    return tc.from_sdk(TOS_ENV, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        (
            {"endpoint": "tos-cn-shanghai.volces.com"},
            "endpoint_url",
            "https://tos-s3-cn-shanghai.volces.com",
        ),
        ({"region": "cn-shanghai"}, "region", "cn-shanghai"),
        ({"part_size": 64 * MiB}, "part_size", 64 * MiB),
        ({"task_num": 8}, "concurrency", 8),
        ({"max_connections": 5}, "concurrency", 5),
        ({"max_connections": 1024}, "concurrency", DEFAULT_CONCURRENCY),
        ({"task_num": 40, "max_connections": 10}, "concurrency", 10),
        ({"enable_crc": False}, "verify", "off"),
        ({"enable_crc": True}, "verify", "auto"),
        ({"rate_limiter": tos.RateLimiter(2 * MiB, 4 * MiB)}, "max_bandwidth", 2 * MiB),
        ({"rate_limiter": 3 * MiB}, "max_bandwidth", 3 * MiB),
        ({"max_retry_count": 0}, "max_attempts", 1),
        ({"max_retry_count": 7}, "max_attempts", 8),
        ({"connection_time": 3}, "connect_timeout", 3.0),
        ({"connection_time": 0}, "connect_timeout", PullConfig().connect_timeout),
        ({"socket_timeout": 7}, "read_timeout", 7.0),
        ({"request_timeout": 9}, "read_timeout", 9.0),
        ({"socket_timeout": 7, "request_timeout": 9}, "read_timeout", 7.0),
        ({"enable_verify_ssl": False}, "verify_ssl", False),
        ({"ca_crt": "/etc/ca.pem"}, "ca_bundle", "/etc/ca.pem"),
    ],
)
def test_sdk_keyword_maps_to_field(kwargs: dict[str, Any], field: str, value: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each of these is honoured: no warning
        settings = sdk(**kwargs)
    assert getattr(settings.config, field) == value


def test_sdk_credentials() -> None:
    assert sdk(ak="a", sk="s", security_token="t").credentials == Credentials("a", "s", "t")
    assert sdk().credentials is None
    env = TOS_ENV | {"TOS_ACCESS_KEY": "ea", "TOS_SECRET_KEY": "es"}
    assert tc.from_sdk(env).credentials == Credentials("ea", "es")
    assert tc.from_sdk(env, ak="a", sk="s").credentials == Credentials("a", "s")
    with pytest.raises(errors.UsageError, match="ak and sk"):
        sdk(ak="a")


def test_traffic_limit_becomes_a_total_cap_and_warns() -> None:
    with pytest.warns(CompatWarning, match="per connection"):
        cfg = sdk(traffic_limit=8 * MiB * 8, task_num=4).config
    assert cfg.max_bandwidth == 4 * 8 * MiB
    with pytest.warns(CompatWarning, match="per connection"):
        both = sdk(traffic_limit=8 * MiB * 8, task_num=4, rate_limiter=MiB).config
    assert both.max_bandwidth == MiB  # the lower limit wins


def test_bandwidth_below_the_minimum_warns_and_clamps() -> None:
    with pytest.warns(CompatWarning, match="minimum"):
        assert sdk(rate_limiter=1000).config.max_bandwidth == 64 * 1024


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"enable_checkpoint": False}, "enable_checkpoint"),
        ({"checkpoint_file": "/tmp/ckpt"}, "checkpoint_file"),
        ({"part_size": 1000}, "part_size"),
        ({"task_num": 0}, "task_num"),
        ({"task_num": 10_000}, "task_num"),
        ({"proxy_host": "proxy.local"}, "HTTPS_PROXY"),
        ({"is_custom_domain": True}, "is_custom_domain"),
        ({"dns_cache_time": 0}, "dns_cache_time"),
        ({"data_transfer_listener": print}, "observers"),
        ({"version_id": "v1"}, "version_id"),
        ({"ssec_key": "k"}, "SSE-C"),
    ],
)
def test_sdk_keyword_not_honoured_warns(kwargs: dict[str, Any], message: str) -> None:
    with pytest.warns(CompatWarning, match=message):
        sdk(**kwargs)


def test_sdk_defaults_and_none_are_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sdk(
            enable_checkpoint=True,
            is_custom_domain=False,
            dns_cache_time=15,
            data_transfer_listener=None,
            checkpoint_file=None,
            auto_recognize_content_type=True,
        )


def test_unknown_sdk_keyword_is_an_error() -> None:
    with pytest.raises(errors.UsageError, match="part_szie"):
        sdk(part_szie=8 * MiB)


def test_sdk_keyword_with_wrong_type_is_an_error() -> None:
    with pytest.raises(errors.UsageError, match="task_num"):
        sdk(task_num="eight")


# --- AIBrix ----------------------------------------------------------------------------


def test_aibrix_settings_from_env() -> None:
    env = {
        "DOWNLOADER_LOCAL_DIR": "/models",
        "DOWNLOADER_NUM_THREADS": "12",
        "DOWNLOADER_PART_THRESHOLD": "1048576",
        "DOWNLOADER_PART_CHUNKSIZE": "2097152",
        "DOWNLOADER_S3_MAX_IO_QUEUE": "50",
        "DOWNLOADER_S3_IO_CHUNKSIZE": "65536",
        "DOWNLOADER_ALLOW_FILE_SUFFIX": "json, safetensors",
        "DOWNLOADER_FORCE_DOWNLOAD": "true",
        "DOWNLOADER_CHECK_FILE_EXIST": "0",
        "DOWNLOADER_TOS_VERSION": "v1",
    }
    s = ab.settings_from_env(env)
    assert s == ab.DownloaderSettings(
        local_dir="/models",
        num_threads=12,
        part_threshold=MiB,
        part_chunksize=2 * MiB,
        max_io_queue=50,
        io_chunksize=65536,
        allow_file_suffix=("json", "safetensors"),
        force_download=True,
        check_file_exist=False,
        tos_version="v1",
    )


def test_aibrix_defaults() -> None:
    s = ab.settings_from_env({})
    assert s == ab.DownloaderSettings()
    assert s.local_dir == "/tmp/aibrix/models/"
    assert (s.force_download, s.check_file_exist) == (False, True)


def test_aibrix_extra_config_wins_when_truthy() -> None:
    env = {"DOWNLOADER_NUM_THREADS": "12", "DOWNLOADER_PART_CHUNKSIZE": "2097152"}
    extra = {"num_threads": 3, "part_chunksize": 0, "allow_file_suffix": ["json"], "ak": "a"}
    s = ab.settings_from_env(env, extra)
    assert (s.num_threads, s.part_chunksize, s.allow_file_suffix, s.ak) == (
        3,
        2 * MiB,
        ("json",),
        "a",
    )


def test_aibrix_extra_config_errors_and_warnings() -> None:
    with pytest.raises(errors.UsageError, match="num_thread"):
        ab.settings_from_env({}, {"num_thread": 3})
    with pytest.raises(errors.UsageError, match="integer"):
        ab.settings_from_env({}, {"num_threads": "many"})
    with pytest.raises(errors.UsageError, match="DOWNLOADER_NUM_THREADS"):
        ab.settings_from_env({"DOWNLOADER_NUM_THREADS": "many"})
    with pytest.warns(CompatWarning, match="Hugging Face"):
        ab.settings_from_env({}, {"hf_token": "x"})


S3_URI = parse_uri("s3://bucket/models/llama/")
TOS_URI = parse_uri("tos://bucket/models/llama/")


@pytest.mark.parametrize(
    ("settings", "field", "value"),
    [
        (ab.DownloaderSettings(num_threads=12), "concurrency", 12),
        (ab.DownloaderSettings(part_chunksize=2 * MiB), "part_size", 2 * MiB),
        (ab.DownloaderSettings(io_chunksize=65536), "io_chunk_size", 65536),
        (ab.DownloaderSettings(force_download=True), "force", True),
        (ab.DownloaderSettings(check_file_exist=False), "force", True),
        (ab.DownloaderSettings(endpoint="http://minio:9000"), "endpoint_url", "http://minio:9000"),
        (ab.DownloaderSettings(region="eu-west-1"), "region", "eu-west-1"),
        (ab.DownloaderSettings(), "addressing_style", "virtual"),
        (ab.DownloaderSettings(), "start_concurrency", DEFAULT_CONCURRENCY),
    ],
)
def test_aibrix_settings_map_to_fields(
    settings: ab.DownloaderSettings, field: str, value: object
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = ab.to_pull(settings, S3_URI, {})
    assert getattr(plan.target.config, field) == value


@pytest.mark.parametrize(
    ("settings", "message", "field", "value"),
    [
        (ab.DownloaderSettings(part_threshold=MiB), "DOWNLOADER_PART_THRESHOLD", None, None),
        (ab.DownloaderSettings(max_io_queue=100), "DOWNLOADER_S3_MAX_IO_QUEUE", None, None),
        (ab.DownloaderSettings(num_threads=0), "DOWNLOADER_NUM_THREADS", "concurrency", 1),
        (ab.DownloaderSettings(part_chunksize=1000), "DOWNLOADER_PART_CHUNKSIZE", "part_size", MiB),
        (
            ab.DownloaderSettings(part_chunksize=MiB, io_chunksize=16 * MiB),
            "DOWNLOADER_S3_IO_CHUNKSIZE",
            "io_chunk_size",
            MiB,
        ),
    ],
)
def test_aibrix_settings_not_honoured_warn(
    settings: ab.DownloaderSettings, message: str, field: str | None, value: object
) -> None:
    with pytest.warns(CompatWarning, match=message):
        plan = ab.to_pull(settings, S3_URI, {})
    if field is not None:
        assert getattr(plan.target.config, field) == value


def test_aibrix_threshold_equal_to_part_size_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ab.to_pull(
            ab.DownloaderSettings(part_threshold=8 * MiB, part_chunksize=8 * MiB), S3_URI, {}
        )


def test_aibrix_tos_uses_tos_variables() -> None:
    env = {
        "TOS_ENDPOINT": "tos-cn-beijing.ivolces.com",
        "TOS_ACCESS_KEY": "a",
        "TOS_SECRET_KEY": "s",
    }
    plan = ab.to_pull(ab.DownloaderSettings(), TOS_URI, env)
    assert plan.target.config.endpoint_url == "https://tos-s3-cn-beijing.ivolces.com"
    assert plan.target.credentials == Credentials("a", "s")
    extra = ab.DownloaderSettings(ak="xa", sk="xs", endpoint="tos-cn-shanghai.volces.com")
    plan = ab.to_pull(extra, TOS_URI, env)
    assert plan.target.credentials == Credentials("xa", "xs")
    assert plan.target.config.endpoint_url == "https://tos-s3-cn-shanghai.volces.com"
    env_path = env | {"MODELPULL_ADDRESSING_STYLE": "path"}
    plan = ab.to_pull(ab.DownloaderSettings(), TOS_URI, env_path)
    assert plan.target.config.addressing_style == "path"


@pytest.mark.parametrize(
    ("suffixes", "path", "kept"),
    [
        (("json", "safetensors"), "config.json", True),
        (("json", "safetensors"), "sub/model-00001.safetensors", True),
        (("json", "safetensors"), "notes.txt", False),
        (("json",), "weird.notjson", True),  # AIBrix's endswith, no dot implied
        (("[x]",), "file[x]", True),
        (("[x]",), "filex", False),
        (("",), "anything", True),
    ],
)
def test_suffix_globs_are_endswith(suffixes: tuple[str, ...], path: str, kept: bool) -> None:
    assert matches(path, ab.suffix_globs(suffixes)) is kept
    assert any(path.endswith(s) for s in suffixes) is kept


@pytest.mark.parametrize(
    ("uri", "name"),
    [
        ("s3://bucket/models/llama/", "llama"),
        ("tos://bucket/models/llama", "llama"),
        ("s3://bucket", "bucket"),
        ("s3://bucket/models/config.json", "config.json"),
    ],
)
def test_infer_model_name(uri: str, name: str) -> None:
    assert ab.infer_model_name(uri) == name


def test_aibrix_cache_layout_and_etag_spelling(tmp_path: Path) -> None:
    cache = ab.AibrixCache(ab.model_dir(tmp_path, "llama"), "s3")
    assert (
        cache.metadata_path("sub/a.bin") == tmp_path / "llama/.cache/s3/download/sub/a.bin.metadata"
    )
    assert cache.lock_path("a.bin") == tmp_path / "llama/.cache/s3/download/a.bin.lock"
    target = tmp_path / "llama" / "sub" / "a.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"12345")
    assert not cache.is_complete("sub/a.bin", 5, "abc")
    cache.mark_complete("sub/a.bin", "abc")
    assert cache.metadata_path("sub/a.bin").read_text() == '"abc"'
    assert cache.is_complete("sub/a.bin", 5, "abc")
    assert cache.is_complete("sub/a.bin", 5, '"abc"')
    assert not cache.is_complete("sub/a.bin", 6, "abc")
    assert not cache.is_complete("sub/a.bin", 5, "abd")
    cache.mark_complete("sub/a.bin", '"abc"', quoted=False)
    assert cache.metadata_path("sub/a.bin").read_text() == "abc"
    assert cache.is_complete("sub/a.bin", 5, "abc")
    # As in AIBrix, an empty file is never taken as complete.
    (tmp_path / "llama" / "empty").write_bytes(b"")
    cache.mark_complete("empty", "d41d8cd98f00b204e9800998ecf8427e")
    assert not cache.is_complete("empty", 0, "d41d8cd98f00b204e9800998ecf8427e")
    assert cache.etag_quoted("v1") and cache.etag_quoted("v2")
    tos_cache = dataclasses.replace(cache, source="tos")
    assert tos_cache.etag_quoted("v2") and not tos_cache.etag_quoted("v1")


# --- the TOS SDK's errors --------------------------------------------------------------

SITE = Site("b", "k", TOS_NAMES)


def server_error(
    status: int, code: str, request_id: str = "req-1", **headers: str
) -> TosServerError:
    resp = SimpleNamespace(
        status=status, request_id=request_id, headers={"x-tos-id-2": "id2", **headers}
    )
    return TosServerError(resp, "message from TOS", code, "host", "/resource", "0003-0001")


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "NoSuchKey", errors.ObjectNotFoundError),
        (404, "NoSuchBucket", errors.BucketNotFoundError),
        (404, "", errors.ObjectNotFoundError),
        (403, "AccessDenied", errors.AccessDeniedError),
        (403, "SignatureDoesNotMatch", errors.AccessDeniedError),
        (403, "", errors.AccessDeniedError),
        (412, "PreconditionFailed", errors.ObjectChangedError),
        (416, "InvalidRange", errors.ObjectChangedError),
        (503, "ServiceUnavailable", errors.TransientStoreError),
        (429, "ExceedAccountQPSLimit", errors.TransientStoreError),
        (500, "InternalError", errors.TransientStoreError),
        (400, "InvalidArgument", errors.StoreError),
    ],
)
def test_server_errors_keep_status_code_and_request_id(
    status: int, code: str, cls: type[errors.StoreError]
) -> None:
    exc = translate(server_error(status, code), SITE)
    assert type(exc) is cls
    assert isinstance(exc, errors.StoreError)
    assert (exc.status, exc.code, exc.request_id) == (status, code or str(status), "req-1")
    assert (exc.bucket, exc.key) == ("b", "k")
    assert "req-1" in str(exc)


def test_server_error_retry_after() -> None:
    exc = translate(server_error(503, "SlowDown", **{"retry-after": "3"}), SITE)
    assert isinstance(exc, errors.TransientStoreError)
    assert exc.retry_after == 3.0


def connection_refused() -> rexc.ConnectionError:
    refused = uexc.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    return rexc.ConnectionError(uexc.MaxRetryError(None, "/k", refused))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "cls", "reason"),
    [
        (
            TosClientError("http request timeout", connection_refused()),
            errors.EndpointError,
            "connect",
        ),
        (
            TosClientError("http request timeout", rexc.ConnectTimeout()),
            errors.EndpointError,
            "connect_timeout",
        ),
        (TosClientError("http request timeout", rexc.SSLError()), errors.EndpointError, "tls"),
        (
            TosClientError("http request timeout", rexc.ReadTimeout()),
            errors.TransientStoreError,
            "timeout",
        ),
        (
            TosClientError("http request timeout", rexc.ConnectionError("reset")),
            errors.TransientStoreError,
            "reset",
        ),
        (rexc.ChunkedEncodingError("broken"), errors.TransientStoreError, "reset"),
        (uexc.ProtocolError("broken"), errors.TransientStoreError, "reset"),
        (
            TosClientError("IO Content not equal content-length"),
            errors.TransientStoreError,
            "short_body",
        ),
        (
            TosClientError("unknown err", TosClientError("IO Content not equal content-length")),
            errors.TransientStoreError,
            "short_body",
        ),
        (
            TosClientError("unknown err", server_error(404, "NoSuchKey")),
            errors.ObjectNotFoundError,
            "404",
        ),
    ],
)
def test_client_errors_are_judged_by_their_cause(
    exc: BaseException, cls: type[errors.StoreError], reason: str
) -> None:
    translated = translate(exc, SITE)
    assert type(translated) is cls
    assert translated.reason == reason


def test_modelpull_errors_pass_through_and_secrets_never_show() -> None:
    own = errors.ObjectChangedError("changed")
    assert translate(own, SITE) is own
    other = translate(TosClientError("invalid bucket name"), SITE)
    assert type(other) is errors.StoreError
    assert re.search(r"invalid bucket name", str(other))


# --- docs and code agree ---------------------------------------------------------------


def test_mapping_table_names_every_setting() -> None:
    text = DOCS.read_text(encoding="utf-8")
    named = set(re.findall(r"`([A-Za-z_0-9]+)`", text))
    sdk_keywords = set(tc._MAPPED) | set(tc._NO_EQUIVALENT)
    missing = sorted(
        (sdk_keywords | set(ab.ENV_VARS) | set(tc.TOS_ENV) | ab.EXTRA_CONFIG_KEYS) - named
    )
    assert not missing, f"docs/tos-mapping.md does not mention {missing}"
