"""modelpull: pull model folders from S3-compatible object stores, fast and never half-written.

>>> import modelpull
>>> result = modelpull.pull("s3://bucket/models/llama/", "/models/llama")  # doctest: +SKIP
"""

from modelpull._version import __version__
from modelpull.api import list_objects, pull, pull_files
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.errors import (
    AccessDeniedError,
    BackendUnavailableError,
    BucketNotFoundError,
    ClusterError,
    DeadlineExceededError,
    DestinationError,
    DiskFullError,
    EndpointError,
    IntegrityError,
    InterruptedPullError,
    InvalidURIError,
    ModelPullError,
    NotFoundError,
    ObjectChangedError,
    ObjectNotFoundError,
    RetriesExhaustedError,
    StoreError,
    TransientStoreError,
    UnsafePathError,
    UsageError,
)
from modelpull.objects import ObjectInfo, RemoteFile
from modelpull.resolve import Target, resolve
from modelpull.results import FileOutcome, PullResult

__all__ = [
    "AccessDeniedError",
    "BackendUnavailableError",
    "BucketNotFoundError",
    "ClusterError",
    "Credentials",
    "DeadlineExceededError",
    "DestinationError",
    "DiskFullError",
    "EndpointError",
    "FileOutcome",
    "IntegrityError",
    "InterruptedPullError",
    "InvalidURIError",
    "ModelPullError",
    "NotFoundError",
    "ObjectChangedError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "PullConfig",
    "PullResult",
    "RemoteFile",
    "RetriesExhaustedError",
    "StoreError",
    "Target",
    "TransientStoreError",
    "UnsafePathError",
    "UsageError",
    "__version__",
    "list_objects",
    "pull",
    "pull_files",
    "resolve",
]
