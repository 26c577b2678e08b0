"""The embedded demo: a generated sample model, a local S3 server, and a verified pull.

Needs the ``[demo]`` extra (rclone, numpy, safetensors) when run, not when imported.
"""

from modelpull.demo.rclone import RcloneS3Server
from modelpull.demo.run import run_demo
from modelpull.demo.sample import write_sample_model

__all__ = ["RcloneS3Server", "run_demo", "write_sample_model"]
