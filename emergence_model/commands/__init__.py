"""The command line: `emergence-model COMMAND ...`, one module of this package per command.

    emergence-model extract ...     cache every model's next-token distribution (cache_features.py)
    emergence-model train ...       train the predictor and print the leaderboard (train.py)
    emergence-model evaluate ...    score strategies on a cache (python -m emergence_model.evaluate)
    emergence-model study ...       the emergence study (python -m emergence_model.study)
    emergence-model demo ...        build the offline demo suite (python -m emergence_model.demo)
    emergence-model train --help    a command's own flags

Each command's `main(argv)` makes its flags from config dataclasses (`cli.py`); the older
spellings in parentheses run the same `main`. This module only dispatches: it imports a command
when it is called, so that `emergence-model --help` costs no torch.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from emergence_model.cli import exit_on_user_error

COMMANDS = ("extract", "train", "evaluate", "study", "demo")


def summary(command: str) -> str:
    """The first line of a command module's docstring, read without importing it."""
    spec = importlib.util.find_spec(f"{__name__}.{command}")
    with open(spec.origin, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    return doc.split("\n")[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run `emergence-model COMMAND ARGS...`: COMMAND's own `main(ARGS)`, a user's mistake one line
    on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="emergence-model",
        usage=f"%(prog)s [-h] {{{','.join(COMMANDS)}}} ...",
        description=__doc__.split("\n\n")[0],
        epilog="commands:\n" + "\n".join(f"  {c:<10} {summary(c)}" for c in COMMANDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS, help="what to run; COMMAND --help: its flags")
    # Only the command's name is parsed here: everything after it is the command's own.
    command = parser.parse_args(argv[:1]).command
    # By name, at call time, as emergence_model/__init__.py imports its public API: a command
    # module imports this package first, and `--help` here should not pay for torch.
    run = importlib.import_module(f"{__name__}.{command}").main
    exit_on_user_error(lambda: run(argv[1:]))
    return 0
