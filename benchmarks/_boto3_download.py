"""Benchmark arm: boto3's ``download_file``, one object after another.

``--aibrix`` uses the transfer settings of AIBrix's S3 downloader (64 MiB threshold and
parts, 32 threads, a 100-chunk IO queue, 16 MiB IO chunks); without it boto3's default
``TransferConfig`` (8 MiB threshold and parts, 10 threads).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from boto3.s3.transfer import TransferConfig

from _s3 import list_prefix, make_client

MiB = 1 << 20
AIBRIX = TransferConfig(
    multipart_threshold=64 * MiB,
    multipart_chunksize=64 * MiB,
    max_concurrency=32,
    max_io_queue=100,
    io_chunksize=16 * MiB,
    use_threads=True,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bucket")
    parser.add_argument("prefix")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--aibrix", action="store_true", help="AIBrix's transfer settings")
    args = parser.parse_args()

    config = AIBRIX if args.aibrix else TransferConfig()
    # A pool as large as the thread count: with botocore's default of 10, urllib3 would
    # open and discard extra connections for the other 22 threads.
    client = make_client(max_pool_connections=max(10, config.max_request_concurrency))
    for key, _size in list_prefix(client, args.bucket, args.prefix):
        target = args.dest / key[len(args.prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(args.bucket, key, str(target), Config=config)


if __name__ == "__main__":
    main()
