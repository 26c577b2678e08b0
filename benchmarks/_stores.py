"""The stores the benchmarks pull from, all on loopback, each a context manager.

- :func:`rclone_store`: ``rclone serve s3`` over hard links to the model (MD5 ETags only),
  optionally over TLS with a CA of its own (:func:`make_tls`);
- :func:`rclone_crc64_store`: rclone, the model PUT through the S3 API with CRC-64/NVME
  checksums, which rclone then publishes as AWS S3 does;
- :func:`moto_multipart_store`: moto's server in a process of its own, large files
  uploaded in parts, so their ETags are multipart ETags (``<md5 of md5s>-<parts>``);
- :class:`LinkProxyProcess`: ``linkproxy.py`` in front of a store, with its CPU time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from _s3 import admin_client
from modelpull.demo import RcloneS3Server

__all__ = [
    "BUCKET",
    "LinkProxyProcess",
    "Store",
    "TlsFiles",
    "link_tree",
    "make_tls",
    "moto_multipart_store",
    "rclone_crc64_store",
    "rclone_store",
    "store_client",
    "upload_crc64",
]

HERE = Path(__file__).resolve().parent
BUCKET = "models"
MiB = 1 << 20
_MOTO_KEYS = ("bench-moto-key", "bench-moto-secret")
_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Store:
    """Where the arms connect, with what keys, trusting which CA (None: the default set)."""

    endpoint: str
    access_key: str
    secret_key: str
    ca_bundle: Path | None = None
    describe: str = ""


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def store_client(store: Store) -> Any:
    """The benchmark's own client for ``store`` (not one of the arms)."""
    return admin_client(store.endpoint, store.access_key, store.secret_key, store.ca_bundle)


def link_tree(source: Path, target: Path) -> None:
    """Hard links to every file of ``source`` under ``target`` (copies across devices).

    rclone does not follow symbolic links by default; hard links cost nothing and leave
    the bytes in the page cache where generation and hashing put them.
    """
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def _warm(store: Store, prefix: str) -> None:
    """List once: rclone reads every file to compute and cache its MD5 before timing."""
    client = store_client(store)
    for _page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        pass


@contextlib.contextmanager
def rclone_store(
    root: Path, model: Path, prefix: str, tls: TlsFiles | None = None
) -> Iterator[Store]:
    """rclone with its default MD5 ETags and nothing else, serving ``model`` at ``prefix``."""
    link_tree(model, root / BUCKET / prefix.rstrip("/"))
    cert = tls.cert if tls else None
    key = tls.key if tls else None
    with RcloneS3Server(root, cert=cert, key=key) as server:
        keys = server.credentials
        store = Store(
            server.endpoint_url,
            keys.access_key,
            keys.secret_key,
            tls.ca if tls else None,
            "rclone serve s3, MD5 ETags" + (", TLS (own CA)" if tls else ""),
        )
        _warm(store, prefix)
        yield store


def upload_crc64(store: Store, model: Path, prefix: str) -> None:
    """PUT each file with a CRC-64/NVME checksum, as AWS S3 stores one for every new
    object: rclone then publishes it (and its MD5 ETag) on HEAD and GET.

    rclone keeps checksums sent with a PUT in memory only, so this is redone each time
    the server starts instead of serving the files from disk.
    """
    client = store_client(store)
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        with path.open("rb") as body:
            client.put_object(
                Bucket=BUCKET,
                Key=prefix + path.relative_to(model).as_posix(),
                Body=body,
                ChecksumAlgorithm="CRC64NVME",
            )


