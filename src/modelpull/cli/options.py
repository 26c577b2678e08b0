"""The config's options on the command line, generated from :class:`PullConfig`'s fields.

Each field with a :class:`~modelpull.config.Flag` becomes an option of the subcommands
it names, its help text made of the field's doc, environment variables and default; the
values given become keyword overrides for :func:`modelpull.resolve.resolve`. A flag for
another field is added in ``config.py`` alone.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from modelpull.config import PULL_COMMANDS, STORE_COMMANDS, Flag, PullConfig
from modelpull.configdoc import default_text
from modelpull.errors import UsageError
from modelpull.observe.logs import LOG_FORMATS

__all__ = ["add_config_options", "add_log_options", "config_overrides"]

_GROUP_TITLES = {STORE_COMMANDS: "store connection", PULL_COMMANDS: "transfer"}


def _flagged(command: str) -> list[tuple[dataclasses.Field[Any], Flag]]:
    found = []
    for f in dataclasses.fields(PullConfig):
        flag: Flag | None = f.metadata["flag"]
        if flag is not None and command in flag.commands:
            found.append((f, flag))
    return found


def _help(f: dataclasses.Field[Any], flag: Flag) -> str:
    text = (flag.help or f.metadata["doc"]).replace("`", "")
    envs = ", ".join(f.metadata["env"])
    # An on/off flag's default is its absence; an unset default is the doc's "Unset: ...".
    if flag.metavar is None or f.default is None:
        return f"{text} (env {envs})"
    # argparse expands "%" in help texts.
    return f"{text} (env {envs}; default {default_text(f)})".replace("%", "%%")


def add_config_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of the config fields that ``command`` takes, in argument groups."""
    groups: dict[tuple[str, ...], Any] = {}
    for f, flag in _flagged(command):
        group = groups.get(flag.commands)
        if group is None:
            title = _GROUP_TITLES.get(flag.commands, "settings")
            group = groups[flag.commands] = parser.add_argument_group(title)
        if flag.metavar is None:
            group.add_argument(
                flag.name,
                dest=f.name,
                action="store_const",
                const=not f.default,
                help=_help(f, flag),
            )
        else:
            group.add_argument(flag.name, dest=f.name, metavar=flag.metavar, help=_help(f, flag))


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """``-v``, ``-q`` and ``--log-format``: how much the command says, and how."""
    group = parser.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    group.add_argument("-q", "--quiet", action="store_true", help="errors only")
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text or one JSON object per line (default text)",
    )


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the command line set, parsed; ``None`` for those it did not."""
    values: dict[str, Any] = {}
    for f, flag in _flagged(args.command):
        value = getattr(args, f.name)
        if isinstance(value, str):
            try:
                value = f.metadata["parse"](value)
            except UsageError as exc:
                raise UsageError(f"{flag.name}: {exc}") from None
        values[f.name] = value
    return values
