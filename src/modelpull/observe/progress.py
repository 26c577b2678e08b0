"""Progress on stderr: a tqdm bar on a terminal, a periodic status line elsewhere.

Container logs are not terminals: there a carriage-return bar would be one endless
line, so a plain status line is printed every ``interval`` seconds instead.

What a person reads, stage by stage:

- **listing**: until the pull knows its files (``PullStarted``) the display says
  "listing", not a bar at zero bytes or "0 B / 0 B (100%)";
- **transfer**: bytes on disk over bytes to fetch, rate and ETA. Bytes kept from an
  interrupted pull (``FileResumed``) count as on disk but are shown apart ("resumed")
  and kept out of the rate and ETA, which measure this run's transfer;
- **verifying**: a file whose bytes are all in but that is not done yet is being
  checked (an MD5 read back can take seconds per GB): the display says so instead of
  "100%, ETA 0s".

Per-file bars refresh on time (``mininterval``) with ``miniters=1``: tqdm's dynamic
``miniters`` would otherwise wait, after one large update (a resumed file's first
value), for as many bytes again before redrawing. Keys are shown escaped
(:func:`modelpull.text.shown`). When the display closes on an error or Ctrl-C, no bar is
left half-drawn and later events from worker threads draw nothing.
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
    FileFailed,
    FileQueued,
    FileResumed,
    FileSkipped,
    PullFinished,
    PullStarted,
)
from modelpull.text import shown
from modelpull.units import format_size

__all__ = ["ProgressDisplay"]

STATUS_INTERVAL = 10.0
# Files at least this large get a bar of their own on a terminal while in flight.
FILE_BAR_MIN_SIZE = 256 << 20
MAX_FILE_BARS = 4
# Seconds between two redraws of one bar.
REDRAW_INTERVAL = 0.2


def _skip_ahead(bar: tqdm[Any], n: int) -> None:
    """Move ``bar`` on by ``n`` units that were not transferred now (resumed bytes):
    shown, but kept out of tqdm's rate (its EMA reads ``n - last_print_n``, its average
    ``n - initial``)."""
    bar.n += n
    bar.last_print_n += n
    bar.initial += n
    bar.refresh()


def _label(path: str) -> str:
    text = shown(path)
    return text if len(text) <= 40 else f"...{text[-37:]}"


class ProgressDisplay:
    """An engine observer; use as a context manager around :func:`modelpull.pull`.

    On a terminal: an aggregate bar (bytes, rate, ETA, files done, resumed bytes, the
    file being verified) and one bar per large file in flight. Elsewhere: a one-line
    status every ``interval`` seconds (none for a pull shorter than that).
    ``enabled=False`` is silence.
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
        self._listing = True
        self._total = 0
        self._done = 0  # on disk: resumed and transferred
        self._resumed = 0
        self._files_total = 0
        self._files_done = 0
        self._sizes: dict[str, int] = {}  # files queued and not yet done or failed
        self._on_disk: dict[str, int] = {}
        self._verifying: set[str] = set()
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
                desc="listing",
                bar_format="{desc} ...",
                **self._shape(),
                mininterval=REDRAW_INTERVAL,
                miniters=1,
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
            # Workers left behind by a stop may still send events: they draw nothing now.
            self._enabled = False
            for bar in self._file_bars.values():
                bar.close()
            self._file_bars.clear()
            if self._bar is not None:
                if exc_type is not None:
                    # The last state stays on its own line, so the error that follows
                    # starts a line of its own, not the middle of a bar.
                    self._bar.set_postfix_str(f"{self._postfix()}, stopped", refresh=False)
                self._bar.close()

    def __call__(self, event: Event) -> None:
        if not self._enabled:
            return
        with self._lock:
            if not self._enabled:
                return
            if isinstance(event, BytesTransferred):
                self._add(event.path, event.bytes, resumed=False)
            elif isinstance(event, FileResumed):
                self._add(event.path, event.bytes, resumed=True)
                self._show_files()
            elif isinstance(event, PullStarted):
                self._start()
            elif isinstance(event, FileQueued):
                self._queue(event.path, event.size)
            elif isinstance(event, FileSkipped):
                self._files_total += 1
                self._files_done += 1
                self._show_files()
            elif isinstance(event, FileDone | FileFailed):
                self._finish(event.path, done=isinstance(event, FileDone))
            elif isinstance(event, PullFinished) and self._lines:
                # Close a run of periodic lines with the final state.
                self._write(self._status_line())

    # -- state --------------------------------------------------------------------------

    def _start(self) -> None:
        self._listing = False
        self._started = time.monotonic()
        if self._bar is not None:
            # Files only (skipped ones, say) until a byte is to be fetched: no "0.00B".
            self._bar.bar_format = "{desc}{postfix}"
            self._bar.set_description_str("pull", refresh=False)
            self._bar.set_postfix_str(self._postfix())

    def _queue(self, path: str, size: int) -> None:
        self._total += size
        self._files_total += 1
        self._sizes[path] = size
        self._on_disk[path] = 0
        if self._bar is not None:
            if self._bar.bar_format is not None:
                self._bar.bar_format = None  # the first file to fetch: a bar from now on
                self._bar.reset(total=self._total)
            else:
                self._bar.total = self._total
                self._bar.refresh()
            self._open_file_bar(path, size)
        self._check_verifying(path)

    def _add(self, path: str, n: int, *, resumed: bool) -> None:
        self._done += n
        if resumed:
            self._resumed += n
        if path in self._on_disk:
            self._on_disk[path] += n
        if self._bar is not None:
            file_bar = self._file_bars.get(path)
            for bar in (self._bar, file_bar):
                if bar is None:
                    continue
                if resumed:
                    _skip_ahead(bar, n)
                else:
                    bar.update(n)
        self._check_verifying(path)

    def _check_verifying(self, path: str) -> None:
        """A file with every byte in, and not done, is being verified."""
        size = self._sizes.get(path)
        if size is None:
            return
        verifying = self._on_disk.get(path, 0) >= size
        if verifying == (path in self._verifying):
            return
        if verifying:
            self._verifying.add(path)
        else:
            self._verifying.discard(path)  # a failed check: its bytes are fetched again
        file_bar = self._file_bars.get(path)
        if file_bar is not None:
            prefix = "verifying " if verifying else ""
            file_bar.set_description_str(f"{prefix}{_label(path)}")
        self._show_files()

    def _finish(self, path: str, *, done: bool) -> None:
        self._files_done += int(done)
        self._sizes.pop(path, None)
        self._on_disk.pop(path, None)
        self._verifying.discard(path)
        bar = self._file_bars.pop(path, None)
        if bar is not None:
            bar.close()
        self._show_files()

    # -- drawing ------------------------------------------------------------------------

    def _verifying_text(self) -> str:
        first = min(self._verifying)
        more = f" (+{len(self._verifying) - 1})" if len(self._verifying) > 1 else ""
        return f"verifying {_label(first)}{more}"

    def _postfix(self) -> str:
        parts = [f"{self._files_done}/{self._files_total} files"]
        if self._resumed:
            parts.append(f"{format_size(self._resumed)} resumed")
        if self._verifying:
            parts.append(self._verifying_text())
        return ", ".join(parts)

    def _show_files(self) -> None:
        if self._bar is None or self._listing:
            return
        # Every byte in, files still open: the time left is verification, not transfer.
        all_in = self._total and self._done >= self._total and self._verifying
        self._bar.set_description_str("verify" if all_in else "pull", refresh=False)
        self._bar.set_postfix_str(self._postfix())

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
            desc=_label(path),
            leave=False,
            position=len(self._file_bars) + 1,
            mininterval=REDRAW_INTERVAL,
            miniters=1,
        )

    def _status_line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        if self._listing:
            return f"modelpull: listing ({elapsed:.0f}s)"
        # This run's transfer only: resumed bytes were on disk before it started.
        rate = (self._done - self._resumed) / elapsed
        percent = 100.0 * self._done / self._total if self._total else 100.0
        left = self._total - self._done
        eta = left / rate if rate > 0 else (0.0 if left <= 0 else float("inf"))
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        resumed = f", {format_size(self._resumed)} resumed" if self._resumed else ""
        verifying = f", {self._verifying_text()}" if self._verifying else ""
        return (
            f"modelpull: {format_size(self._done)} / {format_size(self._total)} "
            f"({percent:.0f}%{resumed}), {self._files_done}/{self._files_total} files, "
            f"{rate / 1e6:.1f} MB/s, ETA {eta_text}{verifying}"
        )

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()
        self._lines += 1

    def _tick(self) -> None:
        while not self._stopped.wait(self._interval):
            with self._lock:
                self._write(self._status_line())