@contextlib.contextmanager
def rclone_crc64_store(root: Path, model: Path, prefix: str) -> Iterator[Store]:
    """rclone serving ``model`` uploaded with CRC-64/NVME checksums (AWS-like)."""
    (root / BUCKET).mkdir(parents=True)
    with RcloneS3Server(root) as server:
        keys = server.credentials
        store = Store(
            server.endpoint_url,
            keys.access_key,
            keys.secret_key,
            describe="rclone serve s3, MD5 ETags + CRC64NVME (PUT with the checksum)",
        )
        print("uploading the model with CRC64NVME checksums", file=sys.stderr)
        upload_crc64(store, model, prefix)
        _warm(store, prefix)
        yield store


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at startup with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {_START_TIMEOUT:g} s")


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def moto_multipart_store(model: Path, prefix: str, part_size: int, logs: Path) -> Iterator[Store]:
    """moto with every file over ``part_size`` uploaded in parts of ``part_size``.

    moto runs as its own process (its ``moto_server`` script: the werkzeug server that
    ``ThreadedMotoServer`` runs in a thread), so it does not share the benchmark's GIL.
    """
    port = _free_port()
    server = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with (logs / "moto.log").open("wb") as log:
        proc = subprocess.Popen(server, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        _wait_listening(port, proc, "moto_server")
        store = Store(
            f"http://127.0.0.1:{port}",
            *_MOTO_KEYS,
            describe=f"moto server, files over {part_size // MiB} MiB in {part_size // MiB} MiB "
            "parts (multipart ETags)",
        )
        client = store_client(store)
        client.create_bucket(Bucket=BUCKET)
        config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
        print(f"uploading the model to moto in {part_size // MiB} MiB parts", file=sys.stderr)
        for path in sorted(p for p in model.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(model).as_posix()
            client.upload_file(str(path), BUCKET, key, Config=config)
        yield store
    finally:
        _stop(proc)


class LinkProxyProcess:
    """``linkproxy.py`` as a process in front of ``upstream``; :meth:`cpu_seconds` is its
    user + system CPU so far (from ``/proc``), to show it is not the bottleneck."""

    def __init__(
        self, upstream: str, rtt_ms: float, rate: str, total_rate: str | None, logs: Path
    ) -> None:
        host_port = upstream.split("://", 1)[1]
        command = [sys.executable, str(HERE / "linkproxy.py"), "--upstream", host_port]
        command += ["--rtt-ms", str(rtt_ms)]
        if rate.lower() not in ("none", "0"):
            command += ["--rate", rate]
        if total_rate:
            command += ["--total-rate", total_rate]
        self.command = command
        self._err = (logs / "linkproxy.err").open("wb")
        self._proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._err
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().decode().split()
        if line[:1] != ["listening"]:
            self.close()
            raise RuntimeError(f"linkproxy did not start: {line}")
        self.url = f"{upstream.split('://', 1)[0]}://{line[1]}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        _stop(self._proc)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._err.close()


def make_tls(folder: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 signed by it (ECDSA P-256, 2 days).

    With the ``cryptography`` package when it is installed, else the ``openssl`` CLI.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _make_tls_openssl(folder, files)
    else:
        _make_tls_cryptography(files)
    return files


def _make_tls_cryptography(files: TlsFiles) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelpull bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _make_tls_openssl(folder: Path, files: TlsFiles) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the TLS scenario needs the cryptography package or openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_key = folder / "ca.key"
    csr = folder / "cert.csr"
    ext = folder / "cert.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    ca_args = ["-days", "2", "-subj", "/CN=modelpull bench CA"]
    ca_args += ["-addext", "basicConstraints=critical,CA:TRUE,pathlen:0"]
    sign = ["-CA", str(files.ca), "-CAkey", str(ca_key), "-CAcreateserial", "-extfile", str(ext)]
    leaf = ["-keyout", str(files.key), "-out", str(csr), "-subj", "/CN=127.0.0.1"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(files.ca), *ca_args],
        [openssl, "req", *ec, *leaf],
        [openssl, "x509", "-req", "-in", str(csr), *sign, "-out", str(files.cert), "-days", "2"],
    ]
    for step in steps:
        subprocess.run(step, check=True, capture_output=True)
