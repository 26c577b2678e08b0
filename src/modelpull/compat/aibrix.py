"""AIBrix's model downloader: its ``DOWNLOADER_*`` variables, extra config and folder layout.

What ``python -m aibrix.downloader`` (AIBrix's S3 and TOS downloaders) leaves for a
model, and what :mod:`modelpull.aibrix` therefore leaves too::

    <local_dir>/<model_name>/<path of each object below the URI>
    <local_dir>/<model_name>/.cache/<s3|tos>/download/<path>.lock       filelock's lock file
    <local_dir>/<model_name>/.cache/<s3|tos>/download/<path>.metadata   the object's ETag

AIBrix skips a file whose size matches and whose ``.metadata`` holds the current ETag;
modelpull honours those files (a switch does not fetch a model again) and writes them
(a roll back does not either). modelpull also keeps its own ``.modelpull/`` folder there.

AIBrix reads its variables at import with ``extra_config.x or DOWNLOADER_X``; here they
are read when :func:`settings_from_env` is called, with the same precedence.
"""

from __future__ import annotations

import glob
import os
import stat
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelpull import safefs
from modelpull.compat import CompatWarning
from modelpull.config import MAX_CONCURRENCY, MIN_PART_SIZE, PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import UnsafePathError, UsageError
from modelpull.resolve import Target, resolve
from modelpull.uri import ObjectURI

__all__ = [
    "DEFAULT_LOCAL_DIR",
    "ENV_VARS",
    "EXTRA_CONFIG_KEYS",
    "AibrixCache",
    "AibrixPull",
    "DownloaderSettings",
    "infer_model_name",
    "model_dir",
    "settings_from_env",
    "suffix_globs",
    "to_pull",
]

DEFAULT_LOCAL_DIR = "/tmp/aibrix/models/"  # noqa: S108 - AIBrix's own default, kept as is
ENV_VARS = (
    "DOWNLOADER_LOCAL_DIR",
    "DOWNLOADER_NUM_THREADS",
    "DOWNLOADER_PART_THRESHOLD",
    "DOWNLOADER_PART_CHUNKSIZE",
    "DOWNLOADER_S3_MAX_IO_QUEUE",
    "DOWNLOADER_S3_IO_CHUNKSIZE",
    "DOWNLOADER_ALLOW_FILE_SUFFIX",
    "DOWNLOADER_FORCE_DOWNLOAD",
    "DOWNLOADER_CHECK_FILE_EXIST",
    "DOWNLOADER_TOS_VERSION",
)
# The fields of AIBrix's DownloadExtraConfig, i.e. what --download-extra-config takes.
EXTRA_CONFIG_KEYS = frozenset(
    {
        "ak",
        "sk",
        "endpoint",
        "region",
        "hf_endpoint",
        "hf_token",
        "hf_revision",
        "num_threads",
        "max_io_queue",
        "io_chunksize",
        "part_threshold",
        "part_chunksize",
        "allow_file_suffix",
        "force_download",
    }
)
_TRUE = {"1", "ON", "YES", "TRUE"}  # AIBrix's own spelling of true; anything else is false
_CACHE_DIR = ".cache/{source}/download"


@dataclass(frozen=True, kw_only=True)
class DownloaderSettings:
    """AIBrix's downloader settings; ``None`` means "not set", so modelpull's default applies."""

    local_dir: str = DEFAULT_LOCAL_DIR
    num_threads: int | None = None
    part_threshold: int | None = None
    part_chunksize: int | None = None
    max_io_queue: int | None = None
    io_chunksize: int | None = None
    allow_file_suffix: tuple[str, ...] | None = None
    force_download: bool = False
    check_file_exist: bool = True
    tos_version: str = "v2"
    ak: str | None = None
    sk: str | None = None
    endpoint: str | None = None
    region: str | None = None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{name}: invalid integer {text!r}") from None


def _extra_int(extra: Mapping[str, Any], name: str) -> int | None:
    value = extra.get(name)
    if not value:  # AIBrix's "extra or env": 0 and None fall through alike
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"--download-extra-config {name} must be an integer, not {value!r}")
    return value


def _extra_str(extra: Mapping[str, Any], name: str) -> str | None:
    """A text value of the extra config, ``None`` when falsy (AIBrix's "extra or env").

    Anything else is a usage error here rather than an AttributeError or a botocore
    assertion once the value reaches a client."""
    value = extra.get(name)
    if not value:
        return None
    if not isinstance(value, str):
        # The type only: the value may be a secret key in the wrong shape.
        kind = type(value).__name__
        raise UsageError(f"--download-extra-config {name} must be a string, not a {kind}")
    return value


def _suffixes(value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(s, str) for s in items):
        raise UsageError(f"allow_file_suffix must be a list of strings, not {value!r}")
    return tuple(str(s).strip() for s in items)


