"""modelpull: pull model folders from S3-compatible object stores."""

from modelpull._version import __version__

__all__ = ["__version__"]
