"""The benchmark kit's scenarios, arms and stores: what is pulled, by whom, from where.

A scenario is one row of the issue's table: a model (:mod:`_models`), a store set up for
it (:func:`open_store`) and the arms that pull it. An arm is a command line; every arm
runs as its own process with the store's endpoint, keys and CA in its environment.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _runner import BIN, Usage
from _stores import (
    BUCKET,
    LinkProxyProcess,
    Store,
    make_tls,
    moto_multipart_store,
    rclone_crc64_store,
    rclone_store,
)

__all__ = [
    "ARMS",
    "DEFAULT_SCENARIOS",
    "HOOK_SCENARIOS",
    "SCENARIOS",
    "Arm",
    "Opened",
    "Scenario",
    "Settings",
    "Target",
    "open_store",
    "verify_command_missing",
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1 << 20
MULTIPART_PART_SIZE = 8 * MiB
FLIP_P = 0.08
# Small enough to land in every object's body, the smallest JSON file included.
FLIP_OFFSET = 17
TABLE_ARMS = ("s5cmd", "boto3-default", "boto3-aibrix", "modelpull", "modelpull-noverify")


@dataclass(frozen=True)
class Settings:
    """The run's knobs that arms and stores need."""

    work: Path
    logs: Path
    modelpull_args: tuple[str, ...] = ()
    modelpull_env: dict[str, str] = field(default_factory=dict)
    far_rtt_ms: float = 20.0
    far_rate: str = "16MB"
    far_total_rate: str | None = None

    @property
    def far_rate_text(self) -> str:
        """The per-connection rate as the report says it."""
        return "unlimited" if self.far_rate.lower() in ("none", "0") else f"{self.far_rate}/s"


@dataclass(frozen=True)
class Target:
    """What an arm pulls: the store and the model's prefix on it."""

    store: Store
    prefix: str
    settings: Settings

    @property
    def uri(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    command: Callable[[Target, Path], list[str]]
    modelpull: bool = False

    def env(self, target: Target) -> dict[str, str]:
        """Variables on top of the store's: its CA, modelpull's addressing and extras."""
        env: dict[str, str] = {}
        if target.store.ca_bundle is not None:
            # boto3, botocore and s5cmd (aws-sdk-go) all read it.
            env["AWS_CA_BUNDLE"] = str(target.store.ca_bundle)
        if self.modelpull:
            env["MODELPULL_ADDRESSING_STYLE"] = "path"
            env.update(target.settings.modelpull_env)
        return env


def _s5cmd(target: Target, dest: Path) -> list[str]:
    source = f"{target.uri}*"
    return [str(BIN / "s5cmd"), "--endpoint-url", target.store.endpoint, "cp", source, f"{dest}/"]


def _boto3(*extra: str) -> Callable[[Target, Path], list[str]]:
    def command(target: Target, dest: Path) -> list[str]:
        script = str(HERE / "_boto3_download.py")
        return [sys.executable, script, BUCKET, target.prefix, str(dest), *extra]

    return command


def _ca_flag(target: Target) -> list[str]:
    ca = target.store.ca_bundle
    return ["--ca-bundle", str(ca)] if ca is not None else []


def _modelpull(*extra: str) -> Callable[[Target, Path], list[str]]:
    def command(target: Target, dest: Path) -> list[str]:
        args = [str(BIN / "modelpull"), "pull", target.uri, str(dest), "--no-progress"]
        return [*args, *_ca_flag(target), *extra, *target.settings.modelpull_args]

    return command


def _verify(target: Target, dest: Path) -> list[str]:
    return [str(BIN / "modelpull"), "verify", target.uri, str(dest), *_ca_flag(target)]


ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm("s5cmd", "s5cmd cp (defaults)", _s5cmd),
        Arm("boto3-default", "boto3 download_file, default TransferConfig", _boto3()),
        Arm("boto3-aibrix", "boto3 download_file, AIBrix's TransferConfig", _boto3("--aibrix")),
        Arm("modelpull", "modelpull pull (defaults)", _modelpull(), modelpull=True),
        Arm(
            "modelpull-noverify",
            "modelpull pull --verify off",
            _modelpull("--verify", "off"),
            modelpull=True,
        ),
        Arm("modelpull-verify", "modelpull verify URI DEST", _verify, modelpull=True),
    )
}


