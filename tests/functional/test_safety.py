"""Untrusted keys, symlinks in DEST, TLS verification, several processes on one model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import modelpull
from modelpull.backends import make_backend
from modelpull.backends.tos_sdk import TosSdkBackend
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.demo import RcloneS3Server
from tests.faults.proxy import FaultProxy, Rule, delay
from tests.helpers import S3Store, rclone_slow, run_cli, self_signed, start_cli, tree

MiB = 1 << 20


@pytest.mark.parametrize(
    "evil", ["m/../escape.txt", "m/a/../../escape.txt", "m//abs.txt", "m/.modelpull/records/x"]
)
def test_unsafe_keys_are_refused(moto_store: S3Store, tmp_path: Path, evil: str) -> None:
    # moto stores keys such as "m/../x" as given: a bucket is untrusted input.
    bucket = moto_store.new_bucket()
    moto_store.put_tree(bucket, "", {"m/ok.txt": b"ok", evil: b"evil"})
    dest = tmp_path / "dest"
    with pytest.raises(modelpull.UnsafePathError) as info:
        modelpull.pull(
            f"s3://{bucket}/m/",
            dest,
            config=moto_store.config(),
            credentials=moto_store.credentials,
        )
    assert info.value.key == evil
    # Refused before anything was written, inside DEST or beside it.
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_unsafe_key_exit_code(moto_store: S3Store, tmp_path: Path) -> None:
    bucket = moto_store.new_bucket()
    moto_store.put(bucket, "m/../escape.txt", b"evil")
    proc = run_cli(["pull", f"s3://{bucket}/m/", str(tmp_path / "d")], moto_store.env())
    assert proc.returncode == 6
    assert "refusing object key 'm/../escape.txt'" in proc.stderr
    assert not (tmp_path / "escape.txt").exists()


@rclone_slow
def test_symlink_in_dest_is_not_followed_out(store: S3Store, tmp_path: Path) -> None:
    bucket = store.new_bucket()
    store.put_tree(bucket, "m/", {"sub/file.bin": b"x" * 100, "a.json": b"{}"})
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    with pytest.raises(modelpull.UnsafePathError, match="symlink"):
        modelpull.pull(
            f"s3://{bucket}/m/",
            dest,
            config=store.config(concurrency=1),
            credentials=store.credentials,
        )
    assert list(outside.iterdir()) == []


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path, RcloneS3Server]]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(folder)
    (folder / "root" / "secure" / "m").mkdir(parents=True)
    (folder / "root" / "secure" / "m" / "w.bin").write_bytes(b"w" * 1000)
    with RcloneS3Server(folder / "root", cert=cert, key=key) as server:
        yield server.endpoint_url, cert, server


def _cli(
    server: RcloneS3Server,
    endpoint: str,
    dest: Path,
    *flags: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    base = S3Store("rclone", endpoint, server.credentials).env()
    args = ["pull", "s3://secure/m/", str(dest), "--max-attempts", "1", *flags]
    return run_cli(args, base | (env or {}))


def test_tls_is_verified_by_default(
    tls_server: tuple[str, Path, RcloneS3Server], tmp_path: Path
) -> None:
    endpoint, _, server = tls_server
    proc = _cli(server, endpoint, tmp_path)
    assert proc.returncode == 5, proc.stderr
    assert "TLS verification failed" in proc.stderr and "--ca-bundle" in proc.stderr
    assert not (tmp_path / "w.bin").exists()


def test_ca_bundle(tls_server: tuple[str, Path, RcloneS3Server], tmp_path: Path) -> None:
    endpoint, cert, server = tls_server
    proc = _cli(server, endpoint, tmp_path, "--ca-bundle", str(cert))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "w.bin").read_bytes() == b"w" * 1000


def test_no_verify_ssl_warns(tls_server: tuple[str, Path, RcloneS3Server], tmp_path: Path) -> None:
    endpoint, _, server = tls_server
    proc = _cli(server, endpoint, tmp_path, "--no-verify-ssl")
    assert proc.returncode == 0, proc.stderr
    assert "TLS certificate verification is OFF" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one warning, not one per request
    assert (tmp_path / "w.bin").exists()


@pytest.mark.parametrize("source", ["--ca-bundle", "AWS_CA_BUNDLE", "MODELPULL_CA_BUNDLE"])
@pytest.mark.parametrize("what", ["missing", "folder"])
def test_unreadable_ca_bundle_is_a_usage_error(
    tls_server: tuple[str, Path, RcloneS3Server], tmp_path: Path, source: str, what: str
) -> None:
    endpoint, _, server = tls_server
    bundle = tmp_path / "ca.pem"
    if what == "folder":
        bundle.mkdir()
    flags = ("--ca-bundle", str(bundle)) if source == "--ca-bundle" else ()
    env = {} if source == "--ca-bundle" else {source: str(bundle)}
    proc = _cli(server, endpoint, tmp_path / "out", *flags, env=env)
    assert proc.returncode == 2, proc.stderr
    assert str(bundle) in proc.stderr and "CA bundle" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreadable_ca_bundle_fails_before_any_request(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        for backend in ("boto3", "tos-sdk"):
            config = PullConfig(
                endpoint_url=proxy.url,
                region="cn-beijing",
                addressing_style="path",
                ca_bundle=str(tmp_path / "absent.pem"),
                backend=backend,
            )
            with pytest.raises(modelpull.UsageError, match=r"absent\.pem"):
                modelpull.pull("s3://bucket/m/", tmp_path / "out", config=config)
        assert proxy.log == []


def test_no_verify_ssl_wins_over_a_ca_bundle_from_the_environment(
    tls_server: tuple[str, Path, RcloneS3Server], tmp_path: Path
) -> None:
    endpoint, _, server = tls_server
    other_ca, _ = self_signed(tmp_path)  # a readable bundle that does not sign the server
    env = {"AWS_CA_BUNDLE": str(other_ca)}
    refused = _cli(server, endpoint, tmp_path / "a", env=env)
    assert refused.returncode == 5, refused.stderr
    assert "TLS verification failed" in refused.stderr
    proc = _cli(server, endpoint, tmp_path / "b", "--no-verify-ssl", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b" / "w.bin").exists()


def test_https_to_a_plain_http_endpoint_says_so(store: S3Store, tmp_path: Path) -> None:
    # An endpoint without a scheme is taken as https://; these servers speak plain HTTP.
    host = store.endpoint_url.removeprefix("http://")
    env = store.env() | {"AWS_ENDPOINT_URL": host}
    proc = subprocess.run(
        [sys.executable, "-m", "modelpull", "pull", "s3://bucket/m/", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 5, proc.stderr
    assert "speaks plain HTTP" in proc.stderr and f"use http://{host}" in proc.stderr
    assert "AWS_ENDPOINT_URL" in proc.stderr
    assert "--ca-bundle" not in proc.stderr


def _head(backend: Any, bucket: str = "secure", key: str = "m/w.bin") -> BaseException:
    try:
        backend.head(bucket, key)
    except modelpull.ModelPullError as exc:
        return exc
    finally:
        backend.close()
    raise AssertionError("the HEAD went through")


def test_tos_sdk_backend_tls(tls_server: tuple[str, Path, RcloneS3Server], tmp_path: Path) -> None:
    endpoint, cert, _ = tls_server
    config = PullConfig(endpoint_url=endpoint, region="cn-beijing", addressing_style="path")
    failed = _head(TosSdkBackend(config))
    assert isinstance(failed, modelpull.EndpointError) and failed.reason == "tls"
    assert "TLS verification failed" in str(failed) and "tos://secure/m/w.bin" in str(failed)
    # Past the handshake, the server refuses the TOS signature: not an endpoint error.
    trusted = _head(TosSdkBackend(replace(config, ca_bundle=str(cert))))
    assert not isinstance(trusted, modelpull.EndpointError), trusted
    other_ca, _ = self_signed(tmp_path)
    unverified = replace(config, ca_bundle=str(other_ca), verify_ssl=False)
    assert not isinstance(_head(TosSdkBackend(unverified)), modelpull.EndpointError)
    with pytest.raises(modelpull.UsageError, match=r"absent\.pem"):
        TosSdkBackend(replace(config, ca_bundle=str(tmp_path / "absent.pem")))


def test_tos_sdk_backend_names_a_plain_http_endpoint(rclone_store: S3Store) -> None:
    host = rclone_store.endpoint_url.removeprefix("http://")
    config = PullConfig(endpoint_url=host, region="cn-beijing", addressing_style="path")
    failed = _head(TosSdkBackend(config), "bucket")
    assert isinstance(failed, modelpull.EndpointError)
    assert "speaks plain HTTP" in str(failed) and f"use http://{host}" in str(failed)
    assert "TOS_ENDPOINT" in str(failed)


@pytest.mark.parametrize(
    ("scheme", "named", "not_named"),
    [("s3", ("s3://", "AWS_ACCESS_KEY_ID"), "TOS_"), ("tos", ("tos://", "TOS_ACCESS_KEY"), "AWS_")],
)
def test_errors_name_the_scheme_and_its_variables(
    rclone_store: S3Store, scheme: str, named: tuple[str, ...], not_named: str
) -> None:
    bucket = rclone_store.new_bucket()
    wrong = Credentials(rclone_store.credentials.access_key, "not-the-secret")
    denied = _head(make_backend(rclone_store.config(), wrong, scheme=scheme), bucket, "m/x")
    assert isinstance(denied, modelpull.AccessDeniedError)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = PullConfig(endpoint_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
        unreachable = _head(make_backend(dead, wrong, scheme=scheme), bucket, "m/x")
    assert isinstance(unreachable, modelpull.EndpointError)
    assert ("TOS_ENDPOINT" if scheme == "tos" else "AWS_ENDPOINT_URL") in str(unreachable)
    for error in (denied, unreachable):
        assert all(name in str(error) for name in named[:1])
        assert not_named not in str(error)
    assert named[1] in str(denied)


# -- many processes, one model -----------------------------------------------------------


@pytest.mark.slow
def test_eight_processes_one_model(rclone_store: S3Store, tmp_path: Path) -> None:
    bucket = rclone_store.new_bucket()
    files = {
        "config.json": b"{}",
        "a.safetensors": os.urandom(6 * MiB),
        "b.safetensors": os.urandom(3 * MiB),
    }
    rclone_store.put_tree(bucket, "m/", files)
    total = sum(map(len, files.values()))
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        env = rclone_store.env() | {"AWS_ENDPOINT_URL": proxy.url}
        args = ["pull", f"s3://{bucket}/m/", str(tmp_path), "--part-size", "1MiB"]
        procs = [start_cli(args, env) for _ in range(8)]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, results
        fetched = sum(r.body_bytes for r in proxy.log if r.method == "GET" and "/m/" in r.path)
    for name, data in files.items():
        assert (tmp_path / name).read_bytes() == data
    # Each file was fetched by one process; the others waited and reused it.
    assert fetched == total
    assert list((tmp_path / ".modelpull" / "incomplete").glob("*.part")) == []


@pytest.mark.slow
def test_two_processes_share_one_models_files(rclone_store: S3Store, tmp_path: Path) -> None:
    # Two pulls of one model into one DEST, started together: each takes the files the
    # other has not locked, instead of waiting behind it file after file.
    bucket = rclone_store.new_bucket()
    files = {f"model-{i}.safetensors": os.urandom(2 * MiB) for i in range(6)}
    rclone_store.put_tree(bucket, "m/", files)
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        # About 6 MB/s per connection: each file takes a while, so the pulls overlap.
        proxy.add_rule(Rule(delay(seconds_per_chunk=0.01), method="GET", times=None))
        env = rclone_store.env() | {"AWS_ENDPOINT_URL": proxy.url}
        args = ["pull", f"s3://{bucket}/m/", str(tmp_path), "--concurrency", "1", "--json"]
        procs = [start_cli(args, env) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        fetched = sum(r.body_bytes for r in proxy.log if r.method == "GET" and "/m/" in r.path)
    assert tree(tmp_path) == files
    assert fetched == sum(map(len, files.values()))  # every byte once
    counts = [json.loads(out)["files_fetched"] for out, _ in results]
    assert sum(counts) == len(files) and min(counts) >= 1  # both did some of the work


def test_lock_holder_killed_does_not_block_others(rclone_store: S3Store, tmp_path: Path) -> None:
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "m/w.bin", b"z" * MiB)
    # A process that takes a file's lock and dies without letting go.
    from modelpull.state import StateDir

    state = StateDir(tmp_path)
    state.create()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, filelock, time; filelock.FileLock(sys.argv[1]).acquire();"
            " print('held', flush=True); time.sleep(60)",
            str(state.lock_path("w.bin")),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.kill()
    holder.communicate()
    modelpull.pull(
        f"s3://{bucket}/m/",
        tmp_path,
        config=rclone_store.config(),
        credentials=rclone_store.credentials,
    )
    assert (tmp_path / "w.bin").read_bytes() == b"z" * MiB
