"""The progress display fed synthetic events: its stages, its rate, its bars, its last line."""

from __future__ import annotations

import io
import re
import time

from modelpull.errors import InterruptedPullError
from modelpull.events import (
    BytesTransferred,
    FileDone,
    FileQueued,
    FileResumed,
    PullFinished,
    PullStarted,
)
from modelpull.observe.progress import FILE_BAR_MIN_SIZE, ProgressDisplay

MiB = 1 << 20
BIG = FILE_BAR_MIN_SIZE * 4


class Terminal(io.StringIO):
    """What tqdm writes to a terminal, kept; no size, so the display assumes 100x40."""

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


START = PullStarted(backend="boto3", bucket="b", files=1, bytes=BIG)


def test_listing_says_listing_not_zero_bytes() -> None:
    term = Terminal()
    with ProgressDisplay(stream=term) as display:
        drawn = term.getvalue()
        display(PullStarted(backend="boto3", bucket="b", files=1, bytes=10))
    assert "listing" in drawn
    assert "0.00B" not in drawn and "B/s" not in drawn
    # Without a terminal: the status line says listing too, not "0 B / 0 B (100%)".
    pipe = io.StringIO()
    with ProgressDisplay(stream=pipe, interval=0.05):
        time.sleep(0.2)
    assert pipe.getvalue().startswith("modelpull: listing")
    assert "0 B / 0 B" not in pipe.getvalue()


def test_resumed_bytes_are_shown_apart_and_kept_out_of_the_rate() -> None:
    term = Terminal()
    with ProgressDisplay(stream=term) as display:
        display(START)
        display(FileQueued(path="w.bin", size=BIG, parts=4))
        display(FileResumed(path="w.bin", bytes=BIG // 2))
        time.sleep(0.3)
        display(BytesTransferred(path="w.bin", bytes=MiB))
        time.sleep(0.3)
        display(BytesTransferred(path="w.bin", bytes=MiB))
        drawn = term.getvalue()
    assert "resumed" in drawn
    # 1 MiB per 0.3 s is a few MB/s; counting the resumed 512 MiB would show GB/s.
    rates = re.findall(r"([\d.]+)([kMG]?)B/s", drawn)
    assert rates
    assert all(unit != "G" for _, unit in rates), rates
    # The file's own bar moved after its large first value: miniters is not dynamic.
    assert "513M/1.00G" in drawn or "514M/1.00G" in drawn


def test_verifying_is_a_stage_of_its_own() -> None:
    term = Terminal()
    pipe = io.StringIO()
    with (
        ProgressDisplay(stream=term) as display,
        ProgressDisplay(stream=pipe, interval=0.05) as status,
    ):
        for observer in (display, status):
            observer(PullStarted(backend="boto3", bucket="b", files=1, bytes=100))
            observer(FileQueued(path="w.bin", size=100, parts=1))
            observer(BytesTransferred(path="w.bin", bytes=100))
        time.sleep(0.2)
        verifying = term.getvalue()
        for observer in (display, status):
            observer(FileDone(path="w.bin", size=100, seconds=0.1))
            observer(PullFinished(files=1, bytes=100, seconds=0.1, ok=True))
    assert "verifying w.bin" in verifying
    assert "verify:" in verifying  # every byte in: the aggregate bar says what it waits on
    assert "verifying w.bin" in pipe.getvalue()
    last = pipe.getvalue().splitlines()[-1]
    assert "verifying" not in last and "1/1 files" in last


def test_a_stop_leaves_a_finished_line_and_draws_nothing_after() -> None:
    term = Terminal()
    display = ProgressDisplay(stream=term)
    try:
        with display:
            display(START)
            display(FileQueued(path="w.bin", size=BIG, parts=4))
            display(BytesTransferred(path="w.bin", bytes=MiB))
            raise InterruptedPullError("stopped", signum=2)
    except InterruptedPullError:
        pass
    closed = term.getvalue()
    assert closed.endswith("\n")  # the error line that follows starts a line of its own
    assert "stopped" in closed.splitlines()[-1]
    display(BytesTransferred(path="w.bin", bytes=MiB))  # a worker left behind
    assert term.getvalue() == closed


def test_keys_are_escaped_in_bars() -> None:
    term = Terminal()
    with ProgressDisplay(stream=term) as display:
        display(START)
        display(FileQueued(path="evil\r\x1b[2Kname.bin", size=BIG, parts=4))
        display(BytesTransferred(path="evil\r\x1b[2Kname.bin", bytes=MiB))
    assert "\x1b[2K" not in term.getvalue()
    assert "evil\\r\\x1b[2Kname.bin" in term.getvalue()
