"""Benchmark arm: the ceiling. Ranged GETs of every object, bytes read and thrown away.

16 threads each take 32 MiB parts from one queue over all objects and read each body in
1 MiB chunks with botocore, the same client as the boto3 arms. Nothing is written, so
nothing is verified; it prints ``{"bytes": N}`` and exits 1 when a part comes up short.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _s3 import list_prefix, make_client

MiB = 1 << 20


def read_part(client: Any, bucket: str, key: str, start: int, end: int) -> int:
    body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
    got = 0
    while chunk := body.read(MiB):
        got += len(chunk)
    body.close()
    if got != end - start:
        raise RuntimeError(f"{key} bytes {start}-{end - 1}: got {got} bytes")
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bucket")
    parser.add_argument("prefix")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--part-size", type=int, default=32 * MiB, help="bytes")
    args = parser.parse_args()

    client = make_client(max_pool_connections=args.threads)
    parts = [
        (key, start, min(start + args.part_size, size))
        for key, size in list_prefix(client, args.bucket, args.prefix)
        for start in range(0, size, args.part_size)
    ]
    expected = sum(end - start for _key, start, end in parts)
    with ThreadPoolExecutor(args.threads) as pool:
        total = sum(pool.map(lambda p: read_part(client, args.bucket, *p), parts))
    print(json.dumps({"bytes": total}))
    if total != expected:
        sys.exit(1)


if __name__ == "__main__":
    main()
