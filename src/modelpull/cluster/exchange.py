"""The exchange: every fetcher sends the parts it holds to the fetchers that need them.

One step of the :class:`~modelpull.cluster.plan.Schedule` is one all-gather: each
member puts its next chunk (read from its temp file, or from a complete file) in its
slot and receives everyone else's. A receiver writes a chunk it needs at its offset
into its own temp file, created and preallocated as the engine creates it and held
under the same per-file lock, and records each complete part in the file's resume
journal with CRCs computed *over the bytes it received*. The engine then completes the
file from the journal and verifies it against the store's checksums, exactly as after
an interrupted pull: end to end on every node, whoever fetched the bytes.

Step ``k + 1`` is in flight while step ``k`` is written out, so memory is two sets of
slots whatever the model's size. A failure of this member alone (a full disk, a busy
lock) never stops the collective: the member keeps sending and stops receiving, and
the engine fetches what it lacks. A failed collective (a peer died or timed out)
raises :class:`~modelpull.cluster.transport.TransportError` with every part received
so far kept in the journals.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from modelpull import safefs
from modelpull.cluster.plan import Chunk, ClusterPlan, Schedule, View
from modelpull.cluster.transport import HEADER, VALID, Handle, Transport
from modelpull.config import PullConfig
from modelpull.errors import ModelPullError
from modelpull.events import BytesTransferred, Event
from modelpull.files import read_at
from modelpull.hashing import PartHasher, PartValues
from modelpull.objects import RemoteFile
from modelpull.partfile import PartFile
from modelpull.state import StateDir

__all__ = ["Exchange", "ExchangeStats"]

log = logging.getLogger("modelpull")


@dataclass
class ExchangeStats:
    """Bytes received from peers (and written), bytes sent, parts recorded."""

    received: int = 0
    sent: int = 0
    parts: int = 0


class _LocalFile:
    """One file of the plan on this member's disk, open for the steps that touch it.

    A complete file is read from its final name; any other is a
    :class:`~modelpull.partfile.PartFile`, taken only if its lock is free at once.
    """

    def __init__(
        self, remote: RemoteFile, state: StateDir, config: PullConfig, *, complete: bool
    ) -> None:
        self.path = remote.path
        # Parts only: the engine verifies the whole file afterwards, reading back what
        # its digests need, so hashing received bytes here would be done twice.
        self.file = PartFile(state, remote, replace(config, verify="off"))
        self._dest = state.dest
        self.complete = complete
        self.usable = True
        self._final_fd: int | None = None
        self._locked = False

    def _give_up(self, why: str) -> None:
        if self.usable:
            log.warning("exchange: %s: %s; the pull fetches it from the store", self.path, why)
        self.usable = False

    def open(self, *, receiving: bool) -> None:
        try:
            if self.complete:
                self._final_fd = safefs.open_file(self._dest, self.file.final, os.O_RDONLY)
                return
            if not self.file.acquire(timeout=0):
                # Another process is writing it: waiting would stall the whole cluster.
                self._give_up("another process holds its lock")
                return
            self._locked = True
            if not self.file.open(create=receiving):
                self._give_up("its resume journal is gone")
        except (OSError, ModelPullError) as exc:
            self._give_up(f"cannot open it ({exc})")

    def has_part(self, part: int) -> bool:
        return self.complete or part in self.file.done

    def hasher(self, part: int) -> PartHasher | None:
        return self.file.hasher(part) if self.usable and self.file.fd is not None else None

    def read(self, view: memoryview, offset: int) -> bool:
        if not self.usable:
            return False
        fd = self._final_fd if self._final_fd is not None else self.file.fd
        if fd is None:
            return False
        try:
            got = read_at(fd, view, offset)
        except OSError as exc:
            self._give_up(f"cannot read it ({exc})")
            return False
        return got == len(view)

    def write(self, view: memoryview, offset: int) -> bool:
        # PartFile.write's errors are DestinationErrors that already say what failed.
        return self._on_temp(lambda: self.file.write(view, offset), ModelPullError, "")

    def record(self, part: int, values: PartValues) -> bool:
        return self._on_temp(
            lambda: self.file.record(part, values), OSError, "cannot save its journal"
        )

    def _on_temp(self, step: Callable[[], None], failure: type[Exception], what: str) -> bool:
        """Run ``step`` on the open temp file; ``False`` when it is not open, or when
        ``step`` fails with ``failure``: the file is then given up (the store serves it)."""
        if not self.usable or self.file.fd is None:
            return False
        try:
            step()
        except failure as exc:
            self._give_up(f"{what} ({exc})" if what else str(exc))
            return False
        return True

    def close(self) -> None:
        if self._final_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._final_fd)
            self._final_fd = None
        with contextlib.suppress(OSError):
            self.file.close()
        if self._locked:
            self.file.release()
            self._locked = False


class _Incoming:
    """A part being received: its CRCs so far and where its next chunk must start."""

    __slots__ = ("hasher", "next_offset")

    def __init__(self, hasher: PartHasher, start: int) -> None:
        self.hasher = hasher
        self.next_offset = start


class Exchange:
    """One run of a schedule over one transport, for member ``me``."""

    def __init__(
        self,
        plan: ClusterPlan,
        view: View,
        me: int,
        dest: Path,
        config: PullConfig,
        schedule: Schedule,
        transport: Transport,
        emit: Callable[[Event], None],
    ) -> None:
        self._plan = plan
        self._me = me
        self._members = view.members
        self._schedule = schedule
        self._transport = transport
        self._emit = emit
        self.stats = ExchangeStats()
        mine = view.states[me]
        self._wanted: set[tuple[int, int]] = set()
        span: dict[int, list[int]] = {}
        for step in range(schedule.steps):
            for member in self._members:
                chunk = schedule.chunk(member, step)
                if chunk is None:
                    continue
                key = (chunk.ref.file, chunk.ref.part)
                if member != me and mine.needs(*key):
                    self._wanted.add(key)
                elif member != me:
                    continue
                first_last = span.setdefault(chunk.ref.file, [step, step])
                first_last[1] = step
        state = StateDir(dest)
        self._receiving = {f for f, _ in self._wanted}
        self._files = {
            f: _LocalFile(plan.files[f], state, config, complete=f in mine.complete) for f in span
        }
        self._opens: dict[int, list[int]] = {}
        self._closes: dict[int, list[int]] = {}
        for f, (first, last) in span.items():
            self._opens.setdefault(first, []).append(f)
            self._closes.setdefault(last, []).append(f)
        self._incoming: dict[tuple[int, int], _Incoming] = {}

    def run(self) -> ExchangeStats:
        """Every step in order; :class:`TransportError` if the collective fails."""
        pending: tuple[int, int, Handle] | None = None
        transport = self._transport
        try:
            for step in range(self._schedule.steps):
                slot = step % 2
                for f in self._opens.get(step, ()):
                    self._files[f].open(receiving=f in self._receiving)
                self._fill(slot, step)
                handle = transport.start(slot, HEADER + self._schedule.step_length(step))
                if pending is not None:
                    self._drain(*pending)
                pending = (step, slot, handle)
            if pending is not None:
                self._drain(*pending)
        finally:
            for local in self._files.values():
                local.close()
        return self.stats

    def _fill(self, slot: int, step: int) -> None:
        view = self._transport.inputs[slot]
        chunk = self._schedule.chunk(self._me, step)
        view[0] = 0
        if chunk is None:
            return
        local = self._files[chunk.ref.file]
        body = view[HEADER : HEADER + chunk.length]
        if local.has_part(chunk.ref.part) and local.read(body, chunk.offset):
            view[0] = VALID
            self.stats.sent += chunk.length

    def _drain(self, step: int, slot: int, handle: Handle) -> None:
        handle.wait()
        outputs = self._transport.outputs[slot]
        for j, member in enumerate(self._members):
            if member == self._me:
                continue
            chunk = self._schedule.chunk(member, step)
            if chunk is None or (chunk.ref.file, chunk.ref.part) not in self._wanted:
                continue
            out = outputs[j]
            self._receive(chunk, out[HEADER : HEADER + chunk.length] if out[0] == VALID else None)
        for f in self._closes.get(step, ()):
            self._files[f].close()

    def _receive(self, chunk: Chunk, body: memoryview | None) -> None:
        key = (chunk.ref.file, chunk.ref.part)
        local = self._files[chunk.ref.file]
        incoming = self._incoming.get(key)
        hasher = (
            local.hasher(chunk.ref.part)
            if incoming is None and chunk.offset == chunk.ref.start
            else None
        )
        if hasher is not None:
            incoming = _Incoming(hasher, chunk.ref.start)
            self._incoming[key] = incoming
        if (
            incoming is None
            or body is None
            or incoming.next_offset != chunk.offset
            or not local.write(body, chunk.offset)
        ):
            # The part is dropped whole: the engine fetches it from the store later.
            dropped = self._incoming.pop(key, None)
            if dropped is not None and dropped.next_offset > chunk.ref.start:
                undone = dropped.next_offset - chunk.ref.start
                self._emit(BytesTransferred(path=local.path, bytes=-undone))
            return
        incoming.hasher.update(body)
        incoming.next_offset += chunk.length
        self.stats.received += chunk.length
        self._emit(BytesTransferred(path=local.path, bytes=chunk.length))
        if chunk.last:
            del self._incoming[key]
            if local.record(chunk.ref.part, incoming.hasher.values()):
                self.stats.parts += 1
