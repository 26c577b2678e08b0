"""Explicit credentials, for callers that do not use boto3's chain (the demo, TOS_* variables).

The secret parts never appear in ``repr``, ``str`` or any report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Credentials"]


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key pair, and a session token for temporary credentials."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
