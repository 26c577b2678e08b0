"""``snapshot(uri) -> Path``: huggingface_hub's ``snapshot_download`` shape on modelpull.

It returns the local folder, pulling into a cache by default: ``MODELPULL_CACHE``, else
``$XDG_CACHE_HOME/modelpull``, else ``~/.cache/modelpull``. Below the cache root a
model lives where its keys say, ``<root>/<scheme>/<bucket>/<key>``, so
``snapshot("s3://models/llama-3-8b/")`` is ``~/.cache/modelpull/s3/models/llama-3-8b``
and a second call fetches nothing (the folder's records say what is complete). A URI
naming one object exactly pulls into the folder that holds its key, and returns that
folder.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from modelpull.api import pull_files, select_files
from modelpull.keywords import PullKeywords, accept
from modelpull.plan import is_exact, list_remote, safe_relpath
from modelpull.resolve import Target, resolved
from modelpull.retry import RetryPolicy
from modelpull.uri import ObjectURI

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CACHE_ENV", "cache_folder", "cache_root", "snapshot"]

CACHE_ENV = "MODELPULL_CACHE"


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """``MODELPULL_CACHE``, else ``$XDG_CACHE_HOME/modelpull``, else ``~/.cache/modelpull``
    (``environ`` defaults to :data:`os.environ`, read now)."""
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "modelpull"
    return Path("~/.cache/modelpull").expanduser()


def cache_folder(uri: ObjectURI, *, exact: bool, root: Path) -> Path:
    """Where :func:`snapshot` pulls ``uri`` under ``root`` (``exact``: the URI names one
    object, which lands in the folder holding its key)."""
    wildcard = None if exact else uri.wildcard
    if wildcard is not None:
        key = wildcard[0]
    elif exact:
        key = uri.key.rpartition("/")[0]
    else:
        key = uri.key
    folder = root / uri.scheme / uri.bucket
    key = key.strip("/")
    # Keys are untrusted: the same checks as for any path below DEST.
    return folder / safe_relpath(key, "") if key else folder


def snapshot(
    uri: str | Target,
    dest: str | os.PathLike[str] | None = None,
    *,
    progress: bool | None = None,
    environ: Mapping[str, str] | None = None,
    **kwargs: Unpack[PullKeywords],
) -> Path:
    """Pull ``uri`` and return the local folder that holds it.

    ``dest`` (a folder) defaults to :func:`cache_folder` under :func:`cache_root`.
    ``progress`` defaults to on when stderr is a terminal. The keywords are
    :func:`modelpull.pull`'s; files already complete are skipped, so calling it again is
    cheap. Raises :class:`~modelpull.errors.ModelPullError` subclasses only.
    """
    accept("snapshot", kwargs, PullKeywords)
    show = sys.stderr.isatty() if progress is None else progress
    with resolved(uri, kwargs) as target:
        policy = RetryPolicy.from_config(target.config)
        listed = policy.call(lambda: list_remote(target.backend, target.uri))
        folder = (
            Path(dest)
            if dest is not None
            else cache_folder(
                target.uri, exact=is_exact(target.uri, listed), root=cache_root(environ)
            )
        )
        files = select_files(listed, target, kwargs)
        pull_files(
            target,
            files,
            folder,
            observers=kwargs.get("observers", ()),
            registry=kwargs.get("registry"),
            progress=show,
        )
    return folder
