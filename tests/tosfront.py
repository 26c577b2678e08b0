"""A stand-in for TOS's native endpoint, for the TOS SDK: :class:`TosFront` and
:func:`tos_stand_in`. Shared by ``tests/functional/test_tos.py`` and the fault matrix
(``benchmarks/fault_matrix.py``).

The TOS SDK speaks TOS's native protocol, which no local server does. Found by
experiment (tos 2.9):

* It only builds virtual-hosted URLs (``bucket.host``), which loopback cannot resolve.
  Its custom-domain mode (``is_custom_domain=True``, the backend's choice for
  ``addressing_style="path"``) sends ``/<key>`` to the endpoint itself, so a path-style
  server whose *root is the bucket's folder* serves it: the key's first segment is that
  server's "bucket" (``models/llama/config.json`` is bucket ``models``, key
  ``llama/config.json``). A second ``rclone serve s3`` over ``<rclone root>/<bucket>``
  does that.
* It signs with TOS4-HMAC-SHA256, which rclone's SigV4 check refuses, so that second
  server runs without ``--auth-key`` (anonymous) on loopback.
* moto cannot stand in: it routes a request by the service named in the signature's
  scope ("tos" is unknown: 500), and answers anonymous reads of private objects with 403.
* ``list_objects_type2`` reads TOS's JSON listing (S3's is XML), and TOS's errors are JSON
  with ``x-tos-request-id``. :class:`TosFront` answers listings from the folder on disk
  and injected errors itself, and forwards everything else to the anonymous rclone,
  adding ``x-tos-hash-crc64ecma`` where it is asked to (as TOS publishes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from modelpull.demo.rclone import RcloneS3Server

__all__ = ["TosFront", "tos_stand_in"]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that drop a connection mid-body are what the faults tests do


class TosFront:
    """TOS's JSON listing and errors, in front of an S3 server rooted at one bucket's folder."""

    def __init__(self, upstream: str, root: Path) -> None:
        self.upstream = urlsplit(upstream)
        self.root = root
        self.crc: dict[str, str] = {}  # key -> x-tos-hash-crc64ecma to publish
        self.fail: dict[str, tuple[int, str, dict[str, str]]] = {}  # key -> status, code, headers
        self.page_size = 1000
        self.seen: list[tuple[str, str]] = []
        self.auth: list[str | None] = []  # each request's Authorization header
        self._ids = iter(range(1, 1 << 30))
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                front._serve(self)

            def do_GET(self) -> None:
                front._serve(self)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> TosFront:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join()
        self.server.server_close()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        key = unquote(parts.path.lstrip("/"))
        self.seen.append((handler.command, key))
        self.auth.append(handler.headers.get("Authorization"))
        request_id = f"front-{next(self._ids)}"
        if key in self.fail:
            code, name, headers = self.fail[key]
            body = json.dumps(
                {
                    "Code": name,
                    "Message": f"injected {name}",
                    "RequestId": request_id,
                    "HostId": "front",
                    "EC": "0000-00000000",
                }
            ).encode()
            self._answer(handler, code, {"x-tos-request-id": request_id, **headers}, body)
        elif not key and "list-type=2" in parts.query:
            self._answer(handler, 200, {"x-tos-request-id": request_id}, self._listing(parts.query))
        else:
            self._forward(handler, parts, key, request_id)

    def _listing(self, query: str) -> bytes:
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        prefix, token = params.get("prefix", ""), params.get("continuation-token", "")
        keys = sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )
        keys = [k for k in keys if k.startswith(prefix) and k > token]
        page, more = keys[: self.page_size], len(keys) > self.page_size
        contents = []
        for key in page:
            data = (self.root / key).read_bytes()
            item = {
                "Key": key,
                "Size": len(data),
                "ETag": f'"{hashlib.md5(data).hexdigest()}"',
                "LastModified": "2024-01-02T03:04:05.000Z",
                "StorageClass": "STANDARD",
            }
            contents.append(item)
        return json.dumps(
            {
                "Name": "bucket",
                "Prefix": prefix,
                "MaxKeys": self.page_size,
                "KeyCount": len(page),
                "IsTruncated": more,
                "Contents": contents,
                "NextContinuationToken": page[-1] if more else "",
            }
        ).encode()

    def _forward(
        self, handler: BaseHTTPRequestHandler, parts: Any, key: str, request_id: str
    ) -> None:
        conn = http.client.HTTPConnection(self.upstream.netloc, timeout=30)
        try:
            headers = {h: handler.headers[h] for h in ("Range", "If-Match") if handler.headers[h]}
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            conn.request(handler.command, target, headers=headers)
            response = conn.getresponse()
            out = {
                name: value
                for name, value in response.getheaders()
                if name.lower() in ("content-length", "content-range", "etag", "last-modified")
            }
            out["x-tos-request-id"] = request_id
            if key in self.crc and "Range" not in headers:
                out["x-tos-hash-crc64ecma"] = self.crc[key]
            handler.send_response(response.status)
            for name, value in out.items():
                handler.send_header(name, value)
            handler.end_headers()
            while handler.command == "GET" and (chunk := response.read(64 * 1024)):
                handler.wfile.write(chunk)
        finally:
            conn.close()

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler, code: int, headers: dict[str, str], body: bytes
    ) -> None:
        handler.send_response(code)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)


@contextlib.contextmanager
def tos_stand_in(bucket_root: Path) -> Iterator[TosFront]:
    """A TOS endpoint in custom-domain mode over ``bucket_root`` (one bucket's folder of
    an rclone root): an anonymous ``rclone serve s3`` rooted there, behind a
    :class:`TosFront`. Objects must be written before it starts (rclone caches listings)."""
    with (
        # Rooted at the bucket's folder, signatures unchecked: see the module's notes.
        RcloneS3Server(bucket_root, anonymous=True) as anonymous,
        TosFront(anonymous.endpoint_url, bucket_root) as front,
    ):
        yield front
