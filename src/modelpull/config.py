"""The one configuration object, :class:`PullConfig`.

Every knob is a field documented here once: its default, unit, environment variables
and CLI flag (:class:`Flag`; the ``modelpull`` command builds its options from these
fields). CLI flags, ``MODELPULL_*`` variables and the Python API all fill this same object;
environment variables are read when :meth:`PullConfig.from_env` is called, never at
import. ``docs/configuration.md`` is generated from these fields
(``python -m modelpull.config``) and a test keeps the two in agreement.

Credentials are deliberately not fields: they come from boto3's chain (or ``TOS_*``)
when a client is built, so a config can be printed or reported without leaking one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from modelpull.errors import UsageError
from modelpull.units import parse_duration, parse_size

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_IO_CHUNK_SIZE",
    "DEFAULT_PART_SIZE",
    "PULL_COMMANDS",
    "STORE_COMMANDS",
    "AddressingStyle",
    "Flag",
    "PullConfig",
    "VerifyMode",
    "default_text",
    "reference_markdown",
]

AddressingStyle = Literal["auto", "path", "virtual"]
VerifyMode = Literal["auto", "strict", "off"]

MiB = 1 << 20
# Chosen by benchmarks/bench_pull.py on a 2-core machine against a loopback server (see
# README): throughput flattens past 16 streams, and 32 MiB parts keep the per-request
# cost of signing and parsing under 1% while leaving enough parts to spread a shard.
DEFAULT_CONCURRENCY = 16
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
MAX_CONCURRENCY = 512


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise UsageError(f"invalid boolean {text!r}: use true/false, 1/0, yes/no or on/off")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"invalid integer {text!r}") from None


def _opt_str(text: str) -> str | None:
    return text or None


def _opt_size(text: str) -> int | None:
    return parse_size(text) if text.strip() else None


def _opt_duration(text: str) -> float | None:
    return parse_duration(text) if text.strip() else None


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

    Build one with keywords (unset fields keep their defaults) or with
    :meth:`from_env`. It is frozen: use :func:`dataclasses.replace` for a variant.
    """

    endpoint_url: str | None = _opt(
        None,
        env=("MODELPULL_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        parse=_opt_str,
        unit="URL",
        doc="S3 endpoint; `https://` is added when no scheme is given. For `tos://` URIs "
        "`TOS_ENDPOINT` comes second. Unset: AWS S3.",
        flag=Flag("--endpoint-url", "URL", STORE_COMMANDS),
    )
    region: str | None = _opt(
        None,
        env=("MODELPULL_REGION",),
        parse=_opt_str,
        unit="name",
        doc="Signing region. For `tos://` URIs `TOS_REGION` comes second. Unset: boto3's "
        "chain (`AWS_REGION`, profile, ...), else us-east-1.",
        flag=Flag("--region", "NAME", STORE_COMMANDS),
    )
    profile: str | None = _opt(
        None,
        env=("MODELPULL_PROFILE",),
        parse=_opt_str,
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
    concurrency: int = _opt(
        DEFAULT_CONCURRENCY,
        env=("MODELPULL_CONCURRENCY",),
        parse=_int,
        unit="requests",
        doc="Ranged GETs in flight at once, across all files of the pull.",
        flag=Flag("--concurrency", "N", PULL_COMMANDS),
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
        doc="Buffer per request: bytes read from the socket before each write to disk.",
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
        env=("MODELPULL_MAX_ATTEMPTS",),
        parse=_int,
        unit="attempts",
        doc="Attempts per request (the first included) for transient failures.",
        flag=Flag("--max-attempts", "N", PULL_COMMANDS),
    )
    deadline: float | None = _opt(
        None,
        env=("MODELPULL_DEADLINE",),
        parse=_opt_duration,
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
        parse=_bool,
        unit="flag",
        doc="Fetch every file again, even those recorded as complete and unchanged.",
        flag=Flag("--force", None, PULL_COMMANDS),
    )
    check_existing: bool = _opt(
        False,
        env=("MODELPULL_CHECK_EXISTING",),
        parse=_bool,
        unit="flag",
        doc="Re-read files recorded as complete and fetch again any whose bytes changed on "
        "disk (after a crash with fsync off, or a moved folder); costs a read of them.",
        flag=Flag("--check-existing", None, PULL_COMMANDS),
    )
    verify_ssl: bool = _opt(
        True,
        env=("MODELPULL_VERIFY_SSL",),
        parse=_bool,
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
        parse=_opt_str,
        unit="path",
        doc="PEM file of certificate authorities to trust instead of the default set.",
        flag=Flag("--ca-bundle", "PEM", STORE_COMMANDS),
    )
    max_bandwidth: int | None = _opt(
        None,
        env=("MODELPULL_MAX_BANDWIDTH",),
        parse=_opt_size,
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
        parse=_bool,
        unit="flag",
        doc="fsync each file before it is renamed into place (survives power loss; slower).",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise UsageError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
        if self.part_size < MIN_PART_SIZE:
            raise UsageError("part size must be at least 1MiB")
        if not 4096 <= self.io_chunk_size <= self.part_size:
            raise UsageError("I/O chunk size must be between 4KiB and the part size")
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise UsageError(
                f"invalid addressing style {self.addressing_style!r}: use auto, path or virtual"
            )
        if self.verify not in ("auto", "strict", "off"):
            raise UsageError(f"invalid verify mode {self.verify!r}: use auto, strict or off")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise UsageError("timeouts must be positive")
        if self.speed_limit < 0:
            raise UsageError("speed limit must be 0 (off) or more bytes per second")
        if self.speed_time <= 0:
            raise UsageError("speed time must be positive")
        if self.max_attempts < 1:
            raise UsageError("max attempts must be at least 1")
        if self.deadline is not None and self.deadline <= 0:
            raise UsageError("deadline must be positive")
        if self.max_bandwidth is not None and self.max_bandwidth < 64 * 1024:
            raise UsageError("max bandwidth must be at least 64KiB per second")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PullConfig:
        """A config from ``MODELPULL_*`` (and the listed ``AWS_*``) variables.

        ``environ`` defaults to :data:`os.environ`, read now. Keyword ``overrides``
        (those not ``None``) win over the environment, as CLI flags do.
        """
        env = os.environ if environ is None else environ
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

    def describe(self) -> dict[str, Any]:
        """The effective settings as plain data, for reports (holds no secret)."""
        return dataclasses.asdict(self)


def default_text(f: dataclasses.Field[Any]) -> str:
    """A field's default as the docs and ``--help`` show it: ``32MiB``, ``unset``, ``auto``."""
    default = f.default
    if isinstance(default, int) and not isinstance(default, bool) and default >= MiB:
        return f"{default // MiB}MiB"
    return "unset" if default is None else str(default).lower()


def reference_markdown() -> str:
    """The configuration reference, as kept in ``docs/configuration.md``."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `modelpull.config.PullConfig` by `reference_markdown()` in that module;",
        "a test fails when this page and the code disagree.",
        "",
        "Precedence: CLI flag, then Python keyword, then the first environment variable set,",
        "then the default. Sizes take `64MiB`, `8MB` or bytes; durations `30`, `30s`, `2m`.",
        "",
        "| field | flag | default | unit | environment | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(PullConfig):
        flag: Flag | None = f.metadata["flag"]
        shown = f"`{flag.name}`" if flag is not None else ""
        envs = ", ".join(f"`{name}`" for name in f.metadata["env"])
        lines.append(
            f"| `{f.name}` | {shown} | {default_text(f)} | {f.metadata['unit']} | {envs} "
            f"| {f.metadata['doc']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
