"""Progress on stderr: a tqdm bar on a terminal, a periodic status line elsewhere.

Container logs are not terminals: there a carriage-return bar would be one endless
line, so a plain status line is printed every ``interval`` seconds instead.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

from modelpull.events import (
    BytesTransferred,
    Event,
    FileDone,
    FileQueued,
    FileResumed,
    FileSkipped,
    PullFinished,
)
from modelpull.units import format_size

__all__ = ["ProgressDisplay"]

STATUS_INTERVAL = 10.0
# Files at least this large get a bar of their own on a terminal while in flight.
FILE_BAR_MIN_SIZE = 256 << 20
MAX_FILE_BARS = 4


class ProgressDisplay:
    """An engine observer; use as a context manager around :func:`modelpull.pull`.

    On a terminal: an aggregate bar (bytes, rate, ETA, files done) and one bar per large
    file in flight. Elsewhere: a one-line status every ``interval`` seconds (none for a
    pull shorter than that). ``enabled=False`` is silence.
    """

    def __init__(
        self,
        enabled: bool = True,
        *,
        stream: TextIO | None = None,
        interval: float = STATUS_INTERVAL,
        tty: bool | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        is_tty = self._stream.isatty() if tty is None else tty
        self._enabled = enabled
        self._tty = is_tty
        self._interval = interval
        self._lock = threading.Lock()
        self._total = 0
        self._done = 0
        self._files_total = 0
        self._files_done = 0
        self._lines = 0
        self._file_bars: dict[str, tqdm[Any]] = {}
        self._bar: tqdm[Any] | None = None
        self._started = time.monotonic()
        self._stopped = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> ProgressDisplay:
        if self._enabled and self._tty:
            # Imported here: a pull without a terminal should not pay for it at startup.
            from tqdm import tqdm

            self._bar = tqdm(
                total=0,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self._stream,
                desc="pull",
                **self._shape(),
                mininterval=0.2,
            )
        elif self._enabled:
            self._ticker = threading.Thread(target=self._tick, name="modelpull-status", daemon=True)
            self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            for bar in self._file_bars.values():
                bar.close()
            self._file_bars.clear()
            if self._bar is not None:
                self._bar.close()

    def __call__(self, event: Event) -> None:
        if not self._enabled:
            return
        with self._lock:
            # Resumed bytes count as done: the bar shows what is on disk.
            if isinstance(event, BytesTransferred | FileResumed):
                self._done += event.bytes
                if self._bar is not None:
                    self._bar.update(event.bytes)
                    file_bar = self._file_bars.get(event.path)
                    if file_bar is not None:
                        file_bar.update(event.bytes)
            elif isinstance(event, FileQueued):
                self._total += event.size
                self._files_total += 1
                if self._bar is not None:
                    self._bar.total = self._total
                    self._bar.refresh()
                    self._open_file_bar(event.path, event.size)
            elif isinstance(event, FileSkipped):
                self._files_total += 1
                self._files_done += 1
            elif isinstance(event, FileDone):
                self._files_done += 1
                bar = self._file_bars.pop(event.path, None)
                if bar is not None:
                    bar.close()
                if self._bar is not None:
                    self._bar.set_postfix_str(f"{self._files_done}/{self._files_total} files")
            elif isinstance(event, PullFinished) and self._lines:
                # Close a run of periodic lines with the final state.
                self._write(self._status_line())

    def _shape(self) -> dict[str, Any]:
        # A terminal whose size was never set (a bare pty) reports 0x0, and tqdm then
        # hides every bar as "below the screen": assume a plain 100x40 one instead.
        try:
            size = os.get_terminal_size(self._stream.fileno())
        except (OSError, ValueError, AttributeError):
            size = os.terminal_size((0, 0))
        if size.columns and size.lines:
            return {"dynamic_ncols": True}
        return {"ncols": 100, "nrows": 40}

    def _open_file_bar(self, path: str, size: int) -> None:
        if size < FILE_BAR_MIN_SIZE or len(self._file_bars) >= MAX_FILE_BARS:
            return
        from tqdm import tqdm

        self._file_bars[path] = tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self._stream,
            **self._shape(),
            desc=path if len(path) <= 40 else f"...{path[-37:]}",
            leave=False,
            position=len(self._file_bars) + 1,
            mininterval=0.2,
        )

    def _status_line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self._done / elapsed
        percent = 100.0 * self._done / self._total if self._total else 100.0
        eta = (self._total - self._done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        return (
            f"modelpull: {format_size(self._done)} / {format_size(self._total)} "
            f"({percent:.0f}%), {self._files_done}/{self._files_total} files, "
            f"{rate / 1e6:.1f} MB/s, ETA {eta_text}"
        )

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()
        self._lines += 1

    def _tick(self) -> None:
        while not self._stopped.wait(self._interval):
            with self._lock:
                self._write(self._status_line())
