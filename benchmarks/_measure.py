"""Run a command and write its wall time, peak RSS and CPU time as JSON; exit as it did.

    python -I -S _measure.py RESULT.json COMMAND [ARG...]

Why a launcher: on Linux a child's ``ru_maxrss`` counts the memory of the process it
was forked from, up to its ``exec`` (the mm it leaves behind is folded into the high
water mark), so a command spawned straight from the benchmark, which holds boto3 and
hashing buffers, would read at least the benchmark's own RSS. Spawned from this small
interpreter (standard library only, no ``site``), the floor is a few MB.
"""

import json
import os
import sys
import time


def main() -> int:
    result, command = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.posix_spawnp(command[0], command, os.environ)
    _pid, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    with open(result, "w") as out:  # not pathlib: fewer imports, less RSS
        json.dump(
            {
                "seconds": seconds,
                "maxrss_kib": usage.ru_maxrss,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "exit_code": code,
            },
            out,
        )
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
