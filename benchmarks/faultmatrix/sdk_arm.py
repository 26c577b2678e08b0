"""One cell's SDK download, as a process of its own: ``python sdk_arm.py JSON``.

The JSON names the tool (``tos`` or ``boto3``), the endpoint, bucket, key and file,
and optional timeouts (``--quick``); everything else is the SDK's default: the TOS
SDK's ``TosClientV2(...).download_file(bucket, key, path)``, boto3's
``client("s3").download_file(bucket, key, path)`` under whatever ``AWS_RETRY_MODE`` the
environment sets. One JSON line comes out on stdout: whether it succeeded, in how many
seconds, and the exception it raised with the fields an operator's alerting would see
(status, error code, request id) and, for a wrapper, the error it wraps.

It imports nothing of modelpull's or of the suite's: it is what a deployment runs today.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

# Imported before the clock starts: a cell times the SDK, not the interpreter.
import boto3
import tos
from botocore.config import Config

MAX_MESSAGE = 300


def _name(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _describe(exc: BaseException) -> dict[str, Any]:
    """The fields of ``exc`` that logs and alerts key on, whichever SDK raised it."""
    info: dict[str, Any] = {"type": _name(exc), "message": str(exc)[:MAX_MESSAGE]}
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        meta = response.get("ResponseMetadata", {})
        info.update(
            status=meta.get("HTTPStatusCode"),
            code=response.get("Error", {}).get("Code"),
            request_id=meta.get("RequestId") or None,
        )
    if hasattr(exc, "status_code"):  # the TOS SDK's TosServerError
        info.update(
            status=exc.status_code,
            code=getattr(exc, "code", None) or None,
            request_id=getattr(exc, "request_id", None) or None,
            ec=getattr(exc, "ec", None) or None,
        )
        info["message"] = str(getattr(exc, "message", "") or "")[:MAX_MESSAGE]
    cause = getattr(exc, "cause", None)  # the TOS SDK's TosClientError
    if isinstance(cause, BaseException):
        info["message"] = str(getattr(exc, "message", "") or "")[:MAX_MESSAGE]
        info["cause"] = _name(cause)
        inner = getattr(cause, "cause", None)
        if isinstance(inner, BaseException):  # RenameFileError wraps the CRC's error
            info["cause"] += f" < {_name(inner)}"
            info["message"] += f": {getattr(inner, 'message', inner)}"[:MAX_MESSAGE]
    return {k: v for k, v in info.items() if v is not None}


def _tos(args: dict[str, Any], settings: dict[str, Any]) -> None:
    timeouts = {}
    if args.get("read_timeout"):
        timeouts = {
            "socket_timeout": args["read_timeout"],
            "connection_time": args["connect_timeout"],
        }
    client = tos.TosClientV2(
        args["access_key"],
        args["secret_key"],
        args["endpoint"],
        region=args["region"],
        # The stand-in serves one bucket at its root: see tests/tosfront.py.
        is_custom_domain=True,
        **timeouts,
    )
    settings.update(
        max_retry_count=client.max_retry_count,
        socket_timeout=client.socket_timeout,
        connection_time=client.connection_time,
    )
    try:
        client.download_file(args["bucket"], args["key"], args["path"])
    finally:
        client.close()


def _boto3(args: dict[str, Any], settings: dict[str, Any]) -> None:
    timeouts = {}
    if args.get("read_timeout"):
        timeouts = {
            "read_timeout": args["read_timeout"],
            "connect_timeout": args["connect_timeout"],
        }
    # Path-style addressing is what loopback needs; nothing else differs from defaults.
    config = Config(s3={"addressing_style": "path"}, **timeouts)
    client = boto3.client("s3", endpoint_url=args["endpoint"], config=config)
    meta = client.meta.config
    settings.update(
        retry_mode=meta.retries.get("mode"),
        read_timeout=meta.read_timeout,
        connect_timeout=meta.connect_timeout,
    )
    try:
        client.download_file(args["bucket"], args["key"], args["path"])
    finally:
        client.close()


def main() -> None:
    args = json.loads(sys.argv[1])
    run = _tos if args["tool"] == "tos" else _boto3
    settings: dict[str, Any] = {}
    started = time.monotonic()
    try:
        run(args, settings)
    except Exception as exc:
        result: dict[str, Any] = {"ok": False, "error": _describe(exc)}
    else:
        result = {"ok": True}
    result.update(seconds=round(time.monotonic() - started, 3), settings=settings)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
