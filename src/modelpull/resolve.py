"""From a URI and whatever the caller gave to a :class:`Target`: the one resolve step.

Every entry point (:func:`modelpull.pull`, :func:`modelpull.list_objects`,
:func:`modelpull.pull_files`, the CLI, the cluster pull, the AIBrix drop-in) calls
:func:`resolve` once, and only here are the environment, the ``TOS_*`` variables and the
store's endpoint conventions applied:

1. the config: the fields the caller's config was given (:attr:`PullConfig.given`), the
   environment read now for every other field, and keyword ``overrides`` (CLI flags) on
   top: a config built with some keywords keeps the environment's endpoint, exactly as
   the CLI keeps it when some flags are given;
2. for ``tos://``: ``TOS_ENDPOINT``/``TOS_REGION`` rank below ``MODELPULL_*`` and above
   ``AWS_*`` (a config passed in keeps what it sets); with no endpoint the region's
   public one is used; the region is read from a TOS host name; ``auto`` addressing
   becomes ``virtual`` (TOS's S3 endpoints serve virtual-hosted requests);
3. the endpoint in the form the backend speaks: S3 hosts for ``boto3``, TOS's native
   hosts for ``tos-sdk`` (:func:`~modelpull.uri.to_s3_endpoint`,
   :func:`~modelpull.uri.to_native_endpoint`);
4. credentials: the caller's, else for ``tos://`` ``TOS_ACCESS_KEY``/``TOS_SECRET_KEY``
   unless a profile was named or requests go unsigned (``no_sign_request``), else
   ``None`` (boto3's chain);
5. the backend: the caller's (never closed here), else one made from the config when
   first used and closed with the target.

Resolving is idempotent: a config that came out of it comes out again unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modelpull.backends import Backend, make_backend
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import UsageError
from modelpull.uri import (
    ObjectURI,
    endpoint_for_region,
    parse_uri,
    region_from_endpoint,
    to_native_endpoint,
    to_s3_endpoint,
)

if TYPE_CHECKING:
    from modelpull.keywords import SourceKeywords

__all__ = [
    "TOS_ENV",
    "Target",
    "credentials_from_env",
    "resolve",
    "resolve_config",
    "resolved",
]

TOS_ENV = ("TOS_ACCESS_KEY", "TOS_SECRET_KEY", "TOS_SECURITY_TOKEN", "TOS_ENDPOINT", "TOS_REGION")
# For tos:// URIs: (config field, TOS variable). Each ranks just below the field's own
# MODELPULL_* variable, above the AWS_* ones the field also reads.
_TOS_FIELDS = (("endpoint_url", "TOS_ENDPOINT"), ("region", "TOS_REGION"))


@dataclass(eq=False)
class Target:
    """A resolved URI: where to pull from, with which config, keys and backend.

    Made by :func:`resolve`. Whoever resolves a target closes it (or uses it in a
    ``with`` block): that closes the backend it made, never one passed in.
    """

    uri: ObjectURI
    config: PullConfig
    credentials: Credentials | None = field(repr=False)
    given_backend: Backend | None = field(default=None, repr=False)
    _opened: Backend | None = field(default=None, init=False, repr=False)

    @property
    def bucket(self) -> str:
        return self.uri.bucket

    @property
    def backend_name(self) -> str:
        """The backend's name, without making one (for labels set before the pull)."""
        if self.given_backend is not None:
            return self.given_backend.name
        return self._opened.name if self._opened is not None else self.config.backend

    @property
    def backend(self) -> Backend:
        """The caller's backend, else one made from the config on first use."""
        return self.open()

    def open(self) -> Backend:
        """:attr:`backend`, made now if it is to be made: a bad setting fails here."""
        if self.given_backend is not None:
            return self.given_backend
        if self._opened is None:
            self._opened = make_backend(self.config, self.credentials, scheme=self.uri.scheme)
        return self._opened

    def close(self) -> None:
        """Close the backend this target made, if it made one."""
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def credentials_from_env(environ: Mapping[str, str] | None = None) -> Credentials | None:
    """``TOS_ACCESS_KEY``/``TOS_SECRET_KEY`` (and ``TOS_SECURITY_TOKEN``), or ``None``.

    ``None`` leaves credentials to boto3's chain. One key without the other is refused
    rather than half-used.
    """
    env = os.environ if environ is None else environ
    access, secret = env.get("TOS_ACCESS_KEY", ""), env.get("TOS_SECRET_KEY", "")
    if not access and not secret:
        return None
    if not access or not secret:
        missing = "TOS_SECRET_KEY" if access else "TOS_ACCESS_KEY"
        raise UsageError(f"{missing} is not set: TOS_ACCESS_KEY and TOS_SECRET_KEY go together")
    return Credentials(access, secret, env.get("TOS_SECURITY_TOKEN") or None)


