"""Adaptive concurrency and hedged tails, for correctness: through an emulated link and
the fault proxy, the pulled bytes are the store's, no byte is written twice, and what
was done is reported. (How fast they make a pull is the benchmark kit's business.)"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from benchmarks.linkproxy import LinkProxy

import modelpull
from modelpull.config import PullConfig
from modelpull.events import Event, PartHedged
from tests.helpers import S3Store, tree

from .proxy import FaultProxy, Rule, delay

MiB = 1 << 20
KiB = 1 << 10
FILES = {f"model-{i}.safetensors": os.urandom(24 * MiB) for i in range(4)}


def config(endpoint: str, **overrides: object) -> PullConfig:
    values: dict[str, object] = {
        "endpoint_url": endpoint,
        "addressing_style": "path",
        "part_size": 1 * MiB,
        "io_chunk_size": 256 * KiB,
    }
    return PullConfig(**(values | overrides))  # type: ignore[arg-type]


@pytest.fixture
def model(rclone_store: S3Store) -> str:
    bucket = rclone_store.new_bucket()
    rclone_store.put_tree(bucket, "m/", FILES)
    return f"s3://{bucket}/m/"


@pytest.fixture
def slow_link(rclone_store: S3Store) -> Iterator[str]:
    """A link of 2 MB/s per connection: a pull's throughput is its concurrency's."""
    origin = urlsplit(rclone_store.endpoint_url)
    assert origin.hostname is not None and origin.port is not None
    with LinkProxy((origin.hostname, origin.port), rate=2e6) as link:
        host, port = link.address
        yield f"http://{host}:{port}"


@pytest.mark.slow
def test_adaptive_concurrency_climbs_on_a_slow_link_and_pulls_the_right_bytes(
    rclone_store: S3Store, model: str, slow_link: str, tmp_path: Path
) -> None:
    result = modelpull.pull(
        model, tmp_path, config=config(slow_link), credentials=rclone_store.credentials
    )
    assert tree(tmp_path) == FILES
    assert result.bytes_downloaded == sum(map(len, FILES.values()))  # nothing twice
    assert result.concurrency > 16  # it started at 16 and found the link wanted more
    assert result.to_dict()["concurrency"] == result.concurrency


@pytest.mark.slow
def test_pinned_concurrency_stays_put(rclone_store: S3Store, model: str, tmp_path: Path) -> None:
    result = modelpull.pull(
        model,
        tmp_path,
        config=config(rclone_store.endpoint_url, concurrency=3),
        credentials=rclone_store.credentials,
    )
    assert tree(tmp_path) == FILES
    assert result.concurrency == 3


@pytest.mark.slow
@pytest.mark.parametrize("hedge", [True, False])
def test_a_part_far_slower_than_its_peers_is_hedged(
    rclone_store: S3Store, model: str, tmp_path: Path, hedge: bool
) -> None:
    name = "model-0.safetensors"
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        # The first GET of the file trickles (64 KiB every 0.15 s); every other is quick.
        slow = proxy.add_rule(Rule(delay(seconds_per_chunk=0.15), method="GET", path=name))
        events: list[Event] = []
        result = modelpull.pull(
            f"{model}{name}",
            tmp_path,
            config=config(proxy.url, part_size=2 * MiB, concurrency=4, hedge=hedge),
            credentials=rclone_store.credentials,
            observers=[events.append],
        )
        ranges = [r.range or "" for r in proxy.log if r.method == "GET"]
    assert proxy.fired(slow) == 1
    assert (tmp_path / name).read_bytes() == FILES[name]
    assert result.bytes_downloaded == len(FILES[name])  # no byte written twice
    hedges = [e for e in events if isinstance(e, PartHedged)]
    assert result.hedges == len(hedges) == (1 if hedge else 0)
    starts = [int(m[1]) for r in ranges if (m := re.match(r"bytes=(\d+)-", r))]
    # A hedge asks for the slow part's tail: from inside a part, not at a part's start.
    assert any(start % (2 * MiB) for start in starts) is hedge


def test_a_folder_of_small_files_costs_one_get_each_and_no_head(
    rclone_store: S3Store, tmp_path: Path
) -> None:
    bucket = rclone_store.new_bucket()
    small = {f"tok-{i}.json": os.urandom(1000 + 997 * i) for i in range(5)}
    rclone_store.put_tree(bucket, "m/", small)
    with FaultProxy(rclone_store.endpoint_url) as proxy:
        result = modelpull.pull(
            f"s3://{bucket}/m/",
            tmp_path,
            config=config(proxy.url),
            credentials=rclone_store.credentials,
        )
        objects = [(r.method, r.range) for r in proxy.log if "/m/" in r.path]
    assert tree(tmp_path) == small
    assert objects == [("GET", None)] * len(small)  # no HEAD, no Range: the whole file
    assert all("md5" in f.verified for f in result.files)  # from the GET's own headers
    assert not list((tmp_path / ".modelpull" / "incomplete").iterdir())  # no journal left
