import pytest

from modelpull.errors import UsageError
from modelpull.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64MiB", 64 << 20),
        ("8MB", 8_000_000),
        ("8mb", 8_000_000),
        ("1.5GiB", 3 << 29),
        ("1048576", 1 << 20),
        ("16 KiB", 16 << 10),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "64XB", "-5", "1.2.3MB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="64MiB"):
        parse_size(text)


def test_parse_duration() -> None:
    assert parse_duration("30") == 30.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120.0
    with pytest.raises(UsageError):
        parse_duration("soon")


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(3 << 29) == "1.50 GiB"
