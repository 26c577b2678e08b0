"""modelpull: pull model folders from S3-compatible object stores, fast and never half-written.

>>> import modelpull
>>> result = modelpull.pull("s3://bucket/models/llama/", "/models/llama")  # doctest: +SKIP
>>> folder = modelpull.snapshot("s3://bucket/models/llama/")  # doctest: +SKIP
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
    NothingSelectedError,
    ObjectChangedError,
    ObjectNotFoundError,
    RetriesExhaustedError,
    StoreError,
    TransientStoreError,
    UnsafePathError,
    UsageError,
)
from modelpull.objects import ObjectInfo, RemoteFile
from modelpull.preview import PullPreview, preview
from modelpull.resolve import Target, resolve
from modelpull.results import FileOutcome, PullResult
from modelpull.snapshot import snapshot

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
    "NothingSelectedError",
    "ObjectChangedError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "PullConfig",
    "PullPreview",
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
    "preview",
    "pull",
    "pull_files",
    "resolve",
    "snapshot",
]
