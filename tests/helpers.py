"""Test helpers shared by the suite.

- :class:`S3Store`: one local S3 server (moto or rclone) and ways to use it.
- :func:`isolated_env`: an environment for a subprocess that the developer's shell
  cannot change (``S3Store.env`` builds on it).
- :func:`run_cli` and :func:`start_cli`: ``python -m modelpull ...`` in a subprocess
  (:func:`run_command` for any other command line).
- :func:`tree`: what a pull left under its final names.
- :func:`free_port`, :func:`parts_done`, :func:`wait_until`: for tests that drive
  processes from outside.
- :data:`rclone_slow`: a ``store`` test's rclone run left to the full suite.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from modelpull.config import PullConfig
from modelpull.credentials import Credentials

__all__ = [
    "CLI_TIMEOUT",
    "ISOLATED_PREFIXES",
    "MOTO_CREDENTIALS",
    "REGION",
    "S3Store",
    "cli_command",
    "flip_keeping_mtime",
    "free_port",
    "isolated_env",
    "parts_done",
    "rclone_slow",
    "run_cli",
    "run_command",
    "self_signed",
    "start_cli",
    "tree",
    "upload_in_parts",
    "wait_until",
]

# Variables that would let a developer's shell change a result; conftest removes them.
ISOLATED_PREFIXES = ("AWS_", "TOS_", "MODELPULL_", "DOWNLOADER_")
# moto checks no signature: any pair works, as long as it is always the same.
MOTO_CREDENTIALS = Credentials(access_key="modelpull-test", secret_key="modelpull-test-secret")
REGION = "us-east-1"
# Seconds a CLI subprocess may take before the test fails instead of hanging.
CLI_TIMEOUT = 120.0

# For a test of ``store`` whose path rclone takes as moto does (nothing in it depends on
# how the server stores, lists or checksums): the fast lane runs it on moto, the full
# suite on both. It parametrizes ``store`` in place of the fixture's own two params.
rclone_slow = pytest.mark.parametrize(
    "store", ["moto", pytest.param("rclone", marks=pytest.mark.slow)], indirect=True
)


def isolated_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without ``AWS_*``/``TOS_*``/``MODELPULL_*``/``DOWNLOADER_*``,
    with AWS config files that lead nowhere and no EC2 metadata lookups; then ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(ISOLATED_PREFIXES)}
    return (
        base
        | {
            # conftest points these at files that do not exist; outside a test, at nothing.
            "AWS_CONFIG_FILE": os.environ.get("AWS_CONFIG_FILE", os.devnull),
            "AWS_SHARED_CREDENTIALS_FILE": os.environ.get(
                "AWS_SHARED_CREDENTIALS_FILE", os.devnull
            ),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        | dict(extra or {})
    )


class S3Store:
    """A local S3 server (``name`` is ``"moto"`` or ``"rclone"``) and ways to use it."""

    def __init__(self, name: str, endpoint_url: str, credentials: Credentials) -> None:
        self.name = name
        self.endpoint_url = endpoint_url
        self.credentials = credentials

    def __repr__(self) -> str:
        return f"S3Store({self.name!r}, {self.endpoint_url!r})"

    @functools.cached_property
    def _client(self) -> Any:
        return self.client_with(self.credentials)

    def client(self) -> Any:
        """A boto3 S3 client for this server (shared; boto3 clients are thread-safe)."""
        return self._client

    def client_with(self, credentials: Credentials) -> Any:
        """A new boto3 S3 client signing with ``credentials`` (to test refusals)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
            aws_session_token=credentials.token,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                # Plain requests: no aws-chunked uploads or checksum trailers, which
                # only some servers speak, and no validation of what we did not ask for.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a fresh name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self._client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=bucket, Key=key, Body=data)

    def put_tree(self, bucket: str, prefix: str, files: dict[str, bytes]) -> list[str]:
        """Upload ``files`` (relative path -> bytes) under ``prefix``; return the keys."""
        keys = []
        for relative, data in files.items():
            key = posixpath.join(prefix, relative)
            self.put(bucket, key, data)
            keys.append(key)
        return keys

    def env(self) -> dict[str, str]:
        """Environment for running the CLI in a subprocess against this server."""
        return isolated_env(
            {
                "AWS_ACCESS_KEY_ID": self.credentials.access_key,
                "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url,
                "AWS_REGION": REGION,
                "MODELPULL_ADDRESSING_STYLE": "path",
            }
        )

    def config(self, **overrides: Any) -> PullConfig:
        """A :class:`PullConfig` for this server; ``overrides`` set other fields."""
        return PullConfig(endpoint_url=self.endpoint_url, addressing_style="path", **overrides)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but modelpull's own ``.modelpull`` folder, with its bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".modelpull" not in p.relative_to(root).parts
    }


