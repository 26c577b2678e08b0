"""The one resolve step: environment and ``TOS_*`` precedence, endpoint forms, credentials,
and who closes a target's backend. No request is made."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from modelpull import errors
from modelpull.backends import ChunkSink, RangeResult
from modelpull.backends.boto3 import Boto3Backend
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.objects import ObjectInfo
from modelpull.resolve import Target, credentials_from_env, resolve, resolve_config, resolved

TOS_ENV = {"TOS_ENDPOINT": "tos-cn-beijing.volces.com"}


def tos_config(environ: dict[str, str], **overrides: object) -> PullConfig:
    return resolve_config("tos", overrides=overrides, environ=environ)


# --- TOS_* variables and precedence (moved from test_compat.py) -------------------------


def test_credentials_from_env() -> None:
    assert credentials_from_env({}) is None
    creds = credentials_from_env(
        {"TOS_ACCESS_KEY": "ak", "TOS_SECRET_KEY": "sk", "TOS_SECURITY_TOKEN": "tok"}
    )
    assert creds == Credentials("ak", "sk", "tok")
    assert "sk" not in repr(creds) and "tok" not in repr(creds)
    with pytest.raises(errors.UsageError, match="TOS_SECRET_KEY"):
        credentials_from_env({"TOS_ACCESS_KEY": "ak"})
    with pytest.raises(errors.UsageError, match="TOS_ACCESS_KEY"):
        credentials_from_env({"TOS_SECRET_KEY": "sk"})


def test_tos_maps_endpoint_infers_region_and_goes_virtual() -> None:
    cfg = tos_config({"TOS_ENDPOINT": "tos-cn-beijing.ivolces.com"})
    assert cfg.endpoint_url == "https://tos-s3-cn-beijing.ivolces.com"
    assert cfg.region == "cn-beijing"
    assert cfg.addressing_style == "virtual"


def test_tos_region_alone_gives_the_public_endpoint() -> None:
    cfg = tos_config({"TOS_REGION": "cn-guangzhou"})
    assert (cfg.endpoint_url, cfg.region) == (
        "https://tos-s3-cn-guangzhou.volces.com",
        "cn-guangzhou",
    )


def test_tos_needs_an_endpoint() -> None:
    with pytest.raises(errors.UsageError, match="TOS_ENDPOINT"):
        tos_config({})


def test_precedence_flag_modelpull_tos_aws() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://aws:1",
        "AWS_REGION": "us-west-2",
        "TOS_ENDPOINT": "tos-cn-beijing.volces.com",
        "TOS_REGION": "cn-beijing",
    }
    # TOS_* rank above AWS_* for a tos:// URI ...
    cfg = tos_config(env)
    assert (cfg.endpoint_url, cfg.region) == ("https://tos-s3-cn-beijing.volces.com", "cn-beijing")
    # ... MODELPULL_* above TOS_* ...
    env |= {"MODELPULL_ENDPOINT_URL": "http://mp:2", "MODELPULL_REGION": "mp-region"}
    cfg = tos_config(env)
    assert (cfg.endpoint_url, cfg.region) == ("http://mp:2", "mp-region")
    # ... and a flag above everything; None means "flag not given".
    cfg = tos_config(env, endpoint_url="tos-cn-shanghai.volces.com", region=None)
    assert (cfg.endpoint_url, cfg.region) == ("https://tos-s3-cn-shanghai.volces.com", "mp-region")
    # For s3:// the TOS_* variables mean nothing.
    aws = {k: v for k, v in env.items() if not k.startswith("MODELPULL_")}
    s3 = resolve_config("s3", environ=aws)
    assert (s3.endpoint_url, s3.region) == ("http://aws:1", None)


def test_addressing_style_override_for_local_servers() -> None:
    assert tos_config(TOS_ENV, addressing_style="path").addressing_style == "path"
    env = TOS_ENV | {"MODELPULL_ADDRESSING_STYLE": "path"}
    assert tos_config(env).addressing_style == "path"


def test_an_explicit_config_keeps_what_it_sets() -> None:
    explicit = PullConfig(endpoint_url="http://127.0.0.1:9", addressing_style="path", region="r")
    cfg = resolve_config("tos", explicit, environ={"TOS_ENDPOINT": "tos-cn-beijing.volces.com"})
    assert (cfg.endpoint_url, cfg.region, cfg.addressing_style) == (
        "http://127.0.0.1:9",
        "r",
        "path",
    )
    filled = resolve_config(
        "tos", PullConfig(concurrency=3), environ={"TOS_ENDPOINT": "tos-cn-beijing.volces.com"}
    )
    assert filled.endpoint_url == "https://tos-s3-cn-beijing.volces.com"
    assert filled.concurrency == 3
    assert resolve_config("tos", filled) == filled  # idempotent: safe to apply twice


def test_credentials_order() -> None:
    env = TOS_ENV | {"TOS_ACCESS_KEY": "tak", "TOS_SECRET_KEY": "tsk"}
    explicit = Credentials("x", "y")
    uri = "tos://models/llama/"
    assert resolve(uri, credentials=explicit, environ=env).credentials is explicit
    assert resolve(uri, environ=env).credentials == Credentials("tak", "tsk")
    assert resolve(uri, environ=TOS_ENV).credentials is None  # boto3's chain
    assert resolve(uri, PullConfig(profile="p"), environ=env).credentials is None
    # TOS keys are for tos:// URIs only.
    assert resolve("s3://models/llama/", environ=env).credentials is None


# --- each backend gets the endpoint form it speaks -------------------------------------


@pytest.mark.parametrize(
    ("scheme", "backend", "endpoint", "expected"),
    [
        ("tos", "boto3", "tos-cn-beijing.volces.com", "https://tos-s3-cn-beijing.volces.com"),
        ("tos", "tos-sdk", "tos-cn-beijing.volces.com", "https://tos-cn-beijing.volces.com"),
        ("tos", "tos-sdk", "tos-s3-cn-beijing.ivolces.com", "https://tos-cn-beijing.ivolces.com"),
        ("s3", "tos-sdk", "tos-s3-cn-beijing.volces.com", "https://tos-cn-beijing.volces.com"),
        ("s3", "boto3", "tos-cn-beijing.volces.com", "https://tos-s3-cn-beijing.volces.com"),
        ("s3", "boto3", "http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_endpoint_form_follows_the_backend(
    scheme: str, backend: str, endpoint: str, expected: str
) -> None:
    cfg = resolve_config(scheme, PullConfig(endpoint_url=endpoint, backend=backend), environ={})
    assert cfg.endpoint_url == expected
    assert resolve_config(scheme, cfg, environ={}) == cfg


def test_region_alone_gives_the_native_endpoint_to_the_sdk() -> None:
    cfg = tos_config({"TOS_REGION": "cn-shanghai", "MODELPULL_BACKEND": "tos-sdk"})
    assert (cfg.endpoint_url, cfg.region) == ("https://tos-cn-shanghai.volces.com", "cn-shanghai")


# --- who closes the backend ------------------------------------------------------------


class CountingBackend:
    """Enough of a backend to see whether it was closed."""

    name = "counting"

    def __init__(self) -> None:
        self.closed = 0

    def head(self, bucket: str, key: str) -> ObjectInfo:
        raise NotImplementedError

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def read_range(
        self,
        obj: ObjectInfo,
        bucket: str,
        start: int,
        end: int,
        buffer: memoryview,
        sink: ChunkSink,
    ) -> RangeResult:
        raise NotImplementedError

    def close(self) -> None:
        self.closed += 1


def test_a_given_backend_is_used_and_left_open() -> None:
    backend = CountingBackend()
    with resolve("s3://models/llama/", backend=backend, environ={}) as target:
        assert target.backend is backend
        assert target.backend_name == "counting"
        assert target.bucket == "models"
    assert backend.closed == 0


def test_a_made_backend_is_made_once_lazily_and_closed_with_the_target() -> None:
    target = resolve("s3://models/llama/", PullConfig(endpoint_url="http://127.0.0.1:9"))
    assert target.backend_name == "boto3"  # no backend made to say so
    with target:
        first = target.backend
        assert target.backend is first
    assert target._opened is None
    target.close()  # twice is harmless


def test_resolved_passes_a_target_through_and_refuses_more() -> None:
    target = resolve("s3://models/llama/", environ={})
    with resolved(target, {}) as same:
        assert same is target
    with (
        pytest.raises(errors.UsageError, match="Target"),
        resolved(target, {"config": PullConfig()}),
    ):
        pass
    assert isinstance(target, Target)


def test_resolve_checks_the_uri() -> None:
    with pytest.raises(errors.InvalidURIError):
        resolve("models/llama", environ={})


def test_tos_native_endpoint_is_mapped_before_use() -> None:
    cfg = resolve_config("tos", environ={"TOS_ENDPOINT": "tos-cn-beijing.ivolces.com"})
    backend = Boto3Backend(cfg, Credentials("ak", "sk"))
    try:
        # botocore builds virtual-hosted URLs on the S3 twin of the native endpoint.
        client: Any = backend._client
        url = client.generate_presigned_url("get_object", Params={"Bucket": "models", "Key": "k"})
    finally:
        backend.close()
    assert url.startswith("https://models.tos-s3-cn-beijing.ivolces.com/k?")


# --- a config built with some keywords: the rest from the environment, as in the CLI ----


def test_a_partial_config_takes_the_environment_for_what_it_leaves_out() -> None:
    env = {"MODELPULL_ENDPOINT_URL": "http://minio:9000", "MODELPULL_CONCURRENCY": "4"}
    cfg = resolve_config("s3", PullConfig(concurrency=8), environ=env)
    # The endpoint is not silently dropped; the given field beats its variable.
    assert (cfg.endpoint_url, cfg.concurrency) == ("http://minio:9000", 8)
    # The same as the CLI with --concurrency 8 and the same environment.
    assert cfg == resolve_config("s3", overrides={"concurrency": 8}, environ=env)
    # A field given with its default value is still given.
    assert resolve_config("s3", PullConfig(concurrency=16), environ=env).concurrency == 16
    # replace() keeps what was given; the result resolves the same way.
    assert resolve_config("s3", PullConfig(concurrency=8).replace(force=True), environ=env) == (
        PullConfig(endpoint_url="http://minio:9000", concurrency=8, force=True)
    )


def test_no_sign_request_leaves_tos_keys_alone() -> None:
    env = TOS_ENV | {"TOS_ACCESS_KEY": "tak", "TOS_SECRET_KEY": "tsk"}
    assert resolve("tos://models/llama/", environ=env).credentials is not None
    unsigned = resolve("tos://models/llama/", PullConfig(no_sign_request=True), environ=env)
    assert unsigned.credentials is None
