"""Train the per-token predictor on a feature cache, print the leaderboard, save the checkpoint.

    python train.py                     # offline demo: suite, caches, training, leaderboard
    python train.py --train-cache cache/wikipedia --transfer-cache cache/glue-rte
    python train.py --help              # every flag, made from the config dataclasses

The same command as `emergence-model train`: emergence_model/commands/train.py.
"""

from emergence_model.cli import exit_on_user_error
from emergence_model.commands.train import main

if __name__ == "__main__":
    exit_on_user_error(main)