def cli_command(*args: str, module: str = "modelpull") -> list[str]:
    """``python -m modelpull ARGS`` (or another ``module``) with this interpreter."""
    return [sys.executable, "-m", module, *args]


def run_command(
    argv: Sequence[str], env: Mapping[str, str], *, timeout: float = CLI_TIMEOUT, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with exactly ``env``; stdout and stderr captured as text.

    Never raises for an exit status (check ``returncode``); a run longer than
    ``timeout`` seconds raises :class:`subprocess.TimeoutExpired`. ``kwargs`` go to
    :func:`subprocess.run` (``stderr=`` a terminal, for instance).
    """
    options: dict[str, Any] = {"capture_output": True} | kwargs
    if "stdout" in kwargs or "stderr" in kwargs:
        options.pop("capture_output")
    return subprocess.run(
        list(argv), env=dict(env), text=True, timeout=timeout, check=False, **options
    )


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    module: str = "modelpull",
    prefix: Sequence[str] = (),
    timeout: float = CLI_TIMEOUT,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m modelpull ARGS`` with exactly ``env``: :func:`run_command`'s result.

    ``prefix`` goes before the interpreter (``["unshare", "-m", ...]``).
    """
    argv = [*prefix, *cli_command(*args, module=module)]
    return run_command(argv, env, timeout=timeout, **kwargs)


def start_cli(
    args: Sequence[str], env: Mapping[str, str], *, module: str = "modelpull"
) -> subprocess.Popen[str]:
    """Start ``python -m modelpull ARGS`` with exactly ``env``; stdout and stderr piped."""
    return subprocess.Popen(
        cli_command(*args, module=module),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def parts_done(dest: Path) -> int:
    """Parts recorded in the resume journals under ``dest`` (0 while none is readable)."""
    total = 0
    for journal in (dest / ".modelpull" / "incomplete").glob("*.journal"):
        # A journal being replaced may be gone or half-read: it counts next time.
        with contextlib.suppress(OSError, ValueError):
            total += len(json.loads(journal.read_text())["done"])
    return total


def wait_until(
    what: str,
    check: Callable[[], bool],
    procs: Iterable[subprocess.Popen[str]] = (),
    timeout: float = 60.0,
) -> None:
    """Poll ``check`` until it holds; fail if any of ``procs`` ends first, or on timeout."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while not check():
        for proc in procs:
            if proc.poll() is not None:
                output: object = "(output not readable)"
                with contextlib.suppress(ValueError, OSError, subprocess.TimeoutExpired):
                    output = proc.communicate(timeout=10)
                raise AssertionError(
                    f"a process ended (status {proc.returncode}) before {what}: {output}"
                )
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def upload_in_parts(
    store: S3Store, bucket: str, key: str, data: bytes, part: int, algorithm: str | None = None
) -> list[dict[str, Any]]:
    """Upload ``data`` to ``key`` in parts of ``part`` bytes (with ``algorithm``'s
    checksums, when given), as the AWS CLI and boto3 do; the parts as completed."""
    client = store.client()
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)
    parts = []
    for number, offset in enumerate(range(0, len(data), part), start=1):
        answer = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[offset : offset + part],
            **extra,
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]} | {
            k: v for k, v in answer.items() if k.startswith("Checksum")
        })  # fmt: skip
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    return parts


def flip_keeping_mtime(path: Path, offset: int) -> None:
    """Flip a bit of ``path`` at ``offset``, keeping its mtime: damage a record cannot see."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def self_signed(folder: Path, name: str = "cert") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key: ``folder/NAME.pem`` and
    ``folder/NAME.key``. No client trusts it unless given it as a CA bundle (it is its
    own CA), so it serves both an untrusted server and one behind ``--ca-bundle``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelpull-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
