"""tos:// against local S3 servers, the TOS SDK's knobs, and the tos-sdk backend.

The boto3 engine speaks S3, so moto and ``rclone serve s3`` stand in for TOS's S3
endpoint: ``TOS_ENDPOINT`` points at them and ``MODELPULL_ADDRESSING_STYLE=path``
replaces TOS's virtual-hosted default.

The TOS SDK needs more: it speaks TOS's native protocol, which no local server does.
:mod:`tests.tosfront` stands in for it (what the SDK needs, and why, is in its notes).
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import tos

import modelpull
from modelpull.backends.boto3 import Boto3Backend
from modelpull.backends.tos_sdk import TosSdkBackend
from modelpull.bench_sdk import download_file
from modelpull.checksums import CRC_KINDS
from modelpull.compat import CompatWarning
from modelpull.compat.tos import from_sdk
from modelpull.config import PullConfig
from modelpull.credentials import Credentials
from modelpull.demo.rclone import RcloneS3Server
from modelpull.events import BytesTransferred, Event, FileVerified
from modelpull.objects import ObjectInfo
from modelpull.resolve import resolve
from tests.faults.proxy import FaultProxy, Rule, delay, set_headers, status
from tests.helpers import S3Store, isolated_env, rclone_slow, run_cli, tree
from tests.tosfront import TosFront, tos_stand_in

MiB = 1 << 20
REGION = "cn-beijing"


def model_files() -> dict[str, bytes]:
    rng = __import__("random").Random(11)
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "tokenizer.json": b'{"model": {"type": "BPE"}}' * 40,
        "model-00001-of-00002.safetensors": rng.randbytes(3 * MiB + 17),
        "model-00002-of-00002.safetensors": rng.randbytes(MiB + 5),
        "sub/notes.txt": b"hello",
    }


FILES = model_files()
WEIGHTS = "model-00001-of-00002.safetensors"


def crc64(data: bytes) -> str:
    kind = CRC_KINDS["crc64ecma"]
    return kind.encode(kind.compute(data))


@pytest.fixture
def bucket(store: S3Store) -> str:
    name = store.new_bucket()
    store.put_tree(name, "models/llama/", FILES)
    return name


def tos_env(store: S3Store, endpoint: str | None = None) -> dict[str, str]:
    """What a TOS deployment sets, pointed at a local server; no AWS_* at all."""
    return {
        "TOS_ACCESS_KEY": store.credentials.access_key,
        "TOS_SECRET_KEY": store.credentials.secret_key,
        "TOS_ENDPOINT": endpoint or store.endpoint_url,
        "TOS_REGION": REGION,
        "MODELPULL_ADDRESSING_STYLE": "path",
    }


def tos_pull(uri: str, dest: Path, env: dict[str, str], **kwargs: Any) -> modelpull.PullResult:
    with resolve(uri, environ=env) as target:
        return modelpull.pull(target, dest, **kwargs)


# --- tos:// on the boto3 engine ---------------------------------------------------------


def test_tos_uri_with_tos_variables(store: S3Store, bucket: str, tmp_path: Path) -> None:
    env = tos_env(store)
    result = tos_pull(f"tos://{bucket}/models/llama/", tmp_path / "out", env)
    assert tree(tmp_path / "out") == FILES
    assert result.config["addressing_style"] == "path"
    assert result.config["endpoint_url"] == store.endpoint_url
    assert result.config["region"] == REGION


def test_tos_keys_rank_above_the_aws_chain(
    rclone_store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rclone checks signatures, so which keys signed is visible.
    bucket = rclone_store.new_bucket()
    rclone_store.put(bucket, "m/config.json", b"{}")
    uri = f"tos://{bucket}/m/"
    good = rclone_store.credentials
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", good.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", good.secret_key)
    wrong = tos_env(rclone_store) | {"TOS_SECRET_KEY": "not-the-secret"}
    with pytest.raises(modelpull.AccessDeniedError) as info:
        tos_pull(uri, tmp_path / "a", wrong)
    assert info.value.status == 403
    # Without TOS_* keys, boto3's chain (AWS_* here) is the fallback.
    fallback = {k: v for k, v in tos_env(rclone_store).items() if "KEY" not in k}
    assert tos_pull(uri, tmp_path / "b", fallback).files_fetched == 1


@rclone_slow
def test_cli_pulls_tos_uri_with_tos_variables(store: S3Store, bucket: str, tmp_path: Path) -> None:
    env = tos_env(store)
    done = run_cli(
        ["pull", f"tos://{bucket}/models/llama/", str(tmp_path / "out")], isolated_env(env)
    )
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "out") == FILES


@rclone_slow
def test_cli_addressing_style_flag_for_local_servers(
    store: S3Store, bucket: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in tos_env(store).items() if k != "MODELPULL_ADDRESSING_STYLE"}
    uri = f"tos://{bucket}/models/llama/"
    args = ["pull", uri, str(tmp_path / "out"), "--addressing-style", "path"]
    done = run_cli(args, isolated_env(env))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "out") == FILES


# --- CRC-64 from x-tos-hash-crc64ecma ---------------------------------------------------


@pytest.fixture
def proxy(store: S3Store) -> Iterator[FaultProxy]:
    with FaultProxy(store.endpoint_url) as p:
        yield p


def test_crc64_header_is_verified(
    store: S3Store, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    for name, data in FILES.items():
        rule = set_headers({"x-tos-hash-crc64ecma": crc64(data)})
        # On HEAD and GET alike, as TOS answers: a small file's GET is its only request.
        proxy.add_rule(Rule(rule, path=f"/llama/{name}$", times=None))
    verified: list[tuple[str, str]] = []

    def observe(event: Event) -> None:
        if isinstance(event, FileVerified):
            verified.append((event.path, event.kind))

    tos_pull(
        f"tos://{bucket}/models/llama/",
        tmp_path / "out",
        tos_env(store, proxy.url),
        observers=[observe],
    )
    assert tree(tmp_path / "out") == FILES
    assert {path for path, kind in verified if kind == "crc64ecma"} == set(FILES)


@rclone_slow
def test_wrong_crc64_header_is_caught(
    store: S3Store, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    wrong = crc64(FILES[WEIGHTS] + b"x")
    proxy.add_rule(Rule(set_headers({"x-tos-hash-crc64ecma": wrong}), path=WEIGHTS, times=None))
    with pytest.raises(modelpull.IntegrityError) as info:
        tos_pull(f"tos://{bucket}/models/llama/", tmp_path / "out", tos_env(store, proxy.url))
    assert info.value.algorithm == "crc64ecma"
    assert info.value.expected == wrong
    assert not (tmp_path / "out" / WEIGHTS).exists()  # a final name never holds bad bytes


# --- the TOS SDK's knobs change what they claim ----------------------------------------


def sdk_pull(
    store: S3Store, bucket: str, proxy: FaultProxy, dest: Path, **knobs: Any
) -> modelpull.PullResult:
    keys = store.credentials
    env = tos_env(store, proxy.url)
    settings = from_sdk(env, ak=keys.access_key, sk=keys.secret_key, **knobs)
    return modelpull.pull(
        f"tos://{bucket}/models/llama/",
        dest,
        config=settings.config,
        credentials=settings.credentials,
    )


def gets(proxy: FaultProxy, name: str) -> int:
    return sum(1 for r in proxy.log if r.method == "GET" and r.path.endswith(f"/{name}"))


@pytest.mark.parametrize(("part_size", "requests"), [(1 * MiB, 4), (2 * MiB, 2), (4 * MiB, 1)])
@rclone_slow
def test_sdk_part_size_sets_the_ranged_gets(
    store: S3Store, bucket: str, proxy: FaultProxy, tmp_path: Path, part_size: int, requests: int
) -> None:
    sdk_pull(store, bucket, proxy, tmp_path / "out", part_size=part_size)
    assert gets(proxy, WEIGHTS) == requests
    assert tree(tmp_path / "out") == FILES


@rclone_slow
def test_sdk_max_retry_count_bounds_the_attempts(
    store: S3Store, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    # One part per file, so both 503s hit the same request.
    proxy.add_rule(Rule(status(503, "ServiceUnavailable"), method="GET", path=WEIGHTS, times=2))
    with pytest.raises(modelpull.RetriesExhaustedError) as info:
        sdk_pull(store, bucket, proxy, tmp_path / "a", max_retry_count=1, part_size=8 * MiB)
    assert info.value.status == 503
    proxy.add_rule(Rule(status(503, "ServiceUnavailable"), method="GET", path=WEIGHTS, times=2))
    result = sdk_pull(store, bucket, proxy, tmp_path / "b", max_retry_count=2, part_size=8 * MiB)
    assert result.retries == {"ServiceUnavailable": 2}
    assert tree(tmp_path / "b") == FILES


@rclone_slow
def test_sdk_socket_timeout_is_the_read_timeout(
    store: S3Store, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(delay(seconds_before_headers=3), method="GET", path=WEIGHTS, times=1))
    started = time.monotonic()
    result = sdk_pull(store, bucket, proxy, tmp_path / "out", socket_timeout=0.5)
    assert result.retries.get("timeout") == 1
    assert time.monotonic() - started < 3
    assert tree(tmp_path / "out") == FILES


@pytest.mark.slow
def test_sdk_rate_limiter_caps_the_pull(
    store: S3Store, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    rate = 2 * MiB
    total = sum(map(len, FILES.values()))
    started = time.monotonic()
    sdk_pull(store, bucket, proxy, tmp_path / "out", rate_limiter=tos.RateLimiter(rate, rate))
    elapsed = time.monotonic() - started
    # One second's worth may pass at once; the rest waits for the bucket to refill.
    assert elapsed >= (total - rate) / rate * 0.9
    assert tree(tmp_path / "out") == FILES


@pytest.mark.slow
def test_sdk_traffic_limit_caps_the_pull(
    store: S3Store, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    total = sum(map(len, FILES.values()))
    started = time.monotonic()
    with pytest.warns(CompatWarning, match="per connection"):
        sdk_pull(store, bucket, proxy, tmp_path / "out", traffic_limit=2 * MiB * 8, task_num=1)
    assert time.monotonic() - started >= (total - 2 * MiB) / (2 * MiB) * 0.9


@rclone_slow
def test_sdk_enable_crc_false_turns_verification_off(
    store: S3Store, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    proxy.add_rule(Rule(set_headers({"x-tos-hash-crc64ecma": "12345"}), times=None))
    with pytest.raises(modelpull.IntegrityError):
        sdk_pull(store, bucket, proxy, tmp_path / "a", enable_crc=True)
    sdk_pull(store, bucket, proxy, tmp_path / "b", enable_crc=False)
    assert tree(tmp_path / "b") == FILES


@rclone_slow
def test_sdk_task_num_and_max_connections_set_the_streams(
    store: S3Store, bucket: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    result = sdk_pull(store, bucket, proxy, tmp_path / "a", task_num=3)
    assert result.config["concurrency"] == 3
    result = sdk_pull(store, bucket, proxy, tmp_path / "b", task_num=8, max_connections=2)
    assert result.config["concurrency"] == 2
    assert tree(tmp_path / "b") == FILES


# --- the tos-sdk backend against a TOS stand-in ----------------------------------------


@pytest.fixture(scope="module")
def stand_in(
    rclone_server: RcloneS3Server, rclone_store: S3Store
) -> Iterator[tuple[str, TosFront]]:
    bucket = rclone_store.new_bucket("tossdk")
    rclone_store.put_tree(bucket, "models/llama/", FILES)
    with tos_stand_in(rclone_server.root / bucket) as front:
        yield bucket, front


@pytest.fixture
def front(stand_in: tuple[str, TosFront]) -> Iterator[TosFront]:
    front = stand_in[1]
    front.seen.clear()
    front.auth.clear()
    yield front
    front.crc.clear()
    front.fail.clear()
    front.page_size = 1000


def sdk_config(front: TosFront, **overrides: Any) -> PullConfig:
    base = PullConfig(
        endpoint_url=front.url,
        region=REGION,
        addressing_style="path",  # custom-domain mode: the front serves one bucket
        part_size=1 * MiB,
        io_chunk_size=256 * 1024,
        concurrency=4,
    )
    return replace(base, **overrides)


@pytest.fixture
def sdk_backend(front: TosFront) -> Iterator[TosSdkBackend]:
    """A tos-sdk backend for ``modelpull.pull(..., backend=)``: every part through the
    engine's ranged GETs. The pulls leave it open (it is the caller's), so it serves
    several."""
    backend = TosSdkBackend(sdk_config(front))
    try:
        yield backend
    finally:
        backend.close()


def test_sdk_backend_downloads_a_model(
    stand_in: tuple[str, TosFront], front: TosFront, sdk_backend: TosSdkBackend, tmp_path: Path
) -> None:
    bucket = stand_in[0]
    front.page_size = 2  # the backend follows continuation tokens
    seen: list[int] = []
    result = modelpull.pull(
        f"tos://{bucket}/models/llama/",
        tmp_path / "out",
        config=sdk_config(front),
        backend=sdk_backend,
        observers=[lambda e: seen.append(e.bytes) if isinstance(e, BytesTransferred) else None],
    )
    assert tree(tmp_path / "out") == FILES
    assert result.backend == "tos-sdk"
    assert result.files_fetched == len(FILES)
    assert sum(seen) == sum(map(len, FILES.values()))
    # The same skip logic: a second pull fetches nothing.
    again = modelpull.pull(
        f"tos://{bucket}/models/llama/",
        tmp_path / "out",
        config=sdk_config(front),
        backend=sdk_backend,
    )
    assert (again.files_fetched, again.files_skipped) == (0, len(FILES))


def test_sdk_backend_sends_unsigned_requests_with_no_sign_request(
    stand_in: tuple[str, TosFront], front: TosFront
) -> None:
    uri = f"tos://{stand_in[0]}/models/llama/"
    keys = Credentials("AKLTtestkey", "test-secret-key-value")
    for unsigned in (False, True):
        front.auth.clear()
        config = sdk_config(front, no_sign_request=unsigned)
        backend = TosSdkBackend(config, keys)
        try:
            listed = modelpull.list_objects(uri, config=config, backend=backend)
        finally:
            backend.close()
        assert {f.path for f in listed} == set(FILES)
        assert front.auth
        # Signed with the keys given, or (public buckets) no signature at all.
        assert all(a is None for a in front.auth) is unsigned
        assert all(a is not None and "AKLTtestkey" in a for a in front.auth) is not unsigned


def test_sdk_backend_verifies_crc64(
    stand_in: tuple[str, TosFront], front: TosFront, sdk_backend: TosSdkBackend, tmp_path: Path
) -> None:
    bucket = stand_in[0]
    for name, data in FILES.items():
        front.crc[f"models/llama/{name}"] = crc64(data)
    kinds: list[str] = []
    modelpull.pull(
        f"tos://{bucket}/models/llama/",
        tmp_path / "out",
        config=sdk_config(front),
        backend=sdk_backend,
        observers=[lambda e: kinds.append(e.kind) if isinstance(e, FileVerified) else None],
    )
    assert kinds.count("crc64ecma") == len(FILES)
    front.crc[f"models/llama/{WEIGHTS}"] = crc64(b"not the weights")
    with pytest.raises(modelpull.IntegrityError, match="crc64ecma"):
        modelpull.pull(
            f"tos://{bucket}/models/llama/",
            tmp_path / "again",
            config=sdk_config(front),
            backend=sdk_backend,
        )


def test_download_file_arm_wraps_download_file(
    stand_in: tuple[str, TosFront], front: TosFront, tmp_path: Path
) -> None:
    bucket = stand_in[0]
    backend = TosSdkBackend(sdk_config(front))
    key = f"models/llama/{WEIGHTS}"
    try:
        obj = backend.head(bucket, key)
        target = tmp_path / "w.part"
        target.write_bytes(b"stale temp file contents")
        pieces: list[int] = []
        download_file(backend, obj, bucket, target, pieces.append, part_size=MiB, task_num=4)
    finally:
        backend.close()
    assert target.read_bytes() == FILES[WEIGHTS]
    assert sum(pieces) == obj.size
    # download_file used part_size ranged GETs with task_num threads ...
    ranged = [k for method, k in front.seen if method == "GET" and k == key]
    assert len(ranged) >= 4
    # ... and left neither its .temp file nor its checkpoint behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.part"]


def test_download_file_arm_stops_when_progress_raises(
    stand_in: tuple[str, TosFront], front: TosFront, tmp_path: Path
) -> None:
    class Stop(Exception):
        pass

    def progress(n: int) -> None:
        raise Stop

    backend = TosSdkBackend(sdk_config(front))
    try:
        obj = backend.head(stand_in[0], f"models/llama/{WEIGHTS}")
        with pytest.raises(Stop):
            download_file(
                backend, obj, stand_in[0], tmp_path / "w.part", progress, part_size=MiB, task_num=4
            )
    finally:
        backend.close()
        # download_file drops the responses of the parts it abandons without closing
        # them (tos 2.9); collected here rather than in whichever test runs next.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def both_backends(front: TosFront, rclone_store: S3Store) -> list[Any]:
    boto = Boto3Backend(rclone_store.config(region=REGION), rclone_store.credentials)
    return [TosSdkBackend(sdk_config(front)), boto]


def test_missing_key_is_the_same_error_on_both_backends(
    stand_in: tuple[str, TosFront], front: TosFront, rclone_store: S3Store
) -> None:
    bucket = stand_in[0]
    for backend in both_backends(front, rclone_store):
        try:
            with pytest.raises(modelpull.ObjectNotFoundError) as info:
                backend.head(bucket, "models/llama/missing.json")
        finally:
            backend.close()
        assert info.value.status == 404
        assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize(
    ("status_code", "code", "cls"),
    [
        (403, "AccessDenied", modelpull.AccessDeniedError),
        (404, "NoSuchBucket", modelpull.BucketNotFoundError),
        (503, "ServiceUnavailable", modelpull.TransientStoreError),
    ],
)
def test_sdk_errors_keep_status_code_and_request_id(
    stand_in: tuple[str, TosFront],
    front: TosFront,
    status_code: int,
    code: str,
    cls: type[modelpull.StoreError],
) -> None:
    key = "models/llama/config.json"
    front.fail[key] = (status_code, code, {"Retry-After": "2"})
    backend = TosSdkBackend(sdk_config(front))
    try:
        with pytest.raises(cls) as info:
            backend.read_range(
                ObjectInfo(key=key, size=10, etag=""),
                stand_in[0],
                0,
                10,
                memoryview(bytearray(10)),
                lambda view: None,
            )
    finally:
        backend.close()
    err = info.value
    assert (err.status, err.code) == (status_code, code)
    assert err.request_id is not None and err.request_id.startswith("front-")
    if isinstance(err, modelpull.TransientStoreError):
        assert err.retry_after == 2.0


def test_unreachable_endpoint_is_the_same_error_on_both_backends(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = PullConfig(endpoint_url=dead, region=REGION, addressing_style="path")
    for backend in (TosSdkBackend(config), Boto3Backend(config, Credentials("a", "b"))):
        try:
            with pytest.raises(modelpull.EndpointError):
                backend.head("bucket", "models/llama/config.json")
        finally:
            backend.close()


def test_backend_selected_by_config(
    stand_in: tuple[str, TosFront], front: TosFront, tmp_path: Path
) -> None:
    # --backend tos-sdk / MODELPULL_BACKEND=tos-sdk reach the same backend.
    config = replace(sdk_config(front), backend="tos-sdk")
    result = modelpull.pull(f"tos://{stand_in[0]}/models/llama/", tmp_path / "out", config=config)
    assert result.backend == "tos-sdk"
    assert tree(tmp_path / "out") == FILES


@pytest.mark.slow
def test_bench_runs_the_tos_sdk_backend(
    stand_in: tuple[str, TosFront], front: TosFront, tmp_path: Path
) -> None:
    """``modelpull bench`` drives the tos-sdk backend like the engine, and checks its bytes."""
    from modelpull.bench import config_env, run_bench

    env = config_env(sdk_config(front))
    rows = run_bench(
        f"tos://{stand_in[0]}/models/llama/",
        backends=["tos-sdk"],
        concurrencies=[2, 4],
        part_sizes=[1 * MiB],
        rounds=1,
        out_dir=tmp_path / "out",
        work_dir=tmp_path,
        env=env,
    )
    assert [(r["backend"], r["concurrency"]) for r in rows] == [("tos-sdk", 2), ("tos-sdk", 4)]
    assert all(r["median_mb_per_s"] > 0 for r in rows)
    assert (tmp_path / "out" / "bench.json").exists()


@pytest.mark.slow
def test_bench_runs_the_sdk_download_file_arm(
    stand_in: tuple[str, TosFront], front: TosFront, tmp_path: Path
) -> None:
    """``tos-sdk-download-file`` runs the SDK's own download_file; its bytes must match."""
    from modelpull.bench import config_env, run_bench

    env = config_env(sdk_config(front))
    rows = run_bench(
        f"tos://{stand_in[0]}/models/llama/",
        backends=["tos-sdk", "tos-sdk-download-file"],
        concurrencies=[2],
        part_sizes=[1 * MiB],
        rounds=1,
        out_dir=tmp_path / "out",
        work_dir=tmp_path,
        env=env,
    )
    assert [r["backend"] for r in rows] == ["tos-sdk", "tos-sdk-download-file"]
    assert all(r["median_mb_per_s"] > 0 for r in rows)
    # download_file reached the store with part_size ranged GETs of the weights.
    weights = [k for method, k in front.seen if method == "GET" and k.endswith(WEIGHTS)]
    assert len(weights) >= 2 * 4