def settings_from_env(
    environ: Mapping[str, str] | None = None, extra_config: Mapping[str, Any] | None = None
) -> DownloaderSettings:
    """AIBrix's settings from ``DOWNLOADER_*`` and ``--download-extra-config``, read now.

    As in AIBrix, a value in ``extra_config`` wins when it is truthy. An unknown extra
    key is an error, as AIBrix's ``DownloadExtraConfig(**extra)`` makes it.
    """
    env = os.environ if environ is None else environ
    extra = dict(extra_config or {})
    unknown = sorted(set(extra) - EXTRA_CONFIG_KEYS)
    if unknown:
        raise UsageError(f"unknown --download-extra-config key(s): {', '.join(unknown)}")
    for name in ("hf_endpoint", "hf_token", "hf_revision"):
        if extra.get(name):
            warnings.warn(
                f"--download-extra-config {name} is not used: modelpull pulls from S3 and TOS, "
                "not from Hugging Face",
                CompatWarning,
                stacklevel=2,
            )

    def pick(name: str, var: str) -> int | None:
        return _extra_int(extra, name) or _env_int(env, var)

    suffix_value = extra.get("allow_file_suffix") or env.get("DOWNLOADER_ALLOW_FILE_SUFFIX")
    return DownloaderSettings(
        local_dir=env.get("DOWNLOADER_LOCAL_DIR") or DEFAULT_LOCAL_DIR,
        num_threads=pick("num_threads", "DOWNLOADER_NUM_THREADS"),
        part_threshold=pick("part_threshold", "DOWNLOADER_PART_THRESHOLD"),
        part_chunksize=pick("part_chunksize", "DOWNLOADER_PART_CHUNKSIZE"),
        max_io_queue=pick("max_io_queue", "DOWNLOADER_S3_MAX_IO_QUEUE"),
        io_chunksize=pick("io_chunksize", "DOWNLOADER_S3_IO_CHUNKSIZE"),
        allow_file_suffix=None if suffix_value is None else _suffixes(suffix_value),
        force_download=bool(extra.get("force_download"))
        or env.get("DOWNLOADER_FORCE_DOWNLOAD", "0").upper() in _TRUE,
        check_file_exist=env.get("DOWNLOADER_CHECK_FILE_EXIST", "1").upper() in _TRUE,
        tos_version=env.get("DOWNLOADER_TOS_VERSION") or "v2",
        ak=_extra_str(extra, "ak"),
        sk=_extra_str(extra, "sk"),
        endpoint=_extra_str(extra, "endpoint"),
        region=_extra_str(extra, "region"),
    )


@dataclass(frozen=True)
class AibrixPull:
    """How modelpull pulls what AIBrix's downloader was asked for: the resolved target
    (close it, or use it in a ``with`` block), and whether to force.

    ``force`` also means AIBrix's ``.metadata`` files are not trusted to skip a file.
    """

    target: Target
    force: bool


def _warn(message: str) -> None:
    warnings.warn(message, CompatWarning, stacklevel=3)


def _tuning(settings: DownloaderSettings) -> dict[str, Any]:
    """The transfer fields the settings set, each clamped into modelpull's range."""
    values: dict[str, Any] = {}
    if settings.num_threads is not None:
        threads = min(max(settings.num_threads, 1), MAX_CONCURRENCY)
        if threads != settings.num_threads:
            _warn(f"DOWNLOADER_NUM_THREADS={settings.num_threads} is out of range; using {threads}")
        values["concurrency"] = threads
    part_size = PullConfig().part_size
    if settings.part_chunksize is not None:
        part_size = max(settings.part_chunksize, MIN_PART_SIZE)
        if part_size != settings.part_chunksize:
            _warn(
                f"DOWNLOADER_PART_CHUNKSIZE={settings.part_chunksize} is below modelpull's "
                "minimum part size; using 1MiB"
            )
        values["part_size"] = part_size
    if settings.part_threshold is not None and settings.part_threshold != part_size:
        _warn(
            f"DOWNLOADER_PART_THRESHOLD={settings.part_threshold} is not honoured on its own: "
            f"modelpull fetches a file in one request exactly when it is at most the part "
            f"size ({part_size} bytes, DOWNLOADER_PART_CHUNKSIZE)"
        )
    if settings.io_chunksize is not None:
        chunk = min(max(settings.io_chunksize, 4096), part_size)
        if chunk != settings.io_chunksize:
            _warn(
                f"DOWNLOADER_S3_IO_CHUNKSIZE={settings.io_chunksize} must lie between 4KiB and "
                f"the part size; using {chunk}"
            )
        values["io_chunk_size"] = chunk
    if settings.max_io_queue is not None:
        _warn(
            f"DOWNLOADER_S3_MAX_IO_QUEUE={settings.max_io_queue} has no equivalent: modelpull "
            "has no I/O queue (each request writes its own bytes at their offset), so memory "
            "is bounded by concurrency x DOWNLOADER_S3_IO_CHUNKSIZE instead"
        )
    return values