def _from_env(scheme: str, env: Mapping[str, str], given: dict[str, Any]) -> PullConfig:
    values: dict[str, Any] = {}
    if scheme == "tos":
        envs = {f.name: f.metadata["env"] for f in dataclasses.fields(PullConfig)}
        for name, variable in _TOS_FIELDS:
            if envs[name][0] not in env and env.get(variable):
                values[name] = env[variable]
    return PullConfig.from_env(env, **(values | given))


def _for_tos(config: PullConfig, env: Mapping[str, str]) -> PullConfig:
    """TOS's endpoint, region and addressing, where ``config`` leaves them to TOS."""
    endpoint = config.endpoint_url or env.get("TOS_ENDPOINT") or None
    region = config.region or env.get("TOS_REGION") or None
    if endpoint is None and region is None:
        raise UsageError(
            "a tos:// URI needs an endpoint: set TOS_ENDPOINT (e.g. tos-cn-beijing.volces.com) "
            "or TOS_REGION, or pass --endpoint-url"
        )
    endpoint = endpoint or endpoint_for_region(str(region))
    region = region or region_from_endpoint(endpoint)
    style = "virtual" if config.addressing_style == "auto" else config.addressing_style
    return dataclasses.replace(config, endpoint_url=endpoint, region=region, addressing_style=style)


def resolve_config(
    scheme: str,
    config: PullConfig | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PullConfig:
    """The effective config for a URI of ``scheme``: steps 1 to 3 of this module's list.

    ``overrides`` (those not ``None``) win over ``config`` or the environment, as CLI
    flags do. ``environ`` defaults to :data:`os.environ`, read now.
    """
    env = os.environ if environ is None else environ
    given = {name: value for name, value in (overrides or {}).items() if value is not None}
    kept = config.given_values() if config is not None else {}
    config = _from_env(scheme, env, kept | given)
    if scheme == "tos":
        config = _for_tos(config, env)
    if config.endpoint_url:
        native = config.backend == "tos-sdk"
        speak = to_native_endpoint if native else to_s3_endpoint
        config = dataclasses.replace(config, endpoint_url=speak(config.endpoint_url))
    return config


def resolve(
    uri: str | ObjectURI,
    config: PullConfig | None = None,
    credentials: Credentials | None = None,
    backend: Backend | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Target:
    """Resolve ``uri`` for a pull or a listing (see the module's steps); no request is made.

    ``config`` defaults to the environment, read now (``environ``, default
    :data:`os.environ`); ``overrides`` go on top. ``backend``, when given, is used as it
    is and stays the caller's to close. Raises :class:`~modelpull.errors.InvalidURIError`
    or :class:`~modelpull.errors.UsageError`.
    """
    parsed = parse_uri(uri) if isinstance(uri, str) else uri
    env = os.environ if environ is None else environ
    cfg = resolve_config(parsed.scheme, config, overrides=overrides, environ=env)
    # A named profile (--profile) is a request for boto3's chain: TOS_* keys stand back.
    if (
        credentials is None
        and parsed.scheme == "tos"
        and cfg.profile is None
        and not cfg.no_sign_request
    ):
        credentials = credentials_from_env(env)
    return Target(uri=parsed, config=cfg, credentials=credentials, given_backend=backend)


@contextmanager
def resolved(uri: str | Target, given: SourceKeywords) -> Iterator[Target]:
    """The target for one call of a public function, from its URI and the ``config``,
    ``credentials`` and ``backend`` keywords it was ``given``: ``uri`` itself when it is
    one (its resolver closes it), else one resolved now and closed when the block ends."""
    config, credentials, backend = (
        given.get("config"),
        given.get("credentials"),
        given.get("backend"),
    )
    if isinstance(uri, Target):
        if config is not None or credentials is not None or backend is not None:
            raise UsageError(
                "a Target already holds its config, credentials and backend: pass them to "
                "resolve(), not with the target"
            )
        yield uri
        return
    with resolve(uri, config, credentials, backend) as target:
        yield target
