"""The one configuration object, :class:`PullConfig`.

Every knob is a field documented here once: its default, unit, environment variables
and CLI flag (:class:`Flag`; the ``modelpull`` command builds its options from these
fields). CLI flags, ``MODELPULL_*`` variables and the Python API all fill this same object;
environment variables are read when :meth:`PullConfig.from_env` is called (or when a pull
resolves a config: :func:`modelpull.resolve.resolve_config`), never at import.
``docs/configuration.md`` is generated from these fields (``python -m modelpull.configdoc``)
and a test keeps the two in agreement.

A config remembers which fields its caller set (:attr:`PullConfig.given`): the others
are filled from the environment when a pull resolves it, exactly as the CLI fills the
fields no flag set, so ``PullConfig(concurrency=8)`` keeps ``MODELPULL_ENDPOINT_URL``.

Credentials are deliberately not fields: they come from boto3's chain (or ``TOS_*``)
when a client is built, so a config can be printed or reported without leaking one.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from modelpull.errors import UsageError
from modelpull.units import (
    MAX_DURATION,
    MAX_SIZE,
    parse_bool,
    parse_duration,
    parse_int,
    parse_opt_duration,
    parse_opt_int,
    parse_opt_size,
    parse_opt_str,
    parse_size,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_IO_CHUNK_SIZE",
    "DEFAULT_PART_SIZE",
    "OTHER_ENV",
    "PULL_COMMANDS",
    "STORE_COMMANDS",
    "AddressingStyle",
    "Flag",
    "PullConfig",
    "VerifyMode",
    "known_env",
    "warn_unknown_env",
]

log = logging.getLogger("modelpull")

AddressingStyle = Literal["auto", "path", "virtual"]
VerifyMode = Literal["auto", "strict", "off"]

MiB = 1 << 20
# Chosen by benchmarks/bench_pull.py on a 2-core machine against a loopback server (see
# README): throughput flattens past 16 streams, and 32 MiB parts keep the per-request
# cost of signing and parsing under 1% while leaving enough parts to spread a shard.
DEFAULT_CONCURRENCY = 16
# Adaptive concurrency's ceiling: 64 buffers of 1 MiB bound memory, and 64 streams of
# ~90 MB/s (S3's per-connection rate) fill a 40 Gb/s link.
DEFAULT_MAX_CONCURRENCY = 64
DEFAULT_PART_SIZE = 32 * MiB
DEFAULT_IO_CHUNK_SIZE = 1 * MiB
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 60.0
DEFAULT_MAX_ATTEMPTS = 5
# A request moving under 1KiB/s for 20s is abandoned: curl's --speed-limit/--speed-time.
# The window leaves a stalled or trickling part retried within 30s; the rate is far
# below any working connection, even 16 streams sharing a slow link.
DEFAULT_SPEED_LIMIT = 1024
DEFAULT_SPEED_TIME = 20.0
MIN_PART_SIZE = 1 * MiB
MAX_IO_CHUNK_SIZE = 256 * MiB
MAX_CONCURRENCY = 512


# The subcommands that take a field's flag: every command that talks to the store, or
# only the one that transfers.
STORE_COMMANDS = ("pull", "ls", "bench", "verify")
PULL_COMMANDS = ("pull",)


@dataclass(frozen=True)
class Flag:
    """A field's CLI option: ``metavar`` is ``None`` for an on/off flag, which sets the
    opposite of the field's default; ``help`` replaces the field's doc where that does
    not read right after the flag (a ``--no-...`` flag)."""

    name: str
    metavar: str | None
    commands: tuple[str, ...]
    help: str | None = None


def _opt(
    default: Any,
    *,
    env: tuple[str, ...],
    parse: Callable[[str], Any],
    unit: str,
    doc: str,
    flag: Flag | None = None,
) -> Any:
    metadata = {"env": env, "parse": parse, "unit": unit, "doc": doc, "flag": flag}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class PullConfig:
    """How to pull: store connection, transfer tuning and safety switches.

    Build one with keywords or with :meth:`from_env`. The fields given as keywords are
    remembered (:attr:`given`): when a pull resolves the config, every other field takes
    its environment variable if one is set, else its default, exactly as the CLI does
    for the fields no flag set. It is frozen: :meth:`replace` makes a variant that
    remembers the fields given to either (:func:`dataclasses.replace` counts every
    field as given, so the environment no longer applies to its result).
    """

    def __new__(cls, **given: Any) -> PullConfig:
        config = super().__new__(cls)
        # Known only here: the generated __init__ sees defaults and given values alike.
        object.__setattr__(config, "_given", frozenset(given))
        return config

    @property
    def given(self) -> frozenset[str]:
        """The fields set by the caller rather than left to the environment or the default."""
        found: frozenset[str] = getattr(self, "_given", frozenset())
        return found

    def given_values(self) -> dict[str, Any]:
        """The fields in :attr:`given` and their values."""
        return {name: getattr(self, name) for name in self.given}

    def replace(self, **changes: Any) -> PullConfig:
        """A copy with ``changes``; the fields given to this config stay given."""
        return type(self)(**(self.given_values() | changes))

    endpoint_url: str | None = _opt(
        None,
        # s5cmd's S3_ENDPOINT_URL last: the AWS SDKs' own variables are the standard.
        env=(
            "MODELPULL_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ENDPOINT_URL",
            "S3_ENDPOINT_URL",
        ),
        parse=parse_opt_str,
        unit="URL",
        doc="S3 endpoint; `https://` is added when no scheme is given. The variables rank "
        "in the order listed (`S3_ENDPOINT_URL` is s5cmd's). For `tos://` URIs "
        "`TOS_ENDPOINT` comes second. Unset: AWS S3.",
        flag=Flag("--endpoint-url", "URL", STORE_COMMANDS),
    )
    region: str | None = _opt(
        None,
        env=("MODELPULL_REGION",),
        parse=parse_opt_str,
        unit="name",
        doc="Signing region. For `tos://` URIs `TOS_REGION` comes second. Unset: boto3's "
        "chain (`AWS_REGION`, profile, ...), else us-east-1.",
        flag=Flag("--region", "NAME", STORE_COMMANDS),
    )
    profile: str | None = _opt(
        None,
        env=("MODELPULL_PROFILE",),
        parse=parse_opt_str,
        unit="name",
        doc="Named profile from the AWS config files. Unset: boto3's chain (`AWS_PROFILE`).",
        flag=Flag("--profile", "NAME", STORE_COMMANDS),
    )
    addressing_style: AddressingStyle = _opt(
        "auto",
        env=("MODELPULL_ADDRESSING_STYLE",),
        parse=str,
        unit="auto|path|virtual",
        doc="Bucket in the host name (virtual) or in the path (path); auto lets botocore pick.",
        flag=Flag("--addressing-style", "{auto,path,virtual}", STORE_COMMANDS),
    )
    no_sign_request: bool = _opt(
        False,
        env=("MODELPULL_NO_SIGN_REQUEST",),
        parse=parse_bool,
        unit="flag",
        doc="Send every request unsigned, without looking for credentials: for public "
        "buckets (the AWS CLI's `--no-sign-request`).",
        flag=Flag("--no-sign-request", None, STORE_COMMANDS),
    )
    concurrency: int | None = _opt(
        None,
        env=("MODELPULL_CONCURRENCY",),
        parse=parse_opt_int,
        unit="requests",
        doc="Requests in flight at once, across all files of the pull, pinned. Unset: "
        "adaptive, from 16 up to `max_concurrency`: grows while throughput rises, backs "
        "off when it stops or the store throttles (503 SlowDown, 429), then probes again.",
        flag=Flag("--concurrency", "N", PULL_COMMANDS),
    )
    hedge: bool = _opt(
        True,
        env=("MODELPULL_HEDGE",),
        parse=parse_bool,
        unit="flag",
        doc="Split a part far slower than its peers near the end of a pull: a fresh "
        "request fetches its tail (extra egress under 5% of the pull).",
        flag=Flag("--no-hedge", None, PULL_COMMANDS, help="never split a slow part"),
    )
    max_concurrency: int = _opt(
        DEFAULT_MAX_CONCURRENCY,
        env=("MODELPULL_MAX_CONCURRENCY",),
        parse=parse_int,
        unit="requests",
        doc="Most requests adaptive concurrency keeps in flight (each holds one I/O buffer: "
        "64 x 1MiB by default, the memory bound).",
        flag=Flag("--max-concurrency", "N", PULL_COMMANDS),
    )
    part_size: int = _opt(
        DEFAULT_PART_SIZE,
        env=("MODELPULL_PART_SIZE",),
        parse=parse_size,
        unit="bytes",
        doc="Bytes per ranged GET; files up to this size are fetched in one request.",
        flag=Flag("--part-size", "SIZE", PULL_COMMANDS),
    )
    io_chunk_size: int = _opt(
        DEFAULT_IO_CHUNK_SIZE,
        env=("MODELPULL_IO_CHUNK_SIZE",),
        parse=parse_size,
        unit="bytes",
        doc="Buffer per request: bytes read from the socket before each write to disk "
        "(4KiB to the part size, 256MiB at most).",
        flag=Flag("--io-chunk-size", "SIZE", PULL_COMMANDS),
    )
    connect_timeout: float = _opt(
        DEFAULT_CONNECT_TIMEOUT,
        env=("MODELPULL_CONNECT_TIMEOUT",),
        parse=parse_duration,
        unit="seconds",
        doc="Time allowed to open a connection.",
    )
    read_timeout: float = _opt(
        DEFAULT_READ_TIMEOUT,
        env=("MODELPULL_READ_TIMEOUT",),
        parse=parse_duration,
        unit="seconds",
        doc="Time allowed between two reads from a connection.",
    )
    speed_limit: int = _opt(
        DEFAULT_SPEED_LIMIT,
        env=("MODELPULL_SPEED_LIMIT",),
        parse=parse_size,
        unit="bytes/s",
        doc="A request moving fewer bytes per second than this over `speed_time` (headers "
        "not arrived, a trickle, a stall) is abandoned and retried on a new connection "
        "(retry reason `stall`). 0: never.",
        flag=Flag("--speed-limit", "SIZE", PULL_COMMANDS),
    )
    speed_time: float = _opt(
        DEFAULT_SPEED_TIME,
        env=("MODELPULL_SPEED_TIME",),
        parse=parse_duration,
        unit="seconds",
        doc="The window over which `speed_limit` is judged.",
        flag=Flag("--speed-time", "SECONDS", PULL_COMMANDS),
    )
    max_attempts: int = _opt(
        DEFAULT_MAX_ATTEMPTS,
        env=("MODELPULL_MAX_ATTEMPTS", "AWS_MAX_ATTEMPTS"),
        parse=parse_int,
        unit="attempts",
        doc="Attempts per request (the first included) for transient failures; "
        "`AWS_MAX_ATTEMPTS` means the same in the AWS CLI and SDKs.",
        flag=Flag("--max-attempts", "N", PULL_COMMANDS),
    )
    deadline: float | None = _opt(
        None,
        env=("MODELPULL_DEADLINE",),
        parse=parse_opt_duration,
        unit="seconds",
        doc="Wall-time limit of the whole pull (listing, requests, lock waits): when it "
        "passes, requests in flight are abandoned and the pull stops with exit 12, keeping "
        "what it wrote for a rerun. Unset: no deadline.",
        flag=Flag("--deadline", "SECONDS", PULL_COMMANDS),
    )
    verify: VerifyMode = _opt(
        "auto",
        env=("MODELPULL_VERIFY",),
        parse=str,
        unit="auto|strict|off",
        doc="Checksums: auto checks all the store offers; strict also fails without one.",
        flag=Flag("--verify", "{auto,strict,off}", ("pull", "verify")),
    )
    force: bool = _opt(
        False,
        env=("MODELPULL_FORCE",),
        parse=parse_bool,
        unit="flag",
        doc="Fetch every file again, even those recorded as complete and unchanged.",
        flag=Flag("--force", None, PULL_COMMANDS),
    )
    check_existing: bool = _opt(
        False,
        env=("MODELPULL_CHECK_EXISTING",),
        parse=parse_bool,
        unit="flag",
        doc="Re-read files recorded as complete and fetch again any whose bytes changed on "
        "disk (after a crash with fsync off, or a moved folder); costs a read of them.",
        flag=Flag("--check-existing", None, PULL_COMMANDS),
    )
    allow_empty: bool = _opt(
        False,
        env=("MODELPULL_ALLOW_EMPTY",),
        parse=parse_bool,
        unit="flag",
        doc="Succeed, pulling nothing, when the filters (`--include`, `--exclude`, "
        "`--preset`, a wildcard) select none of the listed files; by default that fails "
        "with exit 3.",
        flag=Flag("--allow-empty", None, PULL_COMMANDS),
    )
    verify_ssl: bool = _opt(
        True,
        env=("MODELPULL_VERIFY_SSL",),
        parse=parse_bool,
        unit="flag",
        doc="Verify TLS certificates. Turning it off warns on every run.",
        flag=Flag(
            "--no-verify-ssl",
            None,
            STORE_COMMANDS,
            help="Do not verify TLS certificates (insecure; warns on every run).",
        ),
    )
    ca_bundle: str | None = _opt(
        None,
        env=("MODELPULL_CA_BUNDLE", "AWS_CA_BUNDLE"),
        parse=parse_opt_str,
        unit="path",
        doc="PEM file of certificate authorities to trust instead of the default set.",
        flag=Flag("--ca-bundle", "PEM", STORE_COMMANDS),
    )
    max_bandwidth: int | None = _opt(
        None,
        env=("MODELPULL_MAX_BANDWIDTH",),
        parse=parse_opt_size,
        unit="bytes/s",
        doc="Cap on the pull's total download rate. Unset: no cap.",
        flag=Flag("--max-bandwidth", "SIZE", PULL_COMMANDS),
    )
    backend: str = _opt(
        "boto3",
        env=("MODELPULL_BACKEND",),
        parse=str,
        unit="boto3|tos-sdk",
        doc="Transfer backend: modelpull's engine on boto3, or the TOS SDK (`[tos]` extra).",
        flag=Flag("--backend", "{boto3,tos-sdk}", STORE_COMMANDS),
    )
    fsync: bool = _opt(
        False,
        env=("MODELPULL_FSYNC",),
        parse=parse_bool,
        unit="flag",
        doc="fsync each file before it is renamed into place (survives power loss; slower).",
    )

    def __post_init__(self) -> None:
        for name in ("concurrency", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_CONCURRENCY:
                raise UsageError(f"{name.replace('_', ' ')} must be 1 to {MAX_CONCURRENCY}")
        if self.part_size < MIN_PART_SIZE:
            raise UsageError("part size must be at least 1MiB")
        # Each worker holds one buffer of it (up to 512 workers): an exabyte passed the
        # part-size bound and killed the workers with MemoryError.
        if not 4096 <= self.io_chunk_size <= min(self.part_size, MAX_IO_CHUNK_SIZE):
            raise UsageError(
                "I/O chunk size must be between 4KiB and the part size, 256MiB at most"
            )
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise UsageError(
                f"invalid addressing style {self.addressing_style!r}: use auto, path or virtual"
            )
        if self.verify not in ("auto", "strict", "off"):
            raise UsageError(f"invalid verify mode {self.verify!r}: use auto, strict or off")
        # Written "not 0 < x <= MAX" so that NaN (every comparison false) fails too: a
        # NaN or infinite speed time kills the watchdog's thread, and with it every
        # stall check; an infinite timeout overflows the socket's time_t.
        for name in ("connect_timeout", "read_timeout", "speed_time", "deadline"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= MAX_DURATION:
                raise UsageError(
                    f"{name.replace('_', ' ')} must be positive and at most a year (seconds)"
                )
        if not 0 <= self.speed_limit <= MAX_SIZE:
            raise UsageError("speed limit must be 0 (off) or more bytes per second")
        if self.max_attempts < 1:
            raise UsageError("max attempts must be at least 1")
        if self.max_bandwidth is not None and self.max_bandwidth < 64 * 1024:
            raise UsageError("max bandwidth must be at least 64KiB per second")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PullConfig:
        """A config from ``MODELPULL_*`` (and the listed ``AWS_*``) variables.

        ``environ`` defaults to :data:`os.environ`, read now. Keyword ``overrides``
        (those not ``None``) win over the environment, as CLI flags do. A ``MODELPULL_*``
        variable that names no setting is warned about, once (:func:`warn_unknown_env`).
        """
        env = os.environ if environ is None else environ
        warn_unknown_env(env)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            for name in f.metadata["env"]:
                if name in env:
                    try:
                        values[f.name] = f.metadata["parse"](env[name])
                    except UsageError as exc:
                        raise UsageError(f"{name}: {exc}") from None
                    break
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def adaptive(self) -> bool:
        """True when concurrency adapts to the link (``concurrency`` unset)."""
        return self.concurrency is None

    @property
    def start_concurrency(self) -> int:
        """Requests in flight at the start: the pinned number, else the default."""
        return self.concurrency or min(DEFAULT_CONCURRENCY, self.max_concurrency)

    @property
    def most_concurrency(self) -> int:
        """The most requests ever in flight at once: what connection pools are sized for."""
        return self.concurrency or self.max_concurrency

    def describe(self) -> dict[str, Any]:
        """The effective settings as plain data, for reports (holds no secret)."""
        return dataclasses.asdict(self)


# MODELPULL_* variables read outside PullConfig: the cluster pull's (cluster/options.py)
# and snapshot()'s cache root. Listed here so that they are never taken for misspellings;
# a test checks that every MODELPULL_* name in the sources is known.
OTHER_ENV = (
    "MODELPULL_CACHE",
    "MODELPULL_DIST_BACKEND",
    "MODELPULL_DIST_CHUNK_SIZE",
    "MODELPULL_DIST_FALLBACK",
    "MODELPULL_DIST_NODE",
    "MODELPULL_DIST_NODE_PER_RANK",
    "MODELPULL_DIST_TIMEOUT",
)
_PREFIX = "MODELPULL_"
_warned: set[str] = set()
_warned_lock = threading.Lock()


def known_env() -> frozenset[str]:
    """Every ``MODELPULL_*`` variable modelpull reads."""
    fields = (name for f in dataclasses.fields(PullConfig) for name in f.metadata["env"])
    return frozenset(name for name in (*fields, *OTHER_ENV) if name.startswith("MODELPULL_"))


def warn_unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warn once per process about each ``MODELPULL_*`` variable that names no setting.

    A misspelt variable (``MODELPULL_CONCURENCY``) would otherwise be ignored in silence;
    the warning names the closest known one. Returns the unknown names found now.
    """
    env = os.environ if environ is None else environ
    known = known_env()
    unknown = sorted(name for name in env if name.startswith(_PREFIX) and name not in known)
    for name in unknown:
        with _warned_lock:
            if name in _warned:
                continue
            _warned.add(name)
        # Compared without the prefix every name shares, which would make all look close.
        suffixes = {known_name.removeprefix(_PREFIX): known_name for known_name in known}
        close = difflib.get_close_matches(
            name.removeprefix(_PREFIX), sorted(suffixes), n=1, cutoff=0.6
        )
        hint = f"did you mean {suffixes[close[0]]}?" if close else "see docs/configuration.md"
        log.warning("%s is not a modelpull setting and is ignored; %s", name, hint)
    return unknown
