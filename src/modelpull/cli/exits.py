"""How a command ends: the exit-code table and the one error handler of every command.

``modelpull`` and ``python -m modelpull.aibrix`` both run their work through
:func:`run_command`: SIGTERM stops it as Ctrl-C does (:class:`StopSignal`), and a
:class:`~modelpull.errors.ModelPullError` or an interruption becomes one
``PROG: error: ...`` line on stderr (and a JSON error object on stdout for ``--json``)
and the exit status :data:`EXIT_CODES` gives it, never a traceback. The ``--help``
epilog and the README's table are generated from :data:`EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar, NoReturn

from modelpull import errors
from modelpull.text import escape_controls

__all__ = [
    "EXIT_CODES",
    "EXIT_INTERRUPTED",
    "GC_THRESHOLD",
    "ExitCode",
    "Parser",
    "StopSignal",
    "code_of",
    "exit_code",
    "exit_codes_epilog",
    "exit_codes_markdown",
    "few_collections",
    "run_command",
]

log = logging.getLogger("modelpull")

#: Allocations between two young-generation collections while a command runs (Python's
#: default is 700).
GC_THRESHOLD = 50_000


@dataclass(frozen=True)
class ExitCode:
    """An exit status, what it means, and the errors that end with it."""

    code: int
    meaning: str
    errors: tuple[type[BaseException], ...] = ()


# Most specific first: the first entry with a matching class decides.
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(2, "usage: bad flag, value, environment variable or URI", (errors.UsageError,)),
    ExitCode(
        3,
        "not found: bucket, key, nothing under the prefix, or nothing the filters select",
        (errors.NotFoundError,),
    ),
    ExitCode(4, "access denied, bad or missing credentials", (errors.AccessDeniedError,)),
    ExitCode(
        5,
        "endpoint unreachable, TLS verification failed, connection timed out",
        (errors.EndpointError,),
    ),
    ExitCode(
        6,
        "destination: not a folder, not writable, disk full, unsafe object key",
        (errors.DiskFullError, errors.UnsafePathError, errors.DestinationError),
    ),
    ExitCode(
        7,
        "integrity: the bytes did not match the store's checksum after refetching; "
        "`verify` found a bad or missing file",
        (errors.IntegrityError,),
    ),
    ExitCode(
        8, "the object changed during the pull and kept changing", (errors.ObjectChangedError,)
    ),
    ExitCode(
        9,
        "an optional package is missing: a backend's SDK, prometheus-client for metrics, "
        "torch for --distributed",
        (errors.BackendUnavailableError,),
    ),
    ExitCode(10, "other store error (retries exhausted, ...)", (errors.StoreError,)),
    ExitCode(
        11,
        "a cluster pull could not finish together (a lost peer with --no-dist-fallback)",
        (errors.ClusterError,),
    ),
    ExitCode(
        12,
        "the --deadline passed before the pull finished: what was written is kept, run "
        "again to resume",
        (errors.DeadlineExceededError,),
    ),
    ExitCode(1, "other modelpull error", (errors.ModelPullError,)),
)
SUCCESS = ExitCode(0, "success")
EXIT_INTERRUPTED = 128  # plus the signal number: 130 for Ctrl-C, 143 for SIGTERM
INTERRUPTED_MEANING = "interrupted by Ctrl-C / SIGTERM: run the same command again to resume"


class StopSignal(KeyboardInterrupt):
    """Raised in the main thread by a SIGTERM handler, so SIGTERM stops a pull like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def code_of(error: type[BaseException]) -> int:
    """The exit status of an error class, from :data:`EXIT_CODES`."""
    return next(e.code for e in EXIT_CODES if issubclass(error, e.errors))


def exit_code(exc: BaseException) -> int:
    """The exit status for an exception, from :data:`EXIT_CODES`."""
    if isinstance(exc, errors.InterruptedPullError):
        return EXIT_INTERRUPTED + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED + getattr(exc, "signum", signal.SIGINT)
    for entry in EXIT_CODES:
        if isinstance(exc, entry.errors):
            return entry.code
    return 1


def _rows() -> list[tuple[str, str]]:
    interrupted = f"{EXIT_INTERRUPTED + signal.SIGINT} / {EXIT_INTERRUPTED + signal.SIGTERM}"
    errors_by_code = sorted(EXIT_CODES, key=lambda entry: entry.code)
    return [
        (str(SUCCESS.code), SUCCESS.meaning),
        *((str(entry.code), entry.meaning) for entry in errors_by_code),
        (interrupted, INTERRUPTED_MEANING),
    ]


def exit_codes_epilog() -> str:
    """The exit codes as one paragraph, for ``--help``."""
    return "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in _rows()) + "."


def exit_codes_markdown() -> str:
    """The exit codes as the README's table."""
    lines = ["| code | meaning |", "| --- | --- |"]
    lines += [f"| {code} | {meaning} |" for code, meaning in _rows()]
    return "\n".join(lines) + "\n"


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors end as every other error does: one line, exit 2.

    Subclasses name the program in :attr:`tool` (subcommands' ``prog`` holds more).
    """

    tool: ClassVar[str] = "modelpull"

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.tool}: error: {message}\n")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise StopSignal(signum)


def _error_json(exc: BaseException) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for name in ("bucket", "key", "status", "code", "request_id", "path"):
        value = getattr(exc, name, None)
        if value is not None:
            info[name] = value
    return {"ok": False, "exit_code": exit_code(exc), "error": info}


@contextlib.contextmanager
def few_collections() -> Iterator[None]:
    """Collect garbage rarely while a command runs, and not on the way out.

    A command makes about a million objects that live until it ends (botocore's service
    model and endpoint rules, the parser, the modules). Python's collector, run every
    700 allocations by default, walks them again and again as they are made (30 ms of
    a 0.45 s pull of one small file) and once more when the interpreter exits (50 ms).
    Every :data:`GC_THRESHOLD` allocations it still reclaims the cycles a pull that
    runs for hours leaves (a retried request's traceback, say); at exit, an
    :mod:`atexit` handler freezes what is left (:func:`gc.freeze`), so the interpreter's
    last collection skips it: the process is ending anyway.
    """
    before = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *before[1:])
    atexit.unregister(gc.freeze)  # once, however many commands one process runs
    atexit.register(gc.freeze)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_command(tool: str, body: Callable[[], int], *, json_errors: bool = False) -> int:
    """``body()``'s exit status, with SIGTERM stopping it as Ctrl-C does; a modelpull
    error or an interruption is reported as one ``TOOL: error: ...`` line (and with
    ``json_errors`` a JSON object on stdout) and ends with its code from :data:`EXIT_CODES`.
    Any other exception (a bug) is one such line too, exit 1, its traceback logged at
    debug level.
    """
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with few_collections():
            return body()
    except (Exception, KeyboardInterrupt) as exc:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, errors.ModelPullError):
            message = "interrupted; run the same command again to resume"
        elif not isinstance(exc, errors.ModelPullError | KeyboardInterrupt):
            # A bug, or an OS error nothing translated: still one line, never a traceback
            # (it is logged with -vv); exit 1 like any other modelpull error.
            message = f"unexpected {type(exc).__name__}: {message} (details with -vv)"
        # One line, whatever the message holds (an object key may hold \r or escapes).
        print(f"{tool}: error: {escape_controls(message)}", file=sys.stderr)
        if json_errors:
            print(json.dumps(_error_json(exc), sort_keys=True))
        log.debug("details", exc_info=exc)
        return exit_code(exc)
    finally:
        signal.signal(signal.SIGTERM, previous)
