"""The ``modelpull`` command: parse arguments, resolve, call the library, map errors.

Every error reaches the user through :data:`EXIT_CODES`: one line on stderr and a
documented exit status, never a traceback (``-v`` adds the traceback for bug reports).

- :mod:`modelpull.cli.main`: the parser and :func:`main` (the console script);
- :mod:`modelpull.cli.options`: the config's options, generated from its fields;
- :mod:`modelpull.cli.commands`: what each subcommand does;
- :mod:`modelpull.cli.exits`: exit codes and the error handler, shared with
  ``python -m modelpull.aibrix``.
"""

from modelpull.cli.exits import EXIT_CODES, StopSignal, exit_code, run_command
from modelpull.cli.main import build_parser, main

__all__ = ["EXIT_CODES", "StopSignal", "build_parser", "exit_code", "main", "run_command"]
