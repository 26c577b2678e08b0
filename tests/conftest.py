"""Fixtures for the whole suite: a clean environment, and local S3 servers on loopback.

``moto_server`` and ``rclone_server`` start once per session. Tests reach them through
an :class:`~tests.helpers.S3Store`: ``store`` runs a test against both, ``moto_store``
and ``rclone_store`` against one. Each test makes its own bucket (``new_bucket``), so
tests never see each other's objects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from modelpull.demo.rclone import RcloneS3Server
from tests.helpers import ISOLATED_PREFIXES, MOTO_CREDENTIALS, S3Store


@pytest.fixture(scope="session")
def _no_aws_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that does not exist, for AWS config paths that must lead nowhere."""
    return tmp_path_factory.mktemp("aws") / "absent"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, _no_aws_files: Path) -> None:
    """No ``AWS_*``/``TOS_*``/``MODELPULL_*``/``DOWNLOADER_*`` from the developer's shell.

    ``~/.aws`` is out of reach too, and boto3 never asks the EC2 metadata endpoint for
    credentials (which takes seconds to time out off EC2).
    """
    for name in list(os.environ):
        if name.startswith(ISOLATED_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(_no_aws_files / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(_no_aws_files / "credentials"))


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    """The ``modelpull`` logger as it was, after every test (some set up logging on it:
    one left without propagation would hide later tests' records from ``caplog``)."""
    logger = logging.getLogger("modelpull")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's S3 in a thread of this process; yields its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3Server]:
    """``rclone serve s3`` over a session folder (each subfolder a bucket)."""
    with RcloneS3Server(tmp_path_factory.mktemp("rclone-root")) as server:
        yield server


@pytest.fixture(scope="session")
def moto_store(moto_server: str) -> S3Store:
    return S3Store("moto", moto_server, MOTO_CREDENTIALS)


@pytest.fixture(scope="session")
def rclone_store(rclone_server: RcloneS3Server) -> S3Store:
    return S3Store("rclone", rclone_server.endpoint_url, rclone_server.credentials)


@pytest.fixture(scope="session", params=["moto", "rclone"])
def store(request: pytest.FixtureRequest) -> S3Store:
    """Each test that asks for ``store`` runs once against moto and once against rclone."""
    found: S3Store = request.getfixturevalue(f"{request.param}_store")
    return found