def to_pull(
    settings: DownloaderSettings, uri: ObjectURI, environ: Mapping[str, str] | None = None
) -> AibrixPull:
    """The target (config, credentials) and force flag for pulling ``uri`` with AIBrix's
    settings; the target is resolved, as every pull's is, by :func:`modelpull.resolve.resolve`.

    Connection settings come from where AIBrix takes them: ``--download-extra-config``
    first, then ``TOS_*`` for ``tos://`` or ``AWS_*`` for ``s3://``. AIBrix's S3 client
    is virtual-hosted, so addressing is ``virtual`` unless ``MODELPULL_ADDRESSING_STYLE``
    says otherwise.
    """
    env = os.environ if environ is None else environ
    values = _tuning(settings)
    values["endpoint_url"] = settings.endpoint
    values["region"] = settings.region
    if "MODELPULL_ADDRESSING_STYLE" not in env:
        values["addressing_style"] = "virtual"
    if settings.ak and settings.sk:
        credentials: Credentials | None = Credentials(settings.ak, settings.sk)
    elif settings.ak or settings.sk:
        raise UsageError("--download-extra-config ak and sk go together: pass both or neither")
    else:
        credentials = None
    force = settings.force_download or not settings.check_file_exist
    if force:
        values["force"] = True
    target = resolve(uri, credentials=credentials, overrides=values, environ=env)
    return AibrixPull(target=target, force=force)


def suffix_globs(suffixes: Sequence[str]) -> list[str]:
    """Include globs that keep what AIBrix's ``file.endswith(suffix)`` keeps."""
    # "*" crosses "/" in modelpull's globs, so "*json" is exactly endswith("json").
    return [f"*{glob.escape(suffix)}" for suffix in suffixes]


def infer_model_name(uri: str) -> str:
    """AIBrix's default ``--model-name``: the URI's last path segment."""
    name = uri.strip().strip("/").rsplit("/", 1)[-1]
    if not name:
        raise UsageError(f"cannot infer a model name from {uri!r}: pass --model-name")
    return name


def model_dir(local_dir: str | os.PathLike[str], model_name: str) -> Path:
    """Where AIBrix puts a model's files: ``<local_dir>/<model_name>``."""
    return Path(local_dir) / model_name


@dataclass(frozen=True)
class AibrixCache:
    """AIBrix's per-file lock and metadata files under ``<model dir>/.cache/<source>/download``.

    ``source`` is ``s3`` or ``tos``, as AIBrix names its sources.
    """

    model_dir: Path
    source: str

    @property
    def folder(self) -> Path:
        return self.model_dir / _CACHE_DIR.format(source=self.source)

    def lock_path(self, path: str) -> Path:
        return self.folder / f"{path}.lock"

    def metadata_path(self, path: str) -> Path:
        return self.folder / f"{path}.metadata"

    def is_complete(self, path: str, size: int, etag: str) -> bool:
        """AIBrix's test: the file has ``size`` bytes and its metadata holds ``etag``.

        Like AIBrix, an empty file or one without an ETag never counts as complete.
        """
        if size <= 0 or not etag:
            return False
        # Never through a link inside the model folder (see modelpull.safefs): one there
        # is refused, anything else unreadable is "not complete".
        st = safefs.lstat(self.model_dir, self.model_dir / path)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return False
        try:
            data = safefs.read_bytes(self.model_dir, self.metadata_path(path))
            recorded = data.decode("utf-8") if data is not None else ""
        except UnsafePathError:
            raise
        except (OSError, UnicodeDecodeError):
            return False
        # boto3 reports the ETag quoted, the TOS SDK bare: either spelling is the same.
        return recorded.strip().strip('"') == etag.strip('"')

    def mark_complete(self, path: str, etag: str, *, quoted: bool = True) -> None:
        """Write the metadata AIBrix writes after a download, so AIBrix skips the file too.

        ``quoted`` matches boto3's ETag spelling (AIBrix's S3 and TOS v2 downloaders);
        the TOS SDK (TOS v1) strips the quotes.
        """
        bare = etag.strip('"')
        data = (f'"{bare}"' if quoted else bare).encode()
        safefs.write_atomic(self.model_dir, self.metadata_path(path), data)

    def checked_lock_path(self, path: str) -> Path:
        """:meth:`lock_path`, its folders made inside the model folder and no link there."""
        lock = self.lock_path(path)
        safefs.check_file(self.model_dir, lock, key=path)
        return lock

    def etag_quoted(self, tos_version: str) -> bool:
        """Whether AIBrix would have written this source's ETags with quotes."""
        return not (self.source == "tos" and tos_version == "v1")
