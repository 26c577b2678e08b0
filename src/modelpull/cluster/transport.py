"""Everything that touches torch: the rendezvous store and the exchange's all-gather.

Kept in one small module so the rest of the package imports no torch (``import
modelpull.cluster`` works without it) and so torch's partly typed distributed API is
handled in one place: its objects are ``Any`` here and typed protocols elsewhere.

Each exchange builds its own process group over the members of that round only (a
``ProcessGroupGloo``, or ``ProcessGroupNCCL``, on a fresh store prefix), never the
global default group, so a library call neither needs nor disturbs the caller's own
``init_process_group``. Every operation of the group carries the distributed timeout.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.util
import os
import sys
from typing import Any

from modelpull.cluster.coord import KVStore
from modelpull.errors import BackendUnavailableError, ClusterError

__all__ = [
    "HEADER",
    "Handle",
    "Transport",
    "TransportError",
    "cuda_available",
    "rendezvous",
    "require_torch",
]

# Each slot starts with one status byte (1: the chunk is valid) and padding to 8.
HEADER = 8
VALID = 1

MISSING_TORCH = (
    "--distributed needs PyTorch (torch.distributed): install it with "
    "pip install 'modelpull[distributed]'"
)


class TransportError(Exception):
    """A collective failed: a peer died, timed out, or the transport broke."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    # Gloo appends advice ("This is typically caused by ... GLHF!") that is noise here.
    return text.splitlines()[0].split(". This is typically")[0]


def require_torch() -> Any:
    """``torch.distributed``, or :class:`BackendUnavailableError` saying how to get it."""
    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailableError(MISSING_TORCH)
    if "torch" not in sys.modules:
        # c10d logs every failed store request (a warning) and a store it cannot reach (an
        # error) with a C++ backtrace; a lost peer or a wrong MASTER_ADDR is expected
        # here and reported once by us, in one line. Read by torch at import only.
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    try:
        dist = importlib.import_module("torch.distributed")
    except ImportError as exc:
        raise BackendUnavailableError(f"{MISSING_TORCH} ({exc})") from exc
    if not dist.is_available():
        raise BackendUnavailableError(
            "this PyTorch build has no torch.distributed: install a build that has it"
        )
    return dist


def rendezvous(rank: int, world_size: int, timeout: float) -> KVStore:
    """The launcher's key-value store at ``MASTER_ADDR:MASTER_PORT`` (``env://``).

    Rank 0 hosts it unless torchrun's agent does; every rank must join within
    ``timeout``. A store the caller already created there is shared, not duplicated.
    """
    dist = require_torch()
    try:
        store, _, _ = next(
            dist.rendezvous(
                "env://",
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout),
            )
        )
    except (RuntimeError, ValueError, OSError) as exc:
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise ClusterError(
            f"rank {rank}: could not meet the other ranks at {where} within {timeout:.0f}s "
            f"(is every one of the {world_size} ranks started, and MASTER_ADDR reachable?): "
            f"{exc}"
        ) from exc
    result: KVStore = store
    return result


def cuda_available() -> bool:
    torch = importlib.import_module("torch")
    dist = require_torch()
    return bool(torch.cuda.is_available() and dist.is_nccl_available())


class Handle:
    """One all-gather in flight."""

    def __init__(self, work: Any, finish: Any = None) -> None:
        self._work = work
        self._finish = finish
        self.done = False

    def wait(self) -> None:
        try:
            self._work.wait()
            if self._finish is not None:
                self._finish()
        except RuntimeError as exc:
            raise TransportError(_first_line(exc)) from exc
        finally:
            self.done = True


class Transport:
    """Two sets of host buffers (one step in flight while the last is written out) and
    an all-gather over this round's members; one for each exchange, raising
    :class:`TransportError` when its group cannot form.

    ``inputs[slot]`` is this member's slot; ``outputs[slot][j]`` member ``j``'s, all
    ``capacity`` bytes. Memory: ``2 x (members + 1) x capacity`` on the host, and for
    NCCL the same again on the GPU.
    """

    def __init__(
        self,
        store: KVStore,
        prefix: str,
        index: int,
        size: int,
        timeout: float,
        capacity: int,
        *,
        nccl: bool = False,
        device: int = 0,
    ) -> None:
        dist = require_torch()
        self._torch = importlib.import_module("torch")
        self.size = size
        self.capacity = capacity
        self.nccl = nccl
        delta = datetime.timedelta(seconds=timeout)
        scoped = dist.PrefixStore(prefix, store)
        try:
            if nccl:
                self._device = self._torch.device("cuda", device)
                self._torch.cuda.set_device(self._device)
                options = dist.ProcessGroupNCCL.Options()
                options._timeout = delta
                self._group = dist.ProcessGroupNCCL(scoped, index, size, options)
            else:
                self._group = dist.ProcessGroupGloo(scoped, index, size, delta)
        except RuntimeError as exc:
            raise TransportError(
                f"could not connect the exchange group: {_first_line(exc)}"
            ) from exc
        self._host_in = [bytearray(capacity) for _ in range(2)]
        self._host_out = [[bytearray(capacity) for _ in range(size)] for _ in range(2)]
        self.inputs = [memoryview(b) for b in self._host_in]
        self.outputs = [[memoryview(b) for b in slot] for slot in self._host_out]
        torch = self._torch
        self._t_in = [torch.frombuffer(b, dtype=torch.uint8) for b in self._host_in]
        self._t_out = [
            [torch.frombuffer(b, dtype=torch.uint8) for b in slot] for slot in self._host_out
        ]
        if nccl:
            self._d_in = [
                torch.empty(capacity, dtype=torch.uint8, device=self._device) for _ in range(2)
            ]
            self._d_out = [
                torch.empty((size, capacity), dtype=torch.uint8, device=self._device)
                for _ in range(2)
            ]
        self._pending: list[Handle] = []

    def start(self, slot: int, length: int) -> Handle:
        """Start the all-gather of ``inputs[slot][:length]`` into ``outputs[slot][*][:length]``."""
        try:
            if self.nccl:
                handle = self._start_nccl(slot, length)
            else:
                outs = [t[:length] for t in self._t_out[slot]]
                handle = Handle(self._group.allgather([outs], [self._t_in[slot][:length]]))
        except RuntimeError as exc:
            raise TransportError(_first_line(exc)) from exc
        self._pending = [h for h in self._pending if not h.done]
        self._pending.append(handle)
        return handle

    def _start_nccl(self, slot: int, length: int) -> Handle:
        torch = self._torch
        d_in = self._d_in[slot][:length]
        d_in.copy_(self._t_in[slot][:length])
        d_out = self._d_out[slot]
        outs = [d_out[j, :length] for j in range(self.size)]
        work = self._group.allgather([outs], [d_in])

        def finish() -> None:
            for j in range(self.size):
                self._t_out[slot][j][:length].copy_(d_out[j, :length])
            torch.cuda.synchronize(self._device)

        return Handle(work, finish)

    def close(self) -> None:
        """Wait out operations still in flight (each bounded by the timeout), then let go."""
        for handle in self._pending:
            if not handle.done:
                with contextlib.suppress(TransportError):
                    handle.wait()
        self._pending.clear()
        group = self._group
        self._group = None
        if group is not None and self.nccl:
            with contextlib.suppress(RuntimeError):
                group.abort()
