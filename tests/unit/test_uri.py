import pytest

from modelpull.errors import InvalidURIError, UsageError
from modelpull.uri import normalize_endpoint, parse_uri


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
