import pytest

from modelpull.errors import InvalidURIError, UsageError
from modelpull.uri import (
    endpoint_for_region,
    normalize_endpoint,
    parse_uri,
    region_from_endpoint,
    to_native_endpoint,
    to_s3_endpoint,
)


@pytest.mark.parametrize(
    ("text", "bucket", "key", "folder"),
    [
        ("s3://models/llama/", "models", "llama/", True),
        ("s3://models/llama", "models", "llama", False),
        ("s3://models", "models", "", True),
        ("s3://models/", "models", "", True),
        ("S3://models/a/b.json", "models", "a/b.json", False),
        ("tos://my-bucket/x/", "my-bucket", "x/", True),
    ],
)
def test_parse_uri(text: str, bucket: str, key: str, folder: bool) -> None:
    uri = parse_uri(text)
    assert (uri.bucket, uri.key, uri.is_folder) == (bucket, key, folder)


@pytest.mark.parametrize(
    "text",
    [
        "models/llama",
        "http://models/llama",
        "s3://",
        "s3:///key",
        "s3://a/key",
        "s3://bad bucket/k",
        "gs://b/k",
    ],
)
def test_parse_uri_rejects(text: str) -> None:
    with pytest.raises(InvalidURIError, match="invalid"):
        parse_uri(text)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("minio.local:9000", "https://minio.local:9000"),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000"),
        ("https://s3.amazonaws.com", "https://s3.amazonaws.com"),
        ("tos-s3-cn-beijing.volces.com", "https://tos-s3-cn-beijing.volces.com"),
    ],
)
def test_normalize_endpoint(given: str, expected: str) -> None:
    assert normalize_endpoint(given) == expected


@pytest.mark.parametrize("given", ["", "ftp://host", "http://", "http://host:notaport"])
def test_normalize_endpoint_rejects(given: str) -> None:
    with pytest.raises(UsageError):
        normalize_endpoint(given)


# --- TOS endpoints, native and S3 (moved from test_compat.py) --------------------------


@pytest.mark.parametrize(
    ("given", "s3"),
    [
        ("tos-cn-beijing.volces.com", "https://tos-s3-cn-beijing.volces.com"),
        ("https://tos-cn-beijing.volces.com", "https://tos-s3-cn-beijing.volces.com"),
        ("http://tos-cn-beijing.ivolces.com", "http://tos-s3-cn-beijing.ivolces.com"),
        ("tos-cn-shanghai.ivolces.com", "https://tos-s3-cn-shanghai.ivolces.com"),
        ("tos-cn-beijing2.volces.com", "https://tos-s3-cn-beijing2.volces.com"),
        ("tos-ap-southeast-1.volces.com", "https://tos-s3-ap-southeast-1.volces.com"),
        (
            "https://TOS-CN-GUANGZHOU.VOLCES.COM:8443/",
            "https://tos-s3-cn-guangzhou.volces.com:8443",
        ),
        # S3 endpoints and every other host are accepted as they are.
        ("tos-s3-cn-beijing.volces.com", "https://tos-s3-cn-beijing.volces.com"),
        ("https://tos-s3-cn-beijing.ivolces.com", "https://tos-s3-cn-beijing.ivolces.com"),
        ("tos-control-cn-beijing.volces.com", "https://tos-control-cn-beijing.volces.com"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("s3.amazonaws.com", "https://s3.amazonaws.com"),
        (
            "tos-cn-beijing.volces.com.evil.example",
            "https://tos-cn-beijing.volces.com.evil.example",
        ),
    ],
)
def test_native_endpoint_maps_to_s3(given: str, s3: str) -> None:
    assert to_s3_endpoint(given) == s3


@pytest.mark.parametrize(
    ("s3", "native"),
    [
        ("tos-s3-cn-beijing.volces.com", "https://tos-cn-beijing.volces.com"),
        ("http://tos-s3-cn-beijing.ivolces.com", "http://tos-cn-beijing.ivolces.com"),
        ("tos-cn-beijing.volces.com", "https://tos-cn-beijing.volces.com"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
    ],
)
def test_s3_endpoint_maps_back_for_the_sdk(s3: str, native: str) -> None:
    assert to_native_endpoint(s3) == native
    assert to_s3_endpoint(to_native_endpoint(s3)) == to_s3_endpoint(s3)


@pytest.mark.parametrize(
    ("endpoint", "region"),
    [
        ("tos-cn-beijing.volces.com", "cn-beijing"),
        ("https://tos-s3-ap-southeast-1.ivolces.com", "ap-southeast-1"),
        ("http://127.0.0.1:9000", None),
        ("tos-control-cn-beijing.volces.com", None),
    ],
)
def test_region_from_endpoint(endpoint: str, region: str | None) -> None:
    assert region_from_endpoint(endpoint) == region


def test_endpoint_for_region() -> None:
    assert endpoint_for_region("cn-shanghai") == "https://tos-s3-cn-shanghai.volces.com"
    with pytest.raises(UsageError, match="region"):
        endpoint_for_region("cn beijing/../x")
