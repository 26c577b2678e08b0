"""Text for people: object keys and messages with their control characters escaped.

Object keys are untrusted input, and a key may hold ``\\r``, a newline or an ANSI escape
sequence: printed raw, it could rewrite the line a person reads or forge a log line.
Every human-readable output (progress, text logs, CLI summaries, ``ls``, error lines)
passes keys through :func:`shown` or whole lines through :func:`escape_controls`.
JSON output keeps the real key: JSON escapes it.
"""

from __future__ import annotations

__all__ = ["escape_controls", "shown"]


def shown(key: str) -> str:
    """``key`` as it can be printed: itself when every character is printable, else its
    ``repr`` (quoted, with ``\\r``, ``\\x1b`` ... escaped), so it cannot pass for a
    plain key either."""
    return key if key.isprintable() else repr(key)


def escape_controls(text: str) -> str:
    """``text`` with each non-printable character escaped as ``repr`` would escape it,
    the rest untouched: one line stays one line, and no escape sequence reaches a terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
