"""The exceptions modelpull raises; the engine, the API and the CLI see only these.

Store errors (botocore's, and the TOS SDK's) are translated into this tree in exactly
one place per backend: :func:`modelpull.backends.boto3.translate` and the TOS backend's
twin, both over the shared tables in :mod:`modelpull.backends.errors`. Every class has
a stable exit code in :mod:`modelpull.cli`'s table.

::

    ModelPullError
    ├── UsageError (ValueError)               bad flag, config value or URI
    │   └── InvalidURIError
    ├── DestinationError (OSError)            DEST unusable: not a folder, not writable, ...
    │   ├── DiskFullError                     not enough free space, or ENOSPC mid-pull
    │   └── UnsafePathError                   a key that would land outside DEST (or that
    │                                         DEST cannot hold), a link planted in DEST
    ├── StoreError                            the object store said no, or could not be reached
    │   ├── NotFoundError (FileNotFoundError)
    │   │   ├── BucketNotFoundError
    │   │   └── ObjectNotFoundError           no such key, or nothing under a prefix
    │   │       └── NothingSelectedError      files listed, but the filters kept none
    │   ├── AccessDeniedError (PermissionError)   403, bad or missing credentials
    │   ├── EndpointError (ConnectionError)   endpoint unreachable, DNS, TLS, timeouts
    │   ├── ObjectChangedError                the object was replaced during the pull (412)
    │   ├── TransientStoreError               worth a retry: 5xx, throttling, reset, stall, ...
    │   │   └── RangeIgnoredError             a ranged GET answered with the whole object
    │   └── RetriesExhaustedError             a part failed every attempt of its budget
    ├── IntegrityError                        downloaded bytes do not match a store checksum
    ├── BackendUnavailableError (ImportError) an optional backend's package is not installed
    ├── ClusterError                          a cluster pull's ranks could not finish together
    ├── DeadlineExceededError                 the pull's --deadline passed; resumable state kept
    └── InterruptedPullError                  Ctrl-C or SIGTERM; resumable state was kept
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "BackendUnavailableError",
    "BucketNotFoundError",
    "ClusterError",
    "DeadlineExceededError",
    "DestinationError",
    "DiskFullError",
    "EndpointError",
    "IntegrityError",
    "InterruptedPullError",
    "InvalidURIError",
    "ModelPullError",
    "NotFoundError",
    "NothingSelectedError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "RangeIgnoredError",
    "RetriesExhaustedError",
    "StoreError",
    "TransientStoreError",
    "UnsafePathError",
    "UsageError",
]


class ModelPullError(Exception):
    """Root of every error modelpull raises on purpose."""


class UsageError(ModelPullError, ValueError):
    """A flag, config value or argument is invalid; the message says which and why."""


class InvalidURIError(UsageError):
    """A URI is not of the form ``s3://bucket[/key-or-prefix]`` (or ``tos://``)."""


class DestinationError(ModelPullError, OSError):
    """The destination folder cannot be used as asked; ``errno`` is kept when there is one."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class DiskFullError(DestinationError):
    """Not enough free space for the files to fetch."""


class UnsafePathError(DestinationError):
    """An object key that is absolute, has ``..``, would land outside DEST or names a path
    longer than DEST's file system allows; or a symlink, hard link or special file found
    where modelpull would write under DEST (see :mod:`modelpull.safefs`). ``key`` is the
    object's key, or ``""`` for a path of modelpull's own state folder."""

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(message)
        self.key = key


class StoreError(ModelPullError):
    """The object store refused a request or could not be reached.

    Attributes carry what a person needs to follow it up with the store's operator;
    none of them ever holds a credential.
    """

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.bucket = bucket
        self.key = key
        self.status = status
        self.code = code
        self.request_id = request_id
        # A short machine-readable cause ("reset", "timeout", "503", ...) used as the
        # retry-counter label; never free text.
        self.reason = reason

    def __str__(self) -> str:
        base = super().__str__()
        details = [
            f"{name}={value}"
            for name, value in (
                ("status", self.status),
                ("code", self.code),
                ("request_id", self.request_id),
            )
            if value is not None and f"{value}" not in base
        ]
        return f"{base} ({', '.join(details)})" if details else base


class NotFoundError(StoreError, FileNotFoundError):
    """A bucket, key or prefix does not exist."""


class BucketNotFoundError(NotFoundError):
    """The bucket does not exist."""


class ObjectNotFoundError(NotFoundError):
    """No object at the key, or no object under the prefix."""


class NothingSelectedError(ObjectNotFoundError):
    """The URI lists files, but ``--include``/``--exclude``/``--preset`` or a wildcard kept
    none of them (``allow_empty`` turns this into an empty, successful pull)."""


class AccessDeniedError(StoreError, PermissionError):
    """The store refused the credentials or the request (403 and kin)."""


class EndpointError(StoreError, ConnectionError):
    """The endpoint could not be reached or did not answer in time."""


class ObjectChangedError(StoreError):
    """The object's ETag changed while it was being pulled."""


class TransientStoreError(StoreError):
    """A failure that a later attempt may not see: 5xx, throttling, reset, short body.

    ``retry_after`` is the server's ``Retry-After`` in seconds, when it sent one.
    """

    retry_after: float | None = None


class RangeIgnoredError(TransientStoreError):
    """A ranged GET came back as ``200`` with the whole object: the store ignored ``Range``.

    Retried like any server fault (``reason`` ``"range_ignored"``); a store that never
    honours ``Range`` can still serve a GET of the whole object, without one.
    """


class RetriesExhaustedError(StoreError):
    """A request failed on every attempt allowed by the retry budget."""


class IntegrityError(ModelPullError):
    """The bytes received do not match a checksum the store published."""

    def __init__(
        self, message: str, *, path: str, algorithm: str, expected: str, actual: str
    ) -> None:
        super().__init__(message)
        self.path = path
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


class BackendUnavailableError(ModelPullError, ImportError):
    """The chosen backend needs an optional package that is not installed."""


class ClusterError(ModelPullError):
    """The cluster could not finish together; ``ranks`` names the ranks at fault, if known.

    A peer was lost with fallback off, or the ranks could not meet (rendezvous, store).
    """

    def __init__(self, message: str, *, ranks: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.ranks = ranks


class DeadlineExceededError(ModelPullError):
    """The pull's deadline (``deadline`` seconds from its start) passed before it finished.

    Requests in flight were abandoned; what was written is kept for resume.
    """

    def __init__(self, message: str, *, deadline: float) -> None:
        super().__init__(message)
        self.deadline = deadline


class InterruptedPullError(ModelPullError):
    """The pull was stopped by a signal; what was written is kept for resume."""

    def __init__(self, message: str, *, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
