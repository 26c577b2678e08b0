import pytest

from modelpull.errors import DestinationError, UnsafePathError
from modelpull.objects import ObjectInfo, RemoteFile
from modelpull.plan import _check_conflicts, safe_relpath, select


@pytest.mark.parametrize(
    ("key", "prefix", "rel"),
    [
        ("m/config.json", "m/", "config.json"),
        ("m/sub/tok.json", "m/", "sub/tok.json"),
        ("weights.bin", "", "weights.bin"),
        ("m/..hidden", "m/", "..hidden"),
    ],
)
def test_safe_relpath(key: str, prefix: str, rel: str) -> None:
    assert safe_relpath(key, prefix) == rel


@pytest.mark.parametrize(
    "key",
    [
        "m/../x",
        "m/a/../../x",
        "m/./x",
        "m//x",
        "/etc/passwd",
        "m/a\\b",
        "m/a\x00b",
        "m/.modelpull/records/x",
        "m/",
    ],
)
def test_unsafe_keys_refused(key: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        safe_relpath(key, "m/" if key.startswith("m/") else "")
    assert info.value.key == key


def _files(*paths: str) -> list[RemoteFile]:
    return [RemoteFile(ObjectInfo(key=p, size=1, etag="e"), p) for p in paths]


def test_select_include_exclude() -> None:
    files = _files("config.json", "model-1.safetensors", "sub/tokenizer.json", "pytorch_model.bin")
    paths = lambda fs: [f.path for f in fs]  # noqa: E731
    assert paths(select(files, include=["*.json"])) == ["config.json", "sub/tokenizer.json"]
    assert paths(select(files, exclude=["*.bin"])) == [
        "config.json",
        "model-1.safetensors",
        "sub/tokenizer.json",
    ]
    assert paths(select(files, include=["sub/"])) == ["sub/tokenizer.json"]
    assert paths(select(files, include=["*.json", "*.safetensors"], exclude=["sub/*"])) == [
        "config.json",
        "model-1.safetensors",
    ]
    assert select(files, include=["*.gguf"]) == []


def test_conflicting_paths() -> None:
    _check_conflicts(["a/b", "a/c", "b"])
    with pytest.raises(DestinationError, match="cannot both be files"):
        _check_conflicts(["a", "a/b"])