@dataclass(frozen=True)
class Scenario:
    name: str
    # May name the far store's link: {rtt} (ms) and {rate} (per second).
    title: str
    model: str
    store: str
    arms: tuple[str, ...] = TABLE_ARMS
    # Whole-process wall time is the result (seconds), not MB/s.
    startup: bool = False
    # Arms run on a destination pulled once beforehand, kept between rounds.
    prepared_dest: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("md5", "two shards (1 GiB + 512 MiB), MD5-only store", "big", "rclone"),
        Scenario("crc64", "same model, CRC64NVME store (AWS-like)", "big", "rclone-crc64"),
        Scenario("tls", "same model over TLS (own CA)", "big", "rclone-tls"),
        Scenario("small-files", "many small files (4 kB to 500 kB)", "small-files", "rclone"),
        Scenario(
            "far",
            "a far store: {rtt} ms round trip, {rate} per connection, 64 MiB shards",
            "far",
            "rclone-far",
        ),
        Scenario("startup", "one small file, whole process", "one-file", "rclone", startup=True),
        # Hooks for the integrity issue: run only when named.
        Scenario(
            "multipart",
            "same model, multipart ETags (moto, 8 MiB parts)",
            "big",
            "moto-multipart",
            ("s5cmd", "modelpull", "modelpull-noverify"),
        ),
        Scenario(
            "flip",
            "same multipart model, a byte flipped in 8% of object GETs",
            "big",
            "moto-multipart-flip",
            ("modelpull",),
        ),
        Scenario(
            "verify",
            "modelpull verify of the same model (page cache)",
            "big",
            "rclone",
            ("modelpull-verify",),
            prepared_dest=True,
        ),
    )
}
DEFAULT_SCENARIOS = ("md5", "crc64", "tls", "small-files", "far", "startup")
HOOK_SCENARIOS = ("multipart", "flip", "verify")


def verify_command_missing() -> str | None:
    """Why the ``verify`` scenario cannot run today, or None when it can."""
    done = subprocess.run(
        [str(BIN / "modelpull"), "verify", "--help"], capture_output=True, text=True, check=False
    )
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return f"`modelpull verify --help` exited with {done.returncode} ({last})"


class Probe:
    """Extra numbers for each run of a scenario; this one has none."""

    def before(self) -> None:
        pass

    def after(self, usage: Usage, model_bytes: int) -> dict[str, float]:
        return {}


class _LinkCpu(Probe):
    def __init__(self, proxy: LinkProxyProcess) -> None:
        self._proxy = proxy
        self._start = 0.0

    def before(self) -> None:
        self._start = self._proxy.cpu_seconds()

    def after(self, usage: Usage, model_bytes: int) -> dict[str, float]:
        cpu = self._proxy.cpu_seconds() - self._start
        return {
            "proxy_cpu_s": cpu,
            "proxy_cpu_pct_of_core": 100 * cpu / usage.seconds,
            "proxy_cpu_s_per_gb": cpu / (model_bytes / 1e9),
        }


class _Egress(Probe):
    def __init__(self, proxy: Any, rule: Any, prefix: str) -> None:
        self._proxy, self._rule, self._path = proxy, rule, f"/{BUCKET}/{prefix}"

    def before(self) -> None:
        self._proxy.reset_counters()

    def after(self, usage: Usage, model_bytes: int) -> dict[str, float]:
        served = sum(r.body_bytes for r in self._proxy.log if r.path.startswith(self._path))
        return {"egress": served / model_bytes, "flips": float(self._proxy.fired(self._rule))}


@dataclass(frozen=True)
class Opened:
    store: Store
    probe: Probe
    notes: tuple[str, ...] = ()


@contextlib.contextmanager
def open_store(kind: str, model: Path, prefix: str, settings: Settings) -> Iterator[Opened]:
    """Start the store ``kind`` serving ``model`` at ``prefix``, for one scenario."""
    root = settings.work / f"store-{kind}"
    if kind == "rclone":
        with rclone_store(root, model, prefix) as store:
            yield Opened(store, Probe())
    elif kind == "rclone-tls":
        with rclone_store(root, model, prefix, tls=make_tls(settings.work / "tls")) as store:
            yield Opened(store, Probe())
    elif kind == "rclone-crc64":
        with rclone_crc64_store(root, model, prefix) as store:
            yield Opened(store, Probe())
    elif kind == "rclone-far":
        with rclone_store(root, model, prefix) as store, contextlib.ExitStack() as stack:
            s = settings
            link = LinkProxyProcess(
                store.endpoint, s.far_rtt_ms, s.far_rate, s.far_total_rate, s.logs
            )
            stack.callback(link.close)
            described = (
                f"{store.describe}, behind linkproxy.py: {s.far_rtt_ms:g} ms round trip, "
                f"{s.far_rate_text} per connection"
                + (f", {s.far_total_rate}/s in all" if s.far_total_rate else "")
            )
            far = Store(link.url, store.access_key, store.secret_key, describe=described)
            yield Opened(far, _LinkCpu(link))
    elif kind in ("moto-multipart", "moto-multipart-flip"):
        with moto_multipart_store(model, prefix, MULTIPART_PART_SIZE, settings.logs) as store:
            if kind == "moto-multipart":
                yield Opened(store, Probe())
                return
            sys.path.insert(0, str(REPO))
            from tests.faults.proxy import FaultProxy, Rule, flip_byte

            rule = Rule(
                flip_byte(FLIP_OFFSET),
                method="GET",
                path=rf"^/{BUCKET}/.",
                times=None,
                p=FLIP_P,
                seed=1,
            )
            with FaultProxy(store.endpoint) as proxy:
                proxy.add_rule(rule)
                described = (
                    f"{store.describe}, through tests/faults/proxy.py flipping byte "
                    f"{FLIP_OFFSET} of {FLIP_P:.0%} of object GETs"
                )
                flipped = Store(proxy.url, store.access_key, store.secret_key, describe=described)
                note = "egress: object bytes the store served / model bytes"
                yield Opened(flipped, _Egress(proxy, rule, prefix), (note,))
    else:
        raise ValueError(f"no store {kind!r}")
