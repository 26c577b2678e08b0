"""Human sizes and durations: ``64MiB``, ``8MB``, ``1.5GiB``, ``1048576``; ``30s``, ``2m``."""

from __future__ import annotations

import re

from modelpull.errors import UsageError

__all__ = [
    "MAX_DURATION",
    "MAX_SIZE",
    "format_rate",
    "format_size",
    "parse_bool",
    "parse_duration",
    "parse_int",
    "parse_opt_duration",
    "parse_opt_int",
    "parse_opt_size",
    "parse_opt_str",
    "parse_size",
]

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
# Bounds past which a number is a typo, not a setting: a 400-digit size is infinity as a
# float (int() of it raises OverflowError), a century of seconds overflows a socket's
# time_t, and a rate times such a window is infinity again. No offset exceeds off_t.
MAX_SIZE = (1 << 63) - 1
MAX_DURATION = 365 * 86400.0


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Bytes from ``64MiB``, ``8MB``, ``1.5GiB`` or a plain integer; units are case-blind."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise UsageError(
            f"invalid {what} {text!r}: use bytes or a number with a unit such as 64MiB or 8MB"
        )
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if not value <= MAX_SIZE:  # also infinity
        raise UsageError(f"invalid {what} {text!r}: too big (at most {MAX_SIZE} bytes)")
    return int(value)


def parse_duration(text: str | float, *, what: str = "duration") -> float:
    """Seconds from ``30``, ``30s``, ``500ms``, ``2m`` or ``1h``."""
    if isinstance(text, int | float):
        return float(text)
    match = _SIZE_RE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _DURATION_UNITS:
        raise UsageError(f"invalid {what} {text!r}: use seconds, or a number with s, ms, m or h")
    value = float(match.group(1)) * _DURATION_UNITS[unit]
    if not value <= MAX_DURATION:  # also infinity
        raise UsageError(f"invalid {what} {text!r}: too long (at most a year, 31536000s)")
    return value


def format_size(n: float) -> str:
    """``1.50 GiB``-style text for a byte count."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def format_rate(nbytes: float, seconds: float) -> str:
    """Decimal MB/s, as the benchmark tables and s5cmd print them."""
    return f"{nbytes / seconds / 1e6:.1f} MB/s" if seconds > 0 else "- MB/s"


def parse_bool(text: str) -> bool:
    """``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off`` (empty is false)."""
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise UsageError(f"invalid boolean {text!r}: use true/false, 1/0, yes/no or on/off")


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"invalid integer {text!r}") from None


def parse_opt_int(text: str) -> int | None:
    return parse_int(text) if text.strip() else None


def parse_opt_str(text: str) -> str | None:
    """The text, or ``None`` for an empty one (a variable set to nothing is unset)."""
    return text or None


def parse_opt_size(text: str) -> int | None:
    return parse_size(text) if text.strip() else None


def parse_opt_duration(text: str) -> float | None:
    return parse_duration(text) if text.strip() else None
