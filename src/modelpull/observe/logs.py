"""Logs on the ``modelpull`` logger: the CLI's setup, JSON lines, redaction of secrets,
and :class:`LogObserver`, which turns engine events into log records.

Event records carry structured fields (``event``, ``file``, ``bytes``, ``seconds``,
``attempt``, ``error``, ...) as ``extra``: the JSON format emits them as keys, the text
format shows only the message, which says the same in words.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, Literal, TextIO

from modelpull.errors import UsageError
from modelpull.events import (
    BytesTransferred,
    Event,
    FileDone,
    FileFailed,
    FileQueued,
    FileResumed,
    FileSkipped,
    FileVerified,
    PartRetried,
    PullFinished,
    PullStarted,
    RequestFinished,
)
from modelpull.text import escape_controls
from modelpull.units import format_size

__all__ = [
    "LOG_FORMATS",
    "REDACTED",
    "SECRET_ENV_VARS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "LogFormat",
    "LogObserver",
    "RedactingFilter",
    "TextFormatter",
    "setup_logging",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "modelpull: %(levelname)s: %(message)s"
REDACTED = "[REDACTED]"
# Whose values are redacted from every line, read when logging is set up.
SECRET_ENV_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "TOS_SECRET_KEY",
    "TOS_SECURITY_TOKEN",
)
# Shorter values are not redacted literally: a 3-character "secret" would blank out
# every word that contains it, and the patterns below still apply.
MIN_SECRET_LENGTH = 8

_PATTERNS = (
    # key=value, key: value and header forms, whatever the value looks like.
    re.compile(
        r"(?i)\b((?:aws_)?secret(?:_access)?[_-]?key|(?:aws_)?session[_-]?token"
        r"|security[_-]?token|x-amz-security-token|x-amz-signature|signature"
        r"|x-amz-credential|authorization)"
        r"(\"?'?\s*[:=]\s*\"?'?)([^\s\"',&;]+)"
    ),
    # Shaped like an AWS secret access key: 40 base64 characters with upper and lower
    # case and a digit or symbol. The mixed case spares hex digests (SHA-1 is 40 hex).
    re.compile(
        r"(?<![A-Za-z0-9/+=])"
        r"(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[0-9/+])"
        r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
    ),
)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


class RedactingFilter(logging.Filter):
    """Rewrites a record so no secret reaches any handler's output: defence in depth,
    as modelpull never logs credentials on purpose.

    Redacts the ``secrets`` given (at least :data:`MIN_SECRET_LENGTH` characters), values
    after names like ``secret_key=`` or ``X-Amz-Signature=``, and anything shaped like an
    AWS secret access key, in the message, the traceback and every ``extra`` field.
    Attach it to a handler: a logger's own filters do not see its children's records.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._literal = re.compile("|".join(map(re.escape, values))) if values else None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, secrets: Iterable[str] = ()
    ) -> RedactingFilter:
        """Redacting :data:`SECRET_ENV_VARS`' values in ``environ`` (default: now)."""
        env = os.environ if environ is None else environ
        return cls([*secrets, *(env[name] for name in SECRET_ENV_VARS if env.get(name))])

    def redact(self, text: str) -> str:
        if self._literal is not None:
            text = self._literal.sub(REDACTED, text)
        text = _PATTERNS[0].sub(rf"\1\2{REDACTED}", text)
        return _PATTERNS[1].sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # a broken format string: logging reports it in the handler
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key in _RECORD_FIELDS or value is None or isinstance(value, bool | int | float):
                continue
            setattr(record, key, self.redact(value if isinstance(value, str) else str(value)))
        return True


_TRACEBACKS = logging.Formatter()


class TextFormatter(logging.Formatter):
    """A text line whose message has its control characters escaped: a key holding
    ``\r`` or an escape sequence cannot rewrite or forge a log line. A traceback that
    follows (``-v``) keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = escape_controls(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
    ``event`` (``"log"`` for records that are not engine events), ``message``, then
    each ``extra`` field, and ``exc`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        data: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in data:
                data[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        # ASCII-only, so a line is one line for every log shipper, whatever a key holds.
        return json.dumps(data, default=str)


def setup_logging(
    verbose: int = 0,
    quiet: bool = False,
    fmt: LogFormat = "text",
    stream: TextIO | None = None,
    *,
    secrets: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send the ``modelpull`` logger's records to ``stream`` (default ``sys.stderr``).

    Level: ERROR with ``quiet``, else WARNING, INFO with ``verbose=1``, DEBUG with 2.
    ``fmt`` is ``"text"`` (``modelpull: LEVEL: message``) or ``"json"`` (one object per
    line, see :class:`JsonFormatter`). Secrets in ``environ`` (default ``os.environ``,
    read now) and ``secrets`` are redacted from every line. Replaces any handler set
    up before and stops propagation to the root logger; returns the handler.
    """
    if fmt not in LOG_FORMATS:
        raise UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    if quiet:
        level = logging.ERROR
    else:
        level = (logging.WARNING, logging.INFO)[verbose] if verbose < 2 else logging.DEBUG
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    handler.addFilter(RedactingFilter.from_env(environ, secrets))
    logger = logging.getLogger("modelpull")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return handler


