"""The configuration reference, generated from :class:`~modelpull.config.PullConfig`.

``python -m modelpull.configdoc > docs/configuration.md`` writes it; a test keeps the page
and the code in agreement, and ``--help`` shows each default as :func:`default_text` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from modelpull.config import Flag, MiB, PullConfig

__all__ = ["default_text", "reference_markdown"]


def default_text(f: dataclasses.Field[Any]) -> str:
    """A field's default as the docs and ``--help`` show it: ``32MiB``, ``unset``, ``auto``."""
    default = f.default
    if isinstance(default, int) and not isinstance(default, bool) and default >= MiB:
        return f"{default // MiB}MiB"
    return "unset" if default is None else str(default).lower()


def reference_markdown() -> str:
    """The configuration reference, as kept in ``docs/configuration.md``."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `modelpull.config.PullConfig` by `modelpull.configdoc`",
        "a test fails when this page and the code disagree.",
        "",
        "Precedence: CLI flag, then Python keyword, then the first environment variable set,",
        "then the default. The CLI and the Python API apply it alike: a field left out of",
        "`PullConfig(...)` takes the environment when the pull starts, as a flag left out does.",
        "Sizes take `64MiB`, `8MB` or bytes; durations `30`, `30s`, `2m`. A `MODELPULL_*`",
        "variable that names no setting is warned about, naming the closest one.",
        "",
        "| field | flag | default | unit | environment | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(PullConfig):
        flag: Flag | None = f.metadata["flag"]
        shown = f"`{flag.name}`" if flag is not None else ""
        envs = ", ".join(f"`{name}`" for name in f.metadata["env"])
        lines.append(
            f"| `{f.name}` | {shown} | {default_text(f)} | {f.metadata['unit']} | {envs} "
            f"| {f.metadata['doc']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
