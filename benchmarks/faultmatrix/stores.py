"""The matrix's servers, all on loopback, and the objects the cells download.

::

    S3 tools  ─▶ cell's FaultProxy ─▶ rclone serve s3 (signed) ──┐
                                                                  ├─ ROOT/matrix/m/<cell>.bin
    TOS tools ─▶ cell's FaultProxy ─▶ TosFront ─▶ rclone (anon.) ─┘

Every cell has an object of its own (the same bytes; a hard link, except where the
cell replaces it), written before the servers start, since rclone caches listings. The
TOS side is ``tests/tosfront.py``'s stand-in in custom-domain mode: its bucket is the
folder ``ROOT/matrix``, so ``m/<cell>.bin`` is rclone's bucket ``m``, key ``<cell>.bin``.
Both stores publish ``x-tos-hash-crc64ecma`` on HEAD, as TOS does on either endpoint.

:class:`UntrustedTls` is a TLS endpoint whose certificate nobody trusts, one per cell,
counting the handshakes tried on it.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from tests.tosfront import TosFront, tos_stand_in

from modelpull.checksums import CRC_KINDS
from modelpull.credentials import Credentials
from modelpull.demo.rclone import RcloneS3Server

__all__ = [
    "BUCKET",
    "OBJECT_SIZE",
    "REGION",
    "Stores",
    "UntrustedTls",
    "crc64",
    "refused_endpoint",
]

MiB = 1 << 20
# Over boto3's 8 MiB multipart threshold (two ranged GETs), under the TOS SDK's 20 MiB
# part and modelpull's 32 MiB part (one GET each): every tool at its defaults.
OBJECT_SIZE = 9 * MiB + 4321
BUCKET = "matrix"
FOLDER = "m"
REGION = "cn-beijing"


def crc64(data: bytes) -> str:
    """The CRC-64/XZ TOS publishes, as text."""
    kind = CRC_KINDS["crc64ecma"]
    return kind.encode(kind.compute(data))


def _admin(endpoint: str, credentials: Credentials) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=credentials.access_key,
        aws_secret_access_key=credentials.secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


class Stores:
    """Both stores over one folder, with an object of ``size`` bytes for each of
    ``names``; ``changing`` names the objects a cell replaces (real copies, not links).
    """

    def __init__(
        self,
        work: Path,
        names: Iterable[str],
        changing: Iterable[str] = (),
        *,
        size: int = OBJECT_SIZE,
    ) -> None:
        rng = random.Random(20240601)
        self.data = rng.randbytes(size)
        # The replacement: the same size, other bytes.
        self.new_data = rng.randbytes(size)
        self.crc64, self.new_crc64 = crc64(self.data), crc64(self.new_data)
        self.root = work / "store"
        folder = self.root / BUCKET / FOLDER
        folder.mkdir(parents=True)
        source = work / "object.bin"
        source.write_bytes(self.data)
        changing = set(changing)
        for name in names:
            target = folder / f"{name}.bin"
            if name in changing:
                target.write_bytes(self.data)
            else:
                os.link(source, target)
        self._stack = contextlib.ExitStack()
        self.s3: RcloneS3Server | None = None
        self.front: TosFront | None = None

    def __enter__(self) -> Stores:
        try:
            self.s3 = self._stack.enter_context(RcloneS3Server(self.root))
            self.front = self._stack.enter_context(tos_stand_in(self.root / BUCKET))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def credentials(self) -> Credentials:
        assert self.s3 is not None
        return self.s3.credentials

    @property
    def s3_url(self) -> str:
        assert self.s3 is not None
        return self.s3.endpoint_url

    @property
    def tos_url(self) -> str:
        assert self.front is not None
        return self.front.url

    @staticmethod
    def key(name: str) -> str:
        """The object's key, on either side."""
        return f"{FOLDER}/{name}.bin"

    def publish_crc(self, name: str) -> None:
        """Have the TOS side publish the object's CRC-64 on HEAD (the S3 side's comes
        from the cell's proxy)."""
        assert self.front is not None
        self.front.crc[self.key(name)] = self.crc64

    def replace(self, side: str, name: str) -> None:
        """Upload the other version of ``name`` through the side's own server, so that
        server sees the change at once (its listing cache included)."""
        assert self.s3 is not None and self.front is not None
        if side == "s3":
            client = _admin(self.s3_url, self.credentials)
            client.put_object(Bucket=BUCKET, Key=self.key(name), Body=self.new_data)
        else:
            # The anonymous rclone behind the front: its bucket is the folder "m".
            upstream = f"http://{self.front.upstream.netloc}"
            client = _admin(upstream, Credentials("anonymous", "anonymous"))
            client.put_object(Bucket=FOLDER, Key=f"{name}.bin", Body=self.new_data)
            self.front.crc[self.key(name)] = self.new_crc64
        client.close()


def refused_endpoint() -> str:
    """An endpoint where nothing listens (a port that was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _Handler(socketserver.BaseRequestHandler):
    server: _TlsServer

    def handle(self) -> None:
        with self.server.lock:
            self.server.connections += 1
        self.request.settimeout(10)
        # The client gives up on the certificate; whatever the handshake raises is moot.
        with (
            contextlib.suppress(OSError),
            self.server.context.wrap_socket(self.request, server_side=True) as tls,
        ):
            tls.recv(1)


class _TlsServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.connections = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class UntrustedTls:
    """An HTTPS endpoint presenting ``cert``, which no client trusts; a context manager.

    :attr:`connections` counts the connections (the handshakes tried)."""

    def __init__(self, cert: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = _TlsServer(context)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def connections(self) -> int:
        with self._server.lock:
            return self._server.connections

    def __enter__(self) -> UntrustedTls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
