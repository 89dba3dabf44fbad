"""The emergence study: how emergent each prefix is, and what predicting the target buys.

    python -m emergence_model.study                  # the offline demo: reuses what train.py built
    python -m emergence_model.study --help           # every flag, made from the config dataclasses

The same command as `emergence-model study`: emergence_model/commands/study.py.
"""

from emergence_model.cli import exit_on_user_error
from emergence_model.commands.study import main

if __name__ == "__main__":
    exit_on_user_error(main)