_LEVELS: dict[type[Any], int] = {
    PullStarted: logging.INFO,
    FileQueued: logging.DEBUG,
    FileSkipped: logging.INFO,
    FileResumed: logging.INFO,
    RequestFinished: logging.DEBUG,
    PartRetried: logging.WARNING,
    FileVerified: logging.DEBUG,
    FileDone: logging.INFO,
    FileFailed: logging.ERROR,
    PullFinished: logging.INFO,
}


class LogObserver:
    """An engine observer that logs events on ``logger`` (default ``modelpull.events``).

    INFO: pull started and finished, file done (bytes, seconds, MB/s), skipped, resumed.
    WARNING: a retry (reason, attempt, delay). ERROR: a file failed, a pull failed.
    DEBUG: each finished request, each file queued and each checksum verified. Byte
    progress is never logged: it is the progress display's and the metrics' business.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger if logger is not None else logging.getLogger("modelpull.events")

    def __call__(self, event: Event) -> None:
        if type(event) is BytesTransferred:
            return
        level = _LEVELS.get(type(event))
        if isinstance(event, PullFinished) and not event.ok:
            level = logging.ERROR
        # Checked first so that a quiet run builds no message for its DEBUG requests.
        if level is None or not self._log.isEnabledFor(level):
            return
        match event:
            case PullStarted():
                self._emit(
                    level,
                    "pull_started",
                    f"pulling {event.files} files ({format_size(event.bytes)}) "
                    f"from {event.backend} bucket {event.bucket}",
                    files=event.files,
                    bytes=event.bytes,
                    backend=event.backend,
                    bucket=event.bucket,
                )
            case FileQueued():
                self._emit(
                    level,
                    "file_queued",
                    f"queued {event.path} ({format_size(event.size)}, {event.parts} parts)",
                    file=event.path,
                    bytes=event.size,
                    parts=event.parts,
                )
            case FileSkipped():
                self._emit(
                    level,
                    "file_skipped",
                    f"skipped {event.path}: already complete ({format_size(event.size)})",
                    file=event.path,
                    bytes=event.size,
                )
            case FileResumed():
                self._emit(
                    level,
                    "file_resumed",
                    f"resuming {event.path}: {format_size(event.bytes)} already on disk",
                    file=event.path,
                    bytes=event.bytes,
                )
            case RequestFinished():
                what = f"{event.method} {event.path}" if event.path else event.method
                self._emit(
                    level,
                    "request_finished",
                    f"{what}: {event.status} in {event.seconds:.3f}s ({format_size(event.bytes)})",
                    file=event.path or None,
                    method=event.method,
                    status=event.status,
                    bytes=event.bytes,
                    seconds=round(event.seconds, 6),
                    first_byte_seconds=(
                        None
                        if event.first_byte_seconds is None
                        else round(event.first_byte_seconds, 6)
                    ),
                )
            case PartRetried():
                self._emit(
                    level,
                    "retry",
                    f"retrying {event.path or 'a request'} after {event.reason} "
                    f"(attempt {event.attempt} failed; next in {event.delay:.1f}s)",
                    file=event.path or None,
                    reason=event.reason,
                    attempt=event.attempt,
                    delay=round(event.delay, 3),
                )
            case FileVerified():
                self._emit(
                    level,
                    "file_verified",
                    f"verified {event.path}: {event.kind} matches",
                    file=event.path,
                    kind=event.kind,
                )
            case FileDone():
                rate = event.size / event.seconds / 1e6 if event.seconds > 0 else 0.0
                self._emit(
                    level,
                    "file_done",
                    f"done {event.path}: {format_size(event.size)} in {event.seconds:.2f}s "
                    f"({rate:.1f} MB/s)",
                    file=event.path,
                    bytes=event.size,
                    seconds=round(event.seconds, 6),
                    mb_per_s=round(rate, 3),
                )
            case FileFailed():
                error = f"{type(event.error).__name__}: {event.error}"
                self._emit(
                    level,
                    "file_failed",
                    f"failed {event.path}: {error}",
                    file=event.path,
                    error=error,
                )
            case PullFinished():
                size = format_size(event.bytes)
                self._emit(
                    level,
                    "pull_finished",
                    f"pulled {size} in {event.seconds:.2f}s"
                    if event.ok
                    else f"pull failed after {event.seconds:.2f}s ({size} downloaded)",
                    files=event.files,
                    bytes=event.bytes,
                    seconds=round(event.seconds, 6),
                    ok=event.ok,
                )
            case _:
                pass

    def _emit(self, level: int, name: str, message: str, **fields: Any) -> None:
        # The message is already text: passing it as the format would misread a '%'
        # in a file name.
        self._log.log(level, "%s", message, extra={"event": name, **fields})
