"""Benchmark arm: the TOS SDK's ``download_file`` (64 MiB parts, 32 tasks), file by file.

The SDK builds virtual-hosted URLs only; with ``is_custom_domain=True`` it sends
``GET http://HOST:PORT/<key>`` with no bucket at all. So it talks to a second, anonymous
rclone server rooted at the *bucket* folder, and is given the key ``bench-model/<file>``:
rclone reads ``bench-model`` as the bucket and ``<file>`` as the key. The listing comes
from the signed S3 server through boto3 (rclone answers a TOS-style list with XML, which
the SDK cannot parse). rclone sends no ``x-tos-hash-crc64ecma``, and with CRC checks on
the SDK fails every download ("CRC ... is mismatch with tos: None"), hence
``enable_crc=False``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import tos

from _s3 import list_prefix, make_client

MiB = 1 << 20
PART_SIZE = 64 * MiB
TASK_NUM = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bucket", help="bucket on the S3 server, for the listing")
    parser.add_argument("prefix", help="prefix on the S3 server, e.g. bench-model/")
    parser.add_argument("dest", type=Path)
    parser.add_argument("--tos-endpoint", required=True, help="the anonymous rclone server")
    args = parser.parse_args()

    objects = list_prefix(make_client(), args.bucket, args.prefix)
    client = tos.TosClientV2(
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
        args.tos_endpoint,
        region="us-east-1",
        is_custom_domain=True,
        enable_crc=False,
    )
    for key, _size in objects:
        target = args.dest / key[len(args.prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        # The bucket is not in the URL (see above); the whole S3 key goes in the path.
        client.download_file(args.bucket, key, str(target), part_size=PART_SIZE, task_num=TASK_NUM)


if __name__ == "__main__":
    main()
